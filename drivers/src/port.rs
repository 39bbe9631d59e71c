//! x86 port I/O, through the `x86` crate's IN and OUT.

#![allow(unsafe_code)]

use x86::io::{inb, inl, inw, outb, outl, outw};

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

    /// The port number.
    pub const fn number(&self) -> u16 {
        self.0
    }

    /// `out dx, al`.
    pub fn write_u8(&self, value: u8) {
        // SAFETY: the port is a device without memory effects (the constructor's contract);
        // OUT touches no memory.
        unsafe { outb(self.0, value) };
    }

    /// `in al, dx`.
    pub fn read_u8(&self) -> u8 {
        // SAFETY: as for `write_u8`; IN touches no memory.
        unsafe { inb(self.0) }
    }

    /// `out dx, ax`.
    pub fn write_u16(&self, value: u16) {
        // SAFETY: as for `write_u8`.
        unsafe { outw(self.0, value) };
    }

    /// `in ax, dx`.
    pub fn read_u16(&self) -> u16 {
        // SAFETY: as for `read_u8`.
        unsafe { inw(self.0) }
    }

    /// `out dx, eax`.
    pub fn write_u32(&self, value: u32) {
        // SAFETY: as for `write_u8`.
        unsafe { outl(self.0, value) };
    }

    /// `in eax, dx`.
    pub fn read_u32(&self) -> u32 {
        // SAFETY: as for `read_u8`.
        unsafe { inl(self.0) }
    }
}
