//! The device events the patched TDVF logs in RTMR[1] when it accepts a TDISP device
//! (`ovmf-patches/`, TdxConnectDxe's `Evidence.c`), in upstream edk2's "SPDM Device Sec2" layout
//! (TCG_DEVICE_SECURITY_EVENT_DATA2, TCG PFP 1.06, 10.4.6), all integers little-endian:
//!
//! ```text
//! 0   header (52): Signature "SPDM Device Sec2" | Version u16 = 2 | AuthState u8 | Reserved u8 |
//!     Length u32 (the whole event data) | DeviceType u32 (1 PCI) | SubHeaderType u32 |
//!     SubHeaderLength u32 | SubHeaderUID u64 (the TDISP function id) | DevicePathLength u64
//! 52  device path (DevicePathLength bytes; TdxConnectDxe logs none)
//! ..  sub-header (SubHeaderLength = 8):
//!       SPDM_MEASUREMENT_BLOCK (0): SpdmVersion u16 | block count u8 | Reserved u8 | MeasurementHashAlgo u32
//!       SPDM_CERT_CHAIN (1):        SpdmVersion u16 | slot u8 | Reserved u8 | BaseHashAlgo u32
//!       OEM_MEASUREMENT (2):        Type u32 = "TDIR" | Length u32
//! ..  PCI context (16): Version u16 = 0 | Length u16 = 16 | VendorId | DeviceId | RevisionId u8 |
//!     ClassCode[3] | SubsystemVendorId u16 | SubsystemId u16
//! ..  payload: the SHA-384 of the certificate chain (EV_EFI_SPDM_FIRMWARE_BLOB, cert chain),
//!     of the signed measurement transcript (EV_EFI_SPDM_FIRMWARE_BLOB, one measurement block),
//!     or the TDISP interface report whole (EV_EFI_SPDM_FIRMWARE_CONFIG, OEM "TDIR", Length bytes)
//! ```
//!
//! A TD holds its device's digests, not its blobs (the TSM authenticated the device), so the
//! payloads of the first two are digests where upstream logs the blobs; the verifier holds the
//! blobs in the evidence bundle. [`SpdmEvent::parse`] reads one event's data with every length
//! bounded and refuses anything else by name.

use core::fmt;

use super::{EV_EFI_SPDM_FIRMWARE_BLOB, EV_EFI_SPDM_FIRMWARE_CONFIG};
use crate::report::DIGEST_BYTES;

/// The header's signature (16 bytes, no NUL).
pub const SEC2_SIGNATURE: [u8; 16] = *b"SPDM Device Sec2";
/// The header's version.
pub const SEC2_VERSION: u16 = 2;
/// Bytes of the header without the device path.
pub const SEC2_HEADER_BYTES: usize = 52;
/// AuthState: the device authenticated (the only state this verifier accepts).
pub const AUTH_STATE_SUCCESS: u8 = 0;
/// DeviceType: PCI.
pub const DEVICE_TYPE_PCI: u32 = 1;
/// SubHeaderType: an SPDM measurement block.
pub const SUB_HEADER_MEASUREMENT_BLOCK: u32 = 0;
/// SubHeaderType: an SPDM certificate chain.
pub const SUB_HEADER_CERT_CHAIN: u32 = 1;
/// SubHeaderType: an OEM measurement.
pub const SUB_HEADER_OEM: u32 = 2;
/// Bytes of each sub-header TdxConnectDxe writes.
pub const SUB_HEADER_BYTES: usize = 8;
/// Bytes of the PCI context.
pub const PCI_CONTEXT_BYTES: usize = 16;
/// SPDM BaseHashAlgo TPM_ALG_SHA_384 (bit 1).
pub const SPDM_BASE_HASH_SHA384: u32 = 1 << 1;
/// SPDM MeasurementHashAlgo TPM_ALG_SHA_384 (bit 2).
pub const SPDM_MEASUREMENT_HASH_SHA384: u32 = 1 << 2;
/// The OEM sub-header's type for a TDISP interface report: "TDIR" (edk2's SIGNATURE_32).
pub const OEM_TYPE_TDIR: u32 = u32::from_le_bytes(*b"TDIR");
/// Certificate slots SPDM has.
pub const SPDM_SLOTS: u8 = 8;

/// The device's PCI identity as the firmware read it from configuration space (which the host
/// emulates: shown, bound to nothing).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciContext {
    /// VendorId.
    pub vendor_id: u16,
    /// DeviceId.
    pub device_id: u16,
    /// RevisionId.
    pub revision_id: u8,
    /// ClassCode (programming interface, subclass, class).
    pub class_code: [u8; 3],
    /// SubsystemVendorId.
    pub subsystem_vendor_id: u16,
    /// SubsystemId.
    pub subsystem_id: u16,
}

/// What one event carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Payload<'a> {
    /// EV_EFI_SPDM_FIRMWARE_BLOB, SPDM_CERT_CHAIN: the certificate chain's SHA-384.
    CertChain {
        /// SPDM slot.
        slot: u8,
        /// The digest.
        digest: [u8; DIGEST_BYTES],
    },
    /// EV_EFI_SPDM_FIRMWARE_BLOB, SPDM_MEASUREMENT_BLOCK: the signed measurement transcript's
    /// SHA-384 (`crate::evidence::transcript_digest`).
    Measurements {
        /// The digest.
        digest: [u8; DIGEST_BYTES],
    },
    /// EV_EFI_SPDM_FIRMWARE_CONFIG, OEM "TDIR": the TDISP interface report.
    InterfaceReport(&'a [u8]),
}

impl Payload<'_> {
    /// A short stable name, the evidence blob it stands for.
    pub fn name(&self) -> &'static str {
        match self {
            Payload::CertChain { .. } => "cert_chain",
            Payload::Measurements { .. } => "measurements",
            Payload::InterfaceReport(_) => "interface_report",
        }
    }
}

/// One device event's data, checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpdmEvent<'a> {
    /// SubHeaderUID: the TDISP function id the firmware accepted.
    pub function_id: u64,
    /// The SPDM version byte of the SPDM sub-headers (major << 4 | minor); 0 for the OEM one.
    pub spdm_version: u16,
    /// The device path (empty from TdxConnectDxe).
    pub device_path: &'a [u8],
    /// The PCI context.
    pub pci: PciContext,
    /// What it carries.
    pub payload: Payload<'a>,
}

/// Why an event's data is not a device event this verifier reads. `at` offsets are from the
/// start of the event data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpdmEventError {
    /// The data ends before a part it needs.
    Truncated {
        /// The part.
        part: &'static str,
        /// Bytes needed up to the end of that part.
        needed: u64,
        /// Bytes there are.
        available: usize,
    },
    /// The signature is not [`SEC2_SIGNATURE`] (version 1 events say "SPDM Device Sec\0").
    Signature([u8; 16]),
    /// Version is not [`SEC2_VERSION`].
    Version(u16),
    /// AuthState is not [`AUTH_STATE_SUCCESS`]: the firmware says the device did not
    /// authenticate.
    AuthState(u8),
    /// The reserved byte is not zero.
    Reserved(u8),
    /// Length is not the event data's length.
    Length {
        /// Length.
        declared: u32,
        /// The data's length.
        actual: usize,
    },
    /// DeviceType is not PCI.
    DeviceType(u32),
    /// SubHeaderType names no sub-header, or one the event type does not carry (a BLOB carries
    /// a certificate chain or a measurement block, a CONFIG the OEM interface report).
    SubHeaderType {
        /// The event type.
        event_type: u32,
        /// SubHeaderType.
        sub_header: u32,
    },
    /// SubHeaderLength is not [`SUB_HEADER_BYTES`].
    SubHeaderLength(u32),
    /// A hash algorithm other than SHA-384.
    HashAlgorithm(u32),
    /// A certificate slot past 7, or a measurement block count other than 1.
    SlotOrCount(u8),
    /// A sub-header's reserved byte is not zero.
    SubHeaderReserved(u8),
    /// The OEM sub-header's type is not "TDIR".
    OemType(u32),
    /// The PCI context's version or length is wrong.
    PciContext {
        /// Version (0).
        version: u16,
        /// Length (16).
        length: u16,
    },
    /// The payload is not as long as the sub-header says (48 for a digest, the OEM Length for a
    /// report).
    PayloadLength {
        /// Bytes expected.
        expected: u64,
        /// Bytes there are.
        found: usize,
    },
}

impl fmt::Display for SpdmEventError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            SpdmEventError::Truncated { part, needed, available } => {
                write!(f, "the {part} needs the data to run to byte {needed}, it has {available}")
            }
            SpdmEventError::Signature(s) => write!(f, "signature {s:02x?}, not \"SPDM Device Sec2\""),
            SpdmEventError::Version(v) => write!(f, "version {v}, not {SEC2_VERSION}"),
            SpdmEventError::AuthState(s) => write!(f, "AuthState {s}: the firmware did not authenticate the device"),
            SpdmEventError::Reserved(r) => write!(f, "reserved byte {r:#x}, not zero"),
            SpdmEventError::Length { declared, actual } => {
                write!(f, "Length {declared}, but the event data is {actual} bytes")
            }
            SpdmEventError::DeviceType(t) => write!(f, "device type {t}, not PCI ({DEVICE_TYPE_PCI})"),
            SpdmEventError::SubHeaderType { event_type, sub_header } => {
                write!(f, "sub-header type {sub_header} in an event of type {event_type:#x}")
            }
            SpdmEventError::SubHeaderLength(n) => write!(f, "sub-header length {n}, not {SUB_HEADER_BYTES}"),
            SpdmEventError::HashAlgorithm(a) => write!(f, "hash algorithm {a:#x}, not SHA-384"),
            SpdmEventError::SlotOrCount(n) => {
                write!(f, "slot or block count {n}: a slot below {SPDM_SLOTS}, or one block")
            }
            SpdmEventError::SubHeaderReserved(r) => write!(f, "sub-header reserved byte {r:#x}, not zero"),
            SpdmEventError::OemType(t) => write!(f, "OEM type {t:#010x}, not \"TDIR\""),
            SpdmEventError::PciContext { version, length } => {
                write!(f, "PCI context version {version} length {length}, not 0 and {PCI_CONTEXT_BYTES}")
            }
            SpdmEventError::PayloadLength { expected, found } => {
                write!(f, "payload of {found} bytes, the sub-header says {expected}")
            }
        }
    }
}

impl core::error::Error for SpdmEventError {}

fn le16(b: &[u8], at: usize) -> u16 {
    match b.get(at..at + 2) {
        Some(s) => u16::from_le_bytes([s[0], s[1]]),
        None => 0,
    }
}

fn le32(b: &[u8], at: usize) -> u32 {
    match b.get(at..at + 4) {
        Some(s) => u32::from_le_bytes([s[0], s[1], s[2], s[3]]),
        None => 0,
    }
}

fn le64(b: &[u8], at: usize) -> u64 {
    match b.get(at..at + 8) {
        Some(s) => u64::from_le_bytes([s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]]),
        None => 0,
    }
}

impl<'a> SpdmEvent<'a> {
    /// Reads the data of an event of type `event_type` (EV_EFI_SPDM_FIRMWARE_BLOB or
    /// EV_EFI_SPDM_FIRMWARE_CONFIG).
    ///
    /// # Errors
    /// The first rule the data breaks: the header's fields in layout order, the bounds of the
    /// device path, sub-header and PCI context, the sub-header's fields, the PCI context, the
    /// payload's length.
    pub fn parse(event_type: u32, data: &'a [u8]) -> Result<SpdmEvent<'a>, SpdmEventError> {
        let truncated = |part, needed| SpdmEventError::Truncated { part, needed, available: data.len() };
        let Some(h) = data.get(..SEC2_HEADER_BYTES) else {
            return Err(truncated("header", SEC2_HEADER_BYTES as u64));
        };
        let mut signature = [0u8; 16];
        signature.copy_from_slice(&h[..16]);
        if signature != SEC2_SIGNATURE {
            return Err(SpdmEventError::Signature(signature));
        }
        let version = le16(h, 16);
        if version != SEC2_VERSION {
            return Err(SpdmEventError::Version(version));
        }
        if h[18] != AUTH_STATE_SUCCESS {
            return Err(SpdmEventError::AuthState(h[18]));
        }
        if h[19] != 0 {
            return Err(SpdmEventError::Reserved(h[19]));
        }
        let declared = le32(h, 20);
        if usize::try_from(declared).ok() != Some(data.len()) {
            return Err(SpdmEventError::Length { declared, actual: data.len() });
        }
        let device_type = le32(h, 24);
        if device_type != DEVICE_TYPE_PCI {
            return Err(SpdmEventError::DeviceType(device_type));
        }
        let sub_header = le32(h, 28);
        let fits = match event_type {
            EV_EFI_SPDM_FIRMWARE_BLOB => matches!(sub_header, SUB_HEADER_MEASUREMENT_BLOCK | SUB_HEADER_CERT_CHAIN),
            EV_EFI_SPDM_FIRMWARE_CONFIG => sub_header == SUB_HEADER_OEM,
            _ => false,
        };
        if !fits {
            return Err(SpdmEventError::SubHeaderType { event_type, sub_header });
        }
        let sub_header_len = le32(h, 32);
        if sub_header_len as usize != SUB_HEADER_BYTES {
            return Err(SpdmEventError::SubHeaderLength(sub_header_len));
        }
        let function_id = le64(h, 36);
        let path_len = le64(h, 44);

        // Each part's end in u64, so that no length can wrap; the data is shorter than any of
        // them that is out of bounds.
        let path_end = (SEC2_HEADER_BYTES as u64).saturating_add(path_len);
        let sub_end = path_end.saturating_add(SUB_HEADER_BYTES as u64);
        let pci_end = sub_end.saturating_add(PCI_CONTEXT_BYTES as u64);
        let len = data.len() as u64;
        if path_end > len {
            return Err(truncated("device path", path_end));
        }
        if sub_end > len {
            return Err(truncated("sub-header", sub_end));
        }
        if pci_end > len {
            return Err(truncated("PCI context", pci_end));
        }
        // All three ends are at most data.len() now, so they are usize.
        let (path_end, sub_end, pci_end) = (path_end as usize, sub_end as usize, pci_end as usize);
        let device_path = &data[SEC2_HEADER_BYTES..path_end];
        let sub = &data[path_end..sub_end];
        let pci = &data[sub_end..pci_end];
        let payload = &data[pci_end..];

        let spdm_version = if sub_header == SUB_HEADER_OEM { 0 } else { le16(sub, 0) };
        let expected_len = match sub_header {
            SUB_HEADER_OEM => {
                let oem_type = le32(sub, 0);
                if oem_type != OEM_TYPE_TDIR {
                    return Err(SpdmEventError::OemType(oem_type));
                }
                u64::from(le32(sub, 4))
            }
            _ => {
                let (slot_or_count, reserved, algo) = (sub[2], sub[3], le32(sub, 4));
                let (want_algo, slot_ok) = if sub_header == SUB_HEADER_CERT_CHAIN {
                    (SPDM_BASE_HASH_SHA384, slot_or_count < SPDM_SLOTS)
                } else {
                    (SPDM_MEASUREMENT_HASH_SHA384, slot_or_count == 1)
                };
                if !slot_ok {
                    return Err(SpdmEventError::SlotOrCount(slot_or_count));
                }
                if reserved != 0 {
                    return Err(SpdmEventError::SubHeaderReserved(reserved));
                }
                if algo != want_algo {
                    return Err(SpdmEventError::HashAlgorithm(algo));
                }
                DIGEST_BYTES as u64
            }
        };
        let (pci_version, pci_length) = (le16(pci, 0), le16(pci, 2));
        if pci_version != 0 || usize::from(pci_length) != PCI_CONTEXT_BYTES {
            return Err(SpdmEventError::PciContext { version: pci_version, length: pci_length });
        }
        if payload.len() as u64 != expected_len {
            return Err(SpdmEventError::PayloadLength { expected: expected_len, found: payload.len() });
        }
        // All checks passed.
        let pci = PciContext {
            vendor_id: le16(pci, 4),
            device_id: le16(pci, 6),
            revision_id: pci[8],
            class_code: [pci[9], pci[10], pci[11]],
            subsystem_vendor_id: le16(pci, 12),
            subsystem_id: le16(pci, 14),
        };
        let mut digest = [0u8; DIGEST_BYTES];
        let payload = match sub_header {
            SUB_HEADER_CERT_CHAIN => {
                digest.copy_from_slice(payload);
                Payload::CertChain { slot: sub[2], digest }
            }
            SUB_HEADER_MEASUREMENT_BLOCK => {
                digest.copy_from_slice(payload);
                Payload::Measurements { digest }
            }
            _ => Payload::InterfaceReport(payload),
        };
        Ok(SpdmEvent { function_id, spdm_version, device_path, pci, payload })
    }
}
