//! SPDM requester (DSP0274 1.2, 1.3 when the device offers it), sans-IO.
//!
//! - [`negotiate`]: GET_VERSION, GET_CAPABILITIES, NEGOTIATE_ALGORITHMS and the VCA transcript.
//! - [`connect`]: the whole connection (discovery to session) as one state machine.
//! - [`error`]: why an exchange failed ([`SpdmError`]).
//! - [`cert`]: GET_DIGESTS and chunked GET_CERTIFICATE for slot 0, with message B.
//! - [`challenge`]: CHALLENGE / CHALLENGE_AUTH: the device proves its leaf key over M1.
//! - [`chunk`]: large responses taken in pieces with CHUNK_GET after ERROR LargeResponse.
//! - [`chain`]: the SPDM certificate-chain format, validated as a certification path (RFC 5280),
//!   and its leaf key; `x509` reads the certificate fields the rules need.
//! - [`key_update`]: KEY_UPDATE / KEY_UPDATE_ACK inside a session, resumable like the others.
//! - [`keys`]: the SPDM 1.2+ key schedule (handshake and data keys, finished keys, KEY_UPDATE).
//! - [`later`]: ERROR Busy and ResponseNotReady, read before any flow sees an answer.
//! - [`meas`]: signed GET_MEASUREMENTS of every index, kept as evidence.
//! - [`secured`]: DSP0277 secured messages over DOE with AES-128-GCM or AES-256-GCM.
//! - [`session`]: KEY_EXCHANGE and FINISH: an ECDHE (secp256r1 or secp384r1) session.
//! - [`sig`]: the SPDM 1.2+ signing prefix and the verification of device signatures.
//! - [`suite`]: the suites the TSM negotiates, and its floor.

pub mod cert;
pub mod chain;
pub mod challenge;
pub mod chunk;
pub mod connect;
pub mod error;
pub mod key_update;
pub mod keys;
pub mod later;
pub mod meas;
pub mod negotiate;
pub mod secured;
pub mod session;
pub mod sig;
pub mod suite;
pub(crate) mod x509;

pub use negotiate::*;

use crate::doe::{self, Action, ObjectType};

/// The bookkeeping of one request/response exchange: the framed request, and whether an answer
/// is awaited, arrived, or failed.
#[derive(Clone, Debug)]
pub(crate) struct Exchange {
    state: ExchangeState,
    out: [u8; 64],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ExchangeState {
    Idle,
    Waiting,
    Done,
    Failed(SpdmError),
}

impl Exchange {
    pub(crate) const fn new() -> Exchange {
        Exchange { state: ExchangeState::Idle, out: [0; 64] }
    }

    /// Frames `msg` as a DOE object and waits for its answer.
    pub(crate) fn send(&mut self, msg: &[u8]) -> Action<'_, SpdmError> {
        match doe::encode(ObjectType::Spdm, msg, &mut self.out) {
            Ok(n) => {
                self.state = ExchangeState::Waiting;
                Action::Send(&self.out[..n])
            }
            Err(e) => self.settle(Err(SpdmError::Doe(e))),
        }
    }

    /// `None` while an answer is awaited; otherwise what `step` must return without looking at
    /// the answer.
    pub(crate) fn unexpected(&mut self) -> Option<Action<'static, SpdmError>> {
        match self.state {
            ExchangeState::Waiting => None,
            ExchangeState::Done => Some(Action::Done),
            ExchangeState::Failed(e) => Some(Action::Failed(e)),
            ExchangeState::Idle => Some(self.settle(Err(SpdmError::NotWaiting))),
        }
    }

    /// Records the outcome of checking the answer.
    pub(crate) fn settle(&mut self, result: Result<(), SpdmError>) -> Action<'static, SpdmError> {
        match result {
            Ok(()) => {
                self.state = ExchangeState::Done;
                Action::Done
            }
            Err(e) => {
                self.state = ExchangeState::Failed(e);
                Action::Failed(e)
            }
        }
    }

    pub(crate) fn done(&self) -> bool {
        self.state == ExchangeState::Done
    }

    pub(crate) fn error(&self) -> Option<SpdmError> {
        match self.state {
            ExchangeState::Failed(e) => Some(e),
            _ => None,
        }
    }
}
