// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! [`MappedRegion`]: what a hypervisor needs of a piece of host memory to hand it to a guest.

use super::{
    check_caller_range, check_in_bounds, check_page_range, madvise_range, round_up_to_page,
    syscall_on_range, CallerRange, Error, MemoryMapping, Protection, Result,
};
use crate::descriptor::AsRawDescriptor;

/// A range of host address space that a hypervisor can register as guest memory.
///
/// # Safety
///
/// Implementers promise that `as_ptr()` is page-aligned and that the whole pages covering
/// `as_ptr()..as_ptr() + size()` are address space owned by the value (mapped or reserved)
/// for as long as it lives, never unmapped behind the caller's back; `msync` and `madvise`
/// round lengths up to a page and so may act on the last page as a whole. They also promise
/// that [`for_each_mapped_range`](Self::for_each_mapped_range) reports only parts of the range
/// asked for that are really mapped, each with a protection it really allows: a caller may
/// read what it reports readable and write what it reports writable.
pub unsafe trait MappedRegion: Send + Sync {
    /// The first byte's address.
    fn as_ptr(&self) -> *mut u8;

    /// The length in bytes.
    fn size(&self) -> usize;

    /// Maps `size` bytes of `fd` at `fd_offset` into the region at `offset`. Only regions that
    /// manage sub-mappings (arenas) support this.
    fn add_fd_mapping(
        &mut self,
        offset: usize,
        size: usize,
        fd: &dyn AsRawDescriptor,
        fd_offset: u64,
        prot: Protection,
    ) -> Result<()> {
        let _ = (offset, size, fd, fd_offset, prot);
        Err(Error::Unsupported {
            op: "add_fd_mapping",
        })
    }

    /// Removes what is mapped at `offset..offset + size`. Only arenas support this.
    fn remove_mapping(&mut self, offset: usize, size: usize) -> Result<()> {
        let _ = (offset, size);
        Err(Error::Unsupported {
            op: "remove_mapping",
        })
    }

    /// Calls `f(offset, len, protection)` for each mapped part of `offset..offset + len`, in
    /// order, and stops at the first error. The range must lie inside the region's pages,
    /// else [`Error::InvalidAddress`] (or [`Error::Overflow`]). A region that is mapped in
    /// whole calls `f` once with the range itself; an arena skips its unmapped space, calls
    /// `f` once per sub-mapping with that sub-mapping's protection, and answers
    /// [`Error::InvalidAddress`] when the range touches nothing mapped.
    fn for_each_mapped_range(
        &self,
        offset: usize,
        len: usize,
        f: &mut dyn FnMut(usize, usize, Protection) -> Result<()>,
    ) -> Result<()>;
}

/// The bytes a region of `size` owns: its whole pages.
pub(crate) fn owned_size(size: usize) -> usize {
    // A region's pages are mapped, so rounding its size cannot overflow; saturate regardless.
    round_up_to_page(size).unwrap_or(usize::MAX)
}

impl<'a> dyn MappedRegion + 'a {
    /// Writes dirty pages of `offset..offset + size` back to their file and waits (`MS_SYNC`).
    /// `offset` must be page-aligned; `size` is rounded up to a page; 0 does nothing.
    pub fn msync(&self, offset: usize, size: usize) -> Result<()> {
        let Some(len) = check_page_range(offset, size, self.size())? else {
            return Ok(());
        };
        let base = self.as_ptr();
        self.for_each_mapped_range(offset, len, &mut |start, len, _| {
            syscall_on_range("msync", start, len, || {
                // SAFETY: `start..start + len` is a mapped part of this region, as the trait
                // contract promises; msync only writes its pages back.
                unsafe { libc::msync(base.add(start) as *mut libc::c_void, len, libc::MS_SYNC) }
            })
        })
    }

    /// Applies `madvise(advice)` to the mapped parts of `offset..offset + size`, with the same
    /// range rules as `msync`. `advice` must be on [`ALLOWED_ADVICE`](super::ALLOWED_ADVICE),
    /// else [`Error::UnsupportedAdvice`]: nothing reachable here can make mapped memory fault.
    pub fn madvise(&self, offset: usize, size: usize, advice: libc::c_int) -> Result<()> {
        super::advice_name(advice)?;
        let Some(len) = check_page_range(offset, size, self.size())? else {
            return Ok(());
        };
        super::check_destructive_rounding(offset, size, len, self.size(), advice)?;
        let base = self.as_ptr();
        self.for_each_mapped_range(offset, len, &mut |start, len, _| {
            // SAFETY: `start..start + len` is a mapped part of this region's own pages, as the
            // trait contract promises, and the advice is an allowed one.
            unsafe { madvise_range(base.add(start), start, len, advice) }
        })
    }
}

// SAFETY: a MemoryMapping owns its whole range until drop and maps all of it, with the
// protection it was built with.
unsafe impl MappedRegion for MemoryMapping {
    fn as_ptr(&self) -> *mut u8 {
        self.addr
    }

    fn size(&self) -> usize {
        self.size
    }

    fn for_each_mapped_range(
        &self,
        offset: usize,
        len: usize,
        f: &mut dyn FnMut(usize, usize, Protection) -> Result<()>,
    ) -> Result<()> {
        check_in_bounds(offset, len, owned_size(self.size))?;
        f(offset, len, self.protection)
    }
}

/// Memory mapped by someone else (a library, another allocator) that a hypervisor should treat
/// as a region. It is not unmapped on drop.
#[derive(Debug)]
pub struct ExternalMapping {
    addr: *mut u8,
    size: usize,
}

// SAFETY: the creator vouches that the memory outlives this value; access is raw or volatile.
unsafe impl Send for ExternalMapping {}
// SAFETY: as for Send.
unsafe impl Sync for ExternalMapping {}

impl ExternalMapping {
    /// Wraps `size` bytes at `addr`, which must be a non-null, page-aligned address; `size`
    /// must be a whole number of pages, since msync and madvise act on whole pages and the
    /// bytes after a partial last page are not the region's.
    ///
    /// # Safety
    ///
    /// `addr..addr + size` must be mapped readable and writable, and must stay so, never
    /// unmapped, remapped or protected otherwise by anyone, for as long as the returned value
    /// (or a hypervisor slot made from it) lives.
    pub unsafe fn new(addr: *mut u8, size: usize) -> Result<ExternalMapping> {
        if size == 0 {
            return Err(Error::InvalidSize {
                what: "an external mapping",
            });
        }
        let page = crate::pagesize();
        if !size.is_multiple_of(page) {
            return Err(Error::NotPageAligned {
                what: "external mapping size",
                value: size as u64,
                page,
            });
        }
        check_caller_range(addr, size, CallerRange::External)?;
        Ok(ExternalMapping { addr, size })
    }
}

// SAFETY: the constructor's caller vouched that the range stays mapped read-write, in whole,
// for our life.
unsafe impl MappedRegion for ExternalMapping {
    fn as_ptr(&self) -> *mut u8 {
        self.addr
    }

    fn size(&self) -> usize {
        self.size
    }

    fn for_each_mapped_range(
        &self,
        offset: usize,
        len: usize,
        f: &mut dyn FnMut(usize, usize, Protection) -> Result<()>,
    ) -> Result<()> {
        check_in_bounds(offset, len, self.size)?;
        f(offset, len, Protection::read_write())
    }
}
