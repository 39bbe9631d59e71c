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

/// A certificate chain over 4 KiB (root, five CAs with long names, leaf) is read in 1 KiB
/// GET_CERTIFICATE portions, checked link by link, and kept whole as evidence.
#[test]
fn a_certificate_chain_over_4_kib_connects() {
    use tdisp_device::{rng::Rng, Identity};
    for version in [0x12, 0x13] {
        let config = Config { spdm_versions: vec![version], ..Config::default() };
        let mut rng = Rng::new(config.seed);
        let identity = Identity::generate_chain(&mut rng, 5, 400).unwrap();
        let chain = identity.chain.clone();
        assert!(chain.len() > 4096 && chain.len() <= tsm::spdm::cert::CHAIN_MAX, "{} bytes", chain.len());
        let mut device = Device::with_identity(config, identity, rng).unwrap();
        let (c, exchanges) = run(&mut device);
        assert_eq!(c.error(), None, "SPDM {version:#x}");
        assert_eq!(c.stage(), Stage::Connected);
        assert_eq!(c.chain_bytes(), Some(&chain[..]));
        assert_eq!(c.chain().unwrap().certs().len(), 7);
        // Discovery 3, VCA 3, GET_DIGESTS, five portions, CHALLENGE, MEASUREMENTS, KEY_EXCHANGE, FINISH.
        assert_eq!(exchanges, 3 + 3 + 1 + chain.len().div_ceil(1024) + 4);
    }
}
