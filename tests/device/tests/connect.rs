//! The TSM's whole-connection state machine (`tsm::spdm::connect::Connect`, the engine of the
//! resumable SPDM.CONNECT call) against the device, in-process and over the socket.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use sha2::{Digest, Sha384};
use tdisp_device::{Config, Device};
use tsm::doe::Action;
use tsm::spdm::connect::{Connect, ConnectError, ConnectRandom, Stage};
use tsm::spdm::SpdmError;

fn random() -> ConnectRandom {
    ConnectRandom {
        challenge_nonce: [0x11; 32],
        measurement_nonce: [0x22; 32],
        context: [0x33; 8],
        ephemeral: [0x44; 48],
        random: [0x55; 32],
    }
}

/// Runs `Connect` to its end; returns it and the number of objects exchanged.
fn run(t: &mut impl Transport) -> (Connect, usize) {
    let mut c = Connect::new(random());
    let mut request = match c.start() {
        Action::Send(b) => b.to_vec(),
        other => panic!("{other:?}"),
    };
    let mut exchanges = 0;
    loop {
        let reply = t.exchange(&request);
        exchanges += 1;
        match c.step(&reply) {
            Action::Send(b) => request = b.to_vec(),
            Action::Done | Action::Failed(_) => break,
        }
    }
    (c, exchanges)
}

#[test]
fn connect_reaches_a_session_and_keeps_the_evidence() {
    let mut device = Device::new(Config::default()).unwrap();
    let (c, exchanges) = run(&mut device);
    assert_eq!(c.error(), None);
    assert_eq!(c.stage(), Stage::Connected);
    let session = c.session().expect("session");
    assert_eq!(session.id & 0xFFFF, 0xFFFF, "the TSM's half of the session id");
    // Evidence: the chain the device serves, and the signed measurement exchange.
    let chain = c.chain_bytes().unwrap();
    assert_eq!(Sha384::digest(chain)[..], c.chain().unwrap().digest()[..]);
    let meas = c.measurements().unwrap();
    assert_eq!(meas[1], 0xE0, "GET_MEASUREMENTS first");
    // 3 discovery + 3 VCA + digests + certificate chunks + challenge + measurements + 2 session.
    assert!(exchanges >= 12, "{exchanges} exchanges");
    assert_eq!(device.session_count(), 1);
}

#[test]
fn connect_over_the_socket() {
    let (port, server) = spawn(Config::default());
    let mut client = Client::connect(port);
    let (c, _) = run(&mut client);
    assert_eq!(c.stage(), Stage::Connected, "{:?}", c.error());
    client.shutdown();
    server.join().unwrap();
}

#[test]
fn a_device_that_stops_answering_fails_at_its_stage() {
    // Drop every answer after the negotiation: the TSM reports the certificate stage.
    struct Mute {
        device: Device,
        left: usize,
    }
    impl Transport for Mute {
        fn exchange(&mut self, object: &[u8]) -> Vec<u8> {
            if self.left == 0 {
                return Vec::new();
            }
            self.left -= 1;
            self.device.exchange(object)
        }
    }
    let mut mute = Mute { device: Device::new(Config::default()).unwrap(), left: 6 };
    let (c, _) = run(&mut mute);
    assert!(matches!(c.error(), Some(ConnectError::Spdm(Stage::Certificates, SpdmError::Doe(_)))), "{:?}", c.error());
    assert!(c.session().is_none());
}

/// A transport that keeps every SPDM request code and response code (secured ones as 0).
struct Codes<'a> {
    device: &'a mut Device,
    wire: Vec<(u8, u8)>,
}

impl Transport for Codes<'_> {
    fn exchange(&mut self, object: &[u8]) -> Vec<u8> {
        let reply = self.device.exchange(object);
        let code = |o: &[u8]| match tsm::doe::decode_as(o, tsm::doe::ObjectType::Spdm) {
            Ok(m) if m.len() > 1 => m[1],
            _ => 0,
        };
        self.wire.push((code(object), code(&reply)));
        reply
    }
}

/// A certificate chain over 4 KiB (root, five CAs with long names, leaf), longer than the TSM's
/// DataTransferSize: the TSM asks for as much as the device can build in one response (its
/// MaxSPDMmsgSize, 4 KiB: 4088 bytes of chain), the device answers ERROR LargeResponse, CHUNK_GET
/// takes that CERTIFICATE in two chunks, and one more GET_CERTIFICATE the rest. The chain is
/// checked link by link and kept whole as evidence, and the transcripts hold the
/// GET_CERTIFICATEs and the whole CERTIFICATEs only (CHALLENGE_AUTH's signature over M1 proves
/// it).
#[test]
fn a_certificate_chain_over_4_kib_comes_in_chunks() {
    use tdisp_device::{rng::Rng, Identity};
    use tsm::spdm::chunk::{CHUNK_GET, CHUNK_RESPONSE};
    for version in [0x12, 0x13] {
        let config = Config { spdm_versions: vec![version], ..Config::default() };
        let mut rng = Rng::new(config.seed);
        let identity = Identity::generate_chain(&mut rng, 5, 400).unwrap();
        let chain = identity.chain.clone();
        assert!(chain.len() > 4096 && chain.len() <= tsm::spdm::cert::CHAIN_MAX, "{} bytes", chain.len());
        let mut device = Device::with_identity(config, identity, rng).unwrap();
        let mut t = Codes { device: &mut device, wire: Vec::new() };
        let (c, _) = run(&mut t);
        assert_eq!(c.error(), None, "SPDM {version:#x}");
        assert_eq!(c.stage(), Stage::Connected);
        assert_eq!(c.chain_bytes(), Some(&chain[..]));
        assert_eq!(c.chain().unwrap().certs().len(), 7);
        let at = t.wire.iter().position(|w| w.0 == 0x82).unwrap();
        assert_eq!(
            t.wire[at..at + 4],
            [(0x82, 0x7F), (CHUNK_GET, CHUNK_RESPONSE), (CHUNK_GET, CHUNK_RESPONSE), (0x82, 0x02)],
            "GET_CERTIFICATE, ERROR LargeResponse, two chunks, then the rest in one CERTIFICATE"
        );
        assert_eq!(t.wire[at + 4], (0x83, 0x03), "CHALLENGE_AUTH verifies over M1");
    }
}

/// A chain that fits one transfer comes whole in one GET_CERTIFICATE (the TSM asks for all of it
/// when both sides take chunks), where a requester reading 1 KiB blocks needs two.
#[test]
fn a_chain_that_fits_a_transfer_comes_in_one_certificate() {
    let mut device = Device::new(Config::default()).unwrap();
    let mut t = Codes { device: &mut device, wire: Vec::new() };
    let (c, _) = run(&mut t);
    assert_eq!(c.error(), None);
    assert!(c.chain_bytes().unwrap().len() > 1024);
    let certificates: Vec<_> = t.wire.iter().filter(|w| w.0 == 0x82).collect();
    assert_eq!(certificates, [&(0x82, 0x02)]);
}

/// A device with a P-256 identity: the TSM takes its pick of the offered suites (ECDSA P-256,
/// SHA-256, secp256r1, AES-128-GCM) at SPDM 1.2 and 1.3, verifies every signature with the P-256
/// leaf, reads the SHA-256 RootHash and DIGESTS, and carries secured messages with AES-128-GCM.
/// The evidence digest stays SHA-384, the TSM's own.
#[test]
fn a_p256_device_connects_with_the_p256_suite() {
    use tdisp_device::{rng::Rng, Identity};
    use tsm::spdm::suite::Suite;
    for version in [0x12, 0x13] {
        let config = Config { spdm_versions: vec![version], ..Config::default() };
        let mut rng = Rng::new([0x25; 32]);
        let identity = Identity::generate_p256(&mut rng).unwrap();
        assert_eq!(identity.suite, Suite::P256);
        let mut device = Device::with_identity(config, identity, rng).unwrap();
        let (c, _) = run(&mut device);
        assert_eq!(c.error(), None);
        assert_eq!(c.stage(), Stage::Connected);
        let n = c.negotiated().unwrap();
        assert_eq!((n.version, n.suite), (version, Suite::P256));
        let chain = c.chain().unwrap();
        assert_eq!(chain.hash().len(), 32, "the chain hashed with SHA-256 for the transcripts");
        assert_eq!(Sha384::digest(c.chain_bytes().unwrap())[..], chain.digest()[..], "SHA-384 as evidence");
        let meas = c.measurements().unwrap();
        let response = &meas[if version == 0x13 { 45 } else { 37 }..];
        assert_eq!(response[1], 0x60);
        // The session works both ways under AES-128-GCM keys.
        let mut s = c.session().unwrap().clone();
        assert_eq!(s.request.key().len(), 16);
        let mut obj = [0u8; 64];
        let n = s.end(&mut obj).unwrap();
        let ack = device.exchange(&obj[..n]);
        assert_eq!(s.check_end_ack(&ack), Ok(()));
    }
}

/// A device that serves only P-256 meets a TSM that offers it; one whose leaf key is on another
/// curve than the one it selected is refused at the certificate stage with the fault named.
#[test]
fn a_leaf_key_of_another_curve_than_selected_is_refused() {
    use tdisp_device::{rng::Rng, Identity};
    let mut rng = Rng::new([0x26; 32]);
    let p256 = Identity::generate_p256(&mut rng).unwrap();
    // The P-256 chain, served by a device that claims the P-384 suite (its RootHash then in
    // SHA-384, so only the leaf's curve is wrong).
    let mut p384 = Identity::generate(&mut rng).unwrap();
    let forged = Identity::from_chain(
        p384.leaf_key.clone(),
        p256.root_der.clone(),
        p256.intermediates_der.clone(),
        p256.leaf_der.clone(),
    )
    .unwrap();
    p384.chain = forged.chain;
    p384.chain_digest = forged.chain_digest;
    let mut device = Device::with_identity(Config::default(), p384, rng).unwrap();
    let (c, _) = run(&mut device);
    assert_eq!(
        c.error(),
        Some(ConnectError::Spdm(Stage::Certificates, SpdmError::LeafKeyAlgorithm { got: 0x10 })),
        "a P-256 leaf under BaseAsymSel P-384"
    );
}
