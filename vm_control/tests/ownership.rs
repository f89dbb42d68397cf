// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Two clients: neither can act on the other's regions, and closing one frees its slots.

mod common;

use std::time::Duration;

use base::{Protection, SharedMemory};
use common::*;
use hypervisor::{MemCacheType, VcpuExit};
use vm_control::{ClientError, VmMemoryClient, VmMemoryError, VmMemorySource};

#[test]
fn one_client_cannot_touch_the_others_regions_and_closing_frees_slots() {
    let Some(kvm) = kvm_or_skip("ownership") else {
        return;
    };
    let (served, mut tubes) = Served::start(&kvm, 2);
    let alice = VmMemoryClient::new(tubes.remove(0));
    let bob = VmMemoryClient::new(tubes.remove(0));
    let rw = Protection::read_write();
    let (arena, slot) = alice
        .register_memory(
            VmMemorySource::Arena { size: 8 * P },
            None,
            0x10_0000,
            rw,
            MemCacheType::CacheCoherent,
        )
        .unwrap();
    let shm = SharedMemory::new("alice", P).unwrap();
    let (plain, _) = alice
        .register_memory(
            VmMemorySource::SharedMemory,
            Some(&shm),
            0x20_0000,
            rw,
            MemCacheType::CacheCoherent,
        )
        .unwrap();
    let unknown = |r: Result<(), ClientError>| {
        matches!(
            r,
            Err(ClientError::Refused(VmMemoryError::UnknownRegion { .. }))
        )
    };
    // Bob names Alice's ids: every request is refused as if the id did not exist.
    assert!(unknown(bob.msync_arena(arena, 0, P)));
    assert!(unknown(bob.madvise_remove(plain, 0, P)));
    assert!(unknown(bob.madvise_pageout(plain, 0, P)));
    assert!(unknown(bob.unmap_from_arena(arena, 0, P)));
    assert!(unknown(bob.map_into_arena(arena, 0, &shm, 0, P, rw)));
    assert!(unknown(bob.unregister_memory(arena)));
    assert!(unknown(bob.unregister_memory(plain)));
    // Alice's regions are untouched and still hers.
    alice.map_into_arena(arena, 0, &shm, 0, P, rw).unwrap();
    alice.msync_arena(arena, 0, P).unwrap();

    // Alice goes away: her regions are unregistered and her slots freed.
    drop(alice);
    let mut freed = false;
    for _ in 0..200 {
        if matches!(
            common::guest_reads(&served.vm, 0x10_0000),
            Err(VcpuExit::Mmio { .. })
        ) {
            freed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(freed, "the closed client's arena is still mapped");
    // Bob registers in his own grant, and gets the freed slot number back.
    let (_, bobs_slot) = bob
        .register_memory(
            VmMemorySource::Arena { size: 8 * P },
            None,
            common::grant_base(1) + 0x10_0000,
            rw,
            MemCacheType::CacheCoherent,
        )
        .unwrap();
    assert_eq!(bobs_slot, slot);
    bob.register_memory(
        VmMemorySource::SharedMemory,
        Some(&shm),
        common::grant_base(1) + 0x20_0000,
        rw,
        MemCacheType::CacheCoherent,
    )
    .unwrap();
    let server = served.stop();
    assert_eq!(server.client_count(), 1);
    assert_eq!(server.region_count(), 2);
}
