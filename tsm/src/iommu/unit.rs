//! The [`Iommu`] object: one trusted remapping unit whose tables live in host-donated frames
//! (PAMT type [`PageType::IommuTable`], owner = the root-table frame, `level` = the
//! [`FrameRole`]), and the DMAR entries the TSM keeps in them.
//!
//! Every operation checks everything first and commits after a line marked `ALL CHECKS
//! PASSED`: a failed call writes nothing, to the tables or to the PAMT.

use crate::addr::Pfn;
use crate::pamt::{PageType, Pamt, PamtEntry, PamtLookupError};
use crate::platform::{Clock, DmaRemapping, PhysMem, UnitError};
use crate::td::{Tracker, MAX_TDS};

use super::dmar::{dmar_legality, Binding, DmarLegality, DmarOp, DmarState, Domain};
use super::format::{
    root_word, ContextEntry, PasidDirEntry, PasidEntry, RootHalf, CONTEXT_ENTRIES, CONTEXT_WORDS, PASIDS_PER_DIRECTORY,
    PASID_TABLE_ENTRIES, PASID_WORDS, PDTS_ONE_FRAME, RID_PASID,
};
use super::hw::Capabilities;
use super::program::UnitState;
use super::walk::{self, DmaFault, Translation};
use super::{DmarKey, DomainId, FrameRole, IommuError, Pasid, Rid, SeptLevels};

/// DMAR entries one IOMMU holds at most.
pub const MAX_BINDINGS: usize = 64;
/// Domains one IOMMU holds at most: one per TD.
pub const MAX_DOMAINS: usize = MAX_TDS;

/// What TDH.DMAR.ADD asks for. `sept_root` and `levels` come from the TSM's own state of the TD
/// (TDCS page 0 and its root level), never from a host operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmarRequest {
    /// The RID/PASID.
    pub key: DmarKey,
    /// The TD's TDR.
    pub owner: Pfn,
    /// The TD's S-EPT root table.
    pub sept_root: Pfn,
    /// The S-EPT's depth.
    pub levels: SeptLevels,
    /// The DID the host proposes.
    pub domain: DomainId,
    /// The TD's current CPU TLB epoch.
    pub cpu_epoch: u64,
}

/// Frames the host donates for the tables an install needs (see [`Iommu::needs`]). A frame given
/// for a table that already exists is not consumed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Frames {
    /// For a new context table.
    pub context_table: Option<Pfn>,
    /// For a new PASID directory.
    pub pasid_dir: Option<Pfn>,
    /// For a new PASID table.
    pub pasid_table: Option<Pfn>,
}

/// Which tables an install must create (and so which frames it needs, or consumed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Needs {
    /// A context table for the RID's bus half.
    pub context_table: bool,
    /// A PASID directory for the RID.
    pub pasid_dir: bool,
    /// A PASID table for the PASID's group of 64.
    pub pasid_table: bool,
}

impl Needs {
    /// Number of frames.
    pub const fn count(&self) -> u32 {
        self.context_table as u32 + self.pasid_dir as u32 + self.pasid_table as u32
    }
}

/// Whether a call changed anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Done {
    /// It did.
    Changed,
    /// Nothing to do (a warning: already accepted, already blocked).
    AlreadyDone,
}

/// A table on an install's path: there already, or still to be created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Planned {
    Existing(Pfn),
    Missing,
}

/// A table on an install's path once the frames are checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum At {
    Existing(Pfn),
    New(Pfn),
}

impl At {
    pub(super) const fn pfn(self) -> Pfn {
        match self {
            At::Existing(p) | At::New(p) => p,
        }
    }
}

/// Where an install writes, found by walking the tables.
#[derive(Clone, Copy, Debug)]
pub(super) struct Plan {
    pub(super) root_word: usize,
    pub(super) ctx: Planned,
    pub(super) ctx_index: usize,
    pub(super) dir: Planned,
    pub(super) dir_index: usize,
    pub(super) table: Planned,
    pub(super) entry_index: usize,
}

impl Plan {
    pub(super) fn needs(&self) -> Needs {
        Needs {
            context_table: self.ctx == Planned::Missing,
            pasid_dir: self.dir == Planned::Missing,
            pasid_table: self.table == Planned::Missing,
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Slot {
    Existing(usize),
    New(usize),
}

/// One trusted IOMMU (a DRHD in TDX Connect terms).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Iommu {
    pub(super) root: Pfn,
    pub(super) bindings: [Option<Binding>; MAX_BINDINGS],
    pub(super) domains: [Option<Domain>; MAX_DOMAINS],
    /// Table frames owned besides the root.
    pub(super) table_frames: u32,
    /// The unit's capabilities, read at IOMMU.SETUP.
    pub(super) caps: Capabilities,
    /// The unit's registers: wait sequence, translation state, the faults read back.
    pub(super) unit: UnitState,
    /// Functions the host keeps, translated through the host domain ([`super::host`]).
    pub(super) host: [Option<super::host::HostDevice>; super::host::MAX_HOST_DEVICES],
}

/// The PAMT entry of a table frame of the IOMMU whose root table is `root`.
pub(super) const fn table_meta(root: Pfn, role: FrameRole) -> PamtEntry {
    PamtEntry { level: role as u8, ..PamtEntry::owned(PageType::IommuTable, root) }
}

/// A frame the host donates: convertible, backed and free.
pub(super) fn check_donated<M: PhysMem>(mem: &M, pamt: &Pamt, f: Pfn, role: FrameRole) -> Result<(), IommuError> {
    match pamt.get(mem, f) {
        Err(PamtLookupError::NotConvertible) => Err(IommuError::FrameNotConvertible(role)),
        Err(PamtLookupError::Corrupt) => Err(IommuError::Corrupt),
        Ok(_) if !mem.contains(f) => Err(IommuError::FrameNotConvertible(role)),
        Ok(e) if e.ty != PageType::Free => Err(IommuError::FrameNotFree(role)),
        Ok(_) => Ok(()),
    }
}

pub(super) fn read_words<M: PhysMem, const N: usize>(mem: &M, table: Pfn, first: usize) -> [u64; N] {
    let mut w = [0u64; N];
    for (i, v) in w.iter_mut().enumerate() {
        *v = mem.read_u64(table, first + i);
    }
    w
}

impl Iommu {
    /// IOMMU.SETUP: takes the donated `root` frame as the root table, zeroed.
    ///
    /// # Errors
    /// `FrameNotConvertible(RootTable)`, `FrameNotFree(RootTable)`, `Corrupt` (PAMT unreadable).
    ///
    /// The unit is then programmed ([`Iommu::take_unit`]): the zeroed root table in scalable
    /// mode, the invalidation queue, a global invalidation and translation on. Until this call
    /// the unit is the platform's (translation off); from it on, a request that no DMAR entry
    /// names faults at the root table.
    ///
    /// # Errors
    /// `FrameNotConvertible(RootTable)`, `FrameNotFree(RootTable)`, `Corrupt` (PAMT unreadable),
    /// `Unsuitable` (the unit lacks a capability), `Unit` (absent, or a command did not
    /// complete: the unit is left translating nothing and the frame stays free).
    pub fn setup<P: PhysMem + DmaRemapping + Clock>(p: &mut P, pamt: &Pamt, root: Pfn) -> Result<Iommu, IommuError> {
        check_donated(p, pamt, root, FrameRole::RootTable)?;
        let caps = p.remapping_capabilities().ok_or(IommuError::Unit(UnitError::Absent))?;
        caps.check().map_err(IommuError::Unsuitable)?;
        let mut iommu = Iommu {
            root,
            bindings: [None; MAX_BINDINGS],
            domains: [None; MAX_DOMAINS],
            table_frames: 0,
            caps,
            unit: UnitState::default(),
            host: [None; super::host::MAX_HOST_DEVICES],
        };
        // ALL CHECKS PASSED for the TSM's state. Zeroing a free frame changes nothing the host
        // can tell; if the unit fails below, the frame stays free and the unit translates nothing.
        p.zero(root);
        iommu.take_unit(p)?;
        pamt.set(p, root, table_meta(root, FrameRole::RootTable));
        Ok(iommu)
    }

    /// The unit's capabilities.
    pub const fn capabilities(&self) -> Capabilities {
        self.caps
    }

    /// The root table (what the unit's RTADDR register would hold, with RTADDR.TTM = scalable).
    pub const fn root(&self) -> Pfn {
        self.root
    }

    /// Table frames the IOMMU owns besides the root table.
    pub const fn table_frames(&self) -> u32 {
        self.table_frames
    }

    /// The DMAR entry of `key`.
    pub fn binding(&self, key: DmarKey) -> Option<Binding> {
        self.bindings.iter().flatten().find(|b| b.key == key).copied()
    }

    /// Every DMAR entry.
    pub fn bindings(&self) -> impl Iterator<Item = &Binding> {
        self.bindings.iter().flatten()
    }

    /// DMAR entries (in any state) translating through the S-EPT of the TD `owner`: TD
    /// teardown and TDI.REMOVE are refused while this is not zero.
    pub fn entries_of(&self, owner: Pfn) -> usize {
        self.bindings().filter(|b| b.owner == owner).count()
    }

    /// The domain with DID `did`.
    pub fn domain(&self, did: DomainId) -> Option<Domain> {
        self.domains.iter().flatten().find(|d| d.did == did).copied()
    }

    /// The domain of the TD `owner`.
    pub fn domain_of(&self, owner: Pfn) -> Option<Domain> {
        self.domains.iter().flatten().find(|d| d.owner == owner).copied()
    }

    /// True if an S-EPT block of the TD `owner` made in CPU epoch `bepoch` can no longer be
    /// cached in this IOMMU's IOTLB: the TD has no domain here, or an invalidation of its
    /// domain ran in a later CPU epoch. S-EPT REMOVE (and every call that requires a retired
    /// block) needs `td.tlb.is_tracked(bepoch) && iommu.is_tracked(tdr, bepoch)`.
    pub fn is_tracked(&self, owner: Pfn, bepoch: u64) -> bool {
        self.domains.iter().flatten().filter(|d| d.owner == owner).all(|d| d.sept_block_tracked(bepoch))
    }

    /// Walks this IOMMU's tables for one DMA request ([`walk::translate`]).
    ///
    /// # Errors
    /// The [`DmaFault`] of the first failed check.
    pub fn translate<M: PhysMem>(
        &self,
        mem: &M,
        rid: Rid,
        pasid: Option<Pasid>,
        iova: u64,
        write: bool,
    ) -> Result<Translation, DmaFault> {
        walk::translate(mem, self.root, rid, pasid, iova, write)
    }

    fn find(&self, key: DmarKey) -> Option<usize> {
        self.bindings.iter().position(|b| b.is_some_and(|b| b.key == key))
    }

    pub(super) fn check_key(key: DmarKey) -> Result<(), IommuError> {
        match key.pasid {
            Some(p) if p.raw() == RID_PASID => Err(IommuError::PasidReserved),
            Some(p) if p.raw() >= PASIDS_PER_DIRECTORY => Err(IommuError::PasidOutOfRange),
            _ => Ok(()),
        }
    }

    /// A table an entry points to must be one of this IOMMU's, of the expected role.
    fn own_table<M: PhysMem>(&self, mem: &M, pamt: &Pamt, f: Pfn, role: FrameRole) -> Result<Pfn, IommuError> {
        match pamt.get(mem, f) {
            Ok(e) if e == table_meta(self.root, role) && mem.contains(f) => Ok(f),
            _ => Err(IommuError::Corrupt),
        }
    }

    /// Walks the tables towards `key`'s PASID entry, recording which tables exist.
    pub(super) fn plan<M: PhysMem>(&self, mem: &M, pamt: &Pamt, key: DmarKey) -> Result<Plan, IommuError> {
        let pasid = key.table_pasid();
        let mut plan = Plan {
            root_word: root_word(key.rid.bus(), key.rid.devfn()),
            ctx: Planned::Missing,
            ctx_index: key.rid.devfn() as usize % CONTEXT_ENTRIES,
            dir: Planned::Missing,
            dir_index: (pasid >> 6) as usize,
            table: Planned::Missing,
            entry_index: pasid as usize % PASID_TABLE_ENTRIES,
        };
        let half = RootHalf::decode(mem.read_u64(self.root, plan.root_word)).map_err(|_| IommuError::Corrupt)?;
        if !half.present {
            return Ok(plan);
        }
        let ctx = self.own_table(mem, pamt, half.context_table, FrameRole::ContextTable)?;
        plan.ctx = Planned::Existing(ctx);
        let ce = ContextEntry::decode(read_words(mem, ctx, plan.ctx_index * CONTEXT_WORDS))
            .map_err(|_| IommuError::Corrupt)?;
        if !ce.present {
            return Ok(plan);
        }
        if ce != ContextEntry::pointing_to(ce.pasid_dir) {
            return Err(IommuError::Corrupt);
        }
        let dir = self.own_table(mem, pamt, ce.pasid_dir, FrameRole::PasidDirectory)?;
        plan.dir = Planned::Existing(dir);
        let de = PasidDirEntry::decode(mem.read_u64(dir, plan.dir_index)).map_err(|_| IommuError::Corrupt)?;
        if !de.present {
            return Ok(plan);
        }
        let table = self.own_table(mem, pamt, de.pasid_table, FrameRole::PasidTable)?;
        plan.table = Planned::Existing(table);
        let slot: [u64; PASID_WORDS] = read_words(mem, table, plan.entry_index * PASID_WORDS);
        if slot.iter().any(|&w| w != 0) {
            // No binding names this slot, yet it holds an entry.
            return Err(IommuError::Corrupt);
        }
        Ok(plan)
    }

    /// Which frames an install of `key` needs now, so that the ABI leaf can ask the host for
    /// exactly those.
    ///
    /// # Errors
    /// `PasidReserved`, `PasidOutOfRange`, `EntryInUse`, `Corrupt`.
    pub fn needs<M: PhysMem>(&self, mem: &M, pamt: &Pamt, key: DmarKey) -> Result<Needs, IommuError> {
        Self::check_key(key)?;
        self.check_not_host(key.rid)?;
        if let Some(b) = self.binding(key) {
            return Err(IommuError::EntryInUse(b.state));
        }
        Ok(self.plan(mem, pamt, key)?.needs())
    }

    fn check_sept_root<M: PhysMem>(mem: &M, pamt: &Pamt, req: &DmarRequest) -> Result<(), IommuError> {
        let tdr = pamt.get(mem, req.owner).map_err(|_| IommuError::SeptRootInvalid)?;
        let root = pamt.get(mem, req.sept_root).map_err(|_| IommuError::SeptRootInvalid)?;
        if tdr.ty != PageType::Tdr
            || root.ty != PageType::Tdcs
            || root.owner != req.owner
            || !mem.contains(req.sept_root)
        {
            return Err(IommuError::SeptRootInvalid);
        }
        Ok(())
    }

    fn domain_slot(&self, req: &DmarRequest) -> Result<Slot, IommuError> {
        for (i, d) in self.domains.iter().enumerate() {
            if let Some(d) = d {
                if d.did == req.domain {
                    if d.owner != req.owner {
                        return Err(IommuError::DomainInUse);
                    }
                    if d.sept_root != req.sept_root || d.levels != req.levels {
                        return Err(IommuError::SeptRootInvalid);
                    }
                    return Ok(Slot::Existing(i));
                }
            }
        }
        if self.domains.iter().flatten().any(|d| d.owner == req.owner) {
            return Err(IommuError::DomainMismatch);
        }
        match self.domains.iter().position(Option::is_none) {
            Some(i) => Ok(Slot::New(i)),
            None => Err(IommuError::DomainsExhausted),
        }
    }

    /// Resolves a planned table with the donated frame, checking the frame.
    pub(super) fn resolve<M: PhysMem>(
        mem: &M,
        pamt: &Pamt,
        planned: Planned,
        given: Option<Pfn>,
        role: FrameRole,
        earlier: &[Option<Pfn>],
    ) -> Result<At, IommuError> {
        match planned {
            Planned::Existing(p) => Ok(At::Existing(p)),
            Planned::Missing => {
                let f = given.ok_or(IommuError::FrameMissing(role))?;
                check_donated(mem, pamt, f, role)?;
                if earlier.contains(&Some(f)) {
                    return Err(IommuError::FrameDuplicate(role));
                }
                Ok(At::New(f))
            }
        }
    }

    /// TDH.DMAR.ADD: installs the DMAR entry of `req.key` (state ADDED: the PASID entry is
    /// complete but not present), creating the context table, PASID directory and PASID table
    /// on its path from the donated `frames` where they do not exist yet. Returns the frames it
    /// consumed.
    ///
    /// Checks, in order: the key (`PasidReserved`, `PasidOutOfRange`), `DomainIdInvalid`,
    /// `SeptRootInvalid`, `WidthUnsupported` (the unit's SAGAW lacks the S-EPT's depth), `EntryInUse`, `HostDevice`
    /// (the function is in the host domain), the domain (`DomainInUse`, `DomainMismatch`,
    /// `DomainsExhausted`), `BindingsExhausted`, the tables on the path (`Corrupt`), then the
    /// needed frames in path order (context table, PASID directory, PASID table): each
    /// `FrameMissing`, `FrameNotConvertible`, `FrameNotFree`, `FrameDuplicate`.
    ///
    /// # Errors
    /// The first failed check above; nothing is written.
    pub fn install<M: PhysMem>(
        &mut self,
        mem: &mut M,
        pamt: &Pamt,
        req: &DmarRequest,
        frames: &Frames,
    ) -> Result<Needs, IommuError> {
        Self::check_key(req.key)?;
        if req.domain.0 == 0 || req.domain == super::HOST_DID {
            return Err(IommuError::DomainIdInvalid);
        }
        Self::check_sept_root(mem, pamt, req)?;
        if !self.caps.walks(req.levels) {
            // The unit walks the S-EPT itself: a 5-level S-EPT (GPAW 52) needs SAGAW bit 3.
            return Err(IommuError::WidthUnsupported { sagaw: self.caps.sagaw() });
        }
        if let Some(b) = self.binding(req.key) {
            return Err(IommuError::EntryInUse(b.state));
        }
        self.check_not_host(req.key.rid)?;
        let domain = self.domain_slot(req)?;
        let slot = self.bindings.iter().position(Option::is_none).ok_or(IommuError::BindingsExhausted)?;
        let plan = self.plan(mem, pamt, req.key)?;
        let ctx = Self::resolve(mem, pamt, plan.ctx, frames.context_table, FrameRole::ContextTable, &[])?;
        let dir = Self::resolve(mem, pamt, plan.dir, frames.pasid_dir, FrameRole::PasidDirectory, &[Some(ctx.pfn())])?;
        let earlier = [Some(ctx.pfn()), Some(dir.pfn())];
        let table = Self::resolve(mem, pamt, plan.table, frames.pasid_table, FrameRole::PasidTable, &earlier)?;
        let consumed = plan.needs();
        // ALL CHECKS PASSED: nothing below can fail.

        let entry = PasidEntry::second_stage(req.sept_root, req.levels, req.domain, false).encode();
        self.write_path(mem, pamt, &plan, (ctx, dir, table), &entry);
        self.bindings[slot] = Some(Binding {
            key: req.key,
            owner: req.owner,
            domain: req.domain,
            state: DmarState::Added,
            bepoch: 0,
            table: table.pfn(),
            index: plan.entry_index,
        });
        match domain {
            Slot::Existing(i) => {
                if let Some(d) = self.domains[i].as_mut() {
                    d.entries += 1;
                }
            }
            Slot::New(i) => {
                self.domains[i] = Some(Domain {
                    did: req.domain,
                    owner: req.owner,
                    sept_root: req.sept_root,
                    levels: req.levels,
                    iotlb: Tracker::default(),
                    flushed_cpu_epoch: req.cpu_epoch,
                    entries: 1,
                });
            }
        }
        Ok(consumed)
    }

    /// Commits an install's path: the new tables (zeroed, PAMT-owned), then `entry` in its PASID
    /// table slot, then the pointers to the new tables, bottom up, so that no present pointer
    /// ever leads to a table not yet formatted. Counts the new frames.
    pub(super) fn write_path<M: PhysMem>(
        &mut self,
        mem: &mut M,
        pamt: &Pamt,
        plan: &Plan,
        (ctx, dir, table): (At, At, At),
        entry: &[u64; PASID_WORDS],
    ) {
        for (at, role) in
            [(table, FrameRole::PasidTable), (dir, FrameRole::PasidDirectory), (ctx, FrameRole::ContextTable)]
        {
            if let At::New(f) = at {
                mem.zero(f);
                pamt.set(mem, f, table_meta(self.root, role));
            }
        }
        for (i, w) in entry.iter().enumerate() {
            mem.write_u64(table.pfn(), plan.entry_index * PASID_WORDS + i, *w);
        }
        if let At::New(t) = table {
            mem.write_u64(dir.pfn(), plan.dir_index, PasidDirEntry::pointing_to(t).encode());
        }
        if let At::New(d) = dir {
            let ce = ContextEntry::pointing_to(d).encode();
            for (i, w) in ce.iter().enumerate() {
                mem.write_u64(ctx.pfn(), plan.ctx_index * CONTEXT_WORDS + i, *w);
            }
        }
        if let At::New(c) = ctx {
            mem.write_u64(self.root, plan.root_word, RootHalf::pointing_to(c).encode());
        }
        self.table_frames += plan.needs().count();
    }

    fn domain_index(&self, did: DomainId) -> Option<usize> {
        self.domains.iter().position(|d| d.is_some_and(|d| d.did == did))
    }

    /// The binding at `i` and its domain, checking that the PASID entry in memory is the one
    /// the TSM wrote for the binding's state.
    fn checked(&self, mem: &impl PhysMem, i: usize) -> Result<(Binding, usize, PasidEntry), IommuError> {
        let b = self.bindings[i].ok_or(IommuError::Corrupt)?;
        let di = self.domain_index(b.domain).ok_or(IommuError::Corrupt)?;
        let d = self.domains[di].ok_or(IommuError::Corrupt)?;
        let present = b.state == DmarState::Accepted;
        let expected = PasidEntry::second_stage(d.sept_root, d.levels, d.did, present);
        let found: [u64; PASID_WORDS] = read_words(mem, b.table, b.index * PASID_WORDS);
        if found != expected.encode() {
            return Err(IommuError::Corrupt);
        }
        Ok((b, di, expected))
    }

    fn legal(op: DmarOp, state: DmarState) -> Result<bool, IommuError> {
        match dmar_legality(op, state) {
            DmarLegality::Proceed => Ok(false),
            DmarLegality::AlreadyDone => Ok(true),
            DmarLegality::Refuse(e) => Err(e),
        }
    }

    /// TDG.DMAR.ACCEPT by the TD `owner`: ADDED → ACCEPTED, the PASID entry becomes present and
    /// DMA to the TD's accepted private memory is allowed.
    ///
    /// Checks, in order: `EntryNotFound`, `NotOwner`, the state (already accepted is
    /// [`Done::AlreadyDone`]; `EntryBlocked`), `Corrupt`.
    ///
    /// # Errors
    /// The first failed check above; nothing is written.
    pub fn accept<M: PhysMem>(&mut self, mem: &mut M, owner: Pfn, key: DmarKey) -> Result<Done, IommuError> {
        let i = self.find(key).ok_or(IommuError::EntryNotFound)?;
        let b = self.bindings[i].ok_or(IommuError::Corrupt)?;
        if b.owner != owner {
            return Err(IommuError::NotOwner);
        }
        if Self::legal(DmarOp::Accept, b.state)? {
            return Ok(Done::AlreadyDone);
        }
        let (b, _, entry) = self.checked(mem, i)?;
        // ALL CHECKS PASSED: nothing below can fail.
        mem.write_u64(b.table, b.index * PASID_WORDS, PasidEntry { present: true, ..entry }.word0());
        if let Some(b) = self.bindings[i].as_mut() {
            b.state = DmarState::Accepted;
        }
        Ok(Done::Changed)
    }

    /// TDH.DMAR.BLOCK: ADDED or ACCEPTED → BLOCKED, the PASID entry is not present, and the
    /// domain's IOTLB epoch is recorded.
    ///
    /// Checks, in order: `EntryNotFound`, the state (already blocked is
    /// [`Done::AlreadyDone`]), `Corrupt`.
    ///
    /// # Errors
    /// The first failed check above; nothing is written.
    pub fn block<M: PhysMem>(&mut self, mem: &mut M, key: DmarKey) -> Result<Done, IommuError> {
        let i = self.find(key).ok_or(IommuError::EntryNotFound)?;
        let b = self.bindings[i].ok_or(IommuError::Corrupt)?;
        if Self::legal(DmarOp::Block, b.state)? {
            return Ok(Done::AlreadyDone);
        }
        let (b, di, entry) = self.checked(mem, i)?;
        let epoch = self.domains[di].map_or(0, |d| d.iotlb.epoch());
        // ALL CHECKS PASSED: nothing below can fail.
        mem.write_u64(b.table, b.index * PASID_WORDS, PasidEntry { present: false, ..entry }.word0());
        if let Some(b) = self.bindings[i].as_mut() {
            b.state = DmarState::Blocked;
            b.bepoch = epoch;
        }
        Ok(Done::Changed)
    }

    /// TDH.DMAR.REMOVE: frees a BLOCKED entry whose block an IOTLB invalidation retired; the
    /// PASID entry is zeroed. The last entry of a domain frees the domain (and its DID).
    /// Tables stay until [`Iommu::reclaim`].
    ///
    /// Checks, in order: `EntryNotFound`, the state (`NotBlocked`), `TrackingNotDone`,
    /// `Corrupt`.
    ///
    /// # Errors
    /// The first failed check above; nothing is written.
    pub fn remove<M: PhysMem>(&mut self, mem: &mut M, key: DmarKey) -> Result<(), IommuError> {
        let i = self.find(key).ok_or(IommuError::EntryNotFound)?;
        let b = self.bindings[i].ok_or(IommuError::Corrupt)?;
        Self::legal(DmarOp::Remove, b.state)?;
        let di = self.domain_index(b.domain).ok_or(IommuError::Corrupt)?;
        let d = self.domains[di].ok_or(IommuError::Corrupt)?;
        if !d.iotlb.is_tracked(b.bepoch) {
            return Err(IommuError::TrackingNotDone);
        }
        let (b, di, _) = self.checked(mem, i)?;
        // ALL CHECKS PASSED: nothing below can fail.
        for w in 0..PASID_WORDS {
            mem.write_u64(b.table, b.index * PASID_WORDS + w, 0);
        }
        self.bindings[i] = None;
        let last = match self.domains[di].as_mut() {
            Some(d) => {
                d.entries = d.entries.saturating_sub(1);
                d.entries == 0
            }
            None => false,
        };
        if last {
            self.domains[di] = None;
        }
        Ok(())
    }

    /// The trusted invalidation queue's domain-selective invalidation (TDH.IQ.INV in TDX Connect):
    /// PASID-cache and IOTLB invalidation descriptors for DID `did`, then a wait descriptor
    /// whose status write the TSM checks; only then does the domain's IOTLB epoch advance and
    /// record `cpu_epoch`, the owning TD's current CPU epoch.
    ///
    /// The invalidation completes within the call, so no IOTLB user can still hold the previous
    /// epoch and the IOTLB tracker never has references; a model of ATS device TLBs would take
    /// them with [`Tracker::enter`] and refuse here while [`Tracker::can_advance`] is false, as
    /// TRACK does.
    ///
    /// # Errors
    /// `DomainNotFound`; `Unit` if the unit did not complete the invalidation (nothing retired).
    pub fn invalidate<P: DmaRemapping + Clock>(
        &mut self,
        p: &mut P,
        did: DomainId,
        cpu_epoch: u64,
    ) -> Result<(), IommuError> {
        let di = self.domain_index(did).ok_or(IommuError::DomainNotFound)?;
        if self.domains[di].is_none() {
            return Err(IommuError::Corrupt);
        }
        self.invalidate_unit(p, &super::hw::domain_invalidation(did))?;
        // ALL CHECKS PASSED (and the unit confirmed the invalidation): nothing below can fail.
        if let Some(d) = self.domains[di].as_mut() {
            d.iotlb.advance();
            d.flushed_cpu_epoch = d.flushed_cpu_epoch.max(cpu_epoch);
        }
        Ok(())
    }

    /// The context entry the TSM keeps for `rid`, if present (diagnostics and tests).
    pub fn context_entry<M: PhysMem>(&self, mem: &M, rid: Rid) -> Option<ContextEntry> {
        let half = RootHalf::decode(mem.read_u64(self.root, root_word(rid.bus(), rid.devfn()))).ok()?;
        if !half.present || !mem.contains(half.context_table) {
            return None;
        }
        let index = rid.devfn() as usize % CONTEXT_ENTRIES * CONTEXT_WORDS;
        let ce = ContextEntry::decode(read_words(mem, half.context_table, index)).ok()?;
        (ce.present && ce.pdts == PDTS_ONE_FRAME).then_some(ce)
    }
}
