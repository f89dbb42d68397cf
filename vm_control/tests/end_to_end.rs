// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Every request, end to end: a client, a tube, the server, a real KVM VM, and the guest's
//! view of the result.

mod common;

use std::os::unix::fs::FileExt;

use base::{MemoryMappingBuilder, Protection, SharedMemory};
use common::*;
use hypervisor::{MemCacheType, VcpuExit};
use vm_control::{ClientError, VmMemoryClient, VmMemoryError, VmMemorySource};

fn temp_file(len: u64) -> std::fs::File {
    let file = vmm_sys_util::tempfile::TempFile::new().unwrap().into_file();
    file.set_len(len).unwrap();
    file
}

const RW: Protection = Protection::read_write();
const COHERENT: MemCacheType = MemCacheType::CacheCoherent;

#[test]
fn shared_memory_registration_is_seen_by_the_guest_and_unregistration_frees_the_slot() {
    let Some(kvm) = kvm_or_skip("register_shm") else {
        return;
    };
    let (served, mut tubes) = Served::start(&kvm, 1);
    let client = VmMemoryClient::new(tubes.remove(0));
    let shm = SharedMemory::new("e2e", 2 * P).unwrap();
    MemoryMappingBuilder::new(2 * P as usize)
        .from_shared_memory(&shm)
        .build()
        .unwrap()
        .write_obj(0x5eed_1234u32, P as usize)
        .unwrap();
    let (id, slot) = client
        .register_memory(
            VmMemorySource::SharedMemory,
            Some(&shm),
            0x10_0000,
            RW,
            COHERENT,
        )
        .unwrap();
    assert_eq!(slot, 1, "boot RAM is slot 0");
    assert_eq!(
        guest_reads(&served.vm, 0x10_0000 + P as u32),
        Ok(0x5eed_1234)
    );
    client.madvise_pageout(id, 0, P).unwrap();
    client.madvise_remove(id, P, P).unwrap();
    assert_eq!(guest_reads(&served.vm, 0x10_0000 + P as u32), Ok(0));
    client.unregister_memory(id).unwrap();
    assert!(matches!(
        guest_reads(&served.vm, 0x10_0000),
        Err(VcpuExit::Mmio { .. })
    ));
    // The slot and the address range are free again.
    let (_, slot) = client
        .register_memory(
            VmMemorySource::SharedMemory,
            Some(&shm),
            0x10_0000,
            RW,
            COHERENT,
        )
        .unwrap();
    assert_eq!(slot, 1);
    let err = client.unregister_memory(id).unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Refused(VmMemoryError::UnknownRegion { .. })
        ),
        "{err}"
    );
}

#[test]
fn a_file_descriptor_region_msyncs_to_the_file() {
    let Some(kvm) = kvm_or_skip("register_fd_msync") else {
        return;
    };
    let (served, mut tubes) = Served::start(&kvm, 1);
    let client = VmMemoryClient::new(tubes.remove(0));
    let file = temp_file(8 * P);
    let source = VmMemorySource::Descriptor {
        offset: 4 * P,
        size: 4 * P,
    };
    let (id, slot) = client
        .register_memory(source, Some(&file), 0x20_0000, RW, COHERENT)
        .unwrap();
    // A device writes the region through its own mapping of the same file range; the guest
    // sees the bytes, and msync puts them in the file.
    let view = MemoryMappingBuilder::new(4 * P as usize)
        .from_file(&file)
        .offset(4 * P)
        .build()
        .unwrap();
    view.write_slice(b"durable", 100).unwrap();
    assert_eq!(
        guest_reads(&served.vm, 0x20_0000 + 100),
        Ok(u32::from_le_bytes(*b"dura"))
    );
    client.msync_arena(id, 0, 4 * P).unwrap();
    let mut back = [0u8; 7];
    file.read_exact_at(&mut back, 4 * P + 100).unwrap();
    assert_eq!(&back, b"durable");
    assert_eq!(slot, 1);
    // Range errors come back typed, with the errno.
    let err = client.msync_arena(id, 4 * P, P).unwrap_err();
    assert!(
        matches!(&err, ClientError::Refused(VmMemoryError::Failed { errno, .. }) if *errno == libc::ERANGE),
        "{err}"
    );
    let err = client.msync_arena(id, 3, P).unwrap_err();
    assert!(
        matches!(&err, ClientError::Refused(VmMemoryError::Failed { errno, .. }) if *errno == libc::EINVAL),
        "{err}"
    );
}

#[test]
fn a_file_mapped_into_an_arena_is_seen_by_the_guest_until_unmapped() {
    let Some(kvm) = kvm_or_skip("arena_map") else {
        return;
    };
    let (served, mut tubes) = Served::start(&kvm, 1);
    let client = VmMemoryClient::new(tubes.remove(0));
    let (arena, _) = client
        .register_memory(
            VmMemorySource::Arena { size: 16 * P },
            None,
            0x40_0000,
            RW,
            COHERENT,
        )
        .unwrap();
    let file = temp_file(2 * P);
    file.write_all_at(&0xabad_1deau32.to_le_bytes(), P).unwrap();
    client
        .map_into_arena(arena, 4 * P, &file, 0, 2 * P, RW)
        .unwrap();
    assert_eq!(
        guest_reads(&served.vm, 0x40_0000 + 5 * P as u32),
        Ok(0xabad_1dea)
    );
    // An overlapping map is refused; msync of the arena reaches the file.
    let err = client
        .map_into_arena(arena, 5 * P, &file, 0, P, RW)
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::Refused(VmMemoryError::Failed { errno, .. }) if *errno == libc::EEXIST),
        "{err}"
    );
    client.msync_arena(arena, 4 * P, 2 * P).unwrap();
    client.unmap_from_arena(arena, 4 * P, 2 * P).unwrap();
    match guest_reads(&served.vm, 0x40_0000 + 5 * P as u32) {
        Err(VcpuExit::Mmio { .. }) | Err(VcpuExit::MemoryFault { .. }) => {}
        other => panic!("the unmapped page was not reported: {other:?}"),
    }
    // Not an arena: a plain registration cannot take maps.
    let shm = SharedMemory::new("plain", P).unwrap();
    let (plain, _) = client
        .register_memory(
            VmMemorySource::SharedMemory,
            Some(&shm),
            0x80_0000,
            RW,
            COHERENT,
        )
        .unwrap();
    let err = client
        .map_into_arena(plain, 0, &file, 0, P, RW)
        .unwrap_err();
    assert!(
        matches!(err, ClientError::Refused(VmMemoryError::NotAnArena { .. })),
        "{err}"
    );
    let err = client.unmap_from_arena(plain, 0, P).unwrap_err();
    assert!(
        matches!(err, ClientError::Refused(VmMemoryError::NotAnArena { .. })),
        "{err}"
    );
}

#[test]
fn bad_registrations_are_refused_with_reasons() {
    let Some(kvm) = kvm_or_skip("bad_registrations") else {
        return;
    };
    let (served, mut tubes) = Served::start(&kvm, 1);
    let client = VmMemoryClient::new(tubes.remove(0));
    let file = temp_file(P);
    let refused = |r: Result<_, ClientError>| match r {
        Err(ClientError::Refused(e)) => e,
        other => panic!("expected a refusal, got {other:?}"),
    };
    // Overlap with boot RAM.
    let e =
        refused(client.register_memory(VmMemorySource::Arena { size: P }, None, 0, RW, COHERENT));
    assert!(
        matches!(e, VmMemoryError::Failed { errno, .. } if errno == libc::EEXIST),
        "{e}"
    );
    // Zero sizes, an unaligned guest address, a file too short, an unaligned file offset.
    let e = refused(client.register_memory(
        VmMemorySource::Arena { size: 0 },
        None,
        1 << 30,
        RW,
        COHERENT,
    ));
    assert!(matches!(e, VmMemoryError::ZeroSize { .. }), "{e}");
    let zero = VmMemorySource::Descriptor { offset: 0, size: 0 };
    let e = refused(client.register_memory(zero, Some(&file), 1 << 30, RW, COHERENT));
    assert!(matches!(e, VmMemoryError::ZeroSize { .. }), "{e}");
    let e = refused(client.register_memory(
        VmMemorySource::Arena { size: P },
        None,
        (1 << 30) + 8,
        RW,
        COHERENT,
    ));
    assert!(
        matches!(e, VmMemoryError::Failed { errno, .. } if errno == libc::EINVAL),
        "{e}"
    );
    let long = VmMemorySource::Descriptor {
        offset: 0,
        size: 4 * P,
    };
    let e = refused(client.register_memory(long, Some(&file), 1 << 30, RW, COHERENT));
    assert!(
        matches!(&e, VmMemoryError::Failed { errno, message, .. }
            if *errno == libc::EINVAL && message.contains("needs it to reach 0x4000")),
        "{e}"
    );
    let unaligned = VmMemorySource::Descriptor {
        offset: 100,
        size: P,
    };
    let e = refused(client.register_memory(unaligned, Some(&file), 1 << 30, RW, COHERENT));
    assert!(matches!(e, VmMemoryError::Failed { .. }), "{e}");
    // A regular file is not shared memory.
    let e = refused(client.register_memory(
        VmMemorySource::SharedMemory,
        Some(&file),
        1 << 30,
        RW,
        COHERENT,
    ));
    assert!(e.to_string().contains("memfd"), "{e}");
    // Missing and unexpected descriptors.
    let e =
        refused(client.register_memory(VmMemorySource::SharedMemory, None, 1 << 30, RW, COHERENT));
    assert_eq!(
        e,
        VmMemoryError::DescriptorCount {
            needed: 1,
            count: 0
        }
    );
    let e = refused(client.register_memory(
        VmMemorySource::Arena { size: P },
        Some(&file),
        1 << 30,
        RW,
        COHERENT,
    ));
    assert_eq!(
        e,
        VmMemoryError::DescriptorCount {
            needed: 0,
            count: 1
        }
    );
    let e = refused(client.register_memory(
        VmMemorySource::Arena { size: P },
        None,
        1 << 30,
        RW,
        MemCacheType::CacheNonCoherent,
    ));
    assert!(
        matches!(e, VmMemoryError::Failed { errno, .. } if errno == libc::ENOTSUP),
        "{e}"
    );
    // Nothing was left registered by any of that.
    let server = served.stop();
    assert_eq!(server.region_count(), 0);
}
