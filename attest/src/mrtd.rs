//! The MRTD build measurement, as the TDX module computes it.
//!
//! MRTD is one running SHA-384 over a sequence of 128-byte blocks, started at TDH.MNG.INIT and
//! finalized at TDH.MR.FINALIZE (Intel TDX Module ABI spec, TDH.MEM.PAGE.ADD and TDH.MR.EXTEND):
//!
//! * TDH.MEM.PAGE.ADD adds one block: `"MEM.PAGE.ADD"` at offset 0, zeros to 16, the page's GPA
//!   as a little-endian `u64` at 16, zeros to 128. The page content is *not* measured here.
//! * TDH.MR.EXTEND adds one block: `"MR.EXTEND"` at 0, zeros to 16, the 256-byte-aligned chunk's
//!   GPA at 16, zeros to 128; then the chunk's 256 bytes of content (two more blocks).
//!
//! The TSM and a host tool both drive [`MrtdBuilder`], so the same code computes both values.

use sha2::{Digest, Sha384};

/// Bytes of one measurement block.
pub const BLOCK_BYTES: usize = 128;
/// Bytes of content measured by one TDH.MR.EXTEND.
pub const CHUNK_BYTES: usize = 256;
/// Bytes of a page added by TDH.MEM.PAGE.ADD.
pub const PAGE_BYTES: usize = 4096;
/// TDH.MR.EXTEND calls needed to measure one page's content.
pub const CHUNKS_PER_PAGE: usize = PAGE_BYTES / CHUNK_BYTES;
/// Bytes of an MRTD (SHA-384).
pub const MRTD_BYTES: usize = 48;

/// Tag of the block TDH.MEM.PAGE.ADD adds.
pub const PAGE_ADD_TAG: &[u8] = b"MEM.PAGE.ADD";
/// Tag of the block TDH.MR.EXTEND adds.
pub const EXTEND_TAG: &[u8] = b"MR.EXTEND";
/// Offset of the GPA inside a block.
const GPA_OFFSET: usize = 16;

/// The 128-byte header block for `tag` and `gpa`.
fn header_block(tag: &[u8], gpa: u64) -> [u8; BLOCK_BYTES] {
    let mut block = [0u8; BLOCK_BYTES];
    block[..tag.len()].copy_from_slice(tag);
    block[GPA_OFFSET..GPA_OFFSET + 8].copy_from_slice(&gpa.to_le_bytes());
    block
}

/// A running MRTD: one SHA-384 fed by each build-time call, in call order.
#[derive(Clone, Debug, Default)]
pub struct MrtdBuilder {
    hash: Sha384,
}

impl MrtdBuilder {
    /// An empty measurement (the state after TDH.MNG.INIT).
    pub fn new() -> MrtdBuilder {
        MrtdBuilder { hash: Sha384::new() }
    }

    /// Accounts for TDH.MEM.PAGE.ADD of the page at `gpa`.
    pub fn page_add(&mut self, gpa: u64) {
        self.hash.update(header_block(PAGE_ADD_TAG, gpa));
    }

    /// Accounts for TDH.MR.EXTEND of the 256-byte chunk at `gpa` holding `chunk`.
    pub fn extend_chunk(&mut self, gpa: u64, chunk: &[u8; CHUNK_BYTES]) {
        self.hash.update(header_block(EXTEND_TAG, gpa));
        self.hash.update(chunk);
    }

    /// The final MRTD (TDH.MR.FINALIZE).
    pub fn finalize(self) -> [u8; MRTD_BYTES] {
        self.hash.finalize().into()
    }
}

/// The MRTD of an image loaded the way TDX/KVM loads one: for each page in the given order,
/// TDH.MEM.PAGE.ADD at its GPA, then (if its flag is set) TDH.MR.EXTEND of its 16 chunks in
/// ascending address order.
///
/// Each item is `(gpa, content, extend)`; `gpa` is the page's 4 KiB-aligned guest address.
pub fn measure_image<'a>(pages: impl IntoIterator<Item = (u64, &'a [u8; PAGE_BYTES], bool)>) -> [u8; MRTD_BYTES] {
    let mut b = MrtdBuilder::new();
    for (gpa, content, extend) in pages {
        b.page_add(gpa);
        if extend {
            let mut chunk_gpa = gpa;
            for chunk in content.chunks_exact(CHUNK_BYTES) {
                let mut c = [0u8; CHUNK_BYTES];
                c.copy_from_slice(chunk);
                b.extend_chunk(chunk_gpa, &c);
                chunk_gpa = chunk_gpa.wrapping_add(CHUNK_BYTES as u64);
            }
        }
    }
    b.finalize()
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;

    fn page(seed: u8) -> [u8; PAGE_BYTES] {
        let mut p = [0u8; PAGE_BYTES];
        for (i, b) in p.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(31).wrapping_add(seed);
        }
        p
    }

    /// Builds the byte stream by hand, independently of `header_block`, and hashes it in one go.
    #[test]
    fn known_answer_matches_hand_built_stream() {
        let p0 = page(1);
        let p1 = page(2);
        let mut stream = Vec::new();
        fn push_header(stream: &mut Vec<u8>, tag: &str, gpa: u64) {
            let mut blk = [0u8; 128];
            blk[..tag.len()].copy_from_slice(tag.as_bytes());
            blk[16..24].copy_from_slice(&gpa.to_le_bytes());
            stream.extend_from_slice(&blk);
        }
        // Page 0 at 0x1000, measured; page 1 at 0x5000, not measured.
        push_header(&mut stream, "MEM.PAGE.ADD", 0x1000);
        for i in 0..16u64 {
            push_header(&mut stream, "MR.EXTEND", 0x1000 + 256 * i);
            stream.extend_from_slice(&p0[256 * i as usize..256 * (i as usize + 1)]);
        }
        push_header(&mut stream, "MEM.PAGE.ADD", 0x5000);
        assert_eq!(stream.len(), 128 * (1 + 16 * 3 + 1));
        let expected: [u8; 48] = Sha384::digest(&stream).into();

        let got = measure_image([(0x1000, &p0, true), (0x5000, &p1, false)]);
        assert_eq!(got, expected);

        let mut b = MrtdBuilder::new();
        b.page_add(0x1000);
        for i in 0..16 {
            let mut c = [0u8; 256];
            c.copy_from_slice(&p0[256 * i..256 * (i + 1)]);
            b.extend_chunk(0x1000 + 256 * i as u64, &c);
        }
        b.page_add(0x5000);
        assert_eq!(b.finalize(), expected);
    }

    #[test]
    fn empty_measurement_is_hash_of_nothing() {
        let expected: [u8; 48] = Sha384::digest([]).into();
        assert_eq!(MrtdBuilder::new().finalize(), expected);
    }

    #[test]
    fn different_gpa_gives_different_mrtd() {
        let p = page(7);
        assert_ne!(measure_image([(0x1000, &p, true)]), measure_image([(0x2000, &p, true)]));
        assert_ne!(measure_image([(0x1000, &p, false)]), measure_image([(0x2000, &p, false)]));
    }

    #[test]
    fn content_counts_only_when_extended() {
        let (a, b) = (page(1), page(2));
        assert_eq!(measure_image([(0x1000, &a, false)]), measure_image([(0x1000, &b, false)]));
        assert_ne!(measure_image([(0x1000, &a, true)]), measure_image([(0x1000, &b, true)]));
        assert_ne!(measure_image([(0x1000, &a, true)]), measure_image([(0x1000, &a, false)]));
    }

    #[test]
    fn order_matters() {
        let (a, b) = (page(1), page(2));
        assert_ne!(
            measure_image([(0x1000, &a, true), (0x2000, &b, true)]),
            measure_image([(0x2000, &b, true), (0x1000, &a, true)])
        );
        let mut x = MrtdBuilder::new();
        x.page_add(0x1000);
        x.page_add(0x2000);
        let mut y = MrtdBuilder::new();
        y.page_add(0x2000);
        y.page_add(0x1000);
        assert_ne!(x.finalize(), y.finalize());
    }

    #[test]
    fn clone_forks_the_running_hash() {
        let mut a = MrtdBuilder::new();
        a.page_add(0x1000);
        let mut b = a.clone();
        b.page_add(0x2000);
        a.page_add(0x2000);
        assert_eq!(a.finalize(), b.finalize());
    }
}
