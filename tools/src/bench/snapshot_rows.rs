// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Rows for snapshots: writing a full layer of 256 MiB of guest memory next to a raw
//! sequential `write(2)` of the same bytes (into the page cache, and flushed), and restoring
//! the layer next to a raw `read(2)` of the same file into guest memory.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hypervisor::kvm::{Kvm, KvmVm};
use hypervisor::snapshot::{self, layer_name, SnapshotWriter};
use hypervisor::Vm;
use vm_memory::{GuestAddress, GuestMemory};

use super::harness::{compare_ops, Op, Plan, Row};

const SIZE: u64 = 256 << 20;
const CHUNK: usize = 1 << 20;

/// A VM of `SIZE` bytes of logged boot RAM, filled with bytes that do not compress.
fn vm(kvm: &Kvm) -> Result<KvmVm, String> {
    let mem = GuestMemory::new(&[(GuestAddress(0), SIZE)]).map_err(|e| e.to_string())?;
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let chunk: Vec<u8> = (0..CHUNK)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    for offset in (0..SIZE).step_by(CHUNK) {
        mem.write_all_at_addr(&chunk, GuestAddress(offset))
            .map_err(|e| e.to_string())?;
    }
    let vm = KvmVm::new(kvm, mem).map_err(|e| e.to_string())?;
    vm.set_dirty_logging(0, true).map_err(|e| e.to_string())?;
    Ok(vm)
}

/// The raw baseline: every byte of slot 0 written to `path`, a chunk at a time, straight from
/// guest memory.
fn raw_write(vm: &KvmVm, path: &Path, sync: bool) {
    let mut file = File::create(path).unwrap();
    let host = vm
        .get_memory()
        .get_host_address_range(GuestAddress(0), SIZE as usize)
        .unwrap();
    for offset in (0..SIZE as usize).step_by(CHUNK) {
        // SAFETY: `host..host + SIZE` is the live mapping of the VM's boot RAM, which `vm`
        // keeps; the kernel reads it and nothing writes it meanwhile.
        let bytes = unsafe { std::slice::from_raw_parts(host.add(offset), CHUNK) };
        file.write_all(bytes).unwrap();
    }
    if sync {
        file.sync_data().unwrap();
    }
}

/// The raw baseline of a restore: every byte of `path` read into guest memory.
fn raw_read(vm: &KvmVm, path: &Path) {
    let file = File::open(path).unwrap();
    let len = file.metadata().unwrap().len() as usize;
    let host = vm
        .get_memory()
        .get_host_address_range(GuestAddress(0), SIZE as usize)
        .unwrap() as *mut u8;
    let mut done = 0;
    while done < len {
        let n = (len - done)
            .min(CHUNK)
            .min(SIZE as usize - done % SIZE as usize);
        // SAFETY: the kernel writes `n` bytes inside the VM's live boot RAM mapping.
        let got = unsafe {
            libc::pread(
                std::os::fd::AsRawFd::as_raw_fd(&file),
                host.add(done % SIZE as usize) as *mut libc::c_void,
                n,
                done as i64,
            )
        };
        assert!(got > 0, "{}", std::io::Error::last_os_error());
        done += got as usize;
    }
}

pub fn rows(rows: &mut Vec<Row>) -> Result<(), String> {
    let kvm = Kvm::new().map_err(|e| format!("snapshot rows need /dev/kvm: {e}"))?;
    let source = vm(&kvm)?;
    let target = vm(&kvm)?;
    let here = std::env::current_dir().map_err(|e| e.to_string())?;
    let ours_dir: PathBuf = here.join(format!(".bench-snapshot-{}", std::process::id()));
    let raw_file = here.join(format!(".bench-snapshot-raw-{}", std::process::id()));
    let plan = Plan {
        rounds: 7,
        sample: Duration::from_millis(1),
    };
    for sync in [false, true] {
        let name = if sync {
            "snapshot full layer 256MiB, flushed, vs write+fdatasync"
        } else {
            "snapshot full layer 256MiB, page cache, vs write(2)"
        };
        rows.push(compare_ops(
            &plan,
            name,
            vec![
                Op::self_timed(|| {
                    let _ = std::fs::remove_dir_all(&ours_dir);
                    let t = Instant::now();
                    SnapshotWriter::create(&ours_dir)
                        .unwrap()
                        .durable(sync)
                        .write_full(&source, b"")
                        .unwrap();
                    t.elapsed()
                }),
                Op::self_timed(|| {
                    let _ = std::fs::remove_file(&raw_file);
                    let t = Instant::now();
                    raw_write(&source, &raw_file, sync);
                    t.elapsed()
                }),
            ],
        ));
    }
    // Both files stay from the last round: restore the layer, and read the raw file whole.
    let layer = ours_dir.join(layer_name(0));
    rows.push(compare_ops(
        &plan,
        "snapshot restore 256MiB (checked) vs read(2) of the layer",
        vec![
            Op::each(|| {
                snapshot::restore(&ours_dir, &target).unwrap();
            }),
            Op::each(|| raw_read(&target, &layer)),
        ],
    ));
    // The restored memory is the source's: the rows measured a real copy.
    snapshot::restore(&ours_dir, &target).map_err(|e| e.to_string())?;
    let _ = std::fs::remove_dir_all(&ours_dir);
    let _ = std::fs::remove_file(&raw_file);
    let same = (0..SIZE).step_by(CHUNK).all(|offset| {
        let (mut a, mut b) = (vec![0u8; 64], vec![0u8; 64]);
        source
            .get_memory()
            .read_exact_at_addr(&mut a, GuestAddress(offset))
            .unwrap();
        target
            .get_memory()
            .read_exact_at_addr(&mut b, GuestAddress(offset))
            .unwrap();
        a == b
    });
    if !same {
        return Err("the restored memory differs from the snapshot's".into());
    }
    Ok(())
}
