//! The malicious host against device assignment: each attack with its exact status, and the
//! machine unchanged afterwards (memory writes, every TD, every PDEV and TDI, sessions and their
//! sequence numbers included). Where the rule is a state transition (a revoke), the test checks
//! the transition and what stays refused.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use seamless_harness::assign::{device_config, pfn, Assignment, BAR_BASE, BAR_GPA, FUNCTION, LOCK_FLAGS};
use seamless_harness::driver::{gpa_level, ok, Machine, TdHandle};
use seamless_harness::unchanged::{guest_refused, refused};
use tdisp_device::Device;
use tsm::abi::guest::leaf as g;
use tsm::abi::host::leaf as h;
use tsm::abi::host_pdev::mng;
use tsm::sept::SeptState;
use tsm::tdi::TdiState;
use tsm::{GuestReturn, Operand, Regs, Status, TdExit};

const MIB: u64 = 1 << 20;
const FN: u64 = FUNCTION as u64;

fn accept(m: &mut Machine, td: &TdHandle, gpa: u64, level: u8, range: u64, function: u64, offset: u64) -> GuestReturn {
    let call = Regs { r9: offset, ..Regs::call(g::MMIO_ACCEPT, gpa_level(gpa, level), range, function, 0) };
    m.tsm.guest_call(td.vcpus[0], &call)
}

struct World {
    m: Machine,
    td: TdHandle,
    other: TdHandle,
    dev: Device,
    a: Assignment,
}

impl World {
    fn tdrs(&self) -> [u64; 2] {
        [self.td.tdr, self.other.tdr]
    }
}

/// Two running TDs and a connected device with a secure stream; nothing bound yet.
fn connected() -> World {
    let mut m = Machine::configured(64 * MIB);
    let td = m.running_td();
    let other = m.running_td();
    let mut dev = Device::new(device_config()).unwrap();
    let mut a = m.connect(&mut dev);
    m.ide_setup(&mut dev, &mut a);
    World { m, td, other, dev, a }
}

/// A TDI bound to the first TD and locked; its ranges imported.
fn locked() -> World {
    let mut w = connected();
    w.m.bind(&w.td, &mut w.a);
    w.m.lock(&mut w.dev, &mut w.a);
    w.m.import_all(&w.a);
    w
}

/// A running TDI with BAR0 mapped and accepted at BAR_GPA.
fn running() -> World {
    let mut m = Machine::configured(64 * MIB);
    let td = m.running_td();
    let other = m.running_td();
    let mut dev = Device::new(device_config()).unwrap();
    let a = m.assign(&mut dev, &td);
    World { m, td, other, dev, a }
}

fn state(w: &World) -> TdiState {
    w.m.tsm.tdi_summary(pfn(w.a.tdi)).unwrap().state
}

// ---- PDEV and the message protocol ----------------------------------------------------------

#[test]
fn a_pdev_needs_a_free_page_and_its_own_function() {
    let mut w = connected();
    let t = w.tdrs();
    let tdr = w.td.tdr;
    let r = refused(&mut w.m, &t, Status::PAGE_NOT_FREE.with_operand(Operand::Rcx), |m| {
        m.host(h::SPDM_CREATE, tdr, 0x20, 0, 0)
    });
    assert!(r.status().is_error());
    let page = w.m.page();
    refused(&mut w.m, &t, Status::FUNCTION_IN_USE.with_operand(Operand::Rdx), |m| {
        m.host(h::SPDM_CREATE, page, FN, 0, 0)
    });
    refused(&mut w.m, &t, Status::OPERAND_INVALID.with_operand(Operand::Rdx), |m| {
        m.host(h::SPDM_CREATE, page, 1 << 25, 0, 0)
    });
}

#[test]
fn an_answer_with_no_request_outstanding_is_refused() {
    let mut w = connected();
    let t = w.tdrs();
    let (pdev, msg) = (w.a.pdev, w.a.msg);
    refused(&mut w.m, &t, Status::NO_REQUEST_OUTSTANDING.with_operand(Operand::R8), |m| {
        m.host(h::SPDM_DISCONNECT, pdev, msg, 64, 0)
    });
    // An answer handed to a TDI that has nothing outstanding.
    w.m.bind(&w.td, &mut w.a);
    let tdi = w.a.tdi;
    refused(&mut w.m, &t, Status::NO_REQUEST_OUTSTANDING.with_operand(Operand::R8), |m| {
        m.host(h::TDI_START, tdi, msg, 20, 0)
    });
}

#[test]
fn the_message_page_must_be_host_memory_and_the_answer_fit_it() {
    let mut w = connected();
    let t = w.tdrs();
    let (pdev, tdr) = (w.a.pdev, w.td.tdr);
    refused(&mut w.m, &t, Status::PAGE_METADATA_INCORRECT.with_operand(Operand::Rdx), |m| {
        m.host(h::SPDM_DISCONNECT, pdev, tdr, 0, 0)
    });
    let private = seamless_harness::driver::PRIVATE_BASE;
    refused(&mut w.m, &t, Status::OPERAND_ADDR_RANGE_ERROR.with_operand(Operand::Rdx), |m| {
        m.host(h::SPDM_DISCONNECT, pdev, private, 0, 0)
    });
    let msg = w.a.msg;
    refused(&mut w.m, &t, Status::OPERAND_INVALID.with_operand(Operand::R8), |m| {
        m.host(h::SPDM_DISCONNECT, pdev, msg, 4097, 0)
    });
}

#[test]
fn a_connected_pdev_cannot_connect_again() {
    let mut w = connected();
    let t = w.tdrs();
    let (pdev, msg) = (w.a.pdev, w.a.msg);
    refused(&mut w.m, &t, Status::PDEV_STATE_INCORRECT.with_operand(Operand::Pdev), |m| {
        m.host(h::SPDM_CONNECT, pdev, msg, 0, 0)
    });
}

#[test]
fn one_request_per_device_other_calls_are_busy() {
    let mut m = Machine::configured(64 * MIB);
    let t = [m.running_td().tdr];
    let pdev = m.page();
    ok(m.host(h::SPDM_CREATE, pdev, FN, 0, 0), "SPDM.CREATE");
    let msg = m.scratch();
    let r = m.host(h::SPDM_CONNECT, pdev, msg, 0, 0);
    assert_eq!(r.status(), Status::DEVICE_REQUEST);
    let busy = Status::OPERAND_BUSY.with_operand(Operand::Pdev);
    refused(&mut m, &t, busy, |m| m.host(h::SPDM_DISCONNECT, pdev, msg, 0, 0));
    refused(&mut m, &t, busy, |m| m.host(h::IDE_STREAM_KM, pdev, msg, 0, 0));
    refused(&mut m, &t, busy, |m| m.host(h::SPDM_DELETE, pdev, 0, 0, 0));
    // Calling CONNECT again without the answer is busy too: the request is still out there.
    refused(&mut m, &t, busy, |m| m.host(h::SPDM_CONNECT, pdev, msg, 0, 0));
    // The host gives up: the PDEV cannot be trusted to be in step any more.
    ok(m.host(h::SPDM_MNG, pdev, 0, 0, mng::ABORT), "ABORT");
    assert_eq!(m.tsm.pdev_summary(pfn(pdev)).unwrap().state, tsm::pdev::PdevState::Error);
    refused(&mut m, &t, Status::NO_REQUEST_OUTSTANDING.with_operand(Operand::R8), |m| {
        m.host(h::SPDM_MNG, pdev, 0, 0, mng::ABORT)
    });
    ok(m.host(h::SPDM_DELETE, pdev, 0, 0, 0), "DELETE after ERROR");
}

#[test]
fn a_lock_in_flight_makes_every_other_device_call_busy() {
    let mut w = connected();
    w.m.bind(&w.td, &mut w.a);
    let t = w.tdrs();
    let (tdi, msg, pdev, stream) = (w.a.tdi, w.a.msg, w.a.pdev, w.a.stream);
    let r = w.m.host(h::TDI_LOCK, tdi, msg, 0, LOCK_FLAGS | stream << 16);
    assert_eq!(r.status(), Status::DEVICE_REQUEST);
    let answer = w.dev.handle(&w.m.read(msg, r.r8 as usize)).unwrap();
    w.m.write(msg, &answer);
    let n = answer.len() as u64;
    // The answer belongs to LOCK: START and STOP may not consume it.
    refused(&mut w.m, &t, Status::OPERAND_BUSY.with_operand(Operand::Tdi), |m| m.host(h::TDI_START, tdi, msg, n, 0));
    refused(&mut w.m, &t, Status::OPERAND_BUSY.with_operand(Operand::Tdi), |m| m.host(h::TDI_STOP, tdi, msg, n, 0));
    refused(&mut w.m, &t, Status::OPERAND_BUSY.with_operand(Operand::Pdev), |m| {
        m.host(h::IDE_STREAM_KM, pdev, msg, n, stream | 1 << 8)
    });
    refused(&mut w.m, &t, Status::OPERAND_BUSY.with_operand(Operand::Tdi), |m| m.host(h::TDI_REMOVE, tdi, 0, 0, 0));
    // LOCK itself goes on.
    let r = w.m.host(h::TDI_LOCK, tdi, msg, n, 0);
    assert_eq!(r.status(), Status::DEVICE_REQUEST);
}

// ---- TDI ------------------------------------------------------------------------------------

#[test]
fn a_tdi_needs_a_connected_pdev_and_a_function_of_its_own() {
    let mut m = Machine::configured(64 * MIB);
    let td = m.running_td();
    let t = [td.tdr];
    let pdev = m.page();
    ok(m.host(h::SPDM_CREATE, pdev, FN, 0, 0), "SPDM.CREATE");
    let page = m.page();
    refused(&mut m, &t, Status::PDEV_STATE_INCORRECT.with_operand(Operand::Pdev), |m| {
        m.host(h::TDI_CREATE, td.tdr, pdev, page, FN)
    });
    let mut w = connected();
    let t = w.tdrs();
    let (tdr, pdev) = (w.td.tdr, w.a.pdev);
    let page = w.m.page();
    refused(&mut w.m, &t, Status::OPERAND_INVALID.with_operand(Operand::R9), |m| {
        m.host(h::TDI_CREATE, tdr, pdev, page, FN | 0x01_0000)
    });
    w.m.bind(&w.td, &mut w.a);
    let (other, page) = (w.other.tdr, w.m.page());
    refused(&mut w.m, &t, Status::FUNCTION_IN_USE.with_operand(Operand::R9), |m| {
        m.host(h::TDI_CREATE, other, pdev, page, FN)
    });
}

#[test]
fn lock_needs_live_ide_keys_and_known_flags() {
    let mut w = connected();
    w.m.bind(&w.td, &mut w.a);
    let t = w.tdrs();
    let (tdi, msg, pdev, stream) = (w.a.tdi, w.a.msg, w.a.pdev, w.a.stream);
    refused(&mut w.m, &t, Status::OPERAND_INVALID.with_operand(Operand::R9), |m| {
        m.host(h::TDI_LOCK, tdi, msg, 0, 0x8 | stream << 16)
    });
    refused(&mut w.m, &t, Status::OPERAND_INVALID.with_operand(Operand::R9), |m| {
        m.host(h::TDI_LOCK, tdi, msg, 0, 0x20 | stream << 16)
    });
    refused(&mut w.m, &t, Status::OPERAND_INVALID.with_operand(Operand::R9), |m| {
        m.host(h::TDI_LOCK, tdi, msg, 0, 1 << 17)
    });
    ok(w.m.pump(&mut w.dev, h::IDE_STREAM_KM, pdev, msg, stream | 2 << 8), "KM STOP");
    refused(&mut w.m, &t, Status::IDE_STREAM_STATE_INCORRECT.with_operand(Operand::IdeStream), |m| {
        m.host(h::TDI_LOCK, tdi, msg, 0, LOCK_FLAGS | stream << 16)
    });
}

#[test]
fn start_needs_the_guests_authorisation_for_this_lock() {
    let mut w = locked();
    let t = w.tdrs();
    let (tdi, msg) = (w.a.tdi, w.a.msg);
    refused(&mut w.m, &t, Status::TDI_NOT_AUTHORISED.with_operand(Operand::Tdi), |m| {
        m.host(h::TDI_START, tdi, msg, 0, 0)
    });
    // Authorise lock 1, then the host re-locks behind the guest's back.
    w.m.authorise(&w.td, &w.a);
    ok(w.m.pump(&mut w.dev, h::TDI_STOP, tdi, msg, 0), "STOP");
    w.m.lock(&mut w.dev, &mut w.a);
    assert_eq!(w.a.generation, 2);
    refused(&mut w.m, &t, Status::TDI_NOT_AUTHORISED.with_operand(Operand::Tdi), |m| {
        m.host(h::TDI_START, tdi, msg, 0, 0)
    });
    let vcpu = w.td.vcpus[0];
    guest_refused(&mut w.m, &t, Status::TDI_AUTHORISATION_STALE.with_operand(Operand::Tdi), |m| {
        m.guest(vcpu, g::TDI_START, FN, 1, 0)
    });
    // A stale authorisation kept across the re-lock does not start it either.
    w.m.authorise(&w.td, &w.a);
    ok(w.m.pump(&mut w.dev, h::TDI_START, tdi, msg, 0), "START with the fresh authorisation");
    assert_eq!(state(&w), TdiState::Run);
}

#[test]
fn a_stale_authorisation_surviving_a_relock_is_refused() {
    let mut w = locked();
    let t = w.tdrs();
    let (tdi, msg) = (w.a.tdi, w.a.msg);
    w.m.authorise(&w.td, &w.a);
    ok(w.m.pump(&mut w.dev, h::TDI_STOP, tdi, msg, 0), "STOP");
    w.m.lock(&mut w.dev, &mut w.a);
    // The TSM dropped the authorisation at STOP and at LOCK.
    assert_eq!(w.m.tsm.tdi_summary(pfn(tdi)).unwrap().authorised, None);
    refused(&mut w.m, &t, Status::TDI_NOT_AUTHORISED.with_operand(Operand::Tdi), |m| {
        m.host(h::TDI_START, tdi, msg, 0, 0)
    });
}

#[test]
fn a_replayed_device_answer_does_not_open_and_changes_nothing() {
    let mut w = locked();
    w.m.authorise(&w.td, &w.a);
    let t = w.tdrs();
    let (tdi, msg) = (w.a.tdi, w.a.msg);
    // Record a genuine answer of the session (GET_STATE through a STOP/LOCK would be simplest;
    // START's own first answer is taken here) and replay it for the second step.
    let r = w.m.host(h::TDI_START, tdi, msg, 0, 0);
    assert_eq!(r.status(), Status::DEVICE_REQUEST);
    let first = w.dev.handle(&w.m.read(msg, r.r8 as usize)).unwrap();
    w.m.write(msg, &first);
    let r = w.m.host(h::TDI_START, tdi, msg, first.len() as u64, 0);
    assert_eq!(r.status(), Status::DEVICE_REQUEST, "START acknowledged; GET_STATE next");
    let second_request = w.m.read(msg, r.r8 as usize);
    w.m.write(msg, &first);
    let n = first.len() as u64;
    refused(&mut w.m, &t, Status::ANSWER_NOT_AUTHENTIC.with_operand(Operand::R8), |m| {
        m.host(h::TDI_START, tdi, msg, n, 0)
    });
    // A forged answer (one bit flipped in the real one) neither.
    let mut real = w.dev.handle(&second_request).unwrap();
    let last = 16; // inside the encrypted application data
    real[last] ^= 1;
    w.m.write(msg, &real);
    let n = real.len() as u64;
    refused(&mut w.m, &t, Status::ANSWER_NOT_AUTHENTIC.with_operand(Operand::R8), |m| {
        m.host(h::TDI_START, tdi, msg, n, 0)
    });
    real[last] ^= 1;
    w.m.write(msg, &real);
    ok(w.m.host(h::TDI_START, tdi, msg, n, 0), "the real answer still completes START");
    assert_eq!(state(&w), TdiState::Run);
}

#[test]
fn remove_is_refused_while_locked_running_or_mapped() {
    let mut w = running();
    let t = w.tdrs();
    let (tdi, msg) = (w.a.tdi, w.a.msg);
    refused(&mut w.m, &t, Status::TDI_STATE_INCORRECT.with_operand(Operand::Tdi), |m| {
        m.host(h::TDI_REMOVE, tdi, 0, 0, 0)
    });
    ok(w.m.pump(&mut w.dev, h::TDI_STOP, tdi, msg, 0), "STOP");
    refused(&mut w.m, &t, Status::TDI_HAS_MAPPED_MMIO.with_operand(Operand::Tdi), |m| {
        m.host(h::TDI_REMOVE, tdi, 0, 0, 0)
    });
    let page = tdi;
    refused(&mut w.m, &t, Status::PAGE_METADATA_INCORRECT.with_operand(Operand::Rcx), |m| {
        m.host(h::PHYMEM_PAGE_RECLAIM, page, 0, 0, 0)
    });
}

#[test]
fn a_td_with_a_tdi_bound_cannot_be_torn_down() {
    let mut w = locked();
    let t = w.tdrs();
    let tdr = w.td.tdr;
    ok(w.m.host(h::VP_KICK, w.td.vcpus[0], 0, 0, 0), "KICK");
    refused(&mut w.m, &t, Status::TD_HAS_ATTACHED_DEVICES.with_operand(Operand::Tdr), |m| {
        m.host(h::MNG_VPFLUSHDONE, tdr, 0, 0, 0)
    });
}

// ---- dma-buf import -------------------------------------------------------------------------

#[test]
fn import_takes_exactly_the_reported_frames_once_and_only_when_locked() {
    let mut w = connected();
    w.m.bind(&w.td, &mut w.a);
    let t = w.tdrs();
    let tdi = w.a.tdi;
    refused(&mut w.m, &t, Status::TDI_STATE_INCORRECT.with_operand(Operand::Tdi), |m| {
        m.host(h::DMABUF_IMPORT, tdi, BAR_BASE, 16, 0)
    });
    w.m.lock(&mut w.dev, &mut w.a);
    let not_in_report = |op| Status::MMIO_NOT_IN_REPORT.with_operand(op);
    refused(&mut w.m, &t, not_in_report(Operand::Rdx), |m| m.host(h::DMABUF_IMPORT, tdi, BAR_BASE + 4096, 16, 0));
    refused(&mut w.m, &t, not_in_report(Operand::Rdx), |m| m.host(h::DMABUF_IMPORT, tdi, BAR_BASE, 15, 0));
    refused(&mut w.m, &t, not_in_report(Operand::Rdx), |m| m.host(h::DMABUF_IMPORT, tdi, BAR_BASE, 17, 0));
    refused(&mut w.m, &t, not_in_report(Operand::R9), |m| m.host(h::DMABUF_IMPORT, tdi, BAR_BASE, 16, 3));
    refused(&mut w.m, &t, Status::OPERAND_INVALID.with_operand(Operand::Rdx), |m| {
        m.host(h::DMABUF_IMPORT, tdi, BAR_BASE + 8, 16, 0)
    });
    ok(w.m.host(h::DMABUF_IMPORT, tdi, BAR_BASE, 16, 0), "IMPORT");
    refused(&mut w.m, &t, Status::PAGE_NOT_FREE.with_operand(Operand::Rdx), |m| {
        m.host(h::DMABUF_IMPORT, tdi, BAR_BASE, 16, 0)
    });
}

// ---- MMIO.MAP -------------------------------------------------------------------------------

#[test]
fn mmio_is_mapped_only_from_imported_reported_frames_into_the_bound_td() {
    let mut w = connected();
    w.m.bind(&w.td, &mut w.a);
    let t = w.tdrs();
    let (tdr, other) = (w.td.tdr, w.other.tdr);
    w.m.map_tables(&w.td, BAR_GPA, 0);
    w.m.map_tables(&w.other, BAR_GPA, 0);
    let not_in_report = Status::MMIO_NOT_IN_REPORT.with_operand(Operand::R8);
    refused(&mut w.m, &t, not_in_report, |m| m.host(h::MMIO_MAP, gpa_level(BAR_GPA, 0), tdr, BAR_BASE, 0));
    w.m.lock(&mut w.dev, &mut w.a);
    refused(&mut w.m, &t, not_in_report, |m| m.host(h::MMIO_MAP, gpa_level(BAR_GPA, 0), tdr, BAR_BASE, 0));
    w.m.import_all(&w.a);
    refused(&mut w.m, &t, Status::MMIO_OWNER_MISMATCH.with_operand(Operand::R8), |m| {
        m.host(h::MMIO_MAP, gpa_level(BAR_GPA, 0), other, BAR_BASE, 0)
    });
    refused(&mut w.m, &t, not_in_report, |m| m.host(h::MMIO_MAP, gpa_level(BAR_GPA, 0), tdr, BAR_BASE + 16 * 4096, 0));
    refused(&mut w.m, &t, Status::OPERAND_INVALID.with_operand(Operand::Rcx), |m| {
        m.host(h::MMIO_MAP, gpa_level(1 << 47, 0), tdr, BAR_BASE, 0)
    });
    refused(&mut w.m, &t, Status::OPERAND_INVALID.with_operand(Operand::R8), |m| {
        m.host(h::MMIO_MAP, gpa_level(BAR_GPA, 0), tdr, BAR_BASE + 1, 0)
    });
    // A 2M mapping would reach past the 16-page range.
    refused(&mut w.m, &t, not_in_report, |m| m.host(h::MMIO_MAP, gpa_level(0x4020_0000, 1), tdr, BAR_BASE, 0));
    ok(w.m.host(h::MMIO_MAP, gpa_level(BAR_GPA, 0), tdr, BAR_BASE, 0), "MAP page 0");
    // Page 1 must sit right after page 0: no aliasing, no reordering.
    refused(&mut w.m, &t, Status::MMIO_GPA_MISMATCH.with_operand(Operand::Rcx), |m| {
        m.host(h::MMIO_MAP, gpa_level(BAR_GPA + 2 * 4096, 0), tdr, BAR_BASE + 4096, 0)
    });
    // The same frame again at another GPA.
    refused(&mut w.m, &t, Status::MMIO_GPA_MISMATCH.with_operand(Operand::Rcx), |m| {
        m.host(h::MMIO_MAP, gpa_level(BAR_GPA + 4096, 0), tdr, BAR_BASE, 0)
    });
}

#[test]
fn mmio_map_refuses_an_occupied_entry() {
    let mut w = locked();
    let t = w.tdrs();
    let tdr = w.td.tdr;
    // Place the range so that its page 1 falls on a private page the guest accepted.
    w.m.aug_accept(&w.td, 0x5000, tsm::addr::PageSize::Size4K);
    w.m.map_tables(&w.td, 0x4000, 0);
    ok(w.m.host(h::MMIO_MAP, gpa_level(0x4000, 0), tdr, BAR_BASE, 0), "MAP page 0 at 0x4000");
    let r = refused(&mut w.m, &t, Status::EPT_ENTRY_NOT_FREE.with_operand(Operand::Rcx), |m| {
        m.host(h::MMIO_MAP, gpa_level(0x5000, 0), tdr, BAR_BASE + 4096, 0)
    });
    assert_eq!((r.rdx >> 8) as u8, SeptState::Mapped as u8, "the entry found is returned");
}

#[test]
fn memory_leaves_refuse_mmio_entries() {
    let mut w = running();
    let t = w.tdrs();
    let tdr = w.td.tdr;
    refused(&mut w.m, &t, Status::EPT_ENTRY_STATE_INCORRECT.with_operand(Operand::Rcx), |m| {
        m.host(h::MEM_RANGE_BLOCK, gpa_level(BAR_GPA, 0), tdr, 0, 0)
    });
    refused(&mut w.m, &t, Status::EPT_ENTRY_STATE_INCORRECT.with_operand(Operand::Rcx), |m| {
        m.host(h::MEM_PAGE_REMOVE, gpa_level(BAR_GPA, 0), tdr, 0, 0)
    });
    // And MMIO leaves refuse memory entries.
    w.m.aug_accept(&w.td, 0x3000, tsm::addr::PageSize::Size4K);
    refused(&mut w.m, &t, Status::EPT_ENTRY_STATE_INCORRECT.with_operand(Operand::Rcx), |m| {
        m.host(h::MMIO_BLOCK, gpa_level(0x3000, 0), tdr, 0, 0)
    });
}

// ---- guest accept ---------------------------------------------------------------------------

#[test]
fn the_guest_accepts_only_the_page_the_report_puts_there() {
    let mut w = locked();
    let t = w.tdrs();
    let td = w.td.clone();
    w.m.map_range(&td, &w.a, 0, BAR_GPA);
    let offset = Status::MMIO_INVALID_HPA_OFFSET.with_operand(Operand::R9);
    guest_refused(&mut w.m, &t, offset, |m| accept(m, &td, BAR_GPA, 0, 0, FN, 4096));
    guest_refused(&mut w.m, &t, Status::MMIO_OUT_OF_RANGE.with_operand(Operand::Rdx), |m| {
        accept(m, &td, BAR_GPA, 0, 3, FN, 0)
    });
    guest_refused(&mut w.m, &t, Status::MMIO_OUT_OF_RANGE.with_operand(Operand::R9), |m| {
        accept(m, &td, BAR_GPA, 0, 0, FN, 16 * 4096)
    });
    guest_refused(&mut w.m, &t, Status::MMIO_OUT_OF_RANGE.with_operand(Operand::R9), |m| {
        accept(m, &td, BAR_GPA, 0, 0, FN, 100)
    });
    // The MSI-X range (index 1) is another range: page 0 of BAR0 is not its page 0.
    guest_refused(&mut w.m, &t, offset, |m| accept(m, &td, BAR_GPA, 0, 1, FN, 0));
    // A 2M page at offset 0 would run past the 16-page range.
    guest_refused(&mut w.m, &t, Status::MMIO_OUT_OF_RANGE.with_operand(Operand::R9), |m| {
        accept(m, &td, BAR_GPA, 1, 0, FN, 0)
    });
    guest_refused(&mut w.m, &t, Status::TDI_NOT_PRESENT.with_operand(Operand::R8), |m| {
        accept(m, &td, BAR_GPA, 0, 0, FN + 1, 0)
    });
    let other = w.other.clone();
    guest_refused(&mut w.m, &t, Status::TDI_NOT_PRESENT.with_operand(Operand::R8), |m| {
        accept(m, &other, BAR_GPA, 0, 0, FN, 0)
    });
    // Private memory is not MMIO.
    w.m.aug_accept(&td, 0x6000, tsm::addr::PageSize::Size4K);
    guest_refused(&mut w.m, &t, Status::EPT_ENTRY_STATE_INCORRECT.with_operand(Operand::Rcx), |m| {
        accept(m, &td, 0x6000, 0, 0, FN, 0)
    });
    // Right page: accepted; again: a warning, nothing changed.
    assert_eq!(accept(&mut w.m, &td, BAR_GPA, 0, 0, FN, 0).regs.status(), Status::SUCCESS);
    guest_refused(&mut w.m, &t, Status::PAGE_ALREADY_ACCEPTED, |m| accept(m, &td, BAR_GPA, 0, 0, FN, 0));
}

#[test]
fn accepting_where_nothing_is_mapped_exits_to_the_host() {
    let mut w = locked();
    let td = w.td.clone();
    w.m.map_tables(&td, BAR_GPA, 0);
    let r = accept(&mut w.m, &td, BAR_GPA, 0, 0, FN, 0);
    assert_eq!(r.regs.status(), Status::SUCCESS);
    assert!(matches!(r.exit, Some(TdExit::EptViolation { level: 0, entry: 0, .. })), "{r:x?}");
}

// ---- unmap ----------------------------------------------------------------------------------

#[test]
fn unmap_needs_block_tracking_and_a_stopped_tdi() {
    let mut w = running();
    let t = w.tdrs();
    let (tdr, tdi, msg) = (w.td.tdr, w.a.tdi, w.a.msg);
    refused(&mut w.m, &t, Status::GPA_RANGE_NOT_BLOCKED.with_operand(Operand::Rcx), |m| {
        m.host(h::MMIO_UNMAP, gpa_level(BAR_GPA, 0), tdr, 0, 0)
    });
    ok(w.m.host(h::MMIO_BLOCK, gpa_level(BAR_GPA, 0), tdr, 0, 0), "BLOCK");
    refused(&mut w.m, &t, Status::GPA_RANGE_ALREADY_BLOCKED, |m| {
        m.host(h::MMIO_BLOCK, gpa_level(BAR_GPA, 0), tdr, 0, 0)
    });
    refused(&mut w.m, &t, Status::TDI_STATE_INCORRECT.with_operand(Operand::Tdi), |m| {
        m.host(h::MMIO_UNMAP, gpa_level(BAR_GPA, 0), tdr, 0, 0)
    });
    ok(w.m.pump(&mut w.dev, h::TDI_STOP, tdi, msg, 0), "STOP");
    refused(&mut w.m, &t, Status::TLB_TRACKING_NOT_DONE.with_operand(Operand::Rcx), |m| {
        m.host(h::MMIO_UNMAP, gpa_level(BAR_GPA, 0), tdr, 0, 0)
    });
    ok(w.m.host(h::MEM_TRACK, tdr, 0, 0, 0), "TRACK");
    // The vCPU entered in the block's epoch and is still in guest mode.
    refused(&mut w.m, &t, Status::TLB_TRACKING_NOT_DONE.with_operand(Operand::Rcx), |m| {
        m.host(h::MMIO_UNMAP, gpa_level(BAR_GPA, 0), tdr, 0, 0)
    });
    ok(w.m.host(h::VP_KICK, w.td.vcpus[0], 0, 0, 0), "KICK");
    let r = w.m.host(h::MMIO_UNMAP, gpa_level(BAR_GPA, 0), tdr, 0, 0);
    ok(r, "UNMAP");
    assert_eq!(r.r8, BAR_BASE);
}

// ---- revoke ---------------------------------------------------------------------------------

#[test]
fn a_revoke_while_running_is_terminal_and_frees_nothing_before_stop_and_tracking() {
    let mut w = running();
    let t = w.tdrs();
    let (tdr, tdi, msg) = (w.td.tdr, w.a.tdi, w.a.msg);
    let r = w.m.host(h::DMABUF_REVOKE, tdi, 0, 0, 0);
    ok(r, "REVOKE");
    assert_eq!(r.rcx, 16, "16 pages were mapped; all are blocked now");
    assert_eq!(state(&w), TdiState::Error);
    for i in 0..16 {
        let rd = w.m.host(h::MEM_SEPT_RD, gpa_level(BAR_GPA + i * 4096, 0), tdr, 0, 0);
        assert_eq!((rd.rdx >> 8) as u8, SeptState::MmioBlocked as u8, "page {i} blocked");
    }
    let vcpu = w.td.vcpus[0];
    assert_eq!(w.m.guest(vcpu, g::TDI_RD, FN, 0, 0).regs.r9, 3, "the guest sees ERROR");
    // Nothing can be mapped again from the revoked range, nor accepted.
    let td = w.td.clone();
    w.m.map_tables(&td, 0x8000_0000, 0);
    refused(&mut w.m, &t, Status::TDI_STATE_INCORRECT.with_operand(Operand::Tdi), |m| {
        m.host(h::MMIO_MAP, gpa_level(0x8000_0000, 0), tdr, BAR_BASE, 0)
    });
    guest_refused(&mut w.m, &t, Status::TDI_STATE_INCORRECT.with_operand(Operand::Tdi), |m| {
        accept(m, &td, BAR_GPA, 0, 0, FN, 0)
    });
    // The frames are not released while the TDI is not stopped, nor before tracking.
    refused(&mut w.m, &t, Status::TDI_STATE_INCORRECT.with_operand(Operand::Tdi), |m| {
        m.host(h::MMIO_UNMAP, gpa_level(BAR_GPA, 0), tdr, 0, 0)
    });
    refused(&mut w.m, &t, Status::TDI_STATE_INCORRECT.with_operand(Operand::Tdi), |m| {
        m.host(h::TDI_REMOVE, tdi, 0, 0, 0)
    });
    ok(w.m.pump(&mut w.dev, h::TDI_STOP, tdi, msg, 0), "STOP from ERROR");
    refused(&mut w.m, &t, Status::TLB_TRACKING_NOT_DONE.with_operand(Operand::Rcx), |m| {
        m.host(h::MMIO_UNMAP, gpa_level(BAR_GPA, 0), tdr, 0, 0)
    });
    ok(w.m.host(h::VP_KICK, vcpu, 0, 0, 0), "KICK");
    ok(w.m.host(h::MEM_TRACK, tdr, 0, 0, 0), "TRACK");
    for i in 0..16 {
        ok(w.m.host(h::MMIO_UNMAP, gpa_level(BAR_GPA + i * 4096, 0), tdr, 0, 0), "UNMAP");
    }
    ok(w.m.host(h::TDI_REMOVE, tdi, 0, 0, 0), "REMOVE");
}

// ---- streams and the PDEV's end ---------------------------------------------------------------

#[test]
fn streams_and_pdevs_go_away_only_in_order() {
    let mut w = locked();
    let t = w.tdrs();
    let (pdev, msg, stream, tdi) = (w.a.pdev, w.a.msg, w.a.stream, w.a.tdi);
    refused(&mut w.m, &t, Status::TDI_STATE_INCORRECT.with_operand(Operand::Tdi), |m| {
        m.host(h::SPDM_DISCONNECT, pdev, msg, 0, 0)
    });
    refused(&mut w.m, &t, Status::IDE_STREAM_STATE_INCORRECT.with_operand(Operand::IdeStream), |m| {
        m.host(h::IDE_STREAM_DELETE, pdev, stream, 0, 0)
    });
    refused(&mut w.m, &t, Status::PDEV_STATE_INCORRECT.with_operand(Operand::Pdev), |m| {
        m.host(h::SPDM_DELETE, pdev, 0, 0, 0)
    });
    ok(w.m.pump(&mut w.dev, h::TDI_STOP, tdi, msg, 0), "STOP");
    refused(&mut w.m, &t, Status::IDE_STREAM_STATE_INCORRECT.with_operand(Operand::IdeStream), |m| {
        m.host(h::SPDM_DISCONNECT, pdev, msg, 0, 0)
    });
    ok(w.m.pump(&mut w.dev, h::IDE_STREAM_KM, pdev, msg, stream | 2 << 8), "KM STOP");
    ok(w.m.pump(&mut w.dev, h::SPDM_DISCONNECT, pdev, msg, 0), "DISCONNECT");
    refused(&mut w.m, &t, Status::PDEV_HAS_IDE_STREAMS.with_operand(Operand::Pdev), |m| {
        m.host(h::SPDM_DELETE, pdev, 0, 0, 0)
    });
    ok(w.m.host(h::IDE_STREAM_BLOCK, pdev, stream, 0, 0), "BLOCK");
    ok(w.m.host(h::IDE_STREAM_DELETE, pdev, stream, 0, 0), "DELETE stream");
    refused(&mut w.m, &t, Status::PDEV_HAS_TDIS.with_operand(Operand::Pdev), |m| m.host(h::SPDM_DELETE, pdev, 0, 0, 0));
    ok(w.m.host(h::TDI_REMOVE, tdi, 0, 0, 0), "REMOVE");
    ok(w.m.host(h::SPDM_DELETE, pdev, 0, 0, 0), "SPDM.DELETE");
}

#[test]
fn blocking_the_stream_under_a_running_tdi_puts_it_in_error_and_blocks_its_mmio() {
    let mut w = running();
    let (pdev, stream, tdr) = (w.a.pdev, w.a.stream, w.td.tdr);
    ok(w.m.host(h::IDE_STREAM_BLOCK, pdev, stream, 0, 0), "BLOCK");
    assert_eq!(state(&w), TdiState::Error);
    let rd = w.m.host(h::MEM_SEPT_RD, gpa_level(BAR_GPA, 0), tdr, 0, 0);
    assert_eq!((rd.rdx >> 8) as u8, SeptState::MmioBlocked as u8);
}

#[test]
fn guest_reads_name_a_tdi_of_its_own_td() {
    let mut w = locked();
    let t = w.tdrs();
    let (mine, other) = (w.td.vcpus[0], w.other.vcpus[0]);
    guest_refused(&mut w.m, &t, Status::TDI_NOT_PRESENT.with_operand(Operand::Rcx), |m| {
        m.guest(other, g::TDI_RD, FN, 0, 0)
    });
    guest_refused(&mut w.m, &t, Status::OPERAND_INVALID.with_operand(Operand::Rdx), |m| {
        m.guest(mine, g::TDI_RD, FN, 99, 0)
    });
    // A digest may only go to private memory the TD accepted.
    guest_refused(&mut w.m, &t, Status::EPT_ENTRY_STATE_INCORRECT.with_operand(Operand::R8), |m| {
        m.guest(mine, g::TDI_RD, FN, 2, 0x7000)
    });
}
