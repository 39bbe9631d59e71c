//! The TD's emulated MMIO, as the host serves TDG.VP.VMCALL<#VE.RequestMMIO> (edk2's IoLib
//! sends every `MmioRead`/`MmioWrite` of a TD there, with the GPA's shared bit set). Default-deny
//! like the ports: the TD never names a physical address the host then touches.
//!
//! | GPA | what the TD gets |
//! |---|---|
//! | the ECAM window (q35: 0xB0000000, 256 MiB) | PCI configuration through the machine, for the functions the TD may see; the others read as absent |
//! | 0xFEC00000 (I/O APIC) | a register file: ID, version (24 pins), redirection entries (masked at reset). edk2 routes nothing through it in a TD |
//! | a passed-through device's BAR, where the TD placed it | the device, through the machine (`Machine::device_mmio`): a TDI the TD has not accepted, reached as shared MMIO |
//! | everything else (HPET, the xAPIC page, the PCI window with no device in it) | absent: reads all ones, writes dropped, counted |

use super::{Machine, PciFilter};

/// Where q35 decodes ECAM (edk2's `PcdPciExpressBaseAddress`; QEMU's MCFG names it).
pub const ECAM_BASE: u64 = 0xB000_0000;
/// Bytes of ECAM: 256 buses.
pub const ECAM_BYTES: u64 = 256 << 20;
/// The I/O APIC's registers.
pub const IOAPIC_BASE: u64 = 0xFEC0_0000;
/// Redirection entries of the I/O APIC.
const IOAPIC_PINS: usize = 24;

/// MMIO accesses by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MmioCounts {
    /// ECAM.
    pub ecam: u64,
    /// I/O APIC.
    pub ioapic: u64,
    /// A device the machine passes through (its BAR, where the TD placed it).
    pub device: u64,
    /// GPAs nothing answers.
    pub absent: u64,
    /// The first absent GPA the TD touched (0: none).
    pub first_absent: u64,
}

/// The TD's emulated MMIO.
#[derive(Clone, Debug)]
pub struct MmioSpace {
    ioregsel: u32,
    redirection: [u64; IOAPIC_PINS],
    /// Accesses by kind.
    pub counts: MmioCounts,
}

impl Default for MmioSpace {
    fn default() -> MmioSpace {
        MmioSpace { ioregsel: 0, redirection: [1 << 16; IOAPIC_PINS], counts: MmioCounts::default() }
    }
}

const fn ones(size: u8) -> u64 {
    if size >= 8 {
        u64::MAX
    } else {
        (1 << (size * 8)) - 1
    }
}

impl MmioSpace {
    /// An access of `size` bytes (1, 2, 4 or 8) at private-side `gpa` (shared bit cleared): a
    /// read (`value` `None`, returns the value) or a write.
    pub fn access<M: Machine + ?Sized>(
        &mut self,
        m: &mut M,
        pci: &PciFilter,
        gpa: u64,
        size: u8,
        value: Option<u64>,
    ) -> u64 {
        match gpa {
            g if (ECAM_BASE..ECAM_BASE + ECAM_BYTES).contains(&g) => {
                self.counts.ecam += 1;
                let off = g - ECAM_BASE;
                let bdf = (off >> 12) as u16;
                let reg = (off & 0xFFF) as u16;
                let in_one_register = u64::from(reg & 3) + u64::from(size) <= 4;
                if !pci.visible(bdf) || !in_one_register {
                    return if value.is_some() { 0 } else { ones(size) };
                }
                match value {
                    None => u64::from(m.pci_config_read(bdf, reg, size)),
                    Some(v) => {
                        if pci.writable(bdf, reg, size) {
                            m.pci_config_write(bdf, reg, size, v as u32);
                        }
                        0
                    }
                }
            }
            g if (IOAPIC_BASE..IOAPIC_BASE + 0x1000).contains(&g) => {
                self.counts.ioapic += 1;
                let absent = if value.is_some() { 0 } else { ones(size) };
                self.ioapic(g - IOAPIC_BASE, value.map(|v| v as u32)).map_or(absent, u64::from)
            }
            g => {
                if let Some(v) = m.device_mmio(g, size, value) {
                    self.counts.device += 1;
                    return if value.is_some() { 0 } else { v & ones(size) };
                }
                self.counts.absent += 1;
                if self.counts.first_absent == 0 {
                    self.counts.first_absent = g;
                }
                if value.is_some() {
                    0
                } else {
                    ones(size)
                }
            }
        }
    }

    /// IOREGSEL at 0x00, IOWIN at 0x10 (I/O APIC datasheet §3.1).
    fn ioapic(&mut self, offset: u64, value: Option<u32>) -> Option<u32> {
        match (offset, value) {
            (0x00, Some(v)) => {
                self.ioregsel = v & 0xFF;
                Some(0)
            }
            (0x00, None) => Some(self.ioregsel),
            (0x10, v) => {
                let reg = self.ioregsel as usize;
                let (pin, high) = (reg.wrapping_sub(0x10) / 2, reg & 1 == 1);
                match (reg, v) {
                    (0, None) => Some(0),
                    // Version 0x20, maximum redirection entry 23.
                    (1, None) => Some(0x0017_0020),
                    (2, None) => Some(0),
                    (0x10..=0x3F, None) => {
                        let e = self.redirection[pin];
                        Some(if high { (e >> 32) as u32 } else { e as u32 })
                    }
                    (0x10..=0x3F, Some(v)) => {
                        let e = &mut self.redirection[pin];
                        *e = if high {
                            (*e & 0xFFFF_FFFF) | u64::from(v) << 32
                        } else {
                            (*e & !0xFFFF_FFFF) | u64::from(v)
                        };
                        Some(0)
                    }
                    (_, Some(_)) => Some(0),
                    (_, None) => None,
                }
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::fake::{Access, Fake};
    use super::*;

    #[test]
    fn access_rejects_gpas_nothing_answers_and_hidden_functions() {
        let (mut m, mut s) = (Fake::new(), MmioSpace::default());
        let pci = PciFilter::Q35_PLATFORM;
        for gpa in [0xFED0_0000, 0xFEE0_0030, 0xFED4_0000, 0xC000_0000, ECAM_BASE + (0xFA << 12)] {
            assert_eq!(s.access(&mut m, &pci, gpa, 4, None), u64::from(u32::MAX), "{gpa:#x}");
            assert_eq!(s.access(&mut m, &pci, gpa, 8, Some(0)), 0);
        }
        // An access that crosses a configuration register of a visible function.
        assert_eq!(s.access(&mut m, &pci, ECAM_BASE + 0x42, 4, None), u64::from(u32::MAX));
        assert_eq!(s.access(&mut m, &pci, ECAM_BASE + 0x60, 4, Some(0)), 0, "PCIEXBAR takes no write");
        assert!(m.log.is_empty(), "{:?}", m.log);
        assert_eq!(s.counts.first_absent, 0xFED0_0000);
    }

    #[test]
    fn access_happy_path_reaches_ecam_and_the_ioapic() {
        let (mut m, mut s) = (Fake::new(), MmioSpace::default());
        let pci = PciFilter::Q35_PLATFORM;
        let lpc = ECAM_BASE + (0xF8 << 12);
        assert_eq!(s.access(&mut m, &pci, lpc + 0x40, 4, None), 0x1234_0040);
        assert_eq!(s.access(&mut m, &pci, lpc + 0x44, 1, Some(0x80)), 0);
        assert_eq!(m.log, [Access::CfgRead(0xF8, 0x40, 4), Access::CfgWrite(0xF8, 0x44, 1, 0x80)]);
        s.access(&mut m, &pci, IOAPIC_BASE, 4, Some(1));
        assert_eq!(s.access(&mut m, &pci, IOAPIC_BASE + 0x10, 4, None), 0x0017_0020, "version: 24 pins");
        s.access(&mut m, &pci, IOAPIC_BASE, 4, Some(0x12));
        assert_eq!(s.access(&mut m, &pci, IOAPIC_BASE + 0x10, 4, None), 1 << 16, "pin 1 masked at reset");
        s.access(&mut m, &pci, IOAPIC_BASE + 0x10, 4, Some(0x31));
        assert_eq!(s.access(&mut m, &pci, IOAPIC_BASE + 0x10, 4, None), 0x31);
    }
}
