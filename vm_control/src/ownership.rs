// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Which client owns which registered region. A client can only name its own regions; any
//! other id, whether it exists or not, gets the same answer, so ids leak nothing.

use std::collections::HashMap;

use hypervisor::MemSlot;

use crate::server::ClientId;
use crate::{VmMemoryError, VmMemoryRegionId};

/// One registered region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Owned {
    pub owner: ClientId,
    pub slot: MemSlot,
    pub arena: bool,
}

/// Registered regions by id. Ids are never reused while the server lives.
#[derive(Debug, Default)]
pub(crate) struct Regions {
    map: HashMap<VmMemoryRegionId, Owned>,
    next: u64,
}

impl Regions {
    pub fn insert(&mut self, owner: ClientId, slot: MemSlot, arena: bool) -> VmMemoryRegionId {
        self.next += 1;
        let id = VmMemoryRegionId(self.next);
        self.map.insert(id, Owned { owner, slot, arena });
        id
    }

    /// The region `id` if `client` owns it.
    pub fn get(&self, client: ClientId, id: VmMemoryRegionId) -> Result<Owned, VmMemoryError> {
        match self.map.get(&id) {
            Some(owned) if owned.owner == client => Ok(*owned),
            _ => Err(VmMemoryError::UnknownRegion { id }),
        }
    }

    /// Forgets the region `id` if `client` owns it.
    pub fn take(&mut self, client: ClientId, id: VmMemoryRegionId) -> Result<Owned, VmMemoryError> {
        let owned = self.get(client, id)?;
        self.map.remove(&id);
        Ok(owned)
    }

    /// Forgets every region `client` owns and returns them.
    pub fn take_all(&mut self, client: ClientId) -> Vec<Owned> {
        let ids: Vec<VmMemoryRegionId> = self
            .map
            .iter()
            .filter(|(_, owned)| owned.owner == client)
            .map(|(id, _)| *id)
            .collect();
        ids.into_iter()
            .filter_map(|id| self.map.remove(&id))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_owner_can_name_a_region() {
        let (a, b) = (ClientId::for_tests(1), ClientId::for_tests(2));
        let mut r = Regions::default();
        let id = r.insert(a, 5, true);
        assert_eq!(r.get(a, id).unwrap().slot, 5);
        let unknown = VmMemoryRegionId(999);
        // Another client's id and a made-up one get the same answer.
        assert_eq!(r.get(b, id), Err(VmMemoryError::UnknownRegion { id }));
        assert_eq!(
            r.get(a, unknown),
            Err(VmMemoryError::UnknownRegion { id: unknown })
        );
        assert!(r.take(b, id).is_err());
        assert_eq!(r.take(a, id).unwrap().slot, 5);
        assert!(r.get(a, id).is_err(), "gone after take");
    }

    #[test]
    fn ids_are_never_reused_and_take_all_is_per_client() {
        let (a, b) = (ClientId::for_tests(1), ClientId::for_tests(2));
        let mut r = Regions::default();
        let first = r.insert(a, 1, false);
        r.take(a, first).unwrap();
        let second = r.insert(a, 1, false);
        assert_ne!(first, second);
        r.insert(b, 2, false);
        r.insert(a, 3, true);
        let mut gone: Vec<MemSlot> = r.take_all(a).iter().map(|o| o.slot).collect();
        gone.sort();
        assert_eq!(gone, [1, 3]);
        assert_eq!(r.len(), 1);
        assert!(r.take_all(a).is_empty());
    }
}
