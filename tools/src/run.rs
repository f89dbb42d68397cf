// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `run`: the project's main job. A small VMM built from the workspace's crates boots a
//! built-in guest on KVM that drives a virtio-pmem device, and the host then checks, through
//! separate paths, what the guest did.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base::{AsRawDescriptor, MemoryMappingBuilder, Protection, RawDescriptor, SharedMemory, Tube};
use devices::bus::MmioBus;
use devices::virtio::interrupt::Interrupt;
use devices::virtio::mmio::{MmioTransport, MMIO_SIZE};
use devices::virtio::pmem::Pmem;
use hypervisor::kvm::{Kvm, KvmVm};
use hypervisor::{dirty_log_bitmap_size, MemCacheType, Vm};
use vm_control::{ClientPolicy, VmMemoryClient, VmMemoryServer};
use vm_memory::{GuestAddress, GuestMemory};
use vmm_sys_util::eventfd::EventFd;

use crate::drive::{run_until_halt, Stopped};
use crate::guest::{
    self, Layout, PORT_DONE, PORT_FLUSH, PORT_INTERRUPT, PORT_STATUS, PORT_WINDOW, PORT_WRITTEN,
    READ_ONLY_PROBE, RECORD, VECTOR,
};

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
/// The device's interrupt: an IOAPIC pin above the PIC's 16, so it reaches the guest only
/// the way the guest programs it.
const PMEM_GSI: u32 = 16;

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
        println!("  {name:<72} {mark:>6} {us:>10.1} us");
        result.map_err(|e| format!("{name}: {e}"))
    }

    /// A check: printed, and remembered if it fails, without stopping the run.
    fn check(&mut self, name: &str, ok: bool, detail: String) {
        let mark = if ok { "ok" } else { "FAILED" };
        println!("  {name:<72} {mark:>6}   {detail}");
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

/// How long the guest may run before the VMM stops it.
const GUEST_DEADLINE: Duration = Duration::from_secs(10);

/// What the guest reported while it ran, and what the host saw meanwhile.
#[derive(Default)]
struct Observed {
    status: Option<u32>,
    window: Option<u32>,
    flush: Option<u32>,
    /// The interrupt status the guest's handler read, for each interrupt it took.
    interrupts: Vec<u32>,
    read_only_write: Option<(u64, u32)>,
    /// The backing file's dirty pages when the guest had written the record, and when its
    /// FLUSH had completed (or why they cannot be counted here).
    dirty_before: Option<Result<u64, String>>,
    dirty_after: Option<Result<u64, String>>,
    /// How long the notify that carries the FLUSH took: device, vm_control, msync, used ring.
    /// How long the vCPU spent in the notify's MMIO write.
    flush_time: Option<Duration>,
    /// When the guest said it wrote the record (just before it notifies).
    written_at: Option<Instant>,
    /// From then to the guest's report of the FLUSH's response, after its interrupt.
    flush_seen: Option<Duration>,
}

/// `Some(v)` as the value, `None` as "nothing".
fn shown<T: std::fmt::LowerHex>(v: Option<T>) -> String {
    v.map_or("nothing".to_owned(), |v| format!("{v:#x}"))
}

/// The file's dirty pages (with those under writeback), or why they cannot be counted.
fn dirty_pages(file: &File) -> Result<u64, String> {
    use std::os::fd::AsFd;
    if !base::page_cache::has_writeback(file.as_fd()).map_err(|e| e.to_string())? {
        return Err("the file is on tmpfs, which keeps pages dirty and has no writeback".into());
    }
    let stat = base::page_cache::cachestat(file.as_fd(), 0, 0).map_err(|e| e.to_string())?;
    Ok(stat.dirty + stat.writeback)
}

/// A directory for the temporary pmem file where its writeback can be observed: the system's
/// temporary directory unless it is tmpfs, else the current directory.
fn scratch_dir() -> PathBuf {
    let tmp = std::env::temp_dir();
    let on_disk = |dir: &Path| {
        File::open(dir)
            .ok()
            .and_then(|d| base::page_cache::has_writeback(std::os::fd::AsFd::as_fd(&d)).ok())
            .unwrap_or(false)
    };
    if on_disk(&tmp) {
        tmp
    } else {
        std::env::current_dir().unwrap_or(tmp)
    }
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
                let temp = vmm_sys_util::tempfile::TempFile::new_in(&scratch_dir())
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
    let file_len = file.metadata().map_err(|e| e.to_string())?.len();
    // The window is the file rounded up to 2 MiB; it must end below the MMIO devices.
    let window = file_len.div_ceil(2 << 20) * (2 << 20);
    // At least a page: the guest writes its record in the file's first page, and a shorter
    // file would take it only partly, the rest landing past the file's end.
    if file_len < P || window > PMEM_WINDOW {
        return Err(format!(
            "the pmem file {} holds {file_len:#x} bytes; it must hold between {P:#x} (a page, where the guest writes its record) and {PMEM_WINDOW:#x} bytes, so that its window at {PMEM:#x} ends before the devices at {MMIO:#x}",
            path.display()
        ));
    }
    if pmem_path.is_some() {
        println!(
            "  (the guest writes its {}-byte record over the start of {})",
            RECORD.len() * 4,
            path.display()
        );
    }

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
    r.step("create the in-kernel irqchip (LAPIC, IOAPIC)", || {
        vm.create_irq_chip().map_err(|e| e.to_string())
    })?;
    r.step(
        "log dirty pages of slot 1 (and take its baseline harvest)",
        || {
            vm.set_dirty_logging(1, true).map_err(|e| e.to_string())?;
            // Logging starts with every page dirty; the guest's own pages come after this.
            vm.harvest_dirty_log().map_err(|e| e.to_string())?.commit();
            Ok(())
        },
    )?;

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
        &format!(
            "virtio-pmem: register a {} KiB arena, map the file's {} KiB, pad the rest",
            window >> 10,
            file_len.div_ceil(1024)
        ),
        || Pmem::new(client, &file, PMEM).map_err(|e| e.to_string()),
    )?;
    println!(
        "    window {PMEM:#x}+{:#x} in slot {}",
        pmem.size(),
        pmem.slot()
    );
    let mut bus = MmioBus::new();
    r.step(
        &format!("put the device behind virtio-mmio on the bus, interrupt on GSI {PMEM_GSI}"),
        || {
            let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| e.to_string())?;
            // KVM turns each write to the eventfd into an edge on the GSI.
            vm.register_irqfd(PMEM_GSI, &irq, None)
                .map_err(|e| e.to_string())?;
            // Shared, so the device answers its FLUSH on its own thread: the vCPU goes back
            // to the guest, which waits for the interrupt.
            let transport = MmioTransport::new(Box::new(pmem), mem.clone())
                .with_interrupt(Interrupt::new(irq))
                .shared();
            bus.insert(transport, MMIO, MMIO_SIZE)
                .map_err(|e| e.to_string())?;
            // The bus owns this window: no slot may ever cover it, by any path.
            let page = base::pagesize() as u64;
            vm.reserve_guest_range(GuestAddress(MMIO), MMIO_SIZE.next_multiple_of(page))
                .map_err(|e| e.to_string())
        },
    )?;

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
        gdt: 0x500,
        idt: 0x800,
        stack: 0xf000,
        gsi: PMEM_GSI,
    };
    let mut vcpu = r.step(
        "assemble and load the guest program; vCPU 0 in 32-bit mode",
        || {
            let code = guest::program(&layout)?;
            mem.write_all_at_addr(&code, GuestAddress(layout.code.into()))
                .map_err(|e| e.to_string())?;
            let vcpu = vm.create_vcpu(0).map_err(|e| e.to_string())?;
            vcpu.set_flat_protected_mode(layout.code)
                .map_err(|e| e.to_string())?;
            Ok(vcpu)
        },
    )?;

    let mut seen = Observed::default();
    let stopped = r.step(
        &format!(
            "run the guest until it is done, within {GUEST_DEADLINE:?} (device exits handled)"
        ),
        || {
            // The queue's notify register: its write carries the FLUSH through.
            let notify = MMIO + 0x050;
            run_until_halt(
                &mut vcpu,
                &bus,
                GUEST_DEADLINE,
                Some(notify),
                |port, bytes| {
                    let value = u32::from_le_bytes(
                        bytes
                            .get(..4)
                            .and_then(|b| b.try_into().ok())
                            .unwrap_or([0; 4]),
                    );
                    match port {
                        PORT_STATUS => seen.status = Some(value),
                        PORT_WINDOW => seen.window = Some(value),
                        PORT_WRITTEN => {
                            seen.dirty_before = Some(dirty_pages(&file));
                            seen.written_at = Some(Instant::now());
                        }
                        PORT_INTERRUPT => seen.interrupts.push(value),
                        PORT_FLUSH => {
                            seen.flush_seen = seen.written_at.map(|t| t.elapsed());
                            seen.flush = Some(value);
                            seen.dirty_after = Some(dirty_pages(&file));
                        }
                        PORT_DONE => return Ok(true),
                        other => {
                            return Err(format!(
                                "the guest wrote to port {other:#x}, which nothing answers"
                            ))
                        }
                    }
                    Ok(false)
                },
                |address, bytes| {
                    // The write to the read-only region: expected, and reported.
                    if address == READ_ONLY && bytes.len() == 4 {
                        let value = u32::from_le_bytes(bytes.try_into().unwrap_or([0; 4]));
                        seen.read_only_write = Some((address, value));
                        return true;
                    }
                    false
                },
            )
        },
    )?;
    let (Stopped::Halted { exits, timed } | Stopped::Done { exits, timed, .. }) = stopped;
    seen.flush_time = timed;
    println!("    {exits} exits");
    for (what, t) in [
        (
            "  the FLUSH as the guest saw it: notify -> msync -> used -> interrupt",
            seen.flush_seen,
        ),
        (
            "  of which the vCPU spent in the notify (the msync is on the device's thread)",
            seen.flush_time,
        ),
    ] {
        if let Some(t) = t {
            println!("  {what:<72} {:>6} {:>10.1} us", "", t.as_secs_f64() * 1e6);
        }
    }

    println!("checks:");
    r.check(
        "the device accepted the features (FEATURES_OK)",
        seen.status.is_some_and(|s| s & 8 != 0),
        format!("status {}", shown(seen.status)),
    );
    r.check(
        "the guest found the window in config space",
        seen.window == Some(PMEM as u32),
        format!("window {}", shown(seen.window)),
    );
    r.check(
        &format!("the guest waited (sti; hlt) for the used-buffer interrupt, vector {VECTOR:#x}"),
        seen.interrupts.first().is_some_and(|s| s & 1 != 0),
        format!(
            "{} interrupt(s), status {}",
            seen.interrupts.len(),
            shown(seen.interrupts.first().copied())
        ),
    );
    r.check(
        "the FLUSH completed with OK",
        seen.flush == Some(0),
        format!("response {}", shown(seen.flush)),
    );
    // The proof that the FLUSH reached the disk: the file's dirty pages, counted by the
    // kernel (a read through another descriptor would share the page cache and prove
    // nothing), are more than 0 once the record is written and 0 once the FLUSH is done.
    match (&seen.dirty_before, &seen.dirty_after) {
        (Some(Ok(before)), Some(Ok(after))) => r.check(
            "the FLUSH made the record durable (dirty pages, by cachestat)",
            *before > 0 && *after == 0,
            format!("{before} dirty after the write, {after} after the FLUSH"),
        ),
        // Without the count nothing proves the FLUSH did anything: not a pass.
        (Some(Err(why)), _) | (_, Some(Err(why))) => r.check(
            "the FLUSH made the record durable (not proven: put the file on a disk)",
            false,
            why.clone(),
        ),
        _ => r.check(
            "the FLUSH made the record durable (dirty pages, by cachestat)",
            false,
            "the guest never reported the write and the FLUSH".into(),
        ),
    }
    let on_disk = r.step(
        "read the record back (its bytes; durability is above)",
        || {
            let mut bytes = [0u8; 32];
            File::open(&path)
                .and_then(|f| f.read_exact_at(&mut bytes, 0))
                .map_err(|e| e.to_string())?;
            Ok(bytes)
        },
    )?;
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
        match seen.read_only_write {
            Some((addr, value)) => format!("{value:#x} at {addr:#x}"),
            None => "nothing".into(),
        },
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether KVM can be used; says why not, or fails where it is required.
    fn kvm_or_skip(test: &str) -> bool {
        match Kvm::new() {
            Ok(_) => true,
            Err(e) => {
                if std::env::var_os("VMM_REQUIRE_KVM").is_some_and(|v| v == "1") {
                    panic!("KVM is required here but unusable: {e}");
                }
                println!("KVM-SKIP {test}: {e}");
                false
            }
        }
    }

    fn file_of(dir: &Path, len: u64) -> vmm_sys_util::tempfile::TempFile {
        let temp = vmm_sys_util::tempfile::TempFile::new_in(dir).unwrap();
        temp.as_file().set_len(len).unwrap();
        temp
    }

    #[test]
    fn pmem_files_that_cannot_work_are_refused_before_the_guest_runs() {
        if !kvm_or_skip("pmem_refusals") {
            return;
        }
        let dir = scratch_dir();
        // Empty, shorter than a page (the record would land partly past the end), and
        // larger than the window below the devices (a sparse file costs nothing).
        for len in [0, 1, 31, P - 1, PMEM_WINDOW + 1, 3 << 30] {
            let temp = file_of(&dir, len);
            let before = std::fs::read(temp.as_path()).unwrap_or_default();
            let err = run(Some(temp.as_path())).unwrap_err();
            assert!(
                err.contains(&format!("holds {len:#x} bytes"))
                    && err.contains("must hold between 0x1000"),
                "{len:#x}: {err}"
            );
            if len < P {
                assert_eq!(std::fs::read(temp.as_path()).unwrap(), before, "{len:#x}");
            }
        }
        let err = run(Some(&dir.join("no-such-pmem-file"))).unwrap_err();
        assert!(err.contains("open the backing file"), "{err}");
    }

    #[test]
    fn a_durability_that_cannot_be_counted_is_not_a_pass() {
        if !kvm_or_skip("pmem_on_tmpfs") {
            return;
        }
        let shm = Path::new("/dev/shm");
        if !shm.is_dir() {
            println!("SKIP pmem_on_tmpfs: no /dev/shm here");
            return;
        }
        // tmpfs keeps pages dirty and has no writeback: cachestat cannot prove the FLUSH.
        let temp = file_of(shm, 2 * P);
        assert_eq!(run(Some(temp.as_path())), Ok(false));
        // A page-sized file on a disk works, and its first bytes now hold the record.
        let temp = file_of(&scratch_dir(), P);
        assert_eq!(run(Some(temp.as_path())), Ok(true));
        let mut head = [0u8; 4];
        File::open(temp.as_path())
            .unwrap()
            .read_exact_at(&mut head, 0)
            .unwrap();
        assert_eq!(u32::from_le_bytes(head), RECORD[0]);
    }
}
