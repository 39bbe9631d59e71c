//! Helpers shared by the spec tests (included with `mod common;`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(dead_code)]

use seamless_harness::driver::Machine;
use tsm::addr::Pfn;
use tsm::{Operand, Regs, Status, TdSummary};

/// Asserts the status code (operand ignored).
#[track_caller]
pub fn expect(r: &Regs, code: Status) {
    assert_eq!(r.status().code(), code, "got {:?}, wanted {:?} ({r:x?})", r.status(), code);
}

/// Asserts the status code and operand id.
#[track_caller]
pub fn expect_op(r: &Regs, code: Status, op: Operand) {
    assert_eq!(r.status(), code.with_operand(op), "got {:?}, wanted {:?} on {op:?}", r.status(), code);
}

/// What a failed call must not change: the count of writes to simulated memory (so even a
/// write of an equal value counts), and every TD's summary.
#[derive(Debug, PartialEq, Eq)]
pub struct Snapshot {
    writes: u64,
    tds: Vec<(u64, TdSummary)>,
}

/// Takes a snapshot; `tdrs` lists the TDs to summarize.
pub fn snapshot(m: &Machine, tdrs: &[u64]) -> Snapshot {
    let writes = m.tsm.platform().mem.writes();
    let tds = tdrs.iter().filter_map(|&t| m.tsm.td_summary(Pfn::new(t >> 12).unwrap()).map(|s| (t, s))).collect();
    Snapshot { writes, tds }
}

/// Runs `call` and asserts it fails with `code` and leaves the machine unchanged.
#[track_caller]
pub fn rejects(m: &mut Machine, tdrs: &[u64], code: Status, call: impl FnOnce(&mut Machine) -> Regs) -> Regs {
    let before = snapshot(m, tdrs);
    let r = call(m);
    expect(&r, code);
    assert!(before == snapshot(m, tdrs), "a failed call changed the machine");
    r
}
