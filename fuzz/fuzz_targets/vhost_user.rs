// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! libFuzzer's entry to [`vmm_memory_fuzz::vhost_user`]; run with
//! `cargo fuzz run vhost_user` from `fuzz/`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| vmm_memory_fuzz::vhost_user::run(data));
