//! Mode `assign` (and `revoke`): the whole device assignment, phase by phase, with the host
//! agent's own timings, in the host world. The host's calls are `tsm_client::host`'s over
//! SEAMCALL; the guest is the TD binary, running `tsm_client::guest` in its TD world. They
//! take turns exactly where a VMM and a TD do: the host enters the vCPU, the TD runs until it
//! needs the host (a request of `tsm_client::vmcall`), the host does its part and answers, and
//! enters again (`tsm_client::host::td_device`). What the TD found comes back as typed results
//! (`assign/dma.rs` checks the DMA ones against what the host can see itself). A failure is
//! reported, then everything that exists is taken apart in the one unbind order
//! (`tsm_client::host::unbind`) and every donated page checked; QEMU exits with 35.

mod dma;

use core::fmt;

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

use seamless_drivers::config::{Mode, RunConfig};
use seamless_drivers::console::{emit, figure, Ms};
use seamless_drivers::say;
use seamless_drivers::serial::Uart;
use seamless_drivers::tsc::Tsc;
use seamless_host::device::{pump_summary, spdm_connect_pdev, Nvme};
use seamless_host::mem::DoeLink;
use seamless_host::timeline::Phases;
use seamless_host::{td_params, Cpu, BAR_GPA, LOCK_FLAGS, WORK_GPA, WORK_PAGES};

use crate::run::{fail, Agent};
use crate::{arch, world_probe};

/// The phases, timed as they run (TSC, microseconds since PVH entry). Each is marked for the
/// TSM too, which counts its world switches (the TD worlds' included, which the host never
/// sees) and says them at its end.
#[derive(Debug)]
pub struct Timeline {
    tsc: Tsc,
    boot_tsc: u64,
    phases: Phases,
    open: Option<(&'static str, u64)>,
}

impl Timeline {
    /// A timeline whose origin is the TSC at PVH entry, `boot_tsc`.
    pub fn new(tsc: Tsc, boot_tsc: u64) -> Timeline {
        Timeline { tsc, boot_tsc, phases: Phases::default(), open: None }
    }

    fn now_us(&self) -> u64 {
        self.tsc.ticks_to_us(self.tsc.now().wrapping_sub(self.boot_tsc))
    }

    /// Starts a phase (ending the one before).
    pub fn begin(&mut self, name: &'static str) {
        self.end();
        self.open = Some((name, self.now_us()));
        arch::phase_mark(Some(name));
    }

    /// Ends the open phase; returns its duration in microseconds.
    pub fn end(&mut self) -> u64 {
        let Some((name, start)) = self.open.take() else { return 0 };
        arch::phase_mark(None);
        let dur = self.now_us().saturating_sub(start);
        self.record(name, start, dur);
        say!("phase {name}: {} ms", Ms(dur));
        dur
    }

    /// Adds a phase measured elsewhere.
    pub fn record(&mut self, name: &'static str, start: u64, dur: u64) {
        if !self.phases.push(name, start, dur) {
            say!("timeline full: phase {name} not recorded");
        }
    }
}

/// Why a step failed.
#[derive(Debug)]
enum Why {
    Host(HostError),
    Guest(GuestError),
    Nvme(NvmeError),
    Evidence(seamless_host::evidence::EvidenceError),
    Agent(seamless_host::Why),
    Said(&'static str),
}

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Why::Host(e) => e.fmt(f),
            Why::Guest(e) => e.fmt(f),
            Why::Nvme(e) => e.fmt(f),
            Why::Evidence(e) => e.fmt(f),
            Why::Agent(e) => e.fmt(f),
            Why::Said(s) => f.write_str(s),
        }
    }
}

impl From<&'static str> for Why {
    fn from(e: &'static str) -> Why {
        Why::Said(e)
    }
}

impl From<seamless_host::Failed> for Why {
    fn from(f: seamless_host::Failed) -> Why {
        Why::Agent(f.why)
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
struct Demo<'a> {
    cpu: &'a mut Agent,
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
    /// The host's own read of the drive through the host domain (KiB/s), before assignment.
    host_kib_s: Option<u64>,
}

impl Demo<'_> {
    /// Answers the request the TD waits in with `answer` and runs it to its next request, which
    /// must be `want`.
    fn answer(&mut self, answer: Answer, want: u64) -> Result<Request, Failed> {
        let mut com1 = |b: &[u8]| Uart::com1().write_bytes(b);
        let r = self.dtd.expect(self.cpu, answer, want, &mut com1).step("TD")?;
        self.waiting = r;
        Ok(r)
    }

    /// Serves the request the TD waits in and takes its next one, a RESULT of `R`.
    fn result<R: Record>(&mut self) -> Result<R, Failed> {
        let Request::Result { kind } = self.answer(Answer::Served, vmcall::RESULT)? else {
            return Err(td_failed("RESULT expected"));
        };
        self.dtd.take_result(self.cpu, kind).step("TD: result")
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
            Policy::Strict => unbind::teardown(self.cpu, &mut self.doe, &self.a, holdings, &mut self.stats)
                .map(|()| Unbound::default()),
            Policy::Lenient => Ok(unbind::cleanup(self.cpu, &mut self.doe, &self.a, holdings, &mut self.stats)),
        }
    }

    /// IDE, TDI.CREATE and LOCK while the TD waits in GET_TDI; then the TD reads the TDI, asks
    /// for the report, checks it and asks for its MMIO.
    fn lock(&mut self, function: u32, tl: &mut Timeline) -> Result<(), Failed> {
        tl.begin("tdi_lock_report");
        device::ide_setup(self.cpu, &mut self.doe, &mut self.a, &mut self.stats).step("IDE setup")?;
        say!("ide: stream {} created, keys programmed (IDE_KM) and live", self.a.stream);
        device::bind(self.cpu, self.td.td.tdr, function, &mut self.a).step("TDI lock")?;
        device::lock(self.cpu, &mut self.doe, LOCK_FLAGS, &mut self.a, &mut self.stats).step("TDI lock")?;
        say!(
            "tdi: bound to the TD and CONFIG_LOCKED (generation {}); interface report {} bytes",
            self.a.generation,
            self.a.report_len
        );
        self.dtd.give_tdi(self.cpu, function);
        let Request::GetReport { function: asked } = self.answer(Answer::Served, vmcall::GET_REPORT)? else {
            return Err(td_failed("GET_REPORT expected"));
        };
        self.assigned(asked, function)?;
        self.dtd.give_report(self.cpu, &self.a, asked, function).step("host: GET_REPORT")?;
        self.answer(Answer::Served, vmcall::MAP_MMIO)?;
        let lock_us = tl.end();
        figure("tdi_lock_report_qemu_ms", &Ms(lock_us), "ms");
        Ok(())
    }

    /// Import and map BAR0, DMAR.ADD and START, each when the TD asks for it; the TD accepts,
    /// authorises, reads the registers through its mapping and hands them over. Returns them.
    fn start(&mut self, function: u32, bar: (u64, u64), tl: &mut Timeline) -> Result<(u64, u32), Failed> {
        let pages = bar.1 / 4096;
        let cc = world_probe::bar_before_import(bar.0).step("host world: BAR0")?;
        say!("world: host world reads BAR0 CC = {cc:#x} before the import: the BAR is still the host's");
        tl.begin("map_accept_start");
        let Request::MapMmio { function: asked, pages: wanted } = self.waiting else {
            return Err(td_failed("MAP_MMIO expected"));
        };
        self.assigned(asked, function)?;
        if wanted != pages {
            let why = HostError::Request { request: vmcall::MAP_MMIO, why: "the TD expects another size of BAR0" };
            return Err(Failed { what: "TD", why: Why::Host(why) });
        }
        device::import(self.cpu, &self.a, 0, bar.0, pages).step("import and map")?;
        device::map_mmio(self.cpu, &self.td.td, &mut self.a, (bar.0, pages), BAR_GPA).step("import and map")?;
        // The TD accepts every page and asks for its DMA entry.
        self.answer(Answer::Served, vmcall::ADD_DMA)?;
        say!("mmio: BAR0 {:#x} ({pages} pages) imported, mapped at GPA {BAR_GPA:#x}, accepted by the guest", bar.0);
        device::dmar_add(self.cpu, &self.td.td, &mut self.a).step("DMAR.ADD")?;
        // It accepts the entry, authorises START and asks for it.
        self.answer(Answer::Served, vmcall::START)?;
        say!("dma: entry added by the host, accepted by the guest; the guest authorised START");
        device::start(self.cpu, &mut self.doe, &self.a, &mut self.stats).step("TDI.START")?;
        let regs: Registers = self.result()?;
        let start_us = tl.end();
        say!("tdi: RUN");
        figure("map_accept_start_qemu_ms", &Ms(start_us), "ms");
        Ok((regs.cap.get(), regs.vs.get()))
    }

    /// Modes `revoke` and `stop`: the exporter revokes the BAR (or, `stop`, the host stops the
    /// TDI) under the running TDI while the TD's READs are outstanding (`dma::revoke_under_dma`);
    /// then the TD, which read its TDI's state, loads BAR0 once more, and the TSM must stop that
    /// load: an EPT-violation exit, never the register.
    fn revoke(&mut self, stop: bool) -> Result<(), Failed> {
        let state = self.revoke_under_dma(stop)?;
        let (want, name) =
            if stop { (tdi_state::CONFIG_UNLOCKED, "CONFIG_UNLOCKED") } else { (tdi_state::ERROR, "ERROR") };
        let mut com1 = |b: &[u8]| Uart::com1().write_bytes(b);
        let next = self.dtd.next(self.cpu, Answer::Served, &mut com1).step("TD")?;
        let Next::Violation(TdExit::EptViolation { gpa, entry, .. }) = next else {
            return Err(td_failed("the TD's load of the revoked BAR0 did not exit"));
        };
        let found = SeptEntry::decode(entry).map(SeptEntry::state);
        say!(
            "guest: TDI.RD says {}{name}; its load of BAR0 exited to the host as an EPT violation at GPA {:#x} (S-EPT entry {found:?}): the {} BAR never answered it",
            if state == want { "" } else { "not " },
            gpa.raw(),
            if stop { "stopped TDI's" } else { "revoked" }
        );
        if gpa.raw() != BAR_GPA || state != want {
            return Err(Failed { what: "guest: after the revoke", why: Why::Said("the TD did not see the revoke") });
        }
        if stop {
            return Err(Failed { what: "TDI", why: Why::Said("stopped while RUN; the TDI is CONFIG_UNLOCKED") });
        }
        Err(Failed { what: "TDI", why: Why::Said("BAR0 revoked while RUN; the TDI is in ERROR") })
    }

    /// The TD's reports over the verifier's nonce, and the evidence; all sent on COM3.
    fn attest(&mut self, tl: &mut Timeline) -> Result<(), Failed> {
        tl.begin("attestation");
        // The TD asks for the challenge, attests and hands the reports over.
        self.answer(Answer::Served, vmcall::GET_NONCE)?;
        self.dtd.put(self.cpu, &self.nonce);
        let Request::ReportReady { len } = self.answer(Answer::Served, vmcall::REPORT_READY)? else {
            return Err(td_failed("REPORT_READY expected"));
        };
        let n = self.dtd.take_reports(self.cpu, len, &mut self.report).step("TD: reports")?;
        if n != REPORTS_BYTES {
            return Err(Failed { what: "TD", why: Why::Host(HostError::SharedLength(len)) });
        }
        let mut com1 = |b: &[u8]| Uart::com1().write_bytes(b);
        if self.dtd.next(self.cpu, Answer::Served, &mut com1).step("TD")? != Next::Halted {
            return Err(td_failed("the TD did not halt after its report"));
        }
        // The device's evidence, from the TSM (SEAMLESS.TDI.EVIDENCE.RD), for the verifier.
        let mut bundle = [0u8; 16 * 1024];
        let bundle_len = seamless_host::evidence::tdi_bundle(self.cpu, self.a.tdi, &mut bundle)
            .map_err(|e| Failed { what: "evidence", why: Why::Evidence(e) })?;
        emit("report.bin", &self.report[..REPORT_BYTES]);
        emit("report-snp.bin", &self.report[REPORT_BYTES..]);
        emit("evidence.bin", &bundle[..bundle_len]);
        let attest_us = tl.end();
        say!(
            "attestation: report {REPORT_BYTES} bytes and its SNP-format export {SNP_BYTES} bytes over the verifier's nonce, evidence {bundle_len} bytes"
        );
        figure("attestation_qemu_ms", &Ms(attest_us), "ms");
        Ok(())
    }
}

/// The flow; never returns. `ready_us`: when the TSM was ready (µs since PVH entry), for the
/// timeline.
pub fn run(cpu: &mut Agent, config: &RunConfig, boot_tsc: u64, nvme: Nvme, image: &[u8], ready_us: u64) -> ! {
    let Nvme { bdf, bar0, regs, mut mailbox } = nvme;
    let tsc = cpu.tsc();
    let mut tl = Timeline::new(tsc, boot_tsc);
    let function = u32::from(bdf.rid());
    let bar = (bar0.base, bar0.size);

    // The host's own look at the controller, before anything is assigned.
    let host_cap = u64::from(regs.read_u32(4)) << 32 | u64::from(regs.read_u32(0));
    let host_vs = regs.read_u32(8);
    say!("host: NVMe CAP {host_cap:#018x} VS {host_vs:#010x} (read by the host before assignment)");

    tl.begin("td_build");
    // The TSM takes the remapping unit over from its blocking table before the TD has a private
    // page: from here on no device DMA lands anywhere without a DMAR entry the guest accepted
    // (or the host domain, for the functions the host keeps).
    dma::before_setup(cpu, &regs).unwrap_or_else(|e| fail("DMA before IOMMU.SETUP", &e));
    device::iommu_setup(cpu).unwrap_or_else(|e| fail("IOMMU.SETUP", &e));
    let host_kib_s = (config.mode == Mode::Assign)
        .then(|| dma::host_read(cpu, &regs, function).unwrap_or_else(|e| fail("host NVMe read", &e)));
    let plan = if matches!(config.mode, Mode::Revoke | Mode::Stop) { Plan::Revoke } else { Plan::Assign };
    let params = td_params(plan);
    let built = td::build(cpu, image, &params, (WORK_GPA, WORK_PAGES)).unwrap_or_else(|e| fail("TD build", &e));
    let mut dtd = DeviceTd::new(cpu, &built.td, built.vcpu, params.gpaw, &DEMO_LAYOUT)
        .unwrap_or_else(|e| fail("shared page", &e));
    // The TD runs in its world: TDG.VP.INFO, its pages accepted, its plan read from its own
    // TDREPORT, then it asks for a TDI.
    let mut com1 = |b: &[u8]| Uart::com1().write_bytes(b);
    let waiting = dtd.expect(cpu, Answer::Nothing, vmcall::GET_TDI, &mut com1).unwrap_or_else(|e| fail("TD", &e));
    say!(
        "td: TDR {:#x}; guest image ({} bytes, from fw_cfg): {} pages added, {} measured (MRTD: what attest measure computes); plan {plan:?} in MRCONFIGID; {} pages AUGed and accepted by the guest binary in its TD world, which asks for a TDI",
        built.td.tdr,
        image.len(),
        built.added,
        built.measured,
        WORK_PAGES
    );
    tl.end();

    let doe = DoeLink::new(&mut mailbox, tsc);
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
        host_kib_s,
    };
    let result = assign(&mut demo, config, bdf, bar, (host_cap, host_vs), &mut tl);
    if let Err(f) = result {
        say!("seamless host: error: {}: {}", f.what, f.why);
        let cleanup = demo.unbind(Policy::Lenient);
        match &cleanup {
            Ok(c) => say!("cleanup after the failure: {c}"),
            Err(e) => say!("cleanup after the failure: {e}"),
        }
        if let (Why::Host(e), Ok(c)) = (&f.why, &cleanup) {
            crate::interop::report_refused(e, &demo.a, c);
        }
        arch::exit(arch::ExitCode::Failure)
    }
    let mut json = [0u8; 2048];
    match tl.phases.json(&mut json, ready_us, "completed") {
        Ok(n) => emit("timeline.json", &json[..n]),
        Err(_) => say!("timeline: does not fit its buffer; not sent"),
    }
    say!("seamless host: assign done");
    arch::exit(arch::ExitCode::Success)
}

/// The assignment after the TD is built: connect, lock, start, (revoke,) attest, teardown.
fn assign(
    demo: &mut Demo<'_>,
    config: &RunConfig,
    bdf: seamless_drivers::pci::Bdf,
    bar: (u64, u64),
    host_read: (u64, u32),
    tl: &mut Timeline,
) -> Result<(), Failed> {
    let function = u32::from(bdf.rid());
    let t = tl.now_us();
    arch::phase_mark(Some("spdm_connect"));
    demo.a = device::pdev_create(demo.cpu, function).step("PDEV")?;
    let connect_us = spdm_connect_pdev(demo.cpu, &mut demo.doe, bdf, &mut demo.a).step("SPDM.CONNECT")?;
    arch::phase_mark(None);
    tl.record("spdm_connect", t, connect_us);
    say!("phase spdm_connect: {} ms", Ms(connect_us));
    let after_connect = (demo.doe.ticks, demo.cpu.tsm_ticks());

    demo.lock(function, tl)?;
    let (cap, vs) = demo.start(function, bar, tl)?;
    say!(
        "guest: NVMe CAP {cap:#018x} VS {vs:#010x} through its MMIO_MAPPED leaves: {}",
        if (cap, vs) == host_read { "equal to the host's read" } else { "DIFFERENT from the host's read" }
    );
    if (cap, vs) != host_read {
        return Err(Failed {
            what: "guest: device registers",
            why: Why::Said("the private mapping shows other registers than BAR0"),
        });
    }
    if config.mode == Mode::Assign {
        demo.read_disk(function, tl)?;
    }
    let tdr = demo.td.td.tdr;
    let (objects, logged) = world_probe::attack_assignment(demo.cpu, tdr, bar.0).step("host world attacks")?;
    say!(
        "world: the host world attacked {objects} protected objects: {} accesses refused in hardware, {logged} fault-log entries read back, the host carried on",
        2 * objects
    );
    if matches!(config.mode, Mode::Revoke | Mode::Stop) {
        return demo.revoke(config.mode == Mode::Stop);
    }
    demo.attest(tl)?;

    tl.begin("teardown");
    demo.unbind(Policy::Strict).step("teardown")?;
    let pages = td::check_all_free(demo.cpu).step("teardown")?;
    tl.end();
    let ticks = (demo.doe.ticks - after_connect.0, demo.cpu.tsm_ticks() - after_connect.1);
    pump_summary(&demo.cpu.tsc(), &demo.stats, ticks);
    say!("teardown: TDI stopped and removed, stream and session closed, TD destroyed; all {pages} donated pages free again");
    Ok(())
}
