//! Where a TD vCPU's RDMSR and WRMSR go, decided in one place: the virtual APIC's registers and
//! IA32_APIC_BASE, the MTRRs, the vCPU's own context registers, or the host (a #VE, which the
//! TD turns into TDG.VP.VMCALL<RDMSR/WRMSR>). None of them reaches the machine's real MSRs: the
//! TD runs on the same CPU as the TSM and the host, so a write that landed on a real MSR would be
//! theirs too.
//!
//! The MTRRs are a bank of values per vCPU and nothing more: with nested paging the memory type
//! of a TD access comes from the TSM's nested table and the TD's PAT, so what the TD writes to
//! its MTRRs (edk2's `MtrrLib` does, for every RAM and MMIO range) changes nothing outside the
//! TD, and reads give back what it wrote, as TDX's virtualized MTRRs do.

use crate::vapic::{self, VirtualApic};

/// IA32_MTRRCAP (read-only).
pub const MTRRCAP: u32 = 0xFE;
/// IA32_MTRR_DEF_TYPE.
pub const MTRR_DEF_TYPE: u32 = 0x2FF;
/// IA32_MTRR_PHYSBASE0; PHYSMASK0 follows, then the other pairs up to 0x20F.
pub const MTRR_PHYSBASE0: u32 = 0x200;
/// The fixed-range MTRRs: 64K at 0x250, 16K at 0x258/0x259, 4K at 0x268..0x26F.
pub const MTRR_FIXED: [u32; 11] = [0x250, 0x258, 0x259, 0x268, 0x269, 0x26A, 0x26B, 0x26C, 0x26D, 0x26E, 0x26F];
/// Variable MTRR pairs offered.
pub const MTRR_VARIABLE: u32 = 8;
/// What IA32_MTRRCAP reads: VCNT 8, FIX (bit 8), WC (bit 10), no SMRR.
pub const MTRRCAP_VALUE: u64 = MTRR_VARIABLE as u64 | 1 << 8 | 1 << 10;
/// MTRR registers the bank keeps: DEF_TYPE, 8 pairs, 11 fixed.
pub const MTRR_SLOTS: usize = 1 + 2 * MTRR_VARIABLE as usize + MTRR_FIXED.len();

/// The vCPU context registers the platform keeps in the vCPU's own state (SVM's VMCB): EFER, PAT,
/// FS/GS/KERNEL_GS base, the SYSCALL and SYSENTER MSRs. (TSC_AUX is not in the VMCB: RDTSCP in a
/// TD would read the machine's, and a write goes to the host.)
pub const CONTEXT: [u32; 12] = [
    0xC000_0080, // EFER
    0x277,       // PAT
    0xC000_0100, // FS_BASE
    0xC000_0101, // GS_BASE
    0xC000_0102, // KERNEL_GS_BASE
    0xC000_0081, // STAR
    0xC000_0082, // LSTAR
    0xC000_0083, // CSTAR
    0xC000_0084, // SFMASK
    0x174,       // SYSENTER_CS
    0x175,       // SYSENTER_ESP
    0x176,       // SYSENTER_EIP
];

/// Where an MSR access of a TD vCPU goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsrClass {
    /// TPR, PPR, EOI, ISR, TMR, IRR, SELF_IPI: the virtual APIC ([`VirtualApic`]).
    VirtualApic,
    /// IA32_APIC_BASE: reads x2APIC enabled ([`vapic::apic_base`]); a write that keeps it so
    /// is accepted and changes nothing, any other goes to the host.
    ApicBase,
    /// IA32_MTRRCAP (read-only) and the bank slot of every other MTRR.
    Mtrr(Option<usize>),
    /// A register of the vCPU's own context, kept by the platform.
    Context,
    /// Everything else: a #VE, so the TD asks the host.
    Host,
}

/// The class of `msr`.
pub fn classify(msr: u32) -> MsrClass {
    if VirtualApic::owns(msr) {
        return MsrClass::VirtualApic;
    }
    if msr == vapic::APIC_BASE {
        return MsrClass::ApicBase;
    }
    if CONTEXT.contains(&msr) {
        return MsrClass::Context;
    }
    match msr {
        MTRRCAP => MsrClass::Mtrr(None),
        MTRR_DEF_TYPE => MsrClass::Mtrr(Some(0)),
        m if (MTRR_PHYSBASE0..MTRR_PHYSBASE0 + 2 * MTRR_VARIABLE).contains(&m) => {
            MsrClass::Mtrr(Some(1 + (m - MTRR_PHYSBASE0) as usize))
        }
        m => match MTRR_FIXED.iter().position(|&f| f == m) {
            Some(i) => MsrClass::Mtrr(Some(1 + 2 * MTRR_VARIABLE as usize + i)),
            None => MsrClass::Host,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_sends_everything_else_to_the_host() {
        for msr in
            [0x10, 0x3A, 0x1A0, 0xC000_0103, 0x802, 0x80F, 0x830, 0x832, 0x838, 0x839, 0x83E, 0x20, 0xC001_0010, 0x210]
        {
            assert_eq!(classify(msr), MsrClass::Host, "{msr:#x}");
        }
    }

    #[test]
    fn classify_happy_path_keeps_apic_mtrrs_and_context_in_the_tsm() {
        for msr in [0x808, 0x80A, 0x80B, 0x810, 0x817, 0x818, 0x827, 0x83F] {
            assert_eq!(classify(msr), MsrClass::VirtualApic, "{msr:#x}");
        }
        assert_eq!(classify(0x1B), MsrClass::ApicBase);
        assert_eq!(classify(0xFE), MsrClass::Mtrr(None));
        let mut slots = [false; MTRR_SLOTS];
        let all = [MTRR_DEF_TYPE].into_iter().chain(0x200..0x210).chain(MTRR_FIXED);
        for msr in all {
            let MsrClass::Mtrr(Some(i)) = classify(msr) else { panic!("{msr:#x}") };
            assert!(!slots[i], "{msr:#x} shares slot {i}");
            slots[i] = true;
        }
        assert!(slots.iter().all(|&s| s), "every slot used once");
        for msr in CONTEXT {
            assert_eq!(classify(msr), MsrClass::Context, "{msr:#x}");
        }
    }
}
