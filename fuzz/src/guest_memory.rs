// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `GuestMemory` range arithmetic against a model. The input lays out up to four regions
//! (anywhere in the 64-bit space, contiguous or not, valid or not) and then runs accesses at
//! addresses and lengths chosen to sit on the edges: region starts and ends, holes, the top
//! of the address space, lengths of 0, one past a page, and `usize::MAX`. Each answer is
//! compared with what a plain list of regions and a shadow copy of their bytes say it must
//! be: whether it succeeds, how many bytes it moves, and the bytes themselves.

use vm_memory::{Error, GuestAddress, GuestMemory};

use crate::input::Input;

const PAGE: u64 = 4096;

/// The model: each region's start and a shadow of its bytes.
struct Model {
    regions: Vec<(u64, Vec<u8>)>,
}

impl Model {
    fn end(&self, i: usize) -> u64 {
        self.regions[i].0 + self.regions[i].1.len() as u64
    }

    /// The region holding `addr`, and the offset in it.
    fn find(&self, addr: u64) -> Option<(usize, usize)> {
        (0..self.regions.len())
            .find(|&i| self.regions[i].0 <= addr && addr < self.end(i))
            .map(|i| (i, (addr - self.regions[i].0) as usize))
    }

    /// Whether `addr..addr + len` is all memory, across contiguous regions (for `len` 0:
    /// whether `addr` is).
    fn covered(&self, addr: u64, len: u64) -> bool {
        let Some((mut i, _)) = self.find(addr) else {
            return false;
        };
        let Some(end) = addr.checked_add(len) else {
            return false;
        };
        while self.end(i) < end {
            match self.regions.get(i + 1) {
                Some((next, _)) if *next == self.end(i) => i += 1,
                _ => return false,
            }
        }
        true
    }

    /// Whether `addr..addr + len` lies in one region (for `len` 0: whether `addr` is in one).
    fn in_one(&self, addr: u64, len: u64) -> bool {
        self.find(addr).is_some_and(|(i, off)| {
            (off as u64)
                .checked_add(len)
                .is_some_and(|end| end <= self.regions[i].1.len() as u64)
        })
    }

    /// Applies `f(byte index in the range, byte)` to each byte of a covered range.
    fn bytes_mut(&mut self, addr: u64, len: usize, mut f: impl FnMut(usize, &mut u8)) {
        for k in 0..len {
            let (i, off) = self.find(addr + k as u64).expect("a covered range");
            f(k, &mut self.regions[i].1[off]);
        }
    }

    fn read(&mut self, addr: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0; len];
        self.bytes_mut(addr, len, |k, b| out[k] = *b);
        out
    }

    fn write(&mut self, addr: u64, data: &[u8]) {
        self.bytes_mut(addr, data.len(), |k, b| *b = data[k]);
    }
}

/// Up to four regions from the input; `None` when `GuestMemory` refused the layout, which
/// is checked against the layout rules.
fn layout(input: &mut Input) -> Option<(GuestMemory, Model)> {
    let count = 1 + usize::from(input.u8() % 4);
    let mut ranges = Vec::new();
    let mut next = 0u64;
    for _ in 0..count {
        let how = input.u8();
        let pages = 1 + u64::from(input.u8() % 8);
        let size = match how >> 6 {
            0 => pages * PAGE,
            1 => pages * PAGE + u64::from(input.u16()), // mostly unaligned
            2 => 0,
            _ => pages * PAGE,
        };
        let addr = match how & 7 {
            // Right after the previous one: contiguous regions.
            0..=2 => next,
            // A page-sized hole after it.
            3 | 4 => next.wrapping_add(PAGE),
            // Anywhere in the low 4 GiB, page-aligned or not.
            5 => u64::from(input.u32()),
            // At the top of the address space: the last pages, or past them.
            6 => u64::MAX - pages * PAGE + 1 - u64::from(input.u8() % 2) * PAGE,
            _ => u64::from(input.u16()) * PAGE,
        };
        next = addr.wrapping_add(size);
        ranges.push((GuestAddress(addr), size));
    }
    let valid = ranges.iter().all(|&(a, s)| {
        s != 0 && a.0.is_multiple_of(PAGE) && s.is_multiple_of(PAGE) && a.0.checked_add(s).is_some()
    }) && ranges.windows(2).all(|w| w[0].0 .0 + w[0].1 <= w[1].0 .0);
    match GuestMemory::new(&ranges) {
        Ok(mem) => {
            assert!(valid, "accepted an invalid layout {ranges:x?}");
            let regions = ranges
                .iter()
                .map(|&(a, s)| (a.0, vec![0; s as usize]))
                .collect();
            Some((mem, Model { regions }))
        }
        Err(e) => {
            assert!(!valid, "refused a valid layout {ranges:x?}: {e}");
            None
        }
    }
}

/// An address near something interesting in `model`.
fn address(input: &mut Input, model: &Model) -> u64 {
    let pick = input.u8();
    let delta = i64::from(input.u8() as i8);
    let base = match pick % 6 {
        0 => return input.u64(),
        1 => u64::MAX,
        2 => 0,
        3 => {
            let (start, _) = &model.regions[usize::from(pick / 6) % model.regions.len()];
            *start
        }
        _ => model.end(usize::from(pick / 6) % model.regions.len()),
    };
    base.wrapping_add_signed(delta)
}

/// A length for an access that copies (at most three pages and a bit).
fn small_len(input: &mut Input) -> usize {
    match input.u8() % 8 {
        0 => 0,
        1 => 1,
        2 => [2, 3, 4, 7, 8, 16][usize::from(input.u8() % 6)],
        3 => PAGE as usize,
        4 => PAGE as usize + 1,
        _ => usize::from(input.u16() % (3 * PAGE as u16 + 8)),
    }
}

/// A length for an access that only checks.
fn any_len(input: &mut Input, addr: u64) -> u64 {
    match input.u8() % 4 {
        0 => u64::MAX,
        1 => u64::MAX - addr,
        2 => (u64::MAX - addr).wrapping_add(1),
        _ => small_len(input) as u64,
    }
}

/// Runs the input. Panics if `GuestMemory` and the model disagree.
pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let Some((mem, mut model)) = layout(&mut input) else {
        return;
    };
    let mut fill = 1u8;
    let mut ops = 0;
    while !input.is_empty() && ops < 256 {
        ops += 1;
        let op = input.u8();
        let addr = address(&mut input, &model);
        let ga = GuestAddress(addr);
        match op % 11 {
            0 => {
                let len = small_len(&mut input);
                let data: Vec<u8> = (0..len).map(|k| fill.wrapping_add(k as u8)).collect();
                fill = fill.wrapping_add(31);
                let ok = model.covered(addr, len as u64);
                match mem.write_all_at_addr(&data, ga) {
                    Ok(()) => {
                        assert!(ok, "write_all of {len} at {addr:#x} outside memory");
                        model.write(addr, &data);
                    }
                    Err(e) => assert!(!ok, "write_all of {len} at {addr:#x} refused: {e}"),
                }
            }
            1 => {
                let len = small_len(&mut input);
                let mut buf = vec![0xee; len];
                let ok = model.covered(addr, len as u64);
                match mem.read_exact_at_addr(&mut buf, ga) {
                    Ok(()) => {
                        assert!(ok, "read_exact of {len} at {addr:#x} outside memory");
                        assert_eq!(buf, model.read(addr, len), "read_exact at {addr:#x}");
                    }
                    Err(e) => {
                        assert!(!ok, "read_exact of {len} at {addr:#x} refused: {e}");
                        assert!(buf.iter().all(|&b| b == 0xee), "a refused read wrote");
                    }
                }
            }
            2 => {
                // Up to the end of one region.
                let len = small_len(&mut input);
                let mut buf = vec![0; len];
                match (mem.read_at_addr(&mut buf, ga), model.find(addr)) {
                    (Ok(n), Some((i, off))) => {
                        assert_eq!(n, len.min(model.regions[i].1.len() - off));
                        assert_eq!(buf[..n], model.read(addr, n)[..]);
                    }
                    (Err(Error::InvalidGuestAddress(a)), None) => assert_eq!(a, ga),
                    (got, want) => panic!("read_at_addr {addr:#x}: {got:?} vs model {want:?}"),
                }
            }
            3 => {
                let len = small_len(&mut input);
                let data = vec![fill; len];
                fill = fill.wrapping_add(7);
                match (mem.write_at_addr(&data, ga), model.find(addr)) {
                    (Ok(n), Some((i, off))) => {
                        assert_eq!(n, len.min(model.regions[i].1.len() - off));
                        model.write(addr, &data[..n]);
                    }
                    (Err(Error::InvalidGuestAddress(a)), None) => assert_eq!(a, ga),
                    (got, want) => panic!("write_at_addr {addr:#x}: {got:?} vs model {want:?}"),
                }
            }
            4 => {
                let value = input.u64();
                let ok = model.covered(addr, 8);
                match mem.write_obj_at_addr(value, ga) {
                    Ok(()) => {
                        assert!(ok, "u64 written at {addr:#x} outside memory");
                        model.write(addr, &value.to_le_bytes());
                    }
                    Err(e) => assert!(!ok, "u64 at {addr:#x} refused: {e}"),
                }
                let ok2 = model.covered(addr, 2);
                match mem.read_obj_from_addr::<u16>(ga) {
                    Ok(v) => {
                        assert!(ok2);
                        assert_eq!(v.to_le_bytes()[..], model.read(addr, 2)[..]);
                    }
                    Err(_) => assert!(!ok2, "u16 at {addr:#x} refused"),
                }
            }
            5 => {
                // Volatile: aligned within one region, or across contiguous ones.
                let ok = model.covered(addr, 4) && addr.is_multiple_of(4);
                match mem.read_obj_from_addr_volatile::<u32>(ga) {
                    Ok(v) => {
                        assert!(ok, "volatile u32 at {addr:#x}");
                        assert_eq!(v.to_le_bytes()[..], model.read(addr, 4)[..]);
                    }
                    Err(e) => assert!(!ok, "volatile u32 at {addr:#x} refused: {e}"),
                }
            }
            6 => {
                let len = any_len(&mut input, addr);
                let Ok(ulen) = usize::try_from(len) else {
                    continue;
                };
                match mem.get_slice_at_addr(ga, ulen) {
                    Ok(slice) => {
                        assert!(model.in_one(addr, len), "slice {addr:#x}+{len:#x}");
                        assert_eq!(slice.size(), ulen);
                    }
                    Err(Error::RangeSpansRegions { .. }) => {
                        assert!(model.covered(addr, len) && !model.in_one(addr, len))
                    }
                    Err(e) => assert!(!model.covered(addr, len), "slice refused: {e}"),
                }
            }
            7 => {
                let len = any_len(&mut input, addr);
                assert_eq!(
                    mem.is_valid_range(ga, len),
                    model.covered(addr, len.max(1)),
                    "is_valid_range({addr:#x}, {len:#x})"
                );
                let offset = any_len(&mut input, addr);
                let want = addr
                    .checked_add(offset)
                    .filter(|a| model.find(*a).is_some())
                    .map(GuestAddress);
                assert_eq!(mem.checked_offset(ga, offset), want);
                assert_eq!(mem.address_in_range(ga), model.find(addr).is_some());
            }
            8 => {
                let len = any_len(&mut input, addr);
                let end = addr.saturating_add(len);
                // An empty range overlaps nothing.
                let want = addr < end
                    && (0..model.regions.len())
                        .any(|i| model.regions[i].0 < end && addr < model.end(i));
                assert_eq!(
                    mem.range_overlap(ga, GuestAddress(end)),
                    want,
                    "range_overlap({addr:#x}, {end:#x})"
                );
            }
            9 => {
                let len = any_len(&mut input, addr);
                let Ok(ulen) = usize::try_from(len) else {
                    continue;
                };
                match mem.get_host_address_range(ga, ulen) {
                    Ok(host) => {
                        assert!(ulen > 0 && model.in_one(addr, len));
                        assert_eq!(Ok(host), mem.get_host_address(ga).map_err(|_| ()));
                    }
                    Err(Error::ZeroLength { .. }) => assert_eq!(ulen, 0),
                    Err(e) => assert!(!model.in_one(addr, len), "host range refused: {e}"),
                }
            }
            _ => {
                // Page-granular: MADV_REMOVE zeroes what it covers.
                let count = any_len(&mut input, addr);
                // A count of 0 only checks the address.
                let rounded = count.checked_next_multiple_of(PAGE);
                let ok = if count == 0 {
                    model.find(addr).is_some()
                } else {
                    addr.is_multiple_of(PAGE) && rounded.is_some_and(|r| model.covered(addr, r))
                };
                match mem.remove_range(ga, count) {
                    Ok(()) => {
                        assert!(ok, "remove_range({addr:#x}, {count:#x}) outside memory");
                        let n = rounded.unwrap_or(0) as usize;
                        model.bytes_mut(addr, n, |_, b| *b = 0);
                    }
                    Err(e) => assert!(!ok, "remove_range({addr:#x}, {count:#x}) refused: {e}"),
                }
            }
        }
    }
}
