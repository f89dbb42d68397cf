// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The hypervisor crate's error, which can also be sent over the wire as an errno.

use remain::sorted;
use thiserror::Error;
use vm_memory::GuestAddress;

use crate::{MemCacheType, MemSlot};

/// Errors of the hypervisor crate.
#[sorted]
#[derive(Debug, Error)]
pub enum Error {
    /// `guest_addr + size` passes the end of the guest address space.
    #[error("slot at {guest_addr} of {size:#x} bytes passes the end of the address space")]
    AddressOverflow {
        /// Where the slot would start.
        guest_addr: GuestAddress,
        /// Its size.
        size: u64,
    },
    /// `/dev/kvm` answered an API version other than 12.
    #[error("KVM API version {version}, expected 12")]
    ApiVersion {
        /// What the kernel answered.
        version: i32,
    },
    /// The operation is not allowed on a boot RAM slot, whose memory the `GuestMemory` owns.
    #[error("{op} is not allowed on slot {slot}, which holds boot RAM")]
    BootRamSlot {
        /// The slot.
        slot: MemSlot,
        /// The operation.
        op: &'static str,
    },
    /// The cache type has no KVM slot flag.
    #[error("cache type {cache:?} is not supported by KVM slots")]
    CacheTypeUnsupported {
        /// The cache type asked for.
        cache: MemCacheType,
    },
    /// The dirty log buffer is too small for the slot.
    #[error("dirty log buffer of {len} bytes is too small for slot {slot}: it needs {needed}")]
    DirtyLogBufferTooSmall {
        /// The slot.
        slot: MemSlot,
        /// The buffer's length.
        len: usize,
        /// The bytes the slot's bitmap needs.
        needed: usize,
    },
    /// The slot does not log dirty pages.
    #[error("slot {slot} does not log dirty pages")]
    DirtyLogNotEnabled {
        /// The slot.
        slot: MemSlot,
    },
    /// A vCPU's dirty ring could not be mapped.
    #[error("failed to map the dirty ring of vCPU {id}: {source}")]
    DirtyRingMapping {
        /// The vCPU.
        id: usize,
        /// What the mapping answered.
        source: base::mmap::Error,
    },
    /// A dirty ring size the kernel cannot take: not a power of two, or past its maximum.
    #[error("a dirty ring of {entries} entries is not a power of two from 1024 to {max}")]
    DirtyRingSize {
        /// The entries asked for.
        entries: u32,
        /// The kernel's maximum (0 when it has no dirty ring).
        max: u32,
    },
    /// KVM says a vCPU's dirty ring is full, twice, with nothing in it to take.
    #[error("vCPU {id}'s dirty ring stays full with no entries to collect")]
    DirtyRingStuck {
        /// The vCPU.
        id: usize,
    },
    /// A GSI past those the irqchip routes.
    #[error("GSI {gsi} is out of range: the irqchip routes GSIs below {limit}")]
    GsiOutOfRange {
        /// The GSI asked for.
        gsi: u32,
        /// How many GSIs there are.
        limit: u32,
    },
    /// Guest memory refused an operation.
    #[error("guest memory: {0}")]
    GuestMemory(#[from] vm_memory::Error),
    /// A dirty-page harvest is alive: it holds the pages until it is committed or dropped,
    /// and this call needs them.
    #[error("a dirty page harvest is in progress: commit or drop it first")]
    HarvestInProgress,
    /// A KVM ioctl failed.
    #[error("{op} ({detail}) failed: {source}")]
    Ioctl {
        /// The ioctl.
        op: &'static str,
        /// Its arguments.
        detail: String,
        /// What the kernel answered.
        source: std::io::Error,
    },
    /// The irqchip must be created before the first vCPU.
    #[error("the irqchip cannot be created after the VM's {vcpus} vCPU(s)")]
    IrqChipAfterVcpus {
        /// vCPUs created so far.
        vcpus: usize,
    },
    /// The VM has its irqchip already.
    #[error("the VM has an irqchip already")]
    IrqChipExists,
    /// KVM refused to register or unregister an irqfd.
    #[error("irqfd on GSI {gsi}: {source}")]
    Irqfd {
        /// The GSI.
        gsi: u32,
        /// What KVM answered.
        source: std::io::Error,
    },
    /// The eventfd is an irqfd of this VM already (KVM allows one GSI per eventfd).
    #[error("the eventfd is already an irqfd of this VM (asked for GSI {gsi})")]
    IrqfdInUse {
        /// The GSI asked for.
        gsi: u32,
    },
    /// The eventfd is not an irqfd on that GSI.
    #[error("the eventfd is not registered as an irqfd on GSI {gsi}")]
    IrqfdUnknown {
        /// The GSI named.
        gsi: u32,
    },
    /// `/dev/kvm` could not be opened.
    #[error("cannot open {path}: {source}")]
    KvmUnavailable {
        /// The path tried.
        path: String,
        /// What the kernel answered.
        source: std::io::Error,
    },
    /// An interrupt operation on a VM without an irqchip.
    #[error("{op} needs the in-kernel irqchip: call create_irq_chip before the first vCPU")]
    NoIrqChip {
        /// The operation.
        op: &'static str,
    },
    /// `set_data` was called while no MMIO or port read is pending.
    #[error("no MMIO or port read is waiting for data")]
    NoPendingRead,
    /// An address or size is not page-aligned (slots are never silently rounded).
    #[error("{what} {value:#x} is not aligned to the page size {page:#x}")]
    NotPageAligned {
        /// Which value.
        what: &'static str,
        /// The value.
        value: u64,
        /// The page size.
        page: usize,
    },
    /// The kernel lacks `KVM_CAP_READONLY_MEM`.
    #[error("read-only slots are not supported by this kernel")]
    ReadOnlyUnsupported,
    /// An operation on a slot's memory failed.
    #[error("slot {slot}: {source}")]
    Region {
        /// The slot.
        slot: MemSlot,
        /// What `base` answered.
        source: base::mmap::Error,
    },
    /// No reservation starts at this address with this size.
    #[error("no reserved range {guest_addr}+{size:#x}")]
    ReservationUnknown {
        /// Start of the range given.
        guest_addr: GuestAddress,
        /// Its size.
        size: u64,
    },
    /// The range overlaps a guest-physical range the VMM reserved (a device's MMIO window,
    /// say), which no slot may cover and no second reservation may overlap.
    #[error(
        "range {guest_addr}+{size:#x} overlaps the reserved range {reserved_addr}+{reserved_size:#x}"
    )]
    ReservedRange {
        /// Start of the range asked for.
        guest_addr: GuestAddress,
        /// Its size.
        size: u64,
        /// Start of the reserved range.
        reserved_addr: GuestAddress,
        /// Its size.
        reserved_size: u64,
    },
    /// Every slot number the kernel allows is in use.
    #[error("all {limit} memory slots are in use")]
    SlotLimit {
        /// The kernel's limit.
        limit: u32,
    },
    /// What a caller did with a slot's memory failed.
    #[error("slot {slot} at {offset:#x}: {source}")]
    SlotMemoryAccess {
        /// The slot.
        slot: MemSlot,
        /// Where in the slot the access started.
        offset: usize,
        /// What the caller reported.
        source: std::io::Error,
    },
    /// Part of a range of a slot's memory is not mapped read-write in the host (a hole of an
    /// arena, or a read-only sub-mapping), so no slice of it may be handed out.
    #[error("slot {slot}: {offset:#x}+{size:#x} is not all mapped read-write (from {at:#x} on)")]
    SlotMemoryNotMapped {
        /// The slot.
        slot: MemSlot,
        /// Start of the range in the slot.
        offset: usize,
        /// Its length.
        size: usize,
        /// The first offset in the slot that is not mapped read-write.
        at: usize,
    },
    /// The new slot overlaps a live one.
    #[error(
        "slot at {guest_addr} of {size:#x} bytes overlaps slot {slot} at {slot_addr} of {slot_size:#x} bytes"
    )]
    SlotOverlap {
        /// Where the new slot would start.
        guest_addr: GuestAddress,
        /// Its size.
        size: u64,
        /// The live slot it overlaps.
        slot: MemSlot,
        /// Where that slot starts.
        slot_addr: GuestAddress,
        /// Its size.
        slot_size: u64,
    },
    /// A range does not lie inside its slot.
    #[error("range {offset:#x}+{size:#x} is outside slot {slot} of {slot_size:#x} bytes")]
    SlotRange {
        /// The slot.
        slot: MemSlot,
        /// Start of the range in the slot.
        offset: usize,
        /// Its length.
        size: usize,
        /// The slot's size.
        slot_size: u64,
    },
    /// `run` was called again while the guest still waits for the bytes of an MMIO or port
    /// read: KVM would complete the read with whatever the run structure held.
    #[error("the guest's {what} read at {address:#x} was not answered with set_data")]
    UnansweredRead {
        /// "MMIO" or "port".
        what: &'static str,
        /// The guest physical address or the port.
        address: u64,
    },
    /// No live slot has this number.
    #[error("no memory slot {slot}")]
    UnknownSlot {
        /// The slot.
        slot: MemSlot,
    },
    /// Mapping a vCPU's run structure failed.
    #[error("failed to map the run structure of vCPU {id}: {source}")]
    VcpuRunMapping {
        /// The vCPU.
        id: usize,
        /// What `base` answered.
        source: base::mmap::Error,
    },
    /// `set_data` got a different length than the pending read.
    #[error("the pending read is {expected} bytes; {got} were supplied")]
    WrongDataSize {
        /// The access size.
        expected: usize,
        /// The length given.
        got: usize,
    },
    /// A slot of size 0.
    #[error("a memory slot at {guest_addr} cannot be empty")]
    ZeroSize {
        /// Where the slot would start.
        guest_addr: GuestAddress,
    },
}

impl Error {
    /// The errno that best describes this error, for sending it over the wire.
    pub fn errno(&self) -> i32 {
        match self {
            Error::Ioctl { source, .. } | Error::KvmUnavailable { source, .. } => {
                source.raw_os_error().unwrap_or(libc::EIO)
            }
            Error::Region { source, .. } => source.errno(),
            Error::Irqfd { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            Error::IrqChipExists | Error::IrqfdInUse { .. } => libc::EEXIST,
            Error::IrqfdUnknown { .. } => libc::ENOENT,
            Error::IrqChipAfterVcpus { .. } | Error::NoIrqChip { .. } => libc::EINVAL,
            Error::GsiOutOfRange { .. } => libc::ERANGE,
            Error::GuestMemory(_) => libc::EFAULT,
            Error::UnknownSlot { .. } => libc::ENOENT,
            Error::SlotOverlap { .. } | Error::ReservedRange { .. } => libc::EEXIST,
            Error::ReservationUnknown { .. } => libc::ENOENT,
            Error::SlotLimit { .. } => libc::ENOSPC,
            Error::ReadOnlyUnsupported | Error::CacheTypeUnsupported { .. } => libc::ENOTSUP,
            Error::BootRamSlot { .. } => libc::EPERM,
            Error::AddressOverflow { .. } => libc::EOVERFLOW,
            Error::SlotRange { .. } => libc::ERANGE,
            Error::SlotMemoryAccess { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            Error::SlotMemoryNotMapped { .. } => libc::EFAULT,
            Error::ApiVersion { .. } => libc::ENOSYS,
            Error::DirtyLogNotEnabled { .. }
            | Error::NoPendingRead
            | Error::UnansweredRead { .. } => libc::EINVAL,
            Error::DirtyLogBufferTooSmall { .. }
            | Error::NotPageAligned { .. }
            | Error::WrongDataSize { .. }
            | Error::ZeroSize { .. } => libc::EINVAL,
            Error::VcpuRunMapping { source, .. } | Error::DirtyRingMapping { source, .. } => {
                source.errno()
            }
            Error::DirtyRingSize { .. } => libc::EINVAL,
            Error::DirtyRingStuck { .. } => libc::EIO,
            Error::HarvestInProgress => libc::EBUSY,
        }
    }
}

/// Result of the hypervisor crate.
pub type Result<T> = std::result::Result<T, Error>;
