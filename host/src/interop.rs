//! How a run ends when every device protocol interoperated but the TSM refused what the device
//! reported about its interface: DMTF's spdm-emu behind the DOE mailbox (`./run.sh --responder`)
//! answers SPDM, IDE_KM and TDISP as the specifications say, but its sample TDISP device reports
//! MMIO ranges of no real device, without the MMIO_REPORTING_OFFSET the TSM asked for. TDI.LOCK
//! then fails with DEVICE_ERROR naming the range (RCX 0x320, RDX the reason), the host takes the
//! assignment apart, and the run says both things in one line, on COM1 and as the COM3 frame
//! `interop.txt`, and exits with its own status (37), distinct from success and failure.

use core::fmt;

use tsm_client::host::device::{Assignment, Connected};
use tsm_client::host::unbind::Unbound;
use tsm_client::host::{report_refusal, HostError};

use seamless_drivers::console::{emit, BufWriter};
use seamless_drivers::say;

use crate::arch::{self, ExitCode};

/// The outcome line.
struct Refused<'a> {
    spdm: Connected,
    stream: u64,
    why: tsm::tdisp::ReportError,
    rcx: u64,
    rdx: u64,
    cleanup: &'a Unbound,
}

impl fmt::Display for Refused<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "interop: every protocol interoperated: SPDM {}.{} (SPDM.CONNECT: certificate chain, CHALLENGE, KEY_EXCHANGE/FINISH, signed measurements {}), IDE_KM (stream {} keyed and live), TDISP (LOCK_INTERFACE, the interface report fetched whole); the TSM refused the report at TDI.LOCK (DEVICE_ERROR, RCX {:#x}, RDX {:#x}): {}; nothing was imported or mapped, and the cleanup: {}",
            self.spdm.version >> 4,
            self.spdm.version & 0xF,
            if self.spdm.measured_in_session { "inside the session" } else { "in the clear" },
            self.stream,
            self.rcx,
            self.rdx,
            self.why,
            self.cleanup
        )
    }
}

/// If `e` is TDI.LOCK's refusal of the interface report, and the assignment came apart with
/// nothing mapped and every page back: says so (COM1, and the frame `interop.txt`) and exits QEMU
/// with [`ExitCode::ReportRefused`]. Otherwise returns, and the run fails as any other.
pub(crate) fn report_refused(e: &HostError, a: &Assignment, cleanup: &Unbound) {
    let HostError::Call { leaf: "TDH.TDI.LOCK", status, rcx, rdx } = *e else { return };
    let Some(why) = report_refusal(status, rcx, rdx) else { return };
    if a.mapped != 0 || a.dma || cleanup.pages.held != 0 || cleanup.first_refusal.is_some() {
        return;
    }
    let line = Refused { spdm: a.spdm, stream: a.stream, why, rcx, rdx, cleanup };
    say!("{line}");
    let mut text = [0u8; 1024];
    let mut w = BufWriter::new(&mut text);
    match fmt::Write::write_fmt(&mut w, format_args!("{line}\n")) {
        Ok(()) => {
            let n = w.len();
            emit("interop.txt", &text[..n]);
        }
        Err(_) => say!("interop: the outcome line does not fit its frame; not sent on COM3"),
    }
    arch::exit(ExitCode::ReportRefused)
}
