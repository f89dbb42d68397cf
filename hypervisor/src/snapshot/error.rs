// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The errors of writing, checking and restoring snapshots.

use std::path::PathBuf;

use remain::sorted;
use thiserror::Error;
use vm_memory::GuestAddress;

use crate::MemSlot;

/// Errors of snapshot files.
#[sorted]
#[derive(Debug, Error)]
pub enum Error {
    /// A layer's header names another format.
    #[error("{path}: magic {found:02x?} is not a snapshot layer's")]
    BadMagic {
        /// The layer file.
        path: PathBuf,
        /// The first eight bytes found.
        found: [u8; 8],
    },
    /// A layer does not follow the one before it.
    #[error("{path}: layer {sequence} names parent checksum {found:#010x}, but layer {} has {expected:#010x}", sequence.wrapping_sub(1))]
    ChainBroken {
        /// The layer file.
        path: PathBuf,
        /// Its sequence number.
        sequence: u32,
        /// The checksum of the layer before it.
        expected: u32,
        /// The parent checksum it names.
        found: u32,
    },
    /// The directory holds layers already: a new snapshot must not mix with them.
    #[error("{dir} already holds snapshot layers")]
    DirectoryNotEmpty {
        /// The directory.
        dir: PathBuf,
    },
    /// The first layer is not a full one, or a later one is.
    #[error("{path}: layer {sequence} is {kind}, expected {expected}")]
    FirstLayerKind {
        /// The layer file.
        path: PathBuf,
        /// Its sequence number.
        sequence: u32,
        /// What it is.
        kind: &'static str,
        /// What it should be.
        expected: &'static str,
    },
    /// A header's own checksum does not match it.
    #[error("{path}: header checksum {stored:#010x}, computed {computed:#010x}")]
    HeaderChecksum {
        /// The layer file.
        path: PathBuf,
        /// The checksum the header holds.
        stored: u32,
        /// The checksum of its bytes.
        computed: u32,
    },
    /// A file operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// What the system answered.
        source: std::io::Error,
    },
    /// A layer's bytes do not match its checksum.
    #[error("{path}: layer checksum {stored:#010x}, computed {computed:#010x}")]
    LayerChecksum {
        /// The layer file.
        path: PathBuf,
        /// The checksum the trailer holds.
        stored: u32,
        /// The checksum of the bytes.
        computed: u32,
    },
    /// A layer's tables are not well formed (counts past the file, misaligned runs, ...).
    #[error("{path}: {what}")]
    Malformed {
        /// The layer file.
        path: PathBuf,
        /// What is wrong, with the values.
        what: String,
    },
    /// The directory holds no layer.
    #[error("{dir} holds no snapshot layer ({first} is missing)")]
    NoLayers {
        /// The directory.
        dir: PathBuf,
        /// The first layer's file name.
        first: String,
    },
    /// A run of a layer reaches outside its slot, or names a slot the layer does not list.
    #[error("{path}: run of {len:#x} bytes at {offset:#x} in slot {slot} is outside the slot ({slot_size:#x} bytes)")]
    RunOutsideSlot {
        /// The layer file.
        path: PathBuf,
        /// The slot named.
        slot: MemSlot,
        /// Offset of the run in the slot.
        offset: u64,
        /// Its length.
        len: u64,
        /// The slot's size (0 when the layer does not list it).
        slot_size: u64,
    },
    /// The layer's header says a layer is next, but its sequence is not the next one.
    #[error("{path}: sequence {found}, expected {expected}")]
    SequenceMismatch {
        /// The layer file.
        path: PathBuf,
        /// The sequence expected.
        expected: u32,
        /// The sequence found.
        found: u32,
    },
    /// A layer's slot table is not what a slot of the VM is (or the VM lacks it).
    #[error(
        "slot {slot} of the snapshot ({guest_addr}+{size:#x}) is not in the VM as such: {found}"
    )]
    SlotMismatch {
        /// The slot.
        slot: MemSlot,
        /// Where the snapshot has it.
        guest_addr: GuestAddress,
        /// Its size in the snapshot.
        size: u64,
        /// What the VM has instead.
        found: String,
    },
    /// A layer file ends before its header says it does.
    #[error("{path}: truncated: {needed} bytes needed at {offset:#x}, the file has {len:#x}")]
    Truncated {
        /// The layer file.
        path: PathBuf,
        /// Where the missing bytes start.
        offset: u64,
        /// How many were needed.
        needed: u64,
        /// The file's length.
        len: u64,
    },
    /// A layer's version is not one this crate reads.
    #[error("{path}: format version {version}, this crate reads {supported}")]
    UnsupportedVersion {
        /// The layer file.
        path: PathBuf,
        /// The version found.
        version: u32,
        /// The version read.
        supported: u32,
    },
    /// The VM refused an operation.
    #[error("the VM: {0}")]
    Vm(#[from] crate::Error),
}

/// Result of the snapshot module.
pub type Result<T> = std::result::Result<T, Error>;
