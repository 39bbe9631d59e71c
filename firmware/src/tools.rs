//! The firmware crate's host-side tools (the host build of the same crate, so they share the
//! firmware's own definitions):
//!
//! - `firmware guest-image FILE`: writes the guest image the host agent loads, for
//!   `attest measure FILE`;
//! - `firmware disk-image FILE`: writes the demo's raw drive image (`attest::disk`: 1 MiB of
//!   self-naming blocks), which QEMU's NVMe controller serves and the TD reads and checks;
//! - `firmware artifacts STREAM DIR`: checks the COM3 stream frame by frame (`crate::frame`) and
//!   writes each file into DIR; any damage is an error and writes nothing.

use std::path::Path;
use std::process::ExitCode;

const USAGE: &str = "usage: firmware guest-image FILE | firmware disk-image FILE | firmware artifacts STREAM DIR";

/// Runs a tool; prints errors and returns the exit status.
pub fn main(args: &[String]) -> ExitCode {
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("firmware: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result<(), String> {
    match args {
        [cmd, file] if cmd == "guest-image" => {
            std::fs::write(file, crate::guest::image::IMAGE).map_err(|e| format!("{file}: {e}"))
        }
        [cmd, file] if cmd == "disk-image" => std::fs::write(file, disk_image()).map_err(|e| format!("{file}: {e}")),
        [cmd, stream, dir] if cmd == "artifacts" => {
            let bytes = std::fs::read(stream).map_err(|e| format!("{stream}: {e}"))?;
            let names = unframe(&bytes, Path::new(dir))?;
            for (name, len) in names {
                println!("{dir}/{name} {len} bytes");
            }
            Ok(())
        }
        _ => Err(USAGE.into()),
    }
}

/// The demo drive's bytes: [`attest::disk::DEMO_BLOCKS`] blocks of known content.
pub fn disk_image() -> Vec<u8> {
    let mut out = Vec::with_capacity(attest::disk::DEMO_BLOCKS as usize * attest::disk::BLOCK_BYTES);
    let mut b = [0u8; attest::disk::BLOCK_BYTES];
    for lba in 0..attest::disk::DEMO_BLOCKS {
        attest::disk::block(lba, &mut b);
        out.extend_from_slice(&b);
    }
    out
}

/// Decodes `stream` and writes its files into `dir`; returns their names and sizes.
///
/// # Errors
/// The decoding error (nothing written) or the first write that failed.
pub fn unframe(stream: &[u8], dir: &Path) -> Result<Vec<(String, usize)>, String> {
    let mut files = Vec::new();
    crate::frame::decode(stream, &mut |f| files.push((f.name.to_string(), f.data.to_vec())))
        .map_err(|e| format!("artifact stream: {e}"))?;
    let mut out = Vec::new();
    for (name, data) in files {
        let path = dir.join(&name);
        std::fs::write(&path, &data).map_err(|e| format!("{}: {e}", path.display()))?;
        out.push((name, data.len()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unframe_rejects_a_damaged_stream_and_writes_nothing() {
        let dir = std::env::temp_dir().join(format!("seamless-unframe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut s = Vec::new();
        crate::frame::encode("a.bin", b"one", &mut |b| s.extend_from_slice(b)).unwrap();
        crate::frame::encode("b.bin", b"two", &mut |b| s.extend_from_slice(b)).unwrap();
        let last = s.len() - 1;
        s[last] ^= 0xFF;
        assert!(unframe(&s, &dir).unwrap_err().contains("CRC-32 mismatch"));
        assert!(!dir.join("a.bin").exists(), "nothing written");
        s[last] ^= 0xFF;
        assert_eq!(unframe(&s, &dir).unwrap(), vec![("a.bin".into(), 3), ("b.bin".into(), 3)]);
        assert_eq!(std::fs::read(dir.join("b.bin")).unwrap(), b"two");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
