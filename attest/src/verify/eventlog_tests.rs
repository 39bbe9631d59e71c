//! Layer 4's tests: each refusal under its id, in check order, then the happy path; logs built
//! as the patched TDVF writes them (`crate::eventlog::writer`), registers replayed here by hand.

use sha2::{Digest, Sha384};

use super::*;
use crate::eventlog::spdm::SpdmEventError;
use crate::eventlog::writer::{device_events, DeviceMeasurement, LogWriter, MR_INDEX_RTMR1};
use crate::eventlog::{EventLogError, EV_EFI_SPDM_FIRMWARE_BLOB, EV_NO_ACTION};
use crate::evidence::tests::{blobs, bound_pair, bundle};
use crate::evidence::{sha384, transcript_digest, RecordType, HEADER_BYTES};
use crate::report::{FunctionId, TdiState};

const SEPARATOR: u32 = 4;

/// A log and, beside it, the registers it must replay to, extended here without the parser.
struct TestLog {
    w: LogWriter,
    rtmr: [[u8; 48]; 4],
}

impl TestLog {
    fn new() -> TestLog {
        TestLog { w: LogWriter::new(), rtmr: [[0; 48]; 4] }
    }

    fn event(&mut self, mr_index: u32, event_type: u32, digest: [u8; 48], data: &[u8]) -> &mut Self {
        self.w.event(mr_index, event_type, &digest, data);
        if event_type != EV_NO_ACTION {
            let r = &mut self.rtmr[mr_index as usize - 1];
            *r = Sha384::new().chain_update(*r).chain_update(digest).finalize().into();
        }
        self
    }

    fn measure(&mut self, mr_index: u32, event_type: u32, data: &[u8]) -> &mut Self {
        self.event(mr_index, event_type, Sha384::digest(data).into(), data)
    }

    fn device(&mut self, d: &DeviceMeasurement) -> &mut Self {
        for (t, data) in device_events(d) {
            self.measure(MR_INDEX_RTMR1, t, &data);
        }
        self
    }

    /// What SEC and TdTcg2Dxe log before any device: the platform id, RTMR[0]'s events.
    fn boot() -> TestLog {
        let mut l = TestLog::new();
        l.w.no_action(b"SP800-155 Event2");
        l.event(1, 0x8000_000A, [0x33; 48], b"CFV").measure(1, 0x8000_0001, b"SecureBoot");
        l
    }
}

/// What the firmware measures of device entry `d` of [`bound_pair`]'s report.
fn measured(d: u8, function_id: u64) -> DeviceMeasurement {
    let b = blobs(d);
    DeviceMeasurement {
        function_id,
        spdm_version: 0x12,
        cert_chain_sha384: sha384(&b[0].1),
        transcript_sha384: transcript_digest(&b[1].1, &b[2].1),
        interface_report: b[3].1.clone(),
        pci: crate::eventlog::writer::QEMU_NVME_PCI,
    }
}

const DEV0: u64 = 0x0100_0100;
const DEV1: u64 = 0x0101_0208;

/// The genuine log: boot events, both devices of the report, then the 0xFF of the area.
fn genuine() -> TestLog {
    let mut l = TestLog::boot();
    l.device(&measured(0, DEV0)).device(&measured(1, DEV1));
    l
}

/// The report signed over `log`'s registers, and its bound bundle.
fn report_for(log: &TestLog) -> (Report, Vec<u8>) {
    let (mut r, b) = bound_pair();
    r.td.rtmr = log.rtmr;
    (r, b)
}

fn check(v: &Verdict<EVENT_LOG_CHECKS>, id: &str) -> Check {
    *v.checks().iter().find(|c| c.id.to_string() == id).unwrap_or_else(|| panic!("no check {id}"))
}

fn failures(v: &Verdict<EVENT_LOG_CHECKS>) -> Vec<String> {
    v.failures().map(|c| c.id.to_string()).collect()
}

/// Verifies `log` against the report of `signed` (the registers it was signed over).
fn run_with(signed: &TestLog, log: &[u8], bundle: Option<&[u8]>) -> Verdict<EVENT_LOG_CHECKS> {
    let (r, _) = report_for(signed);
    verify_event_log(&r, bundle, log)
}

fn run(l: &TestLog) -> Verdict<EVENT_LOG_CHECKS> {
    let (r, b) = report_for(l);
    verify_event_log(&r, Some(&b), &l.w.finish_in_area(0x10000))
}

#[test]
fn eventlog_rejects_a_malformed_log_and_fails_every_check() {
    let l = genuine();
    let (r, b) = report_for(&l);
    let mut bytes = l.w.finish();
    bytes[65] = 9; // the first event's MR index
    let v = verify_event_log(&r, Some(&b), &bytes);
    assert_eq!(v.checks().len(), 1 + 4 + 1 + 2 * 3);
    assert!(v.checks().iter().all(|c| c.status == Status::Fail), "{:?}", v.checks());
    assert_eq!(
        check(&v, "eventlog.format").actual,
        Value::EventLog(EventLogError::MrIndexOutOfRange { offset: 65, index: 9, event_type: EV_NO_ACTION })
    );
    assert_eq!(check(&v, "device1.event.interface_report").reason, "CC event log malformed");
}

#[test]
fn eventlog_rejects_a_log_that_does_not_replay_rtmr1() {
    let signed = genuine();
    let mut other = TestLog::boot();
    other.device(&measured(0, DEV0)).device(&measured(1, DEV1)).measure(3, 0x8000_0007, b"a late event");
    // Same RTMR[1] events, RTMR[2] differs: only rtmr2 fails.
    let v = run_with(&signed, &other.w.finish(), Some(&report_for(&signed).1));
    assert_eq!(failures(&v), ["eventlog.rtmr2"]);
    // RTMR[1] extended once more than the report says.
    let mut late = genuine();
    late.measure(MR_INDEX_RTMR1, SEPARATOR, &[0; 4]);
    let v = run_with(&signed, &late.w.finish(), Some(&report_for(&signed).1));
    assert_eq!(failures(&v), ["eventlog.rtmr1"]);
    let c = check(&v, "eventlog.rtmr1");
    assert_eq!((c.expected, c.actual), (Value::bytes(&signed.rtmr[1]), Value::bytes(&late.rtmr[1])));
    assert!(c.reason.contains("device evidence"), "{}", c.reason);
    // A log without the devices' events: RTMR[1] differs and each device misses its events.
    let v = run_with(&signed, &TestLog::boot().w.finish(), Some(&report_for(&signed).1));
    assert_eq!(
        failures(&v),
        [
            "eventlog.rtmr1",
            "device0.event.cert_chain",
            "device0.event.measurements",
            "device0.event.interface_report",
            "device1.event.cert_chain",
            "device1.event.measurements",
            "device1.event.interface_report",
        ]
    );
    assert_eq!(check(&v, "device0.event.cert_chain").reason, "no event in the log for a device in RUN");
}

#[test]
fn eventlog_rejects_an_rtmr0_mismatch_and_skips_an_rtmr3_it_does_not_describe() {
    let l = genuine();
    let (mut r, b) = report_for(&l);
    r.td.rtmr[0][0] ^= 1;
    let v = verify_event_log(&r, Some(&b), &l.w.finish());
    assert_eq!(failures(&v), ["eventlog.rtmr0"]);
    // RTMR[3] extended by the OS, never logged by the firmware: skipped, said why.
    let (mut r, b) = report_for(&l);
    r.td.rtmr[3] = [0x99; 48];
    let v = verify_event_log(&r, Some(&b), &l.w.finish());
    assert!(v.verified());
    let c = check(&v, "eventlog.rtmr3");
    assert_eq!(c.status, Status::Skipped);
    assert!(c.reason.contains("outside the firmware's log"));
    // Once the log has RTMR[3] events, they must replay.
    let mut with3 = genuine();
    with3.measure(4, 0x8000_0007, b"rtmr3");
    let v = verify_event_log(&r, Some(&b), &with3.w.finish());
    assert_eq!(failures(&v), ["eventlog.rtmr3"]);
}

/// One device event replaced by `event` (type, data, digest logged, MR index), the report
/// signed over the result: only the SPDM checks can fail.
fn with_event(replace: usize, mr_index: u32, event_type: u32, digest: Option<[u8; 48]>, data: &[u8]) -> TestLog {
    let mut l = TestLog::boot();
    let events = device_events(&measured(0, DEV0));
    for (i, (t, d)) in events.iter().enumerate() {
        if i == replace {
            l.event(mr_index, event_type, digest.unwrap_or_else(|| Sha384::digest(data).into()), data);
        } else {
            l.measure(MR_INDEX_RTMR1, *t, d);
        }
    }
    l.device(&measured(1, DEV1));
    l
}

#[test]
fn eventlog_rejects_each_refused_spdm_event_in_check_order() {
    let [(t0, chain), _, _] = device_events(&measured(0, DEV0));
    let fault = |l: &TestLog| {
        let v = run(l);
        assert_eq!(
            failures(&v),
            ["eventlog.spdm_events", "device0.event.cert_chain"],
            "{:?}",
            v.failures().collect::<Vec<_>>()
        );
        assert_eq!(check(&v, "device0.event.cert_chain").actual, Value::Text("no event"));
        match check(&v, "eventlog.spdm_events").actual {
            Value::SpdmEvent(f) => f,
            other => panic!("{other:?}"),
        }
    };
    let off = 65 + (66 + 16) + (66 + 3) + (66 + 10); // after the platform id and RTMR[0]'s events
    assert_eq!(fault(&with_event(0, 1, t0, None, &chain)), SpdmEventFault::NotRtmr1 { offset: off, mr_index: 1 });
    assert_eq!(
        fault(&with_event(0, MR_INDEX_RTMR1, t0, Some([0xc0; 48]), &chain)),
        SpdmEventFault::DigestMismatch { offset: off }
    );
    let mut unauthenticated = chain.clone();
    unauthenticated[18] = 1;
    assert_eq!(
        fault(&with_event(0, MR_INDEX_RTMR1, t0, None, &unauthenticated)),
        SpdmEventFault::Malformed { offset: off, error: SpdmEventError::AuthState(1) }
    );
    let stranger = device_events(&measured(0, 0x0300)).into_iter().next().unwrap().1;
    assert_eq!(
        fault(&with_event(0, MR_INDEX_RTMR1, t0, None, &stranger)),
        SpdmEventFault::UnknownFunction { offset: off, function_id: 0x0300 }
    );
    // Segment 1 named without the valid bit names no function (the TSM refuses it too).
    let no_valid_bit = device_events(&measured(0, 0x0001_0208)).into_iter().next().unwrap().1;
    assert!(matches!(
        fault(&with_event(0, MR_INDEX_RTMR1, t0, None, &no_valid_bit)),
        SpdmEventFault::UnknownFunction { function_id: 0x0001_0208, .. }
    ));
}

#[test]
fn eventlog_rejects_a_device_event_that_disagrees_with_the_report_or_the_bundle() {
    // Logged twice.
    let mut twice = genuine();
    twice.device(&measured(0, DEV0));
    let v = run(&twice);
    assert_eq!(
        failures(&v),
        ["device0.event.cert_chain", "device0.event.measurements", "device0.event.interface_report"]
    );
    assert_eq!(check(&v, "device0.event.measurements").actual, Value::Dec(2));

    // Another SPDM version than the report's: the two SPDM sub-headers say so.
    let mut old = measured(1, DEV1);
    old.spdm_version = 0x11;
    let mut l = TestLog::boot();
    l.device(&measured(0, DEV0)).device(&old);
    let v = run(&l);
    assert_eq!(failures(&v), ["device1.event.cert_chain", "device1.event.measurements"]);
    assert_eq!(check(&v, "device1.event.cert_chain").actual, Value::Hex(0x11));

    // Digests that are not the report's.
    let mut lying = measured(0, DEV0);
    lying.cert_chain_sha384 = [0xaa; 48];
    lying.transcript_sha384 = [0xbb; 48];
    lying.interface_report.push(0);
    let mut l = TestLog::boot();
    l.device(&lying).device(&measured(1, DEV1));
    let v = run(&l);
    assert_eq!(
        failures(&v),
        ["device0.event.cert_chain", "device0.event.measurements", "device0.event.interface_report"]
    );
    let c = check(&v, "device0.event.cert_chain");
    assert_eq!((c.actual, c.reason), (Value::bytes(&[0xaa; 48]), "the event's digest is not the report's"));
    assert_eq!(check(&v, "device0.event.interface_report").actual, Value::bytes(&sha384(&lying.interface_report)));
}

#[test]
fn eventlog_rejects_a_bundle_that_is_not_the_events() {
    let l = genuine();
    let (r, good) = report_for(&l);
    let log = l.w.finish();
    // No bundle.
    let v = verify_event_log(&r, None, &log);
    assert_eq!(failures(&v).len(), 6);
    assert_eq!(check(&v, "device1.event.measurements").reason, "no evidence bundle to bind the event to");
    // A bundle without device 1's VCA.
    let b0 = blobs(0);
    let b1 = blobs(1);
    let mut recs: Vec<(u16, u16, &[u8])> = b0.iter().map(|(k, d)| (*k as u16, 0, d.as_slice())).collect();
    recs.extend(b1.iter().filter(|(k, _)| *k != RecordType::Vca).map(|(k, d)| (*k as u16, 1, d.as_slice())));
    let v = verify_event_log(&r, Some(&bundle(&recs)), &log);
    assert_eq!(failures(&v), ["device1.event.measurements"]);
    assert_eq!(check(&v, "device1.event.measurements").actual, Value::Text("vca"));
    // A bundle whose blobs differ from the events (and so from the report): each one named.
    let mut other: Vec<(u16, u16, Vec<u8>)> = Vec::new();
    for d in 0..2u8 {
        for (k, mut data) in blobs(d) {
            if d == 0 {
                data[0] ^= 1;
            }
            other.push((k as u16, u16::from(d), data));
        }
    }
    let refs: Vec<(u16, u16, &[u8])> = other.iter().map(|(k, d, v)| (*k, *d, v.as_slice())).collect();
    let v = verify_event_log(&r, Some(&bundle(&refs)), &log);
    assert_eq!(
        failures(&v),
        ["device0.event.cert_chain", "device0.event.measurements", "device0.event.interface_report"]
    );
    assert_eq!(
        check(&v, "device0.event.cert_chain").reason,
        "the bundle's certificate chain does not hash to the event's digest"
    );
    assert_eq!(check(&v, "device0.event.interface_report").reason, "the event's interface report is not the bundle's");
    // A bundle that does not parse counts as none.
    let v = verify_event_log(&r, Some(&good[..HEADER_BYTES - 1]), &log);
    assert_eq!(failures(&v).len(), 6);
}

#[test]
fn eventlog_skips_a_device_not_in_run_without_events_and_checks_one_with_them() {
    let mut l = TestLog::boot();
    l.device(&measured(0, DEV0));
    let (mut r, b) = report_for(&l);
    r.devices[1].set_tdi_state(TdiState::ConfigLocked);
    let v = verify_event_log(&r, Some(&b), &l.w.finish());
    assert!(v.verified(), "{:?}", v.failures().collect::<Vec<_>>());
    assert_eq!(check(&v, "device1.event.cert_chain").status, Status::Skipped);
    // The function named without the valid bit in segment 0 is the report's function.
    let mut l = TestLog::boot();
    l.device(&measured(0, 0x0100)).device(&measured(1, DEV1));
    assert!(run(&l).verified());
}

#[test]
fn eventlog_happy_path_passes_every_check() {
    let l = genuine();
    let v = run(&l);
    assert!(v.verified(), "{:?}", v.failures().collect::<Vec<_>>());
    let ids: Vec<String> = v.checks().iter().map(|c| c.id.to_string()).collect();
    let mut want = vec!["eventlog.format", "eventlog.rtmr0", "eventlog.rtmr1", "eventlog.rtmr2", "eventlog.rtmr3"];
    want.push("eventlog.spdm_events");
    for d in 0..2 {
        for b in ["cert_chain", "measurements", "interface_report"] {
            want.push(Box::leak(format!("device{d}.event.{b}").into_boxed_str()));
        }
    }
    assert_eq!(ids, want);
    assert!(v.checks().iter().all(|c| c.status == Status::Pass && c.id.layer() == Layer::EventLog));
    assert_eq!(check(&v, "eventlog.format").actual, Value::Dec(9));
    assert_eq!(check(&v, "eventlog.spdm_events").actual, Value::Dec(6));
    let (r, _) = report_for(&l);
    let c = check(&v, "device1.event.interface_report");
    assert_eq!((c.expected, c.actual), (Value::bytes(&r.devices[1].interface_report_sha384), c.expected));
    // The capacity holds four devices.
    let (mut r4, b) = report_for(&l);
    let d = r4.devices[0];
    let mut ds = [d; 4];
    for (i, e) in ds.iter_mut().enumerate() {
        e.set_function_id(FunctionId::new(0, 0x0100 + i as u16));
    }
    r4.set_devices(&ds).unwrap();
    assert_eq!(verify_event_log(&r4, Some(&b), &l.w.finish()).checks().len(), EVENT_LOG_CHECKS);
}

#[test]
fn every_bit_flip_of_the_device_events_is_caught() {
    let l = genuine();
    let (r, b) = report_for(&l);
    let log = l.w.finish();
    let first_device = log.len()
        - device_events(&measured(0, DEV0))
            .iter()
            .chain(&device_events(&measured(1, DEV1)))
            .map(|(_, d)| 66 + d.len())
            .sum::<usize>();
    assert_eq!(log[first_device..first_device + 4], MR_INDEX_RTMR1.to_le_bytes());
    assert_eq!(log[first_device + 4..first_device + 8], EV_EFI_SPDM_FIRMWARE_BLOB.to_le_bytes());
    for at in first_device..log.len() {
        for bit in [0, 3, 7] {
            let mut bad = log.clone();
            bad[at] ^= 1 << bit;
            let v = verify_event_log(&r, Some(&b), &bad);
            assert!(!v.verified(), "byte {at} bit {bit} passed");
        }
    }
}
