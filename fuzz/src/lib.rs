// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! What a hostile driver or device can throw at the crates, as functions of raw bytes that
//! check the crates' promises and panic when one is broken. The cargo-fuzz targets in
//! `fuzz_targets/` call them with libFuzzer's inputs; `tests/randomized.rs` calls them with
//! seeded random inputs for a bounded time, from `tools/run_tests`.

pub mod guest_memory;
pub mod input;
pub mod mmio;
pub mod snapshot_layer;
pub mod vhost_user;
pub mod virtqueue;
pub mod vm_memory_request;
