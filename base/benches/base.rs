// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `base` against its raw baselines, measured in the same run. Each group is one pair: `ours`
//! and the raw `baseline` it wraps; compare the two, not absolute times.
//!
//! `tools/bench_ratios` prints the ratios from criterion's output.

#![allow(missing_docs)]

use std::hint::black_box;
use std::ptr;
use std::time::{Duration, Instant};

#[cfg(target_arch = "x86_64")]
use base::cache::{flush_instruction, FlushInstruction};
use base::{MemoryMapping, MemoryMappingBuilder, VolatileMemory};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const MIB2: usize = 2 << 20;

fn populated(size: usize) -> MemoryMapping {
    MemoryMappingBuilder::new(size).populate().build().unwrap()
}

fn slices(c: &mut Criterion) {
    for (name, size) in [("4KiB", 4096usize), ("2MiB", MIB2)] {
        let mapping = populated(size);
        let mut buf = vec![0x5au8; size];
        let mut group = c.benchmark_group(format!("write_slice_{name}_vs_memcpy"));
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function("ours", |b| {
            b.iter(|| mapping.write_slice(black_box(&buf), black_box(0)).unwrap())
        });
        group.bench_function("baseline", |b| {
            b.iter(|| {
                // SAFETY: both buffers hold `size` bytes and do not overlap.
                unsafe { ptr::copy_nonoverlapping(black_box(buf.as_ptr()), mapping.as_ptr(), size) }
            })
        });
        group.finish();
        let mut group = c.benchmark_group(format!("read_slice_{name}_vs_memcpy"));
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function("ours", |b| {
            b.iter(|| {
                mapping
                    .read_slice(black_box(&mut buf), black_box(0))
                    .unwrap()
            })
        });
        group.bench_function("baseline", |b| {
            b.iter(|| {
                // SAFETY: both buffers hold `size` bytes and do not overlap.
                unsafe {
                    ptr::copy_nonoverlapping(mapping.as_ptr(), black_box(buf.as_mut_ptr()), size)
                }
            })
        });
        group.finish();
    }
}

/// Pointer chasing: each load's offset is the value the previous load returned, so loads
/// cannot overlap and each costs its full latency, ours and the raw one alike.
fn objects(c: &mut Criterion) {
    const HOPS: usize = 256;
    const SPAN: usize = 64 << 10;
    let mapping = populated(SPAN);
    // A cycle through the window at a stride that is not a multiple of 8, so some loads are
    // unaligned, as read_obj allows.
    let stride = 4099;
    let mut off = 0usize;
    for _ in 0..SPAN / 16 {
        let next = (off + stride) % (SPAN - 8);
        mapping.write_obj(next as u64, off).unwrap();
        off = next;
    }
    let base = mapping.as_ptr();
    let mut group = c.benchmark_group("read_obj_u64_vs_dependent_load");
    group.throughput(Throughput::Elements(HOPS as u64));
    group.bench_function("ours", |b| {
        b.iter(|| {
            let mut off = black_box(0usize);
            for _ in 0..HOPS {
                off = mapping.read_obj::<u64>(off).unwrap() as usize;
            }
            off
        })
    });
    group.bench_function("baseline", |b| {
        b.iter(|| {
            let mut off = black_box(0usize);
            for _ in 0..HOPS {
                // SAFETY: every offset in the chain is below SPAN - 8.
                off = unsafe { ptr::read_unaligned(base.add(off) as *const u64) } as usize;
            }
            off
        })
    });
    group.finish();
    let scratch = populated(SPAN);
    let sbase = scratch.as_ptr();
    let mut group = c.benchmark_group("write_obj_u64_vs_store");
    group.throughput(Throughput::Elements(HOPS as u64));
    group.bench_function("ours", |b| {
        b.iter(|| {
            for i in 0..HOPS {
                scratch.write_obj(i as u64, black_box(i * 8)).unwrap();
            }
        })
    });
    group.bench_function("baseline", |b| {
        b.iter(|| {
            for i in 0..HOPS {
                // SAFETY: `i * 8 + 8 <= SPAN`.
                unsafe { ptr::write_unaligned(sbase.add(black_box(i * 8)) as *mut u64, i as u64) }
            }
        })
    });
    group.finish();
}

fn mapping_lifecycle(c: &mut Criterion) {
    let mut group = c.benchmark_group("build_drop_2MiB_vs_mmap_munmap");
    group.bench_function("ours", |b| {
        b.iter(|| drop(black_box(MemoryMappingBuilder::new(MIB2).build().unwrap())))
    });
    group.bench_function("baseline", |b| {
        b.iter(|| {
            // SAFETY: a fresh anonymous mapping, unmapped right after; nothing else touches it.
            unsafe {
                let addr = libc::mmap(
                    ptr::null_mut(),
                    MIB2,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                    -1,
                    0,
                );
                assert_ne!(addr, libc::MAP_FAILED);
                libc::munmap(black_box(addr), MIB2);
            }
        })
    });
    group.finish();
}

/// Only the flush is timed; the range is dirtied again before each one.
fn cache_flush(c: &mut Criterion) {
    let mapping = populated(MIB2);
    let timed = |iters: u64, flush: &dyn Fn()| {
        let mut total = Duration::ZERO;
        for i in 0..iters {
            mapping.get_slice(0, MIB2).unwrap().write_bytes(i as u8);
            let start = Instant::now();
            flush();
            total += start.elapsed();
        }
        total
    };
    let mut group = c.benchmark_group("flush_region_2MiB_dirty_vs_clflushopt_loop");
    group.throughput(Throughput::Bytes(MIB2 as u64));
    group.bench_function("ours", |b| {
        b.iter_custom(|iters| timed(iters, &|| mapping.flush_region(0, MIB2).unwrap()))
    });
    #[cfg(target_arch = "x86_64")]
    if flush_instruction() == Ok(FlushInstruction::Clflushopt) {
        group.bench_function("baseline", |b| {
        let base = mapping.as_ptr() as usize;
        let line = base::cache::cache_line_size();
        b.iter_custom(|iters| {
            timed(iters, &|| {
                let mut p = base;
                while p < base + MIB2 {
                    // SAFETY: `p` is inside the live mapping.
                    unsafe {
                        std::arch::asm!("clflushopt [{0}]", in(reg) p, options(nostack, preserves_flags))
                    };
                    p += line;
                }
                // SAFETY: a store fence touches no memory.
                unsafe { std::arch::x86_64::_mm_sfence() };
            })
        })
    });
    } else {
        eprintln!("no clflushopt on this CPU: the raw baseline is skipped");
    }
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50)
}

criterion_group! {
    name = benches;
    config = config();
    targets = slices, objects, mapping_lifecycle, cache_flush
}
criterion_main!(benches);
