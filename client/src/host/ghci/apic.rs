//! The part of a TD vCPU's x2APIC the host emulates, as a TDX VMM does: the registers the TD
//! reaches with TDG.VP.VMCALL<RDMSR/WRMSR> (ID, version, LDR, SVR, ESR, ICR, the LVT, the timer)
//! and IA32_APIC_BASE. TPR, PPR, EOI, ISR, TMR and IRR are the TSM's virtual APIC and never come
//! here (edk2's `AccessMsrTdxCall` keeps them direct; the TSM answers them).
//!
//! The **timer** is the one that matters: edk2's `LocalApicTimerDxe` programs it periodic at
//! vector 0x20 with TMICT 0x989680 and divide-by-1 over a nominal 1 GHz clock (its
//! `PcdFSBClock`): a 10 ms tick. The host keeps the clock in nanoseconds of its own time
//! ([`HostApic::due`]), and posts the vector to the vCPU (SEAMLESS.VP.POST) when a period has
//! passed; ticks the TD could not take in time merge, as a real APIC's IRR merges them.
//! Intel SDM vol. 3 §11.5.4 (timer), §11.12 (x2APIC MSRs).

use crate::host::ghci::leaf;

/// x2APIC MSRs the host serves.
pub mod msr {
    /// IA32_APIC_BASE.
    pub const APIC_BASE: u32 = 0x1B;
    /// Local APIC ID.
    pub const ID: u32 = 0x802;
    /// Version.
    pub const VERSION: u32 = 0x803;
    /// Logical destination (read-only in x2APIC mode).
    pub const LDR: u32 = 0x80D;
    /// Spurious interrupt vector.
    pub const SVR: u32 = 0x80F;
    /// Error status.
    pub const ESR: u32 = 0x828;
    /// LVT corrected machine check.
    pub const LVT_CMCI: u32 = 0x82F;
    /// Interrupt command.
    pub const ICR: u32 = 0x830;
    /// LVT timer.
    pub const LVT_TIMER: u32 = 0x832;
    /// LVT thermal sensor.
    pub const LVT_THERMAL: u32 = 0x833;
    /// LVT performance counters.
    pub const LVT_PMC: u32 = 0x834;
    /// LVT LINT0.
    pub const LVT_LINT0: u32 = 0x835;
    /// LVT LINT1.
    pub const LVT_LINT1: u32 = 0x836;
    /// LVT error.
    pub const LVT_ERROR: u32 = 0x837;
    /// Timer initial count.
    pub const TMICT: u32 = 0x838;
    /// Timer current count (read-only).
    pub const TMCCT: u32 = 0x839;
    /// Timer divide configuration.
    pub const TDCR: u32 = 0x83E;
}

/// LVT mask bit.
const MASKED: u32 = 1 << 16;
/// The nominal APIC timer clock, Hz: edk2's OVMF `PcdFSBClock`, so the TD's 10 ms is 10 ms.
pub const TIMER_HZ: u64 = 1_000_000_000;
/// Version register: version 0x14, 6 LVT entries (max LVT 5), as an x2APIC has.
const VERSION: u32 = 0x0005_0014;

/// Why an access is refused (the TD's TDVMCALL gets TDG.VP.VMCALL_INVALID_OPERAND).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApicRefusal {
    /// Not a register of this part of the APIC.
    NotHere,
    /// Read-only, or reserved bits set.
    Invalid,
}

/// The host-emulated registers of one vCPU's x2APIC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostApic {
    id: u32,
    svr: u32,
    esr: u32,
    icr: u64,
    lvt: [u32; 7],
    tdcr: u32,
    tmict: u32,
    /// When TMICT was written (the count started), ns of the host's clock.
    start_ns: u64,
    /// Periods already posted since `start_ns`.
    fired: u64,
    /// A vector the TD sent itself through the ICR, not posted yet.
    self_ipi: Option<u8>,
}

const LVT_MSRS: [u32; 7] =
    [msr::LVT_CMCI, msr::LVT_TIMER, msr::LVT_THERMAL, msr::LVT_PMC, msr::LVT_LINT0, msr::LVT_LINT1, msr::LVT_ERROR];

impl HostApic {
    /// The APIC of vCPU `id` at reset: every LVT masked, the timer stopped, SVR 0xFF.
    pub const fn new(id: u32) -> HostApic {
        HostApic {
            id,
            svr: 0xFF,
            esr: 0,
            icr: 0,
            lvt: [MASKED; 7],
            tdcr: 0,
            tmict: 0,
            start_ns: 0,
            fired: 0,
            self_ipi: None,
        }
    }

    /// IA32_APIC_BASE as a TD reads it: 0xFEE00000, EN, EXTD (x2APIC, as TDX fixes it) and BSP
    /// for vCPU 0.
    pub const fn apic_base(&self) -> u64 {
        tsm::vapic::apic_base(self.id as usize)
    }

    /// The timer's divisor (TDCR bits 3, 1:0).
    fn divisor(&self) -> u64 {
        let code = ((self.tdcr & 8) >> 1) | (self.tdcr & 3);
        if code == 7 {
            1
        } else {
            2 << code
        }
    }

    /// One period of the timer in ns, `None` while it is stopped.
    fn period_ns(&self) -> Option<u64> {
        let ticks = u64::from(self.tmict).checked_mul(self.divisor())?;
        (ticks != 0).then(|| ticks.saturating_mul(1_000_000_000) / TIMER_HZ)
    }

    fn periodic(&self) -> bool {
        (self.lvt_timer() >> 17) & 3 == 1
    }

    fn lvt_timer(&self) -> u32 {
        self.lvt[1]
    }

    /// RDMSR of `m` at time `now_ns`.
    ///
    /// # Errors
    /// [`ApicRefusal`].
    pub fn read(&self, m: u32, now_ns: u64) -> Result<u64, ApicRefusal> {
        Ok(match m {
            msr::APIC_BASE => self.apic_base(),
            msr::ID => u64::from(self.id),
            msr::VERSION => u64::from(VERSION),
            msr::LDR => u64::from((self.id >> 4) << 16 | 1 << (self.id & 0xF)),
            msr::SVR => u64::from(self.svr),
            msr::ESR => u64::from(self.esr),
            msr::ICR => self.icr,
            msr::TMICT => u64::from(self.tmict),
            msr::TMCCT => self.current_count(now_ns),
            msr::TDCR => u64::from(self.tdcr),
            m => match LVT_MSRS.iter().position(|&l| l == m) {
                Some(i) => u64::from(self.lvt[i]),
                None => return Err(ApicRefusal::NotHere),
            },
        })
    }

    /// TMCCT: what is left of the current period.
    fn current_count(&self, now_ns: u64) -> u64 {
        let Some(period) = self.period_ns() else { return 0 };
        let elapsed = now_ns.saturating_sub(self.start_ns);
        if !self.periodic() && elapsed >= period {
            return 0;
        }
        let left_ns = period - elapsed % period;
        left_ns.saturating_mul(TIMER_HZ) / 1_000_000_000 / self.divisor()
    }

    /// WRMSR of `m` with `value` at time `now_ns`; a refused write changes nothing.
    ///
    /// # Errors
    /// [`ApicRefusal`].
    pub fn write(&mut self, m: u32, value: u64, now_ns: u64) -> Result<(), ApicRefusal> {
        let low = u32::try_from(value).ok();
        match (m, low) {
            // The base is fixed (x2APIC enabled); writing the same value is allowed.
            (msr::APIC_BASE, _) if value == self.apic_base() => {}
            (msr::SVR, Some(v)) if v & !0x11FF == 0 => self.svr = v,
            // Writing ESR latches the errors; there are none.
            (msr::ESR, Some(0)) => self.esr = 0,
            (msr::ICR, _) => self.icr_write(value),
            (msr::TDCR, Some(v)) if v & !0xB == 0 => self.tdcr = v,
            (msr::TMICT, Some(v)) => {
                self.tmict = v;
                self.start_ns = now_ns;
                self.fired = 0;
            }
            (m, Some(v)) if LVT_MSRS.contains(&m) => {
                let i = LVT_MSRS.iter().position(|&l| l == m).ok_or(ApicRefusal::NotHere)?;
                self.lvt[i] = v;
            }
            (m, _) if self.read(m, now_ns).is_ok() => return Err(ApicRefusal::Invalid),
            _ => return Err(ApicRefusal::NotHere),
        }
        Ok(())
    }

    /// An IPI through the ICR: fixed delivery to this vCPU (shorthand self, or its own ID) is
    /// posted like any interrupt; INIT, SIPI and IPIs to other vCPUs are dropped (one vCPU).
    fn icr_write(&mut self, value: u64) {
        self.icr = value & !(1 << 12);
        let vector = (value & 0xFF) as u8;
        let fixed = (value >> 8) & 7 == 0;
        let shorthand = (value >> 18) & 3;
        let to_me = shorthand == 1 || (shorthand == 0 && (value >> 32) as u32 == self.id);
        if fixed && to_me && vector >= tsm::vapic::VirtualApic::FIRST_VECTOR {
            self.self_ipi = Some(vector);
        }
    }

    /// The vector to post now, if the timer has fired a period the host has not posted yet
    /// (or the TD sent itself an IPI). A periodic timer fires once per elapsed period; periods
    /// the host could not post in time merge into one. A masked LVT fires nothing.
    pub fn due(&mut self, now_ns: u64) -> Option<u8> {
        if let Some(v) = self.self_ipi.take() {
            return Some(v);
        }
        let period = self.period_ns()?;
        let periods = now_ns.saturating_sub(self.start_ns) / period;
        let pending = if self.periodic() { periods > self.fired } else { periods >= 1 && self.fired == 0 };
        if !pending {
            return None;
        }
        self.fired = if self.periodic() { periods } else { 1 };
        let lvt = self.lvt_timer();
        let vector = (lvt & 0xFF) as u8;
        (lvt & MASKED == 0 && vector >= tsm::vapic::VirtualApic::FIRST_VECTOR).then_some(vector)
    }

    /// When the timer fires next (ns of the host's clock), if it is running and unmasked.
    pub fn next_deadline(&self) -> Option<u64> {
        if self.self_ipi.is_some() {
            return Some(0);
        }
        let period = self.period_ns()?;
        if self.lvt_timer() & MASKED != 0 || (!self.periodic() && self.fired != 0) {
            return None;
        }
        let next = if self.periodic() { self.fired + 1 } else { 1 };
        Some(self.start_ns.saturating_add(period.saturating_mul(next)))
    }
}

/// The GHCI status for a refused APIC access.
pub const fn refusal_status(_r: ApicRefusal) -> u64 {
    leaf::status::INVALID_OPERAND
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    /// The LocalApicTimerDxe programming: divide by 1, periodic, vector 0x20, 10 ms.
    fn edk2_timer(a: &mut HostApic, now: u64) {
        a.write(msr::TDCR, 0xB, now).unwrap();
        a.write(msr::LVT_TIMER, 0x2_0020, now).unwrap();
        a.write(msr::TMICT, 0x0098_9680, now).unwrap();
    }

    #[test]
    fn write_rejects_read_only_registers_reserved_bits_and_others() {
        let mut a = HostApic::new(0);
        let before = a;
        assert_eq!(a.write(msr::TMCCT, 5, 0), Err(ApicRefusal::Invalid));
        assert_eq!(a.write(msr::ID, 5, 0), Err(ApicRefusal::Invalid));
        assert_eq!(a.write(msr::TDCR, 0x10, 0), Err(ApicRefusal::Invalid));
        assert_eq!(a.write(msr::ESR, 1, 0), Err(ApicRefusal::Invalid));
        assert_eq!(a.write(msr::APIC_BASE, 0xFEE0_0900, 0), Err(ApicRefusal::Invalid), "x2APIC cannot be left");
        assert_eq!(a.write(msr::LVT_TIMER, 1 << 32, 0), Err(ApicRefusal::Invalid));
        assert_eq!(a.write(0x80B, 0, 0), Err(ApicRefusal::NotHere), "EOI is the TSM's");
        assert_eq!(a.read(0x808, 0), Err(ApicRefusal::NotHere), "TPR is the TSM's");
        assert_eq!(a, before);
    }

    #[test]
    fn due_rejects_a_masked_or_stopped_timer() {
        let mut a = HostApic::new(0);
        assert_eq!((a.due(100 * MS), a.next_deadline()), (None, None), "stopped at reset");
        a.write(msr::LVT_TIMER, 0x3_0020, 0).unwrap(); // periodic, masked
        a.write(msr::TMICT, 1000, 0).unwrap();
        assert_eq!((a.due(100 * MS), a.next_deadline()), (None, None), "masked");
        a.write(msr::TMICT, 0, 0).unwrap();
        a.write(msr::LVT_TIMER, 0x2_0020, 0).unwrap();
        assert_eq!(a.due(100 * MS), None, "TMICT 0 stops it");
    }

    #[test]
    fn due_happy_path_ticks_every_10_ms_and_merges_late_ticks() {
        let mut a = HostApic::new(0);
        edk2_timer(&mut a, 5 * MS);
        assert_eq!(a.next_deadline(), Some(15 * MS));
        assert_eq!(a.due(14 * MS), None);
        assert_eq!(a.due(15 * MS), Some(0x20));
        assert_eq!(a.due(16 * MS), None, "once per period");
        assert_eq!(a.read(msr::TMCCT, 20 * MS).unwrap(), 5_000_000, "half a period left");
        assert_eq!(a.due(100 * MS), Some(0x20), "eight late periods merge into one");
        assert_eq!(a.due(101 * MS), None);
        assert_eq!(a.next_deadline(), Some(105 * MS));
    }

    #[test]
    fn one_shot_fires_once_and_divisor_scales_the_period() {
        let mut a = HostApic::new(0);
        a.write(msr::TDCR, 0x3, 0).unwrap(); // divide by 16
        a.write(msr::LVT_TIMER, 0x30, 0).unwrap(); // one-shot, vector 0x30
        a.write(msr::TMICT, 1000, 0).unwrap();
        assert_eq!(a.next_deadline(), Some(16_000));
        assert_eq!(a.due(15_999), None);
        assert_eq!(a.due(16_000), Some(0x30));
        assert_eq!((a.due(100_000), a.next_deadline()), (None, None));
        assert_eq!(a.read(msr::TMCCT, 100_000).unwrap(), 0);
    }

    #[test]
    fn registers_read_as_an_enabled_x2apic() {
        let mut a = HostApic::new(0);
        assert_eq!(a.read(msr::APIC_BASE, 0).unwrap(), 0xFEE0_0D00);
        assert_eq!(a.read(msr::VERSION, 0).unwrap(), 0x5_0014);
        assert_eq!(a.read(msr::LDR, 0).unwrap(), 1);
        assert_eq!(HostApic::new(17).read(msr::LDR, 0).unwrap(), 1 << 16 | 2);
        a.write(msr::SVR, 0x1FF, 0).unwrap();
        assert_eq!(a.read(msr::SVR, 0).unwrap(), 0x1FF);
        a.write(msr::ICR, 0x4_0040, 0).unwrap(); // fixed, self, vector 0x40
        assert_eq!(a.due(0), Some(0x40), "a self IPI is posted");
        a.write(msr::ICR, 0x500, 0).unwrap(); // INIT: dropped
        assert_eq!(a.due(0), None);
    }
}
