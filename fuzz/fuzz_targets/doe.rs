//! DOE objects (PCIe r6 §6.30): the framing decoder on every message of the input, and the discovery walk fed the messages as the device's answers.
#![no_main]

use libfuzzer_sys::fuzz_target;
use seamless_fuzz_tools::record::replay;
use seamless_fuzz_tools::wire::split;
use tsm::doe::{self, Discovery, ObjectType};

fuzz_target!(|data: &[u8]| {
    let messages = split(data);
    for m in &messages {
        if let Ok(o) = doe::decode(m) {
            // The payload lies inside the object, after the 8-byte header, in whole DWs.
            assert!(doe::HEADER_BYTES + o.payload.len() <= m.len());
            assert!(o.payload.len().is_multiple_of(4));
        }
        for ty in [ObjectType::Discovery, ObjectType::Spdm, ObjectType::SecuredSpdm] {
            if let Ok(p) = doe::decode_as(m, ty) {
                assert!(p.len() + doe::HEADER_BYTES <= m.len());
            }
        }
    }
    let mut d = Discovery::new();
    replay(&mut d, &messages);
    assert!(d.entries().len() <= doe::MAX_DISCOVERY_ENTRIES);
});
