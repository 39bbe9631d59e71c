//! The SPDM certificate-chain format (DSP0274 §10.6.1, the content of a certificate slot):
//! `Length u16 | reserved u16 | RootHash[H] | DER certificates, root first, leaf last`.
//!
//! The TSM checks that the chain is well formed (every certificate a complete DER SEQUENCE, the
//! root hash matching the first certificate, the length matching the bytes), that it chains (each
//! certificate after the root is signed by the key of the one before it: ECDSA P-384 with SHA-384
//! or SHA-256), and takes the leaf's P-384 public key, which must sign the device's
//! CHALLENGE_AUTH, MEASUREMENTS and KEY_EXCHANGE_RSP. Whether the root is one to trust (and its
//! self-signature, validity dates, extensions) is the verifier's judgement, not the TSM's: the
//! TSM records the chain and its SHA-384 for the attestation report.

use core::fmt;

use der::asn1::AnyRef;
use der::{Decode, Encode, Header, Reader, SliceReader, Tag, Tagged};
use p384::ecdsa::VerifyingKey;
use p384::pkcs8::DecodePublicKey;
use sha2::{Digest, Sha384};

/// Bytes of the chain header (Length, reserved, RootHash for SHA-384).
pub const HEADER_BYTES: usize = 4 + 48;
/// Certificates a chain may hold.
pub const MAX_CERTS: usize = 8;

/// Why a certificate chain is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChainError {
    /// Fewer bytes than the header.
    TooShort {
        /// Bytes received.
        len: usize,
    },
    /// The Length field does not match the chain's size.
    LengthMismatch {
        /// Length field.
        header: usize,
        /// Bytes received.
        actual: usize,
    },
    /// The reserved field is not zero.
    Reserved,
    /// No certificate after the header.
    Empty,
    /// More than [`MAX_CERTS`] certificates.
    TooManyCerts,
    /// Certificate `index` is not one complete DER SEQUENCE.
    Der {
        /// Position in the chain, 0 = root.
        index: usize,
    },
    /// RootHash is not the SHA-384 of the first certificate.
    RootHashMismatch,
    /// The leaf's key is not an ECDSA P-384 key, or the leaf's fields do not parse.
    LeafKey,
    /// Certificate `index` (an issuer) carries no ECDSA P-384 key to check the next one with.
    IssuerKey {
        /// Position in the chain, 0 = root.
        index: usize,
    },
    /// Certificate `index` is signed with an algorithm other than ECDSA with SHA-384 or SHA-256,
    /// or its signature fields do not parse.
    SignatureAlgorithm {
        /// Position in the chain.
        index: usize,
    },
    /// Certificate `index` is not signed by the key of the certificate before it: the chain does
    /// not chain.
    Signature {
        /// Position in the chain.
        index: usize,
    },
}

impl fmt::Display for ChainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChainError::TooShort { len } => write!(f, "certificate chain of {len} bytes is shorter than its header"),
            ChainError::LengthMismatch { header, actual } => {
                write!(f, "certificate chain says {header} bytes but has {actual}")
            }
            ChainError::Reserved => f.write_str("certificate chain reserved field is not zero"),
            ChainError::Empty => f.write_str("certificate chain holds no certificate"),
            ChainError::TooManyCerts => write!(f, "certificate chain holds more than {MAX_CERTS} certificates"),
            ChainError::Der { index } => write!(f, "certificate {index} is not a complete DER SEQUENCE"),
            ChainError::RootHashMismatch => f.write_str("RootHash is not the hash of the root certificate"),
            ChainError::LeafKey => f.write_str("the leaf certificate does not carry an ECDSA P-384 key"),
            ChainError::IssuerKey { index } => write!(f, "certificate {index} carries no ECDSA P-384 issuer key"),
            ChainError::SignatureAlgorithm { index } => {
                write!(f, "certificate {index} is not signed with ECDSA and SHA-384 or SHA-256")
            }
            ChainError::Signature { index } => {
                write!(f, "certificate {index} is not signed by the certificate before it")
            }
        }
    }
}

/// A checked chain.
#[derive(Clone, Debug)]
pub struct CertChain<'a> {
    certs: [&'a [u8]; MAX_CERTS],
    count: usize,
    leaf_key: VerifyingKey,
    digest: [u8; 48],
}

impl<'a> CertChain<'a> {
    /// Checks a chain in the SPDM format.
    ///
    /// # Errors
    /// The first [`ChainError`] found, in the order of the fields.
    pub fn parse(chain: &'a [u8]) -> Result<CertChain<'a>, ChainError> {
        CertChain::parse_inner(chain, true)
    }

    /// A chain [`CertChain::parse`] accepted before, read again without checking the signatures
    /// once more (the bytes are the TSM's own copy and have not changed).
    pub(crate) fn reread(chain: &'a [u8]) -> Result<CertChain<'a>, ChainError> {
        CertChain::parse_inner(chain, false)
    }

    fn parse_inner(chain: &'a [u8], check_links: bool) -> Result<CertChain<'a>, ChainError> {
        if chain.len() < HEADER_BYTES {
            return Err(ChainError::TooShort { len: chain.len() });
        }
        let header = usize::from(u16::from_le_bytes([chain[0], chain[1]]));
        if header != chain.len() {
            return Err(ChainError::LengthMismatch { header, actual: chain.len() });
        }
        if chain[2] != 0 || chain[3] != 0 {
            return Err(ChainError::Reserved);
        }
        let mut certs: [&[u8]; MAX_CERTS] = [&[]; MAX_CERTS];
        let mut count = 0;
        let mut rest = &chain[HEADER_BYTES..];
        if rest.is_empty() {
            return Err(ChainError::Empty);
        }
        while !rest.is_empty() {
            if count == MAX_CERTS {
                return Err(ChainError::TooManyCerts);
            }
            let len = sequence_len(rest).ok_or(ChainError::Der { index: count })?;
            certs[count] = &rest[..len];
            rest = &rest[len..];
            count += 1;
        }
        let root_hash: [u8; 48] = Sha384::digest(certs[0]).into();
        if root_hash[..] != chain[4..HEADER_BYTES] {
            return Err(ChainError::RootHashMismatch);
        }
        let leaf_key = leaf_key(certs[count - 1]).ok_or(ChainError::LeafKey)?;
        for index in (1..count).filter(|_| check_links) {
            check_link(certs[index - 1], certs[index], index)?;
        }
        Ok(CertChain { certs, count, leaf_key, digest: Sha384::digest(chain).into() })
    }

    /// The certificates, root first.
    pub fn certs(&self) -> &[&'a [u8]] {
        &self.certs[..self.count]
    }

    /// The leaf's public key.
    pub fn leaf_key(&self) -> &VerifyingKey {
        &self.leaf_key
    }

    /// SHA-384 of the whole chain (header included): what CHALLENGE_AUTH's CertChainHash and
    /// the attestation report carry.
    pub fn digest(&self) -> &[u8; 48] {
        &self.digest
    }
}

/// Length of the DER SEQUENCE at the start of `bytes` (header included), if it is one and is
/// complete.
fn sequence_len(bytes: &[u8]) -> Option<usize> {
    let mut r = SliceReader::new(bytes).ok()?;
    let header = Header::decode(&mut r).ok()?;
    if header.tag() != Tag::Sequence {
        return None;
    }
    let body = usize::try_from(header.length()).ok()?;
    let total = usize::try_from(header.encoded_len().ok()?).ok()?.checked_add(body)?;
    (total <= bytes.len()).then_some(total)
}

/// ecdsa-with-SHA384 (1.2.840.10045.4.3.3) and ecdsa-with-SHA256 (1.2.840.10045.4.3.2), as DER
/// OBJECT IDENTIFIER contents.
const ECDSA_SHA384: &[u8] = &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x04, 0x03, 0x03];
const ECDSA_SHA256: &[u8] = &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x04, 0x03, 0x02];

/// The parts of a certificate a signature check needs: the encoded tbsCertificate, the signature
/// algorithm's OID, and the signature (DER ECDSA-Sig-Value).
fn signed_parts(cert: &[u8]) -> der::Result<(&[u8], &[u8], &[u8])> {
    let mut r = SliceReader::new(cert)?;
    let parts = r.sequence(|c: &mut SliceReader<'_>| -> der::Result<(&[u8], &[u8], &[u8])> {
        let tbs = c.tlv_bytes()?;
        let oid = c.sequence(|a: &mut SliceReader<'_>| -> der::Result<&[u8]> {
            let oid = AnyRef::decode(a)?;
            if oid.tag() != Tag::ObjectIdentifier {
                return Err(Tag::ObjectIdentifier.value_error().into());
            }
            // ECDSA algorithm identifiers carry no parameters.
            if !a.is_finished() {
                return Err(Tag::Sequence.value_error().into());
            }
            Ok(oid.value())
        })?;
        let bits = AnyRef::decode(c)?;
        if bits.tag() != Tag::BitString || bits.value().first() != Some(&0) {
            return Err(Tag::BitString.value_error().into());
        }
        Ok((tbs, oid, &bits.value()[1..]))
    })?;
    r.finish()?;
    Ok(parts)
}

/// Checks that `child` (at `index`) is signed by `issuer`'s key.
fn check_link(issuer: &[u8], child: &[u8], index: usize) -> Result<(), ChainError> {
    use p384::ecdsa::signature::hazmat::PrehashVerifier;
    use p384::ecdsa::Signature;
    let key = leaf_key(issuer).ok_or(ChainError::IssuerKey { index: index - 1 })?;
    let (tbs, oid, signature) = signed_parts(child).map_err(|_| ChainError::SignatureAlgorithm { index })?;
    let signature = Signature::from_der(signature).map_err(|_| ChainError::SignatureAlgorithm { index })?;
    let ok = match oid {
        ECDSA_SHA384 => key.verify_prehash(&Sha384::digest(tbs), &signature).is_ok(),
        ECDSA_SHA256 => key.verify_prehash(&sha2::Sha256::digest(tbs), &signature).is_ok(),
        _ => return Err(ChainError::SignatureAlgorithm { index }),
    };
    if ok {
        Ok(())
    } else {
        Err(ChainError::Signature { index })
    }
}

/// The P-384 key in a certificate: Certificate → tbsCertificate → subjectPublicKeyInfo.
fn leaf_key(cert: &[u8]) -> Option<VerifyingKey> {
    let spki = spki_of(cert).ok()?;
    let mut buf = [0u8; 256];
    let der_spki = spki.encode_to_slice(&mut buf).ok()?;
    p384::PublicKey::from_public_key_der(der_spki).ok().map(VerifyingKey::from)
}

fn spki_of(cert: &[u8]) -> der::Result<AnyRef<'_>> {
    let mut r = SliceReader::new(cert)?;
    let spki = r.sequence(|c: &mut SliceReader<'_>| -> der::Result<AnyRef<'_>> {
        let spki = c.sequence(|tbs: &mut SliceReader<'_>| -> der::Result<AnyRef<'_>> {
            // [0] EXPLICIT version, serialNumber, signature, issuer, validity, subject.
            let version = Tag::ContextSpecific { constructed: true, number: der::TagNumber(0) };
            if Tag::peek(tbs)? == version {
                AnyRef::decode(tbs)?;
            }
            for _ in 0..5 {
                AnyRef::decode(tbs)?;
            }
            let spki = AnyRef::decode(tbs)?;
            // issuerUniqueID, subjectUniqueID, extensions: not needed.
            while !tbs.is_finished() {
                AnyRef::decode(tbs)?;
            }
            Ok(spki)
        })?;
        // signatureAlgorithm, signatureValue.
        AnyRef::decode(c)?;
        AnyRef::decode(c)?;
        Ok(spki)
    })?;
    r.finish()?;
    Ok(spki)
}

#[cfg(test)]
mod tests {
    use super::*;

    extern crate std;
    use std::vec::Vec;

    const ROOT: &[u8] = include_bytes!("../../tests/fixtures/root.der");
    const LEAF: &[u8] = include_bytes!("../../tests/fixtures/leaf.der");
    const LEAF_PUB: &[u8] = include_bytes!("../../tests/fixtures/leaf.pub.der");

    fn chain(certs: &[&[u8]]) -> Vec<u8> {
        let body: Vec<u8> = certs.concat();
        let mut out = Vec::new();
        out.extend_from_slice(&((HEADER_BYTES + body.len()) as u16).to_le_bytes());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&Sha384::digest(certs[0]));
        out.extend_from_slice(&body);
        out
    }

    #[test]
    fn a_good_chain_yields_its_leaf_key_and_digest() {
        let bytes = chain(&[ROOT, LEAF]);
        let c = CertChain::parse(&bytes).unwrap();
        assert_eq!(c.certs(), &[ROOT, LEAF]);
        let want = p384::PublicKey::from_public_key_der(LEAF_PUB).unwrap();
        assert_eq!(c.leaf_key(), &VerifyingKey::from(want));
        assert_eq!(c.digest()[..], Sha384::digest(&bytes)[..]);
        // A chain of the root alone is well formed; its leaf is the root.
        assert!(CertChain::parse(&chain(&[ROOT])).is_ok());
    }

    #[test]
    fn each_malformation_has_its_error() {
        let good = chain(&[ROOT, LEAF]);
        assert_eq!(CertChain::parse(&good[..40]).unwrap_err(), ChainError::TooShort { len: 40 });
        let short = &good[..good.len() - 1];
        assert_eq!(
            CertChain::parse(short).unwrap_err(),
            ChainError::LengthMismatch { header: good.len(), actual: good.len() - 1 }
        );
        let mut b = good.clone();
        b[2] = 1;
        assert_eq!(CertChain::parse(&b).unwrap_err(), ChainError::Reserved);
        let mut b = good.clone();
        b[10] ^= 1;
        assert_eq!(CertChain::parse(&b).unwrap_err(), ChainError::RootHashMismatch);
        let mut header_only = chain(&[ROOT])[..HEADER_BYTES].to_vec();
        header_only[0..2].copy_from_slice(&(HEADER_BYTES as u16).to_le_bytes());
        assert_eq!(CertChain::parse(&header_only).unwrap_err(), ChainError::Empty);
        // The leaf cut short: its DER length runs past the chain.
        let cut = chain(&[ROOT, &LEAF[..LEAF.len() - 10]]);
        assert_eq!(CertChain::parse(&cut).unwrap_err(), ChainError::Der { index: 1 });
        let not_seq = chain(&[ROOT, &[0x02, 0x01, 0x00]]);
        assert_eq!(CertChain::parse(&not_seq).unwrap_err(), ChainError::Der { index: 1 });
        let nine: Vec<&[u8]> = std::vec![ROOT; 9];
        assert_eq!(CertChain::parse(&chain(&nine)).unwrap_err(), ChainError::TooManyCerts);
        // A leaf that is a SEQUENCE but no certificate.
        let fake = chain(&[ROOT, &[0x30, 0x03, 0x02, 0x01, 0x00]]);
        assert_eq!(CertChain::parse(&fake).unwrap_err(), ChainError::LeafKey);
    }

    #[test]
    fn a_chain_that_does_not_chain_is_refused() {
        // The leaf signs itself only as far as its key goes: not signed by the leaf before it.
        assert_eq!(CertChain::parse(&chain(&[ROOT, LEAF, LEAF])).unwrap_err(), ChainError::Signature { index: 2 });
        // The root is not signed by the leaf.
        assert_eq!(CertChain::parse(&chain(&[LEAF, ROOT])).unwrap_err(), ChainError::Signature { index: 1 });
        // One bit of the leaf's signature.
        let mut leaf = LEAF.to_vec();
        let last = leaf.len() - 1;
        leaf[last] ^= 1;
        assert_eq!(CertChain::parse(&chain(&[ROOT, &leaf])).unwrap_err(), ChainError::Signature { index: 1 });
        // A leaf signed with an algorithm the TSM does not know (1.2.840.10045.5.3.3).
        let mut leaf = LEAF.to_vec();
        let at = leaf.windows(ECDSA_SHA384.len()).rposition(|w| w == ECDSA_SHA384).unwrap();
        leaf[at + 6] = 0x05;
        assert_eq!(CertChain::parse(&chain(&[ROOT, &leaf])).unwrap_err(), ChainError::SignatureAlgorithm { index: 1 });
    }

    #[test]
    fn no_byte_string_panics_the_parser() {
        let good = chain(&[ROOT, LEAF]);
        // Every truncation and every single-byte corruption of the leaf's region.
        for n in 0..good.len() {
            let _ = CertChain::parse(&good[..n]);
        }
        for i in HEADER_BYTES..good.len() {
            let mut b = good.clone();
            b[i] ^= 0xFF;
            let _ = CertChain::parse(&b);
        }
    }
}
