//! Interrupts and MSRs of a TD vCPU as the TD world needs them from the TSM: SEAMLESS.VP.POST
//! (the host requests a vector), `Tsm::pending_interrupt` and `Tsm::interrupt_taken` (the
//! platform injects it when the vCPU can take it), and `Tsm::vcpu_msr`, which answers the
//! virtual APIC, IA32_APIC_BASE and the MTRRs in the TSM, leaves context registers to the
//! platform and sends everything else to the host as a #VE.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{expect_op, rejects};
use seamless_harness::driver::{default_params, ok, Machine};
use tsm::abi::host::leaf as h;
use tsm::vcpu::{MsrAccess, MsrResult};
use tsm::{Operand, Status};

const MIB: u64 = 1 << 20;
const EOI: u32 = 0x80B;
const ISR1: u32 = 0x811;
const IRR1: u32 = 0x821;

fn post(m: &mut Machine, tdvpr: u64, vector: u64) -> tsm::Regs {
    m.host(h::VP_POST, tdvpr, vector, 0, 0)
}

#[test]
fn vp_post_rejects_before_sys_config() {
    let mut m = Machine::new(32 * MIB);
    let page = m.page();
    expect_op(&post(&mut m, page, 0x20), Status::SYS_NOT_READY, Operand::None);
}

#[test]
fn vp_post_rejects_an_rcx_that_is_no_tdvpr() {
    let mut m = Machine::configured(32 * MIB);
    let td = m.running_td();
    let v = td.vcpus[0];
    let r = rejects(&mut m, &[td.tdr], Status::OPERAND_INVALID, |m| post(m, v + 8, 0x20));
    expect_op(&r, Status::OPERAND_INVALID, Operand::Rcx);
    let r = rejects(&mut m, &[td.tdr], Status::OPERAND_ADDR_RANGE_ERROR, |m| post(m, 1 << 40, 0x20));
    expect_op(&r, Status::OPERAND_ADDR_RANGE_ERROR, Operand::Rcx);
    let r = rejects(&mut m, &[td.tdr], Status::PAGE_METADATA_INCORRECT, |m| post(m, td.tdr, 0x20));
    expect_op(&r, Status::PAGE_METADATA_INCORRECT, Operand::Rcx);
    assert_eq!(m.tsm.pending_interrupt(v), None);
}

#[test]
fn vp_post_rejects_a_td_not_finalized_or_torn_down() {
    let mut m = Machine::configured(32 * MIB);
    let mut td = m.create_td(&default_params());
    let v = m.add_vcpu(&mut td);
    rejects(&mut m, &[td.tdr], Status::TD_NOT_FINALIZED, |m| post(m, v, 0x20));
    let td = m.running_td();
    ok(m.host(h::VP_KICK, td.vcpus[0], 0, 0, 0), "KICK");
    ok(m.host(h::MNG_VPFLUSHDONE, td.tdr, 0, 0, 0), "VPFLUSHDONE");
    rejects(&mut m, &[td.tdr], Status::LIFECYCLE_STATE_INCORRECT, |m| post(m, td.vcpus[0], 0x20));
}

#[test]
fn vp_post_rejects_exception_vectors_and_values_above_255() {
    let mut m = Machine::configured(32 * MIB);
    let td = m.running_td();
    let v = td.vcpus[0];
    for vector in [0, 2, 14, 15, 256, 1 << 32] {
        let r = rejects(&mut m, &[td.tdr], Status::OPERAND_INVALID, |m| post(m, v, vector));
        expect_op(&r, Status::OPERAND_INVALID, Operand::Rdx);
    }
    assert_eq!(m.tsm.pending_interrupt(v), None);
}

#[test]
fn vp_post_happy_path_injects_by_priority_until_eoi() {
    let mut m = Machine::configured(32 * MIB);
    let td = m.running_td();
    let v = td.vcpus[0];
    let r = post(&mut m, v, 0x20);
    ok(r, "POST");
    assert_eq!(r.rcx, 0, "newly requested");
    assert_eq!(post(&mut m, v, 0x20).rcx, 1, "a second tick merges with the first");
    assert_eq!(m.tsm.pending_interrupt(v), Some(0x20));
    assert_eq!(m.tsm.vcpu_msr(v, IRR1, MsrAccess::Read), MsrResult::Done(1));
    m.tsm.interrupt_taken(v, 0x20);
    assert_eq!(m.tsm.pending_interrupt(v), None, "taken");
    assert_eq!(m.tsm.vcpu_msr(v, ISR1, MsrAccess::Read), MsrResult::Done(1), "in service");
    ok(post(&mut m, v, 0x21), "POST while 0x20 is in service");
    assert_eq!(m.tsm.pending_interrupt(v), None, "same priority class as the one in service");
    assert_eq!(m.tsm.vcpu_msr(v, EOI, MsrAccess::Write(0)), MsrResult::Done(0));
    assert_eq!(m.tsm.pending_interrupt(v), Some(0x21), "the EOI opened the class again");
    // A posted vector waits for a vCPU out of guest mode, and is injected at its next entry.
    ok(m.host(h::VP_KICK, v, 0, 0, 0), "KICK");
    ok(post(&mut m, v, 0xEF), "POST to a vCPU out of guest mode");
    assert_eq!(m.tsm.pending_interrupt(v), None, "only a vCPU in guest mode takes interrupts");
    m.enter(v);
    assert_eq!(m.tsm.pending_interrupt(v), Some(0xEF));
}

#[test]
fn vcpu_msr_rejects_bad_writes_to_the_virtual_apic_as_ve_and_changes_nothing() {
    let mut m = Machine::configured(32 * MIB);
    let td = m.running_td();
    let v = td.vcpus[0];
    ok(post(&mut m, v, 0x30), "POST");
    for (msr, value) in [(0x808, 0x100), (EOI, 1), (0x80A, 0), (IRR1, 0), (0x83F, 3)] {
        assert_eq!(m.tsm.vcpu_msr(v, msr, MsrAccess::Write(value)), MsrResult::Ve, "{msr:#x}");
    }
    assert_eq!(m.tsm.vcpu_msr(v, EOI, MsrAccess::Read), MsrResult::Ve, "EOI is write-only");
    assert_eq!(m.tsm.vcpu_msr(v, 0x1B, MsrAccess::Write(0xFEE0_0900)), MsrResult::Ve, "x2APIC cannot be left");
    assert_eq!(m.tsm.vcpu_msr(v, 0xFE, MsrAccess::Write(0)), MsrResult::Ve, "MTRRCAP is read-only");
    assert_eq!(m.tsm.pending_interrupt(v), Some(0x30), "nothing changed");
    assert_eq!(m.tsm.vcpu_msr(v, 0x808, MsrAccess::Read), MsrResult::Done(0));
    ok(m.host(h::VP_KICK, v, 0, 0, 0), "KICK");
    assert_eq!(m.tsm.vcpu_msr(v, 0x808, MsrAccess::Read), MsrResult::Ve, "a vCPU out of guest mode has no MSRs");
}

#[test]
fn vcpu_msr_happy_path_answers_apic_and_mtrrs_and_leaves_the_rest() {
    let mut m = Machine::configured(32 * MIB);
    let td = m.running_td();
    let v = td.vcpus[0];
    assert_eq!(m.tsm.vcpu_msr(v, 0x1B, MsrAccess::Read), MsrResult::Done(0xFEE0_0D00), "EN, EXTD, BSP");
    assert_eq!(m.tsm.vcpu_msr(v, 0x1B, MsrAccess::Write(0xFEE0_0D00)), MsrResult::Done(0));
    ok(post(&mut m, v, 0x40), "POST");
    assert_eq!(m.tsm.vcpu_msr(v, 0x808, MsrAccess::Write(0x40)), MsrResult::Done(0), "TPR");
    assert_eq!(m.tsm.pending_interrupt(v), None, "masked by the TPR");
    assert_eq!(m.tsm.vcpu_msr(v, 0x80A, MsrAccess::Read), MsrResult::Done(0x40), "PPR");
    assert_eq!(m.tsm.vcpu_msr(v, 0xFE, MsrAccess::Read), MsrResult::Done(0x508));
    for (msr, value) in [(0x2FF, 0xC06), (0x200, 0x8000_0006), (0x201, 0xFFFF_8000_0800), (0x26F, 0x0606_0606)] {
        assert_eq!(m.tsm.vcpu_msr(v, msr, MsrAccess::Read), MsrResult::Done(0), "{msr:#x} starts at 0");
        assert_eq!(m.tsm.vcpu_msr(v, msr, MsrAccess::Write(value)), MsrResult::Done(0));
    }
    for (msr, value) in [(0x2FF, 0xC06), (0x200, 0x8000_0006), (0x201, 0xFFFF_8000_0800), (0x26F, 0x0606_0606)] {
        assert_eq!(m.tsm.vcpu_msr(v, msr, MsrAccess::Read), MsrResult::Done(value), "{msr:#x} kept");
    }
    for msr in [0xC000_0080, 0x277, 0xC000_0100] {
        assert_eq!(m.tsm.vcpu_msr(v, msr, MsrAccess::Read), MsrResult::Context, "{msr:#x}");
    }
    for msr in [0x802, 0x832, 0x838, 0x3A, 0x10] {
        assert_eq!(m.tsm.vcpu_msr(v, msr, MsrAccess::Read), MsrResult::Ve, "{msr:#x}: the host's");
    }
    // The state is per vCPU, in its TDVPR page.
    let mut td2 = m.create_td(&default_params());
    let v2 = m.add_vcpu(&mut td2);
    m.finalize(&td2);
    m.enter(v2);
    assert_eq!(m.tsm.vcpu_msr(v2, 0x2FF, MsrAccess::Read), MsrResult::Done(0));
    assert_eq!(m.tsm.pending_interrupt(v2), None);
}
