//! The device-protocol figures: a whole SPDM connection in-process, TDISP lock → report → start
//! in-process, and one exchange with `tdisp-device` over the loopback socket.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::time::Instant;

use tdisp_device::server::{self, command, TRANSPORT_PCI_DOE};
use tdisp_device::{Config, Device};
use tsm::doe::Action;
use tsm::spdm::connect::{Connect, ConnectRandom, Stage};
use tsm::spdm::session::Session;
use tsm::tdisp::{self, InterfaceId, Request, Response};

use crate::Figures;

fn random(i: u8) -> ConnectRandom {
    ConnectRandom {
        challenge_nonce: [i; 32],
        measurement_nonce: [i ^ 1; 32],
        context: [i; 8],
        ephemeral: [0x40 | (i & 0x3F); 48],
        random: [i; 32],
    }
}

fn connect(device: &mut Device, i: u8) -> Connect {
    let mut c = Connect::new(random(i));
    let mut request = match c.start() {
        Action::Send(b) => b.to_vec(),
        other => panic!("{other:?}"),
    };
    loop {
        let reply = device.handle(&request).unwrap_or_default();
        match c.step(&reply) {
            Action::Send(b) => request = b.to_vec(),
            Action::Done => break,
            Action::Failed(e) => panic!("connect failed: {e:?}"),
        }
    }
    assert_eq!(c.stage(), Stage::Connected);
    c
}

fn tdisp_call(device: &mut Device, s: &mut Session, v: u8, iface: InterfaceId, r: &Request<'_>) -> Vec<u8> {
    let mut msg = [0u8; 128];
    let n = tdisp::encode(v, iface, r, &mut msg).unwrap();
    let mut obj = [0u8; 256];
    let m = s.seal(&msg[..n], &mut obj).unwrap();
    let reply = device.handle(&obj[..m]).unwrap();
    let mut buf = vec![0u8; 4096];
    s.open(&reply, &mut buf).unwrap().to_vec()
}

fn lock_report_start(device: &mut Device, c: &Connect) {
    let v = c.negotiated().unwrap().version;
    let iface = InterfaceId(device.config().interfaces[0].function_id);
    let mut s = c.session().unwrap().clone();
    let lock = Request::Lock { flags: 0x4, default_stream: 0, mmio_reporting_offset: 0, p2p_mask: 0 };
    let reply = tdisp_call(device, &mut s, v, iface, &lock);
    let Ok(Response::Locked { nonce }) = tdisp::decode(v, iface, lock.code(), &reply) else { panic!("lock") };
    let mut report = Vec::new();
    loop {
        let r = Request::GetReport { offset: report.len() as u16, length: 0x400 };
        let reply = tdisp_call(device, &mut s, v, iface, &r);
        let Ok(Response::ReportPortion { portion, remainder }) = tdisp::decode(v, iface, r.code(), &reply) else {
            panic!("report")
        };
        report.extend_from_slice(portion);
        if remainder == 0 {
            break;
        }
    }
    tdisp::InterfaceReport::parse(&report).unwrap();
    let start = Request::Start { nonce: &nonce };
    let reply = tdisp_call(device, &mut s, v, iface, &start);
    assert_eq!(tdisp::decode(v, iface, start.code(), &reply), Ok(Response::Started));
}

/// The public-key crypto one connection costs, both sides together, from the measured cost of
/// each operation: the device signs CHALLENGE_AUTH, MEASUREMENTS and KEY_EXCHANGE_RSP, the TSM
/// verifies the three and the two links of the device's chain (root → CA → leaf), and each side
/// derives an ephemeral public key and an ECDH secret.
fn crypto_ms() -> f64 {
    use p384::ecdsa::signature::{Signer, Verifier};
    use p384::ecdsa::{Signature, SigningKey, VerifyingKey};
    const N: u32 = 20;
    let key = SigningKey::from_slice(&[0x21; 48]).unwrap();
    let vk = VerifyingKey::from(&key);
    let msg = [0x5Au8; 148];
    let t = Instant::now();
    let mut sig: Signature = key.sign(&msg);
    for _ in 1..N {
        sig = key.sign(&msg);
    }
    let sign = t.elapsed().as_secs_f64() * 1e3 / f64::from(N);
    let t = Instant::now();
    for _ in 0..N {
        vk.verify(&msg, &sig).unwrap();
    }
    let verify = t.elapsed().as_secs_f64() * 1e3 / f64::from(N);
    let scalar = p384::NonZeroScalar::try_from(&[0x33u8; 48][..]).unwrap();
    let peer = p384::PublicKey::from_secret_scalar(&scalar);
    let t = Instant::now();
    for _ in 0..N {
        let public = p384::PublicKey::from_secret_scalar(&scalar);
        let shared = p384::ecdh::diffie_hellman(scalar, peer.as_affine());
        std::hint::black_box((public, shared.raw_secret_bytes()[0]));
    }
    let dh = t.elapsed().as_secs_f64() * 1e3 / f64::from(N);
    3.0 * sign + 5.0 * verify + 2.0 * dh
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs the device benchmarks.
pub fn run(figs: &mut Figures) {
    let mut connects = Vec::new();
    let mut shares = Vec::new();
    let mut tdisp = Vec::new();
    for i in 0..10u8 {
        let mut device = Device::new(Config::default()).unwrap();
        let t = Instant::now();
        let c = connect(&mut device, i);
        let ms = t.elapsed().as_secs_f64() * 1e3;
        connects.push(ms);
        // The crypto cost is measured right beside each connection, so that both see the same
        // machine load; the share is the median of the pairs.
        shares.push(crypto_ms() / ms);
        let t = Instant::now();
        lock_report_start(&mut device, &c);
        tdisp.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let connect_ms = median(connects);
    figs.record("spdm_connect_ms", connect_ms, "ms");
    // The same connection with the P-256 suite (ECDSA P-256, SHA-256, secp256r1, AES-128-GCM),
    // against a device of a P-256 identity.
    let mut p256 = Vec::new();
    for i in 0..10u8 {
        let mut rng = tdisp_device::rng::Rng::new([0x56 ^ i; 32]);
        let identity = tdisp_device::Identity::generate_p256(&mut rng).unwrap();
        let mut device = Device::with_identity(Config::default(), identity, rng).unwrap();
        let t = Instant::now();
        let c = connect(&mut device, i);
        p256.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(c.negotiated().unwrap().suite, tsm::spdm::suite::Suite::P256);
    }
    figs.record("spdm_connect_p256_ms", median(p256), "ms");
    figs.record("spdm_connect_crypto_share", median(shares), "ratio");
    figs.record("tdisp_lock_report_start_ms", median(tdisp), "ms");

    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut device = Device::new(Config::default()).unwrap();
    let server = std::thread::spawn(move || server::serve(&listener, &mut device, true));
    let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
    stream.set_nodelay(true).unwrap();
    let mut get_version = [0u8; 12];
    tsm::doe::encode(tsm::doe::ObjectType::Spdm, &[0x10, 0x84, 0, 0], &mut get_version).unwrap();
    let mut times = Vec::with_capacity(1000);
    for _ in 0..1000 {
        let t = Instant::now();
        server::write_frame(&mut stream, command::NORMAL, TRANSPORT_PCI_DOE, &get_version).unwrap();
        let f = server::read_frame(&mut stream).unwrap().unwrap();
        times.push(t.elapsed().as_secs_f64() * 1e6);
        assert_eq!(f.command, command::NORMAL);
    }
    server::write_frame(&mut stream, command::SHUTDOWN, TRANSPORT_PCI_DOE, &[]).unwrap();
    let _ = server.join();
    figs.record("device_roundtrip_us_median", median(times), "us");
}
