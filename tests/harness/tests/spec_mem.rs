//! Spec tables for the host leaves that manage a TD's memory: for each leaf, its failure
//! conditions in the order the checks run, each with its exact status and no change to the
//! machine, then the happy path's post-conditions.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{expect, expect_op, rejects};
use seamless_harness::driver::{gpa_level, ok, Machine, TdHandle, TDMR_BASE};
use tsm::abi::host::leaf;
use tsm::addr::{PageSize, Pfn};
use tsm::pamt::PageType;
use tsm::sept::SeptState;
use tsm::{Operand, Status};

const MIB: u64 = 1 << 20;

fn machine() -> Machine {
    Machine::configured(64 * MIB)
}

fn state_of(m: &mut Machine, td: &TdHandle, gpa: u64, level: u8) -> SeptState {
    let r = m.host(leaf::MEM_SEPT_RD, gpa_level(gpa, level), td.tdr, 0, 0);
    ok(r, "SEPT.RD");
    SeptState::from_code((r.rdx >> 8) & 0xFF).unwrap()
}

fn pamt(m: &Machine, pa: u64) -> tsm::pamt::PamtEntry {
    m.tsm.pamt_entry(Pfn::new(pa >> 12).unwrap()).unwrap()
}

/// A TD built but not finalized, with tables for 4K leaves at GPA 0..2M.
fn building_td(m: &mut Machine) -> TdHandle {
    let mut td = m.create_td(&seamless_harness::driver::default_params());
    m.add_vcpu(&mut td);
    m.map_tables(&td, 0, 0);
    td
}

/// Leaves the vCPU, advances the epoch: blocks made before are retired.
fn kick_and_track(m: &mut Machine, td: &TdHandle) {
    for &v in &td.vcpus {
        ok(m.host(leaf::VP_KICK, v, 0, 0, 0), "VP.KICK");
    }
    ok(m.host(leaf::MEM_TRACK, td.tdr, 0, 0, 0), "TRACK");
}

// ---- TDH.MEM.SEPT.ADD ------------------------------------------------------------------------

#[test]
fn sept_add_rejects_unconfigured_tsm() {
    let mut m = Machine::new(16 * MIB);
    let r = m.host(leaf::MEM_SEPT_ADD, gpa_level(0, 1), TDMR_BASE, TDMR_BASE + 4096, 0);
    expect(&r, Status::SYS_NOT_READY);
}

#[test]
fn sept_add_rejects_reserved_bits_in_rcx() {
    let mut m = machine();
    let td = building_td(&mut m);
    let page = m.page();
    rejects(&mut m, &[td.tdr], Status::OPERAND_INVALID, |m| {
        m.host(leaf::MEM_SEPT_ADD, (2 * MIB) | 0x8 | 1, td.tdr, page, 0)
    });
}

#[test]
fn sept_add_rejects_a_tdr_operand_that_is_not_a_tdr() {
    let mut m = machine();
    let td = building_td(&mut m);
    let page = m.page();
    let r = rejects(&mut m, &[td.tdr], Status::PAGE_METADATA_INCORRECT, |m| {
        m.host(leaf::MEM_SEPT_ADD, gpa_level(2 * MIB, 1), td.tdcs[0], page, 0)
    });
    expect_op(&r, Status::PAGE_METADATA_INCORRECT, Operand::Rdx);
    let r = m.host(leaf::MEM_SEPT_ADD, gpa_level(2 * MIB, 1), 0x1000, page, 0);
    expect_op(&r, Status::OPERAND_ADDR_RANGE_ERROR, Operand::Rdx);
}

#[test]
fn sept_add_rejects_td_not_initialized() {
    let mut m = machine();
    let tdr = m.page();
    ok(m.host(leaf::MNG_CREATE, tdr, 0, 0, 0), "CREATE");
    let page = m.page();
    rejects(&mut m, &[tdr], Status::TD_NOT_INITIALIZED, |m| m.host(leaf::MEM_SEPT_ADD, gpa_level(0, 1), tdr, page, 0));
}

#[test]
fn sept_add_rejects_levels_outside_1_to_root() {
    let mut m = machine();
    let td = building_td(&mut m);
    let page = m.page();
    for level in [0u8, 4] {
        let r = rejects(&mut m, &[td.tdr], Status::OPERAND_INVALID, |m| {
            m.host(leaf::MEM_SEPT_ADD, gpa_level(0, level), td.tdr, page, 0)
        });
        expect_op(&r, Status::OPERAND_INVALID, Operand::Rcx);
    }
}

#[test]
fn sept_add_rejects_gpa_misaligned_shared_or_beyond_width() {
    let mut m = machine();
    let td = building_td(&mut m);
    let page = m.page();
    for gpa in [2 * MIB + 4096, 1 << 47, 1 << 48] {
        rejects(&mut m, &[td.tdr], Status::OPERAND_INVALID, |m| {
            m.host(leaf::MEM_SEPT_ADD, gpa_level(gpa, 1), td.tdr, page, 0)
        });
    }
}

#[test]
fn sept_add_rejects_a_page_that_is_not_free() {
    let mut m = machine();
    let td = building_td(&mut m);
    let r = rejects(&mut m, &[td.tdr], Status::PAGE_NOT_FREE, |m| {
        m.host(leaf::MEM_SEPT_ADD, gpa_level(2 * MIB, 1), td.tdr, td.tdcs[1], 0)
    });
    expect_op(&r, Status::PAGE_NOT_FREE, Operand::R8);
}

#[test]
fn sept_add_rejects_a_missing_parent_table_with_the_entry_found() {
    let mut m = machine();
    let td = building_td(&mut m);
    let page = m.page();
    // GPA 1G: its PDPTE (level 2) is free, so a PDE (level 1) cannot be installed.
    let r = rejects(&mut m, &[td.tdr], Status::EPT_WALK_FAILED, |m| {
        m.host(leaf::MEM_SEPT_ADD, gpa_level(1 << 30, 1), td.tdr, page, 0)
    });
    assert_eq!(r.rcx, 0, "the free entry found");
    assert_eq!(r.rdx & 7, 2, "walk stopped at level 2");
    assert_eq!(r.rdx >> 8, SeptState::Free as u64);
}

#[test]
fn sept_add_rejects_an_entry_that_is_not_free() {
    let mut m = machine();
    let td = building_td(&mut m);
    let page = m.page();
    rejects(&mut m, &[td.tdr], Status::EPT_ENTRY_NOT_FREE, |m| {
        m.host(leaf::MEM_SEPT_ADD, gpa_level(0, 1), td.tdr, page, 0)
    });
}

#[test]
fn sept_add_happy_path() {
    let mut m = machine();
    let td = building_td(&mut m);
    let page = m.page();
    m.write(page, &[0xAA; 4096]);
    ok(m.host(leaf::MEM_SEPT_ADD, gpa_level(2 * MIB, 1), td.tdr, page, 0), "SEPT.ADD");
    assert_eq!(state_of(&mut m, &td, 2 * MIB, 1), SeptState::NlMapped);
    let e = pamt(&m, page);
    assert_eq!((e.ty, e.owner.addr().raw()), (PageType::Sept, td.tdr));
    assert!(m.read(page, 4096).iter().all(|&b| b == 0), "a donated table is zeroed");
}

// ---- TDH.MEM.PAGE.ADD ------------------------------------------------------------------------

#[test]
fn page_add_rejects_levels_other_than_4k() {
    let mut m = machine();
    let td = building_td(&mut m);
    let (page, src) = (m.page(), m.scratch());
    rejects(&mut m, &[td.tdr], Status::OPERAND_INVALID, |m| {
        m.host(leaf::MEM_PAGE_ADD, gpa_level(0, 1), td.tdr, page, src)
    });
}

#[test]
fn page_add_rejects_after_finalize() {
    let mut m = machine();
    let td = building_td(&mut m);
    m.finalize(&td);
    let (page, src) = (m.page(), m.scratch());
    rejects(&mut m, &[td.tdr], Status::TD_FINALIZED, |m| {
        m.host(leaf::MEM_PAGE_ADD, gpa_level(0, 0), td.tdr, page, src)
    });
}

#[test]
fn page_add_rejects_a_target_that_is_not_free() {
    let mut m = machine();
    let td = building_td(&mut m);
    let src = m.scratch();
    let r = rejects(&mut m, &[td.tdr], Status::PAGE_NOT_FREE, |m| {
        m.host(leaf::MEM_PAGE_ADD, gpa_level(0, 0), td.tdr, td.tdr, src)
    });
    expect_op(&r, Status::PAGE_NOT_FREE, Operand::R8);
}

#[test]
fn page_add_rejects_a_source_the_tsm_owns_or_cannot_read() {
    let mut m = machine();
    let td = building_td(&mut m);
    let page = m.page();
    // A TDCS page as source would copy TSM state into the guest.
    let r = rejects(&mut m, &[td.tdr], Status::PAGE_METADATA_INCORRECT, |m| {
        m.host(leaf::MEM_PAGE_ADD, gpa_level(0, 0), td.tdr, page, td.tdcs[1])
    });
    expect_op(&r, Status::PAGE_METADATA_INCORRECT, Operand::R9);
    // The TSM's private memory and unbacked memory.
    for src in [seamless_harness::driver::PRIVATE_BASE, 0x1000] {
        let r = rejects(&mut m, &[td.tdr], Status::OPERAND_ADDR_RANGE_ERROR, |m| {
            m.host(leaf::MEM_PAGE_ADD, gpa_level(0, 0), td.tdr, page, src)
        });
        expect_op(&r, Status::OPERAND_ADDR_RANGE_ERROR, Operand::R9);
    }
}

#[test]
fn page_add_rejects_an_occupied_gpa() {
    let mut m = machine();
    let td = building_td(&mut m);
    m.add_page(&td, 0, &[1; 4096], false);
    let (page, src) = (m.page(), m.scratch());
    rejects(&mut m, &[td.tdr], Status::EPT_ENTRY_NOT_FREE, |m| {
        m.host(leaf::MEM_PAGE_ADD, gpa_level(0, 0), td.tdr, page, src)
    });
}

#[test]
fn page_add_happy_path_copies_and_maps() {
    let mut m = machine();
    let td = building_td(&mut m);
    let mut content = [0u8; 4096];
    content.iter_mut().enumerate().for_each(|(i, b)| *b = i as u8);
    let page = m.add_page(&td, 0x3000, &content, false);
    assert_eq!(m.read(page, 4096), content.to_vec());
    assert_eq!(state_of(&mut m, &td, 0x3000, 0), SeptState::Mapped);
    let e = pamt(&m, page);
    assert_eq!((e.ty, e.owner.addr().raw(), e.level), (PageType::Regular, td.tdr, 0));
}

// ---- TDH.MR.EXTEND ---------------------------------------------------------------------------

#[test]
fn mr_extend_rejects_misaligned_chunks() {
    let mut m = machine();
    let td = building_td(&mut m);
    m.add_page(&td, 0, &[0; 4096], false);
    rejects(&mut m, &[td.tdr], Status::OPERAND_INVALID, |m| m.host(leaf::MR_EXTEND, 128, td.tdr, 0, 0));
}

#[test]
fn mr_extend_rejects_pages_not_added() {
    let mut m = machine();
    let td = building_td(&mut m);
    rejects(&mut m, &[td.tdr], Status::EPT_ENTRY_FREE, |m| m.host(leaf::MR_EXTEND, 0x5000, td.tdr, 0, 0));
    rejects(&mut m, &[td.tdr], Status::EPT_WALK_FAILED, |m| m.host(leaf::MR_EXTEND, 1 << 30, td.tdr, 0, 0));
}

#[test]
fn mr_extend_rejects_after_finalize() {
    let mut m = machine();
    let td = building_td(&mut m);
    m.add_page(&td, 0, &[0; 4096], false);
    m.finalize(&td);
    rejects(&mut m, &[td.tdr], Status::TD_FINALIZED, |m| m.host(leaf::MR_EXTEND, 0, td.tdr, 0, 0));
}

// ---- TDH.MEM.PAGE.AUG ------------------------------------------------------------------------

#[test]
fn aug_rejects_before_finalize() {
    let mut m = machine();
    let td = building_td(&mut m);
    let page = m.page();
    rejects(&mut m, &[td.tdr], Status::TD_NOT_FINALIZED, |m| {
        m.host(leaf::MEM_PAGE_AUG, gpa_level(0, 0), td.tdr, page, 0)
    });
}

#[test]
fn aug_rejects_level_above_1g() {
    let mut m = machine();
    let td = m.running_td();
    let page = m.page();
    rejects(&mut m, &[td.tdr], Status::OPERAND_INVALID, |m| {
        m.host(leaf::MEM_PAGE_AUG, gpa_level(0, 3), td.tdr, page, 0)
    });
}

#[test]
fn aug_rejects_misaligned_gpa_or_block() {
    let mut m = machine();
    let td = m.running_td();
    m.map_tables(&td, 2 * MIB, 1);
    let block = m.block(PageSize::Size2M);
    let r = rejects(&mut m, &[td.tdr], Status::OPERAND_INVALID, |m| {
        m.host(leaf::MEM_PAGE_AUG, gpa_level(2 * MIB + 4096, 1), td.tdr, block, 0)
    });
    expect_op(&r, Status::OPERAND_INVALID, Operand::Rcx);
    let r = rejects(&mut m, &[td.tdr], Status::OPERAND_INVALID, |m| {
        m.host(leaf::MEM_PAGE_AUG, gpa_level(4 * MIB, 1), td.tdr, block + 4096, 0)
    });
    expect_op(&r, Status::OPERAND_INVALID, Operand::R8);
}

#[test]
fn aug_rejects_a_block_with_one_frame_not_free() {
    let mut m = machine();
    let td = m.running_td();
    m.map_tables(&td, 2 * MIB, 1);
    let block = m.block(PageSize::Size2M);
    // Donate the block's last frame as a TDVPR-free control page elsewhere: make it a TD's table.
    ok(m.host(leaf::MEM_SEPT_ADD, gpa_level(1 << 30, 2), td.tdr, block + 511 * 4096, 0), "SEPT.ADD");
    let r = rejects(&mut m, &[td.tdr], Status::PAGE_NOT_FREE, |m| {
        m.host(leaf::MEM_PAGE_AUG, gpa_level(4 * MIB, 1), td.tdr, block, 0)
    });
    expect_op(&r, Status::PAGE_NOT_FREE, Operand::R8);
}

#[test]
fn aug_rejects_memory_outside_the_tdmrs() {
    let mut m = machine();
    let td = m.running_td();
    let scratch = m.scratch();
    let r = rejects(&mut m, &[td.tdr], Status::OPERAND_ADDR_RANGE_ERROR, |m| {
        m.host(leaf::MEM_PAGE_AUG, gpa_level(0x1000, 0), td.tdr, scratch, 0)
    });
    expect_op(&r, Status::OPERAND_ADDR_RANGE_ERROR, Operand::R8);
}

#[test]
fn aug_rejects_an_occupied_gpa_and_a_gpa_under_a_large_leaf() {
    let mut m = machine();
    let td = m.running_td();
    m.aug_accept(&td, 0x1000, PageSize::Size4K);
    let page = m.page();
    rejects(&mut m, &[td.tdr], Status::EPT_ENTRY_NOT_FREE, |m| {
        m.host(leaf::MEM_PAGE_AUG, gpa_level(0x1000, 0), td.tdr, page, 0)
    });
    m.aug_accept(&td, 2 * MIB, PageSize::Size2M);
    let r = rejects(&mut m, &[td.tdr], Status::EPT_WALK_FAILED, |m| {
        m.host(leaf::MEM_PAGE_AUG, gpa_level(2 * MIB + 0x1000, 0), td.tdr, page, 0)
    });
    assert_eq!(r.rdx & 7, 1, "stopped at the 2M leaf");
    assert_eq!(r.rdx >> 8, SeptState::Mapped as u64);
}

#[test]
fn aug_happy_path_4k_and_2m() {
    let mut m = machine();
    let td = m.running_td();
    m.map_tables(&td, 2 * MIB, 1);
    let page = m.page();
    ok(m.host(leaf::MEM_PAGE_AUG, gpa_level(0x1000, 0), td.tdr, page, 0), "AUG 4K");
    assert_eq!(state_of(&mut m, &td, 0x1000, 0), SeptState::Pending);
    let block = m.block(PageSize::Size2M);
    ok(m.host(leaf::MEM_PAGE_AUG, gpa_level(2 * MIB, 1), td.tdr, block, 0), "AUG 2M");
    assert_eq!(state_of(&mut m, &td, 2 * MIB, 1), SeptState::Pending);
    for f in [0, 1, 511] {
        let e = pamt(&m, block + f * 4096);
        assert_eq!((e.ty, e.owner.addr().raw(), e.level), (PageType::Regular, td.tdr, 1));
    }
}

// ---- BLOCK / TRACK / UNBLOCK / REMOVE --------------------------------------------------------

#[test]
fn block_rejects_a_free_entry() {
    let mut m = machine();
    let td = m.running_td();
    rejects(&mut m, &[td.tdr], Status::EPT_ENTRY_FREE, |m| {
        m.host(leaf::MEM_RANGE_BLOCK, gpa_level(0x5000, 0), td.tdr, 0, 0)
    });
}

#[test]
fn block_twice_is_a_warning_that_changes_nothing() {
    let mut m = machine();
    let td = m.running_td();
    m.aug_accept(&td, 0x1000, PageSize::Size4K);
    ok(m.host(leaf::MEM_RANGE_BLOCK, gpa_level(0x1000, 0), td.tdr, 0, 0), "BLOCK");
    let before = common::snapshot(&m, &[td.tdr]);
    let r = m.host(leaf::MEM_RANGE_BLOCK, gpa_level(0x1000, 0), td.tdr, 0, 0);
    assert_eq!(r.status(), Status::GPA_RANGE_ALREADY_BLOCKED);
    assert!(!r.status().is_error());
    assert!(before == common::snapshot(&m, &[td.tdr]));
}

#[test]
fn block_happy_path_records_the_epoch() {
    let mut m = machine();
    let td = m.running_td();
    let page = m.aug_accept(&td, 0x1000, PageSize::Size4K);
    kick_and_track(&mut m, &td);
    ok(m.host(leaf::MEM_RANGE_BLOCK, gpa_level(0x1000, 0), td.tdr, 0, 0), "BLOCK");
    assert_eq!(state_of(&mut m, &td, 0x1000, 0), SeptState::Blocked);
    assert_eq!(pamt(&m, page).bepoch, 2);
    // A pending page blocks to PENDING_BLOCKED.
    let p2 = m.page();
    ok(m.host(leaf::MEM_PAGE_AUG, gpa_level(0x2000, 0), td.tdr, p2, 0), "AUG");
    ok(m.host(leaf::MEM_RANGE_BLOCK, gpa_level(0x2000, 0), td.tdr, 0, 0), "BLOCK");
    assert_eq!(state_of(&mut m, &td, 0x2000, 0), SeptState::PendingBlocked);
}

#[test]
fn track_rejects_while_a_vcpu_runs_in_the_previous_epoch() {
    let mut m = machine();
    let td = m.running_td();
    ok(m.host(leaf::MEM_TRACK, td.tdr, 0, 0, 0), "TRACK to epoch 2; the vCPU stays in epoch 1");
    let r = rejects(&mut m, &[td.tdr], Status::PREVIOUS_TLB_EPOCH_BUSY, |m| m.host(leaf::MEM_TRACK, td.tdr, 0, 0, 0));
    assert!(!r.status().is_non_recoverable(), "busy is retryable");
    ok(m.host(leaf::VP_KICK, td.vcpus[0], 0, 0, 0), "KICK");
    ok(m.host(leaf::MEM_TRACK, td.tdr, 0, 0, 0), "TRACK after the kick");
    assert_eq!(m.tsm.td_summary(Pfn::new(td.tdr >> 12).unwrap()).unwrap().epoch, 3);
}

#[test]
fn unblock_rejects_an_unblocked_entry_and_an_unretired_block() {
    let mut m = machine();
    let td = m.running_td();
    m.aug_accept(&td, 0x1000, PageSize::Size4K);
    rejects(&mut m, &[td.tdr], Status::GPA_RANGE_NOT_BLOCKED, |m| {
        m.host(leaf::MEM_RANGE_UNBLOCK, gpa_level(0x1000, 0), td.tdr, 0, 0)
    });
    ok(m.host(leaf::MEM_RANGE_BLOCK, gpa_level(0x1000, 0), td.tdr, 0, 0), "BLOCK");
    rejects(&mut m, &[td.tdr], Status::TLB_TRACKING_NOT_DONE, |m| {
        m.host(leaf::MEM_RANGE_UNBLOCK, gpa_level(0x1000, 0), td.tdr, 0, 0)
    });
}

#[test]
fn unblock_happy_path() {
    let mut m = machine();
    let td = m.running_td();
    m.aug_accept(&td, 0x1000, PageSize::Size4K);
    ok(m.host(leaf::MEM_RANGE_BLOCK, gpa_level(0x1000, 0), td.tdr, 0, 0), "BLOCK");
    kick_and_track(&mut m, &td);
    ok(m.host(leaf::MEM_RANGE_UNBLOCK, gpa_level(0x1000, 0), td.tdr, 0, 0), "UNBLOCK");
    assert_eq!(state_of(&mut m, &td, 0x1000, 0), SeptState::Mapped);
}

#[test]
fn remove_rejects_without_block_before_track_and_on_tables() {
    let mut m = machine();
    let td = m.running_td();
    m.aug_accept(&td, 0x1000, PageSize::Size4K);
    rejects(&mut m, &[td.tdr], Status::GPA_RANGE_NOT_BLOCKED, |m| {
        m.host(leaf::MEM_PAGE_REMOVE, gpa_level(0x1000, 0), td.tdr, 0, 0)
    });
    ok(m.host(leaf::MEM_RANGE_BLOCK, gpa_level(0x1000, 0), td.tdr, 0, 0), "BLOCK");
    rejects(&mut m, &[td.tdr], Status::TLB_TRACKING_NOT_DONE, |m| {
        m.host(leaf::MEM_PAGE_REMOVE, gpa_level(0x1000, 0), td.tdr, 0, 0)
    });
    ok(m.host(leaf::MEM_TRACK, td.tdr, 0, 0, 0), "TRACK");
    // The vCPU entered in the blocked epoch and has not left: still not retired.
    rejects(&mut m, &[td.tdr], Status::TLB_TRACKING_NOT_DONE, |m| {
        m.host(leaf::MEM_PAGE_REMOVE, gpa_level(0x1000, 0), td.tdr, 0, 0)
    });
    rejects(&mut m, &[td.tdr], Status::EPT_ENTRY_NOT_LEAF, |m| {
        m.host(leaf::MEM_PAGE_REMOVE, gpa_level(0, 1), td.tdr, 0, 0)
    });
}

#[test]
fn remove_happy_path_scrubs_and_frees() {
    let mut m = machine();
    let td = m.running_td();
    let page = m.aug_accept(&td, 0x1000, PageSize::Size4K);
    m.write(page, b"guest secret");
    ok(m.host(leaf::MEM_RANGE_BLOCK, gpa_level(0x1000, 0), td.tdr, 0, 0), "BLOCK");
    kick_and_track(&mut m, &td);
    let r = m.host(leaf::MEM_PAGE_REMOVE, gpa_level(0x1000, 0), td.tdr, 0, 0);
    ok(r, "REMOVE");
    assert_eq!(r.rcx, page);
    assert_eq!(state_of(&mut m, &td, 0x1000, 0), SeptState::Free);
    assert_eq!(pamt(&m, page).ty, PageType::Free);
    assert!(m.read(page, 4096).iter().all(|&b| b == 0), "scrubbed before the host gets it back");
}

// ---- DEMOTE / PROMOTE ------------------------------------------------------------------------

#[test]
fn demote_rejects_4k_unblocked_and_untracked() {
    let mut m = machine();
    let td = m.running_td();
    m.map_tables(&td, 2 * MIB, 1);
    m.aug_accept(&td, 2 * MIB, PageSize::Size2M);
    let table = m.page();
    rejects(&mut m, &[td.tdr], Status::OPERAND_INVALID, |m| {
        m.host(leaf::MEM_PAGE_DEMOTE, gpa_level(2 * MIB, 0), td.tdr, table, 0)
    });
    rejects(&mut m, &[td.tdr], Status::GPA_RANGE_NOT_BLOCKED, |m| {
        m.host(leaf::MEM_PAGE_DEMOTE, gpa_level(2 * MIB, 1), td.tdr, table, 0)
    });
    ok(m.host(leaf::MEM_RANGE_BLOCK, gpa_level(2 * MIB, 1), td.tdr, 0, 0), "BLOCK");
    rejects(&mut m, &[td.tdr], Status::TLB_TRACKING_NOT_DONE, |m| {
        m.host(leaf::MEM_PAGE_DEMOTE, gpa_level(2 * MIB, 1), td.tdr, table, 0)
    });
}

#[test]
fn demote_then_promote_round_trip() {
    let mut m = machine();
    let td = m.running_td();
    m.map_tables(&td, 2 * MIB, 1);
    let block = m.aug_accept(&td, 2 * MIB, PageSize::Size2M);
    ok(m.host(leaf::MEM_RANGE_BLOCK, gpa_level(2 * MIB, 1), td.tdr, 0, 0), "BLOCK");
    kick_and_track(&mut m, &td);
    let table = m.page();
    ok(m.host(leaf::MEM_PAGE_DEMOTE, gpa_level(2 * MIB, 1), td.tdr, table, 0), "DEMOTE");
    assert_eq!(state_of(&mut m, &td, 2 * MIB, 1), SeptState::NlMapped);
    assert_eq!(state_of(&mut m, &td, 2 * MIB + 0x7000, 0), SeptState::Mapped);
    assert_eq!(pamt(&m, block + 0x7000).level, 0);
    assert_eq!(pamt(&m, table).ty, PageType::Sept);
    // Promote back.
    m.enter(td.vcpus[0]);
    ok(m.host(leaf::MEM_RANGE_BLOCK, gpa_level(2 * MIB, 1), td.tdr, 0, 0), "BLOCK NL");
    rejects(&mut m, &[td.tdr], Status::TLB_TRACKING_NOT_DONE, |m| {
        m.host(leaf::MEM_PAGE_PROMOTE, gpa_level(2 * MIB, 1), td.tdr, 0, 0)
    });
    kick_and_track(&mut m, &td);
    let r = m.host(leaf::MEM_PAGE_PROMOTE, gpa_level(2 * MIB, 1), td.tdr, 0, 0);
    ok(r, "PROMOTE");
    assert_eq!(r.rcx, table);
    assert_eq!(state_of(&mut m, &td, 2 * MIB, 1), SeptState::Mapped);
    assert_eq!(pamt(&m, table).ty, PageType::Free);
    assert_eq!(pamt(&m, block + 0x7000).level, 1);
}

#[test]
fn promote_rejects_mixed_or_discontiguous_children() {
    let mut m = machine();
    let td = m.running_td();
    // 4K pages at GPA 2M..4M from scattered frames: not contiguous.
    m.map_tables(&td, 2 * MIB, 0);
    for i in 0..512u64 {
        let p = m.page();
        ok(m.host(leaf::MEM_PAGE_AUG, gpa_level(2 * MIB + i * 4096, 0), td.tdr, p, 0), "AUG");
        m.page(); // leave a gap so frames are not contiguous
    }
    ok(m.host(leaf::MEM_RANGE_BLOCK, gpa_level(2 * MIB, 1), td.tdr, 0, 0), "BLOCK NL");
    kick_and_track(&mut m, &td);
    let r = rejects(&mut m, &[td.tdr], Status::EPT_INVALID_PROMOTE_CONDITIONS, |m| {
        m.host(leaf::MEM_PAGE_PROMOTE, gpa_level(2 * MIB, 1), td.tdr, 0, 0)
    });
    assert_eq!(r.rdx & 7, 0, "the offending child is a 4K entry");
}

// ---- TDH.MEM.SEPT.REMOVE ---------------------------------------------------------------------

#[test]
fn sept_remove_rejects_unblocked_untracked_and_non_empty_tables() {
    let mut m = machine();
    let td = m.running_td();
    m.aug_accept(&td, 0x1000, PageSize::Size4K);
    rejects(&mut m, &[td.tdr], Status::GPA_RANGE_NOT_BLOCKED, |m| {
        m.host(leaf::MEM_SEPT_REMOVE, gpa_level(0, 1), td.tdr, 0, 0)
    });
    ok(m.host(leaf::MEM_RANGE_BLOCK, gpa_level(0, 1), td.tdr, 0, 0), "BLOCK NL");
    rejects(&mut m, &[td.tdr], Status::TLB_TRACKING_NOT_DONE, |m| {
        m.host(leaf::MEM_SEPT_REMOVE, gpa_level(0, 1), td.tdr, 0, 0)
    });
    kick_and_track(&mut m, &td);
    rejects(&mut m, &[td.tdr], Status::EPT_PAGE_NOT_FREE, |m| {
        m.host(leaf::MEM_SEPT_REMOVE, gpa_level(0, 1), td.tdr, 0, 0)
    });
}

#[test]
fn sept_remove_rejects_a_leaf() {
    let mut m = machine();
    let td = m.running_td();
    m.map_tables(&td, 2 * MIB, 1);
    m.aug_accept(&td, 2 * MIB, PageSize::Size2M);
    rejects(&mut m, &[td.tdr], Status::EPT_ENTRY_LEAF, |m| {
        m.host(leaf::MEM_SEPT_REMOVE, gpa_level(2 * MIB, 1), td.tdr, 0, 0)
    });
}

#[test]
fn sept_remove_happy_path() {
    let mut m = machine();
    let td = m.running_td();
    let table = m.page();
    ok(m.host(leaf::MEM_SEPT_ADD, gpa_level(4 * MIB, 1), td.tdr, table, 0), "SEPT.ADD");
    ok(m.host(leaf::MEM_RANGE_BLOCK, gpa_level(4 * MIB, 1), td.tdr, 0, 0), "BLOCK");
    kick_and_track(&mut m, &td);
    let r = m.host(leaf::MEM_SEPT_REMOVE, gpa_level(4 * MIB, 1), td.tdr, 0, 0);
    ok(r, "SEPT.REMOVE");
    assert_eq!(r.rcx, table);
    assert_eq!(pamt(&m, table).ty, PageType::Free);
    assert_eq!(state_of(&mut m, &td, 4 * MIB, 1), SeptState::Free);
}

// ---- reads -----------------------------------------------------------------------------------

#[test]
fn rdmd_reports_type_owner_and_epoch() {
    let mut m = machine();
    let td = m.running_td();
    let r = m.host(leaf::PHYMEM_PAGE_RDMD, td.tdr, 0, 0, 0);
    ok(r, "RDMD");
    assert_eq!((r.rcx, r.rdx), (PageType::Tdr as u64, td.tdr));
    let r = m.host(leaf::PHYMEM_PAGE_RDMD, m.pamt_base(), 0, 0, 0);
    assert_eq!(r.rcx, PageType::Reserved as u64);
    let r = m.host(leaf::PHYMEM_PAGE_RDMD, 0x1000, 0, 0, 0);
    expect_op(&r, Status::OPERAND_ADDR_RANGE_ERROR, Operand::Rcx);
    let r = m.host(leaf::PHYMEM_PAGE_RDMD, td.tdr + 8, 0, 0, 0);
    expect_op(&r, Status::OPERAND_INVALID, Operand::Rcx);
}

#[test]
fn sept_rd_reports_where_a_walk_stops() {
    let mut m = machine();
    let td = m.running_td();
    let r = m.host(leaf::MEM_SEPT_RD, gpa_level(1 << 30, 0), td.tdr, 0, 0);
    expect(&r, Status::EPT_WALK_FAILED);
    assert_eq!(r.rdx & 7, 2);
    let r = m.host(leaf::MEM_SEPT_RD, gpa_level(0, 4), td.tdr, 0, 0);
    expect_op(&r, Status::OPERAND_INVALID, Operand::Rcx);
}

// ---- check order -----------------------------------------------------------------------------

#[test]
fn aug_checks_run_in_the_documented_order() {
    let mut m = machine();
    let td = m.running_td();
    let mut building = m.create_td(&seamless_harness::driver::default_params());
    m.add_vcpu(&mut building);
    let page = m.page();
    let shared = gpa_level(1 << 47, 0);
    // Each call breaks two rules; the earlier one in the table is reported.
    let r = m.host(leaf::MEM_PAGE_AUG, shared | 0x8, td.tdcs[0], td.tdr, 0);
    expect_op(&r, Status::OPERAND_INVALID, Operand::Rcx);
    let r = m.host(leaf::MEM_PAGE_AUG, shared, td.tdcs[0], td.tdr, 0);
    expect_op(&r, Status::PAGE_METADATA_INCORRECT, Operand::Rdx);
    let r = m.host(leaf::MEM_PAGE_AUG, shared, building.tdr, td.tdr, 0);
    expect(&r, Status::TD_NOT_FINALIZED);
    let r = m.host(leaf::MEM_PAGE_AUG, shared, td.tdr, td.tdr, 0);
    expect_op(&r, Status::OPERAND_INVALID, Operand::Rcx);
    let r = m.host(leaf::MEM_PAGE_AUG, gpa_level(1 << 30, 0), td.tdr, td.tdr, 0);
    expect_op(&r, Status::PAGE_NOT_FREE, Operand::R8);
    let r = m.host(leaf::MEM_PAGE_AUG, gpa_level(1 << 30, 0), td.tdr, page, 0);
    expect_op(&r, Status::EPT_WALK_FAILED, Operand::Rcx);
}

#[test]
fn remove_checks_run_in_the_documented_order() {
    let mut m = machine();
    let td = m.running_td();
    m.aug_accept(&td, 0x1000, PageSize::Size4K);
    // Misaligned GPA beats the TDR check's success and the state errors.
    expect_op(
        &m.host(leaf::MEM_PAGE_REMOVE, gpa_level(0x1000, 1), td.tdr, 0, 0),
        Status::OPERAND_INVALID,
        Operand::Rcx,
    );
    // Not blocked is reported before tracking (which is not done either).
    expect(&m.host(leaf::MEM_PAGE_REMOVE, gpa_level(0x1000, 0), td.tdr, 0, 0), Status::GPA_RANGE_NOT_BLOCKED);
    ok(m.host(leaf::MEM_RANGE_BLOCK, gpa_level(0x1000, 0), td.tdr, 0, 0), "BLOCK");
    expect(&m.host(leaf::MEM_PAGE_REMOVE, gpa_level(0x1000, 0), td.tdr, 0, 0), Status::TLB_TRACKING_NOT_DONE);
}

#[test]
fn vp_kick_rejects_non_vcpus_and_is_idempotent() {
    let mut m = machine();
    let td = m.running_td();
    expect_op(&m.host(leaf::VP_KICK, td.tdr, 0, 0, 0), Status::PAGE_METADATA_INCORRECT, Operand::Rcx);
    expect_op(&m.host(leaf::VP_KICK, td.vcpus[0] + 4, 0, 0, 0), Status::OPERAND_INVALID, Operand::Rcx);
    let r = m.host(leaf::VP_KICK, td.vcpus[0], 0, 0, 0);
    ok(r, "KICK");
    assert_eq!(r.rcx, 1, "was in guest mode");
    let r = m.host(leaf::VP_KICK, td.vcpus[0], 0, 0, 0);
    ok(r, "KICK again");
    assert_eq!(r.rcx, 0);
}
