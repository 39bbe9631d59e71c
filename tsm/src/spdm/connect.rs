//! The whole SPDM connection of a device, as one sans-IO state machine: DOE discovery,
//! negotiation, certificates, CHALLENGE, signed measurements, then KEY_EXCHANGE / FINISH. This is
//! what a resumable SPDM.CONNECT host call runs: each `step` returns the next object to move
//! through the mailbox, until the device is connected or the connection failed for a named
//! reason. The randomness (nonces, ephemeral key) comes in up front from the TSM's entropy.

use crate::doe::{self, Action, Discovery, DoeError, ObjectType};
use crate::spdm::cert::CertRetrieval;
use crate::spdm::chain::CertChain;
use crate::spdm::challenge::Challenge;
use crate::spdm::chunk::{self, ChunkGet};
use crate::spdm::later::{self, Later, Retries};
use crate::spdm::meas::Measurements;
use crate::spdm::negotiate::{cap, Negotiated, Negotiation, SpdmError};
use crate::spdm::session::{KeyExchange, Session};

/// The fresh values a connection consumes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectRandom {
    /// CHALLENGE nonce.
    pub challenge_nonce: [u8; 32],
    /// GET_MEASUREMENTS nonce.
    pub measurement_nonce: [u8; 32],
    /// SPDM 1.3 RequesterContext.
    pub context: [u8; 8],
    /// ECDHE ephemeral scalar (redraw if refused).
    pub ephemeral: [u8; 48],
    /// KEY_EXCHANGE random data.
    pub random: [u8; 32],
}

/// Where the connection stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Walking DOE discovery.
    Discovery,
    /// VERSION / CAPABILITIES / ALGORITHMS.
    Negotiation,
    /// DIGESTS / CERTIFICATE.
    Certificates,
    /// CHALLENGE.
    Challenge,
    /// Signed MEASUREMENTS.
    Measurements,
    /// KEY_EXCHANGE / FINISH.
    Session,
    /// Connected: the session is up and the evidence kept.
    Connected,
}

/// Why a connection failed, and at which stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectError {
    /// The DOE discovery walk failed.
    Discovery(DoeError),
    /// The mailbox does not offer SPDM and secured SPDM.
    NoSpdm,
    /// An SPDM exchange failed.
    Spdm(Stage, SpdmError),
}

pub use crate::spdm::later::MAX_RETRIES;

/// The connection.
#[derive(Clone, Debug)]
pub struct Connect {
    stage: Stage,
    random: ConnectRandom,
    discovery: Discovery,
    negotiation: Negotiation,
    certificates: Option<CertRetrieval>,
    challenge: Option<Challenge>,
    measurements: Option<Measurements>,
    key_exchange: Option<KeyExchange>,
    /// Take the signed measurements inside the session, after FINISH, rather than before
    /// KEY_EXCHANGE in the clear ([`Connect::measure_in_session`]).
    in_session: bool,
    /// HBEAT_CAP announced ([`Connect::offer_heartbeat`]).
    heartbeat: bool,
    failed: Option<ConnectError>,
    /// The last request of a stage (the DOE object), kept to resend it after Busy.
    request: [u8; 256],
    request_len: usize,
    /// Busy / ResponseNotReady answers to the current request so far.
    retries: Retries,
    /// A large response being taken in chunks (ERROR LargeResponse, then CHUNK_GET).
    chunk: Option<ChunkGet>,
    /// Microseconds to wait before the request just made (RESPOND_IF_READY), else 0.
    wait_us: u64,
    out: [u8; 256],
}

/// What [`Connect::chunks`] made of an answer.
enum Chunked {
    /// Nothing to do with chunks: the answer is the stage's.
    No,
    /// The next CHUNK_GET is in `out`.
    Send(usize),
    /// The last chunk came: the whole response is in `Connect::chunk`.
    Whole,
}

/// What one step produced: an object to send (its length in `out`), completion, or failure.
enum Next {
    Send(usize),
    Done,
    Failed(ConnectError),
}

fn copy_out<E>(out: &mut [u8; 256], action: Action<'_, E>, fail: impl FnOnce(E) -> ConnectError) -> Next {
    match action {
        Action::Send(b) if b.len() <= out.len() => {
            out[..b.len()].copy_from_slice(b);
            Next::Send(b.len())
        }
        Action::Send(b) => Next::Failed(ConnectError::Discovery(DoeError::TooLarge { needed: b.len() })),
        Action::Done => Next::Done,
        Action::Failed(e) => Next::Failed(fail(e)),
    }
}

impl Connect {
    /// A connection that has not started.
    pub fn new(random: ConnectRandom) -> Connect {
        Connect {
            stage: Stage::Discovery,
            random,
            discovery: Discovery::new(),
            negotiation: Negotiation::new(),
            certificates: None,
            challenge: None,
            measurements: None,
            key_exchange: None,
            in_session: false,
            heartbeat: false,
            failed: None,
            request: [0; 256],
            request_len: 0,
            retries: Retries::new(),
            chunk: None,
            wait_us: 0,
            out: [0; 256],
        }
    }

    /// Leaves GET_MEASUREMENTS out of the connection: it ends with the session, and the caller
    /// takes the signed measurements inside it ([`Connect::session_measurements`]), as TDISP
    /// wants a device measured after KEY_EXCHANGE. Call before [`Connect::start`].
    pub fn measure_in_session(&mut self) {
        self.in_session = true;
    }

    /// Announces HBEAT_CAP: a device that also announces it may ask for a HeartbeatPeriod in
    /// KEY_EXCHANGE_RSP, which the session then carries ([`Session::heartbeat_period`]). Call
    /// before [`Connect::start`].
    pub fn offer_heartbeat(&mut self) {
        self.heartbeat = true;
        self.negotiation.offer_heartbeat();
    }

    /// True if the measurements are taken inside the session ([`Connect::measure_in_session`]).
    pub fn measures_in_session(&self) -> bool {
        self.in_session
    }

    /// The signed measurement exchange the connection still owes once connected, to run inside
    /// its session: the connection's nonce, context and VCA, the chain's leaf key. `None`
    /// unless connected and measuring in the session.
    pub fn session_measurements(&self) -> Option<Measurements> {
        if !self.in_session || self.stage != Stage::Connected || self.failed.is_some() {
            return None;
        }
        let n = self.negotiation.negotiated()?;
        let key = *self.certificates.as_ref()?.chain()?.leaf_key();
        let r = self.random;
        Some(Measurements::new(&n, self.negotiation.vca(), key, r.measurement_nonce, r.context))
    }

    /// Where the connection stands.
    pub fn stage(&self) -> Stage {
        self.stage
    }

    /// The reason it failed, if it did.
    pub fn error(&self) -> Option<ConnectError> {
        self.failed
    }

    /// The first object to send.
    pub fn start(&mut self) -> Action<'_, ConnectError> {
        let next = copy_out(&mut self.out, self.discovery.start(), ConnectError::Discovery);
        self.finish(next)
    }

    /// Consumes the device's answer to the last object.
    pub fn step(&mut self, response: &[u8]) -> Action<'_, ConnectError> {
        if let Some(e) = self.failed {
            return Action::Failed(e);
        }
        let stage = self.stage;
        let spdm = move |e| ConnectError::Spdm(stage, e);
        self.wait_us = 0;
        match self.later(response) {
            Ok(None) => {}
            Ok(Some(n)) => return self.finish(Next::Send(n)),
            Err(e) => return self.finish(Next::Failed(spdm(e))),
        }
        self.retries.reset();
        let mut whole = match self.chunks(response) {
            Ok(Chunked::No) => None,
            Ok(Chunked::Send(n)) => return self.finish(Next::Send(n)),
            Ok(Chunked::Whole) => self.chunk.take(),
            Err(e) => return self.finish(Next::Failed(spdm(e))),
        };
        let response = match whole.as_mut() {
            Some(c) => c.object().unwrap_or(&[]),
            None => response,
        };
        let next = match self.stage {
            Stage::Discovery => copy_out(&mut self.out, self.discovery.step(response), ConnectError::Discovery),
            Stage::Negotiation => copy_out(&mut self.out, self.negotiation.step(response), spdm),
            Stage::Certificates => match self.certificates.as_mut() {
                Some(c) => copy_out(&mut self.out, c.step(response), spdm),
                None => Next::Failed(spdm(SpdmError::NotWaiting)),
            },
            Stage::Challenge => match self.challenge.as_mut() {
                Some(c) => copy_out(&mut self.out, c.step(response), spdm),
                None => Next::Failed(spdm(SpdmError::NotWaiting)),
            },
            Stage::Measurements => match self.measurements.as_mut() {
                Some(m) => copy_out(&mut self.out, m.step(response), spdm),
                None => Next::Failed(spdm(SpdmError::NotWaiting)),
            },
            Stage::Session => match self.key_exchange.as_mut() {
                Some(k) => copy_out(&mut self.out, k.step(response), spdm),
                None => Next::Failed(spdm(SpdmError::NotWaiting)),
            },
            Stage::Connected => Next::Done,
        };
        self.finish(next)
    }

    /// Busy and ResponseNotReady, the answers that ask the requester to come back
    /// ([`crate::spdm::later`]): `Ok(Some(n))` = send `out[..n]` (the request again after Busy,
    /// RESPOND_IF_READY after ResponseNotReady); `Ok(None)` = the answer is for the stage. The
    /// stages never see these ERRORs, so their transcripts hold only the request and its final
    /// response, as the spec has them. Answers in the secured session (FINISH_RSP) are the
    /// session stage's to read (`KeyExchange` does the same under the handshake keys).
    ///
    /// # Errors
    /// ResponseNotReady for another request than the one outstanding, or more than
    /// [`MAX_RETRIES`] of them in a row.
    fn later(&mut self, response: &[u8]) -> Result<Option<usize>, SpdmError> {
        if self.stage == Stage::Discovery || self.request_len == 0 {
            return Ok(None);
        }
        let Ok(p) = doe::decode_as(response, ObjectType::Spdm) else { return Ok(None) };
        let Ok(request) = doe::decode_as(&self.request[..self.request_len], ObjectType::Spdm) else { return Ok(None) };
        let l = later::read(request, p)?;
        self.retries.again(request, l)?;
        match l {
            Later::Answer => Ok(None),
            Later::Busy => {
                let n = self.request_len;
                self.out[..n].copy_from_slice(&self.request[..n]);
                Ok(Some(n))
            }
            Later::NotReady { token, wait_us } => {
                let again = later::respond_if_ready(request, token);
                let n = doe::encode(ObjectType::Spdm, &again, &mut self.out)?;
                self.wait_us = wait_us;
                Ok(Some(n))
            }
        }
    }

    /// Large responses (DSP0274 1.2 §10.22, [`crate::spdm::chunk`]): an ERROR LargeResponse to
    /// the stage's request starts CHUNK_GET, and each CHUNK_RESPONSE asks for the next chunk
    /// until the last, when the stage gets the whole response as one object. Busy and
    /// ResponseNotReady to a CHUNK_GET were handled before, as for any request.
    ///
    /// # Errors
    /// A LargeResponse without CHUNK_CAP on both sides (or before 1.2); any refusal of a
    /// CHUNK_RESPONSE ([`ChunkGet::step`]).
    fn chunks(&mut self, response: &[u8]) -> Result<Chunked, SpdmError> {
        if let Some(c) = self.chunk.as_mut() {
            let answer = doe::decode_as(response, ObjectType::Spdm)?;
            if c.step(answer)? {
                return Ok(Chunked::Whole);
            }
            let next = c.request();
            return Ok(Chunked::Send(doe::encode(ObjectType::Spdm, &next, &mut self.out)?));
        }
        let Some(n) = self.negotiation.negotiated() else { return Ok(Chunked::No) };
        let Ok(answer) = doe::decode_as(response, ObjectType::Spdm) else { return Ok(Chunked::No) };
        let Some(handle) = chunk::large_response(n.version, answer) else { return Ok(Chunked::No) };
        if !n.chunking() {
            return Err(SpdmError::UnexpectedLargeResponse);
        }
        let c = self.chunk.insert(ChunkGet::new(n.version, handle));
        let first = c.request();
        Ok(Chunked::Send(doe::encode(ObjectType::Spdm, &first, &mut self.out)?))
    }

    /// Moves to the next stage when one finishes, starting it; turns the result into an action.
    fn finish(&mut self, mut next: Next) -> Action<'_, ConnectError> {
        while let Next::Done = next {
            if self.stage == Stage::Connected {
                break;
            }
            next = self.advance();
        }
        if let Next::Send(n) = next {
            // A RESPOND_IF_READY is not the request to resend after Busy.
            let respond_if_ready = self.out.get(9) == Some(&later::RESPOND_IF_READY) && self.out.get(2) == Some(&1);
            if !respond_if_ready {
                self.request[..n].copy_from_slice(&self.out[..n]);
                self.request_len = n;
            }
        }
        match next {
            Next::Send(n) => Action::Send(&self.out[..n]),
            Next::Done => Action::Done,
            Next::Failed(e) => {
                self.failed = Some(e);
                Action::Failed(e)
            }
        }
    }

    fn advance(&mut self) -> Next {
        let r = self.random;
        match self.stage {
            Stage::Discovery => {
                if !self.discovery.supports(ObjectType::Spdm) || !self.discovery.supports(ObjectType::SecuredSpdm) {
                    return Next::Failed(ConnectError::NoSpdm);
                }
                self.stage = Stage::Negotiation;
                let stage = self.stage;
                copy_out(&mut self.out, self.negotiation.start(), move |e| ConnectError::Spdm(stage, e))
            }
            Stage::Negotiation => {
                let Some(n) = self.negotiation.negotiated() else {
                    return Next::Failed(ConnectError::Spdm(Stage::Negotiation, SpdmError::NotWaiting));
                };
                self.stage = Stage::Certificates;
                let c = self.certificates.insert(CertRetrieval::new(&n, self.negotiation.vca()));
                copy_out(&mut self.out, c.start(), |e| ConnectError::Spdm(Stage::Certificates, e))
            }
            Stage::Certificates => {
                let (Some(n), Some(c)) = (self.negotiation.negotiated(), self.certificates.as_ref()) else {
                    return Next::Failed(ConnectError::Spdm(Stage::Certificates, SpdmError::NotWaiting));
                };
                let Some(chain) = c.chain() else {
                    return Next::Failed(ConnectError::Spdm(Stage::Certificates, SpdmError::NotWaiting));
                };
                let ch = Challenge::new(
                    &n,
                    c.transcript().clone(),
                    &chain.hash(),
                    *chain.leaf_key(),
                    r.challenge_nonce,
                    r.context,
                );
                self.stage = Stage::Challenge;
                let ch = self.challenge.insert(ch);
                copy_out(&mut self.out, ch.start(), |e| ConnectError::Spdm(Stage::Challenge, e))
            }
            Stage::Challenge if self.in_session => self.start_session(),
            Stage::Challenge => {
                let chain = self.certificates.as_ref().and_then(CertRetrieval::chain);
                let (Some(n), Some(chain)) = (self.negotiation.negotiated(), chain) else {
                    return Next::Failed(ConnectError::Spdm(Stage::Challenge, SpdmError::NotWaiting));
                };
                let key = *chain.leaf_key();
                let m = Measurements::new(&n, self.negotiation.vca(), key, r.measurement_nonce, r.context);
                self.stage = Stage::Measurements;
                let m = self.measurements.insert(m);
                copy_out(&mut self.out, m.start(), |e| ConnectError::Spdm(Stage::Measurements, e))
            }
            Stage::Measurements => self.start_session(),
            Stage::Session => {
                self.stage = Stage::Connected;
                Next::Done
            }
            Stage::Connected => Next::Done,
        }
    }

    /// KEY_EXCHANGE, after the measurements (or after CHALLENGE when they are taken inside the
    /// session).
    fn start_session(&mut self) -> Next {
        let r = self.random;
        let chain = self.certificates.as_ref().and_then(CertRetrieval::chain);
        let (Some(n), Some(chain)) = (self.negotiation.negotiated(), chain) else {
            return Next::Failed(ConnectError::Spdm(self.stage, SpdmError::NotWaiting));
        };
        let (hash, key) = (chain.hash(), *chain.leaf_key());
        let mut kx = match KeyExchange::new(&n, self.negotiation.vca(), &hash, key, r.ephemeral, r.random) {
            Ok(kx) => kx,
            Err(e) => return Next::Failed(ConnectError::Spdm(Stage::Session, e)),
        };
        if self.heartbeat && n.responder_flags & cap::HBEAT != 0 {
            kx.accept_heartbeat();
        }
        self.stage = Stage::Session;
        let kx = self.key_exchange.insert(kx);
        copy_out(&mut self.out, kx.start(), |e| ConnectError::Spdm(Stage::Session, e))
    }

    /// Microseconds the host should wait before moving the request just made: the device's
    /// response time after ERROR ResponseNotReady (the request is RESPOND_IF_READY), else 0.
    pub fn wait_us(&self) -> u64 {
        let finish = match (self.stage, self.key_exchange.as_ref()) {
            (Stage::Session, Some(k)) => k.wait_us(),
            _ => 0,
        };
        self.wait_us.max(finish)
    }

    /// The negotiated parameters.
    pub fn negotiated(&self) -> Option<Negotiated> {
        self.negotiation.negotiated()
    }

    /// The VCA transcript.
    pub fn vca(&self) -> &[u8] {
        self.negotiation.vca()
    }

    /// The device's checked certificate chain; `None` once the connection failed (nothing of a
    /// failed connection is evidence).
    pub fn chain(&self) -> Option<CertChain<'_>> {
        self.evidence()?.certificates.as_ref()?.chain()
    }

    /// The chain's bytes, as evidence; `None` once the connection failed.
    pub fn chain_bytes(&self) -> Option<&[u8]> {
        self.evidence()?.certificates.as_ref()?.chain_bytes()
    }

    /// The signed measurement exchange, as evidence; `None` once the connection failed.
    pub fn measurements(&self) -> Option<&[u8]> {
        self.evidence()?.measurements.as_ref()?.exchange()
    }

    fn evidence(&self) -> Option<&Connect> {
        self.failed.is_none().then_some(self)
    }

    /// The session, once connected.
    pub fn session(&self) -> Option<&Session> {
        match self.stage {
            Stage::Connected => self.key_exchange.as_ref()?.session(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doe;

    extern crate std;
    use std::vec::Vec;

    fn random() -> ConnectRandom {
        ConnectRandom {
            challenge_nonce: [1; 32],
            measurement_nonce: [2; 32],
            context: [3; 8],
            ephemeral: [4; 48],
            random: [5; 32],
        }
    }

    fn discovery_answer(request: &[u8], table: &[(u16, u8)]) -> Vec<u8> {
        let index = usize::from(doe::decode_as(request, ObjectType::Discovery).unwrap()[0]);
        let (vendor, ty) = table[index];
        let next = if index + 1 < table.len() { index as u8 + 1 } else { 0 };
        let v = vendor.to_le_bytes();
        let mut out = std::vec![0u8; 12];
        doe::encode(ObjectType::Discovery, &[v[0], v[1], ty, next], &mut out).unwrap();
        out
    }

    fn walk(table: &[(u16, u8)]) -> (Connect, Vec<u8>) {
        let mut c = Connect::new(random());
        let mut req = match c.start() {
            Action::Send(r) => r.to_vec(),
            other => panic!("{other:?}"),
        };
        while c.stage() == Stage::Discovery {
            match c.step(&discovery_answer(&req, table)) {
                Action::Send(r) => req = r.to_vec(),
                _ => break,
            }
        }
        (c, req)
    }

    #[test]
    fn discovery_leads_to_get_version() {
        let (c, req) = walk(&[(1, 0), (1, 1), (1, 2)]);
        assert_eq!(c.stage(), Stage::Negotiation);
        assert_eq!(doe::decode_as(&req, ObjectType::Spdm).unwrap(), &[0x10, 0x84, 0, 0]);
        assert!(c.session().is_none() && c.chain().is_none() && c.measurements().is_none());
    }

    #[test]
    fn a_mailbox_without_secured_spdm_is_refused() {
        let (mut c, _) = walk(&[(1, 0), (1, 1)]);
        assert_eq!(c.error(), Some(ConnectError::NoSpdm));
        assert_eq!(c.step(&[]), Action::Failed(ConnectError::NoSpdm), "stays failed");
    }

    #[test]
    fn an_spdm_failure_names_its_stage() {
        let (mut c, _) = walk(&[(1, 0), (1, 1), (1, 2)]);
        let mut err = std::vec![0u8; 12];
        doe::encode(ObjectType::Spdm, &[0x10, 0x7F, 0x41, 0], &mut err).unwrap();
        assert_eq!(
            c.step(&err),
            Action::Failed(ConnectError::Spdm(Stage::Negotiation, SpdmError::Responder { code: 0x41, data: 0 }))
        );
    }

    fn spdm(msg: &[u8]) -> Vec<u8> {
        let mut out = std::vec![0u8; doe::object_len(msg.len())];
        doe::encode(ObjectType::Spdm, msg, &mut out).unwrap();
        out
    }

    fn sent(a: Action<'_, ConnectError>) -> Vec<u8> {
        match a {
            Action::Send(b) => doe::decode_as(b, ObjectType::Spdm).unwrap().to_vec(),
            other => panic!("{other:?}"),
        }
    }

    const VERSION_1_2: [u8; 8] = [0x10, 0x04, 0, 0, 0, 1, 0x00, 0x12];

    #[test]
    fn response_not_ready_is_followed_by_respond_if_ready_and_the_late_answer_counts() {
        let (mut c, req) = walk(&[(1, 0), (1, 1), (1, 2)]);
        assert_eq!(doe::decode_as(&req, ObjectType::Spdm).unwrap(), &[0x10, 0x84, 0, 0]);
        // ERROR ResponseNotReady: RDTExponent 3, RequestCode GET_VERSION, Token 0x5A, RDTM 2.
        let r = sent(c.step(&spdm(&[0x10, 0x7F, 0x42, 0, 3, 0x84, 0x5A, 2])));
        assert_eq!(r, [0x10, 0xFF, 0x84, 0x5A], "RESPOND_IF_READY with the request code and token");
        assert_eq!(c.wait_us(), 8, "after 2^RDTExponent µs");
        let r = sent(c.step(&spdm(&VERSION_1_2)));
        assert_eq!(c.wait_us(), 0, "the next request goes at once");
        assert_eq!(r[..2], [0x12, 0xE1], "the late VERSION is the answer: GET_CAPABILITIES follows");
        // The transcript holds GET_VERSION and VERSION, never the ERROR or RESPOND_IF_READY.
        assert_eq!(&c.negotiation.vca()[..12], &[&[0x10, 0x84, 0, 0][..], &VERSION_1_2].concat()[..]);
    }

    #[test]
    fn busy_resends_the_same_request() {
        let (mut c, _) = walk(&[(1, 0), (1, 1), (1, 2)]);
        sent(c.step(&spdm(&VERSION_1_2)));
        let caps = sent(c.step(&spdm(&[0x12, 0x7F, 0x03, 0])));
        assert_eq!(caps[..2], [0x12, 0xE1], "GET_CAPABILITIES again");
        let again = sent(c.step(&spdm(&[0x12, 0x7F, 0x03, 0])));
        assert_eq!(again, caps);
        assert_eq!(c.negotiation.vca().len(), 12 + 20, "the request counted once");
    }

    #[test]
    fn a_device_that_is_never_ready_fails_with_its_own_error() {
        let (mut c, _) = walk(&[(1, 0), (1, 1), (1, 2)]);
        let busy = spdm(&[0x10, 0x7F, 0x03, 0]);
        for _ in 0..MAX_RETRIES {
            sent(c.step(&busy));
        }
        assert_eq!(
            c.step(&busy),
            Action::Failed(ConnectError::Spdm(
                Stage::Negotiation,
                SpdmError::NotReadyTooLong { request: 0x84, error: 0x03 }
            ))
        );
    }

    #[test]
    fn response_not_ready_for_another_request_is_refused() {
        let (mut c, _) = walk(&[(1, 0), (1, 1), (1, 2)]);
        assert_eq!(
            c.step(&spdm(&[0x10, 0x7F, 0x42, 0, 3, 0xE1, 0x5A, 2])),
            Action::Failed(ConnectError::Spdm(
                Stage::Negotiation,
                SpdmError::NotReadyForAnother { request: 0x84, got: 0xE1 }
            ))
        );
    }
}
