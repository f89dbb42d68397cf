// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Access to memory that someone else (a guest, another process, a device) may change at any
//! time, so the compiler must not assume it knows what it holds.
//!
//! Objects (`read_obj`, `write_obj` and their `_volatile` forms) are copied one naturally
//! aligned piece at a time: each 8-, 4- or 2-byte piece that is aligned to its size is a
//! single load or store, so a concurrent writer never tears it, whatever the object's size or
//! alignment. An aligned `u64` is one access. Bulk copies of more than 8 bytes (`copy_to`,
//! `copy_from`) go through `memcpy`, the fastest way to move bytes, and promise nothing about
//! tearing; copies of up to 8 bytes are made of untorn pieces like objects.

use std::marker::PhantomData;
use std::mem::{align_of, size_of};
use std::ptr;

use remain::sorted;
use thiserror::Error;
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// Errors of volatile access.
#[sorted]
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum VolatileMemoryError {
    /// An object of this size cannot be accessed in one untorn load or store.
    #[error(
        "an object of {size} bytes cannot be accessed untorn: use 1, 2, 4, 8 or more than 8 bytes"
    )]
    NotAtomicSize {
        /// The object's size.
        size: usize,
    },
    /// Part of the range is not backed by read-write memory (an arena's unmapped space).
    #[error("range {offset:#x}+{count:#x} is not wholly backed by read-write memory")]
    NotMapped {
        /// Start of the range.
        offset: usize,
        /// Its length.
        count: usize,
    },
    /// The range runs past the end of the memory.
    #[error("range {offset:#x}+{count:#x} runs past the end of memory of {size:#x} bytes")]
    OutOfBounds {
        /// Start of the range.
        offset: usize,
        /// Its length.
        count: usize,
        /// Size of the memory.
        size: usize,
    },
    /// `offset + count` overflows.
    #[error("range {offset:#x}+{count:#x} overflows")]
    Overflow {
        /// Start of the range.
        offset: usize,
        /// Its length.
        count: usize,
    },
    /// The offset is not aligned as the object's type requires.
    #[error("offset {offset:#x} (at host address {addr:#x}) is not aligned to {align} bytes")]
    Unaligned {
        /// The offset the caller gave.
        offset: usize,
        /// The host address it falls on.
        addr: usize,
        /// The alignment required.
        align: usize,
    },
}

/// Result of volatile access.
pub type VolatileMemoryResult<T> = std::result::Result<T, VolatileMemoryError>;

/// Checks that `offset..offset + count` lies inside memory of `size` bytes and returns its end.
pub fn compute_end(offset: usize, count: usize, size: usize) -> VolatileMemoryResult<usize> {
    let end = offset
        .checked_add(count)
        .ok_or(VolatileMemoryError::Overflow { offset, count })?;
    if end > size {
        return Err(VolatileMemoryError::OutOfBounds {
            offset,
            count,
            size,
        });
    }
    Ok(end)
}

/// Memory that can hand out [`VolatileSlice`]s of itself.
pub trait VolatileMemory {
    /// A slice of `count` bytes at `offset`, or an error if it does not fit.
    fn get_slice(&self, offset: usize, count: usize) -> VolatileMemoryResult<VolatileSlice<'_>>;
}

/// A range of memory that may change under us, borrowed for `'a`.
///
/// The layout is that of `struct iovec` (a pointer, then a length), so a slice of
/// `VolatileSlice`s can be handed to `readv`/`writev` as it is ([`VolatileSlice::as_iobufs`]).
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct VolatileSlice<'a> {
    addr: *mut u8,
    size: usize,
    phantom: PhantomData<&'a [u8]>,
}

// SAFETY: a VolatileSlice is a pointer and a length. Every access through it is volatile or a
// raw copy, which is how memory shared with other threads must be treated anyway, so handing it
// to another thread adds no new hazard.
unsafe impl Send for VolatileSlice<'_> {}
// SAFETY: as for Send: no access through a shared VolatileSlice assumes exclusive ownership.
unsafe impl Sync for VolatileSlice<'_> {}

impl<'a> VolatileSlice<'a> {
    /// A slice over a plain Rust buffer.
    ///
    /// # Safety
    ///
    /// A `VolatileSlice` is `Copy`, `Send` and `Sync`, and plain Rust memory, unlike a mapping
    /// shared with a guest, is memory the compiler reasons about: two threads must never use
    /// the returned slice (or its copies) on the same bytes at the same time when one of them
    /// writes, since that is a data race on Rust memory.
    pub unsafe fn new(buf: &'a mut [u8]) -> VolatileSlice<'a> {
        VolatileSlice {
            addr: buf.as_mut_ptr(),
            size: buf.len(),
            phantom: PhantomData,
        }
    }

    /// A slice over `size` bytes at `addr`.
    ///
    /// # Safety
    ///
    /// `addr..addr + size` must be memory that stays mapped, readable and writable for `'a`.
    pub unsafe fn from_raw_parts(addr: *mut u8, size: usize) -> VolatileSlice<'a> {
        VolatileSlice {
            addr,
            size,
            phantom: PhantomData,
        }
    }

    /// The slice as an `iovec` for `readv`, `writev` and the like.
    pub fn as_iobuf(&self) -> &libc::iovec {
        // SAFETY: `VolatileSlice` is `repr(C)` with a pointer and a `usize` length followed by
        // a zero-sized marker, which is exactly the layout of `iovec`.
        unsafe { &*(self as *const VolatileSlice as *const libc::iovec) }
    }

    /// Slices as `iovec`s, for `readv`, `writev`, `preadv` and `pwritev` (crosvm's
    /// `as_iobufs`). Each names memory that is readable and writable for `'a`.
    ///
    /// ```
    /// use base::{MemoryMappingBuilder, VolatileMemory, VolatileSlice};
    /// use std::os::fd::AsRawFd;
    /// let mem = MemoryMappingBuilder::new(4096).build().unwrap();
    /// let parts = [mem.get_slice(0, 3).unwrap(), mem.get_slice(100, 2).unwrap()];
    /// let (r, w) = std::io::pipe().unwrap();
    /// std::io::Write::write_all(&mut &w, b"hello").unwrap();
    /// let iov = VolatileSlice::as_iobufs(&parts);
    /// // SAFETY: each iovec names live, writable bytes of `mem`.
    /// let n = unsafe { libc::readv(r.as_raw_fd(), iov.as_ptr(), iov.len() as i32) };
    /// assert_eq!(n, 5);
    /// assert_eq!(mem.read_obj::<[u8; 3]>(0).unwrap(), *b"hel");
    /// assert_eq!(mem.read_obj::<[u8; 2]>(100).unwrap(), *b"lo");
    /// ```
    pub fn as_iobufs<'s>(slices: &'s [VolatileSlice<'a>]) -> &'s [libc::iovec] {
        // SAFETY: each element has the layout of an `iovec` (see `as_iobuf`), so the array of
        // them has the layout of an array of `iovec`s of the same length, borrowed as long.
        unsafe { std::slice::from_raw_parts(slices.as_ptr() as *const libc::iovec, slices.len()) }
    }

    /// The first byte's address.
    #[inline]
    pub fn as_ptr(&self) -> *mut u8 {
        self.addr
    }

    /// The length in bytes.
    #[inline]
    pub fn size(&self) -> usize {
        self.size
    }

    /// The slice with its first `count` bytes dropped.
    pub fn offset(self, count: usize) -> VolatileMemoryResult<VolatileSlice<'a>> {
        compute_end(count, 0, self.size)?;
        // SAFETY: `count <= size`, so the new range lies inside ours and lives as long.
        Ok(unsafe { VolatileSlice::from_raw_parts(self.addr.add(count), self.size - count) })
    }

    /// The `count` bytes at `offset` inside this slice.
    pub fn sub_slice(self, offset: usize, count: usize) -> VolatileMemoryResult<VolatileSlice<'a>> {
        compute_end(offset, count, self.size)?;
        // SAFETY: `offset + count <= size`, so the new range lies inside ours and lives as long.
        Ok(unsafe { VolatileSlice::from_raw_parts(self.addr.add(offset), count) })
    }

    /// Sets every byte to `value`.
    pub fn write_bytes(&self, value: u8) {
        // SAFETY: the slice's memory is valid for writes of `size` bytes (constructor contract).
        unsafe { ptr::write_bytes(self.addr, value, self.size) }
    }

    /// Copies as many bytes as fit from this slice into `buf` and returns how many. Copies of
    /// up to 8 bytes are made of untorn aligned pieces; longer ones are a `memcpy`.
    pub fn copy_to<T: IntoBytes + FromBytes>(&self, buf: &mut [T]) -> usize {
        let dst = buf.as_mut_bytes();
        let len = dst.len().min(self.size);
        // `dst` cannot alias the slice: a VolatileSlice over a Rust buffer (`new`) borrows
        // that buffer mutably for its whole life.
        // SAFETY: both are valid for `len <= size` bytes and do not overlap (see above).
        unsafe { copy_from_volatile(dst.as_mut_ptr(), self.addr, len) };
        len
    }

    /// Copies as many bytes as fit from `buf` into this slice and returns how many. Copies of
    /// up to 8 bytes are made of untorn aligned pieces; longer ones are a `memcpy`.
    pub fn copy_from<T: IntoBytes + Immutable>(&self, buf: &[T]) -> usize {
        let src = buf.as_bytes();
        let len = src.len().min(self.size);
        // SAFETY: as in `copy_to`, with the roles swapped.
        unsafe { copy_to_volatile(self.addr, src.as_ptr(), len) };
        len
    }

    /// Like [`copy_to`](Self::copy_to), but at any length every naturally aligned 8-, 4- or
    /// 2-byte piece of the slice is read with one load, as objects are. For the parts of an
    /// object that spans memory in several slices (guest memory across a region boundary).
    pub fn copy_to_untorn(&self, buf: &mut [u8]) -> usize {
        let len = buf.len().min(self.size);
        // SAFETY: both are valid for `len <= size` bytes, and `buf` is the caller's own plain
        // memory, which a slice cannot alias (see `copy_to`).
        unsafe { copy_pieces_from_volatile(buf.as_mut_ptr(), self.addr, len) };
        len
    }

    /// Like [`copy_from`](Self::copy_from), but at any length every naturally aligned 8-, 4- or
    /// 2-byte piece of the slice is written with one store, as objects are.
    pub fn copy_from_untorn(&self, buf: &[u8]) -> usize {
        let len = buf.len().min(self.size);
        // SAFETY: as in `copy_to_untorn`, with the roles swapped.
        unsafe { copy_pieces_to_volatile(self.addr, buf.as_ptr(), len) };
        len
    }

    /// Copies as many bytes as fit into `dst`, which may overlap this slice, and returns how
    /// many.
    pub fn copy_to_volatile_slice(&self, dst: VolatileSlice) -> usize {
        let len = dst.size.min(self.size);
        // SAFETY: both ranges are valid for `len` bytes; `ptr::copy` allows overlap.
        unsafe { ptr::copy(self.addr, dst.addr, len) };
        len
    }

    /// Whether every byte is zero.
    pub fn is_all_zero(&self) -> bool {
        const WORD: usize = size_of::<u64>();
        let head = self.addr.align_offset(WORD).min(self.size);
        let words = (self.size - head) / WORD;
        let byte_is_zero = |i: usize| {
            // SAFETY: callers pass `i < size`.
            unsafe { ptr::read_volatile(self.addr.add(i)) == 0 }
        };
        let word_is_zero = |i: usize| {
            // SAFETY: `head + (i + 1) * WORD <= size` and `addr + head` is 8-byte aligned.
            unsafe { ptr::read_volatile(self.addr.add(head + i * WORD) as *const u64) == 0 }
        };
        (0..head).all(byte_is_zero)
            && (0..words).all(word_is_zero)
            && (head + words * WORD..self.size).all(byte_is_zero)
    }

    /// Reads a `T` at `offset`, which may be unaligned. Every naturally aligned 8-, 4- or
    /// 2-byte piece of it is one untorn load; an aligned `T` of 1, 2, 4 or 8 bytes is a single
    /// load.
    #[inline]
    pub fn read_obj<T: FromBytes>(&self, offset: usize) -> VolatileMemoryResult<T> {
        compute_end(offset, size_of::<T>(), self.size)?;
        // SAFETY: `offset + size_of::<T>() <= size`, so the bytes are readable, and any bytes
        // make a valid `T` (FromBytes).
        Ok(unsafe { read_volatile_obj(self.addr.add(offset) as *const T) })
    }

    /// Writes `val` at `offset`, which may be unaligned. Every naturally aligned 8-, 4- or
    /// 2-byte piece of it is one untorn store; an aligned `T` of 1, 2, 4 or 8 bytes is a single
    /// store.
    #[inline]
    pub fn write_obj<T: IntoBytes + Immutable>(
        &self,
        val: T,
        offset: usize,
    ) -> VolatileMemoryResult<()> {
        compute_end(offset, size_of::<T>(), self.size)?;
        // SAFETY: `offset + size_of::<T>() <= size`, so the bytes are writable.
        unsafe { write_volatile_obj(self.addr.add(offset) as *mut T, val) };
        Ok(())
    }

    /// Reads a `T` at `offset`, which must be aligned for `T` (and, up to 8 bytes, to its size,
    /// which must be 1, 2, 4 or 8). Types of up to 8 bytes are read in one load that a
    /// concurrent writer cannot tear; larger ones one aligned piece at a time.
    #[inline]
    pub fn read_obj_volatile<T: FromBytes>(&self, offset: usize) -> VolatileMemoryResult<T> {
        let ptr = self.checked_obj_ptr::<T>(offset)?;
        // SAFETY: `checked_obj_ptr` proved the object lies inside the slice and is aligned,
        // and any bytes make a valid `T`.
        Ok(unsafe { read_volatile_obj(ptr) })
    }

    /// Writes `val` at `offset`, with the alignment rules of
    /// [`read_obj_volatile`](Self::read_obj_volatile). Types of up to 8 bytes are written in one
    /// store that a concurrent reader cannot see torn; larger ones one aligned piece at a time.
    #[inline]
    pub fn write_obj_volatile<T: IntoBytes + Immutable>(
        &self,
        val: T,
        offset: usize,
    ) -> VolatileMemoryResult<()> {
        let ptr = self.checked_obj_ptr::<T>(offset)?;
        // SAFETY: `checked_obj_ptr` proved the object lies inside the slice and is aligned.
        unsafe { write_volatile_obj(ptr, val) };
        Ok(())
    }

    #[inline]
    fn checked_obj_ptr<T>(&self, offset: usize) -> VolatileMemoryResult<*mut T> {
        let size = size_of::<T>();
        if size <= 8 && !size.is_power_of_two() && size != 0 {
            return Err(VolatileMemoryError::NotAtomicSize { size });
        }
        compute_end(offset, size, self.size)?;
        // SAFETY: `offset <= size`, so the result stays inside the slice (or one past its end).
        let ptr = unsafe { self.addr.add(offset) };
        // An object of 8 bytes or less needs natural alignment to be a single access.
        let align = if size <= 8 {
            align_of::<T>().max(size)
        } else {
            align_of::<T>()
        };
        if !(ptr as usize).is_multiple_of(align) {
            return Err(VolatileMemoryError::Unaligned {
                offset,
                addr: ptr as usize,
                align,
            });
        }
        Ok(ptr as *mut T)
    }
}

impl VolatileMemory for VolatileSlice<'_> {
    fn get_slice(&self, offset: usize, count: usize) -> VolatileMemoryResult<VolatileSlice<'_>> {
        self.sub_slice(offset, count)
    }
}

/// Reads a `T` from `src`: in one load when it is 1, 2, 4 or 8 bytes and `src` is aligned to
/// that size, else one naturally aligned piece at a time.
///
/// # Safety
///
/// `src` must be valid for reads of `size_of::<T>()` bytes.
#[inline(always)]
unsafe fn read_volatile_obj<T: FromBytes>(src: *const T) -> T {
    let mut val = std::mem::MaybeUninit::<T>::uninit();
    let dst = val.as_mut_ptr() as *mut u8;
    // SAFETY: forwarded from the caller; `dst` is our own `size_of::<T>()` bytes.
    unsafe { copy_pieces_from_volatile(dst, src as *const u8, size_of::<T>()) };
    // SAFETY: every byte of `val` was written above, and any bytes make a valid `T`.
    unsafe { val.assume_init() }
}

/// Writes `val` to `dst`: in one store when it is 1, 2, 4 or 8 bytes and `dst` is aligned to
/// that size, else one naturally aligned piece at a time.
///
/// # Safety
///
/// `dst` must be valid for writes of `size_of::<T>()` bytes.
#[inline(always)]
unsafe fn write_volatile_obj<T: IntoBytes + Immutable>(dst: *mut T, val: T) {
    // SAFETY: forwarded from the caller; the source is `val`'s own bytes.
    unsafe { copy_pieces_to_volatile(dst as *mut u8, val.as_bytes().as_ptr(), size_of::<T>()) }
}

/// The size of the next piece of a copy at `addr` with `left` bytes to go: the largest of 8,
/// 4, 2 and 1 that `addr` is aligned to and that fits.
#[inline(always)]
fn piece_size(addr: usize, left: usize) -> usize {
    let aligned = 1usize << addr.trailing_zeros().min(3);
    let fits = if left >= 8 {
        8
    } else if left >= 4 {
        4
    } else if left >= 2 {
        2
    } else {
        1
    };
    aligned.min(fits)
}

/// Whether a copy of `len` bytes at `addr` is one aligned access of 1, 2, 4 or 8 bytes.
#[inline(always)]
fn single_access(addr: usize, len: usize) -> bool {
    len.is_power_of_two() && len <= 8 && addr & (len - 1) == 0
}

/// Copies one piece of `n` bytes (1, 2, 4 or 8) from `src` to `dst` with one `$load` and one
/// `$store` of that width.
macro_rules! copy_piece {
    ($n:expr, $load:path, $store:path, $dst:expr, $src:expr) => {
        match $n {
            8 => $store($dst as *mut u64, $load($src as *const u64)),
            4 => $store($dst as *mut u32, $load($src as *const u32)),
            2 => $store($dst as *mut u16, $load($src as *const u16)),
            _ => $store($dst, $load($src)),
        }
    };
}

/// Copies `len` bytes from volatile memory at `src` into the plain buffer at `dst`, each
/// naturally aligned 8-, 4- or 2-byte piece of `src` with one load.
///
/// # Safety
///
/// `src` must be valid for `len` bytes of reads and `dst` for `len` bytes of writes.
#[inline(always)]
pub(crate) unsafe fn copy_pieces_from_volatile(dst: *mut u8, src: *const u8, len: usize) {
    // The common case, decided at compile time for a known `len` but for the alignment test.
    if single_access(src as usize, len) {
        // SAFETY: `src` is aligned to `len` and both buffers hold `len` bytes; `dst` is
        // written unaligned.
        unsafe { copy_piece!(len, ptr::read_volatile, ptr::write_unaligned, dst, src) };
        return;
    }
    // SAFETY: forwarded from the caller.
    unsafe { copy_pieces_from_volatile_slow(dst, src, len) }
}

/// The piece-by-piece loop of [`copy_pieces_from_volatile`], out of line: it is the rare case
/// (unaligned or odd-sized objects), and inlining it at every call site would crowd the
/// registers of the common one.
///
/// # Safety
///
/// As for [`copy_pieces_from_volatile`].
#[inline(never)]
unsafe fn copy_pieces_from_volatile_slow(dst: *mut u8, src: *const u8, len: usize) {
    let mut done = 0;
    while done < len {
        // SAFETY: `done < len`, so both pointers stay inside their buffers.
        let (from, to) = unsafe { (src.add(done), dst.add(done)) };
        let n = piece_size(from as usize, len - done);
        // SAFETY: `done + n <= len`, so the piece lies inside both buffers; `from` is aligned
        // to `n` (`piece_size`), and `to` is written unaligned.
        unsafe { copy_piece!(n, ptr::read_volatile, ptr::write_unaligned, to, from) };
        done += n;
    }
}

/// Copies `len` bytes from the plain buffer at `src` into volatile memory at `dst`, each
/// naturally aligned 8-, 4- or 2-byte piece of `dst` with one store.
///
/// # Safety
///
/// `src` must be valid for `len` bytes of reads and `dst` for `len` bytes of writes.
#[inline(always)]
pub(crate) unsafe fn copy_pieces_to_volatile(dst: *mut u8, src: *const u8, len: usize) {
    if single_access(dst as usize, len) {
        // SAFETY: `dst` is aligned to `len` and both buffers hold `len` bytes; `src` is read
        // unaligned.
        unsafe { copy_piece!(len, ptr::read_unaligned, ptr::write_volatile, dst, src) };
        return;
    }
    // SAFETY: forwarded from the caller.
    unsafe { copy_pieces_to_volatile_slow(dst, src, len) }
}

/// The piece-by-piece loop of [`copy_pieces_to_volatile`], out of line: it is the rare case
/// (unaligned or odd-sized objects), and inlining it at every call site would crowd the
/// registers of the common one.
///
/// # Safety
///
/// As for [`copy_pieces_to_volatile`].
#[inline(never)]
unsafe fn copy_pieces_to_volatile_slow(dst: *mut u8, src: *const u8, len: usize) {
    let mut done = 0;
    while done < len {
        // SAFETY: `done < len`, so both pointers stay inside their buffers.
        let (from, to) = unsafe { (src.add(done), dst.add(done)) };
        let n = piece_size(to as usize, len - done);
        // SAFETY: `done + n <= len`, so the piece lies inside both buffers; `to` is aligned to
        // `n` (`piece_size`), and `from` is read unaligned.
        unsafe { copy_piece!(n, ptr::read_unaligned, ptr::write_volatile, to, from) };
        done += n;
    }
}

/// Copies `len` bytes from volatile memory at `src` into the plain buffer at `dst`: in untorn
/// pieces up to 8 bytes, by `memcpy` beyond.
///
/// # Safety
///
/// `src` must be valid for `len` bytes of reads and `dst` for `len` bytes of writes.
#[inline(always)]
pub(crate) unsafe fn copy_from_volatile(dst: *mut u8, src: *const u8, len: usize) {
    if len <= 8 {
        // SAFETY: forwarded from the caller.
        unsafe { copy_pieces_from_volatile(dst, src, len) }
    } else {
        // SAFETY: forwarded from the caller. The buffers cannot overlap because `dst` is the
        // caller's own plain memory.
        unsafe { ptr::copy_nonoverlapping(src, dst, len) }
    }
}

/// Copies `len` bytes from the plain buffer at `src` into volatile memory at `dst`: in untorn
/// pieces up to 8 bytes, by `memcpy` beyond.
///
/// # Safety
///
/// `src` must be valid for `len` bytes of reads and `dst` for `len` bytes of writes.
#[inline(always)]
pub(crate) unsafe fn copy_to_volatile(dst: *mut u8, src: *const u8, len: usize) {
    if len <= 8 {
        // SAFETY: forwarded from the caller.
        unsafe { copy_pieces_to_volatile(dst, src, len) }
    } else {
        // SAFETY: forwarded from the caller; the source is the caller's own plain memory.
        unsafe { ptr::copy_nonoverlapping(src, dst, len) }
    }
}

// `as_iobuf` relies on the slice having the layout of an iovec.
const _: () = assert!(
    size_of::<VolatileSlice>() == size_of::<libc::iovec>()
        && align_of::<VolatileSlice>() == align_of::<libc::iovec>()
);

#[cfg(test)]
mod tests {
    use super::*;

    /// A slice over a test's own buffer.
    fn over(buf: &mut [u8]) -> VolatileSlice<'_> {
        // SAFETY: these tests use each slice from one thread only.
        unsafe { VolatileSlice::new(buf) }
    }

    #[test]
    fn bounds_overflow_and_zero_lengths() {
        let mut buf = [0u8; 16];
        let s = over(&mut buf);
        assert_eq!(s.sub_slice(16, 0).unwrap().size(), 0);
        assert_eq!(s.sub_slice(0, 16).unwrap().size(), 16);
        assert_eq!(
            s.sub_slice(8, 9).unwrap_err(),
            VolatileMemoryError::OutOfBounds {
                offset: 8,
                count: 9,
                size: 16
            }
        );
        assert_eq!(
            s.sub_slice(usize::MAX, 2).unwrap_err(),
            VolatileMemoryError::Overflow {
                offset: usize::MAX,
                count: 2
            }
        );
        assert!(s.get_slice(17, 0).is_err());
        assert_eq!(s.offset(16).unwrap().size(), 0);
        assert!(s.offset(17).is_err());
        assert!(s.read_obj::<u64>(9).is_err());
        assert!(s.read_obj::<u64>(usize::MAX).is_err());
        assert!(s.write_obj(1u32, 13).is_err());
        let msg = s.sub_slice(8, 9).unwrap_err().to_string();
        assert!(
            msg.contains("0x8") && msg.contains("0x9") && msg.contains("0x10"),
            "{msg}"
        );
    }

    #[test]
    fn copies_clip_to_the_shorter_side() {
        let mut buf = [0u8; 8];
        let s = over(&mut buf);
        assert_eq!(s.copy_from(&[1u8, 2, 3]), 3);
        assert_eq!(s.copy_from(&[9u8; 20]), 8);
        let mut out = [0u8; 4];
        assert_eq!(s.copy_to(&mut out), 4);
        assert_eq!(out, [9; 4]);
        let mut words = [0u16; 8];
        assert_eq!(s.copy_to(&mut words), 8);
        assert_eq!(&words[..4], &[0x0909; 4]);
        assert_eq!(&words[4..], &[0; 4]);
    }

    #[test]
    fn copy_to_volatile_slice_handles_overlap() {
        let mut buf: Vec<u8> = (0..16).collect();
        let s = over(&mut buf);
        let copied = s
            .sub_slice(0, 8)
            .unwrap()
            .copy_to_volatile_slice(s.sub_slice(4, 12).unwrap());
        assert_eq!(copied, 8);
        let mut out = [0u8; 16];
        s.copy_to(&mut out);
        assert_eq!(out, [0, 1, 2, 3, 0, 1, 2, 3, 4, 5, 6, 7, 12, 13, 14, 15]);
    }

    #[test]
    fn is_all_zero_checks_every_byte_at_any_alignment() {
        let mut buf = [0u8; 64];
        for start in 0..9 {
            for len in 0..(64 - start) {
                for poke in start..start + len {
                    buf[poke] = 1;
                    let s = over(&mut buf[start..start + len]);
                    assert!(!s.is_all_zero(), "start {start} len {len} poke {poke}");
                    buf[poke] = 0;
                }
                assert!(over(&mut buf[start..start + len]).is_all_zero());
            }
        }
    }

    #[test]
    fn write_bytes_fills() {
        let mut buf = [0u8; 5];
        over(&mut buf).write_bytes(0xab);
        assert_eq!(buf, [0xab; 5]);
    }

    #[test]
    fn objects_plain_and_volatile() {
        let mut buf = [0u64; 4];
        let s = over(buf.as_mut_bytes());
        s.write_obj(0x1122_3344_5566_7788u64, 3).unwrap();
        assert_eq!(s.read_obj::<u64>(3).unwrap(), 0x1122_3344_5566_7788);
        s.write_obj_volatile(0xdead_beefu32, 8).unwrap();
        assert_eq!(s.read_obj_volatile::<u32>(8).unwrap(), 0xdead_beef);
        s.write_obj_volatile([7u64; 2], 16).unwrap();
        assert_eq!(s.read_obj_volatile::<[u64; 2]>(16).unwrap(), [7, 7]);
        let addr = s.as_ptr() as usize + 3;
        assert_eq!(
            s.read_obj_volatile::<u64>(3).unwrap_err(),
            VolatileMemoryError::Unaligned {
                offset: 3,
                addr,
                align: 8
            }
        );
        assert_eq!(
            s.write_obj_volatile([0u8; 3], 0).unwrap_err(),
            VolatileMemoryError::NotAtomicSize { size: 3 }
        );
        // A byte array of 8 must be 8-aligned too, or it could be torn.
        assert!(matches!(
            s.read_obj_volatile::<[u8; 8]>(4),
            Err(VolatileMemoryError::Unaligned { align: 8, .. })
        ));
        assert!(s.read_obj_volatile::<u64>(32).is_err());
        assert!(s.write_obj_volatile(0u64, usize::MAX - 3).is_err());
    }

    /// Races a writer that flips `T`-sized values at `offset` between all zeros and all ones
    /// against a reader that runs `check` 300,000 times, over a shared mapping (the memory a
    /// guest would write).
    fn race(
        offset: usize,
        len: usize,
        write: impl Fn(&VolatileSlice, bool) + Sync,
        check: impl Fn(&VolatileSlice),
    ) {
        use std::sync::atomic::{AtomicBool, Ordering};
        let mem = crate::MemoryMappingBuilder::new(8192).build().unwrap();
        let s = crate::VolatileMemory::get_slice(&mem, offset, len).unwrap();
        /// Stops the writer however the reader ends, a failed check included.
        struct Stop<'a>(&'a AtomicBool);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let stop = AtomicBool::new(false);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let mut ones = false;
                while !stop.load(Ordering::Relaxed) {
                    write(&s, ones);
                    ones = !ones;
                }
            });
            let _stop = Stop(&stop);
            for _ in 0..300_000 {
                check(&s);
            }
        });
    }

    #[test]
    fn small_aligned_accesses_of_a_mapping_are_never_torn() {
        race(
            0,
            8,
            |s, ones| {
                s.write_obj_volatile(if ones { u64::MAX } else { 0 }, 0)
                    .unwrap()
            },
            |s| {
                let v: u64 = s.read_obj_volatile(0).unwrap();
                assert!(v == 0 || v == u64::MAX, "torn read {v:#x}");
                let v: u64 = s.read_obj(0).unwrap();
                assert!(v == 0 || v == u64::MAX, "torn plain read {v:#x}");
                let mut out = [0u8; 8];
                s.copy_to(&mut out);
                let v = u64::from_ne_bytes(out);
                assert!(v == 0 || v == u64::MAX, "torn copy {v:#x}");
            },
        );
    }

    #[test]
    fn aligned_pieces_of_unaligned_objects_are_never_torn() {
        // A 15-byte object at offset 1: pieces u8 @1, u16 @2, u32 @4, u64 @8.
        race(
            0,
            16,
            |s, ones| s.write_obj([if ones { 0xffu8 } else { 0 }; 15], 1).unwrap(),
            |s| {
                let obj: [u8; 15] = s.read_obj(1).unwrap();
                for (range, what) in [(1..3, "u16"), (3..7, "u32"), (7..15, "u64")] {
                    let piece = &obj[range];
                    assert!(
                        piece.iter().all(|&b| b == piece[0]),
                        "torn {what} piece {piece:x?} of {obj:x?}"
                    );
                }
                // And the writer's aligned pieces, seen by single loads.
                let w: u64 = s.read_obj_volatile(8).unwrap();
                assert!(w == 0 || w == u64::MAX, "torn u64 {w:#x}");
                let h: u16 = s.read_obj_volatile(2).unwrap();
                assert!(h == 0 || h == u16::MAX, "torn u16 {h:#x}");
            },
        );
    }

    #[test]
    fn pieces_follow_the_alignment_of_the_volatile_side() {
        let at = |addr, left| piece_size(addr, left);
        assert_eq!([at(0, 8), at(0, 7), at(0, 3), at(0, 1)], [8, 4, 2, 1]);
        assert_eq!(
            [at(1, 8), at(2, 8), at(4, 8), at(12, 8), at(16, 16)],
            [1, 2, 4, 4, 8]
        );
        assert!(single_access(8, 8) && single_access(3, 1) && !single_access(4, 8));
        assert!(!single_access(0, 3) && !single_access(0, 16) && !single_access(0, 0));
    }

    #[test]
    fn untorn_copies_match_plain_copies() {
        let mut src: Vec<u8> = (0..64).collect();
        let s = over(&mut src);
        for start in 0..9 {
            for len in 0..40 {
                let part = s.sub_slice(start, len).unwrap();
                let (mut a, mut b) = (vec![0u8; len], vec![0u8; len]);
                assert_eq!(part.copy_to_untorn(&mut a), len);
                part.copy_to(&mut b);
                assert_eq!(a, b, "start {start} len {len}");
            }
        }
        let mut dst = [0u8; 32];
        let d = over(&mut dst);
        assert_eq!(d.sub_slice(3, 20).unwrap().copy_from_untorn(&[7u8; 25]), 20);
        let mut back = [0u8; 32];
        d.copy_to(&mut back);
        assert_eq!(&back[..3], &[0; 3]);
        assert_eq!(&back[3..23], &[7; 20]);
        assert_eq!(&back[23..], &[0; 9]);
    }

    #[test]
    fn iobufs_have_the_slices_layout() {
        let mut buf = [0u8; 32];
        let s = over(&mut buf);
        let parts = [s.sub_slice(0, 4).unwrap(), s.sub_slice(10, 22).unwrap()];
        let iov = VolatileSlice::as_iobufs(&parts);
        assert_eq!(iov.len(), 2);
        assert_eq!(
            (iov[1].iov_base as usize, iov[1].iov_len),
            (s.as_ptr() as usize + 10, 22)
        );
        assert_eq!(parts[0].as_iobuf().iov_len, 4);
        assert!(VolatileSlice::as_iobufs(&[]).is_empty());
    }
}
