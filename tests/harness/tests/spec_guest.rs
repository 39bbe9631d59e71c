//! Spec tables for the guest leaves.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{expect, expect_op};
use seamless_harness::driver::{default_params, gpa_level, ok, Machine, TdHandle};
use sha2::{Digest, Sha384};
use tsm::abi::{guest::leaf as g, host::leaf as h};
use tsm::addr::{GuestPhysAddr, PageSize};
use tsm::{Operand, Status, TdExit};

const MIB: u64 = 1 << 20;

fn machine() -> Machine {
    Machine::configured(32 * MIB)
}

/// A running TD with accepted 4K pages at GPA 0x1000 and 0x2000.
fn td_with_pages(m: &mut Machine) -> TdHandle {
    let td = m.running_td();
    m.aug_accept(&td, 0x1000, PageSize::Size4K);
    m.aug_accept(&td, 0x2000, PageSize::Size4K);
    td
}

#[test]
fn guest_calls_reject_a_vcpu_not_in_guest_mode() {
    let mut m = machine();
    let td = m.running_td();
    ok(m.host(h::VP_KICK, td.vcpus[0], 0, 0, 0), "KICK");
    let r = m.guest(td.vcpus[0], g::VP_INFO, 0, 0, 0);
    expect_op(&r.regs, Status::VCPU_NOT_IN_GUEST, Operand::Tdvpr);
    let r = m.guest(td.tdr, g::VP_INFO, 0, 0, 0);
    expect_op(&r.regs, Status::PAGE_METADATA_INCORRECT, Operand::Tdvpr);
}

#[test]
fn guest_rejects_unknown_leaves() {
    let mut m = machine();
    let td = m.running_td();
    expect(&m.guest(td.vcpus[0], 99, 0, 0, 0).regs, Status::OPERAND_INVALID);
}

#[test]
fn vp_info_happy_path() {
    let mut m = machine();
    let mut params = default_params();
    params.gpaw = 52;
    params.attributes = 1 << 28;
    let mut td = m.create_td(&params);
    let v = m.add_vcpu(&mut td);
    m.finalize(&td);
    m.enter(v);
    let r = m.guest(v, g::VP_INFO, 0, 0, 0);
    ok(r.regs, "VP.INFO");
    assert_eq!((r.regs.rcx, r.regs.rdx, r.regs.r8, r.regs.r9), (52, 1 << 28, 1 | 2 << 32, 0));
}

#[test]
fn accept_rejects_bad_operands() {
    let mut m = machine();
    let td = m.running_td();
    for rcx in [gpa_level(0x1000, 2), 0x1000 | 0x10, gpa_level(0x1800 & !0xfff | 0x1000, 1), gpa_level(1 << 47, 0)] {
        expect_op(&m.guest(td.vcpus[0], g::MEM_PAGE_ACCEPT, rcx, 0, 0).regs, Status::OPERAND_INVALID, Operand::Rcx);
    }
}

#[test]
fn accept_with_the_wrong_size_is_a_size_mismatch() {
    let mut m = machine();
    let td = m.running_td();
    // 2M pending, guest accepts 4K inside it.
    m.map_tables(&td, 2 * MIB, 1);
    let block = m.block(PageSize::Size2M);
    ok(m.host(h::MEM_PAGE_AUG, gpa_level(2 * MIB, 1), td.tdr, block, 0), "AUG 2M");
    let r = m.guest(td.vcpus[0], g::MEM_PAGE_ACCEPT, gpa_level(2 * MIB, 0), 0, 0);
    expect(&r.regs, Status::PAGE_SIZE_MISMATCH);
    assert_eq!(r.regs.rdx & 7, 1);
    // 4K pending, guest accepts the 2M around it.
    let page = m.page();
    ok(m.host(h::MEM_PAGE_AUG, gpa_level(0x3000, 0), td.tdr, page, 0), "AUG 4K");
    let r = m.guest(td.vcpus[0], g::MEM_PAGE_ACCEPT, gpa_level(0, 1), 0, 0);
    expect(&r.regs, Status::PAGE_SIZE_MISMATCH);
    assert_eq!(r.exit, None);
}

#[test]
fn accept_of_a_missing_or_blocked_page_exits_to_the_host() {
    let mut m = machine();
    let td = m.running_td();
    let r = m.guest(td.vcpus[0], g::MEM_PAGE_ACCEPT, gpa_level(0x4000, 0), 0, 0);
    ok(r.regs, "ACCEPT returns to the host, not an error");
    let gpa = GuestPhysAddr::new(0x4000).unwrap();
    assert_eq!(r.exit, Some(TdExit::EptViolation { gpa, requested_level: 0, level: 0, entry: 0 }));
    // The vCPU left guest mode: it must be entered again.
    expect(&m.guest(td.vcpus[0], g::VP_INFO, 0, 0, 0).regs, Status::VCPU_NOT_IN_GUEST);
    // The host fixes the mapping, re-enters, the guest retries.
    let page = m.page();
    ok(m.host(h::MEM_PAGE_AUG, gpa_level(0x4000, 0), td.tdr, page, 0), "AUG");
    m.enter(td.vcpus[0]);
    ok(m.guest(td.vcpus[0], g::MEM_PAGE_ACCEPT, gpa_level(0x4000, 0), 0, 0).regs, "ACCEPT");
    // A blocked pending page exits too; so does a walk that stops above the level.
    let p2 = m.page();
    ok(m.host(h::MEM_PAGE_AUG, gpa_level(0x5000, 0), td.tdr, p2, 0), "AUG");
    ok(m.host(h::MEM_RANGE_BLOCK, gpa_level(0x5000, 0), td.tdr, 0, 0), "BLOCK");
    let r = m.guest(td.vcpus[0], g::MEM_PAGE_ACCEPT, gpa_level(0x5000, 0), 0, 0);
    assert!(matches!(r.exit, Some(TdExit::EptViolation { level: 0, .. })));
    m.enter(td.vcpus[0]);
    let r = m.guest(td.vcpus[0], g::MEM_PAGE_ACCEPT, gpa_level(1 << 30, 0), 0, 0);
    assert!(matches!(r.exit, Some(TdExit::EptViolation { level: 2, requested_level: 0, .. })));
}

#[test]
fn accept_twice_is_a_warning() {
    let mut m = machine();
    let td = td_with_pages(&mut m);
    let r = m.guest(td.vcpus[0], g::MEM_PAGE_ACCEPT, gpa_level(0x1000, 0), 0, 0);
    assert_eq!(r.regs.status(), Status::PAGE_ALREADY_ACCEPTED);
    assert!(!r.regs.status().is_error());
}

#[test]
fn accept_happy_path_zeroes_the_page() {
    let mut m = machine();
    let td = m.running_td();
    m.map_tables(&td, 2 * MIB, 1);
    let block = m.block(PageSize::Size2M);
    for f in [0u64, 300, 511] {
        m.write(block + f * 4096 + 100, b"host garbage");
    }
    ok(m.host(h::MEM_PAGE_AUG, gpa_level(2 * MIB, 1), td.tdr, block, 0), "AUG");
    ok(m.guest(td.vcpus[0], g::MEM_PAGE_ACCEPT, gpa_level(2 * MIB, 1), 0, 0).regs, "ACCEPT");
    for f in [0u64, 300, 511] {
        assert!(m.read(block + f * 4096, 4096).iter().all(|&b| b == 0));
    }
}

#[test]
fn vmcall_exits_with_the_request() {
    let mut m = machine();
    let td = m.running_td();
    let mut regs = tsm::Regs::call(g::VP_VMCALL, 0, 0, 0, 0);
    regs.r10 = 0x10001;
    regs.r11 = 7;
    let r = m.tsm.guest_call(td.vcpus[0], &regs);
    assert_eq!(r.exit, Some(TdExit::vmcall([0x10001, 7, 0, 0])));
    assert_eq!(m.tsm.td_summary(tsm::addr::Pfn::new(td.tdr >> 12).unwrap()).unwrap().vcpus_in_guest, 0);
}

/// A VMCALL with a secret in every register the ABI carries, RCX the mask.
fn secret_vmcall(mask: u64) -> tsm::Regs {
    let s = 0x5EC2_E700_0000_0000;
    tsm::Regs {
        rax: g::VP_VMCALL,
        rcx: mask,
        rdx: s | 2,
        r8: s | 8,
        r9: s | 9,
        r10: s | 10,
        r11: s | 11,
        r12: s | 12,
        r13: s | 13,
        r14: s | 14,
        r15: s | 15,
    }
}

#[test]
fn vmcall_rejects_a_mask_naming_rax_rcx_rsp_or_bits_above_15() {
    let mut m = machine();
    let td = m.running_td();
    for mask in [1, 2, 0x10, 0x1_0000, 1 << 63, 0xFFFF] {
        let r = m.tsm.guest_call(td.vcpus[0], &secret_vmcall(mask));
        expect_op(&r.regs, Status::OPERAND_INVALID, Operand::Rcx);
        assert_eq!(r.exit, None, "mask {mask:#x}: no exit");
        assert_eq!(m.tsm.running_vcpu(td.vcpus[0]).map(|v| v.entries), Some(1), "still in guest mode");
    }
}

#[test]
fn vmcall_happy_path_exposes_exactly_the_masked_registers() {
    let s = 0x5EC2_E700_0000_0000;
    // RCX = 0: R10..R13 only. edk2's 0xFFEC: RDX, R8..R15 too (RBX, RBP, RSI, RDI are not in
    // the register file and stay in the TD). 0xC000: R14 and R15 beside R10..R13.
    for (mask, want) in [(0, 0x3C00), (0xFFEC, 0xFF04), (0xC000, 0xFC00), (0x00E8, 0x3C00)] {
        let mut m = machine();
        let td = m.running_td();
        let r = m.tsm.guest_call(td.vcpus[0], &secret_vmcall(mask));
        assert_eq!(r.regs.rax, 0);
        let Some(exit @ TdExit::Vmcall { mask: got, regs }) = r.exit else { panic!("no VMCALL exit: {:?}", r.exit) };
        assert_eq!(got, want, "mask {mask:#x}");
        let host = exit.host_regs();
        assert_eq!((host.rax, host.rcx), (77, want));
        for (bit, value) in [(2, host.rdx), (8, host.r8), (9, host.r9), (14, host.r14), (15, host.r15)] {
            let expected = if want & (1 << bit) != 0 { s | bit } else { 0 };
            assert_eq!(value, expected, "mask {mask:#x}: register {bit}");
        }
        assert_eq!([host.r10, host.r11, host.r12, host.r13], [s | 10, s | 11, s | 12, s | 13]);
        assert_eq!(TdExit::from_host_regs(&host), Some(TdExit::Vmcall { mask: want, regs }));
    }
}

#[test]
fn vmcall_answer_reaches_exactly_the_exposed_registers() {
    let guest = secret_vmcall(0xC000);
    let host = tsm::Regs {
        rax: 0xAA,
        rcx: 0xBB,
        rdx: 0xD,
        r8: 8,
        r9: 9,
        r10: 0,
        r11: 0x11,
        r12: 0x12,
        r13: 0x13,
        r14: 0x14,
        r15: 0x15,
    };
    let back = TdExit::vmcall_answered(0xFC00, &host, &guest);
    let expected = tsm::Regs { rax: 0, r10: 0, r11: 0x11, r12: 0x12, r13: 0x13, r14: 0x14, r15: 0x15, ..guest };
    assert_eq!(back, expected, "RCX, RDX, R8, R9 keep the guest's values");
    let back = TdExit::vmcall_answered(0x3C00, &host, &guest);
    assert_eq!((back.r14, back.r15), (guest.r14, guest.r15), "not exposed: the host's R14/R15 do not reach the TD");
}

#[test]
fn rtmr_extend_rejects_bad_operands_and_unmapped_buffers() {
    let mut m = machine();
    let td = td_with_pages(&mut m);
    let v = td.vcpus[0];
    expect_op(&m.guest(v, g::MR_RTMR_EXTEND, 0x1010, 2, 0).regs, Status::OPERAND_INVALID, Operand::Rcx);
    expect_op(&m.guest(v, g::MR_RTMR_EXTEND, 0x1000, 4, 0).regs, Status::OPERAND_INVALID, Operand::Rdx);
    expect(&m.guest(v, g::MR_RTMR_EXTEND, 0x9000, 2, 0).regs, Status::EPT_ENTRY_STATE_INCORRECT);
    expect(&m.guest(v, g::MR_RTMR_EXTEND, 1 << 30, 2, 0).regs, Status::EPT_WALK_FAILED);
}

fn report(m: &mut Machine, td: &TdHandle, data: &[u8; 64]) -> Vec<u8> {
    // REPORTDATA at GPA 0x2000, report at GPA 0x1000.
    let frame = gpa_frame(m, td, 0x2000);
    m.write(frame, data);
    ok(m.guest(td.vcpus[0], g::MR_REPORT, 0x1000, 0x2000, 0).regs, "MR.REPORT");
    let out = gpa_frame(m, td, 0x1000);
    m.read(out, 1024)
}

fn gpa_frame(m: &mut Machine, td: &TdHandle, gpa: u64) -> u64 {
    let r = m.host(h::MEM_SEPT_RD, gpa_level(gpa, 0), td.tdr, 0, 0);
    ok(r, "SEPT.RD");
    r.rcx & 0x000F_FFFF_FFFF_F000
}

#[test]
fn rtmr_extend_happy_path_and_report_shows_it() {
    let mut m = machine();
    let td = td_with_pages(&mut m);
    let data = [0x42u8; 48];
    let frame = gpa_frame(&mut m, &td, 0x2000);
    m.write(frame + 64, &data);
    ok(m.guest(td.vcpus[0], g::MR_RTMR_EXTEND, 0x2040, 3, 0).regs, "RTMR.EXTEND");
    let expected: [u8; 48] = Sha384::new().chain_update([0u8; 48]).chain_update(data).finalize().into();
    let r = report(&mut m, &td, &[1; 64]);
    assert_eq!(&r[512 + 208 + 3 * 48..512 + 256 + 3 * 48], &expected);
    assert_eq!(&r[512 + 208..512 + 256], &[0u8; 48], "RTMR0 untouched");
}

#[test]
fn mr_report_rejects_bad_operands_and_unmapped_buffers() {
    let mut m = machine();
    let td = td_with_pages(&mut m);
    let v = td.vcpus[0];
    expect_op(&m.guest(v, g::MR_REPORT, 0x1200, 0x2000, 0).regs, Status::OPERAND_INVALID, Operand::Rcx);
    expect_op(&m.guest(v, g::MR_REPORT, 0x1000, 0x2004, 0).regs, Status::OPERAND_INVALID, Operand::Rdx);
    expect_op(&m.guest(v, g::MR_REPORT, 0x1000, 0x2000, 1).regs, Status::OPERAND_INVALID, Operand::R8);
    expect_op(&m.guest(v, g::MR_REPORT, 0x7000, 0x2000, 0).regs, Status::EPT_ENTRY_STATE_INCORRECT, Operand::Rcx);
    expect_op(&m.guest(v, g::MR_REPORT, 0x1000, 1 << 30, 0).regs, Status::EPT_WALK_FAILED, Operand::Rdx);
}

#[test]
fn mr_report_happy_path_layout_and_mac() {
    let mut m = machine();
    let td = td_with_pages(&mut m);
    let data = [0x5Au8; 64];
    let r = report(&mut m, &td, &data);
    assert_eq!(r[0], 0x81, "REPORTTYPE TDX");
    assert_eq!(&r[128..192], &data);
    let tcb_hash: [u8; 48] = Sha384::digest(&r[256..495]).into();
    let info_hash: [u8; 48] = Sha384::digest(&r[512..1024]).into();
    assert_eq!(&r[32..80], &tcb_hash);
    assert_eq!(&r[80..128], &info_hash);
    assert_eq!(&r[256 + 24..256 + 72], &[0x5e; 48], "MRSEAM from the TSM identity");
    // The verifier's parser agrees with the layout.
    let parsed = attest::tdreport::TdReport::read_from(&r).unwrap();
    assert!(parsed.is_tdx_v0() && parsed.tee_info_hash_ok() && parsed.tee_tcb_info_hash_ok());
    assert_eq!(parsed.report_mac.report_data, data);
    assert_eq!(parsed.td_info.xfam(), 3);
    // VERIFYREPORT accepts the REPORTMACSTRUCT in place, and rejects a tampered copy.
    let v = td.vcpus[0];
    ok(m.guest(v, g::MR_VERIFYREPORT, 0x1000, 0, 0).regs, "VERIFYREPORT");
    let out = gpa_frame(&mut m, &td, 0x1000);
    m.write(out + 130, &[0x00]);
    expect(&m.guest(v, g::MR_VERIFYREPORT, 0x1000, 0, 0).regs, Status::INVALID_REPORTMACSTRUCT);
    expect_op(&m.guest(v, g::MR_VERIFYREPORT, 0x1080, 0, 0).regs, Status::OPERAND_INVALID, Operand::Rcx);
}

#[test]
fn mrtd_in_the_report_is_recomputable_from_the_image() {
    let mut m = machine();
    let mut td = m.create_td(&default_params());
    let v = m.add_vcpu(&mut td);
    let mut image = Vec::new();
    for (i, gpa) in [0x0u64, 0x1000, 0x7000].into_iter().enumerate() {
        let mut page = [0u8; 4096];
        page.iter_mut().enumerate().for_each(|(j, b)| *b = (i * 31 + j) as u8);
        let extend = i != 1; // the middle page is added but not measured, as TDVF does with TD-HOB
        m.add_page(&td, gpa, &page, extend);
        image.push((gpa, page, extend));
    }
    m.finalize(&td);
    m.enter(v);
    m.aug_accept(&td, 0x3000, PageSize::Size4K);
    m.aug_accept(&td, 0x4000, PageSize::Size4K);
    let frame = gpa_frame(&mut m, &td, 0x4000);
    m.write(frame, &[0u8; 64]);
    ok(m.guest(v, g::MR_REPORT, 0x3000, 0x4000, 0).regs, "MR.REPORT");
    let out = gpa_frame(&mut m, &td, 0x3000);
    let r = m.read(out, 1024);
    let expected = attest::mrtd::measure_image(image.iter().map(|(g, p, e)| (*g, p, *e)));
    assert_eq!(&r[512 + 16..512 + 64], &expected);
    assert_ne!(expected, [0u8; 48]);
}
