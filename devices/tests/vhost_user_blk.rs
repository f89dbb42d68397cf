// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The vhost-user-blk backend driven in-process by rust-vmm's own frontend (`vhost`'s
//! `Frontend`) over a socket pair, with the test as the guest's driver on the same memfd the
//! backend maps: feature and protocol negotiation, the config space, every request type, the
//! dirty log of migration, and that a connection gives back every descriptor and mapping.

mod vhost_user_harness;

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

use base::SharedMemory;
use devices::vhost_user::backend::{
    BlockBackend, MAX_MEM_SLOTS, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
    VIRTIO_RING_F_INDIRECT_DESC,
};
use devices::vhost_user::blk::{
    SEG_MAX, VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_MQ, VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_SEG_MAX,
};
use devices::virtio::driver::DriverBuffer;
use vhost::vhost_user::message::VhostUserConfigFlags;
use vhost::vhost_user::{VhostUserFrontend, VhostUserVirtioFeatures};
use vhost::{VhostBackend, VhostUserDirtyLogRegion};
use vhost_user_harness::*;
use vm_memory::GuestAddress;

fn bit(features: u64, b: u32) -> bool {
    features & (1 << b) != 0
}

// Features, protocol features (REPLY_ACK: refusals reach the frontend), queues, slots are offered.
#[test]
fn negotiation_offers_and_accepts_the_features() {
    let disk = Disk::new("negotiation");
    let backend = disk.backend(false, 1);
    let mut conn = Conn::open(&backend, 8);
    conn.frontend.set_owner().unwrap();
    let offered = conn.frontend.get_features().unwrap();
    for b in [
        VIRTIO_F_VERSION_1,
        VIRTIO_RING_F_INDIRECT_DESC,
        VIRTIO_RING_F_EVENT_IDX,
        VIRTIO_BLK_F_SEG_MAX,
        VIRTIO_BLK_F_BLK_SIZE,
        VIRTIO_BLK_F_FLUSH,
    ] {
        assert!(bit(offered, b), "feature bit {b} not offered: {offered:#x}");
    }
    assert!(!bit(offered, VIRTIO_BLK_F_RO), "a writable disk offers RO");
    assert!(!bit(offered, VIRTIO_BLK_F_MQ), "one queue offers MQ");
    assert_ne!(
        offered & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits(),
        0
    );
    assert_ne!(offered & LOG_ALL, 0);
    let proto = conn.frontend.get_protocol_features().unwrap();
    assert!(proto.contains(protocol_features()), "{proto:?}");
    conn.frontend
        .set_protocol_features(protocol_features())
        .unwrap();
    conn.frontend
        .set_hdr_flags(vhost::vhost_user::message::VhostUserHeaderFlag::NEED_REPLY);
    conn.frontend
        .set_features(driver_features(offered))
        .unwrap();
    assert_eq!(conn.frontend.get_queue_num().unwrap(), 1);
    assert_eq!(
        conn.frontend.get_max_mem_slots().unwrap(),
        MAX_MEM_SLOTS as u64
    );
    // With REPLY_ACK a refusal reaches the frontend as an error: SET_CONFIG is refused.
    assert_nack(
        "SET_CONFIG",
        conn.frontend
            .set_config(0, VhostUserConfigFlags::WRITABLE, &[0; 8]),
    );
    // And the connection goes on.
    assert_eq!(conn.frontend.get_queue_num().unwrap(), 1);
    let ended = conn.close();
    assert!(
        matches!(ended.error, vhost::vhost_user::Error::Disconnected),
        "{:?}",
        ended.error
    );
    assert_eq!(ended.refused, 1);
}

/// The config space's little-endian fields at their offsets in virtio 1.x, 5.2.4.
fn config(conn: &mut Conn, offset: u32, size: u32) -> Vec<u8> {
    let (_, payload) = conn
        .frontend
        .get_config(
            offset,
            size,
            VhostUserConfigFlags::empty(),
            &vec![0; size as usize],
        )
        .unwrap();
    payload
}

fn le(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .rev()
        .fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
}

// GET_CONFIG gives capacity, size_max, seg_max, blk_size (512: Linux takes it as the logical
// block size, and partition tables count in 512-byte sectors) and num_queues.
#[test]
fn config_space_describes_the_disk() {
    for queues in [1u16, 3] {
        let disk = Disk::new(&format!("config-{queues}"));
        let backend = disk.backend(false, queues);
        let mut conn = Conn::standard(&backend);
        let c = config(&mut conn, 0, 60);
        assert_eq!(le(&c[0..8]), SECTORS, "capacity");
        assert_eq!(le(&c[8..12]), 64 << 10, "size_max");
        assert_eq!(le(&c[12..16]), u64::from(SEG_MAX), "seg_max");
        assert_eq!(le(&c[20..24]), 512, "blk_size");
        assert_eq!(le(&c[34..36]), u64::from(queues), "num_queues");
        // A part of it, as a frontend reading one field does.
        assert_eq!(le(&config(&mut conn, 20, 4)), 512);
        assert_eq!(le(&config(&mut conn, 0, 8)), SECTORS);
        assert_eq!(conn.frontend.get_queue_num().unwrap(), u64::from(queues));
        assert_eq!(bit(conn.offered, VIRTIO_BLK_F_MQ), queues > 1);
    }
}

// OUT then IN at four sectors: the file holds the data, IN reads it back, used lens 1 and n+1.
#[test]
fn out_then_in_round_trips_at_several_sectors() {
    let mut rig = Rig::new("round-trip");
    let mut model = fresh();
    for (i, sector) in [0, 1, 100, SECTORS - 8].into_iter().enumerate() {
        let data = fill(i as u8 + 1, 4096);
        assert_eq!(rig.write(sector, &data, 1536), (1, S_OK), "OUT at {sector}");
        let at = (sector * 512) as usize;
        model[at..at + 4096].copy_from_slice(&data);
        let (len, status, back) = rig.read(sector, &[512, 1024, 2560]);
        assert_eq!((len, status), (4097, S_OK), "IN at {sector}");
        assert_eq!(back, data, "IN at {sector} read something else");
    }
    assert!(
        rig.disk.contents() == model,
        "the file is not what was written"
    );
    // An IN of untouched sectors reads the fresh pattern.
    let (len, status, back) = rig.read(2000, &[512]);
    assert_eq!((len, status), (513, S_OK));
    assert_eq!(back, rig.disk.sectors(2000, 512));
    assert_eq!(back, model[2000 * 512..2001 * 512]);
}

// FLUSH answers OK with used length 1 after a write that is in the file.
#[test]
fn flush_answers_ok() {
    let mut rig = Rig::new("flush");
    let data = fill(9, 1024);
    assert_eq!(rig.write(40, &data, 1024), (1, S_OK));
    let req = rig.ring.request(&rig.guest, T_FLUSH, 0, &[], &[]);
    assert_eq!(rig.ring.complete(&[&req]), vec![1]);
    assert_eq!(rig.guest.byte(req.status), S_OK);
    assert_eq!(rig.disk.sectors(40, 1024), data);
}

// GET_ID writes the id's first 20 bytes (used length 21) and nothing past them.
#[test]
fn get_id_answers_twenty_bytes() {
    let mut rig = Rig::new("get-id");
    let req = rig.ring.request(&rig.guest, T_GET_ID, 0, &[], &[20]);
    assert_eq!(rig.ring.complete(&[&req]), vec![21]);
    assert_eq!(rig.guest.byte(req.status), S_OK);
    assert_eq!(req.data(&rig.guest), DISK_ID.as_bytes()[..20]);
    let req = rig.ring.request(&rig.guest, T_GET_ID, 0, &[], &[8, 24]);
    assert_eq!(rig.ring.complete(&[&req]), vec![21]);
    let data = req.data(&rig.guest);
    assert_eq!(data[..20], DISK_ID.as_bytes()[..20]);
    assert_eq!(data[20..], [SENTINEL; 12], "GET_ID wrote past 20 bytes");
}

// OUT and IN chains in indirect tables are served like direct ones.
#[test]
fn indirect_chain_is_served() {
    let mut rig = Rig::new("indirect");
    let g = &rig.guest;
    let data = fill(3, 2048);
    let out = [
        DriverBuffer::readable(g.header(T_OUT, 64), 16),
        DriverBuffer::readable(g.data(&data[..1024]), 1024),
        DriverBuffer::readable(g.data(&data[1024..]), 1024),
        DriverBuffer::writable(g.status(), 1),
    ];
    let table = g.alloc(16 * out.len() as u64);
    let head = rig.ring.driver.add_indirect_chain(table, &out).unwrap();
    rig.ring.driver.make_available(head).unwrap();
    rig.ring.kick();
    assert_eq!(rig.ring.wait_used(1), vec![(u32::from(head), 1)]);
    assert_eq!(g.byte(out[3].addr), S_OK);
    assert_eq!(rig.disk.sectors(64, 2048), data);
    let buf = g.buffer(2048);
    let inn = [
        DriverBuffer::readable(g.header(T_IN, 64), 16),
        DriverBuffer::writable(buf, 2048),
        DriverBuffer::writable(g.status(), 1),
    ];
    let table = g.alloc(16 * inn.len() as u64);
    let head = rig.ring.driver.add_indirect_chain(table, &inn).unwrap();
    rig.ring.driver.make_available(head).unwrap();
    rig.ring.kick();
    assert_eq!(rig.ring.wait_used(1), vec![(u32::from(head), 2049)]);
    assert_eq!(g.byte(inn[2].addr), S_OK);
    assert_eq!(g.read(buf, 2048), data);
}

// Eight requests before one kick are all served in order (an IN sees the OUT before it).
#[test]
fn several_requests_in_flight_before_one_kick() {
    let mut rig = Rig::new("in-flight");
    let mut reqs = Vec::new();
    let mut datas = Vec::new();
    for i in 0..4u64 {
        let data = fill(i as u8 + 20, 1024);
        reqs.push(
            rig.ring
                .request(&rig.guest, T_OUT, 300 + 2 * i, &[&data[..]], &[]),
        );
        datas.push(data);
    }
    for i in 0..4u64 {
        reqs.push(
            rig.ring
                .request(&rig.guest, T_IN, 300 + 2 * i, &[], &[1024]),
        );
    }
    let refs: Vec<&Request> = reqs.iter().collect();
    assert_eq!(
        rig.ring.complete(&refs),
        vec![1, 1, 1, 1, 1025, 1025, 1025, 1025]
    );
    for (i, r) in reqs.iter().enumerate() {
        assert_eq!(rig.guest.byte(r.status), S_OK, "request {i}");
    }
    for i in 0..4 {
        assert_eq!(reqs[4 + i].data(&rig.guest), datas[i], "IN {i}");
        assert_eq!(rig.disk.sectors(300 + 2 * i as u64, 1024), datas[i]);
    }
}

// With two queues both vrings serve: what one writes the other reads.
#[test]
fn two_queues_both_serve() {
    let mut rig = Rig::with("two-queues", false, 2);
    assert!(bit(rig.conn.offered, VIRTIO_BLK_F_MQ));
    assert_eq!(rig.conn.frontend.get_queue_num().unwrap(), 2);
    let mut q1 = rig.conn.start_ring(&rig.guest, 1, false);
    let a = fill(1, 512);
    let w = q1.request(&rig.guest, T_OUT, 10, &[&a[..]], &[]);
    assert_eq!(q1.complete(&[&w]), vec![1]);
    assert_eq!(rig.guest.byte(w.status), S_OK);
    assert_eq!(rig.read(10, &[512]), (513, S_OK, a.clone()));
    let b = fill(2, 512);
    assert_eq!(rig.write(20, &b, 512), (1, S_OK));
    let r = q1.request(&rig.guest, T_IN, 20, &[], &[512]);
    assert_eq!(q1.complete(&[&r]), vec![513]);
    assert_eq!(r.data(&rig.guest), b);
    assert_eq!(rig.disk.sectors(10, 512), a);
    assert_eq!(rig.disk.sectors(20, 512), b);
}

// A read-only disk offers RO, answers OUT with IOERR (used len 1), keeps the file; IN works.
#[test]
fn read_only_disk_refuses_out() {
    let mut rig = Rig::with("read-only", true, 1);
    assert!(bit(rig.conn.offered, VIRTIO_BLK_F_RO));
    assert_eq!(rig.write(0, &fill(4, 1024), 1024), (1, S_IOERR));
    assert!(
        rig.disk.contents() == fresh(),
        "a read-only disk was written"
    );
    let (len, status, data) = rig.read(0, &[1024]);
    assert_eq!((len, status), (1025, S_OK));
    assert_eq!(data, fresh()[..1024]);
}

// An unknown request type is UNSUPP with used length 1 and its data buffer untouched.
#[test]
fn unknown_type_is_unsupp() {
    let mut rig = Rig::new("unsupp");
    for t in [2, 11, 0xdead] {
        let req = rig.ring.request(&rig.guest, t, 0, &[], &[512]);
        assert_eq!(rig.ring.complete(&[&req]), vec![1], "type {t}");
        assert_eq!(rig.guest.byte(req.status), S_UNSUPP, "type {t}");
        assert_eq!(req.data(&rig.guest), vec![SENTINEL; 512]);
    }
    assert!(rig.disk.contents() == fresh());
}

// Past-end, overflowing, partial-sector and short-header requests are IOERR; nothing changes.
#[test]
fn bad_ranges_are_ioerr_and_leave_the_disk_alone() {
    let mut rig = Rig::new("bad-ranges");
    let d512 = fill(5, 512);
    let d1024 = fill(6, 1024);
    let d500 = fill(7, 500);
    for (sector, data) in [
        (SECTORS, &d512[..]),
        (SECTORS - 1, &d1024[..]),
        (u64::MAX, &d512[..]),
        (u64::MAX / 512 + 1, &d512[..]),
        (0, &d500[..]),
    ] {
        assert_eq!(
            rig.write(sector, data, 512),
            (1, S_IOERR),
            "OUT of {} bytes at {sector}",
            data.len()
        );
    }
    for (sector, lens) in [
        (SECTORS, &[512u32][..]),
        (SECTORS - 1, &[512, 512][..]),
        (u64::MAX, &[512][..]),
        (0, &[700][..]),
    ] {
        let (len, status, data) = rig.read(sector, lens);
        assert_eq!((len, status), (1, S_IOERR), "IN of {lens:?} at {sector}");
        assert!(data.iter().all(|&b| b == SENTINEL), "IN at {sector} wrote");
    }
    // A header of 8 bytes.
    let g = &rig.guest;
    let status = g.status();
    let hdr = g.header(T_OUT, 0);
    rig.ring.offer(&[
        DriverBuffer::readable(hdr, 8),
        DriverBuffer::writable(status, 1),
    ]);
    rig.ring.kick();
    assert_eq!(rig.ring.wait_used(1)[0].1, 1);
    assert_eq!(g.byte(status), S_IOERR);
    assert!(rig.disk.contents() == fresh(), "a refused request wrote");
}

// A chain with no writable byte is used with length 0 and not served; the next one is.
#[test]
fn chain_without_writable_byte_is_used_with_len_zero() {
    let mut rig = Rig::new("no-status");
    let g = &rig.guest;
    let data = fill(8, 512);
    let a = rig.ring.offer(&[
        DriverBuffer::readable(g.header(T_OUT, 3), 16),
        DriverBuffer::readable(g.data(&data), 512),
    ]);
    let zero = g.status();
    let b = rig.ring.offer(&[
        DriverBuffer::readable(g.header(T_OUT, 4), 16),
        DriverBuffer::readable(g.data(&data), 512),
        DriverBuffer::writable(zero, 0),
    ]);
    rig.ring.kick();
    assert_eq!(
        rig.ring.wait_used(2),
        vec![(u32::from(a), 0), (u32::from(b), 0)]
    );
    assert_eq!(
        rig.guest.byte(zero),
        SENTINEL,
        "a 0-byte buffer was written"
    );
    assert!(
        rig.disk.contents() == fresh(),
        "a chain without status was served"
    );
    assert_eq!(rig.write(3, &data, 512), (1, S_OK));
    assert_eq!(rig.disk.sectors(3, 512), data);
}

/// A log memfd of `size` bytes, as QEMU makes it (sealable), and its region for
/// `SET_LOG_BASE`.
fn log_memfd(size: u64) -> (SharedMemory, VhostUserDirtyLogRegion) {
    let shm = SharedMemory::new("vhost-dirty-log", size).unwrap();
    let region = VhostUserDirtyLogRegion {
        mmap_size: size,
        mmap_offset: 0,
        mmap_handle: shm.as_fd().as_raw_fd(),
    };
    (shm, region)
}

/// The 4 KiB pages marked in the log.
fn marked(log: &SharedMemory) -> Vec<u64> {
    let file = File::from(log.as_fd().try_clone_to_owned().unwrap());
    let mut bytes = vec![0; log.size() as usize];
    file.read_exact_at(&mut bytes, 0).unwrap();
    let mut pages = Vec::new();
    for (i, b) in bytes.iter().enumerate() {
        for bit in 0..8 {
            if b & (1 << bit) != 0 {
                pages.push(i as u64 * 8 + bit);
            }
        }
    }
    pages
}

fn page_of(at: GuestAddress) -> u64 {
    at.0 / PAGE
}

/// Guest memory of 1 MiB is 256 pages: a log of 32 bytes; QEMU sizes it in 64-bit words
/// for chunks of 64 pages and adds one: 40 bytes.
const LOG_SIZE: u64 = 40;

/// A rig whose connection acks `features`, with the log set and vring 0 logging its used
/// ring when `vring_log`.
fn logging_rig(test: &str, features: u64, vring_log: bool) -> (Rig, SharedMemory) {
    let disk = Disk::new(test);
    let backend = disk.backend(false, 1);
    let guest = Guest::new(test);
    let mut conn = Conn::negotiated(&backend, |offered| driver_features(offered) | features);
    conn.set_memory(&[&guest]);
    let (log, region) = log_memfd(LOG_SIZE);
    conn.frontend.set_log_base(0, Some(region)).unwrap();
    let ring = conn.start_ring(&guest, 0, vring_log);
    (
        Rig {
            disk,
            guest,
            conn,
            ring,
        },
        log,
    )
}

/// An IN of two pages into a buffer of its own pages, with header and status on pages of
/// their own: (the data's first page, the status's page, the header's page).
fn logged_read(rig: &mut Rig) -> (u64, u64, u64) {
    let g = &rig.guest;
    let hdr = g.alloc_pages(1);
    g.write(hdr, &{
        let mut h = T_IN.to_le_bytes().to_vec();
        h.extend_from_slice(&[0; 4]);
        h.extend_from_slice(&8u64.to_le_bytes());
        h
    });
    let data = g.alloc_pages(2);
    // A page between the data and the status that nothing writes.
    let _gap = g.alloc_pages(1);
    let status = g.alloc_pages(1);
    g.write(status, &[SENTINEL]);
    rig.ring.offer(&[
        DriverBuffer::readable(hdr, 16),
        DriverBuffer::writable(data, 2 * PAGE as u32),
        DriverBuffer::writable(status, 1),
    ]);
    rig.ring.kick();
    assert_eq!(rig.ring.wait_used(1)[0].1, 2 * PAGE as u32 + 1);
    assert_eq!(g.byte(status), S_OK);
    assert_eq!(g.read(data, 2 * PAGE as usize), rig.disk.sectors(8, 8192));
    (page_of(data), page_of(status), page_of(hdr))
}

// With LOG_ALL an IN marks exactly its data pages, status page and used ring page.
#[test]
fn dirty_log_marks_data_pages_and_used_ring() {
    let (mut rig, log) = logging_rig("dirty-log", LOG_ALL, true);
    // Passes of the ring's thread that take no chain write nothing, and mark nothing.
    for _ in 0..2 {
        rig.ring.idle_pass(&mut rig.conn.frontend);
    }
    assert_eq!(marked(&log), Vec::<u64>::new(), "marked before any request");
    let (data, status, hdr) = logged_read(&mut rig);
    let (desc, avail, used) = ring_addrs(&rig.guest, 0);
    let mut want = vec![data, data + 1, status, page_of(used)];
    want.sort();
    assert_eq!(marked(&log), want);
    for clear in [hdr, data + 2, page_of(desc), page_of(avail)] {
        assert!(
            !want.contains(&clear),
            "layout: page {clear} expected clear"
        );
    }
}

// Without LOG_ALL nothing is marked, though the log is set and the vring has F_LOG.
#[test]
fn dirty_log_without_log_all_marks_nothing() {
    let (mut rig, log) = logging_rig("dirty-log-off", 0, true);
    logged_read(&mut rig);
    assert_eq!(marked(&log), Vec::<u64>::new());
}

// Logging switched on and off on a running ring, as QEMU does for migration, takes effect.
#[test]
fn dirty_log_switched_on_and_off_while_the_ring_runs() {
    let (mut rig, log) = logging_rig("dirty-log-live", 0, false);
    logged_read(&mut rig);
    assert_eq!(marked(&log), Vec::<u64>::new());
    let features = driver_features(rig.conn.offered);
    rig.conn.frontend.set_features(features | LOG_ALL).unwrap();
    rig.conn
        .frontend
        .set_vring_addr(0, &Conn::vring_config(&rig.guest, 0, true))
        .unwrap();
    let (data, status, _) = logged_read(&mut rig);
    let (_, _, used) = ring_addrs(&rig.guest, 0);
    let mut want = vec![data, data + 1, status, page_of(used)];
    want.sort();
    assert_eq!(marked(&log), want);
    // Migration over: logging off, the log cleared by the frontend.
    rig.conn.frontend.set_features(features).unwrap();
    rig.conn
        .frontend
        .set_vring_addr(0, &Conn::vring_config(&rig.guest, 0, false))
        .unwrap();
    File::from(log.as_fd().try_clone_to_owned().unwrap())
        .write_all_at(&[0; LOG_SIZE as usize], 0)
        .unwrap();
    logged_read(&mut rig);
    assert_eq!(marked(&log), Vec::<u64>::new());
}

/// One whole session on `backend`: memory, a running ring, requests of each kind, and the
/// frontend dropped; `serve_connection` has returned when this does.
fn full_session(disk: &Disk, backend: &Arc<Mutex<BlockBackend>>) {
    let guest = Guest::new("vhost-leak-guest");
    let mut conn = Conn::negotiated(backend, |o| driver_features(o) | LOG_ALL);
    conn.set_memory(&[&guest]);
    let (_log, region) = log_memfd(LOG_SIZE);
    conn.frontend.set_log_base(0, Some(region)).unwrap();
    let mut ring = conn.start_ring(&guest, 0, true);
    let data = fill(1, 1024);
    let w = ring.request(&guest, T_OUT, 7, &[&data[..]], &[]);
    let r = ring.request(&guest, T_IN, 7, &[], &[1024]);
    let f = ring.request(&guest, T_FLUSH, 0, &[], &[]);
    assert_eq!(ring.complete(&[&w, &r, &f]), vec![1, 1025, 1]);
    assert_eq!(r.data(&guest), data);
    assert_eq!(disk.sectors(7, 1024), data);
    assert!(
        maps_of("vhost-leak-guest") >= 2,
        "the backend does not map the guest"
    );
    let ended = conn.close();
    assert!(
        matches!(ended.error, vhost::vhost_user::Error::Disconnected),
        "{:?}",
        ended.error
    );
}

// A whole session leaves no descriptor or mapping behind once the Frontend is dropped.
#[test]
fn connection_leaves_no_descriptors_or_mappings() {
    run_isolated("connection_leaves_no_descriptors_or_mappings_alone");
}

// The counting half of connection_leaves_no_descriptors_or_mappings, alone in a child process.
#[test]
#[ignore = "run alone in its own process by connection_leaves_no_descriptors_or_mappings"]
fn connection_leaves_no_descriptors_or_mappings_alone() {
    if !isolated() {
        return;
    }
    let disk = Disk::new("leaks");
    let backend = disk.backend(false, 1);
    // Counted with the backend made and before any connection (the child runs without
    // glibc's cache of thread stacks, so joined threads leave nothing mapped).
    let (fds, maps) = (fd_count(), maps());
    for _ in 0..3 {
        full_session(&disk, &backend);
        assert_eq!(maps_of("vhost-leak-guest"), 0, "the guest is still mapped");
        assert_eq!(maps_of("vhost-dirty-log"), 0, "the log is still mapped");
        assert_eq!(fd_count(), fds, "descriptors leaked");
        assert_maps(&maps, 0, "after a session");
    }
}

// ADD_MEM_REG maps one more region (and serves from it), REM_MEM_REG unmaps it again.
#[test]
fn mem_slots_add_and_remove_follow_in_the_mappings() {
    run_isolated("mem_slots_add_and_remove_follow_in_the_mappings_alone");
}

// The counting half of mem_slots_add_and_remove_follow_in_the_mappings, in a child process.
#[test]
#[ignore = "run alone in its own process by mem_slots_add_and_remove_follow_in_the_mappings"]
fn mem_slots_add_and_remove_follow_in_the_mappings_alone() {
    if !isolated() {
        return;
    }
    let disk = Disk::new("mem-slots");
    let backend = disk.backend(false, 1);
    let guest = Guest::new("vhost-slot-main");
    let mut conn = Conn::standard(&backend);
    conn.frontend.add_mem_region(&guest.region()).unwrap();
    let mut ring = conn.start_ring(&guest, 0, false);
    // A request first: the ring's thread has started (and mapped its signal stack) before
    // the counts are taken.
    let r = ring.request(&guest, T_FLUSH, 0, &[], &[]);
    assert_eq!(ring.complete(&[&r]), vec![1]);
    // The extra region's memfd exists (and the test maps it) before the counts are taken.
    let extra = Guest::at(
        "vhost-slot-extra",
        0x100_0000,
        FAKE_VA + 0x100_0000,
        0x10_0000,
    );
    let (fds, maps) = (fd_count(), maps());
    assert_eq!(maps_of("vhost-slot-extra"), 1, "the test's own mapping");
    conn.frontend.add_mem_region(&extra.region()).unwrap();
    assert_eq!(
        maps_of("vhost-slot-extra"),
        2,
        "the backend did not map the region"
    );
    assert_maps(&maps, 1, "after ADD_MEM_REG");
    assert_eq!(fd_count(), fds + 1, "the backend keeps one descriptor");
    // A request whose data is in the added region.
    let data = fill(2, 4096);
    let buf = extra.data(&data);
    let hdr = guest.header(T_OUT, 50);
    let status = guest.status();
    let head = ring.offer(&[
        DriverBuffer::readable(hdr, 16),
        DriverBuffer::readable(buf, 4096),
        DriverBuffer::writable(status, 1),
    ]);
    ring.kick();
    assert_eq!(ring.wait_used(1), vec![(u32::from(head), 1)]);
    assert_eq!(guest.byte(status), S_OK);
    assert_eq!(disk.sectors(50, 4096), data);
    conn.frontend.remove_mem_region(&extra.region()).unwrap();
    assert_eq!(maps_of("vhost-slot-extra"), 1, "the region is still mapped");
    assert_maps(&maps, 0, "after REM_MEM_REG");
    assert_eq!(fd_count(), fds);
    // The ring, in the region that stayed, still serves; the removed one is refused now.
    let r = ring.request(&guest, T_IN, 50, &[], &[4096]);
    assert_eq!(ring.complete(&[&r]), vec![4097]);
    assert_eq!(r.data(&guest), data);
    let hdr = guest.header(T_OUT, 60);
    let status = guest.status();
    let head = ring.offer(&[
        DriverBuffer::readable(hdr, 16),
        DriverBuffer::readable(buf, 4096),
        DriverBuffer::writable(status, 1),
    ]);
    ring.kick();
    assert_eq!(ring.wait_used(1), vec![(u32::from(head), 0)]);
    assert_eq!(guest.byte(status), SENTINEL);
    assert_eq!(disk.sectors(60, 4096), fresh()[60 * 512..60 * 512 + 4096]);
    conn.close();
}
