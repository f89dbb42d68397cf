// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! virtio: the MMIO transport, split virtqueues (and their driver's side, for whatever plays
//! the guest), and the pmem device.

pub mod driver;
pub mod interrupt;
pub mod mmio;
pub mod pmem;
pub mod queue;
