//! Attestation figures: verifying a native report in-process (report only, and with one device's
//! evidence from a real SPDM conversation), and the whole `attest verify` process. With
//! `--peers`, and `snpguest` on PATH, snpguest's report-signature check on the same SNP export.
//!
//! * `verify_report_per_s`: the engine's checks of a report without devices, the signature with
//!   ring (as `attest verify` does); `verify_report_p384_per_s` the same with p384, for
//!   comparison.
//! * `verify_report_1dev_per_s`: report and one device, engine and device-side checks, with the
//!   verified-chain cache warm (a verifier that has seen the device before: two ECDSA
//!   verifications per report, the TSM's and the device's); `verify_report_1dev_cold_per_s` with
//!   a fresh cache each time (four: the chain's two links as well).
//! * `verify_event_log_per_s`: layer 4 on a real CC event log of the patched TDVF (9 events, its
//!   report and bundle, `attest/tests/data/ovmf-nvme/`): parse, replay of the four RTMRs, the
//!   SPDM events and their checks against the report and the bundle.
//! * `attest_verify_process_ms`: median wall time of `attest verify` on files, one device.
//! * `snpguest_verify_process_ms` and `attest_vs_snpguest_ratio` (ours / theirs).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use attest::evidence::{sha384, transcript_digest, Evidence, EvidenceWriter, RecordType};
use attest::host::device::{self, ChainCache};
use attest::host::ring_verify::RingKey;
use attest::host::{hex, policy};
use attest::platform::SecretBlob;
use attest::report::{DeviceEntry, FunctionId, Report, SpdmAlgorithms, TdiState, FUNCTION_ID_VALID};
use attest::sign::{derive_attestation_key, sign, SigningKey};
use attest::verify::{self, Inputs, MaskedValue, Policy};
use tdisp_device::{Config, Device};
use tsm::doe::Action;
use tsm::spdm::connect::{Connect, ConnectRandom};

use crate::Figures;

const MRSEAM: [u8; 48] = [0x5e; 48];
const NONCE: [u8; 64] = [0xda; 64];

struct Evidence1 {
    entry: DeviceEntry,
    bundle: Vec<u8>,
}

/// One device's evidence from a real conversation: the TSM's requester against the emulated
/// device; the interface report from the device's own builder.
fn real_device() -> Evidence1 {
    let mut device = Device::new(Config::default()).unwrap();
    let mut c = Connect::new(ConnectRandom {
        challenge_nonce: [1; 32],
        measurement_nonce: [2; 32],
        context: [3; 8],
        ephemeral: [0x44; 48],
        random: [5; 32],
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
    let ir = tdisp_device::tdisp::build_report(iface, 0x1, 0, false);
    let (chain, vca, meas) = (c.chain_bytes().unwrap(), c.vca(), c.measurements().unwrap());
    let mut w = EvidenceWriter::new();
    w.push(RecordType::CertChain, 0, chain).unwrap();
    w.push(RecordType::Vca, 0, vca).unwrap();
    w.push(RecordType::Measurements, 0, meas).unwrap();
    w.push(RecordType::InterfaceReport, 0, &ir).unwrap();
    let mut d = DeviceEntry::zeroed();
    d.set_function_id(FunctionId(FUNCTION_ID_VALID | iface.function_id));
    d.set_tdi_state(TdiState::Run);
    d.spdm_version = c.negotiated().unwrap().version;
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
    d.cert_chain_sha384 = sha384(chain);
    d.measurements_transcript_sha384 = transcript_digest(vca, meas);
    d.interface_report_sha384 = sha384(&ir);
    Evidence1 { entry: d, bundle: w.finish() }
}

fn report(devices: &[DeviceEntry], key: &SigningKey) -> Report {
    let mut r = Report::new();
    r.tsm.set_svn(7);
    r.tsm.mr_seam = MRSEAM;
    r.td.mr_td = [0x7d; 48];
    r.report_data = NONCE;
    r.set_devices(devices).unwrap();
    sign(&mut r, key).unwrap();
    r
}

/// Runs `f` for about `budget` and returns calls per second.
fn rate(budget: Duration, mut f: impl FnMut()) -> f64 {
    for _ in 0..20 {
        f();
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < budget {
        for _ in 0..20 {
            f();
        }
        n += 20;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn median_ms(runs: usize, mut f: impl FnMut() -> bool) -> Option<f64> {
    let mut t = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        if !f() {
            return None;
        }
        t.push(start.elapsed().as_secs_f64() * 1e3);
    }
    t.sort_by(|a, b| a.total_cmp(b));
    Some(t[t.len() / 2])
}

fn attest_binary() -> Option<PathBuf> {
    let target = crate::results_path().parent()?.parent()?.to_path_buf();
    let p = target.join("release").join("attest");
    p.exists().then_some(p)
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(name)).find(|p| p.is_file())
}

/// Records the attestation figures.
pub fn run(figs: &mut Figures) {
    let peers = std::env::args().any(|a| a == "--peers");
    let budget = Duration::from_millis(1500);
    let key = derive_attestation_key(&[7; 32], &MRSEAM);
    let vk = *key.verifying_key();
    let ring_key = RingKey::new(&vk);

    // Report only.
    let r0 = report(&[], &key);
    let p0 = Policy::new(r0.td.mr_td, MaskedValue::default());
    let inputs = Inputs { report: &r0, evidence: None, key: &vk, nonce: Some(&NONCE) };
    let v = verify::verify_with(&inputs, &p0, &|r| ring_key.verify(r));
    assert!(v.verified());
    figs.record(
        "verify_report_per_s",
        rate(budget, || {
            let v = verify::verify_with(&inputs, &p0, &|r| ring_key.verify(r));
            assert!(v.verified());
        }),
        "/s",
    );
    figs.record("verify_report_p384_per_s", rate(budget, || assert!(verify::verify(&inputs, &p0).verified())), "/s");

    // Report and one device.
    let dev = real_device();
    let r1 = report(&[dev.entry], &key);
    let ev = Evidence::parse(&dev.bundle).unwrap();
    let text = policy::reference_policy(&r1, Some(&ev), "bench");
    let hp = policy::parse_file(&text, None).unwrap();
    let inputs1 = Inputs { report: &r1, evidence: Some(&dev.bundle), key: &vk, nonce: Some(&NONCE) };
    let full = |cache: &mut ChainCache| {
        let v = verify::verify_with(&inputs1, &hp.policy, &|r| ring_key.verify(r));
        let ev = Evidence::parse(&dev.bundle).unwrap();
        let rows = device::check(&r1, Some(&ev), &hp.devices, cache);
        assert!(v.verified() && rows.iter().all(|r| r.status != verify::Status::Fail), "{rows:?}");
    };
    let mut warm = ChainCache::default();
    figs.record("verify_report_1dev_per_s", rate(budget, || full(&mut warm)), "/s");
    figs.record("verify_report_1dev_cold_per_s", rate(budget, || full(&mut ChainCache::default())), "/s");

    // The TD's CC event log against its report and bundle.
    let ccel = include_bytes!("../../../attest/tests/data/ovmf-nvme/ovmf-ccel.bin");
    let ovmf_report = Report::read_from(include_bytes!("../../../attest/tests/data/ovmf-nvme/report.bin")).unwrap();
    let ovmf_bundle = include_bytes!("../../../attest/tests/data/ovmf-nvme/evidence.bin");
    let check_log = || assert!(verify::verify_event_log(&ovmf_report, Some(ovmf_bundle), ccel).verified());
    figs.record("verify_event_log_per_s", rate(budget, check_log), "/s");

    // The whole process.
    let Some(bin) = attest_binary() else {
        eprintln!(
            "bench: attest_verify_process_ms not measured: no release build of attest (./run.sh bench builds it)"
        );
        return;
    };
    let dir = std::env::temp_dir().join(format!("seamless-bench-attest-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let ok = Command::new(&bin)
        .args(["provision", "--out"])
        .arg(&dir)
        .args(["--mrseam", &hex::encode(&MRSEAM), "--tsm-svn", "7"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        eprintln!("bench: attest provision failed; process figures not measured");
        return;
    }
    let blob = SecretBlob::read_from(&std::fs::read(dir.join("platform-secret.bin")).unwrap()).unwrap();
    let pkey = derive_attestation_key(&blob.secret, &MRSEAM);
    let rp = report(&[dev.entry], &pkey);
    std::fs::write(dir.join("report.bin"), rp.to_bytes()).unwrap();
    std::fs::write(dir.join("evidence.bin"), &dev.bundle).unwrap();
    std::fs::write(dir.join("policy.toml"), &text).unwrap();
    let snp = attest::snp::export(&rp, &blob, &MRSEAM).unwrap();
    std::fs::write(dir.join("snp.bin"), snp.to_bytes()).unwrap();
    let verify_once = || {
        Command::new(&bin)
            .arg("verify")
            .args([
                "--report",
                "report.bin",
                "--evidence",
                "evidence.bin",
                "--policy",
                "policy.toml",
                "--root",
                "root.pem",
            ])
            .args(["--nonce", &hex::encode(&NONCE)])
            .current_dir(&dir)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    let Some(ours) = median_ms(21, verify_once) else {
        eprintln!("bench: attest verify did not verify the bench's own report; process figure not recorded");
        return;
    };
    figs.record("attest_verify_process_ms", ours, "ms");
    peer(figs, peers, &dir, ours);
    // The directory holds a (bench) platform secret: leave nothing behind.
    let _ = std::fs::remove_dir_all(&dir);
}

/// snpguest on the same export, when asked for and installed.
fn peer(figs: &mut Figures, peers: bool, dir: &Path, ours: f64) {
    if !peers {
        eprintln!("bench: snpguest peer not run (pass --peers to compare with snpguest)");
        return;
    }
    let Some(snpguest) = on_path("snpguest") else {
        eprintln!("bench: snpguest absent (not on PATH; `cargo install snpguest` to compare): no snpguest figures");
        return;
    };
    let theirs = median_ms(21, || {
        Command::new(&snpguest)
            .args(["verify", "attestation"])
            .arg(dir)
            .arg(dir.join("snp.bin"))
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    });
    match theirs {
        Some(t) => {
            figs.record("snpguest_verify_process_ms", t, "ms");
            figs.record("attest_vs_snpguest_ratio", ours / t, "x");
        }
        None => eprintln!("bench: snpguest did not verify the export; no snpguest figures"),
    }
}
