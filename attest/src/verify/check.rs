//! Check ids, statuses and values: the vocabulary of a [`super::Verdict`].

use core::fmt;

use crate::eventlog::spdm::SpdmEventError;
use crate::eventlog::EventLogError;
use crate::evidence::{Blob, EvidenceError};
use crate::report::{FunctionId, REPORT_DATA_BYTES};
use crate::sign::SignatureError;

/// Which layer a check belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layer {
    /// The report and bundle themselves: signature, freshness, shape.
    Integrity,
    /// The TSM and TD identities against the policy.
    Identity,
    /// One assigned device.
    Device,
    /// The CC event log against the report and the bundle.
    EventLog,
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
    /// The measurements were taken inside the SPDM secured session, if the policy requires it
    /// (reported either way).
    MeasurementsInSession,
    /// The bundle's blob hashes to the report's digest.
    Binding(Blob),
}

/// Every device check, in output order.
pub const DEVICE_CHECKS: [DeviceCheck; 15] = [
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
    DeviceCheck::MeasurementsInSession,
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
    /// `eventlog.format`.
    EventLogFormat,
    /// `eventlog.rtmrN`: the log replays to the report's RTMR[N].
    EventLogRtmr(u8),
    /// `eventlog.spdm_events`: every SPDM event is well-formed, in RTMR[1], hashes to its
    /// logged digest and names a device of the report.
    EventLogSpdmEvents,
    /// `deviceN.event.<blob>`: the device's SPDM event agrees with the report and the bundle.
    DeviceEvent(u8, Blob),
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
            CheckId::EventLogFormat
            | CheckId::EventLogRtmr(_)
            | CheckId::EventLogSpdmEvents
            | CheckId::DeviceEvent(..) => Layer::EventLog,
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
                    DeviceCheck::MeasurementsInSession => f.write_str("measurements_in_session"),
                    DeviceCheck::Binding(b) => write!(f, "binding.{}", b.name()),
                }
            }
            CheckId::EventLogFormat => f.write_str("eventlog.format"),
            CheckId::EventLogRtmr(i) => write!(f, "eventlog.rtmr{i}"),
            CheckId::EventLogSpdmEvents => f.write_str("eventlog.spdm_events"),
            CheckId::DeviceEvent(i, b) => write!(f, "device{i}.event.{}", b.name()),
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
    /// The event log format error found.
    EventLog(EventLogError),
    /// What is wrong with an SPDM event of the log.
    SpdmEvent(SpdmEventFault),
}

/// Why an EV_EFI_SPDM_* event of the log is refused (`eventlog.spdm_events`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpdmEventFault {
    /// Its data is not a device event this verifier reads.
    Malformed {
        /// Offset of the event in the log.
        offset: usize,
        /// Why.
        error: SpdmEventError,
    },
    /// It was logged to another register than RTMR[1] (CC MR index 2, PCR 2).
    NotRtmr1 {
        /// Offset of the event in the log.
        offset: usize,
        /// Its CC MR index.
        mr_index: u32,
    },
    /// Its logged digest, the one extended, is not the SHA-384 of its data.
    DigestMismatch {
        /// Offset of the event in the log.
        offset: usize,
    },
    /// Its SubHeaderUID names no device entry of the report.
    UnknownFunction {
        /// Offset of the event in the log.
        offset: usize,
        /// SubHeaderUID.
        function_id: u64,
    },
}

impl fmt::Display for SpdmEventFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            SpdmEventFault::Malformed { offset, error } => write!(f, "event at offset {offset}: {error}"),
            SpdmEventFault::NotRtmr1 { offset, mr_index } => write!(
                f,
                "event at offset {offset} logged to MR index {mr_index} ({}), not 2 (RTMR[1])",
                crate::eventlog::mr_name(mr_index)
            ),
            SpdmEventFault::DigestMismatch { offset } => {
                write!(f, "event at offset {offset}: its logged digest is not the SHA-384 of its data")
            }
            SpdmEventFault::UnknownFunction { offset, function_id } => {
                write!(f, "event at offset {offset} names function {function_id:#x}, which the report does not list")
            }
        }
    }
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
            Value::EventLog(e) => write!(f, "{e}"),
            Value::SpdmEvent(e) => write!(f, "{e}"),
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
    pub(crate) const EMPTY: Check = Check {
        id: CheckId::ReportSignature,
        status: Status::Skipped,
        expected: Value::None,
        actual: Value::None,
        reason: "",
    };
}
