// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! File descriptors under crosvm's names.
//!
//! `SafeDescriptor` is a thin wrapper over std's `OwnedFd`, which already closes on drop and
//! duplicates with `F_DUPFD_CLOEXEC`; the traits give crosvm-style names to the std ones so
//! that code written against crosvm's `base` ports without change.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};

use remain::sorted;
use thiserror::Error;

/// The raw form of a descriptor: a Linux file descriptor number.
pub type RawDescriptor = RawFd;

/// Errors of the descriptor module.
#[sorted]
#[derive(Debug, Error)]
pub enum Error {
    /// `fcntl(F_DUPFD_CLOEXEC)` failed.
    #[error("failed to duplicate descriptor {fd}: {source}")]
    Duplicate {
        /// The descriptor being duplicated.
        fd: RawDescriptor,
        /// What the kernel answered.
        source: std::io::Error,
    },
    /// The descriptor number is not an open descriptor of this process.
    #[error("descriptor {fd} is not open: {source}")]
    NotOpen {
        /// The descriptor that was checked.
        fd: RawDescriptor,
        /// What the kernel answered.
        source: std::io::Error,
    },
}

/// Result of the descriptor module.
pub type Result<T> = std::result::Result<T, Error>;

/// Anything that holds a descriptor it can lend out without giving up ownership.
///
/// Implemented for every type that implements std's [`AsFd`].
pub trait AsRawDescriptor {
    /// Returns the descriptor number. It stays valid only while `self` lives.
    fn as_raw_descriptor(&self) -> RawDescriptor;
}

impl<T: AsFd + ?Sized> AsRawDescriptor for T {
    fn as_raw_descriptor(&self) -> RawDescriptor {
        self.as_fd().as_raw_fd()
    }
}

/// Types that can take ownership of a raw descriptor.
pub trait FromRawDescriptor {
    /// Builds `Self` owning `descriptor`.
    ///
    /// # Safety
    ///
    /// `descriptor` must be an open descriptor that nothing else owns: the returned value will
    /// close it when dropped.
    unsafe fn from_raw_descriptor(descriptor: RawDescriptor) -> Self;
}

/// Types that can give up ownership of their descriptor.
pub trait IntoRawDescriptor {
    /// Returns the descriptor; the caller now owns it and must close it.
    fn into_raw_descriptor(self) -> RawDescriptor;
}

/// An owned descriptor that is closed when dropped.
#[derive(Debug)]
pub struct SafeDescriptor(OwnedFd);

impl SafeDescriptor {
    /// Duplicates the descriptor. The copy has `FD_CLOEXEC` set.
    pub fn try_clone(&self) -> Result<SafeDescriptor> {
        self.0
            .try_clone()
            .map(SafeDescriptor)
            .map_err(|source| Error::Duplicate {
                fd: self.as_raw_descriptor(),
                source,
            })
    }

    /// Duplicates a descriptor that someone else owns and lends out (for example through
    /// std's [`AsFd`]). The borrow proves the descriptor is open and stays so during the
    /// call; a bare number could not (once closed, it may be reused by an unrelated file).
    pub fn try_clone_borrowed(descriptor: BorrowedFd<'_>) -> Result<SafeDescriptor> {
        descriptor
            .try_clone_to_owned()
            .map(SafeDescriptor)
            .map_err(|source| Error::Duplicate {
                fd: descriptor.as_raw_fd(),
                source,
            })
    }
}

/// Returns `Ok` when `descriptor` is an open descriptor of this process.
pub fn check_open(descriptor: RawDescriptor) -> Result<()> {
    // SAFETY: F_GETFD only reads the descriptor flags; it touches no memory and is harmless on
    // any number, open or not.
    let ret = unsafe { libc::fcntl(descriptor, libc::F_GETFD) };
    if ret < 0 {
        return Err(Error::NotOpen {
            fd: descriptor,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

impl AsFd for SafeDescriptor {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl FromRawDescriptor for SafeDescriptor {
    unsafe fn from_raw_descriptor(descriptor: RawDescriptor) -> Self {
        // SAFETY: the caller guarantees `descriptor` is open and owned by nobody else.
        SafeDescriptor(unsafe { OwnedFd::from_raw_fd(descriptor) })
    }
}

impl IntoRawDescriptor for SafeDescriptor {
    fn into_raw_descriptor(self) -> RawDescriptor {
        self.0.into_raw_fd()
    }
}

impl From<OwnedFd> for SafeDescriptor {
    fn from(fd: OwnedFd) -> Self {
        SafeDescriptor(fd)
    }
}

impl From<SafeDescriptor> for OwnedFd {
    fn from(descriptor: SafeDescriptor) -> Self {
        descriptor.0
    }
}

impl From<File> for SafeDescriptor {
    fn from(file: File) -> Self {
        SafeDescriptor(file.into())
    }
}

impl From<SafeDescriptor> for File {
    fn from(descriptor: SafeDescriptor) -> Self {
        File::from(descriptor.0)
    }
}

impl FromRawDescriptor for File {
    unsafe fn from_raw_descriptor(descriptor: RawDescriptor) -> Self {
        // SAFETY: the caller guarantees `descriptor` is open and owned by nobody else.
        unsafe { File::from_raw_fd(descriptor) }
    }
}

impl IntoRawDescriptor for File {
    fn into_raw_descriptor(self) -> RawDescriptor {
        self.into_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, Write};

    #[test]
    fn clone_shares_the_file_and_sets_cloexec() {
        let mut file = vmm_sys_util::tempfile::TempFile::new().unwrap().into_file();
        file.write_all(b"hello").unwrap();
        let descriptor = SafeDescriptor::from(file);
        let clone = descriptor.try_clone().unwrap();
        assert_ne!(clone.as_raw_descriptor(), descriptor.as_raw_descriptor());
        // SAFETY: F_GETFD reads flags of a descriptor we own.
        let flags = unsafe { libc::fcntl(clone.as_raw_descriptor(), libc::F_GETFD) };
        assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
        let mut file = File::from(clone);
        file.rewind().unwrap();
        let mut text = String::new();
        file.read_to_string(&mut text).unwrap();
        assert_eq!(text, "hello");
    }

    #[test]
    fn raw_round_trip_closes_exactly_once() {
        let file = File::open("/proc/self/status").unwrap();
        let raw = file.into_raw_descriptor();
        // SAFETY: `raw` was just released by `file`, so we are its only owner.
        let descriptor = unsafe { SafeDescriptor::from_raw_descriptor(raw) };
        assert_eq!(descriptor.as_raw_descriptor(), raw);
        let raw = descriptor.into_raw_descriptor();
        check_open(raw).unwrap();
        // SAFETY: `raw` was just released by `descriptor`.
        let file = unsafe { File::from_raw_descriptor(raw) };
        assert_eq!(file.as_raw_descriptor(), raw);
    }

    #[test]
    fn clone_borrowed_duplicates_the_lent_descriptor() {
        let file = File::open("/proc/self/status").unwrap();
        let clone = File::from(SafeDescriptor::try_clone_borrowed(file.as_fd()).unwrap());
        assert_ne!(clone.as_raw_descriptor(), file.as_raw_descriptor());
        let (a, b) = (file.metadata().unwrap(), clone.metadata().unwrap());
        use std::os::unix::fs::MetadataExt;
        assert_eq!((a.dev(), a.ino()), (b.dev(), b.ino()));
    }

    #[test]
    fn check_open_refuses_closed_and_hostile_numbers() {
        for fd in [-1, i32::MIN, i32::MAX] {
            let err = check_open(fd).unwrap_err();
            assert!(
                matches!(err, Error::NotOpen { fd: f, .. } if f == fd),
                "{err}"
            );
            assert!(err.to_string().contains(&fd.to_string()), "{err}");
        }
    }
}
