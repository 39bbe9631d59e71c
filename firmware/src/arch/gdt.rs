//! The long-mode GDT and TSS. The TSS only carries the interrupt stack table: #DF, NMI and #MC
//! switch to stacks of their own, so that a stack overflow still produces a readable report
//! instead of a triple fault.

use core::arch::asm;
use core::cell::UnsafeCell;
use core::mem::size_of;

/// Kernel code selector (GDT slot 1), as the boot code already used.
pub const KERNEL_CS: u16 = 0x08;
/// Kernel data selector (GDT slot 2).
pub const KERNEL_DS: u16 = 0x10;
/// TSS selector (GDT slots 3 and 4).
const TSS_SEL: u16 = 0x18;

/// IST slot (1-based, as the IDT gate names it) of the #DF stack.
pub const IST_DOUBLE_FAULT: u8 = 1;
/// IST slot of the NMI and #MC stack.
pub const IST_NMI_MC: u8 = 2;

const IST_STACK_BYTES: usize = 16 * 1024;

/// The 64-bit TSS (Intel SDM Vol. 3 §8.7).
#[repr(C, packed(4))]
struct Tss {
    reserved0: u32,
    rsp: [u64; 3],
    reserved1: u64,
    ist: [u64; 7],
    reserved2: u64,
    reserved3: u16,
    iomap_base: u16,
}
const _: () = assert!(size_of::<Tss>() == 104);

#[repr(C, align(16))]
struct IstStack([u8; IST_STACK_BYTES]);

/// The GDT, the TSS and the IST stacks, written once by [`init`] before the CPU uses them.
struct Tables {
    gdt: UnsafeCell<[u64; 5]>,
    tss: UnsafeCell<Tss>,
    stacks: UnsafeCell<[IstStack; 2]>,
}

// SAFETY: the firmware runs on one CPU; `init` is the only writer and runs once (see the
// AtomicBool in `arch::init`), before anything reads the tables.
unsafe impl Sync for Tables {}

static TABLES: Tables = Tables {
    gdt: UnsafeCell::new([0; 5]),
    tss: UnsafeCell::new(Tss {
        reserved0: 0,
        rsp: [0; 3],
        reserved1: 0,
        ist: [0; 7],
        reserved2: 0,
        reserved3: 0,
        iomap_base: size_of::<Tss>() as u16,
    }),
    stacks: UnsafeCell::new([IstStack([0; IST_STACK_BYTES]), IstStack([0; IST_STACK_BYTES])]),
};

#[repr(C, packed)]
struct Pointer {
    limit: u16,
    base: u64,
}

/// Loads the GDT (code, data, TSS), reloads every segment register and the task register.
///
/// # Safety
/// Called once, on the boot CPU, with interrupts off.
pub unsafe fn init() {
    let stacks = TABLES.stacks.get();
    let tss = TABLES.tss.get();
    let gdt = TABLES.gdt.get();
    // SAFETY: the caller guarantees a single call before anything else uses the tables, so these
    // raw writes race with nothing; the pointers come from a live static.
    unsafe {
        let stack_top = |i: usize| (*stacks)[i].0.as_ptr() as u64 + IST_STACK_BYTES as u64;
        (*tss).ist[usize::from(IST_DOUBLE_FAULT) - 1] = stack_top(0);
        (*tss).ist[usize::from(IST_NMI_MC) - 1] = stack_top(1);
        let base = tss as u64;
        let limit = (size_of::<Tss>() - 1) as u64;
        // Available 64-bit TSS (type 9), present, DPL 0.
        let low = (limit & 0xFFFF)
            | ((base & 0xFF_FFFF) << 16)
            | (0x89 << 40)
            | (((limit >> 16) & 0xF) << 48)
            | (((base >> 24) & 0xFF) << 56);
        *gdt = [0, 0x00af_9a00_0000_ffff, 0x00cf_9200_0000_ffff, low, base >> 32];
    }
    let ptr = Pointer { limit: (size_of::<[u64; 5]>() - 1) as u16, base: gdt as u64 };
    // SAFETY: the GDT is a static that lives forever and keeps the boot code's selectors (0x08
    // code, 0x10 data); the far return reloads CS with the same selector; LTR names the TSS
    // descriptor just written.
    unsafe {
        asm!(
            "lgdt [{ptr}]",
            "push {cs}",
            "lea {tmp}, [rip + 2f]",
            "push {tmp}",
            "retfq",
            "2:",
            "mov ds, {ds:x}",
            "mov es, {ds:x}",
            "mov ss, {ds:x}",
            "mov fs, {ds:x}",
            "mov gs, {ds:x}",
            "ltr {tss:x}",
            ptr = in(reg) &ptr,
            cs = in(reg) u64::from(KERNEL_CS),
            ds = in(reg) u64::from(KERNEL_DS),
            tss = in(reg) u64::from(TSS_SEL),
            tmp = out(reg) _,
        );
    }
}
