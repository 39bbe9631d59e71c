//! The TDISP flows of TDI.LOCK, TDI.START and TDI.STOP, sans-IO, over the PDEV's session. Each
//! step names the next plaintext TDISP request; the answer is checked before the next one.
//!
//! ```text
//! LOCK  : GET_VERSION (1.0 offered) → GET_CAPABILITIES (lock flags supported) → LOCK_INTERFACE
//!         (nonce kept) → GET_DEVICE_INTERFACE_STATE = CONFIG_LOCKED → GET_DEVICE_INTERFACE_REPORT
//!         in portions until the remainder is 0 → the whole report parsed and checked
//! START : START_INTERFACE (the lock's nonce) → GET_DEVICE_INTERFACE_STATE = RUN
//! STOP  : STOP_INTERFACE → GET_DEVICE_INTERFACE_STATE = CONFIG_UNLOCKED
//! ```
//! The state read back after each transition is the TSM's own confirmation: a device that
//! acknowledges START but does not run is caught here, not by the guest.

use crate::doe::Action;
use crate::error::DeviceFault;
use crate::pdev::PLAIN_BYTES;
use crate::tdisp::{self, InterfaceId, InterfaceReport, Request, Response, TdiState, VERSION_10};

/// Largest interface report the TSM keeps: 32 ranges and 1 KiB of device-specific information.
pub const REPORT_MAX: usize = 16 + 16 * tdisp::MAX_RANGES + 4 + 1024;
/// Bytes asked for per GET_DEVICE_INTERFACE_REPORT.
pub const PORTION: u16 = 0x400;

/// The operation a flow carries out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TdiOp {
    /// LOCK_INTERFACE and the report.
    Lock {
        /// LOCK_INTERFACE flags.
        flags: u16,
        /// Default IDE stream.
        stream: u8,
        /// MMIO_REPORTING_OFFSET (bytes, 4K aligned).
        offset: u64,
    },
    /// START_INTERFACE.
    Start,
    /// STOP_INTERFACE.
    Stop,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Version,
    Capabilities,
    Lock,
    State(TdiState),
    Report,
    Start,
    Stop,
}

/// What the flow learnt when it finished.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TdiDone {
    /// Locked: the nonce for START; the report is in the buffer the flow filled.
    Locked {
        /// START_INTERFACE_NONCE.
        nonce: [u8; 32],
        /// Bytes of the report.
        report_len: usize,
    },
    /// Running.
    Started,
    /// Unlocked.
    Stopped,
}

/// One running TDISP flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TdiFlow {
    op: TdiOp,
    version: u8,
    iface: InterfaceId,
    step: Step,
    nonce: [u8; 32],
    report_len: usize,
    remainder: Option<u16>,
    done: Option<TdiDone>,
    out: [u8; PLAIN_BYTES],
}

impl TdiFlow {
    /// A flow for `op` on interface `iface`, in a session of SPDM `version`; `nonce` is the
    /// lock's nonce (START only).
    pub fn new(op: TdiOp, version: u8, iface: InterfaceId, nonce: [u8; 32]) -> TdiFlow {
        let step = match op {
            TdiOp::Lock { .. } => Step::Version,
            TdiOp::Start => Step::Start,
            TdiOp::Stop => Step::Stop,
        };
        TdiFlow { op, version, iface, step, nonce, report_len: 0, remainder: None, done: None, out: [0; PLAIN_BYTES] }
    }

    /// The operation.
    pub fn op(&self) -> TdiOp {
        self.op
    }

    /// What the flow learnt, once it finished.
    pub fn done(&self) -> Option<TdiDone> {
        self.done
    }

    /// The first request (plaintext; the engine seals it).
    pub fn start(&mut self) -> Action<'_, DeviceFault> {
        self.send()
    }

    /// Checks the device's answer (report portions are appended to `report`) and names the
    /// next request; [`Action::Done`] once [`TdiFlow::done`] says what was reached.
    pub fn step(&mut self, m: &[u8], report: &mut [u8; REPORT_MAX]) -> Action<'_, DeviceFault> {
        match self.answer(m, report) {
            Ok(Some(d)) => {
                self.done = Some(d);
                Action::Done
            }
            Ok(None) => self.send(),
            Err(f) => Action::Failed(f),
        }
    }

    fn send(&mut self) -> Action<'_, DeviceFault> {
        let mut out = [0u8; PLAIN_BYTES];
        match self.encode(&mut out) {
            Ok(n) => {
                self.out = out;
                Action::Send(&self.out[..n])
            }
            Err(f) => Action::Failed(f),
        }
    }

    /// Encodes the current request into `out`.
    fn encode(&self, out: &mut [u8]) -> Result<usize, DeviceFault> {
        let request = match self.step {
            Step::Version => Request::GetVersion,
            Step::Capabilities => Request::GetCapabilities,
            Step::Lock => {
                // Only a LOCK flow reaches this step (`new` starts START and STOP elsewhere).
                let TdiOp::Lock { flags, stream, offset } = self.op else {
                    return Err(DeviceFault::Tdisp(tdisp::TdispError::Buffer));
                };
                Request::Lock { flags, default_stream: stream, mmio_reporting_offset: offset, p2p_mask: 0 }
            }
            Step::State(_) => Request::GetState,
            Step::Report => Request::GetReport { offset: self.report_len as u16, length: PORTION },
            Step::Start => Request::Start { nonce: &self.nonce },
            Step::Stop => Request::Stop,
        };
        tdisp::encode(self.version, self.iface, &request, out).map_err(DeviceFault::Tdisp)
    }

    const fn code(&self) -> u8 {
        match self.step {
            Step::Version => tdisp::msg::GET_VERSION,
            Step::Capabilities => tdisp::msg::GET_CAPABILITIES,
            Step::Lock => tdisp::msg::LOCK_INTERFACE,
            Step::State(_) => tdisp::msg::GET_DEVICE_INTERFACE_STATE,
            Step::Report => tdisp::msg::GET_DEVICE_INTERFACE_REPORT,
            Step::Start => tdisp::msg::START_INTERFACE,
            Step::Stop => tdisp::msg::STOP_INTERFACE,
        }
    }

    /// Checks the device's answer; report portions are appended to `report`. `Some` once done.
    fn answer(&mut self, m: &[u8], report: &mut [u8; REPORT_MAX]) -> Result<Option<TdiDone>, DeviceFault> {
        let response = tdisp::decode(self.version, self.iface, self.code(), m).map_err(DeviceFault::Tdisp)?;
        let (next, done) = match (self.step, response) {
            (Step::Version, Response::Version(v)) if v.contains(&VERSION_10) => (Step::Capabilities, None),
            (Step::Capabilities, Response::Capabilities { lock_flags, .. }) => {
                let TdiOp::Lock { flags, .. } = self.op else { return Err(DeviceFault::LockFlags(0)) };
                if flags & !lock_flags != 0 {
                    return Err(DeviceFault::LockFlags(flags & !lock_flags));
                }
                (Step::Lock, None)
            }
            (Step::Lock, Response::Locked { nonce }) => {
                self.nonce = nonce;
                (Step::State(TdiState::ConfigLocked), None)
            }
            (Step::State(want), Response::State(got)) if got == want => match want {
                TdiState::ConfigLocked => (Step::Report, None),
                TdiState::Run => (self.step, Some(TdiDone::Started)),
                _ => (self.step, Some(TdiDone::Stopped)),
            },
            (Step::State(_), Response::State(got)) => return Err(DeviceFault::TdiState(got)),
            (Step::Report, Response::ReportPortion { portion, remainder }) => {
                let end = self.report_len + portion.len();
                let consistent = match self.remainder {
                    None => true,
                    Some(before) => usize::from(before) == portion.len() + usize::from(remainder),
                };
                if portion.is_empty() && remainder != 0 || portion.len() > usize::from(PORTION) || !consistent {
                    return Err(DeviceFault::Report(tdisp::ReportError::Length));
                }
                let Some(dst) = report.get_mut(self.report_len..end) else {
                    return Err(DeviceFault::Report(tdisp::ReportError::Length));
                };
                dst.copy_from_slice(portion);
                self.report_len = end;
                self.remainder = Some(remainder);
                if remainder != 0 {
                    (Step::Report, None)
                } else {
                    InterfaceReport::parse(&report[..end]).map_err(DeviceFault::Report)?;
                    (Step::Report, Some(TdiDone::Locked { nonce: self.nonce, report_len: end }))
                }
            }
            (Step::Start, Response::Started) => (Step::State(TdiState::Run), None),
            (Step::Stop, Response::Stopped) => (Step::State(TdiState::ConfigUnlocked), None),
            // A version list without 1.0 (decode refuses most other mismatches first).
            (_, _) => return Err(DeviceFault::Tdisp(tdisp::TdispError::Version(0))),
        };
        self.step = next;
        Ok(done)
    }
}
