//! The `attest` binary, run as a user runs it: exit 0 on a good report, 1 on a rejected one, 2 on
//! unusable input with a clear message, and never a panic.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;

use common::*;

/// 6 chain checks; the engine's 14 report checks and 15 for the device; the device side: chain 4,
/// measurements 2, 3 blocks, interface report format, INTERFACE_INFO, range count, 4 per range.
const ALL_CHECKS: usize = 6 + 14 + 15 + 4 + 2 + 3 + 3 + 4;

#[test]
fn help_and_unknown_commands() {
    let r = run(&["help"]);
    assert_eq!(r.code, 0);
    assert!(r.stdout.contains("usage: attest"));
    let r = run::<&str>(&[]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("no command given"));
    let r = run(&["frobnicate"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("unknown command \"frobnicate\""));
}

#[test]
fn provision_writes_the_platform_and_refuses_to_overwrite() {
    let p = platform();
    for f in attest::host::provision::FILES {
        assert!(p.dir.join(f).exists(), "{f}");
    }
    let r = run(&["provision", "--out", p.dir.to_str().unwrap()]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("exists; pass --force"), "{}", r.stderr);
    let r = run(&["provision", "--out", "/tmp/x", "--mrseam", "12"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("--mrseam: expected 96 hex digits"), "{}", r.stderr);
}

#[test]
fn a_good_report_verifies_with_exit_0_and_names_its_root() {
    let f = fixture();
    let r = run(&f.verify_args(&[]));
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("VERIFIED"), "{}", r.stdout);
    assert!(r.stdout.contains(&format!("trust root: {}", f.platform.root().display())));
    assert!(r.stdout.contains("offline: nothing was fetched; revocation was not checked"));
    for id in [
        "chain.root.signature",
        "chain.tsm_ak.signature",
        "report.signature",
        "report.nonce",
        "td.mrtd",
        "device0.state",
    ] {
        assert!(r.stdout.lines().any(|l| l.starts_with(id) && l.contains("pass")), "{id} passes:\n{}", r.stdout);
    }
}

#[test]
fn json_lists_every_check_with_expected_actual_and_reason() {
    let f = fixture();
    let r = run(&f.verify_args(&["--json"]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["schema"], "seamless-attest-verify/1");
    assert_eq!(v["verified"], true);
    assert_eq!(v["offline"], true);
    assert_eq!(v["trust_root"]["path"], f.platform.root().to_str().unwrap());
    assert_eq!(v["trust_root"]["sha384"].as_str().unwrap().len(), 96);
    let checks = v["checks"].as_array().unwrap();
    assert_eq!(checks.len(), ALL_CHECKS);
    for c in checks {
        for k in ["id", "status", "expected", "actual", "reason"] {
            assert!(c[k].is_string(), "{k} in {c}");
        }
        // FIRST_PAGE depends on the host's BAR placement; policy init leaves it out.
        let want = if c["id"] == "device0.interface_report.mmio_range0.first_page" { "skipped" } else { "pass" };
        assert_eq!(c["status"], want, "{c}");
    }
    let ids: Vec<&str> = checks.iter().map(|c| c["id"].as_str().unwrap()).collect();
    for id in [
        "device0.cert_chain.root",
        "device0.cert_chain.path",
        "device0.measurements.signature",
        "device0.measurement.1",
        "device0.measurement.3",
        "device0.interface_report.mmio_range0.pages",
    ] {
        assert!(ids.contains(&id), "{id}");
    }
}

#[test]
fn a_stale_nonce_is_rejected_with_exit_1_and_every_other_check_still_runs() {
    let f = fixture();
    let other = "ee".repeat(64);
    let mut args = f.verify_args(&["--json"]);
    let at = args.iter().position(|a| a == "--nonce").unwrap();
    args[at + 1] = other.clone();
    let r = run(&args);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["verified"], false);
    let failed: Vec<&serde_json::Value> =
        v["checks"].as_array().unwrap().iter().filter(|c| c["status"] == "fail").collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["id"], "report.nonce");
    assert_eq!(failed[0]["expected"], other);
    assert_eq!(failed[0]["actual"], hex(&NONCE));
    assert_eq!(v["checks"].as_array().unwrap().len(), ALL_CHECKS);
}

/// The fixture's `verify` arguments without `--nonce HEX`.
fn without_nonce(args: Vec<String>) -> Vec<String> {
    args.into_iter().filter(|a| a != "--nonce" && *a != hex(&NONCE)).collect()
}

#[test]
fn a_verdict_without_a_nonce_is_not_silently_verified() {
    let f = fixture();
    // No nonce and no opt-out: unusable, not VERIFIED (a replayed report would pass).
    expect_unusable(&without_nonce(f.verify_args(&[])), "missing --nonce HEX");
    expect_unusable(&f.verify_args(&["--no-nonce"]), "--nonce and --no-nonce: give one");
    // The explicit opt-out verifies, and the verdict says what it left out.
    let r = run(&without_nonce(f.verify_args(&["--no-nonce"])));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("no nonce given: freshness not checked"));
    let last = r.stdout.lines().last().unwrap();
    assert!(last.starts_with("VERIFIED, NOT CHECKED: freshness (--no-nonce"), "{last}");
    let r = run(&without_nonce(f.verify_args(&["--no-nonce", "--json"])));
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["verified"], true);
    assert!(v["not_checked"][0].as_str().unwrap().starts_with("freshness"), "{v}");
    // With the nonce, nothing is left out.
    let r = run(&f.verify_args(&["--json"]));
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["not_checked"], serde_json::json!([]));
}

#[test]
fn a_report_signed_outside_the_chain_is_rejected() {
    let f = fixture();
    let mut report = f.report;
    attest::sign::sign(&mut report, &attest::sign::derive_attestation_key(&[0x42; 32], &MRSEAM)).unwrap();
    let path = f.dir.join("foreign.bin");
    std::fs::write(&path, report.to_bytes()).unwrap();
    let r = run(&f.verify_with("--report", path.to_str().unwrap(), &[]));
    assert_eq!(r.code, 1);
    let fail: Vec<&str> = r.stdout.lines().filter(|l| l.contains(" fail ")).collect();
    assert_eq!(fail.len(), 1, "{}", r.stdout);
    assert!(fail[0].starts_with("report.signature"), "{}", fail[0]);
    let r = run(&f.verify_with("--report", path.to_str().unwrap(), &["--json"]));
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let c = v["checks"].as_array().unwrap().iter().find(|c| c["id"] == "report.signature").unwrap().clone();
    assert_eq!(c["status"], "fail");
    assert_eq!(c["actual"], "signature does not verify under the given key");
}

#[test]
fn another_platform_s_root_rejects_the_chain() {
    let f = fixture();
    let other = other_platform();
    // The other platform's root with this platform's attestation-key certificate.
    let ak = f.platform.dir.join("tsm-ak.pem");
    let mut args = f.verify_with("--root", other.root().to_str().unwrap(), &[]);
    args.extend(["--ak-cert".to_owned(), ak.to_str().unwrap().to_owned()]);
    let r = run(&args);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let failed: Vec<&str> =
        r.stdout.lines().filter(|l| l.contains(" fail ")).map(|l| l.split(' ').next().unwrap()).collect();
    // Both roots have the same name, so only the signature tells them apart.
    assert_eq!(failed, ["chain.tsm_ak.signature"], "{}", r.stdout);
    // The whole other platform: its key did not sign this report.
    let r = run(&f.verify_with("--root", other.root().to_str().unwrap(), &[]));
    assert_eq!(r.code, 1);
    assert!(r.stdout.lines().any(|l| l.starts_with("report.signature") && l.contains(" fail ")));
}

#[test]
fn policy_mismatches_exit_1_under_their_ids() {
    let f = fixture();
    let text = std::fs::read_to_string(&f.policy).unwrap();
    let mrtd = hex(&f.report.td.mr_td);
    let other_mrtd = hex(&[0x7e; 48]);
    let cases = [
        (mrtd.as_str(), other_mrtd.as_str(), "td.mrtd"),
        ("min_svn = 7", "min_svn = 8", "tsm.svn"),
        ("min_spdm_version = \"1.3\"", "min_spdm_version = \"1.4\"", "device0.spdm_version"),
        (
            "required_lock_flags = [\"NO_FW_UPDATE\"]",
            "required_lock_flags = [\"NO_FW_UPDATE\", \"LOCK_MSIX\"]",
            "device0.lock_flags",
        ),
        ("base_asym = \"0x80\"", "base_asym = \"0x10\"", "device0.algorithms.base_asym"),
    ];
    for (from, to, id) in cases {
        let changed = text.replacen(from, to, 1);
        assert_ne!(changed, text, "{id}");
        let path = f.dir.join(format!("policy-{id}.toml"));
        std::fs::write(&path, changed).unwrap();
        let r = run(&f.verify_with("--policy", path.to_str().unwrap(), &[]));
        assert_eq!(r.code, 1, "{id}: {}", r.stderr);
        let failed: Vec<&str> =
            r.stdout.lines().filter(|l| l.contains(" fail ")).map(|l| l.split(' ').next().unwrap()).collect();
        assert_eq!(failed, [id], "{}", r.stdout);
    }
}

fn expect_unusable(args: &[String], message: &str) {
    let r = run(args);
    assert_eq!(r.code, 2, "{args:?}: {}\n{}", r.stdout, r.stderr);
    assert!(r.stderr.contains(message), "{args:?}: want {message:?} in {}", r.stderr);
    assert!(r.stderr.starts_with("attest: error: "), "{}", r.stderr);
    assert!(!r.stderr.contains("panicked") && !r.stderr.contains("internal error"), "{}", r.stderr);
}

#[test]
fn malformed_reports_exit_2_with_a_clear_message() {
    let f = fixture();
    let good = f.report.to_bytes();
    let mut wrong_magic = good;
    wrong_magic[0] = b'X';
    let mut wrong_version = good;
    wrong_version[8] = 9;
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (vec![], "report must be 1200 bytes, got 0"),
        (good[..600].to_vec(), "report must be 1200 bytes, got 600"),
        ([&good[..], &[0]].concat(), "report must be 1200 bytes, got 1201"),
        (wrong_magic.to_vec(), "bad magic"),
        (wrong_version.to_vec(), "unsupported report version 9"),
        (random_bytes(1200, 1), "bad magic"),
        (random_bytes(77, 2), "report must be 1200 bytes, got 77"),
    ];
    for (i, (bytes, message)) in cases.into_iter().enumerate() {
        let path = f.dir.join(format!("bad-report-{i}.bin"));
        std::fs::write(&path, bytes).unwrap();
        expect_unusable(&f.verify_with("--report", path.to_str().unwrap(), &[]), message);
    }
    expect_unusable(&f.verify_with("--report", "/nonexistent/report.bin", &[]), "report /nonexistent/report.bin");
}

#[test]
fn malformed_bundles_exit_2_with_a_clear_message() {
    let f = fixture();
    let good = std::fs::read(&f.evidence).unwrap();
    let mut longer = good.clone();
    // The first record's length, made larger than the data that follows.
    longer[16..20].copy_from_slice(&(u32::MAX - 1).to_le_bytes());
    let mut wrong_version = good.clone();
    wrong_version[8] = 2;
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (vec![], "evidence bundle needs a 12-byte header, got 0 bytes"),
        (good[..good.len() - 3].to_vec(), "claims"),
        (longer, "claims 4294967294 bytes"),
        (wrong_version, "unsupported evidence version 2"),
        ([b"NOTEVID\0".as_slice(), &good[8..]].concat(), "bad evidence magic"),
        (random_bytes(500, 3), "bad evidence magic"),
    ];
    for (i, (bytes, message)) in cases.into_iter().enumerate() {
        let path = f.dir.join(format!("bad-evidence-{i}.bin"));
        std::fs::write(&path, bytes).unwrap();
        expect_unusable(&f.verify_with("--evidence", path.to_str().unwrap(), &[]), message);
    }
}

#[test]
fn malformed_policies_roots_and_options_exit_2() {
    let f = fixture();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("--policy", vec![], "missing field `version`"),
        ("--policy", b"version = 1\n[td\n".to_vec(), "TOML parse error"),
        ("--policy", random_bytes(300, 4), "policy"),
        ("--root", vec![], "empty file, expected a PEM or DER certificate"),
        ("--root", random_bytes(400, 5), "DER certificate"),
        ("--root", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".to_vec(), "PEM certificate"),
    ];
    for (i, (opt, bytes, message)) in cases.into_iter().enumerate() {
        let path = f.dir.join(format!("bad-{i}"));
        std::fs::write(&path, bytes).unwrap();
        expect_unusable(&f.verify_with(opt, path.to_str().unwrap(), &[]), message);
    }
    expect_unusable(&f.verify_with("--nonce", "zz", &[]), "--nonce: 'z' is not a hex digit");
    expect_unusable(&f.verify_with("--nonce", "abcd", &[]), "--nonce: expected 128 hex digits");
    expect_unusable(&[s("verify"), s("--report")], "--report needs a value");
    expect_unusable(&[s("verify"), s("--policy"), s("p")], "missing --report");
    expect_unusable(&f.verify_args(&["--colour"]), "unexpected argument \"--colour\"");
}

#[test]
fn the_snp_export_verifies_and_a_flipped_bit_is_rejected() {
    let f = fixture();
    let certs = f.platform.dir.to_str().unwrap().to_owned();
    let snp = f.dir.join("snp.bin");
    let r = run(&[
        s("verify"),
        s("--snp"),
        path(&snp),
        s("--certs"),
        certs.clone(),
        s("--report"),
        path(&f.report_path),
        s("--nonce"),
        hex(&NONCE),
    ]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    for id in [
        "snp.chain.ark",
        "snp.chain.ask",
        "snp.chain.vcek",
        "snp.report.signature",
        "snp.report.tcb.snp",
        "snp.report.chip_id",
        "snp.report_data.native_digest",
        "snp.report_data.nonce",
        "report.nonce",
    ] {
        assert!(r.stdout.lines().any(|l| l.starts_with(id) && l.contains("pass")), "{id}:\n{}", r.stdout);
    }
    assert!(r.stdout.contains(&format!("trust root: {}", f.platform.dir.join("ark.pem").display())));

    let good = std::fs::read(&snp).unwrap();
    let mut high = good.clone();
    high[0x2A0 + 60] = 1;
    let p = f.dir.join("snp-high.bin");
    std::fs::write(&p, high).unwrap();
    let r = run(&[s("verify"), s("--snp"), path(&p), s("--certs"), certs.clone(), s("--no-nonce")]);
    assert_eq!(r.code, 1, "a byte sev ignores is still caught");
    assert!(r.stdout.lines().any(|l| l.starts_with("snp.report.signature_encoding") && l.contains(" fail ")));
    for (byte, bit) in [(0x50usize, 0u8), (0x90, 7), (0x1A0, 3), (0x2A0, 1), (0x2E8, 6)] {
        let mut b = good.clone();
        b[byte] ^= 1 << bit;
        let p = f.dir.join(format!("snp-flip-{byte:x}.bin"));
        std::fs::write(&p, b).unwrap();
        let r = run(&[s("verify"), s("--snp"), path(&p), s("--certs"), certs.clone(), s("--no-nonce"), s("--json")]);
        assert_eq!(r.code, 1, "flip {byte:#x}.{bit}: {}", r.stderr);
        let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
        let sig = v["checks"].as_array().unwrap().iter().find(|c| c["id"] == "snp.report.signature").unwrap().clone();
        assert_eq!(sig["status"], "fail", "flip {byte:#x}.{bit}");
    }
    // Bound to another native report: the digest check fails.
    let mut other = f.report;
    other.td.mr_td[0] ^= 1;
    let p = f.dir.join("other-native.bin");
    std::fs::write(&p, other.to_bytes()).unwrap();
    let r = run(&[
        s("verify"),
        s("--snp"),
        path(&snp),
        s("--certs"),
        certs.clone(),
        s("--report"),
        path(&p),
        s("--no-nonce"),
    ]);
    assert_eq!(r.code, 1);
    assert!(r.stdout.lines().any(|l| l.starts_with("snp.report_data.native_digest") && l.contains(" fail ")));
    // Unusable: truncated, empty, no certificate directory.
    for (bytes, message) in [(good[..1000].to_vec(), "SNP report must be 1184 bytes, got 1000"), (vec![], "got 0")] {
        std::fs::write(f.dir.join("snp-bad.bin"), bytes).unwrap();
        expect_unusable(
            &[s("verify"), s("--snp"), path(&f.dir.join("snp-bad.bin")), s("--certs"), certs.clone(), s("--no-nonce")],
            message,
        );
    }
    expect_unusable(
        &[s("verify"), s("--snp"), path(&snp), s("--certs"), s("/nonexistent"), s("--no-nonce")],
        "no ark.pem or ark.der",
    );
}

#[test]
fn verify_snp_compares_the_whole_nonce_and_names_what_it_does_not_check() {
    let f = fixture();
    let certs = f.platform.dir.to_str().unwrap().to_owned();
    let snp = f.dir.join("snp.bin");
    // A nonce that agrees with the TD's in the 16 bytes the export carries and differs after:
    // without the native report it cannot be told apart, so the tool refuses to judge.
    let mut stale = NONCE;
    stale[40] ^= 1;
    let base = [s("verify"), s("--snp"), path(&snp), s("--certs"), certs];
    let args = |extra: &[String]| base.iter().chain(extra).cloned().collect::<Vec<_>>();
    expect_unusable(&args(&[s("--nonce"), hex(&stale)]), "verify --snp --nonce needs --report R");
    expect_unusable(&args(&[]), "missing --nonce HEX");
    // With the native report, all 64 bytes are compared: rejected.
    let r = run(&args(&[s("--report"), path(&f.report_path), s("--nonce"), hex(&stale), s("--json")]));
    assert_eq!(r.code, 1, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let failed: Vec<&str> = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["status"] == "fail")
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(failed, ["report.nonce"]);
    // A good one verifies, and the verdict says the policy was not applied.
    let r = run(&args(&[s("--report"), path(&f.report_path), s("--nonce"), hex(&NONCE)]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let last = r.stdout.lines().last().unwrap();
    assert!(last.starts_with("VERIFIED, NOT CHECKED: the policy (verify --snp applies none"), "{last}");
    let r = run(&args(&[s("--no-nonce"), s("--json")]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let n: Vec<&str> = v["not_checked"].as_array().unwrap().iter().map(|x| x.as_str().unwrap()).collect();
    assert_eq!(n.len(), 3, "{n:?}");
    assert!(n[1].starts_with("the binding to a native report") && n[2].starts_with("freshness"), "{n:?}");
}

#[test]
fn show_dumps_report_bundle_and_export() {
    let f = fixture();
    let r = run(&[
        s("show"),
        s("--report"),
        path(&f.report_path),
        s("--evidence"),
        path(&f.evidence),
        s("--snp"),
        path(&f.dir.join("snp.bin")),
        s("--json"),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["report"]["td"]["mrtd"], hex(&f.report.td.mr_td));
    assert_eq!(v["report"]["digest"], hex(&f.report.digest()));
    assert_eq!(v["evidence"]["records"].as_array().unwrap().len(), 4 * f.devices);
    assert_eq!(v["snp"]["version"], 3);
    let r = run(&[s("show"), s("--report"), path(&f.report_path)]);
    assert_eq!(r.code, 0);
    assert!(r.stdout.contains("mrtd: "));
    let mut broken = std::fs::read(&f.evidence).unwrap();
    broken.truncate(broken.len() - 1);
    std::fs::write(f.dir.join("broken.bin"), broken).unwrap();
    let r = run(&[s("show"), s("--evidence"), path(&f.dir.join("broken.bin"))]);
    assert_eq!(r.code, 2);
    assert!(r.stdout.contains("cert_chain"), "records before the error are shown: {}", r.stdout);
    assert!(r.stderr.contains("records before it shown"));
}

#[test]
fn policy_init_writes_a_policy_the_report_passes() {
    let f = fixture();
    let text = std::fs::read_to_string(&f.policy).unwrap();
    assert!(text.contains(&hex(&f.report.td.mr_td)));
    assert!(text.contains("[[device]]"));
    let p = attest::host::policy::parse(&text).unwrap();
    assert_eq!(p.devices.iter().filter(|d| d.is_some()).count(), f.devices);
    // A bundle that does not bind is refused.
    let mut other = f.report;
    other.devices[0].interface_report_sha384[0] ^= 1;
    std::fs::write(f.dir.join("unbound.bin"), other.to_bytes()).unwrap();
    let r = run(&[
        s("policy"),
        s("init"),
        s("--report"),
        path(&f.dir.join("unbound.bin")),
        s("--evidence"),
        path(&f.evidence),
    ]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("does not bind"));
    expect_unusable(&[s("policy"), s("frob")], "unknown subcommand");
}

#[test]
fn measure_prints_the_image_s_mrtd() {
    let dir = scratch("measure");
    let content: Vec<u8> = (0..5000u32).map(|i| (i * 7) as u8).collect();
    let img = attest::image::encode(&[(0x1000, 2, true, &content), (0x10000, 1, false, &[1, 2, 3])]);
    let p = dir.join("guest.img");
    std::fs::write(&p, &img).unwrap();
    let want = hex(&attest::image::Image::parse(&img).unwrap().mrtd());
    let r = run(&[s("measure"), path(&p)]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout.trim(), want);
    let r = run(&[s("measure"), path(&p), s("--json")]);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["mrtd"], want);
    assert_eq!(v["pages"], 3);
    let flat = dir.join("flat.bin");
    std::fs::write(&flat, &content).unwrap();
    let r = run(&[s("measure"), path(&flat), s("--flat"), s("0x1000")]);
    assert_eq!(r.stdout.trim(), hex(&attest::image::flat_mrtd(0x1000, &content).unwrap()));
    expect_unusable(&[s("measure"), path(&flat)], "bad image magic");
    std::fs::write(dir.join("empty"), b"").unwrap();
    expect_unusable(&[s("measure"), path(&dir.join("empty"))], "image needs a 16-byte header, got 0 bytes");
    expect_unusable(&[s("measure"), path(&dir.join("empty")), s("--flat"), s("0")], "flat image is empty");
    let mut cut = img.clone();
    cut.truncate(30);
    std::fs::write(dir.join("cut"), cut).unwrap();
    expect_unusable(&[s("measure"), path(&dir.join("cut"))], "runs past the end");
}

#[test]
fn measure_reads_an_ovmf_image_by_its_tdvf_metadata() {
    let dir = scratch("measure-tdvf");
    // A crafted OVMF-shaped image: BFV measured, CFV, a TD_HOB and TEMP_MEM.
    let mut img = attest::tdvf::encode(
        0x8000,
        0x7000,
        &[
            (0x2000, 0x6000, 0xFFFF_A000, 0x6000, 0, 1),
            (0, 0x2000, 0xFFFF_8000, 0x2000, 1, 0),
            (0, 0, 0x80_9000, 0x2000, 2, 0),
            (0, 0, 0x80_0000, 0x6000, 3, 0),
        ],
    );
    img[..0x7000].iter_mut().enumerate().for_each(|(i, b)| *b = (i * 5) as u8);
    let p = dir.join("ovmf.fd");
    std::fs::write(&p, &img).unwrap();
    let want = hex(&attest::tdvf::Tdvf::parse(&img).unwrap().mrtd());
    for args in [vec![s("measure"), path(&p)], vec![s("measure"), path(&p), s("--tdvf")]] {
        let r = run(&args);
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert_eq!(r.stdout.trim(), want);
        assert!(r.stderr.contains("TD_HOB   GPA 0x00809000"), "{}", r.stderr);
        assert!(r.stderr.contains("PAGE.ADD + MR.EXTEND"), "{}", r.stderr);
    }
    let r = run(&[s("measure"), path(&p), s("--json")]);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(
        (v["format"].as_str(), v["pages"].as_u64(), v["measured_pages"].as_u64()),
        (Some("tdvf"), Some(16), Some(6))
    );
    assert_eq!(v["mrtd"], want);
    // A malformed table is refused by name; so is --tdvf on a file without one.
    let mut bad = img.clone();
    bad[0x7000 + 16 + 32 * 2 + 8] = 0x10;
    std::fs::write(dir.join("bad.fd"), &bad).unwrap();
    expect_unusable(
        &[s("measure"), path(&dir.join("bad.fd"))],
        "TDVF section 2: memory address 0x809010 is not 4 KiB aligned",
    );
    let plain = dir.join("plain.bin");
    std::fs::write(&plain, [0u8; 4096]).unwrap();
    expect_unusable(&[s("measure"), path(&plain), s("--tdvf")], "no OVMF GUIDed table footer");
    expect_unusable(&[s("measure"), path(&p), s("--tdvf"), s("--flat"), s("0")], "two different layouts");
    // Debian's OVMF.fd, when installed: the MRTD is the parser's, and the 4 MiB build is refused.
    if let Ok(real) = std::fs::read("/usr/share/ovmf/OVMF.fd") {
        let r = run(&[s("measure"), s("/usr/share/ovmf/OVMF.fd")]);
        assert_eq!(r.stdout.trim(), hex(&attest::tdvf::Tdvf::parse(&real).unwrap().mrtd()));
        expect_unusable(&[s("measure"), s("/usr/share/OVMF/OVMF_CODE_4M.fd")], "built without TDX");
    } else {
        eprintln!("skipped the Debian OVMF.fd part: /usr/share/ovmf/OVMF.fd is absent (`./run.sh setup` installs it)");
    }
}

#[test]
fn random_bytes_in_every_input_never_panic() {
    let f = fixture();
    for seed in 0..12u64 {
        for len in [0usize, 1, 12, 100, 1184, 1200, 3000] {
            let bytes = random_bytes(len, seed * 31 + len as u64);
            let p = f.dir.join(format!("rand-{seed}-{len}"));
            std::fs::write(&p, &bytes).unwrap();
            let p = path(&p);
            let runs: Vec<Vec<String>> = vec![
                f.verify_with("--report", &p, &[]),
                f.verify_with("--evidence", &p, &[]),
                f.verify_with("--policy", &p, &[]),
                f.verify_with("--root", &p, &[]),
                vec![s("verify"), s("--snp"), p.clone(), s("--certs"), path(&f.platform.dir), s("--no-nonce")],
                vec![s("show"), s("--report"), p.clone()],
                vec![s("show"), s("--evidence"), p.clone()],
                vec![s("measure"), p.clone()],
            ];
            for args in runs {
                let r = run(&args);
                assert!(r.code == 1 || r.code == 2, "{args:?}: exit {}", r.code);
                assert!(
                    !r.stderr.contains("panicked") && !r.stderr.contains("internal error"),
                    "{args:?}: {}",
                    r.stderr
                );
            }
        }
    }
}

#[test]
fn the_binary_is_the_one_cargo_built() {
    let out = Command::new(env!("CARGO_BIN_EXE_attest")).arg("help").output().unwrap();
    assert!(out.status.success());
}

#[test]
fn a_reader_that_stops_early_does_not_change_the_verdict() {
    use std::process::Stdio;
    let f = fixture();
    for (args, want) in [(f.verify_args(&[]), 0), (f.verify_with("--nonce", &"ee".repeat(64), &[]), 1)] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_attest"))
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Close the read end before the tool writes: its write meets a broken pipe.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(want), "{stderr}");
        assert!(!stderr.contains("internal error") && !stderr.contains("panicked"), "{stderr}");
    }
}
