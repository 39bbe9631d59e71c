//! Spec tables for the trusted IOMMU's operations (the calls IOMMU.SETUP, DMAR.ADD, DMAR.ACCEPT,
//! DMAR.BLOCK, DMAR.REMOVE, IQ.INV and IOMMU.CLEAR will make): every failure in check order,
//! each with its exact error and no change to memory or to the IOMMU, then the happy path's
//! post-conditions, in the VT-d formats.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod iommu_support;

use iommu_support::{key, pfn, rejects, rid, World};
use seamless_harness::driver::SCRATCH_BASE;
use seamless_harness::unit::{UnitFault, STATUS_ADDRESS};
use tsm::addr::PageSize;
use tsm::iommu::format::{self, ContextEntry, PasidDirEntry, PasidEntry, RootHalf};
use tsm::iommu::hw::{InvDescriptor, Unsuitable, GLOBAL_INVALIDATION};
use tsm::iommu::{
    DmarState, DomainId, Done, FaultReason, FrameRole, Frames, Iommu, IommuError, Needs, SeptLevels, MAX_BINDINGS,
};
use tsm::pamt::{PageType, PamtEntry};
use tsm::platform::UnitError;

// ---- IOMMU.SETUP ------------------------------------------------------------------------------

#[test]
fn setup_rejects_a_frame_outside_the_tdmrs() {
    let mut w = World::new();
    let writes = w.writes();
    let r = Iommu::setup(w.m.tsm.platform_mut(), &w.pamt, pfn(SCRATCH_BASE));
    assert_eq!(r.err(), Some(IommuError::FrameNotConvertible(FrameRole::RootTable)));
    assert_eq!(w.writes(), writes);
}

#[test]
fn setup_rejects_a_frame_that_is_not_free() {
    let mut w = World::new();
    let writes = w.writes();
    let r = Iommu::setup(w.m.tsm.platform_mut(), &w.pamt, pfn(w.td.tdr));
    assert_eq!(r.err(), Some(IommuError::FrameNotFree(FrameRole::RootTable)));
    assert_eq!(w.writes(), writes);
}

#[test]
fn setup_happy_path() {
    let mut w = World::new();
    let root = w.m.page();
    w.m.write(root, &[0xAA; 64]); // the host's old contents
    let iommu = Iommu::setup(w.m.tsm.platform_mut(), &w.pamt, pfn(root)).unwrap();
    assert_eq!(iommu.root(), pfn(root));
    assert!(w.m.tsm.platform().mem.is_zero_page(pfn(root)));
    let e = w.m.tsm.pamt_entry(pfn(root)).unwrap();
    assert_eq!((e.ty, e.owner, e.level), (PageType::IommuTable, pfn(root), FrameRole::RootTable as u8));
    assert_eq!(iommu.table_frames(), 0);
    // The unit: scalable-mode root table, queue on, everything invalidated and confirmed by a
    // wait, then translation on.
    let unit = &w.m.tsm.platform().unit;
    assert_eq!(unit.rtaddr, Some(root | 1 << 10));
    assert!(unit.queue_enabled && unit.translating);
    let waited = InvDescriptor::wait(STATUS_ADDRESS, unit.status);
    assert_eq!(unit.executed, [&GLOBAL_INVALIDATION[..], &[waited]].concat());
    assert!(iommu.translating());
}

#[test]
fn setup_rejects_a_platform_without_a_unit() {
    let mut w = World::new();
    let root = w.m.page();
    w.m.tsm.platform_mut().unit.caps = None;
    let r = Iommu::setup(w.m.tsm.platform_mut(), &w.pamt, pfn(root));
    assert_eq!(r.err(), Some(IommuError::Unit(UnitError::Absent)));
    assert_eq!(w.m.tsm.pamt_entry(pfn(root)).unwrap().ty, PageType::Free);
}

#[test]
fn setup_rejects_a_unit_without_scalable_mode() {
    let mut w = World::new();
    let root = w.m.page();
    let writes = w.writes();
    // QEMU's intel-iommu without x-scalable-mode: QI and PT only.
    w.m.tsm.platform_mut().unit.caps.as_mut().unwrap().ecap = 0xF42;
    let r = Iommu::setup(w.m.tsm.platform_mut(), &w.pamt, pfn(root));
    assert_eq!(r.err(), Some(IommuError::Unsuitable(Unsuitable::NoScalableMode)));
    assert_eq!(w.writes(), writes);
    assert_eq!(w.m.tsm.platform().unit.rtaddr, None, "the unit was touched");
}

#[test]
fn setup_leaves_translation_off_when_the_wait_never_completes() {
    let mut w = World::new();
    let root = w.m.page();
    w.m.tsm.platform_mut().unit.fault = UnitFault::NoStatusWrite;
    let r = Iommu::setup(w.m.tsm.platform_mut(), &w.pamt, pfn(root));
    assert_eq!(r.err(), Some(IommuError::Unit(UnitError::Timeout)));
    assert!(!w.m.tsm.platform().unit.translating);
    assert_eq!(w.m.tsm.pamt_entry(pfn(root)).unwrap().ty, PageType::Free);
}

// ---- DMAR.ADD (install) -----------------------------------------------------------------------

#[test]
fn install_rejects_pasid_0_and_pasids_beyond_the_directory() {
    let mut w = World::new();
    let mut iommu = w.setup();
    let td = w.td.clone();
    for (pasid, want) in [(0, IommuError::PasidReserved), (32768, IommuError::PasidOutOfRange)] {
        rejects(&mut w, &mut iommu, want, |w, i| w.install(i, &td, key(rid(1, 0, 0), Some(pasid)), 7));
        let k = key(rid(1, 0, 0), Some(pasid));
        assert_eq!(iommu.needs(w.m.tsm.platform(), &w.pamt, k), Err(want));
    }
}

#[test]
fn install_rejects_did_0() {
    let mut w = World::new();
    let mut iommu = w.setup();
    let td = w.td.clone();
    rejects(&mut w, &mut iommu, IommuError::DomainIdInvalid, |w, i| w.install(i, &td, key(rid(1, 0, 0), None), 0));
}

#[test]
fn install_rejects_a_sept_root_that_is_not_the_tds() {
    let mut w = World::new();
    let mut iommu = w.setup();
    let other = w.second_td();
    let page = w.aug_accept(&w.td.clone(), 0x1000, PageSize::Size4K);
    let frames = w.frames();
    let good = w.request(&w.td.clone(), key(rid(1, 0, 0), None), 7);
    let bad_roots = [
        tsm::iommu::DmarRequest { sept_root: pfn(other.tdcs[0]), ..good }, // another TD's root
        tsm::iommu::DmarRequest { sept_root: pfn(page), ..good },          // a private page
        tsm::iommu::DmarRequest { owner: pfn(w.td.tdcs[1]), ..good },      // owner not a TDR
        tsm::iommu::DmarRequest { sept_root: pfn(SCRATCH_BASE), ..good },  // not convertible
    ];
    for req in bad_roots {
        rejects(&mut w, &mut iommu, IommuError::SeptRootInvalid, |w, i| {
            i.install(w.m.tsm.platform_mut(), &w.pamt, &req, &frames)
        });
    }
}

#[test]
fn install_rejects_an_entry_in_use_with_its_state() {
    let mut w = World::new();
    let mut iommu = w.setup();
    let td = w.td.clone();
    let k = key(rid(1, 2, 3), Some(5));
    w.install(&mut iommu, &td, k, 7).unwrap();
    rejects(&mut w, &mut iommu, IommuError::EntryInUse(DmarState::Added), |w, i| w.install(i, &td, k, 7));
    iommu.accept(w.m.tsm.platform_mut(), pfn(td.tdr), k).unwrap();
    rejects(&mut w, &mut iommu, IommuError::EntryInUse(DmarState::Accepted), |w, i| w.install(i, &td, k, 7));
    assert_eq!(iommu.needs(w.m.tsm.platform(), &w.pamt, k), Err(IommuError::EntryInUse(DmarState::Accepted)));
}

#[test]
fn install_rejects_a_did_of_another_td_and_a_second_did_for_one_td() {
    let mut w = World::new();
    let mut iommu = w.setup();
    let (a, b) = (w.td.clone(), w.second_td());
    w.install(&mut iommu, &a, key(rid(1, 0, 0), None), 7).unwrap();
    rejects(&mut w, &mut iommu, IommuError::DomainInUse, |w, i| w.install(i, &b, key(rid(2, 0, 0), None), 7));
    rejects(&mut w, &mut iommu, IommuError::DomainMismatch, |w, i| w.install(i, &a, key(rid(2, 0, 0), None), 8));
    w.install(&mut iommu, &b, key(rid(2, 0, 0), None), 8).unwrap();
}

#[test]
fn install_rejects_when_every_entry_slot_is_used() {
    let mut w = World::new();
    let mut iommu = w.setup();
    let td = w.td.clone();
    for p in 1..=MAX_BINDINGS as u32 {
        w.install(&mut iommu, &td, key(rid(1, 0, 0), Some(p)), 7).unwrap();
    }
    let k = key(rid(1, 0, 0), Some(MAX_BINDINGS as u32 + 1));
    rejects(&mut w, &mut iommu, IommuError::BindingsExhausted, |w, i| w.install(i, &td, k, 7));
}

#[test]
fn install_rejects_a_domain_beyond_the_last_slot() {
    // One domain per TD and as many slots as the TSM has TD slots: only reachable with more TDRs
    // than the TSM holds, so the owners are fabricated in the PAMT (TDR + TDCS root each).
    let mut w = World::new();
    let mut iommu = w.setup();
    let td = w.td.clone();
    for i in 0..=tsm::iommu::MAX_DOMAINS as u16 {
        let (tdr, root) = (pfn(w.m.page()), pfn(w.m.page()));
        let mem = w.m.tsm.platform_mut();
        w.pamt.set(mem, tdr, PamtEntry::owned(PageType::Tdr, tdr));
        w.pamt.set(mem, root, PamtEntry::owned(PageType::Tdcs, tdr));
        let req = tsm::iommu::DmarRequest {
            owner: tdr,
            sept_root: root,
            domain: DomainId(100 + i),
            ..w.request(&td, key(rid(5, 0, 0), Some(u32::from(i) + 1)), 1)
        };
        let frames = w.frames();
        if usize::from(i) < tsm::iommu::MAX_DOMAINS {
            iommu.install(w.m.tsm.platform_mut(), &w.pamt, &req, &frames).unwrap();
        } else {
            rejects(&mut w, &mut iommu, IommuError::DomainsExhausted, |w, i| {
                i.install(w.m.tsm.platform_mut(), &w.pamt, &req, &frames)
            });
        }
    }
}

#[test]
fn install_rejects_tables_that_are_not_the_iommus() {
    let mut w = World::new();
    let mut iommu = w.setup();
    let td = w.td.clone();
    w.install(&mut iommu, &td, key(rid(1, 0, 0), None), 7).unwrap();
    let root = iommu.root();
    let word = format::root_word(1, 0);
    let good = w.read(root, word);
    // A reserved bit in the root entry, then a pointer to a frame the IOMMU does not own.
    for bad in [good | 0x2, (good & 0xFFF) | (td.tdcs[1] & !0xFFF)] {
        w.poke(root, word, bad);
        rejects(&mut w, &mut iommu, IommuError::Corrupt, |w, i| w.install(i, &td, key(rid(1, 0, 1), None), 7));
    }
    w.poke(root, word, good);
    w.install(&mut iommu, &td, key(rid(1, 0, 1), None), 7).unwrap();
}

#[test]
fn install_rejects_missing_frames_in_path_order() {
    let mut w = World::new();
    let mut iommu = w.setup();
    let td = w.td.clone();
    let req = w.request(&td, key(rid(1, 0, 0), None), 7);
    let all = w.frames();
    let cases = [
        (Frames { context_table: None, ..all }, FrameRole::ContextTable),
        (Frames { pasid_dir: None, ..all }, FrameRole::PasidDirectory),
        (Frames { pasid_table: None, ..all }, FrameRole::PasidTable),
    ];
    for (frames, role) in cases {
        rejects(&mut w, &mut iommu, IommuError::FrameMissing(role), |w, i| {
            i.install(w.m.tsm.platform_mut(), &w.pamt, &req, &frames)
        });
    }
}

#[test]
fn install_rejects_bad_frames_for_each_role() {
    let mut w = World::new();
    let mut iommu = w.setup();
    let td = w.td.clone();
    let req = w.request(&td, key(rid(1, 0, 0), None), 7);
    let all = w.frames();
    let root = Some(iommu.root());
    let outside = Some(pfn(SCRATCH_BASE));
    let cases = [
        (Frames { context_table: outside, ..all }, IommuError::FrameNotConvertible(FrameRole::ContextTable)),
        (Frames { context_table: root, ..all }, IommuError::FrameNotFree(FrameRole::ContextTable)),
        (Frames { pasid_dir: outside, ..all }, IommuError::FrameNotConvertible(FrameRole::PasidDirectory)),
        (Frames { pasid_dir: Some(pfn(td.tdr)), ..all }, IommuError::FrameNotFree(FrameRole::PasidDirectory)),
        (Frames { pasid_dir: all.context_table, ..all }, IommuError::FrameDuplicate(FrameRole::PasidDirectory)),
        (Frames { pasid_table: outside, ..all }, IommuError::FrameNotConvertible(FrameRole::PasidTable)),
        (Frames { pasid_table: Some(pfn(td.tdcs[0])), ..all }, IommuError::FrameNotFree(FrameRole::PasidTable)),
        (Frames { pasid_table: all.context_table, ..all }, IommuError::FrameDuplicate(FrameRole::PasidTable)),
        (Frames { pasid_table: all.pasid_dir, ..all }, IommuError::FrameDuplicate(FrameRole::PasidTable)),
    ];
    for (frames, want) in cases {
        rejects(&mut w, &mut iommu, want, |w, i| i.install(w.m.tsm.platform_mut(), &w.pamt, &req, &frames));
    }
}

#[test]
fn install_happy_path_writes_vt_d_structures() {
    let mut w = World::new();
    let mut iommu = w.setup();
    let td = w.td.clone();
    let k = key(rid(0x12, 0x1F, 7), Some(70)); // devfn 0xFF: upper context table; PASID dir entry 1
    let mem = w.m.tsm.platform();
    assert_eq!(iommu.needs(mem, &w.pamt, k), Ok(Needs { context_table: true, pasid_dir: true, pasid_table: true }));
    let req = w.request(&td, k, 0x42);
    let frames = w.frames();
    let consumed = iommu.install(w.m.tsm.platform_mut(), &w.pamt, &req, &frames).unwrap();
    assert_eq!(consumed.count(), 3);
    let (ctx, dir, table) = (frames.context_table.unwrap(), frames.pasid_dir.unwrap(), frames.pasid_table.unwrap());

    // Root entry of bus 0x12, upper half (UP/UCTP: bits 127:64).
    let root = iommu.root();
    assert_eq!(w.read(root, 0x12 * 2), 0, "lower half untouched");
    assert_eq!(RootHalf::decode(w.read(root, 0x12 * 2 + 1)), Ok(RootHalf::pointing_to(ctx)));
    // Context entry 0x7F of the upper table: P, PASIDE, PDTS 2, PASIDDIRPTR.
    let cw = [0, 1, 2, 3].map(|i| w.read(ctx, 0x7F * 4 + i));
    assert_eq!(ContextEntry::decode(cw), Ok(ContextEntry::pointing_to(dir)));
    assert_eq!(cw[0] & 0xFFF, 1 | 1 << 3 | 2 << 9);
    // PASID directory entry 70 >> 6 = 1.
    assert_eq!(PasidDirEntry::decode(w.read(dir, 1)), Ok(PasidDirEntry::pointing_to(table)));
    assert_eq!(w.read(dir, 0), 0);
    // PASID entry 70 & 63 = 6: not present yet, so word 0 is all zero (the S-EPT root, AW and
    // PGTT come with P, in one store, at the guest's accept: QEMU's unit walks a PASID entry's
    // table whatever P says); word 1 already holds the DID, PWSNP and PGSNP.
    let pw: [u64; 8] = core::array::from_fn(|i| w.read(table, 6 * 8 + i));
    assert_eq!(pw, PasidEntry::second_stage(req.sept_root, SeptLevels::Four, DomainId(0x42), false).encode());
    assert_eq!(pw[..2], [0, 0x42 | 1 << 23 | 1 << 24], "nothing a unit could walk before the accept");
    let present = PasidEntry::second_stage(req.sept_root, SeptLevels::Four, DomainId(0x42), true).word0();
    assert_eq!(present & 0xFFF, 2 << 6 | 2 << 2 | 1, "at accept: PGTT second stage only, AW 48-bit, P");
    assert_eq!(present & format::ADDR_MASK, req.sept_root.addr().raw(), "the TD's own S-EPT root");
    for (f, role) in [(ctx, FrameRole::ContextTable), (dir, FrameRole::PasidDirectory), (table, FrameRole::PasidTable)]
    {
        assert_eq!(
            w.m.tsm.pamt_entry(f),
            Some(PamtEntry { level: role as u8, ..PamtEntry::owned(PageType::IommuTable, root) })
        );
    }
    let b = iommu.binding(k).unwrap();
    assert_eq!((b.state, b.owner, b.domain), (DmarState::Added, pfn(td.tdr), DomainId(0x42)));
    assert_eq!(iommu.table_frames(), 3);
    assert_eq!(iommu.entries_of(pfn(td.tdr)), 1);

    // The next PASID of the same group needs nothing; PASID 128 a table; devfn 0x80 of the same
    // bus half a directory and a table.
    let mem = w.m.tsm.platform();
    assert_eq!(iommu.needs(mem, &w.pamt, key(rid(0x12, 0x1F, 7), Some(71))), Ok(Needs::default()));
    let t = Needs { pasid_table: true, ..Needs::default() };
    assert_eq!(iommu.needs(mem, &w.pamt, key(rid(0x12, 0x1F, 7), Some(128))), Ok(t));
    let dt = Needs { pasid_dir: true, pasid_table: true, ..Needs::default() };
    assert_eq!(iommu.needs(mem, &w.pamt, key(rid(0x12, 0x10, 0), None)), Ok(dt));
    // Frames given but not needed are not consumed.
    let spare = w.frames();
    let req2 = w.request(&td, key(rid(0x12, 0x1F, 7), Some(71)), 0x42);
    let used = iommu.install(w.m.tsm.platform_mut(), &w.pamt, &req2, &spare).unwrap();
    assert_eq!(used, Needs::default());
    assert_eq!(w.m.tsm.pamt_entry(spare.pasid_table.unwrap()).unwrap().ty, PageType::Free);
}

// ---- DMAR.ACCEPT ------------------------------------------------------------------------------

#[test]
fn accept_rejects_in_check_order() {
    let mut w = World::new();
    let mut iommu = w.setup();
    let (td, other) = (w.td.clone(), w.second_td());
    let k = key(rid(1, 0, 0), None);
    let owner = pfn(td.tdr);
    rejects(&mut w, &mut iommu, IommuError::EntryNotFound, |w, i| i.accept(w.m.tsm.platform_mut(), owner, k));
    w.install(&mut iommu, &td, k, 7).unwrap();
    rejects(&mut w, &mut iommu, IommuError::NotOwner, |w, i| i.accept(w.m.tsm.platform_mut(), pfn(other.tdr), k));
    // The PASID entry in memory is not what the TSM wrote.
    let b = iommu.binding(k).unwrap();
    let good = w.read(b.table, b.index * 8 + 1);
    w.poke(b.table, b.index * 8 + 1, good ^ 1);
    rejects(&mut w, &mut iommu, IommuError::Corrupt, |w, i| i.accept(w.m.tsm.platform_mut(), owner, k));
    w.poke(b.table, b.index * 8 + 1, good);
    iommu.block(w.m.tsm.platform_mut(), k).unwrap();
    rejects(&mut w, &mut iommu, IommuError::EntryBlocked, |w, i| i.accept(w.m.tsm.platform_mut(), owner, k));
}

#[test]
fn accept_happy_path_and_repeat_is_a_warning() {
    let mut w = World::new();
    let mut iommu = w.setup();
    let td = w.td.clone();
    let page = w.aug_accept(&td, 0x3000, PageSize::Size4K);
    let k = key(rid(1, 0, 0), None);
    w.install(&mut iommu, &td, k, 7).unwrap();
    let dma = |w: &World, i: &Iommu| i.translate(w.m.tsm.platform(), k.rid, None, 0x3008, true);
    assert_eq!(dma(&w, &iommu).unwrap_err().reason, FaultReason::PasidEntryNotPresent);
    assert_eq!(iommu.accept(w.m.tsm.platform_mut(), pfn(td.tdr), k), Ok(Done::Changed));
    assert_eq!(dma(&w, &iommu).unwrap().hpa.raw(), page + 8);
    let b = iommu.binding(k).unwrap();
    assert_eq!(w.read(b.table, b.index * 8) & format::PRESENT, 1);
    assert_eq!(b.state, DmarState::Accepted);
    let (writes, before) = (w.writes(), iommu.clone());
    assert_eq!(iommu.accept(w.m.tsm.platform_mut(), pfn(td.tdr), k), Ok(Done::AlreadyDone));
    assert_eq!((w.writes(), &iommu), (writes, &before));
}

// ---- DMAR.BLOCK -------------------------------------------------------------------------------

#[test]
fn block_rejects_in_check_order_and_repeat_is_a_warning() {
    let mut w = World::new();
    let mut iommu = w.setup();
    let td = w.td.clone();
    let k = key(rid(1, 0, 0), Some(9));
    rejects(&mut w, &mut iommu, IommuError::EntryNotFound, |w, i| i.block(w.m.tsm.platform_mut(), k));
    w.bind(&mut iommu, &td, k, 7);
    let b = iommu.binding(k).unwrap();
    let good = w.read(b.table, b.index * 8);
    w.poke(b.table, b.index * 8, good & !format::PRESENT);
    rejects(&mut w, &mut iommu, IommuError::Corrupt, |w, i| i.block(w.m.tsm.platform_mut(), k));
    w.poke(b.table, b.index * 8, good);
    assert_eq!(iommu.block(w.m.tsm.platform_mut(), k), Ok(Done::Changed));
    let (writes, before) = (w.writes(), iommu.clone());
    assert_eq!(iommu.block(w.m.tsm.platform_mut(), k), Ok(Done::AlreadyDone));
    assert_eq!((w.writes(), &iommu), (writes, &before));
}

#[test]
fn block_happy_path_records_the_iotlb_epoch() {
    let mut w = World::new();
    let mut iommu = w.setup();
    let td = w.td.clone();
    let k = key(rid(1, 0, 0), None);
    w.bind(&mut iommu, &td, k, 7);
    w.invalidate(&mut iommu, &td, 7).unwrap();
    let epoch = iommu.domain(DomainId(7)).unwrap().iotlb.epoch();
    iommu.block(w.m.tsm.platform_mut(), k).unwrap();
    let b = iommu.binding(k).unwrap();
    assert_eq!((b.state, b.bepoch), (DmarState::Blocked, epoch));
    assert_eq!(w.read(b.table, b.index * 8) & format::PRESENT, 0);
}

// ---- DMAR.REMOVE ------------------------------------------------------------------------------

#[test]
fn remove_rejects_in_check_order() {
    let mut w = World::new();
    let mut iommu = w.setup();
    let td = w.td.clone();
    let k = key(rid(1, 0, 0), None);
    rejects(&mut w, &mut iommu, IommuError::EntryNotFound, |w, i| i.remove(w.m.tsm.platform_mut(), k));
    w.install(&mut iommu, &td, k, 7).unwrap();
    rejects(&mut w, &mut iommu, IommuError::NotBlocked, |w, i| i.remove(w.m.tsm.platform_mut(), k));
    iommu.accept(w.m.tsm.platform_mut(), pfn(td.tdr), k).unwrap();
    rejects(&mut w, &mut iommu, IommuError::NotBlocked, |w, i| i.remove(w.m.tsm.platform_mut(), k));
    iommu.block(w.m.tsm.platform_mut(), k).unwrap();
    rejects(&mut w, &mut iommu, IommuError::TrackingNotDone, |w, i| i.remove(w.m.tsm.platform_mut(), k));
    w.invalidate(&mut iommu, &td, 7).unwrap();
    let b = iommu.binding(k).unwrap();
    let good = w.read(b.table, b.index * 8 + 7);
    w.poke(b.table, b.index * 8 + 7, 1);
    rejects(&mut w, &mut iommu, IommuError::Corrupt, |w, i| i.remove(w.m.tsm.platform_mut(), k));
    w.poke(b.table, b.index * 8 + 7, good);
    iommu.remove(w.m.tsm.platform_mut(), k).unwrap();
}

#[test]
fn remove_happy_path_frees_the_entry_and_the_last_one_the_domain() {
    let mut w = World::new();
    let mut iommu = w.setup();
    let td = w.td.clone();
    let (k1, k2) = (key(rid(1, 0, 0), None), key(rid(1, 0, 0), Some(3)));
    w.bind(&mut iommu, &td, k1, 7);
    w.install(&mut iommu, &td, k2, 7).unwrap();
    for k in [k1, k2] {
        iommu.block(w.m.tsm.platform_mut(), k).unwrap();
    }
    w.invalidate(&mut iommu, &td, 7).unwrap();
    let b = iommu.binding(k1).unwrap();
    iommu.remove(w.m.tsm.platform_mut(), k1).unwrap();
    assert!((0..8).all(|i| w.read(b.table, b.index * 8 + i) == 0), "PASID entry zeroed");
    assert_eq!(iommu.binding(k1), None);
    assert_eq!(iommu.domain(DomainId(7)).unwrap().entries, 1);
    iommu.remove(w.m.tsm.platform_mut(), k2).unwrap();
    assert_eq!(iommu.domain(DomainId(7)), None, "the DID is free again");
    assert_eq!(iommu.entries_of(pfn(td.tdr)), 0);
    // The tables stay: installing again needs no frame.
    assert_eq!(iommu.needs(w.m.tsm.platform(), &w.pamt, k1), Ok(Needs::default()));
}

#[test]
fn install_rejects_a_gpaw_52_td_the_units_sagaw_cannot_walk() {
    let mut w = World::new();
    let mut iommu = w.setup();
    let params = tsm::td::TdParams { gpaw: 52, ..seamless_harness::driver::default_params() };
    let td = w.running_td_with(&params);
    let want = IommuError::WidthUnsupported { sagaw: 0b0110 };
    rejects(&mut w, &mut iommu, want, |w, i| w.install(i, &td, key(rid(1, 0, 0), None), 7));
}

// ---- IQ.INV and tracking ----------------------------------------------------------------------

#[test]
fn invalidate_queues_pasid_cache_and_iotlb_of_the_domain_then_a_wait() {
    let mut w = World::new();
    let mut iommu = w.setup();
    let td = w.td.clone();
    w.bind(&mut iommu, &td, key(rid(1, 0, 0), None), 7);
    let before = w.m.tsm.platform().unit.executed.len();
    w.invalidate(&mut iommu, &td, 7).unwrap();
    let unit = &w.m.tsm.platform().unit;
    let expect = [
        InvDescriptor::pasid_cache_domain(DomainId(7)),
        InvDescriptor::iotlb_domain(DomainId(7)),
        InvDescriptor::wait(STATUS_ADDRESS, unit.status),
    ];
    assert_eq!(unit.executed[before..], expect);
}

#[test]
fn invalidate_retires_nothing_without_the_waits_status_write() {
    let mut w = World::new();
    let mut iommu = w.setup();
    let td = w.td.clone();
    let k = key(rid(1, 0, 0), None);
    w.bind(&mut iommu, &td, k, 7);
    iommu.block(w.m.tsm.platform_mut(), k).unwrap();
    for (fault, want) in
        [(UnitFault::NoStatusWrite, UnitError::Timeout), (UnitFault::QueueError, UnitError::QueueError)]
    {
        w.m.tsm.platform_mut().unit.fault = fault;
        let epoch = w.epoch(&td);
        rejects(&mut w, &mut iommu, IommuError::Unit(want), |w, i| {
            i.invalidate(w.m.tsm.platform_mut(), DomainId(7), epoch)
        });
        rejects(&mut w, &mut iommu, IommuError::TrackingNotDone, |w, i| i.remove(w.m.tsm.platform_mut(), k));
    }
    w.m.tsm.platform_mut().unit.fault = UnitFault::None;
    w.invalidate(&mut iommu, &td, 7).unwrap();
    iommu.remove(w.m.tsm.platform_mut(), k).unwrap();
}

#[test]
fn invalidate_rejects_an_unknown_domain() {
    let mut w = World::new();
    let mut iommu = w.setup();
    rejects(&mut w, &mut iommu, IommuError::DomainNotFound, |w, i| {
        i.invalidate(w.m.tsm.platform_mut(), DomainId(7), 1)
    });
}

#[test]
fn sept_blocks_of_a_td_with_dmar_entries_need_track_then_invalidation() {
    let mut w = World::new();
    let mut iommu = w.setup();
    let td = w.td.clone();
    let owner = pfn(td.tdr);
    w.aug_accept(&td, 0x1000, PageSize::Size4K);
    // Before any DMAR entry the IOTLB holds nothing of the TD.
    assert!(iommu.is_tracked(owner, w.epoch(&td)));
    w.bind(&mut iommu, &td, key(rid(1, 0, 0), None), 7);
    let bepoch = w.epoch(&td);
    w.sept_block(&td, 0x1000);
    assert!(!iommu.is_tracked(owner, bepoch));
    w.invalidate(&mut iommu, &td, 7).unwrap();
    assert!(!iommu.is_tracked(owner, bepoch), "an invalidation in the block's own epoch may precede it");
    w.kick_and_track(&td);
    assert!(!iommu.is_tracked(owner, bepoch), "TRACK retires the CPU TLB only");
    w.invalidate(&mut iommu, &td, 7).unwrap();
    assert!(iommu.is_tracked(owner, bepoch));
    // Another TD is not concerned.
    let other = w.second_td();
    assert!(iommu.is_tracked(pfn(other.tdr), 1));
}

// ---- IOMMU.CLEAR (reclaim) --------------------------------------------------------------------

#[test]
fn reclaim_rejects_while_entries_exist() {
    let mut w = World::new();
    let mut slot = Some(w.setup());
    let td = w.td.clone();
    w.install(slot.as_mut().unwrap(), &td, key(rid(1, 0, 0), None), 7).unwrap();
    let (writes, before) = (w.writes(), slot.clone());
    assert_eq!(Iommu::reclaim(&mut slot, w.m.tsm.platform_mut(), &w.pamt), Err(IommuError::EntriesExist));
    assert_eq!((w.writes(), &slot), (writes, &before));
    let mut none = None;
    assert_eq!(Iommu::reclaim(&mut none, w.m.tsm.platform_mut(), &w.pamt), Err(IommuError::NotSetUp));
}

#[test]
fn reclaim_gives_back_every_frame_deepest_first() {
    let mut w = World::new();
    let mut iommu = w.setup();
    let td = w.td.clone();
    let keys =
        [key(rid(1, 0, 0), None), key(rid(1, 0, 0), Some(64)), key(rid(1, 0x10, 0), None), key(rid(9, 0, 0), None)];
    for k in keys {
        w.bind(&mut iommu, &td, k, 7);
        iommu.block(w.m.tsm.platform_mut(), k).unwrap();
    }
    w.invalidate(&mut iommu, &td, 7).unwrap();
    for k in keys {
        iommu.remove(w.m.tsm.platform_mut(), k).unwrap();
    }
    let owned = iommu.table_frames();
    // Bus 1 lower half: context, directory, tables for PASIDs 0..64 and 64..128; devfn 0x80 of
    // bus 1 (upper half) and bus 9: a context table, a directory and a table each.
    assert_eq!(owned, 3 + 1 + 3 + 3);
    let root = iommu.root();
    let mut slot = Some(iommu);
    // A unit that does not confirm the global invalidation keeps every frame in place.
    w.m.tsm.platform_mut().unit.fault = UnitFault::NoStatusWrite;
    let r = Iommu::reclaim(&mut slot, w.m.tsm.platform_mut(), &w.pamt);
    assert_eq!(r, Err(IommuError::Unit(UnitError::Timeout)));
    assert_eq!(slot.as_ref().map(Iommu::table_frames), Some(owned));
    w.m.tsm.platform_mut().unit.fault = UnitFault::None;
    let mut back = Vec::new();
    loop {
        let (frame, role) = Iommu::reclaim(&mut slot, w.m.tsm.platform_mut(), &w.pamt).unwrap();
        assert!(!w.m.tsm.platform().unit.translating, "a frame came back while the unit translates");
        assert!(w.m.tsm.platform().mem.is_zero_page(frame));
        assert_eq!(w.m.tsm.pamt_entry(frame), Some(PamtEntry::FREE));
        back.push(role);
        if role == FrameRole::RootTable {
            assert_eq!(frame, root);
            break;
        }
    }
    assert!(slot.is_none());
    assert_eq!(back.len() as u32, owned + 1);
    assert_eq!(back[0], FrameRole::PasidTable, "deepest first");
    assert_eq!(back.iter().filter(|r| **r == FrameRole::ContextTable).count(), 3);
}

#[test]
fn host_reclaim_refuses_iommu_table_frames() {
    use tsm::abi::host::leaf;
    use tsm::Status;
    let mut w = World::new();
    let iommu = w.setup();
    let root = iommu.root().addr().raw();
    let rd = w.m.host(leaf::PHYMEM_PAGE_RDMD, root, 0, 0, 0);
    assert_eq!((rd.status(), rd.rcx, rd.rdx), (Status::SUCCESS, PageType::IommuTable as u64, root));
    let writes = w.writes();
    let r = w.m.host(leaf::PHYMEM_PAGE_RECLAIM, root, 0, 0, 0);
    assert_eq!(r.status().code(), Status::PAGE_METADATA_INCORRECT);
    assert_eq!(w.writes(), writes);
}
