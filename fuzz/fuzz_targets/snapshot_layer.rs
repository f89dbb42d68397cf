// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! libFuzzer's entry to [`vmm_memory_fuzz::snapshot_layer`]; run with
//! `cargo fuzz run snapshot_layer` from `fuzz/`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| vmm_memory_fuzz::snapshot_layer::run(data));
