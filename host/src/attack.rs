//! Mode `attack`: the malicious host against the real TSM and real TDs, from the host world.
//! The host agent walks the device assignment flow, and at each stage tries what a hostile VMM
//! would (cases drawn from `tests/harness/tests/assign_attacks.rs`, the memory specs and issue
//! 11's TD world): each must be refused exactly as the row says and change nothing (the TSM's
//! digest of its device and TD summaries, SEAMLESS.SYS.DIGEST, and the PAMT entry of every page
//! the host handed out, TDH.PHYMEM.PAGE.RDMD, before and after). Then the flow completes and
//! tears down with every page reclaimed, which shows the refused calls left nothing behind.
//!
//! The two TDs are the guest binary in plan probe (MRCONFIGID): each runs its flow in its TD
//! world and waits in its requests, and a row the TD must make is a probe
//! (`tsm_client::guest::probe`) the host sends in the answer to the request it waits in: a guest
//! call the TSM must refuse with a status, an access its own accessors must refuse, or an access
//! or instruction the TSM must stop in hardware (#VE, #UD, an EPT-violation exit).
//!
//! The cases are one table, [`STAGES`]: each stage names the step of the flow that brings the
//! machine to it, then its cases as (name, who calls and what, the outcome expected).

use core::fmt::Write;

use seamless_drivers::bootinfo::BootInfo;
use seamless_drivers::console::figure;
use seamless_drivers::say;
use seamless_drivers::serial::Uart;
use seamless_host::device::{spdm_connect, Nvme};
use seamless_host::mem::DoeLink;
use seamless_host::{td_params, Cpu, BAR_GPA, LOCK_FLAGS, WORK_GPA, WORK_PAGES};
use sha2::{Digest, Sha384};
use tsm::abi::host::leaf as h;
use tsm::sept::{SeptEntry, SeptState};
use tsm::{Regs, Status, TdExit};
use tsm_client::guest::probe::{self, Kind, Outcome, Probe, ProbeStep};
use tsm_client::guest::{Plan, DEMO_LAYOUT};
use tsm_client::host::device::{self, Assignment};
use tsm_client::host::td::{self, BuiltTd};
use tsm_client::host::td_device::{Answer, DeviceTd, Next, Request};
use tsm_client::host::unbind::{self, Holdings};
use tsm_client::host::{donate, raw, scratch, HostError, HostMemory, PumpStats};
use tsm_client::vmcall;

use crate::arch;
use crate::run::{fail, Agent};

pub(super) const PAGE: u64 = 4096;

mod cases;

use cases::{Advance, Call, Case, Ctx, Want, STAGES};

struct HashWriter(Sha384);

impl Write for HashWriter {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        self.0.update(s.as_bytes());
        Ok(())
    }
}

/// One of the two TDs as the host runs it, and the request it waits in.
struct Td {
    built: BuiltTd,
    dtd: DeviceTd,
    waiting: Request,
}

/// What a probe came to, as the host sees it.
#[derive(Clone, Copy, Debug)]
enum Ran {
    /// The TD made its request again with the outcome; `regs`: every register of that exit.
    Outcome(Outcome, Regs),
    /// The access exited to the host (an EPT violation).
    Exit(TdExit),
}

/// The malicious host's run: the flow's objects and the tally.
struct Attack<'a> {
    cpu: &'a mut Agent,
    doe: DoeLink<'a>,
    td: Td,
    other: Td,
    a: Assignment,
    stats: PumpStats,
    ctx: Ctx,
    total: u32,
    rejected: u32,
}

/// Something in the run that is not an attack went wrong: stop.
fn broke(what: &str, e: &HostError) -> ! {
    fail(what, e)
}

impl Attack<'_> {
    /// What a refused call must leave as it was.
    fn snapshot(&mut self) -> [u8; 48] {
        snapshot(self.cpu)
    }

    /// Answers the request TD `other` waits in and runs it to its next request, `want`.
    fn answer(&mut self, other: bool, answer: Answer, want: u64) -> Request {
        let mut com1 = |b: &[u8]| Uart::com1().write_bytes(b);
        let t = if other { &mut self.other } else { &mut self.td };
        let r = t.dtd.expect(self.cpu, answer, want, &mut com1).unwrap_or_else(|e| broke("TD", &e));
        t.waiting = r;
        r
    }

    /// Sends probe `p` to TD `other` in the answer to the request it waits in; returns what it
    /// came to. The TD makes the same request again with the outcome, unless the access exited.
    fn probe(&mut self, other: bool, p: Probe, gpa: u64) -> Result<Ran, HostError> {
        let step = ProbeStep::new(p, self.ctx.fn_id, self.ctx.generation, gpa);
        let mut com1 = |b: &[u8]| Uart::com1().write_bytes(b);
        let t = if other { &mut self.other } else { &mut self.td };
        let again = t.waiting.number();
        match t.dtd.next(self.cpu, Answer::Probe(step), &mut com1)? {
            Next::Request(r) if r.number() == again => Ok(Ran::Outcome(t.dtd.take_outcome(self.cpu)?, t.dtd.last_exit)),
            Next::Violation(exit) => Ok(Ran::Exit(exit)),
            Next::Request(r) => Err(HostError::Request { request: r.number(), why: "made instead of the probed one" }),
            Next::Halted => Err(HostError::Request { request: again, why: "never made again: the TD halted" }),
        }
    }

    /// The GPA a load probe reads.
    fn probe_gpa(&self, p: Probe) -> u64 {
        match p {
            Probe::LoadPending => probe::pending_page(&DEMO_LAYOUT),
            Probe::LoadBlocked => probe::blocked_page(&DEMO_LAYOUT),
            Probe::LoadUnacceptedMmio => BAR_GPA + (self.ctx.bar_pages - 1) * PAGE,
            Probe::LoadHostMemory => self.ctx.host_page,
            _ => 0,
        }
    }

    /// Runs one case and judges it; prints one line.
    fn case(&mut self, case: &Case) {
        self.total += 1;
        let (n, name) = (self.total, case.name);
        let before = self.snapshot();
        let verdict = self.judge(case);
        // A refusal changes nothing; the blocked page's case blocks and unblocks on purpose.
        let changed = !matches!(case.want, Want::ExitThenIntact) && self.snapshot() != before;
        let ok = verdict.is_ok() && !changed;
        self.rejected += u32::from(ok);
        match (verdict, changed) {
            (Ok(how), false) => say!("attack {n:2} {name}: {how}"),
            (Ok(how), true) => say!("attack {n:2} {name}: NOT AS EXPECTED: {how}; the machine changed"),
            (Err(why), _) => say!("attack {n:2} {name}: NOT AS EXPECTED: {why}"),
        }
    }

    /// Makes the case's call and says how it was refused, or why that is not as expected.
    fn judge(&mut self, case: &Case) -> Result<Verdict, Verdict> {
        let c = self.ctx;
        let ran = match case.call {
            Call::Host(regs) => {
                let got = raw(self.cpu, regs(&c)).status();
                return status(got, case.want);
            }
            Call::HostWorldTdcall => {
                return if arch::probe_tdcall() {
                    Ok(Verdict::HostWorldUd)
                } else {
                    Err(Verdict::Said("TDCALL did not fault"))
                };
            }
            Call::Td(p) | Call::OtherTd(p) => {
                let other = matches!(case.call, Call::OtherTd(_));
                if matches!(case.want, Want::ExitThenIntact) {
                    return self.blocked_then_intact(p);
                }
                self.probe(other, p, self.probe_gpa(p)).map_err(Verdict::Host)?
            }
        };
        let gpa = match case.call {
            Call::Td(p) | Call::OtherTd(p) => self.probe_gpa(p),
            _ => 0,
        };
        match (ran, case.want) {
            (Ran::Outcome(o, _), Want::Status(want)) if o.kind == Kind::Status as u8 => {
                status(Status(o.status.get()), Want::Status(want))
            }
            (Ran::Outcome(o, _), Want::Refused) if o.kind == Kind::Refused as u8 => Ok(Verdict::Accessor),
            (Ran::Outcome(o, _), Want::VeOnRead) if o.kind == Kind::Ve as u8 => {
                let (reason, qual, at) = (o.reason.get(), o.qualification.get(), o.gpa.get());
                if (reason, qual, at) == (48, 1, gpa) {
                    Ok(Verdict::Ve(at))
                } else {
                    Err(Verdict::Said("a #VE with other VE info"))
                }
            }
            (Ran::Outcome(o, _), Want::Ud) if o.kind == Kind::Ud as u8 => Ok(Verdict::TdUd),
            (Ran::Outcome(o, regs), Want::NoLeak) if o.kind == Kind::Secrets as u8 => {
                let secret = o.value.get();
                let all = [
                    regs.rax, regs.rcx, regs.rdx, regs.r8, regs.r9, regs.r10, regs.r11, regs.r12, regs.r13, regs.r14,
                    regs.r15,
                ];
                let unexposed = (regs.rdx, regs.r8, regs.r9, regs.r14, regs.r15);
                let shape = regs.rcx == TdExit::VMCALL_EXPOSED && unexposed == (0, 0, 0, 0, 0);
                if shape && !all.contains(&secret) && secret != 0 {
                    Ok(Verdict::NoLeak)
                } else {
                    Err(Verdict::Said("a register the VMCALL ABI does not expose reached the host"))
                }
            }
            (Ran::Exit(TdExit::EptViolation { gpa: at, entry, .. }), Want::Exit(state)) => {
                let found = SeptEntry::decode(entry).map(SeptEntry::state);
                if at.raw() == gpa && found == Some(state) {
                    Ok(Verdict::Exit(gpa, state))
                } else {
                    Err(Verdict::Said("an EPT violation at another GPA or entry"))
                }
            }
            (Ran::Outcome(o, _), _) if o.kind == Kind::Value as u8 => Err(Verdict::Said("the access went through")),
            _ => Err(Verdict::Said("another outcome")),
        }
    }

    /// The blocked page's case: BLOCK, TRACK and the invalidation a TD with a DMA entry needs;
    /// the TD's load must exit at the page; UNBLOCK; the load, retried, reads what the page held.
    fn blocked_then_intact(&mut self, p: Probe) -> Result<Verdict, Verdict> {
        let tdr = self.td.built.td.tdr;
        let gpa = self.probe_gpa(p);
        for (name, regs) in [
            ("TDH.MEM.RANGE.BLOCK", Regs::call(h::MEM_RANGE_BLOCK, gpa, tdr, 0, 0)),
            ("TDH.MEM.TRACK", Regs::call(h::MEM_TRACK, tdr, 0, 0, 0)),
            ("TDH.IQ.INV.REQUEST", Regs::call(h::IQ_INV_REQUEST, tdr, 0, 0, 0)),
        ] {
            tsm_client::host::call(self.cpu, name, regs).map_err(Verdict::Host)?;
        }
        let exit = self.probe(false, p, gpa).map_err(Verdict::Host)?;
        let Ran::Exit(TdExit::EptViolation { gpa: at, entry, .. }) = exit else {
            return Err(Verdict::Said("the load of the blocked page did not exit"));
        };
        if at.raw() != gpa || SeptEntry::decode(entry).map(SeptEntry::state) != Some(SeptState::Blocked) {
            return Err(Verdict::Said("an EPT violation at another GPA or entry"));
        }
        let r = Regs::call(h::MEM_RANGE_UNBLOCK, gpa, tdr, 0, 0);
        tsm_client::host::call(self.cpu, "TDH.MEM.RANGE.UNBLOCK", r).map_err(Verdict::Host)?;
        let mut com1 = |b: &[u8]| Uart::com1().write_bytes(b);
        let again = self.td.waiting.number();
        match self.td.dtd.next(self.cpu, Answer::Nothing, &mut com1).map_err(Verdict::Host)? {
            Next::Request(r) if r.number() == again => {}
            _ => return Err(Verdict::Said("the TD did not go on after UNBLOCK")),
        }
        let o = self.td.dtd.take_outcome(self.cpu).map_err(Verdict::Host)?;
        if o.kind == Kind::Value as u8 && o.value.get() == gpa {
            Ok(Verdict::Intact(gpa))
        } else {
            Err(Verdict::Said("the blocked page lost its contents"))
        }
    }

    /// Brings the flow to the stage `to` (a step that fails stops the run: it is not an attack).
    fn advance(&mut self, to: Advance) {
        let bar = (self.ctx.bar, self.ctx.bar_pages);
        match to {
            Advance::Connected | Advance::Ending => {}
            Advance::Bound => {
                let r = raw(
                    self.cpu,
                    Regs::call(h::TDI_CREATE, self.td.built.td.tdr, self.a.pdev, self.ctx.tdi, self.ctx.fn_id),
                );
                if r.status() != Status::SUCCESS {
                    fail("TDI.CREATE", &format_args!("{:?}", r.status().name()));
                }
                self.a.tdi = self.ctx.tdi;
            }
            Advance::Locked => {
                device::lock(self.cpu, &mut self.doe, LOCK_FLAGS, &mut self.a, &mut self.stats)
                    .unwrap_or_else(|e| broke("TDI.LOCK", &e));
                self.ctx.generation = self.a.generation;
                // The TD reads the TDI, checks the report and asks for its MMIO.
                let function = self.ctx.fn_id as u32;
                self.td.dtd.give_tdi(self.cpu, function);
                let Request::GetReport { function: asked } = self.answer(false, Answer::Served, vmcall::GET_REPORT)
                else {
                    fail("TD", &"GET_REPORT expected")
                };
                self.td.dtd.give_report(self.cpu, &self.a, asked, function).unwrap_or_else(|e| broke("TD", &e));
                self.answer(false, Answer::Served, vmcall::MAP_MMIO);
            }
            Advance::Imported => {
                device::import(self.cpu, &self.a, 0, bar.0, bar.1).unwrap_or_else(|e| broke("DMABUF.IMPORT", &e));
            }
            Advance::FirstPageMapped => {
                device::map_mmio(self.cpu, &self.td.built.td, &mut self.a, (bar.0, 1), BAR_GPA)
                    .unwrap_or_else(|e| broke("MMIO.MAP", &e));
            }
            Advance::Mapped => {
                let rest = (bar.0 + PAGE, bar.1 - 1);
                device::map_mmio(self.cpu, &self.td.built.td, &mut self.a, rest, BAR_GPA + PAGE)
                    .unwrap_or_else(|e| broke("MMIO.MAP", &e));
            }
            Advance::DmaAdded => {
                // The TD accepts its MMIO (all but the last page) and asks for its DMA entry.
                self.answer(false, Answer::Served, vmcall::ADD_DMA);
                device::dmar_add(self.cpu, &self.td.built.td, &mut self.a).unwrap_or_else(|e| broke("DMAR.ADD", &e));
            }
            Advance::Running => {
                // It accepts the entry, authorises START and asks for it; it reads its registers.
                self.answer(false, Answer::Served, vmcall::START);
                device::start(self.cpu, &mut self.doe, &self.a, &mut self.stats)
                    .unwrap_or_else(|e| broke("TDI.START", &e));
                self.answer(false, Answer::Served, vmcall::RESULT);
                self.answer(false, Answer::Served, vmcall::GET_NONCE);
            }
            Advance::Kicked => {
                if raw(self.cpu, Regs::call(h::VP_KICK, self.td.built.vcpu, 0, 0, 0)).status() != Status::SUCCESS {
                    fail("VP.KICK", &"refused");
                }
            }
        }
    }
}

/// How a case was refused, or why it is not as expected.
#[derive(Clone, Copy, Debug)]
enum Verdict {
    Status(Status),
    Accessor,
    Ve(u64),
    TdUd,
    HostWorldUd,
    Exit(u64, SeptState),
    Intact(u64),
    NoLeak,
    WrongStatus(Status),
    Host(HostError),
    Said(&'static str),
}

impl core::fmt::Display for Verdict {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            Verdict::Status(s) => write!(f, "rejected with {}", s.name().unwrap_or("?")),
            Verdict::Accessor => f.write_str("refused: the TD's own accessor refused it before any access"),
            Verdict::Ve(gpa) => write!(f, "refused: #VE in the TD (EPT violation, a read of GPA {gpa:#x})"),
            Verdict::TdUd => f.write_str("refused: #UD in the TD"),
            Verdict::HostWorldUd => f.write_str("refused: #UD in the host world, which carried on"),
            Verdict::Exit(gpa, state) => {
                write!(f, "refused: an EPT-violation exit at GPA {gpa:#x} (S-EPT entry {state:?}); the TD never read it")
            }
            Verdict::Intact(gpa) => write!(
                f,
                "refused: an EPT-violation exit at GPA {gpa:#x} (BLOCKED); after UNBLOCK the retried load read the page's own contents"
            ),
            Verdict::NoLeak => f.write_str("refused: the host saw R10..R13 and the mask 0x3c00, no other register"),
            Verdict::WrongStatus(s) => write!(f, "got {} (wanted another status)", s.name().unwrap_or("?")),
            Verdict::Host(e) => write!(f, "{e}"),
            Verdict::Said(s) => f.write_str(s),
        }
    }
}

/// What a refused call must leave as it was: the TSM's digest of its summaries
/// (SEAMLESS.SYS.DIGEST) and the metadata of every page the host donated (RDMD), hashed.
pub(crate) fn snapshot(cpu: &mut Agent) -> [u8; 48] {
    let mut w = HashWriter(Sha384::new());
    let d = raw(cpu, Regs::call(h::SYS_DIGEST, 0, 0, 0, 0));
    let _ = write!(w, "{:x?}", [d.rax, d.rcx, d.rdx, d.r8, d.r9, d.r10, d.r11]);
    let r = td::for_each_donated(cpu, &mut |md| {
        let _ = write!(w, "{:x}{:x}{:x}{:x}", md.ty, md.owner, md.pa, md.level);
    });
    if r.is_err() {
        let _ = w.write_str("RDMD refused");
    }
    w.0.finalize().into()
}

/// Whether `got` is the refusal `want` names: a status without an operand names only the check
/// (as the ABI doc does), one with an operand must match exactly.
pub(crate) fn refused_as(got: Status, want: Status) -> bool {
    if want.operand_id() == 0 {
        got.code() == want
    } else {
        got == want
    }
}

/// The verdict on a call that returned `got` where `want` says a status.
fn status(got: Status, want: Want) -> Result<Verdict, Verdict> {
    let Want::Status(want) = want else { return Err(Verdict::Said("a status where another outcome was wanted")) };
    if refused_as(got, want) {
        Ok(Verdict::Status(got))
    } else {
        Err(Verdict::WrongStatus(got))
    }
}

/// The attack run; never returns.
pub fn run(cpu: &mut Agent, info: &BootInfo, nvme: Nvme, image: &[u8]) -> ! {
    let Nvme { bdf, bar0, mut mailbox, .. } = nvme;
    let function = u32::from(bdf.rid());
    let tsc = cpu.tsc();
    let mut doe = DoeLink::new(&mut mailbox, tsc);
    let mut stats = PumpStats::default();
    let pages = |e: HostError| -> ! { fail("pages", &e) };

    // Two TDs of the guest binary in plan probe: each accepts its pages in its TD world, reads
    // its plan and asks for a TDI.
    let params = td_params(Plan::Probe);
    let mut com1 = |b: &[u8]| Uart::com1().write_bytes(b);
    let mut start = |cpu: &mut Agent| {
        let built = td::build(cpu, image, &params, (WORK_GPA, WORK_PAGES)).unwrap_or_else(|e| fail("TD build", &e));
        let mut dtd = DeviceTd::new(cpu, &built.td, built.vcpu, params.gpaw, &DEMO_LAYOUT)
            .unwrap_or_else(|e| fail("shared page", &e));
        let waiting = dtd.expect(cpu, Answer::Nothing, vmcall::GET_TDI, &mut com1).unwrap_or_else(|e| broke("TD", &e));
        Td { built, dtd, waiting }
    };
    let (td, other) = (start(cpu), start(cpu));
    device::iommu_setup(cpu).unwrap_or_else(|e| broke("IOMMU.SETUP", &e));
    let mut a = spdm_connect(cpu, &mut doe, bdf).unwrap_or_else(|f| fail(f.what, &f.why));
    device::ide_setup(cpu, &mut doe, &mut a, &mut stats).unwrap_or_else(|e| broke("IDE setup", &e));
    let tdi = donate(cpu).unwrap_or_else(|e| pages(e));
    let src = scratch(cpu).unwrap_or_else(|e| pages(e));
    cpu.write(src, &[0x90; 4096]);
    // A page the TD never accepts, for its #VE; a host page, for the other TD's last load.
    let pending = donate(cpu).unwrap_or_else(|e| pages(e));
    td::aug(cpu, &td.built.td, probe::pending_page(&DEMO_LAYOUT), 0, pending).unwrap_or_else(|e| broke("AUG", &e));
    let host_page = scratch(cpu).unwrap_or_else(|e| pages(e));
    cpu.write(host_page, &0x4057_0000_0000_0001u64.to_le_bytes());
    say!("attack: two TDs (plan probe) wait for a TDI; the device connected with a live IDE stream; the malicious host begins");

    let bar_pages = bar0.size / PAGE;
    for i in 0..bar_pages {
        for t in [&td.built.td, &other.built.td] {
            td::map_tables(cpu, t, BAR_GPA + i * PAGE, 0).unwrap_or_else(|e| broke("S-EPT tables", &e));
        }
    }
    let fresh = [donate(cpu).unwrap_or_else(|e| pages(e)), donate(cpu).unwrap_or_else(|e| pages(e))];
    let ctx = Ctx {
        td: (td.built.td.tdr, td.built.vcpu),
        other: (other.built.td.tdr, other.built.vcpu),
        fn_id: u64::from(function),
        bar: bar0.base,
        bar_pages,
        pdev: a.pdev,
        msg: a.msg,
        tdi,
        stream: a.stream,
        generation: 0,
        fresh,
        src,
        // TSM memory, as the boot information names it.
        private: info.tsm[0],
        host_page,
    };
    let mut at = Attack { cpu, doe, td, other, a, stats, ctx, total: 0, rejected: 0 };
    for stage in STAGES {
        at.advance(stage.advance);
        for case in stage.cases {
            at.case(case);
        }
    }
    let (total, rejected) = (at.total, at.rejected);

    // ---- Teardown: the refused calls left nothing behind.
    let holdings = Holdings { td: Some((&at.td.built.td, core::slice::from_ref(&at.td.built.vcpu))), iommu: true };
    unbind::teardown(at.cpu, &mut at.doe, &at.a, holdings, &mut at.stats).unwrap_or_else(|e| broke("teardown", &e));
    td::destroy(at.cpu, at.other.built.td.tdr, &[at.other.built.vcpu])
        .unwrap_or_else(|e| broke("teardown of the other TD", &e));
    let mut back = [0u8; 8];
    at.cpu.read(host_page, &mut back);
    if u64::from_le_bytes(back) != 0x4057_0000_0000_0001 {
        fail("attack", &"the host page the other TD loaded changed");
    }
    let pages = td::check_all_free(at.cpu).unwrap_or_else(|e| broke("teardown", &e));
    say!("attack: the flow still completed; teardown reclaimed all {pages} donated pages");
    figure("attack_cases_total", &total, "cases");
    figure("attack_cases_rejected", &rejected, "cases");
    say!("attack_cases_total {total}");
    say!("attack_cases_rejected {rejected}");
    if rejected != total {
        fail("attack", &format_args!("{} of {total} cases were not refused as expected", total - rejected));
    }
    say!("seamless host: attack done");
    arch::exit(arch::ExitCode::Success)
}
