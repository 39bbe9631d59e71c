//! The device's identity: a P-384 root and a leaf whose key signs CHALLENGE_AUTH, MEASUREMENTS and
//! KEY_EXCHANGE_RSP, made at start-up from the device's random generator, and the certificate chain
//! of slot 0 in the SPDM format (DSP0274 §10.6.1):
//! `Length u16 | reserved u16 | SHA-384(root DER) | root DER | leaf DER`.

use core::fmt;
use core::str::FromStr;
use core::time::Duration;

use p384::ecdsa::{DerSignature, SigningKey};
use p384::pkcs8::EncodePublicKey;
use sha2::{Digest, Sha384};
use x509_cert::builder::profile::cabf::Root;
use x509_cert::builder::profile::devid::DevId;
use x509_cert::builder::{Builder, CertificateBuilder};
use x509_cert::der::Encode;
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::SubjectPublicKeyInfoOwned;
use x509_cert::time::{Time, Validity};

use crate::rng::Rng;

/// Why the identity could not be made.
#[derive(Debug)]
pub struct CertError(String);

impl fmt::Display for CertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "certificate: {}", self.0)
    }
}

impl std::error::Error for CertError {}

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

impl Identity {
    /// A fresh root and leaf from `rng`.
    ///
    /// # Errors
    /// [`CertError`] if a certificate cannot be encoded.
    pub fn generate(rng: &mut Rng) -> Result<Identity, CertError> {
        let root_key = SigningKey::from(rng.scalar());
        let leaf_key = SigningKey::from(rng.scalar());
        let root_name = Name::from_str("CN=seamless tdisp-device root,O=seamless,C=XX").map_err(err)?;
        let leaf_name = Name::from_str("CN=seamless tdisp-device leaf,O=seamless,C=XX").map_err(err)?;

        let profile = Root::new(false, root_name.clone()).map_err(err)?;
        let serial = SerialNumber::new(&[0x01]).map_err(err)?;
        let builder = CertificateBuilder::new(profile, serial, validity()?, spki(&root_key)?).map_err(err)?;
        let root = builder.build::<_, DerSignature>(&root_key).map_err(err)?;
        let root_der = root.to_der().map_err(err)?;

        let profile = DevId::new(root_name, leaf_name, None).map_err(err)?;
        let serial = SerialNumber::new(&[0x02]).map_err(err)?;
        let builder = CertificateBuilder::new(profile, serial, validity()?, spki(&leaf_key)?).map_err(err)?;
        let leaf = builder.build::<_, DerSignature>(&root_key).map_err(err)?;
        let leaf_der = leaf.to_der().map_err(err)?;

        Identity::from_parts(leaf_key, root_der, leaf_der)
    }

    /// An identity from a leaf key and the DER certificates, root first.
    ///
    /// # Errors
    /// [`CertError`] if the chain does not fit the 16-bit SPDM length.
    pub fn from_parts(leaf_key: SigningKey, root_der: Vec<u8>, leaf_der: Vec<u8>) -> Result<Identity, CertError> {
        let total = 4 + 48 + root_der.len() + leaf_der.len();
        let len = u16::try_from(total).map_err(|_| CertError(format!("chain of {total} bytes")))?;
        let mut chain = Vec::with_capacity(total);
        chain.extend_from_slice(&len.to_le_bytes());
        chain.extend_from_slice(&[0, 0]);
        chain.extend_from_slice(&Sha384::digest(&root_der));
        chain.extend_from_slice(&root_der);
        chain.extend_from_slice(&leaf_der);
        let chain_digest = Sha384::digest(&chain).into();
        Ok(Identity { leaf_key, root_der, leaf_der, chain, chain_digest })
    }
}
