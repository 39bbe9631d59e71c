//! The socket side: QEMU's framing, SHUTDOWN, robustness against garbage, and the cost of one
//! exchange on loopback.

// Test-only crate: helpers outside `#[test]` functions may panic too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Write;
use std::sync::OnceLock;
use std::time::Instant;

use common::*;
use proptest::prelude::*;
use tdisp_device::server::{command, TRANSPORT_PCI_DOE};
use tdisp_device::{Config, Device};
use tsm::spdm::session::Session;

#[test]
fn shutdown_ends_the_server() {
    let (port, server) = spawn(Config::default());
    let mut c = Client::connect(port);
    let f = c.send(command::TEST, TRANSPORT_PCI_DOE, b"Client Hello!\0");
    assert_eq!((f.command, f.payload.as_slice()), (command::TEST, &b"Server Hello!\0"[..]));
    c.shutdown();
    server.join().unwrap();
}

#[test]
fn odd_frames_get_odd_replies_and_the_server_survives_broken_clients() {
    let (port, server) = spawn(Config::default());
    let mut c = Client::connect(port);
    assert_eq!(c.send(0x1234, TRANSPORT_PCI_DOE, &[]).command, command::UNKNOWN);
    let f = c.send(command::NORMAL, 3, &spdm_object(&[0x10, 0x84, 0, 0]));
    assert_eq!((f.command, f.payload.len()), (command::NORMAL, 0), "another transport: no response");
    let f = c.send(command::NORMAL, TRANSPORT_PCI_DOE, &[1, 2, 3]);
    assert_eq!((f.command, f.payload.len()), (command::NORMAL, 0), "not a DOE object: no response");
    // A client that dies inside a frame, and one announcing a payload too large to take.
    c.stream.write_all(&[0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 40, 1, 2]).unwrap();
    drop(c);
    let mut c = Client::connect(port);
    c.stream.write_all(&[0, 0, 0, 1, 0, 0, 0, 2, 0xFF, 0xFF, 0xFF, 0xFF]).unwrap();
    drop(c);
    let mut c = Client::connect(port);
    let (negotiated, _) = negotiate(&mut c).unwrap();
    assert_eq!(negotiated.version, 0x13);
    c.shutdown();
    server.join().unwrap();
}

#[test]
fn one_exchange_on_loopback_costs_well_under_a_millisecond() {
    let (port, server) = spawn(Config::default());
    let mut c = Client::connect(port);
    let get_version = spdm_object(&[0x10, 0x84, 0, 0]);
    for _ in 0..50 {
        c.exchange(&get_version);
    }
    const N: usize = 1000;
    let mut samples = Vec::with_capacity(N);
    for _ in 0..N {
        let t = Instant::now();
        let reply = c.exchange(&get_version);
        samples.push(t.elapsed());
        assert_eq!(reply.len(), 20);
    }
    samples.sort();
    let total: std::time::Duration = samples.iter().sum();
    println!(
        "device_roundtrip_us: median {:.1} µs, mean {:.1} µs, p99 {:.1} µs over {N} GET_VERSION exchanges",
        samples[N / 2].as_secs_f64() * 1e6,
        total.as_secs_f64() * 1e6 / N as f64,
        samples[N * 99 / 100].as_secs_f64() * 1e6,
    );
    c.shutdown();
    server.join().unwrap();
}

/// A device with a live session, and valid objects of every kind it answers, to mutate.
fn fixture() -> &'static (Device, Vec<Vec<u8>>, Session) {
    static FIXTURE: OnceLock<(Device, Vec<Vec<u8>>, Session)> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let mut d = Device::new(Config::default()).unwrap();
        let (c, s) = open_session(&mut d);
        let mut sealed = [0u8; 128];
        let n = s.clone().seal(&[c.negotiated.version, 0xEC, 0, 0], &mut sealed).unwrap();
        let seeds = vec![
            vec![1, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0],
            spdm_object(&[0x10, 0x84, 0, 0]),
            spdm_object(&[0x13, 0x82, 0, 0, 0, 0, 0, 4]),
            sealed[..n].to_vec(),
        ];
        (d, seeds, s)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_objects_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let mut d = fixture().0.clone();
        let _ = d.handle(&bytes);
    }

    #[test]
    fn mutated_objects_never_panic(which in 0usize..4, at in any::<usize>(), value in any::<u8>(), cut in any::<usize>()) {
        let (device, seeds, _) = fixture();
        let mut object = seeds[which].clone();
        let i = at % object.len();
        object[i] = value;
        object.truncate(8 + cut % object.len());
        let mut d = device.clone();
        let _ = d.handle(&object);
        // The same bytes with the DOE length fixed up, so they reach the protocol handlers.
        let mut payload = object.get(8..).unwrap_or_default().to_vec();
        payload.resize(payload.len().div_ceil(4) * 4, 0);
        let mut fixed = object[..8.min(object.len())].to_vec();
        fixed.resize(8, 0);
        fixed[3] = 0;
        fixed[4..8].copy_from_slice(&((2 + payload.len() / 4) as u32).to_le_bytes());
        fixed.extend_from_slice(&payload);
        let _ = d.handle(&fixed);
    }

    /// Random messages inside the session: SPDM, VENDOR_DEFINED headers, TDISP and IDE_KM bodies.
    #[test]
    fn random_secured_messages_never_panic(
        code in prop_oneof![Just(0xECu8), Just(0xFE), Just(0xE5), any::<u8>()],
        protocol in 0u8..3,
        body in proptest::collection::vec(any::<u8>(), 0..80),
        fix_length in any::<bool>(),
    ) {
        let (device, _, session) = fixture();
        let (mut d, mut s) = (device.clone(), session.clone());
        let mut m = vec![0x13, code, 0, 0, 3, 0, 2, 1, 0, 0, 0, protocol];
        m.extend_from_slice(&body);
        if fix_length {
            let len = (m.len() - 11) as u16;
            m[9..11].copy_from_slice(&len.to_le_bytes());
        }
        let mut out = [0u8; 256];
        let n = s.seal(&m, &mut out).unwrap();
        let _ = d.handle(&out[..n]);
    }
}
