// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Dirty tracking of the VMM's own writes: which calls mark which pages, that nothing is
//! marked with tracking off or on a refused write, and that a harvester copying pages after
//! moving their bits never misses a write made by another thread.

use vm_memory::{DirtyBitmap, Error, GuestAddress, GuestMemory};

const P: u64 = 4096;

/// Two contiguous regions and one after a hole.
fn memory() -> GuestMemory {
    GuestMemory::new(&[
        (GuestAddress(0), 16 * P),
        (GuestAddress(16 * P), 16 * P),
        (GuestAddress(64 * P), 8 * P),
    ])
    .unwrap()
}

/// Every region's marked runs, as `(region, first page, count)`, harvested (moved out).
fn harvest(mem: &GuestMemory) -> Vec<(usize, usize, usize)> {
    let mut out = Vec::new();
    for (i, region) in mem.memory_regions().iter().enumerate() {
        let mut taken = DirtyBitmap::new(region.dirty_bitmap().pages()).unwrap();
        region.dirty_bitmap().move_into(&mut taken).unwrap();
        out.extend(taken.runs().map(|(first, count)| (i, first, count)));
    }
    out
}

#[test]
fn nothing_is_marked_while_tracking_is_off() {
    let mem = memory();
    assert!(!mem.dirty_tracking());
    mem.write_obj_at_addr(1u64, GuestAddress(0x10)).unwrap();
    mem.write_all_at_addr(&[1; 100], GuestAddress(16 * P - 50))
        .unwrap();
    mem.get_slice_at_addr(GuestAddress(P), 8).unwrap();
    mem.mark_dirty(GuestAddress(0), 4096).unwrap();
    assert_eq!(harvest(&mem), []);
    // A clone shares the switch.
    let clone = mem.clone();
    mem.set_dirty_tracking(true);
    assert!(clone.dirty_tracking());
    clone.write_obj_at_addr(1u8, GuestAddress(3 * P)).unwrap();
    assert_eq!(harvest(&mem), [(0, 3, 1)]);
    mem.set_dirty_tracking(false);
    clone.write_obj_at_addr(1u8, GuestAddress(3 * P)).unwrap();
    assert_eq!(harvest(&mem), []);
    // The epoch moves each time tracking goes off (on any clone), never when it goes on: the
    // same epoch, with tracking on, at two points means no write between went unmarked.
    let before = mem.dirty_tracking_epoch();
    mem.set_dirty_tracking(true);
    assert_eq!(clone.dirty_tracking_epoch(), before);
    clone.set_dirty_tracking(false);
    assert_eq!(mem.dirty_tracking_epoch(), before + 1);
    mem.set_dirty_tracking(false);
    assert_eq!(mem.dirty_tracking_epoch(), before + 2);
}

#[test]
fn every_write_path_marks_exactly_its_pages() {
    let mem = memory();
    mem.set_dirty_tracking(true);
    type Write = fn(&GuestMemory);
    type Runs = &'static [(usize, usize, usize)];
    let cases: [(&str, Write, Runs); 10] = [
        (
            "write_obj",
            |m| m.write_obj_at_addr(7u32, GuestAddress(P + 8)).unwrap(),
            &[(0, 1, 1)],
        ),
        (
            "write_obj across a page",
            |m| m.write_obj_at_addr(7u64, GuestAddress(2 * P - 4)).unwrap(),
            &[(0, 1, 2)],
        ),
        (
            "write_obj across regions",
            |m| m.write_obj_at_addr(7u64, GuestAddress(16 * P - 4)).unwrap(),
            &[(0, 15, 1), (1, 0, 1)],
        ),
        (
            "write_obj_volatile",
            |m| {
                m.write_obj_at_addr_volatile(7u64, GuestAddress(5 * P))
                    .unwrap()
            },
            &[(0, 5, 1)],
        ),
        (
            "write_obj_volatile, large, across regions",
            |m| {
                m.write_obj_at_addr_volatile([7u64; 4], GuestAddress(16 * P - 16))
                    .unwrap()
            },
            &[(0, 15, 1), (1, 0, 1)],
        ),
        (
            "write_all across regions",
            |m| {
                m.write_all_at_addr(&[1; 3 * 4096], GuestAddress(15 * P))
                    .unwrap()
            },
            &[(0, 15, 1), (1, 0, 2)],
        ),
        (
            "write_at_addr stops at the region's end",
            |m| {
                assert_eq!(
                    m.write_at_addr(&[1; 8192], GuestAddress(16 * P - 10))
                        .unwrap(),
                    10
                )
            },
            &[(0, 15, 1)],
        ),
        (
            "get_slice_at_addr",
            |m| {
                m.get_slice_at_addr(GuestAddress(64 * P + 100), 2 * 4096)
                    .unwrap();
            },
            &[(2, 0, 3)],
        ),
        (
            "remove_range",
            |m| m.remove_range(GuestAddress(66 * P), 4097).unwrap(),
            &[(2, 2, 2)],
        ),
        (
            "mark_dirty across regions",
            |m| m.mark_dirty(GuestAddress(16 * P - 1), 2).unwrap(),
            &[(0, 15, 1), (1, 0, 1)],
        ),
    ];
    for (name, write, expected) in cases {
        write(&mem);
        assert_eq!(harvest(&mem), expected, "{name}");
    }
    // Zero-length writes mark nothing.
    mem.write_all_at_addr(&[], GuestAddress(P)).unwrap();
    mem.mark_dirty(GuestAddress(P), 0).unwrap();
    assert_eq!(harvest(&mem), []);
}

#[test]
fn refused_writes_mark_nothing() {
    let mem = memory();
    mem.set_dirty_tracking(true);
    // Into the hole, past the end, overflowing, unaligned volatile.
    assert!(matches!(
        mem.write_all_at_addr(&[1; 8192], GuestAddress(31 * P)),
        Err(Error::InvalidGuestRange { .. })
    ));
    assert!(matches!(
        mem.write_obj_at_addr(1u64, GuestAddress(72 * P - 4)),
        Err(Error::InvalidGuestRange { .. })
    ));
    assert!(matches!(
        mem.write_obj_at_addr(1u64, GuestAddress(40 * P)),
        Err(Error::InvalidGuestAddress(_))
    ));
    assert!(matches!(
        mem.write_obj_at_addr_volatile(1u64, GuestAddress(P + 1)),
        Err(Error::UnalignedObject { .. })
    ));
    assert!(matches!(
        mem.get_slice_at_addr(GuestAddress(16 * P - 8), 16),
        Err(Error::RangeSpansRegions { .. })
    ));
    assert_eq!(harvest(&mem), []);
    // mark_dirty refuses what is not guest memory, whole, with the exact error.
    for (addr, len) in [(40 * P, 1), (31 * P, 2 * 4096), (72 * P, 0), (u64::MAX, 2)] {
        let err = mem.mark_dirty(GuestAddress(addr), len).unwrap_err();
        assert!(
            matches!(
                err,
                Error::InvalidGuestAddress(a) if a == GuestAddress(addr)
            ) || matches!(err, Error::InvalidGuestRange { addr: a, .. } if a == GuestAddress(addr)),
            "{addr:#x}+{len:#x}: {err}"
        );
    }
    let err = mem
        .mark_dirty(GuestAddress(64 * P), usize::MAX)
        .unwrap_err();
    assert!(matches!(err, Error::AccessOverflow { .. }), "{err}");
    assert_eq!(harvest(&mem), []);
}

#[test]
fn a_harvester_that_copies_after_moving_bits_misses_no_write() {
    // Two writer threads write every page once each (so every write is the page's last, and
    // a lost one stays lost) while a harvester keeps moving the bits out and copying the
    // pages it was handed. A last harvest with the writers done must leave the copy equal to
    // the memory: no write slipped between a harvest and its mark.
    let pages = 16384usize;
    let mem = GuestMemory::new(&[(GuestAddress(0), pages as u64 * P)]).unwrap();
    mem.set_dirty_tracking(true);
    let mut copy = vec![0u64; pages];
    let mut taken = DirtyBitmap::new(pages).unwrap();
    let copy_dirty = |copy: &mut [u64], taken: &mut DirtyBitmap| {
        mem.memory_regions()[0]
            .dirty_bitmap()
            .move_into(taken)
            .unwrap();
        for (first, count) in taken.runs() {
            for (p, value) in copy.iter_mut().enumerate().skip(first).take(count) {
                *value = mem.read_obj_from_addr(GuestAddress(p as u64 * P)).unwrap();
            }
        }
        taken.clear();
    };
    let running = std::sync::atomic::AtomicUsize::new(2);
    let started = std::sync::Barrier::new(3);
    let mut during = 0;
    std::thread::scope(|scope| {
        for t in 0..2usize {
            let (mem, running, started) = (&mem, &running, &started);
            scope.spawn(move || {
                started.wait();
                for page in (t..pages).step_by(2) {
                    mem.write_obj_at_addr(page as u64 + 1, GuestAddress(page as u64 * P))
                        .unwrap();
                }
                running.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            });
        }
        started.wait();
        while running.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            copy_dirty(&mut copy, &mut taken);
            during += 1;
        }
    });
    // The harvests did race the writes (else this proves nothing).
    assert!(during >= 10, "only {during} harvests ran during the writes");
    copy_dirty(&mut copy, &mut taken);
    for (p, value) in copy.iter().enumerate() {
        assert_eq!(*value, p as u64 + 1, "page {p}: a write no harvest saw");
    }
}

#[test]
fn a_write_slice_is_marked_when_dropped_so_a_harvest_while_it_is_held_loses_nothing() {
    let mem = memory();
    mem.set_dirty_tracking(true);
    // A device takes a slice, a harvest runs, then the device writes and lets go.
    let slice = mem.get_slice_for_write(GuestAddress(5 * P), 16).unwrap();
    assert_eq!(slice.guest_addr(), GuestAddress(5 * P));
    assert_eq!(harvest(&mem), []);
    slice.write_obj(0xfeedu64, 8).unwrap();
    drop(slice);
    assert_eq!(harvest(&mem), [(0, 5, 1)]);
    // The negative control: the same with a slice marked when handed out. The harvest takes
    // the mark before the write, and the write is in no harvest (why the guard exists).
    let plain = mem.get_slice_at_addr(GuestAddress(6 * P), 16).unwrap();
    assert_eq!(harvest(&mem), [(0, 6, 1)]);
    plain.write_obj(0xfeedu64, 8).unwrap();
    assert_eq!(harvest(&mem), []);
    // With tracking off nothing is marked; refusals name the range and mark nothing.
    mem.set_dirty_tracking(false);
    drop(mem.get_slice_for_write(GuestAddress(7 * P), 8).unwrap());
    mem.set_dirty_tracking(true);
    assert_eq!(harvest(&mem), []);
    assert!(matches!(
        mem.get_slice_for_write(GuestAddress(16 * P - 8), 16),
        Err(Error::RangeSpansRegions { len: 16, .. })
    ));
    assert!(matches!(
        mem.get_slice_for_write(GuestAddress(40 * P), 8),
        Err(Error::InvalidGuestAddress(GuestAddress(a))) if a == 40 * P
    ));
    assert!(matches!(
        mem.get_slice_for_write(GuestAddress(31 * P), 2 * P as usize),
        Err(Error::InvalidGuestRange { .. })
    ));
    assert!(matches!(
        mem.get_slice_for_write(GuestAddress(u64::MAX), 2),
        Err(Error::InvalidGuestAddress(_))
    ));
    // A slice may cross contiguous regions no more than a plain one may.
    assert_eq!(harvest(&mem), []);
}
