//! The guest's sequence (`tsm_client::guest::Guest`), the one the TD binary runs, driven in
//! process against the real TSM and the in-process `tdisp-device`: each step that needs the host
//! ends in a VMCALL that exits (`Step::Vmcall`), the test plays the host's part through
//! `tsm_client::host::td_device` (the request decoded against its shared page, the answer put
//! there) and enters the vCPU again. What the host hands over is hostile: a function the TD has
//! no TDI of, a TDI that is not locked, a shared page whose length is wrong, a report that does
//! not hash to the TSM's digest each stop the guest with its own error before it accepts
//! anything; then the whole flow to a running TDI.
//!
//! The guest's memory here is a walk of its S-EPT to MAPPED leaves (`Tsm::private_leaf`), what
//! the TD world's derived table maps; device registers are not modelled, so the flow stops at
//! START, before the TD reads them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use seamless_harness::assign::{device_config, Assignment, DeviceMailbox, BAR_GPA, FUNCTION};
use seamless_harness::driver::{default_params, Machine, TdHandle};
use seamless_harness::HostPlatform;
use tdisp_device::Device;
use tsm::addr::{PageSize, Pfn};
use tsm::platform::PhysMem;
use tsm::sept::SeptState;
use tsm::td::TdParams;
use tsm::{Regs, Status, TdExit, Tsm};
use tsm_client::guest::{tdi_state, Guest, GuestError, GuestMemory, Plan, Step, Tdcall, DEMO_LAYOUT};
use tsm_client::host::device as flow;
use tsm_client::host::td_device::Request;
use tsm_client::host::PumpStats;
use tsm_client::shared;

const MIB: u64 = 1 << 20;

/// The TD's vCPU in process: TDCALL as a direct call, private memory through its S-EPT, and the
/// host page the test shares with it (named by a shared-bit GPA, as the TD names it).
struct InProcessTd<'a> {
    tsm: &'a mut Tsm<HostPlatform>,
    tdvpr: u64,
    shared: u64,
}

/// GPAW 48's shared bit, and the page the guest names.
const SHARED_GPA: u64 = 1 << 47 | DEMO_LAYOUT.shared_offset;

impl InProcessTd<'_> {
    fn frame(&self, gpa: u64) -> Result<(Pfn, usize), GuestError> {
        let leaf = self.tsm.private_leaf(self.tdvpr, gpa).map_err(|_| GuestError::NotMapped { gpa, state: 0xFF })?;
        if leaf.state != SeptState::Mapped || leaf.size != PageSize::Size4K {
            return Err(GuestError::NotMapped { gpa, state: leaf.state as u8 });
        }
        Ok((leaf.frame, (gpa & 0xFFF) as usize))
    }
}

impl Tdcall for InProcessTd<'_> {
    fn tdcall(&mut self, regs: &mut Regs) -> Option<TdExit> {
        let r = self.tsm.guest_call(self.tdvpr, regs);
        *regs = r.regs;
        r.exit
    }
}

impl GuestMemory for InProcessTd<'_> {
    fn read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), GuestError> {
        let (pfn, off) = self.frame(gpa)?;
        self.tsm.platform().read_bytes(pfn, off, buf);
        Ok(())
    }
    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), GuestError> {
        let (pfn, off) = self.frame(gpa)?;
        self.tsm.platform_mut().write_bytes(pfn, off, data);
        Ok(())
    }
    fn mmio_read_u32(&mut self, gpa: u64) -> Result<u32, GuestError> {
        Err(GuestError::NotMapped { gpa, state: 0xFE })
    }
    fn map_device(&mut self, _gpa: u64, _pages: u64) -> Result<(), GuestError> {
        Ok(())
    }
    fn shared_addr(&self) -> u64 {
        SHARED_GPA
    }
    fn shared_read(&mut self, offset: u64, buf: &mut [u8]) {
        let pa = self.shared + offset;
        self.tsm.platform().read_bytes(Pfn::new(pa >> 12).unwrap(), (pa & 0xFFF) as usize, buf);
    }
    fn shared_write(&mut self, offset: u64, data: &[u8]) {
        let pa = self.shared + offset;
        self.tsm.platform_mut().write_bytes(Pfn::new(pa >> 12).unwrap(), (pa & 0xFFF) as usize, data);
    }
}

/// A TD with its guest's four first work pages accepted and the vCPU in guest mode, a device,
/// and the host page shared with the guest.
struct Setup {
    m: Machine,
    td: TdHandle,
    device: Device,
    shared: u64,
    guest: Guest,
}

fn setup() -> Setup {
    setup_with([0; 48])
}

/// [`setup`] with MRCONFIGID `config_id`.
fn setup_with(config_id: [u8; 48]) -> Setup {
    let mut m = Machine::configured(64 * MIB);
    let mut td = m.create_td(&TdParams { mr_config_id: config_id, ..default_params() });
    let vcpu = m.add_vcpu(&mut td);
    m.map_tables(&td, 0, 0);
    m.finalize(&td);
    m.enter(vcpu);
    for i in 0..4 {
        m.aug_accept(&td, DEMO_LAYOUT.work + i * 4096, PageSize::Size4K);
    }
    let shared = m.scratch();
    let device = Device::new(device_config()).unwrap();
    Setup { m, td, device, shared, guest: Guest::new(DEMO_LAYOUT) }
}

impl Setup {
    /// Runs guest step `f` on the vCPU.
    fn guest<T>(&mut self, f: impl FnOnce(&mut Guest, &mut InProcessTd<'_>) -> T) -> T {
        let mut td = InProcessTd { tsm: &mut self.m.tsm, tdvpr: self.td.vcpus[0], shared: self.shared };
        f(&mut self.guest, &mut td)
    }

    /// The request a step ended in, decoded as the host's td_device does.
    fn request(&self, step: Result<Step, GuestError>) -> Request {
        let Ok(Step::Vmcall(args)) = step else { panic!("the step did not end in a VMCALL: {step:?}") };
        Request::decode(args, SHARED_GPA).unwrap()
    }

    /// Puts `data` in the shared page as the host does, and enters the vCPU again.
    fn answer(&mut self, data: Option<&[u8]>) {
        if let Some(d) = data {
            let (len, d) = shared::frame(d);
            self.m.write(self.shared, &len.to_le_bytes());
            self.m.write(self.shared + 8, d);
        }
        self.m.enter(self.td.vcpus[0]);
    }

    /// The host side up to a locked TDI bound to the TD.
    fn locked(&mut self) -> Assignment {
        let mut a = self.m.connect(&mut self.device);
        self.m.ide_setup(&mut self.device, &mut a);
        self.m.bind(&self.td, &mut a);
        self.m.lock(&mut self.device, &mut a);
        a
    }

    /// GET_TDI answered with `function`; returns what the guest's read of the TDI came to.
    fn read_tdi_of(&mut self, function: u32) -> Result<Step, GuestError> {
        let r = self.guest(|g, t| g.request_tdi(t));
        assert_eq!(self.request(r), Request::GetTdi);
        self.answer(Some(&function.to_le_bytes()));
        self.guest(|g, t| g.read_tdi(t))
    }
}

#[test]
fn plan_rejects_an_mrconfigid_that_names_no_plan() {
    let mut id = [0u8; 48];
    id[0] = 7;
    let mut s = setup_with(id);
    assert_eq!(s.guest(|g, t| g.plan(t)), Err(GuestError::UnknownPlan(7)));
    id[0] = 1;
    id[47] = 1;
    let mut s = setup_with(id);
    assert_eq!(s.guest(|g, t| g.plan(t)), Err(GuestError::UnknownPlan(1)));
}

#[test]
fn plan_happy_path_read_from_the_tds_own_tdreport() {
    for plan in [Plan::Assign, Plan::Revoke, Plan::Probe] {
        let mut s = setup_with(plan.config_id());
        assert_eq!(s.guest(|g, t| g.plan(t)), Ok(plan));
    }
}

#[test]
fn read_tdi_rejects_a_function_the_td_has_no_tdi_of() {
    let mut s = setup();
    s.locked();
    let got = s.read_tdi_of(FUNCTION + 1);
    assert_eq!(
        got,
        Err(GuestError::Call { leaf: "TDG.TDI.RD", status: Status::TDI_NOT_PRESENT.with_operand(tsm::Operand::Rcx) })
    );
    assert_eq!(s.guest.function, 0, "the guest believes no function the TSM did not answer for");
}

#[test]
fn read_tdi_rejects_a_tdi_that_is_not_locked() {
    let mut s = setup();
    let mut a = s.m.connect(&mut s.device);
    s.m.ide_setup(&mut s.device, &mut a);
    s.m.bind(&s.td, &mut a);
    let got = s.read_tdi_of(FUNCTION);
    assert_eq!(got, Err(GuestError::TdiState { wanted: tdi_state::CONFIG_LOCKED, found: tdi_state::CONFIG_UNLOCKED }));
}

#[test]
fn read_tdi_rejects_a_shared_page_without_exactly_a_function_id() {
    for data in [&[0x18u8, 0, 0][..], &[0x18, 0, 0, 0, 0]] {
        let mut s = setup();
        s.locked();
        let r = s.guest(|g, t| g.request_tdi(t));
        s.request(r);
        s.answer(Some(data));
        assert_eq!(s.guest(|g, t| g.read_tdi(t)), Err(GuestError::BadSharedLength(data.len() as u64)));
    }
    // A length word past the page.
    let mut s = setup();
    s.locked();
    let r = s.guest(|g, t| g.request_tdi(t));
    s.request(r);
    s.m.write(s.shared, &u64::MAX.to_le_bytes());
    s.answer(None);
    assert_eq!(s.guest(|g, t| g.read_tdi(t)), Err(GuestError::BadSharedLength(u64::MAX)));
}

#[test]
fn check_report_rejects_a_report_the_host_changed() {
    let mut s = setup();
    let a = s.locked();
    let r = s.read_tdi_of(FUNCTION);
    assert_eq!(s.request(r), Request::GetReport { function: u64::from(FUNCTION) });
    let mut report = a.report.clone();
    report[20] ^= 1;
    s.answer(Some(&report));
    assert_eq!(s.guest(|g, t| g.check_report(t)), Err(GuestError::ReportMismatch));
    assert_eq!(s.guest.findings.mmio_pages, 0, "nothing taken from a report that does not hash right");
}

#[test]
fn guest_flow_happy_path_to_a_running_tdi_through_the_one_sequence() {
    let mut s = setup();
    s.m.iommu_setup();
    let a = s.locked();
    let r = s.read_tdi_of(FUNCTION);
    assert_eq!(s.request(r), Request::GetReport { function: u64::from(FUNCTION) });
    s.answer(Some(&a.report));
    s.guest(|g, t| g.check_report(t)).unwrap();
    assert_eq!((s.guest.function, s.guest.findings.generation), (u64::from(FUNCTION), a.generation));
    assert_eq!(s.guest.findings.mmio_pages, u64::from(seamless_harness::assign::BAR0_PAGES));
    // MAP_MMIO names the pages the guest took from the report; the host imports and maps them.
    let r = s.guest(|g, t| g.request_mmio(t));
    let Request::MapMmio { function, pages } = s.request(r) else { panic!("MAP_MMIO") };
    assert_eq!((function, pages), (u64::from(FUNCTION), u64::from(seamless_harness::assign::BAR0_PAGES)));
    s.m.import_all(&a);
    s.m.map_range(&s.td, &a, 0, BAR_GPA);
    s.answer(None);
    s.guest(|g, t| g.accept_mmio(t)).unwrap();
    let r = s.guest(|g, t| g.request_dma(t));
    assert_eq!(s.request(r), Request::AddDma { function: u64::from(FUNCTION) });
    let ok = s.m.dmar_add(&s.td, &a);
    assert_eq!(ok.status(), Status::SUCCESS);
    s.answer(None);
    s.guest(|g, t| g.accept_dma_and_authorise(t)).unwrap();
    let r = s.guest(|g, t| g.request_start(t));
    assert_eq!(s.request(r), Request::Start { function: u64::from(FUNCTION) });
    flow::start(&mut s.m, &mut DeviceMailbox(&mut s.device), &a.progress(), &mut PumpStats::default()).unwrap();
    s.answer(None);
    assert_eq!(s.guest(|g, t| g.tdi_state(t)), Ok(tdi_state::RUN));
}
