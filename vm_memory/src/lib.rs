// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Guest physical memory for a virtual machine monitor, on top of `base`.
//!
//! - [`GuestAddress`]: an address in the guest's physical address space, with checked
//!   arithmetic.
//! - [`GuestMemory`]: the RAM layout (regions in one sealed memfd, or backed by a caller's
//!   file or device) and every way to read and write it by guest address.
//!
//! Region lookup checks the largest region first with one comparison, then costs a table load
//! and a bounds check for any sensible layout, falling back to a binary search only among
//! regions that share a table bucket. The fast path of every access is inlined at its call
//! site. Bad input, at construction or on access, gets a typed [`Error`] naming the address;
//! nothing here panics on input.
//!
//! With dirty tracking on ([`GuestMemory::set_dirty_tracking`]), every write the VMM makes
//! through `GuestMemory` marks its pages in the region's [`DirtyBitmap`]; with it off, the
//! write path pays one predictable branch on a flag it reads anyway.
//!
//! With the feature `rust-vmm`, [`GuestMemory`] also implements vm-memory 0.18's
//! `GuestMemoryBackend` (so `GuestMemory` and `Bytes`, by vm-memory's blanket impls), over our
//! regions and our lookup: rust-vmm's crates run on it unchanged.

mod access;
mod dirty;
mod error;
mod guest_address;
mod guest_memory;
mod layout;
mod options;
mod region;
mod region_table;
#[cfg(feature = "rust-vmm")]
pub mod rust_vmm;
mod write_slice;

/// rust-vmm's vm-memory, whose traits [`GuestMemory`] and [`MemoryRegion`] implement with the
/// feature `rust-vmm` (see the `rust_vmm` module's notes and `docs/guides/rust-vmm.md`). Use
/// this path, so that the traits are the same crate version as ours.
#[cfg(feature = "rust-vmm")]
pub use rust_vm_memory;

// The rust-vmm guide's example runs as a doc test (only then is the file read, so a packaged
// crate without the guide still builds).
#[cfg(all(doctest, feature = "rust-vmm"))]
#[doc = include_str!("../../docs/guides/rust-vmm.md")]
struct RustVmmGuide;

pub use dirty::{DirtyBitmap, DirtyRuns, MAX_DIRTY_PAGES};
pub use error::{Error, Result};
pub use guest_address::GuestAddress;
pub use guest_memory::GuestMemory;
pub use options::{FileBackedMapping, MemoryRegionOptions, MemoryRegionPurpose};
pub use region::{MemoryRegion, MemoryRegionInformation, RegionBacking};
pub use write_slice::WriteSlice;
