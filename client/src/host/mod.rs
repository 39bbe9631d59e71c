//! The host's sequence of calls (the untrusted VMM's role): [`td`] builds, enters and destroys
//! TDs; [`tdvf`] builds one whose firmware is an OVMF image (TDVF) and writes its TD HOB;
//! [`ghci`] serves such a TD's TDG.VP.VMCALLs on a [`ghci::Machine`] and runs it; [`device`]
//! connects a device and assigns one of its interfaces to a TD; [`td_device`] serves the demo
//! TD's requests for it through the shared page; [`unbind`] is the
//! one order in which an assignment comes apart, for the teardown and for the cleanup after a
//! failure alike. Every step returns the TSM's refusal as a [`HostError`] naming the leaf.

use core::fmt;

pub mod device;
pub mod ghci;
pub mod td;
pub mod td_device;
pub mod tdvf;
pub mod unbind;

use tsm::abi::host::leaf;
use tsm::abi::host_pdev::mng;
use tsm::pdev::MSG_BYTES;
use tsm::{Regs, Status};

use crate::doe::{Doe, DoeError};

/// One host call: the ABI's registers in (RAX = leaf), the ABI's registers out (RAX = status).
/// The host agent in its host world implements it with SEAMCALL; the harness and the fuzz machine
/// with a direct call into `Tsm::host_call`.
pub trait Seamcall {
    /// Makes the call; `regs` holds the outputs afterwards.
    fn seamcall(&mut self, regs: &mut Regs);
}

/// The host's memory: its own pages (inputs to calls, message pages) and the convertible pages
/// it donates to the TSM.
pub trait HostMemory {
    /// Reads host physical memory at `pa` (within one page).
    fn read(&mut self, pa: u64, buf: &mut [u8]);
    /// Writes host physical memory at `pa` (within one page).
    fn write(&mut self, pa: u64, data: &[u8]);
    /// A convertible 4K page to donate; `None` when the host has none left.
    fn donate(&mut self) -> Option<u64>;
    /// One of the host's own pages (not convertible), for a call's input or a message page.
    fn scratch(&mut self) -> Option<u64>;
    /// A convertible, 2 MiB-aligned block of 2 MiB to donate for a 2 MiB PAGE.AUG; `None` (the
    /// default) when the host has none, and the caller AUGs 4 KiB pages instead.
    fn donate_2m(&mut self) -> Option<u64> {
        None
    }
    /// Takes back a page the TSM did not use or gave back.
    fn release(&mut self, pa: u64);
    /// The convertible pages the host has handed out at least once: `[start, end)`, which
    /// TDH.PHYMEM.PAGE.RDMD walks to find what a TD owns and what is still held.
    fn donated(&self) -> (u64, u64);
}

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
        /// RDX as returned (details of some errors: why DEVICE_ERROR refused an interface
        /// report).
        rdx: u64,
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
    /// An answer did not open under the session keys (ANSWER_NOT_AUTHENTIC: the TSM changed
    /// nothing); the host gave up on the request with TDH.SPDM.MNG ABORT.
    NotAuthentic {
        /// The leaf's name.
        leaf: &'static str,
        /// Exchanges completed before it.
        exchanges: u32,
        /// What ABORT returned.
        abort: Status,
    },
    /// The host ran out of its own or of convertible pages.
    OutOfPages,
    /// VP.ENTER returned a TD exit the host does not serve.
    TdExit {
        /// RAX: the exit reason.
        reason: u64,
        /// R10 of the exit.
        r10: u64,
        /// R11 of the exit.
        r11: u64,
        /// Why the host stops.
        why: &'static str,
    },
    /// The guest image did not parse.
    Image(attest::image::ImageError),
    /// The TDVF image's metadata was refused.
    Tdvf(attest::tdvf::TdvfError),
    /// The TD's RAM cannot hold the TDVF's sections as laid out.
    TdMemory(tdvf::MapError),
    /// A TDVF TD asked for with MAX_VCPUS other than 1 (see [`tdvf::build`]).
    TdvfVcpus(u16),
    /// The TD HOB does not fit its section.
    TdHobTooSmall {
        /// Bytes the list needs.
        needed: u64,
    },
    /// The TD made a VMCALL the host does not serve (R10).
    UnknownVmcall(u64),
    /// The TD made a request of the demo protocol (`crate::vmcall`) the host refuses.
    Request {
        /// R10 of the request.
        request: u64,
        /// Why.
        why: &'static str,
    },
    /// The TD left the shared page with a length that cannot be right.
    SharedLength(u64),
    /// The TD's console call carried a byte count that cannot be right (R11).
    ConsoleLength(u64),
    /// Pages still held by the TSM after teardown.
    Leaked {
        /// The first one.
        page: u64,
        /// How many.
        count: u64,
    },
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostError::Call { leaf, status, rcx, rdx } => {
                write!(
                    f,
                    "{leaf} returned {} ({:#018x}), rcx {rcx:#x}",
                    status.name().unwrap_or("unknown status"),
                    status.0
                )?;
                match report_refusal(*status, *rcx, *rdx) {
                    Some(why) => write!(f, ", rdx {rdx:#x}: the device's interface report was refused: {why}"),
                    None => Ok(()),
                }
            }
            HostError::Doe { leaf, error, exchanges } => {
                write!(f, "{leaf}: DOE mailbox: {error} after {exchanges} exchanges")
            }
            HostError::NotAuthentic { leaf, exchanges, abort } => write!(
                f,
                "{leaf} returned ANSWER_NOT_AUTHENTIC after {exchanges} exchanges; request withdrawn with TDH.SPDM.MNG ABORT ({})",
                abort.name().unwrap_or("unknown status")
            ),
            HostError::OutOfPages => f.write_str("the host ran out of pages"),
            HostError::Image(e) => write!(f, "guest image: {e}"),
            HostError::Tdvf(e) => write!(f, "TDVF image: {e}"),
            HostError::TdMemory(e) => write!(f, "TD memory: {e}"),
            HostError::TdvfVcpus(n) => {
                write!(f, "a TDVF TD needs MAX_VCPUS 1 (edk2 2022.11 reads TDG.VP.INFO's vCPU counts swapped), got {n}")
            }
            HostError::TdHobTooSmall { needed } => write!(f, "the TD HOB needs {needed} bytes, more than its section"),
            HostError::UnknownVmcall(r) => write!(f, "the TD made VMCALL {r:#x}, which the host does not serve"),
            HostError::Request { request, why } => {
                let name = crate::vmcall::row(*request).map_or("an unknown request", |r| r.name);
                write!(f, "the TD's {name} ({request:#x}): {why}")
            }
            HostError::SharedLength(n) => write!(f, "shared page: length {n} does not fit"),
            HostError::TdExit { reason, r10, r11, why } => {
                write!(f, "TD exit {reason} (R10 {r10:#x}, R11 {r11}): {why}")
            }
            HostError::ConsoleLength(n) => write!(f, "TD console: {n} bytes is not 1..=16"),
            HostError::Leaked { page, count } => write!(f, "{count} pages not reclaimed, the first at {page:#x}"),
        }
    }
}

/// `Ok(r)` if the call succeeded, else the error naming `leaf`.
///
/// # Errors
/// [`HostError::Call`].
pub fn check(leaf: &'static str, r: Regs) -> Result<Regs, HostError> {
    if r.status() == Status::SUCCESS {
        Ok(r)
    } else {
        Err(HostError::Call { leaf, status: r.status(), rcx: r.rcx, rdx: r.rdx })
    }
}

/// Why the TSM refused a device's interface report, read from a call's status, RCX and RDX:
/// `DEVICE_ERROR` with RCX 0x320 (the report step) and RDX the reason (docs/abi.md).
pub fn report_refusal(status: Status, rcx: u64, rdx: u64) -> Option<tsm::tdisp::ReportError> {
    let step = status.code() == Status::DEVICE_ERROR && rcx == tsm::error::REPORT_STEP;
    step.then(|| tsm::tdisp::ReportError::from_detail(rdx))?
}

/// One host call, its registers returned as they came back.
pub fn raw<H: Seamcall + ?Sized>(h: &mut H, regs: Regs) -> Regs {
    let mut r = regs;
    h.seamcall(&mut r);
    r
}

/// One host call that must succeed.
///
/// # Errors
/// [`HostError::Call`].
pub fn call<H: Seamcall + ?Sized>(h: &mut H, name: &'static str, regs: Regs) -> Result<Regs, HostError> {
    check(name, raw(h, regs))
}

/// A convertible page to donate.
///
/// # Errors
/// [`HostError::OutOfPages`].
pub fn donate<H: HostMemory + ?Sized>(h: &mut H) -> Result<u64, HostError> {
    h.donate().ok_or(HostError::OutOfPages)
}

/// One of the host's own pages.
///
/// # Errors
/// [`HostError::OutOfPages`].
pub fn scratch<H: HostMemory + ?Sized>(h: &mut H) -> Result<u64, HostError> {
    h.scratch().ok_or(HostError::OutOfPages)
}

/// What resumable calls moved through the mailbox.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PumpStats {
    /// Requests ferried to the device.
    pub exchanges: u32,
    /// Bytes sent to the device.
    pub bytes_out: u64,
    /// Bytes received from it.
    pub bytes_in: u64,
    /// SPDM version byte of the last plain SPDM response seen (0 if none).
    pub spdm_version: u8,
    /// Microseconds the TSM asked the host to wait before requests (RESPOND_IF_READY after a
    /// device's ResponseNotReady), summed.
    pub paused_us: u64,
}

/// A resumable call the mailbox could not complete: the TSM's last answer (a
/// `DEVICE_REQUEST`, still outstanding) and what the mailbox said.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stalled {
    /// The registers of the call that asked for the exchange.
    pub regs: Regs,
    /// The mailbox's failure.
    pub error: DoeError,
}

/// A resumable device leaf: its name, number, RCX and R9 (R8 carries the answer's length and
/// RDX the message page).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceLeaf {
    /// The leaf's name.
    pub name: &'static str,
    /// Its number.
    pub leaf: u64,
    /// RCX: the object it acts on.
    pub rcx: u64,
    /// R9: its operation.
    pub r9: u64,
}

/// Calls a resumable device leaf until it stops asking, moving each request from the message
/// page `msg` through the mailbox and its answer back. Returns the final registers, whatever
/// their status; a mailbox failure leaves the request outstanding ([`Stalled`]).
///
/// # Errors
/// [`Stalled`].
pub fn pump<H: Seamcall + HostMemory + ?Sized, D: Doe + ?Sized>(
    h: &mut H,
    doe: &mut D,
    l: DeviceLeaf,
    msg: u64,
    stats: &mut PumpStats,
) -> Result<Regs, Stalled> {
    let mut len = 0u64;
    let mut request = [0u8; MSG_BYTES];
    // The mailbox refuses answers larger than this buffer, so every answer fits the page.
    let mut answer = [0u8; MSG_BYTES];
    loop {
        let r = raw(h, Regs::call(l.leaf, l.rcx, msg, len, l.r9));
        if r.status() != Status::DEVICE_REQUEST {
            return Ok(r);
        }
        let n = usize::try_from(r.r8).unwrap_or(MSG_BYTES).min(MSG_BYTES);
        h.read(msg, &mut request[..n]);
        // RESPOND_IF_READY after ResponseNotReady: the device said when its answer is ready.
        if r.r9 != 0 {
            doe.pause(r.r9);
            stats.paused_us = stats.paused_us.saturating_add(r.r9);
        }
        let got = doe.exchange(&request[..n], &mut answer).map_err(|error| Stalled { regs: r, error })?;
        let got = got.min(MSG_BYTES);
        stats.exchanges += 1;
        stats.bytes_out += n as u64;
        stats.bytes_in += got as u64;
        // A plain SPDM object (vendor 1, type 1): byte 8 is SPDMVersion.
        if got > 8 && answer[..4] == [0x01, 0x00, 0x01, 0x00] {
            stats.spdm_version = answer[8];
        }
        h.write(msg, &answer[..got]);
        len = got as u64;
    }
}

/// A resumable call that must succeed, as a VMM makes it: pumped through the mailbox; an
/// answer that does not open (ANSWER_NOT_AUTHENTIC) or a mailbox failure makes the host give
/// the request up with TDH.SPDM.MNG ABORT on `pdev` (another try would get the same answer: the
/// device moved on).
///
/// # Errors
/// [`HostError`]: the final status if it is not SUCCESS, or the mailbox failure.
pub fn device_call<H: Seamcall + HostMemory + ?Sized, D: Doe + ?Sized>(
    h: &mut H,
    doe: &mut D,
    pdev: u64,
    l: DeviceLeaf,
    msg: u64,
    stats: &mut PumpStats,
) -> Result<Regs, HostError> {
    let before = stats.exchanges;
    match pump(h, doe, l, msg, stats) {
        Ok(r) if r.status().code() == Status::ANSWER_NOT_AUTHENTIC => {
            let abort = raw(h, Regs::call(leaf::SPDM_MNG, pdev, 0, 0, mng::ABORT));
            Err(HostError::NotAuthentic { leaf: l.name, exchanges: stats.exchanges - before, abort: abort.status() })
        }
        Ok(r) => check(l.name, r),
        Err(s) => {
            let _ = raw(h, Regs::call(leaf::SPDM_MNG, pdev, 0, 0, mng::ABORT));
            Err(HostError::Doe { leaf: l.name, error: s.error, exchanges: stats.exchanges - before })
        }
    }
}

/// TDH.SYS.CONFIG with the TDMR_INFO entries `tdmrs` (base, size, PAMT base, PAMT size each),
/// written to one of the host's pages. Returns the call's registers, whatever their status.
///
/// # Errors
/// [`HostError::OutOfPages`], or more entries than a page holds ([`HostError::Call`] is not
/// made: [`Status::OPERAND_INVALID`] is reported as the TSM would).
pub fn sys_config<H: Seamcall + HostMemory + ?Sized>(h: &mut H, tdmrs: &[[u64; 4]]) -> Result<Regs, HostError> {
    let page = scratch(h)?;
    if tdmrs.len() * 32 > PAGE_BYTES {
        return Err(HostError::Call { leaf: "TDH.SYS.CONFIG", status: Status::OPERAND_INVALID, rcx: 0, rdx: 0 });
    }
    for (i, tdmr) in tdmrs.iter().enumerate() {
        let mut bytes = [0u8; 32];
        for (chunk, w) in bytes.chunks_exact_mut(8).zip(tdmr) {
            chunk.copy_from_slice(&w.to_le_bytes());
        }
        h.write(page + 32 * i as u64, &bytes);
    }
    Ok(raw(h, Regs::call(leaf::SYS_CONFIG, page, tdmrs.len() as u64, 0, 0)))
}

const PAGE_BYTES: usize = crate::PAGE as usize;
