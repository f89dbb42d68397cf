// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! [`VmMemoryClient`]: what a device holds to ask the VM for memory operations.

use std::sync::Mutex;

use base::{AsRawDescriptor, Protection, Tube};
use hypervisor::{MemCacheType, MemSlot};
use remain::sorted;
use thiserror::Error;

use crate::{
    VmMemoryDestination, VmMemoryError, VmMemoryRegionId, VmMemoryRequest, VmMemoryResponse,
    VmMemorySource,
};

/// Errors of the client.
#[sorted]
#[derive(Debug, Error)]
pub enum Error {
    /// The server refused or failed the request.
    #[error("the VM refused the request: {0}")]
    Refused(#[source] VmMemoryError),
    /// The tube failed (the server is gone, or sent something unreadable).
    #[error("tube: {0}")]
    Tube(#[from] base::tube::Error),
    /// The server answered with a response that does not fit the request.
    #[error("unexpected answer {0}")]
    UnexpectedResponse(String),
}

/// Result of the client.
pub type Result<T> = std::result::Result<T, Error>;

/// One connection to a [`VmMemoryServer`](crate::VmMemoryServer). Each method sends one
/// request and blocks for its answer; calls from several threads are serialised, so answers
/// never cross.
#[derive(Debug)]
pub struct VmMemoryClient {
    tube: Mutex<Tube>,
}

impl VmMemoryClient {
    /// A client on `tube`, whose other end the server serves.
    pub fn new(tube: Tube) -> VmMemoryClient {
        VmMemoryClient {
            tube: Mutex::new(tube),
        }
    }

    /// The tube back, for a caller that speaks raw requests.
    pub fn into_tube(self) -> Tube {
        self.tube.into_inner().unwrap_or_else(|e| e.into_inner())
    }

    fn request(
        &self,
        request: &VmMemoryRequest,
        descriptor: Option<&dyn AsRawDescriptor>,
    ) -> Result<VmMemoryResponse> {
        let tube = self.tube.lock().unwrap_or_else(|e| e.into_inner());
        tube.send_with_descriptors(request, descriptor.as_slice())?;
        match tube.recv()? {
            VmMemoryResponse::Err(e) => Err(Error::Refused(e)),
            response => Ok(response),
        }
    }

    fn expect_ok(&self, request: &VmMemoryRequest) -> Result<()> {
        self.expect_ok_with(request, None)
    }

    fn expect_ok_with(
        &self,
        request: &VmMemoryRequest,
        descriptor: Option<&dyn AsRawDescriptor>,
    ) -> Result<()> {
        match self.request(request, descriptor)? {
            VmMemoryResponse::Ok => Ok(()),
            other => Err(Error::UnexpectedResponse(format!("{other:?}"))),
        }
    }

    /// Registers `source` at guest physical address `gpa`. `descriptor` is the memfd or file
    /// for [`VmMemorySource::SharedMemory`] and [`VmMemorySource::Descriptor`], and `None`
    /// for an arena. The region is read-only to the guest unless `prot` allows writes.
    pub fn register_memory(
        &self,
        source: VmMemorySource,
        descriptor: Option<&dyn AsRawDescriptor>,
        gpa: u64,
        prot: Protection,
        cache: MemCacheType,
    ) -> Result<(VmMemoryRegionId, MemSlot)> {
        let request = VmMemoryRequest::RegisterMemory {
            source,
            dest: VmMemoryDestination::GuestPhysicalAddress(gpa),
            prot,
            cache,
        };
        match self.request(&request, descriptor)? {
            VmMemoryResponse::RegisterMemory { id, slot } => Ok((id, slot)),
            other => Err(Error::UnexpectedResponse(format!("{other:?}"))),
        }
    }

    /// Unregisters a region this client registered.
    pub fn unregister_memory(&self, id: VmMemoryRegionId) -> Result<()> {
        self.expect_ok(&VmMemoryRequest::UnregisterMemory(id))
    }

    /// Writes `offset..offset + size` of a region back to its file.
    pub fn msync_arena(&self, id: VmMemoryRegionId, offset: u64, size: u64) -> Result<()> {
        self.expect_ok(&VmMemoryRequest::MsyncArena { id, offset, size })
    }

    /// Asks the host to page out part of a region.
    pub fn madvise_pageout(&self, id: VmMemoryRegionId, offset: u64, size: u64) -> Result<()> {
        self.expect_ok(&VmMemoryRequest::MadvisePageout { id, offset, size })
    }

    /// Gives part of a region back to the host.
    pub fn madvise_remove(&self, id: VmMemoryRegionId, offset: u64, size: u64) -> Result<()> {
        self.expect_ok(&VmMemoryRequest::MadviseRemove { id, offset, size })
    }

    /// Maps `size` bytes of `descriptor` from `fd_offset` into a registered arena at `offset`.
    pub fn map_into_arena(
        &self,
        id: VmMemoryRegionId,
        offset: u64,
        descriptor: &dyn AsRawDescriptor,
        fd_offset: u64,
        size: u64,
        prot: Protection,
    ) -> Result<()> {
        let request = VmMemoryRequest::MapIntoArena {
            id,
            offset,
            source: VmMemorySource::Descriptor {
                offset: fd_offset,
                size,
            },
            prot,
        };
        self.expect_ok_with(&request, Some(descriptor))
    }

    /// Unmaps part of a registered arena.
    pub fn unmap_from_arena(&self, id: VmMemoryRegionId, offset: u64, size: u64) -> Result<()> {
        self.expect_ok(&VmMemoryRequest::UnmapFromArena { id, offset, size })
    }
}
