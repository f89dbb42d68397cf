// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Rows for `base`: slices, objects, and building and flushing mappings.

use std::hint::black_box;
use std::ptr;
use std::time::Instant;

use base::{MemoryMapping, MemoryMappingBuilder};
use rand::{Rng, SeedableRng};

use super::harness::{
    compare_ops, eight_chained, eight_sites, raw_loads, raw_stores, Op, Plan, Row, BATCH,
};
use super::MIB;

/// The 4 KiB slice rows copy to or from these many places in a row, spread over a few pages.
const SLICE_BATCH: usize = 64;

/// `write_slice` of `buf` at each offset.
#[inline(never)]
fn write_slices(m: &MemoryMapping, offsets: &[usize], buf: &[u8]) -> u64 {
    eight_sites!(offsets, |o| m.write_slice(buf, o).unwrap() as u64)
}

/// `read_slice` into `buf` from each offset.
#[inline(never)]
fn read_slices(m: &MemoryMapping, offsets: &[usize], buf: &mut [u8]) -> u64 {
    eight_sites!(offsets, |o| m.read_slice(buf, o).unwrap() as u64)
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
        len as u64
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
        len as u64
    })
}

/// `read_obj::<u64>` at each offset; the sum.
#[inline(never)]
fn read_objs(m: &MemoryMapping, offsets: &[usize]) -> u64 {
    eight_sites!(offsets, |o| m.read_obj::<u64>(o).unwrap())
}

/// `write_obj::<u64>` of the offset itself at each offset; the count.
#[inline(never)]
fn write_objs(m: &MemoryMapping, offsets: &[usize]) -> u64 {
    eight_sites!(offsets, |o| {
        m.write_obj(o as u64, o).unwrap();
        1
    })
}

/// `steps` dependent `read_obj::<u64>`s from `start`, each offset read from the last.
#[inline(never)]
fn chase_objs(m: &MemoryMapping, start: usize, steps: usize) -> usize {
    eight_chained!(steps, start, |o| m.read_obj::<u64>(o).unwrap() as usize)
}

/// The raw chase: `steps` dependent unaligned loads from `base + start`.
///
/// # Safety
///
/// Every offset in the chain must be readable for 8 bytes from `base`.
#[inline(never)]
unsafe fn chase_raw(base: *const u8, start: usize, steps: usize) -> usize {
    eight_chained!(steps, start, |o| {
        // SAFETY: the caller vouches for every offset of the chain.
        unsafe { ptr::read_unaligned(base.add(o) as *const u64) as usize }
    })
}

pub fn rows(plan: &Plan, rows: &mut Vec<Row>) {
    slice_rows(plan, rows);
    object_rows(plan, rows);
    mapping_rows(plan, rows);
}

fn slice_rows(plan: &Plan, rows: &mut Vec<Row>) {
    // 4 KiB: a batch of copies to or from four pages in a random order (so the slices and the
    // buffer stay in L1), each page at two of the eight call sites on average.
    let pages = 4;
    let m = MemoryMappingBuilder::new(pages * 4096)
        .populate()
        .build()
        .unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(4096);
    let offsets: Vec<usize> = (0..SLICE_BATCH)
        .map(|_| rng.random_range(0..pages) * 4096)
        .collect();
    // Each offset plus 4096 is inside the mapping; the pointers are only computed here.
    let ptrs: Vec<*mut u8> = offsets
        .iter()
        .map(|&o| m.as_ptr().wrapping_add(o))
        .collect();
    let mut buf = vec![0x5au8; 4096];
    let p = buf.as_mut_ptr();
    let slice = || {
        // SAFETY: `buf` lives for the whole row, and one closure at a time uses it.
        unsafe { std::slice::from_raw_parts_mut(p, 4096) }
    };
    rows.push(compare_ops(
        plan,
        "base write_slice 4KiB vs memcpy",
        vec![
            Op::batch(SLICE_BATCH, || {
                black_box(write_slices(&m, black_box(&offsets), slice()));
            }),
            // SAFETY: the pointers are pages of the live mapping, `buf` is 4 KiB of ours.
            Op::batch(SLICE_BATCH, || unsafe {
                black_box(copies_to(black_box(&ptrs), p, 4096));
            }),
        ],
    ));
    rows.push(compare_ops(
        plan,
        "base read_slice 4KiB vs memcpy",
        vec![
            Op::batch(SLICE_BATCH, || {
                black_box(read_slices(&m, black_box(&offsets), slice()));
            }),
            // SAFETY: as above.
            Op::batch(SLICE_BATCH, || unsafe {
                black_box(copies_from(black_box(&ptrs), p, 4096));
            }),
        ],
    ));
    drop(buf);
    // 2 MiB: the copy dwarfs any call overhead, so one call per copy.
    let size = 2 * MIB;
    let m = MemoryMappingBuilder::new(size).populate().build().unwrap();
    let mut buf = vec![0x5au8; size];
    let dst = m.as_ptr();
    let src = buf.as_mut_ptr();
    rows.push(compare_ops(
        plan,
        "base write_slice 2MiB vs memcpy",
        vec![
            Op::each(|| {
                // SAFETY: reading `size` bytes of our own buffer.
                let b = unsafe { std::slice::from_raw_parts(src, size) };
                black_box(m.write_slice(b, 0).unwrap());
            }),
            // SAFETY: both buffers hold `size` bytes and do not overlap.
            Op::each(|| unsafe { ptr::copy_nonoverlapping(black_box(src), dst, size) }),
        ],
    ));
    rows.push(compare_ops(
        plan,
        "base read_slice 2MiB vs memcpy",
        vec![
            Op::each(|| {
                // SAFETY: `buf` is ours for the whole row; nothing else uses it meanwhile.
                let b = unsafe { std::slice::from_raw_parts_mut(src, size) };
                black_box(m.read_slice(b, 0).unwrap());
            }),
            // SAFETY: as above.
            Op::each(|| unsafe { ptr::copy_nonoverlapping(dst, black_box(src), size) }),
        ],
    ));
    drop(buf);
}

fn object_rows(plan: &Plan, rows: &mut Vec<Row>) {
    let size = 64 << 10;
    let m = MemoryMappingBuilder::new(size).populate().build().unwrap();
    // Independent aligned loads and stores at random offsets of a 64 KiB hot mapping.
    let mut rng = rand::rngs::StdRng::seed_from_u64(64);
    let offsets: Vec<usize> = (0..BATCH)
        .map(|_| rng.random_range(0..size / 8) * 8)
        .collect();
    // SAFETY: every offset is 8 bytes or more below the end of the mapping.
    let ptrs: Vec<*mut u64> = offsets
        .iter()
        .map(|&o| unsafe { m.as_ptr().add(o) } as *mut u64)
        .collect();
    let cptrs: Vec<*const u64> = ptrs.iter().map(|&p| p as *const u64).collect();
    rows.push(compare_ops(
        plan,
        "base read_obj::<u64> hot vs load",
        vec![
            Op::batch(BATCH, || {
                black_box(read_objs(&m, black_box(&offsets)));
            }),
            // SAFETY: aligned u64s inside the live mapping.
            Op::batch(BATCH, || unsafe {
                black_box(raw_loads(black_box(&cptrs)));
            }),
        ],
    ));
    rows.push(compare_ops(
        plan,
        "base write_obj::<u64> hot vs store",
        vec![
            Op::batch(BATCH, || {
                black_box(write_objs(&m, black_box(&offsets)));
            }),
            // SAFETY: aligned u64s inside the live mapping, which only this thread touches.
            Op::batch(BATCH, || unsafe {
                black_box(raw_stores(black_box(&ptrs)));
            }),
        ],
    ));
    // Dependent loads: each offset comes from the previous load.
    let mut off = 0usize;
    for _ in 0..4096 {
        let next = (off + 4099) % (size - 8);
        m.write_obj(next as u64, off).unwrap();
        off = next;
    }
    let base = m.as_ptr();
    let (mut a, mut b) = (0usize, 0usize);
    rows.push(compare_ops(
        plan,
        "base read_obj::<u64> vs dependent load",
        vec![
            Op::batch(BATCH, || a = chase_objs(&m, a, BATCH)),
            // SAFETY: every offset in the chain is below the mapping's size minus 8.
            Op::batch(BATCH, || b = unsafe { chase_raw(base, b, BATCH) }),
        ],
    ));
}

fn mapping_rows(plan: &Plan, rows: &mut Vec<Row>) {
    rows.push(compare_ops(
        plan,
        "base build+drop 2MiB vs mmap+munmap",
        vec![
            Op::each(|| {
                drop(black_box(
                    MemoryMappingBuilder::new(2 * MIB).build().unwrap(),
                ))
            }),
            Op::each(|| {
                // SAFETY: a fresh anonymous mapping, unmapped right after.
                unsafe {
                    let p = libc::mmap(
                        ptr::null_mut(),
                        2 * MIB,
                        libc::PROT_READ | libc::PROT_WRITE,
                        libc::MAP_SHARED | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                        -1,
                        0,
                    );
                    libc::munmap(black_box(p), 2 * MIB);
                }
            }),
        ],
    ));
    #[cfg(target_arch = "x86_64")]
    if base::cache::flush_instruction() == Ok(base::cache::FlushInstruction::Clflushopt) {
        use base::VolatileMemory;
        let m = MemoryMappingBuilder::new(2 * MIB)
            .populate()
            .build()
            .unwrap();
        let line = base::cache::cache_line_size();
        let dirty = |m: &MemoryMapping, v: u8| m.get_slice(0, 2 * MIB).unwrap().write_bytes(v);
        let (mut v, mut w) = (0u8, 0u8);
        rows.push(compare_ops(
            plan,
            "base flush_region 2MiB dirty vs clflushopt loop",
            vec![
                Op::self_timed(|| {
                    v = v.wrapping_add(1);
                    dirty(&m, v);
                    let t = Instant::now();
                    m.flush_region(0, 2 * MIB).unwrap();
                    t.elapsed()
                }),
                Op::self_timed(|| {
                    w = w.wrapping_add(1);
                    dirty(&m, w);
                    let t = Instant::now();
                    let start = m.as_ptr() as usize;
                    let mut p = start;
                    while p < start + 2 * MIB {
                        // SAFETY: `p` is inside the live mapping.
                        unsafe {
                            std::arch::asm!(
                                "clflushopt [{0}]",
                                in(reg) p,
                                options(nostack, preserves_flags)
                            )
                        };
                        p += line;
                    }
                    // SAFETY: a store fence touches no memory.
                    unsafe { std::arch::x86_64::_mm_sfence() };
                    t.elapsed()
                }),
            ],
        ));
    }
}
