//! Certification path validation of a device's SPDM chain (RFC 5280 §6.1, the parts that apply
//! to SPDM chains, DSP0274's certificate requirements): the same rules the TSM's requester
//! applies (`tsm/src/spdm/chain.rs`), over `x509-cert`'s decoding, plus validity at the
//! verifier's own time, which the TSM, without a trusted clock, cannot judge.
//!
//! Certificate by certificate, root first: an X.509 v3 certificate whose two signature algorithm
//! fields agree (ECDSA with SHA-384 or SHA-256); a validity period (notBefore ≤ notAfter); no
//! extension twice and no critical one other than basicConstraints, keyUsage and extKeyUsage; an issuer (every
//! certificate but the last) is a CA with keyCertSign (a root without keyUsage passes: the trust
//! anchor's extensions are inputs, RFC 5280 §6.1.1 d) whose pathLenConstraint allows the CAs
//! below it, the leaf is no CA and has digitalSignature; its issuer name is its issuer's subject
//! (the root's its own); it is signed by its issuer's P-256 or P-384 key (the root by its own).
//! Then the leaf's key is P-256 or P-384, and at use, now lies inside every certificate's
//! validity.
//!
//! Why not `rustls-webpki`: it takes the root as a bare trust anchor (its own extensions and
//! self-signature unexamined), ignores keyUsage, which DSP0274 asks of the leaf and RFC 5280 of
//! issuers, and accepts a verdict only at a time, leaving no part the TSM could mirror. The rules
//! are few; the parsing, where the risk lies, is `x509-cert`'s.

use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

use ring::signature::{
    UnparsedPublicKey, ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA384_ASN1, ECDSA_P384_SHA256_ASN1, ECDSA_P384_SHA384_ASN1,
};
use x509_cert::der::asn1::ObjectIdentifier;
use x509_cert::der::{Decode, Encode};
use x509_cert::ext::pkix::{BasicConstraints, KeyUsage};
use x509_cert::{Certificate, Version};

use crate::host::x509;

/// ecdsa-with-SHA256.
const ECDSA_WITH_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
/// id-ce-basicConstraints.
const BASIC_CONSTRAINTS: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.19");
/// id-ce-keyUsage.
const KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.15");
/// id-ce-extKeyUsage: understood (it may be critical, as in DMTF libspdm's sample chains); no
/// purpose is required of it, as the TSM requires none.
const EXTENDED_KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.37");

/// A rule certificate `index` (0 = root) breaks; the names are the TSM's `ChainError`'s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PathFault {
    /// Not an X.509 certificate, or an extension this module reads does not decode.
    Malformed { index: usize },
    /// Not X.509 v3.
    Version { index: usize },
    /// Not ECDSA with SHA-384 or SHA-256, or the two algorithm fields differ.
    SignatureAlgorithm { index: usize },
    /// notBefore after notAfter, or now outside the period.
    Validity { index: usize },
    /// An unknown critical extension, or an extension twice.
    CriticalExtension { index: usize },
    /// Issues the next certificate but is no CA.
    NotCa { index: usize },
    /// pathLenConstraint allows fewer CAs below than the chain holds.
    PathLength { index: usize },
    /// The leaf is a CA.
    LeafIsCa { index: usize },
    /// keyUsage absent or without keyCertSign (issuer) or digitalSignature (leaf).
    KeyUsage { index: usize },
    /// The issuer name is not the issuer's subject (the root's own).
    IssuerName { index: usize },
    /// The issuer of `index + 1` (the root: of itself) has no P-256 or P-384 key.
    IssuerKey { index: usize },
    /// Not signed by its issuer's key.
    Signature { index: usize },
    /// The leaf's key is neither P-256 nor P-384.
    LeafKey,
}

impl fmt::Display for PathFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            PathFault::Malformed { index } => write!(f, "certificate {index} is not an X.509 certificate"),
            PathFault::Version { index } => write!(f, "certificate {index} is not X.509 v3"),
            PathFault::SignatureAlgorithm { index } => {
                write!(f, "certificate {index} is not signed with ECDSA and SHA-384 or SHA-256")
            }
            PathFault::Validity { index } => write!(f, "certificate {index} is not valid (now, or at all)"),
            PathFault::CriticalExtension { index } => {
                write!(f, "certificate {index} has an unknown critical extension or one extension twice")
            }
            PathFault::NotCa { index } => write!(f, "certificate {index} issues a certificate but is not a CA"),
            PathFault::PathLength { index } => write!(f, "certificate {index}'s pathLenConstraint is exceeded"),
            PathFault::LeafIsCa { index } => write!(f, "the leaf certificate {index} is a CA"),
            PathFault::KeyUsage { index } => {
                write!(f, "certificate {index}'s keyUsage lacks keyCertSign (issuer) or digitalSignature (leaf)")
            }
            PathFault::IssuerName { index } => write!(f, "certificate {index}'s issuer is not its issuer's subject"),
            PathFault::IssuerKey { index } => write!(f, "certificate {index} carries no P-256 or P-384 issuer key"),
            PathFault::Signature { index } => write!(f, "certificate {index} is not signed by its issuer"),
            PathFault::LeafKey => f.write_str("the leaf carries neither a P-256 nor a P-384 key"),
        }
    }
}

/// A chain that passed every time-independent rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidPath {
    /// The leaf's SEC1 key.
    pub leaf_key: Vec<u8>,
    /// Its curve.
    pub leaf_curve: x509::Curve,
    /// Each certificate's validity period, Unix time.
    pub validity: Vec<(Duration, Duration)>,
}

impl ValidPath {
    /// The first certificate not valid at Unix time `now`.
    ///
    /// # Errors
    /// [`PathFault::Validity`] naming it.
    pub fn valid_at(&self, now: Duration) -> Result<(), PathFault> {
        match self.validity.iter().position(|&(from, to)| now < from || now > to) {
            Some(index) => Err(PathFault::Validity { index }),
            None => Ok(()),
        }
    }

    /// The intersection of the validity periods.
    pub fn window(&self) -> (Duration, Duration) {
        self.validity.iter().fold((Duration::ZERO, Duration::MAX), |(a, b), &(f, t)| (a.max(f), b.min(t)))
    }
}

/// What the rules read from one certificate's extensions.
#[derive(Default)]
struct Extensions {
    basic: Option<BasicConstraints>,
    usage: Option<KeyUsage>,
    bad: bool,
}

fn extensions(cert: &Certificate) -> Result<Extensions, ()> {
    let mut out = Extensions::default();
    let mut seen = HashSet::new();
    for e in cert.tbs_certificate().extensions().into_iter().flatten() {
        out.bad |= !seen.insert(e.extn_id);
        let value = e.extn_value.as_bytes();
        if e.extn_id == BASIC_CONSTRAINTS {
            out.basic = Some(BasicConstraints::from_der(value).map_err(|_| ())?);
        } else if e.extn_id == KEY_USAGE {
            out.usage = Some(KeyUsage::from_der(value).map_err(|_| ())?);
        } else if e.extn_id == EXTENDED_KEY_USAGE {
            // Understood; see EXTENDED_KEY_USAGE.
        } else {
            out.bad |= e.critical;
        }
    }
    Ok(out)
}

/// The rules of one certificate alone, in the TSM's order; the first broken.
fn check_certificate(cert: &Certificate, index: usize, count: usize) -> Result<(), PathFault> {
    let tbs = cert.tbs_certificate();
    if tbs.version() != Version::V3 {
        return Err(PathFault::Version { index });
    }
    let alg = cert.signature_algorithm();
    let known = alg.oid == x509::ECDSA_WITH_SHA384 || alg.oid == ECDSA_WITH_SHA256;
    if !known || alg.parameters.is_some() || tbs.signature() != alg {
        return Err(PathFault::SignatureAlgorithm { index });
    }
    let v = tbs.validity();
    if v.not_before.to_unix_duration() > v.not_after.to_unix_duration() {
        return Err(PathFault::Validity { index });
    }
    let ext = extensions(cert).map_err(|()| PathFault::Malformed { index })?;
    if ext.bad {
        return Err(PathFault::CriticalExtension { index });
    }
    let ca = ext.basic.as_ref().is_some_and(|b| b.ca);
    if index + 1 < count {
        if !ca {
            return Err(PathFault::NotCa { index });
        }
        // The root, the trust anchor, may carry no keyUsage (RFC 5280 §6.1.1 d; DMTF libspdm's
        // sample roots have none); one it carries must allow certificate signing.
        let anchor_unrestricted = index == 0 && ext.usage.is_none();
        if !ext.usage.is_some_and(|u| u.key_cert_sign()) && !anchor_unrestricted {
            return Err(PathFault::KeyUsage { index });
        }
        let below = count - 2 - index;
        if ext.basic.and_then(|b| b.path_len_constraint).is_some_and(|n| usize::from(n) < below) {
            return Err(PathFault::PathLength { index });
        }
    } else {
        if ca {
            return Err(PathFault::LeafIsCa { index });
        }
        if !ext.usage.is_some_and(|u| u.digital_signature()) {
            return Err(PathFault::KeyUsage { index });
        }
    }
    Ok(())
}

fn check_signature(issuer: &Certificate, cert: &Certificate, index: usize) -> Result<(), PathFault> {
    let (curve, key) =
        x509::ec_key_bytes(issuer).map_err(|_| PathFault::IssuerKey { index: index.saturating_sub(1) })?;
    let sha256 = cert.signature_algorithm().oid == ECDSA_WITH_SHA256;
    let alg = match (curve, sha256) {
        (x509::Curve::P256, true) => &ECDSA_P256_SHA256_ASN1,
        (x509::Curve::P256, false) => &ECDSA_P256_SHA384_ASN1,
        (x509::Curve::P384, true) => &ECDSA_P384_SHA256_ASN1,
        (x509::Curve::P384, false) => &ECDSA_P384_SHA384_ASN1,
    };
    let tbs = cert.tbs_certificate().to_der().map_err(|_| PathFault::Malformed { index })?;
    let sig = cert.signature().as_bytes().ok_or(PathFault::SignatureAlgorithm { index })?;
    UnparsedPublicKey::new(alg, key).verify(&tbs, sig).map_err(|_| PathFault::Signature { index })
}

/// Validates the chain `certs` (DER, root first) by every rule but validity now.
///
/// # Errors
/// Every rule broken, in chain order (per certificate, its first broken rule, then its name and
/// its signature), the leaf key last. The first is the one the TSM reports.
pub fn validate(certs: &[Vec<u8>]) -> Result<ValidPath, Vec<PathFault>> {
    let mut faults = Vec::new();
    let parsed: Vec<Option<Certificate>> = certs.iter().map(|c| Certificate::from_der(c).ok()).collect();
    let count = certs.len();
    let mut validity = Vec::with_capacity(count);
    for (index, cert) in parsed.iter().enumerate() {
        let Some(cert) = cert else {
            faults.push(PathFault::Malformed { index });
            continue;
        };
        let v = cert.tbs_certificate().validity();
        validity.push((v.not_before.to_unix_duration(), v.not_after.to_unix_duration()));
        if let Err(f) = check_certificate(cert, index, count) {
            faults.push(f);
        }
        let issuer = if index == 0 { Some(cert) } else { parsed[index - 1].as_ref() };
        let Some(issuer) = issuer else { continue };
        let (name, issuer_subject) =
            (cert.tbs_certificate().issuer().to_der(), issuer.tbs_certificate().subject().to_der());
        if name.is_err() || name != issuer_subject {
            faults.push(PathFault::IssuerName { index });
        }
        if let Err(f) = check_signature(issuer, cert, index) {
            faults.push(f);
        }
    }
    let leaf_key = match parsed.last().and_then(Option::as_ref).map(x509::ec_key_bytes) {
        Some(Ok(k)) => Some(k),
        _ => {
            faults.push(PathFault::LeafKey);
            None
        }
    };
    match leaf_key {
        Some((leaf_curve, leaf_key)) if faults.is_empty() => Ok(ValidPath { leaf_key, leaf_curve, validity }),
        _ => Err(faults),
    }
}

/// [`validate`], then validity at Unix time `now`: the verifier's whole verdict on a chain.
///
/// # Errors
/// As [`validate`], or the first certificate not valid now.
pub fn validate_at(certs: &[Vec<u8>], now: Duration) -> Result<ValidPath, Vec<PathFault>> {
    let path = validate(certs)?;
    path.valid_at(now).map_err(|f| vec![f])?;
    Ok(path)
}
