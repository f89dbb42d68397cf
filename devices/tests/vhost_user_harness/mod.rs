// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! What the vhost-user-blk tests share: a disk file, guest memory on a memfd that the test
//! (playing the guest's driver) and the backend both map, and a connection that runs
//! `serve_connection` on a thread with rust-vmm's `Frontend` on the other end of a socket
//! pair. Every wait is bounded: a backend that does not answer fails the test, it never
//! hangs it.

// Each test binary uses part of this.
#![allow(dead_code)]

use std::cell::Cell;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use base::SharedMemory;
use devices::vhost_user::backend::{
    serve_connection, BlockBackend, Ended, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
    VIRTIO_RING_F_INDIRECT_DESC,
};
use devices::vhost_user::blk::{
    BlockDisk, VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_MQ, VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_SEG_MAX,
};
use devices::virtio::driver::{DriverBuffer, DriverQueue};
use vhost::vhost_user::message::{VhostUserHeaderFlag, VhostUserVringAddrFlags};
use vhost::vhost_user::{
    Frontend, VhostUserFrontend, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{GuestAddress, GuestMemory, MemoryRegion};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// The longest any single wait of a test may take.
pub const WAIT: Duration = Duration::from_secs(2);
/// Where the pretend frontend "mapped" guest memory in its own address space.
pub const FAKE_VA: u64 = 0x7f5a_0000_0000;
/// Guest memory of a test: 256 pages.
pub const MEM_SIZE: u64 = 1 << 20;
/// The queue size the tests use.
pub const QSIZE: u16 = 64;
/// The disk: 4 MiB.
pub const DISK_SIZE: u64 = 4 << 20;
/// Its sectors.
pub const SECTORS: u64 = DISK_SIZE / 512;
/// Below this the rings live (three pages a queue from 0x1000); buffers come after.
pub const HEAP: u64 = 0x1_0000;
/// What a status byte holds until the device writes it.
pub const SENTINEL: u8 = 0xa5;
/// GET_ID's answer is cut to 20 bytes.
pub const DISK_ID: &str = "vhost-user-blk-test-disk-id";
/// The protocol's page, for region sizes and the dirty log.
pub const PAGE: u64 = 0x1000;

pub const T_IN: u32 = 0;
pub const T_OUT: u32 = 1;
pub const T_FLUSH: u32 = 4;
pub const T_GET_ID: u32 = 8;
pub const S_OK: u8 = 0;
pub const S_IOERR: u8 = 1;
pub const S_UNSUPP: u8 = 2;

/// `VHOST_F_LOG_ALL`.
pub const LOG_ALL: u64 = 1 << 26;

/// Request codes, for messages the `Frontend` cannot be made to send.
pub mod code {
    pub const SET_MEM_TABLE: u32 = 5;
    pub const SET_LOG_BASE: u32 = 6;
    pub const SET_VRING_NUM: u32 = 8;
    pub const SET_VRING_BASE: u32 = 10;
    pub const GET_VRING_BASE: u32 = 11;
    pub const SET_VRING_KICK: u32 = 12;
    pub const SET_VRING_CALL: u32 = 13;
    pub const SET_VRING_ERR: u32 = 14;
    pub const GET_CONFIG: u32 = 24;
    pub const GET_INFLIGHT_FD: u32 = 31;
    pub const ADD_MEM_REG: u32 = 37;
    pub const REM_MEM_REG: u32 = 38;
}

/// The byte at `offset` of a fresh disk.
pub fn pattern(offset: u64) -> u8 {
    ((offset % 251) as u8) ^ ((offset / 512) as u8).rotate_left(3)
}

/// `len` bytes that differ from the disk's pattern everywhere, seeded by `seed`.
pub fn fill(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed) ^ 0x5a)
        .collect()
}

/// A disk file of [`DISK_SIZE`] bytes in the build's temporary directory, filled with
/// [`pattern`]; removed with its directory on drop.
pub struct Disk {
    dir: PathBuf,
    pub path: PathBuf,
}

impl Disk {
    pub fn new(test: &str) -> Disk {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("vhost-user-blk-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("disk.img");
        let bytes: Vec<u8> = (0..DISK_SIZE).map(pattern).collect();
        std::fs::write(&path, bytes).unwrap();
        Disk { dir, path }
    }

    /// The file's bytes, read back with std.
    pub fn contents(&self) -> Vec<u8> {
        std::fs::read(&self.path).unwrap()
    }

    /// `len` bytes of the file from `sector`.
    pub fn sectors(&self, sector: u64, len: usize) -> Vec<u8> {
        let all = self.contents();
        let at = (sector * 512) as usize;
        all[at..at + len].to_vec()
    }

    /// A device of `queues` queues on this disk.
    pub fn backend(&self, read_only: bool, queues: u16) -> Arc<Mutex<BlockBackend>> {
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(&self.path)
            .unwrap();
        let disk = BlockDisk::new(file, read_only, DISK_ID).unwrap();
        Arc::new(Mutex::new(BlockBackend::new(disk, queues)))
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One region of guest memory: a memfd that the test maps as the driver's `GuestMemory` and
/// hands to the backend, at guest address `gpa` and frontend address `va`; with a bump
/// allocator for buffers above [`HEAP`].
pub struct Guest {
    pub shm: Arc<SharedMemory>,
    pub mem: GuestMemory,
    pub gpa: u64,
    pub va: u64,
    next: Cell<u64>,
}

impl Guest {
    /// [`MEM_SIZE`] bytes at guest address 0, frontend address [`FAKE_VA`].
    pub fn new(name: &str) -> Guest {
        Guest::at(name, 0, FAKE_VA, MEM_SIZE)
    }

    pub fn at(name: &str, gpa: u64, va: u64, size: u64) -> Guest {
        let shm = Arc::new(SharedMemory::new(name, size).unwrap());
        let region = MemoryRegion::new_from_shm(size, GuestAddress(gpa), 0, shm.clone()).unwrap();
        let mem = GuestMemory::from_regions(vec![region]).unwrap();
        Guest {
            shm,
            mem,
            gpa,
            va,
            next: Cell::new(gpa + HEAP),
        }
    }

    pub fn fd(&self) -> RawFd {
        self.shm.as_fd().as_raw_fd()
    }

    /// The region as `SET_MEM_TABLE` describes it.
    pub fn region(&self) -> VhostUserMemoryRegionInfo {
        VhostUserMemoryRegionInfo {
            guest_phys_addr: self.gpa,
            memory_size: self.shm.size(),
            userspace_addr: self.va,
            mmap_offset: 0,
            mmap_handle: self.fd(),
        }
    }

    /// The frontend address of guest address `gpa`.
    pub fn va_of(&self, gpa: GuestAddress) -> u64 {
        self.va + (gpa.0 - self.gpa)
    }

    /// `len` bytes, 16-byte aligned.
    pub fn alloc(&self, len: u64) -> GuestAddress {
        let at = self.next.get().next_multiple_of(16);
        assert!(
            at + len <= self.gpa + self.shm.size(),
            "test guest memory full"
        );
        self.next.set(at + len);
        GuestAddress(at)
    }

    /// `pages` whole protocol pages of their own.
    pub fn alloc_pages(&self, pages: u64) -> GuestAddress {
        let at = self.next.get().next_multiple_of(PAGE);
        self.next.set(at);
        self.alloc(pages * PAGE)
    }

    pub fn write(&self, at: GuestAddress, bytes: &[u8]) {
        self.mem.write_all_at_addr(bytes, at).unwrap();
    }

    pub fn read(&self, at: GuestAddress, len: usize) -> Vec<u8> {
        let mut buf = vec![0; len];
        self.mem.read_exact_at_addr(&mut buf, at).unwrap();
        buf
    }

    pub fn byte(&self, at: GuestAddress) -> u8 {
        self.read(at, 1)[0]
    }

    /// A request header of type `t` for `sector`.
    pub fn header(&self, t: u32, sector: u64) -> GuestAddress {
        let at = self.alloc(16);
        let mut h = Vec::with_capacity(16);
        h.extend_from_slice(&t.to_le_bytes());
        h.extend_from_slice(&0u32.to_le_bytes());
        h.extend_from_slice(&sector.to_le_bytes());
        self.write(at, &h);
        at
    }

    /// A status byte holding [`SENTINEL`].
    pub fn status(&self) -> GuestAddress {
        let at = self.alloc(1);
        self.write(at, &[SENTINEL]);
        at
    }

    /// A buffer of `len` bytes holding `SENTINEL`s.
    pub fn buffer(&self, len: u32) -> GuestAddress {
        let at = self.alloc(u64::from(len));
        self.write(at, &vec![SENTINEL; len as usize]);
        at
    }

    /// A buffer holding `bytes`.
    pub fn data(&self, bytes: &[u8]) -> GuestAddress {
        let at = self.alloc(bytes.len() as u64);
        self.write(at, bytes);
        at
    }
}

/// Guest addresses of queue `index`'s descriptor table, available and used rings in `guest`.
pub fn ring_addrs(guest: &Guest, index: u16) -> (GuestAddress, GuestAddress, GuestAddress) {
    let base = guest.gpa + 0x1000 + 0x3000 * u64::from(index);
    assert!(
        base + 0x3000 <= guest.gpa + HEAP,
        "too many queues for the layout"
    );
    (
        GuestAddress(base),
        GuestAddress(base + 0x1000),
        GuestAddress(base + 0x2000),
    )
}

/// A vring as its driver sees it: the split ring in guest memory and the two eventfds.
pub struct Ring {
    pub index: u16,
    pub driver: DriverQueue,
    pub kick: EventFd,
    pub call: EventFd,
    /// Used elements taken so far.
    pub seen: u16,
}

/// A request made available on a ring.
#[derive(Clone, Debug)]
pub struct Request {
    pub head: u16,
    pub status: GuestAddress,
    /// The writable data buffers, before the status.
    pub data_in: Vec<(GuestAddress, u32)>,
}

impl Request {
    /// What the device wrote into the data buffers, in order.
    pub fn data(&self, guest: &Guest) -> Vec<u8> {
        let mut out = Vec::new();
        for &(at, len) in &self.data_in {
            out.extend(guest.read(at, len as usize));
        }
        out
    }
}

impl Ring {
    /// Makes `buffers` a chain and offers it (no kick).
    pub fn offer(&mut self, buffers: &[DriverBuffer]) -> u16 {
        let head = self.driver.add_chain(buffers).unwrap();
        self.driver.make_available(head).unwrap();
        head
    }

    /// A virtio-blk request of type `t` at `sector`: a header, `out` as readable data
    /// buffers, `in_lens` writable data buffers, and the status byte; offered, not kicked.
    pub fn request(
        &mut self,
        guest: &Guest,
        t: u32,
        sector: u64,
        out: &[&[u8]],
        in_lens: &[u32],
    ) -> Request {
        let mut buffers = vec![DriverBuffer::readable(guest.header(t, sector), 16)];
        for bytes in out {
            buffers.push(DriverBuffer::readable(
                guest.data(bytes),
                bytes.len() as u32,
            ));
        }
        let mut data_in = Vec::new();
        for &len in in_lens {
            let at = guest.buffer(len);
            data_in.push((at, len));
            buffers.push(DriverBuffer::writable(at, len));
        }
        let status = guest.status();
        buffers.push(DriverBuffer::writable(status, 1));
        let head = self.offer(&buffers);
        Request {
            head,
            status,
            data_in,
        }
    }

    /// Notifies the device, asking for a used-buffer notification for what comes next.
    pub fn kick(&self) {
        self.driver.set_used_event(self.seen).unwrap();
        self.kick.write(1).unwrap();
    }

    /// Whether the call eventfd fires within `timeout` (its counter is then reset).
    pub fn wait_call(&self, timeout: Duration) -> bool {
        wait_readable(self.call.as_raw_fd(), timeout) && self.call.read().is_ok()
    }

    fn take_used(&mut self, out: &mut Vec<(u32, u32)>) -> usize {
        let mut n = 0;
        while let Some(e) = self.driver.pop_used().unwrap() {
            out.push(e);
            self.seen = self.seen.wrapping_add(1);
            n += 1;
        }
        n
    }

    /// The next `n` used elements `(id, len)`, after at least one used-buffer notification;
    /// fails the test if they do not come within [`WAIT`].
    pub fn wait_used(&mut self, n: usize) -> Vec<(u32, u32)> {
        let deadline = Instant::now() + WAIT;
        let mut out = Vec::new();
        let mut called = false;
        while out.len() < n || !called {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                self.wait_call(left),
                "vring {}: no used-buffer notification within {WAIT:?} ({} of {n} used)",
                self.index,
                out.len()
            );
            called = true;
            self.take_used(&mut out);
            // As a driver does: re-arm, then look again for what came before the re-arm.
            self.driver.set_used_event(self.seen).unwrap();
            self.take_used(&mut out);
        }
        assert_eq!(out.len(), n, "vring {}: more used than offered", self.index);
        out
    }

    /// Kicks and waits for `reqs` to come back used, in order; their used lengths.
    pub fn complete(&mut self, reqs: &[&Request]) -> Vec<u32> {
        self.kick();
        let used = self.wait_used(reqs.len());
        reqs.iter()
            .zip(used)
            .map(|(r, (id, len))| {
                assert_eq!(id, u32::from(r.head), "used out of order");
                len
            })
            .collect()
    }

    /// Kicks with nothing offered, and returns once the ring's thread has taken the kick and
    /// finished the pass it makes: the kick's counter is drained (a bounded poll), and then a
    /// SET_VRING_ENABLE, which waits for the vring's lock that a pass holds, is answered.
    pub fn idle_pass(&self, frontend: &mut Frontend) {
        self.kick.write(1).unwrap();
        let deadline = Instant::now() + WAIT;
        while wait_readable(self.kick.as_raw_fd(), Duration::ZERO) {
            assert!(
                Instant::now() < deadline,
                "vring {}: its thread did not take the kick",
                self.index
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        frontend
            .set_vring_enable(usize::from(self.index), true)
            .unwrap();
    }

    /// Asserts that nothing comes back used within `timeout` of a kick.
    pub fn expect_nothing(&mut self, timeout: Duration) {
        self.kick();
        let called = self.wait_call(timeout);
        let mut out = Vec::new();
        self.take_used(&mut out);
        assert!(
            !called && out.is_empty(),
            "vring {}: served {out:?}",
            self.index
        );
    }
}

/// Polls `fd` for input for at most `timeout`.
pub fn wait_readable(fd: RawFd, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: poll reads and writes only the one pollfd we pass, which outlives the call.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n > 0 {
            return true;
        }
        if n == 0 {
            return false;
        }
        let e = std::io::Error::last_os_error();
        assert_eq!(e.kind(), std::io::ErrorKind::Interrupted, "poll: {e}");
    }
}

/// The virtio features a driver that knows everything the backend offers acks (without
/// `LOG_ALL`, which only migration sets).
pub fn driver_features(offered: u64) -> u64 {
    let blk = (1 << VIRTIO_BLK_F_SEG_MAX)
        | (1 << VIRTIO_BLK_F_BLK_SIZE)
        | (1 << VIRTIO_BLK_F_FLUSH)
        | (1 << VIRTIO_BLK_F_RO)
        | (1 << VIRTIO_BLK_F_MQ);
    (1 << VIRTIO_F_VERSION_1)
        | (1 << VIRTIO_RING_F_INDIRECT_DESC)
        | (1 << VIRTIO_RING_F_EVENT_IDX)
        | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
        | (offered & blk)
}

/// The protocol features the tests ack by default: all the backend offers.
pub fn protocol_features() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::REPLY_ACK
        | VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::CONFIG
        | VhostUserProtocolFeatures::LOG_SHMFD
        | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
        | VhostUserProtocolFeatures::RESET_DEVICE
}

/// The thread that runs `serve_connection`, and how it ended.
struct Server {
    ended: mpsc::Receiver<Ended>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// How the connection ended, if it does within `timeout`.
    fn ended(&mut self, timeout: Duration) -> Option<Ended> {
        let ended = self.ended.recv_timeout(timeout).ok()?;
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        Some(ended)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // The frontend's socket is closed by now (fields drop in order); a backend that does
        // not notice is left behind rather than hanging the test.
        if self.thread.is_some() && self.ended(WAIT).is_none() && !std::thread::panicking() {
            panic!("serve_connection did not return after the frontend closed its socket");
        }
    }
}

/// A frontend connected to the backend: `serve_connection` on a thread.
pub struct Conn {
    pub frontend: Frontend,
    /// Another handle on the frontend's socket, for messages built by hand.
    pub raw: UnixStream,
    pub backend: Arc<Mutex<BlockBackend>>,
    /// The features offered by `GET_FEATURES`.
    pub offered: u64,
    server: Server,
}

impl Conn {
    /// Connects; nothing is negotiated. `max_queues` is the frontend's own limit on indices.
    pub fn open(backend: &Arc<Mutex<BlockBackend>>, max_queues: u64) -> Conn {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let (tx, rx) = mpsc::channel();
        let served = backend.clone();
        let thread = std::thread::spawn(move || {
            let _ = tx.send(serve_connection(theirs, served));
        });
        let raw = ours.try_clone().unwrap();
        // Replies to hand-made messages are read here, with a bound.
        raw.set_read_timeout(Some(WAIT)).unwrap();
        Conn {
            frontend: Frontend::from_stream(ours, max_queues),
            raw,
            backend: backend.clone(),
            offered: 0,
            server: Server {
                ended: rx,
                thread: Some(thread),
            },
        }
    }

    /// Connects and negotiates as QEMU does: owner, features, protocol features with
    /// `REPLY_ACK` (every later request then asks for an answer), and then the driver's
    /// features `features(offered)`.
    pub fn negotiated(
        backend: &Arc<Mutex<BlockBackend>>,
        features: impl FnOnce(u64) -> u64,
    ) -> Conn {
        let mut conn = Conn::open(backend, 8);
        conn.frontend.set_owner().unwrap();
        conn.offered = conn.frontend.get_features().unwrap();
        let proto = conn.frontend.get_protocol_features().unwrap();
        assert!(proto.contains(protocol_features()), "offered {proto:?}");
        conn.frontend
            .set_protocol_features(protocol_features())
            .unwrap();
        conn.frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        conn.frontend.set_features(features(conn.offered)).unwrap();
        conn
    }

    /// [`negotiated`](Self::negotiated) with [`driver_features`].
    pub fn standard(backend: &Arc<Mutex<BlockBackend>>) -> Conn {
        Conn::negotiated(backend, driver_features)
    }

    /// Sends the memory table of `guests`.
    pub fn set_memory(&self, guests: &[&Guest]) {
        let regions: Vec<_> = guests.iter().map(|g| g.region()).collect();
        self.frontend.set_mem_table(&regions).unwrap();
    }

    /// The ring addresses of queue `index` in `guest` as `SET_VRING_ADDR` gives them (the
    /// frontend's addresses), logging the used ring at its guest address when `log`.
    pub fn vring_config(guest: &Guest, index: u16, log: bool) -> VringConfigData {
        let (desc, avail, used) = ring_addrs(guest, index);
        VringConfigData {
            queue_max_size: QSIZE,
            queue_size: QSIZE,
            flags: if log {
                VhostUserVringAddrFlags::VHOST_VRING_F_LOG.bits()
            } else {
                0
            },
            desc_table_addr: guest.va_of(desc),
            used_ring_addr: guest.va_of(used),
            avail_ring_addr: guest.va_of(avail),
            log_addr: log.then_some(used.0),
        }
    }

    /// Configures, starts and enables vring `index` with its rings in `guest`.
    pub fn start_ring(&mut self, guest: &Guest, index: u16, log: bool) -> Ring {
        let (desc, avail, used) = ring_addrs(guest, index);
        let driver = DriverQueue::new(&guest.mem, QSIZE, desc, avail, used).unwrap();
        let i = usize::from(index);
        let fe = &mut self.frontend;
        fe.set_vring_num(i, QSIZE).unwrap();
        fe.set_vring_addr(i, &Conn::vring_config(guest, index, log))
            .unwrap();
        fe.set_vring_base(i, 0).unwrap();
        let call = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        fe.set_vring_call(i, &call).unwrap();
        let kick = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        fe.set_vring_kick(i, &kick).unwrap();
        fe.set_vring_enable(i, true).unwrap();
        Ring {
            index,
            driver,
            kick,
            call,
            seen: 0,
        }
    }

    /// Runs `f` on the frontend on a thread of its own: the frontend waits without a bound
    /// for an answer the backend may never send, so a request that gets no answer within
    /// [`WAIT`] shuts the socket down (which ends the wait) and fails the test.
    pub fn bounded<T: Send>(&self, what: &str, f: impl FnOnce(&mut Frontend) -> T + Send) -> T {
        let mut fe = self.frontend.clone();
        std::thread::scope(|s| {
            let (tx, rx) = mpsc::channel();
            let worker = s.spawn(move || {
                let r = f(&mut fe);
                let _ = tx.send(());
                r
            });
            if rx.recv_timeout(WAIT).is_err() {
                let _ = self.raw.shutdown(Shutdown::Both);
                let _ = worker.join();
                panic!("{what}: the backend did not answer within {WAIT:?}");
            }
            worker.join().unwrap()
        })
    }

    /// Sends a message built by hand (`NEED_REPLY` set) with `fds` attached, and reads the
    /// answer's body; `Err` if none comes within [`WAIT`] or the backend hung up.
    pub fn raw_request(&self, code: u32, body: &[u8], fds: &[RawFd]) -> std::io::Result<Vec<u8>> {
        let mut msg = Vec::with_capacity(12 + body.len());
        msg.extend_from_slice(&code.to_le_bytes());
        let flags = 0x1 | VhostUserHeaderFlag::NEED_REPLY.bits();
        msg.extend_from_slice(&flags.to_le_bytes());
        msg.extend_from_slice(&(body.len() as u32).to_le_bytes());
        msg.extend_from_slice(body);
        if fds.is_empty() {
            (&self.raw).write_all(&msg)?;
        } else {
            let sent = self
                .raw
                .send_with_fds(&[&msg[..]], fds)
                .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?;
            assert_eq!(sent, msg.len(), "short send");
        }
        let mut hdr = [0u8; 12];
        (&self.raw).read_exact(&mut hdr)?;
        let reply_code = u32::from_le_bytes(hdr[0..4].try_into().unwrap());
        let reply_flags = u32::from_le_bytes(hdr[4..8].try_into().unwrap());
        let size = u32::from_le_bytes(hdr[8..12].try_into().unwrap());
        assert_eq!(reply_code, code, "reply to another request");
        assert_eq!(reply_flags & 0x7, 0x5, "not a version-1 reply");
        let mut reply = vec![0; size as usize];
        (&self.raw).read_exact(&mut reply)?;
        Ok(reply)
    }

    /// A hand-made request answered by an ack: `Ok(true)` for success, `Ok(false)` for a
    /// refusal.
    pub fn raw_ack(&self, code: u32, body: &[u8], fds: &[RawFd]) -> std::io::Result<bool> {
        let reply = self.raw_request(code, body, fds)?;
        assert_eq!(reply.len(), 8, "an ack is a u64");
        Ok(u64::from_le_bytes(reply.try_into().unwrap()) == 0)
    }

    /// How the connection ended, if it does within `timeout` (with the frontend still here:
    /// the backend hung up).
    pub fn ended(&mut self, timeout: Duration) -> Option<Ended> {
        self.server.ended(timeout)
    }

    /// Closes the frontend's socket (drops the `Frontend`) and waits for `serve_connection`
    /// to return.
    pub fn close(self) -> Ended {
        let Conn {
            frontend,
            raw,
            mut server,
            ..
        } = self;
        drop(frontend);
        drop(raw);
        server
            .ended(WAIT)
            .expect("serve_connection did not return after the frontend hung up")
    }
}

/// `VhostUserU64` of a vring descriptor message: the index, and bit 8 when no fd comes.
pub fn vring_fd_body(index: u8) -> Vec<u8> {
    u64::from(index).to_le_bytes().to_vec()
}

/// `VhostUserVringState`.
pub fn vring_state_body(index: u32, num: u32) -> Vec<u8> {
    let mut b = index.to_le_bytes().to_vec();
    b.extend_from_slice(&num.to_le_bytes());
    b
}

/// `VhostUserMemory` with its regions `(gpa, size, user address, mmap offset)`.
pub fn mem_table_body(regions: &[(u64, u64, u64, u64)]) -> Vec<u8> {
    let mut b = (regions.len() as u32).to_le_bytes().to_vec();
    b.extend_from_slice(&0u32.to_le_bytes());
    for &(gpa, size, va, off) in regions {
        for v in [gpa, size, va, off] {
            b.extend_from_slice(&v.to_le_bytes());
        }
    }
    b
}

/// `VhostUserSingleMemoryRegion` (`ADD_MEM_REG`, `REM_MEM_REG`).
pub fn single_region_body(gpa: u64, size: u64, va: u64, off: u64) -> Vec<u8> {
    let mut b = 0u64.to_le_bytes().to_vec();
    for v in [gpa, size, va, off] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b
}

/// Whether the error is the backend's refusal as the frontend sees it with `REPLY_ACK`.
pub fn is_nack<T: std::fmt::Debug>(r: &vhost::Result<T>) -> bool {
    matches!(
        r,
        Err(vhost::Error::VhostUserProtocol(
            vhost::vhost_user::Error::BackendInternalError
        ))
    )
}

/// Asserts that `r` is the backend's refusal.
#[track_caller]
pub fn assert_nack<T: std::fmt::Debug>(what: &str, r: vhost::Result<T>) {
    assert!(is_nack(&r), "{what}: expected a refusal, got {r:?}");
}

/// Entries of `/proc/self/fd`.
pub fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Lines of `/proc/self/maps`.
pub fn map_count() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .count()
}

/// The lines of `/proc/self/maps`.
pub fn maps() -> Vec<String> {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Asserts that the process has as many mappings as `before` (a [`maps`]), naming the ones
/// that differ.
#[track_caller]
pub fn assert_maps(before: &[String], extra: usize, what: &str) {
    let now = maps();
    if now.len() != before.len() + extra {
        let gone: Vec<_> = before.iter().filter(|l| !now.contains(l)).collect();
        let new: Vec<_> = now.iter().filter(|l| !before.contains(l)).collect();
        panic!(
            "{what}: {} mappings, expected {} + {extra}\nnew: {new:#?}\ngone: {gone:#?}",
            now.len(),
            before.len()
        );
    }
}

/// Lines of `/proc/self/maps` that map the memfd named `name`.
pub fn maps_of(name: &str) -> usize {
    let needle = format!("/memfd:{name} ");
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter(|l| format!("{l} ").contains(&needle))
        .count()
}

/// Runs the `#[ignore]`d test `name` of this binary alone in a child process (so that no
/// other test's descriptors, mappings or threads come and go while it counts them), and
/// asserts that it passed.
pub fn run_isolated(name: &str) {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            name,
            "--exact",
            "--ignored",
            "--test-threads=1",
            "--nocapture",
        ])
        .env(ISOLATED, "1")
        // One malloc arena: glibc otherwise maps a new one when threads contend, which a
        // count of mappings would take for a leak.
        .env("MALLOC_ARENA_MAX", "1")
        // And no cache of exited threads' stacks: a thread joined is unmapped.
        .env("GLIBC_TUNABLES", "glibc.pthread.stack_cache_size=0")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{name} failed in its own process:\n{stdout}\n{stderr}"
    );
}

const ISOLATED: &str = "VHOST_USER_BLK_TEST_ISOLATED";

/// Whether this process runs one test alone ([`run_isolated`]).
pub fn isolated() -> bool {
    std::env::var_os(ISOLATED).is_some()
}

/// A regular file (not a memfd) of `size` bytes in the build's temporary directory.
pub fn regular_file(name: &str, size: u64) -> File {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join(format!("vhost-user-blk-{name}-{}", std::process::id()));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    file.set_len(size).unwrap();
    std::fs::remove_file(&path).unwrap();
    file
}

/// A pipe's two ends.
pub fn pipe() -> (File, File) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array we pass.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both descriptors were just created and nobody else owns them.
    unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) }
}

/// A disk, its backend, guest memory, and a negotiated connection with vring 0 running.
pub struct Rig {
    pub disk: Disk,
    pub guest: Guest,
    pub conn: Conn,
    pub ring: Ring,
}

impl Rig {
    pub fn new(test: &str) -> Rig {
        Rig::with(test, false, 1)
    }

    pub fn with(test: &str, read_only: bool, queues: u16) -> Rig {
        let disk = Disk::new(test);
        let backend = disk.backend(read_only, queues);
        let guest = Guest::new(test);
        let mut conn = Conn::standard(&backend);
        conn.set_memory(&[&guest]);
        let ring = conn.start_ring(&guest, 0, false);
        Rig {
            disk,
            guest,
            conn,
            ring,
        }
    }

    /// An OUT of `data` (in segments of at most `seg` bytes) at `sector`: (used len, status).
    pub fn write(&mut self, sector: u64, data: &[u8], seg: usize) -> (u32, u8) {
        let segs: Vec<&[u8]> = data.chunks(seg).collect();
        let req = self.ring.request(&self.guest, T_OUT, sector, &segs, &[]);
        let len = self.ring.complete(&[&req])[0];
        (len, self.guest.byte(req.status))
    }

    /// An IN of `lens` bytes at `sector`: (used len, status, data).
    pub fn read(&mut self, sector: u64, lens: &[u32]) -> (u32, u8, Vec<u8>) {
        let req = self.ring.request(&self.guest, T_IN, sector, &[], lens);
        let len = self.ring.complete(&[&req])[0];
        (len, self.guest.byte(req.status), req.data(&self.guest))
    }

    /// Proves the device still serves correctly: an OUT of data seeded by `n` at a sector of
    /// its own, the file holding it, and an IN reading it back.
    pub fn check_serves(&mut self, n: u8) {
        let sector = 4000 + 8 * u64::from(n);
        let data = fill(n.wrapping_add(100), 4096);
        assert_eq!(self.write(sector, &data, 4096), (1, S_OK), "OUT {n}");
        assert_eq!(self.disk.sectors(sector, 4096), data, "OUT {n}: file");
        let (len, status, back) = self.read(sector, &[4096]);
        assert_eq!((len, status), (4097, S_OK), "IN {n}");
        assert_eq!(back, data, "IN {n}");
    }
}

/// The fresh disk's bytes.
pub fn fresh() -> Vec<u8> {
    (0..DISK_SIZE).map(pattern).collect()
}
