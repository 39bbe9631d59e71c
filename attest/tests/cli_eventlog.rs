//! `attest verify --event-log` and `attest show --event-log`, run as a user runs them, on a
//! report whose RTMRs a CC event log replays to, built as the patched TDVF writes it, with real
//! device evidence (the TSM's requester against `tdisp-device`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::PathBuf;
use std::sync::OnceLock;

use attest::eventlog::writer::{DeviceMeasurement, LogWriter, MR_INDEX_RTMR1};
use attest::evidence::{sha384, transcript_digest};
use attest::report::FUNCTION_ID_VALID;
use common::*;
use sha2::{Digest, Sha384};

/// The log, the registers it replays to (extended here, not by the parser), and its files.
struct LogFixture {
    dir: PathBuf,
    log: LogWriter,
    rtmr: [[u8; 48]; 4],
    report: PathBuf,
    evidence: PathBuf,
    policy: PathBuf,
}

fn extend(r: &mut [u8; 48], digest: &[u8; 48]) {
    *r = Sha384::new().chain_update(*r).chain_update(digest).finalize().into();
}

fn device() -> DeviceMeasurement {
    let e = real_evidence();
    DeviceMeasurement {
        function_id: u64::from(FUNCTION_ID_VALID | e.function_id),
        spdm_version: u16::from(e.version),
        cert_chain_sha384: sha384(&e.chain),
        transcript_sha384: transcript_digest(&e.vca, &e.measurements),
        interface_report: e.interface_report.clone(),
        pci: attest::eventlog::writer::QEMU_NVME_PCI,
    }
}

fn fixture() -> &'static LogFixture {
    static F: OnceLock<LogFixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = scratch("eventlog");
        let mut log = LogWriter::new();
        let mut rtmr = [[0u8; 48]; 4];
        log.no_action(b"SP800-155 Event2");
        log.event(1, 0x8000_000A, &[0x33; 48], b"CFV");
        extend(&mut rtmr[0], &[0x33; 48]);
        log.device(&device());
        for (_, data) in attest::eventlog::writer::device_events(&device()) {
            extend(&mut rtmr[1], &Sha384::digest(&data).into());
        }
        let mut report = signed_report(platform(), entry_for(real_evidence()));
        report.td.rtmr = rtmr;
        let ak = attest::sign::derive_attestation_key(&platform().blob.secret, &MRSEAM);
        attest::sign::sign(&mut report, &ak).unwrap();
        let (report_path, evidence, policy) = write_report_bundle_policy(&dir, &report, real_evidence());
        LogFixture { dir, log, rtmr, report: report_path, evidence, policy }
    })
}

fn write(name: &str, bytes: &[u8]) -> String {
    let p = fixture().dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    path(&p)
}

fn verify(log: &str, extra: &[&str]) -> Run {
    let f = fixture();
    let mut args = vec![
        s("verify"),
        s("--report"),
        path(&f.report),
        s("--evidence"),
        path(&f.evidence),
        s("--policy"),
        path(&f.policy),
        s("--root"),
        path(&platform().root()),
        s("--nonce"),
        hex(&NONCE),
        s("--event-log"),
        s(log),
    ];
    args.extend(extra.iter().map(|e| s(e)));
    run(&args)
}

fn line<'a>(out: &'a str, id: &str) -> &'a str {
    out.lines().find(|l| l.starts_with(&format!("{id} "))).unwrap_or_else(|| panic!("no {id} in\n{out}"))
}

#[test]
fn verify_event_log_rejects_a_malformed_log_as_unusable_input() {
    let good = fixture().log.finish();
    let mut bad_index = good.clone();
    bad_index[65] = 9;
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (vec![], "event log needs a 32-byte header event, got 0 bytes"),
        (good[..40].to_vec(), "Spec ID header event malformed: event size 33 but only 8 bytes follow its header"),
        (bad_index, "event at offset 65 (type 0x3) has MR index 9"),
        (good[..good.len() - 1].to_vec(), "bytes of data, only"),
        (random_bytes(300, 7), "event log"),
    ];
    for (i, (bytes, message)) in cases.into_iter().enumerate() {
        let p = write(&format!("bad-log-{i}.bin"), &bytes);
        let r = verify(&p, &[]);
        assert_eq!(r.code, 2, "{message}: {}\n{}", r.stdout, r.stderr);
        assert!(r.stderr.contains(message), "want {message:?} in {}", r.stderr);
        assert!(r.stderr.starts_with("attest: error: event log "), "{}", r.stderr);
        assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    }
    let r = verify("/nonexistent/ccel.bin", &[]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("event log /nonexistent/ccel.bin"), "{}", r.stderr);
}

#[test]
fn verify_event_log_rejects_a_log_that_does_not_replay_rtmr1_naming_both_values() {
    let mut late = fixture().log.clone();
    late.measure(MR_INDEX_RTMR1, 4, &[0; 4]);
    let r = verify(&write("late.bin", &late.finish()), &[]);
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    let failed: Vec<&str> =
        r.stdout.lines().filter(|l| l.contains(" fail ")).map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(failed, ["eventlog.rtmr1"], "{}", r.stdout);
    let l = line(&r.stdout, "eventlog.rtmr1");
    assert!(l.contains(&hex(&fixture().rtmr[1])[..27]), "{l}");
    assert!(l.contains("do not replay to the report's RTMR[1]"), "{l}");
    // JSON keeps both registers whole.
    let r = verify(&write("late.bin", &late.finish()), &["--json"]);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let c = v["checks"].as_array().unwrap().iter().find(|c| c["id"] == "eventlog.rtmr1").unwrap();
    assert_eq!(c["expected"], hex(&fixture().rtmr[1]));
    assert_eq!(c["status"], "fail");
    assert_eq!(v["event_log"]["events"], 6);
    assert_eq!(v["event_log"]["fill_bytes"], 0);
    assert_eq!(v["event_log"]["signed"], false);
}

#[test]
fn verify_event_log_rejects_device_events_the_bundle_does_not_hold() {
    // The events of another chain: RTMR[1] no longer replays and the event names the difference.
    let mut other = device();
    other.cert_chain_sha384[0] ^= 1;
    let mut log = LogWriter::new();
    log.no_action(b"SP800-155 Event2").event(1, 0x8000_000A, &[0x33; 48], b"CFV").device(&other);
    let r = verify(&write("other-chain.bin", &log.finish()), &[]);
    assert_eq!(r.code, 1);
    let failed: Vec<&str> =
        r.stdout.lines().filter(|l| l.contains(" fail ")).map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(failed, ["eventlog.rtmr1", "device0.event.cert_chain"], "{}", r.stdout);
    assert!(line(&r.stdout, "device0.event.cert_chain").contains("the event's digest is not the report's"));
}

#[test]
fn verify_event_log_passes_every_check_of_a_genuine_log_in_its_area() {
    let area = fixture().log.finish_in_area(0x10000);
    let p = write("ccel.bin", &area);
    let r = verify(&p, &[]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("VERIFIED"), "{}", r.stdout);
    let used = fixture().log.finish().len();
    assert!(
        r.stdout.contains(&format!("event log: {p} (5 events in {used} bytes, {} bytes of 0xFF fill", 0x10000 - used)),
        "{}",
        r.stdout
    );
    for id in [
        "eventlog.format",
        "eventlog.rtmr0",
        "eventlog.rtmr1",
        "eventlog.rtmr2",
        "eventlog.rtmr3",
        "eventlog.spdm_events",
        "device0.event.cert_chain",
        "device0.event.measurements",
        "device0.event.interface_report",
    ] {
        assert!(line(&r.stdout, id).contains(" pass "), "{id}:\n{}", r.stdout);
    }
    // The event-log rows come after the engine's and before the host's device checks.
    let at = |id: &str| r.stdout.find(&format!("\n{id} ")).unwrap();
    assert!(at("device0.binding.interface_report") < at("eventlog.format"));
    assert!(at("device0.event.interface_report") < at("device0.cert_chain.root"));
}

#[test]
fn show_event_log_prints_each_event_and_what_the_spdm_events_carry() {
    let p = write("show.bin", &fixture().log.finish_in_area(4096));
    let r = run(&[s("show"), s("--event-log"), p.clone(), s("--json")]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let log = &v["event_log"];
    assert_eq!(log["spec_id"]["uintn_size"], 2);
    let events = log["events"].as_array().unwrap();
    assert_eq!(events.len(), 5);
    assert_eq!(events[0]["type"], "EV_NO_ACTION");
    assert_eq!(events[0]["register"], "none (not extended)");
    assert_eq!(events[1]["register"], "RTMR[0]");
    let e = real_evidence();
    assert_eq!(events[2]["type"], "EV_EFI_SPDM_FIRMWARE_BLOB");
    assert_eq!(events[2]["register"], "RTMR[1]");
    assert_eq!(events[2]["spdm"]["carries"], "cert_chain");
    assert_eq!(events[2]["spdm"]["cert_chain_sha384"], hex(&sha384(&e.chain)));
    assert_eq!(events[3]["spdm"]["measurements_transcript_sha384"], hex(&transcript_digest(&e.vca, &e.measurements)));
    assert_eq!(events[4]["type"], "EV_EFI_SPDM_FIRMWARE_CONFIG");
    assert_eq!(events[4]["spdm"]["interface_report_bytes"], e.interface_report.len());
    assert_eq!(events[4]["spdm"]["pci"]["vendor_id"], "0x1b36");
    assert_eq!(log["replayed_rtmr"][1], hex(&fixture().rtmr[1]));
    assert_eq!(log["fill_bytes"], 4096 - fixture().log.finish().len());
    // The tree form names the function as the report does.
    let r = run(&[s("show"), s("--event-log"), p]);
    assert_eq!(r.code, 0);
    assert!(r.stdout.contains(&format!("function_id: 0000:{:02x}", (e.function_id >> 8) & 0xff)), "{}", r.stdout);
    assert!(r.stdout.contains("carries: interface_report"), "{}", r.stdout);
    // A broken log shows the events before the error, and exits 2 naming it.
    let mut broken = fixture().log.finish();
    broken.extend_from_slice(&[5, 0, 0, 0]);
    let r = run(&[s("show"), s("--event-log"), write("broken.bin", &broken)]);
    assert_eq!(r.code, 2);
    assert!(r.stdout.contains("EV_EFI_SPDM_FIRMWARE_CONFIG"), "{}", r.stdout);
    assert!(r.stderr.contains("needs a 12-byte header, only 4 bytes left (events before it shown)"), "{}", r.stderr);
}
