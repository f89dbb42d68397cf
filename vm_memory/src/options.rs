// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! How a region is made: [`MemoryRegionOptions`] and what they carry.

use std::fs::File;
use std::sync::Arc;

/// What a region is for. Hypervisors may treat some kinds specially; access is the same.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MemoryRegionPurpose {
    /// Ordinary guest RAM.
    #[default]
    GuestMemoryRegion,
    /// Firmware image (BIOS) memory.
    Bios,
    /// Memory reserved for protected-VM firmware.
    ProtectedFirmwareRegion,
    /// A bounce-buffer region for devices that cannot reach all of RAM.
    StaticSwiotlbRegion,
}

/// A caller's file that backs a region instead of the RAM memfd. It is mapped shared, so
/// guest writes reach the file (after [`GuestMemory::msync_range`](crate::GuestMemory::msync_range)
/// they are durable).
///
/// The file may be a regular file, a memfd, a block device or a character device that can be
/// mapped (`/dev/zero` at offset 0, a DAX device). A regular file, memfd or block device must
/// reach the region's end when the region is made, and so must a character device that
/// reports a size in sysfs. A memfd that allows seals is then sealed against shrinking. A
/// regular file (or a memfd or tmpfs file that refuses seals) cannot be: if anyone, this
/// process included (through this `Arc<File>` or [`GuestMemory::shm_region`]), truncates it
/// below the region's end, the VMM's next access to a page past the new end raises SIGBUS
/// (the kernel's rule for every shared file mapping). Give guest memory only files that
/// nobody may truncate.
///
/// [`GuestMemory::shm_region`]: crate::GuestMemory::shm_region
#[derive(Clone, Debug)]
pub struct FileBackedMapping {
    /// The file, opened read-write.
    pub file: Arc<File>,
    /// Where in the file the region starts; page-aligned.
    pub offset: u64,
}

/// How one region is made.
#[derive(Clone, Debug, Default)]
pub struct MemoryRegionOptions {
    /// What the region is for.
    pub purpose: MemoryRegionPurpose,
    /// Host alignment of the mapping (a power of two; 0 means a page). A 2 MiB alignment
    /// lets transparent huge pages back the region.
    pub align: u64,
    /// Ask the kernel for transparent huge pages (`MADV_HUGEPAGE`).
    pub hugepages: bool,
    /// Back the region with this file instead of the RAM memfd.
    pub file_backed: Option<FileBackedMapping>,
}

impl MemoryRegionOptions {
    /// Plain RAM, page-aligned, no huge page advice.
    pub fn new() -> MemoryRegionOptions {
        MemoryRegionOptions::default()
    }

    /// Sets the purpose.
    pub fn purpose(mut self, purpose: MemoryRegionPurpose) -> MemoryRegionOptions {
        self.purpose = purpose;
        self
    }

    /// Sets the host alignment.
    pub fn align(mut self, align: u64) -> MemoryRegionOptions {
        self.align = align;
        self
    }

    /// Asks for transparent huge pages.
    pub fn hugepages(mut self, hugepages: bool) -> MemoryRegionOptions {
        self.hugepages = hugepages;
        self
    }

    /// Backs the region with `file` from `offset`.
    pub fn file_backed(mut self, file: Arc<File>, offset: u64) -> MemoryRegionOptions {
        self.file_backed = Some(FileBackedMapping { file, offset });
        self
    }
}
