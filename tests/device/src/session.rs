//! SPDM sessions (DSP0274 §10.17-10.18, DSP0277 over DOE): KEY_EXCHANGE in the clear, then FINISH
//! under the handshake keys, then the application phase carrying END_SESSION and the PCI-SIG
//! VENDOR_DEFINED messages (TDISP, IDE_KM). The key schedule and the secured-message codec are the
//! TSM's own (`tsm::spdm::keys`, `tsm::spdm::secured`): they are shared transport code, while the
//! responder's decisions and transcripts are written here.
//!
//! ```text
//! TH_sig = VCA ‖ H(chain) ‖ KEY_EXCHANGE ‖ KEY_EXCHANGE_RSP up to Signature
//! TH1    = TH_sig ‖ Signature → handshake keys, ResponderVerifyData
//! TH2    = TH1 ‖ ResponderVerifyData ‖ FINISH ‖ FINISH_RSP → application keys
//! ```

use tsm::doe::{self, ObjectType};
use tsm::spdm::code;
use tsm::spdm::keys::{DirectionKeys, HandshakeKeys, Schedule};
use tsm::spdm::secured;
use tsm::spdm::sig::Context;
use tsm::spdm::suite::Transcript;

use crate::faults::Faults;
use crate::spdm::{
    error, error_code, le16, le32, FLAG_HBEAT, MAX_SESSIONS, VENDOR_DEFINED_REQUEST, VENDOR_DEFINED_RESPONSE,
};
use crate::Device;

/// The keys a session currently uses.
#[derive(Clone, Debug)]
pub(crate) enum Phase {
    /// KEY_EXCHANGE_RSP sent; only FINISH is expected. `th` is TH1 ‖ ResponderVerifyData.
    Handshake { keys: Box<HandshakeKeys>, th: Transcript },
    /// FINISH_RSP sent: application keys. After KEY_UPDATE(UpdateKey / UpdateAllKeys) and until
    /// VerifyNewKey, `previous_request` keeps the old request key (a requester whose ACK was lost
    /// resends the same update under it) and `pending` the update's (operation, tag).
    Application {
        request: DirectionKeys,
        response: DirectionKeys,
        previous_request: Option<DirectionKeys>,
        pending: Option<(u8, u8)>,
    },
}

/// The HeartbeatPeriod (seconds) offered to a requester with HBEAT_CAP.
pub(crate) const HEARTBEAT_PERIOD_S: u8 = 60;

/// One session.
#[derive(Clone, Debug)]
pub(crate) struct Session {
    pub(crate) version: u8,
    pub(crate) phase: Phase,
    /// The unsigned measurement exchanges in this session since its last signed one.
    pub(crate) l1: Vec<u8>,
}

impl Session {
    fn keys(&mut self) -> (&mut DirectionKeys, &mut DirectionKeys) {
        match &mut self.phase {
            Phase::Handshake { keys, .. } => {
                let k = keys.as_mut();
                (&mut k.request, &mut k.response)
            }
            Phase::Application { request, response, .. } => (request, response),
        }
    }
}

/// What happens to the session once its response is sealed.
#[derive(Clone, Debug)]
pub(crate) enum After {
    Stay,
    /// FINISH succeeded: switch to these keys.
    Application(Box<(DirectionKeys, DirectionKeys)>),
    /// END_SESSION or a failed FINISH: the session is gone.
    End,
}

/// The secured-message versions of DSP0277 the device speaks, best first.
const SECURED_VERSIONS: [u16; 2] = [0x1200, 0x1100];

/// The version-selection element of opaque data format 1 (DSP0274 Table 99 / DSP0277 §8.2).
fn version_selection(version: u16) -> [u8; 12] {
    let v = version.to_le_bytes();
    [1, 0, 0, 0, 0, 0, 4, 0, 1, 0, v[0], v[1]]
}

/// The best secured-message version the requester's opaque data (format 1) offers.
fn select_secured_version(o: &[u8]) -> Option<u16> {
    if o.len() < 4 {
        return None;
    }
    let mut at = 4;
    let mut offered = Vec::new();
    for _ in 0..o[0] {
        let head = o.get(at..at + 2)?;
        at += 2 + usize::from(head[1]);
        let len = usize::from(le16(o.get(at..at + 2)?, 0));
        at += 2;
        let data = o.get(at..at + len)?;
        at = (at + len).div_ceil(4) * 4;
        if head[0] == 0 && data.len() >= 3 && data[0] == 1 && data[1] == 1 {
            let n = usize::from(data[2]);
            let list = data.get(3..3 + 2 * n)?;
            offered.extend(list.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]]) & 0xFF00));
        }
    }
    SECURED_VERSIONS.into_iter().find(|v| offered.contains(v))
}

/// The requester's ECDHE public key, in the group of the device's suite.
enum Peer {
    P256(p256::PublicKey),
    P384(p384::PublicKey),
}

/// The device's ephemeral secret.
enum Ephemeral {
    P256(p256::NonZeroScalar),
    P384(p384::NonZeroScalar),
}

impl Peer {
    /// `X ‖ Y` of 64 (secp256r1) or 96 (secp384r1) bytes, if a point of the curve.
    fn new(xy: &[u8]) -> Option<Peer> {
        let mut point = vec![0x04];
        point.extend_from_slice(xy);
        match xy.len() {
            64 => p256::PublicKey::from_sec1_bytes(&point).ok().map(Peer::P256),
            96 => p384::PublicKey::from_sec1_bytes(&point).ok().map(Peer::P384),
            _ => None,
        }
    }

    /// A fresh ephemeral secret in the same group, and its `X ‖ Y`.
    fn ephemeral(&self, rng: &mut crate::rng::Rng) -> (Ephemeral, Vec<u8>) {
        match self {
            Peer::P256(_) => {
                use p256::elliptic_curve::sec1::ToSec1Point;
                let s = rng.scalar256();
                let p = p256::PublicKey::from_secret_scalar(&s).to_uncompressed_point();
                (Ephemeral::P256(s), p[1..].to_vec())
            }
            Peer::P384(_) => {
                use p384::elliptic_curve::sec1::ToSec1Point;
                let s = rng.scalar();
                let p = p384::PublicKey::from_secret_scalar(&s).to_uncompressed_point();
                (Ephemeral::P384(s), p[1..].to_vec())
            }
        }
    }

    /// The ECDH shared secret.
    fn shared(&self, ephemeral: &Ephemeral) -> Vec<u8> {
        match (self, ephemeral) {
            (Peer::P256(p), Ephemeral::P256(s)) => {
                p256::ecdh::diffie_hellman(s, p.as_affine()).raw_secret_bytes().to_vec()
            }
            (Peer::P384(p), Ephemeral::P384(s)) => {
                p384::ecdh::diffie_hellman(s, p.as_affine()).raw_secret_bytes().to_vec()
            }
            // `ephemeral` always comes from this peer's `ephemeral`.
            _ => Vec::new(),
        }
    }
}

impl Device {
    /// KEY_EXCHANGE → KEY_EXCHANGE_RSP (in the clear; handshake not in the clear, no mutual auth).
    pub(crate) fn key_exchange(&mut self, m: &[u8]) -> Result<Vec<u8>, Vec<u8>> {
        let ver = self.conn.version;
        let invalid = || error(ver, error_code::INVALID_REQUEST, 0);
        if self.conn.requester_flags & 0x200 == 0 {
            return Err(error(ver, error_code::UNSUPPORTED_REQUEST, code::KEY_EXCHANGE));
        }
        let suite = self.identity.suite;
        let d = suite.dhe.exchange_bytes();
        let fixed = 40 + d + 2;
        if m.len() < fixed {
            return Err(invalid());
        }
        let msg = m.get(..fixed + usize::from(le16(m, 40 + d))).ok_or_else(invalid)?;
        let (summary, slot) = (msg[2], msg[3]);
        if slot != 0 || !matches!(summary, 0 | 1 | 0xFF) {
            return Err(invalid());
        }
        let secured_version = select_secured_version(&msg[fixed..]).ok_or_else(invalid)?;
        let peer = Peer::new(&msg[40..40 + d]).ok_or_else(invalid)?;
        if self.sessions.len() >= MAX_SESSIONS {
            return Err(error(ver, error_code::SESSION_LIMIT_EXCEEDED, 0));
        }
        let req_id = u32::from(le16(msg, 4));
        let rsp_id = (0..=0xFFFFu32)
            .rev()
            .find(|r| !self.sessions.contains_key(&(req_id | r << 16)))
            .ok_or_else(|| error(ver, error_code::SESSION_LIMIT_EXCEEDED, 0))?;
        let id = req_id | rsp_id << 16;

        let (ephemeral, public) = peer.ephemeral(&mut self.rng);
        // HeartbeatPeriod: only where both sides announced HBEAT_CAP (0 = no heartbeat). The
        // device does not end a silent session on its own: the spec lets it, not requires it.
        let period = if self.conn.requester_flags & FLAG_HBEAT != 0 { HEARTBEAT_PERIOD_S } else { 0 };
        let mut r = vec![ver, code::KEY_EXCHANGE_RSP, period, 0];
        r.extend_from_slice(&(rsp_id as u16).to_le_bytes());
        r.extend_from_slice(&[0, 0]); // no mutual authentication, no requester slot
        r.extend_from_slice(&self.rng.bytes::<32>());
        r.extend_from_slice(&public);
        if summary != 0 {
            r.extend_from_slice(&self.measurement_summary(summary));
        }
        let opaque = version_selection(secured_version);
        // The overlong-length fault announces 4 opaque bytes more than there are.
        let extra = if self.overlong(crate::faults::Reply::KeyExchangeRsp) { 4 } else { 0 };
        r.extend_from_slice(&(opaque.len() as u16 + extra).to_le_bytes());
        r.extend_from_slice(&opaque);
        let mut th = self.transcript();
        th.update(&self.conn.vca);
        th.update(&self.identity.chain_digest);
        th.update(msg);
        th.update(&r);
        let signature = self.sign(Context::KeyExchangeRsp, &th.current())?;
        r.extend_from_slice(&signature);
        th.update(&signature);
        let th1 = th.current();
        let secret = peer.shared(&ephemeral);
        let keys = HandshakeKeys::derive(Schedule::new(ver, &suite), &secret, &th1);
        let verify = keys.verify_data(false, &th1);
        r.extend_from_slice(&verify);
        th.update(verify);
        // ALL CHECKS PASSED
        self.sessions
            .insert(id, Session { version: ver, phase: Phase::Handshake { keys: Box::new(keys), th }, l1: Vec::new() });
        Ok(r)
    }

    /// A secured DOE object (type 2) → the secured reply, or nothing for an unknown session (as
    /// libspdm: the message cannot be authenticated, so it is not answered).
    pub(crate) fn secured(&mut self, object: &[u8], payload: &[u8]) -> Option<Vec<u8>> {
        let id = le32(payload.get(..4)?, 0);
        let session = self.sessions.get_mut(&id)?;
        let version = session.version;
        let opened = open_request(session, id, object);
        if let Some((msg, _)) = &opened {
            if self.ends_session_on(msg) {
                // The end-session-on fault: the device forgets the session and answers nothing.
                self.end_session(id);
                return None;
            }
        }
        let (mut reply, after) = match opened {
            Some((msg, Key::Current)) => {
                let (reply, after) = match self.respond_if_ready(Some(id), &msg) {
                    Some((reply, after)) => (reply, after.unwrap_or(After::Stay)),
                    None => match self.chunk_get(Some(id), &msg) {
                        Some(chunk) => (chunk, After::Stay),
                        None => {
                            let before = self.later_armed().then(|| Box::new(self.clone()));
                            let (reply, after) = self.in_session(id, version, &msg);
                            let (reply, after) = self.later(Some(id), &msg, (reply, Some(after)), before);
                            (reply, after.unwrap_or(After::Stay))
                        }
                    },
                };
                (self.chunked(Some(id), reply), after)
            }
            Some((msg, Key::Previous)) => self.key_update_retry(id, version, &msg),
            // DSP0277 / libspdm: ERROR(DecryptError) under the session's keys, then the session ends.
            None => (error(version, error_code::DECRYPT_ERROR, 0), After::End),
        };
        let faults = self.config.faults.clone();
        let dropped = Faults::hits(faults.drop_response, &reply);
        if Faults::hits(faults.truncate, &reply) {
            reply.truncate(crate::faults::truncated_len(reply.len()));
        }
        // Signed messages (MEASUREMENTS inside the session) got their bad length field before
        // signing (spdm.rs), as in the clear.
        let signed = matches!(crate::faults::Reply::of(&reply), Some(crate::faults::Reply::Measurements));
        let overlong = Faults::hits(faults.overlong_length, &reply) && !signed;
        let in_record = overlong && !crate::faults::overlong_field(&mut reply);
        // The wrong-session-id fault names the session with the other half of the id changed.
        let seal_id = if faults.wrong_session_id { id ^ 0x0001_0000 } else { id };
        let session = self.sessions.get_mut(&id)?;
        let (_, response_keys) = session.keys();
        let mut out = vec![0u8; doe::object_len(secured::HEADER_BYTES + 2 + reply.len() + secured::TAG_BYTES)];
        let mut sealed = secured::seal(response_keys, seal_id, &reply, &mut out).ok();
        let corrupt = Faults::hits(faults.corrupt, &reply);
        if in_record && out.len() >= 14 {
            // The secured message's Length field announces 4 bytes more than the record holds.
            let len = u16::from_le_bytes([out[12], out[13]]).wrapping_add(4);
            out[12..14].copy_from_slice(&len.to_le_bytes());
        }
        if dropped {
            sealed = None;
        }
        if corrupt {
            // One bit of the ciphertext (its first byte, past the DOE and secured headers).
            crate::faults::flip_bit(&mut out, doe::HEADER_BYTES + secured::HEADER_BYTES);
        }
        match after {
            After::Stay => {}
            After::Application(keys) => {
                let (request, response) = *keys;
                session.phase = Phase::Application { request, response, previous_request: None, pending: None };
            }
            After::End => self.end_session(id),
        }
        sealed.map(|n| {
            out.truncate(n);
            out
        })
    }

    fn in_session(&mut self, id: u32, version: u8, m: &[u8]) -> (Vec<u8>, After) {
        if m.len() < 4 {
            return (error(version, error_code::INVALID_REQUEST, 0), After::Stay);
        }
        if m[0] != version {
            return (error(version, error_code::VERSION_MISMATCH, 0), After::Stay);
        }
        let handshake = matches!(self.sessions.get(&id).map(|s| &s.phase), Some(Phase::Handshake { .. }));
        if m[1] != code::GET_MEASUREMENTS {
            // L1 covers consecutive measurement exchanges only.
            if let Some(s) = self.sessions.get_mut(&id) {
                s.l1.clear();
            }
        }
        match (m[1], handshake) {
            (code::FINISH, true) => self.finish(id, version, m),
            (code::END_SESSION, false) => {
                if m.len() != 4 {
                    return (error(version, error_code::INVALID_REQUEST, 0), After::Stay);
                }
                (vec![version, code::END_SESSION_ACK, 0, 0], After::End)
            }
            (VENDOR_DEFINED_REQUEST, false) => (self.vendor_defined(id, version, m), After::Stay),
            (code::KEY_UPDATE, false) => (self.key_update(id, version, m), After::Stay),
            (code::GET_MEASUREMENTS, false) if self.config.session_measurements_error.is_some() => {
                let code = self.config.session_measurements_error.unwrap_or(error_code::UNSUPPORTED_REQUEST);
                let data = if code == error_code::UNSUPPORTED_REQUEST { code::GET_MEASUREMENTS } else { 0 };
                (error(version, code, data), After::Stay)
            }
            (code::GET_MEASUREMENTS, false) => match self.get_measurements(m, Some(id)) {
                Ok(r) | Err(r) => (r, After::Stay),
            },
            (code::HEARTBEAT, false) => (self.heartbeat(version, m), After::Stay),
            (
                code::GET_VERSION
                | code::GET_CAPABILITIES
                | code::NEGOTIATE_ALGORITHMS
                | code::GET_DIGESTS
                | code::GET_CERTIFICATE
                | code::CHALLENGE
                | code::GET_MEASUREMENTS
                | code::KEY_EXCHANGE
                | code::FINISH
                | code::END_SESSION
                | code::KEY_UPDATE
                | code::HEARTBEAT
                | VENDOR_DEFINED_REQUEST,
                _,
            ) => (error(version, error_code::UNEXPECTED_REQUEST, 0), After::Stay),
            (other, _) => (error(version, error_code::UNSUPPORTED_REQUEST, other), After::Stay),
        }
    }

    fn finish(&mut self, id: u32, version: u8, m: &[u8]) -> (Vec<u8>, After) {
        let Some(Phase::Handshake { keys, th }) = self.sessions.get(&id).map(|s| &s.phase) else {
            return (error(version, error_code::UNEXPECTED_REQUEST, 0), After::Stay);
        };
        // No mutual authentication: no signature, exactly header ‖ RequesterVerifyData.
        if m.len() != 4 + self.identity.suite.hash.bytes() || m[2] & 1 != 0 {
            return (error(version, error_code::INVALID_REQUEST, 0), After::Stay);
        }
        let mut th_finish = th.clone();
        th_finish.update(&m[..4]);
        let expected = keys.verify_data(true, &th_finish.finalize());
        if m[4..] != expected[..] {
            return (error(version, error_code::DECRYPT_ERROR, 0), After::End);
        }
        let reply = vec![version, code::FINISH_RSP, 0, 0];
        let mut th2 = th.clone();
        th2.update(m);
        th2.update(&reply);
        let app = keys.application(&th2.finalize());
        (reply, After::Application(Box::new((app.request, app.response))))
    }

    /// KEY_UPDATE (DSP0274 KEY_UPDATE request and KEY_UPDATE_ACK response) under the current request key. UpdateKey moves the request
    /// key; UpdateAllKeys moves both, the response key before the ACK is sealed, so the ACK
    /// travels under the new response key; VerifyNewKey (which must come under the new request
    /// key, after an update) drops the old request key.
    /// HEARTBEAT (DSP0274 1.2 §10.19): only where both sides announced HBEAT_CAP.
    fn heartbeat(&self, version: u8, m: &[u8]) -> Vec<u8> {
        if self.conn.requester_flags & FLAG_HBEAT == 0 {
            return error(version, error_code::UNSUPPORTED_REQUEST, code::HEARTBEAT);
        }
        if m.len() != 4 {
            return error(version, error_code::INVALID_REQUEST, 0);
        }
        vec![version, code::HEARTBEAT_ACK, 0, 0]
    }

    fn key_update(&mut self, id: u32, version: u8, m: &[u8]) -> Vec<u8> {
        if self.conn.requester_flags & REQ_FLAG_KEY_UPD == 0 {
            return error(version, error_code::UNSUPPORTED_REQUEST, code::KEY_UPDATE);
        }
        let Some(Phase::Application { request, response, previous_request, pending }) =
            self.sessions.get_mut(&id).map(|s| &mut s.phase)
        else {
            return error(version, error_code::UNEXPECTED_REQUEST, 0);
        };
        if m.len() != 4 {
            return error(version, error_code::INVALID_REQUEST, 0);
        }
        let (operation, tag) = (m[2], m[3]);
        match (operation, *pending) {
            (KEY_UPDATE_KEY | KEY_UPDATE_ALL_KEYS, None) => {
                // ALL CHECKS PASSED
                *previous_request = Some(request.clone());
                *request = request.updated();
                if operation == KEY_UPDATE_ALL_KEYS {
                    *response = response.updated();
                }
                *pending = Some((operation, tag));
            }
            (KEY_UPDATE_VERIFY_NEW_KEY, Some(_)) => {
                *previous_request = None;
                *pending = None;
            }
            // An update while one is unverified, VerifyNewKey without one, or no operation.
            _ => return error(version, error_code::INVALID_REQUEST, 0),
        }
        vec![version, code::KEY_UPDATE_ACK, operation, tag]
    }

    /// A message that opened only under the old request key: the requester did not get the ACK
    /// of its update and resends it (same operation and tag), which is answered again without
    /// moving the keys further. Anything else under the old key ends the session.
    fn key_update_retry(&mut self, id: u32, version: u8, m: &[u8]) -> (Vec<u8>, After) {
        let pending = match self.sessions.get(&id).map(|s| &s.phase) {
            Some(Phase::Application { pending: Some(p), .. }) => *p,
            _ => return (error(version, error_code::DECRYPT_ERROR, 0), After::End),
        };
        if m.len() == 4 && m[0] == version && m[1] == code::KEY_UPDATE && (m[2], m[3]) == pending {
            return (vec![version, code::KEY_UPDATE_ACK, m[2], m[3]], After::Stay);
        }
        (error(version, error_code::DECRYPT_ERROR, 0), After::End)
    }

    /// VENDOR_DEFINED_REQUEST for PCI-SIG (StandardID 3, VendorID 0x0001) → the protocol's reply.
    fn vendor_defined(&mut self, id: u32, version: u8, m: &[u8]) -> Vec<u8> {
        if m.len() < 11 || le16(m, 4) != 3 || m[6] != 2 || m[7..9] != [1, 0] {
            return error(version, error_code::UNSUPPORTED_REQUEST, VENDOR_DEFINED_REQUEST);
        }
        let len = usize::from(le16(m, 9));
        if len == 0 || m.len() != 11 + len {
            return error(version, error_code::INVALID_REQUEST, 0);
        }
        let (protocol, body) = (m[11], &m[12..]);
        let reply = match protocol {
            crate::tdisp::PROTOCOL_ID => self.tdisp(id, body),
            crate::idekm::PROTOCOL_ID => match self.idekm(id, body) {
                Ok(r) => r,
                Err(code) => {
                    let data = if code == error_code::UNSUPPORTED_REQUEST { VENDOR_DEFINED_REQUEST } else { 0 };
                    return error(version, code, data);
                }
            },
            _ => return error(version, error_code::UNSUPPORTED_REQUEST, VENDOR_DEFINED_REQUEST),
        };
        let mut r = vec![version, VENDOR_DEFINED_RESPONSE, 0, 0, 3, 0, 2, 1, 0];
        r.extend_from_slice(&((1 + reply.len()) as u16).to_le_bytes());
        r.push(protocol);
        r.extend_from_slice(&reply);
        r
    }

    /// Whether the end-session-on fault fires on this request.
    fn ends_session_on(&self, request: &[u8]) -> bool {
        let slot = self.config.faults.end_session_on;
        slot.is_some() && slot == crate::faults::answer_to(request)
    }

    /// Ends session `id`: its keys are forgotten, its IDE keys become invalid, and the TDIs it
    /// locked go to ERROR (TDISP §11.4.5).
    pub(crate) fn end_session(&mut self, id: u32) {
        self.sessions.remove(&id);
        self.session_ended(id);
    }

    /// Ends every session (GET_VERSION resets the connection).
    pub(crate) fn end_all_sessions(&mut self) {
        let ids: Vec<u32> = self.sessions.keys().copied().collect();
        for id in ids {
            self.end_session(id);
        }
    }
}

const REQ_FLAG_KEY_UPD: u32 = 0x4000;
const KEY_UPDATE_KEY: u8 = 1;
const KEY_UPDATE_ALL_KEYS: u8 = 2;
const KEY_UPDATE_VERIFY_NEW_KEY: u8 = 3;

/// Which request key opened a message.
enum Key {
    Current,
    /// The key before an unverified KEY_UPDATE.
    Previous,
}

/// Opens a request of `session`: under the current request key, or else under the key before an
/// unverified KEY_UPDATE. A message that opens under the current key after an update shows the
/// requester moved: the old key is dropped. `None` if neither key opens it.
fn open_request(session: &mut Session, id: u32, object: &[u8]) -> Option<(Vec<u8>, Key)> {
    let mut plain = vec![0u8; object.len()];
    let (request_keys, _) = session.keys();
    if let Ok(msg) = secured::open(request_keys, id, object, &mut plain) {
        let msg = msg.to_vec();
        if let Phase::Application { previous_request, .. } = &mut session.phase {
            *previous_request = None;
        }
        return Some((msg, Key::Current));
    }
    if let Phase::Application { previous_request: Some(old), .. } = &mut session.phase {
        if let Ok(msg) = secured::open(old, id, object, &mut plain) {
            return Some((msg.to_vec(), Key::Previous));
        }
    }
    None
}

/// Frames an SPDM message as a plain DOE object.
pub(crate) fn plain_object(ty: ObjectType, message: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; doe::object_len(message.len())];
    match doe::encode(ty, message, &mut out) {
        Ok(n) => out.truncate(n),
        Err(_) => out.clear(),
    }
    out
}
