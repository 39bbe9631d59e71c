//! Interop with DMTF's libspdm, the reference SPDM stack, as built by spdm-emu
//! (`docs/protocols.md`, "Interoperability"). The peer is built outside the repository; these
//! tests need `SPDM_EMU_BIN` = the directory of `spdm_responder_emu` and `spdm_requester_emu`
//! (spdm-emu's `build/bin`, which also holds the sample keys they read). Without it every test
//! here says why it is skipped and passes: CI keeps the interop through the recorded
//! conversations that `libspdm_replay.rs` replays.
//!
//! `SPDM_RECORD_DIR=DIR` makes the tests write what they saw into `DIR` in the replay format
//! (`tests/interop/README.md`).

// Test-only crate: helpers outside `#[test]` functions may panic too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod libspdm_flow;

use std::fmt::Write as _;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Client, Transport};
use tdisp_device::server;
use tdisp_device::{Config, Device};

/// The peer's directory, or `None` (with the reason printed) when it is not given.
fn peer(test: &str) -> Option<PathBuf> {
    match std::env::var_os("SPDM_EMU_BIN") {
        Some(dir) if PathBuf::from(&dir).join("spdm_responder_emu").is_file() => Some(PathBuf::from(dir)),
        Some(dir) => panic!("SPDM_EMU_BIN={} holds no spdm_responder_emu", PathBuf::from(dir).display()),
        None => {
            eprintln!("skipped {test}: the libspdm peer is absent (set SPDM_EMU_BIN to spdm-emu's build/bin)");
            None
        }
    }
}

/// A port nobody listens on at the moment (the peer binds it right after).
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap().local_addr().unwrap().port()
}

/// spdm_responder_emu on 127.0.0.1, killed when dropped.
struct Responder(Child);

impl Responder {
    fn start(bin: &Path, port: u16, args: &[&str]) -> (Responder, Client) {
        Responder::start_in(bin, bin, port, args)
    }

    /// The responder run from `cwd`, where it reads its sample keys and chains.
    fn start_in(bin: &Path, cwd: &Path, port: u16, args: &[&str]) -> (Responder, Client) {
        let child = Command::new(bin.join("spdm_responder_emu"))
            .current_dir(cwd)
            .args(["--trans", "PCI_DOE", "--ip", "127.0.0.1", "--port", &port.to_string()])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let responder = Responder(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)) {
                Ok(s) => {
                    s.set_nodelay(true).unwrap();
                    return (responder, Client { stream: s });
                }
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
                Err(e) => panic!("spdm_responder_emu does not listen on {port}: {e}"),
            }
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A transport that keeps every exchange.
struct Recorder<'a> {
    inner: &'a mut Client,
    log: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Transport for Recorder<'_> {
    fn exchange(&mut self, object: &[u8]) -> Vec<u8> {
        let answer = self.inner.exchange(object);
        self.log.push((object.to_vec(), answer.clone()));
        answer
    }
}

/// The TSM's whole conversation with libspdm's responder (`libspdm_flow::converse`):
/// SPDM.CONNECT, IDE_KM key programming, TDISP up to the interface report. The conversation is
/// written in the replay format when `SPDM_RECORD_DIR` is set.
fn connect_to_libspdm(name: &str, args: &[&str]) -> libspdm_flow::Outcome {
    let Some(bin) = peer(name) else { return libspdm_flow::Outcome::default() };
    converse_with_libspdm(name, &bin, &bin, args, "its sample keys and chains").0
}

/// The conversation with spdm_responder_emu run from `cwd`; written to `SPDM_RECORD_DIR` when
/// set, with `keys` saying what the responder read there. Returns the outcome and the number of
/// CHUNK_GETs sent.
fn converse_with_libspdm(
    name: &str,
    bin: &Path,
    cwd: &Path,
    args: &[&str],
    keys: &str,
) -> (libspdm_flow::Outcome, usize) {
    let (_responder, mut client) = Responder::start_in(bin, cwd, free_port(), args);
    let mut rec = Recorder { inner: &mut client, log: Vec::new() };
    let outcome = libspdm_flow::converse(&mut rec);
    if let Some(dir) = std::env::var_os("SPDM_RECORD_DIR") {
        let header = format!(
            "{name}: the TSM against libspdm's responder (spdm-emu 85436d53, libspdm 1e16c60f, mbedtls v3.6.5)\n\
             spdm_responder_emu --trans PCI_DOE --ip 127.0.0.1 {} ({keys})\n\
             SPDM.CONNECT with the measurements inside the session, then IDE_KM and TDISP\n\
             requester randomness and keys: tests/device/tests/libspdm_flow/mod.rs\n\
             outcome: {outcome:?}",
            args.join(" ")
        );
        let text = libspdm_flow::write_recording(&header, &rec.log);
        std::fs::write(PathBuf::from(dir).join(format!("{name}.txt")), text).unwrap();
    }
    assert_eq!(outcome.connect, Some(Ok(())), "{name}: SPDM.CONNECT against libspdm failed");
    assert_eq!(outcome.measurements, Some(Ok(())), "{name}: measurements inside the session");
    let chunk_gets = rec.log.iter().filter(|(q, _)| q.len() > 9 && q[2] == 1 && q[9] == 0x86).count();
    (outcome, chunk_gets)
}

/// spdm-emu's `build/bin` seen from a scratch directory whose `ecp384/` holds a copy of the sample
/// keys with the responder's chain replaced by one over 4 KiB: a fresh root and five CAs with
/// padded names certify the sample leaf key (`end_responder.key.der`, which the responder signs
/// with). The scratch directory goes when the returned guard is dropped.
struct LongChain {
    dir: PathBuf,
}

impl LongChain {
    fn new(bin: &Path, name: &str) -> LongChain {
        let dir = std::env::temp_dir().join(format!("seamless-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("ecp384")).unwrap();
        for entry in std::fs::read_dir(bin).unwrap() {
            let entry = entry.unwrap();
            if entry.file_name() != "ecp384" {
                std::os::unix::fs::symlink(entry.path(), dir.join(entry.file_name())).unwrap();
            }
        }
        for entry in std::fs::read_dir(bin.join("ecp384")).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), dir.join("ecp384").join(entry.file_name())).unwrap();
        }
        let key_der = std::fs::read(bin.join("ecp384/end_responder.key.der")).unwrap();
        let key = p384::ecdsa::SigningKey::from(p384::SecretKey::from_sec1_der(&key_der).unwrap());
        let mut rng = tdisp_device::rng::Rng::new([0x4C; 32]);
        let identity = tdisp_device::Identity::generate_chain_for(&mut rng, 5, 400, key).unwrap();
        let mut bundle = identity.root_der.clone();
        for ca in &identity.intermediates_der {
            bundle.extend_from_slice(ca);
        }
        bundle.extend_from_slice(&identity.leaf_der);
        assert!(bundle.len() > 4096, "{} bytes", bundle.len());
        std::fs::write(dir.join("ecp384/bundle_responder.certchain.der"), bundle).unwrap();
        LongChain { dir }
    }
}

impl Drop for LongChain {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A certificate chain over 4 KiB from libspdm: spdm-emu takes chunks (CHUNK_CAP by default), so
/// the GET_CERTIFICATE the TSM sends for as much as the responder can build (its MaxSPDMmsgSize,
/// 0x1200) is answered ERROR LargeResponse and taken with CHUNK_GET; the conversation then goes
/// on as with the sample chain.
#[test]
fn tsm_takes_a_long_chain_from_libspdm_in_chunks() {
    for version in ["1.2", "1.3"] {
        let name = format!("libspdm-{version}-chunked-p384");
        let Some(bin) = peer(&name) else { return };
        let long = LongChain::new(&bin, &name);
        let keys = "ecp384/bundle_responder.certchain.der replaced by a 5-CA chain over 4 KiB for the sample leaf key";
        let (o, chunk_gets) = converse_with_libspdm(&name, &bin, &long.dir, &["--ver", version], keys);
        assert_eq!(o.connect, Some(Ok(())), "{name}");
        assert!(chunk_gets >= 2, "{name}: {chunk_gets} CHUNK_GETs");
        assert_spdm_emu_device(&name, &o);
    }
}

/// What spdm-emu's sample TDISP device reports: four MMIO ranges whose first pages (0x0,
/// 0x8000, 0x10000, 0x20000, no reporting offset applied) belong to no real device; the TSM's
/// check against the device's BARs refuses them at TDI.LOCK (not exercised here: that is the
/// host flow's).
fn assert_spdm_emu_device(name: &str, outcome: &libspdm_flow::Outcome) {
    if outcome.connect.is_none() {
        return;
    }
    assert_eq!(outcome.idekm, Some(Ok(())), "{name}: IDE_KM key programming");
    let Some(Ok((ranges, state))) = &outcome.tdisp else { panic!("{name}: TDISP {:?}", outcome.tdisp) };
    assert_eq!(*state, tsm::tdisp::TdiState::ConfigLocked);
    let pages: Vec<u64> = ranges.iter().map(|r| r.first_page).collect();
    assert_eq!(pages, [0x0, 0x8000, 0x10000, 0x20000], "{name}: {ranges:?}");
}

#[test]
fn tsm_connects_to_libspdm_responder_spdm_1_2_p384() {
    let o = connect_to_libspdm("libspdm-1.2-p384", &["--ver", "1.2"]);
    assert_spdm_emu_device("1.2", &o);
}

#[test]
fn tsm_connects_to_libspdm_responder_spdm_1_3_p384() {
    let o = connect_to_libspdm("libspdm-1.3-p384", &["--ver", "1.3"]);
    assert_spdm_emu_device("1.3", &o);
}

/// The P-256 suite: ECDSA P-256 with SHA-256 (spdm-emu's `ecp256` sample chain), secp256r1,
/// AES-128-GCM.
const P256: [&str; 8] = ["--asym", "ECDSA_P256", "--hash", "SHA_256", "--dhe", "SECP_256_R1", "--aead", "AES_128_GCM"];

#[test]
fn tsm_connects_to_libspdm_responder_spdm_1_2_p256() {
    let o = connect_to_libspdm("libspdm-1.2-p256", &[&["--ver", "1.2"][..], &P256].concat());
    assert_spdm_emu_device("1.2 P-256", &o);
}

#[test]
fn tsm_connects_to_libspdm_responder_spdm_1_3_p256() {
    let o = connect_to_libspdm("libspdm-1.3-p256", &[&["--ver", "1.3"][..], &P256].concat());
    assert_spdm_emu_device("1.3 P-256", &o);
}

/// A responder that signs only with RSA (RSASSA-3072, spdm-emu's `rsa3072` sample chain) meets
/// the TSM's floor: the TSM offers no RSA, so the two share no signing algorithm and SPDM.CONNECT
/// stops at negotiation, before any certificate is read.
#[test]
fn an_rsa_only_libspdm_responder_is_refused_at_negotiation() {
    use tsm::spdm::connect::{ConnectError, Stage};
    use tsm::spdm::SpdmError;
    let Some(bin) = peer("an_rsa_only_libspdm_responder_is_refused_at_negotiation") else { return };
    let args = ["--ver", "1.2", "--asym", "RSASSA_3072", "--hash", "SHA_384"];
    let (_responder, mut client) = Responder::start(&bin, free_port(), &args);
    let outcome = libspdm_flow::converse(&mut client);
    // libspdm finds no common signing algorithm and answers NEGOTIATE_ALGORITHMS with ERROR
    // InvalidRequest (a responder that selected RSA anyway would fail `BadSelection`, as the
    // unit tests of negotiate.rs show).
    assert_eq!(
        outcome.connect,
        Some(Err(ConnectError::Spdm(Stage::Negotiation, SpdmError::Responder { code: 0x01, data: 0 })))
    );
    assert_eq!((outcome.idekm, outcome.tdisp), (None, None));
}

#[test]
fn tsm_connects_to_libspdm_responder_default_versions() {
    let o = connect_to_libspdm("libspdm-default-p384", &[]);
    assert_spdm_emu_device("default", &o);
}

/// libspdm's requester (`spdm_requester_emu`) against tdisp-device over the socket, as QEMU
/// would carry it: VCA, digests, certificate, CHALLENGE and measurements in the clear, then a
/// session with KEY_UPDATE, HEARTBEAT and measurements inside it. The requester trusts the
/// device's root (its sample-key directory is copied and the P-384 CA files replaced). Its
/// output and the whole conversation are kept in `SPDM_RECORD_DIR` when set
/// (`tests/interop/`).
fn libspdm_requester_against_tdisp_device(version: &str, meas_sum: &str, p256: bool) {
    let name = match meas_sum {
        "ALL" => format!("libspdm-requester-{version}"),
        other => format!("libspdm-requester-{version}-meas-sum-{}", other.to_lowercase()),
    };
    let name = if p256 { format!("{name}-p256") } else { name };
    let Some(bin) = peer(&name) else { return };
    let work = std::env::temp_dir().join(format!("seamless-{name}-{}", std::process::id()));
    let curve = if p256 { "ecp256" } else { "ecp384" };
    let keys = work.join(curve);
    std::fs::create_dir_all(&keys).unwrap();
    for entry in std::fs::read_dir(bin.join(curve)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), keys.join(entry.file_name())).unwrap();
    }
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut device = if p256 {
        // tdisp-device --suite p256: a P-256 root, CA and leaf.
        let mut rng = tdisp_device::rng::Rng::new([0x25; 32]);
        let identity = tdisp_device::Identity::generate_p256(&mut rng).unwrap();
        Device::with_identity(Config::default(), identity, rng).unwrap()
    } else {
        Device::new(Config::default()).unwrap()
    };
    std::fs::write(keys.join("ca.cert.der"), &device.identity().root_der).unwrap();
    std::fs::write(keys.join("ca1.cert.der"), &device.identity().root_der).unwrap();
    // The device's server loop, keeping every DOE object both ways (one connection).
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        stream.set_nodelay(true).unwrap();
        let mut log = Vec::new();
        while let Some(frame) = server::read_frame(&mut stream).unwrap() {
            match frame.command {
                server::command::NORMAL => {
                    let reply = device.handle(&frame.payload).unwrap_or_default();
                    server::write_frame(&mut stream, frame.command, server::TRANSPORT_PCI_DOE, &reply).unwrap();
                    log.push((frame.payload, reply));
                }
                server::command::TEST => {
                    server::write_frame(&mut stream, frame.command, frame.transport, server::SERVER_HELLO).unwrap()
                }
                server::command::SHUTDOWN => {
                    let _ = server::write_frame(&mut stream, frame.command, frame.transport, &[]);
                    break;
                }
                other => panic!("spdm_requester_emu sent socket command {other:#x}"),
            }
        }
        log
    });
    let out = Command::new(bin.join("spdm_requester_emu"))
        .current_dir(&work)
        .args(["--trans", "PCI_DOE", "--port", &port.to_string(), "--ver", version, "--meas_sum", meas_sum])
        .args(["--exe_conn", "DIGEST,CERT,CHAL,MEAS", "--exe_session", "KEY_EX,KEY_UPDATE,HEARTBEAT,MEAS"])
        .args(if p256 { &P256[..] } else { &[] })
        .output()
        .unwrap();
    let log = server.join().unwrap();
    let _ = std::fs::remove_dir_all(&work);
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    if let Some(dir) = std::env::var_os("SPDM_RECORD_DIR") {
        let head = format!(
            "# spdm_requester_emu --trans PCI_DOE --ver {version} --meas_sum {meas_sum} --exe_conn \
             DIGEST,CERT,CHAL,MEAS --exe_session KEY_EX,KEY_UPDATE,HEARTBEAT,MEAS{} against tdisp-device; exit {:?}\n",
            if p256 { format!(" {}", P256.join(" ")) } else { String::new() },
            out.status.code()
        );
        let mut conversation = String::new();
        for (request, answer) in &log {
            let _ = writeln!(conversation, "> {}\n< {}", libspdm_flow::hex(request), libspdm_flow::hex(answer));
        }
        let text = text.lines().map(|l| format!("# | {l}\n")).collect::<String>();
        std::fs::write(PathBuf::from(dir).join(format!("{name}.txt")), head + &text + &conversation).unwrap();
    }
    assert!(out.status.success(), "{name}: spdm_requester_emu failed:\n{text}");
    assert!(log.len() > 20, "{name}: only {} exchanges", log.len());
    // Every answer is a real one: no silence (a dropped request) on the way.
    assert!(log.iter().all(|(_, answer)| !answer.is_empty()), "{name}: a request went unanswered");
    let errors: Vec<&str> = text.lines().filter(|l| l.contains("ERROR") || l.contains(" fail")).collect();
    assert!(errors.is_empty(), "{name}: spdm_requester_emu reported errors:\n{}", errors.join("\n"));
}

#[test]
fn libspdm_requester_runs_its_flows_against_tdisp_device_spdm_1_2() {
    libspdm_requester_against_tdisp_device("1.2", "ALL", false);
}

#[test]
fn libspdm_requester_runs_its_flows_against_tdisp_device_spdm_1_3() {
    libspdm_requester_against_tdisp_device("1.3", "ALL", false);
}

/// The same against tdisp-device with a P-256 identity, the requester restricted to the P-256
/// suite (it trusts the device's P-256 root in place of its `ecp256` sample CA).
#[test]
fn libspdm_requester_runs_its_flows_against_a_p256_tdisp_device() {
    for version in ["1.2", "1.3"] {
        libspdm_requester_against_tdisp_device(version, "ALL", true);
    }
}

/// CHALLENGE_AUTH and KEY_EXCHANGE_RSP with each measurement summary hash type libspdm asks for
/// (none, TCB; all is the default above), checked by libspdm's signature verification.
#[test]
fn libspdm_requester_accepts_every_measurement_summary_hash_type() {
    for version in ["1.2", "1.3"] {
        for meas_sum in ["NO", "TCB"] {
            libspdm_requester_against_tdisp_device(version, meas_sum, false);
        }
    }
}
