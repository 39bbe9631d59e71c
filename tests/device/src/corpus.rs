//! A corpus of SPDM certificate chains, good and bad, for certification path validation: each
//! chain with the verdict RFC 5280 §6.1 (as it applies to SPDM chains) gives it, as the TSM's
//! [`ChainError`]. The TSM's requester and the verifier must both reach that verdict
//! (`attest/tests/chain_rules.rs`): the two sides accept the same chains.
//!
//! Every chain is root -> CA -> leaf of P-384 keys, ECDSA with SHA-384, built with `x509-cert`'s
//! builder, and differs from the good one in one rule.

use core::str::FromStr;
use core::time::Duration;

use p384::ecdsa::{DerSignature, SigningKey};
use p384::pkcs8::EncodePublicKey;
use tsm::spdm::chain::ChainError;
use x509_cert::builder::profile::BuilderProfile;
use x509_cert::builder::{Builder, CertificateBuilder};
use x509_cert::der::asn1::{ObjectIdentifier, OctetString, UtcTime};
use x509_cert::der::{Decode, Encode};
use x509_cert::ext::pkix::{BasicConstraints, KeyUsage, KeyUsages};
use x509_cert::ext::{Extension, ToExtension};
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::{SubjectPublicKeyInfoOwned, SubjectPublicKeyInfoRef};
use x509_cert::time::{Time, Validity};
use x509_cert::TbsCertificate;

use crate::certs::{CertError, Identity};
use crate::rng::Rng;

/// One chain of the corpus.
#[derive(Clone, Debug)]
pub struct Case {
    /// What the chain breaks, or that it is good.
    pub name: &'static str,
    /// The chain in the SPDM format (DSP0274 §10.6.1).
    pub chain: Vec<u8>,
    /// The verdict: accepted, or the first rule broken.
    pub verdict: Result<(), ChainError>,
}

/// How one certificate is made.
#[derive(Clone, Debug)]
struct Spec {
    issuer: Name,
    subject: Name,
    basic: Option<BasicConstraints>,
    usage: Option<KeyUsage>,
    extra: Vec<Extension>,
    /// notBefore and notAfter, Unix seconds; `None` for notAfter = 9999-12-31.
    validity: (u64, Option<u64>),
}

/// The profile the builder asks for names and extensions.
struct Profile {
    issuer: Name,
    subject: Name,
    spec: Spec,
}

impl BuilderProfile for Profile {
    fn get_issuer(&self, _subject: &Name) -> Name {
        self.issuer.clone()
    }

    fn get_subject(&self) -> Name {
        self.subject.clone()
    }

    fn build_extensions(
        &self,
        _spk: SubjectPublicKeyInfoRef<'_>,
        _issuer_spk: SubjectPublicKeyInfoRef<'_>,
        tbs: &TbsCertificate,
    ) -> x509_cert::builder::Result<Vec<Extension>> {
        let mut out = Vec::new();
        if let Some(b) = &self.spec.basic {
            out.push(b.to_extension(tbs.subject(), &out)?);
        }
        if let Some(u) = &self.spec.usage {
            out.push(u.to_extension(tbs.subject(), &out)?);
        }
        out.extend(self.spec.extra.iter().cloned());
        Ok(out)
    }
}

fn err(e: impl core::fmt::Display) -> CertError {
    CertError::new(e)
}

fn utc(secs: u64) -> Result<Time, CertError> {
    Ok(Time::UtcTime(UtcTime::from_unix_duration(Duration::from_secs(secs)).map_err(err)?))
}

fn build(spec: &Spec, serial: u8, key: &SigningKey, signer: &SigningKey) -> Result<Vec<u8>, CertError> {
    let profile = Profile { issuer: spec.issuer.clone(), subject: spec.subject.clone(), spec: spec.clone() };
    let not_after = match spec.validity.1 {
        Some(t) => utc(t)?,
        None => Time::INFINITY,
    };
    let validity = Validity::new(utc(spec.validity.0)?, not_after);
    let der = key.verifying_key().to_public_key_der().map_err(err)?;
    let spki = SubjectPublicKeyInfoOwned::from_der(der.as_bytes()).map_err(err)?;
    let serial = SerialNumber::new(&[serial]).map_err(err)?;
    let builder = CertificateBuilder::new(profile, serial, validity, spki).map_err(err)?;
    builder.build::<_, DerSignature>(signer).map_err(err)?.to_der().map_err(err)
}

const ROOT: &str = "CN=corpus root,O=seamless";
const CA: &str = "CN=corpus CA,O=seamless";
const LEAF: &str = "CN=corpus leaf,O=seamless";
/// 2024-01-01.
const NOT_BEFORE: u64 = 1_704_067_200;

fn ca(path_len: Option<u8>) -> Option<BasicConstraints> {
    Some(BasicConstraints { ca: true, path_len_constraint: path_len })
}

fn name(s: &str) -> Name {
    // The names below are constants that parse.
    Name::from_str(s).unwrap_or_default()
}

fn extension(oid: &str, critical: bool) -> Result<Extension, CertError> {
    Ok(Extension {
        extn_id: ObjectIdentifier::new(oid).map_err(err)?,
        critical,
        extn_value: OctetString::new(vec![0x05, 0x00]).map_err(err)?,
    })
}

/// The good chain's root, CA and leaf.
fn good() -> [Spec; 3] {
    let spec = |issuer: &str, subject: &str, basic, usage| Spec {
        issuer: name(issuer),
        subject: name(subject),
        basic,
        usage,
        extra: Vec::new(),
        validity: (NOT_BEFORE, None),
    };
    [
        spec(ROOT, ROOT, ca(None), Some(KeyUsage(KeyUsages::KeyCertSign | KeyUsages::CRLSign))),
        spec(ROOT, CA, ca(None), Some(KeyUsage(KeyUsages::KeyCertSign | KeyUsages::CRLSign))),
        spec(CA, LEAF, None, Some(KeyUsage(KeyUsages::DigitalSignature.into()))),
    ]
}

/// The corpus, keys from `rng`.
///
/// # Errors
/// [`CertError`] if a certificate cannot be built.
pub fn corpus(rng: &mut Rng) -> Result<Vec<Case>, CertError> {
    let keys: [SigningKey; 4] = core::array::from_fn(|_| SigningKey::from(rng.scalar()));
    let chain = |specs: &[Spec; 3]| -> Result<Vec<u8>, CertError> {
        let root = build(&specs[0], 1, &keys[0], &keys[0])?;
        let ca = build(&specs[1], 2, &keys[1], &keys[0])?;
        let leaf = build(&specs[2], 3, &keys[2], &keys[1])?;
        Ok(Identity::from_chain(keys[2].clone(), root, vec![ca], leaf)?.chain)
    };
    let mut cases = Vec::new();
    let mut case = |name, verdict, change: &dyn Fn(&mut [Spec; 3])| -> Result<(), CertError> {
        let mut specs = good();
        change(&mut specs);
        cases.push(Case { name, chain: chain(&specs)?, verdict });
        Ok(())
    };
    let no_ca = BasicConstraints { ca: false, path_len_constraint: None };
    case("good chain", Ok(()), &|_| {})?;
    case("good chain, leaf basicConstraints cA FALSE", Ok(()), &|s| s[2].basic = Some(no_ca.clone()))?;
    case("good chain, pathLenConstraint met", Ok(()), &|s| {
        s[0].basic = ca(Some(1));
        s[1].basic = ca(Some(0));
    })?;
    let unknown = extension("1.3.6.1.4.1.412.274.99", false)?;
    case("good chain, unknown non-critical extension", Ok(()), &|s| s[2].extra.push(unknown.clone()))?;
    // A critical extKeyUsage (libspdm's sample CA and leaf have TLS purposes in one): understood.
    let eku = extension("2.5.29.37", true)?;
    case("good chain, critical extKeyUsage", Ok(()), &|s| {
        s[1].extra.push(eku.clone());
        s[2].extra.push(eku.clone());
    })?;
    case("CA=false issuer", Err(ChainError::NotCa { index: 1 }), &|s| s[1].basic = Some(no_ca.clone()))?;
    case("issuer without basicConstraints", Err(ChainError::NotCa { index: 1 }), &|s| s[1].basic = None)?;
    case("missing keyCertSign", Err(ChainError::KeyUsage { index: 1 }), &|s| {
        s[1].usage = Some(KeyUsage(KeyUsages::DigitalSignature | KeyUsages::CRLSign))
    })?;
    case("issuer without keyUsage", Err(ChainError::KeyUsage { index: 1 }), &|s| s[1].usage = None)?;
    // The trust anchor's extensions are inputs to path validation (RFC 5280 §6.1.1 d): a root
    // without keyUsage is one (libspdm's sample roots); a root that restricts itself is held to it.
    case("good chain, root without keyUsage", Ok(()), &|s| s[0].usage = None)?;
    case("root without keyCertSign", Err(ChainError::KeyUsage { index: 0 }), &|s| {
        s[0].usage = Some(KeyUsage(KeyUsages::DigitalSignature.into()))
    })?;
    case("path length exceeded", Err(ChainError::PathLength { index: 0 }), &|s| s[0].basic = ca(Some(0)))?;
    case("name mismatch", Err(ChainError::IssuerName { index: 2 }), &|s| s[2].issuer = name("CN=corpus other CA"))?;
    case("root not self-issued", Err(ChainError::IssuerName { index: 0 }), &|s| {
        s[0].issuer = name("CN=corpus elsewhere")
    })?;
    case("expired", Err(ChainError::Validity { index: 2 }), &|s| s[2].validity = (1_546_300_800, Some(1_577_836_800)))?;
    case("validity ends before it begins", Err(ChainError::Validity { index: 1 }), &|s| {
        s[1].validity = (1_893_456_000, Some(1_861_920_000))
    })?;
    let critical = extension("1.3.6.1.4.1.412.274.99", true)?;
    case("unknown critical extension", Err(ChainError::CriticalExtension { index: 2 }), &|s| {
        s[2].extra.push(critical.clone())
    })?;
    let usage_again = KeyUsage(KeyUsages::DigitalSignature.into()).to_extension(&Name::default(), &[]).map_err(err)?;
    case("keyUsage twice", Err(ChainError::CriticalExtension { index: 2 }), &|s| s[2].extra.push(usage_again.clone()))?;
    case("leaf is a CA", Err(ChainError::LeafIsCa { index: 2 }), &|s| s[2].basic = ca(None))?;
    case("leaf without digitalSignature", Err(ChainError::KeyUsage { index: 2 }), &|s| {
        s[2].usage = Some(KeyUsage(KeyUsages::KeyEncipherment.into()))
    })?;
    // (With an extension still, lest the builder make a v1 certificate.)
    case("leaf without keyUsage", Err(ChainError::KeyUsage { index: 2 }), &|s| {
        s[2].usage = None;
        s[2].extra.push(unknown.clone());
    })?;
    case("X.509 v1 leaf", Err(ChainError::Version { index: 2 }), &|s| s[2].usage = None)?;

    // An end-entity certificate issues a device certificate: root -> CA -> leaf -> impostor,
    // signed with the leaf's key.
    let specs = good();
    let root = build(&specs[0], 1, &keys[0], &keys[0])?;
    let ca_der = build(&specs[1], 2, &keys[1], &keys[0])?;
    let leaf = build(&specs[2], 3, &keys[2], &keys[1])?;
    let impostor_spec = Spec { issuer: name(LEAF), subject: name("CN=corpus impostor,O=seamless"), ..specs[2].clone() };
    let impostor = build(&impostor_spec, 4, &keys[3], &keys[2])?;
    let chain =
        Identity::from_chain(keys[3].clone(), root.clone(), vec![ca_der.clone(), leaf.clone()], impostor)?.chain;
    cases.push(Case { name: "impostor signed by the leaf", chain, verdict: Err(ChainError::NotCa { index: 2 }) });
    // A leaf signed by a key that is not its issuer's.
    let foreign = build(&specs[2], 3, &keys[2], &keys[3])?;
    let chain = Identity::from_chain(keys[2].clone(), root, vec![ca_der], foreign)?.chain;
    cases.push(Case { name: "leaf signed by another key", chain, verdict: Err(ChainError::Signature { index: 2 }) });
    Ok(cases)
}

/// The impostor identity a device with the `impostor-leaf` fault serves: its chain, root -> CA ->
/// its real leaf -> a certificate for a key of its own signed with the leaf's key, and that key
/// as the one it signs with. Every signature verifies; only path validation refuses it.
///
/// # Errors
/// [`CertError`] if the certificate cannot be built.
pub fn impostor(identity: &Identity, rng: &mut Rng) -> Result<Identity, CertError> {
    let key = SigningKey::from(rng.scalar());
    let leaf = x509_cert::Certificate::from_der(&identity.leaf_der).map_err(err)?;
    let spec = Spec {
        issuer: leaf.tbs_certificate().subject().clone(),
        subject: name("CN=seamless tdisp-device impostor,O=seamless,C=XX"),
        basic: None,
        usage: Some(KeyUsage(KeyUsages::DigitalSignature.into())),
        extra: Vec::new(),
        validity: (NOT_BEFORE, None),
    };
    let leaf_key =
        identity.leaf_key.p384().ok_or_else(|| CertError::new("the impostor fault needs a P-384 identity"))?;
    let cert = build(&spec, 4, &key, leaf_key)?;
    let mut intermediates = identity.intermediates_der.clone();
    intermediates.push(identity.leaf_der.clone());
    Identity::from_chain(key, identity.root_der.clone(), intermediates, cert)
}
