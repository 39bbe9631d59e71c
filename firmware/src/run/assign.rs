//! Mode `assign` (and `revoke`): the whole device assignment, phase by phase, with the
//! firmware's own timings. The host's calls are `tsm_client::host`'s over the firmware's
//! transports; the guest is the TD binary, running `tsm_client::guest` in its TD world. They
//! take turns exactly where a VMM and a TD do: the host enters the vCPU, the TD runs until it
//! needs the host (a request of `tsm_client::vmcall`), the host does its part and answers, and
//! enters again (`tsm_client::host::td_device`). What the TD found comes back as typed results
//! (`run/assign/dma.rs` checks the DMA ones against what the host can see itself). A failure is
//! reported, then everything that exists is taken apart in the one unbind order
//! (`tsm_client::host::unbind`) and every donated page checked; QEMU exits with 35.

mod dma;

use core::fmt;

use attest::evidence::RecordType;
use tsm::sept::SeptEntry;
use tsm::TdExit;
use tsm_client::guest::result::{Record, Registers};
use tsm_client::guest::{tdi_state, Plan, DEMO_LAYOUT, REPORTS_BYTES, REPORT_BYTES, SNP_BYTES};
use tsm_client::host::device::{self, Assignment};
use tsm_client::host::td::{self, BuiltTd};
use tsm_client::host::td_device::{Answer, DeviceTd, Next, Request};
use tsm_client::host::unbind::{self, Holdings, Policy, Unbound};
use tsm_client::host::PumpStats;
use tsm_client::nvme::NvmeError;
use tsm_client::{vmcall, GuestError, HostError};

use super::{
    fail, pump_summary, report_failure, spdm_connect_pdev, td_params, Ms, Nvme, BAR_GPA, WORK_GPA, WORK_PAGES,
};
use crate::arch::{self, ExitCode};
use crate::config::{Mode, RunConfig};
use crate::drivers::phys::{Frames, Mmio};
use crate::drivers::serial::Uart;
use crate::drivers::tsc::Tsc;
use crate::host::evidence::BundleWriter;
use crate::host::{DoeLink, Host, HostCpu};
use crate::platform::FirmwarePlatform;
use crate::timeline::Phases;
use crate::world::host::HostWorld;
use tsm::Tsm;

/// The phases, timed as they run (firmware TSC, microseconds since PVH entry), with the world
/// switches each took.
#[derive(Debug)]
pub struct Timeline {
    tsc: Tsc,
    phases: Phases,
    open: Option<(&'static str, u64, u64)>,
}

impl Timeline {
    pub fn new(tsc: Tsc) -> Timeline {
        Timeline { tsc, phases: Phases::default(), open: None }
    }

    fn now_us(&self) -> u64 {
        self.tsc.ticks_to_us(self.tsc.now().wrapping_sub(arch::boot_tsc()))
    }

    /// Starts a phase (ending the one before) at `switches` world switches so far.
    pub fn begin(&mut self, name: &'static str, switches: u64) {
        self.end(switches);
        self.open = Some((name, self.now_us(), switches));
        defmt::info!("phase {=str}", name);
    }

    /// Ends the open phase at `switches` world switches so far; returns its duration in
    /// microseconds.
    pub fn end(&mut self, switches: u64) -> u64 {
        let Some((name, start, from)) = self.open.take() else { return 0 };
        let dur = self.now_us().saturating_sub(start);
        self.record(name, start, dur);
        let n = switches.saturating_sub(from);
        say!("phase {name}: {} ms, {n} world switches", Ms(dur));
        let mut figure = [0u8; 32];
        let mut w = seamless_drivers::console::BufWriter::new(&mut figure);
        if fmt::Write::write_fmt(&mut w, format_args!("switches_{name}")).is_ok() {
            let len = w.len();
            super::figure(core::str::from_utf8(&figure[..len]).unwrap_or("switches"), &n, "exits");
        }
        dur
    }

    /// Adds a phase measured elsewhere.
    pub fn record(&mut self, name: &'static str, start: u64, dur: u64) {
        if !self.phases.push(name, start, dur) {
            defmt::warn!("timeline full: phase {=str} not recorded", name);
        }
    }
}

pub use seamless_drivers::console::emit;

/// Why a step failed.
#[derive(Debug)]
enum Why {
    Host(HostError),
    Guest(GuestError),
    Nvme(NvmeError),
    Said(&'static str),
}

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Why::Host(e) => e.fmt(f),
            Why::Guest(e) => e.fmt(f),
            Why::Nvme(e) => e.fmt(f),
            Why::Said(s) => f.write_str(s),
        }
    }
}

impl From<&'static str> for Why {
    fn from(e: &'static str) -> Why {
        Why::Said(e)
    }
}

impl From<HostError> for Why {
    fn from(e: HostError) -> Why {
        Why::Host(e)
    }
}

impl From<NvmeError> for Why {
    fn from(e: NvmeError) -> Why {
        Why::Nvme(e)
    }
}

impl From<GuestError> for Why {
    fn from(e: GuestError) -> Why {
        Why::Guest(e)
    }
}

/// A step that failed: what it was and why.
#[derive(Debug)]
struct Failed {
    what: &'static str,
    why: Why,
}

trait StepResult<T> {
    /// Names the step whose result this is.
    fn step(self, what: &'static str) -> Result<T, Failed>;
}

impl<T, E: Into<Why>> StepResult<T> for Result<T, E> {
    fn step(self, what: &'static str) -> Result<T, Failed> {
        self.map_err(|e| Failed { what, why: e.into() })
    }
}

/// A failure of the TD's side of the protocol.
fn td_failed(why: &'static str) -> Failed {
    Failed { what: "TD", why: Why::Said(why) }
}

/// Everything the demo holds while it runs: the host agent's CPU and mailbox, the TD and the
/// request it waits in, and what exists of the assignment (which the cleanup takes apart).
struct Demo<'a, 'm> {
    cpu: HostCpu<'a>,
    doe: DoeLink<'a>,
    td: BuiltTd,
    /// The TD as its host runs it: the vCPU and its shared page.
    dtd: DeviceTd,
    /// The request the TD waits in.
    waiting: Request,
    a: Assignment,
    stats: PumpStats,
    report: [u8; REPORTS_BYTES],
    nonce: [u8; 64],
    /// The host world, which attacks the assignment with its own loads and stores.
    world: &'a mut HostWorld,
    /// #VMEXITs of the host world so far (its probes count them).
    host_exits: u64,
    /// BAR0's registers, to check the host world changed nothing.
    regs: &'m Mmio,
    frames: Frames,
    /// The host's own read of the drive through the host domain (KiB/s), before assignment.
    host_kib_s: Option<u64>,
}

impl Demo<'_, '_> {
    /// World switches so far: the host world's #VMEXITs and the TD worlds'.
    fn switches(&self) -> u64 {
        self.host_exits + self.cpu.tsm.platform().td.as_ref().map_or(0, |w| w.switches)
    }

    /// Answers the request the TD waits in with `answer` and runs it to its next request, which
    /// must be `want`.
    fn answer(&mut self, answer: Answer, want: u64) -> Result<Request, Failed> {
        let mut com1 = |b: &[u8]| Uart::com1().write_bytes(b);
        let r = self.dtd.expect(&mut self.cpu, answer, want, &mut com1).step("TD")?;
        self.waiting = r;
        Ok(r)
    }

    /// Serves the request the TD waits in and takes its next one, a RESULT of `R`.
    fn result<R: Record>(&mut self) -> Result<R, Failed> {
        let Request::Result { kind } = self.answer(Answer::Served, vmcall::RESULT)? else {
            return Err(td_failed("RESULT expected"));
        };
        self.dtd.take_result(&mut self.cpu, kind).step("TD: result")
    }

    /// The function id a request names, which must be the assignment's.
    fn assigned(&self, function: u64, of: u32) -> Result<(), Failed> {
        if function == u64::from(of) {
            return Ok(());
        }
        let request = self.waiting.number();
        Err(Failed {
            what: "TD",
            why: Why::Host(HostError::Request { request, why: "names a function the host did not assign" }),
        })
    }

    /// Takes the assignment apart in the one unbind order: strictly after a completed flow, as
    /// far as it goes after a failure (then every donated page is checked).
    fn unbind(&mut self, policy: Policy) -> Result<Unbound, HostError> {
        let (td, vcpu) = (self.td.td, [self.td.vcpu]);
        let holdings = Holdings { td: Some((&td, &vcpu)), iommu: true };
        match policy {
            Policy::Strict => unbind::teardown(&mut self.cpu, &mut self.doe, &self.a, holdings, &mut self.stats)
                .map(|()| Unbound::default()),
            Policy::Lenient => Ok(unbind::cleanup(&mut self.cpu, &mut self.doe, &self.a, holdings, &mut self.stats)),
        }
    }

    /// IDE, TDI.CREATE and LOCK while the TD waits in GET_TDI; then the TD reads the TDI, asks
    /// for the report, checks it and asks for its MMIO.
    fn lock(&mut self, function: u32, tl: &mut Timeline) -> Result<(), Failed> {
        tl.begin("tdi_lock_report", self.switches());
        device::ide_setup(&mut self.cpu, &mut self.doe, &mut self.a, &mut self.stats).step("IDE setup")?;
        say!("ide: stream {} created, keys programmed (IDE_KM) and live", self.a.stream);
        device::bind(&mut self.cpu, self.td.td.tdr, function, &mut self.a).step("TDI lock")?;
        device::lock(&mut self.cpu, &mut self.doe, super::LOCK_FLAGS, &mut self.a, &mut self.stats).step("TDI lock")?;
        say!(
            "tdi: bound to the TD and CONFIG_LOCKED (generation {}); interface report {} bytes",
            self.a.generation,
            self.a.report_len
        );
        self.dtd.give_tdi(&mut self.cpu, function);
        let Request::GetReport { function: asked } = self.answer(Answer::Served, vmcall::GET_REPORT)? else {
            return Err(td_failed("GET_REPORT expected"));
        };
        self.assigned(asked, function)?;
        self.dtd.give_report(&mut self.cpu, &self.a, asked, function).step("host: GET_REPORT")?;
        self.answer(Answer::Served, vmcall::MAP_MMIO)?;
        let lock_us = tl.end(self.switches());
        super::figure("tdi_lock_report_qemu_ms", &Ms(lock_us), "ms");
        Ok(())
    }

    /// Import and map BAR0, DMAR.ADD and START, each when the TD asks for it; the TD accepts,
    /// authorises, reads the registers through its mapping and hands them over. Returns them.
    fn start(&mut self, function: u32, bar: (u64, u64), tl: &mut Timeline) -> Result<(u64, u32), Failed> {
        let pages = bar.1 / 4096;
        let (cc, exits) = super::worlds::bar_before_import(self.world, self.cpu.tsm, &self.cpu.tsc(), bar.0)
            .step("host world: BAR0")?;
        self.host_exits += exits;
        say!("world: host world reads BAR0 CC = {cc:#x} before the import: the BAR is still the host's");
        tl.begin("map_accept_start", self.switches());
        let Request::MapMmio { function: asked, pages: wanted } = self.waiting else {
            return Err(td_failed("MAP_MMIO expected"));
        };
        self.assigned(asked, function)?;
        if wanted != pages {
            let why = HostError::Request { request: vmcall::MAP_MMIO, why: "the TD expects another size of BAR0" };
            return Err(Failed { what: "TD", why: Why::Host(why) });
        }
        device::import(&mut self.cpu, &self.a, 0, bar.0, pages).step("import and map")?;
        device::map_mmio(&mut self.cpu, &self.td.td, &mut self.a, (bar.0, pages), BAR_GPA).step("import and map")?;
        // The TD accepts every page and asks for its DMA entry.
        self.answer(Answer::Served, vmcall::ADD_DMA)?;
        say!("mmio: BAR0 {:#x} ({pages} pages) imported, mapped at GPA {BAR_GPA:#x}, accepted by the guest", bar.0);
        device::dmar_add(&mut self.cpu, &self.td.td, &mut self.a).step("DMAR.ADD")?;
        // It accepts the entry, authorises START and asks for it.
        self.answer(Answer::Served, vmcall::START)?;
        say!("dma: entry added by the host, accepted by the guest; the guest authorised START");
        device::start(&mut self.cpu, &mut self.doe, &self.a, &mut self.stats).step("TDI.START")?;
        let regs: Registers = self.result()?;
        let start_us = tl.end(self.switches());
        say!("tdi: RUN");
        super::figure("map_accept_start_qemu_ms", &Ms(start_us), "ms");
        Ok((regs.cap.get(), regs.vs.get()))
    }

    /// Mode `revoke`: the exporter revokes the BAR under the running TDI while the TD's READs
    /// are outstanding (`dma::revoke_under_dma`); then the TD, which read its TDI's state, loads
    /// BAR0 once more, and the TSM must stop that load: an EPT-violation exit, never the
    /// register.
    fn revoke(&mut self) -> Result<(), Failed> {
        let state = self.revoke_under_dma()?;
        let mut com1 = |b: &[u8]| Uart::com1().write_bytes(b);
        let next = self.dtd.next(&mut self.cpu, Answer::Served, &mut com1).step("TD")?;
        let Next::Violation(TdExit::EptViolation { gpa, entry, .. }) = next else {
            return Err(td_failed("the TD's load of the revoked BAR0 did not exit"));
        };
        let found = SeptEntry::decode(entry).map(SeptEntry::state);
        say!(
            "guest: TDI.RD says {}; its load of BAR0 exited to the host as an EPT violation at GPA {:#x} (S-EPT entry {found:?}): the revoked BAR never answered it",
            if state == tdi_state::ERROR { "ERROR" } else { "not ERROR" },
            gpa.raw()
        );
        if gpa.raw() != BAR_GPA || state != tdi_state::ERROR {
            return Err(Failed { what: "guest: after the revoke", why: Why::Said("the TD did not see the revoke") });
        }
        Err(Failed { what: "TDI", why: Why::Said("BAR0 revoked while RUN; the TDI is in ERROR") })
    }

    /// The TD's reports over the verifier's nonce, and the evidence; all sent on COM3.
    fn attest(&mut self, tl: &mut Timeline) -> Result<(), Failed> {
        tl.begin("attestation", self.switches());
        // The TD asks for the challenge, attests and hands the reports over.
        self.answer(Answer::Served, vmcall::GET_NONCE)?;
        self.dtd.put(&mut self.cpu, &self.nonce);
        let Request::ReportReady { len } = self.answer(Answer::Served, vmcall::REPORT_READY)? else {
            return Err(td_failed("REPORT_READY expected"));
        };
        let n = self.dtd.take_reports(&mut self.cpu, len, &mut self.report).step("TD: reports")?;
        if n != REPORTS_BYTES {
            return Err(Failed { what: "TD", why: Why::Host(HostError::SharedLength(len)) });
        }
        let mut com1 = |b: &[u8]| Uart::com1().write_bytes(b);
        if self.dtd.next(&mut self.cpu, Answer::Served, &mut com1).step("TD")? != Next::Halted {
            return Err(td_failed("the TD did not halt after its report"));
        }
        let mut bundle = [0u8; 16 * 1024];
        let ev = self.cpu.tsm.tdi_evidence(tsm::addr::Pfn::new(self.a.tdi >> 12).unwrap_or(tsm::addr::Pfn::ZERO));
        let Some(ev) = ev else { fail("evidence", &"the TSM has no evidence for the TDI") };
        let mut w = BundleWriter::new(&mut bundle).unwrap_or_else(|e| fail("evidence", &format_args!("{e:?}")));
        for (kind, data) in [
            (RecordType::CertChain, ev.chain),
            (RecordType::Vca, ev.vca),
            (RecordType::Measurements, ev.measurements),
            (RecordType::InterfaceReport, ev.report),
        ] {
            w.push(kind, 0, data).unwrap_or_else(|e| fail("evidence", &format_args!("{e:?}")));
        }
        let bundle_len = w.bytes().len();
        emit("report.bin", &self.report[..REPORT_BYTES]);
        emit("report-snp.bin", &self.report[REPORT_BYTES..]);
        emit("evidence.bin", &bundle[..bundle_len]);
        let attest_us = tl.end(self.switches());
        say!(
            "attestation: report {REPORT_BYTES} bytes and its SNP-format export {SNP_BYTES} bytes over the verifier's nonce, evidence {bundle_len} bytes"
        );
        super::figure("attestation_qemu_ms", &Ms(attest_us), "ms");
        Ok(())
    }
}

/// The flow; never returns. `boot_exits`: the host world's #VMEXITs before this mode began.
#[allow(clippy::too_many_arguments)]
pub fn run(
    config: &RunConfig,
    tsc: &Tsc,
    tsm: &mut Tsm<FirmwarePlatform>,
    (host, world, boot_exits): (&mut Host, &mut HostWorld, u64),
    nvme: Nvme,
    image: &[u8],
    ready_us: u64,
) -> ! {
    let Nvme { bdf, bar0, regs, mut mailbox } = nvme;
    let mut tl = Timeline::new(*tsc);
    let function = u32::from(bdf.rid());
    let bar = (bar0.base, bar0.size);
    let frames = host.frames();
    let mut cpu = HostCpu::new(tsm, host, *tsc);
    let switches = |cpu: &HostCpu<'_>| boot_exits + cpu.tsm.platform().td.as_ref().map_or(0, |w| w.switches);

    // The host's own look at the controller, before anything is assigned.
    let host_cap = u64::from(regs.read_u32(4)) << 32 | u64::from(regs.read_u32(0));
    let host_vs = regs.read_u32(8);
    say!("host: NVMe CAP {host_cap:#018x} VS {host_vs:#010x} (read by the host before assignment)");

    tl.begin("td_build", switches(&cpu));
    // The TSM takes the remapping unit before the TD has a private page: from here on no device
    // DMA lands anywhere without a DMAR entry the guest accepted.
    device::iommu_setup(&mut cpu).unwrap_or_else(|e| fail("IOMMU.SETUP", &e));
    let host_kib_s = (config.mode == Mode::Assign)
        .then(|| dma::host_read(&mut cpu, &regs, function).unwrap_or_else(|e| fail("host NVMe read", &e)));
    let plan = if config.mode == Mode::Revoke { Plan::Revoke } else { Plan::Assign };
    let params = td_params(plan);
    let built = td::build(&mut cpu, image, &params, (WORK_GPA, WORK_PAGES)).unwrap_or_else(|e| fail("TD build", &e));
    let mut dtd = DeviceTd::new(&mut cpu, &built.td, built.vcpu, params.gpaw, &DEMO_LAYOUT)
        .unwrap_or_else(|e| fail("shared page", &e));
    // The TD runs in its world: TDG.VP.INFO, its pages accepted, its plan read from its own
    // TDREPORT, then it asks for a TDI.
    let mut com1 = |b: &[u8]| Uart::com1().write_bytes(b);
    let waiting = dtd.expect(&mut cpu, Answer::Nothing, vmcall::GET_TDI, &mut com1).unwrap_or_else(|e| fail("TD", &e));
    say!(
        "td: TDR {:#x}; guest image ({} bytes, from fw_cfg): {} pages added, {} measured (MRTD: what attest measure computes); plan {plan:?} in MRCONFIGID; {} pages AUGed and accepted by the guest binary in its TD world, which asks for a TDI",
        built.td.tdr,
        image.len(),
        built.added,
        built.measured,
        WORK_PAGES
    );
    tl.end(switches(&cpu));

    let doe = DoeLink::new(&mut mailbox, *tsc);
    let mut demo = Demo {
        cpu,
        doe,
        td: built,
        dtd,
        waiting,
        a: Assignment::default(),
        stats: PumpStats::default(),
        report: [0; REPORTS_BYTES],
        nonce: config.nonce,
        world,
        host_exits: boot_exits,
        regs: &regs,
        frames,
        host_kib_s,
    };
    let result = assign(&mut demo, config, bdf, bar, (host_cap, host_vs), &mut tl);
    if let Err(f) = result {
        report_failure(f.what, &f.why);
        match demo.unbind(Policy::Lenient) {
            Ok(c) => say!("cleanup after the failure: {c}"),
            Err(e) => say!("cleanup after the failure: {e}"),
        }
        arch::exit_qemu(ExitCode::Failure)
    }
    super::figure("world_switches_demo", &demo.switches(), "exits");
    let mut json = [0u8; 2048];
    match tl.phases.json(&mut json, ready_us, "completed") {
        Ok(n) => emit("timeline.json", &json[..n]),
        Err(_) => say!("timeline: does not fit its buffer; not sent"),
    }
    say!("seamless firmware: assign done");
    arch::exit_qemu(ExitCode::Success)
}

/// The assignment after the TD is built: connect, lock, start, (revoke,) attest, teardown.
fn assign(
    demo: &mut Demo<'_, '_>,
    config: &RunConfig,
    bdf: crate::drivers::pci::Bdf,
    bar: (u64, u64),
    host_read: (u64, u32),
    tl: &mut Timeline,
) -> Result<(), Failed> {
    let function = u32::from(bdf.rid());
    let t = tl.now_us();
    let before = demo.switches();
    demo.a = device::pdev_create(&mut demo.cpu, function).step("PDEV")?;
    let connect_us = spdm_connect_pdev(&mut demo.cpu, &mut demo.doe, bdf, &demo.a).step("SPDM.CONNECT")?;
    tl.record("spdm_connect", t, connect_us);
    say!("phase spdm_connect: {} ms, {} world switches", Ms(connect_us), demo.switches() - before);
    let after_connect = (demo.doe.ticks, demo.cpu.tsm_ticks);

    demo.lock(function, tl)?;
    let (cap, vs) = demo.start(function, bar, tl)?;
    say!(
        "guest: NVMe CAP {cap:#018x} VS {vs:#010x} through its MMIO_MAPPED leaves: {}",
        if (cap, vs) == host_read { "equal to the host's read" } else { "DIFFERENT from the host's read" }
    );
    if (cap, vs) != host_read {
        fail("guest: device registers", &"the private mapping shows other registers than BAR0");
    }
    if config.mode == Mode::Assign {
        demo.read_disk(function, tl)?;
    }
    let tdr = demo.td.td.tdr;
    let tsc = demo.cpu.tsc();
    let (objects, logged, exits) =
        super::worlds::attacks(demo.world, demo.cpu.tsm, &tsc, demo.frames, (tdr, bar.0, demo.regs))
            .step("host world attacks")?;
    demo.host_exits += exits;
    say!(
        "world: the host world attacked {objects} protected objects: {} accesses refused in hardware, {logged} fault-log entries read back, the host carried on",
        2 * objects
    );
    if config.mode == Mode::Revoke {
        return demo.revoke();
    }
    demo.attest(tl)?;

    tl.begin("teardown", demo.switches());
    demo.unbind(Policy::Strict).step("teardown")?;
    let pages = td::check_all_free(&mut demo.cpu).step("teardown")?;
    tl.end(demo.switches());
    let ticks = (demo.doe.ticks - after_connect.0, demo.cpu.tsm_ticks - after_connect.1);
    pump_summary(&demo.cpu.tsc(), &demo.stats, ticks);
    say!("teardown: TDI stopped and removed, stream and session closed, TD destroyed; all {pages} donated pages free again");
    Ok(())
}
