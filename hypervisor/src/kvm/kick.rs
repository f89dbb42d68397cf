// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Stopping a running vCPU from another thread: `immediate_exit` in the shared run structure,
//! for a vCPU about to enter the guest, and a signal, for one already in it.

use std::sync::atomic::{fence, AtomicI32, Ordering};
use std::sync::{Arc, Once};

use base::MemoryMapping;
use kvm_bindings::kvm_run;

/// Makes a vCPU leave [`Vcpu::run`](crate::Vcpu::run) with [`VcpuExit::Intr`](crate::VcpuExit::Intr).
/// Cheap to clone; usable from any thread, after the vCPU is gone too (it then does nothing).
#[derive(Clone, Debug)]
pub struct VcpuKicker {
    pub(super) run: Arc<MemoryMapping>,
    pub(super) running_tid: Arc<AtomicI32>,
}

impl VcpuKicker {
    /// Asks the vCPU to exit. If it is in the guest it leaves at once; if it is about to
    /// enter, it returns without running guest code; if it is neither, its next `run` returns
    /// at once. Each kick causes at least one exit.
    pub fn kick(&self) {
        set_immediate_exit(&self.run, 1);
        // The store must be visible before the thread id is read (x86 may otherwise let the
        // load pass the store): the vCPU thread publishes its id with a full barrier before
        // KVM_RUN reads `immediate_exit`, so one of the two sides sees the other.
        fence(Ordering::SeqCst);
        let tid = self.running_tid.load(Ordering::SeqCst);
        if tid != 0 {
            // SAFETY: tgkill sends a signal and touches no memory. The signal's handler does
            // nothing and is installed with SA_RESTART, so at worst a thread that left KVM_RUN
            // just now and reused the id sees a restarted syscall; KVM_RUN itself returns
            // EINTR for it.
            unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, kick_signal()) };
        }
    }
}

/// The signal that interrupts `KVM_RUN`: the first real-time signal.
fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int) {}

/// Installs the kick signal's handler once per process: a handler that does nothing, so the
/// signal only interrupts what the thread is doing.
pub(super) fn install_handler() {
    static INSTALLED: Once = Once::new();
    INSTALLED.call_once(|| {
        // SAFETY: a zeroed sigaction is a valid empty one; we set the handler and flags and
        // install it for the kick signal only. The handler is async-signal-safe: it does
        // nothing.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_kick as extern "C" fn(libc::c_int) as *const () as usize;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            if libc::sigaction(kick_signal(), &action, std::ptr::null_mut()) < 0 {
                log::error!(
                    "cannot install the vCPU kick handler: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
    });
}

/// The calling thread's kernel thread id.
pub(super) fn current_tid() -> i32 {
    // SAFETY: gettid takes no argument and cannot fail.
    unsafe { libc::gettid() }
}

fn set_immediate_exit(run: &MemoryMapping, value: u8) {
    let run = run.as_ptr() as *mut kvm_run;
    // The mapping holds a whole `kvm_run` (checked when the vCPU was made) and lives as
    // long as `run`. The kernel reads the byte when it enters the guest, so it is written
    // with one volatile store.
    // SAFETY: see above.
    unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(value) };
}

/// Ends the effect of a kick once `KVM_RUN` returned for it (with EINTR). After any other
/// exit it must stay set: a kick that landed between that exit and this point would be lost.
pub(super) fn clear_immediate_exit(run: &MemoryMapping) {
    set_immediate_exit(run, 0);
}
