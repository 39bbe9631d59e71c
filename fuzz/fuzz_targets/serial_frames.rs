//! The framed serial channel (COM3, `drivers/src/frame.rs`): the host's decoder on any stream;
//! and files made from the input (messages taken as name, data pairs) encoded as the firmware
//! does, which must decode back to exactly those files.
#![no_main]

use libfuzzer_sys::fuzz_target;
use seamless_fuzz_tools::frame;
use seamless_fuzz_tools::wire::split;

fuzz_target!(|data: &[u8]| {
    let mut seen = Vec::new();
    if let Ok(n) = frame::decode(data, &mut |f| seen.push(f)) {
        assert_eq!(n, seen.len());
        for f in &seen {
            assert!(frame::valid_name(f.name.as_bytes()) && f.data.len() <= frame::MAX_DATA);
        }
    }

    let parts = split(data);
    let mut stream = Vec::new();
    let mut files = Vec::new();
    for pair in parts.chunks(2) {
        let [name, body] = pair else { continue };
        let Ok(name) = std::str::from_utf8(name) else { continue };
        let mut one = Vec::new();
        if frame::encode(name, body, &mut |b| one.extend_from_slice(b)).is_ok() {
            assert!(frame::valid_name(name.as_bytes()), "encoded a bad name {name:?}");
            stream.extend_from_slice(&one);
            files.push((name, *body));
        }
    }
    let mut back = Vec::new();
    match frame::decode(&stream, &mut |f| back.push((f.name, f.data))) {
        Ok(_) => assert_eq!(back, files, "the files do not decode back"),
        Err(e) => {
            let duplicate = files.iter().enumerate().any(|(i, f)| files[..i].iter().any(|g| g.0 == f.0));
            assert!(duplicate || files.len() > 16, "a clean stream of {} frames refused: {e}", files.len());
        }
    }
    // Cut short, a non-empty clean stream never decodes unless the cut falls between frames.
    if !stream.is_empty() {
        let cut = usize::from(data.first().copied().unwrap_or(0)) * stream.len() / 256;
        if cut > 0 && frame::decode(&stream[..cut], &mut |_| {}).is_ok() {
            let mut at = 0;
            let mut boundary = false;
            for (name, body) in &files {
                at += 8 + 1 + name.len() + 4 + body.len() + 4;
                boundary |= at == cut;
            }
            assert!(boundary, "a stream cut inside a frame decoded");
        }
    }
});
