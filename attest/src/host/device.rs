//! The device-side checks of a bundle: what the evidence itself says, beyond the digests that
//! bind it to the report. They need X.509 and reference values of any size, so they run on the
//! host (the `no_std` engine checks the report and the bindings).
//!
//! Per device entry N, in output order:
//!
//! * `deviceN.cert_chain.format`: the SPDM chain (DSP0274 10.6.1: Length u16, reserved, RootHash,
//!   DER certificates root first) is well formed and RootHash is the root's SHA-384.
//! * `deviceN.cert_chain.root`: the chain's root is the device vendor root the policy names.
//! * `deviceN.cert_chain.signatures`: the root is self-signed and each certificate is signed by
//!   the one before it (ECDSA P-384 SHA-384, ring); the leaf carries a P-384 key.
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

use ring::signature::{UnparsedPublicKey, ECDSA_P384_SHA384_FIXED};
use sha2::{Digest, Sha384};

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

/// A parsed SPDM certificate chain.
#[derive(Debug, Clone)]
pub struct Chain {
    /// The DER certificates, root first.
    pub certs: Vec<Vec<u8>>,
}

fn der_len(b: &[u8]) -> Option<usize> {
    if *b.first()? != 0x30 {
        return None;
    }
    let first = usize::from(*b.get(1)?);
    let (len, head) = if first < 0x80 {
        (first, 2)
    } else {
        let n = first & 0x7f;
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = len << 8 | usize::from(*b.get(2 + i)?);
        }
        (len, 2 + n)
    };
    head.checked_add(len).filter(|&t| t <= b.len())
}

/// Parses an SPDM certificate chain.
///
/// # Errors
/// What is wrong, as text.
pub fn parse_chain(chain: &[u8]) -> Result<Chain, String> {
    if chain.len() < 52 {
        return Err(format!("{} bytes, shorter than the 52-byte header", chain.len()));
    }
    let length = usize::from(u16::from_le_bytes([chain[0], chain[1]]));
    if length != chain.len() {
        return Err(format!("Length field says {length} bytes, the chain has {}", chain.len()));
    }
    if chain[2..4] != [0, 0] {
        return Err("reserved field is not zero".into());
    }
    let mut certs = Vec::new();
    let mut rest = &chain[52..];
    while !rest.is_empty() {
        let n = der_len(rest).ok_or_else(|| format!("certificate {} is not one DER SEQUENCE", certs.len()))?;
        certs.push(rest[..n].to_vec());
        rest = &rest[n..];
    }
    let Some(root) = certs.first() else {
        return Err("no certificate after the header".into());
    };
    if Sha384::digest(root)[..] != chain[4..52] {
        return Err("RootHash is not the SHA-384 of the root certificate".into());
    }
    Ok(Chain { certs })
}

/// One DMTF measurement block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    /// Index.
    pub index: u8,
    /// DMTFSpecMeasurementValueType (bit 7: raw bit stream).
    pub value_type: u8,
    /// The value.
    pub value: Vec<u8>,
}

/// A parsed measurement exchange.
#[derive(Debug, Clone)]
pub struct Measurements {
    /// SPDM version of the exchange.
    pub version: u8,
    /// The blocks, in record order.
    pub blocks: Vec<Block>,
    /// Bytes of the request.
    pub request_len: usize,
    /// Offset of the signature in the response.
    pub signature_at: usize,
}

/// Parses a MEASUREMENTS record: GET_MEASUREMENTS (signature requested) ‖ MEASUREMENTS.
///
/// # Errors
/// What is wrong, as text.
pub fn parse_measurements(rec: &[u8]) -> Result<Measurements, String> {
    let (Some(&version), Some(&code), Some(&attrs)) = (rec.first(), rec.get(1), rec.get(2)) else {
        return Err("shorter than a GET_MEASUREMENTS header".into());
    };
    if code != 0xE0 {
        return Err(format!("starts with request code {code:#04x}, not GET_MEASUREMENTS (0xe0)"));
    }
    if attrs & 1 == 0 {
        return Err("GET_MEASUREMENTS did not ask for a signature: unsigned measurements".into());
    }
    let request_len = match version {
        0x12 => 37,
        0x13 => 45,
        v => return Err(format!("SPDM version {}.{} (signed measurements need 1.2 or 1.3)", v >> 4, v & 0xf)),
    };
    let p = rec.get(request_len..).ok_or("the request is cut short")?;
    if p.len() < 8 || p[0] != version || p[1] != 0x60 {
        return Err("no MEASUREMENTS response of the same version after the request".into());
    }
    let count = usize::from(p[4]);
    let record_len = usize::from(p[5]) | usize::from(p[6]) << 8 | usize::from(p[7]) << 16;
    let record = p.get(8..8 + record_len).ok_or("measurement record runs past the response")?;
    let opaque_at = 8 + record_len + 32;
    let opaque_len = p.get(opaque_at..opaque_at + 2).map(|b| usize::from(u16::from_le_bytes([b[0], b[1]])));
    let opaque_len = opaque_len.ok_or("response cut short before its opaque data")?;
    let context = if version >= 0x13 { 8 } else { 0 };
    let signature_at = opaque_at + 2 + opaque_len + context;
    if p.len() != signature_at + 96 {
        return Err(format!(
            "response is {} bytes; its fields and a P-384 signature make {}",
            p.len(),
            signature_at + 96
        ));
    }
    let mut blocks = Vec::new();
    let mut at = 0;
    for i in 0..count {
        let h = record.get(at..at + 7).ok_or_else(|| format!("block {i} runs past the record"))?;
        let size = usize::from(u16::from_le_bytes([h[2], h[3]]));
        let value_size = usize::from(u16::from_le_bytes([h[5], h[6]]));
        if h[1] != 0x01 || size != 3 + value_size {
            return Err(format!("block {i} is not a DMTF measurement block"));
        }
        let value = record.get(at + 7..at + 7 + value_size).ok_or_else(|| format!("block {i} runs past the record"))?;
        if blocks.iter().any(|b: &Block| b.index == h[0]) {
            return Err(format!("index {} appears twice", h[0]));
        }
        blocks.push(Block { index: h[0], value_type: h[4], value: value.to_vec() });
        at += 7 + value_size;
    }
    if at != record.len() {
        return Err(format!("{} bytes after the last block", record.len() - at));
    }
    Ok(Measurements { version, blocks, request_len, signature_at })
}

/// One MMIO range of an interface report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// FIRST_PAGE.
    pub first_page: u64,
    /// NUMBER_OF_PAGES.
    pub pages: u32,
    /// RANGE_ATTRIBUTES.
    pub attributes: u16,
    /// RANGE_ID.
    pub range_id: u16,
}

/// A parsed TDISP DEVICE_INTERFACE_REPORT.
#[derive(Debug, Clone)]
pub struct InterfaceReport {
    /// INTERFACE_INFO.
    pub interface_info: u16,
    /// The MMIO ranges.
    pub ranges: Vec<Range>,
}

/// Parses a DEVICE_INTERFACE_REPORT (TDISP 11.3.11).
///
/// # Errors
/// What is wrong, as text.
pub fn parse_interface_report(r: &[u8]) -> Result<InterfaceReport, String> {
    if r.len() < 20 {
        return Err(format!("{} bytes, shorter than the 20-byte minimum", r.len()));
    }
    let le16 = |at: usize| u16::from_le_bytes([r[at], r[at + 1]]);
    let le32 = |at: usize| u32::from_le_bytes([r[at], r[at + 1], r[at + 2], r[at + 3]]);
    if le16(2) != 0 {
        return Err("reserved field is not zero".into());
    }
    let count = le32(12) as usize;
    let info_at = count.checked_mul(16).and_then(|n| n.checked_add(16)).filter(|&a| a + 4 <= r.len());
    let info_at = info_at.ok_or_else(|| format!("{count} MMIO ranges do not fit {} bytes", r.len()))?;
    let ranges = (0..count)
        .map(|i| {
            let at = 16 + 16 * i;
            let mut page = [0u8; 8];
            page.copy_from_slice(&r[at..at + 8]);
            Range {
                first_page: u64::from_le_bytes(page),
                pages: le32(at + 8),
                attributes: le16(at + 12),
                range_id: le16(at + 14),
            }
        })
        .collect();
    let info_len = le32(info_at) as usize;
    if r.len() != info_at + 4 + info_len {
        return Err(format!("DEVICE_SPECIFIC_INFO length {info_len} does not end the report"));
    }
    Ok(InterfaceReport { interface_info: le16(0), ranges })
}

/// The 100-byte SPDM 1.2+ signing prefix for measurements.
fn signing_prefix(version: u8) -> [u8; 100] {
    let mut p = [0u8; 100];
    for i in 0..4 {
        p[16 * i..16 * (i + 1)].copy_from_slice(b"dmtf-spdm-v1.2.*");
        p[16 * i + 13] = b'0' + (version & 0xf);
    }
    let ctx = b"responder-measurements signing";
    p[100 - ctx.len()..].copy_from_slice(ctx);
    p
}

/// A chain that verified.
#[derive(Debug, Clone)]
struct Verified {
    /// The leaf's SEC1 key.
    key: Vec<u8>,
    /// SHA-384 of the root certificate.
    root: [u8; 48],
    /// The intersection of the certificates' validity periods (Unix time).
    valid: (Duration, Duration),
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
    bytes: Option<&[u8]>,
    want_root: Option<&[u8; 48]>,
    cache: &mut ChainCache,
    now: Duration,
) -> Option<Vec<u8>> {
    let id = |c: &str| format!("device{n}.cert_chain.{c}");
    let Some(bytes) = bytes else {
        for c in ["format", "root", "signatures", "validity"] {
            rows.push(Row::new(&id(c), Status::Fail, "a CERT_CHAIN record", "missing", "record missing"));
        }
        return None;
    };
    let links = "each certificate signed by the one before";
    let digest: [u8; 48] = Sha384::digest(bytes).into();
    let verified = match cache.verified.get(&digest) {
        Some(v) => {
            let seen = "seen before: verified chain, by SHA-384";
            rows.push(Row::new(&id("format"), Status::Pass, "an SPDM certificate chain", "well-formed", seen));
            push_root(rows, &id("root"), want_root, &v.root);
            rows.push(Row::new(&id("signatures"), Status::Pass, links, "verifies", seen));
            v.clone()
        }
        None => {
            let chain = match parse_chain(bytes) {
                Ok(c) => c,
                Err(e) => {
                    rows.push(Row::new(&id("format"), Status::Fail, "an SPDM certificate chain", e, "malformed chain"));
                    for c in ["root", "signatures", "validity"] {
                        rows.push(Row::new(&id(c), Status::Skipped, "-", "-", "malformed chain"));
                    }
                    return None;
                }
            };
            let count = format!("{} certificates", chain.certs.len());
            rows.push(Row::new(&id("format"), Status::Pass, "an SPDM certificate chain", count, "well-formed"));
            let root: [u8; 48] = Sha384::digest(&chain.certs[0]).into();
            push_root(rows, &id("root"), want_root, &root);
            match verify_links(&chain) {
                Ok(v) => {
                    rows.push(Row::new(&id("signatures"), Status::Pass, links, "verifies", "ECDSA P-384 (ring)"));
                    cache.verified.insert(digest, v.clone());
                    v
                }
                Err(e) => {
                    rows.push(Row::new(&id("signatures"), Status::Fail, links, e, "chain does not verify"));
                    rows.push(Row::new(&id("validity"), Status::Skipped, "-", "-", "chain does not verify"));
                    return None;
                }
            }
        }
    };
    let (from, to) = verified.valid;
    let ok = from <= now && now <= to;
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

/// Checks every link of `chain`.
fn verify_links(chain: &Chain) -> Result<Verified, String> {
    let certs: Vec<x509_cert::Certificate> = chain
        .certs
        .iter()
        .enumerate()
        .map(|(i, der)| x509::read_cert(der).map_err(|e| format!("certificate {i}: {e}")))
        .collect::<Result<_, _>>()?;
    let mut valid = (Duration::ZERO, Duration::MAX);
    for (i, cert) in certs.iter().enumerate() {
        let issuer = if i == 0 { cert } else { &certs[i - 1] };
        x509::check_signed_by(cert, issuer).map_err(|e| format!("certificate {i}: {e}"))?;
        let v = cert.tbs_certificate().validity();
        valid = (valid.0.max(v.not_before.to_unix_duration()), valid.1.min(v.not_after.to_unix_duration()));
    }
    let leaf = certs.last().ok_or("empty chain")?;
    let key = x509::p384_key_bytes(leaf).map_err(|e| format!("leaf: {e}"))?;
    let root = Sha384::digest(&chain.certs[0]).into();
    Ok(Verified { key, root, valid })
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
    let m = match parse_measurements(meas) {
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
            let l1: [u8; 48] = Sha384::new()
                .chain_update(vca)
                .chain_update(&meas[..m.request_len])
                .chain_update(&response[..m.signature_at])
                .finalize()
                .into();
            let mut message = signing_prefix(m.version).to_vec();
            message.extend_from_slice(&l1);
            let ok = UnparsedPublicKey::new(&ECDSA_P384_SHA384_FIXED, key)
                .verify(&message, &response[m.signature_at..])
                .is_ok();
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
        let leaf_key = check_chain(&mut rows, n, get(RecordType::CertChain), root, cache, now);
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
        .and_then(|c| parse_chain(c).ok())
        .and_then(|c| c.certs.first().map(|r| Sha384::digest(r).into()));
    let measurements = evidence
        .get(RecordType::Measurements, n)
        .and_then(|m| parse_measurements(m).ok())
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn block(index: u8, value_type: u8, value: &[u8]) -> Vec<u8> {
        let mut b = vec![index, 0x01];
        b.extend_from_slice(&((3 + value.len()) as u16).to_le_bytes());
        b.push(value_type);
        b.extend_from_slice(&(value.len() as u16).to_le_bytes());
        b.extend_from_slice(value);
        b
    }

    /// GET_MEASUREMENTS (1.2, signature requested) ‖ MEASUREMENTS with `blocks` and a dummy
    /// signature.
    fn exchange(blocks: &[Vec<u8>]) -> Vec<u8> {
        let mut m = vec![0x12, 0xE0, 0x01, 0xFF];
        m.extend_from_slice(&[0x11; 32]);
        m.push(0);
        let rec: Vec<u8> = blocks.concat();
        m.extend_from_slice(&[0x12, 0x60, 0, 0, blocks.len() as u8]);
        m.extend_from_slice(&(rec.len() as u32).to_le_bytes()[..3]);
        m.extend_from_slice(&rec);
        m.extend_from_slice(&[0x22; 32]);
        m.extend_from_slice(&[0, 0]);
        m.extend_from_slice(&[0x33; 96]);
        m
    }

    #[test]
    fn measurements_parse_and_each_defect_is_named() {
        let good = exchange(&[block(1, 0x01, &[0xAA; 48]), block(3, 0x83, b"cfg")]);
        let m = parse_measurements(&good).unwrap();
        assert_eq!((m.version, m.request_len, m.blocks.len()), (0x12, 37, 2));
        assert_eq!(m.blocks[1], Block { index: 3, value_type: 0x83, value: b"cfg".to_vec() });
        let cases: [(Vec<u8>, &str); 6] = [
            (vec![], "shorter than a GET_MEASUREMENTS header"),
            (
                {
                    let mut b = good.clone();
                    b[1] = 0xE1;
                    b
                },
                "not GET_MEASUREMENTS",
            ),
            (
                {
                    let mut b = good.clone();
                    b[0] = 0x11;
                    b
                },
                "signed measurements need 1.2 or 1.3",
            ),
            (
                {
                    let mut b = good.clone();
                    b.push(0);
                    b
                },
                "a P-384 signature make",
            ),
            (exchange(&[block(1, 1, &[1]), block(1, 1, &[2])]), "index 1 appears twice"),
            (
                {
                    let mut b = good.clone();
                    b[37 + 4] = 3;
                    b
                },
                "block 2 runs past the record",
            ),
        ];
        for (bytes, want) in cases {
            let e = parse_measurements(&bytes).unwrap_err();
            assert!(e.contains(want), "{want}: {e}");
        }
    }

    #[test]
    fn chains_and_interface_reports_name_their_defects() {
        assert!(parse_chain(&[0; 10]).unwrap_err().contains("shorter than the 52-byte header"));
        let mut c = vec![0u8; 52];
        c[0] = 52;
        assert!(parse_chain(&c).unwrap_err().contains("no certificate"));
        c[0] = 53;
        assert!(parse_chain(&c).unwrap_err().contains("Length field says 53"));
        let mut r = vec![0u8; 20];
        assert_eq!(parse_interface_report(&r).unwrap().ranges.len(), 0);
        r[12] = 1;
        assert!(parse_interface_report(&r).unwrap_err().contains("1 MMIO ranges do not fit"));
        r[12] = 0;
        r[2] = 1;
        assert!(parse_interface_report(&r).unwrap_err().contains("reserved"));
    }

    #[test]
    fn the_signing_prefix_is_dsp0274_s() {
        let p = signing_prefix(0x13);
        assert_eq!(&p[..64], b"dmtf-spdm-v1.3.*dmtf-spdm-v1.3.*dmtf-spdm-v1.3.*dmtf-spdm-v1.3.*");
        assert_eq!(&p[64..70], &[0; 6]);
        assert_eq!(&p[70..], b"responder-measurements signing");
    }

    proptest! {
        #[test]
        fn parsers_never_panic(b in proptest::collection::vec(any::<u8>(), 0..400), patch in any::<u8>()) {
            let _ = parse_chain(&b);
            let _ = parse_interface_report(&b);
            let _ = parse_measurements(&b);
            let mut m = exchange(&[block(1, 1, &b[..b.len().min(60)])]);
            let at = usize::from(patch) % m.len();
            m[at] ^= patch | 1;
            let _ = parse_measurements(&m);
            let mut c = b.clone();
            if c.len() >= 52 {
                let n = c.len() as u16;
                c[..2].copy_from_slice(&n.to_le_bytes());
                c[2..4].fill(0);
                c[52] = 0x30;
            }
            let _ = parse_chain(&c);
        }
    }
}
