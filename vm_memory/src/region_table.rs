// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Address-to-region lookup in constant time for sensible layouts, logarithmic at worst.
//!
//! The largest region is checked first with one comparison, inline: for the common layouts
//! (one RAM region, or RAM below and above a PCI hole) most accesses stop there. Otherwise the
//! span from the first region's start to the last region's end is cut into at most
//! `4 * n` (power-of-two sized) buckets. Each bucket records the first and last region that
//! reach into it, so a lookup is a subtraction, a shift, one table load and a bounds check.
//! Only a bucket that several regions share (tiny regions next to huge ones) falls back to a
//! binary search, and only over those regions.

/// The regions that reach into one bucket, as indexes `lo..=hi`. `lo > hi` never happens:
/// a bucket in a hole points at any region and the bounds check then fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Bucket {
    lo: u32,
    hi: u32,
}

/// What a lookup needs of a region, packed in one cache line's worth: where it starts, how
/// long it is, and where its first byte is in the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub start: u64,
    pub len: u64,
    pub host: usize,
}

impl Entry {
    /// The offset of `addr` in this region, if it is in it.
    #[inline(always)]
    pub fn offset_of(&self, addr: u64) -> Option<u64> {
        let offset = addr.wrapping_sub(self.start);
        (offset < self.len).then_some(offset)
    }
}

/// Lookup over sorted, non-overlapping regions.
#[derive(Debug)]
pub(crate) struct RegionTable {
    /// The largest region, checked before anything else.
    fast: Entry,
    fast_index: usize,
    entries: Box<[Entry]>,
    base: u64,
    span: u64,
    shift: u32,
    buckets: Box<[Bucket]>,
}

/// Most buckets per region: enough that evenly sized regions get one bucket each or better.
const BUCKETS_PER_REGION: usize = 4;
/// A ceiling on the table (8 bytes a bucket) whatever the region count.
const MAX_BUCKETS: usize = 1 << 16;

impl RegionTable {
    /// Builds the table. `entries` must be non-empty, sorted, non-overlapping, with
    /// non-zero lengths and `start + len` not overflowing, which the caller has checked.
    pub fn new(entries: &[Entry]) -> RegionTable {
        debug_assert!(!entries.is_empty());
        let base = entries[0].start;
        let last = entries.len() - 1;
        let span = entries[last].start + entries[last].len - base;
        let wanted = (entries.len() * BUCKETS_PER_REGION)
            .next_power_of_two()
            .min(MAX_BUCKETS);
        // The smallest shift with (span - 1) >> shift < wanted.
        let span_bits = 64 - (span - 1).leading_zeros();
        let shift = span_bits.saturating_sub(wanted.trailing_zeros());
        let count = ((span - 1) >> shift) as usize + 1;
        let buckets = (0..count as u64)
            .map(|b| {
                let bucket_start = base + (b << shift);
                // Saturates only for the last bucket of a span reaching the top of memory.
                let bucket_end = bucket_start.saturating_add(1 << shift);
                let lo = entries
                    .partition_point(|e| e.start + e.len <= bucket_start)
                    .min(last);
                let hi = entries
                    .partition_point(|e| e.start < bucket_end)
                    .saturating_sub(1)
                    .max(lo);
                Bucket {
                    lo: lo as u32,
                    hi: hi as u32,
                }
            })
            .collect();
        // The first of the largest regions.
        let fast_index = (0..entries.len())
            .rev()
            .max_by_key(|&i| entries[i].len)
            .unwrap_or(0);
        RegionTable {
            fast: entries[fast_index],
            fast_index,
            entries: entries.into(),
            base,
            span,
            shift,
            buckets,
        }
    }

    /// The index and entry of the region holding `addr`, and the offset of `addr` in it.
    #[inline(always)]
    pub fn find(&self, addr: u64) -> Option<(usize, &Entry, u64)> {
        if let Some(offset) = self.fast.offset_of(addr) {
            return Some((self.fast_index, &self.fast, offset));
        }
        self.find_in_buckets(addr)
    }

    #[inline]
    fn find_in_buckets(&self, addr: u64) -> Option<(usize, &Entry, u64)> {
        let rel = addr.wrapping_sub(self.base);
        if rel >= self.span {
            return None;
        }
        let Bucket { lo, hi } = self.buckets[(rel >> self.shift) as usize];
        let index = if lo == hi {
            lo as usize
        } else {
            self.search(lo as usize, hi as usize, addr)?
        };
        let entry = &self.entries[index];
        entry.offset_of(addr).map(|offset| (index, entry, offset))
    }

    #[cold]
    fn search(&self, lo: usize, hi: usize, addr: u64) -> Option<usize> {
        let above = self.entries[lo..=hi].partition_point(|e| e.start <= addr);
        above.checked_sub(1).map(|i| lo + i)
    }

    /// How many buckets the table holds (for tests of its size bound).
    #[cfg(test)]
    fn bucket_count(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The obvious answer, for comparison.
    fn linear(ranges: &[(u64, u64)], addr: u64) -> Option<usize> {
        ranges.iter().position(|&(s, e)| s <= addr && addr < e)
    }

    fn table(ranges: &[(u64, u64)]) -> RegionTable {
        let entries: Vec<Entry> = ranges
            .iter()
            .map(|&(s, e)| Entry {
                start: s,
                len: e - s,
                host: s as usize ^ 0x5a5a,
            })
            .collect();
        RegionTable::new(&entries)
    }

    fn find(table: &RegionTable, addr: u64) -> Option<usize> {
        let (index, entry, offset) = table.find(addr)?;
        assert_eq!(entry.start + offset, addr);
        assert_eq!(entry.host, entry.start as usize ^ 0x5a5a);
        Some(index)
    }

    fn check_all_edges(ranges: &[(u64, u64)]) {
        let table = table(ranges);
        assert!(table.bucket_count() <= (ranges.len() * 4).next_power_of_two().min(MAX_BUCKETS));
        let mut probes = vec![0, 1, u64::MAX, u64::MAX - 1];
        for &(s, e) in ranges {
            probes.extend([
                s.wrapping_sub(1),
                s,
                s + 1,
                s + (e - s) / 2,
                e - 1,
                e,
                e.wrapping_add(1),
            ]);
        }
        for addr in probes {
            assert_eq!(
                find(&table, addr),
                linear(ranges, addr),
                "addr {addr:#x} in {ranges:x?}"
            );
        }
    }

    #[test]
    fn the_largest_region_is_the_fast_one() {
        let t = table(&[(0, 0x1000), (0x1000, 0x9000), (0x10000, 0x18000)]);
        assert_eq!(t.fast_index, 1);
        let t = table(&[(0, 0x1000), (0x2000, 0x3000)]);
        assert_eq!(t.fast_index, 0, "ties go to the first");
    }

    #[test]
    fn single_region() {
        check_all_edges(&[(0x1000, 0x2000)]);
        check_all_edges(&[(0, 1)]);
        check_all_edges(&[(0, u64::MAX)]);
        check_all_edges(&[(u64::MAX - 0x1000, u64::MAX)]);
    }

    #[test]
    fn holes_and_contiguous_regions() {
        check_all_edges(&[(0, 0x1000), (0x1000, 0x3000), (0x5000, 0x6000)]);
        check_all_edges(&[(0, 0xc000_0000), (0x1_0000_0000, 0x2_4000_0000)]);
    }

    #[test]
    fn tiny_regions_next_to_huge_ones_share_buckets() {
        let mut ranges: Vec<(u64, u64)> = (0..100)
            .map(|i| (i * 0x1000, i * 0x1000 + 0x1000))
            .collect();
        ranges.push((1 << 62, (1 << 62) + (1 << 40)));
        ranges.push((u64::MAX - 0x1000, u64::MAX));
        check_all_edges(&ranges);
    }

    #[test]
    fn many_even_regions() {
        for n in [2u64, 3, 64, 1000, 1024, 20000] {
            let ranges: Vec<(u64, u64)> = (0..n)
                .map(|i| (i * 0x20_0000, i * 0x20_0000 + 0x10_0000))
                .collect();
            check_all_edges(&ranges);
        }
    }

    #[test]
    fn random_layouts_match_a_linear_scan() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x7ab1e);
        for _ in 0..200 {
            let n = rng.random_range(1..200);
            let mut cur = rng.random_range(0..1u64 << 40);
            let mut ranges = Vec::new();
            for _ in 0..n {
                let bits = rng.random_range(0..36);
                let len = 1 + rng.random_range(0..1u64 << bits);
                let gap = if rng.random_bool(0.5) {
                    0
                } else {
                    rng.random_range(0..1u64 << 30)
                };
                ranges.push((cur, cur + len));
                cur += len + gap;
            }
            check_all_edges(&ranges);
            let table = table(&ranges);
            for _ in 0..2000 {
                let addr = rng.random_range(ranges[0].0.saturating_sub(10)..cur + 10);
                assert_eq!(find(&table, addr), linear(&ranges, addr));
            }
        }
    }
}
