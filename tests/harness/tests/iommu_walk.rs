//! The DMA walker over real TDs built through the host and guest ABIs: "may this RID/PASID DMA
//! to this IOVA, and where does it land". DMA reaches only accepted private pages of the bound
//! TD; every other case faults with its VT-d reason. Ends with a property test: the walker never
//! panics on arbitrary table contents.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod iommu_support;

use iommu_support::{key, pfn, rid, World};
use proptest::prelude::*;
use seamless_harness::driver::default_params;
use tsm::addr::PageSize;
use tsm::iommu::format::{self, PASID_WORDS};
use tsm::iommu::{translate, DmaFault, DomainId, FaultReason, Iommu, Pasid, Rid};
use tsm::sept::{SeptEntry, SeptState};

const GIB: u64 = 1 << 30;

fn dma(w: &World, iommu: &Iommu, rid: Rid, pasid: Option<u32>, iova: u64, write: bool) -> Result<u64, DmaFault> {
    let pasid = pasid.map(|p| Pasid::new(p).unwrap());
    iommu.translate(w.m.tsm.platform(), rid, pasid, iova, write).map(|t| t.hpa.raw())
}

fn reason(r: Result<u64, DmaFault>) -> FaultReason {
    r.unwrap_err().reason
}

#[test]
fn dma_reaches_only_accepted_private_pages_of_the_bound_td() {
    let mut w = World::new();
    let mut iommu = w.setup();
    let td = w.td.clone();
    let dev = rid(3, 1, 0);
    let a = w.aug_accept(&td, 0x1000, PageSize::Size4K);
    let b = w.aug_accept(&td, 0x2000, PageSize::Size4K);
    w.aug(&td, 0x3000); // pending: the guest never accepted it
    let big = w.aug_accept(&td, GIB, PageSize::Size2M);
    w.bind(&mut iommu, &td, key(dev, None), 7);

    for write in [false, true] {
        assert_eq!(dma(&w, &iommu, dev, None, 0x1abc, write), Ok(a + 0xabc));
        assert_eq!(dma(&w, &iommu, dev, None, 0x2000, write), Ok(b));
        assert_eq!(dma(&w, &iommu, dev, None, GIB + 0x12_3456, write), Ok(big + 0x12_3456));
    }
    let t = iommu.translate(w.m.tsm.platform(), dev, None, GIB, false).unwrap();
    assert_eq!((t.page_size, t.domain), (PageSize::Size2M, DomainId(7)));

    let pending = dma(&w, &iommu, dev, None, 0x3000, false).unwrap_err();
    assert_eq!(pending.reason, FaultReason::SeptNotPresent(SeptState::Pending));
    assert_eq!((pending.sept_level, pending.reason.code()), (Some(0), 0x79));
    assert_eq!(reason(dma(&w, &iommu, dev, None, 0x5000, false)), FaultReason::SeptNotPresent(SeptState::Free));
    // GPA 4G: no page directory under that PDPTE.
    let f = dma(&w, &iommu, dev, None, 4 * GIB, false).unwrap_err();
    assert_eq!((f.reason, f.sept_level), (FaultReason::SeptNotPresent(SeptState::Free), Some(2)));
    // The shared half and beyond the address width.
    assert_eq!(reason(dma(&w, &iommu, dev, None, (1 << 47) | 0x1000, false)), FaultReason::SharedGpa);
    let f = dma(&w, &iommu, dev, None, 1 << 48, false).unwrap_err();
    assert_eq!((f.reason, f.reason.code()), (FaultReason::AddressBeyondWidth, 0x83));
}

#[test]
fn requesters_and_pasids_without_an_entry_fault_at_their_level() {
    let mut w = World::new();
    let mut iommu = w.setup();
    let td = w.td.clone();
    w.aug_accept(&td, 0x1000, PageSize::Size4K);
    let dev = rid(3, 1, 0);
    w.bind(&mut iommu, &td, key(dev, Some(5)), 7);
    assert!(dma(&w, &iommu, dev, Some(5), 0x1000, true).is_ok());
    let cases = [
        (rid(4, 1, 0), None, FaultReason::RootNotPresent, 0x39),
        (rid(3, 1, 1), None, FaultReason::ContextNotPresent, 0x41),
        (dev, None, FaultReason::PasidEntryNotPresent, 0x59), // no RID_PASID entry installed
        (dev, Some(0), FaultReason::RidPasidConflict, 0x48),
        (dev, Some(6), FaultReason::PasidEntryNotPresent, 0x59),
        (dev, Some(64), FaultReason::PasidDirNotPresent, 0x51),
        (dev, Some(1 << 15), FaultReason::PasidTooLarge, 0x46),
    ];
    for (r, p, want, code) in cases {
        let f = dma(&w, &iommu, r, p, 0x1000, false).unwrap_err();
        assert_eq!((f.reason, f.reason.code()), (want, code), "{r:?} {p:?}");
    }
}

#[test]
fn dma_faults_before_accept_after_block_and_after_sept_remove() {
    let mut w = World::new();
    let mut iommu = w.setup();
    let td = w.td.clone();
    let dev = rid(0, 2, 0);
    let k = key(dev, None);
    w.aug_accept(&td, 0x1000, PageSize::Size4K);
    w.aug_accept(&td, 0x2000, PageSize::Size4K);
    w.install(&mut iommu, &td, k, 7).unwrap();
    assert_eq!(reason(dma(&w, &iommu, dev, None, 0x1000, false)), FaultReason::PasidEntryNotPresent);
    iommu.accept(w.m.tsm.platform_mut(), tsm::addr::Pfn::new(td.tdr >> 12).unwrap(), k).unwrap();
    assert!(dma(&w, &iommu, dev, None, 0x1000, false).is_ok());

    // S-EPT block of one page: that page faults, the other still translates.
    w.sept_block(&td, 0x1000);
    assert_eq!(reason(dma(&w, &iommu, dev, None, 0x1000, false)), FaultReason::SeptNotPresent(SeptState::Blocked));
    assert!(dma(&w, &iommu, dev, None, 0x2000, false).is_ok());
    // Block, track, invalidate, remove: the page is gone for the device too.
    w.kick_and_track(&td);
    w.invalidate(&mut iommu, &td, 7).unwrap();
    assert!(iommu.is_tracked(pfn(td.tdr), w.epoch(&td) - 1));
    w.sept_remove(&td, 0x1000);
    assert_eq!(reason(dma(&w, &iommu, dev, None, 0x1000, true)), FaultReason::SeptNotPresent(SeptState::Free));

    // DMAR block: nothing passes any more.
    iommu.block(w.m.tsm.platform_mut(), k).unwrap();
    assert_eq!(reason(dma(&w, &iommu, dev, None, 0x2000, false)), FaultReason::PasidEntryNotPresent);
}

#[test]
fn a_second_tds_pages_are_never_reachable() {
    let mut w = World::new();
    let mut iommu = w.setup();
    let (a, b) = (w.td.clone(), w.second_td());
    let (dev_a, dev_b) = (rid(1, 0, 0), rid(1, 0, 1)); // same bus, same context table
    let pa = w.aug_accept(&a, 0x1000, PageSize::Size4K);
    let pb = w.aug_accept(&b, 0x1000, PageSize::Size4K);
    let only_b = w.aug_accept(&b, 0x7000, PageSize::Size4K);
    w.bind(&mut iommu, &a, key(dev_a, None), 7);
    w.bind(&mut iommu, &b, key(dev_b, None), 8);
    assert_eq!(dma(&w, &iommu, dev_a, None, 0x1000, true), Ok(pa));
    assert_eq!(dma(&w, &iommu, dev_b, None, 0x1000, true), Ok(pb));
    assert_eq!(reason(dma(&w, &iommu, dev_a, None, 0x7000, true)), FaultReason::SeptNotPresent(SeptState::Free));
    assert_eq!(dma(&w, &iommu, dev_b, None, 0x7000, false), Ok(only_b));
    // Exhaustively over the low 2M of GPA space: A's device only ever lands in A's pages.
    let owned_by_b = |hpa: u64| [pb, only_b].contains(&(hpa & !0xFFF));
    for gpa in (0..2 << 20).step_by(4096) {
        if let Ok(hpa) = dma(&w, &iommu, dev_a, None, gpa, true) {
            assert!(!owned_by_b(hpa), "A's device reached B's page at GPA {gpa:#x}");
            assert_eq!(hpa, pa);
        }
    }
}

#[test]
fn five_level_sept_translates_with_a_57_bit_address_width() {
    let mut w = World::new();
    // A unit whose SAGAW has 5-level tables (QEMU's has 39 and 48 bits only, and DMAR.ADD
    // refuses a GPAW-52 TD there).
    w.m.tsm.platform_mut().unit.caps.as_mut().unwrap().cap |= 1 << 11;
    let mut iommu = w.setup();
    let td = w.running_td_with(&tsm::td::TdParams { gpaw: 52, ..default_params() });
    let dev = rid(7, 0, 0);
    let high = 1u64 << 50; // needs the PML5
    let page = w.aug_accept(&td, high, PageSize::Size4K);
    let low = w.aug_accept(&td, 0x4000, PageSize::Size4K);
    w.bind(&mut iommu, &td, key(dev, None), 9);
    let b = iommu.binding(key(dev, None)).unwrap();
    assert_eq!((w.read(b.table, b.index * PASID_WORDS) >> 2) & 7, 0b011, "AW 57-bit");
    assert_eq!(dma(&w, &iommu, dev, None, high + 0x10, true), Ok(page + 0x10));
    assert_eq!(dma(&w, &iommu, dev, None, 0x4000, false), Ok(low));
    assert_eq!(reason(dma(&w, &iommu, dev, None, 1 << 51, false)), FaultReason::SharedGpa);
    assert_eq!(reason(dma(&w, &iommu, dev, None, 1 << 57, false)), FaultReason::AddressBeyondWidth);
}

/// Pokes one table word and checks the fault, then restores it.
fn poked(w: &mut World, iommu: &Iommu, at: (tsm::addr::Pfn, usize), value: u64, dev: Rid, write: bool) -> DmaFault {
    let good = w.read(at.0, at.1);
    w.poke(at.0, at.1, value);
    let f = dma(w, iommu, dev, None, 0x1000, write).unwrap_err();
    w.poke(at.0, at.1, good);
    assert!(dma(w, iommu, dev, None, 0x1000, write).is_ok(), "restored");
    f
}

#[test]
fn reserved_bits_and_foreign_leaves_fault_with_their_reason() {
    let mut w = World::new();
    let mut iommu = w.setup();
    let td = w.td.clone();
    let page = w.aug_accept(&td, 0x1000, PageSize::Size4K);
    let dev = rid(2, 0, 0);
    w.bind(&mut iommu, &td, key(dev, None), 7);
    let root = iommu.root();
    let rw = format::root_word(2, 0);
    let ctx = format::RootHalf::decode(w.read(root, rw)).unwrap().context_table;
    let ce = w.read(ctx, 0);
    let dir = format::ContextEntry::decode([ce, 0, 0, 0]).unwrap().pasid_dir;
    let de = w.read(dir, 0);
    let b = iommu.binding(key(dev, None)).unwrap();
    let pe = b.index * PASID_WORDS;
    let leaf = w.sept_slot(&td, 0x1000, 0);
    let pfn_page = pfn(page);
    let outside = 0x000F_FFFF_FFFF_F000; // a frame past the arena

    let cases: Vec<((tsm::addr::Pfn, usize), u64, bool, FaultReason)> = vec![
        ((root, rw), w.read(root, rw) | 1 << 5, false, FaultReason::RootReserved),
        ((root, rw), (w.read(root, rw) & 0xFFF) | outside, false, FaultReason::ContextAccess),
        ((ctx, 0), ce | 1 << 2, false, FaultReason::ContextReserved), // DTE: no device TLB
        ((ctx, 1), 1, false, FaultReason::ContextReserved),           // RID_PASID unsupported
        ((ctx, 0), ce & !1, false, FaultReason::ContextNotPresent),
        ((ctx, 0), (ce & 0xFFF) | outside, false, FaultReason::PasidDirAccess),
        ((dir, 0), de | 1 << 2, false, FaultReason::PasidDirReserved),
        ((dir, 0), (de & 0xFFF) | outside, false, FaultReason::PasidTableAccess),
        ((b.table, pe), w.read(b.table, pe) | 1 << 9, false, FaultReason::PasidEntryReserved), // SSADE
        ((b.table, pe + 2), 1, false, FaultReason::PasidEntryReserved),                        // first-stage SRE
        ((b.table, pe), w.read(b.table, pe) ^ (0b010 << 6 | 0b011 << 6), false, FaultReason::PasidEntryInvalid),
        ((b.table, pe), w.read(b.table, pe) ^ (0b010 << 2 | 0b001 << 2), false, FaultReason::PasidEntryInvalid),
        ((b.table, pe), (w.read(b.table, pe) & 0xFFF) | outside, false, FaultReason::SeptRootInvalid),
        (
            leaf,
            SeptEntry::new(SeptState::MmioMapped, pfn_page, 0).raw(),
            false,
            FaultReason::SeptNotPrivateMemory(SeptState::MmioMapped),
        ),
        (
            leaf,
            SeptEntry::new(SeptState::MmioPending, pfn_page, 0).raw(),
            false,
            FaultReason::SeptNotPresent(SeptState::MmioPending),
        ),
        (leaf, SeptEntry::new(SeptState::Mapped, pfn_page, 0).raw() | 1 << 11, false, FaultReason::SeptReserved),
        (leaf, SeptEntry::new(SeptState::Mapped, pfn_page, 0).raw() | 0xF << 52, false, FaultReason::SeptReserved),
        (leaf, SeptEntry::new(SeptState::Mapped, pfn_page, 0).raw() & !2, true, FaultReason::SeptPermission),
        (leaf, SeptEntry::new(SeptState::Pending, pfn_page, 0).raw() | 3, false, FaultReason::SeptReserved),
    ];
    for (at, value, write, want) in cases {
        let f = poked(&mut w, &iommu, at, value, dev, write);
        assert_eq!(f.reason, want, "poke {value:#x} at {at:?}");
        // The fault carries the entry found (its first word, for multi-word entries).
        let first_word = match at {
            a if a == (ctx, 1) => w.read(ctx, 0),
            a if a == (b.table, pe + 2) => w.read(b.table, pe),
            _ => value,
        };
        assert_eq!(f.entry, first_word, "poke {value:#x} at {at:?}");
    }
    // A table where a leaf belongs, and a PML4 entry that claims to be a 512G leaf.
    let pde = w.sept_slot(&td, 0x1000, 1);
    let table = w.read(pde.0, pde.1);
    let f = poked(&mut w, &iommu, pde, table | 1 << 7, dev, false);
    assert_eq!(f.reason, FaultReason::SeptReserved);
    let pml4e = w.sept_slot(&td, 0x1000, 3);
    let f = poked(&mut w, &iommu, pml4e, SeptEntry::new(SeptState::Mapped, pfn_page, 3).raw(), dev, false);
    assert_eq!((f.reason, f.sept_level), (FaultReason::SeptReserved, Some(3)));
    // PASIDE clear refuses requests with PASID; FPD is reported.
    let f = {
        w.poke(ctx, 0, (ce & !(1 << 3)) | format::FPD);
        let f = iommu.translate(w.m.tsm.platform(), dev, Some(Pasid::new(9).unwrap()), 0x1000, false).unwrap_err();
        w.poke(ctx, 0, ce);
        f
    };
    assert_eq!((f.reason, f.fault_processing_disabled), (FaultReason::PasidDisabled, true));
    // A root table that is not memory.
    let f = translate(w.m.tsm.platform(), pfn(outside), dev, None, 0x1000, false).unwrap_err();
    assert_eq!(f.reason, FaultReason::RootTableInvalid);
}

/// A world with one bound device and its path's table words, for the property test.
struct Path {
    w: World,
    iommu: Iommu,
    words: Vec<(tsm::addr::Pfn, usize)>,
}

fn path() -> Path {
    let mut w = World::new();
    let mut iommu = w.setup();
    let td = w.td.clone();
    w.aug_accept(&td, 0x1000, PageSize::Size4K);
    w.aug_accept(&td, GIB, PageSize::Size2M);
    let dev = rid(2, 0, 0);
    w.bind(&mut iommu, &td, key(dev, None), 7);
    w.bind(&mut iommu, &td, key(dev, Some(1)), 7);
    let root = iommu.root();
    let rw = format::root_word(2, 0);
    let ctx = format::RootHalf::decode(w.read(root, rw)).unwrap().context_table;
    let dir = format::ContextEntry::decode([w.read(ctx, 0), 0, 0, 0]).unwrap().pasid_dir;
    let b = iommu.binding(key(dev, None)).unwrap();
    let mut words = vec![(root, rw), (dir, 0)];
    words.extend((0..4).map(|i| (ctx, i)));
    words.extend((0..2 * PASID_WORDS).map(|i| (b.table, i)));
    for level in 0..=3 {
        words.push(w.sept_slot(&td, 0x1000, level));
    }
    for level in 1..=3 {
        words.push(w.sept_slot(&td, GIB, level));
    }
    Path { w, iommu, words }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Random words on the walk's path (pointers anywhere, reserved bits, states the TSM never
    /// writes) and random requests: the walker answers, it never panics (the arena panics on any
    /// access outside it, so this also proves every pointer is checked before it is followed).
    #[test]
    fn the_walker_never_panics_on_random_entry_bits(
        pokes in proptest::collection::vec((any::<prop::sample::Index>(), any::<u64>(), 0u32..4), 1..8),
        bus in prop_oneof![Just(2u8), any::<u8>()],
        devfn in prop_oneof![Just(0u8), any::<u8>()],
        pasid in proptest::option::of(0u32..(1 << 20)),
        iova in prop_oneof![Just(0x1000u64), Just(GIB + 0x1234), any::<u64>()],
        write: bool,
    ) {
        let mut p = path();
        for (at, value, how) in pokes {
            let (frame, index) = *at.get(&p.words);
            let old = p.w.read(frame, index);
            // Whole random words, single bit flips, and pointers to arena or non-arena frames.
            let new = match how {
                0 => value,
                1 => old ^ (1 << (value % 64)),
                2 => (old & 0xFFF) | (value & format::ADDR_MASK),
                _ => (old & !format::ADDR_MASK) | ((value % 0x3000 + 0xFF000) << 12),
            };
            p.w.poke(frame, index, new);
        }
        let rid = Rid::from_raw(u16::from(bus) << 8 | u16::from(devfn));
        let pasid = pasid.map(|x| Pasid::new(x).unwrap());
        if let Ok(t) = p.iommu.translate(p.w.m.tsm.platform(), rid, pasid, iova, write) {
            // Whatever translates stayed inside the widths the walk enforces.
            prop_assert!(iova >> 51 == 0, "private GPAs lie below the 5-level shared bit at most");
            prop_assert!(t.hpa.raw() >> 52 == 0);
        }
    }
}
