//! The evidence bundle in the verifier: the record parser, the binding to the recorded report, and the device checks (chain, measurements, interface report) under the recorded policy.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::time::Duration;

use attest::evidence::{self, Evidence, RecordType};
use attest::host::device::{check_at, reference_from, ChainCache};
use attest::report::Report;
use seamless_fuzz_tools::evidence::attestation;

fuzz_target!(|data: &[u8]| {
    let a = attestation();
    let _ = Evidence::raw_records(data);
    let Ok(ev) = Evidence::parse(data) else { return };
    let report = Report::read_from(&a.report).expect("fixture");
    for r in ev.records() {
        assert!(r.data.len() <= data.len());
    }
    for kind in [RecordType::CertChain, RecordType::Vca, RecordType::Measurements, RecordType::InterfaceReport] {
        let _ = ev.get(kind, 0);
    }
    let _ = evidence::binds(&report, &ev);
    let _ = evidence::unassigned_record(&report, &ev);
    let host = attest::host::policy::parse_file(&a.policy, None).expect("fixture policy");
    let mut cache = ChainCache::default();
    let _ = check_at(&report, Some(&ev), &host.devices, &mut cache, Duration::from_secs(1_800_000_000));
    let _ = reference_from(&ev, 0);
    let _ = attest::host::policy::reference_policy(&report, Some(&ev), "fuzz");
});
