//! The host-side attacks of issue #16, each named after what the host tries, through the real
//! dispatcher: a PASID twin taking over a running interface (defect 1), MMIO left mapped under a
//! blocked table across STOP and revoke (2), IDE key state not reaching the TDI (3), host RAM
//! imported as private MMIO (5), and a DMA key that drops the PCI segment.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use seamless_harness::assign::{device_config, pfn, Assignment, BAR0_PAGES, BAR_BASE, BAR_GPA, FUNCTION};
use seamless_harness::driver::{gpa_level, ok, Machine, TdHandle, ARENA_BASE};
use seamless_harness::unchanged::{refused, snapshot};
use tdisp_device::Device;
use tdisp_device::Reply;
use tsm::abi::guest::leaf as g;
use tsm::abi::host::leaf as h;
use tsm::abi::host_pdev::mng;
use tsm::abi::host_tdi::PASID_VALID;
use tsm::addr::{FrameRange, PageSize, Pfn};
use tsm::iommu::{DmarState, FaultReason, Rid};
use tsm::sept::SeptState;
use tsm::tdi::TdiState;
use tsm::{Operand, Regs, Status};

const MIB: u64 = 1 << 20;
const FN: u64 = FUNCTION as u64;
/// KM operations in R9 (15:8).
const KM_REFRESH: u64 = 1 << 8;
const KM_STOP: u64 = 2 << 8;

struct World {
    m: Machine,
    td: TdHandle,
    other: TdHandle,
    dev: Device,
    a: Assignment,
    /// A private page of the TD the device's DMA reaches while the TDI runs.
    private_gpa: u64,
}

/// Two running TDs, the trusted IOMMU, and a running TDI of the first TD: BAR0 mapped and
/// accepted at BAR_GPA, its DMA entry added and accepted.
fn running() -> World {
    let mut m = Machine::configured(64 * MIB);
    let td = m.running_td();
    let other = m.running_td();
    let private_gpa = 0x1000;
    m.aug_accept(&td, private_gpa, PageSize::Size4K);
    m.iommu_setup();
    let mut dev = Device::new(device_config()).unwrap();
    let a = m.assign(&mut dev, &td);
    ok(m.dmar_add(&td, &a), "DMAR.ADD");
    let r = m.guest(td.vcpus[0], g::DMAR_ACCEPT, FN, 0, 0);
    assert_eq!(r.regs.status(), Status::SUCCESS, "DMAR.ACCEPT");
    let w = World { m, td, other, dev, a, private_gpa };
    assert!(dma(&w).is_ok(), "the running TDI's DMA reaches the TD");
    w
}

fn state(w: &World) -> TdiState {
    w.m.tsm.tdi_summary(pfn(w.a.tdi)).unwrap().state
}

fn dma(w: &World) -> Result<tsm::iommu::Translation, tsm::iommu::DmaFault> {
    let iommu = w.m.tsm.iommu().expect("IOMMU set up");
    iommu.translate(w.m.tsm.platform(), Rid::from_raw(FUNCTION as u16), None, w.private_gpa, true)
}

fn sept_state(m: &mut Machine, tdr: u64, gpa: u64, level: u8) -> SeptState {
    let rd = m.host(h::MEM_SEPT_RD, gpa_level(gpa, level), tdr, 0, 0);
    ok(rd, "SEPT.RD");
    SeptState::from_code((rd.rdx >> 8) & 0xFF).unwrap()
}

/// The TDI is ERROR, every page of its BAR is MMIO_BLOCKED, its DMA entry blocked and DMA
/// faulting, and the guest reads ERROR.
#[track_caller]
fn assert_cut_off(w: &mut World, why: &str) {
    assert_eq!(state(w), TdiState::Error, "{why}: the TDI is ERROR");
    let tdr = w.td.tdr;
    for i in 0..u64::from(BAR0_PAGES) {
        assert_eq!(sept_state(&mut w.m, tdr, BAR_GPA + i * 4096, 0), SeptState::MmioBlocked, "{why}: page {i}");
    }
    let iommu = w.m.tsm.iommu().unwrap();
    let key = tsm::iommu::DmarKey { rid: Rid::from_raw(FUNCTION as u16), pasid: None };
    assert_eq!(iommu.binding(key).unwrap().state, DmarState::Blocked, "{why}: the DMA entry is blocked");
    assert_eq!(dma(w).unwrap_err().reason, FaultReason::PasidEntryNotPresent, "{why}: DMA faults");
    assert_eq!(w.m.guest(w.td.vcpus[0], g::TDI_RD, FN, 0, 0).regs.r9, 3, "{why}: the guest reads ERROR");
}

// ---- defect 1: the PASID twin ---------------------------------------------------------------

#[test]
fn a_pasid_twin_cannot_bind_a_running_interface_to_another_td() {
    let mut w = running();
    let t = [w.td.tdr, w.other.tdr];
    let (other, pdev) = (w.other.tdr, w.a.pdev);
    let page = w.m.page();
    let in_use = Status::FUNCTION_IN_USE.with_operand(Operand::R9);
    // TDISP's INTERFACE_ID is the function alone: a twin with a PASID would be the same
    // interface to the device, and its STOP would unlock the running one.
    refused(&mut w.m, &t, in_use, |m| m.host(h::TDI_CREATE, other, pdev, page, FN | PASID_VALID | 7 << 32));
    refused(&mut w.m, &t, in_use, |m| m.host(h::TDI_CREATE, other, pdev, page, FN | PASID_VALID | 1 << 32));
    // Nor the same function spelt with the segment-valid bit (segment 0 either way).
    refused(&mut w.m, &t, in_use, |m| m.host(h::TDI_CREATE, other, pdev, page, FN | 1 << 24));
    // A segment without the segment-valid bit is no function id at all.
    refused(&mut w.m, &t, Status::OPERAND_INVALID.with_operand(Operand::R9), |m| {
        m.host(h::TDI_CREATE, other, pdev, page, FN | 1 << 16)
    });
    assert_eq!(state(&w), TdiState::Run);
    assert_eq!(w.dev.tdis()[0].state, tsm::tdisp::TdiState::Run, "the device's interface still runs");
}

#[test]
fn a_second_pdev_spelling_the_same_function_is_refused() {
    let mut w = running();
    let t = [w.td.tdr, w.other.tdr];
    let page = w.m.page();
    refused(&mut w.m, &t, Status::FUNCTION_IN_USE.with_operand(Operand::Rdx), |m| {
        m.host(h::SPDM_CREATE, page, FN | 1 << 24, 0, 0)
    });
}

/// The guest names its TDI the way the TSM compares functions, as requesters: both spellings of
/// a segment-0 function find the one TDI, and another segment's spelling finds none.
#[test]
fn the_guest_finds_its_tdi_under_either_spelling_of_the_function() {
    let mut w = running();
    let vcpu = w.td.vcpus[0];
    let plain = w.m.guest(vcpu, g::TDI_RD, FN, 0, 0);
    let valid = w.m.guest(vcpu, g::TDI_RD, FN | 1 << 24, 0, 0);
    assert_eq!(plain.regs.status(), Status::SUCCESS);
    assert_eq!(valid.regs.status(), Status::SUCCESS);
    assert_eq!(plain.regs.r9, valid.regs.r9, "the same TDI's state");
    let r = w.m.guest(vcpu, g::TDI_RD, FN | 1 << 24 | 1 << 16, 0, 0);
    assert_eq!(r.regs.status(), Status::TDI_NOT_PRESENT.with_operand(Operand::Rcx), "segment 1 is another function");
}

// ---- defect 2: MMIO under a blocked table ---------------------------------------------------

/// The host blocks the level-1 table entry above the BAR, then `cut` stops or revokes the TDI;
/// after tracking it unblocks the table: the leaves beneath must stay blocked.
fn block_above_then(cut: impl FnOnce(&mut World)) -> World {
    let mut w = running();
    let tdr = w.td.tdr;
    ok(w.m.host(h::MEM_RANGE_BLOCK, gpa_level(BAR_GPA, 1), tdr, 0, 0), "BLOCK the table above the BAR");
    cut(&mut w);
    ok(w.m.host(h::VP_KICK, w.td.vcpus[0], 0, 0, 0), "KICK");
    ok(w.m.host(h::MEM_TRACK, tdr, 0, 0, 0), "TRACK");
    ok(w.m.host(h::IQ_INV_REQUEST, tdr, 0, 0, 0), "IQ.INV");
    ok(w.m.host(h::MEM_RANGE_UNBLOCK, gpa_level(BAR_GPA, 1), tdr, 0, 0), "UNBLOCK the table");
    assert_eq!(sept_state(&mut w.m, tdr, BAR_GPA, 1), SeptState::NlMapped, "the table is live again");
    w.m.enter(w.td.vcpus[0]);
    w
}

#[test]
fn stop_under_a_blocked_table_still_blocks_every_mmio_leaf() {
    let mut w = block_above_then(|w| {
        let (tdi, msg) = (w.a.tdi, w.a.msg);
        ok(w.m.pump(&mut w.dev, h::TDI_STOP, tdi, msg, 0), "STOP");
    });
    assert_eq!(state(&w), TdiState::Unlocked);
    let tdr = w.td.tdr;
    for i in 0..u64::from(BAR0_PAGES) {
        assert_eq!(sept_state(&mut w.m, tdr, BAR_GPA + i * 4096, 0), SeptState::MmioBlocked, "page {i}");
    }
    // And nothing the host can do brings them back: a blocked MMIO leaf only goes to UNMAP.
    let t = [w.td.tdr, w.other.tdr];
    refused(&mut w.m, &t, Status::EPT_ENTRY_STATE_INCORRECT.with_operand(Operand::Rcx), |m| {
        m.host(h::MEM_RANGE_UNBLOCK, gpa_level(BAR_GPA, 0), tdr, 0, 0)
    });
    ok(w.m.host(h::MMIO_UNMAP, gpa_level(BAR_GPA, 0), tdr, 0, 0), "UNMAP");
}

#[test]
fn revoke_under_a_blocked_table_still_blocks_every_mmio_leaf() {
    let mut w = block_above_then(|w| {
        let tdi = w.a.tdi;
        let r = w.m.host(h::DMABUF_REVOKE, tdi, 0, 0, 0);
        ok(r, "REVOKE");
        assert_eq!(r.rcx, u64::from(BAR0_PAGES));
    });
    assert_cut_off(&mut w, "revoked under a blocked table");
}

// ---- defect 3: IDE key state reaches the TDI -------------------------------------------------

#[test]
fn km_stop_under_a_running_tdi_puts_it_in_error_with_mmio_and_dma_blocked() {
    let mut w = running();
    let (pdev, msg, stream) = (w.a.pdev, w.a.msg, w.a.stream);
    ok(w.m.pump(&mut w.dev, h::IDE_STREAM_KM, pdev, msg, stream | KM_STOP), "KM STOP");
    assert_cut_off(&mut w, "KM STOP");
    assert_eq!(w.m.tsm.tdi_summary(pfn(w.a.tdi)).unwrap().fault, Some(tsm::error::DeviceFault::StreamStopped));
    // The stream can be keyed again, but the TDI only leaves ERROR through STOP.
    ok(w.m.pump(&mut w.dev, h::IDE_STREAM_KM, pdev, msg, stream), "KM SETUP again");
    assert_eq!(state(&w), TdiState::Error);
}

#[test]
fn a_failed_km_refresh_puts_the_running_tdi_in_error_with_mmio_and_dma_blocked() {
    let mut w = running();
    let (pdev, msg, stream) = (w.a.pdev, w.a.msg, w.a.stream);
    w.dev.faults_mut().truncate = Some(Reply::IdeKm);
    let r = w.m.pump(&mut w.dev, h::IDE_STREAM_KM, pdev, msg, stream | KM_REFRESH);
    assert_eq!(r.status(), Status::DEVICE_ERROR.with_operand(Operand::IdeStream), "{r:x?}");
    assert_cut_off(&mut w, "failed KM REFRESH");
}

#[test]
fn a_failed_key_update_puts_the_running_tdi_in_error_with_mmio_and_dma_blocked() {
    let mut w = running();
    let (pdev, msg) = (w.a.pdev, w.a.msg);
    w.dev.faults_mut().truncate = Some(Reply::KeyUpdateAck);
    let r = w.m.pump(&mut w.dev, h::SPDM_MNG, pdev, msg, mng::KEY_UPDATE);
    assert_eq!(r.status(), Status::DEVICE_ERROR.with_operand(Operand::Pdev), "{r:x?}");
    assert_eq!(w.m.tsm.pdev_summary(pfn(pdev)).unwrap().state, tsm::pdev::PdevState::Error);
    assert_cut_off(&mut w, "failed KEY_UPDATE");
    // With no session left, STOP is local and the unbind goes on.
    let tdi = w.a.tdi;
    ok(w.m.host(h::TDI_STOP, tdi, msg, 0, 0), "STOP without a session");
    assert_eq!(state(&w), TdiState::Unlocked);
}

#[test]
fn a_successful_refresh_and_key_update_keep_the_tdi_running() {
    let mut w = running();
    let (pdev, msg, stream) = (w.a.pdev, w.a.msg, w.a.stream);
    ok(w.m.pump(&mut w.dev, h::IDE_STREAM_KM, pdev, msg, stream | KM_REFRESH), "KM REFRESH");
    ok(w.m.pump(&mut w.dev, h::SPDM_MNG, pdev, msg, mng::KEY_UPDATE), "KEY_UPDATE");
    assert_eq!(state(&w), TdiState::Run);
    assert!(dma(&w).is_ok());
}

// ---- defect 5: private MMIO must be device MMIO ------------------------------------------------

/// A connected device whose BAR0 the host programmed at `bar`, locked for the first TD.
fn locked_at(m: &mut Machine, td: &TdHandle, bar: u64) -> (Device, Assignment) {
    let mut config = device_config();
    let first = config.interfaces[0].mmio[0].first_page;
    for r in &mut config.interfaces[0].mmio {
        r.first_page = r.first_page - first + (bar >> 12);
    }
    let mut dev = Device::new(config).unwrap();
    let mut a = m.connect(&mut dev);
    m.ide_setup(&mut dev, &mut a);
    m.bind(td, &mut a);
    m.lock(&mut dev, &mut a);
    (dev, a)
}

fn import_bar0(m: &mut Machine, a: &Assignment) -> Regs {
    let s = m.tsm.tdi_summary(pfn(a.tdi)).unwrap();
    m.host(h::DMABUF_IMPORT, a.tdi, s.ranges[0].first << 12, s.ranges[0].pages, 0)
}

#[test]
fn host_ram_programmed_as_a_bar_is_not_imported_as_private_mmio() {
    let mut m = Machine::configured(64 * MIB);
    let td = m.running_td();
    // Host memory of the arena, outside the TDMR and the TSM: the host reads it at will.
    let ram = ARENA_BASE + MIB;
    let (_dev, a) = locked_at(&mut m, &td, ram);
    let t = [td.tdr];
    refused(&mut m, &t, Status::OPERAND_ADDR_RANGE_ERROR.with_operand(Operand::Rdx), |m| import_bar0(m, &a));
}

#[test]
fn mmio_outside_the_platforms_windows_is_not_imported() {
    let mut m = Machine::configured(64 * MIB);
    let td = m.running_td();
    let (_dev, a) = locked_at(&mut m, &td, 0x40_0000_0000);
    let t = [td.tdr];
    refused(&mut m, &t, Status::OPERAND_ADDR_RANGE_ERROR.with_operand(Operand::Rdx), |m| import_bar0(m, &a));
}

#[test]
fn ram_inside_a_window_the_platform_names_is_still_not_imported() {
    let mut m = Machine::new(64 * MIB);
    // A platform whose window wrongly spans its own RAM: the RAM check still holds.
    let everything = FrameRange { start: Pfn::new(0).unwrap(), count: 1 << 40 };
    m.tsm.platform_mut().set_mmio_windows(&[everything]);
    ok(m.sys_config(), "SYS.CONFIG");
    let td = m.running_td();
    let (_dev, a) = locked_at(&mut m, &td, ARENA_BASE + MIB);
    let t = [td.tdr];
    refused(&mut m, &t, Status::OPERAND_ADDR_RANGE_ERROR.with_operand(Operand::Rdx), |m| import_bar0(m, &a));
}

#[test]
fn device_mmio_inside_the_window_is_imported() {
    let mut m = Machine::configured(64 * MIB);
    let td = m.running_td();
    let (_dev, a) = locked_at(&mut m, &td, BAR_BASE);
    ok(import_bar0(&mut m, &a), "IMPORT of the device's BAR");
}

// ---- the PCI segment of the DMA key ----------------------------------------------------------

#[test]
fn a_tdi_on_another_segment_gets_no_dma_entry_aliased_onto_segment_0() {
    let mut m = Machine::configured(64 * MIB);
    let td = m.running_td();
    m.iommu_setup();
    // The same bus/device/function as the test device, on segment 1.
    let function = FN | 1 << 24 | 1 << 16;
    let mut config = device_config();
    config.interfaces[0].function_id = function as u32;
    let mut dev = Device::new(config).unwrap();
    let pdev = m.page();
    ok(m.host(h::SPDM_CREATE, pdev, function, 0, 0), "SPDM.CREATE on segment 1");
    let msg = m.scratch();
    ok(m.pump(&mut dev, h::SPDM_CONNECT, pdev, msg, 0), "SPDM.CONNECT");
    let mut a =
        Assignment { pdev, msg, stream: 0, tdi: 0, generation: 0, report: Vec::new(), spdm: Default::default() };
    m.ide_setup(&mut dev, &mut a);
    a.tdi = m.page();
    ok(m.host(h::TDI_CREATE, td.tdr, pdev, a.tdi, function), "TDI.CREATE on segment 1");
    m.lock(&mut dev, &mut a);
    let t = [td.tdr];
    let before = snapshot(&m, &t);
    let r = m.dmar_add(&td, &a);
    assert_eq!(r.status(), Status::OPERAND_INVALID.with_operand(Operand::Tdi), "{r:x?}");
    assert!(before == snapshot(&m, &t), "a refused DMAR.ADD changed the machine");
    let iommu = m.tsm.iommu().unwrap();
    assert!(iommu.bindings().next().is_none(), "no entry under the segment-0 RID");
}
