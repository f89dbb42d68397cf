// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `run`: the project's main job. A small VMM built from the workspace's crates boots a
//! built-in guest on KVM that drives a virtio-pmem device, and the host then checks, through
//! separate paths, what the guest did.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use base::{AsRawDescriptor, MemoryMappingBuilder, Protection, RawDescriptor, SharedMemory, Tube};
use devices::bus::MmioBus;
use devices::virtio::mmio::{MmioTransport, MMIO_SIZE};
use devices::virtio::pmem::Pmem;
use hypervisor::kvm::{Kvm, KvmVm};
use hypervisor::{dirty_log_bitmap_size, MemCacheType, Vcpu, VcpuExit, Vm};
use vm_control::{ClientPolicy, VmMemoryClient, VmMemoryServer};
use vm_memory::{GuestAddress, GuestMemory};
use vmm_sys_util::eventfd::EventFd;

use crate::guest::{self, Layout, PORT_FLUSH, PORT_STATUS, PORT_WINDOW, READ_ONLY_PROBE, RECORD};

const P: u64 = 4096;
/// RAM below a hole, holding the program, the rings and the request.
const RAM_LOW: (u64, u64) = (0, 0x10_0000);
/// RAM above the hole, whose pages the guest dirties (slot 1).
const RAM_HIGH: (u64, u64) = (0x20_0000, 0x20_0000);
const READ_ONLY: u64 = 0x80_0000;
const MMIO: u64 = 0xd000_0000;
const PMEM: u64 = 0x4000_0000;
/// The guest-physical space granted to the pmem device: from its window up to the MMIO
/// devices, which no slot may cover.
const PMEM_WINDOW: u64 = MMIO - PMEM;
const DIRTY_PAGES: [u32; 5] = [0x20_0000, 0x20_3000, 0x20_4000, 0x2f_f000, 0x3f_f000];
const READ_ONLY_FILL: u32 = 0x5a5a_5a5a;

struct Report {
    failures: Vec<String>,
}

impl Report {
    /// Runs and times one step, printing it.
    fn step<T>(&mut self, name: &str, f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
        let start = Instant::now();
        let result = f();
        let us = start.elapsed().as_secs_f64() * 1e6;
        let mark = if result.is_ok() { "ok" } else { "FAILED" };
        println!("  {name:<62} {mark:>6} {us:>10.1} us");
        result.map_err(|e| format!("{name}: {e}"))
    }

    /// A check: printed, and remembered if it fails, without stopping the run.
    fn check(&mut self, name: &str, ok: bool, detail: String) {
        let mark = if ok { "ok" } else { "FAILED" };
        println!("  {name:<62} {mark:>6}   {detail}");
        if !ok {
            self.failures.push(format!("{name}: {detail}"));
        }
    }
}

struct Exit(Arc<EventFd>);

impl AsRawDescriptor for Exit {
    fn as_raw_descriptor(&self) -> RawDescriptor {
        self.0.as_raw_fd()
    }
}

/// What the guest reported while it ran.
#[derive(Default)]
struct Observed {
    status: Option<u32>,
    window: Option<u32>,
    flush: Option<u32>,
    read_only_write: Option<(u64, u32)>,
    exits: usize,
}

/// Runs the main job. Returns whether every check passed.
pub fn run(pmem_path: Option<&Path>) -> Result<bool, String> {
    println!("vmm-memory run: a guest drives virtio-pmem on KVM; the host checks the result");
    let kvm = Kvm::new().map_err(|e| {
        format!("{e}\n/dev/kvm is needed: load kvm (kvm_intel or kvm_amd) and make /dev/kvm readable and writable by this user")
    })?;
    let mut r = Report {
        failures: Vec::new(),
    };

    let (path, _temp) = match pmem_path {
        Some(p) => (p.to_path_buf(), None),
        None => {
            let temp = r.step("create a temporary 3 MiB pmem backing file", || {
                let temp = vmm_sys_util::tempfile::TempFile::new_in(&std::env::temp_dir())
                    .map_err(|e| e.to_string())?;
                temp.as_file().set_len(3 << 20).map_err(|e| e.to_string())?;
                Ok(temp)
            })?;
            (temp.as_path().to_path_buf(), Some(temp))
        }
    };
    let file = r.step(&format!("open the backing file {}", path.display()), || {
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| e.to_string())
    })?;

    let mem = r.step("guest RAM: 1 MiB at 0, a hole, 2 MiB at 2 MiB", || {
        GuestMemory::new(&[
            (GuestAddress(RAM_LOW.0), RAM_LOW.1),
            (GuestAddress(RAM_HIGH.0), RAM_HIGH.1),
        ])
        .map_err(|e| e.to_string())
    })?;
    let vm = Arc::new(
        r.step("create the KVM VM (boot RAM becomes slots 0 and 1)", || {
            KvmVm::new(&kvm, mem.clone()).map_err(|e| e.to_string())
        })?,
    );
    r.step("log dirty pages of slot 1", || {
        vm.set_dirty_logging(1, true).map_err(|e| e.to_string())
    })?;

    let read_only_view = r.step("read-only region: 1 page at 8 MiB", || {
        let shm = SharedMemory::new("read-only", P).map_err(|e| e.to_string())?;
        let view = MemoryMappingBuilder::new(P as usize)
            .from_shared_memory(&shm)
            .build()
            .map_err(|e| e.to_string())?;
        view.write_obj(READ_ONLY_FILL, 0)
            .map_err(|e| e.to_string())?;
        let slot_mem = MemoryMappingBuilder::new(P as usize)
            .from_shared_memory(&shm)
            .protection(Protection::read())
            .build()
            .map_err(|e| e.to_string())?;
        vm.add_memory_region(
            GuestAddress(READ_ONLY),
            Box::new(slot_mem),
            true,
            false,
            MemCacheType::CacheCoherent,
        )
        .map_err(|e| e.to_string())?;
        Ok(view)
    })?;

    let exit = Arc::new(EventFd::new(libc::EFD_NONBLOCK).map_err(|e| e.to_string())?);
    let (client, server_thread) =
        r.step("start the vm_control server with the device's tube", || {
            let mut server = VmMemoryServer::new(vm.clone()).map_err(|e| e.to_string())?;
            let (client, server_end) = Tube::pair().map_err(|e| e.to_string())?;
            // The pmem device may register memory only in its own window.
            let grant = ClientPolicy::new().grant(GuestAddress(PMEM), PMEM_WINDOW);
            server
                .add_client(server_end, grant)
                .map_err(|e| e.to_string())?;
            let thread_exit = Exit(exit.clone());
            let thread = std::thread::spawn(move || server.run(&thread_exit));
            Ok((VmMemoryClient::new(client), thread))
        })?;

    let pmem = r.step(
        "virtio-pmem: register a 4 MiB arena, map the file, pad the rest",
        || Pmem::new(client, &file, PMEM).map_err(|e| e.to_string()),
    )?;
    println!(
        "    window {PMEM:#x}+{:#x} in slot {}",
        pmem.size(),
        pmem.slot()
    );
    let mut bus = MmioBus::new();
    r.step("put the device behind virtio-mmio on the bus", || {
        let transport = MmioTransport::new(Box::new(pmem), mem.clone());
        bus.insert(Arc::new(Mutex::new(transport)), MMIO, MMIO_SIZE)
            .map_err(|e| e.to_string())?;
        // The bus owns this window: no slot may ever cover it, by any path.
        let page = base::pagesize() as u64;
        vm.reserve_guest_range(GuestAddress(MMIO), MMIO_SIZE.next_multiple_of(page))
            .map_err(|e| e.to_string())
    })?;

    let layout = Layout {
        code: 0x1000,
        mmio: MMIO as u32,
        desc: 0x1_0000,
        avail: 0x1_1000,
        used: 0x1_2000,
        req: 0x1_3000,
        resp: 0x1_3010,
        queue_size: 16,
        dirty_pages: &DIRTY_PAGES,
        read_only: READ_ONLY as u32,
    };
    let mut vcpu = r.step(
        "assemble and load the guest program; vCPU 0 in 32-bit mode",
        || {
            let code = guest::program(&layout).map_err(|e| e.to_string())?;
            mem.write_all_at_addr(&code, GuestAddress(layout.code.into()))
                .map_err(|e| e.to_string())?;
            let vcpu = vm.create_vcpu(0).map_err(|e| e.to_string())?;
            vcpu.set_flat_protected_mode(layout.code)
                .map_err(|e| e.to_string())?;
            Ok(vcpu)
        },
    )?;

    let seen = r.step(
        "run the guest until hlt (device exits handled on the way)",
        || {
            let mut seen = Observed::default();
            loop {
                seen.exits += 1;
                match vcpu.run().map_err(|e| e.to_string())? {
                    VcpuExit::Hlt => return Ok(seen),
                    VcpuExit::Intr => {}
                    VcpuExit::Mmio {
                        address,
                        size,
                        data: Some(data),
                    } => {
                        if !bus.write(address, &data[..size]) && address == READ_ONLY {
                            let value = u32::from_le_bytes(data[..4].try_into().unwrap_or([0; 4]));
                            seen.read_only_write = Some((address, value));
                        }
                    }
                    VcpuExit::Mmio {
                        address,
                        size,
                        data: None,
                    } => {
                        let mut buf = [0u8; 8];
                        bus.read(address, &mut buf[..size]);
                        vcpu.set_data(&buf[..size]).map_err(|e| e.to_string())?;
                    }
                    VcpuExit::Io {
                        port,
                        data: Some(d),
                        ..
                    } => {
                        let value = u32::from_le_bytes(d);
                        match port {
                            PORT_STATUS => seen.status = Some(value),
                            PORT_WINDOW => seen.window = Some(value),
                            PORT_FLUSH => seen.flush = Some(value),
                            other => return Err(format!("unexpected port {other:#x}")),
                        }
                    }
                    other => return Err(format!("unexpected exit {other:?}")),
                }
            }
        },
    )?;
    println!("    {} exits", seen.exits);

    println!("checks:");
    r.check(
        "the device accepted the features (FEATURES_OK)",
        seen.status.is_some_and(|s| s & 8 != 0),
        format!("status {:?}", seen.status),
    );
    r.check(
        "the guest found the window in config space",
        seen.window == Some(PMEM as u32),
        format!("{:x?}", seen.window),
    );
    r.check(
        "the FLUSH completed with OK",
        seen.flush == Some(0),
        format!("response {:?}", seen.flush),
    );
    let on_disk = r.step("read the record back through a separate descriptor", || {
        let mut bytes = [0u8; 32];
        File::open(&path)
            .and_then(|f| f.read_exact_at(&mut bytes, 0))
            .map_err(|e| e.to_string())?;
        Ok(bytes)
    })?;
    let expected: Vec<u8> = RECORD.iter().flat_map(|w| w.to_le_bytes()).collect();
    r.check(
        "the record the guest wrote is in the file",
        on_disk[..] == expected[..],
        format!("{:02x?}", &on_disk[..8]),
    );

    let mut log = vec![0u8; dirty_log_bitmap_size(RAM_HIGH.1 as usize)];
    r.step("read the dirty log of slot 1", || {
        vm.get_dirty_log(1, &mut log).map_err(|e| e.to_string())
    })?;
    let dirty: Vec<u64> = (0..log.len() * 8)
        .filter(|&i| log[i / 8] & (1 << (i % 8)) != 0)
        .map(|i| RAM_HIGH.0 + i as u64 * P)
        .collect();
    let written: Vec<u64> = DIRTY_PAGES.iter().map(|&p| u64::from(p)).collect();
    r.check(
        "the dirty log holds exactly the pages the guest wrote",
        dirty == written,
        format!("{} pages: {dirty:x?}", dirty.len()),
    );
    r.check(
        "the read-only write was reported",
        seen.read_only_write == Some((READ_ONLY, READ_ONLY_PROBE)),
        format!("{:x?}", seen.read_only_write),
    );
    let kept = read_only_view.read_obj::<u32>(0).unwrap_or(0);
    r.check(
        "and did not land",
        kept == READ_ONLY_FILL,
        format!("{kept:#x}"),
    );

    exit.write(1).map_err(|e| e.to_string())?;
    server_thread
        .join()
        .map_err(|_| "the vm_control server panicked".to_owned())?
        .map_err(|e| e.to_string())?;
    if r.failures.is_empty() {
        println!("all checks passed");
    } else {
        println!("{} check(s) failed:", r.failures.len());
        for f in &r.failures {
            println!("  {f}");
        }
    }
    Ok(r.failures.is_empty())
}

/// A path argument for `--pmem`.
pub fn pmem_arg(s: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(s);
    if path.as_os_str().is_empty() {
        return Err("an empty path".into());
    }
    Ok(path)
}
