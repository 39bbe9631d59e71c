//! The host's GHCI server (`tsm_client::host::ghci`) against the real TSM: MapGPA's conversions
//! both ways through the S-EPT leaves (BLOCK, TRACK, DEMOTE, REMOVE; AUG and the TD's ACCEPT)
//! and the host's shared table the TSM then walks; the refusals of every sub-function, each
//! with GHCI's status and nothing done; GetQuote's buffer; ReportFatalError and the power
//! requests ending the run. The machine is a small in-test one that records what the host
//! asked of it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use seamless_harness::driver::{gpa_level, ok, Machine, TdHandle};
use tsm::abi::{guest::leaf as g, host::leaf as h};
use tsm::addr::PageSize;
use tsm::sept::SeptState;
use tsm::{Regs, TdExit};
use tsm_client::host::ghci::ports::PowerRequest;
use tsm_client::host::ghci::run::DeviceRequests;
use tsm_client::host::ghci::{self, leaf, Ghci, PciFilter, Served, Stop, TdView};
use tsm_client::host::td::TdPages;
use tsm_client::vmcall;

const MIB: u64 = 1 << 20;
const SHARED: u64 = 1 << 47;
/// The TD's RAM in these tests.
const RAM: [(u64, u64); 1] = [(0, 16 * MIB)];

/// A machine with a fw_cfg and nothing else: every port and configuration access is recorded.
#[derive(Debug, Default)]
struct Bench {
    log: Vec<String>,
    sel: u16,
    at: usize,
}

impl ghci::Machine for Bench {
    fn io_read(&mut self, port: u16, size: u8) -> u32 {
        self.log.push(format!("in {port:#x}/{size}"));
        0
    }
    fn io_write(&mut self, port: u16, size: u8, value: u32) {
        self.log.push(format!("out {port:#x}/{size} {value:#x}"));
    }
    fn pci_config_read(&mut self, bdf: u16, reg: u16, _size: u8) -> u32 {
        self.log.push(format!("cfg read {bdf:#x} {reg:#x}"));
        0
    }
    fn pci_config_write(&mut self, bdf: u16, reg: u16, _size: u8, value: u32) {
        self.log.push(format!("cfg write {bdf:#x} {reg:#x} {value:#x}"));
    }
    fn fw_cfg_select(&mut self, key: u16) {
        (self.sel, self.at) = (key, 0);
    }
    fn fw_cfg_read(&mut self, buf: &mut [u8]) {
        // "QEMU", and an empty directory.
        let data: &[u8] = if self.sel == 0 { b"QEMU" } else { &[0, 0, 0, 0] };
        for b in buf {
            *b = data.get(self.at).copied().unwrap_or(0);
            self.at += 1;
        }
    }
    fn cpuid(&self, leaf: u32, _subleaf: u32) -> [u32; 4] {
        [leaf, 0, 0, 0]
    }
    fn now_ns(&self) -> u64 {
        0
    }
    fn wait_until(&mut self, _deadline_ns: u64) {}
}

/// A running TD whose vCPU then left guest mode by a VMCALL, as the host finds it when it
/// serves one; GPAs 0..2M are 4K tables, the RAM above is not mapped.
fn td_at_vmcall(m: &mut Machine) -> TdHandle {
    let td = m.running_td();
    vmcall(m, &td);
    td
}

fn vmcall(m: &mut Machine, td: &TdHandle) {
    let r = m.tsm.guest_call(td.vcpus[0], &Regs::call(g::VP_VMCALL, 0, 0, 0, 0));
    assert!(matches!(r.exit, Some(TdExit::Vmcall { .. })));
}

fn view(td: &TdHandle) -> TdView<'static> {
    TdView { td: td.pages(), shared_bit: SHARED, ram: &RAM, pci: PciFilter::Q35_PLATFORM }
}

fn ghci_call(m: &mut Machine, g: &mut Ghci, bench: &mut Bench, td: &TdHandle, r11: u64, args: [u64; 4]) -> Served {
    let [r12, r13, r14, r15] = args;
    let regs = Regs { r10: 0, r11, r12, r13, r14, r15, ..Regs::default() };
    g.serve(m, bench, &view(td), &regs).unwrap_or_else(|e| panic!("{e}"))
}

fn status(s: Served) -> u64 {
    match s {
        Served::Answer(a) => a.r10,
        other => panic!("no answer: {other:?}"),
    }
}

fn state_at(m: &mut Machine, td: &TdHandle, gpa: u64) -> (u8, Option<SeptState>) {
    let r = m.host(h::MEM_SEPT_RD, gpa_level(gpa, 0), td.tdr, 0, 0);
    ((r.rdx & 7) as u8, SeptState::from_code((r.rdx >> 8) & 0xFF))
}

fn setup() -> (Machine, TdHandle, Ghci, Bench) {
    let mut m = Machine::configured(32 * MIB);
    let td = td_at_vmcall(&mut m);
    let mut bench = Bench::default();
    let g = Ghci::new(&mut bench, &view(&td), true).unwrap();
    bench.log.clear();
    (m, td, g, bench)
}

fn pages(td: &TdHandle) -> TdPages {
    td.pages()
}

#[test]
fn serve_rejects_bad_operands_with_ghci_statuses_and_does_nothing() {
    let (mut m, td, mut g, mut b) = setup();
    let inval = leaf::status::INVALID_OPERAND;
    let cases: [(u64, [u64; 4], u64); 12] = [
        (leaf::IO, [8, 0, 0x3F8, 0], inval),         // 8-byte port I/O
        (leaf::IO, [3, 0, 0x3F8, 0], inval),         // size 3
        (leaf::IO, [1, 2, 0x3F8, 0], inval),         // direction 2
        (leaf::IO, [1, 0, 0x1_0000, 0], inval),      // port beyond 16 bits
        (leaf::MMIO, [4, 0, 0xB000_0000, 0], inval), // a private GPA
        (leaf::MMIO, [4, 0, SHARED | 0xB000_0002, 0], leaf::status::ALIGN_ERROR),
        (leaf::MMIO, [16, 0, SHARED | 0xB000_0000, 0], inval),
        (leaf::MAP_GPA, [0x1800, 0x1000, 0, 0], inval), // misaligned
        (leaf::MAP_GPA, [0x1000, 0, 0, 0], inval),      // empty
        (leaf::MAP_GPA, [SHARED - 0x1000, 0x2000, 0, 0], inval),
        (leaf::SETUP_EVENT_NOTIFY_INTERRUPT, [15, 0, 0, 0], inval),
        (0x7777, [0, 0, 0, 0], inval),
    ];
    for (sub, args, want) in cases {
        assert_eq!(status(ghci_call(&mut m, &mut g, &mut b, &td, sub, args)), want, "{sub:#x} {args:x?}");
    }
    // GetQuote: a private buffer, a shared one the host never mapped, a size below the header,
    // a size no range has.
    for args in [
        [0x1000, 0x1000, 0, 0],
        [SHARED | 0x1000, 0x1000, 0, 0],
        [SHARED | 0x1000, 8, 0, 0],
        [SHARED | 0x1000, u64::MAX, 0, 0],
    ] {
        assert_eq!(status(ghci_call(&mut m, &mut g, &mut b, &td, leaf::GET_QUOTE, args)), inval, "{args:x?}");
    }
    assert!(b.log.is_empty(), "nothing reached the machine: {:?}", b.log);
    assert_eq!(g.conversions.calls, 0, "no MapGPA ran");
    assert_eq!(g.counts.refused, 16);
    assert_eq!(state_at(&mut m, &td, 0x1000), (0, Some(SeptState::Free)), "the S-EPT unchanged");
}

#[test]
fn serve_ends_the_run_on_power_requests_and_fatal_errors() {
    let (mut m, td, mut g, mut b) = setup();
    let s = ghci_call(&mut m, &mut g, &mut b, &td, leaf::IO, [2, 1, 0x604, 0x2000]);
    assert_eq!(s, Served::Stop(Stop::Power(PowerRequest::Shutdown)));
    let s = ghci_call(&mut m, &mut g, &mut b, &td, leaf::IO, [1, 1, 0xCF9, 0x6]);
    assert_eq!(s, Served::Stop(Stop::Power(PowerRequest::Reset)));
    let s = ghci_call(&mut m, &mut g, &mut b, &td, leaf::REPORT_FATAL_ERROR, [0xBAD, 0, 0, 0]);
    assert_eq!(s, Served::Stop(Stop::FatalError(0xBAD)));
    assert_eq!(ghci_call(&mut m, &mut g, &mut b, &td, leaf::HLT, [1, 0, 0, 0]), Served::Halt { blocked: true });
    assert_eq!(ghci_call(&mut m, &mut g, &mut b, &td, leaf::HLT, [0, 0, 0, 0]), Served::Halt { blocked: false });
}

#[test]
fn map_gpa_to_shared_happy_path_moves_the_frame_from_the_s_ept_to_the_shared_table() {
    let (mut m, td, mut g, mut b) = setup();
    m.enter(td.vcpus[0]);
    let frame = m.aug_accept(&td, 0x3000, PageSize::Size4K);
    m.write(frame + 0x10, b"private data");
    vmcall(&mut m, &td);
    let s = ghci_call(&mut m, &mut g, &mut b, &td, leaf::MAP_GPA, [SHARED | 0x3000, 0x1000, 0, 0]);
    assert_eq!(status(s), leaf::status::SUCCESS);
    assert_eq!(state_at(&mut m, &td, 0x3000).1, Some(SeptState::Free), "removed from the S-EPT");
    let backing = g.shared.lookup(&mut m, &pages(&td), SHARED | 0x3000).unwrap();
    assert_eq!(backing, Some(frame), "the removed frame backs the shared GPA");
    assert!(m.read(frame, 4096).iter().all(|&x| x == 0), "zeroed when it left the TD");
    assert_eq!((g.conversions.to_shared, g.shared.mapped), (1, 1));
    // The TSM walks that table for the TD's shared half.
    m.enter(td.vcpus[0]);
    assert!(m.tsm.running_vcpu(td.vcpus[0]).unwrap().shared_root.is_some());
    // GetQuote on a shared page the host mapped: the status word says no service.
    vmcall(&mut m, &td);
    let s = ghci_call(&mut m, &mut g, &mut b, &td, leaf::GET_QUOTE, [SHARED | 0x3000, 0x1000, 0, 0]);
    assert_eq!(status(s), leaf::status::SUCCESS);
    let word = u64::from_le_bytes(m.read(frame + 8, 8).try_into().unwrap());
    assert_eq!(word, leaf::QUOTE_SERVICE_UNAVAILABLE);
}

#[test]
fn map_gpa_of_part_of_a_2m_page_splits_it_and_converts_only_the_range() {
    let (mut m, td, mut g, mut b) = setup();
    m.enter(td.vcpus[0]);
    m.map_tables(&td, 2 * MIB, 1);
    m.aug_accept(&td, 2 * MIB, PageSize::Size2M);
    vmcall(&mut m, &td);
    let range = [SHARED | (2 * MIB + 0x5000), 0x2000, 0, 0];
    assert_eq!(status(ghci_call(&mut m, &mut g, &mut b, &td, leaf::MAP_GPA, range)), leaf::status::SUCCESS);
    assert_eq!(g.conversions.demoted, 1);
    assert_eq!(g.conversions.to_shared, 2);
    for (gpa, want) in
        [(0x4000, SeptState::Mapped), (0x5000, SeptState::Free), (0x6000, SeptState::Free), (0x7000, SeptState::Mapped)]
    {
        assert_eq!(state_at(&mut m, &td, 2 * MIB + gpa), (0, Some(want)), "{gpa:#x}");
    }
}

#[test]
fn map_gpa_back_to_private_happy_path_augs_for_the_td_to_accept() {
    let (mut m, td, mut g, mut b) = setup();
    m.enter(td.vcpus[0]);
    let frame = m.aug_accept(&td, 0x3000, PageSize::Size4K);
    vmcall(&mut m, &td);
    ghci_call(&mut m, &mut g, &mut b, &td, leaf::MAP_GPA, [SHARED | 0x3000, 0x1000, 0, 0]);
    m.write(frame, b"host wrote in the shared page");
    let s = ghci_call(&mut m, &mut g, &mut b, &td, leaf::MAP_GPA, [0x3000, 0x1000, 0, 0]);
    assert_eq!(status(s), leaf::status::SUCCESS);
    assert_eq!(state_at(&mut m, &td, 0x3000), (0, Some(SeptState::Pending)), "AUGed, not accepted");
    assert_eq!(g.shared.lookup(&mut m, &pages(&td), SHARED | 0x3000).unwrap(), None);
    assert_eq!((g.conversions.to_private, g.shared.mapped), (1, 0));
    m.enter(td.vcpus[0]);
    ok(m.guest(td.vcpus[0], g::MEM_PAGE_ACCEPT, 0x3000, 0, 0).regs, "ACCEPT");
    let back = m.host(h::MEM_SEPT_RD, gpa_level(0x3000, 0), td.tdr, 0, 0).rcx & 0x000F_FFFF_FFFF_F000;
    assert!(m.read(back, 4096).iter().all(|&x| x == 0), "the host's bytes are gone once accepted");
    // A range already private stays as it is.
    vmcall(&mut m, &td);
    ghci_call(&mut m, &mut g, &mut b, &td, leaf::MAP_GPA, [0x3000, 0x1000, 0, 0]);
    assert_eq!(state_at(&mut m, &td, 0x3000).1, Some(SeptState::Mapped));
}

#[test]
fn map_gpa_to_private_beyond_the_tds_ram_is_refused_and_costs_the_host_nothing() {
    let (mut m, td, mut g, mut b) = setup();
    let donated = m.donated_pages();
    // A gigabyte of GPAs where the TD has no memory; a range running past its RAM's end; the
    // PCI window it made shared.
    for args in [[1 << 32, 1 << 30, 0, 0], [15 * MIB, 2 * MIB, 0, 0], [0xC000_0000, 0x20_0000, 0, 0]] {
        let s = ghci_call(&mut m, &mut g, &mut b, &td, leaf::MAP_GPA, args);
        assert_eq!(status(s), leaf::status::INVALID_OPERAND, "{args:x?}");
    }
    assert_eq!(m.donated_pages(), donated, "no frame given for GPAs the TD has no memory at");
    assert_eq!(g.conversions.to_private, 0);
    assert_eq!(state_at(&mut m, &td, 15 * MIB).1, Some(SeptState::Free), "the part in RAM unchanged");
    // A page the TD made shared outside its RAM (a private page it had there) comes back.
    m.enter(td.vcpus[0]);
    m.map_tables(&td, 32 * MIB, 0);
    m.aug_accept(&td, 32 * MIB, PageSize::Size4K);
    vmcall(&mut m, &td);
    ghci_call(&mut m, &mut g, &mut b, &td, leaf::MAP_GPA, [SHARED | (32 * MIB), 0x1000, 0, 0]);
    let s = ghci_call(&mut m, &mut g, &mut b, &td, leaf::MAP_GPA, [32 * MIB, 0x1000, 0, 0]);
    assert_eq!(status(s), leaf::status::SUCCESS);
    assert_eq!(state_at(&mut m, &td, 32 * MIB), (0, Some(SeptState::Pending)));
}

#[test]
fn map_gpa_of_mmio_maps_nothing_and_of_unbacked_ram_gives_fresh_host_frames() {
    let (mut m, td, mut g, mut b) = setup();
    let pci_window = [SHARED | 0xC000_0000, 0x20_0000, 0, 0];
    assert_eq!(status(ghci_call(&mut m, &mut g, &mut b, &td, leaf::MAP_GPA, pci_window)), leaf::status::SUCCESS);
    assert_eq!(g.shared.mapped, 0, "MMIO is served by TDVMCALL<MMIO>, not mapped");
    let ram = [SHARED | (8 * MIB), 0x2000, 0, 0];
    assert_eq!(status(ghci_call(&mut m, &mut g, &mut b, &td, leaf::MAP_GPA, ram)), leaf::status::SUCCESS);
    assert_eq!(g.shared.mapped, 2);
    let f = g.shared.lookup(&mut m, &pages(&td), SHARED | (8 * MIB)).unwrap().unwrap();
    assert!(m.read(f, 4096).iter().all(|&x| x == 0));
}

#[test]
fn fw_cfg_dma_happy_path_transfers_into_the_tds_shared_buffer() {
    let (mut m, td, mut g, mut b) = setup();
    m.enter(td.vcpus[0]);
    let frame = m.aug_accept(&td, 0x3000, PageSize::Size4K);
    vmcall(&mut m, &td);
    // The TD shares a page (edk2's IoMmu bounce buffer) and puts the access structure in it:
    // select item 0 (the signature) and read 4 bytes into the same page at offset 0x100.
    ghci_call(&mut m, &mut g, &mut b, &td, leaf::MAP_GPA, [SHARED | 0x3000, 0x1000, 0, 0]);
    // Item 0 in bits 31:16, SELECT, READ.
    let control: u32 = 0x8 | 0x2;
    let mut access = Vec::new();
    access.extend_from_slice(&control.to_be_bytes());
    access.extend_from_slice(&4u32.to_be_bytes());
    access.extend_from_slice(&0x3100u64.to_be_bytes());
    m.write(frame + 0x40, &access);
    // The device address is the GPA without the shared bit, in two big-endian halves.
    ghci_call(&mut m, &mut g, &mut b, &td, leaf::IO, [4, 1, 0x514, 0]);
    let s = ghci_call(&mut m, &mut g, &mut b, &td, leaf::IO, [4, 1, 0x518, u64::from(0x3040u32.swap_bytes())]);
    assert_eq!(status(s), leaf::status::SUCCESS);
    assert_eq!(m.read(frame + 0x100, 4), b"QEMU");
    assert_eq!(m.read(frame + 0x40, 4), [0, 0, 0, 0], "control 0: done");
    assert_eq!(g.fw_cfg.dma_transfers, 1);
}

#[test]
fn fw_cfg_dma_rejects_an_access_structure_the_host_never_mapped() {
    let (mut m, td, mut g, mut b) = setup();
    ghci_call(&mut m, &mut g, &mut b, &td, leaf::IO, [4, 1, 0x514, 0]);
    let s = ghci_call(&mut m, &mut g, &mut b, &td, leaf::IO, [4, 1, 0x518, u64::from(0x5000u32.swap_bytes())]);
    assert_eq!(status(s), leaf::status::SUCCESS, "the port write is taken");
    assert_eq!(g.fw_cfg.dma_transfers, 0, "but nothing was transferred");
    assert!(b.log.is_empty());
}

/// A device request (R10 != 0) with R12 = `page`.
fn device_call(m: &mut Machine, g: &mut Ghci, td: &TdHandle, request: u64, page: u64, policy: DeviceRequests) -> u64 {
    let regs = Regs { r10: request, r11: 0, r12: page, ..Regs::default() };
    g.device_request(m, &view(td), &regs, policy).unwrap_or_else(|e| panic!("{e}")).r10
}

#[test]
fn device_request_rejects_what_this_host_does_not_serve_and_writes_nothing() {
    let (mut m, td, mut g, _) = setup();
    m.enter(td.vcpus[0]);
    m.aug_accept(&td, 0x3000, PageSize::Size4K);
    vmcall(&mut m, &td);
    let phantom = DeviceRequests::Phantom(0x0100);
    let inval = leaf::status::INVALID_OPERAND;
    // A host with no device refuses GET_TDI, though the page is shared.
    let mut b = Bench::default();
    ghci_call(&mut m, &mut g, &mut b, &td, leaf::MAP_GPA, [SHARED | 0x3000, 0x1000, 0, 0]);
    let shared_frame = g.shared.lookup(&mut m, &pages(&td), SHARED | 0x3000).unwrap().unwrap();
    assert_eq!(device_call(&mut m, &mut g, &td, vmcall::GET_TDI, SHARED | 0x3000, DeviceRequests::Refuse), inval);
    // The phantom host refuses every other request, a private page, a misaligned one, and a
    // shared one the TD never converted.
    assert_eq!(device_call(&mut m, &mut g, &td, vmcall::GET_REPORT, SHARED | 0x3000, phantom), inval);
    assert_eq!(device_call(&mut m, &mut g, &td, vmcall::GET_TDI, 0x3000, phantom), inval);
    assert_eq!(device_call(&mut m, &mut g, &td, vmcall::GET_TDI, SHARED | 0x3008, phantom), inval);
    assert_eq!(device_call(&mut m, &mut g, &td, vmcall::GET_TDI, SHARED | 0x5000, phantom), inval);
    assert!(m.read(shared_frame, 16).iter().all(|&x| x == 0), "nothing written");
    assert_eq!(g.counts.refused, 5);
}

#[test]
fn device_request_phantom_names_its_function_in_the_shared_page() {
    let (mut m, td, mut g, mut b) = setup();
    m.enter(td.vcpus[0]);
    m.aug_accept(&td, 0x3000, PageSize::Size4K);
    vmcall(&mut m, &td);
    ghci_call(&mut m, &mut g, &mut b, &td, leaf::MAP_GPA, [SHARED | 0x3000, 0x1000, 0, 0]);
    let status = device_call(&mut m, &mut g, &td, vmcall::GET_TDI, SHARED | 0x3000, DeviceRequests::Phantom(0x0100));
    assert_eq!(status, leaf::status::SUCCESS);
    let frame = g.shared.lookup(&mut m, &pages(&td), SHARED | 0x3000).unwrap().unwrap();
    assert_eq!(m.read(frame, 12), [4, 0, 0, 0, 0, 0, 0, 0, 0x00, 0x01, 0, 0], "[len 4][0x0100]");
}

/// A TD whose device has a DMA entry: the IOMMU walks the TD's S-EPT, so a page the TD makes
/// shared may still sit in the IOTLB. Without TDH.IQ.INV.REQUEST after the TRACK the TSM refuses
/// the REMOVE and the host's MapGPA fails naming it; with `conversions.iotlb` (which the host
/// sets after TDH.DMAR.ADD) the conversion completes and the device no longer reaches the page.
#[test]
fn map_gpa_to_shared_of_a_td_with_a_dma_entry_invalidates_the_iotlb_after_the_track() {
    use seamless_harness::assign::{device_config, FUNCTION};
    let mut m = Machine::configured(64 * MIB);
    let td = m.running_td();
    m.aug_accept(&td, 0x3000, PageSize::Size4K);
    m.aug_accept(&td, 0x4000, PageSize::Size4K);
    m.iommu_setup();
    let mut dev = tdisp_device::Device::new(device_config()).unwrap();
    let mut a = m.connect(&mut dev);
    m.ide_setup(&mut dev, &mut a);
    m.bind(&td, &mut a);
    m.lock(&mut dev, &mut a);
    ok(m.dmar_add(&td, &a), "DMAR.ADD");
    let accepted = m.guest(td.vcpus[0], g::DMAR_ACCEPT, u64::from(FUNCTION), 0, 0);
    assert_eq!(accepted.regs.status(), tsm::Status::SUCCESS);
    let reaches = |m: &Machine, iova: u64| {
        let iommu = m.tsm.iommu().expect("IOMMU set up");
        let rid = tsm::iommu::Rid::from_raw(FUNCTION as u16);
        iommu.translate(m.tsm.platform(), rid, None, iova, true).is_ok()
    };
    assert!(reaches(&m, 0x3000) && reaches(&m, 0x4000), "the device reaches both accepted pages");
    vmcall(&mut m, &td);
    let mut bench = Bench::default();
    let mut gh = Ghci::new(&mut bench, &view(&td), true).unwrap();
    let map = |gpa: u64| Regs { r11: leaf::MAP_GPA, r12: SHARED | gpa, r13: 0x1000, ..Regs::default() };

    let e = gh.serve(&mut m, &mut bench, &view(&td), &map(0x3000)).unwrap_err();
    assert!(e.to_string().contains("TDH.MEM.PAGE.REMOVE"), "{e}");
    assert_eq!(state_at(&mut m, &td, 0x3000).1, Some(SeptState::Blocked), "blocked, not removed");

    gh.conversions.iotlb = true;
    let s = gh.serve(&mut m, &mut bench, &view(&td), &map(0x4000)).unwrap();
    assert_eq!(status(s), leaf::status::SUCCESS);
    assert_eq!(state_at(&mut m, &td, 0x4000).1, Some(SeptState::Free), "removed from the S-EPT");
    assert!(!reaches(&m, 0x4000), "the device no longer reaches the page made shared");
}
