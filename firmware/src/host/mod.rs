//! The host agent: the untrusted VMM's part, which reaches the TSM only through the host ABI
//! (`Tsm::host_call` with raw registers, as SEAMCALL would) and owns the host pages between the
//! image and the TDMR. It configures the TSM over the TDMR, donates pages, and ferries every
//! DEVICE_REQUEST of a resumable call through the device's DOE mailbox.

use core::fmt;

pub mod assign;
pub mod evidence;

use tsm::abi::host::{leaf, TDMR_INFO_BYTES};
use tsm::pdev::MSG_BYTES;
use tsm::{Regs, Status, Tsm};

use crate::drivers::doe::{DoeError, Mailbox};
use crate::drivers::phys::{Frames, Mmio};
use crate::drivers::tsc::Tsc;
use crate::memmap::Layout;
use crate::platform::FirmwarePlatform;

const PAGE: u64 = 4096;

/// The host's memory: its own pages (not convertible) and the TDMR pages it has not donated.
#[derive(Debug)]
pub struct Host {
    mem: Frames,
    host_next: u64,
    host_end: u64,
    tdmr_next: u64,
    tdmr_end: u64,
    tdmr_start: u64,
    free: [u64; FREE_SLOTS],
    free_count: usize,
}

/// Pages the host keeps for reuse after the TSM handed them back.
const FREE_SLOTS: usize = 64;

/// A host step that did not succeed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostError {
    /// A host ABI call returned an error.
    Call {
        /// The leaf's name.
        leaf: &'static str,
        /// The status in RAX.
        status: Status,
        /// RCX as returned (details of some errors).
        rcx: u64,
    },
    /// The DOE mailbox failed during a resumable call (the request was then aborted with
    /// SPDM.MNG ABORT).
    Doe {
        /// The leaf's name.
        leaf: &'static str,
        /// The mailbox error.
        error: DoeError,
        /// Exchanges completed before it.
        exchanges: u32,
    },
    /// The host ran out of its own or of TDMR pages.
    OutOfPages,
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostError::Call { leaf, status, rcx } => {
                write!(
                    f,
                    "{leaf} returned {} ({:#018x}), rcx {rcx:#x}",
                    status.name().unwrap_or("unknown status"),
                    status.0
                )
            }
            HostError::Doe { leaf, error, exchanges } => {
                write!(f, "{leaf}: DOE mailbox: {error} after {exchanges} exchanges")
            }
            HostError::OutOfPages => write!(f, "the host ran out of pages"),
        }
    }
}

/// What one resumable call moved, and how long it took.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PumpStats {
    /// Requests ferried to the device.
    pub exchanges: u32,
    /// Bytes sent to the device.
    pub bytes_out: u64,
    /// Bytes received from it.
    pub bytes_in: u64,
    /// TSC ticks inside the DOE mailbox (QEMU, the socket and the responder).
    pub doe_ticks: u64,
    /// TSC ticks inside the TSM's calls.
    pub tsm_ticks: u64,
    /// TSC ticks of the whole call, first request to final status.
    pub total_ticks: u64,
    /// SPDM version byte of the last plain SPDM response seen (0 if none).
    pub spdm_version: u8,
}

pub(crate) fn check(leaf: &'static str, r: Regs) -> Result<Regs, HostError> {
    if r.status() == Status::SUCCESS {
        Ok(r)
    } else {
        Err(HostError::Call { leaf, status: r.status(), rcx: r.rcx })
    }
}

impl Host {
    /// The host over `layout`'s host pages and TDMR.
    pub fn new(mem: Frames, layout: &Layout) -> Host {
        Host {
            mem,
            host_next: layout.host.0,
            host_end: layout.host.1,
            tdmr_next: layout.tdmr.0,
            tdmr_end: layout.pamt.0,
            tdmr_start: layout.tdmr.0,
            free: [0; FREE_SLOTS],
            free_count: 0,
        }
    }

    /// One of the host's own pages (outside the TDMRs), zeroed.
    ///
    /// # Errors
    /// [`HostError::OutOfPages`].
    pub fn scratch(&mut self) -> Result<u64, HostError> {
        let p = self.host_next;
        if p + PAGE > self.host_end {
            return Err(HostError::OutOfPages);
        }
        self.host_next += PAGE;
        self.mem.zero(p, PAGE as usize);
        Ok(p)
    }

    /// A TDMR page to donate (never donated before).
    ///
    /// # Errors
    /// [`HostError::OutOfPages`].
    pub fn tdmr_page(&mut self) -> Result<u64, HostError> {
        if self.free_count > 0 {
            self.free_count -= 1;
            return Ok(self.free[self.free_count]);
        }
        let p = self.tdmr_next;
        if p + PAGE > self.tdmr_end {
            return Err(HostError::OutOfPages);
        }
        self.tdmr_next += PAGE;
        Ok(p)
    }

    /// Takes back a TDMR page the TSM did not use or gave back (kept for reuse while there is
    /// room; a page that does not fit stays free in the TSM and is simply not reused).
    pub fn release(&mut self, page: u64) {
        if self.free_count < FREE_SLOTS {
            self.free[self.free_count] = page;
            self.free_count += 1;
        }
    }

    /// The TDMR pages the host has handed out at least once: `[start, end)`.
    pub fn tdmr_used(&self) -> (u64, u64) {
        (self.tdmr_start, self.tdmr_next)
    }

    /// The host's view of physical memory.
    pub fn frames(&self) -> Frames {
        self.mem
    }

    /// TDH.SYS.CONFIG with one TDMR (the layout's) and its PAMT at its end.
    ///
    /// # Errors
    /// [`HostError`] if a page or the call fails.
    pub fn sys_config(&mut self, tsm: &mut Tsm<FirmwarePlatform>, layout: &Layout) -> Result<(), HostError> {
        let info = self.scratch()?;
        let words = [layout.tdmr.0, layout.tdmr.1 - layout.tdmr.0, layout.pamt.0, layout.pamt.1 - layout.pamt.0];
        let mut bytes = [0u8; TDMR_INFO_BYTES];
        for (chunk, w) in bytes.chunks_exact_mut(8).zip(words) {
            chunk.copy_from_slice(&w.to_le_bytes());
        }
        self.mem.write(info, &bytes);
        check("TDH.SYS.CONFIG", tsm.host_call(&Regs::call(leaf::SYS_CONFIG, info, 1, 0, 0))).map(|_| ())
    }

    /// TDH.SPDM.CREATE for the function `rid` (segment 0); returns the PDEV page.
    ///
    /// # Errors
    /// [`HostError`] if a page or the call fails.
    pub fn pdev_create(&mut self, tsm: &mut Tsm<FirmwarePlatform>, rid: u16) -> Result<u64, HostError> {
        let page = self.tdmr_page()?;
        check("TDH.SPDM.CREATE", tsm.host_call(&Regs::call(leaf::SPDM_CREATE, page, u64::from(rid), 0, 0)))?;
        Ok(page)
    }

    /// Calls the resumable leaf `leaf_no` until it stops asking, moving each request through the
    /// mailbox and its answer back through the message page `msg`. On a mailbox failure the
    /// outstanding request is withdrawn with TDH.SPDM.MNG ABORT.
    ///
    /// # Errors
    /// [`HostError`]: the final status if it is not SUCCESS, or the mailbox failure.
    pub fn pump(
        &self,
        tsm: &mut Tsm<FirmwarePlatform>,
        doe: &mut Mailbox<Mmio>,
        tsc: &Tsc,
        (name, leaf_no, rcx, r9): (&'static str, u64, u64, u64),
        msg: u64,
        stats: &mut PumpStats,
    ) -> Result<Regs, HostError> {
        let start = tsc.now();
        let mut len = 0u64;
        let mut request = [0u8; MSG_BYTES];
        // The mailbox refuses answers larger than this buffer, so every answer fits the page.
        let mut answer = [0u8; MSG_BYTES];
        loop {
            let t = tsc.now();
            let r = tsm.host_call(&Regs::call(leaf_no, rcx, msg, len, r9));
            stats.tsm_ticks += tsc.now().wrapping_sub(t);
            if r.status() != Status::DEVICE_REQUEST {
                stats.total_ticks = tsc.now().wrapping_sub(start);
                return check(name, r);
            }
            let n = (r.r8 as usize).min(MSG_BYTES);
            self.mem.read(msg, &mut request[..n]);
            let t = tsc.now();
            let got = doe.exchange(tsc, &request[..n], &mut answer);
            let ticks = tsc.now().wrapping_sub(t);
            stats.doe_ticks += ticks;
            defmt::debug!(
                "{=str}: DOE exchange {=u32}: {=usize} bytes out, {=usize} back, {=u64} us",
                name,
                stats.exchanges + 1,
                n,
                *got.as_ref().unwrap_or(&0),
                tsc.ticks_to_us(ticks)
            );
            let got = match got {
                Ok(got) => got,
                Err(error) => {
                    let _ = tsm.host_call(&Regs::call(leaf::SPDM_MNG, rcx, 0, 0, tsm::abi::host_pdev::mng::ABORT));
                    stats.total_ticks = tsc.now().wrapping_sub(start);
                    return Err(HostError::Doe { leaf: name, error, exchanges: stats.exchanges });
                }
            };
            stats.exchanges += 1;
            stats.bytes_out += n as u64;
            stats.bytes_in += got as u64;
            // A plain SPDM object (vendor 1, type 1): byte 8 is SPDMVersion.
            if got > 8 && answer[..4] == [0x01, 0x00, 0x01, 0x00] {
                stats.spdm_version = answer[8];
            }
            self.mem.write(msg, &answer[..got]);
            len = got as u64;
        }
    }
}
