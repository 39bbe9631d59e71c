//! `attest verify`: the native report and bundle (chain, engine), or the SNP export (`--snp`).

use std::path::Path;
use std::time::SystemTime;

use attest::host::ring_verify::RingKey;
use attest::host::snp::SnpCerts;
use attest::host::{hex, policy, provision, x509, Row};
use attest::verify::{self, Inputs, Status};

use crate::args::Args;
use crate::{parse_nonce, read, read_event_log, read_evidence, read_report, Outcome, Unusable};

/// The JSON schema id of `verify --json`.
pub const SCHEMA: &str = "seamless-attest-verify/1";

const OFFLINE: &str = "offline: nothing was fetched; revocation was not checked (no CRL is given or used)";

/// What `--no-nonce` leaves out, as the verdict names it.
const NOT_FRESH: &str = "freshness (--no-nonce: no nonce compared, the report may be a replay)";

/// The nonce the TD was given (`--nonce HEX`), or none when the user opts out with `--no-nonce`:
/// without either, a verdict would be silently not fresh.
fn nonce_option(a: &mut Args) -> Result<Option<[u8; 64]>, Unusable> {
    let nonce = a.value("--nonce")?.map(|n| parse_nonce(&n)).transpose()?;
    match (nonce, a.flag("--no-nonce")) {
        (Some(_), true) => Err("--nonce and --no-nonce: give one".into()),
        (None, false) => Err("missing --nonce HEX (the 64 bytes the TD was given); --no-nonce accepts a report \
                              without a freshness check, and the verdict says so"
            .into()),
        (nonce, _) => Ok(nonce),
    }
}

pub fn cmd_verify(mut a: Args) -> Result<Outcome, Unusable> {
    if let Some(snp) = a.value("--snp")? {
        return verify_snp(a, &snp);
    }
    let report_path = a.required("--report")?;
    let evidence_path = a.value("--evidence")?;
    let policy_path = a.required("--policy")?;
    let root_path = a.required("--root")?;
    let ak_path = a.value("--ak-cert")?;
    let event_log_path = a.value("--event-log")?;
    let nonce = nonce_option(&mut a)?;
    let json = a.flag("--json");
    a.finish()?;

    // Unusable input first, before any check runs.
    let report = read_report(&report_path)?;
    let evidence = evidence_path.as_deref().map(read_evidence).transpose()?;
    let event_log = event_log_path.as_deref().map(read_event_log).transpose()?;
    let policy_text = read(&policy_path, "policy")?;
    let policy_text = String::from_utf8(policy_text).map_err(|_| format!("policy {policy_path}: not UTF-8 text"))?;
    let base = Path::new(&policy_path).parent();
    let host_policy = policy::parse_file(&policy_text, base).map_err(|e| format!("{policy_path}: {e}"))?;
    let policy = host_policy.policy;
    let root =
        x509::read_cert(&read(&root_path, "root certificate")?).map_err(|e| format!("--root {root_path}: {e}"))?;
    let ak_path = match ak_path {
        Some(p) => p,
        None => {
            let dir = Path::new(&root_path).parent().unwrap_or(Path::new("."));
            dir.join("tsm-ak.pem").to_string_lossy().into_owned()
        }
    };
    let ak = x509::read_cert(&read(&ak_path, "attestation-key certificate")?)
        .map_err(|e| format!("attestation-key certificate {ak_path}: {e}"))?;
    let ak_key = x509::p384_key(&ak).map_err(|e| format!("attestation-key certificate {ak_path}: {e}"))?;

    // The device evidence is independent of the native chain and report: check it on a second
    // thread (on one core it just interleaves). Rows keep their order either way.
    let device_refs = &host_policy.devices;
    let report_ref = &report;
    let evidence_ref = evidence.as_deref();
    let (mut rows, device_rows) = std::thread::scope(|scope| {
        let devices = scope.spawn(move || {
            let parsed = evidence_ref.and_then(|b| attest::evidence::Evidence::parse(b).ok());
            let mut cache = attest::host::device::ChainCache::default();
            attest::host::device::check(report_ref, parsed.as_ref(), device_refs, &mut cache)
        });
        let rows = native_checks(&root, &ak, &ak_key, report_ref, evidence_ref, &policy, nonce.as_ref());
        let device_rows = devices.join().unwrap_or_else(|_| {
            vec![Row::new(
                "device.checks",
                Status::Fail,
                "device checks ran",
                "internal error",
                "a bug: please report it",
            )]
        });
        (rows, device_rows)
    });
    if let Some(log) = &event_log {
        let verdict = verify::verify_event_log(&report, evidence.as_deref(), log);
        rows.extend(verdict.checks().iter().map(Row::from));
    }
    rows.extend(device_rows);

    let root_fp = x509::fingerprint(&root).map_err(|e| e.0)?;
    let header = [
        format!(
            "trust root: {root_path} ({}; SHA-384 {}): user-supplied, nothing is pinned",
            x509::subject(&root),
            hex::encode(&root_fp)
        ),
        format!(
            "attestation key: {ak_path} ({}; key SHA-384 {})",
            x509::subject(&ak),
            hex::encode(&verify::key_fingerprint(&ak_key))
        ),
        OFFLINE.to_owned(),
    ];
    let mut header = header.to_vec();
    let mut log_json = None;
    if let (Some(path), Some(bytes)) = (&event_log_path, &event_log) {
        header.push(event_log_line(path, bytes));
        log_json = event_log_json(path, bytes);
    }
    let trust = serde_json::json!({
        "path": root_path,
        "subject": x509::subject(&root),
        "sha384": hex::encode(&root_fp),
        "attestation_key_certificate": ak_path,
        "pinned": false,
    });
    let not_checked: Vec<String> = nonce.is_none().then(|| NOT_FRESH.to_owned()).into_iter().collect();
    Ok(output(&header, trust, &rows, json, &not_checked, log_json))
}

/// The event log's summary in `--json`: where it came from, its events, its used bytes and fill.
fn event_log_json(path: &str, bytes: &[u8]) -> Option<serde_json::Value> {
    let log = attest::eventlog::EventLog::parse(bytes).ok()?;
    Some(serde_json::json!({
        "path": path,
        "events": log.events().count(),
        "used_bytes": log.used_len(),
        "fill_bytes": log.fill_len(),
        "signed": false,
    }))
}

/// What the verdict says of the event log it read: its size, what is fill, how many events.
fn event_log_line(path: &str, bytes: &[u8]) -> String {
    match attest::eventlog::EventLog::parse(bytes) {
        Ok(log) => format!(
            "event log: {path} ({} events in {} bytes, {} bytes of 0xFF fill after them; unsigned: believed as far as \
             it replays to the report's RTMRs)",
            log.events().count(),
            log.used_len(),
            log.fill_len()
        ),
        // read_event_log parsed it already; the checks say the rest.
        Err(e) => format!("event log: {path} ({e})"),
    }
}

/// Layer 1's chain to the root, then the engine's checks.
fn native_checks(
    root: &x509_cert::Certificate,
    ak: &x509_cert::Certificate,
    ak_key: &attest::sign::VerifyingKey,
    report: &attest::report::Report,
    evidence: Option<&[u8]>,
    policy: &verify::Policy,
    nonce: Option<&[u8; 64]>,
) -> Vec<Row> {
    let now = SystemTime::now();
    let mut rows = Vec::new();
    let sig = |id: &str, r: Result<(), x509::CertError>, what: &str| match r {
        Ok(()) => Row::new(id, Status::Pass, what, "verifies", "ECDSA P-384 (ring)"),
        Err(e) => Row::new(id, Status::Fail, what, e.0, "certificate signature invalid"),
    };
    let valid = |id: &str, r: Result<(), x509::CertError>| match r {
        Ok(()) => Row::new(id, Status::Pass, "now within validity", "within", "matches"),
        Err(e) => Row::new(id, Status::Fail, "now within validity", e.0, "certificate not valid now"),
    };
    rows.push(sig("chain.root.signature", x509::check_signed_by(root, root), "root self-signed"));
    rows.push(valid("chain.root.validity", x509::check_validity(root, now)));
    let (issuer, root_subject) = (ak.tbs_certificate().issuer().to_string(), x509::subject(root));
    rows.push(Row::compare(
        "chain.tsm_ak.issuer",
        issuer == root_subject,
        root_subject,
        issuer,
        "issued by another CA",
    ));
    rows.push(sig("chain.tsm_ak.signature", x509::check_signed_by(ak, root), "signed by the root"));
    rows.push(valid("chain.tsm_ak.validity", x509::check_validity(ak, now)));
    let got = hex::encode(&report.tsm.mr_seam);
    rows.push(match provision::certified_for(ak).0 {
        Some(m) => Row::compare(
            "chain.tsm_ak.mrseam",
            m == report.tsm.mr_seam,
            hex::encode(&m),
            got,
            "the key was certified for another TSM image",
        ),
        None => Row::new("chain.tsm_ak.mrseam", Status::Skipped, "-", got, "certificate names no MRSEAM"),
    });

    let ring_key = RingKey::new(ak_key);
    let inputs = Inputs { report, evidence, key: ak_key, nonce };
    let verdict = verify::verify_with(&inputs, policy, &|r| ring_key.verify(r));
    rows.extend(verdict.checks().iter().map(Row::from));
    rows
}

/// The SNP export alone: its chain, signature, TCB and chip id; with `--report`, its binding to
/// that native report (the native digest in REPORT_DATA); freshness by the native report's 64
/// nonce bytes. The export's REPORT_DATA holds only 16 of them, so `--nonce` needs `--report`.
/// No policy is applied: the verdict says so.
fn verify_snp(mut a: Args, snp_path: &str) -> Result<Outcome, Unusable> {
    let certs_dir = a.required("--certs")?;
    let report_path = a.value("--report")?;
    let nonce = nonce_option(&mut a)?;
    let json = a.flag("--json");
    a.finish()?;
    if nonce.is_some() && report_path.is_none() {
        return Err("verify --snp --nonce needs --report R: the export's REPORT_DATA holds 16 of the nonce's 64 \
                    bytes; the native report holds all 64, and the export binds its digest"
            .into());
    }
    let bytes = read(snp_path, "SNP report")?;
    let native = report_path.as_deref().map(read_report).transpose()?;
    let certs = SnpCerts::load(Path::new(&certs_dir))?;
    let rows = attest::host::snp::verify(&bytes, &certs, native.as_ref(), nonce.as_ref())
        .map_err(|e| format!("{snp_path}: {e}"))?;
    let header = [
        format!(
            "trust root: {} ({}; SHA-384 {}): user-supplied ARK, not AMD's pinned roots",
            certs.ark_path.display(),
            certs.ark_subject,
            hex::encode(&certs.ark_fingerprint)
        ),
        "chain and report signature checked by the sev crate (crypto_nossl)".to_owned(),
        OFFLINE.to_owned(),
    ];
    let trust = serde_json::json!({
        "path": certs.ark_path.display().to_string(),
        "subject": certs.ark_subject,
        "sha384": hex::encode(&certs.ark_fingerprint),
        "pinned": false,
    });
    let mut not_checked =
        vec!["the policy (verify --snp applies none: run attest verify --policy on the native report)".to_owned()];
    if native.is_none() {
        not_checked.push("the binding to a native report (no --report)".to_owned());
    }
    if nonce.is_none() {
        not_checked.push(NOT_FRESH.to_owned());
    }
    Ok(output(&header, trust, &rows, json, &not_checked, None))
}

/// Prints the verdict; `not_checked` names what this verification left out by design or by the
/// user's choice, in the verdict line and in JSON.
/// `event_log` is the CC event log's summary for the JSON, when one was given.
fn output(
    header: &[String],
    trust: serde_json::Value,
    rows: &[Row],
    json: bool,
    not_checked: &[String],
    event_log: Option<serde_json::Value>,
) -> Outcome {
    let failed = rows.iter().filter(|r| r.status == Status::Fail).count();
    let verified = failed == 0;
    if json {
        let checks: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "id": r.id, "status": r.status.to_string(), "expected": r.expected,
                    "actual": r.actual, "reason": r.reason,
                })
            })
            .collect();
        let mut v = serde_json::json!({
            "schema": SCHEMA,
            "verified": verified,
            "trust_root": trust,
            "offline": true,
            "revocation": "not checked",
            "failed": failed,
            "not_checked": not_checked,
            "checks": checks,
        });
        if let (Some(log), serde_json::Value::Object(m)) = (event_log, &mut v) {
            m.insert("event_log".into(), log);
        }
        outln!("{v:#}");
    } else {
        for h in header {
            outln!("{h}");
        }
        for n in not_checked {
            outln!("not checked: {n}");
        }
        outln!();
        let w = rows.iter().map(|r| r.id.len()).max().unwrap_or(2).max(2);
        outln!("{:w$}  {:7}  {:30}  {:30}  REASON", "ID", "STATUS", "EXPECTED", "ACTUAL");
        for r in rows {
            outln!(
                "{:w$}  {:7}  {:30}  {:30}  {}",
                r.id,
                r.status.to_string(),
                clip(&r.expected),
                clip(&r.actual),
                r.reason
            );
        }
        outln!();
        let skipped = rows.iter().filter(|r| r.status == Status::Skipped).count();
        if verified && !not_checked.is_empty() {
            outln!(
                "VERIFIED, NOT CHECKED: {}: {} checks, none failed, {skipped} skipped (listed above with why)",
                not_checked.join("; "),
                rows.len()
            );
        } else if verified {
            outln!("VERIFIED: {} checks, none failed, {skipped} skipped (listed above with why)", rows.len());
        } else {
            outln!("REJECTED: {failed} of {} checks failed, {skipped} skipped", rows.len());
        }
    }
    if verified {
        Outcome::Done
    } else {
        Outcome::Rejected
    }
}

/// Long values (digests) shortened for the table; JSON keeps them whole.
fn clip(s: &str) -> String {
    if s.chars().count() <= 30 {
        s.to_owned()
    } else {
        let head: String = s.chars().take(27).collect();
        format!("{head}...")
    }
}
