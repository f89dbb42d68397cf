// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A hostile driver on the virtio-mmio transport: the input is a sequence of register reads
//! and writes (any offset, any width, any value, in any order), writes to guest memory, and
//! notifies, against a device with two queues that uses every chain it is given. Promises
//! checked after every step: nothing panics; the status only moves as virtio 1.x allows
//! (no bit cleared but by a reset, each step after the one before it); a ready queue has a
//! valid size; the interrupt status holds only its two bits; the device is not called while
//! the driver is not ready or the device needs a reset; one notify hands the device at most
//! the queue size of chains, each of at most the queue size of buffers.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use devices::bus::BusDevice;
use devices::virtio::mmio::{status, MmioTransport, VirtioDevice};
use devices::virtio::queue::{Error as QueueError, Queue};
use vm_memory::{GuestAddress, GuestMemory};

use crate::input::Input;

const MEM: u64 = 0x2_0000;
const MAX: [u16; 2] = [16, 256];
/// Offsets of the registers, so that most writes hit one.
const REGISTERS: [u64; 24] = [
    0x000, 0x004, 0x008, 0x00c, 0x010, 0x014, 0x020, 0x024, 0x030, 0x034, 0x038, 0x044, 0x050,
    0x060, 0x064, 0x070, 0x080, 0x084, 0x090, 0x094, 0x0a0, 0x0a4, 0x0fc, 0x100,
];

/// Counts what it is handed, and checks a notify stays within the queue size (in chains, and
/// in buffers per chain).
struct Sink {
    calls: Arc<AtomicUsize>,
}

impl VirtioDevice for Sink {
    fn device_type(&self) -> u32 {
        0x42
    }
    fn features(&self) -> u64 {
        1 << 5 // an unused device bit
    }
    fn queue_max_sizes(&self) -> Vec<u16> {
        MAX.to_vec()
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset.wrapping_add(i as u64) as u8;
        }
    }
    fn process_queue(
        &mut self,
        _: usize,
        queue: &mut Queue,
        mem: &GuestMemory,
    ) -> Result<bool, QueueError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let mut chains = 0;
        let mut used = false;
        while let Some(chain) = queue.pop(mem)? {
            chains += 1;
            let (head, len) = match chain {
                Ok(chain) => {
                    // Indirect tables are offered: a chain holds at most the queue size.
                    assert!(chain.buffers.len() <= usize::from(queue.size()));
                    for b in &chain.buffers {
                        assert!(mem.is_valid_range(b.addr, u64::from(b.len)), "{b:?}");
                    }
                    (chain.head, 0)
                }
                Err(bad) => (bad.head, 0),
            };
            queue.add_used(mem, head, len)?;
            used = true;
        }
        assert!(
            chains <= usize::from(queue.size()),
            "one notify took more chains than the queue holds"
        );
        Ok(used)
    }
}

fn value(input: &mut Input) -> u32 {
    match input.u8() % 6 {
        0 => input.u32(),
        1 => u32::from(input.u8() % 16), // status steps, small sizes, queue numbers
        2 => 1 << (input.u8() % 32),
        3 => [0x0b, 0x0f, 0x4f, 0xff, 0xffff, 0x1_0000][usize::from(input.u8() % 6)],
        // Addresses in memory, at the end of it, and past it.
        4 => (u32::from(input.u16()) << 1) & !0xf,
        _ => MEM as u32 - u32::from(input.u8()),
    }
}

/// The status bits a driver sets, in the order it must set them.
const STEPS: [u32; 4] = [
    status::ACKNOWLEDGE,
    status::DRIVER,
    status::FEATURES_OK,
    status::DRIVER_OK,
];

fn check_status(old: u32, new: u32, wrote_zero: bool) {
    for pair in STEPS.windows(2) {
        assert!(
            new & pair[1] == 0 || new & pair[0] != 0,
            "status {new:#x}: {:#x} without {:#x}",
            pair[1],
            pair[0]
        );
    }
    if !wrote_zero {
        assert_eq!(
            new & old,
            old,
            "status went from {old:#x} to {new:#x} without a reset"
        );
    } else {
        assert_eq!(new, 0, "a reset left status {new:#x}");
    }
}

fn read(t: &mut MmioTransport, offset: u64) -> u32 {
    let mut buf = [0u8; 4];
    t.read(offset, &mut buf);
    u32::from_le_bytes(buf)
}

/// Runs the input. Panics if a promise is broken.
pub fn run(data: &[u8]) {
    let mem = GuestMemory::new(&[(GuestAddress(0), MEM)]).expect("a valid layout");
    let calls = Arc::new(AtomicUsize::new(0));
    let device = Sink {
        calls: calls.clone(),
    };
    let mut t = MmioTransport::new(Box::new(device), mem.clone());
    let mut input = Input::new(data);
    let mut ops = 0;
    while !input.is_empty() && ops < 512 {
        ops += 1;
        let op = input.u8();
        let offset = if op & 0x80 != 0 {
            u64::from(input.u16() % 0x140)
        } else {
            REGISTERS[usize::from(input.u8()) % REGISTERS.len()]
        };
        let old = t.status();
        let calls_before = calls.load(Ordering::SeqCst);
        match op % 4 {
            0 | 1 => {
                let v = value(&mut input).to_le_bytes();
                let width = [4, 4, 4, 1, 2, 8][usize::from(input.u8() % 6)];
                let mut bytes = [0u8; 8];
                bytes[..4].copy_from_slice(&v);
                t.write(offset, &bytes[..width]);
                let whole = width == 4;
                check_status(old, t.status(), whole && offset == 0x070 && v == [0; 4]);
                let notified = whole && offset == 0x050;
                if calls.load(Ordering::SeqCst) != calls_before {
                    assert!(notified, "the device ran without a notify");
                    assert!(
                        old & status::DRIVER_OK != 0,
                        "the device ran before DRIVER_OK"
                    );
                    assert!(
                        old & status::DEVICE_NEEDS_RESET == 0,
                        "ran while it needs reset"
                    );
                }
            }
            2 => {
                let width = [4, 4, 1, 2, 8, 3][usize::from(input.u8() % 6)];
                let mut buf = vec![0xaa; width];
                t.read(offset, &mut buf);
                if offset < 0x100 && (width != 4 || offset % 4 != 0) {
                    assert!(buf.iter().all(|&b| b == 0), "a partial register read");
                }
            }
            _ => {
                let at = GuestAddress(u64::from(input.u16()) << 1);
                let len = usize::from(input.u8());
                let bytes = input.bytes(len).to_vec();
                let _ = mem.write_all_at_addr(&bytes, at);
            }
        }
        assert_eq!(t.interrupt_status() & !3, 0, "interrupt status bits");
        // Every queue: ready means a valid size.
        let selected = read(&mut t, 0x030);
        for q in 0..MAX.len() as u32 {
            t.write(0x030, &q.to_le_bytes());
            if read(&mut t, 0x044) == 1 {
                let num = read(&mut t, 0x038);
                assert!(
                    num.is_power_of_two() && num <= read(&mut t, 0x034),
                    "size {num}"
                );
            }
        }
        t.write(0x030, &selected.to_le_bytes());
    }
}
