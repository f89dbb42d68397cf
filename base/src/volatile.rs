// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Access to memory that someone else (a guest, another process, a device) may change at any
//! time, so the compiler must not assume it knows what it holds.
//!
//! Accesses of 1, 2, 4 or 8 bytes at a naturally aligned address are single loads or stores, so
//! a concurrent writer never sees them torn. Larger copies go through `memcpy`, the fastest way
//! to move bytes, and are not atomic.

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
    /// The address is not aligned as the object's type requires.
    #[error("address {addr:#x} is not aligned to {align} bytes")]
    Unaligned {
        /// The host address.
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
#[derive(Clone, Copy, Debug)]
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
    /// A slice over a buffer we own.
    pub fn new(buf: &'a mut [u8]) -> VolatileSlice<'a> {
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

    /// The first byte's address.
    pub fn as_ptr(&self) -> *mut u8 {
        self.addr
    }

    /// The length in bytes.
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

    /// Copies as many bytes as fit from this slice into `buf` and returns how many.
    pub fn copy_to<T: IntoBytes + FromBytes>(&self, buf: &mut [T]) -> usize {
        let dst = buf.as_mut_bytes();
        let len = dst.len().min(self.size);
        // `dst` cannot alias the slice: a VolatileSlice over a Rust buffer (`new`) borrows
        // that buffer mutably for its whole life.
        // SAFETY: both are valid for `len <= size` bytes and do not overlap (see above).
        unsafe { copy_from_volatile(dst.as_mut_ptr(), self.addr, len) };
        len
    }

    /// Copies as many bytes as fit from `buf` into this slice and returns how many.
    pub fn copy_from<T: IntoBytes + Immutable>(&self, buf: &[T]) -> usize {
        let src = buf.as_bytes();
        let len = src.len().min(self.size);
        // SAFETY: as in `copy_to`, with the roles swapped.
        unsafe { copy_to_volatile(self.addr, src.as_ptr(), len) };
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

    /// Reads a `T` at `offset`, which may be unaligned. When it happens to be aligned and `T`
    /// is 1, 2, 4 or 8 bytes, the read is a single untorn load.
    #[inline]
    pub fn read_obj<T: FromBytes>(&self, offset: usize) -> VolatileMemoryResult<T> {
        compute_end(offset, size_of::<T>(), self.size)?;
        // SAFETY: `offset + size_of::<T>() <= size`, so the bytes are readable, and any bytes
        // make a valid `T` (FromBytes).
        Ok(unsafe { read_volatile_obj(self.addr.add(offset) as *const T) })
    }

    /// Writes `val` at `offset`, which may be unaligned. When it happens to be aligned and `T`
    /// is 1, 2, 4 or 8 bytes, the write is a single untorn store.
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

    /// Reads a `T` at `offset`, which must be aligned for `T`. Types of 1, 2, 4 and 8 bytes are
    /// read in one load that a concurrent writer cannot tear; larger ones are copied with `memcpy`
    /// and may be torn.
    #[inline]
    pub fn read_obj_volatile<T: FromBytes>(&self, offset: usize) -> VolatileMemoryResult<T> {
        let ptr = self.checked_obj_ptr::<T>(offset)?;
        // SAFETY: `checked_obj_ptr` proved the object lies inside the slice and is aligned,
        // and any bytes make a valid `T`.
        Ok(unsafe { read_volatile_obj(ptr) })
    }

    /// Writes `val` at `offset`, which must be aligned for `T`. Types of 1, 2, 4 and 8 bytes
    /// are written in one store that a concurrent reader cannot see torn.
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
/// that size, by `memcpy` otherwise.
///
/// # Safety
///
/// `src` must be valid for reads of `size_of::<T>()` bytes.
#[inline(always)]
unsafe fn read_volatile_obj<T: FromBytes>(src: *const T) -> T {
    let mut val = std::mem::MaybeUninit::<T>::uninit();
    let dst = val.as_mut_ptr() as *mut u8;
    // SAFETY: forwarded from the caller; `dst` is our own `size_of::<T>()` bytes.
    unsafe { copy_from_volatile(dst, src as *const u8, size_of::<T>()) };
    // SAFETY: every byte of `val` was written above, and any bytes make a valid `T`.
    unsafe { val.assume_init() }
}

/// Writes `val` to `dst`: in one store when it is 1, 2, 4 or 8 bytes and `dst` is aligned to
/// that size, by `memcpy` otherwise.
///
/// # Safety
///
/// `dst` must be valid for writes of `size_of::<T>()` bytes.
#[inline(always)]
unsafe fn write_volatile_obj<T: IntoBytes + Immutable>(dst: *mut T, val: T) {
    // SAFETY: forwarded from the caller; the source is `val`'s own bytes.
    unsafe { copy_to_volatile(dst as *mut u8, val.as_bytes().as_ptr(), size_of::<T>()) }
}

/// Copies `len` bytes from volatile memory at `src` into the plain buffer at `dst`. When `len`
/// is 1, 2, 4 or 8 and `src` is aligned to it, the read is a single load.
///
/// # Safety
///
/// `src` must be valid for `len` bytes of reads and `dst` for `len` bytes of writes.
#[inline(always)]
pub(crate) unsafe fn copy_from_volatile(dst: *mut u8, src: *const u8, len: usize) {
    macro_rules! single_load {
        ($t:ty) => {
            if (src as usize) % size_of::<$t>() == 0 {
                // SAFETY: `src` is aligned for and valid for a `$t`; `dst` is valid for as many
                // bytes and written unaligned.
                unsafe {
                    ptr::write_unaligned(dst as *mut $t, ptr::read_volatile(src as *const $t))
                };
                return;
            }
        };
    }
    match len {
        1 => single_load!(u8),
        2 => single_load!(u16),
        4 => single_load!(u32),
        8 => single_load!(u64),
        _ => {}
    }
    // SAFETY: forwarded from the caller. The buffers cannot overlap because `dst` is the
    // caller's own plain memory.
    unsafe { ptr::copy_nonoverlapping(src, dst, len) }
}

/// Copies `len` bytes from the plain buffer at `src` into volatile memory at `dst`. When `len`
/// is 1, 2, 4 or 8 and `dst` is aligned to it, the write is a single store.
///
/// # Safety
///
/// `src` must be valid for `len` bytes of reads and `dst` for `len` bytes of writes.
#[inline(always)]
pub(crate) unsafe fn copy_to_volatile(dst: *mut u8, src: *const u8, len: usize) {
    macro_rules! single_store {
        ($t:ty) => {
            if (dst as usize) % size_of::<$t>() == 0 {
                // SAFETY: `dst` is aligned for and valid for a `$t`; `src` is valid for as many
                // bytes and read unaligned.
                unsafe {
                    ptr::write_volatile(dst as *mut $t, ptr::read_unaligned(src as *const $t))
                };
                return;
            }
        };
    }
    match len {
        1 => single_store!(u8),
        2 => single_store!(u16),
        4 => single_store!(u32),
        8 => single_store!(u64),
        _ => {}
    }
    // SAFETY: forwarded from the caller; the source is the caller's own plain memory.
    unsafe { ptr::copy_nonoverlapping(src, dst, len) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_overflow_and_zero_lengths() {
        let mut buf = [0u8; 16];
        let s = VolatileSlice::new(&mut buf);
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
        let s = VolatileSlice::new(&mut buf);
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
        let s = VolatileSlice::new(&mut buf);
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
                    let s = VolatileSlice::new(&mut buf[start..start + len]);
                    assert!(!s.is_all_zero(), "start {start} len {len} poke {poke}");
                    buf[poke] = 0;
                }
                assert!(VolatileSlice::new(&mut buf[start..start + len]).is_all_zero());
            }
        }
    }

    #[test]
    fn write_bytes_fills() {
        let mut buf = [0u8; 5];
        VolatileSlice::new(&mut buf).write_bytes(0xab);
        assert_eq!(buf, [0xab; 5]);
    }

    #[test]
    fn objects_plain_and_volatile() {
        let mut buf = [0u64; 4];
        let s = VolatileSlice::new(buf.as_mut_bytes());
        s.write_obj(0x1122_3344_5566_7788u64, 3).unwrap();
        assert_eq!(s.read_obj::<u64>(3).unwrap(), 0x1122_3344_5566_7788);
        s.write_obj_volatile(0xdead_beefu32, 8).unwrap();
        assert_eq!(s.read_obj_volatile::<u32>(8).unwrap(), 0xdead_beef);
        s.write_obj_volatile([7u64; 2], 16).unwrap();
        assert_eq!(s.read_obj_volatile::<[u64; 2]>(16).unwrap(), [7, 7]);
        let addr = s.as_ptr() as usize + 3;
        assert_eq!(
            s.read_obj_volatile::<u64>(3).unwrap_err(),
            VolatileMemoryError::Unaligned { addr, align: 8 }
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

    #[test]
    fn small_aligned_volatile_accesses_are_never_torn() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let mut word = [0u64; 1];
        let s = VolatileSlice::new(word.as_mut_bytes());
        let stop = AtomicBool::new(false);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let v = if i.is_multiple_of(2) { 0 } else { u64::MAX };
                    s.write_obj_volatile(v, 0).unwrap();
                    i += 1;
                }
            });
            for _ in 0..1_000_000 {
                let v: u64 = s.read_obj_volatile(0).unwrap();
                assert!(v == 0 || v == u64::MAX, "torn read {v:#x}");
                let v: u64 = s.read_obj(0).unwrap();
                assert!(v == 0 || v == u64::MAX, "torn plain read {v:#x}");
                let mut out = [0u8; 8];
                s.copy_to(&mut out);
                let v = u64::from_ne_bytes(out);
                assert!(v == 0 || v == u64::MAX, "torn copy {v:#x}");
            }
            stop.store(true, Ordering::Relaxed);
        });
    }
}
