//! Read-only views of the TSM's PDEVs and TDIs: summaries for tests and diagnostics, and the
//! device evidence the attestation report binds (the blobs and their digests).

use crate::addr::Pfn;
use crate::error::{DeviceFault, TsmError, TsmResult};
use crate::iommu::DmarState;
use crate::pdev::{Pdev, PdevEvidence, PdevState, Pending, StreamState, MAX_STREAMS};
use crate::platform::Platform;
use crate::spdm::session::Session;
use crate::tdi::{MmioRange, TdiState};
use crate::tdisp::MAX_RANGES;
use crate::Tsm;

/// Everything about a PDEV that a call may change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PdevSummary {
    /// State.
    pub state: PdevState,
    /// The outstanding request.
    pub pending: Pending,
    /// The session (keys and sequence numbers).
    pub session: Option<Session>,
    /// Evidence digests.
    pub evidence: Option<PdevEvidence>,
    /// Each stream's state and key set.
    pub streams: [Option<(StreamState, bool)>; MAX_STREAMS],
    /// TDIs on it.
    pub tdis: usize,
    /// Why it failed.
    pub fault: Option<DeviceFault>,
}

/// Everything about a TDI that a call may change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TdiSummary {
    /// State.
    pub state: TdiState,
    /// Lock generation.
    pub generation: u32,
    /// The guest's authorisation.
    pub authorised: Option<u32>,
    /// Lock flags.
    pub lock_flags: u16,
    /// SHA-384 of the report.
    pub report_digest: [u8; 48],
    /// MMIO ranges and what was done with them.
    pub ranges: [MmioRange; MAX_RANGES],
    /// How many.
    pub range_count: usize,
    /// DMA entry in the trusted IOMMU.
    pub dmar: Option<DmarState>,
    /// A flow is running.
    pub flow: bool,
    /// Why it failed.
    pub fault: Option<DeviceFault>,
}

/// The evidence of one TDI, as the attestation report binds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TdiEvidence<'a> {
    /// Function id.
    pub function: u32,
    /// TDISP state.
    pub state: crate::tdisp::TdiState,
    /// Lock flags.
    pub lock_flags: u16,
    /// The device's evidence digests and negotiated algorithms.
    pub device: PdevEvidence,
    /// The certificate chain (SPDM format).
    pub chain: &'a [u8],
    /// The VCA transcript.
    pub vca: &'a [u8],
    /// The signed measurement exchange.
    pub measurements: &'a [u8],
    /// The interface report.
    pub report: &'a [u8],
    /// Its SHA-384.
    pub report_digest: [u8; 48],
}

fn summary(p: &Pdev) -> PdevSummary {
    PdevSummary {
        state: p.state,
        pending: p.pending(),
        session: p.session.clone(),
        evidence: p.evidence,
        streams: core::array::from_fn(|i| p.streams[i].as_ref().map(|s| (s.state, s.key_set_1))),
        tdis: p.tdis,
        fault: p.fault,
    }
}

/// TDIs one TD may have bound: as many as its attestation report has device entries, so that
/// every interface that can reach the TD's memory is in the report the verifier sees
/// (`attest::report::MAX_DEVICES`; TDI.CREATE refuses the next one).
pub const MAX_TDIS_PER_TD: usize = attest::report::MAX_DEVICES;

impl<P: Platform> Tsm<P> {
    /// The number of TDIs bound to the TD in slot `td`.
    pub(crate) fn tdis_bound_to(&self, td: usize) -> usize {
        self.tdis.iter().flatten().filter(|t| t.td == td).count()
    }

    /// Refuses a further TDI for the TD in slot `td` once its report is full.
    pub(crate) fn require_report_room(&self, td: usize) -> TsmResult<()> {
        if self.tdis_bound_to(td) >= MAX_TDIS_PER_TD {
            return Err(TsmError::TdMaxTdis);
        }
        Ok(())
    }

    /// The summary of the PDEV whose page is `page`.
    pub fn pdev_summary(&self, page: Pfn) -> Option<PdevSummary> {
        self.pdevs.iter().flatten().find(|p| p.page == page).map(summary)
    }

    /// The summary of the TDI whose page is `page`.
    pub fn tdi_summary(&self, page: Pfn) -> Option<TdiSummary> {
        let (i, t) =
            self.tdis.iter().enumerate().find_map(|(i, t)| t.as_ref().filter(|t| t.page == page).map(|t| (i, t)))?;
        Some(TdiSummary {
            state: t.state,
            generation: t.generation,
            authorised: t.authorised,
            lock_flags: t.lock_flags,
            report_digest: t.report_digest,
            ranges: t.ranges,
            range_count: t.range_count,
            dmar: self.tdi_dmar(t),
            flow: self.tdi_exchanging(t, i),
            fault: t.fault,
        })
    }

    /// Every PDEV and TDI summary, in slot order (for "nothing changed" checks).
    pub fn device_summaries(
        &self,
    ) -> ([Option<PdevSummary>; crate::pdev::MAX_PDEVS], [Option<TdiSummary>; crate::tdi::MAX_TDIS]) {
        let pdevs = core::array::from_fn(|i| self.pdevs[i].as_ref().map(summary));
        let tdis = core::array::from_fn(|i| self.tdis[i].as_ref().and_then(|t| self.tdi_summary(t.page)));
        (pdevs, tdis)
    }

    /// The evidence of the TDI whose page is `page`, once its PDEV connected.
    pub fn tdi_evidence(&self, page: Pfn) -> Option<TdiEvidence<'_>> {
        let t = self.tdis.iter().flatten().find(|t| t.page == page)?;
        let p = self.pdevs.get(t.pdev)?.as_ref()?;
        Some(TdiEvidence {
            function: t.function,
            state: t.state.tdisp(),
            lock_flags: t.lock_flags,
            device: p.evidence?,
            chain: p.conn.chain_bytes()?,
            vca: p.conn.vca(),
            measurements: p.measurements()?,
            report: &t.report[..t.report_len],
            report_digest: t.report_digest,
        })
    }
}

impl<P: Platform> Tsm<P> {
    /// The trusted IOMMU, once set up: its tables are what a DMA request is translated through
    /// ([`crate::iommu::Iommu::translate`]).
    pub fn iommu(&self) -> Option<&crate::iommu::Iommu> {
        self.iommu.as_ref()
    }
}
