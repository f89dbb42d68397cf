// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Reading layers back: checking each one whole, and restoring the chain into a VM.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

use zerocopy::FromZeros;

use super::format::*;
use super::{Error, LayerSummary, Result};
use crate::{MemSlot, Vm};

/// Bytes read into guest memory per call.
const CHUNK: usize = 4 << 20;
/// Bytes copied out at a time for the checksum: small enough to stay in the CPU's caches.
const SUM_CHUNK: usize = 64 << 10;

/// A piece of a layer's data for the checksum: where to find its bytes now.
enum Chunk<'a> {
    /// Already read into a slot of the VM.
    Guest {
        vm: &'a dyn Vm,
        slot: MemSlot,
        offset: usize,
        len: usize,
    },
    /// Still only in the file.
    File { at: u64, len: usize },
}

/// Reads `n` bytes of `file` at `at` straight into `offset..offset + n` of `slot`.
#[allow(clippy::too_many_arguments)]
fn read_into(
    vm: &dyn Vm,
    slot: MemSlot,
    offset: usize,
    n: usize,
    file: &File,
    at: u64,
    path: &Path,
    file_len: u64,
) -> Result<()> {
    let mut short = None;
    let mut handed = None;
    vm.with_slot_memory(slot, offset, n, &mut |slice| {
        // The kernel writes as many bytes as asked: never more than the slice holds.
        if slice.size() != n {
            handed = Some(slice.size());
            return Ok(());
        }
        let mut got = 0;
        while got < n {
            // SAFETY: the kernel writes `n - got` bytes inside `slice`, which names live,
            // writable guest memory for as long as this closure runs.
            let ret = unsafe {
                libc::pread(
                    std::os::fd::AsRawFd::as_raw_fd(file),
                    slice.as_ptr().add(got) as *mut libc::c_void,
                    n - got,
                    (at + got as u64) as libc::off_t,
                )
            };
            match ret {
                0 => {
                    short = Some(got);
                    return Ok(());
                }
                k if k > 0 => got += k as usize,
                _ => {
                    let e = std::io::Error::last_os_error();
                    if e.kind() != std::io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
            }
        }
        Ok(())
    })
    .map_err(|e| match e {
        crate::Error::SlotMemoryAccess { source, .. } => Error::Io {
            op: "read",
            path: path.to_path_buf(),
            source,
        },
        e => Error::Vm(e),
    })?;
    if let Some(got) = handed {
        return Err(Error::ShortSlice {
            slot,
            offset,
            asked: n,
            got,
        });
    }
    match short {
        // The file shrank after it was opened.
        Some(got) => Err(Error::Truncated {
            path: path.to_path_buf(),
            offset: at + got as u64,
            needed: (n - got) as u64,
            len: file_len,
        }),
        None => Ok(()),
    }
}

/// Continues `hasher` over the chunks, in order, as they arrive.
fn sum_chunks(
    chunks: std::sync::mpsc::Receiver<Chunk<'_>>,
    file: &File,
    path: &Path,
    mut hasher: crc32fast::Hasher,
) -> Result<crc32fast::Hasher> {
    let mut buf = vec![0u8; SUM_CHUNK];
    for chunk in chunks {
        match chunk {
            Chunk::Guest {
                vm,
                slot,
                offset,
                len,
            } => {
                let mut done = 0;
                while done < len {
                    let n = (len - done).min(SUM_CHUNK);
                    vm.with_slot_memory(slot, offset + done, n, &mut |slice| {
                        slice.copy_to(&mut buf[..n]);
                        Ok(())
                    })?;
                    hasher.update(&buf[..n]);
                    done += n;
                }
            }
            Chunk::File { at, len } => {
                let mut done = 0;
                while done < len {
                    let n = (len - done).min(SUM_CHUNK);
                    std::os::unix::fs::FileExt::read_exact_at(
                        file,
                        &mut buf[..n],
                        at + done as u64,
                    )
                    .map_err(|source| Error::Io {
                        op: "read",
                        path: path.to_path_buf(),
                        source,
                    })?;
                    hasher.update(&buf[..n]);
                    done += n;
                }
            }
        }
    }
    Ok(hasher)
}

/// What [`restore`] brought back.
#[derive(Debug)]
pub struct Restored {
    /// Each layer applied, oldest first.
    pub layers: Vec<LayerSummary>,
    /// The state the newest layer holds (the caller's vCPU and device state).
    pub state: Vec<u8>,
}

/// Reads every layer of the snapshot in `dir` whole and checks it (format, version,
/// checksums, the chain from layer to layer, tables against the file), without a VM.
pub fn verify(dir: &Path) -> Result<Vec<LayerSummary>> {
    read_chain(dir, None).map(|r| r.layers)
}

/// Restores the snapshot in `dir` into `vm`, whose logged slots must be the slots of the
/// newest layer (same numbers, addresses and sizes; see [`crate::Vm::memory_slots`]): each
/// layer's pages are written into them, oldest first, and the newest layer's state is
/// returned. Pages of slots that the newest layer no longer lists are skipped.
///
/// A layer's checksum is known only once it is read whole, and its pages are applied as it
/// is read: on an error the VM's memory is part restored and must not be run. Use
/// [`verify`] first to refuse a bad snapshot before touching a VM.
pub fn restore(dir: &Path, vm: &dyn Vm) -> Result<Restored> {
    read_chain(dir, Some(vm))
}

/// A slot's identity in a layer: where it is and how large.
type SlotTable = BTreeMap<MemSlot, (u64, u64)>;

fn read_chain(dir: &Path, vm: Option<&dyn Vm>) -> Result<Restored> {
    let mut count = 0u32;
    // A dangling link counts as there: it is refused when opened, by name.
    while dir.join(layer_name(count)).symlink_metadata().is_ok() {
        count = count.checked_add(1).ok_or_else(|| Error::TooManyLayers {
            dir: dir.to_path_buf(),
        })?;
    }
    if count == 0 {
        return Err(Error::NoLayers {
            dir: dir.to_path_buf(),
            first: layer_name(0),
        });
    }
    check_no_later_layer(dir, count)?;
    // The newest layer's slots are what the VM must have, and where pages may go.
    let newest = {
        let path = dir.join(layer_name(count - 1));
        let mut layer = Layer::open(&path)?;
        layer.read_tables()?;
        layer.slots
    };
    if let Some(vm) = vm {
        check_vm_slots(vm, &newest)?;
    }
    let mut layers = Vec::with_capacity(count as usize);
    let mut parent = 0u32;
    let mut state = Vec::new();
    for sequence in 0..count {
        let path = dir.join(layer_name(sequence));
        let start = Instant::now();
        let mut layer = Layer::open(&path)?;
        layer.check_place(sequence, parent)?;
        layer.read_tables()?;
        let layer_slots = layer.slots.clone();
        // Only into slots the newest layer still has as they were in this one.
        layer.read_data(vm, |slot| newest.get(&slot) == layer_slots.get(&slot))?;
        let (runs, data_len, file_len) = (layer.runs.len(), layer.data_len, layer.file_len);
        state = std::mem::take(&mut layer.state);
        let checksum = layer.finish()?;
        parent = checksum;
        layers.push(LayerSummary {
            path,
            sequence,
            full: sequence == 0,
            runs: runs as u64,
            pages: data_len / base::pagesize() as u64,
            data_bytes: data_len,
            file_bytes: file_len,
            checksum,
            harvest_time: Duration::ZERO,
            copy_time: start.elapsed(),
            sync_time: Duration::ZERO,
            total_time: start.elapsed(),
        });
    }
    Ok(Restored { layers, state })
}

/// Refuses a chain of `count` layers in `dir` when a later layer is there too: the chain
/// has a gap, and restoring it would quietly roll back past the layers after the gap.
fn check_no_later_layer(dir: &Path, count: u32) -> Result<()> {
    let layers = layers_in(dir).map_err(|source| Error::Io {
        op: "list",
        path: dir.to_path_buf(),
        source,
    })?;
    match layers.into_iter().filter(|&n| n >= count).min() {
        Some(found) => Err(Error::MissingLayer {
            dir: dir.to_path_buf(),
            missing: count,
            found,
        }),
        None => Ok(()),
    }
}

/// Refuses a VM whose logged slots are not exactly the snapshot's.
fn check_vm_slots(vm: &dyn Vm, slots: &SlotTable) -> Result<()> {
    let have: SlotTable = vm
        .memory_slots()
        .into_iter()
        .map(|s| (s.slot, (s.guest_addr.0, s.size)))
        .collect();
    for (&slot, &(guest_addr, size)) in slots {
        match have.get(&slot) {
            Some(&found) if found == (guest_addr, size) => {}
            found => {
                return Err(Error::SlotMismatch {
                    slot,
                    guest_addr: vm_memory::GuestAddress(guest_addr),
                    size,
                    found: match found {
                        Some((a, s)) => format!("the VM has it at {a:#x}+{s:#x}"),
                        None => "the VM has no such slot".into(),
                    },
                })
            }
        }
    }
    Ok(())
}

/// One layer file being read, with its running checksum.
struct Layer {
    path: PathBuf,
    file: File,
    file_len: u64,
    pos: u64,
    hasher: crc32fast::Hasher,
    header: Header,
    slots: SlotTable,
    runs: Vec<RunRecord>,
    state: Vec<u8>,
    data_len: u64,
}

impl Layer {
    /// Opens a layer and checks its header: magic, version, checksum, and that the file is
    /// exactly as long as the header says.
    fn open(path: &Path) -> Result<Layer> {
        let io = |op: &'static str| {
            let path = path.to_path_buf();
            move |source| Error::Io { op, path, source }
        };
        // Not blocking: a FIFO under a layer's name must not wait for a writer (nor a
        // terminal become ours). What is opened is read only if it is a regular file, and then
        // in blocking mode again, as some filesystems (FUSE) would answer EAGAIN.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(path)
            .map_err(io("open"))?;
        let meta = file.metadata().map_err(io("stat"))?;
        if !meta.is_file() {
            return Err(Error::NotAFile {
                path: path.to_path_buf(),
            });
        }
        // SAFETY: F_SETFL on our own open descriptor changes its flags only.
        if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, 0) } < 0 {
            return Err(io("fcntl")(std::io::Error::last_os_error()));
        }
        let file_len = meta.len();
        let mut layer = Layer {
            path: path.to_path_buf(),
            file,
            file_len,
            pos: 0,
            hasher: crc32fast::Hasher::new(),
            header: Header::new_zeroed(),
            slots: SlotTable::new(),
            runs: Vec::new(),
            state: Vec::new(),
            data_len: 0,
        };
        let mut bytes = [0u8; std::mem::size_of::<Header>()];
        layer.read_exact(&mut bytes)?;
        let header: Header = zerocopy::transmute!(bytes);
        if header.magic != MAGIC {
            return Err(Error::BadMagic {
                path: layer.path.clone(),
                found: header.magic,
            });
        }
        if header.version.get() != FORMAT_VERSION {
            return Err(Error::UnsupportedVersion {
                path: layer.path.clone(),
                version: header.version.get(),
                supported: FORMAT_VERSION,
            });
        }
        let computed = header.checksum();
        if computed != header.header_checksum.get() {
            return Err(Error::HeaderChecksum {
                path: layer.path.clone(),
                stored: header.header_checksum.get(),
                computed,
            });
        }
        layer.header = header;
        layer.check_zero("header reserved bytes", u64::from_le_bytes(header.reserved))?;
        let slot_count = header.slot_count.get();
        if slot_count > MAX_SLOTS {
            return Err(Error::TooManySlots {
                path: layer.path.clone(),
                count: slot_count,
                max: MAX_SLOTS,
            });
        }
        let state_len = header.state_len.get();
        if state_len > MAX_STATE_LEN {
            return Err(Error::StateTooLarge {
                path: layer.path.clone(),
                len: state_len,
                max: MAX_STATE_LEN,
            });
        }
        // Every count checked against the file before anything is allocated from it.
        let total = (u64::from(slot_count))
            .checked_add(header.run_count.get())
            .and_then(|n| n.checked_mul(24))
            .and_then(|n| n.checked_add(header.state_len.get()))
            .and_then(|n| n.checked_add(header.data_len.get()))
            .and_then(|n| n.checked_add(64 + 16));
        let Some(total) = total else {
            return Err(Error::SizesOverflow {
                path: layer.path.clone(),
            });
        };
        if total > file_len {
            return Err(Error::Truncated {
                path: layer.path.clone(),
                offset: file_len,
                needed: total - file_len,
                len: file_len,
            });
        }
        if total < file_len {
            return Err(Error::TrailingBytes {
                path: layer.path.clone(),
                extra: file_len - total,
                end: total,
            });
        }
        layer.data_len = header.data_len.get();
        Ok(layer)
    }

    /// Refuses a nonzero `value` of a field that must be zero.
    fn check_zero(&self, field: &'static str, value: u64) -> Result<()> {
        if value != 0 {
            return Err(Error::NonzeroReserved {
                path: self.path.clone(),
                field,
                value,
            });
        }
        Ok(())
    }

    /// Checks that this is layer `sequence` and follows a layer of checksum `parent`.
    fn check_place(&self, sequence: u32, parent: u32) -> Result<()> {
        let h = &self.header;
        if h.sequence.get() != sequence {
            return Err(Error::SequenceMismatch {
                path: self.path.clone(),
                expected: sequence,
                found: h.sequence.get(),
            });
        }
        let (kind, expected) = match (h.kind.get(), sequence) {
            (KIND_FULL, 0) | (KIND_INCREMENTAL, 1..) => return self.check_parent(parent),
            (KIND_FULL, _) => ("full", "incremental"),
            (KIND_INCREMENTAL, _) => ("incremental", "full"),
            (_, 0) => ("of an unknown kind", "full"),
            _ => ("of an unknown kind", "incremental"),
        };
        Err(Error::FirstLayerKind {
            path: self.path.clone(),
            sequence,
            kind,
            expected,
        })
    }

    fn check_parent(&self, parent: u32) -> Result<()> {
        let found = self.header.parent_checksum.get();
        if found != parent {
            return Err(Error::ChainBroken {
                path: self.path.clone(),
                sequence: self.header.sequence.get(),
                expected: parent,
                found,
            });
        }
        Ok(())
    }

    /// Reads the slot table, the run table and the state, and checks every run against its
    /// slot and the data length.
    fn read_tables(&mut self) -> Result<()> {
        let mut record = [0u8; 24];
        for _ in 0..self.header.slot_count.get() {
            self.read_exact(&mut record)?;
            let s: SlotRecord = zerocopy::transmute!(record);
            let (slot, addr, size) = (s.slot.get(), s.guest_addr.get(), s.size.get());
            let unknown = s.flags.get() & !(SLOT_READ_ONLY | SLOT_BOOT_RAM);
            self.check_zero("slot flags", unknown.into())?;
            if self.slots.insert(slot, (addr, size)).is_some() {
                return Err(Error::DuplicateSlot {
                    path: self.path.clone(),
                    slot,
                });
            }
        }
        let page = base::pagesize() as u64;
        let mut data = 0u64;
        let run_count = self.header.run_count.get();
        // Grown as records are read (each one is in the file), never sized from the count.
        self.runs = Vec::new();
        for _ in 0..run_count {
            self.read_exact(&mut record)?;
            let r: RunRecord = zerocopy::transmute!(record);
            self.check_zero("run reserved bytes", r.reserved.get().into())?;
            let (slot, offset, len) = (r.slot.get(), r.offset.get(), r.len.get());
            let slot_size = self.slots.get(&slot).map_or(0, |&(_, size)| size);
            let inside = offset.checked_add(len).is_some_and(|end| end <= slot_size);
            if !inside || len == 0 {
                return Err(Error::RunOutsideSlot {
                    path: self.path.clone(),
                    slot,
                    offset,
                    len,
                    slot_size,
                });
            }
            if offset % page != 0 || len % page != 0 {
                return Err(Error::RunNotWholePages {
                    path: self.path.clone(),
                    slot,
                    offset,
                    len,
                });
            }
            data += len;
            self.runs.push(r);
        }
        if data != self.data_len {
            return Err(Error::DataLengthMismatch {
                path: self.path.clone(),
                runs: data,
                header: self.data_len,
            });
        }
        let mut state = vec![0u8; self.header.state_len.get() as usize];
        self.read_exact(&mut state)?;
        self.state = state;
        Ok(())
    }

    /// Reads exactly `buf.len()` bytes, into the checksum.
    fn read_exact(&mut self, buf: &mut [u8]) -> Result<()> {
        self.file.read_exact(buf).map_err(|source| {
            if source.kind() == std::io::ErrorKind::UnexpectedEof {
                Error::Truncated {
                    path: self.path.clone(),
                    offset: self.pos,
                    needed: buf.len() as u64,
                    len: self.file_len,
                }
            } else {
                Error::Io {
                    op: "read",
                    path: self.path.clone(),
                    source,
                }
            }
        })?;
        self.hasher.update(buf);
        self.pos += buf.len() as u64;
        Ok(())
    }

    /// Reads the data section: each run's bytes go straight from the file into `vm`'s slot
    /// when `keep(slot)` says so (and are skipped otherwise), while another thread reads
    /// them again, from guest memory, or from the file for runs not kept, for the checksum.
    /// What is checked is what landed in the VM.
    fn read_data(&mut self, vm: Option<&dyn Vm>, keep: impl Fn(MemSlot) -> bool) -> Result<()> {
        let (file, path) = (&self.file, &self.path);
        let (file_len, mut at) = (self.file_len, self.pos);
        let hasher = std::mem::take(&mut self.hasher);
        let hasher = std::thread::scope(|scope| {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Chunk>(64);
            let summer = scope.spawn(move || sum_chunks(rx, file, path, hasher));
            let mut read = Ok(());
            'runs: for r in &self.runs {
                let (slot, offset, len) = (r.slot.get(), r.offset.get(), r.len.get());
                let target = vm.filter(|_| keep(slot));
                let mut done = 0;
                while done < len {
                    let n = (len - done).min(CHUNK as u64) as usize;
                    let chunk = match target {
                        Some(vm) => {
                            let into = (offset + done) as usize;
                            read = read_into(vm, slot, into, n, file, at, path, file_len);
                            Chunk::Guest {
                                vm,
                                slot,
                                offset: into,
                                len: n,
                            }
                        }
                        None => Chunk::File { at, len: n },
                    };
                    // A summer that stopped has its error waiting in `join`.
                    if read.is_err() || tx.send(chunk).is_err() {
                        break 'runs;
                    }
                    done += n as u64;
                    at += n as u64;
                }
            }
            drop(tx);
            let summed = match summer.join() {
                Ok(summed) => summed,
                Err(panic) => std::panic::resume_unwind(panic),
            };
            read.and(summed)
        })?;
        self.hasher = hasher;
        self.pos += self.data_len;
        std::io::Seek::seek(&mut self.file, std::io::SeekFrom::Start(self.pos)).map_err(
            |source| Error::Io {
                op: "seek",
                path: self.path.clone(),
                source,
            },
        )?;
        Ok(())
    }

    /// Reads the trailer and checks the layer's checksum; returns it.
    fn finish(mut self) -> Result<u32> {
        let computed = std::mem::take(&mut self.hasher).finalize();
        let mut bytes = [0u8; std::mem::size_of::<Trailer>()];
        self.read_exact(&mut bytes)?;
        let trailer: Trailer = zerocopy::transmute!(bytes);
        if trailer.end_magic != END_MAGIC {
            return Err(Error::BadEndMagic {
                path: self.path,
                found: trailer.end_magic,
            });
        }
        self.check_zero("trailer reserved bytes", trailer.reserved.get().into())?;
        let stored = trailer.layer_checksum.get();
        if stored != computed {
            return Err(Error::LayerChecksum {
                path: self.path,
                stored,
                computed,
            });
        }
        Ok(stored)
    }
}
