//! The host domain (SEAMLESS.IOMMU.HOST.ATTACH / DETACH): the functions the host keeps do DMA
//! through the platform's host map, the identity map of exactly what the host owns, which follows
//! the PAMT. Driven through the real ABI; answered by the IOMMU walker, which walks the host map
//! as the unit does. Every refusal in check order, with no memory written; then what the domain
//! reaches: every frame the PAMT lists as free, and no TSM, PAMT, S-EPT, IOMMU-table or
//! TD-private frame; and that a function is the host's or a TD's, never both.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use seamless_harness::assign::{pfn, Assignment, FUNCTION};
use seamless_harness::driver::{ok, Machine, TdHandle, ARENA_BASE, SCRATCH_BASE, TDMR_BASE};
use seamless_harness::unit::{UnitFault, STATUS_ADDRESS};
use tdisp_device::Device;
use tsm::abi::host::leaf as h;
use tsm::addr::PageSize;
use tsm::iommu::hw::{domain_invalidation, InvDescriptor};
use tsm::iommu::{DmaFault, FaultReason, Rid, Translation, HOST_DID};
use tsm::pamt::PageType;
use tsm::{Operand, Regs, Status};

const MIB: u64 = 1 << 20;
/// A function the host keeps (a NIC at 00:05.0), besides the assignable NVMe (`FUNCTION`).
const HOST_FN: u64 = 5 << 3;

/// Builds the platform's host map: its tables in the megabyte below the scratch area, which
/// the host does not own.
fn enable_host_map(m: &mut Machine) {
    let pool = pfn(ARENA_BASE + MIB);
    m.tsm.platform_mut().enable_host_map(pool, 256, pfn(SCRATCH_BASE));
}

fn attach(m: &mut Machine, function: u64) -> Regs {
    let f = [m.page(), m.page(), m.page()];
    attach_with(m, function, f)
}

fn attach_with(m: &mut Machine, function: u64, f: [u64; 3]) -> Regs {
    m.tsm.host_call(&Regs { r10: f[2], ..Regs::call(h::IOMMU_HOST_ATTACH, function, 0, f[0], f[1]) })
}

fn dma(m: &Machine, function: u64, addr: u64, write: bool) -> Result<Translation, DmaFault> {
    let iommu = m.tsm.iommu().expect("IOMMU set up");
    iommu.translate(m.tsm.platform(), Rid::from_raw(function as u16), None, addr, write)
}

fn writes(m: &Machine) -> u64 {
    m.tsm.platform().mem.writes()
}

#[track_caller]
fn refused(m: &mut Machine, want: Status, call: impl FnOnce(&mut Machine) -> Regs) {
    let before = writes(m);
    let r = call(m);
    assert_eq!(r.status(), want);
    assert_eq!(writes(m), before, "a refused call wrote memory");
}

#[test]
fn host_attach_rejects_in_check_order() {
    let mut m = Machine::configured(64 * MIB);
    let f = [m.page(), m.page(), m.page()];
    refused(&mut m, Status::IOMMU_STATE_INCORRECT, |m| attach_with(m, HOST_FN, f));
    m.iommu_setup();
    refused(&mut m, Status::OPERAND_INVALID.with_operand(Operand::Rcx), |m| attach_with(m, 1 << 16 | HOST_FN, f));
    refused(&mut m, Status::IOMMU_STATE_INCORRECT, |m| attach_with(m, HOST_FN, f));
    enable_host_map(&mut m);
    refused(&mut m, Status::OPERAND_INVALID.with_operand(Operand::R8), |m| attach_with(m, HOST_FN, [0, f[1], f[2]]));
    refused(&mut m, Status::OPERAND_ADDR_RANGE_ERROR.with_operand(Operand::R9), |m| {
        attach_with(m, HOST_FN, [f[0], SCRATCH_BASE, f[2]])
    });
    let iommu_root = m.tsm.iommu().unwrap().root().addr().raw();
    refused(&mut m, Status::PAGE_NOT_FREE.with_operand(Operand::R10), |m| {
        attach_with(m, HOST_FN, [f[0], f[1], iommu_root])
    });
    let r = attach_with(&mut m, HOST_FN, f);
    ok(r, "HOST.ATTACH");
    assert_eq!(r.rcx, 0b111, "context table, PASID directory and PASID table");
    for frame in f {
        assert_eq!(m.tsm.pamt_entry(pfn(frame)).unwrap().ty, PageType::IommuTable);
    }
    let g = [m.page(), m.page(), m.page()];
    refused(&mut m, Status::DMAR_STATE_INCORRECT.with_operand(Operand::Tdi), |m| attach_with(m, HOST_FN, g));
    // A second function on the same bus half shares the context table: only its PASID
    // directory and table are taken.
    let r = attach_with(&mut m, 6 << 3, g);
    ok(r, "HOST.ATTACH of a second function");
    assert_eq!(r.rcx, 0b110);
}

#[test]
fn host_detach_rejects_a_function_not_in_the_host_domain() {
    let mut m = Machine::configured(64 * MIB);
    refused(&mut m, Status::IOMMU_STATE_INCORRECT, |m| m.host(h::IOMMU_HOST_DETACH, HOST_FN, 0, 0, 0));
    m.iommu_setup();
    enable_host_map(&mut m);
    refused(&mut m, Status::OPERAND_INVALID.with_operand(Operand::Rcx), |m| {
        m.host(h::IOMMU_HOST_DETACH, 1 << 16 | HOST_FN, 0, 0, 0)
    });
    refused(&mut m, Status::DMAR_STATE_INCORRECT.with_operand(Operand::Tdi), |m| {
        m.host(h::IOMMU_HOST_DETACH, HOST_FN, 0, 0, 0)
    });
}

/// Every frame of the arena from the scratch area on: the host domain reaches it (identity, for
/// writes) exactly when the host owns it, that is outside the TDMR or free in the PAMT.
fn assert_host_domain_is_the_hosts_memory(m: &Machine) -> usize {
    let end = TDMR_BASE + 64 * MIB;
    let mut reached = 0;
    for addr in (SCRATCH_BASE..end).step_by(4096) {
        let hosts = addr < TDMR_BASE || m.tsm.pamt_entry(pfn(addr)).unwrap().ty == PageType::Free;
        match dma(m, HOST_FN, addr + 0x18, true) {
            Ok(t) => {
                assert!(
                    hosts,
                    "the host domain reaches {addr:#x}, which the PAMT gives to {:?}",
                    m.tsm.pamt_entry(pfn(addr))
                );
                assert_eq!((t.hpa.raw(), t.page_size, t.domain), (addr + 0x18, PageSize::Size4K, HOST_DID));
                reached += 1;
            }
            Err(f) => {
                assert!(!hosts, "the host domain misses the host's own {addr:#x}: {f:?}");
                assert_eq!(f.reason, FaultReason::HostMapNotPresent);
            }
        }
    }
    reached
}

#[test]
fn the_host_domain_reaches_the_hosts_memory_and_nothing_the_pamt_gives_away() {
    let mut m = Machine::configured(64 * MIB);
    enable_host_map(&mut m);
    let td = m.running_td();
    let private = m.aug_accept(&td, 0x1000, PageSize::Size4K);
    m.iommu_setup();
    ok(attach(&mut m, HOST_FN), "HOST.ATTACH");
    assert_eq!(dma(&m, HOST_FN, SCRATCH_BASE + 8, false).unwrap().hpa.raw(), SCRATCH_BASE + 8);
    let before = assert_host_domain_is_the_hosts_memory(&m);
    // The TSM's own memory and the host map's tables are no host memory either.
    for addr in [ARENA_BASE, ARENA_BASE + MIB] {
        assert_eq!(dma(&m, HOST_FN, addr, false).unwrap_err().reason, FaultReason::HostMapNotPresent);
    }
    for (what, addr) in [
        ("TD-private page", private),
        ("TDR", td.tdr),
        ("IOMMU root table", m.tsm.iommu().unwrap().root().addr().raw()),
    ] {
        assert!(dma(&m, HOST_FN, addr, true).is_err(), "the host domain reaches the {what}");
    }

    // A page donated now leaves the host domain in the call that donates it, and the
    // platform invalidated its cached translation.
    let invalidated = m.tsm.platform().host_map_invalidations.len();
    let page = m.aug_accept(&td, 0x2000, PageSize::Size4K);
    assert!(dma(&m, HOST_FN, page, true).is_err());
    assert!(m.tsm.platform().host_map_invalidations[invalidated..].contains(&pfn(page)));
    let after = assert_host_domain_is_the_hosts_memory(&m);
    assert!(after < before, "{after} frames reached, {before} before the donation");

    // A function the host did not attach reaches nothing.
    assert_eq!(dma(&m, 7 << 3, SCRATCH_BASE, false).unwrap_err().reason, FaultReason::ContextNotPresent);
    assert_eq!(dma(&m, 1 << 8, SCRATCH_BASE, false).unwrap_err().reason, FaultReason::RootNotPresent);
}

/// The IOMMU with the host map, a TD and the assignable function's TDI locked.
fn world() -> (Machine, TdHandle, Device, Assignment) {
    let mut m = Machine::configured(64 * MIB);
    enable_host_map(&mut m);
    let td = m.running_td();
    m.iommu_setup();
    let mut dev = Device::new(seamless_harness::assign::device_config()).unwrap();
    let mut a = m.connect(&mut dev);
    m.ide_setup(&mut dev, &mut a);
    m.bind(&td, &mut a);
    m.lock(&mut dev, &mut a);
    (m, td, dev, a)
}

#[test]
fn a_function_is_the_hosts_or_a_tds_never_both() {
    let (mut m, td, _dev, a) = world();
    let function = u64::from(FUNCTION);
    ok(attach(&mut m, function), "HOST.ATTACH of the NVMe while the host keeps it");
    assert!(dma(&m, function, SCRATCH_BASE, true).is_ok());
    let r = m.dmar_add(&td, &a);
    assert_eq!(r.status(), Status::DMAR_STATE_INCORRECT.with_operand(Operand::Tdi), "DMAR.ADD while the host has it");
    let r = m.host(h::IOMMU_CLEAR, 0, 0, 0, 0);
    assert_eq!(r.status(), Status::IOMMU_STATE_INCORRECT, "CLEAR with a function in the host domain");

    let executed = m.tsm.platform().unit.executed.len();
    ok(m.host(h::IOMMU_HOST_DETACH, function, 0, 0, 0), "HOST.DETACH");
    let unit = &m.tsm.platform().unit;
    let wait = InvDescriptor::wait(STATUS_ADDRESS, unit.status);
    assert_eq!(unit.executed[executed..], [&domain_invalidation(HOST_DID)[..], &[wait]].concat());
    assert_eq!(dma(&m, function, SCRATCH_BASE, true).unwrap_err().reason, FaultReason::PasidEntryNotPresent);

    let r = m.dmar_add(&td, &a);
    ok(r, "DMAR.ADD once the host let go");
    assert_eq!(r.rcx, 0, "the tables of the host entry serve the TD's");
    let r = attach(&mut m, function);
    assert_eq!(r.status(), Status::DMAR_STATE_INCORRECT.with_operand(Operand::Rcx), "attach of a TD's function");
}

#[test]
fn a_detach_the_unit_did_not_confirm_keeps_the_function_from_dmar_add() {
    let (mut m, td, _dev, a) = world();
    let function = u64::from(FUNCTION);
    ok(attach(&mut m, function), "HOST.ATTACH");
    m.tsm.platform_mut().unit.fault = UnitFault::NoStatusWrite;
    assert_eq!(m.host(h::IOMMU_HOST_DETACH, function, 0, 0, 0).status(), Status::IOMMU_UNIT_ERROR);
    assert!(dma(&m, function, SCRATCH_BASE, true).is_err(), "the entry is gone from the table");
    let r = m.dmar_add(&td, &a);
    assert_eq!(r.status(), Status::DMAR_STATE_INCORRECT.with_operand(Operand::Tdi), "not confirmed: still refused");
    m.tsm.platform_mut().unit.fault = UnitFault::None;
    ok(m.host(h::IOMMU_HOST_DETACH, function, 0, 0, 0), "HOST.DETACH again");
    ok(m.dmar_add(&td, &a), "DMAR.ADD");
}

#[test]
fn the_host_map_is_refused_where_the_host_could_write_it() {
    let mut m = Machine::configured(64 * MIB);
    m.iommu_setup();
    // A "host map" in a free TDMR page: the host could rewrite its own DMA translations.
    let free = m.page();
    m.tsm.platform_mut().enable_host_map(pfn(free), 1, pfn(TDMR_BASE + 64 * MIB));
    refused(&mut m, Status::IOMMU_STATE_INCORRECT, |m| attach(m, HOST_FN));
}
