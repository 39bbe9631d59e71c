//! AMD SVM, the instructions that make the TSM the only code in host mode: detection, EFER.SVME,
//! the host save area, the VMCB layout, and VMRUN with the guest GPRs the VMCB does not hold.
//!
//! Facts from AMD APM vol. 2 §15 and appendix B (VMCB layout), checked against QEMU's TCG
//! (`target/i386/tcg/system/svm_helper.c`): `-cpu max` reports SVM with nested paging
//! (CPUID 8000_000A EDX = NPT | VGIF | SVME-ADDR-CHK) and **no nRIP save and no decode assists**,
//! so the TSM advances RIP itself by the length of the instruction it emulated.

use core::arch::asm;
use core::cell::UnsafeCell;
use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use x86::cpuid::CpuId;
use x86::msr::{rdmsr, wrmsr, IA32_EFER};

/// EFER.SVME (APM vol. 2 §15.4).
const EFER_SVME: u64 = 1 << 12;
/// VM_CR: SVMDIS (bit 4) means the BIOS locked SVM off.
const MSR_VM_CR: u32 = 0xC001_0114;
const VM_CR_SVMDIS: u64 = 1 << 4;
/// VM_HSAVE_PA: where VMRUN saves the host state it restores at #VMEXIT.
const MSR_VM_HSAVE_PA: u32 = 0xC001_0117;

/// Why the CPU cannot host the worlds. Each names the fix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SvmUnavailable {
    /// CPUID 8000_0001 ECX[2] is clear: no SVM at all (an Intel `-cpu`, or KVM on a host
    /// without nested SVM).
    NoSvm,
    /// CPUID 8000_000A EDX[0] is clear: SVM without nested paging.
    NoNestedPaging,
    /// VM_CR.SVMDIS: firmware disabled SVM.
    Disabled,
}

impl fmt::Display for SvmUnavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self {
            SvmUnavailable::NoSvm => "the CPU has no AMD SVM (CPUID 8000_0001 ECX[2] clear)",
            SvmUnavailable::NoNestedPaging => "SVM without nested paging (CPUID 8000_000A EDX[0] clear)",
            SvmUnavailable::Disabled => "SVM is disabled (VM_CR.SVMDIS set)",
        };
        write!(f, "{what}; the TSM runs the host and the TDs as SVM guests: run QEMU with -accel tcg -cpu max")
    }
}

/// What CPUID says about SVM.
#[derive(Clone, Copy, Debug)]
pub struct SvmCaps {
    /// SVM revision (CPUID 8000_000A EAX[7:0]).
    pub revision: u8,
    /// ASIDs the CPU offers (CPUID 8000_000A EBX).
    pub asids: u32,
    /// nRIP save (CPUID 8000_000A EDX[3]); TCG has none.
    pub nrip: bool,
}

/// One 4 KiB page, page-aligned: the host save area and the VMCBs.
#[repr(C, align(4096))]
pub struct Page(pub [u8; 4096]);

struct HostArea(UnsafeCell<Page>);
// SAFETY: one CPU; only the CPU writes these pages (VMRUN, VMSAVE), never Rust code.
unsafe impl Sync for HostArea {}
/// VM_HSAVE_PA's page.
static HSAVE: HostArea = HostArea(UnsafeCell::new(Page([0; 4096])));
/// The TSM's own FS, GS, TR, LDTR, KernelGsBase, STAR/LSTAR/CSTAR/SFMASK and SYSENTER MSRs,
/// which VMRUN does not save: VMSAVE keeps them here before VMLOAD installs a world's, and VMLOAD
/// brings them back after the exit (APM vol. 2 §15.5.2).
static HOST_VMSAVE: HostArea = HostArea(UnsafeCell::new(Page([0; 4096])));

/// Checks that the CPU offers SVM with nested paging, then enables it: EFER.SVME and the host
/// save area. Later calls only check again.
///
/// # Errors
/// [`SvmUnavailable`], which names the fix.
pub fn enable() -> Result<SvmCaps, SvmUnavailable> {
    let cpuid = CpuId::new();
    let has_svm = cpuid.get_extended_processor_and_feature_identifiers().is_some_and(|f| f.has_svm());
    if !has_svm {
        return Err(SvmUnavailable::NoSvm);
    }
    let svm = cpuid.get_svm_info().ok_or(SvmUnavailable::NoSvm)?;
    if !svm.has_nested_paging() {
        return Err(SvmUnavailable::NoNestedPaging);
    }
    // SAFETY: CPUID said SVM exists, so VM_CR exists; reading it has no side effect.
    if unsafe { rdmsr(MSR_VM_CR) } & VM_CR_SVMDIS != 0 {
        return Err(SvmUnavailable::Disabled);
    }
    // SAFETY: setting EFER.SVME only makes the SVM instructions legal; the host save area is a
    // page of the image (physical = virtual at 1 MiB) that nothing else uses.
    unsafe {
        wrmsr(IA32_EFER, rdmsr(IA32_EFER) | EFER_SVME);
        wrmsr(MSR_VM_HSAVE_PA, HSAVE.0.get() as u64);
    }
    Ok(SvmCaps { revision: svm.revision(), asids: svm.supported_asids(), nrip: svm.has_nrip() })
}

/// True if the MSRs the worlds rest on still hold what [`enable`] wrote: EFER.SVME and
/// VM_HSAVE_PA (a world that could write either would take the TSM's next #VMEXIT with it).
pub fn host_msrs_intact() -> bool {
    // SAFETY: reading EFER and VM_HSAVE_PA (SVM is enabled) has no side effect.
    let (efer, hsave) = unsafe { (rdmsr(IA32_EFER), rdmsr(MSR_VM_HSAVE_PA)) };
    efer & EFER_SVME != 0 && hsave == HSAVE.0.get() as u64
}

/// VMCB offsets (APM vol. 2 appendix B). Control area first, then the state-save area at 0x400.
/// The whole layout the worlds need, including fields only the TD world will use.
#[allow(missing_docs, dead_code)]
pub mod vmcb {
    pub const INTERCEPT_CR: usize = 0x000;
    pub const INTERCEPT_EXCEPTIONS: usize = 0x008;
    /// Word 3: INTR.. SHUTDOWN (bit 31).
    pub const INTERCEPT_MISC1: usize = 0x00C;
    /// Word 4: VMRUN (bit 0), VMMCALL (bit 1), VMLOAD, VMSAVE, STGI, CLGI, SKINIT, RDTSCP, ...
    pub const INTERCEPT_MISC2: usize = 0x010;
    pub const IOPM_BASE: usize = 0x040;
    pub const MSRPM_BASE: usize = 0x048;
    pub const TSC_OFFSET: usize = 0x050;
    pub const GUEST_ASID: usize = 0x058;
    pub const TLB_CONTROL: usize = 0x05C;
    pub const INT_CTL: usize = 0x060;
    pub const INT_VECTOR: usize = 0x064;
    /// Bit 0: the guest is in an interrupt shadow (after STI or MOV SS).
    pub const INT_STATE: usize = 0x068;
    pub const EXIT_CODE: usize = 0x070;
    pub const EXIT_INFO1: usize = 0x078;
    pub const EXIT_INFO2: usize = 0x080;
    pub const EXIT_INT_INFO: usize = 0x088;
    pub const NP_ENABLE: usize = 0x090;
    pub const EVENT_INJ: usize = 0x0A8;
    pub const N_CR3: usize = 0x0B0;
    pub const NEXT_RIP: usize = 0x0C8;

    pub const ES: usize = 0x400;
    pub const CS: usize = 0x410;
    pub const SS: usize = 0x420;
    pub const DS: usize = 0x430;
    pub const FS: usize = 0x440;
    pub const GS: usize = 0x450;
    pub const GDTR: usize = 0x460;
    pub const LDTR: usize = 0x470;
    pub const IDTR: usize = 0x480;
    pub const TR: usize = 0x490;
    pub const CPL: usize = 0x4CB;
    pub const EFER: usize = 0x4D0;
    pub const CR4: usize = 0x548;
    pub const CR3: usize = 0x550;
    pub const CR0: usize = 0x558;
    pub const DR7: usize = 0x560;
    pub const DR6: usize = 0x568;
    pub const RFLAGS: usize = 0x570;
    pub const RIP: usize = 0x578;
    pub const RSP: usize = 0x5D8;
    pub const RAX: usize = 0x5F8;
    pub const STAR: usize = 0x600;
    pub const LSTAR: usize = 0x608;
    pub const CSTAR: usize = 0x610;
    pub const SFMASK: usize = 0x618;
    pub const KERNEL_GS_BASE: usize = 0x620;
    pub const SYSENTER_CS: usize = 0x628;
    pub const SYSENTER_ESP: usize = 0x630;
    pub const SYSENTER_EIP: usize = 0x638;
    pub const CR2: usize = 0x640;
    pub const G_PAT: usize = 0x668;

    /// Intercept bits of word 3 (`INTERCEPT_MISC1`).
    /// A physical interrupt (INTR) while the guest runs.
    pub const MISC1_INTR: u32 = 1 << 0;
    pub const MISC1_CPUID: u32 = 1 << 18;
    pub const MISC1_HLT: u32 = 1 << 24;
    pub const MISC1_IOIO: u32 = 1 << 27;
    pub const MISC1_MSR: u32 = 1 << 28;
    pub const MISC1_SHUTDOWN: u32 = 1 << 31;
    /// Intercept bits of word 4 (`INTERCEPT_MISC2`): VMRUN must be intercepted, or VMRUN fails.
    pub const MISC2_VMRUN: u32 = 1 << 0;
    pub const MISC2_VMMCALL: u32 = 1 << 1;
    pub const MISC2_VMLOAD: u32 = 1 << 2;
    pub const MISC2_VMSAVE: u32 = 1 << 3;
    pub const MISC2_STGI: u32 = 1 << 4;
    pub const MISC2_CLGI: u32 = 1 << 5;
    pub const MISC2_SKINIT: u32 = 1 << 6;
    /// XSETBV: XCR0 is one for every world (the TSM keeps it to x87 and SSE).
    pub const MISC2_XSETBV: u32 = 1 << 13;
    pub const MISC1_INVLPGA: u32 = 1 << 26;

    /// TLB_CONTROL: flush the whole TLB on VMRUN (TCG has no flush-by-ASID).
    pub const TLB_FLUSH_ALL: u8 = 1;
    /// EVENTINJ: valid (bit 31), type exception (3 << 8).
    pub const EVENT_VALID_EXCEPTION: u64 = (1 << 31) | (3 << 8);
    /// INT_CTL: the guest's RFLAGS.IF masks only virtual interrupts; physical ones follow the
    /// host's IF as VMRUN saved it (set: `run` executes VMRUN with IF on and GIF off).
    pub const V_INTR_MASKING: u64 = 1 << 24;
    /// EVENTINJ: valid (bit 31), type external interrupt (0 << 8).
    pub const EVENT_VALID_INTR: u64 = 1 << 31;
}

/// SVM exit codes (APM vol. 2 appendix C) the TSM handles.
#[allow(missing_docs, dead_code)]
pub mod exit {
    /// 0x40 + vector: an intercepted exception.
    pub const EXCEPTION_BASE: u64 = 0x40;
    /// A physical interrupt arrived while the guest ran (INTR intercept).
    pub const INTR: u64 = 0x60;
    pub const CPUID: u64 = 0x72;
    pub const HLT: u64 = 0x78;
    pub const IOIO: u64 = 0x7B;
    pub const MSR: u64 = 0x7C;
    pub const SHUTDOWN: u64 = 0x7F;
    pub const INVLPGA: u64 = 0x7A;
    pub const VMRUN: u64 = 0x80;
    pub const VMMCALL: u64 = 0x81;
    pub const SKINIT: u64 = 0x86;
    pub const XSETBV: u64 = 0x8D;
    pub const NPF: u64 = 0x400;
    /// VMRUN refused the VMCB (a consistency check failed).
    pub const INVALID: u64 = u64::MAX;
}

/// A segment in the VMCB's save area: selector, attributes (the descriptor's type/S/DPL/P at
/// bits 7:0 and AVL/L/D/G at bits 11:8), limit, base.
#[derive(Clone, Copy, Debug)]
pub struct Segment {
    /// Selector.
    pub selector: u16,
    /// Packed attributes.
    pub attrib: u16,
    /// Limit.
    pub limit: u32,
    /// Base.
    pub base: u64,
}

/// A VMCB: one per world (per vCPU for TDs). The CPU reads and writes it during VMRUN; Rust only
/// touches it between runs, through the typed accessors.
#[repr(C, align(4096))]
pub struct Vmcb([u8; 4096]);

impl fmt::Debug for Vmcb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vmcb").field("exit_code", &self.read_u64(vmcb::EXIT_CODE)).finish()
    }
}

impl Vmcb {
    /// An all-zero VMCB.
    pub const fn zeroed() -> Vmcb {
        Vmcb([0; 4096])
    }

    /// Zeroes the whole VMCB.
    pub fn clear(&mut self) {
        self.0 = [0; 4096];
    }

    /// The 8 bytes at `offset` (little endian).
    pub fn read_u64(&self, offset: usize) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.0[offset..offset + 8]);
        u64::from_le_bytes(b)
    }

    /// Writes 8 bytes at `offset`.
    pub fn write_u64(&mut self, offset: usize, value: u64) {
        self.0[offset..offset + 8].copy_from_slice(&value.to_le_bytes());
    }

    /// Writes 4 bytes at `offset`.
    pub fn write_u32(&mut self, offset: usize, value: u32) {
        self.0[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
    }

    /// Writes one byte at `offset`.
    pub fn write_u8(&mut self, offset: usize, value: u8) {
        self.0[offset] = value;
    }

    /// Writes a segment register at `offset` (ES, CS, ..., TR).
    pub fn set_segment(&mut self, offset: usize, s: Segment) {
        self.0[offset..offset + 2].copy_from_slice(&s.selector.to_le_bytes());
        self.0[offset + 2..offset + 4].copy_from_slice(&s.attrib.to_le_bytes());
        self.write_u32(offset + 4, s.limit);
        self.write_u64(offset + 8, s.base);
    }

    /// The physical address of this VMCB (the image is identity-mapped).
    pub fn phys(&self) -> u64 {
        self as *const Vmcb as u64
    }
}

/// The guest GPRs VMRUN does not load from the VMCB (RAX and RSP live there). The layout is the
/// one `run` indexes; do not reorder.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
#[allow(missing_docs)]
pub struct Gprs {
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rbp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
}
const _: () = assert!(core::mem::size_of::<Gprs>() == 14 * 8);

/// Runs the guest of `vmcb` until its next #VMEXIT: the TSM's segment state is kept by VMSAVE
/// and brought back by VMLOAD around the world's own, GIF is cleared across the switch (no NMI or
/// SMI sees half a world), and every GPR the VMCB does not hold is swapped with `gprs`.
///
/// # Safety
/// SVM is enabled ([`enable`]). `vmcb` is a consistent VMCB whose intercepts include VMRUN, whose
/// nested page table maps nothing of the TSM's memory (the guest must not be able to write
/// it), and whose guest state the caller set up.
pub unsafe fn run(vmcb: &mut Vmcb, gprs: &mut Gprs) {
    let vmcb_pa = vmcb.phys();
    let host_pa = HOST_VMSAVE.0.get() as u64;
    // SAFETY: the caller's contract; the asm saves and restores every callee-saved register
    // the guest clobbers (rbx and rbp by hand, the rest as clobbers), keeps RSP (VMRUN restores
    // it from the host save area) and writes only `gprs` and the two VMCB-sized pages.
    unsafe {
        asm!(
            "push rbx",
            "push rbp",
            "mov rax, cr0",
            "push rax",                   // the TSM's CR0, written again right after the exit
            "push rdi",                   // &mut Gprs, found again after the exit
            "push rsi",                   // the host VMSAVE page
            "clgi",
            "mov rax, rsi",
            "vmsave rax",                 // the TSM's FS/GS/TR/LDTR and syscall MSRs
            "mov rax, rdx",
            "vmload rax",                 // the world's
            "mov rbx, [rdi + 0x00]",
            "mov rcx, [rdi + 0x08]",
            "mov rdx, [rdi + 0x10]",
            "mov rsi, [rdi + 0x18]",
            "mov rbp, [rdi + 0x28]",
            "mov r8,  [rdi + 0x30]",
            "mov r9,  [rdi + 0x38]",
            "mov r10, [rdi + 0x40]",
            "mov r11, [rdi + 0x48]",
            "mov r12, [rdi + 0x50]",
            "mov r13, [rdi + 0x58]",
            "mov r14, [rdi + 0x60]",
            "mov r15, [rdi + 0x68]",
            "mov rdi, [rdi + 0x20]",
            // RFLAGS.IF set for VMRUN to save as the host's (GIF is 0: nothing is taken here),
            // so that with V_INTR_MASKING a physical interrupt in the guest is an INTR exit
            // (the TD world's preemption timer); cleared again before STGI below.
            "sti",
            "vmrun rax",
            "cli",
            // QEMU's #VMEXIT loads the host's CR0 before its CR4: from a guest with paging off,
            // EFER.LME set and CR4.PAE clear (TDX's initial state, or anything a guest sets), the
            // CR0 load is dropped and the TSM would run on with paging off. Writing CR0 again,
            // now that CR4 is the TSM's, repairs it; on hardware it is the value already there.
            "push rax",
            "mov rax, [rsp + 24]",
            "mov cr0, rax",
            "pop rax",
            "vmsave rax",                 // the world's segment state back into its VMCB
            "push rdi",                   // guest RDI
            "mov rdi, [rsp + 16]",        // &mut Gprs
            "mov [rdi + 0x00], rbx",
            "mov [rdi + 0x08], rcx",
            "mov [rdi + 0x10], rdx",
            "mov [rdi + 0x18], rsi",
            "mov [rdi + 0x28], rbp",
            "mov [rdi + 0x30], r8",
            "mov [rdi + 0x38], r9",
            "mov [rdi + 0x40], r10",
            "mov [rdi + 0x48], r11",
            "mov [rdi + 0x50], r12",
            "mov [rdi + 0x58], r13",
            "mov [rdi + 0x60], r14",
            "mov [rdi + 0x68], r15",
            "pop rax",
            "mov [rdi + 0x20], rax",
            "pop rax",                    // the host VMSAVE page
            "vmload rax",
            "stgi",
            "pop rdi",
            "pop rbp",                    // the saved CR0
            "pop rbp",
            "pop rbx",
            in("rdi") gprs as *mut Gprs,
            in("rsi") host_pa,
            in("rdx") vmcb_pa,
            out("rax") _, out("rcx") _, lateout("rdx") _, lateout("rsi") _,
            out("r8") _, out("r9") _, out("r10") _, out("r11") _,
            out("r12") _, out("r13") _, out("r14") _, out("r15") _,
        );
    }
}

/// One page-table frame (the nested tables use the ordinary long-mode format, APM vol. 2 §15.25).
#[derive(Debug)]
#[repr(C, align(4096))]
pub struct PageTable(pub [u64; 512]);

/// Frames for nested page tables, in the TSM's own memory (the image's .bss), so no world can
/// reach them. Sized for the host world: a root, a PDPT, four page directories and 4K tables for
/// the 2 MiB regions whose pages change owner one by one (the TDMR's, the image's edges).
pub const NPT_TABLES: usize = 160;

struct NptPool(UnsafeCell<[PageTable; NPT_TABLES]>);
// SAFETY: handed out once (`TAKEN`), on the one CPU.
unsafe impl Sync for NptPool {}
static NPT_POOL: NptPool = NptPool(UnsafeCell::new([const { PageTable([0; 512]) }; NPT_TABLES]));
static NPT_TAKEN: AtomicBool = AtomicBool::new(false);

/// The nested-page-table frames, once; `None` after the first call.
pub fn take_npt_pool() -> Option<&'static mut [PageTable; NPT_TABLES]> {
    if NPT_TAKEN.swap(true, Ordering::SeqCst) {
        return None;
    }
    // SAFETY: the flag makes this the only reference ever created to the pool; the image is
    // identity-mapped, so the tables' addresses are their physical addresses.
    Some(unsafe { &mut *NPT_POOL.0.get() })
}

/// VMCBs for the worlds: the host world and one per TD vCPU slot (`world::td::VCPU_SLOTS`).
pub const VMCBS: usize = 6;

/// Nested-table frames of each TD's derived table (`world::td`): a cache of the S-EPT, reset
/// when it runs out, so the size bounds only how much a TD touches between two resets.
pub const TD_NPT_TABLES: usize = 48;
/// TDs whose derived tables the TSM keeps at once.
pub const TD_NPT_SLOTS: usize = 2;

struct TdNptPool(UnsafeCell<[[PageTable; TD_NPT_TABLES]; TD_NPT_SLOTS]>);
// SAFETY: handed out once (`TD_NPT_TAKEN`), on the one CPU.
unsafe impl Sync for TdNptPool {}
static TD_NPT_POOL: TdNptPool =
    TdNptPool(UnsafeCell::new([const { [const { PageTable([0; 512]) }; TD_NPT_TABLES] }; TD_NPT_SLOTS]));
static TD_NPT_TAKEN: AtomicBool = AtomicBool::new(false);

/// The TDs' nested-table frames, once; `None` after the first call.
pub fn take_td_npt_pool() -> Option<&'static mut [[PageTable; TD_NPT_TABLES]; TD_NPT_SLOTS]> {
    if TD_NPT_TAKEN.swap(true, Ordering::SeqCst) {
        return None;
    }
    // SAFETY: the flag makes this the only reference ever created to the pool; the image is
    // identity-mapped, so the tables' addresses are their physical addresses.
    Some(unsafe { &mut *TD_NPT_POOL.0.get() })
}

struct VmcbPool(UnsafeCell<[Vmcb; VMCBS]>);
// SAFETY: each VMCB is handed out once (`VMCB_NEXT`), on the one CPU.
unsafe impl Sync for VmcbPool {}
static VMCB_POOL: VmcbPool = VmcbPool(UnsafeCell::new([const { Vmcb::zeroed() }; VMCBS]));
static VMCB_NEXT: AtomicUsize = AtomicUsize::new(0);

/// A fresh VMCB in the TSM's memory, or `None` once all are handed out.
pub fn take_vmcb() -> Option<&'static mut Vmcb> {
    let i = VMCB_NEXT.fetch_add(1, Ordering::SeqCst);
    if i >= VMCBS {
        return None;
    }
    // SAFETY: the counter hands each index out once, so this is the only reference to slot `i`.
    Some(unsafe { &mut (*VMCB_POOL.0.get())[i] })
}

struct Iopm(UnsafeCell<[u8; 12288]>);
// SAFETY: written once by `iopm_intercept_all` before any TD runs; then only the CPU reads it.
unsafe impl Sync for Iopm {}
#[repr(C, align(4096))]
struct AlignedIopm(Iopm);
static IOPM: AlignedIopm = AlignedIopm(Iopm(UnsafeCell::new([0; 12288])));

/// The I/O permission map that intercepts every port (APM vol. 2 §15.10.1), in the TSM's
/// memory: a TD touches no port; each access becomes a #VE.
pub fn iopm_intercept_all() -> u64 {
    let map = IOPM.0 .0.get();
    // SAFETY: one CPU; no world runs while the map is filled (every caller builds a world).
    unsafe { (*map).fill(0xFF) };
    map as u64
}

static HOST_IOPM: AlignedIopm = AlignedIopm(Iopm(UnsafeCell::new([0; 12288])));

/// The host world's I/O permission map (APM vol. 2 §15.10.1), in the TSM's memory: a bit set
/// for every port of `kept` (`(first, last)` ranges), clear for the rest, which the host
/// drives itself.
pub fn iopm_host(kept: impl IntoIterator<Item = (u16, u16)>) -> u64 {
    let map = HOST_IOPM.0 .0.get();
    // SAFETY: one CPU; no world runs while the map is filled (the host world is being built),
    // and this is the only reference formed to it.
    let bits = unsafe { &mut *map };
    bits.fill(0);
    for (first, last) in kept {
        for port in first..=last {
            bits[usize::from(port / 8)] |= 1 << (port % 8);
        }
    }
    map as u64
}

struct Msrpm(UnsafeCell<[u8; 8192]>);
// SAFETY: written once by `msrpm_intercept_all` before any world runs; then only the CPU reads it.
unsafe impl Sync for Msrpm {}
#[repr(C, align(4096))]
struct AlignedMsrpm(Msrpm);
static MSRPM: AlignedMsrpm = AlignedMsrpm(Msrpm(UnsafeCell::new([0; 8192])));

/// The MSR permission map that intercepts every RDMSR and WRMSR (APM vol. 2 §15.11), in the
/// TSM's memory: a world touches no real MSR (VM_HSAVE_PA, EFER, the APIC base) behind the TSM.
pub fn msrpm_intercept_all() -> u64 {
    let map = MSRPM.0 .0.get();
    // SAFETY: one CPU; no world runs while the map is filled (every caller builds a world).
    unsafe { (*map).fill(0xFF) };
    map as u64
}
