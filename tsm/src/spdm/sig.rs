//! Device signatures as SPDM 1.2+ defines them (DSP0274 §15): the signed message is a 100-byte
//! prefix — `"dmtf-spdm-v1.N.*"` four times, zero padding, and a context string naming the
//! message — followed by the hash of the transcript (in the negotiated hash). ECDSA signs the
//! negotiated hash of that message, as libspdm does (not the curve's customary hash: P-384 with
//! SHA-256 signs SHA-256 digests), and the signature travels as raw big-endian `r ‖ s`.

use p256::ecdsa::signature::hazmat::PrehashVerifier;

use crate::spdm::suite::{Asym, BaseHash, MAX_HASH};

/// Bytes of the combined prefix.
pub const PREFIX_BYTES: usize = 100;
/// Bytes of a P-384 signature (`r ‖ s`).
pub const SIGNATURE_BYTES: usize = 96;

/// A device's leaf public key, of one of the curves the TSM accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeafKey {
    /// ECDSA P-256.
    P256(p256::ecdsa::VerifyingKey),
    /// ECDSA P-384.
    P384(p384::ecdsa::VerifyingKey),
}

impl From<p384::ecdsa::VerifyingKey> for LeafKey {
    fn from(k: p384::ecdsa::VerifyingKey) -> Self {
        LeafKey::P384(k)
    }
}

impl From<p256::ecdsa::VerifyingKey> for LeafKey {
    fn from(k: p256::ecdsa::VerifyingKey) -> Self {
        LeafKey::P256(k)
    }
}

impl LeafKey {
    /// The signing algorithm this key is for.
    pub const fn asym(&self) -> Asym {
        match self {
            LeafKey::P256(_) => Asym::EcdsaP256,
            LeafKey::P384(_) => Asym::EcdsaP384,
        }
    }

    /// The key in a DER SubjectPublicKeyInfo, if it is a P-256 or P-384 point.
    pub fn from_spki(spki: &[u8]) -> Option<LeafKey> {
        use p384::pkcs8::DecodePublicKey;
        if let Ok(k) = p384::PublicKey::from_public_key_der(spki) {
            return Some(LeafKey::P384(k.into()));
        }
        p256::PublicKey::from_public_key_der(spki).ok().map(|k| LeafKey::P256(k.into()))
    }

    /// Verifies an ECDSA signature over the prehashed `digest` (`signature` raw `r ‖ s`, or DER
    /// when `der`). `Err(true)` = malformed, `Err(false)` = does not verify.
    pub(crate) fn verify_prehash(&self, digest: &[u8], signature: &[u8], der: bool) -> Result<(), bool> {
        match self {
            LeafKey::P256(k) => {
                let sig = if der {
                    p256::ecdsa::Signature::from_der(signature)
                } else {
                    p256::ecdsa::Signature::from_slice(signature)
                };
                let sig = sig.map_err(|_| true)?;
                k.verify_prehash(digest, &sig).map_err(|_| false)
            }
            LeafKey::P384(k) => {
                let sig = if der {
                    p384::ecdsa::Signature::from_der(signature)
                } else {
                    p384::ecdsa::Signature::from_slice(signature)
                };
                let sig = sig.map_err(|_| true)?;
                k.verify_prehash(digest, &sig).map_err(|_| false)
            }
        }
    }
}

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

/// Verifies a device signature over `transcript_hash` (the negotiated hash of the transcript;
/// its size names the hash): the key signs `hash(prefix ‖ transcript_hash)`.
///
/// # Errors
/// [`SigError`] naming why.
pub fn verify(
    version: u8,
    context: Context,
    transcript_hash: &[u8],
    key: &LeafKey,
    signature: &[u8],
) -> Result<(), SigError> {
    let p = prefix(version, context)?;
    let hash = match transcript_hash.len() {
        32 => BaseHash::Sha256,
        48 => BaseHash::Sha384,
        _ => return Err(SigError::Malformed),
    };
    if signature.len() != key.asym().signature_bytes() {
        return Err(SigError::Malformed);
    }
    let mut message = [0u8; PREFIX_BYTES + MAX_HASH];
    message[..PREFIX_BYTES].copy_from_slice(&p);
    message[PREFIX_BYTES..PREFIX_BYTES + transcript_hash.len()].copy_from_slice(transcript_hash);
    let digest = hash.digest(&message[..PREFIX_BYTES + transcript_hash.len()]);
    key.verify_prehash(&digest, signature, false).map_err(|malformed| {
        if malformed {
            SigError::Malformed
        } else {
            SigError::Mismatch
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use p384::ecdsa::signature::Signer;
    use p384::ecdsa::{Signature, SigningKey, VerifyingKey};

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
        let vk = LeafKey::P384(VerifyingKey::from(&key()));
        let hash = [0x3Cu8; 48];
        let sig = sign(0x12, Context::Measurements, &hash);
        assert_eq!(verify(0x12, Context::Measurements, &hash, &vk, &sig), Ok(()));
        assert_eq!(verify(0x13, Context::Measurements, &hash, &vk, &sig), Err(SigError::Mismatch));
        assert_eq!(verify(0x12, Context::ChallengeAuth, &hash, &vk, &sig), Err(SigError::Mismatch));
        let mut other = hash;
        other[47] ^= 1;
        assert_eq!(verify(0x12, Context::Measurements, &other, &vk, &sig), Err(SigError::Mismatch));
        let stranger = LeafKey::P384(VerifyingKey::from(&SigningKey::from_slice(&[9u8; 48]).unwrap()));
        assert_eq!(verify(0x12, Context::Measurements, &hash, &stranger, &sig), Err(SigError::Mismatch));
        let mut bad = sig;
        bad[95] ^= 1;
        assert_eq!(verify(0x12, Context::Measurements, &hash, &vk, &bad), Err(SigError::Mismatch));
        assert_eq!(verify(0x12, Context::Measurements, &hash, &vk, &[0u8; 96]), Err(SigError::Malformed));
        assert_eq!(verify(0x12, Context::Measurements, &hash, &vk, &[0xFFu8; 96]), Err(SigError::Malformed));
    }

    #[test]
    fn p256_signatures_over_sha256_and_p384_over_sha256_verify() {
        use p256::ecdsa::signature::hazmat::PrehashSigner;
        let k256 = p256::ecdsa::SigningKey::from_slice(&[5u8; 32]).unwrap();
        let vk = LeafKey::P256(*k256.verifying_key());
        let hash = [0x5Au8; 32];
        let mut m = [0u8; 132];
        m[..100].copy_from_slice(&prefix(0x13, Context::KeyExchangeRsp).unwrap());
        m[100..].copy_from_slice(&hash);
        let s: p256::ecdsa::Signature = k256.sign_prehash(&BaseHash::Sha256.digest(&m)).unwrap();
        let raw: [u8; 64] = s.to_bytes().into();
        assert_eq!(verify(0x13, Context::KeyExchangeRsp, &hash, &vk, &raw), Ok(()));
        assert_eq!(verify(0x13, Context::Measurements, &hash, &vk, &raw), Err(SigError::Mismatch));
        assert_eq!(
            verify(0x13, Context::KeyExchangeRsp, &hash, &vk, &[0u8; 96]),
            Err(SigError::Malformed),
            "P-384 size"
        );
        assert_eq!(verify(0x13, Context::KeyExchangeRsp, &[0x5A; 40], &vk, &raw), Err(SigError::Malformed));
        // P-384 with SHA-256 as the base hash: the curve signs a SHA-256 digest.
        let k384 = key();
        let s: Signature = k384.sign_prehash(&BaseHash::Sha256.digest(&m)).unwrap();
        let raw: [u8; 96] = s.to_bytes().into();
        let vk = LeafKey::P384(*k384.verifying_key());
        assert_eq!(verify(0x13, Context::KeyExchangeRsp, &hash, &vk, &raw), Ok(()));
    }
}
