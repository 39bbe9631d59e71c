//! The guest image format and its loading convention: which page goes to which GPA, and which
//! pages are measured, so that `attest measure` computes the MRTD the TSM will report for a TD
//! built from the image.
//!
//! ```text
//! 0    magic "SEAMIMG\0" (8)
//! 8    version u16 LE = 1
//! 10   reserved u16, zero
//! 12   region count u32 LE (1..=MAX_REGIONS)
//! 16   regions, back to back:
//!        gpa u64 LE        first page's GPA, 4 KiB aligned
//!        pages u32 LE      pages in the region, at least 1
//!        flags u32 LE      bit 0 MEASURE: MR.EXTEND every page; other bits zero
//!        length u32 LE     content bytes that follow, at most pages * 4096
//!        reserved u32, zero
//!        content           `length` bytes; the rest of the region is zero
//! ```
//!
//! Loading convention (what the host VMM does and what [`Image::mrtd`] replays): regions in file
//! order; within a region, pages in ascending GPA order; for each page TDH.MEM.PAGE.ADD at its GPA
//! with its 4 KiB of content, then, for a MEASURE region, TDH.MR.EXTEND of its sixteen 256-byte
//! chunks in ascending order, before the next page is added. Regions may not overlap (the TSM
//! refuses to add a page twice) and nothing may be left after the last region.
//!
//! A flat image ([`flat_mrtd`]) is the degenerate case: the file's bytes from one GPA on, every
//! page measured, the last page zero-padded.

use core::fmt;

use crate::mrtd::{MrtdBuilder, CHUNK_BYTES, MRTD_BYTES, PAGE_BYTES};

/// First 8 bytes of an image.
pub const MAGIC: [u8; 8] = *b"SEAMIMG\0";
/// The image version this crate reads.
pub const VERSION: u16 = 1;
/// Bytes before the first region.
pub const HEADER_BYTES: usize = 16;
/// Bytes of a region header.
pub const REGION_HEADER_BYTES: usize = 24;
/// Regions an image may have.
pub const MAX_REGIONS: u32 = 1024;
/// Region flag: every page of the region is measured with TDH.MR.EXTEND.
pub const FLAG_MEASURE: u32 = 1;

/// Why bytes are not an image. Offsets are from the start of the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageError {
    /// Fewer than [`HEADER_BYTES`] bytes (an empty file lands here).
    TruncatedHeader(usize),
    /// The first 8 bytes are not [`MAGIC`].
    BadMagic,
    /// A version this crate does not read.
    UnsupportedVersion(u16),
    /// A reserved field is not zero.
    NonZeroReserved {
        /// Offset of the field.
        offset: usize,
    },
    /// A region count of zero or above [`MAX_REGIONS`].
    BadRegionCount(u32),
    /// A region header runs past the end of the file.
    TruncatedRegion {
        /// Offset of the region header.
        offset: usize,
    },
    /// A region's GPA is not 4 KiB aligned.
    UnalignedGpa {
        /// Offset of the region header.
        offset: usize,
        /// The GPA.
        gpa: u64,
    },
    /// A region of zero pages, or one whose end overflows the address space.
    BadPageCount {
        /// Offset of the region header.
        offset: usize,
        /// The page count.
        pages: u32,
    },
    /// Flag bits other than [`FLAG_MEASURE`].
    UnknownFlags {
        /// Offset of the region header.
        offset: usize,
        /// The flags.
        flags: u32,
    },
    /// More content than the region's pages hold, or content past the end of the file.
    BadLength {
        /// Offset of the region header.
        offset: usize,
        /// The length field.
        length: u32,
    },
    /// Two regions share a page.
    Overlap {
        /// Offset of the later region's header.
        offset: usize,
    },
    /// Bytes after the last region.
    TrailingBytes {
        /// Offset of the first one.
        offset: usize,
    },
    /// A flat image with no bytes, or whose pages overflow the address space, or an unaligned
    /// base.
    BadFlatImage,
}

impl fmt::Display for ImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ImageError::TruncatedHeader(n) => write!(f, "image needs a {HEADER_BYTES}-byte header, got {n} bytes"),
            ImageError::BadMagic => {
                f.write_str("bad image magic, expected \"SEAMIMG\\0\" (use --flat GPA for a raw binary)")
            }
            ImageError::UnsupportedVersion(v) => {
                write!(f, "unsupported image version {v} (this reader knows {VERSION})")
            }
            ImageError::NonZeroReserved { offset } => write!(f, "reserved field at offset {offset} is not zero"),
            ImageError::BadRegionCount(n) => write!(f, "region count {n} is not in 1..={MAX_REGIONS}"),
            ImageError::TruncatedRegion { offset } => write!(f, "region header at offset {offset} runs past the end"),
            ImageError::UnalignedGpa { offset, gpa } => {
                write!(f, "region at offset {offset}: GPA {gpa:#x} is not 4 KiB aligned")
            }
            ImageError::BadPageCount { offset, pages } => {
                write!(f, "region at offset {offset}: {pages} pages is empty or overflows the address space")
            }
            ImageError::UnknownFlags { offset, flags } => {
                write!(f, "region at offset {offset}: unknown flags {flags:#x}")
            }
            ImageError::BadLength { offset, length } => {
                write!(f, "region at offset {offset}: content length {length} exceeds the region's pages or the file")
            }
            ImageError::Overlap { offset } => write!(f, "region at offset {offset} overlaps an earlier region"),
            ImageError::TrailingBytes { offset } => write!(f, "bytes after the last region, from offset {offset}"),
            ImageError::BadFlatImage => {
                f.write_str("flat image is empty, its base is not 4 KiB aligned, or it overflows the address space")
            }
        }
    }
}

impl core::error::Error for ImageError {}

/// One region of a checked image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region<'a> {
    /// GPA of the first page.
    pub gpa: u64,
    /// Pages.
    pub pages: u32,
    /// Whether the pages are measured with TDH.MR.EXTEND.
    pub measured: bool,
    /// Content (the rest of the region is zero).
    pub content: &'a [u8],
}

impl Region<'_> {
    /// The end GPA (exclusive). Cannot overflow for a checked region.
    pub fn end(&self) -> u64 {
        self.gpa.saturating_add(u64::from(self.pages) * PAGE_BYTES as u64)
    }

    /// Page `i`'s GPA and 4 KiB of content.
    pub fn page(&self, i: u32) -> (u64, [u8; PAGE_BYTES]) {
        let mut page = [0u8; PAGE_BYTES];
        let start = (i as usize).saturating_mul(PAGE_BYTES);
        if let Some(rest) = self.content.get(start..) {
            let n = rest.len().min(PAGE_BYTES);
            page[..n].copy_from_slice(&rest[..n]);
        }
        (self.gpa + u64::from(i) * PAGE_BYTES as u64, page)
    }
}

/// A checked image, borrowing its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Image<'a> {
    bytes: &'a [u8],
    count: u32,
}

fn le32(b: &[u8], at: usize) -> u32 {
    let mut v = [0u8; 4];
    v.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(v)
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

/// Walks regions from `offset`: the region and the offset after it.
fn region_at(bytes: &[u8], offset: usize) -> Result<(Region<'_>, usize), ImageError> {
    let Some(h) = bytes.get(offset..offset + REGION_HEADER_BYTES) else {
        return Err(ImageError::TruncatedRegion { offset });
    };
    let (gpa, pages, flags, length, reserved) = (le64(h, 0), le32(h, 8), le32(h, 12), le32(h, 16), le32(h, 20));
    if !gpa.is_multiple_of(PAGE_BYTES as u64) {
        return Err(ImageError::UnalignedGpa { offset, gpa });
    }
    let size = u64::from(pages) * PAGE_BYTES as u64;
    if pages == 0 || gpa.checked_add(size).is_none() {
        return Err(ImageError::BadPageCount { offset, pages });
    }
    if flags & !FLAG_MEASURE != 0 {
        return Err(ImageError::UnknownFlags { offset, flags });
    }
    if reserved != 0 {
        return Err(ImageError::NonZeroReserved { offset: offset + 20 });
    }
    let body = offset + REGION_HEADER_BYTES;
    let content = usize::try_from(length).ok().and_then(|n| bytes.get(body..body.checked_add(n)?));
    let Some(content) = content.filter(|_| u64::from(length) <= size) else {
        return Err(ImageError::BadLength { offset, length });
    };
    let region = Region { gpa, pages, measured: flags & FLAG_MEASURE != 0, content };
    Ok((region, body + content.len()))
}

impl<'a> Image<'a> {
    /// Checks `bytes` as an image (see [`ImageError`] for every rule).
    ///
    /// # Errors
    /// The first rule broken, with its offset.
    pub fn parse(bytes: &'a [u8]) -> Result<Image<'a>, ImageError> {
        let Some(h) = bytes.get(..HEADER_BYTES) else {
            return Err(ImageError::TruncatedHeader(bytes.len()));
        };
        if h[..8] != MAGIC {
            return Err(ImageError::BadMagic);
        }
        let version = u16::from_le_bytes([h[8], h[9]]);
        if version != VERSION {
            return Err(ImageError::UnsupportedVersion(version));
        }
        if h[10] != 0 || h[11] != 0 {
            return Err(ImageError::NonZeroReserved { offset: 10 });
        }
        let count = le32(h, 12);
        if count == 0 || count > MAX_REGIONS {
            return Err(ImageError::BadRegionCount(count));
        }
        let mut offset = HEADER_BYTES;
        for i in 0..count {
            let (region, next) = region_at(bytes, offset)?;
            // Earlier regions were checked already, so walking them again cannot fail.
            let mut earlier = HEADER_BYTES;
            for _ in 0..i {
                let Ok((other, after)) = region_at(bytes, earlier) else { break };
                if region.gpa < other.end() && other.gpa < region.end() {
                    return Err(ImageError::Overlap { offset });
                }
                earlier = after;
            }
            offset = next;
        }
        if offset != bytes.len() {
            return Err(ImageError::TrailingBytes { offset });
        }
        Ok(Image { bytes, count })
    }

    /// The regions, in file (load) order.
    pub fn regions(&self) -> impl Iterator<Item = Region<'a>> + 'a {
        let bytes = self.bytes;
        let mut offset = HEADER_BYTES;
        (0..self.count).map_while(move |_| {
            let (r, next) = region_at(bytes, offset).ok()?;
            offset = next;
            Some(r)
        })
    }

    /// The MRTD of a TD built from this image by the loading convention.
    pub fn mrtd(&self) -> [u8; MRTD_BYTES] {
        let mut b = MrtdBuilder::new();
        for region in self.regions() {
            for i in 0..region.pages {
                let (gpa, page) = region.page(i);
                add_page(&mut b, gpa, &page, region.measured);
            }
        }
        b.finalize()
    }
}

pub(crate) fn add_page(b: &mut MrtdBuilder, gpa: u64, page: &[u8; PAGE_BYTES], measured: bool) {
    b.page_add(gpa);
    if measured {
        for (i, chunk) in page.chunks_exact(CHUNK_BYTES).enumerate() {
            let mut c = [0u8; CHUNK_BYTES];
            c.copy_from_slice(chunk);
            b.extend_chunk(gpa + (i * CHUNK_BYTES) as u64, &c);
        }
    }
}

/// The MRTD of a flat image: `bytes` loaded from `base` on, every page added and measured in
/// ascending order, the last page zero-padded.
///
/// # Errors
/// [`ImageError::BadFlatImage`] for an empty image, an unaligned base, or pages past the end of
/// the address space.
pub fn flat_mrtd(base: u64, bytes: &[u8]) -> Result<[u8; MRTD_BYTES], ImageError> {
    let pages = bytes.len().div_ceil(PAGE_BYTES) as u64;
    if bytes.is_empty()
        || !base.is_multiple_of(PAGE_BYTES as u64)
        || base.checked_add(pages * PAGE_BYTES as u64).is_none()
    {
        return Err(ImageError::BadFlatImage);
    }
    let mut b = MrtdBuilder::new();
    for (i, chunk) in bytes.chunks(PAGE_BYTES).enumerate() {
        let mut page = [0u8; PAGE_BYTES];
        page[..chunk.len()].copy_from_slice(chunk);
        add_page(&mut b, base + (i * PAGE_BYTES) as u64, &page, true);
    }
    Ok(b.finalize())
}

/// Writes the image of regions `(gpa, pages, measured, content)` to `sink`, piece by piece,
/// without the parser's checks (for tools and tests that write images; `no_std`, no heap).
pub fn write(regions: &[(u64, u32, bool, &[u8])], sink: &mut dyn FnMut(&[u8])) {
    sink(&MAGIC);
    sink(&VERSION.to_le_bytes());
    sink(&[0, 0]);
    sink(&(regions.len() as u32).to_le_bytes());
    for (gpa, pages, measured, content) in regions {
        sink(&gpa.to_le_bytes());
        sink(&pages.to_le_bytes());
        sink(&u32::from(*measured).to_le_bytes());
        sink(&(content.len() as u32).to_le_bytes());
        sink(&[0; 4]);
        sink(content);
    }
}

/// Builds image bytes from regions `(gpa, pages, measured, content)`, without the parser's
/// checks (see [`write`]).
#[cfg(any(feature = "std", test))]
pub fn encode(regions: &[(u64, u32, bool, &[u8])]) -> std::vec::Vec<u8> {
    let mut out = std::vec::Vec::new();
    write(regions, &mut |b| out.extend_from_slice(b));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mrtd::measure_image;

    fn page(seed: u8) -> [u8; PAGE_BYTES] {
        let mut p = [0u8; PAGE_BYTES];
        p.iter_mut().enumerate().for_each(|(i, b)| *b = (i as u8).wrapping_mul(7) ^ seed);
        p
    }

    #[test]
    fn mrtd_replays_the_loading_convention() {
        let (a, b, c) = (page(1), page(2), page(3));
        let mut ab = a.to_vec();
        ab.extend_from_slice(&b[..100]);
        let img = encode(&[(0x1000, 2, true, &ab), (0x8000, 1, false, &c), (0x0, 1, true, &[])]);
        let mut b_padded = [0u8; PAGE_BYTES];
        b_padded[..100].copy_from_slice(&b[..100]);
        let expected = measure_image([
            (0x1000, &a, true),
            (0x2000, &b_padded, true),
            (0x8000, &c, false),
            (0x0, &[0u8; PAGE_BYTES], true),
        ]);
        assert_eq!(Image::parse(&img).unwrap().mrtd(), expected);
        assert_eq!(Image::parse(&img).unwrap().regions().count(), 3);
    }

    #[test]
    fn flat_is_one_measured_region() {
        let a = page(5);
        let bytes = [&a[..], &[9u8; 10][..]].concat();
        let mut tail = [0u8; PAGE_BYTES];
        tail[..10].fill(9);
        assert_eq!(flat_mrtd(0x4000, &bytes).unwrap(), measure_image([(0x4000, &a, true), (0x5000, &tail, true)]));
        let img = encode(&[(0x4000, 2, true, &bytes)]);
        assert_eq!(Image::parse(&img).unwrap().mrtd(), flat_mrtd(0x4000, &bytes).unwrap());
        assert_eq!(flat_mrtd(0, &[]), Err(ImageError::BadFlatImage));
        assert_eq!(flat_mrtd(0x10, &[1]), Err(ImageError::BadFlatImage));
        assert_eq!(flat_mrtd(!0xfffu64, &[1; 5000]), Err(ImageError::BadFlatImage));
    }

    #[test]
    fn parse_rejects_each_error() {
        let good = encode(&[(0x1000, 1, true, &[1, 2, 3])]);
        assert_eq!(Image::parse(&[]), Err(ImageError::TruncatedHeader(0)));
        let mut b = good.clone();
        b[0] = 0;
        assert_eq!(Image::parse(&b), Err(ImageError::BadMagic));
        let mut b = good.clone();
        b[8] = 2;
        assert_eq!(Image::parse(&b), Err(ImageError::UnsupportedVersion(2)));
        let mut b = good.clone();
        b[11] = 1;
        assert_eq!(Image::parse(&b), Err(ImageError::NonZeroReserved { offset: 10 }));
        let mut b = good.clone();
        b[12] = 0;
        assert_eq!(Image::parse(&b), Err(ImageError::BadRegionCount(0)));
        let mut b = good.clone();
        b[12] = 2;
        assert_eq!(Image::parse(&b), Err(ImageError::TruncatedRegion { offset: 43 }));
        assert_eq!(Image::parse(&good[..30]), Err(ImageError::TruncatedRegion { offset: 16 }));
        assert_eq!(
            Image::parse(&encode(&[(0x1001, 1, true, &[])])),
            Err(ImageError::UnalignedGpa { offset: 16, gpa: 0x1001 })
        );
        assert_eq!(
            Image::parse(&encode(&[(0x1000, 0, true, &[])])),
            Err(ImageError::BadPageCount { offset: 16, pages: 0 })
        );
        assert_eq!(
            Image::parse(&encode(&[(!0xfffu64, 2, true, &[])])),
            Err(ImageError::BadPageCount { offset: 16, pages: 2 })
        );
        let mut b = good.clone();
        b[16 + 12] = 3;
        assert_eq!(Image::parse(&b), Err(ImageError::UnknownFlags { offset: 16, flags: 3 }));
        let mut b = good.clone();
        b[16 + 23] = 1;
        assert_eq!(Image::parse(&b), Err(ImageError::NonZeroReserved { offset: 36 }));
        let mut b = good.clone();
        b[16 + 16..16 + 20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(Image::parse(&b), Err(ImageError::BadLength { offset: 16, length: u32::MAX }));
        assert_eq!(
            Image::parse(&encode(&[(0, 1, true, &[0; PAGE_BYTES + 1])])),
            Err(ImageError::BadLength { offset: 16, length: 4097 })
        );
        assert_eq!(
            Image::parse(&encode(&[(0x1000, 2, true, &[]), (0x2000, 1, false, &[])])),
            Err(ImageError::Overlap { offset: 40 })
        );
        let mut b = good.clone();
        b.push(0);
        assert_eq!(Image::parse(&b), Err(ImageError::TrailingBytes { offset: 43 }));
        for e in [ImageError::BadMagic, ImageError::Overlap { offset: 1 }] {
            assert!(!e.to_string().is_empty());
        }
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200), patch in proptest::prelude::any::<bool>()) {
            let mut b = b;
            if patch && b.len() >= 16 {
                b[..8].copy_from_slice(&MAGIC);
                b[8..12].copy_from_slice(&[1, 0, 0, 0]);
            }
            if let Ok(img) = Image::parse(&b) {
                let _ = img.mrtd();
            }
        }
    }
}
