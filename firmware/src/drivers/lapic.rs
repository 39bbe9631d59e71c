//! The local APIC's timer as the TSM's preemption timer (xAPIC registers at 0xFEE00000, as
//! SeaBIOS leaves them): armed one-shot at vector [`crate::arch::idt::PREEMPT_VECTOR`] when a
//! TD's vCPU is entered, so that a TD that never exits still gives the host its turn (the INTR
//! intercept turns the interrupt into an exit; TDX's external-interrupt exit), disarmed when
//! the vCPU leaves. Its rate is measured once against the TSC.

use seamless_drivers::phys::Mmio;

use crate::arch::idt::PREEMPT_VECTOR;

const BASE: u64 = 0xFEE0_0000;
const VERSION: u64 = 0x030;
const SVR: u64 = 0x0F0;
const LVT_TIMER: u64 = 0x320;
const INITIAL_COUNT: u64 = 0x380;
const CURRENT_COUNT: u64 = 0x390;
const DIVIDE: u64 = 0x3E0;
/// LVT mask bit.
const MASKED: u32 = 1 << 16;
/// SVR's APIC software enable.
const APIC_ENABLE: u32 = 1 << 8;

/// The local APIC's timer.
#[derive(Debug)]
pub struct Lapic {
    regs: Mmio,
    /// Timer ticks per millisecond at divide-by-1.
    ticks_per_ms: u64,
}

impl Lapic {
    /// The timer, its rate measured over about a millisecond of `now_ns`; `None` if no APIC
    /// answers at 0xFEE00000 or its timer does not count.
    pub fn open(now_ns: &dyn Fn() -> u64) -> Option<Lapic> {
        // SAFETY: the local APIC's register page: the TSM writes only the timer's registers,
        // SVR and EOI, none of which does DMA or changes memory; the TSM is its only driver (a
        // world's APIC accesses are intercepted or emulated, never passed through).
        let regs = unsafe { Mmio::new(BASE, 0x1000) };
        if regs.read_u32(VERSION) == u32::MAX {
            return None;
        }
        regs.write_u32(SVR, regs.read_u32(SVR) | APIC_ENABLE | 0xFF);
        regs.write_u32(DIVIDE, 0xB);
        regs.write_u32(LVT_TIMER, MASKED | u32::from(PREEMPT_VECTOR));
        regs.write_u32(INITIAL_COUNT, u32::MAX);
        let start = now_ns();
        while now_ns().saturating_sub(start) < 1_000_000 {
            core::hint::spin_loop();
        }
        let elapsed_ns = now_ns().saturating_sub(start).max(1);
        let counted = u64::from(u32::MAX - regs.read_u32(CURRENT_COUNT));
        regs.write_u32(INITIAL_COUNT, 0);
        let ticks_per_ms = counted.saturating_mul(1_000_000) / elapsed_ns;
        (ticks_per_ms > 0).then_some(Lapic { regs, ticks_per_ms })
    }

    /// Fires once, `ns` from now (at least one tick; at most what the 32-bit count holds).
    pub fn arm(&self, ns: u64) {
        let ticks = (ns.saturating_mul(self.ticks_per_ms) / 1_000_000).clamp(1, u64::from(u32::MAX));
        self.regs.write_u32(LVT_TIMER, u32::from(PREEMPT_VECTOR));
        self.regs.write_u32(INITIAL_COUNT, ticks as u32);
    }

    /// Stops it (an interrupt that already fired stays pending until the TSM takes it).
    pub fn disarm(&self) {
        self.regs.write_u32(INITIAL_COUNT, 0);
        self.regs.write_u32(LVT_TIMER, MASKED | u32::from(PREEMPT_VECTOR));
    }

    /// Ticks per millisecond at divide-by-1.
    pub fn ticks_per_ms(&self) -> u64 {
        self.ticks_per_ms
    }
}
