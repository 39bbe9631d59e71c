//! KEY_UPDATE end to end: the TSM's sans-IO exchange (`tsm::spdm::key_update::KeyUpdate`)
//! against the device, in-process and over the socket. After an update the session still carries
//! TDISP messages, and the keys from before open nothing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use tdisp_device::{Config, Device};
use tsm::doe::Action;
use tsm::spdm::connect::{Connect, ConnectRandom, Stage};
use tsm::spdm::key_update::{KeyOperation, KeyUpdate};
use tsm::spdm::secured::{self, SecuredError};
use tsm::spdm::session::Session;
use tsm::spdm::{Negotiated, SpdmError};
use tsm::tdisp::{InterfaceId, Request, Response, TdiState};

fn connect(t: &mut impl Transport) -> (Negotiated, Session) {
    let mut c = Connect::new(ConnectRandom {
        challenge_nonce: [1; 32],
        measurement_nonce: [2; 32],
        context: [3; 8],
        ephemeral: [4; 48],
        random: [5; 32],
    });
    let r: Result<(), _> = drive!(t, c);
    r.unwrap();
    assert_eq!(c.stage(), Stage::Connected);
    (c.negotiated().unwrap(), c.session().unwrap().clone())
}

fn update(t: &mut impl Transport, n: &Negotiated, s: Session, op: KeyOperation) -> Result<Session, SpdmError> {
    let mut ku = KeyUpdate::new(s, n, op, [0x5A, 0xA5])?;
    drive!(t, ku)?;
    Ok(ku.into_session().unwrap())
}

fn state(t: &mut impl Transport, s: &mut Session, v: u8) -> TdiState {
    let iface = InterfaceId(Config::default().interfaces[0].function_id);
    match tdisp_call(t, s, v, iface, &Request::GetState).unwrap() {
        Response::State(st) => st,
        other => panic!("{other:?}"),
    }
}

fn get_state(v: u8) -> Vec<u8> {
    let mut m = vec![0u8; 64];
    let iface = InterfaceId(Config::default().interfaces[0].function_id);
    let n = tsm::tdisp::encode(v, iface, &Request::GetState, &mut m).unwrap();
    m.truncate(n);
    m
}

fn round(t: &mut impl Transport, op: KeyOperation) {
    let (n, mut s) = connect(t);
    let v = n.version;
    let iface = InterfaceId(Config::default().interfaces[0].function_id);
    assert_eq!(tdisp_call(t, &mut s, v, iface, &Request::GetVersion).unwrap(), Response::Version(&[0x10]));
    let before = s.clone();
    let mut s = update(t, &n, s, op).unwrap();
    assert_ne!(s.request.key, before.request.key, "the request direction always moves");
    assert_eq!(s.response.key != before.response.key, op == KeyOperation::UpdateAllKeys);
    // The session still carries TDISP, and keeps doing so through a second update.
    assert_eq!(state(t, &mut s, v), TdiState::ConfigUnlocked);
    let lock = Request::Lock { flags: 0, default_stream: 0, mmio_reporting_offset: 0, p2p_mask: 0 };
    assert!(matches!(tdisp_call(t, &mut s, v, iface, &lock).unwrap(), Response::Locked { .. }));
    let mut s = update(t, &n, s, KeyOperation::UpdateAllKeys).unwrap();
    assert_eq!(state(t, &mut s, v), TdiState::ConfigLocked, "the lock survives the key update");
    assert_eq!(tdisp_call(t, &mut s, v, iface, &Request::Stop).unwrap(), Response::Stopped);
    assert_eq!(secured(t, &mut s, &[v, 0xEC, 0, 0]).unwrap(), [v, 0x6C, 0, 0]);
}

#[test]
fn update_all_keys_in_process_then_tdisp_goes_on() {
    round(&mut Device::new(Config::default()).unwrap(), KeyOperation::UpdateAllKeys);
}

#[test]
fn update_key_in_process_then_tdisp_goes_on() {
    round(&mut Device::new(Config::default()).unwrap(), KeyOperation::UpdateKey);
}

#[test]
fn key_update_over_the_socket() {
    let (port, server) = spawn(Config::default());
    let mut c = Client::connect(port);
    round(&mut c, KeyOperation::UpdateAllKeys);
    round(&mut c, KeyOperation::UpdateKey);
    c.shutdown();
    server.join().unwrap();
}

#[test]
fn after_an_update_the_old_keys_open_nothing() {
    let mut d = Device::new(Config::default()).unwrap();
    let (n, s) = connect(&mut d);
    let v = n.version;
    let old = s.clone();
    let mut s = update(&mut d, &n, s, KeyOperation::UpdateAllKeys).unwrap();
    // The device's answers no longer open under the old response key.
    let mut out = vec![0u8; 256];
    let len = s.seal(&get_state(v), &mut out).unwrap();
    let reply = d.handle(&out[..len]).unwrap();
    let mut stale = old.response.clone();
    let mut buf = vec![0u8; 256];
    for seq in 0..8 {
        stale.sequence = seq;
        assert_eq!(secured::open(&mut stale, s.id, &reply, &mut buf), Err(SecuredError::Authentication));
    }
    assert!(s.open(&reply, &mut buf).is_ok());
    // A request under the old request key is refused and ends the session on the device.
    let mut stale = old.clone();
    stale.request.sequence = 10;
    let len = stale.seal(&get_state(v), &mut out).unwrap();
    let reply = d.handle(&out[..len]).unwrap();
    assert_eq!(s.open(&reply, &mut buf).unwrap(), [v, 0x7F, 0x06, 0], "ERROR(DecryptError)");
    assert_eq!(d.session_count(), 0);
}

#[test]
fn the_device_answers_a_resent_update_under_the_old_key_without_moving_again() {
    let mut d = Device::new(Config::default()).unwrap();
    let (n, s) = connect(&mut d);
    let v = n.version;
    // KEY_UPDATE(UpdateAllKeys, tag 7) whose ACK the TSM "lost", sent again under the old key.
    let mut first = s.clone();
    let mut out = vec![0u8; 128];
    let len = first.seal(&[v, 0xE9, 2, 7], &mut out).unwrap();
    assert!(d.handle(&out[..len]).is_some());
    let mut again = s.clone();
    again.request.sequence = first.request.sequence;
    let len = again.seal(&[v, 0xE9, 2, 7], &mut out).unwrap();
    let reply = d.handle(&out[..len]).unwrap();
    let mut rsp = s.response.updated();
    rsp.sequence = 1;
    let mut buf = vec![0u8; 64];
    assert_eq!(secured::open(&mut rsp, s.id, &reply, &mut buf).unwrap(), [v, 0x69, 2, 7]);
    // Another request under the old key is no retry: DecryptError, session gone.
    let len = again.seal(&[v, 0xE9, 2, 8], &mut out).unwrap();
    let reply = d.handle(&out[..len]).unwrap();
    assert_eq!(secured::open(&mut rsp, s.id, &reply, &mut buf).unwrap(), [v, 0x7F, 0x06, 0]);
    assert_eq!(d.session_count(), 0);
}

#[test]
fn the_device_refuses_verify_new_key_without_an_update_and_a_second_update_before_verifying() {
    let mut d = Device::new(Config::default()).unwrap();
    let (n, mut s) = connect(&mut d);
    let v = n.version;
    assert_eq!(secured(&mut d, &mut s, &[v, 0xE9, 3, 1]).unwrap(), [v, 0x7F, 0x01, 0]);
    assert_eq!(secured(&mut d, &mut s, &[v, 0xE9, 9, 1]).unwrap(), [v, 0x7F, 0x01, 0], "no such operation");
    assert_eq!(secured(&mut d, &mut s, &[v, 0xE9, 1, 1, 0]).unwrap(), [v, 0x7F, 0x01, 0], "exact size");
    assert_eq!(secured(&mut d, &mut s, &[v, 0xE9, 1, 1]).unwrap(), [v, 0x69, 1, 1]);
    s.request = s.request.updated();
    assert_eq!(secured(&mut d, &mut s, &[v, 0xE9, 2, 2]).unwrap(), [v, 0x7F, 0x01, 0], "update before verify");
    assert_eq!(secured(&mut d, &mut s, &[v, 0xE9, 3, 3]).unwrap(), [v, 0x69, 3, 3]);
}

#[test]
fn key_update_in_the_clear_needs_a_session() {
    let mut d = Device::new(Config::default()).unwrap();
    let (n, _) = negotiate(&mut d).unwrap();
    let reply = spdm_payload(&d.handle(&spdm_object(&[n.version, 0xE9, 2, 1])).unwrap());
    assert_eq!(&reply[..4], &[n.version, 0x7F, 0x0B, 0], "SessionRequired");
}

#[test]
fn a_failed_key_update_leaves_no_session_on_the_tsm_side() {
    let mut d = Device::new(Config::default()).unwrap();
    let (n, s) = connect(&mut d);
    let mut ku = KeyUpdate::new(s, &n, KeyOperation::UpdateAllKeys, [1, 2]).unwrap();
    assert!(matches!(ku.start(), Action::Send(_)));
    // The host hands back something that is not the device's answer.
    assert!(matches!(ku.step(&[1, 0, 2, 0, 2, 0, 0, 0]), Action::Failed(SpdmError::Secured(_))));
    assert!(ku.session().is_none());
    assert!(ku.into_session().is_none());
}

#[test]
fn the_device_refuses_key_update_from_a_requester_without_key_upd_cap() {
    use tsm::spdm::cert::CertRetrieval;
    use tsm::spdm::session::KeyExchange;
    let mut d = Device::new(Config::default()).unwrap();
    // VCA by hand, announcing ENCRYPT | MAC | KEY_EX only; each response without DOE padding.
    fn ask(d: &mut Device, vca: &mut Vec<u8>, m: &[u8], exact: fn(&[u8]) -> usize) -> Vec<u8> {
        let r = spdm_payload(&d.handle(&spdm_object(m)).unwrap());
        let r = r[..exact(&r)].to_vec();
        vca.extend_from_slice(m);
        vca.extend_from_slice(&r);
        r
    }
    let mut vca = Vec::new();
    let version = ask(&mut d, &mut vca, &[0x10, 0x84, 0, 0], |r| 6 + 2 * usize::from(r[5]));
    assert_eq!(version[1], 0x04);
    let mut caps = vec![0x13, 0xE1, 0, 0, 0, 0, 0, 0];
    caps.extend_from_slice(&0x2C0u32.to_le_bytes());
    caps.extend_from_slice(&0x1000u32.to_le_bytes());
    caps.extend_from_slice(&0x1000u32.to_le_bytes());
    let rsp = ask(&mut d, &mut vca, &caps, |_| 20);
    let flags = u32::from_le_bytes([rsp[8], rsp[9], rsp[10], rsp[11]]);
    let mut algs = vec![0x13, 0xE3, 3, 0, 44, 0, 1, 2];
    algs.extend_from_slice(&0x80u32.to_le_bytes());
    algs.extend_from_slice(&0x02u32.to_le_bytes());
    algs.extend_from_slice(&[0; 16]);
    algs.extend_from_slice(&[2, 0x20, 0x10, 0, 3, 0x20, 0x02, 0, 5, 0x20, 0x01, 0]);
    let rsp = ask(&mut d, &mut vca, &algs, |r| usize::from(u16::from_le_bytes([r[4], r[5]])));
    assert_eq!(rsp[1], 0x63);
    let n = Negotiated::p384(0x13, flags, 0x1000, 0x1000);
    let mut c = Box::new(CertRetrieval::new(&n, &vca));
    let r: Result<(), SpdmError> = drive!(&mut d, c);
    r.unwrap();
    let chain = c.chain().unwrap();
    let mut k = Box::new(KeyExchange::new(&n, &vca, &chain.hash(), *chain.leaf_key(), [4; 48], [5; 32]).unwrap());
    let r: Result<(), SpdmError> = drive!(&mut d, k);
    r.unwrap();
    let mut s = k.session().unwrap().clone();
    assert_eq!(secured(&mut d, &mut s, &[0x13, 0xE9, 2, 1]).unwrap(), [0x13, 0x7F, 0x07, 0xE9], "UnsupportedRequest");
}
