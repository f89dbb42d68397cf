// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Linux building blocks for the memory half of a virtual machine monitor.
//!
//! Names follow crosvm's `base` crate, so that code written against it ports with little
//! change:
//!
//! - descriptors: [`SafeDescriptor`], [`AsRawDescriptor`], [`FromRawDescriptor`],
//!   [`IntoRawDescriptor`];
//! - [`SharedMemory`] on a memfd, with [`MemfdSeals`];
//! - [`MemoryMapping`] built by [`MemoryMappingBuilder`], and [`MemoryMappingArena`], a
//!   reserved range that keeps books of what is mapped in it; both are [`MappedRegion`]s, as is
//!   [`ExternalMapping`];
//! - [`VolatileSlice`] and [`VolatileMemory`] for memory a guest may change at any time;
//! - [`cache`] flush for memory read behind the CPU's caches;
//! - [`page_cache::cachestat`], which counts a file's dirty pages: the proof that an msync
//!   reached the file;
//! - [`Tube`], a message channel with descriptors attached, between threads or processes.
//!
//! Every module has its own error enum whose messages name the offending values. Nothing
//! reachable from this API panics on bad input.

pub mod cache;
pub mod descriptor;
pub mod mmap;
pub mod page_cache;
pub mod shm;
pub mod tube;
pub mod volatile;

use std::sync::OnceLock;

pub use descriptor::{
    AsRawDescriptor, FromRawDescriptor, IntoRawDescriptor, RawDescriptor, SafeDescriptor,
};
pub use mmap::{
    ArenaMapping, Backing, ExternalMapping, MappedRegion, MemoryMapping, MemoryMappingArena,
    MemoryMappingBuilder, Protection,
};
pub use shm::{MemfdSeals, SharedMemory};
pub use tube::Tube;
pub use volatile::{VolatileMemory, VolatileMemoryError, VolatileMemoryResult, VolatileSlice};

/// The system page size in bytes.
pub fn pagesize() -> usize {
    static PAGE: OnceLock<usize> = OnceLock::new();
    *PAGE.get_or_init(|| {
        // SAFETY: sysconf reads a system setting and touches no memory of ours.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        // POSIX guarantees a positive page size; fall back to the smallest Linux one anyway.
        usize::try_from(page)
            .ok()
            .filter(|p| p.is_power_of_two())
            .unwrap_or(4096)
    })
}
