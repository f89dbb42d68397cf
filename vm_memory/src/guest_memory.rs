// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! [`GuestMemory`]: the guest's physical RAM layout, and access to it by guest address.

use std::fs::File;
use std::mem::size_of;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;

use base::{
    pagesize, MappedRegion, MemfdSeals, MemoryMapping, MemoryMappingBuilder, SharedMemory,
    VolatileMemoryError, VolatileSlice,
};
use remain::sorted;
use thiserror::Error;
use zerocopy::{FromBytes, Immutable, IntoBytes};

use crate::region_table::{Entry, RegionTable};
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
    /// A backing file or memfd is shorter than the region mapped from it.
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
    /// A range lies in guest memory but spans two regions, so it has no single host address.
    #[error("range {addr}+{len:#x} spans more than one region")]
    RangeSpansRegions {
        /// Start of the range.
        addr: GuestAddress,
        /// Its length.
        len: usize,
    },
    /// Reading a backing file's size failed.
    #[error("failed to read the size of the file backing the region at {addr}: {source}")]
    RegionFileMetadata {
        /// The region's guest address.
        addr: GuestAddress,
        /// What the kernel answered.
        source: std::io::Error,
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
    /// RAM regions add up to more than a memfd can hold.
    #[error("guest RAM adds up to more than {max:#x} bytes", max = i64::MAX)]
    TooMuchMemory,
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

/// What a region is for. Hypervisors may treat some kinds specially; access is the same.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MemoryRegionPurpose {
    /// Ordinary guest RAM.
    #[default]
    GuestMemoryRegion,
    /// Firmware image (BIOS) memory.
    Bios,
    /// Memory reserved for protected-VM firmware.
    ProtectedFirmwareRegion,
    /// A bounce-buffer region for devices that cannot reach all of RAM.
    StaticSwiotlbRegion,
}

/// A caller's file that backs a region instead of the RAM memfd. It is mapped shared, so
/// guest writes reach the file (after [`GuestMemory::msync_range`] they are durable).
#[derive(Clone, Debug)]
pub struct FileBackedMapping {
    /// The file, opened read-write.
    pub file: Arc<File>,
    /// Where in the file the region starts; page-aligned.
    pub offset: u64,
}

/// How one region is made.
#[derive(Clone, Debug, Default)]
pub struct MemoryRegionOptions {
    /// What the region is for.
    pub purpose: MemoryRegionPurpose,
    /// Host alignment of the mapping (a power of two; 0 means a page). A 2 MiB alignment
    /// lets transparent huge pages back the region.
    pub align: u64,
    /// Ask the kernel for transparent huge pages (`MADV_HUGEPAGE`).
    pub hugepages: bool,
    /// Back the region with this file instead of the RAM memfd.
    pub file_backed: Option<FileBackedMapping>,
}

impl MemoryRegionOptions {
    /// Plain RAM, page-aligned, no huge page advice.
    pub fn new() -> MemoryRegionOptions {
        MemoryRegionOptions::default()
    }

    /// Sets the purpose.
    pub fn purpose(mut self, purpose: MemoryRegionPurpose) -> MemoryRegionOptions {
        self.purpose = purpose;
        self
    }

    /// Sets the host alignment.
    pub fn align(mut self, align: u64) -> MemoryRegionOptions {
        self.align = align;
        self
    }

    /// Asks for transparent huge pages.
    pub fn hugepages(mut self, hugepages: bool) -> MemoryRegionOptions {
        self.hugepages = hugepages;
        self
    }

    /// Backs the region with `file` from `offset`.
    pub fn file_backed(mut self, file: Arc<File>, offset: u64) -> MemoryRegionOptions {
        self.file_backed = Some(FileBackedMapping { file, offset });
        self
    }
}

/// What holds a region's bytes.
#[derive(Clone, Debug)]
pub enum RegionBacking {
    /// The sealed memfd that holds all RAM regions.
    SharedMemory(Arc<SharedMemory>),
    /// A caller's file.
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
    guest_base: GuestAddress,
    mapping: MemoryMapping,
    backing: RegionBacking,
    backing_offset: u64,
    options: MemoryRegionOptions,
}

impl MemoryRegion {
    fn size(&self) -> usize {
        self.mapping.size()
    }

    fn end(&self) -> u64 {
        self.guest_base.0 + self.size() as u64
    }

    /// Host pointer to the byte at `offset` into the region; `offset < size` is the caller's
    /// to ensure.
    #[inline(always)]
    fn host(&self, offset: usize) -> *mut u8 {
        self.mapping.as_ptr().wrapping_add(offset)
    }

    /// The region's bytes from `offset` for `len`, which the caller has bounds-checked.
    #[inline(always)]
    fn slice(&self, offset: usize, len: usize) -> VolatileSlice<'_> {
        debug_assert!(offset + len <= self.size());
        // SAFETY: the caller keeps `offset + len <= size`, the mapping is read-write and lives
        // as long as `&self`.
        unsafe { VolatileSlice::from_raw_parts(self.host(offset), len) }
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

#[derive(Debug)]
struct Inner {
    table: RegionTable,
    regions: Box<[MemoryRegion]>,
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
    inner: Arc<Inner>,
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
        check_layout(ranges.iter().map(|r| (r.0, r.1)))?;
        let page = pagesize() as u64;
        // Lay RAM out in the memfd, each region at an offset aligned as its mapping is.
        let mut ram_offsets = Vec::with_capacity(ranges.len());
        let mut ram_size = 0u64;
        for (addr, size, options) in ranges {
            let align = check_align(*addr, options.align)?;
            if options.file_backed.is_some() {
                ram_offsets.push(None);
                continue;
            }
            let offset = ram_size
                .checked_next_multiple_of(align.max(page))
                .ok_or(Error::TooMuchMemory)?;
            ram_offsets.push(Some(offset));
            ram_size = offset.checked_add(*size).ok_or(Error::TooMuchMemory)?;
        }
        if ram_size > i64::MAX as u64 {
            return Err(Error::TooMuchMemory);
        }
        let shm = if ram_size > 0 {
            let mut shm =
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
        check_layout(regions.iter().map(|r| (r.guest_base, r.size() as u64)))?;
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
        GuestAddress(self.inner.regions[self.inner.regions.len() - 1].end())
    }

    /// Whether `addr` is in some region.
    #[inline]
    pub fn address_in_range(&self, addr: GuestAddress) -> bool {
        self.inner.table.find(addr.0).is_some()
    }

    /// Whether any region overlaps `start..end`.
    pub fn range_overlap(&self, start: GuestAddress, end: GuestAddress) -> bool {
        let regions = &self.inner.regions;
        // The first region that ends after `start` is the only candidate.
        let i = regions.partition_point(|r| r.end() <= start.0);
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

    /// The index of the region holding `addr`, the region, and the offset of `addr` in it.
    #[inline(always)]
    fn locate(&self, addr: GuestAddress) -> Option<(usize, &MemoryRegion, usize)> {
        let (index, _, offset) = self.inner.table.find(addr.0)?;
        Some((index, &self.inner.regions[index], offset as usize))
    }

    /// The region holding `addr` and the offset of `addr` in it.
    #[inline(always)]
    fn find(&self, addr: GuestAddress) -> Option<(&MemoryRegion, usize)> {
        self.locate(addr)
            .map(|(_, region, offset)| (region, offset))
    }

    /// The slice for `addr..addr + len` when it lies in one region. This is every access's
    /// fast path, so it works from the table's compact entry alone.
    #[inline(always)]
    fn single_region_slice(&self, addr: GuestAddress, len: usize) -> Option<VolatileSlice<'_>> {
        let (_, entry, offset) = self.inner.table.find(addr.0)?;
        if len as u64 > entry.len - offset {
            return None;
        }
        // SAFETY: the entry describes a live read-write mapping owned by `self.inner`, and
        // `offset + len <= entry.len` was just checked.
        Some(unsafe {
            VolatileSlice::from_raw_parts((entry.host + offset as usize) as *mut u8, len)
        })
    }

    /// Checks that `addr..addr + len` is all guest memory, possibly across contiguous
    /// regions.
    fn check_range(&self, addr: GuestAddress, len: usize) -> Result<()> {
        self.for_each_chunk(addr, len, |_, _, _, _| Ok(()))
    }

    /// Calls `f(region, offset, len, done)` for each per-region piece of `addr..addr + len`,
    /// in order, where `done` is how many bytes came before it. Fails before calling `f` if
    /// any byte of the range is outside guest memory.
    fn for_each_chunk(
        &self,
        addr: GuestAddress,
        len: usize,
        mut f: impl FnMut(&MemoryRegion, usize, usize, usize) -> Result<()>,
    ) -> Result<()> {
        let (first, mut region, offset) =
            self.locate(addr).ok_or(Error::InvalidGuestAddress(addr))?;
        let end = addr
            .checked_add(len as u64)
            .ok_or(Error::AccessOverflow { addr, len })?;
        // First pass: every byte is backed. Regions are sorted, so the next piece, if any,
        // must be the very next region, starting exactly where this one ends.
        let mut last = first;
        while region.end() < end.0 {
            match self.inner.regions.get(last + 1) {
                Some(next) if next.guest_base.0 == region.end() => {
                    last += 1;
                    region = next;
                }
                _ => {
                    return Err(Error::InvalidGuestRange {
                        addr,
                        len,
                        hole: GuestAddress(region.end()),
                    })
                }
            }
        }
        // Second pass: hand out the pieces.
        let (mut done, mut offset) = (0, offset);
        for region in &self.inner.regions[first..=last] {
            let n = (len - done).min(region.size() - offset);
            f(region, offset, n, done)?;
            done += n;
            offset = 0;
        }
        Ok(())
    }

    /// Reads from `addr` into `buf` up to the end of `addr`'s region; returns the count.
    pub fn read_at_addr(&self, buf: &mut [u8], addr: GuestAddress) -> Result<usize> {
        let (region, offset) = self.find(addr).ok_or(Error::InvalidGuestAddress(addr))?;
        let n = buf.len().min(region.size() - offset);
        Ok(region.slice(offset, n).copy_to(&mut buf[..n]))
    }

    /// Writes `buf` at `addr` up to the end of `addr`'s region; returns the count.
    pub fn write_at_addr(&self, buf: &[u8], addr: GuestAddress) -> Result<usize> {
        let (region, offset) = self.find(addr).ok_or(Error::InvalidGuestAddress(addr))?;
        let n = buf.len().min(region.size() - offset);
        Ok(region.slice(offset, n).copy_from(&buf[..n]))
    }

    /// Fills all of `buf` from `addr`, across contiguous regions, or fails without reading.
    #[inline]
    pub fn read_exact_at_addr(&self, buf: &mut [u8], addr: GuestAddress) -> Result<()> {
        if let Some(slice) = self.single_region_slice(addr, buf.len()) {
            slice.copy_to(buf);
            return Ok(());
        }
        self.for_each_chunk(addr, buf.len(), |region, offset, n, done| {
            region.slice(offset, n).copy_to(&mut buf[done..done + n]);
            Ok(())
        })
    }

    /// Writes all of `buf` at `addr`, across contiguous regions, or fails without writing.
    #[inline]
    pub fn write_all_at_addr(&self, buf: &[u8], addr: GuestAddress) -> Result<()> {
        if let Some(slice) = self.single_region_slice(addr, buf.len()) {
            slice.copy_from(buf);
            return Ok(());
        }
        self.for_each_chunk(addr, buf.len(), |region, offset, n, done| {
            region.slice(offset, n).copy_from(&buf[done..done + n]);
            Ok(())
        })
    }

    /// Reads a `T` at `addr` (unaligned allowed, across contiguous regions). Objects of 1, 2,
    /// 4 or 8 bytes at an aligned address are read in one untorn load.
    #[inline]
    pub fn read_obj_from_addr<T: FromBytes>(&self, addr: GuestAddress) -> Result<T> {
        if let Some(slice) = self.single_region_slice(addr, size_of::<T>()) {
            return slice
                .read_obj(0)
                .map_err(|source| Error::Volatile { addr, source });
        }
        self.read_obj_across(addr)
    }

    #[cold]
    fn read_obj_across<T: FromBytes>(&self, addr: GuestAddress) -> Result<T> {
        let mut val = T::new_zeroed();
        let dst = &mut val as *mut T as *mut u8;
        self.for_each_chunk(addr, size_of::<T>(), |region, offset, n, done| {
            // SAFETY: `done + n <= size_of::<T>()`, so the write stays inside `val`, and any
            // bytes make a valid `T` (FromBytes).
            let part = unsafe { VolatileSlice::from_raw_parts(dst.add(done), n) };
            region.slice(offset, n).copy_to_volatile_slice(part);
            Ok(())
        })?;
        Ok(val)
    }

    /// Writes `val` at `addr` (unaligned allowed, across contiguous regions). Objects of 1, 2,
    /// 4 or 8 bytes at an aligned address are written in one untorn store.
    #[inline]
    pub fn write_obj_at_addr<T: IntoBytes + Immutable>(
        &self,
        val: T,
        addr: GuestAddress,
    ) -> Result<()> {
        if let Some(slice) = self.single_region_slice(addr, size_of::<T>()) {
            return slice
                .write_obj(val, 0)
                .map_err(|source| Error::Volatile { addr, source });
        }
        self.write_all_at_addr(val.as_bytes(), addr)
    }

    /// Reads a `T` at `addr`, which must be aligned for `T`; 1, 2, 4 and 8-byte objects in one
    /// untorn load. Such objects never cross a region (regions are page-aligned).
    #[inline]
    pub fn read_obj_from_addr_volatile<T: FromBytes>(&self, addr: GuestAddress) -> Result<T> {
        check_obj_alignment::<T>(addr)?;
        if let Some(slice) = self.single_region_slice(addr, size_of::<T>()) {
            return slice
                .read_obj_volatile(0)
                .map_err(|source| Error::Volatile { addr, source });
        }
        self.read_obj_across(addr)
    }

    /// Writes `val` at `addr`, which must be aligned for `T`; 1, 2, 4 and 8-byte objects in
    /// one untorn store.
    #[inline]
    pub fn write_obj_at_addr_volatile<T: IntoBytes + Immutable>(
        &self,
        val: T,
        addr: GuestAddress,
    ) -> Result<()> {
        check_obj_alignment::<T>(addr)?;
        if let Some(slice) = self.single_region_slice(addr, size_of::<T>()) {
            return slice
                .write_obj_volatile(val, 0)
                .map_err(|source| Error::Volatile { addr, source });
        }
        self.write_all_at_addr(val.as_bytes(), addr)
    }

    /// A slice of `len` bytes at `addr`, which must lie in one region.
    pub fn get_slice_at_addr(&self, addr: GuestAddress, len: usize) -> Result<VolatileSlice<'_>> {
        if let Some(slice) = self.single_region_slice(addr, len) {
            return Ok(slice);
        }
        self.check_range(addr, len)?;
        Err(Error::RangeSpansRegions { addr, len })
    }

    /// The host address of guest address `addr`. Valid while this `GuestMemory` (or a clone)
    /// lives.
    #[inline]
    pub fn get_host_address(&self, addr: GuestAddress) -> Result<*const u8> {
        let (region, offset) = self.find(addr).ok_or(Error::InvalidGuestAddress(addr))?;
        Ok(region.host(offset))
    }

    /// The host address of `addr..addr + size`, which must be non-empty and lie in one
    /// region.
    pub fn get_host_address_range(&self, addr: GuestAddress, size: usize) -> Result<*const u8> {
        if size == 0 {
            return Err(Error::ZeroLength { addr });
        }
        Ok(self.get_slice_at_addr(addr, size)?.as_ptr())
    }

    /// Gives the pages of `addr..addr + count` back to the host (`MADV_REMOVE`); reads return
    /// zeros afterwards (and, for file-backed regions, the file's range is punched out).
    /// `addr` must be page-aligned; `count` is rounded up to a page and may span contiguous
    /// regions.
    pub fn remove_range(&self, addr: GuestAddress, count: u64) -> Result<()> {
        self.region_op(addr, count, "remove_range", |mapping, offset, len| {
            mapping.remove_range(offset, len)
        })
    }

    /// Writes dirty pages of `addr..addr + count` back to their file and waits. Meaningful
    /// for file-backed regions; harmless on RAM. Same range rules as
    /// [`remove_range`](Self::remove_range).
    pub fn msync_range(&self, addr: GuestAddress, count: u64) -> Result<()> {
        self.region_op(addr, count, "msync", |mapping, offset, len| {
            (mapping as &dyn MappedRegion).msync(offset, len)
        })
    }

    fn region_op(
        &self,
        addr: GuestAddress,
        count: u64,
        op: &'static str,
        f: impl Fn(&MemoryMapping, usize, usize) -> base::mmap::Result<()>,
    ) -> Result<()> {
        let len = usize::try_from(count).map_err(|_| Error::AccessOverflow {
            addr,
            len: usize::MAX,
        })?;
        if len == 0 {
            return self.check_range(addr, 1);
        }
        self.for_each_chunk(addr, len, |region, offset, n, done| {
            f(&region.mapping, offset, n).map_err(|source| Error::MemoryOperation {
                op,
                addr: GuestAddress(addr.0 + done as u64),
                len: n,
                source,
            })
        })
    }
}

impl MemoryRegion {
    /// A region of `size` bytes at `guest_base` mapped from `shm` at `offset`.
    pub fn new_from_shm(
        size: u64,
        guest_base: GuestAddress,
        offset: u64,
        shm: Arc<SharedMemory>,
    ) -> Result<MemoryRegion> {
        check_layout([(guest_base, size)].into_iter())?;
        map_region(
            guest_base,
            size,
            RegionBacking::SharedMemory(shm),
            offset,
            MemoryRegionOptions::new(),
        )
    }

    /// A region of `size` bytes at `guest_base` mapped shared from `file` at `offset`.
    pub fn new_from_file(
        size: u64,
        guest_base: GuestAddress,
        offset: u64,
        file: Arc<File>,
    ) -> Result<MemoryRegion> {
        check_layout([(guest_base, size)].into_iter())?;
        let options = MemoryRegionOptions::new().file_backed(file.clone(), offset);
        map_region(guest_base, size, RegionBacking::File(file), offset, options)
    }
}

/// Checks sizes, alignment, overflow, order and overlap of a region list.
fn check_layout(ranges: impl Iterator<Item = (GuestAddress, u64)>) -> Result<()> {
    let page = pagesize();
    let mut prev: Option<(GuestAddress, u64)> = None;
    let mut count = 0;
    for (index, (addr, size)) in ranges.enumerate() {
        count += 1;
        if size == 0 {
            return Err(Error::ZeroSizedRegion { addr });
        }
        if addr.0 % page as u64 != 0 {
            return Err(Error::UnalignedAddress { addr, page });
        }
        if size % page as u64 != 0 {
            return Err(Error::UnalignedSize { addr, size, page });
        }
        if addr.checked_add(size).is_none() || usize::try_from(size).is_err() {
            return Err(Error::RegionOverflow { addr, size });
        }
        if let Some((prev_addr, prev_size)) = prev {
            if addr < prev_addr {
                return Err(Error::RegionsUnsorted {
                    index,
                    addr,
                    prev_addr,
                });
            }
            if addr.0 < prev_addr.0 + prev_size {
                return Err(Error::RegionOverlap {
                    addr,
                    size,
                    prev_addr,
                    prev_size,
                });
            }
        }
        prev = Some((addr, size));
    }
    if count == 0 {
        return Err(Error::NoRegions);
    }
    Ok(())
}

/// The host alignment to use for a region: a power of two (0 means a page).
fn check_align(addr: GuestAddress, align: u64) -> Result<u64> {
    match align {
        0 => Ok(pagesize() as u64),
        a if a.is_power_of_two() => Ok(a),
        a => Err(Error::InvalidAlignment { addr, align: a }),
    }
}

fn check_obj_alignment<T>(addr: GuestAddress) -> Result<()> {
    let size = size_of::<T>();
    let align = if size <= 8 && size.is_power_of_two() {
        size.max(std::mem::align_of::<T>())
    } else {
        std::mem::align_of::<T>()
    };
    if !addr.0.is_multiple_of(align as u64) {
        return Err(Error::UnalignedObject { addr, align });
    }
    Ok(())
}

fn map_region(
    addr: GuestAddress,
    size: u64,
    backing: RegionBacking,
    backing_offset: u64,
    options: MemoryRegionOptions,
) -> Result<MemoryRegion> {
    let align = check_align(addr, options.align)?;
    // Every byte of the region must be backed: a page past the end of its file or memfd
    // would SIGBUS the VMM on first touch (base lets a growable memfd be mapped past its end,
    // but guest memory never grows its backing).
    let backing_size = match &backing {
        RegionBacking::SharedMemory(shm) => shm.size(),
        RegionBacking::File(file) => file
            .metadata()
            .map_err(|source| Error::RegionFileMetadata { addr, source })?
            .len(),
    };
    let needed = backing_offset.checked_add(size);
    if !matches!(needed, Some(n) if n <= backing_size) {
        return Err(Error::FileTooShort {
            addr,
            size,
            needed: needed.unwrap_or(u64::MAX),
            file_size: backing_size,
        });
    }
    let mapping_error = |source| Error::MappingFailed { addr, source };
    // `check_layout` proved the size fits in usize.
    let mapping = MemoryMappingBuilder::new(size as usize)
        .from_descriptor(&backing)
        .offset(backing_offset)
        .align(align)
        .build()
        .map_err(mapping_error)?;
    if options.hugepages {
        mapping.use_hugepages().map_err(mapping_error)?;
    }
    Ok(MemoryRegion {
        guest_base: addr,
        mapping,
        backing,
        backing_offset,
        options,
    })
}
