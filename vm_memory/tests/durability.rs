// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `msync_range` makes guest writes to a file-backed region durable: the file's dirty pages,
//! counted with `cachestat(2)`, are more than 0 after the writes and 0 after the msync, while
//! a control region written the same way and not msynced stays dirty.

use std::fs::File;
use std::os::fd::AsFd;
use std::sync::Arc;

use base::page_cache::{cachestat, Error as CacheError};
use vm_memory::{GuestAddress, GuestMemory, MemoryRegionOptions};

const P: u64 = 4096;
const LEN: u64 = 16 * P;

/// A file on the build directory's disk filesystem, or why cachestat cannot judge one.
fn disk_file() -> Result<Arc<File>, String> {
    let dir = std::env::var_os("CARGO_TARGET_TMPDIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let file = vmm_sys_util::tempfile::TempFile::new_in(&dir)
        .unwrap()
        .into_file();
    file.set_len(LEN).unwrap();
    match cachestat(file.as_fd(), 0, 0) {
        Ok(_) => {}
        Err(CacheError::Unsupported) => return Err("this kernel has no cachestat(2)".to_owned()),
        Err(e) => panic!("{e}"),
    }
    if !base::page_cache::has_writeback(file.as_fd()).unwrap() {
        return Err(format!(
            "{} is tmpfs, which has no writeback",
            dir.display()
        ));
    }
    Ok(Arc::new(file))
}

fn dirty(file: &File) -> u64 {
    let stat = cachestat(file.as_fd(), 0, 0).unwrap();
    stat.dirty + stat.writeback
}

#[test]
fn msync_range_makes_guest_writes_durable() {
    let (file, control) = match (disk_file(), disk_file()) {
        (Ok(f), Ok(c)) => (f, c),
        (Err(why), _) | (_, Err(why)) => {
            println!("SKIP msync_range durability: {why}");
            return;
        }
    };
    // RAM, then the file contiguous with it, then the control file after a hole.
    let mem = GuestMemory::new_with_options(&[
        (GuestAddress(0), 4 * P, MemoryRegionOptions::new()),
        (
            GuestAddress(4 * P),
            LEN,
            MemoryRegionOptions::new().file_backed(file.clone(), 0),
        ),
        (
            GuestAddress(0x100_0000),
            LEN,
            MemoryRegionOptions::new().file_backed(control.clone(), 0),
        ),
    ])
    .unwrap();
    let pattern: Vec<u8> = (0..LEN as usize).map(|i| (i % 253) as u8).collect();
    mem.write_all_at_addr(&pattern, GuestAddress(4 * P))
        .unwrap();
    mem.write_all_at_addr(&pattern, GuestAddress(0x100_0000))
        .unwrap();
    assert!(
        dirty(&file) > 0 && dirty(&control) > 0,
        "writes left no dirty pages"
    );
    // A range that starts in RAM and runs into the file, as a guest's flush of both would.
    mem.msync_range(GuestAddress(0), 4 * P + LEN).unwrap();
    assert_eq!(dirty(&file), 0, "pages still dirty after msync_range");
    assert!(
        dirty(&control) > 0,
        "the control became clean without msync"
    );
}
