// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Rows for `hypervisor`: slots, the dirty log and msync on KVM, next to the raw ioctls and
//! syscalls. These take microseconds, so each call of a variant is one operation.

use std::os::fd::AsFd;
use std::time::Instant;

use base::{ExternalMapping, MappedRegion, MemoryMappingArena, MemoryMappingBuilder};
use hypervisor::kvm::{Kvm, KvmVm};
use hypervisor::{dirty_log_bitmap_size, MemCacheType, Vm};
use kvm_bindings::{kvm_dirty_log, kvm_userspace_memory_region, KVM_MEM_LOG_DIRTY_PAGES};
use vm_memory::{GuestAddress, GuestMemory};
use vmm_sys_util::ioctl::ioctl_with_ref;
use vmm_sys_util::ioctl_iow_nr;

use super::harness::{compare_ops, Op, Plan, Row};
use super::MIB;

const KVMIO: u32 = 0xAE;
ioctl_iow_nr!(
    KVM_SET_USER_MEMORY_REGION,
    KVMIO,
    0x46,
    kvm_userspace_memory_region
);
ioctl_iow_nr!(KVM_GET_DIRTY_LOG, KVMIO, 0x42, kvm_dirty_log);

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

pub fn rows(plan: &Plan, rows: &mut Vec<Row>) -> Result<(), String> {
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
            Op::each(|| {
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
            }),
            Op::each(|| {
                raw_set(&vm, RAW_SLOT, 0, 1 << 33, 2 * MIB as u64, host as u64);
                raw_set(&vm, RAW_SLOT, 0, 1 << 33, 0, 0);
            }),
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
            Op::each(|| {
                // SAFETY: `bitmap` lives for the whole row; one closure uses it at a time.
                let bitmap = unsafe { std::slice::from_raw_parts_mut(bp, len) };
                vm.get_dirty_log(slot, bitmap).unwrap()
            }),
            Op::each(|| {
                let mut log = kvm_dirty_log {
                    slot: RAW_SLOT,
                    ..Default::default()
                };
                log.__bindgen_anon_1.dirty_bitmap = bp as *mut libc::c_void;
                // SAFETY: the kernel writes `len` bytes, the slot's bitmap, into `bitmap`.
                let ret = unsafe { ioctl_with_ref(&vm.as_fd(), KVM_GET_DIRTY_LOG(), &log) };
                assert_eq!(ret, 0);
            }),
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
            Op::self_timed(|| {
                v = v.wrapping_add(1);
                dirty(arena_ptr, v);
                let t = Instant::now();
                vm.msync_memory_region(slot, 0, 2 * MIB).unwrap();
                t.elapsed()
            }),
            Op::self_timed(|| {
                w = w.wrapping_add(1);
                dirty(raw_ptr, w);
                let t = Instant::now();
                // SAFETY: msync of our own live mapping.
                unsafe { libc::msync(raw_ptr as *mut libc::c_void, 2 * MIB, libc::MS_SYNC) };
                t.elapsed()
            }),
        ],
    ));
    Ok(())
}
