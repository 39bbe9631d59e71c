//! The malicious host: each attack the issue names, with its exact status, and the machine
//! unchanged afterwards.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{expect_op, rejects};
use seamless_harness::driver::{default_params, gpa_level, ok, Machine, TdHandle};
use tsm::abi::{guest::leaf as g, host::leaf as h};
use tsm::addr::PageSize;
use tsm::{Operand, Status};

const MIB: u64 = 1 << 20;

fn two_tds() -> (Machine, TdHandle, TdHandle) {
    let mut m = Machine::configured(32 * MIB);
    let a = m.running_td();
    let b = m.running_td();
    (m, a, b)
}

#[test]
fn one_page_cannot_be_mapped_into_two_tds() {
    let (mut m, a, b) = two_tds();
    let page = m.page();
    ok(m.host(h::MEM_PAGE_AUG, gpa_level(0x1000, 0), a.tdr, page, 0), "AUG into A");
    let r = rejects(&mut m, &[a.tdr, b.tdr], Status::PAGE_NOT_FREE, |m| {
        m.host(h::MEM_PAGE_AUG, gpa_level(0x1000, 0), b.tdr, page, 0)
    });
    expect_op(&r, Status::PAGE_NOT_FREE, Operand::R8);
    // Nor into the same TD twice at another GPA.
    rejects(&mut m, &[a.tdr], Status::PAGE_NOT_FREE, |m| m.host(h::MEM_PAGE_AUG, gpa_level(0x2000, 0), a.tdr, page, 0));
}

#[test]
fn control_pages_cannot_become_guest_data() {
    let (mut m, a, b) = two_tds();
    let rd = m.host(h::MEM_SEPT_RD, gpa_level(0, 1), a.tdr, 0, 0);
    let sept_page = rd.rcx & 0x000F_FFFF_FFFF_F000;
    for control in [a.tdr, a.tdcs[0], a.tdcs[1], a.vcpus[0], sept_page] {
        for target in [&a, &b] {
            let r = rejects(&mut m, &[a.tdr, b.tdr], Status::PAGE_NOT_FREE, |m| {
                m.host(h::MEM_PAGE_AUG, gpa_level(0x3000, 0), target.tdr, control, 0)
            });
            expect_op(&r, Status::PAGE_NOT_FREE, Operand::R8);
        }
    }
    // As the source of a build-time copy, they would leak TSM state into a guest.
    let mut c = m.create_td(&default_params());
    m.add_vcpu(&mut c);
    m.map_tables(&c, 0, 0);
    let page = m.page();
    for control in [a.tdr, a.tdcs[1], sept_page] {
        let r = rejects(&mut m, &[c.tdr], Status::PAGE_METADATA_INCORRECT, |m| {
            m.host(h::MEM_PAGE_ADD, gpa_level(0, 0), c.tdr, page, control)
        });
        expect_op(&r, Status::PAGE_METADATA_INCORRECT, Operand::R9);
    }
}

#[test]
fn pages_outside_the_tdmrs_or_misaligned_cannot_be_donated() {
    let (mut m, a, _) = two_tds();
    let outside = m.scratch();
    let r = rejects(&mut m, &[a.tdr], Status::OPERAND_ADDR_RANGE_ERROR, |m| {
        m.host(h::MEM_PAGE_AUG, gpa_level(0x1000, 0), a.tdr, outside, 0)
    });
    expect_op(&r, Status::OPERAND_ADDR_RANGE_ERROR, Operand::R8);
    let page = m.page();
    let r = rejects(&mut m, &[a.tdr], Status::OPERAND_INVALID, |m| {
        m.host(h::MEM_PAGE_AUG, gpa_level(0x1000, 0), a.tdr, page + 0x800, 0)
    });
    expect_op(&r, Status::OPERAND_INVALID, Operand::R8);
    let r = rejects(&mut m, &[], Status::OPERAND_ADDR_RANGE_ERROR, |m| m.host(h::MNG_CREATE, outside, 0, 0, 0));
    expect_op(&r, Status::OPERAND_ADDR_RANGE_ERROR, Operand::Rcx);
}

#[test]
fn remove_without_block_and_before_track_is_refused() {
    let (mut m, a, _) = two_tds();
    m.aug_accept(&a, 0x1000, PageSize::Size4K);
    rejects(&mut m, &[a.tdr], Status::GPA_RANGE_NOT_BLOCKED, |m| {
        m.host(h::MEM_PAGE_REMOVE, gpa_level(0x1000, 0), a.tdr, 0, 0)
    });
    ok(m.host(h::MEM_RANGE_BLOCK, gpa_level(0x1000, 0), a.tdr, 0, 0), "BLOCK");
    rejects(&mut m, &[a.tdr], Status::TLB_TRACKING_NOT_DONE, |m| {
        m.host(h::MEM_PAGE_REMOVE, gpa_level(0x1000, 0), a.tdr, 0, 0)
    });
    ok(m.host(h::MEM_TRACK, a.tdr, 0, 0, 0), "TRACK");
    // The vCPU that may cache the translation has not left since: still refused.
    rejects(&mut m, &[a.tdr], Status::TLB_TRACKING_NOT_DONE, |m| {
        m.host(h::MEM_PAGE_REMOVE, gpa_level(0x1000, 0), a.tdr, 0, 0)
    });
    // And TRACK again while it still runs in the old epoch is busy.
    rejects(&mut m, &[a.tdr], Status::PREVIOUS_TLB_EPOCH_BUSY, |m| m.host(h::MEM_TRACK, a.tdr, 0, 0, 0));
    ok(m.host(h::VP_KICK, a.vcpus[0], 0, 0, 0), "KICK");
    ok(m.host(h::MEM_PAGE_REMOVE, gpa_level(0x1000, 0), a.tdr, 0, 0), "REMOVE once retired");
}

#[test]
fn build_time_and_run_time_calls_keep_to_their_phase() {
    let mut m = Machine::configured(32 * MIB);
    let mut td = m.create_td(&default_params());
    m.add_vcpu(&mut td);
    m.map_tables(&td, 0, 0);
    let page = m.page();
    rejects(&mut m, &[td.tdr], Status::TD_NOT_FINALIZED, |m| {
        m.host(h::MEM_PAGE_AUG, gpa_level(0x1000, 0), td.tdr, page, 0)
    });
    m.finalize(&td);
    let src = m.scratch();
    rejects(&mut m, &[td.tdr], Status::TD_FINALIZED, |m| {
        m.host(h::MEM_PAGE_ADD, gpa_level(0x1000, 0), td.tdr, page, src)
    });
}

#[test]
fn accept_with_the_wrong_size_is_refused() {
    let (mut m, a, _) = two_tds();
    m.map_tables(&a, 2 * MIB, 1);
    let block = m.block(PageSize::Size2M);
    ok(m.host(h::MEM_PAGE_AUG, gpa_level(2 * MIB, 1), a.tdr, block, 0), "AUG 2M");
    let before = common::snapshot(&m, &[a.tdr]);
    let r = m.guest(a.vcpus[0], g::MEM_PAGE_ACCEPT, gpa_level(2 * MIB + 0x5000, 0), 0, 0);
    expect_op(&r.regs, Status::PAGE_SIZE_MISMATCH, Operand::Rcx);
    assert!(before == common::snapshot(&m, &[a.tdr]));
}

#[test]
fn gpas_beyond_the_width_or_shared_are_not_private() {
    let (mut m, a, _) = two_tds();
    let page = m.page();
    for gpa in [1u64 << 47, (1 << 47) | 0x1000, 1 << 48, 1 << 51] {
        let r = rejects(&mut m, &[a.tdr], Status::OPERAND_INVALID, |m| {
            m.host(h::MEM_PAGE_AUG, gpa_level(gpa, 0), a.tdr, page, 0)
        });
        expect_op(&r, Status::OPERAND_INVALID, Operand::Rcx);
        let r = m.guest(a.vcpus[0], g::MEM_PAGE_ACCEPT, gpa_level(gpa, 0), 0, 0);
        expect_op(&r.regs, Status::OPERAND_INVALID, Operand::Rcx);
    }
}

#[test]
fn pages_in_use_cannot_be_reclaimed_and_a_td_with_pages_cannot_be_freed() {
    let (mut m, a, _) = two_tds();
    let page = m.aug_accept(&a, 0x1000, PageSize::Size4K);
    for p in [page, a.tdcs[0], a.vcpus[0], a.tdr] {
        rejects(&mut m, &[a.tdr], Status::LIFECYCLE_STATE_INCORRECT, |m| m.host(h::PHYMEM_PAGE_RECLAIM, p, 0, 0, 0));
    }
    // Teardown cannot start with a vCPU inside; once started, the TDR goes last.
    rejects(&mut m, &[a.tdr], Status::FLUSHVP_NOT_DONE, |m| m.host(h::MNG_VPFLUSHDONE, a.tdr, 0, 0, 0));
    ok(m.host(h::VP_KICK, a.vcpus[0], 0, 0, 0), "KICK");
    ok(m.host(h::MNG_VPFLUSHDONE, a.tdr, 0, 0, 0), "VPFLUSHDONE");
    rejects(&mut m, &[a.tdr], Status::TD_ASSOCIATED_PAGES_EXIST, |m| m.host(h::PHYMEM_PAGE_RECLAIM, a.tdr, 0, 0, 0));
}

#[test]
fn one_td_cannot_touch_another_tds_mappings() {
    let (mut m, a, b) = two_tds();
    m.aug_accept(&a, 0x1000, PageSize::Size4K);
    // B's S-EPT has nothing at that GPA: the host cannot reach A's page through B's handle.
    rejects(&mut m, &[a.tdr, b.tdr], Status::EPT_ENTRY_FREE, |m| {
        m.host(h::MEM_RANGE_BLOCK, gpa_level(0x1000, 0), b.tdr, 0, 0)
    });
    // A vCPU of B entering with A's TDR as its TDVPR is not a vCPU.
    let r = rejects(&mut m, &[a.tdr, b.tdr], Status::PAGE_METADATA_INCORRECT, |m| m.host(h::VP_ENTER, a.tdr, 0, 0, 0));
    expect_op(&r, Status::PAGE_METADATA_INCORRECT, Operand::Rcx);
}

#[test]
fn a_torn_down_tds_tables_are_never_walked_again() {
    // RECLAIM hands S-EPT table pages back to the host, which may then write pointers into them;
    // no call may walk the TD's S-EPT after teardown started.
    let (mut m, a, _) = two_tds();
    m.aug_accept(&a, 0x1000, PageSize::Size4K);
    let pt = m.host(h::MEM_SEPT_RD, gpa_level(0, 1), a.tdr, 0, 0).rcx & 0x000F_FFFF_FFFF_F000;
    ok(m.host(h::VP_KICK, a.vcpus[0], 0, 0, 0), "KICK");
    ok(m.host(h::MNG_VPFLUSHDONE, a.tdr, 0, 0, 0), "VPFLUSHDONE");
    ok(m.host(h::PHYMEM_PAGE_RECLAIM, pt, 0, 0, 0), "RECLAIM the page table");
    // The host now owns the frame and forges a table entry pointing far outside memory.
    m.write(pt + 8, &(0x000F_FFFF_FFFF_F000u64 | 1 << 52 | 7).to_le_bytes());
    for leaf in [h::MEM_SEPT_RD, h::MEM_RANGE_BLOCK, h::MEM_PAGE_REMOVE, h::MEM_RANGE_UNBLOCK] {
        let r = m.host(leaf, gpa_level(0x1000, 0), a.tdr, 0, 0);
        expect_op(&r, Status::LIFECYCLE_STATE_INCORRECT, Operand::None);
    }
}
