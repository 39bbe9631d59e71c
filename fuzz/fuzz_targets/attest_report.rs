//! The signed native attestation report in the verifier: layout checks, both signature verifiers (p384 and ring) agreeing, and the reference policy written from any report reading back.
#![no_main]

use attest::host::ring_verify::RingKey;
use attest::report::Report;
use libfuzzer_sys::fuzz_target;
use seamless_fuzz_tools::evidence::attestation;

fuzz_target!(|data: &[u8]| {
    let a = attestation();
    let _ = Report::parse(data);
    let Ok(report) = Report::read_from(data) else { return };
    assert_eq!(&report.to_bytes()[..], data, "a report reads back to other bytes");
    let _ = report.check_format();
    let _ = report.digest();
    assert!(report.devices().len() <= attest::report::MAX_DEVICES);
    let ours = attest::sign::verify(&report, &a.key).is_ok();
    let ring = RingKey::new(&a.key).verify(&report).is_ok();
    assert_eq!(ours, ring, "the two ECDSA verifiers disagree");
    let text = attest::host::policy::reference_policy(&report, None, "fuzz");
    if let Err(e) = attest::host::policy::parse(&text) {
        panic!("the policy written from a report does not read back: {e}\n{text}");
    }
});
