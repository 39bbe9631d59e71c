//! The one outstanding exchange of a PDEV: who it belongs to and the flow that drives it.
//!
//! Every device operation the TSM carries out (SPDM.CONNECT, END_SESSION, KEY_UPDATE,
//! RECOLLECT, IDE_KM, TDISP) is a sans-IO flow of the DOE module's shape: `start()` names the
//! first request, `step(answer)` checks an answer and names the next one, each as an
//! [`Action`](crate::doe::Action). A PDEV holds at most one of them at a time, with its owner
//! (the PDEV itself, one of its IDE streams, or a TDI), so "the device has one request
//! outstanding" and "whose request it is" are one record, never two to reconcile (TF-RMM keeps
//! the same in its PDEV and steps every flow with one `dev_communicate`). The engine that steps
//! it is `crate::abi::exchange`.

use crate::doe::Action;
use crate::error::DeviceFault;
use crate::spdm::connect::{ConnectError, Stage};
use crate::spdm::key_update::KeyUpdate;
use crate::spdm::later::Retries;
use crate::spdm::meas::Measurements;
use crate::spdm::SpdmError;
use crate::tdi::{TdiFlow, TdiOp};

use super::km::KmFlow;
use super::PLAIN_BYTES;

/// What the device's one outstanding request belongs to, as the host sees it in a PDEV summary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pending {
    /// Nothing is outstanding.
    None,
    /// SPDM.CONNECT.
    Connect,
    /// SPDM.DISCONNECT: END_SESSION.
    End,
    /// IDE.STREAM.KM on a stream.
    Km(usize),
    /// SPDM.MNG KEY_UPDATE.
    KeyUpdate,
    /// SPDM.MNG RECOLLECT: fresh signed measurements.
    Measure,
    /// SPDM.MNG HEARTBEAT.
    Heartbeat,
    /// A TDI's TDISP request.
    Tdi(usize),
}

/// The object an exchange belongs to: the one a device fault is recorded against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    /// The PDEV itself (CONNECT, DISCONNECT, KEY_UPDATE, RECOLLECT).
    Pdev,
    /// The IDE stream in this slot of the PDEV (IDE_KM).
    Stream(usize),
    /// The TDI in this slot of the TSM (TDISP).
    Tdi(usize),
}

/// The flow an exchange runs.
// No heap to box the large variants into: the exchange is held once per PDEV, in place, and
// its size is the largest flow's whichever runs.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum Flow {
    /// SPDM.CONNECT. Its state machine is the PDEV's `conn`, not held here: the evidence it
    /// gathers (chain, VCA, measurements) outlives the exchange.
    Connect,
    /// END_SESSION inside the session.
    EndSession(SessionMessage),
    /// HEARTBEAT inside the session: the keep-alive the device asked for.
    Heartbeat(SessionMessage),
    /// KEY_UPDATE; it holds the session until it ends.
    KeyUpdate(KeyUpdate),
    /// Signed measurements: never evidence until the exchange succeeds.
    Measure(Measure),
    /// IDE_KM inside the session.
    IdeKm(KmFlow),
    /// TDISP inside the session.
    Tdisp(TdiFlow),
}

/// A PDEV's outstanding exchange. The constructors tie each flow to the only owner it can have.
#[derive(Clone, Debug)]
pub struct Exchange {
    owner: Owner,
    flow: Flow,
    /// The flow's last request as a plain SPDM message, for the engine to send again after ERROR
    /// Busy or to name in RESPOND_IF_READY (`crate::spdm::later`), and the retries so far.
    last: LastRequest,
}

/// The last request of a flow whose messages the engine frames or seals.
#[derive(Clone, Copy, Debug)]
pub struct LastRequest {
    bytes: [u8; PLAIN_BYTES],
    len: usize,
    /// Busy / ResponseNotReady answers to it in a row.
    pub retries: Retries,
    /// Microseconds the host waits before the request the engine just made in its stead
    /// (RESPOND_IF_READY after ResponseNotReady), else 0.
    pub wait_us: u64,
}

impl LastRequest {
    const fn none() -> LastRequest {
        LastRequest { bytes: [0; PLAIN_BYTES], len: 0, retries: Retries::new(), wait_us: 0 }
    }

    /// Keeps `request` (a plain SPDM message; one longer than the TSM ever seals is not kept,
    /// and is then never retried) with no retries yet.
    pub fn set(&mut self, request: &[u8]) {
        self.len = if request.len() <= PLAIN_BYTES { request.len() } else { 0 };
        self.bytes[..self.len].copy_from_slice(&request[..self.len]);
        self.retries = Retries::new();
        self.wait_us = 0;
    }

    /// The request, if one is kept.
    pub fn get(&self) -> Option<&[u8]> {
        (self.len != 0).then_some(&self.bytes[..self.len])
    }
}

impl Exchange {
    /// SPDM.CONNECT of the PDEV.
    pub const fn connect() -> Exchange {
        Exchange { owner: Owner::Pdev, flow: Flow::Connect, last: LastRequest::none() }
    }

    /// END_SESSION of the PDEV's session at SPDM `version`.
    pub const fn end_session(version: u8) -> Exchange {
        Exchange {
            owner: Owner::Pdev,
            flow: Flow::EndSession(SessionMessage::end_session(version)),
            last: LastRequest::none(),
        }
    }

    /// HEARTBEAT of the PDEV's session at SPDM `version`.
    pub const fn heartbeat(version: u8) -> Exchange {
        Exchange {
            owner: Owner::Pdev,
            flow: Flow::Heartbeat(SessionMessage::heartbeat(version)),
            last: LastRequest::none(),
        }
    }

    /// KEY_UPDATE of the PDEV's session.
    pub fn key_update(ku: KeyUpdate) -> Exchange {
        Exchange { owner: Owner::Pdev, flow: Flow::KeyUpdate(ku), last: LastRequest::none() }
    }

    /// The signed measurements SPDM.CONNECT takes inside the session it just established.
    pub fn connect_measurements(m: Measurements) -> Exchange {
        Exchange {
            owner: Owner::Pdev,
            flow: Flow::Measure(Measure { exchange: m, in_session: true, connecting: true }),
            last: LastRequest::none(),
        }
    }

    /// The same measurements in the clear, outside the session SPDM.CONNECT established: the
    /// fallback for a device that refused them inside it (`crate::abi::exchange`, the
    /// measurement policy).
    pub fn connect_measurements_in_clear(m: Measurements) -> Exchange {
        Exchange {
            owner: Owner::Pdev,
            flow: Flow::Measure(Measure { exchange: m, in_session: false, connecting: true }),
            last: LastRequest::none(),
        }
    }

    /// RECOLLECT of the PDEV's measurements, inside the session or in the clear.
    pub fn recollect(m: Measurements, in_session: bool) -> Exchange {
        Exchange {
            owner: Owner::Pdev,
            flow: Flow::Measure(Measure { exchange: m, in_session, connecting: false }),
            last: LastRequest::none(),
        }
    }

    /// IDE_KM on the stream in slot `stream`.
    pub fn ide_km(stream: usize, flow: KmFlow) -> Exchange {
        Exchange { owner: Owner::Stream(stream), flow: Flow::IdeKm(flow), last: LastRequest::none() }
    }

    /// TDISP for the TDI in slot `tdi`.
    pub fn tdisp(tdi: usize, flow: TdiFlow) -> Exchange {
        Exchange { owner: Owner::Tdi(tdi), flow: Flow::Tdisp(flow), last: LastRequest::none() }
    }

    /// Whom a fault of this exchange is recorded against.
    pub const fn owner(&self) -> Owner {
        self.owner
    }

    /// The flow.
    pub const fn flow(&self) -> &Flow {
        &self.flow
    }

    /// The flow, once the exchange ends.
    pub fn into_flow(self) -> Flow {
        self.flow
    }

    /// The flow, to step it.
    pub fn flow_mut(&mut self) -> &mut Flow {
        &mut self.flow
    }

    /// Microseconds the host waits before moving the request just made (RESPOND_IF_READY after
    /// ERROR ResponseNotReady: the device's response time), else 0. `conn` is the PDEV's
    /// connection, which reads its own answers.
    pub fn wait_us(&self, conn: &crate::spdm::connect::Connect) -> u64 {
        match self.flow {
            Flow::Connect => conn.wait_us(),
            _ => self.last.wait_us,
        }
    }

    /// The flow and its last request, to step the one and keep the other.
    pub fn parts_mut(&mut self) -> (&mut Flow, &mut LastRequest) {
        (&mut self.flow, &mut self.last)
    }

    /// True if the engine reads this flow's answers for Busy and ResponseNotReady: every flow
    /// whose messages it seals or frames. SPDM.CONNECT reads its own clear answers (and
    /// `KeyExchange` its FINISH_RSP); KEY_UPDATE is refused on any ERROR (a KEY_UPDATE that
    /// fails leaves no session, docs/protocols.md).
    pub const fn retried_by_engine(&self) -> bool {
        !matches!(self.flow, Flow::Connect | Flow::KeyUpdate(_))
    }

    /// How an SPDM-level failure of this exchange (a come-back answer too many, or for another
    /// request) becomes a device fault: SPDM.CONNECT's measurements name the connection's stage.
    pub fn spdm_fault(&self) -> fn(SpdmError) -> DeviceFault {
        match &self.flow {
            Flow::Measure(m) if m.connecting => |e| DeviceFault::Connect(ConnectError::Spdm(Stage::Measurements, e)),
            _ => DeviceFault::Spdm,
        }
    }

    /// True if the engine seals the flow's requests and opens its answers under the PDEV's
    /// session. CONNECT travels in the clear until its session exists, measurements wherever
    /// they were asked for; KEY_UPDATE changes the keys, so it seals and opens itself.
    pub const fn sealed(&self) -> bool {
        match &self.flow {
            Flow::EndSession(_) | Flow::Heartbeat(_) | Flow::IdeKm(_) | Flow::Tdisp(_) => true,
            Flow::Measure(m) => m.in_session,
            Flow::Connect | Flow::KeyUpdate(_) => false,
        }
    }

    /// The summary's view.
    pub const fn pending(&self) -> Pending {
        match (&self.flow, self.owner) {
            (Flow::Connect, _) => Pending::Connect,
            (Flow::EndSession(_), _) => Pending::End,
            (Flow::Heartbeat(_), _) => Pending::Heartbeat,
            (Flow::KeyUpdate(_), _) => Pending::KeyUpdate,
            (Flow::Measure(m), _) if m.connecting => Pending::Connect,
            (Flow::Measure(_), _) => Pending::Measure,
            (Flow::IdeKm(_), Owner::Stream(s)) => Pending::Km(s),
            (Flow::Tdisp(_), Owner::Tdi(t)) => Pending::Tdi(t),
            // The constructors make these impossible; the audit says so if one appears.
            (Flow::IdeKm(_) | Flow::Tdisp(_), _) => Pending::None,
        }
    }

    /// The TDISP operation, if this is a TDI's exchange.
    pub fn tdi_op(&self) -> Option<TdiOp> {
        match &self.flow {
            Flow::Tdisp(f) => Some(f.op()),
            _ => None,
        }
    }
}

/// A signed GET_MEASUREMENTS exchange and where it runs.
#[derive(Clone, Debug)]
pub struct Measure {
    /// The exchange (it speaks DOE objects of the clear channel; inside the session the engine
    /// moves its messages in and out of secured ones).
    pub exchange: Measurements,
    /// Inside the secured session.
    pub in_session: bool,
    /// Part of SPDM.CONNECT (else SPDM.MNG RECOLLECT).
    pub connecting: bool,
}

/// A session request of four bytes answered by its four-byte ACK: END_SESSION /
/// END_SESSION_ACK (DSP0274 §10.17) and HEARTBEAT / HEARTBEAT_ACK (§10.19), sans-IO like the
/// others.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionMessage {
    version: u8,
    out: [u8; 4],
    ack: u8,
}

const END_SESSION: u8 = 0xEC;
const END_SESSION_ACK: u8 = 0x6C;
const HEARTBEAT: u8 = 0xE8;
const HEARTBEAT_ACK: u8 = 0x68;
const ERROR: u8 = 0x7F;

impl SessionMessage {
    /// END_SESSION at SPDM `version` (no attributes: the device may drop its cached state).
    pub const fn end_session(version: u8) -> SessionMessage {
        SessionMessage { version, out: [version, END_SESSION, 0, 0], ack: END_SESSION_ACK }
    }

    /// HEARTBEAT at SPDM `version`.
    pub const fn heartbeat(version: u8) -> SessionMessage {
        SessionMessage { version, out: [version, HEARTBEAT, 0, 0], ack: HEARTBEAT_ACK }
    }

    /// The request (plaintext; the engine seals it).
    pub fn start(&mut self) -> Action<'_, DeviceFault> {
        Action::Send(&self.out)
    }

    /// Checks the ACK: the version, the code, four bytes.
    pub fn step(&mut self, m: &[u8]) -> Action<'_, DeviceFault> {
        let (v, ack) = (self.version, self.ack);
        match m {
            [mv, code, _, _] if *mv == v && *code == ack => Action::Done,
            [mv, ERROR, code, data] if *mv == v => {
                Action::Failed(DeviceFault::Spdm(SpdmError::Responder { code: *code, data: *data }))
            }
            _ => Action::Failed(DeviceFault::Spdm(SpdmError::UnexpectedResponse {
                got: m.get(1).copied().unwrap_or(0),
                want: ack,
            })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn end_session_accepts_only_its_ack_at_its_version() {
        let mut e = SessionMessage::end_session(0x12);
        assert_eq!(e.start(), Action::Send(&[0x12, 0xEC, 0, 0]));
        assert_eq!(e.step(&[0x12, 0x6C, 0, 0]), Action::Done);
        assert_eq!(
            e.step(&[0x12, 0x7F, 0x06, 0]),
            Action::Failed(DeviceFault::Spdm(SpdmError::Responder { code: 0x06, data: 0 }))
        );
        let wrong = Action::Failed(DeviceFault::Spdm(SpdmError::UnexpectedResponse { got: 0x6C, want: 0x6C }));
        assert_eq!(e.step(&[0x11, 0x6C, 0, 0]), wrong, "another version");
        assert_eq!(
            e.step(&[0x12, 0x6C, 0]),
            Action::Failed(DeviceFault::Spdm(SpdmError::UnexpectedResponse { got: 0x6C, want: 0x6C })),
            "short"
        );
    }

    #[test]
    fn heartbeat_wants_heartbeat_ack() {
        let mut h = SessionMessage::heartbeat(0x13);
        assert_eq!(h.start(), Action::Send(&[0x13, 0xE8, 0, 0]));
        assert_eq!(h.step(&[0x13, 0x68, 0, 0]), Action::Done);
        let wrong = Action::Failed(DeviceFault::Spdm(SpdmError::UnexpectedResponse { got: 0x6C, want: 0x68 }));
        assert_eq!(h.step(&[0x13, 0x6C, 0, 0]), wrong, "END_SESSION_ACK is no HEARTBEAT_ACK");
        assert_eq!(
            h.step(&[0x13, 0x7F, 0x04, 0]),
            Action::Failed(DeviceFault::Spdm(SpdmError::Responder { code: 0x04, data: 0 }))
        );
        assert_eq!(Exchange::heartbeat(0x13).pending(), Pending::Heartbeat);
        assert!(Exchange::heartbeat(0x13).sealed());
    }

    #[test]
    fn pending_names_the_owner() {
        assert_eq!(Exchange::connect().pending(), Pending::Connect);
        assert_eq!(Exchange::end_session(0x12).pending(), Pending::End);
        assert!(Exchange::end_session(0x12).sealed() && !Exchange::connect().sealed());
    }
}
