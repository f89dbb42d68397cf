// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The main job until the `tools` CLI exists: what a virtio-pmem device does with `base`.
//!
//! A file is mapped into an arena next to anonymous padding (as a pmem window rounded up to
//! 2 MiB), a record is written through the mapping, the range is msynced, and the file is
//! read back through a separate descriptor. Each step is reported with its cost; the exit
//! status is non-zero if the file does not hold what was written.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::process::ExitCode;
use std::time::Instant;

use base::{MappedRegion, MemoryMappingArena, Protection, VolatileMemory};

const FILE_SIZE: usize = 1 << 20;
const WINDOW: usize = 2 << 20;
const RECORD_OFFSET: usize = 0x1_0000;
const RECORD_LEN: usize = 64 << 10;

fn step<T>(name: &str, f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    let start = Instant::now();
    let result = f();
    let took = start.elapsed();
    let status = if result.is_ok() { "ok" } else { "FAILED" };
    println!(
        "{name:<58} {status:>6} {:>10.1} us",
        took.as_secs_f64() * 1e6
    );
    result.map_err(|e| format!("{name}: {e}"))
}

fn run() -> Result<(), String> {
    let path = std::env::temp_dir().join(format!("arena_msync-{}.img", std::process::id()));
    let _cleanup = RemoveOnDrop(path.clone());
    let file = step("create a 1 MiB backing file", || {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| e.to_string())?;
        file.set_len(FILE_SIZE as u64).map_err(|e| e.to_string())?;
        Ok(file)
    })?;
    let mut arena = step("reserve a 2 MiB arena", || {
        MemoryMappingArena::new(WINDOW).map_err(|e| e.to_string())
    })?;
    step("map the file at offset 0", || {
        arena
            .add_fd_offset_protection(0, FILE_SIZE, &file, 0, Protection::read_write())
            .map_err(|e| e.to_string())
    })?;
    step("map 1 MiB of anonymous padding after it", || {
        arena
            .add_anon(FILE_SIZE, WINDOW - FILE_SIZE)
            .map_err(|e| e.to_string())
    })?;
    for m in arena.mappings() {
        println!(
            "    sub-mapping {:#09x}+{:#09x} {:?} {:?}",
            m.offset, m.size, m.protection, m.backing
        );
    }
    let record: Vec<u8> = (0..RECORD_LEN).map(|i| (i * 7 + 3) as u8).collect();
    step("write a 64 KiB record through the mapping", || {
        let slice = arena
            .get_slice(RECORD_OFFSET, RECORD_LEN)
            .map_err(|e| e.to_string())?;
        slice.copy_from(&record);
        Ok(())
    })?;
    step("msync the file's range of the arena", || {
        let region: &dyn MappedRegion = &arena;
        region.msync(0, FILE_SIZE).map_err(|e| e.to_string())
    })?;
    let on_disk = step("read the file back through a separate descriptor", || {
        let mut bytes = Vec::new();
        File::open(&path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(|e| e.to_string())?;
        Ok(bytes)
    })?;
    step("check the record is in the file and nothing else", || {
        let mut expected = vec![0u8; FILE_SIZE];
        expected[RECORD_OFFSET..RECORD_OFFSET + RECORD_LEN].copy_from_slice(&record);
        if on_disk != expected {
            let first = on_disk.iter().zip(&expected).position(|(a, b)| a != b);
            return Err(format!("file differs (first difference at {first:?})"));
        }
        Ok(())
    })?;
    step("refuse an overlapping add (typed error)", || {
        match arena.add_anon(0x1000, 0x1000) {
            Err(e) => {
                println!("    refused: {e}");
                Ok(())
            }
            Ok(()) => Err("an overlapping add was accepted".into()),
        }
    })?;
    Ok(())
}

struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => {
            println!("all checks passed");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
