//! X.509 for the emulated platform: building the certificates `attest provision` writes, and
//! checking the native chain (vendor root -> TSM attestation-key certificate) with ring.
//!
//! Certificates are built with `x509-cert` 0.3; ECDSA P-384 signatures with `p384`, RSA-PSS
//! SHA-384 (salt 48, MGF1-SHA-384, AMD's ARK/ASK form) with `rsa`. Checking the native chain uses
//! ring's ECDSA P-384 (the host's fast path); the SNP chain is checked by the `sev` crate itself
//! ([`super::snp`]), so that the export is held to what SNP tooling accepts.

use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use p384::ecdsa::{DerSignature, SigningKey, VerifyingKey};
use p384::pkcs8::EncodePublicKey;
use sha2::{Digest, Sha384};
use x509_cert::builder::profile::BuilderProfile;
use x509_cert::builder::{Builder, CertificateBuilder};
use x509_cert::der::asn1::{ObjectIdentifier, OctetString};
use x509_cert::der::{Decode, DecodePem, Encode, EncodePem};
use x509_cert::ext::pkix::{BasicConstraints, KeyUsage, KeyUsages, SubjectKeyIdentifier};
use x509_cert::ext::{Extension, ToExtension};
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::{SubjectPublicKeyInfoOwned, SubjectPublicKeyInfoRef};
use x509_cert::time::{Time, Validity};
use x509_cert::{Certificate, TbsCertificate};

/// ecdsa-with-SHA384.
pub const ECDSA_WITH_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3");
/// id-ecPublicKey.
pub const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
/// secp384r1.
pub const SECP384R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");

/// A failure building or reading a certificate, as text for the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertError(pub String);

impl std::fmt::Display for CertError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CertError {}

macro_rules! ctx {
    ($e:expr, $what:expr) => {
        $e.map_err(|e| CertError(format!("{}: {e}", $what)))
    };
}

/// The profile every certificate here is built with: issuer and subject, CA or leaf, and any
/// extra extensions (AMD's VCEK TCB extensions).
#[derive(Debug, Clone)]
pub struct Profile {
    /// The issuer's name; `None` for a self-signed certificate.
    pub issuer: Option<Name>,
    /// The subject's name.
    pub subject: Name,
    /// A CA (with this path length constraint), or a leaf.
    pub ca: Option<Option<u8>>,
    /// Extensions added after the standard ones.
    pub extra: Vec<Extension>,
}

impl BuilderProfile for Profile {
    fn get_issuer(&self, subject: &Name) -> Name {
        self.issuer.clone().unwrap_or_else(|| subject.clone())
    }

    fn get_subject(&self) -> Name {
        self.subject.clone()
    }

    fn build_extensions(
        &self,
        spk: SubjectPublicKeyInfoRef<'_>,
        _issuer_spk: SubjectPublicKeyInfoRef<'_>,
        tbs: &TbsCertificate,
    ) -> x509_cert::builder::Result<Vec<Extension>> {
        let mut out = Vec::new();
        let basic = BasicConstraints { ca: self.ca.is_some(), path_len_constraint: self.ca.flatten() };
        out.push(basic.to_extension(tbs.subject(), &out)?);
        let usage = if self.ca.is_some() {
            KeyUsages::KeyCertSign | KeyUsages::CRLSign
        } else {
            KeyUsages::DigitalSignature.into()
        };
        out.push(KeyUsage(usage).to_extension(tbs.subject(), &out)?);
        let ski = SubjectKeyIdentifier::try_from(spk)?;
        out.push(ski.to_extension(tbs.subject(), &out)?);
        out.extend(self.extra.iter().cloned());
        Ok(out)
    }
}

/// Validity from the Unix time `not_before` (fixed, so that provisioning is a function of its
/// keys) to 9999-12-31 (no expiry, as RFC 5280 4.1.2.5 spells it).
pub fn validity(not_before: u64) -> Result<Validity, CertError> {
    let nb = ctx!(x509_cert::der::asn1::UtcTime::from_unix_duration(Duration::from_secs(not_before)), "validity")?;
    Ok(Validity::new(Time::UtcTime(nb), Time::INFINITY))
}

/// A name from its RFC 4514 string.
///
/// # Errors
/// [`CertError`] if the string is no name.
pub fn name(s: &str) -> Result<Name, CertError> {
    ctx!(Name::from_str(s), "name")
}

/// The SubjectPublicKeyInfo of a P-384 key.
///
/// # Errors
/// [`CertError`] if it does not encode.
pub fn p384_spki(key: &VerifyingKey) -> Result<SubjectPublicKeyInfoOwned, CertError> {
    let der = ctx!(key.to_public_key_der(), "P-384 public key")?;
    ctx!(SubjectPublicKeyInfoOwned::from_der(der.as_bytes()), "P-384 public key")
}

/// Builds a certificate for `spki` under `profile`, signed by the P-384 `signer`.
///
/// # Errors
/// [`CertError`] if the builder fails.
pub fn build_ecdsa(
    profile: Profile,
    serial: u8,
    spki: SubjectPublicKeyInfoOwned,
    signer: &SigningKey,
) -> Result<Certificate, CertError> {
    let serial = ctx!(SerialNumber::new(&[serial]), "serial")?;
    let builder = ctx!(CertificateBuilder::new(profile, serial, validity(1_704_067_200)?, spki), "certificate")?;
    ctx!(builder.build::<_, DerSignature>(signer), "ECDSA signing")
}

/// Builds a certificate for `spki` under `profile`, signed with RSA-PSS SHA-384 by `signer`.
///
/// # Errors
/// [`CertError`] if the builder fails.
pub fn build_rsa_pss(
    profile: Profile,
    serial: u8,
    spki: SubjectPublicKeyInfoOwned,
    signer: &rsa::pss::SigningKey<Sha384>,
) -> Result<Certificate, CertError> {
    let serial = ctx!(SerialNumber::new(&[serial]), "serial")?;
    let builder = ctx!(CertificateBuilder::new(profile, serial, validity(1_704_067_200)?, spki), "certificate")?;
    ctx!(builder.build::<_, rsa::pss::Signature>(signer), "RSA-PSS signing")
}

/// A certificate as DER.
///
/// # Errors
/// [`CertError`] if it does not encode.
pub fn to_der(cert: &Certificate) -> Result<Vec<u8>, CertError> {
    ctx!(cert.to_der(), "DER encoding")
}

/// A certificate as PEM.
///
/// # Errors
/// [`CertError`] if it does not encode.
pub fn to_pem(cert: &Certificate) -> Result<String, CertError> {
    ctx!(cert.to_pem(x509_cert::der::pem::LineEnding::LF), "PEM encoding")
}

/// A non-critical extension with raw `value` as its extnValue.
pub fn raw_extension(oid: &str, value: &[u8]) -> Result<Extension, CertError> {
    let extn_id = ctx!(ObjectIdentifier::new(oid), "extension OID")?;
    let extn_value = ctx!(OctetString::new(value.to_vec()), "extension value")?;
    Ok(Extension { extn_id, critical: false, extn_value })
}

/// Reads a certificate from PEM or DER bytes.
///
/// # Errors
/// [`CertError`] if the bytes are neither.
pub fn read_cert(bytes: &[u8]) -> Result<Certificate, CertError> {
    if bytes.is_empty() {
        return Err(CertError("empty file, expected a PEM or DER certificate".into()));
    }
    if bytes.starts_with(b"-----BEGIN") {
        return ctx!(Certificate::from_pem(bytes), "PEM certificate");
    }
    ctx!(Certificate::from_der(bytes), "DER certificate")
}

/// SHA-384 of a certificate's DER: how tools name the root they trusted.
///
/// # Errors
/// [`CertError`] if it does not encode.
pub fn fingerprint(cert: &Certificate) -> Result<[u8; 48], CertError> {
    Ok(Sha384::digest(to_der(cert)?).into())
}

/// The P-384 key of a certificate's SubjectPublicKeyInfo, as its SEC1 bytes.
///
/// # Errors
/// [`CertError`] if the key is not an EC P-384 key.
pub fn p384_key_bytes(cert: &Certificate) -> Result<Vec<u8>, CertError> {
    match ec_key_bytes(cert)? {
        (Curve::P384, bytes) => Ok(bytes),
        (Curve::P256, _) => Err(CertError("EC key is not on secp384r1 (P-384)".into())),
    }
}

/// secp256r1 (P-256).
pub const SECP256R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");

/// The NIST curves a device key may be on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Curve {
    /// secp256r1.
    P256,
    /// secp384r1.
    P384,
}

/// The SEC1 bytes of a certificate's P-256 or P-384 key, with its curve.
///
/// # Errors
/// [`CertError`] if the key is not an EC key on one of them.
pub fn ec_key_bytes(cert: &Certificate) -> Result<(Curve, Vec<u8>), CertError> {
    let spki = cert.tbs_certificate().subject_public_key_info();
    if spki.algorithm.oid != EC_PUBLIC_KEY {
        return Err(CertError(format!("key algorithm {} is not id-ecPublicKey", spki.algorithm.oid)));
    }
    let curve = spki.algorithm.parameters.as_ref().and_then(|p| p.decode_as::<ObjectIdentifier>().ok());
    let curve = match curve {
        Some(SECP384R1) => Curve::P384,
        Some(SECP256R1) => Curve::P256,
        _ => return Err(CertError("EC key is neither on secp256r1 (P-256) nor on secp384r1 (P-384)".into())),
    };
    let bytes =
        spki.subject_public_key.as_bytes().ok_or_else(|| CertError("key bit string is not whole bytes".into()))?;
    Ok((curve, bytes.to_vec()))
}

/// The P-384 key of a certificate.
///
/// # Errors
/// [`CertError`] if the key is not a valid P-384 point.
pub fn p384_key(cert: &Certificate) -> Result<VerifyingKey, CertError> {
    let bytes = p384_key_bytes(cert)?;
    VerifyingKey::from_sec1_bytes(&bytes).map_err(|_| CertError("key is not a valid P-384 point".into()))
}

/// Whether `cert` carries an ECDSA-SHA-384 signature that `issuer`'s P-384 key verifies, with
/// ring.
///
/// # Errors
/// Why not, as text.
pub fn check_signed_by(cert: &Certificate, issuer: &Certificate) -> Result<(), CertError> {
    let alg = cert.signature_algorithm();
    if alg.oid != ECDSA_WITH_SHA384 {
        return Err(CertError(format!("signature algorithm {} is not ecdsa-with-SHA384", alg.oid)));
    }
    let key = p384_key_bytes(issuer).map_err(|e| CertError(format!("issuer key: {e}")))?;
    let tbs = to_der_tbs(cert)?;
    let sig = cert.signature().as_bytes().ok_or_else(|| CertError("signature bit string is not whole bytes".into()))?;
    ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P384_SHA384_ASN1, key)
        .verify(&tbs, sig)
        .map_err(|_| CertError("signature does not verify under the issuer's key".into()))
}

fn to_der_tbs(cert: &Certificate) -> Result<Vec<u8>, CertError> {
    ctx!(cert.tbs_certificate().to_der(), "TBSCertificate")
}

/// Whether `now` lies in the certificate's validity period.
///
/// # Errors
/// The period, as text, if it does not.
pub fn check_validity(cert: &Certificate, now: SystemTime) -> Result<(), CertError> {
    let v = cert.tbs_certificate().validity();
    let now = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let (nb, na) = (v.not_before.to_unix_duration(), v.not_after.to_unix_duration());
    if now < nb || now > na {
        return Err(CertError(format!("valid from {} to {}", v.not_before, v.not_after)));
    }
    Ok(())
}

/// The certificate's subject as text.
pub fn subject(cert: &Certificate) -> String {
    cert.tbs_certificate().subject().to_string()
}

/// The certificate's validity as text.
pub fn validity_text(cert: &Certificate) -> String {
    let v = cert.tbs_certificate().validity();
    format!("{} .. {}", v.not_before, v.not_after)
}
