//! The one unbind order (`tsm_client::host::unbind`), as the firmware runs it: the teardown of a
//! completed flow, and the cleanup after a flow that stopped after any of its steps, walk the
//! same order and give every donated page back; the teardown stops at the first refusal, the
//! cleanup counts it and goes on.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use seamless_harness::assign::{device_config, DeviceMailbox, BAR0_PAGES, BAR_BASE, BAR_GPA, FUNCTION, LOCK_FLAGS};
use seamless_harness::driver::{Machine, TdHandle};
use tdisp_device::Device;
use tsm::addr::Pfn;
use tsm::Status;
use tsm_client::guest;
use tsm_client::host::device::{self, Assignment};
use tsm_client::host::unbind::{self, Holdings, Policy, Unbound};
use tsm_client::host::{HostError, PumpStats};

const MIB: u64 = 1 << 20;
const FN: u64 = FUNCTION as u64;
const PAGES: u64 = BAR0_PAGES as u64;

/// The flow's steps, in order, as the firmware takes them.
const STEPS: [&str; 11] = [
    "SPDM.CREATE",
    "SPDM.CONNECT",
    "IDE setup",
    "TDI.CREATE",
    "TDI.LOCK",
    "DMABUF.IMPORT",
    "MMIO.MAP",
    "guest MMIO.ACCEPT",
    "DMAR.ADD",
    "guest DMAR.ACCEPT and authorisation",
    "TDI.START",
];

/// Runs the first `steps` steps of the flow; returns what exists.
fn flow(m: &mut Machine, dev: &mut Device, td: &TdHandle, steps: usize) -> Assignment {
    let mut a = Assignment::default();
    let mut s = PumpStats::default();
    let doe = &mut DeviceMailbox(dev);
    for (step, name) in STEPS.iter().enumerate().take(steps) {
        let r = match step {
            0 => device::pdev_create(m, FUNCTION).map(|p| a = p),
            1 => device::connect(m, doe, &mut a, &mut s),
            2 => device::ide_setup(m, doe, &mut a, &mut s),
            3 => device::bind(m, td.tdr, FUNCTION, &mut a),
            4 => device::lock(m, doe, LOCK_FLAGS, &mut a, &mut s),
            5 => device::import(m, &a, 0, BAR_BASE, PAGES),
            6 => device::map_mmio(m, &td.pages(), &mut a, (BAR_BASE, PAGES), BAR_GPA),
            7 => guest::accept_mmio(&mut m.vcpu(td.vcpus[0]), FN, 0, BAR_GPA, PAGES).map_err(|e| panic!("{e}")),
            8 => device::dmar_add(m, &td.pages(), &mut a),
            9 => {
                let v = &mut m.vcpu(td.vcpus[0]);
                let r =
                    guest::call(v, "TDG.DMAR.ACCEPT", tsm::Regs::call(tsm::abi::guest::leaf::DMAR_ACCEPT, FN, 0, 0, 0))
                        .and_then(|_| guest::authorise_start(v, FN, a.generation));
                r.map_err(|e| panic!("{e}"))
            }
            _ => device::start(m, doe, &a, &mut s),
        };
        r.unwrap_or_else(|e: HostError| panic!("{name}: {e}"));
    }
    a
}

/// A machine with a running TD and the IOMMU set up, a device, and the first `steps` steps of
/// the flow done.
struct Fixture {
    m: Machine,
    td: TdHandle,
    dev: Device,
    a: Assignment,
}

impl Fixture {
    fn after(steps: usize) -> Fixture {
        let mut m = Machine::configured(64 * MIB);
        let td = m.running_td();
        m.iommu_setup();
        let mut dev = Device::new(device_config()).unwrap();
        let a = flow(&mut m, &mut dev, &td, steps);
        Fixture { m, td, dev, a }
    }

    /// The one unbind order under `policy`.
    fn unbind(&mut self, policy: Policy) -> Result<Unbound, HostError> {
        let pages = self.td.pages();
        let holdings = Holdings { td: Some((&pages, &self.td.vcpus)), iommu: true };
        let doe = &mut DeviceMailbox(&mut self.dev);
        let stats = &mut PumpStats::default();
        match policy {
            Policy::Strict => unbind::teardown(&mut self.m, doe, &self.a, holdings, stats).map(|()| Unbound::default()),
            Policy::Lenient => Ok(unbind::cleanup(&mut self.m, doe, &self.a, holdings, stats)),
        }
    }
}

#[test]
fn teardown_of_the_whole_flow_gives_every_page_back() {
    let mut f = Fixture::after(STEPS.len());
    let state = f.m.tsm.tdi_summary(Pfn::new(f.a.tdi >> 12).unwrap()).unwrap().state;
    assert_eq!(state, tsm::tdi::TdiState::Run);

    let r = f.unbind(Policy::Strict);
    assert_eq!(r.map(|u| u.refused), Ok(0));
    let Fixture { mut m, dev, .. } = f;
    assert_eq!(m.frames_in_use(), 0, "every donated page came back");
    assert_eq!(dev.session_count(), 0, "the device ended the session");
    assert!(dev.ide_keys().values().all(|k| !k.active), "the device stopped its keys");
    assert_eq!(tsm_client::host::td::check_all_free(&mut m), Ok(m.donated_pages()));
}

#[test]
fn cleanup_after_a_failure_at_every_step_gives_every_page_back() {
    for steps in 0..=STEPS.len() {
        let mut f = Fixture::after(steps);
        let out = f.unbind(Policy::Lenient).unwrap();
        let Fixture { m, dev, .. } = f;
        let after = if steps == 0 { "nothing" } else { STEPS[steps - 1] };
        assert_eq!(out.pages.held, 0, "after {after}: {out}");
        assert_eq!(m.frames_in_use(), 0, "after {after}: {out}");
        assert_eq!(dev.session_count(), 0, "after {after}: the session ended");
        // What the TSM refuses on the way is only what the state at that step does not allow:
        // STOP of a TDI that was never locked, DISCONNECT of a PDEV that never connected.
        let refusals_allowed = u32::from(steps == 1) + u32::from(steps == 4);
        assert_eq!(out.refused, refusals_allowed, "after {after}: {out}");
    }
}

#[test]
fn teardown_stops_at_the_first_refusal_and_cleanup_goes_on() {
    // A TDI created, never locked: TDI.STOP is refused.
    let mut f = Fixture::after(4);
    let r = f.unbind(Policy::Strict);
    let Err(HostError::Call { leaf, status, .. }) = r else { panic!("{r:?}") };
    assert_eq!((leaf, status.code()), ("TDH.TDI.STOP", Status::TDI_STATE_INCORRECT));
    assert!(f.m.tsm.tdi_summary(Pfn::new(f.a.tdi >> 12).unwrap()).is_some(), "the strict walk stopped there");

    let out = f.unbind(Policy::Lenient).unwrap();
    assert_eq!(out.refused, 1, "{out}");
    assert_eq!(out.pages.held, 0, "{out}");
    assert_eq!(f.m.frames_in_use(), 0);
}
