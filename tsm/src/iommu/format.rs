//! VT-d scalable-mode translation structures (Intel VT-d spec rev 3.x/4.x, chapter 9), encoded
//! and decoded as the 64-bit little-endian words they occupy in memory.
//!
//! | structure | size | table | index | spec |
//! |---|---|---|---|---|
//! | scalable-mode root entry | 128 bits | root table, 256 entries | bus | §9.2 |
//! | scalable-mode context entry | 256 bits | context table, 128 entries | devfn & 0x7F | §9.4 |
//! | scalable-mode PASID directory entry | 64 bits | PASID directory, 2^(PDTS+7) entries | PASID[19:6] | §9.5 |
//! | scalable-mode PASID table entry | 512 bits | PASID table, 64 entries | PASID[5:0] | §9.6 |
//!
//! Every table is one 4 KiB frame, except a PASID directory with PDTS > 2 (the TSM writes
//! PDTS = 2: one frame, 512 entries, PASIDs below 32768). Pointers are 4K frame addresses in
//! bits HAW-1:12 with HAW = 52; bits above HAW are reserved.
//!
//! This IOMMU reports no device-TLB (ECAP.DT), page-request (ECAP.PRS), first-stage or nested
//! translation, second-stage access/dirty or execute capability and no RID_PASID support
//! (ECAP.RPS), so those fields are reserved: as VT-d specifies for a capability the hardware
//! does not report, a non-zero value there is a reserved-field fault.

use crate::addr::Pfn;

use super::{DomainId, SeptLevels};

/// Bits 51:12: a 4K frame address below HAW 52.
pub const ADDR_MASK: u64 = 0x000F_FFFF_FFFF_F000;
/// Bits 63:52: above HAW, reserved in every pointer field.
const ABOVE_HAW: u64 = 0xFFF0_0000_0000_0000;
/// Present (P), bit 0 of every structure.
pub const PRESENT: u64 = 1;
/// Fault Processing Disable (FPD), bit 1 of context, PASID directory and PASID entries.
pub const FPD: u64 = 1 << 1;

/// Root entries per root table (one per bus).
pub const ROOT_ENTRIES: usize = 256;
/// Context entries per scalable-mode context table.
pub const CONTEXT_ENTRIES: usize = 128;
/// 64-bit words per context entry.
pub const CONTEXT_WORDS: usize = 4;
/// PASID directory entries per 4K frame.
pub const PASID_DIR_ENTRIES_PER_FRAME: usize = 512;
/// PASID entries per PASID table.
pub const PASID_TABLE_ENTRIES: usize = 64;
/// 64-bit words per PASID entry.
pub const PASID_WORDS: usize = 8;
/// The PDTS the TSM writes: 2^(2+7) = 512 directory entries, exactly one frame.
pub const PDTS_ONE_FRAME: u8 = 2;
/// PASIDs the TSM's one-frame directory can reach.
pub const PASIDS_PER_DIRECTORY: u32 = (PASID_DIR_ENTRIES_PER_FRAME * PASID_TABLE_ENTRIES) as u32;
/// The PASID used for requests without PASID. The TSM reports no RID_PASID support
/// (ECAP.RPS = 0), so it is PASID 0, as VT-d 4.x defines for that case.
pub const RID_PASID: u32 = 0;
/// PGTT = 010b: second-stage translation only (§9.6).
pub const PGTT_SECOND_STAGE: u64 = 0b010;

/// A present structure had a non-zero reserved field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReservedField;

const fn frame(raw: u64) -> Pfn {
    // ADDR_MASK keeps bits 51:12, so the frame number always fits 40 bits.
    match Pfn::new((raw & ADDR_MASK) >> 12) {
        Some(p) => p,
        None => Pfn::ZERO,
    }
}

/// The index of the root-table word holding `devfn`'s half of the entry for `bus`.
pub const fn root_word(bus: u8, devfn: u8) -> usize {
    bus as usize * 2 + (devfn >> 7) as usize
}

/// One half of a scalable-mode root entry (§9.2): the lower half (bits 63:0: LP, LCTP) points to
/// the context table of devfn 0..=127, the upper half (bits 127:64: UP, UCTP) to that of
/// devfn 128..=255. Both halves have the same layout: present in bit 0, bits 11:1 reserved,
/// the context-table pointer in bits HAW-1:12.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RootHalf {
    /// LP / UP.
    pub present: bool,
    /// LCTP / UCTP.
    pub context_table: Pfn,
}

impl RootHalf {
    const RESERVED: u64 = 0xFFE | ABOVE_HAW;

    /// The present half pointing at `context_table`.
    pub const fn pointing_to(context_table: Pfn) -> RootHalf {
        RootHalf { present: true, context_table }
    }

    /// The 64-bit half.
    pub const fn encode(self) -> u64 {
        (self.context_table.addr().raw() & ADDR_MASK) | if self.present { PRESENT } else { 0 }
    }

    /// Decodes a half; reserved fields are checked only when it is present (VT-d faults on them
    /// only then).
    ///
    /// # Errors
    /// [`ReservedField`] for a present half with a reserved bit set.
    pub const fn decode(raw: u64) -> Result<RootHalf, ReservedField> {
        let present = raw & PRESENT != 0;
        if present && raw & Self::RESERVED != 0 {
            return Err(ReservedField);
        }
        Ok(RootHalf { present, context_table: frame(raw) })
    }
}

/// A scalable-mode context entry (§9.4), 256 bits:
///
/// - word 0: P (0), FPD (1), DTE (2), PASIDE (3), PRE (4), reserved (8:5), PDTS (11:9),
///   PASIDDIRPTR (HAW-1:12);
/// - word 1: RID_PASID (19:0), RID_PRIV (20), reserved (63:21);
/// - words 2 and 3: reserved.
///
/// DTE, PRE, RID_PASID and RID_PRIV belong to capabilities this IOMMU does not report, so they
/// must be zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ContextEntry {
    /// P.
    pub present: bool,
    /// FPD: faults through this entry are not recorded.
    pub fpd: bool,
    /// PASIDE: requests with PASID are allowed.
    pub pasid_enable: bool,
    /// PDTS: the directory has 2^(PDTS+7) entries.
    pub pdts: u8,
    /// PASIDDIRPTR.
    pub pasid_dir: Pfn,
}

impl ContextEntry {
    const DTE: u64 = 1 << 2;
    const PASIDE: u64 = 1 << 3;
    const PRE: u64 = 1 << 4;
    const PDTS_SHIFT: u32 = 9;
    const RESERVED0: u64 = Self::DTE | Self::PRE | 0x1E0 | ABOVE_HAW;

    /// The present entry the TSM writes: PASIDs enabled (the PASID entries are the gate), a
    /// one-frame directory, faults recorded.
    pub const fn pointing_to(pasid_dir: Pfn) -> ContextEntry {
        ContextEntry { present: true, fpd: false, pasid_enable: true, pdts: PDTS_ONE_FRAME, pasid_dir }
    }

    /// The four words.
    pub const fn encode(self) -> [u64; CONTEXT_WORDS] {
        let w0 = (self.pasid_dir.addr().raw() & ADDR_MASK)
            | ((self.pdts as u64 & 7) << Self::PDTS_SHIFT)
            | if self.pasid_enable { Self::PASIDE } else { 0 }
            | if self.fpd { FPD } else { 0 }
            | if self.present { PRESENT } else { 0 };
        [w0, 0, 0, 0]
    }

    /// Decodes the four words; reserved fields are checked only when present.
    ///
    /// # Errors
    /// [`ReservedField`] for a present entry with a reserved (or unsupported) field set.
    pub const fn decode(w: [u64; CONTEXT_WORDS]) -> Result<ContextEntry, ReservedField> {
        let present = w[0] & PRESENT != 0;
        if present && (w[0] & Self::RESERVED0 != 0 || w[1] != 0 || w[2] != 0 || w[3] != 0) {
            return Err(ReservedField);
        }
        Ok(ContextEntry {
            present,
            fpd: w[0] & FPD != 0,
            pasid_enable: w[0] & Self::PASIDE != 0,
            pdts: ((w[0] >> Self::PDTS_SHIFT) & 7) as u8,
            pasid_dir: frame(w[0]),
        })
    }

    /// Entries of the PASID directory: 2^(PDTS+7).
    pub const fn pasid_dir_entries(self) -> u32 {
        1 << (self.pdts as u32 + 7)
    }
}

/// A scalable-mode PASID directory entry (§9.5), 64 bits: P (0), FPD (1), reserved (11:2),
/// SMPTBLPTR (HAW-1:12), the PASID table of PASIDs `index * 64 ..= index * 64 + 63`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PasidDirEntry {
    /// P.
    pub present: bool,
    /// FPD.
    pub fpd: bool,
    /// SMPTBLPTR.
    pub pasid_table: Pfn,
}

impl PasidDirEntry {
    const RESERVED: u64 = 0xFFC | ABOVE_HAW;

    /// The present entry pointing at `pasid_table`.
    pub const fn pointing_to(pasid_table: Pfn) -> PasidDirEntry {
        PasidDirEntry { present: true, fpd: false, pasid_table }
    }

    /// The word.
    pub const fn encode(self) -> u64 {
        (self.pasid_table.addr().raw() & ADDR_MASK)
            | if self.fpd { FPD } else { 0 }
            | if self.present { PRESENT } else { 0 }
    }

    /// Decodes the word; reserved fields are checked only when present.
    ///
    /// # Errors
    /// [`ReservedField`] for a present entry with a reserved bit set.
    pub const fn decode(raw: u64) -> Result<PasidDirEntry, ReservedField> {
        let present = raw & PRESENT != 0;
        if present && raw & Self::RESERVED != 0 {
            return Err(ReservedField);
        }
        Ok(PasidDirEntry { present, fpd: raw & FPD != 0, pasid_table: frame(raw) })
    }
}

/// A scalable-mode PASID table entry (§9.6), 512 bits, as the TSM uses it (second stage only):
///
/// - word 0: P (0), FPD (1), AW (4:2), SSEE (5), PGTT (8:6), SSADE (9), reserved (11:10),
///   SSPTPTR (HAW-1:12);
/// - word 1: DID (15:0), reserved (22:16), PWSNP (23), PGSNP (24), first-stage memory-type
///   fields (63:25);
/// - word 2: first-stage fields (SRE, FSPM, WPE, NXE, SMEP, EAFE, FSPTPTR);
/// - words 3 to 7: reserved.
///
/// SSEE and SSADE (second-stage execute, access/dirty) and every first-stage field are
/// capabilities this IOMMU does not report: they must be zero. PWSNP and PGSNP are always set:
/// the S-EPT is written by CPUs through their caches, so the IOMMU's page walks must snoop
/// (no clflush on S-EPT updates), and DMA must snoop so that private memory stays coherent
/// ("Sharing KVM TDP to IOMMU" requirements, `tsm-anchors.md` A7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PasidEntry {
    /// P: DMA through this entry is allowed.
    pub present: bool,
    /// FPD.
    pub fpd: bool,
    /// AW, raw (010b 48-bit, 011b 57-bit; other values are invalid for this IOMMU).
    pub aw: u64,
    /// PGTT, raw (only 010b, second stage only, is valid for this IOMMU).
    pub pgtt: u64,
    /// SSPTPTR: the TD's S-EPT root table.
    pub sept_root: Pfn,
    /// DID.
    pub did: DomainId,
    /// PWSNP: page walks snoop.
    pub pwsnp: bool,
    /// PGSNP: DMA snoops.
    pub pgsnp: bool,
}

impl PasidEntry {
    const AW_SHIFT: u32 = 2;
    const PGTT_SHIFT: u32 = 6;
    const RESERVED0: u64 = 1 << 5 | 1 << 9 | 0xC00 | ABOVE_HAW;
    const PWSNP: u64 = 1 << 23;
    const PGSNP: u64 = 1 << 24;
    const RESERVED1: u64 = !(0xFFFF | Self::PWSNP | Self::PGSNP);

    /// The entry the TSM writes for a DMAR entry over the S-EPT at `sept_root`.
    pub const fn second_stage(sept_root: Pfn, levels: SeptLevels, did: DomainId, present: bool) -> PasidEntry {
        PasidEntry {
            present,
            fpd: false,
            aw: levels.aw(),
            pgtt: PGTT_SECOND_STAGE,
            sept_root,
            did,
            pwsnp: true,
            pgsnp: true,
        }
    }

    /// Word 0 alone (the one that holds P). A not-present entry's word 0 is all zero: its
    /// table pointer, AW and PGTT are written only together with P (one 64-bit store at
    /// TDG.DMAR.ACCEPT) and cleared with it (DMAR.BLOCK). VT-d ignores them while P = 0, but
    /// QEMU's unit (10.0) does not check P of the PASID entry on the second-stage path: it
    /// walks SSPTPTR whatever P says. The differential test against it found that (a write
    /// after DMAR.BLOCK landed); with PGTT = 0 the unit refuses the request.
    pub const fn word0(self) -> u64 {
        if !self.present {
            return 0;
        }
        (self.sept_root.addr().raw() & ADDR_MASK)
            | ((self.pgtt & 7) << Self::PGTT_SHIFT)
            | ((self.aw & 7) << Self::AW_SHIFT)
            | if self.fpd { FPD } else { 0 }
            | if self.present { PRESENT } else { 0 }
    }

    /// The eight words.
    pub const fn encode(self) -> [u64; PASID_WORDS] {
        let w1 =
            self.did.0 as u64 | if self.pwsnp { Self::PWSNP } else { 0 } | if self.pgsnp { Self::PGSNP } else { 0 };
        [self.word0(), w1, 0, 0, 0, 0, 0, 0]
    }

    /// Decodes the eight words; reserved fields are checked only when present. AW and PGTT are
    /// returned raw: whether they are valid is a separate fault ([`PasidEntry::levels`]).
    ///
    /// # Errors
    /// [`ReservedField`] for a present entry with a reserved (or unsupported) field set.
    pub const fn decode(w: &[u64; PASID_WORDS]) -> Result<PasidEntry, ReservedField> {
        let present = w[0] & PRESENT != 0;
        if present {
            if w[0] & Self::RESERVED0 != 0 || w[1] & Self::RESERVED1 != 0 {
                return Err(ReservedField);
            }
            let mut i = 2;
            while i < PASID_WORDS {
                if w[i] != 0 {
                    return Err(ReservedField);
                }
                i += 1;
            }
        }
        Ok(PasidEntry {
            present,
            fpd: w[0] & FPD != 0,
            aw: (w[0] >> Self::AW_SHIFT) & 7,
            pgtt: (w[0] >> Self::PGTT_SHIFT) & 7,
            sept_root: frame(w[0]),
            did: DomainId(w[1] as u16),
            pwsnp: w[1] & Self::PWSNP != 0,
            pgsnp: w[1] & Self::PGSNP != 0,
        })
    }

    /// The S-EPT depth, if PGTT is second-stage only and AW one this IOMMU supports.
    pub const fn levels(self) -> Option<SeptLevels> {
        if self.pgtt != PGTT_SECOND_STAGE {
            return None;
        }
        SeptLevels::from_aw(self.aw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pfn(raw: u64) -> Pfn {
        Pfn::new(raw).unwrap_or_default()
    }

    #[test]
    fn root_halves_sit_at_the_spec_bits() {
        // Lower half of bus 3 is word 6, upper half word 7 (bits 127:64 of entry 3).
        assert_eq!(root_word(3, 0x7F), 6);
        assert_eq!(root_word(3, 0x80), 7);
        let h = RootHalf::pointing_to(pfn(0x12345));
        assert_eq!(h.encode(), 0x1234_5001);
        assert_eq!(RootHalf::decode(h.encode()), Ok(h));
        assert_eq!(RootHalf::decode(0x1234_5003), Err(ReservedField), "bit 1 is reserved");
        assert_eq!(RootHalf::decode(1 << 52 | 1), Err(ReservedField), "above HAW");
        assert!(RootHalf::decode(0x1234_5002).is_ok_and(|h| !h.present), "not present: not checked");
    }

    #[test]
    fn context_entry_fields() {
        let c = ContextEntry::pointing_to(pfn(0xABCDE));
        let w = c.encode();
        // P | PASIDE (bit 3) | PDTS 2 in bits 11:9 | PASIDDIRPTR.
        assert_eq!(w, [0xABCD_E000 | 2 << 9 | 1 << 3 | 1, 0, 0, 0]);
        assert_eq!(ContextEntry::decode(w), Ok(c));
        assert_eq!(c.pasid_dir_entries(), 512);
        for bad in [1u64 << 2, 1 << 4, 1 << 5, 1 << 8, 1 << 60] {
            assert_eq!(ContextEntry::decode([w[0] | bad, 0, 0, 0]), Err(ReservedField), "{bad:#x}");
        }
        assert_eq!(ContextEntry::decode([w[0], 1, 0, 0]), Err(ReservedField), "RID_PASID unsupported");
        assert_eq!(ContextEntry::decode([w[0], 0, 0, 1 << 63]), Err(ReservedField));
    }

    #[test]
    fn pasid_dir_entry_fields() {
        let d = PasidDirEntry::pointing_to(pfn(0x777));
        assert_eq!(d.encode(), 0x77_7001);
        assert_eq!(PasidDirEntry::decode(d.encode()), Ok(d));
        assert!(PasidDirEntry::decode(0x77_7003).is_ok_and(|d| d.fpd), "FPD is bit 1");
        assert_eq!(PasidDirEntry::decode(0x77_7005), Err(ReservedField));
    }

    #[test]
    fn pasid_entry_fields() {
        let e = PasidEntry::second_stage(pfn(0x4_0000), SeptLevels::Five, DomainId(0x1234), true);
        let w = e.encode();
        // P | AW 011b in 4:2 | PGTT 010b in 8:6 | SSPTPTR.
        assert_eq!(w[0], 0x4000_0000 | 2 << 6 | 3 << 2 | 1);
        // DID | PWSNP (bit 87 = word 1 bit 23) | PGSNP (bit 88).
        assert_eq!(w[1], 0x1234 | 1 << 23 | 1 << 24);
        assert_eq!(&w[2..], &[0; 6]);
        assert_eq!(PasidEntry::decode(&w), Ok(e));
        assert_eq!(e.levels(), Some(SeptLevels::Five));
        let four = PasidEntry::second_stage(pfn(1), SeptLevels::Four, DomainId(1), true);
        assert_eq!((four.word0() >> 2) & 7, 0b010);
        // Not present: word 0 carries nothing a unit could walk; word 1 keeps the DID.
        let absent = PasidEntry { present: false, ..four }.encode();
        assert_eq!(absent[..2], [0, 1 | 1 << 23 | 1 << 24]);
        for (word, bit) in [(0, 5), (0, 9), (0, 10), (0, 63), (1, 16), (1, 25), (2, 0), (7, 63)] {
            let mut bad = w;
            bad[word] |= 1 << bit;
            assert_eq!(PasidEntry::decode(&bad), Err(ReservedField), "word {word} bit {bit}");
        }
        let mut nested = w;
        nested[0] = (nested[0] & !(7 << 6)) | 3 << 6;
        assert_eq!(PasidEntry::decode(&nested).map(|e| e.levels()), Ok(None), "PGTT nested");
        let mut not_present = w;
        not_present[0] &= !PRESENT;
        not_present[3] = 1;
        assert!(PasidEntry::decode(&not_present).is_ok(), "reserved fields unchecked when not present");
    }
}
