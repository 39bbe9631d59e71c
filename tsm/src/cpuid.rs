//! CPUID as a TD sees it: what the TSM answers without the host, as the TDX module virtualizes
//! CPUID (TDX module spec, "CPUID virtualization"), and which leaves go to the host as a #VE.
//!
//! The TSM answers every basic leaf up to 0x21 and the extended leaves up to 0x8000_0008 from
//! the CPU it runs on, adjusted to what a TD is: GenuineIntel with max leaf 0x21 and leaf 0x21
//! "IntelTDX    " (what TDVF's `IsTdx` checks before it has an IDT), CPUID.1:ECX[31] set,
//! x2APIC present, no VMX, SVM or MONITOR/MWAIT, OSXSAVE and OSPKE from the TD's own CR4, and
//! its vCPU index as the APIC ID. A leaf above the CPU's own maximum reads as zeros. Answering
//! here matters for speed too: edk2's timer interrupt path asks about seven leaves per tick. The
//! hypervisor range (0x4000_0000..) and extended leaves above 0x8000_0008 are a #VE: the TD asks
//! the host with TDG.VP.VMCALL<CPUID> if it cares.

/// The highest basic leaf a TD sees.
pub const MAX_LEAF: u32 = 0x21;
/// The highest extended leaf a TD sees.
pub const MAX_EXTENDED_LEAF: u32 = 0x8000_0008;

/// "GenuineIntel" as EBX, ECX, EDX.
const GENUINE_INTEL: [u32; 3] = [0x756E_6547, 0x6C65_746E, 0x4965_6E69];
/// "IntelTDX    " as EBX, ECX, EDX (leaf 0x21 sub-leaf 0).
const INTEL_TDX: [u32; 3] = [0x6574_6E49, 0x2020_2020, 0x5844_546C];

/// What the TSM needs to know of the vCPU asking.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuidContext {
    /// The vCPU's index (its APIC ID).
    pub vcpu_index: u32,
    /// The TD's CR4 (OSXSAVE, bit 18, and PKE, bit 22, show in leaves 1 and 7).
    pub cr4: u64,
}

/// The answer (EAX, EBX, ECX, EDX) to CPUID `leaf`/`subleaf` in a TD, from `host(leaf,
/// subleaf)`, the CPU's own answer; `None` for a leaf that is a #VE.
pub fn td_cpuid(leaf: u32, subleaf: u32, ctx: CpuidContext, host: &dyn Fn(u32, u32) -> [u32; 4]) -> Option<[u32; 4]> {
    if leaf >= 0x8000_0000 {
        return extended(leaf, subleaf, host);
    }
    if leaf > MAX_LEAF {
        return None;
    }
    let host_max = host(0, 0)[0];
    let [g1, g2, g3] = GENUINE_INTEL;
    let [t1, t2, t3] = INTEL_TDX;
    Some(match leaf {
        0 => [MAX_LEAF, g1, g2, g3],
        MAX_LEAF if subleaf == 0 => [0, t1, t2, t3],
        MAX_LEAF => [0; 4],
        l if l > host_max => [0; 4],
        1 => {
            let [a, b, c, d] = host(1, 0);
            let ebx = (b & 0x0000_FFFF) | 1 << 16 | ctx.vcpu_index << 24;
            let ecx = (c & !(1 << 5 | 1 << 3 | 1 << 27)) | 1 << 21 | 1 << 31 | osxsave(ctx.cr4);
            [a, ebx, ecx, d | 1 << 9]
        }
        7 => {
            let [a, b, c, d] = host(7, subleaf);
            let ecx = if subleaf == 0 { (c & !(1 << 4)) | (((ctx.cr4 >> 22) & 1) as u32) << 4 } else { c };
            [a, b, ecx, d]
        }
        0xB | 0x1F => {
            let [a, b, c, _] = host(leaf, subleaf);
            [a, b, c, ctx.vcpu_index]
        }
        l => host(l, subleaf),
    })
}

fn osxsave(cr4: u64) -> u32 {
    (((cr4 >> 18) & 1) as u32) << 27
}

fn extended(leaf: u32, subleaf: u32, host: &dyn Fn(u32, u32) -> [u32; 4]) -> Option<[u32; 4]> {
    if leaf > MAX_EXTENDED_LEAF {
        return None;
    }
    let host_max = host(0x8000_0000, 0)[0];
    Some(match leaf {
        0x8000_0000 => [host_max.min(MAX_EXTENDED_LEAF), 0, 0, 0],
        l if l > host_max => [0; 4],
        0x8000_0001 => {
            // No SVM (ECX bit 2) in a TD: it runs no guests of its own.
            let [a, b, c, d] = host(leaf, subleaf);
            [a, b, c & !(1 << 2), d]
        }
        l => host(l, subleaf),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CPU like QEMU's TCG `-cpu max`: AMD, basic leaves to 0xD, extended to 0x8000_0021.
    fn tcg(leaf: u32, sub: u32) -> [u32; 4] {
        match leaf {
            0 => [0xD, 0x6874_7541, 0x444D_4163, 0x6974_6E65],
            1 => [0x0008_0F11, 0x0701_0800, 0xFEDA_3223 | 1 << 5 | 1 << 3, 0x078B_FBFF],
            7 => [0, 0x01C0_03A9, 0x1 | 1 << 4, 0],
            0xB => [1, 1, 0x100 | sub, 7],
            0x8000_0000 => [0x8000_0021, 0, 0, 0],
            0x8000_0001 => [0x0008_0F11, 0, 0x0000_0F7F, 0x2FD3_FBFF | 1 << 26],
            0x8000_0008 => [0x0000_3030, 0, 0, 0],
            _ => [leaf, sub, 0xAA, 0xBB],
        }
    }

    const CTX: CpuidContext = CpuidContext { vcpu_index: 3, cr4: 1 << 18 };

    #[test]
    fn td_cpuid_rejects_the_hypervisor_range_and_high_extended_leaves() {
        for leaf in [0x22, 0x4000_0000, 0x4000_0001, 0x8000_0009, 0x8000_0021, 0xFFFF_FFFF] {
            assert_eq!(td_cpuid(leaf, 0, CTX, &tcg), None, "{leaf:#x}");
        }
    }

    #[test]
    fn td_cpuid_happy_path_presents_a_tdx_guest() {
        let vendor = td_cpuid(0, 0, CTX, &tcg).unwrap();
        assert_eq!(vendor[0], 0x21);
        let mut s = [0u8; 12];
        for (i, r) in [vendor[1], vendor[3], vendor[2]].iter().enumerate() {
            s[i * 4..i * 4 + 4].copy_from_slice(&r.to_le_bytes());
        }
        assert_eq!(&s, b"GenuineIntel");
        let tdx = td_cpuid(0x21, 0, CTX, &tcg).unwrap();
        let mut s = [0u8; 12];
        for (i, r) in [tdx[1], tdx[3], tdx[2]].iter().enumerate() {
            s[i * 4..i * 4 + 4].copy_from_slice(&r.to_le_bytes());
        }
        assert_eq!(&s, b"IntelTDX    ");
        assert_eq!(td_cpuid(0x21, 1, CTX, &tcg), Some([0; 4]));
        let [_, b, c, d] = td_cpuid(1, 0, CTX, &tcg).unwrap();
        assert_eq!(b >> 24, 3, "APIC ID is the vCPU index");
        assert_eq!((c >> 31 & 1, c >> 21 & 1, c >> 5 & 1, c >> 3 & 1, c >> 27 & 1), (1, 1, 0, 0, 1));
        assert_eq!(d >> 9 & 1, 1, "APIC present");
        let no_osxsave = td_cpuid(1, 0, CpuidContext { cr4: 0, ..CTX }, &tcg).unwrap();
        assert_eq!(no_osxsave[2] >> 27 & 1, 0, "OSXSAVE follows the TD's CR4");
        assert_eq!(td_cpuid(7, 0, CTX, &tcg).unwrap()[2] & (1 << 4), 0, "OSPKE follows CR4.PKE");
        assert_eq!(td_cpuid(0xB, 1, CTX, &tcg), Some([1, 1, 0x101, 3]));
        assert_eq!(td_cpuid(0x10, 0, CTX, &tcg), Some([0; 4]), "above the CPU's own maximum");
        assert_eq!(td_cpuid(0xD, 1, CTX, &tcg), Some([0xD, 1, 0xAA, 0xBB]), "passed through");
        assert_eq!(td_cpuid(0x8000_0000, 0, CTX, &tcg).unwrap()[0], 0x8000_0008);
        let ext = td_cpuid(0x8000_0001, 0, CTX, &tcg).unwrap();
        assert_eq!((ext[2] >> 2 & 1, ext[3] >> 26 & 1), (0, 1), "no SVM; 1 GiB pages kept");
        assert_eq!(td_cpuid(0x8000_0008, 0, CTX, &tcg).unwrap()[0] & 0xFF, 0x30);
    }
}
