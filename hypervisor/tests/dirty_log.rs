// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The dirty log in each of KVM's three modes, proven with real guest code: exactly the
//! pages the guest and the VMM wrote, over boot RAM and added slots; harvests that keep
//! their pages until committed; writes made during a harvest seen by the next one; a full
//! dirty ring emptied on the way; and the typed refusals.

mod common;

use base::MemoryMappingBuilder;
use common::*;
use hypervisor::kvm::{KvmVcpu, KvmVm};
use hypervisor::{DirtyLogMode, DirtyRun, Error, MemCacheType, Vcpu, VcpuExit, Vm, VmCap};
use vm_memory::{GuestAddress, GuestMemory};

const MODES: [DirtyLogMode; 3] = [
    DirtyLogMode::Bitmap,
    DirtyLogMode::ManualProtect,
    DirtyLogMode::Ring { entries: 4096 },
];
/// Where the added slot sits.
const DYN: u32 = 0x40_0000;

/// The runs of a harvest, committed.
fn harvest(vm: &KvmVm) -> Vec<DirtyRun> {
    let h = vm.harvest_dirty_log().unwrap();
    let runs = h.runs().collect();
    h.commit();
    runs
}

/// `(slot, first page, pages)` of each run.
fn pages(runs: &[DirtyRun]) -> Vec<(u32, u64, u64)> {
    runs.iter()
        .map(|r| (r.slot, r.offset / P, r.len / P))
        .collect()
}

/// The mode a VM asked for `mode` must get on this kernel.
fn expected_mode(kvm: &hypervisor::kvm::Kvm, mode: DirtyLogMode) -> DirtyLogMode {
    use hypervisor::Hypervisor;
    match mode {
        DirtyLogMode::Ring { .. } if kvm.check_capability(VmCap::DirtyLogRing) => mode,
        DirtyLogMode::Ring { .. } | DirtyLogMode::ManualProtect
            if kvm.check_capability(VmCap::ManualDirtyLogProtect) =>
        {
            DirtyLogMode::ManualProtect
        }
        _ => DirtyLogMode::Bitmap,
    }
}

/// A VM in `mode` running `code`, with boot RAM of 64 pages (logged) and a 32-page added
/// slot at `DYN` (logged), baseline harvested.
fn logged_vm(kvm: &hypervisor::kvm::Kvm, mode: DirtyLogMode, code: &[u8]) -> (KvmVm, KvmVcpu) {
    let (vm, vcpu) = vm_with_program_in(kvm, 64 * P, code, mode);
    assert_eq!(vm.dirty_log_mode(), expected_mode(kvm, mode));
    vm.set_dirty_logging(0, true).unwrap();
    let slot = vm
        .add_memory_region(
            GuestAddress(DYN.into()),
            Box::new(MemoryMappingBuilder::new(32 * P as usize).build().unwrap()),
            false,
            true,
            MemCacheType::CacheCoherent,
        )
        .unwrap();
    assert_eq!(slot, 1);
    // Logging starts with every page dirty: that is the baseline copy's harvest.
    assert_eq!(pages(&harvest(&vm)), [(0, 0, 64), (1, 0, 32)], "{mode:?}");
    assert!(
        harvest(&vm).is_empty(),
        "{mode:?}: a second harvest is clean"
    );
    (vm, vcpu)
}

#[test]
fn each_mode_reports_exactly_what_the_guest_and_the_vmm_wrote() {
    let Some(kvm) = kvm_or_skip("dirty_log_modes") else {
        return;
    };
    for mode in MODES {
        let code = Asm::default()
            .store_imm(10 * P as u32 + 4, 1)
            .store_imm(11 * P as u32, 2)
            .store_imm(40 * P as u32, 3)
            .store_imm(DYN + 31 * P as u32 + 8, 4)
            .hlt();
        let (vm, mut vcpu) = logged_vm(&kvm, mode, &code.0);
        // The code page itself is only read; the guest's writes are the four above.
        assert_eq!(run(&mut vcpu), VcpuExit::Hlt);
        // And the VMM writes one page of boot RAM through GuestMemory, tracking on.
        let mem = vm.get_memory();
        mem.set_dirty_tracking(true);
        mem.write_obj_at_addr(7u64, GuestAddress(50 * P + 16))
            .unwrap();
        let runs = harvest(&vm);
        assert_eq!(
            pages(&runs),
            [(0, 10, 2), (0, 40, 1), (0, 50, 1), (1, 31, 1)],
            "{mode:?}"
        );
        assert_eq!(runs[3].guest_addr, GuestAddress(DYN as u64 + 31 * P));
        assert!(harvest(&vm).is_empty(), "{mode:?}");
        // With tracking off the VMM's writes are not seen (the guest's still are).
        mem.set_dirty_tracking(false);
        mem.write_obj_at_addr(7u64, GuestAddress(51 * P)).unwrap();
        assert!(harvest(&vm).is_empty(), "{mode:?}");
    }
}

#[test]
fn a_harvest_that_is_not_committed_keeps_its_pages_and_later_writes_join_them() {
    let Some(kvm) = kvm_or_skip("dirty_log_transactional") else {
        return;
    };
    for mode in MODES {
        // Two programs: the first writes page 20 and halts; the second (entered at its own
        // address) writes page 21.
        let second = CODE as u32 + 0x100;
        let mut code = Asm::default().store_imm(20 * P as u32, 1).hlt().0;
        code.resize(0x100, 0x90);
        code.extend(Asm::default().store_imm(21 * P as u32, 2).hlt().0);
        let (vm, mut vcpu) = logged_vm(&kvm, mode, &code);
        assert_eq!(run(&mut vcpu), VcpuExit::Hlt);
        {
            let h = vm.harvest_dirty_log().unwrap();
            assert_eq!(pages(&h.runs().collect::<Vec<_>>()), [(0, 20, 1)]);
            assert_eq!(h.pages(), 1);
            // Dropped, as a failed snapshot write would: nothing is lost.
        }
        // While a harvest holds the pages, the guest writes again: the page it wrote is
        // re-armed already, so the write is recorded for the next harvest, even though this
        // one (which copies "after") commits.
        let h = vm.harvest_dirty_log().unwrap();
        assert_eq!(
            pages(&h.runs().collect::<Vec<_>>()),
            [(0, 20, 1)],
            "{mode:?}"
        );
        // Refusals while it lives: a second harvest, logging changes, reading one slot,
        // and removing a logged slot.
        assert!(matches!(
            vm.harvest_dirty_log(),
            Err(Error::HarvestInProgress)
        ));
        assert!(matches!(
            vm.set_dirty_logging(0, false),
            Err(Error::HarvestInProgress)
        ));
        assert!(matches!(
            vm.get_dirty_log(0, &mut [0u8; 8]),
            Err(Error::HarvestInProgress)
        ));
        assert!(matches!(
            vm.remove_memory_region(1),
            Err(Error::HarvestInProgress)
        ));
        restart(&vcpu, second.into());
        assert_eq!(run(&mut vcpu), VcpuExit::Hlt);
        // And the guest writes page 20 again, after it was collected.
        restart(&vcpu, CODE);
        assert_eq!(run(&mut vcpu), VcpuExit::Hlt);
        h.commit();
        assert_eq!(pages(&harvest(&vm)), [(0, 20, 2)], "{mode:?}");
        assert!(harvest(&vm).is_empty());
        // The refused removal left the slot whole: it goes now.
        vm.remove_memory_region(1).unwrap();
    }
}

/// The smallest ring size this kernel takes, if it has a dirty ring.
fn smallest_ring(kvm: &hypervisor::kvm::Kvm) -> Option<u32> {
    use hypervisor::Hypervisor;
    if !kvm.check_capability(VmCap::DirtyLogRing) {
        return None;
    }
    [1024u32, 2048, 4096].into_iter().find(|&entries| {
        let mem = GuestMemory::new(&[(GuestAddress(0), P)]).unwrap();
        KvmVm::new_with_dirty_log(kvm, mem, DirtyLogMode::Ring { entries })
            .is_ok_and(|vm| vm.dirty_log_mode() == DirtyLogMode::Ring { entries })
    })
}

/// Runs until `hlt`, going on after each report.
fn run_through_reports(vcpu: &mut KvmVcpu) -> hypervisor::Result<VcpuExit> {
    loop {
        match vcpu.run()? {
            VcpuExit::Intr => continue,
            VcpuExit::Io { port, .. } if port == REPORT_PORT as u16 => continue,
            exit => return Ok(exit),
        }
    }
}

#[test]
fn a_full_dirty_ring_is_emptied_inside_run_and_no_page_is_lost() {
    let Some(kvm) = kvm_or_skip("dirty_ring_full") else {
        return;
    };
    let Some(entries) = smallest_ring(&kvm) else {
        println!("KVM-SKIP dirty_ring_full: this kernel has no dirty ring");
        return;
    };
    // 12 times more dirty pages than the ring holds, with an exit every 64 pages, so that
    // KVM gets to stop the vCPU when the ring reaches its soft limit.
    let count = 12 * entries;
    let start = 16 * P as u32;
    let code = Asm::default().touch_pages_reporting(start, count, 64).hlt();
    let ram = 16 * P + count as u64 * P;
    let (vm, mut vcpu) = vm_with_program_in(&kvm, ram, &code.0, DirtyLogMode::Ring { entries });
    vm.set_dirty_logging(0, true).unwrap();
    harvest(&vm);
    assert_eq!(run_through_reports(&mut vcpu).unwrap(), VcpuExit::Hlt);
    assert!(
        vm.dirty_ring_full_exits() >= 10,
        "{} ring-full exits for {count} pages in a ring of {entries}",
        vm.dirty_ring_full_exits()
    );
    assert_eq!(vm.dirty_ring_overruns(), 0);
    assert_eq!(pages(&harvest(&vm)), [(0, 16, count as u64)]);

    // With a harvest alive, a full ring cannot be emptied: run says so, and goes on once
    // the harvest is over, still losing nothing.
    restart(&vcpu, CODE);
    let h = vm.harvest_dirty_log().unwrap();
    let exit = loop {
        match vcpu.run().unwrap() {
            VcpuExit::Intr => continue,
            VcpuExit::Io { port, .. } if port == REPORT_PORT as u16 => continue,
            exit => break exit,
        }
    };
    assert_eq!(exit, VcpuExit::DirtyRingFull);
    h.commit();
    assert_eq!(run_through_reports(&mut vcpu).unwrap(), VcpuExit::Hlt);
    assert_eq!(pages(&harvest(&vm)), [(0, 16, count as u64)]);
}

#[test]
fn an_overrun_ring_loses_no_page_and_a_stuck_one_is_an_error() {
    let Some(kvm) = kvm_or_skip("dirty_ring_overrun") else {
        return;
    };
    let Some(entries) = smallest_ring(&kvm) else {
        println!("KVM-SKIP dirty_ring_overrun: this kernel has no dirty ring");
        return;
    };
    // A tight loop over 4 rings' worth of pages with no exit of its own. A kernel that
    // stops the vCPU at the soft limit gets through; one that emulates the loop in the
    // kernel overruns the ring and then cannot go on. Either way no page may be lost.
    let count = 4 * entries;
    let start = 16 * P as u32;
    let code = Asm::default().touch_pages(start, count).hlt();
    let ram = 16 * P + count as u64 * P;
    let (vm, mut vcpu) = vm_with_program_in(&kvm, ram, &code.0, DirtyLogMode::Ring { entries });
    vm.set_dirty_logging(0, true).unwrap();
    harvest(&vm);
    let outcome = run_through_reports(&mut vcpu);
    let runs = pages(&harvest(&vm));
    match outcome {
        Ok(VcpuExit::Hlt) if vm.dirty_ring_overruns() == 0 => {
            assert_eq!(runs, [(0, 16, count as u64)]);
        }
        Ok(VcpuExit::Hlt) | Err(Error::DirtyRingStuck { id: 0 }) => {
            println!(
                "the ring was overrun ({} times); the harvest took all of RAM",
                vm.dirty_ring_overruns()
            );
            assert!(vm.dirty_ring_overruns() > 0);
            assert_eq!(runs, [(0, 0, ram / P)]);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn ring_entries_of_a_removed_slot_never_land_in_a_new_one() {
    let Some(kvm) = kvm_or_skip("dirty_ring_slot_reuse") else {
        return;
    };
    for mode in MODES {
        let code = Asm::default().store_imm(DYN + 5 * P as u32, 1).hlt();
        let (vm, mut vcpu) = logged_vm(&kvm, mode, &code.0);
        assert_eq!(run(&mut vcpu), VcpuExit::Hlt);
        // The guest dirtied page 5 of slot 1; the slot goes, and number 1 comes back for a
        // new slot elsewhere, logged from scratch.
        vm.remove_memory_region(1).unwrap();
        let slot = vm
            .add_memory_region(
                GuestAddress(0x80_0000),
                Box::new(MemoryMappingBuilder::new(8 * P as usize).build().unwrap()),
                false,
                true,
                MemCacheType::CacheCoherent,
            )
            .unwrap();
        assert_eq!(slot, 1);
        assert_eq!(
            pages(&harvest(&vm)),
            [(1, 0, 8)],
            "{mode:?}: only the baseline"
        );
        assert!(harvest(&vm).is_empty());
    }
}

#[test]
fn hostile_ring_sizes_and_unlogged_slots_are_refused_by_name() {
    let Some(kvm) = kvm_or_skip("dirty_log_refusals") else {
        return;
    };
    let mem = || GuestMemory::new(&[(GuestAddress(0), 16 * P)]).unwrap();
    let ring = {
        use hypervisor::Hypervisor;
        kvm.check_capability(VmCap::DirtyLogRing)
    };
    for entries in [0u32, 1000, 3, 512, u32::MAX, 1 << 31] {
        match KvmVm::new_with_dirty_log(&kvm, mem(), DirtyLogMode::Ring { entries }) {
            Err(Error::DirtyRingSize { entries: e, max }) => {
                assert_eq!(e, entries);
                assert!(!ring || max > 0);
            }
            other => panic!("{entries} entries: {other:?}"),
        }
    }
    // Slots that do not log, or do not exist.
    let vm = KvmVm::new(&kvm, mem()).unwrap();
    assert!(matches!(
        vm.get_dirty_log(0, &mut [0u8; 8]),
        Err(Error::DirtyLogNotEnabled { slot: 0 })
    ));
    assert!(matches!(
        vm.get_dirty_log(7, &mut [0u8; 8]),
        Err(Error::UnknownSlot { slot: 7 })
    ));
    assert!(matches!(
        vm.set_dirty_logging(7, true),
        Err(Error::UnknownSlot { slot: 7 })
    ));
    // Nothing logged: the harvest is empty, and its bitmaps are absent.
    let h = vm.harvest_dirty_log().unwrap();
    assert_eq!(h.pages(), 0);
    assert!(h.slot_runs(0).is_none());
    drop(h);
    // Turning logging off drops the slot's pages; on again starts a new baseline.
    vm.set_dirty_logging(0, true).unwrap();
    vm.set_dirty_logging(0, true).unwrap(); // twice is once
                                            // A harvest's view of a slot is its runs; dropped uncommitted, the pages all stay.
    let h = vm.harvest_dirty_log().unwrap();
    let pages = h.pages();
    assert_eq!(
        h.slot_runs(0).unwrap().collect::<Vec<_>>(),
        [(0, pages as usize)]
    );
    drop(h);
    assert_eq!(vm.harvest_dirty_log().unwrap().pages(), pages);
    vm.set_dirty_logging(0, false).unwrap();
    assert_eq!(vm.harvest_dirty_log().unwrap().pages(), 0);
    vm.set_dirty_logging(0, true).unwrap();
    assert_eq!(vm.harvest_dirty_log().unwrap().pages(), 16);
}

#[test]
fn slot_memory_is_read_and_written_in_range_only() {
    let Some(kvm) = kvm_or_skip("with_slot_memory") else {
        return;
    };
    let (vm, _vcpu) = vm_with_program(&kvm, 16 * P, &Asm::default().hlt().0);
    let slot = vm
        .add_memory_region(
            GuestAddress(0x10_0000),
            Box::new(MemoryMappingBuilder::new(4 * P as usize).build().unwrap()),
            false,
            false,
            MemCacheType::CacheCoherent,
        )
        .unwrap();
    vm.with_slot_memory(slot, P as usize, 8, &mut |s| {
        s.write_obj(0x1122_3344_5566_7788u64, 0)
            .map_err(std::io::Error::other)
    })
    .unwrap();
    let mut seen = 0u64;
    vm.with_slot_memory(slot, P as usize, 8, &mut |s| {
        seen = s.read_obj(0).map_err(std::io::Error::other)?;
        Ok(())
    })
    .unwrap();
    assert_eq!(seen, 0x1122_3344_5566_7788);
    for (offset, size) in [
        (4 * P as usize, 1),
        (0, 4 * P as usize + 1),
        (usize::MAX, 2),
    ] {
        let err = vm
            .with_slot_memory(slot, offset, size, &mut |_| Ok(()))
            .unwrap_err();
        assert!(
            matches!(err, Error::SlotRange { offset: o, size: s, .. } if o == offset && s == size),
            "{err}"
        );
    }
    assert!(matches!(
        vm.with_slot_memory(9, 0, 1, &mut |_| Ok(())),
        Err(Error::UnknownSlot { slot: 9 })
    ));
    let err = vm
        .with_slot_memory(0, 0, 1, &mut |_| {
            Err(std::io::Error::from_raw_os_error(libc::EIO))
        })
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::SlotMemoryAccess {
                slot: 0,
                offset: 0,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(err.errno(), libc::EIO);
    let slots = vm.memory_slots();
    assert_eq!(slots.len(), 2);
    assert!(slots[0].boot_ram && !slots[1].boot_ram);
    assert_eq!(slots[1].size, 4 * P);
}

#[test]
fn manual_protect_re_arms_every_chunk_of_a_slot_past_a_gib() {
    let Some(kvm) = kvm_or_skip("dirty_log_chunks") else {
        return;
    };
    // 1 GiB and 8 pages: two CLEAR chunks. Pages in the first, at its very end, and in the
    // second must each be reported again after they are written again.
    let base = 1u64 << 30;
    let pages = [0u64, 262_143, 262_147];
    let mut code = Asm::default();
    for &p in &pages {
        code = code.store_imm((base + p * P) as u32, p as u32 + 1);
    }
    let code = code.hlt();
    let mem = GuestMemory::new(&[
        (GuestAddress(0), 16 * P),
        (GuestAddress(base), (1 << 30) + 8 * P),
    ])
    .unwrap();
    mem.write_all_at_addr(&code.0, GuestAddress(CODE)).unwrap();
    let vm = KvmVm::new_with_dirty_log(&kvm, mem, DirtyLogMode::ManualProtect).unwrap();
    if vm.dirty_log_mode() != DirtyLogMode::ManualProtect {
        println!("KVM-SKIP dirty_log_chunks: no manual protection here");
        return;
    }
    vm.set_dirty_logging(1, true).unwrap();
    harvest(&vm);
    let mut vcpu = vm.create_vcpu(0).unwrap();
    for round in 0..3 {
        vcpu.set_flat_protected_mode(CODE as u32).unwrap();
        assert_eq!(run(&mut vcpu), VcpuExit::Hlt);
        let got: Vec<u64> = harvest(&vm).iter().map(|r| r.offset / P).collect();
        assert_eq!(got, pages, "round {round}");
    }
}
