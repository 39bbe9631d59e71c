//! The TSM's attestation through the guest ABI: provisioned from the platform secret blob, the
//! report a TD asks for over its nonce binds its measurements and the evidence of its running
//! device, verifies with the key `attest provision` certifies, and its SNP-format export with the
//! emulated VCEK. The evidence the host ships beside it is bound by the report's digests.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use attest::evidence::{Evidence, EvidenceWriter, RecordType};
use attest::platform::SecretBlob;
use attest::report::{Report, TdiState};
use seamless_harness::assign::{device_config, pfn, FUNCTION, LOCK_FLAGS};
use seamless_harness::driver::{Machine, IDENTITY, PRIVATE_BASE};
use tdisp_device::Device;
use tsm::abi::guest::leaf as g;
use tsm::abi::host::leaf as h;
use tsm::addr::PageSize;
use tsm::attestation::ProvisionError;
use tsm::{Operand, Status};

const MIB: u64 = 1 << 20;

fn blob() -> SecretBlob {
    SecretBlob::new([0x42; 32], [3, 0, 0, 0, 0, 0, 8, 115], [0xc1; 64])
}

fn guest_pa(m: &mut Machine, tdr: u64, gpa: u64) -> u64 {
    let r = m.host(tsm::abi::host::leaf::MEM_SEPT_RD, gpa, tdr, 0, 0);
    r.rcx & 0x000F_FFFF_FFFF_F000
}

#[test]
fn provisioning_takes_one_well_formed_blob() {
    let mut m = Machine::configured(16 * MIB);
    assert!(!m.tsm.provisioned());
    let mut bad = blob().to_bytes();
    bad[0] ^= 1;
    assert!(matches!(m.tsm.provision(&bad), Err(ProvisionError::Blob(_))));
    assert!(matches!(m.tsm.provision(&bad[..100]), Err(ProvisionError::Blob(_))));
    assert!(!m.tsm.provisioned(), "a refused blob changes nothing");
    m.tsm.provision(&blob().to_bytes()).unwrap();
    assert_eq!(m.tsm.provision(&blob().to_bytes()), Err(ProvisionError::AlreadyProvisioned));
    let want = attest::sign::derive_attestation_key(&[0x42; 32], &IDENTITY.mrseam);
    assert_eq!(m.tsm.attestation_public_key(), Some(*want.verifying_key()), "the key attest provision certifies");
}

#[test]
fn a_td_with_a_running_device_gets_a_report_that_binds_the_device_evidence() {
    let mut m = Machine::configured(64 * MIB);
    let td = m.running_td();
    m.aug_accept(&td, 0x1000, PageSize::Size4K);
    m.aug_accept(&td, 0x2000, PageSize::Size4K);
    let vcpu = td.vcpus[0];
    // Not provisioned yet: no key, no report.
    let r = m.guest(vcpu, g::MR_ATTEST, 0x1000, 0x2000, 0);
    assert_eq!(r.regs.status(), Status::ATTESTATION_NOT_PROVISIONED);
    m.tsm.provision(&blob().to_bytes()).unwrap();

    let mut dev = Device::new(device_config()).unwrap();
    let a = m.assign(&mut dev, &td);
    let nonce: Vec<u8> = (0..64u8).collect();
    let data_pa = guest_pa(&mut m, td.tdr, 0x2000);
    m.write(data_pa, &nonce);
    for bad in [(0x1008, 0x2000, 0, Operand::Rcx), (0x1000, 0x2004, 0, Operand::Rdx), (0x1000, 0x2000, 2, Operand::R8)]
    {
        let r = m.guest(vcpu, g::MR_ATTEST, bad.0, bad.1, bad.2);
        assert_eq!(r.regs.status(), Status::OPERAND_INVALID.with_operand(bad.3));
    }
    let r = m.guest(vcpu, g::MR_ATTEST, 0x1000, 0x2000, 0);
    assert_eq!(r.regs.status(), Status::SUCCESS);
    assert_eq!(r.regs.r9, 1200);
    let out_pa = guest_pa(&mut m, td.tdr, 0x1000);
    let bytes = m.read(out_pa, 1200);
    let report = Report::read_from(&bytes).unwrap();

    // Signed by the provisioned key, over the TD's nonce and measurements.
    let key = attest::sign::derive_attestation_key(&[0x42; 32], &IDENTITY.mrseam);
    assert_eq!(attest::sign::verify(&report, key.verifying_key()), Ok(()));
    assert_eq!(&report.report_data[..], &nonce[..]);
    let tdreport = m.guest(vcpu, g::MR_REPORT, 0x1000, 0x2000, 0);
    assert_eq!(tdreport.regs.status(), Status::SUCCESS);
    let tdreport = attest::tdreport::TdReport::read_from(&m.read(out_pa, 1024)).unwrap();
    assert_eq!(report.td.mr_td, tdreport.td_info.mr_td, "the same MRTD the TDREPORT shows");

    // One device entry: the running TDI with its digests.
    let dev_entry = report.devices()[0];
    assert_eq!(report.devices().len(), 1);
    assert_eq!(dev_entry.tdi_state(), Some(TdiState::Run));
    assert_eq!(dev_entry.lock_flags(), LOCK_FLAGS as u16);
    assert_eq!(dev_entry.function_id().rid(), FUNCTION as u16);
    let ev = m.tsm.tdi_evidence(pfn(a.tdi)).unwrap();
    assert_eq!(dev_entry.interface_report_sha384, ev.report_digest);

    // The bundle the host builds from the TSM's evidence is the one the report vouches for.
    let mut w = EvidenceWriter::new();
    w.push(RecordType::CertChain, 0, ev.chain).unwrap();
    w.push(RecordType::Vca, 0, ev.vca).unwrap();
    w.push(RecordType::Measurements, 0, ev.measurements).unwrap();
    w.push(RecordType::InterfaceReport, 0, ev.report).unwrap();
    let bundle = w.finish();
    let evidence = Evidence::parse(&bundle).unwrap();
    assert_eq!(attest::evidence::binds(&report, &evidence), Ok(()));
    // A host that swaps a blob is caught.
    let mut w = EvidenceWriter::new();
    w.push(RecordType::CertChain, 0, ev.chain).unwrap();
    w.push(RecordType::Vca, 0, ev.vca).unwrap();
    w.push(RecordType::Measurements, 0, ev.measurements).unwrap();
    w.push(RecordType::InterfaceReport, 0, &ev.report[..ev.report.len() - 1]).unwrap();
    let forged = w.finish();
    assert!(attest::evidence::binds(&report, &Evidence::parse(&forged).unwrap()).is_err());

    // The SNP-format export of the same report, signed by the emulated VCEK.
    let r = m.guest(vcpu, g::MR_ATTEST, 0x1000, 0x2000, 1);
    assert_eq!((r.regs.status(), r.regs.r9), (Status::SUCCESS, 1184));
    let snp = attest::snp::SnpReport::read_from(&m.read(out_pa, 1184)).unwrap();
    let vcek = attest::sign::derive_vcek_key(&[0x42; 32], &IDENTITY.mrseam);
    assert_eq!(snp.verify(vcek.verifying_key()), Ok(()));
    assert_eq!(snp.to_bytes()[0x50..0x80], report.digest(), "REPORT_DATA binds the native report");
}

/// Reads record `kind` of the TDI through SEAMLESS.TDI.EVIDENCE.RD, a page at a time.
fn evidence_rd(m: &mut Machine, tdi: u64, kind: RecordType, page: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let r = m.host(h::TDI_EVIDENCE_RD, tdi, kind as u64, out.len() as u64, page);
        assert_eq!(r.status(), Status::SUCCESS, "{kind:?} at {}", out.len());
        out.extend_from_slice(&m.read(page, r.rdx as usize));
        if out.len() as u64 == r.rcx {
            return out;
        }
        assert_eq!(r.rdx, 4096, "a short copy before the end");
    }
}

#[test]
fn tdi_evidence_rd_rejects_each_bad_operand_in_check_order_and_writes_nothing() {
    let mut m = Machine::new(64 * MIB);
    let r = m.host(h::TDI_EVIDENCE_RD, 0, 1, 0, 0);
    assert_eq!(r.status(), Status::SYS_NOT_READY);
    let mut m = Machine::configured(64 * MIB);
    let td = m.running_td();
    let mut dev = Device::new(device_config()).unwrap();
    let a = m.assign(&mut dev, &td);
    let page = m.scratch();
    let outside = 0xFFFF_F000_0000;
    let cases = [
        (a.tdi + 8, 1, 0, page, Status::OPERAND_INVALID.with_operand(Operand::Rcx)),
        (outside, 1, 0, page, Status::OPERAND_ADDR_RANGE_ERROR.with_operand(Operand::Rcx)),
        (td.tdr, 1, 0, page, Status::PAGE_METADATA_INCORRECT.with_operand(Operand::Rcx)),
        (a.tdi, 0, 0, page, Status::OPERAND_INVALID.with_operand(Operand::Rdx)),
        (a.tdi, 5, 0, page, Status::OPERAND_INVALID.with_operand(Operand::Rdx)),
        (a.tdi, 1, 0, page + 8, Status::OPERAND_INVALID.with_operand(Operand::R9)),
        (a.tdi, 1, 0, PRIVATE_BASE, Status::OPERAND_ADDR_RANGE_ERROR.with_operand(Operand::R9)),
        (a.tdi, 1, 0, td.tdr, Status::PAGE_METADATA_INCORRECT.with_operand(Operand::R9)),
        (a.tdi, 4, 1 << 20, page, Status::OPERAND_INVALID.with_operand(Operand::R8)),
    ];
    for (i, (rcx, rdx, r8, r9, want)) in cases.into_iter().enumerate() {
        let writes = m.tsm.platform().mem.writes();
        let r = m.host(h::TDI_EVIDENCE_RD, rcx, rdx, r8, r9);
        assert_eq!(r.status(), want, "case {i}");
        assert_eq!((r.rcx, r.rdx), (0, 0), "case {i}: no output on an error");
        assert_eq!(m.tsm.platform().mem.writes(), writes, "case {i}: a refused call writes nothing");
    }
}

#[test]
fn tdi_evidence_rd_happy_path_gives_the_host_the_evidence_the_report_binds() {
    let mut m = Machine::configured(64 * MIB);
    let td = m.running_td();
    let mut dev = Device::new(device_config()).unwrap();
    let a = m.assign(&mut dev, &td);
    let page = m.scratch();
    let ev = m.tsm.tdi_evidence(pfn(a.tdi)).unwrap();
    let want: [(RecordType, Vec<u8>); 4] = [
        (RecordType::CertChain, ev.chain.to_vec()),
        (RecordType::Vca, ev.vca.to_vec()),
        (RecordType::Measurements, ev.measurements.to_vec()),
        (RecordType::InterfaceReport, ev.report.to_vec()),
    ];
    let chain = want[0].1.clone();
    for (kind, bytes) in want {
        assert_eq!(evidence_rd(&mut m, a.tdi, kind, page), bytes, "{kind:?}");
    }
    // From an offset: the rest of the record; at its end: nothing left to copy.
    let (len, half) = (chain.len() as u64, chain.len() as u64 / 2);
    let r = m.host(h::TDI_EVIDENCE_RD, a.tdi, RecordType::CertChain as u64, half, page);
    assert_eq!((r.status(), r.rcx, r.rdx), (Status::SUCCESS, len, len - half));
    assert_eq!(m.read(page, (len - half) as usize), chain[half as usize..]);
    let r = m.host(h::TDI_EVIDENCE_RD, a.tdi, RecordType::CertChain as u64, len, page);
    assert_eq!((r.status(), r.rcx, r.rdx), (Status::SUCCESS, len, 0));
}

/// The harness machine as the host agent's CPU: SEAMCALL a direct call, a clock that does not
/// matter here.
struct AgentCpu<'m>(&'m mut Machine);

impl tsm_client::Seamcall for AgentCpu<'_> {
    fn seamcall(&mut self, regs: &mut tsm::Regs) {
        tsm_client::Seamcall::seamcall(self.0, regs);
    }
}

impl tsm_client::HostMemory for AgentCpu<'_> {
    fn read(&mut self, pa: u64, buf: &mut [u8]) {
        tsm_client::HostMemory::read(self.0, pa, buf);
    }
    fn write(&mut self, pa: u64, data: &[u8]) {
        tsm_client::HostMemory::write(self.0, pa, data);
    }
    fn donate(&mut self) -> Option<u64> {
        tsm_client::HostMemory::donate(self.0)
    }
    fn scratch(&mut self) -> Option<u64> {
        tsm_client::HostMemory::scratch(self.0)
    }
    fn release(&mut self, pa: u64) {
        tsm_client::HostMemory::release(self.0, pa);
    }
    fn donated(&self) -> (u64, u64) {
        tsm_client::HostMemory::donated(self.0)
    }
}

impl seamless_host::Cpu for AgentCpu<'_> {
    fn tsc(&self) -> seamless_drivers::tsc::Tsc {
        seamless_drivers::tsc::Tsc::with_hz(1_000_000_000)
    }
    fn tsm_ticks(&self) -> u64 {
        0
    }
}

/// The host agent's own flow (`seamless_host::evidence::tdi_bundle`, what its binary runs with
/// SEAMCALL) builds, through SEAMLESS.TDI.EVIDENCE.RD alone, the bundle the TD's report binds.
#[test]
fn the_host_agent_s_evidence_bundle_is_the_one_the_report_binds() {
    let mut m = Machine::configured(64 * MIB);
    let td = m.running_td();
    m.aug_accept(&td, 0x1000, PageSize::Size4K);
    m.aug_accept(&td, 0x2000, PageSize::Size4K);
    m.tsm.provision(&blob().to_bytes()).unwrap();
    let mut dev = Device::new(device_config()).unwrap();
    let a = m.assign(&mut dev, &td);
    let r = m.guest(td.vcpus[0], g::MR_ATTEST, 0x1000, 0x2000, 0);
    assert_eq!(r.regs.status(), Status::SUCCESS);
    let out_pa = guest_pa(&mut m, td.tdr, 0x1000);
    let report = Report::read_from(&m.read(out_pa, 1200)).unwrap();

    let mut buf = vec![0u8; 16 * 1024];
    let n = seamless_host::evidence::tdi_bundle(&mut AgentCpu(&mut m), a.tdi, &mut buf).unwrap();
    let evidence = Evidence::parse(&buf[..n]).unwrap();
    assert_eq!(attest::evidence::binds(&report, &evidence), Ok(()));
    // A buffer too small for it appends nothing past what fits and says so.
    let mut small = vec![0u8; 64];
    let e = seamless_host::evidence::tdi_bundle(&mut AgentCpu(&mut m), a.tdi, &mut small).unwrap_err();
    assert!(matches!(e, seamless_host::evidence::EvidenceError::Full(_)), "{e:?}");
}

/// Where the device was measured travels into the report: byte 27 bit 0 of its device entry is
/// set for measurements inside the session (the default) and clear for a device the TSM measured
/// in the clear because it refused them inside (the measurement policy), and the evidence binds
/// either way.
#[test]
fn the_report_says_where_the_device_was_measured() {
    for (session_measurements_error, in_session) in [(None, true), (Some(0x07), false)] {
        let mut m = Machine::configured(64 * MIB);
        let td = m.running_td();
        m.aug_accept(&td, 0x1000, PageSize::Size4K);
        m.aug_accept(&td, 0x2000, PageSize::Size4K);
        m.tsm.provision(&blob().to_bytes()).unwrap();
        let mut c = device_config();
        c.session_measurements_error = session_measurements_error;
        let mut dev = Device::new(c).unwrap();
        let a = m.assign(&mut dev, &td);
        let r = m.guest(td.vcpus[0], g::MR_ATTEST, 0x1000, 0x2000, 0);
        assert_eq!(r.regs.status(), Status::SUCCESS);
        let out_pa = guest_pa(&mut m, td.tdr, 0x1000);
        let bytes = m.read(out_pa, 1200);
        let report = Report::read_from(&bytes).unwrap();
        let entry = report.devices()[0];
        assert_eq!(entry.measured_in_session(), in_session);
        // Byte 27 of the first device entry (at 400), as a verifier without this crate reads it.
        assert_eq!(bytes[400 + 27] & 1, u8::from(in_session));
        let ev = m.tsm.tdi_evidence(pfn(a.tdi)).unwrap();
        let mut w = EvidenceWriter::new();
        w.push(RecordType::CertChain, 0, ev.chain).unwrap();
        w.push(RecordType::Vca, 0, ev.vca).unwrap();
        w.push(RecordType::Measurements, 0, ev.measurements).unwrap();
        w.push(RecordType::InterfaceReport, 0, ev.report).unwrap();
        let bundle = w.finish();
        assert_eq!(attest::evidence::binds(&report, &Evidence::parse(&bundle).unwrap()), Ok(()));
    }
}
