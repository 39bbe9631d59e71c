//! Guest leaves of device assignment: TDG.TDI.RD (state and digests, from the TSM, never from
//! the host), TDG.TDI.START (the guest's authorisation of START, bound to one lock) and
//! TDG.MMIO.ACCEPT (MMIO_PENDING → MMIO_MAPPED only for the page the report puts there).

use crate::abi::guest::{Ctx, GuestLeaf, Step};
use crate::abi::{gpa_level, LeafSpec, Reg, Regs, TdExit};
use crate::addr::PageSize;
use crate::error::{SeptErrorKind, TsmError, TsmResult};
use crate::iommu::DmarState;
use crate::platform::Platform;
use crate::sept::{self, legality, Legality, SeptEntry, SeptOp, SeptState, WalkResult};
use crate::status::{Operand, Status};
use crate::tdi::TdiState;
use crate::Tsm;

use super::guest::leaf;
use super::host_tdi::PASID_VALID;

/// TDG.TDI.RD fields (RDX).
#[allow(missing_docs)]
pub mod field {
    pub const STATE: u64 = 0;
    pub const LOCK_GENERATION: u64 = 1;
    pub const REPORT_DIGEST: u64 = 2;
    pub const EVIDENCE_DIGESTS: u64 = 3;
    pub const REPORTING_OFFSET: u64 = 4;
    pub const RANGE_COUNT: u64 = 5;
    pub const LOCK_FLAGS: u64 = 6;
    pub const DMAR_STATE: u64 = 7;
    pub const SPDM_VERSION: u64 = 8;
}

const CALLER: (Status, &str) = (Status::VCPU_NOT_IN_GUEST, "the calling vCPU is not in guest mode (firmware bug)");

impl<P: Platform> Tsm<P> {
    pub(crate) const TDG_TDI_RD: GuestLeaf<P> = GuestLeaf {
        spec: LeafSpec {
            number: leaf::TDI_RD,
            name: "TDG.TDI.RD",
            summary: "Reads a field of one of the TD's TDIs from the TSM. RDX: 0 TDISP state, 1 lock generation, 2 SHA-384 of the interface report (48 bytes to R8), 3 SHA-384 of the certificate chain then of the signed measurement transcript (96 bytes to R8), 4 MMIO_REPORTING_OFFSET, 5 range count, 6 lock flags, 7 DMA entry state (0 none, 1 added, 2 accepted, 3 blocked), 8 SPDM version. Scalars come back in R9.",
            inputs: &[
                (Reg::Rcx, "function id (24:0); PASID (51:32) if bit 63 is set"),
                (Reg::Rdx, "field"),
                (Reg::R8, "digest fields: GPA of the output (64-byte aligned, MAPPED)"),
            ],
            outputs: &[(Reg::R9, "scalar fields: the value")],
            requires: "Report digest: TDI CONFIG_LOCKED or RUN.",
            errors: &[
                CALLER,
                (Status::TDI_NOT_PRESENT, "no TDI of this TD has that function"),
                (Status::OPERAND_INVALID, "RDX not a field"),
                (Status::TDI_STATE_INCORRECT, "report digest of a TDI that is not locked"),
                (Status::OPERAND_INVALID, "R8 misaligned, beyond width or shared"),
                (Status::BUFFER_CROSSES_PAGE, "the field would run past the end of R8's page (96 bytes at offset 0xFC0)"),
                (Status::EPT_WALK_FAILED, "R8 not mapped"),
                (Status::EPT_ENTRY_STATE_INCORRECT, "R8 not MAPPED"),
            ],
        },
        handler: Self::tdg_tdi_rd,
    };

    pub(crate) const TDG_DMAR_ACCEPT: GuestLeaf<P> = GuestLeaf {
        spec: LeafSpec {
            number: leaf::DMAR_ACCEPT,
            name: "TDG.DMAR.ACCEPT",
            summary: "The guest accepts its TDI's DMA remapping entry: the PASID entry becomes present and the device's DMA reaches the TD's accepted private memory (and nothing else) through the S-EPT. Already accepted is a warning.",
            inputs: &[(Reg::Rcx, "function id (24:0); PASID (51:32) if bit 63 is set")],
            outputs: &[],
            requires: "TDI CONFIG_LOCKED or RUN; its entry added, not blocked.",
            errors: &[
                CALLER,
                (Status::TDI_NOT_PRESENT, "no TDI of this TD has that function"),
                (Status::TDI_STATE_INCORRECT, "TDI not CONFIG_LOCKED or RUN"),
                (Status::DMAR_STATE_INCORRECT, "no entry, or blocked"),
                (Status::PAGE_ALREADY_ACCEPTED, "warning: already accepted, nothing changed"),
            ],
        },
        handler: Self::tdg_dmar_accept,
    };

    pub(crate) const TDG_IOMMU_FAULT_RD: GuestLeaf<P> = GuestLeaf {
        spec: LeafSpec {
            number: leaf::IOMMU_FAULT_RD,
            name: "SEAMLESS.TDG.IOMMU.FAULT.RD",
            summary: "seamless only: the guest's view of the trusted IOMMU's fault log (the host's is SEAMLESS.IOMMU.FAULT.RD). Drains the unit's fault recording registers into the log, then returns fault number RDX if the log holds it and its source is the TDI's own requester: a DMA of its device that the unit refused (a page the TD never accepted, its MMIO, a shared GPA, after a block). Faults of other requesters read as not held. The device completes such a command with status 0, so this is how the guest learns it did not land.",
            inputs: &[
                (Reg::Rcx, "function id (24:0); PASID (51:32) if bit 63 is set"),
                (Reg::Rdx, "fault number (0 = the first since TDH.IOMMU.SETUP)"),
            ],
            outputs: &[
                (Reg::Rcx, "faults recorded since TDH.IOMMU.SETUP (every requester's)"),
                (Reg::Rdx, "the fault: source id (15:0), VT-d fault reason (23:16), write (24), PASID present (25), PASID (51:32)"),
                (Reg::R8, "the fault: page address (the IOVA, a GPA of the TD) the request went to"),
                (Reg::R9, "1 if RDX/R8 hold fault RDX-in, 0 if the log does not hold it or it is another requester's"),
            ],
            requires: "A TDI of this TD with that function; the IOMMU set up.",
            errors: &[
                CALLER,
                (Status::TDI_NOT_PRESENT, "no TDI of this TD has that function"),
                (Status::DMAR_STATE_INCORRECT, "no trusted IOMMU (TDH.IOMMU.SETUP not done)"),
            ],
        },
        handler: Self::tdg_iommu_fault_rd,
    };

    pub(crate) const TDG_MMIO_ACCEPT: GuestLeaf<P> = GuestLeaf {
        spec: LeafSpec {
            number: leaf::MMIO_ACCEPT,
            name: "TDG.MMIO.ACCEPT",
            summary: "Accepts an MMIO_PENDING page (4K or 2M) as MMIO_MAPPED, only if it is the page at that offset of that range of the locked report. Already accepted is a warning; a missing, free or blocked mapping exits to the host.",
            inputs: &[
                (Reg::Rcx, "GPA (51:12) and level (2:0): 0 = 4K, 1 = 2M"),
                (Reg::Rdx, "range index in the interface report"),
                (Reg::R8, "function id (24:0); PASID (51:32) if bit 63 is set"),
                (Reg::R9, "byte offset of the page within the range"),
            ],
            outputs: &[],
            requires: "TDI CONFIG_LOCKED or RUN; the entry MMIO_PENDING at the requested level.",
            errors: &[
                CALLER,
                (Status::OPERAND_INVALID, "RCX reserved bits, level above 1, misaligned, beyond width or shared"),
                (Status::TDI_NOT_PRESENT, "no TDI of this TD has that function (R8)"),
                (Status::TDI_STATE_INCORRECT, "TDI not CONFIG_LOCKED or RUN"),
                (Status::MMIO_OUT_OF_RANGE, "RDX names no range (RDX), or the page lies outside it (R9)"),
                (Status::MMIO_REVOKED, "the range was revoked"),
                (Status::PAGE_SIZE_MISMATCH, "mapped at another size (RCX/RDX: the entry)"),
                (Status::EPT_ENTRY_STATE_INCORRECT, "private memory there, not MMIO"),
                (Status::MMIO_OWNER_MISMATCH, "the page mapped there was not imported by that TDI (R8)"),
                (Status::MMIO_INVALID_HPA_OFFSET, "the page mapped there is not the one at that offset"),
                (Status::PAGE_ALREADY_ACCEPTED, "warning: already MMIO_MAPPED with the right page"),
            ],
        },
        handler: Self::tdg_mmio_accept,
    };

    pub(crate) const TDG_TDI_START: GuestLeaf<P> = GuestLeaf {
        spec: LeafSpec {
            number: leaf::TDI_START,
            name: "SEAMLESS.TDG.TDI.START",
            summary: "The guest authorises START of a locked TDI, for one lock generation (TDG.TDI.RD field 1): after checking the report against its digest. An authorisation for an earlier lock does not let the host start a later one.",
            inputs: &[(Reg::Rcx, "function id (24:0); PASID (51:32) if bit 63 is set"), (Reg::Rdx, "the lock generation authorised")],
            outputs: &[],
            requires: "TDI CONFIG_LOCKED.",
            errors: &[
                CALLER,
                (Status::TDI_NOT_PRESENT, "no TDI of this TD has that function"),
                (Status::TDI_STATE_INCORRECT, "TDI not CONFIG_LOCKED"),
                (Status::TDI_AUTHORISATION_STALE, "RDX is not the current lock generation"),
            ],
        },
        handler: Self::tdg_tdi_start,
    };

    pub(crate) const TDG_MR_ATTEST: GuestLeaf<P> = GuestLeaf {
        spec: LeafSpec {
            number: leaf::MR_ATTEST,
            name: "SEAMLESS.TDG.MR.ATTEST",
            summary: "Writes the TD's attestation report, signed by the TSM's attestation key: the native 1200-byte report (TSM identity, MRTD, RTMRs, attributes, the 64-byte REPORTDATA, and per TDI bound to the TD its function, TDISP state, lock flags, SPDM version and algorithms, and the SHA-384 of its certificate chain, measurement transcript and interface report), or its 1184-byte SNP-format export signed by the emulated VCEK.",
            inputs: &[
                (Reg::Rcx, "GPA of the output page (4K aligned, MAPPED)"),
                (Reg::Rdx, "GPA of the 64-byte REPORTDATA (64-byte aligned)"),
                (Reg::R8, "format: 0 native report, 1 SNP-format export"),
            ],
            outputs: &[(Reg::R9, "bytes written")],
            requires: "The TSM provisioned with its platform secret; both GPAs MAPPED.",
            errors: &[
                CALLER,
                (Status::OPERAND_INVALID, "RCX/RDX misaligned, beyond width or shared"),
                (Status::OPERAND_INVALID, "R8 not a format"),
                (Status::EPT_WALK_FAILED, "a buffer not mapped"),
                (Status::EPT_ENTRY_STATE_INCORRECT, "a buffer not MAPPED"),
                (Status::ATTESTATION_NOT_PROVISIONED, "no platform secret: no key"),
            ],
        },
        handler: Self::tdg_mr_attest,
    };

    fn tdg_mr_attest(&mut self, ctx: Ctx, regs: &Regs, out: &mut Regs) -> TsmResult<Step> {
        let td = self.td(ctx.td)?;
        Self::guest_operand(td, regs.rcx, 4096, Operand::Rcx)?;
        Self::guest_operand(td, regs.rdx, 64, Operand::Rdx)?;
        let format = crate::attestation::Format::from_raw(regs.r8).ok_or(TsmError::OperandInvalid(Operand::R8))?;
        let dst = self.guest_buf::<{ attest::report::REPORT_BYTES }>(td, regs.rcx, 4096, Operand::Rcx)?;
        let data = self.guest_buf::<64>(td, regs.rdx, 64, Operand::Rdx)?;
        if !self.provisioned() {
            return Err(TsmError::NotProvisioned);
        }
        let report_data = self.read_guest(data);
        let mut report = [0u8; attest::report::REPORT_BYTES];
        let n = self.signed_report(td, &report_data, format, &mut report)?;
        // ALL CHECKS PASSED: nothing below can fail.
        self.write_guest(dst, &report, n);
        out.r9 = n as u64;
        Ok(Step::Done(Status::SUCCESS))
    }

    /// The TDI of the calling TD with the function (and PASID) encoded in `raw`. Functions are
    /// compared as requesters, as TDI.CREATE compares them, so either spelling of a segment-0
    /// function finds its TDI.
    fn guest_tdi(&self, ctx: Ctx, raw: u64, op: Operand) -> TsmResult<usize> {
        let requester =
            crate::pdev::requester(raw & crate::pdev::FUNCTION_ID_MASK).ok_or(TsmError::TdiNotPresent(op))?;
        let pasid = (raw & PASID_VALID != 0).then_some(((raw >> 32) & 0xF_FFFF) as u32);
        self.tdis
            .iter()
            .position(
                |t| matches!(t, Some(t) if t.td == ctx.td && t.requester() == Some(requester) && t.pasid == pasid),
            )
            .ok_or(TsmError::TdiNotPresent(op))
    }

    fn tdg_tdi_rd(&mut self, ctx: Ctx, regs: &Regs, out: &mut Regs) -> TsmResult<Step> {
        let t = self.guest_tdi(ctx, regs.rcx, Operand::Rcx)?;
        let tdi = self.tdi(t)?;
        let evidence = self.pdev(tdi.pdev)?.evidence;
        let scalar = match regs.rdx {
            field::STATE => Some(tdi.state.tdisp() as u64),
            field::LOCK_GENERATION => Some(u64::from(tdi.generation)),
            field::REPORTING_OFFSET => Some(tdi.reporting_offset),
            field::RANGE_COUNT => Some(tdi.range_count as u64),
            field::LOCK_FLAGS => Some(u64::from(tdi.lock_flags)),
            field::DMAR_STATE => Some(match self.tdi_dmar(tdi) {
                None => 0,
                Some(DmarState::Added) => 1,
                Some(DmarState::Accepted) => 2,
                Some(DmarState::Blocked) => 3,
            }),
            field::SPDM_VERSION => Some(u64::from(evidence.map_or(0, |e| e.negotiated.version))),
            field::REPORT_DIGEST | field::EVIDENCE_DIGESTS => None,
            _ => return Err(TsmError::OperandInvalid(Operand::Rdx)),
        };
        if let Some(v) = scalar {
            out.r9 = v;
            return Ok(Step::Done(Status::SUCCESS));
        }
        let td = self.td(ctx.td)?;
        // Digests go to private memory at a 64-byte aligned GPA; a 96-byte field at page offset
        // 0xFC0 would leave the page, so `guest_buf` refuses it before anything is written.
        if regs.rdx == field::REPORT_DIGEST {
            if !matches!(tdi.state, TdiState::Locked | TdiState::Run) {
                return Err(TsmError::TdiState);
            }
            let digest = tdi.report_digest;
            let out = self.guest_buf::<48>(td, regs.r8, 64, Operand::R8)?;
            // ALL CHECKS PASSED: nothing below can fail.
            self.write_guest(out, &digest, digest.len());
        } else {
            let e = evidence.ok_or(TsmError::Corrupt)?;
            let mut bytes = [0u8; 96];
            bytes[..48].copy_from_slice(&e.chain_digest);
            bytes[48..].copy_from_slice(&e.measurements_digest);
            let out = self.guest_buf::<96>(td, regs.r8, 64, Operand::R8)?;
            // ALL CHECKS PASSED: nothing below can fail.
            self.write_guest(out, &bytes, bytes.len());
        }
        Ok(Step::Done(Status::SUCCESS))
    }

    fn tdg_dmar_accept(&mut self, ctx: Ctx, regs: &Regs, _out: &mut Regs) -> TsmResult<Step> {
        let t = self.guest_tdi(ctx, regs.rcx, Operand::Rcx)?;
        let tdi = self.tdi(t)?;
        if !matches!(tdi.state, TdiState::Locked | TdiState::Run) {
            return Err(TsmError::TdiState);
        }
        let not_found = TsmError::Iommu(crate::iommu::IommuError::EntryNotFound);
        let key = tdi.dmar_key().ok_or(not_found)?;
        let tdr = tdi.tdr;
        let iommu = self.iommu.as_mut().ok_or(not_found)?;
        // `accept` checks first and writes nothing when it fails.
        Ok(Step::Done(match iommu.accept(&mut self.platform, tdr, key).map_err(TsmError::Iommu)? {
            crate::iommu::Done::Changed => Status::SUCCESS,
            crate::iommu::Done::AlreadyDone => Status::PAGE_ALREADY_ACCEPTED,
        }))
    }

    fn tdg_iommu_fault_rd(&mut self, ctx: Ctx, regs: &Regs, out: &mut Regs) -> TsmResult<Step> {
        let t = self.guest_tdi(ctx, regs.rcx, Operand::Rcx)?;
        let requester = self.tdi(t)?.requester().map(|r| r.rid);
        let not_set_up = TsmError::Iommu(crate::iommu::IommuError::EntryNotFound);
        let iommu = self.iommu.as_mut().ok_or(not_set_up)?;
        // ALL CHECKS PASSED: nothing below can fail.
        iommu.collect_faults(&mut self.platform);
        out.rcx = iommu.fault_count();
        let own = iommu.fault(regs.rdx).filter(|f| Some(f.source_id) == requester);
        if let Some(f) = own {
            out.rdx = u64::from(f.source_id)
                | u64::from(f.reason) << 16
                | u64::from(f.write) << 24
                | u64::from(f.pasid.is_some()) << 25
                | u64::from(f.pasid.unwrap_or(0)) << 32;
            out.r8 = f.address;
            out.r9 = 1;
        }
        Ok(Step::Done(Status::SUCCESS))
    }

    fn tdg_tdi_start(&mut self, ctx: Ctx, regs: &Regs, _out: &mut Regs) -> TsmResult<Step> {
        let t = self.guest_tdi(ctx, regs.rcx, Operand::Rcx)?;
        let tdi = self.tdi(t)?;
        if tdi.state != TdiState::Locked {
            return Err(TsmError::TdiState);
        }
        if regs.rdx != u64::from(tdi.generation) {
            return Err(TsmError::AuthorisationStale);
        }
        // ALL CHECKS PASSED: nothing below can fail.
        let tdi = self.tdi_mut(t)?;
        tdi.authorised = Some(tdi.generation);
        Ok(Step::Done(Status::SUCCESS))
    }

    fn tdg_mmio_accept(&mut self, ctx: Ctx, regs: &Regs, _out: &mut Regs) -> TsmResult<Step> {
        let td = self.td(ctx.td)?;
        let (gpa, level) = gpa_level(regs.rcx, 1)?;
        let size = PageSize::from_level(level).ok_or(TsmError::OperandInvalid(Operand::Rcx))?;
        Self::private_gpa(td, gpa, size.bytes(), Operand::Rcx)?;
        let t = self.guest_tdi(ctx, regs.r8, Operand::R8)?;
        let tdi = self.tdi(t)?;
        if !matches!(tdi.state, TdiState::Locked | TdiState::Run) {
            return Err(TsmError::TdiState);
        }
        let r = usize::try_from(regs.rdx).ok().filter(|&r| r < tdi.range_count);
        let r = r.ok_or(TsmError::MmioOutOfRange(Operand::Rdx))?;
        let range = tdi.ranges[r];
        let inside = regs.r9.is_multiple_of(size.bytes())
            && (regs.r9 >> 12).checked_add(size.frames()).is_some_and(|end| end <= range.pages);
        if !inside {
            return Err(TsmError::MmioOutOfRange(Operand::R9));
        }
        if range.revoked {
            return Err(TsmError::MmioRevoked);
        }
        let expected = range.first + (regs.r9 >> 12);
        let exit = |w: &sept::Walk| {
            Step::Exit(TdExit::EptViolation { gpa, requested_level: level, level: w.level, entry: w.entry.raw() })
        };
        let w = match self.walk(td, gpa, level)? {
            WalkResult::Reached(w) => w,
            WalkResult::Stopped(w) if w.entry.state().is_leaf() => {
                return Err(TsmError::Sept(Operand::Rcx, w.fault(SeptErrorKind::SizeMismatch)));
            }
            WalkResult::Stopped(w) => return Ok(exit(&w)),
        };
        // The page must be one the named TDI imported: a device may report another interface's
        // frames, and the guest's accept must not vouch for an interface that imported nothing.
        // The offset check then puts it in the named range (a report's ranges never overlap).
        let owned = tdi.imported_range(w.entry.pfn().raw()).is_some();
        let right_page = w.entry.pfn().raw() == expected;
        match legality(SeptOp::MmioAccept, w.entry.state()) {
            Legality::Proceed | Legality::AlreadyDone if !owned => return Err(TsmError::MmioOwner(Operand::R8)),
            Legality::Proceed if right_page => {}
            Legality::Proceed => return Err(TsmError::MmioHpaOffset),
            Legality::AlreadyDone if right_page => return Ok(Step::Done(Status::PAGE_ALREADY_ACCEPTED)),
            Legality::AlreadyDone => return Err(TsmError::MmioHpaOffset),
            Legality::ExitToHost => return Ok(exit(&w)),
            Legality::Refuse(kind) => return Err(TsmError::Sept(Operand::Rcx, w.fault(kind))),
        }
        // ALL CHECKS PASSED: nothing below can fail.
        sept::write(&mut self.platform, w.slot, SeptEntry::new(SeptState::MmioMapped, w.entry.pfn(), level));
        Ok(Step::Done(Status::SUCCESS))
    }
}
