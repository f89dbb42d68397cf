// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The KVM backend: [`Kvm`] (the `/dev/kvm` handle), [`KvmVm`] (a VM and its memory slots)
//! and [`KvmVcpu`].

mod dirty;
mod ioctls;
mod irq;
mod kick;
mod slots;
mod vcpu;

use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use base::{
    AsRawDescriptor, ExternalMapping, MappedRegion, MemoryMappingBuilder, Protection, VolatileSlice,
};
use kvm_bindings::{
    kvm_userspace_memory_region, KVM_CAP_IMMEDIATE_EXIT, KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
    KVM_CAP_MEMORY_FAULT_INFO, KVM_CAP_NR_MEMSLOTS, KVM_CAP_READONLY_MEM, KVM_CAP_USER_MEMORY,
    KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY,
};
use vm_memory::{GuestAddress, GuestMemory};
use vmm_sys_util::ioctl::{ioctl, ioctl_with_ref, ioctl_with_val};

use self::dirty::KvmDirtyLog;
pub use self::dirty::{DEFAULT_RING_ENTRIES, MIN_RING_ENTRIES};
use self::ioctls::*;
use self::irq::IrqState;
pub use self::irq::IRQCHIP_GSIS;
pub use self::kick::VcpuKicker;
use self::slots::{Slot, SlotMemory, SlotTable};
pub use self::vcpu::KvmVcpu;
use crate::{
    DirtyHarvest, DirtyLogMode, Error, Hypervisor, MemCacheType, MemSlot, Result, SlotInfo,
    SlotMapping, Vm, VmCap,
};

/// Where KVM on Intel keeps the real-mode TSS: three pages just below the 4 GiB boundary's
/// firmware area, which guest RAM layouts leave free.
#[cfg(target_arch = "x86_64")]
const TSS_ADDR: u64 = 0xfffb_d000;

/// The error of a failed ioctl, with its arguments.
fn ioctl_error(op: &'static str, detail: String) -> Error {
    Error::Ioctl {
        op,
        detail,
        source: std::io::Error::last_os_error(),
    }
}

fn cap_number(cap: VmCap) -> u32 {
    match cap {
        VmCap::UserMemory | VmCap::DirtyLog => KVM_CAP_USER_MEMORY,
        VmCap::ReadOnlyMemory => KVM_CAP_READONLY_MEM,
        VmCap::ManualDirtyLogProtect => KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
        VmCap::DirtyLogRing => kvm_bindings::KVM_CAP_DIRTY_LOG_RING_ACQ_REL,
        VmCap::ImmediateExit => KVM_CAP_IMMEDIATE_EXIT,
        VmCap::MemoryFaultInfo => KVM_CAP_MEMORY_FAULT_INFO,
    }
}

/// `KVM_CHECK_EXTENSION` on `fd` (the system or a VM); negative answers count as 0.
fn check_extension(fd: &File, cap: u32) -> u32 {
    // SAFETY: KVM_CHECK_EXTENSION takes an integer and touches no memory of ours.
    let ret = unsafe { ioctl_with_val(fd, KVM_CHECK_EXTENSION(), cap.into()) };
    ret.max(0) as u32
}

/// An open `/dev/kvm`.
#[derive(Debug)]
pub struct Kvm {
    kvm: File,
    vcpu_mmap_size: usize,
}

impl Kvm {
    /// Opens `/dev/kvm`.
    pub fn new() -> Result<Kvm> {
        Kvm::new_with_path(Path::new("/dev/kvm"))
    }

    /// Opens the KVM device at `path` and checks its API version.
    pub fn new_with_path(path: &Path) -> Result<Kvm> {
        let kvm = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .map_err(|source| Error::KvmUnavailable {
                path: path.display().to_string(),
                source,
            })?;
        // SAFETY: KVM_GET_API_VERSION takes no argument and touches no memory of ours.
        let version = unsafe { ioctl(&kvm, KVM_GET_API_VERSION()) };
        if version != 12 {
            return Err(Error::ApiVersion { version });
        }
        // SAFETY: as above.
        let size = unsafe { ioctl(&kvm, KVM_GET_VCPU_MMAP_SIZE()) };
        if size <= 0 {
            return Err(ioctl_error("KVM_GET_VCPU_MMAP_SIZE", String::new()));
        }
        Ok(Kvm {
            kvm,
            vcpu_mmap_size: size as usize,
        })
    }
}

impl Hypervisor for Kvm {
    fn check_capability(&self, cap: VmCap) -> bool {
        check_extension(&self.kvm, cap_number(cap)) > 0
    }
}

impl AsFd for Kvm {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.kvm.as_fd()
    }
}

/// A KVM virtual machine. Boot RAM region `i` of its [`GuestMemory`] is slot `i`; slots added
/// later take the lowest free number.
pub struct KvmVm {
    vm: File,
    guest_mem: GuestMemory,
    /// Shared with every vCPU: the kernel keeps the VM alive while a vCPU descriptor is open,
    /// so the memory its slots name must stay mapped for as long, even past this value.
    slots: Arc<Mutex<SlotTable>>,
    read_only_supported: bool,
    max_slots: u32,
    vcpu_mmap_size: usize,
    irq: Mutex<IrqState>,
    /// Dirty pages from KVM and from the VMM's writes; shared with the vCPUs, which empty
    /// their ring into it when it fills up.
    dirty: Arc<KvmDirtyLog>,
}

impl std::fmt::Debug for KvmVm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvmVm")
            .field("vm", &self.vm)
            .field("max_slots", &self.max_slots)
            .finish_non_exhaustive()
    }
}

impl KvmVm {
    /// Creates a VM and registers every region of `guest_mem` as a slot (region `i` as slot
    /// `i`), without dirty logging (see [`Vm::set_dirty_logging`]), with manual dirty log
    /// protection if the kernel offers it, else the classic bitmap.
    ///
    /// The dirty ring is not the default: a vCPU that dirties pages faster than its ring is
    /// emptied can overrun it on some kernels (those that emulate many writes in one
    /// `KVM_RUN`), after which the whole logged memory must be taken as dirty and the vCPU
    /// may not run again. Ask for it with [`new_with_dirty_log`](Self::new_with_dirty_log).
    pub fn new(kvm: &Kvm, guest_mem: GuestMemory) -> Result<KvmVm> {
        KvmVm::new_with_dirty_log(kvm, guest_mem, DirtyLogMode::ManualProtect)
    }

    /// Like [`new`](Self::new), with `preferred` as the best dirty log mode to use: it falls
    /// back from the ring to manual protection to the bitmap as the kernel's capabilities
    /// (or its refusal to enable one) require. [`Vm::dirty_log_mode`] says which it got. A
    /// ring size that is not a power of two, or is past the kernel's maximum, is
    /// [`Error::DirtyRingSize`].
    pub fn new_with_dirty_log(
        kvm: &Kvm,
        guest_mem: GuestMemory,
        preferred: DirtyLogMode,
    ) -> Result<KvmVm> {
        // SAFETY: KVM_CREATE_VM takes a machine type (0) and returns a new descriptor, which
        // is checked before it is owned.
        let fd = unsafe { ioctl_with_val(&kvm.kvm, KVM_CREATE_VM(), 0) };
        if fd < 0 {
            return Err(ioctl_error("KVM_CREATE_VM", String::new()));
        }
        // SAFETY: `fd` was just returned by the kernel, so it is open and ours alone.
        let vm = unsafe { <File as base::FromRawDescriptor>::from_raw_descriptor(fd) };
        #[cfg(target_arch = "x86_64")]
        {
            // SAFETY: KVM_SET_TSS_ADDR takes an address as an integer; no memory of ours.
            let ret = unsafe { ioctl_with_val(&vm, KVM_SET_TSS_ADDR(), TSS_ADDR) };
            if ret < 0 {
                return Err(ioctl_error("KVM_SET_TSS_ADDR", format!("{TSS_ADDR:#x}")));
            }
        }
        let read_only_supported = check_extension(&vm, KVM_CAP_READONLY_MEM) > 0;
        let max_slots = check_extension(&vm, KVM_CAP_NR_MEMSLOTS);
        let mode = dirty::enable_mode(&vm, preferred)?;
        let slots = Arc::new(Mutex::new(SlotTable::new(max_slots)));
        let collector_fd = vm.try_clone().map_err(|source| Error::Ioctl {
            op: "dup",
            detail: "the VM descriptor, for the dirty log".into(),
            source,
        })?;
        let dirty = Arc::new(KvmDirtyLog::new(
            mode,
            collector_fd,
            guest_mem.clone(),
            slots.clone(),
        ));
        let vm = KvmVm {
            vm,
            guest_mem,
            slots,
            read_only_supported,
            max_slots,
            vcpu_mmap_size: kvm.vcpu_mmap_size,
            irq: Mutex::new(IrqState::default()),
            dirty,
        };
        {
            let mut table = vm.table();
            for region in vm.guest_mem.regions() {
                let (guest_addr, size) = (region.guest_addr.0, region.size as u64);
                let number = table.check_new(guest_addr, size)?;
                let host_addr = region.host_addr as u64;
                // SAFETY: the region belongs to `vm.guest_mem`, which lives as long as the VM
                // and so as long as the slot.
                unsafe { vm.set_user_memory_region(number, 0, guest_addr, size, host_addr)? };
                table.insert(
                    number,
                    Slot {
                        guest_addr,
                        size,
                        host_addr,
                        flags: 0,
                        memory: Arc::new(SlotMemory::BootRam),
                    },
                );
            }
        }
        Ok(vm)
    }

    /// How many slots the kernel allows this VM (`KVM_CAP_NR_MEMSLOTS`), boot RAM included.
    pub fn max_memory_slots(&self) -> u32 {
        self.max_slots
    }

    /// Creates vCPU number `id`.
    pub fn create_vcpu(&self, id: usize) -> Result<KvmVcpu> {
        // Held across the creation: the irqchip cannot appear while a vCPU does.
        let mut irq = self.irq();
        // SAFETY: KVM_CREATE_VCPU takes the id as an integer and returns a new descriptor,
        // which is checked before it is owned.
        let fd = unsafe { ioctl_with_val(&self.vm, KVM_CREATE_VCPU(), id as libc::c_ulong) };
        if fd < 0 {
            return Err(ioctl_error("KVM_CREATE_VCPU", format!("id {id}")));
        }
        // The kernel has the vCPU now, even if ours is dropped below.
        irq.vcpus += 1;
        // SAFETY: `fd` was just returned by the kernel, so it is open and ours alone.
        let file = unsafe { <File as base::FromRawDescriptor>::from_raw_descriptor(fd) };
        let run = MemoryMappingBuilder::new(self.vcpu_mmap_size)
            .from_file(&file)
            .build()
            .map_err(|source| Error::VcpuRunMapping { id, source })?;
        self.dirty.add_vcpu(id, &file)?;
        KvmVcpu::new(
            id,
            file,
            run,
            (self.guest_mem.clone(), self.slots.clone()),
            self.dirty.clone(),
        )
    }

    /// How many times a vCPU stopped because its dirty ring was full (and emptied it).
    pub fn dirty_ring_full_exits(&self) -> u64 {
        self.dirty.ring_full_exits()
    }

    /// How many times a dirty ring was found full to its last entry, so that every logged
    /// page had to be taken as dirty.
    pub fn dirty_ring_overruns(&self) -> u64 {
        self.dirty.ring_overruns()
    }

    fn irq(&self) -> MutexGuard<'_, IrqState> {
        // Every update is a single assignment or push, so a panic elsewhere leaves it whole.
        self.irq.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn table(&self) -> MutexGuard<'_, SlotTable> {
        // The table is never left half-updated, so a panic elsewhere does not spoil it.
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Tells KVM about a slot (or, with `size` 0, deletes it).
    ///
    /// # Safety
    ///
    /// `host_addr..host_addr + size` must stay mapped for as long as the slot exists: the guest
    /// reads and writes it directly.
    unsafe fn set_user_memory_region(
        &self,
        slot: MemSlot,
        flags: u32,
        guest_addr: u64,
        size: u64,
        host_addr: u64,
    ) -> Result<()> {
        let region = kvm_userspace_memory_region {
            slot,
            flags,
            guest_phys_addr: guest_addr,
            memory_size: size,
            userspace_addr: host_addr,
        };
        // SAFETY: the kernel reads `region`, which lives across the call; the caller vouches
        // for the host memory it names.
        let ret = unsafe { ioctl_with_ref(&self.vm, KVM_SET_USER_MEMORY_REGION(), &region) };
        if ret < 0 {
            return Err(ioctl_error(
                "KVM_SET_USER_MEMORY_REGION",
                format!("slot {slot} at {guest_addr:#x} size {size:#x} flags {flags:#x}"),
            ));
        }
        Ok(())
    }

    /// Runs `f` on the slot's memory, range-checked, without holding the table lock (so a
    /// long msync on one slot never holds up changes to the others). A removal of this very
    /// slot waits until `f` is done before it hands the memory back.
    fn with_region(
        &self,
        slot: MemSlot,
        offset: usize,
        size: usize,
        f: impl FnOnce(&dyn MappedRegion) -> base::mmap::Result<()>,
    ) -> Result<()> {
        let (memory, slot_size, host_addr) = {
            let table = self.table();
            let s = table.get(slot)?;
            (s.memory.clone(), s.size, s.host_addr)
        };
        let in_range = offset
            .checked_add(size)
            .is_some_and(|end| end as u64 <= slot_size);
        if !in_range {
            return Err(Error::SlotRange {
                slot,
                offset,
                size,
                slot_size,
            });
        }
        let region_error = |source| Error::Region { slot, source };
        match &*memory {
            SlotMemory::BootRam => {
                // SAFETY: boot RAM belongs to `self.guest_mem`, which outlives this call; the
                // ExternalMapping does not outlive it either.
                let ram = unsafe { ExternalMapping::new(host_addr as *mut u8, slot_size as usize) }
                    .map_err(region_error)?;
                f(&ram).map_err(region_error)
            }
            SlotMemory::Dynamic(region) => {
                let guard = region.read().unwrap_or_else(|e| e.into_inner());
                let region = guard.as_deref().ok_or(Error::UnknownSlot { slot })?;
                f(region).map_err(region_error)
            }
        }
    }

    /// Runs `f` with exclusive access to a dynamic slot's memory (to change what is mapped in
    /// its arena), without holding the table lock.
    fn with_region_mut(
        &self,
        slot: MemSlot,
        op: &'static str,
        f: impl FnOnce(&mut dyn MappedRegion) -> base::mmap::Result<()>,
    ) -> Result<()> {
        let memory = self.table().get(slot)?.memory.clone();
        match &*memory {
            SlotMemory::BootRam => Err(Error::BootRamSlot { slot, op }),
            SlotMemory::Dynamic(region) => {
                let mut guard = region.write().unwrap_or_else(|e| e.into_inner());
                let region = guard.as_deref_mut().ok_or(Error::UnknownSlot { slot })?;
                f(region).map_err(|source| Error::Region { slot, source })
            }
        }
    }
}

impl Vm for KvmVm {
    fn check_capability(&self, cap: VmCap) -> bool {
        check_extension(&self.vm, cap_number(cap)) > 0
    }

    fn get_memory(&self) -> &GuestMemory {
        &self.guest_mem
    }

    fn add_memory_region(
        &self,
        guest_addr: GuestAddress,
        mem: Box<dyn MappedRegion>,
        read_only: bool,
        log_dirty_pages: bool,
        cache: MemCacheType,
    ) -> Result<MemSlot> {
        if cache != MemCacheType::CacheCoherent {
            return Err(Error::CacheTypeUnsupported { cache });
        }
        if read_only && !self.read_only_supported {
            return Err(Error::ReadOnlyUnsupported);
        }
        let size = mem.size() as u64;
        let host_addr = mem.as_ptr() as u64;
        let mut flags = 0;
        if read_only {
            flags |= KVM_MEM_READONLY;
        }
        if log_dirty_pages {
            // Checked before the slot exists, so that a refusal leaves nothing behind.
            self.dirty.check_can_log()?;
        }
        let mut table = self.table();
        let number = table.check_new(guest_addr.0, size)?;
        // SAFETY: `mem` goes into the table right below and stays there (mapped) until the
        // slot is deleted in `remove_memory_region`.
        unsafe { self.set_user_memory_region(number, flags, guest_addr.0, size, host_addr)? };
        table.insert(
            number,
            Slot {
                guest_addr: guest_addr.0,
                size,
                host_addr,
                flags,
                memory: Arc::new(SlotMemory::Dynamic(RwLock::new(Some(mem)))),
            },
        );
        drop(table);
        if log_dirty_pages {
            if let Err(e) = self.set_dirty_logging(number, true) {
                // Leave no half-made slot behind; the memory goes back with the error.
                let _ = self.remove_memory_region(number);
                return Err(e);
            }
        }
        Ok(number)
    }

    fn msync_memory_region(&self, slot: MemSlot, offset: usize, size: usize) -> Result<()> {
        self.with_region(slot, offset, size, |region| region.msync(offset, size))
    }

    fn madvise_pageout_memory_region(
        &self,
        slot: MemSlot,
        offset: usize,
        size: usize,
    ) -> Result<()> {
        self.with_region(slot, offset, size, |region| {
            region.madvise(offset, size, libc::MADV_PAGEOUT)
        })
    }

    fn madvise_remove_memory_region(
        &self,
        slot: MemSlot,
        offset: usize,
        size: usize,
    ) -> Result<()> {
        self.with_region(slot, offset, size, |region| {
            region.madvise(offset, size, libc::MADV_REMOVE)
        })
    }

    fn reserve_guest_range(&self, guest_addr: GuestAddress, size: u64) -> Result<()> {
        self.table().reserve(guest_addr.0, size)
    }

    fn release_guest_range(&self, guest_addr: GuestAddress, size: u64) -> Result<()> {
        self.table().release(guest_addr.0, size)
    }

    fn remove_memory_region(&self, slot: MemSlot) -> Result<Box<dyn MappedRegion>> {
        let removed = self.dirty.forget_slot(slot, |table| {
            let s = table.get(slot)?;
            if matches!(*s.memory, SlotMemory::BootRam) {
                return Err(Error::BootRamSlot {
                    slot,
                    op: "remove_memory_region",
                });
            }
            // SAFETY: size 0 deletes the slot; no host memory is named.
            unsafe { self.set_user_memory_region(slot, 0, s.guest_addr, 0, 0)? };
            table.remove(slot).ok_or(Error::UnknownSlot { slot })
        })?;
        // Outside the table lock: wait for operations still using this slot's memory.
        match &*removed.memory {
            SlotMemory::Dynamic(region) => region
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .take()
                .ok_or(Error::UnknownSlot { slot }),
            SlotMemory::BootRam => Err(Error::BootRamSlot {
                slot,
                op: "remove_memory_region",
            }),
        }
    }

    fn set_dirty_logging(&self, slot: MemSlot, enable: bool) -> Result<()> {
        let (guest_addr, size) = {
            let table = self.table();
            let s = table.get(slot)?;
            (s.guest_addr, s.size)
        };
        self.dirty
            .set_logging(slot, guest_addr, size, enable, |table| {
                // Looked up again under the collector's locks: the slot may have changed.
                let s = table.get_mut(slot)?;
                if (s.guest_addr, s.size) != (guest_addr, size) {
                    return Err(Error::UnknownSlot { slot });
                }
                let flags = if enable {
                    s.flags | KVM_MEM_LOG_DIRTY_PAGES
                } else {
                    s.flags & !KVM_MEM_LOG_DIRTY_PAGES
                };
                // SAFETY: the same memory as the live slot, which the table keeps mapped.
                unsafe {
                    self.set_user_memory_region(slot, flags, s.guest_addr, s.size, s.host_addr)?
                };
                s.flags = flags;
                Ok(())
            })
    }

    fn get_dirty_log(&self, slot: MemSlot, dirty_log: &mut [u8]) -> Result<()> {
        let logged = self.table().get(slot)?.flags & KVM_MEM_LOG_DIRTY_PAGES != 0;
        if !logged {
            return Err(Error::DirtyLogNotEnabled { slot });
        }
        self.dirty.take_slot(slot, dirty_log)
    }

    fn dirty_log_mode(&self) -> DirtyLogMode {
        self.dirty.mode()
    }

    fn harvest_dirty_log(&self) -> Result<DirtyHarvest<'_>> {
        self.dirty.harvest()
    }

    fn with_slot_memory(
        &self,
        slot: MemSlot,
        offset: usize,
        size: usize,
        f: &mut dyn FnMut(VolatileSlice<'_>) -> std::io::Result<()>,
    ) -> Result<()> {
        let mut failure = None;
        let mut unmapped = None;
        self.with_region(slot, offset, size, |region| {
            // The first byte not mapped read-write, if any: the region's own report of its
            // mappings, which its (unsafe) trait promises to be true.
            let mut covered = offset;
            if size > 0 {
                let walk = region.for_each_mapped_range(offset, size, &mut |at, len, prot| {
                    if at == covered && prot.allows(&Protection::read_write()) {
                        covered = at + len;
                    }
                    Ok(())
                });
                if walk.is_err() || covered < offset + size {
                    unmapped = Some(covered);
                    return Ok(());
                }
            }
            // SAFETY: `with_region` checked `offset + size` against the slot's size, every
            // byte of the range is mapped read-write (just checked), and the region stays
            // so for as long as this closure runs: a removal or a change of its mappings
            // waits for it.
            let slice = unsafe { VolatileSlice::from_raw_parts(region.as_ptr().add(offset), size) };
            if let Err(e) = f(slice) {
                failure = Some(e);
            }
            Ok(())
        })?;
        if let Some(at) = unmapped {
            return Err(Error::SlotMemoryNotMapped {
                slot,
                offset,
                size,
                at,
            });
        }
        match failure {
            Some(source) => Err(Error::SlotMemoryAccess {
                slot,
                offset,
                source,
            }),
            None => Ok(()),
        }
    }

    fn slot_mappings(&self, slot: MemSlot) -> Result<Vec<SlotMapping>> {
        let size = self.table().get(slot)?.size as usize;
        let mut found = Vec::new();
        let walk = self.with_region(slot, 0, size, |region| {
            region.for_each_mapped_range(0, size, &mut |offset, size, protection| {
                found.push(SlotMapping {
                    offset,
                    size,
                    protection,
                });
                Ok(())
            })
        });
        match walk {
            // An arena with nothing mapped in it.
            Err(Error::Region {
                source: base::mmap::Error::InvalidAddress { .. },
                ..
            }) => Ok(Vec::new()),
            other => other.map(|()| found),
        }
    }

    fn memory_slots(&self) -> Vec<SlotInfo> {
        self.table()
            .iter()
            .map(|(&slot, s)| SlotInfo {
                slot,
                guest_addr: GuestAddress(s.guest_addr),
                size: s.size,
                read_only: s.flags & KVM_MEM_READONLY != 0,
                dirty_logging: s.flags & KVM_MEM_LOG_DIRTY_PAGES != 0,
                boot_ram: matches!(*s.memory, SlotMemory::BootRam),
            })
            .collect()
    }

    fn add_fd_mapping(
        &self,
        slot: MemSlot,
        offset: usize,
        size: usize,
        fd: &dyn AsRawDescriptor,
        fd_offset: u64,
        prot: Protection,
    ) -> Result<()> {
        self.with_region_mut(slot, "add_fd_mapping", |region| {
            region.add_fd_mapping(offset, size, fd, fd_offset, prot)
        })
    }

    fn remove_mapping(&self, slot: MemSlot, offset: usize, size: usize) -> Result<()> {
        self.with_region_mut(slot, "remove_mapping", |region| {
            region.remove_mapping(offset, size)
        })
    }
}

impl AsFd for KvmVm {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.vm.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opening_something_that_is_not_kvm_fails_with_a_typed_error() {
        let err = Kvm::new_with_path(Path::new("/nonexistent/kvm")).unwrap_err();
        assert!(matches!(err, Error::KvmUnavailable { .. }), "{err}");
        assert!(err.to_string().contains("/nonexistent/kvm"));
        assert_eq!(err.errno(), libc::ENOENT);
        // /dev/null opens but answers no KVM ioctl.
        let err = Kvm::new_with_path(Path::new("/dev/null")).unwrap_err();
        assert!(matches!(err, Error::ApiVersion { version: -1 }), "{err}");
    }

    #[test]
    fn read_only_slots_are_refused_without_the_capability() {
        let Ok(kvm) = Kvm::new() else {
            assert!(
                std::env::var_os("VMM_REQUIRE_KVM").is_none_or(|v| v != "1"),
                "KVM is required here"
            );
            println!("KVM-SKIP read_only_unsupported: /dev/kvm cannot be opened");
            return;
        };
        let mem = GuestMemory::new(&[(GuestAddress(0), 0x10000)]).unwrap();
        let mut vm = KvmVm::new(&kvm, mem).unwrap();
        assert_eq!(
            vm.read_only_supported,
            vm.check_capability(VmCap::ReadOnlyMemory)
        );
        // As on a kernel without KVM_CAP_READONLY_MEM.
        vm.read_only_supported = false;
        let region = Box::new(MemoryMappingBuilder::new(0x1000).build().unwrap());
        let err = vm
            .add_memory_region(
                GuestAddress(0x10_0000),
                region,
                true,
                false,
                MemCacheType::CacheCoherent,
            )
            .unwrap_err();
        assert!(matches!(err, Error::ReadOnlyUnsupported), "{err}");
        assert_eq!(err.errno(), libc::ENOTSUP);
        assert!(kvm.check_capability(VmCap::UserMemory));
        assert!(vm.check_capability(VmCap::DirtyLog));
    }
}
