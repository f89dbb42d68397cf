// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! virtio-pmem: a file the guest maps as persistent memory. Its FLUSH request becomes an
//! msync of the whole window, asked of the VM over `vm_control`.
//!
//! Behind a shared transport ([`MmioTransport::shared`](super::mmio::MmioTransport::shared))
//! a FLUSH is answered by the device's own thread: the notify returns at once, and the chain
//! is used, with an interrupt, when the VM has answered, however long a slow disk takes.
//! Without one (a transport driven directly) it is answered before the notify returns.

use std::fs::File;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};

use base::{pagesize, Protection, SharedMemory};
use hypervisor::{MemCacheType, MemSlot};
use remain::sorted;
use thiserror::Error;
use vm_control::{ClientError, VmMemoryClient, VmMemoryRegionId, VmMemorySource};
use vm_memory::GuestMemory;

use super::mmio::{Completer, VirtioDevice};
use super::queue::{Buffer, DescriptorChain, Error as QueueError, Queue};

/// The virtio device id of pmem.
pub const VIRTIO_ID_PMEM: u32 = 27;
/// The one request type: flush the window to the backing file.
pub const VIRTIO_PMEM_REQ_TYPE_FLUSH: u32 = 0;
/// Response: done.
pub const VIRTIO_PMEM_RESP_TYPE_OK: u32 = 0;
/// Response: the flush failed.
pub const VIRTIO_PMEM_RESP_TYPE_EIO: u32 = 1;
/// The window is a whole number of these, and starts on one.
pub const PMEM_ALIGN: u64 = 2 << 20;
const QUEUE_SIZE: u16 = 256;

/// Errors of setting up a pmem device.
#[sorted]
#[derive(Debug, Error)]
pub enum Error {
    /// The backing file is empty.
    #[error("the pmem backing file is empty")]
    EmptyFile,
    /// Reading the file's size failed.
    #[error("cannot read the backing file's size: {0}")]
    FileMetadata(#[source] std::io::Error),
    /// The VM refused to map the backing file into the window.
    #[error("mapping the backing file ({len:#x} bytes) into the window failed: {source}")]
    MapFile {
        /// The file's length.
        len: u64,
        /// What the VM answered.
        source: ClientError,
    },
    /// The VM refused to map the padding after the file.
    #[error("mapping {len:#x} bytes of padding failed: {source}")]
    MapPadding {
        /// The padding's length.
        len: u64,
        /// What the VM answered.
        source: ClientError,
    },
    /// The padding memory could not be made.
    #[error("cannot create the padding memory: {0}")]
    Padding(#[source] base::shm::Error),
    /// The VM refused the window.
    #[error("registering the {size:#x}-byte window at {guest_addr:#x} failed: {source}")]
    Register {
        /// Where.
        guest_addr: u64,
        /// Its size.
        size: u64,
        /// What the VM answered.
        source: ClientError,
    },
    /// The window would pass the end of the address space.
    #[error("a window for a file of {len:#x} bytes does not fit")]
    TooLarge {
        /// The file's length.
        len: u64,
    },
    /// The guest address is not 2 MiB-aligned.
    #[error("pmem window address {guest_addr:#x} is not aligned to {align:#x}")]
    Unaligned {
        /// The address.
        guest_addr: u64,
        /// The alignment required.
        align: u64,
    },
}

/// Result of pmem set-up.
pub type Result<T> = std::result::Result<T, Error>;

/// A virtio-pmem device. The window is registered with the VM at construction and stays
/// until the device's client goes away.
pub struct Pmem {
    /// The client, until a worker takes it.
    client: Option<VmMemoryClient>,
    /// The thread that answers FLUSHes, once the transport gave a completer.
    worker: Option<Worker>,
    region: VmMemoryRegionId,
    slot: MemSlot,
    guest_addr: u64,
    window: u64,
    file_part: u64,
}

impl Pmem {
    /// Maps `file` at `guest_addr` (2 MiB-aligned) through `client`: a fresh arena the size
    /// of the file rounded up to 2 MiB, the file at its start, anonymous shared memory after.
    pub fn new(client: VmMemoryClient, file: &File, guest_addr: u64) -> Result<Pmem> {
        if !guest_addr.is_multiple_of(PMEM_ALIGN) {
            return Err(Error::Unaligned {
                guest_addr,
                align: PMEM_ALIGN,
            });
        }
        let len = file.metadata().map_err(Error::FileMetadata)?.len();
        if len == 0 {
            return Err(Error::EmptyFile);
        }
        let window = len
            .checked_next_multiple_of(PMEM_ALIGN)
            .ok_or(Error::TooLarge { len })?;
        let rw = Protection::read_write();
        let (region, slot) = client
            .register_memory(
                VmMemorySource::Arena { size: window },
                None,
                guest_addr,
                rw,
                MemCacheType::CacheCoherent,
            )
            .map_err(|source| Error::Register {
                guest_addr,
                size: window,
                source,
            })?;
        let file_part = len.next_multiple_of(pagesize() as u64);
        let mapped = client
            .map_into_arena(region, 0, file, 0, len, rw)
            .map_err(|source| Error::MapFile { len, source })
            .and_then(|()| {
                let padding = window - file_part;
                if padding == 0 {
                    return Ok(());
                }
                let shm = SharedMemory::new("pmem-padding", padding).map_err(Error::Padding)?;
                client
                    .map_into_arena(region, file_part, &shm, 0, padding, rw)
                    .map_err(|source| Error::MapPadding {
                        len: padding,
                        source,
                    })
            });
        if let Err(e) = mapped {
            // Do not leave a half-built window registered.
            let _ = client.unregister_memory(region);
            return Err(e);
        }
        Ok(Pmem {
            client: Some(client),
            worker: None,
            region,
            slot,
            guest_addr,
            window,
            file_part,
        })
    }

    /// The window's guest physical address.
    pub fn guest_addr(&self) -> u64 {
        self.guest_addr
    }

    /// The window's size (the file's size rounded up to 2 MiB).
    pub fn size(&self) -> u64 {
        self.window
    }

    /// The VM slot the window occupies.
    pub fn slot(&self) -> MemSlot {
        self.slot
    }

    /// Whether the device may take another chain: always, but for a worker that holds a
    /// queue's worth of FLUSHes. Then the chains stay on the ring, and the worker wakes the
    /// queue once it has room (the flag is set before `pending` is looked at again, so one
    /// of the two sides sees the other).
    fn has_room(&self) -> bool {
        let Some(worker) = &self.worker else {
            return true;
        };
        let limit = usize::from(QUEUE_SIZE);
        if worker.pending.load(Ordering::SeqCst) < limit {
            return true;
        }
        worker.deferred.store(true, Ordering::SeqCst);
        worker.pending.load(Ordering::SeqCst) < limit
    }

    /// Serves one request chain taken from queue `index`: `Some(len)` if it is answered now
    /// (with `len` bytes written to the driver), `None` if the worker will answer it.
    fn handle(&self, index: usize, chain: &DescriptorChain, mem: &GuestMemory) -> Option<u32> {
        let request = chain.buffers.iter().find(|b| !b.writable && b.len >= 4);
        let response = chain
            .buffers
            .iter()
            .rev()
            .find(|b| b.writable && b.len >= 4);
        let (Some(request), Some(response)) = (request, response) else {
            log::warn!(
                "virtio-pmem: chain {} lacks a request or a response buffer",
                chain.head
            );
            return Some(0);
        };
        let ret = match mem.read_obj_from_addr::<u32>(request.addr) {
            Ok(VIRTIO_PMEM_REQ_TYPE_FLUSH) => {
                let flush = Flush {
                    region: self.region,
                    file_part: self.file_part,
                };
                match (&self.worker, &self.client) {
                    (Some(worker), _) => {
                        let job = Job {
                            flush,
                            queue: index,
                            head: chain.head,
                            epoch: worker.completer.epoch(index),
                            response: *response,
                        };
                        worker.pending.fetch_add(1, Ordering::SeqCst);
                        if worker.jobs.send(job).is_ok() {
                            return None;
                        }
                        worker.pending.fetch_sub(1, Ordering::SeqCst);
                        log::error!("virtio-pmem: the flush worker is gone");
                        VIRTIO_PMEM_RESP_TYPE_EIO
                    }
                    (None, Some(client)) => flush.run(client),
                    (None, None) => VIRTIO_PMEM_RESP_TYPE_EIO,
                }
            }
            Ok(other) => {
                log::warn!("virtio-pmem: unknown request type {other}");
                VIRTIO_PMEM_RESP_TYPE_EIO
            }
            Err(e) => {
                log::warn!("virtio-pmem: cannot read the request: {e}");
                return Some(0);
            }
        };
        Some(respond(mem, response, ret))
    }
}

/// Writes response code `ret` into `response`; the bytes written.
fn respond(mem: &GuestMemory, response: &Buffer, ret: u32) -> u32 {
    match mem.write_obj_at_addr(ret, response.addr) {
        Ok(()) => 4,
        Err(_) => 0,
    }
}

/// What one FLUSH does: an msync of the file's part of the window.
#[derive(Clone, Copy)]
struct Flush {
    region: VmMemoryRegionId,
    file_part: u64,
}

impl Flush {
    /// Asks the VM for the msync; the response code for the driver.
    fn run(self, client: &VmMemoryClient) -> u32 {
        match client.msync_arena(self.region, 0, self.file_part) {
            Ok(()) => VIRTIO_PMEM_RESP_TYPE_OK,
            Err(e) => {
                log::error!("virtio-pmem: flush failed: {e}");
                VIRTIO_PMEM_RESP_TYPE_EIO
            }
        }
    }
}

/// A FLUSH handed to the worker, with what it needs to answer the chain.
struct Job {
    flush: Flush,
    queue: usize,
    head: u16,
    epoch: u64,
    response: Buffer,
}

/// The thread that answers FLUSHes, in order, and the way to hand it one.
struct Worker {
    jobs: mpsc::Sender<Job>,
    completer: Completer,
    /// Set when the device goes: the thread takes no further job.
    stop: Arc<AtomicBool>,
    /// Jobs handed over and not yet done or skipped, whatever their epoch: at most
    /// `QUEUE_SIZE`, so a driver that keeps resetting its queue while an msync hangs cannot
    /// pile up more.
    pending: Arc<AtomicUsize>,
    /// The device left chains on the ring because `pending` was full: the worker wakes the
    /// queue when it has room again.
    deferred: Arc<AtomicBool>,
}

impl Worker {
    fn start(client: VmMemoryClient, completer: Completer) -> std::io::Result<Worker> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let answers = completer.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let pending = Arc::new(AtomicUsize::new(0));
        let (in_hand, deferred) = (pending.clone(), Arc::new(AtomicBool::new(false)));
        let left = deferred.clone();
        std::thread::Builder::new()
            .name("virtio-pmem".into())
            .spawn(move || {
                // Ends when the device drops its sender or says stop; the client then goes,
                // and with it the window.
                for job in queue {
                    if stopped.load(Ordering::SeqCst) {
                        break;
                    }
                    // A chain of a reset or re-made queue is not to be answered: no msync
                    // for it either.
                    if answers.is_current(job.queue, job.epoch) {
                        let ret = job.flush.run(&client);
                        answers.complete(job.queue, job.head, job.epoch, |mem| {
                            respond(mem, &job.response, ret)
                        });
                    }
                    // Room for one more: if the device left chains for want of it, go on.
                    in_hand.fetch_sub(1, Ordering::SeqCst);
                    if left.swap(false, Ordering::SeqCst) {
                        answers.wake(job.queue);
                    }
                }
            })?;
        Ok(Worker {
            jobs,
            completer,
            stop,
            pending,
            deferred,
        })
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // The thread finishes the FLUSH in progress, if any, and takes no other; it is not
        // waited for, since that FLUSH waits for the vm_control server, which may be served
        // by the very thread dropping the device (or the drop may happen on the worker
        // itself, through its completer).
        self.stop.store(true, Ordering::SeqCst);
        let (jobs, _) = mpsc::channel();
        drop(std::mem::replace(&mut self.jobs, jobs));
    }
}

impl VirtioDevice for Pmem {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_PMEM
    }

    fn features(&self) -> u64 {
        0
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_pmem_config { le64 start; le64 size; }
        let mut config = [0u8; 16];
        config[..8].copy_from_slice(&self.guest_addr.to_le_bytes());
        config[8..].copy_from_slice(&self.window.to_le_bytes());
        data.fill(0);
        let start = (offset as usize).min(config.len());
        let n = data.len().min(config.len() - start);
        data[..n].copy_from_slice(&config[start..start + n]);
    }

    fn process_queue(
        &mut self,
        index: usize,
        queue: &mut Queue,
        mem: &GuestMemory,
    ) -> std::result::Result<bool, QueueError> {
        let mut used = false;
        while self.has_room() {
            let Some(chain) = queue.pop(mem)? else {
                break;
            };
            match chain {
                Ok(chain) => {
                    if let Some(len) = self.handle(index, &chain, mem) {
                        queue.add_used(mem, chain.head, len)?;
                        used = true;
                    }
                }
                Err(bad) => {
                    log::warn!("virtio-pmem: queue {index}: bad chain: {}", bad.error);
                    queue.add_used(mem, bad.head, 0)?;
                    used = true;
                }
            }
        }
        Ok(used)
    }

    fn set_completer(&mut self, completer: Completer) {
        let Some(client) = self.client.take() else {
            return;
        };
        match Worker::start(client, completer) {
            Ok(worker) => self.worker = Some(worker),
            // The client went with the thread that could not start: FLUSHes get EIO.
            Err(e) => log::error!("virtio-pmem: cannot start the flush worker: {e}"),
        }
    }
}
