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
/// The buffer holds a table of descriptors (with `VIRTIO_RING_F_INDIRECT_DESC`).
pub const VIRTQ_DESC_F_INDIRECT: u16 = 4;
/// Bytes of one descriptor, in the ring's table and in an indirect table.
const DESC_SIZE: u64 = 16;

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
    /// The driver changed a queue's configuration while the queue is ready (virtio 1.x: it
    /// must not).
    #[error("queue {what} cannot change while the queue is ready")]
    ConfigWhileReady {
        /// Which setting.
        what: &'static str,
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
    /// An index in an indirect table at or past the table's end.
    #[error("chain {head}: indirect entry {index} is out of range for a table of {entries}")]
    IndirectIndex {
        /// The chain's head.
        head: u16,
        /// The index.
        index: u16,
        /// Entries in the table.
        entries: u64,
    },
    /// A descriptor in an indirect table points at another table (virtio 1.x, 2.7.5.3.1:
    /// the driver must not).
    #[error("chain {head}: entry {index} of its indirect table is itself indirect")]
    IndirectInIndirect {
        /// The chain's head.
        head: u16,
        /// The entry in the indirect table.
        index: u16,
    },
    /// An indirect table whose length is 0, not a whole number of descriptors, or longer
    /// than the queue size (the longest chain a driver may make).
    #[error(
        "chain {head}: indirect table of {len:#x} bytes must hold 1 to {size} whole descriptors"
    )]
    IndirectTableLength {
        /// The chain's head.
        head: u16,
        /// The table's length in bytes.
        len: u32,
        /// The queue size.
        size: u16,
    },
    /// An indirect descriptor, which was not negotiated.
    #[error("descriptor {index} of chain {head} is indirect, which was not negotiated")]
    IndirectUnsupported {
        /// The chain's head.
        head: u16,
        /// The descriptor.
        index: u16,
    },
    /// A descriptor with both INDIRECT and NEXT (virtio 1.x, 2.7.5.3.1: the driver must not
    /// set both).
    #[error("descriptor {index} of chain {head} is indirect and has a next one")]
    IndirectWithNext {
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
    /// A device-readable descriptor after a device-writable one (virtio 1.x, 2.7.4.2: all
    /// readable ones come first).
    #[error("descriptor {index} of chain {head} is readable but follows a writable one")]
    ReadAfterWrite {
        /// The chain's head.
        head: u16,
        /// The descriptor.
        index: u16,
    },
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
    /// More chains offered than the queue can have in flight: the driver offered descriptors
    /// the device still holds (a well-formed driver never has more than `size` chains it has
    /// not got back).
    #[error("available index {avail_idx} is {in_flight} past the used index {used}, more than the queue size {size}")]
    TooManyInFlight {
        /// The index the driver wrote.
        avail_idx: u16,
        /// The device's used index.
        used: u16,
        /// Chains offered and not yet used.
        in_flight: u16,
        /// The queue size.
        size: u16,
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

/// `flags` of the available ring: the driver asks for no used-buffer notification.
pub const VIRTQ_AVAIL_F_NO_INTERRUPT: u16 = 1;

/// The state of one split virtqueue, as the driver configured it through the transport.
///
/// The configuration (size, ring addresses) can change only while the queue is not ready;
/// making it ready checks it, and only a queue that passed the checks is ever used, so every
/// index the device computes is bounded by a validated, non-zero size.
#[derive(Clone, Debug)]
pub struct Queue {
    max_size: u16,
    size: u16,
    ready: bool,
    desc_table: GuestAddress,
    avail_ring: GuestAddress,
    used_ring: GuestAddress,
    next_avail: u16,
    next_used: u16,
    /// `VIRTIO_RING_F_EVENT_IDX` was negotiated.
    event_idx: bool,
    /// `VIRTIO_RING_F_INDIRECT_DESC` was negotiated.
    indirect: bool,
    /// The used index when the driver was last notified (for event-idx suppression).
    signalled_used: Option<u16>,
    /// Descriptors walked since the last notify began.
    walked: usize,
    /// The last `pop` stopped for the notify's budget with chains still available.
    budget_spent: bool,
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
            event_idx: false,
            indirect: false,
            signalled_used: None,
            walked: 0,
            budget_spent: false,
        }
    }

    /// The largest size the device allows.
    pub fn max_size(&self) -> u16 {
        self.max_size
    }

    /// The size the driver chose (checked when the queue is made ready).
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Whether the queue is ready: configured, checked and in use.
    pub fn ready(&self) -> bool {
        self.ready
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

    fn configurable(&self, what: &'static str) -> Result<()> {
        if self.ready {
            return Err(Error::ConfigWhileReady { what });
        }
        Ok(())
    }

    /// Sets the size the driver chose; refused while ready.
    pub fn set_size(&mut self, size: u16) -> Result<()> {
        self.configurable("size")?;
        self.size = size;
        Ok(())
    }

    /// Sets the descriptor table's address; refused while ready.
    pub fn set_desc_table(&mut self, addr: GuestAddress) -> Result<()> {
        self.configurable("descriptor table")?;
        self.desc_table = addr;
        Ok(())
    }

    /// Sets the available ring's address; refused while ready.
    pub fn set_avail_ring(&mut self, addr: GuestAddress) -> Result<()> {
        self.configurable("available ring")?;
        self.avail_ring = addr;
        Ok(())
    }

    /// Sets the used ring's address; refused while ready.
    pub fn set_used_ring(&mut self, addr: GuestAddress) -> Result<()> {
        self.configurable("used ring")?;
        self.used_ring = addr;
        Ok(())
    }

    /// Whether `VIRTIO_RING_F_EVENT_IDX` governs notifications (set at feature negotiation).
    pub fn set_event_idx(&mut self, on: bool) {
        self.event_idx = on;
    }

    /// Whether chains may use indirect tables (`VIRTIO_RING_F_INDIRECT_DESC`, set at feature
    /// negotiation).
    pub fn set_indirect(&mut self, on: bool) {
        self.indirect = on;
    }

    /// Back to the state after reset.
    pub fn reset(&mut self) {
        *self = Queue::new(self.max_size);
    }

    /// Makes the queue ready after checking its configuration ([`validate`](Self::validate));
    /// it starts from index 0, as a freshly enabled queue does. A queue that fails the checks
    /// stays not ready.
    pub fn enable(&mut self, mem: &GuestMemory) -> Result<()> {
        self.enable_from(mem, 0)
    }

    /// Makes the queue ready, like [`enable`](Self::enable), but starting at ring index
    /// `base` for both the available and the used ring: a vhost-user frontend's
    /// `SET_VRING_BASE`, which resumes a queue where another device left it.
    pub fn enable_from(&mut self, mem: &GuestMemory, base: u16) -> Result<()> {
        self.validate(mem)?;
        self.ready = true;
        self.next_avail = base;
        self.next_used = base;
        self.signalled_used = None;
        self.budget_spent = false;
        Ok(())
    }

    /// The index of the next available-ring entry the device will take (what a vhost-user
    /// backend answers to `GET_VRING_BASE`).
    pub fn next_avail(&self) -> u16 {
        self.next_avail
    }

    /// Stops using the queue (the driver wrote 0 to QueueReady).
    pub fn disable(&mut self) {
        self.ready = false;
    }

    /// Checks the configuration the driver wrote: the size, and that each ring is aligned
    /// and lies whole in guest memory.
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
            ("descriptor table", self.desc_table, 16, DESC_SIZE * n),
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

    /// Starts the work of one notify: the descriptors it may walk are counted from here.
    pub fn begin_notify(&mut self) {
        self.walked = 0;
        self.budget_spent = false;
    }

    /// Whether the last [`pop`](Self::pop) answered `None` because this notify's budget was
    /// spent while chains were still available: the transport should come back to them
    /// (with a fresh [`begin_notify`](Self::begin_notify)) soon, without waiting for a notify
    /// the driver may never send.
    pub fn budget_spent(&self) -> bool {
        self.budget_spent
    }

    /// Takes the next available chain, if any. `Ok(Err(bad))` is a chain that cannot be used:
    /// it is consumed, and the device should return `bad.head` used with length 0. `Err` is a
    /// queue-wide fault (the driver broke the ring); the device should stop using the queue.
    ///
    /// One notify starts chains only while it has read fewer than `size` descriptors (of the
    /// ring's table and of indirect tables alike); then `pop` answers `None` and
    /// [`budget_spent`](Self::budget_spent) says so, and the rest waits for the transport to
    /// come back to it. A chain holds at most `size` buffers. So one notify reads at most
    /// `2 * size` descriptors, however the driver shapes or refills its rings. And the
    /// driver cannot offer more than `size` chains the device has not used
    /// ([`Error::TooManyInFlight`]), so a device that answers later holds at most that many.
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
        // Chains the device holds (taken, not yet used) count too: a device that answers
        // later (on its own thread) must not be handed more than a queue's worth.
        let in_flight = avail_idx.wrapping_sub(self.next_used);
        if in_flight > self.size {
            return Err(Error::TooManyInFlight {
                avail_idx,
                used: self.next_used,
                in_flight,
                size: self.size,
            });
        }
        if self.walked >= usize::from(self.size) {
            self.budget_spent = true;
            return Ok(None);
        }
        // The ring entries were written before the index: read them after it.
        fence(Ordering::Acquire);
        let slot = u64::from(self.next_avail % self.size);
        let head: u16 =
            mem.read_obj_from_addr_volatile(self.avail_ring.unchecked_add(4 + 2 * slot))?;
        self.next_avail = self.next_avail.wrapping_add(1);
        if self.event_idx {
            // avail_event: ask to be notified of the very next buffer.
            let at = self.used_ring.unchecked_add(4 + 8 * u64::from(self.size));
            mem.write_obj_at_addr_volatile(self.next_avail, at)?;
        }
        let chain = self.walk(mem, head);
        Ok(Some(chain.map_err(|error| BadChain { head, error })))
    }

    fn walk(&mut self, mem: &GuestMemory, head: u16) -> Result<DescriptorChain> {
        let mut buffers: Vec<Buffer> = Vec::new();
        let mut index = head;
        // Where descriptors are read from: the ring's table, then perhaps one indirect table
        // (with its number of entries).
        let mut table = self.desc_table;
        let mut indirect: Option<u64> = None;
        loop {
            // Every descriptor read costs the budget, an indirect table's too, and it is
            // counted before it is checked: a notify of bad heads costs its budget as well, so
            // a driver racing the available index forward cannot make one notify endless.
            self.walked += 1;
            match indirect {
                None => {
                    if index >= self.size {
                        return Err(Error::DescriptorIndex {
                            index,
                            size: self.size,
                        });
                    }
                }
                Some(entries) if u64::from(index) >= entries => {
                    return Err(Error::IndirectIndex {
                        head,
                        index,
                        entries,
                    });
                }
                Some(_) => {}
            }
            if buffers.len() >= usize::from(self.size) {
                return Err(Error::ChainTooLong {
                    head,
                    size: self.size,
                });
            }
            // The index is below the table's entries, whose bytes were checked to be in guest
            // memory (the ring's table at enable, an indirect one below).
            let desc: Descriptor =
                mem.read_obj_from_addr(table.unchecked_add(DESC_SIZE * u64::from(index)))?;
            if desc.flags & VIRTQ_DESC_F_INDIRECT != 0 {
                table = self.indirect_table(mem, head, index, &desc, indirect.is_some())?;
                indirect = Some(u64::from(desc.len) / DESC_SIZE);
                index = 0;
                continue;
            }
            let writable = desc.flags & VIRTQ_DESC_F_WRITE != 0;
            if !writable && buffers.last().is_some_and(|b| b.writable) {
                return Err(Error::ReadAfterWrite { head, index });
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
                writable,
            });
            if desc.flags & VIRTQ_DESC_F_NEXT == 0 {
                return Ok(DescriptorChain { head, buffers });
            }
            index = desc.next;
        }
    }

    /// Checks the indirect descriptor `desc` (at `index` of the ring's table, or of an
    /// indirect table when `nested`) and returns where its table is. Its WRITE flag means
    /// nothing (virtio 1.x, 2.7.5.3.2: the device ignores it).
    fn indirect_table(
        &self,
        mem: &GuestMemory,
        head: u16,
        index: u16,
        desc: &Descriptor,
        nested: bool,
    ) -> Result<GuestAddress> {
        if !self.indirect {
            return Err(Error::IndirectUnsupported { head, index });
        }
        if nested {
            return Err(Error::IndirectInIndirect { head, index });
        }
        if desc.flags & VIRTQ_DESC_F_NEXT != 0 {
            return Err(Error::IndirectWithNext { head, index });
        }
        let len = u64::from(desc.len);
        if len == 0 || len % DESC_SIZE != 0 || len / DESC_SIZE > u64::from(self.size) {
            return Err(Error::IndirectTableLength {
                head,
                len: desc.len,
                size: self.size,
            });
        }
        let addr = GuestAddress(desc.addr);
        if !mem.is_valid_range(addr, len) {
            return Err(Error::DescriptorOutOfMemory {
                head,
                index,
                addr,
                len: desc.len,
            });
        }
        Ok(addr)
    }

    /// Returns chain `head` to the driver with `len` bytes written.
    pub fn add_used(&mut self, mem: &GuestMemory, head: u16, len: u32) -> Result<()> {
        if !self.ready {
            return Err(Error::NotReady);
        }
        // `ready` means `size` passed `validate`: it is a power of two, not 0.
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

    /// Whether the driver wants a used-buffer notification for the buffers used since the
    /// last one: with `VIRTIO_RING_F_EVENT_IDX`, when the used index has passed the driver's
    /// `used_event`; without it, unless the driver set `VIRTQ_AVAIL_F_NO_INTERRUPT`.
    pub fn needs_notification(&mut self, mem: &GuestMemory) -> Result<bool> {
        if !self.ready {
            return Err(Error::NotReady);
        }
        // The used index must be visible before the driver's suppression is read.
        fence(Ordering::SeqCst);
        let new = self.next_used;
        if self.event_idx {
            let old = self.signalled_used.replace(new);
            let used_event: u16 = mem.read_obj_from_addr_volatile(
                self.avail_ring.unchecked_add(4 + 2 * u64::from(self.size)),
            )?;
            return Ok(match old {
                // The first notification since the queue was enabled always goes.
                None => true,
                // virtio 1.x, 2.7.10: notify when used_event lies in (old, new].
                Some(old) => new.wrapping_sub(used_event).wrapping_sub(1) < new.wrapping_sub(old),
            });
        }
        let flags: u16 = mem.read_obj_from_addr_volatile(self.avail_ring)?;
        Ok(flags & VIRTQ_AVAIL_F_NO_INTERRUPT == 0)
    }
}
