//! The device-side checks of a bundle: what the evidence itself says, beyond the digests that
//! bind it to the report. They need X.509 and reference values of any size, so they run on the
//! host (the `no_std` engine checks the report and the bindings).
//!
//! Per device entry N, in output order:
//!
//! * `deviceN.cert_chain.format`: the SPDM chain (DSP0274 10.6.1: Length u16, reserved, RootHash,
//!   DER certificates root first) is well formed and RootHash is the root's SHA-384.
//! * `deviceN.cert_chain.root`: the chain's root is the device vendor root the policy names.
//! * `deviceN.cert_chain.path`: the chain is a certification path ([`path`]: RFC 5280 §6.1 as it
//!   applies to SPDM chains, the rules the TSM applies too): every issuer a CA with keyCertSign
//!   within its pathLenConstraint, the leaf no CA and with digitalSignature, names chaining, no
//!   unknown critical extension, the root self-signed and each certificate signed by the one
//!   before it (ECDSA P-384, SHA-384 or SHA-256, ring); the leaf carries a P-384 key. Every
//!   broken rule is listed.
//! * `deviceN.cert_chain.validity`: now is inside every certificate's validity period.
//! * `deviceN.measurements.format`: the MEASUREMENTS record is a signed GET_MEASUREMENTS request
//!   and its MEASUREMENTS response, of the SPDM version the report names, with well-formed DMTF
//!   blocks.
//! * `deviceN.measurements.signature`: the device's signature over VCA ‖ request ‖ response
//!   (SPDM 1.2+ signing prefix, "responder-measurements signing") verifies under the leaf key.
//! * `deviceN.measurement.<index>`: each block against the policy's reference values (a digest
//!   or a raw value, with alternatives); a block the policy does not list is skipped, not passed.
//! * `deviceN.interface_report.format`, `.interface_info`, `.mmio_range_count`,
//!   `.mmio_rangeI.{pages, attributes, range_id, first_page}`: the TDISP
//!   DEVICE_INTERFACE_REPORT against the policy's expectations.
//!
//! Verifying a chain is the costly part (two ECDSA verifications and X.509 parsing), and a device
//! keeps its chain; [`ChainCache`] remembers chains that verified, keyed by their SHA-384 (the
//! digest the report itself binds), so a verifier that sees the device again skips it.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ring::signature::{
    UnparsedPublicKey, ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA384_ASN1, ECDSA_P384_SHA256_ASN1, ECDSA_P384_SHA384_ASN1,
};
use sha2::{Digest, Sha256, Sha384};

mod parse;
pub mod path;

use parse::signing_prefix;
pub use parse::{
    parse_chain, parse_chain_with, parse_interface_report, parse_measurements, parse_measurements_with, Block, Chain,
    InterfaceReport, Measurements, Range,
};

use super::{hex, x509, Row};
use crate::evidence::{Evidence, RecordType};
use crate::report::{DeviceEntry, Report};
use crate::verify::{MaskedValue, Status};

/// Reference values of one measurement index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    /// The block must be a digest (value type bit 7 clear) equal to one of these.
    Digests(Vec<Vec<u8>>),
    /// The block must be a raw bit stream (bit 7 set) equal to one of these.
    Raw(Vec<Vec<u8>>),
}

/// What one MMIO range of the interface report must be; `None` fields are not checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeExpectation {
    /// NUMBER_OF_PAGES.
    pub pages: Option<u32>,
    /// RANGE_ATTRIBUTES.
    pub attributes: Option<u16>,
    /// RANGE_ID.
    pub range_id: Option<u16>,
    /// FIRST_PAGE (depends on where the host put the BARs, so rarely pinned).
    pub first_page: Option<u64>,
}

/// What the interface report must be.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InterfaceExpectation {
    /// INTERFACE_INFO under a mask.
    pub interface_info: Option<MaskedValue>,
    /// The MMIO ranges, in report order; their count must match.
    pub mmio_ranges: Option<Vec<RangeExpectation>>,
}

/// The device-side part of a device policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceReference {
    /// SHA-384 of the device vendor root certificate's DER.
    pub vendor_root_sha384: Option<[u8; 48]>,
    /// Reference values by measurement index.
    pub measurements: Vec<(u8, Reference)>,
    /// The interface report's expectations; `None` skips those checks.
    pub interface_report: Option<InterfaceExpectation>,
}

/// A chain that verified.
#[derive(Debug, Clone)]
struct Verified {
    /// The leaf's SEC1 key.
    key: Vec<u8>,
    /// SHA-384 of the root certificate.
    root: [u8; 48],
    /// The path, with each certificate's validity period (Unix time).
    path: path::ValidPath,
}

/// Chains that verified, by SHA-384: their leaf key, root and validity. Validity is checked again
/// at every use; only the signatures are remembered.
#[derive(Debug, Default)]
pub struct ChainCache {
    verified: HashMap<[u8; 48], Verified>,
}

fn check_chain(
    rows: &mut Vec<Row>,
    n: usize,
    base_hash: u32,
    bytes: Option<&[u8]>,
    want_root: Option<&[u8; 48]>,
    cache: &mut ChainCache,
    now: Duration,
) -> Option<Vec<u8>> {
    let id = |c: &str| format!("device{n}.cert_chain.{c}");
    let Some(bytes) = bytes else {
        for c in ["format", "root", "path", "validity"] {
            rows.push(Row::new(&id(c), Status::Fail, "a CERT_CHAIN record", "missing", "record missing"));
        }
        return None;
    };
    let links = "a certification path: CA issuers, keyUsage, names, signatures (RFC 5280 6.1)";
    let digest: [u8; 48] = Sha384::digest(bytes).into();
    let verified = match cache.verified.get(&digest) {
        Some(v) => {
            let seen = "seen before: verified chain, by SHA-384";
            rows.push(Row::new(&id("format"), Status::Pass, "an SPDM certificate chain", "well-formed", seen));
            push_root(rows, &id("root"), want_root, &v.root);
            rows.push(Row::new(&id("path"), Status::Pass, links, "valid", seen));
            v.clone()
        }
        None => {
            let chain = match parse_chain_with(bytes, base_hash) {
                Ok(c) => c,
                Err(e) => {
                    rows.push(Row::new(&id("format"), Status::Fail, "an SPDM certificate chain", e, "malformed chain"));
                    for c in ["root", "path", "validity"] {
                        rows.push(Row::new(&id(c), Status::Skipped, "-", "-", "malformed chain"));
                    }
                    return None;
                }
            };
            let count = format!("{} certificates", chain.certs.len());
            rows.push(Row::new(&id("format"), Status::Pass, "an SPDM certificate chain", count, "well-formed"));
            let root: [u8; 48] = Sha384::digest(&chain.certs[0]).into();
            push_root(rows, &id("root"), want_root, &root);
            match path::validate(&chain.certs) {
                Ok(path) => {
                    let curve = match path.leaf_curve {
                        x509::Curve::P256 => "leaf ECDSA P-256 (ring)",
                        x509::Curve::P384 => "leaf ECDSA P-384 (ring)",
                    };
                    rows.push(Row::new(&id("path"), Status::Pass, links, "valid", curve));
                    let v = Verified { key: path.leaf_key.clone(), root, path };
                    cache.verified.insert(digest, v.clone());
                    v
                }
                Err(faults) => {
                    let all: Vec<String> = faults.iter().map(ToString::to_string).collect();
                    rows.push(Row::new(&id("path"), Status::Fail, links, all.join("; "), "not a valid path"));
                    rows.push(Row::new(&id("validity"), Status::Skipped, "-", "-", "not a valid path"));
                    return None;
                }
            }
        }
    };
    let (from, to) = verified.path.window();
    let ok = verified.path.valid_at(now).is_ok();
    let window = format!("valid {}s .. {}s (Unix time); now {}s", from.as_secs(), to.as_secs(), now.as_secs());
    rows.push(Row::compare(
        &id("validity"),
        ok,
        "now within every certificate's validity",
        window,
        "a certificate is not valid now",
    ));
    ok.then_some(verified.key)
}

/// An SPDM signature (`r ‖ s`, big-endian, each half the curve's size) as a DER
/// ECDSA-Sig-Value.
fn raw_signature_to_der(raw: &[u8]) -> Vec<u8> {
    fn integer(v: &[u8]) -> Vec<u8> {
        let v = &v[v.iter().position(|&b| b != 0).unwrap_or(v.len())..];
        let mut out = vec![0x02];
        let pad = v.first().is_some_and(|&b| b & 0x80 != 0) || v.is_empty();
        out.push((v.len() + usize::from(pad)) as u8);
        if pad {
            out.push(0);
        }
        out.extend_from_slice(v);
        out
    }
    let (r, s) = raw.split_at(raw.len() / 2);
    let body = [integer(r), integer(s)].concat();
    let mut out = vec![0x30];
    if body.len() >= 0x80 {
        out.push(0x81);
    }
    out.push(body.len() as u8);
    out.extend_from_slice(&body);
    out
}

fn push_root(rows: &mut Vec<Row>, id: &str, want: Option<&[u8; 48]>, got: &[u8; 48]) {
    match want {
        Some(w) => {
            rows.push(Row::compare(id, w == got, hex::encode(w), hex::encode(got), "chain ends in another vendor root"))
        }
        None => rows.push(Row::new(
            id,
            Status::Fail,
            "a device vendor root named by the policy",
            hex::encode(got),
            "policy names no device vendor root",
        )),
    }
}

fn check_measurements(
    rows: &mut Vec<Row>,
    n: usize,
    entry: &DeviceEntry,
    vca: Option<&[u8]>,
    meas: Option<&[u8]>,
    key: Option<&[u8]>,
    refs: &[(u8, Reference)],
) {
    let id = |c: &str| format!("device{n}.measurements.{c}");
    let (Some(vca), Some(meas)) = (vca, meas) else {
        rows.push(Row::new(&id("format"), Status::Fail, "VCA and MEASUREMENTS records", "missing", "record missing"));
        rows.push(Row::new(&id("signature"), Status::Skipped, "-", "-", "record missing"));
        for (index, _) in refs {
            rows.push(Row::new(
                &format!("device{n}.measurement.{index}"),
                Status::Fail,
                "a measurement block",
                "missing",
                "record missing",
            ));
        }
        return;
    };
    let algorithms = entry.algorithms();
    let m = match parse_measurements_with(meas, algorithms.base_asym) {
        Ok(m) if m.version == entry.spdm_version => m,
        Ok(m) => {
            let (want, got) = (entry.spdm_version, m.version);
            rows.push(Row::new(
                &id("format"),
                Status::Fail,
                format!("SPDM {}.{} as the report says", want >> 4, want & 0xf),
                format!("{}.{}", got >> 4, got & 0xf),
                "transcript of another version",
            ));
            rows.push(Row::new(&id("signature"), Status::Skipped, "-", "-", "malformed measurements"));
            for (index, _) in refs {
                let rid = format!("device{n}.measurement.{index}");
                rows.push(Row::new(&rid, Status::Skipped, "-", "-", "malformed measurements"));
            }
            return;
        }
        Err(e) => {
            rows.push(Row::new(
                &id("format"),
                Status::Fail,
                "signed GET_MEASUREMENTS and MEASUREMENTS",
                e,
                "malformed measurements",
            ));
            rows.push(Row::new(&id("signature"), Status::Skipped, "-", "-", "malformed measurements"));
            for (index, _) in refs {
                rows.push(Row::new(
                    &format!("device{n}.measurement.{index}"),
                    Status::Skipped,
                    "-",
                    "-",
                    "malformed measurements",
                ));
            }
            return;
        }
    };
    rows.push(Row::new(
        &id("format"),
        Status::Pass,
        "signed GET_MEASUREMENTS and MEASUREMENTS",
        format!("{} blocks", m.blocks.len()),
        "well-formed",
    ));
    let expected = "device signature over VCA, request, response (leaf key)";
    match key {
        None => rows.push(Row::new(
            &id("signature"),
            Status::Fail,
            expected,
            "no verified leaf key",
            "the chain did not verify",
        )),
        Some(key) => {
            let response = &meas[m.request_len..];
            let parts = [vca, &meas[..m.request_len], &response[..m.signature_at]];
            let sha256 = algorithms.base_hash == 0x01;
            let l1: Vec<u8> = if sha256 {
                parts.iter().fold(Sha256::new(), |h, p| h.chain_update(p)).finalize().to_vec()
            } else {
                parts.iter().fold(Sha384::new(), |h, p| h.chain_update(p)).finalize().to_vec()
            };
            let mut message = signing_prefix(m.version).to_vec();
            message.extend_from_slice(&l1);
            // ECDSA over the negotiated hash of the message, as libspdm signs (the parse above
            // took the signature's size from BaseAsymSel); ring takes DER for the mixed pairs.
            let alg = match (algorithms.base_asym, sha256) {
                (0x10, true) => &ECDSA_P256_SHA256_ASN1,
                (0x10, false) => &ECDSA_P256_SHA384_ASN1,
                (_, true) => &ECDSA_P384_SHA256_ASN1,
                (_, false) => &ECDSA_P384_SHA384_ASN1,
            };
            let der = raw_signature_to_der(&response[m.signature_at..]);
            let ok = UnparsedPublicKey::new(alg, key).verify(&message, &der).is_ok();
            rows.push(Row::compare(
                &id("signature"),
                ok,
                expected,
                if ok { "verifies" } else { "does not verify" },
                "device signature invalid",
            ));
        }
    }
    for (index, reference) in refs {
        let rid = format!("device{n}.measurement.{index}");
        let Some(block) = m.blocks.iter().find(|b| b.index == *index) else {
            rows.push(Row::new(
                &rid,
                Status::Fail,
                describe(reference),
                "no such block",
                "the device did not report this index",
            ));
            continue;
        };
        let raw = block.value_type & 0x80 != 0;
        let (alternatives, want_raw) = match reference {
            Reference::Digests(d) => (d, false),
            Reference::Raw(r) => (r, true),
        };
        let actual = format!("{} {}", if raw { "raw" } else { "digest" }, hex::encode(&block.value));
        if raw != want_raw {
            rows.push(Row::new(
                &rid,
                Status::Fail,
                describe(reference),
                actual,
                "block is of another form (digest or raw)",
            ));
        } else {
            let ok = alternatives.contains(&block.value);
            rows.push(Row::compare(&rid, ok, describe(reference), actual, "no reference value matches"));
        }
    }
    for b in &m.blocks {
        if !refs.iter().any(|(i, _)| *i == b.index) {
            let kind = if b.value_type & 0x80 != 0 { "raw" } else { "digest" };
            rows.push(Row::new(
                &format!("device{n}.measurement.{}", b.index),
                Status::Skipped,
                "-",
                format!("{kind} {}", hex::encode(&b.value)),
                "policy has no reference value for this index",
            ));
        }
    }
}

fn describe(r: &Reference) -> String {
    let (kind, v) = match r {
        Reference::Digests(v) => ("digest", v),
        Reference::Raw(v) => ("raw", v),
    };
    let alts: Vec<String> = v.iter().map(|x| hex::encode(x)).collect();
    format!("{kind} {}", alts.join(" or "))
}

fn check_interface(rows: &mut Vec<Row>, n: usize, bytes: Option<&[u8]>, want: Option<&InterfaceExpectation>) {
    let id = |c: &str| format!("device{n}.interface_report.{c}");
    let Some(bytes) = bytes else {
        rows.push(Row::new(&id("format"), Status::Fail, "an INTERFACE_REPORT record", "missing", "record missing"));
        return;
    };
    let r = match parse_interface_report(bytes) {
        Ok(r) => r,
        Err(e) => {
            rows.push(Row::new(
                &id("format"),
                Status::Fail,
                "a TDISP DEVICE_INTERFACE_REPORT",
                e,
                "malformed interface report",
            ));
            return;
        }
    };
    rows.push(Row::new(
        &id("format"),
        Status::Pass,
        "a TDISP DEVICE_INTERFACE_REPORT",
        format!("{} MMIO ranges", r.ranges.len()),
        "well-formed",
    ));
    let Some(want) = want else {
        rows.push(Row::new(
            &id("interface_info"),
            Status::Skipped,
            "-",
            format!("{:#x}", r.interface_info),
            "policy sets no interface report expectations",
        ));
        return;
    };
    match want.interface_info {
        Some(m) => rows.push(Row::compare(
            &id("interface_info"),
            u64::from(r.interface_info) & m.mask == m.value & m.mask,
            format!("{:#x} under mask {:#x}", m.value, m.mask),
            format!("{:#x}", r.interface_info),
            "INTERFACE_INFO outside the policy",
        )),
        None => rows.push(Row::new(
            &id("interface_info"),
            Status::Skipped,
            "-",
            format!("{:#x}", r.interface_info),
            "policy sets no value",
        )),
    }
    let Some(ranges) = &want.mmio_ranges else {
        rows.push(Row::new(
            &id("mmio_range_count"),
            Status::Skipped,
            "-",
            r.ranges.len().to_string(),
            "policy sets no ranges",
        ));
        return;
    };
    rows.push(Row::compare(
        &id("mmio_range_count"),
        ranges.len() == r.ranges.len(),
        ranges.len().to_string(),
        r.ranges.len().to_string(),
        "another number of MMIO ranges",
    ));
    for (i, (w, got)) in ranges.iter().zip(&r.ranges).enumerate() {
        let fields: [(&str, Option<u64>, u64, bool); 4] = [
            ("pages", w.pages.map(u64::from), u64::from(got.pages), false),
            ("attributes", w.attributes.map(u64::from), u64::from(got.attributes), true),
            ("range_id", w.range_id.map(u64::from), u64::from(got.range_id), false),
            ("first_page", w.first_page, got.first_page, true),
        ];
        for (name, want, actual, hexa) in fields {
            let rid = id(&format!("mmio_range{i}.{name}"));
            let show = |v: u64| if hexa { format!("{v:#x}") } else { v.to_string() };
            match want {
                Some(v) => rows.push(Row::compare(
                    &rid,
                    v == actual,
                    show(v),
                    show(actual),
                    "MMIO range differs from the policy",
                )),
                None => rows.push(Row::new(&rid, Status::Skipped, "-", show(actual), "policy sets no value")),
            }
        }
    }
}

/// Runs the device-side checks of every device entry of `report` on `evidence`, now.
pub fn check(
    report: &Report,
    evidence: Option<&Evidence<'_>>,
    refs: &[Option<DeviceReference>],
    cache: &mut ChainCache,
) -> Vec<Row> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    check_at(report, evidence, refs, cache, now)
}

/// [`check`] at Unix time `now` (certificate validity is judged against it).
pub fn check_at(
    report: &Report,
    evidence: Option<&Evidence<'_>>,
    refs: &[Option<DeviceReference>],
    cache: &mut ChainCache,
    now: Duration,
) -> Vec<Row> {
    let mut rows = Vec::new();
    for (n, entry) in report.devices().iter().enumerate() {
        let get = |k| evidence.and_then(|e| e.get(k, n));
        let r = refs.get(n).and_then(Option::as_ref);
        let empty = DeviceReference::default();
        let r_or = r.unwrap_or(&empty);
        let root = r_or.vendor_root_sha384.as_ref();
        let base_hash = entry.algorithms().base_hash;
        let leaf_key = check_chain(&mut rows, n, base_hash, get(RecordType::CertChain), root, cache, now);
        check_measurements(
            &mut rows,
            n,
            entry,
            get(RecordType::Vca),
            get(RecordType::Measurements),
            leaf_key.as_deref(),
            &r_or.measurements,
        );
        check_interface(&mut rows, n, get(RecordType::InterfaceReport), r_or.interface_report.as_ref());
    }
    rows
}

/// The device reference a known-good bundle implies (for `attest policy init`): its chain's root,
/// every measurement block's value, the interface report's INTERFACE_INFO and ranges (all but
/// FIRST_PAGE, which depends on the host's BAR placement).
pub fn reference_from(evidence: &Evidence<'_>, n: usize) -> DeviceReference {
    let root = evidence
        .get(RecordType::CertChain, n)
        .and_then(|c| parse_chain_with(c, 0x02).or_else(|_| parse_chain_with(c, 0x01)).ok())
        .and_then(|c| c.certs.first().map(|r| Sha384::digest(r).into()));
    let measurements = evidence
        .get(RecordType::Measurements, n)
        .and_then(|m| parse_measurements_with(m, 0x80).or_else(|_| parse_measurements_with(m, 0x10)).ok())
        .map(|m| {
            m.blocks
                .into_iter()
                .map(|b| {
                    let r = if b.value_type & 0x80 != 0 {
                        Reference::Raw(vec![b.value])
                    } else {
                        Reference::Digests(vec![b.value])
                    };
                    (b.index, r)
                })
                .collect()
        })
        .unwrap_or_default();
    let interface_report = evidence
        .get(RecordType::InterfaceReport, n)
        .and_then(|r| parse_interface_report(r).ok())
        .map(|r| InterfaceExpectation {
            interface_info: Some(MaskedValue { mask: 0xffff, value: u64::from(r.interface_info) }),
            mmio_ranges: Some(
                r.ranges
                    .iter()
                    .map(|g| RangeExpectation {
                        pages: Some(g.pages),
                        attributes: Some(g.attributes),
                        range_id: Some(g.range_id),
                        first_page: None,
                    })
                    .collect(),
            ),
        });
    DeviceReference { vendor_root_sha384: root, measurements, interface_report }
}
