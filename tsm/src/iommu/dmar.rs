//! The DMAR entry lifecycle (TDX Connect TDH.DMAR.ADD / BLOCK / REMOVE and TDG.DMAR.ACCEPT),
//! its legality table, and per-domain IOTLB tracking.
//!
//! ```text
//!   install (host)        accept (guest)          block (host)              remove (host)
//! ─────────────────► ADDED ───────────► ACCEPTED ─────────────► BLOCKED ─────────────────► gone
//!                      │   P = 0            P = 1     P = 0, bepoch = IOTLB epoch   after an
//!                      └──────────────── block ──────────►                          invalidation
//! ```

use crate::addr::Pfn;
use crate::td::Tracker;

use super::{DmarKey, DomainId, IommuError, SeptLevels};

/// Where a DMAR entry stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DmarState {
    /// Proposed by the host: the PASID entry is written with P = 0, so no DMA passes.
    Added,
    /// Accepted by the guest: P = 1, DMA to the TD's accepted private memory passes.
    Accepted,
    /// Blocked by the host: P = 0 again; the IOTLB epoch at the block is recorded, and the entry
    /// may be removed once an invalidation retired it.
    Blocked,
}

/// The operations on a DMAR entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DmarOp {
    /// TDG.DMAR.ACCEPT.
    Accept,
    /// TDH.DMAR.BLOCK.
    Block,
    /// TDH.DMAR.REMOVE.
    Remove,
}

/// What an operation may do with the entry it found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DmarLegality {
    /// Go on with the remaining checks.
    Proceed,
    /// Nothing to do: a warning, nothing changes.
    AlreadyDone,
    /// Refuse with this error.
    Refuse(IommuError),
}

/// The legality of `op` on an entry in `state`: the one table of DMAR rules.
pub const fn dmar_legality(op: DmarOp, state: DmarState) -> DmarLegality {
    use DmarLegality::*;
    use DmarOp as O;
    use DmarState as S;
    match (op, state) {
        (O::Accept, S::Added) => Proceed,
        (O::Accept, S::Accepted) => AlreadyDone,
        (O::Accept, S::Blocked) => Refuse(IommuError::EntryBlocked),
        (O::Block, S::Added | S::Accepted) => Proceed,
        (O::Block, S::Blocked) => AlreadyDone,
        (O::Remove, S::Blocked) => Proceed,
        (O::Remove, S::Added | S::Accepted) => Refuse(IommuError::NotBlocked),
    }
}

/// One DMAR entry the TSM installed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Binding {
    /// Its RID/PASID.
    pub key: DmarKey,
    /// The TDR of the TD whose S-EPT it translates through.
    pub owner: Pfn,
    /// Its domain id.
    pub domain: DomainId,
    /// Lifecycle state.
    pub state: DmarState,
    /// For `Blocked`: the domain's IOTLB epoch at the block.
    pub bepoch: u64,
    /// The PASID table holding the entry.
    pub table: Pfn,
    /// The entry's index in that table.
    pub index: usize,
}

/// A domain: one TD's S-EPT as the IOMMU sees it, and its IOTLB tracking.
///
/// IOTLB tracking uses two clocks. The domain's own IOTLB [`Tracker`] advances at every
/// invalidation of the domain: a DMAR block made in IOTLB epoch `b` is retired once the epoch
/// passed `b`. S-EPT blocks carry the TD's *CPU* epoch (the PAMT's one block-epoch word), so the
/// domain also records the CPU epoch at its latest invalidation: an S-EPT block made in CPU epoch
/// `b` is retired for the IOTLB once an invalidation ran in a later CPU epoch, that is after the
/// TRACK that followed the block. A block is retired when both the CPU TLB and the IOTLB
/// retired it ([`super::Iommu::is_tracked`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Domain {
    /// Its DID.
    pub did: DomainId,
    /// The owning TD's TDR.
    pub owner: Pfn,
    /// The TD's S-EPT root: every PASID entry of the domain points at it.
    pub sept_root: Pfn,
    /// The S-EPT's depth.
    pub levels: SeptLevels,
    /// IOTLB epochs of this domain.
    pub iotlb: Tracker,
    /// The TD's CPU epoch at the latest invalidation (at creation: the epoch then, since the
    /// IOTLB held nothing of the TD before).
    pub flushed_cpu_epoch: u64,
    /// DMAR entries in the domain (any state).
    pub entries: u32,
}

impl Domain {
    /// True if an S-EPT block made in CPU epoch `bepoch` can no longer sit in this domain's
    /// IOTLB entries.
    pub const fn sept_block_tracked(&self, bepoch: u64) -> bool {
        self.flushed_cpu_epoch > bepoch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [DmarState; 3] = [DmarState::Added, DmarState::Accepted, DmarState::Blocked];

    #[test]
    fn only_blocked_entries_are_removed() {
        for s in ALL {
            let ok = dmar_legality(DmarOp::Remove, s) == DmarLegality::Proceed;
            assert_eq!(ok, s == DmarState::Blocked, "{s:?}");
        }
    }

    #[test]
    fn accept_is_idempotent_and_refused_once_blocked() {
        assert_eq!(dmar_legality(DmarOp::Accept, DmarState::Added), DmarLegality::Proceed);
        assert_eq!(dmar_legality(DmarOp::Accept, DmarState::Accepted), DmarLegality::AlreadyDone);
        assert_eq!(dmar_legality(DmarOp::Accept, DmarState::Blocked), DmarLegality::Refuse(IommuError::EntryBlocked));
        assert_eq!(dmar_legality(DmarOp::Block, DmarState::Blocked), DmarLegality::AlreadyDone);
    }

    #[test]
    fn sept_blocks_retire_only_after_a_later_epoch_flush() {
        let mut d = Domain {
            did: DomainId(1),
            owner: Pfn::ZERO,
            sept_root: Pfn::ZERO,
            levels: SeptLevels::Four,
            iotlb: Tracker::default(),
            flushed_cpu_epoch: 3,
            entries: 1,
        };
        assert!(d.sept_block_tracked(2));
        assert!(!d.sept_block_tracked(3), "a flush in the block's own epoch may precede it");
        d.flushed_cpu_epoch = 4;
        assert!(d.sept_block_tracked(3));
    }
}
