//! The legacy I/O ports the host touches on a TD's behalf (`tsm_client::host::ghci::ports`
//! decides which the TD reaches): COM1's registers, the ACPI PM timer and the CMOS index and
//! data registers. Nothing else: a port outside this set reads all ones and takes no write.

use seamless_drivers::port::Port;

/// COM1's eight registers.
const COM1: core::ops::RangeInclusive<u16> = 0x3F8..=0x3FF;
/// The ACPI PM timer (PMBASE 0x600 + 8), read-only.
const PM_TIMER: u16 = 0x608;
/// CMOS index and data.
const CMOS: [u16; 2] = [0x70, 0x71];

/// The set of ports above.
#[derive(Debug)]
pub struct LegacyPorts(());

impl LegacyPorts {
    /// The ports.
    pub const fn new() -> LegacyPorts {
        LegacyPorts(())
    }

    fn port(port: u16, write: bool) -> Option<Port> {
        let allowed = COM1.contains(&port) || (port == PM_TIMER && !write) || CMOS.contains(&port);
        // SAFETY: a 16550 UART, the PM timer (a counter) and the CMOS/RTC index and data: none
        // does DMA or changes a memory mapping. Their only other driver is the firmware's own
        // console on COM1, which writes whole lines between the host's accesses.
        allowed.then(|| unsafe { Port::new(port) })
    }

    /// Reads `size` bytes (1, 2, 4) from `port`; all ones for a port outside the set.
    pub fn read(&self, port: u16, size: u8) -> u32 {
        match (Self::port(port, false), size) {
            (Some(p), 1) => u32::from(p.read_u8()),
            (Some(p), 2) => u32::from(p.read_u16()),
            (Some(p), 4) => p.read_u32(),
            _ => u32::MAX,
        }
    }

    /// Writes `size` bytes to `port`; dropped for a port outside the set.
    pub fn write(&self, port: u16, size: u8, value: u32) {
        match (Self::port(port, true), size) {
            (Some(p), 1) => p.write_u8(value as u8),
            (Some(p), 2) => p.write_u16(value as u16),
            (Some(p), 4) => p.write_u32(value),
            _ => {}
        }
    }
}

/// Masks every line of both 8259s. The TSM takes no interrupts, and a world runs with the
/// machine's interrupts undelivered only if nothing raises one: SeaBIOS leaves the PIT's IRQ0
/// unmasked, and without an INTR intercept its vector (0x08) would be delivered into whatever
/// world runs, where a TD's firmware takes it for a #DF.
pub fn mask_8259() {
    for port in [0x21, 0xA1] {
        // SAFETY: the 8259's interrupt mask registers: masking changes no memory and starts no
        // DMA; the firmware is their only driver.
        unsafe { Port::new(port) }.write_u8(0xFF);
    }
}
