//! The verifier's TOML policy (version 1): parse_file on any text, then the recorded attestation verified under what it read.
#![no_main]

use attest::report::Report;
use attest::verify::{self, Inputs};
use libfuzzer_sys::fuzz_target;
use seamless_fuzz_tools::evidence::attestation;

fuzz_target!(|data: &[u8]| {
    let Some(policy) = seamless_fuzz_tools::policy_text(data) else { return };
    let Ok(host) = attest::host::policy::parse_file(policy, Some(&seamless_fuzz_tools::empty_dir())) else { return };
    let a = attestation();
    let report = Report::read_from(&a.report).expect("fixture");
    let inputs = Inputs { report: &report, evidence: Some(&a.evidence), key: &a.key, nonce: Some(&a.nonce) };
    let verdict = verify::verify(&inputs, &host.policy);
    assert_eq!(verdict.verified(), verdict.failures().next().is_none());
});
