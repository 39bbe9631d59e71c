//! The secure EPT: real EPT-format tables (Intel SDM vol. 3, "EPT paging structures") in pages
//! the host donated, with the TSM's entry state kept in bits the hardware ignores (55:52).
//!
//! Levels are numbered as TDX does: 0 holds 4K leaves (PTE), 1 holds 2M leaves or tables (PDE),
//! 2 holds 1G leaves or tables (PDPTE), 3 is the PML4 and 4 the PML5 of 5-level paging.
//! Legality of every (operation, state) pair is the one `match` in [`legality`].

use crate::addr::{GuestPhysAddr, PageSize, Pfn};
use crate::error::{SeptErrorKind, SeptFault};
use crate::platform::PhysMem;

/// Entries per table page.
pub const ENTRIES: usize = 512;

const RWX: u64 = 0b111;
const RW: u64 = 0b011;
const MEMTYPE_WB: u64 = 6 << 3;
const IGNORE_PAT: u64 = 1 << 6;
const PAGE_SIZE_BIT: u64 = 1 << 7;
const ADDR_MASK: u64 = 0x000F_FFFF_FFFF_F000;
/// Bit 62 on a present MMIO leaf: ignored by the CPU's EPT walk, a reserved bit for VT-d's
/// second-stage walk (fault reason 0x0C, `../shared/reference/worlds.md` §2). The unit walks the
/// S-EPT itself, so this is what keeps a device's DMA out of the TD's MMIO mappings (another
/// device's registers, or its own) while the vCPU reaches them.
pub const DMA_BLOCK: u64 = 1 << 62;
const STATE_SHIFT: u32 = 52;
const STATE_MASK: u64 = 0xF << STATE_SHIFT;

/// The state of an S-EPT entry (the design's states; TDX `sept_state_lookup` names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum SeptState {
    /// Maps nothing. Hardware: not present.
    Free = 0,
    /// Points to a lower table. Hardware: present, RWX.
    NlMapped = 1,
    /// Points to a lower table, access blocked until unblocked or removed. Hardware: not present.
    NlBlocked = 2,
    /// A private page added at runtime (AUG) that the guest has not accepted. Not present.
    Pending = 3,
    /// A private page the guest may use. Present, RWX, write-back.
    Mapped = 4,
    /// A mapped page whose access is blocked. Not present.
    Blocked = 5,
    /// A pending page whose access is blocked. Not present.
    PendingBlocked = 6,
    /// Device private MMIO mapped by the host, not yet accepted by the guest. Not present.
    MmioPending = 7,
    /// Device private MMIO the guest accepted. Present, RW, uncacheable.
    MmioMapped = 8,
    /// Device private MMIO whose access is blocked. Not present.
    MmioBlocked = 9,
}

impl SeptState {
    /// The state with code `code` (bits 55:52 of an entry, bits 15:8 of a level/state word).
    pub const fn from_code(code: u64) -> Option<SeptState> {
        Some(match code {
            0 => SeptState::Free,
            1 => SeptState::NlMapped,
            2 => SeptState::NlBlocked,
            3 => SeptState::Pending,
            4 => SeptState::Mapped,
            5 => SeptState::Blocked,
            6 => SeptState::PendingBlocked,
            7 => SeptState::MmioPending,
            8 => SeptState::MmioMapped,
            9 => SeptState::MmioBlocked,
            _ => return None,
        })
    }

    /// True for states that point to a lower table.
    pub const fn is_table(self) -> bool {
        matches!(self, SeptState::NlMapped | SeptState::NlBlocked)
    }

    /// True for states that map a page (memory or MMIO).
    pub const fn is_leaf(self) -> bool {
        !self.is_table() && !matches!(self, SeptState::Free)
    }

    /// True for states whose access is blocked.
    pub const fn is_blocked(self) -> bool {
        matches!(self, SeptState::NlBlocked | SeptState::Blocked | SeptState::PendingBlocked | SeptState::MmioBlocked)
    }

    /// The blocked counterpart of a present state (BLOCK).
    pub const fn blocked(self) -> SeptState {
        match self {
            SeptState::NlMapped => SeptState::NlBlocked,
            SeptState::Mapped => SeptState::Blocked,
            SeptState::Pending => SeptState::PendingBlocked,
            SeptState::MmioPending | SeptState::MmioMapped => SeptState::MmioBlocked,
            other => other,
        }
    }

    /// The state a blocked entry returns to (UNBLOCK, DEMOTE).
    pub const fn unblocked(self) -> SeptState {
        match self {
            SeptState::NlBlocked => SeptState::NlMapped,
            SeptState::Blocked => SeptState::Mapped,
            SeptState::PendingBlocked => SeptState::Pending,
            other => other,
        }
    }
}

/// One decoded S-EPT entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeptEntry {
    raw: u64,
    state: SeptState,
}

impl SeptEntry {
    /// The free entry.
    pub const FREE: SeptEntry = SeptEntry { raw: 0, state: SeptState::Free };

    /// Builds the entry for `state` pointing at `pfn`, at `level`, with the hardware bits that
    /// state implies.
    pub const fn new(state: SeptState, pfn: Pfn, level: u8) -> SeptEntry {
        let pa = pfn.addr().raw() & ADDR_MASK;
        let ps = if level > 0 { PAGE_SIZE_BIT } else { 0 };
        let hw = match state {
            SeptState::Free => 0,
            SeptState::NlMapped => RWX | pa,
            SeptState::NlBlocked => pa,
            SeptState::Mapped => RWX | MEMTYPE_WB | IGNORE_PAT | ps | pa,
            SeptState::Blocked => MEMTYPE_WB | IGNORE_PAT | ps | pa,
            SeptState::Pending | SeptState::PendingBlocked => ps | pa,
            SeptState::MmioMapped => RW | IGNORE_PAT | ps | pa | DMA_BLOCK,
            SeptState::MmioPending | SeptState::MmioBlocked => IGNORE_PAT | ps | pa,
        };
        let raw = if matches!(state, SeptState::Free) { 0 } else { hw | ((state as u64) << STATE_SHIFT) };
        SeptEntry { raw, state }
    }

    /// Decodes a raw entry; `None` if its state code is not one the TSM writes (corruption).
    pub const fn decode(raw: u64) -> Option<SeptEntry> {
        match SeptState::from_code((raw & STATE_MASK) >> STATE_SHIFT) {
            Some(state) => Some(SeptEntry { raw, state }),
            None => None,
        }
    }

    /// The raw 64-bit entry as the hardware walks it.
    pub const fn raw(self) -> u64 {
        self.raw
    }

    /// The entry's state.
    pub const fn state(self) -> SeptState {
        self.state
    }

    /// The frame the entry points to (table or page); meaningless when free.
    pub fn pfn(self) -> Pfn {
        // ADDR_MASK keeps bits 51:12, so the frame number always fits.
        Pfn::new((self.raw & ADDR_MASK) >> 12).unwrap_or_default()
    }

    /// The hardware present bit view: any of R/W/X set.
    pub const fn hw_present(self) -> bool {
        self.raw & RWX != 0
    }
}

/// The operations that read or change an S-EPT entry; each looks at the entry at its level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeptOp {
    /// TDH.MEM.SEPT.ADD: install a table under a free entry.
    SeptAdd,
    /// TDH.MEM.SEPT.REMOVE: remove a blocked, empty table.
    SeptRemove,
    /// TDH.MEM.PAGE.ADD / PAGE.AUG: map a page at a free entry.
    PageMap,
    /// TDH.MEM.RANGE.BLOCK.
    Block,
    /// TDH.MEM.RANGE.UNBLOCK.
    Unblock,
    /// TDH.MEM.PAGE.REMOVE.
    PageRemove,
    /// TDH.MEM.PAGE.DEMOTE: split a blocked large leaf.
    Demote,
    /// TDH.MEM.PAGE.PROMOTE: merge a blocked table into a large leaf.
    Promote,
    /// TDH.MR.EXTEND: measure an added page.
    MrExtend,
    /// TDG.MEM.PAGE.ACCEPT.
    Accept,
    /// A guest or TSM access to private memory through the S-EPT (MR.REPORT buffers).
    Access,
    /// TDH.MMIO.MAP: map a TDI's MMIO page at a free entry (MMIO_PENDING).
    MmioMap,
    /// TDH.MMIO.BLOCK.
    MmioBlock,
    /// TDH.MMIO.UNMAP: free a blocked MMIO leaf.
    MmioUnmap,
    /// TDG.MMIO.ACCEPT.
    MmioAccept,
}

/// What an operation may do with the entry it found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Legality {
    /// Go on with the remaining checks.
    Proceed,
    /// Nothing to do: return this warning (bit 63 clear) and change nothing.
    AlreadyDone,
    /// The guest must exit to the host, which can fix the mapping (EPT violation).
    ExitToHost,
    /// Refuse with this error.
    Refuse(SeptErrorKind),
}

/// The legality of `op` on an entry in `state`: one exhaustive table, the audit point for every
/// S-EPT rule (the TDX module's `sept_state_lookup`).
pub const fn legality(op: SeptOp, state: SeptState) -> Legality {
    use Legality::*;
    use SeptErrorKind::*;
    use SeptOp as O;
    use SeptState as S;
    match (op, state) {
        (O::SeptAdd | O::PageMap, S::Free) => Proceed,
        (O::SeptAdd | O::PageMap, _) => Refuse(EntryNotFree),

        (O::SeptRemove, S::NlBlocked) => Proceed,
        (O::SeptRemove, S::NlMapped) => Refuse(NotBlocked),
        (O::SeptRemove, S::Free) => Refuse(EntryFree),
        (O::SeptRemove, _) => Refuse(EntryLeaf),

        (O::Block, S::NlMapped | S::Mapped | S::Pending) => Proceed,
        (O::Block, S::NlBlocked | S::Blocked | S::PendingBlocked) => AlreadyDone,
        (O::Block, S::Free) => Refuse(EntryFree),
        // Device MMIO is blocked with TDH.MMIO.BLOCK, which keeps its epoch in the TDI's range.
        (O::Block, S::MmioPending | S::MmioMapped | S::MmioBlocked) => Refuse(StateIncorrect),

        (O::MmioMap, S::Free) => Proceed,
        (O::MmioMap, _) => Refuse(EntryNotFree),

        (O::MmioBlock, S::MmioPending | S::MmioMapped) => Proceed,
        (O::MmioBlock, S::MmioBlocked) => AlreadyDone,
        (O::MmioBlock, S::Free) => Refuse(EntryFree),
        (O::MmioBlock, S::NlMapped | S::NlBlocked) => Refuse(EntryNotLeaf),
        (O::MmioBlock, S::Pending | S::Mapped | S::Blocked | S::PendingBlocked) => Refuse(StateIncorrect),

        (O::MmioUnmap, S::MmioBlocked) => Proceed,
        (O::MmioUnmap, S::MmioPending | S::MmioMapped) => Refuse(NotBlocked),
        (O::MmioUnmap, S::Free) => Refuse(EntryFree),
        (O::MmioUnmap, S::NlMapped | S::NlBlocked) => Refuse(EntryNotLeaf),
        (O::MmioUnmap, S::Pending | S::Mapped | S::Blocked | S::PendingBlocked) => Refuse(StateIncorrect),

        (O::MmioAccept, S::MmioPending) => Proceed,
        (O::MmioAccept, S::MmioMapped) => AlreadyDone,
        (O::MmioAccept, S::NlMapped) => Refuse(SizeMismatch),
        (O::MmioAccept, S::Free | S::MmioBlocked | S::NlBlocked) => ExitToHost,
        (O::MmioAccept, S::Pending | S::Mapped | S::Blocked | S::PendingBlocked) => Refuse(StateIncorrect),

        (O::Unblock, S::NlBlocked | S::Blocked | S::PendingBlocked) => Proceed,
        (O::Unblock, S::NlMapped | S::Mapped | S::Pending | S::MmioPending | S::MmioMapped) => Refuse(NotBlocked),
        // Blocked MMIO leaves only go forward, to MMIO.UNMAP.
        (O::Unblock, S::MmioBlocked) => Refuse(StateIncorrect),
        (O::Unblock, S::Free) => Refuse(EntryFree),

        (O::PageRemove | O::Demote, S::Blocked | S::PendingBlocked) => Proceed,
        (O::PageRemove | O::Demote, S::Mapped | S::Pending) => Refuse(NotBlocked),
        (O::PageRemove | O::Demote, S::Free) => Refuse(EntryFree),
        (O::PageRemove | O::Demote, S::NlMapped | S::NlBlocked) => Refuse(EntryNotLeaf),
        (O::PageRemove | O::Demote, S::MmioPending | S::MmioMapped | S::MmioBlocked) => Refuse(StateIncorrect),

        (O::Promote, S::NlBlocked) => Proceed,
        (O::Promote, S::NlMapped) => Refuse(NotBlocked),
        (O::Promote, S::Free) => Refuse(EntryFree),
        (O::Promote, _) => Refuse(EntryLeaf),

        (O::MrExtend, S::Mapped) => Proceed,
        (O::MrExtend, S::Free) => Refuse(EntryFree),
        (O::MrExtend, _) => Refuse(StateIncorrect),

        (O::Accept, S::Pending) => Proceed,
        (O::Accept, S::Mapped) => AlreadyDone,
        // Mapped with smaller pages than the guest asks for.
        (O::Accept, S::NlMapped) => Refuse(SizeMismatch),
        (O::Accept, S::Free | S::Blocked | S::PendingBlocked | S::NlBlocked) => ExitToHost,
        (O::Accept, S::MmioPending | S::MmioMapped | S::MmioBlocked) => Refuse(StateIncorrect),

        (O::Access, S::Mapped) => Proceed,
        (O::Access, _) => Refuse(StateIncorrect),
    }
}

/// Where an entry lives: its table page and index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    /// The table page.
    pub table: Pfn,
    /// Index of the entry in the table.
    pub index: usize,
}

/// The end of a walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Walk {
    /// The level of the entry found.
    pub level: u8,
    /// Where the entry lives.
    pub slot: Slot,
    /// The entry.
    pub entry: SeptEntry,
}

impl Walk {
    /// The fault describing this entry, for a refused operation.
    pub const fn fault(&self, kind: SeptErrorKind) -> SeptFault {
        SeptFault { kind, entry: self.entry.raw(), level: self.level, state: self.entry.state() as u8 }
    }
}

/// Index of `gpa` in a table of `level`.
pub const fn index(gpa: GuestPhysAddr, level: u8) -> usize {
    ((gpa.raw() >> (12 + 9 * level as u64)) & 0x1FF) as usize
}

/// Bytes covered by one entry at `level`.
pub const fn coverage(level: u8) -> u64 {
    1u64 << (12 + 9 * level as u32)
}

/// Outcome of [`walk`]: the entry at `target`, or where the walk stopped above it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalkResult {
    /// The walk reached the target level.
    Reached(Walk),
    /// The walk stopped at a higher level on an entry that is not a mapped table.
    Stopped(Walk),
}

/// An entry on a walk's path carries a state code the TSM never writes: its metadata is corrupt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CorruptEntry;

/// Walks from the root table (at level `root_level`) towards `gpa` down to `target`, passing only
/// through `NL_MAPPED` entries.
///
/// # Errors
/// [`CorruptEntry`] if an entry on the path does not decode.
pub fn walk<M: PhysMem>(
    mem: &M,
    root: Pfn,
    root_level: u8,
    gpa: GuestPhysAddr,
    target: u8,
) -> Result<WalkResult, CorruptEntry> {
    walk_through(mem, root, root_level, gpa, target, |s| matches!(s, SeptState::NlMapped))
}

/// Like [`walk`], but passes `NL_BLOCKED` entries too. A blocked table still holds its entries,
/// and UNBLOCK makes them reachable again as they are, so code that must reach every leaf under
/// a GPA whatever the host did above it (blocking a stopped TDI's MMIO) walks through blocks.
///
/// # Errors
/// [`CorruptEntry`] if an entry on the path does not decode.
pub fn walk_tables<M: PhysMem>(
    mem: &M,
    root: Pfn,
    root_level: u8,
    gpa: GuestPhysAddr,
    target: u8,
) -> Result<WalkResult, CorruptEntry> {
    walk_through(mem, root, root_level, gpa, target, SeptState::is_table)
}

fn walk_through<M: PhysMem>(
    mem: &M,
    root: Pfn,
    root_level: u8,
    gpa: GuestPhysAddr,
    target: u8,
    passes: fn(SeptState) -> bool,
) -> Result<WalkResult, CorruptEntry> {
    let mut table = root;
    let mut level = root_level;
    loop {
        let idx = index(gpa, level);
        let entry = SeptEntry::decode(mem.read_u64(table, idx)).ok_or(CorruptEntry)?;
        let here = Walk { level, slot: Slot { table, index: idx }, entry };
        if level == target {
            return Ok(WalkResult::Reached(here));
        }
        if !passes(entry.state()) || level == 0 {
            return Ok(WalkResult::Stopped(here));
        }
        table = entry.pfn();
        level -= 1;
    }
}

/// Writes `entry` into `slot`.
pub fn write<M: PhysMem>(mem: &mut M, slot: Slot, entry: SeptEntry) {
    mem.write_u64(slot.table, slot.index, entry.raw());
}

/// The leaf size at `level`, if a leaf may sit there.
pub const fn leaf_size(level: u8) -> Option<PageSize> {
    PageSize::from_level(level)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [SeptState; 10] = [
        SeptState::Free,
        SeptState::NlMapped,
        SeptState::NlBlocked,
        SeptState::Pending,
        SeptState::Mapped,
        SeptState::Blocked,
        SeptState::PendingBlocked,
        SeptState::MmioPending,
        SeptState::MmioMapped,
        SeptState::MmioBlocked,
    ];

    #[test]
    fn entries_round_trip_and_carry_hardware_bits() {
        let pfn = Pfn::new(0x12345).unwrap();
        for s in ALL {
            let e = SeptEntry::new(s, pfn, 1);
            let d = SeptEntry::decode(e.raw()).unwrap();
            assert_eq!(d.state(), s);
            if s != SeptState::Free {
                assert_eq!(d.pfn(), pfn);
            }
            let present = matches!(s, SeptState::NlMapped | SeptState::Mapped | SeptState::MmioMapped);
            assert_eq!(d.hw_present(), present, "{s:?}");
        }
        assert_eq!(SeptEntry::new(SeptState::Mapped, pfn, 0).raw() & PAGE_SIZE_BIT, 0);
        assert_ne!(SeptEntry::new(SeptState::Mapped, pfn, 1).raw() & PAGE_SIZE_BIT, 0);
        assert!(SeptEntry::decode(0xA << STATE_SHIFT).is_none());
    }

    /// VT-d's second-stage walk (QEMU `vtd_slpte_nonzero_rsvd`, measured in
    /// `../shared/reference/worlds.md` §2) reads these very entries: bit 62 set on a leaf, bit 11
    /// set on a table entry or an address bit at or above the unit's 48-bit width is a reserved
    /// field fault, and a write needs W at every level of the path. Asserted for every state at
    /// every level an entry of that state may sit at, with the highest frame below 2^48. The one
    /// present entry that carries bit 62 is the MMIO leaf, on purpose: DMA must fault there.
    #[test]
    fn every_state_encodes_as_a_vt_d_second_stage_entry() {
        const BIT11: u64 = 1 << 11;
        const BIT62: u64 = 1 << 62;
        const ABOVE_48: u64 = 0x000F_0000_0000_0000;
        let frames = [Pfn::new(1).unwrap(), Pfn::new((1 << 36) - 1).unwrap(), Pfn::new(0x12345).unwrap()];
        for s in ALL {
            let levels: &[u8] = match s {
                SeptState::Free => &[0, 1, 2, 3, 4],
                SeptState::NlMapped | SeptState::NlBlocked => &[1, 2, 3, 4],
                _ => &[0, 1, 2],
            };
            for &level in levels {
                for pfn in frames {
                    let raw = SeptEntry::new(s, pfn, level).raw();
                    let dma_blocked = s == SeptState::MmioMapped;
                    assert_eq!(raw & BIT62 != 0, dma_blocked, "{s:?} level {level}: bit 62 (VT-d reserved)");
                    assert_eq!(raw & BIT11, 0, "{s:?} level {level}: bit 11 set (reserved on VT-d tables)");
                    assert_eq!(raw & ABOVE_48, 0, "{s:?} level {level}: address bits at or above 48");
                    let present = raw & RWX != 0;
                    match s {
                        // The DMA-writable path: W on every table entry and on the leaf.
                        SeptState::NlMapped | SeptState::Mapped => assert_eq!(raw & RW, RW, "{s:?} level {level}"),
                        // MMIO leaves are present for the CPU, and reserved for VT-d (bit 62).
                        SeptState::MmioMapped => assert!(present),
                        _ => assert!(!present, "{s:?} level {level}: present for VT-d (R or W set)"),
                    }
                    if s.is_leaf() && level > 0 {
                        assert_ne!(raw & PAGE_SIZE_BIT, 0, "{s:?} level {level}: a large leaf without PS");
                    }
                    if s.is_table() {
                        assert_eq!(raw & PAGE_SIZE_BIT, 0, "{s:?} level {level}: a table entry with PS");
                    }
                }
            }
        }
    }

    #[test]
    fn block_and_unblock_are_inverse_on_blockable_states() {
        for s in [SeptState::NlMapped, SeptState::Mapped, SeptState::Pending] {
            assert_eq!(s.blocked().unblocked(), s);
            assert!(s.blocked().is_blocked());
        }
    }

    #[test]
    fn only_free_entries_take_new_mappings() {
        for s in ALL {
            let l = legality(SeptOp::PageMap, s);
            assert_eq!(l == Legality::Proceed, s == SeptState::Free, "{s:?}");
        }
    }

    #[test]
    fn remove_needs_a_blocked_leaf() {
        for s in ALL {
            let ok = legality(SeptOp::PageRemove, s) == Legality::Proceed;
            assert_eq!(ok, matches!(s, SeptState::Blocked | SeptState::PendingBlocked), "{s:?}");
        }
    }
}
