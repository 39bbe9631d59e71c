//! The whole conversation over the socket, as the TSM will hold it through QEMU: DOE discovery,
//! VCA, certificates, CHALLENGE, signed measurements, a session, END_SESSION. Requester side: the TSM's own sans-IO state machines.

// Test-only crate: helpers outside `#[test]` functions may panic too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use tdisp_device::Config;
use tsm::doe::ObjectType;

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
    let ack = secured(&mut t, &mut s, &[v, 0xEC, 0, 0]).unwrap();
    assert_eq!(ack, [v, 0x6C, 0, 0]);

    t.shutdown();
    let device = server.join().unwrap();
    assert_eq!(device.session_count(), 0);
}

#[test]
fn full_conversation_over_the_socket_spdm_1_3() {
    conversation(Config::default());
}

#[test]
fn full_conversation_over_the_socket_spdm_1_2() {
    conversation(Config { spdm_versions: vec![0x12], ..Config::default() });
}
