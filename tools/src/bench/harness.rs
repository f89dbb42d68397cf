// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The timing harness: the variants of one workload in interleaved rounds, with the ratios
//! taken round by round; and the batch shapes the nanosecond rows share.

use std::time::{Duration, Instant};

use serde::Serialize;

/// How long to measure.
pub struct Plan {
    /// Rounds per row; each round times every variant once.
    pub rounds: usize,
    /// About how long one variant runs in one round.
    pub sample: Duration,
}

/// Operations per batch for the nanosecond rows: a multiple of 8, the call sites per turn.
pub const BATCH: usize = 1024;

/// One variant of a workload, as the harness calls it.
pub enum Op<'a> {
    /// Each call runs a whole batch of this many operations: one dynamic call per batch.
    Batch(u64, Box<dyn FnMut() + 'a>),
    /// Each call is one operation. For microsecond work, where one dynamic call is noise.
    Each(Box<dyn FnMut() + 'a>),
    /// Each call is one operation with a setup step, and returns the time of the part that
    /// counts.
    SelfTimed(Box<dyn FnMut() -> Duration + 'a>),
}

impl<'a> Op<'a> {
    /// A variant whose every call runs `ops` operations.
    pub fn batch(ops: usize, f: impl FnMut() + 'a) -> Op<'a> {
        Op::Batch(ops as u64, Box::new(f))
    }

    /// A variant whose every call is one operation.
    pub fn each(f: impl FnMut() + 'a) -> Op<'a> {
        Op::Each(Box::new(f))
    }

    /// A variant that times its own calls.
    pub fn self_timed(f: impl FnMut() -> Duration + 'a) -> Op<'a> {
        Op::SelfTimed(Box::new(f))
    }

    fn ops_per_call(&self) -> u64 {
        match self {
            Op::Batch(ops, _) => *ops,
            Op::Each(_) | Op::SelfTimed(_) => 1,
        }
    }

    /// Nanoseconds per operation over `calls` calls.
    fn time(&mut self, calls: u64) -> f64 {
        let ops = calls * self.ops_per_call();
        let spent = match self {
            Op::Batch(_, f) | Op::Each(f) => {
                let start = Instant::now();
                for _ in 0..calls {
                    f();
                }
                start.elapsed()
            }
            Op::SelfTimed(f) => (0..calls).map(|_| f()).sum::<Duration>(),
        };
        spent.as_nanos() as f64 / ops as f64
    }
}

/// One result row. Times are medians over the rounds; each ratio is the median of the
/// per-round ratios of `ours` to the variant timed next to it in the same round.
#[derive(Serialize)]
pub struct Row {
    name: String,
    rounds: usize,
    ours_ns: f64,
    baseline_ns: Option<f64>,
    peer_ns: Option<f64>,
    ours_over_baseline: Option<f64>,
    ours_over_peer: Option<f64>,
    /// First and third quartiles of the per-round `ours / baseline`.
    ours_over_baseline_quartiles: Option<[f64; 2]>,
    /// First and third quartiles of the per-round `ours / peer`.
    ours_over_peer_quartiles: Option<[f64; 2]>,
}

/// The `q`-quantile (0 to 1) of `v`, by nearest rank.
fn quantile(v: &[f64], q: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * q).round() as usize]
}

/// Median and quartiles of per-round ratios.
struct Ratio {
    median: f64,
    quartiles: [f64; 2],
}

impl Ratio {
    fn of(v: &[f64]) -> Ratio {
        Ratio {
            median: quantile(v, 0.5),
            quartiles: [quantile(v, 0.25), quantile(v, 0.75)],
        }
    }

    /// `1.234x ±5%`: the median and half the interquartile range, relative to it.
    fn show(r: &Option<Ratio>) -> String {
        r.as_ref().map_or("-".to_owned(), |r| {
            let spread = (r.quartiles[1] - r.quartiles[0]) / 2.0 / r.median * 100.0;
            format!("{:.3}x ±{:.0}%", r.median, spread)
        })
    }
}

const HEADER: [&str; 6] = [
    "workload (ns per op, median)",
    "ours",
    "baseline",
    "ours/base",
    "vm-memory",
    "ours/vm-mem",
];

fn print_line(cells: [&str; 6]) {
    println!(
        "{:<54} {:>10} {:>10} {:>13} {:>10} {:>13}",
        cells[0], cells[1], cells[2], cells[3], cells[4], cells[5]
    );
}

/// Prints the table's header.
pub fn print_header() {
    print_line(HEADER);
}

/// `compare` with the variants in a list: ours, then the baseline, then the peer.
pub fn compare_ops(plan: &Plan, name: &str, ops: Vec<Op<'_>>) -> Row {
    let mut ops = ops.into_iter();
    let ours = ops.next().expect("every row times ours");
    compare(plan, name, ours, ops.next(), ops.next())
}

/// Times `ours`, and the baseline and the peer where given, in rounds, prints the row and
/// returns it.
///
/// Every round times each variant once, for the same number of calls; `ours` always runs
/// between the other two (baseline, ours, peer in even rounds, peer, ours, baseline in odd
/// ones), so each ratio compares two adjacent timings and neither side always goes first.
pub fn compare<'a>(
    plan: &Plan,
    name: &str,
    mut ours: Op<'a>,
    mut baseline: Option<Op<'a>>,
    mut peer: Option<Op<'a>>,
) -> Row {
    // Warm up, then size the sample from a taste of the slowest variant.
    let mut per_call: f64 = 1.0;
    for op in std::iter::once(&mut ours)
        .chain(baseline.as_mut())
        .chain(peer.as_mut())
    {
        op.time(1);
        per_call = per_call.max(op.time(2) * op.ops_per_call() as f64);
    }
    let calls = ((plan.sample.as_nanos() as f64 / per_call) as u64).clamp(1, 1 << 22);
    let (mut t_ours, mut t_base, mut t_peer) = (Vec::new(), Vec::new(), Vec::new());
    let (mut r_base, mut r_peer) = (Vec::new(), Vec::new());
    for round in 0..plan.rounds {
        let (first, last) = if round % 2 == 0 {
            (&mut baseline, &mut peer)
        } else {
            (&mut peer, &mut baseline)
        };
        let before = first.as_mut().map(|op| op.time(calls));
        let o = ours.time(calls);
        let after = last.as_mut().map(|op| op.time(calls));
        let (b, p) = if round % 2 == 0 {
            (before, after)
        } else {
            (after, before)
        };
        t_ours.push(o);
        if let Some(b) = b {
            t_base.push(b);
            r_base.push(o / b);
        }
        if let Some(p) = p {
            t_peer.push(p);
            r_peer.push(o / p);
        }
    }
    let med = |v: &[f64]| (!v.is_empty()).then(|| quantile(v, 0.5));
    let rb = (!r_base.is_empty()).then(|| Ratio::of(&r_base));
    let rp = (!r_peer.is_empty()).then(|| Ratio::of(&r_peer));
    let row = Row {
        name: name.to_owned(),
        rounds: plan.rounds,
        ours_ns: quantile(&t_ours, 0.5),
        baseline_ns: med(&t_base),
        peer_ns: med(&t_peer),
        ours_over_baseline: rb.as_ref().map(|r| r.median),
        ours_over_peer: rp.as_ref().map(|r| r.median),
        ours_over_baseline_quartiles: rb.as_ref().map(|r| r.quartiles),
        ours_over_peer_quartiles: rp.as_ref().map(|r| r.quartiles),
    };
    let ns = |t: Option<f64>| t.map_or("-".to_owned(), |t| format!("{t:.2}"));
    print_line([
        &row.name,
        &ns(Some(row.ours_ns)),
        &ns(row.baseline_ns),
        &Ratio::show(&rb),
        &ns(row.peer_ns),
        &Ratio::show(&rp),
    ]);
    row
}

/// Sums `$body` over every `$x` of the slice `$inputs` (a multiple of 8 long), with the
/// body written out at eight separate call sites per loop turn, each adding into its own
/// accumulator so no site waits on another. This is the batch shape of every
/// nanosecond-scale row: the compiler sees eight independent calls in a loop, as in a VMM's
/// device code, and decides about each on its own.
macro_rules! eight_sites {
    ($inputs:expr, |$x:ident| $body:expr) => {{
        let mut acc = [0u64; 8];
        for c in $inputs.chunks_exact(8) {
            acc[0] = acc[0].wrapping_add({
                let $x = c[0];
                $body
            });
            acc[1] = acc[1].wrapping_add({
                let $x = c[1];
                $body
            });
            acc[2] = acc[2].wrapping_add({
                let $x = c[2];
                $body
            });
            acc[3] = acc[3].wrapping_add({
                let $x = c[3];
                $body
            });
            acc[4] = acc[4].wrapping_add({
                let $x = c[4];
                $body
            });
            acc[5] = acc[5].wrapping_add({
                let $x = c[5];
                $body
            });
            acc[6] = acc[6].wrapping_add({
                let $x = c[6];
                $body
            });
            acc[7] = acc[7].wrapping_add({
                let $x = c[7];
                $body
            });
        }
        acc.iter().fold(0u64, |s, &a| s.wrapping_add(a))
    }};
}
pub(crate) use eight_sites;

/// Follows a chain for `$steps` (a multiple of 8) steps from `$start`: `$x = $body`, the
/// body written out at eight separate call sites per loop turn. Each step needs the last
/// one's result, so this measures latency. Returns the last `$x`.
macro_rules! eight_chained {
    ($steps:expr, $start:expr, |$x:ident| $body:expr) => {{
        let mut $x = $start;
        for _ in 0..$steps / 8 {
            $x = $body;
            $x = $body;
            $x = $body;
            $x = $body;
            $x = $body;
            $x = $body;
            $x = $body;
            $x = $body;
        }
        $x
    }};
}
pub(crate) use eight_chained;

/// Raw loads: one volatile load per pointer, at eight call sites per turn; the sum.
///
/// # Safety
///
/// Every pointer must be valid for an aligned 8-byte read.
#[inline(never)]
pub unsafe fn raw_loads(ptrs: &[*const u64]) -> u64 {
    // SAFETY: the caller vouches for every pointer.
    eight_sites!(ptrs, |p| unsafe { p.read_volatile() })
}

/// Raw stores: one volatile store per pointer (of the pointer's own value), at eight call
/// sites per turn; the count.
///
/// # Safety
///
/// Every pointer must be valid for an aligned 8-byte write that nothing else is reading.
#[inline(never)]
pub unsafe fn raw_stores(ptrs: &[*mut u64]) -> u64 {
    eight_sites!(ptrs, |p| {
        // SAFETY: the caller vouches for every pointer.
        unsafe { p.write_volatile(p.addr() as u64) };
        1
    })
}
