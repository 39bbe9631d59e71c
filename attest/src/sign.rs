//! The report signature: ECDSA P-384 over SHA-384 of the signed bytes, and the derivation of the
//! TSM's attestation key.
//!
//! The signature is the fixed-width r || s form (48 bytes each, big-endian; IEEE P1363), the form
//! SPDM and SNP use, not DER. Signing is deterministic (RFC 6979), so the TSM needs no random
//! numbers to sign.
//!
//! This module builds for `x86_64-unknown-none` (RustCrypto `p384` and `sha2`, no heap): the TSM
//! signs with it and host tools verify with it.

use core::fmt;

use hkdf::Hkdf;
use p384::ecdsa::signature::hazmat::{PrehashSigner, PrehashVerifier};
use p384::ecdsa::Signature;
use sha2::Sha384;

pub use p384::ecdsa::{SigningKey, VerifyingKey};

use crate::report::{Report, DIGEST_BYTES, SIGNATURE_BYTES};

/// HKDF-SHA-384 salt for the attestation key: names the purpose, so the same platform secret fed
/// to another derivation cannot yield this key.
pub const KEY_SALT: &[u8] = b"seamless attestation key salt v1";
/// HKDF-SHA-384 info prefix; the info is this, then the TSM measurement (48 bytes), then a
/// little-endian u32 counter.
pub const KEY_INFO: &[u8] = b"seamless/attest/report-signing-key/p384/v1";

/// Why a signature did not sign or verify.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignatureError {
    /// r or s is zero or not below the group order: no signing key produces these bytes.
    Malformed,
    /// A well-formed signature, but not by this key over these bytes.
    Mismatch,
    /// The signer failed (it does not for a valid key and a 48-byte digest).
    SigningFailed,
}

impl fmt::Display for SignatureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SignatureError::Malformed => "signature malformed: r or s is zero or not below the P-384 group order",
            SignatureError::Mismatch => "signature does not verify under the given key",
            SignatureError::SigningFailed => "signing failed",
        })
    }
}

impl core::error::Error for SignatureError {}

/// Signs `report` in place: writes the signature over SHA-384 of its signed bytes.
///
/// # Errors
/// [`SignatureError::SigningFailed`] if the signer fails; the report's signature is then unchanged.
pub fn sign(report: &mut Report, key: &SigningKey) -> Result<(), SignatureError> {
    let digest = report.digest();
    let signature: Signature = key.sign_prehash(&digest).map_err(|_| SignatureError::SigningFailed)?;
    let bytes: [u8; SIGNATURE_BYTES] = signature.to_bytes().into();
    report.signature = bytes;
    Ok(())
}

/// Checks `report`'s signature under `key`.
///
/// # Errors
/// [`SignatureError::Malformed`] if the signature bytes are no ECDSA signature at all,
/// [`SignatureError::Mismatch`] if they are one but do not verify.
pub fn verify(report: &Report, key: &VerifyingKey) -> Result<(), SignatureError> {
    let signature = Signature::from_slice(&report.signature).map_err(|_| SignatureError::Malformed)?;
    key.verify_prehash(&report.digest(), &signature).map_err(|_| SignatureError::Mismatch)
}

/// Derives the TSM's attestation key from the platform secret provisioned at boot and the TSM's
/// own measurement, so that another TSM image on the same platform gets another key.
///
/// HKDF-SHA-384 with salt [`KEY_SALT`], input key material `platform_secret`, info
/// [`KEY_INFO`] || `tsm_measurement` || counter (u32 little-endian, from 0), 48 bytes of output
/// read as a big-endian scalar. An output of zero or at least the group order is no key; the
/// counter then moves on. That happens with probability about 2^-190 per try, so in practice the
/// first try is the key; the loop has no exit but success, and no panic path.
pub fn derive_attestation_key(platform_secret: &[u8; 32], tsm_measurement: &[u8; DIGEST_BYTES]) -> SigningKey {
    derive_key(KEY_INFO, platform_secret, tsm_measurement)
}

/// HKDF-SHA-384 info prefix of the emulated VCEK, the key that signs the SNP-format export
/// ([`crate::snp`]). Same derivation as [`derive_attestation_key`] under another label, so the two
/// keys are independent and neither reveals the other.
pub const VCEK_KEY_INFO: &[u8] = b"seamless/attest/snp-vcek/p384/v1";

/// Derives the emulated VCEK from the platform secret and the TSM measurement: the derivation of
/// [`derive_attestation_key`] with info prefix [`VCEK_KEY_INFO`]. As AMD's VCEK depends on the
/// chip and the firmware TCB, this one depends on the platform and the TSM image.
pub fn derive_vcek_key(platform_secret: &[u8; 32], tsm_measurement: &[u8; DIGEST_BYTES]) -> SigningKey {
    derive_key(VCEK_KEY_INFO, platform_secret, tsm_measurement)
}

fn derive_key(label: &[u8], platform_secret: &[u8; 32], tsm_measurement: &[u8; DIGEST_BYTES]) -> SigningKey {
    let hkdf = Hkdf::<Sha384>::new(Some(KEY_SALT), platform_secret);
    let mut counter: u32 = 0;
    loop {
        let mut okm = [0u8; DIGEST_BYTES];
        let expanded = hkdf.expand_multi_info(&[label, tsm_measurement, &counter.to_le_bytes()], &mut okm);
        if expanded.is_ok() {
            if let Ok(key) = SigningKey::from_bytes(&okm.into()) {
                okm.fill(0);
                return key;
            }
        }
        okm.fill(0);
        counter = counter.wrapping_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::sample;
    use crate::report::SIGNED;
    use zerocopy::FromBytes;

    fn key(n: u8) -> SigningKey {
        derive_attestation_key(&[n; 32], &[0x5e; 48])
    }

    #[test]
    fn sign_verify_round_trip() {
        let k = key(1);
        let mut r = sample();
        sign(&mut r, &k).unwrap();
        assert_eq!(verify(&r, k.verifying_key()), Ok(()));
        // Deterministic: the same key and bytes give the same signature.
        let mut again = sample();
        sign(&mut again, &k).unwrap();
        assert_eq!(again.signature, r.signature);
        // It survives the trip through bytes.
        let bytes = r.to_bytes();
        let parsed = Report::parse(&bytes).unwrap();
        assert_eq!(verify(parsed, k.verifying_key()), Ok(()));
    }

    #[test]
    fn verify_rejects_another_key() {
        let mut r = sample();
        sign(&mut r, &key(1)).unwrap();
        assert_eq!(verify(&r, key(2).verifying_key()), Err(SignatureError::Mismatch));
    }

    #[test]
    fn verify_rejects_malformed_signatures() {
        let k = key(1);
        let mut r = sample();
        r.signature = [0; 96];
        assert_eq!(verify(&r, k.verifying_key()), Err(SignatureError::Malformed));
        r.signature = [0xff; 96];
        assert_eq!(verify(&r, k.verifying_key()), Err(SignatureError::Malformed));
    }

    /// Every single-bit flip of the signed region, and of the signature itself, is rejected. Each
    /// flip is checked with a full ECDSA verification: 1200 * 8 = 9600 of them (p384 is built
    /// with opt-level 3 in the dev profile; see the workspace Cargo.toml).
    #[test]
    fn every_single_bit_flip_is_rejected() {
        let k = key(3);
        let vk = *k.verifying_key();
        let mut r = sample();
        sign(&mut r, &k).unwrap();
        let good = r.to_bytes();
        let digest = r.digest();
        let mut flipped_signed = 0;
        for byte in 0..good.len() {
            for bit in 0..8 {
                let mut b = good;
                b[byte] ^= 1 << bit;
                // The copy skips format checks: a flip may break the format, and the signature
                // must still catch it on its own.
                let t = Report::read_from_bytes(&b).unwrap();
                if SIGNED.contains(&byte) {
                    assert_ne!(t.digest(), digest, "byte {byte} bit {bit}");
                    flipped_signed += 1;
                }
                assert!(verify(&t, &vk).is_err(), "flip of byte {byte} bit {bit} verified");
            }
        }
        assert_eq!(flipped_signed, 1104 * 8);
    }

    #[test]
    fn derived_key_depends_on_secret_and_measurement() {
        let a = derive_attestation_key(&[1; 32], &[0x5e; 48]);
        assert_eq!(a, derive_attestation_key(&[1; 32], &[0x5e; 48]));
        assert_ne!(a, derive_attestation_key(&[2; 32], &[0x5e; 48]));
        assert_ne!(a, derive_attestation_key(&[1; 32], &[0x5f; 48]));
    }

    #[test]
    fn vcek_and_attestation_key_differ() {
        let (s, m) = ([1u8; 32], [0x5e; 48]);
        assert_ne!(derive_vcek_key(&s, &m), derive_attestation_key(&s, &m));
        assert_eq!(derive_vcek_key(&s, &m), derive_vcek_key(&s, &m));
        assert_ne!(derive_vcek_key(&s, &m), derive_vcek_key(&[2; 32], &m));
    }

    #[test]
    fn derived_key_is_hkdf_output_on_first_try() {
        let secret = [9u8; 32];
        let m = [0x42u8; 48];
        let mut okm = [0u8; 48];
        let hkdf = Hkdf::<Sha384>::new(Some(KEY_SALT), &secret);
        let mut info = [0u8; 42 + 48 + 4];
        info[..42].copy_from_slice(KEY_INFO);
        info[42..90].copy_from_slice(&m);
        hkdf.expand(&info, &mut okm).unwrap();
        assert_eq!(KEY_INFO.len(), 42);
        assert_eq!(derive_attestation_key(&secret, &m).to_bytes().as_slice(), &okm);
    }
}
