// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! vm-memory's documented `Bytes` and `GuestMemory` semantics through our adapter (feature
//! `rust-vmm`): each one checked against fixed expectations, and all of them against
//! vm-memory's own `GuestMemoryMmap` built with the same layout, on random and hostile
//! inputs, by the same generic code.

#![cfg(feature = "rust-vmm")]

use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use vm_memory::rust_vm_memory::{
    self as rvm, Bytes, GuestMemoryBackend, GuestMemoryError, GuestMemoryMmap, GuestMemoryRegion,
    MemoryRegionAddress,
};
use vm_memory::{GuestAddress, GuestMemory, MemoryRegionOptions};

const PAGE: u64 = 0x1000;

fn ga(addr: u64) -> rvm::GuestAddress {
    rvm::GuestAddress(addr)
}

/// Two contiguous pages at 0x1000, then a hole, then a page at 0x10000.
fn layout() -> Vec<(u64, u64)> {
    vec![(0x1000, PAGE), (0x2000, PAGE), (0x10000, PAGE)]
}

fn ours(layout: &[(u64, u64)]) -> GuestMemory {
    let ranges: Vec<_> = layout.iter().map(|&(a, s)| (GuestAddress(a), s)).collect();
    GuestMemory::new(&ranges).unwrap()
}

fn theirs(layout: &[(u64, u64)]) -> GuestMemoryMmap<()> {
    let ranges: Vec<_> = layout.iter().map(|&(a, s)| (ga(a), s as usize)).collect();
    GuestMemoryMmap::from_ranges(&ranges).unwrap()
}

#[test]
fn partial_read_and_write_at_the_end_of_memory_before_a_hole() {
    let mem = ours(&layout());
    // 8 bytes fit before the hole at 0x3000: `write`/`read` say how many were done.
    assert_eq!(mem.write(&[0xab; 16], ga(0x2ff8)).unwrap(), 8);
    let mut buf = [0u8; 16];
    assert_eq!(mem.read(&mut buf, ga(0x2ff8)).unwrap(), 8);
    assert_eq!(buf, [[0xab; 8], [0; 8]].concat()[..]);
    // The exact forms refuse, naming what was done.
    match mem.write_slice(&[1; 16], ga(0x2ff8)) {
        Err(GuestMemoryError::PartialBuffer {
            expected: 16,
            completed: 8,
        }) => {}
        other => panic!("write_slice over the hole: {other:?}"),
    }
    match mem.read_slice(&mut buf, ga(0x2ff8)) {
        Err(GuestMemoryError::PartialBuffer {
            expected: 16,
            completed: 8,
        }) => {}
        other => panic!("read_slice over the hole: {other:?}"),
    }
    // The end of the last region, too.
    assert_eq!(mem.write(&[7; 32], ga(0x10ff0)).unwrap(), 16);
}

#[test]
fn exact_access_across_contiguous_regions() {
    let mem = ours(&layout());
    let data: Vec<u8> = (0..=255u8).cycle().take(0x1800).collect();
    // 0x1400..0x2c00 covers the end of the first region and most of the second.
    mem.write_slice(&data, ga(0x1400)).unwrap();
    let mut back = vec![0u8; data.len()];
    mem.read_slice(&mut back, ga(0x1400)).unwrap();
    assert_eq!(back, data);
    // Our own accessors see the same bytes: one memory, not a copy.
    let mut direct = vec![0u8; data.len()];
    mem.read_exact_at_addr(&mut direct, GuestAddress(0x1400))
        .unwrap();
    assert_eq!(direct, data);
    // read_exact_volatile_from / write_all_volatile_to, across the boundary.
    let src = vec![0x5au8; 0x200];
    mem.read_exact_volatile_from(ga(0x1f00), &mut &src[..], src.len())
        .unwrap();
    let mut sink = Vec::new();
    mem.write_all_volatile_to(ga(0x1f00), &mut sink, 0x200)
        .unwrap();
    assert_eq!(sink, src);
    // An object across the boundary.
    mem.write_obj(0x0102_0304_0506_0708u64, ga(0x1ffc)).unwrap();
    assert_eq!(
        mem.read_obj::<u64>(ga(0x1ffc)).unwrap(),
        0x0102_0304_0506_0708
    );
    assert_eq!(
        mem.read_obj_from_addr::<u64>(GuestAddress(0x1ffc)).unwrap(),
        0x0102_0304_0506_0708
    );
    // A short source: read_volatile_from is partial, read_exact_volatile_from refused.
    let short = [9u8; 0x100];
    assert_eq!(
        mem.read_volatile_from(ga(0x1f80), &mut &short[..], 0x200)
            .unwrap(),
        0x100
    );
    assert!(mem
        .read_exact_volatile_from(ga(0x1f80), &mut &short[..], 0x200)
        .is_err());
}

#[test]
fn holes_and_hostile_addresses_are_errors() {
    let mem = ours(&layout());
    let mut buf = [0u8; 8];
    for addr in [0, 0xfff, 0x3000, 0xffff, 0x11000, u64::MAX - 7, u64::MAX] {
        match mem.read(&mut buf, ga(addr)) {
            Err(GuestMemoryError::InvalidGuestAddress(a)) if a == ga(addr) => {}
            other => panic!("read at {addr:#x}: {other:?}"),
        }
        match mem.write_obj(1u32, ga(addr)) {
            Err(GuestMemoryError::InvalidGuestAddress(a)) if a == ga(addr) => {}
            other => panic!("write_obj at {addr:#x}: {other:?}"),
        }
        assert!(
            !GuestMemoryBackend::address_in_range(&mem, ga(addr)),
            "{addr:#x}"
        );
        assert!(GuestMemoryBackend::find_region(&mem, ga(addr)).is_none());
        match GuestMemoryBackend::get_host_address(&mem, ga(addr)) {
            Err(GuestMemoryError::InvalidGuestAddress(a)) if a == ga(addr) => {}
            other => panic!("get_host_address at {addr:#x}: {other:?}"),
        }
    }
    // Ranges: whole, across the contiguous pair, into the hole, overflowing.
    let check_range = |addr, len| GuestMemoryBackend::check_range(&mem, ga(addr), len);
    assert!(check_range(0x1000, 0x2000));
    assert!(!check_range(0x1000, 0x2001));
    assert!(!check_range(0x10000, usize::MAX));
    assert!(!check_range(u64::MAX, 2));
    let checked_offset = |addr, offset| GuestMemoryBackend::checked_offset(&mem, ga(addr), offset);
    assert_eq!(checked_offset(0x1000, 0x1fff), Some(ga(0x2fff)));
    assert_eq!(checked_offset(0x1000, 0x2000), None);
    assert_eq!(checked_offset(u64::MAX, usize::MAX), None);
    assert_eq!(mem.last_addr(), ga(0x10fff));
    assert_eq!(GuestMemoryBackend::num_regions(&mem), 3);
    // A zero-length access is done at once, even at a hole.
    assert_eq!(mem.write(&[], ga(0x5000)).unwrap(), 0);
}

#[test]
fn region_level_offsets_are_checked() {
    let mem = ours(&layout());
    let region = GuestMemoryBackend::find_region(&mem, ga(0x2000)).unwrap();
    assert_eq!(region.start_addr(), ga(0x2000));
    assert_eq!(region.len(), PAGE);
    assert_eq!(region.last_addr(), ga(0x2fff));
    assert!(region.get_slice(MemoryRegionAddress(0), 0x1000).is_ok());
    assert!(region.get_slice(MemoryRegionAddress(0x1000), 0).is_ok());
    for (offset, count) in [
        (0, 0x1001),
        (0x1000, 1),
        (0x0fff, 2),
        (u64::MAX, 1),
        (1, usize::MAX),
        (u64::MAX, usize::MAX),
    ] {
        match region.get_slice(MemoryRegionAddress(offset), count) {
            Err(GuestMemoryError::InvalidBackendAddress) => {}
            other => panic!("get_slice({offset:#x}, {count:#x}): {other:?}"),
        }
    }
    assert!(region.get_host_address(MemoryRegionAddress(0xfff)).is_ok());
    for offset in [0x1000, u64::MAX] {
        match region.get_host_address(MemoryRegionAddress(offset)) {
            Err(GuestMemoryError::InvalidBackendAddress) => {}
            other => panic!("get_host_address({offset:#x}): {other:?}"),
        }
    }
    // Region-relative Bytes stop at the region's end, not at the next region.
    assert_eq!(
        region.write(&[1; 16], MemoryRegionAddress(0xff8)).unwrap(),
        8
    );
    match region.write(&[1; 16], MemoryRegionAddress(0x1001)) {
        Err(GuestMemoryError::InvalidBackendAddress) => {}
        other => panic!("region write past its end: {other:?}"),
    }
}

#[test]
fn the_adapter_translates_through_our_table_with_no_copy() {
    let mem = ours(&layout());
    for addr in [0x1000, 0x1fff, 0x2000, 0x2abc, 0x10000, 0x10fff] {
        let theirs = GuestMemoryBackend::get_host_address(&mem, ga(addr)).unwrap();
        let ours = vm_memory::GuestMemory::get_host_address(&mem, GuestAddress(addr)).unwrap();
        assert_eq!(theirs as *const u8, ours, "{addr:#x}");
        let (region, offset) = GuestMemoryBackend::to_region_addr(&mem, ga(addr)).unwrap();
        assert!(std::ptr::eq(
            region,
            mem.region_of(GuestAddress(addr)).unwrap()
        ));
        assert_eq!(offset.0, addr - region.start_addr().0);
    }
    // A write through vm-memory's traits is seen by a clone (they share the mapping).
    let clone = mem.clone();
    mem.write_obj(0xdead_beefu32, ga(0x10010)).unwrap();
    assert_eq!(
        clone
            .read_obj_from_addr::<u32>(GuestAddress(0x10010))
            .unwrap(),
        0xdead_beef
    );
}

#[test]
fn atomic_load_and_store_on_aligned_addresses() {
    let mem = ours(&layout());
    mem.store(0x1122_3344_5566_7788u64, ga(0x2ff8), Ordering::Release)
        .unwrap();
    assert_eq!(
        mem.load::<u64>(ga(0x2ff8), Ordering::Acquire).unwrap(),
        0x1122_3344_5566_7788
    );
    mem.store(0xabcdu16, ga(0x10002), Ordering::SeqCst).unwrap();
    assert_eq!(
        mem.load::<u16>(ga(0x10002), Ordering::SeqCst).unwrap(),
        0xabcd
    );
    // Misaligned, across the contiguous boundary, and into the hole: refused, and nothing
    // was written.
    for addr in [0x2ff9, 0x1ffc, 0x2ffc] {
        match mem.store(u64::MAX, ga(addr), Ordering::SeqCst) {
            Err(GuestMemoryError::InvalidBackendAddress)
            | Err(GuestMemoryError::PartialBuffer { .. }) => {}
            other => panic!("store u64 at {addr:#x}: {other:?}"),
        }
    }
    assert_eq!(
        mem.load::<u64>(ga(0x2ff8), Ordering::SeqCst).unwrap(),
        0x1122_3344_5566_7788
    );
    match mem.load::<u32>(ga(0x3000), Ordering::SeqCst) {
        Err(GuestMemoryError::InvalidGuestAddress(a)) if a == ga(0x3000) => {}
        other => panic!("load in the hole: {other:?}"),
    }
}

#[test]
fn file_offset_names_the_backing_of_each_region() {
    // RAM regions: a duplicate of the memfd, at each region's own offset.
    let mem = ours(&layout());
    mem.write_obj(0x4242_4242u32, ga(0x2010)).unwrap();
    let region = GuestMemoryBackend::find_region(&mem, ga(0x2000)).unwrap();
    let fo = region.file_offset().expect("a RAM region has a memfd");
    assert_eq!(fo.start(), region.backing_offset());
    let mut word = [0u8; 4];
    fo.file()
        .read_exact_at(&mut word, fo.start() + 0x10)
        .unwrap();
    assert_eq!(u32::from_ne_bytes(word), 0x4242_4242);
    // Asked again, the same one.
    assert!(std::ptr::eq(fo, region.file_offset().unwrap()));

    // A file-backed region hands out the caller's own file.
    let file = Arc::new(tempfile_of(2 * PAGE));
    let options = MemoryRegionOptions::new().file_backed(file.clone(), PAGE);
    let mem = GuestMemory::new_with_options(&[(GuestAddress(0x8000), PAGE, options)]).unwrap();
    let region = GuestMemoryBackend::find_region(&mem, ga(0x8000)).unwrap();
    let fo = region.file_offset().unwrap();
    assert!(Arc::ptr_eq(fo.arc(), &file));
    assert_eq!(fo.start(), PAGE);
}

fn tempfile_of(size: u64) -> std::fs::File {
    let dir = std::env::temp_dir();
    let path = dir.join(format!("vm_memory-rust-vmm-{}", std::process::id()));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    file.set_len(size).unwrap();
    file
}

/// One operation, run by the same generic code on both memories.
fn apply<M: GuestMemoryBackend>(mem: &M, op: u8, addr: u64, len: usize, seed: u8) -> String {
    let a = ga(addr);
    let data: Vec<u8> = (0..len).map(|i| seed.wrapping_add(i as u8)).collect();
    match op % 9 {
        0 => format!("{:?}", mem.write(&data, a)),
        1 => {
            let mut buf = vec![0u8; len];
            let r = mem.read(&mut buf, a);
            format!("{r:?} {buf:?}")
        }
        2 => format!("{:?}", mem.write_slice(&data, a)),
        3 => {
            let mut buf = vec![0u8; len];
            let r = mem.read_slice(&mut buf, a);
            format!("{r:?} {buf:?}")
        }
        4 => format!("{:?}", mem.write_obj(u64::from(seed) * 0x0101_0101, a)),
        5 => format!("{:?}", mem.read_obj::<u32>(a)),
        6 => format!("{:?}", mem.store(u32::from(seed), a, Ordering::SeqCst)),
        7 => format!("{:?}", mem.load::<u64>(a, Ordering::SeqCst)),
        _ => format!(
            "{} {} {} {:?} {:?}",
            GuestMemoryBackend::check_range(mem, a, len),
            rvm::GuestMemory::check_range(mem, a, len, rvm::Permissions::ReadWrite),
            mem.address_in_range(a),
            mem.checked_offset(a, len),
            GuestMemoryBackend::to_region_addr(mem, a).map(|(r, o)| (r.start_addr(), o)),
        ),
    }
}

/// Layouts with contiguous runs, holes, and regions of one to four pages.
fn random_layout(rng: &mut StdRng) -> Vec<(u64, u64)> {
    let mut layout = Vec::new();
    let mut at = rng.random_range(0..4u64) * PAGE;
    for _ in 0..rng.random_range(1..=8) {
        let size = rng.random_range(1..=4u64) * PAGE;
        layout.push((at, size));
        at += size
            + if rng.random_bool(0.5) {
                0
            } else {
                rng.random_range(1..4u64) * PAGE
            };
    }
    layout
}

fn interesting_addr(rng: &mut StdRng, layout: &[(u64, u64)]) -> u64 {
    let &(start, size) = &layout[rng.random_range(0..layout.len())];
    match rng.random_range(0..6) {
        0 => start + rng.random_range(0..size),
        1 => (start + size).wrapping_sub(rng.random_range(0..16)),
        2 => start.wrapping_sub(rng.random_range(0..16)),
        3 => u64::MAX - rng.random_range(0..16),
        4 => rng.random(),
        _ => start + size + rng.random_range(0..16),
    }
}

#[test]
fn every_operation_answers_as_vm_memorys_own_backend() {
    let seed = std::env::var("RUST_VMM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_u64);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut compared = 0;
    for round in 0..200 {
        let layout = random_layout(&mut rng);
        let (a, b) = (ours(&layout), theirs(&layout));
        assert_eq!(GuestMemoryBackend::num_regions(&a), b.num_regions());
        assert_eq!(a.last_addr(), b.last_addr());
        for _ in 0..100 {
            let op = rng.random();
            let addr = interesting_addr(&mut rng, &layout);
            let len = match rng.random_range(0..4) {
                0 => 0,
                1 => rng.random_range(1..=16),
                2 => rng.random_range(1..=3 * PAGE as usize),
                _ => 8,
            };
            let byte = rng.random();
            let (x, y) = (
                apply(&a, op, addr, len, byte),
                apply(&b, op, addr, len, byte),
            );
            assert_eq!(
                x,
                y,
                "seed {seed:#x} round {round}: op {} at {addr:#x} len {len:#x} over {layout:x?}",
                op % 9
            );
            compared += 1;
        }
        // And the same bytes everywhere afterwards.
        for &(start, size) in &layout {
            let (mut x, mut y) = (vec![0u8; size as usize], vec![0u8; size as usize]);
            a.read_slice(&mut x, ga(start)).unwrap();
            b.read_slice(&mut y, ga(start)).unwrap();
            assert!(
                x == y,
                "seed {seed:#x} round {round}: region {start:#x} differs"
            );
        }
    }
    assert_eq!(compared, 20_000);
}
