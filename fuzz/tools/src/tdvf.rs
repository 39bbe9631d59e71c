//! TDVF images for the targets over OVMF's metadata (`attest_tdvf`, `tdvf_hob`).

use attest::tdvf::{METADATA_OFFSET_GUID, TABLE_FOOTER_GUID};

/// `descriptor` at offset 0 of an image that ends with OVMF's GUIDed table pointing at it, so
/// that whatever the fuzzer makes of the descriptor reaches the section checks.
pub fn framed(descriptor: &[u8]) -> Vec<u8> {
    let mut b = descriptor.to_vec();
    let total = b.len() + 22 + 2 + 16 + 32;
    b.extend_from_slice(&(total as u32).to_le_bytes());
    b.extend_from_slice(&22u16.to_le_bytes());
    b.extend_from_slice(&METADATA_OFFSET_GUID);
    b.extend_from_slice(&40u16.to_le_bytes());
    b.extend_from_slice(&TABLE_FOOTER_GUID);
    b.extend_from_slice(&[0u8; 32]);
    b
}
