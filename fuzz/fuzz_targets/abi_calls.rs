//! The host and guest ABI dispatchers with arbitrary call sequences, device assignment included (an in-process tdisp-device behind the message page), the invariants checked after every call (seamless_fuzz_tools::machine).
#![no_main]

use libfuzzer_sys::fuzz_target;
use seamless_fuzz_tools::machine::World;

fuzz_target!(|data: &[u8]| {
    let mut w = World::new();
    w.run(data);
});
