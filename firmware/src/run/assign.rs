//! Mode `assign`: the whole device assignment, phase by phase, with the firmware's own timings.
//! The host agent (`crate::host`) and the guest (`crate::guest`) take turns exactly where a VMM
//! and a TD would: the host enters the vCPU, the guest runs until it needs the host (a VMCALL),
//! the host serves the request and enters again.

use attest::evidence::RecordType;

use super::{fail, pump_summary, report_failure, spdm_connect_pdev, Ms, Nvme};
use crate::arch::{self, ExitCode};
use crate::config::{Mode, RunConfig};
use crate::drivers::phys::Frames;
use crate::drivers::serial::Uart;
use crate::drivers::tsc::Tsc;
use crate::frame;
use crate::guest::{self, image, Guest, GuestLayout, GuestMemory, Shared};
use crate::host::assign::{DevicePages, BAR_GPA, WORK_GPA, WORK_PAGES};
use crate::host::evidence::BundleWriter;
use crate::host::{Host, PumpStats};
use crate::platform::FirmwarePlatform;
use crate::timeline::Phases;
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

/// TDISP state ERROR as TDG.TDI.RD reports it.
const TDISP_ERROR: u64 = 3;

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

/// Sends one artifact on COM3.
pub fn emit(name: &str, data: &[u8]) {
    let mut com3 = Uart::com3();
    if let Err(e) = frame::encode(name, data, &mut |b| com3.write_bytes(b)) {
        say!("artifact {name}: cannot frame it: {e:?}");
        return;
    }
    say!("artifact {name}: {} bytes on COM3", data.len());
}

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

/// DMA the device must not land, by the TD's own commands after its read: a page the TD never
/// accepted (no S-EPT leaf), its device's MMIO page, and a shared GPA (bit 47). Each with what
/// QEMU's unit reports (VT-d fault reasons: 0x05 no write permission on a non-present entry,
/// 0x0C a reserved bit: the MMIO leaf's DMA block bit 62).
const STRAY: [(u64, &str); 3] = [
    (WORK_GPA + WORK_PAGES * 4096, "a page the TD never accepted"),
    (BAR_GPA, "the TD's own device MMIO page"),
    ((1 << 47) | WORK_GPA, "a shared GPA"),
];

/// Faults the TSM's log counted since IOMMU.SETUP, read by the host through its leaf (which
/// first drains the unit's fault recording registers).
fn fault_count(tsm: &mut Tsm<FirmwarePlatform>) -> u64 {
    tsm.host_call(&tsm::Regs::call(tsm::abi::host::leaf::IOMMU_FAULT_RD, 0, 0, 0, 0)).rcx
}

/// The host's view of the stray DMA: each command completed (status 0 at the controller), and
/// each left exactly one fault record naming the NVMe function and the page.
fn report_stray_dma(
    tsm: &mut Tsm<FirmwarePlatform>,
    function: u32,
    before: u64,
    statuses: &[u16],
) -> Result<(), &'static str> {
    for (i, ((gpa, what), status)) in STRAY.iter().zip(statuses).enumerate() {
        let n = before + i as u64;
        let r = tsm.host_call(&tsm::Regs::call(tsm::abi::host::leaf::IOMMU_FAULT_RD, n, 0, 0, 0));
        if r.r9 != 1 {
            return Err("a stray DMA left no fault record");
        }
        let (sid, reason) = (r.rdx & 0xFFFF, r.rdx >> 16 & 0xFF);
        say!(
            "dma fault: READ into {what} (GPA {gpa:#x}): NVMe status {status:#x}; the unit refused it: source {sid:#06x}, page {:#x}, VT-d reason {reason:#04x}",
            r.r8
        );
        if sid != u64::from(function) || r.r8 != gpa & !0xFFF {
            return Err("a fault record names another source or page");
        }
    }
    Ok(())
}

/// Prints what the guest's NVMe driver found and read, checks the digest against the drive's
/// known content and that the read itself faulted nowhere, and the throughput figure.
fn report_disk(f: &guest::nvme::NvmeFindings, dma_us: u64, faults: u64) -> Result<(), &'static str> {
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
    say!("figure nvme_read_mib_s_private {}.{:03} MiB/s", rate_kib_s / 1024, (rate_kib_s % 1024) * 1000 / 1024);
    Ok(())
}

/// The flow; never returns.
#[allow(clippy::too_many_lines)]
pub fn run(
    config: &RunConfig,
    tsc: &Tsc,
    tsm: &mut Tsm<FirmwarePlatform>,
    host: &mut Host,
    nvme: Nvme,
    ready_us: u64,
) -> ! {
    let Nvme { bdf, bar0, regs, mut mailbox } = nvme;
    let mut tl = Timeline::new(*tsc);
    let function = u32::from(bdf.rid());
    let bar = (bar0.base, bar0.size);
    let bar_pages = bar.1 / 4096;
    let frames: Frames = host.frames();

    // The host's own look at the controller, before anything is assigned.
    let host_cap = u64::from(regs.read_u32(4)) << 32 | u64::from(regs.read_u32(0));
    let host_vs = regs.read_u32(8);
    say!("host: NVMe CAP {host_cap:#018x} VS {host_vs:#010x} (read by the host before assignment)");

    tl.begin("td_build");
    // The TSM takes the remapping unit before the TD has a private page: from here on no device
    // DMA lands anywhere without a DMAR entry the guest accepted.
    host.iommu_setup(tsm).unwrap_or_else(|e| fail("IOMMU.SETUP", &e));
    let td = host.build_td(tsm, &image::IMAGE).unwrap_or_else(|e| fail("TD build", &e));
    let shared_page = host.scratch().unwrap_or_else(|e| fail("shared page", &e));
    let mem = GuestMemory::new(td.tdr, frames, Some((&regs, bar.0, bar.1)));
    let layout = GuestLayout { work: WORK_GPA, work_pages: WORK_PAGES, bar_gpa: BAR_GPA };
    let mut guest = Guest::new(td.vcpu, function, layout, mem, Shared::new(frames, shared_page));
    guest.accept_memory(tsm).unwrap_or_else(|e| fail("guest: accept", &e));
    say!(
        "td: TDR {:#x}; guest image ({} bytes): {} pages added, {} measured (MRTD: what attest measure computes); {} pages AUGed and accepted by the guest",
        td.tdr,
        image::IMAGE_BYTES,
        td.added,
        td.measured,
        WORK_PAGES
    );

    tl.end();

    // From here on a failure is reported, then everything that exists is torn down again in
    // the teardown's order and every donated page checked, then QEMU exits with 35.
    let mut d = DevicePages::default();
    let mut stats = PumpStats::default();
    macro_rules! or_cleanup {
        ($r:expr, $what:expr) => {
            match $r {
                Ok(v) => v,
                Err(e) => {
                    report_failure($what, &e);
                    let c = host.cleanup(tsm, &mut mailbox, tsc, Some(&td), &d, &mut stats);
                    say!("cleanup after the failure: {c}");
                    arch::exit_qemu(ExitCode::Failure)
                }
            }
        };
    }
    let t = tl.now_us();
    d.pdev = or_cleanup!(host.pdev_create(tsm, bdf.rid()), "PDEV");
    d.msg = or_cleanup!(host.scratch(), "message page");
    let connect_us = or_cleanup!(spdm_connect_pdev(tsc, tsm, host, bdf, &mut mailbox, (d.pdev, d.msg)), "SPDM.CONNECT");
    tl.record("spdm_connect", t, connect_us);

    tl.begin("tdi_lock_report");
    or_cleanup!(host.ide_setup(tsm, &mut mailbox, tsc, &mut d, &mut stats), "IDE setup");
    say!("ide: stream {} created, keys programmed (IDE_KM) and live", d.stream);
    or_cleanup!(host.bind_and_lock(tsm, &mut mailbox, tsc, &td, function, &mut d, &mut stats), "TDI lock");
    say!(
        "tdi: bound to the TD and CONFIG_LOCKED (generation {}); interface report {} bytes",
        d.generation,
        d.report_len
    );
    let mut report = [0u8; guest::REPORTS_BYTES];
    let step = or_cleanup!(guest.read_tdi(tsm), "guest: TDI read");
    or_cleanup!(
        host.serve_vmcall(tsm, &td, step, &Shared::new(frames, shared_page), &d, &config.nonce, &mut report),
        "host: VMCALL"
    );
    or_cleanup!(guest.check_report(), "guest: report check");
    say!(
        "guest: TDI CONFIG_LOCKED, generation {}; the host's report ({} bytes) matches the TSM's digest {}",
        guest.findings.generation,
        guest.findings.report_len,
        hex48(&guest.findings.report_digest)
    );
    let lock_us = tl.end();
    say!("figure tdi_lock_report_qemu_ms {} ms", Ms(lock_us));

    tl.begin("map_accept_start");
    or_cleanup!(host.import_and_map(tsm, &td, &d, bar), "import and map");
    d.mapped = bar_pages;
    or_cleanup!(guest.accept_mmio(tsm, bar_pages), "guest: MMIO.ACCEPT");
    say!("mmio: BAR0 {:#x} ({bar_pages} pages) imported, mapped at GPA {BAR_GPA:#x}, accepted by the guest", bar.0);
    or_cleanup!(host.dmar_add(tsm, &td, &d), "DMAR.ADD");
    d.dma = true;
    or_cleanup!(guest.accept_dma_and_authorise(tsm), "guest: DMAR.ACCEPT / authorise");
    say!("dma: entry added by the host, accepted by the guest; the guest authorised START");
    or_cleanup!(
        host.pump(
            tsm,
            &mut mailbox,
            tsc,
            ("TDH.TDI.START", tsm::abi::host::leaf::TDI_START, d.tdi, 0),
            d.msg,
            &mut stats
        ),
        "TDI.START"
    );
    let step = or_cleanup!(guest.use_device(tsm), "guest: device");
    let start_us = tl.end();
    say!("tdi: RUN");
    say!("figure map_accept_start_qemu_ms {} ms", Ms(start_us));
    let (cap, vs) = (guest.findings.cap, guest.findings.vs);
    say!(
        "guest: NVMe CAP {cap:#018x} VS {vs:#010x} through its MMIO_MAPPED leaves: {}",
        if (cap, vs) == (host_cap, host_vs) { "equal to the host's read" } else { "DIFFERENT from the host's read" }
    );
    if (cap, vs) != (host_cap, host_vs) {
        fail("guest: device registers", &"the private mapping shows other registers than BAR0");
    }
    if config.mode == Mode::Assign {
        tl.begin("nvme_dma");
        let mut statuses = [0u16; STRAY.len()];
        let before = fault_count(tsm);
        let f = or_cleanup!(
            guest.read_disk(tsm, attest::disk::DEMO_BLOCKS, &STRAY.map(|(gpa, _)| gpa), &mut statuses),
            "guest: NVMe"
        );
        let dma_us = tl.end();
        let read_faults = fault_count(tsm).saturating_sub(before).saturating_sub(STRAY.len() as u64);
        or_cleanup!(report_disk(&f, dma_us, read_faults), "guest: NVMe read");
        or_cleanup!(report_stray_dma(tsm, function, before, &statuses), "DMA fault cases");
        // One domain-selective invalidation with its wait, as the host asks for it.
        let t0 = tsc.now();
        let r = tsm.host_call(&tsm::Regs::call(tsm::abi::host::leaf::IQ_INV_REQUEST, td.tdr, 0, 0, 0));
        let inv_ns = tsc.ticks_to_ns(tsc.now().wrapping_sub(t0));
        if r.status() != tsm::Status::SUCCESS {
            or_cleanup!(Err::<(), _>("TDH.IQ.INV.REQUEST failed"), "IQ.INV");
        }
        say!("figure iommu_inv_us {}.{:03} us", inv_ns / 1000, inv_ns % 1000);
    }
    if config.mode == Mode::Revoke {
        // The guest waits in GET_NONCE: resume it, then the exporter revokes the BAR under it.
        or_cleanup!(
            host.serve_vmcall(tsm, &td, step, &Shared::new(frames, shared_page), &d, &config.nonce, &mut report),
            "host: VMCALL"
        );
        let blocked = or_cleanup!(host.dmabuf_revoke(tsm, &d), "DMABUF.REVOKE");
        say!("dmabuf: BAR0 revoked by the exporter while the TDI runs; {blocked} mapped pages blocked");
        let (state, read) = or_cleanup!(guest.probe_revoked(tsm), "guest: TDI read after the revoke");
        match read {
            Err(e) if state == TDISP_ERROR => say!("guest: TDI.RD says ERROR; its MMIO accessor refuses BAR0: {e}"),
            Err(_) => or_cleanup!(Err::<(), _>(RevokeUnseen::State(state)), "guest: after the revoke"),
            Ok(v) => or_cleanup!(Err::<(), _>(RevokeUnseen::Read(v)), "guest: after the revoke"),
        }
        or_cleanup!(Err::<(), _>("BAR0 revoked while RUN; the TDI is in ERROR"), "TDI");
    }

    tl.begin("attestation");
    or_cleanup!(
        host.serve_vmcall(tsm, &td, step, &Shared::new(frames, shared_page), &d, &config.nonce, &mut report),
        "host: VMCALL"
    );
    let step = or_cleanup!(guest.attest(tsm), "guest: attest");
    or_cleanup!(
        host.serve_vmcall(tsm, &td, step, &Shared::new(frames, shared_page), &d, &config.nonce, &mut report),
        "host: VMCALL"
    );
    let mut bundle = [0u8; 16 * 1024];
    let ev = tsm.tdi_evidence(tsm::addr::Pfn::new(d.tdi >> 12).unwrap_or(tsm::addr::Pfn::ZERO));
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
    emit("report.bin", &report[..guest::REPORT_BYTES]);
    emit("report-snp.bin", &report[guest::REPORT_BYTES..]);
    emit("evidence.bin", &bundle[..bundle_len]);
    let attest_us = tl.end();
    say!(
        "attestation: report {} bytes and its SNP-format export {} bytes over the verifier's nonce, evidence {} bytes",
        guest::REPORT_BYTES,
        guest::SNP_BYTES,
        bundle_len
    );
    say!("figure attestation_qemu_ms {} ms", Ms(attest_us));

    tl.begin("teardown");
    or_cleanup!(host.teardown(tsm, &mut mailbox, tsc, &td, &d, bar_pages, &mut stats), "teardown");
    let pages = or_cleanup!(host.check_all_free(tsm), "teardown");
    tl.end();
    pump_summary(tsc, &stats);
    say!("teardown: TDI stopped and removed, stream and session closed, TD destroyed; all {pages} donated pages free again");
    let mut json = [0u8; 2048];
    match tl.phases.json(&mut json, ready_us, "completed") {
        Ok(n) => emit("timeline.json", &json[..n]),
        Err(_) => say!("timeline: does not fit its buffer; not sent"),
    }
    say!("seamless firmware: assign done");
    arch::exit_qemu(ExitCode::Success)
}
