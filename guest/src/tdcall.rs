//! The guest's TDCALLs, as register blocks: the leaves it uses (TDX module ABI, "TDG" functions)
//! and the TDVMCALLs of Intel's GHCI (Guest-Hypervisor Communication Interface, §3) it makes
//! through TDG.VP.VMCALL. Building and reading the registers is pure, so host tests check every
//! encoding; `arch` executes the instruction (`66 0f 01 cc`).
//!
//! The project writes its own wrappers: the `tdx-guest` crate (0.6) does not build for this
//! target (feasibility.md §2).

use tsm::abi::guest::leaf;

/// The registers a TDCALL reads and writes: the ABI's `Regs` (RAX..R13) plus R14 and R15, which
/// GHCI's TDVMCALLs use for the I/O port, CPUID outputs and values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct TdcallRegs {
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

impl TdcallRegs {
    /// The block of the ABI's `Regs`.
    pub fn from_regs(r: &tsm::Regs) -> TdcallRegs {
        TdcallRegs {
            rax: r.rax,
            rcx: r.rcx,
            rdx: r.rdx,
            r8: r.r8,
            r9: r.r9,
            r10: r.r10,
            r11: r.r11,
            r12: r.r12,
            r13: r.r13,
            r14: r.r14,
            r15: r.r15,
        }
    }

    /// The ABI's `Regs` of this block.
    pub fn to_regs(self) -> tsm::Regs {
        tsm::Regs {
            rax: self.rax,
            rcx: self.rcx,
            rdx: self.rdx,
            r8: self.r8,
            r9: self.r9,
            r10: self.r10,
            r11: self.r11,
            r12: self.r12,
            r13: self.r13,
            r14: self.r14,
            r15: self.r15,
        }
    }
}

/// TDG.VP.VEINFO.GET (TDX module ABI leaf 3): the #VE information of the current #VE.
pub const VP_VEINFO_GET: u64 = 3;

/// GHCI TDVMCALL sub-functions (R11 with R10 = 0), numbered as the VM exit reasons they stand
/// for.
pub mod tdvmcall {
    /// CPUID: R12 leaf, R13 sub-leaf; returns EAX..EDX in R12..R15.
    pub const CPUID: u64 = 10;
    /// HLT: R12 = 1 if interrupts are blocked.
    pub const HLT: u64 = 12;
    /// Port I/O: R12 size, R13 direction (1 write), R14 port, R15 value; a read returns R11.
    pub const IO: u64 = 30;
    /// RDMSR: R12 MSR; returns R11.
    pub const RDMSR: u64 = 31;
    /// WRMSR: R12 MSR, R13 value.
    pub const WRMSR: u64 = 32;
}

/// RCX of a TDVMCALL: the registers the guest exposes to the host (GHCI §2.4.1: bit n is the
/// register numbered n, R10..R15). Nothing else leaves the TD.
pub const TDVMCALL_EXPOSE: u64 = 0xFC00;

/// A standard TDVMCALL of `function` with R12..R15 = `args`.
pub const fn tdvmcall(function: u64, args: [u64; 4]) -> TdcallRegs {
    TdcallRegs {
        rax: leaf::VP_VMCALL,
        rcx: TDVMCALL_EXPOSE,
        rdx: 0,
        r8: 0,
        r9: 0,
        r10: 0,
        r11: function,
        r12: args[0],
        r13: args[1],
        r14: args[2],
        r15: args[3],
    }
}

/// Why a TDCALL did not do what the guest asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TdcallError {
    /// The TSM refused the TDCALL itself: RAX.
    Tdcall(u64),
    /// The host answered the TDVMCALL with a failure: R10 (GHCI status).
    Host(u64),
}

impl core::fmt::Display for TdcallError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            TdcallError::Tdcall(s) => write!(f, "TDCALL status {s:#018x}"),
            TdcallError::Host(s) => write!(f, "TDVMCALL refused by the host: status {s:#x}"),
        }
    }
}

/// Checks a TDVMCALL's outputs: RAX 0 (the TSM carried the call) and R10 0 (the host served it).
///
/// # Errors
/// [`TdcallError`] naming which side failed.
pub fn tdvmcall_result(r: &TdcallRegs) -> Result<(), TdcallError> {
    if r.rax != 0 {
        return Err(TdcallError::Tdcall(r.rax));
    }
    if r.r10 != 0 {
        return Err(TdcallError::Host(r.r10));
    }
    Ok(())
}

/// What TDG.VP.INFO says of the TD.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TdInfo {
    /// Guest physical address width.
    pub gpaw: u8,
    /// TD attributes.
    pub attributes: u64,
    /// vCPUs created.
    pub vcpus: u32,
    /// MAX_VCPUS.
    pub max_vcpus: u32,
    /// This vCPU's index.
    pub vcpu_index: u32,
}

impl TdInfo {
    /// Decodes TDG.VP.INFO's outputs (docs/abi.md).
    pub fn decode(r: &TdcallRegs) -> TdInfo {
        TdInfo {
            gpaw: (r.rcx & 0x3F) as u8,
            attributes: r.rdx,
            vcpus: r.r8 as u32,
            max_vcpus: (r.r8 >> 32) as u32,
            vcpu_index: r.r9 as u32,
        }
    }

    /// The shared bit of a GPA: GPAW - 1.
    pub fn shared_bit(&self) -> u64 {
        1u64 << self.gpaw.saturating_sub(1).min(63)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tdvmcall_is_ghci_shaped() {
        let w = tdvmcall(tdvmcall::IO, [1, 1, 0x3F8, 0x41]);
        assert_eq!((w.rax, w.rcx, w.r10, w.r11), (0, 0xFC00, 0, 30));
        assert_eq!((w.r12, w.r13, w.r14, w.r15), (1, 1, 0x3F8, 0x41));
    }

    #[test]
    fn tdvmcall_result_names_the_side_that_failed() {
        let mut r = tdvmcall(tdvmcall::IO, [1, 1, 0x3F8, 0]);
        r.rax = 0;
        r.r10 = 0;
        assert_eq!(tdvmcall_result(&r), Ok(()));
        r.r10 = 1;
        assert_eq!(tdvmcall_result(&r), Err(TdcallError::Host(1)));
        r.rax = 0xC000_F001_0000_0000;
        assert_eq!(tdvmcall_result(&r), Err(TdcallError::Tdcall(0xC000_F001_0000_0000)));
    }

    #[test]
    fn vp_info_decodes_the_abi_table() {
        let r = TdcallRegs { rcx: 48, rdx: 0x10, r8: (4 << 32) | 1, r9: 0, ..TdcallRegs::default() };
        let i = TdInfo::decode(&r);
        assert_eq!((i.gpaw, i.attributes, i.vcpus, i.max_vcpus, i.vcpu_index), (48, 0x10, 1, 4, 0));
        assert_eq!(i.shared_bit(), 1 << 47);
        assert_eq!(TdInfo::decode(&TdcallRegs { rcx: 52, ..TdcallRegs::default() }).shared_bit(), 1 << 51);
    }

    #[test]
    fn regs_round_trip_without_r14_r15() {
        let regs = tsm::Regs::call(6, 0x1000, 2, 3, 4);
        let t = TdcallRegs::from_regs(&regs);
        assert_eq!((t.r14, t.r15), (0, 0));
        assert_eq!(t.to_regs(), regs);
    }
}
