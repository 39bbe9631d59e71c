//! The global invariants of the TSM, read off its whole state: what must hold between any two
//! ABI calls, whatever the host, the guests and the devices did. Tests and the `abi_calls` fuzz
//! target call [`Tsm::check_invariants`] after every step; the TSM itself never does (it is a
//! read-only audit, not a runtime check).
//!
//! Each rule is its own function and its own [`Violation`] variant, which names the object that
//! breaks it. The rules:
//! - **memory** ([`Tsm::audit_sept`]): every S-EPT entry of a built TD reaches a frame its TD
//!   owns with the PAMT type of its role (table: S-EPT; leaf: regular at the leaf's level); no
//!   frame is reached twice; every guest page or table a TD owns is reached; the PAMT's count of
//!   a TD's frames is the TD's own;
//! - **MMIO** (same walk): every MMIO leaf is a frame of an imported range of a TDI bound to that
//!   TD, at the one GPA the range's placement gives it, never convertible memory; an
//!   MMIO_PENDING or MMIO_MAPPED leaf belongs to a TDI in CONFIG_LOCKED or RUN whose range was
//!   not revoked; each range's count of mapped pages is what the S-EPT holds;
//! - **imported MMIO is device MMIO** ([`Tsm::audit_imports`]): every imported range lies in
//!   one of the platform's MMIO windows, and no frame of it is convertible memory, TSM memory
//!   or memory the platform backs as RAM;
//! - **one TDI per interface** ([`Tsm::audit_interfaces`]): TDISP addresses an interface by its
//!   function id, so a function id is bound to at most one TDI (whatever its PASID);
//! - **RUN is live** ([`Tsm::audit_running`]): a TDI in RUN has a connected PDEV with a live
//!   session and live keys on its IDE stream; a TDI that is neither CONFIG_LOCKED nor RUN has no
//!   DMA entry that passes DMA;
//! - **one exchange per device, owned by a live object** ([`Tsm::audit_exchanges`]): a PDEV's
//!   outstanding exchange (at most one, by construction) belongs to the PDEV in a state where
//!   its flow can run (CONNECT while NEW, the others while CONNECTED), to one of its streams
//!   that can still be keyed or stopped, or to a TDI of this PDEV, over a live session; no flow
//!   outlives the object or the session it runs in (an ABORT, a failure or a teardown ends it);
//! - **the report lists every TDI** and **the evidence hashes to what it signs**
//!   ([`Tsm::audit_reports`]): each built TD's native report lists every TDI bound to it (or
//!   cannot be produced at all), each entry carries the TDI's state and digests, and the evidence
//!   the host hands the verifier ([`Tsm::tdi_evidence`]) hashes to those digests.
//!
//! "The device's last confirmed state is RUN" is the TSM's TDI state by construction (it moves
//! only on an answer it authenticated); with one TDI per interface no other flow can confirm
//! another state for that interface. Tests that hold the device also compare its own state.
//!
//! No heap: the walk's "reached" set is a bitmap the caller lends
//! ([`Tsm::audit_scratch_words`] words).

use sha2::{Digest, Sha384};

use crate::addr::{FrameRange, PageSize, Pfn};
use crate::iommu::DmarState;
use crate::pamt::PageType;
use crate::pdev::{Flow, IdeStream, Owner, Pdev, PdevState, StreamState};
use crate::platform::Platform;
use crate::sept::{SeptEntry, SeptState};
use crate::td::{Lifecycle, Td, MAX_TDS};
use crate::tdi::{Tdi, TdiState, MAX_TDIS};
use crate::tdisp::MAX_RANGES;
use crate::Tsm;

/// Which part of a TDI's evidence disagrees with its digest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EvidencePart {
    /// The certificate chain and `cert_chain_sha384`.
    Chain,
    /// The VCA and signed measurement exchange and `measurements_transcript_sha384`.
    Measurements,
    /// The interface report and `interface_report_sha384`.
    InterfaceReport,
    /// The report entry's TDISP state and the TDI's.
    State,
}

/// A broken invariant: the rule, and the object that breaks it (TDR, TDI page, frame, GPA).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Violation {
    /// The caller's scratch bitmap is shorter than [`Tsm::audit_scratch_words`].
    ScratchTooSmall {
        /// Words needed.
        needed: usize,
    },
    /// An S-EPT entry does not decode.
    SeptEntryCorrupt {
        /// The TD.
        tdr: Pfn,
        /// The table.
        table: Pfn,
        /// The entry's index.
        index: usize,
    },
    /// A table or memory leaf reaches a frame outside the TDMRs.
    SeptFrameNotConvertible {
        /// The TD.
        tdr: Pfn,
        /// The frame.
        pfn: Pfn,
    },
    /// An entry reaches a frame another TD (or the host) owns.
    SeptFrameOwner {
        /// The TD whose S-EPT holds the entry.
        tdr: Pfn,
        /// The frame.
        pfn: Pfn,
        /// Its owner in the PAMT.
        owner: Pfn,
    },
    /// An entry reaches a frame whose PAMT type or level is not that of its role.
    SeptFrameType {
        /// The TD.
        tdr: Pfn,
        /// The frame.
        pfn: Pfn,
        /// The type the PAMT holds.
        ty: PageType,
        /// The level the PAMT holds.
        level: u8,
    },
    /// A frame is reached twice (two GPAs, two TDs, or a table twice).
    FrameReachedTwice {
        /// The frame.
        pfn: Pfn,
    },
    /// A guest page or S-EPT table a TD owns is reached by no entry.
    FrameLeaked {
        /// The TD.
        tdr: Pfn,
        /// The frame.
        pfn: Pfn,
    },
    /// The PAMT's count of a TD's frames is not the TD's.
    OwnedFramesMismatch {
        /// The TD.
        tdr: Pfn,
        /// Frames the PAMT says it owns (besides the TDR).
        pamt: u64,
        /// Frames the TD counts.
        td: u64,
    },
    /// An MMIO leaf on convertible memory.
    MmioOnConvertible {
        /// The TD.
        tdr: Pfn,
        /// The GPA.
        gpa: u64,
    },
    /// An MMIO leaf on frames no TDI imported.
    MmioNotImported {
        /// The TD.
        tdr: Pfn,
        /// The GPA.
        gpa: u64,
    },
    /// An MMIO leaf on frames a TDI of another TD imported.
    MmioWrongTd {
        /// The TD whose S-EPT holds the leaf.
        tdr: Pfn,
        /// The TDI that imported the frames.
        tdi: Pfn,
        /// The GPA.
        gpa: u64,
    },
    /// An MMIO_PENDING or MMIO_MAPPED leaf of a TDI that is not CONFIG_LOCKED or RUN, or of a
    /// revoked range: the guest reaches a device it must not.
    MmioLive {
        /// The TDI.
        tdi: Pfn,
        /// Its state.
        state: TdiState,
        /// The GPA.
        gpa: u64,
    },
    /// An MMIO leaf away from the one GPA its range's placement gives it.
    MmioMisplaced {
        /// The TDI.
        tdi: Pfn,
        /// The GPA.
        gpa: u64,
    },
    /// A range's count of mapped pages is not what the S-EPT holds.
    MmioCount {
        /// The TDI.
        tdi: Pfn,
        /// The range index.
        range: usize,
        /// Pages the S-EPT maps.
        sept: u64,
        /// Pages the range records.
        recorded: u64,
    },
    /// An imported MMIO range is not device MMIO: outside the platform's MMIO windows, or
    /// convertible, the TSM's or memory the platform backs.
    ImportedRam {
        /// The TDI.
        tdi: Pfn,
        /// The range index.
        range: usize,
    },
    /// Two TDIs address the same TDISP interface (function id).
    InterfaceBoundTwice {
        /// The function id.
        function: u32,
        /// One TDI.
        first: Pfn,
        /// The other.
        second: Pfn,
    },
    /// A TDI in RUN whose PDEV is not connected or has no session.
    RunWithoutSession {
        /// The TDI.
        tdi: Pfn,
    },
    /// A TDI in RUN whose IDE stream holds no live keys.
    RunWithoutKeys {
        /// The TDI.
        tdi: Pfn,
    },
    /// A DMA entry that passes DMA (ACCEPTED) for a TDI that is neither CONFIG_LOCKED nor RUN.
    DmaLive {
        /// The TDI.
        tdi: Pfn,
        /// Its state.
        state: TdiState,
    },
    /// A TD's report omits a TDI bound to it.
    ReportOmitsTdi {
        /// The TD.
        tdr: Pfn,
        /// TDIs bound to it.
        bound: usize,
        /// Entries the report lists.
        listed: usize,
    },
    /// A report entry disagrees with its TDI, or the evidence with the digests.
    EvidenceMismatch {
        /// The TDI.
        tdi: Pfn,
        /// What disagrees.
        part: EvidencePart,
    },
    /// A PDEV's outstanding exchange belongs to no live object, or to one whose state cannot
    /// run it (an exchange left behind by ABORT, a failure or a teardown).
    ExchangeOrphaned {
        /// The PDEV.
        pdev: Pfn,
        /// What the exchange was, as the PDEV summary names it.
        pending: crate::pdev::Pending,
        /// The PDEV's state.
        state: PdevState,
    },
    /// The report binds a TDI's evidence that the TSM cannot hand out.
    EvidenceMissing {
        /// The TDI.
        tdi: Pfn,
    },
}

/// A TDI as the audit sees it: which interface it addresses and what the TSM last confirmed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BoundInterface {
    /// The TDI page.
    pub page: Pfn,
    /// The TD it is bound to (TDR).
    pub tdr: Pfn,
    /// Function id.
    pub function: u32,
    /// PASID, if any.
    pub pasid: Option<u32>,
    /// The TDISP state the TSM last confirmed.
    pub state: TdiState,
    /// A TDISP flow is outstanding (the device may be ahead of the TSM).
    pub flow: bool,
}

impl<P: Platform> Tsm<P> {
    /// Every TDI, in slot order, as the audit sees it (tests compare it with the device).
    pub fn bound_interfaces(&self) -> impl Iterator<Item = BoundInterface> + '_ {
        self.tdis.iter().enumerate().filter_map(|(i, t)| t.as_ref().map(|t| (i, t))).map(|(i, t)| BoundInterface {
            page: t.page,
            tdr: t.tdr,
            function: t.function,
            pasid: t.pasid,
            state: t.state,
            flow: self.tdi_exchanging(t, i),
        })
    }

    /// Words of the bitmap [`Tsm::check_invariants`] needs: one bit per TDMR frame.
    pub fn audit_scratch_words(&self) -> usize {
        let frames: u64 = self.tdmrs().iter().map(|t| t.frames.count).sum();
        usize::try_from(frames.div_ceil(64)).unwrap_or(usize::MAX)
    }

    /// Checks every invariant; `scratch` is zeroed and used as the set of frames the S-EPTs
    /// reach ([`Tsm::audit_scratch_words`] words).
    ///
    /// # Errors
    /// The first [`Violation`] found.
    pub fn check_invariants(&self, scratch: &mut [u64]) -> Result<(), Violation> {
        self.audit_sept(scratch)?;
        self.audit_imports()?;
        self.audit_interfaces()?;
        self.audit_running()?;
        self.audit_exchanges()?;
        self.audit_reports()
    }

    /// The bit of `pfn` in the scratch bitmap, if it is convertible.
    fn frame_bit(&self, pfn: Pfn) -> Option<usize> {
        let mut base = 0u64;
        for t in self.tdmrs() {
            if t.frames.contains(pfn) {
                return usize::try_from(base + (pfn.raw() - t.frames.start.raw())).ok();
            }
            base += t.frames.count;
        }
        None
    }

    /// Marks a frame reached; a frame reached before is a violation.
    fn reach(&self, scratch: &mut [u64], pfn: Pfn) -> Result<(), Violation> {
        let bit = self.frame_bit(pfn).ok_or(Violation::FrameReachedTwice { pfn })?;
        let word = scratch.get_mut(bit / 64).ok_or(Violation::ScratchTooSmall { needed: bit / 64 + 1 })?;
        if *word & 1 << (bit % 64) != 0 {
            return Err(Violation::FrameReachedTwice { pfn });
        }
        *word |= 1 << (bit % 64);
        Ok(())
    }

    /// True if the TD's S-EPT is live: built and not torn down (a torn-down TD never runs
    /// again, and RECLAIM takes its tables apart in any order).
    fn walked(td: &Td) -> bool {
        matches!(td.lifecycle, Lifecycle::Initialized | Lifecycle::Runnable)
    }

    /// Memory and MMIO ownership: the S-EPT of every built TD against the PAMT and the TDIs.
    pub fn audit_sept(&self, scratch: &mut [u64]) -> Result<(), Violation> {
        let needed = self.audit_scratch_words();
        let scratch = scratch.get_mut(..needed).ok_or(Violation::ScratchTooSmall { needed })?;
        scratch.fill(0);
        let mut mmio = [[0u64; MAX_RANGES]; MAX_TDIS];
        for (slot, td) in self.tds.iter().enumerate() {
            let Some(td) = td.as_ref().filter(|td| Self::walked(td)) else { continue };
            self.audit_table(slot, td, td.sept_root(), td.root_level(), 0, scratch, &mut mmio)?;
        }
        self.audit_accounting(scratch)?;
        self.audit_mmio_counts(&mmio)
    }

    /// One S-EPT table of the TD in `slot` (at `level`, mapping GPAs from `base`) and every
    /// table below it: recursion as deep as the S-EPT (5 levels at most).
    #[allow(clippy::too_many_arguments)]
    fn audit_table(
        &self,
        slot: usize,
        td: &Td,
        table: Pfn,
        level: u8,
        base: u64,
        scratch: &mut [u64],
        mmio: &mut [[u64; MAX_RANGES]; MAX_TDIS],
    ) -> Result<(), Violation> {
        for i in 0..512 {
            let corrupt = Violation::SeptEntryCorrupt { tdr: td.tdr, table, index: i };
            let e = SeptEntry::decode(self.platform.read_u64(table, i)).ok_or(corrupt)?;
            let gpa = base + ((i as u64) << (12 + 9 * u32::from(level)));
            match e.state() {
                SeptState::Free => {}
                s if s.is_table() => {
                    if level == 0 {
                        return Err(corrupt);
                    }
                    self.audit_frame(td, e.pfn(), PageType::Sept, 0)?;
                    self.reach(scratch, e.pfn())?;
                    self.audit_table(slot, td, e.pfn(), level - 1, gpa, scratch, mmio)?;
                }
                SeptState::MmioPending | SeptState::MmioMapped | SeptState::MmioBlocked => {
                    self.audit_mmio_leaf(slot, td, e, level, gpa, mmio)?;
                }
                _ => {
                    let size = PageSize::from_level(level).ok_or(corrupt)?;
                    for k in 0..size.frames() {
                        let f = e.pfn().checked_add(k).ok_or(corrupt)?;
                        self.audit_frame(td, f, PageType::Regular, level)?;
                        self.reach(scratch, f)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// A frame an entry of `td` reaches: owned by it, of type `ty` (and `level` for a leaf).
    fn audit_frame(&self, td: &Td, pfn: Pfn, ty: PageType, level: u8) -> Result<(), Violation> {
        let meta = self.pamt_entry(pfn).ok_or(Violation::SeptFrameNotConvertible { tdr: td.tdr, pfn })?;
        if meta.owner != td.tdr || meta.ty == PageType::Free {
            return Err(Violation::SeptFrameOwner { tdr: td.tdr, pfn, owner: meta.owner });
        }
        if meta.ty != ty || (ty == PageType::Regular && meta.level != level) {
            return Err(Violation::SeptFrameType { tdr: td.tdr, pfn, ty: meta.ty, level: meta.level });
        }
        Ok(())
    }

    /// An MMIO leaf of the TD in `slot` at `gpa`: imported by a TDI of that TD, placed where
    /// the range says, live only while the TDI is; counted into `mmio`.
    fn audit_mmio_leaf(
        &self,
        slot: usize,
        td: &Td,
        e: SeptEntry,
        level: u8,
        gpa: u64,
        mmio: &mut [[u64; MAX_RANGES]; MAX_TDIS],
    ) -> Result<(), Violation> {
        let tdr = td.tdr;
        if self.pamt_entry(e.pfn()).is_some() {
            return Err(Violation::MmioOnConvertible { tdr, gpa });
        }
        let owner = self.tdis.iter().enumerate().find_map(|(t, tdi)| {
            let tdi = tdi.as_ref()?;
            tdi.imported_range(e.pfn().raw()).map(|r| (t, tdi, r))
        });
        let (t, tdi, r) = owner.ok_or(Violation::MmioNotImported { tdr, gpa })?;
        if tdi.td != slot || tdi.tdr != tdr {
            return Err(Violation::MmioWrongTd { tdr, tdi: tdi.page, gpa });
        }
        let range = tdi.ranges[r];
        let frames = PageSize::from_level(level).map_or(0, PageSize::frames);
        let live = matches!(e.state(), SeptState::MmioPending | SeptState::MmioMapped);
        if live && (!matches!(tdi.state, TdiState::Locked | TdiState::Run) || range.revoked) {
            return Err(Violation::MmioLive { tdi: tdi.page, state: tdi.state, gpa });
        }
        let delta = (e.pfn().raw() - range.first) << 12;
        let placed = range.gpa_base.and_then(|b| b.checked_add(delta)) == Some(gpa);
        if !placed || frames == 0 || !range.contains(e.pfn().raw() + frames - 1) {
            return Err(Violation::MmioMisplaced { tdi: tdi.page, gpa });
        }
        mmio[t][r] += frames;
        Ok(())
    }

    /// The PAMT's view of every TD: its count of frames, and no guest page or table unreached.
    fn audit_accounting(&self, scratch: &[u64]) -> Result<(), Violation> {
        let mut owned = [0u64; MAX_TDS];
        for tdmr in self.tdmrs() {
            for k in 0..tdmr.frames.count {
                let Some(f) = tdmr.frames.start.checked_add(k) else { break };
                let Some(meta) = self.pamt_entry(f) else { continue };
                if matches!(meta.ty, PageType::Free | PageType::Reserved) || meta.owner == f {
                    continue;
                }
                let Some(slot) = self.tds.iter().position(|t| t.as_ref().is_some_and(|t| t.tdr == meta.owner)) else {
                    continue;
                };
                owned[slot] += 1;
                let walked = self.tds[slot].as_ref().is_some_and(Self::walked);
                if walked && matches!(meta.ty, PageType::Regular | PageType::Sept) {
                    let bit = self.frame_bit(f).unwrap_or(usize::MAX);
                    let reached = scratch.get(bit / 64).is_some_and(|w| w & 1 << (bit % 64) != 0);
                    if !reached {
                        return Err(Violation::FrameLeaked { tdr: meta.owner, pfn: f });
                    }
                }
            }
        }
        for (slot, td) in self.tds.iter().enumerate() {
            let Some(td) = td else { continue };
            if owned[slot] != td.owned_frames {
                return Err(Violation::OwnedFramesMismatch { tdr: td.tdr, pamt: owned[slot], td: td.owned_frames });
            }
        }
        Ok(())
    }

    /// Each range's count of mapped pages against what the walk found (TDIs of walked TDs).
    fn audit_mmio_counts(&self, mmio: &[[u64; MAX_RANGES]; MAX_TDIS]) -> Result<(), Violation> {
        for (t, tdi) in self.tdis.iter().enumerate() {
            let Some(tdi) = tdi else { continue };
            if !self.tds.get(tdi.td).and_then(Option::as_ref).is_some_and(Self::walked) {
                continue;
            }
            for (r, range) in tdi.ranges().iter().enumerate() {
                if range.mapped != mmio[t][r] {
                    return Err(Violation::MmioCount {
                        tdi: tdi.page,
                        range: r,
                        sept: mmio[t][r],
                        recorded: range.mapped,
                    });
                }
            }
        }
        Ok(())
    }

    /// Every imported range is device MMIO: inside one of the platform's MMIO windows, and no
    /// frame of it convertible, the TSM's or memory the platform backs.
    pub fn audit_imports(&self) -> Result<(), Violation> {
        let Some(sys) = self.sys.as_ref() else { return Ok(()) };
        for tdi in self.tdis.iter().flatten() {
            for (r, range) in tdi.ranges().iter().enumerate().filter(|(_, r)| r.imported) {
                let ram = Pfn::new(range.first).is_none_or(|start| {
                    let frames = FrameRange { start, count: range.pages };
                    !sys.in_mmio_window(frames)
                        || self.is_private(frames)
                        || self.tdmrs().iter().any(|t| t.frames.overlaps(frames))
                        || self.platform.is_ram(frames)
                });
                if ram {
                    return Err(Violation::ImportedRam { tdi: tdi.page, range: r });
                }
            }
        }
        Ok(())
    }

    /// A function id is bound to at most one TDI: TDISP addresses the interface by it.
    pub fn audit_interfaces(&self) -> Result<(), Violation> {
        for (i, a) in self.tdis.iter().enumerate() {
            let Some(a) = a else { continue };
            if let Some(b) = self.tdis[i + 1..].iter().flatten().find(|b| b.function == a.function) {
                return Err(Violation::InterfaceBoundTwice { function: a.function, first: a.page, second: b.page });
            }
        }
        Ok(())
    }

    /// RUN means a connected PDEV, a live session, live keys; DMA passes only while the TDI is
    /// CONFIG_LOCKED or RUN.
    pub fn audit_running(&self) -> Result<(), Violation> {
        for tdi in self.tdis.iter().flatten() {
            if !matches!(tdi.state, TdiState::Locked | TdiState::Run) && self.tdi_dmar(tdi) == Some(DmarState::Accepted)
            {
                return Err(Violation::DmaLive { tdi: tdi.page, state: tdi.state });
            }
            if tdi.state != TdiState::Run {
                continue;
            }
            let pdev = self.pdevs.get(tdi.pdev).and_then(Option::as_ref);
            // A KEY_UPDATE in progress holds the session; it is still live.
            let live = pdev.is_some_and(|p| p.state == PdevState::Connected && p.live_session());
            if !live {
                return Err(Violation::RunWithoutSession { tdi: tdi.page });
            }
            let keys = pdev.is_some_and(|p| {
                p.streams
                    .iter()
                    .position(|s| s.as_ref().is_some_and(|s| s.id == tdi.stream))
                    .is_some_and(|i| p.stream_secure(i))
            });
            if !keys {
                return Err(Violation::RunWithoutKeys { tdi: tdi.page });
            }
        }
        Ok(())
    }

    /// A PDEV's one outstanding exchange is owned by a live object that can still run it.
    pub fn audit_exchanges(&self) -> Result<(), Violation> {
        for (p, pdev) in self.pdevs.iter().enumerate() {
            let Some(pdev) = pdev else { continue };
            if !exchange_live(p, pdev, &self.tdis) {
                return Err(Violation::ExchangeOrphaned {
                    pdev: pdev.page,
                    pending: pdev.pending(),
                    state: pdev.state,
                });
            }
        }
        Ok(())
    }

    /// Every built TD's report lists every TDI bound to it with its state and digests, and the
    /// evidence handed out hashes to those digests.
    pub fn audit_reports(&self) -> Result<(), Violation> {
        for td in self.tds.iter().flatten().filter(|td| Self::walked(td)) {
            let bound = self.tdis.iter().flatten().filter(|t| t.tdr == td.tdr).count();
            let report = match self.native_report(td, &[0; attest::report::REPORT_DATA_BYTES]) {
                Ok(r) => r,
                // No report at all is not a silent cut; anything else is.
                Err(_) if bound > attest::report::MAX_DEVICES => continue,
                Err(_) => return Err(Violation::ReportOmitsTdi { tdr: td.tdr, bound, listed: 0 }),
            };
            let listed = report.devices();
            if listed.len() != bound {
                return Err(Violation::ReportOmitsTdi { tdr: td.tdr, bound, listed: listed.len() });
            }
            for (tdi, entry) in self.tdis.iter().flatten().filter(|t| t.tdr == td.tdr).zip(listed) {
                let mismatch = |part| Err(Violation::EvidenceMismatch { tdi: tdi.page, part });
                if entry.tdi_state() != Some(tdi.state.tdisp()) {
                    return mismatch(EvidencePart::State);
                }
                let ev = self.tdi_evidence(tdi.page).ok_or(Violation::EvidenceMissing { tdi: tdi.page })?;
                let chain: [u8; 48] = Sha384::digest(ev.chain).into();
                if chain != ev.device.chain_digest || chain != entry.cert_chain_sha384 {
                    return mismatch(EvidencePart::Chain);
                }
                let meas = attest::evidence::transcript_digest(ev.vca, ev.measurements);
                if meas != ev.device.measurements_digest || meas != entry.measurements_transcript_sha384 {
                    return mismatch(EvidencePart::Measurements);
                }
                if entry.interface_report_sha384 != tdi.report_digest {
                    return mismatch(EvidencePart::InterfaceReport);
                }
                // The report binds a configuration only while it is locked: an unlocked TDI
                // (never locked, or re-locking) has no report to hand out.
                let report: [u8; 48] = Sha384::digest(ev.report).into();
                if matches!(tdi.state, TdiState::Locked | TdiState::Run) && report != ev.report_digest {
                    return mismatch(EvidencePart::InterfaceReport);
                }
            }
        }
        Ok(())
    }
}

/// True if PDEV `p` has no exchange, or one its owner can still run: CONNECT while NEW (its
/// measurements inside the session it just established), the
/// PDEV's other flows while CONNECTED (KEY_UPDATE holding the session, the others beside it),
/// IDE_KM for a stream of the PDEV that is not BLOCKED or ERROR, TDISP for a TDI of this PDEV.
fn exchange_live(p: usize, pdev: &Pdev, tdis: &[Option<Tdi>]) -> bool {
    let Some(x) = pdev.exchange.as_ref() else { return true };
    let session = pdev.state == PdevState::Connected && pdev.session.is_some();
    match (x.owner(), x.flow()) {
        (Owner::Pdev, Flow::Connect) => pdev.state == PdevState::New,
        (Owner::Pdev, Flow::Measure(m)) if m.connecting => pdev.state == PdevState::New && pdev.session.is_some(),
        (Owner::Pdev, Flow::EndSession(_) | Flow::Heartbeat(_) | Flow::Measure(_)) => session,
        (Owner::Pdev, Flow::KeyUpdate(_)) => pdev.state == PdevState::Connected && pdev.session.is_none(),
        (Owner::Stream(s), Flow::IdeKm(_)) => {
            let keyable =
                |st: &IdeStream| matches!(st.state, StreamState::Created | StreamState::Stopped | StreamState::Secure);
            session && pdev.streams.get(s).and_then(Option::as_ref).is_some_and(keyable)
        }
        (Owner::Tdi(t), Flow::Tdisp(_)) => {
            session && tdis.get(t).and_then(Option::as_ref).is_some_and(|tdi| tdi.pdev == p)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pdev::km::KeyMaterial;
    use crate::pdev::{Exchange, KmFlow, KmOp};
    use crate::spdm::connect::{Connect, ConnectRandom};
    use crate::tdi::{TdiFlow, TdiOp};
    use crate::tdisp::InterfaceId;

    fn pdev(state: PdevState, exchange: Option<Exchange>) -> Pdev {
        let random = ConnectRandom {
            challenge_nonce: [0; 32],
            measurement_nonce: [0; 32],
            context: [0; 8],
            ephemeral: [0; 48],
            random: [0; 32],
        };
        Pdev {
            page: Pfn::new(0x100).unwrap_or(Pfn::ZERO),
            function: 0x100,
            state,
            conn: Connect::new(random),
            session: None,
            evidence: None,
            exchange,
            streams: core::array::from_fn(|_| None),
            tdis: 0,
            fault: None,
            measured: None,
        }
    }

    #[test]
    fn a_pdev_without_an_exchange_is_sound() {
        assert!(exchange_live(0, &pdev(PdevState::Error, None), &[]));
    }

    #[test]
    fn connect_runs_only_while_new() {
        assert!(exchange_live(0, &pdev(PdevState::New, Some(Exchange::connect())), &[]));
        assert!(!exchange_live(0, &pdev(PdevState::Error, Some(Exchange::connect())), &[]));
    }

    #[test]
    fn a_session_flow_left_behind_on_a_failed_pdev_is_orphaned() {
        // What ABORT during RECOLLECT used to leave: a PDEV in ERROR, its session gone, and the
        // exchange still allocated.
        let p = pdev(PdevState::Error, Some(Exchange::end_session(0x12)));
        assert!(!exchange_live(0, &p, &[]));
        let p = pdev(PdevState::Connected, Some(Exchange::end_session(0x12)));
        assert!(!exchange_live(0, &p, &[]), "connected but no session to run it in");
    }

    #[test]
    fn an_exchange_of_a_stream_or_tdi_that_is_gone_is_orphaned() {
        let material = KeyMaterial { keys: [[0; 32]; 6], ifvs: [[0; 8]; 6] };
        let km = KmFlow::new(KmOp::Setup, 0x12, 1, 0, false, material);
        assert!(!exchange_live(0, &pdev(PdevState::Connected, Some(Exchange::ide_km(0, km))), &[]));
        let flow = TdiFlow::new(TdiOp::Stop, 0x12, InterfaceId(0x100), [0; 32]);
        assert!(!exchange_live(
            0,
            &pdev(PdevState::Connected, Some(Exchange::tdisp(3, flow))),
            &[None, None, None, None]
        ));
    }
}
