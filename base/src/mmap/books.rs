// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The arena's books: an ordered map of non-overlapping sub-mappings, split and trimmed the
//! way the kernel splits its vmas on `munmap` and `mprotect`. Pure bookkeeping, no syscalls.

use std::collections::BTreeMap;
use std::ops::Bound;

use super::{Backing, Protection};

/// One sub-mapping of an arena.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArenaMapping {
    /// Offset from the start of the arena, page-aligned.
    pub offset: usize,
    /// Length in bytes, a whole number of pages.
    pub size: usize,
    /// Current protection.
    pub protection: Protection,
    /// What backs it.
    pub backing: Backing,
}

impl ArenaMapping {
    fn end(&self) -> usize {
        self.offset + self.size
    }

    /// The part of this mapping from `start` to `end`, which must lie inside it.
    pub(super) fn slice(&self, start: usize, end: usize) -> ArenaMapping {
        let backing = match self.backing {
            Backing::Anonymous => Backing::Anonymous,
            Backing::Descriptor { offset } => Backing::Descriptor {
                offset: offset + (start - self.offset) as u64,
            },
        };
        ArenaMapping {
            offset: start,
            size: end - start,
            protection: self.protection,
            backing,
        }
    }
}

/// Non-overlapping sub-mappings keyed by offset. Callers pass ranges with `offset + size`
/// already checked against overflow.
#[derive(Debug, Default)]
pub(super) struct Books {
    map: BTreeMap<usize, ArenaMapping>,
}

impl Books {
    /// Every sub-mapping, in offset order.
    pub fn iter(&self) -> impl Iterator<Item = &ArenaMapping> {
        self.map.values()
    }

    /// The sub-mappings that overlap `offset..offset + size`, in offset order (unclipped).
    pub fn overlapping(&self, offset: usize, size: usize) -> impl Iterator<Item = &ArenaMapping> {
        let end = offset + size;
        // The one that starts before `offset` may still reach into the range.
        let before = self
            .map
            .range(..offset)
            .next_back()
            .map(|(_, m)| m)
            .filter(|m| m.end() > offset);
        let inside = self
            .map
            .range((Bound::Included(offset), Bound::Excluded(end)))
            .map(|(_, m)| m);
        before.into_iter().chain(inside).filter(move |_| size > 0)
    }

    /// Records a mapping; the caller has checked that nothing overlaps it.
    pub fn insert(&mut self, mapping: ArenaMapping) {
        debug_assert!(self
            .overlapping(mapping.offset, mapping.size)
            .next()
            .is_none());
        self.map.insert(mapping.offset, mapping);
    }

    /// Forgets `offset..offset + size`, splitting mappings that straddle its edges.
    pub fn remove(&mut self, offset: usize, size: usize) {
        self.split_at(offset);
        self.split_at(offset + size);
        let starts: Vec<usize> = self
            .map
            .range(offset..offset + size)
            .map(|(&start, _)| start)
            .collect();
        for start in starts {
            self.map.remove(&start);
        }
    }

    /// Sets the protection of the mapped parts of `offset..offset + size`, splitting mappings
    /// that straddle its edges.
    pub fn protect(&mut self, offset: usize, size: usize, protection: Protection) {
        self.split_at(offset);
        self.split_at(offset + size);
        for (_, m) in self.map.range_mut(offset..offset + size) {
            m.protection = protection;
        }
    }

    /// Makes `at` a boundary between mappings if it falls strictly inside one.
    fn split_at(&mut self, at: usize) {
        let Some((&start, &m)) = self.map.range(..at).next_back() else {
            return;
        };
        if m.end() <= at {
            return;
        }
        self.map.insert(start, m.slice(start, at));
        self.map.insert(at, m.slice(at, m.end()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn anon(offset: usize, size: usize) -> ArenaMapping {
        ArenaMapping {
            offset,
            size,
            protection: Protection::read_write(),
            backing: Backing::Anonymous,
        }
    }

    fn file(offset: usize, size: usize, file_offset: u64) -> ArenaMapping {
        ArenaMapping {
            backing: Backing::Descriptor {
                offset: file_offset,
            },
            ..anon(offset, size)
        }
    }

    fn spans(books: &Books) -> Vec<(usize, usize)> {
        books.iter().map(|m| (m.offset, m.size)).collect()
    }

    #[test]
    fn overlap_queries() {
        let mut b = Books::default();
        b.insert(anon(0x1000, 0x2000));
        b.insert(anon(0x4000, 0x1000));
        let hits = |o, s| -> Vec<usize> { b.overlapping(o, s).map(|m| m.offset).collect() };
        assert_eq!(hits(0, 0x1000), Vec::<usize>::new());
        assert_eq!(hits(0, 0x1001), [0x1000]);
        assert_eq!(hits(0x2fff, 1), [0x1000]);
        assert_eq!(hits(0x3000, 0x1000), Vec::<usize>::new());
        assert_eq!(hits(0x2000, 0x3000), [0x1000, 0x4000]);
        assert_eq!(hits(0x1000, 0), Vec::<usize>::new());
        assert_eq!(hits(0x5000, 0x1000), Vec::<usize>::new());
    }

    #[test]
    fn remove_splits_and_keeps_file_offsets() {
        let mut b = Books::default();
        b.insert(file(0x1000, 0x4000, 0x10000));
        b.remove(0x2000, 0x1000);
        assert_eq!(spans(&b), [(0x1000, 0x1000), (0x3000, 0x2000)]);
        let right = b.iter().nth(1).unwrap();
        assert_eq!(right.backing, Backing::Descriptor { offset: 0x12000 });
        // Removing unmapped space and whole mappings at once.
        b.remove(0, 0x4000);
        assert_eq!(spans(&b), [(0x4000, 0x1000)]);
        assert_eq!(
            b.iter().next().unwrap().backing,
            Backing::Descriptor { offset: 0x13000 }
        );
        b.remove(0x4000, 0x1000);
        assert!(b.iter().next().is_none());
    }

    #[test]
    fn protect_splits_at_both_edges() {
        let mut b = Books::default();
        b.insert(anon(0, 0x3000));
        b.insert(anon(0x3000, 0x3000));
        b.protect(0x1000, 0x4000, Protection::read());
        let got: Vec<_> = b.iter().map(|m| (m.offset, m.size, m.protection)).collect();
        let (rw, r) = (Protection::read_write(), Protection::read());
        assert_eq!(
            got,
            [
                (0, 0x1000, rw),
                (0x1000, 0x2000, r),
                (0x3000, 0x2000, r),
                (0x5000, 0x1000, rw)
            ]
        );
    }
}
