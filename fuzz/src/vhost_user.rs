// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A hostile vhost-user frontend: the input is a sequence of messages sent to
//! [`serve_connection`] (on a thread of its own) over a socket pair, each with the descriptors
//! the frontend chose attached (memfds of any size, sealable or not, eventfds, pipes, sockets,
//! `/dev/null`, `/dev/zero`), interleaved with what a frontend does besides sending messages:
//! writing guest memory (descriptor tables, available rings and request headers, or any bytes),
//! kicking eventfds, truncating and sealing its memfds. Most messages are well formed, with
//! values near those the backend accepts, so that the deep paths run (a memory table, started
//! rings serving chains from the disk, the dirty log); some are not, and end the connection.
//! The disk is a memfd, so nothing touches the file system.
//!
//! Promises checked: nothing panics, on any thread (the vrings' threads included); the
//! backend never stops reading its socket for [`STALL_TIMEOUT`]; `serve_connection` returns
//! within [`JOIN_TIMEOUT`] of the frontend hanging up; every reply the backend sends is a
//! version-1 reply no larger than the protocol allows, and `GET_FEATURES` and `GET_QUEUE_NUM`
//! answer what the backend offers; and once the connection is over and the backend dropped,
//! the process holds exactly as many descriptors (`/proc/self/fd`) and mappings
//! (`/proc/self/maps`) as before the input. A warm-up (once per process) first makes the
//! threads' stacks and allocator arenas that later inputs reuse, so that those are not counted.
//!
//! The input: byte 0 is a preamble ([`setup`]), then operations until the bytes run out (at
//! most [`MAX_OPS`]): one byte, modulo [`op::OPS`], picks the operation ([`op`]), and the
//! operation reads its arguments from the bytes after it.

use std::fs::File;
use std::io::Write;
use std::net::Shutdown;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Barrier, Mutex, Once, OnceLock};
use std::time::{Duration, Instant};

use base::{SafeDescriptor, SharedMemory};
use devices::vhost_user::backend::{serve_connection, BlockBackend, MAX_QUEUE_SIZE};
use devices::vhost_user::blk::BlockDisk;

use crate::input::Input;

/// The most operations one input runs.
pub const MAX_OPS: usize = 96;
/// How long `serve_connection` may take to return once the frontend hung up.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the backend may leave its socket unread while the frontend has more to send.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long [`op::SYNC`] waits for the backend's answer.
const SYNC_TIMEOUT: Duration = Duration::from_secs(1);
/// The disk's size in sectors.
pub const DISK_SECTORS: u64 = 64;
/// Where the frontend's own address space puts guest memory (the `user_addr` of the regions).
pub const USER_BASE: u64 = 0x7f12_3400_0000;

/// The preamble's bits (byte 0 of the input): a frontend's usual first steps, so that the
/// operations after it start from a negotiated, configured device.
pub mod setup {
    /// `GET_FEATURES`, then `SET_FEATURES` with all that is offered (`LOG_ALL` only with
    /// [`LOG`]).
    pub const FEATURES: u8 = 1 << 0;
    /// `GET_PROTOCOL_FEATURES`, then `SET_PROTOCOL_FEATURES` with all that is offered and
    /// `REPLY_ACK`.
    pub const PROTOCOL: u8 = 1 << 1;
    /// `SET_MEM_TABLE` of one region of 16 pages: guest address 0, frontend address
    /// [`USER_BASE`](super::USER_BASE), offset 0 in a new sealable memfd.
    pub const TABLE: u8 = 1 << 2;
    /// Vring 0 of 16 entries at the start of that region, started: the sequence of
    /// [`op::START_RING`](super::op::START_RING).
    pub const RING: u8 = 1 << 3;
    /// These two bits plus one are the device's queues (1 to 4).
    pub const QUEUES_SHIFT: u8 = 4;
    /// The two bits of the queues.
    pub const QUEUES_MASK: u8 = 3;
    /// This one bit and the disk is read-only.
    pub const READ_ONLY: u8 = 1 << 6;
    /// With [`FEATURES`], `LOG_ALL` is acked; with [`PROTOCOL`], `SET_LOG_BASE` of one page.
    pub const LOG: u8 = 1 << 7;
}

/// The operations, by their byte modulo [`OPS`](op::OPS); each reads its arguments after it.
pub mod op {
    /// Any message: a code from 0 to 50 (every request code, and some that are not), any
    /// flags, any body, a size field that mostly matches it, any descriptors.
    pub const RAW: u8 = 0;
    /// A message without a body (`GET_FEATURES`, `SET_OWNER`, `RESET_DEVICE`, ...).
    pub const NO_BODY: u8 = 1;
    /// `SET_FEATURES`: what is offered, a part of it, or more.
    pub const SET_FEATURES: u8 = 2;
    /// `SET_PROTOCOL_FEATURES`: what is offered and `REPLY_ACK`, a part of it, or more.
    pub const SET_PROTOCOL_FEATURES: u8 = 3;
    /// `SET_MEM_TABLE`: regions on memfds of random sizes, at random offsets, mostly
    /// disjoint and inside their memfds.
    pub const SET_MEM_TABLE: u8 = 4;
    /// `ADD_MEM_REG`: one more region, after the others.
    pub const ADD_MEM_REG: u8 = 5;
    /// `REM_MEM_REG`: a region sent before, or one that never was.
    pub const REM_MEM_REG: u8 = 6;
    /// `SET_VRING_NUM`, `SET_VRING_BASE`, `GET_VRING_BASE` or `SET_VRING_ENABLE`.
    pub const VRING_STATE: u8 = 7;
    /// `SET_VRING_ADDR`: rings laid out in a region, or elsewhere.
    pub const SET_VRING_ADDR: u8 = 8;
    /// `SET_VRING_KICK`, `SET_VRING_CALL` or `SET_VRING_ERR`, with an eventfd or another
    /// kind of descriptor, or none.
    pub const VRING_FD: u8 = 9;
    /// `SET_LOG_BASE`: a memfd, an offset and a size.
    pub const SET_LOG_BASE: u8 = 10;
    /// `GET_CONFIG` or `SET_CONFIG` at a random offset and size.
    pub const CONFIG: u8 = 11;
    /// Chains offered on a vring: descriptors, request headers and the available ring
    /// written into guest memory where the frontend put them.
    pub const OFFER: u8 = 12;
    /// A kick: an eventfd (a kick one if any) is signalled.
    pub const KICK: u8 = 13;
    /// A memfd is truncated, grown or sealed.
    pub const RESIZE: u8 = 14;
    /// A request for what the backend does not do: inflight, backend channel, GPU socket,
    /// device state, shared object, log fd.
    pub const UNSUPPORTED: u8 = 15;
    /// `GET_FEATURES`, and a wait for its answer: everything before it was handled.
    pub const SYNC: u8 = 16;
    /// A few milliseconds for the vrings' threads, waiting for a call eventfd.
    pub const PAUSE: u8 = 17;
    /// A vring started as a frontend does: `NUM`, `ADDR`, `BASE`, `CALL`, `KICK` and, with
    /// protocol features, `ENABLE`.
    pub const START_RING: u8 = 18;
    /// Any bytes written anywhere in a memfd.
    pub const POKE: u8 = 19;
    /// The number of operations.
    pub const OPS: u8 = 20;
}

/// Request codes (the vhost-user spec's `VHOST_USER_*`; `FrontendReq` in `vhost`).
mod code {
    pub const GET_FEATURES: u32 = 1;
    pub const SET_FEATURES: u32 = 2;
    pub const SET_OWNER: u32 = 3;
    pub const RESET_OWNER: u32 = 4;
    pub const SET_MEM_TABLE: u32 = 5;
    pub const SET_LOG_BASE: u32 = 6;
    pub const SET_LOG_FD: u32 = 7;
    pub const SET_VRING_NUM: u32 = 8;
    pub const SET_VRING_ADDR: u32 = 9;
    pub const SET_VRING_BASE: u32 = 10;
    pub const GET_VRING_BASE: u32 = 11;
    pub const SET_VRING_KICK: u32 = 12;
    pub const SET_VRING_CALL: u32 = 13;
    pub const SET_VRING_ERR: u32 = 14;
    pub const GET_PROTOCOL_FEATURES: u32 = 15;
    pub const SET_PROTOCOL_FEATURES: u32 = 16;
    pub const GET_QUEUE_NUM: u32 = 17;
    pub const SET_VRING_ENABLE: u32 = 18;
    pub const SEND_RARP: u32 = 19;
    pub const SET_BACKEND_REQ_FD: u32 = 21;
    pub const GET_CONFIG: u32 = 24;
    pub const SET_CONFIG: u32 = 25;
    pub const GET_INFLIGHT_FD: u32 = 31;
    pub const SET_INFLIGHT_FD: u32 = 32;
    pub const GPU_SET_SOCKET: u32 = 33;
    pub const RESET_DEVICE: u32 = 34;
    pub const VRING_KICK: u32 = 35;
    pub const GET_MAX_MEM_SLOTS: u32 = 36;
    pub const ADD_MEM_REG: u32 = 37;
    pub const REM_MEM_REG: u32 = 38;
    pub const GET_STATUS: u32 = 40;
    pub const GET_SHARED_OBJECT: u32 = 41;
    pub const SET_DEVICE_STATE_FD: u32 = 42;
    pub const CHECK_DEVICE_STATE: u32 = 43;
    pub const GET_SHMEM_CONFIG: u32 = 44;
}

/// Header flags: the version (1), a reply, a request that wants one.
const VERSION: u32 = 0x1;
const REPLY: u32 = 0x4;
const NEED_REPLY: u32 = 0x8;
/// The largest body of a message.
const MAX_MSG_SIZE: u32 = 0x1000;
/// Bytes of a header.
const HEADER: usize = 12;

/// Virtio and vhost-user feature bits the harness names.
const PROTOCOL_FEATURES: u64 = 1 << 30;
const LOG_ALL: u64 = 1 << 26;
const REPLY_ACK: u64 = 1 << 3;

/// The vring-fd messages' flag for "no descriptor".
const NO_FD: u64 = 0x100;

/// Descriptor flags.
const DESC_NEXT: u16 = 1;
const DESC_WRITE: u16 = 2;
const DESC_INDIRECT: u16 = 4;

/// virtio-blk request types.
const BLK_IN: u32 = 0;
const BLK_OUT: u32 = 1;
const BLK_FLUSH: u32 = 4;
const BLK_GET_ID: u32 = 8;

/// Panics seen by the hook, on any thread: a vring's thread that panics is joined and its
/// panic dropped by the backend, so it is only seen here.
static PANICS: AtomicUsize = AtomicUsize::new(0);

/// A memfd the frontend made for guest memory or a log, with its size as last set.
struct Memfd {
    file: File,
    size: u64,
}

/// A region as the frontend described it (its memfd, if it sent one).
#[derive(Clone, Copy)]
struct Region {
    guest: u64,
    size: u64,
    user: u64,
    offset: u64,
    memfd: Option<usize>,
}

/// A vring as the frontend configured it: its size, where its rings are in the frontend's
/// address space, the next descriptor to write and the available index.
#[derive(Clone, Copy)]
struct Ring {
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    next_desc: u16,
    avail_idx: u16,
}

impl Default for Ring {
    fn default() -> Ring {
        Ring {
            size: MAX_QUEUE_SIZE,
            desc: 0,
            avail: 0,
            used: 0,
            next_desc: 0,
            avail_idx: 0,
        }
    }
}

/// The frontend's end of the connection and everything it made.
struct Frontend {
    sock: UnixStream,
    page: u64,
    queues: u16,
    offered: u64,
    offered_protocol: u64,
    /// The backend still reads the socket (no send failed, no end of stream seen).
    alive: bool,
    /// Every message so far had a size field that matched its body, so the backend reads
    /// them as they were sent.
    framed: bool,
    /// Reply bytes not yet parsed.
    received: Vec<u8>,
    /// `GET_FEATURES` sent (framed) and answered.
    feature_requests: usize,
    feature_replies: usize,
    /// The last features sent: `vhost` acts on them even when the backend refuses them.
    acked: u64,
    memfds: Vec<Memfd>,
    regions: Vec<Region>,
    rings: Vec<Ring>,
    events: Vec<File>,
    kicks: Vec<usize>,
    calls: Vec<usize>,
    others: Vec<OwnedFd>,
}

/// Whether `VMM_FUZZ_TRACE` is set: then every message and action of the frontend is
/// printed, to turn a failing input into the sequence that reproduces it.
fn tracing() -> bool {
    static TRACE: OnceLock<bool> = OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("VMM_FUZZ_TRACE").is_some())
}

macro_rules! trace {
    ($($arg:tt)*) => {
        if tracing() {
            eprintln!($($arg)*);
        }
    };
}

fn os_error() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// A memfd of `size` bytes; without `sealable`, one that refuses seals (so nothing can keep
/// it from shrinking).
fn memfd(size: u64, sealable: bool) -> File {
    if sealable {
        let shm = SharedMemory::new("vhost-user-fuzz-guest", size).expect("memfd");
        return File::from(SafeDescriptor::from(shm));
    }
    // SAFETY: a NUL-terminated name; the result is checked before it is used.
    let fd =
        unsafe { libc::memfd_create(c"vhost-user-fuzz-unsealable".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", os_error());
    // SAFETY: `fd` was just made and nothing else owns it.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size).expect("memfd size");
    file
}

impl Frontend {
    fn new(sock: UnixStream, backend: &BlockBackend, queues: u16) -> Frontend {
        sock.set_nonblocking(true).expect("non-blocking socket");
        Frontend {
            sock,
            page: base::pagesize() as u64,
            queues,
            offered: backend.offered_features(),
            offered_protocol: BlockBackend::offered_protocol_features().bits() | REPLY_ACK,
            alive: true,
            framed: true,
            received: Vec::new(),
            feature_requests: 0,
            feature_replies: 0,
            acked: 0,
            memfds: Vec::new(),
            regions: Vec::new(),
            rings: vec![Ring::default(); usize::from(queues) + 1],
            events: Vec::new(),
            kicks: Vec::new(),
            calls: Vec::new(),
            others: Vec::new(),
        }
    }

    // Sending and receiving.

    /// One `sendmsg` of `bytes` with `fds` attached; never raises SIGPIPE, never blocks.
    fn sendmsg(&self, bytes: &[u8], fds: &[RawFd]) -> std::io::Result<usize> {
        let mut iov = libc::iovec {
            iov_base: bytes.as_ptr() as *mut libc::c_void,
            iov_len: bytes.len(),
        };
        let fd_bytes = std::mem::size_of_val(fds) as u32;
        // SAFETY: arithmetic on a length.
        let space = unsafe { libc::CMSG_SPACE(fd_bytes) } as usize;
        let mut control = vec![0u64; space.div_ceil(8)];
        // SAFETY: an all-zero msghdr is a valid empty one.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if !fds.is_empty() {
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = space as _;
            // SAFETY: the control buffer is `space` bytes, 8-aligned: room for one header and
            // `fds`; CMSG_FIRSTHDR points at its start.
            unsafe {
                let cmsg = libc::CMSG_FIRSTHDR(&msg);
                (*cmsg).cmsg_level = libc::SOL_SOCKET;
                (*cmsg).cmsg_type = libc::SCM_RIGHTS;
                (*cmsg).cmsg_len = libc::CMSG_LEN(fd_bytes) as _;
                std::ptr::copy_nonoverlapping(
                    fds.as_ptr(),
                    libc::CMSG_DATA(cmsg).cast::<RawFd>(),
                    fds.len(),
                );
            }
        }
        // SAFETY: `msg` points at `iov`, `bytes` and `control`, which outlive the call.
        let n = unsafe {
            libc::sendmsg(
                self.sock.as_raw_fd(),
                &msg,
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            Err(os_error())
        } else {
            Ok(n as usize)
        }
    }

    /// Sends all of `bytes` (the descriptors with the first part), reading replies while the
    /// socket is full. A send the backend refuses (it hung up) ends the frontend's input.
    fn write_all(&mut self, bytes: &[u8], fds: &[RawFd]) {
        let mut done = 0;
        let mut fds = fds;
        let deadline = Instant::now() + STALL_TIMEOUT;
        while done < bytes.len() && self.alive {
            match self.sendmsg(&bytes[done..], fds) {
                Ok(n) => {
                    done += n;
                    fds = &[];
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    assert!(
                        Instant::now() < deadline,
                        "the backend left its socket unread for {STALL_TIMEOUT:?}"
                    );
                    self.drain();
                    self.wait(libc::POLLOUT | libc::POLLIN, Duration::from_millis(5));
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => self.alive = false,
            }
        }
    }

    fn wait(&self, events: libc::c_short, timeout: Duration) {
        let mut pfd = libc::pollfd {
            fd: self.sock.as_raw_fd(),
            events,
            revents: 0,
        };
        // SAFETY: one pollfd that lives across the call.
        unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as libc::c_int) };
    }

    /// A message of `code` and `flags` whose header says `size` bytes follow; `body` follows.
    fn send_sized(&mut self, code: u32, flags: u32, size: u32, body: &[u8], fds: &[RawFd]) {
        if !self.alive {
            return;
        }
        if size as usize != body.len() {
            self.framed = false;
        }
        let mut msg = Vec::with_capacity(HEADER + body.len());
        msg.extend(code.to_ne_bytes());
        msg.extend(flags.to_ne_bytes());
        msg.extend(size.to_ne_bytes());
        msg.extend(body);
        if code == code::GET_FEATURES && self.framed {
            self.feature_requests += 1;
        }
        trace!(
            "-> code {code} flags {flags:#x} size {size} body {body:02x?} fds {:?}",
            fds.iter().map(|&fd| describe(fd)).collect::<Vec<_>>()
        );
        self.write_all(&msg, fds);
        self.drain();
    }

    fn send(&mut self, code: u32, flags: u32, body: &[u8], fds: &[RawFd]) {
        self.send_sized(code, flags, body.len() as u32, body, fds);
    }

    /// Reads what the backend sent, without blocking; closes descriptors that came with it.
    fn drain(&mut self) {
        loop {
            let mut buf = [0u8; 4096];
            let mut control = [0u64; 64];
            let mut iov = libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.len(),
            };
            // SAFETY: an all-zero msghdr is a valid empty one.
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = std::mem::size_of_val(&control) as _;
            // SAFETY: `msg` points at `buf` and `control`, which outlive the call.
            let n = unsafe {
                libc::recvmsg(
                    self.sock.as_raw_fd(),
                    &mut msg,
                    libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC,
                )
            };
            if n < 0 {
                let e = os_error();
                match e.kind() {
                    std::io::ErrorKind::WouldBlock => return,
                    std::io::ErrorKind::Interrupted => continue,
                    _ => {
                        self.alive = false;
                        return;
                    }
                }
            }
            // SAFETY: the kernel filled `control` with `msg_controllen` bytes of headers;
            // the CMSG macros walk them, and every SCM_RIGHTS descriptor is now ours.
            unsafe {
                let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
                while !cmsg.is_null() {
                    if (*cmsg).cmsg_level == libc::SOL_SOCKET
                        && (*cmsg).cmsg_type == libc::SCM_RIGHTS
                    {
                        let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                        let len = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                        for i in 0..len / std::mem::size_of::<RawFd>() {
                            drop(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                        }
                    }
                    cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
                }
            }
            if n == 0 {
                // The backend closed its end.
                self.alive = false;
                return;
            }
            self.received.extend_from_slice(&buf[..n as usize]);
            self.parse_replies();
        }
    }

    /// Checks the complete replies received.
    fn parse_replies(&mut self) {
        let word = |b: &[u8], at: usize| u32::from_ne_bytes(b[at..at + 4].try_into().unwrap());
        while self.received.len() >= HEADER {
            let code = word(&self.received, 0);
            let flags = word(&self.received, 4);
            let size = word(&self.received, 8);
            assert_eq!(
                flags,
                VERSION | REPLY,
                "reply to request {code}: flags {flags:#x}"
            );
            assert!(size <= MAX_MSG_SIZE, "reply to request {code}: size {size}");
            let total = HEADER + size as usize;
            if self.received.len() < total {
                return;
            }
            let body: Vec<u8> = self.received.drain(..total).skip(HEADER).collect();
            let value = || u64::from_ne_bytes(body[..8].try_into().unwrap());
            match code {
                code::GET_FEATURES => {
                    assert_eq!(size, 8, "GET_FEATURES reply size");
                    assert_eq!(value(), self.offered, "GET_FEATURES answer");
                    self.feature_replies += 1;
                }
                code::GET_QUEUE_NUM => {
                    assert_eq!(size, 8, "GET_QUEUE_NUM reply size");
                    assert_eq!(value(), u64::from(self.queues), "GET_QUEUE_NUM answer");
                }
                _ => {}
            }
        }
    }

    /// Sends `GET_FEATURES` and waits for every `GET_FEATURES` to be answered: then every
    /// message before it was handled. Only while the stream is framed (a message whose size
    /// lies may swallow the request).
    fn sync(&mut self) {
        if !self.framed {
            return;
        }
        self.send(code::GET_FEATURES, VERSION, &[], &[]);
        let deadline = Instant::now() + SYNC_TIMEOUT;
        while self.alive && self.feature_replies < self.feature_requests {
            if Instant::now() >= deadline {
                // Not a finding by itself: the join at the end bounds a real hang.
                return;
            }
            self.wait(libc::POLLIN, Duration::from_millis(5));
            self.drain();
        }
    }

    // Descriptors.

    fn new_eventfd(&mut self, flags: libc::c_int) -> RawFd {
        // SAFETY: eventfd takes no pointers; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK | flags) };
        assert!(fd >= 0, "eventfd: {}", os_error());
        // SAFETY: `fd` was just made and nothing else owns it.
        self.events.push(unsafe { File::from_raw_fd(fd) });
        fd
    }

    /// A new memfd for guest memory, of 1 to 16 pages, mostly sealable; its index.
    fn new_memfd(&mut self, input: &mut Input) -> usize {
        let size = (1 + u64::from(input.u8() % 16)) * self.page;
        let sealable = !input.u8().is_multiple_of(8);
        self.memfds.push(Memfd {
            file: memfd(size, sealable),
            size,
        });
        self.memfds.len() - 1
    }

    /// A memfd made before (or a new one); its index.
    fn some_memfd(&mut self, input: &mut Input) -> usize {
        match self.memfds.len() {
            0 => self.new_memfd(input),
            n => usize::from(input.u8()) % n,
        }
    }

    fn keep(&mut self, fd: impl Into<OwnedFd>) -> RawFd {
        let fd = fd.into();
        let raw = fd.as_raw_fd();
        self.others.push(fd);
        raw
    }

    /// A descriptor of the kind `kind` picks: new, or made before. The frontend keeps it
    /// open until the end of the input.
    fn fd_of_kind(&mut self, kind: u8, input: &mut Input) -> RawFd {
        match kind % 10 {
            0 => self.new_eventfd(0),
            1 => self.new_eventfd(libc::EFD_SEMAPHORE),
            2 => match self.events.len() {
                0 => self.new_eventfd(0),
                n => self.events[usize::from(input.u8()) % n].as_raw_fd(),
            },
            3 => {
                let i = self.new_memfd(input);
                self.memfds[i].file.as_raw_fd()
            }
            4 => {
                let i = self.some_memfd(input);
                self.memfds[i].file.as_raw_fd()
            }
            5 | 6 => {
                let (reader, writer) = std::io::pipe().expect("pipe");
                let (reader, writer) = (self.keep(reader), self.keep(writer));
                if kind % 10 == 5 {
                    reader
                } else {
                    writer
                }
            }
            7 => {
                let (ours, theirs) = UnixStream::pair().expect("socket pair");
                self.keep(ours);
                self.keep(theirs)
            }
            8 => self.keep(File::open("/dev/null").expect("/dev/null")),
            _ => self.keep(File::open("/dev/zero").expect("/dev/zero")),
        }
    }

    /// Descriptors to attach to a message that takes none, mostly none.
    fn some_fds(&mut self, input: &mut Input) -> Vec<RawFd> {
        let n = match input.u8() % 8 {
            0..=4 => 0,
            5 | 6 => 1,
            _ => 1 + input.u8() % 4,
        };
        (0..n)
            .map(|_| {
                let kind = input.u8();
                self.fd_of_kind(kind, input)
            })
            .collect()
    }

    // Values.

    fn vring_index(&self, input: &mut Input) -> u32 {
        match input.u8() % 16 {
            0 => input.u32(),
            1 => u32::from(self.queues),
            _ => u32::from(input.u8()) % u32::from(self.queues),
        }
    }

    fn ring_mut(&mut self, index: u32) -> Option<&mut Ring> {
        self.rings.get_mut(usize::try_from(index).ok()?)
    }

    fn queue_size(input: &mut Input) -> u32 {
        match input.u8() % 16 {
            0 => 0,
            1 => 3,
            2 => 2048,
            3 => input.u32(),
            4 => u32::from(MAX_QUEUE_SIZE),
            _ => 1 << (input.u8() % 9),
        }
    }

    /// A guest address: mostly in a region (in the frontend's view), 16-aligned.
    fn guest_addr(&self, input: &mut Input) -> u64 {
        let pick = input.u8();
        if self.regions.is_empty() || pick.is_multiple_of(8) {
            return match pick % 3 {
                0 => input.u64(),
                _ => u64::from(input.u16()) << 4,
            };
        }
        let r = self.regions[usize::from(pick) % self.regions.len()];
        r.guest.wrapping_add(u64::from(input.u16()) % r.size.max(1)) & !0xf
    }

    /// Where `addr` (a guest address, or with `user` a frontend one) is in which memfd, with
    /// `len` bytes after it in that memfd.
    fn locate(&self, addr: u64, len: u64, user: bool) -> Option<(usize, u64)> {
        self.regions.iter().find_map(|r| {
            let start = if user { r.user } else { r.guest };
            let offset = addr.checked_sub(start)?;
            let memfd = r.memfd?;
            let at = r.offset.checked_add(offset)?;
            (offset < r.size && at.checked_add(len)? <= self.memfds[memfd].size)
                .then_some((memfd, at))
        })
    }

    fn write_mem(&self, addr: u64, bytes: &[u8], user: bool) {
        if let Some((memfd, at)) = self.locate(addr, bytes.len() as u64, user) {
            trace!("   memfd {memfd} at {at:#x} <- {bytes:02x?}");
            let _ = self.memfds[memfd].file.write_at(bytes, at);
        }
    }

    // Operations.

    fn step(&mut self, op: u8, input: &mut Input) {
        match op % op::OPS {
            op::RAW => self.raw(input),
            op::NO_BODY => {
                const CODES: [u32; 14] = [
                    code::GET_FEATURES,
                    code::GET_FEATURES,
                    code::GET_PROTOCOL_FEATURES,
                    code::SET_OWNER,
                    code::SET_OWNER,
                    code::RESET_OWNER,
                    code::GET_QUEUE_NUM,
                    code::RESET_DEVICE,
                    code::GET_MAX_MEM_SLOTS,
                    code::CHECK_DEVICE_STATE,
                    code::GET_SHMEM_CONFIG,
                    code::GET_STATUS,
                    code::SEND_RARP,
                    code::VRING_KICK,
                ];
                let code = CODES[usize::from(input.u8()) % CODES.len()];
                let flags = flags(input);
                self.send(code, flags, &[], &[]);
            }
            op::SET_FEATURES => {
                let value = match input.u8() % 8 {
                    0..=2 => self.offered & !LOG_ALL,
                    3 => self.offered,
                    4 | 5 => self.offered & input.u64(),
                    6 => self.offered | 1 << (input.u8() % 64),
                    _ => input.u64(),
                };
                self.set_features(value, flags(input));
            }
            op::SET_PROTOCOL_FEATURES => {
                let value = match input.u8() % 8 {
                    0..=3 => self.offered_protocol,
                    4 | 5 => self.offered_protocol & input.u64(),
                    // What `vhost` acts on even when the backend refuses it.
                    6 => self.offered_protocol | 1 << (input.u8() % 24),
                    _ => input.u64(),
                };
                let flags = flags(input);
                self.send(
                    code::SET_PROTOCOL_FEATURES,
                    flags,
                    &value.to_ne_bytes(),
                    &[],
                );
            }
            op::SET_MEM_TABLE => self.set_mem_table(input),
            op::ADD_MEM_REG => self.add_mem_reg(input),
            op::REM_MEM_REG => self.rem_mem_reg(input),
            op::VRING_STATE => self.vring_state(input),
            op::SET_VRING_ADDR => {
                let index = self.vring_index(input);
                self.set_vring_addr(index, input);
            }
            op::VRING_FD => {
                let code = [
                    code::SET_VRING_KICK,
                    code::SET_VRING_CALL,
                    code::SET_VRING_ERR,
                ][usize::from(input.u8() % 3)];
                let index = self.vring_index(input);
                self.vring_fd(code, index, input);
            }
            op::SET_LOG_BASE => self.set_log_base(input),
            op::CONFIG => self.config(input),
            op::OFFER => self.offer(input),
            op::KICK => {
                let pick = usize::from(input.u8());
                let value = match input.u8() % 8 {
                    0 => input.u64(),
                    _ => 1,
                };
                let event = match (self.kicks.len(), self.events.len()) {
                    (0, 0) => return,
                    (0, n) => pick % n,
                    (n, _) => self.kicks[pick % n],
                };
                trace!(
                    "   kick eventfd {} with {value:#x}",
                    self.events[event].as_raw_fd()
                );
                let _ = (&self.events[event]).write(&value.to_ne_bytes());
            }
            op::RESIZE => self.resize(input),
            op::UNSUPPORTED => self.unsupported(input),
            op::SYNC => self.sync(),
            op::PAUSE => self.pause(),
            op::START_RING => {
                let index = self.vring_index(input);
                let size = match input.u8() % 8 {
                    0 => Self::queue_size(input),
                    _ => 16,
                };
                let base = match input.u8() % 8 {
                    0 => u32::from(input.u16()),
                    _ => 0,
                };
                let rings = self.layout(size as u16, input);
                self.start_ring(index, size, base, rings);
            }
            _ => {
                // POKE
                let memfd = self.some_memfd(input);
                let at = u64::from(input.u16()) % self.memfds[memfd].size.max(1);
                let len = usize::from(input.u8());
                let bytes = input.bytes(len);
                trace!("   memfd {memfd} at {at:#x} <- {bytes:02x?}");
                let _ = self.memfds[memfd].file.write_at(bytes, at);
            }
        }
    }

    fn raw(&mut self, input: &mut Input) {
        let code = u32::from(input.u8() % 51);
        let flags = flags(input);
        let len = match input.u8() % 8 {
            0..=5 => usize::from(input.u8() % 48),
            6 => usize::from(input.u16() % 0x1100),
            _ => 0,
        };
        let body = input.bytes(len).to_vec();
        let size = match input.u8() % 8 {
            0 => u32::from(input.u16() % 0x1100),
            _ => body.len() as u32,
        };
        let fds = self.some_fds(input);
        self.send_sized(code, flags, size, &body, &fds);
    }

    fn set_features(&mut self, value: u64, flags: u32) {
        self.acked = value;
        self.send(code::SET_FEATURES, flags, &value.to_ne_bytes(), &[]);
    }

    /// A region after `guest` and `user` (which move past it), on a memfd new or old,
    /// mostly inside it; now and then with a hostile field. Its descriptor too.
    fn region(&mut self, input: &mut Input, guest: &mut u64, user: &mut u64) -> (Region, RawFd) {
        let page = self.page;
        let memfd = match input.u8() % 4 {
            0 => self.some_memfd(input),
            _ => self.new_memfd(input),
        };
        let file_pages = self.memfds[memfd].size / page;
        let offset_pages = match input.u8() % 4 {
            0 | 1 => 0,
            2 => u64::from(input.u8()) % file_pages.max(1),
            _ => u64::from(input.u8() % 20),
        };
        let room = file_pages.saturating_sub(offset_pages).max(1);
        let size_pages = match input.u8() % 4 {
            0 | 1 => room,
            2 => 1 + u64::from(input.u8() % 20),
            _ => 1 + u64::from(input.u8()) % room,
        };
        let mut r = Region {
            guest: *guest,
            size: size_pages * page,
            user: *user,
            offset: offset_pages * page,
            memfd: Some(memfd),
        };
        match input.u8() % 24 {
            0 => r.size = input.u64(),
            1 => r.offset = input.u64(),
            2 => r.guest = input.u64(),
            3 => r.user = input.u64(),
            // Overlaps with the region before, in guest or frontend address space.
            4 => r.guest = r.guest.saturating_sub(page),
            5 => r.user = r.user.saturating_sub(page),
            6 => r.size |= u64::from(input.u8()),
            7 => r.size = 0,
            _ => {}
        }
        let gap = u64::from(input.u8() % 4) * page;
        *guest = r.guest.wrapping_add(r.size).wrapping_add(gap);
        *user = r.user.wrapping_add(r.size).wrapping_add(gap);
        let fd = match input.u8() % 16 {
            0 => {
                r.memfd = None;
                let kind = input.u8();
                self.fd_of_kind(kind, input)
            }
            _ => self.memfds[memfd].file.as_raw_fd(),
        };
        (r, fd)
    }

    fn region_bytes(r: &Region) -> Vec<u8> {
        [r.guest, r.size, r.user, r.offset]
            .iter()
            .flat_map(|v| v.to_ne_bytes())
            .collect()
    }

    fn set_mem_table(&mut self, input: &mut Input) {
        let n = match input.u8() % 16 {
            0 => 0,
            1 => 33,
            2..=7 => 1,
            8..=12 => 2,
            _ => 3 + input.u8() % 3,
        };
        let (mut guest, mut user) = (0, USER_BASE);
        let mut regions = Vec::new();
        let mut fds = Vec::new();
        let mut body = Vec::new();
        body.extend(u32::from(n).to_ne_bytes());
        body.extend(0u32.to_ne_bytes());
        for _ in 0..n {
            let (r, fd) = self.region(input, &mut guest, &mut user);
            body.extend(Self::region_bytes(&r));
            regions.push(r);
            fds.push(fd);
        }
        match input.u8() % 16 {
            0 => {
                fds.pop();
            }
            1 => {
                let kind = input.u8();
                fds.push(self.fd_of_kind(kind, input));
            }
            _ => {}
        }
        let flags = flags(input);
        self.send(code::SET_MEM_TABLE, flags, &body, &fds);
        self.regions = regions;
    }

    /// A region after every one the frontend sent, for `ADD_MEM_REG`.
    fn next_region(&mut self, input: &mut Input) -> (Region, RawFd) {
        let (mut guest, mut user) = (0, USER_BASE);
        for r in &self.regions {
            guest = guest.max(r.guest.wrapping_add(r.size));
            user = user.max(r.user.wrapping_add(r.size));
        }
        self.region(input, &mut guest, &mut user)
    }

    fn single_region(&mut self, code: u32, r: &Region, fds: &[RawFd], input: &mut Input) {
        let mut body = 0u64.to_ne_bytes().to_vec();
        body.extend(Self::region_bytes(r));
        let flags = flags(input);
        self.send(code, flags, &body, fds);
    }

    fn add_mem_reg(&mut self, input: &mut Input) {
        let (r, fd) = self.next_region(input);
        let mut fds = vec![fd];
        match input.u8() % 16 {
            0 => fds.clear(),
            1 => fds.push(fd),
            _ => {}
        }
        self.single_region(code::ADD_MEM_REG, &r, &fds, input);
        self.regions.push(r);
    }

    fn rem_mem_reg(&mut self, input: &mut Input) {
        let pick = usize::from(input.u8());
        let r = match (self.regions.len(), input.u8() % 8) {
            (0, _) | (_, 0) => {
                let (r, _) = self.next_region(input);
                r
            }
            (n, 1) => {
                // A region sent, with another size.
                let mut r = self.regions[pick % n];
                r.size = r.size.wrapping_add(self.page);
                r
            }
            (n, _) => self.regions.remove(pick % n),
        };
        let fds = match input.u8() % 8 {
            0 => {
                let kind = input.u8();
                vec![self.fd_of_kind(kind, input)]
            }
            _ => Vec::new(),
        };
        self.single_region(code::REM_MEM_REG, &r, &fds, input);
    }

    fn vring_state(&mut self, input: &mut Input) {
        let index = self.vring_index(input);
        let (code, num) = match input.u8() % 4 {
            0 => {
                let num = Self::queue_size(input);
                if let Some(ring) = self.ring_mut(index) {
                    ring.size = num as u16;
                }
                (code::SET_VRING_NUM, num)
            }
            1 => {
                let base = match input.u8() % 8 {
                    0 => 0xffff,
                    1 => 0x1_0000,
                    2 => input.u32(),
                    _ => u32::from(input.u8() % 16),
                };
                if let Some(ring) = self.ring_mut(index) {
                    ring.avail_idx = base as u16;
                }
                (code::SET_VRING_BASE, base)
            }
            2 => (code::GET_VRING_BASE, u32::from(input.u8())),
            _ => {
                let enable = match input.u8() % 8 {
                    0 => 2,
                    1 => 0,
                    _ => 1,
                };
                (code::SET_VRING_ENABLE, enable)
            }
        };
        let mut body = index.to_ne_bytes().to_vec();
        body.extend(num.to_ne_bytes());
        let flags = flags(input);
        self.send(code, flags, &body, &[]);
    }

    /// The rings of a vring of `size` entries laid out in a region from a page of it (or
    /// where no region is): descriptor table, available ring, used ring (4-aligned).
    fn layout(&self, size: u16, input: &mut Input) -> (u64, u64, u64) {
        let pick = usize::from(input.u8());
        let page_pick = u64::from(input.u8());
        let base = match self.regions.len() {
            0 => USER_BASE,
            n => {
                let r = self.regions[pick % n];
                r.user
                    .wrapping_add(page_pick % (r.size / self.page).max(1) * self.page)
            }
        };
        let size = u64::from(size);
        let desc = base;
        let avail = desc.wrapping_add(16 * size);
        let used = avail.wrapping_add(6 + 2 * size + 3) & !3;
        (desc, avail, used)
    }

    fn set_vring_addr(&mut self, index: u32, input: &mut Input) {
        let size = self.ring_mut(index).map_or(16, |r| r.size);
        let (mut desc, mut avail, mut used) = self.layout(size, input);
        let mut addr_flags = match input.u8() % 4 {
            0 => 1, // VHOST_VRING_F_LOG
            _ => 0,
        };
        match input.u8() % 16 {
            0 => desc = input.u64() & !0xf,
            1 => avail = input.u64() & !1,
            2 => used = input.u64() & !3,
            3 => desc = input.u64(),
            4 => addr_flags = input.u32(),
            _ => {}
        }
        let flags = flags(input);
        self.send_vring_addr(index, addr_flags, (desc, avail, used), flags);
    }

    /// `SET_VRING_ADDR` of `rings` (descriptor table, available ring, used ring); the log
    /// address is the used ring's guest address, where the frontend knows it.
    fn send_vring_addr(&mut self, index: u32, addr_flags: u32, rings: (u64, u64, u64), flags: u32) {
        let (desc, avail, used) = rings;
        let log = self
            .regions
            .iter()
            .find(|r| used.wrapping_sub(r.user) < r.size)
            .map_or(used, |r| r.guest.wrapping_add(used - r.user));
        if let Some(ring) = self.ring_mut(index) {
            ring.desc = desc;
            ring.avail = avail;
            ring.used = used;
            ring.next_desc = 0;
        }
        let mut body = index.to_ne_bytes().to_vec();
        body.extend(addr_flags.to_ne_bytes());
        for v in [desc, used, avail, log] {
            body.extend(v.to_ne_bytes());
        }
        self.send(code::SET_VRING_ADDR, flags, &body, &[]);
    }

    fn vring_fd(&mut self, code: u32, index: u32, input: &mut Input) {
        let mut value = u64::from(index);
        let mut fds = Vec::new();
        match input.u8() % 16 {
            0..=8 => fds.push(self.new_eventfd(0)),
            9 | 10 => {
                let kind = 2; // an eventfd made before
                fds.push(self.fd_of_kind(kind, input));
            }
            11 => fds.push(self.new_eventfd(libc::EFD_SEMAPHORE)),
            12 => {
                let kind = 3 + input.u8() % 7; // anything but an eventfd
                fds.push(self.fd_of_kind(kind, input));
            }
            13 => value |= NO_FD,
            14 => {}
            _ => {
                value |= NO_FD;
                fds.push(self.new_eventfd(0));
            }
        }
        if input.u8().is_multiple_of(16) {
            value |= u64::from(input.u16()) << 16;
        }
        if let Some(&fd) = fds.first() {
            if let Some(i) = self.events.iter().position(|e| e.as_raw_fd() == fd) {
                match code {
                    code::SET_VRING_KICK => self.kicks.push(i),
                    code::SET_VRING_CALL => self.calls.push(i),
                    _ => {}
                }
            }
        }
        let flags = flags(input);
        self.send(code, flags, &value.to_ne_bytes(), &fds);
    }

    fn set_log_base(&mut self, input: &mut Input) {
        let memfd = match input.u8() % 4 {
            0 => self.some_memfd(input),
            _ => self.new_memfd(input),
        };
        let file_size = self.memfds[memfd].size.max(1);
        let (size, offset) = match input.u8() % 8 {
            0 => (0, 0),
            1 => (file_size + self.page, 0),
            2 => (self.page, file_size),
            3 => (input.u64(), input.u64()),
            4 => (
                1 + u64::from(input.u16()) % file_size,
                u64::from(input.u8()),
            ),
            _ => (1 + u64::from(input.u16()) % file_size, 0),
        };
        let fds = match input.u8() % 16 {
            0 => Vec::new(),
            1 => {
                let kind = input.u8();
                vec![self.fd_of_kind(kind, input)]
            }
            _ => vec![self.memfds[memfd].file.as_raw_fd()],
        };
        let mut body = size.to_ne_bytes().to_vec();
        body.extend(offset.to_ne_bytes());
        let flags = flags(input);
        self.send(code::SET_LOG_BASE, flags, &body, &fds);
    }

    fn config(&mut self, input: &mut Input) {
        let code = match input.u8() % 4 {
            0 => code::SET_CONFIG,
            _ => code::GET_CONFIG,
        };
        let offset = match input.u8() % 8 {
            0 => input.u32(),
            1 => u32::from(input.u16() % 0x1000),
            _ => u32::from(input.u8() % 72),
        };
        let size = match input.u8() % 8 {
            0 => u32::from(input.u16() % 0x1000),
            1 => 0,
            _ => 1 + u32::from(input.u8() % 64),
        };
        let config_flags = match input.u8() % 8 {
            0 => input.u32(),
            1 => 2, // LIVE_MIGRATION
            2 => 1, // WRITABLE
            _ => 0,
        };
        let payload = match input.u8() % 8 {
            0 => size.wrapping_add(1),
            _ => size,
        };
        let mut body = offset.to_ne_bytes().to_vec();
        body.extend(size.to_ne_bytes());
        body.extend(config_flags.to_ne_bytes());
        // The payload: what SET_CONFIG would write (zeros past the input's end); GET_CONFIG's
        // is only its size.
        let payload = (payload as usize).min(MAX_MSG_SIZE as usize);
        if code == code::SET_CONFIG {
            body.extend(input.bytes(payload));
        }
        body.resize(12 + payload, 0);
        let flags = flags(input);
        self.send(code, flags, &body, &[]);
    }

    /// Chains on a vring, written where the frontend put its rings: a request header, data
    /// buffers and a status byte each (now and then in an indirect table, or with any
    /// fields at all), then the available ring's entries and index.
    fn offer(&mut self, input: &mut Input) {
        let index = usize::from(input.u8()) % self.rings.len();
        let mut ring = self.rings[index];
        let size = ring.size;
        if size == 0 {
            return;
        }
        for _ in 0..1 + input.u8() % 4 {
            let head = ring.next_desc % size;
            let count = 1 + u16::from(input.u8() % 4);
            // Table indices in u32: `head + j + 1` may pass u16 for a ring of 65535.
            let (head32, size32) = (u32::from(head), u32::from(size));
            let request = match input.u8() % 5 {
                0 => BLK_IN,
                1 => BLK_OUT,
                2 => BLK_FLUSH,
                3 => BLK_GET_ID,
                _ => input.u32(),
            };
            let indirect = input.u8().is_multiple_of(8);
            let table = if indirect { self.guest_addr(input) } else { 0 };
            for j in 0..count {
                let last = j + 1 == count;
                let writable = last || matches!(request, BLK_IN | BLK_GET_ID);
                let addr = self.guest_addr(input);
                let len = match (j, last) {
                    (0, _) => 16,
                    (_, true) => 1,
                    _ => 512 * (1 + u32::from(input.u8() % 8)),
                };
                let mut flags = if writable && j > 0 { DESC_WRITE } else { 0 };
                let j32 = u32::from(j);
                let at = if indirect {
                    j32
                } else {
                    (head32 + j32) % size32
                };
                let mut next = if indirect {
                    j + 1
                } else {
                    ((head32 + j32 + 1) % size32) as u16
                };
                if !last {
                    flags |= DESC_NEXT;
                }
                let (addr, len) = match input.u8() % 16 {
                    0 => {
                        flags = input.u16();
                        next = input.u16();
                        (input.u64(), input.u32())
                    }
                    1 => (addr, input.u32()),
                    _ => (addr, len),
                };
                let mut desc = addr.to_le_bytes().to_vec();
                desc.extend(len.to_le_bytes());
                desc.extend(flags.to_le_bytes());
                desc.extend(next.to_le_bytes());
                if indirect {
                    self.write_mem(table.wrapping_add(16 * u64::from(at)), &desc, false);
                } else {
                    self.write_mem(ring.desc.wrapping_add(16 * u64::from(at)), &desc, true);
                }
                if j == 0 {
                    let sector = match input.u8() % 6 {
                        0 => 0,
                        1 => u64::from(input.u8()) % DISK_SECTORS,
                        2 => DISK_SECTORS - 1,
                        3 => DISK_SECTORS,
                        4 => u64::MAX - u64::from(input.u8()),
                        _ => input.u64(),
                    };
                    let mut header = request.to_le_bytes().to_vec();
                    header.extend(0u32.to_le_bytes());
                    header.extend(sector.to_le_bytes());
                    self.write_mem(addr, &header, false);
                }
            }
            if indirect {
                let mut desc = table.to_le_bytes().to_vec();
                desc.extend((16 * u32::from(count)).to_le_bytes());
                desc.extend(DESC_INDIRECT.to_le_bytes());
                desc.extend(0u16.to_le_bytes());
                self.write_mem(ring.desc.wrapping_add(16 * u64::from(head)), &desc, true);
                ring.next_desc = ring.next_desc.wrapping_add(1);
            } else {
                ring.next_desc = ring.next_desc.wrapping_add(count);
            }
            let slot = u64::from(ring.avail_idx % size);
            self.write_mem(
                ring.avail.wrapping_add(4 + 2 * slot),
                &head.to_le_bytes(),
                true,
            );
            ring.avail_idx = ring.avail_idx.wrapping_add(1);
        }
        let avail_flags: u16 = input.u8().into();
        let avail_idx = match input.u8() % 16 {
            0 => input.u16(),
            _ => ring.avail_idx,
        };
        let mut avail = (avail_flags % 2).to_le_bytes().to_vec();
        avail.extend(avail_idx.to_le_bytes());
        self.write_mem(ring.avail, &avail, true);
        self.rings[index] = ring;
    }

    fn resize(&mut self, input: &mut Input) {
        let memfd = self.some_memfd(input);
        let file = &self.memfds[memfd].file;
        match input.u8() % 4 {
            0 | 1 => {
                let size = u64::from(input.u8() % 20) * self.page;
                let done = file.set_len(size);
                trace!("   memfd {memfd} truncated to {size:#x}: {done:?}");
                if done.is_ok() {
                    self.memfds[memfd].size = size;
                }
            }
            _ => {
                let seals = [
                    libc::F_SEAL_SHRINK,
                    libc::F_SEAL_GROW,
                    libc::F_SEAL_WRITE,
                    libc::F_SEAL_FUTURE_WRITE,
                    libc::F_SEAL_SEAL,
                ][usize::from(input.u8() % 5)];
                // SAFETY: F_ADD_SEALS only changes the seals of our own memfd.
                let done = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) };
                trace!("   memfd {memfd} sealed with {seals:#x}: {done}");
            }
        }
    }

    fn unsupported(&mut self, input: &mut Input) {
        let flags = flags(input);
        match input.u8() % 7 {
            0 | 1 => {
                let code =
                    [code::GET_INFLIGHT_FD, code::SET_INFLIGHT_FD][usize::from(input.u8() % 2)];
                let mut body = u64::from(input.u16()).to_ne_bytes().to_vec();
                body.extend(0u64.to_ne_bytes());
                body.extend((1 + u16::from(input.u8() % 4)).to_ne_bytes());
                body.extend(16u16.to_ne_bytes());
                body.extend(0u32.to_ne_bytes());
                let fds = if code == code::SET_INFLIGHT_FD {
                    let i = self.some_memfd(input);
                    vec![self.memfds[i].file.as_raw_fd()]
                } else {
                    Vec::new()
                };
                self.send(code, flags, &body, &fds);
            }
            2 | 3 => {
                let code =
                    [code::SET_BACKEND_REQ_FD, code::GPU_SET_SOCKET][usize::from(input.u8() % 2)];
                let kind = match input.u8() % 4 {
                    0 => input.u8(),
                    _ => 7, // a socket
                };
                let fd = self.fd_of_kind(kind, input);
                self.send(code, flags, &[], &[fd]);
            }
            4 => {
                let mut body = u32::from(input.u8() % 3).to_ne_bytes().to_vec();
                body.extend(u32::from(input.u8() % 2).to_ne_bytes());
                let kind = 5 + input.u8() % 2; // a pipe
                let fd = self.fd_of_kind(kind, input);
                self.send(code::SET_DEVICE_STATE_FD, flags, &body, &[fd]);
            }
            5 => {
                let uuid = input.bytes(16).to_vec();
                let mut body = uuid;
                body.resize(16, 0);
                self.send(code::GET_SHARED_OBJECT, flags, &body, &[]);
            }
            _ => {
                let fd = self.fd_of_kind(0, input);
                self.send(code::SET_LOG_FD, flags, &[], &[fd]);
            }
        }
    }

    /// Gives the vrings' threads a moment: waits up to a few milliseconds for a call eventfd,
    /// and empties them.
    fn pause(&mut self) {
        let mut pfds: Vec<libc::pollfd> = self
            .calls
            .iter()
            .map(|&i| libc::pollfd {
                fd: self.events[i].as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        if pfds.is_empty() {
            std::thread::sleep(Duration::from_millis(1));
            return;
        }
        // SAFETY: `pfds` lives across the call and holds `len` entries.
        unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, 5) };
        for &i in &self.calls {
            let mut counter = [0u8; 8];
            let _ = std::io::Read::read(&mut &self.events[i], &mut counter);
        }
        if tracing() {
            for (i, ring) in self.rings.iter().enumerate() {
                let used = ring.used.wrapping_add(2);
                let mut idx = [0u8; 2];
                if let Some((memfd, at)) = self.locate(used, 2, true) {
                    let _ = self.memfds[memfd].file.read_at(&mut idx, at);
                    trace!("   vring {i}: used index {}", u16::from_le_bytes(idx));
                }
            }
        }
    }

    /// A vring of `size` entries started from `base` with its rings at `rings`, as a frontend
    /// does it, every message asking for an ack.
    fn start_ring(&mut self, index: u32, size: u32, base: u32, rings: (u64, u64, u64)) {
        let flags = VERSION | NEED_REPLY;
        let state = |num: u32| {
            let mut body = index.to_ne_bytes().to_vec();
            body.extend(num.to_ne_bytes());
            body
        };
        self.send(code::SET_VRING_NUM, flags, &state(size), &[]);
        if let Some(ring) = self.ring_mut(index) {
            ring.size = size as u16;
        }
        self.send_vring_addr(index, 0, rings, flags);
        self.send(code::SET_VRING_BASE, flags, &state(base), &[]);
        if let Some(ring) = self.ring_mut(index) {
            ring.avail_idx = base as u16;
        }
        let call = self.new_eventfd(0);
        self.calls.push(self.events.len() - 1);
        let value = u64::from(index).to_ne_bytes();
        self.send(code::SET_VRING_CALL, flags, &value, &[call]);
        let kick = self.new_eventfd(0);
        self.kicks.push(self.events.len() - 1);
        self.send(code::SET_VRING_KICK, flags, &value, &[kick]);
        if self.acked & PROTOCOL_FEATURES != 0 {
            self.send(code::SET_VRING_ENABLE, flags, &state(1), &[]);
        }
    }

    /// The preamble of byte 0.
    fn setup(&mut self, bits: u8) {
        let flags = VERSION | NEED_REPLY;
        let log = bits & setup::LOG != 0;
        if bits & setup::FEATURES != 0 {
            self.send(code::GET_FEATURES, flags, &[], &[]);
            let features = if log {
                self.offered
            } else {
                self.offered & !LOG_ALL
            };
            self.set_features(features, flags);
        }
        if bits & setup::PROTOCOL != 0 {
            self.send(code::GET_PROTOCOL_FEATURES, flags, &[], &[]);
            let features = self.offered_protocol.to_ne_bytes();
            self.send(code::SET_PROTOCOL_FEATURES, flags, &features, &[]);
        }
        if bits & setup::TABLE != 0 {
            let size = 16 * self.page;
            self.memfds.push(Memfd {
                file: memfd(size, true),
                size,
            });
            let r = Region {
                guest: 0,
                size,
                user: USER_BASE,
                offset: 0,
                memfd: Some(self.memfds.len() - 1),
            };
            let mut body = 1u32.to_ne_bytes().to_vec();
            body.extend(0u32.to_ne_bytes());
            body.extend(Self::region_bytes(&r));
            let fd = self.memfds[self.memfds.len() - 1].file.as_raw_fd();
            self.send(code::SET_MEM_TABLE, flags, &body, &[fd]);
            self.regions = vec![r];
        }
        if log && bits & setup::PROTOCOL != 0 {
            self.memfds.push(Memfd {
                file: memfd(self.page, true),
                size: self.page,
            });
            let fd = self.memfds[self.memfds.len() - 1].file.as_raw_fd();
            let mut body = self.page.to_ne_bytes().to_vec();
            body.extend(0u64.to_ne_bytes());
            self.send(code::SET_LOG_BASE, flags, &body, &[fd]);
        }
        if bits & setup::RING != 0 {
            // At the first page of the first region.
            let rings = self.layout(16, &mut Input::new(&[]));
            self.start_ring(0, 16, 0, rings);
        }
    }
}

/// What descriptor `fd` is, for the trace.
fn describe(fd: RawFd) -> String {
    std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .map_or_else(|e| e.to_string(), |l| l.display().to_string())
}

/// Header flags: version 1, mostly, with `NEED_REPLY` often; now and then others.
fn flags(input: &mut Input) -> u32 {
    match input.u8() % 16 {
        0..=7 => VERSION,
        8..=13 => VERSION | NEED_REPLY,
        14 => [
            0,
            2,
            3,
            VERSION | REPLY,
            VERSION | 0x10,
            VERSION | NEED_REPLY | REPLY,
        ][usize::from(input.u8() % 6)],
        _ => input.u32(),
    }
}

/// The process's descriptors and mappings.
struct Snapshot {
    fds: Vec<String>,
    maps: Vec<String>,
}

impl Snapshot {
    fn take() -> Snapshot {
        let fds = std::fs::read_dir("/proc/self/fd")
            .expect("/proc/self/fd")
            .filter_map(|e| {
                let e = e.ok()?;
                let link = std::fs::read_link(e.path()).unwrap_or_default();
                Some(format!(
                    "{} -> {}",
                    e.file_name().to_string_lossy(),
                    link.display()
                ))
            })
            .collect();
        let maps = std::fs::read_to_string("/proc/self/maps")
            .expect("/proc/self/maps")
            .lines()
            .map(String::from)
            .collect();
        Snapshot { fds, maps }
    }

    /// Panics, naming what changed, unless `self` (after) counts as many of each as `before`
    /// (the entries listed are those of one snapshot that the other lacks, at most 16).
    fn check_against(&self, before: &Snapshot) {
        let new = |after: &[String], before: &[String]| -> Vec<String> {
            after
                .iter()
                .filter(|l| !before.contains(l))
                .take(16)
                .cloned()
                .collect()
        };
        let mut changed = Vec::new();
        for (what, after, before) in [
            ("descriptors", &self.fds, &before.fds),
            ("mappings", &self.maps, &before.maps),
        ] {
            if after.len() != before.len() {
                changed.push(format!(
                    "{what}: {} before, {} after; new: {:#?}; gone: {:#?}",
                    before.len(),
                    after.len(),
                    new(after, before),
                    new(before, after)
                ));
            }
        }
        assert!(changed.is_empty(), "{}", changed.join("\n"));
    }
}

/// Threads the warm-up runs at once: at least as many as an input runs (the connection's,
/// one per queue, the harness's).
const WARM_THREADS: usize = 8;

/// What an input leaves behind that the next one reuses, made before anything is counted:
/// the panic hook, thread stacks that glibc caches, malloc arenas of threads, and whatever
/// the crates set up on first use (the [`seeds`], which start rings and serve chains).
fn warm_up() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            previous(info);
        }));
        let barrier = Arc::new(Barrier::new(WARM_THREADS));
        let threads: Vec<_> = (0..WARM_THREADS)
            .map(|_| {
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    let v = vec![0u8; 4096];
                    barrier.wait();
                    drop(v);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        for input in seeds() {
            exchange(&input);
        }
    });
}

/// Inputs that [`run`] reads as a frontend that negotiates everything, maps a
/// table and starts vring 0 (the preamble), then has chains served: reads, writes, GET_ID,
/// with a stop (GET_VRING_BASE) and GET_CONFIG between them; one that changes the memory
/// under the started ring; one with two queues, the dirty log on, and vring 1 started too.
pub fn seeds() -> Vec<Vec<u8>> {
    let all = setup::FEATURES | setup::PROTOCOL | setup::TABLE | setup::RING;
    // OFFER: one chain of three descriptors on `vring`, of request type pick `request`
    // (0 IN, 1 OUT, 2 FLUSH, 3 GET_ID), not indirect. Each address is pick 1 (region 0) at
    // the u16 after it; a hostile-field byte of 2 is none. The header's sector is pick 1
    // (a small one: 3); the data buffer is 512 bytes (byte 0).
    let offer = |vring: u8, request: u8| {
        vec![
            op::OFFER,
            vring,
            0,
            2,
            request,
            1, // vring, 1 chain, 3 descriptors, type, direct
            1,
            0x00,
            0x40,
            2,
            1,
            3, // header at guest 0x4000, sector 3
            1,
            0x00,
            0x50,
            0,
            2, // data at 0x5000, 512 bytes
            1,
            0x00,
            0x60,
            2, // status at 0x6000
            0,
            1, // available ring flags 0, its index as written
        ]
    };
    let kick = |which: u8| [op::KICK, which, 1, op::PAUSE];
    let mut serve = vec![all];
    serve.extend(offer(0, 0));
    serve.extend(kick(0));
    serve.push(op::SYNC);
    serve.extend(offer(0, 1));
    serve.extend(kick(0));
    serve.extend(offer(0, 3));
    serve.extend(kick(0));
    // GET_VRING_BASE of vring 0; GET_CONFIG of 40 bytes at 0; both wanting a reply.
    serve.extend([op::VRING_STATE, 2, 0, 2, 0, 8]);
    serve.extend([op::CONFIG, 1, 2, 0, 2, 39, 3, 1, 8]);
    serve.push(op::SYNC);

    let mut move_memory = vec![all];
    move_memory.extend(offer(0, 0));
    move_memory.extend(kick(0));
    // ADD_MEM_REG of a new sealable 4-page memfd after region 0; then REM_MEM_REG of
    // region 0, which holds the started ring.
    move_memory.extend([op::ADD_MEM_REG, 1, 3, 1, 0, 0, 9, 0, 2, 2, 8]);
    move_memory.extend([op::REM_MEM_REG, 0, 2, 1, 8]);
    move_memory.extend(offer(0, 0));
    move_memory.extend(kick(0));
    move_memory.push(op::SYNC);

    let mut log = vec![all | setup::LOG | 1 << setup::QUEUES_SHIFT];
    log.extend(offer(0, 0));
    log.extend(kick(0));
    // START_RING of vring 1: 16 entries, base 0, at page 1 of region 0.
    log.extend([op::START_RING, 2, 1, 1, 1, 0, 1]);
    log.extend(offer(1, 0));
    log.extend(kick(1));
    log.extend(offer(1, 2));
    log.extend(kick(1));
    log.push(op::SYNC);
    vec![serve, move_memory, log]
}

/// The message of a panic's payload.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(not a string)".into())
}

/// One connection: the backend served on a thread, the input's messages sent to it, then
/// the frontend hangs up and the backend must be done within [`JOIN_TIMEOUT`].
fn exchange(data: &[u8]) {
    let mut input = Input::new(data);
    let bits = input.u8();
    let queues = 1 + u16::from((bits >> setup::QUEUES_SHIFT) & setup::QUEUES_MASK);
    let read_only = bits & setup::READ_ONLY != 0;
    let disk = SharedMemory::new("vhost-user-fuzz-disk", DISK_SECTORS * 512).expect("disk");
    let disk =
        BlockDisk::new(File::from(SafeDescriptor::from(disk)), read_only, "fuzz").expect("disk");
    let backend = Arc::new(Mutex::new(BlockBackend::new(disk, queues)));
    let (ours, theirs) = UnixStream::pair().expect("socket pair");
    let mut frontend = Frontend::new(ours, &backend.lock().unwrap(), queues);
    let (done, ended) = mpsc::channel();
    let served = backend.clone();
    let thread = std::thread::Builder::new()
        .name("vhost-user-fuzz-connection".into())
        .spawn(move || {
            let end = serve_connection(theirs, served);
            let _ = done.send(end.refused);
        })
        .expect("the connection's thread");

    trace!("setup {bits:#04x}: {queues} queues");
    frontend.setup(bits);
    let mut ops = 0;
    while !input.is_empty() && ops < MAX_OPS && frontend.alive {
        ops += 1;
        let op = input.u8();
        trace!("op {}", op % op::OPS);
        frontend.step(op, &mut input);
    }

    let _ = frontend.sock.shutdown(Shutdown::Write);
    let deadline = Instant::now() + JOIN_TIMEOUT;
    loop {
        match ended.recv_timeout(Duration::from_millis(5)) {
            Ok(_) | Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {
                assert!(
                    Instant::now() < deadline,
                    "serve_connection did not return within {JOIN_TIMEOUT:?} of the frontend hanging up"
                );
                frontend.drain();
            }
        }
    }
    if let Err(payload) = thread.join() {
        panic!("serve_connection panicked: {}", panic_message(&*payload));
    }
    drop(frontend);
    drop(backend);
}

/// Runs the input. Panics if a promise is broken.
pub fn run(data: &[u8]) {
    warm_up();
    let before = Snapshot::take();
    let panics = PANICS.load(Ordering::SeqCst);
    exchange(data);
    assert_eq!(
        PANICS.load(Ordering::SeqCst),
        panics,
        "a thread panicked (see above)"
    );
    Snapshot::take().check_against(&before);
}
