//! Host leaves of the TDI (CREATE, LOCK, START, STOP, REMOVE), of the device's private MMIO
//! (DMABUF.IMPORT / REVOKE) and of its S-EPT mappings (MMIO.MAP / BLOCK / UNMAP).
//!
//! The rules the anchors enforce, each with its own status: one outstanding TDISP request per
//! device; START only after the guest authorised the current lock; MMIO mapped only from a
//! range of the locked report the host imported, into the TD the TDI is bound to, linearly;
//! MMIO unmapped only after BLOCK, TLB tracking and STOP; REMOVE only with nothing mapped; a
//! device answer that fails, or a revoke, puts the TDI in ERROR and blocks its mappings.

use crate::abi::{LeafSpec, Reg, Regs};
use crate::addr::{FrameRange, GuestPhysAddr, PageSize, Pfn};
use crate::error::{DeviceFault, SeptErrorKind, TsmError, TsmResult};
use crate::pamt::{PageType, PamtEntry};
use crate::pdev::{Exchange, PdevState};
use crate::platform::Platform;
use crate::sept::{self, SeptEntry, SeptOp, SeptState, WalkResult};
use crate::status::{Operand, Status};
use crate::td::Lifecycle;
use crate::tdi::{Tdi, TdiFlow, TdiOp, TdiState, RANGE_NON_TEE};
use crate::tdisp::{lock_flags, InterfaceId};
use crate::Tsm;

use super::rows::*;

/// Bytes SEAMLESS.TDI.EVIDENCE.RD copies at most: one page.
const EVIDENCE_CHUNK: usize = 4096;

use super::exchange::{Call, TdiCall};
use super::host::{leaf, HostLeaf};

/// R9 of TDI.CREATE: PASID valid (bit 63) and PASID (51:32) beside the function id.
pub const PASID_VALID: u64 = 1 << 63;

const MSG: [(Status, &str); 5] = [
    (Status::OPERAND_INVALID, "RDX not 4K aligned, or R8 above 4096"),
    (Status::OPERAND_ADDR_RANGE_ERROR, "RDX not host memory the TSM may use"),
    (Status::PAGE_METADATA_INCORRECT, "RDX a page the TSM or a TD owns"),
    (Status::OPERAND_BUSY, "another request of the device is outstanding, or R8 = 0 while this one is"),
    (Status::NO_REQUEST_OUTSTANDING, "R8 non-zero but nothing is outstanding"),
];
const DEVICE: [(Status, &str); 3] = [
    (Status::DEVICE_REQUEST, "not an error: move R8 bytes to the device, call again with its answer"),
    (Status::ANSWER_NOT_AUTHENTIC, "the answer does not open under the session keys; nothing changed"),
    (
        Status::DEVICE_ERROR,
        "the device's answer failed a check; the TDI is now ERROR, its mappings blocked (RCX: step)",
    ),
];
const MMIO_GPA: (Reg, &str) = (Reg::Rcx, "GPA (51:12) and level (2:0): 0 = 4K, 1 = 2M");
const MMIO_PROLOGUE: [(Status, &str); 7] = [
    SYS,
    (Status::OPERAND_INVALID, "RCX reserved bits set or level above 1"),
    (Status::OPERAND_INVALID, "RDX not a 4K-aligned address"),
    (Status::OPERAND_ADDR_RANGE_ERROR, "RDX outside the TDMRs"),
    (Status::PAGE_METADATA_INCORRECT, "RDX is not a TDR page"),
    (Status::TD_NOT_FINALIZED, "TDH.MR.FINALIZE not done"),
    (Status::OPERAND_INVALID, "GPA misaligned, beyond the TD's width or shared"),
];

impl<P: Platform> Tsm<P> {
    pub(crate) const TDI_CREATE: HostLeaf<P> = HostLeaf {
        spec: LeafSpec {
            number: leaf::TDI_CREATE,
            name: "TDH.TDI.CREATE",
            summary: "Creates a TDI of a connected PDEV, bound to one TD for its whole life; the control page is owned by the TD. The interface is the function, as TDISP's INTERFACE_ID names it: one TDI per function, whatever the PASID (which only tags the TDI's DMA).",
            inputs: &[
                (Reg::Rcx, "TDR page"),
                (Reg::Rdx, "PDEV page"),
                (Reg::R8, "page to donate (the TDI page)"),
                (Reg::R9, "function id (24:0); PASID (51:32) if bit 63 is set"),
            ],
            outputs: &[],
            requires: "TD initialized, not torn down; PDEV CONNECTED.",
            errors: &[
                SYS,
                (Status::OPERAND_INVALID, "RCX not a 4K-aligned address"),
                (Status::OPERAND_ADDR_RANGE_ERROR, "RCX outside the TDMRs"),
                (Status::PAGE_METADATA_INCORRECT, "RCX is not a TDR page"),
                (Status::TD_NOT_INITIALIZED, "TDH.MNG.INIT not done"),
                (Status::LIFECYCLE_STATE_INCORRECT, "TD torn down"),
                (Status::TD_MAX_TDIS_EXCEEDED, "the TD has as many TDIs as its attestation report has device entries (4)"),
                (Status::PAGE_METADATA_INCORRECT, "RDX is not a PDEV page"),
                (Status::PDEV_STATE_INCORRECT, "PDEV not CONNECTED"),
                (Status::PAGE_NOT_FREE, "R8 page not free"),
                (Status::OPERAND_INVALID, "R9 reserved bits set, a segment without the segment-valid bit, or another segment than the PDEV's"),
                (Status::FUNCTION_IN_USE, "the interface (the function, with any PASID) already has a TDI"),
                (Status::DEVICE_SLOTS_EXHAUSTED, "every TDI slot in use"),
            ],
        },
        handler: Self::tdi_create,
    };

    pub(crate) const TDI_REMOVE: HostLeaf<P> = HostLeaf {
        spec: LeafSpec {
            number: leaf::TDI_REMOVE,
            name: "TDH.TDI.REMOVE",
            summary: "Removes a TDI; its page goes back to the host, zeroed. The last step of the unbind order STOP → MMIO unmap → DMAR remove → TDI remove.",
            inputs: &[(Reg::Rcx, "TDI page")],
            outputs: &[(Reg::Rcx, "the page released")],
            requires: "TDI CONFIG_UNLOCKED (never locked, or stopped); no MMIO mapped; no DMA remapping entry.",
            errors: &[
                SYS,
                TDI_RCX[0],
                TDI_RCX[1],
                TDI_RCX[2],
                (Status::OPERAND_BUSY, "a TDISP request of the TDI is outstanding"),
                (Status::TDI_STATE_INCORRECT, "TDI LOCKED, RUN or ERROR (STOP first)"),
                (Status::TDI_HAS_MAPPED_MMIO, "MMIO pages still mapped"),
                (Status::TDI_HAS_MAPPED_DMA, "a DMA remapping entry remains"),
            ],
        },
        handler: Self::tdi_remove,
    };

    pub(crate) const TDI_EVIDENCE_RD: HostLeaf<P> = HostLeaf {
        spec: LeafSpec {
            number: leaf::TDI_EVIDENCE_RD,
            name: "SEAMLESS.TDI.EVIDENCE.RD",
            summary: "seamless only: copies up to a page of one evidence record of a TDI into a host page, from a byte offset: the device's certificate chain (1), the VCA transcript (2) and the signed measurement exchange (3) its PDEV's connection kept, the TDI's interface report (4, empty until LOCK). The host forwards them to the verifier in `attest::evidence`'s bundle; they are the device's signed words, not secrets, and the TD's report binds their SHA-384, so a host that changes them is caught. The record types are the bundle's.",
            inputs: &[
                (Reg::Rcx, "TDI page"),
                (Reg::Rdx, "record type: 1 certificate chain, 2 VCA, 3 measurements, 4 interface report"),
                (Reg::R8, "byte offset into the record"),
                (Reg::R9, "host page to copy into (4K aligned)"),
            ],
            outputs: &[
                (Reg::Rcx, "the record's length in bytes"),
                (Reg::Rdx, "bytes copied: the record's bytes from the offset, at most 4096"),
            ],
            requires: "A TDI (its PDEV was CONNECTED when it was created, and keeps the evidence of its last good connection).",
            errors: &[
                SYS,
                TDI_RCX[0],
                TDI_RCX[1],
                TDI_RCX[2],
                (Status::OPERAND_INVALID, "RDX not a record type"),
                (Status::OPERAND_INVALID, "R9 not a 4K-aligned address"),
                (Status::OPERAND_ADDR_RANGE_ERROR, "R9 outside the memory the TSM reaches, or TSM memory"),
                (Status::PAGE_METADATA_INCORRECT, "R9 a page the host gave away"),
                (Status::OPERAND_INVALID, "R8 past the record's end"),
            ],
        },
        handler: Self::tdi_evidence_rd,
    };

    pub(crate) const TDI_LOCK: HostLeaf<P> = HostLeaf {
        spec: LeafSpec {
            number: leaf::TDI_LOCK,
            name: "SEAMLESS.TDI.LOCK",
            summary: "Resumable, inside the session: GET_VERSION, GET_CAPABILITIES, LOCK_INTERFACE (the TSM picks a random MMIO_REPORTING_OFFSET and keeps the nonce), GET_DEVICE_INTERFACE_STATE = CONFIG_LOCKED, then the whole DEVICE_INTERFACE_REPORT in portions, parsed and checked (bounded, sorted, non-overlapping ranges, known bits). On success the report is written to the message page for the host to hand to the guest.",
            inputs: &[(Reg::Rcx, "TDI page"), MSG_IN[0], MSG_IN[1], (Reg::R9, "first call: LOCK flags (15:0), IDE stream index (23:16)")],
            outputs: &[
                (Reg::R8, "DEVICE_REQUEST: bytes of the request; SUCCESS: bytes of the interface report in the message page"),
                WAIT_OUT,
                (Reg::Rcx, "SUCCESS: the lock generation (the guest authorises START for it)"),
            ],
            requires: "TDI CONFIG_UNLOCKED with nothing mapped; PDEV CONNECTED; the stream SECURE.",
            errors: &[
                SYS,
                TDI_RCX[0],
                TDI_RCX[1],
                TDI_RCX[2],
                MSG[0],
                MSG[1],
                MSG[2],
                MSG[3],
                MSG[4],
                (Status::TDI_STATE_INCORRECT, "TDI not CONFIG_UNLOCKED"),
                (Status::TDI_HAS_MAPPED_MMIO, "MMIO of an earlier lock still mapped"),
                (Status::TDI_HAS_MAPPED_DMA, "a DMA remapping entry remains"),
                (Status::OPERAND_INVALID, "R9: unknown lock flags, BIND_P2P, reserved bits, or no such stream"),
                (Status::PDEV_STATE_INCORRECT, "PDEV not CONNECTED"),
                (Status::IDE_STREAM_STATE_INCORRECT, "the stream has no live keys"),
                (Status::RND_NO_ENTROPY, "no entropy for the reporting offset"),
                DEVICE[0],
                DEVICE[1],
                DEVICE[2],
            ],
        },
        handler: Self::tdi_lock,
    };

    pub(crate) const TDI_START: HostLeaf<P> = HostLeaf {
        spec: LeafSpec {
            number: leaf::TDI_START,
            name: "SEAMLESS.TDI.START",
            summary: "Resumable, inside the session: START_INTERFACE with the lock's nonce (the host never sees it), then GET_DEVICE_INTERFACE_STATE = RUN.",
            inputs: &[(Reg::Rcx, "TDI page"), MSG_IN[0], MSG_IN[1]],
            outputs: &[(Reg::R8, "DEVICE_REQUEST: bytes of the request"), WAIT_OUT],
            requires: "TDI CONFIG_LOCKED; the guest authorised START for the current lock (TDG.TDI.START).",
            errors: &[
                SYS,
                TDI_RCX[0],
                TDI_RCX[1],
                TDI_RCX[2],
                MSG[0],
                MSG[1],
                MSG[2],
                MSG[3],
                MSG[4],
                (Status::TDI_STATE_INCORRECT, "TDI not CONFIG_LOCKED"),
                (Status::TDI_NOT_AUTHORISED, "the guest has not authorised START"),
                (Status::TDI_AUTHORISATION_STALE, "the guest authorised an earlier lock"),
                (Status::PDEV_STATE_INCORRECT, "PDEV not CONNECTED"),
                (Status::IDE_STREAM_STATE_INCORRECT, "the stream has no live keys"),
                DEVICE[0],
                DEVICE[1],
                DEVICE[2],
            ],
        },
        handler: Self::tdi_start,
    };

    pub(crate) const TDI_STOP: HostLeaf<P> = HostLeaf {
        spec: LeafSpec {
            number: leaf::TDI_STOP,
            name: "SEAMLESS.TDI.STOP",
            summary: "Resumable, inside the session: STOP_INTERFACE, then GET_DEVICE_INTERFACE_STATE = CONFIG_UNLOCKED. The nonce and the guest's authorisation are dropped, and every MMIO leaf and the DMA entry of the TDI are blocked at once, and the TD's IOTLB domain invalidated with a checked wait before the call returns (no DMA of the TDI lands afterwards, not even through a cached translation): an unlocked device is the host's to reconfigure. When the PDEV has no session any more (ERROR, STOPPED) the TSM stops the TDI on its own side at once, without device traffic.",
            inputs: &[(Reg::Rcx, "TDI page"), MSG_IN[0], MSG_IN[1]],
            outputs: &[(Reg::R8, "DEVICE_REQUEST: bytes of the request"), WAIT_OUT],
            requires: "TDI CONFIG_LOCKED, RUN or ERROR.",
            errors: &[
                SYS,
                TDI_RCX[0],
                TDI_RCX[1],
                TDI_RCX[2],
                MSG[0],
                MSG[1],
                MSG[2],
                MSG[3],
                MSG[4],
                (Status::TDI_STATE_INCORRECT, "TDI CONFIG_UNLOCKED"),
                DEVICE[0],
                DEVICE[1],
                DEVICE[2],
            ],
        },
        handler: Self::tdi_stop,
    };

    pub(crate) const DMABUF_IMPORT: HostLeaf<P> = HostLeaf {
        spec: LeafSpec {
            number: leaf::DMABUF_IMPORT,
            name: "SEAMLESS.DMABUF.IMPORT",
            summary: "Hands the TSM the host frames of one MMIO range the host exported as a host-inaccessible dma-buf. They must be exactly the range of the locked report (its page minus the reporting offset, its size), TEE memory, and device MMIO: inside one of the platform's MMIO windows (its host bridges' apertures, which the TSM learnt from the firmware at configuration), none of it RAM, outside the TDMRs and the TSM. From then on they belong to the TDI: no host call maps them anywhere else.",
            inputs: &[
                (Reg::Rcx, "TDI page"),
                (Reg::Rdx, "first frame of the range (4K aligned)"),
                (Reg::R8, "4K pages"),
                (Reg::R9, "range index in the interface report"),
            ],
            outputs: &[],
            requires: "TDI CONFIG_LOCKED or RUN.",
            errors: &[
                SYS,
                TDI_RCX[0],
                TDI_RCX[1],
                TDI_RCX[2],
                (Status::TDI_STATE_INCORRECT, "TDI not CONFIG_LOCKED or RUN"),
                (Status::MMIO_NOT_IN_REPORT, "R9 names no range, or a non-TEE range"),
                (Status::OPERAND_INVALID, "RDX not 4K aligned"),
                (Status::MMIO_NOT_IN_REPORT, "RDX/R8 are not the range's frames and size"),
                (Status::OPERAND_ADDR_RANGE_ERROR, "the frames are not device MMIO: outside the platform's MMIO windows, or RAM, the TDMRs or the TSM's memory"),
                (Status::PAGE_NOT_FREE, "the frames are already imported (by this or another TDI)"),
            ],
        },
        handler: Self::dmabuf_import,
    };

    pub(crate) const DMABUF_REVOKE: HostLeaf<P> = HostLeaf {
        spec: LeafSpec {
            number: leaf::DMABUF_REVOKE,
            name: "SEAMLESS.DMABUF.REVOKE",
            summary: "The exporter's revoke (FLR, memory-space disable, close). Terminal while the TDI is locked or running: the TDI goes to ERROR, every S-EPT mapping of the range is blocked (MMIO_BLOCKED) and the DMA entry blocked, the TD's IOTLB domain invalidated with a checked wait before the call returns, so no DMA of the TDI lands once it returned (a unit that does not confirm retires nothing); the frames stay the TDI's until STOP, TLB tracking and MMIO.UNMAP of every page.",
            inputs: &[(Reg::Rcx, "TDI page"), (Reg::Rdx, "range index")],
            outputs: &[(Reg::Rcx, "4K pages of the range still mapped (now blocked)")],
            requires: "The range imported.",
            errors: &[
                SYS,
                TDI_RCX[0],
                TDI_RCX[1],
                TDI_RCX[2],
                (Status::MMIO_NOT_IN_REPORT, "RDX names no imported range"),
            ],
        },
        handler: Self::dmabuf_revoke,
    };

    pub(crate) const MMIO_MAP: HostLeaf<P> = HostLeaf {
        spec: LeafSpec {
            number: leaf::MMIO_MAP,
            name: "TDH.MMIO.MAP",
            summary: "Maps an imported MMIO page (4K or 2M) of a TDI bound to the TD at a private GPA as MMIO_PENDING, for the guest to accept. A range is placed linearly: its first mapping fixes where, so each MMIO frame has exactly one GPA.",
            inputs: &[MMIO_GPA, (Reg::Rdx, "TDR page"), (Reg::R8, "MMIO frame (host physical, aligned to the size)")],
            outputs: &[],
            requires: "TD RUNNABLE; the TDI CONFIG_LOCKED or RUN over a SECURE stream; the entry FREE with its tables present.",
            errors: &[
                MMIO_PROLOGUE[0],
                MMIO_PROLOGUE[1],
                MMIO_PROLOGUE[2],
                MMIO_PROLOGUE[3],
                MMIO_PROLOGUE[4],
                MMIO_PROLOGUE[5],
                MMIO_PROLOGUE[6],
                (Status::OPERAND_INVALID, "R8 misaligned"),
                (Status::MMIO_NOT_IN_REPORT, "R8 (or part of the 2M) in no imported range"),
                (Status::MMIO_OWNER_MISMATCH, "R8 belongs to a TDI of another TD"),
                (Status::TDI_STATE_INCORRECT, "the TDI is not CONFIG_LOCKED or RUN"),
                (Status::MMIO_REVOKED, "the range was revoked"),
                (Status::IDE_STREAM_STATE_INCORRECT, "the TDI's stream has no live keys"),
                (Status::MMIO_GPA_MISMATCH, "the GPA breaks the range's placement"),
                (Status::EPT_WALK_FAILED, "a table on the path is missing"),
                (Status::EPT_ENTRY_NOT_FREE, "the GPA is mapped"),
            ],
        },
        handler: Self::mmio_map,
    };

    pub(crate) const MMIO_BLOCK: HostLeaf<P> = HostLeaf {
        spec: LeafSpec {
            number: leaf::MMIO_BLOCK,
            name: "TDH.MMIO.BLOCK",
            summary: "Blocks an MMIO leaf (MMIO_PENDING or MMIO_MAPPED → MMIO_BLOCKED) and records the TD's TLB epoch in the TDI's range.",
            inputs: &[MMIO_GPA, (Reg::Rdx, "TDR page")],
            outputs: &[],
            requires: "An MMIO leaf at the GPA and level.",
            errors: &[
                MMIO_PROLOGUE[0],
                MMIO_PROLOGUE[1],
                MMIO_PROLOGUE[2],
                MMIO_PROLOGUE[3],
                MMIO_PROLOGUE[4],
                MMIO_PROLOGUE[5],
                MMIO_PROLOGUE[6],
                (Status::EPT_WALK_FAILED, "a table on the path is missing"),
                (Status::EPT_ENTRY_FREE, "nothing mapped there"),
                (Status::EPT_ENTRY_STATE_INCORRECT, "not an MMIO leaf"),
                (Status::GPA_RANGE_ALREADY_BLOCKED, "warning: already blocked, nothing changed"),
            ],
        },
        handler: Self::mmio_block,
    };

    pub(crate) const MMIO_UNMAP: HostLeaf<P> = HostLeaf {
        spec: LeafSpec {
            number: leaf::MMIO_UNMAP,
            name: "TDH.MMIO.UNMAP",
            summary: "Frees a blocked MMIO leaf once the TLB epoch of its block is retired, and only when the TDI is stopped (CONFIG_UNLOCKED, from RUN or ERROR). The frame stays the TDI's until the TDI is locked again or removed.",
            inputs: &[MMIO_GPA, (Reg::Rdx, "TDR page")],
            outputs: &[(Reg::R8, "the MMIO frame unmapped")],
            requires: "MMIO_BLOCKED; TLB tracking done; TDI CONFIG_UNLOCKED.",
            errors: &[
                MMIO_PROLOGUE[0],
                MMIO_PROLOGUE[1],
                MMIO_PROLOGUE[2],
                MMIO_PROLOGUE[3],
                MMIO_PROLOGUE[4],
                MMIO_PROLOGUE[5],
                MMIO_PROLOGUE[6],
                (Status::EPT_WALK_FAILED, "a table on the path is missing"),
                (Status::EPT_ENTRY_FREE, "nothing mapped there"),
                (Status::GPA_RANGE_NOT_BLOCKED, "not blocked (MMIO.BLOCK first)"),
                (Status::EPT_ENTRY_STATE_INCORRECT, "not an MMIO leaf"),
                (Status::TDI_STATE_INCORRECT, "the TDI is not CONFIG_UNLOCKED (STOP first)"),
                (Status::TLB_TRACKING_NOT_DONE, "the block's epoch is not retired (TRACK and vCPU exits first)"),
            ],
        },
        handler: Self::mmio_unmap,
    };

    // ---- lookups and shared state changes ---------------------------------------------------

    /// The slot of the TDI whose page an operand names.
    pub(crate) fn tdi_index(&self, raw: u64, op: Operand) -> TsmResult<usize> {
        let pfn = Self::page_operand(raw, op)?;
        let e = self.pamt_of(pfn, op)?;
        if e.ty != PageType::Tdi {
            return Err(TsmError::PageMetadata(op));
        }
        let idx = usize::from(e.aux);
        match self.tdis.get(idx) {
            Some(Some(t)) if t.page == pfn => Ok(idx),
            _ => Err(TsmError::Corrupt),
        }
    }

    pub(crate) fn tdi(&self, idx: usize) -> TsmResult<&Tdi> {
        self.tdis.get(idx).and_then(Option::as_ref).ok_or(TsmError::Corrupt)
    }

    pub(crate) fn tdi_mut(&mut self, idx: usize) -> TsmResult<&mut Tdi> {
        self.tdis.get_mut(idx).and_then(Option::as_mut).ok_or(TsmError::Corrupt)
    }

    /// Cuts TDI `t`'s DMA before the calling leaf returns: its DMAR entry is blocked (present
    /// bit clear; already blocked is fine) and the TD's domain invalidated, PASID cache and
    /// IOTLB, with a wait descriptor the TSM checks. So once a revoke, a STOP or a failure
    /// that errors the TDI returns, no DMA of the TDI lands, not even through a translation
    /// cached before the block. A unit that does not confirm the invalidation retires nothing
    /// (the TDI's block stays unretired and DMAR.REMOVE waits for an IQ.INV that completes);
    /// the entry is blocked either way.
    pub(crate) fn cut_dma(&mut self, t: usize) {
        let Some(Some(tdi)) = self.tdis.get(t) else { return };
        let (key, td) = (tdi.dmar_key(), tdi.td);
        let Some(key) = key else { return };
        let Ok(td) = self.td(td) else { return };
        let (tdr, epoch) = (td.tdr, td.tlb.epoch());
        let Some(iommu) = self.iommu.as_mut() else { return };
        if iommu.binding(key).is_none() {
            return;
        }
        let _ = iommu.block(&mut self.platform, key);
        if let Some(domain) = iommu.domain_of(tdr) {
            let _ = iommu.invalidate(&mut self.platform, domain.did, epoch);
        }
    }

    /// Blocks every S-EPT leaf of range `r` of TDI `t` that still maps it, recording the epoch.
    ///
    /// The walk passes blocked tables ([`sept::walk_tables`]): a leaf under an `NL_BLOCKED`
    /// entry is out of reach only until the host unblocks the table, which revives the entries
    /// beneath exactly as they are. Blocking the leaves themselves is what keeps a stopped or
    /// failed TDI's MMIO dead, whatever the host did above them: `MMIO_BLOCKED` only goes on to
    /// MMIO.UNMAP, never back.
    pub(crate) fn block_range(&mut self, t: usize, r: usize) {
        let Some(Some(tdi)) = self.tdis.get(t) else { return };
        let Some(range) = tdi.ranges().get(r).copied() else { return };
        let (Some(base), true) = (range.gpa_base, range.mapped > 0) else { return };
        let Some(Some(td)) = self.tds.get(tdi.td) else { return };
        let (root, level, epoch, tdr) = (td.sept_root(), td.root_level(), td.tlb.epoch(), td.tdr);
        let end = base.saturating_add(range.pages << 12);
        let mut gpa = base;
        while gpa < end {
            let Some(g) = GuestPhysAddr::new(gpa) else { break };
            let found = match sept::walk_tables(&self.platform, root, level, g, 0) {
                Ok(WalkResult::Reached(w) | WalkResult::Stopped(w)) => w,
                // Corrupt TSM metadata: go on page by page rather than skip what lies beyond.
                Err(_) => {
                    gpa = (gpa & !0xFFF).saturating_add(0x1000);
                    continue;
                }
            };
            let state = found.entry.state();
            if matches!(state, SeptState::MmioPending | SeptState::MmioMapped)
                && range.contains(found.entry.pfn().raw())
            {
                let blocked = SeptEntry::new(SeptState::MmioBlocked, found.entry.pfn(), found.level);
                sept::write(&mut self.platform, found.slot, blocked);
                let bytes = sept::coverage(found.level);
                let leaf = GuestPhysAddr::new(gpa & !(bytes - 1)).unwrap_or(g);
                self.platform.sept_changed(tdr, Some((leaf, bytes)));
            }
            let step = sept::coverage(found.level);
            gpa = (gpa & !(step - 1)).saturating_add(step);
        }
        if let Some(Some(tdi)) = self.tdis.get_mut(t) {
            tdi.ranges[r].bepoch = epoch;
        }
    }

    /// The TDI and range that own MMIO frame `pfn`, if it was imported.
    pub(crate) fn mmio_owner(&self, pfn: u64) -> Option<(usize, usize)> {
        self.tdis
            .iter()
            .enumerate()
            .find_map(|(t, tdi)| tdi.as_ref().and_then(|tdi| tdi.imported_range(pfn)).map(|r| (t, r)))
    }

    /// True if the TDI's IDE stream holds live keys.
    fn tdi_stream_secure(&self, tdi: &Tdi) -> bool {
        let Some(Some(pdev)) = self.pdevs.get(tdi.pdev) else { return false };
        pdev.streams
            .iter()
            .position(|s| matches!(s, Some(s) if s.id == tdi.stream))
            .is_some_and(|i| pdev.stream_secure(i))
    }

    // ---- TDI --------------------------------------------------------------------------------

    fn tdi_create(&mut self, regs: &Regs, _out: &mut Regs) -> TsmResult<Status> {
        self.sys()?;
        let td_idx = self.td_index(regs.rcx, Operand::Rcx)?;
        Self::require_built(self.td(td_idx)?)?;
        self.require_report_room(td_idx)?;
        let p = self.pdev_index(regs.rdx, Operand::Rdx)?;
        let pdev = self.pdev(p)?;
        if pdev.state != PdevState::Connected {
            return Err(TsmError::PdevState);
        }
        let page = self.donated_page(regs.r8, Operand::R8)?;
        let r9 = regs.r9;
        let function = (r9 & 0xFFFF_FFFF) as u32;
        let pasid = (r9 & PASID_VALID != 0).then_some(((r9 >> 32) & 0xF_FFFF) as u32);
        let requester = crate::pdev::requester(r9 & 0xFFFF_FFFF).filter(|_| r9 & 0x7FF0_0000_0000_0000 == 0);
        let on_pdev_segment = |r: crate::pdev::Requester| {
            crate::pdev::requester(u64::from(pdev.function)).is_some_and(|p| p.segment == r.segment)
        };
        let requester = requester.filter(|&r| on_pdev_segment(r)).ok_or(TsmError::OperandInvalid(Operand::R9))?;
        // TDISP (PCIe 6.x ch. 11) addresses an interface by the INTERFACE_ID in every message's
        // header, whose only field is the FUNCTION_ID: LOCK, START and STOP of any TDI of this
        // function reach the same interface, whatever PASID the TDI's DMA is tagged with. So a
        // function is bound to at most one TDI; a second one, a "PASID twin", could unlock the
        // first one's interface while the TSM still had it RUN.
        if self.tdis.iter().flatten().any(|t| t.requester() == Some(requester)) {
            return Err(TsmError::FunctionInUse(Operand::R9));
        }
        let slot = self.tdis.iter().position(Option::is_none).ok_or(TsmError::DeviceSlotsExhausted)?;
        let tdr = self.td(td_idx)?.tdr;
        // ALL CHECKS PASSED: nothing below can fail.
        self.platform.zero(page);
        self.set_meta(page, PamtEntry { aux: slot as u8, ..PamtEntry::owned(PageType::Tdi, tdr) });
        self.td_mut(td_idx)?.owned_frames += 1;
        self.pdev_mut(p)?.tdis += 1;
        self.tdis[slot] = Some(Tdi::new(page, td_idx, tdr, p, function, pasid));
        Ok(Status::SUCCESS)
    }

    fn tdi_remove(&mut self, regs: &Regs, out: &mut Regs) -> TsmResult<Status> {
        self.sys()?;
        let t = self.tdi_index(regs.rcx, Operand::Rcx)?;
        let tdi = self.tdi(t)?;
        if self.tdi_exchanging(tdi, t) {
            return Err(TsmError::Busy(Operand::Tdi));
        }
        if tdi.state != TdiState::Unlocked {
            return Err(TsmError::TdiState);
        }
        if tdi.mapped_pages() != 0 {
            return Err(TsmError::HasMappedMmio);
        }
        if self.tdi_dmar(tdi).is_some() {
            return Err(TsmError::HasMappedDma);
        }
        let (page, td, p) = (tdi.page, tdi.td, tdi.pdev);
        // ALL CHECKS PASSED: nothing below can fail.
        self.give_back_imported(t);
        self.platform.zero(page);
        self.set_meta(page, PamtEntry::FREE);
        let td = self.td_mut(td)?;
        td.owned_frames = td.owned_frames.saturating_sub(1);
        let pdev = self.pdev_mut(p)?;
        pdev.tdis = pdev.tdis.saturating_sub(1);
        self.tdis[t] = None;
        out.rcx = page.addr().raw();
        Ok(Status::SUCCESS)
    }

    fn tdi_evidence_rd(&mut self, regs: &Regs, out: &mut Regs) -> TsmResult<Status> {
        self.sys()?;
        let t = self.tdi_index(regs.rcx, Operand::Rcx)?;
        let kind = u16::try_from(regs.rdx)
            .ok()
            .and_then(attest::evidence::RecordType::from_u16)
            .ok_or(TsmError::OperandInvalid(Operand::Rdx))?;
        let page = Self::page_operand(regs.r9, Operand::R9)?;
        self.host_page(page, Operand::R9)?;
        // A TDI exists only over a PDEV that connected, which keeps its last good evidence.
        let ev = self.tdi_evidence(self.tdi(t)?.page).ok_or(TsmError::Corrupt)?;
        let record = match kind {
            attest::evidence::RecordType::CertChain => ev.chain,
            attest::evidence::RecordType::Vca => ev.vca,
            attest::evidence::RecordType::Measurements => ev.measurements,
            attest::evidence::RecordType::InterfaceReport => ev.report,
        };
        let from = usize::try_from(regs.r8)
            .ok()
            .filter(|&o| o <= record.len())
            .ok_or(TsmError::OperandInvalid(Operand::R8))?;
        let n = (record.len() - from).min(EVIDENCE_CHUNK);
        let mut chunk = [0u8; EVIDENCE_CHUNK];
        chunk[..n].copy_from_slice(&record[from..from + n]);
        let len = record.len() as u64;
        // ALL CHECKS PASSED: nothing below can fail.
        self.platform.write_bytes(page, 0, &chunk[..n]);
        out.rcx = len;
        out.rdx = n as u64;
        Ok(Status::SUCCESS)
    }

    fn tdi_lock(&mut self, regs: &Regs, out: &mut Regs) -> TsmResult<Status> {
        self.sys()?;
        let t = self.tdi_index(regs.rcx, Operand::Rcx)?;
        let msg = self.msg_operands(regs.rdx, regs.r8)?;
        let p = self.tdi(t)?.pdev;
        if self.resume(p, Call::Tdi(t, TdiCall::Lock), &msg)? {
            return self.communicate(p, &msg, out);
        }
        let tdi = self.tdi(t)?;
        if tdi.state != TdiState::Unlocked {
            return Err(TsmError::TdiState);
        }
        if tdi.mapped_pages() != 0 {
            return Err(TsmError::HasMappedMmio);
        }
        if self.tdi_dmar(tdi).is_some() {
            return Err(TsmError::HasMappedDma);
        }
        let flags = (regs.r9 & 0xFFFF) as u16;
        let stream = ((regs.r9 >> 16) & 0xFF) as usize;
        let pdev = self.pdev(tdi.pdev)?;
        let bad_flags = flags & !lock_flags::KNOWN != 0 || flags & lock_flags::BIND_P2P != 0 || regs.r9 >> 24 != 0;
        let Some(Some(s)) = pdev.streams.get(stream).filter(|_| !bad_flags) else {
            return Err(TsmError::OperandInvalid(Operand::R9));
        };
        let stream_id = s.id;
        if pdev.state != PdevState::Connected {
            return Err(TsmError::PdevState);
        }
        if !pdev.stream_secure(stream) {
            return Err(TsmError::IdeStreamState);
        }
        let (version, iface) = (pdev.version(), InterfaceId(tdi.function));
        let mut r = [0u8; 2];
        self.platform.fill(&mut r).map_err(|_| TsmError::NoEntropy)?;
        // A random reporting offset in bits 47:36, never zero (TDX: per TD, random).
        let offset = (u64::from(u16::from_le_bytes(r) & 0xFFF) | 1) << 36;
        // ALL CHECKS PASSED: nothing below can fail but the device.
        let flow = TdiFlow::new(TdiOp::Lock { flags, stream: stream_id, offset }, version, iface, [0; 32]);
        let tdi = self.tdi_mut(t)?;
        tdi.lock_flags = flags;
        tdi.stream = stream_id;
        tdi.reporting_offset = offset;
        tdi.report_len = 0;
        self.give_back_imported(t);
        let tdi = self.tdi_mut(t)?;
        tdi.range_count = 0;
        tdi.fault = None;
        self.begin(p, Exchange::tdisp(t, flow), &msg, out)
    }

    fn tdi_start(&mut self, regs: &Regs, out: &mut Regs) -> TsmResult<Status> {
        self.sys()?;
        let t = self.tdi_index(regs.rcx, Operand::Rcx)?;
        let msg = self.msg_operands(regs.rdx, regs.r8)?;
        let p = self.tdi(t)?.pdev;
        if self.resume(p, Call::Tdi(t, TdiCall::Start), &msg)? {
            return self.communicate(p, &msg, out);
        }
        let tdi = self.tdi(t)?;
        if tdi.state != TdiState::Locked {
            return Err(TsmError::TdiState);
        }
        match tdi.authorised {
            None => return Err(TsmError::NotAuthorised),
            Some(g) if g != tdi.generation => return Err(TsmError::AuthorisationStale),
            Some(_) => {}
        }
        let pdev = self.pdev(tdi.pdev)?;
        if pdev.state != PdevState::Connected {
            return Err(TsmError::PdevState);
        }
        if !self.tdi_stream_secure(tdi) {
            return Err(TsmError::IdeStreamState);
        }
        let flow = TdiFlow::new(TdiOp::Start, pdev.version(), InterfaceId(tdi.function), tdi.nonce);
        // ALL CHECKS PASSED: nothing below can fail but the device.
        self.begin(p, Exchange::tdisp(t, flow), &msg, out)
    }

    fn tdi_stop(&mut self, regs: &Regs, out: &mut Regs) -> TsmResult<Status> {
        self.sys()?;
        let t = self.tdi_index(regs.rcx, Operand::Rcx)?;
        let msg = self.msg_operands(regs.rdx, regs.r8)?;
        let p = self.tdi(t)?.pdev;
        if self.resume(p, Call::Tdi(t, TdiCall::Stop), &msg)? {
            return self.communicate(p, &msg, out);
        }
        let tdi = self.tdi(t)?;
        if tdi.state == TdiState::Unlocked {
            return Err(TsmError::TdiState);
        }
        let pdev = self.pdev(tdi.pdev)?;
        let (version, iface) = (pdev.version(), InterfaceId(tdi.function));
        if pdev.state != PdevState::Connected {
            // ALL CHECKS PASSED: no session left to ask the device through; stop locally.
            self.tdi_unlocked(t)?;
            return Ok(Status::SUCCESS);
        }
        // ALL CHECKS PASSED: nothing below can fail but the device.
        self.begin(p, Exchange::tdisp(t, TdiFlow::new(TdiOp::Stop, version, iface, [0; 32])), &msg, out)
    }

    /// A stopped TDI: CONFIG_UNLOCKED, its nonce and authorisation gone, and nothing of it
    /// reachable any more. An unlocked device is the host's to reconfigure, so the guest's MMIO
    /// leaves are blocked and its DMA entry too, at once; the host then tracks and unmaps.
    pub(crate) fn tdi_unlocked(&mut self, t: usize) -> TsmResult<()> {
        let tdi = self.tdi_mut(t)?;
        tdi.state = TdiState::Unlocked;
        tdi.nonce = [0; 32];
        tdi.authorised = None;
        self.cut_dma(t);
        for r in 0..crate::tdisp::MAX_RANGES {
            self.block_range(t, r);
        }
        Ok(())
    }

    // ---- dma-buf ----------------------------------------------------------------------------

    fn dmabuf_import(&mut self, regs: &Regs, _out: &mut Regs) -> TsmResult<Status> {
        self.sys()?;
        let t = self.tdi_index(regs.rcx, Operand::Rcx)?;
        let tdi = self.tdi(t)?;
        if !matches!(tdi.state, TdiState::Locked | TdiState::Run) {
            return Err(TsmError::TdiState);
        }
        let r = usize::try_from(regs.r9).ok().filter(|&r| r < tdi.range_count);
        let r = r.ok_or(TsmError::MmioNotInReport(Operand::R9))?;
        let range = tdi.ranges[r];
        if range.attributes & RANGE_NON_TEE != 0 {
            return Err(TsmError::MmioNotInReport(Operand::R9));
        }
        let first = Self::page_operand(regs.rdx, Operand::Rdx)?;
        if first.raw() != range.first || regs.r8 != range.pages {
            return Err(TsmError::MmioNotInReport(Operand::Rdx));
        }
        let frames = FrameRange { start: first, count: range.pages };
        // Private MMIO must be device MMIO: inside a host-bridge window the platform named, and
        // none of it RAM, which the host could read behind the TD's back. The device reports
        // what the host programmed into its BAR, so the report alone proves nothing.
        let device_mmio = self.sys()?.in_mmio_window(frames) && !self.platform.is_ram(frames);
        if !device_mmio || self.is_private(frames) || self.tdmrs().iter().any(|m| m.frames.overlaps(frames)) {
            return Err(TsmError::AddrRange(Operand::Rdx));
        }
        let taken = self
            .tdis
            .iter()
            .flatten()
            .flat_map(|o| o.ranges().iter())
            .any(|o| o.imported && o.first < range.first + range.pages && range.first < o.first + o.pages);
        if taken {
            return Err(TsmError::PageNotFree(Operand::Rdx));
        }
        // ALL CHECKS PASSED: nothing below can fail.
        self.tdi_mut(t)?.ranges[r].imported = true;
        for f in frames.start.raw()..frames.start.raw() + frames.count {
            if let Some(pfn) = Pfn::new(f) {
                self.platform.ownership_changed(pfn, false);
            }
        }
        Ok(Status::SUCCESS)
    }

    /// Hands the frames of every range TDI `t` imported back to the host's map (the TDI goes,
    /// or a new lock replaces its ranges): the counterpart of DMABUF.IMPORT's removal.
    fn give_back_imported(&mut self, t: usize) {
        let Some(tdi) = self.tdis.get(t).and_then(Option::as_ref) else { return };
        let ranges = tdi.ranges;
        for r in ranges.iter().take(tdi.range_count).filter(|r| r.imported) {
            for f in r.first..r.first.saturating_add(r.pages) {
                if let Some(pfn) = Pfn::new(f) {
                    self.platform.ownership_changed(pfn, true);
                }
            }
        }
    }

    fn dmabuf_revoke(&mut self, regs: &Regs, out: &mut Regs) -> TsmResult<Status> {
        self.sys()?;
        let t = self.tdi_index(regs.rcx, Operand::Rcx)?;
        let tdi = self.tdi(t)?;
        let r = usize::try_from(regs.rdx).ok().filter(|&r| r < tdi.range_count && tdi.ranges[r].imported);
        let r = r.ok_or(TsmError::MmioNotInReport(Operand::Rdx))?;
        let live = matches!(tdi.state, TdiState::Locked | TdiState::Run);
        // ALL CHECKS PASSED: nothing below can fail.
        self.tdi_mut(t)?.ranges[r].revoked = true;
        if live {
            self.tdi_failed(t, DeviceFault::Revoked);
        } else {
            self.block_range(t, r);
        }
        out.rcx = self.tdi(t)?.ranges[r].mapped;
        Ok(Status::SUCCESS)
    }

    // ---- MMIO in the S-EPT ------------------------------------------------------------------

    /// RCX (GPA and a 4K or 2M level) and RDX (TDR of a finalized TD), with the GPA checked.
    fn mmio_prologue(&self, regs: &Regs) -> TsmResult<(usize, GuestPhysAddr, PageSize)> {
        let (idx, gpa, level) = self.mem_prologue(regs)?;
        let size = match level {
            0 => PageSize::Size4K,
            1 => PageSize::Size2M,
            _ => return Err(TsmError::OperandInvalid(Operand::Rcx)),
        };
        let td = self.td(idx)?;
        td.lifecycle.require(Lifecycle::Runnable)?;
        Self::private_gpa(td, gpa, size.bytes(), Operand::Rcx)?;
        Ok((idx, gpa, size))
    }

    fn mmio_map(&mut self, regs: &Regs, _out: &mut Regs) -> TsmResult<Status> {
        let (idx, gpa, size) = self.mmio_prologue(regs)?;
        let pfn = Self::page_operand(regs.r8, Operand::R8)?;
        if !pfn.is_aligned(size) {
            return Err(TsmError::OperandInvalid(Operand::R8));
        }
        let (t, r) = self.mmio_owner(pfn.raw()).ok_or(TsmError::MmioNotInReport(Operand::R8))?;
        let tdi = self.tdi(t)?;
        if tdi.td != idx {
            return Err(TsmError::MmioOwner(Operand::R8));
        }
        let range = tdi.ranges[r];
        if !range.contains(pfn.raw() + size.frames() - 1) {
            return Err(TsmError::MmioNotInReport(Operand::R8));
        }
        if !matches!(tdi.state, TdiState::Locked | TdiState::Run) {
            return Err(TsmError::TdiState);
        }
        if range.revoked {
            return Err(TsmError::MmioRevoked);
        }
        if !self.tdi_stream_secure(tdi) {
            return Err(TsmError::IdeStreamState);
        }
        let delta = (pfn.raw() - range.first) << 12;
        let base = match range.gpa_base {
            Some(b) if b.checked_add(delta) == Some(gpa.raw()) => b,
            None if gpa.raw() >= delta => gpa.raw() - delta,
            _ => return Err(TsmError::MmioGpaMismatch),
        };
        let td = self.td(idx)?;
        let w = self.walk_to(td, gpa, size.level(), Operand::Rcx)?;
        Self::legal(SeptOp::MmioMap, &w)?;
        // ALL CHECKS PASSED: nothing below can fail.
        sept::write(&mut self.platform, w.slot, SeptEntry::new(SeptState::MmioPending, pfn, size.level()));
        let range = &mut self.tdi_mut(t)?.ranges[r];
        range.gpa_base = Some(base);
        range.mapped += size.frames();
        Ok(Status::SUCCESS)
    }

    fn mmio_block(&mut self, regs: &Regs, _out: &mut Regs) -> TsmResult<Status> {
        let (idx, gpa, size) = self.mmio_prologue(regs)?;
        let td = self.td(idx)?;
        let w = self.walk_to(td, gpa, size.level(), Operand::Rcx)?;
        if Self::legal(SeptOp::MmioBlock, &w)? {
            return Ok(Status::GPA_RANGE_ALREADY_BLOCKED);
        }
        let (t, r) = self.mmio_owner(w.entry.pfn().raw()).ok_or(TsmError::Corrupt)?;
        let (epoch, tdr) = (td.tlb.epoch(), td.tdr);
        // ALL CHECKS PASSED: nothing below can fail.
        sept::write(&mut self.platform, w.slot, SeptEntry::new(SeptState::MmioBlocked, w.entry.pfn(), size.level()));
        self.platform.sept_changed(tdr, Some((gpa, size.bytes())));
        self.tdi_mut(t)?.ranges[r].bepoch = epoch;
        Ok(Status::SUCCESS)
    }

    fn mmio_unmap(&mut self, regs: &Regs, out: &mut Regs) -> TsmResult<Status> {
        let (idx, gpa, size) = self.mmio_prologue(regs)?;
        let td = self.td(idx)?;
        let w = self.walk_to(td, gpa, size.level(), Operand::Rcx)?;
        Self::legal(SeptOp::MmioUnmap, &w)?;
        let pfn = w.entry.pfn();
        let (t, r) = self.mmio_owner(pfn.raw()).ok_or(TsmError::Corrupt)?;
        let tdi = self.tdi(t)?;
        if tdi.state != TdiState::Unlocked {
            return Err(TsmError::TdiState);
        }
        if !self.retired(td, tdi.ranges[r].bepoch) {
            return Err(TsmError::Sept(Operand::Rcx, w.fault(SeptErrorKind::TrackingNotDone)));
        }
        // ALL CHECKS PASSED: nothing below can fail.
        sept::write(&mut self.platform, w.slot, SeptEntry::FREE);
        let range = &mut self.tdi_mut(t)?.ranges[r];
        range.mapped = range.mapped.saturating_sub(size.frames());
        if range.mapped == 0 {
            range.gpa_base = None;
        }
        out.r8 = pfn.addr().raw();
        Ok(Status::SUCCESS)
    }

    /// The state of the TDI's DMA remapping entry, if it has one.
    pub(crate) fn tdi_dmar(&self, tdi: &Tdi) -> Option<crate::iommu::DmarState> {
        Some(self.iommu.as_ref()?.binding(tdi.dmar_key()?)?.state)
    }

    /// The TDIs bound to the TD in slot `td`.
    pub(crate) fn td_has_tdis(&self, td: usize) -> bool {
        self.tdis.iter().flatten().any(|t| t.td == td)
    }
}
