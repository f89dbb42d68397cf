// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Split virtqueues, read and written through [`GuestMemory`]. The guest writes every index,
//! address and length here, so each is checked before it is used: a bad chain is an error
//! naming the values, never a panic or an access outside guest memory.

use std::sync::atomic::{fence, Ordering};

use remain::sorted;
use thiserror::Error;
use vm_memory::{GuestAddress, GuestMemory};
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// The descriptor continues in `next`.
pub const VIRTQ_DESC_F_NEXT: u16 = 1;
/// The device writes this buffer.
pub const VIRTQ_DESC_F_WRITE: u16 = 2;
/// The buffer holds a table of descriptors (not offered by our devices).
pub const VIRTQ_DESC_F_INDIRECT: u16 = 4;

/// Errors of a virtqueue.
#[sorted]
#[derive(Debug, Error)]
pub enum Error {
    /// The available index ran more than a queue's worth ahead of what was consumed.
    #[error("available index {avail_idx} is {pending} ahead of {next_avail}, more than the queue size {size}")]
    AvailIndexTooFar {
        /// The index the driver wrote.
        avail_idx: u16,
        /// The next entry the device would take.
        next_avail: u16,
        /// How far ahead that is.
        pending: u16,
        /// The queue size.
        size: u16,
    },
    /// A chain is longer than the queue (so it loops).
    #[error("descriptor chain from head {head} is longer than the queue size {size}: it loops")]
    ChainTooLong {
        /// The chain's head.
        head: u16,
        /// The queue size.
        size: u16,
    },
    /// A descriptor index at or past the queue size.
    #[error("descriptor index {index} is out of range for a queue of {size}")]
    DescriptorIndex {
        /// The index.
        index: u16,
        /// The queue size.
        size: u16,
    },
    /// A descriptor's buffer is not guest memory.
    #[error("descriptor {index} of chain {head}: buffer {addr}+{len:#x} is not guest memory")]
    DescriptorOutOfMemory {
        /// The chain's head.
        head: u16,
        /// The descriptor.
        index: u16,
        /// The buffer's address.
        addr: GuestAddress,
        /// Its length.
        len: u32,
    },
    /// An indirect descriptor, which our devices do not offer.
    #[error("descriptor {index} of chain {head} is indirect, which was not negotiated")]
    IndirectUnsupported {
        /// The chain's head.
        head: u16,
        /// The descriptor.
        index: u16,
    },
    /// Reading or writing a ring failed.
    #[error("ring access: {0}")]
    Memory(#[from] vm_memory::Error),
    /// The queue was used before it was made ready.
    #[error("the queue is not ready")]
    NotReady,
    /// A ring is not inside guest memory.
    #[error("the {ring} at {addr} ({len:#x} bytes) is not inside guest memory")]
    RingOutOfMemory {
        /// Which ring.
        ring: &'static str,
        /// Where the driver put it.
        addr: GuestAddress,
        /// Its length for this queue size.
        len: u64,
    },
    /// A queue size that is 0, not a power of two, or above the maximum.
    #[error("queue size {size} is invalid: it must be a power of two from 1 to {max}")]
    Size {
        /// The size the driver chose.
        size: u16,
        /// The device's maximum.
        max: u16,
    },
    /// A ring address not aligned as the spec requires.
    #[error("the {ring} at {addr} must be {align}-byte aligned")]
    Unaligned {
        /// Which ring.
        ring: &'static str,
        /// Where the driver put it.
        addr: GuestAddress,
        /// The alignment required.
        align: u64,
    },
}

/// Result of virtqueue operations.
pub type Result<T> = std::result::Result<T, Error>;

/// One descriptor as the driver lays it out.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable)]
pub struct Descriptor {
    /// Guest physical address of the buffer.
    pub addr: u64,
    /// Its length.
    pub len: u32,
    /// `VIRTQ_DESC_F_*`.
    pub flags: u16,
    /// The next descriptor when `flags` has `VIRTQ_DESC_F_NEXT`.
    pub next: u16,
}

/// One buffer of a chain, checked to lie in guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Buffer {
    /// Where it is.
    pub addr: GuestAddress,
    /// How long.
    pub len: u32,
    /// Whether the device writes it (else it reads it).
    pub writable: bool,
}

/// A request: the buffers of one descriptor chain, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DescriptorChain {
    /// The head index, which goes back in the used ring.
    pub head: u16,
    /// The buffers.
    pub buffers: Vec<Buffer>,
}

/// A chain the device could not use, with the head to return to the driver.
#[derive(Debug)]
pub struct BadChain {
    /// The head index (return it used with length 0).
    pub head: u16,
    /// What is wrong.
    pub error: Error,
}

/// The state of one split virtqueue, as the driver configured it through the transport.
#[derive(Clone, Debug)]
pub struct Queue {
    max_size: u16,
    /// The size the driver chose.
    pub size: u16,
    /// Whether the driver made it ready (and it passed the checks).
    pub ready: bool,
    /// Descriptor table address.
    pub desc_table: GuestAddress,
    /// Available ring address.
    pub avail_ring: GuestAddress,
    /// Used ring address.
    pub used_ring: GuestAddress,
    next_avail: u16,
    next_used: u16,
}

impl Queue {
    /// A queue of at most `max_size` entries (a power of two), not ready.
    pub fn new(max_size: u16) -> Queue {
        Queue {
            max_size,
            size: max_size,
            ready: false,
            desc_table: GuestAddress(0),
            avail_ring: GuestAddress(0),
            used_ring: GuestAddress(0),
            next_avail: 0,
            next_used: 0,
        }
    }

    /// The largest size the device allows.
    pub fn max_size(&self) -> u16 {
        self.max_size
    }

    /// Back to the state after reset.
    pub fn reset(&mut self) {
        *self = Queue::new(self.max_size);
    }

    /// Checks the configuration the driver wrote: the size, and that each ring is aligned
    /// and lies whole in guest memory. The transport calls this before making it ready.
    pub fn validate(&self, mem: &GuestMemory) -> Result<()> {
        let size = self.size;
        if size == 0 || !size.is_power_of_two() || size > self.max_size {
            return Err(Error::Size {
                size,
                max: self.max_size,
            });
        }
        let n = u64::from(size);
        for (ring, addr, align, len) in [
            ("descriptor table", self.desc_table, 16, 16 * n),
            ("available ring", self.avail_ring, 2, 6 + 2 * n),
            ("used ring", self.used_ring, 4, 6 + 8 * n),
        ] {
            if addr.0 % align != 0 {
                return Err(Error::Unaligned { ring, addr, align });
            }
            if !mem.is_valid_range(addr, len) {
                return Err(Error::RingOutOfMemory { ring, addr, len });
            }
        }
        Ok(())
    }

    /// Takes the next available chain, if any. `Ok(Err(bad))` is a chain that cannot be used:
    /// it is consumed, and the device should return `bad.head` used with length 0. `Err` is a
    /// queue-wide fault (the driver broke the ring); the device should stop using the queue.
    pub fn pop(
        &mut self,
        mem: &GuestMemory,
    ) -> Result<Option<std::result::Result<DescriptorChain, BadChain>>> {
        if !self.ready {
            return Err(Error::NotReady);
        }
        let avail_idx: u16 = mem.read_obj_from_addr_volatile(self.avail_ring.unchecked_add(2))?;
        let pending = avail_idx.wrapping_sub(self.next_avail);
        if pending == 0 {
            return Ok(None);
        }
        if pending > self.size {
            return Err(Error::AvailIndexTooFar {
                avail_idx,
                next_avail: self.next_avail,
                pending,
                size: self.size,
            });
        }
        // The ring entries were written before the index: read them after it.
        fence(Ordering::Acquire);
        let slot = u64::from(self.next_avail % self.size);
        let head: u16 =
            mem.read_obj_from_addr_volatile(self.avail_ring.unchecked_add(4 + 2 * slot))?;
        self.next_avail = self.next_avail.wrapping_add(1);
        Ok(Some(
            self.walk(mem, head)
                .map_err(|error| BadChain { head, error }),
        ))
    }

    fn walk(&self, mem: &GuestMemory, head: u16) -> Result<DescriptorChain> {
        let mut buffers = Vec::new();
        let mut index = head;
        loop {
            if index >= self.size {
                return Err(Error::DescriptorIndex {
                    index,
                    size: self.size,
                });
            }
            if buffers.len() >= usize::from(self.size) {
                return Err(Error::ChainTooLong {
                    head,
                    size: self.size,
                });
            }
            let desc: Descriptor =
                mem.read_obj_from_addr(self.desc_table.unchecked_add(16 * u64::from(index)))?;
            if desc.flags & VIRTQ_DESC_F_INDIRECT != 0 {
                return Err(Error::IndirectUnsupported { head, index });
            }
            let addr = GuestAddress(desc.addr);
            if !mem.is_valid_range(addr, u64::from(desc.len)) {
                return Err(Error::DescriptorOutOfMemory {
                    head,
                    index,
                    addr,
                    len: desc.len,
                });
            }
            buffers.push(Buffer {
                addr,
                len: desc.len,
                writable: desc.flags & VIRTQ_DESC_F_WRITE != 0,
            });
            if desc.flags & VIRTQ_DESC_F_NEXT == 0 {
                return Ok(DescriptorChain { head, buffers });
            }
            index = desc.next;
        }
    }

    /// Returns chain `head` to the driver with `len` bytes written.
    pub fn add_used(&mut self, mem: &GuestMemory, head: u16, len: u32) -> Result<()> {
        if !self.ready {
            return Err(Error::NotReady);
        }
        let slot = u64::from(self.next_used % self.size);
        let elem = self.used_ring.unchecked_add(4 + 8 * slot);
        mem.write_obj_at_addr_volatile(u32::from(head), elem)?;
        mem.write_obj_at_addr_volatile(len, elem.unchecked_add(4))?;
        self.next_used = self.next_used.wrapping_add(1);
        // The element must be visible before the index that publishes it.
        fence(Ordering::Release);
        mem.write_obj_at_addr_volatile(self.next_used, self.used_ring.unchecked_add(2))?;
        Ok(())
    }
}
