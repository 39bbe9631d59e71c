//! What the TSM gives the host world's platform: the ownership hook that keeps the host's nested
//! map equal to the PAMT (a page leaves the host in the call that donates it and comes back in
//! the call that reclaims it; a failed call changes nothing), and the host fault log that
//! SEAMLESS.HOST.FAULT.RD reads back.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;

use common::expect;
use seamless_harness::driver::{default_params, ok, Machine, PRIVATE_BASE};
use tsm::abi::host::leaf;
use tsm::addr::{HostPhysAddr, Pfn};
use tsm::pamt::PageType;
use tsm::{Regs, Status};

const MIB: u64 = 1 << 20;

fn pfn(pa: u64) -> Pfn {
    Pfn::new(pa >> 12).unwrap()
}

fn denied(m: &Machine) -> BTreeSet<Pfn> {
    m.tsm.platform().host_denied.clone()
}

#[test]
fn host_map_loses_the_pamt_at_sys_config() {
    let m = Machine::configured(16 * MIB);
    let d = denied(&m);
    assert!(!d.is_empty());
    assert!(d.iter().all(|&p| m.tsm.pamt_entry(p).is_some_and(|e| e.ty == PageType::Reserved)));
    assert!(d.contains(&pfn(m.pamt_base())));
}

#[test]
fn host_map_follows_donation_and_reclaim() {
    let mut m = Machine::configured(32 * MIB);
    let before = denied(&m);
    let mut td = m.create_td(&default_params());
    let vcpu = m.add_vcpu(&mut td);
    let page = m.add_page(&td, 0x1000, &[7; 4096], true);
    let after = denied(&m);
    for pa in [td.tdr, td.tdcs[0], td.tdcs[1], vcpu, page] {
        assert!(after.contains(&pfn(pa)), "{pa:#x} left the host map in the call that donated it");
    }
    // Every denied frame is one the PAMT does not list as free, and the other way round.
    for f in (seamless_harness::driver::TDMR_BASE >> 12)..(m.pamt_base() >> 12) {
        let p = Pfn::new(f).unwrap();
        let free = m.tsm.pamt_entry(p).is_some_and(|e| e.ty == PageType::Free);
        assert_eq!(after.contains(&p), !free, "frame {:#x}", f << 12);
    }
    m.teardown(&td);
    assert_eq!(denied(&m), before, "every page came back in the call that reclaimed it");
}

#[test]
fn host_map_unchanged_by_a_failed_donation() {
    let mut m = Machine::configured(16 * MIB);
    let td = m.create_td(&default_params());
    let before = denied(&m);
    // A second MNG.ADDCX: the TD already has its TDCS pages.
    let extra = m.page();
    let r = m.host(leaf::MNG_ADDCX, extra, td.tdr, 0, 0);
    assert!(r.status().is_error());
    assert_eq!(denied(&m), before);
    assert!(!denied(&m).contains(&pfn(extra)));
}

#[test]
fn host_fault_rd_happy_path_names_each_target() {
    let mut m = Machine::configured(16 * MIB);
    let r = m.host(leaf::HOST_FAULT_RD, 0, 0, 0, 0);
    ok(r, "HOST.FAULT.RD on an empty log");
    assert_eq!((r.rcx, r.r9, r.r11), (0, 0, 0));

    let td = m.create_td(&default_params());
    let addr = |pa| HostPhysAddr::new(pa).unwrap();
    let outside = 0xFED9_0000;
    m.tsm.record_host_fault(addr(td.tdr + 8), false, 0x1000);
    m.tsm.record_host_fault(addr(td.tdcs[1]), true, 0x1004);
    m.tsm.record_host_fault(addr(PRIVATE_BASE + 0x2000), false, 0x1008);
    m.tsm.record_host_fault(addr(m.pamt_base()), true, 0x100c);
    m.tsm.record_host_fault(addr(outside), false, 0x1010);
    let want = [
        (td.tdr + 8, 0x0400, td.tdr, 0x1000),
        (td.tdcs[1], 0x0501, td.tdr, 0x1004),
        (PRIVATE_BASE + 0x2000, 0xF000, 0, 0x1008),
        (m.pamt_base(), 0x0101, 0, 0x100c),
        (outside, 0xF100, 0, 0x1010),
    ];
    for (i, (a, rdx, owner, rip)) in want.into_iter().enumerate() {
        let r = m.host(leaf::HOST_FAULT_RD, 0, 0, 0, 0);
        ok(r, "HOST.FAULT.RD");
        assert_eq!((r.rcx, r.rdx, r.r8, r.r9, r.r10, r.r11), (a, rdx, owner, 1, rip, 5), "entry {i}");
    }
    let r = m.host(leaf::HOST_FAULT_RD, 0, 0, 0, 0);
    assert_eq!((r.status(), r.rcx, r.r9, r.r11), (Status::SUCCESS, 0, 0, 5), "drained");
}

#[test]
fn host_fault_rd_names_refused_ports_msrs_and_xcrs_with_the_value_written() {
    let mut m = Machine::new(16 * MIB);
    // fw_cfg's selector naming the secret (key 0x21), its DMA address, an MSR write.
    let port = m.tsm.record_host_port(0x510, 0x21, 0x3000);
    assert_eq!(port.what(), "an I/O port the TSM keeps");
    let msr = m.tsm.record_host_msr(0xC001_0117, 0xDEAD_0000, 0x3008);
    assert_eq!(msr.what(), "an MSR");
    m.tsm.record_host_port(0x518, 0x1234_5000, 0x3010);
    // XSETBV of XCR0 with AVX, which the TSM refuses.
    let xcr = m.tsm.record_host_xcr(0, 0x7, 0x3018);
    assert_eq!(xcr.what(), "an XCR");
    let want = [
        (0x510, 0xF301, 0x21, 0x3000),
        (0xC001_0117, 0xF401, 0xDEAD_0000, 0x3008),
        (0x518, 0xF301, 0x1234_5000, 0x3010),
        (0, 0xF501, 0x7, 0x3018),
    ];
    for (i, (at, rdx, value, rip)) in want.into_iter().enumerate() {
        let r = m.host(leaf::HOST_FAULT_RD, 0, 0, 0, 0);
        expect(&r, Status::SUCCESS);
        assert_eq!((r.rcx, r.rdx, r.r8, r.r9, r.r10, r.r11), (at, rdx, value, 1, rip, 4), "entry {i}");
    }
}

#[test]
fn host_fault_rd_works_before_sys_config() {
    let mut m = Machine::new(16 * MIB);
    m.tsm.record_host_fault(HostPhysAddr::new(PRIVATE_BASE).unwrap(), true, 7);
    let r = m.host(leaf::HOST_FAULT_RD, 0, 0, 0, 0);
    expect(&r, Status::SUCCESS);
    assert_eq!((r.rcx, r.rdx, r.r9, r.r10), (PRIVATE_BASE, 0xF001, 1, 7));
}

#[test]
fn dmabuf_import_takes_the_bar_frames_out_of_the_host_map_and_tdi_remove_gives_them_back() {
    use seamless_harness::assign::{device_config, BAR0_PAGES, BAR_BASE};
    let mut m = Machine::configured(64 * MIB);
    let td = m.running_td();
    let mut dev = tdisp_device::Device::new(device_config()).unwrap();
    let mut a = m.connect(&mut dev);
    m.ide_setup(&mut dev, &mut a);
    m.bind(&td, &mut a);
    m.lock(&mut dev, &mut a);
    let before = denied(&m);
    let bar: Vec<Pfn> = (0..u64::from(BAR0_PAGES)).map(|i| pfn(BAR_BASE + i * 4096)).collect();
    assert!(bar.iter().all(|p| !before.contains(p)), "the host owns its BAR before the import");
    m.import_all(&a);
    let imported = denied(&m);
    assert!(bar.iter().all(|p| imported.contains(p)), "DMABUF.IMPORT took BAR0's frames out of the host map");
    // A host access to it lands in the fault log naming the TDI.
    let f = m.tsm.record_host_fault(HostPhysAddr::new(BAR_BASE + 0x10).unwrap(), false, 0x2000);
    assert_eq!(f.what(), "MMIO a TDI imported");
    let r = m.host(leaf::HOST_FAULT_RD, 0, 0, 0, 0);
    assert_eq!((r.rcx, r.rdx, r.r8, r.r9), (BAR_BASE + 0x10, 0xF200, a.tdi, 1));
    // A refused second import changes nothing.
    let r = m.host(leaf::DMABUF_IMPORT, a.tdi, BAR_BASE, u64::from(BAR0_PAGES), 0);
    assert!(r.status().is_error());
    assert_eq!(denied(&m), imported);
    ok(m.pump(&mut dev, leaf::TDI_STOP, a.tdi, a.msg, 0), "TDI.STOP");
    assert_eq!(denied(&m), imported, "stopped, the TDI still owns them");
    ok(m.host(leaf::TDI_REMOVE, a.tdi, 0, 0, 0), "TDI.REMOVE");
    let after = denied(&m);
    assert!(bar.iter().all(|p| !after.contains(p)), "TDI.REMOVE gave the frames back");
    assert!(!after.contains(&pfn(a.tdi)), "and the TDI page");
}

/// SEAMLESS.SYS.DIGEST's 48 bytes.
fn digest(m: &mut Machine) -> [u64; 6] {
    let r = m.host(leaf::SYS_DIGEST, 0, 0, 0, 0);
    assert_eq!(r.status(), Status::SUCCESS);
    [r.rcx, r.rdx, r.r8, r.r9, r.r10, r.r11]
}

#[test]
fn sys_digest_stays_across_refused_calls_and_moves_with_every_change() {
    let mut m = Machine::new(16 * MIB);
    let before_config = digest(&mut m);
    assert_eq!(digest(&mut m), before_config, "reading it changes nothing");
    ok(m.sys_config(), "TDH.SYS.CONFIG");
    let empty = digest(&mut m);
    let td = m.create_td(&default_params());
    let created = digest(&mut m);
    assert_ne!(created, empty, "a TD is in the summaries");
    // Refused calls: a second MNG.INIT, a TDR as the TDCS page, an unaligned VP.CREATE.
    for regs in [
        Regs::call(leaf::MNG_INIT, td.tdr, 0, 0, 0),
        Regs::call(leaf::MNG_ADDCX, td.tdr, td.tdr, 0, 0),
        Regs::call(leaf::VP_CREATE, td.tdr + 8, 0, 0, 0),
    ] {
        assert!(m.tsm.host_call(&regs).status().is_error());
        assert_eq!(digest(&mut m), created, "a refused call changes no summary: {regs:x?}");
    }
    let tdvpr = m.page();
    ok(m.host(leaf::VP_CREATE, tdvpr, td.tdr, 0, 0), "VP.CREATE");
    assert_ne!(digest(&mut m), created, "a vCPU is in the TD's summary");
}
