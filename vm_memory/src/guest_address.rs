// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! [`GuestAddress`]: an address in the guest's physical address space.

use std::fmt;
use std::ops::{BitAnd, BitOr};

/// An address in guest physical memory. Arithmetic is checked unless a method says otherwise.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GuestAddress(pub u64);

impl GuestAddress {
    /// The address as a number.
    pub const fn offset(self) -> u64 {
        self.0
    }

    /// `self + offset`, or `None` if it passes the end of the 64-bit address space.
    pub const fn checked_add(self, offset: u64) -> Option<GuestAddress> {
        match self.0.checked_add(offset) {
            Some(a) => Some(GuestAddress(a)),
            None => None,
        }
    }

    /// `self - offset`, or `None` below address 0.
    pub const fn checked_sub(self, offset: u64) -> Option<GuestAddress> {
        match self.0.checked_sub(offset) {
            Some(a) => Some(GuestAddress(a)),
            None => None,
        }
    }

    /// How far `self` lies above `base`, or `None` if it lies below. (crosvm's version
    /// returns `u64` and panics below; this one makes the caller decide.)
    pub const fn offset_from(self, base: GuestAddress) -> Option<u64> {
        self.0.checked_sub(base.0)
    }

    /// `self + offset`, wrapping around the address space. For callers that have already
    /// checked the range.
    pub const fn unchecked_add(self, offset: u64) -> GuestAddress {
        GuestAddress(self.0.wrapping_add(offset))
    }

    /// Rounds up to a multiple of `align` (any non-zero value; 0 and 1 leave the address as
    /// it is), or `None` if that passes the end of the address space.
    pub const fn align(self, align: u64) -> Option<GuestAddress> {
        if align <= 1 {
            return Some(self);
        }
        let rem = self.0 % align;
        if rem == 0 {
            return Some(self);
        }
        self.checked_add(align - rem)
    }

    /// Rounds down to a multiple of `align` (0 and 1 leave the address as it is).
    pub const fn align_down(self, align: u64) -> GuestAddress {
        if align <= 1 {
            return self;
        }
        GuestAddress(self.0 - self.0 % align)
    }

    /// The address bits selected by `mask`.
    pub const fn mask(self, mask: u64) -> u64 {
        self.0 & mask
    }
}

impl BitAnd<u64> for GuestAddress {
    type Output = GuestAddress;

    fn bitand(self, other: u64) -> GuestAddress {
        GuestAddress(self.0 & other)
    }
}

impl BitOr<u64> for GuestAddress {
    type Output = GuestAddress;

    fn bitor(self, other: u64) -> GuestAddress {
        GuestAddress(self.0 | other)
    }
}

impl fmt::Display for GuestAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

impl fmt::Debug for GuestAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GuestAddress({:#x})", self.0)
    }
}

impl fmt::LowerHex for GuestAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::LowerHex::fmt(&self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checked_arithmetic_at_the_edges() {
        let a = GuestAddress(0x1000);
        assert_eq!(a.checked_add(0x10), Some(GuestAddress(0x1010)));
        assert_eq!(GuestAddress(u64::MAX).checked_add(1), None);
        assert_eq!(
            GuestAddress(u64::MAX - 1).checked_add(1),
            Some(GuestAddress(u64::MAX))
        );
        assert_eq!(a.checked_sub(0x1000), Some(GuestAddress(0)));
        assert_eq!(a.checked_sub(0x1001), None);
        assert_eq!(a.offset_from(GuestAddress(0x800)), Some(0x800));
        assert_eq!(a.offset_from(GuestAddress(0x1001)), None);
        assert_eq!(GuestAddress(u64::MAX).unchecked_add(2), GuestAddress(1));
        assert_eq!(a.offset(), 0x1000);
    }

    #[test]
    fn alignment() {
        assert_eq!(
            GuestAddress(0x1001).align(0x1000),
            Some(GuestAddress(0x2000))
        );
        assert_eq!(
            GuestAddress(0x2000).align(0x1000),
            Some(GuestAddress(0x2000))
        );
        assert_eq!(GuestAddress(7).align(3), Some(GuestAddress(9)));
        assert_eq!(GuestAddress(7).align(0), Some(GuestAddress(7)));
        assert_eq!(GuestAddress(u64::MAX).align(0x1000), None);
        assert_eq!(
            GuestAddress(u64::MAX).align(u64::MAX),
            Some(GuestAddress(u64::MAX))
        );
        assert_eq!(
            GuestAddress(u64::MAX - 1).align(u64::MAX),
            Some(GuestAddress(u64::MAX))
        );
        assert_eq!(
            GuestAddress(0x1fff).align_down(0x1000),
            GuestAddress(0x1000)
        );
        assert_eq!(GuestAddress(10).align_down(3), GuestAddress(9));
        assert_eq!(GuestAddress(10).align_down(0), GuestAddress(10));
        assert_eq!(GuestAddress(0x1234).mask(0xff0), 0x230);
        assert_eq!(GuestAddress(0x1234) & 0xff, GuestAddress(0x34));
        assert_eq!(GuestAddress(0x1200) | 0x34, GuestAddress(0x1234));
    }

    #[test]
    fn ordering_and_hex_formatting() {
        let mut v = vec![GuestAddress(3), GuestAddress(1), GuestAddress(2)];
        v.sort();
        assert_eq!(v, [GuestAddress(1), GuestAddress(2), GuestAddress(3)]);
        assert_eq!(GuestAddress(0xfeed).to_string(), "0xfeed");
        assert_eq!(format!("{:?}", GuestAddress(0x10)), "GuestAddress(0x10)");
        assert_eq!(format!("{:x}", GuestAddress(0xab)), "ab");
        assert_eq!(format!("{:#x}", GuestAddress(0xab)), "0xab");
    }
}
