//! The DMA remapping walk: root table → context entry → PASID directory → PASID entry → the TD's
//! S-EPT, as a scalable-mode VT-d unit performs it for an untranslated request (VT-d §3.6 and the
//! fault conditions of §7.2.3), plus the TSM's rule that DMA reaches only private memory the
//! guest accepted.
//!
//! The walk reads only the tables, never the TSM's bookkeeping, and every pointer is checked
//! against [`PhysMem::contains`] before it is followed: it is total over arbitrary memory
//! contents (a property test feeds it random bits) and can run in the firmware unchanged.

use crate::addr::{HostPhysAddr, PageSize, Pfn};
use crate::platform::PhysMem;
use crate::sept::{self, SeptEntry, SeptState};

use super::format::{
    root_word, ContextEntry, PasidDirEntry, PasidEntry, RootHalf, CONTEXT_ENTRIES, CONTEXT_WORDS,
    PASID_DIR_ENTRIES_PER_FRAME, PASID_TABLE_ENTRIES, PASID_WORDS,
};
use super::{DomainId, Pasid, Rid};

/// Where a permitted DMA lands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    /// The host physical address of the byte at the IOVA.
    pub hpa: HostPhysAddr,
    /// The size of the S-EPT leaf that maps it.
    pub page_size: PageSize,
    /// The domain id the translation is tagged with in the IOTLB.
    pub domain: DomainId,
}

/// Why a DMA request was refused, in VT-d fault-reason terms (§7.2.3, scalable-mode fault
/// conditions; [`FaultReason::code`] gives the 8-bit code the fault record would carry).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultReason {
    /// The root table is not memory the platform can read (0x30, invalid root-table address).
    RootTableInvalid,
    /// The root entry's LP/UP for this devfn is clear (0x39).
    RootNotPresent,
    /// A present root entry has a reserved field set (0x3A).
    RootReserved,
    /// The context-table pointer is not readable memory (0x40).
    ContextAccess,
    /// The context entry's P is clear (0x41).
    ContextNotPresent,
    /// A present context entry has a reserved field set (0x42).
    ContextReserved,
    /// A request with PASID and PASIDE clear (0x45).
    PasidDisabled,
    /// The PASID lies beyond the directory PDTS describes (0x46).
    PasidTooLarge,
    /// A request with PASID carrying the RID_PASID value (0x48): that slot serves requests
    /// without PASID only.
    RidPasidConflict,
    /// The PASID directory is not readable memory (0x50).
    PasidDirAccess,
    /// The PASID directory entry's P is clear (0x51).
    PasidDirNotPresent,
    /// A present PASID directory entry has a reserved field set (0x52).
    PasidDirReserved,
    /// The PASID table is not readable memory (0x58).
    PasidTableAccess,
    /// The PASID entry's P is clear: added but not accepted, or blocked (0x59).
    PasidEntryNotPresent,
    /// A present PASID entry has a reserved field set (0x5A).
    PasidEntryReserved,
    /// The PASID entry's PGTT is not second-stage only, or its AW is unsupported (0x5B).
    PasidEntryInvalid,
    /// The IOVA lies above 2^AW - 1 (0x83, address beyond the maximum).
    AddressBeyondWidth,
    /// An entry of the host map (the host domain's second stage) is not present: the frame is
    /// not the host's (0x79, as the unit reports it).
    HostMapNotPresent,
    /// The IOVA has the shared-GPA bit (or a higher one) set: the trusted IOMMU only translates
    /// private GPAs (seamless 0xF1).
    SharedGpa,
    /// The S-EPT root pointer is not readable memory (0x7B, invalid second-stage table pointer).
    SeptRootInvalid,
    /// An S-EPT table pointer is not readable memory (0x78).
    SeptAccess,
    /// An S-EPT entry on the walk is not present (R = W = 0): free, pending, blocked, MMIO
    /// pending or blocked (0x79). The state found is carried.
    SeptNotPresent(SeptState),
    /// The S-EPT entry lacks the permission the request needs (0x79).
    SeptPermission,
    /// An S-EPT entry has a state code the TSM never writes, bits that do not match its state,
    /// or a leaf where none may sit (0x7A).
    SeptReserved,
    /// The S-EPT leaf is present but is not private memory the guest accepted (MMIO_MAPPED):
    /// the trusted IOMMU never lets a device reach another device's MMIO (seamless 0xF0). A VT-d
    /// unit reports the same refusal as a reserved-bit fault (0x0C): the MMIO leaf carries
    /// [`crate::sept::DMA_BLOCK`].
    SeptNotPrivateMemory(SeptState),
}

impl FaultReason {
    /// The 8-bit fault reason (VT-d §7.2.3 values; seamless-only reasons in 0xF0..).
    pub const fn code(self) -> u8 {
        use FaultReason::*;
        match self {
            RootTableInvalid => 0x30,
            RootNotPresent => 0x39,
            RootReserved => 0x3A,
            ContextAccess => 0x40,
            ContextNotPresent => 0x41,
            ContextReserved => 0x42,
            PasidDisabled => 0x45,
            PasidTooLarge => 0x46,
            RidPasidConflict => 0x48,
            PasidDirAccess => 0x50,
            PasidDirNotPresent => 0x51,
            PasidDirReserved => 0x52,
            PasidTableAccess => 0x58,
            PasidEntryNotPresent => 0x59,
            PasidEntryReserved => 0x5A,
            PasidEntryInvalid => 0x5B,
            SeptAccess => 0x78,
            SeptNotPresent(_) | SeptPermission | HostMapNotPresent => 0x79,
            SeptReserved => 0x7A,
            SeptRootInvalid => 0x7B,
            AddressBeyondWidth => 0x83,
            SeptNotPrivateMemory(_) => 0xF0,
            SharedGpa => 0xF1,
        }
    }
}

/// A refused DMA request, as a VT-d fault record would describe it plus the entry found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaFault {
    /// Why.
    pub reason: FaultReason,
    /// The first word of the entry that caused the fault (0 when no entry was read).
    pub entry: u64,
    /// For S-EPT faults, the level of that entry (0 = 4K PTE … 4 = PML5).
    pub sept_level: Option<u8>,
    /// FPD was set on the path: hardware would not record this fault (the request is still
    /// refused).
    pub fault_processing_disabled: bool,
}

impl DmaFault {
    const fn at(reason: FaultReason, entry: u64) -> DmaFault {
        DmaFault { reason, entry, sept_level: None, fault_processing_disabled: false }
    }

    const fn sept(reason: FaultReason, entry: u64, level: u8) -> DmaFault {
        DmaFault { reason, entry, sept_level: Some(level), fault_processing_disabled: false }
    }

    const fn with_fpd(mut self, fpd: bool) -> DmaFault {
        self.fault_processing_disabled = fpd;
        self
    }
}

/// Translates one DMA request of `rid` (with `pasid`, if the request carries one) to `iova`, a
/// write if `write`, through the tables under the root table `root`.
///
/// DMA is allowed only through present root, context, PASID directory and PASID entries down to
/// an S-EPT leaf in state MAPPED: private memory of the bound TD that its guest accepted.
///
/// # Errors
/// A [`DmaFault`] naming the first check that failed, in walk order.
pub fn translate<M: PhysMem>(
    mem: &M,
    root: Pfn,
    rid: Rid,
    pasid: Option<Pasid>,
    iova: u64,
    write: bool,
) -> Result<Translation, DmaFault> {
    if !mem.contains(root) {
        return Err(DmaFault::at(FaultReason::RootTableInvalid, 0));
    }
    // Root entry (§9.2): the half for this devfn.
    let raw = mem.read_u64(root, root_word(rid.bus(), rid.devfn()));
    let half = RootHalf::decode(raw).map_err(|_| DmaFault::at(FaultReason::RootReserved, raw))?;
    if !half.present {
        return Err(DmaFault::at(FaultReason::RootNotPresent, raw));
    }
    if !mem.contains(half.context_table) {
        return Err(DmaFault::at(FaultReason::ContextAccess, raw));
    }

    // Context entry (§9.4).
    let ctx_base = (rid.devfn() as usize % CONTEXT_ENTRIES) * CONTEXT_WORDS;
    let mut cw = [0u64; CONTEXT_WORDS];
    for (i, w) in cw.iter_mut().enumerate() {
        *w = mem.read_u64(half.context_table, ctx_base + i);
    }
    let ctx = ContextEntry::decode(cw).map_err(|_| DmaFault::at(FaultReason::ContextReserved, cw[0]))?;
    if !ctx.present {
        return Err(DmaFault::at(FaultReason::ContextNotPresent, cw[0]));
    }
    let mut fpd = ctx.fpd;
    let table_pasid = match pasid {
        None => super::format::RID_PASID,
        Some(_) if !ctx.pasid_enable => {
            return Err(DmaFault::at(FaultReason::PasidDisabled, cw[0]).with_fpd(fpd));
        }
        Some(p) if p.raw() == super::format::RID_PASID => {
            return Err(DmaFault::at(FaultReason::RidPasidConflict, cw[0]).with_fpd(fpd));
        }
        Some(p) => p.raw(),
    };

    // PASID directory entry (§9.5): PASID[19:6] indexes a directory of 2^(PDTS+7) entries.
    let dir_index = table_pasid >> 6;
    if dir_index >= ctx.pasid_dir_entries() {
        return Err(DmaFault::at(FaultReason::PasidTooLarge, cw[0]).with_fpd(fpd));
    }
    let dir_frame = ctx.pasid_dir.checked_add(u64::from(dir_index) / PASID_DIR_ENTRIES_PER_FRAME as u64);
    let dir_frame = match dir_frame {
        Some(f) if mem.contains(f) => f,
        _ => return Err(DmaFault::at(FaultReason::PasidDirAccess, cw[0]).with_fpd(fpd)),
    };
    let raw = mem.read_u64(dir_frame, dir_index as usize % PASID_DIR_ENTRIES_PER_FRAME);
    let dir = PasidDirEntry::decode(raw).map_err(|_| DmaFault::at(FaultReason::PasidDirReserved, raw).with_fpd(fpd))?;
    fpd |= dir.fpd;
    if !dir.present {
        return Err(DmaFault::at(FaultReason::PasidDirNotPresent, raw).with_fpd(fpd));
    }
    if !mem.contains(dir.pasid_table) {
        return Err(DmaFault::at(FaultReason::PasidTableAccess, raw).with_fpd(fpd));
    }

    // PASID entry (§9.6).
    let base = (table_pasid as usize % PASID_TABLE_ENTRIES) * PASID_WORDS;
    let mut pw = [0u64; PASID_WORDS];
    for (i, w) in pw.iter_mut().enumerate() {
        *w = mem.read_u64(dir.pasid_table, base + i);
    }
    let pe = PasidEntry::decode(&pw).map_err(|_| DmaFault::at(FaultReason::PasidEntryReserved, pw[0]).with_fpd(fpd))?;
    fpd |= pe.fpd;
    if !pe.present {
        return Err(DmaFault::at(FaultReason::PasidEntryNotPresent, pw[0]).with_fpd(fpd));
    }
    let levels = match pe.levels() {
        Some(l) => l,
        None => return Err(DmaFault::at(FaultReason::PasidEntryInvalid, pw[0]).with_fpd(fpd)),
    };
    if iova >> levels.input_bits() != 0 {
        return Err(DmaFault::at(FaultReason::AddressBeyondWidth, pw[0]).with_fpd(fpd));
    }
    if !mem.contains(pe.sept_root) {
        return Err(DmaFault::at(FaultReason::SeptRootInvalid, pw[0]).with_fpd(fpd));
    }
    if pe.did == super::HOST_DID {
        // The host domain: IOVA = host physical address, through the platform's host map.
        return walk_host_map(mem, pe.sept_root, levels.root_level(), iova, write).map_err(|f| f.with_fpd(fpd));
    }
    if iova >> (levels.gpaw() - 1) != 0 {
        return Err(DmaFault::at(FaultReason::SharedGpa, pw[0]).with_fpd(fpd));
    }
    walk_sept(mem, pe.sept_root, levels.root_level(), iova, write, pe.did).map_err(|f| f.with_fpd(fpd))
}

const R: u64 = 1;
const W: u64 = 1 << 1;
const PS: u64 = 1 << 7;
/// Address bits of a second-stage entry below 2^48.
const SL_ADDR: u64 = 0x0000_FFFF_FFFF_F000;

/// The second-stage walk over the host map: a plain VT-d second-stage table (R, W, PS for 2 MiB
/// and 1 GiB leaves), as the unit walks it; the TSM's S-EPT states do not apply.
fn walk_host_map<M: PhysMem>(
    mem: &M,
    root: Pfn,
    root_level: u8,
    iova: u64,
    write: bool,
) -> Result<Translation, DmaFault> {
    let need = if write { W } else { R };
    let mut table = root;
    let mut level = root_level;
    loop {
        let raw = mem.read_u64(table, ((iova >> (12 + 9 * u32::from(level))) & 511) as usize);
        if raw & (R | W) == 0 {
            return Err(DmaFault::sept(FaultReason::HostMapNotPresent, raw, level));
        }
        if raw & need == 0 {
            return Err(DmaFault::sept(FaultReason::SeptPermission, raw, level));
        }
        let leaf = level == 0 || (raw & PS != 0 && level <= 2);
        if raw & PS != 0 && !leaf {
            return Err(DmaFault::sept(FaultReason::SeptReserved, raw, level));
        }
        let next = Pfn::new((raw & SL_ADDR) >> 12).ok_or(DmaFault::sept(FaultReason::SeptReserved, raw, level))?;
        if leaf {
            let page_size = match PageSize::from_level(level) {
                Some(s) => s,
                None => return Err(DmaFault::sept(FaultReason::SeptReserved, raw, level)),
            };
            let hpa = (raw & SL_ADDR & !(page_size.bytes() - 1)) | (iova & (page_size.bytes() - 1));
            let hpa = HostPhysAddr::new(hpa).ok_or(DmaFault::sept(FaultReason::SeptReserved, raw, level))?;
            return Ok(Translation { hpa, page_size, domain: super::HOST_DID });
        }
        if !mem.contains(next) {
            return Err(DmaFault::sept(FaultReason::SeptAccess, raw, level));
        }
        table = next;
        level -= 1;
    }
}

/// The second-stage walk over the S-EPT (EPT format, which VT-d second-stage tables share):
/// per entry, present (R or W), then the permission the request needs, then the exact encoding
/// the TSM writes for the entry's state; a leaf must be MAPPED.
fn walk_sept<M: PhysMem>(
    mem: &M,
    root: Pfn,
    root_level: u8,
    iova: u64,
    write: bool,
    domain: DomainId,
) -> Result<Translation, DmaFault> {
    let gpa = crate::addr::GuestPhysAddr::new(iova).ok_or(DmaFault::at(FaultReason::AddressBeyondWidth, 0))?;
    let need = if write { W } else { R };
    let mut table = root;
    let mut level = root_level;
    loop {
        let raw = mem.read_u64(table, sept::index(gpa, level));
        let entry = SeptEntry::decode(raw).ok_or(DmaFault::sept(FaultReason::SeptReserved, raw, level))?;
        let state = entry.state();
        if raw & (R | W) == 0 {
            return Err(DmaFault::sept(FaultReason::SeptNotPresent(state), raw, level));
        }
        if raw & need == 0 {
            return Err(DmaFault::sept(FaultReason::SeptPermission, raw, level));
        }
        let leaf = state.is_leaf();
        // A leaf may sit at levels 0..=2 only; a table never at level 0.
        let well_placed = if leaf { level <= 2 } else { level > 0 };
        if !well_placed || SeptEntry::new(state, entry.pfn(), level).raw() != raw {
            return Err(DmaFault::sept(FaultReason::SeptReserved, raw, level));
        }
        if leaf {
            if state != SeptState::Mapped {
                return Err(DmaFault::sept(FaultReason::SeptNotPrivateMemory(state), raw, level));
            }
            let page_size = match PageSize::from_level(level) {
                Some(s) => s,
                None => return Err(DmaFault::sept(FaultReason::SeptReserved, raw, level)),
            };
            let hpa = entry.pfn().addr().raw() | (iova & (page_size.bytes() - 1));
            let hpa = HostPhysAddr::new(hpa).ok_or(DmaFault::sept(FaultReason::SeptReserved, raw, level))?;
            return Ok(Translation { hpa, page_size, domain });
        }
        if !mem.contains(entry.pfn()) {
            return Err(DmaFault::sept(FaultReason::SeptAccess, raw, level));
        }
        table = entry.pfn();
        level -= 1;
    }
}
