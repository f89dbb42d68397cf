// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Reading and writing [`GuestMemory`] by guest address.
//!
//! Every access first tries the fast path: one table lookup that yields the host address when
//! the whole access lies in one region. It is forced inline at the caller, so that a VMM's
//! many call sites each get the lookup and the load or store in line, with no call and no
//! `Result` passed through memory; everything else (crossing a region, errors) is out of line
//! and marked cold.

use std::mem::size_of;

use base::{MappedRegion, MemoryMapping, VolatileMemoryError, VolatileSlice};
use zerocopy::{FromBytes, Immutable, IntoBytes};

use crate::region::MemoryRegion;
use crate::{Error, GuestAddress, GuestMemory, Result, WriteSlice};

impl GuestMemory {
    /// The host address of `addr..addr + len` when the range lies in one region: the fast path
    /// of every access, from the lookup table alone.
    #[inline(always)]
    fn host_range(&self, addr: GuestAddress, len: usize) -> Option<*mut u8> {
        self.inner
            .table
            .find_host(addr.0, len as u64)
            .map(|host| host as *mut u8)
    }

    /// The slice for `addr..addr + len` when it lies in one region and may be written
    /// without marking it (dirty tracking is off).
    #[inline(always)]
    fn single_region_slice_for_write(
        &self,
        addr: GuestAddress,
        len: usize,
    ) -> Option<VolatileSlice<'_>> {
        let host = self.inner.table.find_host_for_write(addr.0, len as u64)? as *mut u8;
        // SAFETY: as in `single_region_slice`: the table said the range lies in one
        // region's live read-write mapping, which `self.inner` owns.
        Some(unsafe { VolatileSlice::from_raw_parts(host, len) })
    }

    /// The slice for `addr..addr + len` when it lies in one region.
    #[inline(always)]
    fn single_region_slice(&self, addr: GuestAddress, len: usize) -> Option<VolatileSlice<'_>> {
        let host = self.host_range(addr, len)?;
        // SAFETY: `host..host + len` lies in one region's live read-write mapping, owned by
        // `self.inner`, which the returned borrow keeps alive.
        Some(unsafe { VolatileSlice::from_raw_parts(host, len) })
    }

    /// The index of the region holding `addr`, the region, and the offset of `addr` in it.
    #[inline]
    fn locate(&self, addr: GuestAddress) -> Option<(usize, &MemoryRegion, usize)> {
        let (index, _, offset) = self.inner.table.find(addr.0)?;
        Some((index, &self.inner.regions[index], offset as usize))
    }

    /// Records a write of `addr..addr + len` when tracking is on: on the hot path, one load
    /// of a flag and a branch that is never taken while tracking is off.
    #[inline(always)]
    pub(crate) fn note_written(&self, addr: GuestAddress, len: usize) {
        if self.inner.table.tracking() {
            self.mark_written(addr, len);
        }
    }

    /// Marks the pages of `addr..addr + len`, which the caller has written (so it is guest
    /// memory), in their regions' bitmaps.
    #[inline(never)]
    pub(crate) fn mark_written(&self, addr: GuestAddress, len: usize) {
        if len == 0 {
            return;
        }
        let page = base::pagesize();
        // The range was just written, so it is all guest memory and this cannot fail.
        let _ = self.for_each_chunk(addr, len, |region, offset, n, _| {
            let first = offset / page;
            region
                .dirty
                .mark_checked(first, (offset + n).div_ceil(page) - first);
            Ok(())
        });
    }

    /// Checks that `addr..addr + len` is all guest memory, possibly across contiguous
    /// regions.
    pub(crate) fn check_range(&self, addr: GuestAddress, len: usize) -> Result<()> {
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
        while region.end_raw() < end.0 {
            match self.inner.regions.get(last + 1) {
                Some(next) if next.guest_base.0 == region.end_raw() => {
                    last += 1;
                    region = next;
                }
                _ => {
                    return Err(Error::InvalidGuestRange {
                        addr,
                        len,
                        hole: region.end(),
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
        let (_, region, offset) = self.locate(addr).ok_or(Error::InvalidGuestAddress(addr))?;
        let n = buf.len().min(region.size() - offset);
        Ok(region.slice(offset, n).copy_to(&mut buf[..n]))
    }

    /// Writes `buf` at `addr` up to the end of `addr`'s region; returns the count.
    pub fn write_at_addr(&self, buf: &[u8], addr: GuestAddress) -> Result<usize> {
        let (_, region, offset) = self.locate(addr).ok_or(Error::InvalidGuestAddress(addr))?;
        let n = buf.len().min(region.size() - offset);
        let written = region.slice(offset, n).copy_from(&buf[..n]);
        self.note_written(addr, written);
        Ok(written)
    }

    /// Fills all of `buf` from `addr`, across contiguous regions, or fails without reading.
    #[inline]
    pub fn read_exact_at_addr(&self, buf: &mut [u8], addr: GuestAddress) -> Result<()> {
        if let Some(slice) = self.single_region_slice(addr, buf.len()) {
            slice.copy_to(buf);
            return Ok(());
        }
        self.read_exact_across(buf, addr)
    }

    #[cold]
    #[inline(never)]
    fn read_exact_across(&self, buf: &mut [u8], addr: GuestAddress) -> Result<()> {
        self.for_each_chunk(addr, buf.len(), |region, offset, n, done| {
            region.slice(offset, n).copy_to(&mut buf[done..done + n]);
            Ok(())
        })
    }

    /// Writes all of `buf` at `addr`, across contiguous regions, or fails without writing.
    #[inline]
    pub fn write_all_at_addr(&self, buf: &[u8], addr: GuestAddress) -> Result<()> {
        if let Some(slice) = self.single_region_slice_for_write(addr, buf.len()) {
            slice.copy_from(buf);
            return Ok(());
        }
        self.write_all_across(buf, addr)
    }

    #[cold]
    #[inline(never)]
    fn write_all_across(&self, buf: &[u8], addr: GuestAddress) -> Result<()> {
        self.for_each_chunk(addr, buf.len(), |region, offset, n, done| {
            region.slice(offset, n).copy_from(&buf[done..done + n]);
            Ok(())
        })?;
        self.note_written(addr, buf.len());
        Ok(())
    }

    /// Reads a `T` at `addr` (unaligned allowed, across contiguous regions). Every naturally
    /// aligned 8-, 4- or 2-byte piece of it is read with one untorn load, in one region or
    /// across two; an aligned `T` of 1, 2, 4 or 8 bytes is a single load.
    #[inline(always)]
    pub fn read_obj_from_addr<T: FromBytes>(&self, addr: GuestAddress) -> Result<T> {
        match self.single_region_slice(addr, size_of::<T>()) {
            // The slice is exactly `T` long, so this read cannot fail.
            Some(slice) => slice.read_obj(0).map_err(|e| volatile_error(addr, e)),
            None => self.read_obj_across(addr),
        }
    }

    /// The slow path of object reads: across a region boundary, or an error.
    #[cold]
    #[inline(never)]
    fn read_obj_across<T: FromBytes>(&self, addr: GuestAddress) -> Result<T> {
        // The bytes go through a buffer of our own (on the stack for the usual small objects),
        // since a `T` may have padding that must not be viewed as bytes.
        let len = size_of::<T>();
        let mut small = [0u8; 64];
        let mut large = Vec::new();
        let bytes = if len <= small.len() {
            &mut small[..len]
        } else {
            large.resize(len, 0);
            &mut large[..]
        };
        self.for_each_chunk(addr, len, |region, offset, n, done| {
            region
                .slice(offset, n)
                .copy_to_untorn(&mut bytes[done..done + n]);
            Ok(())
        })?;
        // `bytes` is exactly `size_of::<T>()` long, so this cannot fail.
        T::read_from_bytes(bytes).map_err(|_| Error::AccessOverflow { addr, len })
    }

    /// Writes `val` at `addr` (unaligned allowed, across contiguous regions), with the
    /// untorn pieces of [`read_obj_from_addr`](Self::read_obj_from_addr).
    #[inline(always)]
    pub fn write_obj_at_addr<T: IntoBytes + Immutable>(
        &self,
        val: T,
        addr: GuestAddress,
    ) -> Result<()> {
        match self.single_region_slice_for_write(addr, size_of::<T>()) {
            Some(slice) => slice.write_obj(val, 0).map_err(|e| volatile_error(addr, e)),
            None => self.write_obj_across(val.as_bytes(), addr),
        }
    }

    /// The slow path of object writes: across a region boundary, or an error. Nothing is
    /// written unless every byte is guest memory.
    #[cold]
    #[inline(never)]
    fn write_obj_across(&self, bytes: &[u8], addr: GuestAddress) -> Result<()> {
        self.for_each_chunk(addr, bytes.len(), |region, offset, n, done| {
            region
                .slice(offset, n)
                .copy_from_untorn(&bytes[done..done + n]);
            Ok(())
        })?;
        self.note_written(addr, bytes.len());
        Ok(())
    }

    /// Reads a `T` at `addr`, which must be aligned for `T` (and, up to 8 bytes, to its size,
    /// which must then be 1, 2, 4 or 8): such objects are one untorn load and never cross a
    /// region (regions are page-aligned). Larger ones may cross contiguous regions and are
    /// read one untorn aligned piece at a time. The same rules hold in a region and across.
    #[inline(always)]
    pub fn read_obj_from_addr_volatile<T: FromBytes>(&self, addr: GuestAddress) -> Result<T> {
        check_volatile_obj::<T>(addr)?;
        match self.single_region_slice(addr, size_of::<T>()) {
            // The guest address was checked; an object of up to 8 bytes is then aligned in
            // the host too (host and guest agree within a page). A larger one needs no host
            // alignment for untorn pieces, and a type aligned beyond a page may not have it.
            Some(slice) if size_of::<T>() <= 8 => slice
                .read_obj_volatile(0)
                .map_err(|e| volatile_error(addr, e)),
            Some(slice) => slice.read_obj(0).map_err(|e| volatile_error(addr, e)),
            None => self.read_obj_across(addr),
        }
    }

    /// Writes `val` at `addr` with the rules of
    /// [`read_obj_from_addr_volatile`](Self::read_obj_from_addr_volatile).
    #[inline(always)]
    pub fn write_obj_at_addr_volatile<T: IntoBytes + Immutable>(
        &self,
        val: T,
        addr: GuestAddress,
    ) -> Result<()> {
        check_volatile_obj::<T>(addr)?;
        match self.single_region_slice_for_write(addr, size_of::<T>()) {
            // As in `read_obj_from_addr_volatile`.
            Some(slice) if size_of::<T>() <= 8 => slice
                .write_obj_volatile(val, 0)
                .map_err(|e| volatile_error(addr, e)),
            Some(slice) => slice.write_obj(val, 0).map_err(|e| volatile_error(addr, e)),
            // Across regions, or tracking on: untorn pieces, then the pages are marked.
            None => self.write_obj_across(val.as_bytes(), addr),
        }
    }

    /// A slice of `len` bytes at `addr`, which must lie in one region. With dirty tracking
    /// on, its pages are marked as it is handed out, since it may be written through: a
    /// harvest that runs after that and before the write takes the mark, and the write is
    /// then in no harvest. A writer that may race a harvest takes
    /// [`get_slice_for_write`](Self::get_slice_for_write) instead.
    pub fn get_slice_at_addr(&self, addr: GuestAddress, len: usize) -> Result<VolatileSlice<'_>> {
        if let Some(slice) = self.single_region_slice(addr, len) {
            self.note_written(addr, len);
            return Ok(slice);
        }
        self.check_range(addr, len)?;
        Err(Error::RangeSpansRegions { addr, len })
    }

    /// A slice of `len` bytes at `addr` (in one region, as for
    /// [`get_slice_at_addr`](Self::get_slice_at_addr)) to write through, whose pages are
    /// marked dirty (with tracking on) when the returned guard is dropped, after the writes.
    pub fn get_slice_for_write(&self, addr: GuestAddress, len: usize) -> Result<WriteSlice<'_>> {
        if let Some(slice) = self.single_region_slice(addr, len) {
            return Ok(WriteSlice::new(self, addr, slice));
        }
        self.check_range(addr, len)?;
        Err(Error::RangeSpansRegions { addr, len })
    }

    /// The host address of guest address `addr`. Valid while this `GuestMemory` (or a clone)
    /// lives.
    #[inline(always)]
    pub fn get_host_address(&self, addr: GuestAddress) -> Result<*const u8> {
        match self.inner.table.find_host(addr.0, 1) {
            Some(host) => Ok(host as *const u8),
            None => Err(Error::InvalidGuestAddress(addr)),
        }
    }

    /// The host address of `addr..addr + size`, which must be non-empty and lie in one
    /// region.
    #[inline]
    pub fn get_host_address_range(&self, addr: GuestAddress, size: usize) -> Result<*const u8> {
        if size == 0 {
            return Err(Error::ZeroLength { addr });
        }
        match self.host_range(addr, size) {
            Some(host) => Ok(host),
            None => self
                .get_slice_at_addr(addr, size)
                .map(|s| s.as_ptr() as *const u8),
        }
    }

    /// Gives the pages of `addr..addr + count` back to the host (`MADV_REMOVE`); reads return
    /// zeros afterwards (and, for file-backed regions, the file's range is punched out).
    /// `addr` must be page-aligned; `count` is rounded up to a page and may span contiguous
    /// regions.
    pub fn remove_range(&self, addr: GuestAddress, count: u64) -> Result<()> {
        self.region_op(addr, count, "remove_range", |mapping, offset, len| {
            mapping.remove_range(offset, len)
        })?;
        // The pages read zeros now: a snapshot must see them change.
        self.note_written(addr, count as usize);
        Ok(())
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
        let Ok(len) = usize::try_from(count) else {
            return Err(Error::AccessOverflow {
                addr,
                len: usize::MAX,
            });
        };
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

/// A refused volatile access, out of line: the fast paths never reach it for a valid type.
#[cold]
#[inline(never)]
fn volatile_error(addr: GuestAddress, source: VolatileMemoryError) -> Error {
    Error::Volatile { addr, source }
}

/// The rules of the `_volatile` accessors, checked before the address is looked up so that
/// the answer is the same inside a region and across one: an object of up to 8 bytes must be
/// 1, 2, 4 or 8 bytes long and aligned to its size; a larger one aligned for its type.
#[inline(always)]
fn check_volatile_obj<T>(addr: GuestAddress) -> Result<()> {
    let size = size_of::<T>();
    if size <= 8 && size != 0 && !size.is_power_of_two() {
        return Err(volatile_error(
            addr,
            VolatileMemoryError::NotAtomicSize { size },
        ));
    }
    let align = if size <= 8 {
        size.max(std::mem::align_of::<T>())
    } else {
        std::mem::align_of::<T>()
    };
    if !addr.0.is_multiple_of(align as u64) {
        return Err(Error::UnalignedObject { addr, align });
    }
    Ok(())
}
