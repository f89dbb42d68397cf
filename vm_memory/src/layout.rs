// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The rules a list of regions must follow, checked before anything is mapped.

use base::pagesize;

use crate::{Error, GuestAddress, Result};

/// Checks sizes, alignment, overflow, order and overlap of a region list.
pub(crate) fn check_layout(ranges: impl Iterator<Item = (GuestAddress, u64)>) -> Result<()> {
    let page = pagesize() as u64;
    let mut prev: Option<(GuestAddress, u64)> = None;
    let mut count = 0;
    for (index, (addr, size)) in ranges.enumerate() {
        count += 1;
        if size == 0 {
            return Err(Error::ZeroSizedRegion { addr });
        }
        if !addr.0.is_multiple_of(page) {
            return Err(Error::UnalignedAddress {
                addr,
                page: page as usize,
            });
        }
        if !size.is_multiple_of(page) {
            return Err(Error::UnalignedSize {
                addr,
                size,
                page: page as usize,
            });
        }
        if addr.checked_add(size).is_none() || usize::try_from(size).is_err() {
            return Err(Error::RegionOverflow { addr, size });
        }
        if let Some((prev_addr, prev_size)) = prev {
            if addr < prev_addr {
                return Err(Error::RegionsUnsorted {
                    index,
                    addr,
                    prev_addr,
                });
            }
            if addr.0 < prev_addr.0 + prev_size {
                return Err(Error::RegionOverlap {
                    addr,
                    size,
                    prev_addr,
                    prev_size,
                });
            }
        }
        prev = Some((addr, size));
    }
    if count == 0 {
        return Err(Error::NoRegions);
    }
    Ok(())
}

/// The host alignment to use for a region: a power of two (0 means a page).
pub(crate) fn check_align(addr: GuestAddress, align: u64) -> Result<u64> {
    match align {
        0 => Ok(pagesize() as u64),
        a if a.is_power_of_two() => Ok(a),
        a => Err(Error::InvalidAlignment { addr, align: a }),
    }
}
