//! The whole device-assignment flow in-process, through the real dispatchers, with the real
//! device responder: TD create → connect → IDE → TDI lock → report → import → map → guest accept
//! → DMAR add and accept → authorise → start → DMA lands in private memory → evidence → stop →
//! unmap → DMAR remove → TDI remove → disconnect → teardown, with every page reclaimed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use seamless_harness::assign::{device_config, pfn, BAR0_PAGES, BAR_BASE, BAR_GPA, FUNCTION, LOCK_FLAGS};
use seamless_harness::driver::{gpa_level, ok, Machine};
use sha2::{Digest, Sha384};
use tdisp_device::Device;
use tsm::abi::guest::leaf as g;
use tsm::abi::host::leaf as h;
use tsm::pdev::{PdevState, Pending, StreamState};
use tsm::sept::SeptState;
use tsm::tdi::TdiState;
use tsm::tdisp::InterfaceReport;
use tsm::{Status, TdExit};

const MIB: u64 = 1 << 20;
const FN: u64 = FUNCTION as u64;

/// The state code of the S-EPT leaf at `gpa` (level 0).
fn sept_state(m: &mut Machine, tdr: u64, gpa: u64) -> u8 {
    let r = m.host(h::MEM_SEPT_RD, gpa_level(gpa, 0), tdr, 0, 0);
    ok(r, "SEPT.RD");
    (r.rdx >> 8) as u8
}

#[test]
fn a_device_is_assigned_used_and_released_with_nothing_left_behind() {
    let mut m = Machine::configured(64 * MIB);
    let frames_before = m.frames_in_use();
    let mut td = m.running_td();
    let private = m.aug_accept(&td, 0x1000, tsm::addr::PageSize::Size4K);
    m.iommu_setup();
    let mut dev = Device::new(device_config()).unwrap();

    // Connect: the PDEV keeps the device's evidence.
    let mut a = m.connect(&mut dev);
    let p = m.tsm.pdev_summary(pfn(a.pdev)).unwrap();
    assert_eq!((p.state, p.pending), (PdevState::Connected, Pending::None));
    let e = p.evidence.unwrap();
    assert_eq!(e.negotiated.version, 0x13, "the device offers 1.3");

    // IDE: both ends hold the same six live keys.
    m.ide_setup(&mut dev, &mut a);
    let p = m.tsm.pdev_summary(pfn(a.pdev)).unwrap();
    assert_eq!(p.streams[a.stream as usize], Some((StreamState::Secure, false)));
    assert_eq!(dev.ide_keys().len(), 6);
    assert!(dev.ide_keys().values().all(|k| k.active));

    // Bind and lock: the report comes back to the host, checked and hashed by the TSM.
    m.bind(&td, &mut a);
    m.lock(&mut dev, &mut a);
    assert_eq!(a.generation, 1);
    let report = InterfaceReport::parse(&a.report).unwrap();
    let s = m.tsm.tdi_summary(pfn(a.tdi)).unwrap();
    assert_eq!(s.state, TdiState::Locked);
    assert_eq!(s.lock_flags, LOCK_FLAGS as u16);
    assert_eq!(s.report_digest, <[u8; 48]>::from(Sha384::digest(&a.report)));
    assert_eq!(s.range_count, 3);
    assert_eq!(s.ranges[0].first, BAR_BASE >> 12, "the reporting offset is taken off again");
    assert_eq!(s.ranges[0].pages, u64::from(BAR0_PAGES));
    let offset = m.guest(td.vcpus[0], g::TDI_RD, FN, 4, 0).regs.r9;
    assert_eq!(report.ranges()[0].first_page, (BAR_BASE + offset) >> 12, "the device added the offset");
    assert_ne!(offset, 0);

    // The guest reads state and digest from the TSM, fetches the report through the host
    // (a VMCALL) and checks it against the digest.
    let r = m.guest(td.vcpus[0], g::TDI_RD, FN, 0, 0);
    assert_eq!((r.regs.status(), r.regs.r9), (Status::SUCCESS, 1), "CONFIG_LOCKED");
    let r = m.guest(td.vcpus[0], g::TDI_RD, FN, 2, 0x1000);
    assert_eq!(r.regs.status(), Status::SUCCESS);
    let digest_pa = guest_pa(&mut m, td.tdr, 0x1000);
    let digest_in_guest = m.read(digest_pa, 48);
    let vmcall = m.guest(td.vcpus[0], g::VP_VMCALL, 0, 0, 0);
    assert!(matches!(vmcall.exit, Some(TdExit::Vmcall { .. })), "the guest asks the host for the report");
    let from_host = a.report.clone();
    assert_eq!(&Sha384::digest(&from_host)[..], &digest_in_guest[..], "the host's copy matches the TSM's digest");
    m.enter(td.vcpus[0]);
    let r = m.guest(td.vcpus[0], g::TDI_RD, FN, 3, 0x1040);
    assert_eq!(r.regs.status(), Status::SUCCESS);
    let evidence_pa = guest_pa(&mut m, td.tdr, 0x1040);
    let evidence_in_guest = m.read(evidence_pa, 96);
    assert_eq!(evidence_in_guest[..48], e.chain_digest);
    assert_eq!(evidence_in_guest[48..], e.measurements_digest);

    // Import, map, accept.
    m.import_all(&a);
    m.map_range(&td, &a, 0, BAR_GPA);
    assert_eq!(sept_state(&mut m, td.tdr, BAR_GPA), SeptState::MmioPending as u8);
    m.accept_range(&td, &a, 0, BAR_GPA);
    for i in 0..u64::from(BAR0_PAGES) {
        assert_eq!(sept_state(&mut m, td.tdr, BAR_GPA + i * 4096), SeptState::MmioMapped as u8);
        let r = m.host(h::MEM_SEPT_RD, gpa_level(BAR_GPA + i * 4096, 0), td.tdr, 0, 0);
        assert_eq!(r.rcx & 0x000F_FFFF_FFFF_F000, BAR_BASE + i * 4096, "each GPA maps its own BAR page");
    }

    // The trusted DMA entry: added by the host, accepted by the guest.
    ok(m.dmar_add(&td, &a), "DMAR.ADD");
    let rid = tsm::iommu::Rid::from_raw(FUNCTION as u16);
    let dma = |m: &Machine, iova| m.tsm.iommu().unwrap().translate(m.tsm.platform(), rid, None, iova, true);
    assert!(dma(&m, 0x1000).is_err(), "no DMA before the guest accepts");
    assert_eq!(m.guest(td.vcpus[0], g::DMAR_ACCEPT, FN, 0, 0).regs.status(), Status::SUCCESS);

    // Authorise and start.
    m.authorise(&td, &a);
    ok(m.pump(&mut dev, h::TDI_START, a.tdi, a.msg, 0), "TDI.START");
    assert_eq!(m.tsm.tdi_summary(pfn(a.tdi)).unwrap().state, TdiState::Run);
    assert_eq!(m.guest(td.vcpus[0], g::TDI_RD, FN, 0, 0).regs.r9, 2, "RUN, read from the TSM");
    assert_eq!(dev.tdis()[0].state, tsm::tdisp::TdiState::Run, "the device runs too");

    assert_eq!(dma(&m, 0x1008).unwrap().hpa.raw(), private + 8, "the device's DMA lands in private memory");

    // Evidence for attestation.
    let ev = m.tsm.tdi_evidence(pfn(a.tdi)).unwrap();
    assert_eq!(ev.state, tsm::tdisp::TdiState::Run);
    assert_eq!(attest::evidence::transcript_digest(ev.vca, ev.measurements), e.measurements_digest);
    assert_eq!(ev.report, &a.report[..]);
    assert_eq!(ev.function, FUNCTION);

    // Unbind in the enforced order: STOP (which blocks the TDI's MMIO and DMA at once) → track
    // and invalidate → unmap MMIO → remove the DMA entry → remove the TDI.
    ok(m.pump(&mut dev, h::TDI_STOP, a.tdi, a.msg, 0), "TDI.STOP");
    assert_eq!(dev.tdis()[0].state, tsm::tdisp::TdiState::ConfigUnlocked);
    for i in 0..u64::from(BAR0_PAGES) {
        assert_eq!(sept_state(&mut m, td.tdr, BAR_GPA + i * 4096), SeptState::MmioBlocked as u8, "blocked at STOP");
    }
    assert!(dma(&m, 0x1000).is_err(), "no DMA from a stopped TDI");
    assert_eq!(m.host(h::DMAR_BLOCK, a.tdi, 0, 0, 0).status(), Status::GPA_RANGE_ALREADY_BLOCKED);
    ok(m.host(h::VP_KICK, td.vcpus[0], 0, 0, 0), "KICK");
    ok(m.host(h::MEM_TRACK, td.tdr, 0, 0, 0), "TRACK");
    ok(m.host(h::IQ_INV_REQUEST, td.tdr, 0, 0, 0), "IQ.INV");
    for i in 0..u64::from(BAR0_PAGES) {
        let r = m.host(h::MMIO_UNMAP, gpa_level(BAR_GPA + i * 4096, 0), td.tdr, 0, 0);
        ok(r, "MMIO.UNMAP");
        assert_eq!(r.r8, BAR_BASE + i * 4096);
    }
    ok(m.host(h::DMAR_REMOVE, a.tdi, 0, 0, 0), "DMAR.REMOVE");
    ok(m.host(h::TDI_REMOVE, a.tdi, 0, 0, 0), "TDI.REMOVE");
    ok(m.pump(&mut dev, h::IDE_STREAM_KM, a.pdev, a.msg, a.stream | 2 << 8), "KM STOP");
    assert!(dev.ide_keys().values().all(|k| !k.active), "the device stopped its keys");
    ok(m.host(h::IDE_STREAM_BLOCK, a.pdev, a.stream, 0, 0), "STREAM.BLOCK");
    ok(m.host(h::IDE_STREAM_DELETE, a.pdev, a.stream, 0, 0), "STREAM.DELETE");
    ok(m.pump(&mut dev, h::SPDM_DISCONNECT, a.pdev, a.msg, 0), "SPDM.DISCONNECT");
    assert_eq!(dev.session_count(), 0, "the device ended the session");
    ok(m.host(h::SPDM_DELETE, a.pdev, 0, 0, 0), "SPDM.DELETE");
    m.teardown(&td);
    td.vcpus.clear();
    assert_eq!(m.iommu_clear(), 4, "the IOMMU's tables come back");
    assert_eq!(m.frames_in_use(), frames_before, "every donated page came back");
}

/// The host address backing a guest's private 4K page.
fn guest_pa(m: &mut Machine, tdr: u64, gpa: u64) -> u64 {
    let r = m.host(h::MEM_SEPT_RD, gpa_level(gpa & !0xFFF, 0), tdr, 0, 0);
    (r.rcx & 0x000F_FFFF_FFFF_F000) + (gpa & 0xFFF)
}
