// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! One client cannot starve, shadow or stall the others: grants, quotas, reserved ranges,
//! an msync that blocks, a client that does not read its answers, and region ids that never
//! reach a reused slot.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base::{AsRawDescriptor, MappedRegion, Protection, SharedMemory, Tube};
use common::*;
use hypervisor::kvm::KvmVm;
use hypervisor::{MemCacheType, MemSlot, Vm, VmCap};
use vm_control::{
    ClientError, ClientPolicy, ServerError, VmMemoryClient, VmMemoryError, VmMemoryRequest,
    VmMemoryResponse, VmMemoryServer, VmMemorySource,
};
use vm_memory::{GuestAddress, GuestMemory};

const RW: Protection = Protection::read_write();
const COHERENT: MemCacheType = MemCacheType::CacheCoherent;

fn refused<T: std::fmt::Debug>(r: Result<T, ClientError>) -> VmMemoryError {
    match r {
        Err(ClientError::Refused(e)) => e,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn arena(
    client: &VmMemoryClient,
    gpa: u64,
    size: u64,
) -> Result<(vm_control::VmMemoryRegionId, MemSlot), ClientError> {
    client.register_memory(VmMemorySource::Arena { size }, None, gpa, RW, COHERENT)
}

#[test]
fn requests_outside_the_grant_are_refused_before_anything_is_mapped() {
    let Some(kvm) = kvm_or_skip("grants") else {
        return;
    };
    let window = 1u64 << 32;
    let policy = ClientPolicy::new().grant(GuestAddress(window), 1 << 30);
    let (served, mut tubes) = Served::start_with(&kvm, vec![policy]);
    let client = VmMemoryClient::new(tubes.remove(0));
    for (gpa, size) in [
        (0x10_0000, P),                  // below the grant
        (window - P, 2 * P),             // straddling its start
        (window + (1 << 30) - P, 2 * P), // its end
        (window + (1 << 30), P),         // just past it
    ] {
        let e = refused(arena(&client, gpa, size));
        assert_eq!(e, VmMemoryError::OutsideGrant { gpa, size }, "{e}");
        assert!(e.to_string().contains(&format!("{gpa:#x}")), "{e}");
    }
    // Found by fuzzing: a 2.1 TiB arena in one 21-byte request tied the server up for 11 s
    // in KVM. Now it is refused at once, and nothing was reserved.
    let start = Instant::now();
    let e = refused(arena(&client, window, 0x210_0000_0000));
    assert_eq!(
        e,
        VmMemoryError::OutsideGrant {
            gpa: window,
            size: 0x210_0000_0000
        }
    );
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    // No reservation of that size exists in this process.
    let huge = std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter_map(|l| {
            l.split_whitespace()
                .next()?
                .split_once('-')
                .map(|(a, b)| (a.to_owned(), b.to_owned()))
        })
        .filter_map(|(a, b)| {
            Some(u64::from_str_radix(&b, 16).ok()? - u64::from_str_radix(&a, 16).ok()?)
        })
        .any(|len| len >= 0x210_0000_0000);
    assert!(
        !huge,
        "a 2.1 TiB reservation was made for a refused request"
    );
    // Inside the grant it works.
    let (id, _) = arena(&client, window, 1 << 30).unwrap();
    client.unregister_memory(id).unwrap();
    drop(served);
}

#[test]
fn clients_grants_must_be_disjoint() {
    let Some(kvm) = kvm_or_skip("disjoint_grants") else {
        return;
    };
    let vm = Arc::new(
        KvmVm::new(
            &kvm,
            GuestMemory::new(&[(GuestAddress(0), 16 * P)]).unwrap(),
        )
        .unwrap(),
    );
    let mut server = VmMemoryServer::new(vm).unwrap();
    let (_a, a) = Tube::pair().unwrap();
    let (_b, b) = Tube::pair().unwrap();
    let first = server
        .add_client(a, ClientPolicy::new().grant(GuestAddress(1 << 32), 1 << 30))
        .unwrap();
    // A second client whose grant reaches into the first's would be able to shadow it.
    let err = server
        .add_client(
            b,
            ClientPolicy::new().grant(GuestAddress((1 << 32) + (1 << 29)), 1 << 30),
        )
        .unwrap_err();
    assert!(
        matches!(err, ServerError::GrantOverlap { other, .. } if other == first),
        "{err}"
    );
    assert_eq!(server.client_count(), 1);
}

#[test]
fn quotas_leave_room_for_every_other_client() {
    let Some(kvm) = kvm_or_skip("quotas") else {
        return;
    };
    let greedy_policy = policy_of(0).max_regions(4).max_bytes(64 * P);
    let (served, mut tubes) = Served::start_with(&kvm, vec![greedy_policy, policy_of(1)]);
    let greedy = VmMemoryClient::new(tubes.remove(0));
    let other = VmMemoryClient::new(tubes.remove(0));
    let mut held = Vec::new();
    for i in 0..4 {
        held.push(arena(&greedy, 0x100_0000 + i * 0x10_0000, P).unwrap().0);
    }
    // Found in review of the old server: one client took all 32,763 free slots in 0.7 s.
    let e = refused(arena(&greedy, 0x200_0000, P));
    assert_eq!(
        e,
        VmMemoryError::QuotaExceeded {
            what: "regions".into(),
            limit: 4,
            held: 4,
            asked: 1
        },
        "{e}"
    );
    greedy.unregister_memory(held.pop().unwrap()).unwrap();
    let e = refused(arena(&greedy, 0x200_0000, 64 * P));
    assert_eq!(
        e,
        VmMemoryError::QuotaExceeded {
            what: "bytes".into(),
            limit: 64 * P,
            held: 3 * P,
            asked: 64 * P
        },
        "{e}"
    );
    arena(&greedy, 0x200_0000, 61 * P).unwrap();
    // The other client is unaffected.
    let (id, _) = arena(&other, grant_base(1) + 0x100_0000, 1 << 20).unwrap();
    other.unregister_memory(id).unwrap();
    drop(served);
}

#[test]
fn reserved_ranges_cannot_become_slots_through_the_server() {
    let Some(kvm) = kvm_or_skip("reserved_through_server") else {
        return;
    };
    let vm = Arc::new(
        KvmVm::new(
            &kvm,
            GuestMemory::new(&[(GuestAddress(0), 16 * P)]).unwrap(),
        )
        .unwrap(),
    );
    // The VMM reserves a device's MMIO window inside the client's grant.
    let window = GuestAddress(0x1000_0000);
    vm.reserve_guest_range(window, 0x1000).unwrap();
    let (served, mut tubes) = Served::start_on(vm, vec![policy_of(0)]);
    let client = VmMemoryClient::new(tubes.remove(0));
    let e = refused(arena(&client, window.0 - 0x10_0000, 0x20_0000));
    assert!(
        matches!(&e, VmMemoryError::Failed { errno, message, .. }
            if *errno == libc::EEXIST && message.contains("reserved range 0x10000000+0x1000")),
        "{e}"
    );
    drop(served);
}

/// A `Vm` that delegates to KVM, but whose msync waits at a gate the test opens, and whose
/// next slot removal can be made to fail once.
struct Gated {
    inner: KvmVm,
    entered: mpsc::SyncSender<()>,
    gate: Mutex<mpsc::Receiver<()>>,
    fail_next_removal: AtomicBool,
}

impl Vm for Gated {
    fn check_capability(&self, cap: VmCap) -> bool {
        self.inner.check_capability(cap)
    }
    fn get_memory(&self) -> &GuestMemory {
        self.inner.get_memory()
    }
    fn add_memory_region(
        &self,
        guest_addr: GuestAddress,
        mem: Box<dyn MappedRegion>,
        read_only: bool,
        log_dirty_pages: bool,
        cache: MemCacheType,
    ) -> hypervisor::Result<MemSlot> {
        self.inner
            .add_memory_region(guest_addr, mem, read_only, log_dirty_pages, cache)
    }
    fn msync_memory_region(
        &self,
        slot: MemSlot,
        offset: usize,
        size: usize,
    ) -> hypervisor::Result<()> {
        // As an msync of a file on a hung FUSE or NFS server would.
        self.entered.send(()).unwrap();
        let _ = self.gate.lock().unwrap().recv();
        self.inner.msync_memory_region(slot, offset, size)
    }
    fn madvise_pageout_memory_region(
        &self,
        slot: MemSlot,
        offset: usize,
        size: usize,
    ) -> hypervisor::Result<()> {
        self.inner.madvise_pageout_memory_region(slot, offset, size)
    }
    fn madvise_remove_memory_region(
        &self,
        slot: MemSlot,
        offset: usize,
        size: usize,
    ) -> hypervisor::Result<()> {
        self.inner.madvise_remove_memory_region(slot, offset, size)
    }
    fn remove_memory_region(&self, slot: MemSlot) -> hypervisor::Result<Box<dyn MappedRegion>> {
        if self.fail_next_removal.swap(false, Ordering::SeqCst) {
            return Err(hypervisor::Error::UnknownSlot { slot });
        }
        self.inner.remove_memory_region(slot)
    }
    fn set_dirty_logging(&self, slot: MemSlot, enable: bool) -> hypervisor::Result<()> {
        self.inner.set_dirty_logging(slot, enable)
    }
    fn get_dirty_log(&self, slot: MemSlot, dirty_log: &mut [u8]) -> hypervisor::Result<()> {
        self.inner.get_dirty_log(slot, dirty_log)
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
        slot: MemSlot,
        offset: usize,
        size: usize,
        fd: &dyn AsRawDescriptor,
        fd_offset: u64,
        prot: Protection,
    ) -> hypervisor::Result<()> {
        self.inner
            .add_fd_mapping(slot, offset, size, fd, fd_offset, prot)
    }
    fn remove_mapping(&self, slot: MemSlot, offset: usize, size: usize) -> hypervisor::Result<()> {
        self.inner.remove_mapping(slot, offset, size)
    }
    fn reserve_guest_range(&self, guest_addr: GuestAddress, size: u64) -> hypervisor::Result<()> {
        self.inner.reserve_guest_range(guest_addr, size)
    }
    fn release_guest_range(&self, guest_addr: GuestAddress, size: u64) -> hypervisor::Result<()> {
        self.inner.release_guest_range(guest_addr, size)
    }
}

/// A server for a `Gated` VM, serving from a thread until `stop` is set.
struct GatedServer {
    vm: Arc<Gated>,
    entered: mpsc::Receiver<()>,
    open: mpsc::Sender<()>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<VmMemoryServer<Gated>>>,
}

impl GatedServer {
    fn start(kvm: &hypervisor::kvm::Kvm, clients: usize) -> (GatedServer, Vec<VmMemoryClient>) {
        let (entered_tx, entered) = mpsc::sync_channel(16);
        let (open, gate) = mpsc::channel();
        let vm = Arc::new(Gated {
            inner: KvmVm::new(kvm, GuestMemory::new(&[(GuestAddress(0), 16 * P)]).unwrap())
                .unwrap(),
            entered: entered_tx,
            gate: Mutex::new(gate),
            fail_next_removal: AtomicBool::new(false),
        });
        let mut server = VmMemoryServer::new(vm.clone()).unwrap();
        let ends = (0..clients)
            .map(|i| {
                let (client, server_end) = Tube::pair().unwrap();
                server.add_client(server_end, policy_of(i)).unwrap();
                // A stalled server fails the test instead of hanging it.
                client
                    .set_recv_timeout(Some(Duration::from_secs(5)))
                    .unwrap();
                VmMemoryClient::new(client)
            })
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = stop.clone();
        let thread = std::thread::spawn(move || {
            while !thread_stop.load(Ordering::SeqCst) {
                server.serve_once(Some(Duration::from_millis(10))).unwrap();
            }
            server
        });
        (
            GatedServer {
                vm,
                entered,
                open,
                stop,
                thread: Some(thread),
            },
            ends,
        )
    }

    /// Stops the loop, then serves a few more rounds so that events already queued (a client
    /// that just hung up) are handled before the server is inspected.
    fn stop(mut self) -> VmMemoryServer<Gated> {
        self.stop.store(true, Ordering::SeqCst);
        let mut server = self.thread.take().unwrap().join().unwrap();
        for _ in 0..3 {
            server.serve_once(Some(Duration::from_millis(20))).unwrap();
        }
        server
    }
}

impl Drop for GatedServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Let any msync still waiting go.
        for _ in 0..16 {
            let _ = self.open.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn a_blocked_msync_stalls_only_its_own_client_and_answers_stay_in_order() {
    let Some(kvm) = kvm_or_skip("no_stall") else {
        return;
    };
    let (gated, mut clients) = GatedServer::start(&kvm, 2);
    let (stuck, free) = (clients.remove(0), clients.remove(0));
    let shm = SharedMemory::new("stuck", 4 * P).unwrap();
    let (stuck_id, _) = stuck
        .register_memory(
            VmMemorySource::SharedMemory,
            Some(&shm),
            0x100_0000,
            RW,
            COHERENT,
        )
        .unwrap();
    // Raw from here on: an msync, then a registration queued behind it.
    let stuck = stuck.into_tube();
    stuck
        .send(&VmMemoryRequest::MsyncArena {
            id: stuck_id,
            offset: 0,
            size: P,
        })
        .unwrap();
    gated
        .entered
        .recv_timeout(Duration::from_secs(5))
        .expect("the msync started");
    stuck
        .send(&VmMemoryRequest::RegisterMemory {
            source: VmMemorySource::Arena { size: P },
            dest: vm_control::VmMemoryDestination::GuestPhysicalAddress(0x200_0000),
            prot: RW,
            cache: COHERENT,
        })
        .unwrap();
    // While that msync hangs, the other client is served.
    for round in 0..20 {
        let start = Instant::now();
        let (id, _) = arena(&free, grant_base(1) + 0x100_0000, P).unwrap();
        free.unregister_memory(id).unwrap();
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "round {round}: {:?}",
            start.elapsed()
        );
    }
    stuck
        .set_recv_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    assert!(
        matches!(
            stuck.recv::<VmMemoryResponse>(),
            Err(base::tube::Error::Timeout)
        ),
        "no answer may come before the msync is done"
    );
    // Open the gate: the answers come in the order of the requests.
    gated.open.send(()).unwrap();
    stuck
        .set_recv_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    assert_eq!(
        stuck.recv::<VmMemoryResponse>().unwrap(),
        VmMemoryResponse::Ok
    );
    assert!(matches!(
        stuck.recv::<VmMemoryResponse>().unwrap(),
        VmMemoryResponse::RegisterMemory { .. }
    ));
    drop(stuck);
    let server = gated.stop();
    assert_eq!(server.client_count(), 1);
    assert_eq!(
        server.region_count(),
        0,
        "the stuck client's regions went with it"
    );
}

#[test]
fn a_client_that_leaves_during_its_msync_is_cleaned_up_when_it_ends() {
    let Some(kvm) = kvm_or_skip("leave_during_msync") else {
        return;
    };
    let (gated, mut clients) = GatedServer::start(&kvm, 1);
    let client = clients.remove(0);
    let shm = SharedMemory::new("leaves", 4 * P).unwrap();
    let (id, _) = client
        .register_memory(
            VmMemorySource::SharedMemory,
            Some(&shm),
            0x100_0000,
            RW,
            COHERENT,
        )
        .unwrap();
    // Send an msync and leave without waiting for its answer.
    let tube = client.into_tube();
    tube.send(&VmMemoryRequest::MsyncArena {
        id,
        offset: 0,
        size: P,
    })
    .unwrap();
    gated
        .entered
        .recv_timeout(Duration::from_secs(5))
        .expect("the msync started");
    drop(tube);
    std::thread::sleep(Duration::from_millis(100));
    // Still mapped while its msync runs (removing the slot would wait for it).
    assert_eq!(guest_reads(&gated.vm.inner, 0x100_0000), Ok(0));
    gated.open.send(()).unwrap();
    let mut freed = false;
    for _ in 0..250 {
        if guest_reads(&gated.vm.inner, 0x100_0000).is_err() {
            freed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(freed, "the departed client's slot was never freed");
    let server = gated.stop();
    assert_eq!(server.region_count(), 0);
    assert_eq!(server.client_count(), 0);
}

#[test]
fn a_client_that_does_not_read_its_answers_is_dropped_at_once() {
    let Some(kvm) = kvm_or_skip("non_reader") else {
        return;
    };
    let (served, mut tubes) = Served::start(&kvm, 2);
    let deaf = tubes.remove(0);
    let other = VmMemoryClient::new(tubes.remove(0));
    // The deaf client floods requests and never reads an answer.
    let flood = std::thread::spawn(move || {
        let request = VmMemoryRequest::UnregisterMemory(postcard::from_bytes(&[1]).unwrap());
        let mut sent = 0;
        while deaf.send(&request).is_ok() && sent < 100_000 {
            sent += 1;
        }
        (deaf, sent)
    });
    // The other client's requests are never held up by the deaf one's full queue (the old
    // server waited a second on each answer it could not hand over).
    for round in 0..50 {
        let start = Instant::now();
        let (id, _) = arena(&other, grant_base(1) + 0x100_0000, P).unwrap();
        other.unregister_memory(id).unwrap();
        assert!(
            start.elapsed() < Duration::from_millis(500),
            "round {round}: {:?}",
            start.elapsed()
        );
    }
    let (_deaf, sent) = flood.join().unwrap();
    assert!(sent > 0);
    let server = served.stop();
    assert_eq!(server.client_count(), 1, "the deaf client is dropped");
}

#[test]
fn ownership_outlives_a_failed_unregister_and_ids_never_reach_a_reused_slot() {
    let Some(kvm) = kvm_or_skip("unregister_failure") else {
        return;
    };
    let (gated, mut clients) = GatedServer::start(&kvm, 2);
    let (alice, bob) = (clients.remove(0), clients.remove(0));
    let (id, slot) = arena(&alice, 0x100_0000, P).unwrap();
    gated.vm.fail_next_removal.store(true, Ordering::SeqCst);
    let e = refused(alice.unregister_memory(id));
    assert!(matches!(e, VmMemoryError::Failed { .. }), "{e}");
    // Still Alice's: the retry works (the old server had forgotten it: UnknownRegion).
    alice.unregister_memory(id).unwrap();
    // Bob gets the freed slot number; Alice's old id names nothing, not Bob's region.
    let (bobs, bobs_slot) = arena(&bob, grant_base(1) + 0x100_0000, P).unwrap();
    assert_eq!(bobs_slot, slot);
    assert_ne!(bobs, id);
    let e = refused(alice.msync_arena(id, 0, P));
    assert_eq!(e, VmMemoryError::UnknownRegion { id });
    let e = refused(alice.unregister_memory(id));
    assert_eq!(e, VmMemoryError::UnknownRegion { id });
    bob.unregister_memory(bobs).unwrap();
    drop(gated);
}
