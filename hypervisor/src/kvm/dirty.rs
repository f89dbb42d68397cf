// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! KVM's three ways of reporting dirty pages, behind one collector: the classic
//! `KVM_GET_DIRTY_LOG`, manual protection (`KVM_CLEAR_DIRTY_LOG` of just the dirty chunks),
//! and the per-vCPU dirty ring. Everything is collected into the per-slot bitmaps of
//! [`DirtyPages`], which also take the VMM's own writes from `GuestMemory`; buffers are made
//! when logging starts on a slot or a vCPU is created, never per harvest.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};

use base::{MemoryMapping, MemoryMappingBuilder};
use kvm_bindings::{
    kvm_clear_dirty_log, kvm_dirty_gfn, kvm_dirty_log, kvm_enable_cap,
    KVM_CAP_DIRTY_LOG_RING_ACQ_REL, KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, KVM_DIRTY_LOG_INITIALLY_SET,
    KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE, KVM_DIRTY_LOG_PAGE_OFFSET,
};
use vm_memory::{DirtyBitmap, GuestMemory};
use vmm_sys_util::ioctl::{ioctl, ioctl_with_ref};

use super::ioctls::*;
use super::slots::{Slot, SlotTable};
use super::{check_extension, ioctl_error};
use crate::dirty::{DirtyPages, SlotPages};
use crate::{DirtyHarvest, DirtyLogMode, Error, MemSlot, Result};

/// The entry flag KVM sets when it publishes an entry.
const GFN_DIRTY: u32 = 1;
/// The entry flag the VMM sets to hand an entry back.
const GFN_RESET: u32 = 2;
/// The most words one `KVM_CLEAR_DIRTY_LOG` covers (1 GiB of pages): the kernel holds the
/// MMU lock across a call, and vCPUs faulting meanwhile wait for it. Within a chunk one call
/// covers every dirty word: the kernel skips a clean word for almost nothing, and a call
/// costs microseconds (measured: a call per dirty chunk cost twice one call over 1 GiB).
const CLEAR_MAX_WORDS: usize = 4096;
/// Entries per vCPU ring unless the caller asks otherwise: 64 KiB a vCPU.
pub const DEFAULT_RING_ENTRIES: u32 = 4096;
/// The smallest ring taken. Intel's PML flushes up to 512 entries into the ring at once, on
/// top of KVM's 64 in reserve; a kernel that does not count the PML buffer in its reserve
/// accepts rings too small for that, which then overrun and stay full for good (seen with
/// 256 entries on this project's nested-KVM machines).
pub const MIN_RING_ENTRIES: u32 = 1024;

/// One vCPU's dirty ring, as mapped from its descriptor.
struct Ring {
    map: MemoryMapping,
    entries: u32,
    /// How many entries have been taken, ever (the ring index is this modulo `entries`).
    fetch: u32,
}

/// What collection needs besides the waiting pages.
#[derive(Default)]
struct State {
    /// Per logged slot, the buffer `KVM_GET_DIRTY_LOG` writes (bitmap modes only).
    scratch: BTreeMap<MemSlot, Box<[u64]>>,
    rings: Vec<Ring>,
    /// The slots whose pages are kept (also in `pending`, which a harvest may hold).
    logged: BTreeSet<MemSlot>,
}

/// The VM's dirty-page collector, shared with its vCPUs (which collect when their ring is
/// full).
pub(crate) struct KvmDirtyLog {
    mode: DirtyLogMode,
    vm: File,
    guest_mem: GuestMemory,
    table: Arc<Mutex<SlotTable>>,
    /// Lock order: `state`, then `pending`, then the slot table.
    state: Mutex<State>,
    pending: Mutex<DirtyPages>,
    ring_full_exits: AtomicU64,
    ring_overruns: AtomicU64,
}

impl std::fmt::Debug for KvmDirtyLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvmDirtyLog")
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

/// Turns on the best mode at or below `preferred` that the kernel offers, before any vCPU
/// exists: the ring, then manual protection, then the classic bitmap, which always works.
pub(super) fn enable_mode(vm: &File, preferred: DirtyLogMode) -> Result<DirtyLogMode> {
    if let DirtyLogMode::Ring { entries } = preferred {
        let max_bytes = check_extension(vm, KVM_CAP_DIRTY_LOG_RING_ACQ_REL);
        let entry = std::mem::size_of::<kvm_dirty_gfn>() as u32;
        let max_entries = max_bytes / entry;
        let fits = max_entries == 0 || entries <= max_entries;
        if !entries.is_power_of_two() || entries < MIN_RING_ENTRIES || !fits {
            return Err(Error::DirtyRingSize {
                entries,
                max: max_entries,
            });
        }
        if max_entries == 0 {
            log::info!("no KVM_CAP_DIRTY_LOG_RING_ACQ_REL: falling back to manual protection");
        } else {
            match enable_cap(vm, KVM_CAP_DIRTY_LOG_RING_ACQ_REL, (entries * entry).into()) {
                Ok(()) => return Ok(DirtyLogMode::Ring { entries }),
                Err(e) => log::warn!("dirty ring of {entries} entries refused ({e}): falling back"),
            }
        }
    }
    if preferred != DirtyLogMode::Bitmap {
        let wanted = KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE | KVM_DIRTY_LOG_INITIALLY_SET;
        let offered = check_extension(vm, KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2);
        if offered & wanted == wanted {
            match enable_cap(vm, KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, wanted.into()) {
                Ok(()) => return Ok(DirtyLogMode::ManualProtect),
                Err(e) => log::warn!("manual dirty log protection refused ({e}): falling back"),
            }
        } else {
            log::info!("no manual dirty log protection with INITIALLY_SET: using the bitmap");
        }
    }
    Ok(DirtyLogMode::Bitmap)
}

fn enable_cap(vm: &File, cap: u32, arg: u64) -> Result<()> {
    let mut enable = kvm_enable_cap {
        cap,
        ..Default::default()
    };
    enable.args[0] = arg;
    // SAFETY: the kernel reads `enable`, which lives across the call.
    let ret = unsafe { ioctl_with_ref(vm, KVM_ENABLE_CAP(), &enable) };
    if ret < 0 {
        return Err(ioctl_error(
            "KVM_ENABLE_CAP",
            format!("cap {cap} arg {arg:#x}"),
        ));
    }
    Ok(())
}

/// Takes a lock whose holder never leaves the data half-updated.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl KvmDirtyLog {
    pub(super) fn new(
        mode: DirtyLogMode,
        vm: File,
        guest_mem: GuestMemory,
        table: Arc<Mutex<SlotTable>>,
    ) -> KvmDirtyLog {
        KvmDirtyLog {
            mode,
            vm,
            guest_mem,
            table,
            state: Mutex::new(State::default()),
            pending: Mutex::new(DirtyPages::default()),
            ring_full_exits: AtomicU64::new(0),
            ring_overruns: AtomicU64::new(0),
        }
    }

    pub(super) fn mode(&self) -> DirtyLogMode {
        self.mode
    }

    pub(super) fn ring_full_exits(&self) -> u64 {
        self.ring_full_exits.load(Ordering::Relaxed)
    }

    pub(super) fn ring_overruns(&self) -> u64 {
        self.ring_overruns.load(Ordering::Relaxed)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// The waiting pages, or [`Error::HarvestInProgress`] while a harvest holds them (were we
    /// to wait, a thread holding a harvest and calling in here would wait for itself).
    fn try_pending(&self) -> Result<MutexGuard<'_, DirtyPages>> {
        match self.pending.try_lock() {
            Ok(guard) => Ok(guard),
            Err(TryLockError::Poisoned(e)) => Ok(e.into_inner()),
            Err(TryLockError::WouldBlock) => Err(Error::HarvestInProgress),
        }
    }

    /// Whether logging could start on a slot now (no harvest holds the pages).
    pub(super) fn check_can_log(&self) -> Result<()> {
        self.try_pending().map(drop)
    }

    /// Maps vCPU `file`'s ring, in ring mode.
    pub(super) fn add_vcpu(&self, id: usize, file: &File) -> Result<()> {
        let DirtyLogMode::Ring { entries } = self.mode else {
            return Ok(());
        };
        let size = entries as usize * std::mem::size_of::<kvm_dirty_gfn>();
        let map = MemoryMappingBuilder::new(size)
            .from_file(file)
            .offset(u64::from(KVM_DIRTY_LOG_PAGE_OFFSET) * base::pagesize() as u64)
            .build()
            .map_err(|source| Error::DirtyRingMapping { id, source })?;
        self.state().rings.push(Ring {
            map,
            entries,
            fetch: 0,
        });
        Ok(())
    }

    /// Starts (or stops) keeping the pages of a slot whose `KVM_MEM_LOG_DIRTY_PAGES` flag is
    /// being set (or cleared) by `change`, which runs under the same locks. A newly logged
    /// slot starts with every page dirty: its first harvest is the baseline copy.
    pub(super) fn set_logging(
        &self,
        slot: MemSlot,
        guest_addr: u64,
        size: u64,
        enable: bool,
        change: impl FnOnce(&mut SlotTable) -> Result<()>,
    ) -> Result<()> {
        let mut state = self.state();
        let mut pending = self.try_pending()?;
        if !enable && self.mode_is_ring() {
            // Entries still in the rings for this slot are dropped with it.
            self.drain_rings(&mut state, &mut pending)?;
        }
        // Made before the slot changes, so that a bitmap that cannot be had changes nothing.
        let pages = usize::try_from(size / base::pagesize() as u64).unwrap_or(usize::MAX);
        let fresh = (enable && !state.logged.contains(&slot))
            .then(|| DirtyBitmap::new(pages))
            .transpose()?;
        change(&mut lock(&self.table))?;
        if !enable {
            state.scratch.remove(&slot);
            state.logged.remove(&slot);
            pending.slots.remove(&slot);
            return Ok(());
        }
        let Some(mut bitmap) = fresh else {
            return Ok(());
        };
        state.logged.insert(slot);
        bitmap.mark_pages_mut(0, pages)?;
        pending.slots.insert(slot, SlotPages { guest_addr, bitmap });
        if !self.mode_is_ring() {
            state
                .scratch
                .insert(slot, vec![0u64; pages.div_ceil(64)].into_boxed_slice());
        }
        Ok(())
    }

    fn mode_is_ring(&self) -> bool {
        matches!(self.mode, DirtyLogMode::Ring { .. })
    }

    /// Collects every source into the waiting pages and hands them out.
    pub(super) fn harvest(&self) -> Result<DirtyHarvest<'_>> {
        let mut state = self.state();
        let mut pending = self.try_pending()?;
        self.collect(&mut state, &mut pending)?;
        drop(state);
        Ok(DirtyHarvest::new(pending))
    }

    /// What a vCPU whose ring filled up does: collect, so that KVM can go on. Returns how
    /// many entries were taken, or `None` if a harvest holds the pages and the vCPU must
    /// wait until it ends.
    pub(super) fn ring_full(&self) -> Result<Option<u64>> {
        self.ring_full_exits.fetch_add(1, Ordering::Relaxed);
        let mut state = self.state();
        let mut pending = match self.try_pending() {
            Ok(p) => p,
            Err(Error::HarvestInProgress) => return Ok(None),
            Err(e) => return Err(e),
        };
        let taken = self.drain_rings(&mut state, &mut pending)?;
        Ok(Some(taken))
    }

    /// Copies one slot's dirty pages (collected now) into `out`, in `KVM_GET_DIRTY_LOG`'s
    /// layout, and forgets them.
    pub(super) fn take_slot(&self, slot: MemSlot, out: &mut [u8]) -> Result<()> {
        let mut state = self.state();
        let mut pending = self.try_pending()?;
        self.collect(&mut state, &mut pending)?;
        let s = pending
            .slots
            .get_mut(&slot)
            .ok_or(Error::DirtyLogNotEnabled { slot })?;
        let needed = s.bitmap.pages().div_ceil(64) * 8;
        if out.len() < needed {
            return Err(Error::DirtyLogBufferTooSmall {
                slot,
                len: out.len(),
                needed,
            });
        }
        out[..needed].fill(0);
        for (first, count) in s.bitmap.runs() {
            for page in first..first + count {
                out[page / 8] |= 1 << (page % 8);
            }
        }
        s.bitmap.clear();
        Ok(())
    }

    /// Moves what the kernel and the VMM recorded into `pending`. A failure part way keeps
    /// what was moved, and what was not stays where it was: nothing is lost.
    fn collect(&self, state: &mut State, pending: &mut DirtyPages) -> Result<()> {
        match self.mode {
            DirtyLogMode::Ring { .. } => {
                self.drain_rings(state, pending)?;
            }
            DirtyLogMode::Bitmap | DirtyLogMode::ManualProtect => {
                // Held across the ioctls: were a slot removed and its number reused by a
                // larger one meanwhile, the kernel would write past the scratch buffer.
                let table = lock(&self.table);
                for (&slot, scratch) in state.scratch.iter_mut() {
                    let Some(p) = pending.slots.get_mut(&slot) else {
                        continue;
                    };
                    let s = table.get(slot)?;
                    if s.size / base::pagesize() as u64 != p.bitmap.pages() as u64 {
                        return Err(Error::UnknownSlot { slot });
                    }
                    self.get_dirty_log(slot, scratch)?;
                    p.bitmap.or_words_mut(scratch)?;
                    if self.mode == DirtyLogMode::ManualProtect {
                        self.clear_dirty_log(slot, scratch, p.bitmap.pages())?;
                    }
                }
            }
        }
        // The VMM's writes to boot RAM (region `i` is slot `i`).
        for (i, region) in self.guest_mem.memory_regions().iter().enumerate() {
            if let Some(p) = pending.slots.get_mut(&(i as MemSlot)) {
                region.dirty_bitmap().move_into(&mut p.bitmap)?;
            }
        }
        Ok(())
    }

    fn get_dirty_log(&self, slot: MemSlot, scratch: &mut [u64]) -> Result<()> {
        let mut log = kvm_dirty_log {
            slot,
            ..Default::default()
        };
        log.__bindgen_anon_1.dirty_bitmap = scratch.as_mut_ptr() as *mut libc::c_void;
        // SAFETY: the kernel writes the slot's bitmap, one bit a page in whole 64-bit words,
        // to `scratch`, which was sized for this slot (checked by the caller against the
        // live slot, under the table lock) and is exclusively borrowed across the call.
        let ret = unsafe { ioctl_with_ref(&self.vm, KVM_GET_DIRTY_LOG(), &log) };
        if ret < 0 {
            return Err(ioctl_error("KVM_GET_DIRTY_LOG", format!("slot {slot}")));
        }
        Ok(())
    }

    /// Re-protects the dirty pages in `bits` with one `KVM_CLEAR_DIRTY_LOG` per chunk of at
    /// most `CLEAR_MAX_WORDS` words that holds dirty ones, from its first dirty word to its
    /// last (the kernel skips the clean words between for almost nothing).
    fn clear_dirty_log(&self, slot: MemSlot, bits: &[u64], pages: usize) -> Result<()> {
        for (c, chunk) in bits.chunks(CLEAR_MAX_WORDS).enumerate() {
            let (Some(first), Some(last)) = (
                chunk.iter().position(|&w| w != 0),
                chunk.iter().rposition(|&w| w != 0),
            ) else {
                continue;
            };
            let start = c * CLEAR_MAX_WORDS + first;
            let first_page = start * 64;
            // A whole number of words, except at the slot's end, as the kernel requires.
            let num_pages = ((last + 1 - first) * 64).min(pages - first_page);
            let mut clear = kvm_clear_dirty_log {
                slot,
                num_pages: num_pages as u32,
                first_page: first_page as u64,
                ..Default::default()
            };
            clear.__bindgen_anon_1.dirty_bitmap = bits[start..].as_ptr() as *mut libc::c_void;
            // SAFETY: the kernel reads `num_pages` bits, at most `last + 1 - first` words, from
            // `bits[start..]`, which holds them; it writes nothing of ours.
            let ret = unsafe { ioctl_with_ref(&self.vm, KVM_CLEAR_DIRTY_LOG(), &clear) };
            if ret < 0 {
                return Err(ioctl_error(
                    "KVM_CLEAR_DIRTY_LOG",
                    format!("slot {slot} pages {first_page}+{num_pages}"),
                ));
            }
        }
        Ok(())
    }

    /// Takes every published entry of every ring into `pending`, hands the entries back,
    /// and has KVM recycle them (re-protecting their pages).
    ///
    /// A ring found full to its last entry may have been overrun: KVM's reserve is meant to
    /// stop the vCPU well before that, but a kernel that emulates many writes in one
    /// `KVM_RUN` (this project's nested-KVM hosts do) goes on pushing over entries not yet
    /// taken. Their pages are unknown, so every page of every logged slot is marked dirty:
    /// a harvest may then hold too much, never too little.
    fn drain_rings(&self, state: &mut State, pending: &mut DirtyPages) -> Result<u64> {
        let mut taken = 0u64;
        let mut overrun = false;
        for ring in &mut state.rings {
            let before = taken;
            let base = ring.map.as_ptr() as *mut kvm_dirty_gfn;
            // The last slot's pages, so that a run of entries for one slot looks it up once.
            let mut last: Option<(u32, &mut SlotPages)> = None;
            // At most one lap: KVM publishes no entry again until it is reset.
            for _ in 0..ring.entries {
                let index = (ring.fetch & (ring.entries - 1)) as usize;
                // SAFETY: `index < entries` and the mapping holds `entries` entries; it lives
                // as long as `ring`. The kernel publishes an entry by a release store of its
                // flags, so an acquire load makes the rest of the entry visible, and it reads
                // the flags back with an acquire load after our release store of RESET.
                let (flags, slot, offset) = unsafe {
                    let entry = base.add(index);
                    let flags = AtomicU32::from_ptr(std::ptr::addr_of_mut!((*entry).flags));
                    if flags.load(Ordering::Acquire) & GFN_DIRTY == 0 {
                        break;
                    }
                    let slot = std::ptr::addr_of!((*entry).slot).read_volatile();
                    let offset = std::ptr::addr_of!((*entry).offset).read_volatile();
                    (flags, slot, offset)
                };
                // Address space 0 is ordinary memory; the slot may be gone or no longer
                // logged, and an offset past its end is ignored rather than trusted.
                if slot >> 16 == 0 {
                    if last.as_ref().is_none_or(|(s, _)| *s != slot) {
                        last = pending.slots.get_mut(&slot).map(|p| (slot, p));
                    }
                    if let (Some((_, p)), Ok(page)) = (last.as_mut(), usize::try_from(offset)) {
                        let _ = p.bitmap.mark_page_mut(page);
                    }
                }
                flags.store(GFN_RESET, Ordering::Release);
                ring.fetch = ring.fetch.wrapping_add(1);
                taken += 1;
            }
            overrun |= taken - before == u64::from(ring.entries);
        }
        if overrun {
            self.ring_overruns.fetch_add(1, Ordering::Relaxed);
            log::warn!("a dirty ring was full to its last entry: marking all logged pages dirty");
            for p in pending.slots.values_mut() {
                let pages = p.bitmap.pages();
                p.bitmap.mark_pages_mut(0, pages)?;
            }
        }
        if taken > 0 {
            // SAFETY: KVM_RESET_DIRTY_RINGS takes no argument; it reads the rings, which are
            // ours and mapped.
            let ret = unsafe { ioctl(&self.vm, KVM_RESET_DIRTY_RINGS()) };
            if ret < 0 {
                return Err(ioctl_error(
                    "KVM_RESET_DIRTY_RINGS",
                    format!("{taken} entries"),
                ));
            }
        }
        Ok(taken)
    }

    /// Drops what is kept for a slot that is going away (entries for it still in the rings
    /// are drained first, so that they cannot be taken for a later slot of the same number).
    pub(super) fn forget_slot(
        &self,
        slot: MemSlot,
        remove: impl FnOnce(&mut SlotTable) -> Result<Slot>,
    ) -> Result<Slot> {
        let mut state = self.state();
        if !state.logged.contains(&slot) {
            return remove(&mut lock(&self.table));
        }
        let mut pending = self.try_pending()?;
        if self.mode_is_ring() {
            self.drain_rings(&mut state, &mut pending)?;
        }
        let removed = remove(&mut lock(&self.table))?;
        state.scratch.remove(&slot);
        state.logged.remove(&slot);
        pending.slots.remove(&slot);
        Ok(removed)
    }
}
