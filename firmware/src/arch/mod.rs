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

/// Carries out an I/O access of the host world that `ioports::decide` said to pass on
/// (`Decision::PassOn`): the same port, width and direction; returns what an IN read (0 for an
/// OUT).
pub fn pass_on(io: &crate::ioports::Io) -> u64 {
    // SAFETY: the only caller is the host world's I/O intercept, for an access `ioports::decide`
    // checked: PCI configuration cycles to functions whose configuration cannot move memory
    // over RAM (the host and LPC bridges are refused; QEMU maps PCI memory below RAM), and
    // reads. Port I/O touches no memory of the TSM's.
    let p = unsafe { Port::new(io.port) };
    match (io.input, io.size) {
        (true, 1) => u64::from(p.read_u8()),
        (true, 2) => u64::from(p.read_u16()),
        (true, _) => u64::from(p.read_u32()),
        (false, 1) => {
            p.write_u8(io.value as u8);
            0
        }
        (false, 2) => {
            p.write_u16(io.value as u16);
            0
        }
        (false, _) => {
            p.write_u32(io.value as u32);
            0
        }
    }
}

/// PCI configuration mechanism #1's address register (0xCF8) as it is now.
pub fn pci_config_address() -> u32 {
    // SAFETY: reading the configuration address register has no effect.
    let p = unsafe { Port::new(crate::ioports::PCI_CONFIG_ADDRESS) };
    p.read_u32()
}

/// A world's x87 and SSE registers, as FXSAVE stores them (XMM0..15 at byte 160). The TSM is
/// built soft-float: these registers hold only the worlds' values, and each world's are loaded
/// before it runs and stored after (`world::World::run`), so none sees another's.
#[derive(Clone, Copy, Debug)]
#[repr(C, align(16))]
pub struct FpuState([u8; 512]);

impl FpuState {
    /// The state after INIT: FCW 0x037F, MXCSR 0x1F80, every register zero (a TDX TD's initial
    /// state, and the host world's at entry).
    pub const fn init() -> FpuState {
        let mut a = [0u8; 512];
        a[0] = 0x7F;
        a[1] = 0x03;
        a[24] = 0x80;
        a[25] = 0x1F;
        FpuState(a)
    }

    /// Loads the registers from this state (FXRSTOR).
    pub fn load(&self) {
        // SAFETY: 16-byte aligned and 512 bytes; the MXCSR in it came from `init` or from FXSAVE,
        // so it has no reserved bit set. The TSM's own code never uses these registers.
        unsafe { core::arch::asm!("fxrstor64 [{}]", in(reg) self.0.as_ptr(), options(nostack, readonly)) };
    }

    /// Stores the registers into this state (FXSAVE).
    pub fn store(&mut self) {
        // SAFETY: 16-byte aligned and 512 bytes, written by the instruction only.
        unsafe { core::arch::asm!("fxsave64 [{}]", in(reg) self.0.as_mut_ptr(), options(nostack)) };
    }
}

/// XCR0's bits the worlds may have: x87 and SSE, the state [`FpuState`] switches. More (AVX's
/// upper halves, AVX-512, AMX) would be registers FXSAVE leaves where they are, shared between
/// worlds, so no world gets them: the TSM sets XCR0 to this at boot (`enable_xsave`) and takes
/// a world's XSETBV only within it.
pub const XCR0_WORLDS: u64 = 0b11;

/// Turns CR4.OSXSAVE on and sets XCR0 to [`XCR0_WORLDS`], if the CPU has XSAVE; `false` if not
/// (then no world can execute XSETBV at all: it is #UD).
pub fn enable_xsave() -> bool {
    if x86::cpuid::CpuId::new().get_feature_info().is_none_or(|f| !f.has_xsave()) {
        return false;
    }
    // SAFETY: the CPU has XSAVE (checked), so CR4.OSXSAVE is a valid bit and XCR0 = x87 | SSE a
    // valid value; neither changes memory, and the TSM's code does not depend on XCR0 (it uses
    // no AVX: `cpufeatures` finds XCR0 without AVX state).
    unsafe {
        x86::controlregs::cr4_write(x86::controlregs::cr4() | x86::controlregs::Cr4::CR4_ENABLE_OS_XSAVE);
        x86::controlregs::xcr0_write(x86::controlregs::Xcr0::from_bits_truncate(XCR0_WORLDS));
    }
    true
}

/// A world's XSETBV, carried out if it asks for XCR0 within [`XCR0_WORLDS`] (x87 set); `false`
/// if refused (another XCR, AVX state or more, x87 clear), XCR0 then unchanged.
pub fn world_xsetbv(xcr: u32, value: u64) -> bool {
    if xcr != 0 || value & !XCR0_WORLDS != 0 || value & 1 == 0 {
        return false;
    }
    // SAFETY: CR4.OSXSAVE is on (a world's XSETBV only exits to the TSM when its own CR4 has it,
    // and the CPU has XSAVE: `enable_xsave` ran at boot); the value is x87 with or without SSE,
    // valid on every CPU with XSAVE; XCR0 changes no memory.
    unsafe { x86::controlregs::xcr0_write(x86::controlregs::Xcr0::from_bits_truncate(value)) };
    true
}

pub use seamless_drivers::exit::ExitCode;
use seamless_drivers::exit::DEBUG_EXIT_PORT;

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
