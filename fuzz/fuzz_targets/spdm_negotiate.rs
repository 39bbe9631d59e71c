//! SPDM VERSION, CAPABILITIES, ALGORITHMS: the negotiation from its start, every message of the input an answer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use seamless_fuzz_tools::record::{replay, Outcome};
use seamless_fuzz_tools::wire::split;
use tsm::spdm::Negotiation;

fuzz_target!(|data: &[u8]| {
    let mut n = Negotiation::new();
    if replay(&mut n, &split(data)) == Outcome::Done {
        let got = n.negotiated().expect("a finished negotiation has its result");
        assert!((0x10..=0x13).contains(&got.version), "{got:?}");
        assert!(!n.vca().is_empty());
    }
});
