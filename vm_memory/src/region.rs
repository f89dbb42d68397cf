// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! One region of guest memory: [`MemoryRegion`], what backs it, and how it is mapped.

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;

use base::{MemoryMapping, MemoryMappingBuilder, SharedMemory, VolatileSlice};

use crate::{DirtyBitmap, Error, GuestAddress, MemoryRegionOptions, Result};

/// What holds a region's bytes.
#[derive(Clone, Debug)]
pub enum RegionBacking {
    /// A memfd: the sealed one that holds all RAM regions of a `GuestMemory`, or a caller's.
    SharedMemory(Arc<SharedMemory>),
    /// A caller's file or device.
    File(Arc<File>),
}

impl AsFd for RegionBacking {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            RegionBacking::SharedMemory(shm) => shm.as_fd(),
            RegionBacking::File(file) => file.as_fd(),
        }
    }
}

/// One mapped region of guest memory.
#[derive(Debug)]
pub struct MemoryRegion {
    pub(crate) guest_base: GuestAddress,
    pub(crate) mapping: MemoryMapping,
    pub(crate) backing: RegionBacking,
    pub(crate) backing_offset: u64,
    pub(crate) options: MemoryRegionOptions,
    /// Pages the VMM wrote while tracking was on (see `GuestMemory::set_dirty_tracking`).
    pub(crate) dirty: DirtyBitmap,
    /// The backing as vm-memory's `FileOffset`, made when first asked for.
    #[cfg(feature = "rust-vmm")]
    pub(crate) file_offset: std::sync::OnceLock<rust_vm_memory::FileOffset>,
}

impl MemoryRegion {
    /// A region of `size` bytes at `guest_base` mapped from `shm` at `offset`. The memfd is
    /// sealed against shrinking as it is mapped, so that nobody can truncate it under the
    /// mapping; one that refuses seals is refused ([`Error::NotSealable`]).
    pub fn new_from_shm(
        size: u64,
        guest_base: GuestAddress,
        offset: u64,
        shm: Arc<SharedMemory>,
    ) -> Result<MemoryRegion> {
        crate::layout::check_layout([(guest_base, size)].into_iter())?;
        map_region(
            guest_base,
            size,
            RegionBacking::SharedMemory(shm),
            offset,
            MemoryRegionOptions::new(),
        )
    }

    /// A region of `size` bytes at `guest_base` mapped shared from `file` at `offset` (see
    /// [`FileBackedMapping`](crate::FileBackedMapping) for what the file may be).
    pub fn new_from_file(
        size: u64,
        guest_base: GuestAddress,
        offset: u64,
        file: Arc<File>,
    ) -> Result<MemoryRegion> {
        crate::layout::check_layout([(guest_base, size)].into_iter())?;
        let options = MemoryRegionOptions::new().file_backed(file.clone(), offset);
        map_region(guest_base, size, RegionBacking::File(file), offset, options)
    }

    /// The guest address of the first byte.
    #[inline]
    pub fn start(&self) -> GuestAddress {
        self.guest_base
    }

    /// The guest address just past the last byte.
    pub fn end(&self) -> GuestAddress {
        GuestAddress(self.end_raw())
    }

    /// The size in bytes, a whole number of pages.
    #[inline]
    pub fn size(&self) -> usize {
        self.mapping.size()
    }

    /// Whether `addr` is in this region.
    pub fn contains(&self, addr: GuestAddress) -> bool {
        self.guest_base <= addr && addr.0 < self.end_raw()
    }

    /// The host mapping of the region.
    pub fn mapping(&self) -> &MemoryMapping {
        &self.mapping
    }

    /// What holds the region's bytes.
    pub fn backing(&self) -> &RegionBacking {
        &self.backing
    }

    /// Where in [`backing`](Self::backing) the region's first byte is.
    pub fn backing_offset(&self) -> u64 {
        self.backing_offset
    }

    /// The options the region was made with.
    pub fn options(&self) -> &MemoryRegionOptions {
        &self.options
    }

    /// The pages of this region that the VMM wrote through its `GuestMemory` while dirty
    /// tracking was on, and not yet harvested.
    pub fn dirty_bitmap(&self) -> &DirtyBitmap {
        &self.dirty
    }

    /// The end address as a number (regions never pass the end of the address space).
    #[inline]
    pub(crate) fn end_raw(&self) -> u64 {
        self.guest_base.0 + self.size() as u64
    }

    /// The region's bytes from `offset` for `len`, which the caller has bounds-checked.
    #[inline(always)]
    pub(crate) fn slice(&self, offset: usize, len: usize) -> VolatileSlice<'_> {
        debug_assert!(offset + len <= self.size());
        // SAFETY: the caller keeps `offset + len <= size`, the mapping is read-write and lives
        // as long as `&self`.
        unsafe { VolatileSlice::from_raw_parts(self.mapping.as_ptr().wrapping_add(offset), len) }
    }
}

/// What a hypervisor needs to register one region as a memory slot.
#[derive(Clone, Copy, Debug)]
pub struct MemoryRegionInformation<'a> {
    /// Position in the layout (regions are sorted by guest address).
    pub index: usize,
    /// Guest physical address of the first byte.
    pub guest_addr: GuestAddress,
    /// Size in bytes, a whole number of pages.
    pub size: usize,
    /// Host virtual address of the first byte.
    pub host_addr: usize,
    /// The memfd or file that holds the bytes.
    pub shm: &'a RegionBacking,
    /// Where in `shm` the region starts.
    pub shm_offset: u64,
    /// The options the region was made with.
    pub options: &'a MemoryRegionOptions,
}

/// Maps one region whose address and size `check_layout` accepted.
pub(crate) fn map_region(
    addr: GuestAddress,
    size: u64,
    backing: RegionBacking,
    backing_offset: u64,
    options: MemoryRegionOptions,
) -> Result<MemoryRegion> {
    let align = crate::layout::check_align(addr, options.align)?;
    if backing_offset.checked_add(size).is_none() {
        return Err(Error::BackingOverflow {
            addr,
            offset: backing_offset,
            size,
        });
    }
    // `base` refuses a regular file, memfd or block device that ends before the region does
    // (a page past the end would SIGBUS on first touch), and seals a memfd that allows seals
    // against shrinking.
    let mapping = MemoryMappingBuilder::new(size as usize)
        .from_descriptor(&backing)
        .offset(backing_offset)
        .align(align)
        .build()
        .map_err(|source| match source {
            base::mmap::Error::FileTooShort { file_size, end, .. } => Error::FileTooShort {
                addr,
                size,
                needed: end,
                file_size,
            },
            source => Error::MappingFailed { addr, source },
        })?;
    // A `SharedMemory` is guest memory's own kind of backing: it must not be able to shrink.
    // (A file that cannot be sealed is the caller's to keep whole; see `FileBackedMapping`.)
    if let RegionBacking::SharedMemory(shm) = &backing {
        let seals = shm
            .get_seals()
            .map_err(|source| Error::SealFailed { addr, source })?;
        if !seals.shrink_seal() {
            return Err(Error::NotSealable { addr, seals });
        }
    }
    if options.hugepages {
        mapping
            .use_hugepages()
            .map_err(|source| Error::MappingFailed { addr, source })?;
    }
    Ok(MemoryRegion {
        guest_base: addr,
        mapping,
        backing,
        backing_offset,
        options,
        dirty: DirtyBitmap::new(size as usize / base::pagesize())?,
        #[cfg(feature = "rust-vmm")]
        file_offset: std::sync::OnceLock::new(),
    })
}
