// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Random layouts and random in-range accesses give the same bytes here and in rust-vmm's
//! `vm-memory` crate.

use proptest::prelude::*;
use rust_vm_memory::{Bytes, GuestAddress as TheirAddress, GuestMemoryMmap};
use vm_memory::{GuestAddress, GuestMemory};

const P: u64 = 4096;

#[derive(Clone, Debug)]
enum Op {
    Write { at: u64, data: Vec<u8> },
    Read { at: u64, len: usize },
    WriteU64 { at: u64, val: u64 },
    ReadU64 { at: u64 },
    WriteU16 { at: u64, val: u16 },
    ReadU32 { at: u64 },
}

/// Regions as (gap before in pages, size in pages); some gaps are zero so regions touch.
fn layout() -> impl Strategy<Value = Vec<(u64, u64)>> {
    prop::collection::vec((prop_oneof![Just(0u64), 1u64..64], 1u64..32), 1..12).prop_map(|spec| {
        let mut cur = 0;
        spec.into_iter()
            .map(|(gap, pages)| {
                cur += gap * P;
                let region = (cur, pages * P);
                cur += pages * P;
                region
            })
            .collect()
    })
}

/// Operations whose whole range lies in memory (possibly across touching regions): picks a
/// region and an offset, and clips the length to the contiguous run that follows.
fn ops(regions: Vec<(u64, u64)>) -> impl Strategy<Value = (Vec<(u64, u64)>, Vec<Op>)> {
    // Contiguous runs, so accesses may cross region boundaries where regions touch.
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for &(start, size) in &regions {
        match runs.last_mut() {
            Some(last) if last.0 + last.1 == start => last.1 += size,
            _ => runs.push((start, size)),
        }
    }
    let n = runs.len();
    let op = (
        0..n,
        any::<u64>(),
        0usize..3 * P as usize,
        any::<u64>(),
        0u8..6,
    )
        .prop_map(move |(run, off, len, val, kind)| {
            let (start, size) = runs[run];
            let at = start + off % size;
            let room = (start + size - at) as usize;
            let len = len.min(room);
            match kind {
                0 => Op::Write {
                    at,
                    data: (0..len).map(|i| (i as u64 ^ val) as u8).collect(),
                },
                1 => Op::Read { at, len },
                2 if room >= 8 => Op::WriteU64 { at, val },
                3 if room >= 8 => Op::ReadU64 { at },
                4 if room >= 2 => Op::WriteU16 {
                    at,
                    val: val as u16,
                },
                5 if room >= 4 => Op::ReadU32 { at },
                _ => Op::Read {
                    at,
                    len: room.min(1),
                },
            }
        });
    (Just(regions), prop::collection::vec(op, 1..64))
}

/// The same layout in both crates.
fn build(regions: &[(u64, u64)]) -> (GuestMemory, GuestMemoryMmap) {
    let ours = GuestMemory::new(
        &regions
            .iter()
            .map(|&(a, s)| (GuestAddress(a), s))
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let theirs = GuestMemoryMmap::<()>::from_ranges(
        &regions
            .iter()
            .map(|&(a, s)| (TheirAddress(a), s as usize))
            .collect::<Vec<_>>(),
    )
    .unwrap();
    (ours, theirs)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn same_bytes_as_vm_memory((regions, ops) in layout().prop_flat_map(ops)) {
        let (ours, theirs) = build(&regions);
        for op in ops {
            match op {
                Op::Write { at, data } => {
                    ours.write_all_at_addr(&data, GuestAddress(at)).unwrap();
                    theirs.write_slice(&data, TheirAddress(at)).unwrap();
                }
                Op::Read { at, len } => {
                    let (mut a, mut b) = (vec![0u8; len], vec![0u8; len]);
                    ours.read_exact_at_addr(&mut a, GuestAddress(at)).unwrap();
                    theirs.read_slice(&mut b, TheirAddress(at)).unwrap();
                    prop_assert_eq!(a, b, "read {:#x}+{}", at, len);
                }
                Op::WriteU64 { at, val } => {
                    ours.write_obj_at_addr(val, GuestAddress(at)).unwrap();
                    theirs.write_obj(val, TheirAddress(at)).unwrap();
                }
                Op::ReadU64 { at } => {
                    let a: u64 = ours.read_obj_from_addr(GuestAddress(at)).unwrap();
                    let b: u64 = theirs.read_obj(TheirAddress(at)).unwrap();
                    prop_assert_eq!(a, b, "u64 at {:#x}", at);
                }
                Op::WriteU16 { at, val } => {
                    ours.write_obj_at_addr(val, GuestAddress(at)).unwrap();
                    theirs.write_obj(val, TheirAddress(at)).unwrap();
                }
                Op::ReadU32 { at } => {
                    let a: u32 = ours.read_obj_from_addr(GuestAddress(at)).unwrap();
                    let b: u32 = theirs.read_obj(TheirAddress(at)).unwrap();
                    prop_assert_eq!(a, b, "u32 at {:#x}", at);
                }
            }
        }
        // Finally every byte of every region agrees.
        for &(start, size) in &regions {
            let (mut a, mut b) = (vec![0u8; size as usize], vec![0u8; size as usize]);
            ours.read_exact_at_addr(&mut a, GuestAddress(start)).unwrap();
            theirs.read_slice(&mut b, TheirAddress(start)).unwrap();
            prop_assert!(a == b, "region {:#x} differs", start);
        }
    }

    #[test]
    fn same_answers_about_addresses(regions in layout(), probes in prop::collection::vec(any::<u64>(), 64)) {
        use rust_vm_memory::GuestMemoryBackend;
        let (ours, theirs) = build(&regions);
        let end = regions.last().map(|r| r.0 + r.1).unwrap();
        for p in probes {
            let addr = p % (end + P);
            prop_assert_eq!(
                ours.address_in_range(GuestAddress(addr)),
                theirs.find_region(TheirAddress(addr)).is_some(),
                "{:#x}", addr
            );
        }
    }
}
