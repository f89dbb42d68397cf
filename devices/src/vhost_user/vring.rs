// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! One vring of the backend: the frontend's configuration of it, our [`Queue`] over the
//! frontend's memory, its eventfds, and the thread that serves it when the frontend kicks.
//!
//! The thread serves a kick under the vring's lock, in order, in slices: it takes the chains
//! the driver offered, serves each, puts it in the used ring, and raises the call eventfd
//! when the driver wants that; after a slice it lets go of the lock and checks for a stop
//! before the next. So between two batches every chain taken is used, which is what
//! lets the frontend stop the ring (`GET_VRING_BASE`) or change the memory table between any
//! two batches without a request in flight.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use vm_memory::GuestMemory;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::blk::BlockDisk;
use super::log::DirtyLog;
use crate::virtio::queue::Queue;

/// Bytes of request buffers one slice of [`Vring::serve`] starts at most (the last request
/// may take it past this by up to [`MAX_REQUEST_BYTES`](super::blk::MAX_REQUEST_BYTES)).
pub const SLICE_BYTES: u64 = 64 << 20;

/// The frontend's vring addresses, in its own address space.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VringAddrs {
    /// The descriptor table.
    pub desc: u64,
    /// The available ring.
    pub avail: u64,
    /// The used ring.
    pub used: u64,
    /// With `VHOST_VRING_F_LOG`, the used ring's guest address, where its writes are logged.
    pub log: Option<u64>,
}

/// The state of one vring, shared by the frontend's requests and the serving thread.
#[derive(Debug)]
pub struct Vring {
    /// The split queue (ready while the ring is started).
    pub queue: Queue,
    /// Where the frontend put the rings.
    pub addrs: Option<VringAddrs>,
    /// The index the ring starts from (`SET_VRING_BASE`).
    pub base: u16,
    /// Raised when the driver wants a used-buffer notification.
    pub call: Option<File>,
    /// Raised when the queue faults.
    pub err: Option<File>,
    /// The frontend enabled the ring (`SET_VRING_ENABLE`, or implied without
    /// `VHOST_USER_F_PROTOCOL_FEATURES`).
    pub enabled: bool,
    /// The memory the queue was started in.
    pub mem: Option<GuestMemory>,
    /// Where the backend's writes are logged, while `VHOST_F_LOG_ALL` is on.
    pub log: Option<Arc<DirtyLog>>,
    /// The driver broke the ring: nothing is served until the ring is started again.
    pub broken: bool,
}

impl Vring {
    /// A stopped vring of at most `max_size` entries.
    pub fn new(max_size: u16) -> Vring {
        Vring {
            queue: Queue::new(max_size),
            addrs: None,
            base: 0,
            call: None,
            err: None,
            enabled: false,
            mem: None,
            log: None,
            broken: false,
        }
    }

    /// Serves the chains the driver has offered, if the ring is started and enabled, for at
    /// most one slice of work: one notify's budget of descriptors, or [`SLICE_BYTES`] of
    /// request buffers, whichever comes first, and not past `stop`. The answer is whether
    /// chains are left, for the caller to come back to after it has let go of the lock (a
    /// guest whose requests offer new chains, or whose chains are huge, cannot hold the
    /// vring, and the frontend's requests that need it, for longer than a slice).
    pub fn serve(&mut self, disk: &BlockDisk, stop: &AtomicBool) -> bool {
        if !self.queue.ready() || !self.enabled || self.broken {
            return false;
        }
        let Some(mem) = self.mem.clone() else {
            return false;
        };
        let log = self.log.clone();
        self.queue.begin_notify();
        let mut used = false;
        let mut bytes = 0u64;
        let mut more = false;
        loop {
            if stop.load(Ordering::SeqCst) || bytes >= SLICE_BYTES {
                more = true;
                break;
            }
            let chain = match self.queue.pop(&mem) {
                Ok(Some(chain)) => chain,
                Ok(None) => break,
                Err(e) => {
                    self.fault(&e);
                    return false;
                }
            };
            let (head, len) = match chain {
                Ok(chain) => {
                    bytes += chain.buffers.iter().map(|b| u64::from(b.len)).sum::<u64>();
                    (chain.head, disk.serve(&mem, &chain, log.as_deref()).written)
                }
                Err(bad) => {
                    log::warn!("vhost-user-blk: chain refused: {}", bad.error);
                    (bad.head, 0)
                }
            };
            if let Err(e) = self.queue.add_used(&mem, head, len) {
                self.fault(&e);
                return false;
            }
            used = true;
        }
        if used {
            if let (Some(log), Some(at)) = (&log, self.addrs.and_then(|a| a.log)) {
                // The used ring: flags, index, the elements and avail_event. A pass that
                // took no chain wrote none of it, and marks nothing.
                log.mark(at, 6 + 8 * u64::from(self.queue.size()));
            }
            match self.queue.needs_notification(&mem) {
                Ok(true) => self.signal_call(),
                Ok(false) => {}
                Err(e) => {
                    self.fault(&e);
                    return false;
                }
            }
        }
        more || self.queue.budget_spent()
    }

    fn signal_call(&self) {
        if let Some(call) = &self.call {
            signal(call);
        }
    }

    fn fault(&mut self, e: &crate::virtio::queue::Error) {
        log::error!("vhost-user-blk: the driver broke the ring, which stops until restarted: {e}");
        self.broken = true;
        if let Some(err) = &self.err {
            signal(err);
        }
    }
}

/// Adds 1 to an eventfd; a full counter (the frontend never reads it) means the event is
/// pending already. The eventfds are non-blocking (see [`check_eventfd`]).
fn signal(event: &File) {
    if let Err(e) = (&*event).write(&1u64.to_ne_bytes()) {
        if e.kind() != std::io::ErrorKind::WouldBlock {
            log::error!(
                "vhost-user-blk: cannot signal eventfd {}: {e}",
                event.as_raw_fd()
            );
        }
    }
}

/// Whether `file` is an eventfd, which a vring's kick, call and err descriptors must be; it is
/// made non-blocking, so that a counter the frontend fills or drains can never block the
/// backend. That flag lives on the file description the frontend shares, so its own reads and
/// writes of the eventfd become non-blocking too (QEMU's are already); left blocking, a
/// frontend could stall a vring's thread, and with it every stop that joins the thread.
pub fn check_eventfd(file: &File) -> std::io::Result<bool> {
    let fd = file.as_raw_fd();
    let link = std::fs::read_link(format!("/proc/self/fd/{fd}"))?;
    if link.as_os_str() != "anon_inode:[eventfd]" {
        return Ok(false);
    }
    set_nonblocking(fd)?;
    Ok(true)
}

fn set_nonblocking(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: fcntl on a descriptor the caller's `File` owns; F_GETFL reads its flags and
    // touches no memory.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: as above; F_SETFL changes only the descriptor's status flags.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The thread serving one vring on its kicks.
#[derive(Debug)]
pub struct Worker {
    stop: Arc<AtomicBool>,
    wake: EventFd,
    thread: Option<JoinHandle<()>>,
}

const KICK: u64 = 0;
const WAKE: u64 = 1;

impl Worker {
    /// Starts serving `vring` whenever `kick` is signalled.
    pub fn start(
        index: usize,
        vring: Arc<Mutex<Vring>>,
        kick: File,
        disk: Arc<BlockDisk>,
    ) -> std::io::Result<Worker> {
        let wake = EventFd::new(libc::EFD_NONBLOCK)?;
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            kick.as_raw_fd(),
            // Edge-triggered: a semaphore-mode eventfd (each read takes 1) with a huge
            // counter would otherwise wake the thread for ever; each kick is an edge.
            EpollEvent::new(EventSet::IN | EventSet::EDGE_TRIGGERED, KICK),
        )?;
        epoll.ctl(
            ControlOperation::Add,
            wake.as_raw_fd(),
            EpollEvent::new(EventSet::IN, WAKE),
        )?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = stop.clone();
        let thread_wake = wake.try_clone()?;
        let thread = std::thread::Builder::new()
            // The kernel keeps 15 bytes of a thread's name.
            .name(format!("vublk-q{index}"))
            .spawn(move || run(epoll, kick, thread_wake, thread_stop, vring, disk))?;
        let worker = Worker {
            stop,
            wake,
            thread: Some(thread),
        };
        // Chains offered before the kick descriptor came are served at once.
        worker.wake();
        Ok(worker)
    }

    /// Has the thread look at the ring again (it was enabled, say).
    pub fn wake(&self) {
        if let Err(e) = self.wake.write(1) {
            log::error!("vhost-user-blk: cannot wake a vring's thread: {e}");
        }
    }
}

impl Drop for Worker {
    /// Stops the thread, after the batch it is serving.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.wake();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(
    epoll: Epoll,
    mut kick: File,
    wake: EventFd,
    stop: Arc<AtomicBool>,
    vring: Arc<Mutex<Vring>>,
    disk: Arc<BlockDisk>,
) {
    let mut events = [EpollEvent::default(); 2];
    loop {
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::error!("vhost-user-blk: epoll failed, the vring stops: {e}");
                return;
            }
        };
        if stop.load(Ordering::SeqCst) {
            return;
        }
        for event in &events[..n] {
            match event.data() {
                KICK => {
                    if event
                        .event_set()
                        .intersects(EventSet::HANG_UP | EventSet::ERROR)
                    {
                        log::error!("vhost-user-blk: the kick eventfd failed, the vring stops");
                        return;
                    }
                    let mut counter = [0u8; 8];
                    // Non-blocking: another reader emptying it first is fine.
                    let _ = kick.read(&mut counter);
                }
                _ => {
                    let _ = wake.read();
                }
            }
        }
        // Checked again after the wake eventfd was drained: a stop that came after the check
        // above had its wake read just now, and would otherwise be lost (and Drop's join
        // would wait for ever).
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let more = lock(&vring).serve(&disk, &stop);
        if more {
            // Back to epoll (and the stop flag) before the next slice, without the lock.
            if let Err(e) = wake.write(1) {
                log::error!("vhost-user-blk: cannot re-arm the vring's thread: {e}");
            }
        }
    }
}

/// Locks a vring; a thread that panicked while holding it left a state that is still
/// consistent at batch boundaries, so the lock is taken anyway.
pub fn lock(vring: &Mutex<Vring>) -> MutexGuard<'_, Vring> {
    vring.lock().unwrap_or_else(|p| p.into_inner())
}
