// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The driver's side of a split virtqueue: what a guest driver writes into guest memory (the
//! descriptor table, indirect tables, the available ring) and reads back (the used ring).
//! For whatever plays the guest against a device: our devices' tests, fuzzers, and checks of
//! our [`Queue`] against other implementations.
//!
//! ```
//! use devices::virtio::driver::{DriverBuffer, DriverQueue};
//! use devices::virtio::queue::Queue;
//! use vm_memory::{GuestAddress, GuestMemory};
//!
//! let mem = GuestMemory::new(&[(GuestAddress(0), 0x10000)]).unwrap();
//! let mut driver = DriverQueue::new(&mem, 8, GuestAddress(0x1000), GuestAddress(0x2000),
//!     GuestAddress(0x3000)).unwrap();
//! let head = driver.add_chain(&[
//!     DriverBuffer::readable(GuestAddress(0x8000), 16),
//!     DriverBuffer::writable(GuestAddress(0x9000), 1),
//! ]).unwrap();
//! driver.make_available(head).unwrap();
//!
//! // The device's side.
//! let mut queue = Queue::new(8);
//! queue.set_desc_table(driver.desc_table()).unwrap();
//! queue.set_avail_ring(driver.avail_ring()).unwrap();
//! queue.set_used_ring(driver.used_ring()).unwrap();
//! queue.enable(&mem).unwrap();
//! let chain = queue.pop(&mem).unwrap().unwrap().unwrap();
//! assert_eq!(chain.head, head);
//! assert_eq!(chain.buffers.len(), 2);
//! queue.add_used(&mem, chain.head, 1).unwrap();
//! assert_eq!(driver.pop_used().unwrap(), Some((u32::from(head), 1)));
//! ```

use std::sync::atomic::{fence, Ordering};

use remain::sorted;
use thiserror::Error;
use vm_memory::{GuestAddress, GuestMemory};

use super::queue::{
    Descriptor, Queue, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE,
};

/// Errors of the driver's side.
#[sorted]
#[derive(Debug, Error)]
pub enum Error {
    /// A chain with no buffer.
    #[error("a chain needs at least one buffer")]
    EmptyChain,
    /// A descriptor index at or past the queue size.
    #[error("descriptor index {index} is out of range for a queue of {size}")]
    Index {
        /// The index.
        index: u16,
        /// The queue size.
        size: u16,
    },
    /// Reading or writing guest memory failed.
    #[error("guest memory: {0}")]
    Memory(#[from] vm_memory::Error),
    /// The rings as configured would not pass the device's checks.
    #[error("rings: {0}")]
    Rings(#[from] super::queue::Error),
    /// More buffers than the queue (or one indirect table) may hold.
    #[error("a chain of {len} buffers is longer than the queue size {size}")]
    TooLong {
        /// Buffers asked for.
        len: usize,
        /// The queue size.
        size: u16,
    },
}

/// Result of the driver's side.
pub type Result<T> = std::result::Result<T, Error>;

/// One buffer a driver offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DriverBuffer {
    /// Where it is.
    pub addr: GuestAddress,
    /// How long.
    pub len: u32,
    /// Whether the device writes it.
    pub writable: bool,
}

impl DriverBuffer {
    /// A buffer the device reads.
    pub fn readable(addr: GuestAddress, len: u32) -> DriverBuffer {
        DriverBuffer {
            addr,
            len,
            writable: false,
        }
    }

    /// A buffer the device writes.
    pub fn writable(addr: GuestAddress, len: u32) -> DriverBuffer {
        DriverBuffer {
            addr,
            len,
            writable: true,
        }
    }
}

/// A split virtqueue as its driver sees it. Descriptors are taken from the table in order,
/// wrapping at its end, so the caller keeps at most `size` descriptors in flight.
#[derive(Clone, Debug)]
pub struct DriverQueue {
    mem: GuestMemory,
    size: u16,
    desc_table: GuestAddress,
    avail_ring: GuestAddress,
    used_ring: GuestAddress,
    next_desc: u16,
    avail_idx: u16,
    used_idx: u16,
}

impl DriverQueue {
    /// A queue of `size` entries with its rings at these addresses, which must pass the
    /// device's own checks ([`Queue::validate`]); the rings are zeroed.
    pub fn new(
        mem: &GuestMemory,
        size: u16,
        desc_table: GuestAddress,
        avail_ring: GuestAddress,
        used_ring: GuestAddress,
    ) -> Result<DriverQueue> {
        let mut queue = Queue::new(size);
        queue.set_desc_table(desc_table)?;
        queue.set_avail_ring(avail_ring)?;
        queue.set_used_ring(used_ring)?;
        queue.validate(mem)?;
        let n = usize::from(size);
        // `validate` checked these lengths against guest memory; each ring also has the
        // event field after it.
        mem.write_all_at_addr(&vec![0; 16 * n], desc_table)?;
        mem.write_all_at_addr(&vec![0; 6 + 2 * n], avail_ring)?;
        mem.write_all_at_addr(&vec![0; 6 + 8 * n], used_ring)?;
        Ok(DriverQueue {
            mem: mem.clone(),
            size,
            desc_table,
            avail_ring,
            used_ring,
            next_desc: 0,
            avail_idx: 0,
            used_idx: 0,
        })
    }

    /// The queue size.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// The descriptor table's address.
    pub fn desc_table(&self) -> GuestAddress {
        self.desc_table
    }

    /// The available ring's address.
    pub fn avail_ring(&self) -> GuestAddress {
        self.avail_ring
    }

    /// The used ring's address.
    pub fn used_ring(&self) -> GuestAddress {
        self.used_ring
    }

    /// Writes descriptor `index` of the ring's table as given, with no check of what it
    /// says: for drivers that misbehave on purpose. `index` must be below the size.
    pub fn write_descriptor(&self, index: u16, desc: Descriptor) -> Result<()> {
        if index >= self.size {
            return Err(Error::Index {
                index,
                size: self.size,
            });
        }
        let at = self.desc_table.unchecked_add(16 * u64::from(index));
        self.mem.write_obj_at_addr(desc, at)?;
        Ok(())
    }

    /// Writes `buffers` as a chain in the ring's table and returns its head (not yet made
    /// available).
    pub fn add_chain(&mut self, buffers: &[DriverBuffer]) -> Result<u16> {
        self.check_len(buffers.len())?;
        let head = self.next_desc;
        for (i, b) in buffers.iter().enumerate() {
            let index = self.next_desc;
            self.next_desc = (self.next_desc + 1) % self.size;
            let last = i + 1 == buffers.len();
            self.write_descriptor(index, descriptor(b, last, self.next_desc))?;
        }
        Ok(head)
    }

    /// Writes `buffers` as an indirect table at `table` (16 bytes a buffer) and one ring
    /// descriptor that points at it; returns that descriptor's index (not yet made
    /// available). `table` must not overlap the rings or anything in flight.
    pub fn add_indirect_chain(
        &mut self,
        table: GuestAddress,
        buffers: &[DriverBuffer],
    ) -> Result<u16> {
        self.check_len(buffers.len())?;
        for (i, b) in buffers.iter().enumerate() {
            let last = i + 1 == buffers.len();
            let at = table
                .checked_add(16 * i as u64)
                .ok_or(vm_memory::Error::InvalidGuestAddress(table))?;
            self.mem
                .write_obj_at_addr(descriptor(b, last, i as u16 + 1), at)?;
        }
        let head = self.next_desc;
        self.next_desc = (self.next_desc + 1) % self.size;
        let desc = Descriptor {
            addr: table.0,
            // At most `size` (a u16) entries of 16 bytes.
            len: 16 * buffers.len() as u32,
            flags: VIRTQ_DESC_F_INDIRECT,
            next: 0,
        };
        self.write_descriptor(head, desc)?;
        Ok(head)
    }

    /// Puts `head` in the available ring and publishes it (the entry first, then the index).
    pub fn make_available(&mut self, head: u16) -> Result<()> {
        let slot = u64::from(self.avail_idx % self.size);
        self.mem
            .write_obj_at_addr_volatile(head, self.avail_ring.unchecked_add(4 + 2 * slot))?;
        self.avail_idx = self.avail_idx.wrapping_add(1);
        fence(Ordering::Release);
        self.mem
            .write_obj_at_addr_volatile(self.avail_idx, self.avail_ring.unchecked_add(2))?;
        Ok(())
    }

    /// Sets the available ring's flags (`VIRTQ_AVAIL_F_NO_INTERRUPT`).
    pub fn set_avail_flags(&self, flags: u16) -> Result<()> {
        self.mem
            .write_obj_at_addr_volatile(flags, self.avail_ring)?;
        Ok(())
    }

    /// Sets `used_event` (with `VIRTIO_RING_F_EVENT_IDX`: notify me when the used index
    /// passes this).
    pub fn set_used_event(&self, idx: u16) -> Result<()> {
        let at = self.avail_ring.unchecked_add(4 + 2 * u64::from(self.size));
        self.mem.write_obj_at_addr_volatile(idx, at)?;
        Ok(())
    }

    /// The next used element `(id, len)`, if the device returned one.
    pub fn pop_used(&mut self) -> Result<Option<(u32, u32)>> {
        let used_idx: u16 = self
            .mem
            .read_obj_from_addr_volatile(self.used_ring.unchecked_add(2))?;
        if used_idx == self.used_idx {
            return Ok(None);
        }
        // The element was written before the index.
        fence(Ordering::Acquire);
        let elem = self
            .used_ring
            .unchecked_add(4 + 8 * u64::from(self.used_idx % self.size));
        let id: u32 = self.mem.read_obj_from_addr_volatile(elem)?;
        let len: u32 = self
            .mem
            .read_obj_from_addr_volatile(elem.unchecked_add(4))?;
        self.used_idx = self.used_idx.wrapping_add(1);
        Ok(Some((id, len)))
    }

    fn check_len(&self, len: usize) -> Result<()> {
        if len == 0 {
            return Err(Error::EmptyChain);
        }
        if len > usize::from(self.size) {
            return Err(Error::TooLong {
                len,
                size: self.size,
            });
        }
        Ok(())
    }
}

/// The descriptor of `b`, chained to `next` unless it is the `last`.
fn descriptor(b: &DriverBuffer, last: bool, next: u16) -> Descriptor {
    let mut flags = if b.writable { VIRTQ_DESC_F_WRITE } else { 0 };
    if !last {
        flags |= VIRTQ_DESC_F_NEXT;
    }
    Descriptor {
        addr: b.addr.0,
        len: b.len,
        flags,
        next: if last { 0 } else { next },
    }
}
