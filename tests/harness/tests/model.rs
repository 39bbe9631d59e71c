//! Model-based test: random sequences of host and guest calls on two running TDs, each checked
//! against a small reference model of the S-EPT, page ownership and TLB epochs; after every step
//! the invariants hold on the real machine:
//! - the TSM's own audit (`tsm::audit`, which holds these rules for every test): no physical
//!   frame has two owners or is mapped twice;
//! - every S-EPT leaf and table points at frames its TD owns, with the PAMT's type and level;
//! - PAMT and S-EPT agree (frames a TD owns = frames its S-EPT reaches + control pages);
//! - a removed or free frame is not reachable;
//! - a failed call (and a warning) changed nothing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use seamless_harness::driver::{gpa_level, ok, Machine, TdHandle, TDMR_BASE};
use tsm::abi::{guest::leaf as g, host::leaf as h};
use tsm::addr::{PageSize, Pfn};
use tsm::pamt::PageType;
use tsm::platform::PhysMem;
use tsm::sept::{SeptEntry, SeptState};
use tsm::{Status, TdExit};

const MIB: u64 = 1 << 20;
const SLOTS: u64 = 32; // 4K slots at GPA 0x1000 * (1 + i), in the 2M region whose PT exists
const REGION_BASE: u64 = 4 * MIB; // two 2M regions at 4M and 6M, PD present, PDEs free
const FRAMES: usize = 96; // candidate 4K frames the host may donate

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    /// A 4K slot in region 0 (always under a page table).
    Slot(u64),
    /// A 4K page inside 2M region `r` (reachable only after DEMOTE).
    Child(usize, u64),
    /// 2M region `r` at level 1.
    Region(usize),
}

impl Target {
    fn gpa(self) -> u64 {
        match self {
            Target::Slot(i) => 0x1000 * (1 + i),
            Target::Child(r, k) => REGION_BASE + r as u64 * 2 * MIB + k * 0x1000,
            Target::Region(r) => REGION_BASE + r as u64 * 2 * MIB,
        }
    }
    fn level(self) -> u8 {
        matches!(self, Target::Region(_)) as u8
    }
}

#[derive(Clone, Debug)]
enum Op {
    Aug4k(usize, Target, usize),
    Aug2m(usize, usize, usize),
    Accept(usize, Target),
    Block(usize, Target),
    Unblock(usize, Target),
    Remove(usize, Target),
    Demote(usize, usize, usize),
    Track(usize),
    Enter(usize),
    Kick(usize),
}

fn target() -> impl Strategy<Value = Target> {
    prop_oneof![
        3 => (0..SLOTS).prop_map(Target::Slot),
        1 => (0..2usize, 0..4u64).prop_map(|(r, k)| Target::Child(r, k)),
        1 => (0..2usize).prop_map(Target::Region),
    ]
}

fn target_4k() -> impl Strategy<Value = Target> {
    prop_oneof![
        3 => (0..SLOTS).prop_map(Target::Slot),
        1 => (0..2usize, 0..4u64).prop_map(|(r, k)| Target::Child(r, k)),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let td = 0..2usize;
    prop_oneof![
        4 => (td.clone(), target_4k(), 0..FRAMES).prop_map(|(t, x, f)| Op::Aug4k(t, x, f)),
        1 => (td.clone(), 0..2usize, 0..3usize).prop_map(|(t, r, b)| Op::Aug2m(t, r, b)),
        4 => (td.clone(), target()).prop_map(|(t, x)| Op::Accept(t, x)),
        3 => (td.clone(), target()).prop_map(|(t, x)| Op::Block(t, x)),
        1 => (td.clone(), target()).prop_map(|(t, x)| Op::Unblock(t, x)),
        3 => (td.clone(), target()).prop_map(|(t, x)| Op::Remove(t, x)),
        1 => (td.clone(), 0..2usize, 0..FRAMES).prop_map(|(t, r, f)| Op::Demote(t, r, f)),
        2 => td.clone().prop_map(Op::Track),
        2 => td.clone().prop_map(Op::Enter),
        2 => td.prop_map(Op::Kick),
    ]
}

// ---- the reference model ---------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Leaf {
    state: SeptState,
    page: u64,
    bepoch: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Region {
    Free,
    Leaf(Leaf),
    Table { page: u64, blocked: Option<u64> },
}

#[derive(Clone, Debug)]
struct MTd {
    handle: TdHandle,
    epoch: u64,
    active: [u32; 2],
    in_guest: Option<u64>,
    leaves: BTreeMap<u64, Leaf>, // 4K leaves by GPA (slots and children)
    regions: [Region; 2],
}

impl MTd {
    fn tracked(&self, bepoch: u64) -> bool {
        bepoch + 1 < self.epoch || (bepoch + 1 == self.epoch && self.active[(bepoch & 1) as usize] == 0)
    }
    fn leave(&mut self) {
        if let Some(e) = self.in_guest.take() {
            self.active[(e & 1) as usize] -= 1;
        }
    }
}

/// What the model says a call must return. `changes` is false for errors and warnings.
struct Expect {
    status: Status,
    exit: bool,
}

struct World {
    m: Machine,
    tds: [MTd; 2],
    frames: Vec<u64>,
    blocks: [u64; 3],
    owned: BTreeSet<u64>, // frames owned by a TD (control pages, tables, guest pages)
}

fn world() -> World {
    let mut m = Machine::configured(16 * MIB);
    let mk = |m: &mut Machine| {
        let td = m.running_td();
        m.map_tables(&td, REGION_BASE, 1);
        MTd {
            handle: td,
            epoch: 1,
            active: [0, 1],
            in_guest: Some(1),
            leaves: BTreeMap::new(),
            regions: [Region::Free; 2],
        }
    };
    let tds = [mk(&mut m), mk(&mut m)];
    let b0 = m.block(PageSize::Size2M);
    let b1 = m.block(PageSize::Size2M);
    let frames: Vec<u64> = (0..FRAMES).map(|_| m.page()).collect();
    // Everything the harness donated so far (TDRs, TDCS, TDVPRs, tables) is owned.
    let mut owned = BTreeSet::new();
    for f in TDMR_BASE >> 12..m.pamt_base() >> 12 {
        let e = m.tsm.pamt_entry(Pfn::new(f).unwrap()).unwrap();
        if e.ty != PageType::Free {
            owned.insert(f << 12);
        }
    }
    // Some candidates are the TDs' own control pages: donating them must fail.
    let mut frames = frames;
    frames[0] = tds[0].handle.tdr;
    frames[1] = tds[1].handle.tdcs[0];
    World { m, tds, frames, blocks: [b0, b1, b0 + 0x1000], owned }
}

impl World {
    /// Where a host walk to `t` ends: `Ok(())` if it reaches the target's level.
    fn host_reaches(td: &MTd, t: Target) -> Result<(), Status> {
        match t {
            Target::Child(r, _) => match td.regions[r] {
                Region::Table { blocked: None, .. } => Ok(()),
                _ => Err(Status::EPT_WALK_FAILED),
            },
            _ => Ok(()),
        }
    }

    fn predict(&self, op: &Op) -> Expect {
        let e = |status| Expect { status, exit: false };
        match *op {
            Op::Aug4k(t, x, f) => {
                let td = &self.tds[t];
                if self.owned.contains(&self.frames[f]) {
                    return e(Status::PAGE_NOT_FREE);
                }
                if let Err(s) = Self::host_reaches(td, x) {
                    return e(s);
                }
                if td.leaves.contains_key(&x.gpa()) {
                    return e(Status::EPT_ENTRY_NOT_FREE);
                }
                e(Status::SUCCESS)
            }
            Op::Aug2m(t, r, b) => {
                let block = self.blocks[b];
                if !block.is_multiple_of(2 * MIB) {
                    return e(Status::OPERAND_INVALID);
                }
                if (0..512).any(|k| self.owned.contains(&(block + k * 4096))) {
                    return e(Status::PAGE_NOT_FREE);
                }
                if self.tds[t].regions[r] != Region::Free {
                    return e(Status::EPT_ENTRY_NOT_FREE);
                }
                e(Status::SUCCESS)
            }
            Op::Accept(t, x) => {
                let td = &self.tds[t];
                if td.in_guest.is_none() {
                    return e(Status::VCPU_NOT_IN_GUEST);
                }
                let exit = Expect { status: Status::SUCCESS, exit: true };
                let leaf_rule = |l: Option<&Leaf>| match l.map(|l| l.state) {
                    Some(SeptState::Pending) => e(Status::SUCCESS),
                    Some(SeptState::Mapped) => e(Status::PAGE_ALREADY_ACCEPTED),
                    _ => Expect { status: Status::SUCCESS, exit: true },
                };
                match x {
                    Target::Slot(_) => leaf_rule(td.leaves.get(&x.gpa())),
                    Target::Child(r, _) => match td.regions[r] {
                        Region::Leaf(_) => e(Status::PAGE_SIZE_MISMATCH),
                        Region::Table { blocked: None, .. } => leaf_rule(td.leaves.get(&x.gpa())),
                        _ => exit,
                    },
                    Target::Region(r) => match td.regions[r] {
                        Region::Leaf(l) => leaf_rule(Some(&l)),
                        Region::Table { blocked: None, .. } => e(Status::PAGE_SIZE_MISMATCH),
                        _ => exit,
                    },
                }
            }
            Op::Block(t, x) => {
                let td = &self.tds[t];
                if let Err(s) = Self::host_reaches(td, x) {
                    return e(s);
                }
                match x {
                    Target::Region(r) => match td.regions[r] {
                        Region::Free => e(Status::EPT_ENTRY_FREE),
                        Region::Leaf(l) if l.state.is_blocked() => e(Status::GPA_RANGE_ALREADY_BLOCKED),
                        Region::Table { blocked: Some(_), .. } => e(Status::GPA_RANGE_ALREADY_BLOCKED),
                        _ => e(Status::SUCCESS),
                    },
                    _ => match td.leaves.get(&x.gpa()) {
                        None => e(Status::EPT_ENTRY_FREE),
                        Some(l) if l.state.is_blocked() => e(Status::GPA_RANGE_ALREADY_BLOCKED),
                        Some(_) => e(Status::SUCCESS),
                    },
                }
            }
            Op::Unblock(t, x) | Op::Remove(t, x) => {
                let remove = matches!(op, Op::Remove(..));
                let td = &self.tds[t];
                if let Err(s) = Self::host_reaches(td, x) {
                    return e(s);
                }
                let (blocked, bepoch) = match x {
                    Target::Region(r) => match td.regions[r] {
                        Region::Free => return e(Status::EPT_ENTRY_FREE),
                        Region::Table { .. } if remove => return e(Status::EPT_ENTRY_NOT_LEAF),
                        Region::Table { blocked, .. } => (blocked.is_some(), blocked.unwrap_or(0)),
                        Region::Leaf(l) => (l.state.is_blocked(), l.bepoch),
                    },
                    _ => match td.leaves.get(&x.gpa()) {
                        None => return e(Status::EPT_ENTRY_FREE),
                        Some(l) => (l.state.is_blocked(), l.bepoch),
                    },
                };
                if !blocked {
                    return e(Status::GPA_RANGE_NOT_BLOCKED);
                }
                if !td.tracked(bepoch) {
                    return e(Status::TLB_TRACKING_NOT_DONE);
                }
                e(Status::SUCCESS)
            }
            Op::Demote(t, r, f) => {
                let td = &self.tds[t];
                if self.owned.contains(&self.frames[f]) {
                    return e(Status::PAGE_NOT_FREE);
                }
                match td.regions[r] {
                    Region::Free => e(Status::EPT_ENTRY_FREE),
                    Region::Table { .. } => e(Status::EPT_ENTRY_NOT_LEAF),
                    Region::Leaf(l) if !l.state.is_blocked() => e(Status::GPA_RANGE_NOT_BLOCKED),
                    Region::Leaf(l) if !td.tracked(l.bepoch) => e(Status::TLB_TRACKING_NOT_DONE),
                    Region::Leaf(_) => e(Status::SUCCESS),
                }
            }
            Op::Track(t) => {
                let td = &self.tds[t];
                if td.active[((td.epoch + 1) & 1) as usize] != 0 {
                    e(Status::PREVIOUS_TLB_EPOCH_BUSY)
                } else {
                    e(Status::SUCCESS)
                }
            }
            Op::Enter(t) => {
                if self.tds[t].in_guest.is_some() {
                    e(Status::OPERAND_BUSY)
                } else {
                    e(Status::SUCCESS)
                }
            }
            Op::Kick(_) => e(Status::SUCCESS),
        }
    }

    fn call(&mut self, op: &Op) -> (Status, Option<TdExit>) {
        let m = &mut self.m;
        let tdr = |t: usize| self.tds[t].handle.tdr;
        let r = match *op {
            Op::Aug4k(t, x, f) => m.host(h::MEM_PAGE_AUG, gpa_level(x.gpa(), x.level()), tdr(t), self.frames[f], 0),
            Op::Aug2m(t, r, b) => {
                m.host(h::MEM_PAGE_AUG, gpa_level(Target::Region(r).gpa(), 1), tdr(t), self.blocks[b], 0)
            }
            Op::Accept(t, x) => {
                let r = m.guest(self.tds[t].handle.vcpus[0], g::MEM_PAGE_ACCEPT, gpa_level(x.gpa(), x.level()), 0, 0);
                return (r.regs.status(), r.exit);
            }
            Op::Block(t, x) => m.host(h::MEM_RANGE_BLOCK, gpa_level(x.gpa(), x.level()), tdr(t), 0, 0),
            Op::Unblock(t, x) => m.host(h::MEM_RANGE_UNBLOCK, gpa_level(x.gpa(), x.level()), tdr(t), 0, 0),
            Op::Remove(t, x) => m.host(h::MEM_PAGE_REMOVE, gpa_level(x.gpa(), x.level()), tdr(t), 0, 0),
            Op::Demote(t, r, f) => {
                m.host(h::MEM_PAGE_DEMOTE, gpa_level(Target::Region(r).gpa(), 1), tdr(t), self.frames[f], 0)
            }
            Op::Track(t) => m.host(h::MEM_TRACK, tdr(t), 0, 0, 0),
            Op::Enter(t) => m.host(h::VP_ENTER, self.tds[t].handle.vcpus[0], 0, 0, 0),
            Op::Kick(t) => m.host(h::VP_KICK, self.tds[t].handle.vcpus[0], 0, 0, 0),
        };
        (r.status(), None)
    }

    /// Applies a successful call to the model.
    fn apply(&mut self, op: &Op, exit: bool) {
        match *op {
            Op::Aug4k(t, x, f) => {
                let page = self.frames[f];
                self.owned.insert(page);
                self.tds[t].leaves.insert(x.gpa(), Leaf { state: SeptState::Pending, page, bepoch: 0 });
            }
            Op::Aug2m(t, r, b) => {
                let page = self.blocks[b];
                (0..512).for_each(|k| {
                    self.owned.insert(page + k * 4096);
                });
                self.tds[t].regions[r] = Region::Leaf(Leaf { state: SeptState::Pending, page, bepoch: 0 });
            }
            Op::Accept(t, x) => {
                let td = &mut self.tds[t];
                if exit {
                    td.leave();
                    return;
                }
                match x {
                    Target::Region(r) => {
                        if let Region::Leaf(l) = &mut td.regions[r] {
                            l.state = SeptState::Mapped;
                        }
                    }
                    _ => {
                        if let Some(l) = td.leaves.get_mut(&x.gpa()) {
                            l.state = SeptState::Mapped;
                        }
                    }
                }
            }
            Op::Block(t, x) | Op::Unblock(t, x) => {
                let block = matches!(op, Op::Block(..));
                let td = &mut self.tds[t];
                let epoch = td.epoch;
                let flip = |l: &mut Leaf| {
                    if block {
                        l.state = l.state.blocked();
                        l.bepoch = epoch;
                    } else {
                        l.state = l.state.unblocked();
                    }
                };
                match x {
                    Target::Region(r) => match &mut td.regions[r] {
                        Region::Leaf(l) => flip(l),
                        Region::Table { blocked, .. } => *blocked = if block { Some(epoch) } else { None },
                        Region::Free => {}
                    },
                    _ => {
                        if let Some(l) = td.leaves.get_mut(&x.gpa()) {
                            flip(l);
                        }
                    }
                }
            }
            Op::Remove(t, x) => {
                let td = &mut self.tds[t];
                match x {
                    Target::Region(r) => {
                        if let Region::Leaf(l) = td.regions[r] {
                            (0..512).for_each(|k| {
                                self.owned.remove(&(l.page + k * 4096));
                            });
                        }
                        td.regions[r] = Region::Free;
                    }
                    _ => {
                        if let Some(l) = td.leaves.remove(&x.gpa()) {
                            self.owned.remove(&l.page);
                        }
                    }
                }
            }
            Op::Demote(t, r, f) => {
                let table = self.frames[f];
                self.owned.insert(table);
                let td = &mut self.tds[t];
                if let Region::Leaf(l) = td.regions[r] {
                    for k in 0..512 {
                        let gpa = Target::Child(r, k).gpa();
                        let leaf = Leaf { state: l.state.unblocked(), page: l.page + k * 4096, bepoch: 0 };
                        td.leaves.insert(gpa, leaf);
                    }
                }
                td.regions[r] = Region::Table { page: table, blocked: None };
            }
            Op::Track(t) => self.tds[t].epoch += 1,
            Op::Enter(t) => {
                let td = &mut self.tds[t];
                td.active[(td.epoch & 1) as usize] += 1;
                td.in_guest = Some(td.epoch);
            }
            Op::Kick(t) => self.tds[t].leave(),
        }
    }

    /// The invariants: the TSM's own audit (ownership, PAMT and S-EPT agree, nothing reached
    /// twice, nothing leaked), then the model's view of each TD against the machine.
    fn check_invariants(&self) {
        seamless_harness::audit::assert_invariants(&self.m.tsm, &"a step of the memory model");
        for td in &self.tds {
            let tdr = td.handle.tdr;
            let summary = self.m.tsm.td_summary(Pfn::new(tdr >> 12).unwrap()).unwrap();
            assert_eq!(summary.epoch, td.epoch);
            assert_eq!(summary.vcpus_in_guest, usize::from(td.in_guest.is_some()));
            // The model's leaves are what the S-EPT holds.
            for (&gpa, l) in &td.leaves {
                let reachable = match gpa {
                    g if g >= REGION_BASE => matches!(
                        td.regions[((g - REGION_BASE) / (2 * MIB)) as usize],
                        Region::Table { blocked: None, .. }
                    ),
                    _ => true,
                };
                if reachable {
                    let r = entry_at(&self.m, tdr, gpa);
                    assert_eq!((r.state(), r.pfn().addr().raw()), (l.state, l.page), "gpa {gpa:#x}");
                }
            }
        }
    }
}

fn entry_at(m: &Machine, tdr: u64, gpa: u64) -> SeptEntry {
    let td = m.tsm.td_summary(Pfn::new(tdr >> 12).unwrap()).unwrap();
    let mut table = td.sept_root;
    let mut l = td.root_level;
    loop {
        let idx = ((gpa >> (12 + 9 * u64::from(l))) & 511) as usize;
        let e = SeptEntry::decode(m.tsm.platform().mem.read_u64(table, idx)).unwrap();
        if l == 0 || !e.state().is_table() {
            return e;
        }
        table = e.pfn();
        l -= 1;
    }
}

fn run(ops: &[Op]) {
    let mut w = world();
    w.check_invariants();
    for (i, op) in ops.iter().enumerate() {
        let expect = w.predict(op);
        let quiet = expect.status != Status::SUCCESS;
        let before = quiet.then(|| common::snapshot(&w.m, &[w.tds[0].handle.tdr, w.tds[1].handle.tdr]));
        let (status, exit) = w.call(op);
        assert_eq!(status.code(), expect.status, "step {i}: {op:?} returned {status:?}");
        assert_eq!(exit.is_some(), expect.exit, "step {i}: {op:?} exit {exit:?}");
        if let Some(before) = before {
            let after = common::snapshot(&w.m, &[w.tds[0].handle.tdr, w.tds[1].handle.tdr]);
            assert!(before == after, "step {i}: {op:?} failed or warned but changed the machine");
        } else {
            w.apply(op, exit.is_some());
        }
        w.check_invariants();
    }
    // Teardown: every page comes back, nothing leaks.
    for t in 0..2 {
        let td = w.tds[t].handle.clone();
        ok(w.m.host(h::VP_KICK, td.vcpus[0], 0, 0, 0), "KICK");
        ok(w.m.host(h::MNG_VPFLUSHDONE, td.tdr, 0, 0, 0), "VPFLUSHDONE");
        for f in TDMR_BASE >> 12..w.m.pamt_base() >> 12 {
            let pa = f << 12;
            let meta = w.m.tsm.pamt_entry(Pfn::new(f).unwrap()).unwrap();
            let head = PageSize::from_level(meta.level).is_some_and(|s| Pfn::new(f).unwrap().is_aligned(s));
            if meta.ty != PageType::Free
                && meta.owner.addr().raw() == td.tdr
                && pa != td.tdr
                && (meta.ty != PageType::Regular || head)
            {
                ok(w.m.host(h::PHYMEM_PAGE_RECLAIM, pa, 0, 0, 0), "RECLAIM");
            }
        }
        ok(w.m.host(h::PHYMEM_PAGE_RECLAIM, td.tdr, 0, 0, 0), "RECLAIM TDR");
    }
    for f in TDMR_BASE >> 12..w.m.pamt_base() >> 12 {
        assert_eq!(w.m.tsm.pamt_entry(Pfn::new(f).unwrap()).unwrap().ty, PageType::Free, "frame {f:#x} leaked");
    }
}

proptest! {
    // 12 runs of 1000 steps: at least 10,000 checked steps per test run.
    #![proptest_config(ProptestConfig { cases: 12, max_shrink_iters: 2000, ..ProptestConfig::default() })]
    #[test]
    fn random_call_sequences_match_the_model(ops in proptest::collection::vec(op(), 1000)) {
        run(&ops);
    }
}

#[test]
fn a_scripted_sequence_matches_the_model() {
    use Op::*;
    let ops = [
        Aug4k(0, Target::Slot(0), 5),
        Accept(0, Target::Slot(0)),
        Aug2m(0, 0, 0),
        Accept(0, Target::Region(0)),
        Block(0, Target::Region(0)),
        Kick(0),
        Track(0),
        Demote(0, 0, 6),
        Enter(0),
        Accept(0, Target::Child(0, 3)),
        Block(0, Target::Child(0, 3)),
        Track(0),
        Remove(0, Target::Child(0, 3)),
        Kick(0),
        Remove(0, Target::Child(0, 3)),
        Aug4k(1, Target::Slot(0), 0),
        Aug2m(1, 1, 2),
        Aug2m(1, 1, 0),
    ];
    run(&ops);
}
