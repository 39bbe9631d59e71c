//! The two ABIs. Each is a table of leaves (number, name, registers, errors, handler); the
//! dispatchers here are the only code that writes status registers, and they report every call
//! once through [`Platform::log_call`].

mod exchange;
pub mod guest;
mod guest_tdi;
pub mod host;
mod host_dmar;
mod host_intr;
mod host_mem;
pub mod host_pdev;
pub mod host_tdi;

use crate::addr::GuestPhysAddr;
use crate::error::{TsmError, TsmResult};
use crate::platform::{CallRecord, Platform};
use crate::status::{Operand, Status};
use crate::Tsm;

/// Table rows several device leaves share.
pub(crate) mod rows {
    use super::Reg;
    use crate::status::Status;

    /// TDH.SYS.CONFIG not done.
    pub(crate) const SYS: (Status, &str) = (Status::SYS_NOT_READY, "TDH.SYS.CONFIG not done");
    /// RCX naming a TDI page.
    pub(crate) const TDI_RCX: [(Status, &str); 3] = [
        (Status::OPERAND_INVALID, "RCX not a 4K-aligned address"),
        (Status::OPERAND_ADDR_RANGE_ERROR, "RCX outside the TDMRs"),
        (Status::PAGE_METADATA_INCORRECT, "RCX is not a TDI page"),
    ];
    /// The message page of a resumable call.
    pub(crate) const MSG_IN: [(Reg, &str); 2] = [
        (Reg::Rdx, "message page (host memory, 4K aligned)"),
        (Reg::R8, "bytes of the device's answer in it; 0 on the first call"),
    ];
    /// How long the host waits before moving a request (the TSM has no clock).
    pub(crate) const WAIT_OUT: (Reg, &str) = (
        Reg::R9,
        "DEVICE_REQUEST: microseconds the host waits before moving the request: after ERROR ResponseNotReady the request is RESPOND_IF_READY and this is the device's response time (2^RDTExponent); 0 otherwise",
    );
}

/// The registers of one call. In: RAX = leaf, the others inputs. Out: RAX = status, the others
/// outputs; registers a leaf does not name as outputs come back zero. R14 and R15 are inputs and
/// outputs of TDG.VP.VMCALL and TDH.VP.ENTER only (GHCI's operands, as TDX carries them); every
/// other leaf ignores them and leaves them zero.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct Regs {
    pub rax: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
}

impl Regs {
    /// A call of `leaf` with RCX, RDX, R8, R9 set.
    pub const fn call(leaf: u64, rcx: u64, rdx: u64, r8: u64, r9: u64) -> Regs {
        Regs { rax: leaf, rcx, rdx, r8, r9, r10: 0, r11: 0, r12: 0, r13: 0, r14: 0, r15: 0 }
    }

    /// The register GHCI's mask bit `bit` names (bit n = GPR n: 2 RDX, 8..15 R8..R15), if
    /// this register file holds it.
    fn gpr_mut(&mut self, bit: u32) -> Option<&mut u64> {
        Some(match bit {
            2 => &mut self.rdx,
            8 => &mut self.r8,
            9 => &mut self.r9,
            10 => &mut self.r10,
            11 => &mut self.r11,
            12 => &mut self.r12,
            13 => &mut self.r13,
            14 => &mut self.r14,
            15 => &mut self.r15,
            _ => return None,
        })
    }

    /// Only the registers `mask` names (GHCI's bit per GPR) kept; RAX, RCX and all others zero.
    pub fn exposed(&self, mask: u64) -> Regs {
        let mut src = *self;
        let mut out = Regs::default();
        for bit in 0..16 {
            if mask & (1 << bit) != 0 {
                if let (Some(to), Some(from)) = (out.gpr_mut(bit), src.gpr_mut(bit)) {
                    *to = *from;
                }
            }
        }
        out
    }

    /// The status in RAX.
    pub const fn status(&self) -> Status {
        Status(self.rax)
    }
}

/// A register named in a leaf's table row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Reg {
    Rcx,
    Rdx,
    R8,
    R9,
    R10,
    R11,
    R12,
    R13,
    R14,
    R15,
}

impl Reg {
    /// The register's name.
    pub const fn name(self) -> &'static str {
        match self {
            Reg::Rcx => "RCX",
            Reg::Rdx => "RDX",
            Reg::R8 => "R8",
            Reg::R9 => "R9",
            Reg::R10 => "R10",
            Reg::R11 => "R11",
            Reg::R12 => "R12",
            Reg::R13 => "R13",
            Reg::R14 => "R14",
            Reg::R15 => "R15",
        }
    }
}

/// The documentation half of a table row.
#[derive(Clone, Copy, Debug)]
pub struct LeafSpec {
    /// Leaf number (RAX). TDX's number where TDX has the leaf; seamless-only leaves from 0x8000.
    pub number: u64,
    /// TDX-style name.
    pub name: &'static str,
    /// What the leaf does.
    pub summary: &'static str,
    /// Input registers.
    pub inputs: &'static [(Reg, &'static str)],
    /// Output registers on success.
    pub outputs: &'static [(Reg, &'static str)],
    /// State the call requires, in words.
    pub requires: &'static str,
    /// The errors and warnings it returns, in the order the checks run.
    pub errors: &'static [(Status, &'static str)],
}

/// What a guest call ended in when it made the vCPU leave guest mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TdExit {
    /// TDG.VP.VMCALL: a request to the host, with the registers the guest exposed.
    Vmcall {
        /// The registers exposed (GHCI's bit per GPR, what VP.ENTER returns in RCX): always
        /// R10..R13, and of the guest's RCX whatever this register file carries
        /// ([`TdExit::VMCALL_CARRIED`]).
        mask: u64,
        /// The exposed registers as the guest set them; RAX, RCX and every other register zero.
        regs: Regs,
    },
    /// An access or ACCEPT hit an entry the host must fix (TDX: EPT-violation TD exit).
    EptViolation {
        /// The GPA the guest used.
        gpa: GuestPhysAddr,
        /// The level the guest asked for.
        requested_level: u8,
        /// The level the walk reached.
        level: u8,
        /// The raw entry found there.
        entry: u64,
    },
    /// The vCPU shut down (triple fault): it cannot run again.
    TripleFault,
    /// The TSM's preemption timer ended the vCPU's time slice (TDX: a physical interrupt exits
    /// the TD). Nothing of the TD changes; the host enters it again when it wants.
    ExternalInterrupt,
}

impl TdExit {
    /// VMX basic exit reason of a TDCALL(TDG.VP.VMCALL) TD exit.
    pub const REASON_TDCALL: u64 = 77;
    /// VMX basic exit reason of an EPT violation.
    pub const REASON_EPT_VIOLATION: u64 = 48;
    /// VMX basic exit reason of a triple fault.
    pub const REASON_TRIPLE_FAULT: u64 = 2;
    /// VMX basic exit reason of an external interrupt.
    pub const REASON_EXTERNAL_INTERRUPT: u64 = 1;
    /// The registers every TDG.VP.VMCALL exposes to the host (RCX's bit per GPR): R10..R13,
    /// the request and its first arguments, whatever the guest's RCX says (so a guest that
    /// passes RCX = 0 still reaches the host).
    pub const VMCALL_EXPOSED: u64 = 0x3C00;
    /// The mask bits a guest may set in TDG.VP.VMCALL's RCX: GHCI's 0xFFEC (RDX, RBX, RBP, RSI,
    /// RDI, R8..R15; never RAX, RCX or RSP), what edk2 passes. Others are OPERAND_INVALID.
    pub const VMCALL_MASK_ALLOWED: u64 = 0xFFEC;
    /// Of those, the registers carried to the host and back: RDX, R8..R15. RBX, RBP, RSI and
    /// RDI are named by GHCI's mask but used by no GHCI call, and this ABI's register file does
    /// not hold them: they stay in the TD (the host sees none, the TD keeps its values).
    pub const VMCALL_CARRIED: u64 = 0xFF04;

    /// A TDG.VP.VMCALL exposing only R10..R13 (`args`), as a guest passing RCX = 0 makes.
    pub fn vmcall(args: [u64; 4]) -> TdExit {
        let [r10, r11, r12, r13] = args;
        TdExit::Vmcall { mask: Self::VMCALL_EXPOSED, regs: Regs { r10, r11, r12, r13, ..Regs::default() } }
    }

    /// The exit of a TDG.VP.VMCALL with the guest's registers `guest` (RCX its mask, already
    /// checked against [`TdExit::VMCALL_MASK_ALLOWED`]): exactly the exposed ones.
    pub fn vmcall_from(guest: &Regs) -> TdExit {
        let mask = (guest.rcx & Self::VMCALL_CARRIED) | Self::VMCALL_EXPOSED;
        TdExit::Vmcall { mask, regs: guest.exposed(mask) }
    }

    /// R10..R13 of a VMCALL (the request and its first three arguments); zeros for other exits.
    pub fn args(&self) -> [u64; 4] {
        match self {
            TdExit::Vmcall { regs, .. } => [regs.r10, regs.r11, regs.r12, regs.r13],
            _ => [0; 4],
        }
    }

    /// The guest's registers after the host answered its TDG.VP.VMCALL at the next VP.ENTER
    /// with `host` (that call's registers): every register the VMCALL exposed (`mask`) takes
    /// the host's value, RAX is 0 (the TDCALL succeeded), every other register keeps the
    /// guest's, as TDX resumes the TD.
    pub fn vmcall_answered(mask: u64, host: &Regs, guest: &Regs) -> Regs {
        let mut out = *guest;
        let mut from = *host;
        for bit in 0..16 {
            if mask & Self::VMCALL_CARRIED & (1 << bit) != 0 {
                if let (Some(to), Some(v)) = (out.gpr_mut(bit), from.gpr_mut(bit)) {
                    *to = *v;
                }
            }
        }
        out.rax = 0;
        out
    }

    /// The registers TDH.VP.ENTER returns to the host for this exit, and nothing else of the
    /// TD: RAX the VMX exit reason (status class SUCCESS), then for TDG.VP.VMCALL RCX the
    /// exposed-register mask and the exposed registers; for an EPT violation R8 the GPA, RCX
    /// the S-EPT entry found and RDX its level (2:0) and the level asked for (10:8). Every
    /// other register is zero.
    pub fn host_regs(&self) -> Regs {
        let mut r = Regs::default();
        match *self {
            TdExit::Vmcall { mask, regs } => {
                r = regs.exposed(mask);
                r.rax = Self::REASON_TDCALL;
                r.rcx = mask;
            }
            TdExit::EptViolation { gpa, requested_level, level, entry } => {
                r.rax = Self::REASON_EPT_VIOLATION;
                r.rcx = entry;
                r.rdx = u64::from(level) | u64::from(requested_level) << 8;
                r.r8 = gpa.raw();
            }
            TdExit::TripleFault => r.rax = Self::REASON_TRIPLE_FAULT,
            TdExit::ExternalInterrupt => r.rax = Self::REASON_EXTERNAL_INTERRUPT,
        }
        r
    }

    /// The exit that [`TdExit::host_regs`] encoded, or `None` if `r` is not a TD exit.
    pub fn from_host_regs(r: &Regs) -> Option<TdExit> {
        match r.rax {
            Self::REASON_TDCALL => Some(TdExit::Vmcall { mask: r.rcx, regs: r.exposed(r.rcx) }),
            Self::REASON_EPT_VIOLATION => Some(TdExit::EptViolation {
                gpa: GuestPhysAddr::new(r.r8)?,
                requested_level: ((r.rdx >> 8) & 7) as u8,
                level: (r.rdx & 7) as u8,
                entry: r.rcx,
            }),
            Self::REASON_TRIPLE_FAULT => Some(TdExit::TripleFault),
            Self::REASON_EXTERNAL_INTERRUPT => Some(TdExit::ExternalInterrupt),
            _ => None,
        }
    }
}

/// The result of a guest call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestReturn {
    /// Registers as the guest sees them after the call (RAX = status).
    pub regs: Regs,
    /// `Some` if the vCPU left guest mode; the host sees this as VP.ENTER's return.
    pub exit: Option<TdExit>,
}

/// Decodes RCX as TDX's "GPA and level": level in bits 2:0, bits 11:3 zero, GPA in bits 51:12.
pub(crate) fn gpa_level(rcx: u64, max_level: u8) -> TsmResult<(GuestPhysAddr, u8)> {
    let level = (rcx & 7) as u8;
    if rcx & 0xFF8 != 0 || level > max_level {
        return Err(TsmError::OperandInvalid(Operand::Rcx));
    }
    let gpa = GuestPhysAddr::new(rcx & !0xFFF).ok_or(TsmError::OperandInvalid(Operand::Rcx))?;
    Ok((gpa, level))
}

/// Decodes a register as a GPA aligned to `align` bytes.
pub(crate) fn gpa_aligned(raw: u64, align: u64, op: Operand) -> TsmResult<GuestPhysAddr> {
    let gpa = GuestPhysAddr::new(raw).ok_or(TsmError::OperandInvalid(op))?;
    if raw & (align - 1) != 0 {
        return Err(TsmError::OperandInvalid(op));
    }
    Ok(gpa)
}

/// Writes the status of a result into RAX, and S-EPT details into RCX/RDX for state errors.
fn finish(result: TsmResult<Status>, out: &mut Regs) {
    match result {
        Ok(status) => out.rax = status.0,
        Err(e) => {
            *out = Regs::default();
            out.rax = e.status().0;
            if let Some((entry, level_state)) = e.sept_details() {
                out.rcx = entry;
                out.rdx = level_state;
            }
        }
    }
}

impl<P: Platform> Tsm<P> {
    /// Executes one host (SEAMCALL-shaped) call.
    pub fn host_call(&mut self, regs: &Regs) -> Regs {
        let start = self.call_clock();
        self.drain_dma_faults();
        let mut out = Regs::default();
        let leaf = Self::HOST_LEAVES.iter().find(|l| l.spec.number == regs.rax);
        let (name, result) = match leaf {
            Some(l) => (l.spec.name, (l.handler)(self, regs, &mut out)),
            None => ("unknown", Err(TsmError::UnknownLeaf)),
        };
        finish(result, &mut out);
        self.log(false, regs.rax, name, out.rax, start);
        out
    }

    /// Executes one guest (TDCALL-shaped) call made by the vCPU whose TDVPR is `tdvpr`. The
    /// caller (the firmware) knows which vCPU is running; the TSM checks it is in guest mode.
    pub fn guest_call(&mut self, tdvpr: u64, regs: &Regs) -> GuestReturn {
        let start = self.call_clock();
        self.drain_dma_faults();
        let mut out = Regs::default();
        let leaf = Self::GUEST_LEAVES.iter().find(|l| l.spec.number == regs.rax);
        let name = leaf.map_or("unknown", |l| l.spec.name);
        let mut exit = None;
        let result = match self.guest_context(tdvpr) {
            Err(e) => Err(e),
            Ok(ctx) => match leaf {
                None => Err(TsmError::UnknownLeaf),
                Some(l) => match (l.handler)(self, ctx, regs, &mut out) {
                    Ok(guest::Step::Done(status)) => Ok(status),
                    Ok(guest::Step::Exit(e)) => {
                        self.leave_guest(ctx);
                        exit = Some(e);
                        Ok(Status::SUCCESS)
                    }
                    Err(e) => Err(e),
                },
            },
        };
        finish(result, &mut out);
        self.log(true, regs.rax, name, out.rax, start);
        GuestReturn { regs: out, exit }
    }

    fn call_clock(&self) -> u64 {
        if self.platform.call_log_enabled() {
            self.platform.now_ns()
        } else {
            0
        }
    }

    fn log(&mut self, guest: bool, leaf: u64, name: &'static str, status: u64, start: u64) {
        if self.platform.call_log_enabled() {
            let elapsed_ns = self.platform.now_ns().saturating_sub(start);
            let record = CallRecord { guest, leaf, name, status, elapsed_ns };
            self.platform.log_call(&record);
        }
    }
}
