//! The SPDM certificate-chain format (DSP0274 §10.6.1, the content of a certificate slot):
//! `Length u16 | reserved u16 | RootHash[H] | DER certificates, root first, leaf last`.
//!
//! The TSM checks that the chain is well formed (every certificate a complete DER SEQUENCE, the
//! root hash matching the first certificate, the length matching the bytes) and validates it as a
//! certification path (RFC 5280 §6.1, the parts that apply to an SPDM chain, DSP0274's
//! certificate requirements), certificate by certificate, root first:
//!
//! 1. it is an X.509 v3 certificate whose two signature algorithm fields agree, ECDSA with
//!    SHA-384 or SHA-256;
//! 2. its validity is a period (notBefore ≤ notAfter) that has not ended before
//!    [`VALIDITY_FLOOR`]: the TSM has no trusted clock, so it refuses only what has expired
//!    whatever the time is now; whether every certificate is valid *now* is the verifier's
//!    check, at verification time;
//! 3. no extension appears twice, and none it does not understand is critical (it understands
//!    basicConstraints, keyUsage and extKeyUsage, whose purposes it does not restrict);
//! 4. an issuer (every certificate but the last) is a CA (basicConstraints cA TRUE) whose
//!    keyUsage asserts keyCertSign (the root, the trust anchor, may carry no keyUsage at all,
//!    RFC 5280 §6.1.1 d) and whose pathLenConstraint, if any, allows the CA
//!    certificates below it; the leaf is no CA (basicConstraints absent or cA FALSE) and its
//!    keyUsage asserts digitalSignature, the use SPDM makes of it;
//! 5. its issuer name is its issuer's subject name (the root's is its own), byte for byte;
//! 6. it is signed by its issuer's P-256 or P-384 key (the root by its own).
//!
//! The leaf's public key (P-256 or P-384, the curve ALGORITHMS selected) must then sign the device's CHALLENGE_AUTH, MEASUREMENTS and
//! KEY_EXCHANGE_RSP. Whether the root is one to trust is the verifier's judgement, not the
//! TSM's: the TSM records the chain and its SHA-384 for the attestation report, and the verifier
//! (`attest`) applies the same rules, plus validity at its own time and the root's pinning;
//! `attest/tests/chain_rules.rs` holds both to the same verdicts over a corpus of chains.

use core::fmt;

use der::{Decode, Encode, Header, SliceReader, Tag};
use sha2::{Digest, Sha384};

use crate::spdm::sig::LeafKey;
use crate::spdm::suite::BaseHash;
use crate::spdm::x509::{Fields, DIGITAL_SIGNATURE, KEY_CERT_SIGN};

/// Bytes of the chain header (Length, reserved, RootHash) for SHA-384; with SHA-256 the
/// RootHash takes 32 bytes.
pub const HEADER_BYTES: usize = 4 + 48;
/// Certificates a chain may hold.
pub const MAX_CERTS: usize = 8;
/// 2026-01-01T00:00:00Z, Unix seconds: a time the TSM knows has passed without a clock (it was
/// written then). A certificate whose notAfter is earlier has expired whatever the time is now.
pub const VALIDITY_FLOOR: u64 = 1_767_225_600;

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
    /// Certificate `index` is a DER SEQUENCE but not an X.509 certificate of RFC 5280's shape.
    Malformed {
        /// Position in the chain, 0 = root.
        index: usize,
    },
    /// Certificate `index` is not an X.509 v3 certificate (DSP0274 requires v3).
    Version {
        /// Position in the chain.
        index: usize,
    },
    /// Certificate `index`'s validity ends before it begins, or before [`VALIDITY_FLOOR`].
    Validity {
        /// Position in the chain.
        index: usize,
    },
    /// Certificate `index` carries a critical extension the TSM does not understand (RFC 5280
    /// §4.2), or one extension twice.
    CriticalExtension {
        /// Position in the chain.
        index: usize,
    },
    /// Certificate `index` issues the next one but is not a CA: basicConstraints absent or cA
    /// FALSE (an end-entity certificate cannot issue certificates).
    NotCa {
        /// Position in the chain.
        index: usize,
    },
    /// Certificate `index`'s pathLenConstraint allows fewer CA certificates below it than the
    /// chain holds.
    PathLength {
        /// Position in the chain.
        index: usize,
    },
    /// The leaf (at `index`) is a CA certificate.
    LeafIsCa {
        /// Position in the chain.
        index: usize,
    },
    /// Certificate `index`'s keyUsage is absent or lacks its role's bit: keyCertSign for an
    /// issuer, digitalSignature for the leaf.
    KeyUsage {
        /// Position in the chain.
        index: usize,
    },
    /// Certificate `index`'s issuer name is not its issuer's subject name (the root's own).
    IssuerName {
        /// Position in the chain.
        index: usize,
    },
    /// The leaf's key is not an ECDSA P-384 key.
    LeafKey,
    /// Certificate `index` (an issuer) carries no ECDSA P-384 key to check the next one with.
    IssuerKey {
        /// Position in the chain, 0 = root.
        index: usize,
    },
    /// Certificate `index` is signed with an algorithm other than ECDSA with SHA-384 or SHA-256,
    /// its two algorithm fields differ, or its signature does not parse.
    SignatureAlgorithm {
        /// Position in the chain.
        index: usize,
    },
    /// Certificate `index` is not signed by the key of the certificate before it (the root by
    /// its own key): the chain does not chain.
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
            ChainError::Malformed { index } => write!(f, "certificate {index} is not an X.509 certificate"),
            ChainError::Version { index } => write!(f, "certificate {index} is not an X.509 v3 certificate"),
            ChainError::Validity { index } => {
                write!(f, "certificate {index}'s validity ends before it begins or has ended (before 2026)")
            }
            ChainError::CriticalExtension { index } => {
                write!(f, "certificate {index} carries an unknown critical extension or one extension twice")
            }
            ChainError::NotCa { index } => {
                write!(f, "certificate {index} issues a certificate but is not a CA (basicConstraints)")
            }
            ChainError::PathLength { index } => {
                write!(f, "certificate {index}'s pathLenConstraint allows fewer CAs than the chain holds")
            }
            ChainError::LeafIsCa { index } => write!(f, "the leaf certificate {index} is a CA certificate"),
            ChainError::KeyUsage { index } => {
                write!(f, "certificate {index}'s keyUsage lacks keyCertSign (issuer) or digitalSignature (leaf)")
            }
            ChainError::IssuerName { index } => {
                write!(f, "certificate {index}'s issuer name is not its issuer's subject name")
            }
            ChainError::LeafKey => f.write_str("the leaf certificate does not carry an ECDSA P-384 key"),
            ChainError::IssuerKey { index } => {
                write!(f, "certificate {index} carries no ECDSA P-256 or P-384 issuer key")
            }
            ChainError::SignatureAlgorithm { index } => {
                write!(f, "certificate {index} is not signed with ECDSA and SHA-384 or SHA-256")
            }
            ChainError::Signature { index } => {
                write!(f, "certificate {index} is not signed by its issuer (the root by itself)")
            }
        }
    }
}

/// A checked chain.
#[derive(Clone, Debug)]
pub struct CertChain<'a> {
    certs: [&'a [u8]; MAX_CERTS],
    count: usize,
    leaf_key: LeafKey,
    root_hash: BaseHash,
    bytes: &'a [u8],
    digest: [u8; 48],
}

impl<'a> CertChain<'a> {
    /// Checks a chain in the SPDM format whose RootHash is a SHA-384.
    ///
    /// # Errors
    /// The first [`ChainError`] found, in the order of the fields.
    pub fn parse(chain: &'a [u8]) -> Result<CertChain<'a>, ChainError> {
        CertChain::parse_inner(chain, BaseHash::Sha384, true)
    }

    /// Checks a chain in the SPDM format whose RootHash is in the negotiated `hash`.
    ///
    /// # Errors
    /// The first [`ChainError`] found, in the order of the fields.
    pub fn parse_for(chain: &'a [u8], hash: BaseHash) -> Result<CertChain<'a>, ChainError> {
        CertChain::parse_inner(chain, hash, true)
    }

    /// A chain [`CertChain::parse_for`] accepted before, read again without checking the
    /// signatures once more (the bytes are the TSM's own copy and have not changed).
    pub(crate) fn reread(chain: &'a [u8], hash: BaseHash) -> Result<CertChain<'a>, ChainError> {
        CertChain::parse_inner(chain, hash, false)
    }

    fn parse_inner(chain: &'a [u8], hash: BaseHash, check_links: bool) -> Result<CertChain<'a>, ChainError> {
        let header_bytes = 4 + hash.bytes();
        if chain.len() < header_bytes {
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
        let mut rest = &chain[header_bytes..];
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
        if hash.digest(certs[0])[..] != chain[4..header_bytes] {
            return Err(ChainError::RootHashMismatch);
        }
        let mut issuer: Option<Fields<'a>> = None;
        for (index, cert) in certs[..count].iter().enumerate() {
            let f = Fields::parse(cert).map_err(|_| ChainError::Malformed { index })?;
            check_certificate(&f, index, count)?;
            let by = issuer.unwrap_or(f);
            if f.issuer != by.subject {
                return Err(ChainError::IssuerName { index });
            }
            if check_links {
                check_signature(&by, &f, index)?;
            }
            issuer = Some(f);
        }
        let leaf_key = leaf_key(certs[count - 1]).ok_or(ChainError::LeafKey)?;
        Ok(CertChain { certs, count, leaf_key, root_hash: hash, bytes: chain, digest: Sha384::digest(chain).into() })
    }

    /// The certificates, root first.
    pub fn certs(&self) -> &[&'a [u8]] {
        &self.certs[..self.count]
    }

    /// The leaf's public key.
    pub fn leaf_key(&self) -> &LeafKey {
        &self.leaf_key
    }

    /// SHA-384 of the whole chain (header included): what the attestation report binds,
    /// whatever hash the connection negotiated.
    pub fn digest(&self) -> &[u8; 48] {
        &self.digest
    }

    /// The whole chain in the hash its RootHash uses (the negotiated one): what DIGESTS,
    /// CHALLENGE_AUTH's CertChainHash and the session transcript carry.
    pub fn hash(&self) -> crate::spdm::suite::Secret {
        self.root_hash.digest(self.bytes)
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
/// An ECDSA AlgorithmIdentifier is its OID alone (RFC 5758 §3.2: parameters absent).
const ECDSA_ALGORITHM_LEN: usize = 2 + 2 + 8;

/// The rules of one certificate at `index` of a chain of `count`, in the order the module
/// documentation gives (1 to 4); names and signatures need the issuer too.
fn check_certificate(f: &Fields<'_>, index: usize, count: usize) -> Result<(), ChainError> {
    if f.version != 2 {
        return Err(ChainError::Version { index });
    }
    let known = f.algorithm_oid == ECDSA_SHA384 || f.algorithm_oid == ECDSA_SHA256;
    if !known || f.algorithm.len() != ECDSA_ALGORITHM_LEN || f.tbs_algorithm != f.algorithm {
        return Err(ChainError::SignatureAlgorithm { index });
    }
    if f.not_before > f.not_after || f.not_after < VALIDITY_FLOOR {
        return Err(ChainError::Validity { index });
    }
    let ext = &f.extensions;
    if ext.unknown_critical || ext.duplicate {
        return Err(ChainError::CriticalExtension { index });
    }
    let ca = ext.basic.is_some_and(|b| b.ca);
    if index + 1 < count {
        if !ca {
            return Err(ChainError::NotCa { index });
        }
        // The root is the trust anchor, whose extensions path validation takes as given (RFC 5280
        // §6.1.1 d): without keyUsage it is accepted, as DMTF libspdm's sample roots have none;
        // a keyUsage it does carry must allow certificate signing (§6.1.4 n).
        let anchor_unrestricted = index == 0 && ext.key_usage.is_none();
        if !ext.asserts(KEY_CERT_SIGN) && !anchor_unrestricted {
            return Err(ChainError::KeyUsage { index });
        }
        // The CA certificates below this one: every certificate after it but the leaf.
        let below = count - 2 - index;
        if ext.basic.and_then(|b| b.path_len).is_some_and(|n| usize::from(n) < below) {
            return Err(ChainError::PathLength { index });
        }
    } else {
        if ca {
            return Err(ChainError::LeafIsCa { index });
        }
        if !ext.asserts(DIGITAL_SIGNATURE) {
            return Err(ChainError::KeyUsage { index });
        }
    }
    Ok(())
}

/// Checks that `child` (at `index`) is signed by `issuer`'s key.
fn check_signature(issuer: &Fields<'_>, child: &Fields<'_>, index: usize) -> Result<(), ChainError> {
    let key = LeafKey::from_spki(issuer.spki).ok_or(ChainError::IssuerKey { index: index.saturating_sub(1) })?;
    let digest = match child.algorithm_oid {
        ECDSA_SHA384 => BaseHash::Sha384.digest(child.tbs),
        ECDSA_SHA256 => BaseHash::Sha256.digest(child.tbs),
        _ => return Err(ChainError::SignatureAlgorithm { index }),
    };
    match key.verify_prehash(&digest, child.signature, true) {
        Ok(()) => Ok(()),
        Err(true) => Err(ChainError::SignatureAlgorithm { index }),
        Err(false) => Err(ChainError::Signature { index }),
    }
}

/// The P-256 or P-384 key in a certificate: Certificate → tbsCertificate →
/// subjectPublicKeyInfo.
fn leaf_key(cert: &[u8]) -> Option<LeafKey> {
    LeafKey::from_spki(Fields::parse(cert).ok()?.spki)
}

#[cfg(test)]
mod tests {
    use super::*;
    use p384::pkcs8::DecodePublicKey;

    extern crate std;
    use std::vec::Vec;

    const ROOT: &[u8] = include_bytes!("../../tests/fixtures/root.der");
    const CA: &[u8] = include_bytes!("../../tests/fixtures/ca.der");
    const LEAF: &[u8] = include_bytes!("../../tests/fixtures/leaf.der");
    const LEAF_PUB: &[u8] = include_bytes!("../../tests/fixtures/leaf.pub.der");
    const IMPOSTOR: &[u8] = include_bytes!("../../tests/fixtures/impostor.der");

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
        let bytes = chain(&[ROOT, CA, LEAF]);
        let c = CertChain::parse(&bytes).unwrap();
        assert_eq!(c.certs(), &[ROOT, CA, LEAF]);
        let want = p384::PublicKey::from_public_key_der(LEAF_PUB).unwrap();
        assert_eq!(c.leaf_key(), &LeafKey::P384(want.into()));
        assert_eq!(c.digest()[..], Sha384::digest(&bytes)[..]);
        assert_eq!(c.hash()[..], Sha384::digest(&bytes)[..]);
    }

    #[test]
    fn a_sha256_root_hash_is_read_when_sha256_was_negotiated() {
        let body: Vec<u8> = [ROOT, CA, LEAF].concat();
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&((4 + 32 + body.len()) as u16).to_le_bytes());
        bytes.extend_from_slice(&[0, 0]);
        bytes.extend_from_slice(&sha2::Sha256::digest(ROOT));
        bytes.extend_from_slice(&body);
        let c = CertChain::parse_for(&bytes, BaseHash::Sha256).unwrap();
        assert_eq!(c.hash()[..], sha2::Sha256::digest(&bytes)[..]);
        assert_eq!(c.digest()[..], Sha384::digest(&bytes)[..], "the report binds SHA-384 whatever the suite");
        assert!(CertChain::parse(&bytes).is_err(), "a SHA-256 RootHash is no SHA-384 one");
    }

    #[test]
    fn an_end_entity_certificate_cannot_issue_a_device_certificate() {
        // root -> CA -> device leaf (CA:FALSE, digitalSignature only) -> impostor signed with the
        // leaf's key: every signature verifies, but the leaf is no CA.
        let bytes = chain(&[ROOT, CA, LEAF, IMPOSTOR]);
        assert_eq!(CertChain::parse(&bytes).unwrap_err(), ChainError::NotCa { index: 2 });
        // A CA used as the leaf, and the root alone (a CA too): the leaf's rules refuse them.
        assert_eq!(CertChain::parse(&chain(&[ROOT, CA])).unwrap_err(), ChainError::LeafIsCa { index: 1 });
        assert_eq!(CertChain::parse(&chain(&[ROOT])).unwrap_err(), ChainError::LeafIsCa { index: 0 });
    }

    #[test]
    fn each_malformation_has_its_error() {
        let good = chain(&[ROOT, CA, LEAF]);
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
        let cut = chain(&[ROOT, CA, &LEAF[..LEAF.len() - 10]]);
        assert_eq!(CertChain::parse(&cut).unwrap_err(), ChainError::Der { index: 2 });
        let not_seq = chain(&[ROOT, &[0x02, 0x01, 0x00]]);
        assert_eq!(CertChain::parse(&not_seq).unwrap_err(), ChainError::Der { index: 1 });
        let nine: Vec<&[u8]> = std::vec![ROOT; 9];
        assert_eq!(CertChain::parse(&chain(&nine)).unwrap_err(), ChainError::TooManyCerts);
        // A leaf that is a SEQUENCE but no certificate.
        let fake = chain(&[ROOT, &[0x30, 0x03, 0x02, 0x01, 0x00]]);
        assert_eq!(CertChain::parse(&fake).unwrap_err(), ChainError::Malformed { index: 1 });
    }

    #[test]
    fn a_chain_that_does_not_chain_is_refused() {
        // The leaf where the CA should be: its issuer is the CA, not the root.
        assert_eq!(CertChain::parse(&chain(&[ROOT, LEAF])).unwrap_err(), ChainError::IssuerName { index: 1 });
        // The root is not signed by anyone but itself: a CA first is not self-issued.
        assert_eq!(CertChain::parse(&chain(&[CA, LEAF])).unwrap_err(), ChainError::IssuerName { index: 0 });
        // One bit of the leaf's signature.
        let mut leaf = LEAF.to_vec();
        let last = leaf.len() - 1;
        leaf[last] ^= 1;
        assert_eq!(CertChain::parse(&chain(&[ROOT, CA, &leaf])).unwrap_err(), ChainError::Signature { index: 2 });
        // A leaf whose two algorithm fields disagree: tbsCertificate.signature names an
        // algorithm the TSM does not know (1.2.840.10045.5.3.3), then signatureAlgorithm does.
        let mut leaf = LEAF.to_vec();
        let at = leaf.windows(ECDSA_SHA384.len()).position(|w| w == ECDSA_SHA384).unwrap();
        leaf[at + 6] = 0x05;
        assert_eq!(
            CertChain::parse(&chain(&[ROOT, CA, &leaf])).unwrap_err(),
            ChainError::SignatureAlgorithm { index: 2 }
        );
        let mut leaf = LEAF.to_vec();
        let at = leaf.windows(ECDSA_SHA384.len()).rposition(|w| w == ECDSA_SHA384).unwrap();
        leaf[at + 6] = 0x05;
        assert_eq!(
            CertChain::parse(&chain(&[ROOT, CA, &leaf])).unwrap_err(),
            ChainError::SignatureAlgorithm { index: 2 }
        );
    }

    #[test]
    fn no_byte_string_panics_the_parser() {
        let good = chain(&[ROOT, CA, LEAF]);
        // Every truncation and every single-byte corruption.
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
