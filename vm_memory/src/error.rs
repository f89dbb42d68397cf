// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The errors of guest memory, one enum for construction and access.

use base::VolatileMemoryError;
use remain::sorted;
use thiserror::Error;

use crate::GuestAddress;

/// Errors of guest memory construction and access.
#[sorted]
#[derive(Debug, Error)]
pub enum Error {
    /// `addr + len` passes the end of the 64-bit address space.
    #[error("access of {len:#x} bytes at {addr} overflows the address space")]
    AccessOverflow {
        /// Start of the access.
        addr: GuestAddress,
        /// Its length.
        len: usize,
    },
    /// A region's offset into its backing plus its size overflows.
    #[error("region at {addr}: backing offset {offset:#x} + size {size:#x} overflows")]
    BackingOverflow {
        /// The region's guest address.
        addr: GuestAddress,
        /// Offset into the backing.
        offset: u64,
        /// The region's size.
        size: u64,
    },
    /// Two dirty bitmaps that must cover the same pages do not.
    #[error("dirty bitmap of {pages} pages cannot merge with one of {other} pages")]
    DirtyBitmapSizeMismatch {
        /// Pages of the bitmap asked.
        pages: usize,
        /// Pages of the other one.
        other: usize,
    },
    /// A dirty bitmap of this many pages is more than one is made for, or than there is
    /// memory for.
    #[error("no dirty bitmap of {pages} pages (at most {max}, and memory for it)")]
    DirtyBitmapTooLarge {
        /// Pages asked for.
        pages: usize,
        /// The most a bitmap covers.
        max: u64,
    },
    /// Pages to mark reach past the end of a dirty bitmap.
    #[error("pages {first}+{count} are outside a dirty bitmap of {pages} pages")]
    DirtyPagesOutOfRange {
        /// The first page.
        first: usize,
        /// How many.
        count: usize,
        /// The bitmap's size in pages.
        pages: usize,
    },
    /// A backing file, memfd or block device is shorter than the region mapped from it.
    #[error(
        "region at {addr} of {size:#x} bytes needs the file to reach {needed:#x} bytes; it has {file_size:#x}"
    )]
    FileTooShort {
        /// The region's guest address.
        addr: GuestAddress,
        /// The region's size.
        size: u64,
        /// `offset + size` in the file.
        needed: u64,
        /// The file's size.
        file_size: u64,
    },
    /// The region's host alignment is not a power of two.
    #[error("region at {addr}: alignment {align:#x} is not a power of two")]
    InvalidAlignment {
        /// The region's guest address.
        addr: GuestAddress,
        /// The alignment asked for.
        align: u64,
    },
    /// The address is in no region.
    #[error("guest address {0} is not in guest memory")]
    InvalidGuestAddress(GuestAddress),
    /// A range starts in memory but reaches a hole or the end.
    #[error("range {addr}+{len:#x} is not backed by guest memory at {hole}")]
    InvalidGuestRange {
        /// Start of the range.
        addr: GuestAddress,
        /// Its length.
        len: usize,
        /// The first address that is in no region.
        hole: GuestAddress,
    },
    /// Mapping a region failed.
    #[error("failed to map the region at {addr}: {source}")]
    MappingFailed {
        /// The region's guest address.
        addr: GuestAddress,
        /// What `base` answered.
        source: base::mmap::Error,
    },
    /// Creating or sealing the memfd that holds RAM failed.
    #[error("failed to create guest RAM: {0}")]
    MemoryCreationFailed(#[source] base::shm::Error),
    /// `msync` or `madvise` on a region failed.
    #[error("{op} of {addr}+{len:#x} failed: {source}")]
    MemoryOperation {
        /// `msync` or `remove_range`.
        op: &'static str,
        /// Start of the part that failed.
        addr: GuestAddress,
        /// Its length.
        len: usize,
        /// What `base` answered.
        source: base::mmap::Error,
    },
    /// No regions were given.
    #[error("guest memory needs at least one region")]
    NoRegions,
    /// A `SharedMemory` that refuses a shrink seal (created without `MFD_ALLOW_SEALING`, or
    /// sealed with `F_SEAL_SEAL` first). Guest memory over a memfd that someone could truncate
    /// would raise SIGBUS in the VMM on its next access.
    #[error("region at {addr}: its memfd cannot be sealed against shrinking (seals {seals:?})")]
    NotSealable {
        /// The region's guest address.
        addr: GuestAddress,
        /// The seals the memfd has.
        seals: base::MemfdSeals,
    },
    /// A range lies in guest memory but spans two regions, so it has no single host address.
    #[error("range {addr}+{len:#x} spans more than one region")]
    RangeSpansRegions {
        /// Start of the range.
        addr: GuestAddress,
        /// Its length.
        len: usize,
    },
    /// `addr + size` passes the end of the address space.
    #[error("region {addr}+{size:#x} passes the end of the address space")]
    RegionOverflow {
        /// The region's guest address.
        addr: GuestAddress,
        /// Its size.
        size: u64,
    },
    /// A region overlaps the one before it.
    #[error("region {addr}+{size:#x} overlaps region {prev_addr}+{prev_size:#x}")]
    RegionOverlap {
        /// The region's guest address.
        addr: GuestAddress,
        /// Its size.
        size: u64,
        /// The previous region's address.
        prev_addr: GuestAddress,
        /// Its size.
        prev_size: u64,
    },
    /// Regions must be given in increasing address order.
    #[error(
        "region {index} at {addr} comes after a region at {prev_addr}: regions must be sorted"
    )]
    RegionsUnsorted {
        /// Its position in the input.
        index: usize,
        /// The region's guest address.
        addr: GuestAddress,
        /// The previous region's address.
        prev_addr: GuestAddress,
    },
    /// The seals of a region's memfd could not be read.
    #[error("region at {addr}: cannot read the seals of its memfd: {source}")]
    SealFailed {
        /// The region's guest address.
        addr: GuestAddress,
        /// What `base` answered.
        source: base::shm::Error,
    },
    /// RAM regions, each at an offset of the memfd aligned as its mapping is, add up to more
    /// than a memfd can hold.
    #[error(
        "guest RAM up to the region at {addr} (host alignment {align:#x}) adds up to more than {max:#x} bytes",
        max = i64::MAX
    )]
    TooMuchMemory {
        /// The region at which the total passes the limit.
        addr: GuestAddress,
        /// Its host alignment.
        align: u64,
    },
    /// A guest address is not page-aligned.
    #[error("region address {addr} is not aligned to the page size {page:#x}")]
    UnalignedAddress {
        /// The region's guest address.
        addr: GuestAddress,
        /// The page size.
        page: usize,
    },
    /// A volatile object access at an address not aligned for its type.
    #[error("object at {addr} needs {align}-byte alignment")]
    UnalignedObject {
        /// The guest address.
        addr: GuestAddress,
        /// The alignment the type needs.
        align: usize,
    },
    /// A region size is not a whole number of pages.
    #[error("region at {addr}: size {size:#x} is not a multiple of the page size {page:#x}")]
    UnalignedSize {
        /// The region's guest address.
        addr: GuestAddress,
        /// Its size.
        size: u64,
        /// The page size.
        page: usize,
    },
    /// A volatile access refused by `base` (an object size that cannot be untorn).
    #[error("access at {addr}: {source}")]
    Volatile {
        /// The guest address.
        addr: GuestAddress,
        /// What `base` answered.
        source: VolatileMemoryError,
    },
    /// A zero-length range where one is needed.
    #[error("zero-length range at {addr}")]
    ZeroLength {
        /// The guest address.
        addr: GuestAddress,
    },
    /// A region of size 0.
    #[error("region at {addr} has size 0")]
    ZeroSizedRegion {
        /// The region's guest address.
        addr: GuestAddress,
    },
}

/// Result of guest memory operations.
pub type Result<T> = std::result::Result<T, Error>;
