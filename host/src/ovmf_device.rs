//! Mode `ovmf` with `ovmf_device=nvme`: the host of a TDVF TD that binds the NVMe function's TDI
//! to it, the way a TDX Connect VMM would, and serves the device requests of the patched OVMF
//! (`ovmf-patches/`, TdxConnectDxe) in the order the firmware makes them:
//!
//! | request | what the host does |
//! |---|---|
//! | GET_TDI | SPDM.CONNECT of the PDEV, IDE, TDI.CREATE for this TD, TDI.LOCK; names the function |
//! | GET_REPORT | the interface report TDI.LOCK left (one byte changed under `nvme-lying-report`) |
//! | MAP_MMIO | DMABUF.IMPORT of report range 0 (BAR0), MMIO.MAP of its pages at the GPA where the TD placed BAR0 in its configuration space |
//! | ADD_DMA | DMAR.ADD: the device's DMA then walks the TD's S-EPT |
//! | START | TDI.START (the TD authorised it) |
//! | GET_NONCE | the verifier's challenge (the run configuration's `nonce`) |
//! | EVENT_LOG | a piece of the TD's CC event log, kept in order |
//! | REPORT_READY | the reports; with the TDI's evidence bundle (SEAMLESS.TDI.EVIDENCE.RD) and the event log they go out on COM3 for `attest verify` |
//!
//! Everything the TD passes is hostile: a request naming another function, a page count that is
//! not range 0's, a BAR0 it never placed, a piece of the log out of order or past its length is
//! refused (GHCI's INVALID_OPERAND, counted) and changes nothing. A host step the TSM refuses is
//! the host's failure: the run ends, after the cleanup.
//!
//! Until the TD accepts the MMIO, its accesses to BAR0 reach the device through the host
//! (`Machine::device_mmio`, shared MMIO: what a TD that declined the device gets); from the
//! import on, BAR0 is the TD's private MMIO and the host never touches it again.

use seamless_drivers::console::{emit, Ms};
use seamless_drivers::pci::Bdf;
use seamless_drivers::phys::Mmio;
use seamless_drivers::say;
use tsm::Regs;
use tsm_client::guest::{REPORTS_BYTES, REPORT_BYTES};
use tsm_client::host::device::{self, Assignment};
use tsm_client::host::ghci::leaf::status::INVALID_OPERAND;
use tsm_client::host::ghci::vfn::VirtualFunction;
use tsm_client::host::ghci::{Ghci, TdView};
use tsm_client::host::td_device::Request;
use tsm_client::host::{HostError, HostMemory, PumpStats};
use tsm_client::shared;

use seamless_host::device::spdm_connect_pdev;
use seamless_host::mem::DoeLink;
use seamless_host::{Cpu, Failed, LOCK_FLAGS};

use crate::run::Agent;

/// Bytes of CC event log the host keeps (TdTcg2Dxe's log area is 64 KiB).
pub const LOG_MAX: u64 = 64 * 1024;
/// Bytes of evidence bundle the host reads.
const BUNDLE_MAX: usize = 16 * 1024;

/// The NVMe function as the host passes it to the TD: the TD's view of its configuration space,
/// and BAR0 as the host reaches it until the import.
#[derive(Debug)]
pub struct PassThrough {
    /// The TD's view of the function's configuration space.
    pub vfn: VirtualFunction,
    /// BAR0's registers in the host world.
    pub regs: Mmio,
    /// BAR0 is the TD's private MMIO now: the host keeps its hands off.
    pub imported: bool,
    /// Accesses the host passed through (shared MMIO).
    pub accesses: u64,
}

impl PassThrough {
    /// An MMIO access of the TD at `gpa`: the device's register if the TD's BAR0 decodes it and
    /// the host still owns BAR0.
    pub fn mmio(&mut self, gpa: u64, size: u8, value: Option<u64>) -> Option<u64> {
        if self.imported {
            return None;
        }
        let offset = self.vfn.decodes(gpa, size)?;
        self.accesses += 1;
        let halves: &[(u64, u8, u32)] = match size {
            8 => &[(0, 4, 0), (4, 4, 32)],
            1 | 2 | 4 => &[(0, size, 0)],
            _ => return None,
        };
        let mut read = 0u64;
        for &(at, width, shift) in halves {
            match value {
                None => read |= u64::from(self.regs.read_sized(offset + at, width)?) << shift,
                Some(v) => {
                    self.regs.write_sized(offset + at, width, (v >> shift) as u32);
                }
            }
        }
        Some(read)
    }
}

/// What the TD's flow reached, for the run's summary and its checks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// The TDI is CONFIG_LOCKED to the TD (GET_TDI served).
    pub locked: bool,
    /// BAR0 imported and mapped where the TD placed it (MAP_MMIO served).
    pub mapped: Option<u64>,
    /// TDI.START done.
    pub started: bool,
    /// The reports, evidence and event log went out.
    pub attested: bool,
    /// Requests refused.
    pub refused: u64,
}

/// The host's device side of the OVMF TD.
pub struct DeviceHost<'a> {
    /// The device's DOE mailbox.
    pub doe: DoeLink<'a>,
    bdf: Bdf,
    /// BAR0 in host physical memory: `(base, bytes)`.
    bar: (u64, u64),
    /// The assignment as far as it goes.
    pub a: Assignment,
    /// The device exchanges' figures.
    pub stats: PumpStats,
    nonce: [u8; 64],
    lie: bool,
    log: &'a mut [u8],
    log_len: usize,
    log_total: Option<usize>,
    /// What the flow reached.
    pub progress: Progress,
}

impl core::fmt::Debug for DeviceHost<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DeviceHost").field("bdf", &self.bdf).field("progress", &self.progress).finish_non_exhaustive()
    }
}

impl<'a> DeviceHost<'a> {
    /// The host of function `bdf` (BAR0 `bar`) for the TD; `lie`: hand over a changed report.
    pub fn new(doe: DoeLink<'a>, bdf: Bdf, bar: (u64, u64), nonce: [u8; 64], lie: bool, log: &'a mut [u8]) -> Self {
        DeviceHost {
            doe,
            bdf,
            bar,
            a: Assignment::default(),
            stats: PumpStats::default(),
            nonce,
            lie,
            log,
            log_len: 0,
            log_total: None,
            progress: Progress::default(),
        }
    }

    fn function(&self) -> u32 {
        u32::from(self.bdf.rid())
    }

    /// Serves device request `r` (the TD's exposed R10..R13) and returns the answer for its next
    /// VP.ENTER.
    ///
    /// # Errors
    /// [`Failed`] for a host step the TSM refused (the run ends).
    pub fn serve(
        &mut self,
        cpu: &mut Agent,
        ghci: &mut Ghci,
        view: &TdView<'_>,
        pass: &mut PassThrough,
        r: &Regs,
    ) -> Result<Regs, Failed> {
        let refuse = |p: &mut Progress, why: &str| {
            say!("host: device request {:#x} refused: {why}", r.r10);
            p.refused += 1;
            Regs { r10: INVALID_OPERAND, ..Regs::default() }
        };
        let page = r.r12;
        if page & view.shared_bit == 0 || page & 0xFFF != 0 {
            return Ok(refuse(&mut self.progress, "R12 is not a shared page"));
        }
        let Some(frame) = ghci.shared.lookup(cpu, &view.td, page).map_err(|e| Failed::new("shared page", e))? else {
            return Ok(refuse(&mut self.progress, "R12 names a page the TD never shared"));
        };
        let request = match Request::decode([r.r10, r.r11, r.r12, r.r13], page) {
            Ok(q) => q,
            Err(_) => return Ok(refuse(&mut self.progress, "not a request of the table")),
        };
        let function = u64::from(self.function());
        let served = Regs::default();
        match request {
            Request::GetTdi if !self.progress.locked => {
                self.lock(cpu, view)?;
                put(cpu, frame, &self.function().to_le_bytes());
            }
            Request::GetReport { function: f } if f == function && self.progress.locked => {
                let mut report = [0u8; shared::CAPACITY];
                let n = self.a.report_len.min(report.len());
                cpu.read(self.a.msg, &mut report[..n]);
                if self.lie && n > 0 {
                    report[n - 1] ^= 0x01;
                    say!("host: handing the TD an interface report with its last byte changed (ovmf_device=nvme-lying-report)");
                }
                put(cpu, frame, &report[..n]);
            }
            Request::MapMmio { function: f, pages } if f == function && self.progress.locked => {
                let want = self.bar.1 / 4096;
                if pages != want {
                    return Ok(refuse(&mut self.progress, "MAP_MMIO asks for another size than range 0's"));
                }
                let Some(gpa) = pass.vfn.bar0_gpa() else {
                    return Ok(refuse(&mut self.progress, "MAP_MMIO before the TD placed BAR0"));
                };
                if self.progress.mapped.is_some() {
                    return Ok(refuse(&mut self.progress, "MAP_MMIO again"));
                }
                device::import(cpu, &self.a, 0, self.bar.0, pages).map_err(|e| Failed::new("DMABUF.IMPORT", e))?;
                pass.imported = true;
                device::map_mmio(cpu, &view.td, &mut self.a, (self.bar.0, pages), gpa)
                    .map_err(|e| Failed::new("MMIO.MAP", e))?;
                self.progress.mapped = Some(gpa);
                say!(
                    "mmio: BAR0 {:#x} ({pages} pages) imported and mapped at GPA {gpa:#x}, where the TD placed it; the TD accepts it",
                    self.bar.0
                );
            }
            Request::AddDma { function: f } if f == function && self.progress.mapped.is_some() && !self.a.dma => {
                device::dmar_add(cpu, &view.td, &mut self.a).map_err(|e| Failed::new("DMAR.ADD", e))?;
                // From now on a page the TD makes shared may sit in the IOTLB too.
                ghci.conversions.iotlb = true;
                say!("dma: entry added; the device's DMA walks the TD's S-EPT once the TD accepts it");
            }
            Request::Start { function: f } if f == function && self.a.dma && !self.progress.started => {
                device::start(cpu, &mut self.doe, &self.a, &mut self.stats).map_err(|e| Failed::new("TDI.START", e))?;
                self.progress.started = true;
                say!("tdi: RUN (the TD authorised START)");
            }
            Request::GetNonce if self.progress.started => put(cpu, frame, &self.nonce),
            Request::EventLog { offset, total } if self.progress.started => {
                if let Err(why) = self.take_log_piece(cpu, frame, offset, total) {
                    return Ok(refuse(&mut self.progress, why));
                }
            }
            Request::ReportReady { len } if self.progress.started && !self.progress.attested => {
                let mut reports = [0u8; REPORTS_BYTES];
                match take(cpu, frame, &mut reports) {
                    Ok(n) if n == REPORTS_BYTES && len == n as u64 => {}
                    _ => return Ok(refuse(&mut self.progress, "REPORT_READY without the two reports")),
                }
                self.attest(cpu, &reports)?;
            }
            _ => return Ok(refuse(&mut self.progress, "out of order, or names another function")),
        }
        Ok(served)
    }

    /// GET_TDI: connect, IDE, bind and lock.
    fn lock(&mut self, cpu: &mut Agent, view: &TdView<'_>) -> Result<(), Failed> {
        let function = self.function();
        let t = cpu.tsc().now();
        self.a = device::pdev_create(cpu, function).map_err(|e| Failed::new("PDEV", e))?;
        spdm_connect_pdev(cpu, &mut self.doe, self.bdf, &mut self.a).map_err(|e| Failed::new("SPDM.CONNECT", e))?;
        device::ide_setup(cpu, &mut self.doe, &mut self.a, &mut self.stats).map_err(|e| Failed::new("IDE setup", e))?;
        device::bind(cpu, view.td.tdr, function, &mut self.a).map_err(|e| Failed::new("TDI.CREATE", e))?;
        device::lock(cpu, &mut self.doe, LOCK_FLAGS, &mut self.a, &mut self.stats)
            .map_err(|e| Failed::new("TDI.LOCK", e))?;
        self.progress.locked = true;
        let us = cpu.tsc().ticks_to_us(cpu.tsc().now().wrapping_sub(t));
        say!(
            "tdi: {} connected (SPDM, IDE stream {}), bound to the OVMF TD and CONFIG_LOCKED (generation {}) in {} ms; interface report {} bytes",
            self.bdf,
            self.a.stream,
            self.a.generation,
            Ms(us),
            self.a.report_len
        );
        Ok(())
    }

    /// EVENT_LOG: one piece, in order.
    fn take_log_piece(&mut self, cpu: &mut Agent, frame: u64, offset: u64, total: u64) -> Result<(), &'static str> {
        let total = usize::try_from(total).ok().filter(|&t| t > 0 && t <= self.log.len()).ok_or("the log's length")?;
        if *self.log_total.get_or_insert(total) != total {
            return Err("the log's length changed");
        }
        if offset != self.log_len as u64 {
            return Err("a piece out of order");
        }
        let room = total - self.log_len;
        let mut piece = [0u8; shared::CAPACITY];
        let n = take(cpu, frame, &mut piece[..room.min(shared::CAPACITY)]).map_err(|_| "a piece past the log's end")?;
        if n == 0 {
            return Err("an empty piece");
        }
        self.log[self.log_len..self.log_len + n].copy_from_slice(&piece[..n]);
        self.log_len += n;
        Ok(())
    }

    /// REPORT_READY: the reports, the TDI's evidence and the event log out on COM3.
    fn attest(&mut self, cpu: &mut Agent, reports: &[u8; REPORTS_BYTES]) -> Result<(), Failed> {
        let mut bundle = [0u8; BUNDLE_MAX];
        let n = seamless_host::evidence::tdi_bundle(cpu, self.a.tdi, &mut bundle).map_err(|e| {
            say!("host: the TDI's evidence: {e}");
            Failed::new("evidence", "SEAMLESS.TDI.EVIDENCE.RD did not give the bundle")
        })?;
        emit("report.bin", &reports[..REPORT_BYTES]);
        emit("report-snp.bin", &reports[REPORT_BYTES..]);
        emit("evidence.bin", &bundle[..n]);
        let complete = self.log_total == Some(self.log_len);
        if complete {
            emit("ovmf-ccel.bin", &self.log[..self.log_len]);
        }
        say!(
            "attestation: the OVMF TD's report over the verifier's nonce, the TDI's evidence ({n} bytes) and {}",
            if complete { "its CC event log" } else { "no event log (the TD handed over none, or not all of it)" }
        );
        self.progress.attested = true;
        Ok(())
    }
}

/// Puts `data` in the shared page at `frame`, `[len][data]`.
fn put(cpu: &mut Agent, frame: u64, data: &[u8]) {
    let (len, data) = shared::frame(data);
    cpu.write(frame, &len.to_le_bytes());
    cpu.write(frame + 8, data);
}

/// Copies what the TD left in the shared page at `frame` into `buf`; returns its length.
fn take(cpu: &mut Agent, frame: u64, buf: &mut [u8]) -> Result<usize, HostError> {
    let mut len = [0u8; 8];
    cpu.read(frame, &mut len);
    let n = shared::checked_len(u64::from_le_bytes(len), buf.len()).map_err(HostError::SharedLength)?;
    cpu.read(frame + 8, &mut buf[..n]);
    Ok(n)
}
