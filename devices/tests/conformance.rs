// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! virtio 1.x as the specification states it, one test per device requirement of the
//! virtio-mmio transport (section 4.2.2) and of the split ring (section 2.7) that a driver can
//! put to the test, driven from the driver's side through the MMIO registers and rings in
//! guest memory. No KVM is needed.

use devices::bus::BusDevice;
use devices::virtio::driver::{DriverBuffer, DriverQueue};
use devices::virtio::interrupt::Interrupt;
use devices::virtio::mmio::{
    status, MmioTransport, VirtioDevice, INTERRUPT_CONFIG_CHANGE, INTERRUPT_USED_BUFFER,
    VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};
use devices::virtio::queue::{
    Descriptor, Error as QueueError, Queue, VIRTQ_AVAIL_F_NO_INTERRUPT, VIRTQ_DESC_F_INDIRECT,
    VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE,
};
use vm_memory::{GuestAddress, GuestMemory};
use vmm_sys_util::eventfd::EventFd;

const DESC: u64 = 0x1_0000;
const AVAIL: u64 = 0x1_1000;
const USED: u64 = 0x1_2000;
const BUF: u64 = 0x2_0000;
const MAX: u16 = 8;

/// A device with one queue that returns every chain with the length of its writable part,
/// and counts the chains it saw.
struct Echo {
    seen: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl VirtioDevice for Echo {
    fn device_type(&self) -> u32 {
        42
    }
    fn features(&self) -> u64 {
        0
    }
    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![MAX]
    }
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn process_queue(
        &mut self,
        _: usize,
        queue: &mut Queue,
        mem: &GuestMemory,
    ) -> Result<bool, QueueError> {
        let mut used = false;
        while let Some(chain) = queue.pop(mem)? {
            self.seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            match chain {
                Ok(chain) => {
                    let len = chain
                        .buffers
                        .iter()
                        .filter(|b| b.writable)
                        .map(|b| b.len)
                        .sum();
                    queue.add_used(mem, chain.head, len)?;
                }
                Err(bad) => queue.add_used(mem, bad.head, 0)?,
            }
            used = true;
        }
        Ok(used)
    }
}

/// A driver of an `Echo` behind the transport, with its rings in 1 MiB of guest memory.
struct Driver {
    t: MmioTransport,
    mem: GuestMemory,
    irq: EventFd,
    seen: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    avail_idx: u16,
}

impl Driver {
    fn new() -> Driver {
        let mem = GuestMemory::new(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let t = MmioTransport::new(Box::new(Echo { seen: seen.clone() }), mem.clone())
            .with_interrupt(Interrupt::new(irq.try_clone().unwrap()));
        Driver {
            t,
            mem,
            irq,
            seen,
            avail_idx: 0,
        }
    }

    fn read(&mut self, offset: u64) -> u32 {
        let mut d = [0u8; 4];
        self.t.read(offset, &mut d);
        u32::from_le_bytes(d)
    }

    fn write(&mut self, offset: u64, value: u32) {
        self.t.write(offset, &value.to_le_bytes());
    }

    fn status(&mut self) -> u32 {
        self.read(0x070)
    }

    /// Whether the interrupt was raised since the last call.
    fn interrupted(&self) -> bool {
        self.irq.read().is_ok()
    }

    /// Negotiates `features` (VERSION_1 always) up to FEATURES_OK.
    fn negotiate(&mut self, features: u64) {
        self.write(0x070, status::ACKNOWLEDGE);
        self.write(0x070, status::ACKNOWLEDGE | status::DRIVER);
        let features = features | VIRTIO_F_VERSION_1;
        self.write(0x024, 0);
        self.write(0x020, features as u32);
        self.write(0x024, 1);
        self.write(0x020, (features >> 32) as u32);
        self.write(
            0x070,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
    }

    /// Queue 0 at the usual rings with `size` entries, ready; returns QueueReady.
    fn queue(&mut self, size: u32) -> u32 {
        self.write(0x030, 0);
        self.write(0x038, size);
        for (low, addr) in [(0x080, DESC), (0x090, AVAIL), (0x0a0, USED)] {
            self.write(low, addr as u32);
            self.write(low + 4, 0);
        }
        self.write(0x044, 1);
        self.read(0x044)
    }

    fn driver_ok(&mut self) {
        self.write(
            0x070,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
        );
    }

    /// The whole bring-up with a `size`-entry queue.
    fn up(&mut self, size: u32, features: u64) {
        self.negotiate(features);
        assert_eq!(self.queue(size), 1, "queue of {size} accepted");
        self.driver_ok();
        assert_eq!(self.status() & status::DRIVER_OK, status::DRIVER_OK);
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

    /// Offers `heads` (each already a chain), then notifies queue 0.
    fn offer(&mut self, size: u16, heads: &[u16]) {
        for &head in heads {
            let slot = u64::from(self.avail_idx % size);
            self.mem
                .write_obj_at_addr(head, GuestAddress(AVAIL + 4 + 2 * slot))
                .unwrap();
            self.avail_idx = self.avail_idx.wrapping_add(1);
        }
        self.mem
            .write_obj_at_addr(self.avail_idx, GuestAddress(AVAIL + 2))
            .unwrap();
        self.write(0x050, 0);
    }

    fn used_idx(&self) -> u16 {
        self.mem.read_obj_from_addr(GuestAddress(USED + 2)).unwrap()
    }

    fn used_elem(&self, i: u16, size: u16) -> (u32, u32) {
        let at = GuestAddress(USED + 4 + 8 * u64::from(i % size));
        (
            self.mem.read_obj_from_addr(at).unwrap(),
            self.mem.read_obj_from_addr(at.unchecked_add(4)).unwrap(),
        )
    }

    fn seen(&self) -> usize {
        self.seen.load(std::sync::atomic::Ordering::SeqCst)
    }
}

// -- 3.1.1 / 2.1: device status ---------------------------------------------------------

#[test]
fn status_steps_must_come_in_order() {
    let mut d = Driver::new();
    // DRIVER without ACKNOWLEDGE, FEATURES_OK without DRIVER, DRIVER_OK without FEATURES_OK.
    for bad in [
        status::DRIVER,
        status::ACKNOWLEDGE | status::FEATURES_OK,
        status::ACKNOWLEDGE | status::DRIVER | status::DRIVER_OK,
    ] {
        d.write(0x070, bad);
        assert_eq!(d.status(), 0, "{bad:#x} was taken from status 0");
    }
    d.write(0x070, status::ACKNOWLEDGE);
    d.write(0x070, status::ACKNOWLEDGE | status::DRIVER);
    let err = status::ACKNOWLEDGE | status::DRIVER | status::DRIVER_OK;
    d.write(0x070, err);
    assert_eq!(d.status(), status::ACKNOWLEDGE | status::DRIVER);
    // FAILED may come at any time.
    d.write(0x070, status::ACKNOWLEDGE | status::DRIVER | status::FAILED);
    assert_eq!(d.status() & status::FAILED, status::FAILED);
}

#[test]
fn a_driver_cannot_clear_status_bits_only_reset() {
    let mut d = Driver::new();
    d.up(4, 0);
    // Found by fuzzing the old transport: clearing DRIVER_OK without a reset made the queue
    // writable again while it was in use.
    d.write(
        0x070,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
    assert_ne!(d.status() & status::DRIVER_OK, 0, "DRIVER_OK was cleared");
    // 0 resets the device and its queues.
    d.write(0x070, 0);
    assert_eq!(d.status(), 0);
    d.write(0x030, 0);
    assert_eq!(d.read(0x044), 0, "the queue is not ready after reset");
    assert_eq!(
        d.read(0x038),
        u32::from(MAX),
        "its size is back to the maximum"
    );
}

#[test]
fn features_ok_only_for_offered_features_with_version_1() {
    let mut d = Driver::new();
    // Offered: VERSION_1, EVENT_IDX and INDIRECT_DESC only.
    d.write(0x014, 0);
    assert_eq!(
        d.read(0x010),
        (VIRTIO_RING_F_EVENT_IDX | VIRTIO_RING_F_INDIRECT_DESC) as u32
    );
    d.write(0x014, 1);
    assert_eq!(d.read(0x010), 1);
    // Features written before DRIVER are ignored.
    d.write(0x070, status::ACKNOWLEDGE);
    d.write(0x024, 1);
    d.write(0x020, 1);
    d.write(0x070, status::ACKNOWLEDGE | status::DRIVER);
    d.write(
        0x070,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
    assert_eq!(
        d.status() & status::FEATURES_OK,
        0,
        "no VERSION_1 was written after DRIVER"
    );
    // A feature not offered.
    d.write(0x024, 0);
    d.write(0x020, 1 << 5);
    d.write(0x024, 1);
    d.write(0x020, 1);
    d.write(
        0x070,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
    assert_eq!(
        d.status() & status::FEATURES_OK,
        0,
        "an unoffered feature was accepted"
    );
    d.write(0x024, 0);
    d.write(0x020, 0);
    d.write(
        0x070,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
    assert_ne!(d.status() & status::FEATURES_OK, 0);
    // After FEATURES_OK the features are fixed.
    d.write(0x024, 0);
    d.write(0x020, 1 << 5);
    d.write(
        0x070,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
    assert_ne!(d.status() & status::FEATURES_OK, 0);
}

// -- 4.2.2: queue registers ---------------------------------------------------------------

#[test]
fn queue_registers_change_only_while_the_queue_is_not_ready() {
    let mut d = Driver::new();
    d.up(4, 0);
    // Found by fuzzing the old transport: QueueNum = 1000 was taken on a ready 4-entry
    // queue, and head 700 reached the device; with 0 the device divided by zero.
    for (reg, value) in [
        (0x038, 1000),
        (0x038, 0),
        (0x038, 0xffff),
        (0x080, 0x9_0000),
        (0x0a0, 0),
    ] {
        d.write(reg, value);
    }
    assert_eq!(d.read(0x038), 4);
    d.desc(0, BUF, 16, VIRTQ_DESC_F_WRITE, 0);
    d.offer(4, &[0]);
    assert_eq!(d.used_idx(), 1);
    assert_eq!(d.used_elem(0, 4), (0, 16));
    // A head past the validated size is a bad chain, returned with length 0.
    d.offer(4, &[700]);
    assert_eq!(d.used_elem(1, 4), (700, 0));
}

#[test]
fn queue_sizes_are_powers_of_two_up_to_the_maximum() {
    for (size, ok) in [
        (0, false),
        (3, false),
        (6, false),
        (1, true),
        (4, true),
        (8, true),
        (16, false),
        (0x1_0004, false),
    ] {
        let mut d = Driver::new();
        d.negotiate(0);
        assert_eq!(d.queue(size) == 1, ok, "size {size}");
    }
}

#[test]
fn a_queue_that_fails_its_check_is_not_ready() {
    let mut d = Driver::new();
    d.negotiate(0);
    d.write(0x030, 0);
    d.write(0x038, 4);
    d.write(0x080, (DESC + 8) as u32); // descriptor table must be 16-aligned
    d.write(0x090, AVAIL as u32);
    d.write(0x0a0, USED as u32);
    d.write(0x044, 1);
    assert_eq!(d.read(0x044), 0);
    d.write(0x080, 0x20_0000); // outside guest memory
    d.write(0x044, 1);
    assert_eq!(d.read(0x044), 0);
    d.write(0x080, DESC as u32);
    d.write(0x044, 1);
    assert_eq!(d.read(0x044), 1);
}

#[test]
fn re_enabling_a_queue_starts_from_index_0() {
    let mut d = Driver::new();
    d.up(4, 0);
    d.desc(0, BUF, 8, VIRTQ_DESC_F_WRITE, 0);
    d.offer(4, &[0, 0, 0]);
    assert_eq!(d.used_idx(), 3);
    d.write(0x044, 0);
    assert_eq!(d.read(0x044), 0);
    // The driver starts its rings over.
    d.mem.write_obj_at_addr(0u32, GuestAddress(USED)).unwrap();
    d.avail_idx = 0;
    d.mem
        .write_obj_at_addr(0u16, GuestAddress(AVAIL + 2))
        .unwrap();
    d.write(0x044, 1);
    d.offer(4, &[0]);
    assert_eq!(d.used_idx(), 1, "the device went on from its old index");
}

#[test]
fn absent_shared_memory_regions_read_all_ones() {
    let mut d = Driver::new();
    d.write(0x0ac, 0);
    for reg in [0x0b0, 0x0b4, 0x0b8, 0x0bc] {
        assert_eq!(d.read(reg), u32::MAX, "register {reg:#x}");
    }
}

#[test]
fn notifies_before_driver_ok_or_for_absent_queues_do_nothing() {
    let mut d = Driver::new();
    d.negotiate(0);
    assert_eq!(d.queue(4), 1);
    d.desc(0, BUF, 8, VIRTQ_DESC_F_WRITE, 0);
    d.offer(4, &[0]);
    assert_eq!((d.seen(), d.used_idx()), (0, 0), "used before DRIVER_OK");
    d.driver_ok();
    d.write(0x050, 7);
    assert_eq!(d.seen(), 0);
    d.write(0x050, 0);
    assert_eq!(d.seen(), 1);
}

// -- 2.7: the split ring ------------------------------------------------------------------

#[test]
fn a_readable_descriptor_after_a_writable_one_is_refused() {
    let mut d = Driver::new();
    d.up(4, 0);
    d.desc(0, BUF, 8, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 1);
    d.desc(1, BUF + 8, 8, 0, 0);
    d.offer(4, &[0]);
    assert_eq!(d.used_elem(0, 4), (0, 0), "the chain was returned unused");
    // The queue keeps working.
    d.desc(0, BUF, 8, VIRTQ_DESC_F_NEXT, 1);
    d.desc(1, BUF + 8, 8, VIRTQ_DESC_F_WRITE, 0);
    d.offer(4, &[0]);
    assert_eq!(d.used_elem(1, 4), (0, 8));
}

#[test]
fn the_work_of_one_notify_is_bounded_by_the_queue_size() {
    let mut d = Driver::new();
    d.up(4, 0);
    // Four chains over the same three descriptors: twelve descriptors for a 4-entry queue.
    // The old device walked size² per notify. Now a notify starts chains only while it has
    // walked fewer than 4: two chains, six descriptors.
    d.desc(0, BUF, 8, VIRTQ_DESC_F_NEXT, 1);
    d.desc(1, BUF, 8, VIRTQ_DESC_F_NEXT, 2);
    d.desc(2, BUF, 8, VIRTQ_DESC_F_WRITE, 0);
    d.offer(4, &[0, 0, 0, 0]);
    assert_eq!(d.seen(), 2, "chains in the first notify");
    assert_eq!(d.used_idx(), 2);
    // Not a fault: the rest is done, a share at a time, as the driver touches the device
    // (here, reading the interrupt status of what was used).
    assert_eq!(d.status() & status::DEVICE_NEEDS_RESET, 0);
    let _ = d.read(0x060);
    assert_eq!(d.seen(), 4);
    assert_eq!(d.used_idx(), 4);
    let _ = d.read(0x060);
    assert_eq!(d.seen(), 4, "nothing was left to do");
}

/// A device that, after each chain it uses, lets the driver on "another vCPU" take the used
/// chain back and offer it again: a well-formed driver that keeps the queue full.
struct Refilling {
    mem: GuestMemory,
    served: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    rounds: usize,
}

impl VirtioDevice for Refilling {
    fn device_type(&self) -> u32 {
        42
    }
    fn features(&self) -> u64 {
        0
    }
    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![4]
    }
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn process_queue(
        &mut self,
        _: usize,
        queue: &mut Queue,
        mem: &GuestMemory,
    ) -> Result<bool, QueueError> {
        let mut used = false;
        while let Some(chain) = queue.pop(mem)? {
            let chain = chain.map_err(|bad| bad.error)?;
            queue.add_used(mem, chain.head, 0)?;
            used = true;
            let served = self
                .served
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
                + 1;
            if served < self.rounds {
                // The driver's side: chain 0 is back, so it may offer it again.
                let idx: u16 = self
                    .mem
                    .read_obj_from_addr(GuestAddress(AVAIL + 2))
                    .unwrap();
                self.mem
                    .write_obj_at_addr(0u16, GuestAddress(AVAIL + 4 + 2 * u64::from(idx % 4)))
                    .unwrap();
                self.mem
                    .write_obj_at_addr(idx.wrapping_add(1), GuestAddress(AVAIL + 2))
                    .unwrap();
            }
        }
        Ok(used)
    }
}

#[test]
fn a_driver_that_refills_during_a_notify_is_served_not_declared_broken() {
    let mem = GuestMemory::new(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let device = Refilling {
        mem: mem.clone(),
        served: served.clone(),
        rounds: 16,
    };
    let mut t = MmioTransport::new(Box::new(device), mem.clone());
    let mut d = Driver::new();
    std::mem::swap(&mut d.t, &mut t);
    d.mem = mem;
    d.up(4, 0);
    // One chain of two descriptors, in flight alone: never more than 2 of 4 descriptors.
    d.desc(0, BUF, 4, VIRTQ_DESC_F_NEXT, 1);
    d.desc(1, BUF + 16, 4, VIRTQ_DESC_F_WRITE, 0);
    d.offer(4, &[0]);
    let load = || served.load(std::sync::atomic::Ordering::SeqCst);
    // The first notify stopped at its budget; the driver's next accesses go on with it.
    assert!(load() < 16, "one notify did all the work: {}", load());
    for _ in 0..16 {
        let _ = d.read(0x060);
    }
    assert_eq!(load(), 16);
    assert_eq!(d.status() & status::DEVICE_NEEDS_RESET, 0);
    assert_eq!(d.used_idx(), 16);
}

#[test]
fn heads_out_of_range_count_toward_the_notify_budget() {
    // A driver that keeps moving the available index forward during one notify, with heads
    // the device cannot use: each costs the budget, so the notify still ends.
    let mem = GuestMemory::new(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    let mut q = Queue::new(4);
    q.set_desc_table(GuestAddress(DESC)).unwrap();
    q.set_avail_ring(GuestAddress(AVAIL)).unwrap();
    q.set_used_ring(GuestAddress(USED)).unwrap();
    q.enable(&mem).unwrap();
    q.begin_notify();
    for i in 0..4u64 {
        mem.write_obj_at_addr(9u16, GuestAddress(AVAIL + 4 + 2 * i))
            .unwrap();
    }
    mem.write_obj_at_addr(4u16, GuestAddress(AVAIL + 2))
        .unwrap();
    for _ in 0..4 {
        let bad = q.pop(&mem).unwrap().unwrap().unwrap_err();
        assert!(
            matches!(bad.error, QueueError::DescriptorIndex { index: 9, size: 4 }),
            "{}",
            bad.error
        );
        // Returned, as a device does with a chain it cannot use.
        q.add_used(&mem, bad.head, 0).unwrap();
    }
    mem.write_obj_at_addr(5u16, GuestAddress(AVAIL + 2))
        .unwrap();
    // The budget is spent: the fifth chain waits, not consumed.
    assert!(q.pop(&mem).unwrap().is_none());
    assert!(q.budget_spent());
    q.begin_notify();
    assert!(!q.budget_spent());
    let bad = q.pop(&mem).unwrap().unwrap().unwrap_err();
    assert!(matches!(bad.error, QueueError::DescriptorIndex { .. }));
}

#[test]
fn a_driver_cannot_offer_more_chains_than_the_device_holds() {
    // A device that answers later (on its own thread) holds the chains it took; a driver
    // that offers more than a queue's worth past the used index is reusing descriptors the
    // device still has.
    let mem = GuestMemory::new(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    let mut driver = DriverQueue::new(
        &mem,
        4,
        GuestAddress(DESC),
        GuestAddress(AVAIL),
        GuestAddress(USED),
    )
    .unwrap();
    let mut q = Queue::new(4);
    q.set_desc_table(driver.desc_table()).unwrap();
    q.set_avail_ring(driver.avail_ring()).unwrap();
    q.set_used_ring(driver.used_ring()).unwrap();
    q.enable(&mem).unwrap();
    let one = [DriverBuffer::writable(GuestAddress(BUF), 8)];
    for _ in 0..4 {
        let head = driver.add_chain(&one).unwrap();
        driver.make_available(head).unwrap();
        q.begin_notify();
        assert!(q.pop(&mem).unwrap().unwrap().is_ok());
    }
    // Four taken, none used: a fifth is one too many.
    let head = driver.add_chain(&one).unwrap();
    driver.make_available(head).unwrap();
    q.begin_notify();
    let err = q.pop(&mem).unwrap_err();
    assert!(
        matches!(
            err,
            QueueError::TooManyInFlight {
                avail_idx: 5,
                used: 0,
                in_flight: 5,
                size: 4
            }
        ),
        "{err}"
    );
    // Once the device uses one, there is room again.
    q.add_used(&mem, 0, 8).unwrap();
    assert!(q.pop(&mem).unwrap().unwrap().is_ok());
}

#[test]
fn indirect_tables_cost_the_notify_budget_too() {
    // Every entry of an 8-entry queue points at the same 8-entry table: 64 buffers on offer.
    // One notify reads at most 2 * 8 descriptors.
    let (mem, mut q, mut driver) = indirect_queue(true);
    let buffers: Vec<_> = (0..8)
        .map(|i| DriverBuffer::readable(GuestAddress(BUF + 16 * i), 16))
        .collect();
    let t = GuestAddress(BUF + 0x1000);
    for _ in 0..8 {
        let head = driver.add_indirect_chain(t, &buffers).unwrap();
        driver.make_available(head).unwrap();
    }
    let mut handed = 0;
    while let Some(chain) = q.pop(&mem).unwrap() {
        let chain = chain.unwrap();
        handed += chain.buffers.len();
        q.add_used(&mem, chain.head, 0).unwrap();
    }
    // A chain starts only below 8 reads, and one costs 9 (its pointer and 8 entries).
    assert_eq!(handed, 8, "one chain, then the budget is spent");
    assert!(q.budget_spent());
    // The rest comes a share at a time.
    let mut notifies = 1;
    while handed < 64 {
        q.begin_notify();
        while let Some(chain) = q.pop(&mem).unwrap() {
            let chain = chain.unwrap();
            handed += chain.buffers.len();
            q.add_used(&mem, chain.head, 0).unwrap();
        }
        notifies += 1;
        assert!(notifies <= 8);
    }
    assert_eq!((handed, notifies), (64, 8));
}

#[test]
fn a_broken_ring_needs_a_reset_and_the_device_stops() {
    let mut d = Driver::new();
    d.up(4, 0);
    assert!(!d.interrupted());
    // An available index more than a queue's worth ahead.
    d.mem
        .write_obj_at_addr(9u16, GuestAddress(AVAIL + 2))
        .unwrap();
    d.write(0x050, 0);
    assert_ne!(d.status() & status::DEVICE_NEEDS_RESET, 0);
    assert_ne!(d.read(0x060) & INTERRUPT_CONFIG_CHANGE, 0);
    assert!(d.interrupted(), "the config change was signalled");
    // The driver cannot clear it by writing status, and the device does nothing more.
    d.write(
        0x070,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
    );
    assert_ne!(d.status() & status::DEVICE_NEEDS_RESET, 0);
    d.mem
        .write_obj_at_addr(1u16, GuestAddress(AVAIL + 2))
        .unwrap();
    d.desc(0, BUF, 8, VIRTQ_DESC_F_WRITE, 0);
    let before = d.seen();
    d.write(0x050, 0);
    assert_eq!(d.seen(), before);
    // A reset brings it back.
    d.write(0x070, 0);
    d.avail_idx = 0;
    d.mem.write_obj_at_addr(0u32, GuestAddress(AVAIL)).unwrap();
    d.mem.write_obj_at_addr(0u32, GuestAddress(USED)).unwrap();
    d.up(4, 0);
    d.offer(4, &[0]);
    assert_eq!(d.used_idx(), 1);
}

// -- 2.7.5.3: indirect descriptors ------------------------------------------------------

/// A ready 8-entry queue with indirect tables as `indirect` says, and its driver.
fn indirect_queue(indirect: bool) -> (GuestMemory, Queue, DriverQueue) {
    let mem = GuestMemory::new(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    let driver = DriverQueue::new(
        &mem,
        8,
        GuestAddress(DESC),
        GuestAddress(AVAIL),
        GuestAddress(USED),
    )
    .unwrap();
    let mut q = Queue::new(8);
    q.set_desc_table(driver.desc_table()).unwrap();
    q.set_avail_ring(driver.avail_ring()).unwrap();
    q.set_used_ring(driver.used_ring()).unwrap();
    q.set_indirect(indirect);
    q.enable(&mem).unwrap();
    q.begin_notify();
    (mem, q, driver)
}

/// Writes raw descriptors as an indirect table at `table`.
fn table(mem: &GuestMemory, table: u64, descs: &[(u64, u32, u16, u16)]) {
    for (i, &(addr, len, flags, next)) in descs.iter().enumerate() {
        let desc = Descriptor {
            addr,
            len,
            flags,
            next,
        };
        mem.write_obj_at_addr(desc, GuestAddress(table + 16 * i as u64))
            .unwrap();
    }
}

#[test]
fn indirect_tables_work_through_the_transport_once_negotiated() {
    let mut d = Driver::new();
    d.up(8, VIRTIO_RING_F_INDIRECT_DESC);
    // A request wholly in a table: one readable, two writable buffers.
    let t = BUF + 0x1000;
    table(
        &d.mem,
        t,
        &[
            (BUF, 16, VIRTQ_DESC_F_NEXT, 1),
            (BUF + 16, 100, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 2),
            (BUF + 200, 3, VIRTQ_DESC_F_WRITE, 0),
        ],
    );
    // The device ignores the WRITE flag of the descriptor that points at the table.
    d.desc(0, t, 48, VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_WRITE, 0);
    d.offer(8, &[0]);
    assert_eq!(d.used_elem(0, 8), (0, 103));
    // Direct descriptors, then one indirect (2.7.5.3.2: the device must handle it).
    table(&d.mem, t, &[(BUF + 300, 7, VIRTQ_DESC_F_WRITE, 0)]);
    d.desc(1, BUF, 8, VIRTQ_DESC_F_NEXT, 2);
    d.desc(2, t, 16, VIRTQ_DESC_F_INDIRECT, 0);
    d.offer(8, &[1]);
    assert_eq!(d.used_elem(1, 8), (1, 7));
    assert_eq!(d.status() & status::DEVICE_NEEDS_RESET, 0);
}

#[test]
fn indirect_chains_are_refused_as_the_spec_forbids_them() {
    let t = BUF + 0x1000;
    // Not negotiated.
    let (mem, mut q, mut driver) = indirect_queue(false);
    let head = driver
        .add_indirect_chain(
            GuestAddress(t),
            &[DriverBuffer::writable(GuestAddress(BUF), 8)],
        )
        .unwrap();
    driver.make_available(head).unwrap();
    let bad = q.pop(&mem).unwrap().unwrap().unwrap_err();
    assert!(
        matches!(
            bad.error,
            QueueError::IndirectUnsupported { head: 0, index: 0 }
        ),
        "{}",
        bad.error
    );

    // Negotiated, and each shape the driver must not make.
    type Check = fn(&QueueError) -> bool;
    type Raw = (u64, u32, u16, u16);
    type Case<'a> = (&'a str, (u64, u32, u16), &'a [Raw], Check);
    let cases: [Case; 7] = [
        (
            "nested table",
            (t, 32, VIRTQ_DESC_F_INDIRECT),
            &[
                (BUF, 8, VIRTQ_DESC_F_NEXT, 1),
                (t, 16, VIRTQ_DESC_F_INDIRECT, 0),
            ],
            |e| matches!(e, QueueError::IndirectInIndirect { head: 0, index: 1 }),
        ),
        (
            "INDIRECT with NEXT",
            (t, 16, VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_NEXT),
            &[(BUF, 8, 0, 0)],
            |e| matches!(e, QueueError::IndirectWithNext { head: 0, index: 0 }),
        ),
        ("empty table", (t, 0, VIRTQ_DESC_F_INDIRECT), &[], |e| {
            matches!(
                e,
                QueueError::IndirectTableLength {
                    len: 0,
                    size: 8,
                    ..
                }
            )
        }),
        (
            "a partial descriptor",
            (t, 17, VIRTQ_DESC_F_INDIRECT),
            &[(BUF, 8, 0, 0)],
            |e| matches!(e, QueueError::IndirectTableLength { len: 17, .. }),
        ),
        (
            "more entries than the queue size",
            (t, 16 * 9, VIRTQ_DESC_F_INDIRECT),
            &[(BUF, 8, 0, 0)],
            |e| {
                matches!(
                    e,
                    QueueError::IndirectTableLength {
                        len: 144,
                        size: 8,
                        ..
                    }
                )
            },
        ),
        (
            "next past the table",
            (t, 32, VIRTQ_DESC_F_INDIRECT),
            &[(BUF, 8, VIRTQ_DESC_F_NEXT, 2), (BUF, 8, 0, 0)],
            |e| {
                matches!(
                    e,
                    QueueError::IndirectIndex {
                        index: 2,
                        entries: 2,
                        ..
                    }
                )
            },
        ),
        (
            "a loop in the table",
            (t, 32, VIRTQ_DESC_F_INDIRECT),
            &[
                (BUF, 8, VIRTQ_DESC_F_NEXT, 1),
                (BUF, 8, VIRTQ_DESC_F_NEXT, 0),
            ],
            |e| matches!(e, QueueError::ChainTooLong { head: 0, size: 8 }),
        ),
    ];
    for (what, (addr, len, flags), entries, check) in cases {
        let (mem, mut q, mut driver) = indirect_queue(true);
        table(&mem, t, entries);
        driver
            .write_descriptor(
                0,
                Descriptor {
                    addr,
                    len,
                    flags,
                    next: 1,
                },
            )
            .unwrap();
        driver.make_available(0).unwrap();
        let bad = q.pop(&mem).unwrap().unwrap().unwrap_err();
        assert!(check(&bad.error), "{what}: {}", bad.error);
    }

    // A table outside guest memory, or running past its end.
    for addr in [0x10_0000 - 16, u64::MAX - 15] {
        let (mem, mut q, mut driver) = indirect_queue(true);
        driver
            .write_descriptor(
                0,
                Descriptor {
                    addr,
                    len: 32,
                    flags: VIRTQ_DESC_F_INDIRECT,
                    next: 0,
                },
            )
            .unwrap();
        driver.make_available(0).unwrap();
        let bad = q.pop(&mem).unwrap().unwrap().unwrap_err();
        assert!(
            matches!(bad.error, QueueError::DescriptorOutOfMemory { len: 32, .. }),
            "table at {addr:#x}: {}",
            bad.error
        );
    }
}

// -- 2.7.7 / 2.7.10: used-buffer notifications --------------------------------------------

#[test]
fn used_buffers_raise_the_interrupt_unless_the_driver_suppresses_it() {
    let mut d = Driver::new();
    d.up(4, 0);
    d.desc(0, BUF, 8, VIRTQ_DESC_F_WRITE, 0);
    d.offer(4, &[0]);
    assert!(d.interrupted());
    assert_eq!(d.read(0x060) & INTERRUPT_USED_BUFFER, INTERRUPT_USED_BUFFER);
    d.write(0x064, INTERRUPT_USED_BUFFER);
    assert_eq!(d.read(0x060), 0);
    // VIRTQ_AVAIL_F_NO_INTERRUPT: used, but not signalled.
    d.mem
        .write_obj_at_addr(VIRTQ_AVAIL_F_NO_INTERRUPT, GuestAddress(AVAIL))
        .unwrap();
    d.offer(4, &[0]);
    assert_eq!(d.used_idx(), 2);
    assert!(!d.interrupted());
    assert_eq!(d.read(0x060), 0);
}

#[test]
fn with_event_idx_the_driver_says_when_to_interrupt() {
    let mut d = Driver::new();
    d.up(4, VIRTIO_RING_F_EVENT_IDX);
    d.desc(0, BUF, 8, VIRTQ_DESC_F_WRITE, 0);
    let used_event = GuestAddress(AVAIL + 4 + 2 * 4);
    let avail_event = GuestAddress(USED + 4 + 8 * 4);
    // The first used buffer always notifies.
    d.offer(4, &[0]);
    assert!(d.interrupted());
    assert_eq!(
        d.mem.read_obj_from_addr::<u16>(avail_event).unwrap(),
        1,
        "avail_event"
    );
    // used_event = 2: the driver wants to hear once the used index passes 2, not before.
    d.mem.write_obj_at_addr(2u16, used_event).unwrap();
    d.offer(4, &[0]); // used idx 2: not yet
    assert!(!d.interrupted());
    d.offer(4, &[0]); // used idx 3: passes 2
    assert!(d.interrupted());
    // NO_INTERRUPT is ignored when event-idx is negotiated; used_event rules.
    d.mem
        .write_obj_at_addr(VIRTQ_AVAIL_F_NO_INTERRUPT, GuestAddress(AVAIL))
        .unwrap();
    d.mem.write_obj_at_addr(3u16, used_event).unwrap();
    d.offer(4, &[0]); // used idx 4
    assert!(d.interrupted());
}
