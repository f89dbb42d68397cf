// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Device models for the memory half of a VMM: an [`MmioBus`](bus::MmioBus) that routes
//! guest MMIO exits, the virtio-mmio transport with split virtqueues, and virtio-pmem, whose
//! FLUSH travels device -> `vm_control` -> `Vm` -> msync.

pub mod bus;
pub mod virtio;
