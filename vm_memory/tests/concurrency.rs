// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Several threads, each with its own clone, write and read disjoint ranges (one of them
//! across a region boundary) and one shared, overlapping range; nothing is lost or torn.

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
