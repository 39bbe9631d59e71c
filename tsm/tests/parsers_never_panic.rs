//! Every parser of bytes a device or host controls, fed random and mutated bytes: none may panic
//! (so none reads past its buffer) and none may accept a mutated message as the original.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use proptest::prelude::*;
use tsm::doe::{self, Action, ObjectType};
use tsm::spdm::cert::CertRetrieval;
use tsm::spdm::chain::CertChain;
use tsm::spdm::keys::{DirectionKeys, Schedule};
use tsm::spdm::{secured, Negotiated, Negotiation};
use tsm::tdisp::{self, InterfaceId, InterfaceReport};
use tsm::{idekm, spdm};

fn negotiated() -> Negotiated {
    Negotiated::p384(0x12, 0x2F6, 0x1000, 0x1000)
}

fn spdm_object(msg: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; doe::object_len(msg.len())];
    doe::encode(ObjectType::Spdm, msg, &mut out).unwrap();
    out
}

/// Bytes that look like an SPDM answer of `code` in 1.2, then whatever follows.
fn spdm_like(code: u8) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..300).prop_map(move |mut tail| {
        let mut m = vec![0x12, code];
        m.append(&mut tail);
        spdm_object(&m)
    })
}

fn vdm_like(protocol: u8) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..200).prop_map(move |tail| {
        let mut m = vec![0x12, 0x7E, 0, 0, 3, 0, 2, 1, 0];
        m.extend_from_slice(&((1 + tail.len()) as u16).to_le_bytes());
        m.push(protocol);
        if protocol == 1 && tail.len() >= 16 {
            let mut t = tail;
            t[0] = 0x10;
            t[4..16].copy_from_slice(&[0xEF, 0xBE, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
            m.extend_from_slice(&t);
        } else {
            m.extend_from_slice(&tail);
        }
        m
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn doe_and_discovery(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let _ = doe::decode(&bytes);
        let mut d = doe::Discovery::new();
        d.start();
        let _ = d.step(&bytes);
    }

    #[test]
    fn negotiation_answers(version in spdm_like(0x04), caps in spdm_like(0x61), algs in spdm_like(0x63)) {
        let mut n = Negotiation::new();
        n.start();
        let _ = n.step(&version);
        let mut n = Negotiation::new();
        n.start();
        let good_version = spdm_object(&[0x10, 0x04, 0, 0, 0, 1, 0, 0x12]);
        let _ = n.step(&good_version);
        let _ = n.step(&caps);
        let _ = n.step(&algs);
    }

    #[test]
    fn certificate_answers(digests in spdm_like(0x01), cert in spdm_like(0x02)) {
        let mut c = CertRetrieval::new(&negotiated(), b"vca");
        c.start();
        let _ = c.step(&digests);
        let mut c = CertRetrieval::new(&negotiated(), b"vca");
        c.start();
        let mut d = vec![0x12, 0x01, 0, 1];
        d.extend_from_slice(&[0; 48]);
        if let Action::Send(_) = c.step(&spdm_object(&d)) {
            let _ = c.step(&cert);
        }
    }

    #[test]
    fn chains(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = CertChain::parse(&bytes);
    }

    #[test]
    fn challenge_measurements_key_exchange(auth in spdm_like(0x03), meas in spdm_like(0x60), kx in spdm_like(0x64)) {
        let key = p384::ecdsa::VerifyingKey::from(&p384::ecdsa::SigningKey::from_slice(&[7u8; 48]).unwrap());
        let mut c = spdm::challenge::Challenge::new(&negotiated(), Default::default(), &[0; 48], key.into(), [1; 32], [0; 8]);
        c.start();
        let _ = c.step(&auth);
        let mut m = spdm::meas::Measurements::new(&negotiated(), b"vca", key.into(), [2; 32], [0; 8]);
        m.start();
        let _ = m.step(&meas);
        let mut k = spdm::session::KeyExchange::new(&negotiated(), b"vca", &[0; 48], key.into(), [3; 48], [4; 32]).unwrap();
        k.start();
        let _ = k.step(&kx);
    }

    #[test]
    fn secured_messages(bytes in proptest::collection::vec(any::<u8>(), 0..200), flip in any::<prop::sample::Index>()) {
        let mut keys = DirectionKeys::from_secret(Schedule::p384(0x12), &[9; 48]);
        let mut out = [0u8; 256];
        let _ = secured::open(&mut keys, 7, &bytes, &mut out);
        // A sealed message with one bit flipped never opens.
        let mut tx = DirectionKeys::from_secret(Schedule::p384(0x12), &[9; 48]);
        let mut obj = [0u8; 128];
        let n = secured::seal(&mut tx, 7, b"a TDISP message", &mut obj).unwrap();
        let bit = flip.index(n * 8);
        obj[bit / 8] ^= 1 << (bit % 8);
        let mut rx = DirectionKeys::from_secret(Schedule::p384(0x12), &[9; 48]);
        prop_assert!(secured::open(&mut rx, 7, &obj[..n], &mut out).is_err());
        prop_assert_eq!(rx.sequence, 0);
    }

    #[test]
    fn key_update_answers(ack in proptest::collection::vec(any::<u8>(), 0..40), object in proptest::collection::vec(any::<u8>(), 0..80)) {
        use tsm::spdm::key_update::{check_ack, KeyOperation, KeyUpdate};
        for op in [KeyOperation::UpdateKey, KeyOperation::UpdateAllKeys, KeyOperation::VerifyNewKey] {
            let r = check_ack(0x12, op, 0x5A, &ack);
            // Only the exact echo is an ACK.
            prop_assert_eq!(r.is_ok(), ack == [0x12, 0x69, op as u8, 0x5A]);
        }
        // Random objects and random sealed plaintexts as the device's answer.
        let keys = DirectionKeys::from_secret(Schedule::p384(0x12), &[9; 48]);
        let session = spdm::session::Session::new(7, keys.clone(), keys.clone(), 0x12);
        let n = Negotiated { responder_flags: 0x42F6, ..negotiated() };
        for op in [KeyOperation::UpdateKey, KeyOperation::UpdateAllKeys] {
            let mut ku = KeyUpdate::new(session.clone(), &n, op, [1, 2]).unwrap();
            ku.start();
            let _ = ku.step(&object);
            prop_assert!(ku.session().is_none() || ku.error().is_none());
            let mut ku = KeyUpdate::new(session.clone(), &n, op, [1, 2]).unwrap();
            ku.start();
            let mut rsp = if op == KeyOperation::UpdateAllKeys { keys.updated() } else { keys.clone() };
            let mut sealed = [0u8; 128];
            let len = secured::seal(&mut rsp, 7, &ack, &mut sealed).unwrap();
            let _ = ku.step(&sealed[..len]);
            prop_assert_eq!(ku.error().is_none(), ack == [0x12, 0x69, op as u8, 1]);
        }
    }

    #[test]
    fn tdisp_and_idekm_answers(t in vdm_like(1), k in vdm_like(0), report in proptest::collection::vec(any::<u8>(), 0..300)) {
        for code in [0x81u8, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87] {
            let _ = tdisp::decode(0x12, InterfaceId(0xBEEF), code, &t);
        }
        let _ = InterfaceReport::parse(&report);
        let _ = idekm::decode_query(0x12, 0, &k);
        let slot = idekm::KeySlot { key_set_1: false, transmit: false, sub_stream: 0 };
        let _ = idekm::check_ack(0x12, &idekm::Request::Go { stream: 0, slot, port: 0 }, &k);
    }
}
