//! Instructions without memory effects: CPUID, RDTSC, RDRAND, control registers.

use core::arch::asm;
use core::arch::x86_64::{__cpuid_count, CpuidResult};

/// `cpuid` with `leaf` in EAX and `subleaf` in ECX.
pub fn cpuid(leaf: u32, subleaf: u32) -> CpuidResult {
    __cpuid_count(leaf, subleaf)
}

pub use seamless_drivers::tsc::rdtsc;

/// One RDRAND attempt: `None` when the DRNG had no value ready (CF = 0).
///
/// The caller checks CPUID.01H:ECX.RDRAND first: on a CPU without it the instruction raises #UD,
/// which the firmware's IDT reports as a fatal exception.
pub fn rdrand64() -> Option<u64> {
    let value: u64;
    let ok: u8;
    // SAFETY: RDRAND writes a register and CF; it touches no memory.
    unsafe { asm!("rdrand {v}", "setc {ok}", v = out(reg) value, ok = out(reg_byte) ok, options(nomem, nostack)) };
    (ok != 0).then_some(value)
}

/// CR2: the linear address of the last page fault.
pub fn cr2() -> u64 {
    let value: u64;
    // SAFETY: reading CR2 has no side effect.
    unsafe { asm!("mov {}, cr2", out(reg) value, options(nomem, nostack, preserves_flags)) };
    value
}

/// CR3: the physical address of the active PML4 (and flags).
pub fn cr3() -> u64 {
    let value: u64;
    // SAFETY: reading CR3 has no side effect.
    unsafe { asm!("mov {}, cr3", out(reg) value, options(nomem, nostack, preserves_flags)) };
    value
}
