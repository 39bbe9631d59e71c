//! The SNP-format export against the `sev` crate's own verification (ARK -> ASK -> VCEK ->
//! report), on a platform `attest provision` made: what standard SNP tooling does with it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use sev::certs::snp::{ca, Certificate, Chain, Verifiable};
use sev::firmware::guest::AttestationReport;
use sev::parser::ByteParser;

fn chain(dir: &std::path::Path) -> Chain {
    let read = |n: &str| std::fs::read(dir.join(n)).unwrap();
    Chain::from_pem(&read("ark.pem"), &read("ask.pem"), &read("vcek.pem")).unwrap()
}

#[test]
fn sev_verifies_the_export_against_the_provisioned_chain() {
    let f = fixture();
    let bytes = std::fs::read(f.dir.join("snp.bin")).unwrap();
    let report = AttestationReport::from_bytes(&bytes).unwrap();
    assert_eq!(report.version, 3);
    assert_eq!(report.measurement, f.report.td.mr_td);
    assert_eq!(report.report_data[..48], f.report.digest());
    assert_eq!(report.report_data[48..], NONCE[..16]);
    assert_eq!(report.chip_id, f.platform.blob.chip_id);
    assert_eq!(report.reported_tcb.snp, 7);
    // sev's re-encoding is byte-identical: what it verifies is what the TSM signed.
    assert_eq!(report.to_bytes().unwrap().as_slice(), bytes.as_slice());
    let c = chain(&f.platform.dir);
    (&c, &report).verify().unwrap();
}

#[test]
fn sev_rejects_every_flipped_bit_of_a_sampled_set_and_a_foreign_chain() {
    let f = fixture();
    let good = std::fs::read(f.dir.join("snp.bin")).unwrap();
    let c = chain(&f.platform.dir);
    // One bit in every 16-byte line of the signed bytes and of the low 48 bytes of r and s (all
    // sev reads of them; `attest verify --snp` checks the rest are zero itself): a flip is either
    // refused by the parser or fails the signature.
    let read_by_sev = |b: usize| b < 0x2A0 || (0x2A0..0x2A0 + 48).contains(&b) || (0x2E8..0x2E8 + 48).contains(&b);
    for byte in (0..0x330).step_by(8).filter(|b| read_by_sev(*b)).chain([0x2A0 + 47, 0x2E8 + 47]) {
        let mut b = good.clone();
        b[byte] ^= 1 << (byte % 8);
        if let Ok(r) = AttestationReport::from_bytes(&b) {
            assert!((&c, &r).verify().is_err(), "flip at {byte:#x} verified");
        }
    }
    // The other platform's chain: its VCEK did not sign this export.
    let other = chain(&other_platform().dir);
    let r = AttestationReport::from_bytes(&good).unwrap();
    assert!((&other, &r).verify().is_err());
    // Mixing chains breaks the ASK -> VCEK link.
    let read = |d: &std::path::Path, n: &str| std::fs::read(d.join(n)).unwrap();
    let mixed =
        ca::Chain::from_pem(&read(&other_platform().dir, "ark.pem"), &read(&other_platform().dir, "ask.pem")).unwrap();
    let vcek = Certificate::from_pem(&read(&f.platform.dir, "vcek.pem")).unwrap();
    assert!((&mixed.ask, &vcek).verify().is_err());
}
