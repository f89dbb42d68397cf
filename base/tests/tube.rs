// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Tube: round trips with descriptors, every refusal, empty packets, timeouts, disconnection,
//! close-on-exec descriptors, and handing one end to another process.

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

fn is_cloexec(fd: &SafeDescriptor) -> bool {
    // SAFETY: F_GETFD reads the flags of a descriptor we own.
    let flags = unsafe { libc::fcntl(fd.as_raw_descriptor(), libc::F_GETFD) };
    flags >= 0 && flags & libc::FD_CLOEXEC != 0
}

/// Turns a boolean socket option on, as a process that handed us the socket could have.
fn enable_socket_option(tube: &Tube, option: libc::c_int) -> std::io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: setsockopt reads one int from `on`, which lives across the call.
    let ret = unsafe {
        libc::setsockopt(
            tube.as_raw_descriptor(),
            libc::SOL_SOCKET,
            option,
            &on as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A pipe whose read end reports EOF only once every copy of the write end is closed: a
/// leak detector for descriptors handed to the tube.
fn pipe() -> (std::io::PipeReader, std::io::PipeWriter) {
    std::io::pipe().unwrap()
}

fn assert_all_write_ends_closed(mut reader: std::io::PipeReader) {
    // With every write end closed the read end reports end-of-file at once. A child another
    // test is spawning holds copies of all our descriptors until it execs, which closes the
    // CLOEXEC ones, so wait a little for that; a leaked write end never closes, and the wait
    // turns it into a failure instead of a hang.
    let mut poll = libc::pollfd {
        fd: reader.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll reads and writes the one pollfd it is given, which lives across the call.
    let ready = unsafe { libc::poll(&mut poll, 1, 10_000) };
    assert_eq!(ready, 1, "a write end is still open somewhere");
    let mut buf = [0u8; 1];
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
    // The real length, not where the receive buffer cut it.
    assert!(
        matches!(
            err,
            Error::Oversized {
                len,
                max: MAX_MESSAGE_SIZE,
            } if len == MAX_MESSAGE_SIZE + 99
        ),
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
    assert!(
        matches!(err, Error::TooManyDescriptors { count: c, max: MAX_DESCRIPTORS } if c == count),
        "{err}"
    );
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
                count: c,
                max: MAX_DESCRIPTORS,
            } if c == count
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
fn empty_packets_are_refused_not_mistaken_for_disconnection() {
    let (a, b) = Tube::pair().unwrap();
    let raw = Raw(a.as_raw_descriptor());
    let no_fds: [i32; 0] = [];
    let empty: &[u8] = &[];
    // A peer still connected sends an empty packet: a decode-class error, and the tube goes on.
    raw.send_with_fds(&[empty], &no_fds).unwrap();
    let err = b.recv::<Request>().unwrap_err();
    assert!(matches!(err, Error::EmptyPacket), "{err}");
    a.send(&Request::Ping).unwrap();
    assert_eq!(b.recv::<Request>().unwrap(), Request::Ping);
    // Raw, it is a packet of no bytes, which decode refuses.
    raw.send_with_fds(&[empty], &no_fds).unwrap();
    let (packet, fds) = b.recv_raw().unwrap();
    assert!(packet.is_empty() && fds.is_empty());
    let err = base::tube::decode::<Request>(&packet).unwrap_err();
    assert!(matches!(err, Error::EmptyPacket), "{err}");
    // With a descriptor attached: refused, descriptor closed.
    let (reader, writer) = pipe();
    raw.send_with_fds(&[empty], &[writer.as_raw_fd()]).unwrap();
    drop(writer);
    let err = b.recv::<Request>().unwrap_err();
    assert!(matches!(err, Error::EmptyPacket), "{err}");
    assert_all_write_ends_closed(reader);
    // A tube never sends one.
    let err = a.send_raw(&[], &[]).unwrap_err();
    assert!(matches!(err, Error::EmptyPacket), "{err}");
    let (_reader, writer) = pipe();
    let err = a.send_raw(&[], &[&writer]).unwrap_err();
    assert!(matches!(err, Error::EmptyPacket), "{err}");
    b.set_recv_timeout(Some(Duration::from_millis(20))).unwrap();
    let err = b.recv::<Request>().unwrap_err();
    assert!(matches!(err, Error::Timeout), "nothing was sent: {err}");
    b.set_recv_timeout(None).unwrap();
    // An empty packet, then a message, then the close: both are still delivered in order.
    raw.send_with_fds(&[empty], &no_fds).unwrap();
    a.send(&Request::Ping).unwrap();
    drop(a);
    let err = b.recv::<Request>().unwrap_err();
    assert!(matches!(err, Error::EmptyPacket), "{err}");
    assert_eq!(b.recv::<Request>().unwrap(), Request::Ping);
    // Then the end of the stream, every time it is asked.
    for _ in 0..2 {
        let err = b.recv::<Request>().unwrap_err();
        assert!(matches!(err, Error::Disconnected), "{err}");
    }
    // Two empty packets, then a message, then the close: the message is still found behind
    // both (found in review: a one-packet peek took the second empty one for the end).
    let (a, b) = Tube::pair().unwrap();
    let raw = Raw(a.as_raw_descriptor());
    raw.send_with_fds(&[empty], &no_fds).unwrap();
    raw.send_with_fds(&[empty], &no_fds).unwrap();
    a.send(&Request::Ping).unwrap();
    drop(a);
    for _ in 0..2 {
        let err = b.recv::<Request>().unwrap_err();
        assert!(matches!(err, Error::EmptyPacket), "{err}");
    }
    assert_eq!(b.recv::<Request>().unwrap(), Request::Ping);
    let err = b.recv::<Request>().unwrap_err();
    assert!(matches!(err, Error::Disconnected), "{err}");
}

#[test]
fn a_peer_that_shuts_down_its_sending_side_is_disconnected() {
    let (a, b) = Tube::pair().unwrap();
    a.send(&Request::Ping).unwrap();
    // SAFETY: shutdown changes only the state of a socket we own.
    let ret = unsafe { libc::shutdown(a.as_raw_descriptor(), libc::SHUT_WR) };
    assert_eq!(ret, 0, "{}", std::io::Error::last_os_error());
    assert_eq!(b.recv::<Request>().unwrap(), Request::Ping);
    // `a` is still open, so `b` sees no hang-up (POLLHUP), only the shut-down side (POLLRDHUP).
    let err = b.recv::<Request>().unwrap_err();
    assert!(matches!(err, Error::Disconnected), "{err}");
    drop(a);
}

#[test]
fn descriptors_behind_other_control_messages_are_found() {
    // With SO_PASSCRED set, the kernel puts the sender's credentials before the descriptors.
    let (a, b) = Tube::pair().unwrap();
    enable_socket_option(&b, libc::SO_PASSCRED).unwrap();
    let (reader, writer) = pipe();
    a.send_with_descriptors(&Request::Ping, &[&writer]).unwrap();
    let (msg, fds): (Request, Vec<SafeDescriptor>) = b.recv_with_descriptors().unwrap();
    assert_eq!(msg, Request::Ping);
    assert_eq!(fds.len(), 1);
    assert!(is_cloexec(&fds[0]));
    drop(fds);
    a.send_with_descriptors(&Request::Ping, &[&writer]).unwrap();
    drop(writer);
    let err = b.recv::<Request>().unwrap_err();
    assert!(
        matches!(err, Error::UnexpectedDescriptors { count: 1 }),
        "{err}"
    );
    assert_all_write_ends_closed(reader);
    // Credentials and nearly SCM_MAX_FD descriptors: all arrive, and are counted and closed.
    let count = 250;
    let ends: Vec<_> = (0..count).map(|_| pipe()).collect();
    let raw: Vec<i32> = ends.iter().map(|(_, w)| w.as_raw_fd()).collect();
    Raw(a.as_raw_descriptor())
        .send_with_fds(&[&[0x7bu8, 1][..]], &raw)
        .unwrap();
    let readers: Vec<_> = ends.into_iter().map(|(r, _)| r).collect();
    let err = b.recv_raw().unwrap_err();
    assert!(
        matches!(
            err,
            Error::TooManyDescriptors {
                count: 250,
                max: MAX_DESCRIPTORS
            }
        ),
        "{err}"
    );
    for r in readers {
        assert_all_write_ends_closed(r);
    }
}

/// How many of our descriptors are pidfds of this very process.
fn own_pidfds() -> usize {
    let pid_line = format!("Pid:\t{}\n", std::process::id());
    std::fs::read_dir("/proc/self/fdinfo")
        .unwrap()
        .filter_map(|entry| std::fs::read_to_string(entry.ok()?.path()).ok())
        .filter(|info| info.contains(&pid_line))
        .count()
}

/// With SO_PASSPIDFD set, the kernel attaches a pidfd of the sender to every message; one
/// left open per message would exhaust our descriptors.
#[test]
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn pidfds_the_kernel_attaches_are_closed() {
    /// SO_PASSPIDFD in asm-generic/socket.h (Linux 6.5), which these architectures use.
    const SO_PASSPIDFD: libc::c_int = 76;
    let (a, b) = Tube::pair().unwrap();
    if let Err(e) = enable_socket_option(&b, SO_PASSPIDFD) {
        assert_eq!(e.raw_os_error(), Some(libc::ENOPROTOOPT), "{e}");
        return; // A kernel older than 6.5.
    }
    let before = own_pidfds();
    let (_reader, writer) = pipe();
    for _ in 0..20 {
        a.send_with_descriptors(&Request::Ping, &[&writer]).unwrap();
        let (msg, fds): (Request, Vec<SafeDescriptor>) = b.recv_with_descriptors().unwrap();
        assert_eq!(msg, Request::Ping);
        assert_eq!(
            fds.len(),
            1,
            "the pidfd is not one of the message's descriptors"
        );
    }
    assert_eq!(own_pidfds(), before, "pidfds were left open");
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

/// Children spawned by another thread for one second list their descriptors while this one
/// receives descriptors as fast as it can: none may show up in a child. Receiving without
/// MSG_CMSG_CLOEXEC and setting FD_CLOEXEC afterwards leaks within a few children.
#[test]
fn received_descriptors_never_leak_into_a_child_spawned_meanwhile() {
    use std::time::Instant;

    const PROBE: &str = "tube-cloexec-probe";
    let probe = SharedMemory::new(PROBE, 4096).unwrap();
    let (a, b) = Tube::pair().unwrap();
    let spawner = std::thread::spawn(|| {
        let deadline = Instant::now() + Duration::from_secs(1);
        let (mut spawned, mut leaked) = (0, 0);
        while Instant::now() < deadline && leaked == 0 {
            let out = std::process::Command::new("/bin/ls")
                .args(["-l", "/proc/self/fd/"])
                .stdin(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .output()
                .unwrap();
            spawned += 1;
            if String::from_utf8_lossy(&out.stdout).contains(PROBE) {
                leaked += 1;
            }
        }
        (spawned, leaked)
    });
    // The most descriptors a message may carry, so that on a receive path that set FD_CLOEXEC
    // one descriptor at a time after recvmsg, the last one would wait longest.
    let refs: Vec<&dyn AsRawDescriptor> = vec![&probe; MAX_DESCRIPTORS];
    let mut received = 0usize;
    while !spawner.is_finished() {
        a.send_with_descriptors(&(), &refs).unwrap();
        let ((), fds): ((), Vec<SafeDescriptor>) = b.recv_with_descriptors().unwrap();
        if received == 0 {
            assert!(
                fds.iter().all(is_cloexec),
                "received descriptors are CLOEXEC"
            );
        }
        received += fds.len();
    }
    let (spawned, leaked) = spawner.join().unwrap();
    assert_eq!(
        leaked, 0,
        "{leaked} of {spawned} children spawned while {received} descriptors were received \
         inherited one"
    );
}

#[test]
fn a_nonblocking_tube_never_waits() {
    let (a, b) = Tube::pair().unwrap();
    a.set_nonblocking(true).unwrap();
    b.set_nonblocking(true).unwrap();
    let err = b.recv::<Request>().unwrap_err();
    assert!(matches!(err, Error::Timeout), "{err}");
    // Fill the peer's queue: the first send that does not fit answers at once.
    let start = std::time::Instant::now();
    let mut sent = 0;
    let err = loop {
        match a.send(&Request::Ping) {
            Ok(()) => sent += 1,
            Err(e) => break e,
        }
        assert!(sent < 1_000_000, "the queue never filled");
    };
    assert!(matches!(err, Error::Timeout), "{err}");
    assert!(sent > 0);
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_eq!(b.recv::<Request>().unwrap(), Request::Ping);
    // And back to blocking.
    b.set_nonblocking(false).unwrap();
    b.set_recv_timeout(Some(Duration::from_millis(10))).unwrap();
    for _ in 1..sent {
        b.recv::<Request>().unwrap();
    }
    assert!(matches!(b.recv::<Request>(), Err(Error::Timeout)));
}
