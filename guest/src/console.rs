//! The guest's console: COM1 (port 0x3F8) through TDG.VP.VMCALL<IO>, one byte per call, as
//! TDVF's `BaseIoLibIntrinsicSev` does in a TD. The host world serves each call with its own
//! OUT to COM1, so the guest's lines land in the run's console (`serial.log`) beside the
//! firmware's, each prefixed `td: `. Issuing the TDVMCALL directly (rather than an OUT that
//! raises #VE and is then converted) halves the exits per byte. The host sees every byte: the
//! console is for diagnostics, never for anything secret.

use core::fmt;

use crate::arch;
use crate::tdcall::{io_write, tdvmcall_result, TdcallError};

/// COM1's data port.
const COM1: u16 = 0x3F8;

/// The console; writes fail only if the TSM or the host refuses the TDVMCALL.
#[derive(Debug)]
pub struct Console;

impl Console {
    /// Writes one byte to COM1.
    ///
    /// # Errors
    /// [`TdcallError`] from the TDVMCALL.
    pub fn put(&mut self, b: u8) -> Result<(), TdcallError> {
        let mut r = io_write(COM1, 1, u32::from(b));
        arch::tdcall(&mut r);
        tdvmcall_result(&r)
    }
}

impl fmt::Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            if b == b'\n' {
                self.put(b'\r').map_err(|_| fmt::Error)?;
            }
            self.put(b).map_err(|_| fmt::Error)?;
        }
        Ok(())
    }
}

/// Prints a line on the console, prefixed `td: `; a refused write is dropped (there is nowhere
/// else to say it).
macro_rules! say {
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        let _ = write!($crate::console::Console, "td: ");
        let _ = writeln!($crate::console::Console, $($arg)*);
    }};
}
pub(crate) use say;
