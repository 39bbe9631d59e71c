//! The guest's console: its text goes to the host sixteen bytes per TDG.VP.VMCALL, request
//! CONSOLE (`tsm_client::console` is the format, one copy for both sides); the host writes the
//! bytes to its own COM1, so the TD's lines (each prefixed `td: `) land in the run's console
//! beside the firmware's. Not GHCI's TDVMCALL<IO> to port 0x3F8 as TDVF does: that call puts
//! the port in R14 and the byte in R15, and TDG.VP.VMCALL hands the host R10..R13 only. The
//! host sees every byte: the console is for diagnostics, never for anything secret.

use core::fmt;

use tsm::abi::guest::leaf;
use tsm_client::vmcall;

use crate::arch;
use crate::tdcall::TdcallRegs;

/// RCX of the call: the registers the request exposes (R10..R13).
const EXPOSE_R10_R13: u64 = 0x3C00;

/// The console; a write fails only if the TSM refuses the TDCALL.
#[derive(Debug)]
pub struct Console;

impl Console {
    /// Sends `bytes`, sixteen per call.
    ///
    /// # Errors
    /// The TDCALL's status.
    pub fn send(&mut self, mut bytes: &[u8]) -> Result<(), u64> {
        while !bytes.is_empty() {
            let ([count, lo, hi], n) = tsm_client::console::pack(bytes);
            let mut r = TdcallRegs {
                rax: leaf::VP_VMCALL,
                rcx: EXPOSE_R10_R13,
                r10: vmcall::CONSOLE,
                r11: count,
                r12: lo,
                r13: hi,
                ..TdcallRegs::default()
            };
            arch::tdcall(&mut r);
            if r.rax != 0 {
                return Err(r.rax);
            }
            bytes = &bytes[n..];
        }
        Ok(())
    }
}

impl fmt::Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.send(s.as_bytes()).map_err(|_| fmt::Error)
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
