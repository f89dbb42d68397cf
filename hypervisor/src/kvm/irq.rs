// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Interrupts of a [`KvmVm`]: the in-kernel irqchip (PIC and IOAPIC, with a local APIC per
//! vCPU), irqfds that turn an eventfd write into a guest interrupt, and IRQ lines set
//! directly. The names follow crosvm's `KvmVm`.

use std::os::fd::{AsRawFd, RawFd};

use kvm_bindings::{kvm_irq_level, kvm_irqfd, KVM_IRQFD_FLAG_DEASSIGN, KVM_IRQFD_FLAG_RESAMPLE};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::ioctl::{ioctl, ioctl_with_ref};

use super::ioctls::*;
use super::{ioctl_error, KvmVm};
use crate::{Error, Result};

/// The GSIs the default routing of `KVM_CREATE_IRQCHIP` serves: the IOAPIC's 24 pins (the
/// first 16 also reach the PIC). A GSI past them has no route, so an irqfd on it would be
/// accepted by KVM and never deliver anything.
pub const IRQCHIP_GSIS: u32 = 24;

/// What the VM knows about its interrupts.
#[derive(Debug, Default)]
pub(super) struct IrqState {
    chip: bool,
    /// vCPUs created so far: the irqchip must exist before the first.
    pub(super) vcpus: usize,
    /// Registered irqfds: the GSI, our duplicate of the eventfd (to tell eventfds apart, as
    /// KVM does, by the file they name), and the caller's descriptor number.
    irqfds: Vec<(u32, EventFd, RawFd)>,
}

/// Whether descriptors `a` and `b` of this process name the same open file, as `kcmp(2)`
/// says; `None` where it cannot say (a sandbox forbids it).
fn kcmp_same_file(a: RawFd, b: RawFd) -> Option<bool> {
    const KCMP_FILE: libc::c_long = 0;
    // SAFETY: kcmp compares two of our own descriptors and touches no memory.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            libc::getpid(),
            libc::getpid(),
            KCMP_FILE,
            a as libc::c_long,
            b as libc::c_long,
        )
    };
    match ret {
        0 => Some(true),
        1..=2 => Some(false),
        _ => None,
    }
}

/// Whether the registered `known` (our duplicate, registered as descriptor `number`) is the
/// caller's `evt`. By file whenever kcmp can tell: a number alone may since have been closed
/// and reused for another eventfd. Equal numbers only where kcmp is forbidden.
fn is_registered(known: &EventFd, number: RawFd, evt: &EventFd) -> bool {
    kcmp_same_file(known.as_raw_fd(), evt.as_raw_fd()).unwrap_or(number == evt.as_raw_fd())
}

impl KvmVm {
    /// Creates the in-kernel irqchip: a PIC and an IOAPIC for the VM and a local APIC for
    /// every vCPU created afterwards, with GSIs `0..IRQCHIP_GSIS` routed to the IOAPIC pins
    /// of the same number. It must come before the first vCPU, once.
    ///
    /// With the irqchip the kernel handles `hlt` itself: a halted vCPU sleeps in `run` until
    /// an interrupt wakes it, so [`VcpuExit::Hlt`](crate::VcpuExit::Hlt) no longer comes back.
    #[cfg(target_arch = "x86_64")]
    pub fn create_irq_chip(&self) -> Result<()> {
        let mut irq = self.irq();
        if irq.chip {
            return Err(Error::IrqChipExists);
        }
        if irq.vcpus > 0 {
            return Err(Error::IrqChipAfterVcpus { vcpus: irq.vcpus });
        }
        // SAFETY: KVM_CREATE_IRQCHIP takes no argument and touches no memory of ours.
        let ret = unsafe { ioctl(&self.vm, KVM_CREATE_IRQCHIP()) };
        if ret < 0 {
            return Err(ioctl_error("KVM_CREATE_IRQCHIP", String::new()));
        }
        irq.chip = true;
        Ok(())
    }

    /// Whether [`create_irq_chip`](Self::create_irq_chip) has been done.
    pub fn has_irq_chip(&self) -> bool {
        self.irq().chip
    }

    /// Makes every write to `evt` raise GSI `gsi` in the guest. Without `resample_evt` the
    /// GSI is pulsed (an edge); with it the GSI stays asserted until the guest acknowledges
    /// it at the interrupt controller, and then KVM lowers it and writes `resample_evt`, so
    /// the device can assert it again if it still needs service (a level interrupt).
    pub fn register_irqfd(
        &self,
        gsi: u32,
        evt: &EventFd,
        resample_evt: Option<&EventFd>,
    ) -> Result<()> {
        let mut irq = self.irq();
        Self::check_gsi(&irq, gsi, "register_irqfd")?;
        if irq
            .irqfds
            .iter()
            .any(|(_, known, number)| is_registered(known, *number, evt))
        {
            return Err(Error::IrqfdInUse { gsi });
        }
        let mut request = kvm_irqfd {
            fd: evt.as_raw_fd() as u32,
            gsi,
            ..Default::default()
        };
        if let Some(resample) = resample_evt {
            request.flags = KVM_IRQFD_FLAG_RESAMPLE;
            request.resamplefd = resample.as_raw_fd() as u32;
        }
        let duplicate = evt
            .try_clone()
            .map_err(|source| Error::Irqfd { gsi, source })?;
        // SAFETY: the kernel reads `request`, which lives across the call, and takes its own
        // references to the eventfds it names.
        let ret = unsafe { ioctl_with_ref(&self.vm, KVM_IRQFD(), &request) };
        if ret < 0 {
            let source = std::io::Error::last_os_error();
            if source.raw_os_error() == Some(libc::EBUSY) {
                return Err(Error::IrqfdInUse { gsi });
            }
            return Err(Error::Irqfd { gsi, source });
        }
        irq.irqfds.push((gsi, duplicate, evt.as_raw_fd()));
        Ok(())
    }

    /// Undoes [`register_irqfd`](Self::register_irqfd) of `evt` on `gsi`.
    pub fn unregister_irqfd(&self, gsi: u32, evt: &EventFd) -> Result<()> {
        let mut irq = self.irq();
        Self::check_gsi(&irq, gsi, "unregister_irqfd")?;
        let index = irq
            .irqfds
            .iter()
            .position(|(g, known, number)| *g == gsi && is_registered(known, *number, evt))
            .ok_or(Error::IrqfdUnknown { gsi })?;
        // Our duplicate names the registered eventfd for sure; the caller's number is only
        // known to where kcmp could not check it.
        let request = kvm_irqfd {
            fd: irq.irqfds[index].1.as_raw_fd() as u32,
            gsi,
            flags: KVM_IRQFD_FLAG_DEASSIGN,
            ..Default::default()
        };
        // SAFETY: the kernel reads `request`, which lives across the call.
        let ret = unsafe { ioctl_with_ref(&self.vm, KVM_IRQFD(), &request) };
        if ret < 0 {
            return Err(Error::Irqfd {
                gsi,
                source: std::io::Error::last_os_error(),
            });
        }
        irq.irqfds.swap_remove(index);
        Ok(())
    }

    /// Sets GSI `gsi` to `active` (asserted) or not, as a device wired to that line would.
    pub fn set_irq_line(&self, gsi: u32, active: bool) -> Result<()> {
        let irq = self.irq();
        Self::check_gsi(&irq, gsi, "set_irq_line")?;
        let mut level = kvm_irq_level {
            level: active.into(),
            ..Default::default()
        };
        level.__bindgen_anon_1.irq = gsi;
        // SAFETY: the kernel reads `level`, which lives across the call.
        let ret = unsafe { ioctl_with_ref(&self.vm, KVM_IRQ_LINE(), &level) };
        if ret < 0 {
            return Err(ioctl_error(
                "KVM_IRQ_LINE",
                format!("gsi {gsi} to {active}"),
            ));
        }
        Ok(())
    }

    fn check_gsi(irq: &IrqState, gsi: u32, op: &'static str) -> Result<()> {
        if !irq.chip {
            return Err(Error::NoIrqChip { op });
        }
        if gsi >= IRQCHIP_GSIS {
            return Err(Error::GsiOutOfRange {
                gsi,
                limit: IRQCHIP_GSIS,
            });
        }
        Ok(())
    }
}
