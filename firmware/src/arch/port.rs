//! x86 port I/O.

use core::arch::asm;

/// One I/O port. Creating one is `unsafe`: the creator vouches that driving it cannot break
/// memory safety; reads and writes are then safe.
#[derive(Debug)]
pub struct Port(u16);

impl Port {
    /// A handle on port `port`.
    ///
    /// # Safety
    /// The port must belong to a device whose registers cannot affect memory safety (no DMA, no
    /// change to memory mappings), and no other code may drive it in a conflicting way.
    pub const unsafe fn new(port: u16) -> Port {
        Port(port)
    }

    /// The port `offset` above this one, for devices with a block of registers.
    ///
    /// # Safety
    /// As for [`Port::new`], for the port `self + offset`.
    pub const unsafe fn offset(&self, offset: u16) -> Port {
        Port(self.0.wrapping_add(offset))
    }

    /// `out dx, al`.
    pub fn write_u8(&self, value: u8) {
        // SAFETY: the port is a device without memory effects (the constructor's contract);
        // OUT touches no memory and no flags.
        unsafe { asm!("out dx, al", in("dx") self.0, in("al") value, options(nomem, nostack, preserves_flags)) };
    }

    /// `in al, dx`.
    pub fn read_u8(&self) -> u8 {
        let value: u8;
        // SAFETY: as for `write_u8`; IN touches no memory and no flags.
        unsafe { asm!("in al, dx", out("al") value, in("dx") self.0, options(nomem, nostack, preserves_flags)) };
        value
    }

    /// `in ax, dx`.
    pub fn read_u16(&self) -> u16 {
        let value: u16;
        // SAFETY: as for `write_u8`; IN touches no memory and no flags.
        unsafe { asm!("in ax, dx", out("ax") value, in("dx") self.0, options(nomem, nostack, preserves_flags)) };
        value
    }

    /// `in eax, dx`.
    pub fn read_u32(&self) -> u32 {
        let value: u32;
        // SAFETY: as for `write_u8`; IN touches no memory and no flags.
        unsafe { asm!("in eax, dx", out("eax") value, in("dx") self.0, options(nomem, nostack, preserves_flags)) };
        value
    }

    /// `out dx, ax`.
    pub fn write_u16(&self, value: u16) {
        // SAFETY: as for `write_u8`.
        unsafe { asm!("out dx, ax", in("dx") self.0, in("ax") value, options(nomem, nostack, preserves_flags)) };
    }

    /// `out dx, eax`.
    pub fn write_u32(&self, value: u32) {
        // SAFETY: as for `write_u8`.
        unsafe { asm!("out dx, eax", in("dx") self.0, in("eax") value, options(nomem, nostack, preserves_flags)) };
    }
}
