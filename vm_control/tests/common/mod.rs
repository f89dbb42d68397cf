// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A real KVM VM with a `VmMemoryServer` serving it from a thread, and a vCPU that runs tiny
//! guest programs to check from the guest's side what the server did.

#![allow(dead_code)]

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use base::{AsRawDescriptor, RawDescriptor, Tube};
use hypervisor::kvm::{Kvm, KvmVcpu, KvmVm};
use hypervisor::{Vcpu, VcpuExit, Vm};
use vm_control::{ClientPolicy, VmMemoryServer};
use vm_memory::{GuestAddress, GuestMemory};
use vmm_sys_util::eventfd::EventFd;

pub const P: u64 = 4096;
pub const CODE: u64 = 0x1000;

/// Opens KVM, or explains why not; with `VMM_REQUIRE_KVM=1` not being able to is a failure.
pub fn kvm_or_skip(test: &str) -> Option<Kvm> {
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

struct Exit<'a>(&'a EventFd);

impl AsRawDescriptor for Exit<'_> {
    fn as_raw_descriptor(&self) -> RawDescriptor {
        self.0.as_raw_fd()
    }
}

/// A VM with 64 KiB of boot RAM, served by a `VmMemoryServer` on its own thread until drop.
pub struct Served {
    pub vm: Arc<KvmVm>,
    exit: Arc<EventFd>,
    thread: Option<JoinHandle<VmMemoryServer<KvmVm>>>,
}

/// The guest-physical span granted to each client `Served::start` adds: client `i` may
/// register memory in `i * CLIENT_SPAN..(i + 1) * CLIENT_SPAN`.
pub const CLIENT_SPAN: u64 = 1 << 34;

/// The start of client `i`'s grant.
pub fn grant_base(i: usize) -> u64 {
    i as u64 * CLIENT_SPAN
}

/// Client `i`'s policy for `Served::start`: its span, default quotas.
pub fn policy_of(i: usize) -> ClientPolicy {
    ClientPolicy::new().grant(GuestAddress(grant_base(i)), CLIENT_SPAN)
}

impl Served {
    /// Starts the server with `clients` connections and returns the client ends; client `i`
    /// has the grant of [`policy_of`].
    pub fn start(kvm: &Kvm, clients: usize) -> (Served, Vec<Tube>) {
        Served::start_with(kvm, (0..clients).map(policy_of).collect())
    }

    /// Starts the server with one connection per policy and returns the client ends.
    pub fn start_with(kvm: &Kvm, policies: Vec<ClientPolicy>) -> (Served, Vec<Tube>) {
        let mem = GuestMemory::new(&[(GuestAddress(0), 16 * P)]).unwrap();
        let vm = Arc::new(KvmVm::new(kvm, mem).unwrap());
        Served::start_on(vm, policies)
    }

    /// Starts a server for `vm` with one connection per policy.
    pub fn start_on(vm: Arc<KvmVm>, policies: Vec<ClientPolicy>) -> (Served, Vec<Tube>) {
        let mut server = VmMemoryServer::new(vm.clone()).unwrap();
        let ends = policies
            .into_iter()
            .map(|policy| {
                let (client, server_end) = Tube::pair().unwrap();
                server.add_client(server_end, policy).unwrap();
                client
            })
            .collect();
        let exit = Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let thread_exit = exit.clone();
        let thread = std::thread::spawn(move || {
            server.run(&Exit(&thread_exit)).unwrap();
            server
        });
        (
            Served {
                vm,
                exit,
                thread: Some(thread),
            },
            ends,
        )
    }

    /// Stops the server and returns it, to inspect what it holds.
    pub fn stop(mut self) -> VmMemoryServer<KvmVm> {
        self.exit.write(1).unwrap();
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.exit.write(1).unwrap();
            let _ = thread.join();
        }
    }
}

/// A vCPU that runs `mov eax, [gpa]; out 0x10, eax; hlt` and returns what it read, or the
/// exit that stopped it.
pub fn guest_reads(vm: &KvmVm, gpa: u32) -> Result<u32, VcpuExit> {
    let mut code = vec![0xa1]; // mov eax, [moffs32]
    code.extend(gpa.to_le_bytes());
    code.extend([0xe7, 0x10, 0xf4]); // out 0x10, eax; hlt
    vm.get_memory()
        .write_all_at_addr(&code, GuestAddress(CODE))
        .unwrap();
    // KVM never frees a vCPU id while its VM lives, so each call takes a fresh one.
    static NEXT_ID: AtomicUsize = AtomicUsize::new(0);
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let mut vcpu: KvmVcpu = vm.create_vcpu(id).unwrap();
    vcpu.set_flat_protected_mode(CODE as u32).unwrap();
    loop {
        match vcpu.run().unwrap() {
            VcpuExit::Intr => continue,
            VcpuExit::Io {
                port: 0x10,
                data: Some(d),
                ..
            } => return Ok(u32::from_le_bytes(d)),
            other => return Err(other),
        }
    }
}

/// Descriptors this process has open.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Lines of `/proc/self/maps`: a mapping left behind shows as more.
pub fn maps_lines() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .count()
}
