// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `bench`: our crates next to raw code and the vm-memory crate, in one process and one run,
//! on the workloads of the crates' criterion benches.
//!
//! Each row times `ours`, a raw `baseline` and, where there is one, the `peer` crate, in
//! interleaved rounds (so drift on a shared machine hits all three alike) and reports each
//! one's median time per operation and the ratios. Read the ratios, not the times.

use std::hint::black_box;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::Path;
use std::ptr;
use std::time::{Duration, Instant};

use base::{
    ExternalMapping, MappedRegion, MemoryMapping, MemoryMappingArena, MemoryMappingBuilder,
    Protection, Tube, VolatileMemory,
};
use hypervisor::kvm::{Kvm, KvmVm};
use hypervisor::{dirty_log_bitmap_size, MemCacheType, Vm};
use kvm_bindings::{kvm_dirty_log, kvm_userspace_memory_region, KVM_MEM_LOG_DIRTY_PAGES};
use rand::{Rng, SeedableRng};
use rust_vm_memory::{Bytes, GuestAddress as TheirAddress, GuestMemoryBackend, GuestMemoryMmap};
use serde::Serialize;
use vm_control::{VmMemoryRequest, VmMemoryResponse, VmMemorySource};
use vm_memory::{GuestAddress, GuestMemory};
use vmm_sys_util::ioctl::ioctl_with_ref;
use vmm_sys_util::ioctl_iow_nr;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

const KVMIO: u32 = 0xAE;
ioctl_iow_nr!(
    KVM_SET_USER_MEMORY_REGION,
    KVMIO,
    0x46,
    kvm_userspace_memory_region
);
ioctl_iow_nr!(KVM_GET_DIRTY_LOG, KVMIO, 0x42, kvm_dirty_log);

const MIB: usize = 1 << 20;

/// How long to measure.
struct Plan {
    rounds: usize,
    batch: Duration,
}

/// One operation to time: cheap ones run in batches, costly ones with a setup step time
/// themselves (the closure returns the time of the part that counts).
enum Op<'a> {
    Batched(Box<dyn FnMut() + 'a>),
    SelfTimed(Box<dyn FnMut() -> Duration + 'a>),
}

impl Op<'_> {
    /// Nanoseconds per operation over one batch of `n`.
    fn time(&mut self, n: u64) -> f64 {
        match self {
            Op::Batched(f) => {
                let start = Instant::now();
                for _ in 0..n {
                    f();
                }
                start.elapsed().as_nanos() as f64 / n as f64
            }
            Op::SelfTimed(f) => (0..n).map(|_| f()).sum::<Duration>().as_nanos() as f64 / n as f64,
        }
    }
}

/// One result row.
#[derive(Serialize)]
struct Row {
    name: String,
    ours_ns: f64,
    baseline_ns: Option<f64>,
    peer_ns: Option<f64>,
    ours_over_baseline: Option<f64>,
    ours_over_peer: Option<f64>,
}

/// `compare` with the variants in a list: ours, then the baseline, then the peer.
fn compare_ops(plan: &Plan, name: &str, ops: Vec<Op<'_>>) -> Row {
    let mut ops = ops.into_iter();
    let ours = ops.next().expect("every row times ours");
    compare(plan, name, ours, ops.next(), ops.next())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Times `ours`, and the raw baseline and the peer where given, in interleaved rounds, and
/// returns the row.
fn compare<'a>(
    plan: &Plan,
    name: &str,
    ours: Op<'a>,
    baseline: Option<Op<'a>>,
    peer: Option<Op<'a>>,
) -> Row {
    let has = [true, baseline.is_some(), peer.is_some()];
    let mut ops: Vec<Op<'a>> = std::iter::once(ours).chain(baseline).chain(peer).collect();
    // Size the batch from a first taste of the slowest variant.
    let per_op = ops.iter_mut().map(|op| op.time(3)).fold(1.0, f64::max);
    let n = ((plan.batch.as_nanos() as f64 / per_op) as u64).clamp(1, 1 << 22);
    let mut samples = vec![Vec::new(); ops.len()];
    for _ in 0..plan.rounds {
        for (op, s) in ops.iter_mut().zip(&mut samples) {
            s.push(op.time(n));
        }
    }
    let mut times = samples.into_iter().map(median);
    let ours = times.next().unwrap_or(f64::NAN);
    let baseline = if has[1] { times.next() } else { None };
    let peer = if has[2] { times.next() } else { None };
    let row = Row {
        name: name.to_owned(),
        ours_ns: ours,
        baseline_ns: baseline,
        peer_ns: peer,
        ours_over_baseline: baseline.map(|b| ours / b),
        ours_over_peer: peer.map(|p| ours / p),
    };
    let fmt = |t: Option<f64>| t.map_or("-".to_owned(), |t| format!("{t:.1}"));
    let ratio = |t: Option<f64>| t.map_or("-".to_owned(), |t| format!("{t:.3}x"));
    println!(
        "{:<44} {:>12} {:>12} {:>9} {:>12} {:>9}",
        row.name,
        fmt(Some(row.ours_ns)),
        fmt(row.baseline_ns),
        ratio(row.ours_over_baseline),
        fmt(row.peer_ns),
        ratio(row.ours_over_peer)
    );
    row
}

fn base_rows(plan: &Plan, rows: &mut Vec<Row>) {
    for (label, size) in [("4KiB", 4096usize), ("2MiB", 2 * MIB)] {
        let m = MemoryMappingBuilder::new(size).populate().build().unwrap();
        let mut buf = vec![0x5au8; size];
        let dst = m.as_ptr();
        let src = buf.as_mut_ptr();
        rows.push(compare_ops(
            plan,
            &format!("base write_slice {label} vs memcpy"),
            vec![
                Op::Batched(Box::new(|| {
                    // SAFETY: reading `size` bytes of our own buffer.
                    let b = unsafe { std::slice::from_raw_parts(src, size) };
                    black_box(m.write_slice(b, 0).unwrap());
                })),
                // SAFETY: both buffers hold `size` bytes and do not overlap.
                Op::Batched(Box::new(|| unsafe {
                    ptr::copy_nonoverlapping(black_box(src), dst, size)
                })),
            ],
        ));
        rows.push(compare_ops(
            plan,
            &format!("base read_slice {label} vs memcpy"),
            vec![
                Op::Batched(Box::new(|| {
                    // SAFETY: `buf` is ours for the whole run; nothing else uses it meanwhile.
                    let b = unsafe { std::slice::from_raw_parts_mut(src, size) };
                    black_box(m.read_slice(b, 0).unwrap());
                })),
                // SAFETY: as above.
                Op::Batched(Box::new(|| unsafe {
                    ptr::copy_nonoverlapping(dst, black_box(src), size)
                })),
            ],
        ));
        drop(buf);
    }
    // Dependent loads: each offset comes from the previous load.
    let m = MemoryMappingBuilder::new(64 << 10)
        .populate()
        .build()
        .unwrap();
    let mut off = 0usize;
    for _ in 0..4096 {
        let next = (off + 4099) % ((64 << 10) - 8);
        m.write_obj(next as u64, off).unwrap();
        off = next;
    }
    let base = m.as_ptr();
    let (mut a, mut b) = (0usize, 0usize);
    rows.push(compare_ops(
        plan,
        "base read_obj::<u64> vs dependent load",
        vec![
            Op::Batched(Box::new(|| a = m.read_obj::<u64>(a).unwrap() as usize)),
            Op::Batched(Box::new(|| {
                // SAFETY: every offset in the chain is below the mapping's size minus 8.
                let next = unsafe { ptr::read_unaligned(base.add(b) as *const u64) };
                b = next as usize;
            })),
        ],
    ));
    rows.push(compare_ops(
        plan,
        "base build+drop 2MiB vs mmap+munmap",
        vec![
            Op::Batched(Box::new(|| {
                drop(black_box(
                    MemoryMappingBuilder::new(2 * MIB).build().unwrap(),
                ))
            })),
            Op::Batched(Box::new(|| {
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
            })),
        ],
    ));
    #[cfg(target_arch = "x86_64")]
    if base::cache::flush_instruction() == Ok(base::cache::FlushInstruction::Clflushopt) {
        let m = MemoryMappingBuilder::new(2 * MIB)
            .populate()
            .build()
            .unwrap();
        let line = base::cache::cache_line_size();
        let dirty = |m: &MemoryMapping, v: u8| m.get_slice(0, 2 * MIB).unwrap().write_bytes(v);
        let (mut v, mut w) = (0u8, 0u8);
        rows.push(compare_ops(plan, "base flush_region 2MiB dirty vs clflushopt loop", vec![
            Op::SelfTimed(Box::new(|| {
                v = v.wrapping_add(1);
                dirty(&m, v);
                let t = Instant::now();
                m.flush_region(0, 2 * MIB).unwrap();
                t.elapsed()
            })),
            Op::SelfTimed(Box::new(|| {
                w = w.wrapping_add(1);
                dirty(&m, w);
                let t = Instant::now();
                let start = m.as_ptr() as usize;
                let mut p = start;
                while p < start + 2 * MIB {
                    // SAFETY: `p` is inside the live mapping.
                    unsafe { std::arch::asm!("clflushopt [{0}]", in(reg) p, options(nostack, preserves_flags)) };
                    p += line;
                }
                // SAFETY: a store fence touches no memory.
                unsafe { std::arch::x86_64::_mm_sfence() };
                t.elapsed()
            })),
        ]));
    }
}

/// The same layout in both crates: `n` regions covering `total` bytes, each followed by a
/// hole of its size, every page touched once.
fn both(n: u64, total: u64) -> (GuestMemory, GuestMemoryMmap, Vec<(u64, u64)>) {
    let size = total / n;
    let regions: Vec<(u64, u64)> = (0..n).map(|i| (i * 2 * size, size)).collect();
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
    for &(a, s) in &regions {
        for off in (0..s).step_by(4096) {
            ours.write_obj_at_addr(1u8, GuestAddress(a + off)).unwrap();
            theirs.write_obj(1u8, TheirAddress(a + off)).unwrap();
        }
    }
    (ours, theirs, regions)
}

fn vm_memory_rows(plan: &Plan, quick: bool, rows: &mut Vec<Row>) {
    let total = if quick { 64 } else { 256 } as u64 * MIB as u64;
    for n in [1u64, 64] {
        let (ours, theirs, regions) = both(n, total);
        let mid = regions[regions.len() / 2];
        let mut rng = rand::rngs::StdRng::seed_from_u64(n);
        let hot: Vec<(u64, *mut u64)> = (0..1024)
            .map(|_| {
                let a = mid.0 + mid.1 / 2 + rng.random_range(0..(64u64 << 10) / 8) * 8;
                (
                    a,
                    ours.get_host_address(GuestAddress(a)).unwrap() as *mut u64,
                )
            })
            .collect();
        let (mut i, mut j, mut k) = (0usize, 0usize, 0usize);
        rows.push(compare_ops(
            plan,
            &format!("vm_memory read_obj u64 hot, {n} regions"),
            vec![
                Op::Batched(Box::new(|| {
                    i = (i + 1) & 1023;
                    black_box(
                        ours.read_obj_from_addr::<u64>(GuestAddress(hot[i].0))
                            .unwrap(),
                    );
                })),
                Op::Batched(Box::new(|| {
                    j = (j + 1) & 1023;
                    // SAFETY: the host address of an aligned u64 in live guest memory.
                    black_box(unsafe { ptr::read_volatile(hot[j].1) });
                })),
                Op::Batched(Box::new(|| {
                    k = (k + 1) & 1023;
                    black_box(theirs.read_obj::<u64>(TheirAddress(hot[k].0)).unwrap());
                })),
            ],
        ));
        let (mut i, mut j, mut k) = (0usize, 0usize, 0usize);
        rows.push(compare_ops(
            plan,
            &format!("vm_memory write_obj u64 hot, {n} regions"),
            vec![
                Op::Batched(Box::new(|| {
                    i = (i + 1) & 1023;
                    ours.write_obj_at_addr(i as u64, GuestAddress(hot[i].0))
                        .unwrap();
                })),
                Op::Batched(Box::new(|| {
                    j = (j + 1) & 1023;
                    // SAFETY: as above.
                    unsafe { ptr::write_volatile(hot[j].1, j as u64) };
                })),
                Op::Batched(Box::new(|| {
                    k = (k + 1) & 1023;
                    theirs.write_obj(k as u64, TheirAddress(hot[k].0)).unwrap();
                })),
            ],
        ));
        // Cold latency: a random cycle through distinct slots; each load's address is the
        // previous load's value. Ours and the peer follow guest addresses, raw follows host
        // pointers kept in a third copy of the layout.
        let (raw, _, _) = both(n, total);
        let mut slots: Vec<u64> = (0..if quick { 1 << 16 } else { 1 << 20 })
            .map(|_| {
                let (a, s) = regions[rng.random_range(0..regions.len())];
                a + rng.random_range(0..s / 8) * 8
            })
            .collect();
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
                Op::Batched(Box::new(|| {
                    a = ours.read_obj_from_addr::<u64>(GuestAddress(a)).unwrap()
                })),
                Op::Batched(Box::new(|| {
                    // SAFETY: every slot holds the host address of another live slot.
                    let next = unsafe { ptr::read_volatile(b) };
                    b = next as *const u64;
                })),
                Op::Batched(Box::new(|| {
                    c = theirs.read_obj::<u64>(TheirAddress(c)).unwrap()
                })),
            ],
        ));
    }
    let (ours, theirs, _) = both(1, 8 * MIB as u64);
    let host = ours.get_host_address(GuestAddress(MIB as u64)).unwrap() as *mut u8;
    for (label, len) in [("4KiB", 4096usize), ("2MiB", 2 * MIB)] {
        let mut buf = vec![0x3cu8; len];
        let p = buf.as_mut_ptr();
        let slice = || {
            // SAFETY: `buf` is ours for the whole row and used by one closure at a time.
            unsafe { std::slice::from_raw_parts_mut(p, len) }
        };
        rows.push(compare_ops(
            plan,
            &format!("vm_memory write {label} vs memcpy"),
            vec![
                Op::Batched(Box::new(|| {
                    ours.write_all_at_addr(slice(), GuestAddress(MIB as u64))
                        .unwrap()
                })),
                // SAFETY: see above.
                Op::Batched(Box::new(|| unsafe {
                    ptr::copy_nonoverlapping(black_box(p), host, len)
                })),
                Op::Batched(Box::new(|| {
                    theirs
                        .write_slice(slice(), TheirAddress(MIB as u64))
                        .unwrap()
                })),
            ],
        ));
        rows.push(compare_ops(
            plan,
            &format!("vm_memory read {label} vs memcpy"),
            vec![
                Op::Batched(Box::new(|| {
                    ours.read_exact_at_addr(slice(), GuestAddress(MIB as u64))
                        .unwrap()
                })),
                // SAFETY: see above.
                Op::Batched(Box::new(|| unsafe {
                    ptr::copy_nonoverlapping(host, black_box(p), len)
                })),
                Op::Batched(Box::new(|| {
                    theirs
                        .read_slice(slice(), TheirAddress(MIB as u64))
                        .unwrap()
                })),
            ],
        ));
        drop(buf);
    }
    for n in [1u64, 64, 1024] {
        let (ours, theirs, regions) = both(n, n * (64 << 10));
        let mut rng = rand::rngs::StdRng::seed_from_u64(7 + n);
        let addrs: Vec<u64> = (0..1024)
            .map(|_| {
                let (a, s) = regions[rng.random_range(0..regions.len())];
                a + rng.random_range(0..s)
            })
            .collect();
        let (mut i, mut k) = (0usize, 0usize);
        rows.push(compare(
            plan,
            &format!("vm_memory lookup, {n} regions (vs vm-memory)"),
            Op::Batched(Box::new(|| {
                i = (i + 1) & 1023;
                black_box(ours.address_in_range(GuestAddress(addrs[i])));
            })),
            None,
            Some(Op::Batched(Box::new(|| {
                k = (k + 1) & 1023;
                black_box(theirs.find_region(TheirAddress(addrs[k])).is_some());
            }))),
        ));
    }
}

fn raw_set(vm: &KvmVm, slot: u32, flags: u32, gpa: u64, size: u64, host: u64) {
    let region = kvm_userspace_memory_region {
        slot,
        flags,
        guest_phys_addr: gpa,
        memory_size: size,
        userspace_addr: host,
    };
    // SAFETY: `host..host + size` is a live mapping kept for the whole row.
    let ret = unsafe { ioctl_with_ref(&vm.as_fd(), KVM_SET_USER_MEMORY_REGION(), &region) };
    assert_eq!(ret, 0, "{}", std::io::Error::last_os_error());
}

fn hypervisor_rows(plan: &Plan, rows: &mut Vec<Row>) -> Result<(), String> {
    let kvm = Kvm::new().map_err(|e| format!("hypervisor rows need /dev/kvm: {e}"))?;
    let vm = KvmVm::new(
        &kvm,
        GuestMemory::new(&[(GuestAddress(0), MIB as u64)]).unwrap(),
    )
    .map_err(|e| e.to_string())?;
    const RAW_SLOT: u32 = 1000;
    let backing = MemoryMappingBuilder::new(2 * MIB).build().unwrap();
    let host = backing.as_ptr();
    rows.push(compare_ops(
        plan,
        "hypervisor add+remove 2MiB slot vs ioctl pair",
        vec![
            Op::Batched(Box::new(|| {
                // SAFETY: `backing` outlives every slot made here.
                let region = Box::new(unsafe { ExternalMapping::new(host, 2 * MIB) }.unwrap());
                let slot = vm
                    .add_memory_region(
                        GuestAddress(1 << 32),
                        region,
                        false,
                        false,
                        MemCacheType::CacheCoherent,
                    )
                    .unwrap();
                drop(vm.remove_memory_region(slot).unwrap());
            })),
            Op::Batched(Box::new(|| {
                raw_set(&vm, RAW_SLOT, 0, 1 << 33, 2 * MIB as u64, host as u64);
                raw_set(&vm, RAW_SLOT, 0, 1 << 33, 0, 0);
            })),
        ],
    ));
    let ours_mem = MemoryMappingBuilder::new(1 << 30).build().unwrap();
    let raw_mem = MemoryMappingBuilder::new(1 << 30).build().unwrap();
    let slot = vm
        .add_memory_region(
            GuestAddress(1 << 32),
            Box::new(ours_mem),
            false,
            true,
            MemCacheType::CacheCoherent,
        )
        .map_err(|e| e.to_string())?;
    raw_set(
        &vm,
        RAW_SLOT,
        KVM_MEM_LOG_DIRTY_PAGES,
        1 << 34,
        1 << 30,
        raw_mem.as_ptr() as u64,
    );
    let mut bitmap = vec![0u8; dirty_log_bitmap_size(1 << 30)];
    let bp = bitmap.as_mut_ptr();
    let len = bitmap.len();
    rows.push(compare_ops(
        plan,
        "hypervisor get_dirty_log 1GiB vs ioctl",
        vec![
            Op::Batched(Box::new(|| {
                // SAFETY: `bitmap` lives for the whole row; one closure uses it at a time.
                let bitmap = unsafe { std::slice::from_raw_parts_mut(bp, len) };
                vm.get_dirty_log(slot, bitmap).unwrap()
            })),
            Op::Batched(Box::new(|| {
                let mut log = kvm_dirty_log {
                    slot: RAW_SLOT,
                    ..Default::default()
                };
                log.__bindgen_anon_1.dirty_bitmap = bp as *mut libc::c_void;
                // SAFETY: the kernel writes `len` bytes, the slot's bitmap, into `bitmap`.
                let ret = unsafe { ioctl_with_ref(&vm.as_fd(), KVM_GET_DIRTY_LOG(), &log) };
                assert_eq!(ret, 0);
            })),
        ],
    ));
    raw_set(&vm, RAW_SLOT, 0, 1 << 34, 0, 0);
    drop(vm.remove_memory_region(slot));
    let file = vmm_sys_util::tempfile::TempFile::new_in(
        &std::env::current_dir().map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?
    .into_file();
    file.set_len(4 * MIB as u64).map_err(|e| e.to_string())?;
    let mut arena = MemoryMappingArena::new(2 * MIB).unwrap();
    arena.add_fd(0, 2 * MIB, &file).unwrap();
    let arena_ptr = arena.as_ptr();
    let slot = vm
        .add_memory_region(
            GuestAddress(1 << 32),
            Box::new(arena),
            false,
            false,
            MemCacheType::CacheCoherent,
        )
        .map_err(|e| e.to_string())?;
    let raw = MemoryMappingBuilder::new(2 * MIB)
        .from_file(&file)
        .offset(2 * MIB as u64)
        .build()
        .unwrap();
    let raw_ptr = raw.as_ptr();
    let dirty = |p: *mut u8, v: u8| {
        for page in [0usize, 7, 100, 301] {
            // SAFETY: each page is inside a live 2 MiB read-write file mapping.
            unsafe { p.add(page * 4096).write_volatile(v) };
        }
    };
    let (mut v, mut w) = (0u8, 0u8);
    rows.push(compare_ops(
        plan,
        "hypervisor msync 4 dirty pages vs msync",
        vec![
            Op::SelfTimed(Box::new(|| {
                v = v.wrapping_add(1);
                dirty(arena_ptr, v);
                let t = Instant::now();
                vm.msync_memory_region(slot, 0, 2 * MIB).unwrap();
                t.elapsed()
            })),
            Op::SelfTimed(Box::new(|| {
                w = w.wrapping_add(1);
                dirty(raw_ptr, w);
                let t = Instant::now();
                // SAFETY: msync of our own live mapping.
                unsafe { libc::msync(raw_ptr as *mut libc::c_void, 2 * MIB, libc::MS_SYNC) };
                t.elapsed()
            })),
        ],
    ));
    Ok(())
}

struct Raw(RawFd);

impl ScmSocket for Raw {
    fn socket_fd(&self) -> RawFd {
        self.0
    }
}

/// A small request and its answer over Tubes, next to a raw SOCK_SEQPACKET round trip,
/// between the same two threads. The echo thread receives both kinds with the same raw
/// recvmsg; a packet that decodes as a request is answered through the Tube, any other
/// with one raw byte.
fn tube_rows(plan: &Plan, rows: &mut Vec<Row>) {
    let request = VmMemoryRequest::RegisterMemory {
        source: VmMemorySource::Descriptor {
            offset: 0x20_0000,
            size: 0x20_0000,
        },
        dest: vm_control::VmMemoryDestination::GuestPhysicalAddress(1 << 32),
        prot: Protection::read_write(),
        cache: MemCacheType::CacheCoherent,
    };
    let (pipe_r, _pipe_w) = std::io::pipe().unwrap();
    for with_fd in [false, true] {
        let (near, far) = Tube::pair().unwrap();
        let echo = std::thread::spawn(move || {
            let raw = Raw(far.as_fd().as_raw_fd());
            let mut buf = [0u8; 256];
            loop {
                let mut fds = [-1; 4];
                let mut iov = [libc::iovec {
                    iov_base: buf.as_mut_ptr() as *mut libc::c_void,
                    iov_len: buf.len(),
                }];
                // SAFETY: the iovec covers `buf`, which may hold any bytes.
                let Ok((n, count)) = (unsafe { raw.recv_with_fds(&mut iov, &mut fds) }) else {
                    return;
                };
                for &fd in &fds[..count] {
                    // SAFETY: received descriptors are ours to close.
                    unsafe { libc::close(fd) };
                }
                if n == 0 {
                    return;
                }
                let sent = if base::tube::decode::<VmMemoryRequest>(&buf[..n]).is_ok() {
                    far.send(&VmMemoryResponse::Ok).is_ok()
                } else {
                    raw.send_with_fds(&[&buf[..1]], &[] as &[RawFd]).is_ok()
                };
                if !sent {
                    return;
                }
            }
        });
        let fds: Vec<&dyn base::AsRawDescriptor> = if with_fd { vec![&pipe_r] } else { vec![] };
        let raw_fds: Vec<RawFd> = if with_fd {
            vec![pipe_r.as_raw_fd()]
        } else {
            vec![]
        };
        // Not a tube packet (no header byte), so the echo answers it raw.
        let raw_packet = [0x01u8; 16];
        let mut buf = [0u8; 64];
        let label = if with_fd {
            "one descriptor"
        } else {
            "no descriptor"
        };
        rows.push(compare_ops(
            plan,
            &format!("Tube round trip, {label}, vs seqpacket"),
            vec![
                Op::Batched(Box::new(|| {
                    near.send_with_descriptors(&request, &fds).unwrap();
                    black_box(near.recv::<VmMemoryResponse>().unwrap());
                })),
                Op::Batched(Box::new(|| {
                    let raw = Raw(near.as_fd().as_raw_fd());
                    raw.send_with_fds(&[&raw_packet[..]], &raw_fds).unwrap();
                    let mut iov = [libc::iovec {
                        iov_base: buf.as_mut_ptr() as *mut libc::c_void,
                        iov_len: buf.len(),
                    }];
                    let mut none = [0; 1];
                    // SAFETY: the iovec covers `buf`.
                    black_box(unsafe { raw.recv_with_fds(&mut iov, &mut none) }.unwrap());
                })),
            ],
        ));
        drop(near);
        let _ = echo.join();
    }
}

/// Runs every workload and prints a table of ratios; with `json`, writes it there too.
pub fn bench(quick: bool, json: Option<&Path>) -> Result<bool, String> {
    let plan = if quick {
        Plan {
            rounds: 5,
            batch: Duration::from_millis(2),
        }
    } else {
        Plan {
            rounds: 21,
            batch: Duration::from_millis(10),
        }
    };
    println!(
        "{:<44} {:>12} {:>12} {:>9} {:>12} {:>9}",
        "workload (ns per op, median)", "ours", "baseline", "ratio", "vm-memory", "ratio"
    );
    let start = Instant::now();
    let mut rows = Vec::new();
    base_rows(&plan, &mut rows);
    vm_memory_rows(&plan, quick, &mut rows);
    if let Err(e) = hypervisor_rows(&plan, &mut rows) {
        println!("(skipped) {e}");
    }
    tube_rows(&plan, &mut rows);
    println!(
        "{} workloads in {:.1} s",
        rows.len(),
        start.elapsed().as_secs_f64()
    );
    if let Some(path) = json {
        let text = serde_json::to_string_pretty(&rows).map_err(|e| e.to_string())?;
        std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(true)
}
