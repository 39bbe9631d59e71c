//! The 8259 interrupt controllers, which the TSM masks before any world runs. (The legacy ports
//! a TD's host serves on the TD's behalf are the host agent's: `seamless_drivers::legacy`.)

use seamless_drivers::port::Port;

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
