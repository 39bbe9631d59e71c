//! The SNP-format export: a 1184-byte AMD SEV-SNP ATTESTATION_REPORT (SEV-SNP ABI spec 56860,
//! version 3 layout) that stands for a native report, signed by the emulated VCEK, so that SNP
//! tooling (the `sev` crate, snpguest) verifies it against the provisioned ARK/ASK/VCEK chain.
//!
//! What binds what:
//!
//! * REPORT_DATA (64) = the native report's [`Report::digest`] (48) ‖ the first 16 bytes of the
//!   native report's report data (the verifier's nonce). The digest covers all 64 nonce bytes, so
//!   a verifier holding the native report checks everything through it; the 16 clear bytes let an
//!   SNP-only verifier check freshness with `--report-data`-style comparisons.
//! * MEASUREMENT = the TD's MRTD; REPORTED_TCB, CURRENT_TCB, COMMITTED_TCB and LAUNCH_TCB = the
//!   TCB of the provisioned VCEK certificate; CHIP_ID = the provisioned chip id (both from the
//!   [`SecretBlob`]).
//! * The signature is ECDSA P-384 over SHA-384 of bytes 0..0x2A0 by the key
//!   [`crate::sign::derive_vcek_key`] derives, stored as r and s little-endian, each zero-extended
//!   to 72 bytes.
//!
//! The builder is `no_std` and heap-free, so the TSM builds the export itself; host tools only
//! verify it.

use core::mem::{offset_of, size_of};
use core::ops::Range;

use p384::ecdsa::signature::hazmat::{PrehashSigner, PrehashVerifier};
use p384::ecdsa::Signature;
use sha2::{Digest, Sha384};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

use crate::platform::SecretBlob;
use crate::report::{Report, DIGEST_BYTES};
use crate::sign::{derive_vcek_key, SignatureError, SigningKey, VerifyingKey};

/// Bytes of an SNP attestation report.
pub const SNP_REPORT_BYTES: usize = 0x4A0;
/// The bytes the signature covers.
pub const SIGNED: Range<usize> = 0..0x2A0;
/// The report version written: 3 (the first with the CPUID fields the `sev` crate needs to tell
/// the CPU generation, and readable by every snpguest release since).
pub const VERSION: u32 = 3;
/// SIGNATURE_ALGO: ECDSA P-384 with SHA-384.
pub const SIG_ALGO_ECDSA_P384_SHA384: u32 = 1;
/// GUEST POLICY: bit 17 (reserved, must be one) and bit 16 (SMT allowed); ABI 0.0; no debug,
/// no migration agent.
pub const POLICY: u64 = 0x3_0000;
/// CPUID family, model, stepping of the emulated part: Milan (family 0x19, model 0x01), so that
/// the TCB bytes have the Milan layout.
pub const CPUID: [u8; 3] = [0x19, 0x01, 0x01];
/// The firmware version reported as CURRENT and COMMITTED (build, minor, major).
pub const FIRMWARE_VERSION: [u8; 3] = [0, 55, 1];
/// Bytes of the native digest at the start of REPORT_DATA.
pub const NATIVE_DIGEST: Range<usize> = 0..DIGEST_BYTES;
/// Bytes of REPORT_DATA holding the start of the nonce.
pub const NONCE_PREFIX: Range<usize> = DIGEST_BYTES..64;

/// ATTESTATION_REPORT, version 3. Every field is a byte array (integers little-endian).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct SnpReport {
    /// VERSION.
    pub version: [u8; 4],
    /// GUEST_SVN.
    pub guest_svn: [u8; 4],
    /// POLICY.
    pub policy: [u8; 8],
    /// FAMILY_ID.
    pub family_id: [u8; 16],
    /// IMAGE_ID.
    pub image_id: [u8; 16],
    /// VMPL.
    pub vmpl: [u8; 4],
    /// SIGNATURE_ALGO.
    pub signature_algo: [u8; 4],
    /// CURRENT_TCB.
    pub current_tcb: [u8; 8],
    /// PLATFORM_INFO.
    pub platform_info: [u8; 8],
    /// KEY_INFO: AUTHOR_KEY_EN, MASK_CHIP_KEY, SIGNING_KEY (0 = VCEK).
    pub key_info: [u8; 4],
    /// Reserved, zero.
    pub reserved0: [u8; 4],
    /// REPORT_DATA.
    pub report_data: [u8; 64],
    /// MEASUREMENT.
    pub measurement: [u8; 48],
    /// HOST_DATA.
    pub host_data: [u8; 32],
    /// ID_KEY_DIGEST.
    pub id_key_digest: [u8; 48],
    /// AUTHOR_KEY_DIGEST.
    pub author_key_digest: [u8; 48],
    /// REPORT_ID.
    pub report_id: [u8; 32],
    /// REPORT_ID_MA.
    pub report_id_ma: [u8; 32],
    /// REPORTED_TCB.
    pub reported_tcb: [u8; 8],
    /// CPUID_FAM_ID, CPUID_MOD_ID, CPUID_STEP.
    pub cpuid: [u8; 3],
    /// Reserved, zero.
    pub reserved1: [u8; 21],
    /// CHIP_ID.
    pub chip_id: [u8; 64],
    /// COMMITTED_TCB.
    pub committed_tcb: [u8; 8],
    /// CURRENT_BUILD, CURRENT_MINOR, CURRENT_MAJOR, reserved.
    pub current_version: [u8; 4],
    /// COMMITTED_BUILD, COMMITTED_MINOR, COMMITTED_MAJOR, reserved.
    pub committed_version: [u8; 4],
    /// LAUNCH_TCB.
    pub launch_tcb: [u8; 8],
    /// Reserved, zero.
    pub reserved2: [u8; 168],
    /// Signature R, little-endian, zero-extended.
    pub signature_r: [u8; 72],
    /// Signature S, little-endian, zero-extended.
    pub signature_s: [u8; 72],
    /// Reserved, zero.
    pub signature_reserved: [u8; 368],
}

const _: () = assert!(size_of::<SnpReport>() == SNP_REPORT_BYTES);
const _: () = assert!(offset_of!(SnpReport, guest_svn) == 0x04);
const _: () = assert!(offset_of!(SnpReport, policy) == 0x08);
const _: () = assert!(offset_of!(SnpReport, family_id) == 0x10);
const _: () = assert!(offset_of!(SnpReport, image_id) == 0x20);
const _: () = assert!(offset_of!(SnpReport, vmpl) == 0x30);
const _: () = assert!(offset_of!(SnpReport, signature_algo) == 0x34);
const _: () = assert!(offset_of!(SnpReport, current_tcb) == 0x38);
const _: () = assert!(offset_of!(SnpReport, platform_info) == 0x40);
const _: () = assert!(offset_of!(SnpReport, key_info) == 0x48);
const _: () = assert!(offset_of!(SnpReport, report_data) == 0x50);
const _: () = assert!(offset_of!(SnpReport, measurement) == 0x90);
const _: () = assert!(offset_of!(SnpReport, host_data) == 0xC0);
const _: () = assert!(offset_of!(SnpReport, id_key_digest) == 0xE0);
const _: () = assert!(offset_of!(SnpReport, author_key_digest) == 0x110);
const _: () = assert!(offset_of!(SnpReport, report_id) == 0x140);
const _: () = assert!(offset_of!(SnpReport, report_id_ma) == 0x160);
const _: () = assert!(offset_of!(SnpReport, reported_tcb) == 0x180);
const _: () = assert!(offset_of!(SnpReport, cpuid) == 0x188);
const _: () = assert!(offset_of!(SnpReport, chip_id) == 0x1A0);
const _: () = assert!(offset_of!(SnpReport, committed_tcb) == 0x1E0);
const _: () = assert!(offset_of!(SnpReport, current_version) == 0x1E8);
const _: () = assert!(offset_of!(SnpReport, committed_version) == 0x1EC);
const _: () = assert!(offset_of!(SnpReport, launch_tcb) == 0x1F0);
const _: () = assert!(offset_of!(SnpReport, reserved2) == 0x1F8);
const _: () = assert!(offset_of!(SnpReport, signature_r) == SIGNED.end);
const _: () = assert!(offset_of!(SnpReport, signature_s) == 0x2E8);
const _: () = assert!(offset_of!(SnpReport, signature_reserved) == 0x330);

/// REPORT_DATA for a native report: its digest, then the first 16 bytes of its report data.
pub fn report_data(native: &Report) -> [u8; 64] {
    let mut out = [0u8; 64];
    out[NATIVE_DIGEST].copy_from_slice(&native.digest());
    out[NONCE_PREFIX].copy_from_slice(&native.report_data[..NONCE_PREFIX.len()]);
    out
}

impl SnpReport {
    /// The unsigned export of `native` on the platform `blob` describes.
    pub fn build(native: &Report, blob: &SecretBlob) -> SnpReport {
        let mut r = SnpReport::new_zeroed();
        r.version = VERSION.to_le_bytes();
        r.policy = POLICY.to_le_bytes();
        r.signature_algo = SIG_ALGO_ECDSA_P384_SHA384.to_le_bytes();
        r.current_tcb = blob.reported_tcb;
        r.reported_tcb = blob.reported_tcb;
        r.committed_tcb = blob.reported_tcb;
        r.launch_tcb = blob.reported_tcb;
        r.report_data = report_data(native);
        r.measurement = native.td.mr_td;
        // REPORT_ID names this guest's launch; REPORT_ID_MA is all ones: no migration agent.
        let id: [u8; 48] =
            Sha384::new().chain_update(b"seamless/snp/report-id/v1").chain_update(native.td.mr_td).finalize().into();
        r.report_id.copy_from_slice(&id[..32]);
        r.report_id_ma = [0xff; 32];
        r.cpuid = CPUID;
        r.chip_id = blob.chip_id;
        r.current_version[..3].copy_from_slice(&FIRMWARE_VERSION);
        r.committed_version[..3].copy_from_slice(&FIRMWARE_VERSION);
        r
    }

    /// Copies an export out of untrusted bytes (any 1184 bytes; the signature says whether it is
    /// one).
    ///
    /// # Errors
    /// The length found, if it is not [`SNP_REPORT_BYTES`].
    pub fn read_from(bytes: &[u8]) -> Result<SnpReport, usize> {
        SnpReport::read_from_bytes(bytes).map_err(|_| bytes.len())
    }

    /// The report as its bytes.
    pub fn to_bytes(&self) -> [u8; SNP_REPORT_BYTES] {
        let mut out = [0u8; SNP_REPORT_BYTES];
        out.copy_from_slice(self.as_bytes());
        out
    }

    /// SHA-384 of the signed bytes.
    pub fn digest(&self) -> [u8; DIGEST_BYTES] {
        Sha384::digest(&self.as_bytes()[SIGNED]).into()
    }

    /// Signs the report in place with `vcek`.
    ///
    /// # Errors
    /// [`SignatureError::SigningFailed`] if the signer fails; the report is then unchanged.
    pub fn sign(&mut self, vcek: &SigningKey) -> Result<(), SignatureError> {
        let signature: Signature = vcek.sign_prehash(&self.digest()).map_err(|_| SignatureError::SigningFailed)?;
        let bytes = signature.to_bytes();
        let (r, s) = bytes.split_at(48);
        // All checks passed.
        self.signature_r = [0; 72];
        self.signature_s = [0; 72];
        for (dst, src) in self.signature_r.iter_mut().zip(r.iter().rev()) {
            *dst = *src;
        }
        for (dst, src) in self.signature_s.iter_mut().zip(s.iter().rev()) {
            *dst = *src;
        }
        self.signature_reserved = [0; 368];
        Ok(())
    }

    /// Checks the signature under `vcek`.
    ///
    /// # Errors
    /// [`SignatureError::Malformed`] if r or s do not fit 48 bytes or are no signature,
    /// [`SignatureError::Mismatch`] if they do not verify.
    pub fn verify(&self, vcek: &VerifyingKey) -> Result<(), SignatureError> {
        if self.signature_r[48..].iter().chain(&self.signature_s[48..]).any(|&b| b != 0) {
            return Err(SignatureError::Malformed);
        }
        let mut be = [0u8; 96];
        for (dst, src) in be[..48].iter_mut().zip(self.signature_r[..48].iter().rev()) {
            *dst = *src;
        }
        for (dst, src) in be[48..].iter_mut().zip(self.signature_s[..48].iter().rev()) {
            *dst = *src;
        }
        let signature = Signature::from_slice(&be).map_err(|_| SignatureError::Malformed)?;
        vcek.verify_prehash(&self.digest(), &signature).map_err(|_| SignatureError::Mismatch)
    }
}

/// The TSM's whole export step: derives the VCEK from the platform secret and the TSM
/// measurement, builds the export of `native` and signs it.
///
/// # Errors
/// [`SignatureError::SigningFailed`] if the signer fails.
pub fn export(
    native: &Report,
    blob: &SecretBlob,
    tsm_measurement: &[u8; DIGEST_BYTES],
) -> Result<SnpReport, SignatureError> {
    let vcek = derive_vcek_key(&blob.secret, tsm_measurement);
    let mut r = SnpReport::build(native, blob);
    r.sign(&vcek)?;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::sample;

    fn blob() -> SecretBlob {
        SecretBlob::new([9; 32], [3, 0, 0, 0, 0, 0, 8, 115], [0xc1; 64])
    }

    #[test]
    fn export_binds_the_native_report_and_verifies() {
        let native = sample();
        let r = export(&native, &blob(), &[0x5e; 48]).unwrap();
        let b = r.to_bytes();
        assert_eq!(&b[0..4], &[3, 0, 0, 0]);
        assert_eq!(&b[0x50..0x80], &native.digest());
        assert_eq!(&b[0x80..0x90], &native.report_data[..16]);
        assert_eq!(&b[0x90..0xC0], &native.td.mr_td);
        assert_eq!(&b[0x180..0x188], &[3, 0, 0, 0, 0, 0, 8, 115]);
        assert_eq!(&b[0x188..0x18B], &[0x19, 0x01, 0x01]);
        assert_eq!(&b[0x1A0..0x1E0], &[0xc1; 64]);
        let vcek = derive_vcek_key(&[9; 32], &[0x5e; 48]);
        assert_eq!(r.verify(vcek.verifying_key()), Ok(()));
        let other = derive_vcek_key(&[9; 32], &[0x5f; 48]);
        assert_eq!(r.verify(other.verifying_key()), Err(SignatureError::Mismatch));
    }

    #[test]
    fn every_single_bit_flip_of_the_signed_bytes_is_rejected() {
        let r = export(&sample(), &blob(), &[0x5e; 48]).unwrap();
        let vk = *derive_vcek_key(&[9; 32], &[0x5e; 48]).verifying_key();
        let good = r.to_bytes();
        for byte in SIGNED.start..0x330 {
            for bit in 0..8 {
                let mut b = good;
                b[byte] ^= 1 << bit;
                let t = SnpReport::read_from(&b).unwrap();
                assert!(t.verify(&vk).is_err(), "flip of byte {byte:#x} bit {bit} verified");
            }
        }
    }

    #[test]
    fn high_signature_bytes_must_be_zero() {
        let mut r = export(&sample(), &blob(), &[0x5e; 48]).unwrap();
        r.signature_s[60] = 1;
        let vk = *derive_vcek_key(&[9; 32], &[0x5e; 48]).verifying_key();
        assert_eq!(r.verify(&vk), Err(SignatureError::Malformed));
        assert_eq!(SnpReport::read_from(&[0; 10]), Err(10));
    }
}
