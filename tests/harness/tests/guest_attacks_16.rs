//! Issue #16, the defects a TD (or a device feeding it) could use: each attack through the real
//! dispatcher, with the specific status it now gets and the machine unchanged afterwards.
//!
//! - defect 4: a guest buffer that would cross its page (TDG.TDI.RD's 96 bytes at 0xFC0), and a
//!   sweep of every guest leaf that reads or writes guest memory over every offset it allows;
//! - defect 6: a fifth TDI bound to one TD, whose report holds four;
//! - defect 8: MMIO.ACCEPT of another interface's page, named as a range of an interface that
//!   reports those frames but imported nothing;
//! - defect 9: a failed RECOLLECT after a good one: the evidence still hashes to the report.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use attest::evidence::{Evidence, EvidenceWriter, RecordType};
use attest::platform::SecretBlob;
use attest::report::Report;
use seamless_harness::assign::{device_config, pfn, Assignment, BAR_GPA, FUNCTION};
use seamless_harness::driver::{gpa_level, ok, Machine, TdHandle};
use tdisp_device::Device;
use tsm::abi::guest::leaf as g;
use tsm::abi::host::leaf as h;
use tsm::abi::host_pdev::mng;
use tsm::addr::PageSize;
use tsm::devices::MAX_TDIS_PER_TD;
use tsm::pdev::Pending;
use tsm::sept::SeptState;
use tsm::{GuestReturn, Operand, Regs, Status};

const MIB: u64 = 1 << 20;
const FN: u64 = FUNCTION as u64;

/// Everything a refused call must leave as it was.
#[derive(Debug, PartialEq)]
struct Snapshot {
    writes: u64,
    tds: Vec<Option<tsm::TdSummary>>,
    devices: String,
}

fn snapshot(m: &Machine, tdrs: &[u64]) -> Snapshot {
    Snapshot {
        writes: m.tsm.platform().mem.writes(),
        tds: tdrs.iter().map(|&t| m.tsm.td_summary(pfn(t))).collect(),
        devices: format!("{:?}", m.tsm.device_summaries()),
    }
}

#[track_caller]
fn refused(m: &mut Machine, tdrs: &[u64], status: Status, call: impl FnOnce(&mut Machine) -> Regs) {
    let before = snapshot(m, tdrs);
    let r = call(m);
    assert_eq!(r.status(), status, "got {:?}, wanted {status:?}", r.status());
    assert!(before == snapshot(m, tdrs), "a refused call changed the machine");
}

#[track_caller]
fn guest_refused(m: &mut Machine, tdrs: &[u64], status: Status, call: impl FnOnce(&mut Machine) -> GuestReturn) {
    let before = snapshot(m, tdrs);
    let r = call(m);
    assert_eq!(r.regs.status(), status, "got {:?}, wanted {status:?}", r.regs.status());
    assert_eq!(r.exit, None);
    assert!(before == snapshot(m, tdrs), "a refused guest call changed the machine");
}

fn blob() -> SecretBlob {
    SecretBlob::new([0x42; 32], [3, 0, 0, 0, 0, 0, 8, 115], [0xc1; 64])
}

/// The host frame behind a private GPA of the TD.
fn guest_pa(m: &mut Machine, tdr: u64, gpa: u64) -> u64 {
    m.host(h::MEM_SEPT_RD, gpa, tdr, 0, 0).rcx & 0x000F_FFFF_FFFF_F000
}

/// The native report of the TD (output at GPA 0x1000, REPORTDATA at 0x2000, both accepted).
fn report(m: &mut Machine, td: &TdHandle) -> Report {
    let r = m.guest(td.vcpus[0], g::MR_ATTEST, 0x1000, 0x2000, 0);
    assert_eq!(r.regs.status(), Status::SUCCESS, "{r:x?}");
    let pa = guest_pa(m, td.tdr, 0x1000);
    Report::read_from(&m.read(pa, r.regs.r9 as usize)).unwrap()
}

fn running() -> (Machine, TdHandle, Device, Assignment) {
    let mut m = Machine::configured(64 * MIB);
    let td = m.running_td();
    let mut dev = Device::new(device_config()).unwrap();
    let a = m.assign(&mut dev, &td);
    (m, td, dev, a)
}

// ---- defect 4: guest buffers stay inside their page ----------------------------------------

#[test]
fn tdi_rd_evidence_digests_across_a_page_are_refused_before_anything_is_written() {
    let (mut m, td, _dev, a) = running();
    let t = [td.tdr];
    m.aug_accept(&td, 0x7000, PageSize::Size4K);
    m.aug_accept(&td, 0x8000, PageSize::Size4K);
    let vcpu = td.vcpus[0];
    let next_page = guest_pa(&mut m, td.tdr, 0x8000);
    let before = m.read(next_page, 4096);
    // 96 bytes at offset 0xFC0 would run 32 bytes into whatever frame follows.
    guest_refused(&mut m, &t, Status::BUFFER_CROSSES_PAGE.with_operand(Operand::R8), |m| {
        m.guest(vcpu, g::TDI_RD, FN, 3, 0x7FC0)
    });
    assert_eq!(m.read(next_page, 4096), before, "the frame after the page is untouched");
    // The alignment and mapping checks still come first and name R8.
    guest_refused(&mut m, &t, Status::OPERAND_INVALID.with_operand(Operand::R8), |m| {
        m.guest(vcpu, g::TDI_RD, FN, 3, 0x7FE0)
    });
    // 48 bytes fit at 0xFC0, 96 at 0xF80: written exactly there.
    assert_eq!(m.guest(vcpu, g::TDI_RD, FN, 2, 0x7FC0).regs.status(), Status::SUCCESS);
    assert_eq!(m.guest(vcpu, g::TDI_RD, FN, 3, 0x7F80).regs.status(), Status::SUCCESS);
    let page = guest_pa(&mut m, td.tdr, 0x7000);
    let e = m.tsm.pdev_summary(pfn(a.pdev)).unwrap().evidence.unwrap();
    assert_eq!(m.read(page + 0xF80, 48), e.chain_digest);
    assert_eq!(m.read(page + 0xFB0, 48), e.measurements_digest);
    assert_eq!(m.read(next_page, 4096), before);
}

/// Every guest leaf that reads or writes a buffer in guest memory, at every offset of a page its
/// alignment allows: each call either succeeds or is refused, and none reaches the platform
/// with a range past its frame (the harness's memory panics on that, as the firmware stops).
#[test]
fn no_guest_leaf_reaches_past_its_page_at_any_offset() {
    let (mut m, td, _dev, _a) = running();
    m.tsm.provision(&blob().to_bytes()).unwrap();
    for gpa in [0x1000, 0x2000, 0x7000, 0x8000] {
        m.aug_accept(&td, gpa, PageSize::Size4K);
    }
    let vcpu = td.vcpus[0];
    // (leaf, the buffer's alignment, the call with the buffer at a GPA)
    type Call = fn(u64) -> Regs;
    let leaves: [(u64, u64, Call); 8] = [
        (g::MR_RTMR_EXTEND, 64, |gpa| Regs::call(g::MR_RTMR_EXTEND, gpa, 3, 0, 0)),
        (g::MR_REPORT, 1024, |gpa| Regs::call(g::MR_REPORT, gpa, 0x2000, 0, 0)),
        (g::MR_REPORT, 64, |gpa| Regs::call(g::MR_REPORT, 0x1000, gpa, 0, 0)),
        (g::MR_VERIFYREPORT, 256, |gpa| Regs::call(g::MR_VERIFYREPORT, gpa, 0, 0, 0)),
        (g::TDI_RD, 64, |gpa| Regs::call(g::TDI_RD, FN, 2, gpa, 0)),
        (g::TDI_RD, 64, |gpa| Regs::call(g::TDI_RD, FN, 3, gpa, 0)),
        (g::MR_ATTEST, 64, |gpa| Regs::call(g::MR_ATTEST, 0x1000, gpa, 0, 0)),
        (g::MR_ATTEST, 4096, |gpa| Regs::call(g::MR_ATTEST, gpa, 0x2000, 1, 0)),
    ];
    let mut crossing = 0;
    for (leaf, align, call) in leaves {
        for offset in (0..4096).step_by(align as usize) {
            let r = m.tsm.guest_call(vcpu, &call(0x8000 + offset));
            assert_eq!(r.exit, None, "leaf {leaf} at {offset:#x}");
            let s = r.regs.status();
            if s == Status::BUFFER_CROSSES_PAGE.with_operand(Operand::R8) {
                crossing += 1;
            } else {
                assert!(
                    s == Status::SUCCESS || s.code() == Status::INVALID_REPORTMACSTRUCT,
                    "leaf {leaf} at {offset:#x}: {s:?}"
                );
            }
        }
    }
    assert_eq!(crossing, 1, "only TDG.TDI.RD's 96 bytes at 0xFC0 cross a page");
}

// ---- defect 6: every TDI bound to a TD is in its report -------------------------------------

#[test]
fn a_fifth_tdi_bound_to_one_td_is_refused_so_the_report_lists_every_device() {
    let mut m = Machine::configured(64 * MIB);
    let td = m.running_td();
    let other = m.running_td();
    m.tsm.provision(&blob().to_bytes()).unwrap();
    m.aug_accept(&td, 0x1000, PageSize::Size4K);
    m.aug_accept(&td, 0x2000, PageSize::Size4K);
    let mut dev = Device::new(device_config()).unwrap();
    let mut a = m.connect(&mut dev);
    m.ide_setup(&mut dev, &mut a);
    assert_eq!(MAX_TDIS_PER_TD, attest::report::MAX_DEVICES);
    // Four functions of the device, bound to one TD: as many as its report has entries.
    for i in 0..MAX_TDIS_PER_TD as u64 {
        let page = m.page();
        ok(m.host(h::TDI_CREATE, td.tdr, a.pdev, page, FN + i), "TDI.CREATE");
    }
    let t = [td.tdr, other.tdr];
    let (tdr, pdev, page) = (td.tdr, a.pdev, m.page());
    let fifth = FN + MAX_TDIS_PER_TD as u64;
    refused(&mut m, &t, Status::TD_MAX_TDIS_EXCEEDED.with_operand(Operand::Rcx), |m| {
        m.host(h::TDI_CREATE, tdr, pdev, page, fifth)
    });
    // The limit is per TD: another TD may still bind the function.
    ok(m.host(h::TDI_CREATE, other.tdr, pdev, page, fifth), "TDI.CREATE for the other TD");
    // The report lists every TDI bound to the TD, none dropped.
    let r = report(&mut m, &td);
    assert_eq!(r.devices().len(), MAX_TDIS_PER_TD);
    let mut rids: Vec<u16> = r.devices().iter().map(|d| d.function_id().rid()).collect();
    rids.sort_unstable();
    assert_eq!(rids, (0..MAX_TDIS_PER_TD as u16).map(|i| FUNCTION as u16 + i).collect::<Vec<_>>());
}

// ---- defect 8: the guest's accept names the TDI and range that imported the page -------------

#[test]
fn mmio_accept_of_another_interfaces_page_as_its_own_range_is_refused() {
    // Interface C (function FN + 1) reports exactly A's frames; C can lock, but cannot import
    // what A imported.
    let mut config = device_config();
    let mut c = config.interfaces[0].clone();
    c.function_id = FUNCTION + 1;
    config.interfaces.push(c);
    let mut m = Machine::configured(64 * MIB);
    let td = m.running_td();
    let mut dev = Device::new(config).unwrap();
    let mut a = m.connect(&mut dev);
    m.ide_setup(&mut dev, &mut a);
    m.bind(&td, &mut a);
    m.lock(&mut dev, &mut a);
    m.import_all(&a);
    let mut c = a.clone();
    let page = m.page();
    ok(m.host(h::TDI_CREATE, td.tdr, a.pdev, page, FN + 1), "TDI.CREATE of C");
    c.tdi = page;
    m.lock(&mut dev, &mut c);
    let (sa, sc) = (m.tsm.tdi_summary(pfn(a.tdi)).unwrap(), m.tsm.tdi_summary(pfn(c.tdi)).unwrap());
    assert_eq!(sa.ranges[0].first, sc.ranges[0].first, "C reports A's frames");
    assert!(sa.ranges[0].imported && !sc.ranges[0].imported, "only A imported them");
    m.map_range(&td, &a, 0, BAR_GPA);

    let t = [td.tdr];
    let vcpu = td.vcpus[0];
    let accept = |m: &mut Machine, function: u64| {
        let call = Regs { r9: 0, ..Regs::call(g::MMIO_ACCEPT, gpa_level(BAR_GPA, 0), 0, function, 0) };
        m.tsm.guest_call(vcpu, &call)
    };
    let owner = Status::MMIO_OWNER_MISMATCH.with_operand(Operand::R8);
    guest_refused(&mut m, &t, owner, |m| accept(m, FN + 1));
    let rd = m.host(h::MEM_SEPT_RD, gpa_level(BAR_GPA, 0), td.tdr, 0, 0);
    assert_eq!((rd.rdx >> 8) as u8, SeptState::MmioPending as u8, "still pending");
    // A, which imported it, accepts; C still cannot claim it, not even as a warning.
    assert_eq!(accept(&mut m, FN).regs.status(), Status::SUCCESS);
    guest_refused(&mut m, &t, owner, |m| accept(m, FN + 1));
    guest_refused(&mut m, &t, Status::PAGE_ALREADY_ACCEPTED, |m| accept(m, FN));
}

// ---- defect 9: the evidence handed out always hashes to the signed digest --------------------

#[test]
fn a_failed_recollect_after_a_good_one_keeps_the_evidence_the_report_signs() {
    let (mut m, td, mut dev, a) = running();
    m.tsm.provision(&blob().to_bytes()).unwrap();
    m.aug_accept(&td, 0x1000, PageSize::Size4K);
    m.aug_accept(&td, 0x2000, PageSize::Size4K);
    let binds = |m: &mut Machine| {
        let r = report(m, &td);
        let ev = m.tsm.tdi_evidence(pfn(a.tdi)).expect("evidence is always available");
        assert_eq!(
            attest::evidence::transcript_digest(ev.vca, ev.measurements),
            r.devices()[0].measurements_transcript_sha384,
            "the measurement bytes hash to the digest the report signs"
        );
        let mut w = EvidenceWriter::new();
        w.push(RecordType::CertChain, 0, ev.chain).unwrap();
        w.push(RecordType::Vca, 0, ev.vca).unwrap();
        w.push(RecordType::Measurements, 0, ev.measurements).unwrap();
        w.push(RecordType::InterfaceReport, 0, ev.report).unwrap();
        let bundle = w.finish();
        assert_eq!(attest::evidence::binds(&r, &Evidence::parse(&bundle).unwrap()), Ok(()));
        r.devices()[0].measurements_transcript_sha384
    };
    let connected = binds(&mut m);
    ok(m.pump(&mut dev, h::SPDM_MNG, a.pdev, a.msg, mng::RECOLLECT), "a good RECOLLECT");
    let good = binds(&mut m);
    assert_ne!(good, connected, "the good re-collection is what the report binds now");

    // A second one, in progress: the evidence is still the good one.
    let r = m.host(h::SPDM_MNG, a.pdev, a.msg, 0, mng::RECOLLECT);
    assert_eq!(r.status(), Status::DEVICE_REQUEST);
    assert_eq!(binds(&mut m), good);
    // ... and it fails: the device signs wrongly.
    dev.faults_mut().apply_spec("bad-signature=measurements").unwrap();
    let answer = dev.handle(&m.read(a.msg, r.r8 as usize)).unwrap();
    m.write(a.msg, &answer);
    let r = m.host(h::SPDM_MNG, a.pdev, a.msg, answer.len() as u64, mng::RECOLLECT);
    assert_eq!(r.status(), Status::DEVICE_ERROR.with_operand(Operand::Pdev), "{r:x?}");
    assert_eq!(m.tsm.pdev_summary(pfn(a.pdev)).unwrap().pending, Pending::None);
    assert_eq!(binds(&mut m), good, "the failed re-collection changed neither bytes nor digest");
    // And the guest reads the same digest from the TSM.
    m.aug_accept(&td, 0x3000, PageSize::Size4K);
    assert_eq!(m.guest(td.vcpus[0], g::TDI_RD, FN, 3, 0x3000).regs.status(), Status::SUCCESS);
    let pa = guest_pa(&mut m, td.tdr, 0x3000);
    assert_eq!(m.read(pa + 48, 48), good);
}
