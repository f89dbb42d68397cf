// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `vmm-memory`: the project's CLI.
//!
//! - `run` is the main job: a guest on KVM writes to a file-backed virtio-pmem device and
//!   flushes, and the flush travels device -> vm_control -> Vm -> msync; the host verifies
//!   the file, the dirty log and a refused read-only write, and reports each step's cost.
//! - `bench` measures the crates next to raw memcpy, syscalls and ioctls and the vm-memory
//!   crate, in one run, and prints the ratios.
//! - `vhost-user-blk` serves a disk file to a vhost-user frontend such as QEMU.

mod bench;
mod drive;
mod guest;
#[allow(dead_code)] // used by the snapshot tests and `run --snapshot`, coming next
mod guest_snapshot;
mod run;
mod vhost_user_blk;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "vmm-memory",
    about = "The memory half of a VMM, run and measured"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot the built-in guest with RAM, a read-only region and a virtio-pmem disk, and check
    /// what reached the file, what the dirty log saw, and what was refused.
    Run {
        /// Backing file for the pmem disk (a temporary 3 MiB file by default). Its first 32
        /// bytes are overwritten.
        #[arg(long, value_parser = run::pmem_arg)]
        pmem: Option<PathBuf>,
    },
    /// Measure our crates against raw code and the vm-memory crate, side by side.
    Bench {
        /// A shorter run (about a second) with fewer, shorter samples.
        #[arg(long)]
        quick: bool,
        /// Also write the results as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Serve a disk file as a vhost-user-blk device on a Unix socket (QEMU:
    /// `-chardev socket,path=PATH,id=c -device vhost-user-blk-pci,chardev=c`), until killed.
    VhostUserBlk {
        /// Where to listen.
        #[arg(long)]
        socket: PathBuf,
        /// The disk file (its size, in whole sectors, is the disk's).
        #[arg(long)]
        disk: PathBuf,
        /// Answer writes with IOERR and open the file read-only.
        #[arg(long)]
        read_only: bool,
        /// Queues to offer (the driver may use fewer).
        #[arg(long, default_value_t = 1, value_parser = vhost_user_blk::queues_arg)]
        queues: u16,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let result = match cli.command {
        Command::Run { pmem } => run::run(pmem.as_deref()),
        Command::Bench { quick, json } => bench::bench(quick, json.as_deref()),
        Command::VhostUserBlk {
            socket,
            disk,
            read_only,
            queues,
        } => vhost_user_blk::serve(&socket, &disk, read_only, queues),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
