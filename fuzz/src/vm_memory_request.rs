// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! What a compromised device can send the VM: each input is a packet as it arrives on a tube
//! (header byte included), preceded by one byte that picks the descriptors attached to it.
//! The packet is decoded and executed against a real KVM VM, exactly as the server loop
//! does. Needs /dev/kvm: [`kvm_available`] says whether it can run here.

use std::fs::File;
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex, OnceLock};

use base::{SafeDescriptor, SharedMemory, Tube};
use hypervisor::kvm::{Kvm, KvmVm};
use vm_control::{ClientId, ClientPolicy, VmMemoryServer};
use vm_memory::{GuestAddress, GuestMemory};

struct State {
    server: VmMemoryServer<KvmVm>,
    client: ClientId,
    _client_end: Tube,
    shm: SharedMemory,
    file: File,
    pipe: std::io::PipeReader,
}

/// What the fuzzed client may do: all of the address space, default quotas.
fn policy() -> ClientPolicy {
    ClientPolicy::new().grant(GuestAddress(0), u64::MAX)
}

impl State {
    fn new() -> State {
        let kvm = Kvm::new().expect("this fuzz target needs /dev/kvm");
        let mem = GuestMemory::new(&[(GuestAddress(0), 0x10000)]).unwrap();
        let vm = Arc::new(KvmVm::new(&kvm, mem).unwrap());
        let mut server = VmMemoryServer::new(vm).unwrap();
        let (client_end, server_end) = Tube::pair().unwrap();
        let client = server.add_client(server_end, policy()).unwrap();
        let file = File::from(SafeDescriptor::from(
            SharedMemory::new("fuzz-file", 0x10000).unwrap(),
        ));
        let (pipe, _) = std::io::pipe().unwrap();
        State {
            server,
            client,
            _client_end: client_end,
            shm: SharedMemory::new("fuzz-shm", 0x10000).unwrap(),
            file,
            pipe,
        }
    }

    /// Drops the client (unregistering all it holds) and connects a fresh one, so the VM's
    /// slots never fill up across inputs.
    fn reconnect(&mut self) {
        self.server.remove_client(self.client);
        let (client_end, server_end) = Tube::pair().unwrap();
        self.client = self.server.add_client(server_end, policy()).unwrap();
        self._client_end = client_end;
    }
}

/// Whether /dev/kvm opens, so that [`run`] can work.
pub fn kvm_available() -> bool {
    Kvm::new().is_ok()
}

fn state() -> &'static Mutex<State> {
    static STATE: OnceLock<Mutex<State>> = OnceLock::new();
    STATE.get_or_init(|| Mutex::new(State::new()))
}

/// Runs the input against the one VM of this process. Panics only if the server does.
pub fn run(data: &[u8]) {
    let Some((&selector, packet)) = data.split_first() else {
        return;
    };
    let mut state = state().lock().unwrap();
    // Bits 0-1: how many descriptors (0 to 3); then two bits each: which kind.
    let count = usize::from(selector & 3);
    let descriptors: Vec<SafeDescriptor> = (0..count)
        .map(|i| {
            let lent = match (selector >> (2 + 2 * i)) & 3 {
                0 => state.shm.as_fd(),
                1 => state.file.as_fd(),
                _ => state.pipe.as_fd(),
            };
            SafeDescriptor::try_clone_borrowed(lent).unwrap()
        })
        .collect();
    let client = state.client;
    let _ = state.server.handle_packet(client, packet, descriptors);
    if state.server.region_count() > 64 {
        state.reconnect();
    }
}
