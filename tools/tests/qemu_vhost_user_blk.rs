// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The real client: unmodified QEMU (Debian's `qemu-system-x86`, TCG) boots Debian's cloud
//! kernel, whose own virtio-blk driver drives our vhost-user-blk backend, a separate
//! `vmm-memory vhost-user-blk` process. The guest's scripts are in `tools/guest`.

mod common;

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{guest_image_or_skip, our_backend, pattern, scratch_dir, Qemu};

const DISK_SIZE: u64 = 96 << 20;
/// The blocks `blk.sh` writes its patterns at (past the 64 MiB filesystem).
const PATTERN_BLOCKS: [u64; 4] = [16384, 16387, 20480, 24575];
const BOOT: Duration = Duration::from_secs(120);

/// A disk file that the test reads back (and the backend writes).
fn new_disk(path: &Path) -> File {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .unwrap()
}

fn dirty_pages(disk: &File, offset: u64, len: u64) -> u64 {
    base::page_cache::cachestat(disk.as_fd(), offset, len)
        .expect("cachestat(2) is needed to count dirty pages")
        .dirty
}

fn block(disk: &File, index: u64) -> Vec<u8> {
    let mut buf = vec![0u8; 4096];
    disk.read_exact_at(&mut buf, index * 4096).unwrap();
    buf
}

fn debugfs(disk: &Path, request: &str) -> Vec<u8> {
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(request)
        .arg(disk)
        .output()
        .expect("debugfs (e2fsprogs) is needed to read the guest's filesystem");
    assert!(out.status.success(), "debugfs {request} failed");
    out.stdout
}

/// Linux's virtio-blk writes patterns with O_DIRECT, reads them back, makes an ext4
/// filesystem and writes files on it, all through our backend; the host finds every byte in
/// the disk file, and `cachestat(2)` shows the guest's fsync made the pages durable: dirty
/// before it (the negative control), none after.
#[test]
fn debian_linux_writes_patterns_and_ext4_through_our_backend() {
    let test = "debian_linux_writes_patterns_and_ext4_through_our_backend";
    let Some(image) = guest_image_or_skip(test) else {
        return;
    };
    let _guest = common::one_guest_at_a_time();
    let dir = scratch_dir("qemu-blk");
    let disk_path = dir.join("disk.img");
    let disk = new_disk(&disk_path);
    disk.set_len(DISK_SIZE).unwrap();
    let socket = dir.join("blk.sock");
    let _backend = our_backend(&socket, &disk_path, &[]);
    let mut qemu = Qemu::boot(&image, &socket, "blk");

    qemu.wait_for("GUEST-UNSYNCED", BOOT);
    let patterns = (64 << 20, 32 << 20);
    let before = dirty_pages(&disk, patterns.0, patterns.1);
    assert!(
        before >= PATTERN_BLOCKS.len() as u64,
        "the negative control failed: {before} dirty pages before the flush, so the count \
         could not tell a skipped flush"
    );
    qemu.wait_for("GUEST-SYNCED", BOOT);
    let after = dirty_pages(&disk, 0, DISK_SIZE);
    assert_eq!(
        after, 0,
        "{after} pages still dirty after the guest's fsync returned"
    );

    qemu.wait_for("GUEST-READBACK-OK", BOOT);
    let md5 = qemu.wait_for("GUEST-MD5 ", BOOT);
    qemu.wait_for("GUEST-FS-OK", BOOT);
    qemu.wait_for("GUEST-DONE", BOOT);
    qemu.wait_exit(BOOT);

    for b in PATTERN_BLOCKS {
        assert_eq!(
            block(&disk, b),
            pattern(&format!("vmm-memory pattern at block {b} ")),
            "block {b} of the disk file"
        );
    }
    assert_eq!(
        debugfs(&disk_path, "cat /hello.txt"),
        b"hello from Debian's kernel on vmm-memory's vhost-user-blk\n"
    );
    let dumped = dir.join("random.bin");
    debugfs(
        &disk_path,
        &format!("dump /random.bin {}", dumped.display()),
    );
    let host_md5 = Command::new("md5sum").arg(&dumped).output().unwrap().stdout;
    let host_md5 = String::from_utf8_lossy(&host_md5);
    assert_eq!(
        md5.trim_start_matches("GUEST-MD5 "),
        host_md5.split_whitespace().next().unwrap(),
        "the file the guest wrote on ext4, read back by the host's debugfs"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The backend is killed (SIGKILL) in the middle of the guest's stream of write+fsync pairs:
/// every block whose fsync returned before the kill is in the disk file and is durable
/// (`cachestat(2)`: no dirty page among them).
#[test]
fn a_killed_backend_loses_no_write_whose_fsync_returned() {
    let test = "a_killed_backend_loses_no_write_whose_fsync_returned";
    let Some(image) = guest_image_or_skip(test) else {
        return;
    };
    let _guest = common::one_guest_at_a_time();
    let dir = scratch_dir("qemu-kill");
    let disk_path = dir.join("disk.img");
    let disk = new_disk(&disk_path);
    disk.set_len(16 << 20).unwrap();
    let socket = dir.join("blk.sock");
    let mut backend = our_backend(&socket, &disk_path, &[]);
    let mut qemu = Qemu::boot(&image, &socket, "kill");

    qemu.wait_for("GUEST-SYNCED 30", BOOT);
    backend.kill();
    // Every line printed before the kill is an fsync that returned before it.
    std::thread::sleep(Duration::from_millis(200));
    qemu.drain();
    qemu.process.kill();
    let last: u64 = qemu
        .seen
        .iter()
        .filter_map(|l| l.strip_prefix("GUEST-SYNCED "))
        .filter_map(|n| n.trim().parse().ok())
        .max()
        .unwrap();
    assert!(last >= 30);
    for b in 0..=last {
        assert_eq!(
            block(&disk, b),
            pattern(&format!("vmm-memory kill test block {b} ")),
            "block {b}, whose fsync returned before the kill"
        );
    }
    let dirty = dirty_pages(&disk, 0, (last + 1) * 4096);
    assert_eq!(dirty, 0, "{dirty} of the fsynced blocks are not durable");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Voluntary context switches of the backend's thread serving queue `index`: each kick it
/// wakes for is one.
fn queue_thread_wakeups(backend: u32, index: usize) -> u64 {
    let tasks = std::fs::read_dir(format!("/proc/{backend}/task")).unwrap();
    for task in tasks {
        let dir = task.unwrap().path();
        let name = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if name.trim() == format!("vublk-q{index}") {
            let status = std::fs::read_to_string(dir.join("status")).unwrap();
            return status
                .lines()
                .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap();
        }
    }
    panic!("the backend has no thread for queue {index}");
}

/// With `--queues 2` and two vCPUs, Linux's blk-mq sends requests down both queues; each is
/// served by its own thread (both wake many times), and every block reads back.
#[test]
fn two_vcpus_use_both_queues_of_our_backend() {
    let test = "two_vcpus_use_both_queues_of_our_backend";
    let Some(image) = guest_image_or_skip(test) else {
        return;
    };
    let _guest = common::one_guest_at_a_time();
    let dir = scratch_dir("qemu-mq");
    let disk_path = dir.join("disk.img");
    let disk = new_disk(&disk_path);
    disk.set_len(16 << 20).unwrap();
    let socket = dir.join("blk.sock");
    let backend = our_backend(&socket, &disk_path, &["--queues", "2"]);
    let mut qemu = Qemu::boot_with(&image, &socket, "mq", 2, 2);
    assert_eq!(qemu.wait_for("GUEST-QUEUES", BOOT), "GUEST-QUEUES 2");
    qemu.wait_for("GUEST-MQ-OK", BOOT);
    let pid = backend.child.id();
    for q in 0..2 {
        let wakeups = queue_thread_wakeups(pid, q);
        assert!(wakeups > 16, "queue {q}'s thread woke only {wakeups} times");
    }
    qemu.wait_for("GUEST-DONE", BOOT);
    qemu.wait_exit(BOOT);
    for b in 0..128 {
        assert_eq!(
            block(&disk, b),
            pattern(&format!("vmm-memory mq block {b} ")),
            "block {b}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
