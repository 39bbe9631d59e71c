//! Fixtures of the CLI tests: a provisioned platform, a signed report with its bundle, the policy
//! `attest policy init` writes for them, and the SNP export; all made once per test binary.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use attest::evidence::{sha384, transcript_digest, EvidenceWriter, RecordType};
use attest::platform::SecretBlob;
use attest::report::{DeviceEntry, FunctionId, Report, SpdmAlgorithms, TdiState};

/// The TSM measurement the platforms are provisioned for.
pub const MRSEAM: [u8; 48] = [0x5e; 48];
/// The verifier's nonce.
pub const NONCE: [u8; 64] = [0xda; 64];

/// What a run printed and returned.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the built `attest` with `args`.
pub fn run<S: AsRef<str>>(args: &[S]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_attest")).args(args.iter().map(|a| a.as_ref())).output().unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

pub fn s(x: &str) -> String {
    x.to_owned()
}

pub fn path(p: &Path) -> String {
    p.to_str().unwrap().to_owned()
}

pub fn hex(b: &[u8]) -> String {
    attest::host::hex::encode(b)
}

/// A fresh directory for this test process.
pub fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("attest-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Deterministic noise.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A provisioned platform.
#[derive(Debug)]
pub struct Platform {
    pub dir: PathBuf,
    pub blob: SecretBlob,
}

impl Platform {
    pub fn root(&self) -> PathBuf {
        self.dir.join("root.pem")
    }
}

fn provision(name: &str) -> Platform {
    let dir = scratch(name);
    let r = run(&[
        s("provision"),
        s("--out"),
        path(&dir),
        s("--mrseam"),
        hex(&MRSEAM),
        s("--tsm-svn"),
        s("7"),
        s("--force"),
    ]);
    assert_eq!(r.code, 0, "provision: {}", r.stderr);
    let blob = SecretBlob::read_from(&std::fs::read(dir.join("platform-secret.bin")).unwrap()).unwrap();
    Platform { dir, blob }
}

/// The platform the fixture's report comes from.
pub fn platform() -> &'static Platform {
    static P: OnceLock<Platform> = OnceLock::new();
    P.get_or_init(|| provision("platform"))
}

/// Another platform: another root, another secret.
pub fn other_platform() -> &'static Platform {
    static P: OnceLock<Platform> = OnceLock::new();
    P.get_or_init(|| provision("other"))
}

/// One device's evidence and the report entry bound to it.
pub fn device_evidence(index: u8, w: &mut EvidenceWriter) -> DeviceEntry {
    let chain: Vec<u8> = (0..700u32).map(|i| (i as u8) ^ index).collect();
    let vca = vec![0x10 + index; 60];
    let meas: Vec<u8> = (0..200u8).map(|i| i.wrapping_mul(3) ^ index).collect();
    let ir = vec![0x40 + index; 40];
    w.push(RecordType::CertChain, index, &chain).unwrap();
    w.push(RecordType::Vca, index, &vca).unwrap();
    w.push(RecordType::Measurements, index, &meas).unwrap();
    w.push(RecordType::InterfaceReport, index, &ir).unwrap();
    let mut d = DeviceEntry::zeroed();
    d.set_function_id(FunctionId::new(0, 0x0100 + u16::from(index) * 8));
    d.set_tdi_state(TdiState::Run);
    d.spdm_version = 0x12;
    d.set_lock_flags(0x1);
    d.set_algorithms(&SpdmAlgorithms {
        base_asym: 0x80,
        base_hash: 0x02,
        measurement_hash: 0x04,
        dhe: 0x10,
        aead: 0x02,
        key_schedule: 0x01,
        measurement_spec: 0x01,
    });
    d.cert_chain_sha384 = sha384(&chain);
    d.measurements_transcript_sha384 = transcript_digest(&vca, &meas);
    d.interface_report_sha384 = sha384(&ir);
    d
}

/// A signed report with its bundle, policy and SNP export, on [`platform`].
#[derive(Debug)]
pub struct Fixture {
    pub platform: &'static Platform,
    pub dir: PathBuf,
    pub report: Report,
    pub report_path: PathBuf,
    pub evidence: PathBuf,
    pub policy: PathBuf,
    pub devices: usize,
}

impl Fixture {
    /// `attest verify` of the fixture, with `extra` appended.
    pub fn verify_args(&self, extra: &[&str]) -> Vec<String> {
        let mut v = vec![
            s("verify"),
            s("--report"),
            path(&self.report_path),
            s("--evidence"),
            path(&self.evidence),
            s("--policy"),
            path(&self.policy),
            s("--root"),
            path(&self.platform.root()),
            s("--nonce"),
            hex(&NONCE),
        ];
        v.extend(extra.iter().map(|e| s(e)));
        v
    }

    /// [`Fixture::verify_args`] with option `opt` set to `value`.
    pub fn verify_with(&self, opt: &str, value: &str, extra: &[&str]) -> Vec<String> {
        let mut v = self.verify_args(extra);
        let at = v.iter().position(|a| a == opt).unwrap();
        v[at + 1] = value.to_owned();
        v
    }
}

pub fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let platform = platform();
        let dir = scratch("fixture");
        let mut w = EvidenceWriter::new();
        let entry = device_evidence(0, &mut w);
        let mut report = Report::new();
        report.tsm.set_svn(7);
        report.tsm.mr_seam = MRSEAM;
        report.td.mr_td = [0x7d; 48];
        for (i, r) in report.td.rtmr.iter_mut().enumerate() {
            *r = [0x10 + i as u8; 48];
        }
        report.td.set_attributes(0x1000_0000);
        report.td.set_xfam(0xe7);
        report.report_data = NONCE;
        report.set_devices(&[entry]).unwrap();
        let ak = attest::sign::derive_attestation_key(&platform.blob.secret, &MRSEAM);
        attest::sign::sign(&mut report, &ak).unwrap();
        let report_path = dir.join("report.bin");
        std::fs::write(&report_path, report.to_bytes()).unwrap();
        let evidence = dir.join("evidence.bin");
        std::fs::write(&evidence, w.finish()).unwrap();
        let policy = dir.join("policy.toml");
        let r = run(&[
            s("policy"),
            s("init"),
            s("--report"),
            path(&report_path),
            s("--evidence"),
            path(&evidence),
            s("--out"),
            path(&policy),
        ]);
        assert_eq!(r.code, 0, "policy init: {}", r.stderr);
        let snp = attest::snp::export(&report, &platform.blob, &MRSEAM).unwrap();
        std::fs::write(dir.join("snp.bin"), snp.to_bytes()).unwrap();
        Fixture { platform, dir, report, report_path, evidence, policy, devices: 1 }
    })
}
