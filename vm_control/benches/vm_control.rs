// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A small request and its answer over a pair of `Tube`s, next to a raw `SOCK_SEQPACKET`
//! round trip of the same bytes between the same two threads, with and without one
//! descriptor attached. Each group is `ours` and its raw `baseline`.

#![allow(missing_docs)]

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::mpsc;
use std::time::Duration;

use base::{AsRawDescriptor, Protection, Tube};
use criterion::{criterion_group, criterion_main, Criterion};
use hypervisor::MemCacheType;
use vm_control::{VmMemoryDestination, VmMemoryRequest, VmMemoryResponse, VmMemorySource};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

struct Raw(RawFd);

impl ScmSocket for Raw {
    fn socket_fd(&self) -> RawFd {
        self.0
    }
}

fn request() -> VmMemoryRequest {
    VmMemoryRequest::RegisterMemory {
        source: VmMemorySource::Descriptor {
            offset: 0x20_0000,
            size: 0x20_0000,
        },
        dest: VmMemoryDestination::GuestPhysicalAddress(0x1_0000_0000),
        prot: Protection::read_write(),
        cache: MemCacheType::CacheCoherent,
    }
}

/// The bytes a tube puts on the wire for `value`.
fn wire<T: serde::Serialize>(value: &T) -> Vec<u8> {
    let mut bytes = vec![0x7b];
    bytes.extend(postcard::to_allocvec(value).unwrap());
    bytes
}

/// Raw receive of one packet and its descriptors (closed right away, as a server would once
/// done with them).
fn raw_recv(socket: &Raw, buf: &mut [u8]) -> usize {
    let mut fds = [-1; 4];
    let mut iov = [libc::iovec {
        iov_base: buf.as_mut_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    }];
    // SAFETY: the iovec covers `buf`, which we own and which may hold any bytes.
    let (n, count) = unsafe { socket.recv_with_fds(&mut iov, &mut fds) }.unwrap();
    for &fd in &fds[..count] {
        // SAFETY: received descriptors are ours to close.
        drop(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    n
}

fn round_trips(c: &mut Criterion) {
    let (pipe_r, _pipe_w) = std::io::pipe().unwrap();
    let answer = wire(&VmMemoryResponse::Ok);
    let asked = wire(&request());
    for with_fd in [false, true] {
        let name = if with_fd {
            "one_descriptor"
        } else {
            "no_descriptor"
        };
        let mut group = c.benchmark_group(format!("tube_round_trip_{name}_vs_seqpacket"));
        // The same two threads serve both: the echo thread answers through a Tube or raw,
        // as the main thread tells it before each function.
        let (near, far) = Tube::pair().unwrap();
        let (mode_tx, mode_rx) = mpsc::channel::<Option<bool>>();
        let answer = answer.clone();
        let echo = std::thread::spawn(move || {
            let mut buf = vec![0u8; 256];
            while let Ok(Some(tube_mode)) = mode_rx.recv() {
                loop {
                    if tube_mode {
                        match far.recv_with_descriptors::<VmMemoryRequest>() {
                            Ok((_req, fds)) => {
                                drop(fds);
                                far.send(&VmMemoryResponse::Ok).unwrap();
                            }
                            Err(_) => break,
                        }
                    } else {
                        let raw = Raw(far.as_raw_descriptor());
                        let n = raw_recv(&raw, &mut buf);
                        // One byte is the "switch modes" signal.
                        if n == 1 {
                            break;
                        }
                        raw.send_with_fds(&[&answer[..]], &[] as &[RawFd]).unwrap();
                    }
                }
            }
        });
        let fd: Vec<&dyn AsRawDescriptor> = if with_fd { vec![&pipe_r] } else { vec![] };
        mode_tx.send(Some(true)).unwrap();
        group.bench_function("ours", |b| {
            b.iter(|| {
                near.send_with_descriptors(&request(), &fd).unwrap();
                let response: VmMemoryResponse = near.recv().unwrap();
                response
            })
        });
        // Out of tube mode: a packet that does not decode makes the echo loop break.
        Raw(near.as_raw_descriptor())
            .send_with_fds(&[&[0u8][..]], &[] as &[RawFd])
            .unwrap();
        mode_tx.send(Some(false)).unwrap();
        let raw_fds: Vec<RawFd> = if with_fd {
            vec![pipe_r.as_raw_fd()]
        } else {
            vec![]
        };
        let raw = Raw(near.as_raw_descriptor());
        let mut buf = vec![0u8; 256];
        group.bench_function("baseline", |b| {
            b.iter(|| {
                raw.send_with_fds(&[&asked[..]], &raw_fds).unwrap();
                raw_recv(&raw, &mut buf)
            })
        });
        raw.send_with_fds(&[&[0u8][..]], &[] as &[RawFd]).unwrap();
        mode_tx.send(None).unwrap();
        echo.join().unwrap();
        group.finish();
    }
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50)
}

criterion_group! {
    name = benches;
    config = config();
    targets = round_trips
}
criterion_main!(benches);
