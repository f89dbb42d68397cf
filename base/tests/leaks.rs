// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Creating and dropping many mappings, arenas and shared memories, on success and failure
//! paths alike, leaves no mapping and no descriptor behind.
//!
//! One test in its own binary, so no other test opens or maps anything while it counts.

use base::{MemoryMappingArena, MemoryMappingBuilder, Protection, SharedMemory};

mod common;

const ROUNDS: usize = 10_000;
const P: usize = 4096;

#[test]
fn ten_thousand_rounds_leak_nothing() {
    // Everything the loop needs that outlives it is made before counting starts.
    let file = common::temp_file(4 * P as u64);
    let read_only = common::read_only_file(4 * P as u64);
    let (pipe, _pipe_w) = std::io::pipe().unwrap();
    let maps_before = common::maps_line_count();
    let fds_before = common::open_fd_count();

    for i in 0..ROUNDS {
        // Plain and aligned mappings, anonymous and file-backed.
        drop(MemoryMappingBuilder::new(P).build().unwrap());
        drop(
            MemoryMappingBuilder::new(2 * P)
                .from_file(&file)
                .offset(P as u64)
                .align(64 << 10)
                .build()
                .unwrap(),
        );
        // Aligned builds that fail after the over-reservation was made: mmap refuses a
        // writable shared map of a read-only descriptor, or a pipe.
        assert!(MemoryMappingBuilder::new(P)
            .from_file(&read_only)
            .align(2 << 20)
            .build()
            .is_err());
        assert!(MemoryMappingBuilder::new(P)
            .from_descriptor(&pipe)
            .align(2 << 20)
            .build()
            .is_err());
        // Failures before any syscall.
        assert!(MemoryMappingBuilder::new(P)
            .from_descriptor(&common::RawNumber(-1))
            .align(2 << 20)
            .build()
            .is_err());
        assert!(MemoryMappingBuilder::new(5 * P)
            .from_file(&file)
            .build()
            .is_err());

        // Arenas with adds, a failed add, a split by remove and a protect.
        let mut arena = MemoryMappingArena::new(16 * P).unwrap();
        arena.add_anon(0, 4 * P).unwrap();
        arena.add_fd_offset(8 * P, 2 * P, &file, 0).unwrap();
        assert!(arena.add_fd(12 * P, P, &read_only).is_err());
        assert!(arena.add_anon(2 * P, P).is_err());
        arena.remove(P, P).unwrap();
        arena.protect(8 * P, P, Protection::read()).unwrap();
        drop(arena);
        drop(MemoryMappingArena::from(
            MemoryMappingBuilder::new(P).build().unwrap(),
        ));

        // Shared memory, its clones, and its refusals.
        let shm = SharedMemory::new("leak-check", 2 * P as u64).unwrap();
        let clone = shm.try_clone().unwrap();
        drop(
            MemoryMappingBuilder::new(2 * P)
                .from_shared_memory(&clone)
                .build()
                .unwrap(),
        );
        drop((shm, clone));
        assert!(SharedMemory::new("bad\0", P as u64).is_err());
        assert!(SharedMemory::new("zero", 0).is_err());

        if i == 0 {
            // Counted after one round too, so a leak shows even if it were tiny.
            assert_eq!(
                common::maps_line_count(),
                maps_before,
                "maps after one round"
            );
            assert_eq!(common::open_fd_count(), fds_before, "fds after one round");
        }
    }

    assert_eq!(
        common::maps_line_count(),
        maps_before,
        "/proc/self/maps lines"
    );
    assert_eq!(common::open_fd_count(), fds_before, "open descriptors");
}
