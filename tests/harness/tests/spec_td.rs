//! Spec tables for the TSM, TD and vCPU leaves, and teardown.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{expect, expect_op, rejects};
use seamless_harness::driver::{default_params, gpa_level, ok, Machine, PRIVATE_BASE, SCRATCH_BASE, TDMR_BASE};
use tsm::abi::host::leaf;
use tsm::addr::{PageSize, Pfn};
use tsm::pamt::PageType;
use tsm::td::Lifecycle;
use tsm::{Operand, Status};

const MIB: u64 = 1 << 20;

fn machine() -> Machine {
    Machine::configured(32 * MIB)
}

fn lifecycle(m: &Machine, tdr: u64) -> Lifecycle {
    m.tsm.td_summary(Pfn::new(tdr >> 12).unwrap()).unwrap().lifecycle
}

// ---- TDH.SYS.INFO / TDH.SYS.CONFIG -----------------------------------------------------------

#[test]
fn sys_info_works_before_config() {
    let mut m = Machine::new(16 * MIB);
    let r = m.host(leaf::SYS_INFO, 0, 0, 0, 0);
    ok(r, "SYS.INFO");
    assert_eq!((r.rcx, r.r9, r.r11), (2, 16, 0));
    m.sys_config();
    assert_eq!(m.host(leaf::SYS_INFO, 0, 0, 0, 0).r11, 1);
}

#[test]
fn sys_config_rejects_a_second_call() {
    let mut m = machine();
    expect(&m.sys_config(), Status::SYS_CONFIG_NOT_PENDING);
}

#[test]
fn sys_config_rejects_bad_counts_and_array_addresses() {
    let mut m = Machine::new(16 * MIB);
    expect_op(&m.sys_config_with(&[]), Status::OPERAND_INVALID, Operand::Rdx);
    let info = m.tdmr_info();
    expect_op(&m.sys_config_with(&[info; 9]), Status::OPERAND_INVALID, Operand::Rdx);
    expect_op(&m.host(leaf::SYS_CONFIG, SCRATCH_BASE + 8, 1, 0, 0), Status::OPERAND_INVALID, Operand::Rcx);
    expect_op(&m.host(leaf::SYS_CONFIG, SCRATCH_BASE + 4096 - 32, 2, 0, 0), Status::OPERAND_INVALID, Operand::Rcx);
    expect_op(&m.host(leaf::SYS_CONFIG, PRIVATE_BASE, 1, 0, 0), Status::OPERAND_ADDR_RANGE_ERROR, Operand::Rcx);
    expect_op(&m.host(leaf::SYS_CONFIG, 0x1000, 1, 0, 0), Status::OPERAND_ADDR_RANGE_ERROR, Operand::Rcx);
}

#[test]
fn sys_config_rejects_bad_tdmrs() {
    let mut m = Machine::new(16 * MIB);
    let [base, size, pb, ps] = m.tdmr_info();
    let bad = [
        [base + 4096, size - 2 * MIB, pb, ps], // misaligned
        [base, 0, pb, ps],                     // empty
        [PRIVATE_BASE, size, pb, ps],          // the TSM's own memory
        [base, size + 2 * MIB, pb, ps],        // not backed
        [!(2 * MIB - 1), 2 * MIB, pb, ps],     // past the address width
    ];
    for t in bad {
        expect(&m.sys_config_with(&[t]), Status::INVALID_TDMR);
    }
    // Out of order / overlapping.
    let half = size / 2;
    let a = [base, half, base + half - 4096, 4096];
    expect(&m.sys_config_with(&[[base + half, half, pb, ps], a]), Status::INVALID_TDMR);
    assert_eq!(m.host(leaf::SYS_INFO, 0, 0, 0, 0).r11, 0, "nothing configured");
}

#[test]
fn sys_config_rejects_bad_pamt_areas() {
    let mut m = Machine::new(16 * MIB);
    let [base, size, pb, ps] = m.tdmr_info();
    expect(&m.sys_config_with(&[[base, size, pb + 8, ps]]), Status::INVALID_PAMT);
    expect(&m.sys_config_with(&[[base, size, pb + 4096, ps - 4096]]), Status::INVALID_PAMT);
    expect(&m.sys_config_with(&[[base, size, SCRATCH_BASE, ps]]), Status::INVALID_PAMT);
    let half = size / 2;
    let pamt_half = ps.div_ceil(2).next_multiple_of(4096);
    let t1 = [base, half, base + half - pamt_half, pamt_half];
    let t2 = [base + half, half, base + half - pamt_half, pamt_half];
    expect(&m.sys_config_with(&[t1, t2]), Status::PAMT_OVERLAP);
}

#[test]
fn sys_config_rejects_when_entropy_fails() {
    let mut m = Machine::new(16 * MIB);
    m.tsm.platform_mut().set_entropy_failing(true);
    let r = m.sys_config();
    expect(&r, Status::RND_NO_ENTROPY);
    assert!(!r.status().is_non_recoverable());
    m.tsm.platform_mut().set_entropy_failing(false);
    ok(m.sys_config(), "retry succeeds");
}

#[test]
fn sys_config_happy_path_reserves_the_pamt() {
    let mut m = Machine::new(16 * MIB);
    ok(m.sys_config(), "SYS.CONFIG");
    let r = m.host(leaf::PHYMEM_PAGE_RDMD, m.pamt_base(), 0, 0, 0);
    assert_eq!(r.rcx, PageType::Reserved as u64);
    let r = m.host(leaf::PHYMEM_PAGE_RDMD, TDMR_BASE, 0, 0, 0);
    assert_eq!(r.rcx, PageType::Free as u64);
    let r = m.host(leaf::MNG_CREATE, m.pamt_base(), 0, 0, 0);
    expect_op(&r, Status::PAGE_NOT_FREE, Operand::Rcx);
}

#[test]
fn every_leaf_but_sys_info_config_and_the_fault_log_needs_config() {
    let mut m = Machine::new(16 * MIB);
    for l in tsm::Tsm::<seamless_harness::HostPlatform>::HOST_LEAVES {
        // The host fault log records the host's own accesses, from boot on; the digest reads
        // the TSM's summaries, empty before TDH.SYS.CONFIG.
        if [leaf::SYS_INFO, leaf::SYS_CONFIG, leaf::HOST_FAULT_RD, leaf::SYS_DIGEST].contains(&l.spec.number) {
            continue;
        }
        expect(&m.host(l.spec.number, TDMR_BASE, TDMR_BASE, 0, 0), Status::SYS_NOT_READY);
    }
    expect_op(&m.host(0x7777, 0, 0, 0, 0), Status::OPERAND_INVALID, Operand::None);
}

// ---- TDH.MNG.CREATE / ADDCX / INIT -----------------------------------------------------------

#[test]
fn mng_create_rejects_bad_pages() {
    let mut m = machine();
    expect_op(&m.host(leaf::MNG_CREATE, TDMR_BASE + 1, 0, 0, 0), Status::OPERAND_INVALID, Operand::Rcx);
    expect_op(&m.host(leaf::MNG_CREATE, SCRATCH_BASE, 0, 0, 0), Status::OPERAND_ADDR_RANGE_ERROR, Operand::Rcx);
    let tdr = m.page();
    ok(m.host(leaf::MNG_CREATE, tdr, 0, 0, 0), "CREATE");
    rejects(&mut m, &[tdr], Status::PAGE_NOT_FREE, |m| m.host(leaf::MNG_CREATE, tdr, 0, 0, 0));
}

#[test]
fn mng_create_rejects_when_slots_run_out() {
    let mut m = machine();
    for _ in 0..tsm::td::MAX_TDS {
        let p = m.page();
        ok(m.host(leaf::MNG_CREATE, p, 0, 0, 0), "CREATE");
    }
    let p = m.page();
    rejects(&mut m, &[], Status::TD_SLOTS_EXHAUSTED, |m| m.host(leaf::MNG_CREATE, p, 0, 0, 0));
}

#[test]
fn mng_create_happy_path() {
    let mut m = machine();
    let tdr = m.page();
    m.write(tdr, &[0xFF; 64]);
    ok(m.host(leaf::MNG_CREATE, tdr, 0, 0, 0), "CREATE");
    let e = m.tsm.pamt_entry(Pfn::new(tdr >> 12).unwrap()).unwrap();
    assert_eq!((e.ty, e.owner.addr().raw()), (PageType::Tdr, tdr));
    assert!(m.read(tdr, 4096).iter().all(|&b| b == 0));
    assert_eq!(lifecycle(&m, tdr), Lifecycle::Created);
}

#[test]
fn addcx_rejects_a_third_page_and_after_init() {
    let mut m = machine();
    let tdr = m.page();
    ok(m.host(leaf::MNG_CREATE, tdr, 0, 0, 0), "CREATE");
    let p = m.page();
    expect_op(&m.host(leaf::MNG_ADDCX, p, p, 0, 0), Status::PAGE_METADATA_INCORRECT, Operand::Rdx);
    for _ in 0..2 {
        let p = m.page();
        ok(m.host(leaf::MNG_ADDCX, p, tdr, 0, 0), "ADDCX");
    }
    let p = m.page();
    rejects(&mut m, &[tdr], Status::TDCX_NUM_INCORRECT, |m| m.host(leaf::MNG_ADDCX, p, tdr, 0, 0));
    let td = m.create_td(&default_params());
    rejects(&mut m, &[td.tdr], Status::TD_INITIALIZED, |m| m.host(leaf::MNG_ADDCX, p, td.tdr, 0, 0));
}

#[test]
fn mng_init_rejects_missing_tdcs_and_bad_params() {
    let mut m = machine();
    let tdr = m.page();
    ok(m.host(leaf::MNG_CREATE, tdr, 0, 0, 0), "CREATE");
    let params = m.scratch();
    m.write(params, &default_params().encode());
    rejects(&mut m, &[tdr], Status::TDCX_NUM_INCORRECT, |m| m.host(leaf::MNG_INIT, tdr, params, 0, 0));
    for _ in 0..2 {
        let p = m.page();
        ok(m.host(leaf::MNG_ADDCX, p, tdr, 0, 0), "ADDCX");
    }
    expect_op(&m.host(leaf::MNG_INIT, tdr, params + 512, 0, 0), Status::OPERAND_INVALID, Operand::Rdx);
    expect_op(&m.host(leaf::MNG_INIT, tdr, PRIVATE_BASE, 0, 0), Status::OPERAND_ADDR_RANGE_ERROR, Operand::Rdx);
    expect_op(&m.host(leaf::MNG_INIT, tdr, tdr, 0, 0), Status::PAGE_METADATA_INCORRECT, Operand::Rdx);
    let mut bad = default_params();
    bad.attributes = 1 << 5;
    m.write(params, &bad.encode());
    let r = rejects(&mut m, &[tdr], Status::OPERAND_INVALID, |m| m.host(leaf::MNG_INIT, tdr, params, 0, 0));
    expect_op(&r, Status::OPERAND_INVALID, Operand::TdParamsAttributes);
    m.write(params, &default_params().encode());
    ok(m.host(leaf::MNG_INIT, tdr, params, 0, 0), "INIT");
    rejects(&mut m, &[tdr], Status::TD_INITIALIZED, |m| m.host(leaf::MNG_INIT, tdr, params, 0, 0));
    assert_eq!(lifecycle(&m, tdr), Lifecycle::Initialized);
}

#[test]
fn mng_init_happy_path_with_5_level_sept() {
    let mut m = machine();
    let mut p = default_params();
    p.gpaw = 52;
    let td = m.create_td(&p);
    let s = m.tsm.td_summary(Pfn::new(td.tdr >> 12).unwrap()).unwrap();
    assert_eq!((s.gpaw, s.root_level), (52, 4));
    // Private GPAs go up to bit 50; bit 51 is the shared bit.
    m.map_tables(&td, 1 << 50, 0);
    let page = m.page();
    let src = m.scratch();
    ok(m.host(leaf::MEM_PAGE_ADD, gpa_level(1 << 50, 0), td.tdr, page, src), "PAGE.ADD high");
    expect_op(
        &m.host(leaf::MEM_PAGE_ADD, gpa_level(1 << 51, 0), td.tdr, page, src),
        Status::OPERAND_INVALID,
        Operand::Rcx,
    );
}

// ---- vCPUs -----------------------------------------------------------------------------------

#[test]
fn vp_create_rejects_before_init_and_past_max() {
    let mut m = machine();
    let tdr = m.page();
    ok(m.host(leaf::MNG_CREATE, tdr, 0, 0, 0), "CREATE");
    let p = m.page();
    rejects(&mut m, &[tdr], Status::TD_NOT_INITIALIZED, |m| m.host(leaf::VP_CREATE, p, tdr, 0, 0));
    let mut td = m.create_td(&default_params());
    m.add_vcpu(&mut td);
    m.add_vcpu(&mut td);
    rejects(&mut m, &[td.tdr], Status::MAX_VCPUS_EXCEEDED, |m| m.host(leaf::VP_CREATE, p, td.tdr, 0, 0));
}

#[test]
fn vp_enter_rejects_before_finalize_and_twice() {
    let mut m = machine();
    let mut td = m.create_td(&default_params());
    let v = m.add_vcpu(&mut td);
    rejects(&mut m, &[td.tdr], Status::TD_NOT_FINALIZED, |m| m.host(leaf::VP_ENTER, v, 0, 0, 0));
    m.finalize(&td);
    m.enter(v);
    let r = rejects(&mut m, &[td.tdr], Status::OPERAND_BUSY, |m| m.host(leaf::VP_ENTER, v, 0, 0, 0));
    expect_op(&r, Status::OPERAND_BUSY, Operand::Tdvpr);
    expect_op(&m.host(leaf::VP_ENTER, td.tdr, 0, 0, 0), Status::PAGE_METADATA_INCORRECT, Operand::Rcx);
}

#[test]
fn mr_finalize_rejects_twice() {
    let mut m = machine();
    let td = m.create_td(&default_params());
    m.finalize(&td);
    rejects(&mut m, &[td.tdr], Status::TD_FINALIZED, |m| m.host(leaf::MR_FINALIZE, td.tdr, 0, 0, 0));
    assert_eq!(lifecycle(&m, td.tdr), Lifecycle::Runnable);
}

// ---- teardown --------------------------------------------------------------------------------

#[test]
fn vpflushdone_rejects_while_a_vcpu_runs() {
    let mut m = machine();
    let td = m.running_td();
    rejects(&mut m, &[td.tdr], Status::FLUSHVP_NOT_DONE, |m| m.host(leaf::MNG_VPFLUSHDONE, td.tdr, 0, 0, 0));
    ok(m.host(leaf::VP_KICK, td.vcpus[0], 0, 0, 0), "KICK");
    ok(m.host(leaf::MNG_VPFLUSHDONE, td.tdr, 0, 0, 0), "VPFLUSHDONE");
    rejects(&mut m, &[td.tdr], Status::LIFECYCLE_STATE_INCORRECT, |m| m.host(leaf::MNG_VPFLUSHDONE, td.tdr, 0, 0, 0));
    rejects(&mut m, &[td.tdr], Status::LIFECYCLE_STATE_INCORRECT, |m| m.host(leaf::VP_ENTER, td.vcpus[0], 0, 0, 0));
}

#[test]
fn reclaim_rejects_pages_in_use_reserved_pages_and_tdr_first() {
    let mut m = machine();
    let td = m.running_td();
    let page = m.aug_accept(&td, 0x1000, PageSize::Size4K);
    rejects(&mut m, &[td.tdr], Status::LIFECYCLE_STATE_INCORRECT, |m| m.host(leaf::PHYMEM_PAGE_RECLAIM, page, 0, 0, 0));
    rejects(&mut m, &[td.tdr], Status::PAGE_METADATA_INCORRECT, |m| {
        let p = m.pamt_base();
        m.host(leaf::PHYMEM_PAGE_RECLAIM, p, 0, 0, 0)
    });
    ok(m.host(leaf::VP_KICK, td.vcpus[0], 0, 0, 0), "KICK");
    ok(m.host(leaf::MNG_VPFLUSHDONE, td.tdr, 0, 0, 0), "VPFLUSHDONE");
    rejects(&mut m, &[td.tdr], Status::TD_ASSOCIATED_PAGES_EXIST, |m| {
        m.host(leaf::PHYMEM_PAGE_RECLAIM, td.tdr, 0, 0, 0)
    });
    let free = m.page();
    assert_eq!(m.host(leaf::PHYMEM_PAGE_RECLAIM, free, 0, 0, 0).status(), Status::PAGE_ALREADY_FREE);
}

#[test]
fn reclaim_takes_large_pages_whole_by_their_first_frame() {
    let mut m = machine();
    let td = m.running_td();
    m.map_tables(&td, 2 * MIB, 1);
    let block = m.aug_accept(&td, 2 * MIB, PageSize::Size2M);
    ok(m.host(leaf::VP_KICK, td.vcpus[0], 0, 0, 0), "KICK");
    ok(m.host(leaf::MNG_VPFLUSHDONE, td.tdr, 0, 0, 0), "VPFLUSHDONE");
    rejects(&mut m, &[td.tdr], Status::OPERAND_INVALID, |m| m.host(leaf::PHYMEM_PAGE_RECLAIM, block + 4096, 0, 0, 0));
    let r = m.host(leaf::PHYMEM_PAGE_RECLAIM, block, 0, 0, 0);
    ok(r, "RECLAIM 2M");
    assert_eq!(r.r8, 1);
    for f in [0, 1, 511] {
        assert_eq!(m.tsm.pamt_entry(Pfn::new((block >> 12) + f).unwrap()).unwrap().ty, PageType::Free);
    }
}

#[test]
fn teardown_reclaims_every_donated_page_and_leaks_nothing() {
    let mut m = machine();
    let mut content = [7u8; 4096];
    content[0] = 1;
    let mut td = m.create_td(&default_params());
    let v = m.add_vcpu(&mut td);
    let v2 = m.add_vcpu(&mut td);
    m.add_page(&td, 0, &content, true);
    m.finalize(&td);
    m.enter(v);
    m.map_tables(&td, 2 * MIB, 1);
    m.aug_accept(&td, 0x1000, PageSize::Size4K);
    m.aug_accept(&td, 2 * MIB, PageSize::Size2M);
    m.aug_accept(&td, 1 << 30, PageSize::Size4K);
    ok(m.host(leaf::VP_KICK, v, 0, 0, 0), "KICK");
    let _ = v2;
    ok(m.host(leaf::MNG_VPFLUSHDONE, td.tdr, 0, 0, 0), "VPFLUSHDONE");
    // The host walks the PAMT for pages owned by the TD (as a VMM would from its own records),
    // reclaims each, the TDR last.
    let frames: Vec<u64> = (TDMR_BASE >> 12..m.pamt_base() >> 12).collect();
    let mut reclaimed = 0u64;
    for &f in &frames {
        let pa = f << 12;
        if pa == td.tdr {
            continue;
        }
        let r = m.host(leaf::PHYMEM_PAGE_RDMD, pa, 0, 0, 0);
        if r.rcx != PageType::Free as u64 && r.rdx == td.tdr {
            let rc = m.host(leaf::PHYMEM_PAGE_RECLAIM, pa, 0, 0, 0);
            assert!(
                rc.status() == Status::SUCCESS || rc.status() == Status::OPERAND_INVALID.with_operand(Operand::Rcx)
            );
            if rc.status() == Status::SUCCESS {
                reclaimed += 1 << (9 * rc.r8);
            }
        }
    }
    assert_eq!(m.tsm.td_summary(Pfn::new(td.tdr >> 12).unwrap()).unwrap().owned_frames, 0);
    ok(m.host(leaf::PHYMEM_PAGE_RECLAIM, td.tdr, 0, 0, 0), "RECLAIM TDR");
    assert!(m.tsm.td_summary(Pfn::new(td.tdr >> 12).unwrap()).is_none());
    // 2 TDCS + 2 TDVPR + 1 added + 2 augmented 4K + 512 (2M) + S-EPT tables.
    assert!(reclaimed > 2 + 2 + 1 + 2 + 512);
    for &f in &frames {
        let e = m.tsm.pamt_entry(Pfn::new(f).unwrap()).unwrap();
        assert_eq!(e.ty, PageType::Free, "frame {f:#x} leaked");
        assert!(m.read(f << 12, 4096).iter().all(|&b| b == 0) || f << 12 >= m.pamt_base(), "frame {f:#x} not scrubbed");
    }
}

#[test]
fn the_dispatchers_report_every_call_once() {
    let mut m = machine();
    let td = m.running_td();
    m.tsm.platform_mut().keep_call_log(true);
    m.tsm.platform_mut().clear_calls();
    m.host(leaf::MEM_TRACK, td.tdr, 0, 0, 0);
    m.host(leaf::MEM_TRACK, td.tdr, 0, 0, 0);
    m.guest(td.vcpus[0], tsm::abi::guest::leaf::VP_INFO, 0, 0, 0);
    m.host(0x7777, 0, 0, 0, 0);
    let log: Vec<_> = m.tsm.platform().calls().iter().map(|c| (c.guest, c.name, Status(c.status).code())).collect();
    assert_eq!(
        log,
        [
            (false, "TDH.MEM.TRACK", Status::SUCCESS),
            (false, "TDH.MEM.TRACK", Status::PREVIOUS_TLB_EPOCH_BUSY),
            (true, "TDG.VP.INFO", Status::SUCCESS),
            (false, "unknown", Status::OPERAND_INVALID),
        ]
    );
    let counts = m.tsm.platform().call_counts();
    assert_eq!((counts.success, counts.recoverable, counts.non_recoverable), (2, 1, 1));
}
