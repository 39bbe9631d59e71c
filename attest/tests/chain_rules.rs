//! The TSM's SPDM requester and the verifier validate certificate chains by the same rules: over a
//! corpus of good and bad chains (`tdisp_device::corpus`, each differing from a good chain in one
//! rule of RFC 5280 path validation), both reach the corpus's verdict, naming the same rule and
//! the same certificate. The TSM has no clock and judges validity against a floor
//! (`VALIDITY_FLOOR`); the verifier judges it now; the corpus's expired certificate ended before
//! the floor, so both refuse it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{SystemTime, UNIX_EPOCH};

use attest::host::device::{parse_chain, path};
use tdisp_device::corpus::corpus;
use tdisp_device::rng::Rng;
use tsm::spdm::chain::CertChain;

/// The TSM's verdict: `Ok` or its error, as `Debug` text.
fn tsm_verdict(chain: &[u8]) -> Result<(), String> {
    CertChain::parse(chain).map(|_| ()).map_err(|e| format!("{e:?}"))
}

/// The verifier's verdict at the time now: `Ok` or its first fault, as `Debug` text.
fn verifier_verdict(chain: &[u8]) -> Result<(), String> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let certs = parse_chain(chain).unwrap().certs;
    path::validate_at(&certs, now).map(|_| ()).map_err(|f| format!("{:?}", f[0]))
}

#[test]
fn the_tsm_and_the_verifier_reach_the_same_verdict_on_every_chain() {
    let cases = corpus(&mut Rng::new([0x5E; 32])).unwrap();
    assert!(cases.len() >= 20, "{}", cases.len());
    assert!(cases.iter().any(|c| c.verdict.is_ok()) && cases.iter().any(|c| c.verdict.is_err()));
    for c in &cases {
        let want = c.verdict.map_err(|e| format!("{e:?}"));
        assert_eq!(tsm_verdict(&c.chain), want, "TSM on {:?}", c.name);
        assert_eq!(verifier_verdict(&c.chain), want, "verifier on {:?}", c.name);
    }
}

#[test]
fn an_end_entity_certificate_cannot_issue_a_device_certificate_on_either_side() {
    let cases = corpus(&mut Rng::new([0x5E; 32])).unwrap();
    let c = cases.iter().find(|c| c.name == "impostor signed by the leaf").unwrap();
    assert_eq!(tsm_verdict(&c.chain), Err("NotCa { index: 2 }".into()));
    let certs = parse_chain(&c.chain).unwrap().certs;
    // Every fault the verifier finds: the leaf is no CA and has no keyCertSign; the signatures
    // all verify.
    assert_eq!(
        path::validate(&certs).unwrap_err(),
        [path::PathFault::NotCa { index: 2 }],
        "the verifier names the one rule broken"
    );
}
