//! Everything that touches the machine: the PVH boot path, port I/O, the COM1 UART and the QEMU
//! exit device. The only module of the firmware with `unsafe`.

#![allow(unsafe_code)]

pub mod port;
pub mod serial;

use port::Port;

core::arch::global_asm!(include_str!("boot.S"), options(att_syntax));

/// The Rust entry point, called by `_start64` in `boot.S` in long mode, on the boot stack, with
/// interrupts off and the low 4 GiB identity-mapped.
#[unsafe(no_mangle)]
extern "C" fn rust_main(start_info: u32) -> ! {
    crate::main(u64::from(start_info))
}

/// What QEMU's `isa-debug-exit` device reports: QEMU exits with status `(code << 1) | 1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum ExitCode {
    /// QEMU exits with status 33.
    Success = 0x10,
    /// QEMU exits with status 35.
    Failure = 0x11,
}

/// The I/O port of QEMU's `isa-debug-exit` device (`iobase=0xf4`).
const DEBUG_EXIT_PORT: u16 = 0xf4;

/// Exits QEMU through `isa-debug-exit`; halts forever if the device is absent.
pub fn exit_qemu(code: ExitCode) -> ! {
    // SAFETY: 0xf4 is QEMU's isa-debug-exit device, whose only effect is to end the VM; without
    // the device the write goes nowhere.
    let port = unsafe { Port::new(DEBUG_EXIT_PORT) };
    port.write_u32(code as u32);
    halt_forever()
}

/// Stops the CPU for good (interrupts are off, so HLT does not return; loop in case of NMI).
pub fn halt_forever() -> ! {
    loop {
        // SAFETY: HLT only pauses the CPU until the next interrupt; it touches no memory.
        unsafe { core::arch::asm!("hlt", options(nomem, nostack, preserves_flags)) };
    }
}
