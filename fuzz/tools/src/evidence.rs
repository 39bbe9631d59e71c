//! A real attestation: a TD with a running device asks the TSM for a report over its nonce
//! through the guest ABI (as `tests/harness/tests/assign_attest.rs` does), the host builds the
//! evidence bundle from the TSM's evidence, `attest policy init`'s reference policy is written
//! from both, and the TSM exports the same report in the SNP format.
//!
//! The TSM is provisioned from the platform committed in `fuzz/fixtures/platform/` (what
//! `attest provision` writes: root and attestation-key certificates, the emulated ARK, ASK and
//! VCEK, the platform secret blob; test material, no real secret), so the fuzz targets check
//! signatures with the same certificates the corpus was made for.

use std::path::PathBuf;
use std::sync::OnceLock;

use attest::evidence::{EvidenceWriter, RecordType};
use attest::host::snp::SnpCerts;
use attest::platform::SecretBlob;
use attest::report::Report;
use p384::ecdsa::VerifyingKey;
use seamless_harness::assign::{device_config, pfn};
use seamless_harness::driver::{Machine, IDENTITY};
use tdisp_device::Device;
use tsm::abi::guest::leaf as g;
use tsm::abi::host::leaf as h;
use tsm::addr::PageSize;
use tsm::Status;

/// The committed platform: `attest provision` output.
pub fn platform_dir() -> PathBuf {
    crate::fuzz_dir().join("fixtures/platform")
}

/// Writes a fresh platform into [`platform_dir`] (`attest provision`, with the harness's TSM
/// identity); only the corpus generator calls it, and only when the directory is missing.
///
/// # Errors
/// The provisioning error.
pub fn provision_platform() -> Result<(), String> {
    let params = attest::host::provision::Params { mrseam: IDENTITY.mrseam, tsm_svn: IDENTITY.svn, force: false };
    attest::host::provision::provision(&platform_dir(), &params).map(|_| ()).map_err(|e| e.0)
}

/// What the verifier is handed, made once per process.
#[derive(Debug)]
pub struct Attestation {
    /// The native report (1200 bytes).
    pub report: Vec<u8>,
    /// The evidence bundle.
    pub evidence: Vec<u8>,
    /// The reference policy for both (TOML).
    pub policy: String,
    /// The SNP-format export of the same report (1184 bytes).
    pub snp: Vec<u8>,
    /// The nonce the TD put in its report.
    pub nonce: [u8; 64],
    /// The attestation key the platform's AK certificate certifies.
    pub key: VerifyingKey,
    /// The emulated AMD chain.
    pub snp_certs: SnpCerts,
}

/// A CC event log as the patched TDVF writes it when it accepts the attestation's device
/// (`attest::eventlog::writer`: the platform id, an RTMR[0] event, the three SPDM events of
/// device 0 in RTMR[1], then 64 bytes of 0xFF fill), and the attestation's report with its RTMRs
/// set to what the log replays to. That report is unsigned, which `verify_event_log` does not
/// look at: it binds a log to whatever report it is given.
#[derive(Debug)]
pub struct EventLogFixture {
    /// The log.
    pub log: Vec<u8>,
    /// The report it replays to.
    pub report: Report,
}

/// The event log fixture, made once per process.
pub fn event_log() -> &'static EventLogFixture {
    static L: OnceLock<EventLogFixture> = OnceLock::new();
    L.get_or_init(|| {
        use attest::eventlog::writer::{DeviceMeasurement, LogWriter};
        let a = attestation();
        let mut report = Report::read_from(&a.report).expect("the recorded report");
        let evidence = attest::evidence::Evidence::parse(&a.evidence).expect("the recorded bundle");
        let entry = report.devices()[0];
        let device = DeviceMeasurement {
            function_id: u64::from(entry.function_id().0),
            spdm_version: u16::from(entry.spdm_version),
            cert_chain_sha384: entry.cert_chain_sha384,
            transcript_sha384: entry.measurements_transcript_sha384,
            interface_report: evidence.get(RecordType::InterfaceReport, 0).expect("an interface report").to_vec(),
            pci: attest::eventlog::writer::QEMU_NVME_PCI,
        };
        let mut w = LogWriter::new();
        w.no_action(b"SP800-155 Event2").measure(1, 0x8000_0001, b"SecureBoot").device(&device);
        let log = w.finish_in_area(w.finish().len() + 64);
        report.td.rtmr = attest::eventlog::EventLog::parse(&log).expect("the writer's log").replay().rtmr;
        EventLogFixture { log, report }
    })
}

/// The attestation, made once per process (it needs the committed platform).
pub fn attestation() -> &'static Attestation {
    static A: OnceLock<Attestation> = OnceLock::new();
    A.get_or_init(|| attest_once().expect("fuzz/fixtures/platform: run the corpus generator"))
}

fn guest_pa(m: &mut Machine, tdr: u64, gpa: u64) -> u64 {
    let r = m.host(h::MEM_SEPT_RD, gpa, tdr, 0, 0);
    r.rcx & 0x000F_FFFF_FFFF_F000
}

fn attest_once() -> Result<Attestation, String> {
    let dir = platform_dir();
    let blob_bytes = std::fs::read(dir.join("platform-secret.bin")).map_err(|e| format!("{}: {e}", dir.display()))?;
    let blob = SecretBlob::read_from(&blob_bytes).map_err(|e| e.to_string())?;
    let snp_certs = SnpCerts::load(&dir)?;
    let key = *attest::sign::derive_attestation_key(&blob.secret, &IDENTITY.mrseam).verifying_key();

    let mut m = Machine::configured(64 << 20);
    let td = m.running_td();
    m.aug_accept(&td, 0x1000, PageSize::Size4K);
    m.aug_accept(&td, 0x2000, PageSize::Size4K);
    m.tsm.provision(&blob_bytes).map_err(|e| format!("{e:?}"))?;
    let mut dev = Device::new(device_config()).map_err(|e| format!("{e:?}"))?;
    let a = m.assign(&mut dev, &td);
    let nonce: [u8; 64] = core::array::from_fn(|i| i as u8);
    let data_pa = guest_pa(&mut m, td.tdr, 0x2000);
    m.write(data_pa, &nonce);
    let out_pa = guest_pa(&mut m, td.tdr, 0x1000);
    let r = m.guest(td.vcpus[0], g::MR_ATTEST, 0x1000, 0x2000, 0);
    if r.regs.status() != Status::SUCCESS {
        return Err(format!("MR.ATTEST: {:?}", r.regs.status()));
    }
    let report = m.read(out_pa, attest::report::REPORT_BYTES);
    let r = m.guest(td.vcpus[0], g::MR_ATTEST, 0x1000, 0x2000, 1);
    if r.regs.status() != Status::SUCCESS {
        return Err(format!("MR.ATTEST (SNP): {:?}", r.regs.status()));
    }
    let snp = m.read(out_pa, attest::snp::SNP_REPORT_BYTES);

    let ev = m.tsm.tdi_evidence(pfn(a.tdi)).ok_or("TDI evidence")?;
    let mut w = EvidenceWriter::new();
    for (kind, data) in [
        (RecordType::CertChain, ev.chain),
        (RecordType::Vca, ev.vca),
        (RecordType::Measurements, ev.measurements),
        (RecordType::InterfaceReport, ev.report),
    ] {
        w.push(kind, 0, data).map_err(|e| format!("{e:?}"))?;
    }
    let evidence = w.finish();
    let parsed_report = Report::read_from(&report).map_err(|e| e.to_string())?;
    let parsed = attest::evidence::Evidence::parse(&evidence).map_err(|e| e.to_string())?;
    let policy = attest::host::policy::reference_policy(&parsed_report, Some(&parsed), "fuzz corpus generator");
    Ok(Attestation { report, evidence, policy, snp, nonce, key, snp_certs })
}

#[cfg(test)]
mod tests {
    use super::*;
    use attest::verify::{self, Inputs};

    #[test]
    fn the_recorded_attestation_verifies_under_its_own_policy() {
        let a = attestation();
        let report = Report::read_from(&a.report).unwrap();
        let policy = attest::host::policy::parse(&a.policy).unwrap();
        let inputs = Inputs { report: &report, evidence: Some(&a.evidence), key: &a.key, nonce: Some(&a.nonce) };
        let verdict = verify::verify(&inputs, &policy);
        assert!(verdict.verified(), "{:?}", verdict.failures().collect::<Vec<_>>());
        let rows = attest::host::snp::verify(&a.snp, &a.snp_certs, Some(&report), Some(&a.nonce)).unwrap();
        let failed: Vec<_> = rows.iter().filter(|r| r.status == verify::Status::Fail).collect();
        assert!(failed.is_empty(), "{failed:?}");
    }

    #[test]
    fn the_event_log_fixture_verifies_against_its_report_and_the_bundle() {
        let f = event_log();
        let v = verify::verify_event_log(&f.report, Some(&attestation().evidence), &f.log);
        assert!(v.verified(), "{:?}", v.failures().collect::<Vec<_>>());
        assert!(v.checks().iter().all(|c| c.status == verify::Status::Pass), "{:?}", v.checks());
    }
}
