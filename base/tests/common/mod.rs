// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! What the kernel says about this process, for tests to compare against.

#![allow(dead_code)]

use std::fs::File;

use base::{AsRawDescriptor, RawDescriptor};

/// One line of `/proc/self/maps`.
#[derive(Debug)]
pub struct Vma {
    pub start: usize,
    pub end: usize,
    /// Like "rw-s" or "---p".
    pub perms: String,
    pub offset: u64,
}

pub fn vmas() -> Vec<Vma> {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .map(|line| {
            let mut fields = line.split_whitespace();
            let (start, end) = fields.next().unwrap().split_once('-').unwrap();
            let perms = fields.next().unwrap().to_owned();
            let offset = u64::from_str_radix(fields.next().unwrap(), 16).unwrap();
            Vma {
                start: usize::from_str_radix(start, 16).unwrap(),
                end: usize::from_str_radix(end, 16).unwrap(),
                perms,
                offset,
            }
        })
        .collect()
}

/// The kernel's permission string ("rw-s", "---p", or "unmapped") for each page of
/// `addr..addr + len`.
pub fn page_perms(addr: usize, len: usize) -> Vec<String> {
    let page = base::pagesize();
    let vmas = vmas();
    (addr..addr + len)
        .step_by(page)
        .map(|p| {
            vmas.iter()
                .find(|v| v.start <= p && p < v.end)
                .map_or_else(|| "unmapped".to_owned(), |v| v.perms.clone())
        })
        .collect()
}

pub fn maps_line_count() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .count()
}

pub fn open_fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// An unlinked temporary file of `len` bytes.
pub fn temp_file(len: u64) -> File {
    let file = vmm_sys_util::tempfile::TempFile::new().unwrap().into_file();
    file.set_len(len).unwrap();
    file
}

/// A temporary file of `len` bytes opened read-only (a read-write descriptor is used to size
/// it and then closed).
pub fn read_only_file(len: u64) -> File {
    let temp = vmm_sys_util::tempfile::TempFile::new().unwrap();
    temp.as_file().set_len(len).unwrap();
    let file = File::open(temp.as_path()).unwrap();
    drop(temp);
    file
}

/// A descriptor number of our choosing, as a hostile caller would pass.
pub struct RawNumber(pub RawDescriptor);

impl AsRawDescriptor for RawNumber {
    fn as_raw_descriptor(&self) -> RawDescriptor {
        self.0
    }
}
