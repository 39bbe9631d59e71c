//! How a run ends: the code written to QEMU's `isa-debug-exit` device (port [`DEBUG_EXIT_PORT`]),
//! after which QEMU exits with status `(code << 1) | 1`. The TSM writes it itself, or ends the
//! host world's run with the code the host agent wrote there (the port is the TSM's: it says its
//! last word first). One list of codes for both binaries.

/// The I/O port of QEMU's `isa-debug-exit` device (`iobase=0xf4`).
pub const DEBUG_EXIT_PORT: u16 = 0xf4;

/// What QEMU's `isa-debug-exit` device reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum ExitCode {
    /// QEMU exits with status 33.
    Success = 0x10,
    /// QEMU exits with status 35.
    Failure = 0x11,
    /// QEMU exits with status 37: every device protocol interoperated, but the TSM refused the
    /// device's interface report at TDI.LOCK (a device that reports ranges of no real device,
    /// such as spdm-emu's sample TDISP device); nothing was mapped and the assignment was taken
    /// apart.
    ReportRefused = 0x12,
}

impl ExitCode {
    /// The code `raw` names; anything else is a failure.
    pub fn from_raw(raw: u32) -> ExitCode {
        match raw {
            0x10 => ExitCode::Success,
            0x12 => ExitCode::ReportRefused,
            _ => ExitCode::Failure,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_raw_names_each_code_and_fails_everything_else() {
        for c in [ExitCode::Success, ExitCode::Failure, ExitCode::ReportRefused] {
            assert_eq!(ExitCode::from_raw(c as u32), c);
        }
        for raw in [0, 0x11, 0x13, 0xFFFF_FFFF] {
            assert_eq!(ExitCode::from_raw(raw), ExitCode::Failure);
        }
    }
}
