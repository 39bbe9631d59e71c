//! The host agent's ELF, as the TSM checks it before loading a byte: a static x86-64
//! executable whose loadable segments all lie in the host image window (the top 2 GiB of the
//! address space, the `kernel` code model's), page-disjoint, with file bytes in ascending order
//! after the program headers (the TSM reads fw_cfg front to back), and an entry point in an
//! executable segment. The binary is untrusted and unmeasured (MRSEAM covers only the TSM): the
//! checks keep the loader within its bounds, not the host honest.
//!
//! Pure: the header and the program headers in, a checked [`HostImage`] out; `world::loader`
//! does the reading and the placing.

use core::fmt;

/// Where the host image's virtual addresses start: -2 GiB, the `kernel` code model's window.
pub const IMAGE_BASE: u64 = 0xFFFF_FFFF_8000_0000;
/// The most bytes the image may span (from its first page to the end of its last).
pub const IMAGE_MAX: u64 = 16 << 20;
/// Bytes of the ELF header.
pub const HEADER_BYTES: usize = 64;
/// Bytes of one program header.
pub const PHDR_BYTES: usize = 56;
/// Program headers read at most.
pub const MAX_PHDRS: usize = 16;
/// Loadable segments at most.
pub const MAX_SEGMENTS: usize = 8;

const PAGE: u64 = 4096;
const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
const PT_TLS: u32 = 7;
/// Segment flags.
pub const PF_X: u32 = 1;
/// Writable.
pub const PF_W: u32 = 2;

/// Why the host image was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElfError {
    /// A check of the ELF header failed (which one).
    Header(&'static str),
    /// A program header was refused: its index, and why.
    Segment {
        /// Index among the program headers.
        index: usize,
        /// The check.
        why: &'static str,
    },
    /// No loadable segment.
    NoSegments,
    /// More loadable segments than the loader places.
    TooManySegments,
    /// The entry point is not in an executable segment.
    Entry(u64),
}

impl fmt::Display for ElfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ElfError::Header(why) => write!(f, "ELF header: {why}"),
            ElfError::Segment { index, why } => write!(f, "program header {index}: {why}"),
            ElfError::NoSegments => write!(f, "no loadable segment"),
            ElfError::TooManySegments => write!(f, "more than {MAX_SEGMENTS} loadable segments"),
            ElfError::Entry(e) => write!(f, "entry point {e:#x} is not in an executable segment"),
        }
    }
}

/// The fields of the ELF header the loader uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Entry point (virtual).
    pub entry: u64,
    /// File offset of the program headers.
    pub phoff: u64,
    /// Number of program headers.
    pub phnum: usize,
}

/// One loadable segment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Segment {
    /// First virtual address.
    pub vaddr: u64,
    /// Bytes in memory (the rest after `filesz` is zero).
    pub memsz: u64,
    /// File offset of its bytes.
    pub offset: u64,
    /// Bytes in the file.
    pub filesz: u64,
    /// `PF_*` flags.
    pub flags: u32,
}

impl Segment {
    fn first_page(&self) -> u64 {
        self.vaddr & !(PAGE - 1)
    }

    fn end(&self) -> u64 {
        self.vaddr + self.memsz
    }

    fn end_page(&self) -> u64 {
        self.end().next_multiple_of(PAGE)
    }
}

/// A checked host image: where it goes and what it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostImage {
    /// Entry point (virtual).
    pub entry: u64,
    /// Its first page (virtual).
    pub base: u64,
    /// Bytes from `base` to the end of its last page.
    pub span: u64,
    segments: [Segment; MAX_SEGMENTS],
    count: usize,
}

impl HostImage {
    /// The loadable segments, in ascending file (and address) order.
    pub fn segments(&self) -> &[Segment] {
        &self.segments[..self.count]
    }

    /// The `PF_*` flags of the segment holding the page at `vaddr`, if any.
    pub fn flags_at(&self, vaddr: u64) -> Option<u32> {
        self.segments().iter().find(|s| s.first_page() <= vaddr && vaddr < s.end_page()).map(|s| s.flags)
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

/// Checks the ELF header of a file of `size` bytes.
///
/// # Errors
/// [`ElfError::Header`] naming the first check that failed.
pub fn parse_header(h: &[u8; HEADER_BYTES], size: u64) -> Result<Header, ElfError> {
    let bad = |why| Err(ElfError::Header(why));
    if h[..4] != *b"\x7fELF" {
        return bad("no ELF magic");
    }
    if h[4] != 2 || h[5] != 1 || h[6] != 1 {
        return bad("not 64-bit little-endian ELF version 1");
    }
    if u16_at(h, 16) != 2 {
        return bad("not an executable (ET_EXEC): the host image is linked static");
    }
    if u16_at(h, 18) != 62 {
        return bad("not x86-64");
    }
    if u16_at(h, 54) as usize != PHDR_BYTES {
        return bad("program headers are not 56 bytes");
    }
    let phnum = u16_at(h, 56) as usize;
    if phnum == 0 || phnum > MAX_PHDRS {
        return bad("0 or more than 16 program headers");
    }
    let phoff = u64_at(h, 32);
    let table_end = phoff.checked_add((phnum * PHDR_BYTES) as u64);
    if phoff < HEADER_BYTES as u64 || table_end.is_none_or(|e| e > size) {
        return bad("program headers overlap the header or pass the end of the file");
    }
    Ok(Header { entry: u64_at(h, 24), phoff, phnum })
}

/// Checks the program headers `table` (the `header.phnum` entries) of a file of `size` bytes
/// and describes the image they load.
///
/// # Errors
/// [`ElfError`] for the first check that failed.
pub fn parse_segments(header: &Header, table: &[u8], size: u64) -> Result<HostImage, ElfError> {
    let mut segments = [Segment::default(); MAX_SEGMENTS];
    let mut count = 0;
    let table_end = header.phoff + (header.phnum * PHDR_BYTES) as u64;
    for index in 0..header.phnum {
        let p = table.get(index * PHDR_BYTES..(index + 1) * PHDR_BYTES).ok_or(ElfError::Header("short table"))?;
        let bad = |why| ElfError::Segment { index, why };
        match u32_at(p, 0) {
            PT_LOAD => {}
            PT_DYNAMIC | PT_INTERP => return Err(bad("dynamic linking: the host image is linked static")),
            PT_TLS => return Err(bad("thread-local storage: the host world has none")),
            _ => continue,
        }
        let s = Segment {
            flags: u32_at(p, 4),
            offset: u64_at(p, 8),
            vaddr: u64_at(p, 16),
            filesz: u64_at(p, 32),
            memsz: u64_at(p, 40),
        };
        if s.memsz == 0 {
            continue;
        }
        if s.filesz > s.memsz {
            return Err(bad("more bytes in the file than in memory"));
        }
        let window_end = IMAGE_BASE + IMAGE_MAX;
        if s.vaddr < IMAGE_BASE || s.vaddr.checked_add(s.memsz).is_none_or(|e| e > window_end) {
            return Err(bad("outside the host image window (-2 GiB, 16 MiB)"));
        }
        if s.offset.checked_add(s.filesz).is_none_or(|e| e > size) {
            return Err(bad("file bytes pass the end of the file"));
        }
        if s.filesz != 0 && s.offset < table_end {
            return Err(bad("file bytes before the end of the program headers"));
        }
        if count == MAX_SEGMENTS {
            return Err(ElfError::TooManySegments);
        }
        if let Some(prev) = count.checked_sub(1).map(|i| segments[i]) {
            if s.first_page() < prev.end_page() {
                return Err(bad("shares a page with, or lies below, the segment before it"));
            }
            if s.filesz != 0 && s.offset < prev.offset + prev.filesz {
                return Err(bad("file bytes before the segment before it ends"));
            }
        }
        segments[count] = s;
        count += 1;
    }
    if count == 0 {
        return Err(ElfError::NoSegments);
    }
    let (first, last) = (segments[0], segments[count - 1]);
    let executable =
        segments[..count].iter().any(|s| s.flags & PF_X != 0 && s.vaddr <= header.entry && header.entry < s.end());
    if !executable {
        return Err(ElfError::Entry(header.entry));
    }
    let base = first.first_page();
    Ok(HostImage { entry: header.entry, base, span: last.end_page() - base, segments, count })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIZE: u64 = 0x10_0000;

    fn header(phnum: u16) -> [u8; HEADER_BYTES] {
        let mut h = [0u8; HEADER_BYTES];
        h[..4].copy_from_slice(b"\x7fELF");
        (h[4], h[5], h[6]) = (2, 1, 1);
        h[16..18].copy_from_slice(&2u16.to_le_bytes());
        h[18..20].copy_from_slice(&62u16.to_le_bytes());
        h[24..32].copy_from_slice(&(IMAGE_BASE + 0x10).to_le_bytes());
        h[32..40].copy_from_slice(&64u64.to_le_bytes());
        h[54..56].copy_from_slice(&(PHDR_BYTES as u16).to_le_bytes());
        h[56..58].copy_from_slice(&phnum.to_le_bytes());
        h
    }

    fn phdr(ty: u32, flags: u32, offset: u64, vaddr: u64, filesz: u64, memsz: u64) -> [u8; PHDR_BYTES] {
        let mut p = [0u8; PHDR_BYTES];
        p[0..4].copy_from_slice(&ty.to_le_bytes());
        p[4..8].copy_from_slice(&flags.to_le_bytes());
        p[8..16].copy_from_slice(&offset.to_le_bytes());
        p[16..24].copy_from_slice(&vaddr.to_le_bytes());
        p[24..32].copy_from_slice(&vaddr.to_le_bytes());
        p[32..40].copy_from_slice(&filesz.to_le_bytes());
        p[40..48].copy_from_slice(&memsz.to_le_bytes());
        p
    }

    /// Text (RX), read-only data, data + bss (RW), a GNU_STACK header.
    fn table() -> std::vec::Vec<[u8; PHDR_BYTES]> {
        std::vec![
            phdr(PT_LOAD, 5, 0x1000, IMAGE_BASE, 0x3000, 0x3000),
            phdr(PT_LOAD, 4, 0x4000, IMAGE_BASE + 0x3000, 0x800, 0x800),
            phdr(PT_LOAD, 6, 0x5000, IMAGE_BASE + 0x4000, 0x100, 0x12000),
            phdr(0x6474_e551, 6, 0, 0, 0, 0),
        ]
    }

    fn parse(t: &[[u8; PHDR_BYTES]]) -> Result<HostImage, ElfError> {
        let h = parse_header(&header(t.len() as u16), SIZE)?;
        parse_segments(&h, &t.concat(), SIZE)
    }

    #[test]
    fn parse_header_rejects_every_bad_field() {
        type Spoil = fn(&mut [u8; HEADER_BYTES]);
        let cases: [(Spoil, &str); 7] = [
            (|h| h[0] = 0, "no ELF magic"),
            (|h| h[4] = 1, "not 64-bit little-endian ELF version 1"),
            (|h| h[16] = 3, "not an executable (ET_EXEC): the host image is linked static"),
            (|h| h[18] = 3, "not x86-64"),
            (|h| h[54] = 32, "program headers are not 56 bytes"),
            (|h| h[56] = 0, "0 or more than 16 program headers"),
            (|h| h[32] = 8, "program headers overlap the header or pass the end of the file"),
        ];
        for (spoil, why) in cases {
            let mut h = header(3);
            spoil(&mut h);
            assert_eq!(parse_header(&h, SIZE), Err(ElfError::Header(why)), "{why}");
        }
        assert_eq!(parse_header(&header(17), SIZE), Err(ElfError::Header("0 or more than 16 program headers")));
        assert!(matches!(parse_header(&header(3), 64 + 56 * 2), Err(ElfError::Header(_))), "table past the end");
    }

    #[test]
    fn parse_segments_rejects_dynamic_tls_and_every_bad_segment() {
        let seg = |index, why| Err(ElfError::Segment { index, why });
        let mut t = table();
        t[3] = phdr(PT_DYNAMIC, 6, 0, 0, 0, 0);
        assert_eq!(parse(&t), seg(3, "dynamic linking: the host image is linked static"));
        t[3] = phdr(PT_TLS, 4, 0, 0, 0, 8);
        assert_eq!(parse(&t), seg(3, "thread-local storage: the host world has none"));
        let mut t = table();
        t[1] = phdr(PT_LOAD, 4, 0x4000, IMAGE_BASE + 0x3000, 0x900, 0x800);
        assert_eq!(parse(&t), seg(1, "more bytes in the file than in memory"));
        t[1] = phdr(PT_LOAD, 4, 0x4000, 0x40_0000, 0x800, 0x800);
        assert_eq!(parse(&t), seg(1, "outside the host image window (-2 GiB, 16 MiB)"));
        t[1] = phdr(PT_LOAD, 4, 0x4000, IMAGE_BASE + IMAGE_MAX - 0x100, 0x800, 0x800);
        assert_eq!(parse(&t), seg(1, "outside the host image window (-2 GiB, 16 MiB)"));
        t[1] = phdr(PT_LOAD, 4, 0x4000, u64::MAX - 0x10, 0x8, 0x800);
        assert_eq!(parse(&t), seg(1, "outside the host image window (-2 GiB, 16 MiB)"));
        t[1] = phdr(PT_LOAD, 4, SIZE - 0x10, IMAGE_BASE + 0x3000, 0x800, 0x800);
        assert_eq!(parse(&t), seg(1, "file bytes pass the end of the file"));
        t[1] = phdr(PT_LOAD, 4, 0x40, IMAGE_BASE + 0x3000, 0x800, 0x800);
        assert_eq!(parse(&t), seg(1, "file bytes before the end of the program headers"));
        t[1] = phdr(PT_LOAD, 4, 0x4000, IMAGE_BASE + 0x2800, 0x800, 0x800);
        assert_eq!(parse(&t), seg(1, "shares a page with, or lies below, the segment before it"));
        t[1] = phdr(PT_LOAD, 4, 0x2000, IMAGE_BASE + 0x3000, 0x800, 0x800);
        assert_eq!(parse(&t), seg(1, "file bytes before the segment before it ends"));
    }

    #[test]
    fn parse_segments_rejects_no_segment_too_many_and_an_entry_outside_code() {
        assert_eq!(parse(&[phdr(0x6474_e551, 6, 0, 0, 0, 0)]), Err(ElfError::NoSegments));
        let many: std::vec::Vec<_> =
            (0..9u64).map(|i| phdr(PT_LOAD, 5, 0x1000 * (i + 1), IMAGE_BASE + 0x1000 * i, 0x10, 0x10)).collect();
        assert_eq!(parse(&many), Err(ElfError::TooManySegments));
        let mut t = table();
        t[0] = phdr(PT_LOAD, 4, 0x1000, IMAGE_BASE, 0x3000, 0x3000);
        assert_eq!(parse(&t), Err(ElfError::Entry(IMAGE_BASE + 0x10)));
    }

    #[test]
    fn parse_segments_happy_path() {
        let img = parse(&table()).unwrap();
        assert_eq!(img.entry, IMAGE_BASE + 0x10);
        assert_eq!(img.base, IMAGE_BASE);
        assert_eq!(img.span, 0x16000);
        assert_eq!(img.segments().len(), 3);
        assert_eq!(img.flags_at(IMAGE_BASE + 0x1000), Some(5));
        assert_eq!(img.flags_at(IMAGE_BASE + 0x3000), Some(4));
        assert_eq!(img.flags_at(IMAGE_BASE + 0x15000), Some(6));
        assert_eq!(img.flags_at(IMAGE_BASE + 0x16000), None);
    }
}
