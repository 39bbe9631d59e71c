//! #VE (vector 20), as a TDX guest handles it: TDG.VP.VEINFO.GET gives the exit reason, the
//! qualification, the GPA and the instruction's length; the guest performs the instruction's
//! effect through a TDVMCALL to the host (GHCI §3) and steps over it. This module is the pure
//! part: decoding the VE information into an [`Action`], the TDVMCALL that serves it, and the
//! register results. `arch` runs it on the trap frame.
//!
//! Handled, as TDVF does (worlds.md §4): CPUID (10), HLT (12), port I/O (30, not string I/O),
//! RDMSR (31), WRMSR (32). An EPT violation (48: a private page the guest never accepted, or
//! one the host blocked) and every other reason are fatal: the guest reports them and stops,
//! it never guesses at a resume.

use crate::tdcall::{tdvmcall, TdcallRegs};

/// VM exit reasons TDG.VP.VEINFO.GET reports (Intel SDM vol. 3 Appendix C).
pub mod reason {
    /// CPUID.
    pub const CPUID: u32 = 10;
    /// HLT.
    pub const HLT: u32 = 12;
    /// IN/OUT/INS/OUTS.
    pub const IO: u32 = 30;
    /// RDMSR.
    pub const MSR_READ: u32 = 31;
    /// WRMSR.
    pub const MSR_WRITE: u32 = 32;
    /// EPT violation.
    pub const EPT_VIOLATION: u32 = 48;
}

/// TDG.VP.VEINFO.GET's outputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VeInfo {
    /// Exit reason (RCX 31:0).
    pub reason: u32,
    /// Exit qualification (RDX).
    pub qualification: u64,
    /// Guest linear address (R8).
    pub gla: u64,
    /// Guest physical address (R9).
    pub gpa: u64,
    /// Instruction length (R10 31:0).
    pub length: u32,
}

impl VeInfo {
    /// Decodes the registers of a successful TDG.VP.VEINFO.GET.
    pub fn decode(r: &TdcallRegs) -> VeInfo {
        VeInfo { reason: r.rcx as u32, qualification: r.rdx, gla: r.r8, gpa: r.r9, length: r.r10 as u32 }
    }
}

/// The registers of the faulting context the handler reads and writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct Context {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rflags: u64,
}

/// RFLAGS.IF.
const RFLAGS_IF: u64 = 1 << 9;

/// What a #VE asks of the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// CPUID of `leaf`/`subleaf` through the host.
    Cpuid {
        /// EAX.
        leaf: u32,
        /// ECX.
        subleaf: u32,
    },
    /// HLT through the host.
    Hlt,
    /// An IN (write false) or OUT of `size` bytes at `port`.
    Io {
        /// The port.
        port: u16,
        /// 1, 2 or 4.
        size: u8,
        /// OUT.
        write: bool,
    },
    /// RDMSR of `msr`.
    RdMsr {
        /// ECX.
        msr: u32,
    },
    /// WRMSR of EDX:EAX to `msr`.
    WrMsr {
        /// ECX.
        msr: u32,
        /// EDX:EAX.
        value: u64,
    },
}

/// Why a #VE is fatal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fatal {
    /// An EPT violation at this GPA: a private page the guest never accepted or the host took.
    EptViolation(u64),
    /// String or REP port I/O (the guest never uses it).
    StringIo(u64),
    /// An I/O size other than 1, 2, 4.
    IoSize(u64),
    /// A reason the guest does not handle.
    Reason(u32),
    /// An instruction length of 0 or above 15: stepping over it would not land on the next one.
    Length(u32),
}

impl core::fmt::Display for Fatal {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            Fatal::EptViolation(gpa) => write!(f, "EPT violation at GPA {gpa:#x} (not accepted, or taken by the host)"),
            Fatal::StringIo(q) => write!(f, "string or REP port I/O (qualification {q:#x})"),
            Fatal::IoSize(q) => write!(f, "port I/O of an impossible size (qualification {q:#x})"),
            Fatal::Reason(r) => write!(f, "unhandled #VE exit reason {r}"),
            Fatal::Length(l) => write!(f, "instruction length {l}"),
        }
    }
}

/// The action a #VE asks for, from its information and the faulting context.
///
/// # Errors
/// [`Fatal`] for everything the guest does not serve.
pub fn decode(info: &VeInfo, ctx: &Context) -> Result<Action, Fatal> {
    if info.reason == reason::EPT_VIOLATION {
        return Err(Fatal::EptViolation(info.gpa));
    }
    if info.length == 0 || info.length > 15 {
        return Err(Fatal::Length(info.length));
    }
    match info.reason {
        reason::CPUID => Ok(Action::Cpuid { leaf: ctx.rax as u32, subleaf: ctx.rcx as u32 }),
        reason::HLT => Ok(Action::Hlt),
        reason::IO => {
            // SDM Table 28-5: size - 1 in 2:0, IN in bit 3, string 4, REP 5, port 31:16.
            let q = info.qualification;
            if q & 0x30 != 0 {
                return Err(Fatal::StringIo(q));
            }
            let size = match q & 7 {
                0 => 1,
                1 => 2,
                3 => 4,
                _ => return Err(Fatal::IoSize(q)),
            };
            Ok(Action::Io { port: (q >> 16) as u16, size, write: q & 8 == 0 })
        }
        reason::MSR_READ => Ok(Action::RdMsr { msr: ctx.rcx as u32 }),
        reason::MSR_WRITE => {
            Ok(Action::WrMsr { msr: ctx.rcx as u32, value: (ctx.rdx & 0xFFFF_FFFF) << 32 | (ctx.rax & 0xFFFF_FFFF) })
        }
        other => Err(Fatal::Reason(other)),
    }
}

/// The TDVMCALL that performs `action` for the context `ctx`.
pub fn request(action: &Action, ctx: &Context) -> TdcallRegs {
    use crate::tdcall::tdvmcall as f;
    match *action {
        Action::Cpuid { leaf, subleaf } => tdvmcall(f::CPUID, [u64::from(leaf), u64::from(subleaf), 0, 0]),
        // GHCI: R12 says whether interrupts are blocked (RFLAGS.IF clear at the HLT): a vCPU
        // that halts so can never be woken, and the host may treat it as stopped.
        Action::Hlt => tdvmcall(f::HLT, [u64::from(ctx.rflags & RFLAGS_IF == 0), 0, 0, 0]),
        Action::Io { port, size, write } => {
            let mask = size_mask(size);
            let value = if write { ctx.rax & mask } else { 0 };
            tdvmcall(f::IO, [u64::from(size), u64::from(write), u64::from(port), value])
        }
        Action::RdMsr { msr } => tdvmcall(f::RDMSR, [u64::from(msr), 0, 0, 0]),
        Action::WrMsr { msr, value } => tdvmcall(f::WRMSR, [u64::from(msr), value, 0, 0]),
    }
}

fn size_mask(size: u8) -> u64 {
    match size {
        1 => 0xFF,
        2 => 0xFFFF,
        _ => 0xFFFF_FFFF,
    }
}

/// The context after the host served `action` with the outputs `out`: CPUID's four registers,
/// IN's value merged into AL/AX (EAX zero-extends, as a 32-bit write does), RDMSR's EDX:EAX.
pub fn complete(action: &Action, ctx: &Context, out: &TdcallRegs) -> Context {
    let mut c = *ctx;
    match *action {
        Action::Cpuid { .. } => {
            c.rax = out.r12 & 0xFFFF_FFFF;
            c.rbx = out.r13 & 0xFFFF_FFFF;
            c.rcx = out.r14 & 0xFFFF_FFFF;
            c.rdx = out.r15 & 0xFFFF_FFFF;
        }
        Action::Io { size, write: false, .. } => {
            let mask = size_mask(size);
            c.rax = if size == 4 { out.r11 & mask } else { (ctx.rax & !mask) | (out.r11 & mask) };
        }
        Action::RdMsr { .. } => {
            c.rax = out.r11 & 0xFFFF_FFFF;
            c.rdx = out.r11 >> 32;
        }
        Action::Hlt | Action::Io { write: true, .. } | Action::WrMsr { .. } => {}
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(reason: u32, qualification: u64, length: u32) -> VeInfo {
        VeInfo { reason, qualification, gla: 0, gpa: 0x5000, length }
    }

    #[test]
    fn decode_refuses_what_it_cannot_serve() {
        let ctx = Context::default();
        assert_eq!(decode(&info(reason::EPT_VIOLATION, 0, 3), &ctx), Err(Fatal::EptViolation(0x5000)));
        assert_eq!(decode(&info(reason::CPUID, 0, 0), &ctx), Err(Fatal::Length(0)));
        assert_eq!(decode(&info(reason::CPUID, 0, 16), &ctx), Err(Fatal::Length(16)));
        assert_eq!(decode(&info(reason::IO, 0x3F8_0010, 1), &ctx), Err(Fatal::StringIo(0x3F8_0010)));
        assert_eq!(decode(&info(reason::IO, 0x3F8_0020, 1), &ctx), Err(Fatal::StringIo(0x3F8_0020)));
        assert_eq!(decode(&info(reason::IO, 0x3F8_0002, 1), &ctx), Err(Fatal::IoSize(0x3F8_0002)));
        assert_eq!(decode(&info(1, 0, 2), &ctx), Err(Fatal::Reason(1)));
        for f in [Fatal::EptViolation(1), Fatal::Reason(2)] {
            assert!(!f.to_string().is_empty());
        }
    }

    #[test]
    fn cpuid_goes_to_the_host_and_fills_four_registers() {
        let ctx = Context { rax: 0xFFFF_FFFF_0000_0001, rbx: 7, rcx: 0x1_0000_0002, rdx: 9, rflags: 0x2 };
        let a = decode(&info(reason::CPUID, 0, 2), &ctx).unwrap();
        assert_eq!(a, Action::Cpuid { leaf: 1, subleaf: 2 });
        let r = request(&a, &ctx);
        assert_eq!((r.r11, r.r12, r.r13), (10, 1, 2));
        let out = TdcallRegs { r12: 0x1_0000_00AA, r13: 0xBB, r14: 0xCC, r15: 0xDD, ..TdcallRegs::default() };
        assert_eq!(complete(&a, &ctx, &out), Context { rax: 0xAA, rbx: 0xBB, rcx: 0xCC, rdx: 0xDD, rflags: 0x2 });
    }

    #[test]
    fn io_in_merges_and_out_masks() {
        // OUT DX, AL to 0x3F8: qualification size 0 (1 byte), direction 0.
        let ctx = Context { rax: 0x1234_5678_9ABC_DE41, ..Context::default() };
        let out_a = decode(&info(reason::IO, 0x3F8 << 16, 1), &ctx).unwrap();
        assert_eq!(out_a, Action::Io { port: 0x3F8, size: 1, write: true });
        let r = request(&out_a, &ctx);
        assert_eq!((r.r11, r.r12, r.r13, r.r14, r.r15), (30, 1, 1, 0x3F8, 0x41));
        assert_eq!(complete(&out_a, &ctx, &TdcallRegs { r11: 0xFF, ..TdcallRegs::default() }), ctx);
        // IN AX, DX from 0x510 (2 bytes): only AX changes.
        let in16 = decode(&info(reason::IO, 0x510 << 16 | 8 | 1, 1), &ctx).unwrap();
        assert_eq!(in16, Action::Io { port: 0x510, size: 2, write: false });
        assert_eq!(request(&in16, &ctx).r15, 0);
        let c = complete(&in16, &ctx, &TdcallRegs { r11: 0xFFFF_BEEF, ..TdcallRegs::default() });
        assert_eq!(c.rax, 0x1234_5678_9ABC_BEEF);
        // IN EAX: zero-extends.
        let in32 = decode(&info(reason::IO, 0xCFC << 16 | 8 | 3, 1), &ctx).unwrap();
        let c = complete(&in32, &ctx, &TdcallRegs { r11: 0x1_8000_0001, ..TdcallRegs::default() });
        assert_eq!(c.rax, 0x8000_0001);
    }

    #[test]
    fn msrs_split_and_join_edx_eax() {
        let ctx = Context { rax: 0xFFFF_FFFF_1111_2222, rcx: 0x1B, rdx: 0xFFFF_FFFF_3333_4444, ..Context::default() };
        let w = decode(&info(reason::MSR_WRITE, 0, 2), &ctx).unwrap();
        assert_eq!(w, Action::WrMsr { msr: 0x1B, value: 0x3333_4444_1111_2222 });
        let r = request(&w, &ctx);
        assert_eq!((r.r11, r.r12, r.r13), (32, 0x1B, 0x3333_4444_1111_2222));
        let rd = decode(&info(reason::MSR_READ, 0, 2), &ctx).unwrap();
        assert_eq!(request(&rd, &ctx).r12, 0x1B);
        let c = complete(&rd, &ctx, &TdcallRegs { r11: 0xAAAA_BBBB_CCCC_DDDD, ..TdcallRegs::default() });
        assert_eq!((c.rax, c.rdx), (0xCCCC_DDDD, 0xAAAA_BBBB));
    }

    #[test]
    fn hlt_asks_the_host_to_halt_saying_whether_interrupts_are_blocked() {
        let blocked = Context { rflags: 0x2, ..Context::default() };
        let h = decode(&info(reason::HLT, 0, 1), &blocked).unwrap();
        let r = request(&h, &blocked);
        assert_eq!((r.r10, r.r11, r.r12), (0, 12, 1));
        assert_eq!(complete(&h, &blocked, &TdcallRegs::default()), blocked);
        let open = Context { rflags: 0x202, ..Context::default() };
        assert_eq!(request(&h, &open).r12, 0);
    }

    #[test]
    fn veinfo_decodes_the_registers() {
        let r = TdcallRegs {
            rcx: 0xFFFF_0000_0000_001E,
            rdx: 0x3F8_0000,
            r8: 1,
            r9: 2,
            r10: 0x7_0000_0001,
            ..TdcallRegs::default()
        };
        assert_eq!(VeInfo::decode(&r), VeInfo { reason: 30, qualification: 0x3F8_0000, gla: 1, gpa: 2, length: 1 });
    }
}
