// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The virtio-mmio transport, version 2 (modern): the register block a driver uses to find a
//! device, negotiate features, set up queues, notify, and read interrupt status and config.
//!
//! It holds the driver to virtio 1.x: the device status advances only as section 3.1.1
//! orders (writing 0 resets), features are accepted only if offered, a queue's registers
//! change only while the queue is not ready, and a queue is ready only once its size and
//! rings pass their checks. A driver that breaks a ring gets `DEVICE_NEEDS_RESET` and a
//! configuration-change interrupt, and the device stops using its queues until a reset.
//!
//! A device may finish a chain after `process_queue` returned, on a thread of its own (a
//! flush that waits on a slow disk must not hold the vCPU that notified, nor the transport's
//! lock that every other vCPU needs): [`MmioTransport::shared`] hands it a [`Completer`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, Weak};

use vm_memory::{GuestAddress, GuestMemory};

use super::interrupt::Interrupt;
use super::queue::{Error as QueueError, Queue};
use crate::bus::BusDevice;

/// "virt", little-endian.
pub const MMIO_MAGIC: u32 = 0x7472_6976;
/// The modern (non-legacy) transport.
pub const MMIO_VERSION: u32 = 2;
/// The register block's size; device config starts at 0x100.
pub const MMIO_SIZE: u64 = 0x200;
/// Our vendor id ("VMMQ").
pub const VENDOR_ID: u32 = 0x514d_4d56;
/// The feature bit every modern device offers and every modern driver must accept.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// The ring feature that lets the driver say when it wants used-buffer notifications (and
/// the device, when it wants kicks).
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;
/// The ring feature that lets a chain's buffers sit in a table of their own, so that one
/// ring entry carries a whole request.
pub const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << 28;

/// Device status bits.
pub mod status {
    /// The driver found the device.
    pub const ACKNOWLEDGE: u32 = 1;
    /// The driver knows how to drive it.
    pub const DRIVER: u32 = 2;
    /// The driver is ready.
    pub const DRIVER_OK: u32 = 4;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u32 = 8;
    /// The device hit an error it cannot recover from without a reset.
    pub const DEVICE_NEEDS_RESET: u32 = 64;
    /// The driver gave up on the device.
    pub const FAILED: u32 = 128;
}

/// Register offsets (virtio 1.x, section 4.2.2).
mod reg {
    pub const MAGIC: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    pub const SHM_SEL: u64 = 0x0ac;
    pub const SHM_LEN_LOW: u64 = 0x0b0;
    pub const SHM_LEN_HIGH: u64 = 0x0b4;
    pub const SHM_BASE_LOW: u64 = 0x0b8;
    pub const SHM_BASE_HIGH: u64 = 0x0bc;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    pub const CONFIG: u64 = 0x100;
}

/// Interrupt status bit: the device used buffers.
pub const INTERRUPT_USED_BUFFER: u32 = 1;
/// Interrupt status bit: the device's configuration (or its status) changed.
pub const INTERRUPT_CONFIG_CHANGE: u32 = 2;

/// What a virtio device implements behind the transport.
pub trait VirtioDevice: Send {
    /// The virtio device id (27 for pmem).
    fn device_type(&self) -> u32;
    /// Device-specific feature bits it offers; the transport adds `VIRTIO_F_VERSION_1`.
    fn features(&self) -> u64;
    /// The maximum size of each of its queues.
    fn queue_max_sizes(&self) -> Vec<u16>;
    /// Reads its configuration space; bytes past its end read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// The driver notified queue `index`: process what is available. Returns whether any
    /// buffer was used (the transport then notifies the driver, unless it asked not to be),
    /// or the queue-wide fault that makes the device need a reset.
    fn process_queue(
        &mut self,
        index: usize,
        queue: &mut Queue,
        mem: &GuestMemory,
    ) -> Result<bool, QueueError>;
    /// The driver reset the device.
    fn reset(&mut self) {}
    /// Called once by [`MmioTransport::shared`]: a device that finishes chains on another
    /// thread keeps `completer` and answers through it. Devices that answer every chain in
    /// `process_queue` ignore it (the default).
    fn set_completer(&mut self, completer: Completer) {
        let _ = completer;
    }
}

/// Finishes chains a device took in `process_queue`, later and from any thread: the chain
/// goes to the used ring and the driver is interrupted as for any used buffer. It holds the
/// transport weakly, so a device keeping it does not keep its transport alive.
#[derive(Clone, Debug)]
pub struct Completer {
    transport: Weak<Mutex<MmioTransport>>,
    epochs: Arc<[AtomicU64]>,
    resume: mpsc::Sender<usize>,
}

impl Completer {
    /// Queue `queue`'s epoch, which a device reset and the queue's own disabling or enabling
    /// move on: record it with a chain taken in `process_queue` and pass it back to
    /// [`complete`](Self::complete).
    pub fn epoch(&self, queue: usize) -> u64 {
        self.epochs
            .get(queue)
            .map_or(u64::MAX, |e| e.load(Ordering::SeqCst))
    }

    /// Whether a chain taken from `queue` in `epoch` is still the driver's to be answered:
    /// a device checks before it starts slow work for one.
    pub fn is_current(&self, queue: usize, epoch: u64) -> bool {
        self.epoch(queue) == epoch
    }

    /// Asks the transport to process `queue` again soon, on its own thread: for a device
    /// that left chains on the ring because it held as many as it takes, once it has room.
    pub fn wake(&self, queue: usize) {
        let _ = self.resume.send(queue);
    }

    /// Finishes chain `head` of queue `queue`, taken in `epoch`. Under the transport's lock,
    /// `finish` writes the response into guest memory and returns the bytes written; then the
    /// chain is used. Nothing is done, and `false` returned, if the queue's epoch moved since
    /// (a reset, or the queue set up again: the chain is no longer the driver's to be
    /// answered), the device needs a reset, the queue is not ready, or the transport is gone.
    pub fn complete(
        &self,
        queue: usize,
        head: u16,
        epoch: u64,
        finish: impl FnOnce(&GuestMemory) -> u32,
    ) -> bool {
        let Some(transport) = self.transport.upgrade() else {
            return false;
        };
        // A poisoned lock means a thread panicked inside the transport: leave it alone.
        let Ok(mut transport) = transport.lock() else {
            return false;
        };
        transport.complete(queue, head, epoch, finish)
    }
}

/// A virtio device on the MMIO bus.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemory,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    queues: Vec<Queue>,
    interrupt_status: u32,
    interrupt: Option<Interrupt>,
    /// One per queue, moved on by every reset and by the queue's QueueReady writes: chains a
    /// [`Completer`] finishes must come from their queue's current epoch.
    epochs: Arc<[AtomicU64]>,
    /// Wakes the thread that goes on with a queue (by index) whose notify spent its budget
    /// or whose device asked for it (shared transports only).
    resume: Option<mpsc::Sender<usize>>,
}

impl MmioTransport {
    /// Puts `device` behind a transport that reaches guest memory through `mem`.
    pub fn new(device: Box<dyn VirtioDevice>, mem: GuestMemory) -> MmioTransport {
        let queues: Vec<Queue> = device
            .queue_max_sizes()
            .into_iter()
            .map(Queue::new)
            .collect();
        let epochs = queues.iter().map(|_| AtomicU64::new(0)).collect();
        MmioTransport {
            device,
            mem,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            queues,
            interrupt_status: 0,
            interrupt: None,
            epochs,
            resume: None,
        }
    }

    /// The transport behind a lock, as the bus holds it, with a [`Completer`] handed to the
    /// device so that it may finish chains from other threads, and a thread of its own that
    /// goes on with a queue whose notify spent its budget (see [`Queue::budget_spent`]), a
    /// bounded share at a time, taking the lock for each.
    pub fn shared(self) -> Arc<Mutex<MmioTransport>> {
        let mut transport = self;
        let (resume, wakeups) = mpsc::channel::<usize>();
        let shared = Arc::new_cyclic(|weak| {
            let completer = Completer {
                transport: weak.clone(),
                epochs: transport.epochs.clone(),
                resume: resume.clone(),
            };
            transport.device.set_completer(completer);
            transport.resume = Some(resume);
            Mutex::new(transport)
        });
        let weak = Arc::downgrade(&shared);
        // Ends when the transport and every completer, and with them the senders, are gone
        // (or the transport is). If the thread cannot be made, a spent queue is still resumed
        // at the driver's next access.
        let spawned = std::thread::Builder::new()
            .name("virtio-mmio-resume".into())
            .spawn(move || {
                for queue in wakeups {
                    let Some(transport) = weak.upgrade() else {
                        break;
                    };
                    let Ok(mut transport) = transport.lock() else {
                        break;
                    };
                    // A fresh notify's share: nothing happens unless the device is running
                    // and the queue ready.
                    transport.notify(queue);
                }
            });
        if let Err(e) = spawned {
            log::error!("virtio-mmio: cannot start the resume thread: {e}");
        }
        shared
    }

    fn complete(
        &mut self,
        index: usize,
        head: u16,
        epoch: u64,
        finish: impl FnOnce(&GuestMemory) -> u32,
    ) -> bool {
        if self.epochs.get(index).map(|e| e.load(Ordering::SeqCst)) != Some(epoch)
            || self.status & status::DRIVER_OK == 0
            || self.status & status::DEVICE_NEEDS_RESET != 0
        {
            return false;
        }
        let Some(queue) = self.queues.get_mut(index) else {
            return false;
        };
        if !queue.ready() {
            return false;
        }
        let len = finish(&self.mem);
        let outcome = queue
            .add_used(&self.mem, head, len)
            .and_then(|()| queue.needs_notification(&self.mem));
        self.after_use(index, outcome);
        true
    }

    /// What follows using buffers of queue `index`: the interrupt if the driver wants it, or
    /// the fault that makes the device need a reset.
    fn after_use(&mut self, index: usize, outcome: Result<bool, QueueError>) {
        match outcome {
            Ok(true) => self.raise(INTERRUPT_USED_BUFFER),
            Ok(false) => {}
            Err(e) => {
                // virtio 1.x, 2.1.2: the device sets DEVICE_NEEDS_RESET and tells the driver
                // with a configuration change; it uses no queue until the driver resets it.
                log::error!("virtio-mmio: queue {index} is broken: {e}; the device needs a reset");
                self.status |= status::DEVICE_NEEDS_RESET;
                self.raise(INTERRUPT_CONFIG_CHANGE);
            }
        }
    }

    /// Raises `interrupt` whenever the interrupt status gains a bit (used buffers the driver
    /// asked to hear of, or a configuration change).
    pub fn with_interrupt(mut self, interrupt: Interrupt) -> MmioTransport {
        self.interrupt = Some(interrupt);
        self
    }

    fn raise(&mut self, bit: u32) {
        self.interrupt_status |= bit;
        if let Some(interrupt) = &self.interrupt {
            interrupt.signal();
        }
    }

    /// The device status the driver has reached.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// The interrupt status (bit 0: used buffers).
    pub fn interrupt_status(&self) -> u32 {
        self.interrupt_status
    }

    fn offered_features(&self) -> u64 {
        self.device.features()
            | VIRTIO_F_VERSION_1
            | VIRTIO_RING_F_EVENT_IDX
            | VIRTIO_RING_F_INDIRECT_DESC
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn reset(&mut self) {
        // Chains in flight on the device's threads are no longer to be answered.
        for epoch in self.epochs.iter() {
            epoch.fetch_add(1, Ordering::SeqCst);
        }
        self.status = 0;
        self.driver_features = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        self.interrupt_status = 0;
        self.queues.iter_mut().for_each(Queue::reset);
        self.device.reset();
    }

    fn read_register(&self, offset: u64) -> u32 {
        let queue = self.queues.get(self.queue_sel as usize);
        match offset {
            reg::MAGIC => MMIO_MAGIC,
            reg::VERSION => MMIO_VERSION,
            reg::DEVICE_ID => self.device.device_type(),
            reg::VENDOR_ID => VENDOR_ID,
            reg::DEVICE_FEATURES => match self.device_features_sel {
                0 => self.offered_features() as u32,
                1 => (self.offered_features() >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => queue.map_or(0, |q| q.max_size().into()),
            reg::QUEUE_NUM => queue.map_or(0, |q| q.size().into()),
            reg::QUEUE_READY => queue.map_or(0, |q| q.ready().into()),
            // No shared memory regions: a length (and base) of all ones says so.
            reg::SHM_LEN_LOW | reg::SHM_LEN_HIGH | reg::SHM_BASE_LOW | reg::SHM_BASE_HIGH => {
                u32::MAX
            }
            reg::INTERRUPT_STATUS => self.interrupt_status,
            reg::STATUS => self.status,
            reg::CONFIG_GENERATION => 0,
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = value,
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            // Features are the driver's to write only between DRIVER and FEATURES_OK.
            reg::DRIVER_FEATURES
                if self.status & status::DRIVER != 0 && self.status & status::FEATURES_OK == 0 =>
            {
                match self.driver_features_sel {
                    0 => {
                        self.driver_features =
                            (self.driver_features & !0xffff_ffff) | u64::from(value)
                    }
                    1 => {
                        self.driver_features =
                            (self.driver_features & 0xffff_ffff) | (u64::from(value) << 32)
                    }
                    _ => {}
                }
            }
            reg::QUEUE_SEL => self.queue_sel = value,
            reg::QUEUE_NUM
            | reg::QUEUE_DESC_LOW
            | reg::QUEUE_DESC_HIGH
            | reg::QUEUE_DRIVER_LOW
            | reg::QUEUE_DRIVER_HIGH
            | reg::QUEUE_DEVICE_LOW
            | reg::QUEUE_DEVICE_HIGH => self.configure_queue(offset, value),
            reg::QUEUE_READY => self.set_queue_ready(value),
            reg::QUEUE_NOTIFY => self.notify(value as usize),
            reg::INTERRUPT_ACK => self.interrupt_status &= !value,
            reg::STATUS => self.set_status(value),
            reg::SHM_SEL => {}
            _ => log::debug!("virtio-mmio: ignored write of {value:#x} at {offset:#x}"),
        }
    }

    /// A write to one of the selected queue's configuration registers: taken only while the
    /// queue is not ready (the queue refuses it otherwise).
    fn configure_queue(&mut self, offset: u64, value: u32) {
        let Some(q) = self.queues.get_mut(self.queue_sel as usize) else {
            log::warn!(
                "virtio-mmio: configuring queue {}, which does not exist",
                self.queue_sel
            );
            return;
        };
        let half = |old: GuestAddress| {
            if offset.is_multiple_of(8) {
                GuestAddress((old.0 & !0xffff_ffff) | u64::from(value))
            } else {
                GuestAddress((old.0 & 0xffff_ffff) | (u64::from(value) << 32))
            }
        };
        let result = match offset {
            // A size that does not fit 16 bits is kept as 0, which `enable` refuses.
            reg::QUEUE_NUM => q.set_size(u16::try_from(value).unwrap_or(0)),
            reg::QUEUE_DESC_LOW | reg::QUEUE_DESC_HIGH => q.set_desc_table(half(q.desc_table())),
            reg::QUEUE_DRIVER_LOW | reg::QUEUE_DRIVER_HIGH => {
                q.set_avail_ring(half(q.avail_ring()))
            }
            _ => q.set_used_ring(half(q.used_ring())),
        };
        if let Err(e) = result {
            log::warn!("virtio-mmio: queue {}: {e}", self.queue_sel);
        }
    }

    fn set_queue_ready(&mut self, value: u32) {
        let mem = self.mem.clone();
        let (epochs, index) = (self.epochs.clone(), self.queue_sel as usize);
        let Some(q) = self.selected_queue() else {
            return;
        };
        // The queue stops, or is set up again: chains taken before are not to be answered
        // into its new rings.
        if (value == 0) == q.ready() {
            if let Some(epoch) = epochs.get(index) {
                epoch.fetch_add(1, Ordering::SeqCst);
            }
        }
        match value {
            0 => q.disable(),
            1 if q.ready() => {}
            1 => {
                if let Err(e) = q.enable(&mem) {
                    log::warn!("virtio-mmio: queue refused: {e}");
                }
            }
            other => log::warn!("virtio-mmio: QueueReady {other:#x} is neither 0 nor 1"),
        }
    }

    /// A status write, taken only if it is a step virtio 1.x allows: 0 resets; otherwise no
    /// bit may be cleared, ACKNOWLEDGE comes first, DRIVER after it, FEATURES_OK after DRIVER
    /// and only for features offered (with VERSION_1), DRIVER_OK after FEATURES_OK; FAILED
    /// may come at any time. DEVICE_NEEDS_RESET is the device's to set, not the driver's.
    fn set_status(&mut self, value: u32) {
        use status::*;
        if value == 0 {
            self.reset();
            return;
        }
        let old = self.status;
        let value = (value & !DEVICE_NEEDS_RESET) | (old & DEVICE_NEEDS_RESET);
        let refuse = |why: &str| {
            log::warn!("virtio-mmio: status {value:#x} after {old:#x} refused: {why}");
        };
        if value & old != old {
            return refuse("a driver must not clear a status bit");
        }
        let needs = [
            (DRIVER, ACKNOWLEDGE),
            (FEATURES_OK, DRIVER),
            (DRIVER_OK, FEATURES_OK),
        ];
        if value & (ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK) != 0 && value & ACKNOWLEDGE == 0
        {
            return refuse("ACKNOWLEDGE comes first");
        }
        for (bit, after) in needs {
            if value & bit != 0 && value & after == 0 {
                return refuse("steps must come in order");
            }
        }
        let mut value = value;
        if value & FEATURES_OK != 0 && old & FEATURES_OK == 0 {
            let offered = self.offered_features();
            let acceptable = self.driver_features & !offered == 0
                && self.driver_features & VIRTIO_F_VERSION_1 != 0;
            if !acceptable {
                // The driver reads the status back and sees FEATURES_OK refused.
                log::warn!(
                    "virtio-mmio: driver features {:#x} not acceptable (offered {offered:#x})",
                    self.driver_features
                );
                value &= !(FEATURES_OK | DRIVER_OK);
            } else {
                let event_idx = self.driver_features & VIRTIO_RING_F_EVENT_IDX != 0;
                let indirect = self.driver_features & VIRTIO_RING_F_INDIRECT_DESC != 0;
                for queue in &mut self.queues {
                    queue.set_event_idx(event_idx);
                    queue.set_indirect(indirect);
                }
            }
        }
        self.status = value;
    }

    fn notify(&mut self, index: usize) {
        if self.status & status::DRIVER_OK == 0 || self.status & status::DEVICE_NEEDS_RESET != 0 {
            return;
        }
        let Some(queue) = self.queues.get_mut(index) else {
            log::warn!("virtio-mmio: notify for queue {index}, which does not exist");
            return;
        };
        if !queue.ready() {
            return;
        }
        queue.begin_notify();
        let outcome = self
            .device
            .process_queue(index, queue, &self.mem)
            .and_then(|used| Ok(used && queue.needs_notification(&self.mem)?));
        let spent = queue.budget_spent();
        self.after_use(index, outcome);
        if spent {
            if let Some(resume) = &self.resume {
                let _ = resume.send(index);
            }
        }
    }
}

impl MmioTransport {
    /// Goes on with queues whose last notify stopped at its budget with chains left (see
    /// [`Queue::budget_spent`]): the driver may not notify again for chains it already
    /// offered, but it touches the device (at the latest to read the interrupt status of
    /// the used buffers that notify returned), and each access does another bounded share.
    fn resume_spent_queues(&mut self) {
        for index in 0..self.queues.len() {
            if self.queues[index].ready() && self.queues[index].budget_spent() {
                self.notify(index);
            }
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.resume_spent_queues();
        if offset >= reg::CONFIG {
            self.device.read_config(offset - reg::CONFIG, data);
            return;
        }
        // Registers are 32-bit and must be read whole and aligned; anything else reads 0.
        if data.len() != 4 || !offset.is_multiple_of(4) {
            data.fill(0);
            return;
        }
        data.copy_from_slice(&self.read_register(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        self.resume_spent_queues();
        if offset >= reg::CONFIG {
            // Our devices' config spaces are read-only.
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            return;
        };
        if !offset.is_multiple_of(4) {
            return;
        }
        self.write_register(offset, u32::from_le_bytes(bytes));
    }
}
