//! The configuration space of a device function the host passes to a TD, as the TD sees it: a
//! VMM's virtual function over the real one. The TD's firmware enumerates it like any device
//! and places BAR0 in *its* address space; that placement must never reach the real function,
//! whose BAR0 the host placed where the device's interface report names it (and which the TSM
//! later maps at the TD's GPA, TDH.MMIO.MAP). So the host keeps the TD's view of the registers
//! that place resources, and the rest reads as the device has it:
//!
//! | register | the TD reads | the TD's write |
//! |---|---|---|
//! | command (0x04, 16 bits) | its own value | kept (memory decode gates [`VirtualFunction::decodes`]) |
//! | BAR0/BAR1 (0x10..0x17) | a 64-bit memory BAR of the real BAR0's size, at the TD's address | kept, cut to the BAR's alignment (sizing works) |
//! | BAR2..BAR5, expansion ROM (0x18..0x27, 0x30) | 0: not implemented | dropped |
//! | everything else | the device's | dropped, counted |
//!
//! The real function stays as the host set it (memory decode and bus mastering on, BAR0 at the
//! report's address); a TD that writes its command register, MSI or power state changes
//! nothing of it.

/// BAR0's type bits: 64-bit, non-prefetchable memory.
const BAR0_TYPE: u32 = 0x4;
/// Command register: memory space enable.
const MEMORY_ENABLE: u16 = 1 << 1;

/// The TD's view of one function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtualFunction {
    /// Bus/device/function, as [`super::PciFilter`] names it.
    pub bdf: u16,
    bar0_size: u64,
    /// BAR0 as the TD wrote it (address bits only).
    bar0: u64,
    command: u16,
    /// Writes the TD made to registers the host does not let it change.
    pub dropped: u64,
}

impl VirtualFunction {
    /// The view of function `bdf`, whose BAR0 is `bar0_size` bytes; `None` unless that is a
    /// power of two of at least a page (a BAR's size always is).
    pub fn new(bdf: u16, bar0_size: u64) -> Option<VirtualFunction> {
        (bar0_size.is_power_of_two() && bar0_size >= 4096).then_some(VirtualFunction {
            bdf,
            bar0_size,
            bar0: 0,
            command: 0,
            dropped: 0,
        })
    }

    /// The emulated part of the dword at `offset` (4-aligned): its value and which bytes of
    /// it are emulated (a byte mask); `(0, 0)` for a register the device answers.
    fn emulated(&self, offset: u16) -> (u32, u32) {
        match offset {
            0x04 => (u32::from(self.command), 0x0000_FFFF),
            0x10 => ((self.bar0 as u32) | BAR0_TYPE, u32::MAX),
            0x14 => ((self.bar0 >> 32) as u32, u32::MAX),
            0x18..=0x27 | 0x30 => (0, u32::MAX),
            _ => (0, 0),
        }
    }

    /// Reads `size` bytes (1, 2, 4, within one dword) at register `reg`; `real` reads the
    /// device's dword at a 4-aligned offset.
    pub fn read(&self, reg: u16, size: u8, real: impl FnOnce(u16) -> u32) -> u32 {
        let offset = reg & !3;
        let (emu, mask) = self.emulated(offset);
        let dword = if mask == u32::MAX { emu } else { (real(offset) & !mask) | (emu & mask) };
        let shift = u32::from(reg & 3) * 8;
        let width = if size >= 4 { u32::MAX } else { (1u32 << (u32::from(size) * 8)) - 1 };
        (dword >> shift) & width
    }

    /// Writes `size` bytes (1, 2, 4, within one dword) of `value` at register `reg`: kept where
    /// the view is the host's, dropped elsewhere.
    pub fn write(&mut self, reg: u16, size: u8, value: u32) {
        let offset = reg & !3;
        let (old, mask) = self.emulated(offset);
        let shift = u32::from(reg & 3) * 8;
        let width = if size >= 4 { u32::MAX } else { (1u32 << (u32::from(size) * 8)) - 1 };
        let touched = width.checked_shl(shift).unwrap_or(0);
        if touched & !mask != 0 {
            self.dropped += 1;
        }
        let new = (old & !touched) | ((value << shift) & touched);
        let align = !(self.bar0_size - 1);
        match offset {
            0x04 => self.command = new as u16,
            0x10 => self.bar0 = (self.bar0 & !0xFFFF_FFFF) | (u64::from(new & !0xF) & align),
            0x14 => self.bar0 = (u64::from(new) << 32 | (self.bar0 & 0xFFFF_FFFF)) & align,
            _ => {}
        }
    }

    /// Where the TD placed BAR0 (a private-side GPA), once it did.
    pub fn bar0_gpa(&self) -> Option<u64> {
        (self.bar0 != 0).then_some(self.bar0)
    }

    /// The offset in BAR0 of `gpa`, if the TD's BAR0 decodes it (memory decode on, BAR placed)
    /// for an access of `size` bytes that stays inside it.
    pub fn decodes(&self, gpa: u64, size: u8) -> Option<u64> {
        let base = self.bar0_gpa()?;
        let offset = gpa.checked_sub(base)?;
        let inside = offset.checked_add(u64::from(size)).is_some_and(|end| end <= self.bar0_size);
        (self.command & MEMORY_ENABLE != 0 && inside).then_some(offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NVME: u16 = 0x18;

    fn real(offset: u16) -> u32 {
        // A device whose every dword reads as its offset, with status 0x0010 above command.
        match offset {
            0x04 => 0x0010_0006,
            o => 0xD000_0000 | u32::from(o),
        }
    }

    #[test]
    fn new_refuses_a_size_no_bar_has() {
        for size in [0, 2048, 3 << 12, u64::MAX] {
            assert_eq!(VirtualFunction::new(NVME, size), None, "{size:#x}");
        }
    }

    #[test]
    fn writes_to_the_devices_registers_are_dropped_and_counted() {
        let mut v = VirtualFunction::new(NVME, 0x4000).unwrap();
        for (reg, size) in [(0x3C, 1), (0x06, 2), (0x44, 4), (0x18, 4), (0x30, 4)] {
            v.write(reg, size, 0xFFFF_FFFF);
        }
        assert_eq!(v.dropped, 3, "interrupt line, status, a capability: the device's");
        assert_eq!(v.read(0x3C, 1, real), 0x3C);
        assert_eq!(v.read(0x18, 4, real), 0, "BAR2: not implemented");
        assert_eq!(v.read(0x30, 4, real), 0, "no expansion ROM");
        assert_eq!(v.read(0x06, 2, real), 0x0010, "status: the device's");
        assert_eq!(v.read(0x04, 4, real), 0x0010_0000, "command: the TD's (0 at reset), status the device's");
    }

    #[test]
    fn bar0_sizes_as_a_64_bit_bar_and_keeps_the_tds_address() {
        let mut v = VirtualFunction::new(NVME, 0x4000).unwrap();
        assert_eq!(v.read(0x10, 4, real), BAR0_TYPE);
        v.write(0x10, 4, u32::MAX);
        v.write(0x14, 4, u32::MAX);
        let size = !(u64::from(v.read(0x14, 4, real)) << 32 | u64::from(v.read(0x10, 4, real) & !0xF)) + 1;
        assert_eq!(size, 0x4000, "the real BAR0's size");
        v.write(0x10, 4, 0x8000_2004);
        v.write(0x14, 4, 0x8);
        assert_eq!(v.bar0_gpa(), Some(0x8_8000_0000), "cut to the BAR's alignment");
        assert_eq!(v.read(0x10, 2, real), 0x0004);
        assert_eq!(v.read(0x12, 2, real), 0x8000);
        assert_eq!(v.decodes(0x8_8000_0000, 4), None, "memory decode off");
        v.write(0x04, 2, 0x6);
        assert_eq!(v.decodes(0x8_8000_001C, 4), Some(0x1C));
        assert_eq!(v.decodes(0x8_8000_3FFC, 8), None, "past the BAR's end");
        assert_eq!(v.decodes(0x8_7FFF_FFFC, 4), None);
        assert_eq!(v.dropped, 0);
    }
}
