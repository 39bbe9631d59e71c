//! SPDM CHALLENGE_AUTH over the recorded connection (transcript, chain, leaf key).
#![no_main]

use libfuzzer_sys::fuzz_target;
use seamless_fuzz_tools::record::{recording, replay, CHALLENGE_CONTEXT, CHALLENGE_NONCE};
use seamless_fuzz_tools::wire::split;
use tsm::spdm::challenge::Challenge;

fuzz_target!(|data: &[u8]| {
    let r = recording();
    let mut c = Challenge::new(
        &r.negotiated,
        r.cert_transcript.clone(),
        &r.chain_digest,
        r.key,
        CHALLENGE_NONCE,
        CHALLENGE_CONTEXT,
    );
    let outcome = replay(&mut c, &split(data));
    assert_eq!(c.done(), outcome == seamless_fuzz_tools::record::Outcome::Done);
});
