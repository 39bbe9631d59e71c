//! Test support: the device in-process or behind its socket, and the TSM's sans-IO requester
//! driven against it.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::thread::JoinHandle;

use tdisp_device::server::{self, command, TRANSPORT_PCI_DOE};
use tdisp_device::{Config, Device};
use tsm::doe::Discovery;
use tsm::spdm::cert::CertRetrieval;
use tsm::spdm::challenge::Challenge;
use tsm::spdm::meas::Measurements;
use tsm::spdm::session::{KeyExchange, Session};
use tsm::spdm::sig::LeafKey;
use tsm::spdm::suite::Transcript;
use tsm::spdm::{Negotiated, Negotiation, SpdmError};
use tsm::tdisp::{self, InterfaceId, Request, Response, TdispError};

/// Something that carries one DOE object to the device and brings the reply back (empty = none).
pub trait Transport {
    fn exchange(&mut self, object: &[u8]) -> Vec<u8>;
}

impl Transport for Device {
    fn exchange(&mut self, object: &[u8]) -> Vec<u8> {
        self.handle(object).unwrap_or_default()
    }
}

/// A socket client speaking QEMU's framing, as QEMU's `spdm_socket_rsp` does.
pub struct Client {
    pub stream: TcpStream,
}

impl Client {
    pub fn connect(port: u16) -> Client {
        let stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
        stream.set_nodelay(true).unwrap();
        Client { stream }
    }

    pub fn send(&mut self, command: u32, transport: u32, payload: &[u8]) -> server::Frame {
        server::write_frame(&mut self.stream, command, transport, payload).unwrap();
        server::read_frame(&mut self.stream).unwrap().expect("a reply frame")
    }

    pub fn shutdown(mut self) {
        server::write_frame(&mut self.stream, command::SHUTDOWN, TRANSPORT_PCI_DOE, &[]).unwrap();
    }
}

impl Transport for Client {
    fn exchange(&mut self, object: &[u8]) -> Vec<u8> {
        let f = self.send(command::NORMAL, TRANSPORT_PCI_DOE, object);
        assert_eq!((f.command, f.transport), (command::NORMAL, TRANSPORT_PCI_DOE));
        f.payload
    }
}

/// The device serving one 127.0.0.1:0 listener on a thread until SHUTDOWN.
pub fn spawn(config: Config) -> (u16, JoinHandle<Device>) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut device = Device::new(config).unwrap();
    let handle = std::thread::spawn(move || {
        server::serve(&listener, &mut device, false).unwrap();
        device
    });
    (port, handle)
}

/// Runs a sans-IO exchange (`start`, then `step` with each reply) to its end.
#[macro_export]
macro_rules! drive {
    ($t:expr, $sm:expr) => {{
        let mut request = match $sm.start() {
            tsm::doe::Action::Send(b) => b.to_vec(),
            other => panic!("start: {other:?}"),
        };
        loop {
            let reply = $crate::common::Transport::exchange($t, &request);
            match $sm.step(&reply) {
                tsm::doe::Action::Send(b) => request = b.to_vec(),
                tsm::doe::Action::Done => break Ok(()),
                tsm::doe::Action::Failed(e) => break Err(e),
            }
        }
    }};
}

pub fn discover(t: &mut impl Transport) -> Discovery {
    let mut d = Discovery::new();
    let r: Result<(), _> = drive!(t, d);
    r.unwrap();
    d
}

/// What an authenticated connection established.
pub struct Connected {
    pub negotiated: Negotiated,
    pub vca: Vec<u8>,
    pub chain: Vec<u8>,
    /// The chain in the negotiated hash.
    pub chain_digest: Vec<u8>,
    pub key: LeafKey,
    pub transcript: Transcript,
}

pub fn negotiate(t: &mut impl Transport) -> Result<(Negotiated, Vec<u8>), SpdmError> {
    let mut n = Negotiation::new();
    drive!(t, n)?;
    Ok((n.negotiated().unwrap(), n.vca().to_vec()))
}

/// VCA and certificates.
pub fn authenticate(t: &mut impl Transport) -> Connected {
    let (negotiated, vca) = negotiate(t).unwrap();
    let mut c = Box::new(CertRetrieval::new(&negotiated, &vca));
    let r: Result<(), SpdmError> = drive!(t, c);
    r.unwrap();
    let chain = c.chain().unwrap();
    let (chain_digest, key) = (chain.hash().to_vec(), *chain.leaf_key());
    let bytes = chain.certs().concat();
    let transcript = c.transcript().clone();
    Connected { negotiated, vca, chain: bytes, chain_digest, key, transcript }
}

pub fn challenge(t: &mut impl Transport, c: &Connected) -> Result<(), SpdmError> {
    let mut ch = Challenge::new(&c.negotiated, c.transcript.clone(), &c.chain_digest, c.key, [0x11; 32], [0x22; 8]);
    drive!(t, ch)
}

pub fn measure(t: &mut impl Transport, c: &Connected) -> Result<Vec<u8>, SpdmError> {
    let mut m = Box::new(Measurements::new(&c.negotiated, &c.vca, c.key, [0x33; 32], [0x44; 8]));
    drive!(t, m)?;
    Ok(m.exchange().unwrap().to_vec())
}

pub fn key_exchange(t: &mut impl Transport, c: &Connected) -> Result<Session, SpdmError> {
    let mut k = Box::new(KeyExchange::new(&c.negotiated, &c.vca, &c.chain_digest, c.key, [0x55; 48], [0x66; 32])?);
    drive!(t, k)?;
    Ok(k.session().unwrap().clone())
}

/// Negotiation, certificates and a session.
pub fn open_session(t: &mut impl Transport) -> (Connected, Session) {
    let c = authenticate(t);
    let s = key_exchange(t, &c).unwrap();
    (c, s)
}

/// One SPDM message through the session; the decrypted reply (or the raw reply if it does not open).
pub fn secured(t: &mut impl Transport, s: &mut Session, message: &[u8]) -> Result<Vec<u8>, Vec<u8>> {
    let mut out = vec![0u8; 8192];
    let n = s.seal(message, &mut out).unwrap();
    let reply = t.exchange(&out[..n]);
    let mut buf = vec![0u8; 8192];
    match s.open(&reply, &mut buf) {
        Ok(m) => Ok(m.to_vec()),
        Err(_) => Err(reply),
    }
}

/// One TDISP request through the session, decoded.
pub fn tdisp_call(
    t: &mut impl Transport,
    s: &mut Session,
    version: u8,
    iface: InterfaceId,
    request: &Request<'_>,
) -> Result<Response<'static>, TdispError> {
    let mut out = [0u8; 128];
    let n = tdisp::encode(version, iface, request, &mut out).unwrap();
    let reply = secured(t, s, &out[..n]).expect("a secured reply");
    let reply: &'static [u8] = Box::leak(reply.into_boxed_slice());
    tdisp::decode(version, iface, request.code(), reply)
}

/// An IDE_KM object wrapped in VENDOR_DEFINED_REQUEST.
pub fn idekm_request(version: u8, object: &[u8]) -> Vec<u8> {
    let mut m = vec![version, 0xFE, 0, 0, 3, 0, 2, 1, 0];
    m.extend_from_slice(&((1 + object.len()) as u16).to_le_bytes());
    m.push(0x00);
    m.extend_from_slice(object);
    m
}

/// The IDE_KM object of a VENDOR_DEFINED_RESPONSE.
pub fn idekm_reply(m: &[u8]) -> &[u8] {
    assert_eq!(m[1], 0x7E, "VENDOR_DEFINED_RESPONSE: {m:x?}");
    assert_eq!(m[4..9], [3, 0, 2, 1, 0]);
    assert_eq!(usize::from(u16::from_le_bytes([m[9], m[10]])), m.len() - 11);
    assert_eq!(m[11], 0x00);
    &m[12..]
}

/// SPDM message framed as a plain DOE object.
pub fn spdm_object(message: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; tsm::doe::object_len(message.len())];
    tsm::doe::encode(tsm::doe::ObjectType::Spdm, message, &mut out).unwrap();
    out
}

/// The SPDM message of a plain DOE reply (with its DOE padding).
pub fn spdm_payload(object: &[u8]) -> Vec<u8> {
    tsm::doe::decode_as(object, tsm::doe::ObjectType::Spdm).unwrap().to_vec()
}
