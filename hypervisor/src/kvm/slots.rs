// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The VM's memory slot table: which slot numbers are live, where they sit in guest physical
//! memory, and what backs them. Pure bookkeeping; the ioctls are the caller's.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};

use base::MappedRegion;
use vm_memory::GuestAddress;

use crate::{Error, MemSlot, Result};

/// What backs a slot.
pub(crate) enum SlotMemory {
    /// A region of the VM's `GuestMemory`, which owns it.
    BootRam,
    /// A region added at run time. `None` once it has been handed back by a removal, so an
    /// operation that raced the removal finds nothing instead of freed memory.
    Dynamic(RwLock<Option<Box<dyn MappedRegion>>>),
}

/// One live slot. Its geometry never changes; its flags change under the table's lock.
pub(crate) struct Slot {
    pub guest_addr: u64,
    pub size: u64,
    pub host_addr: u64,
    pub flags: u32,
    pub memory: Arc<SlotMemory>,
}

/// Live slots, indexed by number and by guest address.
pub(crate) struct SlotTable {
    slots: BTreeMap<MemSlot, Slot>,
    by_addr: BTreeMap<u64, MemSlot>,
    /// Numbers below `next` that are free again, so the lowest is reused first.
    free: BTreeSet<MemSlot>,
    next: MemSlot,
    limit: u32,
}

impl std::fmt::Debug for SlotTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlotTable")
            .field("live", &self.slots.len())
            .field("limit", &self.limit)
            .finish()
    }
}

impl SlotTable {
    /// An empty table for a kernel that allows `limit` slots.
    pub fn new(limit: u32) -> SlotTable {
        SlotTable {
            slots: BTreeMap::new(),
            by_addr: BTreeMap::new(),
            free: BTreeSet::new(),
            next: 0,
            limit,
        }
    }

    /// Checks that `guest_addr..guest_addr + size` can become a slot (page-aligned, non-empty,
    /// no overflow, no overlap with any live slot, a number left) and returns the number it
    /// would get: the lowest free one.
    pub fn check_new(&self, guest_addr: u64, size: u64) -> Result<MemSlot> {
        let page = base::pagesize();
        let addr = GuestAddress(guest_addr);
        if size == 0 {
            return Err(Error::ZeroSize { guest_addr: addr });
        }
        for (what, value) in [("guest address", guest_addr), ("slot size", size)] {
            if value % page as u64 != 0 {
                return Err(Error::NotPageAligned { what, value, page });
            }
        }
        let end = guest_addr.checked_add(size).ok_or(Error::AddressOverflow {
            guest_addr: addr,
            size,
        })?;
        // Only the last slot starting below `end` can overlap, since slots do not overlap
        // each other.
        if let Some((&start, &slot)) = self.by_addr.range(..end).next_back() {
            let other = &self.slots[&slot];
            if start + other.size > guest_addr {
                return Err(Error::SlotOverlap {
                    guest_addr: addr,
                    size,
                    slot,
                    slot_addr: GuestAddress(start),
                    slot_size: other.size,
                });
            }
        }
        self.lowest_free()
    }

    fn lowest_free(&self) -> Result<MemSlot> {
        match self.free.first() {
            Some(&slot) => Ok(slot),
            None if self.next < self.limit => Ok(self.next),
            None => Err(Error::SlotLimit { limit: self.limit }),
        }
    }

    /// Records `slot`, which `check_new` returned for the same range.
    pub fn insert(&mut self, number: MemSlot, slot: Slot) {
        if !self.free.remove(&number) {
            debug_assert_eq!(number, self.next);
            self.next = number + 1;
        }
        self.by_addr.insert(slot.guest_addr, number);
        self.slots.insert(number, slot);
    }

    /// Forgets a slot and makes its number free.
    pub fn remove(&mut self, number: MemSlot) -> Option<Slot> {
        let slot = self.slots.remove(&number)?;
        self.by_addr.remove(&slot.guest_addr);
        self.free.insert(number);
        // Keep `free` below `next` small: trailing free numbers lower `next` instead.
        while self.next > 0 && self.free.remove(&(self.next - 1)) {
            self.next -= 1;
        }
        Some(slot)
    }

    pub fn get(&self, number: MemSlot) -> Result<&Slot> {
        self.slots
            .get(&number)
            .ok_or(Error::UnknownSlot { slot: number })
    }

    pub fn get_mut(&mut self, number: MemSlot) -> Result<&mut Slot> {
        self.slots
            .get_mut(&number)
            .ok_or(Error::UnknownSlot { slot: number })
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.slots.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: u64 = 4096;

    fn slot(guest_addr: u64, size: u64) -> Slot {
        Slot {
            guest_addr,
            size,
            host_addr: 0,
            flags: 0,
            memory: Arc::new(SlotMemory::BootRam),
        }
    }

    fn add(t: &mut SlotTable, addr: u64, size: u64) -> Result<MemSlot> {
        let n = t.check_new(addr, size)?;
        t.insert(n, slot(addr, size));
        Ok(n)
    }

    #[test]
    fn lowest_free_number_is_reused() {
        let mut t = SlotTable::new(8);
        for i in 0..5 {
            assert_eq!(add(&mut t, i * P, P).unwrap(), i as MemSlot);
        }
        t.remove(3).unwrap();
        t.remove(1).unwrap();
        assert_eq!(add(&mut t, 10 * P, P).unwrap(), 1);
        assert_eq!(add(&mut t, 11 * P, P).unwrap(), 3);
        assert_eq!(add(&mut t, 12 * P, P).unwrap(), 5);
        // Freeing the top numbers shrinks `next` rather than growing the free set.
        t.remove(5).unwrap();
        t.remove(4).unwrap();
        assert!(t.free.is_empty());
        assert_eq!(add(&mut t, 13 * P, P).unwrap(), 4);
        assert!(t.remove(42).is_none());
        assert!(matches!(t.get(42), Err(Error::UnknownSlot { slot: 42 })));
    }

    #[test]
    fn overlap_is_refused_exact_partial_and_containing() {
        let mut t = SlotTable::new(8);
        add(&mut t, 4 * P, 4 * P).unwrap();
        for (addr, size) in [
            (4 * P, 4 * P),
            (3 * P, 2 * P),
            (7 * P, 2 * P),
            (5 * P, P),
            (0, 16 * P),
        ] {
            let err = t.check_new(addr, size).unwrap_err();
            assert!(
                matches!(err, Error::SlotOverlap { slot: 0, slot_addr, slot_size, .. }
                    if slot_addr == GuestAddress(4 * P) && slot_size == 4 * P),
                "{addr:#x}+{size:#x}: {err}"
            );
        }
        // Touching on either side is fine.
        assert_eq!(t.check_new(8 * P, P).unwrap(), 1);
        assert_eq!(t.check_new(0, 4 * P).unwrap(), 1);
    }

    #[test]
    fn alignment_size_and_overflow() {
        let t = SlotTable::new(8);
        assert!(matches!(t.check_new(P, 0), Err(Error::ZeroSize { .. })));
        assert!(matches!(
            t.check_new(P + 1, P),
            Err(Error::NotPageAligned {
                what: "guest address",
                ..
            })
        ));
        assert!(matches!(
            t.check_new(P, P + 1),
            Err(Error::NotPageAligned {
                what: "slot size",
                ..
            })
        ));
        let top = u64::MAX - P + 1;
        assert!(matches!(
            t.check_new(top, P),
            Err(Error::AddressOverflow { .. })
        ));
        assert!(matches!(
            t.check_new(top, 2 * P),
            Err(Error::AddressOverflow { .. })
        ));
    }

    #[test]
    fn the_limit_is_honoured_and_removal_makes_room() {
        let mut t = SlotTable::new(3);
        for i in 0..3 {
            add(&mut t, i * P, P).unwrap();
        }
        let err = add(&mut t, 10 * P, P).unwrap_err();
        assert!(matches!(err, Error::SlotLimit { limit: 3 }), "{err}");
        t.remove(1).unwrap();
        assert_eq!(add(&mut t, 10 * P, P).unwrap(), 1);
        assert_eq!(t.len(), 3);
    }
}
