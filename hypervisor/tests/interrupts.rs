// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Interrupts through the in-kernel irqchip, proven from the guest's side: a guest with its
//! own GDT and IDT programs its local APIC and an IOAPIC pin, enables interrupts and halts;
//! only an irqfd write (or the IRQ line) wakes it, and its handler counts what it received.

mod common;

use std::os::fd::AsRawFd;
use std::time::Duration;

use common::*;
use hypervisor::kvm::{KvmVcpu, KvmVm, IRQCHIP_GSIS};
use hypervisor::{Error, Vcpu, VcpuExit, Vm};
use iced_x86::code_asm::*;
use iced_x86::BlockEncoderOptions;
use vm_memory::{GuestAddress, GuestMemory};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const GDT: u64 = 0x500;
const IDT: u64 = 0x800;
const COUNT: u64 = 0x4000;
const STACK: u64 = 0x8000;
const VECTOR: u64 = 0x30;
const LAPIC: u32 = 0xfee0_0000;
const IOAPIC: u32 = 0xfec0_0000;
/// What the guest reports once its interrupt controllers are set up.
const READY: u32 = 0x5eed;

/// The guest: LAPIC on, IOAPIC pin `gsi` to `VECTOR` (edge, or level), then `sti; hlt`
/// until an interrupt. The handler counts it, acknowledges it (EOI), and continues with a
/// report of the count and the next wait. It does not return with `iretd`: KVM's instruction
/// emulator handles IRET in real mode only, and the nested KVM of these machines emulates the
/// instruction after an EOI write. Returns the code (at `CODE`) and where the handler is.
fn program(gsi: u32, level: bool) -> (Vec<u8>, u64) {
    let mut a = CodeAssembler::new(32).unwrap();
    a.mov(dword_ptr(LAPIC + 0xf0), 0x1ffu32).unwrap(); // spurious vector 0xff, APIC on
    a.mov(dword_ptr(IOAPIC), 0x11 + 2 * gsi).unwrap(); // redirection entry, high half
    a.mov(dword_ptr(IOAPIC + 0x10), 0u32).unwrap(); // destination APIC 0
    a.mov(dword_ptr(IOAPIC), 0x10 + 2 * gsi).unwrap(); // low half: unmasked last
    let trigger = if level { 1 << 15 } else { 0 };
    a.mov(dword_ptr(IOAPIC + 0x10), VECTOR as u32 | trigger)
        .unwrap();
    a.mov(eax, READY).unwrap();
    a.out(u32::from(REPORT_PORT), eax).unwrap();
    let mut wait = a.create_label();
    a.set_label(&mut wait).unwrap();
    a.sti().unwrap();
    a.hlt().unwrap();
    a.jmp(wait).unwrap(); // a wake without an interrupt waits again

    let mut handler = a.create_label();
    a.set_label(&mut handler).unwrap();
    a.inc(dword_ptr(COUNT)).unwrap();
    a.mov(dword_ptr(LAPIC + 0xb0), 0u32).unwrap(); // EOI
    a.mov(esp, STACK as u32).unwrap(); // drop the interrupt frame
    a.mov(eax, dword_ptr(COUNT)).unwrap();
    a.out(u32::from(REPORT_PORT), eax).unwrap();
    a.jmp(wait).unwrap();
    let result = a
        .assemble_options(CODE, BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS)
        .unwrap();
    let handler_ip = result.label_ip(&handler).unwrap();
    (result.inner.code_buffer, handler_ip)
}

/// A VM with the irqchip and vCPU 0 ready to run [`program`], with the guest's GDT (flat code
/// 0x08, data 0x10, as `set_flat_protected_mode` loads) and an IDT whose only gate is
/// `VECTOR`.
fn irq_vm(gsi: u32, level: bool) -> Option<(KvmVm, KvmVcpu)> {
    let kvm = kvm_or_skip("interrupts")?;
    let mem = GuestMemory::new(&[(GuestAddress(0), 16 * P)]).unwrap();
    let (code, handler) = program(gsi, level);
    mem.write_all_at_addr(&code, GuestAddress(CODE)).unwrap();
    let gdt: [u64; 3] = [0, 0x00cf_9a00_0000_ffff, 0x00cf_9200_0000_ffff];
    for (i, d) in gdt.iter().enumerate() {
        mem.write_obj_at_addr(*d, GuestAddress(GDT + 8 * i as u64))
            .unwrap();
    }
    // A 32-bit interrupt gate: present, ring 0, code selector 0x08.
    let gate =
        (0x08u64 << 16) | (handler & 0xffff) | ((handler & 0xffff_0000) << 32) | (0x8e00 << 32);
    mem.write_obj_at_addr(gate, GuestAddress(IDT + 8 * VECTOR))
        .unwrap();
    let vm = KvmVm::new(&kvm, mem).unwrap();
    vm.create_irq_chip().unwrap();
    let vcpu = vm.create_vcpu(0).unwrap();
    vcpu.set_flat_protected_mode(CODE as u32).unwrap();
    let mut sregs = vcpu.get_sregs().unwrap();
    sregs.gdt.base = GDT;
    sregs.gdt.limit = 3 * 8 - 1;
    sregs.idt.base = IDT;
    sregs.idt.limit = 256 * 8 - 1;
    vcpu.set_sregs(&sregs).unwrap();
    let mut regs = vcpu.get_regs().unwrap();
    regs.rsp = STACK;
    vcpu.set_regs(&regs).unwrap();
    Some((vm, vcpu))
}

/// Runs until the guest reports, or `None` if it was still halted when a kick came after
/// `patience` (it had no interrupt to wake it). A report before then cancels the kick, which
/// would otherwise end the next run at once.
fn run_or_wait(vcpu: &mut KvmVcpu, patience: Duration) -> Option<u32> {
    let kicker = vcpu.kicker();
    let (done, wait) = std::sync::mpsc::channel::<()>();
    let timer = std::thread::spawn(move || {
        if wait.recv_timeout(patience).is_err() {
            kicker.kick();
        }
    });
    let result = match vcpu.run().unwrap() {
        VcpuExit::Intr => None,
        VcpuExit::Io {
            port,
            size: 4,
            count: 1,
            data: Some(data),
        } if port == u16::from(REPORT_PORT) => Some(u32::from_le_bytes(data)),
        other => panic!(
            "unexpected exit {other:?} at {:#x}",
            vcpu.get_regs().unwrap().rip
        ),
    };
    let _ = done.send(());
    timer.join().unwrap();
    result
}

const WAIT: Duration = Duration::from_millis(200);

#[test]
fn an_irqfd_wakes_a_halted_guest_and_nothing_else_does() {
    let gsi = 20;
    let Some((vm, mut vcpu)) = irq_vm(gsi, false) else {
        return;
    };
    let evt = EventFd::new(EFD_NONBLOCK).unwrap();
    vm.register_irqfd(gsi, &evt, None).unwrap();
    assert_eq!(run_or_wait(&mut vcpu, WAIT), Some(READY));
    // Halted with interrupts on and nothing pending: it stays halted (the negative control).
    assert_eq!(run_or_wait(&mut vcpu, WAIT), None);
    assert_eq!(
        vm.get_memory()
            .read_obj_from_addr::<u32>(GuestAddress(COUNT))
            .unwrap(),
        0
    );
    // One eventfd write: one interrupt, taken by the guest's handler.
    evt.write(1).unwrap();
    assert_eq!(run_or_wait(&mut vcpu, WAIT), Some(1));
    assert_eq!(
        run_or_wait(&mut vcpu, WAIT),
        None,
        "one write, one interrupt"
    );
    evt.write(1).unwrap();
    assert_eq!(run_or_wait(&mut vcpu, WAIT), Some(2));

    // Unregistered, the eventfd reaches nothing.
    vm.unregister_irqfd(gsi, &evt).unwrap();
    evt.write(1).unwrap();
    assert_eq!(run_or_wait(&mut vcpu, WAIT), None);
    // The IRQ line, pulsed, is an edge on the same pin.
    vm.set_irq_line(gsi, true).unwrap();
    vm.set_irq_line(gsi, false).unwrap();
    assert_eq!(run_or_wait(&mut vcpu, WAIT), Some(3));
    // Another pin, which the guest left masked, delivers nothing.
    vm.set_irq_line(gsi + 1, true).unwrap();
    vm.set_irq_line(gsi + 1, false).unwrap();
    assert_eq!(run_or_wait(&mut vcpu, WAIT), None);
}

#[test]
fn a_level_irqfd_is_resampled_when_the_guest_acknowledges_it() {
    let gsi = 17;
    let Some((vm, mut vcpu)) = irq_vm(gsi, true) else {
        return;
    };
    let evt = EventFd::new(EFD_NONBLOCK).unwrap();
    let resample = EventFd::new(EFD_NONBLOCK).unwrap();
    vm.register_irqfd(gsi, &evt, Some(&resample)).unwrap();
    assert_eq!(run_or_wait(&mut vcpu, WAIT), Some(READY));
    // Nothing asserted yet, so nothing to resample.
    assert_eq!(
        resample.read().unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock
    );
    evt.write(1).unwrap();
    assert_eq!(run_or_wait(&mut vcpu, WAIT), Some(1));
    // The guest's EOI lowered the line and told the device, which may assert it again.
    assert_eq!(resample.read().unwrap(), 1);
    assert_eq!(run_or_wait(&mut vcpu, WAIT), None, "the line is low again");
    evt.write(1).unwrap();
    assert_eq!(run_or_wait(&mut vcpu, WAIT), Some(2));
    assert_eq!(resample.read().unwrap(), 1);
}

#[test]
fn interrupt_calls_are_refused_with_their_reasons() {
    let Some(kvm) = kvm_or_skip("interrupt_refusals") else {
        return;
    };
    let mem = || GuestMemory::new(&[(GuestAddress(0), 16 * P)]).unwrap();
    let evt = EventFd::new(EFD_NONBLOCK).unwrap();

    // No irqchip: nothing to deliver through.
    let vm = KvmVm::new(&kvm, mem()).unwrap();
    assert!(!vm.has_irq_chip());
    let err = vm.register_irqfd(5, &evt, None).unwrap_err();
    assert!(
        matches!(
            err,
            Error::NoIrqChip {
                op: "register_irqfd"
            }
        ),
        "{err}"
    );
    let err = vm.set_irq_line(5, true).unwrap_err();
    assert!(
        matches!(err, Error::NoIrqChip { op: "set_irq_line" }),
        "{err}"
    );
    let err = vm.unregister_irqfd(5, &evt).unwrap_err();
    assert!(
        matches!(
            err,
            Error::NoIrqChip {
                op: "unregister_irqfd"
            }
        ),
        "{err}"
    );
    // After a vCPU it is too late (KVM would give the vCPU no local APIC).
    let _vcpu = vm.create_vcpu(0).unwrap();
    let err = vm.create_irq_chip().unwrap_err();
    assert!(
        matches!(err, Error::IrqChipAfterVcpus { vcpus: 1 }),
        "{err}"
    );
    assert!(err.to_string().contains('1'), "{err}");

    let vm = KvmVm::new(&kvm, mem()).unwrap();
    vm.create_irq_chip().unwrap();
    assert!(vm.has_irq_chip());
    let err = vm.create_irq_chip().unwrap_err();
    assert!(matches!(err, Error::IrqChipExists), "{err}");

    // GSIs past the routed ones, up to the largest.
    for gsi in [IRQCHIP_GSIS, IRQCHIP_GSIS + 1, 0x8000_0000, u32::MAX] {
        let err = vm.register_irqfd(gsi, &evt, None).unwrap_err();
        assert!(
            matches!(err, Error::GsiOutOfRange { gsi: g, limit: IRQCHIP_GSIS } if g == gsi),
            "{err}"
        );
        assert!(err.to_string().contains(&gsi.to_string()), "{err}");
        let err = vm.set_irq_line(gsi, true).unwrap_err();
        assert!(matches!(err, Error::GsiOutOfRange { .. }), "{err}");
        let err = vm.unregister_irqfd(gsi, &evt).unwrap_err();
        assert!(matches!(err, Error::GsiOutOfRange { .. }), "{err}");
    }

    // One GSI per eventfd, whichever descriptor names it.
    vm.register_irqfd(0, &evt, None).unwrap();
    let err = vm.register_irqfd(0, &evt, None).unwrap_err();
    assert!(matches!(err, Error::IrqfdInUse { gsi: 0 }), "{err}");
    let err = vm.register_irqfd(7, &evt, None).unwrap_err();
    assert!(matches!(err, Error::IrqfdInUse { gsi: 7 }), "{err}");
    let dup = evt.try_clone().unwrap();
    let err = vm.register_irqfd(3, &dup, None).unwrap_err();
    assert!(matches!(err, Error::IrqfdInUse { gsi: 3 }), "{err}");

    // Unregistering what is not there: another eventfd, or the right one on the wrong GSI.
    let other = EventFd::new(EFD_NONBLOCK).unwrap();
    let err = vm.unregister_irqfd(0, &other).unwrap_err();
    assert!(matches!(err, Error::IrqfdUnknown { gsi: 0 }), "{err}");
    let err = vm.unregister_irqfd(1, &evt).unwrap_err();
    assert!(matches!(err, Error::IrqfdUnknown { gsi: 1 }), "{err}");
    // The duplicate names the same eventfd, so it unregisters it; after that it is gone.
    vm.unregister_irqfd(0, &dup).unwrap();
    let err = vm.unregister_irqfd(0, &evt).unwrap_err();
    assert!(matches!(err, Error::IrqfdUnknown { gsi: 0 }), "{err}");
    // And it can be registered again, on any routed GSI.
    vm.register_irqfd(IRQCHIP_GSIS - 1, &evt, None).unwrap();
    vm.unregister_irqfd(IRQCHIP_GSIS - 1, &evt).unwrap();
}

#[test]
fn a_reused_descriptor_number_does_not_name_the_registered_eventfd() {
    let Some(kvm) = kvm_or_skip("irqfd_number_reuse") else {
        return;
    };
    let vm = KvmVm::new(
        &kvm,
        GuestMemory::new(&[(GuestAddress(0), 16 * P)]).unwrap(),
    )
    .unwrap();
    vm.create_irq_chip().unwrap();
    // A device registers an eventfd and keeps a clone (another number) for itself; the
    // number it registered is closed, and the next eventfd made gets that number.
    let first = EventFd::new(EFD_NONBLOCK).unwrap();
    let kept = first.try_clone().unwrap();
    vm.register_irqfd(16, &first, None).unwrap();
    let number = first.as_raw_fd();
    drop(first);
    // (Other tests open descriptors too: make eventfds until one gets the number.)
    let mut made = Vec::new();
    let stranger = loop {
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        if evt.as_raw_fd() == number {
            break evt;
        }
        assert!(made.len() < 4096, "descriptor {number} was never reused");
        made.push(evt);
    };
    // The stranger is not what was registered, whatever its number.
    let err = vm.unregister_irqfd(16, &stranger).unwrap_err();
    assert!(matches!(err, Error::IrqfdUnknown { gsi: 16 }), "{err}");
    vm.register_irqfd(17, &stranger, None).unwrap();
    vm.unregister_irqfd(17, &stranger).unwrap();
    // The registered eventfd, through the clone, unregisters, and KVM let go of it: it can
    // be registered again.
    vm.unregister_irqfd(16, &kept).unwrap();
    vm.register_irqfd(16, &kept, None).unwrap();
    vm.unregister_irqfd(16, &kept).unwrap();
}
