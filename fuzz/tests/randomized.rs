// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The fuzz targets' seeded, time-bounded versions, run by `tools/run_tests`: the seed
//! corpus of each target, then random inputs and mutations of the corpus from fixed seeds
//! for `FUZZ_SECONDS` seconds (default 4) each. A failing input is written to `target/fuzz-failures/` so that
//! `cargo fuzz run <target> <file>` replays it.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn budget() -> Duration {
    let secs = std::env::var("FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(4.0);
    Duration::from_secs_f64(secs)
}

/// Runs `target` on `input`; on a panic keeps the input and fails naming it.
fn one(name: &str, target: fn(&[u8]), input: &[u8], origin: &str) {
    if catch_unwind(AssertUnwindSafe(|| target(input))).is_err() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-failures");
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join(format!("{name}-{origin}"));
        let _ = std::fs::write(&path, input);
        panic!(
            "{name} failed on {origin}; the input is in {}",
            path.display()
        );
    }
}

/// Flips, overwrites, inserts and drops a few bytes of `input`.
fn mutate(rng: &mut StdRng, input: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..rng.random_range(1..8) {
        let at = rng.random_range(0..=out.len());
        match rng.random_range(0..4) {
            0 if at < out.len() => out[at] ^= 1 << rng.random_range(0..8),
            1 if at < out.len() => out[at] = rng.random(),
            2 => out.insert(at, rng.random()),
            _ if at < out.len() => {
                out.remove(at);
            }
            _ => out.push(rng.random()),
        }
    }
    out
}

/// Runs the seed corpus (`builtin` and `seeds/<name>/`), then, until the time is up, random
/// inputs and mutations of the corpus, each from its own fixed seed.
fn randomized(name: &str, target: fn(&[u8]), builtin: Vec<Vec<u8>>) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("seeds")
        .join(name);
    let mut corpus = builtin;
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for entry in entries.flatten() {
            corpus.push(std::fs::read(entry.path()).unwrap());
        }
    }
    for (i, input) in corpus.iter().enumerate() {
        one(name, target, input, &format!("corpus-{i}"));
    }
    let start = Instant::now();
    let mut seed = 0u64;
    while start.elapsed() < budget() {
        let mut rng = StdRng::seed_from_u64(seed);
        let input = if !corpus.is_empty() && rng.random_bool(0.5) {
            let base = &corpus[rng.random_range(0..corpus.len())];
            mutate(&mut rng, base)
        } else {
            // Mostly short inputs, some long enough for many operations.
            let len = if rng.random_bool(0.8) {
                rng.random_range(0..256)
            } else {
                rng.random_range(256..4096)
            };
            (0..len).map(|_| rng.random()).collect()
        };
        one(name, target, &input, &format!("seed-{seed}"));
        seed += 1;
    }
    println!(
        "{name}: {} corpus inputs, then {seed} random or mutated ones (seeds 0..{seed})",
        corpus.len()
    );
}

/// Bytes that `virtqueue::run` reads as a well-behaved driver: a 16-entry queue with its
/// rings at 0, 0x1000 and 0x2000, a two-descriptor chain (readable, then writable), notified
/// twice, the second time with event-idx on.
fn virtqueue_seeds() -> Vec<Vec<u8>> {
    // address(): pick 5 is "a 16-aligned u16", then a zero delta.
    let at = |a: u16| [5, a as u8, (a >> 8) as u8, 0];
    let poke = |a: u16, bytes: &[u8]| {
        let mut v = vec![0];
        v.extend(at(a));
        v.push(bytes.len() as u8);
        v.extend(bytes);
        v
    };
    let desc = |addr: u64, len: u32, flags: u16, next: u16| {
        let mut v = addr.to_le_bytes().to_vec();
        v.extend(len.to_le_bytes());
        v.extend(flags.to_le_bytes());
        v.extend(next.to_le_bytes());
        v
    };
    let mut s = vec![2, 2, 4]; // configure: size 1 << 4
    s.extend(at(0x0000));
    s.extend(at(0x1000));
    s.extend(at(0x2000));
    s.push(3); // enable
    let mut chain = desc(0x4000, 0x10, 1, 1);
    chain.extend(desc(0x5000, 0x20, 2, 0));
    s.extend(poke(0x0000, &chain));
    s.extend(poke(0x1000, &[0, 0, 1, 0, 0, 0]));
    s.push(7); // notify
    s.extend([6, 1]); // event idx on
    s.extend(poke(0x1000, &[0, 0, 2, 0, 0, 0, 0, 0]));
    s.push(7);
    vec![s]
}

/// Bytes that `mmio::run` reads as a driver's whole handshake: status steps, features,
/// queue 0 at 0, 0x1000 and 0x2000, ready, DRIVER_OK, one chain, a notify, the ACK.
fn mmio_seeds() -> Vec<Vec<u8>> {
    // op 0x80: a write at a raw offset; value kind 0 (raw u32); width kind 0 (4 bytes).
    let write = |offset: u16, value: u32| {
        let mut v = vec![0x80];
        v.extend(offset.to_le_bytes());
        v.push(0);
        v.extend(value.to_le_bytes());
        v.push(0);
        v
    };
    // op 3: a memory write; the offset byte is read and unused; address = u16 << 1.
    let poke = |addr: u16, bytes: &[u8]| {
        let mut v = vec![3, 0];
        v.extend((addr >> 1).to_le_bytes());
        v.push(bytes.len() as u8);
        v.extend(bytes);
        v
    };
    let mut s = Vec::new();
    for (offset, value) in [
        (0x070, 1),
        (0x070, 3),
        (0x024, 1),
        (0x020, 1),
        (0x070, 0xb),
        (0x030, 0),
        (0x038, 16),
        (0x080, 0),
        (0x090, 0x1000),
        (0x0a0, 0x2000),
        (0x044, 1),
        (0x070, 0xf),
    ] {
        s.extend(write(offset, value));
    }
    let mut chain = 0x4000u64.to_le_bytes().to_vec();
    chain.extend([0x10, 0, 0, 0, 1, 0, 1, 0]);
    chain.extend(0x5000u64.to_le_bytes());
    chain.extend([0x20, 0, 0, 0, 2, 0, 0, 0]);
    s.extend(poke(0x0000, &chain));
    s.extend(poke(0x1000, &[0, 0, 1, 0, 0, 0]));
    s.extend(write(0x050, 0));
    s.extend(write(0x064, 1));
    vec![s]
}

/// A valid full layer (resealed by the target when the first byte is odd): one slot of four
/// pages at 1 MiB, one run of its pages 1 and 2, a little state.
fn snapshot_seeds() -> Vec<Vec<u8>> {
    let mut layer = Vec::new();
    layer.extend(*b"VMMSNAP\0");
    for v in [1u32, 0, 0, 1] {
        layer.extend(v.to_le_bytes()); // version, kind, sequence, slot count
    }
    for v in [1u64, 3, 2 * 4096] {
        layer.extend(v.to_le_bytes()); // run count, state length, data length
    }
    layer.extend([0u8; 16]); // parent checksum, header checksum, reserved
    layer.extend(0u32.to_le_bytes()); // slot 0
    layer.extend(2u32.to_le_bytes()); // boot RAM
    layer.extend((1u64 << 20).to_le_bytes());
    layer.extend((4u64 * 4096).to_le_bytes());
    layer.extend(0u32.to_le_bytes()); // run: slot 0
    layer.extend(0u32.to_le_bytes());
    layer.extend(4096u64.to_le_bytes());
    layer.extend((2u64 * 4096).to_le_bytes());
    layer.extend(*b"abc");
    layer.extend((0..2 * 4096).map(|i| i as u8));
    layer.extend([0u8; 8]);
    layer.extend(*b"VMSNPEND");
    vmm_memory_fuzz::snapshot_layer::reseal(&mut layer);
    let mut sealed = vec![0u8];
    sealed.extend(&layer);
    let mut resealing = vec![1u8];
    resealing.extend(&layer);
    vec![sealed, resealing]
}

#[test]
fn snapshot_layers() {
    randomized(
        "snapshot_layer",
        vmm_memory_fuzz::snapshot_layer::run,
        snapshot_seeds(),
    );
}

#[test]
fn the_snapshot_seed_is_a_valid_layer() {
    // Otherwise the corpus would test only the refusals.
    let dir = std::env::temp_dir().join(format!("vmm-fuzz-seed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let seed = &snapshot_seeds()[0];
    std::fs::write(dir.join(hypervisor::snapshot::layer_name(0)), &seed[1..]).unwrap();
    let layers = hypervisor::snapshot::verify(&dir).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!((layers[0].pages, layers[0].runs), (2, 1));
}

#[test]
fn guest_memory_ranges() {
    randomized(
        "guest_memory",
        vmm_memory_fuzz::guest_memory::run,
        Vec::new(),
    );
}

#[test]
fn virtqueue_rings() {
    randomized(
        "virtqueue",
        vmm_memory_fuzz::virtqueue::run,
        virtqueue_seeds(),
    );
}

#[test]
fn mmio_registers() {
    randomized("mmio", vmm_memory_fuzz::mmio::run, mmio_seeds());
}

#[test]
fn vm_memory_requests() {
    if !vmm_memory_fuzz::vm_memory_request::kvm_available() {
        assert!(
            std::env::var_os("VMM_REQUIRE_KVM").is_none_or(|v| v != "1"),
            "KVM is required here but /dev/kvm does not open"
        );
        println!("KVM-SKIP vm_memory_requests: /dev/kvm cannot be opened");
        return;
    }
    randomized(
        "vm_memory_request",
        vmm_memory_fuzz::vm_memory_request::run,
        Vec::new(),
    );
}

/// The environment variable that marks the process `vhost_user_messages` runs in alone.
const VHOST_USER_ALONE: &str = "VMM_FUZZ_VHOST_USER_ALONE";

fn running_input() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-failures/vhost_user-running")
}

/// `vhost_user::run`, leaving its input in [`running_input`] first: a crash (SIGBUS, say)
/// kills the process before `one` can keep the input.
fn vhost_user_kept(data: &[u8]) {
    let _ = std::fs::write(running_input(), data);
    vmm_memory_fuzz::vhost_user::run(data);
}

#[test]
fn vhost_user_messages() {
    // It counts the process's descriptors and mappings, which the tests running beside it
    // change: it runs alone, in a process of its own (this binary, asked for it only).
    if std::env::var_os(VHOST_USER_ALONE).is_none() {
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "vhost_user_messages",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(VHOST_USER_ALONE, "1")
            .status()
            .expect("the test binary runs again");
        assert!(
            status.success(),
            "vhost_user's randomized run failed ({status}); if it crashed, the input it was \
             running is in {}",
            running_input().display()
        );
        return;
    }
    let _ = std::fs::create_dir_all(running_input().parent().unwrap());
    randomized(
        "vhost_user",
        vhost_user_kept,
        vmm_memory_fuzz::vhost_user::seeds(),
    );
    let _ = std::fs::remove_file(running_input());
}
