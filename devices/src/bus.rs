// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! [`MmioBus`]: routes guest MMIO accesses to the device registered at that address range.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use remain::sorted;
use thiserror::Error;

/// A device on the bus. Offsets are from the start of the device's range.
pub trait BusDevice: Send {
    /// The guest reads `data.len()` bytes at `offset`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// The guest writes `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Errors of the bus.
#[sorted]
#[derive(Debug, Error, PartialEq, Eq)]
pub enum Error {
    /// `base + len` passes the end of the address space.
    #[error("range {base:#x}+{len:#x} overflows")]
    Overflow {
        /// Start of the range.
        base: u64,
        /// Its length.
        len: u64,
    },
    /// The range overlaps a registered device.
    #[error("range {base:#x}+{len:#x} overlaps the device at {other_base:#x}+{other_len:#x}")]
    Overlap {
        /// Start of the new range.
        base: u64,
        /// Its length.
        len: u64,
        /// Start of the registered one.
        other_base: u64,
        /// Its length.
        other_len: u64,
    },
    /// A range of length 0.
    #[error("a device at {base:#x} cannot have an empty range")]
    ZeroLength {
        /// Start of the range.
        base: u64,
    },
}

/// Result of the bus.
pub type Result<T> = std::result::Result<T, Error>;

struct Entry {
    len: u64,
    device: Arc<Mutex<dyn BusDevice>>,
}

/// Devices by guest physical address range; ranges never overlap.
#[derive(Default)]
pub struct MmioBus {
    devices: BTreeMap<u64, Entry>,
}

impl MmioBus {
    /// An empty bus.
    pub fn new() -> MmioBus {
        MmioBus::default()
    }

    /// Puts `device` at `base..base + len`.
    pub fn insert(&mut self, device: Arc<Mutex<dyn BusDevice>>, base: u64, len: u64) -> Result<()> {
        if len == 0 {
            return Err(Error::ZeroLength { base });
        }
        let end = base.checked_add(len).ok_or(Error::Overflow { base, len })?;
        // The only candidate for overlap is the last device starting below `end`.
        if let Some((&other_base, other)) = self.devices.range(..end).next_back() {
            if other_base + other.len > base {
                return Err(Error::Overlap {
                    base,
                    len,
                    other_base,
                    other_len: other.len,
                });
            }
        }
        self.devices.insert(base, Entry { len, device });
        Ok(())
    }

    /// Calls `f` with the device holding `addr` and the offset of `addr` in it; returns
    /// false when no device holds `addr`.
    fn with_device(&self, addr: u64, f: impl FnOnce(&mut dyn BusDevice, u64)) -> bool {
        let Some((&base, entry)) = self.devices.range(..=addr).next_back() else {
            return false;
        };
        let offset = addr - base;
        if offset >= entry.len {
            return false;
        }
        f(
            &mut *entry.device.lock().unwrap_or_else(|e| e.into_inner()),
            offset,
        );
        true
    }

    /// Routes a read; returns false (leaving `data` alone) when no device holds `addr`.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        self.with_device(addr, |device, offset| device.read(offset, data))
    }

    /// Routes a write; returns false when no device holds `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        self.with_device(addr, |device, offset| device.write(offset, data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records what it is told and answers reads with its offset.
    #[derive(Default)]
    struct Probe {
        writes: Vec<(u64, Vec<u8>)>,
    }

    impl BusDevice for Probe {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.writes.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn routes_by_range_and_refuses_overlap() {
        let mut bus = MmioBus::new();
        let a = Arc::new(Mutex::new(Probe::default()));
        let b = Arc::new(Mutex::new(Probe::default()));
        bus.insert(a.clone(), 0x1000, 0x100).unwrap();
        bus.insert(b.clone(), 0x1100, 0x100).unwrap();
        for (base, len) in [
            (0x1000, 0x100),
            (0x10ff, 2),
            (0xf00, 0x101),
            (0x1080, 0x10),
            (0, 0x10000),
        ] {
            let err = bus
                .insert(Arc::new(Mutex::new(Probe::default())), base, len)
                .unwrap_err();
            assert!(
                matches!(err, Error::Overlap { .. }),
                "{base:#x}+{len:#x}: {err}"
            );
        }
        assert_eq!(
            bus.insert(Arc::new(Mutex::new(Probe::default())), 0x3000, 0),
            Err(Error::ZeroLength { base: 0x3000 })
        );
        assert!(matches!(
            bus.insert(Arc::new(Mutex::new(Probe::default())), u64::MAX, 2),
            Err(Error::Overflow { .. })
        ));
        let mut data = [0u8; 4];
        assert!(bus.read(0x1010, &mut data));
        assert_eq!(data, [0x10; 4]);
        assert!(bus.write(0x11ff, &[7]));
        assert_eq!(b.lock().unwrap().writes, [(0xff, vec![7])]);
        assert!(a.lock().unwrap().writes.is_empty());
        // Outside every device: not handled, data untouched.
        let mut data = [9u8; 2];
        assert!(!bus.read(0x1200, &mut data));
        assert!(!bus.read(0xfff, &mut data));
        assert!(!bus.write(u64::MAX, &[1]));
        assert_eq!(data, [9, 9]);
    }
}
