//! The host and the guest as attackers of the register interface: arbitrary leaf numbers and
//! register values, biased towards addresses that mean something (TDMR frames, control pages,
//! GPAs near mapped ones, reserved bits). Nothing may panic, a failed call may write nothing, and
//! the PAMT must keep agreeing with the TDs' own accounting after every call.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use proptest::prelude::*;
use seamless_harness::driver::{gpa_level, Machine, TdHandle, TDMR_BASE};
use tsm::addr::{PageSize, Pfn};
use tsm::pamt::PageType;
use tsm::{Regs, Status, Tsm};

const MIB: u64 = 1 << 20;

/// A register value: random, or one of the addresses and encodings the machine uses.
fn reg(interesting: Vec<u64>) -> impl Strategy<Value = u64> {
    prop_oneof![
        2 => any::<u64>(),
        4 => proptest::sample::select(interesting.clone()),
        3 => (proptest::sample::select(interesting.clone()), 0u64..5).prop_map(|(v, l)| v | l),
        2 => (proptest::sample::select(interesting), 0u64..12).prop_map(|(v, b)| v ^ (1 << b)),
        1 => (0u64..64).prop_map(|gpa_page| gpa_level(gpa_page * 4096, 0)),
    ]
}

#[derive(Clone, Debug)]
struct Call {
    guest: bool,
    leaf: u64,
    regs: [u64; 4],
}

fn leaf_numbers() -> Vec<u64> {
    let mut v: Vec<u64> = Tsm::<seamless_harness::HostPlatform>::HOST_LEAVES.iter().map(|l| l.spec.number).collect();
    v.extend([4, 5, 11, 0x7fff, 0x8001, u64::MAX]);
    v
}

fn guest_leaf_numbers() -> Vec<u64> {
    let mut v: Vec<u64> = Tsm::<seamless_harness::HostPlatform>::GUEST_LEAVES.iter().map(|l| l.spec.number).collect();
    v.extend([3, 5, 99]);
    v
}

fn setup() -> (Machine, TdHandle, Vec<u64>) {
    let mut m = Machine::configured(16 * MIB);
    let td = m.running_td();
    m.aug_accept(&td, 0x1000, PageSize::Size4K);
    m.aug_accept(&td, 0x2000, PageSize::Size4K);
    let mut interesting = vec![0, td.tdr, td.tdcs[0], td.tdcs[1], td.vcpus[0], m.pamt_base(), TDMR_BASE];
    interesting.extend((0..24).map(|_| m.page()));
    interesting.extend([0x1000, 0x2000, 0x3000, 2 * MIB, 1 << 30, 1 << 47, 1 << 52]);
    (m, td, interesting)
}

fn calls() -> impl Strategy<Value = Vec<Call>> {
    let (_, _, interesting) = setup();
    let call = (
        any::<bool>(),
        any::<prop::sample::Index>(),
        [reg(interesting.clone()), reg(interesting.clone()), reg(interesting.clone()), reg(interesting)],
    )
        .prop_map(|(guest, i, regs)| {
            let leaf = if guest { *i.get(&guest_leaf_numbers()) } else { *i.get(&leaf_numbers()) };
            Call { guest, leaf, regs }
        });
    proptest::collection::vec(call, 200)
}

/// The PAMT's count of frames each TD owns equals the TD's own accounting.
fn pamt_agrees(m: &Machine, tdr: u64) {
    let Some(summary) = m.tsm.td_summary(Pfn::new(tdr >> 12).unwrap()) else { return };
    let owned = (TDMR_BASE >> 12..m.pamt_base() >> 12)
        .filter(|&f| {
            let e = m.tsm.pamt_entry(Pfn::new(f).unwrap()).unwrap();
            e.ty != PageType::Free && e.ty != PageType::Reserved && e.owner.addr().raw() == tdr && f << 12 != tdr
        })
        .count() as u64;
    assert_eq!(owned, summary.owned_frames, "PAMT and TD accounting disagree");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn arbitrary_registers_never_panic_and_failures_change_nothing(calls in calls()) {
        let (mut m, td, _) = setup();
        for c in &calls {
            let before = common::snapshot(&m, &[td.tdr]);
            let regs = Regs::call(c.leaf, c.regs[0], c.regs[1], c.regs[2], c.regs[3]);
            let (status, exited) = if c.guest {
                let r = m.tsm.guest_call(td.vcpus[0], &regs);
                (r.regs.status(), r.exit.is_some())
            } else {
                let r = m.tsm.host_call(&regs);
                (r.status(), false)
            };
            if status != Status::SUCCESS && !exited {
                prop_assert!(before == common::snapshot(&m, &[td.tdr]), "{c:?} -> {status:?} changed the machine");
            }
            prop_assert!(status.code().name().is_some(), "{c:?} returned an undocumented status {status:?}");
            pamt_agrees(&m, td.tdr);
        }
    }
}
