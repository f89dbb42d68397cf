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
    /// A layer does not end with the end magic.
    #[error("{path}: end magic {found:02x?} is not a layer's")]
    BadEndMagic {
        /// The layer file.
        path: PathBuf,
        /// The last eight bytes found.
        found: [u8; 8],
    },
    /// A layer's header names another format.
    #[error("{path}: magic {found:02x?} is not a snapshot layer's")]
    BadMagic {
        /// The layer file.
        path: PathBuf,
        /// The first eight bytes found.
        found: [u8; 8],
    },
    /// The VM lists a slot's mappings out of order, overlapping, or past the slot's end: a
    /// `Vm` that is not telling the truth, whose word is not taken for what a layer holds.
    #[error("slot {slot}: the VM's list of its mappings does not hold ({why})")]
    BadSlotMappings {
        /// The slot.
        slot: MemSlot,
        /// What is wrong, with the values.
        why: String,
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
    /// The runs of a layer hold another number of bytes than its header says.
    #[error("{path}: the runs hold {runs:#x} bytes, the header says {header:#x}")]
    DataLengthMismatch {
        /// The layer file.
        path: PathBuf,
        /// What the runs add up to.
        runs: u64,
        /// What the header says.
        header: u64,
    },
    /// The directory holds layers already: a new snapshot must not mix with them.
    #[error("{dir} already holds snapshot layers")]
    DirectoryNotEmpty {
        /// The directory.
        dir: PathBuf,
    },
    /// The tracking of the VMM's own writes to guest memory is off, or was off for a while
    /// since the full layer, so an incremental layer could miss pages the VMM wrote.
    #[error("layer {sequence}: the VMM's writes to guest memory were not all tracked since the full layer")]
    DirtyTrackingOff {
        /// The layer that was to be written.
        sequence: u32,
    },
    /// A slot is listed twice in one layer.
    #[error("{path}: slot {slot} is listed twice")]
    DuplicateSlot {
        /// The layer file.
        path: PathBuf,
        /// The slot.
        slot: MemSlot,
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
    /// A layer names a later layer than one that is missing: the chain has a gap, and the
    /// layers past it would be silently left out.
    #[error("{dir}: layer {found} is there but layer {missing} is not")]
    MissingLayer {
        /// The directory.
        dir: PathBuf,
        /// The first sequence number missing.
        missing: u32,
        /// A later one present.
        found: u32,
    },
    /// The directory holds no layer.
    #[error("{dir} holds no snapshot layer ({first} is missing)")]
    NoLayers {
        /// The directory.
        dir: PathBuf,
        /// The first layer's file name.
        first: String,
    },
    /// A field that must be zero (reserved, or slot flags this version does not know) is not.
    #[error("{path}: {field} is {value:#x}, not zero")]
    NonzeroReserved {
        /// The layer file.
        path: PathBuf,
        /// Which field.
        field: &'static str,
        /// What it holds (the unknown bits, for flags).
        value: u64,
    },
    /// A layer's name is taken by something that is not a regular file (a FIFO, a device, a
    /// directory), which is not read: reading a FIFO would wait for a writer for ever.
    #[error("{path} is not a regular file")]
    NotAFile {
        /// The path.
        path: PathBuf,
    },
    /// A run of a layer is not whole pages.
    #[error("{path}: run {offset:#x}+{len:#x} of slot {slot} is not whole pages")]
    RunNotWholePages {
        /// The layer file.
        path: PathBuf,
        /// The slot.
        slot: MemSlot,
        /// Offset of the run in the slot.
        offset: u64,
        /// Its length.
        len: u64,
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
    /// The VM handed out a slice of another length than the range asked for: a `Vm` that is
    /// not telling the truth, whose memory is not touched.
    #[error("slot {slot}: asked for {asked:#x} bytes at {offset:#x}, the VM handed out {got:#x}")]
    ShortSlice {
        /// The slot.
        slot: MemSlot,
        /// Where in the slot.
        offset: usize,
        /// The bytes asked for.
        asked: usize,
        /// The bytes handed out.
        got: usize,
    },
    /// A layer's header gives sizes whose sum overflows.
    #[error("{path}: the header's sizes overflow")]
    SizesOverflow {
        /// The layer file.
        path: PathBuf,
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
    /// A layer's state is larger than any reader takes: its header is corrupt (or hostile: a
    /// sparse file can claim a terabyte of state and occupy nothing), or a writer was handed
    /// a state its readers would refuse.
    #[error("{path}: state of {len:#x} bytes, at most {max:#x}")]
    StateTooLarge {
        /// The layer file.
        path: PathBuf,
        /// The state length the header gives.
        len: u64,
        /// The most taken.
        max: u64,
    },
    /// More layers than sequence numbers.
    #[error("{dir}: more layers than sequence numbers")]
    TooManyLayers {
        /// The directory.
        dir: PathBuf,
    },
    /// A layer lists more slots than any VM has.
    #[error("{path}: {count} slots, at most {max}")]
    TooManySlots {
        /// The layer file.
        path: PathBuf,
        /// The slot count the header gives.
        count: u32,
        /// The most a layer may list.
        max: u32,
    },
    /// A layer file goes on past the end its header gives.
    #[error("{path}: {extra} bytes past the end the header gives ({end:#x})")]
    TrailingBytes {
        /// The layer file.
        path: PathBuf,
        /// How many bytes are past the end.
        extra: u64,
        /// Where the header says the layer ends.
        end: u64,
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
