// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The KVM backend's memory functions next to the raw ioctls and syscalls they wrap, in one
//! run. Each group is `ours` and its raw `baseline`; `tools/bench_ratios` prints the ratios.

#![allow(missing_docs)]

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use base::{ExternalMapping, MappedRegion, MemoryMappingArena, MemoryMappingBuilder};
use criterion::{criterion_group, criterion_main, Criterion};
use hypervisor::kvm::{Kvm, KvmVm};
use hypervisor::{dirty_log_bitmap_size, MemCacheType, Vm};
use kvm_bindings::{kvm_dirty_log, kvm_userspace_memory_region, KVM_MEM_LOG_DIRTY_PAGES};
use vm_memory::{GuestAddress, GuestMemory};
use vmm_sys_util::{ioctl::ioctl_with_ref, ioctl_iow_nr};

const KVMIO: u32 = 0xAE;
ioctl_iow_nr!(KVM_GET_DIRTY_LOG, KVMIO, 0x42, kvm_dirty_log);
ioctl_iow_nr!(
    KVM_SET_USER_MEMORY_REGION,
    KVMIO,
    0x46,
    kvm_userspace_memory_region
);

const MIB2: usize = 2 << 20;
const GIB: usize = 1 << 30;
/// A slot number far above any the VM's own table hands out in these benchmarks.
const RAW_SLOT: u32 = 1000;

fn vm() -> Option<KvmVm> {
    let kvm = match Kvm::new() {
        Ok(kvm) => kvm,
        Err(e) => {
            eprintln!("KVM-SKIP hypervisor benches: {e}");
            return None;
        }
    };
    let mem = GuestMemory::new(&[(GuestAddress(0), 1 << 20)]).unwrap();
    Some(KvmVm::new(&kvm, mem).unwrap())
}

fn raw_set(vm: &KvmVm, slot: u32, flags: u32, gpa: u64, size: u64, host: u64) {
    let region = kvm_userspace_memory_region {
        slot,
        flags,
        guest_phys_addr: gpa,
        memory_size: size,
        userspace_addr: host,
    };
    // SAFETY: `host..host + size` is a live mapping kept for the benchmark's whole run.
    let ret = unsafe { ioctl_with_ref(&vm.as_fd(), KVM_SET_USER_MEMORY_REGION(), &region) };
    assert_eq!(ret, 0, "{}", std::io::Error::last_os_error());
}

fn slot_add_remove(c: &mut Criterion) {
    let Some(vm) = vm() else { return };
    let backing = MemoryMappingBuilder::new(MIB2).build().unwrap();
    let host = backing.as_ptr();
    let mut group = c.benchmark_group("add_remove_2MiB_slot_vs_ioctl_pair");
    group.bench_function("ours", |b| {
        b.iter(|| {
            // SAFETY: `backing` outlives every slot made here.
            let region = Box::new(unsafe { ExternalMapping::new(host, MIB2) }.unwrap());
            let slot = vm
                .add_memory_region(
                    GuestAddress(1 << 32),
                    region,
                    false,
                    false,
                    MemCacheType::CacheCoherent,
                )
                .unwrap();
            vm.remove_memory_region(slot).unwrap()
        })
    });
    group.bench_function("baseline", |b| {
        b.iter(|| {
            raw_set(&vm, RAW_SLOT, 0, 1 << 33, MIB2 as u64, host as u64);
            raw_set(&vm, RAW_SLOT, 0, 1 << 33, 0, 0);
        })
    });
    group.finish();
}

fn dirty_log(c: &mut Criterion) {
    let Some(vm) = vm() else { return };
    let ours_mem = MemoryMappingBuilder::new(GIB).build().unwrap();
    let raw_mem = MemoryMappingBuilder::new(GIB).build().unwrap();
    let slot = vm
        .add_memory_region(
            GuestAddress(1 << 32),
            Box::new(ours_mem),
            false,
            true,
            MemCacheType::CacheCoherent,
        )
        .unwrap();
    raw_set(
        &vm,
        RAW_SLOT,
        KVM_MEM_LOG_DIRTY_PAGES,
        1 << 34,
        GIB as u64,
        raw_mem.as_ptr() as u64,
    );
    let mut bitmap = vec![0u8; dirty_log_bitmap_size(GIB)];
    let mut group = c.benchmark_group("get_dirty_log_1GiB_vs_ioctl");
    group.bench_function("ours", |b| {
        b.iter(|| vm.get_dirty_log(slot, &mut bitmap).unwrap())
    });
    group.bench_function("baseline", |b| {
        b.iter(|| {
            let mut log = kvm_dirty_log {
                slot: RAW_SLOT,
                ..Default::default()
            };
            log.__bindgen_anon_1.dirty_bitmap = bitmap.as_mut_ptr() as *mut libc::c_void;
            // SAFETY: the kernel writes the slot's bitmap, `bitmap.len()` bytes, into `bitmap`.
            let ret = unsafe { ioctl_with_ref(&vm.as_fd(), KVM_GET_DIRTY_LOG(), &log) };
            assert_eq!(ret, 0);
        })
    });
    group.finish();
    raw_set(&vm, RAW_SLOT, 0, 1 << 34, 0, 0);
}

/// Only the msync is timed; four pages are dirtied before each.
fn msync(c: &mut Criterion) {
    let Some(vm) = vm() else { return };
    let file =
        vmm_sys_util::tempfile::TempFile::new_in(std::path::Path::new(env!("CARGO_TARGET_TMPDIR")))
            .unwrap()
            .into_file();
    file.set_len(2 * MIB2 as u64).unwrap();
    let mut arena = MemoryMappingArena::new(MIB2).unwrap();
    arena.add_fd(0, MIB2, &file).unwrap();
    let arena_ptr = arena.as_ptr();
    let slot = vm
        .add_memory_region(
            GuestAddress(1 << 32),
            Box::new(arena),
            false,
            false,
            MemCacheType::CacheCoherent,
        )
        .unwrap();
    let raw = MemoryMappingBuilder::new(MIB2)
        .from_file(&file)
        .offset(MIB2 as u64)
        .build()
        .unwrap();
    let timed = |iters: u64, base: *mut u8, sync: &dyn Fn()| {
        let mut total = Duration::ZERO;
        for i in 0..iters {
            for page in [0usize, 7, 100, 301] {
                // SAFETY: each page is inside a live 2 MiB read-write file mapping.
                unsafe { base.add(page * 4096).write_volatile(i as u8) };
            }
            let start = Instant::now();
            sync();
            total += start.elapsed();
        }
        total
    };
    let mut group = c.benchmark_group("msync_4_dirty_pages_vs_msync");
    group.sample_size(20);
    group.bench_function("ours", |b| {
        b.iter_custom(|iters| {
            timed(iters, arena_ptr, &|| {
                vm.msync_memory_region(slot, 0, MIB2).unwrap()
            })
        })
    });
    group.bench_function("baseline", |b| {
        b.iter_custom(|iters| {
            timed(iters, raw.as_ptr(), &|| {
                // SAFETY: msync of our own live mapping.
                let ret =
                    unsafe { libc::msync(raw.as_ptr() as *mut libc::c_void, MIB2, libc::MS_SYNC) };
                assert_eq!(ret, 0);
            })
        })
    });
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
    targets = slot_add_remove, dirty_log, msync
}
criterion_main!(benches);
