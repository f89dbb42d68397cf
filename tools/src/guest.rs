// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The built-in guest program of `run`, assembled with iced-x86: a tiny virtio-pmem driver
//! that writes a record into the pmem window and flushes it, dirties a known set of RAM
//! pages, and finally writes to a read-only region.

use iced_x86::code_asm::*;

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
}

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
pub fn program(layout: &Layout) -> Result<Vec<u8>, IcedError> {
    let mut a = CodeAssembler::new(32)?;
    let reg = |offset: u32| dword_ptr(layout.mmio + offset);

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

    // Wait for the used-buffer interrupt status, acknowledge it, report the response.
    let mut poll = a.create_label();
    a.set_label(&mut poll)?;
    a.mov(eax, reg(0x060))?; // InterruptStatus
    a.test(eax, 1u32)?;
    a.jz(poll)?;
    a.mov(reg(0x064), 1u32)?; // InterruptACK
    a.mov(eax, dword_ptr(layout.resp))?;
    a.out(u32::from(PORT_FLUSH), eax)?;

    // A write to the read-only region, which must be reported and not land; then stop.
    a.mov(dword_ptr(layout.read_only), READ_ONLY_PROBE)?;
    a.hlt()?;
    a.assemble(u64::from(layout.code))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_program_assembles_and_ends_in_hlt() {
        let layout = Layout {
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
        };
        let code = program(&layout).unwrap();
        assert_eq!(code.last(), Some(&0xf4), "hlt last");
        // The first instruction: mov dword [0xd0000070], 1.
        assert_eq!(
            code[..10],
            [0xc7, 0x05, 0x70, 0x00, 0x00, 0xd0, 0x01, 0x00, 0x00, 0x00]
        );
    }
}
