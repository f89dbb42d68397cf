// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `vmm-memory vhost-user-blk`: serves a disk file to a vhost-user frontend (QEMU's
//! `-device vhost-user-blk`) on a Unix socket, one frontend at a time, until killed.

use std::fs::OpenOptions;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::{Arc, Mutex};

use devices::vhost_user::backend::{serve_connection, BlockBackend, MAX_QUEUES};
use devices::vhost_user::blk::BlockDisk;

/// Parses `--queues`: 1 to the backend's maximum.
pub fn queues_arg(s: &str) -> Result<u16, String> {
    let n: u16 = s
        .parse()
        .map_err(|e| format!("{s:?} is not a queue count: {e}"))?;
    if n == 0 || n > MAX_QUEUES {
        return Err(format!("{n} queues: the backend serves 1 to {MAX_QUEUES}"));
    }
    Ok(n)
}

/// Serves `disk` on a socket bound at `socket` (an old socket file there is replaced).
pub fn serve(socket: &Path, disk: &Path, read_only: bool, queues: u16) -> Result<bool, String> {
    let file = OpenOptions::new()
        .read(true)
        .write(!read_only)
        .open(disk)
        .map_err(|e| format!("cannot open the disk {}: {e}", disk.display()))?;
    let id = disk
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let disk_dev = BlockDisk::new(file, read_only, &id)
        .map_err(|e| format!("cannot read the size of {}: {e}", disk.display()))?;
    if disk_dev.sectors() == 0 {
        return Err(format!(
            "the disk {} is smaller than a sector",
            disk.display()
        ));
    }
    let sectors = disk_dev.sectors();
    let backend = Arc::new(Mutex::new(BlockBackend::new(disk_dev, queues)));
    if socket.exists() {
        std::fs::remove_file(socket)
            .map_err(|e| format!("cannot replace {}: {e}", socket.display()))?;
    }
    let listener = UnixListener::bind(socket)
        .map_err(|e| format!("cannot listen on {}: {e}", socket.display()))?;
    eprintln!(
        "vhost-user-blk: serving {} ({} sectors, {}, {queues} queue(s)) on {}",
        disk.display(),
        sectors,
        if read_only { "read-only" } else { "read-write" },
        socket.display()
    );
    for stream in listener.incoming() {
        let stream = stream.map_err(|e| format!("accept failed: {e}"))?;
        let ended = serve_connection(stream, backend.clone());
        eprintln!(
            "vhost-user-blk: frontend gone ({}), {} request(s) refused; waiting for the next",
            ended.error, ended.refused
        );
    }
    Ok(true)
}
