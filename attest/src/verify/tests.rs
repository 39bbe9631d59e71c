//! The engine's tests: the happy path, each mismatch under its id, and mutated inputs.

use super::*;
use crate::evidence::tests::{bound_pair, bundle};
use crate::evidence::EvidenceError;
use crate::report::FunctionId;
use crate::sign::SignatureError;
use crate::sign::{derive_attestation_key, sign, SigningKey};

const NONCE: [u8; 64] = [0xda; 64];

fn key() -> SigningKey {
    derive_attestation_key(&[7; 32], &[0x5e; 48])
}

fn good_device_policy(d: &DeviceEntry) -> DevicePolicy {
    DevicePolicy {
        function_id: Some(d.function_id()),
        required_lock_flags: 0x1,
        min_spdm_version: 0x12,
        algorithms: AllowedAlgorithms {
            base_asym: 0x80 | 0x10,
            base_hash: 0x02,
            measurement_hash: 0x04,
            dhe: 0x10,
            aead: 0x02,
            key_schedule: 0x01,
            measurement_spec: 0x01,
        },
        measurements_in_session: true,
    }
}

/// A signed report, its bundle, and a policy everything passes.
fn fixture() -> (Report, Vec<u8>, Policy) {
    let (mut r, b) = bound_pair();
    let n = r.devices().len();
    for d in &mut r.devices[..n] {
        d.set_measured_in_session(true);
    }
    sign(&mut r, &key()).unwrap();
    let mut p = Policy::new(r.td.mr_td, MaskedValue { mask: 0x1000_0001, value: 0x1000_0000 });
    p.min_tsm_svn = Some(7);
    p.mr_seam = Some(r.tsm.mr_seam);
    p.rtmr = [Some(r.td.rtmr[0]), Some(r.td.rtmr[1]), Some(r.td.rtmr[2]), Some(r.td.rtmr[3])];
    p.xfam = Some(MaskedValue { mask: u64::MAX, value: 0xe7 });
    for (slot, d) in p.devices.iter_mut().zip(r.devices()) {
        *slot = Some(good_device_policy(d));
    }
    (r, b, p)
}

fn run(r: &Report, b: Option<&[u8]>, p: &Policy, nonce: Option<&[u8; 64]>) -> Verdict {
    let k = key();
    verify(&Inputs { report: r, evidence: b, key: k.verifying_key(), nonce }, p)
}

fn ids(v: &Verdict) -> Vec<String> {
    v.checks().iter().map(|c| c.id.to_string()).collect()
}

#[test]
fn happy_path_passes_every_check() {
    let (r, b, p) = fixture();
    let v = run(&r, Some(&b), &p, Some(&NONCE));
    for c in v.checks() {
        assert_eq!(c.status, Status::Pass, "{} {} {} {}", c.id, c.expected, c.actual, c.reason);
    }
    assert!(v.verified());
    assert_eq!(v.checks().len(), REPORT_CHECKS + 2 * DEVICE_CHECKS.len());
    let ids = ids(&v);
    assert_eq!(ids[..4], ["report.signature", "report.nonce", "report.device_count", "evidence.format"]);
    assert!(ids.contains(&"td.rtmr3".to_string()));
    assert!(ids.contains(&"device1.algorithms.measurement_spec".to_string()));
    assert_eq!(ids.last().unwrap(), "device1.binding.interface_report");
    // Ids are unique.
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), ids.len());
}

#[test]
fn every_id_has_its_layer_and_the_capacity_fits_four_devices() {
    let (mut r, _, mut p) = fixture();
    let d = r.devices[0];
    r.set_devices(&[d; MAX_DEVICES]).unwrap();
    p.devices = [Some(good_device_policy(&d)); MAX_DEVICES];
    let v = run(&r, None, &p, None);
    assert_eq!(v.checks().len(), MAX_CHECKS);
    let layers: Vec<Layer> = v.checks().iter().map(|c| c.id.layer()).collect();
    let mut sorted = layers.clone();
    sorted.sort_by_key(|l| *l as u8);
    assert_eq!(layers, sorted, "checks come out in layer order");
    assert!(v.checks().iter().all(|c| !c.reason.is_empty()));
}

#[test]
fn skipped_checks_say_why() {
    let (r, b, mut p) = fixture();
    p.min_tsm_svn = None;
    p.mr_seam = None;
    p.rtmr = [None; 4];
    p.xfam = None;
    p.devices[0] = Some(DevicePolicy { function_id: None, measurements_in_session: false, ..p.devices[0].unwrap() });
    let v = run(&r, Some(&b), &p, None);
    assert!(v.verified());
    let skipped: Vec<String> =
        v.checks().iter().filter(|c| c.status == Status::Skipped).map(|c| c.id.to_string()).collect();
    assert_eq!(
        skipped,
        [
            "report.nonce",
            "tsm.svn",
            "tsm.mrseam",
            "td.rtmr0",
            "td.rtmr1",
            "td.rtmr2",
            "td.rtmr3",
            "td.xfam",
            "device0.function_id",
            "device0.measurements_in_session"
        ]
    );
    let at = v.get(CheckId::Device(0, DeviceCheck::MeasurementsInSession)).unwrap();
    assert_eq!(
        (at.actual.to_string(), at.reason),
        ("inside the session".into(), "policy does not require the session")
    );
    assert_eq!(v.get(CheckId::ReportNonce).unwrap().reason, "no nonce given: freshness not checked");
}

/// Runs the fixture with `change` applied (re-signing the report), and checks that exactly
/// `id` fails, with the expected and actual values rendered as given.
fn expect_only_failure(id: &str, expected: &str, actual: &str, change: impl FnOnce(&mut Report, &mut Policy)) {
    let (mut r, b, mut p) = fixture();
    change(&mut r, &mut p);
    sign(&mut r, &key()).unwrap();
    let v = run(&r, Some(&b), &p, Some(&NONCE));
    let failed: Vec<String> = v.failures().map(|c| c.id.to_string()).collect();
    assert_eq!(failed, [id], "only {id} fails");
    let c = v.failures().next().unwrap();
    assert_eq!(c.expected.to_string(), expected, "{id} expected");
    assert_eq!(c.actual.to_string(), actual, "{id} actual");
    assert!(!v.verified());
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn each_policy_mismatch_fails_under_its_own_id() {
    expect_only_failure("report.nonce", &hex(&NONCE), &hex(&[0xdb; 64]), |r, _| r.report_data = [0xdb; 64]);
    expect_only_failure("tsm.svn", ">= 8", "7", |_, p| p.min_tsm_svn = Some(8));
    expect_only_failure("tsm.mrseam", &hex(&[1; 48]), &hex(&[0x5e; 48]), |_, p| p.mr_seam = Some([1; 48]));
    expect_only_failure("td.mrtd", &hex(&[2; 48]), &hex(&[0x7d; 48]), |_, p| p.mr_td = [2; 48]);
    for i in 0..4u8 {
        let id = format!("td.rtmr{i}");
        expect_only_failure(&id, &hex(&[0x99; 48]), &hex(&[0x10 + i; 48]), |_, p| {
            p.rtmr[usize::from(i)] = Some([0x99; 48])
        });
    }
    expect_only_failure("td.attributes", "0x1000000000 under mask 0x1000000001", "0x10000000", |_, p| {
        p.attributes = MaskedValue { mask: 0x10_0000_0001, value: 0x10_0000_0000 }
    });
    expect_only_failure("td.attributes", "0x10000000 under mask 0x10000001", "0x10000001", |r, _| {
        r.td.set_attributes(0x1000_0001)
    });
    expect_only_failure("td.xfam", "0xe7 under mask 0xffffffffffffffff", "0xe6", |r, _| r.td.set_xfam(0xe6));
    expect_only_failure("report.device_count", "3", "2", |_, p| p.devices[2] = p.devices[0]);
    expect_only_failure("device1.function_id", "0000:01:00.0 (0x01000100)", "0001:02:01.0 (0x01010208)", |_, p| {
        p.devices[1] = Some(DevicePolicy { function_id: Some(FunctionId::new(0, 0x100)), ..p.devices[1].unwrap() })
    });
    expect_only_failure("device0.state", "RUN", "CONFIG_LOCKED", |r, _| {
        r.devices[0].set_tdi_state(TdiState::ConfigLocked)
    });
    expect_only_failure("device1.state", "RUN", "ERROR", |r, _| r.devices[1].set_tdi_state(TdiState::Error));
    expect_only_failure("device0.lock_flags", "bits 0x5 set", "0x1", |_, p| {
        p.devices[0] = Some(DevicePolicy { required_lock_flags: 0x5, ..p.devices[0].unwrap() })
    });
    expect_only_failure("device1.lock_flags", "bits 0x1 set", "0x4", |r, _| r.devices[1].set_lock_flags(0x4));
    expect_only_failure("device1.measurements_in_session", "inside the session", "in the clear", |r, _| {
        r.devices[1].set_measured_in_session(false)
    });
    expect_only_failure("device0.spdm_version", "1.3", "1.2", |_, p| {
        p.devices[0] = Some(DevicePolicy { min_spdm_version: 0x13, ..p.devices[0].unwrap() })
    });
    type Poke = fn(&mut DeviceEntry);
    let algos: [(&str, &str, Poke); 7] = [
        ("base_asym", "one bit of 0x90", |d| d.base_asym_algo = 0x20u32.to_le_bytes()),
        ("base_hash", "one bit of 0x2", |d| d.base_hash_algo = 0x01u32.to_le_bytes()),
        ("measurement_hash", "one bit of 0x4", |d| d.measurement_hash_algo = 0x06u32.to_le_bytes()),
        ("dhe", "one bit of 0x10", |d| d.dhe = 0x08u16.to_le_bytes()),
        ("aead", "one bit of 0x2", |d| d.aead = 0u16.to_le_bytes()),
        ("key_schedule", "one bit of 0x1", |d| d.key_schedule = 0x02u16.to_le_bytes()),
        ("measurement_spec", "one bit of 0x1", |d| d.measurement_spec = 0x80),
    ];
    for (name, expected, poke) in algos {
        let mut probe = crate::report::tests::sample().devices[0];
        poke(&mut probe);
        let got = DEVICE_CHECKS.iter().position(|c| *c == DeviceCheck::Algorithm(ALGORITHMS[0])).unwrap();
        assert_eq!(got, 4);
        let a = probe.algorithms();
        let actual = [
            u64::from(a.base_asym),
            u64::from(a.base_hash),
            u64::from(a.measurement_hash),
            u64::from(a.dhe),
            u64::from(a.aead),
            u64::from(a.key_schedule),
            u64::from(a.measurement_spec),
        ][ALGORITHMS.iter().position(|x| x.name() == name).unwrap()];
        expect_only_failure(&format!("device0.algorithms.{name}"), expected, &format!("{actual:#x}"), |r, _| {
            poke(&mut r.devices[0])
        });
    }
}

#[test]
fn a_device_without_policy_fails_its_policy_checks_but_not_the_others() {
    let (r, b, mut p) = fixture();
    p.devices[1] = None;
    p.devices[2] = p.devices[0];
    let v = run(&r, Some(&b), &p, Some(&NONCE));
    let failed: Vec<String> = v.failures().map(|c| c.id.to_string()).collect();
    assert_eq!(failed.len(), 1 + 2 + 7 + 1);
    assert!(failed.iter().all(|id| id.starts_with("device1.")));
    assert!(v.failures().all(|c| c.reason == "no policy for this device entry"));
    assert_eq!(v.get(CheckId::Device(1, DeviceCheck::State)).unwrap().status, Status::Pass);
}

#[test]
fn a_foreign_key_fails_the_signature_and_everything_else_still_runs() {
    let (mut r, b, p) = fixture();
    sign(&mut r, &derive_attestation_key(&[8; 32], &[0x5e; 48])).unwrap();
    let v = run(&r, Some(&b), &p, Some(&NONCE));
    let failed: Vec<String> = v.failures().map(|c| c.id.to_string()).collect();
    assert_eq!(failed, ["report.signature"]);
    assert_eq!(v.checks().len(), REPORT_CHECKS + 2 * DEVICE_CHECKS.len());
    let c = v.get(CheckId::ReportSignature).unwrap();
    assert_eq!(c.actual, Value::Signature(SignatureError::Mismatch));
    assert_eq!(c.actual.to_string(), "signature does not verify under the given key");
}

#[test]
fn a_tampered_blob_fails_its_binding_with_both_digests() {
    let (r, mut b, p) = fixture();
    let last = b.len() - 1; // device1's interface report
    b[last] ^= 0x80;
    let v = run(&r, Some(&b), &p, Some(&NONCE));
    let failed: Vec<&Check> = v.failures().collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].id.to_string(), "device1.binding.interface_report");
    assert_eq!(failed[0].expected, Value::bytes(&r.devices[1].interface_report_sha384));
    let tampered = Evidence::parse(&b).unwrap().get(crate::evidence::RecordType::InterfaceReport, 1).unwrap();
    assert_eq!(failed[0].actual, Value::bytes(&evidence::sha384(tampered)));
}

#[test]
fn missing_or_malformed_evidence_fails_every_binding() {
    let (r, b, p) = fixture();
    for (bundle_bytes, format_status) in [(None, Status::Fail), (Some(&b[..b.len() - 1]), Status::Fail)] {
        let v = run(&r, bundle_bytes, &p, Some(&NONCE));
        assert_eq!(v.get(CheckId::EvidenceFormat).unwrap().status, format_status);
        assert_eq!(v.get(CheckId::EvidenceUnassigned).unwrap().status, Status::Skipped);
        let failed: Vec<String> = v.failures().map(|c| c.id.to_string()).collect();
        assert_eq!(failed.len(), 1 + 2 * 3, "{failed:?}");
    }
    let v = run(&r, Some(&b[..b.len() - 1]), &p, Some(&NONCE));
    assert!(matches!(
        v.get(CheckId::EvidenceFormat).unwrap().actual,
        Value::Evidence(EvidenceError::TruncatedRecord { .. })
    ));
}

#[test]
fn records_for_unlisted_devices_fail() {
    let (r, mut b, p) = fixture();
    b.extend_from_slice(&bundle(&[(2, 3, b"vca")])[12..]);
    let v = run(&r, Some(&b), &p, Some(&NONCE));
    let failed: Vec<String> = v.failures().map(|c| c.id.to_string()).collect();
    assert_eq!(failed, ["evidence.unassigned_records"]);
    assert_eq!(v.get(CheckId::EvidenceUnassigned).unwrap().actual, Value::Dec(3));
}

#[test]
fn a_report_without_devices_needs_no_bundle() {
    let (mut r, _, mut p) = fixture();
    r.set_devices(&[]).unwrap();
    sign(&mut r, &key()).unwrap();
    p.devices = [None; MAX_DEVICES];
    let v = run(&r, None, &p, Some(&NONCE));
    assert!(v.verified());
    assert_eq!(v.get(CheckId::EvidenceFormat).unwrap().status, Status::Skipped);
    assert_eq!(v.checks().len(), REPORT_CHECKS);
}

#[test]
fn fingerprint_names_the_key() {
    let a = key_fingerprint(key().verifying_key());
    assert_eq!(a, key_fingerprint(key().verifying_key()));
    assert_ne!(a, key_fingerprint(derive_attestation_key(&[8; 32], &[0x5e; 48]).verifying_key()));
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
    /// Any change to a signed report or its bundle that still parses fails at least one check,
    /// and nothing panics.
    #[test]
    fn mutated_inputs_never_verify_and_never_panic(
        report_writes in proptest::collection::vec((0usize..crate::report::REPORT_BYTES, 1u8..=255), 0..3),
        bundle_writes in proptest::collection::vec((proptest::prelude::any::<usize>(), 1u8..=255), 0..3),
        cut in proptest::prelude::any::<Option<usize>>(),
    ) {
        let (r, good_bundle, p) = fixture();
        let mut rb = r.to_bytes();
        for (at, x) in &report_writes {
            rb[*at] ^= x;
        }
        let mut b = good_bundle.clone();
        for (at, x) in &bundle_writes {
            let at = at % b.len();
            b[at] ^= x;
        }
        if let Some(cut) = cut {
            b.truncate(cut % (b.len() + 1));
        }
        if let Ok(parsed) = Report::parse(&rb) {
            let v = run(parsed, Some(&b), &p, Some(&NONCE));
            for c in v.checks() {
                let _ = (c.id.to_string(), c.expected.to_string(), c.actual.to_string());
            }
            if rb != r.to_bytes() || b != good_bundle {
                proptest::prop_assert!(!v.verified(), "a changed input verified");
            } else {
                proptest::prop_assert!(v.verified());
            }
        }
    }
}
