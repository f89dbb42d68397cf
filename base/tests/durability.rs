// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! After a write through a shared file mapping and msync, the bytes are in the file as seen
//! through a separate descriptor opened with O_DIRECT, which bypasses the page cache.

use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, OpenOptionsExt};

use base::{MappedRegion, MemoryMappingArena, MemoryMappingBuilder, VolatileMemory};

const LEN: usize = 64 << 10;

/// Opens `path` with O_DIRECT, or says why the filesystem does not allow it.
fn open_direct(path: &std::path::Path) -> Result<std::fs::File, String> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .map_err(|e| format!("O_DIRECT open of {} failed: {e}", path.display()))
}

/// Reads `LEN` bytes at offset 0 with O_DIRECT into a page-aligned buffer (an anonymous
/// mapping of our own, which O_DIRECT's alignment rules accept).
fn read_direct(file: &std::fs::File) -> Result<Vec<u8>, String> {
    let buf = MemoryMappingBuilder::new(LEN).build().unwrap();
    let slice = buf.get_slice(0, LEN).unwrap();
    // SAFETY: `slice` covers `LEN` bytes of our own live mapping; pread writes at most that.
    let n = unsafe {
        libc::pread(
            std::os::fd::AsRawFd::as_raw_fd(file),
            slice.as_ptr() as _,
            LEN,
            0,
        )
    };
    if n < 0 {
        return Err(format!(
            "O_DIRECT read failed: {}",
            std::io::Error::last_os_error()
        ));
    }
    let mut out = vec![0u8; n as usize];
    slice.copy_to(&mut out);
    Ok(out)
}

fn check(through_arena: bool) {
    // The work tree's target directory is on a real disk filesystem; /tmp may be tmpfs.
    let dir = std::env::var_os("CARGO_TARGET_TMPDIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let temp = vmm_sys_util::tempfile::TempFile::new_in(&dir).unwrap();
    let path = temp.as_path().to_owned();
    temp.as_file().set_len(LEN as u64).unwrap();
    let direct = match open_direct(&path) {
        Ok(f) => f,
        Err(why) => {
            println!("SKIP durability: {why} (the filesystem does not support O_DIRECT)");
            return;
        }
    };
    if let Err(why) = read_direct(&direct) {
        println!("SKIP durability: {why}");
        return;
    }
    let pattern: Vec<u8> = (0..LEN).map(|i| (i % 251) as u8 ^ 0xa5).collect();
    if through_arena {
        let mut arena = MemoryMappingArena::new(2 * LEN).unwrap();
        arena.add_fd(LEN, LEN, temp.as_file()).unwrap();
        arena.get_slice(LEN, LEN).unwrap().copy_from(&pattern);
        let region: &dyn MappedRegion = &arena;
        region.msync(LEN, LEN).unwrap();
    } else {
        let m = MemoryMappingBuilder::new(LEN)
            .from_file(temp.as_file())
            .build()
            .unwrap();
        m.write_slice(&pattern, 0).unwrap();
        m.msync().unwrap();
    }
    let on_disk = read_direct(&direct).unwrap();
    assert_eq!(on_disk.len(), LEN);
    assert!(
        on_disk == pattern,
        "O_DIRECT read does not see the msynced bytes"
    );
    // And a buffered read agrees.
    let mut buffered = vec![0u8; LEN];
    temp.as_file().read_exact_at(&mut buffered, 0).unwrap();
    assert!(buffered == pattern);
}

#[test]
fn msync_of_a_mapping_reaches_the_disk() {
    check(false);
}

#[test]
fn msync_of_an_arena_range_reaches_the_disk() {
    check(true);
}
