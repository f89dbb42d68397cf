// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A hostile snapshot file: the input's first byte says whether to reseal it (recompute the
//! header and layer checksums, so that the tables themselves are tested rather than the
//! checksums), the rest is the bytes of layer 0. `hypervisor::snapshot::verify` must answer
//! with a summary that agrees with itself or with a typed error, and never panic or hang.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use hypervisor::snapshot::{self, layer_name};

/// Rewrites the header checksum (bytes 52..56 of the 64-byte header) and the layer checksum
/// (the first 4 bytes of the 16-byte trailer, over everything before it) of `bytes`.
pub fn reseal(bytes: &mut [u8]) {
    if bytes.len() >= 64 {
        bytes[52..56].fill(0);
        let header = crc32fast::hash(&bytes[..64]);
        bytes[52..56].copy_from_slice(&header.to_le_bytes());
    }
    if bytes.len() >= 64 + 16 {
        let end = bytes.len() - 16;
        let layer = crc32fast::hash(&bytes[..end]);
        bytes[end..end + 4].copy_from_slice(&layer.to_le_bytes());
    }
}

/// A directory of its own for each input.
fn scratch() -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    std::env::temp_dir().join(format!(
        "vmm-fuzz-snapshot-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
}

pub fn run(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let mut layer = rest.to_vec();
    if flags & 1 != 0 {
        reseal(&mut layer);
    }
    let dir = scratch();
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(layer_name(0)), &layer).unwrap();
    let result = snapshot::verify(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    if let Ok(layers) = result {
        // A layer that passed is whole and agrees with itself.
        assert_eq!(layers.len(), 1);
        let l = &layers[0];
        assert!(l.full && l.sequence == 0);
        assert_eq!(l.file_bytes, layer.len() as u64);
        assert_eq!(l.data_bytes, l.pages * 4096);
        assert!(l.data_bytes < l.file_bytes);
        assert!(l.runs <= l.pages);
    }
}
