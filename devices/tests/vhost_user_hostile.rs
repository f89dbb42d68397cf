// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The vhost-user-blk backend against a hostile frontend: rust-vmm's `Frontend` (and messages
//! built by hand where it refuses to send them) asks for memory tables, rings, descriptors,
//! features and config the protocol forbids. Each is refused — with `REPLY_ACK` the frontend
//! gets an error — and the backend keeps serving a correct request afterwards, or it ends the
//! connection and serves the next one; it never panics or touches memory it must not. The
//! typed errors behind the refusals are checked on `MemoryTable` and `DirtyLog` directly.

mod vhost_user_harness;

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;
use std::time::Duration;

use base::{MemfdSeals, SharedMemory};
use devices::vhost_user::backend::{MAX_MEM_SLOTS, MAX_QUEUE_SIZE};
use devices::vhost_user::log::{DirtyLog, Error as LogError};
use devices::vhost_user::memory::{Error as MemError, MemoryTable, RegionDesc};
use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserInflight};
use vhost::vhost_user::{VhostUserFrontend, VhostUserProtocolFeatures};
use vhost::{VhostBackend, VhostUserDirtyLogRegion, VhostUserMemoryRegionInfo, VringConfigData};
use vhost_user_harness::*;
use vmm_sys_util::eventfd::EventFd;

/// A region of `size` bytes from `fd`, as the frontend describes it.
fn region(gpa: u64, size: u64, va: u64, offset: u64, fd: i32) -> VhostUserMemoryRegionInfo {
    VhostUserMemoryRegionInfo {
        guest_phys_addr: gpa,
        memory_size: size,
        userspace_addr: va,
        mmap_offset: offset,
        mmap_handle: fd,
    }
}

/// A memfd the frontend made with `memfd_create` but without `MFD_ALLOW_SEALING`: it cannot be
/// sealed against shrinking.
fn unsealable_memfd(size: u64) -> File {
    // SAFETY: the name is a NUL-terminated literal; the result is checked before use.
    let fd = unsafe { libc::memfd_create(c"vhost-unsealable".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: the descriptor was just created and nobody else owns it.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size).unwrap();
    file
}

fn dup(fd: std::os::fd::BorrowedFd<'_>) -> File {
    File::from(fd.try_clone_to_owned().unwrap())
}

/// Closes the rig's connection and answers how many requests the backend refused.
fn refused(rig: Rig) -> u64 {
    let Rig { conn, .. } = rig;
    let ended = conn.close();
    assert!(
        matches!(ended.error, vhost::vhost_user::Error::Disconnected),
        "{:?}",
        ended.error
    );
    ended.refused
}

// Each bad SET_MEM_TABLE (overlap, unaligned, past end, not a memfd) is NACKed; the ring serves on.
#[test]
fn mem_table_refusals_keep_the_table_in_use() {
    let mut rig = Rig::new("mem-table-refusals");
    let good = rig.guest.region();
    let other = SharedMemory::new("vhost-other", MEM_SIZE).unwrap();
    let ofd = other.as_fd().as_raw_fd();
    let file = regular_file("not-memfd", MEM_SIZE);
    let (pipe_r, _pipe_w) = pipe();
    let event = EventFd::new(0).unwrap();
    let unsealable = unsealable_memfd(MEM_SIZE);
    let far = FAKE_VA + 0x1000_0000;
    let page = base::pagesize() as u64;
    let tables: Vec<(&str, Vec<VhostUserMemoryRegionInfo>)> = vec![
        (
            "overlap in guest space",
            vec![good, region(MEM_SIZE / 2, MEM_SIZE, far, 0, ofd)],
        ),
        (
            "overlap in frontend space",
            vec![
                good,
                region(0x1000_0000, MEM_SIZE, FAKE_VA + 0x1000, 0, ofd),
            ],
        ),
        ("same region twice", vec![good, good]),
        (
            "unaligned mmap offset",
            vec![region(0, MEM_SIZE / 2, FAKE_VA, 0x800, ofd)],
        ),
        (
            "unaligned size",
            vec![region(0, MEM_SIZE - 0x800, FAKE_VA, 0, ofd)],
        ),
        (
            "unaligned guest address",
            vec![region(page / 2, page, FAKE_VA, 0, ofd)],
        ),
        (
            "offset + size past the memfd's end",
            vec![region(0, MEM_SIZE, FAKE_VA, page, ofd)],
        ),
        (
            "offset past the memfd's end",
            vec![region(0, page, FAKE_VA, 2 * MEM_SIZE, ofd)],
        ),
        (
            "size past the memfd's end",
            vec![region(0, 2 * MEM_SIZE, FAKE_VA, 0, ofd)],
        ),
        (
            "a regular file",
            vec![region(0, MEM_SIZE, FAKE_VA, 0, file.as_raw_fd())],
        ),
        (
            "a pipe",
            vec![region(0, MEM_SIZE, FAKE_VA, 0, pipe_r.as_raw_fd())],
        ),
        (
            "an eventfd",
            vec![region(0, MEM_SIZE, FAKE_VA, 0, event.as_raw_fd())],
        ),
        (
            "a memfd that refuses seals",
            vec![region(0, MEM_SIZE, FAKE_VA, 0, unsealable.as_raw_fd())],
        ),
    ];
    let count = tables.len() as u64;
    for (i, (what, table)) in tables.into_iter().enumerate() {
        assert_nack(what, rig.conn.frontend.set_mem_table(&table));
        rig.check_serves(i as u8);
    }
    assert_eq!(refused(rig), count);
}

// A table vhost itself refuses (overflow, size 0) ends the connection; the next one is served.
#[test]
fn mem_table_the_protocol_forbids_ends_the_connection() {
    let disk = Disk::new("mem-table-protocol");
    let backend = disk.backend(false, 1);
    let guest = Guest::new("mem-table-protocol");
    let fd = guest.fd();
    let mut conn = Conn::standard(&backend);
    let r = conn.bounded("overflowing SET_MEM_TABLE", |fe| {
        fe.set_mem_table(&[region(u64::MAX - 0xfff, 0x2000, FAKE_VA, 0, fd)])
    });
    assert_nack("overflowing SET_MEM_TABLE", r);
    let ended = conn.ended(WAIT).expect("the connection did not end");
    assert!(
        matches!(ended.error, vhost::vhost_user::Error::InvalidMessage),
        "{:?}",
        ended.error
    );
    drop(conn);

    let mut conn = Conn::standard(&backend);
    let zero = region(0, 0, FAKE_VA, 0, fd);
    assert!(matches!(
        conn.frontend.set_mem_table(&[zero]),
        Err(vhost::Error::VhostUserProtocol(
            vhost::vhost_user::Error::InvalidParam
        ))
    ));
    let body = mem_table_body(&[(0, 0, FAKE_VA, 0)]);
    assert!(!conn.raw_ack(code::SET_MEM_TABLE, &body, &[fd]).unwrap());
    let ended = conn.ended(WAIT).expect("the connection did not end");
    assert!(matches!(
        ended.error,
        vhost::vhost_user::Error::InvalidMessage
    ));
    drop(conn);

    // The backend is as new for the next frontend.
    let mut conn = Conn::standard(&backend);
    conn.set_memory(&[&guest]);
    let mut ring = conn.start_ring(&guest, 0, false);
    let data = fill(1, 512);
    let w = ring.request(&guest, T_OUT, 9, &[&data[..]], &[]);
    assert_eq!(ring.complete(&[&w]), vec![1]);
    assert_eq!(guest.byte(w.status), S_OK);
    assert_eq!(disk.sectors(9, 512), data);
}

// Each bad ADD_MEM_REG and a REM_MEM_REG of no region is NACKed; the ring serves on.
#[test]
fn mem_region_refusals_keep_the_table_in_use() {
    let mut rig = Rig::new("mem-region-refusals");
    let other = SharedMemory::new("vhost-other", MEM_SIZE).unwrap();
    let ofd = other.as_fd().as_raw_fd();
    let file = regular_file("add-not-memfd", MEM_SIZE);
    let (pipe_r, _pipe_w) = pipe();
    let far = 0x4000_0000;
    let mut n = 0;
    // Size 0, by hand: the frontend would not send it.
    let body = single_region_body(far, 0, FAKE_VA + far, 0);
    assert!(!rig.conn.raw_ack(code::ADD_MEM_REG, &body, &[ofd]).unwrap());
    rig.check_serves(n);
    n += 1;
    for (what, r) in [
        (
            "guest address overflow",
            region(u64::MAX - 0xfff, MEM_SIZE, FAKE_VA + far, 0, ofd),
        ),
        (
            "frontend address overflow",
            region(far, MEM_SIZE, u64::MAX - 0xfff, 0, ofd),
        ),
        (
            "mmap offset overflow",
            region(far, MEM_SIZE, FAKE_VA + far, u64::MAX - 0xfff, ofd),
        ),
        ("unaligned size", region(far, 0x1800, FAKE_VA + far, 0, ofd)),
        (
            "past the memfd's end",
            region(far, 2 * MEM_SIZE, FAKE_VA + far, 0, ofd),
        ),
        (
            "overlaps the table in guest space",
            region(MEM_SIZE - 0x1000, MEM_SIZE, FAKE_VA + far, 0, ofd),
        ),
        (
            "overlaps the table in frontend space",
            region(far, MEM_SIZE, FAKE_VA + 0x2000, 0, ofd),
        ),
        (
            "a regular file",
            region(far, MEM_SIZE, FAKE_VA + far, 0, file.as_raw_fd()),
        ),
        (
            "a pipe",
            region(far, MEM_SIZE, FAKE_VA + far, 0, pipe_r.as_raw_fd()),
        ),
    ] {
        assert_nack(what, rig.conn.frontend.add_mem_region(&r));
        rig.check_serves(n);
        n += 1;
    }
    let absent = region(far, MEM_SIZE, FAKE_VA + far, 0, ofd);
    assert_nack("REM_MEM_REG", rig.conn.frontend.remove_mem_region(&absent));
    // Same address, another size.
    let mut wrong = rig.guest.region();
    wrong.memory_size = MEM_SIZE / 2;
    assert_nack("REM_MEM_REG", rig.conn.frontend.remove_mem_region(&wrong));
    rig.check_serves(n);
    assert_eq!(refused(rig), u64::from(n) + 2);
}

// The table takes GET_MAX_MEM_SLOTS regions and NACKs one more.
#[test]
fn mem_region_beyond_the_slots_is_refused() {
    let mut rig = Rig::new("mem-slots-full");
    assert_eq!(
        rig.conn.frontend.get_max_mem_slots().unwrap(),
        MAX_MEM_SLOTS as u64
    );
    let mut extra = Vec::new();
    for i in 1..=MAX_MEM_SLOTS as u64 {
        let shm = SharedMemory::new("vhost-slot", 0x1000).unwrap();
        let gpa = 0x1000_0000 * i;
        let r = region(gpa, 0x1000, FAKE_VA + gpa, 0, shm.as_fd().as_raw_fd());
        let result = rig.conn.frontend.add_mem_region(&r);
        if i < MAX_MEM_SLOTS as u64 {
            result.unwrap();
        } else {
            assert_nack("one region too many", result);
        }
        extra.push(shm);
    }
    rig.check_serves(0);
    assert_eq!(refused(rig), 1);
}

// Guest memory is sealed: the frontend cannot truncate it under the backend (no SIGBUS).
#[test]
fn guest_memory_cannot_shrink_under_the_backend() {
    let mut rig = Rig::new("shrink");
    let memfd = dup(rig.guest.shm.as_fd());
    let e = memfd.set_len(MEM_SIZE / 2).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}");
    assert_eq!(memfd.metadata().unwrap().len(), MEM_SIZE);
    rig.check_serves(0);
}

/// A connection with the memory table set and no ring started.
fn table_only(test: &str) -> (Disk, Guest, Conn) {
    let disk = Disk::new(test);
    let backend = disk.backend(false, 1);
    let guest = Guest::new(test);
    let conn = Conn::standard(&backend);
    conn.set_memory(&[&guest]);
    (disk, guest, conn)
}

/// Starts vring 0 and proves it serves.
fn start_and_serve(disk: &Disk, guest: &Guest, conn: &mut Conn) {
    let mut ring = conn.start_ring(guest, 0, false);
    let data = fill(3, 1024);
    let w = ring.request(guest, T_OUT, 33, &[&data[..]], &[]);
    let r = ring.request(guest, T_IN, 33, &[], &[1024]);
    assert_eq!(ring.complete(&[&w, &r]), vec![1, 1025]);
    assert_eq!(r.data(guest), data);
    assert_eq!(disk.sectors(33, 1024), data);
}

// SET_VRING_NUM 0, 3, 2048, 1000, 65536 and any size or base on a started ring are NACKed.
#[test]
fn vring_sizes_are_checked() {
    let (disk, guest, mut conn) = table_only("vring-num");
    for num in [0u16, 3, 2 * MAX_QUEUE_SIZE, 1000] {
        assert_nack("SET_VRING_NUM", conn.frontend.set_vring_num(0, num));
    }
    let body = vring_state_body(0, 0x1_0000);
    assert!(!conn.raw_ack(code::SET_VRING_NUM, &body, &[]).unwrap());
    let body = vring_state_body(0, u32::MAX);
    assert!(!conn.raw_ack(code::SET_VRING_NUM, &body, &[]).unwrap());
    start_and_serve(&disk, &guest, &mut conn);
    assert_nack("size of a started ring", conn.frontend.set_vring_num(0, 32));
    assert_nack("base of a started ring", conn.frontend.set_vring_base(0, 0));
    let ended = conn.close();
    assert_eq!(ended.refused, 8);
}

// SET_VRING_BASE past 16 bits is NACKed; the ring then starts and serves.
#[test]
fn vring_base_past_sixteen_bits_is_refused() {
    let (disk, guest, mut conn) = table_only("vring-base");
    for base in [0x1_0000, u32::MAX] {
        let body = vring_state_body(0, base);
        assert!(!conn.raw_ack(code::SET_VRING_BASE, &body, &[]).unwrap());
    }
    start_and_serve(&disk, &guest, &mut conn);
    assert_eq!(conn.close().refused, 2);
}

// Every per-vring request for an index past the device's queues is NACKed.
#[test]
fn vring_index_past_the_queues_is_refused() {
    let (disk, guest, mut conn) = table_only("vring-index");
    let ev = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    for index in [1usize, 7] {
        let fe = &mut conn.frontend;
        assert_nack("SET_VRING_NUM", fe.set_vring_num(index, QSIZE));
        assert_nack(
            "SET_VRING_ADDR",
            fe.set_vring_addr(index, &Conn::vring_config(&guest, 0, false)),
        );
        assert_nack("SET_VRING_BASE", fe.set_vring_base(index, 0));
        assert_nack("SET_VRING_CALL", fe.set_vring_call(index, &ev));
        assert_nack("SET_VRING_KICK", fe.set_vring_kick(index, &ev));
        assert_nack("SET_VRING_ERR", fe.set_vring_err(index, &ev));
        assert_nack("SET_VRING_ENABLE", fe.set_vring_enable(index, true));
    }
    // Past the 8 bits of a descriptor message's index, by hand.
    let body = vring_fd_body(200);
    assert!(!conn
        .raw_ack(code::SET_VRING_KICK, &body, &[ev.as_raw_fd()])
        .unwrap());
    start_and_serve(&disk, &guest, &mut conn);
    assert_eq!(conn.close().refused, 15);
}

// Refusals vhost cannot answer (GET_VRING_BASE, SET_LOG_BASE, ...) end the connection, no hang.
#[test]
fn refusals_without_an_answer_end_the_connection() {
    let disk = Disk::new("unanswerable");
    let backend = disk.backend(false, 1);
    let guest = Guest::new("unanswerable");
    let file = regular_file("log-not-memfd", 0x1000);
    let (pipe_r, _pipe_w) = pipe();
    let small = SharedMemory::new("vhost-small-log", 0x1000).unwrap();
    let unsealable = unsealable_memfd(0x1000);
    type Call = Box<dyn FnOnce(&mut vhost::vhost_user::Frontend) -> vhost::Result<()> + Send>;
    let log = |fd: i32, size: u64, offset: u64| -> Call {
        Box::new(move |fe| {
            fe.set_log_base(
                0,
                Some(VhostUserDirtyLogRegion {
                    mmap_size: size,
                    mmap_offset: offset,
                    mmap_handle: fd,
                }),
            )
        })
    };
    let requests: Vec<(&str, Call)> = vec![
        (
            "GET_VRING_BASE of vring 3",
            Box::new(|fe| fe.get_vring_base(3).map(|_| ())),
        ),
        (
            "SET_LOG_BASE of a regular file",
            log(file.as_raw_fd(), 40, 0),
        ),
        ("SET_LOG_BASE of a pipe", log(pipe_r.as_raw_fd(), 40, 0)),
        (
            "SET_LOG_BASE past the memfd's end",
            log(small.as_fd().as_raw_fd(), 0x1000, 0x1000),
        ),
        (
            "SET_LOG_BASE of a memfd that refuses seals",
            log(unsealable.as_raw_fd(), 40, 0),
        ),
        (
            "GET_INFLIGHT_FD",
            Box::new(|fe| {
                let mut p = protocol_features();
                p |= VhostUserProtocolFeatures::INFLIGHT_SHMFD;
                assert!(is_nack(&fe.set_protocol_features(p)));
                let inflight = VhostUserInflight {
                    mmap_size: 0,
                    mmap_offset: 0,
                    num_queues: 1,
                    queue_size: QSIZE,
                };
                fe.get_inflight_fd(&inflight).map(|_| ())
            }),
        ),
    ];
    for (what, request) in requests {
        let mut conn = Conn::standard(&backend);
        conn.set_memory(&[&guest]);
        let r = conn.bounded(what, request);
        assert!(r.is_err(), "{what}: answered {r:?}");
        let ended = conn
            .ended(WAIT)
            .unwrap_or_else(|| panic!("{what}: the connection did not end"));
        assert!(
            matches!(ended.error, vhost::vhost_user::Error::ReqHandlerError(_)),
            "{what}: {:?}",
            ended.error
        );
        drop(conn);
        // The next frontend is served.
        let mut conn = Conn::standard(&backend);
        conn.set_memory(&[&guest]);
        start_and_serve(&disk, &guest, &mut conn);
    }
}

// Kick, call and err descriptors that are not eventfds, and a kick without one, are NACKed.
#[test]
fn vring_descriptors_that_are_not_eventfds_are_refused() {
    let (disk, guest, mut conn) = table_only("not-eventfd");
    let fe = &mut conn.frontend;
    fe.set_vring_num(0, QSIZE).unwrap();
    fe.set_vring_addr(0, &Conn::vring_config(&guest, 0, false))
        .unwrap();
    let (pipe_r, _pipe_w) = pipe();
    let file = regular_file("kick-not-eventfd", 8);
    let memfd = SharedMemory::new("vhost-kick", 8).unwrap();
    let fds = [
        pipe_r.as_raw_fd(),
        file.as_raw_fd(),
        memfd.as_fd().as_raw_fd(),
    ];
    let mut n = 0;
    for c in [
        code::SET_VRING_KICK,
        code::SET_VRING_CALL,
        code::SET_VRING_ERR,
    ] {
        for fd in fds {
            assert!(
                !conn.raw_ack(c, &vring_fd_body(0), &[fd]).unwrap(),
                "request {c} took descriptor {fd}"
            );
            n += 1;
        }
    }
    // Bit 8: no descriptor, the ring is to be polled.
    let body = (0x100u64).to_le_bytes();
    assert!(!conn.raw_ack(code::SET_VRING_KICK, &body, &[]).unwrap());
    start_and_serve(&disk, &guest, &mut conn);
    assert_eq!(conn.close().refused, n + 1);
}

// Ring addresses outside the memory table are NACKed when the ring starts.
#[test]
fn vring_addresses_outside_the_table_are_refused() {
    let (disk, guest, mut conn) = table_only("vring-outside");
    let good = Conn::vring_config(&guest, 0, false);
    let end = FAKE_VA + MEM_SIZE;
    let bad = [
        VringConfigData {
            desc_table_addr: FAKE_VA - 0x1000,
            ..good
        },
        VringConfigData {
            avail_ring_addr: end + 0x1_0000,
            ..good
        },
        VringConfigData {
            // 6 + 8 * 64 bytes do not fit in the last 256.
            used_ring_addr: end - 0x100,
            ..good
        },
        VringConfigData {
            desc_table_addr: 0x1000,
            avail_ring_addr: 0x2000,
            used_ring_addr: 0x3000,
            ..good
        },
    ];
    let kick = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    for (i, config) in bad.iter().enumerate() {
        let fe = &mut conn.frontend;
        fe.set_vring_num(0, QSIZE).unwrap();
        fe.set_vring_addr(0, config).unwrap();
        assert_nack(&format!("ring addresses {i}"), fe.set_vring_kick(0, &kick));
    }
    start_and_serve(&disk, &guest, &mut conn);
    assert_eq!(conn.close().refused, bad.len() as u64);
}

// SET_VRING_KICK before any memory table is NACKed; after one it starts the ring.
#[test]
fn vring_kick_before_a_memory_table_is_refused() {
    let disk = Disk::new("kick-first");
    let backend = disk.backend(false, 1);
    let guest = Guest::new("kick-first");
    let mut conn = Conn::standard(&backend);
    let fe = &mut conn.frontend;
    fe.set_vring_num(0, QSIZE).unwrap();
    fe.set_vring_addr(0, &Conn::vring_config(&guest, 0, false))
        .unwrap();
    let kick = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    assert_nack("kick without memory", fe.set_vring_kick(0, &kick));
    conn.set_memory(&[&guest]);
    start_and_serve(&disk, &guest, &mut conn);
    assert_eq!(conn.close().refused, 1);
}

// A table without a started ring's memory stops it unserved; it resumes where it stopped.
#[test]
fn memory_table_without_the_rings_stops_them() {
    let disk = Disk::new("mem-drop");
    let backend = disk.backend(false, 1);
    let a = Guest::new("mem-drop-a");
    let b = Guest::at("mem-drop-b", 0x1000_0000, FAKE_VA + 0x1000_0000, MEM_SIZE);
    let mut conn = Conn::standard(&backend);
    conn.set_memory(&[&a, &b]);
    let mut ring = conn.start_ring(&a, 0, false);
    let first = ring.request(&a, T_IN, 0, &[], &[512]);
    let data = fill(4, 512);
    let second = ring.request(&a, T_OUT, 70, &[&data[..]], &[]);
    assert_eq!(ring.complete(&[&first, &second]), vec![513, 1]);
    // The driver reuses the first request's buffer.
    a.write(first.data_in[0].0, &[SENTINEL; 512]);
    conn.set_memory(&[&b]);
    let data3 = fill(5, 512);
    let third = ring.request(&a, T_OUT, 80, &[&data3[..]], &[]);
    ring.expect_nothing(Duration::from_millis(300));
    assert_eq!(a.byte(third.status), SENTINEL);
    assert_eq!(disk.sectors(80, 512), fresh()[80 * 512..81 * 512]);
    // Stop the ring: it took two chains.
    assert_eq!(conn.frontend.get_vring_base(0).unwrap(), 2);
    conn.set_memory(&[&a, &b]);
    let fe = &mut conn.frontend;
    fe.set_vring_addr(0, &Conn::vring_config(&a, 0, false))
        .unwrap();
    fe.set_vring_base(0, 2).unwrap();
    let kick = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    fe.set_vring_kick(0, &kick).unwrap();
    ring.kick = kick;
    let used = ring.wait_used(1);
    assert_eq!(used, vec![(u32::from(third.head), 1)]);
    assert_eq!(a.byte(third.status), S_OK);
    assert_eq!(disk.sectors(80, 512), data3);
    assert_eq!(
        a.read(first.data_in[0].0, 512),
        vec![SENTINEL; 512],
        "replayed"
    );
}

// A second SET_VRING_KICK on a running ring does not serve earlier requests again.
#[test]
fn vring_kick_again_does_not_replay() {
    let mut rig = Rig::new("kick-again");
    let first = rig.ring.request(&rig.guest, T_IN, 0, &[], &[512]);
    assert_eq!(rig.ring.complete(&[&first]), vec![513]);
    rig.guest.write(first.data_in[0].0, &[SENTINEL; 512]);
    let kick = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    rig.conn.frontend.set_vring_kick(0, &kick).unwrap();
    rig.ring.kick = kick;
    rig.check_serves(0);
    assert_eq!(
        rig.guest.read(first.data_in[0].0, 512),
        vec![SENTINEL; 512],
        "a request served before the new kick was served again"
    );
}

// SET_FEATURES and SET_PROTOCOL_FEATURES beyond the offer are NACKed; the device serves on.
#[test]
fn features_not_offered_are_refused() {
    let mut rig = Rig::new("features");
    let good = driver_features(rig.conn.offered);
    for extra in [1u64 << 63, 1 << 0, 1 << 24] {
        assert_eq!(rig.conn.offered & extra, 0, "bit {extra:#x} is offered");
        assert_nack("SET_FEATURES", rig.conn.frontend.set_features(good | extra));
    }
    // `vhost` keeps what the frontend sent: it must send what it may.
    rig.conn.frontend.set_features(good).unwrap();
    rig.check_serves(0);
    for extra in [
        VhostUserProtocolFeatures::INFLIGHT_SHMFD,
        VhostUserProtocolFeatures::BACKEND_REQ,
        VhostUserProtocolFeatures::SHMEM,
    ] {
        assert_nack(
            "SET_PROTOCOL_FEATURES",
            rig.conn
                .frontend
                .set_protocol_features(protocol_features() | extra),
        );
    }
    rig.conn
        .frontend
        .set_protocol_features(protocol_features())
        .unwrap();
    rig.check_serves(1);
    assert_eq!(refused(rig), 6);
}

// GET_CONFIG past the config space gets the empty answer, SET_CONFIG a NACK.
#[test]
fn config_access_outside_the_space_is_refused() {
    let mut rig = Rig::new("config");
    for (offset, size) in [(0u32, 61u32), (59, 2), (60, 1), (0x100, 4), (0, 0x100)] {
        let mut body = Vec::new();
        for v in [offset, size, 0] {
            body.extend_from_slice(&v.to_le_bytes());
        }
        body.resize(12 + size as usize, 0);
        let reply = rig.conn.raw_request(code::GET_CONFIG, &body, &[]).unwrap();
        let mut want = offset.to_le_bytes().to_vec();
        want.extend_from_slice(&[0; 8]);
        assert_eq!(
            reply, want,
            "GET_CONFIG {offset}+{size}: not an empty answer"
        );
    }
    for (offset, buf) in [(0u32, vec![0u8; 8]), (20, vec![0; 4]), (100, vec![1; 4])] {
        assert_nack(
            "SET_CONFIG",
            rig.conn
                .frontend
                .set_config(offset, VhostUserConfigFlags::WRITABLE, &buf),
        );
    }
    let (_, c) = rig
        .conn
        .frontend
        .get_config(0, 60, VhostUserConfigFlags::empty(), &[0; 60])
        .unwrap();
    assert_eq!(c[0..8], SECTORS.to_le_bytes());
    assert_eq!(c[20..24], 512u32.to_le_bytes());
    rig.check_serves(0);
    // GET_CONFIG's refusals are answered by `vhost` itself, not counted as the backend's.
    assert_eq!(refused(rig), 3);
}

/// A memfd of `size` bytes as a `File`, with the `SharedMemory` that made it.
fn memfd(name: &str, size: u64) -> (SharedMemory, File) {
    let shm = SharedMemory::new(name, size).unwrap();
    let file = dup(shm.as_fd());
    (shm, file)
}

fn desc(gpa: u64, size: u64, va: u64, off: u64) -> RegionDesc {
    RegionDesc {
        guest_addr: gpa,
        size,
        user_addr: va,
        mmap_offset: off,
    }
}

// MemoryTable's refusals are the exact Error variants, and so are translate's and the slots'.
#[test]
fn memory_table_errors_are_typed() {
    let page = base::pagesize() as u64;
    let one = |d: RegionDesc| MemoryTable::new(&[d], vec![memfd("t", MEM_SIZE).1]).unwrap_err();
    let e = MemoryTable::new(&[desc(0, MEM_SIZE, FAKE_VA, 0)], vec![]).unwrap_err();
    assert!(
        matches!(
            e,
            MemError::FileCount {
                regions: 1,
                files: 0
            }
        ),
        "{e:?}"
    );
    let e = one(desc(0x4000, 0, FAKE_VA, 0));
    assert!(matches!(e, MemError::ZeroSize { addr: 0x4000 }), "{e:?}");
    let e = one(desc(0, page + 1, FAKE_VA, 0));
    assert!(
        matches!(e, MemError::Unaligned { what: "size", .. }),
        "{e:?}"
    );
    let e = one(desc(page / 2, page, FAKE_VA, 0));
    assert!(
        matches!(
            e,
            MemError::Unaligned {
                what: "guest address",
                ..
            }
        ),
        "{e:?}"
    );
    let e = one(desc(0, page, FAKE_VA, page / 2));
    assert!(
        matches!(
            e,
            MemError::Unaligned {
                what: "mmap offset",
                ..
            }
        ),
        "{e:?}"
    );
    let top = u64::MAX - page + 1;
    let e = one(desc(top, 2 * page, FAKE_VA, 0));
    assert!(
        matches!(
            e,
            MemError::RegionOverflow {
                what: "guest address",
                ..
            }
        ),
        "{e:?}"
    );
    let e = one(desc(0, 2 * page, u64::MAX - 0xfff, 0));
    assert!(
        matches!(
            e,
            MemError::RegionOverflow {
                what: "frontend address",
                ..
            }
        ),
        "{e:?}"
    );
    let e = one(desc(0, 2 * page, FAKE_VA, top));
    assert!(
        matches!(
            e,
            MemError::RegionOverflow {
                what: "mmap offset",
                ..
            }
        ),
        "{e:?}"
    );
    let two = |a: RegionDesc, b: RegionDesc| {
        MemoryTable::new(
            &[a, b],
            vec![memfd("a", MEM_SIZE).1, memfd("b", MEM_SIZE).1],
        )
        .unwrap_err()
    };
    let e = two(
        desc(0, MEM_SIZE, FAKE_VA, 0),
        desc(MEM_SIZE - page, MEM_SIZE, FAKE_VA + 0x1000_0000, 0),
    );
    assert!(
        matches!(
            e,
            MemError::Overlap {
                space: "guest",
                first: 0,
                ..
            }
        ),
        "{e:?}"
    );
    let e = two(
        desc(0, MEM_SIZE, FAKE_VA, 0),
        desc(0x1000_0000, MEM_SIZE, FAKE_VA + MEM_SIZE - page, 0),
    );
    assert!(
        matches!(
            e,
            MemError::Overlap {
                space: "frontend",
                ..
            }
        ),
        "{e:?}"
    );
    // Touching regions do not overlap.
    MemoryTable::new(
        &[
            desc(0, MEM_SIZE, FAKE_VA, 0),
            desc(MEM_SIZE, MEM_SIZE, FAKE_VA + MEM_SIZE, 0),
        ],
        vec![memfd("a", MEM_SIZE).1, memfd("b", MEM_SIZE).1],
    )
    .unwrap();
    let e = MemoryTable::new(
        &[desc(0, MEM_SIZE, FAKE_VA, 0)],
        vec![regular_file("unit-not-memfd", MEM_SIZE)],
    )
    .unwrap_err();
    assert!(matches!(e, MemError::NotMemfd { addr: 0, .. }), "{e:?}");
    let (pipe_r, _pipe_w) = pipe();
    let e = MemoryTable::new(&[desc(0, MEM_SIZE, FAKE_VA, 0)], vec![pipe_r]).unwrap_err();
    assert!(matches!(e, MemError::NotMemfd { .. }), "{e:?}");
    let e = one(desc(0, MEM_SIZE, FAKE_VA, page));
    assert!(
        matches!(
            e,
            MemError::Map {
                addr: 0,
                source: vm_memory::Error::FileTooShort { .. }
            }
        ),
        "{e:?}"
    );
    let e = MemoryTable::new(
        &[desc(0, MEM_SIZE, FAKE_VA, 0)],
        vec![unsealable_memfd(MEM_SIZE)],
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            MemError::Map {
                source: vm_memory::Error::NotSealable { .. },
                ..
            }
        ),
        "{e:?}"
    );

    let table = MemoryTable::new(
        &[desc(0, MEM_SIZE, FAKE_VA, 0)],
        vec![memfd("t", MEM_SIZE).1],
    )
    .unwrap();
    assert_eq!(table.translate(FAKE_VA + 0x10, 16).unwrap().0, 0x10);
    assert_eq!(
        table.translate(FAKE_VA + MEM_SIZE - 4, 4).unwrap().0,
        MEM_SIZE - 4
    );
    for (addr, len) in [
        (FAKE_VA - 1, 1),
        (FAKE_VA + MEM_SIZE, 1),
        (FAKE_VA + MEM_SIZE - 4, 5),
        (FAKE_VA, u64::MAX),
    ] {
        let e = table.translate(addr, len).unwrap_err();
        assert!(
            matches!(e, MemError::Untranslatable { addr: a, len: l } if a == addr && l == len),
            "{e:?}"
        );
    }
    let e = table
        .with_region(
            desc(MEM_SIZE, MEM_SIZE, FAKE_VA + MEM_SIZE, 0),
            memfd("t", MEM_SIZE).1,
            1,
        )
        .unwrap_err();
    assert!(matches!(e, MemError::AllSlotsUsed { slots: 1 }), "{e:?}");
    let e = table.without_region(0, MEM_SIZE / 2).unwrap_err();
    assert!(
        matches!(e, MemError::NoSuchRegion { addr: 0, size } if size == MEM_SIZE / 2),
        "{e:?}"
    );
    assert!(table.without_region(0, MEM_SIZE).unwrap().is_none());
}

// DirtyLog::new's refusals are the exact Error variants; mark stays inside the log.
#[test]
fn dirty_log_errors_are_typed() {
    let e = DirtyLog::new(memfd("log", 0x1000).1, 0, 0).unwrap_err();
    assert!(matches!(e, LogError::Size { size: 0 }), "{e:?}");
    let e = DirtyLog::new(regular_file("log-file", 0x1000), 40, 0).unwrap_err();
    assert!(matches!(e, LogError::NotMemfd(_)), "{e:?}");
    let (pipe_r, _pipe_w) = pipe();
    let e = DirtyLog::new(pipe_r, 40, 0).unwrap_err();
    assert!(matches!(e, LogError::NotMemfd(_)), "{e:?}");
    let e = DirtyLog::new(memfd("log", 0x1000).1, 0x1000, 0x1000).unwrap_err();
    assert!(
        matches!(
            e,
            LogError::Map {
                size: 0x1000,
                offset: 0x1000,
                ..
            }
        ),
        "{e:?}"
    );
    let e = DirtyLog::new(memfd("log", 0x1000).1, 0x2000, 0).unwrap_err();
    assert!(matches!(e, LogError::Map { .. }), "{e:?}");
    let e = DirtyLog::new(memfd("log", 0x2000).1, 40, 0x800).unwrap_err();
    assert!(matches!(e, LogError::Map { .. }), "{e:?}");
    let e = DirtyLog::new(unsealable_memfd(0x1000), 40, 0).unwrap_err();
    assert!(matches!(e, LogError::NotSealable), "{e:?}");
    let (shm, file) = memfd("log-sealed", 0x1000);
    let mut seals = MemfdSeals::new();
    seals.set_seal_seal();
    shm.add_seals(seals).unwrap();
    let e = DirtyLog::new(file, 40, 0).unwrap_err();
    assert!(matches!(e, LogError::NotSealable), "{e:?}");

    let (shm, file) = memfd("log-good", 0x1000);
    let log = DirtyLog::new(file, 2, 0).unwrap();
    assert_eq!(log.size(), 2);
    // Pages 1 and 2 (bytes 0x1fff..0x2001), then page 15, then past the log's 16 pages.
    assert_eq!(log.mark(0x1fff, 2), 2);
    assert_eq!(log.mark(15 * 0x1000 + 7, 1), 1);
    assert_eq!(log.mark(16 * 0x1000, 0x1000), 0);
    assert_eq!(log.mark(u64::MAX - 1, 2), 0);
    assert_eq!(log.mark(0, 0), 0);
    let mut bytes = [0u8; 3];
    dup(shm.as_fd()).read_exact_at(&mut bytes, 0).unwrap();
    assert_eq!(bytes, [0b0000_0110, 0b1000_0000, 0]);
}
