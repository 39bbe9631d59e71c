//! The demo's drive image: a known content the launcher writes into the raw image QEMU's NVMe
//! controller serves, and the TD checks after reading it into private memory through the
//! IOMMU. Every 512-byte block names itself (`seamless LBA <n>`) and the rest is a pattern of its
//! number, so a block read from the wrong LBA, a torn read or a DMA that never landed (zeros)
//! all change the digest.

use sha2::{Digest, Sha384};

/// Bytes per logical block (QEMU's NVMe default).
pub const BLOCK_BYTES: usize = 512;
/// Blocks the demo image holds: 1 MiB.
pub const DEMO_BLOCKS: u64 = 2048;

/// The content of block `lba`.
pub fn block(lba: u64, out: &mut [u8; BLOCK_BYTES]) {
    for (i, b) in out.iter_mut().enumerate() {
        *b = (lba as u8).wrapping_mul(31).wrapping_add((i as u8).wrapping_mul(7)) ^ (lba >> 8) as u8;
    }
    let mut tag = [0u8; 32];
    let mut n = 0;
    for &c in b"seamless LBA " {
        tag[n] = c;
        n += 1;
    }
    let mut digits = [0u8; 20];
    let mut d = 0;
    let mut v = lba;
    loop {
        digits[d] = b'0' + (v % 10) as u8;
        d += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    for k in (0..d).rev() {
        tag[n] = digits[k];
        n += 1;
    }
    out[..n].copy_from_slice(&tag[..n]);
}

/// SHA-384 over blocks `first..first + count` of the demo content.
pub fn digest(first: u64, count: u64) -> [u8; 48] {
    let mut h = Sha384::new();
    let mut b = [0u8; BLOCK_BYTES];
    for lba in first..first + count {
        block(lba, &mut b);
        h.update(b);
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_name_themselves_and_differ() {
        let (mut a, mut b) = ([0u8; BLOCK_BYTES], [0u8; BLOCK_BYTES]);
        block(0, &mut a);
        block(1234, &mut b);
        assert!(a.starts_with(b"seamless LBA 0"));
        assert!(b.starts_with(b"seamless LBA 1234"));
        assert_ne!(a[100..], b[100..]);
        assert_ne!(digest(0, 8), digest(1, 8));
    }
}
