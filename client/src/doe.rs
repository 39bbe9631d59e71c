//! The device's DOE mailbox, as the host sees it: one request object out, one response object
//! back (PCIe 6.x §6.30). The host ferries each `DEVICE_REQUEST` of a resumable call through it.

use core::fmt;

/// What went wrong in one exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DoeError {
    /// The request is not whole DWs, or shorter than the two header DWs; nothing was written.
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
    /// The response header announces more DWs than the buffer holds, or fewer than two, or
    /// the function withdrew the object while it was read; ABORT done.
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
            DoeError::BadResponseLength { dws } => write!(f, "response of {dws} DWs does not fit (aborted)"),
        }
    }
}

/// One DOE mailbox.
pub trait Doe {
    /// Sends `request` and receives the response into `answer`; returns its length. An answer
    /// longer than `answer` is an error ([`DoeError::BadResponseLength`]), never truncated.
    ///
    /// # Errors
    /// [`DoeError`].
    fn exchange(&mut self, request: &[u8], answer: &mut [u8]) -> Result<usize, DoeError>;

    /// Waits `us` microseconds before the next request: the device's response time after ERROR
    /// ResponseNotReady, which the TSM reports in R9 of DEVICE_REQUEST because it cannot wait
    /// itself. A mailbox waits at most its own response timeout (an answer later than that is
    /// lost anyway, and the TSM bounds how many times a device may say "not ready"). The default
    /// returns at once: a mailbox without a clock, such as a device in the same process, which
    /// has its answer before it is asked again.
    fn pause(&mut self, us: u64) {
        let _ = us;
    }
}
