//! The host agent's half of device assignment, through the host ABI only: the TD built from the
//! guest image and measured, the device connected over DOE, an IDE stream with keys, the TDI
//! locked, its BAR pages imported and mapped, the DMA entry added, START once the guest
//! authorised it, the guest's VMCALLs served, and everything torn down again with every donated
//! page reclaimed (checked with TDH.PHYMEM.PAGE.RDMD).

use attest::image::Image;
use tsm::abi::host::leaf;
use tsm::td::TdParams;
use tsm::{Regs, Status, Tsm};

use super::{check, Host, HostError, PumpStats};
use crate::drivers::doe::Mailbox;
use crate::drivers::phys::Mmio;
use crate::drivers::tsc::Tsc;
use crate::guest::{self, GuestError, Step};
use crate::platform::FirmwarePlatform;

const PAGE: u64 = 4096;
/// The guest's accepted work pages (digests, REPORTDATA, the native report, its SNP export),
/// then its NVMe driver's queues, identify page and data pages (`guest::nvme`).
pub const WORK_GPA: u64 = 0x10_0000;
/// How many: 4, then 5 for the NVMe queues and identify data, then 15 data pages.
pub const WORK_PAGES: u64 = 4 + 5 + 15;
/// Where BAR0 appears in the guest.
pub const BAR_GPA: u64 = 0x4000_0000;
/// S-EPT root level for GPAW 48.
const ROOT_LEVEL: u8 = 3;
/// TDISP lock flags: NO_FW_UPDATE.
pub const LOCK_FLAGS: u64 = 0x1;

/// A failure of the flow: the host's or the guest's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowError {
    /// A host step.
    Host(HostError),
    /// A guest step.
    Guest(GuestError),
    /// The guest image did not parse.
    Image(attest::image::ImageError),
    /// The TD exited where the host did not expect it to.
    UnexpectedExit,
    /// Pages still not free after teardown.
    Leaked {
        /// The first one.
        page: u64,
        /// How many.
        count: u64,
    },
}

impl From<HostError> for FlowError {
    fn from(e: HostError) -> FlowError {
        FlowError::Host(e)
    }
}

impl From<GuestError> for FlowError {
    fn from(e: GuestError) -> FlowError {
        FlowError::Guest(e)
    }
}

impl core::fmt::Display for FlowError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            FlowError::Host(e) => write!(f, "host: {e}"),
            FlowError::Guest(e) => write!(f, "guest: {e}"),
            FlowError::Image(e) => write!(f, "guest image: {e}"),
            FlowError::UnexpectedExit => f.write_str("the TD exited unexpectedly"),
            FlowError::Leaked { page, count } => write!(f, "{count} pages not reclaimed, the first at {page:#x}"),
        }
    }
}

/// A TD the host built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TdPages {
    /// TDR.
    pub tdr: u64,
    /// vCPU 0's TDVPR.
    pub vcpu: u64,
    /// Image pages added with TDH.MEM.PAGE.ADD.
    pub added: u32,
    /// Of those, the pages measured with TDH.MR.EXTEND.
    pub measured: u32,
}

/// What the device-side steps left behind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DevicePages {
    /// PDEV page.
    pub pdev: u64,
    /// Message page.
    pub msg: u64,
    /// IDE stream index.
    pub stream: u64,
    /// TDI page.
    pub tdi: u64,
    /// Lock generation.
    pub generation: u64,
    /// Interface report length in the message page.
    pub report_len: usize,
    /// Whether the IDE stream was created (its index may be 0).
    pub ide: bool,
    /// BAR pages mapped with MMIO.MAP.
    pub mapped: u64,
    /// Whether the DMA remapping entry was added.
    pub dma: bool,
}

/// What [`Host::cleanup`] did after a failed flow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cleanup {
    /// Teardown calls the TSM refused (the object's state did not allow them).
    pub refused: u32,
    /// The first refusal.
    pub first_refusal: Option<HostError>,
    /// Donated pages that read back free.
    pub free: u64,
    /// Donated pages still held by the TSM.
    pub held: u64,
    /// The first of those.
    pub first_held: u64,
}

impl Cleanup {
    fn note(&mut self, r: Result<(), HostError>) {
        if let Err(e) = r {
            if self.refused == 0 {
                self.first_refusal = Some(e);
            }
            self.refused += 1;
        }
    }
}

impl core::fmt::Display for Cleanup {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.first_refusal {
            None => f.write_str("every teardown call succeeded")?,
            Some(e) => write!(f, "{} teardown calls refused, the first: {e}", self.refused)?,
        }
        if self.held == 0 {
            write!(f, "; all {} donated pages free again", self.free)
        } else {
            write!(
                f,
                "; {} of {} donated pages free again, {} still held (the first at {:#x})",
                self.free,
                self.free + self.held,
                self.held,
                self.first_held
            )
        }
    }
}

/// A block call: done now, or done already (by STOP).
fn blocked(name: &'static str, r: Regs) -> Result<(), HostError> {
    if r.status() == Status::GPA_RANGE_ALREADY_BLOCKED {
        return Ok(());
    }
    check(name, r).map(|_| ())
}

/// Bytes covered by one S-EPT entry at `level`.
const fn coverage(level: u8) -> u64 {
    1 << (12 + 9 * level as u32)
}

impl Host {
    /// One host call that must succeed.
    fn call(&self, tsm: &mut Tsm<FirmwarePlatform>, name: &'static str, regs: Regs) -> Result<Regs, HostError> {
        check(name, tsm.host_call(&regs))
    }

    /// Adds the S-EPT tables missing on the way to a 4K leaf at `gpa`.
    pub fn map_tables(&mut self, tsm: &mut Tsm<FirmwarePlatform>, tdr: u64, gpa: u64) -> Result<(), HostError> {
        for level in (1..=ROOT_LEVEL).rev() {
            let aligned = gpa & !(coverage(level) - 1);
            let rd = tsm.host_call(&Regs::call(leaf::MEM_SEPT_RD, aligned | u64::from(level), tdr, 0, 0));
            if rd.status() == Status::SUCCESS && (rd.rdx >> 8) as u8 == tsm::sept::SeptState::Free as u8 {
                let page = self.tdmr_page()?;
                self.call(
                    tsm,
                    "TDH.MEM.SEPT.ADD",
                    Regs::call(leaf::MEM_SEPT_ADD, aligned | u64::from(level), tdr, page, 0),
                )?;
            }
        }
        Ok(())
    }

    /// MNG.CREATE, ADDCX, MNG.INIT, VP.CREATE; then every page of `image` added (and measured
    /// as its regions say) by the loading convention, MR.FINALIZE, VP.ENTER, and the work pages
    /// AUGed for the guest to accept.
    ///
    /// # Errors
    /// [`FlowError`].
    pub fn build_td(&mut self, tsm: &mut Tsm<FirmwarePlatform>, image: &[u8]) -> Result<TdPages, FlowError> {
        let image = Image::parse(image).map_err(FlowError::Image)?;
        let tdr = self.tdmr_page()?;
        self.call(tsm, "TDH.MNG.CREATE", Regs::call(leaf::MNG_CREATE, tdr, 0, 0, 0))?;
        for _ in 0..2 {
            let cx = self.tdmr_page()?;
            self.call(tsm, "TDH.MNG.ADDCX", Regs::call(leaf::MNG_ADDCX, cx, tdr, 0, 0))?;
        }
        let params = TdParams {
            attributes: 0,
            xfam: 3,
            max_vcpus: 1,
            gpaw: 48,
            mr_config_id: [0; 48],
            mr_owner: [0; 48],
            mr_owner_config: [0; 48],
        };
        let params_page = self.scratch()?;
        self.mem.write(params_page, &params.encode());
        self.call(tsm, "TDH.MNG.INIT", Regs::call(leaf::MNG_INIT, tdr, params_page, 0, 0))?;
        let vcpu = self.tdmr_page()?;
        self.call(tsm, "TDH.VP.CREATE", Regs::call(leaf::VP_CREATE, vcpu, tdr, 0, 0))?;
        let src = self.scratch()?;
        let (mut added, mut measured) = (0, 0);
        for region in image.regions() {
            for i in 0..region.pages {
                let (gpa, content) = region.page(i);
                self.map_tables(tsm, tdr, gpa)?;
                self.mem.write(src, &content);
                let page = self.tdmr_page()?;
                self.call(tsm, "TDH.MEM.PAGE.ADD", Regs::call(leaf::MEM_PAGE_ADD, gpa, tdr, page, src))?;
                added += 1;
                if region.measured {
                    measured += 1;
                    for chunk in 0..16 {
                        self.call(tsm, "TDH.MR.EXTEND", Regs::call(leaf::MR_EXTEND, gpa + chunk * 256, tdr, 0, 0))?;
                    }
                }
            }
        }
        self.call(tsm, "TDH.MR.FINALIZE", Regs::call(leaf::MR_FINALIZE, tdr, 0, 0, 0))?;
        for i in 0..WORK_PAGES {
            let gpa = WORK_GPA + i * PAGE;
            self.map_tables(tsm, tdr, gpa)?;
            let page = self.tdmr_page()?;
            self.call(tsm, "TDH.MEM.PAGE.AUG", Regs::call(leaf::MEM_PAGE_AUG, gpa, tdr, page, 0))?;
        }
        self.enter(tsm, vcpu)?;
        Ok(TdPages { tdr, vcpu, added, measured })
    }

    /// VP.ENTER.
    ///
    /// # Errors
    /// [`HostError`].
    pub fn enter(&self, tsm: &mut Tsm<FirmwarePlatform>, vcpu: u64) -> Result<(), HostError> {
        self.call(tsm, "TDH.VP.ENTER", Regs::call(leaf::VP_ENTER, vcpu, 0, 0, 0)).map(|_| ())
    }

    /// IOMMU.SETUP with a fresh root table.
    ///
    /// # Errors
    /// [`HostError`].
    pub fn iommu_setup(&mut self, tsm: &mut Tsm<FirmwarePlatform>) -> Result<(), HostError> {
        let root = self.tdmr_page()?;
        self.call(tsm, "TDH.IOMMU.SETUP", Regs::call(leaf::IOMMU_SETUP, root, 0, 0, 0)).map(|_| ())
    }

    /// IDE.STREAM.CREATE and KM SETUP.
    ///
    /// # Errors
    /// [`HostError`].
    pub fn ide_setup(
        &self,
        tsm: &mut Tsm<FirmwarePlatform>,
        doe: &mut Mailbox<Mmio>,
        tsc: &Tsc,
        d: &mut DevicePages,
        stats: &mut PumpStats,
    ) -> Result<(), HostError> {
        let r = self.call(tsm, "TDH.IDE.STREAM.CREATE", Regs::call(leaf::IDE_STREAM_CREATE, d.pdev, 1, 0, 0))?;
        d.stream = r.rcx;
        d.ide = true;
        self.pump(tsm, doe, tsc, ("TDH.IDE.STREAM.KM SETUP", leaf::IDE_STREAM_KM, d.pdev, d.stream), d.msg, stats)?;
        Ok(())
    }

    /// TDI.CREATE bound to the TD, then TDI.LOCK over the stream; the report stays in the message
    /// page.
    ///
    /// # Errors
    /// [`HostError`].
    #[allow(clippy::too_many_arguments)]
    pub fn bind_and_lock(
        &mut self,
        tsm: &mut Tsm<FirmwarePlatform>,
        doe: &mut Mailbox<Mmio>,
        tsc: &Tsc,
        td: &TdPages,
        function: u32,
        d: &mut DevicePages,
        stats: &mut PumpStats,
    ) -> Result<(), HostError> {
        let tdi = self.tdmr_page()?;
        self.call(tsm, "TDH.TDI.CREATE", Regs::call(leaf::TDI_CREATE, td.tdr, d.pdev, tdi, u64::from(function)))?;
        d.tdi = tdi;
        let r =
            self.pump(tsm, doe, tsc, ("TDH.TDI.LOCK", leaf::TDI_LOCK, tdi, LOCK_FLAGS | d.stream << 16), d.msg, stats)?;
        d.generation = r.rcx;
        d.report_len = (r.r8 as usize).min(tsm::pdev::MSG_BYTES);
        Ok(())
    }

    /// DMABUF.IMPORT of BAR0 (report range 0) and MMIO.MAP of each of its pages at [`BAR_GPA`].
    ///
    /// # Errors
    /// [`HostError`].
    pub fn import_and_map(
        &mut self,
        tsm: &mut Tsm<FirmwarePlatform>,
        td: &TdPages,
        d: &DevicePages,
        bar: (u64, u64),
    ) -> Result<(), HostError> {
        let pages = bar.1 / PAGE;
        self.call(tsm, "TDH.DMABUF.IMPORT", Regs::call(leaf::DMABUF_IMPORT, d.tdi, bar.0, pages, 0))?;
        for i in 0..pages {
            self.map_tables(tsm, td.tdr, BAR_GPA + i * PAGE)?;
            self.call(
                tsm,
                "TDH.MMIO.MAP",
                Regs::call(leaf::MMIO_MAP, BAR_GPA + i * PAGE, td.tdr, bar.0 + i * PAGE, 0),
            )?;
        }
        Ok(())
    }

    /// DMAR.ADD, offering a fresh frame for every table; the frames it did not take come back.
    ///
    /// # Errors
    /// [`HostError`].
    pub fn dmar_add(
        &mut self,
        tsm: &mut Tsm<FirmwarePlatform>,
        td: &TdPages,
        d: &DevicePages,
    ) -> Result<(), HostError> {
        let frames = [self.tdmr_page()?, self.tdmr_page()?, self.tdmr_page()?];
        let call = Regs { r10: frames[2], ..Regs::call(leaf::DMAR_ADD, td.tdr, d.tdi, frames[0], frames[1]) };
        let r = tsm.host_call(&call);
        let used = if r.status() == Status::SUCCESS { r.rcx } else { 0 };
        for (i, &f) in frames.iter().enumerate() {
            if used & 1 << i == 0 {
                self.release(f);
            }
        }
        check("TDH.DMAR.ADD", r).map(|_| ())
    }

    /// SEAMLESS.DMABUF.REVOKE of report range 0 (the exporter's FLR or close); returns the
    /// pages it blocked.
    ///
    /// # Errors
    /// [`HostError`].
    pub fn dmabuf_revoke(&self, tsm: &mut Tsm<FirmwarePlatform>, d: &DevicePages) -> Result<u64, HostError> {
        Ok(self.call(tsm, "SEAMLESS.DMABUF.REVOKE", Regs::call(leaf::DMABUF_REVOKE, d.tdi, 0, 0, 0))?.rcx)
    }

    /// Serves the guest's VMCALL `args` (the guest stopped on it), then resumes the vCPU. The
    /// reports the guest hands over (REPORT_READY: native, then the SNP export) are copied to
    /// `report`.
    ///
    /// # Errors
    /// [`FlowError::UnexpectedExit`] for a request the host does not know.
    #[allow(clippy::too_many_arguments)]
    pub fn serve_vmcall(
        &self,
        tsm: &mut Tsm<FirmwarePlatform>,
        td: &TdPages,
        step: Step,
        shared: &guest::Shared,
        d: &DevicePages,
        nonce: &[u8; 64],
        report: &mut [u8; guest::REPORTS_BYTES],
    ) -> Result<(), FlowError> {
        let Step::Vmcall(args) = step;
        match args[0] {
            guest::vmcall::GET_REPORT => {
                let mut buf = [0u8; tsm::pdev::MSG_BYTES];
                let n = d.report_len.min(guest::Shared::CAPACITY);
                self.mem.read(d.msg, &mut buf[..n]);
                shared.put(&buf[..n]);
            }
            guest::vmcall::GET_NONCE => shared.put(nonce),
            guest::vmcall::REPORT_READY => {
                shared.take(report)?;
            }
            _ => return Err(FlowError::UnexpectedExit),
        }
        self.enter(tsm, td.vcpu)?;
        Ok(())
    }

    /// The teardown in the enforced order: STOP (which blocks MMIO and DMA), track and invalidate,
    /// unmap, remove the DMA entry and the TDI, stop the keys, delete the stream, disconnect and
    /// delete the PDEV, then the TD: kick, flush, reclaim every page it owns and its TDR; then
    /// IOMMU.CLEAR. ([`Host::check_all_free`] then shows every page came back.)
    ///
    /// # Errors
    /// [`FlowError`].
    #[allow(clippy::too_many_arguments)]
    pub fn teardown(
        &mut self,
        tsm: &mut Tsm<FirmwarePlatform>,
        doe: &mut Mailbox<Mmio>,
        tsc: &Tsc,
        td: &TdPages,
        d: &DevicePages,
        bar_pages: u64,
        stats: &mut PumpStats,
    ) -> Result<(), FlowError> {
        self.pump(tsm, doe, tsc, ("TDH.TDI.STOP", leaf::TDI_STOP, d.tdi, 0), d.msg, stats)?;
        // STOP blocked the TDI's MMIO and DMA already; a VMM that blocks them anyway (as this one
        // does, to not depend on it) gets the GPA_RANGE_ALREADY_BLOCKED warning.
        for i in 0..bar_pages {
            let r = tsm.host_call(&Regs::call(leaf::MMIO_BLOCK, BAR_GPA + i * PAGE, td.tdr, 0, 0));
            blocked("TDH.MMIO.BLOCK", r)?;
        }
        blocked("TDH.DMAR.BLOCK", tsm.host_call(&Regs::call(leaf::DMAR_BLOCK, d.tdi, 0, 0, 0)))?;
        self.call(tsm, "TDH.VP.KICK", Regs::call(leaf::VP_KICK, td.vcpu, 0, 0, 0))?;
        self.call(tsm, "TDH.MEM.TRACK", Regs::call(leaf::MEM_TRACK, td.tdr, 0, 0, 0))?;
        self.call(tsm, "TDH.IQ.INV.REQUEST", Regs::call(leaf::IQ_INV_REQUEST, td.tdr, 0, 0, 0))?;
        for i in 0..bar_pages {
            self.call(tsm, "TDH.MMIO.UNMAP", Regs::call(leaf::MMIO_UNMAP, BAR_GPA + i * PAGE, td.tdr, 0, 0))?;
        }
        self.call(tsm, "TDH.DMAR.REMOVE", Regs::call(leaf::DMAR_REMOVE, d.tdi, 0, 0, 0))?;
        self.call(tsm, "TDH.TDI.REMOVE", Regs::call(leaf::TDI_REMOVE, d.tdi, 0, 0, 0))?;
        self.pump(
            tsm,
            doe,
            tsc,
            ("TDH.IDE.STREAM.KM STOP", leaf::IDE_STREAM_KM, d.pdev, d.stream | 2 << 8),
            d.msg,
            stats,
        )?;
        self.call(tsm, "TDH.IDE.STREAM.BLOCK", Regs::call(leaf::IDE_STREAM_BLOCK, d.pdev, d.stream, 0, 0))?;
        self.call(tsm, "TDH.IDE.STREAM.DELETE", Regs::call(leaf::IDE_STREAM_DELETE, d.pdev, d.stream, 0, 0))?;
        self.pump(tsm, doe, tsc, ("TDH.SPDM.DISCONNECT", leaf::SPDM_DISCONNECT, d.pdev, 0), d.msg, stats)?;
        self.call(tsm, "TDH.SPDM.DELETE", Regs::call(leaf::SPDM_DELETE, d.pdev, 0, 0, 0))?;
        self.destroy_td(tsm, td)?;
        self.iommu_clear(tsm)?;
        Ok(())
    }

    /// The teardown after a failed flow: each step of [`Host::teardown`] for what exists (per
    /// `td` and `d`), tried in the same order and kept going past a refusal (a call the TSM
    /// refuses changes nothing), then every donated page checked with RDMD.
    #[allow(clippy::too_many_arguments)]
    pub fn cleanup(
        &mut self,
        tsm: &mut Tsm<FirmwarePlatform>,
        doe: &mut Mailbox<Mmio>,
        tsc: &Tsc,
        td: Option<&TdPages>,
        d: &DevicePages,
        stats: &mut PumpStats,
    ) -> Cleanup {
        let mut c = Cleanup::default();
        if d.tdi != 0 {
            let r = self.pump(tsm, doe, tsc, ("TDH.TDI.STOP", leaf::TDI_STOP, d.tdi, 0), d.msg, stats);
            c.note(r.map(|_| ()));
            for i in 0..d.mapped {
                if let Some(td) = td {
                    let r = tsm.host_call(&Regs::call(leaf::MMIO_BLOCK, BAR_GPA + i * PAGE, td.tdr, 0, 0));
                    c.note(blocked("TDH.MMIO.BLOCK", r));
                }
            }
            if d.dma {
                c.note(blocked("TDH.DMAR.BLOCK", tsm.host_call(&Regs::call(leaf::DMAR_BLOCK, d.tdi, 0, 0, 0))));
            }
            if let Some(td) = td {
                if d.mapped > 0 || d.dma {
                    c.note(self.call(tsm, "TDH.VP.KICK", Regs::call(leaf::VP_KICK, td.vcpu, 0, 0, 0)).map(|_| ()));
                    c.note(self.call(tsm, "TDH.MEM.TRACK", Regs::call(leaf::MEM_TRACK, td.tdr, 0, 0, 0)).map(|_| ()));
                    let r = self.call(tsm, "TDH.IQ.INV.REQUEST", Regs::call(leaf::IQ_INV_REQUEST, td.tdr, 0, 0, 0));
                    c.note(r.map(|_| ()));
                }
                for i in 0..d.mapped {
                    let r = Regs::call(leaf::MMIO_UNMAP, BAR_GPA + i * PAGE, td.tdr, 0, 0);
                    c.note(self.call(tsm, "TDH.MMIO.UNMAP", r).map(|_| ()));
                }
            }
            if d.dma {
                c.note(self.call(tsm, "TDH.DMAR.REMOVE", Regs::call(leaf::DMAR_REMOVE, d.tdi, 0, 0, 0)).map(|_| ()));
            }
            c.note(self.call(tsm, "TDH.TDI.REMOVE", Regs::call(leaf::TDI_REMOVE, d.tdi, 0, 0, 0)).map(|_| ()));
        }
        if d.ide {
            let km = ("TDH.IDE.STREAM.KM STOP", leaf::IDE_STREAM_KM, d.pdev, d.stream | 2 << 8);
            c.note(self.pump(tsm, doe, tsc, km, d.msg, stats).map(|_| ()));
            let r = Regs::call(leaf::IDE_STREAM_BLOCK, d.pdev, d.stream, 0, 0);
            c.note(self.call(tsm, "TDH.IDE.STREAM.BLOCK", r).map(|_| ()));
            let r = Regs::call(leaf::IDE_STREAM_DELETE, d.pdev, d.stream, 0, 0);
            c.note(self.call(tsm, "TDH.IDE.STREAM.DELETE", r).map(|_| ()));
        }
        if d.pdev != 0 {
            // A PDEV in ERROR (after ABORT) is not CONNECTED: DISCONNECT is refused and DELETE
            // takes it as it is.
            let r = self.pump(tsm, doe, tsc, ("TDH.SPDM.DISCONNECT", leaf::SPDM_DISCONNECT, d.pdev, 0), d.msg, stats);
            c.note(r.map(|_| ()));
            c.note(self.call(tsm, "TDH.SPDM.DELETE", Regs::call(leaf::SPDM_DELETE, d.pdev, 0, 0, 0)).map(|_| ()));
        }
        if let Some(td) = td {
            c.note(self.destroy_td(tsm, td));
        }
        c.note(self.iommu_clear(tsm).map(|_| ()));
        let (start, end) = self.tdmr_used();
        let mut p = start;
        while p < end {
            match self.call(tsm, "TDH.PHYMEM.PAGE.RDMD", Regs::call(leaf::PHYMEM_PAGE_RDMD, p, 0, 0, 0)) {
                Ok(md) if md.rcx == 0 => c.free += 1,
                r => {
                    if c.held == 0 {
                        c.first_held = p;
                    }
                    c.held += 1;
                    c.note(r.map(|_| ()));
                }
            }
            p += PAGE;
        }
        c
    }

    /// Kick, VPFLUSHDONE, RECLAIM of every page the TD owns (found with RDMD), then its TDR.
    ///
    /// # Errors
    /// [`HostError`].
    pub fn destroy_td(&mut self, tsm: &mut Tsm<FirmwarePlatform>, td: &TdPages) -> Result<(), HostError> {
        self.call(tsm, "TDH.VP.KICK", Regs::call(leaf::VP_KICK, td.vcpu, 0, 0, 0))?;
        self.call(tsm, "TDH.MNG.VPFLUSHDONE", Regs::call(leaf::MNG_VPFLUSHDONE, td.tdr, 0, 0, 0))?;
        let (start, end) = self.tdmr_used();
        let mut p = start;
        while p < end {
            let md = self.call(tsm, "TDH.PHYMEM.PAGE.RDMD", Regs::call(leaf::PHYMEM_PAGE_RDMD, p, 0, 0, 0))?;
            if md.rcx != 0 && md.rdx == td.tdr && p != td.tdr {
                self.call(tsm, "TDH.PHYMEM.PAGE.RECLAIM", Regs::call(leaf::PHYMEM_PAGE_RECLAIM, p, 0, 0, 0))?;
            }
            p += PAGE;
        }
        self.call(tsm, "TDH.PHYMEM.PAGE.RECLAIM", Regs::call(leaf::PHYMEM_PAGE_RECLAIM, td.tdr, 0, 0, 0))?;
        Ok(())
    }

    /// IOMMU.CLEAR until the root table comes back.
    ///
    /// # Errors
    /// [`HostError`].
    pub fn iommu_clear(&mut self, tsm: &mut Tsm<FirmwarePlatform>) -> Result<u64, HostError> {
        let mut n = 0;
        loop {
            let r = self.call(tsm, "TDH.IOMMU.CLEAR", Regs::call(leaf::IOMMU_CLEAR, 0, 0, 0, 0))?;
            n += 1;
            if r.rdx == 0 {
                return Ok(n);
            }
        }
    }

    /// Every page the host ever donated reads back free; returns how many that is.
    ///
    /// # Errors
    /// [`FlowError::Leaked`].
    pub fn check_all_free(&self, tsm: &mut Tsm<FirmwarePlatform>) -> Result<u64, FlowError> {
        let (start, end) = self.tdmr_used();
        let (mut first, mut count) = (0, 0);
        let mut p = start;
        while p < end {
            let md = self.call(tsm, "TDH.PHYMEM.PAGE.RDMD", Regs::call(leaf::PHYMEM_PAGE_RDMD, p, 0, 0, 0))?;
            if md.rcx != 0 {
                if count == 0 {
                    first = p;
                }
                count += 1;
            }
            p += PAGE;
        }
        if count != 0 {
            return Err(FlowError::Leaked { page: first, count });
        }
        Ok((end - start) / PAGE)
    }
}
