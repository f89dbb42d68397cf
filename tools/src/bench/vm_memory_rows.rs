// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Rows for `vm_memory`, next to raw loads and stores and to rust-vmm's vm-memory.
//!
//! Every nanosecond-scale row runs batches: one call of the timed closure runs a loop over
//! a list of precomputed addresses, calling the accessor at eight separate call sites per
//! turn, unwrapping every `Result`, and hands the sum of the results to `black_box` once.
//! Ours, the raw baseline and vm-memory run the same loop over the same addresses.

use std::hint::black_box;
use std::ptr;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rust_vm_memory::{Bytes, GuestAddress as TheirAddress, GuestMemoryBackend, GuestMemoryMmap};
use vm_memory::{GuestAddress, GuestMemory};

use super::harness::{
    compare, compare_ops, eight_chained, eight_sites, raw_loads, raw_stores, Op, Plan, Row, BATCH,
};
use super::MIB;

// The batch loops, one per accessor and crate. Each is its own function, never inlined into
// the harness, so it is compiled as a caller in another crate would compile it and can be
// found by name in the binary.

/// `read_obj_from_addr::<u64>` at each address; the sum.
#[inline(never)]
fn read_ours(mem: &GuestMemory, addrs: &[u64]) -> u64 {
    eight_sites!(addrs, |a| mem
        .read_obj_from_addr::<u64>(GuestAddress(a))
        .unwrap())
}

/// vm-memory's `read_obj::<u64>` at each address; the sum.
#[inline(never)]
fn read_peer(mem: &GuestMemoryMmap, addrs: &[u64]) -> u64 {
    eight_sites!(addrs, |a| mem.read_obj::<u64>(TheirAddress(a)).unwrap())
}

/// `write_obj_at_addr` of each address at itself; the count.
#[inline(never)]
fn write_ours(mem: &GuestMemory, addrs: &[u64]) -> u64 {
    eight_sites!(addrs, |a| {
        mem.write_obj_at_addr(a, GuestAddress(a)).unwrap();
        1
    })
}

/// vm-memory's `write_obj` of each address at itself; the count.
#[inline(never)]
fn write_peer(mem: &GuestMemoryMmap, addrs: &[u64]) -> u64 {
    eight_sites!(addrs, |a| {
        mem.write_obj(a, TheirAddress(a)).unwrap();
        1
    })
}

/// `steps` dependent `read_obj_from_addr::<u64>`s from `start`.
#[inline(never)]
fn chase_ours(mem: &GuestMemory, start: u64, steps: usize) -> u64 {
    eight_chained!(steps, start, |a| mem
        .read_obj_from_addr::<u64>(GuestAddress(a))
        .unwrap())
}

/// `steps` dependent vm-memory `read_obj::<u64>`s from `start`.
#[inline(never)]
fn chase_peer(mem: &GuestMemoryMmap, start: u64, steps: usize) -> u64 {
    eight_chained!(steps, start, |a| mem
        .read_obj::<u64>(TheirAddress(a))
        .unwrap())
}

/// `steps` dependent raw loads from `start`, each loading the next pointer.
///
/// # Safety
///
/// Every pointer in the chain must be valid for an aligned 8-byte read and hold the next.
#[inline(never)]
unsafe fn chase_raw(start: *const u64, steps: usize) -> *const u64 {
    eight_chained!(steps, start, |p| {
        // SAFETY: the caller vouches for every pointer of the chain.
        unsafe { p.read_volatile() as *const u64 }
    })
}

/// `get_host_address` of each address; the sum of the pointers.
#[inline(never)]
fn host_ours(mem: &GuestMemory, addrs: &[u64]) -> u64 {
    eight_sites!(
        addrs,
        |a| mem.get_host_address(GuestAddress(a)).unwrap().addr() as u64
    )
}

/// vm-memory's `get_host_address` of each address; the sum of the pointers.
#[inline(never)]
fn host_peer(mem: &GuestMemoryMmap, addrs: &[u64]) -> u64 {
    eight_sites!(
        addrs,
        |a| mem.get_host_address(TheirAddress(a)).unwrap().addr() as u64
    )
}

/// `address_in_range` of each address; how many were.
#[inline(never)]
fn in_range_ours(mem: &GuestMemory, addrs: &[u64]) -> u64 {
    eight_sites!(addrs, |a| mem.address_in_range(GuestAddress(a)) as u64)
}

/// vm-memory's `address_in_range` of each address; how many were.
#[inline(never)]
fn in_range_peer(mem: &GuestMemoryMmap, addrs: &[u64]) -> u64 {
    eight_sites!(addrs, |a| mem.address_in_range(TheirAddress(a)) as u64)
}

/// `write_all_at_addr` of `buf` at each address.
#[inline(never)]
fn write_slices_ours(mem: &GuestMemory, addrs: &[u64], buf: &[u8]) -> u64 {
    eight_sites!(addrs, |a| {
        mem.write_all_at_addr(buf, GuestAddress(a)).unwrap();
        1
    })
}

/// vm-memory's `write_slice` of `buf` at each address.
#[inline(never)]
fn write_slices_peer(mem: &GuestMemoryMmap, addrs: &[u64], buf: &[u8]) -> u64 {
    eight_sites!(addrs, |a| {
        mem.write_slice(buf, TheirAddress(a)).unwrap();
        1
    })
}

/// `read_exact_at_addr` into `buf` from each address.
#[inline(never)]
fn read_slices_ours(mem: &GuestMemory, addrs: &[u64], buf: &mut [u8]) -> u64 {
    eight_sites!(addrs, |a| {
        mem.read_exact_at_addr(buf, GuestAddress(a)).unwrap();
        1
    })
}

/// vm-memory's `read_slice` into `buf` from each address.
#[inline(never)]
fn read_slices_peer(mem: &GuestMemoryMmap, addrs: &[u64], buf: &mut [u8]) -> u64 {
    eight_sites!(addrs, |a| {
        mem.read_slice(buf, TheirAddress(a)).unwrap();
        1
    })
}

/// `memcpy` of `len` bytes from `src` to each pointer.
///
/// # Safety
///
/// `src` must be readable and every pointer writable for `len` bytes, without overlap.
#[inline(never)]
unsafe fn copies_to(ptrs: &[*mut u8], src: *const u8, len: usize) -> u64 {
    eight_sites!(ptrs, |p| {
        // SAFETY: the caller vouches for both sides.
        unsafe { ptr::copy_nonoverlapping(src, p, len) };
        1
    })
}

/// `memcpy` of `len` bytes from each pointer to `dst`.
///
/// # Safety
///
/// `dst` must be writable and every pointer readable for `len` bytes, without overlap.
#[inline(never)]
unsafe fn copies_from(ptrs: &[*mut u8], dst: *mut u8, len: usize) -> u64 {
    eight_sites!(ptrs, |p| {
        // SAFETY: the caller vouches for both sides.
        unsafe { ptr::copy_nonoverlapping(p, dst, len) };
        1
    })
}

/// A layout: `(guest address, size)` of each region, sorted.
type Layout = Vec<(u64, u64)>;

/// `n` regions covering `total` bytes, each followed by a hole of its size.
pub(super) fn even(n: u64, total: u64) -> Layout {
    let size = total / n;
    (0..n).map(|i| (i * 2 * size, size)).collect()
}

/// `n` regions of random page-multiple sizes, 4 KiB to 4 MiB on a log scale, each followed
/// by a gap: none a third of the time (so some regions are contiguous), else a random
/// page-multiple gap of the same distribution.
fn irregular(n: usize, rng: &mut StdRng) -> Layout {
    let pages = |rng: &mut StdRng| {
        let bits = rng.random_range(0..=10);
        rng.random_range(1..=1u64 << bits)
    };
    let mut at = 1 << 30;
    let mut layout = Vec::with_capacity(n);
    for _ in 0..n {
        let size = pages(rng) * 4096;
        layout.push((at, size));
        at += size;
        if !rng.random_bool(1.0 / 3.0) {
            at += pages(rng) * 4096;
        }
    }
    layout
}

/// The same layout in both crates; with `touch`, every page written once in each.
pub(super) fn both(layout: &[(u64, u64)], touch: bool) -> (GuestMemory, GuestMemoryMmap) {
    let ours = GuestMemory::new(
        &layout
            .iter()
            .map(|&(a, s)| (GuestAddress(a), s))
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let theirs = GuestMemoryMmap::<()>::from_ranges(
        &layout
            .iter()
            .map(|&(a, s)| (TheirAddress(a), s as usize))
            .collect::<Vec<_>>(),
    )
    .unwrap();
    if touch {
        for &(a, s) in layout {
            for off in (0..s).step_by(4096) {
                ours.write_obj_at_addr(1u8, GuestAddress(a + off)).unwrap();
                theirs.write_obj(1u8, TheirAddress(a + off)).unwrap();
            }
        }
    }
    (ours, theirs)
}

/// `count` random addresses in `layout`: a region picked uniformly, then an offset in it
/// that is a multiple of `align`.
pub(super) fn random_addrs(
    layout: &[(u64, u64)],
    count: usize,
    align: u64,
    rng: &mut StdRng,
) -> Vec<u64> {
    (0..count)
        .map(|_| {
            let (a, s) = layout[rng.random_range(0..layout.len())];
            a + rng.random_range(0..s / align) * align
        })
        .collect()
}

/// The host pointer of every address, from our own lookup.
fn host_ptrs(mem: &GuestMemory, addrs: &[u64]) -> Vec<*mut u64> {
    addrs
        .iter()
        .map(|&a| mem.get_host_address(GuestAddress(a)).unwrap() as *mut u64)
        .collect()
}

fn as_const(ptrs: &[*mut u64]) -> Vec<*const u64> {
    ptrs.iter().map(|&p| p as *const u64).collect()
}

pub fn rows(plan: &Plan, quick: bool, rows: &mut Vec<Row>) {
    let total = if quick { 64 } else { 256 } as u64 * MIB as u64;
    for n in [1u64, 64] {
        let layout = even(n, total);
        let (ours, theirs) = both(&layout, true);
        let mut rng = StdRng::seed_from_u64(n);
        hot_rows(plan, n, &layout, &ours, &theirs, &mut rng, rows);
        cold_rows(plan, quick, n, &layout, &ours, &theirs, &mut rng, rows);
    }
    slice_rows(plan, rows);
    for n in [1u64, 64, 1024] {
        let layout = even(n, n * (64 << 10));
        let (ours, theirs) = both(&layout, false);
        let mut rng = StdRng::seed_from_u64(7 + n);
        let addrs = random_addrs(&layout, BATCH, 1, &mut rng);
        rows.push(compare(
            plan,
            &format!("vm_memory get_host_address, {n} regions"),
            Op::batch(BATCH, || {
                black_box(host_ours(&ours, black_box(&addrs)));
            }),
            None,
            Some(Op::batch(BATCH, || {
                black_box(host_peer(&theirs, black_box(&addrs)));
            })),
        ));
        rows.push(compare(
            plan,
            &format!("vm_memory address_in_range, {n} regions"),
            Op::batch(BATCH, || {
                black_box(in_range_ours(&ours, black_box(&addrs)));
            }),
            None,
            Some(Op::batch(BATCH, || {
                black_box(in_range_peer(&theirs, black_box(&addrs)));
            })),
        ));
    }
    irregular_rows(plan, rows);
}

/// Hot loads and stores: aligned u64s at random in a 64 KiB window in the middle region.
fn hot_rows(
    plan: &Plan,
    n: u64,
    layout: &[(u64, u64)],
    ours: &GuestMemory,
    theirs: &GuestMemoryMmap,
    rng: &mut StdRng,
    rows: &mut Vec<Row>,
) {
    let (start, size) = layout[layout.len() / 2];
    let window = start + size / 2;
    let addrs: Vec<u64> = (0..BATCH)
        .map(|_| window + rng.random_range(0..(64u64 << 10) / 8) * 8)
        .collect();
    let ptrs = host_ptrs(ours, &addrs);
    let cptrs = as_const(&ptrs);
    rows.push(compare_ops(
        plan,
        &format!("vm_memory read_obj u64 hot, {n} regions"),
        vec![
            Op::batch(BATCH, || {
                black_box(read_ours(ours, black_box(&addrs)));
            }),
            // SAFETY: host addresses of aligned u64s in live guest memory.
            Op::batch(BATCH, || unsafe {
                black_box(raw_loads(black_box(&cptrs)));
            }),
            Op::batch(BATCH, || {
                black_box(read_peer(theirs, black_box(&addrs)));
            }),
        ],
    ));
    rows.push(compare_ops(
        plan,
        &format!("vm_memory write_obj u64 hot, {n} regions"),
        vec![
            Op::batch(BATCH, || {
                black_box(write_ours(ours, black_box(&addrs)));
            }),
            // SAFETY: as above; only this thread touches guest memory.
            Op::batch(BATCH, || unsafe {
                black_box(raw_stores(black_box(&ptrs)));
            }),
            Op::batch(BATCH, || {
                black_box(write_peer(theirs, black_box(&addrs)));
            }),
        ],
    ));
}

/// Cold loads over all of guest memory: independent ones from a long random list, so the
/// CPU can overlap the misses, and a dependent chase that measures their latency.
#[allow(clippy::too_many_arguments)]
fn cold_rows(
    plan: &Plan,
    quick: bool,
    n: u64,
    layout: &[(u64, u64)],
    ours: &GuestMemory,
    theirs: &GuestMemoryMmap,
    rng: &mut StdRng,
    rows: &mut Vec<Row>,
) {
    // Independent: a list far longer than a sample's worth, walked a batch at a time. Each
    // variant starts a third of the list from the others, so none finds lines that another
    // has just pulled into the cache, and all of them walk the same addresses. Raw loads
    // the host pointers of the same addresses, in our mapping.
    let len = if quick { 1 << 18 } else { 1 << 21 };
    let list = random_addrs(layout, len, 8, rng);
    let ptrs = as_const(&host_ptrs(ours, &list));
    let cursor = |phase: usize| {
        let mut at = phase * len / 3 / BATCH * BATCH;
        move || {
            let here = at;
            at = (at + BATCH) % len;
            here..here + BATCH
        }
    };
    let (mut next_o, mut next_b, mut next_p) = (cursor(0), cursor(1), cursor(2));
    rows.push(compare_ops(
        plan,
        &format!("vm_memory read_obj u64 cold independent, {n} regions"),
        vec![
            Op::batch(BATCH, || {
                black_box(read_ours(ours, black_box(&list[next_o()])));
            }),
            // SAFETY: host addresses of aligned u64s in live guest memory.
            Op::batch(BATCH, || unsafe {
                black_box(raw_loads(black_box(&ptrs[next_b()])));
            }),
            Op::batch(BATCH, || {
                black_box(read_peer(theirs, black_box(&list[next_p()])));
            }),
        ],
    ));
    drop((list, ptrs));
    // Dependent: a random cycle through distinct slots; each load's address is the previous
    // load's value. Ours and the peer follow guest addresses, raw follows host pointers kept
    // in a third copy of the layout.
    let (raw, _) = both(layout, true);
    let mut slots = random_addrs(layout, if quick { 1 << 16 } else { 1 << 20 }, 8, rng);
    slots.sort_unstable();
    slots.dedup();
    for idx in (1..slots.len()).rev() {
        slots.swap(idx, rng.random_range(0..=idx));
    }
    for w in 0..slots.len() {
        let (at, next) = (slots[w], slots[(w + 1) % slots.len()]);
        ours.write_obj_at_addr(next, GuestAddress(at)).unwrap();
        theirs.write_obj(next, TheirAddress(at)).unwrap();
        let host_next = raw.get_host_address(GuestAddress(next)).unwrap() as u64;
        raw.write_obj_at_addr(host_next, GuestAddress(at)).unwrap();
    }
    let (mut a, mut c) = (slots[0], slots[0]);
    let mut b = raw.get_host_address(GuestAddress(slots[0])).unwrap() as *const u64;
    rows.push(compare_ops(
        plan,
        &format!("vm_memory read_obj u64 cold chase, {n} regions"),
        vec![
            Op::batch(BATCH, || a = chase_ours(ours, a, BATCH)),
            // SAFETY: every slot holds the host address of another live slot.
            Op::batch(BATCH, || b = unsafe { chase_raw(b, BATCH) }),
            Op::batch(BATCH, || c = chase_peer(theirs, c, BATCH)),
        ],
    ));
}

/// Slices of 4 KiB (a batch, to or from four pages in a random order, so they stay in L1)
/// and of 2 MiB (one call each: the copy dwarfs any call overhead).
fn slice_rows(plan: &Plan, rows: &mut Vec<Row>) {
    const SLICE_BATCH: usize = 64;
    let layout = [(0, 8 * MIB as u64)];
    let (ours, theirs) = both(&layout, true);
    let mut rng = StdRng::seed_from_u64(4096);
    let addrs: Vec<u64> = (0..SLICE_BATCH)
        .map(|_| MIB as u64 + rng.random_range(0..4) * 4096)
        .collect();
    let ptrs: Vec<*mut u8> = addrs
        .iter()
        .map(|&a| ours.get_host_address(GuestAddress(a)).unwrap() as *mut u8)
        .collect();
    let host = ours.get_host_address(GuestAddress(MIB as u64)).unwrap() as *mut u8;
    for (label, len) in [("4KiB", 4096usize), ("2MiB", 2 * MIB)] {
        let mut buf = vec![0x3cu8; len];
        let p = buf.as_mut_ptr();
        let slice = || {
            // SAFETY: `buf` is ours for the whole row and used by one closure at a time.
            unsafe { std::slice::from_raw_parts_mut(p, len) }
        };
        let at = GuestAddress(MIB as u64);
        let their_at = TheirAddress(MIB as u64);
        let (write, read) = if len == 4096 {
            (
                vec![
                    Op::batch(SLICE_BATCH, || {
                        black_box(write_slices_ours(&ours, black_box(&addrs), slice()));
                    }),
                    // SAFETY: each pointer has 4 KiB of live guest memory after it; `buf`
                    // is 4 KiB of ours.
                    Op::batch(SLICE_BATCH, || unsafe {
                        black_box(copies_to(black_box(&ptrs), p, len));
                    }),
                    Op::batch(SLICE_BATCH, || {
                        black_box(write_slices_peer(&theirs, black_box(&addrs), slice()));
                    }),
                ],
                vec![
                    Op::batch(SLICE_BATCH, || {
                        black_box(read_slices_ours(&ours, black_box(&addrs), slice()));
                    }),
                    // SAFETY: as above.
                    Op::batch(SLICE_BATCH, || unsafe {
                        black_box(copies_from(black_box(&ptrs), p, len));
                    }),
                    Op::batch(SLICE_BATCH, || {
                        black_box(read_slices_peer(&theirs, black_box(&addrs), slice()));
                    }),
                ],
            )
        } else {
            (
                vec![
                    Op::each(|| ours.write_all_at_addr(slice(), at).unwrap()),
                    // SAFETY: 2 MiB of live guest memory from `host`; `buf` is 2 MiB of ours.
                    Op::each(|| unsafe { ptr::copy_nonoverlapping(black_box(p), host, len) }),
                    Op::each(|| theirs.write_slice(slice(), their_at).unwrap()),
                ],
                vec![
                    Op::each(|| ours.read_exact_at_addr(slice(), at).unwrap()),
                    // SAFETY: as above.
                    Op::each(|| unsafe { ptr::copy_nonoverlapping(host, black_box(p), len) }),
                    Op::each(|| theirs.read_slice(slice(), their_at).unwrap()),
                ],
            )
        };
        rows.push(compare_ops(
            plan,
            &format!("vm_memory write {label} vs memcpy"),
            write,
        ));
        rows.push(compare_ops(
            plan,
            &format!("vm_memory read {label} vs memcpy"),
            read,
        ));
        drop(buf);
    }
}

/// Lookups in 1024 irregular regions, next to the same lookups in one region (the baseline
/// column: ours, one region) and to vm-memory in the same 1024 regions.
fn irregular_rows(plan: &Plan, rows: &mut Vec<Row>) {
    let mut rng = StdRng::seed_from_u64(1024);
    let layout = irregular(1024, &mut rng);
    let (ours, theirs) = both(&layout, false);
    let addrs = random_addrs(&layout, BATCH, 1, &mut rng);
    let one_layout = [(1 << 30, 64 * MIB as u64)];
    let (one, _) = both(&one_layout, false);
    let one_addrs = random_addrs(&one_layout, BATCH, 1, &mut rng);
    rows.push(compare_ops(
        plan,
        "vm_memory address_in_range, 1024 irregular vs 1 region",
        vec![
            Op::batch(BATCH, || {
                black_box(in_range_ours(&ours, black_box(&addrs)));
            }),
            Op::batch(BATCH, || {
                black_box(in_range_ours(&one, black_box(&one_addrs)));
            }),
            Op::batch(BATCH, || {
                black_box(in_range_peer(&theirs, black_box(&addrs)));
            }),
        ],
    ));
    rows.push(compare_ops(
        plan,
        "vm_memory get_host_address, 1024 irregular vs 1 region",
        vec![
            Op::batch(BATCH, || {
                black_box(host_ours(&ours, black_box(&addrs)));
            }),
            Op::batch(BATCH, || {
                black_box(host_ours(&one, black_box(&one_addrs)));
            }),
            Op::batch(BATCH, || {
                black_box(host_peer(&theirs, black_box(&addrs)));
            }),
        ],
    ));
}
