// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Which client owns which registered region. A client can only name its own regions; any
//! other id, whether it exists or not, gets the same answer, so ids leak nothing.
//!
//! Ids are drawn from a 64-bit counter that is never reset or wrapped, so an id names one
//! registration forever: once it is unregistered, the id names nothing, even when its slot
//! number is reused by another registration, of this client or another.

use std::collections::HashMap;

use hypervisor::MemSlot;

use crate::{VmMemoryError, VmMemoryRegionId};

/// A connection the server serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientId(u64);

impl ClientId {
    /// The `n`th client (the server numbers them).
    pub(crate) fn new(n: u64) -> ClientId {
        ClientId(n)
    }

    /// Its number, for names and logs.
    pub(crate) fn number(self) -> u64 {
        self.0
    }
}

/// One registered region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Owned {
    pub owner: ClientId,
    pub slot: MemSlot,
    pub arena: bool,
    /// Its size in bytes, counted against the owner's quota.
    pub size: u64,
}

/// How much a client has registered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Usage {
    pub regions: usize,
    pub bytes: u64,
}

/// Registered regions by id.
#[derive(Debug, Default)]
pub(crate) struct Regions {
    map: HashMap<VmMemoryRegionId, Owned>,
    usage: HashMap<ClientId, Usage>,
    next: u64,
}

impl Regions {
    pub fn insert(&mut self, owned: Owned) -> VmMemoryRegionId {
        self.next += 1;
        let id = VmMemoryRegionId(self.next);
        let usage = self.usage.entry(owned.owner).or_default();
        usage.regions += 1;
        usage.bytes += owned.size;
        self.map.insert(id, owned);
        id
    }

    /// The region `id` if `client` owns it.
    pub fn get(&self, client: ClientId, id: VmMemoryRegionId) -> Result<Owned, VmMemoryError> {
        match self.map.get(&id) {
            Some(owned) if owned.owner == client => Ok(*owned),
            _ => Err(VmMemoryError::UnknownRegion { id }),
        }
    }

    /// Forgets the region `id` if `client` owns it: once its slot is really gone.
    pub fn remove(
        &mut self,
        client: ClientId,
        id: VmMemoryRegionId,
    ) -> Result<Owned, VmMemoryError> {
        let owned = self.get(client, id)?;
        self.map.remove(&id);
        self.forget_usage(&owned);
        Ok(owned)
    }

    /// Forgets every region `client` owns and returns them.
    pub fn remove_all(&mut self, client: ClientId) -> Vec<Owned> {
        let ids: Vec<VmMemoryRegionId> = self
            .map
            .iter()
            .filter(|(_, owned)| owned.owner == client)
            .map(|(id, _)| *id)
            .collect();
        self.usage.remove(&client);
        ids.into_iter()
            .filter_map(|id| self.map.remove(&id))
            .collect()
    }

    /// What `client` has registered.
    pub fn usage(&self, client: ClientId) -> Usage {
        self.usage.get(&client).copied().unwrap_or_default()
    }

    fn forget_usage(&mut self, owned: &Owned) {
        if let Some(usage) = self.usage.get_mut(&owned.owner) {
            usage.regions -= 1;
            usage.bytes -= owned.size;
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owned(owner: ClientId, slot: MemSlot, size: u64) -> Owned {
        Owned {
            owner,
            slot,
            arena: false,
            size,
        }
    }

    #[test]
    fn only_the_owner_can_name_a_region() {
        let (a, b) = (ClientId::new(1), ClientId::new(2));
        let mut r = Regions::default();
        let id = r.insert(owned(a, 5, 4096));
        assert_eq!(r.get(a, id).unwrap().slot, 5);
        let unknown = VmMemoryRegionId(999);
        // Another client's id and a made-up one get the same answer.
        assert_eq!(r.get(b, id), Err(VmMemoryError::UnknownRegion { id }));
        assert_eq!(
            r.get(a, unknown),
            Err(VmMemoryError::UnknownRegion { id: unknown })
        );
        assert!(r.remove(b, id).is_err());
        assert_eq!(r.remove(a, id).unwrap().slot, 5);
        assert!(r.get(a, id).is_err(), "gone after remove");
    }

    #[test]
    fn ids_are_never_reused_and_usage_is_per_client() {
        let (a, b) = (ClientId::new(1), ClientId::new(2));
        let mut r = Regions::default();
        let first = r.insert(owned(a, 1, 4096));
        r.remove(a, first).unwrap();
        // The same slot number again: a new id, and the old one names nothing.
        let second = r.insert(owned(b, 1, 4096));
        assert_ne!(first, second);
        assert!(r.get(a, first).is_err() && r.get(b, first).is_err());
        r.insert(owned(a, 2, 8192));
        r.insert(owned(a, 3, 4096));
        assert_eq!(
            r.usage(a),
            Usage {
                regions: 2,
                bytes: 12288
            }
        );
        assert_eq!(r.usage(b).regions, 1);
        let mut gone: Vec<MemSlot> = r.remove_all(a).iter().map(|o| o.slot).collect();
        gone.sort();
        assert_eq!(gone, [2, 3]);
        assert_eq!(r.usage(a), Usage::default());
        assert_eq!(r.len(), 1);
        assert!(r.remove_all(a).is_empty());
    }
}
