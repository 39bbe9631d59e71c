//! The TDISP 1.0 responder (PCIe 6.x §11): one state machine per TDI, only reachable inside an
//! SPDM session (the VENDOR_DEFINED carrier is refused in the clear).
//!
//! Each request is checked in this order, the first failure answering TDISP_ERROR: TDISP version
//! (VERSION_MISMATCH), message type (UNSUPPORTED_REQUEST), INTERFACE_ID (INVALID_INTERFACE), exact
//! size (INVALID_REQUEST: spdm-emu refuses padding too), then the TDI's state
//! (INVALID_INTERFACE_STATE) and the request's own fields.

use tsm::tdisp::{msg, TdiState, HEADER_BYTES, VERSION_10};

use crate::config::InterfaceConfig;
use crate::Device;

/// PCI-SIG protocol ID of TDISP in the VENDOR_DEFINED payload.
pub const PROTOCOL_ID: u8 = 0x01;

/// TDISP_ERROR codes.
#[allow(missing_docs)]
pub mod error_code {
    pub const INVALID_REQUEST: u32 = 0x0001;
    pub const INVALID_INTERFACE_STATE: u32 = 0x0004;
    pub const UNSPECIFIED: u32 = 0x0005;
    pub const UNSUPPORTED_REQUEST: u32 = 0x0007;
    pub const VERSION_MISMATCH: u32 = 0x0041;
    pub const INVALID_INTERFACE: u32 = 0x0101;
    pub const INVALID_NONCE: u32 = 0x0102;
}

/// LOCK_INTERFACE flags the device honours: NO_FW_UPDATE, SYSTEM_CACHE_LINE_SIZE, LOCK_MSIX,
/// ALL_REQUEST_REDIRECT (no P2P: BIND_P2P is refused).
pub const LOCK_FLAGS_SUPPORTED: u16 = 0x17;
/// Width of the device's addresses (bits 51:0).
pub const DEV_ADDR_WIDTH: u8 = 52;

/// One TDI as the device tracks it.
#[derive(Clone, Debug)]
pub struct Tdi {
    /// Its configuration.
    pub config: InterfaceConfig,
    /// CONFIG_UNLOCKED: no nonce, no report. CONFIG_LOCKED: nonce and report valid. RUN: report
    /// valid, nonce spent. ERROR: a locked configuration was broken; only STOP leaves it.
    pub state: TdiState,
    /// START_INTERFACE_NONCE while CONFIG_LOCKED.
    pub nonce: Option<[u8; 32]>,
    /// The DEVICE_INTERFACE_REPORT fixed at LOCK.
    pub report: Vec<u8>,
    /// The session that locked it.
    pub session: Option<u32>,
}

impl Tdi {
    pub(crate) fn new(config: InterfaceConfig) -> Tdi {
        Tdi { config, state: TdiState::ConfigUnlocked, nonce: None, report: Vec::new(), session: None }
    }
}

/// The DEVICE_INTERFACE_REPORT (TDISP §11.3.11) of `iface` locked with `flags` and
/// `mmio_offset`. The offset is added to each range's address (page << 12) and the sum reported in
/// pages; MSI-X table and PBA ranges are listed only when LOCK_MSIX locks them.
///
/// With `overlapping` (the overlapping-ranges fault) the second range starts on the first's
/// last page (a copy of the first is added if only one is reported).
pub fn build_report(iface: &InterfaceConfig, flags: u16, mmio_offset: u64, overlapping: bool) -> Vec<u8> {
    let lock_msix = flags & 0x4 != 0;
    let mut ranges: Vec<_> = iface.mmio.iter().filter(|r| lock_msix || r.attributes & 0x3 == 0).copied().collect();
    if overlapping {
        if let Some(&first) = ranges.first() {
            if ranges.len() == 1 {
                ranges.push(first);
            }
            ranges[1].first_page = first.first_page + u64::from(first.pages.max(1)) - 1;
        }
    }
    let mut r = Vec::with_capacity(20 + 16 * ranges.len() + iface.device_info.len());
    r.extend_from_slice(&iface.interface_info.to_le_bytes());
    r.extend_from_slice(&[0, 0]);
    r.extend_from_slice(&0u16.to_le_bytes()); // MSI_X_MESSAGE_CONTROL
    r.extend_from_slice(&0u16.to_le_bytes()); // LNR_CONTROL
    r.extend_from_slice(&0u32.to_le_bytes()); // TPH_CONTROL
    r.extend_from_slice(&(ranges.len() as u32).to_le_bytes());
    for range in ranges {
        let page = (range.first_page << 12).wrapping_add(mmio_offset) >> 12;
        r.extend_from_slice(&page.to_le_bytes());
        r.extend_from_slice(&range.pages.to_le_bytes());
        r.extend_from_slice(&range.attributes.to_le_bytes());
        r.extend_from_slice(&range.range_id.to_le_bytes());
    }
    r.extend_from_slice(&(iface.device_info.len() as u32).to_le_bytes());
    r.extend_from_slice(&iface.device_info);
    r
}

/// The exact size of each request (header included).
fn request_size(code: u8) -> Option<usize> {
    Some(match code {
        msg::GET_VERSION | msg::GET_DEVICE_INTERFACE_STATE | msg::STOP_INTERFACE => HEADER_BYTES,
        msg::GET_CAPABILITIES | msg::GET_DEVICE_INTERFACE_REPORT => HEADER_BYTES + 4,
        msg::LOCK_INTERFACE => HEADER_BYTES + 20,
        msg::START_INTERFACE => HEADER_BYTES + 32,
        _ => return None,
    })
}

/// A TDISP response about `function`.
fn response(function: u32, code: u8, body: &[u8]) -> Vec<u8> {
    let mut r = vec![0u8; HEADER_BYTES];
    r[0] = VERSION_10;
    r[1] = code;
    r[4..8].copy_from_slice(&function.to_le_bytes());
    r.extend_from_slice(body);
    r
}

fn tdisp_error(function: u32, code: u32, data: u32) -> Vec<u8> {
    let mut body = [0u8; 8];
    body[..4].copy_from_slice(&code.to_le_bytes());
    body[4..].copy_from_slice(&data.to_le_bytes());
    response(function, msg::TDISP_ERROR, &body)
}

impl Device {
    /// One TDISP request from session `session` → its response.
    pub(crate) fn tdisp(&mut self, session: u32, t: &[u8]) -> Vec<u8> {
        let function = t.get(4..8).map_or(0, |f| u32::from_le_bytes([f[0], f[1], f[2], f[3]]));
        match self.tdisp_checked(session, function, t) {
            Ok(r) => r,
            Err((code, data)) => tdisp_error(function, code, data),
        }
    }

    fn tdisp_checked(&mut self, session: u32, function: u32, t: &[u8]) -> Result<Vec<u8>, (u32, u32)> {
        if t.len() < HEADER_BYTES {
            return Err((error_code::INVALID_REQUEST, 0));
        }
        if t[0] != VERSION_10 {
            return Err((error_code::VERSION_MISMATCH, 0));
        }
        let code = t[1];
        let size = request_size(code).ok_or((error_code::UNSUPPORTED_REQUEST, u32::from(code)))?;
        let tdi = self
            .tdis
            .iter_mut()
            .find(|d| d.config.function_id == function)
            .filter(|_| t[8..16].iter().all(|&b| b == 0))
            .ok_or((error_code::INVALID_INTERFACE, 0))?;
        if t.len() != size {
            return Err((error_code::INVALID_REQUEST, 0));
        }
        let state = tdi.state;
        use TdiState::{ConfigLocked, ConfigUnlocked, Error, Run};
        // Legality of (request × state), TDISP §11.3 Table 11-4.
        let legal = match (code, state) {
            (msg::GET_VERSION | msg::GET_CAPABILITIES | msg::GET_DEVICE_INTERFACE_STATE, _) => true,
            (msg::STOP_INTERFACE, _) => true,
            (msg::LOCK_INTERFACE, ConfigUnlocked) => true,
            (msg::GET_DEVICE_INTERFACE_REPORT, ConfigLocked | Run) => true,
            (msg::START_INTERFACE, ConfigLocked) => true,
            (_, ConfigUnlocked | ConfigLocked | Run | Error) => false,
        };
        if !legal {
            return Err((error_code::INVALID_INTERFACE_STATE, 0));
        }
        let body = &t[HEADER_BYTES..];
        match code {
            msg::GET_VERSION => Ok(response(function, 0x01, &[1, VERSION_10])),
            msg::GET_CAPABILITIES => {
                let mut b = [0u8; 28];
                b[4] = 0xFE; // requests 0x81..=0x87 (bit = code − 0x80)
                b[20..22].copy_from_slice(&LOCK_FLAGS_SUPPORTED.to_le_bytes());
                b[25] = DEV_ADDR_WIDTH;
                b[26] = 1; // NUM_REQ_THIS
                b[27] = 1; // NUM_REQ_ALL
                Ok(response(function, 0x02, &b))
            }
            msg::LOCK_INTERFACE => {
                let flags = u16::from_le_bytes([body[0], body[1]]);
                if flags & !LOCK_FLAGS_SUPPORTED != 0 {
                    return Err((error_code::INVALID_REQUEST, 0));
                }
                let mut offset = [0u8; 8];
                offset.copy_from_slice(&body[4..12]);
                // spdm-emu's sample device reports its ranges as they are, offset or not.
                let offset = if self.config.faults.ignore_reporting_offset { 0 } else { u64::from_le_bytes(offset) };
                let report = build_report(&tdi.config, flags, offset, self.config.faults.overlapping_ranges);
                let mut nonce = [0u8; 32];
                self.rng.fill(&mut nonce);
                // ALL CHECKS PASSED
                let Some(tdi) = self.tdis.iter_mut().find(|d| d.config.function_id == function) else {
                    return Err((error_code::INVALID_INTERFACE, 0));
                };
                tdi.state = ConfigLocked;
                tdi.nonce = Some(nonce);
                tdi.report = report;
                tdi.session = Some(session);
                if self.config.faults.error_after_lock {
                    // As if the locked configuration broke at once (TDISP §11.4.4): LOCKED → ERROR
                    // destroys the nonce.
                    tdi.state = Error;
                    tdi.nonce = None;
                }
                Ok(response(function, 0x03, &nonce))
            }
            msg::GET_DEVICE_INTERFACE_REPORT => {
                let offset = usize::from(u16::from_le_bytes([body[0], body[1]]));
                let length = usize::from(u16::from_le_bytes([body[2], body[3]]));
                if length == 0 || offset >= tdi.report.len() {
                    return Err((error_code::INVALID_REQUEST, 0));
                }
                let portion = length.min(usize::from(self.config.report_portion).max(1)).min(tdi.report.len() - offset);
                let remainder = tdi.report.len() - offset - portion;
                let mut b = Vec::with_capacity(4 + portion);
                b.extend_from_slice(&(portion as u16).to_le_bytes());
                b.extend_from_slice(&(remainder as u16).to_le_bytes());
                b.extend_from_slice(&tdi.report[offset..offset + portion]);
                Ok(response(function, 0x04, &b))
            }
            msg::GET_DEVICE_INTERFACE_STATE => Ok(response(function, 0x05, &[state as u8])),
            msg::START_INTERFACE => {
                if self.config.faults.refuse_start {
                    return Err((error_code::UNSPECIFIED, 0));
                }
                if tdi.nonce.as_ref().map(|n| &n[..]) != Some(body) {
                    return Err((error_code::INVALID_NONCE, 0));
                }
                // ALL CHECKS PASSED: the nonce is spent before RUN.
                tdi.nonce = None;
                tdi.state = Run;
                Ok(response(function, 0x06, &[]))
            }
            _ => {
                // STOP_INTERFACE: from any state back to CONFIG_UNLOCKED.
                tdi.state = ConfigUnlocked;
                tdi.nonce = None;
                tdi.report.clear();
                tdi.session = None;
                Ok(response(function, 0x07, &[]))
            }
        }
    }

    /// The TDIs `session` locked go to ERROR: their nonce is destroyed (TDISP §11.4.5).
    pub(crate) fn tdis_session_ended(&mut self, session: u32) {
        for tdi in self.tdis.iter_mut().filter(|d| d.session == Some(session)) {
            if matches!(tdi.state, TdiState::ConfigLocked | TdiState::Run) {
                tdi.state = TdiState::Error;
            }
            tdi.nonce = None;
        }
    }
}
