//! The host's loop for a TDVF TD (`tsm_client::host::ghci::run::run`): VP.ENTER, the timer's
//! ticks posted before each entry, each exit served. Every way a run ends, each with the reason
//! named and the last exit kept, then the paths it serves and goes on: the x2APIC timer
//! programmed by TDVMCALL<WRMSR> and a HLT waited out until the tick is posted, an ACCEPT of RAM
//! the host had not AUGed, a non-GHCI VMCALL refused, the TSM's preemption (an external-interrupt
//! exit) only giving the host its turn, the shell's prompt answered by typing.
//! The exits come from `TdExit::host_regs`, the encoder the TSM's VP.ENTER uses, through a
//! transport that plays them back and records the host's calls; the clock only moves when the
//! host waits.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{HashMap, VecDeque};

use tsm::abi::host::leaf as h;
use tsm::addr::GuestPhysAddr;
use tsm::{Regs, Status, TdExit};
use tsm_client::host::ghci::run::{run, DeviceRequests, Ended, RunPlan, RunReport};
use tsm_client::host::ghci::{self, leaf, Ghci, PciFilter, Stop, TdView};
use tsm_client::host::td::TdPages;
use tsm_client::host::{HostError, HostMemory, Seamcall};

const TDVPR: u64 = 0x4_2000;
const TD: TdPages = TdPages { tdr: 0x4_0000, tdcs: [0x4_1000, 0x4_3000], root_level: 3 };
const RAM: [(u64, u64); 1] = [(0, 64 << 20)];
const SHARED: u64 = 1 << 47;
const MS: u64 = 1_000_000;

/// Plays back `exits` as VP.ENTER's returns, answers every other call with SUCCESS, and
/// records them all; a small memory for the host's pages.
struct Script {
    exits: VecDeque<Regs>,
    calls: Vec<Regs>,
    mem: HashMap<u64, u8>,
    next: u64,
}

impl Seamcall for Script {
    fn seamcall(&mut self, regs: &mut Regs) {
        self.calls.push(*regs);
        *regs = if regs.rax == h::VP_ENTER {
            self.exits.pop_front().expect("the host entered more often than the script has exits")
        } else {
            Regs::default()
        };
    }
}

impl HostMemory for Script {
    fn read(&mut self, pa: u64, buf: &mut [u8]) {
        for (i, b) in buf.iter_mut().enumerate() {
            *b = self.mem.get(&(pa + i as u64)).copied().unwrap_or(0);
        }
    }
    fn write(&mut self, pa: u64, data: &[u8]) {
        for (i, b) in data.iter().enumerate() {
            self.mem.insert(pa + i as u64, *b);
        }
    }
    fn donate(&mut self) -> Option<u64> {
        self.next += 0x1000;
        Some(self.next)
    }
    fn scratch(&mut self) -> Option<u64> {
        self.donate()
    }
    fn donate_2m(&mut self) -> Option<u64> {
        self.next = (self.next + 1).next_multiple_of(2 << 20) + (2 << 20);
        Some(self.next - (2 << 20))
    }
    fn release(&mut self, _pa: u64) {}
    fn donated(&self) -> (u64, u64) {
        (0x10_0000, self.next)
    }
}

/// A machine with a fw_cfg (no files), ports that read zero, and a clock that moves only when
/// the host waits.
#[derive(Default)]
struct Clock {
    now: u64,
    waits: Vec<u64>,
    sel: u16,
    at: usize,
    uart_out: Vec<u8>,
}

impl ghci::Machine for Clock {
    fn io_read(&mut self, _port: u16, _size: u8) -> u32 {
        0x60 // LSR: transmitter empty, no data
    }
    fn io_write(&mut self, port: u16, _size: u8, value: u32) {
        if port == 0x3F8 {
            self.uart_out.push(value as u8);
        }
    }
    fn pci_config_read(&mut self, _bdf: u16, _reg: u16, _size: u8) -> u32 {
        u32::MAX
    }
    fn pci_config_write(&mut self, _bdf: u16, _reg: u16, _size: u8, _value: u32) {}
    fn fw_cfg_select(&mut self, key: u16) {
        (self.sel, self.at) = (key, 0);
    }
    fn fw_cfg_read(&mut self, buf: &mut [u8]) {
        let data: &[u8] = if self.sel == 0 { b"QEMU" } else { &[0; 4] };
        for b in buf {
            *b = data.get(self.at).copied().unwrap_or(0);
            self.at += 1;
        }
    }
    fn cpuid(&self, _leaf: u32, _subleaf: u32) -> [u32; 4] {
        [0; 4]
    }
    fn now_ns(&self) -> u64 {
        self.now
    }
    fn wait_until(&mut self, deadline_ns: u64) {
        self.waits.push(deadline_ns);
        self.now = self.now.max(deadline_ns);
    }
}

fn ghci_exit(sub: u64, args: [u64; 4]) -> Regs {
    let [r12, r13, r14, r15] = args;
    TdExit::Vmcall { mask: 0xFC00, regs: Regs { r10: 0, r11: sub, r12, r13, r14, r15, ..Regs::default() } }.host_regs()
}

fn view() -> TdView<'static> {
    TdView { td: TD, shared_bit: SHARED, ram: &RAM, pci: PciFilter::Q35_PLATFORM }
}

fn go(exits: &[Regs], deadline_ns: u64) -> (Result<Ended, HostError>, Script, Clock, RunReport) {
    go_pausing(exits, deadline_ns, None)
}

/// [`go`], pausing after `pause` entries (and resuming once, with the same server and report).
fn go_pausing(
    exits: &[Regs],
    deadline_ns: u64,
    pause: Option<u64>,
) -> (Result<Ended, HostError>, Script, Clock, RunReport) {
    let mut s =
        Script { exits: exits.iter().copied().collect(), calls: Vec::new(), mem: HashMap::new(), next: 0x10_0000 };
    let mut c = Clock::default();
    let mut g = Ghci::new(&mut c, &view(), true).unwrap();
    let mut report = RunReport::default();
    let plan = RunPlan {
        deadline_ns,
        shell_command: Some(b"reset -s\r"),
        pause_after_entries: pause,
        device: DeviceRequests::Refuse,
        marker: None,
    };
    let mut r = run(&mut s, &mut c, TDVPR, &view(), &mut g, &plan, &mut report);
    if pause.is_some() {
        assert_eq!(r.as_ref().ok(), Some(&Ended::Paused), "paused");
        assert_eq!(Some(report.entries), pause, "after the entries asked");
        r = run(&mut s, &mut c, TDVPR, &view(), &mut g, &plan, &mut report);
    }
    (r, s, c, report)
}

fn fatal() -> Regs {
    ghci_exit(leaf::REPORT_FATAL_ERROR, [0x1, 0, 0, 0])
}

#[test]
fn run_rejects_a_failed_vp_enter_and_an_enter_without_a_td_world() {
    let failed = Regs { rax: Status::OPERAND_BUSY.0, ..Regs::default() };
    match go(&[failed], u64::MAX).0 {
        Err(HostError::Call { leaf: "TDH.VP.ENTER", status, .. }) => assert_eq!(status, Status::OPERAND_BUSY),
        other => panic!("{other:?}"),
    }
    match go(&[Regs::default()], u64::MAX).0 {
        Err(HostError::TdExit { why, .. }) => assert!(why.contains("TD world"), "{why}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn run_ends_naming_each_way_the_td_can_stop() {
    let shared = TdExit::EptViolation {
        gpa: GuestPhysAddr::new(SHARED | 0xFED0_0000).unwrap(),
        requested_level: 0,
        level: 0,
        entry: 0,
    };
    let outside =
        TdExit::EptViolation { gpa: GuestPhysAddr::new(0x8000_0000).unwrap(), requested_level: 0, level: 2, entry: 0 };
    let cases = [
        (ghci_exit(leaf::HLT, [1, 0, 0, 0]), Ended::Halted),
        (ghci_exit(leaf::HLT, [0, 0, 0, 0]), Ended::Idle),
        (TdExit::TripleFault.host_regs(), Ended::TripleFault),
        (fatal(), Ended::Stopped(Stop::FatalError(1))),
        (shared.host_regs(), Ended::EptViolation { gpa: SHARED | 0xFED0_0000 }),
        (outside.host_regs(), Ended::EptViolation { gpa: 0x8000_0000 }),
    ];
    for (exit, want) in cases {
        let (r, s, _, report) = go(&[exit], u64::MAX);
        assert_eq!(r.unwrap(), want);
        assert_eq!(s.calls.len(), 1, "{want:?}: one entry, nothing else");
        assert_eq!(report.last_exit, exit, "the last exit is kept for the report");
    }
    let (r, s, _, _) = go(&[], 0);
    assert_eq!(r.unwrap(), Ended::Timeout);
    assert!(s.calls.is_empty(), "past the deadline: not entered");
}

#[test]
fn run_happy_path_posts_the_timer_and_waits_out_a_halt() {
    // LocalApicTimerDxe: divide by 1, periodic vector 0x20, 10 ms; then the idle HLT.
    let exits = [
        ghci_exit(leaf::WRMSR, [0x83E, 0xB, 0, 0]),
        ghci_exit(leaf::WRMSR, [0x832, 0x2_0020, 0, 0]),
        ghci_exit(leaf::WRMSR, [0x838, 0x0098_9680, 0, 0]),
        ghci_exit(leaf::HLT, [0, 0, 0, 0]),
        fatal(),
    ];
    let (r, s, c, report) = go(&exits, u64::MAX);
    assert_eq!(r.unwrap(), Ended::Stopped(Stop::FatalError(1)));
    assert_eq!(c.waits, [10 * MS], "the halt waited for the first tick");
    let post = s.calls.iter().position(|c| c.rax == h::VP_POST).expect("a POST");
    assert_eq!((s.calls[post].rcx, s.calls[post].rdx), (TDVPR, 0x20));
    assert_eq!(s.calls[post + 1].rax, h::VP_ENTER, "posted before the entry after the halt");
    assert_eq!((report.posted, report.halts, report.entries), (1, 1, 5));
}

#[test]
fn run_serves_an_accept_of_ram_not_augmented_and_refuses_other_vmcalls() {
    let accept_2m =
        TdExit::EptViolation { gpa: GuestPhysAddr::new(0x20_0000).unwrap(), requested_level: 1, level: 2, entry: 0 };
    let not_ghci = TdExit::vmcall([0x1234, 0, 0, 0]).host_regs();
    let preempted = TdExit::ExternalInterrupt.host_regs();
    let (r, s, _, report) = go(&[accept_2m.host_regs(), not_ghci, preempted, fatal()], u64::MAX);
    assert_eq!(r.unwrap(), Ended::Stopped(Stop::FatalError(1)));
    let aug = s.calls.iter().find(|c| c.rax == h::MEM_PAGE_AUG).expect("an AUG");
    assert_eq!((aug.rcx, aug.rdx), (0x20_0000 | 1, TD.tdr), "2 MiB, as the ACCEPT asked");
    assert_eq!((report.augs_on_demand, report.preempted), (1, 1), "a preemption is only the host's turn");
    let enters: Vec<&Regs> = s.calls.iter().filter(|c| c.rax == h::VP_ENTER).collect();
    assert_eq!(enters[2].r10, leaf::status::INVALID_OPERAND, "a VMCALL that is not GHCI's is refused");
}

#[test]
fn run_types_the_command_at_the_shell_prompt() {
    let mut exits: Vec<Regs> = b"Shell> ".iter().map(|&b| ghci_exit(leaf::IO, [1, 1, 0x3F8, u64::from(b)])).collect();
    // The shell polls the UART: LSR, then RBR while data is ready.
    for _ in 0..3 {
        exits.push(ghci_exit(leaf::IO, [1, 0, 0x3FD, 0]));
        exits.push(ghci_exit(leaf::IO, [1, 0, 0x3F8, 0]));
    }
    exits.push(ghci_exit(leaf::IO, [2, 1, 0x604, 0x2000]));
    let (r, s, c, report) = go(&exits, u64::MAX);
    assert_eq!(r.unwrap(), Ended::Stopped(Stop::Power(ghci::ports::PowerRequest::Shutdown)));
    assert_eq!(c.uart_out, b"Shell> ", "the TD's console went to the UART");
    assert!(report.shell_ns.is_some() && report.first_output_ns.is_some());
    let enters: Vec<&Regs> = s.calls.iter().filter(|c| c.rax == h::VP_ENTER).collect();
    // Answers to LSR (data ready) then RBR: 'r', 'e', 's'.
    let answers: Vec<u64> = (0..6).map(|i| enters[8 + i].r11).collect();
    assert_eq!(answers, [0x61, u64::from(b'r'), 0x61, u64::from(b'e'), 0x61, u64::from(b's')]);
}

#[test]
fn run_pauses_after_the_entries_asked_and_resumes_with_the_answer_kept() {
    // The x2APIC's version register (the host's answer in R11), then a fatal error.
    let exits = [ghci_exit(leaf::RDMSR, [0x803, 0, 0, 0]), ghci_exit(leaf::RDMSR, [0x803, 0, 0, 0]), fatal()];
    let (straight, s1, _, _) = go(&exits, u64::MAX);
    let (paused, s2, _, report) = go_pausing(&exits, u64::MAX, Some(1));
    assert_eq!(straight.unwrap(), Ended::Stopped(Stop::FatalError(1)));
    assert_eq!(paused.unwrap(), Ended::Stopped(Stop::FatalError(1)));
    assert_eq!(s2.calls, s1.calls, "a pause changes no call: the answer crossed it");
    assert_ne!(s2.calls[1].r11, 0, "the second entry carries the first RDMSR's answer");
    assert_eq!((report.entries, report.answer), (3, Regs::default()), "nothing left to carry");
}
