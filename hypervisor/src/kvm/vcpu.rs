// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! [`KvmVcpu`]: a KVM vCPU, its shared run structure, and the decoding of its exits.

use std::fs::File;
use std::mem::size_of;
use std::ptr::{addr_of, addr_of_mut};
use std::sync::{Arc, Mutex};

use base::MemoryMapping;
#[cfg(target_arch = "x86_64")]
use kvm_bindings::{kvm_regs, kvm_sregs};
use kvm_bindings::{
    kvm_run, KVM_EXIT_DIRTY_RING_FULL, KVM_EXIT_FAIL_ENTRY, KVM_EXIT_HLT, KVM_EXIT_INTERNAL_ERROR,
    KVM_EXIT_IO, KVM_EXIT_IO_OUT, KVM_EXIT_MEMORY_FAULT, KVM_EXIT_MMIO, KVM_EXIT_SHUTDOWN,
};
use vmm_sys_util::ioctl::ioctl;
#[cfg(target_arch = "x86_64")]
use vmm_sys_util::ioctl::{ioctl_with_mut_ref, ioctl_with_ref};

use super::ioctls::*;
use super::kick::{self, VcpuKicker};
use crate::{Error, Result, Vcpu, VcpuExit};

/// A read the guest is waiting on, and where its bytes go in the run structure.
#[derive(Clone, Copy, Debug)]
enum PendingRead {
    Mmio {
        address: u64,
        len: usize,
    },
    Io {
        port: u16,
        offset: usize,
        len: usize,
    },
}

/// A KVM vCPU.
#[derive(Debug)]
pub struct KvmVcpu {
    id: usize,
    fd: File,
    /// The kernel's `struct kvm_run` for this vCPU, plus the pages after it (port I/O data).
    run: Arc<MemoryMapping>,
    pending: Option<PendingRead>,
    /// Where the bytes of the last port write are in the run structure (all elements of a
    /// string write).
    out_data: Option<(usize, usize)>,
    /// The kernel thread id of the thread inside `KVM_RUN`, or 0: whom a kick signals.
    running_tid: Arc<std::sync::atomic::AtomicI32>,
    /// The VM's boot RAM and slot table, kept alive (and mapped) while this vCPU can run,
    /// even if the `KvmVm` is dropped first.
    _memory: VmMemory,
    /// Where a full dirty ring is emptied.
    dirty: Arc<super::dirty::KvmDirtyLog>,
}

/// What a vCPU keeps of its VM so that guest memory outlives it.
pub(super) type VmMemory = (vm_memory::GuestMemory, Arc<Mutex<super::slots::SlotTable>>);

impl KvmVcpu {
    pub(super) fn new(
        id: usize,
        fd: File,
        run: MemoryMapping,
        memory: VmMemory,
        dirty: Arc<super::dirty::KvmDirtyLog>,
    ) -> Result<KvmVcpu> {
        if run.size() < size_of::<kvm_run>() {
            return Err(Error::VcpuRunMapping {
                id,
                source: base::mmap::Error::InvalidAddress {
                    offset: 0,
                    size: size_of::<kvm_run>(),
                    region_size: run.size(),
                    why: "the vCPU mapping is smaller than struct kvm_run",
                },
            });
        }
        Ok(KvmVcpu {
            id,
            fd,
            run: Arc::new(run),
            pending: None,
            out_data: None,
            running_tid: Arc::new(std::sync::atomic::AtomicI32::new(0)),
            _memory: memory,
            dirty,
        })
    }

    fn run_ptr(&self) -> *mut kvm_run {
        self.run.as_ptr() as *mut kvm_run
    }

    /// A handle another thread uses to make this vCPU leave `run` with [`VcpuExit::Intr`]:
    /// at once if it is running guest code, or as soon as it next enters it.
    pub fn kicker(&self) -> VcpuKicker {
        VcpuKicker {
            run: self.run.clone(),
            running_tid: self.running_tid.clone(),
        }
    }

    /// The general registers.
    #[cfg(target_arch = "x86_64")]
    pub fn get_regs(&self) -> Result<kvm_regs> {
        let mut regs = kvm_regs::default();
        // SAFETY: the kernel writes one `kvm_regs` into `regs`, which we own.
        let ret = unsafe { ioctl_with_mut_ref(&self.fd, KVM_GET_REGS(), &mut regs) };
        if ret < 0 {
            return Err(super::ioctl_error(
                "KVM_GET_REGS",
                format!("vcpu {}", self.id),
            ));
        }
        Ok(regs)
    }

    /// Sets the general registers.
    #[cfg(target_arch = "x86_64")]
    pub fn set_regs(&self, regs: &kvm_regs) -> Result<()> {
        // SAFETY: the kernel reads one `kvm_regs` from `regs`.
        let ret = unsafe { ioctl_with_ref(&self.fd, KVM_SET_REGS(), regs) };
        if ret < 0 {
            return Err(super::ioctl_error(
                "KVM_SET_REGS",
                format!("vcpu {}", self.id),
            ));
        }
        Ok(())
    }

    /// The special registers (segments, control registers, descriptor tables).
    #[cfg(target_arch = "x86_64")]
    pub fn get_sregs(&self) -> Result<kvm_sregs> {
        let mut sregs = kvm_sregs::default();
        // SAFETY: the kernel writes one `kvm_sregs` into `sregs`, which we own.
        let ret = unsafe { ioctl_with_mut_ref(&self.fd, KVM_GET_SREGS(), &mut sregs) };
        if ret < 0 {
            return Err(super::ioctl_error(
                "KVM_GET_SREGS",
                format!("vcpu {}", self.id),
            ));
        }
        Ok(sregs)
    }

    /// Sets the special registers. The kernel validates them.
    #[cfg(target_arch = "x86_64")]
    pub fn set_sregs(&self, sregs: &kvm_sregs) -> Result<()> {
        // SAFETY: the kernel reads one `kvm_sregs` from `sregs`.
        let ret = unsafe { ioctl_with_ref(&self.fd, KVM_SET_SREGS(), sregs) };
        if ret < 0 {
            return Err(super::ioctl_error(
                "KVM_SET_SREGS",
                format!("vcpu {}", self.id),
            ));
        }
        Ok(())
    }

    /// Puts the vCPU in 32-bit protected mode with flat 4 GiB code and data segments and no
    /// paging, about to execute at `entry` with interrupts off: enough to run small guest
    /// programs that address all of the low 4 GiB directly. KVM loads the segment registers
    /// from these values, so the guest needs no descriptor table.
    #[cfg(target_arch = "x86_64")]
    pub fn set_flat_protected_mode(&self, entry: u32) -> Result<()> {
        let mut sregs = self.get_sregs()?;
        let flat = |selector: u16, type_: u8| kvm_bindings::kvm_segment {
            base: 0,
            limit: 0xffff_ffff,
            selector,
            type_,
            present: 1,
            dpl: 0,
            db: 1,
            s: 1,
            l: 0,
            g: 1,
            avl: 0,
            unusable: 0,
            padding: 0,
        };
        // Code: execute/read, accessed. Data: read/write, accessed.
        sregs.cs = flat(0x08, 0xb);
        for seg in [
            &mut sregs.ds,
            &mut sregs.es,
            &mut sregs.ss,
            &mut sregs.fs,
            &mut sregs.gs,
        ] {
            *seg = flat(0x10, 0x3);
        }
        const CR0_PE: u64 = 1;
        const CR0_PG: u64 = 1 << 31;
        sregs.cr0 = (sregs.cr0 | CR0_PE) & !CR0_PG;
        self.set_sregs(&sregs)?;
        let mut regs = self.get_regs()?;
        regs.rip = entry.into();
        // Bit 1 of RFLAGS is reserved and always set; IF stays clear.
        regs.rflags = 2;
        self.set_regs(&regs)
    }

    /// One `KVM_RUN`, and the exit it ended with.
    fn run_once(&mut self) -> Result<VcpuExit> {
        match self.pending {
            Some(PendingRead::Mmio { address, .. }) => {
                return Err(Error::UnansweredRead {
                    what: "MMIO",
                    address,
                })
            }
            Some(PendingRead::Io { port, .. }) => {
                return Err(Error::UnansweredRead {
                    what: "port",
                    address: port.into(),
                })
            }
            None => {}
        }
        self.out_data = None;
        kick::install_handler();
        self.running_tid
            .store(kick::current_tid(), std::sync::atomic::Ordering::SeqCst);
        // SAFETY: KVM_RUN takes no argument; it writes only the run structure, which we keep
        // mapped for the vCPU's life.
        let ret = unsafe { ioctl(&self.fd, KVM_RUN()) };
        self.running_tid
            .store(0, std::sync::atomic::Ordering::SeqCst);
        if ret < 0 {
            let err = std::io::Error::last_os_error();
            // SAFETY: reading the exit reason of our own mapped run structure.
            let reason = unsafe { addr_of!((*self.run_ptr()).exit_reason).read() };
            return match err.raw_os_error() {
                Some(libc::EINTR) => {
                    // This is the exit a kick asked for: the next run goes on. (A kick after
                    // any other exit stays pending, and the next run returns at once.)
                    kick::clear_immediate_exit(&self.run);
                    Ok(VcpuExit::Intr)
                }
                Some(libc::EAGAIN) => Ok(VcpuExit::Intr),
                Some(libc::EFAULT) | Some(libc::EHWPOISON) if reason == KVM_EXIT_MEMORY_FAULT => {
                    Ok(self.memory_fault())
                }
                _ => Err(Error::Ioctl {
                    op: "KVM_RUN",
                    detail: format!("vcpu {}", self.id),
                    source: err,
                }),
            };
        }
        Ok(self.decode_exit())
    }

    /// Completes the I/O of the last exit inside KVM without running guest code (a
    /// `KVM_RUN` with `immediate_exit` set), so that the registers then read are those after
    /// the instruction: what KVM asks of a VMM before it saves a vCPU's state. A read still
    /// waiting for [`Vcpu::set_data`] is [`Error::UnansweredRead`].
    pub fn complete_io(&mut self) -> Result<()> {
        self.kicker().kick();
        match self.run_once()? {
            VcpuExit::Intr => Ok(()),
            // Completing one piece of a split MMIO access can ask for the next piece.
            other => Err(Error::Ioctl {
                op: "KVM_RUN",
                detail: format!("completing the I/O of vcpu {}: exit {other:?}", self.id),
                source: std::io::Error::from_raw_os_error(libc::EAGAIN),
            }),
        }
    }

    /// Decodes the exit the kernel left in the run structure.
    fn decode_exit(&mut self) -> VcpuExit {
        let run = self.run_ptr();
        // `run` points at our mapping of the kernel's `kvm_run`, checked large enough in
        // `new`, and the vCPU is not running, so the kernel does not change it now.
        // SAFETY: see above; each union field is read only for the exit that selects it.
        unsafe {
            match (*run).exit_reason {
                KVM_EXIT_HLT => VcpuExit::Hlt,
                KVM_EXIT_SHUTDOWN => VcpuExit::Shutdown,
                KVM_EXIT_MMIO => {
                    let mmio = &(*run).__bindgen_anon_1.mmio;
                    let size = (mmio.len as usize).min(8);
                    let data = if mmio.is_write != 0 {
                        Some(mmio.data)
                    } else {
                        self.pending = Some(PendingRead::Mmio {
                            address: mmio.phys_addr,
                            len: size,
                        });
                        None
                    };
                    VcpuExit::Mmio {
                        address: mmio.phys_addr,
                        size,
                        data,
                    }
                }
                KVM_EXIT_IO => {
                    let io = (*run).__bindgen_anon_1.io;
                    let size = io.size as usize;
                    let offset = io.data_offset as usize;
                    let len = size.saturating_mul(io.count as usize);
                    // The kernel places the data inside the vCPU mapping, with elements of 1, 2
                    // or 4 bytes; an exit that says otherwise is not one we can decode.
                    let inside = offset
                        .checked_add(len)
                        .is_some_and(|end| end <= self.run.size());
                    if !inside || size > 4 {
                        return VcpuExit::Unknown(KVM_EXIT_IO);
                    }
                    let data = if io.direction == KVM_EXIT_IO_OUT as u8 {
                        let mut first = [0u8; 4];
                        let src = (run as *const u8).add(offset);
                        std::ptr::copy_nonoverlapping(src, first.as_mut_ptr(), size);
                        self.out_data = Some((offset, len));
                        Some(first)
                    } else {
                        self.pending = Some(PendingRead::Io {
                            port: io.port,
                            offset,
                            len,
                        });
                        None
                    };
                    VcpuExit::Io {
                        port: io.port,
                        size,
                        count: io.count,
                        data,
                    }
                }
                KVM_EXIT_FAIL_ENTRY => VcpuExit::FailEntry {
                    hardware_entry_failure_reason: (*run)
                        .__bindgen_anon_1
                        .fail_entry
                        .hardware_entry_failure_reason,
                },
                KVM_EXIT_INTERNAL_ERROR => VcpuExit::InternalError {
                    suberror: (*run).__bindgen_anon_1.internal.suberror,
                },
                KVM_EXIT_MEMORY_FAULT => self.memory_fault(),
                other => VcpuExit::Unknown(other),
            }
        }
    }

    fn memory_fault(&self) -> VcpuExit {
        // SAFETY: as in `decode_exit`; called only when the exit reason is a memory fault.
        let fault = unsafe { (*self.run_ptr()).__bindgen_anon_1.memory_fault };
        VcpuExit::MemoryFault {
            gpa: fault.gpa,
            size: fault.size,
        }
    }
}

impl std::os::fd::AsFd for KvmVcpu {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Vcpu for KvmVcpu {
    fn id(&self) -> usize {
        self.id
    }

    fn run(&mut self) -> Result<VcpuExit> {
        // Whether the last ring-full exit found the rings empty.
        let mut empty_full = false;
        loop {
            let exit = self.run_once()?;
            // SAFETY: reading the exit reason of our own mapped run structure; the vCPU is
            // not running.
            let reason = unsafe { addr_of!((*self.run_ptr()).exit_reason).read() };
            if exit != VcpuExit::Unknown(KVM_EXIT_DIRTY_RING_FULL)
                || reason != KVM_EXIT_DIRTY_RING_FULL
            {
                return Ok(exit);
            }
            // Empty the rings and go on, unless a harvest holds the pages: then the caller
            // must end it first. A ring that stays full with nothing in it is broken; say so
            // rather than spin.
            match self.dirty.ring_full()? {
                None => return Ok(VcpuExit::DirtyRingFull),
                Some(0) if std::mem::replace(&mut empty_full, true) => {
                    return Err(Error::DirtyRingStuck { id: self.id })
                }
                Some(0) => {}
                Some(_) => empty_full = false,
            }
        }
    }

    fn io_data(&self) -> Option<&[u8]> {
        let (offset, len) = self.out_data?;
        // `offset + len` was checked against the mapping's size when the exit was decoded,
        // and the vCPU is not running, so the kernel does not change these bytes now.
        // SAFETY: see above; the slice borrows `self`, so no run can start while it lives.
        Some(unsafe { std::slice::from_raw_parts(self.run.as_ptr().add(offset), len) })
    }

    fn set_data(&mut self, data: &[u8]) -> Result<()> {
        let run = self.run_ptr();
        match self.pending {
            None => Err(Error::NoPendingRead),
            Some(PendingRead::Mmio { len, .. }) | Some(PendingRead::Io { len, .. })
                if data.len() != len =>
            {
                Err(Error::WrongDataSize {
                    expected: len,
                    got: data.len(),
                })
            }
            Some(PendingRead::Mmio { len, .. }) => {
                // SAFETY: `len <= 8` bytes into the mmio data array of our mapped run
                // structure; the vCPU is not running.
                unsafe {
                    let dst = addr_of_mut!((*run).__bindgen_anon_1.mmio.data) as *mut u8;
                    std::ptr::copy_nonoverlapping(data.as_ptr(), dst, len);
                }
                self.pending = None;
                Ok(())
            }
            Some(PendingRead::Io { offset, len, .. }) => {
                // SAFETY: `offset + len` was checked against the mapping's size when the exit
                // was decoded.
                unsafe {
                    let dst = (run as *mut u8).add(offset);
                    std::ptr::copy_nonoverlapping(data.as_ptr(), dst, len);
                }
                self.pending = None;
                Ok(())
            }
        }
    }
}
