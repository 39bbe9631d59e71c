//! The guest ABI: TDCALL-shaped leaves a TD's vCPU calls while in guest mode.

use crate::abi::{gpa_aligned, gpa_level, LeafSpec, Reg, Regs, TdExit};
use crate::addr::{GuestPhysAddr, PageSize, Pfn};
use crate::error::{SeptErrorKind, TsmError, TsmResult};
use crate::measure;
use crate::platform::Platform;
use crate::sept::{self, legality, Legality, SeptEntry, SeptOp, SeptState, WalkResult};
use crate::status::{Operand, Status};
use crate::td::{Td, TDCS_MR};
use crate::Tsm;

/// The calling vCPU: TD slot and vCPU index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ctx {
    /// TD slot.
    pub td: usize,
    /// vCPU index.
    pub vcpu: usize,
}

/// How a guest call ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Back to the guest with this status.
    Done(Status),
    /// The vCPU leaves guest mode.
    Exit(TdExit),
}

/// A buffer a guest leaf reads or writes: `N` bytes of private memory the TD accepted, inside
/// one 4K frame. [`Tsm::guest_buf`] is the only way to make one and checks every rule first, so
/// a guest leaf cannot hand [`crate::platform::PhysMem`] a byte range that leaves its frame
/// (which the trait forbids and the firmware stops on): the guest's GPA cannot reach it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct GuestBuf<const N: usize> {
    frame: Pfn,
    offset: usize,
}

/// A guest handler.
pub type GuestHandler<P> = fn(&mut Tsm<P>, Ctx, &Regs, &mut Regs) -> TsmResult<Step>;

/// One row of the guest ABI table.
#[derive(Debug)]
pub struct GuestLeaf<P: Platform> {
    /// Documentation and identity of the leaf.
    pub spec: LeafSpec,
    /// Its handler.
    pub handler: GuestHandler<P>,
}

/// Guest leaf numbers (TDX's).
#[allow(missing_docs)]
pub mod leaf {
    pub const VP_VMCALL: u64 = 0;
    pub const VP_INFO: u64 = 1;
    pub const MR_RTMR_EXTEND: u64 = 2;
    pub const VP_VEINFO_GET: u64 = 3;
    pub const MR_REPORT: u64 = 4;
    pub const MEM_PAGE_ACCEPT: u64 = 6;
    pub const MR_VERIFYREPORT: u64 = 22;
    pub const TDI_RD: u64 = 67;
    pub const DMAR_ACCEPT: u64 = 70;
    pub const MMIO_ACCEPT: u64 = 71;
    pub const TDI_START: u64 = 0x8001;
    pub const MR_ATTEST: u64 = 0x8002;
    pub const IOMMU_FAULT_RD: u64 = 0x8003;
}

const CALLER: (Status, &str) = (Status::VCPU_NOT_IN_GUEST, "the calling vCPU is not in guest mode (firmware bug)");

impl<P: Platform> Tsm<P> {
    /// The guest ABI table, sorted by leaf number.
    pub const GUEST_LEAVES: &'static [GuestLeaf<P>] = &[
        GuestLeaf {
            spec: LeafSpec {
                number: leaf::VP_VMCALL,
                name: "TDG.VP.VMCALL",
                summary: "Exits to the host with the registers the guest exposes (GHCI shape: R10 = 0 and R11 the TDVMCALL sub-function, or R10 a seamless request); the host sees them as VP.ENTER's return, and its registers at the next VP.ENTER become the exposed registers' values when the call returns (RAX 0). R10..R13 are always exposed; RCX adds RDX, R8, R9, R14 and R15 by GHCI's bit per GPR. RBX, RBP, RSI and RDI may be named (edk2 passes 0xFFEC) but are never carried: no GHCI call uses them and they stay in the TD. Every register not exposed keeps the guest's value and never reaches the host.",
                inputs: &[
                    (Reg::Rcx, "GPRs to expose, bit n = GPR n, within 0xFFEC (R10..R13 always)"),
                    (Reg::R10, "request (0: GHCI)"),
                    (Reg::R11, "GHCI sub-function, or argument"),
                    (Reg::R12, "argument"),
                    (Reg::R13, "argument"),
                    (Reg::R14, "argument, if exposed"),
                    (Reg::R15, "argument, if exposed"),
                ],
                outputs: &[
                    (Reg::R10, "the host's answer (GHCI: TDVMCALL status)"),
                    (Reg::R11, "the host's answer (GHCI: the value read)"),
                    (Reg::R12, "the host's answer (R13..R15, RDX, R8, R9 likewise when exposed)"),
                ],
                requires: "-",
                errors: &[CALLER, (Status::OPERAND_INVALID, "RCX names RAX, RCX, RSP or a bit above 15")],
            },
            handler: Self::vp_vmcall,
        },
        GuestLeaf {
            spec: LeafSpec {
                number: leaf::VP_INFO,
                name: "TDG.VP.INFO",
                summary: "Describes the TD to itself.",
                inputs: &[],
                outputs: &[
                    (Reg::Rcx, "GPAW (5:0); the shared bit is GPAW-1"),
                    (Reg::Rdx, "TD attributes"),
                    (Reg::R8, "vCPUs created (31:0), MAX_VCPUS (63:32)"),
                    (Reg::R9, "this vCPU's index"),
                ],
                requires: "-",
                errors: &[CALLER],
            },
            handler: Self::vp_info,
        },
        GuestLeaf {
            spec: LeafSpec {
                number: leaf::MR_RTMR_EXTEND,
                name: "TDG.MR.RTMR.EXTEND",
                summary: "RTMR[i] := SHA-384(RTMR[i] || 48 bytes read from private memory).",
                inputs: &[(Reg::Rcx, "GPA of the 48-byte value (64-byte aligned)"), (Reg::Rdx, "RTMR index 0..3")],
                outputs: &[],
                requires: "The GPA MAPPED in the TD.",
                errors: &[
                    CALLER,
                    (Status::OPERAND_INVALID, "RCX misaligned, beyond width or shared"),
                    (Status::OPERAND_INVALID, "RDX above 3"),
                    (Status::EPT_WALK_FAILED, "RCX not mapped (RCX/RDX: where the walk stopped)"),
                    (Status::EPT_ENTRY_STATE_INCORRECT, "RCX not MAPPED (pending or blocked)"),
                ],
            },
            handler: Self::mr_rtmr_extend,
        },
        GuestLeaf {
            spec: LeafSpec {
                number: leaf::VP_VEINFO_GET,
                name: "TDG.VP.VEINFO.GET",
                summary: "Reads, and clears, the information of the last #VE (vector 20) the TSM delivered to this vCPU: CPUID leaves it does not synthesise, HLT, port I/O, MSR accesses, and accesses to PENDING pages.",
                inputs: &[],
                outputs: &[
                    (Reg::Rcx, "exit reason (31:0): 10 CPUID, 12 HLT, 30 I/O, 31 RDMSR, 32 WRMSR, 48 EPT violation"),
                    (Reg::Rdx, "exit qualification"),
                    (Reg::R8, "guest linear address (0: not known)"),
                    (Reg::R9, "guest physical address"),
                    (Reg::R10, "instruction length (31:0), instruction information (63:32)"),
                ],
                requires: "A #VE delivered and not read yet.",
                errors: &[CALLER, (Status::NO_VALID_VE_INFO, "no #VE since the last VEINFO.GET")],
            },
            handler: Self::vp_veinfo_get,
        },
        GuestLeaf {
            spec: LeafSpec {
                number: leaf::MR_REPORT,
                name: "TDG.MR.REPORT",
                summary: "Writes a 1024-byte TDREPORT_STRUCT (TDX layout; TDINFO with MRTD, RTMRs, attributes; REPORTDATA from the guest) MAC'd with the TSM's internal key.",
                inputs: &[
                    (Reg::Rcx, "GPA of the output (1024-byte aligned)"),
                    (Reg::Rdx, "GPA of the 64-byte REPORTDATA (64-byte aligned)"),
                    (Reg::R8, "report subtype, must be 0"),
                ],
                outputs: &[],
                requires: "Both GPAs MAPPED in the TD.",
                errors: &[
                    CALLER,
                    (Status::OPERAND_INVALID, "RCX/RDX misaligned, beyond width or shared"),
                    (Status::OPERAND_INVALID, "R8 not 0"),
                    (Status::EPT_WALK_FAILED, "a buffer not mapped"),
                    (Status::EPT_ENTRY_STATE_INCORRECT, "a buffer not MAPPED"),
                ],
            },
            handler: Self::mr_report,
        },
        GuestLeaf {
            spec: LeafSpec {
                number: leaf::MEM_PAGE_ACCEPT,
                name: "TDG.MEM.PAGE.ACCEPT",
                summary: "Accepts a PENDING 4K or 2M page: zeroes it and makes it MAPPED. A missing, free or blocked mapping is not an error but an EPT-violation exit to the host, which can fix the mapping; the guest then retries.",
                inputs: &[(Reg::Rcx, "GPA (51:12) and level (2:0): 0 = 4K, 1 = 2M")],
                outputs: &[],
                requires: "Entry PENDING at exactly the requested level.",
                errors: &[
                    CALLER,
                    (Status::OPERAND_INVALID, "RCX reserved bits, level above 1, misaligned, beyond width or shared"),
                    (Status::PAGE_SIZE_MISMATCH, "mapped at another size (RCX/RDX: the entry)"),
                    (Status::EPT_ENTRY_STATE_INCORRECT, "device MMIO there"),
                    (Status::PAGE_ALREADY_ACCEPTED, "warning: already MAPPED, nothing changed"),
                ],
            },
            handler: Self::mem_page_accept,
        },
        GuestLeaf {
            spec: LeafSpec {
                number: leaf::MR_VERIFYREPORT,
                name: "TDG.MR.VERIFYREPORT",
                summary: "Checks that a REPORTMACSTRUCT was produced by this TSM (its MAC verifies).",
                inputs: &[(Reg::Rcx, "GPA of the 256-byte REPORTMACSTRUCT (256-byte aligned)")],
                outputs: &[],
                requires: "The GPA MAPPED in the TD.",
                errors: &[
                    CALLER,
                    (Status::OPERAND_INVALID, "RCX misaligned, beyond width or shared"),
                    (Status::EPT_WALK_FAILED, "not mapped"),
                    (Status::EPT_ENTRY_STATE_INCORRECT, "not MAPPED"),
                    (Status::INVALID_REPORTMACSTRUCT, "the MAC does not verify"),
                ],
            },
            handler: Self::mr_verifyreport,
        },
        Self::TDG_TDI_RD,
        Self::TDG_DMAR_ACCEPT,
        Self::TDG_MMIO_ACCEPT,
        Self::TDG_TDI_START,
        Self::TDG_MR_ATTEST,
        Self::TDG_IOMMU_FAULT_RD,
    ];

    /// The calling vCPU, which must be in guest mode.
    pub(crate) fn guest_context(&self, tdvpr: u64) -> TsmResult<Ctx> {
        self.sys()?;
        let (td, vcpu) = self.vcpu_index(tdvpr, Operand::Tdvpr)?;
        match self.td(td)?.vcpus[vcpu] {
            Some(v) if v.in_guest.is_some() => Ok(Ctx { td, vcpu }),
            _ => Err(TsmError::VcpuNotInGuest),
        }
    }

    /// Takes the vCPU out of guest mode, dropping its TLB epoch reference.
    pub(crate) fn leave_guest(&mut self, ctx: Ctx) {
        if let Some(Some(td)) = self.tds.get_mut(ctx.td) {
            if let Some(Some(v)) = td.vcpus.get_mut(ctx.vcpu) {
                if let Some(epoch) = v.in_guest.take() {
                    td.tlb.leave(epoch);
                }
            }
        }
    }

    /// Decodes a register as a private GPA of the TD aligned to `align` bytes (a power of two).
    pub(crate) fn guest_operand(td: &Td, raw: u64, align: u64, op: Operand) -> TsmResult<GuestPhysAddr> {
        let gpa = gpa_aligned(raw, align, op)?;
        Self::private_gpa(td, gpa, align, op)?;
        Ok(gpa)
    }

    /// The `N`-byte buffer at the GPA in `raw`: aligned to `align` bytes (a power of two),
    /// private, inside one 4K page, and MAPPED. Checks in this order, each error naming `op`:
    /// `OPERAND_INVALID` (misaligned, beyond the width or shared), `BUFFER_CROSSES_PAGE`, then
    /// the S-EPT errors of [`Tsm::guest_frame`].
    pub(crate) fn guest_buf<const N: usize>(
        &self,
        td: &Td,
        raw: u64,
        align: u64,
        op: Operand,
    ) -> TsmResult<GuestBuf<N>> {
        let gpa = Self::guest_operand(td, raw, align, op)?;
        let offset = gpa.page_offset() as usize;
        if offset.checked_add(N).is_none_or(|end| end > PageSize::Size4K.bytes() as usize) {
            return Err(TsmError::CrossesPage(op));
        }
        let frame = self.guest_frame(td, gpa, op)?;
        Ok(GuestBuf { frame, offset })
    }

    /// The bytes of a checked guest buffer.
    pub(crate) fn read_guest<const N: usize>(&self, buf: GuestBuf<N>) -> [u8; N] {
        let mut bytes = [0u8; N];
        self.platform.read_bytes(buf.frame, buf.offset, &mut bytes);
        bytes
    }

    /// Writes the first `len` bytes of `data` (all of them if `len` is larger) to a checked guest
    /// buffer.
    pub(crate) fn write_guest<const N: usize>(&mut self, buf: GuestBuf<N>, data: &[u8; N], len: usize) {
        self.platform.write_bytes(buf.frame, buf.offset, &data[..len.min(N)]);
    }

    /// The frame backing a private GPA the guest names as a buffer; it must be MAPPED.
    pub(crate) fn guest_frame(&self, td: &Td, gpa: GuestPhysAddr, op: Operand) -> TsmResult<Pfn> {
        match self.walk(td, gpa, 0)? {
            WalkResult::Reached(w) => match legality(SeptOp::Access, w.entry.state()) {
                Legality::Proceed => Ok(w.entry.pfn()),
                _ => Err(TsmError::Sept(op, w.fault(SeptErrorKind::StateIncorrect))),
            },
            WalkResult::Stopped(w) if w.entry.state() == SeptState::Mapped => {
                let within = (gpa.raw() & (sept::coverage(w.level) - 1)) >> 12;
                w.entry.pfn().checked_add(within).ok_or(TsmError::Corrupt)
            }
            WalkResult::Stopped(w) if w.entry.state().is_leaf() => {
                Err(TsmError::Sept(op, w.fault(SeptErrorKind::StateIncorrect)))
            }
            WalkResult::Stopped(w) => Err(TsmError::Sept(op, w.fault(SeptErrorKind::WalkFailed))),
        }
    }

    fn vp_vmcall(&mut self, _ctx: Ctx, regs: &Regs, _out: &mut Regs) -> TsmResult<Step> {
        if regs.rcx & !TdExit::VMCALL_MASK_ALLOWED != 0 {
            return Err(TsmError::OperandInvalid(Operand::Rcx));
        }
        Ok(Step::Exit(TdExit::vmcall_from(regs)))
    }

    fn vp_info(&mut self, ctx: Ctx, _regs: &Regs, out: &mut Regs) -> TsmResult<Step> {
        let td = self.td(ctx.td)?;
        let params = td.params.ok_or(TsmError::Corrupt)?;
        out.rcx = u64::from(params.gpaw);
        out.rdx = params.attributes;
        out.r8 = td.vcpu_count() as u64 | u64::from(params.max_vcpus) << 32;
        out.r9 = ctx.vcpu as u64;
        Ok(Step::Done(Status::SUCCESS))
    }

    fn vp_veinfo_get(&mut self, ctx: Ctx, _regs: &Regs, out: &mut Regs) -> TsmResult<Step> {
        let td = self.td(ctx.td)?;
        let ve = td.vcpus.get(ctx.vcpu).copied().flatten().and_then(|v| v.ve);
        let ve = ve.ok_or(TsmError::NoValidVeInfo)?;
        // ALL CHECKS PASSED: nothing below can fail.
        if let Some(Some(v)) = self.td_mut(ctx.td)?.vcpus.get_mut(ctx.vcpu) {
            v.ve = None;
        }
        out.rcx = u64::from(ve.exit_reason);
        out.rdx = ve.qualification;
        out.r8 = ve.gla;
        out.r9 = ve.gpa;
        out.r10 = u64::from(ve.instruction_length) | u64::from(ve.instruction_info) << 32;
        Ok(Step::Done(Status::SUCCESS))
    }

    fn mr_rtmr_extend(&mut self, ctx: Ctx, regs: &Regs, _out: &mut Regs) -> TsmResult<Step> {
        let td = self.td(ctx.td)?;
        Self::guest_operand(td, regs.rcx, 64, Operand::Rcx)?;
        let index = usize::try_from(regs.rdx).ok().filter(|&i| i < measure::RTMRS);
        let index = index.ok_or(TsmError::OperandInvalid(Operand::Rdx))?;
        let buf = self.guest_buf::<48>(td, regs.rcx, 64, Operand::Rcx)?;
        let mr_page = td.tdcs[TDCS_MR];
        // ALL CHECKS PASSED: nothing below can fail.
        let data = self.read_guest(buf);
        measure::rtmr_extend(&mut self.platform, mr_page, index, &data);
        Ok(Step::Done(Status::SUCCESS))
    }

    fn mr_report(&mut self, ctx: Ctx, regs: &Regs, _out: &mut Regs) -> TsmResult<Step> {
        let td = self.td(ctx.td)?;
        Self::guest_operand(td, regs.rcx, 1024, Operand::Rcx)?;
        Self::guest_operand(td, regs.rdx, 64, Operand::Rdx)?;
        if regs.r8 != 0 {
            return Err(TsmError::OperandInvalid(Operand::R8));
        }
        let out = self.guest_buf::<{ measure::TDREPORT_BYTES }>(td, regs.rcx, 1024, Operand::Rcx)?;
        let data = self.guest_buf::<64>(td, regs.rdx, 64, Operand::Rdx)?;
        let params = td.params.ok_or(TsmError::Corrupt)?;
        let key = self.sys()?.report_key;
        // ALL CHECKS PASSED: nothing below can fail.
        let report_data = self.read_guest(data);
        let report = measure::tdreport(&self.platform, td.tdcs[TDCS_MR], &params, &self.identity, &key, &report_data);
        self.write_guest(out, &report, measure::TDREPORT_BYTES);
        Ok(Step::Done(Status::SUCCESS))
    }

    fn mr_verifyreport(&mut self, ctx: Ctx, regs: &Regs, _out: &mut Regs) -> TsmResult<Step> {
        let td = self.td(ctx.td)?;
        let buf = self.guest_buf::<{ measure::REPORTMAC_BYTES }>(td, regs.rcx, 256, Operand::Rcx)?;
        let mac_struct = self.read_guest(buf);
        if !measure::verify_report_mac(&self.sys()?.report_key, &mac_struct) {
            return Err(TsmError::InvalidReportMac);
        }
        Ok(Step::Done(Status::SUCCESS))
    }

    fn mem_page_accept(&mut self, ctx: Ctx, regs: &Regs, _out: &mut Regs) -> TsmResult<Step> {
        let td = self.td(ctx.td)?;
        let (gpa, level) = gpa_level(regs.rcx, 1)?;
        let size = PageSize::from_level(level).ok_or(TsmError::OperandInvalid(Operand::Rcx))?;
        Self::private_gpa(td, gpa, size.bytes(), Operand::Rcx)?;
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
        match legality(SeptOp::Accept, w.entry.state()) {
            Legality::Proceed => {}
            Legality::AlreadyDone => return Ok(Step::Done(Status::PAGE_ALREADY_ACCEPTED)),
            Legality::ExitToHost => return Ok(exit(&w)),
            Legality::Refuse(kind) => return Err(TsmError::Sept(Operand::Rcx, w.fault(kind))),
        }
        // ALL CHECKS PASSED: nothing below can fail.
        let page = w.entry.pfn();
        self.scrub(page, size.frames());
        sept::write(&mut self.platform, w.slot, SeptEntry::new(SeptState::Mapped, page, level));
        Ok(Step::Done(Status::SUCCESS))
    }
}
