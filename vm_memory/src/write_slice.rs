// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! [`WriteSlice`]: a slice of guest memory handed to a writer, whose pages are marked dirty
//! when the writer is done with it.

use std::ops::Deref;

use base::VolatileSlice;

use crate::{GuestAddress, GuestMemory};

/// A slice of guest memory lent for writing (device DMA, a `preadv` into guest buffers), from
/// [`GuestMemory::get_slice_for_write`]. While dirty tracking is on, its pages are marked when
/// it is dropped, after whatever was written through it: a harvest that runs while it is held
/// cannot take the mark ahead of the write, as it can for the slices of
/// [`GuestMemory::get_slice_at_addr`], which are marked when handed out.
///
/// It dereferences to the [`VolatileSlice`]. A copy of that slice taken out of the guard is
/// not covered once the guard is gone: write through the guard, or keep it until done. A
/// guard that is never dropped (`mem::forget`) marks nothing.
///
/// ```
/// use vm_memory::{DirtyBitmap, GuestAddress, GuestMemory};
/// let mem = GuestMemory::new(&[(GuestAddress(0), 0x10000)]).unwrap();
/// mem.set_dirty_tracking(true);
/// let slice = mem.get_slice_for_write(GuestAddress(0x3000), 16).unwrap();
/// slice.write_obj(0x1234u64, 8).unwrap();
/// drop(slice);
/// let bitmap = mem.memory_regions()[0].dirty_bitmap();
/// assert!(bitmap.is_dirty(3));
/// ```
#[derive(Debug)]
pub struct WriteSlice<'a> {
    mem: &'a GuestMemory,
    addr: GuestAddress,
    slice: VolatileSlice<'a>,
}

impl<'a> WriteSlice<'a> {
    pub(crate) fn new(mem: &'a GuestMemory, addr: GuestAddress, slice: VolatileSlice<'a>) -> Self {
        WriteSlice { mem, addr, slice }
    }

    /// The guest address of the slice's first byte.
    pub fn guest_addr(&self) -> GuestAddress {
        self.addr
    }
}

impl<'a> Deref for WriteSlice<'a> {
    type Target = VolatileSlice<'a>;

    fn deref(&self) -> &VolatileSlice<'a> {
        &self.slice
    }
}

impl Drop for WriteSlice<'_> {
    fn drop(&mut self) {
        self.mem.note_written(self.addr, self.slice.size());
    }
}
