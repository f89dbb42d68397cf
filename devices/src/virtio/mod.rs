// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! virtio: the MMIO transport, split virtqueues, and the pmem device.

pub mod interrupt;
pub mod mmio;
pub mod pmem;
pub mod queue;
