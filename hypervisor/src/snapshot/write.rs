// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Writing layers: a full one, then incremental ones from dirty-page harvests.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use zerocopy::little_endian::{U32, U64};
use zerocopy::IntoBytes;

use super::format::*;
use super::{Error, LayerSummary, Result};
use crate::{DirtyRun, MemSlot, SlotInfo, Vm};

/// Writes the layers of one snapshot into a directory: [`write_full`](Self::write_full)
/// first, then any number of [`write_incremental`](Self::write_incremental).
///
/// A layer covers the slots that log dirty pages, boot RAM and added slots alike. Its pages
/// come from a [`DirtyHarvest`](crate::DirtyHarvest) that is committed only once the layer
/// is safely in its file, so a layer that fails leaves its pages for the next one. Pages are
/// copied while the harvest holds them; the caller stops the vCPUs (and the devices that
/// write guest memory) around each layer for a consistent image.
#[derive(Debug)]
pub struct SnapshotWriter {
    dir: PathBuf,
    next: u32,
    parent: u32,
    durable: bool,
    /// The boot RAM's tracking epoch when the full layer turned tracking on.
    tracking_epoch: u64,
}

impl SnapshotWriter {
    /// A writer for a new snapshot in `dir`, which is made if missing and must hold no
    /// layer yet.
    pub fn create(dir: &Path) -> Result<SnapshotWriter> {
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            op: "create",
            path: dir.to_path_buf(),
            source,
        })?;
        let layers = layers_in(dir).map_err(|source| Error::Io {
            op: "list",
            path: dir.to_path_buf(),
            source,
        })?;
        if !layers.is_empty() {
            return Err(Error::DirectoryNotEmpty {
                dir: dir.to_path_buf(),
            });
        }
        Ok(SnapshotWriter {
            dir: dir.to_path_buf(),
            next: 0,
            parent: 0,
            durable: true,
            tracking_epoch: 0,
        })
    }

    /// Whether each layer is flushed to its disk (`fdatasync`, file and directory) before it
    /// counts as written; on by default. Off, a crash may lose layers that were reported
    /// written: for measuring, or for snapshots that need not survive the host.
    pub fn durable(mut self, durable: bool) -> SnapshotWriter {
        self.durable = durable;
        self
    }

    /// Writes the full layer: every page of every logged slot that the slot maps read-write,
    /// with `state` (the caller's vCPU and device state, opaque here). The VM's pending dirty
    /// pages are taken with it. It turns on the tracking of the VMM's own writes to boot RAM
    /// ([`GuestMemory::set_dirty_tracking`](vm_memory::GuestMemory::set_dirty_tracking))
    /// first, so that the incremental layers hold them.
    pub fn write_full(&mut self, vm: &dyn Vm, state: &[u8]) -> Result<LayerSummary> {
        if self.next != 0 {
            return Err(Error::FirstLayerKind {
                path: self.dir.join(layer_name(self.next)),
                sequence: self.next,
                kind: "full",
                expected: "incremental",
            });
        }
        check_state(&self.dir, self.next, state)?;
        vm.get_memory().set_dirty_tracking(true);
        self.tracking_epoch = vm.get_memory().dirty_tracking_epoch();
        let begun = Instant::now();
        let harvest = vm.harvest_dirty_log()?;
        let harvest_time = begun.elapsed();
        let slots = logged_slots(vm);
        let whole: Vec<DirtyRun> = slots
            .iter()
            .map(|s| DirtyRun {
                slot: s.slot,
                guest_addr: s.guest_addr,
                offset: 0,
                len: s.size,
            })
            .collect();
        let runs = mapped_parts(vm, &slots, &whole)?;
        let mut summary = self.write_layer(vm, KIND_FULL, &slots, &runs, state)?;
        harvest.commit();
        summary.harvest_time = harvest_time;
        Ok(summary)
    }

    /// Writes an incremental layer: the pages dirtied since the previous layer, by the guest
    /// or through boot RAM's `GuestMemory`, and `state`. Refused with
    /// [`Error::DirtyTrackingOff`] once the tracking of the VMM's writes has been off at any
    /// time since the full layer (even if it is back on): the layer could miss what the VMM
    /// wrote meanwhile. Such a snapshot takes a new full layer.
    pub fn write_incremental(&mut self, vm: &dyn Vm, state: &[u8]) -> Result<LayerSummary> {
        if self.next == 0 {
            return Err(Error::FirstLayerKind {
                path: self.dir.join(layer_name(0)),
                sequence: 0,
                kind: "incremental",
                expected: "full",
            });
        }
        check_state(&self.dir, self.next, state)?;
        let mem = vm.get_memory();
        if !mem.dirty_tracking() || mem.dirty_tracking_epoch() != self.tracking_epoch {
            return Err(Error::DirtyTrackingOff {
                sequence: self.next,
            });
        }
        let begun = Instant::now();
        let harvest = vm.harvest_dirty_log()?;
        let mut dirty = Vec::new();
        harvest.for_each_run(|run| dirty.push(run));
        let harvest_time = begun.elapsed();
        let slots = logged_slots(vm);
        let runs = mapped_parts(vm, &slots, &dirty)?;
        let mut summary = self.write_layer(vm, KIND_INCREMENTAL, &slots, &runs, state)?;
        harvest.commit();
        summary.harvest_time = harvest_time;
        Ok(summary)
    }

    /// Writes one layer under a temporary name and renames it into place once complete (and
    /// durable, if asked), so a reader never sees half a layer.
    fn write_layer(
        &mut self,
        vm: &dyn Vm,
        kind: u32,
        slots: &[SlotInfo],
        runs: &[DirtyRun],
        state: &[u8],
    ) -> Result<LayerSummary> {
        let start = Instant::now();
        let name = layer_name(self.next);
        let path = self.dir.join(&name);
        let temp = self.dir.join(format!(".{name}.partial"));
        let io = |op: &'static str, p: &Path| {
            let p = p.to_path_buf();
            move |source| Error::Io {
                op,
                path: p,
                source,
            }
        };
        // A new file of our own, whatever was left at its name (a failed layer's file, or a
        // FIFO or link someone put there, which must not be followed or waited on). Read
        // too: the checksum is taken of what the file holds.
        match std::fs::remove_file(&temp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io("create", &temp)(e));
            }
            _ => {}
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&temp)
            .map_err(io("create", &temp))?;
        let data_len: u64 = runs.iter().map(|r| r.len).sum();
        let mut header = Header {
            magic: MAGIC,
            version: U32::new(FORMAT_VERSION),
            kind: U32::new(kind),
            sequence: U32::new(self.next),
            slot_count: U32::new(slots.len() as u32),
            run_count: U64::new(runs.len() as u64),
            state_len: U64::new(state.len() as u64),
            data_len: U64::new(data_len),
            parent_checksum: U32::new(self.parent),
            header_checksum: U32::new(0),
            reserved: [0; 8],
        };
        header.header_checksum = U32::new(header.checksum());
        let mut out = Checksummed::new(&mut file);
        let mut tables = Vec::with_capacity(
            std::mem::size_of::<Header>() + (slots.len() + runs.len()) * 24 + state.len(),
        );
        tables.extend_from_slice(header.as_bytes());
        for s in slots {
            let mut flags = 0;
            if s.read_only {
                flags |= SLOT_READ_ONLY;
            }
            if s.boot_ram {
                flags |= SLOT_BOOT_RAM;
            }
            let record = SlotRecord {
                slot: U32::new(s.slot),
                flags: U32::new(flags),
                guest_addr: U64::new(s.guest_addr.0),
                size: U64::new(s.size),
            };
            tables.extend_from_slice(record.as_bytes());
        }
        for r in runs {
            let record = RunRecord {
                slot: U32::new(r.slot),
                reserved: U32::new(0),
                offset: U64::new(r.offset),
                len: U64::new(r.len),
            };
            tables.extend_from_slice(record.as_bytes());
        }
        tables.extend_from_slice(state);
        out.write_all(&tables).map_err(io("write", &temp))?;
        let copy_start = Instant::now();
        let (sink, hasher) = out.into_parts();
        // The kernel copies the pages straight from guest memory into the file, while another
        // thread reads back, from the page cache, what has been written, for the checksum:
        // two CPUs, no copy of ours in the way, and a checksum of exactly the bytes in the
        // file even when a page changes as it is written.
        let data_at = tables.len() as u64;
        let sink = &*sink;
        let hasher = std::thread::scope(|scope| {
            let (progress, written_so_far) = std::sync::mpsc::sync_channel::<u64>(64);
            let summer = scope.spawn(|| checksum_file(sink, data_at, written_so_far, hasher));
            let written = write_runs(vm, runs, sink, data_at, progress);
            let summed = match summer.join() {
                Ok(summed) => summed,
                Err(panic) => std::panic::resume_unwind(panic),
            };
            written.and(summed).map_err(|e| match e {
                Error::Io { op, source, .. } => Error::Io {
                    op,
                    path: temp.clone(),
                    source,
                },
                e => e,
            })
        })?;
        let checksum = hasher.finalize();
        let trailer = Trailer {
            layer_checksum: U32::new(checksum),
            reserved: U32::new(0),
            end_magic: END_MAGIC,
        };
        std::os::unix::fs::FileExt::write_all_at(sink, trailer.as_bytes(), data_at + data_len)
            .map_err(io("write", &temp))?;
        let copy = copy_start.elapsed();
        let sync_start = Instant::now();
        if self.durable {
            sink.sync_data().map_err(io("fdatasync", &temp))?;
        }
        drop(file);
        std::fs::rename(&temp, &path).map_err(io("rename", &path))?;
        if self.durable {
            File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(io("fsync", &self.dir))?;
        }
        let file_bytes = (tables.len() + std::mem::size_of::<Trailer>()) as u64 + data_len;
        self.parent = checksum;
        self.next += 1;
        Ok(LayerSummary {
            path,
            sequence: self.next - 1,
            full: kind == KIND_FULL,
            runs: runs.len() as u64,
            pages: data_len / base::pagesize() as u64,
            data_bytes: data_len,
            file_bytes,
            checksum,
            harvest_time: Duration::ZERO,
            copy_time: copy,
            sync_time: if self.durable {
                sync_start.elapsed()
            } else {
                Duration::ZERO
            },
            total_time: start.elapsed(),
        })
    }
}

/// Bytes handed to the kernel, or checksummed, per call.
const CHUNK: usize = 4 << 20;
/// Bytes read back from the file at a time for the checksum: small enough to stay in the
/// CPU's caches between the copy and the sum.
const SUM_CHUNK: usize = 64 << 10;

/// Writes the runs' bytes back to back into `file` from `offset`, straight from guest memory,
/// and tells `progress` how many bytes are in the file after each piece.
fn write_runs(
    vm: &dyn Vm,
    runs: &[DirtyRun],
    file: &File,
    start: u64,
    progress: std::sync::mpsc::SyncSender<u64>,
) -> Result<()> {
    let mut offset = start;
    for r in runs {
        let mut done = 0;
        while done < r.len {
            let n = (r.len - done).min(CHUNK as u64) as usize;
            let at = (r.offset + done) as usize;
            let mut handed = None;
            vm.with_slot_memory(r.slot, at, n, &mut |slice| {
                // The kernel reads as many bytes as asked: never more than the slice holds.
                if slice.size() != n {
                    handed = Some(slice.size());
                    return Ok(());
                }
                let mut put = 0;
                while put < n {
                    // SAFETY: the kernel reads `n - put` bytes inside `slice` (which is `n`
                    // bytes long, checked above), live guest memory for as long as this
                    // closure runs.
                    let ret = unsafe {
                        libc::pwrite(
                            std::os::fd::AsRawFd::as_raw_fd(file),
                            slice.as_ptr().add(put) as *const libc::c_void,
                            n - put,
                            (offset + put as u64) as libc::off_t,
                        )
                    };
                    match ret {
                        0 => return Err(std::io::Error::from(std::io::ErrorKind::WriteZero)),
                        n if n > 0 => put += n as usize,
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
                    op: "write",
                    path: PathBuf::new(),
                    source,
                },
                e => Error::Vm(e),
            })?;
            if let Some(got) = handed {
                return Err(Error::ShortSlice {
                    slot: r.slot,
                    offset: at,
                    asked: n,
                    got,
                });
            }
            done += n as u64;
            offset += n as u64;
            // A checksum thread that stopped has its error waiting in its join.
            if progress.send(offset - start).is_err() {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// The checksum `hasher` continues over the data section of `file` from `start`, read back
/// through small copies as `written` reports more of it in the file; until the writer is done.
fn checksum_file(
    file: &File,
    start: u64,
    written: std::sync::mpsc::Receiver<u64>,
    mut hasher: crc32fast::Hasher,
) -> Result<crc32fast::Hasher> {
    let mut buf = vec![0u8; SUM_CHUNK];
    let mut summed = 0u64;
    for upto in written {
        while summed < upto {
            let n = (upto - summed).min(SUM_CHUNK as u64) as usize;
            std::os::unix::fs::FileExt::read_exact_at(file, &mut buf[..n], start + summed)
                .map_err(|source| Error::Io {
                    op: "read back",
                    path: PathBuf::new(),
                    source,
                })?;
            hasher.update(&buf[..n]);
            summed += n as u64;
        }
    }
    Ok(hasher)
}

/// The parts of `runs` (in slot and offset order) that their slots map read-write, in the
/// same order: what a layer can hold. An arena's holes and read-only sub-mappings hold no
/// data the guest or the VMM can have written through it, and are left out. The VM's list of
/// mappings is checked (in order, no overlap, inside the slot) before it is believed.
fn mapped_parts(vm: &dyn Vm, slots: &[SlotInfo], runs: &[DirtyRun]) -> Result<Vec<DirtyRun>> {
    let mut parts = Vec::with_capacity(runs.len());
    let mut mapped: Vec<(u64, u64)> = Vec::new();
    let mut mapped_slot = None;
    for r in runs {
        if mapped_slot != Some(r.slot) {
            let size = slots
                .iter()
                .find(|s| s.slot == r.slot)
                .map_or(0, |s| s.size);
            mapped = writable_ranges(vm, r.slot, size)?;
            mapped_slot = Some(r.slot);
        }
        let (start, end) = (r.offset, r.offset.saturating_add(r.len));
        let first = mapped.partition_point(|&(_, to)| to <= start);
        for &(from, to) in mapped[first..].iter().take_while(|&&(from, _)| from < end) {
            let (from, to) = (start.max(from), end.min(to));
            parts.push(DirtyRun {
                slot: r.slot,
                guest_addr: vm_memory::GuestAddress(r.guest_addr.0 - r.offset + from),
                offset: from,
                len: to - from,
            });
        }
    }
    Ok(parts)
}

/// The read-write mapped ranges (start, end) of slot `slot` of `size` bytes, in order, from
/// the VM's list once it is seen to hold.
fn writable_ranges(vm: &dyn Vm, slot: MemSlot, size: u64) -> Result<Vec<(u64, u64)>> {
    let bad = |why: String| Error::BadSlotMappings { slot, why };
    let mut ranges = Vec::new();
    let mut prev_end = 0u64;
    for m in vm.slot_mappings(slot)? {
        let (from, len) = (m.offset as u64, m.size as u64);
        let Some(to) = from.checked_add(len).filter(|&to| to <= size) else {
            return Err(bad(format!(
                "{from:#x}+{len:#x} is not inside its {size:#x} bytes"
            )));
        };
        if from < prev_end {
            return Err(bad(format!(
                "{from:#x} comes before the end of the mapping before it, {prev_end:#x}"
            )));
        }
        prev_end = to;
        if m.protection.allows(&base::Protection::read_write()) {
            ranges.push((from, to));
        }
    }
    Ok(ranges)
}

/// Refuses a state that no reader would take.
fn check_state(dir: &Path, sequence: u32, state: &[u8]) -> Result<()> {
    if state.len() as u64 > MAX_STATE_LEN {
        return Err(Error::StateTooLarge {
            path: dir.join(layer_name(sequence)),
            len: state.len() as u64,
            max: MAX_STATE_LEN,
        });
    }
    Ok(())
}

/// The slots a layer covers: those that log dirty pages.
fn logged_slots(vm: &dyn Vm) -> Vec<SlotInfo> {
    vm.memory_slots()
        .into_iter()
        .filter(|s| s.dirty_logging)
        .collect()
}

/// A writer that keeps the CRC-32 of what went through it.
struct Checksummed<'a> {
    inner: &'a mut File,
    hasher: crc32fast::Hasher,
}

impl<'a> Checksummed<'a> {
    fn new(inner: &'a mut File) -> Checksummed<'a> {
        Checksummed {
            inner,
            hasher: crc32fast::Hasher::new(),
        }
    }

    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.hasher.update(bytes);
        self.inner.write_all(bytes)
    }

    fn into_parts(self) -> (&'a mut File, crc32fast::Hasher) {
        (self.inner, self.hasher)
    }
}
