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
mod guest_snapshot;
mod run;
mod snapshot_run;
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
        /// Then run the snapshot guest: take a full and three incremental snapshot layers into
        /// this directory (which must hold none yet), restore them into a fresh VM, and let
        /// the guest check its memory there.
        #[arg(long)]
        snapshot: Option<PathBuf>,
        /// The dirty log mode the snapshot asks KVM for (it falls back if unavailable).
        #[arg(long, value_enum, default_value_t = DirtyLog::ManualProtect)]
        dirty_log: DirtyLog,
    },
    /// Measure our crates against raw code and the vm-memory crate, side by side.
    Bench {
        /// A shorter run (about a second) with fewer, shorter samples.
        #[arg(long)]
        quick: bool,
        /// Also write the results as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Run only these groups of rows (base, vm_memory, rust_vmm, hypervisor, tube,
        /// dirty, snapshot); may be given more than once.
        #[arg(long)]
        only: Vec<String>,
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

/// KVM's dirty log modes, as the CLI names them.
#[derive(Clone, Copy, clap::ValueEnum)]
enum DirtyLog {
    /// `KVM_GET_DIRTY_LOG`.
    Bitmap,
    /// Manual protection with `KVM_CLEAR_DIRTY_LOG`.
    ManualProtect,
    /// The per-vCPU dirty ring (4,096 entries).
    Ring,
}

impl From<DirtyLog> for hypervisor::DirtyLogMode {
    fn from(mode: DirtyLog) -> Self {
        match mode {
            DirtyLog::Bitmap => hypervisor::DirtyLogMode::Bitmap,
            DirtyLog::ManualProtect => hypervisor::DirtyLogMode::ManualProtect,
            DirtyLog::Ring => hypervisor::DirtyLogMode::Ring {
                entries: hypervisor::kvm::DEFAULT_RING_ENTRIES,
            },
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let result = match cli.command {
        Command::Run {
            pmem,
            snapshot,
            dirty_log,
        } => run::run(pmem.as_deref()).and_then(|ok| match snapshot {
            Some(dir) => {
                let kvm = hypervisor::kvm::Kvm::new().map_err(|e| e.to_string())?;
                Ok(snapshot_run::report(&kvm, &dir, dirty_log.into())? && ok)
            }
            None => Ok(ok),
        }),
        Command::Bench { quick, json, only } => bench::bench(quick, json.as_deref(), &only),
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
