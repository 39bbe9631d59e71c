//! The IDT: every one of the 32 exception vectors goes to a stub in `traps.S` that saves the
//! registers and calls [`exception`], which prints a readable report on COM1 (name, vector,
//! error code decoded, RIP, CR2, the registers) and ends QEMU through isa-debug-exit with the
//! failure code. Nothing is resumed: an exception in the firmware is a bug or an attack. Vector
//! [`PREEMPT_VECTOR`] is the TSM's own timer (`drivers::lapic`), which preempts a TD's run: its
//! stub only ends it at the local APIC.

use core::arch::asm;
use core::cell::UnsafeCell;
use core::fmt::Write;
use core::mem::size_of;

use super::gdt::{IST_DOUBLE_FAULT, IST_NMI_MC, KERNEL_CS};

core::arch::global_asm!(include_str!("traps.S"), options(att_syntax));

unsafe extern "C" {
    /// 32 stub addresses, one per vector (`traps.S`).
    static trap_stub_table: [u64; 32];
    /// The preemption timer's stub (`traps.S`): EOI, IRETQ.
    fn preempt_stub();
}

/// The vector of the TSM's preemption timer: the first after the exceptions.
pub const PREEMPT_VECTOR: u8 = 32;
/// Gates in the IDT: the exceptions and the preemption timer.
const GATES: usize = 33;

/// An interrupt gate (Intel SDM Vol. 3 §6.14.1).
#[derive(Clone, Copy)]
#[repr(C)]
struct Gate {
    offset_low: u16,
    selector: u16,
    ist: u8,
    attributes: u8,
    offset_mid: u16,
    offset_high: u32,
    reserved: u32,
}
const _: () = assert!(size_of::<Gate>() == 16);

const EMPTY: Gate =
    Gate { offset_low: 0, selector: 0, ist: 0, attributes: 0, offset_mid: 0, offset_high: 0, reserved: 0 };

struct Idt(UnsafeCell<[Gate; GATES]>);
// SAFETY: one CPU; `init` is the only writer and runs once before the IDT is loaded.
unsafe impl Sync for Idt {}
static IDT: Idt = Idt(UnsafeCell::new([EMPTY; GATES]));

const fn interrupt_gate(handler: u64, ist: u8) -> Gate {
    Gate {
        offset_low: handler as u16,
        selector: KERNEL_CS,
        ist,
        attributes: 0x8E, // present, DPL 0, 64-bit interrupt gate
        offset_mid: (handler >> 16) as u16,
        offset_high: (handler >> 32) as u32,
        reserved: 0,
    }
}

/// Fills and loads the IDT.
///
/// # Safety
/// Called once, on the boot CPU, with interrupts off, after [`super::gdt::init`] (the gates
/// name its code selector and IST slots).
pub unsafe fn init() {
    let idt = IDT.0.get();
    // SAFETY: the table is a static array of 32 addresses the assembler filled; nothing writes it.
    let stubs: &[u64; 32] = unsafe { &trap_stub_table };
    for (vector, &handler) in stubs.iter().enumerate() {
        let ist = match vector {
            8 => IST_DOUBLE_FAULT,
            2 | 18 => IST_NMI_MC,
            _ => 0,
        };
        // SAFETY: single writer before the IDT is loaded (the caller's contract).
        unsafe { (*idt)[vector] = interrupt_gate(handler, ist) };
    }
    // SAFETY: as above; the stub is a function of `traps.S` that returns with IRETQ.
    unsafe { (*idt)[usize::from(PREEMPT_VECTOR)] = interrupt_gate(preempt_stub as *const () as u64, 0) };
    #[repr(C, packed)]
    struct Pointer {
        limit: u16,
        base: u64,
    }
    let ptr = Pointer { limit: (size_of::<[Gate; GATES]>() - 1) as u16, base: idt as u64 };
    // SAFETY: the IDT is a static that lives forever; every exception gate points at a stub
    // that never returns to the faulting code, the timer's at one that returns unchanged.
    unsafe { asm!("lidt [{}]", in(reg) &ptr, options(readonly, nostack, preserves_flags)) };
}

/// What the stubs push: the general registers (last pushed first), the vector, the error code
/// (0 for vectors without one), then the CPU's own frame.
#[repr(C)]
#[derive(Debug)]
pub struct TrapFrame {
    r15: u64,
    r14: u64,
    r13: u64,
    r12: u64,
    r11: u64,
    r10: u64,
    r9: u64,
    r8: u64,
    rbp: u64,
    rdi: u64,
    rsi: u64,
    rdx: u64,
    rcx: u64,
    rbx: u64,
    rax: u64,
    vector: u64,
    error: u64,
    rip: u64,
    cs: u64,
    rflags: u64,
    rsp: u64,
    ss: u64,
}

const NAMES: [(&str, &str); 32] = [
    ("#DE", "divide error"),
    ("#DB", "debug"),
    ("NMI", "non-maskable interrupt"),
    ("#BP", "breakpoint"),
    ("#OF", "overflow"),
    ("#BR", "bound range exceeded"),
    ("#UD", "invalid opcode"),
    ("#NM", "device not available"),
    ("#DF", "double fault"),
    ("CSO", "coprocessor segment overrun"),
    ("#TS", "invalid TSS"),
    ("#NP", "segment not present"),
    ("#SS", "stack-segment fault"),
    ("#GP", "general protection"),
    ("#PF", "page fault"),
    ("15", "reserved"),
    ("#MF", "x87 floating-point error"),
    ("#AC", "alignment check"),
    ("#MC", "machine check"),
    ("#XM", "SIMD floating-point exception"),
    ("#VE", "virtualization exception"),
    ("#CP", "control protection"),
    ("22", "reserved"),
    ("23", "reserved"),
    ("24", "reserved"),
    ("25", "reserved"),
    ("26", "reserved"),
    ("27", "reserved"),
    ("#HV", "hypervisor injection"),
    ("#VC", "VMM communication"),
    ("#SX", "security exception"),
    ("31", "reserved"),
];

/// Vectors that push an error code.
pub const fn has_error_code(vector: u64) -> bool {
    matches!(vector, 8 | 10 | 11 | 12 | 13 | 14 | 17 | 21 | 29 | 30)
}

/// Called by the common stub with the frame on the (possibly IST) stack; never returns.
#[unsafe(no_mangle)]
extern "C" fn exception(frame: &TrapFrame) -> ! {
    let mut out = crate::drivers::serial::Uart::com1();
    let (short, long) = NAMES.get(frame.vector as usize).copied().unwrap_or(("?", "unknown"));
    let _ = write!(out, "\nseamless firmware: exception {short} ({long}), vector {}", frame.vector);
    if has_error_code(frame.vector) {
        let _ = write!(out, ", error code {:#x}", frame.error);
    }
    let _ = writeln!(out);
    if frame.vector == 14 {
        let e = frame.error;
        let _ = writeln!(
            out,
            "  page fault at cr2={:#018x}: {} {} in {} mode{}{}",
            super::cpu::cr2(),
            if e & 1 != 0 { "protection violation on" } else { "non-present page on" },
            if e & 0x10 != 0 {
                "instruction fetch"
            } else if e & 2 != 0 {
                "write"
            } else {
                "read"
            },
            if e & 4 != 0 { "user" } else { "supervisor" },
            if e & 8 != 0 { ", reserved bit set" } else { "" },
            if e & 0x20 != 0 { ", protection key" } else { "" },
        );
    } else {
        let _ = writeln!(out, "  cr2={:#018x}", super::cpu::cr2());
    }
    let guard = super::paging::stack_guard();
    if (guard..guard + 4096).contains(&super::cpu::cr2()) {
        let _ = writeln!(out, "  cr2 is in the boot stack's guard page: stack overflow");
    }
    let f = frame;
    let _ = writeln!(
        out,
        "  rip={:#018x} cs={:#06x} rflags={:#010x} rsp={:#018x} ss={:#06x}",
        f.rip, f.cs, f.rflags, f.rsp, f.ss
    );
    let _ = writeln!(out, "  rax={:#018x} rbx={:#018x} rcx={:#018x} rdx={:#018x}", f.rax, f.rbx, f.rcx, f.rdx);
    let _ = writeln!(out, "  rsi={:#018x} rdi={:#018x} rbp={:#018x} r8 ={:#018x}", f.rsi, f.rdi, f.rbp, f.r8);
    let _ = writeln!(out, "  r9 ={:#018x} r10={:#018x} r11={:#018x} r12={:#018x}", f.r9, f.r10, f.r11, f.r12);
    let _ =
        writeln!(out, "  r13={:#018x} r14={:#018x} r15={:#018x} cr3={:#018x}", f.r13, f.r14, f.r15, super::cpu::cr3());
    super::exit_qemu(super::ExitCode::Failure)
}
