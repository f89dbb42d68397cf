// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! What the page cache holds of a file: `cachestat(2)` (Linux 6.5+).
//!
//! The one way to see whether written pages are still dirty in memory or have reached the
//! file's storage. A read through a second descriptor shares the page cache, and an `O_DIRECT`
//! read makes the kernel write dirty pages back first, so neither can prove that an `msync` or
//! a flush did its job; a dirty-page count can.

use std::os::fd::{AsRawFd, BorrowedFd};

use remain::sorted;
use thiserror::Error;

/// `cachestat`'s syscall number, the same on every architecture Linux gave it to.
const SYS_CACHESTAT: libc::c_long = 451;

/// Errors of the page cache module.
#[sorted]
#[derive(Debug, Error)]
pub enum Error {
    /// The kernel refused the query.
    #[error("cachestat of descriptor {fd} range {offset:#x}+{len:#x} failed: {source}")]
    Cachestat {
        /// The descriptor.
        fd: i32,
        /// Start of the range, in bytes.
        offset: u64,
        /// Its length in bytes (0: to the end of the file).
        len: u64,
        /// What the kernel answered.
        source: std::io::Error,
    },
    /// The range does not fit in a file offset (`off_t`).
    #[error("cachestat range {offset:#x}+{len:#x} passes the largest file offset {max:#x}", max = i64::MAX)]
    InvalidRange {
        /// Start of the range.
        offset: u64,
        /// Its length.
        len: u64,
    },
    /// `fstatfs` failed.
    #[error("fstatfs of descriptor {fd} failed: {source}")]
    Statfs {
        /// The descriptor.
        fd: i32,
        /// What the kernel answered.
        source: std::io::Error,
    },
    /// This kernel has no `cachestat` (before Linux 6.5).
    #[error("this kernel has no cachestat(2) (Linux 6.5 or later is needed)")]
    Unsupported,
}

/// Result of the page cache module.
pub type Result<T> = std::result::Result<T, Error>;

/// Page counts of a range of a file, as `cachestat(2)` reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStat {
    /// Pages in the page cache.
    pub cached: u64,
    /// Cached pages written but not yet written back.
    pub dirty: u64,
    /// Pages being written back now.
    pub writeback: u64,
    /// Pages evicted from the cache.
    pub evicted: u64,
    /// Evicted pages that were recently in use.
    pub recently_evicted: u64,
}

/// `struct cachestat_range` of the kernel's ABI.
#[repr(C)]
struct Range {
    off: u64,
    len: u64,
}

/// `struct cachestat` of the kernel's ABI.
#[repr(C)]
#[derive(Default)]
struct Stat {
    nr_cache: u64,
    nr_dirty: u64,
    nr_writeback: u64,
    nr_evicted: u64,
    nr_recently_evicted: u64,
}

/// Counts the pages of `offset..offset + len` of `fd` (`len` 0 means to the end) that are
/// cached, dirty, under writeback and evicted. A descriptor with no page cache (a pipe, a
/// socket) has nothing cached. Large folios are counted in whole: a dirty folio makes all its
/// pages in the range count as dirty.
///
/// ```
/// use std::os::fd::AsFd;
/// let file = vmm_sys_util::tempfile::TempFile::new().unwrap().into_file();
/// match base::page_cache::cachestat(file.as_fd(), 0, 0) {
///     Ok(stat) => assert_eq!(stat.dirty, 0), // nothing written yet
///     Err(base::page_cache::Error::Unsupported) => {} // before Linux 6.5
///     Err(e) => panic!("{e}"),
/// }
/// ```
pub fn cachestat(fd: BorrowedFd<'_>, offset: u64, len: u64) -> Result<CacheStat> {
    let fits = offset
        .checked_add(len)
        .is_some_and(|end| end <= i64::MAX as u64);
    if !fits {
        return Err(Error::InvalidRange { offset, len });
    }
    let range = Range { off: offset, len };
    let mut stat = Stat::default();
    // SAFETY: cachestat reads one `Range` and writes one `Stat`, both ours and alive across
    // the call, laid out as the kernel's structs; flags must be 0. The borrow keeps `fd` open.
    let ret = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            fd.as_raw_fd(),
            &range as *const Range,
            &mut stat as *mut Stat,
            0u32,
        )
    };
    if ret < 0 {
        let source = std::io::Error::last_os_error();
        if source.raw_os_error() == Some(libc::ENOSYS) {
            return Err(Error::Unsupported);
        }
        return Err(Error::Cachestat {
            fd: fd.as_raw_fd(),
            offset,
            len,
            source,
        });
    }
    Ok(CacheStat {
        cached: stat.nr_cache,
        dirty: stat.nr_dirty,
        writeback: stat.nr_writeback,
        evicted: stat.nr_evicted,
        recently_evicted: stat.nr_recently_evicted,
    })
}

/// Whether the filesystem holding `fd` writes dirty pages back to storage, which is what
/// makes a dirty count the proof of an msync. Not on tmpfs or ramfs: their pages are the
/// file, stay dirty, and an msync has nothing to write them to.
pub fn has_writeback(fd: BorrowedFd<'_>) -> Result<bool> {
    // libc names tmpfs's magic but not ramfs's; it has the same type (`f_type`'s).
    const RAMFS_MAGIC: libc::c_long = 0x8584_58f6;
    let mut fs = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: fstatfs writes at most one statfs into the buffer we pass; the borrow keeps
    // `fd` open.
    if unsafe { libc::fstatfs(fd.as_raw_fd(), fs.as_mut_ptr()) } < 0 {
        return Err(Error::Statfs {
            fd: fd.as_raw_fd(),
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: fstatfs succeeded, so it filled the struct.
    let kind = unsafe { fs.assume_init() }.f_type;
    Ok(kind != libc::TMPFS_MAGIC && kind != RAMFS_MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::fs::FileExt;

    fn disk_file() -> std::fs::File {
        let dir = std::env::var_os("CARGO_TARGET_TMPDIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")));
        vmm_sys_util::tempfile::TempFile::new_in(&dir)
            .unwrap()
            .into_file()
    }

    #[test]
    fn counts_written_pages_as_dirty_until_synced() {
        let file = disk_file();
        let stat = match cachestat(file.as_fd(), 0, 0) {
            Err(Error::Unsupported) => {
                println!("SKIP cachestat: this kernel has no cachestat(2)");
                return;
            }
            other => other.unwrap(),
        };
        assert_eq!(stat, CacheStat::default());
        file.write_all_at(&[7u8; 3 * 4096], 0).unwrap();
        let stat = cachestat(file.as_fd(), 0, 0).unwrap();
        assert_eq!((stat.cached, stat.dirty), (3, 3));
        file.sync_data().unwrap();
        let stat = cachestat(file.as_fd(), 0, 0).unwrap();
        assert_eq!((stat.cached, stat.dirty, stat.writeback), (3, 0, 0));
        // A range. Far from the first pages, so that no large folio holds both (a dirty folio
        // counts as dirty in all its pages).
        file.write_all_at(&[8u8; 10], 1 << 20).unwrap();
        assert_eq!(cachestat(file.as_fd(), 0, 3 * 4096).unwrap().dirty, 0);
        assert!(cachestat(file.as_fd(), 1 << 20, 4096).unwrap().dirty >= 1);
    }

    #[test]
    fn tmpfs_has_no_writeback_and_disk_filesystems_do() {
        let memfd = crate::SharedMemory::new("tmpfs", 4096).unwrap();
        assert!(!has_writeback(memfd.as_fd()).unwrap());
        let file = disk_file();
        if !has_writeback(file.as_fd()).unwrap() {
            println!("SKIP the disk half: the build directory is on tmpfs here");
            return;
        }
        // Written, and clean after a sync: what "writes back" means.
        file.write_all_at(&[1; 4096], 0).unwrap();
        file.sync_data().unwrap();
        assert_eq!(
            cachestat(file.as_fd(), 0, 0).map(|s| s.dirty).unwrap_or(0),
            0
        );
    }

    #[test]
    fn hostile_ranges_and_descriptors_are_refused() {
        let file = disk_file();
        if matches!(cachestat(file.as_fd(), 0, 0), Err(Error::Unsupported)) {
            println!("SKIP cachestat: this kernel has no cachestat(2)");
            return;
        }
        for (offset, len) in [
            (u64::MAX, 1),
            (1, u64::MAX),
            (i64::MAX as u64, 1),
            (1 << 63, 0),
        ] {
            let err = cachestat(file.as_fd(), offset, len).unwrap_err();
            assert!(
                matches!(err, Error::InvalidRange { offset: o, len: l } if o == offset && l == len),
                "{err}"
            );
            assert!(err.to_string().contains(&format!("{offset:#x}")), "{err}");
        }
        // Past the end of the file: nothing cached, not an error.
        assert_eq!(
            cachestat(file.as_fd(), 1 << 40, 4096).unwrap(),
            CacheStat::default()
        );
        // Descriptors with no page cache of their own have nothing cached.
        let (r, _w) = std::io::pipe().unwrap();
        assert_eq!(cachestat(r.as_fd(), 0, 0).unwrap(), CacheStat::default());
        let dir = std::fs::File::open("/").unwrap();
        assert_eq!(cachestat(dir.as_fd(), 0, 4096).unwrap().dirty, 0);
    }
}
