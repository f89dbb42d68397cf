// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Device models for the memory half of a VMM: an [`MmioBus`](bus::MmioBus) that routes
//! guest MMIO exits, the virtio-mmio transport with split virtqueues, and virtio-pmem, whose
//! FLUSH travels device -> `vm_control` -> `Vm` -> msync; and a vhost-user-blk backend, which
//! serves a disk to another process's guest (QEMU's) on the same queue code.

pub mod bus;
pub mod vhost_user;
pub mod virtio;
