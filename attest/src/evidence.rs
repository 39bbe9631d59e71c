//! The evidence bundle that travels beside a report: per device, the blobs whose SHA-384 digests
//! the report's device entry carries.
//!
//! ```text
//! 0   magic "SEAMEVD\0" (8)
//! 8   version u16 LE = 1
//! 10  reserved u16 = 0
//! 12  records, back to back to the end of the bundle:
//!       type u16 LE | device index u16 LE | length u32 LE | length bytes
//! ```
//!
//! A device has at most one record of each type. The bundle is unsigned: it is trusted only as
//! far as [`binds`] ties each blob to the signed report (and, later, as far as the device's own
//! SPDM signature and certificate chain vouch for it).
//!
//! [`Evidence::parse`] checks the whole bundle once (every length against the buffer, every type,
//! every device index, duplicates, nothing left over); after that, [`Evidence::records`] and
//! [`Evidence::get`] cannot fail. Nothing is copied.

use core::fmt;

use sha2::{Digest, Sha384};

use crate::report::{Report, DIGEST_BYTES, MAX_DEVICES};

/// First 8 bytes of a bundle.
pub const MAGIC: [u8; 8] = *b"SEAMEVD\0";
/// The bundle version this crate writes and reads.
pub const VERSION: u16 = 1;
/// Bytes before the first record.
pub const HEADER_BYTES: usize = 12;
/// Bytes of a record's header (type, device index, length).
pub const RECORD_HEADER_BYTES: usize = 8;

/// What a record holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum RecordType {
    /// The device's SPDM certificate chain, as CERTIFICATE returns it (DSP0274: length, reserved,
    /// root hash, DER certificates root first). Bound by `cert_chain_sha384`.
    CertChain = 1,
    /// The VCA transcript: GET_VERSION, VERSION, GET_CAPABILITIES, CAPABILITIES,
    /// NEGOTIATE_ALGORITHMS, ALGORITHMS, as sent and received. Bound, with the measurements, by
    /// `measurements_transcript_sha384` (see [`transcript_digest`]).
    Vca = 2,
    /// The GET_MEASUREMENTS request and the MEASUREMENTS response including the device's
    /// signature.
    Measurements = 3,
    /// The TDISP DEVICE_INTERFACE_REPORT, all portions joined. Bound by `interface_report_sha384`.
    InterfaceReport = 4,
}

/// Every record type, in type order.
pub const RECORD_TYPES: [RecordType; 4] =
    [RecordType::CertChain, RecordType::Vca, RecordType::Measurements, RecordType::InterfaceReport];

impl RecordType {
    /// The type for a record header's type field, if it names one.
    pub fn from_u16(v: u16) -> Option<RecordType> {
        match v {
            1 => Some(RecordType::CertChain),
            2 => Some(RecordType::Vca),
            3 => Some(RecordType::Measurements),
            4 => Some(RecordType::InterfaceReport),
            _ => None,
        }
    }

    /// A short stable name.
    pub fn name(self) -> &'static str {
        match self {
            RecordType::CertChain => "cert_chain",
            RecordType::Vca => "vca",
            RecordType::Measurements => "measurements",
            RecordType::InterfaceReport => "interface_report",
        }
    }

    fn bit(self, device: usize) -> u32 {
        1 << (device * RECORD_TYPES.len() + (self as usize - 1))
    }
}

/// One record, borrowed from the bundle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    /// What it holds.
    pub kind: RecordType,
    /// The report device entry it belongs to (below [`MAX_DEVICES`]).
    pub device: u8,
    /// Its bytes.
    pub data: &'a [u8],
}

/// Why bytes are not an evidence bundle. Offsets are from the start of the bundle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EvidenceError {
    /// Fewer than [`HEADER_BYTES`] bytes (an empty file lands here).
    TruncatedHeader {
        /// Bytes given.
        found: usize,
    },
    /// The first 8 bytes are not [`MAGIC`].
    BadMagic([u8; 8]),
    /// A version this crate does not read.
    UnsupportedVersion(u16),
    /// The reserved header field is not zero.
    NonZeroReserved(u16),
    /// Between 1 and 7 bytes after the last record: too few for a record header.
    TrailingBytes {
        /// Offset of the leftover bytes.
        offset: usize,
        /// How many there are.
        count: usize,
    },
    /// A record's length runs past the end of the bundle.
    TruncatedRecord {
        /// Offset of the record header.
        offset: usize,
        /// Length the header claims.
        length: u32,
        /// Bytes left after the header.
        available: usize,
    },
    /// A type field that names no [`RecordType`].
    UnknownRecordType {
        /// Offset of the record header.
        offset: usize,
        /// The type found.
        kind: u16,
    },
    /// A device index not below [`MAX_DEVICES`].
    DeviceOutOfRange {
        /// Offset of the record header.
        offset: usize,
        /// The index found.
        device: u16,
    },
    /// A second record of the same type for the same device.
    DuplicateRecord {
        /// Offset of the second record's header.
        offset: usize,
        /// The type.
        kind: RecordType,
        /// The device index.
        device: u8,
    },
}

impl fmt::Display for EvidenceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            EvidenceError::TruncatedHeader { found } => {
                write!(f, "evidence bundle needs a {HEADER_BYTES}-byte header, got {found} bytes")
            }
            EvidenceError::BadMagic(m) => write!(f, "bad evidence magic {m:02x?}, expected \"SEAMEVD\\0\""),
            EvidenceError::UnsupportedVersion(v) => {
                write!(f, "unsupported evidence version {v} (this reader knows {VERSION})")
            }
            EvidenceError::NonZeroReserved(v) => write!(f, "evidence header reserved field is {v:#x}, must be zero"),
            EvidenceError::TrailingBytes { offset, count } => {
                write!(f, "{count} trailing bytes at offset {offset}, too few for a record header")
            }
            EvidenceError::TruncatedRecord { offset, length, available } => {
                write!(f, "record at offset {offset} claims {length} bytes but only {available} follow its header")
            }
            EvidenceError::UnknownRecordType { offset, kind } => {
                write!(f, "record at offset {offset} has unknown type {kind}")
            }
            EvidenceError::DeviceOutOfRange { offset, device } => {
                write!(f, "record at offset {offset} names device {device}, not below {MAX_DEVICES}")
            }
            EvidenceError::DuplicateRecord { offset, kind, device } => {
                write!(f, "record at offset {offset} repeats {} for device {device}", kind.name())
            }
        }
    }
}

impl core::error::Error for EvidenceError {}

fn le16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes([*b.get(at)?, *b.get(at + 1)?, *b.get(at + 2)?, *b.get(at + 3)?]))
}

/// Walks the records of a bundle whose header is already checked, checking each record as it
/// goes. Yields `Err` once and then stops.
#[derive(Clone, Debug)]
pub struct RawRecords<'a> {
    bytes: &'a [u8],
    offset: usize,
    seen: u32,
    failed: bool,
}

impl<'a> RawRecords<'a> {
    fn next_record(&mut self) -> Result<Option<Record<'a>>, EvidenceError> {
        let offset = self.offset;
        let rest = self.bytes.get(offset..).unwrap_or(&[]);
        if rest.is_empty() {
            return Ok(None);
        }
        let (Some(kind), Some(device), Some(length)) = (le16(rest, 0), le16(rest, 2), le32(rest, 4)) else {
            return Err(EvidenceError::TrailingBytes { offset, count: rest.len() });
        };
        let body = &rest[RECORD_HEADER_BYTES..];
        let data = usize::try_from(length).ok().and_then(|len| body.get(..len));
        let Some(data) = data else {
            return Err(EvidenceError::TruncatedRecord { offset, length, available: body.len() });
        };
        let Some(kind) = RecordType::from_u16(kind) else {
            return Err(EvidenceError::UnknownRecordType { offset, kind });
        };
        if usize::from(device) >= MAX_DEVICES {
            return Err(EvidenceError::DeviceOutOfRange { offset, device });
        }
        let bit = kind.bit(usize::from(device));
        if self.seen & bit != 0 {
            return Err(EvidenceError::DuplicateRecord { offset, kind, device: device as u8 });
        }
        // All checks passed.
        self.seen |= bit;
        self.offset = offset + RECORD_HEADER_BYTES + data.len();
        Ok(Some(Record { kind, device: device as u8, data }))
    }
}

impl<'a> Iterator for RawRecords<'a> {
    type Item = Result<Record<'a>, EvidenceError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let r = self.next_record();
        self.failed = r.is_err();
        r.transpose()
    }
}

/// A checked evidence bundle, borrowing its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Evidence<'a> {
    bytes: &'a [u8],
}

impl<'a> Evidence<'a> {
    /// Checks `bytes` as a bundle: header, then every record (see [`EvidenceError`]).
    ///
    /// # Errors
    /// The first rule the bytes break, with the offset where.
    pub fn parse(bytes: &'a [u8]) -> Result<Evidence<'a>, EvidenceError> {
        let records = Evidence::raw_records(bytes)?;
        for r in records {
            r?;
        }
        Ok(Evidence { bytes })
    }

    /// Checks only the header and returns the record walker, for callers that want to see the
    /// records before an error further on (a `show` tool).
    ///
    /// # Errors
    /// A header error: [`EvidenceError::TruncatedHeader`], [`EvidenceError::BadMagic`],
    /// [`EvidenceError::UnsupportedVersion`] or [`EvidenceError::NonZeroReserved`].
    pub fn raw_records(bytes: &'a [u8]) -> Result<RawRecords<'a>, EvidenceError> {
        let Some(header) = bytes.get(..HEADER_BYTES) else {
            return Err(EvidenceError::TruncatedHeader { found: bytes.len() });
        };
        let mut magic = [0u8; 8];
        magic.copy_from_slice(&header[..8]);
        if magic != MAGIC {
            return Err(EvidenceError::BadMagic(magic));
        }
        let version = u16::from_le_bytes([header[8], header[9]]);
        if version != VERSION {
            return Err(EvidenceError::UnsupportedVersion(version));
        }
        let reserved = u16::from_le_bytes([header[10], header[11]]);
        if reserved != 0 {
            return Err(EvidenceError::NonZeroReserved(reserved));
        }
        Ok(RawRecords { bytes, offset: HEADER_BYTES, seen: 0, failed: false })
    }

    /// The bundle's bytes.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The records, in bundle order.
    pub fn records(&self) -> impl Iterator<Item = Record<'a>> + 'a {
        // parse() walked these same bytes without error, so no Err can come; map_while ends the
        // walk rather than panicking if one ever did.
        let walk = RawRecords { bytes: self.bytes, offset: HEADER_BYTES, seen: 0, failed: false };
        walk.map_while(Result::ok)
    }

    /// The record of type `kind` for `device`, if the bundle has one.
    pub fn get(&self, kind: RecordType, device: usize) -> Option<&'a [u8]> {
        self.records().find(|r| r.kind == kind && usize::from(r.device) == device).map(|r| r.data)
    }
}

/// SHA-384 of a blob.
pub fn sha384(bytes: &[u8]) -> [u8; DIGEST_BYTES] {
    Sha384::digest(bytes).into()
}

/// The digest a report's `measurements_transcript_sha384` holds: SHA-384 of the VCA length
/// (u32 LE), the VCA bytes, then the measurement exchange bytes. The length keeps the boundary
/// between the two records from moving without changing the digest.
pub fn transcript_digest(vca: &[u8], measurements: &[u8]) -> [u8; DIGEST_BYTES] {
    let mut h = Sha384::new();
    // A VCA of 4 GiB or more cannot come from a bundle, whose lengths are u32.
    h.update((vca.len() as u32).to_le_bytes());
    h.update(vca);
    h.update(measurements);
    h.finalize().into()
}

/// The blobs a device entry's digests bind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blob {
    /// `cert_chain_sha384` over the [`RecordType::CertChain`] record.
    CertChain,
    /// `measurements_transcript_sha384` over the [`RecordType::Vca`] and
    /// [`RecordType::Measurements`] records ([`transcript_digest`]).
    Measurements,
    /// `interface_report_sha384` over the [`RecordType::InterfaceReport`] record.
    InterfaceReport,
}

/// Every blob, in check order.
pub const BLOBS: [Blob; 3] = [Blob::CertChain, Blob::Measurements, Blob::InterfaceReport];

impl Blob {
    /// A short stable name (used in check ids).
    pub fn name(self) -> &'static str {
        match self {
            Blob::CertChain => "cert_chain",
            Blob::Measurements => "measurements",
            Blob::InterfaceReport => "interface_report",
        }
    }
}

/// Whether one blob of one device binds to the report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Binding {
    /// The bundle's bytes hash to the report's digest (which is also the `actual`).
    Bound([u8; DIGEST_BYTES]),
    /// A record the blob needs is absent.
    Missing(RecordType),
    /// The bytes hash to something else.
    Mismatch {
        /// The report's digest.
        expected: [u8; DIGEST_BYTES],
        /// The digest of the bundle's bytes.
        actual: [u8; DIGEST_BYTES],
    },
}

/// Checks one blob of the report's device entry `device` against `evidence`. A `device` past the
/// report's device count compares against an all-zero digest, which no blob has.
pub fn blob_binding(report: &Report, evidence: &Evidence<'_>, device: usize, blob: Blob) -> Binding {
    let entry = report.devices.get(device);
    let (expected, actual) = match blob {
        Blob::CertChain => {
            let Some(chain) = evidence.get(RecordType::CertChain, device) else {
                return Binding::Missing(RecordType::CertChain);
            };
            (entry.map(|e| e.cert_chain_sha384), sha384(chain))
        }
        Blob::Measurements => {
            let Some(vca) = evidence.get(RecordType::Vca, device) else {
                return Binding::Missing(RecordType::Vca);
            };
            let Some(meas) = evidence.get(RecordType::Measurements, device) else {
                return Binding::Missing(RecordType::Measurements);
            };
            (entry.map(|e| e.measurements_transcript_sha384), transcript_digest(vca, meas))
        }
        Blob::InterfaceReport => {
            let Some(ir) = evidence.get(RecordType::InterfaceReport, device) else {
                return Binding::Missing(RecordType::InterfaceReport);
            };
            (entry.map(|e| e.interface_report_sha384), sha384(ir))
        }
    };
    let expected = expected.unwrap_or([0; DIGEST_BYTES]);
    if expected == actual {
        Binding::Bound(actual)
    } else {
        Binding::Mismatch { expected, actual }
    }
}

/// Why a bundle does not bind to a report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BindingError {
    /// A blob of a device in the report is missing or hashes to another digest.
    Blob {
        /// The device entry.
        device: u8,
        /// The blob.
        blob: Blob,
        /// What was found.
        binding: Binding,
    },
    /// The bundle has a record for a device entry the report does not use.
    UnassignedDevice {
        /// The record's device index.
        device: u8,
        /// The record's type.
        kind: RecordType,
    },
}

impl fmt::Display for BindingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BindingError::Blob { device, blob, binding: Binding::Missing(kind) } => {
                write!(f, "device{device}: {} is not bound: no {} record", blob.name(), kind.name())
            }
            BindingError::Blob { device, blob, .. } => {
                write!(f, "device{device}: {} does not hash to the report's digest", blob.name())
            }
            BindingError::UnassignedDevice { device, kind } => {
                write!(f, "{} record for device {device}, which the report does not list", kind.name())
            }
        }
    }
}

impl core::error::Error for BindingError {}

/// Checks that `evidence` is exactly the bundle `report` vouches for: every blob of every device in
/// the report hashes to its digest, and no record belongs to a device the report does not list.
///
/// # Errors
/// The first blob that fails, in device then [`BLOBS`] order, then the first unlisted record. The
/// verifier ([`crate::verify`]) reports all of them instead.
pub fn binds(report: &Report, evidence: &Evidence<'_>) -> Result<(), BindingError> {
    for device in 0..report.devices().len() {
        for blob in BLOBS {
            let binding = blob_binding(report, evidence, device, blob);
            if !matches!(binding, Binding::Bound(_)) {
                return Err(BindingError::Blob { device: device as u8, blob, binding });
            }
        }
    }
    match unassigned_record(report, evidence) {
        Some(r) => Err(BindingError::UnassignedDevice { device: r.device, kind: r.kind }),
        None => Ok(()),
    }
}

/// The first record for a device entry the report does not use.
pub fn unassigned_record<'a>(report: &Report, evidence: &Evidence<'a>) -> Option<Record<'a>> {
    let count = report.devices().len();
    evidence.records().find(|r| usize::from(r.device) >= count)
}

#[cfg(any(feature = "std", test))]
mod writer {
    use super::{RecordType, HEADER_BYTES, MAGIC, VERSION};

    /// Why a record cannot be written.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum WriteError {
        /// The record is 4 GiB or more.
        TooLong(usize),
        /// The device index is not below [`crate::report::MAX_DEVICES`].
        DeviceOutOfRange(u8),
        /// The bundle already has this record for this device.
        Duplicate(RecordType, u8),
    }

    impl core::fmt::Display for WriteError {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            match self {
                WriteError::TooLong(n) => write!(f, "record of {n} bytes does not fit a u32 length"),
                WriteError::DeviceOutOfRange(d) => write!(f, "device index {d} out of range"),
                WriteError::Duplicate(k, d) => write!(f, "second {} record for device {d}", k.name()),
            }
        }
    }

    impl std::error::Error for WriteError {}

    /// Builds a bundle in memory, refusing anything [`super::Evidence::parse`] would reject.
    #[derive(Clone, Debug)]
    pub struct EvidenceWriter {
        bytes: Vec<u8>,
        seen: u32,
    }

    impl Default for EvidenceWriter {
        fn default() -> EvidenceWriter {
            EvidenceWriter::new()
        }
    }

    impl EvidenceWriter {
        /// An empty bundle (header only).
        pub fn new() -> EvidenceWriter {
            let mut bytes = Vec::with_capacity(HEADER_BYTES);
            bytes.extend_from_slice(&MAGIC);
            bytes.extend_from_slice(&VERSION.to_le_bytes());
            bytes.extend_from_slice(&0u16.to_le_bytes());
            EvidenceWriter { bytes, seen: 0 }
        }

        /// Appends a record.
        ///
        /// # Errors
        /// [`WriteError`] if the parser would reject the record; the bundle is then unchanged.
        pub fn push(&mut self, kind: RecordType, device: u8, data: &[u8]) -> Result<&mut Self, WriteError> {
            let length = u32::try_from(data.len()).map_err(|_| WriteError::TooLong(data.len()))?;
            if usize::from(device) >= crate::report::MAX_DEVICES {
                return Err(WriteError::DeviceOutOfRange(device));
            }
            let bit = kind.bit(usize::from(device));
            if self.seen & bit != 0 {
                return Err(WriteError::Duplicate(kind, device));
            }
            // All checks passed.
            self.seen |= bit;
            self.bytes.extend_from_slice(&(kind as u16).to_le_bytes());
            self.bytes.extend_from_slice(&u16::from(device).to_le_bytes());
            self.bytes.extend_from_slice(&length.to_le_bytes());
            self.bytes.extend_from_slice(data);
            Ok(self)
        }

        /// The bundle's bytes.
        pub fn finish(self) -> Vec<u8> {
            self.bytes
        }
    }
}

#[cfg(any(feature = "std", test))]
pub use writer::{EvidenceWriter, WriteError};

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::report::tests::sample;
    use proptest::prelude::*;

    /// Device `d`'s blobs: distinct, non-empty, of a few sizes.
    pub(crate) fn blobs(d: u8) -> [(RecordType, Vec<u8>); 4] {
        [
            (RecordType::CertChain, (0..300u32).map(|i| (i as u8) ^ d).collect()),
            (RecordType::Vca, vec![0x10 + d; 40]),
            (RecordType::Measurements, (0..130u8).map(|i| i.wrapping_mul(3) ^ d).collect()),
            (RecordType::InterfaceReport, vec![0x40 + d; 24]),
        ]
    }

    /// Hand-built bundle bytes for `records` (type, device, data), without the writer's checks.
    pub(crate) fn bundle(records: &[(u16, u16, &[u8])]) -> Vec<u8> {
        let mut b = b"SEAMEVD\0\x01\x00\x00\x00".to_vec();
        for (kind, device, data) in records {
            b.extend_from_slice(&kind.to_le_bytes());
            b.extend_from_slice(&device.to_le_bytes());
            b.extend_from_slice(&(data.len() as u32).to_le_bytes());
            b.extend_from_slice(data);
        }
        b
    }

    /// The sample report with its digests set to the blobs of [`blobs`], and the bundle.
    pub(crate) fn bound_pair() -> (Report, Vec<u8>) {
        let mut r = sample();
        let mut recs = Vec::new();
        for d in 0..r.devices().len() as u8 {
            let b = blobs(d);
            let e = &mut r.devices[usize::from(d)];
            e.cert_chain_sha384 = sha384(&b[0].1);
            e.measurements_transcript_sha384 = transcript_digest(&b[1].1, &b[2].1);
            e.interface_report_sha384 = sha384(&b[3].1);
            for (k, data) in b {
                recs.push((k as u16, u16::from(d), data));
            }
        }
        let refs: Vec<(u16, u16, &[u8])> = recs.iter().map(|(k, d, v)| (*k, *d, v.as_slice())).collect();
        (r, bundle(&refs))
    }

    #[test]
    fn parse_walks_records_in_order() {
        let b = bundle(&[(1, 0, b"chain"), (4, 3, b""), (2, 1, b"vca")]);
        let e = Evidence::parse(&b).unwrap();
        let recs: Vec<_> = e.records().collect();
        assert_eq!(
            recs,
            [
                Record { kind: RecordType::CertChain, device: 0, data: b"chain" },
                Record { kind: RecordType::InterfaceReport, device: 3, data: b"" },
                Record { kind: RecordType::Vca, device: 1, data: b"vca" },
            ]
        );
        assert_eq!(e.get(RecordType::Vca, 1), Some(&b"vca"[..]));
        assert_eq!(e.get(RecordType::Vca, 0), None);
        assert_eq!(Evidence::parse(&bundle(&[])).unwrap().records().count(), 0);
    }

    #[test]
    fn parse_rejects_each_error() {
        let good = bundle(&[(1, 0, b"abc")]);
        assert_eq!(Evidence::parse(&[]), Err(EvidenceError::TruncatedHeader { found: 0 }));
        assert_eq!(Evidence::parse(&good[..11]), Err(EvidenceError::TruncatedHeader { found: 11 }));
        let mut b = good.clone();
        b[7] = b'!';
        assert_eq!(Evidence::parse(&b), Err(EvidenceError::BadMagic(*b"SEAMEVD!")));
        let mut b = good.clone();
        b[8] = 2;
        assert_eq!(Evidence::parse(&b), Err(EvidenceError::UnsupportedVersion(2)));
        let mut b = good.clone();
        b[11] = 1;
        assert_eq!(Evidence::parse(&b), Err(EvidenceError::NonZeroReserved(0x100)));
        for cut in 1..8 {
            assert_eq!(
                Evidence::parse(&good[..12 + cut]),
                Err(EvidenceError::TrailingBytes { offset: 12, count: cut }),
                "cut {cut}"
            );
        }
        assert_eq!(
            Evidence::parse(&good[..good.len() - 1]),
            Err(EvidenceError::TruncatedRecord { offset: 12, length: 3, available: 2 })
        );
        let mut b = good.clone();
        b[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            Evidence::parse(&b),
            Err(EvidenceError::TruncatedRecord { offset: 12, length: u32::MAX, available: 3 })
        );
        let mut b = good.clone();
        b.push(0);
        assert_eq!(Evidence::parse(&b), Err(EvidenceError::TrailingBytes { offset: 23, count: 1 }));
        assert_eq!(
            Evidence::parse(&bundle(&[(1, 0, b"a"), (5, 0, b"b")])),
            Err(EvidenceError::UnknownRecordType { offset: 21, kind: 5 })
        );
        assert_eq!(
            Evidence::parse(&bundle(&[(0, 0, b"")])),
            Err(EvidenceError::UnknownRecordType { offset: 12, kind: 0 })
        );
        assert_eq!(
            Evidence::parse(&bundle(&[(3, 4, b"")])),
            Err(EvidenceError::DeviceOutOfRange { offset: 12, device: 4 })
        );
        assert_eq!(
            Evidence::parse(&bundle(&[(3, 1, b"x"), (3, 2, b"y"), (3, 1, b"z")])),
            Err(EvidenceError::DuplicateRecord { offset: 30, kind: RecordType::Measurements, device: 1 })
        );
    }

    #[test]
    fn raw_records_show_records_before_the_error() {
        let b = bundle(&[(1, 0, b"a"), (9, 0, b"b")]);
        let walk: Vec<_> = Evidence::raw_records(&b).unwrap().collect();
        assert_eq!(walk.len(), 2);
        assert!(walk[0].is_ok());
        assert_eq!(walk[1], Err(EvidenceError::UnknownRecordType { offset: 21, kind: 9 }));
    }

    #[test]
    fn a_bound_pair_binds() {
        let (r, b) = bound_pair();
        let e = Evidence::parse(&b).unwrap();
        assert_eq!(binds(&r, &e), Ok(()));
    }

    #[test]
    fn binds_names_missing_records_and_unassigned_devices() {
        let (r, _) = bound_pair();
        let only_dev0 = bundle(&[(1, 0, &blobs(0)[0].1)]);
        let e = Evidence::parse(&only_dev0).unwrap();
        assert_eq!(
            binds(&r, &e),
            Err(BindingError::Blob { device: 0, blob: Blob::Measurements, binding: Binding::Missing(RecordType::Vca) })
        );
        let (_, mut b) = bound_pair();
        b.extend_from_slice(&bundle(&[(4, 2, b"stray")])[HEADER_BYTES..]);
        let e = Evidence::parse(&b).unwrap();
        assert_eq!(binds(&r, &e), Err(BindingError::UnassignedDevice { device: 2, kind: RecordType::InterfaceReport }));
    }

    #[test]
    fn moving_the_vca_boundary_breaks_the_binding() {
        let (r, _) = bound_pair();
        let b = blobs(0);
        let mut vca = b[1].1.clone();
        let mut meas = b[2].1.clone();
        meas.insert(0, vca.pop().unwrap());
        assert_ne!(transcript_digest(&vca, &meas), r.devices[0].measurements_transcript_sha384);
    }

    /// Every single-bit flip of every blob's bytes is caught by the blob's digest.
    #[test]
    fn every_single_bit_flip_of_a_blob_is_caught() {
        let (r, good) = bound_pair();
        let e = Evidence::parse(&good).unwrap();
        let mut flips = 0;
        for rec in e.records() {
            let start = rec.data.as_ptr() as usize - good.as_ptr() as usize;
            let blob = match rec.kind {
                RecordType::CertChain => Blob::CertChain,
                RecordType::Vca | RecordType::Measurements => Blob::Measurements,
                RecordType::InterfaceReport => Blob::InterfaceReport,
            };
            for byte in start..start + rec.data.len() {
                for bit in 0..8 {
                    let mut b = good.clone();
                    b[byte] ^= 1 << bit;
                    let t = Evidence::parse(&b).unwrap();
                    let got = blob_binding(&r, &t, usize::from(rec.device), blob);
                    assert!(matches!(got, Binding::Mismatch { .. }), "byte {byte} bit {bit}: {got:?}");
                    assert!(binds(&r, &t).is_err());
                    flips += 1;
                }
            }
        }
        assert_eq!(flips, 2 * (300 + 40 + 130 + 24) * 8);
    }

    #[test]
    fn writer_output_parses_and_refuses_what_parse_would() {
        let mut w = EvidenceWriter::new();
        w.push(RecordType::CertChain, 0, b"chain").unwrap().push(RecordType::InterfaceReport, 3, b"ir").unwrap();
        assert_eq!(
            w.push(RecordType::CertChain, 0, b"again").unwrap_err(),
            WriteError::Duplicate(RecordType::CertChain, 0)
        );
        assert_eq!(w.push(RecordType::Vca, 4, b"").unwrap_err(), WriteError::DeviceOutOfRange(4));
        let b = w.finish();
        assert_eq!(b, bundle(&[(1, 0, b"chain"), (4, 3, b"ir")]));
        assert_eq!(Evidence::parse(&b).unwrap().records().count(), 2);
    }

    proptest! {
        #[test]
        fn parse_never_panics_on_random_bytes(b in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Evidence::parse(&b);
            if let Ok(walk) = Evidence::raw_records(&b) {
                prop_assert!(walk.count() <= b.len() / RECORD_HEADER_BYTES + 1);
            }
        }

        #[test]
        fn parse_never_panics_on_random_records(
            recs in proptest::collection::vec((0u16..7, 0u16..6, proptest::collection::vec(any::<u8>(), 0..20)), 0..8),
            cut in any::<usize>(),
            length_patch in any::<Option<(usize, u32)>>(),
        ) {
            let refs: Vec<(u16, u16, &[u8])> = recs.iter().map(|(k, d, v)| (*k, *d, v.as_slice())).collect();
            let mut b = bundle(&refs);
            if let Some((at, len)) = length_patch {
                let at = at % b.len();
                let end = (at + 4).min(b.len());
                b[at..end].copy_from_slice(&len.to_le_bytes()[..end - at]);
            }
            let cut = cut % (b.len() + 1);
            match Evidence::parse(&b[..cut]) {
                Ok(e) => {
                    let total: usize = e.records().map(|r| RECORD_HEADER_BYTES + r.data.len()).sum();
                    prop_assert_eq!(HEADER_BYTES + total, cut);
                }
                Err(err) => prop_assert!(!err.to_string().is_empty()),
            }
        }
    }
}
