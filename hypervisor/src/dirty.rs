// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! One harvest API over the hypervisor's dirty log and the VMM's own writes: the pages
//! collected from both wait in a per-slot [`DirtyBitmap`] until a [`DirtyHarvest`] that
//! handed them out is committed.

use std::collections::BTreeMap;
use std::sync::MutexGuard;

use vm_memory::{DirtyBitmap, DirtyRuns, GuestAddress};

use crate::MemSlot;

/// How the hypervisor reports the pages the guest wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DirtyLogMode {
    /// `KVM_GET_DIRTY_LOG`: the kernel hands over a slot's bitmap and re-protects every page
    /// in the same call. The cost of a harvest grows with the size of the logged memory.
    Bitmap,
    /// `KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2` with `INITIALLY_SET`: the bitmap is read, and only
    /// the dirty pages are re-protected, with `KVM_CLEAR_DIRTY_LOG` over chunks that hold
    /// dirty pages.
    ManualProtect,
    /// `KVM_CAP_DIRTY_LOG_RING_ACQ_REL`: each vCPU pushes the pages it dirties into a ring
    /// of `entries` entries shared with the VMM, which are recycled with
    /// `KVM_RESET_DIRTY_RINGS`. The cost of a harvest grows with the dirty pages alone.
    Ring {
        /// Entries per vCPU ring (a power of two).
        entries: u32,
    },
}

/// A run of dirty pages in one slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirtyRun {
    /// The slot.
    pub slot: MemSlot,
    /// Guest physical address of the run's first byte.
    pub guest_addr: GuestAddress,
    /// Offset of the run's first byte in the slot.
    pub offset: u64,
    /// Length of the run in bytes (a whole number of pages).
    pub len: u64,
}

/// The pages waiting to be handed out, per logged slot.
#[derive(Debug, Default)]
pub(crate) struct DirtyPages {
    pub slots: BTreeMap<MemSlot, SlotPages>,
}

/// One logged slot's waiting pages.
#[derive(Debug)]
pub(crate) struct SlotPages {
    pub guest_addr: u64,
    pub bitmap: DirtyBitmap,
}

/// The dirty pages of every logged slot, collected from the hypervisor and from the VMM's
/// writes through `GuestMemory`, held until [`commit`](Self::commit).
///
/// It is transactional: dropped without a commit (the copy failed, the writer panicked),
/// every page it handed out is still dirty for the next harvest, together with whatever
/// was dirtied meanwhile. The hypervisor's own record is re-armed when the pages are
/// collected, before they are handed out, so a page the guest writes while its copy is
/// being made is reported again next time.
///
/// While it lives, other harvests, and vCPUs whose dirty ring fills up, wait for it.
///
/// ```no_run
/// # use hypervisor::{Vm, kvm::{Kvm, KvmVm}};
/// # use vm_memory::{GuestAddress, GuestMemory};
/// # let kvm = Kvm::new().unwrap();
/// # let vm = KvmVm::new(&kvm, GuestMemory::new(&[(GuestAddress(0), 0x10000)]).unwrap()).unwrap();
/// vm.set_dirty_logging(0, true).unwrap();
/// let harvest = vm.harvest_dirty_log().unwrap();
/// // The first harvest after logging starts holds every page of the slot.
/// assert_eq!(harvest.pages(), 16);
/// for run in harvest.runs() {
///     println!("slot {} at {}: {:#x} bytes", run.slot, run.guest_addr, run.len);
/// }
/// harvest.commit();
/// assert_eq!(vm.harvest_dirty_log().unwrap().pages(), 0);
/// ```
#[derive(Debug)]
pub struct DirtyHarvest<'a> {
    pages: MutexGuard<'a, DirtyPages>,
    page_size: u64,
}

impl<'a> DirtyHarvest<'a> {
    pub(crate) fn new(pages: MutexGuard<'a, DirtyPages>) -> DirtyHarvest<'a> {
        DirtyHarvest {
            pages,
            page_size: base::pagesize() as u64,
        }
    }

    /// Calls `f` with each dirty run, by slot number and then by address, contiguous pages
    /// merged: the fast way through a harvest.
    pub fn for_each_run(&self, mut f: impl FnMut(DirtyRun)) {
        // Pages are a power of two: shifts, not multiplies, on this hot path.
        let shift = self.page_size.trailing_zeros();
        for (&slot, s) in &self.pages.slots {
            s.bitmap.for_each_run(|first, count| {
                let offset = (first as u64) << shift;
                f(DirtyRun {
                    slot,
                    guest_addr: GuestAddress(s.guest_addr + offset),
                    offset,
                    len: (count as u64) << shift,
                })
            });
        }
    }

    /// The dirty runs as an iterator, in the order of [`for_each_run`](Self::for_each_run)
    /// (which is several times faster when there are many short runs).
    pub fn runs(&self) -> impl Iterator<Item = DirtyRun> + '_ {
        let page = self.page_size;
        self.pages.slots.iter().flat_map(move |(&slot, s)| {
            s.bitmap.runs().map(move |(first, count)| DirtyRun {
                slot,
                guest_addr: GuestAddress(s.guest_addr + first as u64 * page),
                offset: first as u64 * page,
                len: count as u64 * page,
            })
        })
    }

    /// How many dirty pages there are in all.
    pub fn pages(&self) -> u64 {
        self.pages
            .slots
            .values()
            .map(|s| s.bitmap.count() as u64)
            .sum()
    }

    /// The dirty runs of one slot as `(first page, count)`, or `None` if it is not logged.
    /// A view only: the harvest's pages change only by [`commit`](Self::commit), so that one
    /// dropped without it keeps every page for the next.
    pub fn slot_runs(&self, slot: MemSlot) -> Option<DirtyRuns<'_>> {
        self.pages.slots.get(&slot).map(|s| s.bitmap.runs())
    }

    /// The pages are taken care of: forget them. Pages dirtied since they were collected
    /// are not in this harvest, and stay dirty for the next one.
    pub fn commit(mut self) {
        for s in self.pages.slots.values_mut() {
            s.bitmap.clear();
        }
    }
}
