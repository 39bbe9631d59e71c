//! The guest: firmware code that plays the TD's part. It acts only through the guest ABI
//! (`Tsm::guest_call` on behalf of its vCPU, as TDCALL would) and touches memory only through
//! [`GuestMemory`], which resolves a guest-physical address the way the CPU's second-stage walk
//! does: through the TD's S-EPT, and only to a MAPPED leaf (private RAM) or an MMIO_MAPPED leaf
//! (the assigned device's registers).
//!
//! The accessor reads the S-EPT with TDH.MEM.SEPT.RD. That is a host leaf, but it is read-only
//! and answers from the TSM's own tables, which is exactly what the MMU consults; using it keeps
//! the firmware off the TSM's internals (no read-only Rust view of the S-EPT is needed) and
//! refuses everything the hardware walk would fault on: FREE, PENDING, BLOCKED and
//! MMIO_PENDING entries, tables, and leaves above 4K.
//!
//! Shared memory (the guest–host channel of a VMCALL) is host memory: the guest reads and
//! writes it through [`Shared`], one page the host named, and trusts nothing it finds there.

use core::fmt;

pub mod image;
pub mod nvme;

use sha2::{Digest, Sha384};
use tsm::abi::guest::leaf as g;
use tsm::abi::host::leaf as h;
use tsm::sept::SeptState;
use tsm::{Regs, Status, TdExit, Tsm};

use crate::drivers::phys::{Frames, Mmio};
use crate::platform::FirmwarePlatform;

const PAGE: u64 = 4096;
const HPA_MASK: u64 = 0x000F_FFFF_FFFF_F000;

/// VMCALL requests (R10) the guest makes and the host serves.
pub mod vmcall {
    /// Put the interface report of the TDI in the shared page (R11: function id).
    pub const GET_REPORT: u64 = 0x5EA1_0001;
    /// Put the verifier's challenge (64 bytes) in the shared page.
    pub const GET_NONCE: u64 = 0x5EA1_0002;
    /// The signed report is in the shared page (R11: its length).
    pub const REPORT_READY: u64 = 0x5EA1_0003;
}

/// Bytes of the native report (`attest::report::Report`).
pub const REPORT_BYTES: usize = attest::report::REPORT_BYTES;
/// Bytes of its SNP-format export.
pub const SNP_BYTES: usize = attest::snp::SNP_REPORT_BYTES;
/// What REPORT_READY hands over: the native report, then the SNP-format export.
pub const REPORTS_BYTES: usize = REPORT_BYTES + SNP_BYTES;

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
    /// The accessor found no usable leaf at the GPA: the walk stopped, or the leaf is in
    /// `state` (not MAPPED for RAM, not MMIO_MAPPED for MMIO).
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

/// What a GPA resolved to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Leaf {
    Ram(u64),
    Mmio(u64),
}

/// The guest's view of memory: its S-EPT, private RAM behind MAPPED leaves, and the device's
/// registers behind MMIO_MAPPED leaves.
#[derive(Debug)]
pub struct GuestMemory<'a> {
    tdr: u64,
    ram: Frames,
    device: Option<(&'a Mmio, u64, u64)>,
}

impl<'a> GuestMemory<'a> {
    /// The memory of the TD whose TDR is `tdr`, with the device registers `device` (at host
    /// address `base`, `len` bytes) reachable through MMIO_MAPPED leaves.
    pub fn new(tdr: u64, ram: Frames, device: Option<(&'a Mmio, u64, u64)>) -> GuestMemory<'a> {
        GuestMemory { tdr, ram, device }
    }

    fn resolve(&self, tsm: &mut Tsm<FirmwarePlatform>, gpa: u64) -> Result<Leaf, GuestError> {
        let r = tsm.host_call(&Regs::call(h::MEM_SEPT_RD, gpa & !0xFFF, self.tdr, 0, 0));
        if r.status() != Status::SUCCESS || r.rdx & 7 != 0 {
            return Err(GuestError::NotMapped { gpa, state: 0xFF });
        }
        let state = (r.rdx >> 8) as u8;
        let hpa = r.rcx & HPA_MASK;
        if state == SeptState::Mapped as u8 {
            Ok(Leaf::Ram(hpa))
        } else if state == SeptState::MmioMapped as u8 {
            Ok(Leaf::Mmio(hpa))
        } else {
            Err(GuestError::NotMapped { gpa, state })
        }
    }

    fn ram(&self, tsm: &mut Tsm<FirmwarePlatform>, gpa: u64, len: usize) -> Result<u64, GuestError> {
        let off = gpa & 0xFFF;
        match self.resolve(tsm, gpa)? {
            Leaf::Ram(hpa) if off + len as u64 <= PAGE && self.ram.contains(hpa, PAGE) => Ok(hpa + off),
            Leaf::Ram(_) => Err(GuestError::NotMapped { gpa, state: SeptState::Mapped as u8 }),
            Leaf::Mmio(_) => Err(GuestError::NotMapped { gpa, state: SeptState::MmioMapped as u8 }),
        }
    }

    /// Reads private memory at `gpa` (within one page).
    ///
    /// # Errors
    /// [`GuestError::NotMapped`] unless a MAPPED 4K leaf backs the page.
    pub fn read(&self, tsm: &mut Tsm<FirmwarePlatform>, gpa: u64, buf: &mut [u8]) -> Result<(), GuestError> {
        let hpa = self.ram(tsm, gpa, buf.len())?;
        self.ram.read(hpa, buf);
        Ok(())
    }

    /// Writes private memory at `gpa` (within one page).
    ///
    /// # Errors
    /// As for [`GuestMemory::read`].
    pub fn write(&self, tsm: &mut Tsm<FirmwarePlatform>, gpa: u64, data: &[u8]) -> Result<(), GuestError> {
        let hpa = self.ram(tsm, gpa, data.len())?;
        self.ram.write(hpa, data);
        Ok(())
    }

    /// Reads the 32-bit device register at `gpa`.
    ///
    /// # Errors
    /// [`GuestError::NotMapped`] unless an MMIO_MAPPED 4K leaf backs the page;
    /// [`GuestError::MmioOutside`] if it points outside the device's registers.
    pub fn mmio_read_u32(&self, tsm: &mut Tsm<FirmwarePlatform>, gpa: u64) -> Result<u32, GuestError> {
        let hpa = match self.resolve(tsm, gpa)? {
            Leaf::Mmio(hpa) => hpa + (gpa & 0xFFF),
            Leaf::Ram(_) => return Err(GuestError::NotMapped { gpa, state: SeptState::Mapped as u8 }),
        };
        match self.device {
            Some((regs, base, len)) if hpa >= base && hpa + 4 <= base + len && hpa.is_multiple_of(4) => {
                Ok(regs.read_u32(hpa - base))
            }
            _ => Err(GuestError::MmioOutside { gpa, hpa }),
        }
    }
}

impl GuestMemory<'_> {
    /// Writes the 32-bit device register at `gpa`.
    ///
    /// # Errors
    /// As for [`GuestMemory::mmio_read_u32`].
    pub fn mmio_write_u32(&self, tsm: &mut Tsm<FirmwarePlatform>, gpa: u64, value: u32) -> Result<(), GuestError> {
        let hpa = match self.resolve(tsm, gpa)? {
            Leaf::Mmio(hpa) => hpa + (gpa & 0xFFF),
            Leaf::Ram(_) => return Err(GuestError::NotMapped { gpa, state: SeptState::Mapped as u8 }),
        };
        match self.device {
            Some((regs, base, len)) if hpa >= base && hpa + 4 <= base + len && hpa.is_multiple_of(4) => {
                regs.write_u32(hpa - base, value);
                Ok(())
            }
            _ => Err(GuestError::MmioOutside { gpa, hpa }),
        }
    }
}

/// The one host page the guest and the host exchange data through: `[len u64][data]`.
#[derive(Debug)]
pub struct Shared {
    ram: Frames,
    page: u64,
}

impl Shared {
    /// The shared page at host address `page`.
    pub fn new(ram: Frames, page: u64) -> Shared {
        Shared { ram, page }
    }

    /// Its address (what the guest names in a VMCALL).
    pub fn addr(&self) -> u64 {
        self.page
    }

    /// Bytes of data the page holds at most.
    pub const CAPACITY: usize = PAGE as usize - 8;

    /// Puts `data` in the page (host or guest side).
    pub fn put(&self, data: &[u8]) {
        let n = data.len().min(Self::CAPACITY);
        self.ram.write_u64(self.page, n as u64);
        self.ram.write(self.page + 8, &data[..n]);
    }

    /// Copies the data out; returns its length.
    ///
    /// # Errors
    /// [`GuestError::BadSharedLength`] if the length field exceeds the page or `buf`.
    pub fn take(&self, buf: &mut [u8]) -> Result<usize, GuestError> {
        let n = self.ram.read_u64(self.page);
        if n as usize > Self::CAPACITY || n as usize > buf.len() {
            return Err(GuestError::BadSharedLength(n));
        }
        self.ram.read(self.page + 8, &mut buf[..n as usize]);
        Ok(n as usize)
    }
}

/// The TD's own layout (GPAs): the image's pages, then pages the host AUGs and the guest accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestLayout {
    /// First private page the guest accepts (digests, REPORTDATA, the report).
    pub work: u64,
    /// How many.
    pub work_pages: u64,
    /// Where the device's BAR0 appears.
    pub bar_gpa: u64,
}

/// What the guest found, for the console.
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

/// The TD's vCPU 0, running the guest's steps.
#[derive(Debug)]
pub struct Guest<'a> {
    vcpu: u64,
    function: u64,
    layout: GuestLayout,
    mem: GuestMemory<'a>,
    shared: Shared,
    /// What it found so far.
    pub findings: Findings,
}

/// How a guest step ended (each step the guest takes ends in a VMCALL).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// The guest made a VMCALL: the host must serve `args` and VP.ENTER again.
    Vmcall([u64; 4]),
}

impl<'a> Guest<'a> {
    /// The guest on `vcpu`, using the TDI of `function`.
    pub fn new(vcpu: u64, function: u32, layout: GuestLayout, mem: GuestMemory<'a>, shared: Shared) -> Guest<'a> {
        let findings = Findings { generation: 0, report_digest: [0; 48], report_len: 0, cap: 0, vs: 0 };
        Guest { vcpu, function: u64::from(function), layout, mem, shared, findings }
    }

    fn call(&self, tsm: &mut Tsm<FirmwarePlatform>, leaf: &'static str, regs: Regs) -> Result<Regs, GuestError> {
        let r = tsm.guest_call(self.vcpu, &regs);
        if r.exit.is_some() {
            return Err(GuestError::UnexpectedExit { leaf });
        }
        if r.regs.status() != Status::SUCCESS {
            return Err(GuestError::Call { leaf, status: r.regs.status() });
        }
        Ok(r.regs)
    }

    fn vmcall(&self, tsm: &mut Tsm<FirmwarePlatform>, request: u64, arg: u64) -> Result<Step, GuestError> {
        let regs = Regs { r10: request, r11: arg, r12: self.shared.addr(), ..Regs::call(g::VP_VMCALL, 0, 0, 0, 0) };
        let r = tsm.guest_call(self.vcpu, &regs);
        match r.exit {
            Some(TdExit::Vmcall { args }) => Ok(Step::Vmcall(args)),
            _ if r.regs.status() != Status::SUCCESS => {
                Err(GuestError::Call { leaf: "TDG.VP.VMCALL", status: r.regs.status() })
            }
            _ => Err(GuestError::UnexpectedExit { leaf: "TDG.VP.VMCALL" }),
        }
    }

    /// Reads a device register at `gpa` through the guest's accessor (what a driver in the TD
    /// does; the attack mode checks what it refuses).
    ///
    /// # Errors
    /// As for [`GuestMemory::mmio_read_u32`].
    pub fn read_register(&self, tsm: &mut Tsm<FirmwarePlatform>, gpa: u64) -> Result<u32, GuestError> {
        self.mem.mmio_read_u32(tsm, gpa)
    }

    /// Reads private memory at `gpa` through the guest's accessor.
    ///
    /// # Errors
    /// As for [`GuestMemory::read`].
    pub fn read_private(&self, tsm: &mut Tsm<FirmwarePlatform>, gpa: u64, buf: &mut [u8]) -> Result<(), GuestError> {
        self.mem.read(tsm, gpa, buf)
    }

    /// TDG.MEM.PAGE.ACCEPT of the work pages the host AUGed.
    ///
    /// # Errors
    /// [`GuestError`] of the first page that fails.
    pub fn accept_memory(&self, tsm: &mut Tsm<FirmwarePlatform>) -> Result<(), GuestError> {
        for i in 0..self.layout.work_pages {
            self.call(
                tsm,
                "TDG.MEM.PAGE.ACCEPT",
                Regs::call(g::MEM_PAGE_ACCEPT, self.layout.work + i * PAGE, 0, 0, 0),
            )?;
        }
        Ok(())
    }

    fn tdi_rd(&self, tsm: &mut Tsm<FirmwarePlatform>, field: u64, out_gpa: u64) -> Result<u64, GuestError> {
        Ok(self.call(tsm, "TDG.TDI.RD", Regs::call(g::TDI_RD, self.function, field, out_gpa, 0))?.r9)
    }

    /// Reads the TDI's state (CONFIG_LOCKED wanted), lock generation and report digest from the
    /// TSM, then asks the host for the report.
    ///
    /// # Errors
    /// [`GuestError`].
    pub fn read_tdi(&mut self, tsm: &mut Tsm<FirmwarePlatform>) -> Result<Step, GuestError> {
        let state = self.tdi_rd(tsm, 0, 0)?;
        if state != 1 {
            return Err(GuestError::TdiState { wanted: 1, found: state });
        }
        self.findings.generation = self.tdi_rd(tsm, 1, 0)?;
        self.tdi_rd(tsm, 2, self.layout.work)?;
        let mut digest = [0u8; 48];
        self.mem.read(tsm, self.layout.work, &mut digest)?;
        self.findings.report_digest = digest;
        self.vmcall(tsm, vmcall::GET_REPORT, self.function)
    }

    /// Checks the report the host put in the shared page against the TSM's digest.
    ///
    /// # Errors
    /// [`GuestError::ReportMismatch`].
    pub fn check_report(&mut self) -> Result<(), GuestError> {
        let mut report = [0u8; Shared::CAPACITY];
        let n = self.shared.take(&mut report)?;
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
    pub fn accept_mmio(&self, tsm: &mut Tsm<FirmwarePlatform>, pages: u64) -> Result<(), GuestError> {
        for i in 0..pages {
            let gpa = self.layout.bar_gpa + i * PAGE;
            let regs = Regs { r9: i * PAGE, ..Regs::call(g::MMIO_ACCEPT, gpa, 0, self.function, 0) };
            self.call(tsm, "TDG.MMIO.ACCEPT", regs)?;
        }
        Ok(())
    }

    /// TDG.DMAR.ACCEPT, then the START authorisation for the lock generation it read.
    ///
    /// # Errors
    /// [`GuestError`].
    pub fn accept_dma_and_authorise(&self, tsm: &mut Tsm<FirmwarePlatform>) -> Result<(), GuestError> {
        self.call(tsm, "TDG.DMAR.ACCEPT", Regs::call(g::DMAR_ACCEPT, self.function, 0, 0, 0))?;
        self.call(
            tsm,
            "SEAMLESS.TDG.TDI.START",
            Regs::call(g::TDI_START, self.function, self.findings.generation, 0, 0),
        )?;
        Ok(())
    }

    /// Checks the TDI runs, reads NVMe CAP and VS through the private mapping, then asks the
    /// host for the verifier's challenge.
    ///
    /// # Errors
    /// [`GuestError`].
    pub fn use_device(&mut self, tsm: &mut Tsm<FirmwarePlatform>) -> Result<Step, GuestError> {
        let state = self.tdi_rd(tsm, 0, 0)?;
        if state != 2 {
            return Err(GuestError::TdiState { wanted: 2, found: state });
        }
        let bar = self.layout.bar_gpa;
        let lo = self.mem.mmio_read_u32(tsm, bar)?;
        let hi = self.mem.mmio_read_u32(tsm, bar + 4)?;
        self.findings.cap = u64::from(hi) << 32 | u64::from(lo);
        self.findings.vs = self.mem.mmio_read_u32(tsm, bar + 8)?;
        self.vmcall(tsm, vmcall::GET_NONCE, 0)
    }

    /// Drives the NVMe controller from the TD: admin and I/O queues in the private pages after
    /// the first four work pages, Identify, then READs of `blocks` blocks from LBA 0, every
    /// byte through the IOMMU walking the S-EPT.
    ///
    /// # Errors
    /// [`nvme::NvmeError`].
    /// Then one READ to each GPA of `stray` (pages the device must not reach), whose completion
    /// statuses go into `statuses`.
    pub fn read_disk(
        &self,
        tsm: &mut Tsm<FirmwarePlatform>,
        blocks: u64,
        stray: &[u64],
        statuses: &mut [u16],
    ) -> Result<nvme::NvmeFindings, nvme::NvmeError> {
        let page = |i: u64| self.layout.work + (4 + i) * PAGE;
        let layout = nvme::NvmeLayout {
            bar: self.layout.bar_gpa,
            asq: page(0),
            acq: page(1),
            identify: page(2),
            iosq: page(3),
            iocq: page(4),
            data: page(5),
            data_pages: self.layout.work_pages.saturating_sub(4 + 5),
        };
        let mut d = nvme::NvmeDriver::new(&self.mem, layout);
        d.enable(tsm)?;
        let mut f = d.identify_and_create_queues(tsm)?;
        f.digest = d.read_blocks(tsm, blocks)?;
        f.read_blocks = blocks;
        for (gpa, status) in stray.iter().zip(statuses.iter_mut()) {
            *status = d.read_to(tsm, *gpa)?;
        }
        Ok(f)
    }

    /// What the guest sees of its device after the host revoked the BAR: the TDISP state from
    /// TDG.TDI.RD and what its accessor does with a read of BAR0's first register.
    ///
    /// # Errors
    /// [`GuestError`] of TDG.TDI.RD.
    pub fn probe_revoked(&self, tsm: &mut Tsm<FirmwarePlatform>) -> Result<(u64, Result<u32, GuestError>), GuestError> {
        let state = self.tdi_rd(tsm, 0, 0)?;
        Ok((state, self.mem.mmio_read_u32(tsm, self.layout.bar_gpa)))
    }

    /// Puts the challenge in REPORTDATA, calls SEAMLESS.TDG.MR.ATTEST for the native report and
    /// for its SNP-format export, and hands both to the host through the shared page.
    ///
    /// # Errors
    /// [`GuestError`]; [`GuestError::BadSharedLength`] if the TSM wrote another size.
    pub fn attest(&self, tsm: &mut Tsm<FirmwarePlatform>) -> Result<Step, GuestError> {
        let mut nonce = [0u8; 64];
        if self.shared.take(&mut nonce)? != 64 {
            return Err(GuestError::BadSharedLength(0));
        }
        let reportdata = self.layout.work + PAGE;
        let native = self.layout.work + 2 * PAGE;
        let snp = self.layout.work + 3 * PAGE;
        self.mem.write(tsm, reportdata, &nonce)?;
        let mut both = [0u8; REPORTS_BYTES];
        let (first, second) = both.split_at_mut(REPORT_BYTES);
        for (format, out, buf) in [(0, native, first), (1, snp, second)] {
            let r = self.call(tsm, "SEAMLESS.TDG.MR.ATTEST", Regs::call(g::MR_ATTEST, out, reportdata, format, 0))?;
            if r.r9 != buf.len() as u64 {
                return Err(GuestError::BadSharedLength(r.r9));
            }
            self.mem.read(tsm, out, buf)?;
        }
        self.shared.put(&both);
        self.vmcall(tsm, vmcall::REPORT_READY, REPORTS_BYTES as u64)
    }
}
