// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! virtio-mmio and virtio-pmem driven as a guest driver would drive them: registers through
//! the bus, rings written into guest memory.

use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use base::{AsRawDescriptor, MemoryMappingBuilder, RawDescriptor, Tube};
use devices::bus::{BusDevice, MmioBus};
use devices::virtio::mmio::{status, MmioTransport, VirtioDevice, MMIO_MAGIC, MMIO_SIZE};
use devices::virtio::pmem::{
    Error as PmemError, Pmem, VIRTIO_ID_PMEM, VIRTIO_PMEM_RESP_TYPE_EIO, VIRTIO_PMEM_RESP_TYPE_OK,
};
use devices::virtio::queue::{Queue, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE};
use hypervisor::kvm::{Kvm, KvmVm};
use hypervisor::Vm;
use vm_control::{ClientPolicy, VmMemoryClient, VmMemoryServer};
use vm_memory::{GuestAddress, GuestMemory};
use vmm_sys_util::eventfd::EventFd;

const MMIO_BASE: u64 = 0xd000_0000;
const PMEM_GPA: u64 = 0x4000_0000;
const DESC: u64 = 0x1_0000;
const AVAIL: u64 = 0x1_1000;
const USED: u64 = 0x1_2000;
const REQ: u64 = 0x1_3000;
const RESP: u64 = 0x1_3010;
const QSIZE: u16 = 16;

fn kvm_or_skip(test: &str) -> Option<Kvm> {
    match Kvm::new() {
        Ok(kvm) => Some(kvm),
        Err(e) => {
            if std::env::var_os("VMM_REQUIRE_KVM").is_some_and(|v| v == "1") {
                panic!("{test}: KVM is required here but unusable: {e}");
            }
            println!("KVM-SKIP {test}: {e}");
            None
        }
    }
}

struct Exit(Arc<EventFd>);

impl AsRawDescriptor for Exit {
    fn as_raw_descriptor(&self) -> RawDescriptor {
        self.0.as_raw_fd()
    }
}

/// A VM with 1 MiB of RAM, a vm_control server on a thread, and a pmem device on a bus.
struct Rig {
    mem: GuestMemory,
    bus: MmioBus,
    exit: Arc<EventFd>,
    server: Option<std::thread::JoinHandle<()>>,
}

impl Rig {
    fn new(kvm: &Kvm, file: &std::fs::File) -> Rig {
        let mem = GuestMemory::new(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let vm = Arc::new(KvmVm::new(kvm, mem.clone()).unwrap());
        Rig::on(vm, mem, file)
    }

    /// The rig over any `Vm` (a KVM VM, or one that injects faults).
    fn on<V: Vm + 'static>(vm: Arc<V>, mem: GuestMemory, file: &std::fs::File) -> Rig {
        let mut server = VmMemoryServer::new(vm).unwrap();
        let (client, server_end) = Tube::pair().unwrap();
        // The device may register only its own window.
        let grant = ClientPolicy::new().grant(GuestAddress(PMEM_GPA), 1 << 30);
        server.add_client(server_end, grant).unwrap();
        let exit = Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let thread_exit = Exit(exit.clone());
        let server = std::thread::spawn(move || server.run(&thread_exit).unwrap());
        let pmem = Pmem::new(VmMemoryClient::new(client), file, PMEM_GPA).unwrap();
        let mut bus = MmioBus::new();
        let transport = MmioTransport::new(Box::new(pmem), mem.clone()).shared();
        bus.insert(transport, MMIO_BASE, MMIO_SIZE).unwrap();
        Rig {
            mem,
            bus,
            exit,
            server: Some(server),
        }
    }

    /// Stops the vm_control server: the device's requests fail from now on.
    fn stop_server(&mut self) {
        self.exit.write(1).unwrap();
        self.server.take().unwrap().join().unwrap();
    }

    fn read32(&self, offset: u64) -> u32 {
        let mut data = [0u8; 4];
        assert!(self.bus.read(MMIO_BASE + offset, &mut data));
        u32::from_le_bytes(data)
    }

    fn write32(&self, offset: u64, value: u32) {
        assert!(self.bus.write(MMIO_BASE + offset, &value.to_le_bytes()));
    }

    /// The driver's side of initialisation, with queue 0 at the usual addresses.
    fn handshake(&self) {
        assert_eq!(self.read32(0x000), MMIO_MAGIC);
        assert_eq!(self.read32(0x004), 2);
        assert_eq!(self.read32(0x008), VIRTIO_ID_PMEM);
        self.write32(0x070, status::ACKNOWLEDGE);
        self.write32(0x070, status::ACKNOWLEDGE | status::DRIVER);
        self.write32(0x014, 1);
        assert_eq!(self.read32(0x010) & 1, 1, "VIRTIO_F_VERSION_1 offered");
        self.write32(0x024, 1);
        self.write32(0x020, 1);
        self.write32(
            0x070,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
        assert_ne!(
            self.read32(0x070) & status::FEATURES_OK,
            0,
            "features accepted"
        );
        self.write32(0x030, 0);
        assert_eq!(self.read32(0x034), 256);
        self.write32(0x038, QSIZE.into());
        for (low, addr) in [(0x080, DESC), (0x090, AVAIL), (0x0a0, USED)] {
            self.write32(low, addr as u32);
            self.write32(low + 4, (addr >> 32) as u32);
        }
        self.write32(0x044, 1);
        assert_eq!(self.read32(0x044), 1, "queue accepted");
        self.write32(
            0x070,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
        );
    }

    fn desc(&self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = GuestAddress(DESC + 16 * u64::from(index));
        self.mem.write_obj_at_addr(addr, at).unwrap();
        self.mem
            .write_obj_at_addr(len, at.unchecked_add(8))
            .unwrap();
        self.mem
            .write_obj_at_addr(flags, at.unchecked_add(12))
            .unwrap();
        self.mem
            .write_obj_at_addr(next, at.unchecked_add(14))
            .unwrap();
    }

    fn avail_idx(&self) -> u16 {
        self.mem
            .read_obj_from_addr(GuestAddress(AVAIL + 2))
            .unwrap()
    }

    /// Offers chain `head` and notifies; returns the used element the device wrote.
    fn offer(&self, head: u16) -> (u32, u32) {
        let idx = self.avail_idx();
        self.mem
            .write_obj_at_addr(head, GuestAddress(AVAIL + 4 + 2 * u64::from(idx % QSIZE)))
            .unwrap();
        self.mem
            .write_obj_at_addr(idx.wrapping_add(1), GuestAddress(AVAIL + 2))
            .unwrap();
        self.write32(0x050, 0);
        // A FLUSH is answered by the device's thread; anything else before the notify
        // returns.
        let waiting = std::time::Instant::now();
        loop {
            let used_idx: u16 = self.mem.read_obj_from_addr(GuestAddress(USED + 2)).unwrap();
            if used_idx == idx.wrapping_add(1) {
                break;
            }
            assert!(
                waiting.elapsed() < std::time::Duration::from_secs(10),
                "chain {head} was never returned"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let elem = GuestAddress(USED + 4 + 8 * u64::from(idx % QSIZE));
        (
            self.mem.read_obj_from_addr(elem).unwrap(),
            self.mem.read_obj_from_addr(elem.unchecked_add(4)).unwrap(),
        )
    }

    /// Lays out a well-formed FLUSH at head 0 (its response reads 0xff until answered).
    fn flush_chain(&self) {
        self.mem.write_obj_at_addr(0u32, GuestAddress(REQ)).unwrap();
        self.mem
            .write_obj_at_addr(0xffu32, GuestAddress(RESP))
            .unwrap();
        self.desc(0, REQ, 4, VIRTQ_DESC_F_NEXT, 1);
        self.desc(1, RESP, 4, VIRTQ_DESC_F_WRITE, 0);
    }

    /// Offers chain `head` and notifies, without waiting for the answer; returns the
    /// available index it took.
    fn notify(&self, head: u16) -> u16 {
        let idx = self.avail_idx();
        self.mem
            .write_obj_at_addr(head, GuestAddress(AVAIL + 4 + 2 * u64::from(idx % QSIZE)))
            .unwrap();
        self.mem
            .write_obj_at_addr(idx.wrapping_add(1), GuestAddress(AVAIL + 2))
            .unwrap();
        self.write32(0x050, 0);
        idx
    }

    fn used_idx(&self) -> u16 {
        self.mem.read_obj_from_addr(GuestAddress(USED + 2)).unwrap()
    }

    /// A well-formed FLUSH at head 0; returns the device's response code.
    fn flush(&self) -> u32 {
        self.flush_chain();
        assert_eq!(self.offer(0), (0, 4));
        assert_eq!(self.read32(0x060) & 1, 1, "interrupt raised");
        self.write32(0x064, 1);
        assert_eq!(self.read32(0x060), 0, "interrupt acknowledged");
        self.mem.read_obj_from_addr(GuestAddress(RESP)).unwrap()
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if self.server.is_some() {
            self.stop_server();
        }
    }
}

/// A file of `len` bytes on the build directory's disk filesystem (where dirty pages are
/// written back, so `cachestat` can tell a flushed file from an unflushed one).
fn backing_file(len: u64) -> std::fs::File {
    let dir = std::env::var_os("CARGO_TARGET_TMPDIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let file = vmm_sys_util::tempfile::TempFile::new_in(&dir)
        .unwrap()
        .into_file();
    file.set_len(len).unwrap();
    file
}

/// The file's dirty pages (and those under writeback), or why they cannot be counted here.
fn dirty_pages(file: &std::fs::File) -> Result<u64, String> {
    use std::os::fd::AsFd;
    if !base::page_cache::has_writeback(file.as_fd()).map_err(|e| e.to_string())? {
        return Err("the build directory is on tmpfs, which has no writeback".into());
    }
    match base::page_cache::cachestat(file.as_fd(), 0, 0) {
        Ok(stat) => Ok(stat.dirty + stat.writeback),
        Err(e) => Err(e.to_string()),
    }
}

#[test]
fn flush_reaches_the_file_and_config_reports_the_window() {
    let Some(kvm) = kvm_or_skip("pmem_flush") else {
        return;
    };
    // Not a whole number of 2 MiB: the window rounds up and the rest is padding.
    let file = backing_file((3 << 20) + 100);
    let rig = Rig::new(&kvm, &file);
    rig.handshake();
    let mut config = [0u8; 16];
    assert!(rig.bus.read(MMIO_BASE + 0x100, &mut config[..8]));
    assert!(rig.bus.read(MMIO_BASE + 0x108, &mut config[8..]));
    assert_eq!(
        u64::from_le_bytes(config[..8].try_into().unwrap()),
        PMEM_GPA
    );
    assert_eq!(u64::from_le_bytes(config[8..].try_into().unwrap()), 4 << 20);
    // What the guest writes through the window lands in the file's page cache, dirty; the
    // flush makes it durable, which only a dirty-page count can show (reading the file back
    // through another descriptor shares the page cache).
    let view = MemoryMappingBuilder::new((3 << 20) + 100)
        .from_file(&file)
        .build()
        .unwrap();
    view.write_slice(b"persistent record", 0x1234).unwrap();
    let before = dirty_pages(&file);
    if let Ok(dirty) = &before {
        assert!(
            *dirty > 0,
            "the write left no dirty page: the check could not fail"
        );
    }
    assert_eq!(rig.flush(), VIRTIO_PMEM_RESP_TYPE_OK);
    match (before, dirty_pages(&file)) {
        (Ok(_), Ok(after)) => assert_eq!(after, 0, "pages still dirty after FLUSH"),
        (Err(why), _) | (_, Err(why)) => println!("SKIP the dirty-page check: {why}"),
    }
    let mut back = [0u8; 17];
    file.read_exact_at(&mut back, 0x1234).unwrap();
    assert_eq!(&back, b"persistent record");
    // Again, to prove the ring indexes wrap and advance.
    for _ in 0..40 {
        assert_eq!(rig.flush(), VIRTIO_PMEM_RESP_TYPE_OK);
    }
}

/// A KVM VM whose msync fails with EIO when `fail` is set, as on a disk that reports a write
/// error (the device must answer its FLUSH with EIO), and takes `delay_ms` first, as on a
/// slow disk or a stuck network filesystem.
struct FailingMsync {
    inner: KvmVm,
    fail: std::sync::atomic::AtomicBool,
    delay_ms: std::sync::atomic::AtomicU64,
    /// msyncs begun so far.
    started: std::sync::atomic::AtomicU64,
}

impl Vm for FailingMsync {
    fn check_capability(&self, cap: hypervisor::VmCap) -> bool {
        self.inner.check_capability(cap)
    }
    fn get_memory(&self) -> &GuestMemory {
        self.inner.get_memory()
    }
    fn add_memory_region(
        &self,
        guest_addr: GuestAddress,
        mem: Box<dyn base::MappedRegion>,
        read_only: bool,
        log_dirty_pages: bool,
        cache: hypervisor::MemCacheType,
    ) -> hypervisor::Result<hypervisor::MemSlot> {
        self.inner
            .add_memory_region(guest_addr, mem, read_only, log_dirty_pages, cache)
    }
    fn msync_memory_region(
        &self,
        slot: hypervisor::MemSlot,
        offset: usize,
        size: usize,
    ) -> hypervisor::Result<()> {
        self.started
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let delay = self.delay_ms.load(std::sync::atomic::Ordering::SeqCst);
        std::thread::sleep(std::time::Duration::from_millis(delay));
        if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(hypervisor::Error::Region {
                slot,
                source: base::mmap::Error::SystemCall {
                    call: "msync",
                    offset,
                    size,
                    source: std::io::Error::from_raw_os_error(libc::EIO),
                },
            });
        }
        self.inner.msync_memory_region(slot, offset, size)
    }
    fn madvise_pageout_memory_region(
        &self,
        slot: hypervisor::MemSlot,
        offset: usize,
        size: usize,
    ) -> hypervisor::Result<()> {
        self.inner.madvise_pageout_memory_region(slot, offset, size)
    }
    fn madvise_remove_memory_region(
        &self,
        slot: hypervisor::MemSlot,
        offset: usize,
        size: usize,
    ) -> hypervisor::Result<()> {
        self.inner.madvise_remove_memory_region(slot, offset, size)
    }
    fn remove_memory_region(
        &self,
        slot: hypervisor::MemSlot,
    ) -> hypervisor::Result<Box<dyn base::MappedRegion>> {
        self.inner.remove_memory_region(slot)
    }
    fn set_dirty_logging(&self, slot: hypervisor::MemSlot, enable: bool) -> hypervisor::Result<()> {
        self.inner.set_dirty_logging(slot, enable)
    }
    fn get_dirty_log(&self, slot: hypervisor::MemSlot, log: &mut [u8]) -> hypervisor::Result<()> {
        self.inner.get_dirty_log(slot, log)
    }
    fn dirty_log_mode(&self) -> hypervisor::DirtyLogMode {
        self.inner.dirty_log_mode()
    }
    fn harvest_dirty_log(&self) -> hypervisor::Result<hypervisor::DirtyHarvest<'_>> {
        self.inner.harvest_dirty_log()
    }
    fn with_slot_memory(
        &self,
        slot: hypervisor::MemSlot,
        offset: usize,
        size: usize,
        f: &mut dyn FnMut(base::VolatileSlice<'_>) -> std::io::Result<()>,
    ) -> hypervisor::Result<()> {
        self.inner.with_slot_memory(slot, offset, size, f)
    }
    fn memory_slots(&self) -> Vec<hypervisor::SlotInfo> {
        self.inner.memory_slots()
    }
    fn slot_mappings(
        &self,
        slot: hypervisor::MemSlot,
    ) -> hypervisor::Result<Vec<hypervisor::SlotMapping>> {
        self.inner.slot_mappings(slot)
    }
    fn add_fd_mapping(
        &self,
        slot: hypervisor::MemSlot,
        offset: usize,
        size: usize,
        fd: &dyn AsRawDescriptor,
        fd_offset: u64,
        prot: base::Protection,
    ) -> hypervisor::Result<()> {
        self.inner
            .add_fd_mapping(slot, offset, size, fd, fd_offset, prot)
    }
    fn remove_mapping(
        &self,
        slot: hypervisor::MemSlot,
        offset: usize,
        size: usize,
    ) -> hypervisor::Result<()> {
        self.inner.remove_mapping(slot, offset, size)
    }
    fn reserve_guest_range(&self, guest_addr: GuestAddress, size: u64) -> hypervisor::Result<()> {
        self.inner.reserve_guest_range(guest_addr, size)
    }
    fn release_guest_range(&self, guest_addr: GuestAddress, size: u64) -> hypervisor::Result<()> {
        self.inner.release_guest_range(guest_addr, size)
    }
}

#[test]
fn a_flush_whose_msync_fails_answers_eio() {
    let Some(kvm) = kvm_or_skip("pmem_eio") else {
        return;
    };
    let file = backing_file(2 << 20);
    let (rig, vm) = slow_rig(&kvm, &file);
    rig.handshake();
    assert_eq!(rig.flush(), VIRTIO_PMEM_RESP_TYPE_OK);
    // The msync itself fails, with the server up: the driver sees EIO in its response.
    vm.fail.store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(rig.flush(), VIRTIO_PMEM_RESP_TYPE_EIO);
    // And once the disk recovers, flushes succeed again.
    vm.fail.store(false, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(rig.flush(), VIRTIO_PMEM_RESP_TYPE_OK);
}

#[test]
fn a_slow_flush_holds_neither_the_vcpu_nor_the_device() {
    let Some(kvm) = kvm_or_skip("pmem_slow_flush") else {
        return;
    };
    let file = backing_file(2 << 20);
    let (rig, vm) = slow_rig(&kvm, &file);
    rig.handshake();
    // The disk takes 1.5 s to answer an msync.
    vm.delay_ms.store(1500, std::sync::atomic::Ordering::SeqCst);
    rig.flush_chain();
    let start = std::time::Instant::now();
    let idx = rig.notify(0);
    let notified = start.elapsed();
    // Another vCPU reads the interrupt status meanwhile.
    let before = std::time::Instant::now();
    assert_eq!(rig.read32(0x060) & 1, 0, "nothing was used yet");
    let read = before.elapsed();
    assert!(
        notified < std::time::Duration::from_millis(500)
            && read < std::time::Duration::from_millis(500),
        "the notify took {notified:?} and a register read {read:?} while the flush waited"
    );
    assert_eq!(rig.used_idx(), idx, "not answered before the msync was");
    // The answer comes when the msync does, with the interrupt.
    while rig.used_idx() == idx {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "never answered"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(start.elapsed() >= std::time::Duration::from_millis(1400));
    assert_eq!(
        rig.mem
            .read_obj_from_addr::<u32>(GuestAddress(RESP))
            .unwrap(),
        VIRTIO_PMEM_RESP_TYPE_OK
    );
    assert_eq!(rig.read32(0x060) & 1, 1, "the interrupt was raised");
    rig.write32(0x064, 1);

    // A reset while a flush is in flight, and the driver sets the device up again at once:
    // the answer that comes afterwards belongs to the old device, and is dropped rather than
    // written into rings and buffers the driver has taken back.
    rig.flush_chain();
    rig.notify(0);
    rig.write32(0x070, 0);
    rig.mem
        .write_obj_at_addr(0u16, GuestAddress(AVAIL + 2))
        .unwrap();
    rig.mem
        .write_obj_at_addr(0u16, GuestAddress(USED + 2))
        .unwrap();
    rig.handshake();
    std::thread::sleep(std::time::Duration::from_millis(2000));
    assert_eq!(rig.used_idx(), 0, "the old chain was used after the reset");
    assert_eq!(
        rig.mem
            .read_obj_from_addr::<u32>(GuestAddress(RESP))
            .unwrap(),
        0xff
    );
    assert_eq!(rig.read32(0x060), 0);
    // The new device works.
    vm.delay_ms.store(0, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(rig.flush(), VIRTIO_PMEM_RESP_TYPE_OK);
}

/// A rig on a KVM VM whose msync takes `delay_ms` (see `FailingMsync`).
fn slow_rig(kvm: &Kvm, file: &std::fs::File) -> (Rig, Arc<FailingMsync>) {
    let mem = GuestMemory::new(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let vm = Arc::new(FailingMsync {
        inner: KvmVm::new(kvm, mem.clone()).unwrap(),
        fail: std::sync::atomic::AtomicBool::new(false),
        delay_ms: std::sync::atomic::AtomicU64::new(0),
        started: std::sync::atomic::AtomicU64::new(0),
    });
    (Rig::on(vm.clone(), mem, file), vm)
}

#[test]
fn a_flush_answer_never_lands_in_a_queue_set_up_again() {
    let Some(kvm) = kvm_or_skip("pmem_stale_answer") else {
        return;
    };
    let file = backing_file(2 << 20);
    let (rig, vm) = slow_rig(&kvm, &file);
    rig.handshake();
    vm.delay_ms.store(1000, std::sync::atomic::Ordering::SeqCst);
    // A FLUSH is taken; then the driver stops the queue and sets it up again, without a
    // reset, and offers a new FLUSH at the same head.
    rig.flush_chain();
    let start = std::time::Instant::now();
    rig.notify(0);
    // Its msync has begun (a chain not yet begun would be skipped: no msync for it at all).
    wait_for_msyncs(&vm, 1);
    remake_queue(&rig);
    rig.flush_chain();
    rig.notify(0);
    // The first msync ends after 1 s; its answer must not be taken for the second FLUSH,
    // whose own msync starts only then and takes another second.
    while rig.used_idx() == 0 {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "never answered"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(
        start.elapsed() >= std::time::Duration::from_millis(1900),
        "the new FLUSH was answered after {:?}, before its own msync could end",
        start.elapsed()
    );
    assert_eq!(
        rig.mem
            .read_obj_from_addr::<u32>(GuestAddress(RESP))
            .unwrap(),
        VIRTIO_PMEM_RESP_TYPE_OK
    );
}

#[test]
fn a_driver_cannot_pile_up_flushes_and_the_device_goes_at_once() {
    let Some(kvm) = kvm_or_skip("pmem_flush_backlog") else {
        return;
    };
    let file = backing_file(2 << 20);
    let (mut rig, vm) = slow_rig(&kvm, &file);
    rig.handshake();
    vm.delay_ms.store(300, std::sync::atomic::Ordering::SeqCst);
    // The same FLUSH chain offered again and again while the device still holds it: at most
    // a queue's worth, then the ring is broken.
    rig.flush_chain();
    for _ in 0..QSIZE {
        rig.notify(0);
    }
    assert_eq!(rig.read32(0x070) & status::DEVICE_NEEDS_RESET, 0);
    rig.notify(0);
    assert_ne!(
        rig.read32(0x070) & status::DEVICE_NEEDS_RESET,
        0,
        "a chain past a queue's worth in flight was taken"
    );
    // Tearing the device down does not wait for the FLUSHes it holds.
    let started = std::time::Instant::now();
    rig.bus = MmioBus::new();
    assert!(
        started.elapsed() < std::time::Duration::from_millis(200),
        "dropping the device took {:?}",
        started.elapsed()
    );
    rig.stop_server();
}

/// Waits until the VM has begun `n` msyncs.
fn wait_for_msyncs(vm: &FailingMsync, n: u64) {
    let start = std::time::Instant::now();
    while vm.started.load(std::sync::atomic::Ordering::SeqCst) < n {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(5),
            "no msync began"
        );
        std::thread::yield_now();
    }
}

/// The driver stops queue 0, zeroes its indices and enables it again (no device reset).
fn remake_queue(rig: &Rig) {
    rig.write32(0x030, 0);
    rig.write32(0x044, 0);
    rig.mem
        .write_obj_at_addr(0u16, GuestAddress(AVAIL + 2))
        .unwrap();
    rig.mem
        .write_obj_at_addr(0u16, GuestAddress(USED + 2))
        .unwrap();
    rig.write32(0x044, 1);
    assert_eq!(rig.read32(0x044), 1);
}

#[test]
fn flushes_of_a_reset_device_or_of_a_device_gone_get_no_msync() {
    let Some(kvm) = kvm_or_skip("pmem_stale_jobs") else {
        return;
    };
    let file = backing_file(2 << 20);
    let (rig, vm) = slow_rig(&kvm, &file);
    rig.handshake();
    vm.delay_ms.store(800, std::sync::atomic::Ordering::SeqCst);
    // Four FLUSHes (the same chain, offered four times): the first one's msync begins, the
    // rest wait behind it. Then the device is reset: those three are stale.
    rig.flush_chain();
    for _ in 0..4 {
        rig.notify(0);
    }
    wait_for_msyncs(&vm, 1);
    rig.write32(0x070, 0);
    std::thread::sleep(std::time::Duration::from_millis(2000));
    assert_eq!(
        vm.started.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "FLUSHes of the reset device were msynced"
    );
    // Again, and this time the device goes away: what it held is not msynced either.
    rig.handshake();
    rig.mem
        .write_obj_at_addr(0u16, GuestAddress(AVAIL + 2))
        .unwrap();
    rig.mem
        .write_obj_at_addr(0u16, GuestAddress(USED + 2))
        .unwrap();
    rig.flush_chain();
    for _ in 0..4 {
        rig.notify(0);
    }
    wait_for_msyncs(&vm, 2);
    let mut rig = rig;
    rig.bus = MmioBus::new();
    std::thread::sleep(std::time::Duration::from_millis(2000));
    assert_eq!(
        vm.started.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "FLUSHes of a device that is gone were msynced"
    );
}

#[test]
fn a_device_holds_at_most_a_queue_of_flushes_across_resets() {
    let Some(kvm) = kvm_or_skip("pmem_jobs_bound") else {
        return;
    };
    let file = backing_file(2 << 20);
    let (rig, vm) = slow_rig(&kvm, &file);
    rig.handshake();
    vm.delay_ms.store(1500, std::sync::atomic::Ordering::SeqCst);
    // While one msync hangs, the driver remakes its queue again and again, each time with a
    // full ring of FLUSHes: 16 of 16 per epoch, never too many in flight for one epoch.
    rig.flush_chain();
    rig.notify(0);
    wait_for_msyncs(&vm, 1);
    for _ in 0..16 {
        remake_queue(&rig);
        for _ in 0..QSIZE {
            rig.notify(0);
        }
    }
    // The device holds 256 (its queue's maximum) by now, so it takes no more: a chain it
    // would answer at once (it has no response buffer) stays on the ring.
    remake_queue(&rig);
    rig.desc(2, REQ, 4, 0, 0);
    rig.notify(2);
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(
        rig.used_idx(),
        0,
        "a device holding 256 FLUSHes took another chain"
    );
    assert_eq!(rig.read32(0x070) & status::DEVICE_NEEDS_RESET, 0);
    // Once the msync ends, the stale FLUSHes are dropped without msyncs, and the device goes
    // on with the ring by itself.
    let start = std::time::Instant::now();
    while rig.used_idx() == 0 {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "never taken"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(vm.started.load(std::sync::atomic::Ordering::SeqCst) <= 2);
}

#[test]
fn chains_left_at_the_budget_are_served_without_another_notify() {
    let Some(kvm) = kvm_or_skip("pmem_budget_resume") else {
        return;
    };
    let file = backing_file(2 << 20);
    let rig = Rig::new(&kvm, &file);
    rig.handshake();
    // Sixteen requests of two descriptors each, made available at once (one notify), over
    // the same two descriptors: the device answers them as chains with no response buffer
    // at once, a budget's worth per share.
    rig.desc(0, REQ, 4, VIRTQ_DESC_F_NEXT, 1);
    rig.desc(1, REQ + 4, 4, 0, 0);
    for i in 0..QSIZE {
        rig.mem
            .write_obj_at_addr(0u16, GuestAddress(AVAIL + 4 + 2 * u64::from(i)))
            .unwrap();
    }
    rig.mem
        .write_obj_at_addr(QSIZE, GuestAddress(AVAIL + 2))
        .unwrap();
    rig.write32(0x050, 0);
    // The notify took 8 of them. No other access to the device follows (a driver that
    // suppressed its interrupts and does not notify again): the transport goes on by itself.
    let start = std::time::Instant::now();
    while rig.used_idx() != QSIZE {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(5),
            "stuck at {} of {QSIZE}",
            rig.used_idx()
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

#[test]
fn hostile_rings_are_reported_and_the_queue_keeps_working() {
    let Some(kvm) = kvm_or_skip("pmem_hostile") else {
        return;
    };
    let file = backing_file(2 << 20);
    let rig = Rig::new(&kvm, &file);
    rig.handshake();
    // A head past the queue size.
    assert_eq!(rig.offer(QSIZE + 3), (u32::from(QSIZE + 3), 0));
    // A chain that loops on itself.
    rig.desc(2, REQ, 4, VIRTQ_DESC_F_NEXT, 3);
    rig.desc(3, RESP, 4, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 2);
    assert_eq!(rig.offer(2), (2, 0));
    // A next index past the queue size.
    rig.desc(4, REQ, 4, VIRTQ_DESC_F_NEXT, 999);
    assert_eq!(rig.offer(4), (4, 0));
    // Buffers outside guest memory, and one that runs past its end.
    rig.desc(5, 0xffff_0000, 4, VIRTQ_DESC_F_NEXT, 6);
    rig.desc(6, RESP, 4, VIRTQ_DESC_F_WRITE, 0);
    assert_eq!(rig.offer(5), (5, 0));
    rig.desc(7, (1 << 20) - 2, 4, 0, 0);
    assert_eq!(rig.offer(7), (7, 0));
    rig.desc(8, u64::MAX - 1, u32::MAX, 0, 0);
    assert_eq!(rig.offer(8), (8, 0));
    // An indirect descriptor, which was not negotiated.
    rig.desc(9, REQ, 16, VIRTQ_DESC_F_INDIRECT, 0);
    assert_eq!(rig.offer(9), (9, 0));
    // No response buffer, and a response buffer too small.
    rig.desc(10, REQ, 4, 0, 0);
    assert_eq!(rig.offer(10), (10, 0));
    rig.desc(11, REQ, 4, VIRTQ_DESC_F_NEXT, 12);
    rig.desc(12, RESP, 2, VIRTQ_DESC_F_WRITE, 0);
    assert_eq!(rig.offer(12), (12, 0));
    // An unknown request type gets EIO.
    rig.mem.write_obj_at_addr(77u32, GuestAddress(REQ)).unwrap();
    rig.desc(13, REQ, 4, VIRTQ_DESC_F_NEXT, 14);
    rig.desc(14, RESP, 4, VIRTQ_DESC_F_WRITE, 0);
    assert_eq!(rig.offer(13), (13, 4));
    assert_eq!(
        rig.mem
            .read_obj_from_addr::<u32>(GuestAddress(RESP))
            .unwrap(),
        VIRTIO_PMEM_RESP_TYPE_EIO
    );
    // After all that, a good flush still works.
    assert_eq!(rig.flush(), VIRTIO_PMEM_RESP_TYPE_OK);
    // An available index that jumps a whole queue ahead breaks the queue: nothing is
    // consumed, nothing panics.
    let idx = rig.avail_idx();
    rig.mem
        .write_obj_at_addr(idx.wrapping_add(QSIZE + 1), GuestAddress(AVAIL + 2))
        .unwrap();
    let used_before: u16 = rig.mem.read_obj_from_addr(GuestAddress(USED + 2)).unwrap();
    rig.write32(0x050, 0);
    let used_after: u16 = rig.mem.read_obj_from_addr(GuestAddress(USED + 2)).unwrap();
    assert_eq!(used_before, used_after);
    // Notifying a queue that does not exist is ignored.
    rig.write32(0x050, 5);
}

#[test]
fn pmem_set_up_refusals() {
    let Some(kvm) = kvm_or_skip("pmem_setup") else {
        return;
    };
    let mem = GuestMemory::new(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let vm = Arc::new(KvmVm::new(&kvm, mem).unwrap());
    let mut server = VmMemoryServer::new(vm.clone()).unwrap();
    // Each device its own window: client `i` (popped from the end) may register at
    // `window(i)`; the one that tries boot RAM is granted boot RAM, which the VM refuses.
    let window = |i: u64| PMEM_GPA + i * 0x1000_0000;
    let mut clients = Vec::new();
    for i in 0..5u64 {
        let (client, server_end) = Tube::pair().unwrap();
        let grant = if i == 2 {
            ClientPolicy::new().grant(GuestAddress(0), 1 << 20)
        } else {
            ClientPolicy::new().grant(GuestAddress(window(i)), 0x1000_0000)
        };
        server.add_client(server_end, grant).unwrap();
        clients.push(VmMemoryClient::new(client));
    }
    let exit = Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
    let thread_exit = Exit(exit.clone());
    let thread = std::thread::spawn(move || server.run(&thread_exit).unwrap());
    let file = backing_file(4096);
    let err = Pmem::new(clients.pop().unwrap(), &file, window(4) + 4096)
        .err()
        .unwrap();
    assert!(matches!(err, PmemError::Unaligned { .. }), "{err}");
    let err = Pmem::new(clients.pop().unwrap(), &backing_file(0), window(3))
        .err()
        .unwrap();
    assert!(matches!(err, PmemError::EmptyFile), "{err}");
    // Over boot RAM: the VM refuses the window.
    let err = Pmem::new(clients.pop().unwrap(), &file, 0).err().unwrap();
    assert!(matches!(err, PmemError::Register { .. }), "{err}");
    // A file the VM cannot map writable: the window was registered first, and the failed
    // set-up must unregister it, so the window is free again (the VM itself can map it).
    let temp = vmm_sys_util::tempfile::TempFile::new().unwrap();
    temp.as_file().set_len(4096).unwrap();
    let read_only = std::fs::File::open(temp.as_path()).unwrap();
    let err = Pmem::new(clients.pop().unwrap(), &read_only, window(1))
        .err()
        .unwrap();
    assert!(matches!(err, PmemError::MapFile { len: 4096, .. }), "{err}");
    let probe = base::MemoryMappingBuilder::new(2 << 20).build().unwrap();
    let slot = vm
        .add_memory_region(
            GuestAddress(window(1)),
            Box::new(probe),
            false,
            false,
            hypervisor::MemCacheType::CacheCoherent,
        )
        .expect("the failed device's window was left registered");
    vm.remove_memory_region(slot).unwrap();
    let pmem = Pmem::new(clients.pop().unwrap(), &file, window(0)).unwrap();
    assert_eq!((pmem.guest_addr(), pmem.size()), (window(0), 2 << 20));
    exit.write(1).unwrap();
    thread.join().unwrap();
}

/// A device with one queue that uses nothing, to test the transport alone.
struct Null;

impl VirtioDevice for Null {
    fn device_type(&self) -> u32 {
        99
    }
    fn features(&self) -> u64 {
        1 << 5
    }
    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![8]
    }
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0xcc);
    }
    fn process_queue(
        &mut self,
        _: usize,
        _: &mut Queue,
        _: &GuestMemory,
    ) -> Result<bool, devices::virtio::queue::Error> {
        Ok(true)
    }
}

#[test]
fn the_transport_refuses_what_a_driver_must_not_do() {
    let mem = GuestMemory::new(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let mut t = MmioTransport::new(Box::new(Null), mem);
    let read = |t: &mut MmioTransport, offset: u64| {
        let mut d = [0u8; 4];
        t.read(offset, &mut d);
        u32::from_le_bytes(d)
    };
    let write = |t: &mut MmioTransport, offset: u64, v: u32| t.write(offset, &v.to_le_bytes());
    // Registers read whole and aligned only.
    let mut two = [0xaau8; 2];
    t.read(0x000, &mut two);
    assert_eq!(two, [0, 0]);
    let mut odd = [0xaau8; 4];
    t.read(0x002, &mut odd);
    assert_eq!(odd, [0; 4]);
    t.write(0x070, &[1, 0]);
    assert_eq!(t.status(), 0, "a short status write is ignored");
    // Features without VERSION_1, or with bits not offered, are refused at FEATURES_OK.
    write(&mut t, 0x070, status::ACKNOWLEDGE | status::DRIVER);
    write(&mut t, 0x024, 0);
    write(&mut t, 0x020, 1 << 5);
    write(
        &mut t,
        0x070,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
    assert_eq!(read(&mut t, 0x070) & status::FEATURES_OK, 0);
    write(&mut t, 0x024, 1);
    write(&mut t, 0x020, 1 | 2);
    write(
        &mut t,
        0x070,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
    assert_eq!(read(&mut t, 0x070) & status::FEATURES_OK, 0);
    // DRIVER_OK without FEATURES_OK does not stick.
    write(
        &mut t,
        0x070,
        status::ACKNOWLEDGE | status::DRIVER | status::DRIVER_OK,
    );
    assert_eq!(read(&mut t, 0x070) & status::DRIVER_OK, 0);
    write(&mut t, 0x020, 1);
    write(
        &mut t,
        0x070,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
    assert_ne!(read(&mut t, 0x070) & status::FEATURES_OK, 0);
    // Queue configurations that must not become ready.
    write(&mut t, 0x030, 0);
    for (size, desc, avail, used) in [
        (0u32, 0x1000u64, 0x2000u64, 0x3000u64),
        (3, 0x1000, 0x2000, 0x3000),
        (16, 0x1000, 0x2000, 0x3000),
        (8, 0x1008, 0x2000, 0x3000),
        (8, 0x1000, 0x2001, 0x3000),
        (8, 0x1000, 0x2000, 0x3002),
        (8, 0xff_fff0, 0x2000, 0x3000),
        (8, 0x1000, 0x2000, (1 << 20) - 8),
        (8, u64::MAX - 15, 0x2000, 0x3000),
    ] {
        write(&mut t, 0x038, size);
        for (low, addr) in [(0x080, desc), (0x090, avail), (0x0a0, used)] {
            write(&mut t, low, addr as u32);
            write(&mut t, low + 4, (addr >> 32) as u32);
        }
        write(&mut t, 0x044, 1);
        assert_eq!(
            read(&mut t, 0x044),
            0,
            "size {size} desc {desc:#x} avail {avail:#x} used {used:#x}"
        );
    }
    // A queue that does not exist reads as absent.
    write(&mut t, 0x030, 7);
    assert_eq!(read(&mut t, 0x034), 0);
    write(&mut t, 0x044, 1);
    // Notify before DRIVER_OK does nothing.
    write(&mut t, 0x050, 0);
    assert_eq!(t.interrupt_status(), 0);
    // Config reads any size; writes are ignored.
    let mut config = [0u8; 3];
    t.read(0x105, &mut config);
    assert_eq!(config, [0xcc; 3]);
    t.write(0x100, &[1, 2, 3, 4]);
    // Reset clears everything.
    write(&mut t, 0x070, 0);
    assert_eq!(t.status(), 0);
    assert_eq!(read(&mut t, 0x070), 0);
}
