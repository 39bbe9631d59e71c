//! The platform secret blob: what `attest provision` writes and the firmware receives at boot
//! (over fw_cfg), from which the TSM derives its keys.
//!
//! ```text
//! 0    magic "SEAMSEC\0" (8)
//! 8    version u16 LE = 1
//! 10   reserved (6), zero
//! 16   platform secret (32): HKDF input of the attestation key and the emulated VCEK
//! 48   reported TCB (8): the SNP TCB_VERSION the VCEK certificate was issued for
//! 56   reserved (8), zero
//! 64   chip id (64): the SNP CHIP_ID the VCEK certificate names (hwID)
//! ```
//!
//! 128 bytes. The secret is the only private part; the TCB and chip id travel with it so that the
//! TSM puts into its SNP-format reports exactly the values the provisioned VCEK certificate
//! carries. The keys themselves are never in the blob: the TSM derives them
//! ([`crate::sign::derive_attestation_key`], [`crate::sign::derive_vcek_key`]), and the
//! provisioning tool runs the same derivation to certify the public halves.

use core::fmt;
use core::mem::{offset_of, size_of};

use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

/// First 8 bytes of a secret blob.
pub const MAGIC: [u8; 8] = *b"SEAMSEC\0";
/// The blob version this crate writes and reads.
pub const VERSION: u16 = 1;
/// Bytes of a blob.
pub const BLOB_BYTES: usize = 128;

/// The blob's layout.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct SecretBlob {
    /// [`MAGIC`].
    pub magic: [u8; 8],
    /// [`VERSION`] (little-endian u16).
    pub version: [u8; 2],
    /// Reserved, zero.
    pub reserved0: [u8; 6],
    /// The platform secret.
    pub secret: [u8; 32],
    /// SNP TCB_VERSION (Milan layout: boot loader, TEE, 4 reserved, SNP, microcode).
    pub reported_tcb: [u8; 8],
    /// Reserved, zero.
    pub reserved1: [u8; 8],
    /// SNP CHIP_ID.
    pub chip_id: [u8; 64],
}

const _: () = assert!(size_of::<SecretBlob>() == BLOB_BYTES);
const _: () = assert!(offset_of!(SecretBlob, version) == 8);
const _: () = assert!(offset_of!(SecretBlob, secret) == 16);
const _: () = assert!(offset_of!(SecretBlob, reported_tcb) == 48);
const _: () = assert!(offset_of!(SecretBlob, reserved1) == 56);
const _: () = assert!(offset_of!(SecretBlob, chip_id) == 64);

// The secret stays out of logs and panic messages.
impl fmt::Debug for SecretBlob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretBlob")
            .field("version", &u16::from_le_bytes(self.version))
            .field("secret", &"<redacted>")
            .field("reported_tcb", &self.reported_tcb)
            .finish_non_exhaustive()
    }
}

/// Why bytes are not a secret blob. Checked in this order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlobError {
    /// Not exactly [`BLOB_BYTES`] long.
    WrongLength(usize),
    /// The first 8 bytes are not [`MAGIC`].
    BadMagic,
    /// A version this crate does not read.
    UnsupportedVersion(u16),
    /// A reserved field is not zero.
    NonZeroReserved,
    /// The secret is all zero: no provisioning tool writes that, so the blob is not one.
    ZeroSecret,
}

impl fmt::Display for BlobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlobError::WrongLength(n) => write!(f, "platform secret blob must be {BLOB_BYTES} bytes, got {n}"),
            BlobError::BadMagic => f.write_str("bad platform secret magic, expected \"SEAMSEC\\0\""),
            BlobError::UnsupportedVersion(v) => {
                write!(f, "unsupported platform secret version {v} (this reader knows {VERSION})")
            }
            BlobError::NonZeroReserved => f.write_str("platform secret reserved field is not zero"),
            BlobError::ZeroSecret => f.write_str("platform secret is all zero"),
        }
    }
}

impl core::error::Error for BlobError {}

impl SecretBlob {
    /// A blob holding `secret`, `reported_tcb` and `chip_id`.
    pub fn new(secret: [u8; 32], reported_tcb: [u8; 8], chip_id: [u8; 64]) -> SecretBlob {
        let mut b = SecretBlob::new_zeroed();
        b.magic = MAGIC;
        b.version = VERSION.to_le_bytes();
        b.secret = secret;
        b.reported_tcb = reported_tcb;
        b.chip_id = chip_id;
        b
    }

    /// Copies a blob out of untrusted bytes and checks it.
    ///
    /// # Errors
    /// The first [`BlobError`] the bytes hit.
    pub fn read_from(bytes: &[u8]) -> Result<SecretBlob, BlobError> {
        let b = SecretBlob::read_from_bytes(bytes).map_err(|_| BlobError::WrongLength(bytes.len()))?;
        if b.magic != MAGIC {
            return Err(BlobError::BadMagic);
        }
        let version = u16::from_le_bytes(b.version);
        if version != VERSION {
            return Err(BlobError::UnsupportedVersion(version));
        }
        if b.reserved0 != [0; 6] || b.reserved1 != [0; 8] {
            return Err(BlobError::NonZeroReserved);
        }
        if b.secret == [0; 32] {
            return Err(BlobError::ZeroSecret);
        }
        Ok(b)
    }

    /// The blob as its bytes.
    pub fn to_bytes(&self) -> [u8; BLOB_BYTES] {
        let mut out = [0u8; BLOB_BYTES];
        out.copy_from_slice(self.as_bytes());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SecretBlob {
        SecretBlob::new([7; 32], [3, 0, 0, 0, 0, 0, 8, 115], [0xc1; 64])
    }

    #[test]
    fn round_trips_and_lands_at_documented_offsets() {
        let b = sample().to_bytes();
        assert_eq!(&b[..8], b"SEAMSEC\0");
        assert_eq!(&b[8..10], &[1, 0]);
        assert_eq!(&b[16..48], &[7; 32]);
        assert_eq!(&b[48..56], &[3, 0, 0, 0, 0, 0, 8, 115]);
        assert_eq!(&b[64..128], &[0xc1; 64]);
        assert_eq!(SecretBlob::read_from(&b), Ok(sample()));
    }

    #[test]
    fn read_from_rejects_each_error_in_order() {
        let good = sample().to_bytes();
        assert_eq!(SecretBlob::read_from(&[]), Err(BlobError::WrongLength(0)));
        assert_eq!(SecretBlob::read_from(&good[..127]), Err(BlobError::WrongLength(127)));
        let mut b = good;
        b[0] = b'X';
        assert_eq!(SecretBlob::read_from(&b), Err(BlobError::BadMagic));
        let mut b = good;
        b[8] = 2;
        assert_eq!(SecretBlob::read_from(&b), Err(BlobError::UnsupportedVersion(2)));
        let mut b = good;
        b[12] = 1;
        assert_eq!(SecretBlob::read_from(&b), Err(BlobError::NonZeroReserved));
        let mut b = good;
        b[60] = 1;
        assert_eq!(SecretBlob::read_from(&b), Err(BlobError::NonZeroReserved));
        let b = SecretBlob::new([0; 32], [0; 8], [0; 64]).to_bytes();
        assert_eq!(SecretBlob::read_from(&b), Err(BlobError::ZeroSecret));
    }

    #[test]
    fn debug_does_not_show_the_secret() {
        let s = format!("{:?}", sample());
        assert!(s.contains("redacted") && !s.contains("7, 7"));
    }
}
