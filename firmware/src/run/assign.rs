//! Mode `assign`: the whole device assignment, phase by phase, with the firmware's own timings.
//! The host's calls are `tsm_client::host`'s and the guest's `tsm_client::guest`'s, over the
//! firmware's transports; they take turns exactly where a VMM and a TD would: the host enters
//! the vCPU, the guest runs until it needs the host (a VMCALL), the host serves the request and
//! enters again. A failure is reported, then everything that exists is taken apart in the one
//! unbind order (`tsm_client::host::unbind`) and every donated page checked; QEMU exits with 35.

use core::fmt;

use sha2::{Digest, Sha384};

use attest::evidence::RecordType;
use tsm_client::guest::{tdi_state, Step};
use tsm_client::host::device::{self, Assignment, Vmcalls};
use tsm_client::host::td::{self, BuiltTd};
use tsm_client::host::unbind::{self, Holdings, Policy, Unbound};
use tsm_client::host::{scratch, PumpStats};
use tsm_client::{GuestError, HostError};

use super::{
    fail, pump_summary, report_failure, spdm_connect_pdev, td_params, Ms, Nvme, BAR_GPA, WORK_GPA, WORK_PAGES,
};
use crate::arch::{self, ExitCode};
use crate::config::{Mode, RunConfig};
use crate::drivers::phys::{Frames, Mmio};
use crate::drivers::serial::Uart;
use crate::drivers::tsc::Tsc;
use crate::guest::{self, Guest, GuestLayout, GuestMemory, TdVcpu};
use crate::host::evidence::BundleWriter;
use crate::host::{DoeLink, Host, HostCpu};
use crate::platform::FirmwarePlatform;
use crate::timeline::Phases;
use crate::world::host::HostWorld;
use tsm::Tsm;

/// The phases, timed as they run (firmware TSC, microseconds since PVH entry).
#[derive(Debug)]
pub struct Timeline {
    tsc: Tsc,
    phases: Phases,
    open: Option<(&'static str, u64)>,
}

impl Timeline {
    pub fn new(tsc: Tsc) -> Timeline {
        Timeline { tsc, phases: Phases::default(), open: None }
    }

    fn now_us(&self) -> u64 {
        self.tsc.ticks_to_us(self.tsc.now().wrapping_sub(arch::boot_tsc()))
    }

    /// Starts a phase (ending the one before).
    pub fn begin(&mut self, name: &'static str) {
        self.end();
        self.open = Some((name, self.now_us()));
        defmt::info!("phase {=str}", name);
    }

    /// Ends the open phase; returns its duration in microseconds.
    pub fn end(&mut self) -> u64 {
        let Some((name, start)) = self.open.take() else { return 0 };
        let dur = self.now_us().saturating_sub(start);
        self.record(name, start, dur);
        say!("phase {name}: {} ms", Ms(dur));
        dur
    }

    /// Adds a phase measured elsewhere.
    pub fn record(&mut self, name: &'static str, start: u64, dur: u64) {
        if !self.phases.push(name, start, dur) {
            defmt::warn!("timeline full: phase {=str} not recorded", name);
        }
    }
}

/// What the guest saw after a revoke, when it did not see the revoke.
#[derive(Debug)]
enum RevokeUnseen {
    /// TDG.TDI.RD reported this state, not ERROR.
    State(u64),
    /// The accessor still read BAR0 (this value).
    Read(u32),
}

impl core::fmt::Display for RevokeUnseen {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            RevokeUnseen::State(s) => write!(f, "TDG.TDI.RD says state {s}, not ERROR, after the revoke"),
            RevokeUnseen::Read(v) => write!(f, "the accessor still read BAR0 ({v:#x}) after the revoke"),
        }
    }
}

pub use seamless_drivers::console::emit;

/// Printable ASCII of an NVMe identify string, trailing spaces dropped.
struct Ascii<'a>(&'a [u8]);

impl core::fmt::Display for Ascii<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let end = self.0.iter().rposition(|&c| c != b' ' && c != 0).map_or(0, |i| i + 1);
        for &c in &self.0[..end] {
            let c = if c.is_ascii_graphic() || c == b' ' { c as char } else { '.' };
            write!(f, "{c}")?;
        }
        Ok(())
    }
}

fn hex48(d: &[u8; 48]) -> impl core::fmt::Display + '_ {
    struct H<'a>(&'a [u8]);
    impl core::fmt::Display for H<'_> {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            for b in &self.0[..8] {
                write!(f, "{b:02x}")?;
            }
            f.write_str("...")
        }
    }
    H(d)
}

/// Why a step failed.
#[derive(Debug)]
enum Why {
    Host(HostError),
    Guest(GuestError),
    Revoke(RevokeUnseen),
    Nvme(guest::nvme::NvmeError),
    Said(&'static str),
}

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Why::Host(e) => e.fmt(f),
            Why::Guest(e) => e.fmt(f),
            Why::Revoke(e) => e.fmt(f),
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

impl From<guest::nvme::NvmeError> for Why {
    fn from(e: guest::nvme::NvmeError) -> Why {
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

/// Everything the demo holds while it runs: the host agent's CPU and mailbox, the TD, the guest
/// and what exists of the assignment (which the cleanup takes apart).
struct Demo<'a, 'm> {
    cpu: HostCpu<'a>,
    doe: DoeLink<'a>,
    td: BuiltTd,
    mem: &'m GuestMemory<'m>,
    shared: u64,
    guest: Guest,
    a: Assignment,
    stats: PumpStats,
    report: [u8; guest::REPORTS_BYTES],
    nonce: [u8; 64],
    /// The host world, which attacks the assignment with its own loads and stores.
    world: &'a mut HostWorld,
    /// BAR0's registers, to check the host world changed nothing.
    regs: &'m Mmio,
    frames: Frames,
    /// The host's own read of the drive through the host domain (KiB/s), before assignment.
    host_kib_s: Option<u64>,
    /// The NVMe function and the fault count before the guest's stray READs, for the guest's
    /// own look at the fault log.
    strays: Option<(u32, u64)>,
}

impl<'m> Demo<'_, 'm> {
    /// Runs the guest step `f` on the vCPU.
    fn guest<T>(&mut self, f: impl FnOnce(&mut Guest, &mut TdVcpu<'_, 'm>) -> T) -> T {
        let mut guest = self.guest;
        let mut vcpu = TdVcpu::new(self.cpu.tsm, self.td.vcpu, self.mem, self.shared);
        let r = f(&mut guest, &mut vcpu);
        self.guest = guest;
        r
    }

    /// The host serves the VMCALL the guest stopped on, and enters the vCPU again.
    fn serve(&mut self, step: Step) -> Result<(), Failed> {
        let Step::Vmcall(args) = step else { return Ok(()) };
        let mut com1 = |b: &[u8]| Uart::com1().write_bytes(b);
        let mut v = Vmcalls { shared: self.shared, nonce: &self.nonce, reports: &mut self.report, console: &mut com1 };
        device::serve_vmcall(&mut self.cpu, self.td.vcpu, args, &self.a, &mut v).step("host: VMCALL")
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

    /// IDE, TDI.CREATE and LOCK; the guest reads the TDI and checks the host's report.
    fn lock(&mut self, function: u32, tl: &mut Timeline) -> Result<(), Failed> {
        tl.begin("tdi_lock_report");
        device::ide_setup(&mut self.cpu, &mut self.doe, &mut self.a, &mut self.stats).step("IDE setup")?;
        say!("ide: stream {} created, keys programmed (IDE_KM) and live", self.a.stream);
        device::bind(&mut self.cpu, self.td.td.tdr, function, &mut self.a).step("TDI lock")?;
        device::lock(&mut self.cpu, &mut self.doe, super::LOCK_FLAGS, &mut self.a, &mut self.stats).step("TDI lock")?;
        say!(
            "tdi: bound to the TD and CONFIG_LOCKED (generation {}); interface report {} bytes",
            self.a.generation,
            self.a.report_len
        );
        let step = self.guest(|g, v| g.read_tdi(v)).step("guest: TDI read")?;
        self.serve(step)?;
        self.guest(|g, v| g.check_report(v)).step("guest: report check")?;
        let f = self.guest.findings;
        say!(
            "guest: TDI CONFIG_LOCKED, generation {}; the host's report ({} bytes) matches the TSM's digest {}",
            f.generation,
            f.report_len,
            hex48(&f.report_digest)
        );
        let lock_us = tl.end();
        super::figure("tdi_lock_report_qemu_ms", &Ms(lock_us), "ms");
        Ok(())
    }

    /// Import and map BAR0, the guest's accepts, DMAR.ADD, the authorisation and START; the guest
    /// reads the registers through its mapping. Returns the guest's step (GET_NONCE).
    fn start(&mut self, bar: (u64, u64), tl: &mut Timeline) -> Result<Step, Failed> {
        let pages = bar.1 / 4096;
        let cc = super::worlds::bar_before_import(self.world, self.cpu.tsm, &self.cpu.tsc(), bar.0)
            .step("host world: BAR0")?;
        say!("world: host world reads BAR0 CC = {cc:#x} before the import: the BAR is still the host's");
        tl.begin("map_accept_start");
        device::import(&mut self.cpu, &self.a, 0, bar.0, pages).step("import and map")?;
        device::map_mmio(&mut self.cpu, &self.td.td, &mut self.a, (bar.0, pages), BAR_GPA).step("import and map")?;
        self.guest(|g, v| g.accept_mmio(v, pages)).step("guest: MMIO.ACCEPT")?;
        say!("mmio: BAR0 {:#x} ({pages} pages) imported, mapped at GPA {BAR_GPA:#x}, accepted by the guest", bar.0);
        device::dmar_add(&mut self.cpu, &self.td.td, &mut self.a).step("DMAR.ADD")?;
        self.guest(|g, v| g.accept_dma_and_authorise(v)).step("guest: DMAR.ACCEPT / authorise")?;
        say!("dma: entry added by the host, accepted by the guest; the guest authorised START");
        device::start(&mut self.cpu, &mut self.doe, &self.a, &mut self.stats).step("TDI.START")?;
        let step = self.guest(|g, v| g.use_device(v)).step("guest: device")?;
        let start_us = tl.end();
        say!("tdi: RUN");
        super::figure("map_accept_start_qemu_ms", &Ms(start_us), "ms");
        Ok(step)
    }

    /// Mode `revoke`: the exporter revokes the BAR under the running TDI; the guest must see it.
    fn revoke(&mut self, step: Step, function: u32) -> Result<(), Failed> {
        // The guest waits in GET_NONCE: resume it, then the exporter revokes the BAR under it
        // while the guest's device has READs outstanding.
        self.serve(step)?;
        self.revoke_under_dma(function)?;
        let (state, read) = self.guest(|g, v| g.probe_revoked(v)).step("guest: TDI read after the revoke")?;
        let unseen = match read {
            Err(e) if state == tdi_state::ERROR => {
                say!("guest: TDI.RD says ERROR; its MMIO accessor refuses BAR0: {e}");
                return Err(Failed { what: "TDI", why: Why::Said("BAR0 revoked while RUN; the TDI is in ERROR") });
            }
            Err(_) => RevokeUnseen::State(state),
            Ok(v) => RevokeUnseen::Read(v),
        };
        Err(Failed { what: "guest: after the revoke", why: Why::Revoke(unseen) })
    }

    /// The revocation while DMA is live: the guest's driver brings the controller up (its
    /// queues in private pages), fills its data pages with a marker and leaves one 4 KiB READ
    /// outstanding into each; the exporter revokes the BAR at once. DMABUF.REVOKE blocks the
    /// DMA entry and invalidates the IOTLB before it returns, so whatever the data pages hold
    /// at its return (drive data that landed before, or the marker) must be what they hold
    /// once the device is done: checked after the fault log stopped growing.
    fn revoke_under_dma(&mut self, function: u32) -> Result<(), Failed> {
        const PAGES: usize = WORK_PAGES as usize - 9;
        const MARK: [u8; 4096] = [0xA5; 4096];
        let nl = nvme_layout();
        let dsts: [u64; PAGES] = core::array::from_fn(|i| nl.data + i as u64 * 4096);
        let mut d = self.guest_driver(nl)?;
        for &dst in &dsts {
            self.mem.write(self.cpu.tsm, dst, &MARK).map_err(guest::nvme::NvmeError::from).step("guest: NVMe")?;
        }
        let before = fault_count(self.cpu.tsm);
        d.submit_reads(self.cpu.tsm, &dsts).step("guest: NVMe")?;
        let blocked = device::dmabuf_revoke(&mut self.cpu, &self.a).step("DMABUF.REVOKE")?;
        let at_return = self.page_digests(&dsts)?;
        say!("dmabuf: BAR0 revoked by the exporter while the TDI runs, {PAGES} READs outstanding; {blocked} mapped pages blocked");
        // The device finishes on its own time: wait until the fault log stops growing.
        let tsc = self.cpu.tsc();
        let (mut last, mut stable_since) = (fault_count(self.cpu.tsm), tsc.now());
        let start = tsc.now();
        while tsc.ticks_to_us(tsc.now().wrapping_sub(stable_since)) < 100_000
            && tsc.ticks_to_us(tsc.now().wrapping_sub(start)) < 2_000_000
        {
            let n = fault_count(self.cpu.tsm);
            if n != last {
                (last, stable_since) = (n, tsc.now());
            }
        }
        let after = self.page_digests(&dsts)?;
        let (mut landed, mut late) = (0, 0);
        let mut mark_digest = Sha384::new();
        mark_digest.update(MARK);
        let mark: [u8; 48] = mark_digest.finalize().into();
        for (r, a) in at_return.iter().zip(&after) {
            landed += u32::from(*r != mark);
            late += u32::from(r != a);
        }
        let refused = (before..last)
            .filter(|&n| fault_record(self.cpu.tsm, n).is_some_and(|(sid, _, _)| sid == u64::from(function)))
            .count();
        say!(
            "dma: after the revoke returned: {landed} of {PAGES} pages held data that landed before it; {refused} DMA requests of the device refused since (fault records); {late} READs landed later"
        );
        // QEMU translates a READ's data pages when the device maps them, before its backend
        // reads the drive, and models no drain of such in-flight DMA at an invalidation (VT-d's
        // drain bits; docs/architecture.md section 9): a READ mapped before the return may land
        // after it, so only the refusals since are QEMU's evidence; the ordering itself (block
        // and invalidation before the return) is tested in the harness (`assign_dma.rs`).
        if late != 0 {
            say!("dma: {late} READs translated before the revoke returned completed after it (QEMU models no VT-d drain)");
        }
        Ok(())
    }

    /// The guest's NVMe driver over its work pages, the controller reset and brought up again
    /// (admin queues, Identify, one I/O queue pair).
    fn guest_driver(&mut self, nl: guest::nvme::NvmeLayout) -> Result<guest::nvme::NvmeDriver<'m, 'm>, Failed> {
        let mut d = guest::nvme::NvmeDriver::new(self.mem, nl);
        d.enable(self.cpu.tsm).step("guest: NVMe")?;
        d.identify_and_create_queues(self.cpu.tsm).step("guest: NVMe")?;
        Ok(d)
    }

    /// The differential test: each S-EPT state of [`DIFFERENTIAL`] is made (by the host's calls
    /// where needed), the guest READs into its GPA through QEMU's unit, and the TSM's walker
    /// (`tsm::iommu::translate`) is asked about the same request; the unit's verdict (the data
    /// landed, or a fault record with its reason) must be the walker's (a translation, or a
    /// fault of the same class). The last case blocks the TDI's DMA entry for good.
    fn differential(&mut self, function: u32) -> Result<(), Failed> {
        use tsm::abi::host::leaf;
        let nl = nvme_layout();
        let pending = WORK_GPA + (WORK_PAGES + 1) * 4096;
        let page = tsm_client::host::donate(&mut self.cpu).step("differential: AUG")?;
        let tdr = self.td.td.tdr;
        let r = self.cpu.tsm.host_call(&tsm::Regs::call(leaf::MEM_PAGE_AUG, pending, tdr, page, 0));
        if r.status() != tsm::Status::SUCCESS {
            return Err(Failed { what: "differential", why: Why::Said("TDH.MEM.PAGE.AUG of the PENDING case failed") });
        }
        let mut d = self.guest_driver(nl)?;
        let mut agreed = 0;
        for (i, &(gpa, what)) in DIFFERENTIAL.iter().enumerate() {
            if i == DIFFERENTIAL.len() - 1 {
                // After DMAR.BLOCK (and the invalidation the host owes before a remove).
                let r = self.cpu.tsm.host_call(&tsm::Regs::call(leaf::DMAR_BLOCK, self.a.tdi, 0, 0, 0));
                let inv = self.cpu.tsm.host_call(&tsm::Regs::call(leaf::IQ_INV_REQUEST, tdr, 0, 0, 0));
                if r.status() != tsm::Status::SUCCESS || inv.status() != tsm::Status::SUCCESS {
                    return Err(Failed { what: "differential", why: Why::Said("TDH.DMAR.BLOCK or IQ.INV failed") });
                }
            }
            let gpa = if gpa == PENDING_CASE { pending } else { gpa };
            if gpa == nl.data {
                self.mem.write(self.cpu.tsm, gpa, &[0xA5; 4096]).map_err(guest::nvme::NvmeError::from).step("guest")?;
            }
            let before = fault_count(self.cpu.tsm);
            // The command completes (status 0 even when its data was refused), or, when the
            // unit refuses the device's fetch of the command itself, never does: then the
            // verdict is about that fetch, a read of the I/O submission queue page.
            let (gpa, write) = match d.read_to(self.cpu.tsm, gpa) {
                Ok(_) => (gpa, true),
                Err(guest::nvme::NvmeError::NoCompletion { .. }) => (nl.iosq, false),
                Err(e) => return Err(e).step("guest: NVMe"),
            };
            let rid = tsm::iommu::Rid::from_raw(function as u16);
            let walker = {
                let iommu = self.cpu.tsm.iommu().ok_or(Why::Said("no IOMMU")).step("differential")?;
                iommu.translate(self.cpu.tsm.platform(), rid, None, gpa, write)
            };
            let unit = unit_verdict(self, function, before, gpa)?;
            let walked = Walked(walker.map(|_| ()).map_err(|f| f.reason));
            let same = match (walker, unit) {
                (Ok(_), Verdict::Landed) => true,
                (Err(f), Verdict::Fault(code)) => same_class(f.reason, code),
                _ => false,
            };
            let access = if write { "write" } else { "command fetch" };
            say!(
                "differential: {what}: {access} at GPA {gpa:#x}: unit {unit}, walker {walked}: {}",
                if same { "same verdict" } else { "DIFFERENT" }
            );
            if !same {
                return Err(Failed { what: "differential", why: Why::Said("QEMU's unit and the walker disagree") });
            }
            agreed += 1;
        }
        say!("differential: QEMU's unit and tsm::iommu::translate agree on all {agreed} cases");
        Ok(())
    }

    /// SHA-384 of each private page at `gpas`, read as the guest.
    fn page_digests<const N: usize>(&mut self, gpas: &[u64; N]) -> Result<[[u8; 48]; N], Failed> {
        let mut out = [[0u8; 48]; N];
        let mut buf = [0u8; 4096];
        for (d, &gpa) in out.iter_mut().zip(gpas) {
            self.mem.read(self.cpu.tsm, gpa, &mut buf).map_err(guest::nvme::NvmeError::from).step("guest: read")?;
            *d = Sha384::digest(buf).into();
        }
        Ok(out)
    }

    /// The guest's reports over the verifier's nonce, and the evidence; all sent on COM3.
    fn attest(&mut self, step: Step, tl: &mut Timeline) -> Result<(), Failed> {
        tl.begin("attestation");
        self.serve(step)?;
        if let Some((function, before)) = self.strays {
            let seen = self.guest(|_, v| guest_sees_strays(v, function, before)).step("guest: DMA faults")?;
            say!("guest: SEAMLESS.TDG.IOMMU.FAULT.RD shows its device's {seen} fault records, naming each stray page");
        }
        let step = self.guest(|g, v| g.attest(v)).step("guest: attest")?;
        self.serve(step)?;
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
        emit("report.bin", &self.report[..guest::REPORT_BYTES]);
        emit("report-snp.bin", &self.report[guest::REPORT_BYTES..]);
        emit("evidence.bin", &bundle[..bundle_len]);
        let attest_us = tl.end();
        say!(
            "attestation: report {} bytes and its SNP-format export {} bytes over the verifier's nonce, evidence {} bytes",
            guest::REPORT_BYTES,
            guest::SNP_BYTES,
            bundle_len
        );
        super::figure("attestation_qemu_ms", &Ms(attest_us), "ms");
        Ok(())
    }

    /// Mode `assign`: the guest's NVMe driver reads the drive into private pages through the
    /// unit, then makes its stray READs, each of which the unit must refuse and log; then one
    /// domain-selective invalidation, timed, as the host asks for it.
    fn read_disk(&mut self, function: u32, tl: &mut Timeline) -> Result<(), Failed> {
        tl.begin("nvme_dma");
        let mut statuses = [0u16; STRAY.len()];
        let before = fault_count(self.cpu.tsm);
        let layout = GuestLayout { work: WORK_GPA, work_pages: WORK_PAGES, bar_gpa: BAR_GPA };
        let stray = STRAY.map(|(gpa, _)| gpa);
        let f = guest::read_disk(self.cpu.tsm, self.mem, layout, attest::disk::DEMO_BLOCKS, &stray, &mut statuses)
            .step("guest: NVMe")?;
        let dma_us = tl.end();
        let read_faults = faults_elsewhere(self.cpu.tsm, before);
        let private_kib_s = report_disk(&f, dma_us, read_faults).step("guest: NVMe read")?;
        if let Some(host) = self.host_kib_s {
            // The TD's DMA through its S-EPT against the host's through the host map, same READs.
            let permille = (private_kib_s * 1000).checked_div(host).unwrap_or(0);
            super::figure("dma_private_vs_host", &format_args!("{}.{:03}", permille / 1000, permille % 1000), "ratio");
        }
        report_stray_dma(self.cpu.tsm, function, before, &statuses).step("DMA fault cases")?;
        // The guest looks at them itself once it runs again (it waits in a VMCALL now).
        self.strays = Some((function, before));
        let tsc = self.cpu.tsc();
        let t0 = tsc.now();
        let r = self.cpu.tsm.host_call(&tsm::Regs::call(tsm::abi::host::leaf::IQ_INV_REQUEST, self.td.td.tdr, 0, 0, 0));
        let inv_ns = tsc.ticks_to_ns(tsc.now().wrapping_sub(t0));
        if r.status() != tsm::Status::SUCCESS {
            return Err(Failed { what: "IQ.INV", why: Why::Said("TDH.IQ.INV.REQUEST failed") });
        }
        super::figure("iommu_inv_us", &format_args!("{}.{:03}", inv_ns / 1000, inv_ns % 1000), "us");
        self.differential(function)
    }
}

/// DMA the device must not land, by the TD's own commands after its read: a page the TD never
/// accepted (no S-EPT leaf), its device's MMIO page, and a shared GPA (bit 47). Each with what
/// QEMU's unit reports (VT-d fault reasons: 0x05 no write permission on a non-present entry,
/// 0x0C a reserved bit: the MMIO leaf's DMA block bit 62).
const STRAY: [(u64, &str); 3] = [
    (WORK_GPA + WORK_PAGES * 4096, "a page the TD never accepted"),
    (BAR_GPA, "the TD's own device MMIO page"),
    ((1 << 47) | WORK_GPA, "a shared GPA"),
];

/// The guest driver's pages: the guest's four, then queues, Identify and data pages.
fn nvme_layout() -> guest::nvme::NvmeLayout {
    let page = |i: u64| WORK_GPA + (4 + i) * 4096;
    guest::nvme::NvmeLayout {
        bar: BAR_GPA,
        asq: page(0),
        acq: page(1),
        identify: page(2),
        iosq: page(3),
        iocq: page(4),
        data: page(5),
        data_pages: WORK_PAGES - 9,
    }
}

/// Stands for the GPA the host AUGs for the PENDING case.
const PENDING_CASE: u64 = u64::MAX;

/// The differential cases: the S-EPT (and DMAR) states a device's write meets. The last one
/// runs after TDH.DMAR.BLOCK.
const DIFFERENTIAL: [(u64, &str); 6] = [
    (WORK_GPA + 9 * 4096, "an accepted private page (MAPPED)"),
    (WORK_GPA + WORK_PAGES * 4096, "a GPA with no leaf (FREE)"),
    (PENDING_CASE, "a page AUGed, not accepted (PENDING)"),
    (BAR_GPA, "the TD's MMIO page (MMIO_MAPPED)"),
    ((1 << 47) | WORK_GPA, "a shared GPA"),
    (WORK_GPA + 9 * 4096, "the accepted page after TDH.DMAR.BLOCK"),
];

/// What QEMU's unit did with one write.
#[derive(Clone, Copy, Debug)]
enum Verdict {
    /// The data arrived (the drive's first 4 KiB) and no fault names the page.
    Landed,
    /// A fault record for the page, with this VT-d reason.
    Fault(u64),
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Landed => f.write_str("landed"),
            Verdict::Fault(r) => write!(f, "fault {r:#04x}"),
        }
    }
}

/// The walker's verdict, for the log line.
struct Walked(Result<(), tsm::iommu::FaultReason>);

impl fmt::Display for Walked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Ok(()) => f.write_str("translates"),
            Err(r) => write!(f, "{r:?} ({:#04x})", r.code()),
        }
    }
}

/// The unit's verdict on the write to `gpa` made after fault `before`.
fn unit_verdict(demo: &mut Demo<'_, '_>, function: u32, before: u64, gpa: u64) -> Result<Verdict, Failed> {
    let page = gpa & !0xFFF;
    let count = fault_count(demo.cpu.tsm);
    let fault = (before..count)
        .find_map(|n| fault_record(demo.cpu.tsm, n).filter(|&(sid, _, p)| sid == u64::from(function) && p == page));
    if let Some((_, reason, _)) = fault {
        return Ok(Verdict::Fault(reason));
    }
    let mut buf = [0u8; 4096];
    demo.mem.read(demo.cpu.tsm, gpa, &mut buf).map_err(guest::nvme::NvmeError::from).step("guest: read")?;
    let mut want = [0u8; 4096];
    for (lba, chunk) in want.chunks_mut(attest::disk::BLOCK_BYTES).enumerate() {
        let mut b = [0u8; attest::disk::BLOCK_BYTES];
        attest::disk::block(lba as u64, &mut b);
        chunk.copy_from_slice(&b);
    }
    if buf == want {
        Ok(Verdict::Landed)
    } else {
        Err(Failed { what: "differential", why: Why::Said("a write neither landed nor left a fault record") })
    }
}

/// True if the unit's fault `code` is the walker's `reason` as QEMU reports it
/// (`../shared/reference/prototypes/vtd/run1.log`): QEMU gives a second-stage entry without the
/// needed permission (R = W = 0 included) the legacy reason 0x05 for a write, and a reserved bit
/// (the MMIO leaf's DMA_BLOCK bit 62) 0x0C, where the walker says the scalable-mode 0x79 and
/// 0x7A or names the TSM's own rule (0xF0 MMIO leaf, 0xF1 shared GPA); other PASID-level and
/// table-level reasons are the same code on both sides.
fn same_class(reason: tsm::iommu::FaultReason, code: u64) -> bool {
    use tsm::iommu::FaultReason as F;
    match reason {
        F::SeptNotPresent(_) | F::SeptPermission | F::SharedGpa | F::HostMapNotPresent => code == 0x05,
        F::SeptNotPrivateMemory(_) | F::SeptReserved => code == 0x0C,
        // A not-present PASID entry is all zero in word 0 (`PasidEntry::word0`): QEMU checks its
        // PGTT (0, invalid: 0x5B) and never its P bit.
        F::PasidEntryNotPresent => code == 0x5B,
        other => u64::from(other.code()) == code,
    }
}

/// Faults the TSM's log counted since IOMMU.SETUP, read by the host through its leaf (which
/// first drains the unit's fault recording registers).
fn fault_count(tsm: &mut Tsm<FirmwarePlatform>) -> u64 {
    tsm.host_call(&tsm::Regs::call(tsm::abi::host::leaf::IOMMU_FAULT_RD, 0, 0, 0, 0)).rcx
}

/// The fault record `n` of the TSM's log: (source id, reason, page), if there is one.
fn fault_record(tsm: &mut Tsm<FirmwarePlatform>, n: u64) -> Option<(u64, u64, u64)> {
    let r = tsm.host_call(&tsm::Regs::call(tsm::abi::host::leaf::IOMMU_FAULT_RD, n, 0, 0, 0));
    (r.r9 == 1).then_some((r.rdx & 0xFFFF, r.rdx >> 16 & 0xFF, r.r8))
}

/// Fault records since `before` that name no stray page: what the read itself left.
fn faults_elsewhere(tsm: &mut Tsm<FirmwarePlatform>, before: u64) -> u64 {
    let strays = STRAY.map(|(gpa, _)| gpa & !0xFFF);
    (before..fault_count(tsm))
        .filter(|&n| fault_record(tsm, n).is_some_and(|(_, _, page)| !strays.contains(&page)))
        .count() as u64
}

/// The host's view of the stray DMA: each command completed (status 0 at the controller), and
/// each left a fault record naming the NVMe function and the page. QEMU may record one refused
/// DMA more than once (a second record for the same page when the unit's fault register was
/// drained in between, else compressed): the host takes each page's first record.
fn report_stray_dma(
    tsm: &mut Tsm<FirmwarePlatform>,
    function: u32,
    before: u64,
    statuses: &[u16],
) -> Result<(), &'static str> {
    let count = fault_count(tsm);
    for ((gpa, what), status) in STRAY.iter().zip(statuses) {
        let page = gpa & !0xFFF;
        let found = (before..count).find_map(|n| fault_record(tsm, n).filter(|r| r.2 == page));
        let Some((sid, reason, _)) = found else { return Err("a stray DMA left no fault record") };
        say!(
            "dma fault: READ into {what} (GPA {gpa:#x}): NVMe status {status:#x}; the unit refused it: source {sid:#06x}, page {page:#x}, VT-d reason {reason:#04x}"
        );
        if sid != u64::from(function) {
            return Err("a fault record names another source");
        }
    }
    Ok(())
}

/// The guest's own look at the fault log (SEAMLESS.TDG.IOMMU.FAULT.RD, its TDI's requester
/// only): every stray page must be named by a record of its device. Returns the records seen.
fn guest_sees_strays(v: &mut TdVcpu<'_, '_>, function: u32, before: u64) -> Result<u64, &'static str> {
    use tsm_client::Tdcall as _;
    let call = |v: &mut TdVcpu<'_, '_>, n: u64| {
        let mut r = tsm::Regs::call(tsm::abi::guest::leaf::IOMMU_FAULT_RD, u64::from(function), n, 0, 0);
        let exit = v.tdcall(&mut r);
        (exit.is_none() && r.status() == tsm::Status::SUCCESS).then_some(r)
    };
    let count = call(v, 0).ok_or("SEAMLESS.TDG.IOMMU.FAULT.RD failed")?.rcx;
    let mut seen = 0;
    let mut pages = [false; STRAY.len()];
    for n in before..count {
        let r = call(v, n).ok_or("SEAMLESS.TDG.IOMMU.FAULT.RD failed")?;
        if r.r9 != 1 {
            continue;
        }
        if r.rdx & 0xFFFF != u64::from(function) {
            return Err("the guest was shown another requester's fault");
        }
        seen += 1;
        for (hit, (gpa, _)) in pages.iter_mut().zip(STRAY) {
            *hit |= r.r8 == gpa & !0xFFF;
        }
    }
    if pages.contains(&false) {
        return Err("a stray DMA left no fault record the guest can read");
    }
    Ok(seen)
}

/// Prints what the guest's NVMe driver found and read, checks the digest against the drive's
/// known content and that the read itself faulted nowhere, and the throughput figure (returned,
/// in KiB/s).
fn report_disk(f: &guest::nvme::NvmeFindings, dma_us: u64, faults: u64) -> Result<u64, &'static str> {
    say!(
        "guest: NVMe {:04x} \"{}\" serial \"{}\", namespace 1: {} blocks of {} bytes (Identify DMA'd into private pages)",
        f.vid,
        Ascii(&f.model),
        Ascii(&f.serial),
        f.blocks,
        f.block_bytes
    );
    let want = attest::disk::digest(0, f.read_blocks);
    let kib = f.read_blocks * 512 / 1024;
    say!(
        "guest: read {kib} KiB (LBA 0..{}) into private memory through QEMU's IOMMU walking the S-EPT; SHA-384 {} {}",
        f.read_blocks,
        hex48(&f.digest),
        if f.digest == want { "= the drive's known content" } else { "DIFFERS from the drive's content" }
    );
    if f.digest != want {
        return Err("the data read is not the drive's content");
    }
    if faults != 0 {
        return Err("the read left IOMMU faults");
    }
    let rate_kib_s = (kib * 1_000_000).checked_div(dma_us.max(1)).unwrap_or(0);
    super::figure(
        "nvme_read_mib_s_private",
        &format_args!("{}.{:03}", rate_kib_s / 1024, (rate_kib_s % 1024) * 1000 / 1024),
        "MiB/s",
    );
    Ok(rate_kib_s)
}

/// The host, still owning the NVMe controller, reads the same blocks as the TD will into its own
/// pages through the host domain: HOST.ATTACH of the function (its second stage = the host map),
/// the read, the digest check, then HOST.DETACH, whose invalidation completed before it returned
/// (the controller is the TD's from DMAR.ADD on). Returns the rate in KiB/s.
fn host_read(cpu: &mut HostCpu<'_>, regs: &Mmio, function: u32) -> Result<u64, Why> {
    use tsm::abi::host::leaf;
    let donate = tsm_client::host::donate;
    let f = [donate(cpu)?, donate(cpu)?, donate(cpu)?];
    let r = cpu.tsm.host_call(&tsm::Regs {
        r10: f[2],
        ..tsm::Regs::call(leaf::IOMMU_HOST_ATTACH, u64::from(function), 0, f[0], f[1])
    });
    if r.status() != tsm::Status::SUCCESS {
        say!("host: SEAMLESS.IOMMU.HOST.ATTACH returned {:#x}", r.rax);
        return Err(Why::Said("SEAMLESS.IOMMU.HOST.ATTACH failed"));
    }
    for (i, &frame) in f.iter().enumerate() {
        if r.rcx & (1 << i) == 0 {
            tsm_client::host::HostMemory::release(cpu, frame);
        }
    }
    let mut pages = super::host_nvme::HostPages { queues: [0; 4], data: [0; 15] };
    for p in pages.queues.iter_mut().chain(pages.data.iter_mut()) {
        *p = scratch(cpu)?;
    }
    let blocks = attest::disk::DEMO_BLOCKS;
    let tsc = cpu.tsc();
    let read = super::host_nvme::read(regs, cpu.host.frames(), &tsc, &pages, blocks);
    let r = cpu.tsm.host_call(&tsm::Regs::call(leaf::IOMMU_HOST_DETACH, u64::from(function), 0, 0, 0));
    let read = read.map_err(|e| {
        say!("host: NVMe read through the host domain: {e}");
        Why::Said("the host's own NVMe read failed")
    })?;
    if r.status() != tsm::Status::SUCCESS {
        say!("host: SEAMLESS.IOMMU.HOST.DETACH returned {:#x}", r.rax);
        return Err(Why::Said("SEAMLESS.IOMMU.HOST.DETACH failed"));
    }
    let want = attest::disk::digest(0, blocks);
    let kib = blocks * 512 / 1024;
    say!(
        "host: read {kib} KiB (LBA 0..{blocks}) into its own pages through the host domain (QEMU's IOMMU walking the host map); SHA-384 {} {}",
        hex48(&read.digest),
        if read.digest == want { "= the drive's known content" } else { "DIFFERS from the drive's content" }
    );
    if read.digest != want {
        return Err(Why::Said("the host read other data than the drive's"));
    }
    say!("dma: the NVMe function left the host domain (entry zeroed, invalidation confirmed)");
    let rate_kib_s = (kib * 1_000_000).checked_div(read.us.max(1)).unwrap_or(0);
    super::figure(
        "nvme_read_mib_s_host",
        &format_args!("{}.{:03}", rate_kib_s / 1024, (rate_kib_s % 1024) * 1000 / 1024),
        "MiB/s",
    );
    Ok(rate_kib_s)
}

/// The flow; never returns.
pub fn run(
    config: &RunConfig,
    tsc: &Tsc,
    tsm: &mut Tsm<FirmwarePlatform>,
    (host, world): (&mut Host, &mut HostWorld),
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

    // The host's own look at the controller, before anything is assigned.
    let host_cap = u64::from(regs.read_u32(4)) << 32 | u64::from(regs.read_u32(0));
    let host_vs = regs.read_u32(8);
    say!("host: NVMe CAP {host_cap:#018x} VS {host_vs:#010x} (read by the host before assignment)");

    tl.begin("td_build");
    // The TSM takes the remapping unit before the TD has a private page: from here on no device
    // DMA lands anywhere without a DMAR entry the guest accepted.
    device::iommu_setup(&mut cpu).unwrap_or_else(|e| fail("IOMMU.SETUP", &e));
    let host_kib_s = (config.mode == Mode::Assign)
        .then(|| host_read(&mut cpu, &regs, function).unwrap_or_else(|e| fail("host NVMe read", &e)));
    let mut com1 = |b: &[u8]| Uart::com1().write_bytes(b);
    let built = td::build(&mut cpu, image, &td_params(), (WORK_GPA, WORK_PAGES), &mut com1)
        .unwrap_or_else(|e| fail("TD build", &e));
    if built.ran != td::Ran::Halted {
        fail("TD build", &"the guest image did not run in the TD world");
    }
    // The guest binary ran in its TD world up to its halt; the stand-in plays the device part.
    cpu.worlds = false;
    td::enter(&mut cpu, built.vcpu).unwrap_or_else(|e| fail("VP.ENTER", &e));
    let shared = scratch(&mut cpu).unwrap_or_else(|e| fail("shared page", &e));
    let mem = GuestMemory::new(built.td.tdr, frames, Some((&regs, bar.0, bar.1)));
    let guest = Guest::new(function, GuestLayout { work: WORK_GPA, work_pages: WORK_PAGES, bar_gpa: BAR_GPA });
    say!(
        "td: TDR {:#x}; guest image ({} bytes, from fw_cfg): {} pages added, {} measured (MRTD: what attest measure computes); {} pages AUGed and accepted by the guest binary in its TD world",
        built.td.tdr,
        image.len(),
        built.added,
        built.measured,
        WORK_PAGES
    );
    tl.end();

    let doe = DoeLink::new(&mut mailbox, *tsc);
    let mut demo = Demo {
        cpu,
        doe,
        td: built,
        mem: &mem,
        shared,
        guest,
        a: Assignment::default(),
        stats: PumpStats::default(),
        report: [0; guest::REPORTS_BYTES],
        nonce: config.nonce,
        world,
        regs: &regs,
        frames,
        host_kib_s,
        strays: None,
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
    let t = tl.now_us();
    demo.a = device::pdev_create(&mut demo.cpu, u32::from(bdf.rid())).step("PDEV")?;
    let connect_us = spdm_connect_pdev(&mut demo.cpu, &mut demo.doe, bdf, &demo.a).step("SPDM.CONNECT")?;
    tl.record("spdm_connect", t, connect_us);
    let after_connect = (demo.doe.ticks, demo.cpu.tsm_ticks);

    demo.lock(u32::from(bdf.rid()), tl)?;
    let step = demo.start(bar, tl)?;
    let f = demo.guest.findings;
    let (cap, vs) = (f.cap, f.vs);
    say!(
        "guest: NVMe CAP {cap:#018x} VS {vs:#010x} through its MMIO_MAPPED leaves: {}",
        if (cap, vs) == host_read { "equal to the host's read" } else { "DIFFERENT from the host's read" }
    );
    if (cap, vs) != host_read {
        fail("guest: device registers", &"the private mapping shows other registers than BAR0");
    }
    if config.mode == Mode::Assign {
        demo.read_disk(u32::from(bdf.rid()), tl)?;
    }
    let tdr = demo.td.td.tdr;
    let tsc = demo.cpu.tsc();
    let (objects, logged) =
        super::worlds::attacks(demo.world, demo.cpu.tsm, &tsc, demo.frames, (tdr, bar.0, demo.regs))
            .step("host world attacks")?;
    say!(
        "world: the host world attacked {objects} protected objects: {} accesses refused in hardware, {logged} fault-log entries read back, the host carried on",
        2 * objects
    );
    if config.mode == Mode::Revoke {
        return demo.revoke(step, u32::from(bdf.rid()));
    }
    demo.attest(step, tl)?;

    tl.begin("teardown");
    demo.unbind(Policy::Strict).step("teardown")?;
    let pages = td::check_all_free(&mut demo.cpu).step("teardown")?;
    tl.end();
    let ticks = (demo.doe.ticks - after_connect.0, demo.cpu.tsm_ticks - after_connect.1);
    pump_summary(&demo.cpu.tsc(), &demo.stats, ticks);
    say!("teardown: TDI stopped and removed, stream and session closed, TD destroyed; all {pages} donated pages free again");
    Ok(())
}
