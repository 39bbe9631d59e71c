//! The host's TD memory map and TD HOB (`tsm_client::host::tdvf`, what the host writes for a TDVF
//! TD before it runs): a TDVF descriptor (framed as `attest_tdvf` frames it) and up to four RAM
//! ranges from the input. Nothing may panic; a map that is built lists the RAM exactly once, in
//! address order, with each TD_HOB and TEMP_MEM section as one accepted range and nothing else
//! accepted; the HOB fits exactly `hob_bytes` and refuses a buffer one byte short.
#![no_main]

use attest::tdvf::{SectionType, Tdvf};
use libfuzzer_sys::fuzz_target;
use seamless_fuzz_tools::tdvf::framed;
use tsm_client::host::tdvf::{write_hob, MemoryMap};

/// Up to four `(start, length)` pairs from 8-byte words, the list ending at a zero length; low
/// bits mostly cleared so that many are page-aligned (the rest test the refusals), lengths kept
/// under 4 GiB.
fn ram(bytes: &[u8]) -> Vec<(u64, u64)> {
    let word = |i: usize| u64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
    let pairs = (bytes.len() / 16).min(4);
    (0..pairs)
        .map(|k| {
            let (s, l) = (word(2 * k), word(2 * k + 1));
            let align = if s & 1 == 0 { !0xFFF } else { !0 };
            ((s & 0x0000_FFFF_FFFF_FFFF) & align, (l & 0xFFFF_FFFF) & align)
        })
        .take_while(|&(_, l)| l != 0)
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let split = data.len().min(64);
    let ram = ram(&data[..split]);
    let image = framed(&data[split..]);
    let Ok(tdvf) = Tdvf::parse(&image) else { return };
    let Ok(map) = MemoryMap::new(&ram, &tdvf) else { return };
    let ranges = map.ranges();
    // In address order, disjoint, and covering exactly the RAM given.
    for w in ranges.windows(2) {
        assert!(w[0].end() <= w[1].start, "ranges out of order or overlapping: {ranges:x?}");
    }
    let listed: u64 = ranges.iter().map(|r| r.length).sum();
    let given: u64 = ram.iter().map(|r| r.1).sum();
    assert_eq!(listed, given, "the map lists other memory than the RAM given");
    for r in ranges {
        assert!(ram.iter().any(|&(s, l)| s <= r.start && r.end() <= s + l), "a range outside the RAM: {r:x?}");
    }
    // Accepted exactly where a TD_HOB or TEMP_MEM section lies.
    let ram_sections: Vec<_> =
        tdvf.sections().filter(|s| matches!(s.ty, SectionType::TdHob | SectionType::TempMem)).collect();
    for s in &ram_sections {
        assert!(ranges.iter().any(|r| r.accepted && r.start == s.gpa && r.length == s.size), "section not accepted");
    }
    assert_eq!(ranges.iter().filter(|r| r.accepted).count(), ram_sections.len(), "accepted memory no section names");
    // The HOB: exactly its size, refused one byte short.
    let n = map.hob_bytes();
    let mut page = [0u8; 4096];
    assert_eq!(write_hob(&map, 0x80_9000, &mut page).ok(), Some(n));
    assert!(write_hob(&map, 0x80_9000, &mut page[..n - 1]).is_err());
});
