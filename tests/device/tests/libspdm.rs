//! Interop with DMTF's libspdm, the reference SPDM stack, as built by spdm-emu
//! (`docs/protocols.md`, "Interoperability"). The peer is built outside the repository; these
//! tests need `SPDM_EMU_BIN` = the directory of `spdm_responder_emu` and `spdm_requester_emu`
//! (spdm-emu's `build/bin`, which also holds the sample keys they read). Without it every test
//! here says why it is skipped and passes: CI keeps the interop through the recorded
//! conversations that `tsm/tests/libspdm_replay.rs` replays.
//!
//! `SPDM_RECORD_DIR=DIR` makes the responder test write what it saw into `DIR` in the replay
//! format (`tsm/tests/interop/README.md`).

// Test-only crate: helpers outside `#[test]` functions may panic too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::fmt::Write as _;
use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Client, Transport};
use tdisp_device::server;
use tdisp_device::{Config, Device};
use tsm::spdm::connect::{Connect, ConnectRandom, Stage};

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

/// The fixed requester randomness of the recorded conversations.
pub const RANDOM: ConnectRandom = ConnectRandom {
    challenge_nonce: [0xC1; 32],
    measurement_nonce: [0x3E; 32],
    context: [0x5C; 8],
    ephemeral: [0x2B; 48],
    random: [0x7A; 32],
};

/// spdm_responder_emu on 127.0.0.1, killed when dropped.
struct Responder(Child);

impl Responder {
    fn start(bin: &PathBuf, port: u16, args: &[&str]) -> (Responder, Client) {
        let child = Command::new(bin.join("spdm_responder_emu"))
            .current_dir(bin)
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

fn hex(b: &[u8]) -> String {
    b.iter().fold(String::with_capacity(2 * b.len()), |mut s, x| {
        let _ = write!(s, "{x:02x}");
        s
    })
}

/// The TSM's whole SPDM.CONNECT flow against libspdm's responder; the conversation, written in
/// the replay format when `SPDM_RECORD_DIR` is set.
fn connect_to_libspdm(name: &str, args: &[&str]) {
    let Some(bin) = peer(name) else { return };
    let (_responder, mut client) = Responder::start(&bin, free_port(), args);
    let mut rec = Recorder { inner: &mut client, log: Vec::new() };
    let mut c = Connect::new(RANDOM);
    let r: Result<(), _> = drive!(&mut rec, c);
    let log = rec.log;
    if let Some(dir) = std::env::var_os("SPDM_RECORD_DIR") {
        let mut out = String::new();
        let _ = writeln!(out, "# {name}: the TSM's SPDM.CONNECT against libspdm's spdm_responder_emu");
        let _ = writeln!(out, "# spdm_responder_emu --trans PCI_DOE {}", args.join(" "));
        let _ = writeln!(out, "# outcome: {r:?}");
        let _ = writeln!(out, "random challenge_nonce {}", hex(&RANDOM.challenge_nonce));
        let _ = writeln!(out, "random measurement_nonce {}", hex(&RANDOM.measurement_nonce));
        let _ = writeln!(out, "random context {}", hex(&RANDOM.context));
        let _ = writeln!(out, "random ephemeral {}", hex(&RANDOM.ephemeral));
        let _ = writeln!(out, "random random {}", hex(&RANDOM.random));
        for (req, answer) in &log {
            let _ = writeln!(out, "> {}", hex(req));
            let _ = writeln!(out, "< {}", hex(answer));
        }
        std::fs::write(PathBuf::from(dir).join(format!("{name}.txt")), out).unwrap();
    }
    assert_eq!(r, Ok(()), "{name}: SPDM.CONNECT against libspdm failed after {} exchanges", log.len());
    assert_eq!(c.stage(), Stage::Connected);
    assert!(c.session().is_some() && c.measurements().is_some() && c.chain().is_some());
}

#[test]
fn tsm_connects_to_libspdm_responder_spdm_1_2_p384() {
    connect_to_libspdm("libspdm-1.2-p384", &["--ver", "1.2"]);
}

#[test]
fn tsm_connects_to_libspdm_responder_spdm_1_3_p384() {
    connect_to_libspdm("libspdm-1.3-p384", &["--ver", "1.3"]);
}

#[test]
fn tsm_connects_to_libspdm_responder_default_versions() {
    connect_to_libspdm("libspdm-default-p384", &[]);
}

/// libspdm's requester (`spdm_requester_emu`) against tdisp-device over the socket, as QEMU
/// would carry it: VCA, digests, certificate, CHALLENGE and measurements in the clear, then a
/// session with KEY_UPDATE, HEARTBEAT and measurements inside it. The requester trusts the
/// device's root (its sample-key directory is copied and the P-384 CA files replaced). Its
/// output and the whole conversation are kept in `SPDM_RECORD_DIR` when set
/// (`tests/device/tests/interop/`).
fn libspdm_requester_against_tdisp_device(version: &str) {
    let name = format!("libspdm-requester-{version}");
    let Some(bin) = peer(&name) else { return };
    let work = std::env::temp_dir().join(format!("seamless-{name}-{}", std::process::id()));
    let keys = work.join("ecp384");
    std::fs::create_dir_all(&keys).unwrap();
    for entry in std::fs::read_dir(bin.join("ecp384")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), keys.join(entry.file_name())).unwrap();
    }
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut device = Device::new(Config::default()).unwrap();
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
        .args(["--trans", "PCI_DOE", "--port", &port.to_string(), "--ver", version])
        .args(["--exe_conn", "DIGEST,CERT,CHAL,MEAS", "--exe_session", "KEY_EX,KEY_UPDATE,HEARTBEAT,MEAS"])
        .output()
        .unwrap();
    let log = server.join().unwrap();
    let _ = std::fs::remove_dir_all(&work);
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    if let Some(dir) = std::env::var_os("SPDM_RECORD_DIR") {
        let head = format!(
            "# spdm_requester_emu --trans PCI_DOE --ver {version} --exe_conn DIGEST,CERT,CHAL,MEAS \
             --exe_session KEY_EX,KEY_UPDATE,HEARTBEAT,MEAS against tdisp-device; exit {:?}\n",
            out.status.code()
        );
        let mut conversation = String::new();
        for (request, answer) in &log {
            let _ = writeln!(conversation, "> {}\n< {}", hex(request), hex(answer));
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
    libspdm_requester_against_tdisp_device("1.2");
}

#[test]
fn libspdm_requester_runs_its_flows_against_tdisp_device_spdm_1_3() {
    libspdm_requester_against_tdisp_device("1.3");
}
