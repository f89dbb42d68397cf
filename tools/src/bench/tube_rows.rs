// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Rows for `base::Tube`: a request and its answer, next to a raw `SOCK_SEQPACKET` round
//! trip. These take microseconds, so each call of a variant is one operation.

use std::hint::black_box;
use std::os::fd::{AsFd, AsRawFd, RawFd};

use base::{Protection, Tube};
use hypervisor::MemCacheType;
use vm_control::{VmMemoryRequest, VmMemoryResponse, VmMemorySource};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use super::harness::{compare_ops, Op, Plan, Row};

struct Raw(RawFd);

impl ScmSocket for Raw {
    fn socket_fd(&self) -> RawFd {
        self.0
    }
}

/// A small request and its answer over Tubes, next to a raw SOCK_SEQPACKET round trip,
/// between the same two threads. The echo thread receives both kinds with the same raw
/// recvmsg; a packet that decodes as a request is answered through the Tube, any other
/// with one raw byte.
pub fn rows(plan: &Plan, rows: &mut Vec<Row>) {
    let request = VmMemoryRequest::RegisterMemory {
        source: VmMemorySource::Descriptor {
            offset: 0x20_0000,
            size: 0x20_0000,
        },
        dest: vm_control::VmMemoryDestination::GuestPhysicalAddress(1 << 32),
        prot: Protection::read_write(),
        cache: MemCacheType::CacheCoherent,
    };
    let (pipe_r, _pipe_w) = std::io::pipe().unwrap();
    for with_fd in [false, true] {
        let (near, far) = Tube::pair().unwrap();
        let echo = std::thread::spawn(move || {
            let raw = Raw(far.as_fd().as_raw_fd());
            let mut buf = [0u8; 256];
            loop {
                let mut fds = [-1; 4];
                let mut iov = [libc::iovec {
                    iov_base: buf.as_mut_ptr() as *mut libc::c_void,
                    iov_len: buf.len(),
                }];
                // SAFETY: the iovec covers `buf`, which may hold any bytes.
                let Ok((n, count)) = (unsafe { raw.recv_with_fds(&mut iov, &mut fds) }) else {
                    return;
                };
                for &fd in &fds[..count] {
                    // SAFETY: received descriptors are ours to close.
                    unsafe { libc::close(fd) };
                }
                if n == 0 {
                    return;
                }
                let sent = if base::tube::decode::<VmMemoryRequest>(&buf[..n]).is_ok() {
                    far.send(&VmMemoryResponse::Ok).is_ok()
                } else {
                    raw.send_with_fds(&[&buf[..1]], &[] as &[RawFd]).is_ok()
                };
                if !sent {
                    return;
                }
            }
        });
        let fds: Vec<&dyn base::AsRawDescriptor> = if with_fd { vec![&pipe_r] } else { vec![] };
        let raw_fds: Vec<RawFd> = if with_fd {
            vec![pipe_r.as_raw_fd()]
        } else {
            vec![]
        };
        // Not a tube packet (no header byte), so the echo answers it raw.
        let raw_packet = [0x01u8; 16];
        let mut buf = [0u8; 64];
        let label = if with_fd {
            "one descriptor"
        } else {
            "no descriptor"
        };
        rows.push(compare_ops(
            plan,
            &format!("Tube round trip, {label}, vs seqpacket"),
            vec![
                Op::each(|| {
                    near.send_with_descriptors(&request, &fds).unwrap();
                    black_box(near.recv::<VmMemoryResponse>().unwrap());
                }),
                Op::each(|| {
                    let raw = Raw(near.as_fd().as_raw_fd());
                    raw.send_with_fds(&[&raw_packet[..]], &raw_fds).unwrap();
                    let mut iov = [libc::iovec {
                        iov_base: buf.as_mut_ptr() as *mut libc::c_void,
                        iov_len: buf.len(),
                    }];
                    let mut none = [0; 1];
                    // SAFETY: the iovec covers `buf`.
                    black_box(unsafe { raw.recv_with_fds(&mut iov, &mut none) }.unwrap());
                }),
            ],
        ));
        drop(near);
        let _ = echo.join();
    }
}
