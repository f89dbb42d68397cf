// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! [`GuestMemory`]: the guest's physical RAM layout, how it is built, and what it can say
//! about itself. The ways to read and write it by guest address are in `access.rs`.

use std::sync::Arc;

use base::{pagesize, MemfdSeals, MemoryMapping, SharedMemory};

use crate::region::{map_region, MemoryRegion, MemoryRegionInformation, RegionBacking};
use crate::region_table::{Entry, RegionTable};
use crate::{Error, GuestAddress, MemoryRegionOptions, Result};

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) table: RegionTable,
    pub(crate) regions: Box<[MemoryRegion]>,
    memory_size: u64,
}

/// Guest physical memory: sorted, non-overlapping regions, each a shared mapping of the RAM
/// memfd or of a caller's file.
///
/// Cloning is cheap (the region table is shared and immutable) and clones are `Send + Sync`.
///
/// ```
/// use vm_memory::{GuestAddress, GuestMemory};
/// let mem = GuestMemory::new(&[
///     (GuestAddress(0), 0x10000),
///     (GuestAddress(0x10000), 0x10000), // contiguous with the first
///     (GuestAddress(0x40000), 0x1000),  // after a hole
/// ])
/// .unwrap();
/// mem.write_obj_at_addr(0x1122_3344_5566_7788u64, GuestAddress(0xfffc)).unwrap(); // crosses
/// assert_eq!(mem.read_obj_from_addr::<u64>(GuestAddress(0xfffc)).unwrap(), 0x1122_3344_5566_7788);
/// assert!(mem.read_obj_from_addr::<u64>(GuestAddress(0x1fffc)).is_err()); // reaches the hole
/// ```
#[derive(Clone, Debug)]
pub struct GuestMemory {
    pub(crate) inner: Arc<Inner>,
}

impl GuestMemory {
    /// RAM regions of `(address, size)`, with default options.
    pub fn new(ranges: &[(GuestAddress, u64)]) -> Result<GuestMemory> {
        let with_options: Vec<_> = ranges
            .iter()
            .map(|&(addr, size)| (addr, size, MemoryRegionOptions::new()))
            .collect();
        GuestMemory::new_with_options(&with_options)
    }

    /// Regions of `(address, size, options)`, sorted by address. RAM regions are laid out in
    /// one memfd, at increasing offsets, which is then sealed against resizing; file-backed
    /// regions map their file.
    pub fn new_with_options(
        ranges: &[(GuestAddress, u64, MemoryRegionOptions)],
    ) -> Result<GuestMemory> {
        crate::layout::check_layout(ranges.iter().map(|r| (r.0, r.1)))?;
        let page = pagesize() as u64;
        // Lay RAM out in the memfd, each region at an offset aligned as its mapping is.
        let mut ram_offsets = Vec::with_capacity(ranges.len());
        let mut ram_size = 0u64;
        for (addr, size, options) in ranges {
            let align = crate::layout::check_align(*addr, options.align)?;
            if options.file_backed.is_some() {
                ram_offsets.push(None);
                continue;
            }
            let too_much = Error::TooMuchMemory { addr: *addr, align };
            let offset = ram_size.checked_next_multiple_of(align.max(page));
            let end = offset.and_then(|o| o.checked_add(*size));
            let (Some(offset), Some(end)) = (offset, end) else {
                return Err(too_much);
            };
            if end > i64::MAX as u64 {
                return Err(too_much);
            }
            ram_offsets.push(Some(offset));
            ram_size = end;
        }
        let shm = if ram_size > 0 {
            let shm =
                SharedMemory::new("guest_memory", ram_size).map_err(Error::MemoryCreationFailed)?;
            let mut seals = MemfdSeals::new();
            seals.set_grow_seal();
            seals.set_shrink_seal();
            seals.set_seal_seal();
            shm.add_seals(seals).map_err(Error::MemoryCreationFailed)?;
            Some(Arc::new(shm))
        } else {
            None
        };
        let mut regions = Vec::with_capacity(ranges.len());
        for ((addr, size, options), ram_offset) in ranges.iter().zip(ram_offsets) {
            let (backing, backing_offset) = match (&options.file_backed, ram_offset, &shm) {
                (Some(f), _, _) => (RegionBacking::File(f.file.clone()), f.offset),
                (None, Some(offset), Some(shm)) => {
                    (RegionBacking::SharedMemory(shm.clone()), offset)
                }
                // A RAM region adds its non-zero size to the memfd, so this would mean a
                // region of size 0, which `check_layout` refused already.
                _ => return Err(Error::ZeroSizedRegion { addr: *addr }),
            };
            regions.push(map_region(
                *addr,
                *size,
                backing,
                backing_offset,
                options.clone(),
            )?);
        }
        Ok(GuestMemory::from_checked_regions(regions))
    }

    /// Guest memory from regions the caller made with [`MemoryRegion::new_from_shm`] or
    /// [`MemoryRegion::new_from_file`]; they must be sorted and must not overlap.
    pub fn from_regions(regions: Vec<MemoryRegion>) -> Result<GuestMemory> {
        crate::layout::check_layout(regions.iter().map(|r| (r.guest_base, r.size() as u64)))?;
        Ok(GuestMemory::from_checked_regions(regions))
    }

    fn from_checked_regions(regions: Vec<MemoryRegion>) -> GuestMemory {
        let entries: Vec<Entry> = regions
            .iter()
            .map(|r| Entry {
                start: r.guest_base.0,
                len: r.size() as u64,
                host: r.mapping.as_ptr() as usize,
            })
            .collect();
        let memory_size = regions.iter().map(|r| r.size() as u64).sum();
        GuestMemory {
            inner: Arc::new(Inner {
                table: RegionTable::new(&entries),
                regions: regions.into_boxed_slice(),
                memory_size,
            }),
        }
    }

    /// How many regions there are.
    #[inline]
    pub fn num_regions(&self) -> u64 {
        self.inner.regions.len() as u64
    }

    /// The total size of all regions, holes excluded.
    #[inline]
    pub fn memory_size(&self) -> u64 {
        self.inner.memory_size
    }

    /// The address just past the last region.
    #[inline]
    pub fn end_addr(&self) -> GuestAddress {
        // Construction refuses an empty region list.
        self.inner
            .regions
            .last()
            .map_or(GuestAddress(0), |r| r.end())
    }

    /// Whether `addr` is in some region.
    #[inline]
    pub fn address_in_range(&self, addr: GuestAddress) -> bool {
        self.inner.table.find_host(addr.0, 1).is_some()
    }

    /// Whether any region overlaps `start..end`.
    pub fn range_overlap(&self, start: GuestAddress, end: GuestAddress) -> bool {
        let regions = &self.inner.regions;
        // The first region that ends after `start` is the only candidate.
        let i = regions.partition_point(|r| r.end_raw() <= start.0);
        i < regions.len() && regions[i].guest_base < end && start < end
    }

    /// `addr + offset`, if that is in some region.
    #[inline]
    pub fn checked_offset(&self, addr: GuestAddress, offset: u64) -> Option<GuestAddress> {
        addr.checked_add(offset)
            .filter(|a| self.address_in_range(*a))
    }

    /// Whether every byte of `addr..addr + size` is in guest memory, with no hole (it may
    /// span contiguous regions). A zero size asks whether `addr` itself is in memory.
    pub fn is_valid_range(&self, addr: GuestAddress, size: u64) -> bool {
        match usize::try_from(size) {
            Ok(len) => self.check_range(addr, len.max(1)).is_ok(),
            Err(_) => false,
        }
    }

    /// The regions, in address order, with what a hypervisor needs to make slots of them.
    pub fn regions(&self) -> impl Iterator<Item = MemoryRegionInformation<'_>> {
        self.inner
            .regions
            .iter()
            .enumerate()
            .map(|(index, r)| MemoryRegionInformation {
                index,
                guest_addr: r.guest_base,
                size: r.size(),
                host_addr: r.mapping.as_ptr() as usize,
                shm: &r.backing,
                shm_offset: r.backing_offset,
                options: &r.options,
            })
    }

    /// The region holding `addr`.
    #[inline]
    pub fn region_of(&self, addr: GuestAddress) -> Result<&MemoryRegion> {
        match self.inner.table.find(addr.0) {
            Some((index, _, _)) => Ok(&self.inner.regions[index]),
            None => Err(Error::InvalidGuestAddress(addr)),
        }
    }

    /// The mapping of the region holding `addr`, the offset of `addr` in that mapping, and the
    /// offset of `addr` in the region's backing (crosvm's `find_region`).
    pub fn find_region(&self, addr: GuestAddress) -> Result<(&MemoryMapping, usize, u64)> {
        let Some((index, _, offset)) = self.inner.table.find(addr.0) else {
            return Err(Error::InvalidGuestAddress(addr));
        };
        let region = &self.inner.regions[index];
        Ok((
            &region.mapping,
            offset as usize,
            region.backing_offset + offset,
        ))
    }

    /// The offset of `addr` in the memfd or file that backs its region (crosvm's
    /// `offset_from_base`): where a process handed that backing finds the byte.
    pub fn offset_from_base(&self, addr: GuestAddress) -> Result<u64> {
        self.find_region(addr)
            .map(|(_, _, backing_offset)| backing_offset)
    }

    /// What backs the region holding `addr` (crosvm's `shm_region`).
    pub fn shm_region(&self, addr: GuestAddress) -> Result<&RegionBacking> {
        self.region_of(addr).map(|r| &r.backing)
    }

    /// Every region, in address order.
    pub fn memory_regions(&self) -> &[MemoryRegion] {
        &self.inner.regions
    }

    /// Turns recording of the VMM's own writes on or off, for every clone of this memory.
    ///
    /// While it is off, a write costs what it did before tracking existed: the switch lives
    /// in the lookup itself, and with it on, writes take the path that marks their pages.
    /// While it is on, every write made through this `GuestMemory` (the `write_*` calls, and
    /// [`remove_range`](Self::remove_range)) marks its pages in the region's
    /// [`dirty_bitmap`](MemoryRegion::dirty_bitmap) after the bytes are written, and
    /// [`get_slice_at_addr`](Self::get_slice_at_addr) marks the slice's pages when it hands it
    /// out (so a device writing through such a slice must not hold it across a harvest), and
    /// [`get_slice_for_write`](Self::get_slice_for_write) when its guard is dropped. Writes
    /// through raw host addresses are the caller's to mark with
    /// [`mark_dirty`](Self::mark_dirty), and so are writes through vm-memory's traits (feature
    /// `rust-vmm`), which carry no bitmap. Switch it on before the baseline copy, while no
    /// other thread writes guest memory: a write racing the switch may go unrecorded.
    pub fn set_dirty_tracking(&self, on: bool) {
        self.inner.table.set_tracking(on);
    }

    /// Whether the VMM's writes are being recorded.
    pub fn dirty_tracking(&self) -> bool {
        self.inner.table.tracking()
    }

    /// A number that changes whenever the recording of the VMM's writes is switched off (on
    /// any clone). Tracking on, and the same epoch at two points, means that no write made
    /// through this memory between them went unrecorded: how a harvester can tell that its
    /// record since a baseline is whole, even if tracking was off for a while and back on.
    pub fn dirty_tracking_epoch(&self) -> u64 {
        self.inner.table.tracking_epoch()
    }

    /// Marks the pages of `addr..addr + len` (across contiguous regions) as written by the
    /// VMM, when tracking is on: for writes made through a raw host address. The whole range
    /// must be guest memory; `len` 0 marks nothing.
    pub fn mark_dirty(&self, addr: GuestAddress, len: usize) -> Result<()> {
        self.check_range(addr, len.max(1))?;
        if self.dirty_tracking() {
            self.mark_written(addr, len);
        }
        Ok(())
    }
}
