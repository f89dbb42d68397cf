// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The built-in guest program of `run`, assembled with iced-x86: a tiny virtio-pmem driver
//! that sets up its own GDT, IDT and interrupt controllers, writes a record into the pmem
//! window and flushes it, waits with interrupts on (`sti; hlt`) for the device's used-buffer
//! interrupt, dirties a known set of RAM pages, and finally writes to a read-only region.

use iced_x86::code_asm::*;
use iced_x86::{BlockEncoderOptions, IcedError};

/// Where everything is, in guest physical memory.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    /// Where the program is loaded and starts.
    pub code: u32,
    /// The virtio-mmio register block of the pmem device.
    pub mmio: u32,
    /// Descriptor table, available ring, used ring, request and response of queue 0.
    pub desc: u32,
    /// Available ring.
    pub avail: u32,
    /// Used ring.
    pub used: u32,
    /// The FLUSH request (4 bytes).
    pub req: u32,
    /// The response (4 bytes).
    pub resp: u32,
    /// The queue size the driver chooses.
    pub queue_size: u32,
    /// RAM pages the program writes, by address.
    pub dirty_pages: &'static [u32],
    /// A read-only region the program writes at the end.
    pub read_only: u32,
    /// The GDT and, 0x20 bytes in, the pseudo-descriptors for `lgdt` and `lidt` (64 bytes).
    pub gdt: u32,
    /// The IDT: 256 gates, 2 KiB, zero (not present) but for [`VECTOR`].
    pub idt: u32,
    /// The top of the stack the interrupt frame goes on.
    pub stack: u32,
    /// The IOAPIC pin (GSI) the device's interrupt arrives on.
    pub gsi: u32,
}

/// The vector the guest gives the device's interrupt.
pub const VECTOR: u32 = 0x30;
const LAPIC: u32 = 0xfee0_0000;
const IOAPIC: u32 = 0xfec0_0000;

/// The value written to the read-only region (it must not land).
pub const READ_ONLY_PROBE: u32 = 0xbad0_bad0;
/// Port on which the guest reports the device status after feature negotiation.
pub const PORT_STATUS: u16 = 0x10;
/// Port on which the guest reports the pmem window address it read from config.
pub const PORT_WINDOW: u16 = 0x11;
/// Port on which the guest reports the FLUSH response.
pub const PORT_FLUSH: u16 = 0x12;
/// Port on which the guest says it has written the record, before it asks for the FLUSH: the
/// host counts the file's dirty pages there.
pub const PORT_WRITTEN: u16 = 0x13;
/// Port on which the guest reports, from its interrupt handler, the device's interrupt status.
pub const PORT_INTERRUPT: u16 = 0x14;
/// Port on which the guest says it is done (with an in-kernel irqchip, `hlt` does not exit).
pub const PORT_DONE: u16 = 0x15;
/// The record's words, written at the start of the pmem window.
pub const RECORD: [u32; 8] = [
    0x4d45_4d50, // "PMEM"
    0x524f_4345, // "ECOR"
    0x0000_0001, // version
    0x1234_5678,
    0x9abc_def0,
    0x0bad_f00d,
    0xfeed_face,
    0x4e44_4e45, // "ENDN"
];

/// Assembles the program for `layout`, to be loaded at `layout.code`.
pub fn program(layout: &Layout) -> Result<Vec<u8>, String> {
    // The IDT gate holds the handler's address, known only once assembled: the first pass
    // finds it, the second uses it (immediates are 32-bit either way, so nothing moves).
    let (_, handler) = assemble(layout, 0).map_err(|e| e.to_string())?;
    let (code, again) = assemble(layout, handler).map_err(|e| e.to_string())?;
    if again != handler {
        return Err(format!(
            "the interrupt handler moved from {handler:#x} to {again:#x} between passes"
        ));
    }
    Ok(code)
}

/// The program with `handler` as the interrupt gate's target; returns the code and where the
/// handler really is.
fn assemble(layout: &Layout, handler: u64) -> Result<(Vec<u8>, u64), IcedError> {
    let mut a = CodeAssembler::new(32)?;
    let reg = |offset: u32| dword_ptr(layout.mmio + offset);

    // Descriptor tables: flat code 0x08 and data 0x10, the selectors already loaded; one
    // 32-bit interrupt gate (present, ring 0, selector 0x08) for VECTOR.
    a.mov(esp, layout.stack)?;
    let gdt = [0u64, 0x00cf_9a00_0000_ffff, 0x00cf_9200_0000_ffff];
    for (i, d) in gdt.iter().enumerate() {
        a.mov(dword_ptr(layout.gdt + 8 * i as u32), *d as u32)?;
        a.mov(dword_ptr(layout.gdt + 8 * i as u32 + 4), (*d >> 32) as u32)?;
    }
    let gate = layout.idt + 8 * VECTOR;
    let handler = handler as u32;
    a.mov(dword_ptr(gate), (0x08 << 16) | (handler & 0xffff))?;
    a.mov(dword_ptr(gate + 4), (handler & 0xffff_0000) | 0x8e00)?;
    // Pseudo-descriptors: a 16-bit limit, then the 32-bit base.
    let (gdtr, idtr) = (layout.gdt + 0x20, layout.gdt + 0x28);
    for (at, base, limit) in [
        (gdtr, layout.gdt, 3 * 8 - 1),
        (idtr, layout.idt, 256 * 8 - 1),
    ] {
        a.mov(dword_ptr(at), limit | (base << 16))?;
        a.mov(dword_ptr(at + 4), base >> 16)?;
    }
    a.lgdt(ptr(gdtr))?;
    a.lidt(ptr(idtr))?;
    // The local APIC on (spurious vector 0xff); the device's IOAPIC pin to VECTOR, edge
    // triggered, to APIC 0, unmasked last.
    a.mov(dword_ptr(LAPIC + 0xf0), 0x1ffu32)?;
    a.mov(dword_ptr(IOAPIC), 0x11 + 2 * layout.gsi)?;
    a.mov(dword_ptr(IOAPIC + 0x10), 0u32)?;
    a.mov(dword_ptr(IOAPIC), 0x10 + 2 * layout.gsi)?;
    a.mov(dword_ptr(IOAPIC + 0x10), VECTOR)?;

    // virtio-mmio handshake (virtio 1.x, 3.1.1): acknowledge, driver, features, features ok.
    a.mov(reg(0x070), 1u32)?; // Status = ACKNOWLEDGE
    a.mov(reg(0x070), 3u32)?; // Status |= DRIVER
    a.mov(reg(0x024), 1u32)?; // DriverFeaturesSel = 1 (bits 32..63)
    a.mov(reg(0x020), 1u32)?; // DriverFeatures = VIRTIO_F_VERSION_1 (bit 32)
    a.mov(reg(0x070), 11u32)?; // Status |= FEATURES_OK
    a.mov(eax, reg(0x070))?; // read it back: the device may refuse
    a.out(u32::from(PORT_STATUS), eax)?;

    // Queue 0: size, rings, ready; then DRIVER_OK.
    a.mov(reg(0x030), 0u32)?; // QueueSel
    a.mov(reg(0x038), layout.queue_size)?; // QueueNum
    a.mov(reg(0x080), layout.desc)?; // QueueDescLow (High stays 0)
    a.mov(reg(0x090), layout.avail)?; // QueueDriverLow
    a.mov(reg(0x0a0), layout.used)?; // QueueDeviceLow
    a.mov(reg(0x044), 1u32)?; // QueueReady
    a.mov(reg(0x070), 15u32)?; // Status |= DRIVER_OK

    // The window's address from config space (start, low half), reported and used.
    a.mov(ebx, reg(0x100))?;
    a.mov(eax, ebx)?; // out takes its value from eax only
    a.out(u32::from(PORT_WINDOW), eax)?;
    for (i, word) in RECORD.iter().enumerate() {
        a.mov(dword_ptr(ebx + 4 * i as i32), *word)?;
    }
    a.out(u32::from(PORT_WRITTEN), eax)?;

    // Dirty a known set of RAM pages.
    for (i, page) in layout.dirty_pages.iter().enumerate() {
        a.mov(dword_ptr(page + 0x40), 0xd1d1_0000 + i as u32)?;
    }

    // A FLUSH request: descriptor 0 reads the request, descriptor 1 receives the response.
    a.mov(dword_ptr(layout.req), 0u32)?; // type = VIRTIO_PMEM_REQ_TYPE_FLUSH
    a.mov(dword_ptr(layout.resp), 0xffff_ffffu32)?;
    a.mov(dword_ptr(layout.desc), layout.req)?; // desc[0].addr
    a.mov(dword_ptr(layout.desc + 4), 0u32)?;
    a.mov(dword_ptr(layout.desc + 8), 4u32)?; // desc[0].len
    a.mov(dword_ptr(layout.desc + 12), 0x0001_0001u32)?; // flags NEXT, next = 1
    a.mov(dword_ptr(layout.desc + 16), layout.resp)?; // desc[1].addr
    a.mov(dword_ptr(layout.desc + 20), 0u32)?;
    a.mov(dword_ptr(layout.desc + 24), 4u32)?; // desc[1].len
    a.mov(dword_ptr(layout.desc + 28), 0x0000_0002u32)?; // flags WRITE
    a.mov(dword_ptr(layout.avail + 4), 0u32)?; // ring[0] = head 0 (before the index)
    a.mov(dword_ptr(layout.avail), 0x0001_0000u32)?; // flags 0, idx 1
    a.mov(reg(0x050), 0u32)?; // QueueNotify = 0

    // Wait, interrupts on, for the device's interrupt: only it ends the wait.
    let mut wait = a.create_label();
    a.set_label(&mut wait)?;
    a.sti()?;
    a.hlt()?;
    a.jmp(wait)?;

    // The handler: acknowledge at the APIC (EOI) and the device, report, go on. It continues
    // the program instead of returning (KVM's emulator has no protected-mode IRET, and this
    // machine's nested KVM emulates the instruction after an EOI), so it drops its frame.
    let mut on_interrupt = a.create_label();
    a.set_label(&mut on_interrupt)?;
    a.mov(dword_ptr(LAPIC + 0xb0), 0u32)?; // EOI
    a.mov(esp, layout.stack)?;
    a.mov(eax, reg(0x060))?; // InterruptStatus
    a.out(u32::from(PORT_INTERRUPT), eax)?;
    a.test(eax, 1u32)?;
    a.jz(wait)?; // not the used buffer: wait on
    a.mov(reg(0x064), 1u32)?; // InterruptACK
    a.mov(eax, dword_ptr(layout.resp))?;
    a.out(u32::from(PORT_FLUSH), eax)?;

    // A write to the read-only region, which must be reported and not land; then done.
    a.mov(dword_ptr(layout.read_only), READ_ONLY_PROBE)?;
    a.out(u32::from(PORT_DONE), eax)?;
    let mut stop = a.create_label();
    a.set_label(&mut stop)?;
    a.cli()?;
    a.hlt()?;
    a.jmp(stop)?;
    let result = a.assemble_options(
        u64::from(layout.code),
        BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS,
    )?;
    let at = result.label_ip(&on_interrupt)?;
    Ok((result.inner.code_buffer, at))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> Layout {
        Layout {
            code: 0x1000,
            mmio: 0xd000_0000,
            desc: 0x1_0000,
            avail: 0x1_1000,
            used: 0x1_2000,
            req: 0x1_3000,
            resp: 0x1_3010,
            queue_size: 16,
            dirty_pages: &[0x20_0000, 0x20_5000],
            read_only: 0x80_0000,
            gdt: 0x500,
            idt: 0x800,
            stack: 0x8000,
            gsi: 16,
        }
    }

    #[test]
    fn the_program_points_its_interrupt_gate_at_its_handler() {
        let layout = layout();
        let code = program(&layout).unwrap();
        let (_, handler) = assemble(&layout, 0).unwrap();
        // The handler starts with the EOI: mov dword [0xfee000b0], 0.
        let at = (handler - u64::from(layout.code)) as usize;
        assert_eq!(
            code[at..at + 10],
            [0xc7, 0x05, 0xb0, 0x00, 0xe0, 0xfe, 0x00, 0x00, 0x00, 0x00]
        );
        // The gate's low half (selector 0x08, the handler's low 16 bits) is stored to the IDT.
        let gate = (0x08u32 << 16) | (handler as u32 & 0xffff);
        let store: Vec<u8> = [0xc7, 0x05]
            .into_iter()
            .chain((layout.idt + 8 * VECTOR).to_le_bytes())
            .chain(gate.to_le_bytes())
            .collect();
        assert!(code.windows(store.len()).any(|w| w == store));
        // It starts by setting its stack: mov esp, 0x8000; and ends in cli; hlt; jmp back.
        assert_eq!(code[..5], [0xbc, 0x00, 0x80, 0x00, 0x00]);
        assert_eq!(code[code.len() - 4..], [0xfa, 0xf4, 0xeb, 0xfc]);
    }
}
