// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! [`MemoryMappingArena`]: a reserved address range that holds sub-mappings and keeps books
//! of them.

use super::books::{ArenaMapping, Books};
use super::builder::{re_reserve, reserve, MapRequest};
use super::region::MappedRegion;
use super::{
    check_in_bounds, check_page_range, round_up_to_page, syscall_on_range, Backing, Error,
    MemoryMapping, Protection, Result,
};
use crate::descriptor::AsRawDescriptor;
use crate::pagesize;
use crate::volatile::{
    compute_end, VolatileMemory, VolatileMemoryError, VolatileMemoryResult, VolatileSlice,
};

/// A range of address space reserved up front, into which anonymous memory and descriptors are
/// mapped and unmapped at chosen offsets.
///
/// Unmapped space is a private `PROT_NONE` reservation: it commits no memory, any access to it
/// faults (a guest touching it through a slot gets an error, not a silent write), and the
/// address range never returns to the process while the arena lives. The arena tracks every
/// sub-mapping and refuses overlapping adds instead of silently replacing what is there.
///
/// ```
/// use base::{MappedRegion, MemoryMappingArena, Protection, SharedMemory};
/// let shm = SharedMemory::new("window", 8192).unwrap();
/// let mut arena = MemoryMappingArena::new(4 << 20).unwrap();
/// arena.add_fd_offset_protection(0, 8192, &shm, 0, Protection::read_write()).unwrap();
/// arena.add_anon(1 << 20, 4096).unwrap();
/// assert!(arena.add_anon(4096, 4096).is_err()); // overlaps the memfd
/// arena.remove(4096, 4096).unwrap(); // splits the memfd mapping in two
/// let spans: Vec<_> = arena.mappings().map(|m| (m.offset, m.size)).collect();
/// assert_eq!(spans, [(0, 4096), (1 << 20, 4096)]);
/// ```
#[derive(Debug)]
pub struct MemoryMappingArena {
    addr: *mut u8,
    size: usize,
    books: Books,
}

// SAFETY: the arena owns its address range until drop; the books are plain data, mutated only
// through `&mut self`.
unsafe impl Send for MemoryMappingArena {}
// SAFETY: shared access only reads the books and makes syscalls on owned ranges.
unsafe impl Sync for MemoryMappingArena {}

impl MemoryMappingArena {
    /// Reserves `size` bytes (rounded up to a page) with nothing mapped.
    pub fn new(size: usize) -> Result<MemoryMappingArena> {
        if size == 0 {
            return Err(Error::InvalidSize { what: "an arena" });
        }
        let size = round_up_to_page(size).ok_or(Error::Overflow {
            what: "arena size rounded to a page",
            base: size as u64,
            len: pagesize() as u64,
        })?;
        Ok(MemoryMappingArena {
            addr: reserve(size, "an arena", size, pagesize())?,
            size,
            books: Books::default(),
        })
    }

    /// Maps read-write anonymous shared memory at `offset`.
    pub fn add_anon(&mut self, offset: usize, size: usize) -> Result<()> {
        self.add_anon_protection(offset, size, Protection::read_write())
    }

    /// Maps anonymous shared memory with `prot` at `offset`.
    pub fn add_anon_protection(
        &mut self,
        offset: usize,
        size: usize,
        prot: Protection,
    ) -> Result<()> {
        self.add(offset, size, None, 0, prot)
    }

    /// Maps the start of `fd`, read-write, at `offset`.
    pub fn add_fd(&mut self, offset: usize, size: usize, fd: &dyn AsRawDescriptor) -> Result<()> {
        self.add_fd_offset(offset, size, fd, 0)
    }

    /// Maps `fd` from `fd_offset`, read-write, at `offset`.
    pub fn add_fd_offset(
        &mut self,
        offset: usize,
        size: usize,
        fd: &dyn AsRawDescriptor,
        fd_offset: u64,
    ) -> Result<()> {
        self.add_fd_offset_protection(offset, size, fd, fd_offset, Protection::read_write())
    }

    /// Maps `size` bytes of `fd` from `fd_offset` with `prot` at `offset`.
    ///
    /// `offset` must be page-aligned and `size` non-zero (it is rounded up to a page); the
    /// range must lie inside the arena and overlap no sub-mapping.
    pub fn add_fd_offset_protection(
        &mut self,
        offset: usize,
        size: usize,
        fd: &dyn AsRawDescriptor,
        fd_offset: u64,
        prot: Protection,
    ) -> Result<()> {
        self.add(offset, size, Some(fd), fd_offset, prot)
    }

    fn add(
        &mut self,
        offset: usize,
        size: usize,
        fd: Option<&dyn AsRawDescriptor>,
        fd_offset: u64,
        prot: Protection,
    ) -> Result<()> {
        let len = self.check_range(offset, size)?;
        if let Some(existing) = self.books.overlapping(offset, len).next() {
            return Err(Error::MappingOverlap {
                offset,
                size,
                existing_offset: existing.offset,
                existing_size: existing.size,
            });
        }
        let request = MapRequest {
            size,
            fd: fd.map(|d| d.as_raw_descriptor()),
            offset: fd_offset,
            protection: prot,
            populate: false,
        };
        request.check()?;
        // SAFETY: `offset..offset + len` lies inside our reservation and no sub-mapping uses
        // it (checked above), so replacing it affects nothing else.
        let at = unsafe { self.addr.add(offset) };
        // SAFETY: as above.
        if let Err(e) = unsafe { request.map(at, true) } {
            // A failed MAP_FIXED may have unmapped the range: put the reservation back so the
            // address space stays ours.
            // SAFETY: as above.
            if let Err(again) = unsafe { re_reserve(at, offset, len) } {
                log::error!("arena lost reservation at {offset:#x}+{len:#x}: {again}");
            }
            return Err(e);
        }
        self.books.insert(ArenaMapping {
            offset,
            size: len,
            protection: prot,
            backing: match fd {
                None => Backing::Anonymous,
                Some(_) => Backing::Descriptor { offset: fd_offset },
            },
        });
        Ok(())
    }

    /// Unmaps whatever is mapped in `offset..offset + size` and puts the reservation back. A
    /// sub-mapping that straddles an edge is split; unmapped parts are ignored, as `munmap`
    /// ignores them.
    pub fn remove(&mut self, offset: usize, size: usize) -> Result<()> {
        let len = self.check_range(offset, size)?;
        // SAFETY: the range lies inside our reservation; after this call the books forget
        // whatever was mapped there, so nothing of ours still uses it.
        unsafe { re_reserve(self.addr.add(offset), offset, len)? };
        self.books.remove(offset, len);
        Ok(())
    }

    /// Changes the protection of the mapped parts of `offset..offset + size`, as `mprotect`
    /// would, splitting sub-mappings at the edges. The reservation stays `PROT_NONE`.
    ///
    /// `offset` must be page-aligned; `size` is rounded up to a page; 0 does nothing; a range
    /// that touches no sub-mapping is [`Error::InvalidAddress`]. If the kernel refuses part of
    /// the change, the parts already changed are restored.
    pub fn protect(&mut self, offset: usize, size: usize, prot: Protection) -> Result<()> {
        let Some(len) = check_page_range(offset, size, self.size)? else {
            return Ok(());
        };
        let parts: Vec<(usize, usize, Protection)> = self
            .clipped(offset, len)
            .map(|m| (m.offset, m.size, m.protection))
            .collect();
        if parts.is_empty() {
            return Err(self.nothing_mapped(offset, size));
        }
        for (done, &(start, part_len, _)) in parts.iter().enumerate() {
            if let Err(e) = self.mprotect(start, part_len, prot) {
                for &(start, part_len, old) in &parts[..done] {
                    if let Err(again) = self.mprotect(start, part_len, old) {
                        log::error!("arena could not restore protection: {again}");
                    }
                }
                return Err(e);
            }
        }
        self.books.protect(offset, len, prot);
        Ok(())
    }

    fn mprotect(&self, offset: usize, len: usize, prot: Protection) -> Result<()> {
        syscall_on_range("mprotect", offset, len, || {
            // SAFETY: the range is a sub-mapping inside our reservation; mprotect changes only
            // its permissions.
            unsafe {
                libc::mprotect(
                    self.addr.add(offset) as *mut libc::c_void,
                    len,
                    prot.as_prot(),
                )
            }
        })
    }

    /// Every sub-mapping, in offset order.
    pub fn mappings(&self) -> impl Iterator<Item = ArenaMapping> + '_ {
        self.books.iter().copied()
    }

    /// The sub-mappings overlapping `offset..offset + len`, clipped to it.
    fn clipped(&self, offset: usize, len: usize) -> impl Iterator<Item = ArenaMapping> + '_ {
        let end = offset + len;
        self.books
            .overlapping(offset, len)
            .map(move |m| m.slice(m.offset.max(offset), (m.offset + m.size).min(end)))
    }

    /// Checks an add or remove range and returns its length rounded up to whole pages.
    fn check_range(&self, offset: usize, size: usize) -> Result<usize> {
        let page = pagesize();
        if !offset.is_multiple_of(page) {
            return Err(Error::NotPageAligned {
                what: "arena offset",
                value: offset as u64,
                page,
            });
        }
        if size == 0 {
            return Err(Error::InvalidSize {
                what: "an arena range",
            });
        }
        let overflow = || Error::Overflow {
            what: "arena offset + size",
            base: offset as u64,
            len: size as u64,
        };
        let len = round_up_to_page(size).ok_or_else(overflow)?;
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(len),
            Some(_) => Err(Error::InvalidAddress {
                offset,
                size,
                region_size: self.size,
                why: "runs past the end of the arena",
            }),
            None => Err(overflow()),
        }
    }

    fn nothing_mapped(&self, offset: usize, size: usize) -> Error {
        Error::InvalidAddress {
            offset,
            size,
            region_size: self.size,
            why: "touches no mapping in the arena",
        }
    }
}

// SAFETY: the arena owns `addr..addr + size` until drop, and `for_each_mapped_range` reports
// only ranges its books hold, each of which is mapped with the protection the books record.
unsafe impl MappedRegion for MemoryMappingArena {
    fn as_ptr(&self) -> *mut u8 {
        self.addr
    }

    fn size(&self) -> usize {
        self.size
    }

    fn add_fd_mapping(
        &mut self,
        offset: usize,
        size: usize,
        fd: &dyn AsRawDescriptor,
        fd_offset: u64,
        prot: Protection,
    ) -> Result<()> {
        self.add_fd_offset_protection(offset, size, fd, fd_offset, prot)
    }

    fn remove_mapping(&mut self, offset: usize, size: usize) -> Result<()> {
        self.remove(offset, size)
    }

    fn for_each_mapped_range(
        &self,
        offset: usize,
        len: usize,
        f: &mut dyn FnMut(usize, usize, Protection) -> Result<()>,
    ) -> Result<()> {
        check_in_bounds(offset, len, self.size)?;
        let mut touched = false;
        for m in self.clipped(offset, len) {
            touched = true;
            f(m.offset, m.size, m.protection)?;
        }
        if !touched {
            return Err(self.nothing_mapped(offset, len));
        }
        Ok(())
    }
}

impl VolatileMemory for MemoryMappingArena {
    /// A slice of `offset..offset + count`, which must be covered, without a gap, by read-write
    /// sub-mappings. The borrow keeps `remove` and `protect` away while the slice lives.
    fn get_slice(&self, offset: usize, count: usize) -> VolatileMemoryResult<VolatileSlice<'_>> {
        let end = compute_end(offset, count, self.size)?;
        let mut covered = offset;
        for m in self.books.overlapping(offset, count) {
            if m.offset > covered || m.protection != Protection::read_write() {
                break;
            }
            covered = m.offset + m.size;
        }
        if covered < end {
            return Err(VolatileMemoryError::NotMapped { offset, count });
        }
        // SAFETY: every byte of the range is mapped read-write (checked above) and stays so
        // while `&self` is borrowed, since only `&mut self` methods change the mappings.
        Ok(unsafe { VolatileSlice::from_raw_parts(self.addr.add(offset), count) })
    }
}

impl From<MemoryMapping> for MemoryMappingArena {
    /// An arena whose one sub-mapping is `mapping`, which it now owns.
    fn from(mapping: MemoryMapping) -> MemoryMappingArena {
        // The kernel mapped whole pages, so the rounded size is owned and cannot overflow.
        let size = round_up_to_page(mapping.size).unwrap_or(mapping.size);
        let mut books = Books::default();
        books.insert(ArenaMapping {
            offset: 0,
            size,
            protection: mapping.protection,
            backing: mapping.backing,
        });
        let addr = mapping.addr;
        // The arena takes over the unmapping.
        std::mem::forget(mapping);
        MemoryMappingArena { addr, size, books }
    }
}

impl Drop for MemoryMappingArena {
    fn drop(&mut self) {
        // SAFETY: we own `addr..addr + size` and nothing can use it after drop.
        unsafe { libc::munmap(self.addr as *mut libc::c_void, self.size) };
    }
}
