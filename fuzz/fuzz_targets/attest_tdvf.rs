//! The TDVF metadata of an OVMF image, as `attest measure` and the host's TD build read it: the
//! raw bytes as a whole file, and the bytes framed as a descriptor under a well-formed GUIDed
//! table (so that the section checks are reached). Nothing may panic, and a table that parses
//! keeps every section's data inside the file and every section's memory apart from the others.
#![no_main]

use attest::tdvf::Tdvf;
use libfuzzer_sys::fuzz_target;
use seamless_fuzz_tools::tdvf::framed;

fn check(bytes: &[u8]) {
    let Ok(t) = Tdvf::parse(bytes) else { return };
    // The MRTD of up to 256 MiB of measured sections takes a second: replay the small ones, so
    // that the fuzzer's time goes to the parser.
    if t.page_counts().0 <= 1024 {
        let _ = t.mrtd();
    }
    let sections: Vec<_> = t.sections().collect();
    for (i, s) in sections.iter().enumerate() {
        assert!(u64::from(s.data_offset) + u64::from(s.raw_size) <= bytes.len() as u64, "data past the file");
        assert!(s.gpa.checked_add(s.size).is_some() && s.size % 4096 == 0 && s.gpa % 4096 == 0);
        for o in &sections[..i] {
            assert!(s.end() <= o.gpa || o.end() <= s.gpa, "sections overlap");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    check(&framed(data));
});
