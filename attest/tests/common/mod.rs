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

/// A fresh directory for this test process. Directories that earlier test processes (no longer
/// running) left behind are removed first: they hold platform secrets, if only test ones.
pub fn scratch(name: &str) -> PathBuf {
    if let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) {
        for e in entries.flatten() {
            let file = e.file_name();
            let Some(rest) = file.to_str().and_then(|f| f.strip_prefix("attest-cli-")) else { continue };
            let pid = rest.split('-').next().unwrap_or("");
            let gone =
                pid.parse::<u32>().is_ok_and(|p| p != std::process::id() && !Path::new(&format!("/proc/{p}")).exists());
            if gone {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
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

/// The evidence of a real SPDM conversation: the TSM's requester (`tsm::spdm::connect`) against
/// the emulated device (`tdisp-device`), in process.
#[derive(Debug, Clone)]
pub struct RealEvidence {
    pub chain: Vec<u8>,
    pub vca: Vec<u8>,
    pub measurements: Vec<u8>,
    pub interface_report: Vec<u8>,
    pub version: u8,
    pub function_id: u32,
    pub root_der: Vec<u8>,
    /// What the connection negotiated, as the report records it.
    pub algorithms: SpdmAlgorithms,
}

/// Lock flags the fixture's device was locked with: NO_FW_UPDATE.
pub const LOCK_FLAGS: u16 = 0x1;

pub fn real_evidence() -> &'static RealEvidence {
    static E: OnceLock<RealEvidence> = OnceLock::new();
    E.get_or_init(|| evidence_of(tdisp_device::Device::new(tdisp_device::Config::default()).unwrap()))
}

/// The same with a device of a P-256 identity (ECDSA P-256, SHA-256, secp256r1, AES-128-GCM).
pub fn real_evidence_p256() -> &'static RealEvidence {
    static E: OnceLock<RealEvidence> = OnceLock::new();
    E.get_or_init(|| {
        let mut rng = tdisp_device::rng::Rng::new([0x56; 32]);
        let identity = tdisp_device::Identity::generate_p256(&mut rng).unwrap();
        evidence_of(tdisp_device::Device::with_identity(tdisp_device::Config::default(), identity, rng).unwrap())
    })
}

fn evidence_of(mut device: tdisp_device::Device) -> RealEvidence {
    use tsm::doe::Action;
    use tsm::spdm::connect::{Connect, ConnectRandom};
    {
        let mut c = Connect::new(ConnectRandom {
            challenge_nonce: [0x11; 32],
            measurement_nonce: [0x22; 32],
            context: [0x33; 8],
            ephemeral: [0x44; 48],
            random: [0x55; 32],
        });
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
        let iface = &device.config().interfaces[0];
        // The device's own DEVICE_INTERFACE_REPORT builder, as it answers once locked.
        let interface_report = tdisp_device::tdisp::build_report(iface, LOCK_FLAGS, 0, false);
        RealEvidence {
            chain: c.chain_bytes().unwrap().to_vec(),
            vca: c.vca().to_vec(),
            measurements: c.measurements().unwrap().to_vec(),
            interface_report,
            version: c.negotiated().unwrap().version,
            function_id: iface.function_id,
            root_der: device.identity().root_der.clone(),
            algorithms: tsm::attestation::negotiated_algorithms(&c.negotiated().unwrap()),
        }
    }
}

/// The report entry bound to `e`'s blobs.
pub fn entry_for(e: &RealEvidence) -> DeviceEntry {
    let mut d = DeviceEntry::zeroed();
    d.set_function_id(FunctionId(attest::report::FUNCTION_ID_VALID | e.function_id));
    d.set_tdi_state(TdiState::Run);
    d.spdm_version = e.version;
    d.set_lock_flags(LOCK_FLAGS);
    d.set_algorithms(&e.algorithms);
    // Measured inside the session, as the TSM's SPDM.CONNECT does.
    d.set_measured_in_session(true);
    d.cert_chain_sha384 = sha384(&e.chain);
    d.measurements_transcript_sha384 = transcript_digest(&e.vca, &e.measurements);
    d.interface_report_sha384 = sha384(&e.interface_report);
    d
}

/// A bundle of `e` for device 0.
pub fn bundle_for(e: &RealEvidence) -> Vec<u8> {
    let mut w = EvidenceWriter::new();
    w.push(RecordType::CertChain, 0, &e.chain).unwrap();
    w.push(RecordType::Vca, 0, &e.vca).unwrap();
    w.push(RecordType::Measurements, 0, &e.measurements).unwrap();
    w.push(RecordType::InterfaceReport, 0, &e.interface_report).unwrap();
    w.finish()
}

/// A report for device `entry` with the fixture's TD, signed by `platform`'s attestation key.
pub fn signed_report(platform: &Platform, entry: DeviceEntry) -> Report {
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
    report
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

/// Writes `report`, the bundle of `evidence` and the policy `attest policy init` derives from
/// both into `dir`; returns their paths (report, bundle, policy).
pub fn write_report_bundle_policy(dir: &Path, report: &Report, evidence: &RealEvidence) -> (PathBuf, PathBuf, PathBuf) {
    let report_path = dir.join("report.bin");
    std::fs::write(&report_path, report.to_bytes()).unwrap();
    let bundle = dir.join("evidence.bin");
    std::fs::write(&bundle, bundle_for(evidence)).unwrap();
    let policy = dir.join("policy.toml");
    let r = run(&[
        s("policy"),
        s("init"),
        s("--report"),
        path(&report_path),
        s("--evidence"),
        path(&bundle),
        s("--out"),
        path(&policy),
    ]);
    assert_eq!(r.code, 0, "policy init: {}", r.stderr);
    (report_path, bundle, policy)
}

pub fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let platform = platform();
        let dir = scratch("fixture");
        let real = real_evidence();
        let report = signed_report(platform, entry_for(real));
        let (report_path, evidence, policy) = write_report_bundle_policy(&dir, &report, real);
        let snp = attest::snp::export(&report, &platform.blob, &MRSEAM).unwrap();
        std::fs::write(dir.join("snp.bin"), snp.to_bytes()).unwrap();
        Fixture { platform, dir, report, report_path, evidence, policy, devices: 1 }
    })
}
