// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Address-to-region lookup in constant time for sensible layouts, logarithmic at worst.
//!
//! The span from the first region's start to the last region's end is cut into at most
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

/// Lookup over sorted, non-overlapping `[start, end)` ranges.
#[derive(Debug)]
pub(crate) struct RegionTable {
    starts: Box<[u64]>,
    ends: Box<[u64]>,
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
    /// Builds the table. `ranges` must be non-empty, sorted, non-overlapping, with
    /// `start < end`, which the caller has checked.
    pub fn new(ranges: &[(u64, u64)]) -> RegionTable {
        debug_assert!(!ranges.is_empty());
        let starts: Box<[u64]> = ranges.iter().map(|r| r.0).collect();
        let ends: Box<[u64]> = ranges.iter().map(|r| r.1).collect();
        let base = starts[0];
        let span = ends[ends.len() - 1] - base;
        let wanted = (ranges.len() * BUCKETS_PER_REGION)
            .next_power_of_two()
            .min(MAX_BUCKETS);
        // The smallest shift with (span - 1) >> shift < wanted.
        let span_bits = 64 - (span - 1).leading_zeros();
        let shift = span_bits.saturating_sub(wanted.trailing_zeros());
        let count = ((span - 1) >> shift) as usize + 1;
        let last = ranges.len() - 1;
        let buckets = (0..count as u64)
            .map(|b| {
                let bucket_start = base + (b << shift);
                // Saturates only for the last bucket of a span reaching the top of memory.
                let bucket_end = bucket_start.saturating_add(1 << shift);
                let lo = ends.partition_point(|&e| e <= bucket_start).min(last);
                let hi = starts
                    .partition_point(|&s| s < bucket_end)
                    .saturating_sub(1)
                    .max(lo);
                Bucket {
                    lo: lo as u32,
                    hi: hi as u32,
                }
            })
            .collect();
        RegionTable {
            starts,
            ends,
            base,
            span,
            shift,
            buckets,
        }
    }

    /// The index of the range holding `addr`, if any.
    #[inline(always)]
    pub fn find(&self, addr: u64) -> Option<usize> {
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
        (self.starts[index] <= addr && addr < self.ends[index]).then_some(index)
    }

    #[cold]
    fn search(&self, lo: usize, hi: usize, addr: u64) -> Option<usize> {
        let above = self.starts[lo..=hi].partition_point(|&s| s <= addr);
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

    fn check_all_edges(ranges: &[(u64, u64)]) {
        let table = RegionTable::new(ranges);
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
                table.find(addr),
                linear(ranges, addr),
                "addr {addr:#x} in {ranges:x?}"
            );
        }
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
            let table = RegionTable::new(&ranges);
            for _ in 0..2000 {
                let addr = rng.random_range(ranges[0].0.saturating_sub(10)..cur + 10);
                assert_eq!(table.find(addr), linear(&ranges, addr));
            }
        }
    }
}
