//! The device's identity: a root, an intermediate CA and a leaf whose key signs CHALLENGE_AUTH,
//! MEASUREMENTS and KEY_EXCHANGE_RSP, and the certificate chain of slot 0 in the SPDM format
//! (DSP0274 §10.6.1):
//! `Length u16 | reserved u16 | H(root DER) | root DER | intermediate DER ... | leaf DER`.
//!
//! An identity is of one suite: P-384 (ECDSA P-384 keys signing with SHA-384, the chain hashed
//! with SHA-384; the device then selects secp384r1 and AES-256-GCM), or on request P-256 (ECDSA
//! P-256 with SHA-256, secp256r1, AES-128-GCM), the suite many PCIe devices ship.
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
use tsm::spdm::sig::LeafKey;
use tsm::spdm::suite::Suite;
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

/// The leaf's signing key, of the identity's curve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeafSigner {
    /// ECDSA P-256.
    P256(p256::ecdsa::SigningKey),
    /// ECDSA P-384.
    P384(SigningKey),
}

impl From<SigningKey> for LeafSigner {
    fn from(k: SigningKey) -> Self {
        LeafSigner::P384(k)
    }
}

impl From<p256::ecdsa::SigningKey> for LeafSigner {
    fn from(k: p256::ecdsa::SigningKey) -> Self {
        LeafSigner::P256(k)
    }
}

impl LeafSigner {
    /// The suite an identity with this key serves.
    pub fn suite(&self) -> Suite {
        match self {
            LeafSigner::P256(_) => Suite::P256,
            LeafSigner::P384(_) => Suite::P384,
        }
    }

    /// The public half.
    pub fn verifying(&self) -> LeafKey {
        match self {
            LeafSigner::P256(k) => LeafKey::P256(*k.verifying_key()),
            LeafSigner::P384(k) => LeafKey::P384(*k.verifying_key()),
        }
    }

    /// The P-384 key, if it is one.
    pub fn p384(&self) -> Option<&SigningKey> {
        match self {
            LeafSigner::P384(k) => Some(k),
            LeafSigner::P256(_) => None,
        }
    }

    /// ECDSA over `digest` (the negotiated hash of the signed message), raw `r ‖ s`.
    pub fn sign_prehash(&self, digest: &[u8]) -> Result<Vec<u8>, CertError> {
        use p384::ecdsa::signature::hazmat::PrehashSigner;
        match self {
            LeafSigner::P256(k) => {
                let s: p256::ecdsa::Signature = k.sign_prehash(digest).map_err(err)?;
                Ok(s.to_bytes().to_vec())
            }
            LeafSigner::P384(k) => {
                let s: p384::ecdsa::Signature = k.sign_prehash(digest).map_err(err)?;
                Ok(s.to_bytes().to_vec())
            }
        }
    }

    fn to_pkcs8_der(&self) -> Result<Vec<u8>, CertError> {
        Ok(match self {
            LeafSigner::P256(k) => k.to_pkcs8_der().map_err(err)?.as_bytes().to_vec(),
            LeafSigner::P384(k) => k.to_pkcs8_der().map_err(err)?.as_bytes().to_vec(),
        })
    }
}

/// The device's keys and certificates.
#[derive(Clone, Debug)]
pub struct Identity {
    /// The leaf's signing key.
    pub leaf_key: LeafSigner,
    /// The root certificate (DER), for a verifier to trust.
    pub root_der: Vec<u8>,
    /// The intermediate CA certificates (DER), root side first.
    pub intermediates_der: Vec<Vec<u8>>,
    /// The leaf certificate (DER).
    pub leaf_der: Vec<u8>,
    /// Slot 0 in the SPDM chain format.
    pub chain: Vec<u8>,
    /// `chain` in the suite's hash: DIGESTS, CHALLENGE_AUTH's CertChainHash, and Ct of the key
    /// exchange.
    pub chain_digest: Vec<u8>,
    /// The suite the device serves.
    pub suite: Suite,
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

fn spki256(key: &p256::ecdsa::SigningKey) -> Result<SubjectPublicKeyInfoOwned, CertError> {
    let der = key.verifying_key().to_public_key_der().map_err(err)?;
    x509_cert::der::Decode::from_der(der.as_bytes()).map_err(err)
}

fn read(path: &Path) -> Result<Vec<u8>, CertError> {
    std::fs::read(path).map_err(|e| CertError(format!("{}: {e}", path.display())))
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), CertError> {
    std::fs::write(path, bytes).map_err(|e| CertError(format!("{}: {e}", path.display())))
}

/// A leaf key in PKCS#8 DER ("PRIVATE KEY") or SEC1 DER ("EC PRIVATE KEY"), P-384 or P-256.
fn parse_key(der: &[u8]) -> Result<LeafSigner, CertError> {
    if let Ok(k) = SigningKey::from_pkcs8_der(der) {
        return Ok(LeafSigner::P384(k));
    }
    if let Ok(k) = p384::SecretKey::from_sec1_der(der) {
        return Ok(LeafSigner::P384(k.into()));
    }
    if let Ok(k) = p256::ecdsa::SigningKey::from_pkcs8_der(der) {
        return Ok(LeafSigner::P256(k));
    }
    p256::SecretKey::from_sec1_der(der)
        .map(|k| LeafSigner::P256(k.into()))
        .map_err(|_| CertError("the leaf key is neither PKCS#8 nor SEC1 DER of a P-384 or P-256 key".into()))
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
        Identity::generate_chain(rng, 1, 0)
    }

    /// A fresh root, `intermediates` CAs (at least one) and a leaf from `rng`; with `padding` > 0
    /// every CA's name carries an organisational unit of that many characters, which makes
    /// chains as long as a test needs (a chain over 4 KiB, read in several GET_CERTIFICATE
    /// portions). `generate_chain(rng, 1, 0)` is [`Identity::generate`].
    ///
    /// # Errors
    /// [`CertError`] if a certificate cannot be encoded or the chain exceeds 64 KiB.
    pub fn generate_chain(rng: &mut Rng, intermediates: usize, padding: usize) -> Result<Identity, CertError> {
        let intermediates = intermediates.max(1);
        let root_key = SigningKey::from(rng.scalar());
        let ca_keys: Vec<SigningKey> = (0..intermediates).map(|_| SigningKey::from(rng.scalar())).collect();
        let leaf_key = SigningKey::from(rng.scalar());
        Identity::chain_over(root_key, ca_keys, padding, leaf_key)
    }

    /// [`Identity::generate_chain`] for a leaf key the caller has: a fresh root and
    /// `intermediates` CAs from `rng` certify it (a peer's sample key given a chain over 4 KiB).
    ///
    /// # Errors
    /// [`CertError`] if a certificate cannot be encoded or the chain exceeds 64 KiB.
    pub fn generate_chain_for(
        rng: &mut Rng,
        intermediates: usize,
        padding: usize,
        leaf_key: SigningKey,
    ) -> Result<Identity, CertError> {
        let root_key = SigningKey::from(rng.scalar());
        let ca_keys: Vec<SigningKey> = (0..intermediates.max(1)).map(|_| SigningKey::from(rng.scalar())).collect();
        Identity::chain_over(root_key, ca_keys, padding, leaf_key)
    }

    fn chain_over(
        root_key: SigningKey,
        ca_keys: Vec<SigningKey>,
        padding: usize,
        leaf_key: SigningKey,
    ) -> Result<Identity, CertError> {
        let intermediates = ca_keys.len();
        let root_name = Name::from_str("CN=seamless tdisp-device root,O=seamless,C=XX").map_err(err)?;
        let ou = if padding > 0 { format!(",OU={}", "p".repeat(padding)) } else { String::new() };
        let ca_name = |i: usize| {
            let n = if intermediates == 1 { String::new() } else { format!(" {i}") };
            Name::from_str(&format!("CN=seamless tdisp-device CA{n}{ou},O=seamless,C=XX")).map_err(err)
        };
        let leaf_name = Name::from_str("CN=seamless tdisp-device leaf,O=seamless,C=XX").map_err(err)?;

        let profile = Root::new(false, root_name.clone()).map_err(err)?;
        let serial = SerialNumber::new(&[0x01]).map_err(err)?;
        let builder = CertificateBuilder::new(profile, serial, validity()?, spki(&root_key)?).map_err(err)?;
        let root_der = builder.build::<_, DerSignature>(&root_key).map_err(err)?.to_der().map_err(err)?;

        let mut cas = Vec::with_capacity(intermediates);
        let (mut issuer, mut issuer_key) = (root_name, &root_key);
        for (i, key) in ca_keys.iter().enumerate() {
            let subject = ca_name(i)?;
            let profile = Subordinate {
                issuer,
                subject: subject.clone(),
                path_len_constraint: Some((intermediates - 1 - i) as u8),
                emits_ocsp_response: false,
                client_auth: false,
            };
            let serial = SerialNumber::new(&[0x02 + i as u8 * 0x10]).map_err(err)?;
            let builder = CertificateBuilder::new(profile, serial, validity()?, spki(key)?).map_err(err)?;
            cas.push(builder.build::<_, DerSignature>(issuer_key).map_err(err)?.to_der().map_err(err)?);
            (issuer, issuer_key) = (subject, key);
        }

        let profile = DevId::new(issuer, leaf_name, None).map_err(err)?;
        let serial = SerialNumber::new(&[0x03]).map_err(err)?;
        let mut builder = CertificateBuilder::new(profile, serial, validity()?, spki(&leaf_key)?).map_err(err)?;
        // SPDM 1.3 (DSP0274 1.3 §10.6.1, Table 42) makes basicConstraints mandatory in the leaf,
        // CA false; libspdm's requester refuses a 1.3 chain without it. The DevID profile adds none.
        builder
            .add_extension(&x509_cert::ext::pkix::BasicConstraints { ca: false, path_len_constraint: None })
            .map_err(err)?;
        let leaf_der = builder.build::<_, DerSignature>(issuer_key).map_err(err)?.to_der().map_err(err)?;

        Identity::from_chain(leaf_key, root_der, cas, leaf_der)
    }

    /// A fresh P-256 root, intermediate CA and leaf from `rng`, every certificate signed with
    /// ECDSA P-256 and SHA-256: the identity of a device serving the P-256 suite.
    ///
    /// # Errors
    /// [`CertError`] if a certificate cannot be encoded.
    pub fn generate_p256(rng: &mut Rng) -> Result<Identity, CertError> {
        use p256::ecdsa::{DerSignature, SigningKey};
        let root_key = SigningKey::from(rng.scalar256());
        let ca_key = SigningKey::from(rng.scalar256());
        let leaf_key = SigningKey::from(rng.scalar256());
        let root_name = Name::from_str("CN=seamless tdisp-device P-256 root,O=seamless,C=XX").map_err(err)?;
        let ca_name = Name::from_str("CN=seamless tdisp-device P-256 CA,O=seamless,C=XX").map_err(err)?;
        let leaf_name = Name::from_str("CN=seamless tdisp-device P-256 leaf,O=seamless,C=XX").map_err(err)?;
        let profile = Root::new(false, root_name.clone()).map_err(err)?;
        let serial = SerialNumber::new(&[0x01]).map_err(err)?;
        let builder = CertificateBuilder::new(profile, serial, validity()?, spki256(&root_key)?).map_err(err)?;
        let root_der = builder.build::<_, DerSignature>(&root_key).map_err(err)?.to_der().map_err(err)?;
        let profile = Subordinate {
            issuer: root_name,
            subject: ca_name.clone(),
            path_len_constraint: Some(0),
            emits_ocsp_response: false,
            client_auth: false,
        };
        let serial = SerialNumber::new(&[0x02]).map_err(err)?;
        let builder = CertificateBuilder::new(profile, serial, validity()?, spki256(&ca_key)?).map_err(err)?;
        let ca_der = builder.build::<_, DerSignature>(&root_key).map_err(err)?.to_der().map_err(err)?;
        let profile = DevId::new(ca_name, leaf_name, None).map_err(err)?;
        let serial = SerialNumber::new(&[0x03]).map_err(err)?;
        let mut builder = CertificateBuilder::new(profile, serial, validity()?, spki256(&leaf_key)?).map_err(err)?;
        builder
            .add_extension(&x509_cert::ext::pkix::BasicConstraints { ca: false, path_len_constraint: None })
            .map_err(err)?;
        let leaf_der = builder.build::<_, DerSignature>(&ca_key).map_err(err)?.to_der().map_err(err)?;
        Identity::from_chain(leaf_key, root_der, vec![ca_der], leaf_der)
    }

    /// An identity from a leaf key and the DER certificates of a root and a leaf.
    ///
    /// # Errors
    /// [`CertError`] if the chain does not fit the 16-bit SPDM length.
    pub fn from_parts(
        leaf_key: impl Into<LeafSigner>,
        root_der: Vec<u8>,
        leaf_der: Vec<u8>,
    ) -> Result<Identity, CertError> {
        Identity::from_chain(leaf_key, root_der, Vec::new(), leaf_der)
    }

    /// An identity from a leaf key and the DER certificates, root, intermediates, leaf; its suite
    /// is the leaf key's. Nothing is checked beyond the size: a fault switch serves chains that
    /// do not chain.
    ///
    /// # Errors
    /// [`CertError`] if the chain does not fit the 16-bit SPDM length.
    pub fn from_chain(
        leaf_key: impl Into<LeafSigner>,
        root_der: Vec<u8>,
        intermediates_der: Vec<Vec<u8>>,
        leaf_der: Vec<u8>,
    ) -> Result<Identity, CertError> {
        let leaf_key = leaf_key.into();
        let suite = leaf_key.suite();
        let h = suite.hash.bytes();
        let certs = 4 + h + root_der.len() + intermediates_der.iter().map(Vec::len).sum::<usize>() + leaf_der.len();
        let len = u16::try_from(certs).map_err(|_| CertError(format!("chain of {certs} bytes")))?;
        let mut chain = Vec::with_capacity(certs);
        chain.extend_from_slice(&len.to_le_bytes());
        chain.extend_from_slice(&[0, 0]);
        chain.extend_from_slice(&suite.hash.digest(&root_der));
        chain.extend_from_slice(&root_der);
        for c in &intermediates_der {
            chain.extend_from_slice(c);
        }
        chain.extend_from_slice(&leaf_der);
        let chain_digest = suite.hash.digest(&chain).to_vec();
        Ok(Identity { leaf_key, root_der, intermediates_der, leaf_der, chain, chain_digest, suite })
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
        Identity::from_state_dir_with(dir, rng, Identity::generate)
    }

    /// [`Identity::from_state_dir`], generating with `generate` (for instance
    /// [`Identity::generate_p256`]) when the directory holds no identity yet.
    ///
    /// # Errors
    /// [`CertError`] if the directory cannot be read or written, or holds a bad identity.
    pub fn from_state_dir_with(
        dir: &Path,
        rng: &mut Rng,
        generate: fn(&mut Rng) -> Result<Identity, CertError>,
    ) -> Result<Identity, CertError> {
        let [root, inter, leaf, key] = STATE_FILES.map(|f| dir.join(f));
        if root.exists() {
            return Identity::from_files(&root, &[&inter], &leaf, &key);
        }
        let identity = generate(rng)?;
        std::fs::create_dir_all(dir).map_err(|e| CertError(format!("{}: {e}", dir.display())))?;
        let key_der = identity.leaf_key.to_pkcs8_der()?;
        write(&key, &key_der)?;
        write(&leaf, &identity.leaf_der)?;
        write(&inter, identity.intermediates_der.first().map_or(&[][..], Vec::as_slice))?;
        // The root last: its presence marks a complete state directory.
        write(&root, &identity.root_der)?;
        Ok(identity)
    }

    /// Checks the chain the way the TSM does, and that the leaf key is the leaf's.
    fn check(&self) -> Result<(), CertError> {
        let chain = tsm::spdm::chain::CertChain::parse_for(&self.chain, self.suite.hash).map_err(err)?;
        if *chain.leaf_key() != self.leaf_key.verifying() {
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
