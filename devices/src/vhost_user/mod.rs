// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! vhost-user: a virtio-blk device served to another process (QEMU, say) over a Unix socket.
//! The wire protocol is rust-vmm's `vhost` crate; the device is ours: the frontend's memory
//! becomes a [`GuestMemory`](vm_memory::GuestMemory) ([`memory`]), each vring is our split
//! [`Queue`](crate::virtio::queue::Queue) served by its own thread ([`vring`]), requests go to
//! a disk file ([`blk`]), and pages the backend writes are marked in the frontend's dirty log
//! during migration ([`log`]).
//!
//! ```no_run
//! use std::sync::{Arc, Mutex};
//! use devices::vhost_user::{backend::{serve_connection, BlockBackend}, blk::BlockDisk};
//!
//! let disk = std::fs::OpenOptions::new().read(true).write(true).open("disk.img").unwrap();
//! let backend = Arc::new(Mutex::new(BlockBackend::new(BlockDisk::new(disk, false, "disk0").unwrap(), 1)));
//! let listener = std::os::unix::net::UnixListener::bind("/tmp/vhost-blk.sock").unwrap();
//! for stream in listener.incoming() {
//!     let ended = serve_connection(stream.unwrap(), backend.clone());
//!     eprintln!("frontend gone: {}", ended.error);
//! }
//! ```

pub mod backend;
pub mod blk;
pub mod log;
pub mod memory;
pub mod vring;
