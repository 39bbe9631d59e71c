//! The S-EPT figures: 1 GiB of private memory added and accepted, then blocked, tracked and
//! removed, through the real host and guest ABIs with every ownership check.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use seamless_harness::driver::{gpa_level, ok, Machine, TdHandle};
use tsm::abi::{guest::leaf as g, host::leaf as h};
use tsm::addr::PageSize;
use tsm::{Regs, Status};

use crate::Figures;

const GIB: u64 = 1 << 30;
const GPA: u64 = GIB; // the 1 GiB of guest memory sits at GPA 1G..2G
const PAGES_4K: u64 = 262_144;
const PAGES_2M: u64 = 512;

struct Times {
    aug: f64,
    accept: f64,
    block_track_remove: f64,
}

fn setup() -> (Machine, TdHandle) {
    let mut m = Machine::configured(GIB + 64 * (1 << 20));
    // The dispatcher's per-call clock reads and log would be measured too.
    m.tsm.platform_mut().set_call_log_enabled(false);
    m.tsm.platform_mut().mem.touch_all();
    let td = m.running_td();
    (m, td)
}

#[inline]
fn call(m: &mut Machine, leaf: u64, rcx: u64, rdx: u64, r8: u64) {
    let r = m.tsm.host_call(&Regs::call(leaf, rcx, rdx, r8, 0));
    assert_eq!(r.status(), Status::SUCCESS, "leaf {leaf}: {r:x?}");
}

fn run_4k() -> Times {
    let (mut m, td) = setup();
    // Host frames for the tables and the data, chosen before timing.
    let tables: Vec<u64> = (0..PAGES_4K / 512 + 1).map(|_| m.page()).collect();
    let data: Vec<u64> = (0..PAGES_4K).map(|_| m.page()).collect();
    let vcpu = td.vcpus[0];
    // The PDPTE for GPA 1G needs its page directory; that is one table, outside the timing.
    m.map_tables(&td, GPA, 1);

    let t = Instant::now();
    for (i, &page) in data.iter().enumerate() {
        let gpa = GPA + i as u64 * 4096;
        if i % 512 == 0 {
            call(&mut m, h::MEM_SEPT_ADD, gpa_level(gpa, 1), td.tdr, tables[i / 512]);
        }
        call(&mut m, h::MEM_PAGE_AUG, gpa_level(gpa, 0), td.tdr, page);
    }
    let aug = t.elapsed().as_nanos() as f64 / PAGES_4K as f64;

    let t = Instant::now();
    for i in 0..PAGES_4K {
        let r = m.tsm.guest_call(vcpu, &Regs::call(g::MEM_PAGE_ACCEPT, gpa_level(GPA + i * 4096, 0), 0, 0, 0));
        assert_eq!(r.regs.status(), Status::SUCCESS);
    }
    let accept = t.elapsed().as_nanos() as f64 / PAGES_4K as f64;

    let t = Instant::now();
    for i in 0..PAGES_4K {
        call(&mut m, h::MEM_RANGE_BLOCK, gpa_level(GPA + i * 4096, 0), td.tdr, 0);
    }
    call(&mut m, h::VP_KICK, vcpu, 0, 0);
    call(&mut m, h::MEM_TRACK, td.tdr, 0, 0);
    for i in 0..PAGES_4K {
        call(&mut m, h::MEM_PAGE_REMOVE, gpa_level(GPA + i * 4096, 0), td.tdr, 0);
    }
    let block_track_remove = t.elapsed().as_nanos() as f64 / PAGES_4K as f64;
    Times { aug, accept, block_track_remove }
}

fn run_2m() -> f64 {
    let (mut m, td) = setup();
    let data: Vec<u64> = (0..PAGES_2M).map(|_| m.block(PageSize::Size2M)).collect();
    m.map_tables(&td, GPA, 1);
    let vcpu = td.vcpus[0];
    let t = Instant::now();
    for (i, &block) in data.iter().enumerate() {
        let gpa = GPA + i as u64 * PageSize::Size2M.bytes();
        call(&mut m, h::MEM_PAGE_AUG, gpa_level(gpa, 1), td.tdr, block);
        let r = m.tsm.guest_call(vcpu, &Regs::call(g::MEM_PAGE_ACCEPT, gpa_level(gpa, 1), 0, 0, 0));
        assert_eq!(r.regs.status(), Status::SUCCESS);
    }
    t.elapsed().as_nanos() as f64 / PAGES_2M as f64
}

/// Zeroing the same 1 GiB through the same `PhysMem::zero`, fenced per page as ACCEPT is: the
/// memory-bandwidth share of AUG+ACCEPT.
fn zero_4k() -> f64 {
    use seamless_harness::HostMem;
    use tsm::addr::{HostPhysAddr, Pfn};
    use tsm::platform::PhysMem;
    let mut mem = HostMem::new(HostPhysAddr::new(1 << 32).unwrap(), PAGES_4K * 4096);
    mem.touch_all();
    let first = mem.base_pfn();
    let t = Instant::now();
    for i in 0..PAGES_4K {
        let pfn: Pfn = first.checked_add(i).unwrap();
        mem.zero(pfn);
        mem.fence();
    }
    t.elapsed().as_nanos() as f64 / PAGES_4K as f64
}

/// PAMT bytes per 4K frame, measured as the PAMT area SYS.CONFIG accepted over the frames it covers.
fn pamt_bytes_per_page() -> f64 {
    let mut m = Machine::configured(GIB);
    let [_, size, _, pamt_size] = m.tdmr_info();
    let info = m.host(h::SYS_INFO, 0, 0, 0, 0);
    ok(info, "SYS.INFO");
    assert_eq!(info.r9, 16, "the TSM's own figure");
    pamt_size as f64 / (size / 4096) as f64
}

/// Runs the S-EPT benchmarks; `x86_64_ns` is the comparator's ns per 4K mapping.
pub fn run(figs: &mut Figures, x86_64_ns: f64) {
    let mut best = Times { aug: f64::INFINITY, accept: f64::INFINITY, block_track_remove: f64::INFINITY };
    for _ in 0..3 {
        let t = run_4k();
        best.aug = best.aug.min(t.aug);
        best.accept = best.accept.min(t.accept);
        best.block_track_remove = best.block_track_remove.min(t.block_track_remove);
    }
    let aug_accept = best.aug + best.accept;
    figs.record("sept_aug_accept_4k_ns_per_page", aug_accept, "ns");
    figs.record("sept_aug_4k_ns_per_page", best.aug, "ns");
    figs.record("sept_accept_4k_ns_per_page", best.accept, "ns");
    let zero = (0..3).map(|_| zero_4k()).fold(f64::INFINITY, f64::min);
    figs.record("page_zero_4k_ns_per_page", zero, "ns");
    figs.record("sept_aug_accept_4k_excluding_zeroing_ns_per_page", (aug_accept - zero).max(0.0), "ns");
    let two_m = (0..3).map(|_| run_2m()).fold(f64::INFINITY, f64::min);
    figs.record("sept_aug_accept_2m_ns_per_page", two_m, "ns");
    figs.record("sept_block_track_remove_4k_ns_per_page", best.block_track_remove, "ns");
    figs.record("sept_vs_x86_64_map_ratio", aug_accept / x86_64_ns, "ratio");
    figs.record("sept_aug_vs_x86_64_map_ratio", best.aug / x86_64_ns, "ratio");
    figs.record("pamt_bytes_per_4k_page", pamt_bytes_per_page(), "bytes");
}
