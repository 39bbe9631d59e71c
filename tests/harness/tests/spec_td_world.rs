//! What the firmware's TD world relies on in the TSM: the hook that makes the derived nested
//! table drop what the S-EPT stops granting, the read-only view of one private translation,
//! the exits and #VEs the platform decides, TDG.VP.VEINFO.GET, and the registers VP.ENTER
//! hands the host on a TD exit.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::expect;
use seamless_harness::driver::{gpa_level, ok, Machine};
use tsm::abi::{guest::leaf as g, host::leaf as h};
use tsm::addr::{GuestPhysAddr, PageSize, Pfn};
use tsm::sept::SeptState;
use tsm::td::VeInfo;
use tsm::vcpu::NoLeaf;
use tsm::{Regs, Status, TdExit};

const MIB: u64 = 1 << 20;

fn gpa(raw: u64) -> GuestPhysAddr {
    GuestPhysAddr::new(raw).unwrap()
}

fn tdr_pfn(tdr: u64) -> Pfn {
    Pfn::new(tdr >> 12).unwrap()
}

#[test]
fn block_remove_and_track_tell_the_platform_what_the_td_lost() {
    let mut m = Machine::configured(32 * MIB);
    let td = m.running_td();
    m.aug_accept(&td, 0x3000, PageSize::Size4K);
    m.tsm.platform_mut().sept_changes.clear();
    ok(m.host(h::VP_KICK, td.vcpus[0], 0, 0, 0), "KICK");
    ok(m.host(h::MEM_RANGE_BLOCK, gpa_level(0x3000, 0), td.tdr, 0, 0), "BLOCK");
    ok(m.host(h::MEM_TRACK, td.tdr, 0, 0, 0), "TRACK");
    ok(m.host(h::MEM_PAGE_REMOVE, gpa_level(0x3000, 0), td.tdr, 0, 0), "REMOVE");
    let t = tdr_pfn(td.tdr);
    assert_eq!(
        m.tsm.platform().sept_changes,
        [(t, Some((gpa(0x3000), 4096))), (t, None), (t, Some((gpa(0x3000), 4096)))]
    );
}

#[test]
fn a_refused_block_tells_the_platform_nothing() {
    let mut m = Machine::configured(32 * MIB);
    let td = m.running_td();
    m.tsm.platform_mut().sept_changes.clear();
    let r = m.host(h::MEM_RANGE_BLOCK, gpa_level(0x7000, 0), td.tdr, 0, 0);
    assert!(r.status().is_error(), "nothing mapped there");
    assert!(m.tsm.platform().sept_changes.is_empty());
}

#[test]
fn demote_and_promote_tell_the_platform_the_2m_range() {
    let mut m = Machine::configured(32 * MIB);
    let td = m.running_td();
    m.map_tables(&td, 2 * MIB, 1);
    m.aug_accept(&td, 2 * MIB, PageSize::Size2M);
    ok(m.host(h::VP_KICK, td.vcpus[0], 0, 0, 0), "KICK");
    ok(m.host(h::MEM_RANGE_BLOCK, gpa_level(2 * MIB, 1), td.tdr, 0, 0), "BLOCK");
    ok(m.host(h::MEM_TRACK, td.tdr, 0, 0, 0), "TRACK");
    m.tsm.platform_mut().sept_changes.clear();
    let table = m.page();
    ok(m.host(h::MEM_PAGE_DEMOTE, gpa_level(2 * MIB, 1), td.tdr, table, 0), "DEMOTE");
    ok(m.host(h::MEM_RANGE_BLOCK, gpa_level(2 * MIB, 1), td.tdr, 0, 0), "BLOCK the table");
    ok(m.host(h::MEM_TRACK, td.tdr, 0, 0, 0), "TRACK");
    ok(m.host(h::MEM_PAGE_PROMOTE, gpa_level(2 * MIB, 1), td.tdr, 0, 0), "PROMOTE");
    let t = tdr_pfn(td.tdr);
    let range = Some((gpa(2 * MIB), 2 * MIB));
    assert_eq!(m.tsm.platform().sept_changes, [(t, range), (t, range), (t, None), (t, range)]);
}

#[test]
fn private_leaf_shows_each_state_and_nothing_where_no_leaf_is() {
    let mut m = Machine::configured(32 * MIB);
    let td = m.running_td();
    let v = td.vcpus[0];
    let page = m.aug_accept(&td, 0x3000, PageSize::Size4K);
    let leaf = m.tsm.private_leaf(v, 0x3abc).unwrap();
    assert_eq!((leaf.state, leaf.gpa, leaf.size), (SeptState::Mapped, gpa(0x3000), PageSize::Size4K));
    assert_eq!(leaf.frame.addr().raw(), page);
    let pending = m.page();
    ok(m.host(h::MEM_PAGE_AUG, gpa_level(0x4000, 0), td.tdr, pending, 0), "AUG");
    assert_eq!(m.tsm.private_leaf(v, 0x4000).unwrap().state, SeptState::Pending);
    // A free 4K entry: the walk reached level 0 and found nothing.
    assert_eq!(m.tsm.private_leaf(v, 0x9000), Err(NoLeaf { level: 0, entry: 0 }));
    // No table at all above 2M: the walk stopped at level 1.
    assert!(matches!(m.tsm.private_leaf(v, 8 * MIB), Err(NoLeaf { level: 1, .. })));
    // The shared half (bit GPAW-1 = 47) and beyond the width are never private.
    assert_eq!(m.tsm.private_leaf(v, (1 << 47) | 0x3000), Err(NoLeaf { level: 0, entry: 0 }));
    assert_eq!(m.tsm.private_leaf(v, 1 << 50), Err(NoLeaf { level: 0, entry: 0 }));
    ok(m.host(h::VP_KICK, v, 0, 0, 0), "KICK");
    assert!(m.tsm.private_leaf(v, 0x3000).is_err(), "only for a vCPU in guest mode");
    ok(m.host(h::MEM_RANGE_BLOCK, gpa_level(0x3000, 0), td.tdr, 0, 0), "BLOCK");
    m.enter(v);
    assert_eq!(m.tsm.private_leaf(v, 0x3000).unwrap().state, SeptState::Blocked);
}

#[test]
fn running_vcpu_and_vcpu_exit() {
    let mut m = Machine::configured(32 * MIB);
    let td = m.running_td();
    let v = td.vcpus[0];
    let r = m.tsm.running_vcpu(v).unwrap();
    assert_eq!((r.tdr, r.gpaw, r.index, r.entries), (tdr_pfn(td.tdr), 48, 0, 1));
    assert_eq!(m.tsm.running_vcpu(td.tdr), None, "a TDR is no vCPU");
    m.tsm.vcpu_exit(v);
    assert_eq!(m.tsm.running_vcpu(v), None);
    expect(&m.guest(v, g::VP_INFO, 0, 0, 0).regs, Status::VCPU_NOT_IN_GUEST);
    // The vCPU is out: TRACK can retire the epoch it ran in.
    ok(m.host(h::MEM_TRACK, td.tdr, 0, 0, 0), "TRACK");
    ok(m.host(h::MEM_TRACK, td.tdr, 0, 0, 0), "TRACK again");
    m.enter(v);
    assert_eq!(m.tsm.running_vcpu(v).unwrap().entries, 2, "the next entry resumes");
}

#[test]
fn veinfo_get_rejects_a_vcpu_without_a_ve() {
    let mut m = Machine::configured(32 * MIB);
    let td = m.running_td();
    expect(&m.guest(td.vcpus[0], g::VP_VEINFO_GET, 0, 0, 0).regs, Status::NO_VALID_VE_INFO);
    ok(m.host(h::VP_KICK, td.vcpus[0], 0, 0, 0), "KICK");
    let info = VeInfo { exit_reason: 12, instruction_length: 1, ..VeInfo::default() };
    assert!(!m.tsm.deliver_ve(td.vcpus[0], info), "no #VE to a vCPU not in guest mode");
}

#[test]
fn veinfo_get_happy_path_returns_and_clears_the_ve() {
    let mut m = Machine::configured(32 * MIB);
    let td = m.running_td();
    let v = td.vcpus[0];
    let info = VeInfo {
        exit_reason: 48,
        qualification: 0x2,
        gla: 0x7777_0000,
        gpa: 0x5000,
        instruction_length: 3,
        instruction_info: 9,
    };
    assert!(m.tsm.deliver_ve(v, info));
    assert!(!m.tsm.deliver_ve(v, VeInfo::default()), "a second #VE before VEINFO.GET is refused (#DF)");
    let r = m.guest(v, g::VP_VEINFO_GET, 0, 0, 0);
    ok(r.regs, "VEINFO.GET");
    assert_eq!((r.regs.rcx, r.regs.rdx, r.regs.r8, r.regs.r9, r.regs.r10), (48, 2, 0x7777_0000, 0x5000, 3 | 9 << 32));
    expect(&m.guest(v, g::VP_VEINFO_GET, 0, 0, 0).regs, Status::NO_VALID_VE_INFO);
    assert!(m.tsm.deliver_ve(v, info), "read: the next #VE may come");
}

#[test]
fn td_exit_registers_carry_the_exit_and_nothing_else() {
    let vmcall = TdExit::vmcall([1, 2, 3, 4]);
    let r = vmcall.host_regs();
    let expected = Regs { rax: 77, rcx: 0x3C00, r10: 1, r11: 2, r12: 3, r13: 4, ..Regs::default() };
    assert_eq!(r, expected);
    assert_eq!(TdExit::from_host_regs(&r), Some(vmcall));
    let ept = TdExit::EptViolation { gpa: gpa(0x5000), requested_level: 0, level: 1, entry: 0xabc };
    let r = ept.host_regs();
    assert_eq!(r, Regs { rax: 48, rcx: 0xabc, rdx: 1, r8: 0x5000, ..Regs::default() });
    assert_eq!(TdExit::from_host_regs(&r), Some(ept));
    assert_eq!(TdExit::from_host_regs(&TdExit::TripleFault.host_regs()), Some(TdExit::TripleFault));
    let preempted = TdExit::ExternalInterrupt.host_regs();
    assert_eq!(preempted, Regs { rax: 1, ..Regs::default() }, "VMX exit reason 1, nothing else");
    assert_eq!(TdExit::from_host_regs(&preempted), Some(TdExit::ExternalInterrupt));
    assert_eq!(TdExit::from_host_regs(&Regs::default()), None, "SUCCESS alone is no TD exit");
}

#[test]
fn shared_ept_set_rejects_bad_operands() {
    use seamless_harness::driver::PRIVATE_BASE;
    use tsm::Operand;
    let mut m = Machine::configured(32 * MIB);
    let td = m.running_td();
    let host = m.scratch();
    let r = m.host(h::SHARED_EPT_SET, td.tdr, host + 8, 0, 0);
    common::expect_op(&r, Status::OPERAND_INVALID, Operand::Rdx);
    let r = m.host(h::SHARED_EPT_SET, td.vcpus[0], host, 0, 0);
    common::expect_op(&r, Status::PAGE_METADATA_INCORRECT, Operand::Rcx);
    let private = m.aug_accept(&td, 0x3000, PageSize::Size4K);
    let r = m.host(h::SHARED_EPT_SET, td.tdr, private, 0, 0);
    common::expect_op(&r, Status::PAGE_METADATA_INCORRECT, Operand::Rdx);
    let r = m.host(h::SHARED_EPT_SET, td.tdr, PRIVATE_BASE, 0, 0);
    common::expect_op(&r, Status::OPERAND_ADDR_RANGE_ERROR, Operand::Rdx);
    let fresh = m.page();
    ok(m.host(h::MNG_CREATE, fresh, 0, 0, 0), "MNG.CREATE");
    expect(&m.host(h::SHARED_EPT_SET, fresh, host, 0, 0), Status::TD_NOT_INITIALIZED);
    assert_eq!(m.tsm.running_vcpu(td.vcpus[0]).unwrap().shared_root, None, "nothing changed");
}

#[test]
fn shared_ept_set_happy_path_names_and_removes_the_hosts_table() {
    let mut m = Machine::configured(32 * MIB);
    let td = m.running_td();
    let host = m.scratch();
    ok(m.host(h::SHARED_EPT_SET, td.tdr, host, 0, 0), "SHARED.EPT.SET");
    assert_eq!(m.tsm.running_vcpu(td.vcpus[0]).unwrap().shared_root, Some(Pfn::new(host >> 12).unwrap()));
    ok(m.host(h::SHARED_EPT_SET, td.tdr, 0, 0, 0), "SHARED.EPT.SET 0");
    assert_eq!(m.tsm.running_vcpu(td.vcpus[0]).unwrap().shared_root, None);
}
