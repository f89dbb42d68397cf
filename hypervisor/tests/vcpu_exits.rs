// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! What a vCPU loop needs: a read the VMM did not answer is an error naming it, string I/O
//! is seen whole, and another thread can stop a running vCPU.

mod common;

use std::time::{Duration, Instant};

use common::*;
use hypervisor::{Error, Vcpu, VcpuExit};
use vm_memory::GuestAddress;

#[test]
fn an_unanswered_read_is_an_error_naming_it() {
    let Some(kvm) = kvm_or_skip("unanswered_read") else {
        return;
    };
    // Read an address no slot backs (an MMIO read), report it, then `in` from a port.
    let mut code = Asm::default().load_eax(0xd000_0010).report_eax().0;
    code.extend([0xe5, 0x30]); // in eax, 0x30
    let code = Asm(code).report_eax().hlt();
    let (_vm, mut vcpu) = vm_with_program(&kvm, 16 * P, &code.0);
    assert!(matches!(
        run(&mut vcpu),
        VcpuExit::Mmio {
            address: 0xd000_0010,
            size: 4,
            data: None
        }
    ));
    // Running on without answering would hand the guest stale bytes: refused, named.
    let err = vcpu.run().unwrap_err();
    assert!(
        matches!(
            err,
            Error::UnansweredRead {
                what: "MMIO",
                address: 0xd000_0010
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("0xd0000010"), "{err}");
    // Answered, the guest sees exactly those bytes.
    vcpu.set_data(&0x1234_5678u32.to_le_bytes()).unwrap();
    assert_eq!(run_to_report(&mut vcpu), 0x1234_5678);
    assert!(matches!(
        run(&mut vcpu),
        VcpuExit::Io {
            port: 0x30,
            data: None,
            ..
        }
    ));
    let err = vcpu.run().unwrap_err();
    assert!(
        matches!(
            err,
            Error::UnansweredRead {
                what: "port",
                address: 0x30
            }
        ),
        "{err}"
    );
    let err = vcpu.set_data(&[1, 2]).unwrap_err();
    assert!(
        matches!(
            err,
            Error::WrongDataSize {
                expected: 4,
                got: 2
            }
        ),
        "{err}"
    );
    vcpu.set_data(&0xcafe_f00du32.to_le_bytes()).unwrap();
    assert_eq!(run_to_report(&mut vcpu), 0xcafe_f00d);
    assert_eq!(run(&mut vcpu), VcpuExit::Hlt);
}

#[test]
fn string_io_is_seen_whole() {
    let Some(kvm) = kvm_or_skip("string_io") else {
        return;
    };
    const SRC: u32 = 0x3000;
    const DST: u32 = 0x4000;
    let mut code = vec![0xbe]; // mov esi, SRC
    code.extend(SRC.to_le_bytes());
    code.extend([0xb9, 16, 0, 0, 0]); // mov ecx, 16
    code.extend([0x66, 0xba, 0x20, 0x00]); // mov dx, 0x20
    code.extend([0xf3, 0x6e]); // rep outsb
    code.push(0xbf); // mov edi, DST
    code.extend(DST.to_le_bytes());
    code.extend([0xb9, 8, 0, 0, 0]); // mov ecx, 8
    code.extend([0xf3, 0x6c]); // rep insb
    code.push(0xf4); // hlt
    let (vm, mut vcpu) = vm_with_program(&kvm, 16 * P, &code);
    let message: Vec<u8> = (0..16).map(|i| 0xa0 + i).collect();
    let mem = hypervisor::Vm::get_memory(&vm);
    mem.write_all_at_addr(&message, GuestAddress(SRC.into()))
        .unwrap();
    // The guest's string write may come in several exits; together they are the message.
    let mut seen = Vec::new();
    while seen.len() < 16 {
        match run(&mut vcpu) {
            VcpuExit::Io {
                port: 0x20,
                size: 1,
                count,
                data: Some(first),
            } => {
                let all = vcpu.io_data().expect("a port write has data").to_vec();
                assert_eq!(all.len(), count as usize);
                assert_eq!(all[0], first[0]);
                seen.extend(all);
            }
            other => panic!("expected string output on 0x20, got {other:?}"),
        }
    }
    assert_eq!(seen, message);
    // The string read: every element the guest asked for, supplied at once.
    let mut filled = 0;
    while filled < 8 {
        match run(&mut vcpu) {
            VcpuExit::Io {
                port: 0x20,
                size: 1,
                count,
                data: None,
            } => {
                assert!(vcpu.io_data().is_none());
                let bytes: Vec<u8> = (0..count).map(|i| 0x50 + filled + i as u8).collect();
                vcpu.set_data(&bytes).unwrap();
                filled += count as u8;
            }
            other => panic!("expected string input on 0x20, got {other:?}"),
        }
    }
    assert_eq!(run(&mut vcpu), VcpuExit::Hlt);
    let mut got = [0u8; 8];
    mem.read_exact_at_addr(&mut got, GuestAddress(DST.into()))
        .unwrap();
    assert_eq!(got, [0x50, 0x51, 0x52, 0x53, 0x54, 0x55, 0x56, 0x57]);
}

#[test]
fn another_thread_can_stop_a_running_vcpu() {
    let Some(kvm) = kvm_or_skip("kick") else {
        return;
    };
    let (_vm, mut vcpu) = vm_with_program(&kvm, 16 * P, &[0xeb, 0xfe]); // jmp $
    let kicker = vcpu.kicker();
    // A kick before the run: the run returns without waiting for anything.
    kicker.kick();
    assert_eq!(vcpu.run().unwrap(), VcpuExit::Intr);
    // A kick while the guest spins forever stops it; the next run goes on spinning.
    for _ in 0..3 {
        let k = kicker.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            k.kick();
        });
        let start = Instant::now();
        assert_eq!(vcpu.run().unwrap(), VcpuExit::Intr);
        assert!(
            start.elapsed() >= Duration::from_millis(40),
            "returned before the kick"
        );
        t.join().unwrap();
    }
    let regs = vcpu.get_regs().unwrap();
    assert_eq!(regs.rip, CODE, "the guest was still in its loop");
    // A kicker outlives its vCPU harmlessly.
    drop(vcpu);
    kicker.kick();
}

#[test]
fn no_kick_is_lost_however_it_races_the_exits() {
    let Some(kvm) = kvm_or_skip("kick_race") else {
        return;
    };
    // A guest that exits all the time (an MMIO write in a loop), so kicks land at every
    // point of the vCPU thread's run loop, between KVM_RUN returning and the next one too.
    // mov [0xd0000000], eax; jmp back
    let (_vm, mut vcpu) =
        vm_with_program(&kvm, 16 * P, &[0xa3, 0x00, 0x00, 0x00, 0xd0, 0xeb, 0xf9]);
    let kicker = vcpu.kicker();
    let intrs = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = intrs.clone();
    let seconds = std::env::var("KICK_RACE_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let kicks = std::thread::spawn(move || {
        let load = || seen.load(std::sync::atomic::Ordering::SeqCst);
        let (mut kicks, mut lost) = (0u64, 0u64);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(seconds) {
            let before = load();
            kicker.kick();
            kicks += 1;
            // Each kick must make an Intr exit soon; one that does not is lost (and only
            // another kick brings the vCPU out, which the loop below provides).
            let waiting = Instant::now();
            while load() == before {
                if waiting.elapsed() > Duration::from_millis(300) {
                    lost += 1;
                    while load() == before {
                        kicker.kick();
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
                std::hint::spin_loop();
            }
            // Let the guest run a varying while, so the next kick lands at another point of
            // its exits.
            let pause = Instant::now();
            while pause.elapsed() < Duration::from_micros(kicks % 40) {
                std::hint::spin_loop();
            }
        }
        (kicks, lost)
    });
    let mut writes = 0u64;
    while !kicks.is_finished() {
        match vcpu.run().unwrap() {
            VcpuExit::Intr => {
                intrs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            VcpuExit::Mmio {
                address: 0xd000_0000,
                data: Some(_),
                ..
            } => writes += 1,
            other => panic!("unexpected exit {other:?}"),
        }
    }
    let (kicks, lost) = kicks.join().unwrap();
    println!("{kicks} kicks among {writes} MMIO exits, {lost} lost");
    assert!(
        kicks > 100 && writes > 100,
        "{kicks} kicks, {writes} writes"
    );
    assert_eq!(lost, 0, "{lost} of {kicks} kicks made no Intr exit");
}
