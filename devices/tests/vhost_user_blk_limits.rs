// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `BlockDisk::serve` on its own: the request-size bound and the config the review found
//! wrong (blk_size 4096 made Linux misread partition tables).

use std::fs::File;

use devices::vhost_user::blk::{
    BlockDisk, MAX_REQUEST_BYTES, SIZE_MAX, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN,
};
use devices::virtio::queue::{Buffer, DescriptorChain};
use vm_memory::{GuestAddress, GuestMemory};

fn disk(bytes: u64) -> BlockDisk {
    let shm = base::SharedMemory::new("limits-disk", bytes).unwrap();
    let file = File::from(base::SafeDescriptor::from(shm));
    BlockDisk::new(file, false, "limits").unwrap()
}

/// An IN chain: header at 0, `len` writable data bytes at 0x1000, the status byte after them.
fn read_chain(mem: &GuestMemory, len: u32) -> (DescriptorChain, GuestAddress) {
    let mut header = [0u8; 16];
    header[0..4].copy_from_slice(&VIRTIO_BLK_T_IN.to_le_bytes());
    mem.write_all_at_addr(&header, GuestAddress(0)).unwrap();
    let status = GuestAddress(0x1000 + u64::from(len));
    mem.write_obj_at_addr(0xa5u8, status).unwrap();
    let chain = DescriptorChain {
        head: 0,
        buffers: vec![
            Buffer {
                addr: GuestAddress(0),
                len: 16,
                writable: false,
            },
            Buffer {
                addr: GuestAddress(0x1000),
                len,
                writable: true,
            },
            Buffer {
                addr: status,
                len: 1,
                writable: true,
            },
        ],
    };
    (chain, status)
}

// A read of exactly MAX_REQUEST_BYTES is served; one byte-sector more is IOERR with nothing
// written but the status (before the bound, one chain could make the device copy gigabytes
// while it held the vring).
#[test]
fn requests_past_the_size_bound_are_ioerr() {
    let mem = GuestMemory::new(&[(GuestAddress(0), 32 << 20)]).unwrap();
    let disk = disk(32 << 20);
    let max = u32::try_from(MAX_REQUEST_BYTES).unwrap();
    let (chain, status) = read_chain(&mem, max);
    let served = disk.serve(&mem, &chain, None);
    assert_eq!(served.status, Some(VIRTIO_BLK_S_OK));
    assert_eq!(served.written, max + 1);
    assert_eq!(
        mem.read_obj_from_addr::<u8>(status).unwrap(),
        VIRTIO_BLK_S_OK
    );

    mem.write_obj_at_addr(0x5au8, GuestAddress(0x1000)).unwrap();
    let (chain, status) = read_chain(&mem, max + 512);
    let served = disk.serve(&mem, &chain, None);
    assert_eq!(served.status, Some(VIRTIO_BLK_S_IOERR));
    assert_eq!(served.written, 1);
    assert_eq!(
        mem.read_obj_from_addr::<u8>(status).unwrap(),
        VIRTIO_BLK_S_IOERR
    );
    assert_eq!(
        mem.read_obj_from_addr::<u8>(GuestAddress(0x1000)).unwrap(),
        0x5a
    );
}

// The config offers 512-byte logical blocks (what partition tables count in) and the
// segment bound Linux sizes its requests by.
#[test]
fn config_offers_512_byte_blocks_and_the_segment_bound() {
    let config = disk(1 << 20).config(1);
    assert_eq!({ config.blk_size }, 512u32.to_le());
    assert_eq!({ config.size_max }, SIZE_MAX.to_le());
    assert_eq!(
        u64::from(u32::from_le(config.size_max)) * u64::from(u32::from_le(config.seg_max)),
        MAX_REQUEST_BYTES
    );
}
