// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! [`DirtyLog`]: the frontend's dirty-page log (`VHOST_USER_PROTOCOL_F_LOG_SHMFD`), in which
//! the backend marks every guest page it writes while `VHOST_F_LOG_ALL` is on, so that the
//! frontend's live migration copies it again.
//!
//! The log is a bitmap shared with the frontend: bit `p % 8` of byte `p / 8` stands for the
//! 4 KiB guest page `p` (the protocol's page size, whatever the host's is). The frontend
//! clears bytes while the backend sets bits, so every update is an atomic OR of one byte.

use std::fs::File;
use std::sync::atomic::{AtomicU8, Ordering};

use base::{MemoryMapping, MemoryMappingBuilder, SafeDescriptor, SharedMemory};
use remain::sorted;
use thiserror::Error;

/// The page size of the log's bitmap, fixed by the vhost-user protocol.
pub const LOG_PAGE_SIZE: u64 = 0x1000;

/// Errors of the dirty log.
#[sorted]
#[derive(Debug, Error)]
pub enum Error {
    /// Mapping the log failed (an area past the memfd's end, say).
    #[error("cannot map the log of {size:#x} bytes at offset {offset:#x}: {source}")]
    Map {
        /// The size asked for.
        size: u64,
        /// The offset asked for.
        offset: u64,
        /// What `base` said.
        source: base::mmap::Error,
    },
    /// The log's descriptor is not a memfd (which the backend keeps sealed against shrinking,
    /// so that the frontend cannot truncate it under the mapping).
    #[error("the log's descriptor is not a memfd: {0}")]
    NotMemfd(#[source] base::shm::Error),
    /// The memfd cannot be sealed against shrinking.
    #[error("the log's memfd is not sealed against shrinking and refuses the seal")]
    NotSealable,
    /// A log of size 0, or larger than the address space.
    #[error("a log of {size:#x} bytes cannot be mapped")]
    Size {
        /// The size asked for.
        size: u64,
    },
}

/// Result of dirty-log operations.
pub type Result<T> = std::result::Result<T, Error>;

/// The frontend's dirty-page bitmap, mapped.
#[derive(Debug)]
pub struct DirtyLog {
    mapping: MemoryMapping,
}

impl DirtyLog {
    /// Maps `size` bytes of the log memfd `file` from `offset` (`SET_LOG_BASE`).
    pub fn new(file: File, size: u64, offset: u64) -> Result<DirtyLog> {
        let len = usize::try_from(size)
            .ok()
            .filter(|&l| l > 0)
            .ok_or(Error::Size { size })?;
        let shm = SharedMemory::from_safe_descriptor(SafeDescriptor::from(file))
            .map_err(Error::NotMemfd)?;
        // `base` refuses an area past the memfd's end, and seals a memfd that allows it.
        let mapping = MemoryMappingBuilder::new(len)
            .from_descriptor(&shm)
            .offset(offset)
            .build()
            .map_err(|source| Error::Map {
                size,
                offset,
                source,
            })?;
        let sealed = shm.get_seals().is_ok_and(|s| s.shrink_seal());
        if !sealed {
            return Err(Error::NotSealable);
        }
        Ok(DirtyLog { mapping })
    }

    /// The bytes of the bitmap.
    pub fn size(&self) -> usize {
        self.mapping.size()
    }

    /// Marks every page that `len` bytes from guest address `addr` touch. Pages past the
    /// log's end are not marked (the frontend sized the log for its memory, so a page past it
    /// is not guest memory it migrates); the answer says how many pages were.
    pub fn mark(&self, addr: u64, len: u64) -> u64 {
        if len == 0 {
            return 0;
        }
        let first = addr / LOG_PAGE_SIZE;
        let last = addr.saturating_add(len - 1) / LOG_PAGE_SIZE;
        let mut marked = 0;
        for page in first..=last {
            let Ok(byte) = usize::try_from(page / 8) else {
                break;
            };
            if byte >= self.mapping.size() {
                break;
            }
            // SAFETY: `byte` is below the mapping's size, and the mapping (read-write, shared)
            // lives as long as `self`; AtomicU8 has the alignment of u8. The frontend changes
            // these bytes only atomically too, and no Rust reference to them exists elsewhere.
            let cell = unsafe { AtomicU8::from_ptr(self.mapping.as_ptr().add(byte)) };
            cell.fetch_or(1 << (page % 8), Ordering::SeqCst);
            marked += 1;
        }
        marked
    }
}
