// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Driving a vCPU until it halts or says it is done: device exits go to the MMIO bus, port
//! writes to the caller,
//! and a deadline that a watchdog thread enforces by kicking the vCPU, so a guest that spins
//! can never hang the VMM.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use devices::bus::MmioBus;
use hypervisor::kvm::KvmVcpu;
use hypervisor::{Vcpu, VcpuExit};

/// How the guest ended, or why it was stopped.
#[derive(Debug, PartialEq, Eq)]
pub enum Stopped {
    /// It executed `hlt`; `exits` exits were handled on the way.
    Halted {
        /// How many exits the loop handled.
        exits: usize,
        /// How long the device took with the last write to the timed address, if any.
        timed: Option<Duration>,
    },
    /// It wrote to a port that `on_port` said ends the run (with an in-kernel irqchip `hlt`
    /// sleeps in the kernel instead of exiting, so a guest says it is done this way).
    Done {
        /// The port.
        port: u16,
        /// How many exits the loop handled.
        exits: usize,
        /// As for `Halted`.
        timed: Option<Duration>,
    },
}

/// Runs `vcpu` until it halts, `on_port` answers `true` for a port write, or `deadline`
/// passes. MMIO exits go to `bus`; a write to an
/// address no device claims is handed to `on_unclaimed_write`, which answers whether it was
/// expected (a write to a read-only slot, say); a read no device claims, an unexpected
/// write, a port read and any other exit are errors naming what the guest did. Port writes
/// go to `on_port` with the port and all bytes written. Writes to `timed` are timed, device
/// work included.
pub fn run_until_halt(
    vcpu: &mut KvmVcpu,
    bus: &MmioBus,
    deadline: Duration,
    timed: Option<u64>,
    mut on_port: impl FnMut(u16, &[u8]) -> Result<bool, String>,
    mut on_unclaimed_write: impl FnMut(u64, &[u8]) -> bool,
) -> Result<Stopped, String> {
    let start = Instant::now();
    // The watchdog: once the deadline passes, kicks the vCPU every 50 ms until told to stop.
    // One kick would do, but a loop that does not rely on it cannot hang if one is lost.
    let (cancel, cancelled) = mpsc::channel::<()>();
    let kicker = vcpu.kicker();
    let watchdog = std::thread::spawn(move || {
        let mut wait = deadline;
        while cancelled.recv_timeout(wait) == Err(mpsc::RecvTimeoutError::Timeout) {
            kicker.kick();
            wait = Duration::from_millis(50);
        }
    });
    let result = drive(
        vcpu,
        bus,
        (start, deadline),
        timed,
        &mut on_port,
        &mut on_unclaimed_write,
    );
    let _ = cancel.send(());
    let _ = watchdog.join();
    result
}

fn drive(
    vcpu: &mut KvmVcpu,
    bus: &MmioBus,
    (start, deadline): (Instant, Duration),
    timed: Option<u64>,
    on_port: &mut impl FnMut(u16, &[u8]) -> Result<bool, String>,
    on_unclaimed_write: &mut impl FnMut(u64, &[u8]) -> bool,
) -> Result<Stopped, String> {
    let mut exits = 0;
    let mut took = None;
    loop {
        // Checked after every exit, not only after a kick: a guest that keeps exiting is
        // stopped at the deadline too.
        if start.elapsed() >= deadline {
            let rip = vcpu.get_regs().map(|r| r.rip).unwrap_or(u64::MAX);
            return Err(format!(
                "the guest did not finish within {deadline:?}: stopped it at rip {rip:#x} after {exits} exits"
            ));
        }
        let exit = vcpu.run().map_err(|e| e.to_string())?;
        exits += 1;
        match exit {
            VcpuExit::Hlt => return Ok(Stopped::Halted { exits, timed: took }),
            // A kick: the deadline check above decides.
            VcpuExit::Intr => {}
            VcpuExit::Mmio {
                address,
                size,
                data: Some(data),
            } => {
                let bytes = &data[..size];
                let begun = Instant::now();
                let claimed = bus.write(address, bytes);
                if timed == Some(address) {
                    took = Some(begun.elapsed());
                }
                if !claimed && !on_unclaimed_write(address, bytes) {
                    return Err(format!(
                        "the guest wrote {bytes:02x?} at {address:#x}, where no device is"
                    ));
                }
            }
            VcpuExit::Mmio {
                address,
                size,
                data: None,
            } => {
                let mut buf = [0u8; 8];
                if !bus.read(address, &mut buf[..size]) {
                    return Err(format!(
                        "the guest read {size} bytes at {address:#x}, where no device is"
                    ));
                }
                vcpu.set_data(&buf[..size]).map_err(|e| e.to_string())?;
            }
            VcpuExit::Io {
                port,
                data: Some(_),
                ..
            } => {
                let bytes = vcpu.io_data().unwrap_or_default().to_vec();
                if on_port(port, &bytes)? {
                    return Ok(Stopped::Done {
                        port,
                        exits,
                        timed: took,
                    });
                }
            }
            VcpuExit::Io {
                port, data: None, ..
            } => {
                return Err(format!(
                    "the guest read port {port:#x}, which nothing answers"
                ))
            }
            other => return Err(format!("unexpected exit {other:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hypervisor::kvm::{Kvm, KvmVm};
    use vm_memory::{GuestAddress, GuestMemory};

    fn vcpu_running(code: &[u8]) -> Option<(KvmVm, KvmVcpu)> {
        let kvm = match Kvm::new() {
            Ok(kvm) => kvm,
            Err(e) => {
                if std::env::var_os("VMM_REQUIRE_KVM").is_some_and(|v| v == "1") {
                    panic!("KVM is required here but unusable: {e}");
                }
                println!("KVM-SKIP drive: {e}");
                return None;
            }
        };
        let mem = GuestMemory::new(&[(GuestAddress(0), 0x10000)]).unwrap();
        mem.write_all_at_addr(code, GuestAddress(0x1000)).unwrap();
        let vm = KvmVm::new(&kvm, mem).unwrap();
        let vcpu = vm.create_vcpu(0).unwrap();
        vcpu.set_flat_protected_mode(0x1000).unwrap();
        Some((vm, vcpu))
    }

    #[test]
    fn a_spinning_guest_is_stopped_at_the_deadline() {
        let Some((_vm, mut vcpu)) = vcpu_running(&[0xeb, 0xfe]) else {
            return; // jmp $
        };
        let start = Instant::now();
        let err = run_until_halt(
            &mut vcpu,
            &MmioBus::new(),
            Duration::from_millis(200),
            None,
            |_, _| Ok(false),
            |_, _| false,
        )
        .unwrap_err();
        assert!(err.contains("did not finish within 200ms"), "{err}");
        assert!(err.contains("rip 0x1000"), "{err}");
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn a_guest_that_keeps_exiting_is_stopped_at_the_deadline_too() {
        // mov [0xd0000000], eax; jmp back: an exit per turn, each write "expected".
        let Some((_vm, mut vcpu)) = vcpu_running(&[0xa3, 0x00, 0x00, 0x00, 0xd0, 0xeb, 0xf9])
        else {
            return;
        };
        let start = Instant::now();
        let mut writes = 0u64;
        let err = run_until_halt(
            &mut vcpu,
            &MmioBus::new(),
            Duration::from_millis(200),
            None,
            |_, _| Ok(false),
            |address, _| {
                writes += 1;
                address == 0xd000_0000
            },
        )
        .unwrap_err();
        assert!(err.contains("did not finish within 200ms"), "{err}");
        assert!(writes > 0);
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn a_port_the_caller_names_ends_the_run() {
        // out 0x20, eax; jmp $ (a guest that would spin on after saying it is done)
        let Some((_vm, mut vcpu)) = vcpu_running(&[0xe7, 0x20, 0xeb, 0xfe]) else {
            return;
        };
        let mut ports = Vec::new();
        let stopped = run_until_halt(
            &mut vcpu,
            &MmioBus::new(),
            Duration::from_secs(5),
            None,
            |port, _| {
                ports.push(port);
                Ok(port == 0x20)
            },
            |_, _| false,
        )
        .unwrap();
        assert_eq!(
            stopped,
            Stopped::Done {
                port: 0x20,
                exits: 1,
                timed: None
            }
        );
        assert_eq!(ports, [0x20]);
    }

    #[test]
    fn accesses_where_no_device_is_are_errors_naming_the_address() {
        // mov dword [0xe0000000], 7; hlt
        let write = [0xc7, 0x05, 0x00, 0x00, 0x00, 0xe0, 7, 0, 0, 0, 0xf4];
        let Some((_vm, mut vcpu)) = vcpu_running(&write) else {
            return;
        };
        let err = run_until_halt(
            &mut vcpu,
            &MmioBus::new(),
            Duration::from_secs(5),
            None,
            |_, _| Ok(false),
            |_, _| false,
        )
        .unwrap_err();
        assert!(err.contains("at 0xe0000000, where no device is"), "{err}");
        // The same write, expected by the caller: the guest goes on to halt.
        let Some((_vm, mut vcpu)) = vcpu_running(&write) else {
            return;
        };
        let mut seen = None;
        let stopped = run_until_halt(
            &mut vcpu,
            &MmioBus::new(),
            Duration::from_secs(5),
            None,
            |_, _| Ok(false),
            |addr, bytes| {
                seen = Some((addr, bytes.to_vec()));
                true
            },
        )
        .unwrap();
        assert!(matches!(stopped, Stopped::Halted { timed: None, .. }));
        assert_eq!(seen, Some((0xe000_0000, vec![7, 0, 0, 0])));
        // mov eax, [0xe0000000]: a read nobody answers.
        let Some((_vm, mut vcpu)) = vcpu_running(&[0xa1, 0x00, 0x00, 0x00, 0xe0, 0xf4]) else {
            return;
        };
        let err = run_until_halt(
            &mut vcpu,
            &MmioBus::new(),
            Duration::from_secs(5),
            None,
            |_, _| Ok(false),
            |_, _| false,
        )
        .unwrap_err();
        assert!(
            err.contains("read 4 bytes at 0xe0000000, where no device is"),
            "{err}"
        );
    }
}
