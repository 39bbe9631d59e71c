//! SPDM KEY_UPDATE_ACK (secured) for UpdateKey then VerifyNewKey over the recorded session; the ack checker on every message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use seamless_fuzz_tools::record::{recording, replay, Outcome, KU_TAGS};
use seamless_fuzz_tools::wire::split;
use tsm::spdm::key_update::{check_ack, KeyOperation, KeyUpdate};

fuzz_target!(|data: &[u8]| {
    let r = recording();
    let messages = split(data);
    let mut u = KeyUpdate::new(r.session.clone(), &r.negotiated, KeyOperation::UpdateKey, KU_TAGS).expect("fixture");
    match replay(&mut u, &messages) {
        Outcome::Done => assert!(u.done() && u.session().is_some()),
        // The keys of a session whose update failed are dropped.
        Outcome::Failed => assert!(u.session().is_none()),
        Outcome::Waiting => {}
    }
    let v = r.negotiated.version;
    for m in &messages {
        for op in [KeyOperation::UpdateKey, KeyOperation::UpdateAllKeys, KeyOperation::VerifyNewKey] {
            let _ = check_ack(v, op, KU_TAGS[0], m);
        }
    }
});
