//! The guest's sequence of calls (a TD's part in device assignment): accept the memory the host
//! AUGed, read the TDI from the TSM, check the host's copy of the interface report against the
//! TSM's digest, accept the MMIO mappings and the DMA entry, authorise START for the lock it
//! checked, use the device through its own mapping, and ask for its report.
//!
//! Every step that needs the host ends in TDG.VP.VMCALL. Where the transport runs the guest in
//! turns with the host in one program (the firmware's in-process guest), the VMCALL returns the
//! exit ([`Step::Vmcall`]) and the caller lets the host serve it and VP.ENTER before the next
//! step; under a real TDCALL the VMCALL returns once the host resumed the vCPU
//! ([`Step::Served`]).

use core::fmt;

use sha2::{Digest, Sha384};
use tsm::abi::guest::leaf as g;
use tsm::{Regs, Status, TdExit};

use crate::host::device::vmcall;
use crate::{shared, PAGE};

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
    /// The host's shared page holds a length that cannot be right.
    BadSharedLength(u64),
    /// The TDI is not in the state the guest needs.
    TdiState {
        /// What the guest wanted.
        wanted: u64,
        /// What TDG.TDI.RD said.
        found: u64,
    },
}

impl fmt::Display for GuestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            GuestError::Call { leaf, status } => {
                write!(f, "{leaf} returned {} ({:#018x})", status.name().unwrap_or("unknown status"), status.0)
            }
            GuestError::UnexpectedExit { leaf } => write!(f, "{leaf}: unexpected TD exit"),
            GuestError::NotMapped { gpa, state } => {
                write!(f, "GPA {gpa:#x}: no usable S-EPT leaf (state {state:#x})")
            }
            GuestError::MmioOutside { gpa, hpa } => {
                write!(f, "GPA {gpa:#x}: MMIO leaf at {hpa:#x} outside the device's registers")
            }
            GuestError::ReportMismatch => f.write_str("the host's interface report does not match the TSM's digest"),
            GuestError::BadSharedLength(n) => write!(f, "shared page: length {n} does not fit"),
            GuestError::TdiState { wanted, found } => write!(f, "TDI state {found}, wanted {wanted}"),
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

/// TDG.VP.VMCALL with `request` in R10, `arg` in R11 and the shared page in R12.
///
/// # Errors
/// [`GuestError`].
pub fn vmcall<T: Tdcall + GuestMemory + ?Sized>(t: &mut T, request: u64, arg: u64) -> Result<Step, GuestError> {
    let mut r = Regs { r10: request, r11: arg, r12: t.shared_addr(), ..Regs::call(g::VP_VMCALL, 0, 0, 0, 0) };
    match t.tdcall(&mut r) {
        Some(exit @ TdExit::Vmcall { .. }) => Ok(Step::Vmcall(exit.args())),
        None if r.status() == Status::SUCCESS => Ok(Step::Served),
        _ if r.status() != Status::SUCCESS => Err(GuestError::Call { leaf: "TDG.VP.VMCALL", status: r.status() }),
        _ => Err(GuestError::UnexpectedExit { leaf: "TDG.VP.VMCALL" }),
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

/// Where the guest keeps things (GPAs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestLayout {
    /// First private page the guest accepts (digests, REPORTDATA, the report, its export).
    pub work: u64,
    /// How many.
    pub work_pages: u64,
    /// Where the device's BAR0 appears.
    pub bar_gpa: u64,
}

/// The demo TD's layout, one copy for its two sides: the guest image (`guest/`, whose page
/// tables map the device window at 1 GiB uncached and whose image stays clear of these pages)
/// and the host agent that AUGs the work pages and maps the BAR. Twenty-four work pages from
/// 1 MiB: digests, REPORTDATA, the native report, its SNP export; then the NVMe driver's five
/// (admin and I/O queues, Identify) and fifteen of READ data. BAR0 at 1 GiB.
pub const DEMO_LAYOUT: GuestLayout = GuestLayout { work: 0x10_0000, work_pages: 4 + 5 + 15, bar_gpa: 0x4000_0000 };

/// What the guest found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Findings {
    /// Lock generation the guest authorised.
    pub generation: u64,
    /// SHA-384 of the interface report, from the TSM.
    pub report_digest: [u8; 48],
    /// Bytes of the interface report the host handed over.
    pub report_len: usize,
    /// NVMe CAP through the private mapping.
    pub cap: u64,
    /// NVMe VS through the private mapping.
    pub vs: u32,
}

/// The demo guest's steps, in the order it takes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Guest {
    /// The function id of the TDI it uses.
    pub function: u64,
    /// Its layout.
    pub layout: GuestLayout,
    /// What it found so far.
    pub findings: Findings,
}

impl Guest {
    /// The guest using the TDI of `function`.
    pub fn new(function: u32, layout: GuestLayout) -> Guest {
        let findings = Findings { generation: 0, report_digest: [0; 48], report_len: 0, cap: 0, vs: 0 };
        Guest { function: u64::from(function), layout, findings }
    }

    /// TDG.MEM.PAGE.ACCEPT of the work pages the host AUGed.
    ///
    /// # Errors
    /// [`GuestError`] of the first page that fails.
    pub fn accept_memory<T: Tdcall + ?Sized>(&self, t: &mut T) -> Result<(), GuestError> {
        accept_pages(t, self.layout.work, self.layout.work_pages)
    }

    /// Reads the TDI's state (CONFIG_LOCKED wanted), lock generation and report digest from the
    /// TSM, then asks the host for the report.
    ///
    /// # Errors
    /// [`GuestError`].
    pub fn read_tdi<T: Tdcall + GuestMemory + ?Sized>(&mut self, t: &mut T) -> Result<Step, GuestError> {
        let state = tdi_rd(t, self.function, 0, 0)?;
        if state != tdi_state::CONFIG_LOCKED {
            return Err(GuestError::TdiState { wanted: tdi_state::CONFIG_LOCKED, found: state });
        }
        self.findings.generation = tdi_rd(t, self.function, 1, 0)?;
        tdi_rd(t, self.function, 2, self.layout.work)?;
        let mut digest = [0u8; 48];
        t.read(self.layout.work, &mut digest)?;
        self.findings.report_digest = digest;
        vmcall(t, vmcall::GET_REPORT, self.function)
    }

    /// Checks the report the host put in the shared page against the TSM's digest.
    ///
    /// # Errors
    /// [`GuestError::ReportMismatch`], [`GuestError::BadSharedLength`].
    pub fn check_report<M: GuestMemory + ?Sized>(&mut self, m: &mut M) -> Result<(), GuestError> {
        let mut report = [0u8; shared::CAPACITY];
        let n = take_shared(m, &mut report)?;
        if Sha384::digest(&report[..n])[..] != self.findings.report_digest[..] {
            return Err(GuestError::ReportMismatch);
        }
        self.findings.report_len = n;
        Ok(())
    }

    /// TDG.MMIO.ACCEPT of every page of report range 0 mapped at the BAR's GPA.
    ///
    /// # Errors
    /// [`GuestError`] of the first page that fails.
    pub fn accept_mmio<T: Tdcall + ?Sized>(&self, t: &mut T, pages: u64) -> Result<(), GuestError> {
        accept_mmio(t, self.function, 0, self.layout.bar_gpa, pages)
    }

    /// TDG.DMAR.ACCEPT, then the START authorisation for the lock generation it read.
    ///
    /// # Errors
    /// [`GuestError`].
    pub fn accept_dma_and_authorise<T: Tdcall + ?Sized>(&self, t: &mut T) -> Result<(), GuestError> {
        call(t, "TDG.DMAR.ACCEPT", Regs::call(g::DMAR_ACCEPT, self.function, 0, 0, 0))?;
        authorise_start(t, self.function, self.findings.generation)
    }

    /// Checks the TDI runs, reads NVMe CAP and VS through the private mapping, then asks the
    /// host for the verifier's challenge.
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
        vmcall(t, vmcall::GET_NONCE, 0)
    }

    /// What the guest sees of its device after the host revoked the BAR: the TDISP state from
    /// TDG.TDI.RD and what its accessor does with a read of BAR0's first register.
    ///
    /// # Errors
    /// [`GuestError`] of TDG.TDI.RD.
    pub fn probe_revoked<T: Tdcall + GuestMemory + ?Sized>(
        &self,
        t: &mut T,
    ) -> Result<(u64, Result<u32, GuestError>), GuestError> {
        let state = tdi_rd(t, self.function, 0, 0)?;
        Ok((state, t.mmio_read_u32(self.layout.bar_gpa)))
    }

    /// Puts the challenge in REPORTDATA, calls SEAMLESS.TDG.MR.ATTEST for the native report and
    /// for its SNP-format export, and hands both to the host through the shared page.
    ///
    /// # Errors
    /// [`GuestError`]; [`GuestError::BadSharedLength`] if the TSM wrote another size.
    pub fn attest<T: Tdcall + GuestMemory + ?Sized>(&self, t: &mut T) -> Result<Step, GuestError> {
        let mut nonce = [0u8; 64];
        if take_shared(t, &mut nonce)? != 64 {
            return Err(GuestError::BadSharedLength(0));
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
        vmcall(t, vmcall::REPORT_READY, REPORTS_BYTES as u64)
    }
}
