// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Memory slots proven from the guest's side: read-only slots, removed slots, dirty logging,
//! arena slots with file mappings, and msync, each with real guest code on real KVM.

mod common;

use std::os::unix::fs::FileExt;

use base::{MemoryMappingArena, MemoryMappingBuilder, Protection, SharedMemory, VolatileMemory};
use common::*;
use hypervisor::Vcpu;
use hypervisor::{dirty_log_bitmap_size, Error, MemCacheType, VcpuExit, Vm};
use vm_memory::GuestAddress;

fn temp_file(len: u64) -> std::fs::File {
    let file = vmm_sys_util::tempfile::TempFile::new().unwrap().into_file();
    file.set_len(len).unwrap();
    file
}

#[test]
fn guest_write_to_a_read_only_slot_exits_and_changes_nothing() {
    let Some(kvm) = kvm_or_skip("read_only_slot") else {
        return;
    };
    const RO: u32 = 0x10_0000;
    let code = Asm::default()
        .load_eax(RO + 8)
        .report_eax()
        .store_imm(RO + 8, 0xdead_beef)
        .hlt();
    let (vm, mut vcpu) = vm_with_program(&kvm, 16 * P, &code.0);
    let shm = SharedMemory::new("ro-slot", 2 * P).unwrap();
    let view = MemoryMappingBuilder::new(2 * P as usize)
        .from_shared_memory(&shm)
        .build()
        .unwrap();
    view.write_obj(0x1111_1111u32, 8).unwrap();
    let slot_mem = MemoryMappingBuilder::new(2 * P as usize)
        .from_shared_memory(&shm)
        .protection(Protection::read())
        .build()
        .unwrap();
    let slot = vm
        .add_memory_region(
            GuestAddress(RO as u64),
            Box::new(slot_mem),
            true,
            false,
            MemCacheType::CacheCoherent,
        )
        .unwrap();
    assert_eq!(slot, 1, "boot RAM is slot 0");
    // The guest reads the slot's memory...
    assert_eq!(run_to_report(&mut vcpu), 0x1111_1111);
    // ...and its write comes out as an MMIO exit carrying the value.
    match run(&mut vcpu) {
        VcpuExit::Mmio {
            address,
            size: 4,
            data: Some(data),
        } => {
            assert_eq!(address, RO as u64 + 8);
            assert_eq!(
                u32::from_le_bytes(data[..4].try_into().unwrap()),
                0xdead_beef
            );
        }
        other => panic!("expected an MMIO write, got {other:?}"),
    }
    assert_eq!(run(&mut vcpu), VcpuExit::Hlt);
    assert_eq!(
        view.read_obj::<u32>(8).unwrap(),
        0x1111_1111,
        "memory must be unchanged"
    );
}

#[test]
fn access_to_a_removed_slot_exits_as_mmio() {
    let Some(kvm) = kvm_or_skip("removed_slot") else {
        return;
    };
    const DYN: u32 = 0x20_0000;
    let code = Asm::default().load_eax(DYN).report_eax().hlt();
    let (vm, mut vcpu) = vm_with_program(&kvm, 16 * P, &code.0);
    let shm = SharedMemory::new("removed", P).unwrap();
    let mem = MemoryMappingBuilder::new(P as usize)
        .from_shared_memory(&shm)
        .build()
        .unwrap();
    mem.write_obj(0x5151_5151u32, 0).unwrap();
    let slot = vm
        .add_memory_region(
            GuestAddress(DYN as u64),
            Box::new(mem),
            false,
            false,
            MemCacheType::CacheCoherent,
        )
        .unwrap();
    assert_eq!(run_to_report(&mut vcpu), 0x5151_5151);
    assert_eq!(run(&mut vcpu), VcpuExit::Hlt);

    let back = vm.remove_memory_region(slot).unwrap();
    assert_eq!(back.size(), P as usize);
    assert!(matches!(
        vm.remove_memory_region(slot),
        Err(Error::UnknownSlot { .. })
    ));
    restart(&vcpu, CODE);
    match run(&mut vcpu) {
        VcpuExit::Mmio {
            address,
            size: 4,
            data: None,
        } => assert_eq!(address, DYN as u64),
        other => panic!("expected an MMIO read, got {other:?}"),
    }
    // The VMM answers the read; the guest reports what it was given.
    assert!(matches!(
        vcpu.set_data(&[1, 2]),
        Err(Error::WrongDataSize {
            expected: 4,
            got: 2
        })
    ));
    vcpu.set_data(&0x0bad_cafeu32.to_le_bytes()).unwrap();
    assert!(matches!(vcpu.set_data(&[0; 4]), Err(Error::NoPendingRead)));
    assert_eq!(run_to_report(&mut vcpu), 0x0bad_cafe);
    assert_eq!(run(&mut vcpu), VcpuExit::Hlt);
}

fn set_bits(bitmap: &[u8]) -> Vec<usize> {
    (0..bitmap.len() * 8)
        .filter(|&i| bitmap[i / 8] & (1 << (i % 8)) != 0)
        .collect()
}

#[test]
fn dirty_log_sees_exactly_the_pages_the_guest_wrote() {
    let Some(kvm) = kvm_or_skip("dirty_log") else {
        return;
    };
    const DYN: u32 = 0x40_0000;
    let boot_pages = [3usize, 6, 9, 15];
    let dyn_pages = [0usize, 4, 31];
    let mut code = Asm::default();
    for &p in &boot_pages {
        code = code.store_imm((p as u64 * P) as u32 + 0x10, 0xd1d1_0000 + p as u32);
    }
    for &p in &dyn_pages {
        code = code.store_imm(DYN + (p as u64 * P) as u32 + 0x20, 0xe2e2_0000 + p as u32);
    }
    let (vm, mut vcpu) = vm_with_program(&kvm, 16 * P, &code.hlt().0);
    vm.set_dirty_logging(0, true).unwrap();
    let dynamic = MemoryMappingBuilder::new(32 * P as usize).build().unwrap();
    let slot = vm
        .add_memory_region(
            GuestAddress(DYN as u64),
            Box::new(dynamic),
            false,
            true,
            MemCacheType::CacheCoherent,
        )
        .unwrap();
    // Logging starts with every page dirty: the baseline, taken before the guest runs.
    let baseline = vm.harvest_dirty_log().unwrap();
    assert_eq!(baseline.pages(), 16 + 32);
    baseline.commit();
    assert_eq!(run(&mut vcpu), VcpuExit::Hlt);

    let mut boot_log = vec![0u8; dirty_log_bitmap_size(16 * P as usize)];
    let mut dyn_log = vec![0u8; dirty_log_bitmap_size(32 * P as usize)];
    vm.get_dirty_log(0, &mut boot_log).unwrap();
    vm.get_dirty_log(slot, &mut dyn_log).unwrap();
    assert_eq!(set_bits(&boot_log), boot_pages);
    assert_eq!(set_bits(&dyn_log), dyn_pages);
    // The guest really wrote them.
    let mem = vm.get_memory();
    assert_eq!(
        mem.read_obj_from_addr::<u32>(GuestAddress(6 * P + 0x10))
            .unwrap(),
        0xd1d1_0006
    );
    // A second read is clean.
    vm.get_dirty_log(0, &mut boot_log).unwrap();
    vm.get_dirty_log(slot, &mut dyn_log).unwrap();
    assert!(set_bits(&boot_log).is_empty() && set_bits(&dyn_log).is_empty());

    // Refusals: a buffer too small, a slot that does not log, an unknown slot.
    let err = vm.get_dirty_log(slot, &mut [0u8; 3]).unwrap_err();
    assert!(
        matches!(
            err,
            Error::DirtyLogBufferTooSmall {
                len: 3,
                needed: 8,
                ..
            }
        ),
        "{err}"
    );
    vm.set_dirty_logging(0, false).unwrap();
    let err = vm.get_dirty_log(0, &mut boot_log).unwrap_err();
    assert!(
        matches!(err, Error::DirtyLogNotEnabled { slot: 0 }),
        "{err}"
    );
    assert!(matches!(
        vm.get_dirty_log(77, &mut boot_log),
        Err(Error::UnknownSlot { slot: 77 })
    ));
    assert!(matches!(
        vm.set_dirty_logging(77, true),
        Err(Error::UnknownSlot { slot: 77 })
    ));
    assert_eq!(err.errno(), libc::EINVAL);
}

#[test]
fn a_file_mapped_into_an_arena_slot_is_seen_by_the_guest_until_removed() {
    let Some(kvm) = kvm_or_skip("arena_slot") else {
        return;
    };
    const ARENA: u32 = 0x80_0000;
    let code = Asm::default()
        .load_eax(ARENA + 4 * P as u32)
        .report_eax()
        .store_imm(ARENA + 4 * P as u32 + 4, 0x600d_f11e)
        .hlt();
    let (vm, mut vcpu) = vm_with_program(&kvm, 16 * P, &code.0);
    let arena = MemoryMappingArena::new(16 * P as usize).unwrap();
    let slot = vm
        .add_memory_region(
            GuestAddress(ARENA as u64),
            Box::new(arena),
            false,
            false,
            MemCacheType::CacheCoherent,
        )
        .unwrap();
    let file = temp_file(P);
    file.write_all_at(&0xcafe_f00du32.to_le_bytes(), 0).unwrap();
    vm.add_fd_mapping(
        slot,
        4 * P as usize,
        P as usize,
        &file,
        0,
        Protection::read_write(),
    )
    .unwrap();
    // The guest reads what was written through the file, and writes next to it.
    assert_eq!(run_to_report(&mut vcpu), 0xcafe_f00d);
    assert_eq!(run(&mut vcpu), VcpuExit::Hlt);
    vm.msync_memory_region(slot, 4 * P as usize, P as usize)
        .unwrap();
    let mut back = [0u8; 8];
    file.read_exact_at(&mut back, 0).unwrap();
    assert_eq!(back, [0x0d, 0xf0, 0xfe, 0xca, 0x1e, 0xf1, 0x0d, 0x60]);

    // After remove_mapping, the guest's read and write of the page are both reported (KVM
    // says MMIO or memory fault, depending on the kernel) and the file is untouched.
    vm.remove_mapping(slot, 4 * P as usize, P as usize).unwrap();
    restart(&vcpu, CODE);
    let page = ARENA as u64 + 4 * P;
    match run(&mut vcpu) {
        VcpuExit::Mmio {
            address,
            data: None,
            ..
        } if address == page => {
            vcpu.set_data(&[0; 4]).unwrap();
            assert_eq!(run_to_report(&mut vcpu), 0);
            match run(&mut vcpu) {
                VcpuExit::Mmio {
                    address,
                    data: Some(data),
                    ..
                } if address == page + 4 => {
                    assert_eq!(data[..4], 0x600d_f11eu32.to_le_bytes());
                }
                VcpuExit::MemoryFault { gpa, .. } if gpa & !(P - 1) == page => {}
                other => panic!("the write to the unmapped page was not reported: {other:?}"),
            }
        }
        VcpuExit::MemoryFault { gpa, .. } if gpa & !(P - 1) == page => {}
        other => panic!("the read of the unmapped page was not reported: {other:?}"),
    }
    file.read_exact_at(&mut back, 0).unwrap();
    assert_eq!(back, [0x0d, 0xf0, 0xfe, 0xca, 0x1e, 0xf1, 0x0d, 0x60]);
    assert_eq!(file.metadata().unwrap().len(), P);
}

#[test]
fn msync_and_madvise_ranges_are_checked() {
    let Some(kvm) = kvm_or_skip("msync_ranges") else {
        return;
    };
    let (vm, _vcpu) = vm_with_program(&kvm, 16 * P, &Asm::default().hlt().0);
    let file = temp_file(8 * P);
    let mut arena = MemoryMappingArena::new(8 * P as usize).unwrap();
    arena.add_fd(0, 8 * P as usize, &file).unwrap();
    arena
        .get_slice(3 * P as usize, 5)
        .unwrap()
        .copy_from(b"msync");
    let slot = vm
        .add_memory_region(
            GuestAddress(1 << 30),
            Box::new(arena),
            false,
            false,
            MemCacheType::CacheCoherent,
        )
        .unwrap();
    vm.msync_memory_region(slot, 2 * P as usize, 2 * P as usize)
        .unwrap();
    let mut back = [0u8; 5];
    file.read_exact_at(&mut back, 3 * P).unwrap();
    assert_eq!(&back, b"msync");
    for (offset, size) in [
        (8 * P as usize, 1),
        (0, 8 * P as usize + 1),
        (usize::MAX, 2),
        (P as usize, usize::MAX),
    ] {
        let err = vm.msync_memory_region(slot, offset, size).unwrap_err();
        assert!(
            matches!(err, Error::SlotRange { .. }),
            "{offset:#x}+{size:#x}: {err}"
        );
        assert_eq!(err.errno(), libc::ERANGE);
    }
    let err = vm.msync_memory_region(slot, 100, P as usize).unwrap_err();
    assert!(
        matches!(err, Error::Region { slot: s, source: base::mmap::Error::NotPageAligned { .. } } if s == slot),
        "{err}"
    );
    assert_eq!(err.errno(), libc::EINVAL);
    let err = vm.msync_memory_region(99, 0, P as usize).unwrap_err();
    assert!(matches!(err, Error::UnknownSlot { slot: 99 }), "{err}");
    assert_eq!(err.errno(), libc::ENOENT);
    vm.msync_memory_region(slot, 0, 0).unwrap();

    // madvise on the arena and on boot RAM; removal zeroes what the guest would read.
    vm.madvise_pageout_memory_region(slot, 0, P as usize)
        .unwrap();
    vm.get_memory()
        .write_obj_at_addr(0x77u8, GuestAddress(5 * P))
        .unwrap();
    vm.madvise_remove_memory_region(0, 5 * P as usize, P as usize)
        .unwrap();
    assert_eq!(
        vm.get_memory()
            .read_obj_from_addr::<u8>(GuestAddress(5 * P))
            .unwrap(),
        0
    );
    vm.msync_memory_region(0, 0, 16 * P as usize).unwrap();
    assert!(matches!(
        vm.madvise_remove_memory_region(0, 0, 17 * P as usize),
        Err(Error::SlotRange { .. })
    ));
}

#[test]
fn slots_refuse_bad_regions_and_boot_ram_operations() {
    let Some(kvm) = kvm_or_skip("slot_refusals") else {
        return;
    };
    let (vm, _vcpu) = vm_with_program(&kvm, 16 * P, &Asm::default().hlt().0);
    let mapping = || Box::new(MemoryMappingBuilder::new(4 * P as usize).build().unwrap());
    let add = |addr: u64| {
        vm.add_memory_region(
            GuestAddress(addr),
            mapping(),
            false,
            false,
            MemCacheType::CacheCoherent,
        )
    };
    // Overlap with boot RAM (0..16 pages), exact and partial.
    for addr in [0, 12 * P, 15 * P] {
        let err = add(addr).unwrap_err();
        assert!(
            matches!(err, Error::SlotOverlap { slot: 0, .. }),
            "{addr:#x}: {err}"
        );
        assert_eq!(err.errno(), libc::EEXIST);
    }
    let a = add(0x10_0000).unwrap();
    for addr in [0x10_0000, 0x10_0000 - 2 * P, 0x10_0000 + 3 * P] {
        let err = add(addr).unwrap_err();
        assert!(
            matches!(err, Error::SlotOverlap { slot, .. } if slot == a),
            "{addr:#x}: {err}"
        );
    }
    // Alignment is never rounded.
    let err = add(0x20_0000 + 8).unwrap_err();
    assert!(
        matches!(
            err,
            Error::NotPageAligned {
                what: "guest address",
                ..
            }
        ),
        "{err}"
    );
    let odd = Box::new(MemoryMappingBuilder::new(P as usize + 8).build().unwrap());
    let err = vm
        .add_memory_region(
            GuestAddress(0x20_0000),
            odd,
            false,
            false,
            MemCacheType::CacheCoherent,
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::NotPageAligned {
                what: "slot size",
                ..
            }
        ),
        "{err}"
    );
    let err = add(u64::MAX - 2 * P + 1).unwrap_err();
    assert!(matches!(err, Error::AddressOverflow { .. }), "{err}");
    let err = vm
        .add_memory_region(
            GuestAddress(0x30_0000),
            mapping(),
            false,
            false,
            MemCacheType::CacheNonCoherent,
        )
        .unwrap_err();
    assert!(matches!(err, Error::CacheTypeUnsupported { .. }), "{err}");
    assert_eq!(err.errno(), libc::ENOTSUP);
    // Boot RAM belongs to GuestMemory.
    assert!(matches!(
        vm.remove_memory_region(0),
        Err(Error::BootRamSlot { slot: 0, .. })
    ));
    let file = temp_file(P);
    let err = vm
        .add_fd_mapping(0, 0, P as usize, &file, 0, Protection::read())
        .unwrap_err();
    assert!(matches!(err, Error::BootRamSlot { .. }), "{err}");
    assert!(matches!(
        vm.remove_mapping(0, 0, P as usize),
        Err(Error::BootRamSlot { .. })
    ));
    // A plain mapping has no arena to map into.
    let err = vm
        .add_fd_mapping(a, 0, P as usize, &file, 0, Protection::read())
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Region {
                source: base::mmap::Error::Unsupported { .. },
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(err.errno(), libc::ENOTSUP);
    assert!(matches!(
        vm.add_fd_mapping(42, 0, P as usize, &file, 0, Protection::read()),
        Err(Error::UnknownSlot { .. })
    ));
    assert!(matches!(
        vm.remove_mapping(42, 0, P as usize),
        Err(Error::UnknownSlot { .. })
    ));
}

#[test]
fn a_triple_fault_is_a_shutdown_exit() {
    let Some(kvm) = kvm_or_skip("shutdown") else {
        return;
    };
    // ud2 (0F 0B) raises #UD; with an empty IDT that becomes #GP, then a double fault, then
    // a triple fault, which KVM reports as a shutdown.
    let (_vm, mut vcpu) = vm_with_program(&kvm, 16 * P, &[0x0f, 0x0b]);
    let mut sregs = vcpu.get_sregs().unwrap();
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    vcpu.set_sregs(&sregs).unwrap();
    assert_eq!(run(&mut vcpu), VcpuExit::Shutdown);
    assert_eq!(vcpu.id(), 0);
}

#[test]
fn a_vcpu_keeps_slot_memory_mapped_after_its_vm_is_dropped() {
    let Some(kvm) = kvm_or_skip("vcpu_outlives_vm") else {
        return;
    };
    const DYN: u32 = 0x20_0000;
    let code = Asm::default().load_eax(DYN).report_eax().hlt();
    let (vm, mut vcpu) = vm_with_program(&kvm, 16 * P, &code.0);
    let mem = MemoryMappingBuilder::new(P as usize).build().unwrap();
    mem.write_obj(0x7777_7777u32, 0).unwrap();
    let host = mem.as_ptr() as usize;
    vm.add_memory_region(
        GuestAddress(DYN as u64),
        Box::new(mem),
        false,
        false,
        MemCacheType::CacheCoherent,
    )
    .unwrap();
    // The kernel keeps the VM alive through the vCPU; so must we keep its memory.
    drop(vm);
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let mapped = maps.lines().any(|l| {
        let (range, _) = l.split_once(' ').unwrap();
        let (a, b) = range.split_once('-').unwrap();
        let (a, b) = (
            usize::from_str_radix(a, 16).unwrap(),
            usize::from_str_radix(b, 16).unwrap(),
        );
        a <= host && host < b
    });
    assert!(
        mapped,
        "the slot's memory was unmapped while a vCPU could still reach it"
    );
    assert_eq!(run_to_report(&mut vcpu), 0x7777_7777);
    assert_eq!(run(&mut vcpu), VcpuExit::Hlt);
}
