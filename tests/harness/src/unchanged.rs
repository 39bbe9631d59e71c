//! "A failed call changes nothing", as the attack tests check it: a snapshot of everything a
//! refused call must leave as it was (the count of writes to simulated memory, so even a write of
//! an equal value counts; every named TD's summary; every PDEV and TDI with their sessions and
//! sequence numbers), and the two assertions built on it.

use tsm::{GuestReturn, Regs, Status, TdSummary};

use crate::assign::pfn;
use crate::driver::Machine;

/// Everything a refused call must leave as it was.
#[derive(Debug, PartialEq)]
pub struct Snapshot {
    writes: u64,
    tds: Vec<Option<TdSummary>>,
    devices: String,
}

/// Takes a snapshot of the machine; `tdrs` names the TDs (by TDR address) to summarize.
pub fn snapshot(m: &Machine, tdrs: &[u64]) -> Snapshot {
    Snapshot {
        writes: m.tsm.platform().mem.writes(),
        tds: tdrs.iter().map(|&t| m.tsm.td_summary(pfn(t))).collect(),
        devices: format!("{:?}", m.tsm.device_summaries()),
    }
}

/// Runs a host call that must fail with exactly `status` (operand included) and change nothing;
/// returns its registers for further checks.
///
/// # Panics
/// When the status differs or the machine changed.
#[track_caller]
pub fn refused(m: &mut Machine, tdrs: &[u64], status: Status, call: impl FnOnce(&mut Machine) -> Regs) -> Regs {
    let before = snapshot(m, tdrs);
    let r = call(m);
    assert_eq!(r.status(), status, "got {:?}, wanted {status:?} ({r:x?})", r.status());
    assert!(before == snapshot(m, tdrs), "a refused call changed the machine");
    r
}

/// The same for a guest call, which must also not exit to the host.
///
/// # Panics
/// When the status differs, the call exited or the machine changed.
#[track_caller]
pub fn guest_refused(m: &mut Machine, tdrs: &[u64], status: Status, call: impl FnOnce(&mut Machine) -> GuestReturn) {
    let before = snapshot(m, tdrs);
    let r = call(m);
    assert_eq!(r.regs.status(), status, "got {:?}, wanted {status:?}", r.regs.status());
    assert_eq!(r.exit, None);
    assert!(before == snapshot(m, tdrs), "a refused guest call changed the machine");
}
