// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Rows for vm_memory's `rust-vmm` adapter: code written against vm-memory's `Bytes`, run on
//! our `GuestMemory` through the adapter (ours), on our own accessors (baseline: what the
//! adapter costs over calling us directly), and on vm-memory's own `GuestMemoryMmap` (peer),
//! with the same layout and addresses.
//!
//! The batch loops are generic over `Bytes`, as a rust-vmm crate's code is, and each is
//! instantiated here for both memories, so the two differ only in the backend.

use std::hint::black_box;

use rand::rngs::StdRng;
use rand::SeedableRng;
use rust_vm_memory::{Bytes, GuestAddress as TheirAddress};
use vm_memory::{GuestAddress, GuestMemory};

use super::harness::{compare_ops, eight_sites, Op, Plan, Row, BATCH};
use super::vm_memory_rows::{both, even, random_addrs};

/// vm-memory's `read_obj::<u64>` on any backend; the sum.
#[inline(never)]
fn read_generic<M: Bytes<TheirAddress>>(mem: &M, addrs: &[u64]) -> u64
where
    M::E: std::fmt::Debug,
{
    eight_sites!(addrs, |a| mem.read_obj::<u64>(TheirAddress(a)).unwrap())
}

/// vm-memory's `write_obj` of each address at itself on any backend; the count.
#[inline(never)]
fn write_generic<M: Bytes<TheirAddress>>(mem: &M, addrs: &[u64]) -> u64
where
    M::E: std::fmt::Debug,
{
    eight_sites!(addrs, |a| {
        mem.write_obj(a, TheirAddress(a)).unwrap();
        1
    })
}

/// vm-memory's `write_slice` of `buf` at each address on any backend; the count.
#[inline(never)]
fn write_slices_generic<M: Bytes<TheirAddress>>(mem: &M, addrs: &[u64], buf: &[u8]) -> u64
where
    M::E: std::fmt::Debug,
{
    eight_sites!(addrs, |a| {
        mem.write_slice(buf, TheirAddress(a)).unwrap();
        1
    })
}

/// Our own `read_obj_from_addr::<u64>`; the sum.
#[inline(never)]
fn read_native(mem: &GuestMemory, addrs: &[u64]) -> u64 {
    eight_sites!(addrs, |a| mem
        .read_obj_from_addr::<u64>(GuestAddress(a))
        .unwrap())
}

/// Our own `write_obj_at_addr`; the count.
#[inline(never)]
fn write_native(mem: &GuestMemory, addrs: &[u64]) -> u64 {
    eight_sites!(addrs, |a| {
        mem.write_obj_at_addr(a, GuestAddress(a)).unwrap();
        1
    })
}

/// Our own `write_all_at_addr`; the count.
#[inline(never)]
fn write_slices_native(mem: &GuestMemory, addrs: &[u64], buf: &[u8]) -> u64 {
    eight_sites!(addrs, |a| {
        mem.write_all_at_addr(buf, GuestAddress(a)).unwrap();
        1
    })
}

pub fn rows(plan: &Plan, rows: &mut Vec<Row>) {
    const SLICE_BATCH: usize = 64;
    for n in [1u64, 64, 1024] {
        // `n` regions of 64 KiB, each followed by a hole of its size.
        let layout = even(n, n * 0x1_0000);
        let (ours, theirs) = both(&layout, false);
        let mut rng = StdRng::seed_from_u64(0x7276 + n);
        let words = random_addrs(&layout, BATCH, 8, &mut rng);
        rows.push(compare_ops(
            plan,
            &format!("rust-vmm Bytes read_obj u64, {n} regions"),
            vec![
                Op::batch(BATCH, || {
                    black_box(read_generic(&ours, black_box(&words)));
                }),
                Op::batch(BATCH, || {
                    black_box(read_native(&ours, black_box(&words)));
                }),
                Op::batch(BATCH, || {
                    black_box(read_generic(&theirs, black_box(&words)));
                }),
            ],
        ));
        rows.push(compare_ops(
            plan,
            &format!("rust-vmm Bytes write_obj u64, {n} regions"),
            vec![
                Op::batch(BATCH, || {
                    black_box(write_generic(&ours, black_box(&words)));
                }),
                Op::batch(BATCH, || {
                    black_box(write_native(&ours, black_box(&words)));
                }),
                Op::batch(BATCH, || {
                    black_box(write_generic(&theirs, black_box(&words)));
                }),
            ],
        ));
        let pages = random_addrs(&layout, SLICE_BATCH, 4096, &mut rng);
        let buf = vec![0x5au8; 4096];
        rows.push(compare_ops(
            plan,
            &format!("rust-vmm Bytes write_slice 4KiB, {n} regions"),
            vec![
                Op::batch(SLICE_BATCH, || {
                    black_box(write_slices_generic(&ours, black_box(&pages), &buf));
                }),
                Op::batch(SLICE_BATCH, || {
                    black_box(write_slices_native(&ours, black_box(&pages), &buf));
                }),
                Op::batch(SLICE_BATCH, || {
                    black_box(write_slices_generic(&theirs, black_box(&pages), &buf));
                }),
            ],
        ));
    }
}
