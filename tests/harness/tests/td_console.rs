//! The TD's console call (`tsm_client::console`, VMCALL request CONSOLE) through the real TSM:
//! the guest packs up to sixteen bytes into R11..R13 of TDG.VP.VMCALL, the TSM hands exactly
//! R10..R13 to the host as VP.ENTER's exit, and the host's loop (`tsm_client::host::td::run`)
//! gives the bytes to its log and enters the vCPU again. A count that cannot be right is refused
//! before anything reaches the log or the vCPU runs again.
//!
//! The TD world is played by [`Played`]: on VP.ENTER it makes the TSM's VP.ENTER, then the
//! guest's next call in-process (`Tsm::guest_call`), and returns that call's exit in the
//! registers VP.ENTER hands the host (`TdExit::host_regs`), as the firmware's world does.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::VecDeque;

use seamless_harness::driver::Machine;
use tsm::abi::guest::leaf as g;
use tsm::abi::host::leaf as h;
use tsm::{Regs, Status, TdExit};
use tsm_client::host::td::{ghci, run, Ran, RunStats};
use tsm_client::host::{HostError, Seamcall};
use tsm_client::vmcall;

const MIB: u64 = 1 << 20;

/// The machine with a TD whose vCPU makes `calls` (R10..R13 of TDG.VP.VMCALL), one per entry.
struct Played<'m> {
    m: &'m mut Machine,
    calls: VecDeque<[u64; 4]>,
    /// The exits the host saw.
    exits: Vec<Regs>,
}

impl Seamcall for Played<'_> {
    fn seamcall(&mut self, regs: &mut Regs) {
        let entry = *regs;
        self.m.seamcall(regs);
        if entry.rax != h::VP_ENTER || regs.status() != Status::SUCCESS {
            return;
        }
        let [r10, r11, r12, r13] = self.calls.pop_front().expect("the host entered once more than the guest calls");
        let call = Regs { r10, r11, r12, r13, ..Regs::call(g::VP_VMCALL, TdExit::VMCALL_EXPOSED, 0, 0, 0) };
        let back = self.m.tsm.guest_call(entry.rcx, &call);
        let exit = back.exit.expect("TDG.VP.VMCALL exits to the host");
        *regs = exit.host_regs();
        self.exits.push(*regs);
    }
}

fn console_call(bytes: &[u8]) -> ([u64; 4], usize) {
    let ([count, lo, hi], n) = tsm_client::console::pack(bytes);
    ([vmcall::CONSOLE, count, lo, hi], n)
}

const HALT: [u64; 4] = [0, ghci::HLT, 1, 0];

fn go(m: &mut Machine, calls: Vec<[u64; 4]>) -> (Result<Ran, HostError>, Vec<u8>, Vec<Regs>, RunStats) {
    let mut td = m.create_td(&seamless_harness::driver::default_params());
    let tdvpr = m.add_vcpu(&mut td);
    m.finalize(&td);
    let mut p = Played { m, calls: calls.into(), exits: Vec::new() };
    let mut log = Vec::new();
    let mut stats = RunStats::default();
    let r = run(&mut p, tdvpr, &mut |b: &[u8]| log.extend_from_slice(b), &mut stats);
    (r, log, p.exits, stats)
}

#[test]
fn console_rejects_a_count_that_cannot_be_right_and_logs_nothing() {
    for count in [0, 17, u64::MAX] {
        let mut m = Machine::configured(64 * MIB);
        let (r, log, exits, _) = go(&mut m, vec![[vmcall::CONSOLE, count, u64::from_le_bytes(*b"AAAAAAAA"), 0]]);
        match r {
            Err(HostError::ConsoleLength(n)) => assert_eq!(n, count),
            other => panic!("count {count}: {other:?}"),
        }
        assert!(log.is_empty(), "nothing reached the log");
        assert_eq!(exits.len(), 1, "the vCPU was not entered again");
    }
}

#[test]
fn console_happy_path_bytes_reach_the_host_log_and_the_vcpu_runs_again() {
    let mut m = Machine::configured(64 * MIB);
    let text = b"td: seamless guest up, GPAW 48\n";
    let mut calls = Vec::new();
    let mut rest = &text[..];
    while !rest.is_empty() {
        let (call, n) = console_call(rest);
        calls.push(call);
        rest = &rest[n..];
    }
    let sent = calls.clone();
    calls.push(HALT);
    let (r, log, exits, stats) = go(&mut m, calls);
    assert_eq!(r.unwrap(), Ran::Halted);
    assert_eq!(log, text);
    assert_eq!(stats.console as usize, sent.len());
    // The host saw exactly R10..R13 as the guest set them and the exposed-register mask: no
    // other register of the TD.
    for (exit, call) in exits.iter().zip(&sent) {
        assert_eq!([exit.r10, exit.r11, exit.r12, exit.r13], *call);
        assert_eq!((exit.rax, exit.rcx, exit.rdx, exit.r8, exit.r9), (TdExit::REASON_TDCALL, 0x3C00, 0, 0, 0));
    }
}
