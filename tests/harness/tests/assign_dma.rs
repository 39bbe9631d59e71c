//! The device's DMA through the trusted IOMMU, set up through the real ABI and answered by the
//! IOMMU walker: "may this RID DMA to this IOVA, and where does it land". DMA reaches only the
//! bound TD's accepted private pages; before the guest's DMAR.ACCEPT, after a block, after a
//! revoke it faults. And the unbind order for DMA: block, invalidate, remove.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use seamless_harness::assign::{device_config, pfn, Assignment, BAR_GPA, FUNCTION};
use seamless_harness::driver::{gpa_level, ok, Machine, TdHandle};
use tdisp_device::Device;
use tsm::abi::guest::leaf as g;
use tsm::abi::host::leaf as h;
use tsm::addr::PageSize;
use tsm::iommu::{DmaFault, FaultReason, Rid, Translation};
use tsm::{Operand, Regs, Status};

const MIB: u64 = 1 << 20;
const FN: u64 = FUNCTION as u64;

fn dma(m: &Machine, iova: u64) -> Result<Translation, DmaFault> {
    let iommu = m.tsm.iommu().expect("IOMMU set up");
    iommu.translate(m.tsm.platform(), Rid::from_raw(FUNCTION as u16), None, iova, true)
}

fn reason(r: Result<Translation, DmaFault>) -> FaultReason {
    r.expect_err("DMA must fault").reason
}

/// Two TDs, the IOMMU, and a TDI of the first TD locked, its BAR mapped and accepted.
fn world() -> (Machine, TdHandle, TdHandle, Device, Assignment, u64) {
    let mut m = Machine::configured(64 * MIB);
    let td = m.running_td();
    let other = m.running_td();
    let private = m.aug_accept(&td, 0x1000, PageSize::Size4K);
    m.aug_accept(&other, 0x1000, PageSize::Size4K);
    m.iommu_setup();
    let mut dev = Device::new(device_config()).unwrap();
    let mut a = m.connect(&mut dev);
    m.ide_setup(&mut dev, &mut a);
    m.bind(&td, &mut a);
    m.lock(&mut dev, &mut a);
    m.import_all(&a);
    m.map_range(&td, &a, 0, BAR_GPA);
    m.accept_range(&td, &a, 0, BAR_GPA);
    (m, td, other, dev, a, private)
}

#[test]
fn dma_reaches_only_accepted_private_pages_of_the_bound_td_and_only_once_accepted() {
    let (mut m, td, other, mut dev, a, private) = world();
    assert_eq!(reason(dma(&m, 0x1000)), FaultReason::RootNotPresent, "no entry yet");

    let r = m.dmar_add(&td, &a);
    ok(r, "DMAR.ADD");
    assert_eq!(r.rcx, 0b111, "context table, PASID directory and PASID table were needed");
    assert_eq!(reason(dma(&m, 0x1000)), FaultReason::PasidEntryNotPresent, "added, not accepted");
    assert_eq!(m.guest(td.vcpus[0], g::TDI_RD, FN, 7, 0).regs.r9, 1, "the guest sees ADDED");

    let r = m.guest(td.vcpus[0], g::DMAR_ACCEPT, FN, 0, 0);
    assert_eq!(r.regs.status(), Status::SUCCESS);
    assert_eq!(m.guest(td.vcpus[0], g::DMAR_ACCEPT, FN, 0, 0).regs.status(), Status::PAGE_ALREADY_ACCEPTED);
    let t = dma(&m, 0x1234).unwrap();
    assert_eq!(t.hpa.raw(), private + 0x234, "lands in the TD's own page");
    assert_eq!(t.page_size, PageSize::Size4K);

    // Not a pending page, not unmapped GPAs, not the device's own MMIO, not shared GPAs.
    m.map_tables(&td, 0x5000, 0);
    let pending = m.page();
    ok(m.host(h::MEM_PAGE_AUG, gpa_level(0x5000, 0), td.tdr, pending, 0), "AUG");
    assert!(dma(&m, 0x5000).is_err(), "pending: the guest has not accepted it");
    assert!(dma(&m, 0x9000).is_err(), "nothing mapped there");
    assert_eq!(
        reason(dma(&m, BAR_GPA)),
        FaultReason::SeptNotPrivateMemory(tsm::sept::SeptState::MmioMapped),
        "no P2P into private MMIO"
    );
    assert_eq!(reason(dma(&m, 1 << 47)), FaultReason::SharedGpa);
    // The other TD's memory is in no translation of this device.
    let other_page = m.host(h::MEM_SEPT_RD, gpa_level(0x1000, 0), other.tdr, 0, 0).rcx & 0x000F_FFFF_FFFF_F000;
    for gpa in (0..2 * MIB).step_by(4096) {
        if let Ok(t) = dma(&m, gpa) {
            assert_ne!(t.hpa.raw() & !0xFFF, other_page, "GPA {gpa:#x} reaches the other TD");
        }
    }

    // Running, then a revoke: DMA stops at once.
    m.authorise(&td, &a);
    ok(m.pump(&mut dev, h::TDI_START, a.tdi, a.msg, 0), "START");
    assert!(dma(&m, 0x1000).is_ok());
    ok(m.host(h::DMABUF_REVOKE, a.tdi, 0, 0, 0), "REVOKE");
    assert_eq!(reason(dma(&m, 0x1000)), FaultReason::PasidEntryNotPresent, "blocked with the TDI");
    assert_eq!(m.guest(td.vcpus[0], g::TDI_RD, FN, 7, 0).regs.r9, 3, "BLOCKED");
}

#[test]
fn dmar_add_binds_only_to_the_tdis_own_td_and_needs_its_frames() {
    let (mut m, td, other, _dev, a, _) = world();
    let frames = [m.page(), m.page(), m.page()];
    let call = |tdr: u64, r8: u64, r9: u64, r10: u64| Regs { r10, ..Regs::call(h::DMAR_ADD, tdr, a.tdi, r8, r9) };
    let before = m.tsm.platform().mem.writes();
    let r = m.tsm.host_call(&call(other.tdr, frames[0], frames[1], frames[2]));
    assert_eq!(r.status(), Status::TDI_NOT_BOUND_TO_TD.with_operand(Operand::Rdx), "a RID bound to another TD");
    let r = m.tsm.host_call(&call(td.tdr, 0, frames[1], frames[2]));
    assert_eq!(r.status(), Status::OPERAND_INVALID.with_operand(Operand::R8), "the context table is missing");
    let r = m.tsm.host_call(&call(td.tdr, frames[0], td.tdr, frames[2]));
    assert_eq!(r.status(), Status::PAGE_NOT_FREE.with_operand(Operand::R9), "a TDR as PASID directory");
    assert_eq!(before, m.tsm.platform().mem.writes(), "refused calls wrote nothing");
    assert!(m.tsm.tdi_summary(pfn(a.tdi)).unwrap().dmar.is_none());
    ok(m.tsm.host_call(&call(td.tdr, frames[0], frames[1], frames[2])), "DMAR.ADD");
    let r = m.dmar_add(&td, &a);
    assert_eq!(r.status(), Status::DMAR_STATE_INCORRECT.with_operand(Operand::Tdi), "one entry per TDI");
}

#[test]
fn dma_entries_go_away_in_order_and_sept_removal_waits_for_the_iotlb() {
    let (mut m, td, _other, mut dev, a, _) = world();
    ok(m.dmar_add(&td, &a), "DMAR.ADD");
    assert_eq!(m.guest(td.vcpus[0], g::DMAR_ACCEPT, FN, 0, 0).regs.status(), Status::SUCCESS);
    // The IOMMU walks the S-EPT itself: removing a private page needs TRACK *and* an IOTLB
    // invalidation, or the device could still use a cached translation.
    ok(m.host(h::MEM_RANGE_BLOCK, gpa_level(0x1000, 0), td.tdr, 0, 0), "BLOCK");
    ok(m.host(h::VP_KICK, td.vcpus[0], 0, 0, 0), "KICK");
    ok(m.host(h::MEM_TRACK, td.tdr, 0, 0, 0), "TRACK");
    let r = m.host(h::MEM_PAGE_REMOVE, gpa_level(0x1000, 0), td.tdr, 0, 0);
    assert_eq!(r.status(), Status::TLB_TRACKING_NOT_DONE.with_operand(Operand::Rcx), "IOTLB not invalidated");
    ok(m.host(h::IQ_INV_REQUEST, td.tdr, 0, 0, 0), "IQ.INV");
    ok(m.host(h::MEM_PAGE_REMOVE, gpa_level(0x1000, 0), td.tdr, 0, 0), "REMOVE");
    assert!(dma(&m, 0x1000).is_err(), "the removed page is unreachable");

    // The entry goes only after BLOCK and an invalidation.
    let s = |m: &mut Machine, leaf| m.host(leaf, a.tdi, 0, 0, 0).status();
    assert_eq!(s(&mut m, h::DMAR_REMOVE), Status::DMAR_STATE_INCORRECT.with_operand(Operand::Tdi), "not blocked");
    ok(m.host(h::DMAR_BLOCK, a.tdi, 0, 0, 0), "DMAR.BLOCK");
    assert!(dma(&m, 0x2000).is_err(), "a blocked entry lets nothing through");
    assert_eq!(s(&mut m, h::DMAR_BLOCK), Status::GPA_RANGE_ALREADY_BLOCKED);
    assert_eq!(s(&mut m, h::DMAR_REMOVE), Status::TLB_TRACKING_NOT_DONE.with_operand(Operand::Tdi));

    // STOP blocks what is left of the TDI: its MMIO leaves are blocked already.
    ok(m.pump(&mut dev, h::TDI_STOP, a.tdi, a.msg, 0), "STOP");
    m.enter(td.vcpus[0]);
    for i in 0..16 {
        let r = m.host(h::MMIO_BLOCK, gpa_level(BAR_GPA + i * 4096, 0), td.tdr, 0, 0);
        assert_eq!(r.status(), Status::GPA_RANGE_ALREADY_BLOCKED, "page {i}");
    }
    ok(m.host(h::VP_KICK, td.vcpus[0], 0, 0, 0), "KICK");
    ok(m.host(h::MEM_TRACK, td.tdr, 0, 0, 0), "TRACK");
    let r = m.host(h::MMIO_UNMAP, gpa_level(BAR_GPA, 0), td.tdr, 0, 0);
    assert_eq!(
        r.status(),
        Status::TLB_TRACKING_NOT_DONE.with_operand(Operand::Rcx),
        "MMIO unmap waits for the IOTLB too"
    );
    ok(m.host(h::IQ_INV_REQUEST, td.tdr, 0, 0, 0), "IQ.INV");
    for i in 0..16 {
        ok(m.host(h::MMIO_UNMAP, gpa_level(BAR_GPA + i * 4096, 0), td.tdr, 0, 0), "MMIO.UNMAP");
    }
    assert_eq!(s(&mut m, h::TDI_REMOVE), Status::TDI_HAS_MAPPED_DMA.with_operand(Operand::Tdi));
    ok(m.host(h::DMAR_REMOVE, a.tdi, 0, 0, 0), "DMAR.REMOVE");
    ok(m.host(h::TDI_REMOVE, a.tdi, 0, 0, 0), "TDI.REMOVE");
    assert_eq!(
        m.host(h::IQ_INV_REQUEST, td.tdr, 0, 0, 0).status(),
        Status::DMAR_STATE_INCORRECT.with_operand(Operand::Tdi)
    );
    assert_eq!(m.iommu_clear(), 4, "PASID table, directory, context table, root");
    assert_eq!(m.host(h::IOMMU_CLEAR, 0, 0, 0, 0).status(), Status::IOMMU_STATE_INCORRECT);
}

#[test]
fn a_scalable_iov_interface_gets_a_pasid_granular_entry() {
    let mut m = Machine::configured(64 * MIB);
    let td = m.running_td();
    let private = m.aug_accept(&td, 0x1000, PageSize::Size4K);
    m.iommu_setup();
    let mut dev = Device::new(device_config()).unwrap();
    let mut a = m.connect(&mut dev);
    m.ide_setup(&mut dev, &mut a);
    // The TDI is the function's PASID 5 (an assignable interface), not the whole function.
    let page = m.page();
    let pasid = tsm::abi::host_tdi::PASID_VALID | 5 << 32;
    ok(m.host(h::TDI_CREATE, td.tdr, a.pdev, page, FN | pasid), "TDI.CREATE with PASID");
    a.tdi = page;
    m.lock(&mut dev, &mut a);
    ok(m.dmar_add(&td, &a), "DMAR.ADD");
    let r = m.guest(td.vcpus[0], g::DMAR_ACCEPT, FN, 0, 0);
    assert_eq!(r.regs.status(), Status::TDI_NOT_PRESENT.with_operand(Operand::Rcx), "the guest names the PASID too");
    assert_eq!(m.guest(td.vcpus[0], g::DMAR_ACCEPT, FN | pasid, 0, 0).regs.status(), Status::SUCCESS);
    let iommu = m.tsm.iommu().unwrap();
    let rid = Rid::from_raw(FUNCTION as u16);
    let with = iommu.translate(m.tsm.platform(), rid, tsm::iommu::Pasid::new(5), 0x1000, true).unwrap();
    assert_eq!(with.hpa.raw(), private);
    assert!(iommu.translate(m.tsm.platform(), rid, None, 0x1000, true).is_err(), "requests without PASID: no entry");
    assert!(iommu.translate(m.tsm.platform(), rid, tsm::iommu::Pasid::new(6), 0x1000, true).is_err(), "another PASID");
}

#[test]
fn dmar_add_rejects_a_gpaw_52_td_with_the_units_width_status() {
    let mut m = Machine::configured(64 * MIB);
    let params = tsm::td::TdParams { gpaw: 52, ..seamless_harness::driver::default_params() };
    let mut td = m.create_td(&params);
    let vcpu = m.add_vcpu(&mut td);
    m.map_tables(&td, 0, 0);
    m.finalize(&td);
    m.enter(vcpu);
    m.iommu_setup();
    let mut dev = Device::new(device_config()).unwrap();
    let mut a = m.connect(&mut dev);
    m.ide_setup(&mut dev, &mut a);
    m.bind(&td, &mut a);
    m.lock(&mut dev, &mut a);
    let frames_before = m.frames_in_use();
    let r = m.dmar_add(&td, &a);
    // QEMU's unit: SAGAW 39 and 48 bits; the TD's S-EPT has 5 levels.
    assert_eq!(r.status(), Status::DMAR_WIDTH_UNSUPPORTED.with_operand(Operand::Rcx));
    assert_eq!(m.frames_in_use(), frames_before, "a refused DMAR.ADD consumed frames");
    assert!(m.tsm.iommu().unwrap().bindings().next().is_none());
}

#[test]
fn iommu_fault_rd_drains_the_units_records_into_a_log_the_host_reads() {
    let mut m = Machine::configured(64 * MIB);
    let r = m.host(h::IOMMU_FAULT_RD, 0, 0, 0, 0);
    assert_eq!(r.status(), Status::IOMMU_STATE_INCORRECT, "no IOMMU yet");
    m.iommu_setup();
    let r = m.host(h::IOMMU_FAULT_RD, 0, 0, 0, 0);
    assert_eq!((r.status(), r.rcx, r.r9), (Status::SUCCESS, 0, 0), "no fault yet");
    // A write to a page the TD never accepted: QEMU reports reason 0x05 (run1.log case 07).
    m.tsm.platform_mut().unit.record_fault(0x18, 0x20_1234, 0x05);
    let r = m.host(h::IOMMU_FAULT_RD, 0, 0, 0, 0);
    assert_eq!((r.status(), r.rcx, r.r9), (Status::SUCCESS, 1, 1));
    assert_eq!((r.rdx & 0xFFFF, r.rdx >> 16 & 0xFF, r.rdx >> 24 & 1), (0x18, 0x05, 1));
    assert_eq!(r.r8, 0x20_1000);
    assert!(m.tsm.platform().unit.faults.is_empty(), "the unit's record was not cleared");
    // More faults than the log keeps: the oldest go, the count goes on.
    for i in 0..tsm::iommu::FAULT_LOG as u64 + 2 {
        m.tsm.platform_mut().unit.record_fault(0x18, i << 12, 0x0C);
    }
    let r = m.host(h::IOMMU_FAULT_RD, 0, 0, 0, 0);
    assert_eq!((r.rcx, r.r9), (tsm::iommu::FAULT_LOG as u64 + 3, 0), "fault 0 was overwritten");
    let r = m.host(h::IOMMU_FAULT_RD, r.rcx - 1, 0, 0, 0);
    assert_eq!((r.r9, r.r8, r.rdx >> 16 & 0xFF), (1, (tsm::iommu::FAULT_LOG as u64 + 1) << 12, 0x0C));
}

/// The unit's descriptors since `from`: the TD's domain invalidation and a wait, confirmed.
fn invalidated_since(m: &Machine, td: &TdHandle, from: usize) -> bool {
    let iommu = m.tsm.iommu().expect("IOMMU");
    let did = iommu.domain_of(pfn(td.tdr)).expect("the TD's domain").did;
    let unit = &m.tsm.platform().unit;
    let wait = tsm::iommu::hw::InvDescriptor::wait(seamless_harness::unit::STATUS_ADDRESS, unit.status);
    unit.executed[from..] == [&tsm::iommu::hw::domain_invalidation(did)[..], &[wait]].concat()
}

#[test]
fn a_revoke_or_a_stop_returns_only_once_the_units_iotlb_forgot_the_tdi() {
    // Revoke while RUN: the entry is blocked and the domain invalidated within the call, so
    // no translation cached before it survives the return (no IQ.INV needed for that).
    let (mut m, td, _other, mut dev, a, _) = world();
    ok(m.dmar_add(&td, &a), "DMAR.ADD");
    assert_eq!(m.guest(td.vcpus[0], g::DMAR_ACCEPT, FN, 0, 0).regs.status(), Status::SUCCESS);
    m.authorise(&td, &a);
    ok(m.pump(&mut dev, h::TDI_START, a.tdi, a.msg, 0), "START");
    let before = m.tsm.platform().unit.executed.len();
    ok(m.host(h::DMABUF_REVOKE, a.tdi, 0, 0, 0), "REVOKE");
    assert!(invalidated_since(&m, &td, before), "REVOKE returned before the IOTLB was invalidated");
    assert_eq!(reason(dma(&m, 0x1000)), FaultReason::PasidEntryNotPresent);
    // The block is retired by that invalidation: REMOVE needs no IQ.INV of its own.
    ok(m.pump(&mut dev, h::TDI_STOP, a.tdi, a.msg, 0), "STOP");
    ok(m.host(h::DMAR_REMOVE, a.tdi, 0, 0, 0), "DMAR.REMOVE");

    // STOP of a running TDI: the same before it returns.
    let (mut m, td, _other, mut dev, a, _) = world();
    ok(m.dmar_add(&td, &a), "DMAR.ADD");
    assert_eq!(m.guest(td.vcpus[0], g::DMAR_ACCEPT, FN, 0, 0).regs.status(), Status::SUCCESS);
    m.authorise(&td, &a);
    ok(m.pump(&mut dev, h::TDI_START, a.tdi, a.msg, 0), "START");
    let before = m.tsm.platform().unit.executed.len();
    ok(m.pump(&mut dev, h::TDI_STOP, a.tdi, a.msg, 0), "STOP");
    assert!(invalidated_since(&m, &td, before), "STOP returned before the IOTLB was invalidated");
    assert!(dma(&m, 0x1000).is_err());
}

#[test]
fn a_revoke_the_unit_does_not_confirm_still_blocks_but_retires_nothing() {
    let (mut m, td, _other, mut dev, a, _) = world();
    ok(m.dmar_add(&td, &a), "DMAR.ADD");
    assert_eq!(m.guest(td.vcpus[0], g::DMAR_ACCEPT, FN, 0, 0).regs.status(), Status::SUCCESS);
    m.authorise(&td, &a);
    ok(m.pump(&mut dev, h::TDI_START, a.tdi, a.msg, 0), "START");
    m.tsm.platform_mut().unit.fault = seamless_harness::unit::UnitFault::NoStatusWrite;
    ok(m.host(h::DMABUF_REVOKE, a.tdi, 0, 0, 0), "REVOKE");
    assert_eq!(reason(dma(&m, 0x1000)), FaultReason::PasidEntryNotPresent, "blocked all the same");
    let r = m.host(h::DMAR_REMOVE, a.tdi, 0, 0, 0);
    assert_eq!(r.status(), Status::TLB_TRACKING_NOT_DONE.with_operand(Operand::Tdi), "the block is not retired");
    m.tsm.platform_mut().unit.fault = seamless_harness::unit::UnitFault::None;
    ok(m.pump(&mut dev, h::TDI_STOP, a.tdi, a.msg, 0), "STOP (its own invalidation completes)");
    ok(m.host(h::DMAR_REMOVE, a.tdi, 0, 0, 0), "DMAR.REMOVE once an invalidation completed");
}

#[test]
fn the_guest_reads_the_faults_of_its_own_device_and_no_one_elses() {
    let (mut m, td, other, _dev, a, _) = world();
    let rd = |m: &mut Machine, vcpu: u64, function: u64, n: u64| m.guest(vcpu, g::IOMMU_FAULT_RD, function, n, 0).regs;
    // A function no TDI of the TD has.
    let r = rd(&mut m, td.vcpus[0], FN + 1, 0);
    assert_eq!(r.status(), Status::TDI_NOT_PRESENT.with_operand(Operand::Rcx));
    let r = rd(&mut m, other.vcpus[0], FN, 0);
    assert_eq!(r.status(), Status::TDI_NOT_PRESENT.with_operand(Operand::Rcx), "another TD's device");
    ok(m.dmar_add(&td, &a), "DMAR.ADD");
    // The device's refused write into a page the TD never accepted, then another requester's.
    m.tsm.platform_mut().unit.record_fault(FUNCTION as u16, 0x9000, 0x05);
    m.tsm.platform_mut().unit.record_fault(0x28, 0x5000, 0x39);
    let r = rd(&mut m, td.vcpus[0], FN, 0);
    assert_eq!((r.status(), r.rcx, r.r9), (Status::SUCCESS, 2, 1), "both drained by the guest's call");
    assert_eq!((r.rdx & 0xFFFF, r.rdx >> 16 & 0xFF, r.r8), (FN, 0x05, 0x9000));
    let r = rd(&mut m, td.vcpus[0], FN, 1);
    assert_eq!((r.rcx, r.r9, r.rdx, r.r8), (2, 0, 0, 0), "another requester's fault is not the guest's");
    // The host sees both.
    assert_eq!(m.host(h::IOMMU_FAULT_RD, 1, 0, 0, 0).r9, 1);
}

/// SEAMLESS.IOMMU.TRANSLATE for the same request as `dma`: (translates, reason, S-EPT state).
fn translate_leaf(m: &mut Machine, iova: u64) -> Regs {
    m.tsm.host_call(&Regs { r9: 1, ..Regs::call(h::IOMMU_TRANSLATE, FN, 0, iova, 0) })
}

#[test]
fn iommu_translate_rejects_each_bad_operand_in_check_order_and_writes_nothing() {
    let mut m = Machine::new(64 * MIB);
    assert_eq!(translate_leaf(&mut m, 0x1000).status(), Status::SYS_NOT_READY);
    let mut m = Machine::configured(64 * MIB);
    let before = m.tsm.platform().mem.writes();
    let cases = [
        (Regs { r9: 1, ..Regs::call(h::IOMMU_TRANSLATE, 1 << 16 | FN, 0, 0, 0) }, Operand::Rcx),
        (Regs { r9: 1, ..Regs::call(h::IOMMU_TRANSLATE, FN, 5, 0, 0) }, Operand::Rdx),
        (Regs { r9: 1, ..Regs::call(h::IOMMU_TRANSLATE, FN, 1 << 63 | 1 << 20, 0, 0) }, Operand::Rdx),
        (Regs { r9: 2, ..Regs::call(h::IOMMU_TRANSLATE, FN, 0, 0, 0) }, Operand::R9),
    ];
    for (regs, op) in cases {
        let r = m.tsm.host_call(&regs);
        assert_eq!(r.status(), Status::OPERAND_INVALID.with_operand(op), "{regs:x?}");
        assert_eq!((r.rcx, r.rdx, r.r8), (0, 0, 0));
    }
    let r = translate_leaf(&mut m, 0x1000);
    assert_eq!(r.status(), tsm::error::TsmError::Iommu(tsm::iommu::IommuError::NotSetUp).status());
    assert_eq!(m.tsm.platform().mem.writes(), before, "refused calls write nothing");
}

/// The leaf says what the walker says, state by state, and writes nothing.
#[test]
fn iommu_translate_happy_path_is_the_walker_s_verdict() {
    let (mut m, td, _other, _dev, a, _) = world();
    ok(m.dmar_add(&td, &a), "DMAR.ADD");
    assert_eq!(m.guest(td.vcpus[0], g::DMAR_ACCEPT, FN, 0, 0).regs.status(), Status::SUCCESS);
    m.map_tables(&td, 0x5000, 0);
    let pending = m.page();
    ok(m.host(h::MEM_PAGE_AUG, gpa_level(0x5000, 0), td.tdr, pending, 0), "AUG");
    for iova in [0x1234, 0x5000, 0x9000, BAR_GPA, 1 << 47] {
        let walker = dma(&m, iova);
        let before = m.tsm.platform().mem.writes();
        let r = translate_leaf(&mut m, iova);
        assert_eq!(m.tsm.platform().mem.writes(), before, "read-only");
        ok(r, "IOMMU.TRANSLATE");
        match walker {
            Ok(_) => assert_eq!((r.rcx, r.rdx, r.r8), (1, 0, 0), "{iova:#x}"),
            Err(f) => {
                assert_eq!((r.rcx, r.rdx), (0, u64::from(f.reason.code())), "{iova:#x}");
                let state = match f.reason {
                    FaultReason::SeptNotPresent(s) | FaultReason::SeptNotPrivateMemory(s) => {
                        1 << 16 | s as u64 | u64::from(f.sept_level.unwrap_or(0)) << 8
                    }
                    _ => 0,
                };
                assert_eq!(r.r8, state, "{iova:#x}");
            }
        }
    }
    // The pending page names its state; the MMIO page is no private memory; shared is shared.
    assert_eq!(translate_leaf(&mut m, 0x5000).r8 & 0xFF, tsm::sept::SeptState::Pending as u64);
    assert_eq!(translate_leaf(&mut m, BAR_GPA).rdx, 0xF0);
    assert_eq!(translate_leaf(&mut m, 1 << 47).rdx, 0xF1);
}
