// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! [`ClientPolicy`]: what one client may register, decided by the VMM when it adds the client.

use vm_memory::GuestAddress;

use crate::ownership::Usage;
use crate::VmMemoryError;

/// Regions a client may hold at once unless its policy says otherwise: a device needs one
/// or two, and KVM's 32,764 slots are shared by every client.
pub const DEFAULT_MAX_REGIONS: usize = 16;
/// Bytes a client may hold registered at once unless its policy says otherwise. KVM keeps
/// per-page metadata for every slot (about 2 bytes of kernel memory a 4 KiB page), so this
/// also bounds what one client can make the kernel allocate.
pub const DEFAULT_MAX_BYTES: u64 = 16 << 30;

/// What one client may do: the guest-physical ranges it may register memory into, and how
/// many regions and bytes it may hold registered at once. A new policy grants nothing.
///
/// ```
/// use vm_control::ClientPolicy;
/// use vm_memory::GuestAddress;
/// // A pmem device's window of 1 GiB at 4 GiB, in at most two regions.
/// let policy = ClientPolicy::new()
///     .grant(GuestAddress(1 << 32), 1 << 30)
///     .max_regions(2);
/// assert!(policy.allows(GuestAddress(1 << 32), 1 << 30));
/// assert!(!policy.allows(GuestAddress(1 << 32), (1 << 30) + 4096));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientPolicy {
    grants: Vec<(GuestAddress, u64)>,
    max_regions: usize,
    max_bytes: u64,
}

impl Default for ClientPolicy {
    fn default() -> Self {
        ClientPolicy::new()
    }
}

impl ClientPolicy {
    /// No grants, and the default quotas ([`DEFAULT_MAX_REGIONS`], [`DEFAULT_MAX_BYTES`]).
    pub fn new() -> ClientPolicy {
        ClientPolicy {
            grants: Vec::new(),
            max_regions: DEFAULT_MAX_REGIONS,
            max_bytes: DEFAULT_MAX_BYTES,
        }
    }

    /// Lets the client register memory anywhere in `start..start + size`. A grant that
    /// passes the end of the address space is cut at it.
    pub fn grant(mut self, start: GuestAddress, size: u64) -> ClientPolicy {
        let size = size.min(u64::MAX - start.0);
        if size > 0 {
            self.grants.push((start, size));
        }
        self
    }

    /// At most `n` regions registered at once.
    pub fn max_regions(mut self, n: usize) -> ClientPolicy {
        self.max_regions = n;
        self
    }

    /// At most `n` bytes registered at once.
    pub fn max_bytes(mut self, n: u64) -> ClientPolicy {
        self.max_bytes = n;
        self
    }

    /// The ranges granted.
    pub fn grants(&self) -> &[(GuestAddress, u64)] {
        &self.grants
    }

    /// Whether `start..start + size` lies wholly in one grant.
    pub fn allows(&self, start: GuestAddress, size: u64) -> bool {
        let Some(end) = start.0.checked_add(size) else {
            return false;
        };
        self.grants
            .iter()
            .any(|&(g, len)| g <= start && end <= g.0 + len)
    }

    /// Whether any grant of this policy overlaps one of `other`'s.
    pub(crate) fn overlaps(&self, other: &ClientPolicy) -> Option<(GuestAddress, u64)> {
        self.grants.iter().copied().find(|&(a, a_len)| {
            other
                .grants
                .iter()
                .any(|&(b, b_len)| a.0 < b.0 + b_len && b.0 < a.0 + a_len)
        })
    }

    /// Checks a registration of `size` bytes at `gpa` against the grants and, with what the
    /// client holds now (`usage`), against the quotas, before anything is mapped.
    pub(crate) fn check(&self, gpa: u64, size: u64, usage: Usage) -> Result<(), VmMemoryError> {
        if !self.allows(GuestAddress(gpa), size) {
            return Err(VmMemoryError::OutsideGrant { gpa, size });
        }
        if usage.regions >= self.max_regions {
            return Err(VmMemoryError::QuotaExceeded {
                what: "regions".into(),
                limit: self.max_regions as u64,
                held: usage.regions as u64,
                asked: 1,
            });
        }
        if usage.bytes.saturating_add(size) > self.max_bytes {
            return Err(VmMemoryError::QuotaExceeded {
                what: "bytes".into(),
                limit: self.max_bytes,
                held: usage.bytes,
                asked: size,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: u64 = 1 << 30;

    #[test]
    fn grants_hold_whole_ranges_only() {
        let p = ClientPolicy::new()
            .grant(GuestAddress(G), G)
            .grant(GuestAddress(4 * G), G);
        assert!(p.allows(GuestAddress(G), G));
        assert!(p.allows(GuestAddress(G + 4096), 4096));
        // Straddling two grants, or one and a gap, is not inside one grant.
        assert!(!p.allows(GuestAddress(2 * G - 4096), 8192));
        assert!(!p.allows(GuestAddress(0), 4096));
        assert!(!p.allows(GuestAddress(u64::MAX - 10), 100));
        assert!(!ClientPolicy::new().allows(GuestAddress(0), 1));
        // A grant past the top is cut, not wrapped.
        let top = ClientPolicy::new().grant(GuestAddress(u64::MAX - 4095), u64::MAX);
        assert_eq!(top.grants(), [(GuestAddress(u64::MAX - 4095), 4095)]);
        assert!(ClientPolicy::new()
            .grant(GuestAddress(0), 0)
            .grants()
            .is_empty());
    }

    #[test]
    fn quotas_count_regions_and_bytes() {
        let p = ClientPolicy::new()
            .grant(GuestAddress(0), u64::MAX)
            .max_regions(2)
            .max_bytes(3 * 4096);
        let held = |regions, bytes| Usage { regions, bytes };
        p.check(0, 4096, held(1, 4096)).unwrap();
        assert_eq!(
            p.check(0, 4096, held(2, 8192)),
            Err(VmMemoryError::QuotaExceeded {
                what: "regions".into(),
                limit: 2,
                held: 2,
                asked: 1
            })
        );
        assert_eq!(
            p.check(0, 8192, held(1, 8192)),
            Err(VmMemoryError::QuotaExceeded {
                what: "bytes".into(),
                limit: 3 * 4096,
                held: 8192,
                asked: 8192
            })
        );
        assert!(p.check(0, u64::MAX, held(0, u64::MAX)).is_err());
        let narrow = ClientPolicy::new().grant(GuestAddress(G), G);
        assert_eq!(
            narrow.check(0, 4096, Usage::default()),
            Err(VmMemoryError::OutsideGrant { gpa: 0, size: 4096 })
        );
    }

    #[test]
    fn overlapping_grants_are_found() {
        let a = ClientPolicy::new().grant(GuestAddress(G), G);
        let b = ClientPolicy::new().grant(GuestAddress(2 * G - 4096), 4096);
        let c = ClientPolicy::new().grant(GuestAddress(2 * G), G);
        assert_eq!(a.overlaps(&b), Some((GuestAddress(G), G)));
        assert_eq!(a.overlaps(&c), None);
        assert_eq!(ClientPolicy::new().overlaps(&a), None);
    }
}
