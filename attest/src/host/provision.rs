//! `attest provision`: creates the emulated platform.
//!
//! * `root.pem`: the platform vendor root (P-384, self-signed), the trust root of native reports.
//! * `tsm-ak.pem`: the TSM attestation-key certificate, signed by the root, for the public half of
//!   [`crate::sign::derive_attestation_key`] (platform secret, MRSEAM). It names the MRSEAM and
//!   TSM SVN it was issued for in two extensions ([`OID_MRSEAM`], [`OID_TSM_SVN`]).
//! * `ark.pem`, `ask.pem`: an AMD-shaped ARK and ASK (RSA-4096, RSA-PSS SHA-384, salt 48).
//! * `vcek.pem`: the emulated VCEK (P-384), signed by the ASK, for the public half of
//!   [`crate::sign::derive_vcek_key`], carrying AMD's VCEK extensions (structVersion,
//!   productName, the TCB SPLs, hwID = chip id).
//! * `platform-secret.bin`: the [`SecretBlob`] the firmware receives at boot (mode 0600).
//!
//! The root, ARK and ASK private keys are used once here and never written: re-provisioning makes
//! a new platform. The attestation key and the VCEK are never written either: the TSM derives
//! them from the secret, and this tool runs the same derivation to certify them.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use p384::ecdsa::SigningKey;
use sha2::Sha384;
use x509_cert::spki::{EncodePublicKey, SubjectPublicKeyInfoOwned};

use super::hex;
use super::x509::{self, CertError, Profile};
use crate::platform::SecretBlob;
use crate::report::DIGEST_BYTES;
use crate::sign::{derive_attestation_key, derive_vcek_key};

/// Arc of seamless's own extensions: under 1.3.6.1.4.1.32473, the enterprise number RFC 5612
/// reserves for documentation and examples. It fits an emulated platform, which no one else
/// issues certificates for; a real deployment would use its own registered arc.
pub const OID_ARC: &str = "1.3.6.1.4.1.32473.7";
/// Extension of the TSM attestation-key certificate: the MRSEAM the key was derived for (48 raw
/// bytes).
pub const OID_MRSEAM: &str = "1.3.6.1.4.1.32473.7.1";
/// Extension of the TSM attestation-key certificate: the TSM SVN (u16 little-endian).
pub const OID_TSM_SVN: &str = "1.3.6.1.4.1.32473.7.2";

/// AMD's VCEK extension OIDs (AMD KDS specification; `1.3.6.1.4.1.3704.1.*`).
pub mod amd_oid {
    /// structVersion, INTEGER.
    pub const STRUCT_VERSION: &str = "1.3.6.1.4.1.3704.1.1";
    /// productName, IA5String.
    pub const PRODUCT_NAME: &str = "1.3.6.1.4.1.3704.1.2";
    /// blSPL, INTEGER.
    pub const BL_SPL: &str = "1.3.6.1.4.1.3704.1.3.1";
    /// teeSPL, INTEGER.
    pub const TEE_SPL: &str = "1.3.6.1.4.1.3704.1.3.2";
    /// snpSPL, INTEGER.
    pub const SNP_SPL: &str = "1.3.6.1.4.1.3704.1.3.3";
    /// ucodeSPL, INTEGER.
    pub const UCODE_SPL: &str = "1.3.6.1.4.1.3704.1.3.8";
    /// hwID: the 64-byte chip id, raw.
    pub const HW_ID: &str = "1.3.6.1.4.1.3704.1.4";
}

/// The files `provision` writes, in order.
pub const FILES: [&str; 6] = ["root.pem", "tsm-ak.pem", "ark.pem", "ask.pem", "vcek.pem", "platform-secret.bin"];

/// What to provision for.
#[derive(Clone, Copy, Debug)]
pub struct Params {
    /// The TSM image's measurement: the keys are derived for it.
    pub mrseam: [u8; DIGEST_BYTES],
    /// The TSM SVN; also the VCEK's snpSPL.
    pub tsm_svn: u16,
    /// Overwrite existing files.
    pub force: bool,
}

/// What was provisioned.
#[derive(Debug)]
pub struct Summary {
    /// Files written.
    pub files: Vec<PathBuf>,
    /// SHA-384 of the vendor root's DER.
    pub root_fingerprint: [u8; 48],
    /// SHA-384 of the ARK's DER.
    pub ark_fingerprint: [u8; 48],
    /// The reported TCB the VCEK is issued for.
    pub reported_tcb: [u8; 8],
    /// The chip id.
    pub chip_id: [u8; 64],
}

fn random<const N: usize>() -> Result<[u8; N], CertError> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| CertError(format!("random numbers: {e}")))?;
    Ok(b)
}

fn random_p384() -> Result<SigningKey, CertError> {
    loop {
        let b: [u8; 48] = random()?;
        if let Ok(k) = SigningKey::from_bytes(&b.into()) {
            return Ok(k);
        }
    }
}

/// DER INTEGER of a small non-negative value.
fn der_uint(v: u8) -> Vec<u8> {
    if v < 0x80 {
        vec![0x02, 0x01, v]
    } else {
        vec![0x02, 0x02, 0x00, v]
    }
}

/// The Milan TCB_VERSION for a TSM SVN: boot loader 0, TEE 0, SNP = the SVN (clamped to a byte),
/// microcode 0.
pub fn reported_tcb(tsm_svn: u16) -> [u8; 8] {
    let snp = u8::try_from(tsm_svn).unwrap_or(u8::MAX);
    [0, 0, 0, 0, 0, 0, snp, 0]
}

fn rsa_key() -> Result<rsa::pss::SigningKey<Sha384>, CertError> {
    let key = rsa::PrivateKey::new(&mut getrandom::SysRng, 4096)
        .map_err(|e| CertError(format!("RSA-4096 key generation: {e}")))?;
    Ok(rsa::pss::SigningKey::<Sha384>::new(key))
}

fn rsa_spki(key: &rsa::pss::SigningKey<Sha384>) -> Result<SubjectPublicKeyInfoOwned, CertError> {
    use x509_cert::der::Decode;
    let public = rsa::PublicKey::from(key.as_ref());
    let der = public.to_public_key_der().map_err(|e| CertError(format!("RSA public key: {e}")))?;
    SubjectPublicKeyInfoOwned::from_der(der.as_bytes()).map_err(|e| CertError(format!("RSA public key: {e}")))
}

fn write_file(path: &Path, bytes: &[u8], secret: bool) -> Result<(), CertError> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let _ = secret;
    let mut f = opts.open(path).map_err(|e| CertError(format!("{}: {e}", path.display())))?;
    f.write_all(bytes).map_err(|e| CertError(format!("{}: {e}", path.display())))
}

/// Provisions a platform into `dir` (created if missing).
///
/// # Errors
/// [`CertError`] naming what failed; an existing file without `force` fails before anything is
/// written.
pub fn provision(dir: &Path, params: &Params) -> Result<Summary, CertError> {
    fs::create_dir_all(dir).map_err(|e| CertError(format!("{}: {e}", dir.display())))?;
    let paths: Vec<PathBuf> = FILES.iter().map(|f| dir.join(f)).collect();
    if !params.force {
        if let Some(p) = paths.iter().find(|p| p.exists()) {
            return Err(CertError(format!("{} exists; pass --force to replace the platform", p.display())));
        }
    }

    let secret: [u8; 32] = random()?;
    let mut chip_id: [u8; 64] = random()?;
    // A leading 0x02 or 0x04 made older snpguest read the raw hwID as a DER INTEGER or OCTET
    // STRING and panic; a chip id with the top bit set is never mistaken for one.
    chip_id[0] |= 0x80;
    let tcb = reported_tcb(params.tsm_svn);
    let blob = SecretBlob::new(secret, tcb, chip_id);

    // The native chain.
    let root_key = random_p384()?;
    let root_name = x509::name("CN=seamless platform vendor root,O=seamless emulated platform")?;
    let root = x509::build_ecdsa(
        Profile { issuer: None, subject: root_name.clone(), ca: Some(Some(0)), extra: vec![] },
        1,
        x509::p384_spki(root_key.verifying_key())?,
        &root_key,
    )?;
    let ak = derive_attestation_key(&secret, &params.mrseam);
    let ak_cert = x509::build_ecdsa(
        Profile {
            issuer: Some(root_name),
            subject: x509::name("CN=seamless TSM attestation key,O=seamless emulated platform")?,
            ca: None,
            extra: vec![
                x509::raw_extension(OID_MRSEAM, &params.mrseam)?,
                x509::raw_extension(OID_TSM_SVN, &params.tsm_svn.to_le_bytes())?,
            ],
        },
        2,
        x509::p384_spki(ak.verifying_key())?,
        &root_key,
    )?;

    // The SNP chain.
    let ark_key = rsa_key()?;
    let ask_key = rsa_key()?;
    let ark_name = x509::name("CN=ARK-Milan,OU=seamless emulated platform,O=seamless")?;
    let ask_name = x509::name("CN=SEV-Milan,OU=seamless emulated platform,O=seamless")?;
    let ark = x509::build_rsa_pss(
        Profile { issuer: None, subject: ark_name.clone(), ca: Some(Some(1)), extra: vec![] },
        1,
        rsa_spki(&ark_key)?,
        &ark_key,
    )?;
    let ask = x509::build_rsa_pss(
        Profile { issuer: Some(ark_name), subject: ask_name.clone(), ca: Some(Some(0)), extra: vec![] },
        2,
        rsa_spki(&ask_key)?,
        &ark_key,
    )?;
    let vcek = derive_vcek_key(&secret, &params.mrseam);
    let product = {
        let name = b"Milan-B0";
        let mut v = vec![0x16, name.len() as u8];
        v.extend_from_slice(name);
        v
    };
    let vcek_cert = x509::build_rsa_pss(
        Profile {
            issuer: Some(ask_name),
            subject: x509::name("CN=SEV-VCEK,OU=seamless emulated platform,O=seamless")?,
            ca: None,
            extra: vec![
                x509::raw_extension(amd_oid::STRUCT_VERSION, &der_uint(1))?,
                x509::raw_extension(amd_oid::PRODUCT_NAME, &product)?,
                x509::raw_extension(amd_oid::BL_SPL, &der_uint(tcb[0]))?,
                x509::raw_extension(amd_oid::TEE_SPL, &der_uint(tcb[1]))?,
                x509::raw_extension(amd_oid::SNP_SPL, &der_uint(tcb[6]))?,
                x509::raw_extension("1.3.6.1.4.1.3704.1.3.4", &der_uint(0))?,
                x509::raw_extension("1.3.6.1.4.1.3704.1.3.5", &der_uint(0))?,
                x509::raw_extension("1.3.6.1.4.1.3704.1.3.6", &der_uint(0))?,
                x509::raw_extension("1.3.6.1.4.1.3704.1.3.7", &der_uint(0))?,
                x509::raw_extension(amd_oid::UCODE_SPL, &der_uint(tcb[7]))?,
                x509::raw_extension(amd_oid::HW_ID, &chip_id)?,
            ],
        },
        3,
        x509::p384_spki(vcek.verifying_key())?,
        &ask_key,
    )?;

    // Everything is built; only the writes remain.
    let contents: [(Vec<u8>, bool); 6] = [
        (x509::to_pem(&root)?.into_bytes(), false),
        (x509::to_pem(&ak_cert)?.into_bytes(), false),
        (x509::to_pem(&ark)?.into_bytes(), false),
        (x509::to_pem(&ask)?.into_bytes(), false),
        (x509::to_pem(&vcek_cert)?.into_bytes(), false),
        (blob.to_bytes().to_vec(), true),
    ];
    for (path, (bytes, secret)) in paths.iter().zip(contents.iter()) {
        write_file(path, bytes, *secret)?;
    }
    Ok(Summary {
        files: paths,
        root_fingerprint: x509::fingerprint(&root)?,
        ark_fingerprint: x509::fingerprint(&ark)?,
        reported_tcb: tcb,
        chip_id,
    })
}

/// The MRSEAM and TSM SVN an attestation-key certificate names, if it carries the extensions.
pub fn certified_for(cert: &x509_cert::Certificate) -> (Option<[u8; 48]>, Option<u16>) {
    let mut mrseam = None;
    let mut svn = None;
    for ext in cert.tbs_certificate().extensions().into_iter().flatten() {
        let id = ext.extn_id.to_string();
        let v = ext.extn_value.as_bytes();
        if id == OID_MRSEAM {
            mrseam = <[u8; 48]>::try_from(v).ok();
        } else if id == OID_TSM_SVN {
            svn = <[u8; 2]>::try_from(v).ok().map(u16::from_le_bytes);
        }
    }
    (mrseam, svn)
}

/// A one-line description of a summary's platform.
pub fn describe(s: &Summary) -> String {
    format!(
        "vendor root SHA-384 {}; ARK SHA-384 {}; reported TCB {}; chip id {}…",
        hex::encode(&s.root_fingerprint),
        hex::encode(&s.ark_fingerprint),
        hex::encode(&s.reported_tcb),
        hex::encode(&s.chip_id[..8])
    )
}
