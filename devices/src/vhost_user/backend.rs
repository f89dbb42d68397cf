// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! [`BlockBackend`]: the frontend's requests, as rust-vmm's `vhost` crate decodes them, applied
//! to a virtio-blk device; and [`serve_connection`], which runs one frontend's connection.
//!
//! Each request is checked against the state the protocol allows: a vring index past the
//! device's queues, a size that is not a power of two up to the maximum, a base past 16 bits,
//! a descriptor that is not an eventfd, rings whose addresses no region holds, features that
//! were not offered, configuration past the config space. A refused request is answered with
//! a typed error (which the frontend sees as a NACK with `REPLY_ACK`) and is logged; the
//! connection stays up. A message that breaks the protocol itself (which `vhost` refuses to
//! decode) ends the connection, and everything of it is dropped: threads stopped, memory
//! unmapped, descriptors closed.

use std::fs::File;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use remain::sorted;
use thiserror::Error;
use vhost::vhost_user::message::{
    VhostTransferStateDirection, VhostTransferStatePhase, VhostUserConfigFlags, VhostUserInflight,
    VhostUserLog, VhostUserMemoryRegion, VhostUserShMemConfig, VhostUserSharedMsg,
    VhostUserSingleMemoryRegion, VhostUserVringAddrFlags, VhostUserVringState,
};
use vhost::vhost_user::{
    BackendReqHandler, GpuBackend, VhostUserBackendReqHandlerMut, VhostUserProtocolFeatures,
    VhostUserVirtioFeatures,
};
use vhost::VhostUserMemoryRegionBase;
use zerocopy::IntoBytes;

use super::blk::BlockDisk;
use super::log::DirtyLog;
use super::memory::{MemoryTable, RegionDesc};
use super::vring::{check_eventfd, lock, Vring, VringAddrs, Worker};

/// `VIRTIO_F_VERSION_1`.
pub const VIRTIO_F_VERSION_1: u32 = 32;
/// `VIRTIO_RING_F_INDIRECT_DESC`.
pub const VIRTIO_RING_F_INDIRECT_DESC: u32 = 28;
/// `VIRTIO_RING_F_EVENT_IDX`.
pub const VIRTIO_RING_F_EVENT_IDX: u32 = 29;
/// The largest queue the backend takes (QEMU 7.2 sets 1024 by default).
pub const MAX_QUEUE_SIZE: u16 = 1024;
/// The most queues `--queues` may ask for.
pub const MAX_QUEUES: u16 = 16;
/// Memory regions the backend takes (`GET_MAX_MEM_SLOTS`).
pub const MAX_MEM_SLOTS: usize = 32;

/// Errors of the backend's request handling.
#[sorted]
#[derive(Debug, Error)]
pub enum Error {
    /// A configuration read or write outside the config space, or a write (it is read-only).
    #[error("config access of {size} bytes at {offset} does not fit the {len}-byte config space, or is a write")]
    BadConfigAccess {
        /// The offset.
        offset: u32,
        /// The size.
        size: u32,
        /// The config space's size.
        len: usize,
    },
    /// A vring base past 16 bits.
    #[error("vring {index}: base {base} does not fit a 16-bit ring index")]
    BaseTooLarge {
        /// The vring.
        index: u32,
        /// The base asked for.
        base: u32,
    },
    /// The dirty log could not be set up.
    #[error("dirty log: {0}")]
    DirtyLog(#[from] super::log::Error),
    /// Features the backend did not offer.
    #[error("features {asked:#x} include {extra:#x}, which were not offered")]
    FeaturesNotOffered {
        /// What the frontend set.
        asked: u64,
        /// What it set beyond the offer.
        extra: u64,
    },
    /// An I/O error on a descriptor or thread.
    #[error("{what}: {source}")]
    Io {
        /// What failed.
        what: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// The memory table was refused.
    #[error("memory table: {0}")]
    Memory(#[from] super::memory::Error),
    /// `SET_VRING_KICK` without a descriptor (polling mode, which the backend does not do).
    #[error("vring {index} came without a kick descriptor; the backend does not poll")]
    NoKick {
        /// The vring.
        index: u32,
    },
    /// A request that needs memory before the frontend sent a memory table.
    #[error("{what} needs a memory table, and none was sent")]
    NoMemory {
        /// The request.
        what: &'static str,
    },
    /// A vring index past the device's queues.
    #[error("vring {index} does not exist: the device has {queues}")]
    NoSuchVring {
        /// The index.
        index: u32,
        /// The device's queues.
        queues: u16,
    },
    /// A descriptor that should be an eventfd and is not.
    #[error("the {what} descriptor of vring {index} is not an eventfd")]
    NotEventfd {
        /// Which descriptor.
        what: &'static str,
        /// The vring.
        index: u32,
    },
    /// A ring's configuration was refused when it was started.
    #[error("vring {index}: {source}")]
    Queue {
        /// The vring.
        index: u32,
        /// What the queue said.
        source: crate::virtio::queue::Error,
    },
    /// A change the protocol forbids while the ring is started.
    #[error("vring {index} is started: stop it (GET_VRING_BASE) before changing its {what}")]
    Started {
        /// The vring.
        index: u32,
        /// What was to change.
        what: &'static str,
    },
    /// A request the backend does not implement.
    #[error("{0} is not supported")]
    Unsupported(&'static str),
    /// A ring address the memory table does not cover.
    #[error("vring {index}: the {ring} at frontend address {addr:#x} is not in the memory table: {source}")]
    VringAddr {
        /// The vring.
        index: u32,
        /// Which ring.
        ring: &'static str,
        /// Its frontend address.
        addr: u64,
        /// Why not.
        source: super::memory::Error,
    },
    /// A queue size that is 0, not a power of two, or past the maximum.
    #[error("vring {index}: size {num} must be a power of two from 1 to {max}")]
    VringSize {
        /// The vring.
        index: u32,
        /// The size asked for.
        num: u32,
        /// The maximum.
        max: u16,
    },
}

/// Result of the backend's request handling.
pub type Result<T> = std::result::Result<T, Error>;

/// A vhost-user-blk device: the frontend's requests (through [`BackendReqHandler`]) configure
/// it, and one thread per started vring serves the disk.
#[derive(Debug)]
pub struct BlockBackend {
    disk: Arc<BlockDisk>,
    queues: u16,
    acked_features: u64,
    acked_protocol: u64,
    table: Option<MemoryTable>,
    log: Option<Arc<DirtyLog>>,
    vrings: Vec<Arc<Mutex<Vring>>>,
    workers: Vec<Option<Worker>>,
    /// A request was refused that `vhost` answers only when it succeeds: the frontend waits
    /// for an answer that cannot come, so [`serve_connection`] ends the connection.
    hang_up: bool,
}

impl BlockBackend {
    /// A device of `queues` queues (1 to [`MAX_QUEUES`]; others are clamped) serving `disk`.
    pub fn new(disk: BlockDisk, queues: u16) -> BlockBackend {
        let queues = queues.clamp(1, MAX_QUEUES);
        BlockBackend {
            disk: Arc::new(disk),
            queues,
            acked_features: 0,
            acked_protocol: 0,
            table: None,
            log: None,
            vrings: (0..queues)
                .map(|_| Arc::new(Mutex::new(Vring::new(MAX_QUEUE_SIZE))))
                .collect(),
            workers: (0..queues).map(|_| None).collect(),
            hang_up: false,
        }
    }

    /// The virtio and vhost-user features offered.
    pub fn offered_features(&self) -> u64 {
        self.disk.features(self.queues)
            | 1 << VIRTIO_F_VERSION_1
            | 1 << VIRTIO_RING_F_INDIRECT_DESC
            | 1 << VIRTIO_RING_F_EVENT_IDX
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
            | VhostUserVirtioFeatures::LOG_ALL.bits()
    }

    /// The protocol features offered (`REPLY_ACK` is added by `vhost`).
    pub fn offered_protocol_features() -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::LOG_SHMFD
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
            | VhostUserProtocolFeatures::RESET_DEVICE
    }

    /// Drops everything a connection set up: stops every vring's thread, unmaps the memory
    /// and the log, closes the eventfds. The device is as new, for the next connection.
    pub fn disconnect(&mut self) {
        self.reset();
        self.acked_features = 0;
        self.acked_protocol = 0;
        self.table = None;
        self.log = None;
        self.hang_up = false;
    }

    /// Refuses a request whose refusal `vhost` does not answer (it replies only on success:
    /// `GET_VRING_BASE`, `SET_LOG_BASE`, `GET_INFLIGHT_FD`, `GET_SHMEM_CONFIG`), and has the
    /// connection ended so that the frontend is not left waiting.
    fn refuse_unanswered<T>(&mut self, e: Error) -> vhost::vhost_user::Result<T> {
        self.hang_up = true;
        refuse(e)
    }

    fn reset(&mut self) {
        for worker in &mut self.workers {
            // Dropping a worker stops its thread after its batch.
            *worker = None;
        }
        for vring in &self.vrings {
            *lock(vring) = Vring::new(MAX_QUEUE_SIZE);
        }
    }

    fn vring(&self, index: u32) -> Result<(usize, &Arc<Mutex<Vring>>)> {
        let i = usize::try_from(index).unwrap_or(usize::MAX);
        self.vrings
            .get(i)
            .map(|v| (i, v))
            .ok_or(Error::NoSuchVring {
                index,
                queues: self.queues,
            })
    }

    fn stopped_vring(&self, index: u32, what: &'static str) -> Result<&Arc<Mutex<Vring>>> {
        let (i, vring) = self.vring(index)?;
        if self.workers[i].is_some() {
            return Err(Error::Started { index, what });
        }
        Ok(vring)
    }

    fn logging(&self) -> Option<Arc<DirtyLog>> {
        if self.acked_features & VhostUserVirtioFeatures::LOG_ALL.bits() != 0 {
            self.log.clone()
        } else {
            None
        }
    }

    /// Points `vring`'s queue at its rings in `table`, and readies it from `base`.
    fn start_queue(
        &self,
        index: u32,
        vring: &mut Vring,
        table: &MemoryTable,
        base: u16,
    ) -> Result<()> {
        let addrs = vring.addrs.unwrap_or_default();
        let size = u64::from(vring.queue.size());
        let mut guest = [vm_memory::GuestAddress(0); 3];
        for (slot, (ring, addr, len)) in guest.iter_mut().zip([
            ("descriptor table", addrs.desc, 16 * size),
            ("available ring", addrs.avail, 6 + 2 * size),
            ("used ring", addrs.used, 6 + 8 * size),
        ]) {
            *slot = table
                .translate(addr, len)
                .map_err(|source| Error::VringAddr {
                    index,
                    ring,
                    addr,
                    source,
                })?;
        }
        let queue_err = |source| Error::Queue { index, source };
        let q = &mut vring.queue;
        q.disable();
        q.set_desc_table(guest[0]).map_err(queue_err)?;
        q.set_avail_ring(guest[1]).map_err(queue_err)?;
        q.set_used_ring(guest[2]).map_err(queue_err)?;
        q.set_event_idx(self.acked_features & 1 << VIRTIO_RING_F_EVENT_IDX != 0);
        q.set_indirect(self.acked_features & 1 << VIRTIO_RING_F_INDIRECT_DESC != 0);
        q.enable_from(table.memory(), base).map_err(queue_err)?;
        vring.mem = Some(table.memory().clone());
        vring.log = self.logging();
        vring.broken = false;
        Ok(())
    }

    /// Replaces the memory table; started rings move to the new one where they were (and stop,
    /// broken, where it does not hold them).
    fn replace_table(&mut self, table: Option<MemoryTable>) -> Result<()> {
        for (i, vring) in self.vrings.iter().enumerate() {
            if self.workers[i].is_none() {
                continue;
            }
            let mut v = lock(vring);
            let at = v.queue.next_avail();
            let moved = match &table {
                Some(table) => self.start_queue(i as u32, &mut v, table, at),
                None => Err(Error::NoMemory {
                    what: "a started vring",
                }),
            };
            if let Err(e) = moved {
                // The ring is not in the new memory: it stops until restarted.
                log::error!("vhost-user-blk: {e}");
                v.queue.disable();
                // GET_VRING_BASE answers where it stopped, and a restart resumes there.
                v.base = at;
                v.mem = None;
                v.broken = true;
            }
        }
        self.table = table;
        Ok(())
    }

    fn set_log_on_vrings(&self) {
        let log = self.logging();
        for vring in &self.vrings {
            lock(vring).log = log.clone();
        }
    }
}

impl Drop for BlockBackend {
    fn drop(&mut self) {
        self.disconnect();
    }
}

/// The backend's error as `vhost` passes it back: logged here, since `vhost` only says that
/// the handler failed.
fn refuse<T>(e: Error) -> vhost::vhost_user::Result<T> {
    log::warn!("vhost-user-blk: request refused: {e}");
    Err(vhost::vhost_user::Error::ReqHandlerError(
        std::io::Error::other(e),
    ))
}

fn answer<T>(r: Result<T>) -> vhost::vhost_user::Result<T> {
    r.or_else(refuse)
}

impl VhostUserBackendReqHandlerMut for BlockBackend {
    fn set_owner(&mut self) -> vhost::vhost_user::Result<()> {
        Ok(())
    }

    fn reset_owner(&mut self) -> vhost::vhost_user::Result<()> {
        self.disconnect();
        Ok(())
    }

    fn reset_device(&mut self) -> vhost::vhost_user::Result<()> {
        self.reset();
        self.acked_features = 0;
        Ok(())
    }

    fn get_features(&mut self) -> vhost::vhost_user::Result<u64> {
        Ok(self.offered_features())
    }

    fn set_features(&mut self, features: u64) -> vhost::vhost_user::Result<()> {
        let extra = features & !self.offered_features();
        if extra != 0 {
            return refuse(Error::FeaturesNotOffered {
                asked: features,
                extra,
            });
        }
        self.acked_features = features;
        // LOG_ALL may have changed: running rings start or stop marking the log.
        self.set_log_on_vrings();
        Ok(())
    }

    fn set_mem_table(
        &mut self,
        ctx: &[VhostUserMemoryRegion],
        files: Vec<File>,
        _postcopy_listening: Option<bool>,
    ) -> vhost::vhost_user::Result<Option<Vec<VhostUserMemoryRegionBase>>> {
        let regions: Vec<RegionDesc> = ctx.iter().map(desc_of).collect();
        let table = answer(MemoryTable::new(&regions, files).map_err(Error::from))?;
        answer(self.replace_table(Some(table)))?;
        Ok(None)
    }

    fn set_vring_num(&mut self, index: u32, num: u32) -> vhost::vhost_user::Result<()> {
        let vring = answer(self.stopped_vring(index, "size"))?;
        let size = u16::try_from(num)
            .ok()
            .filter(|s| s.is_power_of_two() && *s <= MAX_QUEUE_SIZE)
            .ok_or(Error::VringSize {
                index,
                num,
                max: MAX_QUEUE_SIZE,
            });
        let size = answer(size)?;
        answer(
            lock(vring)
                .queue
                .set_size(size)
                .map_err(|source| Error::Queue { index, source }),
        )
    }

    fn set_vring_addr(
        &mut self,
        index: u32,
        flags: VhostUserVringAddrFlags,
        descriptor: u64,
        used: u64,
        available: u64,
        log: u64,
    ) -> vhost::vhost_user::Result<()> {
        let addrs = VringAddrs {
            desc: descriptor,
            avail: available,
            used,
            log: flags
                .contains(VhostUserVringAddrFlags::VHOST_VRING_F_LOG)
                .then_some(log),
        };
        let (i, vring) = answer(self.vring(index))?;
        let mut v = lock(vring);
        // A started ring takes the same rings again with logging switched on or off: that is
        // how a frontend (QEMU) starts and ends migration on a running device. Moving the
        // rings needs the ring stopped.
        let same_rings = v
            .addrs
            .is_some_and(|a| (a.desc, a.avail, a.used) == (descriptor, available, used));
        if self.workers[i].is_some() && !same_rings {
            return refuse(Error::Started {
                index,
                what: "addresses",
            });
        }
        v.addrs = Some(addrs);
        Ok(())
    }

    fn set_vring_base(&mut self, index: u32, base: u32) -> vhost::vhost_user::Result<()> {
        let vring = answer(self.stopped_vring(index, "base"))?;
        let base = answer(u16::try_from(base).map_err(|_| Error::BaseTooLarge { index, base }))?;
        lock(vring).base = base;
        Ok(())
    }

    fn get_vring_base(&mut self, index: u32) -> vhost::vhost_user::Result<VhostUserVringState> {
        let (i, vring) = match self.vring(index) {
            Ok((i, vring)) => (i, vring.clone()),
            Err(e) => return self.refuse_unanswered(e),
        };
        // Stopping the thread waits for its batch; after it every chain taken is used.
        self.workers[i] = None;
        let mut v = lock(&vring);
        let at = if v.queue.ready() {
            v.queue.next_avail()
        } else {
            v.base
        };
        v.queue.disable();
        v.base = at;
        v.mem = None;
        Ok(VhostUserVringState::new(index, u32::from(at)))
    }

    fn set_vring_kick(&mut self, index: u8, fd: Option<File>) -> vhost::vhost_user::Result<()> {
        let index32 = u32::from(index);
        let (i, vring) = answer(self.vring(index32))?;
        let vring = vring.clone();
        let kick = answer(fd.ok_or(Error::NoKick { index: index32 }))?;
        answer(eventfd(&kick, "kick", index32))?;
        self.workers[i] = None;
        {
            // A new kick for a started ring: it goes on from where it is, rather than from
            // the base it started at (which would serve every chain since again).
            let mut v = lock(&vring);
            if v.queue.ready() {
                v.base = v.queue.next_avail();
            }
        }
        let table = answer(self.table.as_ref().ok_or(Error::NoMemory {
            what: "starting a vring",
        }))?;
        {
            let mut v = lock(&vring);
            let base = v.base;
            answer(self.start_queue(index32, &mut v, table, base))?;
            // With protocol features the frontend enables rings itself.
            v.enabled = self.acked_features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
                == 0
                || v.enabled;
        }
        let worker = answer(
            Worker::start(i, vring, kick, self.disk.clone()).map_err(|source| Error::Io {
                what: "starting the vring's thread",
                source,
            }),
        )?;
        self.workers[i] = Some(worker);
        Ok(())
    }

    fn set_vring_call(&mut self, index: u8, fd: Option<File>) -> vhost::vhost_user::Result<()> {
        let index32 = u32::from(index);
        let (_, vring) = answer(self.vring(index32))?;
        if let Some(f) = &fd {
            answer(eventfd(f, "call", index32))?;
        }
        lock(vring).call = fd;
        Ok(())
    }

    fn set_vring_err(&mut self, index: u8, fd: Option<File>) -> vhost::vhost_user::Result<()> {
        let index32 = u32::from(index);
        let (_, vring) = answer(self.vring(index32))?;
        if let Some(f) = &fd {
            answer(eventfd(f, "err", index32))?;
        }
        lock(vring).err = fd;
        Ok(())
    }

    fn get_protocol_features(&mut self) -> vhost::vhost_user::Result<VhostUserProtocolFeatures> {
        Ok(Self::offered_protocol_features())
    }

    fn set_protocol_features(&mut self, features: u64) -> vhost::vhost_user::Result<()> {
        let offered =
            Self::offered_protocol_features().bits() | VhostUserProtocolFeatures::REPLY_ACK.bits();
        let extra = features & !offered;
        if extra != 0 {
            return refuse(Error::FeaturesNotOffered {
                asked: features,
                extra,
            });
        }
        self.acked_protocol = features;
        Ok(())
    }

    fn get_queue_num(&mut self) -> vhost::vhost_user::Result<u64> {
        Ok(u64::from(self.queues))
    }

    fn set_vring_enable(&mut self, index: u32, enable: bool) -> vhost::vhost_user::Result<()> {
        let (i, vring) = answer(self.vring(index))?;
        lock(vring).enabled = enable;
        if let Some(worker) = &self.workers[i] {
            worker.wake();
        }
        Ok(())
    }

    fn get_config(
        &mut self,
        offset: u32,
        size: u32,
        _flags: VhostUserConfigFlags,
    ) -> vhost::vhost_user::Result<Vec<u8>> {
        let config = self.disk.config(self.queues);
        let bytes = config.as_bytes();
        let range = usize::try_from(offset)
            .ok()
            .zip(usize::try_from(size).ok())
            .and_then(|(o, s)| Some(o..o.checked_add(s)?))
            .filter(|r| r.end <= bytes.len());
        match range {
            Some(r) => Ok(bytes[r].to_vec()),
            None => refuse(Error::BadConfigAccess {
                offset,
                size,
                len: bytes.len(),
            }),
        }
    }

    fn set_config(
        &mut self,
        offset: u32,
        buf: &[u8],
        _flags: VhostUserConfigFlags,
    ) -> vhost::vhost_user::Result<()> {
        refuse(Error::BadConfigAccess {
            offset,
            size: u32::try_from(buf.len()).unwrap_or(u32::MAX),
            len: self.disk.config(self.queues).as_bytes().len(),
        })
    }

    fn set_gpu_socket(&mut self, _gpu_backend: GpuBackend) -> vhost::vhost_user::Result<()> {
        refuse(Error::Unsupported("GPU_SET_SOCKET"))
    }

    fn get_shared_object(&mut self, _uuid: VhostUserSharedMsg) -> vhost::vhost_user::Result<File> {
        refuse(Error::Unsupported("GET_SHARED_OBJECT"))
    }

    fn get_inflight_fd(
        &mut self,
        _inflight: &VhostUserInflight,
    ) -> vhost::vhost_user::Result<(VhostUserInflight, File)> {
        self.refuse_unanswered(Error::Unsupported("GET_INFLIGHT_FD"))
    }

    fn set_inflight_fd(
        &mut self,
        _inflight: &VhostUserInflight,
        _file: File,
    ) -> vhost::vhost_user::Result<()> {
        refuse(Error::Unsupported("SET_INFLIGHT_FD"))
    }

    fn get_max_mem_slots(&mut self) -> vhost::vhost_user::Result<u64> {
        Ok(MAX_MEM_SLOTS as u64)
    }

    fn add_mem_region(
        &mut self,
        region: &VhostUserSingleMemoryRegion,
        fd: File,
        _postcopy_listening: Option<bool>,
    ) -> vhost::vhost_user::Result<Option<VhostUserMemoryRegionBase>> {
        let table = match &self.table {
            Some(current) => current.with_region(desc_of(region), fd, MAX_MEM_SLOTS),
            None => MemoryTable::new(&[desc_of(region)], vec![fd]),
        };
        let table = answer(table.map_err(Error::from))?;
        answer(self.replace_table(Some(table)))?;
        Ok(None)
    }

    fn remove_mem_region(
        &mut self,
        region: &VhostUserSingleMemoryRegion,
    ) -> vhost::vhost_user::Result<()> {
        let current = answer(self.table.as_ref().ok_or(Error::NoMemory {
            what: "REM_MEM_REG",
        }))?;
        let table = answer(
            current
                .without_region(region.guest_phys_addr, region.memory_size)
                .map_err(Error::from),
        )?;
        answer(self.replace_table(table))
    }

    fn set_device_state_fd(
        &mut self,
        _direction: VhostTransferStateDirection,
        _phase: VhostTransferStatePhase,
        _fd: File,
    ) -> vhost::vhost_user::Result<Option<File>> {
        refuse(Error::Unsupported("SET_DEVICE_STATE_FD"))
    }

    fn check_device_state(&mut self) -> vhost::vhost_user::Result<()> {
        refuse(Error::Unsupported("CHECK_DEVICE_STATE"))
    }

    fn get_shmem_config(&mut self) -> vhost::vhost_user::Result<VhostUserShMemConfig> {
        self.refuse_unanswered(Error::Unsupported("GET_SHMEM_CONFIG"))
    }

    fn set_log_base(&mut self, log: &VhostUserLog, file: File) -> vhost::vhost_user::Result<()> {
        let dirty = match DirtyLog::new(file, log.mmap_size, log.mmap_offset) {
            Ok(dirty) => dirty,
            Err(e) => return self.refuse_unanswered(e.into()),
        };
        self.log = Some(Arc::new(dirty));
        self.set_log_on_vrings();
        Ok(())
    }
}

fn desc_of(r: &VhostUserMemoryRegion) -> RegionDesc {
    RegionDesc {
        guest_addr: r.guest_phys_addr,
        size: r.memory_size,
        user_addr: r.user_addr,
        mmap_offset: r.mmap_offset,
    }
}

fn eventfd(file: &File, what: &'static str, index: u32) -> Result<()> {
    match check_eventfd(file) {
        Ok(true) => Ok(()),
        Ok(false) => Err(Error::NotEventfd { what, index }),
        Err(source) => Err(Error::Io {
            what: "inspecting a vring descriptor",
            source,
        }),
    }
}

/// How a connection ended.
#[derive(Debug)]
pub struct Ended {
    /// The protocol error that ended it (`Disconnected` when the frontend hung up).
    pub error: vhost::vhost_user::Error,
    /// Requests the backend refused while it ran.
    pub refused: u64,
}

/// Serves one frontend on `stream` until it disconnects or breaks the protocol; then drops
/// everything it set up ([`BlockBackend::disconnect`]), so that `backend` can serve the next.
pub fn serve_connection(stream: UnixStream, backend: Arc<Mutex<BlockBackend>>) -> Ended {
    let mut handler = BackendReqHandler::from_stream(stream, backend.clone());
    let mut refused = 0;
    let error = loop {
        match handler.handle_request() {
            Ok(()) => {}
            // Our own refusal: answered (with REPLY_ACK) and logged; the connection goes on,
            // unless it was one that `vhost` cannot answer.
            Err(e @ vhost::vhost_user::Error::ReqHandlerError(_)) => {
                refused += 1;
                let hang_up =
                    std::mem::take(&mut backend.lock().unwrap_or_else(|p| p.into_inner()).hang_up);
                if hang_up {
                    break e;
                }
            }
            Err(e) => break e,
        }
    };
    drop(handler);
    backend
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .disconnect();
    Ended { error, refused }
}
