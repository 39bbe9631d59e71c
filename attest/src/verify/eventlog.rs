//! Layer 4: the TD's CC event log against the signed report and the evidence bundle.
//!
//! The log is unsigned: it is believed only as far as it replays to the RTMRs the TSM signed.
//! Once it does, the SPDM events in RTMR[1] are what the TD's firmware measured when it
//! accepted its devices, and each is checked against the report's device entry and the bundle.
//!
//! Which registers must replay (`eventlog.rtmrN`): RTMR[0], RTMR[1] and RTMR[2] fail on a
//! mismatch. TdTcg2Dxe logs every extend it makes to them (SEC's events through the HOB, its
//! own and every `HashLogExtendEvent`; nothing in this firmware passes EFI_CC_FLAG_EXTEND_ONLY),
//! and the firmware hands the log over with the report, so a mismatch means either a log of
//! another boot or moment, or an extend the log hides; either way the log does not describe
//! this report. RTMR[3] is not the firmware's: TDVF never extends it, and the OS and its
//! applications extend it with logs of their own. So RTMR[3] is compared only when the log has
//! events for it; a log without any and a report whose RTMR[3] is not zero is skipped, with
//! the reason, not failed.

use super::{CheckId, SpdmEventFault, Status, Value, Verdict};
use crate::eventlog::spdm::{Payload, SpdmEvent};
use crate::eventlog::{Event, EventLog};
use crate::evidence::{sha384, transcript_digest, Blob, Evidence, RecordType, BLOBS};
use crate::report::{DeviceEntry, Report, TdiState, DIGEST_BYTES, MAX_DEVICES, RTMRS};

/// Checks of an event-log verdict: format, four registers, the SPDM events, three per device.
pub const EVENT_LOG_CHECKS: usize = 1 + RTMRS + 1 + MAX_DEVICES * BLOBS.len();

/// The CC MR index of RTMR[1], where the firmware logs its devices (PCR 2).
const RTMR1_MR_INDEX: u32 = 2;
/// The TDISP FUNCTION_ID's valid bit (24) and its RID and segment (23:0).
const FUNCTION_ID_BITS: u64 = 0x01FF_FFFF;
const FUNCTION_ID_VALID: u64 = 1 << 24;

const MALFORMED: &str = "CC event log malformed";

/// Checks `log` against `report` and, when given, the evidence bundle's bytes (its format and
/// binding to the report are layer 1's and 3's checks; a bundle that does not parse counts as
/// none here). Every check is recorded, in the order of the module documentation.
pub fn verify_event_log(report: &Report, evidence: Option<&[u8]>, log: &[u8]) -> Verdict<EVENT_LOG_CHECKS> {
    let mut v = Verdict::new();
    let evidence = evidence.and_then(|b| Evidence::parse(b).ok());
    let expected = Value::Text("TCG2 crypto-agile log, SHA-384 only");
    let log = match EventLog::parse(log) {
        Ok(log) => {
            let events = log.events().count() as u64;
            v.push(CheckId::EventLogFormat, Status::Pass, expected, Value::Dec(events), "events, well-formed");
            log
        }
        Err(e) => {
            v.push(CheckId::EventLogFormat, Status::Fail, expected, Value::EventLog(e), MALFORMED);
            for (i, rtmr) in report.td.rtmr.iter().enumerate() {
                v.push(CheckId::EventLogRtmr(i as u8), Status::Fail, Value::bytes(rtmr), Value::None, MALFORMED);
            }
            v.push(CheckId::EventLogSpdmEvents, Status::Fail, Value::None, Value::None, MALFORMED);
            for (i, entry) in report.devices().iter().enumerate() {
                for blob in BLOBS {
                    let expected = Value::bytes(report_digest(entry, blob));
                    v.push(CheckId::DeviceEvent(i as u8, blob), Status::Fail, expected, Value::None, MALFORMED);
                }
            }
            return v;
        }
    };
    registers(&mut v, report, &log);
    spdm_events(&mut v, report, &log);
    for (i, entry) in report.devices().iter().enumerate() {
        for blob in BLOBS {
            device_event(&mut v, i, entry, blob, &log, evidence.as_ref());
        }
    }
    v
}

/// `eventlog.rtmr0` .. `eventlog.rtmr3`.
fn registers(v: &mut Verdict<EVENT_LOG_CHECKS>, report: &Report, log: &EventLog<'_>) {
    let replay = log.replay();
    for i in 0..RTMRS {
        let (signed, replayed) = (&report.td.rtmr[i], &replay.rtmr[i]);
        let id = CheckId::EventLogRtmr(i as u8);
        let (expected, actual) = (Value::bytes(signed), Value::bytes(replayed));
        if signed == replayed {
            v.push(id, Status::Pass, expected, actual, "the log replays to the report's register");
        } else if i == 3 && replay.extends[3] == 0 {
            let why = "RTMR[3] is extended outside the firmware's log (the OS's and applications' register)";
            v.push(id, Status::Skipped, expected, actual, why);
        } else {
            let why = match i {
                1 => "the log's RTMR[1] events (the device evidence) do not replay to the report's RTMR[1]",
                _ => "the log's events do not replay to the report's register: not this report's log",
            };
            v.push(id, Status::Fail, expected, actual, why);
        }
    }
}

/// The requester (segment, RID) a TDISP function id names, as the TSM compares them
/// (`tsm::pdev::requester`): the firmware logs the id the host gave it, which names its function
/// with or without the valid bit when the segment is 0.
fn requester(id: u64) -> Option<(u8, u16)> {
    if id & !FUNCTION_ID_BITS != 0 {
        return None;
    }
    let segment = ((id >> 16) & 0xFF) as u8;
    if segment != 0 && id & FUNCTION_ID_VALID == 0 {
        return None;
    }
    Some((segment, (id & 0xFFFF) as u16))
}

fn names(entry: &DeviceEntry, function_id: u64) -> bool {
    requester(function_id).is_some_and(|r| requester(u64::from(entry.function_id().0)) == Some(r))
}

/// An SPDM event as `eventlog.spdm_events` judges it: accepted, or its first fault (register,
/// digest, data, function, in that order).
fn judge<'a>(report: &Report, e: &Event<'a>) -> Result<SpdmEvent<'a>, SpdmEventFault> {
    let event = accept(e)?;
    if !report.devices().iter().any(|d| names(d, event.function_id)) {
        return Err(SpdmEventFault::UnknownFunction { offset: e.offset, function_id: event.function_id });
    }
    Ok(event)
}

/// [`judge`] without the function: the register, the digest, the data.
fn accept<'a>(e: &Event<'a>) -> Result<SpdmEvent<'a>, SpdmEventFault> {
    let offset = e.offset;
    if e.mr_index != RTMR1_MR_INDEX {
        return Err(SpdmEventFault::NotRtmr1 { offset, mr_index: e.mr_index });
    }
    if sha384(e.data) != e.digest {
        return Err(SpdmEventFault::DigestMismatch { offset });
    }
    SpdmEvent::parse(e.event_type, e.data).map_err(|error| SpdmEventFault::Malformed { offset, error })
}

/// `eventlog.spdm_events`.
fn spdm_events(v: &mut Verdict<EVENT_LOG_CHECKS>, report: &Report, log: &EventLog<'_>) {
    let expected = Value::Text("each in RTMR[1], hashing to its digest, naming a device of the report");
    let (mut count, mut first) = (0u64, None);
    for e in log.events().filter(Event::is_spdm) {
        count += 1;
        if let Err(fault) = judge(report, &e) {
            first.get_or_insert(fault);
        }
    }
    match first {
        None => {
            v.push(CheckId::EventLogSpdmEvents, Status::Pass, expected, Value::Dec(count), "SPDM events, all accepted")
        }
        Some(fault) => v.push(
            CheckId::EventLogSpdmEvents,
            Status::Fail,
            expected,
            Value::SpdmEvent(fault),
            "an SPDM event is refused (the first shown)",
        ),
    }
}

fn report_digest(entry: &DeviceEntry, blob: Blob) -> &[u8; DIGEST_BYTES] {
    match blob {
        Blob::CertChain => &entry.cert_chain_sha384,
        Blob::Measurements => &entry.measurements_transcript_sha384,
        Blob::InterfaceReport => &entry.interface_report_sha384,
    }
}

fn blob_of(payload: &Payload<'_>) -> Blob {
    match payload {
        Payload::CertChain { .. } => Blob::CertChain,
        Payload::Measurements { .. } => Blob::Measurements,
        Payload::InterfaceReport(_) => Blob::InterfaceReport,
    }
}

/// What the event says of the blob: the digest it carries, or the report's SHA-384.
fn event_digest(payload: &Payload<'_>) -> [u8; DIGEST_BYTES] {
    match payload {
        Payload::CertChain { digest, .. } | Payload::Measurements { digest } => *digest,
        Payload::InterfaceReport(bytes) => sha384(bytes),
    }
}

/// The bundle against the event: `Ok` if they agree, else the reason and what the bundle holds.
fn against_bundle(
    evidence: Option<&Evidence<'_>>,
    device: usize,
    payload: &Payload<'_>,
) -> Result<(), (&'static str, Value)> {
    let Some(e) = evidence else {
        return Err(("no evidence bundle to bind the event to", Value::None));
    };
    let missing = |kind: RecordType| ("the bundle has no record for the event", Value::Text(kind.name()));
    match payload {
        Payload::CertChain { digest, .. } => {
            let chain = e.get(RecordType::CertChain, device).ok_or_else(|| missing(RecordType::CertChain))?;
            let got = sha384(chain);
            if got != *digest {
                return Err(("the bundle's certificate chain does not hash to the event's digest", Value::bytes(&got)));
            }
            Ok(())
        }
        Payload::Measurements { digest } => {
            let vca = e.get(RecordType::Vca, device).ok_or_else(|| missing(RecordType::Vca))?;
            let meas = e.get(RecordType::Measurements, device).ok_or_else(|| missing(RecordType::Measurements))?;
            let got = transcript_digest(vca, meas);
            if got != *digest {
                return Err((
                    "the bundle's VCA and measurements do not hash to the event's digest",
                    Value::bytes(&got),
                ));
            }
            Ok(())
        }
        Payload::InterfaceReport(bytes) => {
            let ir = e.get(RecordType::InterfaceReport, device).ok_or_else(|| missing(RecordType::InterfaceReport))?;
            if ir != *bytes {
                return Err(("the event's interface report is not the bundle's", Value::bytes(&sha384(ir))));
            }
            Ok(())
        }
    }
}

/// `deviceN.event.<blob>`.
fn device_event(
    v: &mut Verdict<EVENT_LOG_CHECKS>,
    i: usize,
    entry: &DeviceEntry,
    blob: Blob,
    log: &EventLog<'_>,
    evidence: Option<&Evidence<'_>>,
) {
    let id = CheckId::DeviceEvent(i as u8, blob);
    let want = report_digest(entry, blob);
    let expected = Value::bytes(want);
    let report_of = |e: &SpdmEvent<'_>| names(entry, e.function_id) && blob_of(&e.payload) == blob;
    // Only events `eventlog.spdm_events` accepts count; a refused one fails that check.
    let mut events = log.events().filter(Event::is_spdm).filter_map(|e| accept(&e).ok()).filter(report_of);
    let Some(event) = events.next() else {
        return match entry.tdi_state() {
            Some(TdiState::Run) => {
                v.push(id, Status::Fail, expected, Value::Text("no event"), "no event in the log for a device in RUN")
            }
            _ => v.push(id, Status::Skipped, expected, Value::Text("no event"), "device not in RUN, no event logged"),
        };
    };
    let others = events.count() as u64;
    if others > 0 {
        return v.push(id, Status::Fail, expected, Value::Dec(others + 1), "logged more than once: events");
    }
    if blob != Blob::InterfaceReport && event.spdm_version != u16::from(entry.spdm_version) {
        let (want, got) = (Value::SpdmVersion(entry.spdm_version), Value::Hex(u64::from(event.spdm_version)));
        return v.push(id, Status::Fail, want, got, "the event's SPDM version is not the report's");
    }
    let got = event_digest(&event.payload);
    let actual = Value::bytes(&got);
    if got != *want {
        return v.push(id, Status::Fail, expected, actual, "the event's digest is not the report's");
    }
    match against_bundle(evidence, i, &event.payload) {
        Ok(()) => v.push(id, Status::Pass, expected, actual, "the event, the report and the bundle agree"),
        Err((why, bundle)) => v.push(id, Status::Fail, expected, bundle, why),
    }
}
