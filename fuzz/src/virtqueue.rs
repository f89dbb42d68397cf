// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A hostile driver's split virtqueue: the input configures a queue (any size, rings
//! anywhere, including across contiguous regions, over holes and past the end of memory),
//! enables, disables and resets it, writes anything into the rings and descriptors between
//! notifies, and notifies. The device side pops chains and uses them as a device would.
//! Promises checked: nothing panics; configuration never changes while the queue is ready;
//! a ready queue's rings are in guest memory, so using a buffer never fails; every buffer
//! handed out is guest memory and readable ones come before writable ones; however the
//! driver writes the rings during a notify, one notify takes at most the queue size of
//! chains, bad ones included, and hands out at most twice the queue size of buffers,
//! indirect tables included; each chain holds at most the queue size of buffers.

use devices::virtio::queue::{Descriptor, Error, Queue, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT};
use vm_memory::{GuestAddress, GuestMemory};

use crate::input::Input;

/// Two contiguous regions, then a hole, then a third: rings may straddle the first boundary
/// and must never straddle the hole.
const REGIONS: [(u64, u64); 3] = [(0, 0x1_0000), (0x1_0000, 0x1000), (0x1_2000, 0x1000)];
const MAX: u16 = 256;

fn address(input: &mut Input) -> GuestAddress {
    let pick = input.u8();
    let near = match pick % 8 {
        0 => return GuestAddress(input.u64()),
        1 => 0x1_0000, // the contiguous boundary
        2 => 0x1_1000, // the hole
        3 => 0x1_3000, // the end of memory
        4 => u64::MAX - 0xfff,
        _ => u64::from(input.u16()) & !0xf,
    };
    GuestAddress(near.wrapping_add_signed(i64::from(input.u8() as i8)))
}

fn size(input: &mut Input) -> u16 {
    match input.u8() % 4 {
        0 => input.u16(),
        1 => 0,
        _ => 1 << (input.u8() % 10),
    }
}

/// The device's side of one notify, while the driver (another vCPU) may write the rings
/// between chains; returns how many buffers the device was handed.
fn notify(queue: &mut Queue, mem: &GuestMemory, indirect: bool, input: &mut Input) -> usize {
    queue.begin_notify();
    let mut descriptors = 0;
    let mut pops = 0;
    loop {
        let chain = match queue.pop(mem) {
            Ok(None) => break,
            Ok(Some(chain)) => chain,
            // A queue-wide fault: the device stops (and would need a reset).
            Err(_) => break,
        };
        // Mid-notify, the driver (another vCPU) writes its rings: the available index
        // moved on, a head in the ring, a descriptor.
        let n = u64::from(queue.size());
        match input.u8() % 8 {
            0..=3 => {
                // One more chain offered: a head (often one the device cannot use) in the
                // next slot, then the index.
                let avail_idx = queue.avail_ring().unchecked_add(2);
                let idx: u16 = mem.read_obj_from_addr(avail_idx).unwrap_or(0);
                let slot = u64::from(idx) % n;
                let at = queue.avail_ring().unchecked_add(4 + 2 * slot);
                let _ = mem.write_obj_at_addr(input.u16(), at);
                let _ = mem.write_obj_at_addr(idx.wrapping_add(1), avail_idx);
            }
            4 => {
                let slot = u64::from(input.u16()) % n;
                let at = queue.avail_ring().unchecked_add(4 + 2 * slot);
                let _ = mem.write_obj_at_addr(input.u16(), at);
            }
            5 => {
                let at = queue
                    .desc_table()
                    .unchecked_add(16 * (u64::from(input.u16()) % n));
                let bytes = input.bytes(16).to_vec();
                let _ = mem.write_all_at_addr(&bytes, at);
            }
            6 => {
                // A well-formed indirect table, as long as the queue allows, in the first
                // region, and a ring descriptor pointing at it.
                let entries = 1 + u64::from(input.u16()) % n;
                let table = GuestAddress(0x8000);
                for i in 0..entries {
                    let last = i + 1 == entries;
                    let desc = Descriptor {
                        addr: 0x100 + 16 * (i % 64),
                        len: 16,
                        flags: if last { 0 } else { VIRTQ_DESC_F_NEXT },
                        next: (i + 1) as u16,
                    };
                    let _ = mem.write_obj_at_addr(desc, table.unchecked_add(16 * i));
                }
                let pointer = Descriptor {
                    addr: table.0,
                    len: 16 * entries as u32,
                    flags: VIRTQ_DESC_F_INDIRECT,
                    next: 0,
                };
                let at = queue
                    .desc_table()
                    .unchecked_add(16 * (u64::from(input.u16()) % n));
                let _ = mem.write_obj_at_addr(pointer, at);
            }
            _ => {}
        }
        pops += 1;
        assert!(
            pops <= usize::from(queue.size()),
            "more chains than the queue holds"
        );
        let (head, len) = match chain {
            Ok(chain) => {
                let mut written = 0u32;
                let mut seen_writable = false;
                for b in &chain.buffers {
                    assert!(mem.is_valid_range(b.addr, u64::from(b.len)), "{b:?}");
                    assert!(b.writable || !seen_writable, "readable after writable");
                    seen_writable |= b.writable;
                    let mut data = vec![0; b.len as usize];
                    if b.writable {
                        data.fill(0xd5);
                        mem.write_all_at_addr(&data, b.addr)
                            .expect("a checked buffer");
                        written = written.saturating_add(b.len);
                    } else {
                        mem.read_exact_at_addr(&mut data, b.addr)
                            .expect("a checked buffer");
                    }
                }
                assert!(
                    chain.buffers.len() <= usize::from(queue.size()),
                    "a chain longer than the queue"
                );
                descriptors += chain.buffers.len();
                (chain.head, written)
            }
            Err(bad) => (bad.head, 0),
        };
        queue
            .add_used(mem, head, len)
            .expect("the used ring of a ready queue is guest memory");
    }
    if pops > 0 {
        queue
            .needs_notification(mem)
            .expect("the rings of a ready queue are guest memory");
    }
    // Every descriptor read, indirect tables included, costs the budget: a notify starts
    // chains only below the queue size of reads, and a chain costs at most the size and one.
    assert!(
        descriptors <= 2 * usize::from(queue.size()),
        "one notify handed out {descriptors} buffers, {} chains (indirect: {indirect})",
        pops
    );
    descriptors
}

/// Runs the input. Panics if a promise is broken.
pub fn run(data: &[u8]) {
    let ranges: Vec<_> = REGIONS.iter().map(|&(a, s)| (GuestAddress(a), s)).collect();
    let mem = GuestMemory::new(&ranges).expect("a valid layout");
    let mut input = Input::new(data);
    let mut queue = Queue::new(MAX);
    let mut indirect = false;
    let mut ops = 0;
    while !input.is_empty() && ops < 512 {
        ops += 1;
        match input.u8() % 8 {
            0 | 1 => {
                // The driver writes anything anywhere (rings, descriptors, buffers).
                let at = address(&mut input);
                let len = usize::from(input.u8());
                let bytes = input.bytes(len).to_vec();
                let _ = mem.write_all_at_addr(&bytes, at);
            }
            2 => {
                let ready = queue.ready();
                let (s, d, a, u) = (
                    size(&mut input),
                    address(&mut input),
                    address(&mut input),
                    address(&mut input),
                );
                let before = (queue.size(), queue.desc_table(), queue.avail_ring());
                let results = [
                    queue.set_size(s),
                    queue.set_desc_table(d),
                    queue.set_avail_ring(a),
                    queue.set_used_ring(u),
                ];
                for r in results {
                    match r {
                        Ok(()) => assert!(!ready),
                        Err(Error::ConfigWhileReady { .. }) => assert!(ready),
                        Err(e) => panic!("configuration refused with {e}"),
                    }
                }
                if ready {
                    assert_eq!(
                        before,
                        (queue.size(), queue.desc_table(), queue.avail_ring())
                    );
                }
            }
            3 => match queue.enable(&mem) {
                Ok(()) => {
                    assert!(queue.ready());
                    queue.validate(&mem).expect("a ready queue is valid");
                }
                Err(_) => assert!(!queue.ready(), "a queue that failed its checks is ready"),
            },
            4 => queue.disable(),
            5 => queue.reset(),
            6 => {
                let bits = input.u8();
                queue.set_event_idx(bits & 1 != 0);
                indirect = bits & 2 != 0;
                queue.set_indirect(indirect);
            }
            _ => {
                if queue.ready() {
                    notify(&mut queue, &mem, indirect, &mut input);
                } else {
                    assert!(matches!(queue.pop(&mem), Err(Error::NotReady)));
                    assert!(matches!(queue.add_used(&mem, 0, 0), Err(Error::NotReady)));
                }
            }
        }
    }
}
