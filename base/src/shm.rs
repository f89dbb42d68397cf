// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Shared memory on a memfd, with seals.

use std::ffi::CString;
use std::fmt;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};

use remain::sorted;
use thiserror::Error;

use crate::descriptor::{
    self, AsRawDescriptor, FromRawDescriptor, IntoRawDescriptor, RawDescriptor, SafeDescriptor,
};

/// Longest name `memfd_create` accepts, in bytes (`NAME_MAX` less the "memfd:" prefix).
pub const MAX_NAME_LEN: usize = 249;

/// Errors of the shared memory module.
#[sorted]
#[derive(Debug, Error)]
pub enum Error {
    /// `F_ADD_SEALS` failed.
    #[error("failed to add seals {seals:?} to memfd {fd}: {source}")]
    AddSeals {
        /// The memfd.
        fd: RawDescriptor,
        /// The seals that were asked for.
        seals: MemfdSeals,
        /// What the kernel answered.
        source: std::io::Error,
    },
    /// Duplicating the descriptor failed.
    #[error("failed to clone shared memory: {0}")]
    Clone(#[source] descriptor::Error),
    /// `memfd_create` failed.
    #[error("memfd_create({name:?}) failed: {source}")]
    Create {
        /// The name that was given.
        name: String,
        /// What the kernel answered.
        source: std::io::Error,
    },
    /// `F_GET_SEALS` failed.
    #[error("failed to read the seals of memfd {fd}: {source}")]
    GetSeals {
        /// The memfd.
        fd: RawDescriptor,
        /// What the kernel answered.
        source: std::io::Error,
    },
    /// The name holds a NUL byte, which `memfd_create` cannot take.
    #[error("shared memory name {name:?} contains a NUL byte at {position}")]
    NameHasNul {
        /// The name that was given.
        name: String,
        /// Where the first NUL is.
        position: usize,
    },
    /// The name is longer than [`MAX_NAME_LEN`].
    #[error("shared memory name is {len} bytes long; the limit is {max}")]
    NameTooLong {
        /// The length of the name given.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The descriptor is not a memfd (it does not answer `F_GET_SEALS`).
    #[error("descriptor {fd} is not a memfd: {source}")]
    NotMemfd {
        /// The descriptor.
        fd: RawDescriptor,
        /// What the kernel answered.
        source: std::io::Error,
    },
    /// Resizing the memfd failed.
    #[error("failed to set memfd {fd} to {size:#x} bytes: {source}")]
    SetSize {
        /// The memfd.
        fd: RawDescriptor,
        /// The size asked for.
        size: u64,
        /// What the kernel answered.
        source: std::io::Error,
    },
    /// Reading the memfd's size failed.
    #[error("failed to stat memfd {fd}: {source}")]
    Stat {
        /// The memfd.
        fd: RawDescriptor,
        /// What the kernel answered.
        source: std::io::Error,
    },
    /// Size 0, or larger than a file offset (`off_t`) can express.
    #[error("invalid shared memory size {size:#x}: must be between 1 and {max:#x}", max = i64::MAX)]
    ZeroOrHugeSize {
        /// The size asked for.
        size: u64,
    },
}

/// Result of the shared memory module.
pub type Result<T> = std::result::Result<T, Error>;

/// A set of memfd seals (`F_SEAL_*`), as a value.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct MemfdSeals(i32);

impl MemfdSeals {
    /// No seals.
    pub const fn new() -> Self {
        MemfdSeals(0)
    }

    /// The seals as the `F_SEAL_*` bit mask the kernel uses.
    pub const fn bitmask(self) -> i32 {
        self.0
    }

    fn has(self, bit: i32) -> bool {
        self.0 & bit != 0
    }

    /// Whether further seals are refused (`F_SEAL_SEAL`).
    pub fn seal_seal(self) -> bool {
        self.has(libc::F_SEAL_SEAL)
    }

    /// Adds `F_SEAL_SEAL`: no further seals may be added.
    pub fn set_seal_seal(&mut self) {
        self.0 |= libc::F_SEAL_SEAL;
    }

    /// Whether the size may not shrink (`F_SEAL_SHRINK`).
    pub fn shrink_seal(self) -> bool {
        self.has(libc::F_SEAL_SHRINK)
    }

    /// Adds `F_SEAL_SHRINK`.
    pub fn set_shrink_seal(&mut self) {
        self.0 |= libc::F_SEAL_SHRINK;
    }

    /// Whether the size may not grow (`F_SEAL_GROW`).
    pub fn grow_seal(self) -> bool {
        self.has(libc::F_SEAL_GROW)
    }

    /// Adds `F_SEAL_GROW`.
    pub fn set_grow_seal(&mut self) {
        self.0 |= libc::F_SEAL_GROW;
    }

    /// Whether the contents may not be written (`F_SEAL_WRITE`).
    pub fn write_seal(self) -> bool {
        self.has(libc::F_SEAL_WRITE)
    }

    /// Adds `F_SEAL_WRITE`.
    pub fn set_write_seal(&mut self) {
        self.0 |= libc::F_SEAL_WRITE;
    }

    /// Whether new writable mappings are refused while existing ones stay (`F_SEAL_FUTURE_WRITE`).
    pub fn future_write_seal(self) -> bool {
        self.has(libc::F_SEAL_FUTURE_WRITE)
    }

    /// Adds `F_SEAL_FUTURE_WRITE`.
    pub fn set_future_write_seal(&mut self) {
        self.0 |= libc::F_SEAL_FUTURE_WRITE;
    }
}

impl fmt::Debug for MemfdSeals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = [
            (libc::F_SEAL_SEAL, "SEAL"),
            (libc::F_SEAL_SHRINK, "SHRINK"),
            (libc::F_SEAL_GROW, "GROW"),
            (libc::F_SEAL_WRITE, "WRITE"),
            (libc::F_SEAL_FUTURE_WRITE, "FUTURE_WRITE"),
        ];
        let mut set = f.debug_set();
        for (bit, name) in names {
            if self.has(bit) {
                set.entry(&format_args!("{name}"));
            }
        }
        set.finish()
    }
}

/// Memory that can be shared between processes and mapped several times: a memfd created with
/// `MFD_CLOEXEC | MFD_ALLOW_SEALING`.
#[derive(Debug)]
pub struct SharedMemory {
    descriptor: SafeDescriptor,
    size: u64,
}

impl SharedMemory {
    /// Creates a memfd named `name` (shown in `/proc/self/maps` and `/proc/self/fd`) of `size`
    /// bytes. The contents start zeroed.
    ///
    /// ```
    /// let shm = base::SharedMemory::new("guest-ram", 1 << 20).unwrap();
    /// assert_eq!(shm.size(), 1 << 20);
    /// ```
    pub fn new(name: &str, size: u64) -> Result<SharedMemory> {
        check_size(size)?;
        if name.len() > MAX_NAME_LEN {
            return Err(Error::NameTooLong {
                len: name.len(),
                max: MAX_NAME_LEN,
            });
        }
        let c_name = CString::new(name).map_err(|e| Error::NameHasNul {
            name: name.to_owned(),
            position: e.nul_position(),
        })?;
        // SAFETY: `c_name` is a valid NUL-terminated string that outlives the call; the return
        // value is checked before it is trusted as a descriptor.
        let fd = unsafe {
            libc::memfd_create(c_name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING)
        };
        if fd < 0 {
            return Err(Error::Create {
                name: name.to_owned(),
                source: std::io::Error::last_os_error(),
            });
        }
        // SAFETY: `fd` was just returned by memfd_create, so it is open and nobody else owns it.
        let descriptor = unsafe { File::from_raw_descriptor(fd) };
        descriptor
            .set_len(size)
            .map_err(|source| Error::SetSize { fd, size, source })?;
        Ok(SharedMemory {
            descriptor: descriptor.into(),
            size,
        })
    }

    /// Takes ownership of a descriptor that must be a memfd (for example one received from
    /// another process) and reads its current size.
    pub fn from_safe_descriptor(descriptor: SafeDescriptor) -> Result<SharedMemory> {
        let fd = descriptor.as_raw_descriptor();
        get_seals(fd).map_err(|source| Error::NotMemfd { fd, source })?;
        let file = File::from(descriptor);
        let size = file
            .metadata()
            .map_err(|source| Error::Stat { fd, source })?
            .len();
        Ok(SharedMemory {
            descriptor: file.into(),
            size,
        })
    }

    /// The size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Another handle on the same memory (a duplicated descriptor with `FD_CLOEXEC`).
    pub fn try_clone(&self) -> Result<SharedMemory> {
        Ok(SharedMemory {
            descriptor: self.descriptor.try_clone().map_err(Error::Clone)?,
            size: self.size,
        })
    }

    /// The seals currently set.
    pub fn get_seals(&self) -> Result<MemfdSeals> {
        let fd = self.descriptor.as_raw_descriptor();
        get_seals(fd).map_err(|source| Error::GetSeals { fd, source })
    }

    /// Adds `seals` to those already set. Seals can never be removed.
    ///
    /// ```
    /// use base::{MemfdSeals, SharedMemory};
    /// let shm = SharedMemory::new("sealed", 4096).unwrap();
    /// let mut seals = MemfdSeals::new();
    /// seals.set_grow_seal();
    /// seals.set_shrink_seal();
    /// shm.add_seals(seals).unwrap();
    /// assert!(shm.get_seals().unwrap().grow_seal());
    /// ```
    pub fn add_seals(&self, seals: MemfdSeals) -> Result<()> {
        let fd = self.descriptor.as_raw_descriptor();
        // SAFETY: F_ADD_SEALS only changes the seal set of a descriptor we own; the kernel
        // validates the bits.
        let ret = unsafe { libc::fcntl(fd, libc::F_ADD_SEALS, seals.bitmask()) };
        if ret < 0 {
            return Err(Error::AddSeals {
                fd,
                seals,
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }
}

fn check_size(size: u64) -> Result<()> {
    if size == 0 || size > i64::MAX as u64 {
        return Err(Error::ZeroOrHugeSize { size });
    }
    Ok(())
}

fn get_seals(fd: RawDescriptor) -> std::io::Result<MemfdSeals> {
    // SAFETY: F_GET_SEALS only reads the seal set; it touches no memory of ours.
    let ret = unsafe { libc::fcntl(fd, libc::F_GET_SEALS) };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(MemfdSeals(ret))
}

impl AsFd for SharedMemory {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.descriptor.as_fd()
    }
}

impl IntoRawDescriptor for SharedMemory {
    fn into_raw_descriptor(self) -> RawDescriptor {
        self.descriptor.into_raw_descriptor()
    }
}

impl From<SharedMemory> for SafeDescriptor {
    fn from(shm: SharedMemory) -> Self {
        shm.descriptor
    }
}
