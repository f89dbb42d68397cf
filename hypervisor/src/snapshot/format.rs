// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The on-disk records of a snapshot layer, all little-endian, and their checks.

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// The first eight bytes of every layer file.
pub const MAGIC: [u8; 8] = *b"VMMSNAP\0";
/// The last eight bytes of every layer file.
pub const END_MAGIC: [u8; 8] = *b"VMSNPEND";
/// The version this crate writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// `kind` of a layer holding every page of every slot it lists.
pub const KIND_FULL: u32 = 0;
/// `kind` of a layer holding the pages dirtied since its parent.
pub const KIND_INCREMENTAL: u32 = 1;
/// `SlotRecord::flags`: the guest may only read the slot.
pub const SLOT_READ_ONLY: u32 = 1;
/// `SlotRecord::flags`: the slot is a region of boot RAM.
pub const SLOT_BOOT_RAM: u32 = 2;
/// More slots than any KVM allows: a header asking for more is corrupt.
pub const MAX_SLOTS: u32 = 1 << 16;
/// The largest state a layer may carry (the caller's vCPU and device state): a reader
/// allocates it whole.
pub const MAX_STATE_LEN: u64 = 256 << 20;

/// The fixed header at the start of a layer.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct Header {
    pub magic: [u8; 8],
    pub version: U32,
    pub kind: U32,
    pub sequence: U32,
    pub slot_count: U32,
    pub run_count: U64,
    pub state_len: U64,
    pub data_len: U64,
    /// The `layer_checksum` of the layer this one follows (0 for a full layer).
    pub parent_checksum: U32,
    /// CRC-32 of this header with this field zero.
    pub header_checksum: U32,
    pub reserved: [u8; 8],
}

/// One slot the layer covers.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct SlotRecord {
    pub slot: U32,
    pub flags: U32,
    pub guest_addr: U64,
    pub size: U64,
}

/// One run of pages whose bytes follow in the data section, in run order.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct RunRecord {
    pub slot: U32,
    pub reserved: U32,
    pub offset: U64,
    pub len: U64,
}

/// The end of a layer.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct Trailer {
    /// CRC-32 of every byte of the layer before the trailer.
    pub layer_checksum: U32,
    pub reserved: U32,
    pub end_magic: [u8; 8],
}

impl Header {
    /// The CRC-32 of the header with `header_checksum` taken as zero.
    pub fn checksum(&self) -> u32 {
        let mut h = *self;
        h.header_checksum = U32::new(0);
        crc32fast::hash(h.as_bytes())
    }
}

/// The file name of layer `sequence` in a snapshot directory.
pub fn layer_name(sequence: u32) -> String {
    format!("layer-{sequence:05}.vmsnap")
}

/// The sequence number of a layer's file name: `Some(n)` only for exactly
/// [`layer_name`]`(n)`, so that other names that look alike are never taken for layers.
pub(crate) fn layer_sequence(name: &std::ffi::OsStr) -> Option<u32> {
    let name = name.to_str()?;
    let digits = name.strip_prefix("layer-")?.strip_suffix(".vmsnap")?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let sequence = digits.parse().ok()?;
    (layer_name(sequence) == name).then_some(sequence)
}

/// The layers in `dir`, by sequence number, in no order; the names' entries are not opened.
pub(crate) fn layers_in(dir: &std::path::Path) -> std::io::Result<Vec<u32>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        if let Some(sequence) = layer_sequence(&entry?.file_name()) {
            found.push(sequence);
        }
    }
    Ok(found)
}

const _: () = {
    assert!(std::mem::size_of::<Header>() == 64);
    assert!(std::mem::size_of::<SlotRecord>() == 24);
    assert!(std::mem::size_of::<RunRecord>() == 24);
    assert!(std::mem::size_of::<Trailer>() == 16);
};
