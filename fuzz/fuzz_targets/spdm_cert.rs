//! SPDM DIGESTS and CERTIFICATE: certificate retrieval over the recorded negotiation, every message of the input an answer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use seamless_fuzz_tools::record::{recording, replay, Outcome};
use seamless_fuzz_tools::wire::split;
use sha2::{Digest, Sha384};
use tsm::spdm::cert::CertRetrieval;

fuzz_target!(|data: &[u8]| {
    let r = recording();
    let mut c = Box::new(CertRetrieval::new(&r.negotiated, &r.vca));
    if replay(&mut *c, &split(data)) == Outcome::Done {
        let bytes = c.chain_bytes().expect("a finished retrieval has its chain");
        let chain = c.chain().expect("and it parses");
        assert_eq!(chain.digest()[..], Sha384::digest(bytes)[..]);
    }
});
