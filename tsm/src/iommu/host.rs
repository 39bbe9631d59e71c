//! The host domain: how the functions the host keeps do DMA once the TSM owns the unit.
//!
//! From IOMMU.SETUP on, a requester without an entry faults at the root table. A function the
//! host keeps (its NVMe controller before assignment, a NIC) gets an entry at RID_PASID whose
//! second stage is the platform's **host map**: the identity map of exactly the memory the host
//! owns, the very table the host world's nested paging walks (`PhysMem::ownership_changed` keeps
//! it equal to the PAMT: a frame donated to the TSM or a TD leaves it in the call that donates
//! it, with the unit's cached translations of that frame invalidated before the call goes on).
//! So a host device reaches what the host's CPU reaches and nothing else: never TSM memory, a
//! PAMT, an S-EPT or IOMMU table, or a TD's private page.
//!
//! The entry's DID is [`HOST_DID`], which no TD's domain uses. One function is either the host's
//! or a TD's: attaching refuses a function with DMAR entries, and DMAR.ADD refuses a function in
//! the host domain until DETACH zeroed its entry and the unit confirmed the invalidation.

use crate::addr::Pfn;
use crate::pamt::{PageType, Pamt, PamtLookupError};
use crate::platform::{Clock, DmaRemapping, PhysMem};

use super::format::{PasidEntry, PASID_WORDS};
use super::hw::domain_invalidation;
use super::unit::{read_words, Frames, Iommu, Needs};
use super::{DmarKey, DomainId, FrameRole, IommuError, Rid, SeptLevels};

/// Functions the host domain holds at most.
pub const MAX_HOST_DEVICES: usize = 16;

/// The DID of the host domain: the last of a unit with 16-bit DIDs (CAP.ND = 6, as QEMU's), far
/// above every TD's (DMAR.ADD uses the TD's slot + 1).
pub const HOST_DID: DomainId = DomainId(u16::MAX);

/// Where a host function's entry stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HostState {
    /// The entry is present: the function's DMA goes through the host map.
    Attached,
    /// The entry is zeroed but the unit did not confirm the invalidation: cached translations
    /// may remain, so the function cannot get a DMAR entry yet (DETACH again).
    Detaching,
}

/// A function the host keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostDevice {
    /// Its requester id.
    pub rid: Rid,
    /// Where it stands.
    pub state: HostState,
    /// The PASID table holding its RID_PASID entry.
    pub table: Pfn,
    /// The entry's index in that table.
    pub index: usize,
}

impl Iommu {
    /// The host function `rid`, if the host domain holds it.
    pub fn host_device(&self, rid: Rid) -> Option<HostDevice> {
        self.host.iter().flatten().find(|h| h.rid == rid).copied()
    }

    /// Functions in the host domain (any state): IOMMU.CLEAR is refused while any is.
    pub fn host_devices(&self) -> usize {
        self.host.iter().flatten().count()
    }

    pub(super) fn check_not_host(&self, rid: Rid) -> Result<(), IommuError> {
        match self.host_device(rid) {
            Some(_) => Err(IommuError::HostDevice),
            None => Ok(()),
        }
    }

    /// The platform's host map, checked: a 4-level table (the host world is 48-bit) whose root
    /// the host cannot write (outside the TDMRs, or a frame the PAMT does not list as free), on a
    /// unit with [`HOST_DID`].
    fn host_map<P: PhysMem + DmaRemapping>(&self, p: &P, pamt: &Pamt) -> Result<Pfn, IommuError> {
        let root = p.host_map().ok_or(IommuError::NoHostMap)?;
        let host_writable = match pamt.get(p, root) {
            Ok(e) => e.ty == PageType::Free,
            Err(PamtLookupError::NotConvertible) => false,
            Err(PamtLookupError::Corrupt) => return Err(IommuError::Corrupt),
        };
        // The root may lie outside `PhysMem` (the firmware's nested table is in the TSM's
        // image): the TSM never reads it, it only names it to the unit.
        if host_writable || !self.caps.walks(SeptLevels::Four) || self.caps.domains() <= u32::from(HOST_DID.0) {
            return Err(IommuError::NoHostMap);
        }
        Ok(root)
    }

    /// The frames a host attach of `rid` needs (context table, PASID directory, PASID table).
    ///
    /// # Errors
    /// `HostDevice` (already attached), `NotHostDevice` (it has DMAR entries), `Corrupt`.
    pub fn host_needs<M: PhysMem>(&self, mem: &M, pamt: &Pamt, rid: Rid) -> Result<Needs, IommuError> {
        self.check_not_host(rid)?;
        if self.bindings().any(|b| b.key.rid == rid) {
            return Err(IommuError::NotHostDevice);
        }
        Ok(self.plan(mem, pamt, DmarKey { rid, pasid: None })?.needs())
    }

    /// SEAMLESS.IOMMU.HOST.ATTACH: puts `rid` in the host domain, its RID_PASID entry present at
    /// once (the host needs no guest's consent for its own device), second stage = the host map,
    /// DID [`HOST_DID`]. Tables on the path are created from `frames` as for DMAR.ADD.
    ///
    /// Checks, in order: `HostDevice`, `NotHostDevice`, `NoHostMap`, `HostDevicesExhausted`, the
    /// tables on the path (`Corrupt`), the needed frames (as [`Iommu::install`]).
    ///
    /// # Errors
    /// The first failed check above; nothing is written.
    pub fn host_attach<P: PhysMem + DmaRemapping>(
        &mut self,
        p: &mut P,
        pamt: &Pamt,
        rid: Rid,
        frames: &Frames,
    ) -> Result<Needs, IommuError> {
        self.host_needs(p, pamt, rid)?;
        let map = self.host_map(p, pamt)?;
        let slot = self.host.iter().position(Option::is_none).ok_or(IommuError::HostDevicesExhausted)?;
        let plan = self.plan(p, pamt, DmarKey { rid, pasid: None })?;
        let ctx = Self::resolve(p, pamt, plan.ctx, frames.context_table, FrameRole::ContextTable, &[])?;
        let dir = Self::resolve(p, pamt, plan.dir, frames.pasid_dir, FrameRole::PasidDirectory, &[Some(ctx.pfn())])?;
        let earlier = [Some(ctx.pfn()), Some(dir.pfn())];
        let table = Self::resolve(p, pamt, plan.table, frames.pasid_table, FrameRole::PasidTable, &earlier)?;
        let consumed = plan.needs();
        // ALL CHECKS PASSED: nothing below can fail. A new entry needs no invalidation: the
        // slot was zero, and VT-d caches no non-present PASID entry.
        let entry = PasidEntry::second_stage(map, SeptLevels::Four, HOST_DID, true).encode();
        self.write_path(p, pamt, &plan, (ctx, dir, table), &entry);
        self.host[slot] =
            Some(HostDevice { rid, state: HostState::Attached, table: table.pfn(), index: plan.entry_index });
        Ok(consumed)
    }

    /// SEAMLESS.IOMMU.HOST.DETACH: takes `rid` out of the host domain. The entry is zeroed, then
    /// the host domain's PASID cache and IOTLB are invalidated and the wait descriptor checked;
    /// only then is the function free for a DMAR entry. Returns once no DMA of the function can
    /// use the host map any more.
    ///
    /// Checks, in order: `EntryNotFound` (not in the host domain), `Corrupt` (the entry is not
    /// the one the TSM wrote).
    ///
    /// # Errors
    /// The first failed check above (nothing written); `Unit` if the unit did not confirm the
    /// invalidation: the entry is zeroed and the function stays DETACHING (DETACH again).
    pub fn host_detach<P: PhysMem + DmaRemapping + Clock>(&mut self, p: &mut P, rid: Rid) -> Result<(), IommuError> {
        let i = self.host.iter().position(|h| h.is_some_and(|h| h.rid == rid)).ok_or(IommuError::EntryNotFound)?;
        let h = self.host[i].ok_or(IommuError::Corrupt)?;
        let found: [u64; PASID_WORDS] = read_words(p, h.table, h.index * PASID_WORDS);
        let expected = match h.state {
            HostState::Attached => {
                let map = p.host_map().ok_or(IommuError::Corrupt)?;
                PasidEntry::second_stage(map, SeptLevels::Four, HOST_DID, true).encode()
            }
            HostState::Detaching => [0; PASID_WORDS],
        };
        if found != expected {
            return Err(IommuError::Corrupt);
        }
        // ALL CHECKS PASSED for the tables; the unit may still fail the invalidation.
        for w in 0..PASID_WORDS {
            p.write_u64(h.table, h.index * PASID_WORDS + w, 0);
        }
        if let Some(h) = self.host[i].as_mut() {
            h.state = HostState::Detaching;
        }
        self.invalidate_unit(p, &domain_invalidation(HOST_DID))?;
        self.host[i] = None;
        Ok(())
    }

    /// The table slot of the function `rid`'s host entry, for tests that corrupt it.
    pub fn host_entry_slot(&self, rid: Rid) -> Option<(Pfn, usize)> {
        self.host_device(rid).map(|h| (h.table, h.index * PASID_WORDS))
    }
}
