//! IDE_KM responses (QUERY_RESP, KP_ACK, K_GOSTOP_ACK) in SPDM VENDOR_DEFINED_RESPONSE.
#![no_main]

use libfuzzer_sys::fuzz_target;
use seamless_fuzz_tools::record::recording;
use tsm::idekm::{check_ack, decode_query, KeySlot, Request};

fuzz_target!(|data: &[u8]| {
    let v = recording().negotiated.version;
    if let Ok(q) = decode_query(v, 0, data) {
        assert!(q.registers.len() >= 8 && q.registers.len().is_multiple_of(4));
    }
    let (key, ifv) = ([0xA5; 32], [1; 8]);
    for slot in KeySlot::all(false).into_iter().chain(KeySlot::all(true)) {
        for r in [
            Request::KeyProg { stream: 1, slot, port: 0, key: &key, ifv: &ifv },
            Request::Go { stream: 1, slot, port: 0 },
            Request::Stop { stream: 1, slot, port: 0 },
        ] {
            let _ = check_ack(v, &r, data);
        }
    }
});
