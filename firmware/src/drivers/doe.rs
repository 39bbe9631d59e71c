//! A DOE mailbox (PCIe r6 §6.30, registers §7.9.24) driven by polling: one request object in,
//! one response object out.
//!
//! The rules it follows: never write the mailbox while BUSY, or while an error or a stale
//! response is pending (ABORT first); write the object DW by DW, then GO; poll Data Object
//! Ready (never BUSY: QEMU never sets it, and the spec lets a function stay not-BUSY while it
//! works) with a TSC deadline; on timeout or ERROR, ABORT and wait for the mailbox to clear;
//! read the response DW by DW, acknowledging each with a write to the Read Data Mailbox; check
//! the length in its header against the buffer; check ERROR at the end.
//!
//! QEMU's behaviour (`hw/pci/pcie_doe.c`) it copes with: the response is ready synchronously
//! after GO; a request QEMU (or the responder behind `spdm_port`) drops leaves no DOR and no
//! ERROR, which only the timeout and ABORT recover from.

use core::fmt;

use super::phys::Mmio;
use super::tsc::Tsc;

const CAPABILITIES: u64 = 0x04;
const CONTROL: u64 = 0x08;
const STATUS: u64 = 0x0C;
const WRITE_MAILBOX: u64 = 0x10;
const READ_MAILBOX: u64 = 0x14;
/// Bytes of the capability's registers.
pub const CAP_BYTES: u64 = 0x18;

const CONTROL_ABORT: u32 = 0x1;
const CONTROL_GO: u32 = 0x8000_0000;
const STATUS_BUSY: u32 = 0x1;
const STATUS_ERROR: u32 = 0x4;
const STATUS_READY: u32 = 0x8000_0000;

/// What went wrong in one exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DoeError {
    /// The request is not whole DWs, or shorter than the two header DWs.
    BadRequest {
        /// Its length in bytes.
        len: usize,
    },
    /// The mailbox stayed BUSY, or an ABORT did not clear it, within the timeout.
    Stuck {
        /// The status register last read.
        status: u32,
    },
    /// No response object within the timeout (the device dropped the request); ABORT done.
    Timeout {
        /// Microseconds waited.
        waited_us: u64,
    },
    /// The function set ERROR; ABORT done.
    DeviceError,
    /// The response header announces more DWs than the buffer holds, or fewer than two; ABORT
    /// done.
    BadResponseLength {
        /// DWs announced.
        dws: u32,
    },
}

impl fmt::Display for DoeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DoeError::BadRequest { len } => write!(f, "request of {len} bytes is not a DOE object"),
            DoeError::Stuck { status } => write!(f, "mailbox stuck (status {status:#010x})"),
            DoeError::Timeout { waited_us } => write!(f, "no response within {waited_us} us (aborted)"),
            DoeError::DeviceError => write!(f, "the function set DOE ERROR (aborted)"),
            DoeError::BadResponseLength { dws } => write!(f, "response announces {dws} DWs (aborted)"),
        }
    }
}

/// One DOE mailbox.
#[derive(Debug)]
pub struct Mailbox {
    regs: Mmio,
    timeout_us: u64,
}

impl Mailbox {
    /// The mailbox whose capability registers are `regs` ([`CAP_BYTES`] of them), with a
    /// response timeout of `timeout_us` (PCIe r6 §6.30.2: 1 s).
    pub fn new(regs: Mmio, timeout_us: u64) -> Mailbox {
        Mailbox { regs, timeout_us }
    }

    /// The DOE Capabilities register (interrupt support and message number).
    pub fn capabilities(&self) -> u32 {
        self.regs.read_u32(CAPABILITIES)
    }

    fn status(&self) -> u32 {
        self.regs.read_u32(STATUS)
    }

    /// ABORT, then waits until neither BUSY nor ERROR nor DOR is set.
    ///
    /// # Errors
    /// [`DoeError::Stuck`] if the mailbox does not clear within the timeout.
    pub fn abort(&mut self, tsc: &Tsc) -> Result<(), DoeError> {
        self.regs.write_u32(CONTROL, CONTROL_ABORT);
        self.wait(tsc, |s| s & (STATUS_BUSY | STATUS_ERROR | STATUS_READY) == 0)
            .map(|_| ())
            .map_err(|status| DoeError::Stuck { status })
    }

    /// Polls the status until `done` or the timeout; the last status on timeout.
    fn wait(&self, tsc: &Tsc, done: impl Fn(u32) -> bool) -> Result<u32, u32> {
        let deadline = tsc.deadline_us(self.timeout_us);
        loop {
            let s = self.status();
            if done(s) {
                return Ok(s);
            }
            if tsc.passed(deadline) {
                return Err(s);
            }
            crate::arch::cpu::relax();
        }
    }

    /// Sends `request` (a whole DOE object, DW padded) and reads the response object into
    /// `response`; returns its length in bytes.
    ///
    /// # Errors
    /// [`DoeError`]; after every error but `BadRequest` and `Stuck` the mailbox was aborted and
    /// is ready for the next exchange.
    pub fn exchange(&mut self, tsc: &Tsc, request: &[u8], response: &mut [u8]) -> Result<usize, DoeError> {
        if request.len() < 8 || !request.len().is_multiple_of(4) {
            return Err(DoeError::BadRequest { len: request.len() });
        }
        // A stale error or response, or BUSY, must clear before a new request (§6.30.2).
        let s = self.status();
        if s & (STATUS_ERROR | STATUS_READY) != 0 {
            self.abort(tsc)?;
        }
        if self.status() & STATUS_BUSY != 0 {
            self.wait(tsc, |s| s & STATUS_BUSY == 0).map_err(|status| DoeError::Stuck { status })?;
        }
        for dw in request.chunks_exact(4) {
            self.regs.write_u32(WRITE_MAILBOX, u32::from_le_bytes([dw[0], dw[1], dw[2], dw[3]]));
        }
        self.regs.write_u32(CONTROL, CONTROL_GO);
        let start = tsc.now();
        let s = match self.wait(tsc, |s| s & (STATUS_READY | STATUS_ERROR) != 0) {
            Ok(s) => s,
            Err(_) => {
                let waited_us = tsc.ticks_to_us(tsc.now().wrapping_sub(start));
                self.abort(tsc)?;
                return Err(DoeError::Timeout { waited_us });
            }
        };
        if s & STATUS_ERROR != 0 {
            self.abort(tsc)?;
            return Err(DoeError::DeviceError);
        }
        let header1 = self.regs.read_u32(READ_MAILBOX);
        self.regs.write_u32(READ_MAILBOX, 0);
        let header2 = self.regs.read_u32(READ_MAILBOX);
        self.regs.write_u32(READ_MAILBOX, 0);
        let dws = match header2 & 0x3_FFFF {
            0 => 1 << 18,
            n => n,
        };
        let bytes = dws as usize * 4;
        if dws < 2 || bytes > response.len() {
            self.abort(tsc)?;
            return Err(DoeError::BadResponseLength { dws });
        }
        response[..4].copy_from_slice(&header1.to_le_bytes());
        response[4..8].copy_from_slice(&header2.to_le_bytes());
        for chunk in response[8..bytes].chunks_exact_mut(4) {
            if self.status() & STATUS_READY == 0 {
                // The function withdrew the object before it was read out.
                self.abort(tsc)?;
                return Err(DoeError::BadResponseLength { dws });
            }
            chunk.copy_from_slice(&self.regs.read_u32(READ_MAILBOX).to_le_bytes());
            self.regs.write_u32(READ_MAILBOX, 0);
        }
        if self.status() & STATUS_ERROR != 0 {
            self.abort(tsc)?;
            return Err(DoeError::DeviceError);
        }
        Ok(bytes)
    }
}
