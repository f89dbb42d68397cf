// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The fuzz target's work as a randomized test: random bytes, mutated valid messages and
//! valid messages with hostile values, with random descriptors attached, decoded and executed
//! against a real KVM VM. Nothing panics, every packet gets an answer, ownership holds, and
//! afterwards nothing is left registered and no descriptor has leaked.
//!
//! One test in its own binary, so it can count descriptors.

mod common;

use base::{Protection, SafeDescriptor, SharedMemory, Tube};
use common::*;
use hypervisor::kvm::KvmVm;
use hypervisor::MemCacheType;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use vm_control::{
    ClientPolicy, VmMemoryDestination, VmMemoryRegionId, VmMemoryRequest, VmMemoryResponse,
    VmMemoryServer, VmMemorySource,
};
use vm_memory::{GuestAddress, GuestMemory};

const ROUNDS: usize = 5_000;
/// Each client's grant: client 0 from 0, client 1 from `BASE_SPAN`.
const BASE_SPAN: u64 = 1 << 40;

fn interesting(rng: &mut StdRng) -> u64 {
    const VALUES: [u64; 10] = [0, 1, 7, P - 1, P, 2 * P, 4 * P, 16 * P, 1 << 40, u64::MAX];
    if rng.random_bool(0.7) {
        VALUES[rng.random_range(0..VALUES.len())]
    } else {
        rng.random()
    }
}

fn source(rng: &mut StdRng) -> VmMemorySource {
    match rng.random_range(0..3) {
        0 => VmMemorySource::SharedMemory,
        1 => VmMemorySource::Descriptor {
            offset: interesting(rng),
            size: interesting(rng),
        },
        _ => VmMemorySource::Arena {
            size: interesting(rng),
        },
    }
}

fn prot(rng: &mut StdRng) -> Protection {
    [
        Protection::none(),
        Protection::read(),
        Protection::write(),
        Protection::read_write(),
    ][rng.random_range(0..4)]
}

fn request(rng: &mut StdRng, ids: &[VmMemoryRegionId], base: u64) -> VmMemoryRequest {
    let id = if !ids.is_empty() && rng.random_bool(0.8) {
        ids[rng.random_range(0..ids.len())]
    } else {
        // An id nobody was given: decoded from random bytes, as a forger would.
        postcard::from_bytes(&rng.random::<[u8; 9]>()).unwrap_or(
            ids.first()
                .copied()
                .unwrap_or_else(|| postcard::from_bytes(&[5]).unwrap()),
        )
    };
    let (offset, size) = (interesting(rng), interesting(rng));
    match rng.random_range(0..7) {
        0 => VmMemoryRequest::RegisterMemory {
            source: source(rng),
            // Mostly free guest space above the 64 KiB of boot RAM, sometimes on it.
            dest: VmMemoryDestination::GuestPhysicalAddress(if rng.random_bool(0.8) {
                base + 0x100_0000 + rng.random_range(0..64) * 16 * P
            } else {
                interesting(rng)
            }),
            prot: prot(rng),
            cache: if rng.random_bool(0.9) {
                MemCacheType::CacheCoherent
            } else {
                MemCacheType::CacheNonCoherent
            },
        },
        1 => VmMemoryRequest::UnregisterMemory(id),
        2 => VmMemoryRequest::MsyncArena { id, offset, size },
        3 => VmMemoryRequest::MadvisePageout { id, offset, size },
        4 => VmMemoryRequest::MadviseRemove { id, offset, size },
        5 => VmMemoryRequest::MapIntoArena {
            id,
            offset,
            source: source(rng),
            prot: prot(rng),
        },
        _ => VmMemoryRequest::UnmapFromArena { id, offset, size },
    }
}

/// A request that should succeed, and which descriptor it needs: 0 the memfd, 1 the file,
/// anything else none.
fn valid_request(
    rng: &mut StdRng,
    mine: &[VmMemoryRegionId],
    base: u64,
) -> (VmMemoryRequest, usize) {
    let dest = VmMemoryDestination::GuestPhysicalAddress(
        base + 0x100_0000 + rng.random_range(0..64) * 16 * P,
    );
    let register = |source| VmMemoryRequest::RegisterMemory {
        source,
        dest,
        prot: Protection::read_write(),
        cache: MemCacheType::CacheCoherent,
    };
    if mine.is_empty() || rng.random_bool(0.5) {
        match rng.random_range(0..3) {
            0 => (register(VmMemorySource::SharedMemory), 0),
            1 => (
                register(VmMemorySource::Descriptor {
                    offset: 0,
                    size: 4 * P,
                }),
                1,
            ),
            _ => (register(VmMemorySource::Arena { size: 16 * P }), 2),
        }
    } else {
        let id = mine[rng.random_range(0..mine.len())];
        match rng.random_range(0..4) {
            0 => (VmMemoryRequest::UnregisterMemory(id), 2),
            1 => (
                VmMemoryRequest::MsyncArena {
                    id,
                    offset: 0,
                    size: P,
                },
                2,
            ),
            2 => (
                VmMemoryRequest::MadviseRemove {
                    id,
                    offset: 0,
                    size: P,
                },
                2,
            ),
            _ => (
                VmMemoryRequest::MapIntoArena {
                    id,
                    offset: rng.random_range(0..4) * P,
                    source: VmMemorySource::Descriptor { offset: 0, size: P },
                    prot: Protection::read_write(),
                },
                1,
            ),
        }
    }
}

fn packet(request: &VmMemoryRequest) -> Vec<u8> {
    let mut bytes = vec![0x7b];
    bytes.extend(postcard::to_allocvec(request).unwrap());
    bytes
}

#[test]
fn random_messages_are_answered_and_leave_nothing_behind() {
    let Some(kvm) = kvm_or_skip("randomized") else {
        return;
    };
    let mem = GuestMemory::new(&[(GuestAddress(0), 16 * P)]).unwrap();
    let vm = std::sync::Arc::new(KvmVm::new(&kvm, mem).unwrap());
    let mut server = VmMemoryServer::new(vm.clone()).unwrap();
    let (_a_end, a_server) = Tube::pair().unwrap();
    let (_b_end, b_server) = Tube::pair().unwrap();
    // Each client in its own grant, with room for all it may register here.
    let policy = |base: u64| {
        ClientPolicy::new()
            .grant(GuestAddress(base), BASE_SPAN)
            .max_regions(10_000)
            .max_bytes(u64::MAX)
    };
    let clients = [
        server.add_client(a_server, policy(0)).unwrap(),
        server.add_client(b_server, policy(BASE_SPAN)).unwrap(),
    ];
    let shm = SharedMemory::new("randomized", 16 * P).unwrap();
    let file = vmm_sys_util::tempfile::TempFile::new().unwrap().into_file();
    file.set_len(16 * P).unwrap();
    let (pipe_r, _pipe_w) = std::io::pipe().unwrap();
    let fds_before = open_fds();

    let mut rng = StdRng::seed_from_u64(0x7a4d0);
    let mut owned: [Vec<VmMemoryRegionId>; 2] = [Vec::new(), Vec::new()];
    let (mut registered, mut done) = (0, 0);
    for round in 0..ROUNDS {
        let who = rng.random_range(0..2);
        // Ids from both clients, so each names the other's regions too.
        let known: Vec<VmMemoryRegionId> = owned.iter().flatten().copied().collect();
        let well_formed = rng.random_bool(0.3);
        let (req, kind) = if well_formed {
            valid_request(&mut rng, &owned[who], who as u64 * BASE_SPAN)
        } else {
            (request(&mut rng, &known, who as u64 * BASE_SPAN), 3)
        };
        let mut bytes = packet(&req);
        match if well_formed {
            9
        } else {
            rng.random_range(0..10)
        } {
            0 => bytes = (0..rng.random_range(0..40)).map(|_| rng.random()).collect(),
            1 => {
                let i = rng.random_range(0..bytes.len());
                bytes[i] ^= 1 << rng.random_range(0..8);
            }
            2 => bytes.truncate(rng.random_range(0..bytes.len())),
            _ => {}
        }
        let count = if well_formed {
            usize::from(kind < 2)
        } else {
            rng.random_range(0..3)
        };
        let descriptors: Vec<SafeDescriptor> =
            (0..count)
                .map(|_| {
                    match if well_formed {
                        kind
                    } else {
                        rng.random_range(0..3)
                    } {
                        0 => SafeDescriptor::try_clone_borrowed(std::os::fd::AsFd::as_fd(&shm))
                            .unwrap(),
                        1 => SafeDescriptor::try_clone_borrowed(std::os::fd::AsFd::as_fd(&file))
                            .unwrap(),
                        _ => SafeDescriptor::try_clone_borrowed(std::os::fd::AsFd::as_fd(&pipe_r))
                            .unwrap(),
                    }
                })
                .collect();
        // What the server will execute, if anything: the bytes decide, not what we meant.
        let executed: Option<VmMemoryRequest> = base::tube::decode(&bytes).ok();
        match server.handle_packet(clients[who], &bytes, descriptors) {
            VmMemoryResponse::RegisterMemory { id, .. } => {
                assert!(matches!(
                    executed,
                    Some(VmMemoryRequest::RegisterMemory { .. })
                ));
                owned[who].push(id);
                registered += 1;
            }
            VmMemoryResponse::Ok => {
                done += 1;
                // Success on an id proves ownership: it must be this client's.
                let named = match executed {
                    Some(
                        VmMemoryRequest::UnregisterMemory(id)
                        | VmMemoryRequest::MsyncArena { id, .. }
                        | VmMemoryRequest::MadvisePageout { id, .. }
                        | VmMemoryRequest::MadviseRemove { id, .. }
                        | VmMemoryRequest::MapIntoArena { id, .. }
                        | VmMemoryRequest::UnmapFromArena { id, .. },
                    ) => id,
                    other => panic!("round {round}: Ok for {other:?}"),
                };
                assert!(
                    owned[who].contains(&named),
                    "round {round}: client {who} acted on {named:?}, not its own"
                );
                if matches!(executed, Some(VmMemoryRequest::UnregisterMemory(_))) {
                    owned[who].retain(|&o| o != named);
                }
            }
            VmMemoryResponse::Err(e) => assert!(!e.to_string().is_empty()),
        }
        assert_eq!(
            server.region_count(),
            owned[0].len() + owned[1].len(),
            "round {round}"
        );
    }
    println!("{ROUNDS} rounds: {registered} registrations, {done} other successes");
    // The run reached the success paths too, not only refusals.
    assert!(
        registered > 50 && done > 50,
        "{registered} registrations, {done} other successes"
    );
    assert_eq!(open_fds(), fds_before, "descriptors leaked");
    // Closing both clients unregisters everything, frees every slot, and closes their tubes.
    server.remove_client(clients[0]);
    server.remove_client(clients[1]);
    assert_eq!(server.region_count(), 0);
    assert_eq!(open_fds(), fds_before - 2);
    drop(server);
    assert_eq!(std::sync::Arc::strong_count(&vm), 1);
}
