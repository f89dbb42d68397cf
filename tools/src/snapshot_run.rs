// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `run --snapshot DIR`: the snapshot guest runs on KVM over boot RAM and an added slot; at
//! each round's report a "device" writes the guest's sum into a page only it writes, and the
//! host takes a layer (full, then incremental); after the last one the chain is restored
//! into a fresh VM, which resumes the guest, and the guest itself checks its memory.

use std::path::Path;
use std::time::{Duration, Instant};

use base::{MemoryMappingBuilder, SharedMemory};
use devices::bus::MmioBus;
use hypervisor::kvm::{Kvm, KvmVcpu, KvmVm};
use hypervisor::snapshot::{self, LayerSummary, SnapshotWriter};
use hypervisor::{DirtyLogMode, MemCacheType, Vm};
use kvm_bindings::{kvm_regs, kvm_sregs};
use vm_memory::{GuestAddress, GuestMemory};

use crate::drive::{run_until_halt, Stopped};
use crate::guest_snapshot::*;

const RAM: u64 = 2 << 20;
/// The added slot: a memfd the guest also writes.
const DYN: u64 = 4 << 20;
const DYN_SIZE: u64 = 1 << 20;
const ROUNDS: u32 = 4;
const SEGMENT_DEADLINE: Duration = Duration::from_secs(20);

/// Data pages: 48 across boot RAM, 16 in the added slot.
static PAGES: [u32; 64] = {
    let mut pages = [0u32; 64];
    let mut i = 0;
    while i < 48 {
        pages[i] = 0x10_0000 + (i as u32) * 0x5000;
        i += 1;
    }
    while i < 64 {
        pages[i] = DYN as u32 + ((i - 48) as u32) * 0x3000;
        i += 1;
    }
    pages
};

const LAYOUT: SnapshotLayout = SnapshotLayout {
    code: 0x1000,
    vars: 0x8000,
    pages: &PAGES,
    device_page: 0x9000,
    rounds: ROUNDS,
};

/// What can be left out, to show the guest's checks fail without it.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// The dirty log mode to ask KVM for.
    pub mode: DirtyLogMode,
    /// Record the device's writes (the VMM's own) for the incremental layers. Off, the
    /// scenario plays a device that forgets to: it writes through its region's mapping
    /// (`GuestMemory::find_region`), which no tracking sees, instead of through
    /// `GuestMemory`.
    pub track_vmm_writes: bool,
    /// Log (and so snapshot) the added slot.
    pub log_added_slot: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            mode: DirtyLogMode::ManualProtect,
            track_vmm_writes: true,
            log_added_slot: true,
        }
    }
}

/// What the scenario saw.
#[derive(Debug)]
pub struct Outcome {
    /// The mode KVM gave.
    pub mode: DirtyLogMode,
    /// The layers written, in order.
    pub layers: Vec<LayerSummary>,
    /// Time to restore the chain into the fresh VM.
    pub restore_time: Duration,
    /// The guest's verdict after resuming there.
    pub verdict: u32,
    /// The sum it recomputed, and the one it reported last before the snapshot.
    pub sums: (u32, u32),
}

/// The vCPU state a layer carries: general and segment registers, postcard-encoded.
fn save_state(vcpu: &mut KvmVcpu) -> Result<Vec<u8>, String> {
    // The OUT that stopped the vCPU completes inside KVM before its registers are read.
    vcpu.complete_io().map_err(|e| e.to_string())?;
    let regs = vcpu.get_regs().map_err(|e| e.to_string())?;
    let sregs = vcpu.get_sregs().map_err(|e| e.to_string())?;
    postcard::to_allocvec(&(regs, sregs)).map_err(|e| e.to_string())
}

fn load_state(vcpu: &KvmVcpu, state: &[u8]) -> Result<(), String> {
    let (regs, sregs): (kvm_regs, kvm_sregs) =
        postcard::from_bytes(state).map_err(|e| format!("the layer's vCPU state: {e}"))?;
    vcpu.set_sregs(&sregs).map_err(|e| e.to_string())?;
    vcpu.set_regs(&regs).map_err(|e| e.to_string())
}

/// A VM of the scenario's layout, logging boot RAM and (if asked) the added slot.
fn make_vm(kvm: &Kvm, mode: DirtyLogMode, log_added_slot: bool) -> Result<KvmVm, String> {
    let mem = GuestMemory::new(&[(GuestAddress(0), RAM)]).map_err(|e| e.to_string())?;
    let vm = KvmVm::new_with_dirty_log(kvm, mem, mode).map_err(|e| e.to_string())?;
    let shm = SharedMemory::new("snapshot-slot", DYN_SIZE).map_err(|e| e.to_string())?;
    let map = MemoryMappingBuilder::new(DYN_SIZE as usize)
        .from_shared_memory(&shm)
        .build()
        .map_err(|e| e.to_string())?;
    vm.add_memory_region(
        GuestAddress(DYN),
        Box::new(map),
        false,
        log_added_slot,
        MemCacheType::CacheCoherent,
    )
    .map_err(|e| e.to_string())?;
    vm.set_dirty_logging(0, true).map_err(|e| e.to_string())?;
    Ok(vm)
}

/// Runs the guest until its next report on one of `ports`; returns the port and value.
fn run_to_port(vcpu: &mut KvmVcpu, ports: &[u16]) -> Result<(u16, u32), String> {
    let mut seen = None;
    let stopped = run_until_halt(
        vcpu,
        &MmioBus::new(),
        SEGMENT_DEADLINE,
        None,
        |port, bytes| {
            let value = u32::from_le_bytes(
                bytes
                    .get(..4)
                    .and_then(|b| b.try_into().ok())
                    .unwrap_or([0; 4]),
            );
            if ports.contains(&port) {
                seen = Some((port, value));
                return Ok(true);
            }
            Err(format!(
                "the guest wrote {value:#x} to port {port:#x}, unexpected here"
            ))
        },
        |_, _| false,
    )?;
    match (stopped, seen) {
        (Stopped::Done { .. }, Some(seen)) => Ok(seen),
        (stopped, _) => Err(format!("the guest stopped without a report: {stopped:?}")),
    }
}

/// Runs the scenario, writing layers into `dir` (which must hold none yet).
pub fn scenario(kvm: &Kvm, dir: &Path, options: Options) -> Result<Outcome, String> {
    let vm = make_vm(kvm, options.mode, options.log_added_slot)?;
    let mem = vm.get_memory().clone();
    let code = snapshot_program(&LAYOUT)?;
    mem.write_all_at_addr(&code, GuestAddress(LAYOUT.code.into()))
        .map_err(|e| e.to_string())?;
    let mut vcpu = vm.create_vcpu(0).map_err(|e| e.to_string())?;
    vcpu.set_flat_protected_mode(LAYOUT.code)
        .map_err(|e| e.to_string())?;
    let mut writer = SnapshotWriter::create(dir).map_err(|e| e.to_string())?;
    let mut layers = Vec::new();
    let mut last_sum = 0;
    for round in 0..ROUNDS {
        let (_, sum) = run_to_port(&mut vcpu, &[PORT_ROUND])?;
        last_sum = sum;
        // The device echoes the guest's sum into its own page: a page only the VMM writes.
        let echo = GuestAddress(u64::from(LAYOUT.device_page) + 4 * u64::from(round));
        if options.track_vmm_writes {
            mem.write_obj_at_addr(sum, echo)
                .map_err(|e| e.to_string())?;
        } else {
            let (mapping, offset, _) = mem.find_region(echo).map_err(|e| e.to_string())?;
            mapping.write_obj(sum, offset).map_err(|e| e.to_string())?;
        }
        let state = save_state(&mut vcpu)?;
        let layer = if round == 0 {
            writer.write_full(&vm, &state)
        } else {
            writer.write_incremental(&vm, &state)
        }
        .map_err(|e| e.to_string())?;
        layers.push(layer);
    }
    // The old VM is gone before the new one runs: nothing of it can leak into the result.
    drop(vcpu);
    drop(vm);

    let target = make_vm(kvm, options.mode, options.log_added_slot)?;
    let start = Instant::now();
    let restored = snapshot::restore(dir, &target).map_err(|e| e.to_string())?;
    let restore_time = start.elapsed();
    let mut vcpu = target.create_vcpu(0).map_err(|e| e.to_string())?;
    load_state(&vcpu, &restored.state)?;
    let (_, recomputed) = run_to_port(&mut vcpu, &[PORT_SUM])?;
    let (_, verdict) = run_to_port(&mut vcpu, &[PORT_VERIFY])?;
    run_to_port(&mut vcpu, &[PORT_DONE])?;
    Ok(Outcome {
        mode: target.dirty_log_mode(),
        layers,
        restore_time,
        verdict,
        sums: (recomputed, last_sum),
    })
}

/// The `run --snapshot` report; `Ok(false)` if a check failed.
pub fn report(kvm: &Kvm, dir: &Path, mode: DirtyLogMode) -> Result<bool, String> {
    println!(
        "snapshot: the guest dirties {} pages ({} in an added slot) over {ROUNDS} rounds; a layer each round, into {}",
        PAGES.len(),
        PAGES.iter().filter(|&&p| u64::from(p) >= DYN).count(),
        dir.display()
    );
    let outcome = scenario(
        kvm,
        dir,
        Options {
            mode,
            ..Options::default()
        },
    )?;
    println!("  dirty log mode: {:?}", outcome.mode);
    for l in &outcome.layers {
        println!(
            "  layer {} ({:>11}): {:>4} pages in {:>3} runs, {:>8} data bytes, {:>8} file bytes; {:>8.1} us ({:.1} harvest, {:.1} copy, {:.1} flush)",
            l.sequence,
            if l.full { "full" } else { "incremental" },
            l.pages,
            l.runs,
            l.data_bytes,
            l.file_bytes,
            (l.harvest_time + l.total_time).as_secs_f64() * 1e6,
            l.harvest_time.as_secs_f64() * 1e6,
            l.copy_time.as_secs_f64() * 1e6,
            l.sync_time.as_secs_f64() * 1e6,
        );
    }
    println!(
        "  restore of {} layers into a fresh VM: {:.1} us",
        outcome.layers.len(),
        outcome.restore_time.as_secs_f64() * 1e6
    );
    let mut ok = true;
    let mut check = |name: &str, pass: bool, detail: String| {
        println!(
            "  {name:<72} {} {detail}",
            if pass { "ok" } else { "FAILED" }
        );
        ok &= pass;
    };
    let incrementals = outcome.layers.iter().filter(|l| !l.full).count();
    check(
        "a full layer and at least two incremental ones",
        outcome.layers.first().is_some_and(|l| l.full) && incrementals >= 2,
        format!("{incrementals} incremental"),
    );
    let full_pages = outcome.layers[0].pages;
    check(
        "each incremental layer is smaller than the full one",
        outcome.layers[1..]
            .iter()
            .all(|l| l.pages > 0 && l.pages < full_pages),
        format!(
            "{:?} pages vs {full_pages}",
            outcome.layers[1..]
                .iter()
                .map(|l| l.pages)
                .collect::<Vec<_>>()
        ),
    );
    check(
        "the guest, resumed in the fresh VM, verified its memory and the device's page",
        outcome.verdict == VERIFY_OK,
        format!(
            "verdict {} (1 ok, 2 bad sum, 3 bad device page), sum {:#x} vs {:#x}",
            outcome.verdict, outcome.sums.0, outcome.sums.1
        ),
    );
    Ok(ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kvm_or_skip(test: &str) -> Option<Kvm> {
        match Kvm::new() {
            Ok(kvm) => Some(kvm),
            Err(e) => {
                assert!(
                    std::env::var_os("VMM_REQUIRE_KVM").is_none_or(|v| v != "1"),
                    "{test}: KVM is required here: {e}"
                );
                println!("KVM-SKIP {test}: {e}");
                None
            }
        }
    }

    fn dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("vmm-snapshot-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn the_guest_verifies_after_restore_in_every_dirty_log_mode() {
        let Some(kvm) = kvm_or_skip("snapshot_scenario") else {
            return;
        };
        for mode in [DirtyLogMode::Bitmap, DirtyLogMode::ManualProtect] {
            let d = dir("modes");
            let outcome = scenario(
                &kvm,
                &d,
                Options {
                    mode,
                    ..Options::default()
                },
            )
            .unwrap();
            assert_eq!(outcome.verdict, VERIFY_OK, "{mode:?}: {outcome:?}");
            assert_eq!(outcome.mode, mode);
            assert_eq!(outcome.sums.0, outcome.sums.1);
            assert_eq!(outcome.layers.len(), ROUNDS as usize);
            std::fs::remove_dir_all(&d).unwrap();
        }
        // The ring: this project's nested-KVM hosts emulate the guest's stores and push an
        // entry for each one, overrunning any ring; the vCPU then cannot go on, which the
        // hypervisor reports instead of losing pages. Elsewhere the guest must verify.
        let d = dir("ring");
        let mode = DirtyLogMode::Ring { entries: 4096 };
        match scenario(
            &kvm,
            &d,
            Options {
                mode,
                ..Options::default()
            },
        ) {
            Ok(outcome) => assert_eq!(outcome.verdict, VERIFY_OK, "{outcome:?}"),
            Err(e) if e.contains("dirty ring stays full") => {
                println!("the ring was overrun on this host: {e}")
            }
            Err(e) => panic!("ring: {e}"),
        }
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn without_the_vmm_s_writes_or_the_added_slot_the_guest_says_so() {
        let Some(kvm) = kvm_or_skip("snapshot_negative") else {
            return;
        };
        let d = dir("no-vmm");
        let outcome = scenario(
            &kvm,
            &d,
            Options {
                track_vmm_writes: false,
                ..Options::default()
            },
        )
        .unwrap();
        assert_eq!(outcome.verdict, VERIFY_BAD_DEVICE, "{outcome:?}");
        std::fs::remove_dir_all(&d).unwrap();
        // The added slot left out of the layers: the fresh VM's slot is blank.
        let d = dir("no-slot");
        let outcome = scenario(
            &kvm,
            &d,
            Options {
                log_added_slot: false,
                ..Options::default()
            },
        )
        .unwrap();
        assert_eq!(outcome.verdict, VERIFY_BAD_SUM, "{outcome:?}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
