//! The COM1 16550 UART at I/O port 0x3f8, polled, 115200 8N1.

use core::fmt;

use super::port::Port;

const COM1: u16 = 0x3f8;

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

/// The COM1 UART.
#[derive(Debug)]
pub struct Com1 {
    data: Port,
    lsr: Port,
}

impl Com1 {
    /// Programs COM1 for polled 115200 8N1 output and returns a handle on it. Calling it again
    /// (the panic handler does) reprograms the same settings, which is harmless.
    pub fn init() -> Com1 {
        // SAFETY: 0x3f8..0x3ff are the registers of the COM1 16550, which has no DMA and no
        // effect on memory; the firmware is single-threaded.
        let base = unsafe { Port::new(COM1) };
        // SAFETY: as above, for each register of the block.
        let (ier, fcr, lcr, mcr, lsr) =
            unsafe { (base.offset(IER), base.offset(FCR), base.offset(LCR), base.offset(MCR), base.offset(LSR)) };
        ier.write_u8(0);
        lcr.write_u8(LCR_DLAB);
        let [lo, hi] = DIVISOR.to_le_bytes();
        base.write_u8(lo);
        ier.write_u8(hi);
        lcr.write_u8(LCR_8N1);
        fcr.write_u8(FCR_ENABLE_CLEAR);
        mcr.write_u8(MCR_DTR_RTS);
        // SAFETY: as above.
        let data = unsafe { base.offset(DATA) };
        Com1 { data, lsr }
    }

    /// Sends one byte, waiting for room. Without a UART, LSR reads 0xff and nothing waits.
    pub fn write_byte(&mut self, byte: u8) {
        while self.lsr.read_u8() & LSR_THRE == 0 {
            core::hint::spin_loop();
        }
        self.data.write_u8(byte);
    }
}

impl fmt::Write for Com1 {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            if b == b'\n' {
                self.write_byte(b'\r');
            }
            self.write_byte(b);
        }
        Ok(())
    }
}
