//! The device-assignment figures, through the real host and guest ABIs with the in-process
//! device: the whole flow from SPDM.CONNECT to a running TDI, and mapping plus accepting a 1 GiB
//! BAR of private MMIO in 4K and in 2M pages.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use seamless_harness::assign::{device_config, device_config_bar, Assignment, BAR_BASE, FUNCTION};
use seamless_harness::driver::{gpa_level, Machine, TdHandle};
use tdisp_device::Device;
use tsm::abi::{guest::leaf as g, host::leaf as h};
use tsm::{Regs, Status};

use crate::Figures;

const MIB: u64 = 1 << 20;
const BAR_PAGES: u32 = 262_144; // 1 GiB
const GPA: u64 = 1 << 40; // the BAR sits at GPA 1 TiB

/// One whole assignment, connect to RUN, in milliseconds.
fn flow_ms() -> f64 {
    let mut m = Machine::configured(64 * MIB);
    m.tsm.platform_mut().set_call_log_enabled(false);
    let td = m.running_td();
    let mut dev = Device::new(device_config()).unwrap();
    let t = Instant::now();
    let a = m.assign(&mut dev, &td);
    let ms = t.elapsed().as_secs_f64() * 1e3;
    assert_eq!(m.tsm.tdi_summary(seamless_harness::assign::pfn(a.tdi)).unwrap().state, tsm::tdi::TdiState::Run);
    ms
}

/// A locked TDI with a 1 GiB BAR imported, its S-EPT tables present down to `leaf_level`.
fn locked_1g(leaf_level: u8) -> (Machine, TdHandle, Assignment) {
    let mut m = Machine::configured(64 * MIB);
    m.tsm.platform_mut().set_call_log_enabled(false);
    let td = m.running_td();
    let mut dev = Device::new(device_config_bar(BAR_PAGES)).unwrap();
    let mut a = m.connect(&mut dev);
    m.ide_setup(&mut dev, &mut a);
    m.bind(&td, &mut a);
    m.lock(&mut dev, &mut a);
    m.import_all(&a);
    let step = if leaf_level == 0 { 1 << 21 } else { 1 << 30 };
    for gpa in (GPA..GPA + (1 << 30)).step_by(step) {
        m.map_tables(&td, gpa, leaf_level);
    }
    (m, td, a)
}

/// MMIO.MAP + MMIO.ACCEPT of the whole BAR in pages of `level`, ns per page.
fn map_accept(level: u8) -> f64 {
    let (mut m, td, _a) = locked_1g(level);
    let size = if level == 0 { 4096u64 } else { 2 * MIB };
    let pages = (1u64 << 30) / size;
    let vcpu = td.vcpus[0];
    let t = Instant::now();
    for i in 0..pages {
        let (gpa, hpa) = (GPA + i * size, BAR_BASE + i * size);
        let r = m.tsm.host_call(&Regs::call(h::MMIO_MAP, gpa_level(gpa, level), td.tdr, hpa, 0));
        assert_eq!(r.status(), Status::SUCCESS, "MMIO.MAP {r:x?}");
        let call =
            Regs { r9: i * size, ..Regs::call(g::MMIO_ACCEPT, gpa_level(gpa, level), 0, u64::from(FUNCTION), 0) };
        let r = m.tsm.guest_call(vcpu, &call);
        assert_eq!(r.regs.status(), Status::SUCCESS, "MMIO.ACCEPT {r:x?}");
    }
    t.elapsed().as_nanos() as f64 / pages as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs the device-assignment benchmarks.
pub fn run(figs: &mut Figures) {
    figs.record("assign_flow_inproc_ms", median((0..5).map(|_| flow_ms()).collect()), "ms");
    let best = |level| (0..3).map(|_| map_accept(level)).fold(f64::INFINITY, f64::min);
    figs.record("mmio_map_accept_4k_ns_per_page", best(0), "ns");
    figs.record("mmio_map_accept_2m_ns_per_page", best(1), "ns");
}
