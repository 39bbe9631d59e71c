//! Secured messages (DSP0277, AES-256-GCM over DOE): every message of the input opened by the recorded session in turn, and END_SESSION_ACK checked; a message that does not open changes nothing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use seamless_fuzz_tools::record::recording;
use seamless_fuzz_tools::wire::split;

fuzz_target!(|data: &[u8]| {
    let r = recording();
    let mut s = r.session.clone();
    let mut out = vec![0u8; 8192];
    for m in split(data) {
        let before = s.clone();
        match s.open(m, &mut out) {
            Ok(plain) => assert!(plain.len() < m.len(), "plaintext longer than the secured message"),
            Err(_) => assert_eq!(s, before, "a message that did not open changed the session"),
        }
        let mut e = s.clone();
        if e.check_end_ack(m).is_err() {
            assert_eq!(e, s, "a refused END_SESSION_ACK changed the session");
        }
    }
});
