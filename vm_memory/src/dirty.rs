// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! [`DirtyBitmap`]: one bit a page, in atomic 64-bit words, with a summary bit per word and
//! a top bit per summary word, so that finding, moving and clearing the dirty pages costs
//! what the dirty pages cost, not what the memory size costs (a clean 1 GiB is one word).
//!
//! `GuestMemory` keeps one per region for the writes the VMM itself makes (see
//! [`GuestMemory::set_dirty_tracking`](crate::GuestMemory::set_dirty_tracking)); a harvester
//! moves the bits out with [`DirtyBitmap::move_into`] and copies the pages afterwards.

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};

use crate::{Error, Result};

/// Pages a word of the bitmap covers.
const WORD_PAGES: usize = 64;
/// The most pages a bitmap covers: 256 TiB of 4 KiB pages, in an 8 GiB bitmap. More is a
/// caller's mistake (or a hostile size), refused rather than allocated.
pub const MAX_DIRTY_PAGES: u64 = 1 << 36;

/// A page bitmap that any number of threads mark at once, with two levels above it: bit `w`
/// of the summary is set whenever word `w` may hold a set bit, and bit `s` of the top
/// whenever summary word `s` may.
///
/// Marks are sequentially consistent read-modify-writes, word then summary then top, and a
/// harvest swaps top, then summary, then words: so a page whose bytes were written before its mark is either
/// seen by a harvest that runs after the mark, or left marked for the next one. Writers mark
/// *after* they write, harvesters copy *after* they move the bits.
///
/// ```
/// use vm_memory::DirtyBitmap;
/// let bitmap = DirtyBitmap::new(1000).unwrap();
/// bitmap.mark_pages(3, 2).unwrap();
/// bitmap.mark_pages(64, 1).unwrap();
/// assert!(bitmap.is_dirty(4));
/// assert_eq!(bitmap.runs().collect::<Vec<_>>(), [(3, 2), (64, 1)]);
/// let mut harvested = DirtyBitmap::new(1000).unwrap();
/// bitmap.move_into(&mut harvested).unwrap();
/// assert_eq!(bitmap.count(), 0);
/// assert_eq!(harvested.count(), 3);
/// ```
#[derive(Debug)]
pub struct DirtyBitmap {
    words: Box<[AtomicU64]>,
    summary: Box<[AtomicU64]>,
    top: Box<[AtomicU64]>,
    pages: usize,
}

impl DirtyBitmap {
    /// A clean bitmap of `pages` pages: at most [`MAX_DIRTY_PAGES`], and only if the memory
    /// for it can be had, else [`Error::DirtyBitmapTooLarge`].
    pub fn new(pages: usize) -> Result<DirtyBitmap> {
        let too_large = || Error::DirtyBitmapTooLarge {
            pages,
            max: MAX_DIRTY_PAGES,
        };
        if pages as u64 > MAX_DIRTY_PAGES {
            return Err(too_large());
        }
        let words = pages.div_ceil(WORD_PAGES);
        let summary = words.div_ceil(64);
        let top = summary.div_ceil(64);
        let zeros = |n: usize| -> Result<Box<[AtomicU64]>> {
            let mut v = Vec::new();
            v.try_reserve_exact(n).map_err(|_| too_large())?;
            v.extend((0..n).map(|_| AtomicU64::new(0)));
            Ok(v.into_boxed_slice())
        };
        Ok(DirtyBitmap {
            words: zeros(words)?,
            summary: zeros(summary)?,
            top: zeros(top)?,
            pages,
        })
    }

    /// How many pages the bitmap covers.
    pub fn pages(&self) -> usize {
        self.pages
    }

    /// Checks that `first..first + count` is inside the bitmap.
    fn check(&self, first: usize, count: usize) -> Result<()> {
        match first.checked_add(count) {
            Some(end) if end <= self.pages => Ok(()),
            _ => Err(Error::DirtyPagesOutOfRange {
                first,
                count,
                pages: self.pages,
            }),
        }
    }

    /// Marks pages `first..first + count` dirty. A range that is not inside the bitmap is
    /// refused whole.
    pub fn mark_pages(&self, first: usize, count: usize) -> Result<()> {
        self.check(first, count)?;
        self.mark_checked(first, count);
        Ok(())
    }

    /// Marks pages the caller has checked are inside the bitmap.
    pub(crate) fn mark_checked(&self, first: usize, count: usize) {
        for_each_word(first, count, |w, mask| {
            self.words[w].fetch_or(mask, SeqCst);
            let (s, bit) = (w / 64, 1u64 << (w % 64));
            // Plain loads first: a summary word is shared by 4,096 pages (a top word by
            // 262,144), and a locked operation on it from every writer would make it bounce
            // between CPUs.
            if self.summary[s].load(SeqCst) & bit == 0 {
                self.summary[s].fetch_or(bit, SeqCst);
            }
            let (t, bit) = (s / 64, 1u64 << (s % 64));
            if self.top[t].load(SeqCst) & bit == 0 {
                self.top[t].fetch_or(bit, SeqCst);
            }
        });
    }

    /// Marks pages `first..first + count` through an exclusive borrow, with plain loads and
    /// stores: for a harvester filling its own bitmap.
    pub fn mark_pages_mut(&mut self, first: usize, count: usize) -> Result<()> {
        self.check(first, count)?;
        for_each_word(first, count, |w, mask| self.or_word_mut(w, mask));
        Ok(())
    }

    /// Marks one page through an exclusive borrow: how a harvester takes a dirty ring's
    /// entries, one page at a time. A page past the end is refused.
    #[inline]
    pub fn mark_page_mut(&mut self, page: usize) -> Result<()> {
        self.check(page, 1)?;
        self.or_word_mut(page / WORD_PAGES, 1 << (page % WORD_PAGES));
        Ok(())
    }

    /// ORs `words` into this bitmap through an exclusive borrow: a bitmap in the layout of
    /// `KVM_GET_DIRTY_LOG`, where bit `i` of word `w` is page `64 * w + i`. A bit past the
    /// last page is refused, and then nothing is marked.
    pub fn or_words_mut(&mut self, words: &[u64]) -> Result<()> {
        let too_many = words.len() > self.words.len();
        let last_extra = match (words.len().checked_sub(1), self.pages % WORD_PAGES) {
            (Some(last), bits) if last + 1 == self.words.len() && bits != 0 => {
                words[last] >> bits != 0
            }
            _ => false,
        };
        if too_many || last_extra {
            return Err(Error::DirtyPagesOutOfRange {
                first: 0,
                count: words.len() * WORD_PAGES,
                pages: self.pages,
            });
        }
        // A summary word's worth (64 words) at a time: the group's summary bits gather in a
        // register and are stored once (a store per word into the same summary word would
        // make each wait for the last), and a clean group costs one pass of ORs.
        for (s, group) in words.chunks(64).enumerate() {
            if group.iter().fold(0, |any, &bits| any | bits) == 0 {
                continue;
            }
            let mut summary = 0u64;
            for (i, (&bits, word)) in group.iter().zip(&mut self.words[s * 64..]).enumerate() {
                if bits != 0 {
                    *word.get_mut() |= bits;
                    summary |= 1 << i;
                }
            }
            *self.summary[s].get_mut() |= summary;
            *self.top[s / 64].get_mut() |= 1 << (s % 64);
        }
        Ok(())
    }

    /// ORs `bits` into word `w` and sets its bits above, through an exclusive borrow.
    #[inline]
    fn or_word_mut(&mut self, w: usize, bits: u64) {
        let word = self.words[w].get_mut();
        // A word that holds a mark has its summary and top bits set already.
        if *word == 0 {
            *self.summary[w / 64].get_mut() |= 1 << (w % 64);
            *self.top[w / 4096].get_mut() |= 1 << ((w / 64) % 64);
        }
        *word |= bits;
    }

    /// Whether `page` is marked (false past the end).
    pub fn is_dirty(&self, page: usize) -> bool {
        page < self.pages && self.words[page / WORD_PAGES].load(SeqCst) & (1 << (page % 64)) != 0
    }

    /// How many pages are marked.
    pub fn count(&self) -> usize {
        self.dirty_words()
            .map(|w| self.words[w].load(SeqCst).count_ones() as usize)
            .sum()
    }

    /// Whether no page is marked.
    pub fn is_clean(&self) -> bool {
        self.top.iter().all(|t| t.load(SeqCst) == 0)
    }

    /// The indices of the summary words whose top bit is set, in order.
    fn dirty_summaries(&self) -> impl Iterator<Item = usize> + '_ {
        self.top
            .iter()
            .enumerate()
            .flat_map(|(t, word)| BitIter(word.load(SeqCst)).map(move |bit| t * 64 + bit as usize))
    }

    /// The indices of the words whose summary bit is set, in order.
    fn dirty_words(&self) -> impl Iterator<Item = usize> + '_ {
        self.dirty_summaries().flat_map(|s| {
            BitIter(self.summary[s].load(SeqCst)).map(move |bit| s * 64 + bit as usize)
        })
    }

    /// Moves every mark into `into` (ORed into what it holds) and clears it here, one word at
    /// a time, atomically per word: a page marked meanwhile ends up in one of the two. The
    /// bitmaps must cover the same number of pages.
    pub fn move_into(&self, into: &mut DirtyBitmap) -> Result<()> {
        if into.pages != self.pages {
            return Err(Error::DirtyBitmapSizeMismatch {
                pages: self.pages,
                other: into.pages,
            });
        }
        for (t, top) in self.top.iter().enumerate() {
            // A load first: most top words of a large bitmap are clean, and a swap of each
            // would be a locked operation for nothing.
            if top.load(SeqCst) == 0 {
                continue;
            }
            for s in BitIter(top.swap(0, SeqCst)).map(|bit| t * 64 + bit as usize) {
                for w in BitIter(self.summary[s].swap(0, SeqCst)).map(|b| s * 64 + b as usize) {
                    let bits = self.words[w].swap(0, SeqCst);
                    if bits != 0 {
                        into.or_word_mut(w, bits);
                    }
                }
            }
        }
        Ok(())
    }

    /// Clears every mark, at the cost of the marked words.
    pub fn clear(&mut self) {
        for t in 0..self.top.len() {
            for s in BitIter(std::mem::take(self.top[t].get_mut())).map(|b| t * 64 + b as usize) {
                let bits = std::mem::take(self.summary[s].get_mut());
                let end = (s * 64 + 64).min(self.words.len());
                if bits.count_ones() > 32 {
                    // Dense: the whole group, a stretch of stores without a bit search.
                    self.words[s * 64..end]
                        .iter_mut()
                        .for_each(|w| *w.get_mut() = 0);
                } else {
                    for w in BitIter(bits).map(|b| s * 64 + b as usize) {
                        *self.words[w].get_mut() = 0;
                    }
                }
            }
        }
    }

    /// Calls `f(first page, count)` for each run of marked pages, in order, contiguous runs
    /// merged (also across words): what [`runs`](Self::runs) yields, several times faster
    /// for many short runs, since nothing is kept between calls.
    pub fn for_each_run(&self, mut f: impl FnMut(usize, usize)) {
        // The run being gathered; empty (`len` 0) only before the first, which any run then
        // extends or replaces alike.
        let mut run = (0usize, 0usize);
        for (t, top) in self.top.iter().enumerate() {
            for s in BitIter(top.load(SeqCst)).map(|b| t * 64 + b as usize) {
                let summary = self.summary[s].load(SeqCst);
                let group = &self.words[s * 64..(s * 64 + 64).min(self.words.len())];
                if summary.count_ones() > 32 {
                    // Dense: word by word, loads that need not wait for a bit search.
                    for (i, word) in group.iter().enumerate() {
                        runs_of_word(s * 64 + i, word.load(SeqCst), &mut run, &mut f);
                    }
                } else {
                    for i in BitIter(summary).map(|b| b as usize) {
                        runs_of_word(s * 64 + i, group[i].load(SeqCst), &mut run, &mut f);
                    }
                }
            }
        }
        if run.1 != 0 {
            f(run.0, run.1);
        }
    }

    /// The marked pages as runs of `(first page, count)`, in order, contiguous runs merged
    /// (also across words). Marks made meanwhile may or may not be seen.
    pub fn runs(&self) -> DirtyRuns<'_> {
        DirtyRuns {
            bitmap: self,
            top_index: 0,
            top_bits: self.top.first().map_or(0, |t| t.load(SeqCst)),
            summary_index: 0,
            summary_bits: 0,
            word_index: 0,
            word_bits: 0,
            ahead: None,
        }
    }
}

/// Hands the runs of ones in word `w` (holding `bits`) to `f`, after the run being gathered
/// in `run` (first page, count; count 0 before the first) when they do not continue it.
#[inline(always)]
fn runs_of_word(
    w: usize,
    mut bits: u64,
    run: &mut (usize, usize),
    f: &mut impl FnMut(usize, usize),
) {
    while bits != 0 {
        // Adding the lowest set bit carries through the run of ones it starts: the run is
        // cleared, and the carry lands on the bit just past it (or out of the word).
        let start = bits.trailing_zeros();
        let carried = bits.wrapping_add(bits & bits.wrapping_neg());
        let end = (carried & !bits).trailing_zeros();
        bits &= carried;
        let at = w * WORD_PAGES + start as usize;
        let ones = (end - start) as usize;
        if at == run.0 + run.1 {
            run.1 += ones;
        } else {
            if run.1 != 0 {
                f(run.0, run.1);
            }
            *run = (at, ones);
        }
    }
}

/// Calls `f(word, mask)` for each word that `first..first + count` touches (count may be 0).
#[inline]
fn for_each_word(first: usize, count: usize, mut f: impl FnMut(usize, u64)) {
    let mut page = first;
    let end = first + count;
    while page < end {
        let bit = page % WORD_PAGES;
        let n = (WORD_PAGES - bit).min(end - page);
        let mask = if n == WORD_PAGES {
            u64::MAX
        } else {
            ((1u64 << n) - 1) << bit
        };
        f(page / WORD_PAGES, mask);
        page += n;
    }
}

/// The set bits of a word, lowest first.
struct BitIter(u64);

impl Iterator for BitIter {
    type Item = u32;

    fn next(&mut self) -> Option<u32> {
        if self.0 == 0 {
            return None;
        }
        let bit = self.0.trailing_zeros();
        self.0 &= self.0 - 1;
        Some(bit)
    }
}

/// The iterator of [`DirtyBitmap::runs`].
pub struct DirtyRuns<'a> {
    bitmap: &'a DirtyBitmap,
    top_index: usize,
    /// Top bits of `top_index` not yet visited.
    top_bits: u64,
    summary_index: usize,
    /// Summary bits of `summary_index` not yet visited.
    summary_bits: u64,
    /// The word being walked, and its bits not yet handed out.
    word_index: usize,
    word_bits: u64,
    /// A piece read ahead that did not join the previous run.
    ahead: Option<(usize, usize)>,
}

impl std::fmt::Debug for DirtyRuns<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirtyRuns")
            .field("word_index", &self.word_index)
            .finish_non_exhaustive()
    }
}

impl DirtyRuns<'_> {
    /// The next run of marked pages inside one word, or `None`.
    fn next_piece(&mut self) -> Option<(usize, usize)> {
        while self.word_bits == 0 {
            while self.summary_bits == 0 {
                while self.top_bits == 0 {
                    self.top_index += 1;
                    self.top_bits = self.bitmap.top.get(self.top_index)?.load(SeqCst);
                }
                let bit = self.top_bits.trailing_zeros() as usize;
                self.top_bits &= self.top_bits - 1;
                self.summary_index = self.top_index * 64 + bit;
                self.summary_bits = self.bitmap.summary[self.summary_index].load(SeqCst);
            }
            let bit = self.summary_bits.trailing_zeros() as usize;
            self.summary_bits &= self.summary_bits - 1;
            self.word_index = self.summary_index * 64 + bit;
            self.word_bits = self.bitmap.words[self.word_index].load(SeqCst);
        }
        let start = self.word_bits.trailing_zeros();
        let ones = (self.word_bits >> start).trailing_ones();
        // `start + ones` is at most 64; a shift by 64 must not be asked of the CPU.
        let mask = u64::MAX.checked_shl(ones).map_or(u64::MAX, |m| !m) << start;
        self.word_bits &= !mask;
        Some((self.word_index * WORD_PAGES + start as usize, ones as usize))
    }
}

impl Iterator for DirtyRuns<'_> {
    type Item = (usize, usize);

    fn next(&mut self) -> Option<(usize, usize)> {
        let (first, mut count) = self.ahead.take().or_else(|| self.next_piece())?;
        while let Some((next, n)) = self.next_piece() {
            if next != first + count {
                self.ahead = Some((next, n));
                break;
            }
            count += n;
        }
        Some((first, count))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runs(b: &DirtyBitmap) -> Vec<(usize, usize)> {
        b.runs().collect()
    }

    #[test]
    fn sizes_past_the_bound_are_refused_not_allocated() {
        for pages in [usize::MAX, MAX_DIRTY_PAGES as usize + 1] {
            let err = DirtyBitmap::new(pages).unwrap_err();
            assert!(
                matches!(err, Error::DirtyBitmapTooLarge { pages: p, max } if p == pages && max == MAX_DIRTY_PAGES),
                "{err}"
            );
        }
        let empty = DirtyBitmap::new(0).unwrap();
        assert_eq!((empty.pages(), empty.count()), (0, 0));
        assert!(matches!(
            empty.mark_pages(0, 1),
            Err(Error::DirtyPagesOutOfRange { pages: 0, .. })
        ));
    }

    #[test]
    fn runs_merge_across_words_and_summary_words() {
        let b = DirtyBitmap::new(64 * 64 * 3).unwrap();
        b.mark_pages(60, 10).unwrap(); // crosses word 0 -> 1
        b.mark_pages(64 * 64 - 2, 5).unwrap(); // crosses summary word 0 -> 1
        b.mark_pages(200, 64 * 2).unwrap(); // two whole words and pieces
        b.mark_pages(64 * 64 * 3 - 1, 1).unwrap(); // the last page
        assert_eq!(
            runs(&b),
            [(60, 10), (200, 128), (64 * 64 - 2, 5), (64 * 64 * 3 - 1, 1)]
        );
        assert_eq!(b.count(), 10 + 128 + 5 + 1);
    }

    #[test]
    fn runs_match_a_plain_model_on_random_marks() {
        let mut seed = 0x1234_5678_9abc_def0u64;
        let mut rand = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        // Sizes around each level's boundary: a word (64 pages), a summary word (4,096), a
        // top word (262,144).
        for pages in [
            1, 63, 64, 65, 4095, 4096, 4097, 9000, 262_144, 262_145, 600_000,
        ] {
            let tries = if pages > 10_000 { 5 } else { 50 };
            for _ in 0..tries {
                let b = DirtyBitmap::new(pages).unwrap();
                let mut model = vec![false; pages];
                for _ in 0..(rand() % 20) {
                    // Half the marks near a top-word boundary, when there is one.
                    let first = if pages > 262_144 && rand() % 2 == 0 {
                        (262_144 - 100 + (rand() as usize) % 200).min(pages - 1)
                    } else {
                        (rand() as usize) % pages
                    };
                    let count = ((rand() as usize) % 200).min(pages - first);
                    b.mark_pages(first, count).unwrap();
                    model[first..first + count].fill(true);
                }
                // And a stretch of scattered pages, so that some summary groups are dense
                // (walked word by word) and some sparse (through their summary bits).
                let stride = 1 + (rand() as usize) % 100;
                let from = (rand() as usize) % pages;
                for page in (from..pages.min(from + 8192)).step_by(stride) {
                    b.mark_pages(page, 1).unwrap();
                    model[page] = true;
                }
                let mut expected = Vec::new();
                let mut i = 0;
                while i < pages {
                    if model[i] {
                        let start = i;
                        while i < pages && model[i] {
                            i += 1;
                        }
                        expected.push((start, i - start));
                    } else {
                        i += 1;
                    }
                }
                assert_eq!(runs(&b), expected, "{pages} pages");
                let mut called = Vec::new();
                b.for_each_run(|first, count| called.push((first, count)));
                assert_eq!(called, expected, "{pages} pages, for_each_run");
                assert_eq!(b.count(), model.iter().filter(|d| **d).count());
                for (p, d) in model.iter().enumerate() {
                    assert_eq!(b.is_dirty(p), *d);
                }
                // Cleared, no word keeps a bit that a later mark's summary would bring back.
                let mut b = b;
                b.clear();
                assert!((0..pages).all(|p| !b.is_dirty(p)), "{pages} pages, cleared");
                assert!(b.is_clean());
            }
        }
    }

    #[test]
    fn out_of_range_marks_are_refused_whole() {
        let b = DirtyBitmap::new(100).unwrap();
        for (first, count) in [(100, 1), (99, 2), (usize::MAX, 1), (1, usize::MAX)] {
            let err = b.mark_pages(first, count).unwrap_err();
            assert!(
                matches!(err, Error::DirtyPagesOutOfRange { first: f, count: c, pages: 100 } if f == first && c == count),
                "{err}"
            );
        }
        assert!(b.is_clean());
        // Zero pages, anywhere inside, mark nothing.
        b.mark_pages(100, 0).unwrap();
        assert!(b.is_clean());
        assert!(!b.is_dirty(100) && !b.is_dirty(usize::MAX));
        let mut other = DirtyBitmap::new(101).unwrap();
        let err = b.move_into(&mut other).unwrap_err();
        assert!(matches!(
            err,
            Error::DirtyBitmapSizeMismatch {
                pages: 100,
                other: 101
            }
        ));
        let mut b = b;
        assert!(matches!(
            b.mark_pages_mut(50, 51),
            Err(Error::DirtyPagesOutOfRange { .. })
        ));
    }

    #[test]
    fn kvm_words_are_ored_in_and_bits_past_the_end_refused() {
        let mut b = DirtyBitmap::new(100).unwrap();
        b.or_words_mut(&[0b1010, 1 << 35]).unwrap();
        assert_eq!(b.runs().collect::<Vec<_>>(), [(1, 1), (3, 1), (99, 1)]);
        // Page 100 does not exist; three words are more than 100 pages have.
        for words in [&[0, 1 << 36][..], &[0, 0, 0]] {
            let err = b.or_words_mut(words).unwrap_err();
            assert!(
                matches!(err, Error::DirtyPagesOutOfRange { pages: 100, .. }),
                "{err}"
            );
        }
        assert_eq!(b.count(), 3);
        b.or_words_mut(&[]).unwrap();
        let mut exact = DirtyBitmap::new(128).unwrap();
        exact.or_words_mut(&[0, u64::MAX]).unwrap();
        assert_eq!(exact.runs().collect::<Vec<_>>(), [(64, 64)]);
    }

    #[test]
    fn move_into_merges_and_clear_empties() {
        let b = DirtyBitmap::new(5000).unwrap();
        let mut into = DirtyBitmap::new(5000).unwrap();
        into.mark_pages_mut(10, 1).unwrap();
        b.mark_pages(11, 1).unwrap();
        b.mark_pages(4999, 1).unwrap();
        b.move_into(&mut into).unwrap();
        assert!(b.is_clean());
        assert_eq!(runs(&into), [(10, 2), (4999, 1)]);
        into.clear();
        assert!(into.is_clean());
        assert_eq!(into.count(), 0);
        assert!(runs(&into).is_empty());
    }

    #[test]
    fn no_mark_is_lost_to_a_concurrent_move() {
        // Writers mark pages while a harvester moves bits out: every mark lands in exactly
        // one harvest or in what is left at the end.
        let b = DirtyBitmap::new(64 * 64 * 2).unwrap();
        let mut harvested = DirtyBitmap::new(b.pages()).unwrap();
        let marks = 20_000usize;
        std::thread::scope(|scope| {
            for t in 0..2 {
                let b = &b;
                scope.spawn(move || {
                    for i in 0..marks {
                        b.mark_pages((i * 7 + t * 4096) % b.pages(), 1).unwrap();
                    }
                });
            }
            for _ in 0..200 {
                b.move_into(&mut harvested).unwrap();
            }
        });
        b.move_into(&mut harvested).unwrap();
        for t in 0..2 {
            for i in 0..marks {
                let page = (i * 7 + t * 4096) % b.pages();
                assert!(harvested.is_dirty(page), "page {page} lost");
            }
        }
    }
}
