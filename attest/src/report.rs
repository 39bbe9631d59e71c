//! The native seamless attestation report (version 1): what the TSM signs about a TD and the
//! devices assigned to it.
//!
//! ```text
//! 0     ReportHeader (24)     magic "SEAMRPT\0", version 1, flavour 1 (native), header size,
//!                             device count, report size, reserved
//! 24    TsmIdentity (56)      SVN, reserved, MRSEAM
//! 80    TdIdentity (256)      MRTD, RTMR0..3, ATTRIBUTES, XFAM
//! 336   report_data (64)      the verifier's nonce, as the TD passed it in
//! 400   DeviceEntry[4] (704)  one 176-byte entry per assigned device; unused entries all zero
//! 1104  signature (96)        ECDSA P-384 r || s (big-endian each) over SHA-384 of bytes 0..1104
//! ```
//!
//! The layout is fixed: a report always has [`MAX_DEVICES`] entries, and the header's device count
//! says how many of them are in use. Every field is a byte array (integers little-endian), so the
//! structs have alignment 1 and no padding, and [`Report::parse`] borrows the caller's bytes.
//!
//! The device entries carry digests of the device's evidence, not the evidence itself: the bundle
//! that travels beside the report ([`crate::evidence`]) is bound to it by those digests.

use core::fmt;
use core::mem::{offset_of, size_of};
use core::ops::Range;

use sha2::{Digest, Sha384};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

/// Bytes of a SHA-384 digest or measurement register.
pub const DIGEST_BYTES: usize = 48;
/// Number of run-time measurement registers.
pub const RTMRS: usize = 4;
/// Bytes of report data (the verifier's nonce).
pub const REPORT_DATA_BYTES: usize = 64;
/// Bytes of an ECDSA P-384 signature as r || s.
pub const SIGNATURE_BYTES: usize = 96;
/// Device entries in every report.
pub const MAX_DEVICES: usize = 4;

/// `ReportHeader::magic`.
pub const MAGIC: [u8; 8] = *b"SEAMRPT\0";
/// The report version this crate writes and reads.
pub const VERSION: u16 = 1;
/// `ReportHeader::flavour` of the native report, the only one (the SNP-format export, [`crate::snp`], is
/// a format of its own).
pub const FLAVOUR_NATIVE: u16 = 1;

/// Bytes of [`ReportHeader`].
pub const HEADER_BYTES: usize = 24;
/// Bytes of [`TsmIdentity`].
pub const TSM_IDENTITY_BYTES: usize = 56;
/// Bytes of [`TdIdentity`].
pub const TD_IDENTITY_BYTES: usize = 256;
/// Bytes of one [`DeviceEntry`].
pub const DEVICE_ENTRY_BYTES: usize = 176;
/// Bytes of a whole [`Report`].
pub const REPORT_BYTES: usize = 1200;

/// The bytes the signature covers: everything before it.
pub const SIGNED: Range<usize> = 0..1104;

/// Bit 24 of the function id: the entry names a real function.
pub const FUNCTION_ID_VALID: u32 = 1 << 24;

/// The fixed header.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct ReportHeader {
    /// [`MAGIC`].
    pub magic: [u8; 8],
    /// [`VERSION`] (little-endian u16).
    pub version: [u8; 2],
    /// [`FLAVOUR_NATIVE`] (little-endian u16).
    pub flavour: [u8; 2],
    /// [`HEADER_BYTES`] (little-endian u16), so that a later version can grow the header and an
    /// older reader can say so instead of misreading fields.
    pub header_size: [u8; 2],
    /// Device entries in use, at most [`MAX_DEVICES`] (little-endian u16).
    pub device_count: [u8; 2],
    /// [`REPORT_BYTES`] (little-endian u32): lets a reader reject a report of another size by
    /// reading the header alone.
    pub report_size: [u8; 4],
    /// Reserved, zero.
    pub reserved: [u8; 4],
}

/// The identity of the TSM that signed the report.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct TsmIdentity {
    /// Security version of the TSM (little-endian u16).
    pub svn: [u8; 2],
    /// Reserved, zero.
    pub reserved: [u8; 6],
    /// Measurement of the TSM image (the MRSEAM of TDX).
    pub mr_seam: [u8; DIGEST_BYTES],
}

/// The identity of the TD, as in TDX's TDINFO.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct TdIdentity {
    /// Build-time measurement.
    pub mr_td: [u8; DIGEST_BYTES],
    /// Run-time measurement registers.
    pub rtmr: [[u8; DIGEST_BYTES]; RTMRS],
    /// TD attributes (little-endian u64).
    pub attributes: [u8; 8],
    /// Extended features allowed mask (little-endian u64).
    pub xfam: [u8; 8],
}

/// One assigned device interface (TDI): its TDISP state and lock flags, what SPDM negotiated with
/// its device, and the SHA-384 digests of its evidence.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct DeviceEntry {
    /// PCIe function id (little-endian u32): RID in bits 15:0, segment in 23:16,
    /// [`FUNCTION_ID_VALID`] in bit 24, bits 31:25 zero. The TDISP INTERFACE_ID.FUNCTION_ID.
    pub function_id: [u8; 4],
    /// [`TdiState`] as a byte.
    pub tdi_state: u8,
    /// SPDM version negotiated (major << 4 | minor, as in the SPDM header).
    pub spdm_version: u8,
    /// Flags of TDISP LOCK_INTERFACE_REQUEST (little-endian u16): NO_FW_UPDATE 0x1, ...
    pub lock_flags: [u8; 2],
    /// ALGORITHMS.BaseAsymSel (little-endian u32).
    pub base_asym_algo: [u8; 4],
    /// ALGORITHMS.BaseHashSel (little-endian u32).
    pub base_hash_algo: [u8; 4],
    /// ALGORITHMS.MeasurementHashAlgo (little-endian u32).
    pub measurement_hash_algo: [u8; 4],
    /// ALGORITHMS DHE struct table entry (little-endian u16).
    pub dhe: [u8; 2],
    /// ALGORITHMS AEAD struct table entry (little-endian u16).
    pub aead: [u8; 2],
    /// ALGORITHMS KeySchedule struct table entry (little-endian u16).
    pub key_schedule: [u8; 2],
    /// ALGORITHMS.MeasurementSpecificationSel (0x01 = DMTF).
    pub measurement_spec: u8,
    /// How the measurements were taken: [`MEASURED_IN_SESSION`] if GET_MEASUREMENTS ran inside
    /// the SPDM secured session (after KEY_EXCHANGE / FINISH), clear if it ran before it in the
    /// clear. The transcript is the same bytes either way, so only the TSM can say; other bits
    /// are zero.
    pub measurement_flags: u8,
    /// Reserved, zero.
    pub reserved: [u8; 4],
    /// SHA-384 of the SPDM certificate chain ([`crate::evidence::RecordType::CertChain`]).
    pub cert_chain_sha384: [u8; DIGEST_BYTES],
    /// SHA-384 of the measurement transcript: VCA and the signed GET_MEASUREMENTS exchange
    /// (see [`crate::evidence::transcript_digest`]).
    pub measurements_transcript_sha384: [u8; DIGEST_BYTES],
    /// SHA-384 of the TDISP DEVICE_INTERFACE_REPORT.
    pub interface_report_sha384: [u8; DIGEST_BYTES],
}

/// The native report.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct Report {
    /// The fixed header.
    pub header: ReportHeader,
    /// The signing TSM.
    pub tsm: TsmIdentity,
    /// The TD.
    pub td: TdIdentity,
    /// Data the TD supplied (the verifier's nonce).
    pub report_data: [u8; REPORT_DATA_BYTES],
    /// Device entries; the first `device_count` are in use, the rest all zero.
    pub devices: [DeviceEntry; MAX_DEVICES],
    /// ECDSA P-384 signature r || s over SHA-384 of [`SIGNED`].
    pub signature: [u8; SIGNATURE_BYTES],
}

const _: () = assert!(size_of::<ReportHeader>() == HEADER_BYTES);
const _: () = assert!(size_of::<TsmIdentity>() == TSM_IDENTITY_BYTES);
const _: () = assert!(size_of::<TdIdentity>() == TD_IDENTITY_BYTES);
const _: () = assert!(size_of::<DeviceEntry>() == DEVICE_ENTRY_BYTES);
const _: () = assert!(size_of::<Report>() == REPORT_BYTES);

const _: () = assert!(offset_of!(ReportHeader, magic) == 0);
const _: () = assert!(offset_of!(ReportHeader, version) == 8);
const _: () = assert!(offset_of!(ReportHeader, flavour) == 10);
const _: () = assert!(offset_of!(ReportHeader, header_size) == 12);
const _: () = assert!(offset_of!(ReportHeader, device_count) == 14);
const _: () = assert!(offset_of!(ReportHeader, report_size) == 16);
const _: () = assert!(offset_of!(ReportHeader, reserved) == 20);

const _: () = assert!(offset_of!(TsmIdentity, svn) == 0);
const _: () = assert!(offset_of!(TsmIdentity, reserved) == 2);
const _: () = assert!(offset_of!(TsmIdentity, mr_seam) == 8);

const _: () = assert!(offset_of!(TdIdentity, mr_td) == 0);
const _: () = assert!(offset_of!(TdIdentity, rtmr) == 48);
const _: () = assert!(offset_of!(TdIdentity, attributes) == 240);
const _: () = assert!(offset_of!(TdIdentity, xfam) == 248);

const _: () = assert!(offset_of!(DeviceEntry, function_id) == 0);
const _: () = assert!(offset_of!(DeviceEntry, tdi_state) == 4);
const _: () = assert!(offset_of!(DeviceEntry, spdm_version) == 5);
const _: () = assert!(offset_of!(DeviceEntry, lock_flags) == 6);
const _: () = assert!(offset_of!(DeviceEntry, base_asym_algo) == 8);
const _: () = assert!(offset_of!(DeviceEntry, base_hash_algo) == 12);
const _: () = assert!(offset_of!(DeviceEntry, measurement_hash_algo) == 16);
const _: () = assert!(offset_of!(DeviceEntry, dhe) == 20);
const _: () = assert!(offset_of!(DeviceEntry, aead) == 22);
const _: () = assert!(offset_of!(DeviceEntry, key_schedule) == 24);
const _: () = assert!(offset_of!(DeviceEntry, measurement_spec) == 26);
const _: () = assert!(offset_of!(DeviceEntry, measurement_flags) == 27);
const _: () = assert!(offset_of!(DeviceEntry, reserved) == 28);
const _: () = assert!(offset_of!(DeviceEntry, cert_chain_sha384) == 32);
const _: () = assert!(offset_of!(DeviceEntry, measurements_transcript_sha384) == 80);
const _: () = assert!(offset_of!(DeviceEntry, interface_report_sha384) == 128);

const _: () = assert!(offset_of!(Report, header) == 0);
const _: () = assert!(offset_of!(Report, tsm) == 24);
const _: () = assert!(offset_of!(Report, td) == 80);
const _: () = assert!(offset_of!(Report, report_data) == 336);
const _: () = assert!(offset_of!(Report, devices) == 400);
const _: () = assert!(offset_of!(Report, signature) == 1104);
const _: () = assert!(offset_of!(Report, signature) == SIGNED.end);
const _: () = assert!(SIGNED.end + SIGNATURE_BYTES == REPORT_BYTES);

/// TDISP TDI state (PCIe TDISP, "TDI state machine").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum TdiState {
    /// Not locked: the host may still reconfigure the interface.
    ConfigUnlocked = 0,
    /// Locked, not yet accepted by the TD: the interface's configuration can no longer change.
    ConfigLocked = 1,
    /// Accepted by the TD: DMA and MMIO to private memory are enabled.
    Run = 2,
    /// A security violation took the interface out of CONFIG_LOCKED or RUN.
    Error = 3,
}

impl TdiState {
    /// The state for a byte, if it names one.
    pub fn from_u8(v: u8) -> Option<TdiState> {
        match v {
            0 => Some(TdiState::ConfigUnlocked),
            1 => Some(TdiState::ConfigLocked),
            2 => Some(TdiState::Run),
            3 => Some(TdiState::Error),
            _ => None,
        }
    }

    /// The spec's name.
    pub fn name(self) -> &'static str {
        match self {
            TdiState::ConfigUnlocked => "CONFIG_UNLOCKED",
            TdiState::ConfigLocked => "CONFIG_LOCKED",
            TdiState::Run => "RUN",
            TdiState::Error => "ERROR",
        }
    }
}

/// A PCIe function id as TDISP INTERFACE_ID carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FunctionId(pub u32);

impl FunctionId {
    /// The valid function `rid` (bus/device/function) in PCIe segment `segment`.
    pub fn new(segment: u8, rid: u16) -> FunctionId {
        FunctionId(FUNCTION_ID_VALID | (u32::from(segment) << 16) | u32::from(rid))
    }

    /// Requester id: bus 15:8, device 7:3, function 2:0.
    pub fn rid(self) -> u16 {
        (self.0 & 0xffff) as u16
    }

    /// PCIe segment.
    pub fn segment(self) -> u8 {
        ((self.0 >> 16) & 0xff) as u8
    }

    /// True if bit 24 is set and the reserved bits 31:25 are clear.
    pub fn is_valid(self) -> bool {
        self.0 & !(FUNCTION_ID_VALID | 0x00ff_ffff) == 0 && self.0 & FUNCTION_ID_VALID != 0
    }
}

impl fmt::Display for FunctionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rid = self.rid();
        write!(f, "{:04x}:{:02x}:{:02x}.{}", self.segment(), rid >> 8, (rid >> 3) & 0x1f, rid & 7)
    }
}

/// Which field of a report broke a format rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    /// `ReportHeader::reserved`.
    HeaderReserved,
    /// `TsmIdentity::reserved`.
    TsmReserved,
    /// `DeviceEntry::reserved` of the entry.
    DeviceReserved(u8),
    /// Bits of `DeviceEntry::measurement_flags` other than [`MEASURED_IN_SESSION`].
    DeviceMeasurementFlags(u8),
    /// A whole device entry past the device count.
    UnusedDevice(u8),
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Field::HeaderReserved => f.write_str("header.reserved"),
            Field::TsmReserved => f.write_str("tsm.reserved"),
            Field::DeviceReserved(i) => write!(f, "device{i}.reserved"),
            Field::DeviceMeasurementFlags(i) => write!(f, "device{i}.measurement_flags"),
            Field::UnusedDevice(i) => write!(f, "device{i} (unused entry)"),
        }
    }
}

/// Why bytes are not a version-1 native report. Checked in this order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FormatError {
    /// The input is not exactly [`REPORT_BYTES`] long.
    WrongLength {
        /// Bytes required.
        expected: usize,
        /// Bytes given.
        found: usize,
    },
    /// The first 8 bytes are not [`MAGIC`].
    BadMagic([u8; 8]),
    /// A version this crate does not read.
    UnsupportedVersion(u16),
    /// A flavour other than [`FLAVOUR_NATIVE`].
    UnsupportedFlavour(u16),
    /// The header size field is not [`HEADER_BYTES`].
    BadHeaderSize(u16),
    /// The report size field is not [`REPORT_BYTES`].
    BadReportSize(u32),
    /// More devices than [`MAX_DEVICES`].
    TooManyDevices(u16),
    /// A reserved field, or an unused device entry, is not zero.
    NonZeroReserved(Field),
    /// An entry in use has a function id without the valid bit, or with reserved bits set.
    InvalidFunctionId {
        /// Index of the entry.
        device: u8,
        /// The function id found.
        function_id: u32,
    },
    /// An entry in use has a TDI state byte that names no state.
    UnknownTdiState {
        /// Index of the entry.
        device: u8,
        /// The byte found.
        state: u8,
    },
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FormatError::WrongLength { expected, found } => {
                write!(f, "report must be {expected} bytes, got {found}")
            }
            FormatError::BadMagic(m) => write!(f, "bad magic {m:02x?}, expected \"SEAMRPT\\0\""),
            FormatError::UnsupportedVersion(v) => {
                write!(f, "unsupported report version {v} (this reader knows {VERSION})")
            }
            FormatError::UnsupportedFlavour(v) => {
                write!(f, "unsupported report flavour {v} (native is {FLAVOUR_NATIVE})")
            }
            FormatError::BadHeaderSize(v) => write!(f, "header size {v}, expected {HEADER_BYTES}"),
            FormatError::BadReportSize(v) => write!(f, "report size field {v}, expected {REPORT_BYTES}"),
            FormatError::TooManyDevices(n) => write!(f, "device count {n} exceeds {MAX_DEVICES}"),
            FormatError::NonZeroReserved(field) => write!(f, "{field} must be zero"),
            FormatError::InvalidFunctionId { device, function_id } => {
                write!(f, "device{device}: function id {function_id:#010x} lacks the valid bit or sets reserved bits")
            }
            FormatError::UnknownTdiState { device, state } => write!(f, "device{device}: unknown TDI state {state}"),
        }
    }
}

impl core::error::Error for FormatError {}

fn u16_of(b: [u8; 2]) -> u16 {
    u16::from_le_bytes(b)
}

fn u32_of(b: [u8; 4]) -> u32 {
    u32::from_le_bytes(b)
}

fn u64_of(b: [u8; 8]) -> u64 {
    u64::from_le_bytes(b)
}

fn all_zero(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| b == 0)
}

impl ReportHeader {
    /// VERSION as an integer.
    pub fn version(&self) -> u16 {
        u16_of(self.version)
    }

    /// FLAVOUR as an integer.
    pub fn flavour(&self) -> u16 {
        u16_of(self.flavour)
    }

    /// The device count as the header states it (not yet checked against [`MAX_DEVICES`] unless
    /// the report came from [`Report::parse`]).
    pub fn device_count(&self) -> u16 {
        u16_of(self.device_count)
    }
}

impl TsmIdentity {
    /// SVN as an integer.
    pub fn svn(&self) -> u16 {
        u16_of(self.svn)
    }

    /// Sets SVN.
    pub fn set_svn(&mut self, v: u16) {
        self.svn = v.to_le_bytes();
    }
}

impl TdIdentity {
    /// ATTRIBUTES as an integer.
    pub fn attributes(&self) -> u64 {
        u64_of(self.attributes)
    }

    /// Sets ATTRIBUTES.
    pub fn set_attributes(&mut self, v: u64) {
        self.attributes = v.to_le_bytes();
    }

    /// XFAM as an integer.
    pub fn xfam(&self) -> u64 {
        u64_of(self.xfam)
    }

    /// Sets XFAM.
    pub fn set_xfam(&mut self, v: u64) {
        self.xfam = v.to_le_bytes();
    }
}

/// The algorithms SPDM negotiated with a device, in NEGOTIATE_ALGORITHMS / ALGORITHMS encodings
/// (DSP0274): each field is the single bit the responder selected.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpdmAlgorithms {
    /// BaseAsymSel, e.g. 0x80 = TPM_ALG_ECDSA_ECC_NIST_P384.
    pub base_asym: u32,
    /// BaseHashSel, e.g. 0x02 = TPM_ALG_SHA_384.
    pub base_hash: u32,
    /// MeasurementHashAlgo, e.g. 0x04 = TPM_ALG_SHA_384.
    pub measurement_hash: u32,
    /// DHE group, e.g. 0x10 = SECP_384_R1.
    pub dhe: u16,
    /// AEAD cipher suite, e.g. 0x02 = AES_256_GCM.
    pub aead: u16,
    /// Key schedule, 0x01 = SPDM.
    pub key_schedule: u16,
    /// MeasurementSpecificationSel, 0x01 = DMTF.
    pub measurement_spec: u8,
}

/// `DeviceEntry::measurement_flags`: the measurements were taken inside the secured session.
pub const MEASURED_IN_SESSION: u8 = 0x01;

impl DeviceEntry {
    /// True if the device's measurements were taken inside the SPDM secured session.
    pub fn measured_in_session(&self) -> bool {
        self.measurement_flags & MEASURED_IN_SESSION != 0
    }

    /// Records where the measurements were taken.
    pub fn set_measured_in_session(&mut self, in_session: bool) {
        self.measurement_flags = if in_session { MEASURED_IN_SESSION } else { 0 };
    }

    /// An all-zero (unused) entry.
    pub fn zeroed() -> DeviceEntry {
        DeviceEntry::new_zeroed()
    }

    /// The function id.
    pub fn function_id(&self) -> FunctionId {
        FunctionId(u32_of(self.function_id))
    }

    /// Sets the function id.
    pub fn set_function_id(&mut self, id: FunctionId) {
        self.function_id = id.0.to_le_bytes();
    }

    /// The TDI state, or `None` for a byte that names none (which [`Report::parse`] rejects for
    /// entries in use).
    pub fn tdi_state(&self) -> Option<TdiState> {
        TdiState::from_u8(self.tdi_state)
    }

    /// Sets the TDI state.
    pub fn set_tdi_state(&mut self, state: TdiState) {
        self.tdi_state = state as u8;
    }

    /// The TDISP lock flags.
    pub fn lock_flags(&self) -> u16 {
        u16_of(self.lock_flags)
    }

    /// Sets the TDISP lock flags.
    pub fn set_lock_flags(&mut self, flags: u16) {
        self.lock_flags = flags.to_le_bytes();
    }

    /// The negotiated algorithms.
    pub fn algorithms(&self) -> SpdmAlgorithms {
        SpdmAlgorithms {
            base_asym: u32_of(self.base_asym_algo),
            base_hash: u32_of(self.base_hash_algo),
            measurement_hash: u32_of(self.measurement_hash_algo),
            dhe: u16_of(self.dhe),
            aead: u16_of(self.aead),
            key_schedule: u16_of(self.key_schedule),
            measurement_spec: self.measurement_spec,
        }
    }

    /// Sets the negotiated algorithms.
    pub fn set_algorithms(&mut self, a: &SpdmAlgorithms) {
        self.base_asym_algo = a.base_asym.to_le_bytes();
        self.base_hash_algo = a.base_hash.to_le_bytes();
        self.measurement_hash_algo = a.measurement_hash.to_le_bytes();
        self.dhe = a.dhe.to_le_bytes();
        self.aead = a.aead.to_le_bytes();
        self.key_schedule = a.key_schedule.to_le_bytes();
        self.measurement_spec = a.measurement_spec;
    }
}

impl Report {
    /// An unsigned report with a valid header, no devices and every other field zero.
    pub fn new() -> Report {
        let mut r = Report::new_zeroed();
        r.header.magic = MAGIC;
        r.header.version = VERSION.to_le_bytes();
        r.header.flavour = FLAVOUR_NATIVE.to_le_bytes();
        r.header.header_size = (HEADER_BYTES as u16).to_le_bytes();
        r.header.report_size = (REPORT_BYTES as u32).to_le_bytes();
        r
    }

    /// Parses a report from untrusted bytes, borrowing them. Checks the format only (the
    /// [`FormatError`] variants, in their order); the signature is for [`crate::sign::verify`].
    ///
    /// # Errors
    /// The first format rule the bytes break.
    pub fn parse(bytes: &[u8]) -> Result<&Report, FormatError> {
        let report = Report::ref_from_bytes(bytes)
            .map_err(|_| FormatError::WrongLength { expected: REPORT_BYTES, found: bytes.len() })?;
        report.check_format()?;
        Ok(report)
    }

    /// Checks the format rules [`Report::parse`] checks, on a report already in memory (for
    /// example one a TSM built before signing it).
    ///
    /// # Errors
    /// The first format rule the report breaks.
    pub fn check_format(&self) -> Result<(), FormatError> {
        let h = &self.header;
        if h.magic != MAGIC {
            return Err(FormatError::BadMagic(h.magic));
        }
        if h.version() != VERSION {
            return Err(FormatError::UnsupportedVersion(h.version()));
        }
        if h.flavour() != FLAVOUR_NATIVE {
            return Err(FormatError::UnsupportedFlavour(h.flavour()));
        }
        if usize::from(u16_of(h.header_size)) != HEADER_BYTES {
            return Err(FormatError::BadHeaderSize(u16_of(h.header_size)));
        }
        if u32_of(h.report_size) as usize != REPORT_BYTES {
            return Err(FormatError::BadReportSize(u32_of(h.report_size)));
        }
        let count = h.device_count();
        if usize::from(count) > MAX_DEVICES {
            return Err(FormatError::TooManyDevices(count));
        }
        if !all_zero(&h.reserved) {
            return Err(FormatError::NonZeroReserved(Field::HeaderReserved));
        }
        if !all_zero(&self.tsm.reserved) {
            return Err(FormatError::NonZeroReserved(Field::TsmReserved));
        }
        for (i, d) in self.devices.iter().enumerate() {
            let device = i as u8;
            if i >= usize::from(count) {
                if !all_zero(d.as_bytes()) {
                    return Err(FormatError::NonZeroReserved(Field::UnusedDevice(device)));
                }
                continue;
            }
            let function_id = d.function_id();
            if !function_id.is_valid() {
                return Err(FormatError::InvalidFunctionId { device, function_id: function_id.0 });
            }
            if d.tdi_state().is_none() {
                return Err(FormatError::UnknownTdiState { device, state: d.tdi_state });
            }
            if !all_zero(&d.reserved) {
                return Err(FormatError::NonZeroReserved(Field::DeviceReserved(device)));
            }
            if d.measurement_flags & !MEASURED_IN_SESSION != 0 {
                return Err(FormatError::NonZeroReserved(Field::DeviceMeasurementFlags(device)));
            }
        }
        Ok(())
    }

    /// Copies a report out of untrusted bytes, then checks it: the form for memory someone else
    /// can still change.
    ///
    /// # Errors
    /// As [`Report::parse`].
    pub fn read_from(bytes: &[u8]) -> Result<Report, FormatError> {
        let report = Report::read_from_bytes(bytes)
            .map_err(|_| FormatError::WrongLength { expected: REPORT_BYTES, found: bytes.len() })?;
        report.check_format()?;
        Ok(report)
    }

    /// The report as its bytes.
    pub fn to_bytes(&self) -> [u8; REPORT_BYTES] {
        let mut out = [0u8; REPORT_BYTES];
        out.copy_from_slice(self.as_bytes());
        out
    }

    /// The bytes the signature covers ([`SIGNED`]).
    pub fn signed_bytes(&self) -> &[u8] {
        &self.as_bytes()[SIGNED]
    }

    /// SHA-384 of [`Report::signed_bytes`]: what the signature signs, and the report's identity
    /// for anything that binds to it (the SNP export's REPORT_DATA).
    pub fn digest(&self) -> [u8; DIGEST_BYTES] {
        Sha384::digest(self.signed_bytes()).into()
    }

    /// The entries in use: the first `device_count`, clamped to [`MAX_DEVICES`] for a report that
    /// did not come through [`Report::parse`].
    pub fn devices(&self) -> &[DeviceEntry] {
        let n = usize::from(self.header.device_count()).min(MAX_DEVICES);
        &self.devices[..n]
    }

    /// Puts `devices` into the first entries, zeroes the rest and sets the device count.
    ///
    /// # Errors
    /// [`FormatError::TooManyDevices`] if there are more than [`MAX_DEVICES`]; the report is then
    /// unchanged.
    pub fn set_devices(&mut self, devices: &[DeviceEntry]) -> Result<(), FormatError> {
        if devices.len() > MAX_DEVICES {
            return Err(FormatError::TooManyDevices(u16::try_from(devices.len()).unwrap_or(u16::MAX)));
        }
        // All checks passed.
        for (i, slot) in self.devices.iter_mut().enumerate() {
            *slot = devices.get(i).copied().unwrap_or_else(DeviceEntry::zeroed);
        }
        self.header.device_count = (devices.len() as u16).to_le_bytes();
        Ok(())
    }
}

impl Default for Report {
    fn default() -> Report {
        Report::new()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A report with two devices and distinct bytes in every field.
    pub(crate) fn sample() -> Report {
        let mut r = Report::new();
        r.tsm.set_svn(7);
        r.tsm.mr_seam = [0x5e; 48];
        r.td.mr_td = [0x7d; 48];
        for (i, rtmr) in r.td.rtmr.iter_mut().enumerate() {
            *rtmr = [0x10 + i as u8; 48];
        }
        r.td.set_attributes(0x1000_0000);
        r.td.set_xfam(0xe7);
        r.report_data = [0xda; 64];
        let mut d = DeviceEntry::zeroed();
        d.set_function_id(FunctionId::new(0, 0x0100));
        d.set_tdi_state(TdiState::Run);
        d.spdm_version = 0x12;
        d.set_lock_flags(0x1);
        d.set_algorithms(&SpdmAlgorithms {
            base_asym: 0x80,
            base_hash: 0x02,
            measurement_hash: 0x04,
            dhe: 0x10,
            aead: 0x02,
            key_schedule: 0x01,
            measurement_spec: 0x01,
        });
        d.cert_chain_sha384 = [0xc0; 48];
        d.measurements_transcript_sha384 = [0xc1; 48];
        d.interface_report_sha384 = [0xc2; 48];
        let mut d1 = d;
        d1.set_function_id(FunctionId::new(1, 0x0208));
        r.set_devices(&[d, d1]).unwrap();
        r
    }

    #[test]
    fn fields_land_at_documented_offsets() {
        let b = sample().to_bytes();
        assert_eq!(&b[0..8], b"SEAMRPT\0");
        assert_eq!(&b[8..16], &[1, 0, 1, 0, 24, 0, 2, 0]);
        assert_eq!(&b[16..20], &1200u32.to_le_bytes());
        assert_eq!(&b[24..26], &[7, 0]);
        assert_eq!(&b[32..80], &[0x5e; 48]);
        assert_eq!(&b[80..128], &[0x7d; 48]);
        assert_eq!(&b[128 + 2 * 48..128 + 3 * 48], &[0x12; 48]);
        assert_eq!(&b[320..328], &0x1000_0000u64.to_le_bytes());
        assert_eq!(b[328], 0xe7);
        assert_eq!(&b[336..400], &[0xda; 64]);
        let d1 = 400 + 176;
        assert_eq!(&b[d1..d1 + 4], &[0x08, 0x02, 0x01, 0x01]);
        assert_eq!(b[d1 + 4], 2);
        assert_eq!(b[d1 + 5], 0x12);
        assert_eq!(b[d1 + 8], 0x80);
        assert_eq!(&b[d1 + 128..d1 + 176], &[0xc2; 48]);
        assert!(b[400 + 2 * 176..1104].iter().all(|&x| x == 0));
    }

    #[test]
    fn parse_round_trips() {
        let r = sample();
        let b = r.to_bytes();
        assert_eq!(Report::parse(&b), Ok(&r));
        assert_eq!(Report::read_from(&b), Ok(r));
        let p = Report::parse(&b).unwrap();
        assert_eq!(p.devices().len(), 2);
        assert_eq!(p.devices()[1].function_id().segment(), 1);
        assert_eq!(p.devices()[1].function_id().rid(), 0x0208);
        assert_eq!(p.devices()[1].function_id().to_string(), "0001:02:01.0");
        assert_eq!(p.devices()[0].tdi_state(), Some(TdiState::Run));
        assert_eq!(p.devices()[0].algorithms().base_asym, 0x80);
        assert_eq!(p.tsm.svn(), 7);
        assert_eq!(p.td.attributes(), 0x1000_0000);
        assert_eq!(p.td.xfam(), 0xe7);
    }

    #[test]
    fn signed_bytes_and_digest_cover_all_before_signature() {
        let mut r = sample();
        assert_eq!(r.signed_bytes(), &r.to_bytes()[..1104]);
        let d = r.digest();
        r.signature = [0xff; 96];
        assert_eq!(r.digest(), d, "the signature is not signed");
        r.header.reserved[0] = 1;
        assert_ne!(r.digest(), d);
    }

    fn with(f: impl FnOnce(&mut [u8; REPORT_BYTES])) -> [u8; REPORT_BYTES] {
        let mut b = sample().to_bytes();
        f(&mut b);
        b
    }

    #[test]
    fn parse_rejects_each_format_error() {
        let b = sample().to_bytes();
        for len in [0, 1, 24, 1199, 1201] {
            let mut v = [0u8; 1201];
            v[..len.min(1200)].copy_from_slice(&b[..len.min(1200)]);
            assert_eq!(Report::parse(&v[..len]), Err(FormatError::WrongLength { expected: 1200, found: len }));
        }
        type Case = (fn(&mut [u8; REPORT_BYTES]), FormatError);
        let cases: [Case; 13] = [
            (|b| b[0] = b'X', FormatError::BadMagic(*b"XEAMRPT\0")),
            (|b| b[8] = 2, FormatError::UnsupportedVersion(2)),
            (|b| b[9] = 1, FormatError::UnsupportedVersion(0x101)),
            (|b| b[10] = 2, FormatError::UnsupportedFlavour(2)),
            (|b| b[12] = 16, FormatError::BadHeaderSize(16)),
            (|b| b[17] = 0, FormatError::BadReportSize(0xb0)),
            (|b| b[14] = 5, FormatError::TooManyDevices(5)),
            (|b| b[23] = 1, FormatError::NonZeroReserved(Field::HeaderReserved)),
            (|b| b[26] = 1, FormatError::NonZeroReserved(Field::TsmReserved)),
            (|b| b[400 + 3] = 0, FormatError::InvalidFunctionId { device: 0, function_id: 0x100 }),
            (|b| b[400 + 4] = 4, FormatError::UnknownTdiState { device: 0, state: 4 }),
            (|b| b[400 + 176 + 31] = 9, FormatError::NonZeroReserved(Field::DeviceReserved(1))),
            (|b| b[400 + 176 + 27] = 2, FormatError::NonZeroReserved(Field::DeviceMeasurementFlags(1))),
        ];
        for (i, (mutate, err)) in cases.into_iter().enumerate() {
            assert_eq!(Report::parse(&with(mutate)), Err(err), "case {i}");
            assert!(!err.to_string().is_empty());
        }
        assert_eq!(
            Report::parse(&with(|b| b[400 + 2 * 176 + 100] = 1)),
            Err(FormatError::NonZeroReserved(Field::UnusedDevice(2)))
        );
        assert_eq!(
            Report::parse(&with(|b| b[400 + 3] = 3)),
            Err(FormatError::InvalidFunctionId { device: 0, function_id: 0x0300_0100 })
        );
        // Bit 0 of the measurement flags is the one defined bit.
        assert!(Report::parse(&with(|b| b[400 + 27] = 1)).is_ok_and(|r| r.devices()[0].measured_in_session()));
        // Lowering the count turns an entry in use into a non-zero unused one.
        assert_eq!(Report::parse(&with(|b| b[14] = 1)), Err(FormatError::NonZeroReserved(Field::UnusedDevice(1))));
    }

    #[test]
    fn set_devices_rejects_too_many_and_changes_nothing() {
        let mut r = sample();
        let before = r;
        assert_eq!(r.set_devices(&[DeviceEntry::zeroed(); 5]), Err(FormatError::TooManyDevices(5)));
        assert_eq!(r, before);
        r.set_devices(&[]).unwrap();
        assert_eq!(r.devices().len(), 0);
        assert_eq!(Report::parse(&r.to_bytes()), Ok(&r));
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics_on_random_bytes(b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..1300)) {
            match Report::parse(&b) {
                Ok(r) => proptest::prop_assert_eq!(r.as_bytes(), &b[..]),
                Err(e) => proptest::prop_assert!(!e.to_string().is_empty()),
            }
        }

        #[test]
        fn parse_never_panics_on_a_mutated_report(
            writes in proptest::collection::vec((0usize..REPORT_BYTES, proptest::prelude::any::<u8>()), 1..6),
        ) {
            let mut b = sample().to_bytes();
            for (at, v) in writes {
                b[at] = v;
            }
            if let Ok(r) = Report::parse(&b) {
                proptest::prop_assert!(r.devices().len() <= MAX_DEVICES);
                proptest::prop_assert!(r.devices().iter().all(|d| d.tdi_state().is_some()));
            }
        }
    }
}
