// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Every way to build guest memory, and every refusal.

use std::fs::File;
use std::sync::Arc;

use base::{AsRawDescriptor, SharedMemory};
use vm_memory::{
    Error, GuestAddress, GuestMemory, MemoryRegion, MemoryRegionOptions, MemoryRegionPurpose,
    RegionBacking,
};

const P: u64 = 4096;

fn g(a: u64) -> GuestAddress {
    GuestAddress(a)
}

fn temp_file(len: u64) -> Arc<File> {
    let file = vmm_sys_util::tempfile::TempFile::new().unwrap().into_file();
    file.set_len(len).unwrap();
    Arc::new(file)
}

#[test]
fn ram_lives_in_one_sealed_memfd_at_increasing_offsets() {
    let mem = GuestMemory::new(&[(g(0), 4 * P), (g(0x10_0000), 2 * P), (g(1 << 32), P)]).unwrap();
    assert_eq!(mem.num_regions(), 3);
    assert_eq!(mem.memory_size(), 7 * P);
    assert_eq!(mem.end_addr(), g((1 << 32) + P));
    let regions: Vec<_> = mem.regions().collect();
    let fds: Vec<_> = regions
        .iter()
        .map(|r| match r.shm {
            RegionBacking::SharedMemory(shm) => shm.as_raw_descriptor(),
            RegionBacking::File(_) => panic!("RAM backed by a file"),
        })
        .collect();
    assert!(fds.iter().all(|&fd| fd == fds[0]), "one memfd for all RAM");
    let offsets: Vec<_> = regions.iter().map(|r| r.shm_offset).collect();
    assert_eq!(offsets, [0, 4 * P, 6 * P]);
    assert_eq!(regions[1].index, 1);
    assert_eq!(regions[1].guest_addr, g(0x10_0000));
    assert_eq!(regions[1].size, 2 * P as usize);
    // The memfd is sealed: it can neither grow nor shrink, and no seal can be added.
    if let RegionBacking::SharedMemory(shm) = regions[0].shm {
        let seals = shm.get_seals().unwrap();
        assert!(seals.grow_seal() && seals.shrink_seal() && seals.seal_seal());
        assert_eq!(shm.size(), 7 * P);
    }
    // Host addresses point at the same bytes the access API reaches.
    mem.write_obj_at_addr(0xabcdu16, g(0x10_0010)).unwrap();
    // SAFETY: the host address of a live region, inside it.
    let raw = unsafe { std::ptr::read_volatile((regions[1].host_addr + 0x10) as *const u16) };
    assert_eq!(raw, 0xabcd);
}

#[test]
fn options_carry_purpose_alignment_and_hugepages() {
    let options = MemoryRegionOptions::new()
        .purpose(MemoryRegionPurpose::Bios)
        .align(2 << 20)
        .hugepages(true);
    let mem = GuestMemory::new_with_options(&[
        (g(0), 4 << 20, options),
        (g(16 << 20), P, MemoryRegionOptions::new()),
    ])
    .unwrap();
    let regions: Vec<_> = mem.regions().collect();
    assert_eq!(regions[0].options.purpose, MemoryRegionPurpose::Bios);
    assert_eq!(regions[0].host_addr % (2 << 20), 0);
    assert!(regions[0].options.hugepages);
    assert_eq!(
        regions[1].options.purpose,
        MemoryRegionPurpose::GuestMemoryRegion
    );
    // The aligned region's memfd offset is aligned too, so huge pages can back it.
    assert_eq!(regions[0].shm_offset % (2 << 20), 0);
}

#[test]
fn refuses_empty_zero_and_unaligned() {
    assert!(matches!(GuestMemory::new(&[]), Err(Error::NoRegions)));
    let err = GuestMemory::new(&[(g(0), P), (g(P), 0)]).unwrap_err();
    assert!(
        matches!(err, Error::ZeroSizedRegion { addr } if addr == g(P)),
        "{err}"
    );
    assert!(err.to_string().contains("0x1000"));
    let err = GuestMemory::new(&[(g(0), P + 1)]).unwrap_err();
    assert!(
        matches!(err, Error::UnalignedSize { size, .. } if size == P + 1),
        "{err}"
    );
    assert!(err.to_string().contains("0x1001"));
    let err = GuestMemory::new(&[(g(0x800), P)]).unwrap_err();
    assert!(
        matches!(err, Error::UnalignedAddress { addr, .. } if addr == g(0x800)),
        "{err}"
    );
    let err = GuestMemory::new_with_options(&[(g(0), P, MemoryRegionOptions::new().align(3 * P))])
        .unwrap_err();
    assert!(
        matches!(err, Error::InvalidAlignment { align, .. } if align == 3 * P),
        "{err}"
    );
}

#[test]
fn refuses_overflow_unsorted_and_overlap() {
    let top = u64::MAX - P + 1; // the last page
    let err = GuestMemory::new(&[(g(top), 2 * P)]).unwrap_err();
    assert!(
        matches!(err, Error::RegionOverflow { addr, .. } if addr == g(top)),
        "{err}"
    );
    // A region that ends exactly at 2^64 cannot be described by an exclusive end either.
    let err = GuestMemory::new(&[(g(top), P)]).unwrap_err();
    assert!(matches!(err, Error::RegionOverflow { .. }), "{err}");
    // Fits the address space but not a memfd.
    let err = GuestMemory::new(&[(g(0), u64::MAX - P + 1)]).unwrap_err();
    assert!(
        matches!(err, Error::TooMuchMemory { addr, .. } if addr == g(0)),
        "{err}"
    );
    let err = GuestMemory::new(&[(g(0), 1 << 62), (g(1 << 62), 1 << 62)]).unwrap_err();
    assert!(
        matches!(err, Error::TooMuchMemory { addr, align, .. } if addr == g(1 << 62) && align == P),
        "{err}"
    );
    // An alignment that pushes the memfd offset past the limit names the region and itself.
    let huge_align = MemoryRegionOptions::new().align(1 << 63);
    let err = GuestMemory::new_with_options(&[
        (g(0), P, MemoryRegionOptions::new()),
        (g(P), P, huge_align),
    ])
    .unwrap_err();
    assert!(
        matches!(err, Error::TooMuchMemory { addr, align } if addr == g(P) && align == 1 << 63),
        "{err}"
    );
    assert!(err.to_string().contains("0x8000000000000000"), "{err}");
    // Fits a memfd but not this machine: the mapping fails, naming the region.
    let err = GuestMemory::new(&[(g(0), 1 << 60)]).unwrap_err();
    assert!(
        matches!(
            err,
            Error::MappingFailed { .. } | Error::MemoryCreationFailed(_)
        ),
        "{err}"
    );

    // Unsorted is named as such, even when the regions would not overlap.
    let err = GuestMemory::new(&[(g(0x10000), P), (g(0), P)]).unwrap_err();
    assert!(
        matches!(err, Error::RegionsUnsorted { index: 1, addr, prev_addr } if addr == g(0) && prev_addr == g(0x10000)),
        "{err}"
    );
    assert!(err.to_string().contains("sorted"));
    // Overlap: partial, exact, contained, and a duplicate start.
    for (a, b) in [
        ((0, 4 * P), (3 * P, 2 * P)),
        ((0, 4 * P), (0, 4 * P)),
        ((0, 4 * P), (P, P)),
        ((0, P), (0, 4 * P)),
    ] {
        let err = GuestMemory::new(&[(g(a.0), a.1), (g(b.0), b.1)]).unwrap_err();
        assert!(
            matches!(err, Error::RegionOverlap { addr, size, prev_addr, prev_size }
                if addr == g(b.0) && size == b.1 && prev_addr == g(a.0) && prev_size == a.1),
            "{a:x?} {b:x?}: {err}"
        );
    }
    // Touching is not overlapping.
    GuestMemory::new(&[(g(0), P), (g(P), P)]).unwrap();
}

#[test]
fn file_backed_regions_check_the_file_length() {
    let file = temp_file(8 * P);
    let ok = MemoryRegionOptions::new().file_backed(file.clone(), 4 * P);
    GuestMemory::new_with_options(&[(g(0), 4 * P, ok)]).unwrap();
    for (offset, size) in [(4 * P, 5 * P), (8 * P, P), (1 << 40, P)] {
        let options = MemoryRegionOptions::new().file_backed(file.clone(), offset);
        let err = GuestMemory::new_with_options(&[(g(0x1_0000), size, options)]).unwrap_err();
        assert!(
            matches!(err, Error::FileTooShort { addr, file_size, needed, size: s }
                if addr == g(0x1_0000) && file_size == 8 * P && needed == offset + size && s == size),
            "{offset:#x}: {err}"
        );
    }
    // An offset + size that overflows is reported as that, with the values given.
    let top = u64::MAX - P + 1;
    let options = MemoryRegionOptions::new().file_backed(file.clone(), top);
    let err = GuestMemory::new_with_options(&[(g(0x1_0000), 2 * P, options)]).unwrap_err();
    assert!(
        matches!(err, Error::BackingOverflow { addr, offset, size }
            if addr == g(0x1_0000) && offset == top && size == 2 * P),
        "{err}"
    );
    assert!(err.to_string().contains("0xfffffffffffff000"), "{err}");
    // An unaligned file offset is refused by base when mapping, with the region named.
    let options = MemoryRegionOptions::new().file_backed(file.clone(), 100);
    let err = GuestMemory::new_with_options(&[(g(0), P, options)]).unwrap_err();
    assert!(
        matches!(err, Error::MappingFailed { addr, .. } if addr == g(0)),
        "{err}"
    );
    // A read-only descriptor cannot back writable guest memory.
    let temp = vmm_sys_util::tempfile::TempFile::new().unwrap();
    temp.as_file().set_len(P).unwrap();
    let ro = Arc::new(File::open(temp.as_path()).unwrap());
    let err =
        GuestMemory::new_with_options(&[(g(0), P, MemoryRegionOptions::new().file_backed(ro, 0))])
            .unwrap_err();
    assert!(matches!(err, Error::MappingFailed { .. }), "{err}");
}

#[test]
fn all_file_backed_needs_no_memfd() {
    let file = temp_file(2 * P);
    let options = MemoryRegionOptions::new().file_backed(file, 0);
    let mem = GuestMemory::new_with_options(&[(g(0), 2 * P, options)]).unwrap();
    assert!(matches!(
        mem.regions().next().unwrap().shm,
        RegionBacking::File(_)
    ));
}

#[test]
fn from_regions_checks_the_layout_too() {
    let shm = Arc::new(SharedMemory::new("from_regions", 4 * P).unwrap());
    let file = temp_file(4 * P);
    let a = MemoryRegion::new_from_shm(2 * P, g(0), 0, shm.clone()).unwrap();
    let b = MemoryRegion::new_from_file(2 * P, g(0x10_0000), 2 * P, file.clone()).unwrap();
    let mem = GuestMemory::from_regions(vec![a, b]).unwrap();
    assert_eq!(mem.num_regions(), 2);
    mem.write_obj_at_addr(7u32, g(0x10_0000)).unwrap();

    let a = MemoryRegion::new_from_shm(2 * P, g(0x10_0000), 0, shm.clone()).unwrap();
    let b = MemoryRegion::new_from_shm(2 * P, g(0), 2 * P, shm.clone()).unwrap();
    let err = GuestMemory::from_regions(vec![a, b]).unwrap_err();
    assert!(matches!(err, Error::RegionsUnsorted { .. }), "{err}");
    assert!(matches!(
        GuestMemory::from_regions(vec![]),
        Err(Error::NoRegions)
    ));
    let err = MemoryRegion::new_from_shm(0, g(0), 0, shm.clone()).unwrap_err();
    assert!(matches!(err, Error::ZeroSizedRegion { .. }), "{err}");
    let err = MemoryRegion::new_from_file(8 * P, g(0), 0, file).unwrap_err();
    assert!(matches!(err, Error::FileTooShort { .. }), "{err}");
    // A memfd that could still grow is no excuse: guest memory never grows its backing.
    for (size, offset) in [(8 * P, 0), (2 * P, 3 * P)] {
        let err = MemoryRegion::new_from_shm(size, g(0), offset, shm.clone()).unwrap_err();
        assert!(
            matches!(err, Error::FileTooShort { file_size, needed, .. }
                if file_size == 4 * P && needed == offset + size),
            "{size:#x}@{offset:#x}: {err}"
        );
    }
    let err = MemoryRegion::new_from_shm(P, g(0), u64::MAX - 100, shm.clone()).unwrap_err();
    assert!(matches!(err, Error::BackingOverflow { .. }), "{err}");
}

#[test]
fn clones_share_the_same_memory() {
    let mem = GuestMemory::new(&[(g(0), P)]).unwrap();
    let clone = mem.clone();
    mem.write_obj_at_addr(0x55u8, g(10)).unwrap();
    assert_eq!(clone.read_obj_from_addr::<u8>(g(10)).unwrap(), 0x55);
    fn send_sync<T: Send + Sync>(_: &T) {}
    send_sync(&clone);
}

#[test]
fn a_callers_memfd_cannot_shrink_under_guest_memory() {
    use std::os::fd::AsFd;
    let shm = Arc::new(SharedMemory::new("caller", 4 * P).unwrap());
    let copy = base::SafeDescriptor::try_clone_borrowed(shm.as_fd()).unwrap();
    let region = MemoryRegion::new_from_shm(4 * P, g(0), 0, shm.clone()).unwrap();
    let mem = GuestMemory::from_regions(vec![region]).unwrap();
    assert!(shm.get_seals().unwrap().shrink_seal());
    // Whoever else holds the memfd cannot truncate it any more: the VMM's next access past
    // the new end would have been a SIGBUS.
    let err = File::from(copy).set_len(P).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EPERM));
    mem.write_obj_at_addr(1u64, g(3 * P)).unwrap();
    // A memfd given as a file is sealed the same way.
    let memfd = SharedMemory::new("as file", 2 * P).unwrap();
    let file = Arc::new(File::from(base::SafeDescriptor::from(memfd)));
    let options = MemoryRegionOptions::new().file_backed(file.clone(), 0);
    let mem = GuestMemory::new_with_options(&[(g(0), 2 * P, options)]).unwrap();
    assert_eq!(
        file.set_len(0).unwrap_err().raw_os_error(),
        Some(libc::EPERM)
    );
    mem.write_obj_at_addr(2u64, g(P)).unwrap();
    // A memfd that refuses further seals (without a shrink seal) is refused.
    let locked = SharedMemory::new("locked", 2 * P).unwrap();
    let mut seal = base::MemfdSeals::new();
    seal.set_seal_seal();
    locked.add_seals(seal).unwrap();
    let err = MemoryRegion::new_from_shm(2 * P, g(0), 0, Arc::new(locked)).unwrap_err();
    assert!(
        matches!(&err, Error::NotSealable { addr, seals } if *addr == g(0) && seals.seal_seal() && !seals.shrink_seal()),
        "{err}"
    );
    // A tmpfs file refuses seals like such a memfd, but it is a file: accepted, as a regular
    // file is (found in review: it was taken for a memfd and refused).
    if let Ok(shm_file) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(format!("/dev/shm/vm_memory-test-{}", std::process::id()))
    {
        let path = format!("/dev/shm/vm_memory-test-{}", std::process::id());
        shm_file.set_len(2 * P).unwrap();
        let options = MemoryRegionOptions::new().file_backed(Arc::new(shm_file), 0);
        let made = GuestMemory::new_with_options(&[(g(0), 2 * P, options)]);
        std::fs::remove_file(&path).unwrap();
        made.unwrap();
    }
    // A regular file cannot be sealed; its size is checked when the region is made.
    let regular = temp_file(2 * P);
    let options = MemoryRegionOptions::new().file_backed(regular.clone(), 0);
    GuestMemory::new_with_options(&[(g(0), 2 * P, options)]).unwrap();
    regular.set_len(P).unwrap();
}

#[test]
fn character_devices_back_regions_without_a_size() {
    // /dev/zero reports st_size 0, yet maps (as shared anonymous memory), like a DAX device.
    let zero = Arc::new(
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/zero")
            .unwrap(),
    );
    assert_eq!(zero.metadata().unwrap().len(), 0);
    let options = MemoryRegionOptions::new().file_backed(zero.clone(), 0);
    let mem = GuestMemory::new_with_options(&[(g(0x10_0000), 16 * P, options)]).unwrap();
    mem.write_obj_at_addr(0xfeed_u32, g(0x10_0000 + 15 * P))
        .unwrap();
    assert_eq!(
        mem.read_obj_from_addr::<u32>(g(0x10_0000 + 15 * P))
            .unwrap(),
        0xfeed
    );
    let region = MemoryRegion::new_from_file(P, g(0), 0, zero).unwrap();
    assert_eq!(region.size(), P as usize);
}

#[test]
fn layouts_at_the_top_of_the_address_space_build_in_debug_too() {
    // Found in review: the exact map's last bucket reached past 2^64 and overflowed (a panic
    // in debug builds).
    let mem =
        GuestMemory::new(&[(g(0xFFFF_FF00_0000_1000), P), (g(0xFFFF_FFFF_FFFF_E000), P)]).unwrap();
    mem.write_obj_at_addr(5u64, g(0xFFFF_FFFF_FFFF_EFF8))
        .unwrap();
    assert_eq!(
        mem.read_obj_from_addr::<u64>(g(0xFFFF_FFFF_FFFF_EFF8))
            .unwrap(),
        5
    );
    assert!(!mem.address_in_range(g(0xFFFF_FFFF_FFFF_F000)));
    assert!(mem.address_in_range(g(0xffff_ff00_0000_1fff)));
}
