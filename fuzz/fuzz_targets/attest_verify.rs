//! The whole verify engine on arbitrary bytes, as `attest verify` runs it: report, evidence bundle, policy and nonce (four messages of the input); unusable input stops before any check, as in the tool.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::time::Duration;

use attest::evidence::Evidence;
use attest::host::device::{check_at, ChainCache};
use attest::host::ring_verify::RingKey;
use attest::report::Report;
use attest::verify::{self, Inputs, MAX_CHECKS};
use seamless_fuzz_tools::evidence::attestation;
use seamless_fuzz_tools::wire::split;

fuzz_target!(|data: &[u8]| {
    let parts = split(data);
    let [report, evidence, policy, rest @ ..] = parts.as_slice() else { return };
    let Ok(report) = Report::read_from(report) else { return };
    let evidence = (!evidence.is_empty()).then_some(*evidence);
    if evidence.is_some_and(|e| Evidence::parse(e).is_err()) {
        return;
    }
    let Some(policy) = seamless_fuzz_tools::policy_text(policy) else { return };
    let Ok(host) = attest::host::policy::parse_file(policy, Some(&seamless_fuzz_tools::empty_dir())) else { return };
    let nonce: Option<[u8; 64]> = rest.first().and_then(|n| <[u8; 64]>::try_from(*n).ok());
    let a = attestation();
    let ring = RingKey::new(&a.key);
    let inputs = Inputs { report: &report, evidence, key: &a.key, nonce: nonce.as_ref() };
    let verdict = verify::verify_with(&inputs, &host.policy, &|r| ring.verify(r));
    assert!(verdict.checks().len() <= MAX_CHECKS);
    assert_eq!(verdict.verified(), verdict.failures().next().is_none());
    if verdict.verified() {
        // Whatever the engine accepts is signed by the key it was given.
        assert!(attest::sign::verify(&report, &a.key).is_ok(), "verified an unsigned report");
    }
    let parsed = evidence.and_then(|e| Evidence::parse(e).ok());
    let mut cache = ChainCache::default();
    let _ = check_at(&report, parsed.as_ref(), &host.devices, &mut cache, Duration::from_secs(1_800_000_000));
});
