// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! [`MemoryTable`]: the frontend's guest memory as a [`GuestMemory`], built from the regions of
//! `SET_MEM_TABLE` (or `ADD_MEM_REG`/`REM_MEM_REG`) and the memfds that came with them, and the
//! translation of the frontend's own virtual addresses (where it put the vrings) into guest
//! addresses.
//!
//! Every region is checked before anything is mapped: a size of 0, an unaligned offset or
//! size, arithmetic that overflows, regions that overlap in guest or frontend address space,
//! and a descriptor that is not a memfd are typed errors. Only memfds are taken because the
//! backend maps them sealed against shrinking ([`base`] adds `F_SEAL_SHRINK`, or finds it set,
//! as QEMU's `memory-backend-memfd` does): a plain file could be truncated by the frontend
//! under the mapping, and the backend's next access would die of SIGBUS.

use std::fs::File;
use std::sync::Arc;

use base::{pagesize, SafeDescriptor, SharedMemory};
use remain::sorted;
use thiserror::Error;
use vm_memory::{GuestAddress, GuestMemory, MemoryRegion};

/// Errors of a memory table.
#[sorted]
#[derive(Debug, Error)]
pub enum Error {
    /// `ADD_MEM_REG` beyond the slots the backend offered.
    #[error("the table already holds {slots} regions, the most it takes")]
    AllSlotsUsed {
        /// The backend's maximum.
        slots: usize,
    },
    /// The number of descriptors does not match the number of regions.
    #[error("{regions} regions came with {files} descriptors")]
    FileCount {
        /// Regions in the message.
        regions: usize,
        /// Descriptors attached.
        files: usize,
    },
    /// Building the guest memory failed (a region past its memfd's end, say).
    #[error("region at guest {addr:#x}: {source}")]
    Map {
        /// The region's guest address.
        addr: u64,
        /// What `vm_memory` said.
        source: vm_memory::Error,
    },
    /// `REM_MEM_REG` of a region the table does not hold.
    #[error("no region of {size:#x} bytes at guest {addr:#x} to remove")]
    NoSuchRegion {
        /// The guest address asked for.
        addr: u64,
        /// The size asked for.
        size: u64,
    },
    /// A descriptor that is not a memfd.
    #[error("region at guest {addr:#x}: its descriptor is not a memfd: {source}")]
    NotMemfd {
        /// The region's guest address.
        addr: u64,
        /// What `base` said.
        source: base::shm::Error,
    },
    /// Two regions overlap, in guest or in frontend address space.
    #[error("regions at guest {first:#x} and {second:#x} overlap in {space} address space")]
    Overlap {
        /// Which space.
        space: &'static str,
        /// One region's guest address.
        first: u64,
        /// The other's.
        second: u64,
    },
    /// A region whose end does not fit in 64 bits.
    #[error("region at guest {addr:#x}: {what} {start:#x} + size {size:#x} overflows")]
    RegionOverflow {
        /// The region's guest address.
        addr: u64,
        /// Which start.
        what: &'static str,
        /// That start.
        start: u64,
        /// The size.
        size: u64,
    },
    /// A size, guest address or offset that is not a multiple of the page size.
    #[error(
        "region at guest {addr:#x}: {what} {value:#x} is not a multiple of the page size {page:#x}"
    )]
    Unaligned {
        /// The region's guest address.
        addr: u64,
        /// Which value.
        what: &'static str,
        /// The value.
        value: u64,
        /// The page size.
        page: u64,
    },
    /// A frontend address that no region covers, or a range that leaves its region.
    #[error("frontend address {addr:#x} (+{len:#x}) is not inside one region")]
    Untranslatable {
        /// The frontend's address.
        addr: u64,
        /// The length that must fit.
        len: u64,
    },
    /// A region of size 0.
    #[error("region at guest {addr:#x} has size 0")]
    ZeroSize {
        /// The region's guest address.
        addr: u64,
    },
}

/// Result of memory-table operations.
pub type Result<T> = std::result::Result<T, Error>;

/// One region as the frontend described it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegionDesc {
    /// Guest physical address of the first byte.
    pub guest_addr: u64,
    /// Size in bytes.
    pub size: u64,
    /// Where the frontend mapped it in its own address space.
    pub user_addr: u64,
    /// Where in the memfd the region starts.
    pub mmap_offset: u64,
}

#[derive(Debug)]
struct Region {
    desc: RegionDesc,
    shm: Arc<SharedMemory>,
}

/// The frontend's memory: the regions, each with its memfd, and the [`GuestMemory`] mapped
/// from them.
#[derive(Debug)]
pub struct MemoryTable {
    regions: Vec<Region>,
    mem: GuestMemory,
}

impl MemoryTable {
    /// Builds the table of `SET_MEM_TABLE`: `regions[i]` is backed by `files[i]`.
    pub fn new(regions: &[RegionDesc], files: Vec<File>) -> Result<MemoryTable> {
        if regions.len() != files.len() {
            return Err(Error::FileCount {
                regions: regions.len(),
                files: files.len(),
            });
        }
        let mut checked = Vec::with_capacity(regions.len());
        for (desc, file) in regions.iter().zip(files) {
            checked.push(Region::new(*desc, file)?);
        }
        MemoryTable::from_regions(checked)
    }

    fn from_regions(mut regions: Vec<Region>) -> Result<MemoryTable> {
        regions.sort_by_key(|r| r.desc.guest_addr);
        let by_guest: Vec<&Region> = regions.iter().collect();
        check_disjoint(&by_guest, "guest", |d| d.guest_addr)?;
        let mut by_user: Vec<&Region> = regions.iter().collect();
        by_user.sort_by_key(|r| r.desc.user_addr);
        check_disjoint(&by_user, "frontend", |d| d.user_addr)?;
        let mut mapped = Vec::with_capacity(regions.len());
        for r in &regions {
            let d = r.desc;
            let region = MemoryRegion::new_from_shm(
                d.size,
                GuestAddress(d.guest_addr),
                d.mmap_offset,
                r.shm.clone(),
            )
            .map_err(|source| Error::Map {
                addr: d.guest_addr,
                source,
            })?;
            mapped.push(region);
        }
        let mem = GuestMemory::from_regions(mapped).map_err(|source| Error::Map {
            addr: regions.first().map_or(0, |r| r.desc.guest_addr),
            source,
        })?;
        Ok(MemoryTable { regions, mem })
    }

    /// This table with one more region (`ADD_MEM_REG`); at most `max_slots` regions.
    pub fn with_region(&self, desc: RegionDesc, file: File, max_slots: usize) -> Result<Self> {
        if self.regions.len() >= max_slots {
            return Err(Error::AllSlotsUsed { slots: max_slots });
        }
        let mut regions = self.clone_regions();
        regions.push(Region::new(desc, file)?);
        MemoryTable::from_regions(regions)
    }

    /// This table without the region of `size` bytes at `guest_addr` (`REM_MEM_REG`); `None`
    /// when it was the last one.
    pub fn without_region(&self, guest_addr: u64, size: u64) -> Result<Option<Self>> {
        let mut regions = self.clone_regions();
        let before = regions.len();
        regions.retain(|r| !(r.desc.guest_addr == guest_addr && r.desc.size == size));
        if regions.len() == before {
            return Err(Error::NoSuchRegion {
                addr: guest_addr,
                size,
            });
        }
        if regions.is_empty() {
            return Ok(None);
        }
        MemoryTable::from_regions(regions).map(Some)
    }

    fn clone_regions(&self) -> Vec<Region> {
        self.regions
            .iter()
            .map(|r| Region {
                desc: r.desc,
                shm: r.shm.clone(),
            })
            .collect()
    }

    /// The guest memory.
    pub fn memory(&self) -> &GuestMemory {
        &self.mem
    }

    /// The regions, sorted by guest address.
    pub fn regions(&self) -> impl Iterator<Item = RegionDesc> + '_ {
        self.regions.iter().map(|r| r.desc)
    }

    /// The guest address of the frontend's address `user_addr`, where `len` bytes from it
    /// lie in one region.
    pub fn translate(&self, user_addr: u64, len: u64) -> Result<GuestAddress> {
        let region = self
            .regions
            .iter()
            .find(|r| user_addr >= r.desc.user_addr && user_addr - r.desc.user_addr < r.desc.size)
            .ok_or_else(|| bad_range(user_addr, len))?;
        let offset = user_addr - region.desc.user_addr;
        if len > region.desc.size - offset {
            return Err(bad_range(user_addr, len));
        }
        // The region's guest end was checked not to overflow.
        Ok(GuestAddress(region.desc.guest_addr + offset))
    }
}

impl Region {
    fn new(desc: RegionDesc, file: File) -> Result<Region> {
        let addr = desc.guest_addr;
        if desc.size == 0 {
            return Err(Error::ZeroSize { addr });
        }
        let page = pagesize() as u64;
        for (what, value) in [
            ("size", desc.size),
            ("guest address", desc.guest_addr),
            ("mmap offset", desc.mmap_offset),
        ] {
            if !value.is_multiple_of(page) {
                return Err(Error::Unaligned {
                    addr,
                    what,
                    value,
                    page,
                });
            }
        }
        for (what, start) in [
            ("guest address", desc.guest_addr),
            ("frontend address", desc.user_addr),
            ("mmap offset", desc.mmap_offset),
        ] {
            if start.checked_add(desc.size).is_none() {
                return Err(Error::RegionOverflow {
                    addr,
                    what,
                    start,
                    size: desc.size,
                });
            }
        }
        let shm = SharedMemory::from_safe_descriptor(SafeDescriptor::from(file))
            .map_err(|source| Error::NotMemfd { addr, source })?;
        Ok(Region {
            desc,
            shm: Arc::new(shm),
        })
    }
}

/// `regions` sorted by `start`: each must end before the next begins (ends were checked not
/// to overflow).
fn check_disjoint(
    regions: &[&Region],
    space: &'static str,
    start: fn(&RegionDesc) -> u64,
) -> Result<()> {
    for pair in regions.windows(2) {
        let (a, b) = (&pair[0].desc, &pair[1].desc);
        if start(a) + a.size > start(b) {
            return Err(Error::Overlap {
                space,
                first: a.guest_addr,
                second: b.guest_addr,
            });
        }
    }
    Ok(())
}

fn bad_range(addr: u64, len: u64) -> Error {
    Error::Untranslatable { addr, len }
}
