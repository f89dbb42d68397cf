// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! rust-vmm's vm-memory 0.18 traits on our memory (feature `rust-vmm`), so that crates written
//! against them (`linux-loader`, `virtio-queue`, `vhost`, vm-virtio devices) run on a
//! [`GuestMemory`] as they do on vm-memory's own `GuestMemoryMmap`.
//!
//! [`MemoryRegion`] is a `GuestMemoryRegion` (with `GuestMemoryRegionBytes`, bitmap `()`), and
//! [`GuestMemory`] a `GuestMemoryBackend` whose regions are ours: vm-memory's blanket impls
//! then give it `GuestMemory` and `Bytes<GuestAddress>`. Nothing is copied and no second
//! lookup structure is built: an address is found through our region table, and the slices
//! handed out are views of our mappings.
//!
//! Our inherent methods keep their names and meaning (crosvm's `find_region` returns the
//! mapping and offsets, for example); generic code over vm-memory's traits calls the trait
//! methods. Where a name is both, call the trait method by path
//! (`GuestMemoryBackend::find_region(&mem, addr)`).
//!
//! ```
//! use vm_memory::rust_vm_memory::{self as rvm, Bytes, GuestMemoryBackend};
//! use vm_memory::{GuestAddress, GuestMemory};
//!
//! let mem = GuestMemory::new(&[(GuestAddress(0), 0x1000), (GuestAddress(0x1000), 0x1000)]).unwrap();
//! // Code written for vm-memory, unchanged: here an object across two regions.
//! fn put<M: Bytes<rvm::GuestAddress>>(m: &M) -> Result<(), M::E> {
//!     m.write_obj(0x1122_3344_5566_7788u64, rvm::GuestAddress(0xffc))
//! }
//! put(&mem).unwrap();
//! assert_eq!(mem.read_obj_from_addr::<u64>(GuestAddress(0xffc)).unwrap(), 0x1122_3344_5566_7788);
//! assert_eq!(GuestMemoryBackend::num_regions(&mem), 2);
//! ```

use std::fs::File;
use std::os::fd::AsFd;

use rust_vm_memory::bitmap::BS;
use rust_vm_memory::guest_memory::{Error as RvmError, Result as RvmResult};
use rust_vm_memory::{
    FileOffset, GuestMemoryBackend, GuestMemoryRegion, GuestMemoryRegionBytes, GuestUsize,
    MemoryRegionAddress, VolatileSlice,
};

use crate::region::RegionBacking;
use crate::{GuestAddress, GuestMemory, MemoryRegion};

impl From<GuestAddress> for rust_vm_memory::GuestAddress {
    fn from(addr: GuestAddress) -> Self {
        rust_vm_memory::GuestAddress(addr.0)
    }
}

impl From<rust_vm_memory::GuestAddress> for GuestAddress {
    fn from(addr: rust_vm_memory::GuestAddress) -> Self {
        GuestAddress(addr.0)
    }
}

impl MemoryRegion {
    /// `offset..offset + count` as host offsets in this region, if it lies in it.
    #[inline(always)]
    fn checked_span(&self, offset: MemoryRegionAddress, count: usize) -> RvmResult<usize> {
        let start = usize::try_from(offset.0).map_err(|_| RvmError::InvalidBackendAddress)?;
        match start.checked_add(count) {
            Some(end) if end <= self.size() => Ok(start),
            // vm-memory's own regions answer an out-of-range slice this way.
            _ => Err(RvmError::InvalidBackendAddress),
        }
    }

    /// The backing as vm-memory's `FileOffset`, made the first time it is asked for.
    fn rust_vmm_file_offset(&self) -> Option<&FileOffset> {
        if let Some(file_offset) = self.file_offset.get() {
            return Some(file_offset);
        }
        let file = match &self.backing {
            RegionBacking::File(file) => file.clone(),
            // A memfd is shared by every RAM region: each region hands out its own duplicate
            // of the descriptor, so that the `File` vm-memory wants owns what it closes.
            RegionBacking::SharedMemory(shm) => {
                std::sync::Arc::new(File::from(shm.as_fd().try_clone_to_owned().ok()?))
            }
        };
        Some(
            self.file_offset
                .get_or_init(|| FileOffset::from_arc(file, self.backing_offset)),
        )
    }
}

impl GuestMemoryRegion for MemoryRegion {
    type B = ();

    #[inline]
    fn len(&self) -> GuestUsize {
        self.size() as GuestUsize
    }

    #[inline]
    fn start_addr(&self) -> rust_vm_memory::GuestAddress {
        self.guest_base.into()
    }

    #[inline]
    fn bitmap(&self) -> BS<'_, ()> {}

    #[inline]
    fn get_host_address(&self, addr: MemoryRegionAddress) -> RvmResult<*mut u8> {
        // One byte must be there: an address at the region's end has no host byte.
        let offset = self.checked_span(addr, 1)?;
        Ok(self.mapping.as_ptr().wrapping_add(offset))
    }

    /// The memfd or file holding the region, and where in it the region starts: what a
    /// vhost-user frontend sends its backend. For RAM regions this is a duplicate of the
    /// memfd's descriptor, made on the first call; `None` only if the process is out of
    /// descriptors then.
    fn file_offset(&self) -> Option<&FileOffset> {
        self.rust_vmm_file_offset()
    }

    #[inline]
    fn get_slice(
        &self,
        offset: MemoryRegionAddress,
        count: usize,
    ) -> RvmResult<VolatileSlice<'_, BS<'_, ()>>> {
        let start = self.checked_span(offset, count)?;
        // SAFETY: `start + count <= size`, so the slice lies in this region's mapping, which
        // is mapped read-write (every region is) and stays mapped while `&self` lives, the
        // lifetime the slice carries. Guest memory is shared with the guest and other
        // processes anyway: vm-memory's `VolatileSlice` only does volatile or copying
        // accesses through the pointer, never Rust references.
        Ok(unsafe { VolatileSlice::new(self.mapping.as_ptr().wrapping_add(start), count) })
    }
}

impl GuestMemoryRegionBytes for MemoryRegion {}

impl GuestMemoryBackend for GuestMemory {
    type R = MemoryRegion;

    #[inline]
    fn num_regions(&self) -> usize {
        self.inner.regions.len()
    }

    #[inline]
    fn find_region(&self, addr: rust_vm_memory::GuestAddress) -> Option<&MemoryRegion> {
        let (index, _, _) = self.inner.table.find(addr.0)?;
        self.inner.regions.get(index)
    }

    fn iter(&self) -> impl Iterator<Item = &MemoryRegion> {
        self.inner.regions.iter()
    }

    #[inline]
    fn last_addr(&self) -> rust_vm_memory::GuestAddress {
        // Construction refuses an empty layout and a region ending past 2^64 - 1.
        rust_vm_memory::GuestAddress(self.end_addr().0.saturating_sub(1))
    }

    // The table already knows the offset: one lookup, not a lookup and a subtraction that
    // the default would check again.
    #[inline]
    fn to_region_addr(
        &self,
        addr: rust_vm_memory::GuestAddress,
    ) -> Option<(&MemoryRegion, MemoryRegionAddress)> {
        let (index, _, offset) = self.inner.table.find(addr.0)?;
        Some((self.inner.regions.get(index)?, MemoryRegionAddress(offset)))
    }
}
