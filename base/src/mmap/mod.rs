// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Memory mappings: [`MemoryMapping`] and its builder, [`MemoryMappingArena`], and the
//! [`MappedRegion`] trait that lets a hypervisor treat them alike.

mod arena;
mod books;
mod builder;
mod protection;
mod region;

use std::mem::size_of;

use remain::sorted;
use thiserror::Error;
use zerocopy::{FromBytes, Immutable, IntoBytes};

pub use arena::MemoryMappingArena;
pub use books::ArenaMapping;
pub use builder::MemoryMappingBuilder;
pub use protection::Protection;
pub use region::{ExternalMapping, MappedRegion};

use crate::descriptor::RawDescriptor;
use crate::volatile::{
    compute_end, VolatileMemory, VolatileMemoryError, VolatileMemoryResult, VolatileSlice,
};
use crate::{cache, pagesize};

/// Errors of the mmap module.
#[sorted]
#[derive(Debug, Error)]
pub enum Error {
    /// The descriptor is closed or otherwise unusable.
    #[error("descriptor {fd} cannot be mapped: {source}")]
    BadDescriptor {
        /// The descriptor.
        fd: RawDescriptor,
        /// What the kernel answered.
        source: std::io::Error,
    },
    /// A cache flush failed.
    #[error("cache flush failed: {0}")]
    Cache(#[from] cache::Error),
    /// `/dev/zero` at an offset other than 0: its shared mappings are backed by a new object
    /// exactly as large as the mapping, so the pages at any other offset would SIGBUS.
    #[error("descriptor {fd} is /dev/zero, which can only be mapped shared at offset 0, not {offset:#x}")]
    DeviceOffset {
        /// The descriptor.
        fd: RawDescriptor,
        /// The offset asked for.
        offset: u64,
    },
    /// A regular file, memfd or block device ends before the range to map does: touching
    /// the part past its end would raise SIGBUS.
    #[error(
        "descriptor {fd} holds {file_size:#x} bytes; mapping {size:#x} bytes at offset {offset:#x} needs it to reach {end:#x}"
    )]
    FileTooShort {
        /// The descriptor.
        fd: RawDescriptor,
        /// Its current size.
        file_size: u64,
        /// Offset into it.
        offset: u64,
        /// Bytes to map.
        size: usize,
        /// `offset + size`: the size the file would need.
        end: u64,
    },
    /// A range does not lie inside the region, or touches nothing mapped in an arena.
    #[error("range {offset:#x}+{size:#x} in a region of {region_size:#x} bytes: {why}")]
    InvalidAddress {
        /// Start of the range.
        offset: usize,
        /// Its length.
        size: usize,
        /// Size of the region.
        region_size: usize,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The alignment is not a power of two.
    #[error("alignment {align:#x} is not a power of two")]
    InvalidAlignment {
        /// The alignment asked for.
        align: u64,
    },
    /// A file offset (with the size added) does not fit in `off_t`.
    #[error("file range {offset:#x}+{size:#x} does not fit in off_t (max {max:#x})", max = i64::MAX)]
    InvalidOffset {
        /// Offset into the file.
        offset: u64,
        /// Bytes to map.
        size: usize,
    },
    /// A size of zero where something must be mapped.
    #[error("size 0 is not allowed for {what}")]
    InvalidSize {
        /// What was being sized.
        what: &'static str,
    },
    /// `madvise` failed.
    #[error("madvise({name} = {advice}) on range {offset:#x}+{size:#x} failed: {source}")]
    Madvise {
        /// The advice value.
        advice: i32,
        /// Its name (`MADV_REMOVE`...).
        name: &'static str,
        /// Start of the range, from the region's start.
        offset: usize,
        /// Its length.
        size: usize,
        /// What the kernel answered.
        source: std::io::Error,
    },
    /// An add overlaps a sub-mapping already in the arena.
    #[error(
        "range {offset:#x}+{size:#x} overlaps the mapping at {existing_offset:#x}+{existing_size:#x}"
    )]
    MappingOverlap {
        /// Start of the new range.
        offset: usize,
        /// Its length.
        size: usize,
        /// Start of the existing sub-mapping.
        existing_offset: usize,
        /// Its length.
        existing_size: usize,
    },
    /// `mmap` refused the mapping.
    #[error(
        "mmap of {size:#x} bytes ({protection:?}) of {what} at offset {offset:#x} failed: {source}",
        what = describe_descriptor(*.fd)
    )]
    Mmap {
        /// The descriptor, or `None` for anonymous memory.
        fd: Option<RawDescriptor>,
        /// Offset into the descriptor.
        offset: u64,
        /// Bytes to map.
        size: usize,
        /// Protection asked for.
        protection: Protection,
        /// What the kernel answered.
        source: std::io::Error,
    },
    /// The mapping's protection does not allow the access (it would fault).
    #[error("{op} needs {needed:?} access but the mapping is {protection:?}")]
    NoAccess {
        /// The operation.
        op: &'static str,
        /// The access it needs.
        needed: Protection,
        /// The mapping's protection.
        protection: Protection,
    },
    /// A value is not aligned as the caller asked.
    #[error("{what} {value:#x} is not aligned to {align:#x}")]
    NotAligned {
        /// Which value.
        what: &'static str,
        /// The value.
        value: u64,
        /// The alignment asked for.
        align: usize,
    },
    /// An offset that must be page-aligned is not.
    #[error("{what} {value:#x} is not aligned to the page size {page:#x}")]
    NotPageAligned {
        /// Which value.
        what: &'static str,
        /// The value.
        value: u64,
        /// The page size.
        page: usize,
    },
    /// An offset was given for anonymous memory, which has no offset.
    #[error("offset {offset:#x} given for an anonymous mapping")]
    OffsetWithoutDescriptor {
        /// The offset.
        offset: u64,
    },
    /// An addition overflows.
    #[error("{what}: {base:#x} + {len:#x} overflows")]
    Overflow {
        /// Which addition.
        what: &'static str,
        /// First operand.
        base: u64,
        /// Second operand.
        len: u64,
    },
    /// `populate()` with `Protection::none()`: there is nothing to prefault.
    #[error("populate() asked for a mapping with no access")]
    PopulateWithoutAccess,
    /// The address space for a mapping or an arena could not be reserved.
    #[error(
        "cannot reserve {size:#x} bytes of address space (alignment {align:#x}) for {what}: {source}"
    )]
    Reserve {
        /// What the space was for: "an aligned mapping" or "an arena".
        what: &'static str,
        /// The size the caller asked for.
        size: usize,
        /// The alignment the caller asked for (a page when none was).
        align: usize,
        /// What the kernel answered.
        source: std::io::Error,
    },
    /// A memfd that allows seals could not be sealed against shrinking.
    #[error("cannot seal memfd {fd} against shrinking before mapping it: {source}")]
    Seal {
        /// The memfd.
        fd: RawDescriptor,
        /// What the kernel answered.
        source: std::io::Error,
    },
    /// A syscall on an existing mapping failed.
    #[error("{call} on range {offset:#x}+{size:#x} failed: {source}")]
    SystemCall {
        /// The syscall (`msync`, `madvise(MADV_REMOVE)`, `mprotect`...).
        call: &'static str,
        /// Start of the range, from the region's start.
        offset: usize,
        /// Its length.
        size: usize,
        /// What the kernel answered.
        source: std::io::Error,
    },
    /// The region type cannot do this (for example `add_fd_mapping` on a plain mapping).
    #[error("{op} is not supported by this region")]
    Unsupported {
        /// The operation.
        op: &'static str,
    },
    /// `madvise` advice outside the allow-list (see [`ALLOWED_ADVICE`]).
    #[error("madvise advice {advice} is not allowed on guest memory")]
    UnsupportedAdvice {
        /// The advice value.
        advice: i32,
    },
    /// A bounds or alignment error of volatile access.
    #[error(transparent)]
    Volatile(#[from] VolatileMemoryError),
}

impl Error {
    /// The errno that best describes this error (the kernel's own where a syscall failed,
    /// `EINVAL` for refused arguments), for sending it over the wire.
    pub fn errno(&self) -> i32 {
        match self {
            Error::SystemCall { source, .. }
            | Error::Madvise { source, .. }
            | Error::Reserve { source, .. }
            | Error::Seal { source, .. }
            | Error::Mmap { source, .. }
            | Error::BadDescriptor { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            Error::MappingOverlap { .. } => libc::EEXIST,
            Error::Unsupported { .. } | Error::UnsupportedAdvice { .. } => libc::ENOTSUP,
            Error::NoAccess { .. } => libc::EACCES,
            Error::Overflow { .. } | Error::InvalidOffset { .. } => libc::EOVERFLOW,
            _ => libc::EINVAL,
        }
    }
}

/// Result of the mmap module.
pub type Result<T> = std::result::Result<T, Error>;

fn describe_descriptor(fd: Option<RawDescriptor>) -> String {
    match fd {
        Some(fd) => format!("descriptor {fd}"),
        None => "anonymous memory".to_owned(),
    }
}

/// The `madvise` advice these crates pass to the kernel, with their names: what a VMM needs
/// to manage guest memory. Everything else is refused with [`Error::UnsupportedAdvice`], so
/// no advice can turn mapped memory into memory that faults on access (`MADV_HWPOISON`,
/// `MADV_SOFT_OFFLINE`, Linux 6.13's `MADV_GUARD_INSTALL`) or that only makes sense for
/// private memory (`MADV_FREE`, `MADV_WIPEONFORK`).
pub const ALLOWED_ADVICE: &[(libc::c_int, &str)] = &[
    (libc::MADV_NORMAL, "MADV_NORMAL"),
    (libc::MADV_RANDOM, "MADV_RANDOM"),
    (libc::MADV_SEQUENTIAL, "MADV_SEQUENTIAL"),
    (libc::MADV_WILLNEED, "MADV_WILLNEED"),
    (libc::MADV_DONTNEED, "MADV_DONTNEED"),
    (libc::MADV_REMOVE, "MADV_REMOVE"),
    (libc::MADV_DONTFORK, "MADV_DONTFORK"),
    (libc::MADV_DOFORK, "MADV_DOFORK"),
    (libc::MADV_MERGEABLE, "MADV_MERGEABLE"),
    (libc::MADV_UNMERGEABLE, "MADV_UNMERGEABLE"),
    (libc::MADV_HUGEPAGE, "MADV_HUGEPAGE"),
    (libc::MADV_NOHUGEPAGE, "MADV_NOHUGEPAGE"),
    (libc::MADV_DONTDUMP, "MADV_DONTDUMP"),
    (libc::MADV_DODUMP, "MADV_DODUMP"),
    (libc::MADV_COLD, "MADV_COLD"),
    (libc::MADV_PAGEOUT, "MADV_PAGEOUT"),
    (libc::MADV_POPULATE_READ, "MADV_POPULATE_READ"),
    (libc::MADV_POPULATE_WRITE, "MADV_POPULATE_WRITE"),
];

/// The name of `advice` if it is on the allow-list, else [`Error::UnsupportedAdvice`].
pub(crate) fn advice_name(advice: libc::c_int) -> Result<&'static str> {
    ALLOWED_ADVICE
        .iter()
        .find(|&&(value, _)| value == advice)
        .map(|&(_, name)| name)
        .ok_or(Error::UnsupportedAdvice { advice })
}

/// `madvise(advice)` on `len` bytes at `addr`, named `offset` in errors.
///
/// # Safety
///
/// `addr..addr + len` must be whole pages that the caller owns, and `advice` must come from
/// [`ALLOWED_ADVICE`], none of which makes mapped memory fault.
pub(crate) unsafe fn madvise_range(
    addr: *mut u8,
    offset: usize,
    len: usize,
    advice: libc::c_int,
) -> Result<()> {
    let name = advice_name(advice)?;
    // SAFETY: the caller owns the pages, and allowed advice leaves them mapped and accessible.
    if unsafe { libc::madvise(addr as *mut libc::c_void, len, advice) } < 0 {
        return Err(Error::Madvise {
            advice,
            name,
            offset,
            size: len,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// What backs a mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backing {
    /// Anonymous shared memory.
    Anonymous,
    /// A descriptor (file, memfd, device) mapped shared.
    Descriptor {
        /// Offset into the descriptor of the mapping's first byte.
        offset: u64,
    },
}

/// An owned mapping of memory into this process, unmapped on drop.
///
/// Built with [`MemoryMappingBuilder`]:
///
/// ```
/// use base::{MemoryMappingBuilder, VolatileMemory};
/// let mem = MemoryMappingBuilder::new(4096).build().unwrap();
/// mem.write_obj(0x1234_5678u32, 16).unwrap();
/// assert_eq!(mem.read_obj::<u32>(16).unwrap(), 0x1234_5678);
/// assert_eq!(mem.write_slice(&[1, 2, 3], 4094).unwrap(), 2); // only two bytes fit
/// assert!(mem.get_slice(4090, 8).is_err());
/// ```
#[derive(Debug)]
pub struct MemoryMapping {
    addr: *mut u8,
    size: usize,
    protection: Protection,
    backing: Backing,
}

// SAFETY: the mapping is plain process memory that lives until drop; every access through
// the API is a raw copy or a volatile access, which is how memory that other threads (or a
// guest) may touch must be treated anyway.
unsafe impl Send for MemoryMapping {}
// SAFETY: as for Send; no method assumes exclusive access to the bytes.
unsafe impl Sync for MemoryMapping {}

impl MemoryMapping {
    /// The mapping's length in bytes, as asked of the builder.
    #[inline]
    pub fn size(&self) -> usize {
        self.size
    }

    /// The first byte's address.
    #[inline]
    pub fn as_ptr(&self) -> *mut u8 {
        self.addr
    }

    /// The protection it was built with.
    pub fn protection(&self) -> Protection {
        self.protection
    }

    /// What backs it.
    pub fn backing(&self) -> Backing {
        self.backing
    }

    /// The whole mapping as a slice, if its protection allows `needed`: touching it otherwise
    /// would fault, so a read-only mapping refuses writes here instead of crashing.
    #[inline]
    fn checked(&self, needed: Protection, op: &'static str) -> Result<VolatileSlice<'_>> {
        if !self.protection.allows(&needed) {
            return Err(Error::NoAccess {
                op,
                needed,
                protection: self.protection,
            });
        }
        // SAFETY: `addr..addr + size` stays mapped until `self` is dropped, which the borrow
        // prevents while the slice lives, and its protection allows the access just checked.
        Ok(unsafe { VolatileSlice::from_raw_parts(self.addr, self.size) })
    }

    #[inline]
    fn readable(&self, op: &'static str) -> Result<VolatileSlice<'_>> {
        self.checked(Protection::read(), op)
    }

    #[inline]
    fn writable(&self, op: &'static str) -> Result<VolatileSlice<'_>> {
        self.checked(Protection::write(), op)
    }

    /// Copies as much of `buf` as fits at `offset` and returns how many bytes that was. An
    /// `offset` past the end is an error; at the end, 0 bytes are written.
    pub fn write_slice(&self, buf: &[u8], offset: usize) -> Result<usize> {
        Ok(self.writable("write_slice")?.offset(offset)?.copy_from(buf))
    }

    /// Fills as much of `buf` as the mapping holds from `offset` and returns how many bytes
    /// that was. An `offset` past the end is an error.
    pub fn read_slice(&self, buf: &mut [u8], offset: usize) -> Result<usize> {
        Ok(self.readable("read_slice")?.offset(offset)?.copy_to(buf))
    }

    /// Writes `val` at `offset` (unaligned allowed). Not atomic.
    #[inline]
    pub fn write_obj<T: IntoBytes + Immutable>(&self, val: T, offset: usize) -> Result<()> {
        Ok(self.writable("write_obj")?.write_obj(val, offset)?)
    }

    /// Reads a `T` at `offset` (unaligned allowed). Not atomic.
    #[inline]
    pub fn read_obj<T: FromBytes>(&self, offset: usize) -> Result<T> {
        Ok(self.readable("read_obj")?.read_obj(offset)?)
    }

    /// Writes `val` at the aligned `offset`; 1, 2, 4 and 8-byte types in a single store.
    #[inline]
    pub fn write_obj_volatile<T: IntoBytes + Immutable>(
        &self,
        val: T,
        offset: usize,
    ) -> Result<()> {
        Ok(self
            .writable("write_obj_volatile")?
            .write_obj_volatile(val, offset)?)
    }

    /// Reads a `T` at the aligned `offset`; 1, 2, 4 and 8-byte types in a single load.
    #[inline]
    pub fn read_obj_volatile<T: FromBytes>(&self, offset: usize) -> Result<T> {
        Ok(self
            .readable("read_obj_volatile")?
            .read_obj_volatile(offset)?)
    }

    /// Writes dirty pages of a shared file mapping back to the file, and waits (`MS_SYNC`).
    pub fn msync(&self) -> Result<()> {
        syscall_on_range("msync", 0, self.size, || {
            // SAFETY: msync only reads page state of our own mapping.
            unsafe { libc::msync(self.addr as *mut libc::c_void, self.size, libc::MS_SYNC) }
        })
    }

    /// Writes the cache lines that hold `offset..offset + len` back to memory.
    ///
    /// The CPU checks a flush like a load, so the mapping must be readable.
    pub fn flush_region(&self, offset: usize, len: usize) -> Result<()> {
        let slice = self.readable("flush_region")?.sub_slice(offset, len)?;
        // SAFETY: the range was just checked to lie inside our live mapping.
        unsafe { cache::flush_range(slice.as_ptr(), len) }?;
        Ok(())
    }

    /// Writes every cache line of the mapping back to memory.
    pub fn flush_all(&self) -> Result<()> {
        self.flush_region(0, self.size)
    }

    /// Gives the pages of `offset..offset + count` back to the kernel (`MADV_REMOVE`); reads
    /// then return zeros. `offset` must be page-aligned; `count` is rounded up to a page.
    pub fn remove_range(&self, offset: usize, count: usize) -> Result<()> {
        self.advise_range(offset, count, libc::MADV_REMOVE)
    }

    /// Asks for transparent huge pages (`MADV_HUGEPAGE`).
    pub fn use_hugepages(&self) -> Result<()> {
        self.advise_range(0, self.size, libc::MADV_HUGEPAGE)
    }

    /// Keeps the mapping out of forked children (`MADV_DONTFORK`).
    pub fn use_dontfork(&self) -> Result<()> {
        self.advise_range(0, self.size, libc::MADV_DONTFORK)
    }

    /// Lets the kernel merge identical pages of this mapping with others (`MADV_MERGEABLE`,
    /// kernel same-page merging). Fails with the kernel's `EINVAL` where KSM is not built in.
    pub fn use_mergeable(&self) -> Result<()> {
        self.advise_range(0, self.size, libc::MADV_MERGEABLE)
    }

    /// Faults in and locks every page in RAM (`mlock`).
    pub fn lock_all(&self) -> Result<()> {
        syscall_on_range("mlock", 0, self.size, || {
            // SAFETY: mlock only changes page state of our own mapping.
            unsafe { libc::mlock(self.addr as *const libc::c_void, self.size) }
        })
    }

    /// Locks pages in RAM as they are first touched (`mlock2(MLOCK_ONFAULT)`).
    pub fn lock_on_fault(&self) -> Result<()> {
        syscall_on_range("mlock2(MLOCK_ONFAULT)", 0, self.size, || {
            // SAFETY: mlock2 only changes page state of our own mapping.
            unsafe {
                libc::mlock2(
                    self.addr as *const libc::c_void,
                    self.size,
                    libc::MLOCK_ONFAULT,
                )
            }
        })
    }

    /// Undoes [`lock_all`](Self::lock_all) and [`lock_on_fault`](Self::lock_on_fault).
    pub fn unlock(&self) -> Result<()> {
        syscall_on_range("munlock", 0, self.size, || {
            // SAFETY: munlock only changes page state of our own mapping.
            unsafe { libc::munlock(self.addr as *const libc::c_void, self.size) }
        })
    }

    fn advise_range(&self, offset: usize, count: usize, advice: libc::c_int) -> Result<()> {
        let Some(len) = check_page_range(offset, count, self.size)? else {
            return Ok(());
        };
        check_destructive_rounding(offset, count, len, self.size, advice)?;
        // SAFETY: the range lies inside our own mapping (checked above), whose whole pages are
        // ours, and `madvise_range` takes only allowed advice.
        unsafe { madvise_range(self.addr.add(offset), offset, len, advice) }
    }
}

impl VolatileMemory for MemoryMapping {
    /// A slice of the mapping. A slice can be written, so the mapping must be read-write.
    fn get_slice(&self, offset: usize, count: usize) -> VolatileMemoryResult<VolatileSlice<'_>> {
        match self.checked(Protection::read_write(), "get_slice") {
            Ok(whole) => whole.sub_slice(offset, count),
            Err(_) => {
                compute_end(offset, count, self.size)?;
                Err(VolatileMemoryError::NotMapped { offset, count })
            }
        }
    }
}

impl Drop for MemoryMapping {
    fn drop(&mut self) {
        // SAFETY: we own `addr..addr + size` and nothing can use it after drop.
        unsafe { libc::munmap(self.addr as *mut libc::c_void, self.size) };
    }
}

/// Rounds `value` up to a whole number of pages, or `None` on overflow.
pub(crate) fn round_up_to_page(value: usize) -> Option<usize> {
    let page = pagesize();
    value.checked_add(page - 1).map(|v| v & !(page - 1))
}

/// Validates a range for msync/madvise/protect: `offset` page-aligned, `offset + size` inside
/// `region_size`. Returns the length rounded up to whole pages, or `None` when `size` is 0.
///
/// The rounding never reaches past the region's own pages: every [`MappedRegion`] owns the
/// whole pages that cover it (its start is page-aligned and `ExternalMapping`s are whole
/// pages), so the last page, partly outside `size` as it may be, is the region's.
pub(crate) fn check_page_range(
    offset: usize,
    size: usize,
    region_size: usize,
) -> Result<Option<usize>> {
    let page = pagesize();
    if !offset.is_multiple_of(page) {
        return Err(Error::NotPageAligned {
            what: "offset",
            value: offset as u64,
            page,
        });
    }
    check_in_bounds(offset, size, region_size)?;
    if size == 0 {
        return Ok(None);
    }
    // `offset + size <= region_size`, whose page rounding is mapped, so this cannot overflow.
    Ok(Some(round_up_to_page(size).unwrap_or(size)))
}

/// Refuses `MADV_REMOVE` whose length, rounded up to whole pages, passes the region's end: the
/// rest of a partial last page is the region's memory but, in the file behind it, bytes the
/// region never claimed, which a hole punch would destroy. (`len` is `count` rounded.)
pub(crate) fn check_destructive_rounding(
    offset: usize,
    count: usize,
    len: usize,
    region_size: usize,
    advice: libc::c_int,
) -> Result<()> {
    if advice == libc::MADV_REMOVE && offset.saturating_add(len) > region_size {
        return Err(Error::InvalidAddress {
            offset,
            size: count,
            region_size,
            why: "MADV_REMOVE of a partial last page would punch out file bytes past the region",
        });
    }
    Ok(())
}

/// Checks address space a caller hands over (for a fixed mapping, or an external one): not
/// null, page-aligned, and not wrapping past the top. `what` names it in errors: "fixed
/// mapping" or "external mapping".
pub(crate) fn check_caller_range(addr: *mut u8, len: usize, what: CallerRange) -> Result<()> {
    let (null, address, end) = match what {
        CallerRange::Fixed => (
            "a fixed mapping cannot start at the null address",
            "fixed mapping address",
            "fixed mapping address + size",
        ),
        CallerRange::External => (
            "an external mapping cannot start at the null address",
            "external mapping address",
            "external mapping address + size",
        ),
    };
    if addr.is_null() {
        return Err(Error::InvalidAddress {
            offset: 0,
            size: len,
            region_size: len,
            why: null,
        });
    }
    let page = pagesize();
    if !(addr as usize).is_multiple_of(page) {
        return Err(Error::NotPageAligned {
            what: address,
            value: addr as u64,
            page,
        });
    }
    if (addr as usize).checked_add(len).is_none() {
        return Err(Error::Overflow {
            what: end,
            base: addr as u64,
            len: len as u64,
        });
    }
    Ok(())
}

/// Whose address space [`check_caller_range`] checks.
#[derive(Clone, Copy)]
pub(crate) enum CallerRange {
    Fixed,
    External,
}

/// Checks that `offset..offset + size` lies inside `region_size` bytes, without overflow.
pub(crate) fn check_in_bounds(offset: usize, size: usize, region_size: usize) -> Result<()> {
    let end = offset.checked_add(size).ok_or(Error::Overflow {
        what: "offset + size",
        base: offset as u64,
        len: size as u64,
    })?;
    if end > region_size {
        return Err(Error::InvalidAddress {
            offset,
            size,
            region_size,
            why: "runs past the end",
        });
    }
    Ok(())
}

/// Runs a syscall that returns -1 on failure and names the range in the error.
pub(crate) fn syscall_on_range(
    call: &'static str,
    offset: usize,
    size: usize,
    f: impl FnOnce() -> libc::c_int,
) -> Result<()> {
    if f() < 0 {
        return Err(Error::SystemCall {
            call,
            offset,
            size,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

// Offsets move between usize and u64 freely: these crates target 64-bit Linux only.
const _: () = assert!(size_of::<usize>() == size_of::<u64>());
