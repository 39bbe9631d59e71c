//! The global invariants (`tsm::audit`) fire: each test builds a sound machine through the ABI
//! (the audit passes), then plays a broken TSM by writing the state a defect would leave
//! straight into simulated memory (an S-EPT entry, a PAMT entry), and expects the one
//! violation that names it. The model tests run the same audit after every step; these tests
//! show it is not a check that cannot fail.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use seamless_harness::assign::{device_config, pfn, BAR_BASE, BAR_GPA};
use seamless_harness::audit;
use seamless_harness::driver::{Machine, TdHandle};
use tdisp_device::Device;
use tsm::abi::host::leaf as h;
use tsm::addr::{PageSize, Pfn};
use tsm::audit::Violation;
use tsm::platform::PhysMem;
use tsm::sept::{SeptEntry, SeptState};

const MIB: u64 = 1 << 20;

/// The table and index of the level-0 entry of `gpa` in the TD's S-EPT.
fn slot(m: &Machine, td: &TdHandle, gpa: u64) -> (Pfn, usize) {
    let s = m.tsm.td_summary(pfn(td.tdr)).unwrap();
    let (mut table, mut level) = (s.sept_root, s.root_level);
    loop {
        let idx = ((gpa >> (12 + 9 * u64::from(level))) & 511) as usize;
        if level == 0 {
            return (table, idx);
        }
        let e = SeptEntry::decode(m.tsm.platform().mem.read_u64(table, idx)).unwrap();
        assert!(e.state().is_table(), "no table on the path to {gpa:#x}");
        table = e.pfn();
        level -= 1;
    }
}

fn write_entry(m: &mut Machine, td: &TdHandle, gpa: u64, e: SeptEntry) {
    let (table, idx) = slot(m, td, gpa);
    m.tsm.platform_mut().write_u64(table, idx, e.raw());
}

fn two_tds() -> (Machine, TdHandle, TdHandle, u64) {
    let mut m = Machine::configured(16 * MIB);
    let a = m.running_td();
    let page = m.aug_accept(&a, 0x1000, PageSize::Size4K);
    let b = m.running_td();
    m.aug_accept(&b, 0x1000, PageSize::Size4K);
    assert_eq!(audit::check(&m.tsm), Ok(()));
    (m, a, b, page)
}

#[test]
fn a_leaf_on_another_tds_page_is_caught() {
    let (mut m, a, b, page) = two_tds();
    write_entry(&mut m, &b, 0x3000, SeptEntry::new(SeptState::Mapped, pfn(page), 0));
    let v = audit::check(&m.tsm).unwrap_err();
    assert!(matches!(v, Violation::SeptFrameOwner { owner, .. } if owner == pfn(a.tdr)), "{v:?}");
}

#[test]
fn a_page_mapped_twice_is_caught() {
    let (mut m, a, _, page) = two_tds();
    write_entry(&mut m, &a, 0x3000, SeptEntry::new(SeptState::Mapped, pfn(page), 0));
    assert_eq!(audit::check(&m.tsm), Err(Violation::FrameReachedTwice { pfn: pfn(page) }));
}

#[test]
fn a_page_no_entry_reaches_is_caught() {
    let (mut m, a, _, page) = two_tds();
    write_entry(&mut m, &a, 0x1000, SeptEntry::FREE);
    assert_eq!(audit::check(&m.tsm), Err(Violation::FrameLeaked { tdr: pfn(a.tdr), pfn: pfn(page) }));
}

#[test]
fn mmio_on_ram_and_mmio_nobody_imported_are_caught() {
    let (mut m, a, _, page) = two_tds();
    write_entry(&mut m, &a, 0x1000, SeptEntry::new(SeptState::MmioMapped, pfn(page), 0));
    assert_eq!(audit::check(&m.tsm), Err(Violation::MmioOnConvertible { tdr: pfn(a.tdr), gpa: 0x1000 }));
    write_entry(&mut m, &a, 0x1000, SeptEntry::new(SeptState::Mapped, pfn(page), 0));
    write_entry(&mut m, &a, 0x3000, SeptEntry::new(SeptState::MmioPending, pfn(BAR_BASE), 0));
    assert_eq!(audit::check(&m.tsm), Err(Violation::MmioNotImported { tdr: pfn(a.tdr), gpa: 0x3000 }));
}

/// A running TDI with BAR0 mapped and accepted at [`BAR_GPA`], in TD `a`.
fn running() -> (Machine, Device, TdHandle, seamless_harness::assign::Assignment) {
    let mut m = Machine::configured(16 * MIB);
    let td = m.running_td();
    m.aug_accept(&td, 0x1000, PageSize::Size4K);
    let mut device = Device::new(device_config()).unwrap();
    let a = m.assign(&mut device, &td);
    assert_eq!(audit::check(&m.tsm), Ok(()));
    assert_eq!(audit::check_device(&m.tsm, &device), Ok(()));
    (m, device, td, a)
}

#[test]
fn a_live_mmio_leaf_of_a_stopped_tdi_is_caught() {
    let (mut m, mut device, td, a) = running();
    let r = m.pump(&mut device, h::TDI_STOP, a.tdi, a.msg, 0);
    assert_eq!(r.status(), tsm::Status::SUCCESS);
    assert_eq!(audit::check(&m.tsm), Ok(()));
    // What defect 2 left: a leaf STOP's block walk skipped, live again.
    write_entry(&mut m, &td, BAR_GPA, SeptEntry::new(SeptState::MmioMapped, pfn(BAR_BASE), 0));
    let v = audit::check(&m.tsm).unwrap_err();
    assert!(matches!(v, Violation::MmioLive { gpa: BAR_GPA, .. }), "{v:?}");
}

#[test]
fn an_mmio_leaf_away_from_its_placement_is_caught() {
    let (mut m, _, td, _) = running();
    let (table, idx) = slot(&m, &td, BAR_GPA);
    let e = m.tsm.platform().mem.read_u64(table, idx);
    m.tsm.platform_mut().write_u64(table, idx, 0);
    write_entry(&mut m, &td, BAR_GPA + 0x10_0000, SeptEntry::decode(e).unwrap());
    let v = audit::check(&m.tsm).unwrap_err();
    assert!(matches!(v, Violation::MmioMisplaced { gpa, .. } if gpa == BAR_GPA + 0x10_0000), "{v:?}");
}

#[test]
fn an_mmio_leaf_the_range_does_not_count_is_caught() {
    let (mut m, _, td, _) = running();
    let (table, idx) = slot(&m, &td, BAR_GPA);
    m.tsm.platform_mut().write_u64(table, idx, 0);
    let v = audit::check(&m.tsm).unwrap_err();
    assert!(matches!(v, Violation::MmioCount { range: 0, .. }), "{v:?}");
}

#[test]
fn a_run_tdi_the_device_stopped_is_caught_by_the_device_check() {
    let (mut m, mut device, _, a) = running();
    // The device hears STOP_INTERFACE and the TSM never sees the answer: the TSM is waiting
    // (a flow is outstanding), so the device may be ahead of it: no violation yet.
    let r = m.host(h::TDI_STOP, a.tdi, a.msg, 0, 0);
    assert_eq!(r.status(), tsm::Status::DEVICE_REQUEST);
    let request = m.read(a.msg, r.r8 as usize);
    device.handle(&request).unwrap();
    assert_eq!(audit::check_device(&m.tsm, &device), Ok(()));
    // The host abandons the exchange (ABORT): the TDI goes to ERROR, not RUN.
    let r = m.host(h::SPDM_MNG, a.pdev, 0, 0, tsm::abi::host_pdev::mng::ABORT);
    assert_eq!(r.status(), tsm::Status::SUCCESS);
    assert_eq!(audit::check(&m.tsm), Ok(()));
    assert_eq!(audit::check_device(&m.tsm, &device), Ok(()));
    // A device that is not RUN while the TSM confirmed RUN (what the PASID twin's STOP did)
    // is what the check names: here, a device that never heard of the lock.
    let (m, _, _, _) = running();
    let fresh = Device::new(device_config()).unwrap();
    let e = audit::check_device(&m.tsm, &fresh).unwrap_err();
    assert!(e.contains("ConfigUnlocked"), "{e}");
}

#[test]
fn host_ram_imported_as_private_mmio_is_caught() {
    // The host programs BAR0 over RAM it backs (outside the TDMRs and the TSM), the device
    // reports it honestly (#16 defect 5). IMPORT must refuse it; if it does not, the audit
    // names it.
    let ram = seamless_harness::driver::ARENA_BASE + MIB;
    let mut config = device_config();
    config.interfaces[0].mmio[0].first_page = ram >> 12;
    let mut device = Device::new(config).unwrap();
    let mut m = Machine::configured(16 * MIB);
    let td = m.running_td();
    let mut a = m.connect(&mut device);
    m.ide_setup(&mut device, &mut a);
    m.bind(&td, &mut a);
    m.lock(&mut device, &mut a);
    assert_eq!(audit::check(&m.tsm), Ok(()));
    let range = m.tsm.tdi_summary(pfn(a.tdi)).unwrap().ranges[0];
    assert_eq!(range.first << 12, ram);
    let r = m.host(h::DMABUF_IMPORT, a.tdi, ram, range.pages, 0);
    if r.status() == tsm::Status::SUCCESS {
        assert_eq!(audit::check(&m.tsm), Err(Violation::ImportedRam { tdi: pfn(a.tdi), range: 0 }));
    } else {
        assert_eq!(audit::check(&m.tsm), Ok(()));
    }
}
