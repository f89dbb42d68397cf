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

mod access;
mod error;
mod guest_address;
mod guest_memory;
mod layout;
mod options;
mod region;
mod region_table;

pub use error::{Error, Result};
pub use guest_address::GuestAddress;
pub use guest_memory::GuestMemory;
pub use options::{FileBackedMapping, MemoryRegionOptions, MemoryRegionPurpose};
pub use region::{MemoryRegion, MemoryRegionInformation, RegionBacking};
