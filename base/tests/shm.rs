// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! SharedMemory: creation, names, sizes, seals, clones, and every refusal.

use base::shm::{Error, MAX_NAME_LEN};
use base::{
    AsRawDescriptor, MemfdSeals, MemoryMappingBuilder, SafeDescriptor, SharedMemory, VolatileMemory,
};

mod common;

#[test]
fn creates_a_cloexec_memfd_with_name_and_size() {
    let shm = SharedMemory::new("guest-ram", 3 << 20).unwrap();
    assert_eq!(shm.size(), 3 << 20);
    let fd = shm.as_raw_descriptor();
    let link = std::fs::read_link(format!("/proc/self/fd/{fd}")).unwrap();
    assert!(
        link.to_string_lossy().starts_with("/memfd:guest-ram"),
        "{link:?}"
    );
    // SAFETY: F_GETFD only reads descriptor flags.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
    // Fresh memory is zero.
    let mapping = MemoryMappingBuilder::new(3 << 20)
        .from_shared_memory(&shm)
        .build()
        .unwrap();
    assert!(mapping.get_slice(0, 3 << 20).unwrap().is_all_zero());
}

#[test]
fn refuses_zero_and_huge_sizes() {
    for size in [0, i64::MAX as u64 + 1, u64::MAX] {
        let err = SharedMemory::new("x", size).unwrap_err();
        assert!(
            matches!(err, Error::ZeroOrHugeSize { size: s } if s == size),
            "{err}"
        );
        assert!(err.to_string().contains(&format!("{size:#x}")), "{err}");
    }
}

#[test]
fn names_with_nul_or_too_long_are_refused() {
    let err = SharedMemory::new("bad\0name", 4096).unwrap_err();
    assert!(
        matches!(err, Error::NameHasNul { position: 3, .. }),
        "{err}"
    );
    let long = "n".repeat(MAX_NAME_LEN + 1);
    let err = SharedMemory::new(&long, 4096).unwrap_err();
    assert!(
        matches!(err, Error::NameTooLong { len, max } if len == MAX_NAME_LEN + 1 && max == MAX_NAME_LEN)
    );
    assert!(err.to_string().contains("250"), "{err}");
    // The longest name the kernel takes, and the empty name, both work.
    SharedMemory::new(&"n".repeat(MAX_NAME_LEN), 4096).unwrap();
    SharedMemory::new("", 4096).unwrap();
}

#[test]
fn seals_accumulate_and_are_enforced() {
    let shm = SharedMemory::new("seals", 8192).unwrap();
    assert_eq!(shm.get_seals().unwrap(), MemfdSeals::new());
    let mut seals = MemfdSeals::new();
    seals.set_grow_seal();
    seals.set_shrink_seal();
    shm.add_seals(seals).unwrap();
    let got = shm.get_seals().unwrap();
    assert!(got.grow_seal() && got.shrink_seal() && !got.write_seal() && !got.seal_seal());
    assert_eq!(format!("{got:?}"), "{SHRINK, GROW}");

    // The kernel enforces them: the size can no longer change.
    let file = std::fs::File::from(SafeDescriptor::from(shm.try_clone().unwrap()));
    assert!(file.set_len(4096).is_err());
    assert!(file.set_len(16384).is_err());

    // A write seal is refused while a writable shared mapping exists.
    let mapping = MemoryMappingBuilder::new(8192)
        .from_shared_memory(&shm)
        .build()
        .unwrap();
    let mut write = MemfdSeals::new();
    write.set_write_seal();
    let err = shm.add_seals(write).unwrap_err();
    assert!(
        matches!(&err, Error::AddSeals { source, .. } if source.raw_os_error() == Some(libc::EBUSY)),
        "{err}"
    );
    drop(mapping);
    shm.add_seals(write).unwrap();
    // Now a writable mapping is refused by the kernel, and reported by the builder.
    let err = MemoryMappingBuilder::new(8192)
        .from_shared_memory(&shm)
        .build()
        .unwrap_err();
    assert!(matches!(err, base::mmap::Error::Mmap { .. }), "{err}");
    MemoryMappingBuilder::new(8192)
        .from_shared_memory(&shm)
        .protection(base::Protection::read())
        .build()
        .unwrap();

    // After F_SEAL_SEAL nothing more can be added.
    let mut seal = MemfdSeals::new();
    seal.set_seal_seal();
    shm.add_seals(seal).unwrap();
    let mut future = MemfdSeals::new();
    future.set_future_write_seal();
    let err = shm.add_seals(future).unwrap_err();
    assert!(err.to_string().contains("FUTURE_WRITE"), "{err}");
}

#[test]
fn every_seal_can_be_set_at_once() {
    let shm = SharedMemory::new("bits", 4096).unwrap();
    // Only the public setters build seals, so the worst a caller can do is ask for all.
    let mut all = MemfdSeals::new();
    all.set_seal_seal();
    all.set_grow_seal();
    all.set_shrink_seal();
    all.set_write_seal();
    all.set_future_write_seal();
    shm.add_seals(all).unwrap();
    assert_eq!(shm.get_seals().unwrap(), all);
}

#[test]
fn clones_share_memory() {
    let shm = SharedMemory::new("clone", 4096).unwrap();
    let clone = shm.try_clone().unwrap();
    assert_ne!(shm.as_raw_descriptor(), clone.as_raw_descriptor());
    assert_eq!(clone.size(), 4096);
    let a = MemoryMappingBuilder::new(4096)
        .from_shared_memory(&shm)
        .build()
        .unwrap();
    let b = MemoryMappingBuilder::new(4096)
        .from_shared_memory(&clone)
        .build()
        .unwrap();
    a.write_obj(0xfeed_f00du32, 100).unwrap();
    assert_eq!(b.read_obj::<u32>(100).unwrap(), 0xfeed_f00d);
}

#[test]
fn from_safe_descriptor_accepts_only_memfds() {
    let shm = SharedMemory::new("handoff", 12288).unwrap();
    let received = SharedMemory::from_safe_descriptor(SafeDescriptor::from(shm)).unwrap();
    assert_eq!(received.size(), 12288);

    let file = common::temp_file(4096);
    let fd = file.as_raw_descriptor();
    let err = SharedMemory::from_safe_descriptor(SafeDescriptor::from(file)).unwrap_err();
    assert!(
        matches!(err, Error::NotMemfd { fd: f, .. } if f == fd),
        "{err}"
    );
    assert!(err.to_string().contains(&fd.to_string()));
}
