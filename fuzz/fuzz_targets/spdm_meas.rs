//! SPDM MEASUREMENTS (signed, L1 kept as evidence) over the recorded connection.
#![no_main]

use libfuzzer_sys::fuzz_target;
use seamless_fuzz_tools::record::{recording, replay, Outcome, MEAS_CONTEXT, MEAS_NONCE};
use seamless_fuzz_tools::wire::split;
use tsm::spdm::meas::{Measurements, EXCHANGE_MAX};

fuzz_target!(|data: &[u8]| {
    let r = recording();
    let mut m = Box::new(Measurements::new(&r.negotiated, &r.vca, r.key, MEAS_NONCE, MEAS_CONTEXT));
    if replay(&mut *m, &split(data)) == Outcome::Done {
        let exchange = m.exchange().expect("a finished exchange is kept");
        assert!(exchange.len() <= EXCHANGE_MAX);
    } else {
        assert!(m.exchange().is_none(), "evidence kept from an exchange that did not finish");
    }
});
