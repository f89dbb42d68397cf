// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Full and incremental snapshots of a VM's logged memory, in a directory of layer files.
//!
//! [`SnapshotWriter`] writes layer 0, a full layer (every page of every slot that logs dirty
//! pages, where the slot maps it read-write: an arena's holes and read-only sub-mappings hold
//! nothing of the guest's), then incremental layers of the pages dirtied since the layer before, taken from
//! a [`DirtyHarvest`](crate::DirtyHarvest) that is committed only once the layer is written.
//! [`restore`] applies the chain into a fresh VM of the same slots; [`verify`] checks it
//! without one. Each layer also carries the caller's own state (vCPU registers, devices) as
//! opaque bytes.
//!
//! # Format, version 1
//!
//! Layer `n` is the file `layer-NNNNN.vmsnap` (`n` in five digits). All integers are
//! little-endian. A layer is, in order:
//!
//! | part | bytes | what |
//! | --- | --- | --- |
//! | header | 64 | magic `VMMSNAP\0`; version (u32, 1); kind (u32: 0 full, 1 incremental); sequence (u32, `n`); slot count (u32); run count (u64); state length (u64); data length (u64); the parent's layer checksum (u32, 0 for layer 0); the header's CRC-32 with this field zero (u32); 8 reserved bytes |
//! | slots | 24 each | slot number (u32); flags (u32: 1 read-only, 2 boot RAM); guest address (u64); size (u64) |
//! | runs | 24 each | slot number (u32); reserved (u32); offset in the slot (u64); length (u64), whole pages inside a listed slot |
//! | state | state length | the caller's bytes |
//! | data | data length | the runs' bytes, in run order |
//! | trailer | 16 | the layer checksum: CRC-32 of every byte before the trailer (u32); reserved (u32); `VMSNPEND` |
//!
//! Reserved fields and unknown slot flags must be zero, and the state is at most
//! 256 MiB. A reader refuses, each with its own [`Error`]: another magic, another version, a
//! header whose checksum or sizes do not hold, a file shorter or longer than its header says
//! (or not a regular file), a slot listed twice, runs outside their slots or not whole pages,
//! runs that do not add up to the data length, a layer whose bytes fail its checksum, a layer
//! out of sequence or not naming its parent's checksum, a chain with a gap (a later layer
//! present after a missing one), and a VM whose slots are not the newest layer's.
//!
//! # Consistency
//!
//! A layer is a consistent image only if nothing writes guest memory while it is written:
//! stop the vCPUs (after they complete any pending I/O, see `KvmVcpu::complete_io`) and the
//! devices first. Dirty pages are collected (and re-armed) before they are copied, so a
//! write that races a layer is in the next one; and a layer's checksum is taken of the bytes
//! in its file, read back as they are written, so a page that changes while it is copied
//! still makes a layer that verifies. The checksums catch corruption, not a hostile writer:
//! anyone who may write the directory can rewrite a layer and its checksums alike (a layer is
//! made as a new file of the writer's own, never through a link or a FIFO left at its name).
//! The memory a layer is read from or restored into is only ever what the `Vm` hands out, of
//! the length asked for (a `Vm` that hands out less gets a typed refusal).

mod error;
mod format;
mod read;
mod write;

use std::path::PathBuf;
use std::time::Duration;

pub use error::{Error, Result};
pub use format::{layer_name, FORMAT_VERSION};
pub use read::{restore, verify, Restored};
pub use write::SnapshotWriter;

/// What one layer holds, and what writing or reading it cost.
#[derive(Clone, Debug)]
pub struct LayerSummary {
    /// The layer's file.
    pub path: PathBuf,
    /// Its sequence number (0 is the full layer).
    pub sequence: u32,
    /// Whether it is the full layer.
    pub full: bool,
    /// Runs of pages it holds.
    pub runs: u64,
    /// Pages it holds.
    pub pages: u64,
    /// Bytes of page data.
    pub data_bytes: u64,
    /// Bytes of the whole file.
    pub file_bytes: u64,
    /// Its layer checksum, which the next layer names as its parent.
    pub checksum: u32,
    /// Time spent collecting the dirty pages (0 for reads).
    pub harvest_time: Duration,
    /// Time spent moving page data (copying out of, or into, guest memory with the file I/O).
    pub copy_time: Duration,
    /// Time spent making the layer durable (0 when not asked, and for reads).
    pub sync_time: Duration,
    /// The whole layer's time.
    pub total_time: Duration,
}
