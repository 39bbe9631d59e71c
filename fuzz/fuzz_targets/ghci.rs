//! The host's GHCI server (what serves Debian's OVMF as a TD) with the TD as the attacker: arbitrary TDG.VP.VMCALLs, ACCEPTs and shared-page writes against the real TSM, with what the host touched on the TD's behalf checked after every call (seamless_fuzz_tools::ghci).
#![no_main]

use libfuzzer_sys::fuzz_target;
use seamless_fuzz_tools::ghci::GhciWorld;

fuzz_target!(|data: &[u8]| {
    let mut w = GhciWorld::new();
    w.run(data);
});
