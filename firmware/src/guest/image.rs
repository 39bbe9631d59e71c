//! The guest image the host agent loads into the TD (`attest::image` format, built at compile
//! time so the firmware needs no file system): one measured page holding the guest's manifest at
//! GPA 0, then unmeasured zero pages for its stack. `firmware guest-image FILE` (the host build)
//! writes the same bytes, so `attest measure FILE` recomputes the MRTD independently.

/// The guest's manifest: what the measured page says about the guest.
pub const MANIFEST: &[u8] = b"seamless demo guest 1\n\
role: TD of the device-assignment demo (firmware code acting through the guest ABI)\n\
device: NVMe function 00:03.0, BAR0 at GPA 0x40000000, CAP and VS read through MMIO_MAPPED leaves\n\
attestation: SEAMLESS.TDG.MR.ATTEST over the verifier's nonce\n";

/// GPA of the measured page.
pub const CODE_GPA: u64 = 0;
/// GPA and pages of the unmeasured stack region.
pub const STACK_GPA: u64 = 0x1000;
/// Pages of the stack region.
pub const STACK_PAGES: u32 = 3;

const HEADER: usize = 16;
const REGION: usize = 24;
/// Bytes of the image.
pub const IMAGE_BYTES: usize = HEADER + 2 * REGION + MANIFEST.len();

const fn put(out: &mut [u8; IMAGE_BYTES], at: usize, bytes: &[u8]) {
    let mut i = 0;
    while i < bytes.len() {
        out[at + i] = bytes[i];
        i += 1;
    }
}

const fn build() -> [u8; IMAGE_BYTES] {
    let mut out = [0u8; IMAGE_BYTES];
    put(&mut out, 0, b"SEAMIMG\0");
    put(&mut out, 8, &1u16.to_le_bytes());
    put(&mut out, 12, &2u32.to_le_bytes());
    // Region 0: the manifest, measured.
    let r = HEADER;
    put(&mut out, r, &CODE_GPA.to_le_bytes());
    put(&mut out, r + 8, &1u32.to_le_bytes());
    put(&mut out, r + 12, &1u32.to_le_bytes());
    put(&mut out, r + 16, &(MANIFEST.len() as u32).to_le_bytes());
    put(&mut out, r + REGION, MANIFEST);
    // Region 1: the stack, added but not measured, no content.
    let r = HEADER + REGION + MANIFEST.len();
    put(&mut out, r, &STACK_GPA.to_le_bytes());
    put(&mut out, r + 8, &STACK_PAGES.to_le_bytes());
    out
}

/// The image.
pub const IMAGE: [u8; IMAGE_BYTES] = build();

#[cfg(test)]
mod tests {
    use super::*;
    use attest::image::Image;

    #[test]
    fn the_image_parses_as_attest_reads_it() {
        let img = Image::parse(&IMAGE).unwrap();
        let regions: Vec<_> = img.regions().collect();
        assert_eq!(regions.len(), 2);
        assert_eq!((regions[0].gpa, regions[0].pages, regions[0].measured), (CODE_GPA, 1, true));
        assert_eq!(regions[0].content, MANIFEST);
        assert_eq!((regions[1].gpa, regions[1].pages, regions[1].measured), (STACK_GPA, STACK_PAGES, false));
    }

    #[test]
    fn the_mrtd_is_the_loading_conventions() {
        let mut b = attest::mrtd::MrtdBuilder::new();
        let mut page = [0u8; 4096];
        page[..MANIFEST.len()].copy_from_slice(MANIFEST);
        b.page_add(CODE_GPA);
        for (i, c) in page.chunks_exact(256).enumerate() {
            b.extend_chunk(CODE_GPA + i as u64 * 256, c.try_into().unwrap());
        }
        for i in 0..u64::from(STACK_PAGES) {
            b.page_add(STACK_GPA + i * 4096);
        }
        assert_eq!(Image::parse(&IMAGE).unwrap().mrtd(), b.finalize());
    }
}
