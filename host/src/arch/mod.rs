//! Everything in the host agent that touches the CPU: the entry and the exception stubs
//! (`entry.S`), the IDT, SEAMCALL and VMMCALL, the probe accesses the TSM must refuse, MSR
//! writes, the boot information's page and the exit. The only `unsafe` of the binary lives here.

use core::arch::asm;
use core::sync::atomic::{AtomicU64, Ordering};

use seamless_drivers::port::Port;
use seamless_drivers::say;
use seamless_drivers::trap::Idt;
pub use seamless_drivers::trap::TrapFrame;
use tsm::Regs;
use x86::segmentation::SegmentSelector;
use x86::Ring;

core::arch::global_asm!(include_str!("entry.S"));
seamless_drivers::exception_stubs!("host_trap_stubs", "host_trap");

/// The 64-bit code selector of the agent's GDT (`entry.S`), the one the TSM enters it with.
const CODE64: SegmentSelector = SegmentSelector::new(1, Ring::Ring0);
/// #UD and #MC.
const VECTOR_UD: u64 = 6;
const VECTOR_MC: u64 = 18;

unsafe extern "C" {
    static host_trap_stubs: [u64; 32];
    static __host_image_start: u8;
    static __host_image_end: u8;
    static host_probe_read_at: u8;
    static host_probe_read_fixup: u8;
    static host_probe_write_at: u8;
    static host_probe_write_fixup: u8;
    static host_probe_tdcall_at: u8;
    static host_probe_tdcall_fixup: u8;
    fn host_probe_read(addr: u64) -> Probe;
    fn host_probe_write(addr: u64, value: u64) -> Probe;
    fn host_probe_tdcall() -> Probe;
}

/// What a probe access returned: the value read (0 when refused) and whether the TSM refused
/// it (the handler saw its #MC or #UD). Returned in RAX:RDX.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct Probe {
    value: u64,
    refused: u64,
}

/// #MCs the handler recovered from, and #UDs.
static MC_TAKEN: AtomicU64 = AtomicU64::new(0);
static UD_TAKEN: AtomicU64 = AtomicU64::new(0);

static IDT: Idt = Idt::new();

/// Fills and loads the IDT: the 32 exception vectors, each an interrupt gate to its stub, which
/// calls [`host_trap`]. Call once, first thing in `host_main`.
pub fn init() {
    // SAFETY: `host_trap_stubs` is the table `exception_stubs!` built above, whose stubs call
    // `host_trap` (sound for any frame); CODE64 is the selector `entry.S`'s GDT runs with.
    unsafe { IDT.load(&*core::ptr::addr_of!(host_trap_stubs), CODE64) };
}

/// The Rust entry `entry.S` calls, on the agent's stack, with the boot information's address.
#[unsafe(no_mangle)]
extern "C" fn host_main(boot_info: u64) -> ! {
    crate::run::main(boot_info)
}

/// Called by `host_trap_common` with the saved frame; returning resumes it. The probe accesses'
/// #MC and TDCALL's #UD are recovered from (RIP to the fixup, RDX = 1); anything else stops the
/// run, reported.
#[unsafe(no_mangle)]
extern "C" fn host_trap(frame: *mut TrapFrame) {
    // SAFETY: `host_trap_common` passes its own stack frame, live and exclusively ours until we
    // return.
    let f = unsafe { &mut *frame };
    let recovered = match f.vector {
        VECTOR_MC if f.rip == &raw const host_probe_read_at as u64 => Some(&raw const host_probe_read_fixup as u64),
        VECTOR_MC if f.rip == &raw const host_probe_write_at as u64 => Some(&raw const host_probe_write_fixup as u64),
        VECTOR_UD if f.rip == &raw const host_probe_tdcall_at as u64 => Some(&raw const host_probe_tdcall_fixup as u64),
        _ => None,
    };
    match recovered {
        Some(fixup) => {
            let counter = if f.vector == VECTOR_MC { &MC_TAKEN } else { &UD_TAKEN };
            counter.fetch_add(1, Ordering::SeqCst);
            f.rip = fixup;
            f.rax = 0;
            f.rdx = 1;
        }
        None => {
            say!(
                "seamless host: error: exception vector {} (error code {:#x}) at rip={:#018x} rsp={:#018x} cr2={:#018x}",
                f.vector,
                f.error,
                f.rip,
                f.rsp,
                cr2()
            );
            exit(ExitCode::Failure)
        }
    }
}

/// #MCs and #UDs the handler recovered from so far.
pub fn recovered() -> (u64, u64) {
    (MC_TAKEN.load(Ordering::SeqCst), UD_TAKEN.load(Ordering::SeqCst))
}

fn cr2() -> u64 {
    // SAFETY: reading CR2 has no side effect.
    unsafe { x86::controlregs::cr2() as u64 }
}

/// SEAMCALL (`66 0f 01 cf`): the only way into the TSM. The TSM reads RAX and the ABI's input
/// registers and writes back exactly RAX, RCX, RDX and R8..R13, and R14/R15 for TDH.VP.ENTER
/// (GHCI's operands of a TD's VMCALL; every other leaf leaves them as they were).
pub fn seamcall(r: &mut Regs) {
    // SAFETY: the TSM writes only the registers named here and host memory a leaf's operand
    // names (so this is not `nomem`), and returns to the next instruction with RSP and the
    // flags as they were.
    unsafe {
        asm!(
            ".byte 0x66, 0x0f, 0x01, 0xcf",
            inout("rax") r.rax,
            inout("rcx") r.rcx,
            inout("rdx") r.rdx,
            inout("r8") r.r8,
            inout("r9") r.r9,
            inout("r10") r.r10,
            inout("r11") r.r11,
            inout("r12") r.r12,
            inout("r13") r.r13,
            inout("r14") r.r14,
            inout("r15") r.r15,
            options(nostack),
        );
    }
}

/// VMMCALL: a bare exit to the TSM, which only moves RIP past it (the floor of a world switch).
pub fn vmmcall() {
    // SAFETY: the TSM serves VMMCALL from the host world by skipping it: no register or memory
    // changes.
    unsafe { asm!("vmmcall", options(nomem, nostack, preserves_flags)) };
}

/// Marks the start of the run's phase `name` for the TSM (`seamless_drivers::phases`), or with
/// `None` the end of the last: the TSM counts each phase's world switches and says them at its
/// end. A name the format refuses marks only the end of the open phase.
pub fn phase_mark(name: Option<&str>) {
    let (rcx, rdx) = name.and_then(seamless_drivers::phases::encode).unwrap_or((0, 0));
    // SAFETY: the TSM serves a phase mark by noting it and skipping the VMMCALL: no register
    // or memory of the agent changes.
    unsafe {
        asm!(
            "vmmcall",
            in("rax") seamless_drivers::phases::MARK,
            in("rcx") rcx,
            in("rdx") rdx,
            options(nomem, nostack, preserves_flags)
        )
    };
}

/// The TSC.
pub fn rdtsc() -> u64 {
    seamless_drivers::tsc::rdtsc()
}

/// A load from `addr` (identity-mapped physical) that the TSM should refuse: `Some(value)` if it
/// was not refused, `None` if the TSM refused it (#MC recovered).
pub fn probe_read(addr: u64) -> Option<u64> {
    // SAFETY: the routine loads 8 bytes at `addr` through the identity map; an address the
    // host's nested map refuses raises #MC, which `host_trap` turns into the fixup. The
    // addresses probed are not Rust objects of the agent (they are outside its memory).
    let p = unsafe { host_probe_read(addr) };
    (p.refused == 0).then_some(p.value)
}

/// A store of `value` at `addr` that the TSM should refuse; `true` if it was refused.
pub fn probe_write(addr: u64, value: u64) -> bool {
    // SAFETY: as for `probe_read`: the store targets memory outside the agent's own, which the
    // nested map refuses (else the probe reports it landed).
    unsafe { host_probe_write(addr, value) }.refused != 0
}

/// TDCALL from the host world; `true` if it raised #UD (the guest ABI is not the host's).
pub fn probe_tdcall() -> bool {
    // SAFETY: TDCALL in the host world is #UD (the TSM reflects it); were it served, the routine
    // keeps the callee-saved registers it could write.
    unsafe { host_probe_tdcall() }.refused != 0
}

/// WRMSR, which the TSM intercepts for every MSR and drops.
pub fn wrmsr(msr: u32, value: u64) {
    // SAFETY: the host world's MSR permission map intercepts every MSR: the write exits to the
    // TSM, which drops it, so no MSR of this CPU changes.
    unsafe { x86::msr::wrmsr(msr, value) };
}

/// RDMSR, which the TSM answers with 0 for every MSR.
pub fn rdmsr(msr: u32) -> u64 {
    // SAFETY: intercepted as for `wrmsr`; reading has no effect.
    unsafe { x86::msr::rdmsr(msr) }
}

/// An OUT of one byte to `port`, which the TSM intercepts (a port it keeps).
pub fn out_kept(port: u16, value: u8) {
    // SAFETY: the ports passed here are ones the host world's IOPM intercepts (the ISA DMA
    // controllers, port A, the i8042, APM control, the 8259s, CMOS data) or CMOS's index
    // (which selects a byte and nothing else): the TSM refuses the kept ones' writes, nothing
    // reaches the device. (The probe checks each refusal: a TSM that let A20 off through would
    // have broken this world's memory as it would the TSM's.)
    let p = unsafe { Port::new(port) };
    p.write_u8(value);
}

/// An OUT of 16 bits to a port the TSM keeps (the ACPI PM registers).
pub fn out16_kept(port: u16, value: u16) {
    // SAFETY: as for `out_kept`: the TSM keeps the port and refuses the write (the probe
    // checks that it did).
    let p = unsafe { Port::new(port) };
    p.write_u16(value);
}

/// An IN of 8 bits from `port`: a port whose reads have no effect on memory (port A, the
/// 8259's mask, CMOS data).
pub fn in8(port: u16) -> u8 {
    // SAFETY: reading these registers changes no memory.
    let p = unsafe { Port::new(port) };
    p.read_u8()
}

/// An OUT of 32 bits to `port`: fw_cfg's DMA address registers (which the TSM keeps), or PCI
/// configuration mechanism #1 (0xCF8/0xCFC, whose writes to the chipset the TSM refuses).
pub fn out32(port: u16, value: u32) {
    // SAFETY: the ports passed here are intercepted by the TSM, which refuses what could reach
    // memory (fw_cfg DMA, configuration writes to the host and LPC bridges) and passes the rest
    // on: configuration cycles, which move no memory the agent uses.
    let p = unsafe { Port::new(port) };
    p.write_u32(value);
}

/// An IN of 32 bits from `port` (the PCI configuration data window).
pub fn in32(port: u16) -> u32 {
    // SAFETY: a configuration read has no effect on memory.
    let p = unsafe { Port::new(port) };
    p.read_u32()
}

/// The agent's own memory, virtual `[start, end)`: its image (the TSM placed it physically; the
/// boot information says where).
pub fn image_range() -> (u64, u64) {
    (&raw const __host_image_start as u64, &raw const __host_image_end as u64)
}

/// Copies the boot information page at physical `pa` (identity-mapped, in the region the TSM
/// loaded) into `buf`.
pub fn read_boot_info(pa: u64, buf: &mut [u8; 4096]) {
    for (i, b) in buf.iter_mut().enumerate() {
        // SAFETY: the TSM wrote the page into host RAM inside the identity map and names it in
        // RDI; it is read once, by volatile byte loads, before anything else uses that region.
        *b = unsafe { core::ptr::read_volatile((pa + i as u64) as *const u8) };
    }
}

pub use seamless_drivers::exit::ExitCode;

/// Ends the run through `isa-debug-exit` (which the TSM intercepts, says its last word, and
/// ends with the same code): QEMU exits 33 on success, 35 on failure, 37 for a device whose
/// protocols interoperated but whose interface report the TSM refused.
pub fn exit(code: ExitCode) -> ! {
    // SAFETY: 0xf4 is isa-debug-exit, which the TSM keeps: the write only ends the run.
    let port = unsafe { Port::new(seamless_drivers::exit::DEBUG_EXIT_PORT) };
    port.write_u32(code as u32);
    loop {
        // SAFETY: HLT pauses until an interrupt; none is enabled.
        unsafe { asm!("hlt", options(nomem, nostack, preserves_flags)) };
    }
}

/// An FXSAVE area: the x87 and SSE state (XMM0..15 at byte 160, 16 bytes each).
#[derive(Clone, Copy, Debug)]
#[repr(C, align(16))]
pub struct FpuArea(pub [u8; 512]);

impl FpuArea {
    /// The x87/SSE state of a CPU after INIT (FCW 0x037F, MXCSR 0x1F80) with every XMM register
    /// holding `xmm(i)` in its low 8 bytes.
    pub fn with_xmm(xmm: impl Fn(usize) -> u64) -> FpuArea {
        let mut a = [0u8; 512];
        a[..2].copy_from_slice(&0x037Fu16.to_le_bytes());
        a[24..28].copy_from_slice(&0x1F80u32.to_le_bytes());
        for i in 0..16 {
            a[160 + 16 * i..168 + 16 * i].copy_from_slice(&xmm(i).to_le_bytes());
        }
        FpuArea(a)
    }

    /// The low 8 bytes of XMM`i`.
    pub fn xmm(&self, i: usize) -> u64 {
        let mut w = [0u8; 8];
        w.copy_from_slice(&self.0[160 + 16 * i..168 + 16 * i]);
        u64::from_le_bytes(w)
    }
}

/// FXRSTOR: loads the x87 and SSE registers from `area`. The agent is built soft-float: nothing
/// of its own lives in these registers, so loading them only sets what the probe looks for.
pub fn fpu_load(area: &FpuArea) {
    // SAFETY: `area` is 16-byte aligned and 512 bytes; its MXCSR has no reserved bit set
    // (`FpuArea::with_xmm`); the agent's code never uses the x87/SSE registers (soft-float).
    unsafe { asm!("fxrstor64 [{}]", in(reg) area.0.as_ptr(), options(nostack, readonly)) };
}

/// FXSAVE: the x87 and SSE registers as they are now.
pub fn fpu_save() -> FpuArea {
    let mut area = FpuArea([0; 512]);
    // SAFETY: `area` is 16-byte aligned and 512 bytes, written by the instruction only.
    unsafe { asm!("fxsave64 [{}]", in(reg) area.0.as_mut_ptr(), options(nostack)) };
    area
}

/// XSETBV of XCR0 with AVX state (x87 | SSE | AVX), after turning the world's CR4.OSXSAVE on;
/// then XCR0 as XGETBV reads it. The TSM keeps XCR0 to x87 and SSE (the state it switches
/// between worlds) and refuses this.
pub fn try_xcr0_with_avx() -> u64 {
    // SAFETY: CR4.OSXSAVE is the host world's own (its CR4 is in its VMCB); the XSETBV exits
    // to the TSM, which refuses it, and XGETBV only reads. No memory changes.
    unsafe {
        x86::controlregs::cr4_write(x86::controlregs::cr4() | x86::controlregs::Cr4::CR4_ENABLE_OS_XSAVE);
        asm!("xsetbv", in("ecx") 0u32, in("eax") 0x7u32, in("edx") 0u32, options(nomem, nostack));
        x86::controlregs::xcr0().bits()
    }
}
