// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Several threads, each with its own clone, write and read disjoint ranges (one of them
//! across a region boundary) and one shared, overlapping range; nothing is lost or torn. And
//! an object that crosses a region boundary is copied in untorn aligned pieces, as inside a
//! region.

use std::sync::Barrier;

use vm_memory::{GuestAddress, GuestMemory};

const P: u64 = 4096;
const THREADS: u64 = 4;
const ROUNDS: u64 = 2000;
const SLOT: u64 = 3 * P;
/// The shared range: every thread writes whole u64s here.
const SHARED: GuestAddress = GuestAddress(0x20_0000);
const SHARED_WORDS: u64 = 64;

/// A u64 with the same byte repeated: any mix of two writers' bytes (a torn access) would
/// show as a value with differing bytes.
fn word(tid: u64, round: u64) -> u64 {
    0x0101_0101_0101_0101 * ((tid * 31 + round) % 255 + 1)
}

/// Disjoint ranges; thread 1's straddles the boundary between the two contiguous regions.
fn range_of(tid: u64) -> GuestAddress {
    if tid == 1 {
        GuestAddress(0x10000 - SLOT / 2)
    } else {
        GuestAddress(tid * SLOT)
    }
}

#[test]
fn threads_share_one_memory_without_losing_or_tearing_data() {
    // Two contiguous regions (the boundary at 0x10000 falls inside thread 1's slot), and a
    // third region after a hole for the shared words.
    let mem = GuestMemory::new(&[
        (GuestAddress(0), 0x10000),
        (GuestAddress(0x10000), 0x10000),
        (SHARED, P),
    ])
    .unwrap();
    let barrier = Barrier::new(THREADS as usize);
    std::thread::scope(|scope| {
        for tid in 0..THREADS {
            let mem = mem.clone();
            let barrier = &barrier;
            scope.spawn(move || {
                let mine = range_of(tid);
                barrier.wait();
                for round in 0..ROUNDS {
                    let fill = vec![(tid as u8) << 4 | (round % 16) as u8; SLOT as usize];
                    mem.write_all_at_addr(&fill, mine).unwrap();
                    let mut back = vec![0u8; SLOT as usize];
                    mem.read_exact_at_addr(&mut back, mine).unwrap();
                    assert!(
                        back == fill,
                        "thread {tid} round {round}: its own range changed"
                    );
                    for i in 0..SHARED_WORDS {
                        let at = SHARED.unchecked_add(i * 8);
                        mem.write_obj_at_addr_volatile(word(tid, round + i), at)
                            .unwrap();
                        let seen: u64 = mem.read_obj_from_addr_volatile(at).unwrap();
                        assert_eq!(
                            seen,
                            (seen & 0xff) * 0x0101_0101_0101_0101,
                            "torn {seen:#x}"
                        );
                        let plain: u64 = mem.read_obj_from_addr(at).unwrap();
                        assert_eq!(
                            plain,
                            (plain & 0xff) * 0x0101_0101_0101_0101,
                            "torn {plain:#x}"
                        );
                    }
                }
            });
        }
    });
    // Each thread's range holds its last fill.
    for tid in 0..THREADS {
        let mine = range_of(tid);
        let mut back = vec![0u8; SLOT as usize];
        mem.read_exact_at_addr(&mut back, mine).unwrap();
        let last = (tid as u8) << 4 | ((ROUNDS - 1) % 16) as u8;
        assert!(back.iter().all(|&b| b == last), "thread {tid}'s range");
    }
    // Each shared word holds some thread's last write for it.
    for i in 0..SHARED_WORDS {
        let got: u64 = mem.read_obj_from_addr(SHARED.unchecked_add(i * 8)).unwrap();
        let candidates: Vec<u64> = (0..THREADS).map(|t| word(t, ROUNDS - 1 + i)).collect();
        assert!(candidates.contains(&got), "word {i}: {got:#x}");
    }
}

/// Races a writer that flips the `N`-byte object at `at` between all zeros and all ones
/// against a reader that reads it whole and checks that every aligned piece in `pieces`
/// (offsets into the object, and sizes) is uniform.
fn race_object<const N: usize>(mem: &GuestMemory, at: GuestAddress, pieces: &[(usize, usize)]) {
    use std::sync::atomic::{AtomicBool, Ordering};
    struct Stop<'a>(&'a AtomicBool);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let stop = AtomicBool::new(false);
    // Start from a uniform object, whatever an earlier race left in these bytes.
    mem.write_obj_at_addr([0u8; N], at).unwrap();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let mut ones = true;
            while !stop.load(Ordering::Relaxed) {
                let v = if ones { [0xffu8; N] } else { [0u8; N] };
                mem.write_obj_at_addr(v, at).unwrap();
                ones = !ones;
            }
        });
        let _stop = Stop(&stop);
        for _ in 0..200_000 {
            let obj: [u8; N] = mem.read_obj_from_addr(at).unwrap();
            for &(offset, len) in pieces {
                let piece = &obj[offset..offset + len];
                assert!(
                    piece.iter().all(|&b| b == piece[0]),
                    "torn {len}-byte piece at {:#x}: {obj:x?}",
                    at.0 + offset as u64
                );
            }
        }
    });
}

#[test]
fn objects_across_a_region_boundary_keep_their_aligned_pieces_whole() {
    let mem = GuestMemory::new(&[(GuestAddress(0), P), (GuestAddress(P), P)]).unwrap();
    // A u32 at 0xffd: its aligned u16 at 0xffe lies wholly in the first region.
    race_object::<4>(&mem, GuestAddress(P - 3), &[(1, 2)]);
    // 16 bytes at 0xffa: u16 @0xffa and u32 @0xffc in the first region, u64 @0x1000 and
    // u16 @0x1008 in the second.
    race_object::<16>(
        &mem,
        GuestAddress(P - 6),
        &[(0, 2), (2, 4), (6, 8), (14, 2)],
    );
}

#[test]
fn unaligned_objects_inside_a_region_keep_their_aligned_pieces_whole() {
    let mem = GuestMemory::new(&[(GuestAddress(0), P)]).unwrap();
    // 11 bytes at 0x101: u8 @0x101, u16 @0x102, u32 @0x104, u32 @0x108 (as 8 would not fit).
    race_object::<11>(&mem, GuestAddress(0x101), &[(1, 2), (3, 4), (7, 4)]);
}
