// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Two split-ring implementations checked against each other on our `GuestMemory`: chains our
//! `virtio::driver` writes are popped by rust-vmm's `virtio-queue`, and chains
//! `virtio-queue`'s mock driver writes are popped by our `Queue`, direct and indirect, with the
//! used elements going back the other way. `virtio-queue` reaches our memory through
//! vm_memory's `rust-vmm` adapter.

use devices::virtio::driver::{DriverBuffer, DriverQueue};
use devices::virtio::queue::{
    Buffer, Descriptor, Queue, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue as RvQueue, QueueT};
use vm_memory::rust_vm_memory as rvm;
use vm_memory::{GuestAddress, GuestMemory};

const SIZE: u16 = 16;
const DESC: u64 = 0x1000;
const AVAIL: u64 = 0x2000;
const USED: u64 = 0x3000;
/// Indirect tables, one page each.
const TABLES: u64 = 0x10_0000;
/// Buffers: across the boundary between the two regions at 0x20_0000.
const BUFFERS: u64 = 0x1f_0000;

/// Where virtio-queue's mock driver puts its indirect tables.
const MOCK_TABLES: u64 = 0x3000_0000;

/// Two contiguous regions (buffers may cross from one into the other), and, after a hole,
/// one for the mock driver's indirect tables.
fn memory() -> GuestMemory {
    GuestMemory::new(&[
        (GuestAddress(0), 0x20_0000),
        (GuestAddress(0x20_0000), 0x20_0000),
        (GuestAddress(MOCK_TABLES), 0x10_0000),
    ])
    .unwrap()
}

fn random_chain(rng: &mut StdRng) -> Vec<DriverBuffer> {
    let len = rng.random_range(1..=6);
    let readable = rng.random_range(0..=len);
    (0..len)
        .map(|i| {
            let addr = GuestAddress(BUFFERS + rng.random_range(0..0x2_0000u64));
            let size = rng.random_range(1..=0x1000u32);
            if i < readable {
                DriverBuffer::readable(addr, size)
            } else {
                DriverBuffer::writable(addr, size)
            }
        })
        .collect()
}

/// Our driver's side of a queue at the usual rings.
fn driver_queue(mem: &GuestMemory) -> DriverQueue {
    DriverQueue::new(
        mem,
        SIZE,
        GuestAddress(DESC),
        GuestAddress(AVAIL),
        GuestAddress(USED),
    )
    .unwrap()
}

fn rv_queue(mem: &GuestMemory, desc: u64, avail: u64, used: u64) -> RvQueue {
    let mut q = RvQueue::new(SIZE).unwrap();
    q.set_size(SIZE);
    q.set_desc_table_address(Some(desc as u32), Some((desc >> 32) as u32));
    q.set_avail_ring_address(Some(avail as u32), Some((avail >> 32) as u32));
    q.set_used_ring_address(Some(used as u32), Some((used >> 32) as u32));
    q.set_ready(true);
    assert!(q.is_valid(mem));
    q
}

#[test]
fn virtio_queue_pops_what_our_driver_wrote() {
    let mem = memory();
    let mut rng = StdRng::seed_from_u64(0x7165_7565);
    let mut driver = driver_queue(&mem);
    let mut theirs = rv_queue(&mem, DESC, AVAIL, USED);
    let mut indirect_chains = 0;
    for round in 0..200 {
        // A few chains in flight at once, some with indirect tables.
        let mut offered = Vec::new();
        let mut in_flight = 0;
        for n in 0..rng.random_range(1..=4u64) {
            let chain = random_chain(&mut rng);
            let indirect = rng.random_bool(0.5);
            let head = if indirect {
                indirect_chains += 1;
                let table = GuestAddress(TABLES + n * 0x1000);
                driver.add_indirect_chain(table, &chain).unwrap()
            } else {
                driver.add_chain(&chain).unwrap()
            };
            in_flight += if indirect { 1 } else { chain.len() };
            assert!(in_flight <= usize::from(SIZE));
            driver.make_available(head).unwrap();
            offered.push((head, chain));
        }
        for (head, chain) in offered {
            let popped = theirs
                .pop_descriptor_chain(&mem)
                .unwrap_or_else(|| panic!("round {round}: virtio-queue saw no chain"));
            assert_eq!(popped.head_index(), head, "round {round}");
            let seen: Vec<DriverBuffer> = popped
                .map(|d| DriverBuffer {
                    addr: GuestAddress(d.addr().0),
                    len: d.len(),
                    writable: d.is_write_only(),
                })
                .collect();
            assert_eq!(seen, chain, "round {round}, head {head}");
            let written: u32 = chain.iter().filter(|b| b.writable).map(|b| b.len).sum();
            theirs.add_used(&mem, head, written).unwrap();
            assert_eq!(
                driver.pop_used().unwrap(),
                Some((u32::from(head), written)),
                "round {round}: the used element virtio-queue wrote"
            );
        }
        assert!(theirs.pop_descriptor_chain(&mem).is_none());
    }
    assert!(
        indirect_chains > 50,
        "too few indirect chains: {indirect_chains}"
    );
}

fn raw(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
}

/// Our queue on the mock's rings.
fn our_queue(mock: &MockSplitQueue<GuestMemory>, mem: &GuestMemory) -> Queue {
    let mut q = Queue::new(SIZE);
    q.set_desc_table(GuestAddress(mock.desc_table_addr().0))
        .unwrap();
    q.set_avail_ring(GuestAddress(mock.avail_addr().0)).unwrap();
    q.set_used_ring(GuestAddress(mock.used_addr().0)).unwrap();
    q.set_indirect(true);
    q.enable(mem).unwrap();
    q
}

fn used_elem(mock: &MockSplitQueue<GuestMemory>, i: u16) -> (u32, u32) {
    let elem = mock.used().ring().ref_at(usize::from(i)).unwrap().load();
    (elem.id(), elem.len())
}

#[test]
fn our_queue_pops_what_virtio_queues_mock_driver_wrote() {
    let mem = memory();
    let mut rng = StdRng::seed_from_u64(0x6d6f_636b);
    let mut total = 0u16;
    for round in 0..100 {
        let mock = MockSplitQueue::create(&mem, rvm::GuestAddress(0), SIZE);
        let mut ours = our_queue(&mock, &mem);
        ours.begin_notify();
        // Chains laid out by the mock from raw descriptors: it fills the available ring.
        let mut descs = Vec::new();
        let mut chains: Vec<(u16, Vec<Buffer>)> = Vec::new();
        while descs.len() < usize::from(SIZE) - 6 {
            let chain = random_chain(&mut rng);
            let head = descs.len() as u16;
            let mut buffers = Vec::new();
            for (i, b) in chain.iter().enumerate() {
                let last = i + 1 == chain.len();
                let mut flags = if b.writable { VIRTQ_DESC_F_WRITE } else { 0 };
                if !last {
                    flags |= VIRTQ_DESC_F_NEXT;
                }
                let next = if last { 0 } else { descs.len() as u16 + 1 };
                descs.push(raw(b.addr.0, b.len, flags, next));
                buffers.push(Buffer {
                    addr: b.addr,
                    len: b.len,
                    writable: b.writable,
                });
            }
            chains.push((head, buffers));
        }
        mock.add_desc_chains(&descs, 0).unwrap();
        for (head, buffers) in &chains {
            let chain = ours.pop(&mem).unwrap().expect("a chain").unwrap();
            assert_eq!(chain.head, *head, "round {round}");
            assert_eq!(&chain.buffers, buffers, "round {round}");
            ours.add_used(&mem, chain.head, u32::from(*head) * 3)
                .unwrap();
        }
        assert!(ours.pop(&mem).unwrap().is_none());
        // The mock reads the used elements we wrote.
        assert_eq!(mock.used().idx().load(), chains.len() as u16);
        for (i, (head, _)) in chains.iter().enumerate() {
            assert_eq!(
                used_elem(&mock, i as u16),
                (u32::from(*head), u32::from(*head) * 3)
            );
        }
        total += chains.len() as u16;
    }
    assert!(total >= 200);
}

#[test]
fn our_queue_pops_virtio_queues_indirect_chains() {
    let mem = memory();
    for len in [1u16, 2, 7, SIZE] {
        let mut mock = MockSplitQueue::create(&mem, rvm::GuestAddress(0), SIZE);
        let mut ours = our_queue(&mock, &mem);
        ours.begin_notify();
        mock.add_indirect_chain(len).unwrap();
        mock.add_indirect_chain(len).unwrap();
        for _ in 0..2 {
            // A table of the queue's size costs a whole notify's budget: one chain a notify.
            ours.begin_notify();
            let chain = ours.pop(&mem).unwrap().expect("a chain").unwrap();
            // The mock's table entries: 0x1000 bytes at 0x1000, readable, chained in order.
            assert_eq!(chain.buffers.len(), usize::from(len));
            for b in &chain.buffers {
                assert_eq!(
                    *b,
                    Buffer {
                        addr: GuestAddress(0x1000),
                        len: 0x1000,
                        writable: false
                    }
                );
            }
            // The ring descriptor the mock wrote points at its table.
            let desc: Descriptor = mem
                .read_obj_from_addr(GuestAddress(
                    mock.desc_table_addr().0 + 16 * u64::from(chain.head),
                ))
                .unwrap();
            assert_eq!(desc.flags, VIRTQ_DESC_F_INDIRECT);
            assert!(desc.addr >= MOCK_TABLES);
            assert_eq!(desc.len, 16 * u32::from(len));
            ours.add_used(&mem, chain.head, 0).unwrap();
        }
        assert!(ours.pop(&mem).unwrap().is_none());
        assert_eq!(mock.used().idx().load(), 2);
    }
}

#[test]
fn both_queues_read_the_same_chains_from_one_ring() {
    // The same rings, read by both queues: each chain, direct or indirect, the same buffers.
    let mem = memory();
    let mut rng = StdRng::seed_from_u64(0x626f_7468);
    let mut driver = driver_queue(&mem);
    let mut ours = Queue::new(SIZE);
    ours.set_desc_table(GuestAddress(DESC)).unwrap();
    ours.set_avail_ring(GuestAddress(AVAIL)).unwrap();
    ours.set_used_ring(GuestAddress(USED)).unwrap();
    ours.set_indirect(true);
    ours.enable(&mem).unwrap();
    let mut theirs = rv_queue(&mem, DESC, AVAIL, USED);
    for i in 0..300u32 {
        ours.begin_notify();
        let chain = random_chain(&mut rng);
        let head = if i % 3 == 0 {
            driver
                .add_indirect_chain(GuestAddress(TABLES), &chain)
                .unwrap()
        } else {
            driver.add_chain(&chain).unwrap()
        };
        driver.make_available(head).unwrap();
        let a = ours.pop(&mem).unwrap().unwrap().unwrap();
        let b: Vec<_> = theirs.pop_descriptor_chain(&mem).unwrap().collect();
        assert_eq!(a.buffers.len(), b.len());
        for (x, y) in a.buffers.iter().zip(&b) {
            assert_eq!(
                (x.addr.0, x.len, x.writable),
                (y.addr().0, y.len(), y.is_write_only())
            );
        }
        // Only one of them keeps the used ring (each counts its own used index).
        ours.add_used(&mem, head, i).unwrap();
        assert_eq!(driver.pop_used().unwrap(), Some((u32::from(head), i)));
    }
}
