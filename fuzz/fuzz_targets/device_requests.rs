//! The device side: arbitrary DOE requests (a sequence, so sessions and TDISP states are reachable from the recorded conversation) to tdisp-device's Device::handle; every reply is a well-formed DOE object.
#![no_main]

use libfuzzer_sys::fuzz_target;
use seamless_fuzz_tools::record::recording;
use seamless_fuzz_tools::wire::split;

fuzz_target!(|data: &[u8]| {
    let mut device = recording().fresh_device.clone();
    for request in split(data) {
        if let Some(reply) = device.handle(request) {
            assert!(tsm::doe::decode(&reply).is_ok(), "the device sent a malformed DOE object");
        }
    }
});
