//! The TSC as the firmware's clock, calibrated once at boot.
//!
//! Source of the frequency, in order: CPUID leaf 0x15 when it names the crystal frequency
//! (ECX != 0; real Intel parts), else a measurement against PIT channel 2 (what QEMU's TCG gets:
//! its TSC runs at the host's rate while leaf 0x15 reports no crystal and leaf 0x16, when
//! present, is the model's nominal value, not the host's). CPUID 0x16 is only the fallback when
//! no PIT answers.
//!
//! The measurement is the shortest of [`CALIBRATION_ROUNDS`] countdowns of [`CALIBRATION_MS`].
//! Each counts TSC ticks from just before the write that starts the PIT's count to the poll that
//! sees its terminal count, so a vCPU the host deschedules anywhere in between (the PIT runs on
//! the host's clock while no instruction of the vCPU does) only ever adds ticks, and the
//! minimum is the estimate least disturbed by a loaded host. **Changed:** the first RDTSC used
//! to follow that write; descheduled between the two, the vCPU saw a countdown already mostly
//! run, and a loaded host once made a 2.6 GHz TSC read as 61 MHz (every timeout 42 times short).

#![allow(unsafe_code)]

use core::fmt;

use core::arch::x86_64::{__cpuid_count, CpuidResult};

use crate::port::Port;

/// `cpuid` with `leaf` in EAX and `subleaf` in ECX.
fn cpuid(leaf: u32, subleaf: u32) -> CpuidResult {
    __cpuid_count(leaf, subleaf)
}

/// The time-stamp counter (the same counter in the TSM and in the host world: the host
/// world's VMCB adds no TSC offset).
#[inline]
pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC reads a counter into EDX:EAX and touches no memory; CR4.TSD is clear in
    // ring 0 in both binaries.
    unsafe { x86::time::rdtsc() }
}

/// Length of one PIT countdown.
pub const CALIBRATION_MS: u64 = 2;
/// Countdowns measured; the shortest counts.
pub const CALIBRATION_ROUNDS: u32 = 4;
/// The PIT's input clock, Hz.
const PIT_HZ: u64 = 1_193_182;
/// Port reads the calibration waits for OUT2 before it calls the PIT absent: a 2 ms countdown
/// takes a few thousand under TCG, so this gives up within seconds on a machine without a PIT
/// (and only once: the first failed round ends the calibration).
const MAX_PIT_POLLS: u32 = 5_000_000;

/// Where the frequency came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TscSource {
    /// CPUID leaf 0x15 (crystal × ratio).
    Cpuid15,
    /// Measured against PIT channel 2.
    Pit,
    /// CPUID leaf 0x16's base frequency.
    Cpuid16,
    /// Calibrated by the TSM and handed over in the host world's boot information.
    BootInfo,
}

impl fmt::Display for TscSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TscSource::Cpuid15 => "CPUID leaf 0x15",
            TscSource::Pit => "PIT channel 2",
            TscSource::Cpuid16 => "CPUID leaf 0x16",
            TscSource::BootInfo => "the TSM's boot information",
        })
    }
}

/// No way to learn the TSC frequency.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NoTscFrequency;

/// The calibrated TSC.
#[derive(Clone, Copy, Debug)]
pub struct Tsc {
    hz: u64,
    /// Where `hz` came from.
    pub source: TscSource,
}

impl Tsc {
    /// Calibrates the TSC.
    ///
    /// # Errors
    /// [`NoTscFrequency`] if CPUID names no frequency and no PIT answers.
    pub fn calibrate() -> Result<Tsc, NoTscFrequency> {
        let max_leaf = cpuid(0, 0).eax;
        if max_leaf >= 0x15 {
            let l = cpuid(0x15, 0);
            if l.eax != 0 && l.ebx != 0 && l.ecx != 0 {
                let hz = u64::from(l.ecx) * u64::from(l.ebx) / u64::from(l.eax);
                return Ok(Tsc { hz, source: TscSource::Cpuid15 });
            }
        }
        let best = (0..CALIBRATION_ROUNDS).map(|_| pit_measure()).try_fold(u64::MAX, |m, t| t.map(|t| m.min(t)));
        if let Some(ticks) = best {
            return Ok(Tsc { hz: ticks * 1000 / CALIBRATION_MS, source: TscSource::Pit });
        }
        if max_leaf >= 0x16 {
            let mhz = u64::from(cpuid(0x16, 0).eax & 0xFFFF);
            if mhz != 0 {
                return Ok(Tsc { hz: mhz * 1_000_000, source: TscSource::Cpuid16 });
            }
        }
        Err(NoTscFrequency)
    }

    /// The TSC at `hz` ticks per second, as another binary calibrated it (never 0).
    pub fn with_hz(hz: u64) -> Tsc {
        Tsc { hz: hz.max(1), source: TscSource::BootInfo }
    }

    /// Ticks per second.
    pub fn hz(&self) -> u64 {
        self.hz
    }

    /// The counter now.
    pub fn now(&self) -> u64 {
        rdtsc()
    }

    /// Ticks as microseconds.
    pub fn ticks_to_us(&self, ticks: u64) -> u64 {
        (u128::from(ticks) * 1_000_000 / u128::from(self.hz.max(1))) as u64
    }

    /// Ticks as nanoseconds.
    pub fn ticks_to_ns(&self, ticks: u64) -> u64 {
        (u128::from(ticks) * 1_000_000_000 / u128::from(self.hz.max(1))) as u64
    }
}

/// TSC ticks while PIT channel 2 counts down [`CALIBRATION_MS`] in mode 0 (OUT2 rises at
/// terminal count, visible in bit 5 of port 0x61).
fn pit_measure() -> Option<u64> {
    // SAFETY: 0x42/0x43 are the PIT's channel 2 and mode registers and 0x61 is the NMI status /
    // speaker gate port; none can reach memory. The speaker stays off (bit 1 clear).
    let (ch2, mode, gate) = unsafe { (Port::new(0x42), Port::new(0x43), Port::new(0x61)) };
    let count = PIT_HZ * CALIBRATION_MS / 1000;
    let saved = gate.read_u8();
    // Gate high, speaker off: in mode 0 the count then starts with the clock after it is loaded
    // (QEMU's i8254 ignores the gate in mode 0 and counts from the load anyway).
    gate.write_u8((saved & !0x02) | 0x01);
    mode.write_u8(0xB0); // channel 2, lobyte/hibyte, mode 0 (OUT2 low until terminal count)
    ch2.write_u8(count as u8);
    // Before the high byte, whose write starts the count: never after it (module notes).
    let start = rdtsc();
    ch2.write_u8((count >> 8) as u8);
    let mut polls = 0;
    while gate.read_u8() & 0x20 == 0 {
        polls += 1;
        if polls > MAX_PIT_POLLS {
            gate.write_u8(saved);
            return None;
        }
    }
    let ticks = rdtsc().wrapping_sub(start);
    gate.write_u8(saved);
    Some(ticks)
}

impl super::doe::Micros for Tsc {
    fn now_us(&self) -> u64 {
        self.ticks_to_us(rdtsc())
    }
}
