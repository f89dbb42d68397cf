// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `GuestMemory` next to raw host access (`baseline`) and rust-vmm's `vm-memory` 0.18
//! (`peer`), with the same layouts and the same addresses, in one run.
//!
//! `tools/bench_ratios` prints the ratios from criterion's output.

#![allow(missing_docs)]

use std::hint::black_box;
use std::ptr;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rand::{Rng, SeedableRng};
use rust_vm_memory::{Bytes, GuestAddress as TheirAddress, GuestMemoryBackend, GuestMemoryMmap};
use vm_memory::{GuestAddress, GuestMemory};

const MIB: u64 = 1 << 20;
const OPS: usize = 1024;

/// `n` regions of equal size covering `total` bytes, each followed by a hole of its size.
fn layout(n: u64, total: u64) -> Vec<(u64, u64)> {
    let size = total / n;
    (0..n).map(|i| (i * 2 * size, size)).collect()
}

struct Both {
    ours: GuestMemory,
    theirs: GuestMemoryMmap,
    regions: Vec<(u64, u64)>,
}

fn both(regions: Vec<(u64, u64)>) -> Both {
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
    // Touch every page once so no benchmark pays first-fault costs.
    for &(a, s) in &regions {
        for off in (0..s).step_by(4096) {
            ours.write_obj_at_addr(1u8, GuestAddress(a + off)).unwrap();
            theirs.write_obj(1u8, TheirAddress(a + off)).unwrap();
        }
    }
    Both {
        ours,
        theirs,
        regions,
    }
}

/// `count` random 8-byte-aligned guest addresses, each with our host pointer for it. They are
/// only known at run time, so no variant needs `black_box` on them (which would force every
/// loop to reload everything it had hoisted, and so penalise the wrappers, not the raw loop).
fn random_addrs(
    b: &Both,
    window: Option<(u64, u64)>,
    count: usize,
    seed: u64,
) -> Vec<(u64, *mut u64)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..count)
        .map(|_| {
            let (start, size) =
                window.unwrap_or_else(|| b.regions[rng.random_range(0..b.regions.len())]);
            let addr = start + rng.random_range(0..size / 8) * 8;
            let host = b.ours.get_host_address(GuestAddress(addr)).unwrap() as *mut u64;
            (addr, host)
        })
        .collect()
}

/// Long iterations (cold sets) need fewer samples to finish in reasonable time.
fn configure(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    ops: usize,
) {
    group.throughput(Throughput::Elements(ops as u64));
    if ops > OPS {
        group
            .sample_size(10)
            .measurement_time(Duration::from_secs(4));
    }
}

fn objects(c: &mut Criterion) {
    let total = 256 * MIB;
    for n in [1u64, 64] {
        let b = both(layout(n, total));
        // Hot: a 64 KiB window in the middle region. Cold: anywhere in the 256 MiB.
        let mid = b.regions[b.regions.len() / 2];
        let hot_window = (mid.0 + mid.1 / 2, 64 << 10);
        // Cold: a million addresses, so the set of lines touched (64 MiB) is far larger than
        // the caches and each access really goes to memory.
        for (temp, window, count) in [("hot", Some(hot_window), OPS), ("cold", None, 1 << 20)] {
            let addrs = random_addrs(&b, window, count, n);
            let name = format!("read_obj_u64_{temp}_{n}_regions");
            let mut group = c.benchmark_group(&name);
            configure(&mut group, count);
            group.bench_function("ours", |bench| {
                bench.iter(|| {
                    let mut sum = 0u64;
                    for &(a, _) in &addrs {
                        sum = sum.wrapping_add(
                            b.ours.read_obj_from_addr::<u64>(GuestAddress(a)).unwrap(),
                        );
                    }
                    sum
                })
            });
            group.bench_function("baseline", |bench| {
                bench.iter(|| {
                    let mut sum = 0u64;
                    for &(_, h) in &addrs {
                        // SAFETY: `h` is the host address of an aligned u64 in live memory.
                        sum = sum.wrapping_add(unsafe { ptr::read_volatile(h) });
                    }
                    sum
                })
            });
            group.bench_function("peer", |bench| {
                bench.iter(|| {
                    let mut sum = 0u64;
                    for &(a, _) in &addrs {
                        sum = sum.wrapping_add(b.theirs.read_obj::<u64>(TheirAddress(a)).unwrap());
                    }
                    sum
                })
            });
            group.finish();

            let name = format!("write_obj_u64_{temp}_{n}_regions");
            let mut group = c.benchmark_group(&name);
            configure(&mut group, count);
            group.bench_function("ours", |bench| {
                bench.iter(|| {
                    for (i, &(a, _)) in addrs.iter().enumerate() {
                        b.ours.write_obj_at_addr(i as u64, GuestAddress(a)).unwrap();
                    }
                })
            });
            group.bench_function("baseline", |bench| {
                bench.iter(|| {
                    for (i, &(_, h)) in addrs.iter().enumerate() {
                        // SAFETY: as above.
                        unsafe { ptr::write_volatile(h, i as u64) };
                    }
                })
            });
            group.bench_function("peer", |bench| {
                bench.iter(|| {
                    for (i, &(a, _)) in addrs.iter().enumerate() {
                        b.theirs.write_obj(i as u64, TheirAddress(a)).unwrap();
                    }
                })
            });
            group.finish();
        }
    }
}

/// Cold latency: a random cycle through a million 8-byte slots over 256 MiB, where each load's
/// address is the value the previous load returned, so every access pays its full miss, for
/// ours, raw and the peer alike. Ours and the peer follow guest addresses; raw follows host
/// pointers stored in the same slots.
fn cold_chase(c: &mut Criterion) {
    const SLOTS: usize = 1 << 20;
    const HOPS: usize = 4096;
    for n in [1u64, 64] {
        let b = both(layout(n, 256 * MIB));
        // Distinct slots only: a repeated one would short-cut the cycle into the cache.
        let mut slots = random_addrs(&b, None, SLOTS, 99 + n);
        slots.sort_unstable_by_key(|s| s.0);
        slots.dedup_by_key(|s| s.0);
        let count = slots.len();
        let mut order: Vec<usize> = (0..count).collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        for i in (1..count).rev() {
            order.swap(i, rng.random_range(0..=i));
        }
        let next = |i: usize| slots[order[(i + 1) % count]];
        let mut group = c.benchmark_group(format!("read_obj_u64_cold_chase_{n}_regions"));
        group.throughput(Throughput::Elements(HOPS as u64));
        group.bench_function("ours", |bench| {
            for i in 0..count {
                let (at, _) = slots[order[i]];
                b.ours
                    .write_obj_at_addr(next(i).0, GuestAddress(at))
                    .unwrap();
            }
            let mut cur = slots[order[0]].0;
            bench.iter(|| {
                for _ in 0..HOPS {
                    cur = b.ours.read_obj_from_addr::<u64>(GuestAddress(cur)).unwrap();
                }
                cur
            })
        });
        group.bench_function("baseline", |bench| {
            for i in 0..count {
                let (_, host) = slots[order[i]];
                // SAFETY: `host` is the host address of an aligned u64 in live guest memory.
                unsafe { ptr::write_volatile(host, next(i).1 as u64) };
            }
            let mut cur = slots[order[0]].1;
            bench.iter(|| {
                for _ in 0..HOPS {
                    // SAFETY: every slot holds the host address of another slot.
                    cur = unsafe { ptr::read_volatile(cur) } as *mut u64;
                }
                cur
            })
        });
        group.bench_function("peer", |bench| {
            for i in 0..count {
                let (at, _) = slots[order[i]];
                b.theirs.write_obj(next(i).0, TheirAddress(at)).unwrap();
            }
            let mut cur = slots[order[0]].0;
            bench.iter(|| {
                for _ in 0..HOPS {
                    cur = b.theirs.read_obj::<u64>(TheirAddress(cur)).unwrap();
                }
                cur
            })
        });
        group.finish();
    }
}

fn slices(c: &mut Criterion) {
    let b = both(vec![(0, 8 * MIB)]);
    let host = b.ours.get_host_address(GuestAddress(MIB)).unwrap() as *mut u8;
    for (name, len) in [("4KiB", 4096usize), ("2MiB", 2 << 20)] {
        let mut buf = vec![0x3cu8; len];
        let at = MIB;
        let mut group = c.benchmark_group(format!("write_{name}"));
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_function("ours", |bench| {
            bench.iter(|| {
                b.ours
                    .write_all_at_addr(black_box(&buf), GuestAddress(at))
                    .unwrap()
            })
        });
        group.bench_function("baseline", |bench| {
            // SAFETY: `host..host + len` is inside the 8 MiB region; `buf` is ours.
            bench.iter(|| unsafe { ptr::copy_nonoverlapping(black_box(buf.as_ptr()), host, len) })
        });
        group.bench_function("peer", |bench| {
            bench.iter(|| {
                b.theirs
                    .write_slice(black_box(&buf), TheirAddress(at))
                    .unwrap()
            })
        });
        group.finish();
        let mut group = c.benchmark_group(format!("read_{name}"));
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_function("ours", |bench| {
            bench.iter(|| {
                b.ours
                    .read_exact_at_addr(black_box(&mut buf), GuestAddress(at))
                    .unwrap()
            })
        });
        group.bench_function("baseline", |bench| {
            // SAFETY: as above.
            bench.iter(|| unsafe {
                ptr::copy_nonoverlapping(host, black_box(buf.as_mut_ptr()), len)
            })
        });
        group.bench_function("peer", |bench| {
            bench.iter(|| {
                b.theirs
                    .read_slice(black_box(&mut buf), TheirAddress(at))
                    .unwrap()
            })
        });
        group.finish();
    }
}

fn lookups(c: &mut Criterion) {
    for n in [1u64, 64, 1024] {
        // 64 KiB regions are enough to look up; the layout has a hole after each.
        let b = both(layout(n, n * (64 << 10)));
        let addrs = random_addrs(&b, None, OPS, 7 + n);
        let mut group = c.benchmark_group(format!("lookup_{n}_regions"));
        group.throughput(Throughput::Elements(OPS as u64));
        group.bench_function("ours", |bench| {
            bench.iter(|| {
                addrs
                    .iter()
                    .filter(|&&(a, _)| b.ours.address_in_range(GuestAddress(a)))
                    .count()
            })
        });
        group.bench_function("peer", |bench| {
            bench.iter(|| {
                addrs
                    .iter()
                    .filter(|&&(a, _)| b.theirs.find_region(TheirAddress(a)).is_some())
                    .count()
            })
        });
        group.finish();
    }
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
    targets = objects, cold_chase, slices, lookups
}
criterion_main!(benches);
