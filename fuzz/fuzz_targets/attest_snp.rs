//! The SNP-format export in the verifier (attest verify --snp): our reader, the sev crate's, the chain and signature checks against the committed emulated AMD chain; with the native report and nonce when given (three messages of the input).
#![no_main]

use attest::report::Report;
use attest::snp::SnpReport;
use libfuzzer_sys::fuzz_target;
use seamless_fuzz_tools::evidence::attestation;
use seamless_fuzz_tools::wire::split;

fuzz_target!(|data: &[u8]| {
    let parts = split(data);
    let Some(snp) = parts.first() else { return };
    let a = attestation();
    if let Ok(r) = SnpReport::read_from(snp) {
        assert_eq!(&r.to_bytes()[..], *snp);
        let _ = r.digest();
    }
    let native = parts.get(1).and_then(|b| Report::read_from(b).ok());
    let nonce: Option<[u8; 64]> = parts.get(2).and_then(|n| <[u8; 64]>::try_from(*n).ok());
    let _ = attest::host::snp::verify(snp, &a.snp_certs, native.as_ref(), nonce.as_ref());
});
