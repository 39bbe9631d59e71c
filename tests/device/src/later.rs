//! Come back later (DSP0274 1.2 §10.13, §10.14): the `busy` and `not-ready` switches. A Busy
//! request is not taken: the device is put back as it was before it (only the secured message's
//! sequence numbers moved, as they must) and answers ERROR Busy. A not-ready request is taken,
//! its response kept, and ERROR ResponseNotReady (RDTExponent, RequestCode, Token, RDTM) sent;
//! RESPOND_IF_READY with that request code and token, in the same place (the clear, or the same
//! session), gets the kept response, or ResponseNotReady again while the switch has counts left.
//! The device keeps one deferred response at a time.

use crate::faults::Faults;
use crate::session::After;
use crate::spdm::{error, error_code};
use crate::Device;

/// ERROR Busy and ResponseNotReady.
const ERROR_BUSY: u8 = 0x03;
const ERROR_RESPONSE_NOT_READY: u8 = 0x42;
/// RESPOND_IF_READY.
pub(crate) const RESPOND_IF_READY: u8 = 0xFF;
/// 2^10 µs: about a millisecond before the response is ready, twice that at most (RDTM 2).
const RDT_EXPONENT: u8 = 10;
const RDTM: u8 = 2;

/// A response the device owes.
#[derive(Clone, Debug)]
pub(crate) struct Deferred {
    session: Option<u32>,
    code: u8,
    token: u8,
    reply: Vec<u8>,
    after: Option<After>,
}

impl Device {
    /// True if a come-back switch is armed: the caller snapshots the device before it takes a
    /// request.
    pub(crate) fn later_armed(&self) -> bool {
        self.config.faults.busy.is_some() || self.config.faults.not_ready.is_some()
    }

    /// RESPOND_IF_READY in `session` (None: the clear): the deferred response if the request
    /// code and token name it; ERROR UnexpectedRequest otherwise. `None` if `m` is another
    /// request.
    pub(crate) fn respond_if_ready(&mut self, session: Option<u32>, m: &[u8]) -> Option<(Vec<u8>, Option<After>)> {
        let [version, RESPOND_IF_READY, code, token] = *m else { return None };
        match self.deferred.take() {
            // Still not ready while the switch has counts left: ResponseNotReady again.
            Some(d) if d.session == session && d.code == code && d.token == token => {
                if Faults::take(&mut self.config.faults.not_ready, &d.reply) {
                    self.deferred = Some(d);
                    return Some((not_ready(version, code, token), None));
                }
                Some((d.reply, d.after))
            }
            other => {
                self.deferred = other;
                Some((error(version, error_code::UNEXPECTED_REQUEST, 0), None))
            }
        }
    }

    /// The device answered `request` with `reply` (and `after` for its session): if the `busy`
    /// switch takes the reply, the device goes back to `before` and answers Busy; if `not-ready`
    /// takes it, the reply is kept and ResponseNotReady answered.
    pub(crate) fn later(
        &mut self,
        session: Option<u32>,
        request: &[u8],
        (reply, after): (Vec<u8>, Option<After>),
        before: Option<Box<Device>>,
    ) -> (Vec<u8>, Option<After>) {
        let (Some(&version), Some(&code)) = (request.first(), request.get(1)) else { return (reply, after) };
        if let Some(before) = before {
            let mut faults = self.config.faults.clone();
            if Faults::take(&mut faults.busy, &reply) {
                *self = *before;
                self.config.faults = faults;
                return (error(version, ERROR_BUSY, 0), None);
            }
        }
        if !Faults::take(&mut self.config.faults.not_ready, &reply) {
            return (reply, after);
        }
        let token = self.next_token;
        self.next_token = self.next_token.wrapping_add(1);
        self.deferred = Some(Deferred { session, code, token, reply, after });
        (not_ready(version, code, token), None)
    }
}

/// ERROR ResponseNotReady for the request `code`, with `token`.
fn not_ready(version: u8, code: u8, token: u8) -> Vec<u8> {
    vec![version, tsm::spdm::code::ERROR, ERROR_RESPONSE_NOT_READY, 0, RDT_EXPONENT, code, token, RDTM]
}
