//! The device-side checks on real evidence (the TSM's SPDM requester against the emulated
//! device): each mismatch under its own id with expected and actual, and each defect of the
//! evidence caught.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use attest::evidence::Evidence;
use attest::host::device::{check, ChainCache, DeviceReference, Reference};
use attest::host::{policy, Row};
use attest::verify::{MaskedValue, Status};
use common::*;

fn reference() -> DeviceReference {
    let f = fixture();
    let text = std::fs::read_to_string(&f.policy).unwrap();
    policy::parse_file(&text, None).unwrap().devices[0].clone().unwrap()
}

fn rows_with(r: DeviceReference, e: &RealEvidence) -> Vec<Row> {
    let report = signed_report(platform(), entry_for(e));
    let bundle = bundle_for(e);
    let ev = Evidence::parse(&bundle).unwrap();
    check(&report, Some(&ev), &[Some(r)], &mut ChainCache::default())
}

fn failures(rows: &[Row]) -> Vec<&Row> {
    rows.iter().filter(|r| r.status == Status::Fail).collect()
}

/// Exactly `id` fails, with `expected` and `actual` as given (`None`: not compared).
fn only(rows: &[Row], id: &str, expected: Option<&str>, actual: Option<&str>) {
    let f = failures(rows);
    let ids: Vec<&str> = f.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, [id], "{rows:#?}");
    if let Some(e) = expected {
        assert_eq!(f[0].expected, e, "{id} expected");
    }
    if let Some(a) = actual {
        assert_eq!(f[0].actual, a, "{id} actual");
    }
}

fn hex_of(b: &[u8]) -> String {
    hex(b)
}

#[test]
fn real_evidence_passes_every_device_check() {
    let rows = rows_with(reference(), real_evidence());
    assert!(failures(&rows).is_empty(), "{rows:#?}");
    let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "device0.cert_chain.format",
            "device0.cert_chain.root",
            "device0.cert_chain.path",
            "device0.cert_chain.validity",
            "device0.measurements.format",
            "device0.measurements.signature",
            "device0.measurement.1",
            "device0.measurement.2",
            "device0.measurement.3",
            "device0.interface_report.format",
            "device0.interface_report.interface_info",
            "device0.interface_report.mmio_range_count",
            "device0.interface_report.mmio_range0.pages",
            "device0.interface_report.mmio_range0.attributes",
            "device0.interface_report.mmio_range0.range_id",
            "device0.interface_report.mmio_range0.first_page",
        ]
    );
    let skipped: Vec<&str> = rows.iter().filter(|r| r.status == Status::Skipped).map(|r| r.id.as_str()).collect();
    assert_eq!(skipped, ["device0.interface_report.mmio_range0.first_page"]);
}

#[test]
fn each_measurement_index_mismatch_fails_under_its_id() {
    let e = real_evidence();
    let good = reference();
    for (pos, (index, r)) in good.measurements.iter().enumerate() {
        let (kind, actual) = match r {
            Reference::Digests(v) => ("digest", v[0].clone()),
            Reference::Raw(v) => ("raw", v[0].clone()),
        };
        let wrong = vec![0xAB; actual.len()];
        let mut changed = good.clone();
        changed.measurements[pos].1 =
            if kind == "raw" { Reference::Raw(vec![wrong.clone()]) } else { Reference::Digests(vec![wrong.clone()]) };
        only(
            &rows_with(changed, e),
            &format!("device0.measurement.{index}"),
            Some(&format!("{kind} {}", hex_of(&wrong))),
            Some(&format!("{kind} {}", hex_of(&actual))),
        );
        // An alternative that matches passes.
        let mut alt = good.clone();
        alt.measurements[pos].1 = if kind == "raw" {
            Reference::Raw(vec![wrong.clone(), actual.clone()])
        } else {
            Reference::Digests(vec![wrong.clone(), actual.clone()])
        };
        assert!(failures(&rows_with(alt, e)).is_empty());
        // The right value in the wrong form fails.
        let mut form = good.clone();
        form.measurements[pos].1 =
            if kind == "raw" { Reference::Digests(vec![actual.clone()]) } else { Reference::Raw(vec![actual]) };
        let rows = rows_with(form, e);
        only(&rows, &format!("device0.measurement.{index}"), None, None);
        assert_eq!(failures(&rows)[0].reason, "block is of another form (digest or raw)");
    }
    // An index the device does not report fails; one the policy does not list is skipped.
    let mut missing = good.clone();
    missing.measurements.push((9, Reference::Digests(vec![vec![0; 48]])));
    only(&rows_with(missing, e), "device0.measurement.9", None, Some("no such block"));
    let mut unlisted = good.clone();
    unlisted.measurements.retain(|(i, _)| *i != 2);
    let rows = rows_with(unlisted, e);
    assert!(failures(&rows).is_empty());
    let two = rows.iter().find(|r| r.id == "device0.measurement.2").unwrap();
    assert_eq!(two.status, Status::Skipped);
    assert_eq!(two.reason, "policy has no reference value for this index");
}

#[test]
fn each_interface_report_property_fails_under_its_id() {
    let e = real_evidence();
    let good = reference();
    let with = |f: &dyn Fn(&mut DeviceReference)| {
        let mut r = good.clone();
        f(&mut r);
        rows_with(r, e)
    };
    only(
        &with(&|r| r.interface_report.as_mut().unwrap().interface_info = Some(MaskedValue { mask: 0x6, value: 0x4 })),
        "device0.interface_report.interface_info",
        Some("0x4 under mask 0x6"),
        Some("0x2"),
    );
    only(
        &with(&|r| r.interface_report.as_mut().unwrap().mmio_ranges.as_mut().unwrap().push(Default::default())),
        "device0.interface_report.mmio_range_count",
        Some("2"),
        Some("1"),
    );
    let range = |f: &dyn Fn(&mut attest::host::device::RangeExpectation)| {
        with(&|r| f(&mut r.interface_report.as_mut().unwrap().mmio_ranges.as_mut().unwrap()[0]))
    };
    only(&range(&|x| x.pages = Some(5)), "device0.interface_report.mmio_range0.pages", Some("5"), Some("4"));
    only(
        &range(&|x| x.attributes = Some(0x4)),
        "device0.interface_report.mmio_range0.attributes",
        Some("0x4"),
        Some("0x0"),
    );
    only(&range(&|x| x.range_id = Some(2)), "device0.interface_report.mmio_range0.range_id", Some("2"), Some("0"));
    only(
        &range(&|x| x.first_page = Some(0x100)),
        "device0.interface_report.mmio_range0.first_page",
        Some("0x100"),
        Some("0x0"),
    );
    // No expectations: the format is still checked, the rest is skipped and says so.
    let rows = with(&|r| r.interface_report = None);
    assert!(failures(&rows).is_empty());
    let info = rows.iter().find(|r| r.id == "device0.interface_report.interface_info").unwrap();
    assert_eq!(info.status, Status::Skipped);
}

#[test]
fn the_chain_must_end_in_the_policy_s_vendor_root() {
    let e = real_evidence();
    let mut other = reference();
    other.vendor_root_sha384 = Some([0x11; 48]);
    let root = hex_of(&attest::evidence::sha384(&e.root_der));
    only(&rows_with(other, e), "device0.cert_chain.root", Some(&hex_of(&[0x11; 48])), Some(&root));
    let mut none = reference();
    none.vendor_root_sha384 = None;
    let rows = rows_with(none, e);
    only(&rows, "device0.cert_chain.root", None, Some(&root));
    assert_eq!(failures(&rows)[0].reason, "policy names no device vendor root");
}

#[test]
fn a_tampered_measurement_response_fails_the_device_signature() {
    let mut e = real_evidence().clone();
    // A byte of the responder nonce: inside the signed part, outside the blocks.
    let at = e.measurements.len() - 96 - 8 - 2 - 10;
    e.measurements[at] ^= 1;
    let rows = rows_with(reference(), &e);
    only(&rows, "device0.measurements.signature", None, Some("does not verify"));
    // The signature itself.
    let mut e = real_evidence().clone();
    let n = e.measurements.len();
    e.measurements[n - 1] ^= 0x80;
    only(&rows_with(reference(), &e), "device0.measurements.signature", None, None);
}

#[test]
fn a_broken_chain_link_fails_and_leaves_no_key_to_trust() {
    let mut e = real_evidence().clone();
    // The last byte of the chain is inside the leaf's signature value.
    let n = e.chain.len();
    e.chain[n - 1] ^= 1;
    let rows = rows_with(reference(), &e);
    let ids: Vec<&str> = failures(&rows).iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["device0.cert_chain.path", "device0.measurements.signature"], "{rows:#?}");
    let validity = rows.iter().find(|r| r.id == "device0.cert_chain.validity").unwrap();
    assert_eq!((validity.status, validity.reason.as_str()), (Status::Skipped, "not a valid path"));
    // root (0) → intermediate (1) → leaf (2): the leaf is the one whose signature broke.
    assert!(failures(&rows)[0].actual.contains("certificate 2"), "{}", failures(&rows)[0].actual);
}

#[test]
fn an_end_entity_certificate_cannot_issue_the_device_certificate() {
    // The device's own chain, root -> CA -> leaf, extended by an impostor's certificate signed
    // with the leaf's key: every signature verifies and the root is the policy's, but the leaf
    // is no CA, and the device's CA (pathLenConstraint 0) now has a certificate that issues
    // below it. Both rules are listed; the measurements the real leaf signed then have no key to
    // verify under.
    let device = tdisp_device::Device::new(tdisp_device::Config::default()).unwrap();
    let impostor = tdisp_device::corpus::impostor(device.identity(), &mut tdisp_device::rng::Rng::new([9; 32]));
    let mut e = real_evidence().clone();
    e.chain = impostor.unwrap().chain;
    let rows = rows_with(reference(), &e);
    let ids: Vec<&str> = failures(&rows).iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["device0.cert_chain.path", "device0.measurements.signature"], "{rows:#?}");
    let path = failures(&rows)[0];
    assert_eq!(
        path.actual,
        "certificate 1's pathLenConstraint is exceeded; certificate 2 issues a certificate but is not a CA",
        "{path:#?}"
    );
}

#[test]
fn malformed_blobs_fail_their_format_checks() {
    let base = real_evidence();
    let mut e = base.clone();
    e.chain.truncate(40);
    let rows = rows_with(reference(), &e);
    let f: Vec<&str> = failures(&rows).iter().map(|r| r.id.as_str()).collect();
    assert_eq!(f, ["device0.cert_chain.format", "device0.measurements.signature"]);
    assert!(failures(&rows)[0].actual.contains("shorter than the 52-byte header"));
    let mut e = base.clone();
    e.measurements.truncate(100);
    let rows = rows_with(reference(), &e);
    let f: Vec<&str> = failures(&rows).iter().map(|r| r.id.as_str()).collect();
    assert_eq!(f, ["device0.measurements.format"]);
    let mut e = base.clone();
    e.measurements[2] &= !1;
    let rows = rows_with(reference(), &e);
    assert_eq!(failures(&rows)[0].actual, "GET_MEASUREMENTS did not ask for a signature: unsigned measurements");
    let mut e = base.clone();
    e.interface_report.push(0);
    only(&rows_with(reference(), &e), "device0.interface_report.format", None, None);
}

#[test]
fn a_chain_not_valid_now_fails_and_leaves_no_key_to_trust() {
    let e = real_evidence();
    let report = signed_report(platform(), entry_for(e));
    let bundle = bundle_for(e);
    let ev = Evidence::parse(&bundle).unwrap();
    let mut cache = ChainCache::default();
    // The device's certificates are valid from 2024-01-01 (1_704_067_200).
    let before = std::time::Duration::from_secs(1_704_067_199);
    for _ in 0..2 {
        // Cold, then from the cache: validity is judged every time.
        let rows = attest::host::device::check_at(&report, Some(&ev), &[Some(reference())], &mut cache, before);
        let ids: Vec<&str> = failures(&rows).iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["device0.cert_chain.validity", "device0.measurements.signature"], "{rows:#?}");
        assert!(failures(&rows)[0].actual.contains("valid 1704067200s"), "{}", failures(&rows)[0].actual);
    }
}

#[test]
fn a_verified_chain_is_remembered_by_its_digest() {
    let e = real_evidence();
    let report = signed_report(platform(), entry_for(e));
    let bundle = bundle_for(e);
    let ev = Evidence::parse(&bundle).unwrap();
    let mut cache = ChainCache::default();
    let refs = [Some(reference())];
    let first = check(&report, Some(&ev), &refs, &mut cache);
    let second = check(&report, Some(&ev), &refs, &mut cache);
    assert!(failures(&first).is_empty() && failures(&second).is_empty());
    let sig = second.iter().find(|r| r.id == "device0.cert_chain.path").unwrap();
    assert_eq!(sig.reason, "seen before: verified chain, by SHA-384");
    // A changed chain is another digest: checked again, and it fails.
    let mut bad = e.clone();
    let n = bad.chain.len();
    bad.chain[n - 1] ^= 1;
    let report = signed_report(platform(), entry_for(&bad));
    let bundle = bundle_for(&bad);
    let ev = Evidence::parse(&bundle).unwrap();
    let rows = check(&report, Some(&ev), &refs, &mut cache);
    assert!(rows.iter().any(|r| r.id == "device0.cert_chain.path" && r.status == Status::Fail));
}

#[test]
fn the_cli_rejects_a_device_mismatch_with_exit_1() {
    let f = fixture();
    let text = std::fs::read_to_string(&f.policy).unwrap();
    let good = reference();
    let Reference::Digests(d) = &good.measurements[0].1 else { panic!() };
    let changed = text.replacen(&hex(&d[0]), &hex(&[0xAB; 48]), 1);
    assert_ne!(changed, text);
    let p = f.dir.join("policy-measurement.toml");
    std::fs::write(&p, changed).unwrap();
    let r = run(&f.verify_with("--policy", p.to_str().unwrap(), &[]));
    assert_eq!(r.code, 1, "{}", r.stderr);
    let failed: Vec<&str> =
        r.stdout.lines().filter(|l| l.contains(" fail ")).map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(failed, ["device0.measurement.1"]);
    // A device vendor root given as a file, relative to the policy.
    std::fs::write(f.dir.join("device-root.der"), &real_evidence().root_der).unwrap();
    let by_file = text
        .lines()
        .map(|l| if l.starts_with("vendor_root_sha384") { "vendor_root = \"device-root.der\"" } else { l })
        .collect::<Vec<_>>()
        .join("\n");
    let p = f.dir.join("policy-root-file.toml");
    std::fs::write(&p, by_file).unwrap();
    let r = run(&f.verify_with("--policy", p.to_str().unwrap(), &[]));
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
}

#[test]
fn a_transcript_of_another_version_than_the_report_s_fails() {
    let e = real_evidence();
    let mut entry = entry_for(e);
    entry.spdm_version = 0x12;
    assert_ne!(e.version, 0x12, "the device negotiates 1.3");
    let report = signed_report(platform(), entry);
    let bundle = bundle_for(e);
    let ev = Evidence::parse(&bundle).unwrap();
    let rows = check(&report, Some(&ev), &[Some(reference())], &mut ChainCache::default());
    only(&rows, "device0.measurements.format", Some("SPDM 1.2 as the report says"), Some("1.3"));
    // The blocks are not judged on a transcript that is not the report's, and say so.
    let m1 = rows.iter().find(|r| r.id == "device0.measurement.1").unwrap();
    assert_eq!((m1.status, m1.reason.as_str()), (Status::Skipped, "malformed measurements"));
}

/// Evidence from a P-256 device (ECDSA P-256 over SHA-256, a SHA-256 RootHash, secp256r1,
/// AES-128-GCM) passes every device check when the report names that suite; the signature is
/// checked with the P-256 leaf over the SHA-256 transcript, and one flipped bit fails it.
#[test]
fn p256_evidence_passes_and_its_signature_is_checked() {
    let e = real_evidence_p256();
    assert_eq!((e.algorithms.base_asym, e.algorithms.base_hash), (0x10, 0x01));
    assert_eq!((e.algorithms.dhe, e.algorithms.aead), (0x08, 0x01));
    let r = DeviceReference { vendor_root_sha384: Some(attest::evidence::sha384(&e.root_der)), ..reference() };
    let rows = rows_with(r.clone(), e);
    assert!(failures(&rows).is_empty(), "{rows:#?}");
    let path = rows.iter().find(|r| r.id == "device0.cert_chain.path").unwrap();
    assert_eq!(path.reason, "leaf ECDSA P-256 (ring)");
    let mut bad = e.clone();
    let n = bad.measurements.len();
    bad.measurements[n - 1] ^= 1;
    only(&rows_with(r.clone(), &bad), "device0.measurements.signature", None, Some("does not verify"));
    // The same evidence under a report that claims the P-384 suite: the record does not parse as
    // P-384 (its signature is 64 bytes) and the RootHash is no SHA-384.
    let report =
        signed_report(platform(), entry_for(&RealEvidence { algorithms: real_evidence().algorithms, ..e.clone() }));
    let bundle = bundle_for(e);
    let ev = Evidence::parse(&bundle).unwrap();
    let rows = check(&report, Some(&ev), &[Some(r)], &mut ChainCache::default());
    let ids: Vec<&str> = failures(&rows).iter().map(|r| r.id.as_str()).collect();
    assert!(ids.contains(&"device0.cert_chain.format"), "{rows:#?}");
    assert!(ids.contains(&"device0.measurements.format"), "{rows:#?}");
}
