//! TDI: one TEE device interface bound to one TD (TDX Connect's TDI, SEV-TIO's TDI context,
//! CCA's VDEV). The TSM mirrors the device's TDISP state from answers it authenticated itself,
//! keeps the lock's nonce and interface report, the guest's START authorisation, and the MMIO
//! ranges the host imported from the device's dma-buf.
//!
//! ```text
//!              TDI.LOCK                  TDI.START (guest authorised)
//! Unlocked ─────────────▶ Locked ───────────────────────────▶ Run
//!    ▲                      │  ╲                               │
//!    │        TDI.STOP      │   ╲ a device answer fails,       │ TDI.STOP
//!    └──────────────────────┴────╲ DMABUF.REVOKE ──▶ Error ◀───┘
//!    └────────────────────────────────── TDI.STOP ────┘
//! ```
//! `generation` counts successful locks: the guest's authorisation names one, so an
//! authorisation given before a re-lock is stale.

pub mod flow;

use crate::addr::Pfn;
use crate::error::DeviceFault;
use crate::iommu::IommuError;
use crate::tdisp::{InterfaceReport, ReportError, MAX_RANGES};

pub use flow::{TdiDone, TdiFlow, TdiOp, REPORT_MAX};

/// TDIs the TSM can hold at once.
pub const MAX_TDIS: usize = 8;

/// Range attribute: the range is not protected by the TEE (TDISP "non-TEE memory").
pub const RANGE_NON_TEE: u16 = 0x4;

/// The TSM's view of a TDI's TDISP state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TdiState {
    /// CONFIG_UNLOCKED: created, or stopped.
    Unlocked,
    /// CONFIG_LOCKED: the report is kept and checked; MMIO may be imported and mapped.
    Locked,
    /// RUN: the guest authorised START and the device confirmed it runs.
    Run,
    /// ERROR: a device answer failed, or the exporter revoked the MMIO. Mappings are blocked;
    /// only STOP (then unmap and remove) remains.
    Error,
}

impl TdiState {
    /// The TDISP state code the attestation report records.
    pub const fn tdisp(self) -> crate::tdisp::TdiState {
        match self {
            TdiState::Unlocked => crate::tdisp::TdiState::ConfigUnlocked,
            TdiState::Locked => crate::tdisp::TdiState::ConfigLocked,
            TdiState::Run => crate::tdisp::TdiState::Run,
            TdiState::Error => crate::tdisp::TdiState::Error,
        }
    }
}

/// One MMIO range of the locked report, and what the host did with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct MmioRange {
    /// First host frame (the report's page minus the reporting offset).
    pub first: u64,
    /// 4K pages.
    pub pages: u64,
    /// Report attributes.
    pub attributes: u16,
    /// Report range id (the BAR).
    pub range_id: u16,
    /// DMABUF.IMPORT done: the frames are the TDI's; no host call maps them elsewhere.
    pub imported: bool,
    /// DMABUF.REVOKE done: the exporter took the memory back; only unmapping remains.
    pub revoked: bool,
    /// GPA of the range's first page, fixed by its first MMIO.MAP (the range is placed
    /// linearly, so each frame has exactly one GPA).
    pub gpa_base: Option<u64>,
    /// 4K pages mapped in the S-EPT (any MMIO state).
    pub mapped: u64,
    /// Latest TLB epoch at which a page of the range was blocked.
    pub bepoch: u64,
}

impl MmioRange {
    /// True if the host frame `pfn` lies in the range.
    pub const fn contains(&self, pfn: u64) -> bool {
        pfn >= self.first && pfn - self.first < self.pages
    }
}

/// A TDI.
#[derive(Clone, Debug)]
pub struct Tdi {
    /// Its control page (PAMT type `Tdi`, owned by the TD).
    pub page: Pfn,
    /// The TD it is bound to (slot) and its TDR.
    pub td: usize,
    /// The bound TD's TDR.
    pub tdr: Pfn,
    /// The PDEV it talks through (slot).
    pub pdev: usize,
    /// Function id (RID, segment).
    pub function: u32,
    /// PASID of a Scalable-IOV assignable interface, if any.
    pub pasid: Option<u32>,
    /// State.
    pub state: TdiState,
    /// Flags of the current lock.
    pub lock_flags: u16,
    /// The current lock's IDE stream.
    pub stream: u8,
    /// Successful locks so far; the current lock's number.
    pub generation: u32,
    /// START_INTERFACE_NONCE of the current lock. Never leaves the TSM.
    pub nonce: [u8; 32],
    /// The lock generation the guest authorised START for.
    pub authorised: Option<u32>,
    /// MMIO_REPORTING_OFFSET of the current lock (bytes).
    pub reporting_offset: u64,
    /// The interface report of the current lock (or being read).
    pub report: [u8; REPORT_MAX],
    /// Bytes of it.
    pub report_len: usize,
    /// SHA-384 of the report.
    pub report_digest: [u8; 48],
    /// The report's ranges as host frames.
    pub ranges: [MmioRange; MAX_RANGES],
    /// How many.
    pub range_count: usize,
    /// Why it went to Error.
    pub fault: Option<DeviceFault>,
}

impl Tdi {
    /// A TDI in `Unlocked`.
    pub fn new(page: Pfn, td: usize, tdr: Pfn, pdev: usize, function: u32, pasid: Option<u32>) -> Tdi {
        Tdi {
            page,
            td,
            tdr,
            pdev,
            function,
            pasid,
            state: TdiState::Unlocked,
            lock_flags: 0,
            stream: 0,
            generation: 0,
            nonce: [0; 32],
            authorised: None,
            reporting_offset: 0,
            report: [0; REPORT_MAX],
            report_len: 0,
            report_digest: [0; 48],
            ranges: [MmioRange::default(); MAX_RANGES],
            range_count: 0,
            fault: None,
        }
    }

    /// The requester the TDI's function names (segment and RID): the interface, as TDISP
    /// addresses it. `None` only for a malformed id, which TDI.CREATE refuses.
    pub fn requester(&self) -> Option<crate::pdev::Requester> {
        crate::pdev::requester(u64::from(self.function))
    }

    /// The key of the TDI's DMA remapping entry in the trusted IOMMU: its RID, and its PASID for
    /// a Scalable-IOV interface.
    ///
    /// # Errors
    /// [`IommuError::SegmentNotServed`] if the function is on another PCI segment than the one
    /// the trusted IOMMU remaps (the key is a RID, which names a function only within its
    /// segment); [`IommuError::PasidOutOfRange`] for a PASID past 20 bits.
    pub fn try_dmar_key(&self) -> Result<crate::iommu::DmarKey, IommuError> {
        let requester = self.requester().ok_or(IommuError::SegmentNotServed)?;
        if requester.segment != crate::iommu::SEGMENT {
            return Err(IommuError::SegmentNotServed);
        }
        let pasid = match self.pasid {
            Some(p) => Some(crate::iommu::Pasid::new(p).ok_or(IommuError::PasidOutOfRange)?),
            None => None,
        };
        Ok(crate::iommu::DmarKey { rid: crate::iommu::Rid::from_raw(requester.rid), pasid })
    }

    /// [`Tdi::try_dmar_key`], for lookups: a TDI without a key has no entry.
    pub fn dmar_key(&self) -> Option<crate::iommu::DmarKey> {
        self.try_dmar_key().ok()
    }

    /// The ranges of the current report.
    pub fn ranges(&self) -> &[MmioRange] {
        &self.ranges[..self.range_count]
    }

    /// 4K pages of MMIO mapped in the S-EPT, over all ranges.
    pub fn mapped_pages(&self) -> u64 {
        self.ranges().iter().map(|r| r.mapped).sum()
    }

    /// The range holding host frame `pfn`, if the host imported it.
    pub fn imported_range(&self, pfn: u64) -> Option<usize> {
        self.ranges().iter().position(|r| r.imported && r.contains(pfn))
    }

    /// Turns a checked report into host-frame ranges: each reported page number minus the
    /// reporting offset. A device must add the MMIO_REPORTING_OFFSET of LOCK_INTERFACE_REQUEST to
    /// every range it reports (TDISP, PCIe 6.x §11.3.7), so a range below it is one the device
    /// did not offset: its FIRST_PAGE cannot be told apart from an offset address of another
    /// range, and no frame of it can be trusted.
    ///
    /// # Errors
    /// [`ReportError::OffsetNotApplied`] naming the first such range and the page it reported.
    pub fn host_ranges(
        report: &InterfaceReport<'_>,
        reporting_offset: u64,
    ) -> Result<([MmioRange; MAX_RANGES], usize), ReportError> {
        let mut out = [MmioRange::default(); MAX_RANGES];
        let offset_pages = reporting_offset >> 12;
        for (index, (dst, r)) in out.iter_mut().zip(report.ranges()).enumerate() {
            let first = r
                .first_page
                .checked_sub(offset_pages)
                .ok_or(ReportError::OffsetNotApplied { index, first_page: r.first_page })?;
            *dst = MmioRange {
                first,
                pages: u64::from(r.pages),
                attributes: r.attributes,
                range_id: r.range_id,
                ..MmioRange::default()
            };
        }
        Ok((out, report.ranges().len()))
    }
}
