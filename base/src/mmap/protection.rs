// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Memory protection, as a value that converts to `PROT_*` bits.

use std::fmt;

/// Read and write permission of a mapping. Execute is never granted: guest memory is data to
/// the host.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Protection {
    read: bool,
    write: bool,
}

impl Protection {
    /// No access (`PROT_NONE`).
    pub const fn none() -> Protection {
        Protection {
            read: false,
            write: false,
        }
    }

    /// Read only (`PROT_READ`).
    pub const fn read() -> Protection {
        Protection {
            read: true,
            write: false,
        }
    }

    /// Write only (`PROT_WRITE`; on x86 the CPU grants read too).
    pub const fn write() -> Protection {
        Protection {
            read: false,
            write: true,
        }
    }

    /// Read and write.
    pub const fn read_write() -> Protection {
        Protection {
            read: true,
            write: true,
        }
    }

    /// This protection with read added.
    pub const fn set_read(self) -> Protection {
        Protection { read: true, ..self }
    }

    /// This protection with write added.
    pub const fn set_write(self) -> Protection {
        Protection {
            write: true,
            ..self
        }
    }

    /// Whether read is granted.
    pub const fn is_read(self) -> bool {
        self.read
    }

    /// Whether write is granted.
    pub const fn is_write(self) -> bool {
        self.write
    }

    /// Whether everything `other` grants is granted here too.
    pub const fn allows(&self, other: &Protection) -> bool {
        (self.read || !other.read) && (self.write || !other.write)
    }

    /// The `PROT_*` bits.
    pub const fn as_prot(self) -> libc::c_int {
        (if self.read { libc::PROT_READ } else { 0 })
            | (if self.write { libc::PROT_WRITE } else { 0 })
    }
}

impl From<Protection> for libc::c_int {
    fn from(p: Protection) -> libc::c_int {
        p.as_prot()
    }
}

impl fmt::Debug for Protection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = if self.read { 'r' } else { '-' };
        let w = if self.write { 'w' } else { '-' };
        write!(f, "{r}{w}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_and_allows() {
        assert_eq!(libc::c_int::from(Protection::none()), libc::PROT_NONE);
        assert_eq!(libc::c_int::from(Protection::read()), libc::PROT_READ);
        assert_eq!(libc::c_int::from(Protection::write()), libc::PROT_WRITE);
        assert_eq!(
            Protection::read().set_write().as_prot(),
            libc::PROT_READ | libc::PROT_WRITE
        );
        assert_eq!(Protection::write().set_read(), Protection::read_write());
        let all = [
            Protection::none(),
            Protection::read(),
            Protection::write(),
            Protection::read_write(),
        ];
        for a in all {
            for b in all {
                let expected = a.as_prot() & b.as_prot() == b.as_prot();
                assert_eq!(a.allows(&b), expected, "{a:?} allows {b:?}");
            }
        }
        assert_eq!(format!("{:?}", Protection::read()), "r-");
    }
}
