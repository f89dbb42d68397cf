// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! What the KVM tests share: opening KVM (or saying why not), a flat 32-bit protected-mode
//! vCPU, and a few hand-encoded x86 instructions.

#![allow(dead_code)]

use hypervisor::kvm::{Kvm, KvmVcpu, KvmVm};
use hypervisor::{DirtyLogMode, Vcpu, VcpuExit};
use vm_memory::{GuestAddress, GuestMemory};

pub const P: u64 = 4096;
/// Where test programs are loaded, in boot RAM.
pub const CODE: u64 = 0x1000;
/// The port test programs report values on.
pub const REPORT_PORT: u8 = 0x10;

/// Opens KVM, or explains why not and returns `None` so the test can skip. With
/// `VMM_REQUIRE_KVM=1` (set by tools/run_tests when /dev/kvm opens) a skip is a failure.
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

/// A VM with `ram` bytes of boot RAM at 0 (slot 0), `code` loaded at `CODE`, and vCPU 0 set
/// up to run it in flat 32-bit protected mode.
pub fn vm_with_program(kvm: &Kvm, ram: u64, code: &[u8]) -> (KvmVm, KvmVcpu) {
    vm_with_program_in(kvm, ram, code, DEFAULT_MODE)
}

/// What `KvmVm::new` asks for.
pub const DEFAULT_MODE: DirtyLogMode = DirtyLogMode::ManualProtect;

/// Like `vm_with_program`, with `mode` as the preferred dirty log mode.
pub fn vm_with_program_in(
    kvm: &Kvm,
    ram: u64,
    code: &[u8],
    mode: DirtyLogMode,
) -> (KvmVm, KvmVcpu) {
    let mem = GuestMemory::new(&[(GuestAddress(0), ram)]).unwrap();
    mem.write_all_at_addr(code, GuestAddress(CODE)).unwrap();
    let vm = KvmVm::new_with_dirty_log(kvm, mem, mode).unwrap();
    let vcpu = vm.create_vcpu(0).unwrap();
    vcpu.set_flat_protected_mode(CODE as u32).unwrap();
    (vm, vcpu)
}

/// Points the vCPU at `entry` again with clean flags.
pub fn restart(vcpu: &KvmVcpu, entry: u64) {
    let mut regs = vcpu.get_regs().unwrap();
    regs.rip = entry;
    regs.rflags = 2; // bit 1 is reserved and always set
    vcpu.set_regs(&regs).unwrap();
}

/// Runs until an exit other than `Intr`.
pub fn run(vcpu: &mut KvmVcpu) -> VcpuExit {
    loop {
        match vcpu.run().unwrap() {
            VcpuExit::Intr => continue,
            exit => return exit,
        }
    }
}

/// Runs, expecting a report on `REPORT_PORT`, and returns the reported value.
pub fn run_to_report(vcpu: &mut KvmVcpu) -> u32 {
    match run(vcpu) {
        VcpuExit::Io {
            port,
            size: 4,
            count: 1,
            data: Some(data),
        } if port == REPORT_PORT as u16 => u32::from_le_bytes(data),
        other => panic!("expected a report on port {REPORT_PORT:#x}, got {other:?}"),
    }
}

/// A few 32-bit x86 instructions, hand-encoded (no assembler needed for programs this small).
#[derive(Default)]
pub struct Asm(pub Vec<u8>);

impl Asm {
    /// `mov dword [addr], imm`: C7 /0 with ModRM 0x05 (absolute disp32), then the immediate.
    pub fn store_imm(mut self, addr: u32, imm: u32) -> Self {
        self.0.extend([0xc7, 0x05]);
        self.0.extend(addr.to_le_bytes());
        self.0.extend(imm.to_le_bytes());
        self
    }

    /// `mov eax, dword [addr]`: A1 with a 32-bit absolute offset.
    pub fn load_eax(mut self, addr: u32) -> Self {
        self.0.push(0xa1);
        self.0.extend(addr.to_le_bytes());
        self
    }

    /// `out REPORT_PORT, eax`: E7 ib.
    pub fn report_eax(mut self) -> Self {
        self.0.extend([0xe7, REPORT_PORT]);
        self
    }

    /// Writes a dword into each of `count` pages from `start`, one page apart, in a loop:
    /// `mov edi, start; mov ecx, count; l: mov [edi], ecx; add edi, 4096; dec ecx; jnz l`.
    pub fn touch_pages(mut self, start: u32, count: u32) -> Self {
        self.0.push(0xbf);
        self.0.extend(start.to_le_bytes());
        self.0.push(0xb9);
        self.0.extend(count.to_le_bytes());
        self.0.extend([0x89, 0x0f]);
        self.0.extend([0x81, 0xc7, 0x00, 0x10, 0x00, 0x00]);
        self.0.push(0x49);
        // Back over the 2 + 6 + 1 bytes of the body and this jump's own 2.
        self.0.extend([0x75, (-11i8) as u8]);
        self
    }

    /// `out REPORT_PORT, eax` after every `every` pages of `touch_pages` (which must divide
    /// `count`): the same loop, with `test ecx, every - 1; jnz l; out` at its end.
    pub fn touch_pages_reporting(mut self, start: u32, count: u32, every: u32) -> Self {
        assert!(every.is_power_of_two() && count.is_multiple_of(every));
        self.0.push(0xbf);
        self.0.extend(start.to_le_bytes());
        self.0.push(0xb9);
        self.0.extend(count.to_le_bytes());
        let top = self.0.len();
        self.0.extend([0x89, 0x0f]); // mov [edi], ecx
        self.0.extend([0x81, 0xc7, 0x00, 0x10, 0x00, 0x00]); // add edi, 4096
        self.0.push(0x49); // dec ecx
        self.0.extend([0xf7, 0xc1]); // test ecx, imm32
        self.0.extend((every - 1).to_le_bytes());
        self.0.extend([0x75, 0x00]); // jnz top (patched below)
        let jnz = self.0.len();
        self.0[jnz - 1] = (top as isize - jnz as isize) as i8 as u8;
        self.0.extend([0xe7, REPORT_PORT]); // out REPORT_PORT, eax
        self.0.extend([0x85, 0xc9]); // test ecx, ecx
        self.0.extend([0x75, 0x00]); // jnz top
        let jnz = self.0.len();
        self.0[jnz - 1] = (top as isize - jnz as isize) as i8 as u8;
        self
    }

    /// `hlt`: F4.
    pub fn hlt(mut self) -> Self {
        self.0.push(0xf4);
        self
    }
}
