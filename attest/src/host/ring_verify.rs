//! The report signature checked with ring: the same check as [`crate::sign::verify`] (ECDSA P-384
//! over SHA-384 of the signed bytes, r ‖ s), with ring's implementation instead of p384's.

use ring::signature::{UnparsedPublicKey, ECDSA_P384_SHA384_FIXED};

use crate::report::Report;
use crate::sign::{SignatureError, VerifyingKey};

/// A P-384 public key prepared for ring.
#[derive(Debug, Clone)]
pub struct RingKey {
    sec1: Vec<u8>,
}

impl RingKey {
    /// The key, from p384's form.
    pub fn new(key: &VerifyingKey) -> RingKey {
        RingKey { sec1: key.to_sec1_point(false).as_bytes().to_vec() }
    }

    /// Checks `report`'s signature.
    ///
    /// # Errors
    /// [`SignatureError::Malformed`] if r or s is zero or not below the group order (the same
    /// split as p384's, so both implementations report the same failure),
    /// [`SignatureError::Mismatch`] if the signature does not verify.
    pub fn verify(&self, report: &Report) -> Result<(), SignatureError> {
        // ring folds "malformed" into "does not verify"; p384's scalar checks tell them apart.
        if p384::ecdsa::Signature::from_slice(&report.signature).is_err() {
            return Err(SignatureError::Malformed);
        }
        UnparsedPublicKey::new(&ECDSA_P384_SHA384_FIXED, &self.sec1)
            .verify(report.signed_bytes(), &report.signature)
            .map_err(|_| SignatureError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::sample;
    use crate::sign::{derive_attestation_key, sign, verify};

    #[test]
    fn ring_and_p384_agree() {
        let k = derive_attestation_key(&[1; 32], &[2; 48]);
        let mut r = sample();
        sign(&mut r, &k).unwrap();
        let rk = RingKey::new(k.verifying_key());
        assert_eq!(rk.verify(&r), Ok(()));
        let other = RingKey::new(derive_attestation_key(&[3; 32], &[2; 48]).verifying_key());
        assert_eq!(other.verify(&r), Err(SignatureError::Mismatch));
        for (byte, bit) in [(0usize, 0u8), (500, 3), (1103, 7), (1104, 1), (1199, 5)] {
            let mut t = r;
            let mut b = t.to_bytes();
            b[byte] ^= 1 << bit;
            t = zerocopy::FromBytes::read_from_bytes(&b[..]).unwrap();
            assert_eq!(rk.verify(&t).is_err(), verify(&t, k.verifying_key()).is_err());
            assert!(rk.verify(&t).is_err());
        }
        r.signature = [0; 96];
        assert_eq!(rk.verify(&r), Err(SignatureError::Malformed));
    }
}
