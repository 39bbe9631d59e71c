//! The whole SPDM connection (SPDM.CONNECT's engine): discovery, VCA, certificates, CHALLENGE, MEASUREMENTS, session, every message of the input an answer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use seamless_fuzz_tools::record::{connect_random, replay, Outcome};
use seamless_fuzz_tools::wire::split;
use tsm::spdm::connect::{Connect, Stage};

fuzz_target!(|data: &[u8]| {
    let mut c = Box::new(Connect::new(connect_random()));
    match replay(&mut *c, &split(data)) {
        Outcome::Done => {
            assert_eq!(c.stage(), Stage::Connected);
            assert!(c.session().is_some() && c.chain().is_some() && c.measurements().is_some());
        }
        Outcome::Failed => assert!(c.error().is_some() && c.session().is_none()),
        Outcome::Waiting => {}
    }
});
