//! The IOMMU's leaf error. The ABI leaves map each variant to a status word, with the operand id
//! of the register that named the bad input ([`FrameRole`] says which donated frame it was).

use super::hw::Unsuitable;
use super::DmarState;
use crate::platform::UnitError;

/// Which donated frame an error is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameRole {
    /// The root table (IOMMU.SETUP).
    RootTable = 0,
    /// A scalable-mode context table (one per bus half).
    ContextTable = 1,
    /// A device's PASID directory.
    PasidDirectory = 2,
    /// A PASID table (64 PASIDs of one device).
    PasidTable = 3,
}

impl FrameRole {
    /// The role stored in a table frame's PAMT `level` field.
    pub const fn from_raw(raw: u8) -> Option<FrameRole> {
        match raw {
            0 => Some(FrameRole::RootTable),
            1 => Some(FrameRole::ContextTable),
            2 => Some(FrameRole::PasidDirectory),
            3 => Some(FrameRole::PasidTable),
            _ => None,
        }
    }
}

/// Every way an IOMMU operation can fail; each changes nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IommuError {
    /// A donated frame is missing: [`super::Iommu::needs`] said the call needs it.
    FrameMissing(FrameRole),
    /// A donated frame is not convertible memory.
    FrameNotConvertible(FrameRole),
    /// A donated frame is not free in the PAMT.
    FrameNotFree(FrameRole),
    /// The same frame was donated for two roles.
    FrameDuplicate(FrameRole),
    /// PASID 0 is RID_PASID, the slot of requests without PASID; name it with `pasid: None`.
    PasidReserved,
    /// The PASID is beyond the one-frame PASID directory (PASIDs below 32768).
    PasidOutOfRange,
    /// The function is on another PCI segment than the one the unit remaps ([`super::SEGMENT`]).
    SegmentNotServed,
    /// DID 0 is reserved.
    DomainIdInvalid,
    /// The S-EPT root is not a TDCS page of the owning TD, or the owner is not a TDR.
    SeptRootInvalid,
    /// The DID already tags another TD's translations.
    DomainInUse,
    /// The TD already has translations under another DID.
    DomainMismatch,
    /// No domain slot left.
    DomainsExhausted,
    /// No DMAR entry slot left.
    BindingsExhausted,
    /// A DMAR entry already exists for this RID/PASID, in this state.
    EntryInUse(DmarState),
    /// No DMAR entry for this RID/PASID.
    EntryNotFound,
    /// The function is in the host domain (attached, or detached with the invalidation not yet
    /// confirmed): it cannot have a DMAR entry until SEAMLESS.IOMMU.HOST.DETACH completed.
    HostDevice,
    /// The function already has DMAR entries: a TD's device is never in the host domain.
    NotHostDevice,
    /// No host device slot left.
    HostDevicesExhausted,
    /// The platform keeps no host map the unit could walk (no host world), or its root is a
    /// frame the host could write.
    NoHostMap,
    /// The DMAR entry belongs to another TD.
    NotOwner,
    /// The DMAR entry is blocked: it can only be removed.
    EntryBlocked,
    /// The DMAR entry must be blocked first.
    NotBlocked,
    /// The block has not been retired by an IOTLB invalidation since.
    TrackingNotDone,
    /// No domain with this DID.
    DomainNotFound,
    /// DMAR entries still exist: the IOMMU cannot be torn down.
    EntriesExist,
    /// The IOMMU was torn down (or never set up).
    NotSetUp,
    /// The IOMMU's tables disagree with its bookkeeping.
    Corrupt,
    /// The TD's S-EPT depth is not one the unit walks: its CAP.SAGAW (this value) lacks the
    /// width (QEMU's intel-iommu: 39 and 48 bits, so no GPAW-52 TD can share its S-EPT).
    WidthUnsupported {
        /// CAP.SAGAW.
        sagaw: u8,
    },
    /// The unit lacks a capability the TSM needs.
    Unsuitable(Unsuitable),
    /// The unit is absent or did not complete a command.
    Unit(UnitError),
}
