// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! [`MemoryMappingBuilder`], and the checked `mmap` that it and the arena share.

use std::fs::File;
use std::mem::MaybeUninit;
use std::ptr;

use super::{
    check_caller_range, round_up_to_page, syscall_on_range, Backing, CallerRange, Error,
    MemoryMapping, Protection, Result,
};
use crate::descriptor::{AsRawDescriptor, RawDescriptor};
use crate::pagesize;
use crate::shm::SharedMemory;

/// Builds a [`MemoryMapping`]: anonymous shared memory by default, or a shared mapping of a
/// file, a [`SharedMemory`] or any descriptor.
///
/// A mapping never reaches past the end of what backs it: a regular file, memfd or block
/// device shorter than the range is refused ([`Error::FileTooShort`]), since touching a page
/// past the end would raise SIGBUS. A memfd that allows seals is sealed against shrinking as
/// it is mapped, so that no holder of it can make it short later. A regular file (or a memfd
/// or tmpfs file that refuses seals) cannot be protected so: truncating it while it is mapped,
/// by any process including this one, makes the next access to a page past the new end raise
/// SIGBUS. Map only such files that nobody may truncate.
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
        let (request, len, align) = self.checked_request()?;
        let addr = if align <= pagesize() {
            // SAFETY: a null hint lets the kernel choose fresh address space; nothing of ours
            // is replaced.
            unsafe { request.map(ptr::null_mut(), false)? }
        } else {
            map_aligned(&request, len, align)?
        };
        Ok(self.mapping_at(addr))
    }

    /// Maps the memory at `addr` exactly (`MAP_FIXED`), replacing whatever was mapped there,
    /// and returns a mapping that unmaps it on drop. `addr` must be page-aligned, and aligned
    /// as [`align`](Self::align) asked if it was.
    ///
    /// # Safety
    ///
    /// The whole pages covering `addr..addr + size` must be address space that the caller owns
    /// and that nothing else uses, now or after the returned mapping unmaps them: typically a
    /// reservation the caller made and hands over.
    pub unsafe fn build_fixed(self, addr: *mut u8) -> Result<MemoryMapping> {
        let (request, len, align) = self.checked_request()?;
        check_caller_range(addr, len, CallerRange::Fixed)?;
        if !(addr as usize).is_multiple_of(align) {
            return Err(Error::NotAligned {
                what: "fixed mapping address",
                value: addr as u64,
                align,
            });
        }
        // SAFETY: the caller vouches that the range is theirs to replace.
        let addr = unsafe { request.map(addr, true)? };
        Ok(self.mapping_at(addr))
    }

    /// Checks everything about the request before any syscall: the request, its length
    /// rounded to whole pages, and the alignment to place it at (at least a page).
    fn checked_request(&self) -> Result<(MapRequest, usize, usize)> {
        if self.size == 0 {
            return Err(Error::InvalidSize { what: "a mapping" });
        }
        let request = MapRequest {
            size: self.size,
            fd: self.descriptor.map(|d| d.as_raw_descriptor()),
            offset: self.offset,
            protection: self.protection,
            populate: self.populate,
        };
        request.check()?;
        let page = pagesize();
        let align = match self.align {
            None => page,
            Some(a) if a.is_power_of_two() => usize::try_from(a)
                .map_err(|_| Error::InvalidAlignment { align: a })?
                .max(page),
            Some(a) => return Err(Error::InvalidAlignment { align: a }),
        };
        let len = round_up_to_page(self.size).ok_or(Error::Overflow {
            what: "size rounded to a page",
            base: self.size as u64,
            len: page as u64,
        })?;
        Ok((request, len, align))
    }

    fn mapping_at(&self, addr: *mut u8) -> MemoryMapping {
        MemoryMapping {
            addr,
            size: self.size,
            protection: self.protection,
            backing: match self.descriptor {
                None => Backing::Anonymous,
                Some(_) => Backing::Descriptor {
                    offset: self.offset,
                },
            },
        }
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
    let reservation = reserve(total, "an aligned mapping", request.size, align)?;
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
/// with no memory committed. Errors name the caller's request: `what` it is for, the `size`
/// and `align` asked for.
pub(super) fn reserve(
    len: usize,
    what: &'static str,
    size: usize,
    align: usize,
) -> Result<*mut u8> {
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
        return Err(Error::Reserve {
            what,
            size,
            align,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(addr as *mut u8)
}

/// Puts the reservation back over `addr..addr + len`, which is `offset` bytes into its arena
/// (for the error).
///
/// # Safety
///
/// The range must belong to a reservation we own (an arena), with nothing in it still in use.
pub(super) unsafe fn re_reserve(addr: *mut u8, offset: usize, len: usize) -> Result<()> {
    syscall_on_range("mmap(MAP_FIXED) of the reservation", offset, len, || {
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
            -1
        } else {
            0
        }
    })
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
    /// unaligned offsets, closed descriptors, files, memfds and devices that end before the
    /// range does, and `/dev/zero` at an offset. Seals a memfd against shrinking.
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
        let end = self.offset + self.size as u64;
        self.check_backing_size(fd, end)?;
        // A memfd that allows seals is sealed against shrinking, so that nobody holding it
        // (this process included) can truncate it under the mapping; then its size is read
        // again, in case it shrank before the seal.
        if seal_against_shrinking(fd)? {
            self.check_backing_size(fd, end)?;
        }
        Ok(())
    }

    fn check_backing_size(&self, fd: RawDescriptor, end: u64) -> Result<()> {
        match backing_size(fd, self.offset)? {
            Some(file_size) if file_size < end => Err(Error::FileTooShort {
                fd,
                file_size,
                offset: self.offset,
                size: self.size,
                end,
            }),
            _ => Ok(()),
        }
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

/// How many bytes `fd` can back: the size of a regular file or memfd, of a block device, or
/// of a character device that reports one in sysfs (a DAX device); `None` for a character
/// device that has no size (its driver decides what it can map).
///
/// A page wholly past the end of a file raises SIGBUS when touched, so mapping one is refused
/// even for a memfd that could still grow: whoever holds it could equally shrink it.
/// `/dev/zero` backs a shared mapping with a new shmem object exactly as large as the mapping
/// while keeping the offset, so any offset but 0 would SIGBUS: it is refused.
fn backing_size(fd: RawDescriptor, offset: u64) -> Result<Option<u64>> {
    vmm_sys_util::ioctl_ior_nr!(BLKGETSIZE64, 0x12, 114, u64);
    let stat = fstat(fd)?;
    match stat.st_mode & libc::S_IFMT {
        libc::S_IFREG => Ok(Some(stat.st_size as u64)),
        libc::S_IFBLK => {
            let mut size = 0u64;
            // SAFETY: BLKGETSIZE64 writes one u64 into `size`, which lives across the call.
            let ret = unsafe {
                vmm_sys_util::ioctl::ioctl_with_mut_ref(&Fd(fd), BLKGETSIZE64(), &mut size)
            };
            if ret < 0 {
                return Err(Error::BadDescriptor {
                    fd,
                    source: std::io::Error::last_os_error(),
                });
            }
            Ok(Some(size))
        }
        libc::S_IFCHR => {
            let (major, minor) = (libc::major(stat.st_rdev), libc::minor(stat.st_rdev));
            if (major, minor) == DEV_ZERO && offset != 0 {
                return Err(Error::DeviceOffset { fd, offset });
            }
            let size = std::fs::read_to_string(format!("/sys/dev/char/{major}:{minor}/size"));
            Ok(size.ok().and_then(|s| s.trim().parse().ok()))
        }
        _ => Ok(None),
    }
}

/// `/dev/zero`'s device number (`mem` major 1, minor 5).
const DEV_ZERO: (libc::c_uint, libc::c_uint) = (1, 5);

/// Adds `F_SEAL_SHRINK` to a memfd that allows seals and lacks it. Answers whether it added
/// one; other descriptors (and memfds or tmpfs files that refuse seals) are left as they are.
fn seal_against_shrinking(fd: RawDescriptor) -> Result<bool> {
    // SAFETY: F_GET_SEALS only reads the seal set; on what is not a memfd it fails with EINVAL.
    let seals = unsafe { libc::fcntl(fd, libc::F_GET_SEALS) };
    if seals < 0 || seals & (libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK) != 0 {
        return Ok(false);
    }
    // SAFETY: F_ADD_SEALS only adds to the seal set of the descriptor; it touches no memory.
    if unsafe { libc::fcntl(fd, libc::F_ADD_SEALS, libc::F_SEAL_SHRINK) } < 0 {
        return Err(Error::Seal {
            fd,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(true)
}

/// A borrowed descriptor number for vmm-sys-util's ioctl helpers.
struct Fd(RawDescriptor);

impl std::os::fd::AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawDescriptor {
        self.0
    }
}
