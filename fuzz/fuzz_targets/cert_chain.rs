//! Certificate chains in the SPDM format: the TSM's parser (links and leaf key checked) and the verifier's (attest host).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha384};
use tsm::spdm::chain::{CertChain, MAX_CERTS};

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = CertChain::parse(data) {
        assert!(!c.certs().is_empty() && c.certs().len() <= MAX_CERTS);
        assert_eq!(c.digest()[..], Sha384::digest(data)[..]);
        for cert in c.certs() {
            let start = cert.as_ptr() as usize - data.as_ptr() as usize;
            assert!(start + cert.len() <= data.len(), "a certificate outside the chain");
        }
    }
    let _ = attest::host::device::parse_chain(data);
});
