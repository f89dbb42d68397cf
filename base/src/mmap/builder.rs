// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! [`MemoryMappingBuilder`], and the checked `mmap` that it and the arena share.

use std::fs::File;
use std::mem::MaybeUninit;
use std::ptr;

use super::{round_up_to_page, Backing, Error, MemoryMapping, Protection, Result};
use crate::descriptor::{AsRawDescriptor, RawDescriptor};
use crate::pagesize;
use crate::shm::SharedMemory;

/// Builds a [`MemoryMapping`]: anonymous shared memory by default, or a shared mapping of a
/// file, a [`SharedMemory`] or any descriptor.
///
/// ```
/// use base::{MemoryMappingBuilder, Protection, SharedMemory};
/// let shm = SharedMemory::new("example", 2 << 20).unwrap();
/// let mapping = MemoryMappingBuilder::new(1 << 20)
///     .from_shared_memory(&shm)
///     .offset(1 << 20)
///     .protection(Protection::read())
///     .align(2 << 20)
///     .build()
///     .unwrap();
/// assert_eq!(mapping.as_ptr() as usize % (2 << 20), 0);
/// ```
#[must_use]
pub struct MemoryMappingBuilder<'a> {
    size: usize,
    descriptor: Option<&'a dyn AsRawDescriptor>,
    offset: u64,
    protection: Protection,
    align: Option<u64>,
    populate: bool,
}

impl<'a> MemoryMappingBuilder<'a> {
    /// A read-write mapping of `size` bytes.
    pub fn new(size: usize) -> MemoryMappingBuilder<'a> {
        MemoryMappingBuilder {
            size,
            descriptor: None,
            offset: 0,
            protection: Protection::read_write(),
            align: None,
            populate: false,
        }
    }

    /// Maps `file` (shared: writes reach the file).
    pub fn from_file(self, file: &'a File) -> MemoryMappingBuilder<'a> {
        self.from_descriptor(file)
    }

    /// Maps `shm`.
    pub fn from_shared_memory(self, shm: &'a SharedMemory) -> MemoryMappingBuilder<'a> {
        self.from_descriptor(shm)
    }

    /// Maps any descriptor that supports `mmap` (a file, a memfd, a device).
    pub fn from_descriptor(
        mut self,
        descriptor: &'a dyn AsRawDescriptor,
    ) -> MemoryMappingBuilder<'a> {
        self.descriptor = Some(descriptor);
        self
    }

    /// Starts the mapping `offset` bytes into the descriptor. Must be page-aligned.
    pub fn offset(mut self, offset: u64) -> MemoryMappingBuilder<'a> {
        self.offset = offset;
        self
    }

    /// Sets the protection (read-write by default).
    pub fn protection(mut self, protection: Protection) -> MemoryMappingBuilder<'a> {
        self.protection = protection;
        self
    }

    /// Places the mapping at an address that is a multiple of `align`, a power of two.
    pub fn align(mut self, align: u64) -> MemoryMappingBuilder<'a> {
        self.align = Some(align);
        self
    }

    /// Faults every page in at build time (`MAP_POPULATE`).
    pub fn populate(mut self) -> MemoryMappingBuilder<'a> {
        self.populate = true;
        self
    }

    /// Maps the memory, or says why it cannot.
    pub fn build(self) -> Result<MemoryMapping> {
        if self.size == 0 {
            return Err(Error::InvalidSize { what: "a mapping" });
        }
        let fd = self.descriptor.map(|d| d.as_raw_descriptor());
        let request = MapRequest {
            size: self.size,
            fd,
            offset: self.offset,
            protection: self.protection,
            populate: self.populate,
        };
        request.check()?;
        let page = pagesize();
        let align = match self.align {
            None => page,
            Some(a) if a.is_power_of_two() => (a as usize).max(page),
            Some(a) => return Err(Error::InvalidAlignment { align: a }),
        };
        let len = round_up_to_page(self.size).ok_or(Error::Overflow {
            what: "size rounded to a page",
            base: self.size as u64,
            len: page as u64,
        })?;
        let addr = if align <= page {
            // SAFETY: a null hint lets the kernel choose fresh address space; nothing of ours
            // is replaced.
            unsafe { request.map(ptr::null_mut(), false)? }
        } else {
            map_aligned(&request, len, align)?
        };
        Ok(MemoryMapping {
            addr,
            size: self.size,
            protection: self.protection,
            backing: match fd {
                None => Backing::Anonymous,
                Some(_) => Backing::Descriptor {
                    offset: self.offset,
                },
            },
        })
    }
}

/// Over-reserves `len + align` bytes, maps the request at the aligned address inside, and
/// trims the rest, so that every path out of here either returns the mapping or unmaps all.
fn map_aligned(request: &MapRequest, len: usize, align: usize) -> Result<*mut u8> {
    let total = len.checked_add(align).ok_or(Error::Overflow {
        what: "size + alignment",
        base: len as u64,
        len: align as u64,
    })?;
    let reservation = reserve(total)?;
    let start = reservation as usize;
    let aligned = (start + align - 1) & !(align - 1);
    // SAFETY: `aligned..aligned + len` lies inside the reservation we own.
    match unsafe { request.map(aligned as *mut u8, true) } {
        Ok(addr) => {
            let tail = aligned + len;
            // SAFETY: the head and tail are the parts of our own reservation outside the new
            // mapping; nothing else uses them.
            unsafe {
                if aligned > start {
                    libc::munmap(reservation as *mut libc::c_void, aligned - start);
                }
                if start + total > tail {
                    libc::munmap(tail as *mut libc::c_void, start + total - tail);
                }
            }
            Ok(addr)
        }
        Err(e) => {
            // SAFETY: the whole reservation is ours; a failed MAP_FIXED may have left part of
            // it unmapped, which munmap tolerates.
            unsafe { libc::munmap(reservation as *mut libc::c_void, total) };
            Err(e)
        }
    }
}

/// Reserves `len` bytes of address space that nothing can touch: private, `PROT_NONE`, and
/// with no memory committed.
pub(super) fn reserve(len: usize) -> Result<*mut u8> {
    // SAFETY: a null hint lets the kernel choose fresh address space; nothing is replaced.
    let addr = unsafe {
        libc::mmap(
            ptr::null_mut(),
            len,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        return Err(Error::Mmap {
            fd: None,
            offset: 0,
            size: len,
            protection: Protection::none(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(addr as *mut u8)
}

/// Puts the reservation back over `addr..addr + len`.
///
/// # Safety
///
/// The range must belong to a reservation we own (an arena), with nothing in it still in use.
pub(super) unsafe fn re_reserve(addr: *mut u8, len: usize) -> Result<()> {
    // SAFETY: MAP_FIXED replaces only the range the caller owns and no longer uses.
    let ret = unsafe {
        libc::mmap(
            addr as *mut libc::c_void,
            len,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_FIXED,
            -1,
            0,
        )
    };
    if ret == libc::MAP_FAILED {
        return Err(Error::Mmap {
            fd: None,
            offset: 0,
            size: len,
            protection: Protection::none(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// One `mmap` call, checked before it is made.
pub(super) struct MapRequest {
    pub size: usize,
    pub fd: Option<RawDescriptor>,
    pub offset: u64,
    pub protection: Protection,
    pub populate: bool,
}

impl MapRequest {
    /// Refuses what `mmap` would refuse or turn into a SIGBUS later: offsets past `off_t`,
    /// unaligned offsets, closed descriptors, and regular files shorter than the range.
    pub fn check(&self) -> Result<()> {
        if self.populate && self.protection == Protection::none() {
            return Err(Error::PopulateWithoutAccess);
        }
        let Some(fd) = self.fd else {
            if self.offset != 0 {
                return Err(Error::OffsetWithoutDescriptor {
                    offset: self.offset,
                });
            }
            return Ok(());
        };
        let end = self.offset.checked_add(self.size as u64);
        if !matches!(end, Some(end) if end <= i64::MAX as u64) {
            return Err(Error::InvalidOffset {
                offset: self.offset,
                size: self.size,
            });
        }
        let page = pagesize();
        if !self.offset.is_multiple_of(page as u64) {
            return Err(Error::NotPageAligned {
                what: "file offset",
                value: self.offset,
                page,
            });
        }
        let stat = fstat(fd)?;
        let needed = self.offset + self.size as u64;
        if stat.st_mode & libc::S_IFMT == libc::S_IFREG
            && (stat.st_size as u64) < needed
            && !is_growable_memfd(fd)
        {
            return Err(Error::FileTooShort {
                fd,
                file_size: stat.st_size as u64,
                offset: self.offset,
                size: self.size,
            });
        }
        Ok(())
    }

    /// Maps the request at `addr` (replacing what is there when `fixed`), or anywhere for a
    /// null `addr`.
    ///
    /// # Safety
    ///
    /// With `fixed`, `addr..addr + size` must be address space we own and no longer use.
    pub unsafe fn map(&self, addr: *mut u8, fixed: bool) -> Result<*mut u8> {
        let mut flags = libc::MAP_SHARED;
        if self.fd.is_none() {
            flags |= libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
        }
        if self.populate {
            flags |= libc::MAP_POPULATE;
        }
        if fixed {
            flags |= libc::MAP_FIXED;
        }
        // SAFETY: without MAP_FIXED the kernel picks fresh space; with it, the caller vouches
        // for the range. `check` validated the offset, and `fd` is only read by the kernel.
        let ret = unsafe {
            libc::mmap(
                addr as *mut libc::c_void,
                self.size,
                self.protection.as_prot(),
                flags,
                self.fd.unwrap_or(-1),
                self.offset as libc::off_t,
            )
        };
        if ret == libc::MAP_FAILED {
            return Err(Error::Mmap {
                fd: self.fd,
                offset: self.offset,
                size: self.size,
                protection: self.protection,
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(ret as *mut u8)
    }
}

fn fstat(fd: RawDescriptor) -> Result<libc::stat> {
    let mut stat = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat writes at most one `struct stat` into the buffer we pass.
    let ret = unsafe { libc::fstat(fd, stat.as_mut_ptr()) };
    if ret < 0 {
        return Err(Error::BadDescriptor {
            fd,
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: fstat succeeded, so it filled the struct.
    Ok(unsafe { stat.assume_init() })
}

/// A memfd without `F_SEAL_GROW` may be grown by its owner after it is mapped, so its current
/// size does not bound what may be mapped.
fn is_growable_memfd(fd: RawDescriptor) -> bool {
    // SAFETY: F_GET_SEALS only reads the seal set; on a non-memfd it fails with EINVAL.
    let seals = unsafe { libc::fcntl(fd, libc::F_GET_SEALS) };
    seals >= 0 && seals & libc::F_SEAL_GROW == 0
}
