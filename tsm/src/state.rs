//! The TSM object and the checks every handler shares: operand decoding into typed addresses,
//! page ownership, TD and vCPU lookup, S-EPT walks.

use crate::addr::{FrameRange, GuestPhysAddr, HostPhysAddr, PageSize, Pfn};
use crate::error::{SeptErrorKind, TsmError, TsmResult};
use crate::pamt::{PageType, Pamt, PamtEntry, PamtLookupError};
use crate::pdev::{Pdev, MAX_PDEVS};
use crate::platform::Platform;
use crate::sept::{self, Walk, WalkResult};
use crate::status::Operand;
use crate::td::{Lifecycle, Td, MAX_TDS};
use crate::tdi::{Tdi, MAX_TDIS};

/// Memory ranges the TSM itself lives in, which no TDMR may include.
pub const MAX_PRIVATE_RANGES: usize = 4;

/// What the TSM reports about itself in TDREPORT's TEE_TCB_INFO.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TsmIdentity {
    /// Security version number.
    pub svn: u16,
    /// Measurement of the TSM image (MRSEAM).
    pub mrseam: [u8; 48],
    /// Measurement of the TSM's signer (MRSIGNERSEAM).
    pub mrsigner: [u8; 48],
}

/// MMIO windows the TSM keeps from the platform (more are ignored: fewer windows only refuse
/// more imports).
pub const MAX_MMIO_WINDOWS: usize = 4;

/// State that exists once TDH.SYS.CONFIG succeeded.
#[derive(Debug)]
pub(crate) struct Sys {
    pub(crate) pamt: Pamt,
    /// Key of the TDREPORT MAC; never leaves the TSM.
    pub(crate) report_key: [u8; 32],
    /// The platform's MMIO windows ([`Platform::mmio_windows`]), fixed at configuration.
    mmio: [FrameRange; MAX_MMIO_WINDOWS],
    mmio_count: usize,
}

impl Sys {
    /// The state of a configured TSM, keeping the platform's MMIO `windows`.
    pub(crate) fn new(pamt: Pamt, report_key: [u8; 32], windows: &[FrameRange]) -> Sys {
        let mut mmio = [FrameRange::default(); MAX_MMIO_WINDOWS];
        let mut mmio_count = 0;
        for (dst, src) in mmio.iter_mut().zip(windows) {
            *dst = *src;
            mmio_count += 1;
        }
        Sys { pamt, report_key, mmio, mmio_count }
    }

    /// True if every frame of `range` lies inside one MMIO window of the platform.
    pub(crate) fn in_mmio_window(&self, range: FrameRange) -> bool {
        self.mmio[..self.mmio_count].iter().any(|w| w.covers(range))
    }
}

/// A TD's measurement registers ([`Tsm::td_measurements`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TdMeasurements {
    /// MRTD.
    pub mrtd: [u8; 48],
    /// RTMR0..3.
    pub rtmr: [[u8; 48]; crate::measure::RTMRS],
}

/// A read-only view of a TD for tests and diagnostics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TdSummary {
    /// Lifecycle state.
    pub lifecycle: Lifecycle,
    /// The S-EPT root table (meaningful from `Initialized` on).
    pub sept_root: Pfn,
    /// The root table's level.
    pub root_level: u8,
    /// GPA width.
    pub gpaw: u8,
    /// Current TLB epoch.
    pub epoch: u64,
    /// Frames owned besides the TDR.
    pub owned_frames: u64,
    /// vCPUs created.
    pub vcpus: usize,
    /// vCPUs in guest mode.
    pub vcpus_in_guest: usize,
}

/// The TSM: owns the PAMT, every TD's state, and the platform.
#[derive(Debug)]
pub struct Tsm<P: Platform> {
    pub(crate) platform: P,
    pub(crate) identity: TsmIdentity,
    pub(crate) private: [FrameRange; MAX_PRIVATE_RANGES],
    pub(crate) private_count: usize,
    pub(crate) sys: Option<Sys>,
    pub(crate) tds: [Option<Td>; MAX_TDS],
    pub(crate) pdevs: [Option<Pdev>; MAX_PDEVS],
    pub(crate) tdis: [Option<Tdi>; MAX_TDIS],
    /// The trusted IOMMU, once TDH.IOMMU.SETUP donated its root table.
    pub(crate) iommu: Option<crate::iommu::Iommu>,
    /// The attestation keys, once the firmware provisioned the platform secret.
    pub(crate) keys: Option<crate::attestation::Keys>,
    /// Accesses of the host world its nested map refused (SEAMLESS.HOST.FAULT.RD).
    pub(crate) host_faults: crate::faults::FaultLog,
}

impl<P: Platform> Tsm<P> {
    /// A TSM on `platform`, not yet configured. `private` lists the memory the TSM itself uses
    /// (image, stacks, state): TDH.SYS.CONFIG refuses TDMRs that touch it, and the TSM never reads
    /// host input from it. At most [`MAX_PRIVATE_RANGES`] are kept; extra ones are ignored, so
    /// callers pass the ranges in priority order.
    pub fn new(platform: P, identity: TsmIdentity, private: &[FrameRange]) -> Tsm<P> {
        let mut ranges = [FrameRange::default(); MAX_PRIVATE_RANGES];
        let mut count = 0;
        for (dst, src) in ranges.iter_mut().zip(private) {
            *dst = *src;
            count += 1;
        }
        Tsm {
            platform,
            identity,
            private: ranges,
            private_count: count,
            sys: None,
            tds: core::array::from_fn(|_| None),
            pdevs: core::array::from_fn(|_| None),
            tdis: core::array::from_fn(|_| None),
            iommu: None,
            keys: None,
            host_faults: crate::faults::FaultLog::default(),
        }
    }

    /// The platform.
    pub fn platform(&self) -> &P {
        &self.platform
    }

    /// The platform, mutably (tests use it to play the host writing its own memory).
    pub fn platform_mut(&mut self) -> &mut P {
        &mut self.platform
    }

    /// The PAMT entry of a frame, if the TSM is configured and the frame is convertible.
    pub fn pamt_entry(&self, pfn: Pfn) -> Option<PamtEntry> {
        self.sys.as_ref()?.pamt.get(&self.platform, pfn).ok()
    }

    /// The configured TDMRs (empty before TDH.SYS.CONFIG).
    pub fn tdmrs(&self) -> &[crate::pamt::Tdmr] {
        match &self.sys {
            Some(s) => s.pamt.tdmrs(),
            None => &[],
        }
    }

    /// A summary of the TD whose TDR is `tdr`.
    pub fn td_summary(&self, tdr: Pfn) -> Option<TdSummary> {
        let td = self.tds.iter().flatten().find(|t| t.tdr == tdr)?;
        Some(TdSummary {
            lifecycle: td.lifecycle,
            sept_root: td.sept_root(),
            root_level: td.root_level(),
            gpaw: td.gpaw(),
            epoch: td.tlb.epoch(),
            owned_frames: td.owned_frames,
            vcpus: td.vcpu_count(),
            vcpus_in_guest: td.vcpus.iter().flatten().filter(|v| v.in_guest.is_some()).count(),
        })
    }

    /// The measurement registers of the TD whose TDR is `tdr` (none of them secret: TDX hands
    /// them to the VMM through TDH.MNG.RD): MRTD, final once the TD is finalized, and RTMR0..3.
    /// `None` before TDH.MNG.INIT or after teardown.
    pub fn td_measurements(&self, tdr: Pfn) -> Option<TdMeasurements> {
        let td = self.tds.iter().flatten().find(|t| t.tdr == tdr)?;
        Self::require_built(td).ok()?;
        let page = td.tdcs[crate::td::TDCS_MR];
        let mut rtmr = [[0u8; 48]; crate::measure::RTMRS];
        for (i, r) in rtmr.iter_mut().enumerate() {
            *r = crate::measure::read_mr(&self.platform, page, crate::measure::MR_RTMR0 + 48 * i);
        }
        Some(TdMeasurements { mrtd: crate::measure::read_mr(&self.platform, page, crate::measure::MR_MRTD), rtmr })
    }

    // ---- shared checks -------------------------------------------------------------------

    pub(crate) fn sys(&self) -> TsmResult<&Sys> {
        self.sys.as_ref().ok_or(TsmError::SysNotReady)
    }

    pub(crate) fn pamt(&self) -> TsmResult<&Pamt> {
        Ok(&self.sys()?.pamt)
    }

    pub(crate) fn is_private(&self, range: FrameRange) -> bool {
        self.private[..self.private_count].iter().any(|p| p.overlaps(range))
    }

    /// Types a register as the address of a 4K page.
    pub(crate) fn page_operand(raw: u64, op: Operand) -> TsmResult<Pfn> {
        let pa = HostPhysAddr::new(raw).ok_or(TsmError::OperandInvalid(op))?;
        if !pa.is_aligned(PageSize::Size4K) {
            return Err(TsmError::OperandInvalid(op));
        }
        Ok(pa.pfn())
    }

    /// The PAMT entry of a frame named by an operand.
    pub(crate) fn pamt_of(&self, pfn: Pfn, op: Operand) -> TsmResult<PamtEntry> {
        match self.pamt()?.get(&self.platform, pfn) {
            Ok(e) => Ok(e),
            Err(PamtLookupError::NotConvertible) => Err(TsmError::AddrRange(op)),
            Err(PamtLookupError::Corrupt) => Err(TsmError::Corrupt),
        }
    }

    /// A page the host donates: convertible and free.
    pub(crate) fn donated_page(&self, raw: u64, op: Operand) -> TsmResult<Pfn> {
        let pfn = Self::page_operand(raw, op)?;
        let e = self.pamt_of(pfn, op)?;
        if e.ty != PageType::Free {
            return Err(TsmError::PageNotFree(op));
        }
        Ok(pfn)
    }

    /// A block of `size` the host donates: aligned, every frame convertible and free.
    pub(crate) fn donated_block(&self, raw: u64, size: PageSize, op: Operand) -> TsmResult<Pfn> {
        let first = Self::page_operand(raw, op)?;
        if !first.is_aligned(size) {
            return Err(TsmError::OperandInvalid(op));
        }
        for i in 0..size.frames() {
            let f = first.checked_add(i).ok_or(TsmError::AddrRange(op))?;
            if self.pamt_of(f, op)?.ty != PageType::Free {
                return Err(TsmError::PageNotFree(op));
            }
        }
        Ok(first)
    }

    /// A host page the TSM may read input from: backed, not TSM memory, not owned by any TD.
    pub(crate) fn host_page(&self, pfn: Pfn, op: Operand) -> TsmResult<()> {
        if !self.platform.contains(pfn) || self.is_private(FrameRange { start: pfn, count: 1 }) {
            return Err(TsmError::AddrRange(op));
        }
        if let Some(sys) = &self.sys {
            match sys.pamt.get(&self.platform, pfn) {
                Ok(e) if e.ty != PageType::Free => return Err(TsmError::PageMetadata(op)),
                Ok(_) | Err(PamtLookupError::NotConvertible) => {}
                Err(PamtLookupError::Corrupt) => return Err(TsmError::Corrupt),
            }
        }
        Ok(())
    }

    /// The slot of the TD whose TDR an operand names.
    pub(crate) fn td_index(&self, raw: u64, op: Operand) -> TsmResult<usize> {
        let pfn = Self::page_operand(raw, op)?;
        let e = self.pamt_of(pfn, op)?;
        if e.ty != PageType::Tdr {
            return Err(TsmError::PageMetadata(op));
        }
        self.slot_of_tdr(pfn, e)
    }

    pub(crate) fn slot_of_tdr(&self, tdr: Pfn, e: PamtEntry) -> TsmResult<usize> {
        let idx = usize::from(e.aux);
        match self.tds.get(idx) {
            Some(Some(td)) if td.tdr == tdr => Ok(idx),
            _ => Err(TsmError::Corrupt),
        }
    }

    /// The TD owning a frame whose PAMT entry is `e`.
    pub(crate) fn owner_index(&self, e: PamtEntry) -> TsmResult<usize> {
        let tdr = self.pamt()?.get(&self.platform, e.owner).map_err(|_| TsmError::Corrupt)?;
        if tdr.ty != PageType::Tdr {
            return Err(TsmError::Corrupt);
        }
        self.slot_of_tdr(e.owner, tdr)
    }

    /// The (TD slot, vCPU index) of the TDVPR an operand names.
    pub(crate) fn vcpu_index(&self, raw: u64, op: Operand) -> TsmResult<(usize, usize)> {
        let pfn = Self::page_operand(raw, op)?;
        let e = self.pamt_of(pfn, op)?;
        if e.ty != PageType::Tdvpr {
            return Err(TsmError::PageMetadata(op));
        }
        let td = self.owner_index(e)?;
        let vcpu = usize::from(e.aux);
        match self.tds[td].as_ref().and_then(|t| t.vcpus.get(vcpu).copied().flatten()) {
            Some(v) if v.tdvpr == pfn => Ok((td, vcpu)),
            _ => Err(TsmError::Corrupt),
        }
    }

    pub(crate) fn td(&self, idx: usize) -> TsmResult<&Td> {
        self.tds.get(idx).and_then(Option::as_ref).ok_or(TsmError::Corrupt)
    }

    pub(crate) fn td_mut(&mut self, idx: usize) -> TsmResult<&mut Td> {
        self.tds.get_mut(idx).and_then(Option::as_mut).ok_or(TsmError::Corrupt)
    }

    /// Refuses unless the TD is past TDH.MNG.INIT and not torn down.
    pub(crate) fn require_built(td: &Td) -> TsmResult<()> {
        match td.lifecycle {
            Lifecycle::Initialized | Lifecycle::Runnable => Ok(()),
            Lifecycle::Created => Err(TsmError::TdNotInitialized),
            Lifecycle::Teardown => Err(TsmError::Lifecycle),
        }
    }

    /// Checks a private GPA against the TD: inside its width, shared bit clear, aligned to
    /// `align` bytes.
    pub(crate) fn private_gpa(td: &Td, gpa: GuestPhysAddr, align: u64, op: Operand) -> TsmResult<()> {
        let width = u32::from(td.gpaw());
        // The top bit of the width is the shared bit: private GPAs lie below it.
        if gpa.raw() >> (width - 1) != 0 || gpa.raw() & (align - 1) != 0 {
            return Err(TsmError::OperandInvalid(op));
        }
        Ok(())
    }

    /// Walks the TD's S-EPT to `level`.
    pub(crate) fn walk(&self, td: &Td, gpa: GuestPhysAddr, level: u8) -> TsmResult<WalkResult> {
        sept::walk(&self.platform, td.sept_root(), td.root_level(), gpa, level).map_err(|_| TsmError::Corrupt)
    }

    /// Walks to `level` and requires the walk to get there.
    pub(crate) fn walk_to(&self, td: &Td, gpa: GuestPhysAddr, level: u8, op: Operand) -> TsmResult<Walk> {
        match self.walk(td, gpa, level)? {
            WalkResult::Reached(w) => Ok(w),
            WalkResult::Stopped(w) => Err(TsmError::Sept(op, w.fault(SeptErrorKind::WalkFailed))),
        }
    }

    /// The block epoch stored for the page or table an entry points to.
    pub(crate) fn bepoch_of(&self, w: &Walk) -> TsmResult<u64> {
        Ok(self.pamt_of(w.entry.pfn(), Operand::Sept)?.bepoch)
    }

    /// True if a block of the TD's S-EPT made in CPU epoch `bepoch` is retired: by TLB
    /// tracking, and by an IOTLB invalidation when the trusted IOMMU translates through it.
    pub(crate) fn retired(&self, td: &Td, bepoch: u64) -> bool {
        td.tlb.is_tracked(bepoch) && self.iommu.as_ref().is_none_or(|i| i.is_tracked(td.tdr, bepoch))
    }

    /// Requires the block recorded for `w` to be retired by TLB (and IOTLB) tracking.
    pub(crate) fn require_tracked(&self, td: &Td, w: &Walk, op: Operand) -> TsmResult<()> {
        if self.retired(td, self.bepoch_of(w)?) {
            Ok(())
        } else {
            Err(TsmError::Sept(op, w.fault(SeptErrorKind::TrackingNotDone)))
        }
    }

    /// Stores a frame's PAMT entry (no-op before TDH.SYS.CONFIG, which handlers check first).
    pub(crate) fn set_meta(&mut self, pfn: Pfn, entry: PamtEntry) {
        if let Some(sys) = &self.sys {
            sys.pamt.set(&mut self.platform, pfn, entry);
        }
    }

    /// Stores the PAMT entry of every frame of a block.
    pub(crate) fn set_meta_block(&mut self, first: Pfn, size: PageSize, entry: PamtEntry) {
        if let Some(sys) = &self.sys {
            sys.pamt.set_block(&mut self.platform, first, size, entry);
        }
    }

    /// Zeroes every frame of a block.
    pub(crate) fn scrub(&mut self, first: Pfn, frames: u64) {
        for i in 0..frames {
            if let Some(f) = first.checked_add(i) {
                self.platform.zero(f);
            }
        }
    }
}
