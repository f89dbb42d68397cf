// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Slot numbers: the lowest free number is reused, the kernel's limit is honoured, and a
//! long msync on one slot never holds up changes to the others.

mod common;

use std::sync::mpsc;
use std::time::Duration;

use base::{ExternalMapping, MappedRegion, MemoryMappingBuilder};
use common::*;
use hypervisor::{Error, MemCacheType, VcpuExit, Vm};
use vm_memory::GuestAddress;

#[test]
fn the_lowest_free_number_is_reused_and_the_limit_is_honoured() {
    let Some(kvm) = kvm_or_skip("slot_limit") else {
        return;
    };
    // Slot 2 will be filled from the guest's side, to prove a reused number really works.
    const REUSED_AT: u32 = 0x8000_0000;
    let code = Asm::default().load_eax(REUSED_AT).report_eax().hlt();
    let (vm, mut vcpu) = vm_with_program(&kvm, 16 * P, &code.0);
    // Every slot shares one page of host memory; only the guest addresses differ.
    let page = MemoryMappingBuilder::new(P as usize).build().unwrap();
    page.write_obj(0x2222_2222u32, 0).unwrap();
    let one_page = || -> Box<dyn MappedRegion> {
        // SAFETY: `page` outlives the VM in this test and is never remapped.
        Box::new(unsafe { ExternalMapping::new(page.as_ptr(), P as usize) }.unwrap())
    };
    let add = |i: u64| {
        vm.add_memory_region(
            GuestAddress(0x1_0000_0000 + i * P),
            one_page(),
            false,
            false,
            MemCacheType::CacheCoherent,
        )
    };
    assert_eq!(add(0).unwrap(), 1);
    assert_eq!(add(1).unwrap(), 2);
    assert_eq!(add(2).unwrap(), 3);
    vm.remove_memory_region(2).unwrap();
    vm.remove_memory_region(1).unwrap();
    assert_eq!(add(3).unwrap(), 1, "lowest free first");
    let reused = vm
        .add_memory_region(
            GuestAddress(REUSED_AT as u64),
            one_page(),
            false,
            false,
            MemCacheType::CacheCoherent,
        )
        .unwrap();
    assert_eq!(reused, 2);
    assert_eq!(run_to_report(&mut vcpu), 0x2222_2222);
    assert_eq!(run(&mut vcpu), VcpuExit::Hlt);

    // Fill every number the kernel allows.
    let limit = vm.max_memory_slots();
    assert!(limit > 4, "KVM reports {limit} slots");
    let mut next = 4u64;
    let mut live = 4u32; // boot RAM, 1, 2 and 3
    while live < limit {
        add(next).unwrap();
        next += 1;
        live += 1;
    }
    let err = add(next).unwrap_err();
    assert!(
        matches!(err, Error::SlotLimit { limit: l } if l == limit),
        "{err}"
    );
    assert_eq!(err.errno(), libc::ENOSPC);
    // Removing one makes room again, under the same number.
    vm.remove_memory_region(1000).unwrap();
    assert_eq!(add(next).unwrap(), 1000);
    assert!(add(next + 1).is_err());
}

/// A region whose range walk (the part of msync that syscalls) waits for a signal, so a
/// test can hold an msync in progress for as long as it needs.
struct StallingRegion {
    inner: base::MemoryMapping,
    entered: mpsc::SyncSender<()>,
    release: std::sync::Mutex<mpsc::Receiver<()>>,
}

// SAFETY: delegates to a MemoryMapping, which owns and maps its whole range.
unsafe impl MappedRegion for StallingRegion {
    fn as_ptr(&self) -> *mut u8 {
        self.inner.as_ptr()
    }

    fn size(&self) -> usize {
        self.inner.size()
    }

    fn for_each_mapped_range(
        &self,
        offset: usize,
        len: usize,
        f: &mut dyn FnMut(usize, usize, base::Protection) -> base::mmap::Result<()>,
    ) -> base::mmap::Result<()> {
        self.entered.send(()).unwrap();
        self.release.lock().unwrap().recv().unwrap();
        self.inner.for_each_mapped_range(offset, len, f)
    }
}

#[test]
fn a_stalled_msync_does_not_hold_up_other_slots() {
    let Some(kvm) = kvm_or_skip("msync_concurrency") else {
        return;
    };
    let (vm, _vcpu) = vm_with_program(&kvm, 16 * P, &Asm::default().hlt().0);
    let (entered_tx, entered_rx) = mpsc::sync_channel(1);
    let (release_tx, release_rx) = mpsc::channel();
    let stalling = StallingRegion {
        inner: MemoryMappingBuilder::new(P as usize).build().unwrap(),
        entered: entered_tx,
        release: std::sync::Mutex::new(release_rx),
    };
    let slot = vm
        .add_memory_region(
            GuestAddress(0x10_0000),
            Box::new(stalling),
            false,
            false,
            MemCacheType::CacheCoherent,
        )
        .unwrap();
    std::thread::scope(|scope| {
        let vm = &vm;
        let msync = scope.spawn(move || vm.msync_memory_region(slot, 0, P as usize));
        entered_rx.recv().unwrap();
        // The msync is now in progress and stays so until released. Other slots must still
        // come and go; if the table lock were held, this thread would wait forever.
        let (done_tx, done_rx) = mpsc::channel();
        scope.spawn(move || {
            for i in 0..32 {
                let mem = Box::new(MemoryMappingBuilder::new(P as usize).build().unwrap());
                let n = vm
                    .add_memory_region(
                        GuestAddress(0x20_0000 + i * P),
                        mem,
                        false,
                        true,
                        MemCacheType::CacheCoherent,
                    )
                    .unwrap();
                vm.get_dirty_log(n, &mut [0u8; 8]).unwrap();
                vm.remove_memory_region(n).unwrap();
            }
            done_tx.send(()).unwrap();
        });
        // A deadlock detector, not a performance bound: the work above takes milliseconds.
        let outcome = done_rx.recv_timeout(Duration::from_secs(60));
        release_tx.send(()).unwrap();
        assert!(
            outcome.is_ok(),
            "adding and removing slots waited for another slot's msync"
        );
        msync.join().unwrap().unwrap();
    });
    // The stalled region can still be removed once its msync is done.
    let back = vm.remove_memory_region(slot).unwrap();
    assert_eq!(back.size(), P as usize);
}

#[test]
fn reserved_ranges_are_refused_to_slots_and_guest_accesses_exit() {
    let Some(kvm) = kvm_or_skip("reserved_ranges") else {
        return;
    };
    // The guest reads the reserved window: with no slot there it must be an MMIO exit.
    const WINDOW: u32 = 0xd000_0000;
    let code = Asm::default().load_eax(WINDOW).report_eax().hlt();
    let (vm, mut vcpu) = vm_with_program(&kvm, 16 * P, &code.0);
    // Boot RAM is a slot: a reservation over it is refused.
    let err = vm.reserve_guest_range(GuestAddress(0), P).unwrap_err();
    assert!(matches!(err, Error::SlotOverlap { slot: 0, .. }), "{err}");
    vm.reserve_guest_range(GuestAddress(WINDOW as u64), 0x1000)
        .unwrap();
    let page = MemoryMappingBuilder::new(2 * P as usize).build().unwrap();
    let region = || -> Box<dyn MappedRegion> {
        // SAFETY: `page` outlives the VM in this test and is never remapped.
        Box::new(unsafe { ExternalMapping::new(page.as_ptr(), 2 * P as usize) }.unwrap())
    };
    for at in [WINDOW as u64, WINDOW as u64 - P] {
        let err = vm
            .add_memory_region(
                GuestAddress(at),
                region(),
                false,
                false,
                MemCacheType::CacheCoherent,
            )
            .unwrap_err();
        assert!(
            matches!(err, Error::ReservedRange { reserved_addr, reserved_size: 0x1000, .. } if reserved_addr.0 == WINDOW as u64),
            "{err}"
        );
        assert_eq!(err.errno(), libc::EEXIST);
    }
    match run(&mut vcpu) {
        VcpuExit::Mmio {
            address,
            data: None,
            ..
        } => assert_eq!(address, WINDOW as u64),
        other => panic!("expected an MMIO read of the window, got {other:?}"),
    }
    // Once released, memory can go there.
    vm.release_guest_range(GuestAddress(WINDOW as u64), 0x1000)
        .unwrap();
    let err = vm
        .release_guest_range(GuestAddress(WINDOW as u64), 0x1000)
        .unwrap_err();
    assert!(matches!(err, Error::ReservationUnknown { .. }), "{err}");
    vm.add_memory_region(
        GuestAddress(WINDOW as u64),
        region(),
        false,
        false,
        MemCacheType::CacheCoherent,
    )
    .unwrap();
}
