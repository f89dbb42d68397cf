// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A compromised device: every kind of bad message sent over a raw socket into a running
//! server. Each gets an error answer (or the connection is dropped), another client is still
//! served, and 10,000 requests later no descriptor or mapping has leaked.
//!
//! One test in its own binary, so nothing else in the process opens or maps anything while
//! it counts.

mod common;

use std::os::fd::AsRawFd;

use base::tube::MAX_MESSAGE_SIZE;
use base::{AsRawDescriptor, Protection, SharedMemory, Tube};
use common::*;
use hypervisor::MemCacheType;
use rand::{Rng, SeedableRng};
use vm_control::{
    VmMemoryClient, VmMemoryDestination, VmMemoryError, VmMemoryRequest, VmMemoryResponse,
    VmMemorySource,
};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

struct Raw(i32);

impl ScmSocket for Raw {
    fn socket_fd(&self) -> i32 {
        self.0
    }
}

/// The wire form of a value: the tube header byte, then postcard.
fn packet<T: serde::Serialize>(value: &T) -> Vec<u8> {
    let mut bytes = vec![0x7b];
    bytes.extend(postcard::to_allocvec(value).unwrap());
    bytes
}

fn register(source: VmMemorySource, gpa: u64) -> VmMemoryRequest {
    VmMemoryRequest::RegisterMemory {
        source,
        dest: VmMemoryDestination::GuestPhysicalAddress(gpa),
        prot: Protection::read_write(),
        cache: MemCacheType::CacheCoherent,
    }
}

/// Sends one hostile packet with `fds` and returns the server's answer, which must be an
/// error.
fn expect_refusal(tube: &Tube, bytes: &[u8], fds: &[i32]) -> Option<VmMemoryError> {
    Raw(tube.as_raw_descriptor())
        .send_with_fds(&[bytes], fds)
        .unwrap();
    match tube.recv::<VmMemoryResponse>() {
        Ok(VmMemoryResponse::Err(e)) => Some(e),
        other => panic!("{bytes:x?}: expected an error answer, got {other:?}"),
    }
}

#[test]
fn hostile_messages_get_answers_and_leak_nothing() {
    let Some(kvm) = kvm_or_skip("hostile") else {
        return;
    };
    let (served, mut tubes) = Served::start(&kvm, 2);
    let hostile = tubes.remove(0);
    let bystander = VmMemoryClient::new(tubes.remove(0));
    let shm = SharedMemory::new("hostile", 2 * P).unwrap();
    let bystander_works = |gpa: u64| {
        let (id, _) = bystander
            .register_memory(
                VmMemorySource::SharedMemory,
                Some(&shm),
                gpa,
                Protection::read_write(),
                MemCacheType::CacheCoherent,
            )
            .unwrap();
        bystander.msync_arena(id, 0, P).unwrap();
        bystander.unregister_memory(id).unwrap();
    };
    // The bystander owns a region the hostile client will name.
    let (victim, _) = bystander
        .register_memory(
            VmMemorySource::Arena { size: 4 * P },
            None,
            grant_base(1) + 0x100_0000,
            Protection::read_write(),
            MemCacheType::CacheCoherent,
        )
        .unwrap();
    bystander_works(grant_base(1) + 0x200_0000);

    let fds_before = open_fds();
    let maps_before = maps_lines();

    let (_, pipe_w) = std::io::pipe().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x05717e);
    let valid = packet(&register(VmMemorySource::Arena { size: P }, 0x300_0000));
    let mut requests = 0;
    while requests < 10_000 {
        let kind = requests % 12;
        let refusal = match kind {
            // Random bytes, with and without our header.
            0 => {
                let len = rng.random_range(0..64);
                let mut bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
                if rng.random_bool(0.5) && !bytes.is_empty() {
                    bytes[0] = 0x7b;
                }
                expect_refusal(&hostile, &bytes, &[])
            }
            // A valid request cut short.
            1 => expect_refusal(&hostile, &valid[..rng.random_range(1..valid.len())], &[]),
            // A message of another type: a response, as if echoed back.
            2 => expect_refusal(&hostile, &packet(&VmMemoryResponse::Ok), &[]),
            // Too big.
            3 => expect_refusal(&hostile, &vec![0x7b; MAX_MESSAGE_SIZE + 100], &[]),
            // Too many descriptors, missing ones, unexpected ones.
            4 => {
                let many: Vec<i32> = (0..40).map(|_| pipe_w.as_raw_fd()).collect();
                expect_refusal(&hostile, &valid, &many)
            }
            5 => expect_refusal(
                &hostile,
                &packet(&register(VmMemorySource::SharedMemory, 0x300_0000)),
                &[],
            ),
            6 => expect_refusal(&hostile, &valid, &[pipe_w.as_raw_fd()]),
            // Unknown ids and the bystander's id.
            7 => expect_refusal(
                &hostile,
                &packet(&VmMemoryRequest::UnregisterMemory(victim)),
                &[],
            ),
            8 => {
                let mut bytes = packet(&VmMemoryRequest::MsyncArena {
                    id: victim,
                    offset: 0,
                    size: P,
                });
                // Another id: flip the low byte of the varint that encodes it.
                bytes[2] ^= 0x40;
                expect_refusal(&hostile, &bytes, &[])
            }
            // A descriptor source that is not a memfd, and a pipe where a file is needed.
            9 => expect_refusal(
                &hostile,
                &packet(&register(VmMemorySource::SharedMemory, 0x300_0000)),
                &[pipe_w.as_raw_fd()],
            ),
            10 => {
                let src = VmMemorySource::Descriptor {
                    offset: rng.random_range(0..3) * 100,
                    size: rng.random_range(0..3) * P,
                };
                expect_refusal(
                    &hostile,
                    &packet(&register(src, 0x300_0000)),
                    &[pipe_w.as_raw_fd()],
                )
            }
            // A valid arena registered by the hostile client, then ranges out of bounds,
            // unaligned and zero on it, then its removal.
            _ => {
                Raw(hostile.as_raw_descriptor())
                    .send_with_fds(&[&valid[..]], &[] as &[i32])
                    .unwrap();
                let VmMemoryResponse::RegisterMemory { id, .. } = hostile.recv().unwrap() else {
                    panic!("a valid registration failed")
                };
                for req in [
                    VmMemoryRequest::MsyncArena {
                        id,
                        offset: 2 * P,
                        size: P,
                    },
                    VmMemoryRequest::MadviseRemove {
                        id,
                        offset: 7,
                        size: P,
                    },
                    VmMemoryRequest::MadvisePageout {
                        id,
                        offset: 0,
                        size: 0,
                    },
                    VmMemoryRequest::UnmapFromArena {
                        id,
                        offset: u64::MAX - 10,
                        size: P,
                    },
                    VmMemoryRequest::MapIntoArena {
                        id,
                        offset: 0,
                        source: VmMemorySource::Arena { size: P },
                        prot: Protection::read(),
                    },
                ] {
                    expect_refusal(&hostile, &packet(&req), &[]);
                    requests += 1;
                }
                hostile
                    .send(&VmMemoryRequest::UnregisterMemory(id))
                    .unwrap();
                assert_eq!(
                    hostile.recv::<VmMemoryResponse>().unwrap(),
                    VmMemoryResponse::Ok
                );
                None
            }
        };
        if let Some(e) = refusal {
            assert!(!e.to_string().is_empty());
        }
        requests += 1;
        if requests % 1000 < 12 {
            bystander_works(grant_base(1) + 0x200_0000);
        }
    }
    drop(pipe_w);
    bystander_works(grant_base(1) + 0x200_0000);
    assert_eq!(open_fds(), fds_before, "descriptors leaked");
    assert_eq!(maps_lines(), maps_before, "mappings leaked");

    // Finally the hostile client disconnects; the server drops it and keeps serving.
    drop(hostile);
    bystander_works(grant_base(1) + 0x200_0000);
    bystander.unregister_memory(victim).unwrap();
    let server = served.stop();
    assert_eq!(server.client_count(), 1);
    assert_eq!(server.region_count(), 0);
}
