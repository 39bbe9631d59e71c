//! The verification engine: checks a report and its evidence in layers and records every check,
//! pass, fail or skipped, with a stable id, the expected and actual values and a reason. It never
//! stops at the first failure, and it allocates nothing (the result is a fixed-capacity list), so
//! it runs anywhere the crate does.
//!
//! Layers, in output order:
//!
//! 1. Report integrity: `report.signature` (under the verifying key the caller trusts),
//!    `report.nonce` (skipped when no nonce is given), `report.device_count`, `evidence.format`,
//!    `evidence.unassigned_records`.
//! 2. TSM and TD against the [`Policy`]: `tsm.svn`, `tsm.mrseam`, `td.mrtd`, `td.rtmr0` ..
//!    `td.rtmr3`, `td.attributes`, `td.xfam`.
//! 3. Per device entry N in the report: `deviceN.function_id`, `deviceN.state`,
//!    `deviceN.lock_flags`, `deviceN.spdm_version`, `deviceN.algorithms.{base_asym, base_hash,
//!    measurement_hash, dhe, aead, key_schedule, measurement_spec}`,
//!    `deviceN.binding.{cert_chain, measurements, interface_report}`.
//! 4. With a CC event log ([`verify_event_log`], a verdict of its own): `eventlog.format`,
//!    `eventlog.rtmr0` .. `eventlog.rtmr3` (the log replayed against the report's registers),
//!    `eventlog.spdm_events`, and per device entry N `deviceN.event.{cert_chain, measurements,
//!    interface_report}` (the firmware's SPDM events against the report and the bundle).
//!
//! Not checked here: the device certificate chain to the device vendor's root, the device's SPDM
//! signature over its measurement transcript, each measurement index against reference values,
//! and the interface report's MMIO ranges and attributes. They need X.509 and reference values of
//! any size, so the host runs them (`crate::host::device`, feature `std`: ids
//! `deviceN.cert_chain.*`, `deviceN.measurements.*`, `deviceN.measurement.<index>`,
//! `deviceN.interface_report.*`), and the `attest` tool lists them after this engine's checks. A
//! verdict of this engine alone means: the TSM vouches for these devices and these exact blobs.

mod check;
mod eventlog;
#[cfg(test)]
mod eventlog_tests;
mod policy;
#[cfg(test)]
mod tests;

pub use check::{
    Algorithm, Check, CheckId, DeviceCheck, Layer, SpdmEventFault, Status, Value, ALGORITHMS, DEVICE_CHECKS,
};
pub use eventlog::{verify_event_log, EVENT_LOG_CHECKS};
pub use policy::{AllowedAlgorithms, DevicePolicy, MaskedValue, Policy};

use sha2::{Digest, Sha384};

use crate::evidence::{self, Binding, Blob, Evidence, BLOBS};
use crate::report::{DeviceEntry, Report, TdiState, DIGEST_BYTES, MAX_DEVICES, REPORT_DATA_BYTES, RTMRS};
use crate::sign::{self, VerifyingKey};

/// What to verify: a parsed report, its evidence bundle's bytes, the key the caller trusts, and
/// the nonce the caller gave the TD.
#[derive(Clone, Copy, Debug)]
pub struct Inputs<'a> {
    /// The report (parse it with [`Report::parse`] first: a report that does not parse is
    /// unusable input, not a failed check).
    pub report: &'a Report,
    /// The evidence bundle's bytes, if any.
    pub evidence: Option<&'a [u8]>,
    /// The TSM attestation key, already trusted by the caller (chain checks are the caller's).
    pub key: &'a VerifyingKey,
    /// The nonce, compared with all 64 bytes of report data; `None` skips `report.nonce`.
    pub nonce: Option<&'a [u8; REPORT_DATA_BYTES]>,
}

/// Checks of layers 1 and 2: five integrity checks, two TSM, seven TD.
pub const REPORT_CHECKS: usize = 5 + 2 + 3 + RTMRS;
/// Checks in the largest possible verdict.
pub const MAX_CHECKS: usize = REPORT_CHECKS + MAX_DEVICES * DEVICE_CHECKS.len();

/// Every check of one verification, in layer order, in a list of fixed capacity `N` (the
/// report's layers: [`MAX_CHECKS`]; the event log's: [`EVENT_LOG_CHECKS`]).
#[derive(Clone, Debug)]
pub struct Verdict<const N: usize = MAX_CHECKS> {
    checks: [Check; N],
    len: usize,
}

impl<const N: usize> Verdict<N> {
    fn new() -> Verdict<N> {
        Verdict { checks: [Check::EMPTY; N], len: 0 }
    }

    fn push(&mut self, id: CheckId, status: Status, expected: Value, actual: Value, reason: &'static str) {
        // N counts every check its verification can emit (a test holds each to that), so the
        // list never fills; if it did, the last slot turns into a failure rather than a panic or
        // a silently dropped check.
        let check = Check { id, status, expected, actual, reason };
        match self.checks.get_mut(self.len) {
            Some(slot) => {
                *slot = check;
                self.len += 1;
            }
            None => {
                if let Some(last) = self.checks.last_mut() {
                    *last = Check { status: Status::Fail, reason: "verdict overflowed: checks lost", ..check };
                }
            }
        }
    }

    fn compare(&mut self, id: CheckId, ok: bool, expected: Value, actual: Value, fail: &'static str) {
        if ok {
            self.push(id, Status::Pass, expected, actual, "matches");
        } else {
            self.push(id, Status::Fail, expected, actual, fail);
        }
    }

    /// Every check, in layer order.
    pub fn checks(&self) -> &[Check] {
        &self.checks[..self.len]
    }

    /// The check with `id`, if it was run or skipped.
    pub fn get(&self, id: CheckId) -> Option<&Check> {
        self.checks().iter().find(|c| c.id == id)
    }

    /// The failed checks.
    pub fn failures(&self) -> impl Iterator<Item = &Check> {
        self.checks().iter().filter(|c| c.status == Status::Fail)
    }

    /// True if no check failed. Skipped checks do not fail a verdict; they are listed with their
    /// reason so that the caller sees what was not checked.
    pub fn verified(&self) -> bool {
        self.failures().next().is_none()
    }
}

/// SHA-384 of the key's uncompressed SEC1 encoding: how tools name the key they trusted.
pub fn key_fingerprint(key: &VerifyingKey) -> [u8; DIGEST_BYTES] {
    Sha384::digest(key.to_sec1_point(false).as_bytes()).into()
}

/// Runs every check on `inputs` under `policy`, checking the report signature with
/// [`sign::verify`] under `inputs.key`.
pub fn verify(inputs: &Inputs<'_>, policy: &Policy) -> Verdict {
    verify_with(inputs, policy, &|report| sign::verify(report, inputs.key))
}

/// [`verify`] with another implementation of the report-signature check: a host tool plugs in
/// ring here. `check_signature` must check the report's signature under `inputs.key` (and
/// nothing else); every other check is the same code.
pub fn verify_with(
    inputs: &Inputs<'_>,
    policy: &Policy,
    check_signature: &dyn Fn(&Report) -> Result<(), sign::SignatureError>,
) -> Verdict {
    let mut v = Verdict::new();
    let report = inputs.report;
    let evidence = integrity(&mut v, inputs, policy, check_signature);
    identity(&mut v, report, policy);
    for (i, entry) in report.devices().iter().enumerate() {
        device(&mut v, report, i, entry, policy.devices.get(i).copied().flatten(), evidence.as_ref());
    }
    v
}

/// Layer 1. Returns the bundle when it parsed.
fn integrity<'a>(
    v: &mut Verdict,
    inputs: &Inputs<'a>,
    policy: &Policy,
    check_signature: &dyn Fn(&Report) -> Result<(), sign::SignatureError>,
) -> Result<Evidence<'a>, &'static str> {
    let report = inputs.report;
    let expected = Value::Text("ECDSA P-384 signature by the given key");
    match check_signature(report) {
        Ok(()) => v.push(CheckId::ReportSignature, Status::Pass, expected, Value::Text("valid"), "signature verifies"),
        Err(e) => v.push(CheckId::ReportSignature, Status::Fail, expected, Value::Signature(e), "signature invalid"),
    }

    let actual = Value::bytes(&report.report_data);
    match inputs.nonce {
        Some(nonce) => v.compare(
            CheckId::ReportNonce,
            *nonce == report.report_data,
            Value::bytes(nonce),
            actual,
            "stale or foreign report",
        ),
        None => {
            v.push(CheckId::ReportNonce, Status::Skipped, Value::None, actual, "no nonce given: freshness not checked")
        }
    }

    let wanted = policy.devices.iter().filter(|d| d.is_some()).count() as u64;
    let count = u64::from(report.header.device_count());
    v.compare(
        CheckId::ReportDeviceCount,
        count == wanted,
        Value::Dec(wanted),
        Value::Dec(count),
        "assigned devices differ from the policy's",
    );

    let needs = if report.devices().is_empty() { "no bundle needed" } else { "bundle given" };
    let evidence = match inputs.evidence {
        Some(bytes) => match Evidence::parse(bytes) {
            Ok(e) => {
                v.push(
                    CheckId::EvidenceFormat,
                    Status::Pass,
                    Value::Text("well-formed bundle"),
                    Value::Text("well-formed"),
                    needs,
                );
                Ok(e)
            }
            Err(err) => {
                let reason = "evidence bundle malformed";
                v.push(
                    CheckId::EvidenceFormat,
                    Status::Fail,
                    Value::Text("well-formed bundle"),
                    Value::Evidence(err),
                    reason,
                );
                Err("evidence bundle malformed")
            }
        },
        None if report.devices().is_empty() => {
            v.push(CheckId::EvidenceFormat, Status::Skipped, Value::None, Value::None, "no devices and no bundle");
            Err("no evidence bundle given")
        }
        None => {
            let expected = Value::Text("a bundle for the report's devices");
            v.push(
                CheckId::EvidenceFormat,
                Status::Fail,
                expected,
                Value::Text("none given"),
                "devices without evidence",
            );
            Err("no evidence bundle given")
        }
    };

    match &evidence {
        Ok(e) => {
            let expected = Value::Text("records only for devices in the report");
            match evidence::unassigned_record(report, e) {
                None => v.push(CheckId::EvidenceUnassigned, Status::Pass, expected, Value::Text("none"), "matches"),
                Some(r) => v.push(
                    CheckId::EvidenceUnassigned,
                    Status::Fail,
                    expected,
                    Value::Dec(u64::from(r.device)),
                    "bundle has a record for a device the report does not list",
                ),
            }
        }
        Err(why) => v.push(CheckId::EvidenceUnassigned, Status::Skipped, Value::None, Value::None, why),
    }
    evidence
}

/// Layer 2.
fn identity(v: &mut Verdict, report: &Report, policy: &Policy) {
    let svn = u64::from(report.tsm.svn());
    match policy.min_tsm_svn {
        Some(min) => {
            let min = u64::from(min);
            v.compare(CheckId::TsmSvn, svn >= min, Value::AtLeast(min), Value::Dec(svn), "TSM SVN below the minimum")
        }
        None => v.push(CheckId::TsmSvn, Status::Skipped, Value::None, Value::Dec(svn), "policy sets no minimum"),
    }
    let mr_seam = Value::bytes(&report.tsm.mr_seam);
    match &policy.mr_seam {
        Some(want) => v.compare(
            CheckId::TsmMrSeam,
            *want == report.tsm.mr_seam,
            Value::bytes(want),
            mr_seam,
            "unexpected TSM image",
        ),
        None => v.push(CheckId::TsmMrSeam, Status::Skipped, Value::None, mr_seam, "policy sets no value"),
    }
    v.compare(
        CheckId::TdMrTd,
        policy.mr_td == report.td.mr_td,
        Value::bytes(&policy.mr_td),
        Value::bytes(&report.td.mr_td),
        "unexpected TD image",
    );
    for (i, (want, got)) in policy.rtmr.iter().zip(report.td.rtmr.iter()).enumerate() {
        let id = CheckId::TdRtmr(i as u8);
        match want {
            Some(want) => {
                v.compare(id, want == got, Value::bytes(want), Value::bytes(got), "unexpected run-time measurement")
            }
            None => v.push(id, Status::Skipped, Value::None, Value::bytes(got), "policy sets no value"),
        }
    }
    let attributes = report.td.attributes();
    v.compare(
        CheckId::TdAttributes,
        policy.attributes.holds(attributes),
        Value::Masked { mask: policy.attributes.mask, value: policy.attributes.value },
        Value::Hex(attributes),
        "TD attributes outside the policy",
    );
    let xfam = report.td.xfam();
    match policy.xfam {
        Some(want) => v.compare(
            CheckId::TdXfam,
            want.holds(xfam),
            Value::Masked { mask: want.mask, value: want.value },
            Value::Hex(xfam),
            "XFAM outside the policy",
        ),
        None => v.push(CheckId::TdXfam, Status::Skipped, Value::None, Value::Hex(xfam), "policy sets no value"),
    }
}

fn algorithm_ok(allowed: u64, got: u64) -> bool {
    if allowed == 0 {
        got == 0
    } else {
        got.count_ones() == 1 && got & allowed != 0
    }
}

/// Layer 3, for device entry `i`.
fn device(
    v: &mut Verdict,
    report: &Report,
    i: usize,
    entry: &DeviceEntry,
    policy: Option<DevicePolicy>,
    evidence: Result<&Evidence<'_>, &&'static str>,
) {
    let id = |c| CheckId::Device(i as u8, c);
    const NO_POLICY: &str = "no policy for this device entry";

    let fid = entry.function_id();
    match policy.map(|p| p.function_id) {
        Some(Some(want)) => v.compare(
            id(DeviceCheck::FunctionId),
            want == fid,
            Value::FunctionId(want),
            Value::FunctionId(fid),
            "another function than the policy names",
        ),
        Some(None) => v.push(
            id(DeviceCheck::FunctionId),
            Status::Skipped,
            Value::None,
            Value::FunctionId(fid),
            "policy names no function",
        ),
        None => v.push(id(DeviceCheck::FunctionId), Status::Fail, Value::None, Value::FunctionId(fid), NO_POLICY),
    }

    let state = match entry.tdi_state() {
        Some(s) => Value::Text(s.name()),
        None => Value::Dec(u64::from(entry.tdi_state)),
    };
    v.compare(
        id(DeviceCheck::State),
        entry.tdi_state() == Some(TdiState::Run),
        Value::Text(TdiState::Run.name()),
        state,
        "the TD has not accepted the interface, or it failed",
    );

    let flags = u64::from(entry.lock_flags());
    match policy {
        Some(p) => {
            let need = u64::from(p.required_lock_flags);
            v.compare(
                id(DeviceCheck::LockFlags),
                flags & need == need,
                Value::BitsSet(need),
                Value::Hex(flags),
                "lock flags missing",
            )
        }
        None => v.push(id(DeviceCheck::LockFlags), Status::Fail, Value::None, Value::Hex(flags), NO_POLICY),
    }

    let version = Value::SpdmVersion(entry.spdm_version);
    match policy {
        Some(p) => v.compare(
            id(DeviceCheck::SpdmVersion),
            entry.spdm_version >= p.min_spdm_version,
            Value::SpdmVersion(p.min_spdm_version),
            version,
            "SPDM version below the minimum",
        ),
        None => v.push(id(DeviceCheck::SpdmVersion), Status::Fail, Value::None, version, NO_POLICY),
    }

    let got = entry.algorithms();
    for a in ALGORITHMS {
        let actual = match a {
            Algorithm::BaseAsym => u64::from(got.base_asym),
            Algorithm::BaseHash => u64::from(got.base_hash),
            Algorithm::MeasurementHash => u64::from(got.measurement_hash),
            Algorithm::Dhe => u64::from(got.dhe),
            Algorithm::Aead => u64::from(got.aead),
            Algorithm::KeySchedule => u64::from(got.key_schedule),
            Algorithm::MeasurementSpec => u64::from(got.measurement_spec),
        };
        let check = id(DeviceCheck::Algorithm(a));
        let Some(p) = policy else {
            v.push(check, Status::Fail, Value::None, Value::Hex(actual), NO_POLICY);
            continue;
        };
        let allowed = match a {
            Algorithm::BaseAsym => u64::from(p.algorithms.base_asym),
            Algorithm::BaseHash => u64::from(p.algorithms.base_hash),
            Algorithm::MeasurementHash => u64::from(p.algorithms.measurement_hash),
            Algorithm::Dhe => u64::from(p.algorithms.dhe),
            Algorithm::Aead => u64::from(p.algorithms.aead),
            Algorithm::KeySchedule => u64::from(p.algorithms.key_schedule),
            Algorithm::MeasurementSpec => u64::from(p.algorithms.measurement_spec),
        };
        v.compare(
            check,
            algorithm_ok(allowed, actual),
            Value::OneBitOf(allowed),
            Value::Hex(actual),
            "algorithm not allowed",
        );
    }

    let check = id(DeviceCheck::MeasurementsInSession);
    let at = Value::Text(if entry.measured_in_session() { "inside the session" } else { "in the clear" });
    match policy {
        Some(p) if p.measurements_in_session => v.compare(
            check,
            entry.measured_in_session(),
            Value::Text("inside the session"),
            at,
            "measured in the clear, before KEY_EXCHANGE",
        ),
        Some(_) => v.push(check, Status::Skipped, Value::None, at, "policy does not require the session"),
        None => v.push(check, Status::Fail, Value::None, at, NO_POLICY),
    }

    for blob in BLOBS {
        let check = id(DeviceCheck::Binding(blob));
        let digest = match blob {
            Blob::CertChain => &entry.cert_chain_sha384,
            Blob::Measurements => &entry.measurements_transcript_sha384,
            Blob::InterfaceReport => &entry.interface_report_sha384,
        };
        let expected = Value::bytes(digest);
        match evidence {
            Err(why) => v.push(check, Status::Fail, expected, Value::None, why),
            Ok(e) => match evidence::blob_binding(report, e, i, blob) {
                Binding::Bound(d) => {
                    v.push(check, Status::Pass, expected, Value::bytes(&d), "blob hashes to the report's digest")
                }
                Binding::Missing(kind) => {
                    v.push(check, Status::Fail, expected, Value::Text(kind.name()), "record missing")
                }
                Binding::Mismatch { actual, .. } => v.push(
                    check,
                    Status::Fail,
                    expected,
                    Value::bytes(&actual),
                    "blob does not hash to the report's digest",
                ),
            },
        }
    }
}
