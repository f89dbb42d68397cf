// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The hypervisor layer: [`Hypervisor`], [`Vm`] and [`Vcpu`] traits, and their KVM backend
//! ([`kvm::Kvm`], [`kvm::KvmVm`], [`kvm::KvmVcpu`]), which owns the VM's memory slots.
//!
//! Slot management is stricter than crosvm's: the lowest free slot number is reused; a new
//! slot that overlaps any live slot, boot RAM included, is refused before the kernel sees it;
//! the kernel's slot limit and read-only capability are honoured with typed errors; guest
//! addresses and sizes must be page-aligned (nothing is silently rounded); the slot table lock
//! is never held across a blocking `msync` or `madvise`; and dirty logging works for boot RAM
//! slots too, into a caller's buffer, without allocating.

// The snapshot guide's example builds as a doc test (only then is the file read, so a
// packaged crate without the guide still builds).
#[cfg(doctest)]
#[doc = include_str!("../../docs/guides/snapshots.md")]
struct SnapshotGuide;

mod dirty;
mod error;
pub mod kvm;
pub mod snapshot;

use base::{AsRawDescriptor, MappedRegion, Protection, VolatileSlice};
use vm_memory::{GuestAddress, GuestMemory};

pub use dirty::{DirtyHarvest, DirtyLogMode, DirtyRun};
pub use error::{Error, Result};

/// A memory slot number. Boot RAM region `i` of the VM's [`GuestMemory`] is slot `i`.
pub type MemSlot = u32;

/// What a slot is, as [`Vm::memory_slots`] lists it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotInfo {
    /// The slot's number.
    pub slot: MemSlot,
    /// Guest physical address of its first byte.
    pub guest_addr: GuestAddress,
    /// Its size in bytes.
    pub size: u64,
    /// Whether the guest may only read it.
    pub read_only: bool,
    /// Whether it logs dirty pages.
    pub dirty_logging: bool,
    /// Whether it is a region of the VM's boot RAM (`GuestMemory`).
    pub boot_ram: bool,
}

/// A mapped part of a slot's memory, as [`Vm::slot_mappings`] lists it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotMapping {
    /// Offset of its first byte in the slot.
    pub offset: usize,
    /// Its length in bytes.
    pub size: usize,
    /// How the host maps it.
    pub protection: Protection,
}

/// How the guest may cache a memory region.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum MemCacheType {
    /// Ordinary, cache-coherent memory.
    #[default]
    CacheCoherent,
    /// Memory a device reads behind the CPU caches. Upstream KVM has no slot flag for this, so
    /// the KVM backend refuses it rather than pretend.
    CacheNonCoherent,
}

/// A capability of the hypervisor or of a VM, answered by the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmCap {
    /// User memory slots (`KVM_CAP_USER_MEMORY`), required by this crate.
    UserMemory,
    /// Read-only slots (`KVM_CAP_READONLY_MEM`).
    ReadOnlyMemory,
    /// Dirty page logging through `KVM_GET_DIRTY_LOG`, which comes with user memory.
    DirtyLog,
    /// Dirty logs that userspace clears itself (`KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2`).
    ManualDirtyLogProtect,
    /// Per-vCPU dirty rings with acquire/release ordering (`KVM_CAP_DIRTY_LOG_RING_ACQ_REL`).
    DirtyLogRing,
    /// `immediate_exit` in the run structure (`KVM_CAP_IMMEDIATE_EXIT`).
    ImmediateExit,
    /// Memory fault exits naming the guest address (`KVM_CAP_MEMORY_FAULT_INFO`).
    MemoryFaultInfo,
}

/// The size in bytes of a dirty bitmap for a slot of `size` bytes: one bit a page, in whole
/// 64-bit words, as `KVM_GET_DIRTY_LOG` writes it.
///
/// ```
/// assert_eq!(hypervisor::dirty_log_bitmap_size(0), 0);
/// assert_eq!(hypervisor::dirty_log_bitmap_size(4096), 8);
/// assert_eq!(hypervisor::dirty_log_bitmap_size(64 * 4096 + 1), 16);
/// ```
pub fn dirty_log_bitmap_size(size: usize) -> usize {
    size.div_ceil(base::pagesize()).div_ceil(64) * 8
}

/// Why a vCPU stopped running guest code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VcpuExit {
    /// The guest executed `hlt`.
    Hlt,
    /// The guest touched an address that no slot backs as it needs (no slot, or a write to a
    /// read-only slot). `data` holds the bytes of a write; for a read, supply the bytes with
    /// [`Vcpu::set_data`] before running again.
    Mmio {
        /// Guest physical address.
        address: u64,
        /// Access size in bytes (1 to 8).
        size: usize,
        /// The bytes written, or `None` for a read.
        data: Option<[u8; 8]>,
    },
    /// The guest executed `in` or `out`. `data` holds the first element written by an `out`
    /// (all of them, for string I/O, are in [`Vcpu::io_data`]); for an `in`, supply the
    /// bytes with [`Vcpu::set_data`].
    Io {
        /// The port.
        port: u16,
        /// Element size in bytes (1, 2 or 4).
        size: usize,
        /// How many elements (more than 1 for string I/O).
        count: u32,
        /// The first element written, or `None` for a read.
        data: Option<[u8; 4]>,
    },
    /// The guest touched a slot whose host memory cannot be faulted in (for example an
    /// arena's unmapped reservation).
    MemoryFault {
        /// Guest physical address of the fault.
        gpa: u64,
        /// Size of the faulting range.
        size: u64,
    },
    /// A triple fault or similar: the guest is dead.
    Shutdown,
    /// The hardware refused to enter the guest.
    FailEntry {
        /// The hardware's reason code.
        hardware_entry_failure_reason: u64,
    },
    /// KVM could not handle an exit.
    InternalError {
        /// KVM's sub-error code.
        suberror: u32,
    },
    /// A signal interrupted the run; run again.
    Intr,
    /// The vCPU's dirty ring is full and cannot be emptied while a [`DirtyHarvest`] is
    /// alive: commit or drop it, then run again. (With no harvest alive, a full ring is
    /// emptied inside [`Vcpu::run`] and never seen.)
    DirtyRingFull,
    /// An exit this crate does not decode, with KVM's reason number.
    Unknown(u32),
}

/// A hypervisor: the thing VMs are made from.
pub trait Hypervisor: Send + Sync {
    /// Whether the hypervisor offers `cap`.
    fn check_capability(&self, cap: VmCap) -> bool;
}

/// A virtual machine and its guest physical memory map.
///
/// Memory functions take `&self`: a VM's memory map is changed from device threads and its
/// control loop at once, and the implementation keeps its own locking (never across a
/// blocking `msync` or `madvise`).
pub trait Vm: Send + Sync {
    /// Whether this VM offers `cap`.
    fn check_capability(&self, cap: VmCap) -> bool;

    /// The boot RAM the VM was made with.
    fn get_memory(&self) -> &GuestMemory;

    /// Maps `mem` into guest physical memory at `guest_addr` as a new slot and returns its
    /// number. The VM owns `mem` until [`remove_memory_region`](Self::remove_memory_region).
    fn add_memory_region(
        &self,
        guest_addr: GuestAddress,
        mem: Box<dyn MappedRegion>,
        read_only: bool,
        log_dirty_pages: bool,
        cache: MemCacheType,
    ) -> Result<MemSlot>;

    /// Writes `offset..offset + size` of the slot's memory back to its file (`MS_SYNC`).
    fn msync_memory_region(&self, slot: MemSlot, offset: usize, size: usize) -> Result<()>;

    /// Asks the host to page out `offset..offset + size` of the slot (`MADV_PAGEOUT`).
    fn madvise_pageout_memory_region(
        &self,
        slot: MemSlot,
        offset: usize,
        size: usize,
    ) -> Result<()>;

    /// Gives `offset..offset + size` of the slot back to the host (`MADV_REMOVE`); the guest
    /// reads zeros there afterwards.
    fn madvise_remove_memory_region(&self, slot: MemSlot, offset: usize, size: usize)
        -> Result<()>;

    /// Removes a slot added with [`add_memory_region`](Self::add_memory_region) and hands its
    /// memory back.
    fn remove_memory_region(&self, slot: MemSlot) -> Result<Box<dyn MappedRegion>>;

    /// Turns dirty page logging of a slot (boot RAM included) on or off. A slot whose logging
    /// starts has every page dirty: its first harvest is the baseline copy.
    fn set_dirty_logging(&self, slot: MemSlot, enable: bool) -> Result<()>;

    /// Copies the slot's dirty pages (one bit a page, see [`dirty_log_bitmap_size`]), from
    /// the hypervisor and, for boot RAM, from the VMM's writes, into `dirty_log` and forgets
    /// them. Right after logging starts that is every page.
    fn get_dirty_log(&self, slot: MemSlot, dirty_log: &mut [u8]) -> Result<()>;

    /// How the hypervisor reports the pages the guest dirties.
    fn dirty_log_mode(&self) -> DirtyLogMode;

    /// Collects the dirty pages of every logged slot, from the hypervisor and from the VMM's
    /// writes through boot RAM's `GuestMemory`, and hands them out until the harvest is
    /// committed; see [`DirtyHarvest`]. Refused with [`Error::HarvestInProgress`] while
    /// another harvest is alive.
    fn harvest_dirty_log(&self) -> Result<DirtyHarvest<'_>>;

    /// Runs `f` on `offset..offset + size` of a slot's memory (boot RAM or added), range
    /// checked: how a snapshot reads the pages of a harvest, and how a restore writes them.
    /// Every byte of the range must be mapped read-write in the host, else
    /// [`Error::SlotMemoryNotMapped`] (an arena's holes and read-only sub-mappings are not);
    /// see [`slot_mappings`](Self::slot_mappings). A removal of the slot waits until `f` is
    /// done.
    fn with_slot_memory(
        &self,
        slot: MemSlot,
        offset: usize,
        size: usize,
        f: &mut dyn FnMut(VolatileSlice<'_>) -> std::io::Result<()>,
    ) -> Result<()>;

    /// The live slots, by number.
    fn memory_slots(&self) -> Vec<SlotInfo>;

    /// What is mapped in a slot's memory, in order: one entry for a slot mapped in whole, one
    /// per sub-mapping of an arena (its holes are left out).
    fn slot_mappings(&self, slot: MemSlot) -> Result<Vec<SlotMapping>>;

    /// Maps `size` bytes of `fd` from `fd_offset` at `offset` into the slot's arena.
    fn add_fd_mapping(
        &self,
        slot: MemSlot,
        offset: usize,
        size: usize,
        fd: &dyn AsRawDescriptor,
        fd_offset: u64,
        prot: Protection,
    ) -> Result<()>;

    /// Unmaps `offset..offset + size` of the slot's arena (it stays reserved).
    fn remove_mapping(&self, slot: MemSlot, offset: usize, size: usize) -> Result<()>;

    /// Reserves `guest_addr..guest_addr + size` (page-aligned) for something that is not
    /// memory, a device's MMIO window say: from now on no slot may cover any byte of it, by
    /// any path, and it may not overlap a live slot or another reservation.
    fn reserve_guest_range(&self, guest_addr: GuestAddress, size: u64) -> Result<()>;

    /// Ends the reservation made by [`reserve_guest_range`](Self::reserve_guest_range) with
    /// exactly this range.
    fn release_guest_range(&self, guest_addr: GuestAddress, size: u64) -> Result<()>;
}

/// A virtual CPU.
pub trait Vcpu: Send {
    /// The vCPU's index in its VM.
    fn id(&self) -> usize;

    /// Runs guest code until an exit the VMM must handle.
    fn run(&mut self) -> Result<VcpuExit>;

    /// Supplies the bytes for the MMIO or port read that the last exit asked for; the guest
    /// sees them when it runs again. The length must be the access size (times the count,
    /// for string I/O). Running again without it is [`Error::UnansweredRead`].
    fn set_data(&mut self, data: &[u8]) -> Result<()>;

    /// All the bytes of the last exit's port write: `size * count` of them, so string I/O
    /// (`rep outs`) is seen whole. `None` unless the last exit was a port write.
    fn io_data(&self) -> Option<&[u8]>;
}
