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
//!
//! Not checked yet, and therefore not emitted (a check that is not run is not listed as passed):
//! the device certificate chain to the device vendor's root, the device's SPDM signature over its
//! measurement transcript, each measurement index against reference values, and the interface
//! report's MMIO ranges and attributes. They need the device protocol parsers and X.509; each will
//! arrive as more [`DeviceCheck`] variants (`deviceN.cert_chain.root`,
//! `deviceN.measurements.signature`, `deviceN.measurement.<index>`,
//! `deviceN.interface_report.<property>`) without changing the existing ids. Until then a
//! verdict of "verified" means: the TSM vouches for these devices and these exact blobs.

use core::fmt;

use sha2::{Digest, Sha384};

use crate::evidence::{self, Binding, Blob, Evidence, EvidenceError, BLOBS};
use crate::report::{DeviceEntry, FunctionId, Report, TdiState, DIGEST_BYTES, MAX_DEVICES, REPORT_DATA_BYTES, RTMRS};
use crate::sign::{self, SignatureError, VerifyingKey};

/// Which layer a check belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layer {
    /// The report and bundle themselves: signature, freshness, shape.
    Integrity,
    /// The TSM and TD identities against the policy.
    Identity,
    /// One assigned device.
    Device,
}

/// One SPDM algorithm field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    /// BaseAsymSel.
    BaseAsym,
    /// BaseHashSel.
    BaseHash,
    /// MeasurementHashAlgo.
    MeasurementHash,
    /// DHE group.
    Dhe,
    /// AEAD cipher suite.
    Aead,
    /// Key schedule.
    KeySchedule,
    /// MeasurementSpecificationSel.
    MeasurementSpec,
}

/// Every algorithm field, in check order.
pub const ALGORITHMS: [Algorithm; 7] = [
    Algorithm::BaseAsym,
    Algorithm::BaseHash,
    Algorithm::MeasurementHash,
    Algorithm::Dhe,
    Algorithm::Aead,
    Algorithm::KeySchedule,
    Algorithm::MeasurementSpec,
];

impl Algorithm {
    /// The name used in check ids.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::BaseAsym => "base_asym",
            Algorithm::BaseHash => "base_hash",
            Algorithm::MeasurementHash => "measurement_hash",
            Algorithm::Dhe => "dhe",
            Algorithm::Aead => "aead",
            Algorithm::KeySchedule => "key_schedule",
            Algorithm::MeasurementSpec => "measurement_spec",
        }
    }
}

/// A check on one device entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceCheck {
    /// The function id is the one the policy names.
    FunctionId,
    /// The TDI is in RUN.
    State,
    /// Every lock flag the policy requires is set.
    LockFlags,
    /// The SPDM version is at least the policy's minimum.
    SpdmVersion,
    /// The negotiated algorithm is one the policy allows.
    Algorithm(Algorithm),
    /// The bundle's blob hashes to the report's digest.
    Binding(Blob),
}

/// Every device check, in output order.
pub const DEVICE_CHECKS: [DeviceCheck; 14] = [
    DeviceCheck::FunctionId,
    DeviceCheck::State,
    DeviceCheck::LockFlags,
    DeviceCheck::SpdmVersion,
    DeviceCheck::Algorithm(Algorithm::BaseAsym),
    DeviceCheck::Algorithm(Algorithm::BaseHash),
    DeviceCheck::Algorithm(Algorithm::MeasurementHash),
    DeviceCheck::Algorithm(Algorithm::Dhe),
    DeviceCheck::Algorithm(Algorithm::Aead),
    DeviceCheck::Algorithm(Algorithm::KeySchedule),
    DeviceCheck::Algorithm(Algorithm::MeasurementSpec),
    DeviceCheck::Binding(Blob::CertChain),
    DeviceCheck::Binding(Blob::Measurements),
    DeviceCheck::Binding(Blob::InterfaceReport),
];

/// A check's stable id. Its [`fmt::Display`] form (`td.rtmr2`, `device0.binding.cert_chain`) is
/// the id tools print and policies will name; it never changes meaning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckId {
    /// `report.signature`.
    ReportSignature,
    /// `report.nonce`.
    ReportNonce,
    /// `report.device_count`.
    ReportDeviceCount,
    /// `evidence.format`.
    EvidenceFormat,
    /// `evidence.unassigned_records`.
    EvidenceUnassigned,
    /// `tsm.svn`.
    TsmSvn,
    /// `tsm.mrseam`.
    TsmMrSeam,
    /// `td.mrtd`.
    TdMrTd,
    /// `td.rtmrN`.
    TdRtmr(u8),
    /// `td.attributes`.
    TdAttributes,
    /// `td.xfam`.
    TdXfam,
    /// `deviceN.<check>`.
    Device(u8, DeviceCheck),
}

impl CheckId {
    /// The layer the check belongs to.
    pub fn layer(self) -> Layer {
        match self {
            CheckId::ReportSignature
            | CheckId::ReportNonce
            | CheckId::ReportDeviceCount
            | CheckId::EvidenceFormat
            | CheckId::EvidenceUnassigned => Layer::Integrity,
            CheckId::TsmSvn
            | CheckId::TsmMrSeam
            | CheckId::TdMrTd
            | CheckId::TdRtmr(_)
            | CheckId::TdAttributes
            | CheckId::TdXfam => Layer::Identity,
            CheckId::Device(..) => Layer::Device,
        }
    }
}

impl fmt::Display for CheckId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckId::ReportSignature => f.write_str("report.signature"),
            CheckId::ReportNonce => f.write_str("report.nonce"),
            CheckId::ReportDeviceCount => f.write_str("report.device_count"),
            CheckId::EvidenceFormat => f.write_str("evidence.format"),
            CheckId::EvidenceUnassigned => f.write_str("evidence.unassigned_records"),
            CheckId::TsmSvn => f.write_str("tsm.svn"),
            CheckId::TsmMrSeam => f.write_str("tsm.mrseam"),
            CheckId::TdMrTd => f.write_str("td.mrtd"),
            CheckId::TdRtmr(i) => write!(f, "td.rtmr{i}"),
            CheckId::TdAttributes => f.write_str("td.attributes"),
            CheckId::TdXfam => f.write_str("td.xfam"),
            CheckId::Device(i, c) => {
                write!(f, "device{i}.")?;
                match c {
                    DeviceCheck::FunctionId => f.write_str("function_id"),
                    DeviceCheck::State => f.write_str("state"),
                    DeviceCheck::LockFlags => f.write_str("lock_flags"),
                    DeviceCheck::SpdmVersion => f.write_str("spdm_version"),
                    DeviceCheck::Algorithm(a) => write!(f, "algorithms.{}", a.name()),
                    DeviceCheck::Binding(b) => write!(f, "binding.{}", b.name()),
                }
            }
        }
    }
}

/// Outcome of one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// The check ran and held.
    Pass,
    /// The check ran and did not hold.
    Fail,
    /// The check did not run; the reason says why (no nonce given, no policy value).
    Skipped,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Pass => "pass",
            Status::Fail => "fail",
            Status::Skipped => "skipped",
        })
    }
}

/// An expected or actual value, held inline (no heap). [`fmt::Display`] renders it for people
/// and JSON alike: hex bytes lowercase, integers in hex unless they are counts or versions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Value {
    /// Nothing to show.
    None,
    /// Up to 64 bytes, shown as hex.
    Bytes {
        /// Bytes in use.
        len: u8,
        /// The bytes.
        bytes: [u8; REPORT_DATA_BYTES],
    },
    /// An integer shown in hex.
    Hex(u64),
    /// An integer shown in decimal.
    Dec(u64),
    /// `value` under `mask`: the bits of `mask` must equal those of `value`.
    Masked {
        /// The bits that matter.
        mask: u64,
        /// Their required values.
        value: u64,
    },
    /// All these bits set.
    BitsSet(u64),
    /// Exactly one bit, which must be in this set (zero: nothing may be negotiated).
    OneBitOf(u64),
    /// At least this many.
    AtLeast(u64),
    /// An SPDM version byte (major << 4 | minor).
    SpdmVersion(u8),
    /// A PCIe function id.
    FunctionId(FunctionId),
    /// Fixed text.
    Text(&'static str),
    /// The signature error found.
    Signature(SignatureError),
    /// The bundle format error found.
    Evidence(EvidenceError),
}

impl Value {
    /// Bytes as a value (at most 64 are kept).
    pub fn bytes(b: &[u8]) -> Value {
        let len = b.len().min(REPORT_DATA_BYTES);
        let mut bytes = [0u8; REPORT_DATA_BYTES];
        bytes[..len].copy_from_slice(&b[..len]);
        Value::Bytes { len: len as u8, bytes }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::None => f.write_str("-"),
            Value::Bytes { len, bytes } => {
                for b in &bytes[..usize::from(*len)] {
                    write!(f, "{b:02x}")?;
                }
                Ok(())
            }
            Value::Hex(v) => write!(f, "{v:#x}"),
            Value::Dec(v) => write!(f, "{v}"),
            Value::Masked { mask, value } => write!(f, "{value:#x} under mask {mask:#x}"),
            Value::BitsSet(v) => write!(f, "bits {v:#x} set"),
            Value::OneBitOf(0) => f.write_str("none negotiated (0)"),
            Value::OneBitOf(v) => write!(f, "one bit of {v:#x}"),
            Value::AtLeast(v) => write!(f, ">= {v}"),
            Value::SpdmVersion(v) => write!(f, "{}.{}", v >> 4, v & 0xf),
            Value::FunctionId(id) => write!(f, "{id} ({:#010x})", id.0),
            Value::Text(t) => f.write_str(t),
            Value::Signature(e) => write!(f, "{e}"),
            Value::Evidence(e) => write!(f, "{e}"),
        }
    }
}

/// One check's record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Check {
    /// Stable id.
    pub id: CheckId,
    /// Outcome.
    pub status: Status,
    /// What the policy or the report requires.
    pub expected: Value,
    /// What was found.
    pub actual: Value,
    /// Why, in a few words.
    pub reason: &'static str,
}

impl Check {
    const EMPTY: Check = Check {
        id: CheckId::ReportSignature,
        status: Status::Skipped,
        expected: Value::None,
        actual: Value::None,
        reason: "",
    };
}

/// Bits of an integer field that must match a value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MaskedValue {
    /// The bits that matter (zero: anything goes).
    pub mask: u64,
    /// Their required values (bits outside `mask` are ignored).
    pub value: u64,
}

impl MaskedValue {
    fn holds(self, v: u64) -> bool {
        v & self.mask == self.value & self.mask
    }
}

/// The SPDM algorithms a device may have negotiated. Each field is a set of allowed selections
/// in the ALGORITHMS encoding; a device's selection passes if it is exactly one bit and that bit
/// is in the set. A set of zero means the device must have negotiated nothing there (a device
/// without key exchange selects no DHE, AEAD or key schedule).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllowedAlgorithms {
    /// Allowed BaseAsymSel bits.
    pub base_asym: u32,
    /// Allowed BaseHashSel bits.
    pub base_hash: u32,
    /// Allowed MeasurementHashAlgo bits.
    pub measurement_hash: u32,
    /// Allowed DHE bits.
    pub dhe: u16,
    /// Allowed AEAD bits.
    pub aead: u16,
    /// Allowed key schedule bits.
    pub key_schedule: u16,
    /// Allowed MeasurementSpecificationSel bits.
    pub measurement_spec: u8,
}

/// What a device entry must show.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DevicePolicy {
    /// The function the entry must name; `None` skips `deviceN.function_id`.
    pub function_id: Option<FunctionId>,
    /// TDISP lock flags that must all be set (NO_FW_UPDATE is 0x1).
    pub required_lock_flags: u16,
    /// Lowest SPDM version accepted (0x12 is 1.2).
    pub min_spdm_version: u8,
    /// Allowed algorithms.
    pub algorithms: AllowedAlgorithms,
}

/// What the verifier requires of a report. Plain Rust for now; a TOML form comes with the CLI.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Lowest TSM SVN accepted; `None` skips `tsm.svn`.
    pub min_tsm_svn: Option<u16>,
    /// The TSM measurement required; `None` skips `tsm.mrseam`.
    pub mr_seam: Option<[u8; DIGEST_BYTES]>,
    /// The TD's build measurement. Always checked: a TD of unknown content is never verified.
    pub mr_td: [u8; DIGEST_BYTES],
    /// Run-time measurement registers required; `None` skips that `td.rtmrN`.
    pub rtmr: [Option<[u8; DIGEST_BYTES]>; RTMRS],
    /// TD attributes (a mask of zero accepts any).
    pub attributes: MaskedValue,
    /// XFAM; `None` skips `td.xfam`.
    pub xfam: Option<MaskedValue>,
    /// Per device entry, in report order. The report must have exactly as many devices as there
    /// are `Some` entries; a device entry without a policy fails its policy checks.
    pub devices: [Option<DevicePolicy>; MAX_DEVICES],
}

impl Policy {
    /// A policy that requires `mr_td`, attributes as given, and no devices, and leaves every
    /// optional check skipped.
    pub fn new(mr_td: [u8; DIGEST_BYTES], attributes: MaskedValue) -> Policy {
        Policy {
            min_tsm_svn: None,
            mr_seam: None,
            mr_td,
            rtmr: [None; RTMRS],
            attributes,
            xfam: None,
            devices: [None; MAX_DEVICES],
        }
    }
}

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

/// Every check of one verification, in layer order.
#[derive(Clone, Debug)]
pub struct Verdict {
    checks: [Check; MAX_CHECKS],
    len: usize,
}

impl Verdict {
    fn new() -> Verdict {
        Verdict { checks: [Check::EMPTY; MAX_CHECKS], len: 0 }
    }

    fn push(&mut self, id: CheckId, status: Status, expected: Value, actual: Value, reason: &'static str) {
        // MAX_CHECKS counts every check verify() can emit (a test holds it to that), so the
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

/// Runs every check on `inputs` under `policy`.
pub fn verify(inputs: &Inputs<'_>, policy: &Policy) -> Verdict {
    let mut v = Verdict::new();
    let report = inputs.report;
    let evidence = integrity(&mut v, inputs, policy);
    identity(&mut v, report, policy);
    for (i, entry) in report.devices().iter().enumerate() {
        device(&mut v, report, i, entry, policy.devices.get(i).copied().flatten(), evidence.as_ref());
    }
    v
}

/// Layer 1. Returns the bundle when it parsed.
fn integrity<'a>(v: &mut Verdict, inputs: &Inputs<'a>, policy: &Policy) -> Result<Evidence<'a>, &'static str> {
    let report = inputs.report;
    let expected = Value::Text("ECDSA P-384 signature by the given key");
    match sign::verify(report, inputs.key) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evidence::tests::{bound_pair, bundle};
    use crate::sign::{derive_attestation_key, sign, SigningKey};

    const NONCE: [u8; 64] = [0xda; 64];

    fn key() -> SigningKey {
        derive_attestation_key(&[7; 32], &[0x5e; 48])
    }

    fn good_device_policy(d: &DeviceEntry) -> DevicePolicy {
        DevicePolicy {
            function_id: Some(d.function_id()),
            required_lock_flags: 0x1,
            min_spdm_version: 0x12,
            algorithms: AllowedAlgorithms {
                base_asym: 0x80 | 0x10,
                base_hash: 0x02,
                measurement_hash: 0x04,
                dhe: 0x10,
                aead: 0x02,
                key_schedule: 0x01,
                measurement_spec: 0x01,
            },
        }
    }

    /// A signed report, its bundle, and a policy everything passes.
    fn fixture() -> (Report, Vec<u8>, Policy) {
        let (mut r, b) = bound_pair();
        sign(&mut r, &key()).unwrap();
        let mut p = Policy::new(r.td.mr_td, MaskedValue { mask: 0x1000_0001, value: 0x1000_0000 });
        p.min_tsm_svn = Some(7);
        p.mr_seam = Some(r.tsm.mr_seam);
        p.rtmr = [Some(r.td.rtmr[0]), Some(r.td.rtmr[1]), Some(r.td.rtmr[2]), Some(r.td.rtmr[3])];
        p.xfam = Some(MaskedValue { mask: u64::MAX, value: 0xe7 });
        for (slot, d) in p.devices.iter_mut().zip(r.devices()) {
            *slot = Some(good_device_policy(d));
        }
        (r, b, p)
    }

    fn run(r: &Report, b: Option<&[u8]>, p: &Policy, nonce: Option<&[u8; 64]>) -> Verdict {
        let k = key();
        verify(&Inputs { report: r, evidence: b, key: k.verifying_key(), nonce }, p)
    }

    fn ids(v: &Verdict) -> Vec<String> {
        v.checks().iter().map(|c| c.id.to_string()).collect()
    }

    #[test]
    fn happy_path_passes_every_check() {
        let (r, b, p) = fixture();
        let v = run(&r, Some(&b), &p, Some(&NONCE));
        for c in v.checks() {
            assert_eq!(c.status, Status::Pass, "{} {} {} {}", c.id, c.expected, c.actual, c.reason);
        }
        assert!(v.verified());
        assert_eq!(v.checks().len(), REPORT_CHECKS + 2 * DEVICE_CHECKS.len());
        let ids = ids(&v);
        assert_eq!(ids[..4], ["report.signature", "report.nonce", "report.device_count", "evidence.format"]);
        assert!(ids.contains(&"td.rtmr3".to_string()));
        assert!(ids.contains(&"device1.algorithms.measurement_spec".to_string()));
        assert_eq!(ids.last().unwrap(), "device1.binding.interface_report");
        // Ids are unique.
        let mut sorted = ids.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), ids.len());
    }

    #[test]
    fn every_id_has_its_layer_and_the_capacity_fits_four_devices() {
        let (mut r, _, mut p) = fixture();
        let d = r.devices[0];
        r.set_devices(&[d; MAX_DEVICES]).unwrap();
        p.devices = [Some(good_device_policy(&d)); MAX_DEVICES];
        let v = run(&r, None, &p, None);
        assert_eq!(v.checks().len(), MAX_CHECKS);
        let layers: Vec<Layer> = v.checks().iter().map(|c| c.id.layer()).collect();
        let mut sorted = layers.clone();
        sorted.sort_by_key(|l| *l as u8);
        assert_eq!(layers, sorted, "checks come out in layer order");
        assert!(v.checks().iter().all(|c| !c.reason.is_empty()));
    }

    #[test]
    fn skipped_checks_say_why() {
        let (r, b, mut p) = fixture();
        p.min_tsm_svn = None;
        p.mr_seam = None;
        p.rtmr = [None; 4];
        p.xfam = None;
        p.devices[0] = Some(DevicePolicy { function_id: None, ..p.devices[0].unwrap() });
        let v = run(&r, Some(&b), &p, None);
        assert!(v.verified());
        let skipped: Vec<String> =
            v.checks().iter().filter(|c| c.status == Status::Skipped).map(|c| c.id.to_string()).collect();
        assert_eq!(
            skipped,
            [
                "report.nonce",
                "tsm.svn",
                "tsm.mrseam",
                "td.rtmr0",
                "td.rtmr1",
                "td.rtmr2",
                "td.rtmr3",
                "td.xfam",
                "device0.function_id"
            ]
        );
        assert_eq!(v.get(CheckId::ReportNonce).unwrap().reason, "no nonce given: freshness not checked");
    }

    /// Runs the fixture with `change` applied (re-signing the report), and checks that exactly
    /// `id` fails, with the expected and actual values rendered as given.
    fn expect_only_failure(id: &str, expected: &str, actual: &str, change: impl FnOnce(&mut Report, &mut Policy)) {
        let (mut r, b, mut p) = fixture();
        change(&mut r, &mut p);
        sign(&mut r, &key()).unwrap();
        let v = run(&r, Some(&b), &p, Some(&NONCE));
        let failed: Vec<String> = v.failures().map(|c| c.id.to_string()).collect();
        assert_eq!(failed, [id], "only {id} fails");
        let c = v.failures().next().unwrap();
        assert_eq!(c.expected.to_string(), expected, "{id} expected");
        assert_eq!(c.actual.to_string(), actual, "{id} actual");
        assert!(!v.verified());
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn each_policy_mismatch_fails_under_its_own_id() {
        expect_only_failure("report.nonce", &hex(&NONCE), &hex(&[0xdb; 64]), |r, _| r.report_data = [0xdb; 64]);
        expect_only_failure("tsm.svn", ">= 8", "7", |_, p| p.min_tsm_svn = Some(8));
        expect_only_failure("tsm.mrseam", &hex(&[1; 48]), &hex(&[0x5e; 48]), |_, p| p.mr_seam = Some([1; 48]));
        expect_only_failure("td.mrtd", &hex(&[2; 48]), &hex(&[0x7d; 48]), |_, p| p.mr_td = [2; 48]);
        for i in 0..4u8 {
            let id = format!("td.rtmr{i}");
            expect_only_failure(&id, &hex(&[0x99; 48]), &hex(&[0x10 + i; 48]), |_, p| {
                p.rtmr[usize::from(i)] = Some([0x99; 48])
            });
        }
        expect_only_failure("td.attributes", "0x1000000000 under mask 0x1000000001", "0x10000000", |_, p| {
            p.attributes = MaskedValue { mask: 0x10_0000_0001, value: 0x10_0000_0000 }
        });
        expect_only_failure("td.attributes", "0x10000000 under mask 0x10000001", "0x10000001", |r, _| {
            r.td.set_attributes(0x1000_0001)
        });
        expect_only_failure("td.xfam", "0xe7 under mask 0xffffffffffffffff", "0xe6", |r, _| r.td.set_xfam(0xe6));
        expect_only_failure("report.device_count", "3", "2", |_, p| p.devices[2] = p.devices[0]);
        expect_only_failure("device1.function_id", "0000:01:00.0 (0x01000100)", "0001:02:01.0 (0x01010208)", |_, p| {
            p.devices[1] = Some(DevicePolicy { function_id: Some(FunctionId::new(0, 0x100)), ..p.devices[1].unwrap() })
        });
        expect_only_failure("device0.state", "RUN", "CONFIG_LOCKED", |r, _| {
            r.devices[0].set_tdi_state(TdiState::ConfigLocked)
        });
        expect_only_failure("device1.state", "RUN", "ERROR", |r, _| r.devices[1].set_tdi_state(TdiState::Error));
        expect_only_failure("device0.lock_flags", "bits 0x5 set", "0x1", |_, p| {
            p.devices[0] = Some(DevicePolicy { required_lock_flags: 0x5, ..p.devices[0].unwrap() })
        });
        expect_only_failure("device1.lock_flags", "bits 0x1 set", "0x4", |r, _| r.devices[1].set_lock_flags(0x4));
        expect_only_failure("device0.spdm_version", "1.3", "1.2", |_, p| {
            p.devices[0] = Some(DevicePolicy { min_spdm_version: 0x13, ..p.devices[0].unwrap() })
        });
        type Poke = fn(&mut DeviceEntry);
        let algos: [(&str, &str, Poke); 7] = [
            ("base_asym", "one bit of 0x90", |d| d.base_asym_algo = 0x20u32.to_le_bytes()),
            ("base_hash", "one bit of 0x2", |d| d.base_hash_algo = 0x01u32.to_le_bytes()),
            ("measurement_hash", "one bit of 0x4", |d| d.measurement_hash_algo = 0x06u32.to_le_bytes()),
            ("dhe", "one bit of 0x10", |d| d.dhe = 0x08u16.to_le_bytes()),
            ("aead", "one bit of 0x2", |d| d.aead = 0u16.to_le_bytes()),
            ("key_schedule", "one bit of 0x1", |d| d.key_schedule = 0x02u16.to_le_bytes()),
            ("measurement_spec", "one bit of 0x1", |d| d.measurement_spec = 0x80),
        ];
        for (name, expected, poke) in algos {
            let mut probe = crate::report::tests::sample().devices[0];
            poke(&mut probe);
            let got = DEVICE_CHECKS.iter().position(|c| *c == DeviceCheck::Algorithm(ALGORITHMS[0])).unwrap();
            assert_eq!(got, 4);
            let a = probe.algorithms();
            let actual = [
                u64::from(a.base_asym),
                u64::from(a.base_hash),
                u64::from(a.measurement_hash),
                u64::from(a.dhe),
                u64::from(a.aead),
                u64::from(a.key_schedule),
                u64::from(a.measurement_spec),
            ][ALGORITHMS.iter().position(|x| x.name() == name).unwrap()];
            expect_only_failure(&format!("device0.algorithms.{name}"), expected, &format!("{actual:#x}"), |r, _| {
                poke(&mut r.devices[0])
            });
        }
    }

    #[test]
    fn a_device_without_policy_fails_its_policy_checks_but_not_the_others() {
        let (r, b, mut p) = fixture();
        p.devices[1] = None;
        p.devices[2] = p.devices[0];
        let v = run(&r, Some(&b), &p, Some(&NONCE));
        let failed: Vec<String> = v.failures().map(|c| c.id.to_string()).collect();
        assert_eq!(failed.len(), 1 + 2 + 7);
        assert!(failed.iter().all(|id| id.starts_with("device1.")));
        assert!(v.failures().all(|c| c.reason == "no policy for this device entry"));
        assert_eq!(v.get(CheckId::Device(1, DeviceCheck::State)).unwrap().status, Status::Pass);
    }

    #[test]
    fn a_foreign_key_fails_the_signature_and_everything_else_still_runs() {
        let (mut r, b, p) = fixture();
        sign(&mut r, &derive_attestation_key(&[8; 32], &[0x5e; 48])).unwrap();
        let v = run(&r, Some(&b), &p, Some(&NONCE));
        let failed: Vec<String> = v.failures().map(|c| c.id.to_string()).collect();
        assert_eq!(failed, ["report.signature"]);
        assert_eq!(v.checks().len(), REPORT_CHECKS + 2 * DEVICE_CHECKS.len());
        let c = v.get(CheckId::ReportSignature).unwrap();
        assert_eq!(c.actual, Value::Signature(SignatureError::Mismatch));
        assert_eq!(c.actual.to_string(), "signature does not verify under the given key");
    }

    #[test]
    fn a_tampered_blob_fails_its_binding_with_both_digests() {
        let (r, mut b, p) = fixture();
        let last = b.len() - 1; // device1's interface report
        b[last] ^= 0x80;
        let v = run(&r, Some(&b), &p, Some(&NONCE));
        let failed: Vec<&Check> = v.failures().collect();
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].id.to_string(), "device1.binding.interface_report");
        assert_eq!(failed[0].expected, Value::bytes(&r.devices[1].interface_report_sha384));
        let tampered = Evidence::parse(&b).unwrap().get(crate::evidence::RecordType::InterfaceReport, 1).unwrap();
        assert_eq!(failed[0].actual, Value::bytes(&evidence::sha384(tampered)));
    }

    #[test]
    fn missing_or_malformed_evidence_fails_every_binding() {
        let (r, b, p) = fixture();
        for (bundle_bytes, format_status) in [(None, Status::Fail), (Some(&b[..b.len() - 1]), Status::Fail)] {
            let v = run(&r, bundle_bytes, &p, Some(&NONCE));
            assert_eq!(v.get(CheckId::EvidenceFormat).unwrap().status, format_status);
            assert_eq!(v.get(CheckId::EvidenceUnassigned).unwrap().status, Status::Skipped);
            let failed: Vec<String> = v.failures().map(|c| c.id.to_string()).collect();
            assert_eq!(failed.len(), 1 + 2 * 3, "{failed:?}");
        }
        let v = run(&r, Some(&b[..b.len() - 1]), &p, Some(&NONCE));
        assert!(matches!(
            v.get(CheckId::EvidenceFormat).unwrap().actual,
            Value::Evidence(EvidenceError::TruncatedRecord { .. })
        ));
    }

    #[test]
    fn records_for_unlisted_devices_fail() {
        let (r, mut b, p) = fixture();
        b.extend_from_slice(&bundle(&[(2, 3, b"vca")])[12..]);
        let v = run(&r, Some(&b), &p, Some(&NONCE));
        let failed: Vec<String> = v.failures().map(|c| c.id.to_string()).collect();
        assert_eq!(failed, ["evidence.unassigned_records"]);
        assert_eq!(v.get(CheckId::EvidenceUnassigned).unwrap().actual, Value::Dec(3));
    }

    #[test]
    fn a_report_without_devices_needs_no_bundle() {
        let (mut r, _, mut p) = fixture();
        r.set_devices(&[]).unwrap();
        sign(&mut r, &key()).unwrap();
        p.devices = [None; MAX_DEVICES];
        let v = run(&r, None, &p, Some(&NONCE));
        assert!(v.verified());
        assert_eq!(v.get(CheckId::EvidenceFormat).unwrap().status, Status::Skipped);
        assert_eq!(v.checks().len(), REPORT_CHECKS);
    }

    #[test]
    fn fingerprint_names_the_key() {
        let a = key_fingerprint(key().verifying_key());
        assert_eq!(a, key_fingerprint(key().verifying_key()));
        assert_ne!(a, key_fingerprint(derive_attestation_key(&[8; 32], &[0x5e; 48]).verifying_key()));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// Any change to a signed report or its bundle that still parses fails at least one check,
        /// and nothing panics.
        #[test]
        fn mutated_inputs_never_verify_and_never_panic(
            report_writes in proptest::collection::vec((0usize..crate::report::REPORT_BYTES, 1u8..=255), 0..3),
            bundle_writes in proptest::collection::vec((proptest::prelude::any::<usize>(), 1u8..=255), 0..3),
            cut in proptest::prelude::any::<Option<usize>>(),
        ) {
            let (r, good_bundle, p) = fixture();
            let mut rb = r.to_bytes();
            for (at, x) in &report_writes {
                rb[*at] ^= x;
            }
            let mut b = good_bundle.clone();
            for (at, x) in &bundle_writes {
                let at = at % b.len();
                b[at] ^= x;
            }
            if let Some(cut) = cut {
                b.truncate(cut % (b.len() + 1));
            }
            if let Ok(parsed) = Report::parse(&rb) {
                let v = run(parsed, Some(&b), &p, Some(&NONCE));
                for c in v.checks() {
                    let _ = (c.id.to_string(), c.expected.to_string(), c.actual.to_string());
                }
                if rb != r.to_bytes() || b != good_bundle {
                    proptest::prop_assert!(!v.verified(), "a changed input verified");
                } else {
                    proptest::prop_assert!(v.verified());
                }
            }
        }
    }
}
