//! The demo's flow in QEMU with DMTF's libspdm responder (spdm-emu's `spdm_responder_emu`) behind
//! the NVMe DOE mailbox instead of tdisp-device, at SPDM 1.2 and 1.3, with the P-384 and the P-256
//! suites: what `./run.sh --responder '<spdm-emu responder>'` runs.
//!
//! Every protocol interoperates: SPDM.CONNECT (measurements inside the session), IDE_KM key
//! programming, TDISP LOCK and the interface report. spdm-emu's sample TDISP device then reports
//! MMIO ranges of no real device (first pages 0x0, 0x8000, 0x10000, 0x20000, without the
//! MMIO_REPORTING_OFFSET the TSM asked for), so TDI.LOCK refuses the report naming range 0 and its
//! page, nothing is mapped, the host takes the assignment apart, and the firmware ends the run
//! with its one line (the COM3 frame `interop.txt`) and QEMU status 37.
//!
//! The peer is built outside the repository (`docs/protocols.md`, "Building the peer");
//! `SPDM_EMU_BIN` names its `build/bin` (which holds its sample keys). Without it the test says
//! why it is skipped and passes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use seamless_e2e::{assign_config, run_tool, throwaway_secret, Boot, Outcome, Qemu};

/// spdm-emu's `build/bin`, or `None` (after saying why) when it is not given.
fn peer() -> Option<PathBuf> {
    match std::env::var_os("SPDM_EMU_BIN") {
        Some(dir) if Path::new(&dir).join("spdm_responder_emu").is_file() => Some(PathBuf::from(dir)),
        Some(dir) => panic!("SPDM_EMU_BIN={} holds no spdm_responder_emu", Path::new(&dir).display()),
        None => {
            eprintln!("skipped: the libspdm peer is absent (set SPDM_EMU_BIN to spdm-emu's build/bin)");
            None
        }
    }
}

/// True once something listens on 127.0.0.1:`port` (read from /proc/net/tcp: a probe connection
/// would take the one connection the responder serves).
fn listening(port: u16) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else { return false };
    let want = format!("0100007F:{port:04X}");
    table.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 3 && f[1] == want && f[3] == "0A"
    })
}

/// `spdm_responder_emu` on 127.0.0.1, killed when dropped.
struct Responder(Child);

impl Responder {
    fn start(bin: &Path, args: &[&str]) -> (Responder, u16) {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap().local_addr().unwrap().port();
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
        while !listening(port) {
            assert!(Instant::now() < deadline, "spdm_responder_emu does not listen on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        (responder, port)
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The P-256 suite: ECDSA P-256 with SHA-256 (spdm-emu's `ecp256` sample chain), secp256r1,
/// AES-128-GCM.
const P256: [&str; 8] = ["--asym", "ECDSA_P256", "--hash", "SHA_256", "--dhe", "SECP_256_R1", "--aead", "AES_128_GCM"];

/// One demo run against spdm-emu with `args`; returns the outcome and the `interop.txt` line.
fn run(qemu: &Qemu, bin: &Path, name: &str, args: &[&str]) -> (Outcome, String) {
    let (responder, port) = Responder::start(bin, args);
    let boot = Boot {
        spdm_port: Some(port),
        config: Some(assign_config("assign", &[0x13; 64], 1000)),
        secret: Some(throwaway_secret()),
        ..Boot::default()
    };
    let o = boot.run(qemu, name);
    drop(responder);
    let stream = o.dir.join("artifacts.bin");
    let (status, _, err) = run_tool("firmware", &["artifacts".as_ref(), stream.as_os_str(), o.dir.as_os_str()]);
    assert_eq!(status, 0, "firmware artifacts: {err}");
    let line = std::fs::read_to_string(o.dir.join("interop.txt")).unwrap_or_default();
    (o, line)
}

#[test]
fn spdm_emu_interoperates_and_its_sample_interface_report_is_refused_at_lock() {
    let Some(bin) = peer() else { return };
    let Some(qemu) = Qemu::find() else { return };
    let p256 = |version: &'static str| [&["--ver", version][..], &P256].concat();
    let cases: [(&str, &str, Vec<&str>); 4] = [
        ("interop_1_2_p384", "SPDM 1.2", vec!["--ver", "1.2"]),
        ("interop_1_3_p384", "SPDM 1.3", vec!["--ver", "1.3"]),
        ("interop_1_2_p256", "SPDM 1.2", p256("1.2")),
        ("interop_1_3_p256", "SPDM 1.3", p256("1.3")),
    ];
    for (name, version, args) in cases {
        let (o, line) = run(&qemu, &bin, name, &args);
        o.expect_status(37);
        assert!(line.starts_with("interop: every protocol interoperated: "), "{name}: {line}\n{}", o.console);
        for want in [
            version,
            "signed measurements inside the session",
            "IDE_KM (stream 0 keyed and live)",
            "TDISP (LOCK_INTERFACE, the interface report fetched whole)",
            "RCX 0x320, RDX 0x5): MMIO range 0 begins at page 0x0, below the MMIO_REPORTING_OFFSET",
            "the device did not apply the offset",
            "every teardown call succeeded; all ",
            " donated pages free again",
        ] {
            assert!(line.contains(want), "{name}: `{want}` missing from\n{line}");
        }
        assert_eq!(line.lines().count(), 1, "{name}: one line");
        // The same line on COM1; the connection measured inside the session, the report never
        // imported or mapped.
        assert!(o.console.contains(line.trim_end()), "{name}:\n{}", o.console);
        assert!(o
            .console
            .contains(&format!("spdm: connected: {version}, secure session up, measured inside the session")));
        assert!(!o.console.contains("mmio: BAR0"), "{name}: nothing mapped:\n{}", o.console);
        assert!(!o.console.contains("tdi: RUN"), "{name}");
    }
}

/// The same ending without the peer, so CI keeps it: tdisp-device told to report its ranges as
/// spdm-emu's sample device does (`ignore-reporting-offset`), BAR0's page without the offset.
#[test]
fn a_device_that_ignores_the_reporting_offset_ends_the_run_with_status_37() {
    let Some(qemu) = Qemu::find() else { return };
    let mut c = seamless_e2e::assign_device(false);
    c.faults.ignore_reporting_offset = true;
    let device = seamless_e2e::DeviceServer::with_config(c);
    let boot = Boot {
        spdm_port: Some(device.port),
        config: Some(assign_config("assign", &[0x37; 64], 1000)),
        secret: Some(throwaway_secret()),
        ..Boot::default()
    };
    let o = boot.run(&qemu, "interop_ignore_reporting_offset");
    let device = device.finish();
    o.expect_status(37);
    let stream = o.dir.join("artifacts.bin");
    let (status, _, err) = run_tool("firmware", &["artifacts".as_ref(), stream.as_os_str(), o.dir.as_os_str()]);
    assert_eq!(status, 0, "firmware artifacts: {err}");
    let line = std::fs::read_to_string(o.dir.join("interop.txt")).unwrap();
    let page = seamless_e2e::BAR0 >> 12;
    let rdx = 5 | page << 16;
    let want = format!("(DEVICE_ERROR, RCX 0x320, RDX {rdx:#x}): MMIO range 0 begins at page {page:#x}, below");
    assert!(line.contains(&want), "{line}");
    assert!(line.contains("SPDM 1.3 (") && line.contains("inside the session"), "{line}");
    assert!(!o.console.contains("mmio: BAR0") && !o.console.contains("tdi: RUN"), "{}", o.console);
    // The device saw its TDI stopped by the cleanup.
    assert!(device.tdis().iter().all(|t| format!("{:?}", t.state) == "ConfigUnlocked"), "{:?}", device.tdis());
}

/// A device that refuses GET_MEASUREMENTS inside the session (tdisp-device's
/// `session_measurements_error`, ERROR UnsupportedRequest) is measured in the clear, the
/// assignment completes, and the verifier sees where: `device0.measurements_in_session` says "in
/// the clear", passes a policy that does not ask, and fails one with `measurements_in_session =
/// true`, alone.
#[test]
fn a_device_measured_in_the_clear_is_reported_so_and_a_policy_can_refuse_it() {
    let Some(qemu) = Qemu::find() else { return };
    let nonce = [0x6C; 64];
    let platform = std::env::temp_dir().join(format!("seamless-e2e-platform-interop-clear-{}", std::process::id()));
    let secret = seamless_e2e::provision(&platform);
    let mut c = seamless_e2e::assign_device(false);
    c.session_measurements_error = Some(0x07);
    let device = seamless_e2e::DeviceServer::with_config(c);
    let boot = Boot {
        spdm_port: Some(device.port),
        config: Some(assign_config("assign", &nonce, 1000)),
        secret: Some(secret),
        ..Boot::default()
    };
    let o = boot.run(&qemu, "interop_clear_measurements");
    let device = device.finish();
    o.expect_status(33);
    assert!(
        o.console.contains("secure session up, measured in the clear (the device refused in-session measurement)"),
        "{}",
        o.console
    );
    let root = device.identity().root_der.clone();
    let v = seamless_e2e::verify(&o, &platform, &root, &nonce);
    assert_eq!((v.status, v.failed()), (0, Vec::<String>::new()), "{}", v.json);
    let check = |json: &str| -> serde_json::Value {
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        v["checks"].as_array().unwrap().iter().find(|c| c["id"] == "device0.measurements_in_session").unwrap().clone()
    };
    let c = check(&v.json);
    assert_eq!((c["status"].as_str(), c["actual"].as_str()), (Some("skipped"), Some("in the clear")), "{c}");
    // The same evidence against a policy that demands the session.
    let policy = std::fs::read_to_string(o.dir.join("policy.toml")).unwrap();
    let strict = policy.replacen("[[device]]\n", "[[device]]\nmeasurements_in_session = true\n", 1);
    assert_ne!(strict, policy);
    let strict_path = o.dir.join("policy-in-session.toml");
    std::fs::write(&strict_path, strict).unwrap();
    let nonce_hex: String = nonce.iter().map(|b| format!("{b:02x}")).collect();
    let path = |f: &str| o.dir.join(f).into_os_string();
    let (root_pem, ak) = (platform.join("root.pem").into_os_string(), platform.join("tsm-ak.pem").into_os_string());
    let args: Vec<std::ffi::OsString> = vec![
        "verify".into(),
        "--report".into(),
        path("report.bin"),
        "--evidence".into(),
        path("evidence.bin"),
        "--policy".into(),
        strict_path.into_os_string(),
        "--root".into(),
        root_pem,
        "--ak-cert".into(),
        ak,
        "--nonce".into(),
        nonce_hex.into(),
        "--json".into(),
    ];
    let args: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsString::as_os_str).collect();
    let (status, json, err) = run_tool("attest", &args);
    assert_eq!(status, 1, "REJECTED: {err}\n{json}");
    let c = check(&json);
    assert_eq!((c["status"].as_str(), c["actual"].as_str()), (Some("fail"), Some("in the clear")), "{c}");
    let failed = seamless_e2e::Verdict { status, json }.failed();
    assert_eq!(failed, ["device0.measurements_in_session"], "only that check fails");
    let _ = std::fs::remove_dir_all(platform);
}
