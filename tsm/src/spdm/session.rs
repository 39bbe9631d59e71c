//! KEY_EXCHANGE and FINISH (DSP0274 §10.17, §10.18), sans-IO: an SPDM session with ECDHE
//! (secp256r1 or secp384r1, as ALGORITHMS selected),
//! the responder authenticated by its leaf key and by ResponderVerifyData, FINISH sent under the
//! handshake keys, and the application keys derived from TH2. No mutual authentication, no
//! heartbeat, handshake not in the clear, secured-message versions 1.1 and 1.2 offered through
//! opaque data format 1 (1.3 is left out so no AEAD-limit element is needed).
//!
//! ```text
//! TH_sig = VCA ‖ H(chain) ‖ KEY_EXCHANGE ‖ KEY_EXCHANGE_RSP (up to Signature)
//! TH1    = … ‖ Signature                       → handshake keys, ResponderVerifyData
//! FINISH: RequesterVerifyData = HMAC(req finished key, H(TH1 ‖ ResponderVerifyData ‖ FINISH header))
//! TH2    = TH1 ‖ ResponderVerifyData ‖ FINISH ‖ FINISH_RSP → application keys
//! ```

use crate::doe::{self, Action, ObjectType};
use crate::spdm::keys::{DirectionKeys, HandshakeKeys, Schedule};
use crate::spdm::later::{self, Later, Retries};
use crate::spdm::negotiate::{code, exact, le16, response_payload, Negotiated, SpdmError};
use crate::spdm::secured::{self, SecuredError};
use crate::spdm::sig::{self, Context, LeafKey};
use crate::spdm::suite::{Dhe, Secret, Suite, Transcript, MAX_EXCHANGE, MAX_HASH};

/// The TSM's half of every SessionID.
pub const REQ_SESSION_ID: u16 = 0xFFFF;
/// Opaque data format 1 offering secured-message versions 1.1 and 1.2.
pub const OFFERED_OPAQUE: [u8; 16] = [1, 0, 0, 0, 0, 0, 7, 0, 1, 1, 2, 0x00, 0x11, 0x00, 0x12, 0];
/// Bytes of KEY_EXCHANGE as the TSM sends it with secp384r1 (secp256r1: 32 fewer).
pub const KEY_EXCHANGE_BYTES: usize = 40 + MAX_EXCHANGE + 2 + OFFERED_OPAQUE.len();

/// The TSM's ephemeral ECDHE secret in the negotiated group.
#[derive(Clone, Debug)]
enum Ephemeral {
    P256(p256::NonZeroScalar),
    P384(p384::NonZeroScalar),
}

impl Ephemeral {
    /// The scalar from the TSM's entropy (the first 32 bytes for secp256r1).
    fn new(dhe: Dhe, bytes: &[u8; 48]) -> Result<Ephemeral, SpdmError> {
        let bad = |_| SpdmError::BadExchangeData;
        match dhe {
            Dhe::Secp256r1 => p256::NonZeroScalar::try_from(&bytes[..32]).map(Ephemeral::P256).map_err(bad),
            Dhe::Secp384r1 => p384::NonZeroScalar::try_from(&bytes[..]).map(Ephemeral::P384).map_err(bad),
        }
    }

    /// ExchangeData: the public point `X ‖ Y` into `out`; returns its length.
    fn public(&self, out: &mut [u8; MAX_EXCHANGE]) -> usize {
        match self {
            Ephemeral::P256(s) => {
                use p256::elliptic_curve::sec1::ToSec1Point;
                let p = p256::PublicKey::from_secret_scalar(s).to_uncompressed_point();
                out[..64].copy_from_slice(&p[1..]);
                64
            }
            Ephemeral::P384(s) => {
                use p384::elliptic_curve::sec1::ToSec1Point;
                let p = p384::PublicKey::from_secret_scalar(s).to_uncompressed_point();
                out[..96].copy_from_slice(&p[1..]);
                96
            }
        }
    }

    /// The ECDH shared secret (the X coordinate) with the device's `X ‖ Y`.
    fn shared(&self, peer: &[u8]) -> Result<Secret, SpdmError> {
        let mut point = [0u8; 1 + MAX_EXCHANGE];
        point[0] = 0x04;
        point[1..1 + peer.len()].copy_from_slice(peer);
        let point = &point[..1 + peer.len()];
        let bad = |_| SpdmError::BadExchangeData;
        match self {
            Ephemeral::P256(s) => {
                let peer = p256::PublicKey::from_sec1_bytes(point).map_err(bad)?;
                Ok(Secret::new(p256::ecdh::diffie_hellman(s, peer.as_affine()).raw_secret_bytes()))
            }
            Ephemeral::P384(s) => {
                let peer = p384::PublicKey::from_sec1_bytes(point).map_err(bad)?;
                Ok(Secret::new(p384::ecdh::diffie_hellman(s, peer.as_affine()).raw_secret_bytes()))
            }
        }
    }
}

/// An established session: its id and the application keys of both directions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// SessionID: the TSM's half in bits 15:0, the device's in bits 31:16.
    pub id: u32,
    /// Keys of what the TSM sends.
    pub request: DirectionKeys,
    /// Keys of what the device sends.
    pub response: DirectionKeys,
    version: u8,
    /// HeartbeatPeriod of KEY_EXCHANGE_RSP (seconds; 0: no heartbeat).
    heartbeat_period: u8,
}

impl Session {
    /// A session from its id, the application keys of both directions and the SPDM version
    /// (what FINISH_RSP establishes; also how a test stands in for the device's side).
    pub fn new(id: u32, request: DirectionKeys, response: DirectionKeys, version: u8) -> Session {
        Session { id, request, response, version, heartbeat_period: 0 }
    }

    /// The HeartbeatPeriod the device asked for in KEY_EXCHANGE_RSP, in seconds (DSP0274
    /// §10.19: the requester sends HEARTBEAT at least that often, or the device may end the
    /// session); 0 when no heartbeat was asked for.
    pub fn heartbeat_period(&self) -> u8 {
        self.heartbeat_period
    }

    /// Encrypts an SPDM message for the device into a DOE object; returns its length.
    ///
    /// # Errors
    /// [`SpdmError::Secured`].
    pub fn seal(&mut self, message: &[u8], out: &mut [u8]) -> Result<usize, SpdmError> {
        secured::seal(&mut self.request, self.id, message, out).map_err(SpdmError::Secured)
    }

    /// Decrypts a DOE object from the device.
    ///
    /// # Errors
    /// [`SpdmError::Secured`]; the session is unchanged.
    pub fn open<'o>(&mut self, object: &[u8], out: &'o mut [u8]) -> Result<&'o [u8], SpdmError> {
        secured::open(&mut self.response, self.id, object, out).map_err(SpdmError::Secured)
    }

    /// END_SESSION, sealed with the application keys, into `out`; returns the object's length.
    ///
    /// # Errors
    /// [`SpdmError::Secured`].
    pub fn end(&mut self, out: &mut [u8]) -> Result<usize, SpdmError> {
        let msg = [self.version, code::END_SESSION, 0, 0];
        self.seal(&msg, out)
    }

    /// Checks the device's END_SESSION_ACK; after it the session's keys are no longer used.
    ///
    /// # Errors
    /// [`SpdmError::Secured`], the device's ERROR, another response or size.
    pub fn check_end_ack(&mut self, object: &[u8]) -> Result<(), SpdmError> {
        let mut buf = [0u8; 16];
        let version = self.version;
        let msg = self.open(object, &mut buf)?;
        if msg.len() < 4 {
            return Err(SpdmError::BadLength { code: code::END_SESSION_ACK, len: msg.len() });
        }
        if msg[0] != version {
            return Err(SpdmError::WrongVersion { got: msg[0], want: version });
        }
        if msg[1] == code::ERROR {
            return Err(SpdmError::Responder { code: msg[2], data: msg[3] });
        }
        if msg[1] != code::END_SESSION_ACK {
            return Err(SpdmError::UnexpectedResponse { got: msg[1], want: code::END_SESSION_ACK });
        }
        if msg.len() != 4 {
            return Err(SpdmError::BadLength { code: code::END_SESSION_ACK, len: msg.len() });
        }
        Ok(())
    }

    /// The SPDM version the session's messages carry.
    pub fn version(&self) -> u8 {
        self.version
    }

    /// Both directions move to their next keys (what a completed UpdateAllKeys leaves); the
    /// exchange itself is [`crate::spdm::key_update::KeyUpdate`].
    pub fn update_keys(&mut self) {
        self.request = self.request.updated();
        self.response = self.response.updated();
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Idle,
    WaitKeyExchangeRsp,
    WaitFinishRsp,
    Done,
    Failed(SpdmError),
}

/// The KEY_EXCHANGE / FINISH handshake.
#[derive(Clone, Debug)]
pub struct KeyExchange {
    version: u8,
    suite: Suite,
    key: LeafKey,
    ephemeral: Ephemeral,
    random: [u8; 32],
    th: Transcript,
    state: State,
    handshake: Option<HandshakeKeys>,
    session_id: u32,
    session: Option<Session>,
    /// The requester offered HBEAT_CAP and the responder announced it: a HeartbeatPeriod is
    /// accepted.
    heartbeat: bool,
    heartbeat_period: u8,
    /// FINISH as sealed (plaintext), to send again after ERROR Busy.
    finish: [u8; 4 + MAX_HASH],
    finish_len: usize,
    /// Busy / ResponseNotReady answers to FINISH so far.
    retries: Retries,
    /// Microseconds to wait before the request just made (RESPOND_IF_READY), else 0.
    wait_us: u64,
    /// The device's DataTransferSize: KEY_EXCHANGE must fit it (the TSM sends no CHUNK_SEND).
    device_transfer_size: u32,
    out: [u8; 256],
}

impl KeyExchange {
    /// A handshake after negotiation (`vca`) and certificate retrieval (`chain_hash`, the chain
    /// in the negotiated hash; the leaf `key`), with the TSM's ephemeral secret and random data
    /// drawn from its entropy.
    ///
    /// # Errors
    /// [`SpdmError::BadExchangeData`] if `ephemeral` is not a valid scalar of the negotiated
    /// group (draw again).
    pub fn new(
        negotiated: &Negotiated,
        vca: &[u8],
        chain_hash: &[u8],
        key: LeafKey,
        ephemeral: [u8; 48],
        random: [u8; 32],
    ) -> Result<KeyExchange, SpdmError> {
        let suite = negotiated.suite;
        let scalar = Ephemeral::new(suite.dhe, &ephemeral)?;
        let mut th = Transcript::new(suite.hash);
        th.update(vca);
        th.update(chain_hash);
        Ok(KeyExchange {
            version: negotiated.version,
            suite,
            key,
            ephemeral: scalar,
            random,
            th,
            state: State::Idle,
            handshake: None,
            session_id: 0,
            session: None,
            heartbeat: false,
            heartbeat_period: 0,
            finish: [0; 4 + MAX_HASH],
            finish_len: 0,
            retries: Retries::new(),
            wait_us: 0,
            device_transfer_size: negotiated.data_transfer_size,
            out: [0; 256],
        })
    }

    /// Accepts a HeartbeatPeriod in KEY_EXCHANGE_RSP: both sides announced HBEAT_CAP. Without
    /// it a period is refused as [`SpdmError::UnrequestedFeature`].
    pub fn accept_heartbeat(&mut self) {
        self.heartbeat = true;
    }

    fn fail(&mut self, e: SpdmError) -> Action<'_, SpdmError> {
        self.state = State::Failed(e);
        Action::Failed(e)
    }

    /// KEY_EXCHANGE, in the clear.
    pub fn start(&mut self) -> Action<'_, SpdmError> {
        let mut m = [0u8; KEY_EXCHANGE_BYTES];
        m[0] = self.version;
        m[1] = code::KEY_EXCHANGE;
        m[4..6].copy_from_slice(&REQ_SESSION_ID.to_le_bytes());
        m[8..40].copy_from_slice(&self.random);
        let mut public = [0u8; MAX_EXCHANGE];
        let d = self.ephemeral.public(&mut public);
        m[40..40 + d].copy_from_slice(&public[..d]);
        m[40 + d..42 + d].copy_from_slice(&(OFFERED_OPAQUE.len() as u16).to_le_bytes());
        let end = 42 + d + OFFERED_OPAQUE.len();
        m[42 + d..end].copy_from_slice(&OFFERED_OPAQUE);
        // The TSM's largest request: a device whose DataTransferSize cannot take it would need
        // CHUNK_SEND, which the TSM does not send.
        if end > self.device_transfer_size as usize {
            return self.fail(SpdmError::RequestTooLarge { len: end, max: self.device_transfer_size });
        }
        let m = &m[..end];
        self.th.update(m);
        match doe::encode(ObjectType::Spdm, m, &mut self.out) {
            Ok(n) => {
                self.state = State::WaitKeyExchangeRsp;
                Action::Send(&self.out[..n])
            }
            Err(e) => self.fail(SpdmError::Doe(e)),
        }
    }

    /// Consumes KEY_EXCHANGE_RSP (then sends FINISH) or FINISH_RSP (then done).
    pub fn step(&mut self, response: &[u8]) -> Action<'_, SpdmError> {
        self.wait_us = 0;
        let result = match self.state {
            State::WaitKeyExchangeRsp => self.on_key_exchange_rsp(response),
            State::WaitFinishRsp => self.on_finish_rsp(response),
            State::Done => return Action::Done,
            State::Failed(e) => return Action::Failed(e),
            State::Idle => Err(SpdmError::NotWaiting),
        };
        match result {
            Err(e) => self.fail(e),
            Ok(Some(n)) => {
                self.state = State::WaitFinishRsp;
                Action::Send(&self.out[..n])
            }
            Ok(None) => {
                self.state = State::Done;
                Action::Done
            }
        }
    }

    /// Checks KEY_EXCHANGE_RSP and builds FINISH; returns the FINISH object's length.
    fn on_key_exchange_rsp(&mut self, response: &[u8]) -> Result<Option<usize>, SpdmError> {
        let p = response_payload(response, self.version, code::KEY_EXCHANGE_RSP)?;
        let d = self.suite.dhe.exchange_bytes();
        let h = self.suite.hash.bytes();
        let opaque_at = 40 + d;
        if p.len() < opaque_at + 2 {
            return Err(SpdmError::BadLength { code: code::KEY_EXCHANGE_RSP, len: p.len() });
        }
        let opaque_len = usize::from(le16(p, opaque_at));
        let sig_at = opaque_at + 2 + opaque_len;
        let verify_at = sig_at + self.suite.asym.signature_bytes();
        let msg = exact(p, verify_at + h, code::KEY_EXCHANGE_RSP)?;
        if (msg[2] != 0 && !self.heartbeat) || msg[6] != 0 {
            return Err(SpdmError::UnrequestedFeature);
        }
        self.heartbeat_period = msg[2];
        check_opaque(&msg[opaque_at + 2..sig_at])?;
        // TH_sig, then the signature.
        let mut th = self.th.clone();
        th.update(&msg[..sig_at]);
        let th_sig = th.current();
        sig::verify(self.version, Context::KeyExchangeRsp, &th_sig, &self.key, &msg[sig_at..verify_at])
            .map_err(SpdmError::Signature)?;
        // TH1, the handshake keys, and the device's proof that it derived them.
        th.update(&msg[sig_at..verify_at]);
        let th1 = th.current();
        let shared = self.ephemeral.shared(&msg[40..40 + d])?;
        let hs = HandshakeKeys::derive(Schedule::new(self.version, &self.suite), &shared, &th1);
        if !constant_time_eq(&hs.verify_data(false, &th1), &msg[verify_at..]) {
            return Err(SpdmError::VerifyDataMismatch);
        }
        th.update(&msg[verify_at..]);
        // FINISH: header ‖ RequesterVerifyData over TH1 ‖ ResponderVerifyData ‖ FINISH header.
        let mut finish = [0u8; 4 + MAX_HASH];
        finish[0] = self.version;
        finish[1] = code::FINISH;
        th.update(&finish[..4]);
        let th_finish = th.current();
        finish[4..4 + h].copy_from_slice(&hs.verify_data(true, &th_finish));
        let finish = &finish[..4 + h];
        th.update(&finish[4..]);
        self.session_id = u32::from(REQ_SESSION_ID) | u32::from(le16(msg, 4)) << 16;
        let mut request = hs.request.clone();
        let n = secured::seal(&mut request, self.session_id, finish, &mut self.out).map_err(SpdmError::Secured)?;
        // ALL CHECKS PASSED: commit.
        self.th = th;
        let mut hs = hs;
        hs.request = request;
        self.handshake = Some(hs);
        self.finish[..finish.len()].copy_from_slice(finish);
        self.finish_len = finish.len();
        Ok(Some(n))
    }

    fn on_finish_rsp(&mut self, response: &[u8]) -> Result<Option<usize>, SpdmError> {
        let hs = self.handshake.as_ref().ok_or(SpdmError::NotWaiting)?;
        let mut keys = hs.response.clone();
        let mut buf = [0u8; 64];
        let msg = secured::open(&mut keys, self.session_id, response, &mut buf).map_err(SpdmError::Secured)?;
        // ERROR Busy / ResponseNotReady, sealed under the handshake keys: FINISH again, or
        // RESPOND_IF_READY, sealed with the next request sequence number. TH is left alone: it
        // holds FINISH once, and the FINISH_RSP that finally comes.
        let finish = &self.finish[..self.finish_len];
        let l = later::read(finish, msg)?;
        if l != Later::Answer {
            let mut retries = self.retries;
            retries.again(finish, l)?;
            let (again, wait_us) = match l {
                Later::NotReady { token, wait_us } => (later::respond_if_ready(finish, token), wait_us),
                _ => ([0; 4], 0),
            };
            let plain = if matches!(l, Later::NotReady { .. }) { &again[..] } else { finish };
            let mut request = hs.request.clone();
            let n = secured::seal(&mut request, self.session_id, plain, &mut self.out).map_err(SpdmError::Secured)?;
            // ALL CHECKS PASSED: both directions moved by one message.
            let hs = self.handshake.as_mut().ok_or(SpdmError::NotWaiting)?;
            hs.request = request;
            hs.response = keys;
            self.retries = retries;
            self.wait_us = wait_us;
            return Ok(Some(n));
        }
        if msg.len() < 4 {
            return Err(SpdmError::BadLength { code: code::FINISH_RSP, len: msg.len() });
        }
        if msg[0] != self.version {
            return Err(SpdmError::WrongVersion { got: msg[0], want: self.version });
        }
        if msg[1] == code::ERROR {
            return Err(SpdmError::Responder { code: msg[2], data: msg[3] });
        }
        if msg[1] != code::FINISH_RSP {
            return Err(SpdmError::UnexpectedResponse { got: msg[1], want: code::FINISH_RSP });
        }
        if msg.len() != 4 {
            return Err(SpdmError::BadLength { code: code::FINISH_RSP, len: msg.len() });
        }
        let mut th = self.th.clone();
        th.update(msg);
        let th2 = th.finalize();
        let app = hs.application(&th2);
        self.session = Some(Session {
            id: self.session_id,
            request: app.request,
            response: app.response,
            version: self.version,
            heartbeat_period: self.heartbeat_period,
        });
        Ok(None)
    }

    /// Microseconds the request just made should wait before it goes: the responder's time
    /// after ERROR ResponseNotReady to FINISH (for RESPOND_IF_READY), else 0.
    pub fn wait_us(&self) -> u64 {
        self.wait_us
    }

    /// The session, once established.
    pub fn session(&self) -> Option<&Session> {
        self.session.as_ref()
    }

    /// The error the handshake stopped on.
    pub fn error(&self) -> Option<SpdmError> {
        match self.state {
            State::Failed(e) => Some(e),
            _ => None,
        }
    }
}

/// Equality of two MACs in time that does not depend on where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The responder's opaque data must select version 1.1 or 1.2 (format 1, one DMTF element).
fn check_opaque(o: &[u8]) -> Result<(), SpdmError> {
    let bad = SpdmError::BadOpaqueData;
    if o.len() < 12 || !o.len().is_multiple_of(4) || o[0] != 1 || o[4] != 0 || o[5] != 0 {
        return Err(bad);
    }
    let len = usize::from(le16(o, 6));
    if len != 4 || o[8] != 1 || o[9] != 0 {
        return Err(bad);
    }
    match le16(o, 10) {
        0x1100 | 0x1200 => {}
        _ => return Err(bad),
    }
    if o[12..].iter().any(|&b| b != 0) {
        return Err(bad);
    }
    Ok(())
}

impl From<SecuredError> for SpdmError {
    fn from(e: SecuredError) -> Self {
        SpdmError::Secured(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spdm::keys::ApplicationKeys;
    use p384::ecdsa::signature::Signer;
    use p384::ecdsa::{Signature, SigningKey, VerifyingKey};
    use p384::elliptic_curve::sec1::ToSec1Point;
    use p384::{NonZeroScalar, PublicKey};
    use sha2::{Digest, Sha384};

    extern crate std;
    use std::vec::Vec;

    const VCA: &[u8] = b"VCA of this connection";
    const CHAIN: [u8; 48] = [0xCE; 48];
    const OPAQUE_1_2: [u8; 12] = [1, 0, 0, 0, 0, 0, 4, 0, 1, 0, 0x00, 0x12];

    fn negotiated() -> Negotiated {
        Negotiated::p384(0x12, 0x2F6, 0x1000, 0x1000)
    }

    fn wrap(msg: &[u8]) -> Vec<u8> {
        let mut out = std::vec![0u8; doe::object_len(msg.len())];
        doe::encode(ObjectType::Spdm, msg, &mut out).unwrap();
        out
    }

    /// The device side, built on the same key schedule and secured-message code (which have tests
    /// of their own): this checks the handshake's transcripts, signatures, verify data and flow.
    /// Interoperability with another SPDM stack is for the tests against a real responder.
    struct Device {
        sign: SigningKey,
        eph: NonZeroScalar,
        th: Sha384,
        hs: Option<HandshakeKeys>,
        app: Option<ApplicationKeys>,
        id: u32,
    }

    impl Device {
        fn new() -> Device {
            Device {
                sign: SigningKey::from_slice(&[0x61; 48]).unwrap(),
                eph: NonZeroScalar::try_from(&[0x62u8; 48][..]).unwrap(),
                th: Sha384::new_with_prefix(VCA).chain_update(CHAIN),
                hs: None,
                app: None,
                id: 0,
            }
        }

        fn key_exchange_rsp(&mut self, request: &[u8], tamper: &dyn Fn(&mut Vec<u8>), signer: &SigningKey) -> Vec<u8> {
            let req = &doe::decode_as(request, ObjectType::Spdm).unwrap()[..KEY_EXCHANGE_BYTES];
            self.th.update(req);
            let mut m = std::vec![0x12, code::KEY_EXCHANGE_RSP, 0, 0, 0xFE, 0xFF, 0, 0];
            m.extend_from_slice(&[0x77; 32]);
            m.extend_from_slice(&PublicKey::from_secret_scalar(&self.eph).to_uncompressed_point()[1..]);
            m.extend_from_slice(&(OPAQUE_1_2.len() as u16).to_le_bytes());
            m.extend_from_slice(&OPAQUE_1_2);
            tamper(&mut m);
            self.th.update(&m);
            let th_sig: [u8; 48] = self.th.clone().finalize().into();
            let mut signed = [0u8; 148];
            signed[..100].copy_from_slice(&sig::prefix(0x12, Context::KeyExchangeRsp).unwrap());
            signed[100..].copy_from_slice(&th_sig);
            let s: Signature = signer.sign(&signed);
            m.extend_from_slice(&s.to_bytes());
            self.th.update(s.to_bytes());
            let th1: [u8; 48] = self.th.clone().finalize().into();
            let mut point = [0u8; 97];
            point[0] = 4;
            point[1..].copy_from_slice(&req[40..136]);
            let peer = PublicKey::from_sec1_bytes(&point).unwrap();
            let shared = p384::ecdh::diffie_hellman(self.eph, peer.as_affine());
            let mut secret = [0u8; 48];
            secret.copy_from_slice(shared.raw_secret_bytes());
            let hs = HandshakeKeys::derive(Schedule::p384(0x12), &secret, &th1);
            let rvd = hs.verify_data(false, &th1);
            m.extend_from_slice(&rvd);
            self.th.update(rvd);
            self.hs = Some(hs);
            self.id = 0xFFFE_FFFF;
            m
        }

        fn finish_rsp(&mut self, finish: &[u8]) -> Vec<u8> {
            let mut hs = self.hs.take().unwrap();
            let mut buf = [0u8; 128];
            let msg = secured::open(&mut hs.request, self.id, finish, &mut buf).unwrap().to_vec();
            assert_eq!(msg.len(), 52);
            self.th.update(&msg[..4]);
            let want = hs.verify_data(true, &self.th.clone().finalize());
            assert_eq!(msg[4..], want[..], "RequesterVerifyData");
            self.th.update(&msg[4..]);
            let rsp = [0x12, code::FINISH_RSP, 0, 0];
            self.th.update(rsp);
            let mut out = std::vec![0u8; 128];
            let n = secured::seal(&mut hs.response, self.id, &rsp, &mut out).unwrap();
            out.truncate(n);
            self.app = Some(hs.application(&self.th.clone().finalize()));
            out
        }
    }

    fn handshake(
        tamper: &dyn Fn(&mut Vec<u8>),
        after: &dyn Fn(&mut Vec<u8>),
        signer: Option<SigningKey>,
    ) -> (KeyExchange, Device) {
        let mut dev = Device::new();
        let signer = signer.unwrap_or_else(|| dev.sign.clone());
        let vk = LeafKey::P384(VerifyingKey::from(&dev.sign));
        let mut kx = KeyExchange::new(&negotiated(), VCA, &CHAIN, vk, [0x55; 48], [0x66; 32]).unwrap();
        let request = match kx.start() {
            Action::Send(r) => r.to_vec(),
            other => panic!("{other:?}"),
        };
        let mut rsp = dev.key_exchange_rsp(&request, tamper, &signer);
        after(&mut rsp);
        let finish = match kx.step(&wrap(&rsp)) {
            Action::Send(f) => f.to_vec(),
            _ => return (kx, dev),
        };
        let finish_rsp = dev.finish_rsp(&finish);
        let _ = kx.step(&finish_rsp);
        (kx, dev)
    }

    #[test]
    fn a_session_is_established_and_carries_messages_both_ways() {
        let no = &|_: &mut Vec<u8>| {};
        let (kx, dev) = handshake(no, no, None);
        assert_eq!(kx.error(), None);
        let mut s = kx.session().unwrap().clone();
        assert_eq!(s.id, 0xFFFE_FFFF);
        let mut app = dev.app.unwrap();
        let mut obj = [0u8; 128];
        let n = s.seal(b"TDISP GET_VERSION", &mut obj).unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(secured::open(&mut app.request, s.id, &obj[..n], &mut buf).unwrap(), b"TDISP GET_VERSION");
        let n = secured::seal(&mut app.response, s.id, b"TDISP VERSION", &mut obj).unwrap();
        assert_eq!(s.open(&obj[..n], &mut buf).unwrap(), b"TDISP VERSION");
        // END_SESSION and its acknowledgement travel under the application keys.
        let mut end = s.clone();
        let n = end.end(&mut obj).unwrap();
        let mut dev_app = app.clone();
        assert_eq!(secured::open(&mut dev_app.request, s.id, &obj[..n], &mut buf).unwrap(), &[0x12, 0xEC, 0, 0]);
        let n = secured::seal(&mut dev_app.response, s.id, &[0x12, 0x6C, 0, 0], &mut obj).unwrap();
        assert_eq!(end.check_end_ack(&obj[..n]), Ok(()));
        let n = secured::seal(&mut dev_app.response, s.id, &[0x12, 0x7F, 0x06, 0], &mut obj).unwrap();
        assert_eq!(end.check_end_ack(&obj[..n]), Err(SpdmError::Responder { code: 6, data: 0 }));
        // After KEY_UPDATE on both sides the old keys no longer open anything.
        s.update_keys();
        let n = s.seal(b"after update", &mut obj).unwrap();
        assert!(secured::open(&mut app.request, s.id, &obj[..n], &mut buf).is_err());
        let mut upd = app.request.updated();
        assert_eq!(secured::open(&mut upd, s.id, &obj[..n], &mut buf).unwrap(), b"after update");
    }

    #[test]
    fn each_defect_of_the_device_fails_the_handshake() {
        let no = &|_: &mut Vec<u8>| {};
        let stranger = SigningKey::from_slice(&[0x13; 48]).unwrap();
        assert_eq!(handshake(no, no, Some(stranger)).0.error(), Some(SpdmError::Signature(sig::SigError::Mismatch)));
        let (kx, _) = handshake(
            no,
            &|m| {
                let n = m.len();
                m[n - 1] ^= 1
            },
            None,
        );
        assert_eq!(kx.error(), Some(SpdmError::VerifyDataMismatch));
        assert!(kx.session().is_none());
        assert_eq!(handshake(&|m| m[149] = 0x13, no, None).0.error(), Some(SpdmError::BadOpaqueData));
        assert_eq!(handshake(&|m| m[2] = 0xF0, no, None).0.error(), Some(SpdmError::UnrequestedFeature));
        assert_eq!(handshake(&|m| m[6] = 1, no, None).0.error(), Some(SpdmError::UnrequestedFeature));
        assert_eq!(handshake(&|m| m[60] ^= 1, no, None).0.error(), Some(SpdmError::BadExchangeData));
        assert!(matches!(handshake(&|m| m.truncate(100), no, None).0.error(), Some(SpdmError::BadLength { .. })));
    }

    #[test]
    fn a_forged_finish_rsp_is_refused() {
        let dev = Device::new();
        let vk = LeafKey::P384(VerifyingKey::from(&dev.sign));
        let mut dev = dev;
        let mut kx = KeyExchange::new(&negotiated(), VCA, &CHAIN, vk, [0x55; 48], [0x66; 32]).unwrap();
        let request = match kx.start() {
            Action::Send(r) => r.to_vec(),
            other => panic!("{other:?}"),
        };
        let signer = dev.sign.clone();
        let rsp = dev.key_exchange_rsp(&request, &|_| {}, &signer);
        assert!(matches!(kx.step(&wrap(&rsp)), Action::Send(_)));
        // A FINISH_RSP sealed with a key the device does not share with the TSM.
        let mut wrong = DirectionKeys::from_secret(Schedule::p384(0x12), &[1; 48]);
        let mut out = [0u8; 64];
        let n = secured::seal(&mut wrong, 0xFFFE_FFFF, &[0x12, code::FINISH_RSP, 0, 0], &mut out).unwrap();
        assert!(matches!(kx.step(&out[..n]), Action::Failed(SpdmError::Secured(SecuredError::Authentication))));
        assert!(kx.session().is_none());
    }

    #[test]
    fn a_device_too_small_for_key_exchange_is_refused_by_name() {
        let vk = VerifyingKey::from(&SigningKey::from_slice(&[0x61; 48]).unwrap());
        let mut n = negotiated();
        n.data_transfer_size = 100;
        let mut kx = KeyExchange::new(&n, VCA, &CHAIN, vk.into(), [4; 48], [5; 32]).unwrap();
        let want = SpdmError::RequestTooLarge { len: 40 + 96 + 2 + OFFERED_OPAQUE.len(), max: 100 };
        assert_eq!(kx.start(), Action::Failed(want));
        assert_eq!(kx.error(), Some(want));
    }

    #[test]
    fn an_invalid_ephemeral_scalar_is_refused() {
        let vk = VerifyingKey::from(&SigningKey::from_slice(&[0x61; 48]).unwrap());
        assert_eq!(
            KeyExchange::new(&negotiated(), VCA, &CHAIN, vk.into(), [0; 48], [0; 32]).err(),
            Some(SpdmError::BadExchangeData)
        );
        assert!(
            KeyExchange::new(&negotiated(), VCA, &CHAIN, vk.into(), [0xFF; 48], [0; 32]).is_err(),
            "not below the order"
        );
    }
}
