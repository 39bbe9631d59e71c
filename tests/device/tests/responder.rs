//! The responder against the specs, in-process: each bad request gets its specific SPDM ERROR or
//! TDISP_ERROR (names follow `<request>_rejects_<condition>`), and the state changes a request
//! must or must not make.

// Test-only crate: helpers outside `#[test]` functions may panic too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use tdisp_device::{Config, Device};
use tsm::spdm::session::Session;
use tsm::tdisp::{DeviceError, InterfaceId, Request, Response, TdiState, TdispError};

fn device() -> Device {
    Device::new(Config::default()).unwrap()
}

/// Sends one SPDM message in the clear; returns the reply message (DOE padding included).
fn ask(d: &mut Device, m: &[u8]) -> Vec<u8> {
    spdm_payload(&d.handle(&spdm_object(m)).expect("a reply"))
}

fn negotiated(d: &mut Device) -> u8 {
    negotiate(d).unwrap().0.version
}

#[test]
fn discovery_lists_the_table_and_refuses_indices_past_it() {
    let mut d = device();
    let reply = d.handle(&[1, 0, 0, 0, 3, 0, 0, 0, 3, 0, 0, 0]).unwrap();
    assert_eq!(reply, [1, 0, 0, 0, 3, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0]);
    assert_eq!(d.handle(&[1, 0, 0, 0, 3, 0, 0, 0]), None, "length mismatch: no response");
    assert_eq!(d.handle(&[2, 0, 1, 0, 3, 0, 0, 0, 0x10, 0x84, 0, 0]), None, "another vendor");
}

#[test]
fn get_version_rejects_a_version_other_than_1_0() {
    let mut d = device();
    assert_eq!(ask(&mut d, &[0x12, 0x84, 0, 0]), [0x10, 0x7F, 0x41, 0]);
}

#[test]
fn requests_before_get_version_are_unexpected() {
    let mut d = device();
    assert_eq!(ask(&mut d, &[0x12, 0x81, 0, 0]), [0x10, 0x7F, 0x04, 0]);
}

#[test]
fn get_capabilities_rejects_a_version_not_offered() {
    let mut d = device();
    let v = ask(&mut d, &[0x10, 0x84, 0, 0]);
    assert_eq!(v, [0x10, 0x04, 0, 0, 0, 2, 0x00, 0x12, 0x00, 0x13, 0, 0]);
    let mut caps = [0u8; 20];
    caps[..2].copy_from_slice(&[0x11, 0xE1]);
    assert_eq!(ask(&mut d, &caps), [0x10, 0x7F, 0x41, 0]);
}

#[test]
fn get_capabilities_rejects_inconsistent_sizes() {
    let mut d = device();
    ask(&mut d, &[0x10, 0x84, 0, 0]);
    let mut caps = [0u8; 20];
    caps[..2].copy_from_slice(&[0x12, 0xE1]);
    caps[8..12].copy_from_slice(&0x2C0u32.to_le_bytes());
    caps[12..16].copy_from_slice(&0x800u32.to_le_bytes());
    caps[16..20].copy_from_slice(&0x1000u32.to_le_bytes());
    assert_eq!(ask(&mut d, &caps), [0x12, 0x7F, 0x01, 0], "DataTransferSize != MaxSPDMmsgSize without CHUNK");
}

#[test]
fn negotiate_algorithms_before_capabilities_is_unexpected() {
    let mut d = device();
    ask(&mut d, &[0x10, 0x84, 0, 0]);
    let mut m = [0u8; 32];
    m[..2].copy_from_slice(&[0x12, 0xE3]);
    assert_eq!(ask(&mut d, &m), [0x10, 0x7F, 0x04, 0], "no version settled yet: errors carry 1.0");
}

#[test]
fn negotiate_algorithms_rejects_a_request_without_the_suite() {
    let mut d = device();
    ask(&mut d, &[0x10, 0x84, 0, 0]);
    let mut caps = [0u8; 20];
    caps[..2].copy_from_slice(&[0x13, 0xE1]);
    caps[8..12].copy_from_slice(&0x2C0u32.to_le_bytes());
    caps[12..16].copy_from_slice(&0x1000u32.to_le_bytes());
    caps[16..20].copy_from_slice(&0x1000u32.to_le_bytes());
    assert_eq!(ask(&mut d, &caps)[1], 0x61);
    let mut m = vec![0u8; 44];
    m[..4].copy_from_slice(&[0x13, 0xE3, 3, 0]);
    m[4..6].copy_from_slice(&44u16.to_le_bytes());
    m[6] = 1;
    m[7] = 2;
    m[8..12].copy_from_slice(&0x10u32.to_le_bytes()); // ECDSA P-256 only
    m[12..16].copy_from_slice(&0x02u32.to_le_bytes());
    m[32..].copy_from_slice(&[2, 0x20, 0x10, 0, 3, 0x20, 0x02, 0, 5, 0x20, 0x01, 0]);
    assert_eq!(ask(&mut d, &m), [0x13, 0x7F, 0x01, 0]);
    m[8] = 0x80;
    m[32..36].copy_from_slice(&[3, 0x20, 0x02, 0]); // two AEAD tables: not ascending
    assert_eq!(ask(&mut d, &m), [0x13, 0x7F, 0x01, 0]);
    m[32..36].copy_from_slice(&[2, 0x20, 0x10, 0]);
    let ok = ask(&mut d, &m);
    assert_eq!(&ok[..4], &[0x13, 0x63, 3, 0]);
}

#[test]
fn get_digests_before_negotiation_is_unexpected() {
    let mut d = device();
    ask(&mut d, &[0x10, 0x84, 0, 0]);
    assert_eq!(ask(&mut d, &[0x12, 0x81, 0, 0]), [0x10, 0x7F, 0x04, 0]);
}

#[test]
fn requests_in_another_version_get_version_mismatch() {
    let mut d = device();
    let v = negotiated(&mut d);
    assert_eq!(v, 0x13);
    assert_eq!(ask(&mut d, &[0x12, 0x81, 0, 0]), [0x13, 0x7F, 0x41, 0]);
}

#[test]
fn unknown_and_session_only_requests() {
    let mut d = device();
    negotiated(&mut d);
    assert_eq!(ask(&mut d, &[0x13, 0xE8, 0, 0]), [0x13, 0x7F, 0x0B, 0], "HEARTBEAT needs a session");
    assert_eq!(ask(&mut d, &[0x13, 0xEA, 0, 0]), [0x13, 0x7F, 0x07, 0xEA], "no encapsulated requests");
    assert_eq!(ask(&mut d, &[0x13, 0xEC, 0, 0]), [0x13, 0x7F, 0x0B, 0], "END_SESSION needs a session");
    let mut tdisp = [0u8; 64];
    let n = tsm::tdisp::encode(0x13, InterfaceId(0x18), &Request::GetVersion, &mut tdisp).unwrap();
    assert_eq!(ask(&mut d, &tdisp[..n]), [0x13, 0x7F, 0x0B, 0], "no TDISP in the clear");
    assert_eq!(ask(&mut d, &[0x13, 0xE5, 0, 0]), [0x13, 0x7F, 0x04, 0], "FINISH in the clear");
}

#[test]
fn get_certificate_honours_offset_and_length() {
    let mut d = device();
    negotiated(&mut d);
    let chain = d.identity().chain.clone();
    let r = ask(&mut d, &[0x13, 0x82, 0, 0, 10, 0, 100, 0]);
    assert_eq!(
        &r[..8],
        &[0x13, 0x02, 0, 0, 100, 0, 0, 0][..6]
            .iter()
            .chain(&((chain.len() - 110) as u16).to_le_bytes())
            .copied()
            .collect::<Vec<_>>()[..]
    );
    assert_eq!(&r[8..108], &chain[10..110]);
    assert_eq!(ask(&mut d, &[0x13, 0x82, 1, 0, 0, 0, 100, 0]), [0x13, 0x7F, 0x01, 0], "slot 1");
    let past = (chain.len() as u16).to_le_bytes();
    assert_eq!(
        ask(&mut d, &[0x13, 0x82, 0, 0, past[0], past[1], 100, 0]),
        [0x13, 0x7F, 0x01, 0],
        "offset past the end"
    );
}

#[test]
fn get_measurements_counts_and_picks_single_indices() {
    let mut d = device();
    negotiated(&mut d);
    let r = ask(&mut d, &[0x13, 0xE0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!((r[2], r[4]), (3, 0), "operation 0: the count, no blocks");
    let r = ask(&mut d, &[0x13, 0xE0, 0, 3, 1, 2, 3, 4, 5, 6, 7, 8]);
    let block = Config::default().measurements[2].encode();
    assert_eq!(r[4], 1);
    assert_eq!(&r[8..8 + block.len()], &block[..]);
    assert_eq!(&r[8 + block.len() + 34..8 + block.len() + 42], &[1, 2, 3, 4, 5, 6, 7, 8], "RequesterContext echoed");
    assert_eq!(ask(&mut d, &[0x13, 0xE0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0]), [0x13, 0x7F, 0x01, 0], "no index 9");
}

#[test]
fn challenge_and_measurements_verify_after_each_other() {
    let mut d = device();
    let c = authenticate(&mut d);
    challenge(&mut d, &c).unwrap();
    measure(&mut d, &c).unwrap();
    measure(&mut d, &c).unwrap();
}

/// GET_MEASUREMENTS inside a session (DSP0274 1.2 §10.11): signed over the VCA and the
/// session's own measurement exchanges; the clear-text L1 is not touched.
#[test]
fn get_measurements_in_a_session_is_signed_over_the_session_transcript() {
    use tsm::doe::{self, Action, ObjectType};
    use tsm::spdm::meas::Measurements;
    let mut d = device();
    let (c, mut s) = open_session(&mut d);
    // An unsigned exchange first: it belongs to the session's L1.
    let count = secured(&mut d, &mut s, &[0x13, 0xE0, 0, 0, 9, 9, 9, 9, 9, 9, 9, 9]).unwrap();
    assert_eq!((count[1], count[2]), (0x60, 3));
    let mut m = Measurements::new(&c.negotiated, &c.vca, c.key, [0x6E; 32], [0x4C; 8]);
    let Action::Send(request) = m.start() else { panic!("no request") };
    let request = doe::decode_as(request, ObjectType::Spdm).unwrap()[..45].to_vec();
    let reply = secured(&mut d, &mut s, &request).unwrap();
    // The signature covers VCA ‖ the unsigned pair ‖ this pair: the TSM's one-shot check
    // (VCA ‖ this pair) must therefore fail, and succeed once the session's L1 is empty.
    assert!(matches!(m.step(&spdm_object(&reply)), Action::Failed(_)), "the unsigned pair is in L1");
    let mut m = Measurements::new(&c.negotiated, &c.vca, c.key, [0x6E; 32], [0x4C; 8]);
    let Action::Send(request) = m.start() else { panic!("no request") };
    let request = doe::decode_as(request, ObjectType::Spdm).unwrap()[..45].to_vec();
    let reply = secured(&mut d, &mut s, &request).unwrap();
    let _ = m.step(&spdm_object(&reply));
    assert_eq!(m.error(), None);
    assert!(m.exchange().is_some());
}

#[test]
fn heartbeat_needs_a_requester_that_announced_it() {
    let mut d = device();
    let (_, mut s) = open_session(&mut d);
    // The TSM announces no HBEAT_CAP: the device does not take heartbeats from it.
    assert_eq!(secured(&mut d, &mut s, &[0x13, 0xE8, 0, 0]).unwrap(), [0x13, 0x7F, 0x07, 0xE8]);
}

#[test]
fn secured_messages_of_an_unknown_session_get_no_response() {
    let mut d = device();
    let (_, mut s) = open_session(&mut d);
    s.id ^= 0x0001_0000;
    let mut out = [0u8; 128];
    let n = s.seal(&[0x13, 0xEC, 0, 0], &mut out).unwrap();
    assert_eq!(d.handle(&out[..n]), None);
    assert_eq!(d.session_count(), 1);
}

fn lock(d: &mut Device, s: &mut Session) -> Result<Response<'static>, TdispError> {
    let lock = Request::Lock { flags: 0, default_stream: 0, mmio_reporting_offset: 0, p2p_mask: 0 };
    tdisp_call(d, s, 0x13, InterfaceId(0x18), &lock)
}

#[test]
fn a_message_that_does_not_decrypt_ends_the_session_and_errors_the_tdi() {
    let mut d = device();
    let (_, mut s) = open_session(&mut d);
    assert!(matches!(lock(&mut d, &mut s), Ok(Response::Locked { .. })));
    let mut out = [0u8; 128];
    let n = s.seal(&[0x13, 0xEC, 0, 0], &mut out).unwrap();
    out[14] ^= 1; // inside the ciphertext
    let reply = d.handle(&out[..n]).expect("ERROR(DecryptError) inside the session");
    let mut buf = [0u8; 64];
    assert_eq!(s.open(&reply, &mut buf).unwrap(), [0x13, 0x7F, 0x06, 0]);
    assert_eq!(d.session_count(), 0);
    assert_eq!(d.tdis()[0].state, TdiState::Error);
}

#[test]
fn end_session_moves_locked_tdis_to_error_and_stop_recovers() {
    let mut d = device();
    let (_, mut s) = open_session(&mut d);
    assert!(matches!(lock(&mut d, &mut s), Ok(Response::Locked { .. })));
    assert_eq!(secured(&mut d, &mut s, &[0x13, 0xEC, 0, 0]).unwrap(), [0x13, 0x6C, 0, 0]);
    assert_eq!(d.tdis()[0].state, TdiState::Error);
    let (_, mut s) = open_session(&mut d);
    let iface = InterfaceId(0x18);
    assert_eq!(tdisp_call(&mut d, &mut s, 0x13, iface, &Request::GetState), Ok(Response::State(TdiState::Error)));
    assert_eq!(tdisp_call(&mut d, &mut s, 0x13, iface, &Request::Stop), Ok(Response::Stopped));
    assert_eq!(d.tdis()[0].state, TdiState::ConfigUnlocked);
}

fn device_error(e: DeviceError) -> Result<Response<'static>, TdispError> {
    Err(TdispError::Device(e))
}

#[test]
fn lock_interface_rejects_a_locked_tdi_and_unknown_flags() {
    let mut d = device();
    let (_, mut s) = open_session(&mut d);
    let p2p = Request::Lock { flags: 0x8, default_stream: 0, mmio_reporting_offset: 0, p2p_mask: 0 };
    assert_eq!(tdisp_call(&mut d, &mut s, 0x13, InterfaceId(0x18), &p2p), device_error(DeviceError::InvalidRequest));
    assert!(matches!(lock(&mut d, &mut s), Ok(Response::Locked { .. })));
    assert_eq!(lock(&mut d, &mut s), device_error(DeviceError::InvalidInterfaceState));
}

#[test]
fn start_interface_rejects_a_wrong_nonce_and_stays_locked() {
    let mut d = device();
    let (_, mut s) = open_session(&mut d);
    let Ok(Response::Locked { nonce }) = lock(&mut d, &mut s) else { panic!() };
    let mut wrong = nonce;
    wrong[0] ^= 1;
    let iface = InterfaceId(0x18);
    assert_eq!(
        tdisp_call(&mut d, &mut s, 0x13, iface, &Request::Start { nonce: &wrong }),
        device_error(DeviceError::InvalidNonce)
    );
    assert_eq!(d.tdis()[0].state, TdiState::ConfigLocked);
    assert_eq!(tdisp_call(&mut d, &mut s, 0x13, iface, &Request::Start { nonce: &nonce }), Ok(Response::Started));
    assert_eq!(
        tdisp_call(&mut d, &mut s, 0x13, iface, &Request::Start { nonce: &nonce }),
        device_error(DeviceError::InvalidInterfaceState),
        "the nonce is spent and the TDI runs"
    );
}

#[test]
fn get_report_rejects_an_unlocked_tdi() {
    let mut d = device();
    let (_, mut s) = open_session(&mut d);
    let r = Request::GetReport { offset: 0, length: 64 };
    assert_eq!(
        tdisp_call(&mut d, &mut s, 0x13, InterfaceId(0x18), &r),
        device_error(DeviceError::InvalidInterfaceState)
    );
}

#[test]
fn tdisp_rejects_an_unknown_interface() {
    let mut d = device();
    let (_, mut s) = open_session(&mut d);
    assert_eq!(
        tdisp_call(&mut d, &mut s, 0x13, InterfaceId(0x19), &Request::GetState),
        device_error(DeviceError::InvalidInterface)
    );
}

/// A raw TDISP message (after the ProtocolID) through the session; the TDISP reply.
fn raw_tdisp(d: &mut Device, s: &mut Session, t: &[u8]) -> Vec<u8> {
    let mut m = vec![0x13, 0xFE, 0, 0, 3, 0, 2, 1, 0];
    m.extend_from_slice(&((1 + t.len()) as u16).to_le_bytes());
    m.push(1);
    m.extend_from_slice(t);
    let r = secured(d, s, &m).unwrap();
    r[12..].to_vec()
}

fn tdisp_error_of(reply: &[u8]) -> (u8, u32, u32) {
    let le = |at: usize| u32::from_le_bytes([reply[at], reply[at + 1], reply[at + 2], reply[at + 3]]);
    (reply[1], le(16), le(20))
}

#[test]
fn tdisp_rejects_padding_other_versions_and_unsupported_requests() {
    let mut d = device();
    let (_, mut s) = open_session(&mut d);
    let mut get_state = vec![0x10, 0x85, 0, 0, 0x18, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    assert_eq!(raw_tdisp(&mut d, &mut s, &get_state).len(), 17);
    get_state.push(0);
    assert_eq!(tdisp_error_of(&raw_tdisp(&mut d, &mut s, &get_state)), (0x7F, 0x0001, 0), "padded");
    get_state.pop();
    get_state[0] = 0x20;
    assert_eq!(tdisp_error_of(&raw_tdisp(&mut d, &mut s, &get_state)), (0x7F, 0x0041, 0), "TDISP 2.0");
    let bind = [0x10, 0x88, 0, 0, 0x18, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    assert_eq!(tdisp_error_of(&raw_tdisp(&mut d, &mut s, &bind)), (0x7F, 0x0007, 0x88), "BIND_P2P");
}

#[test]
fn stop_is_legal_in_every_state() {
    let mut d = device();
    let (_, mut s) = open_session(&mut d);
    let iface = InterfaceId(0x18);
    assert_eq!(tdisp_call(&mut d, &mut s, 0x13, iface, &Request::Stop), Ok(Response::Stopped), "from UNLOCKED");
    assert!(matches!(lock(&mut d, &mut s), Ok(Response::Locked { .. })));
    assert_eq!(tdisp_call(&mut d, &mut s, 0x13, iface, &Request::Stop), Ok(Response::Stopped), "from LOCKED");
    assert!(d.tdis()[0].nonce.is_none());
}

#[test]
fn key_prog_acks_each_failure_with_its_status() {
    let mut d = device();
    let (_, mut s) = open_session(&mut d);
    let mut kp = vec![0x02, 0, 0, 1, 0, 0x12, 0];
    kp.extend_from_slice(&[0; 40]);
    let ack = |d: &mut Device, s: &mut Session, kp: &[u8]| {
        idekm_reply(&secured(d, s, &idekm_request(0x13, kp)).unwrap()).to_vec()
    };
    assert_eq!(ack(&mut d, &mut s, &kp)[4], 0, "ok");
    kp[6] = 1;
    assert_eq!(ack(&mut d, &mut s, &kp)[4], 2, "unsupported port");
    kp[6] = 0;
    kp[5] = 0x32;
    assert_eq!(ack(&mut d, &mut s, &kp)[4], 3, "sub-stream 3");
    kp[5] = 0x12;
    kp.pop();
    assert_eq!(ack(&mut d, &mut s, &kp)[4], 1, "incorrect length");
    assert_eq!(d.ide_keys().len(), 1);
    let unknown = secured(&mut d, &mut s, &idekm_request(0x13, &[0x07, 0, 0])).unwrap();
    assert_eq!(unknown, [0x13, 0x7F, 0x07, 0xFE], "an IDE_KM object the device does not know");
    let query = secured(&mut d, &mut s, &idekm_request(0x13, &[0x00, 0, 1])).unwrap();
    assert_eq!(query, [0x13, 0x7F, 0x01, 0], "QUERY for a port the device lacks");
}

#[test]
fn end_session_ends_the_session_and_get_version_ends_them_all() {
    let mut d = device();
    let (_, mut s) = open_session(&mut d);
    assert_eq!(secured(&mut d, &mut s, &[0x13, 0xE5, 0, 0]).unwrap(), [0x13, 0x7F, 0x04, 0], "FINISH again");
    assert_eq!(secured(&mut d, &mut s, &[0x13, 0xEC, 0, 0]).unwrap(), [0x13, 0x6C, 0, 0]);
    assert_eq!(d.session_count(), 0);
    open_session(&mut d);
    assert_eq!(d.session_count(), 1);
    negotiate(&mut d).unwrap();
    assert_eq!(d.session_count(), 0);
}

/// VERSION, then CAPABILITIES with `flags`, DataTransferSize `dts` and MaxSPDMmsgSize `max`,
/// then the P-384 algorithms (what the TSM's NEGOTIATE_ALGORITHMS offers); the version.
fn negotiate_as(d: &mut Device, flags: u32, dts: u32, max: u32) {
    ask(d, &[0x10, 0x84, 0, 0]);
    let mut caps = [0u8; 20];
    caps[..2].copy_from_slice(&[0x12, 0xE1]);
    caps[8..12].copy_from_slice(&flags.to_le_bytes());
    caps[12..16].copy_from_slice(&dts.to_le_bytes());
    caps[16..20].copy_from_slice(&max.to_le_bytes());
    assert_eq!(ask(d, &caps)[1], 0x61, "CAPABILITIES");
    // The TSM's own NEGOTIATE_ALGORITHMS, taken from its requester.
    let mut n = tsm::spdm::Negotiation::new();
    let tsm::doe::Action::Send(_) = n.start() else { panic!() };
    let version = spdm_object(&[0x10, 0x04, 0, 0, 0, 1, 0, 0x12]);
    let tsm::doe::Action::Send(_) = n.step(&version) else { panic!() };
    let mut caps_rsp = [0u8; 20];
    caps_rsp[..2].copy_from_slice(&[0x12, 0x61]);
    caps_rsp[8..12].copy_from_slice(&0x2_62F6u32.to_le_bytes());
    caps_rsp[12..16].copy_from_slice(&0x1000u32.to_le_bytes());
    caps_rsp[16..20].copy_from_slice(&0x1000u32.to_le_bytes());
    let tsm::doe::Action::Send(algorithms) = n.step(&spdm_object(&caps_rsp)) else { panic!() };
    let algorithms = spdm_payload(algorithms);
    assert_eq!(ask(d, &algorithms)[1], 0x63, "ALGORITHMS");
}

/// A requester with a small DataTransferSize that takes chunks gets a CERTIFICATE longer than it
/// in pieces: ERROR LargeResponse with a handle, then CHUNK_RESPONSEs of its DataTransferSize,
/// the first with the LargeMessageSize, the last flagged; they make up exactly the CERTIFICATE a
/// large requester gets. A wrong handle or sequence number is an invalid request.
#[test]
fn a_response_longer_than_the_requesters_transfer_size_comes_in_chunks() {
    const CHUNK: u32 = 0x2_0000;
    let mut big = device();
    negotiate_as(&mut big, 0x2C0 | CHUNK, 0x1000, 0x2000);
    let whole = ask(&mut big, &[0x12, 0x82, 0, 0, 0, 0, 0x00, 0x04]);
    assert_eq!((whole[1], whole.len()), (0x02, 8 + 1024), "1 KiB of chain in one CERTIFICATE");

    let mut d = device();
    negotiate_as(&mut d, 0x2C0 | CHUNK, 200, 0x2000);
    let large = ask(&mut d, &[0x12, 0x82, 0, 0, 0, 0, 0x00, 0x04]);
    assert_eq!(large[..4], [0x12, 0x7F, 0x0F, 0], "ERROR LargeResponse");
    let handle = large[4];
    assert_eq!(ask(&mut d, &[0x12, 0x86, 0, handle ^ 1, 0, 0]), [0x12, 0x7F, 0x01, 0], "another handle");
    assert_eq!(ask(&mut d, &[0x12, 0x86, 0, handle, 1, 0]), [0x12, 0x7F, 0x01, 0], "out of sequence");
    let mut got = Vec::new();
    for seq in 0u16.. {
        let s = seq.to_le_bytes();
        let r = ask(&mut d, &[0x12, 0x86, 0, handle, s[0], s[1]]);
        assert_eq!((r[1], r[3], u16::from_le_bytes([r[4], r[5]])), (0x06, handle, seq));
        let size = u32::from_le_bytes([r[8], r[9], r[10], r[11]]) as usize;
        let at = if seq == 0 {
            assert_eq!(u32::from_le_bytes([r[12], r[13], r[14], r[15]]), 8 + 1024, "LargeMessageSize");
            16
        } else {
            12
        };
        assert!(at + size <= 200, "each chunk fits the requester's DataTransferSize");
        got.extend_from_slice(&r[at..at + size]);
        if r[2] & 1 != 0 {
            break;
        }
    }
    assert_eq!(got, whole, "the chunks make up the CERTIFICATE");
    assert_eq!(ask(&mut d, &[0x12, 0x86, 0, handle, 0, 0]), [0x12, 0x7F, 0x01, 0], "served and forgotten");
    assert_eq!(ask(&mut d, &[0x12, 0x85, 0, 0, 0, 0, 0, 0]), [0x12, 0x7F, 0x01, 0], "no CHUNK_SEND: no large request");
}

/// A requester that takes no chunks never gets a response longer than its DataTransferSize: the
/// certificate comes in portions that fit it, and what cannot be cut (here MEASUREMENTS of every
/// block with a 64-byte DataTransferSize) is ERROR ResponseTooLarge.
#[test]
fn a_requester_without_chunks_gets_what_fits_or_response_too_large() {
    let mut d = device();
    negotiate_as(&mut d, 0x2C0, 64, 64);
    let r = ask(&mut d, &[0x12, 0x82, 0, 0, 0, 0, 0x00, 0x04]);
    assert_eq!((r[1], u16::from_le_bytes([r[4], r[5]])), (0x02, 64 - 8), "a portion that fits");
    let r = ask(&mut d, &[0x12, 0xE0, 0, 0xFF]);
    assert_eq!(r, [0x12, 0x7F, 0x0D, 0], "ERROR ResponseTooLarge");
}
