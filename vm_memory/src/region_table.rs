// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Address-to-region lookup in constant time, with no branch that depends on the address for
//! any layout whose regions are not packed tighter than eight to a table bucket.
//!
//! An access first checks the largest region, with one comparison that decides both "in it"
//! and "fits in it": for one RAM region, or RAM below and above a PCI hole, most accesses stop
//! there. Then the exact map: the span from the first region's start to the last region's end
//! cut into at most [`EXACT`] power-of-two sized buckets, as large as the region boundaries
//! allow, kept inline, each holding the host address of its first byte when the whole bucket
//! lies in one region. For the layouts VMMs use (evenly sized slots, regions on large
//! power-of-two boundaries) every region starts and ends on a bucket boundary, and an access
//! costs a subtraction, a shift, one load and two compares, with few loads of the table:
//! the fewer loads an access keeps in flight, the more cache misses a stream of independent
//! accesses can overlap.
//!
//! Everything else goes through the region index: the span cut into at most
//! `BUCKETS_PER_REGION * n` buckets, each naming the first region that reaches into it; the
//! region holding an address is that one or one of the next few, found by a search over a
//! window of their start addresses whose depth is fixed for the whole table (0 steps when no
//! bucket holds two regions, 3 when one holds eight), so the only branches are the same for
//! every lookup. A bucket holding more than eight regions (tiny regions packed in a huge
//! span) falls back to a binary search over them. The index is out of line and cold, so that
//! a call site inlines only the two checks above.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Buckets of the exact map (8 bytes each, inline in the table): room for a thousand evenly
/// spaced slots with holes between them.
const EXACT: usize = 2048;
/// An exact-map bucket that does not lie wholly in one region.
const NOT_EXACT: usize = usize::MAX;
/// Regions a bucket may hold and still be searched without a branch.
const WINDOW: usize = 8;
/// Marks a bucket that holds more than `WINDOW` regions.
const CROWDED: u32 = 1 << 31;
/// Most buckets per region: enough that evenly sized regions get one bucket each or better.
const BUCKETS_PER_REGION: usize = 4;
/// A ceiling on the table (4 bytes a bucket) whatever the region count.
const MAX_BUCKETS: usize = 1 << 16;

/// What a lookup needs of a region: where it starts, how long it is, and where its first
/// byte is in the host.
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
    /// The first region's start, where both maps begin.
    base: u64,
    /// log2 of the exact map's bucket size.
    exact_shift: u32,
    /// The host address of each exact-map bucket's first byte, or `NOT_EXACT`.
    exact: [usize; EXACT],
    /// The largest region, checked before anything else.
    fast: Entry,
    fast_index: usize,
    /// The largest region's length as writes see it: 0 while dirty tracking is on, so that
    /// every write takes the path that marks its pages, and the fast path of a write with
    /// tracking off is the very instructions of a read.
    fast_write_len: AtomicU64,
    /// Whether writes through this table must be marked dirty.
    tracking: AtomicBool,
    /// How many times tracking has been switched off: the same value at two points means no
    /// write between them went unmarked.
    tracking_epoch: AtomicU64,
    shift: u32,
    /// Search steps over a bucket's window: log2 of the most regions a bucket holds, at most
    /// 3 (`WINDOW`).
    steps: u32,
    /// The first region reaching into each bucket, or'ed with `CROWDED` when more than
    /// `WINDOW` do.
    buckets: Box<[u32]>,
    /// Every region's start, then `WINDOW - 1` copies of `u64::MAX`, so that a window of
    /// `WINDOW` starts from any region is in bounds and its padding is never chosen.
    starts: Box<[u64]>,
    entries: Box<[Entry]>,
}

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
        let mut most = 1;
        let buckets = (0..count as u64)
            .map(|b| {
                let bucket_start = base + (b << shift);
                // Saturates only for the last bucket of a span reaching the top of memory.
                let bucket_end = bucket_start.saturating_add(1 << shift);
                // The first region ending after the bucket's start, and how many start in it
                // or before and reach into it. A bucket in a hole names the next region,
                // which the bounds check then refuses.
                let lo = entries
                    .partition_point(|e| e.start + e.len <= bucket_start)
                    .min(last);
                let hi = entries.partition_point(|e| e.start < bucket_end);
                let held = hi.saturating_sub(lo).max(1);
                if held > WINDOW {
                    return lo as u32 | CROWDED;
                }
                most = most.max(held);
                lo as u32
            })
            .collect();
        // The first of the largest regions.
        let fast_index = (0..entries.len())
            .rev()
            .max_by_key(|&i| entries[i].len)
            .unwrap_or(0);
        let starts = entries
            .iter()
            .map(|e| e.start)
            .chain([u64::MAX; WINDOW - 1])
            .collect();
        let (exact_shift, exact) = exact_map(entries, base, span);
        RegionTable {
            base,
            exact_shift,
            exact,
            fast: entries[fast_index],
            fast_index,
            fast_write_len: AtomicU64::new(entries[fast_index].len),
            tracking: AtomicBool::new(false),
            tracking_epoch: AtomicU64::new(0),
            shift,
            steps: most.next_power_of_two().trailing_zeros(),
            buckets,
            starts,
            entries: entries.into(),
        }
    }

    /// The index and entry of the region holding `addr`, and the offset of `addr` in it.
    #[inline(always)]
    pub fn find(&self, addr: u64) -> Option<(usize, &Entry, u64)> {
        if let Some(offset) = self.fast.offset_of(addr) {
            return Some((self.fast_index, &self.fast, offset));
        }
        self.find_indexed(addr)
    }

    /// [`find`](Self::find) past the largest region: cold and out of line at the call site,
    /// for the reasons of [`find_host_indexed`](Self::find_host_indexed), so that callers
    /// that inline `find` inline only the one comparison.
    #[cold]
    #[inline]
    fn find_indexed(&self, addr: u64) -> Option<(usize, &Entry, u64)> {
        self.find_in_buckets(addr)
    }

    /// The host address of `addr` when all of `addr..addr + len` lies in one region: the
    /// question every access asks first.
    #[inline(always)]
    pub fn find_host(&self, addr: u64, len: u64) -> Option<usize> {
        // The largest region first: one comparison decides both "in it" and "fits in it".
        let offset = addr.wrapping_sub(self.fast.start);
        if let Some(room) = self.fast.len.checked_sub(len) {
            if offset <= room && offset < self.fast.len {
                return Some(self.fast.host.wrapping_add(offset as usize));
            }
        }
        let rel = addr.wrapping_sub(self.base);
        // Below the base `rel` wraps to a huge value, whose bucket is past the map.
        let bucket = rel.wrapping_shr(self.exact_shift);
        if let Some(&host) = self
            .exact
            .get(usize::try_from(bucket).unwrap_or(usize::MAX))
        {
            // The access's last byte is in the same bucket (for a compile-time `len` of 1
            // this folds away); a length that would wrap past the top is never in it.
            let last = rel
                .checked_add(len.max(1) - 1)
                .map(|end| end.wrapping_shr(self.exact_shift));
            if host != NOT_EXACT && last == Some(bucket) {
                let within = rel - bucket.wrapping_shl(self.exact_shift);
                return Some(host.wrapping_add(within as usize));
            }
        }
        self.find_host_indexed(addr, len)
    }

    /// [`find_host`](Self::find_host) for an access that writes: `None` (so that the caller
    /// takes its slow path, which marks the pages) whenever dirty tracking is on.
    #[inline(always)]
    pub fn find_host_for_write(&self, addr: u64, len: u64) -> Option<usize> {
        // A relaxed atomic load is a plain load: the same instructions as `find_host`'s.
        let fast_len = self.fast_write_len.load(Ordering::Relaxed);
        let offset = addr.wrapping_sub(self.fast.start);
        if let Some(room) = fast_len.checked_sub(len) {
            if offset <= room && offset < fast_len {
                return Some(self.fast.host.wrapping_add(offset as usize));
            }
        }
        if self.tracking.load(Ordering::Relaxed) {
            return None;
        }
        self.find_host(addr, len)
    }

    /// Turns the marking of writes on or off (see `find_host_for_write`).
    pub fn set_tracking(&self, on: bool) {
        if !on {
            self.tracking_epoch.fetch_add(1, Ordering::SeqCst);
        }
        self.tracking.store(on, Ordering::SeqCst);
        let len = if on { 0 } else { self.fast.len };
        self.fast_write_len.store(len, Ordering::SeqCst);
    }

    /// How many times tracking has been switched off.
    pub fn tracking_epoch(&self) -> u64 {
        self.tracking_epoch.load(Ordering::SeqCst)
    }

    /// Whether writes must be marked.
    #[inline(always)]
    pub fn tracking(&self) -> bool {
        self.tracking.load(Ordering::Relaxed)
    }

    /// [`find_host`](Self::find_host) for what the fast region and the exact map do not
    /// cover: buckets that hold a region boundary, and accesses that cross a bucket's end.
    /// Cold, so that the optimizer keeps it out of line and a call site inlines only the few
    /// instructions of the common case; `#[inline]`, so that it is compiled in the caller's
    /// crate, where the optimizer sees that it writes no memory and keeps the caller's values,
    /// the table's fields among them, in registers across the call.
    #[cold]
    #[inline]
    fn find_host_indexed(&self, addr: u64, len: u64) -> Option<usize> {
        let (_, entry, offset) = self.find_in_buckets(addr)?;
        (len <= entry.len - offset).then(|| entry.host.wrapping_add(offset as usize))
    }

    #[inline(always)]
    fn find_in_buckets(&self, addr: u64) -> Option<(usize, &Entry, u64)> {
        // Below the base the subtraction wraps to an index past the table.
        let rel = addr.wrapping_sub(self.base);
        let bucket = *self.buckets.get(usize::try_from(rel >> self.shift).ok()?)?;
        let index = if bucket & CROWDED == 0 {
            self.search_window(bucket as usize, addr)
        } else {
            self.search_crowded((bucket & !CROWDED) as usize, addr)
        };
        let entry = self.entries.get(index)?;
        entry.offset_of(addr).map(|offset| (index, entry, offset))
    }

    /// The last region among `first..first + WINDOW` that starts at or before `addr`, or
    /// `first`: up to three halvings, each a conditional move rather than a branch (an
    /// address-dependent branch would mispredict about half the time), and a branch only on
    /// the table's depth, which is the same for every lookup.
    #[inline(always)]
    fn search_window(&self, first: usize, addr: u64) -> usize {
        if self.steps == 0 {
            return first;
        }
        let Some(window) = self.starts.get(first..first + WINDOW) else {
            return first;
        };
        // `i + half` is at most 7 (4 + 2 + 1); a miss reads as "past `addr`".
        let below = |j: usize| window.get(j).is_some_and(|&start| start <= addr);
        let step =
            |i: usize, half: usize| std::hint::select_unpredictable(below(i + half), i + half, i);
        let i = match self.steps {
            1 => step(0, 1),
            2 => step(step(0, 2), 1),
            _ => step(step(step(0, 4), 2), 1),
        };
        first + i
    }

    /// The region holding `addr` among the many that reach into a crowded bucket, from
    /// `first` on: a binary search, which only layouts of tiny regions packed in a huge span
    /// need.
    #[inline]
    fn search_crowded(&self, first: usize, addr: u64) -> usize {
        let starts = self
            .starts
            .get(first..self.entries.len())
            .unwrap_or_default();
        first + starts.partition_point(|&s| s <= addr).saturating_sub(1)
    }

    /// How many buckets the table holds (for tests of its size bound).
    #[cfg(test)]
    fn bucket_count(&self) -> usize {
        self.buckets.len()
    }
}

/// The exact map of a layout: the finest power-of-two bucket size that cuts `span` into at
/// most [`EXACT`] buckets, and for each bucket the host address of its first byte if the
/// whole bucket lies in one region, else [`NOT_EXACT`]. Buckets past the span are
/// [`NOT_EXACT`] too.
fn exact_map(entries: &[Entry], base: u64, span: u64) -> (u32, [usize; EXACT]) {
    // The smallest shift with (span - 1) >> shift < EXACT: the finest buckets the map has
    // room for...
    let span_bits = 64 - (span - 1).leading_zeros();
    let finest = span_bits.saturating_sub(EXACT.trailing_zeros());
    // ...but no finer than every region boundary needs: fewer, larger buckets keep the map's
    // part in use to a few cache lines, which stay cached however many misses the accesses
    // themselves cause.
    let boundaries = entries
        .iter()
        .flat_map(|e| [e.start - base, e.start - base + e.len])
        .fold(0u64, |acc, b| acc | b);
    let aligned = boundaries.trailing_zeros().min(63);
    let shift = aligned.max(finest);
    let mut exact = [NOT_EXACT; EXACT];
    for (b, slot) in exact.iter_mut().enumerate() {
        let Some(start) = (b as u64)
            .checked_shl(shift)
            .and_then(|off| base.checked_add(off))
        else {
            break;
        };
        if start - base >= span {
            break;
        }
        // The region holding the bucket's first byte, and whether it reaches its last.
        let i = entries.partition_point(|e| e.start <= start);
        let Some(e) = i.checked_sub(1).map(|i| &entries[i]) else {
            continue;
        };
        // A bucket reaching past the top of the address space is never exact.
        let Some(last) = start.checked_add((1u64 << shift) - 1) else {
            break;
        };
        if e.offset_of(start).is_some() && e.offset_of(last).is_some() {
            *slot = e.host.wrapping_add((start - e.start) as usize);
        }
    }
    (shift, exact)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The obvious answer, for comparison: the last range starting at or before `addr`, if it
    /// holds `addr` (`ranges` are sorted, so std's binary search finds it).
    fn linear(ranges: &[(u64, u64)], addr: u64) -> Option<usize> {
        let i = ranges.partition_point(|&(s, _)| s <= addr).checked_sub(1)?;
        (addr < ranges[i].1).then_some(i)
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

    /// The obvious answer to `find_host`: the host address of `addr` if one region holds
    /// all of `addr..addr + len`.
    fn linear_host(ranges: &[(u64, u64)], addr: u64, len: u64) -> Option<usize> {
        let (s, e) = ranges[linear(ranges, addr)?];
        (len <= e - addr).then(|| (s as usize ^ 0x5a5a).wrapping_add((addr - s) as usize))
    }

    fn check_host(table: &RegionTable, ranges: &[(u64, u64)], addr: u64) {
        for len in [
            0,
            1,
            2,
            8,
            4096,
            1 << 20,
            u64::MAX,
            u64::MAX - 0xfff,
            1 << 63,
        ] {
            assert_eq!(
                table.find_host(addr, len),
                linear_host(ranges, addr, len),
                "addr {addr:#x} len {len:#x} in {ranges:x?}"
            );
        }
    }

    fn check_all_edges(ranges: &[(u64, u64)]) {
        check_edges(ranges, true);
    }

    /// Probes the edges of every region (and, with `exact_edges`, of every exact-map bucket)
    /// against the obvious answers.
    fn check_edges(ranges: &[(u64, u64)], exact_edges: bool) {
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
        // And both sides of every exact-map bucket boundary.
        for b in (0..=EXACT as u64).filter(|_| exact_edges) {
            if let Some(at) = (b << table.exact_shift).checked_add(table.base) {
                probes.extend([at.wrapping_sub(8), at.wrapping_sub(1), at]);
            }
        }
        for addr in probes {
            assert_eq!(
                find(&table, addr),
                linear(ranges, addr),
                "addr {addr:#x} in {ranges:x?}"
            );
            check_host(&table, ranges, addr);
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
    fn vmm_layouts_are_wholly_in_the_exact_map() {
        let gib = 1u64 << 30;
        for ranges in [
            vec![(0, 64 << 20)],
            vec![(0, 3 * gib), (4 * gib, 6 * gib)],
            (0..64)
                .map(|i| (i * (8 << 20), i * (8 << 20) + (4 << 20)))
                .collect(),
        ] {
            let table = table(&ranges);
            let covered = table.exact.iter().filter(|&&h| h != NOT_EXACT).count() as u64;
            let bucket = 1u64 << table.exact_shift;
            let bytes: u64 = ranges.iter().map(|&(s, e)| e - s).sum();
            assert_eq!(covered * bucket, bytes, "{ranges:x?}");
            check_all_edges(&ranges);
        }
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
            check_edges(&ranges, false);
            let table = table(&ranges);
            for _ in 0..2000 {
                let addr = rng.random_range(ranges[0].0.saturating_sub(10)..cur + 10);
                assert_eq!(find(&table, addr), linear(&ranges, addr));
                check_host(&table, &ranges, addr);
            }
        }
    }
}
