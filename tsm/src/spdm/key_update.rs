//! KEY_UPDATE / KEY_UPDATE_ACK (DSP0274 1.2 and 1.3, "KEY_UPDATE request and KEY_UPDATE_ACK
//! response"), sans-IO, inside an established session. Both sides must have announced KEY_UPD_CAP.
//!
//! ```text
//! KEY_UPDATE     : ver | 0xE9 | Param1 KeyOperation | Param2 Tag        (4 bytes)
//! KEY_UPDATE_ACK : ver | 0x69 | Param1 KeyOperation | Param2 Tag (echo) (4 bytes)
//! KeyOperation   : 1 UpdateKey, 2 UpdateAllKeys, 3 VerifyNewKey
//! new secret     : S' = HKDF-Expand(S, BinConcat(H, "traffic upd")), sequence number back to 0
//! ```
//!
//! Which keys protect which message (DSP0274's key-update synchronisation, as libspdm does it):
//!
//! | message | sealed with |
//! |---|---|
//! | KEY_UPDATE(UpdateKey or UpdateAllKeys) | the **old** request key |
//! | its KEY_UPDATE_ACK | UpdateKey: the (unchanged) response key; UpdateAllKeys: the **new** response key (the responder moves its transmit key before answering) |
//! | KEY_UPDATE(VerifyNewKey) | the **new** request key (the requester moves only after the ACK) |
//! | its KEY_UPDATE_ACK | the response key now in force |
//!
//! The responder keeps the old request key until the new one has opened a message, so a requester
//! whose ACK was lost may resend the same (operation, tag) under the old key. The TSM does not
//! retry: a KEY_UPDATE that fails for any reason ends the session on the TSM's side (the device
//! may already have moved to the new keys, and keys that might disagree are worse than none).
//!
//! The exchange owns the [`Session`] while it runs, so a resumable host call (SPDM.MNG with
//! KEY_UPDATE) can hold it between `step`s like every other exchange and take the updated session
//! back with [`KeyUpdate::into_session`] once it is done.

use crate::doe::Action;
use crate::spdm::negotiate::{cap, code, Negotiated, SpdmError};
use crate::spdm::secured::{self, SecuredError};
use crate::spdm::session::Session;

/// KEY_UPDATE operations (DSP0274 Table "KEY_UPDATE operations").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyOperation {
    /// Only the requester's direction (what the TSM sends) moves to a new key.
    UpdateKey = 1,
    /// Both directions move to new keys.
    UpdateAllKeys = 2,
    /// The requester proves it sends with the new key; the responder drops the old one.
    VerifyNewKey = 3,
}

impl KeyOperation {
    /// The KeyOperation byte.
    pub const fn code(self) -> u8 {
        self as u8
    }
}

/// The KEY_UPDATE request message (4 bytes, before sealing).
pub const fn request(version: u8, operation: KeyOperation, tag: u8) -> [u8; 4] {
    [version, code::KEY_UPDATE, operation.code(), tag]
}

/// Checks a decrypted answer to KEY_UPDATE(`operation`, `tag`): exactly a KEY_UPDATE_ACK of the
/// session's version echoing both.
///
/// # Errors
/// The device's ERROR, another version, response or size, or an ACK for another request.
pub fn check_ack(version: u8, operation: KeyOperation, tag: u8, msg: &[u8]) -> Result<(), SpdmError> {
    if msg.len() < 4 {
        return Err(SpdmError::BadLength { code: code::KEY_UPDATE_ACK, len: msg.len() });
    }
    if msg[0] != version {
        return Err(SpdmError::WrongVersion { got: msg[0], want: version });
    }
    if msg[1] == code::ERROR {
        return Err(SpdmError::Responder { code: msg[2], data: msg[3] });
    }
    if msg[1] != code::KEY_UPDATE_ACK {
        return Err(SpdmError::UnexpectedResponse { got: msg[1], want: code::KEY_UPDATE_ACK });
    }
    // Secured messages are exact: no DOE padding inside them.
    if msg.len() != 4 {
        return Err(SpdmError::BadLength { code: code::KEY_UPDATE_ACK, len: msg.len() });
    }
    if msg[2] != operation.code() || msg[3] != tag {
        return Err(SpdmError::KeyUpdateAckMismatch { operation: msg[2], tag: msg[3] });
    }
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Idle,
    /// KEY_UPDATE(UpdateKey / UpdateAllKeys) sent under the old request key.
    WaitUpdateAck,
    /// KEY_UPDATE(VerifyNewKey) sent under the new request key.
    WaitVerifyAck,
    Done,
    Failed(SpdmError),
}

/// One KEY_UPDATE exchange: the update, then VerifyNewKey.
#[derive(Clone, Debug)]
pub struct KeyUpdate {
    /// The keys in force on the TSM's side. `None` once the exchange failed.
    session: Option<Session>,
    operation: KeyOperation,
    /// Tags of the update and of VerifyNewKey, from the TSM's entropy.
    tags: [u8; 2],
    state: State,
    out: [u8; 64],
}

impl KeyUpdate {
    /// A key update of `session` (taken over until the exchange ends), on a connection that
    /// negotiated `negotiated`, with `operation` UpdateKey or UpdateAllKeys and two tags drawn
    /// from the TSM's entropy (the update's, then VerifyNewKey's).
    ///
    /// # Errors
    /// [`SpdmError::MissingCapabilities`] if the device did not announce KEY_UPD_CAP;
    /// [`SpdmError::BadKeyOperation`] for VerifyNewKey, which only follows an update.
    pub fn new(
        session: Session,
        negotiated: &Negotiated,
        operation: KeyOperation,
        tags: [u8; 2],
    ) -> Result<KeyUpdate, SpdmError> {
        if negotiated.responder_flags & cap::KEY_UPD == 0 {
            return Err(SpdmError::MissingCapabilities { missing: cap::KEY_UPD });
        }
        if operation == KeyOperation::VerifyNewKey {
            return Err(SpdmError::BadKeyOperation(operation.code()));
        }
        Ok(KeyUpdate { session: Some(session), operation, tags, state: State::Idle, out: [0; 64] })
    }

    fn fail(&mut self, e: SpdmError) -> Action<'_, SpdmError> {
        // Nothing half-done is kept: the keys of a session whose update failed are dropped.
        self.session = None;
        self.state = State::Failed(e);
        Action::Failed(e)
    }

    /// KEY_UPDATE(operation, tag), sealed with the request key in force (the old one).
    pub fn start(&mut self) -> Action<'_, SpdmError> {
        if self.state != State::Idle {
            return self.fail(SpdmError::NotWaiting);
        }
        let Some(s) = self.session.as_mut() else {
            return self.fail(SpdmError::NotWaiting);
        };
        let msg = request(s.version(), self.operation, self.tags[0]);
        match s.seal(&msg, &mut self.out) {
            Ok(n) => {
                self.state = State::WaitUpdateAck;
                Action::Send(&self.out[..n])
            }
            Err(e) => self.fail(e),
        }
    }

    /// Consumes the device's answer: the update's ACK (then VerifyNewKey is sent) or VerifyNewKey's
    /// ACK (then done).
    pub fn step(&mut self, response: &[u8]) -> Action<'_, SpdmError> {
        let result = match self.state {
            State::WaitUpdateAck => self.on_update_ack(response),
            State::WaitVerifyAck => self.on_verify_ack(response),
            State::Done => return Action::Done,
            State::Failed(e) => return Action::Failed(e),
            State::Idle => Err(SpdmError::NotWaiting),
        };
        match result {
            Ok(Some(n)) => {
                self.state = State::WaitVerifyAck;
                Action::Send(&self.out[..n])
            }
            Ok(None) => {
                self.state = State::Done;
                Action::Done
            }
            Err(e) => self.fail(e),
        }
    }

    fn on_update_ack(&mut self, response: &[u8]) -> Result<Option<usize>, SpdmError> {
        let s = self.session.as_ref().ok_or(SpdmError::NotWaiting)?;
        let version = s.version();
        // UpdateAllKeys: the ACK already comes under the responder's new key.
        let mut response_keys =
            if self.operation == KeyOperation::UpdateAllKeys { s.response.updated() } else { s.response.clone() };
        let mut buf = [0u8; 16];
        let opened = secured::open(&mut response_keys, s.id, response, &mut buf);
        let msg = match opened {
            Ok(m) => m,
            Err(SecuredError::Authentication) if self.operation == KeyOperation::UpdateAllKeys => {
                // A device that refused the update answers ERROR under the key it kept; report
                // its error. Anything else under the old key is no ACK.
                let mut old = s.response.clone();
                let mut b = [0u8; 16];
                return match secured::open(&mut old, s.id, response, &mut b) {
                    Ok(m) if m.len() >= 4 && m[1] == code::ERROR => {
                        Err(SpdmError::Responder { code: m[2], data: m[3] })
                    }
                    _ => Err(SpdmError::Secured(SecuredError::Authentication)),
                };
            }
            Err(e) => return Err(SpdmError::Secured(e)),
        };
        check_ack(version, self.operation, self.tags[0], msg)?;
        // The device moved; now the TSM's sending direction moves, and proves it.
        let mut next = s.clone();
        next.response = response_keys;
        next.request = next.request.updated();
        let verify = request(version, KeyOperation::VerifyNewKey, self.tags[1]);
        let n = next.seal(&verify, &mut self.out)?;
        // ALL CHECKS PASSED: commit.
        self.session = Some(next);
        Ok(Some(n))
    }

    fn on_verify_ack(&mut self, response: &[u8]) -> Result<Option<usize>, SpdmError> {
        let s = self.session.as_ref().ok_or(SpdmError::NotWaiting)?;
        let mut next = s.clone();
        let mut buf = [0u8; 16];
        let version = next.version();
        let msg = next.open(response, &mut buf)?;
        check_ack(version, KeyOperation::VerifyNewKey, self.tags[1], msg)?;
        // ALL CHECKS PASSED: commit.
        self.session = Some(next);
        Ok(None)
    }

    /// The keys in force on the TSM's side while the exchange runs or once it is done; `None`
    /// after a failure.
    pub fn session(&self) -> Option<&Session> {
        self.session.as_ref()
    }

    /// The updated session, once done; `None` if the exchange failed or has not finished.
    pub fn into_session(self) -> Option<Session> {
        match self.state {
            State::Done => self.session,
            State::Idle | State::WaitUpdateAck | State::WaitVerifyAck | State::Failed(_) => None,
        }
    }

    /// Whether both ACKs arrived.
    pub fn done(&self) -> bool {
        self.state == State::Done
    }

    /// The error the exchange stopped on.
    pub fn error(&self) -> Option<SpdmError> {
        match self.state {
            State::Failed(e) => Some(e),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spdm::keys::DirectionKeys;

    extern crate std;
    use std::vec::Vec;

    const ID: u32 = 0xFFFE_FFFF;

    fn negotiated(flags: u32) -> Negotiated {
        Negotiated::p384(0x12, flags, 0x1000, 0x1000)
    }

    /// A session and the device's copy of its keys (request, response).
    fn pair() -> (Session, DirectionKeys, DirectionKeys) {
        let req = DirectionKeys::from_secret(crate::spdm::keys::Schedule::p384(0x12), &[0x21; 48]);
        let rsp = DirectionKeys::from_secret(crate::spdm::keys::Schedule::p384(0x12), &[0x22; 48]);
        (Session::new(ID, req.clone(), rsp.clone(), 0x12), req, rsp)
    }

    fn seal(keys: &mut DirectionKeys, msg: &[u8]) -> Vec<u8> {
        let mut out = std::vec![0u8; 64];
        let n = secured::seal(keys, ID, msg, &mut out).unwrap();
        out.truncate(n);
        out
    }

    fn open(keys: &mut DirectionKeys, obj: &[u8]) -> Vec<u8> {
        let mut buf = [0u8; 64];
        secured::open(keys, ID, obj, &mut buf).unwrap().to_vec()
    }

    fn sent(a: Action<'_, SpdmError>) -> Vec<u8> {
        match a {
            Action::Send(b) => b.to_vec(),
            other => panic!("{other:?}"),
        }
    }

    /// The device side as DSP0274 has it: opens the update under the old request key, moves its
    /// keys, answers (UpdateAllKeys: under the new response key), then opens VerifyNewKey under
    /// the new request key.
    fn run(op: KeyOperation, tamper: impl Fn(u8, &mut Vec<u8>)) -> (KeyUpdate, DirectionKeys, DirectionKeys) {
        let (s, mut dreq, mut drsp) = pair();
        let mut ku = KeyUpdate::new(s, &negotiated(0x42F6), op, [0xA1, 0xB2]).unwrap();
        let m = open(&mut dreq, &sent(ku.start()));
        assert_eq!(m, [0x12, 0xE9, op.code(), 0xA1]);
        dreq = dreq.updated();
        if op == KeyOperation::UpdateAllKeys {
            drsp = drsp.updated();
        }
        let mut ack = std::vec![0x12, 0x69, op.code(), 0xA1];
        tamper(1, &mut ack);
        let verify = match ku.step(&seal(&mut drsp, &ack)) {
            Action::Send(b) => b.to_vec(),
            _ => return (ku, dreq, drsp),
        };
        let m = open(&mut dreq, &verify);
        assert_eq!(m, [0x12, 0xE9, 3, 0xB2], "VerifyNewKey under the new request key");
        let mut ack = std::vec![0x12, 0x69, 3, 0xB2];
        tamper(2, &mut ack);
        let _ = ku.step(&seal(&mut drsp, &ack));
        (ku, dreq, drsp)
    }

    #[test]
    fn key_update_rejects_a_device_without_key_upd_cap() {
        let (s, _, _) = pair();
        assert_eq!(
            KeyUpdate::new(s, &negotiated(0x2F6), KeyOperation::UpdateAllKeys, [0; 2]).err(),
            Some(SpdmError::MissingCapabilities { missing: cap::KEY_UPD })
        );
    }

    #[test]
    fn key_update_rejects_starting_with_verify_new_key() {
        let (s, _, _) = pair();
        assert_eq!(
            KeyUpdate::new(s, &negotiated(0x42F6), KeyOperation::VerifyNewKey, [0; 2]).err(),
            Some(SpdmError::BadKeyOperation(3))
        );
    }

    #[test]
    fn update_all_keys_moves_both_directions_and_the_old_keys_open_nothing() {
        let (old, _, old_rsp) = pair();
        let (ku, mut dreq, mut drsp) = run(KeyOperation::UpdateAllKeys, |_, _| {});
        assert!(ku.done(), "{:?}", ku.error());
        let mut s = ku.into_session().unwrap();
        let mut obj = [0u8; 64];
        let n = s.seal(b"TDISP after update", &mut obj).unwrap();
        assert_eq!(open(&mut dreq, &obj[..n]), b"TDISP after update");
        let mut stale = old.request.clone();
        let mut buf = [0u8; 64];
        assert_eq!(secured::open(&mut stale, ID, &obj[..n], &mut buf), Err(SecuredError::Authentication));
        let reply = seal(&mut drsp, b"reply");
        let mut stale = old_rsp.clone();
        stale.sequence = 2;
        assert_eq!(secured::open(&mut stale, ID, &reply, &mut buf), Err(SecuredError::Authentication));
        assert_eq!(s.open(&reply, &mut buf).unwrap(), b"reply");
    }

    #[test]
    fn update_key_moves_only_the_request_direction() {
        let (old, _, _) = pair();
        let (ku, _, _) = run(KeyOperation::UpdateKey, |_, _| {});
        assert!(ku.done(), "{:?}", ku.error());
        let s = ku.into_session().unwrap();
        assert_ne!(s.request.key, old.request.key);
        assert_eq!(s.response.key, old.response.key);
        assert_eq!(s.response.sequence, 2, "two ACKs under the unchanged response key");
        assert_eq!((s.request.sequence), 1, "VerifyNewKey was the new key's first message");
    }

    #[test]
    fn each_bad_ack_fails_and_drops_the_session() {
        type Tamper = fn(&mut Vec<u8>);
        let cases: [(u8, Tamper, SpdmError); 7] = [
            (1, |a| a[3] ^= 1, SpdmError::KeyUpdateAckMismatch { operation: 2, tag: 0xA0 }),
            (1, |a| a[2] = 1, SpdmError::KeyUpdateAckMismatch { operation: 1, tag: 0xA1 }),
            (1, |a| a[1] = 0x6C, SpdmError::UnexpectedResponse { got: 0x6C, want: 0x69 }),
            (1, |a| a[0] = 0x13, SpdmError::WrongVersion { got: 0x13, want: 0x12 }),
            (1, |a| a.push(0), SpdmError::BadLength { code: 0x69, len: 5 }),
            (1, |a| a.truncate(3), SpdmError::BadLength { code: 0x69, len: 3 }),
            (2, |a| a[3] = 0, SpdmError::KeyUpdateAckMismatch { operation: 3, tag: 0 }),
        ];
        for (at, f, want) in cases {
            let (ku, _, _) = run(KeyOperation::UpdateAllKeys, |n, a| {
                if n == at {
                    f(a)
                }
            });
            assert_eq!(ku.error(), Some(want));
            assert!(ku.session().is_none(), "{want:?}: no session kept");
            assert!(ku.into_session().is_none());
        }
    }

    #[test]
    fn an_ack_to_update_all_keys_under_the_old_response_key_is_refused() {
        let (s, mut dreq, mut drsp) = pair();
        let mut ku = KeyUpdate::new(s, &negotiated(0x42F6), KeyOperation::UpdateAllKeys, [1, 2]).unwrap();
        open(&mut dreq, &sent(ku.start()));
        let ack = seal(&mut drsp, &[0x12, 0x69, 2, 1]);
        assert_eq!(ku.step(&ack), Action::Failed(SpdmError::Secured(SecuredError::Authentication)));
        assert!(ku.session().is_none());
    }

    #[test]
    fn a_device_error_under_the_old_key_is_reported_as_such() {
        let (s, mut dreq, mut drsp) = pair();
        let mut ku = KeyUpdate::new(s, &negotiated(0x42F6), KeyOperation::UpdateAllKeys, [1, 2]).unwrap();
        open(&mut dreq, &sent(ku.start()));
        let err = seal(&mut drsp, &[0x12, 0x7F, 0x07, 0xE9]);
        assert_eq!(ku.step(&err), Action::Failed(SpdmError::Responder { code: 7, data: 0xE9 }));
    }

    #[test]
    fn no_answer_fails_the_exchange() {
        let (s, _, _) = pair();
        let mut ku = KeyUpdate::new(s, &negotiated(0x42F6), KeyOperation::UpdateKey, [1, 2]).unwrap();
        sent(ku.start());
        assert!(matches!(ku.step(&[]), Action::Failed(SpdmError::Secured(SecuredError::Doe(_)))));
        assert!(matches!(ku.step(&[]), Action::Failed(_)), "stays failed");
        assert!(ku.session().is_none());
    }
}
