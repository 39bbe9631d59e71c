//! Every fault switch of the device against the TSM's requester: the requester stops with the
//! specific error, the connection on the TSM's side is failed, and nothing half-done is kept (no
//! session, no evidence, no key update, no nonce or report taken as valid).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use sha2::{Digest, Sha384};
use tdisp_device::{Config, Device, Faults, Reply, Signed};
use tsm::doe::{Action, DoeError};
use tsm::spdm::chain::ChainError;
use tsm::spdm::connect::{Connect, ConnectError, ConnectRandom, Stage};
use tsm::spdm::key_update::{KeyOperation, KeyUpdate};
use tsm::spdm::secured::SecuredError;
use tsm::spdm::session::Session;
use tsm::spdm::sig::SigError;
use tsm::spdm::{Negotiated, SpdmError};
use tsm::tdisp::{DeviceError, InterfaceId, InterfaceReport, ReportError, Request, Response, TdiState, TdispError};

fn random() -> ConnectRandom {
    ConnectRandom {
        challenge_nonce: [1; 32],
        measurement_nonce: [2; 32],
        context: [3; 8],
        ephemeral: [4; 48],
        random: [5; 32],
    }
}

fn device(faults: Faults, version: u8) -> Device {
    Device::new(Config { faults, spdm_versions: vec![version], ..Config::default() }).unwrap()
}

/// Runs `Connect` against `t` to its end.
fn connect(t: &mut impl Transport) -> Connect {
    let mut c = Connect::new(random());
    let _: Result<(), ConnectError> = drive!(t, c);
    c
}

/// The connection failed with `want` and keeps nothing: no session, no evidence.
fn assert_failed(c: &Connect, want: ConnectError) {
    assert_eq!(c.error(), Some(want));
    assert_ne!(c.stage(), Stage::Connected);
    assert!(c.session().is_none(), "{want:?}: no session");
    assert!(c.chain().is_none() && c.chain_bytes().is_none(), "{want:?}: no chain as evidence");
    assert!(c.measurements().is_none(), "{want:?}: no measurements as evidence");
    // A failed connection stays failed whatever comes next.
    let mut c = c.clone();
    assert_eq!(c.step(&[]), Action::Failed(want));
}

fn fails(faults: Faults, want: ConnectError) {
    for version in [0x12, 0x13] {
        let mut d = device(faults.clone(), version);
        assert_failed(&connect(&mut d), want);
    }
}

fn spdm(stage: Stage, e: SpdmError) -> ConnectError {
    ConnectError::Spdm(stage, e)
}

fn bad_length(code: u8, len: usize) -> SpdmError {
    SpdmError::BadLength { code, len }
}

#[test]
fn bad_signature_of_each_signed_message_fails_its_stage() {
    let mismatch = SpdmError::Signature(SigError::Mismatch);
    for (signed, stage) in [
        (Signed::ChallengeAuth, Stage::Challenge),
        (Signed::Measurements, Stage::Measurements),
        (Signed::KeyExchangeRsp, Stage::Session),
    ] {
        fails(Faults { bad_signature: Some(signed), ..Faults::default() }, spdm(stage, mismatch));
    }
}

#[test]
fn a_chain_that_does_not_chain_fails_the_certificates() {
    fails(
        Faults { broken_chain: true, ..Faults::default() },
        spdm(Stage::Certificates, SpdmError::Chain(ChainError::Signature { index: 1 })),
    );
}

#[test]
fn an_end_entity_certificate_cannot_issue_the_device_certificate() {
    // root -> CA -> the device's leaf -> impostor, signed with the leaf's key: every signature
    // verifies, and the device signs CHALLENGE_AUTH with the impostor's key. The first rule the
    // chain breaks is its CA's pathLenConstraint 0 (the leaf now issues below it); the next, the
    // leaf is no CA (`attest/tests/device.rs` lists both).
    fails(
        Faults { impostor_leaf: true, ..Faults::default() },
        spdm(Stage::Certificates, SpdmError::Chain(ChainError::PathLength { index: 1 })),
    );
}

#[test]
fn wrong_session_id_fails_the_session() {
    // The session is 0xFFFF_FFFF (the device's half 0xFFFF, as libspdm's first); the fault names
    // 0xFFFE_FFFF instead.
    fails(
        Faults { wrong_session_id: true, ..Faults::default() },
        spdm(Stage::Session, SpdmError::Secured(SecuredError::Session { got: 0xFFFE_FFFF })),
    );
}

/// (reply, stage, error when truncated, error when over-long) for SPDM 1.2.
fn reply_table() -> Vec<(Reply, Stage, SpdmError, SpdmError)> {
    use Stage::*;
    vec![
        (Reply::Version, Negotiation, bad_length(0x04, 4), bad_length(0x04, 8)),
        (
            Reply::Capabilities,
            Negotiation,
            bad_length(0x61, 16),
            SpdmError::Doe(DoeError::LengthMismatch { header: 32, received: 28 }),
        ),
        (Reply::Algorithms, Negotiation, bad_length(0x63, 36), bad_length(0x63, 52)),
        (Reply::Digests, Certificates, bad_length(0x01, 40), bad_length(0x01, 52)),
        // The whole chain in one CERTIFICATE (both sides take chunks, and it fits a transfer):
        // one PortionLength too many takes a byte of the DOE padding, which is zero, into the
        // chain, which then fails its DIGESTS entry.
        (Reply::Certificate, Certificates, bad_length(0x02, 1260), SpdmError::DigestMismatch),
        (Reply::ChallengeAuth, Challenge, bad_length(0x03, 140), bad_length(0x03, 184)),
        (Reply::Measurements, Measurements, bad_length(0x60, 216), bad_length(0x60, 284)),
        (Reply::KeyExchangeRsp, Session, bad_length(0x64, 224), bad_length(0x64, 296)),
        (Reply::FinishRsp, Session, bad_length(0x65, 2), SpdmError::Secured(SecuredError::Length)),
    ]
}

#[test]
fn a_truncated_response_fails_with_its_length() {
    for (reply, stage, truncated, _) in reply_table() {
        let mut d = device(Faults { truncate: Some(reply), ..Faults::default() }, 0x12);
        assert_failed(&connect(&mut d), spdm(stage, truncated));
    }
}

#[test]
fn a_length_field_larger_than_the_message_fails_with_its_length() {
    for (reply, stage, _, overlong) in reply_table() {
        let mut d = device(Faults { overlong_length: Some(reply), ..Faults::default() }, 0x12);
        assert_failed(&connect(&mut d), spdm(stage, overlong));
    }
}

#[test]
fn a_dropped_response_fails_the_stage_it_was_awaited_in() {
    for (reply, stage, _, _) in reply_table() {
        let mut d = device(Faults { drop_response: Some(reply), ..Faults::default() }, 0x12);
        let nothing = DoeError::Truncated { len: 0 };
        let want = if reply == Reply::FinishRsp {
            SpdmError::Secured(SecuredError::Doe(nothing))
        } else {
            SpdmError::Doe(nothing)
        };
        assert_failed(&connect(&mut d), spdm(stage, want));
    }
}

#[test]
fn a_dropped_response_over_the_socket_is_an_empty_normal_frame() {
    let (port, server) = spawn(Config {
        faults: Faults { drop_response: Some(Reply::Measurements), ..Faults::default() },
        ..Config::default()
    });
    let mut client = Client::connect(port);
    let c = connect(&mut client);
    assert_failed(&c, spdm(Stage::Measurements, SpdmError::Doe(DoeError::Truncated { len: 0 })));
    // The stream stays in step: the next connection attempt on it gets its answers.
    let (n, _) = negotiate(&mut client).unwrap();
    assert_eq!(n.version, 0x13);
    client.shutdown();
    server.join().unwrap();
}

#[test]
fn a_wrong_measurement_still_verifies_but_the_evidence_differs() {
    // The TSM cannot know reference values: the signature verifies and the connection succeeds.
    // What it must do is keep the signed transcript faithfully, so that the verifier, which has
    // the reference values, sees the other value and rejects it.
    let good = connect(&mut device(Faults::default(), 0x13));
    let mut d = device(Faults { wrong_measurement: Some(2), ..Faults::default() }, 0x13);
    let bad = connect(&mut d);
    assert_eq!(bad.error(), None);
    assert_eq!(bad.stage(), Stage::Connected);
    let (g, b) = (good.measurements().unwrap(), bad.measurements().unwrap());
    assert_eq!(g.len(), b.len());
    assert_ne!(Sha384::digest(g), Sha384::digest(b), "the evidence digests differ");
    let differing: Vec<usize> = (0..g.len()).filter(|&i| g[i] != b[i]).collect();
    // The value of block 2 (after the 45-byte request, the 8-byte header, block 1 of 7 + 48
    // bytes, and block 2's 7-byte header), and the signature over it: nothing else.
    let value_at = 45 + 8 + (7 + 48) + 7;
    assert_eq!(differing[0], value_at);
    assert_eq!(g[value_at] ^ b[value_at], 0x01, "one bit of the value");
    let signature_at = g.len() - 96;
    assert!(differing[1..].iter().all(|&i| i >= signature_at), "only the signature besides the value");
    assert_eq!(Sha384::digest(good.chain_bytes().unwrap()), Sha384::digest(bad.chain_bytes().unwrap()));
}

// TDISP and KEY_UPDATE faults, inside a good session.

fn session(d: &mut Device) -> (Negotiated, Session) {
    let c = connect(d);
    assert_eq!(c.error(), None);
    (c.negotiated().unwrap(), c.session().unwrap().clone())
}

fn iface() -> InterfaceId {
    InterfaceId(Config::default().interfaces[0].function_id)
}

const LOCK: Request<'static> = Request::Lock { flags: 0x4, default_stream: 0, mmio_reporting_offset: 0, p2p_mask: 0 };

fn lock(d: &mut Device, s: &mut Session, v: u8) -> [u8; 32] {
    assert!(matches!(tdisp_call(d, s, v, iface(), &Request::GetVersion), Ok(Response::Version(_))));
    match tdisp_call(d, s, v, iface(), &LOCK).unwrap() {
        Response::Locked { nonce } => nonce,
        other => panic!("{other:?}"),
    }
}

fn report(d: &mut Device, s: &mut Session, v: u8) -> Result<Vec<u8>, TdispError> {
    let mut out = Vec::new();
    loop {
        let r = Request::GetReport { offset: out.len() as u16, length: 0x400 };
        let Response::ReportPortion { portion, remainder } = tdisp_call(d, s, v, iface(), &r)? else { panic!() };
        out.extend_from_slice(portion);
        if remainder == 0 {
            return Ok(out);
        }
    }
}

#[test]
fn overlapping_ranges_fail_the_report_parser() {
    let mut d = device(Faults { overlapping_ranges: true, ..Faults::default() }, 0x13);
    let (n, mut s) = session(&mut d);
    lock(&mut d, &mut s, n.version);
    let r = report(&mut d, &mut s, n.version).unwrap();
    assert_eq!(InterfaceReport::parse(&r).err(), Some(ReportError::Range { index: 1 }));
}

#[test]
fn a_tdi_in_error_after_lock_refuses_report_and_start() {
    let mut d = device(Faults { error_after_lock: true, ..Faults::default() }, 0x13);
    let (n, mut s) = session(&mut d);
    let v = n.version;
    let nonce = lock(&mut d, &mut s, v);
    assert_eq!(tdisp_call(&mut d, &mut s, v, iface(), &Request::GetState), Ok(Response::State(TdiState::Error)));
    let invalid_state = TdispError::Device(DeviceError::InvalidInterfaceState);
    assert_eq!(report(&mut d, &mut s, v), Err(invalid_state));
    assert_eq!(tdisp_call(&mut d, &mut s, v, iface(), &Request::Start { nonce: &nonce }), Err(invalid_state));
    assert_eq!(d.tdis()[0].state, TdiState::Error);
    // From ERROR only STOP leads out.
    assert_eq!(tdisp_call(&mut d, &mut s, v, iface(), &Request::Stop), Ok(Response::Stopped));
    assert_eq!(d.tdis()[0].state, TdiState::ConfigUnlocked);
}

#[test]
fn a_refused_start_leaves_the_tdi_locked() {
    let mut d = device(Faults { refuse_start: true, ..Faults::default() }, 0x13);
    let (n, mut s) = session(&mut d);
    let v = n.version;
    let nonce = lock(&mut d, &mut s, v);
    assert_eq!(
        tdisp_call(&mut d, &mut s, v, iface(), &Request::Start { nonce: &nonce }),
        Err(TdispError::Device(DeviceError::Unspecified))
    );
    assert_eq!(tdisp_call(&mut d, &mut s, v, iface(), &Request::GetState), Ok(Response::State(TdiState::ConfigLocked)));
}

#[test]
fn tdisp_replies_truncated_or_over_long_fail_the_codec() {
    for (faults, request) in [
        (Faults { truncate: Some(Reply::Tdisp(0x83)), ..Faults::default() }, LOCK),
        (Faults { overlong_length: Some(Reply::Tdisp(0x83)), ..Faults::default() }, LOCK),
        (Faults { truncate: Some(Reply::Tdisp(0x85)), ..Faults::default() }, Request::GetState),
    ] {
        let mut d = device(faults, 0x13);
        let (n, mut s) = session(&mut d);
        let r = tdisp_call(&mut d, &mut s, n.version, iface(), &request);
        assert!(matches!(r, Err(TdispError::Length { .. })), "{r:?}");
    }
    // A report portion announcing one byte more than it carries.
    let mut d = device(Faults { overlong_length: Some(Reply::Tdisp(0x84)), ..Faults::default() }, 0x13);
    let (n, mut s) = session(&mut d);
    lock(&mut d, &mut s, n.version);
    assert!(matches!(report(&mut d, &mut s, n.version), Err(TdispError::Length { code: 0x04, .. })));
}

fn key_update(faults: Faults) -> KeyUpdate {
    let mut d = device(faults, 0x13);
    let (n, s) = session(&mut d);
    let mut ku = KeyUpdate::new(s, &n, KeyOperation::UpdateAllKeys, [7, 8]).unwrap();
    let _: Result<(), SpdmError> = drive!(&mut d, ku);
    ku
}

#[test]
fn key_update_faults_fail_it_and_drop_the_session() {
    for (faults, want) in [
        (
            Faults { drop_response: Some(Reply::KeyUpdateAck), ..Faults::default() },
            SpdmError::Secured(SecuredError::Doe(DoeError::Truncated { len: 0 })),
        ),
        (Faults { truncate: Some(Reply::KeyUpdateAck), ..Faults::default() }, bad_length(0x69, 2)),
        (
            Faults { overlong_length: Some(Reply::KeyUpdateAck), ..Faults::default() },
            SpdmError::Secured(SecuredError::Length),
        ),
    ] {
        let ku = key_update(faults);
        assert_eq!(ku.error(), Some(want));
        assert!(ku.session().is_none(), "{want:?}: no session kept");
    }
}

#[test]
fn the_fault_switches_parse_from_the_command_line() {
    let mut f = Faults::default();
    f.apply_spec("truncate=measurements").unwrap();
    f.apply_spec("bad-signature=key-exchange-rsp").unwrap();
    assert_eq!(
        f,
        Faults {
            truncate: Some(Reply::Measurements),
            bad_signature: Some(Signed::KeyExchangeRsp),
            ..Faults::default()
        }
    );
}

#[test]
fn idekm_replies_truncated_or_over_long_fail_the_codec() {
    use tsm::idekm::{self, IdeKmError, KeySlot};
    let slot = KeySlot { key_set_1: false, transmit: false, sub_stream: 0 };
    let prog = idekm::Request::KeyProg { stream: 1, slot, port: 0, key: &[7; 32], ifv: &[1; 8] };
    for (faults, want) in [
        (Faults { truncate: Some(Reply::IdeKm), ..Faults::default() }, IdeKmError::Length),
        (Faults { overlong_length: Some(Reply::IdeKm), ..Faults::default() }, IdeKmError::Length),
    ] {
        let mut d = device(faults, 0x13);
        let (n, mut s) = session(&mut d);
        let v = n.version;
        let mut out = [0u8; 128];
        let len = idekm::encode(v, &idekm::Request::Query { port: 0 }, &mut out).unwrap();
        let reply = secured(&mut d, &mut s, &out[..len]).unwrap();
        assert_eq!(idekm::decode_query(v, 0, &reply).err(), Some(want), "QUERY_RESP");
        let len = idekm::encode(v, &prog, &mut out).unwrap();
        let reply = secured(&mut d, &mut s, &out[..len]).unwrap();
        assert_eq!(idekm::check_ack(v, &prog, &reply), Err(want), "KP_ACK");
    }
}

#[test]
fn end_session_ack_faults_fail_the_check() {
    for (faults, want) in [
        (
            Faults { drop_response: Some(Reply::EndSessionAck), ..Faults::default() },
            SpdmError::Secured(SecuredError::Doe(DoeError::Truncated { len: 0 })),
        ),
        (Faults { truncate: Some(Reply::EndSessionAck), ..Faults::default() }, bad_length(0x6C, 2)),
        (
            Faults { overlong_length: Some(Reply::EndSessionAck), ..Faults::default() },
            SpdmError::Secured(SecuredError::Length),
        ),
    ] {
        let mut d = device(faults, 0x13);
        let (_, mut s) = session(&mut d);
        let mut out = [0u8; 64];
        let n = s.end(&mut out).unwrap();
        let reply = d.exchange(&out[..n]);
        assert_eq!(s.check_end_ack(&reply), Err(want));
    }
}

#[test]
fn a_plain_reply_corrupted_after_framing_fails_its_stage() {
    for (reply, stage) in [(Reply::Measurements, Stage::Measurements), (Reply::ChallengeAuth, Stage::Challenge)] {
        let mut d = device(Faults { corrupt: Some(reply), ..Faults::default() }, 0x13);
        let c = connect(&mut d);
        assert!(matches!(c.error(), Some(ConnectError::Spdm(s, _)) if s == stage), "{reply}: {:?}", c.error());
        assert_failed(&c, c.error().unwrap());
    }
}

#[test]
fn a_secured_reply_corrupted_after_sealing_does_not_open() {
    let mut d = device(Faults { corrupt: Some(Reply::Tdisp(0x83)), ..Faults::default() }, 0x13);
    let (n, mut s) = session(&mut d);
    let v = n.version;
    assert!(matches!(tdisp_call(&mut d, &mut s, v, iface(), &Request::GetVersion), Ok(Response::Version(_))));
    let mut out = [0u8; 128];
    let len = tsm::tdisp::encode(v, iface(), &LOCK, &mut out).unwrap();
    // An answer came, but it does not open under the session's keys (the AEAD tag fails).
    let Err(sealed) = secured(&mut d, &mut s, &out[..len]) else { panic!("the corrupted answer opened") };
    assert!(sealed.len() > 8, "an answer was sent");
    // The device did lock: only the answer was damaged on the way.
    assert_eq!(d.tdis()[0].state, TdiState::ConfigLocked);
}

#[test]
fn end_session_on_lock_forgets_the_session_and_answers_nothing() {
    let mut d = device(Faults { end_session_on: Some(Reply::Tdisp(0x83)), ..Faults::default() }, 0x13);
    let (n, mut s) = session(&mut d);
    let v = n.version;
    assert!(matches!(tdisp_call(&mut d, &mut s, v, iface(), &Request::GetVersion), Ok(Response::Version(_))));
    assert_eq!(d.session_count(), 1);
    let mut out = [0u8; 128];
    let len = tsm::tdisp::encode(v, iface(), &LOCK, &mut out).unwrap();
    assert_eq!(secured(&mut d, &mut s, &out[..len]), Err(Vec::new()), "no answer at all");
    assert_eq!(d.session_count(), 0);
    assert_eq!(d.tdis()[0].state, TdiState::ConfigUnlocked, "LOCK was never processed");
}

#[test]
fn a_late_device_waits_before_each_answer_over_the_socket() {
    let (port, server) =
        spawn(Config { faults: Faults { late_ms: Some(40), ..Faults::default() }, ..Config::default() });
    let mut client = Client::connect(port);
    let t = std::time::Instant::now();
    let (n, _) = negotiate(&mut client).unwrap();
    // GET_VERSION, GET_CAPABILITIES, NEGOTIATE_ALGORITHMS: each answer held 40 ms.
    assert!(t.elapsed() >= std::time::Duration::from_millis(120), "{:?}", t.elapsed());
    assert_eq!(n.version, 0x13);
    client.shutdown();
    server.join().unwrap();
}
