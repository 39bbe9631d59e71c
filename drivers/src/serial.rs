//! 16550 UARTs, polled, 115200 8N1: COM1 (0x3f8) carries the plain-text console, COM2 (0x2f8)
//! the defmt log stream, COM3 (0x3e8) the framed artifacts (`crate::frame`).

#![allow(unsafe_code)]

use core::fmt;

use crate::port::Port;

const COM1: u16 = 0x3f8;
const COM2: u16 = 0x2f8;
const COM3: u16 = 0x3e8;

// Register offsets from the base port.
const DATA: u16 = 0; // THR on write; DLL while LCR.DLAB = 1
const IER: u16 = 1; // interrupt enable; DLM while LCR.DLAB = 1
const FCR: u16 = 2;
const LCR: u16 = 3;
const MCR: u16 = 4;
const LSR: u16 = 5;

const LCR_DLAB: u8 = 0x80;
const LCR_8N1: u8 = 0x03;
/// FIFO on, both FIFOs cleared, 14-byte threshold.
const FCR_ENABLE_CLEAR: u8 = 0xc7;
/// DTR and RTS.
const MCR_DTR_RTS: u8 = 0x03;
/// Transmit holding register empty.
const LSR_THRE: u8 = 0x20;
/// Divisor of the 115200 Hz base clock: 115200 baud.
const DIVISOR: u16 = 1;
/// LSR polls before a byte is sent anyway: QEMU's UART is always ready, and without a UART
/// (LSR reads 0xff) nothing waits, but a wedged one must not hang the firmware.
const MAX_POLLS: u32 = 1 << 20;

/// One UART.
#[derive(Debug)]
pub struct Uart {
    data: Port,
    lsr: Port,
    lcr: Port,
    mcr: Port,
}

/// MCR's loopback bit: what is sent comes back to the receiver instead of leaving.
const MCR_LOOP: u8 = 0x10;

impl Uart {
    /// COM1, programmed for polled 115200 8N1. Calling it again (the panic and exception
    /// handlers do) reprograms the same settings, which is harmless.
    pub fn com1() -> Uart {
        // SAFETY: 0x3f8..0x3ff are the registers of the COM1 16550, which has no DMA and no
        // effect on memory; the firmware is single-threaded.
        unsafe { Uart::init(Port::new(COM1)) }
    }

    /// COM1 as [`Uart::com1`] left it, without reprogramming it.
    pub fn com1_attached() -> Uart {
        // SAFETY: as for `com1`.
        let base = unsafe { Port::new(COM1) };
        // SAFETY: registers of the same UART.
        let (data, lsr, lcr, mcr) =
            unsafe { (base.offset(DATA), base.offset(LSR), base.offset(LCR), base.offset(MCR)) };
        Uart { data, lsr, lcr, mcr }
    }

    /// COM2, programmed the same way.
    pub fn com2() -> Uart {
        // SAFETY: 0x2f8..0x2ff are the registers of the COM2 16550; as for COM1.
        unsafe { Uart::init(Port::new(COM2)) }
    }

    /// COM3, programmed the same way: the artifact port.
    pub fn com3() -> Uart {
        // SAFETY: 0x3e8..0x3ef are the registers of the COM3 16550 (QEMU's third `-serial` on
        // the ISA bus); as for COM1.
        unsafe { Uart::init(Port::new(COM3)) }
    }

    /// # Safety
    /// `base` is the first register of a 16550 (see [`Port::new`]).
    unsafe fn init(base: Port) -> Uart {
        // SAFETY: each register of the block belongs to the same UART (the caller's contract).
        let (ier, fcr, lcr, mcr, lsr, data) = unsafe {
            (
                base.offset(IER),
                base.offset(FCR),
                base.offset(LCR),
                base.offset(MCR),
                base.offset(LSR),
                base.offset(DATA),
            )
        };
        ier.write_u8(0);
        lcr.write_u8(LCR_DLAB);
        let [lo, hi] = DIVISOR.to_le_bytes();
        base.write_u8(lo);
        ier.write_u8(hi);
        lcr.write_u8(LCR_8N1);
        fcr.write_u8(FCR_ENABLE_CLEAR);
        mcr.write_u8(MCR_DTR_RTS);
        Uart { data, lsr, lcr, mcr }
    }

    /// Runs `send` with the UART able to send: another program sharing it (a TD whose console
    /// the host passes through to COM1) may have left the divisor latch selected, where a byte
    /// would set the baud rate, or loopback on, where it would never leave. Both are turned off
    /// around `send` and restored after, so neither side's settings change.
    fn sending(&mut self, send: impl FnOnce(&mut Uart)) {
        let (lcr, mcr) = (self.lcr.read_u8(), self.mcr.read_u8());
        let shared = lcr & LCR_DLAB != 0 || mcr & MCR_LOOP != 0;
        if shared {
            self.lcr.write_u8(lcr & !LCR_DLAB);
            self.mcr.write_u8(mcr & !MCR_LOOP);
        }
        send(self);
        if shared {
            self.mcr.write_u8(mcr);
            self.lcr.write_u8(lcr);
        }
    }

    /// Sends one byte, waiting (boundedly) for room.
    pub fn write_byte(&mut self, byte: u8) {
        let mut polls = 0;
        while self.lsr.read_u8() & LSR_THRE == 0 && polls < MAX_POLLS {
            polls += 1;
            core::hint::spin_loop();
        }
        self.data.write_u8(byte);
    }

    /// Sends bytes as they are.
    pub fn write_bytes(&mut self, bytes: &[u8]) {
        self.sending(|u| {
            for &b in bytes {
                u.write_byte(b);
            }
        });
    }
}

impl fmt::Write for Uart {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.sending(|u| {
            for b in s.bytes() {
                if b == b'\n' {
                    u.write_byte(b'\r');
                }
                u.write_byte(b);
            }
        });
        Ok(())
    }
}
