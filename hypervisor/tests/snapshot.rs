// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Snapshots on real KVM: a full layer and incremental ones restore byte for byte into a
//! fresh VM, over boot RAM and an added slot; a failed layer leaves its pages for the next;
//! layers are durable when written (counted with cachestat); and every kind of bad layer is
//! refused with its own error.

mod common;

use std::path::{Path, PathBuf};

use base::{MemoryMappingBuilder, SharedMemory};
use common::*;
use hypervisor::kvm::{Kvm, KvmVcpu, KvmVm};
use hypervisor::snapshot::{self, layer_name, Error, SnapshotWriter};
use hypervisor::{MemCacheType, Vm};
use vm_memory::{GuestAddress, GuestMemory};

const RAM: u64 = 64 * P;
const DYN: u64 = 0x40_0000;
const DYN_SIZE: u64 = 16 * P;

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("snapshot-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// A VM with logged boot RAM and a logged added slot, running `code`.
fn vm(kvm: &Kvm, code: &[u8]) -> (KvmVm, KvmVcpu) {
    let (vm, vcpu) = vm_with_program(kvm, RAM, code);
    add_slot(&vm);
    vm.set_dirty_logging(0, true).unwrap();
    (vm, vcpu)
}

fn add_slot(vm: &KvmVm) {
    let shm = SharedMemory::new("dyn", DYN_SIZE).unwrap();
    let map = MemoryMappingBuilder::new(DYN_SIZE as usize)
        .from_shared_memory(&shm)
        .build()
        .unwrap();
    vm.add_memory_region(
        GuestAddress(DYN),
        Box::new(map),
        false,
        true,
        MemCacheType::CacheCoherent,
    )
    .unwrap();
}

/// Every byte of slots 0 and 1.
fn contents(vm: &dyn Vm) -> Vec<u8> {
    let mut out = Vec::new();
    for (slot, size) in [(0, RAM), (1, DYN_SIZE)] {
        vm.with_slot_memory(slot, 0, size as usize, &mut |s| {
            let mut buf = vec![0u8; s.size()];
            s.copy_to(&mut buf);
            out.extend(buf);
            Ok(())
        })
        .unwrap();
    }
    out
}

/// Writes a value into page `page` of slot `slot` from the host side.
fn poke(vm: &dyn Vm, slot: u32, page: u64, value: u64) {
    vm.with_slot_memory(slot, (page * P) as usize, 8, &mut |s| {
        s.write_obj(value, 0).map_err(std::io::Error::other)
    })
    .unwrap();
}

/// A fresh VM of the same layout, nothing run.
fn fresh(kvm: &Kvm) -> KvmVm {
    let vm = KvmVm::new(kvm, GuestMemory::new(&[(GuestAddress(0), RAM)]).unwrap()).unwrap();
    add_slot(&vm);
    vm.set_dirty_logging(0, true).unwrap();
    vm
}

/// A guest that writes pages 20 and 21 of RAM and page 3 of the slot, reports, writes page
/// 22 and page 5 of the slot, reports, and halts.
fn program() -> Vec<u8> {
    Asm::default()
        .store_imm(20 * P as u32, 0x2020)
        .store_imm(21 * P as u32 + 100, 0x2121)
        .store_imm(DYN as u32 + 3 * P as u32, 0x0303)
        .report_eax()
        .store_imm(22 * P as u32, 0x2222)
        .store_imm(DYN as u32 + 5 * P as u32, 0x0505)
        .report_eax()
        .hlt()
        .0
}

#[test]
fn full_and_incremental_layers_restore_byte_for_byte_into_a_fresh_vm() {
    let Some(kvm) = kvm_or_skip("snapshot_round_trip") else {
        return;
    };
    let dir = scratch("round-trip");
    let (vm, mut vcpu) = vm(&kvm, &program());
    let mut w = SnapshotWriter::create(&dir).unwrap();
    // Incremental before full is refused.
    assert!(matches!(
        w.write_incremental(&vm, b""),
        Err(Error::FirstLayerKind { sequence: 0, .. })
    ));
    let full = w.write_full(&vm, b"state 0").unwrap();
    assert!(full.full);
    assert_eq!(full.pages, (RAM + DYN_SIZE) / P);
    assert!(matches!(
        w.write_full(&vm, b""),
        Err(Error::FirstLayerKind { sequence: 1, .. })
    ));

    run_to_report(&mut vcpu);
    // The VMM writes a page of boot RAM too, through GuestMemory: the full layer turned the
    // tracking of its writes on.
    assert!(vm.get_memory().dirty_tracking());
    vm.get_memory()
        .write_obj_at_addr(0xfeedu64, GuestAddress(40 * P))
        .unwrap();
    let one = w.write_incremental(&vm, b"state 1").unwrap();
    // Pages 20, 21, 40 of RAM and 3 of the slot: nothing else (the code page is read only).
    assert_eq!(one.pages, 4, "{one:?}");
    run_to_report(&mut vcpu);
    let two = w.write_incremental(&vm, b"state two").unwrap();
    assert_eq!(two.pages, 2, "{two:?}");
    // Nothing changed since: an empty layer is still a layer.
    let three = w.write_incremental(&vm, b"").unwrap();
    assert_eq!((three.pages, three.runs), (0, 0));
    // With the VMM's writes no longer tracked, an incremental layer could miss some: refused.
    vm.get_memory().set_dirty_tracking(false);
    assert!(matches!(
        w.write_incremental(&vm, b""),
        Err(Error::DirtyTrackingOff { sequence: 4 })
    ));
    vm.get_memory().set_dirty_tracking(true);

    let checked = snapshot::verify(&dir).unwrap();
    assert_eq!(checked.len(), 4);
    assert_eq!(checked[2].checksum, two.checksum);

    let target = fresh(&kvm);
    // The target's memory starts different: restore must overwrite it.
    poke(&target, 0, 30, 0x5555);
    let restored = snapshot::restore(&dir, &target).unwrap();
    assert_eq!(restored.layers.len(), 4);
    assert!(restored.state.is_empty());
    assert!(
        contents(&target) == contents(&vm),
        "memory differs after restore"
    );

    // Negative control: without the last data layer, the restore is missing page 22.
    std::fs::remove_file(dir.join(layer_name(3))).unwrap();
    std::fs::remove_file(dir.join(layer_name(2))).unwrap();
    let partial = fresh(&kvm);
    let restored = snapshot::restore(&dir, &partial).unwrap();
    assert_eq!(restored.state, b"state 1");
    assert!(contents(&partial) != contents(&vm));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_layer_that_fails_leaves_its_pages_for_the_next() {
    let Some(kvm) = kvm_or_skip("snapshot_transactional") else {
        return;
    };
    let dir = scratch("transactional");
    let (vm, mut vcpu) = vm(&kvm, &program());
    let mut w = SnapshotWriter::create(&dir).unwrap().durable(false);
    w.write_full(&vm, b"").unwrap();
    run_to_report(&mut vcpu);
    // Something is in the way of layer 1's temporary file: the write fails.
    let obstacle = dir.join(format!(".{}.partial", layer_name(1)));
    std::fs::create_dir(&obstacle).unwrap();
    let err = w.write_incremental(&vm, b"").unwrap_err();
    assert!(matches!(err, Error::Io { op: "create", .. }), "{err}");
    assert!(!dir.join(layer_name(1)).exists());
    std::fs::remove_dir(&obstacle).unwrap();
    // The pages of the failed layer are in the next one, with those dirtied since.
    run_to_report(&mut vcpu);
    let one = w.write_incremental(&vm, b"").unwrap();
    assert_eq!((one.sequence, one.pages), (1, 5), "{one:?}");
    let target = fresh(&kvm);
    snapshot::restore(&dir, &target).unwrap();
    assert!(contents(&target) == contents(&vm));
    // A new snapshot cannot be started over an old one.
    assert!(matches!(
        SnapshotWriter::create(&dir),
        Err(Error::DirectoryNotEmpty { .. })
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn durable_layers_leave_no_dirty_page_cache_and_others_may() {
    let Some(kvm) = kvm_or_skip("snapshot_durable") else {
        return;
    };
    let dirty = |path: &Path| {
        let file = std::fs::File::open(path).unwrap();
        let len = file.metadata().unwrap().len();
        let stat = base::page_cache::cachestat(std::os::fd::AsFd::as_fd(&file), 0, len).unwrap();
        stat.dirty + stat.writeback
    };
    let (vm, _vcpu) = vm(&kvm, &program());
    let lazy_dir = scratch("lazy");
    SnapshotWriter::create(&lazy_dir)
        .unwrap()
        .durable(false)
        .write_full(&vm, b"")
        .unwrap();
    // The negative control: a layer not flushed still has dirty pages right after.
    let lazy = dirty(&lazy_dir.join(layer_name(0)));
    vm.set_dirty_logging(0, false).unwrap();
    vm.set_dirty_logging(0, true).unwrap();
    let dir = scratch("durable");
    SnapshotWriter::create(&dir)
        .unwrap()
        .write_full(&vm, b"")
        .unwrap();
    assert_eq!(dirty(&dir.join(layer_name(0))), 0);
    assert!(
        lazy > 0,
        "the unflushed layer had no dirty page: the check proves nothing"
    );
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_dir_all(&lazy_dir).unwrap();
}

/// Rewrites a layer's header checksum and layer checksum after an edit, so that only the
/// edit is wrong.
fn reseal(bytes: &mut [u8]) {
    bytes[52..56].fill(0);
    let header = crc32fast::hash(&bytes[..64]);
    bytes[52..56].copy_from_slice(&header.to_le_bytes());
    let end = bytes.len() - 16;
    let layer = crc32fast::hash(&bytes[..end]);
    bytes[end..end + 4].copy_from_slice(&layer.to_le_bytes());
}

#[test]
fn bad_layers_are_refused_each_with_its_own_error() {
    let Some(kvm) = kvm_or_skip("snapshot_refusals") else {
        return;
    };
    let dir = scratch("refusals");
    let (vm, mut vcpu) = vm(&kvm, &program());
    let mut w = SnapshotWriter::create(&dir).unwrap().durable(false);
    w.write_full(&vm, b"state").unwrap();
    run_to_report(&mut vcpu);
    w.write_incremental(&vm, b"state").unwrap();
    let l0 = dir.join(layer_name(0));
    let l1 = dir.join(layer_name(1));
    let good0 = std::fs::read(&l0).unwrap();
    let good1 = std::fs::read(&l1).unwrap();
    let len1 = good1.len();
    // Layer 1: header 64, 2 slots (48), runs, state 5, data, trailer 16.
    let runs = u64::from_le_bytes(good1[24..32].try_into().unwrap()) as usize;
    let data_at = 64 + 48 + runs * 24 + 5;
    let run_at = 64 + 48;

    type Edit = Box<dyn Fn(&mut Vec<u8>)>;
    type Expected = fn(&Error) -> bool;
    let cases: Vec<(&str, Edit, Expected)> = vec![
        (
            "truncated in the header",
            Box::new(|b| b.truncate(40)),
            |e| {
                matches!(
                    e,
                    Error::Truncated {
                        offset: 0,
                        needed: 64,
                        len: 40,
                        ..
                    }
                )
            },
        ),
        (
            "truncated in the data",
            Box::new(move |b| b.truncate(data_at + 10)),
            |e| matches!(e, Error::Truncated { .. }),
        ),
        (
            "truncated trailer",
            Box::new(move |b| b.truncate(len1 - 1)),
            |e| matches!(e, Error::Truncated { needed: 1, .. }),
        ),
        ("a byte past the end", Box::new(|b| b.push(0)), |e| {
            matches!(e, Error::TrailingBytes { extra: 1, .. })
        }),
        (
            "a data byte flipped",
            Box::new(move |b| b[data_at + 4] ^= 1),
            |e| matches!(e, Error::LayerChecksum { .. }),
        ),
        (
            "the state flipped",
            Box::new(move |b| b[data_at - 1] ^= 1),
            |e| matches!(e, Error::LayerChecksum { .. }),
        ),
        ("a header byte flipped", Box::new(|b| b[20] ^= 0x80), |e| {
            matches!(e, Error::HeaderChecksum { .. })
        }),
        (
            "another magic",
            Box::new(|b| b[0] = b'X'),
            |e| matches!(e, Error::BadMagic { found, .. } if found[0] == b'X'),
        ),
        (
            "version 2",
            Box::new(|b| {
                b[8] = 2;
                reseal(b)
            }),
            |e| {
                matches!(
                    e,
                    Error::UnsupportedVersion {
                        version: 2,
                        supported: 1,
                        ..
                    }
                )
            },
        ),
        (
            "another parent",
            Box::new(|b| {
                b[48] ^= 1;
                reseal(b)
            }),
            |e| matches!(e, Error::ChainBroken { sequence: 1, .. }),
        ),
        (
            "sequence 7",
            Box::new(|b| {
                b[16] = 7;
                reseal(b)
            }),
            |e| {
                matches!(
                    e,
                    Error::SequenceMismatch {
                        expected: 1,
                        found: 7,
                        ..
                    }
                )
            },
        ),
        (
            "a full layer second",
            Box::new(|b| {
                b[12] = 0;
                reseal(b)
            }),
            |e| matches!(e, Error::FirstLayerKind { sequence: 1, .. }),
        ),
        (
            "a run past its slot",
            Box::new(move |b| {
                b[run_at + 8..run_at + 16].copy_from_slice(&(1u64 << 40).to_le_bytes());
                reseal(b)
            }),
            |e| matches!(e, Error::RunOutsideSlot { offset, .. } if *offset == 1 << 40),
        ),
        (
            "a run in an unlisted slot",
            Box::new(move |b| {
                b[run_at] = 9;
                reseal(b)
            }),
            |e| {
                matches!(
                    e,
                    Error::RunOutsideSlot {
                        slot: 9,
                        slot_size: 0,
                        ..
                    }
                )
            },
        ),
        (
            "a run offset not a page",
            Box::new(move |b| {
                b[run_at + 8] = 8;
                reseal(b)
            }),
            |e| matches!(e, Error::RunNotWholePages { slot: 0, .. }),
        ),
        (
            "a run count of 2^61",
            Box::new(|b| {
                b[24..32].copy_from_slice(&(1u64 << 61).to_le_bytes());
                reseal(b)
            }),
            |e| matches!(e, Error::SizesOverflow { .. }),
        ),
        (
            "a run a page longer than the data",
            Box::new(move |b| {
                let len = u64::from_le_bytes(b[run_at + 16..run_at + 24].try_into().unwrap());
                b[run_at + 16..run_at + 24].copy_from_slice(&(len + P).to_le_bytes());
                reseal(b)
            }),
            |e| matches!(e, Error::DataLengthMismatch { runs, header, .. } if *runs == *header + P),
        ),
        (
            "a run's reserved bytes set",
            Box::new(move |b| {
                b[run_at + 4] = 1;
                reseal(b)
            }),
            |e| {
                matches!(
                    e,
                    Error::NonzeroReserved {
                        field: "run reserved bytes",
                        value: 1,
                        ..
                    }
                )
            },
        ),
        (
            "the header's reserved bytes set",
            Box::new(|b| {
                b[63] = 0x80;
                reseal(b)
            }),
            |e| {
                matches!(
                    e,
                    Error::NonzeroReserved {
                        field: "header reserved bytes",
                        ..
                    }
                )
            },
        ),
        (
            "a slot flag this version does not know",
            Box::new(|b| {
                b[64 + 4] |= 4;
                reseal(b)
            }),
            |e| {
                matches!(
                    e,
                    Error::NonzeroReserved {
                        field: "slot flags",
                        value: 4,
                        ..
                    }
                )
            },
        ),
        (
            "a slot listed twice",
            Box::new(|b| {
                b[64 + 24..64 + 28].copy_from_slice(&0u32.to_le_bytes());
                reseal(b)
            }),
            |e| matches!(e, Error::DuplicateSlot { slot: 0, .. }),
        ),
        (
            "another end magic",
            Box::new(|b| {
                let end = b.len() - 1;
                b[end] = b'X';
            }),
            |e| matches!(e, Error::BadEndMagic { found, .. } if found[7] == b'X'),
        ),
        (
            "a state of a terabyte, in a sparse file",
            // The file is made as long as the header says when it is written below.
            Box::new(|b| {
                b[32..40].copy_from_slice(&(1u64 << 40).to_le_bytes());
                reseal(b);
            }),
            |e| {
                matches!(
                    e,
                    Error::StateTooLarge { len, max, .. } if *len == 1 << 40 && *max == 256 << 20
                )
            },
        ),
        (
            "a huge data length",
            Box::new(|b| {
                b[40..48].copy_from_slice(&(1u64 << 50).to_le_bytes());
                reseal(b)
            }),
            |e| matches!(e, Error::Truncated { .. }),
        ),
        (
            "a slot count of 2^20",
            Box::new(|b| {
                b[20..24].copy_from_slice(&(1u32 << 20).to_le_bytes());
                reseal(b)
            }),
            |e| {
                matches!(
                    e,
                    Error::TooManySlots {
                        count: 0x10_0000,
                        max: 0x1_0000,
                        ..
                    }
                )
            },
        ),
    ];
    for (name, edit, expected) in cases {
        let mut bytes = good1.clone();
        edit(&mut bytes);
        std::fs::write(&l1, &bytes).unwrap();
        if name.contains("sparse") {
            // As long as the header claims, and occupying nothing: only the header's cap
            // keeps a reader from allocating it all.
            let f = std::fs::OpenOptions::new().write(true).open(&l1).unwrap();
            f.set_len(64 + 48 + runs as u64 * 24 + (1 << 40) + 16)
                .unwrap();
        }
        let err = snapshot::verify(&dir).unwrap_err();
        assert!(expected(&err), "{name}: {err}");
        // Restore refuses it the same way.
        let err = snapshot::restore(&dir, &fresh(&kvm)).unwrap_err();
        assert!(expected(&err), "{name} (restore): {err}");
    }
    std::fs::write(&l1, &good1).unwrap();
    snapshot::verify(&dir).unwrap();

    // An incremental layer first; no layer at all.
    std::fs::write(&l0, &good1).unwrap();
    let err = snapshot::verify(&dir).unwrap_err();
    assert!(
        matches!(
            err,
            Error::SequenceMismatch {
                expected: 0,
                found: 1,
                ..
            }
        ),
        "{err}"
    );
    let mut incremental_first = good1.clone();
    incremental_first[16] = 0;
    reseal(&mut incremental_first);
    std::fs::write(&l0, &incremental_first).unwrap();
    let err = snapshot::verify(&dir).unwrap_err();
    assert!(
        matches!(err, Error::FirstLayerKind { sequence: 0, .. }),
        "{err}"
    );
    std::fs::write(&l0, &good0).unwrap();
    // Not a regular file under a layer's name: refused without waiting on a FIFO's writer.
    std::fs::remove_file(&l1).unwrap();
    let fifo = std::ffi::CString::new(l1.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo reads the path, a NUL-terminated string that lives across the call.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    let err = snapshot::verify(&dir).unwrap_err();
    assert!(
        matches!(err, Error::NotAFile { ref path } if *path == l1),
        "{err}"
    );
    std::fs::remove_file(&l1).unwrap();
    std::fs::create_dir(&l1).unwrap();
    let err = snapshot::verify(&dir).unwrap_err();
    assert!(matches!(err, Error::NotAFile { .. }), "{err}");
    std::fs::remove_dir(&l1).unwrap();
    // A gap in the chain: layer 2 is there, layer 1 is not. Restoring layer 0 alone would
    // quietly roll back past layer 2.
    std::fs::write(dir.join(layer_name(2)), &good1).unwrap();
    let err = snapshot::verify(&dir).unwrap_err();
    assert!(
        matches!(
            err,
            Error::MissingLayer {
                missing: 1,
                found: 2,
                ..
            }
        ),
        "{err}"
    );
    let err = snapshot::restore(&dir, &fresh(&kvm)).unwrap_err();
    assert!(matches!(err, Error::MissingLayer { .. }), "{err}");
    std::fs::remove_file(dir.join(layer_name(2))).unwrap();
    std::fs::write(&l1, &good1).unwrap();
    snapshot::verify(&dir).unwrap();
    let empty = scratch("empty");
    std::fs::create_dir_all(&empty).unwrap();
    assert!(matches!(
        snapshot::verify(&empty),
        Err(Error::NoLayers { .. })
    ));

    // A VM whose slots are not the snapshot's: no added slot, or one elsewhere.
    let other = KvmVm::new(&kvm, GuestMemory::new(&[(GuestAddress(0), RAM)]).unwrap()).unwrap();
    let err = snapshot::restore(&dir, &other).unwrap_err();
    assert!(matches!(err, Error::SlotMismatch { slot: 1, .. }), "{err}");
    let small = KvmVm::new(
        &kvm,
        GuestMemory::new(&[(GuestAddress(0), RAM / 2)]).unwrap(),
    )
    .unwrap();
    let err = snapshot::restore(&dir, &small).unwrap_err();
    assert!(matches!(err, Error::SlotMismatch { slot: 0, .. }), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_dir_all(&empty).unwrap();
}

#[test]
fn a_layer_of_many_buffers_round_trips() {
    let Some(kvm) = kvm_or_skip("snapshot_large") else {
        return;
    };
    // 21 MiB and a page: more than five of the pipeline's 4 MiB buffers, the last partial.
    let size = (21 << 20) + P;
    let mem = GuestMemory::new(&[(GuestAddress(0), size)]).unwrap();
    for page in 0..size / P {
        mem.write_obj_at_addr(
            page * 0x9e37_79b9 + 1,
            GuestAddress(page * P + (page % 509) * 8),
        )
        .unwrap();
    }
    let vm = KvmVm::new(&kvm, mem).unwrap();
    vm.set_dirty_logging(0, true).unwrap();
    let dir = scratch("large");
    let layer = SnapshotWriter::create(&dir)
        .unwrap()
        .durable(false)
        .write_full(&vm, b"large")
        .unwrap();
    assert_eq!(layer.data_bytes, size);
    let target = KvmVm::new(&kvm, GuestMemory::new(&[(GuestAddress(0), size)]).unwrap()).unwrap();
    target.set_dirty_logging(0, true).unwrap();
    let restored = snapshot::restore(&dir, &target).unwrap();
    assert_eq!(restored.state, b"large");
    let whole = |vm: &KvmVm| {
        let mut buf = vec![0u8; size as usize];
        vm.get_memory()
            .read_exact_at_addr(&mut buf, GuestAddress(0))
            .unwrap();
        buf
    };
    assert!(whole(&vm) == whole(&target), "the restored memory differs");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_layer_written_while_the_vmm_writes_verifies_and_the_next_quiet_one_restores() {
    let Some(kvm) = kvm_or_skip("snapshot_racing_writes") else {
        return;
    };
    let pages = 1024;
    let mem = GuestMemory::new(&[(GuestAddress(0), pages * P)]).unwrap();
    let vm = KvmVm::new(&kvm, mem).unwrap();
    vm.set_dirty_logging(0, true).unwrap();
    vm.get_memory().set_dirty_tracking(true);
    let dir = scratch("racing");
    let mut w = SnapshotWriter::create(&dir).unwrap().durable(false);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let written = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|s| {
        // A device thread writing all over memory, unsynchronised with the layers: each write
        // lands in a page while some layer may be copying it.
        s.spawn(|| {
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let at = GuestAddress((i % pages) * P + (i * 8) % P);
                vm.get_memory().write_obj_at_addr(i, at).unwrap();
                i += 1;
                written.store(i, std::sync::atomic::Ordering::Relaxed);
            }
        });
        while written.load(std::sync::atomic::Ordering::Relaxed) == 0 {
            std::thread::yield_now();
        }
        let layers = (|| {
            w.write_full(&vm, b"")?;
            for _ in 0..8 {
                w.write_incremental(&vm, b"")?;
            }
            Ok::<_, Error>(())
        })();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        layers.unwrap();
    });
    assert!(written.load(std::sync::atomic::Ordering::Relaxed) > 1000);
    // Every layer holds the checksum of the bytes it holds, however they raced.
    assert_eq!(snapshot::verify(&dir).unwrap().len(), 9);
    // Quiet now: the last layer takes what raced the ones before.
    w.write_incremental(&vm, b"quiet").unwrap();
    let target = KvmVm::new(
        &kvm,
        GuestMemory::new(&[(GuestAddress(0), pages * P)]).unwrap(),
    )
    .unwrap();
    target.set_dirty_logging(0, true).unwrap();
    let restored = snapshot::restore(&dir, &target).unwrap();
    assert_eq!(restored.state, b"quiet");
    let whole = |vm: &KvmVm| {
        let mut buf = vec![0u8; (pages * P) as usize];
        vm.get_memory()
            .read_exact_at_addr(&mut buf, GuestAddress(0))
            .unwrap();
        buf
    };
    assert!(whole(&vm) == whole(&target), "the restored memory differs");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// An arena of 8 pages: pages 0-1 read-write, 2-3 a hole, 4 read-only, 5 a hole, 6-7
/// read-write; each mapped page holds its number.
fn arena_slot() -> base::MemoryMappingArena {
    let mut arena = base::MemoryMappingArena::new(8 * P as usize).unwrap();
    let p = P as usize;
    arena.add_anon(0, 2 * p).unwrap();
    arena.add_anon(4 * p, p).unwrap();
    arena.add_anon(6 * p, 2 * p).unwrap();
    for page in [0u64, 1, 4, 6, 7] {
        let region: &dyn base::MappedRegion = &arena;
        // SAFETY: the page is mapped read-write in the arena, which outlives this write.
        unsafe { (region.as_ptr().add((page * P) as usize) as *mut u64).write(page + 0xa00) };
    }
    arena.protect(4 * p, p, base::Protection::read()).unwrap();
    arena
}

#[test]
fn arena_slots_hand_out_and_snapshot_only_their_read_write_parts() {
    let Some(kvm) = kvm_or_skip("snapshot_arena_slot") else {
        return;
    };
    let add = |vm: &KvmVm, arena: base::MemoryMappingArena| {
        vm.add_memory_region(
            GuestAddress(DYN),
            Box::new(arena),
            false,
            true,
            MemCacheType::CacheCoherent,
        )
        .unwrap()
    };
    let (vm, _vcpu) = vm_with_program(&kvm, RAM, &Asm::default().hlt().0);
    let slot = add(&vm, arena_slot());
    vm.set_dirty_logging(0, true).unwrap();
    let mappings: Vec<_> = vm
        .slot_mappings(slot)
        .unwrap()
        .into_iter()
        .map(|m| (m.offset as u64 / P, m.size as u64 / P, m.protection))
        .collect();
    let (rw, ro) = (base::Protection::read_write(), base::Protection::read());
    assert_eq!(mappings, [(0, 2, rw), (4, 1, ro), (6, 2, rw)]);
    // Boot RAM is one read-write mapping; an arena with nothing in it has none; a slot that
    // is not there is named.
    let ram: Vec<_> = vm.slot_mappings(0).unwrap();
    assert_eq!(
        ram.iter()
            .map(|m| (m.offset, m.size, m.protection))
            .collect::<Vec<_>>(),
        [(0, RAM as usize, rw)]
    );
    let (other, _o) = vm_with_program(&kvm, RAM, &[]);
    let empty = add(
        &other,
        base::MemoryMappingArena::new(4 * P as usize).unwrap(),
    );
    assert_eq!(other.slot_mappings(empty).unwrap(), []);
    assert!(matches!(
        vm.slot_mappings(77),
        Err(hypervisor::Error::UnknownSlot { slot: 77 })
    ));
    // No slice over a hole or over read-only memory: each refusal names where it starts.
    for (offset, size, at) in [(2 * P, 8, 2 * P), (P, 2 * P, 2 * P), (4 * P, 8, 4 * P)] {
        let err = vm
            .with_slot_memory(slot, offset as usize, size as usize, &mut |_| {
                panic!("handed out {offset:#x}+{size:#x}")
            })
            .unwrap_err();
        assert!(
            matches!(err, hypervisor::Error::SlotMemoryNotMapped { at: a, .. } if a == at as usize),
            "{offset:#x}+{size:#x}: {err}"
        );
    }
    vm.with_slot_memory(slot, 6 * P as usize, 2 * P as usize, &mut |s| {
        assert_eq!(s.read_obj::<u64>(0).unwrap(), 0xa06);
        Ok(())
    })
    .unwrap();

    // The full layer holds the read-write pages: all of RAM, and 4 pages of the arena.
    let dir = scratch("arena");
    let full = SnapshotWriter::create(&dir)
        .unwrap()
        .durable(false)
        .write_full(&vm, b"")
        .unwrap();
    assert_eq!(full.pages, RAM / P + 4, "{full:?}");
    // Into a VM whose arena is laid out alike (its pages blank): the pages come back.
    let (target, _t) = vm_with_program(&kvm, RAM, &[]);
    let mut blank = base::MemoryMappingArena::new(8 * P as usize).unwrap();
    blank.add_anon(0, 2 * P as usize).unwrap();
    blank.add_anon(6 * P as usize, 2 * P as usize).unwrap();
    let tslot = add(&target, blank);
    target.set_dirty_logging(0, true).unwrap();
    snapshot::restore(&dir, &target).unwrap();
    for page in [0u64, 1, 6, 7] {
        target
            .with_slot_memory(tslot, (page * P) as usize, 8, &mut |s| {
                assert_eq!(s.read_obj::<u64>(0).unwrap(), page + 0xa00, "page {page}");
                Ok(())
            })
            .unwrap();
    }
    // Into one that lacks a page the layer holds: refused by name, not a fault.
    let (bare, _b) = vm_with_program(&kvm, RAM, &[]);
    let mut holed = base::MemoryMappingArena::new(8 * P as usize).unwrap();
    holed.add_anon(0, 2 * P as usize).unwrap();
    add(&bare, holed);
    bare.set_dirty_logging(0, true).unwrap();
    let err = snapshot::restore(&dir, &bare).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Vm(hypervisor::Error::SlotMemoryNotMapped { at, .. }) if at == 6 * P as usize
        ),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A VM that lies about its memory, as a safe `Vm` implementation may: it hands out a slice
/// of one page whatever is asked, or lists its mappings as told.
struct Liar {
    inner: KvmVm,
    /// Two pages: the first is handed out for every slot range, so that a write past it
    /// lands in the second, where it can be seen.
    pages: base::MemoryMapping,
    short_slices: bool,
    mappings: Option<Vec<hypervisor::SlotMapping>>,
}

impl Vm for Liar {
    fn check_capability(&self, cap: hypervisor::VmCap) -> bool {
        self.inner.check_capability(cap)
    }
    fn get_memory(&self) -> &GuestMemory {
        self.inner.get_memory()
    }
    fn add_memory_region(
        &self,
        guest_addr: GuestAddress,
        mem: Box<dyn base::MappedRegion>,
        read_only: bool,
        log_dirty_pages: bool,
        cache: MemCacheType,
    ) -> hypervisor::Result<hypervisor::MemSlot> {
        self.inner
            .add_memory_region(guest_addr, mem, read_only, log_dirty_pages, cache)
    }
    fn msync_memory_region(&self, slot: u32, offset: usize, size: usize) -> hypervisor::Result<()> {
        self.inner.msync_memory_region(slot, offset, size)
    }
    fn madvise_pageout_memory_region(
        &self,
        slot: u32,
        offset: usize,
        size: usize,
    ) -> hypervisor::Result<()> {
        self.inner.madvise_pageout_memory_region(slot, offset, size)
    }
    fn madvise_remove_memory_region(
        &self,
        slot: u32,
        offset: usize,
        size: usize,
    ) -> hypervisor::Result<()> {
        self.inner.madvise_remove_memory_region(slot, offset, size)
    }
    fn remove_memory_region(&self, slot: u32) -> hypervisor::Result<Box<dyn base::MappedRegion>> {
        self.inner.remove_memory_region(slot)
    }
    fn set_dirty_logging(&self, slot: u32, enable: bool) -> hypervisor::Result<()> {
        self.inner.set_dirty_logging(slot, enable)
    }
    fn get_dirty_log(&self, slot: u32, dirty_log: &mut [u8]) -> hypervisor::Result<()> {
        self.inner.get_dirty_log(slot, dirty_log)
    }
    fn dirty_log_mode(&self) -> hypervisor::DirtyLogMode {
        self.inner.dirty_log_mode()
    }
    fn harvest_dirty_log(&self) -> hypervisor::Result<hypervisor::DirtyHarvest<'_>> {
        self.inner.harvest_dirty_log()
    }
    fn with_slot_memory(
        &self,
        slot: u32,
        offset: usize,
        size: usize,
        f: &mut dyn FnMut(base::VolatileSlice<'_>) -> std::io::Result<()>,
    ) -> hypervisor::Result<()> {
        if !self.short_slices {
            return self.inner.with_slot_memory(slot, offset, size, f);
        }
        use base::VolatileMemory;
        let slice = self.pages.get_slice(0, P as usize).unwrap();
        f(slice).map_err(|source| hypervisor::Error::SlotMemoryAccess {
            slot,
            offset,
            source,
        })
    }
    fn memory_slots(&self) -> Vec<hypervisor::SlotInfo> {
        self.inner.memory_slots()
    }
    fn slot_mappings(&self, slot: u32) -> hypervisor::Result<Vec<hypervisor::SlotMapping>> {
        match &self.mappings {
            Some(m) => Ok(m.clone()),
            None => self.inner.slot_mappings(slot),
        }
    }
    fn add_fd_mapping(
        &self,
        slot: u32,
        offset: usize,
        size: usize,
        fd: &dyn base::AsRawDescriptor,
        fd_offset: u64,
        prot: base::Protection,
    ) -> hypervisor::Result<()> {
        self.inner
            .add_fd_mapping(slot, offset, size, fd, fd_offset, prot)
    }
    fn remove_mapping(&self, slot: u32, offset: usize, size: usize) -> hypervisor::Result<()> {
        self.inner.remove_mapping(slot, offset, size)
    }
    fn reserve_guest_range(&self, guest_addr: GuestAddress, size: u64) -> hypervisor::Result<()> {
        self.inner.reserve_guest_range(guest_addr, size)
    }
    fn release_guest_range(&self, guest_addr: GuestAddress, size: u64) -> hypervisor::Result<()> {
        self.inner.release_guest_range(guest_addr, size)
    }
}

#[test]
fn a_vm_that_lies_about_its_memory_gets_typed_refusals_and_nothing_is_touched_past_it() {
    let Some(kvm) = kvm_or_skip("snapshot_liar") else {
        return;
    };
    let ram = 16 * P;
    let lying = |short_slices, mappings| {
        let inner = KvmVm::new(&kvm, GuestMemory::new(&[(GuestAddress(0), ram)]).unwrap()).unwrap();
        inner.set_dirty_logging(0, true).unwrap();
        Liar {
            inner,
            pages: MemoryMappingBuilder::new(2 * P as usize).build().unwrap(),
            short_slices,
            mappings,
        }
    };
    // Writing: a one-page slice for 16 pages is refused before a byte is written.
    let dir = scratch("liar-write");
    let liar = lying(true, None);
    let err = SnapshotWriter::create(&dir)
        .unwrap()
        .durable(false)
        .write_full(&liar, b"")
        .unwrap_err();
    assert!(
        matches!(err, Error::ShortSlice { slot: 0, offset: 0, asked, got } if asked == ram as usize && got == P as usize),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
    // Mappings past the slot, overlapping or out of order: refused, the harvest kept.
    let rw = base::Protection::read_write();
    let map = |offset: u64, size: u64| hypervisor::SlotMapping {
        offset: offset as usize,
        size: size as usize,
        protection: rw,
    };
    for (mappings, why) in [
        (vec![map(0, ram + P)], "inside"),
        (vec![map(P, usize::MAX as u64)], "inside"),
        (vec![map(4 * P, P), map(0, P)], "before"),
        (vec![map(0, 2 * P), map(P, P)], "before"),
    ] {
        let dir = scratch("liar-mappings");
        let liar = lying(false, Some(mappings));
        let err = SnapshotWriter::create(&dir)
            .unwrap()
            .durable(false)
            .write_full(&liar, b"")
            .unwrap_err();
        assert!(
            matches!(err, Error::BadSlotMappings { slot: 0, why: ref w } if w.contains(why)),
            "{err}"
        );
        // Nothing was committed: the baseline is still all there.
        assert_eq!(liar.harvest_dirty_log().unwrap().pages(), ram / P);
        std::fs::remove_dir_all(&dir).unwrap();
    }
    // Restoring: a good snapshot into a VM that hands out one page for sixteen.
    let dir = scratch("liar-restore");
    let honest = lying(false, None);
    SnapshotWriter::create(&dir)
        .unwrap()
        .durable(false)
        .write_full(&honest, b"")
        .unwrap();
    let liar = lying(true, None);
    use base::VolatileMemory;
    let beyond = liar.pages.get_slice(P as usize, 8).unwrap();
    beyond.write_obj(0x5eu64, 0).unwrap();
    let err = snapshot::restore(&dir, &liar).unwrap_err();
    assert!(
        matches!(err, Error::ShortSlice { asked, got, .. } if asked == ram as usize && got == P as usize),
        "{err}"
    );
    assert_eq!(
        beyond.read_obj::<u64>(0).unwrap(),
        0x5e,
        "the page past the slice was written"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_writer_refuses_what_its_readers_would_and_is_not_led_astray_by_its_directory() {
    let Some(kvm) = kvm_or_skip("snapshot_writer_refusals") else {
        return;
    };
    let vm = KvmVm::new(
        &kvm,
        GuestMemory::new(&[(GuestAddress(0), 16 * P)]).unwrap(),
    )
    .unwrap();
    vm.set_dirty_logging(0, true).unwrap();
    // A state no reader takes, refused before anything is harvested or written.
    let dir = scratch("writer-state");
    let mut w = SnapshotWriter::create(&dir).unwrap().durable(false);
    let huge = vec![0u8; (256 << 20) + 1];
    assert!(matches!(
        w.write_full(&vm, &huge),
        Err(Error::StateTooLarge { len, max, .. }) if len == (256 << 20) + 1 && max == 256 << 20
    ));
    drop(huge);
    assert!(!dir.join(layer_name(0)).exists());
    // A FIFO or a link at the temporary name is replaced, not waited on or followed.
    let temp = dir.join(format!(".{}.partial", layer_name(0)));
    let fifo = std::ffi::CString::new(temp.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo reads the path, a NUL-terminated string that lives across the call.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    w.write_full(&vm, b"0").unwrap();
    let victim = dir.join("victim");
    std::fs::write(&victim, b"untouched").unwrap();
    let temp = dir.join(format!(".{}.partial", layer_name(1)));
    std::os::unix::fs::symlink(&victim, &temp).unwrap();
    vm.get_memory()
        .write_obj_at_addr(1u64, GuestAddress(P))
        .unwrap();
    w.write_incremental(&vm, b"1").unwrap();
    assert_eq!(std::fs::read(&victim).unwrap(), b"untouched");
    std::fs::remove_file(&victim).unwrap();
    assert_eq!(snapshot::verify(&dir).unwrap().len(), 2);

    // Tracking switched off and on again since the full layer: a VMM write may be missing.
    vm.get_memory().set_dirty_tracking(false);
    vm.get_memory()
        .write_obj_at_addr(2u64, GuestAddress(2 * P))
        .unwrap();
    vm.get_memory().set_dirty_tracking(true);
    assert!(matches!(
        w.write_incremental(&vm, b""),
        Err(Error::DirtyTrackingOff { sequence: 2 })
    ));

    // A new snapshot cannot start in a directory holding any layer, not only layer 0; names
    // that only look like layers are not layers.
    let other = scratch("writer-stale");
    std::fs::create_dir_all(&other).unwrap();
    for name in [
        "layer-1.vmsnap",
        "layer-000001.vmsnap",
        "layer-+0001.vmsnap",
    ] {
        std::fs::write(other.join(name), b"").unwrap();
    }
    SnapshotWriter::create(&other).unwrap();
    std::fs::write(other.join(layer_name(3)), b"").unwrap();
    assert!(matches!(
        SnapshotWriter::create(&other),
        Err(Error::DirectoryNotEmpty { .. })
    ));
    std::fs::remove_dir_all(&other).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}
