//! Everything that touches the CPU: the PVH boot path, GDT/TSS, IDT and exception reports,
//! paging, port I/O, CPUID/RDTSC/RDRAND, and the QEMU exit device. With `drivers`, the only code
//! of the firmware allowed `unsafe`; each block says why it is sound.

#![allow(unsafe_code)]

pub mod cpu;
pub mod gdt;
pub mod idt;
pub mod paging;
pub mod svm;

pub use seamless_drivers::port;

use core::sync::atomic::{AtomicBool, Ordering};

use port::Port;

core::arch::global_asm!(include_str!("boot.S"), options(att_syntax));

unsafe extern "C" {
    static __image_start: u8;
    static __load_end: u8;
    static __image_end: u8;
    /// TSC at `_start32`, written by boot.S before anything else.
    #[link_name = "boot_tsc"]
    static BOOT_TSC: u64;
}

/// The physical address of the PVH `hvm_start_info`, as QEMU passed it in EBX. Only the entry
/// point makes one, so holding one means the address came from the loader.
#[derive(Clone, Copy, Debug)]
pub struct StartInfoAddr(u32);

impl StartInfoAddr {
    /// The physical address.
    pub fn get(self) -> u64 {
        u64::from(self.0)
    }
}

/// The Rust entry point, called by `_start64` in `boot.S` in long mode, on the boot stack, with
/// interrupts off, SSE on and the low 4 GiB mapped at 0 and at the direct map.
#[unsafe(no_mangle)]
extern "C" fn rust_main(start_info: u32) -> ! {
    crate::main(StartInfoAddr(start_info))
}

static INIT: AtomicBool = AtomicBool::new(false);

/// Loads the firmware's own GDT (with a TSS and IST stacks) and the IDT that reports every
/// exception. Later calls do nothing.
pub fn init_cpu() {
    if INIT.swap(true, Ordering::SeqCst) {
        return;
    }
    // SAFETY: first and only call (the flag above), on the one CPU, interrupts off since
    // `_start32`; nothing uses the guard page.
    unsafe {
        gdt::init();
        idt::init();
        paging::unmap_stack_guard();
    }
}

/// Takes the physical interrupts pending, if any: interrupts on for one instruction. The only
/// source is the TSM's preemption timer (`drivers::lapic`; the 8259 is masked), whose gate ends
/// it at the local APIC and returns ([`idt::PREEMPT_VECTOR`]).
pub fn accept_pending_interrupts() {
    // SAFETY: the IDT is loaded; every gate a pending interrupt can reach (the preemption
    // timer's) returns with IRETQ and touches only the APIC's EOI register.
    unsafe { core::arch::asm!("sti", "nop", "cli", options(nomem, nostack)) };
}

/// Makes the MMIO hole `[start, 4 GiB)` uncacheable (see [`paging::set_mmio_uncached`]). Later
/// calls do nothing.
pub fn init_mmio_attributes(start: u64) {
    static DONE: AtomicBool = AtomicBool::new(false);
    if DONE.swap(true, Ordering::SeqCst) {
        return;
    }
    // SAFETY: once (the flag), one CPU; nothing holds references into MMIO.
    unsafe { paging::set_mmio_uncached(start) };
}

/// The TSC value `_start32` read.
pub fn boot_tsc() -> u64 {
    // SAFETY: written once by boot.S before any Rust code ran; only read afterwards.
    unsafe { core::ptr::read_volatile(&raw const BOOT_TSC) }
}

/// The firmware's own memory `[start, end)`: image, data, .bss (page tables, stacks).
pub fn image_range() -> (u64, u64) {
    (&raw const __image_start as u64, &raw const __image_end as u64)
}

/// Bytes QEMU loads from the image file (up to the end of .data; .bss is zero-filled).
pub fn loaded_bytes() -> u64 {
    &raw const __load_end as u64 - &raw const __image_start as u64
}

/// Feeds the image as QEMU loaded it, `[__image_start, __load_end)` (the Xen note, code,
/// read-only data and the initial .data), to `sink` in chunks. Called first thing at boot, before
/// any Rust code wrote a static, this is what MRSEAM measures; `firmware mrseam FILE` lays the
/// ELF's PT_LOAD segments out the same way.
pub fn loaded_image(sink: &mut dyn FnMut(&[u8])) {
    let start = &raw const __image_start as u64;
    let mut chunk = [0u8; 512];
    let mut at = 0;
    let total = loaded_bytes();
    while at < total {
        let n = (total - at).min(chunk.len() as u64) as usize;
        read_image(start + at, &mut chunk[..n]);
        sink(&chunk[..n]);
        at += n as u64;
    }
}

/// Copies bytes of the firmware's own image at `addr` (checking an attack left them alone);
/// bytes outside the image read as zero.
pub fn read_image(addr: u64, buf: &mut [u8]) {
    let (start, end) = image_range();
    for (i, b) in buf.iter_mut().enumerate() {
        let a = addr + i as u64;
        *b = if (start..end).contains(&a) {
            // SAFETY: inside the identity-mapped image; a volatile byte read of memory Rust
            // objects may occupy is a plain copy (one CPU, no reference formed, nothing written).
            unsafe { core::ptr::read_volatile(a as *const u8) }
        } else {
            0
        };
    }
}

/// What QEMU's `isa-debug-exit` device reports: QEMU exits with status `(code << 1) | 1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum ExitCode {
    /// QEMU exits with status 33.
    Success = 0x10,
    /// QEMU exits with status 35.
    Failure = 0x11,
    /// QEMU exits with status 37: every device protocol interoperated, but the TSM refused the
    /// device's interface report at TDI.LOCK (a device that reports ranges of no real device,
    /// such as spdm-emu's sample TDISP device); nothing was mapped and the assignment was taken
    /// apart.
    ReportRefused = 0x12,
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

/// Pushes until the boot stack overflows into its guard page (run configuration
/// `mode=overflow`). Never returns: the fault becomes a double fault, which reports on its own
/// stack and ends the VM.
pub fn provoke_stack_overflow() -> ! {
    // SAFETY: the pushes only write the boot stack and then fault on the unmapped guard page
    // below it; the #DF handler never returns here, so the clobbered stack is never used again.
    unsafe { core::arch::asm!("2:", "push rax", "jmp 2b", options(noreturn)) }
}

/// Reads an address no page table maps, to show the page-fault report (run configuration
/// `mode=fault`). Never returns: the #PF handler ends the VM.
pub fn provoke_page_fault() -> ! {
    // Above the 4 GiB identity map and below the direct map: not present in any table.
    const UNMAPPED: u64 = 0x0000_7f00_dead_b000;
    // SAFETY: the address is not mapped, so the load raises #PF before reading anything; the
    // handler reports and exits QEMU without returning here.
    unsafe { core::ptr::read_volatile(UNMAPPED as *const u64) };
    halt_forever()
}
