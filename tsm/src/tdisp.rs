//! TDISP 1.0 (PCIe 6.x §11) requester messages, sans-IO. They travel as the payload of SPDM
//! VENDOR_DEFINED_REQUEST / RESPONSE (StandardID 3 = PCI-SIG, VendorID 0x0001, ProtocolID 1) and
//! only ever inside the SPDM session. Requests are built with their exact sizes (devices refuse
//! padding); responses are checked for code, version, interface, size and state, and a
//! TDISP_ERROR becomes a specific error. The DEVICE_INTERFACE_REPORT is parsed whole.

use core::fmt;

/// TDISP 1.0.
pub const VERSION_10: u8 = 0x10;
/// The TDISP header: version, type, reserved, INTERFACE_ID (12 bytes).
pub const HEADER_BYTES: usize = 16;
/// Bytes of the SPDM VENDOR_DEFINED header up to and including the ProtocolID.
pub const VDM_HEADER_BYTES: usize = 12;
/// MMIO ranges a report may list.
pub const MAX_RANGES: usize = 32;

/// Message types.
#[allow(missing_docs)]
pub mod msg {
    pub const GET_VERSION: u8 = 0x81;
    pub const GET_CAPABILITIES: u8 = 0x82;
    pub const LOCK_INTERFACE: u8 = 0x83;
    pub const GET_DEVICE_INTERFACE_REPORT: u8 = 0x84;
    pub const GET_DEVICE_INTERFACE_STATE: u8 = 0x85;
    pub const START_INTERFACE: u8 = 0x86;
    pub const STOP_INTERFACE: u8 = 0x87;
    pub const TDISP_ERROR: u8 = 0x7F;
}

/// LOCK_INTERFACE flags.
#[allow(missing_docs)]
pub mod lock_flags {
    pub const NO_FW_UPDATE: u16 = 0x1;
    pub const SYSTEM_CACHE_LINE_128: u16 = 0x2;
    pub const LOCK_MSIX: u16 = 0x4;
    pub const BIND_P2P: u16 = 0x8;
    pub const ALL_REQUEST_REDIRECT: u16 = 0x10;
    pub const KNOWN: u16 = 0x1F;
}

/// The TDI states of TDISP: the attestation report records the same values.
pub use attest::report::TdiState;

/// The interface a message is about: function id = RID (15:0), segment (23:16), segment valid (24).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InterfaceId(pub u32);

/// A request the TSM sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request<'a> {
    /// GET_TDISP_VERSION.
    GetVersion,
    /// GET_TDISP_CAPABILITIES (TSM_CAPS 0).
    GetCapabilities,
    /// LOCK_INTERFACE_REQUEST.
    Lock {
        /// LOCK flags.
        flags: u16,
        /// Default IDE stream.
        default_stream: u8,
        /// Added by the device to every reported MMIO page number.
        mmio_reporting_offset: u64,
        /// BIND_P2P_ADDRESS_MASK.
        p2p_mask: u64,
    },
    /// GET_DEVICE_INTERFACE_REPORT.
    GetReport {
        /// Offset of the portion.
        offset: u16,
        /// Bytes the TSM can take.
        length: u16,
    },
    /// GET_DEVICE_INTERFACE_STATE.
    GetState,
    /// START_INTERFACE_REQUEST with the lock's nonce.
    Start {
        /// START_INTERFACE_NONCE.
        nonce: &'a [u8; 32],
    },
    /// STOP_INTERFACE_REQUEST.
    Stop,
}

impl Request<'_> {
    /// Message type.
    pub const fn code(&self) -> u8 {
        match self {
            Request::GetVersion => msg::GET_VERSION,
            Request::GetCapabilities => msg::GET_CAPABILITIES,
            Request::Lock { .. } => msg::LOCK_INTERFACE,
            Request::GetReport { .. } => msg::GET_DEVICE_INTERFACE_REPORT,
            Request::GetState => msg::GET_DEVICE_INTERFACE_STATE,
            Request::Start { .. } => msg::START_INTERFACE,
            Request::Stop => msg::STOP_INTERFACE,
        }
    }
}

/// A response, parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Response<'a> {
    /// TDISP_VERSION: the versions offered.
    Version(&'a [u8]),
    /// TDISP_CAPABILITIES.
    Capabilities {
        /// REQ_MSGS_SUPPORTED bitmap (bit = request code − 0x80).
        requests: [u8; 16],
        /// LOCK_INTERFACE_FLAGS_SUPPORTED.
        lock_flags: u16,
        /// DEV_ADDR_WIDTH.
        address_width: u8,
    },
    /// LOCK_INTERFACE_RESPONSE.
    Locked {
        /// START_INTERFACE_NONCE.
        nonce: [u8; 32],
    },
    /// DEVICE_INTERFACE_REPORT portion.
    ReportPortion {
        /// The bytes.
        portion: &'a [u8],
        /// Bytes still to come.
        remainder: u16,
    },
    /// DEVICE_INTERFACE_STATE.
    State(TdiState),
    /// START_INTERFACE_RESPONSE.
    Started,
    /// STOP_INTERFACE_RESPONSE.
    Stopped,
}

/// TDISP_ERROR codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceError {
    /// 0x0001.
    InvalidRequest,
    /// 0x0003.
    Busy,
    /// 0x0004: the TDI is in the wrong state for the request.
    InvalidInterfaceState,
    /// 0x0005.
    Unspecified,
    /// 0x0007: ERROR_DATA is the request code.
    UnsupportedRequest(u32),
    /// 0x0041.
    VersionMismatch,
    /// 0x00FF.
    VendorSpecific,
    /// 0x0101: no such interface.
    InvalidInterface,
    /// 0x0102: START with the wrong nonce.
    InvalidNonce,
    /// 0x0103.
    InsufficientEntropy,
    /// 0x0104: LOCK refused the device configuration.
    InvalidDeviceConfiguration,
    /// Any other code.
    Other(u32),
}

impl DeviceError {
    fn from_code(code: u32, data: u32) -> DeviceError {
        match code {
            0x0001 => DeviceError::InvalidRequest,
            0x0003 => DeviceError::Busy,
            0x0004 => DeviceError::InvalidInterfaceState,
            0x0005 => DeviceError::Unspecified,
            0x0007 => DeviceError::UnsupportedRequest(data),
            0x0041 => DeviceError::VersionMismatch,
            0x00FF => DeviceError::VendorSpecific,
            0x0101 => DeviceError::InvalidInterface,
            0x0102 => DeviceError::InvalidNonce,
            0x0103 => DeviceError::InsufficientEntropy,
            0x0104 => DeviceError::InvalidDeviceConfiguration,
            other => DeviceError::Other(other),
        }
    }
}

/// Why a TDISP message is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TdispError {
    /// Not an SPDM VENDOR_DEFINED_RESPONSE for PCI-SIG TDISP.
    NotTdisp,
    /// The SPDM version byte is not the session's.
    SpdmVersion(u8),
    /// A size that disagrees with the message type or the bytes.
    Length {
        /// Message type.
        code: u8,
        /// Bytes received (from the TDISP header on).
        len: usize,
    },
    /// TDISP version other than 1.0.
    Version(u8),
    /// The response is about another interface.
    Interface(u32),
    /// Another response than the request's.
    Unexpected {
        /// Type received.
        got: u8,
        /// Type expected.
        want: u8,
    },
    /// The device answered TDISP_ERROR.
    Device(DeviceError),
    /// DEVICE_INTERFACE_STATE carries an undefined state.
    State(u8),
    /// The output buffer is too small.
    Buffer,
}

impl fmt::Display for TdispError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Builds the SPDM VENDOR_DEFINED_REQUEST carrying `request` into `out`; returns its length.
///
/// # Errors
/// [`TdispError::Buffer`] if `out` is too small.
pub fn encode(
    spdm_version: u8,
    iface: InterfaceId,
    request: &Request<'_>,
    out: &mut [u8],
) -> Result<usize, TdispError> {
    let body = match request {
        Request::GetVersion | Request::GetState | Request::Stop => 0,
        Request::GetCapabilities | Request::GetReport { .. } => 4,
        Request::Lock { .. } => 20,
        Request::Start { .. } => 32,
    };
    let tdisp_len = HEADER_BYTES + body;
    let total = VDM_HEADER_BYTES + tdisp_len;
    if out.len() < total {
        return Err(TdispError::Buffer);
    }
    let out = &mut out[..total];
    out.fill(0);
    out[0] = spdm_version;
    out[1] = 0xFE; // VENDOR_DEFINED_REQUEST
    out[4..6].copy_from_slice(&3u16.to_le_bytes()); // StandardID: PCI-SIG
    out[6] = 2; // VendorID length
    out[7..9].copy_from_slice(&1u16.to_le_bytes()); // VendorID: PCI-SIG
    out[9..11].copy_from_slice(&((1 + tdisp_len) as u16).to_le_bytes());
    out[11] = 0x01; // ProtocolID: TDISP
    let t = &mut out[VDM_HEADER_BYTES..];
    t[0] = VERSION_10;
    t[1] = request.code();
    t[4..8].copy_from_slice(&iface.0.to_le_bytes());
    match *request {
        Request::GetVersion | Request::GetCapabilities | Request::GetState | Request::Stop => {}
        Request::Lock { flags, default_stream, mmio_reporting_offset, p2p_mask } => {
            t[16..18].copy_from_slice(&flags.to_le_bytes());
            t[18] = default_stream;
            t[20..28].copy_from_slice(&mmio_reporting_offset.to_le_bytes());
            t[28..36].copy_from_slice(&p2p_mask.to_le_bytes());
        }
        Request::GetReport { offset, length } => {
            t[16..18].copy_from_slice(&offset.to_le_bytes());
            t[18..20].copy_from_slice(&length.to_le_bytes());
        }
        Request::Start { nonce } => t[16..48].copy_from_slice(nonce),
    }
    Ok(total)
}

/// Parses the device's answer to a request of type `want` about `iface`.
///
/// # Errors
/// A [`TdispError`] naming the first thing wrong.
pub fn decode<'a>(spdm_version: u8, iface: InterfaceId, want: u8, m: &'a [u8]) -> Result<Response<'a>, TdispError> {
    if m.len() < VDM_HEADER_BYTES || m[1] != 0x7E || m[4..6] != [3, 0] || m[6] != 2 || m[7..9] != [1, 0] || m[11] != 1 {
        return Err(TdispError::NotTdisp);
    }
    if m[0] != spdm_version {
        return Err(TdispError::SpdmVersion(m[0]));
    }
    let vdm_len = usize::from(u16::from_le_bytes([m[9], m[10]]));
    let t = &m[VDM_HEADER_BYTES..];
    if vdm_len != 1 + t.len() || t.len() < HEADER_BYTES {
        return Err(TdispError::Length { code: t.get(1).copied().unwrap_or(0), len: t.len() });
    }
    if t[0] != VERSION_10 {
        return Err(TdispError::Version(t[0]));
    }
    let got = t[1];
    // A TDISP_ERROR is reported as such even when it names another interface (a device may
    // answer INVALID_INTERFACE with whatever id it understood).
    if got == msg::TDISP_ERROR {
        if t.len() < 24 {
            return Err(TdispError::Length { code: got, len: t.len() });
        }
        let code = u32::from_le_bytes([t[16], t[17], t[18], t[19]]);
        let data = u32::from_le_bytes([t[20], t[21], t[22], t[23]]);
        return Err(TdispError::Device(DeviceError::from_code(code, data)));
    }
    let function = u32::from_le_bytes([t[4], t[5], t[6], t[7]]);
    if function != iface.0 || t[8..16].iter().any(|&b| b != 0) {
        return Err(TdispError::Interface(function));
    }
    let len = |n: usize| if t.len() == n { Ok(()) } else { Err(TdispError::Length { code: got, len: t.len() }) };
    if got != want & 0x7F {
        return Err(TdispError::Unexpected { got, want: want & 0x7F });
    }
    Ok(match want {
        msg::GET_VERSION => {
            let n = usize::from(*t.get(16).ok_or(TdispError::Length { code: got, len: t.len() })?);
            len(17 + n)?;
            if n == 0 || !t[17..].contains(&VERSION_10) {
                return Err(TdispError::Version(t.get(17).copied().unwrap_or(0)));
            }
            Response::Version(&t[17..])
        }
        msg::GET_CAPABILITIES => {
            len(44)?;
            let mut requests = [0u8; 16];
            requests.copy_from_slice(&t[20..36]);
            Response::Capabilities { requests, lock_flags: u16::from_le_bytes([t[36], t[37]]), address_width: t[41] }
        }
        msg::LOCK_INTERFACE => {
            len(48)?;
            let mut nonce = [0u8; 32];
            nonce.copy_from_slice(&t[16..48]);
            Response::Locked { nonce }
        }
        msg::GET_DEVICE_INTERFACE_REPORT => {
            if t.len() < 20 {
                return Err(TdispError::Length { code: got, len: t.len() });
            }
            let portion = usize::from(u16::from_le_bytes([t[16], t[17]]));
            len(20 + portion)?;
            Response::ReportPortion { portion: &t[20..], remainder: u16::from_le_bytes([t[18], t[19]]) }
        }
        msg::GET_DEVICE_INTERFACE_STATE => {
            len(17)?;
            Response::State(TdiState::from_u8(t[16]).ok_or(TdispError::State(t[16]))?)
        }
        msg::START_INTERFACE => {
            len(16)?;
            Response::Started
        }
        _ => {
            len(16)?;
            Response::Stopped
        }
    })
}

/// One MMIO range of an interface report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioRange {
    /// First 4K page, MMIO_REPORTING_OFFSET included.
    pub first_page: u64,
    /// Number of 4K pages.
    pub pages: u32,
    /// Attributes (bit0 MSI-X table, bit1 MSI-X PBA, bit2 non-TEE, bit3 attributes updatable).
    pub attributes: u16,
    /// Range ID (0..7: the BAR).
    pub range_id: u16,
}

/// Range attribute bits TDISP 1.0 defines.
pub const RANGE_ATTRIBUTES_KNOWN: u16 = 0xF;
/// INTERFACE_INFO bits TDISP 1.0 defines.
pub const INTERFACE_INFO_KNOWN: u16 = 0x1F;

/// Why an interface report is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReportError {
    /// Shorter than its fixed fields, or its counts run past the bytes, or bytes are left over.
    Length,
    /// INTERFACE_INFO or a reserved field carries undefined bits.
    Reserved,
    /// More than [`MAX_RANGES`] ranges.
    TooManyRanges(u32),
    /// Range `index` is empty, overflows, has undefined attribute bits, or is out of order or
    /// overlaps the one before.
    Range {
        /// Position in the report.
        index: usize,
    },
    /// Range `index` lies below the MMIO_REPORTING_OFFSET the TSM asked for at LOCK: the device
    /// did not add the offset to it (checked once the report is whole, against the TDI's offset).
    OffsetNotApplied {
        /// Position in the report.
        index: usize,
        /// Its FIRST_PAGE as the device reported it.
        first_page: u64,
    },
}

impl ReportError {
    /// The detail returned in RDX with `DEVICE_ERROR` / RCX 0x320: the reason in bits 7:0
    /// (1 length, 2 reserved bits, 3 too many ranges, 4 a malformed or unordered range, 5 a range
    /// below the reporting offset), the range in bits 15:8, and in bits 63:16 the range count
    /// (too many ranges) or the FIRST_PAGE reported (offset not applied; pages of a 52-bit
    /// address space fit).
    pub const fn detail(&self) -> u64 {
        match *self {
            ReportError::Length => 1,
            ReportError::Reserved => 2,
            ReportError::TooManyRanges(n) => 3 | (n as u64) << 16,
            ReportError::Range { index } => 4 | ((index & 0xFF) as u64) << 8,
            ReportError::OffsetNotApplied { index, first_page } => {
                5 | ((index & 0xFF) as u64) << 8 | (first_page & 0xFFFF_FFFF_FFFF) << 16
            }
        }
    }

    /// The host's reading of [`ReportError::detail`]: the reason back from RDX, or `None` for a
    /// word no report error makes.
    pub const fn from_detail(rdx: u64) -> Option<ReportError> {
        let index = ((rdx >> 8) & 0xFF) as usize;
        match rdx & 0xFF {
            1 if rdx == 1 => Some(ReportError::Length),
            2 if rdx == 2 => Some(ReportError::Reserved),
            3 if rdx >> 48 == 0 && (rdx >> 8) & 0xFF == 0 => Some(ReportError::TooManyRanges((rdx >> 16) as u32)),
            4 if rdx >> 16 == 0 => Some(ReportError::Range { index }),
            5 => Some(ReportError::OffsetNotApplied { index, first_page: rdx >> 16 }),
            _ => None,
        }
    }
}

impl core::fmt::Display for ReportError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            ReportError::Length => f.write_str("its lengths do not add up to the bytes"),
            ReportError::Reserved => f.write_str("it sets reserved or undefined bits"),
            ReportError::TooManyRanges(n) => write!(f, "it lists {n} MMIO ranges, more than {MAX_RANGES}"),
            ReportError::Range { index } => {
                write!(f, "MMIO range {index} is empty, overflows, has undefined attributes or overlaps the one before")
            }
            ReportError::OffsetNotApplied { index, first_page } => write!(
                f,
                "MMIO range {index} begins at page {first_page:#x}, below the MMIO_REPORTING_OFFSET the TSM asked for at LOCK: the device did not apply the offset"
            ),
        }
    }
}

/// A checked DEVICE_INTERFACE_REPORT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InterfaceReport<'a> {
    /// INTERFACE_INFO.
    pub interface_info: u16,
    /// MSI_X_MESSAGE_CONTROL.
    pub msix_control: u16,
    /// LNR_CONTROL.
    pub lnr_control: u16,
    /// TPH_CONTROL.
    pub tph_control: u32,
    ranges: [MmioRange; MAX_RANGES],
    count: usize,
    /// DEVICE_SPECIFIC_INFO.
    pub device_info: &'a [u8],
}

impl<'a> InterfaceReport<'a> {
    /// Parses and checks a whole report: bounded count, every range non-empty, without overflow,
    /// with known attribute bits, sorted by page and not overlapping; nothing left over.
    ///
    /// # Errors
    /// A [`ReportError`] naming the first thing wrong.
    pub fn parse(r: &'a [u8]) -> Result<InterfaceReport<'a>, ReportError> {
        if r.len() < 16 {
            return Err(ReportError::Length);
        }
        let le16 = |at: usize| u16::from_le_bytes([r[at], r[at + 1]]);
        let le32 = |at: usize| u32::from_le_bytes([r[at], r[at + 1], r[at + 2], r[at + 3]]);
        let interface_info = le16(0);
        if interface_info & !INTERFACE_INFO_KNOWN != 0 || le16(2) != 0 {
            return Err(ReportError::Reserved);
        }
        let n = le32(12);
        let count = usize::try_from(n).ok().filter(|&c| c <= MAX_RANGES).ok_or(ReportError::TooManyRanges(n))?;
        let info_at = 16 + 16 * count;
        if r.len() < info_at + 4 {
            return Err(ReportError::Length);
        }
        let mut ranges = [MmioRange { first_page: 0, pages: 0, attributes: 0, range_id: 0 }; MAX_RANGES];
        let mut end_of_previous = 0u64;
        for (i, range) in ranges.iter_mut().take(count).enumerate() {
            let at = 16 + 16 * i;
            let mut page = [0u8; 8];
            page.copy_from_slice(&r[at..at + 8]);
            *range = MmioRange {
                first_page: u64::from_le_bytes(page),
                pages: le32(at + 8),
                attributes: le16(at + 12),
                range_id: le16(at + 14),
            };
            let end = range.first_page.checked_add(u64::from(range.pages));
            let bad = range.pages == 0
                || range.attributes & !RANGE_ATTRIBUTES_KNOWN != 0
                || (i > 0 && range.first_page < end_of_previous);
            match end {
                Some(e) if !bad && e >> 52 == 0 => end_of_previous = e,
                _ => return Err(ReportError::Range { index: i }),
            }
        }
        let info_len = usize::try_from(le32(info_at)).map_err(|_| ReportError::Length)?;
        if r.len() != info_at + 4 + info_len {
            return Err(ReportError::Length);
        }
        Ok(InterfaceReport {
            interface_info,
            msix_control: le16(4),
            lnr_control: le16(6),
            tph_control: le32(8),
            ranges,
            count,
            device_info: &r[info_at + 4..],
        })
    }

    /// The MMIO ranges, in report order (ascending pages).
    pub fn ranges(&self) -> &[MmioRange] {
        &self.ranges[..self.count]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    extern crate std;
    use std::vec::Vec;

    const IFACE: InterfaceId = InterfaceId(0xBEEF);

    #[test]
    fn get_version_matches_the_reference_bytes() {
        let mut out = [0u8; 64];
        let n = encode(0x12, IFACE, &Request::GetVersion, &mut out).unwrap();
        assert_eq!(
            &out[..n],
            &[0x12, 0xfe, 0, 0, 3, 0, 2, 1, 0, 0x11, 0, 1, 0x10, 0x81, 0, 0, 0xef, 0xbe, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        );
        let sizes = [
            (Request::GetCapabilities, 20),
            (Request::Lock { flags: 1, default_stream: 0, mmio_reporting_offset: 0xD000_0000, p2p_mask: 0 }, 36),
            (Request::GetReport { offset: 0, length: 0x40 }, 20),
            (Request::GetState, 16),
            (Request::Start { nonce: &[7; 32] }, 48),
            (Request::Stop, 16),
        ];
        for (r, size) in sizes {
            assert_eq!(encode(0x12, IFACE, &r, &mut out).unwrap(), VDM_HEADER_BYTES + size, "{r:?}");
        }
        assert_eq!(encode(0x12, IFACE, &Request::Stop, &mut out[..20]), Err(TdispError::Buffer));
    }

    fn response(code: u8, body: &[u8]) -> Vec<u8> {
        let mut m = std::vec![0x12, 0x7E, 0, 0, 3, 0, 2, 1, 0];
        m.extend_from_slice(&((1 + HEADER_BYTES + body.len()) as u16).to_le_bytes());
        m.push(1);
        m.extend_from_slice(&[0x10, code, 0, 0, 0xEF, 0xBE, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        m.extend_from_slice(body);
        m
    }

    #[test]
    fn responses_decode() {
        let r = response(0x01, &[1, 0x10]);
        assert_eq!(decode(0x12, IFACE, msg::GET_VERSION, &r), Ok(Response::Version(&[0x10])));
        let r = response(0x03, &[9; 32]);
        assert_eq!(decode(0x12, IFACE, msg::LOCK_INTERFACE, &r), Ok(Response::Locked { nonce: [9; 32] }));
        let r = response(0x05, &[2]);
        assert_eq!(decode(0x12, IFACE, msg::GET_DEVICE_INTERFACE_STATE, &r), Ok(Response::State(TdiState::Run)));
        let mut body = std::vec![3, 0, 5, 0];
        body.extend_from_slice(&[0xAB; 3]);
        let r = response(0x04, &body);
        assert_eq!(
            decode(0x12, IFACE, msg::GET_DEVICE_INTERFACE_REPORT, &r),
            Ok(Response::ReportPortion { portion: &[0xAB; 3], remainder: 5 })
        );
        let mut caps = std::vec![0u8; 28];
        caps[4] = 0xFE;
        caps[20] = 0x1F;
        caps[25] = 52;
        let r = response(0x02, &caps);
        assert!(matches!(
            decode(0x12, IFACE, msg::GET_CAPABILITIES, &r),
            Ok(Response::Capabilities { lock_flags: 0x1F, address_width: 52, .. })
        ));
        assert_eq!(decode(0x12, IFACE, msg::START_INTERFACE, &response(0x06, &[])), Ok(Response::Started));
        assert_eq!(decode(0x12, IFACE, msg::STOP_INTERFACE, &response(0x07, &[])), Ok(Response::Stopped));
    }

    #[test]
    fn each_bad_response_has_its_error() {
        let ok = response(0x05, &[1]);
        fn d(m: &[u8]) -> Result<Response<'_>, TdispError> {
            decode(0x12, IFACE, msg::GET_DEVICE_INTERFACE_STATE, m)
        }
        assert_eq!(d(&ok), Ok(Response::State(TdiState::ConfigLocked)));
        let mut m = ok.clone();
        m[11] = 0;
        assert_eq!(d(&m), Err(TdispError::NotTdisp), "IDE_KM, not TDISP");
        let mut m = ok.clone();
        m[0] = 0x13;
        assert_eq!(d(&m), Err(TdispError::SpdmVersion(0x13)));
        let mut m = ok.clone();
        m[12] = 0x20;
        assert_eq!(d(&m), Err(TdispError::Version(0x20)));
        let mut m = ok.clone();
        m[16] = 0xEE;
        assert_eq!(d(&m), Err(TdispError::Interface(0xBEEE)));
        let mut m = ok.clone();
        m[13] = 0x03;
        assert_eq!(d(&m), Err(TdispError::Unexpected { got: 3, want: 5 }));
        let mut m = ok.clone();
        m[28] = 7;
        assert_eq!(d(&m), Err(TdispError::State(7)));
        let mut m = ok.clone();
        m.push(0);
        assert!(matches!(d(&m), Err(TdispError::Length { .. })), "VDM length disagrees");
        let mut e = std::vec![0u8; 8];
        e[0] = 0x02;
        e[1] = 0x01;
        let m = response(0x7F, &e);
        assert_eq!(d(&m), Err(TdispError::Device(DeviceError::InvalidNonce)));
        let mut e = std::vec![0u8; 8];
        e[0] = 7;
        e[4] = 0x86;
        assert_eq!(d(&response(0x7F, &e)), Err(TdispError::Device(DeviceError::UnsupportedRequest(0x86))));
        let mut e = response(0x7F, &[0x01, 0x01, 0, 0, 0, 0, 0, 0]);
        e[16] = 0x01; // another function id
        assert_eq!(d(&e), Err(TdispError::Device(DeviceError::InvalidInterface)), "the device's error wins");
        for n in 0..ok.len() {
            assert!(d(&ok[..n]).is_err());
        }
    }

    fn report(ranges: &[(u64, u32, u16, u16)], info: &[u8]) -> Vec<u8> {
        let mut r = std::vec![0x06, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        r.extend_from_slice(&(ranges.len() as u32).to_le_bytes());
        for &(page, pages, attrs, id) in ranges {
            r.extend_from_slice(&page.to_le_bytes());
            r.extend_from_slice(&pages.to_le_bytes());
            r.extend_from_slice(&attrs.to_le_bytes());
            r.extend_from_slice(&id.to_le_bytes());
        }
        r.extend_from_slice(&(info.len() as u32).to_le_bytes());
        r.extend_from_slice(info);
        r
    }

    #[test]
    fn a_report_like_the_emulators_parses() {
        // spdm-emu's shape: 4 ranges, 16 bytes of device info.
        let r =
            report(&[(0, 8, 0, 0), (0x8000, 8, 0, 1), (0x10000, 8, 1, 2), (0x18000, 8, 2, 3)], b"tdisp_dev_emu\0\0\0");
        assert_eq!(r.len(), 100);
        let p = InterfaceReport::parse(&r).unwrap();
        assert_eq!(p.ranges().len(), 4);
        assert_eq!(p.ranges()[2], MmioRange { first_page: 0x10000, pages: 8, attributes: 1, range_id: 2 });
        assert_eq!(p.device_info, b"tdisp_dev_emu\0\0\0");
    }

    #[test]
    fn each_bad_report_has_its_error() {
        let good = report(&[(0x100, 4, 0, 0), (0x104, 4, 0, 1)], b"x");
        assert!(InterfaceReport::parse(&good).is_ok());
        let p = |r: &[u8]| InterfaceReport::parse(r).err();
        assert_eq!(
            p(&report(&[(0x100, 4, 0, 0), (0x103, 4, 0, 1)], b"")),
            Some(ReportError::Range { index: 1 }),
            "overlap"
        );
        assert_eq!(
            p(&report(&[(0x104, 4, 0, 0), (0x100, 4, 0, 1)], b"")),
            Some(ReportError::Range { index: 1 }),
            "unsorted"
        );
        assert_eq!(p(&report(&[(0x100, 0, 0, 0)], b"")), Some(ReportError::Range { index: 0 }), "empty");
        assert_eq!(p(&report(&[(0x100, 1, 0x10, 0)], b"")), Some(ReportError::Range { index: 0 }), "attribute bit 4");
        assert_eq!(p(&report(&[(u64::MAX, 2, 0, 0)], b"")), Some(ReportError::Range { index: 0 }), "overflow");
        let mut r = good.clone();
        r[0] = 0x20;
        assert_eq!(p(&r), Some(ReportError::Reserved));
        let mut r = good.clone();
        r[12] = 33;
        assert_eq!(p(&r), Some(ReportError::TooManyRanges(33)));
        let mut r = good.clone();
        r[12] = 3;
        assert_eq!(p(&r), Some(ReportError::Length), "count beyond the bytes");
        let mut r = good.clone();
        r.push(0);
        assert_eq!(p(&r), Some(ReportError::Length), "bytes left over");
        for n in 0..good.len() {
            assert!(InterfaceReport::parse(&good[..n]).is_err());
        }
    }

    #[test]
    fn every_report_error_reads_back_from_its_detail_word() {
        let all = [
            ReportError::Length,
            ReportError::Reserved,
            ReportError::TooManyRanges(33),
            ReportError::TooManyRanges(u32::MAX),
            ReportError::Range { index: 0 },
            ReportError::Range { index: 31 },
            ReportError::OffsetNotApplied { index: 0, first_page: 0 },
            ReportError::OffsetNotApplied { index: 3, first_page: 0x20000 },
            ReportError::OffsetNotApplied { index: 31, first_page: (1 << 40) - 1 },
        ];
        for e in all {
            assert_eq!(ReportError::from_detail(e.detail()), Some(e), "{e:?} as {:#x}", e.detail());
        }
        assert_eq!(ReportError::OffsetNotApplied { index: 1, first_page: 0x8000 }.detail(), 0x8000_0105);
        // Words no report error makes: no reason, unknown reasons, stray bits.
        for w in [0, 6, 0xFF, 1 | 1 << 8, 2 | 1 << 16, 4 | 1 << 16, 3 | 1 << 8, 3 | 1 << 48] {
            assert_eq!(ReportError::from_detail(w), None, "{w:#x}");
        }
    }

    #[test]
    fn a_range_below_the_reporting_offset_is_one_the_device_did_not_offset() {
        use crate::tdi::Tdi;
        // An offset as TDI.LOCK draws it: bits 47:36.
        let offset = 0x5A1u64 << 36;
        let pages = offset >> 12;
        // spdm-emu's sample device: its ranges as they are.
        let r = report(&[(0, 8, 0, 0), (0x8000, 8, 0, 1)], b"");
        let p = InterfaceReport::parse(&r).unwrap();
        assert_eq!(Tdi::host_ranges(&p, offset).err(), Some(ReportError::OffsetNotApplied { index: 0, first_page: 0 }));
        // The first range offset, the second not: sorted, it comes first and is named.
        let r = report(&[(0xC0010, 1, 0, 1), (pages + 0xC0000, 4, 0, 0)], b"");
        let p = InterfaceReport::parse(&r).unwrap();
        assert_eq!(
            Tdi::host_ranges(&p, offset).err(),
            Some(ReportError::OffsetNotApplied { index: 0, first_page: 0xC0010 })
        );
        // Offset as asked: the host frames come back.
        let r = report(&[(pages + 0xC0000, 4, 0, 0), (pages + 0xC0010, 1, 0, 1)], b"");
        let p = InterfaceReport::parse(&r).unwrap();
        let (ranges, n) = Tdi::host_ranges(&p, offset).unwrap();
        assert_eq!(n, 2);
        assert_eq!((ranges[0].first, ranges[0].pages, ranges[1].first), (0xC0000, 4, 0xC0010));
    }
}
