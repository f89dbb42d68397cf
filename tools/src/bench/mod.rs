// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `bench`: our crates next to raw code and the vm-memory crate, in one process and one run,
//! on the workloads of the crates' criterion benches.
//!
//! Each row times `ours`, a raw `baseline` and, where there is one, the `peer` crate, in
//! interleaved rounds (so drift on a shared machine hits them alike), and reports each
//! one's median time per operation and, for each ratio, the median of the per-round ratios.
//! Read the ratios, not the times.
//!
//! Nanosecond-scale operations are timed the way a VMM calls them: one call of the timed
//! closure runs a batch loop in this crate, with the accessor at eight call sites per turn
//! over precomputed addresses (see [`harness`]). Microsecond-scale ones are one call each.

mod base_rows;
mod dirty_rows;
mod harness;
mod hypervisor_rows;
mod rust_vmm_rows;
mod snapshot_rows;
mod tube_rows;
mod vm_memory_rows;

use std::path::Path;
use std::time::{Duration, Instant};

use harness::Plan;

const MIB: usize = 1 << 20;

/// The groups of rows, as `--only` names them.
pub const GROUPS: [&str; 7] = [
    "base",
    "vm_memory",
    "rust_vmm",
    "hypervisor",
    "tube",
    "dirty",
    "snapshot",
];

/// Runs every workload (or those of the groups in `only`) and prints a table of ratios;
/// with `json`, writes it there too.
pub fn bench(quick: bool, json: Option<&Path>, only: &[String]) -> Result<bool, String> {
    if let Some(bad) = only.iter().find(|g| !GROUPS.contains(&g.as_str())) {
        return Err(format!("no bench group {bad:?}; the groups are {GROUPS:?}"));
    }
    let run = |group: &str| only.is_empty() || only.iter().any(|g| g == group);
    let plan = if quick {
        Plan {
            rounds: 7,
            sample: Duration::from_millis(1),
        }
    } else {
        Plan {
            rounds: 21,
            sample: Duration::from_millis(4),
        }
    };
    harness::print_header();
    let start = Instant::now();
    let mut rows = Vec::new();
    if run("base") {
        base_rows::rows(&plan, &mut rows);
    }
    if run("vm_memory") {
        vm_memory_rows::rows(&plan, quick, &mut rows);
    }
    if run("rust_vmm") {
        rust_vmm_rows::rows(&plan, &mut rows);
    }
    if run("hypervisor") {
        if let Err(e) = hypervisor_rows::rows(&plan, &mut rows) {
            println!("(skipped) {e}");
        }
    }
    if run("tube") {
        tube_rows::rows(&plan, &mut rows);
    }
    if run("dirty") {
        if let Err(e) = dirty_rows::rows(quick, &mut rows) {
            println!("(skipped) {e}");
        }
    }
    if run("snapshot") {
        if let Err(e) = snapshot_rows::rows(&mut rows) {
            println!("(skipped) {e}");
        }
    }
    println!(
        "{} workloads in {:.1} s",
        rows.len(),
        start.elapsed().as_secs_f64()
    );
    if let Some(path) = json {
        let text = serde_json::to_string_pretty(&rows).map_err(|e| e.to_string())?;
        std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(true)
}
