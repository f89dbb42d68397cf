// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The access API: partial and whole copies, objects, crossings between contiguous regions,
//! holes, the end of memory, overflow, file-backed regions and remove_range.

use std::os::unix::fs::FileExt;
use std::sync::Arc;

use vm_memory::{Error, GuestAddress, GuestMemory, MemoryRegionOptions};

const P: u64 = 4096;

fn g(a: u64) -> GuestAddress {
    GuestAddress(a)
}

/// [0x0, 0x4000) and [0x4000, 0x6000) are contiguous; a hole; then [0x10000, 0x11000).
fn layout() -> GuestMemory {
    GuestMemory::new(&[(g(0), 4 * P), (g(4 * P), 2 * P), (g(0x10000), P)]).unwrap()
}

fn names_addr(err: &Error, addr: u64) -> bool {
    err.to_string().contains(&format!("{addr:#x}"))
}

#[test]
fn partial_calls_stop_at_the_region_end() {
    let mem = layout();
    assert_eq!(mem.write_at_addr(&[1; 100], g(4 * P - 10)).unwrap(), 10);
    let mut buf = [0u8; 100];
    assert_eq!(mem.read_at_addr(&mut buf, g(4 * P - 10)).unwrap(), 10);
    assert_eq!(&buf[..10], &[1; 10]);
    assert_eq!(mem.write_at_addr(&[], g(0)).unwrap(), 0);
    assert_eq!(mem.read_at_addr(&mut [], g(0x10000)).unwrap(), 0);
    for addr in [6 * P, 0x8000, 0x11000, u64::MAX] {
        let err = mem.read_at_addr(&mut buf, g(addr)).unwrap_err();
        assert!(
            matches!(err, Error::InvalidGuestAddress(a) if a == g(addr)),
            "{err}"
        );
        assert!(names_addr(&err, addr));
        assert!(mem.write_at_addr(&buf, g(addr)).is_err());
    }
}

#[test]
fn exact_calls_cross_contiguous_regions_and_stop_at_holes() {
    let mem = layout();
    let data: Vec<u8> = (0..3 * P as usize).map(|i| i as u8).collect();
    // Crosses from region 0 into region 1.
    mem.write_all_at_addr(&data, g(3 * P)).unwrap();
    let mut back = vec![0u8; data.len()];
    mem.read_exact_at_addr(&mut back, g(3 * P)).unwrap();
    assert_eq!(back, data);
    // Region 1 ends at a hole: the call fails, names the hole, and writes nothing.
    let err = mem
        .write_all_at_addr(&[0xff; 16], g(6 * P - 8))
        .unwrap_err();
    assert!(
        matches!(err, Error::InvalidGuestRange { addr, len: 16, hole } if addr == g(6 * P - 8) && hole == g(6 * P)),
        "{err}"
    );
    assert!(names_addr(&err, 6 * P));
    let mut tail = [0u8; 8];
    mem.read_exact_at_addr(&mut tail, g(6 * P - 8)).unwrap();
    assert_ne!(
        tail, [0xff; 8],
        "a failed write_all must not write a prefix"
    );
    let err = mem
        .read_exact_at_addr(&mut [0; 16], g(6 * P - 8))
        .unwrap_err();
    assert!(matches!(err, Error::InvalidGuestRange { .. }), "{err}");
    // Past the end of memory.
    let err = mem
        .read_exact_at_addr(&mut [0; 2], g(0x11000 - 1))
        .unwrap_err();
    assert!(
        matches!(err, Error::InvalidGuestRange { hole, .. } if hole == g(0x11000)),
        "{err}"
    );
    // Starting in a hole.
    let err = mem.write_all_at_addr(&[0; 2], g(0x8000)).unwrap_err();
    assert!(matches!(err, Error::InvalidGuestAddress(_)), "{err}");
    // Zero bytes: fine where memory is, refused where it is not.
    mem.read_exact_at_addr(&mut [], g(0)).unwrap();
    assert!(mem.write_all_at_addr(&[], g(0x8000)).is_err());
}

#[test]
fn overflowing_accesses_are_refused() {
    let mem = GuestMemory::new(&[(g(u64::MAX - 2 * P + 1), P)]).unwrap();
    let top = u64::MAX - 2 * P + 1;
    mem.write_obj_at_addr(1u64, g(top + P - 8)).unwrap();
    let err = mem.read_obj_from_addr::<u64>(g(top + P - 4)).unwrap_err();
    assert!(matches!(err, Error::InvalidGuestRange { .. }), "{err}");
    let mem = layout();
    let big = vec![0u8; 64];
    // A length that wraps past 2^64 from a valid start.
    let err = mem.write_all_at_addr(&big, g(u64::MAX - 10)).unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidGuestAddress(_) | Error::AccessOverflow { .. }
        ),
        "{err}"
    );
    assert!(!mem.is_valid_range(g(0), u64::MAX));
    assert!(mem.checked_offset(g(u64::MAX), 1).is_none());
}

#[test]
fn objects_cross_contiguous_regions_and_fail_at_holes() {
    let mem = layout();
    for addr in [4 * P - 1, 4 * P - 3, 4 * P - 7] {
        mem.write_obj_at_addr(0x0102_0304_0506_0708u64, g(addr))
            .unwrap();
        assert_eq!(
            mem.read_obj_from_addr::<u64>(g(addr)).unwrap(),
            0x0102_0304_0506_0708
        );
    }
    mem.write_obj_at_addr([9u32; 5], g(4 * P - 6)).unwrap();
    assert_eq!(
        mem.read_obj_from_addr::<[u32; 5]>(g(4 * P - 6)).unwrap(),
        [9; 5]
    );
    for addr in [6 * P - 7, 6 * P - 1, 0x11000 - 4] {
        let err = mem.read_obj_from_addr::<u64>(g(addr)).unwrap_err();
        assert!(
            matches!(err, Error::InvalidGuestRange { .. }),
            "{addr:#x}: {err}"
        );
        assert!(mem.write_obj_at_addr(0u64, g(addr)).is_err());
    }
    for addr in [6 * P, 0x8000, u64::MAX - 3] {
        let err = mem.read_obj_from_addr::<u32>(g(addr)).unwrap_err();
        assert!(matches!(err, Error::InvalidGuestAddress(_)), "{err}");
    }
}

#[test]
fn volatile_objects_need_alignment() {
    let mem = layout();
    mem.write_obj_at_addr_volatile(0xdead_beefu32, g(0x100))
        .unwrap();
    assert_eq!(
        mem.read_obj_from_addr_volatile::<u32>(g(0x100)).unwrap(),
        0xdead_beef
    );
    mem.write_obj_at_addr_volatile(u64::MAX, g(4 * P - 8))
        .unwrap();
    assert_eq!(
        mem.read_obj_from_addr_volatile::<u64>(g(4 * P - 8))
            .unwrap(),
        u64::MAX
    );
    let err = mem
        .read_obj_from_addr_volatile::<u32>(g(0x102))
        .unwrap_err();
    assert!(
        matches!(err, Error::UnalignedObject { addr, align: 4 } if addr == g(0x102)),
        "{err}"
    );
    for addr in [4, 4 * P - 4] {
        let err = mem.write_obj_at_addr_volatile(0u64, g(addr)).unwrap_err();
        assert!(
            matches!(err, Error::UnalignedObject { align: 8, .. }),
            "{err}"
        );
        let err = mem
            .write_obj_at_addr_volatile([0u8; 8], g(addr))
            .unwrap_err();
        assert!(
            matches!(err, Error::UnalignedObject { align: 8, .. }),
            "{err}"
        );
    }
    // The same answer inside a region and across one: a 3-byte object cannot be untorn.
    for addr in [0x10, 4 * P - 1, 0x10fff] {
        let err = mem
            .read_obj_from_addr_volatile::<[u8; 3]>(g(addr))
            .unwrap_err();
        assert!(
            matches!(err, Error::Volatile { addr: a, source: base::VolatileMemoryError::NotAtomicSize { size: 3 } } if a == g(addr)),
            "{addr:#x}: {err}"
        );
        let err = mem
            .write_obj_at_addr_volatile([0u8; 3], g(addr))
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::Volatile {
                    source: base::VolatileMemoryError::NotAtomicSize { size: 3 },
                    ..
                }
            ),
            "{addr:#x}: {err}"
        );
    }
    let err = mem
        .read_obj_from_addr_volatile::<u64>(g(0x8000))
        .unwrap_err();
    assert!(
        matches!(err, Error::InvalidGuestAddress(a) if a == g(0x8000)),
        "{err}"
    );
    // Objects larger than 8 bytes may cross contiguous regions (they are not atomic anyway).
    mem.write_obj_at_addr_volatile([3u64; 4], g(4 * P - 16))
        .unwrap();
    assert_eq!(
        mem.read_obj_from_addr_volatile::<[u64; 4]>(g(4 * P - 16))
            .unwrap(),
        [3; 4]
    );
}

#[test]
fn slices_and_host_addresses_stay_in_one_region() {
    let mem = layout();
    let s = mem.get_slice_at_addr(g(P), 2 * P as usize).unwrap();
    s.write_bytes(0x11);
    assert_eq!(mem.read_obj_from_addr::<u8>(g(3 * P - 1)).unwrap(), 0x11);
    assert_eq!(mem.get_slice_at_addr(g(6 * P - 1), 1).unwrap().size(), 1);
    assert_eq!(mem.get_slice_at_addr(g(0), 0).unwrap().size(), 0);
    let err = mem.get_slice_at_addr(g(4 * P - 1), 2).unwrap_err();
    assert!(matches!(err, Error::RangeSpansRegions { .. }), "{err}");
    let err = mem.get_slice_at_addr(g(6 * P - 1), 2).unwrap_err();
    assert!(matches!(err, Error::InvalidGuestRange { .. }), "{err}");
    let err = mem.get_slice_at_addr(g(0x8000), 1).unwrap_err();
    assert!(matches!(err, Error::InvalidGuestAddress(_)), "{err}");
    let err = mem.get_slice_at_addr(g(P), usize::MAX).unwrap_err();
    assert!(matches!(err, Error::AccessOverflow { .. }), "{err}");

    let a = mem.get_host_address(g(0x10000)).unwrap();
    let b = mem.get_host_address_range(g(0x10000 + 8), 8).unwrap();
    assert_eq!(b as usize - a as usize, 8);
    assert!(mem.get_host_address(g(0x11000)).is_err());
    let err = mem.get_host_address_range(g(0x10000), 0).unwrap_err();
    assert!(matches!(err, Error::ZeroLength { .. }), "{err}");
    assert!(mem
        .get_host_address_range(g(0x10000), P as usize + 1)
        .is_err());
}

#[test]
fn queries() {
    let mem = layout();
    assert!(mem.address_in_range(g(0)));
    assert!(mem.address_in_range(g(6 * P - 1)));
    assert!(!mem.address_in_range(g(6 * P)));
    assert!(mem.address_in_range(g(0x10fff)));
    assert!(!mem.address_in_range(g(0x11000)));
    assert!(mem.range_overlap(g(6 * P - 1), g(6 * P)));
    assert!(!mem.range_overlap(g(6 * P), g(0x10000)));
    assert!(mem.range_overlap(g(0x8000), g(0x20000)));
    assert!(!mem.range_overlap(g(0x11000), g(u64::MAX)));
    assert!(!mem.range_overlap(g(0x100), g(0x100)));
    assert_eq!(mem.checked_offset(g(0x100), 0x200), Some(g(0x300)));
    assert_eq!(mem.checked_offset(g(0x100), 6 * P), None);
    assert!(mem.is_valid_range(g(0), 6 * P));
    assert!(!mem.is_valid_range(g(0), 6 * P + 1));
    assert!(mem.is_valid_range(g(0x10000), 0));
    assert!(!mem.is_valid_range(g(0x8000), 0));
    assert!(!mem.is_valid_range(g(u64::MAX), u64::MAX));
}

#[test]
fn region_queries_crosvm_code_expects() {
    let mem = layout();
    // RAM regions sit at increasing offsets of one memfd: 0, 0x4000, 0x6000.
    let (mapping, offset, backing_offset) = mem.find_region(g(4 * P + 0x10)).unwrap();
    assert_eq!((mapping.size(), offset), (2 * P as usize, 0x10));
    assert_eq!(backing_offset, 4 * P + 0x10);
    assert_eq!(mem.offset_from_base(g(0x10000 + 8)).unwrap(), 6 * P + 8);
    assert_eq!(mem.offset_from_base(g(0)).unwrap(), 0);
    let region = mem.region_of(g(5 * P)).unwrap();
    assert_eq!((region.start(), region.end()), (g(4 * P), g(6 * P)));
    assert_eq!(region.size(), 2 * P as usize);
    assert!(region.contains(g(6 * P - 1)) && !region.contains(g(6 * P)) && !region.contains(g(0)));
    assert_eq!(region.backing_offset(), 4 * P);
    assert_eq!(region.mapping().size(), region.size());
    assert!(matches!(
        region.backing(),
        vm_memory::RegionBacking::SharedMemory(_)
    ));
    assert_eq!(region.options().align, 0);
    let starts: Vec<_> = mem.memory_regions().iter().map(|r| r.start()).collect();
    assert_eq!(starts, [g(0), g(4 * P), g(0x10000)]);
    assert!(matches!(
        mem.shm_region(g(0x10000)).unwrap(),
        vm_memory::RegionBacking::SharedMemory(_)
    ));
    // Holes, the end of memory and the top of the address space are refused by name.
    for addr in [6 * P, 0x11000, u64::MAX] {
        let a = g(addr);
        assert!(matches!(mem.find_region(a), Err(Error::InvalidGuestAddress(x)) if x == a));
        assert!(matches!(mem.offset_from_base(a), Err(Error::InvalidGuestAddress(x)) if x == a));
        assert!(matches!(mem.shm_region(a), Err(Error::InvalidGuestAddress(x)) if x == a));
        assert!(matches!(mem.region_of(a), Err(Error::InvalidGuestAddress(x)) if x == a));
    }
}

#[test]
fn file_backed_region_reaches_the_file_after_msync() {
    let file = Arc::new(vmm_sys_util::tempfile::TempFile::new().unwrap().into_file());
    file.set_len(8 * P).unwrap();
    file.write_all_at(b"from the file", 2 * P + 5).unwrap();
    let mem = GuestMemory::new_with_options(&[
        (g(0), 2 * P, MemoryRegionOptions::new()),
        (
            g(2 * P),
            4 * P,
            MemoryRegionOptions::new().file_backed(file.clone(), 2 * P),
        ),
    ])
    .unwrap();
    // What the file held is visible to the guest...
    let mut seen = [0u8; 13];
    mem.read_exact_at_addr(&mut seen, g(2 * P + 5)).unwrap();
    assert_eq!(&seen, b"from the file");
    // ...and what the guest writes reaches the file, even across the RAM/file boundary.
    mem.write_all_at_addr(b"guest wrote this", g(2 * P - 6))
        .unwrap();
    mem.msync_range(g(2 * P), 4 * P).unwrap();
    let mut back = [0u8; 10];
    file.read_exact_at(&mut back, 2 * P).unwrap();
    assert_eq!(&back, b"wrote this");
    // msync ranges: unaligned, a hole, zero, overflow.
    let err = mem.msync_range(g(2 * P + 1), P).unwrap_err();
    assert!(
        matches!(err, Error::MemoryOperation { op: "msync", .. }),
        "{err}"
    );
    let err = mem.msync_range(g(4 * P), 4 * P).unwrap_err();
    assert!(matches!(err, Error::InvalidGuestRange { .. }), "{err}");
    mem.msync_range(g(0), 0).unwrap();
    assert!(mem.msync_range(g(6 * P), 0).is_err());
    assert!(mem.msync_range(g(0), u64::MAX).is_err());
}

#[test]
fn remove_range_zeroes_pages() {
    let mem = layout();
    mem.write_all_at_addr(&vec![0xcc; 6 * P as usize], g(0))
        .unwrap();
    // Across the boundary of the two contiguous regions.
    mem.remove_range(g(3 * P), 2 * P).unwrap();
    let mut buf = vec![0u8; 6 * P as usize];
    mem.read_exact_at_addr(&mut buf, g(0)).unwrap();
    assert!(buf[..3 * P as usize].iter().all(|&b| b == 0xcc));
    assert!(buf[3 * P as usize..5 * P as usize].iter().all(|&b| b == 0));
    assert!(buf[5 * P as usize..].iter().all(|&b| b == 0xcc));
    let err = mem.remove_range(g(10), P).unwrap_err();
    assert!(
        matches!(
            err,
            Error::MemoryOperation {
                op: "remove_range",
                ..
            }
        ),
        "{err}"
    );
    assert!(names_addr(&err, 10));
    let err = mem.remove_range(g(5 * P), 2 * P).unwrap_err();
    assert!(matches!(err, Error::InvalidGuestRange { .. }), "{err}");
    assert!(mem.remove_range(g(0x8000), P).is_err());
    assert!(mem.remove_range(g(0), u64::MAX).is_err());
    mem.remove_range(g(0), 0).unwrap();
}

#[test]
fn huge_lengths_never_reach_outside_a_region() {
    // Found in review: a length near 2^64 wrapped in the exact map's "same bucket" check, and
    // get_slice_at_addr handed out a slice of usize::MAX bytes over the next region.
    let mem = GuestMemory::new(&[(g(0), 0x10000), (g(0x100_0000), 0x10000)]).unwrap();
    for addr in [0, 2, 0x8000, 0xffff, 0x100_0000 + 2] {
        for len in [usize::MAX, usize::MAX - 0xfff, 1 << 63, 0x10001] {
            let err = mem.get_slice_at_addr(g(addr), len).unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::AccessOverflow { .. } | Error::InvalidGuestRange { .. }
                ),
                "{addr:#x}+{len:#x}: {err}"
            );
            let err = mem.get_host_address_range(g(addr), len).unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::AccessOverflow { .. } | Error::InvalidGuestRange { .. }
                ),
                "{addr:#x}+{len:#x}: {err}"
            );
            assert!(!mem.is_valid_range(g(addr), len as u64));
        }
    }
}

#[test]
fn volatile_objects_aligned_beyond_a_page_answer_alike_inside_and_across() {
    // Found in review: inside a region the host address was checked too, so a type aligned
    // to more than a page was refused or not depending on where the mapping landed.
    #[derive(zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable)]
    #[repr(C, align(8192))]
    struct Big([u8; 8192]);
    // The host mapping is 8 KiB-aligned, so guest 0x2000 (8 KiB-aligned) sits at a host
    // address that is not: the case that was refused.
    let inside = GuestMemory::new_with_options(&[(
        g(0x1000),
        4 * P,
        MemoryRegionOptions::new().align(8192),
    )])
    .unwrap();
    let across = GuestMemory::new(&[(g(0x1000), 2 * P), (g(0x3000), 2 * P)]).unwrap();
    for mem in [&inside, &across] {
        mem.write_obj_at_addr_volatile(Big([7; 8192]), g(0x2000))
            .unwrap();
        assert_eq!(
            mem.read_obj_from_addr_volatile::<Big>(g(0x2000)).unwrap().0,
            [7; 8192]
        );
        let Err(err) = mem.read_obj_from_addr_volatile::<Big>(g(0x1000)) else {
            panic!("an unaligned Big was read");
        };
        assert!(
            matches!(err, Error::UnalignedObject { addr, align: 8192 } if addr == g(0x1000)),
            "{err}"
        );
    }
}
