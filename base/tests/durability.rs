// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! msync makes writes through a mapping durable: the file's dirty pages, counted with
//! `cachestat(2)`, are more than 0 after the writes and 0 after the msync, while a control
//! file written the same way without msync stays dirty. (Reading the file back proves nothing
//! here: a second descriptor shares the page cache, and an O_DIRECT read makes the kernel
//! write dirty pages back first.)

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;

use base::page_cache::{cachestat, Error as CacheError};
use base::{MappedRegion, MemoryMappingArena, MemoryMappingBuilder, VolatileMemory};

const LEN: usize = 64 << 10;

/// A file of `LEN` bytes on the disk filesystem of the build directory (/tmp may be tmpfs,
/// whose pages have no storage to be written back to), or why there is none to test on.
fn disk_file() -> Result<File, String> {
    let dir = std::env::var_os("CARGO_TARGET_TMPDIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let file = vmm_sys_util::tempfile::TempFile::new_in(&dir)
        .unwrap()
        .into_file();
    file.set_len(LEN as u64).unwrap();
    match cachestat(file.as_fd(), 0, 0) {
        Ok(_) => {}
        Err(CacheError::Unsupported) => {
            return Err("this kernel has no cachestat(2) (Linux 6.5+)".to_owned())
        }
        Err(e) => panic!("{e}"),
    }
    if !base::page_cache::has_writeback(file.as_fd()).unwrap() {
        return Err(format!(
            "{} is tmpfs, which has no writeback",
            dir.display()
        ));
    }
    Ok(file)
}

fn dirty(file: &File) -> u64 {
    let stat = cachestat(file.as_fd(), 0, 0).unwrap();
    stat.dirty + stat.writeback
}

/// Writes a pattern into `file` and `control` through `write`, msyncs `file` only with
/// `msync`, and checks the dirty counts and the bytes.
fn check(name: &str, write: impl Fn(&File, &[u8]) -> Box<dyn Fn()>) {
    let (file, control) = match (disk_file(), disk_file()) {
        (Ok(f), Ok(c)) => (f, c),
        (Err(why), _) | (_, Err(why)) => {
            println!("SKIP {name}: {why}");
            return;
        }
    };
    let pattern: Vec<u8> = (0..LEN).map(|i| (i % 251) as u8 ^ 0xa5).collect();
    let msync = write(&file, &pattern);
    let _no_msync = write(&control, &pattern);
    // The control that makes the check able to fail: writes through a shared mapping leave
    // dirty pages that only writeback clears.
    assert!(dirty(&file) > 0, "{name}: no dirty pages after writing");
    assert!(dirty(&control) > 0, "{name}: no dirty pages after writing");
    msync();
    assert_eq!(dirty(&file), 0, "{name}: pages still dirty after msync");
    assert!(
        dirty(&control) > 0,
        "{name}: the control became clean without msync: the check proves nothing here"
    );
    let mut back = vec![0u8; LEN];
    file.read_exact_at(&mut back, 0).unwrap();
    assert!(back == pattern, "{name}: the file holds other bytes");
}

#[test]
fn msync_of_a_mapping_makes_its_pages_clean() {
    check("mapping", |file, pattern| {
        let m = MemoryMappingBuilder::new(LEN)
            .from_file(file)
            .build()
            .unwrap();
        m.write_slice(pattern, 0).unwrap();
        Box::new(move || m.msync().unwrap())
    });
}

#[test]
fn msync_of_a_region_range_makes_its_pages_clean() {
    check("region range", |file, pattern| {
        let m = MemoryMappingBuilder::new(LEN)
            .from_file(file)
            .build()
            .unwrap();
        m.write_slice(pattern, 0).unwrap();
        Box::new(move || (&m as &dyn MappedRegion).msync(0, LEN).unwrap())
    });
}

#[test]
fn msync_of_an_arena_range_makes_its_pages_clean() {
    check("arena", |file, pattern| {
        let mut arena = MemoryMappingArena::new(2 * LEN).unwrap();
        arena.add_fd(LEN, LEN, file).unwrap();
        arena.get_slice(LEN, LEN).unwrap().copy_from(pattern);
        Box::new(move || (&arena as &dyn MappedRegion).msync(LEN, LEN).unwrap())
    });
}
