//! The device's identity: a P-384 root, an intermediate CA and a leaf whose key signs
//! CHALLENGE_AUTH, MEASUREMENTS and KEY_EXCHANGE_RSP, and the certificate chain of slot 0 in the
//! SPDM format (DSP0274 §10.6.1):
//! `Length u16 | reserved u16 | SHA-384(root DER) | root DER | intermediate DER ... | leaf DER`.
//!
//! The identity is made from the device's random generator ([`Identity::generate`]), read from
//! DER files ([`Identity::from_files`]), or kept in a state directory: made at the first start and
//! read back at every later one ([`Identity::from_state_dir`]).

use core::fmt;
use core::str::FromStr;
use core::time::Duration;
use std::path::Path;

use p384::ecdsa::{DerSignature, SigningKey};
use p384::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey};
use sha2::{Digest, Sha384};
use x509_cert::builder::profile::cabf::tls::Subordinate;
use x509_cert::builder::profile::cabf::Root;
use x509_cert::builder::profile::devid::DevId;
use x509_cert::builder::{Builder, CertificateBuilder};
use x509_cert::der::asn1::BitString;
use x509_cert::der::{Decode, Encode};
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::SubjectPublicKeyInfoOwned;
use x509_cert::time::{Time, Validity};
use x509_cert::Certificate;

use crate::rng::Rng;

/// Why the identity could not be made or read.
#[derive(Debug)]
pub struct CertError(String);

impl fmt::Display for CertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "certificate: {}", self.0)
    }
}

impl std::error::Error for CertError {}

impl CertError {
    pub(crate) fn new(e: impl fmt::Display) -> CertError {
        CertError(e.to_string())
    }
}

fn err(e: impl fmt::Display) -> CertError {
    CertError(e.to_string())
}

/// The device's keys and certificates.
#[derive(Clone, Debug)]
pub struct Identity {
    /// The leaf's signing key.
    pub leaf_key: SigningKey,
    /// The root certificate (DER), for a verifier to trust.
    pub root_der: Vec<u8>,
    /// The intermediate CA certificates (DER), root side first.
    pub intermediates_der: Vec<Vec<u8>>,
    /// The leaf certificate (DER).
    pub leaf_der: Vec<u8>,
    /// Slot 0 in the SPDM chain format.
    pub chain: Vec<u8>,
    /// SHA-384 of `chain`: DIGESTS, CHALLENGE_AUTH's CertChainHash, and Ct of the key exchange.
    pub chain_digest: [u8; 48],
}

fn validity() -> Result<Validity, CertError> {
    // Fixed dates keep the certificates a function of the seed alone.
    let not_before = Time::UtcTime(
        x509_cert::der::asn1::UtcTime::from_unix_duration(Duration::from_secs(1_704_067_200)).map_err(err)?,
    );
    let not_after = Time::INFINITY;
    Ok(Validity::new(not_before, not_after))
}

fn spki(key: &SigningKey) -> Result<SubjectPublicKeyInfoOwned, CertError> {
    let der = key.verifying_key().to_public_key_der().map_err(err)?;
    x509_cert::der::Decode::from_der(der.as_bytes()).map_err(err)
}

fn read(path: &Path) -> Result<Vec<u8>, CertError> {
    std::fs::read(path).map_err(|e| CertError(format!("{}: {e}", path.display())))
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), CertError> {
    std::fs::write(path, bytes).map_err(|e| CertError(format!("{}: {e}", path.display())))
}

/// A leaf key in PKCS#8 DER ("PRIVATE KEY") or SEC1 DER ("EC PRIVATE KEY").
fn parse_key(der: &[u8]) -> Result<SigningKey, CertError> {
    if let Ok(k) = SigningKey::from_pkcs8_der(der) {
        return Ok(k);
    }
    p384::SecretKey::from_sec1_der(der)
        .map(SigningKey::from)
        .map_err(|_| CertError("the leaf key is neither PKCS#8 nor SEC1 DER of a P-384 key".into()))
}

/// `body` as one DER SEQUENCE.
fn der_sequence(body: &[u8]) -> Result<Vec<u8>, CertError> {
    let len = u16::try_from(body.len()).map_err(|_| CertError("certificate too large".into()))?;
    let mut out = vec![0x30];
    match len {
        0..=0x7F => out.push(len as u8),
        0x80..=0xFF => out.extend_from_slice(&[0x81, len as u8]),
        _ => out.extend_from_slice(&[0x82, (len >> 8) as u8, len as u8]),
    }
    out.extend_from_slice(body);
    Ok(out)
}

/// Files of a state directory.
const STATE_FILES: [&str; 4] = ["root.der", "intermediate.der", "leaf.der", "leaf.key"];

impl Identity {
    /// A fresh root, intermediate CA and leaf from `rng`.
    ///
    /// # Errors
    /// [`CertError`] if a certificate cannot be encoded.
    pub fn generate(rng: &mut Rng) -> Result<Identity, CertError> {
        let root_key = SigningKey::from(rng.scalar());
        let intermediate_key = SigningKey::from(rng.scalar());
        let leaf_key = SigningKey::from(rng.scalar());
        let root_name = Name::from_str("CN=seamless tdisp-device root,O=seamless,C=XX").map_err(err)?;
        let intermediate_name = Name::from_str("CN=seamless tdisp-device CA,O=seamless,C=XX").map_err(err)?;
        let leaf_name = Name::from_str("CN=seamless tdisp-device leaf,O=seamless,C=XX").map_err(err)?;

        let profile = Root::new(false, root_name.clone()).map_err(err)?;
        let serial = SerialNumber::new(&[0x01]).map_err(err)?;
        let builder = CertificateBuilder::new(profile, serial, validity()?, spki(&root_key)?).map_err(err)?;
        let root_der = builder.build::<_, DerSignature>(&root_key).map_err(err)?.to_der().map_err(err)?;

        let profile = Subordinate {
            issuer: root_name,
            subject: intermediate_name.clone(),
            path_len_constraint: Some(0),
            emits_ocsp_response: false,
            client_auth: false,
        };
        let serial = SerialNumber::new(&[0x02]).map_err(err)?;
        let builder = CertificateBuilder::new(profile, serial, validity()?, spki(&intermediate_key)?).map_err(err)?;
        let intermediate = builder.build::<_, DerSignature>(&root_key).map_err(err)?.to_der().map_err(err)?;

        let profile = DevId::new(intermediate_name, leaf_name, None).map_err(err)?;
        let serial = SerialNumber::new(&[0x03]).map_err(err)?;
        let builder = CertificateBuilder::new(profile, serial, validity()?, spki(&leaf_key)?).map_err(err)?;
        let leaf_der = builder.build::<_, DerSignature>(&intermediate_key).map_err(err)?.to_der().map_err(err)?;

        Identity::from_chain(leaf_key, root_der, vec![intermediate], leaf_der)
    }

    /// An identity from a leaf key and the DER certificates of a root and a leaf.
    ///
    /// # Errors
    /// [`CertError`] if the chain does not fit the 16-bit SPDM length.
    pub fn from_parts(leaf_key: SigningKey, root_der: Vec<u8>, leaf_der: Vec<u8>) -> Result<Identity, CertError> {
        Identity::from_chain(leaf_key, root_der, Vec::new(), leaf_der)
    }

    /// An identity from a leaf key and the DER certificates, root, intermediates, leaf. Nothing is
    /// checked beyond the size: a fault switch serves chains that do not chain.
    ///
    /// # Errors
    /// [`CertError`] if the chain does not fit the 16-bit SPDM length.
    pub fn from_chain(
        leaf_key: SigningKey,
        root_der: Vec<u8>,
        intermediates_der: Vec<Vec<u8>>,
        leaf_der: Vec<u8>,
    ) -> Result<Identity, CertError> {
        let certs = 4 + 48 + root_der.len() + intermediates_der.iter().map(Vec::len).sum::<usize>() + leaf_der.len();
        let len = u16::try_from(certs).map_err(|_| CertError(format!("chain of {certs} bytes")))?;
        let mut chain = Vec::with_capacity(certs);
        chain.extend_from_slice(&len.to_le_bytes());
        chain.extend_from_slice(&[0, 0]);
        chain.extend_from_slice(&Sha384::digest(&root_der));
        chain.extend_from_slice(&root_der);
        for c in &intermediates_der {
            chain.extend_from_slice(c);
        }
        chain.extend_from_slice(&leaf_der);
        let chain_digest = Sha384::digest(&chain).into();
        Ok(Identity { leaf_key, root_der, intermediates_der, leaf_der, chain, chain_digest })
    }

    /// The identity in DER files: root, intermediates (root side first), leaf, and the leaf's key
    /// (PKCS#8 or SEC1 DER). The chain must be one the TSM accepts (it chains, the leaf carries a
    /// P-384 key) and the key must be the leaf's.
    ///
    /// # Errors
    /// [`CertError`] naming the file or the check that failed.
    pub fn from_files(root: &Path, intermediates: &[&Path], leaf: &Path, key: &Path) -> Result<Identity, CertError> {
        let inter = intermediates.iter().map(|p| read(p)).collect::<Result<Vec<_>, _>>()?;
        let identity = Identity::from_chain(parse_key(&read(key)?)?, read(root)?, inter, read(leaf)?)?;
        identity.check()?;
        Ok(identity)
    }

    /// The identity kept in `dir` (`root.der`, `intermediate.der`, `leaf.der`, `leaf.key`): read
    /// if the files are there, otherwise generated from `rng` and written there, so the device
    /// keeps its identity across starts whatever its seed.
    ///
    /// # Errors
    /// [`CertError`] if the directory cannot be read or written, or holds a bad identity.
    pub fn from_state_dir(dir: &Path, rng: &mut Rng) -> Result<Identity, CertError> {
        let [root, inter, leaf, key] = STATE_FILES.map(|f| dir.join(f));
        if root.exists() {
            return Identity::from_files(&root, &[&inter], &leaf, &key);
        }
        let identity = Identity::generate(rng)?;
        std::fs::create_dir_all(dir).map_err(|e| CertError(format!("{}: {e}", dir.display())))?;
        let key_der = identity.leaf_key.to_pkcs8_der().map_err(err)?;
        write(&key, key_der.as_bytes())?;
        write(&leaf, &identity.leaf_der)?;
        write(&inter, identity.intermediates_der.first().map_or(&[][..], Vec::as_slice))?;
        // The root last: its presence marks a complete state directory.
        write(&root, &identity.root_der)?;
        Ok(identity)
    }

    /// Checks the chain the way the TSM does, and that the leaf key is the leaf's.
    fn check(&self) -> Result<(), CertError> {
        let chain = tsm::spdm::chain::CertChain::parse(&self.chain).map_err(err)?;
        if chain.leaf_key() != self.leaf_key.verifying_key() {
            return Err(CertError("the leaf key does not belong to the leaf certificate".into()));
        }
        Ok(())
    }

    /// The same identity with the certificate after the root (the intermediate, or the leaf of a
    /// two-certificate chain) signed again by `stray`, a key that is not its issuer's: a chain
    /// that does not chain, every certificate still well formed.
    ///
    /// # Errors
    /// [`CertError`] if the certificate does not parse or cannot be signed.
    pub fn with_foreign_issuer(&self, stray: &SigningKey) -> Result<Identity, CertError> {
        let target = self.intermediates_der.first().unwrap_or(&self.leaf_der);
        let cert = Certificate::from_der(target).map_err(err)?;
        let tbs = cert.tbs_certificate().to_der().map_err(err)?;
        let signature: DerSignature = p384::ecdsa::signature::Signer::sign(stray, &tbs);
        let bits = BitString::from_bytes(signature.as_bytes()).map_err(err)?;
        // Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signatureValue }
        let mut body = tbs;
        body.extend_from_slice(&cert.signature_algorithm().to_der().map_err(err)?);
        body.extend_from_slice(&bits.to_der().map_err(err)?);
        let resigned = der_sequence(&body)?;
        let mut inter = self.intermediates_der.clone();
        let mut leaf = self.leaf_der.clone();
        match inter.first_mut() {
            Some(first) => *first = resigned,
            None => leaf = resigned,
        }
        Identity::from_chain(self.leaf_key.clone(), self.root_der.clone(), inter, leaf)
    }
}
