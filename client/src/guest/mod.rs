//! The guest's sequence of calls (a TD's part in device assignment): accept the memory the host
//! AUGed, ask the host for a TDI and read it from the TSM, check the host's copy of the interface
//! report against the TSM's digest, have the host map its MMIO and accept it, have the host add
//! the DMA entry and accept it, authorise START for the lock it checked, use the device through
//! its own mapping, and ask for its report.
//!
//! Every step that needs the host ends in TDG.VP.VMCALL, one request of [`crate::vmcall`]'s
//! table. In the TD (the `seamless-guest` binary) TDCALL is the instruction and returns once the
//! host served the request and resumed the vCPU ([`Step::Served`]); [`Guest::bring_up`] chains
//! the steps there. Where a transport runs the guest in turns with the host in one program (the
//! harness's direct call into `Tsm::guest_call`), the VMCALL returns the exit instead
//! ([`Step::Vmcall`]) and the caller lets the host serve it before the next step.
//!
//! What the host hands over arrives in the shared page and is hostile: the function id is only
//! believed once TDG.TDI.RD answers for it, the interface report only once it hashes to the
//! digest the TSM gives, and every length is bounded before use.

pub mod disk;
pub mod probe;
pub mod result;

use core::fmt;

use sha2::{Digest, Sha384};
use tsm::abi::guest::leaf as g;
use tsm::tdisp::InterfaceReport;
use tsm::{Regs, Status, TdExit};

use crate::{shared, vmcall, PAGE};

/// One guest call: the ABI's registers in (RAX = leaf), out (RAX = status). Returns the TD exit
/// when the call made the vCPU leave guest mode and the transport hands control to the host
/// (in-process); a TDCALL instruction returns only once the vCPU runs again, with `None`.
pub trait Tdcall {
    /// Makes the call; `regs` holds the outputs afterwards.
    fn tdcall(&mut self, regs: &mut Regs) -> Option<TdExit>;
}

/// The guest's view of memory: private pages through its MAPPED leaves, the device's registers
/// through its MMIO_MAPPED leaves, and the page it shares with the host.
pub trait GuestMemory {
    /// Reads private memory at `gpa` (within one page).
    ///
    /// # Errors
    /// [`GuestError::NotMapped`] unless a MAPPED 4K leaf backs the page.
    fn read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), GuestError>;
    /// Writes private memory at `gpa` (within one page).
    ///
    /// # Errors
    /// As for [`GuestMemory::read`].
    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), GuestError>;
    /// Reads the 32-bit device register at `gpa`.
    ///
    /// # Errors
    /// [`GuestError::NotMapped`] unless an MMIO_MAPPED 4K leaf backs the page;
    /// [`GuestError::MmioOutside`] if it points outside the device's registers.
    fn mmio_read_u32(&mut self, gpa: u64) -> Result<u32, GuestError>;
    /// Maps `pages` device pages from `gpa`, which the guest accepted, into its own page tables
    /// (uncached), as a driver maps registers before it uses them.
    ///
    /// # Errors
    /// [`GuestError::MmioOutside`] if the range is not one the guest can map.
    fn map_device(&mut self, gpa: u64, pages: u64) -> Result<(), GuestError>;
    /// The shared page's address as the guest names it to the host.
    fn shared_addr(&self) -> u64;
    /// Reads the shared page at `offset`.
    fn shared_read(&mut self, offset: u64, buf: &mut [u8]);
    /// Writes the shared page at `offset`.
    fn shared_write(&mut self, offset: u64, data: &[u8]);
}

/// What stopped the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestError {
    /// A guest leaf returned an error.
    Call {
        /// The leaf's name.
        leaf: &'static str,
        /// The status.
        status: Status,
    },
    /// A guest leaf exited to the host where the guest expected it to complete (or the reverse).
    UnexpectedExit {
        /// The leaf's name.
        leaf: &'static str,
    },
    /// The host answered a request with a failure (R10 of the resumed VMCALL, GHCI's status).
    HostRefused {
        /// The request (R10 of the VMCALL).
        request: u64,
        /// The status the host returned.
        status: u64,
    },
    /// No usable leaf at the GPA: the walk stopped, or the leaf is in `state` (not MAPPED for
    /// RAM, not MMIO_MAPPED for MMIO).
    NotMapped {
        /// The GPA.
        gpa: u64,
        /// The S-EPT state code found (0xFF: the walk failed).
        state: u8,
    },
    /// An MMIO_MAPPED leaf pointing outside the device's registers.
    MmioOutside {
        /// The GPA.
        gpa: u64,
        /// The host address the leaf holds.
        hpa: u64,
    },
    /// The host's copy of the interface report does not hash to the TSM's digest.
    ReportMismatch,
    /// The interface report (which hashes right) names no MMIO range 0 the guest can map.
    ReportRanges,
    /// The host's shared page holds a length that cannot be right.
    BadSharedLength(u64),
    /// The TDI is not in the state the guest needs.
    TdiState {
        /// What the guest wanted.
        wanted: u64,
        /// What TDG.TDI.RD said.
        found: u64,
    },
    /// The TD's MRCONFIGID names no plan it knows (its first byte; the rest must be zero).
    UnknownPlan(u8),
    /// The NVMe driver stopped.
    Nvme(crate::nvme::NvmeError),
}

impl From<crate::nvme::NvmeError> for GuestError {
    fn from(e: crate::nvme::NvmeError) -> GuestError {
        GuestError::Nvme(e)
    }
}

impl fmt::Display for GuestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            GuestError::Call { leaf, status } => {
                write!(f, "{leaf} returned {} ({:#018x})", status.name().unwrap_or("unknown status"), status.0)
            }
            GuestError::UnexpectedExit { leaf } => write!(f, "{leaf}: unexpected TD exit"),
            GuestError::HostRefused { request, status } => {
                let name = vmcall::row(request).map_or("an unknown request", |r| r.name);
                write!(f, "the host refused {name} ({request:#x}): status {status:#x}")
            }
            GuestError::NotMapped { gpa, state } => {
                write!(f, "GPA {gpa:#x}: no usable S-EPT leaf (state {state:#x})")
            }
            GuestError::MmioOutside { gpa, hpa } => {
                write!(f, "GPA {gpa:#x}: MMIO leaf at {hpa:#x} outside the device's registers")
            }
            GuestError::ReportMismatch => f.write_str("the host's interface report does not match the TSM's digest"),
            GuestError::ReportRanges => f.write_str("the interface report has no usable MMIO range 0"),
            GuestError::BadSharedLength(n) => write!(f, "shared page: length {n} does not fit"),
            GuestError::TdiState { wanted, found } => write!(f, "TDI state {found}, wanted {wanted}"),
            GuestError::UnknownPlan(b) => write!(f, "MRCONFIGID names no plan this TD knows (first byte {b:#x})"),
            GuestError::Nvme(e) => write!(f, "NVMe: {e}"),
        }
    }
}

/// How a step that asked the host for something ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// The VMCALL left guest mode: the host must serve `args` (R10..R13) and VP.ENTER again.
    Vmcall([u64; 4]),
    /// The VMCALL returned: the host served it already.
    Served,
}

/// Bytes of the native report (`attest::report::Report`).
pub const REPORT_BYTES: usize = attest::report::REPORT_BYTES;
/// Bytes of its SNP-format export.
pub const SNP_BYTES: usize = attest::snp::SNP_REPORT_BYTES;
/// What REPORT_READY hands over: the native report, then the SNP-format export.
pub const REPORTS_BYTES: usize = REPORT_BYTES + SNP_BYTES;

/// TDISP states as TDG.TDI.RD field 0 reports them.
pub mod tdi_state {
    /// CONFIG_UNLOCKED.
    pub const CONFIG_UNLOCKED: u64 = 0;
    /// CONFIG_LOCKED.
    pub const CONFIG_LOCKED: u64 = 1;
    /// RUN.
    pub const RUN: u64 = 2;
    /// ERROR.
    pub const ERROR: u64 = 3;
}

/// One guest call that must complete without leaving guest mode.
///
/// # Errors
/// [`GuestError::UnexpectedExit`], [`GuestError::Call`].
pub fn call<T: Tdcall + ?Sized>(t: &mut T, leaf: &'static str, regs: Regs) -> Result<Regs, GuestError> {
    let mut r = regs;
    if t.tdcall(&mut r).is_some() {
        return Err(GuestError::UnexpectedExit { leaf });
    }
    if r.status() != Status::SUCCESS {
        return Err(GuestError::Call { leaf, status: r.status() });
    }
    Ok(r)
}

/// TDG.VP.VMCALL of `request` ([`crate::vmcall`]) with `arg` in R11, the shared page in R12 and
/// `arg2` in R13. Under a real TDCALL it returns once the host resumed the vCPU: R10 then holds
/// the host's status, and anything but 0 is [`GuestError::HostRefused`].
///
/// # Errors
/// [`GuestError`].
pub fn vmcall<T: Tdcall + GuestMemory + ?Sized>(
    t: &mut T,
    request: u64,
    arg: u64,
    arg2: u64,
) -> Result<Step, GuestError> {
    let mut r = Regs {
        r10: request,
        r11: arg,
        r12: t.shared_addr(),
        r13: arg2,
        ..Regs::call(g::VP_VMCALL, TdExit::VMCALL_EXPOSED, 0, 0, 0)
    };
    match t.tdcall(&mut r) {
        Some(exit @ TdExit::Vmcall { .. }) => Ok(Step::Vmcall(exit.args())),
        Some(_) => Err(GuestError::UnexpectedExit { leaf: "TDG.VP.VMCALL" }),
        None if r.status() != Status::SUCCESS => Err(GuestError::Call { leaf: "TDG.VP.VMCALL", status: r.status() }),
        None if r.r10 != 0 => Err(GuestError::HostRefused { request, status: r.r10 }),
        None => Ok(Step::Served),
    }
}

/// A step that must have been served already (a transport that executes TDCALL).
///
/// # Errors
/// [`GuestError::UnexpectedExit`] for [`Step::Vmcall`].
pub fn served(step: Step) -> Result<(), GuestError> {
    match step {
        Step::Served => Ok(()),
        Step::Vmcall(_) => Err(GuestError::UnexpectedExit { leaf: "TDG.VP.VMCALL" }),
    }
}

/// TDG.MEM.PAGE.ACCEPT of the page at `gpa` and `level`. An exit (the host must fix the
/// mapping first) is [`GuestError::UnexpectedExit`].
///
/// # Errors
/// [`GuestError`].
pub fn accept<T: Tdcall + ?Sized>(t: &mut T, gpa: u64, level: u8) -> Result<(), GuestError> {
    call(t, "TDG.MEM.PAGE.ACCEPT", Regs::call(g::MEM_PAGE_ACCEPT, gpa | u64::from(level), 0, 0, 0)).map(|_| ())
}

/// TDG.MEM.PAGE.ACCEPT of `pages` 4K pages from `gpa`.
///
/// # Errors
/// [`GuestError`] of the first page that fails.
pub fn accept_pages<T: Tdcall + ?Sized>(t: &mut T, gpa: u64, pages: u64) -> Result<(), GuestError> {
    for i in 0..pages {
        accept(t, gpa + i * PAGE, 0)?;
    }
    Ok(())
}

/// TDG.MMIO.ACCEPT of `pages` pages of report range `range` of `function`'s TDI, mapped at
/// `gpa` onwards (R9: each page's offset in the range).
///
/// # Errors
/// [`GuestError`] of the first page that fails.
pub fn accept_mmio<T: Tdcall + ?Sized>(
    t: &mut T,
    function: u64,
    range: u64,
    gpa: u64,
    pages: u64,
) -> Result<(), GuestError> {
    for i in 0..pages {
        let regs = Regs { r9: i * PAGE, ..Regs::call(g::MMIO_ACCEPT, gpa + i * PAGE, range, function, 0) };
        call(t, "TDG.MMIO.ACCEPT", regs)?;
    }
    Ok(())
}

/// SEAMLESS.TDG.TDI.START: the guest authorises START of `function`'s TDI for the lock
/// `generation` it checked.
///
/// # Errors
/// [`GuestError`].
pub fn authorise_start<T: Tdcall + ?Sized>(t: &mut T, function: u64, generation: u64) -> Result<(), GuestError> {
    call(t, "SEAMLESS.TDG.TDI.START", Regs::call(g::TDI_START, function, generation, 0, 0)).map(|_| ())
}

/// TDG.TDI.RD of `field` (0 state, 1 lock generation, 2 report digest written at `out_gpa`).
///
/// # Errors
/// [`GuestError`].
pub fn tdi_rd<T: Tdcall + ?Sized>(t: &mut T, function: u64, field: u64, out_gpa: u64) -> Result<u64, GuestError> {
    Ok(call(t, "TDG.TDI.RD", Regs::call(g::TDI_RD, function, field, out_gpa, 0))?.r9)
}

/// Copies the data the host left in the shared page (`[len][data]`); returns its length.
///
/// # Errors
/// [`GuestError::BadSharedLength`] if the length field exceeds the page or `buf`.
pub fn take_shared<M: GuestMemory + ?Sized>(m: &mut M, buf: &mut [u8]) -> Result<usize, GuestError> {
    let mut len = [0u8; 8];
    m.shared_read(0, &mut len);
    let n = shared::checked_len(u64::from_le_bytes(len), buf.len()).map_err(GuestError::BadSharedLength)?;
    m.shared_read(8, &mut buf[..n]);
    Ok(n)
}

/// Puts `data` in the shared page.
pub fn put_shared<M: GuestMemory + ?Sized>(m: &mut M, data: &[u8]) {
    let (len, data) = shared::frame(data);
    m.shared_write(0, &len.to_le_bytes());
    m.shared_write(8, data);
}

/// Puts the result `r` in the shared page and makes the RESULT request of its kind.
///
/// # Errors
/// [`GuestError`].
pub fn report_result<T: Tdcall + GuestMemory + ?Sized, R: result::Record>(
    t: &mut T,
    r: &R,
) -> Result<Step, GuestError> {
    put_shared(t, zerocopy::IntoBytes::as_bytes(r));
    vmcall(t, vmcall::RESULT, R::KIND, 0)
}

/// Where the guest keeps things (GPAs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestLayout {
    /// First private page the guest accepts (digests, REPORTDATA, the report, its export).
    pub work: u64,
    /// How many.
    pub work_pages: u64,
    /// Where the device's BAR0 appears.
    pub bar_gpa: u64,
    /// The shared page the guest names in its requests: its offset from the shared bit (GPAW-1).
    pub shared_offset: u64,
}

/// The demo TD's layout, one copy for its two sides: the guest image (`guest/`, whose page
/// tables leave the device window at 1 GiB for the accepted MMIO, and whose image stays clear of
/// these pages)
/// and the host agent that AUGs the work pages and maps the BAR. Twenty-four work pages from
/// 1 MiB: digests, REPORTDATA, the native report, its SNP export; then the NVMe driver's five
/// (admin and I/O queues, Identify) and fifteen of READ data. BAR0 at 1 GiB. The shared page at
/// 8 MiB into the shared half (inside the 1 GiB of it the guest's page tables map).
pub const DEMO_LAYOUT: GuestLayout =
    GuestLayout { work: 0x10_0000, work_pages: 4 + 5 + 15, bar_gpa: 0x4000_0000, shared_offset: 0x80_0000 };

/// What the TD does once its device runs. The host chooses it when it creates the TD and the TSM
/// measures it: the first byte of MRCONFIGID (TD_PARAMS at TDH.MNG.INIT; TDX's field for a
/// configuration the TD's owner does not define), the rest zero. The TD reads it back from its own
/// TDREPORT ([`Guest::plan`]) and the verifier sees it in the report, so a host cannot run the TD
/// in another plan than the one the report shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// The demo: read the drive into private memory, the DMA fault cases, the differential test,
    /// then attest (MRCONFIGID all zero).
    Assign = 0,
    /// A dma-buf revoke while READs are outstanding; no report.
    Revoke = 1,
    /// Mode `attack`: the guest's side of the malicious-host cases; no report.
    Probe = 2,
}

impl Plan {
    /// The MRCONFIGID that names the plan.
    pub const fn config_id(self) -> [u8; 48] {
        let mut id = [0u8; 48];
        id[0] = self as u8;
        id
    }

    /// The plan an MRCONFIGID names.
    ///
    /// # Errors
    /// [`GuestError::UnknownPlan`] for an unknown first byte or any other byte set.
    pub fn from_config_id(id: &[u8; 48]) -> Result<Plan, GuestError> {
        if id[1..].iter().any(|&b| b != 0) {
            return Err(GuestError::UnknownPlan(id[0]));
        }
        match id[0] {
            0 => Ok(Plan::Assign),
            1 => Ok(Plan::Revoke),
            2 => Ok(Plan::Probe),
            other => Err(GuestError::UnknownPlan(other)),
        }
    }
}

/// The most pages of report range 0 the guest maps: one page table of the TD's device window
/// (2 MiB); a BAR the guest drives is far smaller.
pub const MAX_MMIO_PAGES: u64 = 512;

/// What the guest found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Findings {
    /// Lock generation the guest authorised.
    pub generation: u64,
    /// SHA-384 of the interface report, from the TSM.
    pub report_digest: [u8; 48],
    /// Bytes of the interface report the host handed over.
    pub report_len: usize,
    /// Pages of report range 0 (the BAR the guest maps), from the checked report.
    pub mmio_pages: u64,
    /// NVMe CAP through the private mapping.
    pub cap: u64,
    /// NVMe VS through the private mapping.
    pub vs: u32,
}

/// The demo guest's steps, in the order it takes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Guest {
    /// The function id of the TDI it uses (0 until the host named one and TDG.TDI.RD answered
    /// for it).
    pub function: u64,
    /// Its layout.
    pub layout: GuestLayout,
    /// Pages at the end of report range 0 it leaves unaccepted: 0, but 1 in the probe plan,
    /// which loads that page last to show the TSM never maps a page the TD did not accept.
    pub hold_back: u64,
    /// What it found so far.
    pub findings: Findings,
}

impl Guest {
    /// The guest with `layout`, before the host named its TDI.
    pub fn new(layout: GuestLayout) -> Guest {
        let findings = Findings { generation: 0, report_digest: [0; 48], report_len: 0, mmio_pages: 0, cap: 0, vs: 0 };
        Guest { function: 0, layout, hold_back: 0, findings }
    }

    /// TDG.MEM.PAGE.ACCEPT of the work pages the host AUGed.
    ///
    /// # Errors
    /// [`GuestError`] of the first page that fails.
    pub fn accept_memory<T: Tdcall + ?Sized>(&self, t: &mut T) -> Result<(), GuestError> {
        accept_pages(t, self.layout.work, self.layout.work_pages)
    }

    /// The TD's plan, from MRCONFIGID in its own TDREPORT (TDG.MR.REPORT into the native
    /// report's page, REPORTDATA zero).
    ///
    /// # Errors
    /// [`GuestError`]; [`GuestError::UnknownPlan`].
    pub fn plan<T: Tdcall + GuestMemory + ?Sized>(&self, t: &mut T) -> Result<Plan, GuestError> {
        let (out, reportdata) = (self.layout.work + 2 * PAGE, self.layout.work + PAGE);
        t.write(reportdata, &[0; 64])?;
        call(t, "TDG.MR.REPORT", Regs::call(g::MR_REPORT, out, reportdata, 0, 0))?;
        let mut bytes = [0u8; attest::tdreport::TDREPORT_BYTES];
        t.read(out, &mut bytes)?;
        let report = attest::tdreport::TdReport::read_from(&bytes).map_err(|_| GuestError::UnknownPlan(0xFF))?;
        Plan::from_config_id(&report.td_info.mr_config_id)
    }

    /// Asks the host for a TDI (GET_TDI): it binds and locks one to this TD first.
    ///
    /// # Errors
    /// [`GuestError`].
    pub fn request_tdi<T: Tdcall + GuestMemory + ?Sized>(&mut self, t: &mut T) -> Result<Step, GuestError> {
        vmcall(t, vmcall::GET_TDI, 0, 0)
    }

    /// Takes the function id the host named from the shared page, reads the TDI's state
    /// (CONFIG_LOCKED wanted), lock generation and report digest from the TSM (which answers
    /// only for a TDI of this TD), then asks the host for the report (GET_REPORT).
    ///
    /// # Errors
    /// [`GuestError`]; [`GuestError::BadSharedLength`] unless the host left 4 bytes.
    pub fn read_tdi<T: Tdcall + GuestMemory + ?Sized>(&mut self, t: &mut T) -> Result<Step, GuestError> {
        let mut id = [0u8; 4];
        let n = take_shared(t, &mut id)?;
        if n != id.len() {
            return Err(GuestError::BadSharedLength(n as u64));
        }
        let function = u64::from(u32::from_le_bytes(id));
        let state = tdi_rd(t, function, 0, 0)?;
        if state != tdi_state::CONFIG_LOCKED {
            return Err(GuestError::TdiState { wanted: tdi_state::CONFIG_LOCKED, found: state });
        }
        self.function = function;
        self.findings.generation = tdi_rd(t, function, 1, 0)?;
        tdi_rd(t, function, 2, self.layout.work)?;
        let mut digest = [0u8; 48];
        t.read(self.layout.work, &mut digest)?;
        self.findings.report_digest = digest;
        vmcall(t, vmcall::GET_REPORT, function, 0)
    }

    /// Checks the report the host put in the shared page against the TSM's digest, then takes
    /// the size of its MMIO range 0 (the BAR it will map) from it.
    ///
    /// # Errors
    /// [`GuestError::ReportMismatch`], [`GuestError::BadSharedLength`],
    /// [`GuestError::ReportRanges`].
    pub fn check_report<M: GuestMemory + ?Sized>(&mut self, m: &mut M) -> Result<(), GuestError> {
        let mut report = [0u8; shared::CAPACITY];
        let n = take_shared(m, &mut report)?;
        if Sha384::digest(&report[..n])[..] != self.findings.report_digest[..] {
            return Err(GuestError::ReportMismatch);
        }
        // The bytes are the TSM's (they hash to its digest), and the TSM parsed and checked them
        // at TDI.LOCK; the guest parses them again only to read the range it maps.
        let parsed = InterfaceReport::parse(&report[..n]).map_err(|_| GuestError::ReportRanges)?;
        let range = parsed.ranges().first().ok_or(GuestError::ReportRanges)?;
        let pages = u64::from(range.pages);
        if pages == 0 || pages > MAX_MMIO_PAGES {
            return Err(GuestError::ReportRanges);
        }
        self.findings.report_len = n;
        self.findings.mmio_pages = pages;
        Ok(())
    }

    /// Asks the host to import range 0 and map it at the layout's BAR GPA (MAP_MMIO).
    ///
    /// # Errors
    /// [`GuestError`].
    pub fn request_mmio<T: Tdcall + GuestMemory + ?Sized>(&mut self, t: &mut T) -> Result<Step, GuestError> {
        vmcall(t, vmcall::MAP_MMIO, self.function, self.findings.mmio_pages)
    }

    /// TDG.MMIO.ACCEPT of the pages of report range 0 mapped at the BAR's GPA (all of them, but
    /// the last [`Guest::hold_back`]), then maps the accepted pages into its own page tables.
    ///
    /// # Errors
    /// [`GuestError`] of the first page that fails.
    pub fn accept_mmio<T: Tdcall + GuestMemory + ?Sized>(&self, t: &mut T) -> Result<(), GuestError> {
        let pages = self.findings.mmio_pages.saturating_sub(self.hold_back);
        accept_mmio(t, self.function, 0, self.layout.bar_gpa, pages)?;
        t.map_device(self.layout.bar_gpa, pages)
    }

    /// Asks the host to add the trusted IOMMU's entry for the TDI (ADD_DMA).
    ///
    /// # Errors
    /// [`GuestError`].
    pub fn request_dma<T: Tdcall + GuestMemory + ?Sized>(&mut self, t: &mut T) -> Result<Step, GuestError> {
        vmcall(t, vmcall::ADD_DMA, self.function, 0)
    }

    /// TDG.DMAR.ACCEPT, then the START authorisation for the lock generation it read.
    ///
    /// # Errors
    /// [`GuestError`].
    pub fn accept_dma_and_authorise<T: Tdcall + ?Sized>(&self, t: &mut T) -> Result<(), GuestError> {
        call(t, "TDG.DMAR.ACCEPT", Regs::call(g::DMAR_ACCEPT, self.function, 0, 0, 0))?;
        authorise_start(t, self.function, self.findings.generation)
    }

    /// Asks the host to start the TDI it authorised (START).
    ///
    /// # Errors
    /// [`GuestError`].
    pub fn request_start<T: Tdcall + GuestMemory + ?Sized>(&mut self, t: &mut T) -> Result<Step, GuestError> {
        vmcall(t, vmcall::START, self.function, 0)
    }

    /// Checks the TDI runs, reads NVMe CAP and VS through the private mapping and hands them to
    /// the host (RESULT, [`result::Registers`]).
    ///
    /// # Errors
    /// [`GuestError`].
    pub fn use_device<T: Tdcall + GuestMemory + ?Sized>(&mut self, t: &mut T) -> Result<Step, GuestError> {
        let state = tdi_rd(t, self.function, 0, 0)?;
        if state != tdi_state::RUN {
            return Err(GuestError::TdiState { wanted: tdi_state::RUN, found: state });
        }
        let bar = self.layout.bar_gpa;
        let lo = t.mmio_read_u32(bar)?;
        let hi = t.mmio_read_u32(bar + 4)?;
        self.findings.cap = u64::from(hi) << 32 | u64::from(lo);
        self.findings.vs = t.mmio_read_u32(bar + 8)?;
        report_result(t, &result::Registers::new(self.findings.cap, self.findings.vs))
    }

    /// The device flow from the host's first TDI to a running device whose registers the guest
    /// read, for a transport whose VMCALLs return once served (a TD executing TDCALL).
    ///
    /// # Errors
    /// [`GuestError`] of the first step that fails.
    pub fn bring_up<T: Tdcall + GuestMemory + ?Sized>(&mut self, t: &mut T) -> Result<(), GuestError> {
        served(self.request_tdi(t)?)?;
        served(self.read_tdi(t)?)?;
        self.check_report(t)?;
        served(self.request_mmio(t)?)?;
        self.accept_mmio(t)?;
        served(self.request_dma(t)?)?;
        self.accept_dma_and_authorise(t)?;
        served(self.request_start(t)?)?;
        served(self.use_device(t)?)
    }

    /// What the guest sees of its device after the host revoked the BAR: the TDISP state from
    /// TDG.TDI.RD.
    ///
    /// # Errors
    /// [`GuestError`] of TDG.TDI.RD.
    pub fn tdi_state<T: Tdcall + ?Sized>(&self, t: &mut T) -> Result<u64, GuestError> {
        tdi_rd(t, self.function, 0, 0)
    }

    /// Asks the host for the verifier's challenge (GET_NONCE).
    ///
    /// # Errors
    /// [`GuestError`].
    pub fn request_nonce<T: Tdcall + GuestMemory + ?Sized>(&mut self, t: &mut T) -> Result<Step, GuestError> {
        vmcall(t, vmcall::GET_NONCE, 0, 0)
    }

    /// Puts the challenge in REPORTDATA, calls SEAMLESS.TDG.MR.ATTEST for the native report and
    /// for its SNP-format export, and hands both to the host through the shared page.
    ///
    /// # Errors
    /// [`GuestError`]; [`GuestError::BadSharedLength`] if the TSM wrote another size.
    pub fn attest<T: Tdcall + GuestMemory + ?Sized>(&self, t: &mut T) -> Result<Step, GuestError> {
        let mut nonce = [0u8; 64];
        let n = take_shared(t, &mut nonce)?;
        if n != nonce.len() {
            return Err(GuestError::BadSharedLength(n as u64));
        }
        let reportdata = self.layout.work + PAGE;
        let native = self.layout.work + 2 * PAGE;
        let snp = self.layout.work + 3 * PAGE;
        t.write(reportdata, &nonce)?;
        let mut both = [0u8; REPORTS_BYTES];
        let (first, second) = both.split_at_mut(REPORT_BYTES);
        for (format, out, buf) in [(0, native, first), (1, snp, second)] {
            let r = call(t, "SEAMLESS.TDG.MR.ATTEST", Regs::call(g::MR_ATTEST, out, reportdata, format, 0))?;
            if r.r9 != buf.len() as u64 {
                return Err(GuestError::BadSharedLength(r.r9));
            }
            t.read(out, buf)?;
        }
        put_shared(t, &both);
        vmcall(t, vmcall::REPORT_READY, REPORTS_BYTES as u64, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_from_config_id_rejects_an_unknown_plan_and_any_other_byte() {
        let mut id = [0u8; 48];
        id[0] = 3;
        assert_eq!(Plan::from_config_id(&id), Err(GuestError::UnknownPlan(3)));
        for at in [1, 47] {
            let mut id = Plan::Revoke.config_id();
            id[at] = 1;
            assert_eq!(Plan::from_config_id(&id), Err(GuestError::UnknownPlan(1)), "byte {at}");
        }
    }

    #[test]
    fn plan_round_trips_and_assign_is_all_zero() {
        assert_eq!(Plan::Assign.config_id(), [0; 48]);
        for p in [Plan::Assign, Plan::Revoke, Plan::Probe] {
            assert_eq!(Plan::from_config_id(&p.config_id()), Ok(p));
        }
    }
}
