// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Tube: round trips with descriptors, every refusal, timeouts, disconnection, and handing
//! one end to another process.

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use base::tube::{Error, MAX_DESCRIPTORS, MAX_MESSAGE_SIZE};
use base::{AsRawDescriptor, MemoryMappingBuilder, SafeDescriptor, SharedMemory, Tube};
use serde::{Deserialize, Serialize};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum Request {
    Map {
        offset: u64,
        size: u64,
        name: String,
    },
    Ping,
}

/// A raw view of a tube's socket, to send what a well-behaved Tube never would.
struct Raw(i32);

impl ScmSocket for Raw {
    fn socket_fd(&self) -> i32 {
        self.0
    }
}

/// A pipe whose read end reports EOF only once every copy of the write end is closed: a
/// leak detector for descriptors handed to the tube.
fn pipe() -> (std::io::PipeReader, std::io::PipeWriter) {
    std::io::pipe().unwrap()
}

fn assert_all_write_ends_closed(mut reader: std::io::PipeReader) {
    let mut buf = [0u8; 1];
    // With every write end closed this returns 0 at once; a leaked one would block forever,
    // so set the read end non-blocking to turn a leak into an error.
    // SAFETY: F_SETFL on a descriptor we own.
    unsafe { libc::fcntl(reader.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
    match reader.read(&mut buf) {
        Ok(0) => {}
        other => panic!("a write end is still open somewhere: {other:?}"),
    }
}

#[test]
fn messages_and_descriptors_round_trip() {
    let (a, b) = Tube::pair().unwrap();
    let shm = SharedMemory::new("tube", 4096).unwrap();
    MemoryMappingBuilder::new(4096)
        .from_shared_memory(&shm)
        .build()
        .unwrap()
        .write_obj(0x1234u32, 0)
        .unwrap();
    let msg = Request::Map {
        offset: 0x1000,
        size: 0x2000,
        name: "pmem".into(),
    };
    a.send_with_descriptors(&msg, &[&shm]).unwrap();
    let (got, fds): (Request, Vec<SafeDescriptor>) = b.recv_with_descriptors().unwrap();
    assert_eq!(got, msg);
    assert_eq!(fds.len(), 1);
    // SAFETY: F_GETFD reads flags of a descriptor we own.
    let flags = unsafe { libc::fcntl(fds[0].as_raw_descriptor(), libc::F_GETFD) };
    assert_eq!(
        flags & libc::FD_CLOEXEC,
        libc::FD_CLOEXEC,
        "received descriptors are CLOEXEC"
    );
    let received = SharedMemory::from_safe_descriptor(fds.into_iter().next().unwrap()).unwrap();
    let view = MemoryMappingBuilder::new(4096)
        .from_shared_memory(&received)
        .build()
        .unwrap();
    assert_eq!(view.read_obj::<u32>(0).unwrap(), 0x1234);
    // Both directions, and a message that encodes to nothing at all.
    b.send(&Request::Ping).unwrap();
    assert_eq!(a.recv::<Request>().unwrap(), Request::Ping);
    a.send(&()).unwrap();
    b.recv::<()>().unwrap();
}

#[test]
fn descriptors_where_none_are_expected_are_refused_and_closed() {
    let (a, b) = Tube::pair().unwrap();
    let (reader, writer) = pipe();
    a.send_with_descriptors(&Request::Ping, &[&writer]).unwrap();
    drop(writer);
    let err = b.recv::<Request>().unwrap_err();
    assert!(
        matches!(err, Error::UnexpectedDescriptors { count: 1 }),
        "{err}"
    );
    assert_all_write_ends_closed(reader);
}

#[test]
fn oversized_messages_are_refused_on_both_sides() {
    let (a, b) = Tube::pair().unwrap();
    let big = vec![7u8; MAX_MESSAGE_SIZE + 10];
    let err = a.send(&big).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Oversized {
                max: MAX_MESSAGE_SIZE,
                ..
            }
        ),
        "{err}"
    );
    // A hostile peer sends one anyway, with a descriptor: refused, descriptor closed.
    let (reader, writer) = pipe();
    let packet = vec![0x7bu8; MAX_MESSAGE_SIZE + 100];
    Raw(a.as_raw_descriptor())
        .send_with_fds(&[&packet[..]], &[writer.as_raw_fd()])
        .unwrap();
    drop(writer);
    let err = b.recv_raw().unwrap_err();
    assert!(
        matches!(err, Error::Oversized { len, .. } if len > MAX_MESSAGE_SIZE),
        "{err}"
    );
    assert_all_write_ends_closed(reader);
    // The largest allowed message still goes through.
    let exact = vec![1u8; MAX_MESSAGE_SIZE - 4];
    a.send(&exact).unwrap();
    assert_eq!(b.recv::<Vec<u8>>().unwrap(), exact);
}

#[test]
fn too_many_descriptors_are_refused_and_all_closed() {
    for count in [MAX_DESCRIPTORS + 1, MAX_DESCRIPTORS + 2, 40, 200, 253] {
        too_many(count);
    }
}

fn too_many(count: usize) {
    let (a, b) = Tube::pair().unwrap();
    let ends: Vec<_> = (0..count).map(|_| pipe()).collect();
    let refs: Vec<&dyn AsRawDescriptor> = ends
        .iter()
        .map(|(_, w)| w as &dyn AsRawDescriptor)
        .collect();
    let err = a.send_with_descriptors(&Request::Ping, &refs).unwrap_err();
    assert!(matches!(err, Error::TooManyDescriptors { .. }), "{err}");
    // A hostile peer sends them anyway.
    let raw: Vec<i32> = ends.iter().map(|(_, w)| w.as_raw_fd()).collect();
    Raw(a.as_raw_descriptor())
        .send_with_fds(&[&[0x7bu8, 1][..]], &raw)
        .unwrap();
    let readers: Vec<_> = ends
        .into_iter()
        .map(|(r, w)| {
            drop(w);
            r
        })
        .collect();
    let err = b.recv_raw().unwrap_err();
    assert!(
        matches!(
            err,
            Error::TooManyDescriptors {
                max: MAX_DESCRIPTORS,
                ..
            }
        ),
        "{err}"
    );
    for r in readers {
        assert_all_write_ends_closed(r);
    }
    // The tube still works after a refusal.
    a.send(&Request::Ping).unwrap();
    assert_eq!(b.recv::<Request>().unwrap(), Request::Ping);
}

#[test]
fn hostile_bytes_are_typed_errors() {
    let (a, b) = Tube::pair().unwrap();
    let raw = Raw(a.as_raw_descriptor());
    let no_fds: [i32; 0] = [];
    let mut valid = vec![0x7bu8];
    valid.extend(postcard::to_allocvec(&Request::Ping).unwrap());
    type Check = fn(&Error) -> bool;
    let cases: Vec<(Vec<u8>, Check)> = vec![
        (vec![0x00, 1, 2], |e| {
            matches!(e, Error::BadHeader { len: 3 })
        }),
        (vec![0x7b], |e| matches!(e, Error::Deserialize { .. })),
        (vec![0x7b, 0xff, 0xff, 0xff], |e| {
            matches!(e, Error::Deserialize { .. })
        }),
        (vec![0x7b, 0, 0x80], |e| {
            matches!(e, Error::Deserialize { .. })
        }),
        ([valid.clone(), vec![9, 9]].concat(), |e| {
            matches!(e, Error::TrailingBytes { left: 2, .. })
        }),
        // A huge length prefix for the string in Map: refused, not allocated.
        (vec![0x7b, 0, 1, 1, 0xff, 0xff, 0xff, 0xff, 0x0f], |e| {
            matches!(e, Error::Deserialize { .. })
        }),
    ];
    for (bytes, check) in cases {
        raw.send_with_fds(&[&bytes[..]], &no_fds).unwrap();
        let err = b.recv::<Request>().unwrap_err();
        assert!(check(&err), "{bytes:x?}: {err}");
    }
    raw.send_with_fds(&[&valid[..]], &no_fds).unwrap();
    assert_eq!(b.recv::<Request>().unwrap(), Request::Ping);
}

#[test]
fn timeouts_and_disconnection() {
    let (a, b) = Tube::pair().unwrap();
    b.set_recv_timeout(Some(Duration::from_millis(20))).unwrap();
    assert!(matches!(b.recv::<Request>(), Err(Error::Timeout)));
    b.set_recv_timeout(Some(Duration::ZERO)).unwrap();
    assert!(matches!(b.recv::<Request>(), Err(Error::Timeout)));
    b.set_recv_timeout(None).unwrap();
    // Fill a's send buffer (nobody reads b) until a send times out.
    a.set_send_timeout(Some(Duration::from_millis(20))).unwrap();
    let chunk = vec![0u8; 32 * 1024];
    let mut sent = 0;
    let err = loop {
        match a.send(&chunk) {
            Ok(()) => sent += 1,
            Err(e) => break e,
        }
        assert!(sent < 10_000, "the socket buffer never filled");
    };
    assert!(matches!(err, Error::Timeout), "{err}");
    drop(a);
    // What was queued is still delivered, then the end of the stream.
    for _ in 0..sent {
        b.recv::<Vec<u8>>().unwrap();
    }
    assert!(matches!(b.recv::<Request>(), Err(Error::Disconnected)));
    assert!(matches!(b.send(&Request::Ping), Err(Error::Disconnected)));
}

#[test]
fn only_seqpacket_sockets_become_tubes() {
    let (a, _b) = Tube::pair().unwrap();
    let again = Tube::from_safe_descriptor(SafeDescriptor::from(a)).unwrap();
    drop(again);
    let file = std::fs::File::open("/proc/self/status").unwrap();
    let fd = file.as_raw_fd();
    let err = Tube::from_safe_descriptor(SafeDescriptor::from(file)).unwrap_err();
    assert!(
        matches!(err, Error::NotSeqpacket { fd: f } if f == fd),
        "{err}"
    );
    let (s, _t) = std::os::unix::net::UnixStream::pair().unwrap();
    let err = Tube::from_safe_descriptor(SafeDescriptor::from(OwnedFd::from(s))).unwrap_err();
    assert!(matches!(err, Error::NotSeqpacket { .. }), "{err}");
}

#[test]
fn a_tube_end_travels_over_another_tube() {
    let (a, b) = Tube::pair().unwrap();
    let (near, far) = Tube::pair().unwrap();
    a.send_with_descriptors(&Request::Ping, &[&far]).unwrap();
    drop(far);
    let (_, mut fds): (Request, _) = b.recv_with_descriptors().unwrap();
    let far = Tube::from_safe_descriptor(fds.pop().unwrap()).unwrap();
    near.send(&Request::Ping).unwrap();
    assert_eq!(far.recv::<Request>().unwrap(), Request::Ping);
}

const CHILD_FD: &str = "BASE_TUBE_TEST_CHILD_FD";

/// The child half of `one_end_is_handed_to_a_child_process`: does nothing unless run as that
/// child.
#[test]
fn tube_child_process() {
    let Ok(fd) = std::env::var(CHILD_FD) else {
        return;
    };
    let fd: i32 = fd.parse().unwrap();
    // SAFETY: the parent handed us this descriptor; nothing else in this process owns it.
    let tube =
        Tube::from_safe_descriptor(SafeDescriptor::from(unsafe { OwnedFd::from_raw_fd(fd) }))
            .unwrap();
    let msg: Request = tube.recv().unwrap();
    if let Request::Map { offset, size, name } = msg {
        tube.send(&Request::Map {
            offset: offset + 1,
            size: size + 1,
            name: name + " (child)",
        })
        .unwrap();
    }
}

#[test]
fn one_end_is_handed_to_a_child_process() {
    let (parent, child) = Tube::pair().unwrap();
    let fd = child.as_raw_descriptor();
    // The child must inherit this one descriptor: clear CLOEXEC on it alone.
    // SAFETY: F_SETFD on a descriptor we own.
    unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
    let mut process = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "tube_child_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_FD, fd.to_string())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    drop(child);
    parent
        .send(&Request::Map {
            offset: 1,
            size: 2,
            name: "from parent".into(),
        })
        .unwrap();
    parent
        .set_recv_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let reply: Request = parent.recv().unwrap();
    assert_eq!(
        reply,
        Request::Map {
            offset: 2,
            size: 3,
            name: "from parent (child)".into()
        }
    );
    assert!(process.wait().unwrap().success());
    // The child has exited, so its end is closed.
    assert!(matches!(parent.recv::<Request>(), Err(Error::Disconnected)));
}
