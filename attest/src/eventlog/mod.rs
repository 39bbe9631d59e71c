//! The TD's CC event log, as TDVF's TdTcg2Dxe writes it (the CCEL ACPI table's area), read as
//! hostile bytes, and replayed into the RTMRs it claims to describe.
//!
//! The format is TCG2's crypto-agile log (TCG PC Client PFP 1.05, 10.2; edk2
//! `MdePkg/Include/IndustryStandard/UefiTcgPlatform.h`), all integers little-endian:
//!
//! ```text
//! TCG_PCR_EVENT (the log header, SHA-1 layout):
//!   PCRIndex u32 | EventType u32 = EV_NO_ACTION | Digest[20] = 0 | EventSize u32 | Event:
//!   TCG_EfiSpecIDEventStruct: signature "Spec ID Event03\0" | platformClass u32 |
//!     specVersionMinor u8 = 0 | specVersionMajor u8 = 2 | specErrata u8 | uintnSize u8 |
//!     numberOfAlgorithms u32 | {algorithmId u16, digestSize u16} * n | vendorInfoSize u8 | vendorInfo
//! then TCG_PCR_EVENT2, back to back:
//!   MrIndex u32 | EventType u32 | TPML_DIGEST_VALUES: count u32, {hashAlg u16, digest} * count |
//!   EventSize u32 | Event[EventSize]
//! then 0xFF to the end of the area (TdTcg2Dxe fills the area with 0xFF first).
//! ```
//!
//! In a TD the index is the CC MR index: 0 MRTD, 1..=4 RTMR[0]..RTMR[3] (TdTcg2Dxe logs
//! `MrIndex + 1` of the RTMR it extended). TdTcg2Dxe logs SHA-384 only, so this reader accepts
//! exactly that: one algorithm in the header, SHA-384 of 48 bytes, one digest per event.
//!
//! [`EventLog::parse`] checks every byte once; after it, [`EventLog::events`] cannot fail and
//! copies nothing. [`EventLog::replay`] recomputes the RTMRs: from zero,
//! `RTMR[i] = SHA-384(RTMR[i] || digest)` for every event of index `i + 1` except EV_NO_ACTION,
//! which TdTcg2Dxe logs without extending. [`spdm`] reads the firmware's device events
//! (TCG_DEVICE_SECURITY_EVENT_DATA2); `crate::verify::verify_event_log` binds them to a report.

use core::fmt;

use sha2::{Digest, Sha384};

use crate::report::{DIGEST_BYTES, RTMRS};

pub mod spdm;
#[cfg(test)]
mod tests;
#[cfg(any(feature = "std", test))]
pub mod writer;

/// EV_NO_ACTION: logged, never extended (the header, SP800-155 events).
pub const EV_NO_ACTION: u32 = 0x0000_0003;
/// EV_EFI_SPDM_FIRMWARE_BLOB (EV_EFI_EVENT_BASE + 0xE1): an SPDM device's certificate chain or
/// measurement block.
pub const EV_EFI_SPDM_FIRMWARE_BLOB: u32 = 0x8000_00E1;
/// EV_EFI_SPDM_FIRMWARE_CONFIG (EV_EFI_EVENT_BASE + 0xE2): an SPDM device's configuration; here
/// the TDISP interface report.
pub const EV_EFI_SPDM_FIRMWARE_CONFIG: u32 = 0x8000_00E2;
/// TPM_ALG_SHA384, TCG's algorithm id.
pub const TPM_ALG_SHA384: u16 = 0x000C;

/// The Spec ID event's signature (with its NUL), crypto-agile format.
pub const SPEC_ID_SIGNATURE: [u8; 16] = *b"Spec ID Event03\0";
/// Bytes of the header event's TCG_PCR_EVENT header (PCRIndex, EventType, SHA-1 digest,
/// EventSize).
pub const HEADER_EVENT_BYTES: usize = 4 + 4 + 20 + 4;
/// Bytes of TCG_EfiSpecIDEventStruct before its algorithm list: signature, platform class,
/// versions, uintn size, algorithm count.
const SPEC_ID_FIXED_BYTES: usize = 16 + 4 + 4 + 4;
/// Bytes of a TCG_PCR_EVENT2 up to its digest count.
const EVENT_PREFIX_BYTES: usize = 4 + 4 + 4;
/// Bytes of a TCG_PCR_EVENT2 header with its one SHA-384 digest: index, type, count, algorithm,
/// digest, event size.
pub const EVENT_HEADER_BYTES: usize = EVENT_PREFIX_BYTES + 2 + DIGEST_BYTES + 4;
/// The highest CC MR index: RTMR[3].
pub const MAX_MR_INDEX: u32 = RTMRS as u32;

/// The name of a TCG event type (PFP 1.05, 10.4.1), if it is one this reader knows.
pub fn event_type_name(event_type: u32) -> Option<&'static str> {
    Some(match event_type {
        0x0000_0000 => "EV_PREBOOT_CERT",
        0x0000_0001 => "EV_POST_CODE",
        0x0000_0003 => "EV_NO_ACTION",
        0x0000_0004 => "EV_SEPARATOR",
        0x0000_0005 => "EV_ACTION",
        0x0000_0006 => "EV_EVENT_TAG",
        0x0000_0007 => "EV_S_CRTM_CONTENTS",
        0x0000_0008 => "EV_S_CRTM_VERSION",
        0x0000_0009 => "EV_CPU_MICROCODE",
        0x0000_000A => "EV_PLATFORM_CONFIG_FLAGS",
        0x0000_000B => "EV_TABLE_OF_DEVICES",
        0x0000_000C => "EV_COMPACT_HASH",
        0x0000_000D => "EV_IPL",
        0x0000_000E => "EV_IPL_PARTITION_DATA",
        0x0000_000F => "EV_NONHOST_CODE",
        0x0000_0010 => "EV_NONHOST_CONFIG",
        0x0000_0011 => "EV_NONHOST_INFO",
        0x0000_0012 => "EV_OMIT_BOOT_DEVICE_EVENTS",
        0x8000_0001 => "EV_EFI_VARIABLE_DRIVER_CONFIG",
        0x8000_0002 => "EV_EFI_VARIABLE_BOOT",
        0x8000_0003 => "EV_EFI_BOOT_SERVICES_APPLICATION",
        0x8000_0004 => "EV_EFI_BOOT_SERVICES_DRIVER",
        0x8000_0005 => "EV_EFI_RUNTIME_SERVICES_DRIVER",
        0x8000_0006 => "EV_EFI_GPT_EVENT",
        0x8000_0007 => "EV_EFI_ACTION",
        0x8000_0008 => "EV_EFI_PLATFORM_FIRMWARE_BLOB",
        0x8000_0009 => "EV_EFI_HANDOFF_TABLES",
        0x8000_000A => "EV_EFI_PLATFORM_FIRMWARE_BLOB2",
        0x8000_000B => "EV_EFI_HANDOFF_TABLES2",
        0x8000_0010 => "EV_EFI_HCRTM_EVENT",
        0x8000_00E0 => "EV_EFI_VARIABLE_AUTHORITY",
        0x8000_00E1 => "EV_EFI_SPDM_FIRMWARE_BLOB",
        0x8000_00E2 => "EV_EFI_SPDM_FIRMWARE_CONFIG",
        _ => return None,
    })
}

/// The register a CC MR index names: `MRTD`, `RTMR[0]` .. `RTMR[3]`.
pub fn mr_name(index: u32) -> &'static str {
    match index {
        0 => "MRTD",
        1 => "RTMR[0]",
        2 => "RTMR[1]",
        3 => "RTMR[2]",
        4 => "RTMR[3]",
        _ => "out of range",
    }
}

/// What is wrong with the header event (TCG_PCR_EVENT carrying TCG_EfiSpecIDEventStruct).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpecIdFault {
    /// PCRIndex is neither 0 (TCG PFP) nor 1 (TdTcg2Dxe: "PCRIndex 0 maps to MrIndex 1").
    PcrIndex(u32),
    /// EventType is not EV_NO_ACTION.
    EventType(u32),
    /// The SHA-1-sized digest is not all zero.
    DigestNotZero,
    /// EventSize runs past the end of the log.
    PastEnd {
        /// EventSize.
        size: u32,
        /// Bytes after the header event's header.
        available: usize,
    },
    /// EventSize is too small for the structure's fixed part.
    TooShort(u32),
    /// The signature is not [`SPEC_ID_SIGNATURE`] (a SHA-1 log says "Spec ID Event02").
    Signature([u8; 16]),
    /// specVersionMajor.specVersionMinor is not 2.0.
    SpecVersion {
        /// specVersionMajor.
        major: u8,
        /// specVersionMinor.
        minor: u8,
    },
    /// uintnSize is neither 1 (UINT32) nor 2 (UINT64).
    UintnSize(u8),
    /// The algorithm list and vendor info do not fill EventSize exactly.
    SizeMismatch {
        /// EventSize.
        size: u32,
        /// Bytes the structure's own counts describe (0 when they run past EventSize).
        described: usize,
    },
}

impl fmt::Display for SpecIdFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            SpecIdFault::PcrIndex(i) => write!(f, "PCRIndex {i}, not 0 or 1"),
            SpecIdFault::EventType(t) => write!(f, "event type {t:#x}, not EV_NO_ACTION"),
            SpecIdFault::DigestNotZero => f.write_str("its digest is not zero"),
            SpecIdFault::PastEnd { size, available } => {
                write!(f, "event size {size} but only {available} bytes follow its header")
            }
            SpecIdFault::TooShort(size) => {
                write!(f, "event size {size}, too small for TCG_EfiSpecIDEventStruct")
            }
            SpecIdFault::Signature(s) => write!(f, "signature {s:02x?}, not \"Spec ID Event03\\0\""),
            SpecIdFault::SpecVersion { major, minor } => write!(f, "spec version {major}.{minor}, not 2.0"),
            SpecIdFault::UintnSize(u) => write!(f, "uintnSize {u}, not 1 or 2"),
            SpecIdFault::SizeMismatch { size, described } => {
                write!(f, "event size {size} but its algorithms and vendor info take {described}")
            }
        }
    }
}

/// Why bytes are not a CC event log this verifier reads. Offsets are from the start of the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventLogError {
    /// Fewer than [`HEADER_EVENT_BYTES`] bytes (an empty file lands here).
    TruncatedHeader {
        /// Bytes given.
        found: usize,
    },
    /// The header event is malformed.
    SpecIdEvent(SpecIdFault),
    /// The header declares other than one digest algorithm.
    AlgorithmCount(u32),
    /// The header's one algorithm is not SHA-384 of 48 bytes.
    Algorithm {
        /// algorithmId.
        id: u16,
        /// digestSize.
        digest_size: u16,
    },
    /// An event's header runs past the end of the log.
    TruncatedEvent {
        /// Offset of the event.
        offset: usize,
        /// Bytes its header needs.
        needed: usize,
        /// Bytes left.
        available: usize,
    },
    /// An index above [`MAX_MR_INDEX`], or 0 (MRTD, which nothing extends at run time) on an
    /// event that is not EV_NO_ACTION.
    MrIndexOutOfRange {
        /// Offset of the event.
        offset: usize,
        /// The index.
        index: u32,
        /// The event type.
        event_type: u32,
    },
    /// An event carries other than one digest.
    DigestCount {
        /// Offset of the event.
        offset: usize,
        /// The count.
        count: u32,
    },
    /// An event's digest is not SHA-384.
    DigestAlgorithm {
        /// Offset of the event.
        offset: usize,
        /// The hashAlg found.
        alg: u16,
    },
    /// An event's data runs past the end of the log.
    EventPastEnd {
        /// Offset of the event.
        offset: usize,
        /// EventSize.
        size: u32,
        /// Bytes after its header.
        available: usize,
    },
    /// An EV_NO_ACTION event with a digest that is not zero (TCG PFP 10.4.5: it is never
    /// extended, so its digest must say nothing).
    NoActionDigest {
        /// Offset of the event.
        offset: usize,
    },
}

impl fmt::Display for EventLogError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            EventLogError::TruncatedHeader { found } => {
                write!(f, "event log needs a {HEADER_EVENT_BYTES}-byte header event, got {found} bytes")
            }
            EventLogError::SpecIdEvent(fault) => write!(f, "Spec ID header event malformed: {fault}"),
            EventLogError::AlgorithmCount(n) => {
                write!(f, "the header declares {n} digest algorithms; this verifier reads SHA-384-only logs (1)")
            }
            EventLogError::Algorithm { id, digest_size } => write!(
                f,
                "the header's algorithm is {id:#06x} of {digest_size} bytes, not SHA-384 ({TPM_ALG_SHA384:#06x}, 48)"
            ),
            EventLogError::TruncatedEvent { offset, needed, available } => {
                write!(f, "event at offset {offset} needs a {needed}-byte header, only {available} bytes left")
            }
            EventLogError::MrIndexOutOfRange { offset, index, event_type } => write!(
                f,
                "event at offset {offset} (type {event_type:#x}) has MR index {index}: only 1..=4 (RTMR[0..3]) are \
                 extended, 0 (MRTD) only by EV_NO_ACTION"
            ),
            EventLogError::DigestCount { offset, count } => {
                write!(f, "event at offset {offset} carries {count} digests, not 1 (SHA-384)")
            }
            EventLogError::DigestAlgorithm { offset, alg } => {
                write!(f, "event at offset {offset} has a digest of algorithm {alg:#06x}, not SHA-384")
            }
            EventLogError::EventPastEnd { offset, size, available } => {
                write!(f, "event at offset {offset} claims {size} bytes of data, only {available} follow its header")
            }
            EventLogError::NoActionDigest { offset } => {
                write!(f, "EV_NO_ACTION event at offset {offset} has a digest that is not zero")
            }
        }
    }
}

impl core::error::Error for EventLogError {}

fn le16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes([*b.get(at)?, *b.get(at.checked_add(1)?)?]))
}

fn le32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

/// The log's header event, checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpecId<'a> {
    /// PCRIndex of the header event (0 or 1).
    pub pcr_index: u32,
    /// platformClass.
    pub platform_class: u32,
    /// specErrata.
    pub spec_errata: u8,
    /// uintnSize (1: UINT32, 2: UINT64).
    pub uintn_size: u8,
    /// vendorInfo.
    pub vendor_info: &'a [u8],
}

/// One TCG_PCR_EVENT2 of the log, borrowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event<'a> {
    /// Offset of the event in the log.
    pub offset: usize,
    /// CC MR index: 0 MRTD, 1..=4 RTMR[0..3].
    pub mr_index: u32,
    /// TCG event type.
    pub event_type: u32,
    /// The SHA-384 digest extended (zero for EV_NO_ACTION).
    pub digest: [u8; DIGEST_BYTES],
    /// The event data.
    pub data: &'a [u8],
}

impl Event<'_> {
    /// The RTMR (0..=3) this event extends, if it extends one: EV_NO_ACTION extends nothing.
    pub fn rtmr(&self) -> Option<usize> {
        if self.event_type == EV_NO_ACTION {
            return None;
        }
        // parse() leaves only 1..=4 on events that are not EV_NO_ACTION.
        (self.mr_index as usize).checked_sub(1).filter(|&i| i < RTMRS)
    }

    /// True for EV_EFI_SPDM_FIRMWARE_BLOB and EV_EFI_SPDM_FIRMWARE_CONFIG.
    pub fn is_spdm(&self) -> bool {
        matches!(self.event_type, EV_EFI_SPDM_FIRMWARE_BLOB | EV_EFI_SPDM_FIRMWARE_CONFIG)
    }
}

/// Parses the header event.
fn spec_id(bytes: &[u8]) -> Result<(SpecId<'_>, usize), EventLogError> {
    let fault = |f| Err(EventLogError::SpecIdEvent(f));
    let Some(head) = bytes.get(..HEADER_EVENT_BYTES) else {
        return Err(EventLogError::TruncatedHeader { found: bytes.len() });
    };
    let (pcr_index, event_type) = (le32(head, 0).unwrap_or(0), le32(head, 4).unwrap_or(0));
    let size = le32(head, 28).unwrap_or(0);
    if pcr_index > 1 {
        return fault(SpecIdFault::PcrIndex(pcr_index));
    }
    if event_type != EV_NO_ACTION {
        return fault(SpecIdFault::EventType(event_type));
    }
    if head[8..28].iter().any(|&b| b != 0) {
        return fault(SpecIdFault::DigestNotZero);
    }
    let rest = &bytes[HEADER_EVENT_BYTES..];
    let Some(body) = usize::try_from(size).ok().and_then(|n| rest.get(..n)) else {
        return fault(SpecIdFault::PastEnd { size, available: rest.len() });
    };
    if body.len() < SPEC_ID_FIXED_BYTES {
        return fault(SpecIdFault::TooShort(size));
    }
    let mut signature = [0u8; 16];
    signature.copy_from_slice(&body[..16]);
    if signature != SPEC_ID_SIGNATURE {
        return fault(SpecIdFault::Signature(signature));
    }
    let platform_class = le32(body, 16).unwrap_or(0);
    let (minor, major, spec_errata, uintn_size) = (body[20], body[21], body[22], body[23]);
    if (major, minor) != (2, 0) {
        return fault(SpecIdFault::SpecVersion { major, minor });
    }
    if !matches!(uintn_size, 1 | 2) {
        return fault(SpecIdFault::UintnSize(uintn_size));
    }
    let count = le32(body, 24).unwrap_or(0);
    // Algorithms (4 bytes each) and the vendor info size byte must fit EventSize before the
    // count is believed; a count past it is a size mismatch, not a walk off the end.
    let algorithms_end = usize::try_from(count).ok().and_then(|n| n.checked_mul(4)).and_then(|n| n.checked_add(28));
    let vendor_size = algorithms_end.and_then(|at| body.get(at)).map(|&v| usize::from(v));
    let described = algorithms_end.zip(vendor_size).map_or(0, |(at, v)| at + 1 + v);
    if described != body.len() {
        return fault(SpecIdFault::SizeMismatch { size, described });
    }
    if count != 1 {
        return Err(EventLogError::AlgorithmCount(count));
    }
    let (id, digest_size) = (le16(body, 28).unwrap_or(0), le16(body, 30).unwrap_or(0));
    if (id, usize::from(digest_size)) != (TPM_ALG_SHA384, DIGEST_BYTES) {
        return Err(EventLogError::Algorithm { id, digest_size });
    }
    let vendor_info = &body[33..];
    Ok((SpecId { pcr_index, platform_class, spec_errata, uintn_size, vendor_info }, HEADER_EVENT_BYTES + body.len()))
}

/// Walks the events of a log whose header event is already checked, checking each as it goes.
/// Ends at the end of the bytes or where the rest is 0xFF fill; yields `Err` once and then stops.
#[derive(Clone, Debug)]
pub struct RawEvents<'a> {
    bytes: &'a [u8],
    offset: usize,
    failed: bool,
}

impl<'a> RawEvents<'a> {
    /// Where the walk is: the offset of the next event, or of the fill once the walk is done.
    pub fn offset(&self) -> usize {
        self.offset
    }

    fn next_event(&mut self) -> Result<Option<Event<'a>>, EventLogError> {
        let offset = self.offset;
        let rest = self.bytes.get(offset..).unwrap_or(&[]);
        if rest.iter().all(|&b| b == 0xFF) {
            return Ok(None);
        }
        let truncated = |needed| EventLogError::TruncatedEvent { offset, needed, available: rest.len() };
        if rest.len() < EVENT_PREFIX_BYTES {
            return Err(truncated(EVENT_PREFIX_BYTES));
        }
        let (mr_index, event_type, count) =
            (le32(rest, 0).unwrap_or(0), le32(rest, 4).unwrap_or(0), le32(rest, 8).unwrap_or(0));
        if mr_index > MAX_MR_INDEX || (mr_index == 0 && event_type != EV_NO_ACTION) {
            return Err(EventLogError::MrIndexOutOfRange { offset, index: mr_index, event_type });
        }
        if count != 1 {
            return Err(EventLogError::DigestCount { offset, count });
        }
        if rest.len() < EVENT_HEADER_BYTES {
            return Err(truncated(EVENT_HEADER_BYTES));
        }
        let alg = le16(rest, EVENT_PREFIX_BYTES).unwrap_or(0);
        if alg != TPM_ALG_SHA384 {
            return Err(EventLogError::DigestAlgorithm { offset, alg });
        }
        let mut digest = [0u8; DIGEST_BYTES];
        digest.copy_from_slice(&rest[EVENT_PREFIX_BYTES + 2..EVENT_HEADER_BYTES - 4]);
        let size = le32(rest, EVENT_HEADER_BYTES - 4).unwrap_or(0);
        let body = &rest[EVENT_HEADER_BYTES..];
        let Some(data) = usize::try_from(size).ok().and_then(|n| body.get(..n)) else {
            return Err(EventLogError::EventPastEnd { offset, size, available: body.len() });
        };
        if event_type == EV_NO_ACTION && digest != [0; DIGEST_BYTES] {
            return Err(EventLogError::NoActionDigest { offset });
        }
        // All checks passed.
        self.offset = offset + EVENT_HEADER_BYTES + data.len();
        Ok(Some(Event { offset, mr_index, event_type, digest, data }))
    }
}

impl<'a> Iterator for RawEvents<'a> {
    type Item = Result<Event<'a>, EventLogError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let e = self.next_event();
        self.failed = e.is_err();
        e.transpose()
    }
}

/// A checked CC event log, borrowing its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventLog<'a> {
    bytes: &'a [u8],
    spec_id: SpecId<'a>,
    first_event: usize,
    used: usize,
}

/// The registers a log replays to, and how many events extended each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Replay {
    /// RTMR[0..3], from zero.
    pub rtmr: [[u8; DIGEST_BYTES]; RTMRS],
    /// Events that extended each.
    pub extends: [u32; RTMRS],
}

impl<'a> EventLog<'a> {
    /// Checks `bytes` as a CC event log: the header event, then every event (see
    /// [`EventLogError`]), up to the end or to 0xFF fill that runs to the end.
    ///
    /// # Errors
    /// The first rule the bytes break, with the offset where.
    pub fn parse(bytes: &'a [u8]) -> Result<EventLog<'a>, EventLogError> {
        let (spec_id, first_event) = spec_id(bytes)?;
        let mut walk = RawEvents { bytes, offset: first_event, failed: false };
        for e in walk.by_ref() {
            e?;
        }
        Ok(EventLog { bytes, spec_id, first_event, used: walk.offset })
    }

    /// Checks only the header event and returns it with the event walker, for callers that want
    /// the events before an error further on (a `show` tool).
    ///
    /// # Errors
    /// A header error: [`EventLogError::TruncatedHeader`], [`EventLogError::SpecIdEvent`],
    /// [`EventLogError::AlgorithmCount`] or [`EventLogError::Algorithm`].
    pub fn raw_events(bytes: &'a [u8]) -> Result<(SpecId<'a>, RawEvents<'a>), EventLogError> {
        let (spec_id, first_event) = spec_id(bytes)?;
        Ok((spec_id, RawEvents { bytes, offset: first_event, failed: false }))
    }

    /// The header event.
    pub fn spec_id(&self) -> &SpecId<'a> {
        &self.spec_id
    }

    /// Bytes in use: the header event and every event, without the 0xFF fill.
    pub fn used_len(&self) -> usize {
        self.used
    }

    /// Bytes of 0xFF fill after the last event.
    pub fn fill_len(&self) -> usize {
        self.bytes.len() - self.used
    }

    /// The events after the header, in log order.
    pub fn events(&self) -> impl Iterator<Item = Event<'a>> + 'a {
        // parse() walked these same bytes without error, so no Err can come; map_while ends the
        // walk rather than panicking if one ever did.
        RawEvents { bytes: self.bytes, offset: self.first_event, failed: false }.map_while(Result::ok)
    }

    /// The RTMRs the log describes: from zero, each extended with the digest of every event of
    /// its index in log order, EV_NO_ACTION skipped.
    pub fn replay(&self) -> Replay {
        let mut r = Replay { rtmr: [[0; DIGEST_BYTES]; RTMRS], extends: [0; RTMRS] };
        for e in self.events() {
            if let Some(i) = e.rtmr() {
                r.rtmr[i] = extend(&r.rtmr[i], &e.digest);
                r.extends[i] = r.extends[i].saturating_add(1);
            }
        }
        r
    }
}

/// One extend, as TDG.MR.RTMR.EXTEND does it: SHA-384(register || digest).
pub fn extend(register: &[u8; DIGEST_BYTES], digest: &[u8; DIGEST_BYTES]) -> [u8; DIGEST_BYTES] {
    let mut h = Sha384::new();
    h.update(register);
    h.update(digest);
    h.finalize().into()
}
