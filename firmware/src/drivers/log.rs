//! The defmt global logger: frames go out on COM2 as defmt's rzcobs stream (0x00-delimited), which
//! `defmt-print -e <firmware ELF>` decodes on the host. Plain text never goes to COM2. Log
//! timestamps are microseconds since `_start32` (TSC).

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::serial::Uart;

/// TSC ticks per microsecond once calibrated (0 before: timestamps read 0).
static TICKS_PER_US: AtomicU64 = AtomicU64::new(0);

/// Sets the timestamp scale.
pub fn set_tsc_hz(hz: u64) {
    TICKS_PER_US.store(hz / 1_000_000, Ordering::Relaxed);
}

defmt::timestamp!("{=u64:us}", {
    match TICKS_PER_US.load(Ordering::Relaxed) {
        0 => 0,
        t => crate::arch::cpu::rdtsc().wrapping_sub(crate::arch::boot_tsc()) / t,
    }
});

struct LoggerState {
    uart: UnsafeCell<Option<Uart>>,
    encoder: UnsafeCell<defmt::Encoder>,
}

// SAFETY: one CPU, no interrupts handled while logging (exceptions never return and print on
// COM1, not through defmt); TAKEN below also keeps a nested acquire (a log inside a log) out.
unsafe impl Sync for LoggerState {}

static STATE: LoggerState =
    LoggerState { uart: UnsafeCell::new(None), encoder: UnsafeCell::new(defmt::Encoder::new()) };
static TAKEN: AtomicBool = AtomicBool::new(false);

#[defmt::global_logger]
struct Com2Logger;

// SAFETY: `acquire`/`release` bracket every frame; TAKEN makes them exclusive, so `write` and
// `flush` only run between them with sole access to STATE.
unsafe impl defmt::Logger for Com2Logger {
    fn acquire() {
        if TAKEN.swap(true, Ordering::Acquire) {
            // A nested log (from inside a Format impl): defmt forbids it; drop the frame by
            // halting loudly instead of corrupting the stream.
            crate::arch::exit_qemu(crate::arch::ExitCode::Failure);
        }
        // SAFETY: exclusive access while TAKEN is held (see above).
        unsafe {
            let uart = &mut *STATE.uart.get();
            if uart.is_none() {
                *uart = Some(Uart::com2());
            }
            let encoder = &mut *STATE.encoder.get();
            encoder.start_frame(|b| write(uart, b));
        }
    }

    unsafe fn flush() {}

    unsafe fn release() {
        // SAFETY: called after `acquire` (defmt's contract), so access is still exclusive.
        unsafe {
            let uart = &mut *STATE.uart.get();
            (*STATE.encoder.get()).end_frame(|b| write(uart, b));
        }
        TAKEN.store(false, Ordering::Release);
    }

    unsafe fn write(bytes: &[u8]) {
        // SAFETY: between `acquire` and `release` (defmt's contract): exclusive access.
        unsafe {
            let uart = &mut *STATE.uart.get();
            (*STATE.encoder.get()).write(bytes, |b| write(uart, b));
        }
    }
}

fn write(uart: &mut Option<Uart>, bytes: &[u8]) {
    if let Some(u) = uart {
        u.write_bytes(bytes);
    }
}
