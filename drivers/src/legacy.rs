//! The legacy I/O ports the host agent touches on a TD's behalf (`tsm_client::host::ghci::ports`
//! decides which the TD reaches): COM1's registers, the ACPI PM timer and the CMOS index and
//! data registers. Nothing else: a port outside this set reads all ones and takes no write.
//! (In the host world these ports are the host's: the TSM's I/O permission map passes them.)

#![allow(unsafe_code)]

use crate::port::Port;

/// COM1's eight registers.
const COM1: core::ops::RangeInclusive<u16> = 0x3F8..=0x3FF;
/// The ACPI PM timer (PMBASE 0x600 + 8), read-only.
const PM_TIMER: u16 = 0x608;
/// CMOS index and data.
const CMOS: [u16; 2] = [0x70, 0x71];

/// The set of ports above.
#[derive(Debug, Default)]
pub struct LegacyPorts(());

impl LegacyPorts {
    /// The ports.
    pub const fn new() -> LegacyPorts {
        LegacyPorts(())
    }

    fn port(port: u16, write: bool) -> Option<Port> {
        let allowed = COM1.contains(&port) || (port == PM_TIMER && !write) || CMOS.contains(&port);
        // SAFETY: a 16550 UART, the PM timer (a counter) and the CMOS/RTC index and data: none
        // does DMA or changes a memory mapping. Their only other drivers are the consoles on
        // COM1 (the TSM's and the agent's), which write whole lines between these accesses.
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
