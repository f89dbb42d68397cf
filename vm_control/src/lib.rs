// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Memory requests between devices and the VM, over a [`base::Tube`].
//!
//! A device (possibly in another, sandboxed process) holds a [`VmMemoryClient`]; the VMM's
//! control loop runs a [`VmMemoryServer`] that executes each request against a
//! [`hypervisor::Vm`] and answers it exactly once.
//!
//! Region ids are opaque and belong to the connection that registered them: a request that
//! names another connection's region is refused exactly as one that names no region at all,
//! and when a connection closes, everything it registered is unregistered and its slots are
//! freed. Raw slot numbers never authorise anything.
//!
//! Each connection has a [`ClientPolicy`]: the guest-physical ranges it may register memory
//! into, and quotas of regions and bytes, checked before anything is mapped. An msync or
//! madvise runs off the serving thread, so one that blocks (a file on FUSE or NFS) holds up
//! only its own client; a client that does not read its answers is dropped at once.
//!
//! Descriptors travel attached to the request that uses them (at most one per request), so a
//! message is never about a descriptor it does not carry.

mod client;
mod ownership;
mod policy;
mod server;

use base::Protection;
use hypervisor::{MemCacheType, MemSlot};
use remain::sorted;
use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use client::{Error as ClientError, VmMemoryClient};
pub use ownership::ClientId;
pub use policy::{ClientPolicy, DEFAULT_MAX_BYTES, DEFAULT_MAX_REGIONS};
pub use server::{Error as ServerError, VmMemoryServer};

/// An opaque handle on a region a client registered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VmMemoryRegionId(u64);

/// What memory a registration maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmMemorySource {
    /// The whole memfd attached to the request.
    SharedMemory,
    /// `size` bytes of the descriptor attached to the request, from `offset`.
    Descriptor {
        /// Offset into the descriptor, page-aligned.
        offset: u64,
        /// Bytes to map.
        size: u64,
    },
    /// A fresh arena of `size` bytes with nothing mapped in it yet (see
    /// [`VmMemoryRequest::MapIntoArena`]).
    Arena {
        /// The arena's size.
        size: u64,
    },
}

/// Where a registration goes in the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmMemoryDestination {
    /// At this guest physical address.
    GuestPhysicalAddress(u64),
}

/// A request from a device to the VM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmMemoryRequest {
    /// Maps `source` into the guest at `dest` as a new slot; read-only unless `prot` allows
    /// writes.
    RegisterMemory {
        /// What to map.
        source: VmMemorySource,
        /// Where.
        dest: VmMemoryDestination,
        /// Host protection of the mapping.
        prot: Protection,
        /// Guest cache type.
        cache: MemCacheType,
    },
    /// Removes a registered region and frees its slot.
    UnregisterMemory(VmMemoryRegionId),
    /// Writes `offset..offset + size` of a region back to its file.
    MsyncArena {
        /// The region.
        id: VmMemoryRegionId,
        /// Start, page-aligned.
        offset: u64,
        /// Length.
        size: u64,
    },
    /// Asks the host to page out part of a region.
    MadvisePageout {
        /// The region.
        id: VmMemoryRegionId,
        /// Start, page-aligned.
        offset: u64,
        /// Length.
        size: u64,
    },
    /// Gives part of a region back to the host; the guest reads zeros there afterwards.
    MadviseRemove {
        /// The region.
        id: VmMemoryRegionId,
        /// Start, page-aligned.
        offset: u64,
        /// Length.
        size: u64,
    },
    /// Maps the attached descriptor (a [`VmMemorySource::Descriptor`]) into a registered arena
    /// at `offset`.
    MapIntoArena {
        /// The arena.
        id: VmMemoryRegionId,
        /// Where in the arena, page-aligned.
        offset: u64,
        /// What to map.
        source: VmMemorySource,
        /// Its protection.
        prot: Protection,
    },
    /// Unmaps part of a registered arena (it stays reserved).
    UnmapFromArena {
        /// The arena.
        id: VmMemoryRegionId,
        /// Start, page-aligned.
        offset: u64,
        /// Length.
        size: u64,
    },
}

/// The answer to one request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmMemoryResponse {
    /// The region was registered.
    RegisterMemory {
        /// Its handle, valid on this connection only.
        id: VmMemoryRegionId,
        /// The slot it occupies (for information: slots authorise nothing).
        slot: MemSlot,
    },
    /// Done.
    Ok,
    /// Refused or failed.
    Err(VmMemoryError),
}

/// Why a request was refused or failed. It travels over the wire, so it carries values and
/// text rather than the underlying error types.
#[sorted]
#[derive(Clone, Debug, Error, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmMemoryError {
    /// The request carried the wrong number of descriptors (all were closed).
    #[error("the request needs {needed} descriptors but carries {count}")]
    DescriptorCount {
        /// How many it needs.
        needed: usize,
        /// How many it carried.
        count: usize,
    },
    /// The VM or the host refused the operation.
    #[error("{op} failed (errno {errno}): {message}")]
    Failed {
        /// The operation.
        op: String,
        /// The errno that best describes the failure.
        errno: i32,
        /// What went wrong, with the values.
        message: String,
    },
    /// The message could not be received whole or did not decode as a request.
    #[error("invalid request: {reason}")]
    InvalidRequest {
        /// Why.
        reason: String,
    },
    /// The region is not an arena, so nothing can be mapped into or out of it.
    #[error("region {id:?} is not an arena")]
    NotAnArena {
        /// The region.
        id: VmMemoryRegionId,
    },
    /// The range is not inside any guest-physical range the VMM granted this client.
    #[error("range {gpa:#x}+{size:#x} is outside the ranges granted to this client")]
    OutsideGrant {
        /// Start of the range asked for.
        gpa: u64,
        /// Its size.
        size: u64,
    },
    /// The client already holds as many regions or bytes as its policy allows.
    #[error("{what} quota: {held} held + {asked} asked would pass the limit of {limit}")]
    QuotaExceeded {
        /// "regions" or "bytes".
        what: String,
        /// The limit.
        limit: u64,
        /// What the client holds now.
        held: u64,
        /// What the request asks for.
        asked: u64,
    },
    /// This connection registered no region with this id (it may be another's).
    #[error("no region {id:?} is registered by this client")]
    UnknownRegion {
        /// The id given.
        id: VmMemoryRegionId,
    },
    /// This source kind cannot be used here.
    #[error("source {given:?} cannot be used for {op}")]
    UnsupportedSource {
        /// The source given.
        given: VmMemorySource,
        /// The request.
        op: String,
    },
    /// A size of zero.
    #[error("{what} must not be zero")]
    ZeroSize {
        /// Which size.
        what: String,
    },
}
