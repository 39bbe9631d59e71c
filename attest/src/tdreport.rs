//! The 1024-byte TDX TDREPORT_STRUCT (Intel TDX Module ABI spec, "TDREPORT_STRUCT").
//!
//! ```text
//! 0     REPORTMACSTRUCT (256)   REPORTTYPE, CPUSVN, TEE_TCB_INFO_HASH, TEE_INFO_HASH,
//!                               REPORTDATA, MAC; the MAC covers bytes 0..224
//! 256   TEE_TCB_INFO (239)      the TSM's identity: SVN, MRSEAM, MRSIGNERSEAM, ...
//! 495   reserved (17)
//! 512   TDINFO (512)            the TD's identity: ATTRIBUTES, XFAM, MRTD, ..., RTMR[4]
//! ```
//!
//! The MAC binds TEE_TCB_INFO and TDINFO only through their SHA-384 hashes in REPORTMACSTRUCT,
//! so a verifier must check [`TdReport::tee_tcb_info_hash_ok`] and [`TdReport::tee_info_hash_ok`]
//! as well as the MAC.
//!
//! Every field is a byte array (integers little-endian), so the structs have alignment 1 and no
//! padding, and any 1024 bytes parse.

use core::fmt;
use core::mem::{offset_of, size_of};
use core::ops::Range;

use sha2::{Digest, Sha384};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

/// Bytes of TDREPORT_STRUCT.
pub const TDREPORT_BYTES: usize = 1024;
/// Bytes of REPORTMACSTRUCT.
pub const REPORTMAC_BYTES: usize = 256;
/// Bytes of TEE_TCB_INFO.
pub const TEE_TCB_INFO_BYTES: usize = 239;
/// Bytes of TDINFO.
pub const TDINFO_BYTES: usize = 512;
/// Bytes of a SHA-384 measurement register.
pub const MR_BYTES: usize = 48;
/// Number of run-time measurement registers.
pub const RTMRS: usize = 4;

/// REPORTMACSTRUCT bytes covered by the MAC: everything before the MAC field. TEE_TCB_INFO and
/// TDINFO are bound through their hashes inside this range.
pub const MAC_COVERED: Range<usize> = 0..224;

/// REPORTTYPE.TYPE of a TDX report.
pub const REPORT_TYPE_TDX: u8 = 0x81;
/// REPORTTYPE of a TDX report: type 0x81, subtype 0, version 0, reserved 0.
pub const REPORT_TYPE_TDX_V0: [u8; 4] = [REPORT_TYPE_TDX, 0, 0, 0];

/// REPORTMACSTRUCT: the header the MAC protects.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct ReportMacStruct {
    /// TYPE (0x81 for TDX), SUBTYPE, VERSION, reserved.
    pub report_type: [u8; 4],
    /// Reserved, zero.
    pub reserved1: [u8; 12],
    /// CPU security version (here the TSM's SVN).
    pub cpu_svn: [u8; 16],
    /// SHA-384 of TEE_TCB_INFO.
    pub tee_tcb_info_hash: [u8; MR_BYTES],
    /// SHA-384 of TDINFO.
    pub tee_info_hash: [u8; MR_BYTES],
    /// Data the TD supplied to TDG.MR.REPORT.
    pub report_data: [u8; 64],
    /// Reserved, zero.
    pub reserved2: [u8; 32],
    /// MAC over bytes [`MAC_COVERED`].
    pub mac: [u8; 32],
}

/// TEE_TCB_INFO: the identity of the TSM (the SEAM module in TDX).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct TeeTcbInfo {
    /// Bit mask of the fields that are valid (little-endian u64).
    pub valid: [u8; 8],
    /// Security version of the TSM.
    pub tee_tcb_svn: [u8; 16],
    /// Measurement of the TSM.
    pub mr_seam: [u8; MR_BYTES],
    /// Measurement of the TSM's signer (zero for Intel's own module).
    pub mr_signer_seam: [u8; MR_BYTES],
    /// Attributes of the TSM (little-endian u64).
    pub attributes: [u8; 8],
    /// Second security version field.
    pub tee_tcb_svn2: [u8; 16],
    /// Reserved, zero.
    pub reserved: [u8; 95],
}

/// TDINFO: the identity of the TD.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct TdInfo {
    /// TD attributes (little-endian u64).
    pub attributes: [u8; 8],
    /// Extended features allowed mask (little-endian u64).
    pub xfam: [u8; 8],
    /// Build-time measurement.
    pub mr_td: [u8; MR_BYTES],
    /// Software-defined id of the TD's configuration.
    pub mr_config_id: [u8; MR_BYTES],
    /// Software-defined id of the TD's owner.
    pub mr_owner: [u8; MR_BYTES],
    /// Software-defined id of the owner's configuration.
    pub mr_owner_config: [u8; MR_BYTES],
    /// Run-time measurement registers.
    pub rtmr: [[u8; MR_BYTES]; RTMRS],
    /// Hash of the service TDs bound to this TD.
    pub servtd_hash: [u8; MR_BYTES],
    /// Reserved, zero.
    pub reserved: [u8; 64],
}

/// TDREPORT_STRUCT.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct TdReport {
    /// The MAC-protected header.
    pub report_mac: ReportMacStruct,
    /// The TSM's identity.
    pub tee_tcb_info: TeeTcbInfo,
    /// Reserved, zero.
    pub reserved: [u8; 17],
    /// The TD's identity.
    pub td_info: TdInfo,
}

const _: () = assert!(size_of::<ReportMacStruct>() == REPORTMAC_BYTES);
const _: () = assert!(size_of::<TeeTcbInfo>() == TEE_TCB_INFO_BYTES);
const _: () = assert!(size_of::<TdInfo>() == TDINFO_BYTES);
const _: () = assert!(size_of::<TdReport>() == TDREPORT_BYTES);

const _: () = assert!(offset_of!(ReportMacStruct, report_type) == 0);
const _: () = assert!(offset_of!(ReportMacStruct, cpu_svn) == 16);
const _: () = assert!(offset_of!(ReportMacStruct, tee_tcb_info_hash) == 32);
const _: () = assert!(offset_of!(ReportMacStruct, tee_info_hash) == 80);
const _: () = assert!(offset_of!(ReportMacStruct, report_data) == 128);
const _: () = assert!(offset_of!(ReportMacStruct, reserved2) == 192);
const _: () = assert!(offset_of!(ReportMacStruct, mac) == 224);
const _: () = assert!(offset_of!(ReportMacStruct, mac) == MAC_COVERED.end);

const _: () = assert!(offset_of!(TeeTcbInfo, valid) == 0);
const _: () = assert!(offset_of!(TeeTcbInfo, tee_tcb_svn) == 8);
const _: () = assert!(offset_of!(TeeTcbInfo, mr_seam) == 24);
const _: () = assert!(offset_of!(TeeTcbInfo, mr_signer_seam) == 72);
const _: () = assert!(offset_of!(TeeTcbInfo, attributes) == 120);
const _: () = assert!(offset_of!(TeeTcbInfo, tee_tcb_svn2) == 128);
const _: () = assert!(offset_of!(TeeTcbInfo, reserved) == 144);

const _: () = assert!(offset_of!(TdInfo, attributes) == 0);
const _: () = assert!(offset_of!(TdInfo, xfam) == 8);
const _: () = assert!(offset_of!(TdInfo, mr_td) == 16);
const _: () = assert!(offset_of!(TdInfo, mr_config_id) == 64);
const _: () = assert!(offset_of!(TdInfo, mr_owner) == 112);
const _: () = assert!(offset_of!(TdInfo, mr_owner_config) == 160);
const _: () = assert!(offset_of!(TdInfo, rtmr) == 208);
const _: () = assert!(offset_of!(TdInfo, servtd_hash) == 400);
const _: () = assert!(offset_of!(TdInfo, reserved) == 448);

const _: () = assert!(offset_of!(TdReport, report_mac) == 0);
const _: () = assert!(offset_of!(TdReport, tee_tcb_info) == 256);
const _: () = assert!(offset_of!(TdReport, reserved) == 495);
const _: () = assert!(offset_of!(TdReport, td_info) == 512);

/// Why bytes are not a TDREPORT_STRUCT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FormatError {
    /// The input is not exactly [`TDREPORT_BYTES`] long.
    WrongLength {
        /// Bytes required.
        expected: usize,
        /// Bytes given.
        found: usize,
    },
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FormatError::WrongLength { expected, found } => {
                write!(f, "TDREPORT must be {expected} bytes, got {found}")
            }
        }
    }
}

impl core::error::Error for FormatError {}

fn u64_of(bytes: &[u8; 8]) -> u64 {
    u64::from_le_bytes(*bytes)
}

fn sha384(bytes: &[u8]) -> [u8; MR_BYTES] {
    Sha384::digest(bytes).into()
}

impl ReportMacStruct {
    /// The bytes the MAC covers ([`MAC_COVERED`]).
    pub fn mac_covered(&self) -> &[u8] {
        &self.as_bytes()[MAC_COVERED]
    }
}

impl TeeTcbInfo {
    /// VALID as an integer.
    pub fn valid(&self) -> u64 {
        u64_of(&self.valid)
    }

    /// Sets VALID.
    pub fn set_valid(&mut self, v: u64) {
        self.valid = v.to_le_bytes();
    }

    /// ATTRIBUTES as an integer.
    pub fn attributes(&self) -> u64 {
        u64_of(&self.attributes)
    }

    /// Sets ATTRIBUTES.
    pub fn set_attributes(&mut self, v: u64) {
        self.attributes = v.to_le_bytes();
    }

    /// SHA-384 of the 239 bytes, as REPORTMACSTRUCT.TEE_TCB_INFO_HASH holds it.
    pub fn hash(&self) -> [u8; MR_BYTES] {
        sha384(self.as_bytes())
    }
}

impl TdInfo {
    /// ATTRIBUTES as an integer.
    pub fn attributes(&self) -> u64 {
        u64_of(&self.attributes)
    }

    /// Sets ATTRIBUTES.
    pub fn set_attributes(&mut self, v: u64) {
        self.attributes = v.to_le_bytes();
    }

    /// XFAM as an integer.
    pub fn xfam(&self) -> u64 {
        u64_of(&self.xfam)
    }

    /// Sets XFAM.
    pub fn set_xfam(&mut self, v: u64) {
        self.xfam = v.to_le_bytes();
    }

    /// SHA-384 of the 512 bytes, as REPORTMACSTRUCT.TEE_INFO_HASH holds it.
    pub fn hash(&self) -> [u8; MR_BYTES] {
        sha384(self.as_bytes())
    }
}

impl TdReport {
    /// An all-zero report.
    pub fn zeroed() -> TdReport {
        TdReport::new_zeroed()
    }

    /// Parses a report from untrusted bytes. Any 1024 bytes are a report; whether it is a
    /// *valid* one is for the verifier (type, hashes, MAC).
    ///
    /// # Errors
    /// [`FormatError::WrongLength`] unless `bytes` is exactly [`TDREPORT_BYTES`] long.
    pub fn read_from(bytes: &[u8]) -> Result<TdReport, FormatError> {
        TdReport::read_from_bytes(bytes)
            .map_err(|_| FormatError::WrongLength { expected: TDREPORT_BYTES, found: bytes.len() })
    }

    /// The report as its 1024 bytes.
    pub fn to_bytes(&self) -> [u8; TDREPORT_BYTES] {
        let mut out = [0u8; TDREPORT_BYTES];
        out.copy_from_slice(self.as_bytes());
        out
    }

    /// True if REPORTTYPE says TDX (type 0x81, subtype 0, version 0).
    pub fn is_tdx_v0(&self) -> bool {
        self.report_mac.report_type[..3] == REPORT_TYPE_TDX_V0[..3]
    }

    /// True if TEE_TCB_INFO_HASH is the SHA-384 of TEE_TCB_INFO.
    pub fn tee_tcb_info_hash_ok(&self) -> bool {
        self.report_mac.tee_tcb_info_hash == self.tee_tcb_info.hash()
    }

    /// True if TEE_INFO_HASH is the SHA-384 of TDINFO.
    pub fn tee_info_hash_ok(&self) -> bool {
        self.report_mac.tee_info_hash == self.td_info.hash()
    }

    /// Recomputes both hashes in REPORTMACSTRUCT (the MAC must be computed afterwards).
    pub fn update_hashes(&mut self) {
        self.report_mac.tee_tcb_info_hash = self.tee_tcb_info.hash();
        self.report_mac.tee_info_hash = self.td_info.hash();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> TdReport {
        let mut r = TdReport::zeroed();
        r.report_mac.report_type = REPORT_TYPE_TDX_V0;
        r.report_mac.report_data = [0xda; 64];
        r.tee_tcb_info.set_valid(0b1111);
        r.tee_tcb_info.mr_seam = [0x5e; 48];
        r.td_info.set_attributes(0x1234_5678_9abc_def0);
        r.td_info.set_xfam(3);
        r.td_info.mr_td = [0x7d; 48];
        r.td_info.rtmr[2] = [0x22; 48];
        r.report_mac.mac = [0xac; 32];
        r.update_hashes();
        r
    }

    #[test]
    fn fields_land_at_spec_offsets() {
        let b = sample().to_bytes();
        assert_eq!(b[0], 0x81);
        assert_eq!(&b[128..192], &[0xda; 64]);
        assert_eq!(&b[224..256], &[0xac; 32]);
        assert_eq!(b[256], 0b1111);
        assert_eq!(&b[256 + 24..256 + 72], &[0x5e; 48]);
        assert_eq!(&b[512..520], &0x1234_5678_9abc_def0u64.to_le_bytes());
        assert_eq!(b[520], 3);
        assert_eq!(&b[512 + 16..512 + 64], &[0x7d; 48]);
        assert_eq!(&b[512 + 208 + 96..512 + 208 + 144], &[0x22; 48]);
    }

    #[test]
    fn hashes_are_over_the_raw_sub_structs() {
        let r = sample();
        let b = r.to_bytes();
        assert_eq!(&b[32..80], &sha384(&b[256..495])[..]);
        assert_eq!(&b[80..128], &sha384(&b[512..1024])[..]);
        assert!(r.tee_tcb_info_hash_ok() && r.tee_info_hash_ok());
    }

    #[test]
    fn hash_helpers_catch_tampering() {
        let mut r = sample();
        r.td_info.mr_td[0] ^= 1;
        assert!(!r.tee_info_hash_ok());
        assert!(r.tee_tcb_info_hash_ok());
        let mut r = sample();
        r.tee_tcb_info.mr_seam[47] ^= 1;
        assert!(!r.tee_tcb_info_hash_ok());
        assert!(r.tee_info_hash_ok());
    }

    #[test]
    fn mac_covers_header_before_mac() {
        let r = sample();
        let covered = r.report_mac.mac_covered();
        assert_eq!(covered.len(), 224);
        assert_eq!(covered, &r.to_bytes()[..224]);
    }

    #[test]
    fn read_from_round_trips() {
        let r = sample();
        assert_eq!(TdReport::read_from(&r.to_bytes()), Ok(r));
        assert!(r.is_tdx_v0());
        assert_eq!(r.td_info.attributes(), 0x1234_5678_9abc_def0);
        assert_eq!(r.td_info.xfam(), 3);
        assert_eq!(r.tee_tcb_info.valid(), 0b1111);
    }

    #[test]
    fn read_from_rejects_wrong_lengths() {
        let b = [0u8; 1025];
        for len in [0, 1, 1023, 1025] {
            assert_eq!(TdReport::read_from(&b[..len]), Err(FormatError::WrongLength { expected: 1024, found: len }));
        }
    }
}
