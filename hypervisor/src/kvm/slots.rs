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
    /// Guest-physical ranges no slot may cover, start to size.
    reserved: BTreeMap<u64, u64>,
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
            reserved: BTreeMap::new(),
        }
    }

    /// Checks that `guest_addr..guest_addr + size` can become a slot (page-aligned, non-empty,
    /// no overflow, no overlap with any live slot or reserved range, a number left) and returns
    /// the number it would get: the lowest free one.
    pub fn check_new(&self, guest_addr: u64, size: u64) -> Result<MemSlot> {
        let addr = GuestAddress(guest_addr);
        let end = check_range(guest_addr, size, "slot size")?;
        self.check_unreserved(guest_addr, size, end)?;
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

    /// Reserves `guest_addr..guest_addr + size` (page-aligned, non-empty) so that no slot may
    /// cover it. It must not overlap a live slot or another reservation.
    pub fn reserve(&mut self, guest_addr: u64, size: u64) -> Result<()> {
        let end = check_range(guest_addr, size, "reserved size")?;
        self.check_unreserved(guest_addr, size, end)?;
        if let Some((&start, &slot)) = self.by_addr.range(..end).next_back() {
            let other = &self.slots[&slot];
            if start + other.size > guest_addr {
                return Err(Error::SlotOverlap {
                    guest_addr: GuestAddress(guest_addr),
                    size,
                    slot,
                    slot_addr: GuestAddress(start),
                    slot_size: other.size,
                });
            }
        }
        self.reserved.insert(guest_addr, size);
        Ok(())
    }

    /// Ends the reservation made with exactly this range.
    pub fn release(&mut self, guest_addr: u64, size: u64) -> Result<()> {
        match self.reserved.get(&guest_addr) {
            Some(&s) if s == size => {
                self.reserved.remove(&guest_addr);
                Ok(())
            }
            _ => Err(Error::ReservationUnknown {
                guest_addr: GuestAddress(guest_addr),
                size,
            }),
        }
    }

    /// Refuses `guest_addr..end` if it overlaps a reserved range.
    fn check_unreserved(&self, guest_addr: u64, size: u64, end: u64) -> Result<()> {
        // Reservations do not overlap each other, so only the last one starting below `end`
        // can reach into the range.
        if let Some((&start, &reserved_size)) = self.reserved.range(..end).next_back() {
            if start + reserved_size > guest_addr {
                return Err(Error::ReservedRange {
                    guest_addr: GuestAddress(guest_addr),
                    size,
                    reserved_addr: GuestAddress(start),
                    reserved_size,
                });
            }
        }
        Ok(())
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

    /// The live slots, by number.
    pub fn iter(&self) -> impl Iterator<Item = (&MemSlot, &Slot)> {
        self.slots.iter()
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.slots.len()
    }
}

/// Checks a guest-physical range: non-empty, page-aligned, not passing the end of the
/// address space. Returns its end.
fn check_range(guest_addr: u64, size: u64, what: &'static str) -> Result<u64> {
    let page = base::pagesize();
    let addr = GuestAddress(guest_addr);
    if size == 0 {
        return Err(Error::ZeroSize { guest_addr: addr });
    }
    for (what, value) in [("guest address", guest_addr), (what, size)] {
        if value % page as u64 != 0 {
            return Err(Error::NotPageAligned { what, value, page });
        }
    }
    guest_addr.checked_add(size).ok_or(Error::AddressOverflow {
        guest_addr: addr,
        size,
    })
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
    fn reserved_ranges_never_become_slots() {
        let mut t = SlotTable::new(8);
        t.reserve(0xd000_0000, 0x1000).unwrap();
        for (addr, size) in [
            (0xd000_0000, P),
            (0xcfff_f000, 2 * P),
            (0xd000_0000 - 0x10_0000, 0x20_0000),
        ] {
            let err = t.check_new(addr, size).unwrap_err();
            assert!(
                matches!(err, Error::ReservedRange { guest_addr, size: s, reserved_addr, reserved_size }
                    if guest_addr.0 == addr && s == size && reserved_addr.0 == 0xd000_0000 && reserved_size == P),
                "{err}"
            );
        }
        // Right next to it is fine.
        add(&mut t, 0xd000_1000, P).unwrap();
        add(&mut t, 0xcfff_f000, P).unwrap();
        // A reservation may not overlap a slot or another reservation.
        let err = t.reserve(0xd000_1000, P).unwrap_err();
        assert!(matches!(err, Error::SlotOverlap { .. }), "{err}");
        let err = t.reserve(0xcfff_0000, 0x2_0000).unwrap_err();
        assert!(
            matches!(err, Error::ReservedRange { .. } | Error::SlotOverlap { .. }),
            "{err}"
        );
        let err = t.reserve(0xd000_0000, P).unwrap_err();
        assert!(matches!(err, Error::ReservedRange { .. }), "{err}");
        // Hostile sizes.
        assert!(matches!(t.reserve(0, 0), Err(Error::ZeroSize { .. })));
        assert!(matches!(
            t.reserve(5, P),
            Err(Error::NotPageAligned { value: 5, .. })
        ));
        assert!(matches!(
            t.reserve(!(P - 1), 2 * P),
            Err(Error::AddressOverflow { .. })
        ));
        // Release takes exactly the range reserved; then the space is free for a slot.
        assert!(matches!(
            t.release(0xd000_0000, 2 * P),
            Err(Error::ReservationUnknown { .. })
        ));
        assert!(matches!(
            t.release(0x1000, P),
            Err(Error::ReservationUnknown { .. })
        ));
        t.release(0xd000_0000, P).unwrap();
        add(&mut t, 0xd000_0000, P).unwrap();
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
