//! Everything in the guest that touches the CPU: the reset vector and 32-bit start
//! (`start.S`), the TDCALL instruction, the IDT and its exception entry, and loads and stores
//! through the guest's identity map. The only `unsafe` of the guest lives here.

use core::arch::asm;
use core::cell::UnsafeCell;

use seamless_drivers::trap::Idt;
pub use seamless_drivers::trap::TrapFrame;
use x86::segmentation::SegmentSelector;
use x86::Ring;

use crate::tdcall::TdcallRegs;

core::arch::global_asm!(include_str!("start.S"), options(att_syntax));

/// The 64-bit code selector of the guest's GDT (`start.S`).
const CODE64: SegmentSelector = SegmentSelector::new(1, Ring::Ring0);
/// Where the page tables map the shared half: VA `SHARED_VA + x` is GPA `shared bit | x`.
pub const SHARED_VA: u64 = 0xFFFF_8000_0000_0000;
/// Bytes of the shared half that are mapped.
pub const SHARED_MAPPED: u64 = 1 << 30;
/// Bytes of GPA space the identity map covers (0..4 GiB).
pub const IDENTITY_MAPPED: u64 = 1 << 32;

/// Executes TDCALL (`66 0f 01 cc`) with `r`; `r` holds the outputs afterwards.
pub fn tdcall(r: &mut TdcallRegs) {
    // SAFETY: TDCALL enters the TSM, which reads and writes only the registers named here (the
    // ABI's RAX..R15, docs/abi.md), may write guest memory named by a leaf's operand (so this
    // is not `nomem`), and returns to the next instruction with RSP and the flags the guest had.
    unsafe {
        asm!(
            ".byte 0x66, 0x0f, 0x01, 0xcc",
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

seamless_drivers::exception_stubs!("guest_trap_stubs", "guest_trap");

unsafe extern "C" {
    static guest_trap_stubs: [u64; 32];
}

static IDT: Idt = Idt::new();

/// Fills and loads the IDT: the 32 exception vectors, each an interrupt gate to its stub, which
/// calls [`guest_trap`]. Call once, first thing in `guest_main`.
pub fn init_idt() {
    // SAFETY: `guest_trap_stubs` is the table `exception_stubs!` built above, whose stubs call
    // `guest_trap` (sound for any frame); CODE64 is the selector `start.S`'s GDT runs with.
    unsafe { IDT.load(&*core::ptr::addr_of!(guest_trap_stubs), CODE64) };
}

/// The Rust entry `start.S` calls, in long mode on the guest's stack.
#[unsafe(no_mangle)]
extern "C" fn guest_main(gpaw: u32, vcpu: u32) -> ! {
    crate::td::main(gpaw, vcpu)
}

/// Called by `trap_common` with the saved frame; returning resumes it (`iretq`).
#[unsafe(no_mangle)]
extern "C" fn guest_trap(frame: *mut TrapFrame) {
    // SAFETY: `trap_common` passes its own stack frame, live and exclusively ours until we
    // return.
    let frame = unsafe { &mut *frame };
    crate::td::trap(frame);
}

/// The device window (GPA 1..2 GiB), where the host maps the TDI's MMIO: device registers, never
/// memory. Not present in the guest's page tables until [`map_device`] maps the pages it
/// accepted.
pub const DEVICE_WINDOW: core::ops::Range<u64> = 1 << 30..2 << 30;

/// Bytes of the device window one table of the guest maps (its first 2 MiB).
const DEVICE_TABLE_SPAN: u64 = 2 << 20;

unsafe extern "C" {
    static mut guest_pd: [u64; 2048];
    static mut guest_pt_device: [u64; 512];
}

/// Pages of the device window mapped so far, from its start.
static DEVICE_MAPPED: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// Maps `pages` pages of the device window from `gpa` (which must be its start: the TDI's BAR
/// is the one device the guest drives) into its page tables: 4 KiB leaves, present, writable,
/// uncached (PCD|PWT), as a driver maps registers (not NX: EFER.NXE is off, and a TD cannot
/// write EFER). `None` if the range is not the window's start or passes the one table.
pub fn map_device(gpa: u64, pages: u64) -> Option<()> {
    if gpa != DEVICE_WINDOW.start || pages.checked_mul(4096)? > DEVICE_TABLE_SPAN {
        return None;
    }
    const P_RW_PWT_PCD: u64 = 0x1B;
    for i in 0..pages {
        let page = gpa + i * 4096;
        // SAFETY: the device table is a TEMP_MEM page of the guest's own tables (`start.S`),
        // written only here, on the one vCPU; the entry maps a page of the device window, which
        // holds no guest data, code or tables.
        unsafe { (*core::ptr::addr_of_mut!(guest_pt_device))[i as usize] = page | P_RW_PWT_PCD };
    }
    let pt = core::ptr::addr_of!(guest_pt_device) as u64;
    // SAFETY: PD entry 512 covers the device window's first 2 MiB and was not present
    // (`start.S`); linking it to the device table changes the mapping of nothing else.
    unsafe { (*core::ptr::addr_of_mut!(guest_pd))[512] = pt | 0x3 };
    for i in 0..pages {
        // SAFETY: INVLPG drops a stale translation of one page of the window; nothing else.
        unsafe { x86::tlb::flush((gpa + i * 4096) as usize) };
    }
    DEVICE_MAPPED.store(pages, core::sync::atomic::Ordering::Relaxed);
    Some(())
}

/// Whether `[gpa, gpa + 4)` lies in the device pages [`map_device`] mapped.
fn device_mapped(gpa: u64) -> bool {
    let mapped = DEVICE_MAPPED.load(core::sync::atomic::Ordering::Relaxed) * 4096;
    gpa >= DEVICE_WINDOW.start && gpa + 4 <= DEVICE_WINDOW.start + mapped
}

/// Whether `[gpa, gpa + len)` lies in one page of the identity map, outside the device window.
fn in_identity_page(gpa: u64, len: usize) -> bool {
    let off = gpa & 0xFFF;
    gpa < IDENTITY_MAPPED && off + len as u64 <= 4096 && !DEVICE_WINDOW.contains(&gpa)
}

/// Copies private memory at `gpa` (within one page, below 4 GiB) into `buf` with real loads
/// through the identity map; `None` if the range is not in one mapped page. A page the guest
/// has not accepted raises #VE (EPT violation), which is fatal.
pub fn private_read(gpa: u64, buf: &mut [u8]) -> Option<()> {
    if !in_identity_page(gpa, buf.len()) {
        return None;
    }
    for (i, b) in buf.iter_mut().enumerate() {
        // SAFETY: the identity map covers `gpa..gpa+len` (checked above); a volatile byte load
        // forms no reference into memory the TSM or a device may also write.
        *b = unsafe { core::ptr::read_volatile((gpa + i as u64) as *const u8) };
    }
    Some(())
}

/// Writes `data` to private memory at `gpa` with real stores; as for [`private_read`].
pub fn private_write(gpa: u64, data: &[u8]) -> Option<()> {
    if !in_identity_page(gpa, data.len()) {
        return None;
    }
    for (i, &b) in data.iter().enumerate() {
        // SAFETY: as in `private_read`; the guest's own code, data, tables and stack are
        // outside the work pages this is called for (the caller names them).
        unsafe { core::ptr::write_volatile((gpa + i as u64) as *mut u8, b) };
    }
    Some(())
}

/// A 32-bit load from the device pages the guest mapped ([`map_device`]: uncached); `None` if
/// `gpa` is outside them or unaligned.
pub fn mmio_read_u32(gpa: u64) -> Option<u32> {
    if !device_mapped(gpa) || !gpa.is_multiple_of(4) {
        return None;
    }
    // SAFETY: inside the uncached device window of the identity map, aligned; a volatile load
    // is one access the device sees, as a driver's register read must be.
    Some(unsafe { core::ptr::read_volatile(gpa as *const u32) })
}

/// A 32-bit store to the device window; as for [`mmio_read_u32`].
pub fn mmio_write_u32(gpa: u64, value: u32) -> Option<()> {
    if !device_mapped(gpa) || !gpa.is_multiple_of(4) {
        return None;
    }
    // SAFETY: as in `mmio_read_u32`: one aligned volatile store the device sees.
    unsafe { core::ptr::write_volatile(gpa as *mut u32, value) };
    Some(())
}

/// The TSC: RDTSC executes in the TD without an exit (the TD world intercepts no RDTSC), so the
/// TD times its own work.
pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC reads a counter and changes nothing; CR4.TSD is clear in the TD.
    unsafe { x86::time::rdtsc() }
}

/// Copies from the shared half at offset `off` (below [`SHARED_MAPPED`]) into `buf`.
pub fn shared_read(off: u64, buf: &mut [u8]) -> Option<()> {
    let end = off.checked_add(buf.len() as u64)?;
    if end > SHARED_MAPPED {
        return None;
    }
    for (i, b) in buf.iter_mut().enumerate() {
        // SAFETY: the shared alias maps `SHARED_VA..SHARED_VA + SHARED_MAPPED` (checked
        // above); the host may change these bytes at any time, so they are read once each,
        // volatile, and never through a reference.
        *b = unsafe { core::ptr::read_volatile((SHARED_VA + off + i as u64) as *const u8) };
    }
    Some(())
}

/// Writes `data` into the shared half at offset `off`; as for [`shared_read`].
pub fn shared_write(off: u64, data: &[u8]) -> Option<()> {
    let end = off.checked_add(data.len() as u64)?;
    if end > SHARED_MAPPED {
        return None;
    }
    for (i, &b) in data.iter().enumerate() {
        // SAFETY: as in `shared_read`.
        unsafe { core::ptr::write_volatile((SHARED_VA + off + i as u64) as *mut u8, b) };
    }
    Some(())
}

unsafe extern "C" {
    fn guest_probe_load(addr: u64) -> u64;
    fn guest_probe_seamcall();
    static guest_probe_load_at: u8;
    static guest_probe_load_done: u8;
    static guest_probe_seamcall_at: u8;
    static guest_probe_seamcall_done: u8;
}

/// What a probe instruction ran into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caught {
    /// A #VE, with what TDG.VP.VEINFO.GET said of it.
    Ve(crate::ve::VeInfo),
    /// Another exception: its vector.
    Exception(u64),
}

/// The exception the running probe caught (one vCPU: only the probe and the handler it traps
/// into touch it, one after the other).
struct ProbeCatch(UnsafeCell<Option<Caught>>);
// SAFETY: one vCPU; the handler writes it only while a probe instruction is trapping, the probe
// reads it only after the instruction, never at the same time.
unsafe impl Sync for ProbeCatch {}
static PROBE_CATCH: ProbeCatch = ProbeCatch(UnsafeCell::new(None));

/// The probe instructions and where each resumes.
fn probe_sites() -> [(u64, u64); 2] {
    // Addresses of labels in `start.S`, never read or written through.
    [
        (core::ptr::addr_of!(guest_probe_load_at) as u64, core::ptr::addr_of!(guest_probe_load_done) as u64),
        (core::ptr::addr_of!(guest_probe_seamcall_at) as u64, core::ptr::addr_of!(guest_probe_seamcall_done) as u64),
    ]
}

/// Called by the exception handler: if `frame` trapped at a probe instruction, records `what`,
/// moves RIP past the instruction (RAX 0) and returns true; else false.
pub fn caught(frame: &mut TrapFrame, what: Caught) -> bool {
    let Some(&(_, done)) = probe_sites().iter().find(|(at, _)| *at == frame.rip) else { return false };
    // SAFETY: see `ProbeCatch`: the probe that trapped waits for the handler to return.
    unsafe { *PROBE_CATCH.0.get() = Some(what) };
    frame.rip = done;
    frame.rax = 0;
    true
}

/// Clears and returns what the last probe caught.
fn take_caught() -> Option<Caught> {
    // SAFETY: see `ProbeCatch`: no probe instruction runs while this does.
    unsafe { (*PROBE_CATCH.0.get()).take() }
}

/// An 8-byte load of the identity-mapped `gpa`, whatever the TSM makes of it: the value, or the
/// exception it raised (the TD's handler resumes after the load). An access the TSM answers
/// with an exit to the host never returns here until the host let it complete.
pub fn probe_load(gpa: u64) -> Result<u64, Caught> {
    take_caught();
    // SAFETY: the load is the probe: it may fault, and `caught` resumes after it with RAX 0;
    // nothing is formed from the address but this one volatile load in assembly.
    let v = unsafe { guest_probe_load(gpa) };
    take_caught().map_or(Ok(v), Err)
}

/// SEAMCALL in the TD: `Err` with what it raised (a TD's SEAMCALL is #UD), `Ok` if it returned.
pub fn probe_seamcall() -> Result<(), Caught> {
    take_caught();
    // SAFETY: SEAMCALL from a TD is refused by the TSM with #UD, which `caught` resumes after;
    // were it not, the instruction would change only RAX, which the stub clobbers anyway.
    unsafe { guest_probe_seamcall() };
    take_caught().map_or(Ok(()), Err)
}

/// HLT: in a TD a #VE that the handler turns into TDVMCALL<HLT>.
pub fn hlt() {
    // SAFETY: HLT changes no memory; in a TD it is a #VE the IDT serves.
    unsafe { x86::halt() };
}
