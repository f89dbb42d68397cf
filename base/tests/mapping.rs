// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! MemoryMapping and its builder: happy paths, access, and every refusal.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;

use base::mmap::Error;
use base::{
    AsRawDescriptor, Backing, ExternalMapping, MappedRegion, MemfdSeals, MemoryMappingBuilder,
    Protection, SharedMemory, VolatileMemory, VolatileMemoryError,
};

mod common;

const PAGE: usize = 4096;

#[test]
fn anonymous_mapping_is_shared_zeroed_and_sized() {
    let m = MemoryMappingBuilder::new(3 * PAGE + 5).build().unwrap();
    assert_eq!(m.size(), 3 * PAGE + 5);
    assert_eq!(m.backing(), Backing::Anonymous);
    assert_eq!(m.protection(), Protection::read_write());
    assert!(m.get_slice(0, m.size()).unwrap().is_all_zero());
    let perms = common::page_perms(m.as_ptr() as usize, 4 * PAGE);
    assert!(perms.iter().all(|p| p == "rw-s"), "{perms:?}");
}

#[test]
fn file_mapping_at_offset_reaches_the_file() {
    let mut file = common::temp_file(4 * PAGE as u64);
    let m = MemoryMappingBuilder::new(2 * PAGE)
        .from_file(&file)
        .offset(PAGE as u64)
        .build()
        .unwrap();
    assert_eq!(
        m.backing(),
        Backing::Descriptor {
            offset: PAGE as u64
        }
    );
    m.write_slice(b"through the mapping", 10).unwrap();
    m.msync().unwrap();
    let mut back = [0u8; 19];
    file.read_exact_at(&mut back, PAGE as u64 + 10).unwrap();
    assert_eq!(&back, b"through the mapping");
    // And the other way: a write to the file shows in the mapping.
    file.seek(SeekFrom::Start(3 * PAGE as u64 - 4)).unwrap();
    file.write_all(b"tail").unwrap();
    let mut tail = [0u8; 4];
    assert_eq!(m.read_slice(&mut tail, 2 * PAGE - 4).unwrap(), 4);
    assert_eq!(&tail, b"tail");
}

#[test]
fn read_only_protection_and_descriptor_mapping() {
    let shm = SharedMemory::new("ro", 2 * PAGE as u64).unwrap();
    let writer = MemoryMappingBuilder::new(2 * PAGE)
        .from_descriptor(&shm)
        .build()
        .unwrap();
    writer.write_obj(77u64, PAGE + 8).unwrap();
    let reader = MemoryMappingBuilder::new(PAGE)
        .from_shared_memory(&shm)
        .offset(PAGE as u64)
        .protection(Protection::read())
        .build()
        .unwrap();
    assert_eq!(reader.read_obj::<u64>(8).unwrap(), 77);
    let perms = common::page_perms(reader.as_ptr() as usize, PAGE);
    assert_eq!(perms, ["r--s"]);
}

#[test]
fn aligned_and_populated_mappings() {
    for align in [PAGE as u64, 64 << 10, 2 << 20, 1 << 30] {
        let m = MemoryMappingBuilder::new(PAGE + 1)
            .align(align)
            .populate()
            .build()
            .unwrap();
        assert_eq!(m.as_ptr() as u64 % align, 0, "align {align:#x}");
        // Trimmed: the pages around it are not ours.
        let perms = common::page_perms(m.as_ptr() as usize, 2 * PAGE);
        assert_eq!(perms, ["rw-s", "rw-s"]);
    }
    // Alignments below a page are a page.
    let m = MemoryMappingBuilder::new(PAGE).align(1).build().unwrap();
    assert_eq!(m.as_ptr() as usize % PAGE, 0);
    let file = common::temp_file(4 << 20);
    let m = MemoryMappingBuilder::new(2 << 20)
        .from_file(&file)
        .offset(2 << 20)
        .align(2 << 20)
        .populate()
        .build()
        .unwrap();
    assert_eq!(m.as_ptr() as usize % (2 << 20), 0);
}

#[test]
fn refuses_bad_sizes_and_alignments() {
    let err = MemoryMappingBuilder::new(0).build().unwrap_err();
    assert!(matches!(err, Error::InvalidSize { .. }), "{err}");
    for align in [0u64, 3, 4097, u64::MAX] {
        let err = MemoryMappingBuilder::new(PAGE)
            .align(align)
            .build()
            .unwrap_err();
        assert!(
            matches!(err, Error::InvalidAlignment { align: a } if a == align),
            "{err}"
        );
        assert!(err.to_string().contains(&format!("{align:#x}")), "{err}");
    }
    // size + alignment overflows.
    let err = MemoryMappingBuilder::new(usize::MAX / 2 + 1)
        .align(1 << 63)
        .build()
        .unwrap_err();
    assert!(matches!(err, Error::Overflow { .. }), "{err}");
    // Size rounding overflows.
    let err = MemoryMappingBuilder::new(usize::MAX).build().unwrap_err();
    assert!(matches!(err, Error::Overflow { .. }), "{err}");
    // Too big for the address space: the kernel says no, with the size in the message.
    let err = MemoryMappingBuilder::new(1 << 62).build().unwrap_err();
    assert!(matches!(err, Error::Mmap { .. }), "{err}");
    assert!(err.to_string().contains("0x4000000000000000"), "{err}");
    // An aligned build whose reservation fails names the caller's request, not the internal
    // PROT_NONE reservation of size + alignment.
    let err = MemoryMappingBuilder::new(PAGE)
        .align(1 << 62)
        .build()
        .unwrap_err();
    assert!(
        matches!(err, Error::Reserve { what: "an aligned mapping", size, align, .. }
            if size == PAGE && align == 1 << 62),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains("0x1000 bytes") && text.contains("0x4000000000000000"),
        "{text}"
    );
    assert!(!text.contains("0x4000000000001000"), "{text}");
}

#[test]
fn refuses_bad_offsets() {
    let file = common::temp_file(8 * PAGE as u64);
    let build = |offset: u64, size: usize| {
        MemoryMappingBuilder::new(size)
            .from_file(&file)
            .offset(offset)
            .build()
    };
    for (offset, size) in [
        (i64::MAX as u64 + 1, PAGE),
        (u64::MAX, 1),
        (u64::MAX - PAGE as u64 + 1, PAGE),
        (i64::MAX as u64 - PAGE as u64 + 1, 2 * PAGE),
    ] {
        let err = build(offset, size).unwrap_err();
        assert!(
            matches!(err, Error::InvalidOffset { offset: o, size: s } if o == offset && s == size),
            "{offset:#x}: {err}"
        );
        assert!(err.to_string().contains(&format!("{offset:#x}")), "{err}");
    }
    let err = build(100, PAGE).unwrap_err();
    assert!(
        matches!(err, Error::NotPageAligned { value: 100, .. }),
        "{err}"
    );
    let err = MemoryMappingBuilder::new(PAGE)
        .offset(PAGE as u64)
        .build()
        .unwrap_err();
    assert!(matches!(err, Error::OffsetWithoutDescriptor { offset } if offset == PAGE as u64));
    // Offset 0 on anonymous memory is simply the default.
    MemoryMappingBuilder::new(PAGE).offset(0).build().unwrap();
}

#[test]
fn refuses_short_regular_files_but_not_char_devices_or_growable_memfds() {
    let file = common::temp_file(2 * PAGE as u64 + 10);
    let fd = file.as_raw_descriptor();
    // Exactly long enough, including a partial last page.
    MemoryMappingBuilder::new(2 * PAGE + 10)
        .from_file(&file)
        .build()
        .unwrap();
    MemoryMappingBuilder::new(PAGE + 10)
        .from_file(&file)
        .offset(PAGE as u64)
        .build()
        .unwrap();
    for (offset, size) in [
        (0, 2 * PAGE + 11),
        (PAGE as u64, 2 * PAGE),
        (4 * PAGE as u64, 1),
    ] {
        let err = MemoryMappingBuilder::new(size)
            .from_file(&file)
            .offset(offset)
            .build()
            .unwrap_err();
        assert!(
            matches!(err, Error::FileTooShort { fd: f, file_size, offset: o, size: s, end }
                if f == fd && file_size == 2 * PAGE as u64 + 10 && o == offset && s == size
                    && end == offset + size as u64),
            "{err}"
        );
        let text = err.to_string();
        assert!(
            text.contains(&format!("{:#x}", offset + size as u64)),
            "{text}"
        );
        assert!(text.contains(&format!("{:#x}", 2 * PAGE + 10)), "{text}");
    }
    // /dev/zero has no length to check.
    let zero = File::open("/dev/zero").unwrap();
    let m = MemoryMappingBuilder::new(PAGE)
        .from_file(&zero)
        .protection(Protection::read())
        .build()
        .unwrap();
    assert_eq!(m.read_obj::<u64>(0).unwrap(), 0);
}

#[test]
fn a_memfd_is_never_mapped_past_its_end() {
    // 8 KiB over a 4 KiB memfd would SIGBUS on the second page, growable or not: whoever can
    // grow it could as well leave it short.
    let shm = SharedMemory::new("short", PAGE as u64).unwrap();
    for sealed in [false, true] {
        if sealed {
            let mut seals = MemfdSeals::new();
            seals.set_grow_seal();
            shm.add_seals(seals).unwrap();
        }
        let err = MemoryMappingBuilder::new(2 * PAGE)
            .from_shared_memory(&shm)
            .build()
            .unwrap_err();
        assert!(
            matches!(err, Error::FileTooShort { file_size, end, .. }
                if file_size == PAGE as u64 && end == 2 * PAGE as u64),
            "{err}"
        );
    }
    // What fits maps, and reads back.
    let m = MemoryMappingBuilder::new(PAGE)
        .from_shared_memory(&shm)
        .build()
        .unwrap();
    assert_eq!(m.read_obj::<u64>(PAGE - 8).unwrap(), 0);
}

#[test]
fn refuses_closed_hostile_and_unmappable_descriptors() {
    for fd in [-1, i32::MAX, i32::MIN] {
        let err = MemoryMappingBuilder::new(PAGE)
            .from_descriptor(&common::RawNumber(fd))
            .build()
            .unwrap_err();
        assert!(
            matches!(err, Error::BadDescriptor { fd: f, .. } if f == fd),
            "{err}"
        );
        assert!(err.to_string().contains(&fd.to_string()), "{err}");
    }
    // A descriptor that was open and is now closed. It is duplicated high up first, because
    // the kernel hands out the lowest free number and other tests must not reuse it meanwhile.
    let closed = {
        let file = common::temp_file(PAGE as u64);
        // SAFETY: F_DUPFD_CLOEXEC makes a new descriptor we own and close right below.
        let high = unsafe { libc::fcntl(file.as_raw_descriptor(), libc::F_DUPFD_CLOEXEC, 900) };
        assert!(high >= 900);
        // SAFETY: `high` is ours and nothing else refers to it.
        unsafe { libc::close(high) };
        high
    };
    let err = MemoryMappingBuilder::new(PAGE)
        .from_descriptor(&common::RawNumber(closed))
        .build()
        .unwrap_err();
    assert!(
        matches!(err, Error::BadDescriptor { fd, .. } if fd == closed),
        "{err}"
    );

    let (read_end, _write_end) = std::io::pipe().unwrap();
    let err = MemoryMappingBuilder::new(PAGE)
        .from_descriptor(&read_end)
        .build()
        .unwrap_err();
    let fd = read_end.as_raw_descriptor();
    assert!(
        matches!(err, Error::Mmap { fd: Some(f), .. } if f == fd),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains(&format!("of descriptor {fd} ")) && !text.contains("Some("),
        "{text}"
    );
    let err = MemoryMappingBuilder::new(1 << 62).build().unwrap_err();
    assert!(err.to_string().contains("of anonymous memory"), "{err}");
    let dir = File::open("/").unwrap();
    let err = MemoryMappingBuilder::new(PAGE)
        .from_file(&dir)
        .build()
        .unwrap_err();
    assert!(matches!(err, Error::Mmap { .. }), "{err}");
    // A read-only descriptor cannot be mapped shared and writable.
    let ro = common::read_only_file(PAGE as u64);
    let err = MemoryMappingBuilder::new(PAGE)
        .from_file(&ro)
        .build()
        .unwrap_err();
    assert!(
        matches!(&err, Error::Mmap { source, .. } if source.raw_os_error() == Some(libc::EACCES)),
        "{err}"
    );
}

#[test]
fn populate_without_access_is_refused() {
    let err = MemoryMappingBuilder::new(PAGE)
        .protection(Protection::none())
        .populate()
        .build()
        .unwrap_err();
    assert!(matches!(err, Error::PopulateWithoutAccess), "{err}");
    // Without populate a PROT_NONE mapping is fine (a guard or a reservation).
    MemoryMappingBuilder::new(PAGE)
        .protection(Protection::none())
        .build()
        .unwrap();
}

#[test]
fn slices_copy_what_fits_and_refuse_offsets_past_the_end() {
    let m = MemoryMappingBuilder::new(100).build().unwrap();
    assert_eq!(m.write_slice(&[1; 30], 90).unwrap(), 10);
    assert_eq!(m.write_slice(&[1; 30], 100).unwrap(), 0);
    assert_eq!(m.write_slice(&[], 50).unwrap(), 0);
    let mut buf = [0u8; 30];
    assert_eq!(m.read_slice(&mut buf, 85).unwrap(), 15);
    assert_eq!(&buf[..15], &[0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]);
    assert_eq!(m.read_slice(&mut buf, 100).unwrap(), 0);
    for offset in [101, usize::MAX] {
        let err = m.write_slice(&[1], offset).unwrap_err();
        assert!(
            matches!(
                err,
                Error::Volatile(VolatileMemoryError::OutOfBounds { .. })
            ),
            "{err}"
        );
        assert!(m.read_slice(&mut buf, offset).is_err());
    }
}

#[test]
fn objects_plain_and_volatile_with_bounds() {
    let m = MemoryMappingBuilder::new(64).build().unwrap();
    m.write_obj(0x0102_0304_0506_0708u64, 3).unwrap();
    assert_eq!(m.read_obj::<u64>(3).unwrap(), 0x0102_0304_0506_0708);
    m.write_obj(0xffu8, 63).unwrap();
    assert!(m.write_obj(0u16, 63).is_err());
    assert!(m.read_obj::<u64>(57).is_err());
    assert!(m.read_obj::<u64>(usize::MAX - 2).is_err());
    m.write_obj_volatile(0xabcd_u16, 62).unwrap();
    assert_eq!(m.read_obj_volatile::<u16>(62).unwrap(), 0xabcd);
    let err = m.read_obj_volatile::<u32>(2).unwrap_err();
    assert!(matches!(
        err,
        Error::Volatile(VolatileMemoryError::Unaligned { align: 4, .. })
    ));
    assert!(m.write_obj_volatile(0u64, 64).is_err());
    assert!(m.write_obj_volatile(0u64, usize::MAX - 7).is_err());
}

#[test]
fn flush_region_checks_its_range() {
    let m = MemoryMappingBuilder::new(3 * PAGE).build().unwrap();
    m.write_slice(&[9; 100], 50).unwrap();
    m.flush_region(50, 100).unwrap();
    m.flush_region(3 * PAGE, 0).unwrap();
    m.flush_all().unwrap();
    for (offset, len) in [
        (3 * PAGE, 1),
        (0, 3 * PAGE + 1),
        (usize::MAX, 2),
        (1, usize::MAX),
    ] {
        let err = m.flush_region(offset, len).unwrap_err();
        assert!(
            matches!(err, Error::Volatile(_)),
            "{offset:#x}+{len:#x}: {err}"
        );
    }
}

#[test]
fn remove_range_zeroes_pages_and_checks_its_range() {
    let m = MemoryMappingBuilder::new(4 * PAGE).build().unwrap();
    m.get_slice(0, 4 * PAGE).unwrap().write_bytes(0xee);
    m.remove_range(PAGE, PAGE + 1).unwrap(); // rounded up to two pages
    assert!(m.get_slice(PAGE, 2 * PAGE).unwrap().is_all_zero());
    assert_eq!(m.read_obj::<u8>(PAGE - 1).unwrap(), 0xee);
    assert_eq!(m.read_obj::<u8>(3 * PAGE).unwrap(), 0xee);
    m.remove_range(0, 0).unwrap();
    let err = m.remove_range(10, PAGE).unwrap_err();
    assert!(
        matches!(err, Error::NotPageAligned { value: 10, .. }),
        "{err}"
    );
    let err = m.remove_range(2 * PAGE, 3 * PAGE).unwrap_err();
    assert!(matches!(err, Error::InvalidAddress { .. }), "{err}");
    let err = m.remove_range(PAGE, usize::MAX).unwrap_err();
    assert!(matches!(err, Error::Overflow { .. }), "{err}");
}

fn locked_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmLck:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn advice_and_locking() {
    let m = MemoryMappingBuilder::new(2 << 20)
        .align(2 << 20)
        .build()
        .unwrap();
    m.use_hugepages().unwrap();
    m.use_dontfork().unwrap();
    // Locking is the only test in this binary that changes VmLck.
    let before = locked_kib();
    m.lock_all().unwrap();
    assert!(locked_kib() >= before + 2048, "mlock did not lock 2 MiB");
    m.unlock().unwrap();
    assert_eq!(locked_kib(), before);
    m.lock_on_fault().unwrap();
    m.write_obj(1u8, 0).unwrap();
    m.unlock().unwrap();
    let vmas = common::vmas();
    let start = m.as_ptr() as usize;
    assert!(vmas.iter().any(|v| v.start == start), "mapping listed");
}

#[test]
fn mapped_region_range_operations() {
    let file = common::temp_file(4 * PAGE as u64);
    let m = MemoryMappingBuilder::new(4 * PAGE)
        .from_file(&file)
        .build()
        .unwrap();
    m.write_slice(b"page two", 2 * PAGE).unwrap();
    let region: &dyn MappedRegion = &m;
    region.msync(2 * PAGE, 8).unwrap();
    let mut back = [0u8; 8];
    file.read_exact_at(&mut back, 2 * PAGE as u64).unwrap();
    assert_eq!(&back, b"page two");
    region.msync(4 * PAGE, 0).unwrap();
    let err = region.msync(5, PAGE).unwrap_err();
    assert!(
        matches!(err, Error::NotPageAligned { value: 5, .. }),
        "{err}"
    );
    let err = region.msync(3 * PAGE, PAGE + 1).unwrap_err();
    assert!(matches!(err, Error::InvalidAddress { .. }), "{err}");
    assert!(err.to_string().contains("0x3000+0x1001"), "{err}");
    let err = region.msync(PAGE, usize::MAX).unwrap_err();
    assert!(matches!(err, Error::Overflow { .. }), "{err}");
    region.madvise(0, PAGE, libc::MADV_WILLNEED).unwrap();
    // Only the allow-list reaches the kernel. Guard pages (Linux 6.13's MADV_GUARD_INSTALL,
    // 102), poisoning and soft-offlining would make the next safe read fault.
    for advice in [
        12345,
        -1,
        102,
        libc::MADV_HWPOISON,
        libc::MADV_SOFT_OFFLINE,
        libc::MADV_FREE,
    ] {
        let err = region.madvise(0, PAGE, advice).unwrap_err();
        assert!(
            matches!(err, Error::UnsupportedAdvice { advice: a } if a == advice),
            "{err}"
        );
        assert!(err.to_string().contains(&advice.to_string()), "{err}");
        assert_eq!(&m.read_obj::<[u8; 8]>(2 * PAGE).unwrap(), b"page two");
    }
    for &(advice, name) in base::mmap::ALLOWED_ADVICE {
        // Allowed advice is the kernel's to judge; none of it may make the memory fault.
        let _ = region.madvise(0, PAGE, advice);
        let _ = m.read_obj::<u64>(0).unwrap();
        assert!(name.starts_with("MADV_"));
    }
    // The kernel's refusal names the advice.
    let ro_file = common::read_only_file(PAGE as u64);
    let ro = MemoryMappingBuilder::new(PAGE)
        .from_file(&ro_file)
        .protection(Protection::read())
        .build()
        .unwrap();
    let err = (&ro as &dyn MappedRegion)
        .madvise(0, PAGE, libc::MADV_REMOVE)
        .unwrap_err();
    assert!(
        matches!(&err, Error::Madvise { advice, name: "MADV_REMOVE", offset: 0, size, .. }
            if *advice == libc::MADV_REMOVE && *size == PAGE),
        "{err}"
    );
    assert!(err.to_string().contains("MADV_REMOVE = 9"), "{err}");
    let mut m = m;
    let region: &mut dyn MappedRegion = &mut m;
    let err = region
        .add_fd_mapping(0, PAGE, &file, 0, Protection::read())
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Unsupported {
                op: "add_fd_mapping"
            }
        ),
        "{err}"
    );
    let err = region.remove_mapping(0, PAGE).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Unsupported {
                op: "remove_mapping"
            }
        ),
        "{err}"
    );
}

#[test]
fn external_mapping_checks_its_arguments() {
    let m = MemoryMappingBuilder::new(2 * PAGE).build().unwrap();
    // SAFETY: `m` outlives `ext` in this test and is never remapped.
    let ext = unsafe { ExternalMapping::new(m.as_ptr(), 2 * PAGE) }.unwrap();
    let region: &dyn MappedRegion = &ext;
    assert_eq!(region.size(), 2 * PAGE);
    assert_eq!(region.as_ptr(), m.as_ptr());
    region.msync(0, 2 * PAGE).unwrap();
    region.madvise(PAGE, PAGE, libc::MADV_REMOVE).unwrap();
    // SAFETY: each of these is refused before anything is stored.
    unsafe {
        let err = ExternalMapping::new(std::ptr::null_mut(), PAGE).unwrap_err();
        assert!(matches!(err, Error::InvalidAddress { .. }), "{err}");
        let err = ExternalMapping::new(m.as_ptr(), 0).unwrap_err();
        assert!(matches!(err, Error::InvalidSize { .. }), "{err}");
        let err = ExternalMapping::new(m.as_ptr().add(8), PAGE).unwrap_err();
        assert!(matches!(err, Error::NotPageAligned { .. }), "{err}");
        let err = ExternalMapping::new(m.as_ptr(), usize::MAX - PAGE + 1).unwrap_err();
        assert!(matches!(err, Error::Overflow { .. }), "{err}");
        // A partial last page is refused: msync and madvise act on whole pages, and the rest
        // of that page is not the region's (madvise(0, 100, MADV_DONTNEED) would discard it).
        for size in [100, PAGE + 1, usize::MAX] {
            let err = ExternalMapping::new(m.as_ptr(), size).unwrap_err();
            assert!(
                matches!(err, Error::NotPageAligned { what: "external mapping size", value, .. }
                    if value == size as u64),
                "{err}"
            );
        }
    }
}

#[test]
fn range_operations_never_reach_past_a_region() {
    // A 100-byte MemoryMapping owns its whole page; msync and madvise of its 100 bytes act on
    // that page only, and the next page, mapped by someone else, keeps its bytes.
    let backing = MemoryMappingBuilder::new(2 * PAGE).build().unwrap();
    backing.write_slice(&[0x5a; 2 * PAGE], 0).unwrap();
    let small = MemoryMappingBuilder::new(100).build().unwrap();
    small.write_slice(&[1; 100], 0).unwrap();
    let region: &dyn MappedRegion = &small;
    region.madvise(0, 100, libc::MADV_DONTNEED).unwrap();
    region.msync(0, 100).unwrap();
    let err = region.madvise(0, 101, libc::MADV_DONTNEED).unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidAddress {
                offset: 0,
                size: 101,
                ..
            }
        ),
        "{err}"
    );
    // SAFETY: `backing` outlives `ext` and is never remapped meanwhile.
    let ext = unsafe { ExternalMapping::new(backing.as_ptr(), PAGE) }.unwrap();
    let region: &dyn MappedRegion = &ext;
    region.madvise(0, PAGE, libc::MADV_WILLNEED).unwrap();
    let err = region
        .madvise(0, PAGE + 1, libc::MADV_DONTNEED)
        .unwrap_err();
    assert!(matches!(err, Error::InvalidAddress { .. }), "{err}");
    assert_eq!(backing.read_obj::<u8>(PAGE).unwrap(), 0x5a);
    // The plumbing under msync and madvise checks its range too, with checked arithmetic.
    for (offset, len) in [
        (usize::MAX, 2),
        (usize::MAX - 0x10, 0x20),
        (PAGE, usize::MAX),
    ] {
        let err = region
            .for_each_mapped_range(offset, len, &mut |_, _, _| panic!("called"))
            .unwrap_err();
        assert!(
            matches!(err, Error::Overflow { .. }),
            "{offset:#x}+{len:#x}: {err}"
        );
    }
    let err = region
        .for_each_mapped_range(0, 2 * PAGE, &mut |_, _, _| panic!("called"))
        .unwrap_err();
    assert!(matches!(err, Error::InvalidAddress { .. }), "{err}");
}

#[test]
fn msync_reaches_a_separate_descriptor() {
    let mut file = common::temp_file(PAGE as u64);
    let m = MemoryMappingBuilder::new(PAGE)
        .from_file(&file)
        .build()
        .unwrap();
    m.write_slice(&[0x42; 16], 0).unwrap();
    m.msync().unwrap();
    let mut back = [0u8; 16];
    file.rewind().unwrap();
    file.read_exact(&mut back).unwrap();
    assert_eq!(back, [0x42; 16]);
}

#[test]
fn protection_is_checked_before_any_access_faults() {
    let shm = SharedMemory::new("prot", PAGE as u64).unwrap();
    let ro = MemoryMappingBuilder::new(PAGE)
        .from_shared_memory(&shm)
        .protection(Protection::read())
        .build()
        .unwrap();
    // Reads and flushes are fine on a read-only mapping...
    assert_eq!(ro.read_obj::<u32>(0).unwrap(), 0);
    assert_eq!(ro.read_obj_volatile::<u32>(0).unwrap(), 0);
    assert_eq!(ro.read_slice(&mut [0u8; 8], 0).unwrap(), 8);
    ro.flush_all().unwrap();
    // ...writes are refused with a typed error instead of a SIGSEGV.
    let no_write =
        |e: Error| matches!(e, Error::NoAccess { needed, .. } if needed == Protection::write());
    assert!(no_write(ro.write_slice(&[1], 0).unwrap_err()));
    assert!(no_write(ro.write_obj(1u8, 0).unwrap_err()));
    assert!(no_write(ro.write_obj_volatile(1u8, 0).unwrap_err()));
    let err = ro.write_obj(1u8, 0).unwrap_err();
    assert!(
        err.to_string().contains("write_obj") && err.to_string().contains("r-"),
        "{err}"
    );
    // A volatile slice can be written, so it needs read-write; its bounds are still checked.
    assert_eq!(
        ro.get_slice(8, 16).unwrap_err(),
        VolatileMemoryError::NotMapped {
            offset: 8,
            count: 16
        }
    );
    assert!(matches!(
        ro.get_slice(PAGE, 1),
        Err(VolatileMemoryError::OutOfBounds { .. })
    ));

    let none = MemoryMappingBuilder::new(PAGE)
        .protection(Protection::none())
        .build()
        .unwrap();
    let no_read =
        |e: Error| matches!(e, Error::NoAccess { needed, .. } if needed == Protection::read());
    assert!(no_read(none.read_obj::<u8>(0).unwrap_err()));
    assert!(no_read(none.read_obj_volatile::<u8>(0).unwrap_err()));
    assert!(no_read(none.read_slice(&mut [0u8; 1], 0).unwrap_err()));
    assert!(no_read(none.flush_region(0, 1).unwrap_err()));
    assert!(no_read(none.flush_all().unwrap_err()));
    assert!(matches!(
        none.write_obj(0u8, 0),
        Err(Error::NoAccess { .. })
    ));
    // Syscalls that do not touch the bytes still work.
    none.msync().unwrap();
    (&none as &dyn MappedRegion)
        .madvise(0, PAGE, libc::MADV_DONTNEED)
        .unwrap();
}

#[test]
fn errors_carry_an_errno_for_the_wire() {
    let ro = common::read_only_file(PAGE as u64);
    let err = MemoryMappingBuilder::new(PAGE)
        .from_file(&ro)
        .build()
        .unwrap_err();
    assert_eq!(err.errno(), libc::EACCES);
    let err = MemoryMappingBuilder::new(PAGE)
        .from_descriptor(&common::RawNumber(-1))
        .build()
        .unwrap_err();
    assert_eq!(err.errno(), libc::EBADF);
    assert_eq!(
        MemoryMappingBuilder::new(0).build().unwrap_err().errno(),
        libc::EINVAL
    );
    let err = MemoryMappingBuilder::new(usize::MAX).build().unwrap_err();
    assert_eq!(err.errno(), libc::EOVERFLOW);
    let mut m = MemoryMappingBuilder::new(PAGE).build().unwrap();
    let region: &mut dyn MappedRegion = &mut m;
    assert_eq!(
        region.remove_mapping(0, PAGE).unwrap_err().errno(),
        libc::ENOTSUP
    );
}

#[test]
fn build_fixed_maps_exactly_where_asked() {
    // A reservation of our own to map into.
    let reservation = MemoryMappingBuilder::new(8 * PAGE)
        .protection(Protection::none())
        .build()
        .unwrap();
    let file = common::temp_file(2 * PAGE as u64);
    let at = reservation.as_ptr().wrapping_add(2 * PAGE);
    // SAFETY: `at..at + 2 pages` lies in our reservation, which nothing else uses; the
    // fixed mapping replaces that part of it, and `reservation` is forgotten below so that
    // only `fixed` and the rest of the reservation are ever unmapped, each once.
    let fixed = unsafe {
        MemoryMappingBuilder::new(2 * PAGE)
            .from_file(&file)
            .build_fixed(at)
    }
    .unwrap();
    assert_eq!(fixed.as_ptr(), at);
    fixed.write_obj(0xabcdu16, PAGE).unwrap();
    let mut back = [0u8; 2];
    file.read_exact_at(&mut back, PAGE as u64).unwrap();
    assert_eq!(u16::from_ne_bytes(back), 0xabcd);
    assert_eq!(common::page_perms(at as usize, 2 * PAGE), ["rw-s", "rw-s"]);
    // Refusals, each before anything is mapped.
    let page_in = reservation.as_ptr().wrapping_add(6 * PAGE);
    // SAFETY: every call below is refused before mmap is called.
    unsafe {
        let err = MemoryMappingBuilder::new(PAGE)
            .build_fixed(std::ptr::null_mut())
            .unwrap_err();
        assert!(matches!(err, Error::InvalidAddress { .. }), "{err}");
        let err = MemoryMappingBuilder::new(PAGE)
            .build_fixed(page_in.add(8))
            .unwrap_err();
        assert!(matches!(err, Error::NotPageAligned { .. }), "{err}");
        let err = MemoryMappingBuilder::new(PAGE)
            .align(1 << 40)
            .build_fixed(page_in)
            .unwrap_err();
        assert!(
            matches!(err, Error::NotAligned { align, .. } if align == 1 << 40),
            "{err}"
        );
        let err = MemoryMappingBuilder::new(2 * PAGE)
            .build_fixed((usize::MAX & !(PAGE - 1)) as *mut u8)
            .unwrap_err();
        assert!(matches!(err, Error::Overflow { .. }), "{err}");
        let err = MemoryMappingBuilder::new(0)
            .build_fixed(page_in)
            .unwrap_err();
        assert!(matches!(err, Error::InvalidSize { .. }), "{err}");
        let err = MemoryMappingBuilder::new(4 * PAGE)
            .from_file(&file)
            .build_fixed(page_in)
            .unwrap_err();
        assert!(matches!(err, Error::FileTooShort { .. }), "{err}");
    }
    // The reservation (a shared PROT_NONE mapping) is untouched.
    assert_eq!(common::page_perms(page_in as usize, PAGE), ["---s"]);
    // Split ownership: drop the fixed mapping, then unmap the reservation's other pages by
    // hand instead of letting `reservation` unmap a range that `fixed` owned.
    drop(fixed);
    let (addr, len) = (reservation.as_ptr(), reservation.size());
    std::mem::forget(reservation);
    // SAFETY: the reservation's range is ours and nothing uses it any more.
    unsafe { libc::munmap(addr as *mut libc::c_void, len) };
}

#[test]
fn mergeable_advice_reaches_the_kernel() {
    let m = MemoryMappingBuilder::new(4 * PAGE).build().unwrap();
    match m.use_mergeable() {
        Ok(()) => {}
        // Kernels without KSM answer EINVAL, named with the advice.
        Err(Error::Madvise {
            name: "MADV_MERGEABLE",
            source,
            ..
        }) => {
            assert_eq!(source.raw_os_error(), Some(libc::EINVAL))
        }
        Err(e) => panic!("{e}"),
    }
    m.write_obj(1u64, 0).unwrap();
}

#[test]
fn a_mapped_memfd_cannot_be_shrunk_by_anyone() {
    // Found in review: a clone of the memfd's descriptor could truncate it under the mapping,
    // and the next safe read raised SIGBUS. Mapping now seals it against shrinking.
    use std::os::fd::AsFd;
    let shm = SharedMemory::new("sealed by mapping", 2 * PAGE as u64).unwrap();
    // A refused mapping leaves the memfd as it was.
    let err = MemoryMappingBuilder::new(4 * PAGE)
        .from_shared_memory(&shm)
        .build()
        .unwrap_err();
    assert!(matches!(err, Error::FileTooShort { .. }), "{err}");
    assert!(!shm.get_seals().unwrap().shrink_seal());
    let m = MemoryMappingBuilder::new(2 * PAGE)
        .from_shared_memory(&shm)
        .build()
        .unwrap();
    assert!(shm.get_seals().unwrap().shrink_seal());
    let clone = File::from(base::SafeDescriptor::try_clone_borrowed(shm.as_fd()).unwrap());
    assert_eq!(
        clone.set_len(0).unwrap_err().raw_os_error(),
        Some(libc::EPERM)
    );
    assert_eq!(m.read_obj::<u64>(PAGE).unwrap(), 0);
    // A memfd that refuses seals is mapped as it is (like a regular file, it is the caller's
    // to keep whole).
    let locked = SharedMemory::new("refuses seals", PAGE as u64).unwrap();
    let mut seal = MemfdSeals::new();
    seal.set_seal_seal();
    locked.add_seals(seal).unwrap();
    MemoryMappingBuilder::new(PAGE)
        .from_shared_memory(&locked)
        .build()
        .unwrap();
    assert!(!locked.get_seals().unwrap().shrink_seal());
}

#[test]
fn dev_zero_maps_only_at_offset_zero() {
    // Found in review: a shared /dev/zero mapping is a new shmem object as large as the
    // mapping, so at an offset its later pages raised SIGBUS.
    let zero = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/zero")
        .unwrap();
    let fd = zero.as_raw_descriptor();
    for offset in [PAGE as u64, 1 << 20] {
        let err = MemoryMappingBuilder::new(2 * PAGE)
            .from_file(&zero)
            .offset(offset)
            .build()
            .unwrap_err();
        assert!(
            matches!(err, Error::DeviceOffset { fd: f, offset: o } if f == fd && o == offset),
            "{err}"
        );
    }
    let m = MemoryMappingBuilder::new(2 * PAGE)
        .from_file(&zero)
        .build()
        .unwrap();
    m.write_obj(1u8, PAGE).unwrap();
    let mut arena = base::MemoryMappingArena::new(4 * PAGE).unwrap();
    let err = arena
        .add_fd_offset(0, PAGE, &zero, PAGE as u64)
        .unwrap_err();
    assert!(matches!(err, Error::DeviceOffset { .. }), "{err}");
}

#[test]
fn remove_never_punches_file_bytes_past_a_partial_last_page() {
    // Found in review: MADV_REMOVE of a 4096+100-byte mapping's last 100 bytes punched out
    // the file's bytes 4196..8192, which the mapping never claimed.
    let file = common::temp_file(2 * PAGE as u64);
    file.write_all_at(&[0xaa; 2 * PAGE], 0).unwrap();
    let size = PAGE + 100;
    let m = MemoryMappingBuilder::new(size)
        .from_file(&file)
        .build()
        .unwrap();
    let region: &dyn MappedRegion = &m;
    for (offset, count) in [(PAGE, 100), (0, size)] {
        let err = region
            .madvise(offset, count, libc::MADV_REMOVE)
            .unwrap_err();
        assert!(
            matches!(err, Error::InvalidAddress { offset: o, size: s, .. } if o == offset && s == count),
            "{err}"
        );
        let err = m.remove_range(offset, count).unwrap_err();
        assert!(matches!(err, Error::InvalidAddress { .. }), "{err}");
    }
    // Whole pages inside it can go; advice that keeps the data may round.
    region.madvise(0, PAGE, libc::MADV_REMOVE).unwrap();
    region.madvise(PAGE, 100, libc::MADV_DONTNEED).unwrap();
    let mut back = vec![0u8; 2 * PAGE];
    file.read_exact_at(&mut back, 0).unwrap();
    assert!(back[..PAGE].iter().all(|&b| b == 0));
    assert!(back[PAGE..].iter().all(|&b| b == 0xaa));
}

#[test]
fn unaligned_volatile_errors_name_the_callers_offset() {
    let m = MemoryMappingBuilder::new(PAGE).build().unwrap();
    let err = m.read_obj_volatile::<u64>(3).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Volatile(VolatileMemoryError::Unaligned {
                offset: 3,
                align: 8,
                ..
            })
        ),
        "{err}"
    );
    assert!(err.to_string().contains("offset 0x3"), "{err}");
}

#[test]
fn mapped_ranges_carry_the_mappings_protection() {
    let report = |region: &dyn MappedRegion, offset, len| {
        let mut seen = Vec::new();
        region
            .for_each_mapped_range(offset, len, &mut |o, l, prot| {
                seen.push((o, l, prot));
                Ok(())
            })
            .unwrap();
        seen
    };
    let ro = MemoryMappingBuilder::new(2 * PAGE)
        .protection(Protection::read())
        .build()
        .unwrap();
    assert_eq!(report(&ro, PAGE, PAGE), [(PAGE, PAGE, Protection::read())]);
    let rw = MemoryMappingBuilder::new(2 * PAGE).build().unwrap();
    assert_eq!(
        report(&rw, 0, 2 * PAGE),
        [(0, 2 * PAGE, Protection::read_write())]
    );
    // SAFETY: `rw` outlives `ext` in this test and stays mapped read-write.
    let ext = unsafe { ExternalMapping::new(rw.as_ptr(), 2 * PAGE) }.unwrap();
    assert_eq!(report(&ext, 0, PAGE), [(0, PAGE, Protection::read_write())]);
}
