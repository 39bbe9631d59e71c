//! SPDM KEY_EXCHANGE_RSP and FINISH_RSP (the session handshake) over the recorded connection.
#![no_main]

use libfuzzer_sys::fuzz_target;
use seamless_fuzz_tools::record::{recording, replay, Outcome, EPHEMERAL, KE_RANDOM};
use seamless_fuzz_tools::wire::split;
use tsm::spdm::session::KeyExchange;

fuzz_target!(|data: &[u8]| {
    let r = recording();
    let mut k = Box::new(
        KeyExchange::new(&r.negotiated, &r.vca, &r.chain_digest, r.key, EPHEMERAL, KE_RANDOM).expect("fixture"),
    );
    let outcome = replay(&mut *k, &split(data));
    assert_eq!(k.session().is_some(), outcome == Outcome::Done, "a session exists exactly when the handshake finished");
});
