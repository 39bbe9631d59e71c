//! The firmware crate's host-side tools (the host build of the same crate, so they share the
//! firmware's own definitions):
//!
//! - `firmware guest-image ELF FILE`: turns the guest's ELF (`seamless-guest`) into the image
//!   file (`attest::image`) the host agent loads over fw_cfg and `attest measure FILE` measures:
//!   one region per PT_LOAD segment in address order, the pages holding file bytes measured,
//!   the zero-fill pages after them (TEMP_MEM: tables, stack, .bss) added unmeasured;
//! - `firmware disk-image FILE`: writes the demo's raw drive image (`attest::disk`: 1 MiB of
//!   self-naming blocks), which QEMU's NVMe controller serves and the TD reads and checks;
//! - `firmware artifacts STREAM DIR`: checks the COM3 stream frame by frame (`seamless_drivers::frame`) and
//!   writes each file into DIR; any damage is an error and writes nothing;
//! - `firmware mrseam ELF`: prints MRSEAM, the SHA-384 the firmware takes over its own image as
//!   QEMU loaded it (`arch::loaded_image`), recomputed from the file: the PT_LOAD segments' file
//!   bytes laid out at their physical addresses, gaps zero, from the first to the last file byte.

use std::path::Path;
use std::process::ExitCode;

const USAGE: &str =
    "usage: firmware guest-image ELF FILE | firmware disk-image FILE | firmware artifacts STREAM DIR | firmware mrseam ELF";

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
        [cmd, elf, file] if cmd == "guest-image" => {
            let bytes = std::fs::read(elf).map_err(|e| format!("{elf}: {e}"))?;
            let image = guest_image(&bytes).map_err(|e| format!("{elf}: {e}"))?;
            std::fs::write(file, image).map_err(|e| format!("{file}: {e}"))
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

/// A PT_LOAD segment: its physical address, its file bytes, its size in memory.
struct Segment<'a> {
    paddr: u64,
    data: &'a [u8],
    memsz: u64,
}

/// The PT_LOAD segments of a little-endian x86-64 ELF64 file, in program-header order.
///
/// # Errors
/// Not such a file, a header or segment past its end, or file bytes beyond a segment's size.
fn load_segments(elf: &[u8]) -> Result<Vec<Segment<'_>>, String> {
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
        let (offset, paddr, filesz, memsz) = (u64_at(h + 8), u64_at(h + 24), u64_at(h + 32), u64_at(h + 40));
        let (Some(offset), Some(paddr), Some(filesz), Some(memsz)) = (offset, paddr, filesz, memsz) else {
            return Err(short());
        };
        if p_type != [1, 0, 0, 0] {
            continue;
        }
        if filesz > memsz {
            return Err(format!("segment {i} has more file bytes than memory"));
        }
        let data = usize::try_from(offset)
            .ok()
            .and_then(|o| elf.get(o..o.checked_add(usize::try_from(filesz).ok()?)?))
            .ok_or_else(|| format!("segment {i} past the end of the file"))?;
        segments.push(Segment { paddr, data, memsz });
    }
    Ok(segments)
}

/// MRSEAM of an ELF64 image: SHA-384 over `[first, last)` file byte of its PT_LOAD segments at
/// their physical addresses, zero between them, which is what QEMU's PVH loader leaves in RAM.
///
/// # Errors
/// Not a little-endian x86-64 ELF64, a header or segment past the file, no loadable bytes, or
/// more than 64 MiB to load.
pub fn mrseam(elf: &[u8]) -> Result<[u8; 48], String> {
    use sha2::{Digest, Sha384};
    let segments: Vec<_> = load_segments(elf)?.into_iter().filter(|s| !s.data.is_empty()).collect();
    let start = segments.iter().map(|s| s.paddr).min().ok_or("no loadable bytes")?;
    let end = segments.iter().map(|s| s.paddr.saturating_add(s.data.len() as u64)).max().unwrap_or(start);
    if end - start > MAX_LOADED {
        return Err(format!("{} bytes to load, more than an image can be", end - start));
    }
    let mut image = vec![0u8; (end - start) as usize];
    for s in segments {
        let at = (s.paddr - start) as usize;
        image[at..at + s.data.len()].copy_from_slice(s.data);
    }
    Ok(Sha384::digest(&image).into())
}

/// The guest image of an ELF64 guest (see the module doc): per PT_LOAD segment in address
/// order, from its page-aligned start, a measured region whose content is the file bytes at
/// their page offset (when the segment has any), then an unmeasured region of the pages that
/// are only zero-fill. `attest::image::Image::parse` checks the result (no two segments may
/// share a page).
///
/// # Errors
/// As [`load_segments`]; no loadable segment; a segment past the address space or bigger than
/// 64 MiB; or segments sharing a page.
pub fn guest_image(elf: &[u8]) -> Result<Vec<u8>, String> {
    const PAGE: u64 = 4096;
    let mut segments: Vec<_> = load_segments(elf)?.into_iter().filter(|s| s.memsz > 0).collect();
    segments.sort_by_key(|s| s.paddr);
    if segments.is_empty() {
        return Err("no loadable segment".into());
    }
    let mut contents = Vec::new();
    let mut shape = Vec::new();
    for s in &segments {
        let start = s.paddr & !(PAGE - 1);
        let end = s.paddr.checked_add(s.memsz).filter(|&e| e - start <= MAX_LOADED);
        let Some(end) = end else { return Err(format!("segment at {:#x} is too large", s.paddr)) };
        let pages = (end - start).div_ceil(PAGE);
        let lead = (s.paddr - start) as usize;
        let measured = if s.data.is_empty() { 0 } else { (lead as u64 + s.data.len() as u64).div_ceil(PAGE) };
        let mut content = vec![0u8; lead];
        content.extend_from_slice(s.data);
        shape.push((start, measured, pages));
        contents.push(content);
    }
    let mut regions: Vec<(u64, u32, bool, &[u8])> = Vec::new();
    for ((start, measured, pages), content) in shape.iter().zip(&contents) {
        let count = |n: u64| u32::try_from(n).map_err(|_| "segment too large".to_string());
        if *measured > 0 {
            regions.push((*start, count(*measured)?, true, content));
        }
        if pages > measured {
            regions.push((start + measured * PAGE, count(pages - measured)?, false, &[]));
        }
    }
    let mut out = Vec::new();
    attest::image::write(&regions, &mut |b| out.extend_from_slice(b));
    attest::image::Image::parse(&out).map_err(|e| format!("the segments do not make an image: {e}"))?;
    Ok(out)
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
    seamless_drivers::frame::decode(stream, &mut |f| files.push((f.name.to_string(), f.data.to_vec())))
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
    /// size; memory size the same), followed by `body`.
    fn elf(segs: &[(u32, u64, u64, u64)], body: &[u8]) -> Vec<u8> {
        let segs: Vec<_> = segs.iter().map(|&(ty, off, paddr, filesz)| (ty, off, paddr, filesz, filesz)).collect();
        elf_mem(&segs, body)
    }

    /// As [`elf`], with each segment's memory size given last.
    fn elf_mem(segs: &[(u32, u64, u64, u64, u64)], body: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 64];
        f[..6].copy_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1]);
        f[18..20].copy_from_slice(&62u16.to_le_bytes());
        f[32..40].copy_from_slice(&64u64.to_le_bytes());
        f[54..56].copy_from_slice(&56u16.to_le_bytes());
        f[56..58].copy_from_slice(&(segs.len() as u16).to_le_bytes());
        for &(ty, off, paddr, filesz, memsz) in segs {
            let mut h = vec![0u8; 56];
            h[..4].copy_from_slice(&ty.to_le_bytes());
            h[8..16].copy_from_slice(&off.to_le_bytes());
            h[24..32].copy_from_slice(&paddr.to_le_bytes());
            h[32..40].copy_from_slice(&filesz.to_le_bytes());
            h[40..48].copy_from_slice(&memsz.to_le_bytes());
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
    fn guest_image_measures_file_pages_and_adds_zero_fill_unmeasured() {
        use attest::image::Image;
        use attest::mrtd::measure_image;
        let body_at = 64 + 4 * 56;
        let code: Vec<u8> = (0..5000u32).map(|i| (i * 7) as u8).collect();
        let mut body = code.clone();
        body.extend_from_slice(b"0123456789abcdef");
        let f = elf_mem(
            &[
                // Code, two pages of file bytes; TEMP_MEM, zero-fill only; a note; data then .bss.
                (1, body_at, 0x200000, 5000, 5000),
                (1, 0, 0x10000, 0, 0x3000),
                (4, body_at, 0x500000, 4, 4),
                (1, body_at + 5000, 0x300010, 16, 0x2000),
            ],
            &body,
        );
        let bytes = guest_image(&f).unwrap();
        let img = Image::parse(&bytes).unwrap();
        let shape: Vec<_> = img.regions().map(|r| (r.gpa, r.pages, r.measured)).collect();
        assert_eq!(
            shape,
            [(0x10000, 3, false), (0x200000, 2, true), (0x300000, 1, true), (0x301000, 2, false)],
            "address order; measured file pages, then unmeasured zero-fill"
        );
        let zero = [0u8; 4096];
        let mut c0 = [0u8; 4096];
        c0.copy_from_slice(&code[..4096]);
        let mut c1 = [0u8; 4096];
        c1[..5000 - 4096].copy_from_slice(&code[4096..]);
        let mut d = [0u8; 4096];
        d[0x10..0x20].copy_from_slice(b"0123456789abcdef");
        let want = measure_image([
            (0x10000, &zero, false),
            (0x11000, &zero, false),
            (0x12000, &zero, false),
            (0x200000, &c0, true),
            (0x201000, &c1, true),
            (0x300000, &d, true),
            (0x301000, &zero, false),
            (0x302000, &zero, false),
        ]);
        assert_eq!(img.mrtd(), want);
    }

    #[test]
    fn guest_image_rejects_what_cannot_be_loaded() {
        let (one, two) = (64 + 56, 64 + 2 * 56);
        assert!(guest_image(b"not an elf").unwrap_err().contains("not a little-endian"));
        assert!(guest_image(&elf(&[(4, one, 0x1000, 1)], b"A")).unwrap_err().contains("no loadable segment"));
        let more_file_than_memory = elf_mem(&[(1, one, 0x1000, 2, 1)], b"AB");
        assert!(guest_image(&more_file_than_memory).unwrap_err().contains("more file bytes than memory"));
        let shared_page = elf(&[(1, two, 0x1000, 1), (1, two, 0x1800, 1)], b"A");
        assert!(guest_image(&shared_page).unwrap_err().contains("do not make an image"));
        let huge = elf_mem(&[(1, one, 0x1000, 0, 1 << 40)], b"");
        assert!(guest_image(&huge).unwrap_err().contains("too large"));
        let wraps = elf_mem(&[(1, one, u64::MAX - 0xFFF, 1, 0x2000)], b"A");
        assert!(guest_image(&wraps).unwrap_err().contains("too large"));
    }

    #[test]
    fn unframe_rejects_a_damaged_stream_and_writes_nothing() {
        let dir = std::env::temp_dir().join(format!("seamless-unframe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut s = Vec::new();
        seamless_drivers::frame::encode("a.bin", b"one", &mut |b| s.extend_from_slice(b)).unwrap();
        seamless_drivers::frame::encode("b.bin", b"two", &mut |b| s.extend_from_slice(b)).unwrap();
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
