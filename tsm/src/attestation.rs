//! The TSM's attestation: keys derived from the platform secret the firmware hands over at boot,
//! and the native report (and its SNP-format export) a TD asks for over its nonce, binding the
//! TD's measurements to the evidence of every device interface assigned to it.
//!
//! The keys never leave the TSM and are never compiled in: `provision` takes the 128-byte
//! `attest::platform::SecretBlob` and derives the attestation key and the emulated VCEK with
//! HKDF over the secret and the TSM's own measurement (MRSEAM), as `attest provision` does to
//! certify their public halves.

use attest::platform::{BlobError, SecretBlob};
use attest::report::{
    DeviceEntry, FunctionId, Report, SpdmAlgorithms, TdIdentity, MAX_DEVICES, REPORT_BYTES, REPORT_DATA_BYTES,
};
use p384::ecdsa::SigningKey;

use crate::error::{TsmError, TsmResult};
use crate::measure;
use crate::platform::Platform;
use crate::spdm::{alg, MeasurementHash, Negotiated};
use crate::td::{Td, TDCS_MR};
use crate::Tsm;

/// Bytes of the SNP-format export.
pub const SNP_EXPORT_BYTES: usize = attest::snp::SNP_REPORT_BYTES;

/// What `provision` keeps.
#[derive(Clone)]
pub(crate) struct Keys {
    pub(crate) blob: SecretBlob,
    pub(crate) attestation: SigningKey,
}

impl core::fmt::Debug for Keys {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Keys(<redacted>)")
    }
}

/// Why a platform secret was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProvisionError {
    /// The blob does not parse.
    Blob(BlobError),
    /// The TSM was provisioned already (keys are fixed for its lifetime).
    AlreadyProvisioned,
}

/// The report formats TDG.MR.ATTEST writes (R8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// The 1200-byte native report.
    Native,
    /// The 1184-byte SNP-format export of the native report, signed by the emulated VCEK.
    Snp,
}

impl Format {
    /// Decodes R8.
    pub const fn from_raw(raw: u64) -> Option<Format> {
        match raw {
            0 => Some(Format::Native),
            1 => Some(Format::Snp),
            _ => None,
        }
    }
}

/// The algorithms a connected device negotiated, as the report records them: the suite
/// ALGORITHMS selected and the measurement hash the device picked. (The report binds the chain
/// and the measurement transcript by SHA-384 whatever the suite: those digests are the TSM's own,
/// not the device's.)
pub fn negotiated_algorithms(n: &Negotiated) -> SpdmAlgorithms {
    SpdmAlgorithms {
        base_asym: n.suite.asym.bit(),
        base_hash: n.suite.hash.bit(),
        measurement_hash: match n.measurement_hash {
            MeasurementHash::RawBitStreamOnly => alg::MEAS_HASH_RAW_BIT_STREAM,
            MeasurementHash::Sha256 => alg::MEAS_HASH_SHA256,
            MeasurementHash::Sha384 => alg::MEAS_HASH_SHA384,
            MeasurementHash::Sha512 => alg::MEAS_HASH_SHA512,
        },
        dhe: n.suite.dhe.bit(),
        aead: n.suite.aead.bit(),
        key_schedule: alg::KEY_SCHEDULE_SPDM,
        measurement_spec: alg::MEAS_SPEC_DMTF,
    }
}

impl<P: Platform> Tsm<P> {
    /// Hands the TSM its platform secret (the firmware reads it from fw_cfg at boot, before it
    /// serves the host). Keys are derived here and kept; the blob's bytes are not read again.
    ///
    /// # Errors
    /// [`ProvisionError`]; nothing changes.
    pub fn provision(&mut self, blob: &[u8]) -> Result<(), ProvisionError> {
        if self.keys.is_some() {
            return Err(ProvisionError::AlreadyProvisioned);
        }
        let blob = SecretBlob::read_from(blob).map_err(ProvisionError::Blob)?;
        let attestation = attest::sign::derive_attestation_key(&blob.secret, &self.identity.mrseam);
        self.keys = Some(Keys { blob, attestation });
        Ok(())
    }

    /// True once `provision` succeeded.
    pub fn provisioned(&self) -> bool {
        self.keys.is_some()
    }

    /// The attestation key's public half (what `attest provision` certifies).
    pub fn attestation_public_key(&self) -> Option<p384::ecdsa::VerifyingKey> {
        self.keys.as_ref().map(|k| *k.attestation.verifying_key())
    }

    /// The unsigned native report of TD slot `td` over `report_data`: TSM identity, TD
    /// identity, and one device entry per TDI bound to the TD (in slot order). TDI.CREATE
    /// keeps a TD at [`MAX_DEVICES`] TDIs; a TD with more is refused (`METADATA_CORRUPT`), never
    /// reported with some of its devices left out.
    pub(crate) fn native_report(&self, td: &Td, report_data: &[u8; REPORT_DATA_BYTES]) -> TsmResult<Report> {
        let params = td.params.ok_or(TsmError::Corrupt)?;
        let mr = td.tdcs[TDCS_MR];
        let mut r = Report::new();
        r.tsm.set_svn(self.identity.svn);
        r.tsm.mr_seam = self.identity.mrseam;
        let mut rtmr = [[0u8; 48]; measure::RTMRS];
        for (i, slot) in rtmr.iter_mut().enumerate() {
            *slot = measure::read_mr(&self.platform, mr, measure::MR_RTMR0 + 48 * i);
        }
        r.td = TdIdentity {
            mr_td: measure::read_mr(&self.platform, mr, measure::MR_MRTD),
            rtmr,
            attributes: params.attributes.to_le_bytes(),
            xfam: params.xfam.to_le_bytes(),
        };
        r.report_data = *report_data;
        let mut devices = [DeviceEntry::zeroed(); MAX_DEVICES];
        let mut count = 0;
        for tdi in self.tdis.iter().flatten().filter(|t| t.tdr == td.tdr) {
            let dst = devices.get_mut(count).ok_or(TsmError::Corrupt)?;
            let pdev = self.pdev(tdi.pdev)?;
            let e = pdev.evidence.ok_or(TsmError::Corrupt)?;
            let mut d = DeviceEntry::zeroed();
            d.set_function_id(FunctionId::new((tdi.function >> 16) as u8, tdi.function as u16));
            d.set_tdi_state(tdi.state.tdisp());
            d.spdm_version = e.negotiated.version;
            d.set_lock_flags(tdi.lock_flags);
            d.set_algorithms(&negotiated_algorithms(&e.negotiated));
            d.set_measured_in_session(e.measurements_in_session);
            d.cert_chain_sha384 = e.chain_digest;
            d.measurements_transcript_sha384 = e.measurements_digest;
            d.interface_report_sha384 = tdi.report_digest;
            *dst = d;
            count += 1;
        }
        r.set_devices(&devices[..count]).map_err(|_| TsmError::Corrupt)?;
        Ok(r)
    }

    /// The signed report of `td` in `format`, into `out`; returns its length.
    pub(crate) fn signed_report(
        &self,
        td: &Td,
        report_data: &[u8; REPORT_DATA_BYTES],
        format: Format,
        out: &mut [u8; REPORT_BYTES],
    ) -> TsmResult<usize> {
        let keys = self.keys.as_ref().ok_or(TsmError::NotProvisioned)?;
        let mut report = self.native_report(td, report_data)?;
        attest::sign::sign(&mut report, &keys.attestation).map_err(|_| TsmError::Corrupt)?;
        match format {
            Format::Native => {
                out.copy_from_slice(&report.to_bytes());
                Ok(REPORT_BYTES)
            }
            Format::Snp => {
                let snp =
                    attest::snp::export(&report, &keys.blob, &self.identity.mrseam).map_err(|_| TsmError::Corrupt)?;
                out[..SNP_EXPORT_BYTES].copy_from_slice(&snp.to_bytes());
                Ok(SNP_EXPORT_BYTES)
            }
        }
    }
}
