//! A real conversation, recorded: the TSM's sans-IO requester (`tsm::doe`, `tsm::spdm`,
//! `tsm::tdisp`, `tsm::idekm`) against `tdisp-device` in process, every DOE object both ways.
//!
//! Randomness is fixed on both sides (the requester's nonces and ephemeral key here, the device's
//! seed in its default configuration), so [`recording`] gives the same bytes in every process:
//! a fuzz target replays a recorded answer sequence to a state machine built from the same
//! fixtures and reaches the same states, and a mutated answer is checked exactly where the real
//! one was.

use std::fmt::Debug;
use std::sync::OnceLock;

use tdisp_device::{Config, Device};
use tsm::doe::{Action, Discovery};
use tsm::spdm::cert::CertRetrieval;
use tsm::spdm::challenge::Challenge;
use tsm::spdm::connect::{Connect, ConnectRandom};
use tsm::spdm::key_update::{KeyOperation, KeyUpdate};
use tsm::spdm::meas::Measurements;
use tsm::spdm::session::{KeyExchange, Session};
use tsm::spdm::{Negotiated, Negotiation};
use tsm::tdisp::{self, InterfaceId, Request, Response};

/// A sans-IO exchange: `start`, then `step` with every answer.
pub trait Exchange {
    /// Why it fails.
    type Error: Debug + Copy;
    /// The first request.
    fn start(&mut self) -> Action<'_, Self::Error>;
    /// One answer in, the next action out.
    fn step(&mut self, answer: &[u8]) -> Action<'_, Self::Error>;
}

macro_rules! exchange {
    ($($t:ty => $e:ty),* $(,)?) => {$(
        impl Exchange for $t {
            type Error = $e;
            fn start(&mut self) -> Action<'_, $e> {
                <$t>::start(self)
            }
            fn step(&mut self, answer: &[u8]) -> Action<'_, $e> {
                <$t>::step(self, answer)
            }
        }
    )*};
}

exchange! {
    Discovery => tsm::doe::DoeError,
    Negotiation => tsm::spdm::SpdmError,
    CertRetrieval => tsm::spdm::SpdmError,
    Challenge => tsm::spdm::SpdmError,
    Measurements => tsm::spdm::SpdmError,
    KeyExchange => tsm::spdm::SpdmError,
    KeyUpdate => tsm::spdm::SpdmError,
    Connect => tsm::spdm::connect::ConnectError,
}

/// How a replay ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The exchange finished.
    Done,
    /// The exchange failed.
    Failed,
    /// The answers ran out first.
    Waiting,
}

/// Feeds `answers` to `x` from its start; checks the rules every exchange keeps whatever it is
/// told: a finished or failed exchange asks for nothing more, and a failed one never succeeds
/// later.
///
/// # Panics
/// When one of those rules breaks (a fuzzing finding).
pub fn replay<X: Exchange>(x: &mut X, answers: &[&[u8]]) -> Outcome {
    let mut outcome = match x.start() {
        Action::Send(_) => Outcome::Waiting,
        Action::Done => Outcome::Done,
        Action::Failed(_) => Outcome::Failed,
    };
    for a in answers {
        let next = match x.step(a) {
            Action::Send(_) => Outcome::Waiting,
            Action::Done => Outcome::Done,
            Action::Failed(_) => Outcome::Failed,
        };
        match (outcome, next) {
            (Outcome::Done | Outcome::Failed, Outcome::Waiting) => {
                panic!("a {outcome:?} exchange asked for another request")
            }
            (Outcome::Failed, Outcome::Done) => panic!("a failed exchange succeeded later"),
            _ => {}
        }
        if outcome != Outcome::Failed {
            outcome = next;
        }
    }
    outcome
}

/// The device behind a log of every object that went each way.
#[derive(Debug)]
pub struct Wire<'d> {
    /// The device.
    pub device: &'d mut Device,
    /// Requests, in order.
    pub requests: Vec<Vec<u8>>,
}

impl Wire<'_> {
    /// One object to the device, its answer back (empty: no answer).
    pub fn exchange(&mut self, request: &[u8]) -> Vec<u8> {
        self.requests.push(request.to_vec());
        self.device.handle(request).unwrap_or_default()
    }

    /// Runs `x` to its end; returns the answers it got. Panics if it does not succeed.
    pub fn drive<X: Exchange>(&mut self, x: &mut X) -> Vec<Vec<u8>> {
        let mut answers = Vec::new();
        let mut request = match x.start() {
            Action::Send(b) => b.to_vec(),
            other => panic!("start: {other:?}"),
        };
        loop {
            let answer = self.exchange(&request);
            answers.push(answer.clone());
            match x.step(&answer) {
                Action::Send(b) => request = b.to_vec(),
                Action::Done => return answers,
                Action::Failed(e) => panic!("the recorded conversation failed: {e:?}"),
            }
        }
    }

    /// One SPDM message through the session: the secured answer object and its plaintext.
    pub fn secured(&mut self, s: &mut Session, message: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let mut out = vec![0u8; 8192];
        let n = s.seal(message, &mut out).expect("seal");
        let answer = self.exchange(&out[..n]);
        let mut buf = vec![0u8; 8192];
        let plain = s.open(&answer, &mut buf).expect("a secured answer").to_vec();
        (answer, plain)
    }
}

/// The requester's fixed randomness.
pub const CHALLENGE_NONCE: [u8; 32] = [0x11; 32];
/// CHALLENGE's RequesterContext (SPDM 1.3).
pub const CHALLENGE_CONTEXT: [u8; 8] = [0x22; 8];
/// GET_MEASUREMENTS' nonce.
pub const MEAS_NONCE: [u8; 32] = [0x33; 32];
/// GET_MEASUREMENTS' RequesterContext (SPDM 1.3).
pub const MEAS_CONTEXT: [u8; 8] = [0x44; 8];
/// The ephemeral P-384 secret of KEY_EXCHANGE.
pub const EPHEMERAL: [u8; 48] = [0x55; 48];
/// KEY_EXCHANGE's random data.
pub const KE_RANDOM: [u8; 32] = [0x66; 32];
/// KEY_UPDATE's two tags.
pub const KU_TAGS: [u8; 2] = [0x07, 0x08];

/// The randomness of the whole-connection state machine.
pub fn connect_random() -> ConnectRandom {
    ConnectRandom {
        challenge_nonce: CHALLENGE_NONCE,
        measurement_nonce: MEAS_NONCE,
        context: CHALLENGE_CONTEXT,
        ephemeral: EPHEMERAL,
        random: KE_RANDOM,
    }
}

/// A TDISP response as the TSM decodes it: the request code it answers and the SPDM message.
#[derive(Clone, Debug)]
pub struct TdispAnswer {
    /// The request code (`tsm::tdisp::msg`).
    pub want: u8,
    /// The decrypted VENDOR_DEFINED_RESPONSE.
    pub message: Vec<u8>,
}

/// Everything recorded, and the state each exchange starts from.
#[derive(Clone, Debug)]
pub struct Recording {
    /// The device's configuration (the default one).
    pub config: Config,
    /// The device before the conversation (cloning it is cheap; making one is not).
    pub fresh_device: Device,
    /// The negotiated connection.
    pub negotiated: Negotiated,
    /// VCA: the exact bytes of the negotiation.
    pub vca: Vec<u8>,
    /// The transcript after the certificate exchange (what CHALLENGE continues).
    pub cert_transcript: tsm::spdm::suite::Transcript,
    /// SHA-384 of the certificate chain.
    pub chain_digest: Vec<u8>,
    /// The chain as SPDM carries it (header, root hash, certificates).
    pub chain: Vec<u8>,
    /// The leaf certificate's key.
    pub key: tsm::spdm::sig::LeafKey,
    /// The session right after KEY_EXCHANGE/FINISH: sequence numbers at 0.
    pub session: Session,
    /// The interface id of the device's TDI.
    pub iface: InterfaceId,
    /// Answers: DOE discovery.
    pub discovery: Vec<Vec<u8>>,
    /// Answers: VERSION, CAPABILITIES, ALGORITHMS.
    pub negotiate: Vec<Vec<u8>>,
    /// Answers: DIGESTS, CERTIFICATE portions.
    pub cert: Vec<Vec<u8>>,
    /// Answers: CHALLENGE_AUTH.
    pub challenge: Vec<Vec<u8>>,
    /// Answers: MEASUREMENTS.
    pub meas: Vec<Vec<u8>>,
    /// Answers: KEY_EXCHANGE_RSP, FINISH_RSP.
    pub key_exchange: Vec<Vec<u8>>,
    /// Answers: KEY_UPDATE_ACK for UpdateKey and for VerifyNewKey (secured).
    pub key_update: Vec<Vec<u8>>,
    /// Every secured answer of the session after the handshake, in order (IDE_KM, TDISP,
    /// END_SESSION_ACK); the first was sealed at sequence number 0.
    pub secured: Vec<Vec<u8>>,
    /// The TDISP answers, decrypted.
    pub tdisp: Vec<TdispAnswer>,
    /// The IDE_KM answers, decrypted (QUERY_RESP, then KP_ACK and K_GOSTOP_ACK).
    pub idekm: Vec<Vec<u8>>,
    /// The DEVICE_INTERFACE_REPORT, reassembled.
    pub interface_report: Vec<u8>,
    /// Every request object the TSM sent to the device, in order.
    pub requests: Vec<Vec<u8>>,
    /// Answers to the whole-connection state machine (`Connect`), from a fresh device.
    pub connect: Vec<Vec<u8>>,
    /// Requests of that connection.
    pub connect_requests: Vec<Vec<u8>>,
}

/// The recording, made once per process.
pub fn recording() -> &'static Recording {
    static R: OnceLock<Recording> = OnceLock::new();
    R.get_or_init(record)
}

/// An IDE_KM object in VENDOR_DEFINED_REQUEST (protocol id 0, PCI-SIG vendor id).
pub fn idekm_request(version: u8, object: &[u8]) -> Vec<u8> {
    let mut m = vec![version, 0xFE, 0, 0, 3, 0, 2, 1, 0];
    m.extend_from_slice(&u16::try_from(1 + object.len()).expect("short").to_le_bytes());
    m.push(0x00);
    m.extend_from_slice(object);
    m
}

fn record() -> Recording {
    let config = Config::default();
    let fresh_device = Device::new(config.clone()).expect("device");
    let mut device = fresh_device.clone();
    let mut w = Wire { device: &mut device, requests: Vec::new() };

    let discovery = w.drive(&mut Discovery::new());
    let mut n = Negotiation::new();
    let negotiate = w.drive(&mut n);
    let negotiated = n.negotiated().expect("negotiated");
    let vca = n.vca().to_vec();
    let version = negotiated.version;

    let mut c = Box::new(CertRetrieval::new(&negotiated, &vca));
    let cert = w.drive(&mut *c);
    let cert_transcript = c.transcript().clone();
    let parsed = c.chain().expect("chain");
    let (chain_digest, key) = (parsed.hash().to_vec(), *parsed.leaf_key());
    let chain = c.chain_bytes().expect("chain bytes").to_vec();

    let mut ch =
        Challenge::new(&negotiated, cert_transcript.clone(), &chain_digest, key, CHALLENGE_NONCE, CHALLENGE_CONTEXT);
    let challenge = w.drive(&mut ch);
    let mut m = Box::new(Measurements::new(&negotiated, &vca, key, MEAS_NONCE, MEAS_CONTEXT));
    let meas = w.drive(&mut *m);
    let mut k = Box::new(KeyExchange::new(&negotiated, &vca, &chain_digest, key, EPHEMERAL, KE_RANDOM).expect("ke"));
    let key_exchange = w.drive(&mut *k);
    let session = k.session().expect("session").clone();

    // KEY_UPDATE on a copy of the device and the session: the main conversation goes on at
    // sequence number 0, where the secured-message target's fixture starts.
    let key_update = {
        let mut d = w.device.clone();
        let mut side = Wire { device: &mut d, requests: Vec::new() };
        let mut u = KeyUpdate::new(session.clone(), &negotiated, KeyOperation::UpdateKey, KU_TAGS).expect("ku");
        side.drive(&mut u)
    };

    let mut s = session.clone();
    let mut secured = Vec::new();
    let mut idekm = Vec::new();
    let mut tdisp_answers = Vec::new();
    let (a, p) = w.secured(&mut s, &idekm_request(version, &[0x00, 0, 0]));
    secured.push(a);
    idekm.push(p);
    for ks in [0x00u8, 0x10, 0x20, 0x02, 0x12, 0x22] {
        let mut kp = vec![0x02, 0, 0, 1, 0, ks, 0];
        kp.extend_from_slice(&[ks ^ 0xA5; 32]);
        kp.extend_from_slice(&[0x01; 8]);
        for object in [kp, vec![0x04, 0, 0, 1, 0, ks, 0]] {
            let (a, p) = w.secured(&mut s, &idekm_request(version, &object));
            secured.push(a);
            idekm.push(p);
        }
    }

    let iface = InterfaceId(config.interfaces[0].function_id);
    let mut tdisp_call = |w: &mut Wire<'_>, s: &mut Session, r: &Request<'_>| -> Vec<u8> {
        let mut out = [0u8; 128];
        let n = tdisp::encode(version, iface, r, &mut out).expect("encode");
        let (a, p) = w.secured(s, &out[..n]);
        secured.push(a);
        tdisp_answers.push(TdispAnswer { want: r.code(), message: p.clone() });
        p
    };
    tdisp_call(&mut w, &mut s, &Request::GetVersion);
    tdisp_call(&mut w, &mut s, &Request::GetCapabilities);
    tdisp_call(&mut w, &mut s, &Request::GetState);
    let lock = Request::Lock { flags: 0x5, default_stream: 0, mmio_reporting_offset: 0xD000_0000, p2p_mask: 0 };
    let locked = tdisp_call(&mut w, &mut s, &lock);
    let Ok(Response::Locked { nonce }) = tdisp::decode(version, iface, lock.code(), &locked) else {
        panic!("LOCK_INTERFACE_RESPONSE")
    };
    let mut interface_report = Vec::new();
    loop {
        let r = Request::GetReport { offset: u16::try_from(interface_report.len()).expect("short"), length: 0x400 };
        let answer = tdisp_call(&mut w, &mut s, &r);
        let Ok(Response::ReportPortion { portion, remainder }) = tdisp::decode(version, iface, r.code(), &answer)
        else {
            panic!("DEVICE_INTERFACE_REPORT")
        };
        interface_report.extend_from_slice(portion);
        if remainder == 0 {
            break;
        }
    }
    tdisp_call(&mut w, &mut s, &Request::Start { nonce: &nonce });
    tdisp_call(&mut w, &mut s, &Request::GetState);
    tdisp_call(&mut w, &mut s, &Request::Stop);
    let (a, _) = w.secured(&mut s, &[version, 0xEC, 0, 0]);
    secured.push(a);
    let requests = std::mem::take(&mut w.requests);

    let mut fresh = fresh_device.clone();
    let mut cw = Wire { device: &mut fresh, requests: Vec::new() };
    let connect = cw.drive(&mut Connect::new(connect_random()));
    let connect_requests = cw.requests;

    Recording {
        config,
        fresh_device,
        negotiated,
        vca,
        cert_transcript,
        chain_digest,
        chain,
        key,
        session,
        iface,
        discovery,
        negotiate,
        cert,
        challenge,
        meas,
        key_exchange,
        key_update,
        secured,
        tdisp: tdisp_answers,
        idekm,
        interface_report,
        requests,
        connect,
        connect_requests,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recorded_answers_replay_to_the_end() {
        fn view(v: &[Vec<u8>]) -> Vec<&[u8]> {
            v.iter().map(Vec::as_slice).collect()
        }
        let r = recording();
        assert_eq!(replay(&mut Negotiation::new(), &view(&r.negotiate)), Outcome::Done);
        assert_eq!(replay(&mut CertRetrieval::new(&r.negotiated, &r.vca), &view(&r.cert)), Outcome::Done);
        let mut k = KeyExchange::new(&r.negotiated, &r.vca, &r.chain_digest, r.key, EPHEMERAL, KE_RANDOM).unwrap();
        assert_eq!(replay(&mut k, &view(&r.key_exchange)), Outcome::Done);
        assert_eq!(k.session(), Some(&r.session), "the same session in every process");
        assert_eq!(replay(&mut Connect::new(connect_random()), &view(&r.connect)), Outcome::Done);
        // A changed byte in a signed answer is caught where the real one was accepted.
        let mut bad = r.meas.clone();
        let last = bad[0].len() - 1;
        bad[0][last - 10] ^= 1;
        let mut m = Measurements::new(&r.negotiated, &r.vca, r.key, MEAS_NONCE, MEAS_CONTEXT);
        assert_eq!(replay(&mut m, &view(&bad)), Outcome::Failed);
    }
}
