//! A TDVF TD's run ending badly, against the real TSM: the TD reports a fatal error
//! (TDG.VP.VMCALL<ReportFatalError>), triple-faults, or runs away (never yields: the TSM's
//! preemption timer cuts every slice until the host's deadline). Each time the host's own run
//! loop (`tsm_client::host::ghci::run::run`) names the reason, `LastState` says what the host
//! knows of the vCPU's last moment, and `run::tear_down` (what mode `ovmf` calls whatever the
//! end) destroys the TD and finds every donated page free again, `tsm::audit` holding.
//!
//! Before its end the TD has been somewhere, as OVMF has: it accepted pages the host AUGed on
//! its demand, made one shared with MapGPA (the S-EPT leaf blocked and removed, the frame in
//! the host's shared table) and wrote its console. The TD's side is the TSM's guest ABI, called
//! as the TD world calls it; the triple fault and the preemption are what the firmware's TD
//! world reports for a shutdown and its timer (`Tsm::vcpu_exit`, then the exit).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::cell::Cell;
use std::collections::VecDeque;

use seamless_harness::driver::{Machine, TdHandle};
use tsm::abi::{guest::leaf as g, host::leaf as h};
use tsm::{Regs, TdExit};
use tsm_client::host::ghci::run::{self, DeviceRequests, Ended, LastState, RunPlan, RunReport};
use tsm_client::host::ghci::{self, leaf, Ghci, PciFilter, Stop, TdView};
use tsm_client::host::{HostMemory, Seamcall};

const MIB: u64 = 1 << 20;
const SHARED: u64 = 1 << 47;
const RAM: [(u64, u64); 1] = [(0, 2 * MIB)];
const MS: u64 = 1_000_000;

/// What the TD does next, once entered.
#[derive(Clone, Copy, Debug)]
enum Act {
    /// TDG.MEM.PAGE.ACCEPT of a 4 KiB page; an EPT violation (not AUGed yet) exits to the host
    /// and the ACCEPT runs again at the next entry.
    Accept(u64),
    /// A GHCI TDG.VP.VMCALL: R11 and R12..R15.
    Ghci(u64, [u64; 4]),
    /// A shutdown: the TD world's triple-fault exit.
    TripleFault,
    /// A loop that never exits by itself: every slice ends by the preemption timer.
    Spin,
}

/// SEAMCALL into the harness's TSM; at VP.ENTER the TD does its next acts until one exits.
struct World {
    m: Machine,
    tdvpr: u64,
    acts: VecDeque<Act>,
}

impl World {
    fn td_runs(&mut self) -> Regs {
        loop {
            let act = *self.acts.front().expect("the TD has something to do");
            let exit = match act {
                Act::Accept(gpa) => self.m.guest(self.tdvpr, g::MEM_PAGE_ACCEPT, gpa, 0, 0).exit,
                Act::Ghci(r11, [r12, r13, r14, r15]) => {
                    let call =
                        Regs { rax: g::VP_VMCALL, rcx: 0xFC00, r10: 0, r11, r12, r13, r14, r15, ..Regs::default() };
                    self.m.tsm.guest_call(self.tdvpr, &call).exit
                }
                Act::TripleFault => {
                    self.m.tsm.vcpu_exit(self.tdvpr);
                    Some(TdExit::TripleFault)
                }
                Act::Spin => {
                    self.m.tsm.vcpu_exit(self.tdvpr);
                    return TdExit::ExternalInterrupt.host_regs();
                }
            };
            match (act, exit) {
                // An ACCEPT the host must first AUG for: the same ACCEPT again next time.
                (Act::Accept(_), Some(e @ TdExit::EptViolation { .. })) => return e.host_regs(),
                (_, Some(e)) => {
                    self.acts.pop_front();
                    return e.host_regs();
                }
                (_, None) => {
                    self.acts.pop_front();
                }
            }
        }
    }
}

impl Seamcall for World {
    fn seamcall(&mut self, regs: &mut Regs) {
        let enter = regs.rax == h::VP_ENTER;
        self.m.seamcall(regs);
        if enter && regs.rax == 0 {
            *regs = self.td_runs();
        }
    }
}

impl HostMemory for World {
    fn read(&mut self, pa: u64, buf: &mut [u8]) {
        HostMemory::read(&mut self.m, pa, buf);
    }
    fn write(&mut self, pa: u64, data: &[u8]) {
        HostMemory::write(&mut self.m, pa, data);
    }
    fn donate(&mut self) -> Option<u64> {
        self.m.donate()
    }
    fn scratch(&mut self) -> Option<u64> {
        HostMemory::scratch(&mut self.m)
    }
    fn donate_2m(&mut self) -> Option<u64> {
        self.m.donate_2m()
    }
    fn release(&mut self, pa: u64) {
        HostMemory::release(&mut self.m, pa);
    }
    fn donated(&self) -> (u64, u64) {
        self.m.donated()
    }
}

/// The machine the host serves on: a fw_cfg with no files, a UART, and a clock that moves a
/// millisecond at every reading (so a TD that never yields meets the deadline).
#[derive(Debug, Default)]
struct Bench {
    now: Cell<u64>,
    sel: u16,
    at: usize,
}

impl ghci::Machine for Bench {
    fn io_read(&mut self, _port: u16, _size: u8) -> u32 {
        0x60 // LSR: transmitter empty, no data
    }
    fn io_write(&mut self, _port: u16, _size: u8, _value: u32) {}
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
        self.now.set(self.now.get() + MS);
        self.now.get()
    }
    fn wait_until(&mut self, deadline_ns: u64) {
        self.now.set(self.now.get().max(deadline_ns));
    }
}

/// What a run left: how it ended, what the host printed of the last state, and the teardown.
struct Outcome {
    ended: Ended,
    last: String,
    freed: u64,
    donated: u64,
    report: RunReport,
    shared_mapped: u64,
}

/// A TD that boots a little (accepts pages the host AUGs on demand, makes one shared, writes
/// "BdsDxe" on its console), then does `end`; the host runs it to its end and tears it down.
fn boot_then(end: Act) -> Outcome {
    let mut m = Machine::configured(16 * MIB);
    let td: TdHandle = m.running_td();
    let tdvpr = td.vcpus[0];
    // Out of guest mode, as after its first exit: the run loop enters it.
    assert!(m.tsm.guest_call(tdvpr, &Regs::call(g::VP_VMCALL, 0, 0, 0, 0)).exit.is_some());
    let out = |b: u8| Act::Ghci(leaf::IO, [1, 1, 0x3F8, u64::from(b)]);
    let mut acts: VecDeque<Act> = [Act::Accept(0x3000), Act::Accept(0x4000), Act::Accept(0x1F_F000)].into();
    acts.push_back(Act::Ghci(leaf::MAP_GPA, [SHARED | 0x3000, 0x1000, 0, 0]));
    acts.extend(b"BdsDxe\r\n".iter().map(|&b| out(b)));
    acts.push_back(end);
    let mut w = World { m, tdvpr, acts };
    let view = TdView { td: td.pages(), shared_bit: SHARED, ram: &RAM, pci: PciFilter::Q35_PLATFORM };
    let mut bench = Bench::default();
    let mut ghci = Ghci::new(&mut bench, &view, true).unwrap();
    let plan = RunPlan {
        deadline_ns: 2_000 * MS,
        shell_command: None,
        pause_after_entries: None,
        device: DeviceRequests::Refuse,
        marker: None,
    };
    let mut report = RunReport::default();
    let ended = run::run(&mut w, &mut bench, tdvpr, &view, &mut ghci, &plan, &mut report).unwrap();
    let last = LastState { report: &report, console: ghci.ports.console.tail() }.to_string();
    let shared_mapped = ghci.shared.mapped;
    let freed = run::tear_down(&mut w, &td.pages(), &td.vcpus).unwrap_or_else(|e| panic!("{e}"));
    if let Err(v) = seamless_harness::audit::check(&w.m.tsm) {
        panic!("invariant broken after the teardown: {v:?}");
    }
    Outcome { ended, last, freed, donated: w.m.donated_pages(), report, shared_mapped }
}

fn assert_torn_down(o: &Outcome) {
    assert_eq!(o.freed, o.donated, "every donated page free again");
    assert_eq!(o.shared_mapped, 1, "the TD had a shared page when it ended");
    assert!(o.report.augs_on_demand >= 2, "the host AUGed pages the TD accepted: {:?}", o.report);
    assert!(o.last.ends_with("its console's last bytes \"BdsDxe\\r\\n\""), "{}", o.last);
}

#[test]
fn a_td_reporting_a_fatal_error_is_torn_down_with_its_code_and_every_page_back() {
    let o = boot_then(Act::Ghci(leaf::REPORT_FATAL_ERROR, [0xDEAD, 0, 0, 0]));
    assert_eq!(o.ended, Ended::Stopped(Stop::FatalError(0xDEAD)));
    assert_eq!(o.ended.to_string(), "the TD reported a fatal error, code 0xdead");
    assert!(o.last.contains("TDG.VP.VMCALL (mask 0xfc00) R10 0x0 R11 0x10003 R12 0xdead"), "{}", o.last);
    assert_torn_down(&o);
}

#[test]
fn a_td_that_triple_faults_is_torn_down_with_its_last_exit_and_every_page_back() {
    let o = boot_then(Act::TripleFault);
    assert_eq!(o.ended, Ended::TripleFault);
    assert!(o.last.contains("triple fault (the vCPU shut down)"), "{}", o.last);
    assert_torn_down(&o);
}

#[test]
fn a_td_that_runs_away_is_torn_down_at_the_deadline_with_every_page_back() {
    let o = boot_then(Act::Spin);
    assert_eq!(o.ended, Ended::Timeout);
    assert!(o.report.preempted > 100, "the host got its turn at every slice: {:?}", o.report);
    assert!(o.last.contains("external interrupt (the TSM's preemption timer)"), "{}", o.last);
    assert_torn_down(&o);
}
