//! Device signatures as SPDM 1.2+ defines them (DSP0274 §15): the signed message is a 100-byte
//! prefix — `"dmtf-spdm-v1.N.*"` four times, zero padding, and a context string naming the
//! message — followed by the hash of the transcript; ECDSA P-384 signs its SHA-384 and the
//! signature travels as raw big-endian `r ‖ s`.

use p384::ecdsa::signature::Verifier;
use p384::ecdsa::{Signature, VerifyingKey};

/// Bytes of the combined prefix.
pub const PREFIX_BYTES: usize = 100;
/// Bytes of a P-384 signature (`r ‖ s`).
pub const SIGNATURE_BYTES: usize = 96;

/// Which message a signature covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Context {
    /// CHALLENGE_AUTH.
    ChallengeAuth,
    /// MEASUREMENTS.
    Measurements,
    /// KEY_EXCHANGE_RSP.
    KeyExchangeRsp,
}

impl Context {
    /// The context string.
    pub const fn text(self) -> &'static [u8] {
        match self {
            Context::ChallengeAuth => b"responder-challenge_auth signing",
            Context::Measurements => b"responder-measurements signing",
            Context::KeyExchangeRsp => b"responder-key_exchange_rsp signing",
        }
    }
}

/// Why a device signature is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SigError {
    /// Signatures before SPDM 1.2 have no defined prefix; the TSM does not accept them.
    Version(u8),
    /// `r` or `s` is zero or not below the group order.
    Malformed,
    /// The signature does not verify under the leaf key.
    Mismatch,
}

/// The 100-byte prefix for `version` (0x12, 0x13) and `context`.
pub fn prefix(version: u8, context: Context) -> Result<[u8; PREFIX_BYTES], SigError> {
    let minor = match version {
        0x12 => b'2',
        0x13 => b'3',
        other => return Err(SigError::Version(other)),
    };
    let mut p = [0u8; PREFIX_BYTES];
    for i in 0..4 {
        let chunk = &mut p[16 * i..16 * (i + 1)];
        chunk.copy_from_slice(b"dmtf-spdm-v1.2.*");
        chunk[13] = minor;
    }
    let text = context.text();
    p[PREFIX_BYTES - text.len()..].copy_from_slice(text);
    Ok(p)
}

/// Verifies a device signature over `transcript_hash` (SHA-384 of the transcript).
///
/// # Errors
/// [`SigError`] naming why.
pub fn verify(
    version: u8,
    context: Context,
    transcript_hash: &[u8; 48],
    key: &VerifyingKey,
    signature: &[u8; SIGNATURE_BYTES],
) -> Result<(), SigError> {
    let p = prefix(version, context)?;
    let mut message = [0u8; PREFIX_BYTES + 48];
    message[..PREFIX_BYTES].copy_from_slice(&p);
    message[PREFIX_BYTES..].copy_from_slice(transcript_hash);
    let sig = Signature::from_slice(signature).map_err(|_| SigError::Malformed)?;
    key.verify(&message, &sig).map_err(|_| SigError::Mismatch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use p384::ecdsa::signature::Signer;
    use p384::ecdsa::SigningKey;

    fn key() -> SigningKey {
        SigningKey::from_slice(&[7u8; 48]).unwrap()
    }

    fn sign(version: u8, context: Context, hash: &[u8; 48]) -> [u8; 96] {
        let mut m = [0u8; 148];
        m[..100].copy_from_slice(&prefix(version, context).unwrap());
        m[100..].copy_from_slice(hash);
        let s: Signature = key().sign(&m);
        s.to_bytes().into()
    }

    #[test]
    fn prefix_layout_matches_dsp0274() {
        let p = prefix(0x12, Context::Measurements).unwrap();
        assert_eq!(&p[..64], b"dmtf-spdm-v1.2.*dmtf-spdm-v1.2.*dmtf-spdm-v1.2.*dmtf-spdm-v1.2.*");
        assert_eq!(&p[64..70], &[0u8; 6], "30-byte context: 6 zero bytes");
        assert_eq!(&p[70..], b"responder-measurements signing");
        let p = prefix(0x13, Context::ChallengeAuth).unwrap();
        assert_eq!(&p[48..64], b"dmtf-spdm-v1.3.*");
        assert_eq!(&p[64..68], &[0u8; 4]);
        let p = prefix(0x12, Context::KeyExchangeRsp).unwrap();
        assert_eq!(&p[64..66], &[0u8; 2]);
        assert_eq!(prefix(0x11, Context::Measurements), Err(SigError::Version(0x11)));
    }

    #[test]
    fn a_signature_verifies_only_for_its_version_context_hash_and_key() {
        let vk = VerifyingKey::from(&key());
        let hash = [0x3Cu8; 48];
        let sig = sign(0x12, Context::Measurements, &hash);
        assert_eq!(verify(0x12, Context::Measurements, &hash, &vk, &sig), Ok(()));
        assert_eq!(verify(0x13, Context::Measurements, &hash, &vk, &sig), Err(SigError::Mismatch));
        assert_eq!(verify(0x12, Context::ChallengeAuth, &hash, &vk, &sig), Err(SigError::Mismatch));
        let mut other = hash;
        other[47] ^= 1;
        assert_eq!(verify(0x12, Context::Measurements, &other, &vk, &sig), Err(SigError::Mismatch));
        let stranger = VerifyingKey::from(&SigningKey::from_slice(&[9u8; 48]).unwrap());
        assert_eq!(verify(0x12, Context::Measurements, &hash, &stranger, &sig), Err(SigError::Mismatch));
        let mut bad = sig;
        bad[95] ^= 1;
        assert_eq!(verify(0x12, Context::Measurements, &hash, &vk, &bad), Err(SigError::Mismatch));
        assert_eq!(verify(0x12, Context::Measurements, &hash, &vk, &[0u8; 96]), Err(SigError::Malformed));
        assert_eq!(verify(0x12, Context::Measurements, &hash, &vk, &[0xFFu8; 96]), Err(SigError::Malformed));
    }
}
