//! The TD's console call (`tsm_client::console`, VMCALL request CONSOLE): the guest packs up to
//! sixteen bytes into R11..R13 of TDG.VP.VMCALL, the TSM hands exactly R10..R13 to the host as
//! the exit, and the host's `serve_vmcall` gives the bytes to its log and enters the vCPU again.
//! A count that cannot be right is refused before anything reaches the log or the vCPU runs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use seamless_harness::driver::Machine;
use tsm::abi::guest::leaf as g;
use tsm::{Regs, TdExit};
use tsm_client::host::device::{self, vmcall, Assignment, Vmcalls};
use tsm_client::host::HostError;

const MIB: u64 = 1 << 20;

/// The guest's console call for `bytes`; returns the exit's R10..R13.
fn console_exit(m: &mut Machine, tdvpr: u64, args: [u64; 3]) -> [u64; 4] {
    let regs =
        Regs { r10: vmcall::CONSOLE, r11: args[0], r12: args[1], r13: args[2], ..Regs::call(g::VP_VMCALL, 0, 0, 0, 0) };
    let r = m.tsm.guest_call(tdvpr, &regs);
    match r.exit {
        Some(exit @ TdExit::Vmcall { .. }) => exit.args(),
        other => panic!("TDG.VP.VMCALL did not exit to the host: {other:?}"),
    }
}

fn serve(m: &mut Machine, tdvpr: u64, args: [u64; 4], log: &mut Vec<u8>) -> Result<(), HostError> {
    let mut reports = [0u8; 16];
    let mut sink = |b: &[u8]| log.extend_from_slice(b);
    let mut v = Vmcalls { shared: m.scratch(), nonce: &[0; 64], reports: &mut reports, console: &mut sink };
    device::serve_vmcall(m, tdvpr, args, &Assignment::default(), &mut v)
}

#[test]
fn console_rejects_a_count_that_cannot_be_right_and_logs_nothing() {
    let mut m = Machine::configured(64 * MIB);
    let td = m.running_td();
    let tdvpr = td.vcpus[0];
    for count in [0, 17, u64::MAX] {
        let args = console_exit(&mut m, tdvpr, [count, u64::from_le_bytes(*b"AAAAAAAA"), 0]);
        let mut log = Vec::new();
        match serve(&mut m, tdvpr, args, &mut log) {
            Err(HostError::ConsoleLength(n)) => assert_eq!(n, count),
            other => panic!("count {count}: {other:?}"),
        }
        assert!(log.is_empty(), "nothing reached the log");
        // The vCPU was not entered: the host enters it itself before the next try.
        m.enter(tdvpr);
    }
}

#[test]
fn console_happy_path_bytes_reach_the_host_log_and_the_vcpu_runs_again() {
    let mut m = Machine::configured(64 * MIB);
    let td = m.running_td();
    let tdvpr = td.vcpus[0];
    let text = b"td: seamless guest up, GPAW 48\n";
    let mut log = Vec::new();
    let mut rest = &text[..];
    while !rest.is_empty() {
        let (args, n) = tsm_client::console::pack(rest);
        let exit = console_exit(&mut m, tdvpr, args);
        assert_eq!(exit, [vmcall::CONSOLE, args[0], args[1], args[2]], "R10..R13 exactly as the guest set them");
        serve(&mut m, tdvpr, exit, &mut log).unwrap();
        rest = &rest[n..];
    }
    assert_eq!(log, text);
    // Entered again: a guest call completes in guest mode.
    let r = m.guest(tdvpr, g::VP_INFO, 0, 0, 0);
    assert!(r.exit.is_none() && r.regs.rax == 0, "{r:?}");
}
