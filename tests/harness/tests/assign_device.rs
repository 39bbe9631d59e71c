//! The device side of assignment through the real ABI: session management (KEY_UPDATE,
//! RECOLLECT) and the malicious device, with each of `tdisp-device`'s fault switches. A device
//! that misbehaves never gets its TDI to RUN, nothing of it stays mapped, and the TSM keeps why.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use seamless_harness::assign::{device_config, pfn, Assignment, BAR_GPA, FUNCTION, LOCK_FLAGS};
use seamless_harness::driver::{gpa_level, ok, Machine, TdHandle};
use tdisp_device::Device;
use tsm::abi::guest::leaf as g;
use tsm::abi::host::leaf as h;
use tsm::abi::host_pdev::mng;
use tsm::error::DeviceFault;
use tsm::pdev::{PdevState, Pending};
use tsm::sept::SeptState;
use tsm::spdm::connect::{ConnectError, Stage};
use tsm::spdm::SpdmError;
use tsm::tdi::TdiState;
use tsm::{Operand, Status};

const MIB: u64 = 1 << 20;

fn device(fault: &str) -> Device {
    let mut c = device_config();
    if !fault.is_empty() {
        c.faults.apply_spec(fault).unwrap();
    }
    Device::new(c).unwrap()
}

fn machine() -> (Machine, TdHandle) {
    let mut m = Machine::configured(64 * MIB);
    let td = m.running_td();
    (m, td)
}

/// Creates the PDEV and pumps SPDM.CONNECT; returns the PDEV and message pages and the result.
fn connect(m: &mut Machine, dev: &mut Device) -> (u64, u64, tsm::Regs) {
    let pdev = m.page();
    ok(m.host(h::SPDM_CREATE, pdev, u64::from(FUNCTION), 0, 0), "SPDM.CREATE");
    let msg = m.scratch();
    let r = m.pump(dev, h::SPDM_CONNECT, pdev, msg, 0);
    (pdev, msg, r)
}

/// Connect, IDE and bind with `dev`, asserting success.
fn bound(m: &mut Machine, td: &TdHandle, dev: &mut Device) -> Assignment {
    let mut a = m.connect(dev);
    m.ide_setup(dev, &mut a);
    m.bind(td, &mut a);
    a
}

fn tdi_state(m: &Machine, a: &Assignment) -> TdiState {
    m.tsm.tdi_summary(pfn(a.tdi)).unwrap().state
}

/// A connection fault: CONNECT fails with DEVICE_ERROR naming the stage, the PDEV is ERROR with
/// the reason kept and no evidence, and no TDI can be created on it.
fn connect_fails(fault: &str, stage: Stage, check: impl Fn(&SpdmError) -> bool) {
    let (mut m, td) = machine();
    let mut dev = device(fault);
    let (pdev, _, r) = connect(&mut m, &mut dev);
    assert_eq!(r.status(), Status::DEVICE_ERROR.with_operand(Operand::Pdev), "{fault}: {r:x?}");
    let s = m.tsm.pdev_summary(pfn(pdev)).unwrap();
    assert_eq!(s.state, PdevState::Error, "{fault}");
    assert!(s.session.is_none() && s.evidence.is_none(), "{fault}: nothing half-done is kept");
    match s.fault {
        Some(DeviceFault::Connect(ConnectError::Spdm(got, e))) => {
            assert_eq!(got, stage, "{fault}: {e:?}");
            assert!(check(&e), "{fault}: {e:?}");
            assert_eq!(r.rcx, 0x102 + stage as u64, "RCX names the stage");
        }
        other => panic!("{fault}: {other:?}"),
    }
    let page = m.page();
    let refused = m.host(h::TDI_CREATE, td.tdr, pdev, page, u64::from(FUNCTION));
    assert_eq!(refused.status(), Status::PDEV_STATE_INCORRECT.with_operand(Operand::Pdev));
    ok(m.host(h::SPDM_DELETE, pdev, 0, 0, 0), "a failed PDEV can be deleted");
}

#[test]
fn a_bad_signature_fails_the_connection_where_it_was_signed() {
    let sig = |e: &SpdmError| matches!(e, SpdmError::Signature(_));
    connect_fails("bad-signature=challenge-auth", Stage::Challenge, sig);
    connect_fails("bad-signature=measurements", Stage::Measurements, sig);
    connect_fails("bad-signature=key-exchange-rsp", Stage::Session, sig);
}

#[test]
fn a_chain_that_does_not_chain_is_refused() {
    connect_fails("broken-chain", Stage::Certificates, |e| matches!(e, SpdmError::Chain(_)));
}

#[test]
fn truncated_and_overlong_answers_fail_the_connection() {
    let length = |e: &SpdmError| matches!(e, SpdmError::BadLength { .. } | SpdmError::Doe(_) | SpdmError::Secured(_));
    connect_fails("truncate=measurements", Stage::Measurements, length);
    connect_fails("truncate=certificate", Stage::Certificates, |e| {
        length(e) || matches!(e, SpdmError::BadPortion | SpdmError::Chain(_) | SpdmError::DigestMismatch)
    });
    connect_fails("overlong-length=measurements", Stage::Measurements, |e| {
        length(e) || matches!(e, SpdmError::BadMeasurementBlock { .. })
    });
    connect_fails("overlong-length=algorithms", Stage::Negotiation, length);
}

#[test]
fn a_wrong_measurement_connects_but_the_evidence_says_so() {
    // The TSM cannot know reference values: it records the signed transcript byte for byte, and
    // the verifier compares it with the policy. Same seeds: the runs differ only by the fault.
    let run = |fault: &str| {
        let (mut m, _) = machine();
        let mut dev = device(fault);
        let (pdev, _, r) = connect(&mut m, &mut dev);
        ok(r, "CONNECT");
        m.tsm.pdev_summary(pfn(pdev)).unwrap().evidence.unwrap()
    };
    let (good, bad) = (run(""), run("wrong-measurement=2"));
    assert_eq!(good.chain_digest, bad.chain_digest);
    assert_ne!(good.measurements_digest, bad.measurements_digest);
}

#[test]
fn an_interface_report_with_overlapping_ranges_puts_the_tdi_in_error() {
    let (mut m, td) = machine();
    let mut dev = device("overlapping-ranges");
    let mut a = bound(&mut m, &td, &mut dev);
    let r = m.pump(&mut dev, h::TDI_LOCK, a.tdi, a.msg, LOCK_FLAGS | a.stream << 16);
    assert_eq!(r.status(), Status::DEVICE_ERROR.with_operand(Operand::Tdi));
    assert_eq!(r.rcx, 0x320, "RCX: the report step");
    assert_eq!(r.rdx, 4 | 1 << 8, "RDX: a malformed range, the second");
    let s = m.tsm.tdi_summary(pfn(a.tdi)).unwrap();
    assert_eq!(s.state, TdiState::Error);
    assert!(matches!(s.fault, Some(DeviceFault::Report(tsm::tdisp::ReportError::Range { index: 1 }))), "{:?}", s.fault);
    assert_eq!(s.range_count, 0, "no range of a refused report is kept");
    // Nothing can be imported or mapped, and the guest sees ERROR.
    let bar = seamless_harness::assign::BAR_BASE;
    assert_eq!(
        m.host(h::DMABUF_IMPORT, a.tdi, bar, 16, 0).status(),
        Status::TDI_STATE_INCORRECT.with_operand(Operand::Tdi)
    );
    assert_eq!(m.guest(td.vcpus[0], g::TDI_RD, u64::from(FUNCTION), 0, 0).regs.r9, 3);
    // STOP, then the TDI can go; a re-lock of a fixed device would start over.
    ok(m.pump(&mut dev, h::TDI_STOP, a.tdi, a.msg, 0), "STOP");
    ok(m.host(h::TDI_REMOVE, a.tdi, 0, 0, 0), "REMOVE");
    a.tdi = 0;
}

/// spdm-emu's sample TDISP device reports its ranges without the MMIO_REPORTING_OFFSET the TSM
/// asked for: LOCK refuses the report naming the range and the page it reported, keeps none of
/// it, and the TDI can only be stopped and removed.
#[test]
fn an_interface_report_without_the_reporting_offset_is_refused_naming_the_range() {
    use tsm::tdisp::ReportError;
    let (mut m, td) = machine();
    let mut dev = device("ignore-reporting-offset");
    let mut a = bound(&mut m, &td, &mut dev);
    let r = m.pump(&mut dev, h::TDI_LOCK, a.tdi, a.msg, LOCK_FLAGS | a.stream << 16);
    assert_eq!(r.status(), Status::DEVICE_ERROR.with_operand(Operand::Tdi));
    assert_eq!(r.rcx, 0x320, "RCX: the report step");
    let bar_page = seamless_harness::assign::BAR_BASE >> 12;
    let want = ReportError::OffsetNotApplied { index: 0, first_page: bar_page };
    assert_eq!(ReportError::from_detail(r.rdx), Some(want), "RDX {:#x} names the range and its page", r.rdx);
    let s = m.tsm.tdi_summary(pfn(a.tdi)).unwrap();
    assert_eq!((s.state, s.fault), (TdiState::Error, Some(DeviceFault::Report(want))));
    assert_eq!(s.range_count, 0, "no range of a refused report is kept");
    // The BAR's frames are exactly what the device reported, yet nothing can be imported: the
    // TDI is in ERROR.
    assert_eq!(
        m.host(h::DMABUF_IMPORT, a.tdi, bar_page << 12, 4, 0).status(),
        Status::TDI_STATE_INCORRECT.with_operand(Operand::Tdi)
    );
    let pdev = m.tsm.pdev_summary(pfn(a.pdev)).unwrap();
    assert_eq!(pdev.state, PdevState::Connected, "the session and the streams are not the report's fault");
    ok(m.pump(&mut dev, h::TDI_STOP, a.tdi, a.msg, 0), "STOP");
    ok(m.host(h::TDI_REMOVE, a.tdi, 0, 0, 0), "REMOVE");
    a.tdi = 0;
}

#[test]
fn a_tdi_that_falls_into_error_after_lock_is_caught_by_the_state_check() {
    let (mut m, td) = machine();
    let mut dev = device("error-after-lock");
    let a = bound(&mut m, &td, &mut dev);
    let r = m.pump(&mut dev, h::TDI_LOCK, a.tdi, a.msg, LOCK_FLAGS | a.stream << 16);
    assert_eq!(r.status(), Status::DEVICE_ERROR.with_operand(Operand::Tdi));
    let s = m.tsm.tdi_summary(pfn(a.tdi)).unwrap();
    assert_eq!(s.fault, Some(DeviceFault::TdiState(tsm::tdisp::TdiState::Error)));
    assert_eq!(s.state, TdiState::Error);
}

#[test]
fn a_refused_start_leaves_nothing_mapped_and_dma_blocked() {
    let (mut m, td) = machine();
    let mut dev = device("refuse-start");
    let mut a = bound(&mut m, &td, &mut dev);
    m.lock(&mut dev, &mut a);
    m.import_all(&a);
    m.map_range(&td, &a, 0, BAR_GPA);
    m.accept_range(&td, &a, 0, BAR_GPA);
    m.authorise(&td, &a);
    let r = m.pump(&mut dev, h::TDI_START, a.tdi, a.msg, 0);
    assert_eq!(r.status(), Status::DEVICE_ERROR.with_operand(Operand::Tdi));
    let s = m.tsm.tdi_summary(pfn(a.tdi)).unwrap();
    assert_eq!(s.state, TdiState::Error, "never RUN");
    assert!(matches!(s.fault, Some(DeviceFault::Tdisp(tsm::tdisp::TdispError::Device(_)))), "{:?}", s.fault);
    for i in 0..16 {
        let rd = m.host(h::MEM_SEPT_RD, gpa_level(BAR_GPA + i * 4096, 0), td.tdr, 0, 0);
        assert_eq!((rd.rdx >> 8) as u8, SeptState::MmioBlocked as u8, "page {i}: no access left");
    }
}

#[test]
fn answers_under_another_session_id_never_open_and_the_host_can_only_abort() {
    let (mut m, td) = machine();
    let mut dev = device("");
    let a = bound(&mut m, &td, &mut dev);
    // The authenticated device starts sealing under another session id.
    dev.faults_mut().wrong_session_id = true;
    let r = m.pump(&mut dev, h::TDI_LOCK, a.tdi, a.msg, LOCK_FLAGS | a.stream << 16);
    assert_eq!(r.status(), Status::ANSWER_NOT_AUTHENTIC.with_operand(Operand::R8), "{r:x?}");
    assert_eq!(tdi_state(&m, &a), TdiState::Unlocked, "nothing moved");
    assert_eq!(m.tsm.pdev_summary(pfn(a.pdev)).unwrap().pending, Pending::Tdi(0));
    ok(m.host(h::SPDM_MNG, a.pdev, 0, 0, mng::ABORT), "ABORT");
    assert_eq!(tdi_state(&m, &a), TdiState::Error);
    assert_eq!(m.tsm.pdev_summary(pfn(a.pdev)).unwrap().state, PdevState::Error);
    // With no session left, STOP is local, and the TDI and PDEV can go.
    ok(m.host(h::TDI_STOP, a.tdi, a.msg, 0, 0), "local STOP");
    ok(m.host(h::TDI_REMOVE, a.tdi, 0, 0, 0), "REMOVE");
}

#[test]
fn a_wrong_session_id_inside_a_live_session_is_not_authentic() {
    let (mut m, td) = machine();
    let mut dev = device("wrong-session-id");
    // The connection itself fails: FINISH_RSP comes sealed under the wrong id.
    let (pdev, _, r) = connect(&mut m, &mut dev);
    assert_eq!(r.status(), Status::DEVICE_ERROR.with_operand(Operand::Pdev), "{r:x?}");
    assert!(matches!(
        m.tsm.pdev_summary(pfn(pdev)).unwrap().fault,
        Some(DeviceFault::Connect(ConnectError::Spdm(Stage::Session, _)))
    ));
    let _ = td;
}

#[test]
fn a_dropped_answer_leaves_the_request_outstanding_until_the_host_aborts() {
    let (mut m, td) = machine();
    let mut dev = device("drop-response=tdisp-report");
    let a = bound(&mut m, &td, &mut dev);
    let r = m.pump(&mut dev, h::TDI_LOCK, a.tdi, a.msg, LOCK_FLAGS | a.stream << 16);
    assert_eq!(r.status(), Status::DEVICE_REQUEST, "no answer came");
    // Any other device call waits; the TDI is not locked for the TSM.
    let busy = m.host(h::TDI_STOP, a.tdi, a.msg, 0, 0);
    assert_eq!(busy.status(), Status::OPERAND_BUSY.with_operand(Operand::Pdev));
    assert_eq!(tdi_state(&m, &a), TdiState::Unlocked);
    ok(m.host(h::SPDM_MNG, a.pdev, 0, 0, mng::ABORT), "ABORT");
    let s = m.tsm.tdi_summary(pfn(a.tdi)).unwrap();
    assert_eq!((s.state, s.fault), (TdiState::Error, Some(DeviceFault::Aborted)));
}

#[test]
fn key_update_moves_both_directions_and_the_session_goes_on() {
    let (mut m, td) = machine();
    let mut dev = device("");
    let mut a = bound(&mut m, &td, &mut dev);
    let before = m.tsm.pdev_summary(pfn(a.pdev)).unwrap().session.unwrap();
    ok(m.pump(&mut dev, h::SPDM_MNG, a.pdev, a.msg, mng::KEY_UPDATE), "KEY_UPDATE");
    let after = m.tsm.pdev_summary(pfn(a.pdev)).unwrap().session.unwrap();
    assert_eq!(after.id, before.id);
    assert_ne!(after.request, before.request);
    assert_ne!(after.response, before.response);
    // TDISP still runs inside the updated session.
    m.lock(&mut dev, &mut a);
    assert_eq!(tdi_state(&m, &a), TdiState::Locked);
}

#[test]
fn a_key_update_answer_that_does_not_open_changes_nothing() {
    let (mut m, td) = machine();
    let mut dev = device("");
    let a = bound(&mut m, &td, &mut dev);
    let r = m.host(h::SPDM_MNG, a.pdev, a.msg, 0, mng::KEY_UPDATE);
    assert_eq!(r.status(), Status::DEVICE_REQUEST);
    let request = m.read(a.msg, r.r8 as usize);
    let mut answer = dev.handle(&request).unwrap();
    answer[16] ^= 1;
    m.write(a.msg, &answer);
    let before = format!("{:?}", m.tsm.device_summaries());
    let r = m.host(h::SPDM_MNG, a.pdev, a.msg, answer.len() as u64, mng::KEY_UPDATE);
    assert_eq!(r.status(), Status::ANSWER_NOT_AUTHENTIC.with_operand(Operand::R8));
    assert_eq!(before, format!("{:?}", m.tsm.device_summaries()));
    answer[16] ^= 1;
    m.write(a.msg, &answer);
    let mut len = answer.len() as u64;
    loop {
        let r = m.host(h::SPDM_MNG, a.pdev, a.msg, len, mng::KEY_UPDATE);
        if r.status() != Status::DEVICE_REQUEST {
            ok(r, "the real answer completes KEY_UPDATE");
            break;
        }
        let reply = dev.handle(&m.read(a.msg, r.r8 as usize)).unwrap();
        m.write(a.msg, &reply);
        len = reply.len() as u64;
    }
    let _ = td;
}

#[test]
fn recollect_binds_fresh_measurements_into_the_evidence() {
    let (mut m, td) = machine();
    let mut dev = device("");
    let mut a = bound(&mut m, &td, &mut dev);
    m.lock(&mut dev, &mut a);
    let first = m.tsm.pdev_summary(pfn(a.pdev)).unwrap().evidence.unwrap();
    ok(m.pump(&mut dev, h::SPDM_MNG, a.pdev, a.msg, mng::RECOLLECT), "RECOLLECT");
    let fresh = m.tsm.pdev_summary(pfn(a.pdev)).unwrap().evidence.unwrap();
    assert_ne!(first.measurements_digest, fresh.measurements_digest, "a new nonce, a new transcript");
    let ev = m.tsm.tdi_evidence(pfn(a.tdi)).unwrap();
    assert_eq!(attest::evidence::transcript_digest(ev.vca, ev.measurements), fresh.measurements_digest);
    // And the guest reads the new digest from the TSM.
    m.aug_accept(&td, 0x1000, tsm::addr::PageSize::Size4K);
    let r = m.guest(td.vcpus[0], g::TDI_RD, u64::from(FUNCTION), 3, 0x1000);
    assert_eq!(r.regs.status(), Status::SUCCESS);
}

#[test]
fn a_failed_recollection_keeps_the_old_evidence() {
    let (mut m, td) = machine();
    let mut dev = device("");
    let a = bound(&mut m, &td, &mut dev);
    let first = m.tsm.pdev_summary(pfn(a.pdev)).unwrap().evidence.unwrap();
    // The device starts signing its measurements wrongly.
    dev.faults_mut().apply_spec("bad-signature=measurements").unwrap();
    let r = m.pump(&mut dev, h::SPDM_MNG, a.pdev, a.msg, mng::RECOLLECT);
    assert_eq!(r.status(), Status::DEVICE_ERROR.with_operand(Operand::Pdev), "{r:x?}");
    assert!(m.tsm.pdev_summary(pfn(a.pdev)).unwrap().fault.is_none(), "the PDEV itself is fine");
    let s = m.tsm.pdev_summary(pfn(a.pdev)).unwrap();
    assert_eq!(s.state, PdevState::Connected);
    assert_eq!(s.evidence.unwrap(), first);
    assert_eq!(s.pending, Pending::None);
}

#[test]
fn an_abort_during_recollect_ends_the_exchange_and_keeps_the_evidence() {
    let (mut m, td) = machine();
    let mut dev = device("");
    let a = bound(&mut m, &td, &mut dev);
    let first = m.tsm.pdev_summary(pfn(a.pdev)).unwrap().evidence.unwrap();
    let r = m.host(h::SPDM_MNG, a.pdev, a.msg, 0, mng::RECOLLECT);
    assert_eq!(r.status(), Status::DEVICE_REQUEST, "GET_MEASUREMENTS out, no answer yet");
    assert_eq!(m.tsm.pdev_summary(pfn(a.pdev)).unwrap().pending, Pending::Measure);
    ok(m.host(h::SPDM_MNG, a.pdev, 0, 0, mng::ABORT), "ABORT");
    let s = m.tsm.pdev_summary(pfn(a.pdev)).unwrap();
    assert_eq!((s.state, s.pending, s.fault), (PdevState::Error, Pending::None, Some(DeviceFault::Aborted)));
    assert_eq!(s.evidence.unwrap(), first, "the abandoned re-collection is no evidence");
    // Nothing of the exchange is left behind for the audit to find.
    seamless_harness::audit::assert_invariants(&m.tsm, &"ABORT during RECOLLECT");
    let again = m.host(h::SPDM_MNG, a.pdev, 0, 0, mng::ABORT);
    assert_eq!(again.status(), Status::NO_REQUEST_OUTSTANDING.with_operand(Operand::R8));
}

/// DOE object type of a request the TSM wrote (PCIe DOE header: vendor 0x0001, type in byte 2).
fn doe_type(object: &[u8]) -> u8 {
    object[2]
}

#[test]
fn connect_measures_the_device_inside_the_session() {
    let (mut m, _td) = machine();
    let mut dev = device("");
    let pdev = m.page();
    ok(m.host(h::SPDM_CREATE, pdev, u64::from(FUNCTION), 0, 0), "SPDM.CREATE");
    let msg = m.scratch();
    // Drive CONNECT by hand and look at every request on the wire.
    let (mut r, mut clear, mut secured) = (m.host(h::SPDM_CONNECT, pdev, msg, 0, 0), Vec::new(), 0);
    while r.status() == Status::DEVICE_REQUEST {
        let request = m.read(msg, r.r8 as usize);
        match doe_type(&request) {
            1 => clear.push(request[9]),
            2 => secured += 1,
            _ => {}
        }
        let answer = dev.handle(&request).unwrap();
        m.write(msg, &answer);
        r = m.host(h::SPDM_CONNECT, pdev, msg, answer.len() as u64, 0);
    }
    ok(r, "SPDM.CONNECT");
    const GET_MEASUREMENTS: u8 = 0xE0;
    assert!(!clear.contains(&GET_MEASUREMENTS), "no GET_MEASUREMENTS in the clear: {clear:x?}");
    // FINISH and GET_MEASUREMENTS travel sealed.
    assert_eq!(secured, 2, "FINISH, then GET_MEASUREMENTS inside the session");
    let s = m.tsm.pdev_summary(pfn(pdev)).unwrap();
    assert_eq!((s.state, s.pending), (PdevState::Connected, Pending::None));
    let e = s.evidence.unwrap();
    assert!(e.measurements_in_session, "the evidence says where the measurements were taken");
    // The signed exchange kept is the one the digest binds.
    seamless_harness::audit::assert_invariants(&m.tsm, &"CONNECT");
}

/// Drives SPDM.CONNECT by hand; returns the final registers and, in order, each request's
/// channel (1 clear, 2 secured) and code (0 for a sealed one).
fn connect_by_hand(m: &mut Machine, dev: &mut Device, pdev: u64, msg: u64) -> (tsm::Regs, Vec<(u8, u8)>) {
    let (mut r, mut wire) = (m.host(h::SPDM_CONNECT, pdev, msg, 0, 0), Vec::new());
    while r.status() == Status::DEVICE_REQUEST {
        let request = m.read(msg, r.r8 as usize);
        wire.push((doe_type(&request), if doe_type(&request) == 1 { request[9] } else { 0 }));
        let answer = dev.handle(&request).unwrap();
        m.write(msg, &answer);
        r = m.host(h::SPDM_CONNECT, pdev, msg, answer.len() as u64, 0);
    }
    (r, wire)
}

#[test]
fn connect_reports_the_version_and_where_the_device_was_measured() {
    let (mut m, _td) = machine();
    let mut dev = device("");
    let pdev = m.page();
    ok(m.host(h::SPDM_CREATE, pdev, u64::from(FUNCTION), 0, 0), "SPDM.CREATE");
    let msg = m.scratch();
    let (r, _) = connect_by_hand(&mut m, &mut dev, pdev, msg);
    ok(r, "SPDM.CONNECT");
    assert_eq!(r.rcx, 0x13 | 1 << 8 | 60 << 16, "RCX: SPDM 1.3, measured inside the session, a 60 s heartbeat");
}

/// The measurement policy: a device that refuses GET_MEASUREMENTS inside the session (ERROR
/// UnsupportedRequest) is measured outside it, in the clear, in the same SPDM.CONNECT; the
/// evidence, RCX and the summary say so, and RECOLLECT follows the connection into the clear.
#[test]
fn a_device_that_refuses_in_session_measurements_is_measured_in_the_clear() {
    let (mut m, _td) = machine();
    let mut c = device_config();
    c.session_measurements_error = Some(0x07);
    let mut dev = Device::new(c).unwrap();
    let pdev = m.page();
    ok(m.host(h::SPDM_CREATE, pdev, u64::from(FUNCTION), 0, 0), "SPDM.CREATE");
    let msg = m.scratch();
    let (r, wire) = connect_by_hand(&mut m, &mut dev, pdev, msg);
    ok(r, "SPDM.CONNECT");
    assert_eq!(r.rcx, 0x13 | 60 << 16, "RCX: SPDM 1.3, bit 8 clear: measured in the clear");
    const GET_MEASUREMENTS: u8 = 0xE0;
    // ... KEY_EXCHANGE (clear), FINISH (sealed), GET_MEASUREMENTS (sealed, refused), then
    // GET_MEASUREMENTS in the clear, last.
    let tail: Vec<(u8, u8)> = wire[wire.len() - 4..].to_vec();
    assert_eq!(tail, [(1, 0xE4), (2, 0), (2, 0), (1, GET_MEASUREMENTS)], "{wire:x?}");
    let s = m.tsm.pdev_summary(pfn(pdev)).unwrap();
    assert_eq!((s.state, s.pending, s.fault), (PdevState::Connected, Pending::None, None));
    let e = s.evidence.unwrap();
    assert!(!e.measurements_in_session, "the evidence says the measurements were taken in the clear");
    seamless_harness::audit::assert_invariants(&m.tsm, &"CONNECT, measured in the clear");
    // RECOLLECT goes where the connection's measurements went: the clear.
    let mut n = 0;
    let mut r = m.host(h::SPDM_MNG, pdev, msg, 0, mng::RECOLLECT);
    while r.status() == Status::DEVICE_REQUEST {
        let request = m.read(msg, r.r8 as usize);
        assert_eq!((doe_type(&request), request[9]), (1, GET_MEASUREMENTS), "RECOLLECT in the clear");
        let answer = dev.handle(&request).unwrap();
        m.write(msg, &answer);
        r = m.host(h::SPDM_MNG, pdev, msg, answer.len() as u64, mng::RECOLLECT);
        n += 1;
    }
    ok(r, "RECOLLECT");
    assert_eq!(n, 1);
    let again = m.tsm.pdev_summary(pfn(pdev)).unwrap().evidence.unwrap();
    assert!(!again.measurements_in_session);
    assert_ne!(again.measurements_digest, e.measurements_digest, "a fresh nonce, a fresh transcript");
}

/// Only "not here" sends the TSM to the clear: UnsupportedRequest and UnexpectedRequest do,
/// every other ERROR to the in-session request fails the connection at the measurement stage
/// without a request in the clear, and so does a failure of the clear exchange.
#[test]
fn only_a_refusal_of_the_session_sends_the_measurements_to_the_clear() {
    const GET_MEASUREMENTS: u8 = 0xE0;
    let run = |code: u8, fault: &str| {
        let (mut m, _) = machine();
        let mut c = device_config();
        c.session_measurements_error = Some(code);
        if !fault.is_empty() {
            c.faults.apply_spec(fault).unwrap();
        }
        let mut dev = Device::new(c).unwrap();
        let pdev = m.page();
        ok(m.host(h::SPDM_CREATE, pdev, u64::from(FUNCTION), 0, 0), "SPDM.CREATE");
        let msg = m.scratch();
        let (r, wire) = connect_by_hand(&mut m, &mut dev, pdev, msg);
        let clear = wire.iter().filter(|w| **w == (1, GET_MEASUREMENTS)).count();
        (r, clear, m.tsm.pdev_summary(pfn(pdev)).unwrap())
    };
    for code in [0x04, 0x07] {
        let (r, clear, s) = run(code, "");
        ok(r, "SPDM.CONNECT");
        assert_eq!((clear, s.evidence.unwrap().measurements_in_session), (1, false), "ERROR {code:#x}");
    }
    // InvalidRequest, Unspecified, SessionRequired, ResponseTooLarge: a device fault.
    for code in [0x01, 0x05, 0x0B, 0x0D] {
        let (r, clear, s) = run(code, "");
        assert_eq!(r.status(), Status::DEVICE_ERROR.with_operand(Operand::Pdev), "ERROR {code:#x}: {r:x?}");
        assert_eq!(clear, 0, "ERROR {code:#x}: nothing sent in the clear");
        let want = SpdmError::Responder { code, data: 0 };
        assert_eq!(s.fault, Some(DeviceFault::Connect(ConnectError::Spdm(Stage::Measurements, want))));
        assert_eq!(s.state, PdevState::Error);
        assert!(s.session.is_none() && s.evidence.is_none(), "nothing of the connection is kept");
    }
    // Refused inside the session, then a bad signature in the clear: the connection fails.
    let (r, clear, s) = run(0x07, "bad-signature=measurements");
    assert_eq!(r.status(), Status::DEVICE_ERROR.with_operand(Operand::Pdev), "{r:x?}");
    assert_eq!((r.rcx, clear), (0x102 + Stage::Measurements as u64, 1));
    assert!(matches!(
        s.fault,
        Some(DeviceFault::Connect(ConnectError::Spdm(Stage::Measurements, SpdmError::Signature(_))))
    ));
    assert!(s.session.is_none() && s.evidence.is_none(), "nothing of the connection is kept");
}

#[test]
fn an_in_session_measurement_answer_that_does_not_open_changes_nothing() {
    let (mut m, _td) = machine();
    let mut dev = device("");
    let pdev = m.page();
    ok(m.host(h::SPDM_CREATE, pdev, u64::from(FUNCTION), 0, 0), "SPDM.CREATE");
    let msg = m.scratch();
    let mut r = m.host(h::SPDM_CONNECT, pdev, msg, 0, 0);
    let mut sealed = 0;
    loop {
        assert_eq!(r.status(), Status::DEVICE_REQUEST, "{r:x?}");
        let request = m.read(msg, r.r8 as usize);
        sealed += usize::from(doe_type(&request) == 2);
        let mut answer = dev.handle(&request).unwrap();
        if sealed == 2 {
            // The answer to GET_MEASUREMENTS, tampered with on its way through the host.
            let last = answer.len() - 1;
            answer[last] ^= 1;
            m.write(msg, &answer);
            let before = format!("{:?}", m.tsm.device_summaries());
            let bad = m.host(h::SPDM_CONNECT, pdev, msg, answer.len() as u64, 0);
            assert_eq!(bad.status(), Status::ANSWER_NOT_AUTHENTIC.with_operand(Operand::R8), "{bad:x?}");
            assert_eq!(before, format!("{:?}", m.tsm.device_summaries()), "nothing changed");
            assert_eq!(m.tsm.pdev_summary(pfn(pdev)).unwrap().pending, Pending::Connect);
            answer[last] ^= 1;
        }
        m.write(msg, &answer);
        r = m.host(h::SPDM_CONNECT, pdev, msg, answer.len() as u64, 0);
        if r.status() != Status::DEVICE_REQUEST {
            break;
        }
    }
    ok(r, "the real answer completes SPDM.CONNECT");
    assert!(m.tsm.pdev_summary(pfn(pdev)).unwrap().evidence.unwrap().measurements_in_session);
}

#[test]
fn heartbeat_keeps_the_session_the_device_asked_for() {
    let (mut m, _td) = machine();
    let mut dev = device("");
    let a = m.connect(&mut dev);
    let before = m.tsm.pdev_summary(pfn(a.pdev)).unwrap().session.unwrap();
    // tdisp-device asks a requester with HBEAT_CAP for a heartbeat every 60 s.
    assert_eq!(before.heartbeat_period(), 60);
    ok(m.pump(&mut dev, h::SPDM_MNG, a.pdev, a.msg, mng::HEARTBEAT), "HEARTBEAT");
    let s = m.tsm.pdev_summary(pfn(a.pdev)).unwrap();
    assert_eq!((s.state, s.pending, s.fault), (PdevState::Connected, Pending::None, None));
    let after = s.session.unwrap();
    assert_eq!(after.request.sequence, before.request.sequence + 1, "one message sealed");
    assert_eq!(after.response.sequence, before.response.sequence + 1, "one answer opened");
    seamless_harness::audit::assert_invariants(&m.tsm, &"HEARTBEAT");
}

#[test]
fn heartbeat_needs_a_connected_pdev() {
    let (mut m, _td) = machine();
    let pdev = m.page();
    ok(m.host(h::SPDM_CREATE, pdev, u64::from(FUNCTION), 0, 0), "SPDM.CREATE");
    let msg = m.scratch();
    let r = m.host(h::SPDM_MNG, pdev, msg, 0, mng::HEARTBEAT);
    assert_eq!(r.status(), Status::PDEV_STATE_INCORRECT.with_operand(Operand::Pdev), "{r:x?}");
    assert_eq!(m.tsm.pdev_summary(pfn(pdev)).unwrap().pending, Pending::None);
}

#[test]
fn a_wrong_heartbeat_ack_is_the_devices_fault() {
    let (mut m, td) = machine();
    let mut dev = device("");
    let a = bound(&mut m, &td, &mut dev);
    dev.faults_mut().apply_spec("truncate=heartbeat-ack").unwrap();
    let r = m.pump(&mut dev, h::SPDM_MNG, a.pdev, a.msg, mng::HEARTBEAT);
    assert_eq!(r.status(), Status::DEVICE_ERROR.with_operand(Operand::Pdev), "{r:x?}");
    let s = m.tsm.pdev_summary(pfn(a.pdev)).unwrap();
    assert_eq!((s.state, s.pending), (PdevState::Error, Pending::None));
    assert!(
        matches!(s.fault, Some(DeviceFault::Spdm(SpdmError::UnexpectedResponse { want: 0x68, .. }))),
        "{:?}",
        s.fault
    );
    assert!(s.session.is_none(), "the session is gone with it");
    seamless_harness::audit::assert_invariants(&m.tsm, &"a wrong HEARTBEAT_ACK");
}

#[test]
fn a_missed_heartbeat_leaves_the_request_outstanding_until_the_host_aborts() {
    let (mut m, td) = machine();
    let mut dev = device("drop-response=heartbeat-ack");
    let a = bound(&mut m, &td, &mut dev);
    let r = m.pump(&mut dev, h::SPDM_MNG, a.pdev, a.msg, mng::HEARTBEAT);
    assert_eq!(r.status(), Status::DEVICE_REQUEST, "no answer came");
    assert_eq!(m.tsm.pdev_summary(pfn(a.pdev)).unwrap().pending, Pending::Heartbeat);
    ok(m.host(h::SPDM_MNG, a.pdev, 0, 0, mng::ABORT), "ABORT");
    let s = m.tsm.pdev_summary(pfn(a.pdev)).unwrap();
    assert_eq!((s.state, s.fault), (PdevState::Error, Some(DeviceFault::Aborted)));
}

/// ERROR Busy and ResponseNotReady in every place a device may answer them: in the clear during
/// SPDM.CONNECT, FINISH_RSP under the handshake keys, the measurements inside the session, IDE_KM
/// and TDISP inside it, and SPDM.MNG's HEARTBEAT. The TSM sends the request again after Busy and
/// RESPOND_IF_READY after ResponseNotReady; the assignment completes, and since the flows never
/// see the ERRORs, the evidence is byte for byte the same as with a device that never deferred
/// (same seeds: a Busy request was not taken, a deferred one taken once).
#[test]
fn busy_and_response_not_ready_are_asked_again_wherever_they_come() {
    let evidence = |spec: &str| {
        let (mut m, td) = machine();
        let mut dev = device(spec);
        let a = m.assign(&mut dev, &td);
        ok(m.pump(&mut dev, h::SPDM_MNG, a.pdev, a.msg, mng::HEARTBEAT), spec);
        assert_eq!(m.tsm.tdi_summary(pfn(a.tdi)).unwrap().state, TdiState::Run, "{spec}");
        let f = &dev.config().faults;
        assert_eq!((f.busy, f.not_ready), (None, None), "{spec}: every deferral was asked again");
        let s = m.tsm.pdev_summary(pfn(a.pdev)).unwrap();
        (s.evidence.unwrap(), m.tsm.tdi_evidence(pfn(a.tdi)).unwrap().report_digest)
    };
    let good = evidence("");
    for spec in [
        "not-ready=version",
        "busy=algorithms",
        "not-ready=certificate*3",
        "busy=challenge-auth*2",
        "not-ready=key-exchange-rsp",
        "busy=finish-rsp",
        "not-ready=finish-rsp",
        "busy=measurements*8",
        "not-ready=measurements",
        "not-ready=idekm*2",
        "busy=idekm",
        "busy=tdisp-lock",
        "not-ready=tdisp-report*3",
        "busy=tdisp-state*2",
        "not-ready=tdisp-start",
        "busy=heartbeat-ack",
        "not-ready=heartbeat-ack",
    ] {
        assert_eq!(evidence(spec), good, "{spec}");
    }
    // In the clear, where the engine frames rather than seals: a device measured there (it
    // refuses the session), deferring those measurements.
    for spec in ["busy=measurements*2", "not-ready=measurements*2"] {
        let (mut m, _) = machine();
        let mut c = device_config();
        c.session_measurements_error = Some(0x07);
        c.faults.apply_spec(spec).unwrap();
        let mut dev = Device::new(c).unwrap();
        let a = m.connect(&mut dev);
        let e = m.tsm.pdev_summary(pfn(a.pdev)).unwrap().evidence.unwrap();
        assert!(!e.measurements_in_session, "{spec}");
        assert_eq!(dev.config().faults.busy.or(dev.config().faults.not_ready), None, "{spec}");
        c = device_config();
        c.session_measurements_error = Some(0x07);
        let mut plain = Device::new(c).unwrap();
        let (mut m2, _) = machine();
        let a2 = m2.connect(&mut plain);
        assert_eq!(m2.tsm.pdev_summary(pfn(a2.pdev)).unwrap().evidence.unwrap(), e, "{spec}");
    }
}

/// A device that is never ready: after [`tsm::spdm::connect::MAX_RETRIES`] come-back answers to
/// one request the exchange fails with `NotReadyTooLong`, against its owner.
#[test]
fn a_device_that_is_never_ready_fails_the_exchange_it_holds_up() {
    use tsm::spdm::later::{ERROR_BUSY, ERROR_RESPONSE_NOT_READY};
    let too_long = |request: u8, error: u8| SpdmError::NotReadyTooLong { request, error };
    for (spec, stage, want) in [
        ("busy=certificate*9", Stage::Certificates, too_long(0x82, ERROR_BUSY)),
        ("not-ready=finish-rsp*9", Stage::Session, too_long(0xE5, ERROR_RESPONSE_NOT_READY)),
        ("busy=measurements*9", Stage::Measurements, too_long(0xE0, ERROR_BUSY)),
    ] {
        connect_fails(spec, stage, |e| *e == want);
    }
    // TDISP: the TDI goes to ERROR, the PDEV stays connected.
    let (mut m, td) = machine();
    let mut dev = device("not-ready=tdisp-lock*9");
    let a = bound(&mut m, &td, &mut dev);
    let r = m.pump(&mut dev, h::TDI_LOCK, a.tdi, a.msg, LOCK_FLAGS | a.stream << 16);
    assert_eq!(r.status(), Status::DEVICE_ERROR.with_operand(Operand::Tdi), "{r:x?}");
    let s = m.tsm.tdi_summary(pfn(a.tdi)).unwrap();
    assert_eq!(s.state, TdiState::Error);
    assert_eq!(s.fault, Some(DeviceFault::Spdm(too_long(0xFE, ERROR_RESPONSE_NOT_READY))));
    assert_eq!(m.tsm.pdev_summary(pfn(a.pdev)).unwrap().state, PdevState::Connected);
}

/// SPDM.CONNECT through the ABI with a device whose chain is over 4 KiB: the engine pumps the
/// CHUNK_GETs like any other request, the PDEV connects, and the evidence holds the whole chain.
#[test]
fn connect_takes_a_chain_over_4_kib_in_chunks() {
    use sha2::{Digest, Sha384};
    let (mut m, td) = machine();
    let c = device_config();
    let mut rng = tdisp_device::rng::Rng::new(c.seed);
    let identity = tdisp_device::Identity::generate_chain(&mut rng, 5, 400).unwrap();
    let chain = identity.chain.clone();
    assert!(chain.len() > 4096);
    let mut dev = Device::with_identity(c, identity, rng).unwrap();
    let pdev = m.page();
    ok(m.host(h::SPDM_CREATE, pdev, u64::from(FUNCTION), 0, 0), "SPDM.CREATE");
    let msg = m.scratch();
    let (r, wire) = connect_by_hand(&mut m, &mut dev, pdev, msg);
    ok(r, "SPDM.CONNECT");
    assert!(wire.contains(&(1, 0x86)), "CHUNK_GET on the wire: {wire:x?}");
    let e = m.tsm.pdev_summary(pfn(pdev)).unwrap().evidence.unwrap();
    assert_eq!(e.chain_digest[..], Sha384::digest(&chain)[..], "the whole chain is the evidence");
    // And the assignment goes on over it.
    let mut a = seamless_harness::assign::Assignment {
        pdev,
        msg,
        stream: 0,
        tdi: 0,
        generation: 0,
        report: Vec::new(),
        spdm: Default::default(),
    };
    m.ide_setup(&mut dev, &mut a);
    m.bind(&td, &mut a);
    m.lock(&mut dev, &mut a);
    assert_eq!(tdi_state(&m, &a), TdiState::Locked);
}

/// The TSM cannot wait, so it tells the host how long: the DEVICE_REQUEST that carries
/// RESPOND_IF_READY after the device's ResponseNotReady has R9 = 2^RDTExponent µs (tdisp-device
/// says 2^10), every other one 0, and the host's pump waits that long in its mailbox before
/// moving the request: in the clear (CERTIFICATE), under the handshake keys (FINISH_RSP) and in
/// the session (TDISP).
#[test]
fn the_host_waits_the_device_response_time_before_respond_if_ready() {
    use tsm_client::host::{pump, DeviceLeaf, PumpStats};
    use tsm_client::{Doe, DoeError};
    /// The device in-process, keeping every pause the pump makes.
    struct Timed<'a> {
        device: &'a mut Device,
        paused: Vec<u64>,
    }
    impl Doe for Timed<'_> {
        fn exchange(&mut self, request: &[u8], answer: &mut [u8]) -> Result<usize, DoeError> {
            let got = self.device.handle(request).ok_or(DoeError::Timeout { waited_us: 0 })?;
            answer[..got.len()].copy_from_slice(&got);
            Ok(got.len())
        }
        fn pause(&mut self, us: u64) {
            self.paused.push(us);
        }
    }
    for spec in ["not-ready=certificate", "not-ready=finish-rsp*2", "not-ready=measurements"] {
        let (mut m, _) = machine();
        let mut dev = device(spec);
        let pdev = m.page();
        ok(m.host(h::SPDM_CREATE, pdev, u64::from(FUNCTION), 0, 0), "SPDM.CREATE");
        let msg = m.scratch();
        let mut t = Timed { device: &mut dev, paused: Vec::new() };
        let l = DeviceLeaf { name: "TDH.SPDM.CONNECT", leaf: h::SPDM_CONNECT, rcx: pdev, r9: 0 };
        let mut stats = PumpStats::default();
        let r = pump(&mut m, &mut t, l, msg, &mut stats).unwrap();
        ok(r, spec);
        let deferrals = if spec.ends_with("*2") { 2 } else { 1 };
        assert_eq!(t.paused, vec![1024; deferrals], "{spec}");
        assert_eq!(stats.paused_us, 1024 * deferrals as u64, "{spec}");
    }
    // TDISP inside the session.
    let (mut m, td) = machine();
    let mut dev = device("not-ready=tdisp-report");
    let a = bound(&mut m, &td, &mut dev);
    let mut t = Timed { device: &mut dev, paused: Vec::new() };
    let l = DeviceLeaf { name: "SEAMLESS.TDI.LOCK", leaf: h::TDI_LOCK, rcx: a.tdi, r9: LOCK_FLAGS | a.stream << 16 };
    ok(pump(&mut m, &mut t, l, a.msg, &mut PumpStats::default()).unwrap(), "TDI.LOCK");
    assert_eq!(t.paused, [1024]);
}
