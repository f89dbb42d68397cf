// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! [`VmMemoryServer`]: serves memory requests from many tubes against one VM.

use std::sync::Arc;
use std::time::Duration;

use base::{
    AsRawDescriptor, MappedRegion, MemoryMappingArena, MemoryMappingBuilder, Protection,
    RawDescriptor, SafeDescriptor, SharedMemory, Tube,
};
use hypervisor::Vm;
use remain::sorted;
use thiserror::Error;
use vm_memory::GuestAddress;

use crate::ownership::Regions;
use crate::{
    VmMemoryDestination, VmMemoryError, VmMemoryRegionId, VmMemoryRequest, VmMemoryResponse,
    VmMemorySource,
};

/// How long the server waits to hand an answer to a client that does not read its answers
/// before it gives up on that client.
const SEND_TIMEOUT: Duration = Duration::from_secs(1);

/// Errors of the server loop itself (requests never fail the loop: they get answers).
#[sorted]
#[derive(Debug, Error)]
pub enum Error {
    /// `poll` failed.
    #[error("poll over {count} descriptors failed: {source}")]
    Poll {
        /// How many descriptors were polled.
        count: usize,
        /// What the kernel answered.
        source: std::io::Error,
    },
}

/// Result of the server loop.
pub type Result<T> = std::result::Result<T, Error>;

/// A connection the server serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientId(u64);

#[cfg(test)]
impl ClientId {
    pub(crate) fn for_tests(n: u64) -> ClientId {
        ClientId(n)
    }
}

struct Client {
    id: ClientId,
    tube: Tube,
}

/// Serves memory requests from many client tubes against one VM, answering each request
/// exactly once. A client that disconnects, or whose messages cannot be answered, is dropped
/// and everything it registered is unregistered.
pub struct VmMemoryServer<V: Vm + ?Sized> {
    vm: Arc<V>,
    clients: Vec<Client>,
    regions: Regions,
    next_client: u64,
}

impl<V: Vm + ?Sized> VmMemoryServer<V> {
    /// A server for `vm` with no clients yet.
    pub fn new(vm: Arc<V>) -> VmMemoryServer<V> {
        VmMemoryServer {
            vm,
            clients: Vec::new(),
            regions: Regions::default(),
            next_client: 0,
        }
    }

    /// Serves `tube` from now on.
    pub fn add_client(&mut self, tube: Tube) -> ClientId {
        if let Err(e) = tube.set_send_timeout(Some(SEND_TIMEOUT)) {
            log::warn!("vm_control: cannot bound sends to a new client: {e}");
        }
        self.next_client += 1;
        let id = ClientId(self.next_client);
        self.clients.push(Client { id, tube });
        id
    }

    /// How many clients are connected.
    pub fn client_count(&self) -> usize {
        self.clients.len()
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

    /// One round: poll every client (and `exit`), serve the ready ones. Returns the requests
    /// answered and whether `exit` is readable.
    fn poll_and_serve(
        &mut self,
        exit: Option<RawDescriptor>,
        timeout: Option<Duration>,
    ) -> Result<(usize, bool)> {
        let mut fds: Vec<libc::pollfd> = exit
            .into_iter()
            .chain(self.clients.iter().map(|c| c.tube.as_raw_descriptor()))
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
        let first_client = usize::from(exit.is_some());
        let ready: Vec<(ClientId, i16)> = fds[first_client..]
            .iter()
            .zip(&self.clients)
            .filter(|(p, _)| p.revents != 0)
            .map(|(p, c)| (c.id, p.revents))
            .collect();
        let mut answered = 0;
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

    /// Receives one request from `id` and answers it. Returns whether an answer was sent; a
    /// client that is gone or cannot be answered is dropped.
    fn serve_client(&mut self, id: ClientId) -> bool {
        let Some(index) = self.clients.iter().position(|c| c.id == id) else {
            return false;
        };
        use base::tube::Error as TubeError;
        let response = match self.clients[index].tube.recv_raw() {
            Ok((packet, descriptors)) => self.handle_packet(id, &packet, descriptors),
            // The bad packet was consumed whole, so answering keeps the exchange in step.
            Err(e @ (TubeError::Oversized { .. } | TubeError::TooManyDescriptors { .. })) => {
                invalid(e)
            }
            Err(TubeError::Timeout) => return false,
            Err(e) => {
                log::info!("vm_control: dropping client {id:?}: {e}");
                self.remove_client(id);
                return false;
            }
        };
        // `execute` never removes clients, so `index` still names this one.
        if let Err(e) = self.clients[index].tube.send(&response) {
            log::info!("vm_control: dropping client {id:?}, which cannot take its answer: {e}");
            self.remove_client(id);
            return false;
        }
        true
    }

    /// Forgets a client and unregisters everything it registered, freeing the slots.
    pub fn remove_client(&mut self, id: ClientId) {
        self.clients.retain(|c| c.id != id);
        for owned in self.regions.take_all(id) {
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
                let (region, arena) = build_region(source, descriptor, prot)?;
                let slot = self
                    .vm
                    .add_memory_region(GuestAddress(gpa), region, !prot.is_write(), false, cache)
                    .map_err(|e| failed("register memory", e.errno(), e))?;
                let id = self.regions.insert(id, slot, arena);
                Ok(VmMemoryResponse::RegisterMemory { id, slot })
            }
            UnregisterMemory(region) => {
                let owned = self.regions.take(id, region)?;
                self.vm
                    .remove_memory_region(owned.slot)
                    .map_err(|e| failed("unregister memory", e.errno(), e))?;
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

    fn on_range(
        &self,
        client: ClientId,
        id: VmMemoryRegionId,
        offset: u64,
        size: u64,
        op: &str,
        f: impl FnOnce(&V, hypervisor::MemSlot, usize, usize) -> hypervisor::Result<()>,
    ) -> std::result::Result<VmMemoryResponse, VmMemoryError> {
        let slot = self.regions.get(client, id)?.slot;
        let (offset, size) = (to_usize(offset, "offset")?, nonzero(size, "size")?);
        f(&self.vm, slot, offset, size).map_err(|e| failed(op, e.errno(), e))?;
        Ok(VmMemoryResponse::Ok)
    }
}

/// Maps what a registration names. Returns the region and whether it is an arena.
fn build_region(
    source: VmMemorySource,
    descriptor: Option<SafeDescriptor>,
    prot: Protection,
) -> std::result::Result<(Box<dyn MappedRegion>, bool), VmMemoryError> {
    let mapping_failed = |e: base::mmap::Error| failed("map the region", e.errno(), e);
    match (source, descriptor) {
        (VmMemorySource::Arena { size }, None) => {
            let arena =
                MemoryMappingArena::new(nonzero(size, "arena size")?).map_err(mapping_failed)?;
            Ok((Box::new(arena), true))
        }
        (VmMemorySource::SharedMemory, Some(fd)) => {
            let shm = SharedMemory::from_safe_descriptor(fd)
                .map_err(|e| failed("receive shared memory", libc::EINVAL, e))?;
            let size = nonzero(shm.size(), "shared memory size")?;
            let mapping = MemoryMappingBuilder::new(size)
                .from_shared_memory(&shm)
                .protection(prot)
                .build()
                .map_err(mapping_failed)?;
            Ok((Box::new(mapping), false))
        }
        (VmMemorySource::Descriptor { offset, size }, Some(fd)) => {
            let mapping = MemoryMappingBuilder::new(nonzero(size, "size")?)
                .from_descriptor(&fd)
                .offset(offset)
                .protection(prot)
                .build()
                .map_err(mapping_failed)?;
            Ok((Box::new(mapping), false))
        }
        (source, fd) => Err(VmMemoryError::DescriptorCount {
            needed: usize::from(!matches!(source, VmMemorySource::Arena { .. })),
            count: usize::from(fd.is_some()),
        }),
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
