//! The host's loop over a TD's exits (`tsm_client::host::td::run` and `resume`): VP.ENTER, then
//! per exit CONSOLE to the log and enter again, RDMSR/WRMSR answered with GHCI's INVALID_OPERAND
//! in the next VP.ENTER's R10, TDVMCALL<HLT> with interrupts blocked the end; a request of the
//! demo TD's protocol and an EPT violation go back to the caller, which resumes with its answer
//! in R10..R13; everything the host cannot serve (HLT with interrupts open, GHCI CPUID and I/O,
//! which need a machine this loop has not, a triple fault, an unknown
//! VMCALL, a bad console count, a failed VP.ENTER) ends the run with an error that names it. The
//! exits come from `TdExit::host_regs`, the encoder the TSM's VP.ENTER uses, through a transport
//! that plays them back and records what the host entered with.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::VecDeque;

use tsm::abi::host::leaf;
use tsm::addr::GuestPhysAddr;
use tsm::{Regs, Status, TdExit};
use tsm_client::console;
use tsm_client::host::td::{ghci, resume, run, Ran, RunStats};
use tsm_client::host::{HostError, Seamcall};
use tsm_client::vmcall;

const TDVPR: u64 = 0x4_2000;

/// Plays back `exits` as VP.ENTER's returns and records every call the host made.
struct Script {
    exits: VecDeque<Regs>,
    calls: Vec<Regs>,
}

impl Script {
    fn new(exits: &[Regs]) -> Script {
        Script { exits: exits.iter().copied().collect(), calls: Vec::new() }
    }
}

impl Seamcall for Script {
    fn seamcall(&mut self, regs: &mut Regs) {
        self.calls.push(*regs);
        *regs = self.exits.pop_front().expect("the host entered the vCPU more often than the script has exits");
    }
}

fn vmcall(args: [u64; 4]) -> Regs {
    TdExit::vmcall(args).host_regs()
}

fn ghci(reason: u64, r12: u64, r13: u64) -> Regs {
    vmcall([0, reason, r12, r13])
}

fn console_exit(text: &[u8]) -> Regs {
    let (a, _) = console::pack(text);
    vmcall([vmcall::CONSOLE, a[0], a[1], a[2]])
}

fn go(exits: &[Regs]) -> (Result<Ran, HostError>, Script, Vec<u8>, RunStats) {
    let mut s = Script::new(exits);
    let mut log = Vec::new();
    let mut stats = RunStats::default();
    let r = run(&mut s, TDVPR, &mut |b: &[u8]| log.extend_from_slice(b), &mut stats);
    (r, s, log, stats)
}

fn refused(r: Result<Ran, HostError>, reason: u64, why: &str) {
    match r {
        Err(HostError::TdExit { reason: got, why: w, .. }) => {
            assert_eq!(got, reason);
            assert!(w.contains(why), "{w:?} does not say {why:?}");
        }
        other => panic!("expected the exit to be refused ({why}), got {other:?}"),
    }
}

#[test]
fn run_rejects_a_failed_vp_enter() {
    let failed = Regs { rax: Status::OPERAND_INVALID.0, ..Regs::default() };
    let (r, s, _, _) = go(&[failed]);
    match r {
        Err(HostError::Call { leaf: "TDH.VP.ENTER", status, .. }) => assert_eq!(status, Status::OPERAND_INVALID),
        other => panic!("{other:?}"),
    }
    assert_eq!(s.calls.len(), 1);
}

#[test]
fn run_rejects_hlt_with_interrupts_open() {
    let (r, s, _, _) = go(&[ghci(ghci::HLT, 0, 0)]);
    refused(r, TdExit::REASON_TDCALL, "interrupts open");
    assert_eq!(s.calls.len(), 1, "the host must not enter a vCPU nothing would wake");
}

#[test]
fn run_rejects_cpuid_and_io_without_a_machine() {
    for reason in [ghci::CPUID, ghci::IO] {
        let (r, s, _, _) = go(&[ghci(reason, 1, 0)]);
        refused(r, TdExit::REASON_TDCALL, "no machine");
        assert_eq!(s.calls.len(), 1);
    }
}

#[test]
fn run_rejects_a_triple_fault() {
    let (r, s, _, _) = go(&[TdExit::TripleFault.host_regs()]);
    refused(r, TdExit::REASON_TRIPLE_FAULT, "triple fault");
    assert_eq!(s.calls.len(), 1);
}

#[test]
fn run_rejects_a_vmcall_it_does_not_serve() {
    for args in [[0x5EA1_00FF, 0, 0, 0], [0, 99, 0, 0], [0x5EA1_0000, 0, 0, 0]] {
        let (r, s, _, _) = go(&[vmcall(args)]);
        refused(r, TdExit::REASON_TDCALL, "does not serve");
        assert_eq!(s.calls.len(), 1);
    }
}

#[test]
fn run_returns_an_ept_violation_to_the_caller_without_entering_again() {
    let gpa = GuestPhysAddr::new(0x4000_0000).unwrap();
    let exit = TdExit::EptViolation { gpa, requested_level: 0, level: 3, entry: 0x1234 };
    let (r, s, _, _) = go(&[console_exit(b"td: touch\n"), exit.host_regs()]);
    assert_eq!(r.unwrap(), Ran::Violation(exit), "the GPA, level and entry as the TSM reported them");
    assert_eq!(s.calls.len(), 2);
}

#[test]
fn run_returns_every_request_of_the_protocol_and_resume_enters_with_the_answer() {
    for row in vmcall::REQUESTS.iter().filter(|r| r.number != vmcall::CONSOLE) {
        let args = [row.number, 0x18, 1 << 47 | 0x80_0000, 4];
        let (r, s, _, _) = go(&[vmcall(args)]);
        assert_eq!(r.unwrap(), Ran::Request(args), "{}: R10..R13 exactly as the TD set them", row.name);
        assert_eq!(s.calls.len(), 1);
    }
    // The caller's answer goes into R10..R13 of the next VP.ENTER, the rest of the run as ever.
    let mut s = Script::new(&[ghci(ghci::HLT, 1, 0)]);
    let mut stats = RunStats::default();
    let answer = [ghci::INVALID_OPERAND, 7, 8, 9];
    let r = resume(&mut s, TDVPR, answer, &mut |_| {}, &mut stats);
    assert_eq!(r.unwrap(), Ran::Halted);
    let c = s.calls[0];
    assert_eq!((c.rax, c.rcx, [c.r10, c.r11, c.r12, c.r13]), (leaf::VP_ENTER, TDVPR, answer));
}

#[test]
fn run_rejects_a_console_count_that_cannot_be_right_and_logs_nothing() {
    for count in [0, 17] {
        let (r, s, log, _) = go(&[vmcall([vmcall::CONSOLE, count, u64::from_le_bytes(*b"AAAAAAAA"), 0])]);
        assert!(matches!(r, Err(HostError::ConsoleLength(n)) if n == count), "{r:?}");
        assert!(log.is_empty());
        assert_eq!(s.calls.len(), 1);
    }
}

#[test]
fn run_rejects_a_status_that_is_no_td_exit() {
    let (r, _, _, _) = go(&[Regs { rax: 1234, ..Regs::default() }]);
    refused(r, 1234, "not a TD exit");
}

#[test]
fn run_returns_no_world_when_vp_enter_returns_at_once() {
    let (r, s, _, stats) = go(&[Regs::default()]);
    assert_eq!(r.unwrap(), Ran::NoWorld);
    assert_eq!(s.calls[0].rax, leaf::VP_ENTER);
    assert_eq!(s.calls[0].rcx, TDVPR);
    assert_eq!(stats.entries, 1);
}

#[test]
fn run_happy_path_logs_the_console_answers_msrs_and_ends_at_the_blocked_hlt() {
    let exits = [
        console_exit(b"td: hello, host\n"),
        ghci(ghci::RDMSR, 0x1B, 0),
        console_exit(b"td: bye\n"),
        ghci(ghci::WRMSR, 0x1B, 0xFEE0_0900),
        ghci(ghci::HLT, 1, 0),
    ];
    let (r, s, log, stats) = go(&exits);
    assert_eq!(r.unwrap(), Ran::Halted);
    assert_eq!(log, b"td: hello, host\ntd: bye\n");
    assert_eq!(stats, RunStats { entries: 5, console: 2, msrs: 2 });
    // Every entry is VP.ENTER of the vCPU; R10..R13 carry the answer to the previous VMCALL:
    // nothing first and after a CONSOLE, INVALID_OPERAND after each MSR request.
    let answers: Vec<[u64; 4]> = s.calls.iter().map(|c| [c.r10, c.r11, c.r12, c.r13]).collect();
    let none = [0; 4];
    let invalid = [ghci::INVALID_OPERAND, 0, 0, 0];
    assert_eq!(answers, [none, none, invalid, none, invalid]);
    for c in &s.calls {
        assert_eq!((c.rax, c.rcx), (leaf::VP_ENTER, TDVPR));
    }
}

#[test]
fn run_enters_again_after_the_tsms_preemption_timer() {
    let exits = [TdExit::ExternalInterrupt.host_regs(), ghci(ghci::HLT, 1, 0)];
    let (r, s, _, stats) = go(&exits);
    assert_eq!(r.unwrap(), Ran::Halted);
    assert_eq!(stats.entries, 2);
    assert_eq!([s.calls[1].r10, s.calls[1].r11], [0, 0], "nothing answered: no VMCALL was made");
}
