//! The trusted IOMMU: VT-d scalable-mode translation structures in host-donated frames, whose
//! second stage is the TD's own S-EPT (the same table, not a copy), the DMAR entry lifecycle of
//! TDX Connect, IOTLB tracking, and the walker that answers "may this RID/PASID DMA to this IOVA,
//! and where does it land".
//!
//! Formats are Intel VT-d's (Intel Virtualization Technology for Directed I/O, rev 3.x/4.x,
//! chapter 9): a root table indexed by bus, scalable-mode context tables indexed by devfn, a
//! PASID directory and PASID tables per device, and PASID entries with PGTT = second-stage only
//! whose SSPTPTR is the TD's S-EPT root ([`format`]).
//!
//! The lifecycle follows TDX Connect (TDH.DMAR.ADD / BLOCK / REMOVE, TDG.DMAR.ACCEPT, see
//! `tsm-anchors.md` A2 and A7): an entry is *added* by the host with its present bit clear (no
//! DMA), made present when the guest *accepts* it, *blocked* by the host (present bit clear,
//! block epoch recorded) and *removed* only once an IOTLB invalidation retired the block
//! ([`dmar`]). The [`Iommu`] object ([`unit`]) checks everything first and commits after: a
//! failed call writes nothing.
//!
//! [`walk::translate`] is pure: it reads only the tables, as the hardware would, so tests and the
//! firmware use the very code that decides.

mod dmar;
mod error;
pub mod format;
mod host;
pub mod hw;
mod program;
mod reclaim;
mod unit;
pub mod walk;

pub use dmar::{dmar_legality, Binding, DmarLegality, DmarOp, DmarState, Domain};
pub use error::{FrameRole, IommuError};
pub use host::{HostDevice, HostState, HOST_DID, MAX_HOST_DEVICES};
pub use program::FAULT_LOG;
pub use unit::{DmarRequest, Done, Frames, Iommu, Needs, MAX_BINDINGS, MAX_DOMAINS};
pub use walk::{translate, DmaFault, FaultReason, Translation};

use core::fmt;

/// The PCI segment the trusted IOMMU remaps. A VT-d remapping unit serves one segment (its DRHD
/// names it) and indexes its root table by bus alone, so a RID is a complete key only within that
/// segment: DMAR.ADD refuses functions of any other segment rather than alias them onto this one.
pub const SEGMENT: u8 = 0;

/// A PCIe requester id: bus in bits 15:8, device and function (devfn) in bits 7:0.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Rid(u16);

impl Rid {
    /// The requester id with raw value `raw`.
    pub const fn from_raw(raw: u16) -> Rid {
        Rid(raw)
    }

    /// The requester id of `bus:dev.func`; `None` if `dev > 31` or `func > 7`.
    pub const fn new(bus: u8, dev: u8, func: u8) -> Option<Rid> {
        if dev > 31 || func > 7 {
            return None;
        }
        Some(Rid((bus as u16) << 8 | (dev as u16) << 3 | func as u16))
    }

    /// The raw 16-bit value.
    pub const fn raw(self) -> u16 {
        self.0
    }

    /// The bus number: the root-table index.
    pub const fn bus(self) -> u8 {
        (self.0 >> 8) as u8
    }

    /// Device and function: devfn 0..=127 sit in the lower context table, 128..=255 in the upper.
    pub const fn devfn(self) -> u8 {
        self.0 as u8
    }
}

impl fmt::Debug for Rid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Rid({:02x}:{:02x}.{})", self.bus(), self.devfn() >> 3, self.devfn() & 7)
    }
}

/// A process address space id (PCIe PASID TLP prefix): 20 bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pasid(u32);

impl Pasid {
    /// Largest PASID the PCIe prefix can carry.
    pub const MAX: u32 = (1 << 20) - 1;

    /// Types a raw PASID; `None` past 20 bits.
    pub const fn new(raw: u32) -> Option<Pasid> {
        if raw <= Self::MAX {
            Some(Pasid(raw))
        } else {
            None
        }
    }

    /// The raw value.
    pub const fn raw(self) -> u32 {
        self.0
    }
}

/// A VT-d domain id (DID): tags IOTLB and PASID-cache entries. The TSM keeps one DID per TD and
/// one TD per DID, so that invalidating a DID invalidates exactly one TD's translations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DomainId(pub u16);

/// Paging depth of the S-EPT the IOMMU walks, and the VT-d address width it implies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SeptLevels {
    /// 4-level S-EPT (GPAW 48): PASID entry AW = 010b, 48-bit input addresses.
    Four,
    /// 5-level S-EPT (GPAW 52): PASID entry AW = 011b, 57-bit input addresses.
    Five,
}

impl SeptLevels {
    /// The depth for an S-EPT whose root table sits at `root_level` (3 = PML4, 4 = PML5), as
    /// [`crate::td::Td::root_level`] reports it.
    pub const fn from_root_level(root_level: u8) -> Option<SeptLevels> {
        match root_level {
            3 => Some(SeptLevels::Four),
            4 => Some(SeptLevels::Five),
            _ => None,
        }
    }

    /// The S-EPT level of the root table.
    pub const fn root_level(self) -> u8 {
        match self {
            SeptLevels::Four => 3,
            SeptLevels::Five => 4,
        }
    }

    /// The PASID entry's AW field (VT-d §9.6: 010b = 48-bit, 011b = 57-bit AGAW).
    pub const fn aw(self) -> u64 {
        match self {
            SeptLevels::Four => 0b010,
            SeptLevels::Five => 0b011,
        }
    }

    /// The depth an AW field encodes.
    pub const fn from_aw(aw: u64) -> Option<SeptLevels> {
        match aw {
            0b010 => Some(SeptLevels::Four),
            0b011 => Some(SeptLevels::Five),
            _ => None,
        }
    }

    /// Input-address width in bits (48 or 57).
    pub const fn input_bits(self) -> u32 {
        match self {
            SeptLevels::Four => 48,
            SeptLevels::Five => 57,
        }
    }

    /// The TD's GPA width for this depth (48 or 52); its top bit is the shared bit, so private
    /// GPAs lie below `1 << (gpaw - 1)`.
    pub const fn gpaw(self) -> u32 {
        match self {
            SeptLevels::Four => 48,
            SeptLevels::Five => 52,
        }
    }
}

/// Names one DMAR entry: a requester id, and a PASID for PASID-granular (Scalable-IOV) entries.
/// Requests without a PASID use the context entry's RID_PASID, which the TSM keeps at 0, so
/// PASID 0 itself is reserved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DmarKey {
    /// The requester id.
    pub rid: Rid,
    /// The PASID, or `None` for requests without PASID.
    pub pasid: Option<Pasid>,
}

impl DmarKey {
    /// The PASID-table slot the entry uses: RID_PASID (0) for `None`.
    pub const fn table_pasid(self) -> u32 {
        match self.pasid {
            Some(p) => p.raw(),
            None => format::RID_PASID,
        }
    }
}
