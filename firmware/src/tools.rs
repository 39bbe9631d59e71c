//! The firmware crate's host-side tools (the host build of the same crate, so they share the
//! firmware's own definitions):
//!
//! - `firmware guest-image FILE`: writes the guest image the host agent loads, for
//!   `attest measure FILE`;
//! - `firmware disk-image FILE`: writes the demo's raw drive image (`attest::disk`: 1 MiB of
//!   self-naming blocks), which QEMU's NVMe controller serves and the TD reads and checks;
//! - `firmware artifacts STREAM DIR`: checks the COM3 stream frame by frame (`crate::frame`) and
//!   writes each file into DIR; any damage is an error and writes nothing;
//! - `firmware mrseam ELF`: prints MRSEAM, the SHA-384 the firmware takes over its own image as
//!   QEMU loaded it (`arch::loaded_image`), recomputed from the file: the PT_LOAD segments' file
//!   bytes laid out at their physical addresses, gaps zero, from the first to the last file byte.

use std::path::Path;
use std::process::ExitCode;

const USAGE: &str =
    "usage: firmware guest-image FILE | firmware disk-image FILE | firmware artifacts STREAM DIR | firmware mrseam ELF";

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
        [cmd, elf] if cmd == "mrseam" => {
            let bytes = std::fs::read(elf).map_err(|e| format!("{elf}: {e}"))?;
            let digest = mrseam(&bytes).map_err(|e| format!("{elf}: {e}"))?;
            println!("{}", digest.iter().map(|b| format!("{b:02x}")).collect::<String>());
            Ok(())
        }
        _ => Err(USAGE.into()),
    }
}

/// Most bytes an image may load (the firmware's goal is 1 MiB; this only bounds a hostile file).
const MAX_LOADED: u64 = 64 << 20;

/// MRSEAM of an ELF64 image: SHA-384 over `[first, last)` file byte of its PT_LOAD segments at
/// their physical addresses, zero between them, which is what QEMU's PVH loader leaves in RAM.
///
/// # Errors
/// Not a little-endian x86-64 ELF64, a header or segment past the file, no loadable bytes, or
/// more than 64 MiB to load.
pub fn mrseam(elf: &[u8]) -> Result<[u8; 48], String> {
    use sha2::{Digest, Sha384};
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u64_at = |o: usize| elf.get(o..o + 8).map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])));
    if elf.get(..6) != Some(&[0x7f, b'E', b'L', b'F', 2, 1][..]) || u16_at(18) != Some(62) {
        return Err("not a little-endian x86-64 ELF64 file".into());
    }
    let short = || "header past the end of the file".to_string();
    let phoff = u64_at(32).ok_or_else(short)? as usize;
    let phentsize = u16_at(54).ok_or_else(short)? as usize;
    let phnum = u16_at(56).ok_or_else(short)? as usize;
    let mut segments = Vec::new();
    for i in 0..phnum {
        let h = phoff.checked_add(i.checked_mul(phentsize).ok_or_else(short)?).ok_or_else(short)?;
        let p_type = elf.get(h..h + 4).ok_or_else(short)?;
        let (offset, paddr, filesz) = (u64_at(h + 8), u64_at(h + 24), u64_at(h + 32));
        let (Some(offset), Some(paddr), Some(filesz)) = (offset, paddr, filesz) else { return Err(short()) };
        if p_type != [1, 0, 0, 0] || filesz == 0 {
            continue;
        }
        let data = usize::try_from(offset)
            .ok()
            .and_then(|o| elf.get(o..o.checked_add(usize::try_from(filesz).ok()?)?))
            .ok_or_else(|| format!("segment {i} past the end of the file"))?;
        segments.push((paddr, data));
    }
    let start = segments.iter().map(|s| s.0).min().ok_or("no loadable bytes")?;
    let end = segments.iter().map(|s| s.0.saturating_add(s.1.len() as u64)).max().unwrap_or(start);
    if end - start > MAX_LOADED {
        return Err(format!("{} bytes to load, more than an image can be", end - start));
    }
    let mut image = vec![0u8; (end - start) as usize];
    for (paddr, data) in segments {
        let at = (paddr - start) as usize;
        image[at..at + data.len()].copy_from_slice(data);
    }
    Ok(Sha384::digest(&image).into())
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

    /// An ELF64 header and `segs` program headers (type, file offset, physical address, file
    /// size), followed by `body`.
    fn elf(segs: &[(u32, u64, u64, u64)], body: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 64];
        f[..6].copy_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1]);
        f[18..20].copy_from_slice(&62u16.to_le_bytes());
        f[32..40].copy_from_slice(&64u64.to_le_bytes());
        f[54..56].copy_from_slice(&56u16.to_le_bytes());
        f[56..58].copy_from_slice(&(segs.len() as u16).to_le_bytes());
        for &(ty, off, paddr, filesz) in segs {
            let mut h = vec![0u8; 56];
            h[..4].copy_from_slice(&ty.to_le_bytes());
            h[8..16].copy_from_slice(&off.to_le_bytes());
            h[24..32].copy_from_slice(&paddr.to_le_bytes());
            h[32..40].copy_from_slice(&filesz.to_le_bytes());
            f.extend_from_slice(&h);
        }
        f.extend_from_slice(body);
        f
    }

    #[test]
    fn mrseam_lays_segments_out_at_their_addresses_with_zero_gaps() {
        use sha2::{Digest, Sha384};
        let body_at = 64 + 3 * 56;
        // Out of order, a note that is not PT_LOAD, and a gap of 4 bytes.
        let f = elf(&[(1, body_at + 4, 0x100008, 2), (4, body_at, 0x200000, 4), (1, body_at, 0x100000, 4)], b"ABCDxy");
        let want: [u8; 48] = Sha384::digest(b"ABCD\0\0\0\0xy").into();
        assert_eq!(mrseam(&f).unwrap(), want);
    }

    #[test]
    fn mrseam_rejects_a_file_that_is_not_an_image() {
        assert!(mrseam(b"\x7fELF").unwrap_err().contains("not a little-endian x86-64 ELF64"));
        let body_at = 64 + 56;
        assert!(mrseam(&elf(&[(1, body_at, 0x100000, 100)], b"AB")).unwrap_err().contains("segment 0 past the end"));
        assert!(mrseam(&elf(&[(4, body_at, 0x100000, 2)], b"AB")).unwrap_err().contains("no loadable bytes"));
        let far = elf(&[(1, body_at, 0x100000, 1), (1, body_at, 0x100000 + (1 << 30), 1)], b"A");
        assert!(mrseam(&far).unwrap_err().contains("more than an image can be"));
    }

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
