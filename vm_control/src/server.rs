// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! [`VmMemoryServer`]: serves memory requests from many tubes against one VM.
//!
//! Requests that may block in the kernel for as long as a file system likes (msync and
//! madvise of a file on FUSE or NFS) run on the client's own worker thread; their client is
//! not served again until the answer is out, so every client gets one answer per request, in
//! order, and no client can stall another. Answers are sent without waiting: a client that
//! does not read them is dropped as soon as its queue is full.

use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use base::{
    AsRawDescriptor, MappedRegion, MemoryMappingArena, MemoryMappingBuilder, Protection,
    RawDescriptor, SafeDescriptor, SharedMemory, Tube,
};
use hypervisor::{MemSlot, Vm};
use remain::sorted;
use thiserror::Error;
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;

use crate::ownership::{ClientId, Owned, Regions};
use crate::policy::ClientPolicy;
use crate::{
    VmMemoryDestination, VmMemoryError, VmMemoryRegionId, VmMemoryRequest, VmMemoryResponse,
    VmMemorySource,
};

/// Errors of the server itself (requests never fail the loop: they get answers).
#[sorted]
#[derive(Debug, Error)]
pub enum Error {
    /// The eventfd that wakes the loop when a long operation finishes could not be made.
    #[error("cannot create the server's wake-up eventfd: {0}")]
    EventFd(#[source] std::io::Error),
    /// A new client's grant overlaps another client's.
    #[error(
        "grant {start}+{size:#x} overlaps a grant of client {other:?}: clients' grants must be disjoint"
    )]
    GrantOverlap {
        /// Start of the new client's grant.
        start: GuestAddress,
        /// Its size.
        size: u64,
        /// The client that already holds it.
        other: ClientId,
    },
    /// `poll` failed.
    #[error("poll over {count} descriptors failed: {source}")]
    Poll {
        /// How many descriptors were polled.
        count: usize,
        /// What the kernel answered.
        source: std::io::Error,
    },
    /// A client's worker thread could not be started.
    #[error("cannot start a client's worker thread: {0}")]
    Worker(#[source] std::io::Error),
}

/// Result of the server loop.
pub type Result<T> = std::result::Result<T, Error>;

/// A long operation, run on its client's worker thread.
type Job = Box<dyn FnOnce() -> VmMemoryResponse + Send>;

struct Client {
    id: ClientId,
    tube: Tube,
    policy: ClientPolicy,
    /// Hands long operations to the client's worker thread, which ends when this is dropped.
    worker: mpsc::Sender<Job>,
    /// A long operation of this client's is running; its next request waits.
    busy: bool,
    /// The client is gone (or dropped) but an operation of its is still running: its
    /// regions are unregistered when that finishes.
    closing: bool,
}

/// A long operation that finished, with its answer.
struct Done {
    client: ClientId,
    response: VmMemoryResponse,
}

/// Serves memory requests from many client tubes against one VM, answering each request
/// exactly once. A client that disconnects, or whose messages cannot be answered, is dropped
/// and everything it registered is unregistered.
pub struct VmMemoryServer<V: Vm + ?Sized + 'static> {
    vm: Arc<V>,
    clients: Vec<Client>,
    regions: Regions,
    next_client: u64,
    done_tx: mpsc::Sender<Done>,
    done_rx: mpsc::Receiver<Done>,
    /// Written by a long operation's thread when it is done.
    wake: Arc<EventFd>,
}

impl<V: Vm + ?Sized + 'static> VmMemoryServer<V> {
    /// A server for `vm` with no clients yet.
    pub fn new(vm: Arc<V>) -> Result<VmMemoryServer<V>> {
        let (done_tx, done_rx) = mpsc::channel();
        let wake = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(Error::EventFd)?;
        Ok(VmMemoryServer {
            vm,
            clients: Vec::new(),
            regions: Regions::default(),
            next_client: 0,
            done_tx,
            done_rx,
            wake: Arc::new(wake),
        })
    }

    /// Serves `tube` from now on, under `policy`. The policy's grants must not overlap any
    /// other client's ([`Error::GrantOverlap`]).
    pub fn add_client(&mut self, tube: Tube, policy: ClientPolicy) -> Result<ClientId> {
        for other in &self.clients {
            if let Some((start, size)) = policy.overlaps(&other.policy) {
                return Err(Error::GrantOverlap {
                    start,
                    size,
                    other: other.id,
                });
            }
        }
        // Answers never wait: a full queue means the client does not read them.
        if let Err(e) = tube.set_nonblocking(true) {
            log::warn!("vm_control: cannot make a new client's tube non-blocking: {e}");
        }
        self.next_client += 1;
        let id = ClientId::new(self.next_client);
        let worker = self.spawn_worker(id)?;
        self.clients.push(Client {
            id,
            tube,
            policy,
            worker,
            busy: false,
            closing: false,
        });
        Ok(id)
    }

    /// Starts the worker thread of client `id`: it runs the client's long operations one at a
    /// time and reports each answer, until its sender is dropped.
    fn spawn_worker(&self, client: ClientId) -> Result<mpsc::Sender<Job>> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let (done, wake) = (self.done_tx.clone(), self.wake.clone());
        std::thread::Builder::new()
            .name(format!("vm_control client {}", client.number()))
            .spawn(move || {
                for job in queue {
                    let response = job();
                    // The server may be gone; then nobody waits for the answer.
                    if done.send(Done { client, response }).is_err() {
                        return;
                    }
                    let _ = wake.write(1);
                }
            })
            .map_err(Error::Worker)?;
        Ok(jobs)
    }

    /// How many clients are connected.
    pub fn client_count(&self) -> usize {
        self.clients.iter().filter(|c| !c.closing).count()
    }

    /// How many regions clients have registered.
    pub fn region_count(&self) -> usize {
        self.regions.len()
    }

    /// Serves requests until `exit` becomes readable (an `EventFd` the VMM writes, say).
    pub fn run(&mut self, exit: &dyn AsRawDescriptor) -> Result<()> {
        loop {
            if self.poll_and_serve(Some(exit.as_raw_descriptor()), None)?.1 {
                return Ok(());
            }
        }
    }

    /// Waits up to `timeout` (forever for `None`) for requests, serves every client that has
    /// one, and returns how many requests it answered.
    pub fn serve_once(&mut self, timeout: Option<Duration>) -> Result<usize> {
        Ok(self.poll_and_serve(None, timeout)?.0)
    }

    /// One round: poll every client that is not waiting for a long operation, the wake-up
    /// eventfd and `exit`; finish what finished, serve the ready clients. Returns the requests
    /// answered and whether `exit` is readable.
    fn poll_and_serve(
        &mut self,
        exit: Option<RawDescriptor>,
        timeout: Option<Duration>,
    ) -> Result<(usize, bool)> {
        let polled: Vec<ClientId> = self
            .clients
            .iter()
            .filter(|c| !c.busy && !c.closing)
            .map(|c| c.id)
            .collect();
        let mut fds: Vec<libc::pollfd> = exit
            .into_iter()
            .chain([std::os::fd::AsRawFd::as_raw_fd(&*self.wake)])
            .chain(
                self.clients
                    .iter()
                    .filter(|c| !c.busy && !c.closing)
                    .map(|c| c.tube.as_raw_descriptor()),
            )
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let timeout_ms = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as i32);
        // SAFETY: poll writes only the `revents` of the `fds.len()` entries we pass.
        let ret = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        if ret < 0 {
            let source = std::io::Error::last_os_error();
            if source.raw_os_error() == Some(libc::EINTR) {
                return Ok((0, false));
            }
            return Err(Error::Poll {
                count: fds.len(),
                source,
            });
        }
        let exit_ready = exit.is_some() && fds[0].revents != 0;
        let wake_index = usize::from(exit.is_some());
        let mut answered = 0;
        if fds[wake_index].revents != 0 {
            // Reading resets the counter; an empty one (EAGAIN) only means a race with it.
            let _ = self.wake.read();
            answered += self.finish_done();
        }
        let ready: Vec<(ClientId, i16)> = fds[wake_index + 1..]
            .iter()
            .zip(polled)
            .filter(|(p, _)| p.revents != 0)
            .map(|(p, id)| (id, p.revents))
            .collect();
        for (id, revents) in ready {
            if revents & libc::POLLIN != 0 {
                if self.serve_client(id) {
                    answered += 1;
                }
            } else {
                // Hang-up or error with nothing left to read.
                self.remove_client(id);
            }
        }
        Ok((answered, exit_ready))
    }

    /// Sends the answers of the long operations that finished, and finishes the removal of
    /// clients that left meanwhile. Returns how many answers went out.
    fn finish_done(&mut self) -> usize {
        let mut answered = 0;
        while let Ok(Done { client, response }) = self.done_rx.try_recv() {
            let Some(index) = self.clients.iter().position(|c| c.id == client) else {
                continue;
            };
            self.clients[index].busy = false;
            if self.clients[index].closing {
                self.remove_client(client);
                continue;
            }
            if self.answer(index, &response) {
                answered += 1;
            }
        }
        answered
    }

    /// Receives one request from `id` and answers it, now or, for a long operation, once it
    /// finishes. Returns whether an answer was sent now; a client that is gone or cannot be
    /// answered is dropped.
    fn serve_client(&mut self, id: ClientId) -> bool {
        let Some(index) = self.clients.iter().position(|c| c.id == id) else {
            return false;
        };
        use base::tube::Error as TubeError;
        let response = match self.clients[index].tube.recv_raw() {
            Ok((packet, descriptors)) => match base::tube::decode::<VmMemoryRequest>(&packet) {
                Ok(request) => match self.start_long(id, &request) {
                    Some(Ok(())) => return false,
                    Some(Err(e)) => VmMemoryResponse::Err(e),
                    None => self.execute(id, request, descriptors),
                },
                Err(e) => invalid(e),
            },
            // The bad packet was consumed whole, so answering keeps the exchange in step.
            Err(
                e @ (TubeError::Oversized { .. }
                | TubeError::TooManyDescriptors { .. }
                | TubeError::ControlTruncated { .. }),
            ) => invalid(e),
            Err(TubeError::Timeout) => return false,
            Err(e) => {
                log::info!("vm_control: dropping client {id:?}: {e}");
                self.remove_client(id);
                return false;
            }
        };
        // `execute` never removes clients, so `index` still names this one.
        self.answer(index, &response)
    }

    /// Sends `response` to the client at `index` without waiting, or drops the client.
    fn answer(&mut self, index: usize, response: &VmMemoryResponse) -> bool {
        match self.clients[index].tube.send(response) {
            Ok(()) => true,
            Err(e) => {
                let id = self.clients[index].id;
                log::info!("vm_control: dropping client {id:?}, which cannot take its answer: {e}");
                self.remove_client(id);
                false
            }
        }
    }

    /// Starts `request` on a thread of its own if it is one that may block for long (msync,
    /// madvise): `Some(Ok)` when started, `Some(Err)` when refused before starting, `None`
    /// when it is not such a request.
    fn start_long(
        &mut self,
        client: ClientId,
        request: &VmMemoryRequest,
    ) -> Option<std::result::Result<(), VmMemoryError>> {
        type RangeOp<V> = fn(&V, MemSlot, usize, usize) -> hypervisor::Result<()>;
        let (id, offset, size, op, f): (_, _, _, &'static str, RangeOp<V>) = match *request {
            VmMemoryRequest::MsyncArena { id, offset, size } => {
                (id, offset, size, "msync", |vm, s, o, n| {
                    vm.msync_memory_region(s, o, n)
                })
            }
            VmMemoryRequest::MadvisePageout { id, offset, size } => {
                (id, offset, size, "madvise pageout", |vm, s, o, n| {
                    vm.madvise_pageout_memory_region(s, o, n)
                })
            }
            VmMemoryRequest::MadviseRemove { id, offset, size } => {
                (id, offset, size, "madvise remove", |vm, s, o, n| {
                    vm.madvise_remove_memory_region(s, o, n)
                })
            }
            _ => return None,
        };
        let checked = self.range_args(client, id, offset, size);
        let (slot, offset, size) = match checked {
            Ok(args) => args,
            Err(e) => return Some(Err(e)),
        };
        let vm = self.vm.clone();
        let job: Job = Box::new(move || match f(&vm, slot, offset, size) {
            Ok(()) => VmMemoryResponse::Ok,
            Err(e) => VmMemoryResponse::Err(failed(op, e.errno(), e)),
        });
        let client = self.clients.iter_mut().find(|c| c.id == client)?;
        if client.worker.send(job).is_err() {
            return Some(Err(failed(op, libc::EPIPE, "the client's worker is gone")));
        }
        client.busy = true;
        Some(Ok(()))
    }

    /// Forgets a client and unregisters everything it registered, freeing the slots. If an
    /// operation of its is still running, the removal finishes when it does.
    pub fn remove_client(&mut self, id: ClientId) {
        let Some(index) = self.clients.iter().position(|c| c.id == id) else {
            return;
        };
        if self.clients[index].busy {
            self.clients[index].closing = true;
            return;
        }
        self.clients.remove(index);
        for owned in self.regions.remove_all(id) {
            if let Err(e) = self.vm.remove_memory_region(owned.slot) {
                log::error!(
                    "vm_control: cannot free slot {} of client {id:?}: {e}",
                    owned.slot
                );
            }
        }
    }

    /// Decodes one packet as received from client `id` (header byte included) and executes
    /// it, or answers why it does not decode. This is all the server does with a message, so
    /// tests and fuzzers can drive it without sockets.
    pub fn handle_packet(
        &mut self,
        id: ClientId,
        packet: &[u8],
        descriptors: Vec<SafeDescriptor>,
    ) -> VmMemoryResponse {
        match base::tube::decode::<VmMemoryRequest>(packet) {
            Ok(request) => self.execute(id, request, descriptors),
            Err(e) => invalid(e),
        }
    }

    /// Executes one request for client `id` with the descriptors it carried, and returns the
    /// answer. Every refusal is an answer; nothing here panics on input.
    pub fn execute(
        &mut self,
        id: ClientId,
        request: VmMemoryRequest,
        descriptors: Vec<SafeDescriptor>,
    ) -> VmMemoryResponse {
        match self.try_execute(id, request, descriptors) {
            Ok(response) => response,
            Err(e) => VmMemoryResponse::Err(e),
        }
    }

    fn try_execute(
        &mut self,
        id: ClientId,
        request: VmMemoryRequest,
        descriptors: Vec<SafeDescriptor>,
    ) -> std::result::Result<VmMemoryResponse, VmMemoryError> {
        use VmMemoryRequest::*;
        let needed = match &request {
            RegisterMemory {
                source: VmMemorySource::Arena { .. },
                ..
            } => 0,
            RegisterMemory { .. } | MapIntoArena { .. } => 1,
            _ => 0,
        };
        if descriptors.len() != needed {
            return Err(VmMemoryError::DescriptorCount {
                needed,
                count: descriptors.len(),
            });
        }
        let descriptor = descriptors.into_iter().next();
        match request {
            RegisterMemory {
                source,
                dest: VmMemoryDestination::GuestPhysicalAddress(gpa),
                prot,
                cache,
            } => {
                let policy = self
                    .clients
                    .iter()
                    .find(|c| c.id == id)
                    .map(|c| &c.policy)
                    .ok_or(VmMemoryError::OutsideGrant { gpa, size: 0 })?;
                // Grant and quota first, from the size the request names (a memfd's from its
                // descriptor): nothing is reserved or mapped for a request that cannot stand.
                let (source, size) = sized_source(source, descriptor)?;
                policy.check(gpa, size, self.regions.usage(id))?;
                let (region, arena) = build_region(source, prot)?;
                let slot = self
                    .vm
                    .add_memory_region(GuestAddress(gpa), region, !prot.is_write(), false, cache)
                    .map_err(|e| failed("register memory", e.errno(), e))?;
                let id = self.regions.insert(Owned {
                    owner: id,
                    slot,
                    arena,
                    size,
                });
                Ok(VmMemoryResponse::RegisterMemory { id, slot })
            }
            UnregisterMemory(region) => {
                // The region stays the client's until its slot is really gone.
                let owned = self.regions.get(id, region)?;
                self.vm
                    .remove_memory_region(owned.slot)
                    .map_err(|e| failed("unregister memory", e.errno(), e))?;
                self.regions.remove(id, region)?;
                Ok(VmMemoryResponse::Ok)
            }
            MsyncArena {
                id: r,
                offset,
                size,
            } => self.on_range(id, r, offset, size, "msync", |vm, s, o, n| {
                vm.msync_memory_region(s, o, n)
            }),
            MadvisePageout {
                id: r,
                offset,
                size,
            } => self.on_range(id, r, offset, size, "madvise pageout", |vm, s, o, n| {
                vm.madvise_pageout_memory_region(s, o, n)
            }),
            MadviseRemove {
                id: r,
                offset,
                size,
            } => self.on_range(id, r, offset, size, "madvise remove", |vm, s, o, n| {
                vm.madvise_remove_memory_region(s, o, n)
            }),
            MapIntoArena {
                id: r,
                offset,
                source,
                prot,
            } => {
                let VmMemorySource::Descriptor {
                    offset: fd_offset,
                    size,
                } = source
                else {
                    return Err(VmMemoryError::UnsupportedSource {
                        given: source,
                        op: "map into arena".into(),
                    });
                };
                let slot = self.arena_slot(id, r)?;
                let (offset, size) = (to_usize(offset, "offset")?, nonzero(size, "size")?);
                // `needed` was 1, so the descriptor is there.
                let fd = descriptor.ok_or(VmMemoryError::DescriptorCount {
                    needed: 1,
                    count: 0,
                })?;
                self.vm
                    .add_fd_mapping(slot, offset, size, &fd, fd_offset, prot)
                    .map_err(|e| failed("map into arena", e.errno(), e))?;
                Ok(VmMemoryResponse::Ok)
            }
            UnmapFromArena {
                id: r,
                offset,
                size,
            } => {
                let slot = self.arena_slot(id, r)?;
                let (offset, size) = (to_usize(offset, "offset")?, nonzero(size, "size")?);
                self.vm
                    .remove_mapping(slot, offset, size)
                    .map_err(|e| failed("unmap from arena", e.errno(), e))?;
                Ok(VmMemoryResponse::Ok)
            }
        }
    }

    fn arena_slot(
        &self,
        client: ClientId,
        id: VmMemoryRegionId,
    ) -> std::result::Result<hypervisor::MemSlot, VmMemoryError> {
        let owned = self.regions.get(client, id)?;
        if !owned.arena {
            return Err(VmMemoryError::NotAnArena { id });
        }
        Ok(owned.slot)
    }

    /// The slot and the checked range of a range request on region `id` of `client`.
    fn range_args(
        &self,
        client: ClientId,
        id: VmMemoryRegionId,
        offset: u64,
        size: u64,
    ) -> std::result::Result<(MemSlot, usize, usize), VmMemoryError> {
        let slot = self.regions.get(client, id)?.slot;
        let (offset, size) = (to_usize(offset, "offset")?, nonzero(size, "size")?);
        Ok((slot, offset, size))
    }

    fn on_range(
        &self,
        client: ClientId,
        id: VmMemoryRegionId,
        offset: u64,
        size: u64,
        op: &str,
        f: impl FnOnce(&V, hypervisor::MemSlot, usize, usize) -> hypervisor::Result<()>,
    ) -> std::result::Result<VmMemoryResponse, VmMemoryError> {
        let (slot, offset, size) = self.range_args(client, id, offset, size)?;
        f(&self.vm, slot, offset, size).map_err(|e| failed(op, e.errno(), e))?;
        Ok(VmMemoryResponse::Ok)
    }
}

/// What a registration maps, once its size is known: a memfd's is read from it.
enum Source {
    Arena(usize),
    SharedMemory(SharedMemory, usize),
    Descriptor(SafeDescriptor, u64, usize),
}

/// Pairs the source with its descriptor and finds the size it would register.
fn sized_source(
    source: VmMemorySource,
    descriptor: Option<SafeDescriptor>,
) -> std::result::Result<(Source, u64), VmMemoryError> {
    match (source, descriptor) {
        (VmMemorySource::Arena { size }, None) => {
            Ok((Source::Arena(nonzero(size, "arena size")?), size))
        }
        (VmMemorySource::SharedMemory, Some(fd)) => {
            let shm = SharedMemory::from_safe_descriptor(fd)
                .map_err(|e| failed("receive shared memory", libc::EINVAL, e))?;
            let size = shm.size();
            let len = nonzero(size, "shared memory size")?;
            Ok((Source::SharedMemory(shm, len), size))
        }
        (VmMemorySource::Descriptor { offset, size }, Some(fd)) => {
            Ok((Source::Descriptor(fd, offset, nonzero(size, "size")?), size))
        }
        (source, fd) => Err(VmMemoryError::DescriptorCount {
            needed: usize::from(!matches!(source, VmMemorySource::Arena { .. })),
            count: usize::from(fd.is_some()),
        }),
    }
}

/// Maps what a registration names. Returns the region and whether it is an arena.
fn build_region(
    source: Source,
    prot: Protection,
) -> std::result::Result<(Box<dyn MappedRegion>, bool), VmMemoryError> {
    let mapping_failed = |e: base::mmap::Error| failed("map the region", e.errno(), e);
    match source {
        Source::Arena(size) => {
            let arena = MemoryMappingArena::new(size).map_err(mapping_failed)?;
            Ok((Box::new(arena), true))
        }
        Source::SharedMemory(shm, size) => {
            let mapping = MemoryMappingBuilder::new(size)
                .from_shared_memory(&shm)
                .protection(prot)
                .build()
                .map_err(mapping_failed)?;
            Ok((Box::new(mapping), false))
        }
        Source::Descriptor(fd, offset, size) => {
            let mapping = MemoryMappingBuilder::new(size)
                .from_descriptor(&fd)
                .offset(offset)
                .protection(prot)
                .build()
                .map_err(mapping_failed)?;
            Ok((Box::new(mapping), false))
        }
    }
}

fn failed(op: &str, errno: i32, e: impl std::fmt::Display) -> VmMemoryError {
    VmMemoryError::Failed {
        op: op.to_owned(),
        errno,
        message: e.to_string(),
    }
}

fn invalid(e: base::tube::Error) -> VmMemoryResponse {
    VmMemoryResponse::Err(VmMemoryError::InvalidRequest {
        reason: e.to_string(),
    })
}

fn to_usize(value: u64, what: &str) -> std::result::Result<usize, VmMemoryError> {
    usize::try_from(value)
        .map_err(|_| failed(what, libc::EOVERFLOW, format!("{value:#x} does not fit")))
}

fn nonzero(value: u64, what: &str) -> std::result::Result<usize, VmMemoryError> {
    if value == 0 {
        return Err(VmMemoryError::ZeroSize { what: what.into() });
    }
    to_usize(value, what)
}
