//! The whole conversation over the socket, as the TSM will hold it through QEMU: DOE discovery,
//! VCA, certificates, CHALLENGE, signed measurements, a session, IDE_KM, TDISP lock → report →
//! start → stop, END_SESSION. Requester side: the TSM's own sans-IO state machines.

// Test-only crate: helpers outside `#[test]` functions may panic too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use tdisp_device::{Config, MmioRange};
use tsm::doe::ObjectType;
use tsm::tdisp::{InterfaceId, InterfaceReport, Request, Response, TdiState};

fn lock_report_start(t: &mut impl Transport, s: &mut tsm::spdm::session::Session, v: u8, config: &Config) {
    let iface = InterfaceId(config.interfaces[0].function_id);
    let call = |t: &mut _, s: &mut _, r: &Request<'_>| tdisp_call(t, s, v, iface, r).unwrap();
    assert_eq!(call(t, s, &Request::GetVersion), Response::Version(&[0x10]));
    match call(t, s, &Request::GetCapabilities) {
        Response::Capabilities { requests, lock_flags, address_width } => {
            assert_eq!(requests[0], 0xFE);
            assert_eq!((lock_flags, address_width), (0x17, 52));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(call(t, s, &Request::GetState), Response::State(TdiState::ConfigUnlocked));
    let lock = Request::Lock { flags: 0x4, default_stream: 0, mmio_reporting_offset: 0xD000_0000, p2p_mask: 0 };
    let Response::Locked { nonce } = call(t, s, &lock) else { panic!("lock") };
    assert_eq!(call(t, s, &Request::GetState), Response::State(TdiState::ConfigLocked));

    let mut report = Vec::new();
    loop {
        let r = Request::GetReport { offset: report.len() as u16, length: 0x400 };
        let Response::ReportPortion { portion, remainder } = call(t, s, &r) else { panic!("report") };
        assert!(portion.len() <= 64, "64-byte portions");
        report.extend_from_slice(portion);
        if remainder == 0 {
            break;
        }
    }
    let parsed = InterfaceReport::parse(&report).unwrap();
    let want: Vec<MmioRange> = config.interfaces[0].mmio.clone();
    assert_eq!(parsed.ranges().len(), want.len(), "LOCK_MSIX reports the MSI-X ranges too");
    for (got, want) in parsed.ranges().iter().zip(&want) {
        assert_eq!(got.first_page, want.first_page + 0xD0000, "offset added to the address");
        assert_eq!((got.pages, got.attributes, got.range_id), (want.pages, want.attributes, want.range_id));
    }
    assert_eq!(parsed.device_info, &config.interfaces[0].device_info[..]);

    assert_eq!(call(t, s, &Request::Start { nonce: &nonce }), Response::Started);
    assert_eq!(call(t, s, &Request::GetState), Response::State(TdiState::Run));
    assert_eq!(call(t, s, &Request::Stop), Response::Stopped);
    assert_eq!(call(t, s, &Request::GetState), Response::State(TdiState::ConfigUnlocked));
}

fn ide_km(t: &mut impl Transport, s: &mut tsm::spdm::session::Session, v: u8) {
    let reply = secured(t, s, &idekm_request(v, &[0x00, 0, 0])).unwrap();
    let q = idekm_reply(&reply);
    assert_eq!((q[0], q[2], q[6]), (0x01, 0, 0), "QUERY_RESP for port 0, MaxPortIndex 0");
    assert_eq!(q.len(), 7 + 4 * 7);
    for direction in [0x00u8, 0x02] {
        for sub in [0x00u8, 0x10, 0x20] {
            let ks = sub | direction;
            let mut kp = vec![0x02, 0, 0, 1, 0, ks, 0];
            kp.extend_from_slice(&[ks ^ 0xA5; 32]);
            kp.extend_from_slice(&[0x01; 8]);
            let reply = secured(t, s, &idekm_request(v, &kp)).unwrap();
            assert_eq!(idekm_reply(&reply), &[0x03, 0, 0, 1, 0, ks, 0], "KP_ACK ok");
            let reply = secured(t, s, &idekm_request(v, &[0x04, 0, 0, 1, 0, ks, 0])).unwrap();
            assert_eq!(idekm_reply(&reply), &[0x06, 0, 0, 1, 0, ks, 0], "K_GOSTOP_ACK");
        }
    }
}

fn conversation(config: Config) {
    let (port, server) = spawn(config.clone());
    let mut t = Client::connect(port);
    let test = t.send(tdisp_device::server::command::TEST, 2, b"Client Hello!\0");
    assert_eq!(test.payload, b"Server Hello!\0");

    let d = discover(&mut t);
    assert_eq!(d.entries(), &[(1, 0), (1, 1), (1, 2)]);
    assert!(d.supports(ObjectType::SecuredSpdm));

    let c = authenticate(&mut t);
    let v = c.negotiated.version;
    assert_eq!(v, *config.spdm_versions.iter().max().unwrap());
    challenge(&mut t, &c).unwrap();
    let exchange = measure(&mut t, &c).unwrap();
    // The record holds the configured blocks, in order.
    let request_len = if v >= 0x13 { 45 } else { 37 };
    let record: Vec<u8> = config.measurements.iter().flat_map(|b| b.encode()).collect();
    let rsp = &exchange[request_len..];
    assert_eq!(rsp[4] as usize, config.measurements.len());
    assert_eq!(&rsp[8..8 + record.len()], &record[..]);

    let mut s = key_exchange(&mut t, &c).unwrap();
    ide_km(&mut t, &mut s, v);
    lock_report_start(&mut t, &mut s, v, &config);
    let ack = secured(&mut t, &mut s, &[v, 0xEC, 0, 0]).unwrap();
    assert_eq!(ack, [v, 0x6C, 0, 0]);

    t.shutdown();
    let device = server.join().unwrap();
    assert_eq!(device.session_count(), 0);
    assert!(device.ide_keys().is_empty(), "keys go with the session");
}

#[test]
fn full_conversation_over_the_socket_spdm_1_3() {
    conversation(Config::default());
}

#[test]
fn full_conversation_over_the_socket_spdm_1_2() {
    conversation(Config { spdm_versions: vec![0x12], ..Config::default() });
}

#[test]
fn ide_keys_are_recorded_per_stream_and_sub_stream() {
    let mut d = tdisp_device::Device::new(Config::default()).unwrap();
    let (c, mut s) = open_session(&mut d);
    ide_km(&mut d, &mut s, c.negotiated.version);
    let keys = d.ide_keys();
    assert_eq!(keys.len(), 6);
    for (slot, key) in keys {
        assert_eq!((slot.session, slot.stream), (s.id, 1));
        assert_eq!(key.key, [slot.key_sub_stream ^ 0xA5; 32]);
        assert!(key.active);
    }
}
