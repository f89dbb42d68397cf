// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Rows for the dirty log: a harvest of a 1 GiB slot with 0, 16, 4,096 and 262,144 pages
//! dirtied by the guest, in each of KVM's modes, next to the raw ioctls doing the same job
//! (and kvm-ioctls' `get_dirty_log`, its only dirty-log call). Each sample first runs the
//! guest, untimed, to dirty the pages, then times the harvest alone: collecting, walking
//! the dirty runs, and re-arming (our commit; the raw code's `KVM_CLEAR_DIRTY_LOG` or ring
//! reset).

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use base::{MemoryMapping, MemoryMappingBuilder};
use hypervisor::kvm::{Kvm, KvmVcpu, KvmVm};
use hypervisor::{DirtyLogMode, Vcpu, VcpuExit, Vm};
use kvm_bindings::{
    kvm_clear_dirty_log, kvm_dirty_gfn, kvm_dirty_log, kvm_userspace_memory_region,
    KVM_DIRTY_LOG_PAGE_OFFSET, KVM_MEM_LOG_DIRTY_PAGES,
};
use vm_memory::{GuestAddress, GuestMemory};
use vmm_sys_util::ioctl::{ioctl, ioctl_with_ref};
use vmm_sys_util::{ioctl_io_nr, ioctl_iow_nr, ioctl_iowr_nr};

use super::harness::{compare_ops, Op, Plan, Row};

const KVMIO: u32 = 0xAE;
ioctl_iow_nr!(
    KVM_SET_USER_MEMORY_REGION,
    KVMIO,
    0x46,
    kvm_userspace_memory_region
);
ioctl_iow_nr!(KVM_GET_DIRTY_LOG, KVMIO, 0x42, kvm_dirty_log);
ioctl_iowr_nr!(KVM_CLEAR_DIRTY_LOG, KVMIO, 0xc0, kvm_clear_dirty_log);
ioctl_io_nr!(KVM_RESET_DIRTY_RINGS, KVMIO, 0xc7);

const GIB: u64 = 1 << 30;
const PAGES: u64 = GIB / 4096;
/// Where the guest's code and its parameters are (boot RAM region 0, not logged).
const CODE: u64 = 0x1000;
const PARAMS: u64 = 0x500;
/// Where our 1 GiB slot and the raw code's sit in guest memory (the 32-bit guest reaches
/// below 4 GiB only, and KVM keeps its TSS just under it). kvm-ioctls harvests the raw slot,
/// after dirtying it again: each sample dirties and then takes everything.
const OURS_GPA: u64 = GIB;
const RAW_GPA: u64 = 2 * GIB;
const RAW_SLOT: u32 = 100;
const RING_ENTRIES: u32 = 65536;

/// The guest: `[PARAMS + 4]` pages from `[PARAMS]`, `[PARAMS + 8]` bytes apart, get one
/// dword each, then `hlt`.
fn program() -> Vec<u8> {
    let mut code = Vec::new();
    code.extend([0x8b, 0x3d]); // mov edi, [PARAMS]
    code.extend((PARAMS as u32).to_le_bytes());
    code.extend([0x8b, 0x0d]); // mov ecx, [PARAMS + 4]
    code.extend((PARAMS as u32 + 4).to_le_bytes());
    code.extend([0x8b, 0x15]); // mov edx, [PARAMS + 8]
    code.extend((PARAMS as u32 + 8).to_le_bytes());
    code.extend([0x85, 0xc9]); // test ecx, ecx
    code.extend([0x74, 0x07]); // jz done (over the 7-byte loop)
    code.extend([0x89, 0x0f]); // l: mov [edi], ecx
    code.extend([0x01, 0xd7]); // add edi, edx
    code.push(0x49); // dec ecx
    code.extend([0x75, 0xf9]); // jnz l
    code.push(0xf4); // done: hlt
    code
}

/// A VM for one mode, its vCPU, and the slots of each variant.
struct Bench {
    vm: KvmVm,
    vcpu: KvmVcpu,
    /// Ring mode: a second VM driven by raw ioctls only, with its own vCPU and ring.
    raw_ring: Option<(KvmVm, KvmVcpu, MemoryMapping, u32)>,
    _raw_mem: MemoryMapping,
}

fn set_region(vm_fd: &impl AsFd, slot: u32, flags: u32, gpa: u64, mem: &MemoryMapping) {
    let region = kvm_userspace_memory_region {
        slot,
        flags,
        guest_phys_addr: gpa,
        memory_size: mem.size() as u64,
        userspace_addr: mem.as_ptr() as u64,
    };
    // SAFETY: `mem` is a live mapping that the caller keeps for the VM's life.
    let ret = unsafe { ioctl_with_ref(&vm_fd.as_fd(), KVM_SET_USER_MEMORY_REGION(), &region) };
    assert_eq!(ret, 0, "{}", std::io::Error::last_os_error());
}

/// Runs the guest to dirty `n` pages of the slot at `gpa`.
fn dirty(vm: &KvmVm, vcpu: &mut KvmVcpu, gpa: u64, n: u64) {
    let stride = PAGES.checked_div(n).unwrap_or(0) * 4096;
    let mem = vm.get_memory();
    mem.write_obj_at_addr(gpa as u32, GuestAddress(PARAMS))
        .unwrap();
    mem.write_obj_at_addr(n as u32, GuestAddress(PARAMS + 4))
        .unwrap();
    mem.write_obj_at_addr(stride as u32, GuestAddress(PARAMS + 8))
        .unwrap();
    let mut regs = vcpu.get_regs().unwrap();
    regs.rip = CODE;
    regs.rflags = 2;
    vcpu.set_regs(&regs).unwrap();
    loop {
        match vcpu.run().unwrap() {
            VcpuExit::Hlt => return,
            VcpuExit::Intr => continue,
            other => panic!("the dirtying guest stopped with {other:?}"),
        }
    }
}

fn setup(kvm: &Kvm, mode: DirtyLogMode) -> Result<Bench, String> {
    let low = (GuestAddress(0), 1u64 << 20);
    let mem = GuestMemory::new(&[low, (GuestAddress(OURS_GPA), GIB)]).map_err(|e| e.to_string())?;
    mem.write_all_at_addr(&program(), GuestAddress(CODE))
        .unwrap();
    let vm = KvmVm::new_with_dirty_log(kvm, mem, mode).map_err(|e| e.to_string())?;
    if vm.dirty_log_mode() != mode {
        return Err(format!("{mode:?} is not available here"));
    }
    vm.set_dirty_logging(1, true).map_err(|e| e.to_string())?;
    vm.harvest_dirty_log().map_err(|e| e.to_string())?.commit();
    let vcpu = vm.create_vcpu(0).map_err(|e| e.to_string())?;
    vcpu.set_flat_protected_mode(CODE as u32)
        .map_err(|e| e.to_string())?;
    // The same kind of memory as boot RAM (a memfd), so that KVM maps and protects both
    // slots alike.
    let shm = base::SharedMemory::new("raw-slot", GIB).map_err(|e| e.to_string())?;
    let raw_mem = MemoryMappingBuilder::new(GIB as usize)
        .from_shared_memory(&shm)
        .build()
        .unwrap();
    let mut raw_ring = None;
    if let DirtyLogMode::Ring { entries } = mode {
        // Rings are per vCPU and shared by every slot, so the raw code gets a VM of its own.
        let mem = GuestMemory::new(&[low, (GuestAddress(RAW_GPA), GIB)]).unwrap();
        mem.write_all_at_addr(&program(), GuestAddress(CODE))
            .unwrap();
        let rvm = KvmVm::new_with_dirty_log(kvm, mem, mode).map_err(|e| e.to_string())?;
        rvm.set_dirty_logging(1, true).map_err(|e| e.to_string())?;
        let rvcpu = rvm.create_vcpu(0).map_err(|e| e.to_string())?;
        rvcpu
            .set_flat_protected_mode(CODE as u32)
            .map_err(|e| e.to_string())?;
        let file = std::fs::File::from(rvcpu.as_fd().try_clone_to_owned().unwrap());
        let ring =
            MemoryMappingBuilder::new(entries as usize * std::mem::size_of::<kvm_dirty_gfn>())
                .from_file(&file)
                .offset(u64::from(KVM_DIRTY_LOG_PAGE_OFFSET) * 4096)
                .build()
                .map_err(|e| e.to_string())?;
        raw_ring = Some((rvm, rvcpu, ring, 0));
    } else {
        set_region(&vm, RAW_SLOT, KVM_MEM_LOG_DIRTY_PAGES, RAW_GPA, &raw_mem);
    }
    Ok(Bench {
        vm,
        vcpu,
        raw_ring,
        _raw_mem: raw_mem,
    })
}

/// Counts the dirty pages of a KVM bitmap the way a caller walks it: run by run.
fn walk_bitmap(bits: &[u64]) -> u64 {
    let mut pages = 0;
    for &w in bits {
        let mut w = w;
        while w != 0 {
            let start = w.trailing_zeros();
            let ones = (w >> start).trailing_ones();
            pages += u64::from(ones);
            w &= !(u64::MAX.checked_shl(ones).map_or(u64::MAX, |m| !m) << start);
        }
    }
    pages
}

fn raw_get(vm: &impl AsFd, slot: u32, bits: &mut [u64]) {
    let mut log = kvm_dirty_log {
        slot,
        ..Default::default()
    };
    log.__bindgen_anon_1.dirty_bitmap = bits.as_mut_ptr() as *mut libc::c_void;
    // SAFETY: the kernel writes the 1 GiB slot's bitmap, `bits.len()` words, into `bits`.
    let ret = unsafe { ioctl_with_ref(&vm.as_fd(), KVM_GET_DIRTY_LOG(), &log) };
    assert_eq!(ret, 0, "{}", std::io::Error::last_os_error());
}

fn raw_clear(vm: &impl AsFd, slot: u32, bits: &[u64]) {
    let mut clear = kvm_clear_dirty_log {
        slot,
        num_pages: PAGES as u32,
        first_page: 0,
        ..Default::default()
    };
    clear.__bindgen_anon_1.dirty_bitmap = bits.as_ptr() as *mut libc::c_void;
    // SAFETY: the kernel reads the slot's bitmap, `bits.len()` words, from `bits`.
    let ret = unsafe { ioctl_with_ref(&vm.as_fd(), KVM_CLEAR_DIRTY_LOG(), &clear) };
    assert_eq!(ret, 0, "{}", std::io::Error::last_os_error());
}

/// Takes every published entry of a ring, hands it back, and resets: the raw ring harvest.
fn raw_ring(vm: &KvmVm, ring: &MemoryMapping, entries: u32, fetch: &mut u32, out: &mut Vec<u64>) {
    out.clear();
    let base = ring.as_ptr() as *mut kvm_dirty_gfn;
    for _ in 0..entries {
        // SAFETY: the index is inside the mapped ring; flags are published by the kernel
        // with a release store and handed back by ours, as the KVM API describes.
        unsafe {
            let e = base.add((*fetch & (entries - 1)) as usize);
            let flags = std::sync::atomic::AtomicU32::from_ptr(std::ptr::addr_of_mut!((*e).flags));
            if flags.load(std::sync::atomic::Ordering::Acquire) & 1 == 0 {
                break;
            }
            out.push(std::ptr::addr_of!((*e).offset).read_volatile());
            flags.store(2, std::sync::atomic::Ordering::Release);
        }
        *fetch = fetch.wrapping_add(1);
    }
    if !out.is_empty() {
        // SAFETY: no argument; the kernel reads our mapped ring.
        let ret = unsafe { ioctl(&vm.as_fd(), KVM_RESET_DIRTY_RINGS()) };
        assert!(ret >= 0, "{}", std::io::Error::last_os_error());
    }
}

pub fn rows(quick: bool, rows: &mut Vec<Row>) -> Result<(), String> {
    let kvm = Kvm::new().map_err(|e| format!("dirty-log rows need /dev/kvm: {e}"))?;
    let modes = [
        DirtyLogMode::Bitmap,
        DirtyLogMode::ManualProtect,
        DirtyLogMode::Ring {
            entries: RING_ENTRIES,
        },
    ];
    for mode in modes {
        let mut b = match setup(&kvm, mode) {
            Ok(b) => b,
            Err(e) => {
                println!("(skipped) dirty log {mode:?}: {e}");
                continue;
            }
        };
        // kvm-ioctls on the same VM, through a duplicate of its descriptor.
        let peer_vm = if mode == DirtyLogMode::Bitmap {
            let fd =
                b.vm.as_fd()
                    .try_clone_to_owned()
                    .map_err(|e| e.to_string())?;
            let kvm_ioctls = kvm_ioctls::Kvm::new().map_err(|e| e.to_string())?;
            // SAFETY: `fd` is a VM descriptor of our own, whose ownership passes to VmFd.
            Some(
                unsafe {
                    kvm_ioctls.create_vmfd_from_rawfd(std::os::fd::IntoRawFd::into_raw_fd(fd))
                }
                .map_err(|e| e.to_string())?,
            )
        } else {
            None
        };
        let mut bits = vec![0u64; (PAGES / 64) as usize];
        // The raw slot's first harvest: INITIALLY_SET bits, or nothing.
        if b.raw_ring.is_none() {
            raw_get(&b.vm, RAW_SLOT, &mut bits);
            if mode == DirtyLogMode::ManualProtect {
                raw_clear(&b.vm, RAW_SLOT, &bits);
            }
        }
        let counts: &[u64] = match mode {
            // One ring holds at most 65,536 entries; 262,144 pages need four vCPUs' rings.
            DirtyLogMode::Ring { .. } => &[0, 16, 4096, 16384],
            _ => &[0, 16, 4096, 262_144],
        };
        for &n in counts {
            // A sample of 262,144 pages takes the guest about a second to dirty here.
            let plan = Plan {
                rounds: if n > 100_000 || quick { 5 } else { 11 },
                sample: Duration::from_millis(1),
            };
            let expected = n;
            let name = format!("dirty harvest {mode:?} 1GiB, {n} pages, vs raw ioctls");
            let name = name.replace(&format!(" {{ entries: {RING_ENTRIES} }}"), "");
            let Bench {
                vm,
                vcpu,
                raw_ring: ring,
                ..
            } = &mut b;
            let vcpu = std::cell::RefCell::new(vcpu);
            let ring = std::cell::RefCell::new(ring.as_mut());
            let bits = std::cell::RefCell::new(&mut bits);
            let mut offsets = Vec::with_capacity(RING_ENTRIES as usize);
            let mut ops = vec![
                Op::self_timed(|| {
                    dirty(vm, &mut vcpu.borrow_mut(), OURS_GPA, n);
                    let t = Instant::now();
                    let h = vm.harvest_dirty_log().unwrap();
                    let mut pages = 0;
                    h.for_each_run(|r| pages += r.len / 4096);
                    h.commit();
                    let took = t.elapsed();
                    assert_eq!(pages, expected);
                    took
                }),
                Op::self_timed(|| {
                    let mut ring = ring.borrow_mut();
                    if let Some((rvm, rvcpu, map, fetch)) = ring.as_deref_mut() {
                        dirty(rvm, rvcpu, RAW_GPA, n);
                        let t = Instant::now();
                        raw_ring(rvm, map, RING_ENTRIES, fetch, &mut offsets);
                        let took = t.elapsed();
                        assert_eq!(offsets.len() as u64, expected);
                        return took;
                    }
                    let mut bits = bits.borrow_mut();
                    dirty(vm, &mut vcpu.borrow_mut(), RAW_GPA, n);
                    let t = Instant::now();
                    raw_get(vm, RAW_SLOT, &mut bits);
                    if mode == DirtyLogMode::ManualProtect {
                        raw_clear(vm, RAW_SLOT, &bits);
                    }
                    let pages = walk_bitmap(&bits);
                    let took = t.elapsed();
                    assert_eq!(pages, expected);
                    took
                }),
            ];
            if let Some(peer) = &peer_vm {
                ops.push(Op::self_timed(|| {
                    dirty(vm, &mut vcpu.borrow_mut(), RAW_GPA, n);
                    let t = Instant::now();
                    let bitmap = peer.get_dirty_log(RAW_SLOT, GIB as usize).unwrap();
                    let pages = walk_bitmap(&bitmap);
                    let took = t.elapsed();
                    assert_eq!(pages, expected);
                    took
                }));
            }
            rows.push(compare_ops(&plan, &name, ops));
        }
    }
    Ok(())
}
