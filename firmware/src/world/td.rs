//! The TD world: TDH.VP.ENTER runs the vCPU as an SVM guest until an exit that goes to the
//! host, and returns that exit in TDX's exit registers (`TdExit::host_regs`), nothing else of
//! the TD.
//!
//! - **State.** Each TD vCPU has its own VMCB and ASID, kept across entries. The first entry
//!   starts from TDX's initial state, which TDVF expects (`../shared/reference/worlds.md` §4):
//!   RIP 0xFFFFFFF0, 32-bit flat protected mode, paging off, EFER.LME = 1 (and SVME, which
//!   VMRUN requires of every guest), EBX = GPAW, ESI = the vCPU index.
//! - **Memory.** The nested table is derived from the S-EPT, one per TD, shared by its vCPUs:
//!   only MAPPED (write-back) and MMIO_MAPPED (uncached) leaves, 4K or 2M, filled on nested
//!   page faults from `Tsm::private_leaf` and dropped whenever the S-EPT loses a translation
//!   (`Platform::sept_changed`: BLOCK, REMOVE, DEMOTE, PROMOTE, MMIO.BLOCK, and everything at
//!   TRACK). A PENDING page is a #VE; a GPA with no granting leaf exits to the host as TDX's
//!   EPT violation. The table is a cache: when its frames run out it is reset and refilled.
//! - **TDCALL** (`66 0f 01 cc`) is a #UD intercept: the 4 bytes at RIP are read through the TD's
//!   own page tables and S-EPT (MAPPED leaves only), then `Tsm::guest_call` runs it. SEAMCALL,
//!   VMMCALL and every SVM instruction in a TD are #UD, as SEAMCALL is in a TDX TD.
//! - **#VE** (vector 20): CPUID leaves the TSM does not answer, HLT, port I/O, MSRs that are the
//!   host's and accesses to PENDING pages, with the information TDG.VP.VEINFO.GET returns.
//!   CPUID to leaf 0x21 and 0x8000_0008 is answered at once, as a TDX module presents it
//!   (`tsm::cpuid`), because TDVF asks before it has an IDT and on every timer tick.
//! - **MSRs**: the virtual x2APIC (TPR, PPR, EOI, ISR, TMR, IRR, SELF_IPI), IA32_APIC_BASE and
//!   the MTRRs are the TSM's (`Tsm::vcpu_msr`), EFER, PAT, the segment bases and the
//!   SYSCALL/SYSENTER MSRs the VMCB's; no access reaches a real MSR.
//! - **Interrupts**: vectors the host posted (SEAMLESS.VP.POST) are injected when the vCPU can
//!   take them (RFLAGS.IF, no interrupt shadow), else at the first exit after which it can;
//!   an event whose delivery an exit interrupted (EXITINTINFO) is delivered again. No physical
//!   interrupt reaches a TD: the machine's 8259 is masked (INTR is not intercepted).
//!
//! A TD runs in this world when its image covers the reset vector (a MAPPED page at GPA
//! 0xFFFFF000 at its first entry). The demo's guest, still code in the firmware image, has no
//! such page: its VP.ENTER returns at once and it calls the guest ABI directly, until the guest
//! becomes its own binary.

use tsm::addr::Pfn;
use tsm::sept::SeptState;
use tsm::td::VeInfo;
use tsm::vcpu::{MsrAccess, MsrResult, NoLeaf};
use tsm::{Regs, TdExit, Tsm};
use x86::cpuid::native_cpuid::cpuid_count;

use super::npt::{MemType, Npt};
use super::{Exit, World, WorldError, PAGE, VECTOR_UD};
use crate::arch::svm::{self, vmcb, Segment, TD_NPT_SLOTS};
use crate::drivers::phys::Frames;
use crate::platform::FirmwarePlatform;

/// TD vCPUs the TSM runs at once (each keeps a VMCB).
pub const VCPU_SLOTS: usize = 5;
/// The longest a TD vCPU runs in one TDH.VP.ENTER before the TSM's preemption timer gives the
/// host its turn (TDX: the host's own timer interrupt exits the TD).
pub const TIME_SLICE_NS: u64 = 10_000_000;
/// The page that holds the reset vector (0xFFFFFFF0).
const RESET_PAGE: u64 = 0xFFFF_F000;
const RESET_VECTOR: u64 = 0xFFFF_FFF0;
const TDCALL: [u8; 4] = [0x66, 0x0f, 0x01, 0xcc];
const VECTOR_DF: u8 = 8;
/// Virtualization exception.
pub const VECTOR_VE: u8 = 20;

/// VMX basic exit reasons a #VE reports (Intel SDM vol. 3 appendix C).
pub mod reason {
    /// CPUID.
    pub const CPUID: u32 = 10;
    /// HLT.
    pub const HLT: u32 = 12;
    /// IN, OUT, INS, OUTS.
    pub const IO: u32 = 30;
    /// RDMSR.
    pub const RDMSR: u32 = 31;
    /// WRMSR.
    pub const WRMSR: u32 = 32;
    /// EPT violation.
    pub const EPT_VIOLATION: u32 = 48;
}

/// One TD's derived nested table.
#[derive(Debug)]
struct TdTable {
    tdr: Option<Pfn>,
    npt: Npt,
    /// The translations of the shared half it holds, taken from the host's table, which the
    /// host may change between entries: dropped at the next TDH.VP.ENTER, page by page (the
    /// whole table if there were more than the list holds).
    shared: [u64; SHARED_SLOTS],
    shared_count: usize,
}

/// Shared pages a derived table remembers by address between entries (edk2's bounce buffers:
/// a DMA of 128 KiB is 32 pages); past that the whole table is dropped.
const SHARED_SLOTS: usize = 64;

/// One TD vCPU's world.
#[derive(Debug)]
struct TdVcpu {
    tdvpr: u64,
    tdr: Pfn,
    world: World,
    /// The TD left by TDG.VP.VMCALL exposing these registers (GHCI's mask): the next entry
    /// hands it the host's values of exactly those.
    vmcall_pending: Option<u64>,
    /// The shared bit (GPA bit GPAW-1).
    shared: u64,
    /// The root of the host's table for the shared half, as of this entry.
    shared_root: Option<Pfn>,
}

/// What the TD worlds did, by kind: the figures of a run.
#[derive(Clone, Copy, Debug, Default)]
pub struct TdCounts {
    /// #VMEXITs by cause: nested page faults here, then TDCALLs (#UD), CPUID, MSR, I/O, HLT,
    /// anything else.
    pub npf: u64,
    /// TDCALLs (#UD intercepts that were TDCALL).
    pub tdcall: u64,
    /// CPUID exits (answered by the TSM or turned into #VE).
    pub cpuid: u64,
    /// RDMSR/WRMSR exits.
    pub msr: u64,
    /// Port I/O exits (each a #VE).
    pub io: u64,
    /// HLT exits (each a #VE).
    pub hlt: u64,
    /// Times a pending interrupt waited for a later exit (the vCPU had interrupts off, was in
    /// an interrupt shadow, or an event was being delivered).
    pub deferred: u64,
    /// Other exits.
    pub other: u64,
    /// #VEs by exit reason: CPUID, HLT, I/O, RDMSR/WRMSR, EPT violation.
    pub ve: [u64; 5],
    /// Interrupts injected.
    pub interrupts: u64,
    /// Events re-delivered after an exit interrupted their delivery.
    pub redelivered: u64,
    /// MSR accesses the TSM answered (virtual APIC, APIC base, MTRRs, context).
    pub msr_in_tsm: u64,
    /// Time slices the preemption timer ended (external-interrupt exits to the host).
    pub preempted: u64,
    /// CPUID leaves the TSM answered.
    pub cpuid_in_tsm: u64,
    /// TDCALLs by leaf: [`TDCALL_LEAVES`], then any other.
    pub tdcall_leaf: [u64; TDCALL_LEAVES.len() + 1],
}

/// The TDCALL leaves counted apart (`TdCounts::tdcall_leaf`): what a TDVF calls, and the RTMR
/// extension a measuring build would.
pub const TDCALL_LEAVES: [(u64, &str); 5] = [
    (tsm::abi::guest::leaf::VP_VMCALL, "vmcall"),
    (tsm::abi::guest::leaf::VP_INFO, "vp_info"),
    (tsm::abi::guest::leaf::VP_VEINFO_GET, "veinfo_get"),
    (tsm::abi::guest::leaf::MEM_PAGE_ACCEPT, "accept"),
    (tsm::abi::guest::leaf::MR_RTMR_EXTEND, "rtmr"),
];

impl TdCounts {
    /// What happened since `before` (a snapshot of the same counts): each count's difference.
    pub fn since(&self, before: &TdCounts) -> TdCounts {
        let d = |a: u64, b: u64| a.saturating_sub(b);
        TdCounts {
            npf: d(self.npf, before.npf),
            tdcall: d(self.tdcall, before.tdcall),
            cpuid: d(self.cpuid, before.cpuid),
            msr: d(self.msr, before.msr),
            io: d(self.io, before.io),
            hlt: d(self.hlt, before.hlt),
            deferred: d(self.deferred, before.deferred),
            other: d(self.other, before.other),
            ve: core::array::from_fn(|i| d(self.ve[i], before.ve[i])),
            interrupts: d(self.interrupts, before.interrupts),
            redelivered: d(self.redelivered, before.redelivered),
            msr_in_tsm: d(self.msr_in_tsm, before.msr_in_tsm),
            preempted: d(self.preempted, before.preempted),
            cpuid_in_tsm: d(self.cpuid_in_tsm, before.cpuid_in_tsm),
            tdcall_leaf: core::array::from_fn(|i| d(self.tdcall_leaf[i], before.tdcall_leaf[i])),
        }
    }

    /// The #VMEXITs counted by cause; equal to the world switches over the same span (every
    /// switch is one exit, counted once: nested page fault, TDCALL, CPUID, MSR, I/O, HLT, the
    /// preemption timer, or other, a #UD that was no TDCALL among them).
    pub fn exits(&self) -> u64 {
        self.npf + self.tdcall + self.cpuid + self.msr + self.io + self.hlt + self.preempted + self.other
    }
}

/// The TD worlds: the derived tables and the vCPU contexts. Lives in the platform, which
/// forwards `sept_changed` to [`TdWorlds::sept_changed`].
#[derive(Debug)]
pub struct TdWorlds {
    tables: [TdTable; TD_NPT_SLOTS],
    vcpus: [Option<TdVcpu>; VCPU_SLOTS],
    /// #VMEXITs of TD vCPUs so far: the world switches of the TD worlds.
    pub switches: u64,
    /// #VEs delivered so far.
    pub ves: u64,
    /// Times a derived table ran out of frames and was reset.
    pub resets: u64,
    /// Exits, #VEs and interrupts by kind.
    pub counts: TdCounts,
    /// The local APIC's timer, the preemption timer (measured at the first entry).
    lapic: Option<Option<crate::drivers::lapic::Lapic>>,
    /// VMCBs taken for TD vCPUs.
    created: u32,
}

impl TdWorlds {
    /// The TD worlds over the TSM's pool of TD table frames (taken once).
    ///
    /// # Errors
    /// [`WorldError::OutOfTsmMemory`] on a second call.
    pub fn new() -> Result<TdWorlds, WorldError> {
        let pool = svm::take_td_npt_pool().ok_or(WorldError::OutOfTsmMemory)?;
        let tables = pool.each_mut().map(|t| TdTable {
            tdr: None,
            npt: Npt::new(t),
            shared: [0; SHARED_SLOTS],
            shared_count: 0,
        });
        svm::iopm_intercept_all();
        // The TSM takes no interrupt but its own preemption timer's (INTR exits a TD, and the
        // TSM accepts the timer's at its gate): the machine's PIT, which SeaBIOS leaves unmasked
        // on the 8259 at vector 8, must never fire.
        crate::drivers::legacy::mask_8259();
        Ok(TdWorlds {
            tables,
            vcpus: [const { None }; VCPU_SLOTS],
            switches: 0,
            ves: 0,
            resets: 0,
            counts: TdCounts::default(),
            lapic: None,
            created: 0,
        })
    }

    /// The S-EPT of TD `tdr` lost the translations of `range`: drop them from its derived
    /// table. `None` is TDH.MEM.TRACK: every change that takes access away (BLOCK, and REMOVE,
    /// DEMOTE, PROMOTE only after one) already named its range, so the derived table holds
    /// nothing the S-EPT stopped granting; TRACK's new epoch is a TLB flush at the next VMRUN.
    /// **Changed** from dropping the whole table at TRACK: with fw_cfg's DMA every MapGPA
    /// tracks, and each TRACK made the TD refault its working set (160,000 nested page faults
    /// per OVMF boot against 4,000).
    pub fn sept_changed(&mut self, tdr: Pfn, range: Option<(u64, u64)>) {
        for t in self.tables.iter_mut().filter(|t| t.tdr == Some(tdr)) {
            match range {
                Some((start, bytes)) => t.npt.zap(start, start.saturating_add(bytes)),
                None => t.npt.flush = true,
            }
        }
    }

    /// Frame `pfn` went back to the host (PAMT entry free): if it was a TD's TDR, its derived
    /// table goes (a later TD with the same TDR starts empty); if it was a TDVPR, its vCPU's
    /// slot is free for another (the VMCB stays, re-initialised at that vCPU's first entry).
    pub fn forget(&mut self, pfn: Pfn) {
        for t in self.tables.iter_mut().filter(|t| t.tdr == Some(pfn)) {
            t.tdr = None;
            t.npt.reset();
        }
        for v in self.vcpus.iter_mut().flatten().filter(|v| v.tdvpr >> 12 == pfn.raw()) {
            v.tdvpr = 0;
        }
    }

    fn table(&mut self, tdr: Pfn) -> Option<&mut Npt> {
        self.tables.iter_mut().find(|t| t.tdr == Some(tdr)).map(|t| &mut t.npt)
    }
}

/// Runs the vCPU whose TDVPR is `tdvpr` after a successful TDH.VP.ENTER (`host_in`: the host's
/// registers of that call) until an exit to the host, and returns the registers VP.ENTER hands
/// back. `None` if the vCPU does not run in a TD world (its TD has no reset-vector page, or
/// no TD world exists): then VP.ENTER's own return stands.
pub fn enter(tsm: &mut Tsm<FirmwarePlatform>, tdvpr: u64, host_in: &Regs) -> Option<Regs> {
    let vcpu = tsm.running_vcpu(tdvpr)?;
    let mut v = match take_vcpu(tsm, tdvpr, vcpu.tdr) {
        Some(v) => v,
        None => {
            let code = tsm.private_leaf(tdvpr, RESET_PAGE).is_ok_and(|l| l.state == SeptState::Mapped);
            if !code {
                return None;
            }
            // A vCPU entered before without a world (more vCPUs than slots) has lost its
            // state: it cannot resume.
            match new_vcpu(tsm, tdvpr, vcpu.tdr).ok().filter(|_| vcpu.entries == 1) {
                Some(v) => v,
                None => {
                    defmt::error!("TD world: no VMCB or table for the vCPU");
                    tsm.vcpu_exit(tdvpr);
                    return Some(TdExit::TripleFault.host_regs());
                }
            }
        }
    };
    (v.shared, v.shared_root) = (1 << (vcpu.gpaw - 1), vcpu.shared_root);
    if let Some(t) = tsm.platform_mut().td.as_mut().and_then(|w| w.tables.iter_mut().find(|t| t.tdr == Some(vcpu.tdr)))
    {
        let n = core::mem::take(&mut t.shared_count);
        if n > SHARED_SLOTS {
            t.npt.reset();
        } else {
            for &page in &t.shared[..n] {
                t.npt.zap(page, page + PAGE);
            }
        }
    }
    if vcpu.entries == 1 {
        initial_state(&mut v.world, vcpu.gpaw, vcpu.index);
        v.vmcall_pending = None;
    } else if let Some(mask) = v.vmcall_pending.take() {
        let answered = TdExit::vmcall_answered(mask, host_in, &v.world.abi_regs());
        v.world.set_abi_regs(&answered);
    }
    arm_preemption(tsm);
    let exit = run(tsm, &mut v);
    disarm_preemption(tsm);
    let regs = exit.host_regs();
    if let Some(w) = tsm.platform_mut().td.as_mut() {
        if let Some(slot) = w.vcpus.iter_mut().find(|s| s.is_none()) {
            *slot = Some(v);
        }
    }
    Some(regs)
}

/// Arms the preemption timer for one time slice (the timer is measured at the first entry; a
/// machine without a local APIC timer runs TDs unpreempted, which the run says).
fn arm_preemption(tsm: &mut Tsm<FirmwarePlatform>) {
    use tsm::platform::Clock;
    let measured = tsm.platform().td.as_ref().is_some_and(|w| w.lapic.is_some());
    if !measured {
        let lapic = {
            let p = tsm.platform();
            crate::drivers::lapic::Lapic::open(&|| p.now_ns())
        };
        match &lapic {
            Some(l) => defmt::info!(
                "TD world: preemption timer {=u64} ticks/ms, slice {=u64} us",
                l.ticks_per_ms(),
                TIME_SLICE_NS / 1000
            ),
            None => defmt::warn!("TD world: no local APIC timer: TDs run unpreempted"),
        }
        if let Some(w) = tsm.platform_mut().td.as_mut() {
            w.lapic = Some(lapic);
        }
    }
    if let Some(l) = preemption_timer(tsm) {
        l.arm(TIME_SLICE_NS);
    }
}

fn preemption_timer(tsm: &Tsm<FirmwarePlatform>) -> Option<&crate::drivers::lapic::Lapic> {
    tsm.platform().td.as_ref()?.lapic.as_ref()?.as_ref()
}

/// Stops the preemption timer and takes its interrupt if it fired (an INTR exit leaves it
/// pending at the APIC): nothing is pending when the host world runs again.
fn disarm_preemption(tsm: &mut Tsm<FirmwarePlatform>) {
    if let Some(l) = preemption_timer(tsm) {
        l.disarm();
    }
    crate::arch::accept_pending_interrupts();
}

/// The vCPU's world out of its slot (put back by [`enter`]).
fn take_vcpu(tsm: &mut Tsm<FirmwarePlatform>, tdvpr: u64, tdr: Pfn) -> Option<TdVcpu> {
    let w = tsm.platform_mut().td.as_mut()?;
    let found = w.vcpus.iter().position(|s| s.as_ref().is_some_and(|v| v.tdvpr == tdvpr && v.tdr == tdr))?;
    w.vcpus[found].take()
}

/// A world for a vCPU entered for the first time: a freed slot's VMCB (or a fresh one), and its
/// TD's derived table (a free table slot if the TD has none yet).
fn new_vcpu(tsm: &mut Tsm<FirmwarePlatform>, tdvpr: u64, tdr: Pfn) -> Result<TdVcpu, WorldError> {
    let w = tsm.platform_mut().td.as_mut().ok_or(WorldError::OutOfTsmMemory)?;
    if w.table(tdr).is_none() {
        let free = w.tables.iter_mut().find(|t| t.tdr.is_none()).ok_or(WorldError::OutOfTsmMemory)?;
        free.tdr = Some(tdr);
        free.npt.reset();
    }
    let reuse = w.vcpus.iter_mut().find(|s| s.as_ref().is_some_and(|v| v.tdvpr == 0)).and_then(Option::take);
    // A VMCB keeps its ASID for life (the host world has 1): two vCPUs never share one.
    let world = match reuse {
        Some(v) => v.world,
        None => {
            if w.vcpus.iter().all(Option::is_some) {
                return Err(WorldError::OutOfTsmMemory);
            }
            let mut world = World::new()?;
            w.created += 1;
            world.vmcb().write_u32(vmcb::GUEST_ASID, 1 + w.created);
            world
        }
    };
    Ok(TdVcpu { tdvpr, tdr, world, vmcall_pending: None, shared: 0, shared_root: None })
}

/// TDX's initial vCPU state (TDVF's entry contract), and the intercepts of a TD.
fn initial_state(world: &mut World, gpaw: u8, index: usize) {
    world.gprs = svm::Gprs::default();
    let asid = world.vmcb().read_u64(vmcb::GUEST_ASID) as u32;
    let v = world.vmcb();
    v.clear();
    v.write_u32(vmcb::INTERCEPT_EXCEPTIONS, 1 << VECTOR_UD);
    v.write_u32(
        vmcb::INTERCEPT_MISC1,
        vmcb::MISC1_INTR
            | vmcb::MISC1_CPUID
            | vmcb::MISC1_HLT
            | vmcb::MISC1_IOIO
            | vmcb::MISC1_MSR
            | vmcb::MISC1_SHUTDOWN
            | vmcb::MISC1_INVLPGA,
    );
    v.write_u32(
        vmcb::INTERCEPT_MISC2,
        vmcb::MISC2_VMRUN
            | vmcb::MISC2_VMMCALL
            | vmcb::MISC2_VMLOAD
            | vmcb::MISC2_VMSAVE
            | vmcb::MISC2_STGI
            | vmcb::MISC2_CLGI
            | vmcb::MISC2_SKINIT
            | vmcb::MISC2_XSETBV,
    );
    v.write_u64(vmcb::IOPM_BASE, svm::iopm_intercept_all());
    v.write_u64(vmcb::MSRPM_BASE, svm::msrpm_intercept_all());
    v.write_u32(vmcb::GUEST_ASID, asid);
    v.write_u8(vmcb::TLB_CONTROL, vmcb::TLB_FLUSH_ALL);
    v.write_u64(vmcb::NP_ENABLE, 1);
    // Physical interrupts follow the TSM's IF as VMRUN saved it (set), whatever the TD's IF:
    // the preemption timer exits even a TD spinning with interrupts off. The TD's own IF only
    // gates the virtual interrupts the TSM injects.
    v.write_u64(vmcb::INT_CTL, vmcb::V_INTR_MASKING);
    let code32 = Segment { selector: 0x08, attrib: 0x0C9B, limit: 0xFFFF_FFFF, base: 0 };
    let data = Segment { selector: 0x10, attrib: 0x0C93, limit: 0xFFFF_FFFF, base: 0 };
    v.set_segment(vmcb::CS, code32);
    for seg in [vmcb::ES, vmcb::SS, vmcb::DS, vmcb::FS, vmcb::GS] {
        v.set_segment(seg, data);
    }
    v.set_segment(vmcb::GDTR, Segment { selector: 0, attrib: 0, limit: 0xFFFF, base: 0 });
    v.set_segment(vmcb::IDTR, Segment { selector: 0, attrib: 0, limit: 0xFFFF, base: 0 });
    v.set_segment(vmcb::TR, Segment { selector: 0, attrib: 0x008B, limit: 0xFFFF, base: 0 });
    v.set_segment(vmcb::LDTR, Segment { selector: 0, attrib: 0x0082, limit: 0xFFFF, base: 0 });
    v.write_u64(vmcb::EFER, (1 << 8) | (1 << 12)); // LME (TDX sets it), SVME (VMRUN needs it)
    v.write_u64(vmcb::CR0, 0x31); // PE, ET, NE
    v.write_u64(vmcb::CR4, 0x40); // MCE
    v.write_u64(vmcb::DR6, 0xFFFF_0FF0);
    v.write_u64(vmcb::DR7, 0x400);
    v.write_u64(vmcb::G_PAT, 0x0007_0406_0007_0406);
    v.write_u64(vmcb::RFLAGS, 0x2);
    v.write_u64(vmcb::RIP, RESET_VECTOR);
    world.gprs.rbx = u64::from(gpaw);
    world.gprs.rsi = index as u64;
}

/// Runs the vCPU until an exit that goes to the host.
fn run(tsm: &mut Tsm<FirmwarePlatform>, v: &mut TdVcpu) -> TdExit {
    let tdvpr = v.tdvpr;
    loop {
        let Some(w) = tsm.platform_mut().td.as_mut() else { return exit_now(tsm, tdvpr, TdExit::TripleFault) };
        let Some(npt) = w.table(v.tdr) else { return exit_now(tsm, tdvpr, TdExit::TripleFault) };
        let (root, flush) = (npt.root(), core::mem::take(&mut npt.flush));
        w.switches += 1;
        v.world.vmcb().write_u64(vmcb::N_CR3, root);
        if flush {
            v.world.flush_tlb();
        }
        offer_interrupt(tsm, v);
        let exit = v.world.run();
        // An event whose delivery the exit interrupted (a nested page fault on the IDT or the
        // stack) is delivered again once the exit is handled.
        let lost = v.world.interrupted_event();
        count(tsm, &exit);
        let done = match exit {
            Exit::NestedPageFault { gpa, error } => nested_fault(tsm, v, gpa, error),
            Exit::Exception { vector: VECTOR_UD, .. } => {
                if fetch4(tsm, v) == Some(TDCALL) {
                    count_tdcall(tsm, v.world.rax());
                    tdcall(tsm, v)
                } else {
                    if let Some(w) = tsm.platform_mut().td.as_mut() {
                        w.counts.other += 1;
                    }
                    // SEAMCALL, VMMCALL or anything else undefined: #UD, as in a TDX TD.
                    v.world.inject_exception(VECTOR_UD);
                    None
                }
            }
            Exit::Interrupt => {
                // The preemption timer: the slice is over, the host's turn.
                if let Some(w) = tsm.platform_mut().td.as_mut() {
                    w.counts.preempted += 1;
                }
                Some(exit_now(tsm, tdvpr, TdExit::ExternalInterrupt))
            }
            Exit::Cpuid => {
                cpuid(tsm, v);
                None
            }
            Exit::Hlt => {
                // HLT with interrupts open and an interrupt pending would not halt: the
                // interrupt is taken at the HLT (it runs again after the handler's IRET). This
                // is also where an interrupt posted while the vCPU was in its #VE handler
                // (interrupts off) gets delivered, since nothing between that handler's IRET
                // and the idle loop's next HLT exits.
                let open = v.world.read(vmcb::RFLAGS) & (1 << 9) != 0;
                if !(open && tsm.pending_interrupt(tdvpr).is_some()) {
                    ve(tsm, v, VeInfo { exit_reason: reason::HLT, instruction_length: 1, ..VeInfo::default() });
                }
                None
            }
            Exit::Io { info1, next_rip } => {
                let len = next_rip.wrapping_sub(v.world.rip()) as u32;
                let info = VeInfo {
                    exit_reason: reason::IO,
                    qualification: io_qualification(info1),
                    instruction_length: len,
                    ..VeInfo::default()
                };
                ve(tsm, v, info);
                None
            }
            Exit::Msr { write } => {
                msr(tsm, v, write);
                None
            }
            Exit::Vmmcall | Exit::SvmInstruction => {
                v.world.inject_exception(VECTOR_UD);
                None
            }
            Exit::Xsetbv => {
                // XCR0 within x87 and SSE (every TD's XFAM here) is carried out; more is
                // dropped, XCR0 unchanged: its state would be registers no world switch saves.
                let value = (v.world.gprs.rdx << 32) | (v.world.rax() & 0xFFFF_FFFF);
                if !crate::arch::world_xsetbv(v.world.gprs.rcx as u32, value) {
                    defmt::info!("TD XSETBV <- {=u64:#x} at RIP {=u64:#x} dropped", value, v.world.rip());
                }
                v.world.skip(3);
                None
            }
            other @ (Exit::Shutdown | Exit::Invalid | Exit::Exception { .. } | Exit::Other(_)) => {
                let code = match other {
                    Exit::Exception { vector, .. } => svm::exit::EXCEPTION_BASE + u64::from(vector),
                    Exit::Shutdown => svm::exit::SHUTDOWN,
                    Exit::Other(c) => c,
                    _ => svm::exit::INVALID,
                };
                defmt::warn!("TD vCPU stopped: exit {=u64:#x} at RIP {=u64:#x}", code, v.world.rip());
                Some(exit_now(tsm, tdvpr, TdExit::TripleFault))
            }
        };
        if let Some(event) = lost {
            if !v.world.event_pending() {
                v.world.reinject(event);
                if let Some(w) = tsm.platform_mut().td.as_mut() {
                    w.counts.redelivered += 1;
                }
            }
        }
        if let Some(exit) = done {
            return exit;
        }
    }
}

fn count(tsm: &mut Tsm<FirmwarePlatform>, exit: &Exit) {
    let Some(w) = tsm.platform_mut().td.as_mut() else { return };
    let c = &mut w.counts;
    match exit {
        Exit::NestedPageFault { .. } => c.npf += 1,
        Exit::Exception { vector: VECTOR_UD, .. } => {}
        Exit::Cpuid => c.cpuid += 1,
        Exit::Msr { .. } => c.msr += 1,
        Exit::Io { .. } => c.io += 1,
        Exit::Hlt => c.hlt += 1,
        Exit::Interrupt => {}
        _ => c.other += 1,
    }
}

fn count_tdcall(tsm: &mut Tsm<FirmwarePlatform>, leaf: u64) {
    if let Some(w) = tsm.platform_mut().td.as_mut() {
        w.counts.tdcall += 1;
        let i = TDCALL_LEAVES.iter().position(|&(l, _)| l == leaf).unwrap_or(TDCALL_LEAVES.len());
        if let Some(n) = w.counts.tdcall_leaf.get_mut(i) {
            *n += 1;
        }
    }
}

/// Injects the interrupt the TSM's virtual APIC has for the vCPU if it can take it now
/// (RFLAGS.IF set, no interrupt shadow, no other event to deliver); otherwise it waits for the
/// next exit, where this runs again. **Not** SVM's interrupt window (V_IRQ with the VINTR
/// intercept): QEMU 10.0's TCG asserts (`tcg_handle_interrupt: bql_locked()`) when VMRUN finds
/// V_IRQ set. A TD exits at every TDCALL, #VE, MSR and CPUID, and an idle TD halts (a HLT exit
/// with interrupts open), so the wait is short; a TD spinning with interrupts off and no exit is
/// what a physical timer exit would cover (not here yet).
fn offer_interrupt(tsm: &mut Tsm<FirmwarePlatform>, v: &mut TdVcpu) {
    let Some(vector) = tsm.pending_interrupt(v.tdvpr) else { return };
    // The STI shadow holds an interrupt for one instruction; at a HLT exit that instruction is
    // the HLT, which an interrupt wakes anyway (the HLT arm left RIP on it).
    let at_hlt = v.world.read(vmcb::EXIT_CODE) == svm::exit::HLT;
    let shadow = v.world.read(vmcb::INT_STATE) & 1 != 0 && !at_hlt;
    let open = v.world.read(vmcb::RFLAGS) & (1 << 9) != 0 && !shadow;
    if open && !v.world.event_pending() {
        v.world.inject_interrupt(vector);
        tsm.interrupt_taken(v.tdvpr, vector);
        if let Some(w) = tsm.platform_mut().td.as_mut() {
            w.counts.interrupts += 1;
        }
    } else if let Some(w) = tsm.platform_mut().td.as_mut() {
        w.counts.deferred += 1;
    }
}

/// RDMSR/WRMSR (ECX the MSR, EDX:EAX the value): the TSM's virtual APIC, APIC base and MTRRs
/// answer ([`Tsm::vcpu_msr`]); the vCPU's context registers are read and written in its VMCB
/// ([`context_msr`]); everything else is a #VE, and the TD asks the host.
fn msr(tsm: &mut Tsm<FirmwarePlatform>, v: &mut TdVcpu, write: bool) {
    let index = v.world.gprs.rcx as u32;
    let value = (v.world.gprs.rdx << 32) | (v.world.rax() & 0xFFFF_FFFF);
    let access = if write { MsrAccess::Write(value) } else { MsrAccess::Read };
    let done = match tsm.vcpu_msr(v.tdvpr, index, access) {
        MsrResult::Done(read) => Some(read),
        MsrResult::Context => context_msr(&mut v.world, index, access),
        MsrResult::Ve => None,
    };
    match done {
        Some(read) => {
            if !write {
                v.world.set_rax(read & 0xFFFF_FFFF);
                v.world.gprs.rdx = read >> 32;
            }
            v.world.skip(2);
            if let Some(w) = tsm.platform_mut().td.as_mut() {
                w.counts.msr_in_tsm += 1;
            }
        }
        None => {
            let exit_reason = if write { reason::WRMSR } else { reason::RDMSR };
            ve(tsm, v, VeInfo { exit_reason, instruction_length: 2, ..VeInfo::default() });
        }
    }
}

/// EFER bits a TD may change: SCE, LME, NXE. LMA follows the CPU; SVME stays set (VMRUN needs
/// it) and reads as clear.
const EFER_WRITABLE: u64 = 1 | 1 << 8 | 1 << 11;
const EFER_LMA: u64 = 1 << 10;
const EFER_SVME: u64 = 1 << 12;

/// A context MSR in the VMCB (`tsm::msr::CONTEXT`); `None` for a write the register refuses
/// (reserved EFER bits, an invalid PAT type), which becomes a #VE.
fn context_msr(world: &mut World, index: u32, access: MsrAccess) -> Option<u64> {
    let field = match index {
        0xC000_0080 => vmcb::EFER,
        0x277 => vmcb::G_PAT,
        0xC000_0100 => vmcb::FS + 8,
        0xC000_0101 => vmcb::GS + 8,
        0xC000_0102 => vmcb::KERNEL_GS_BASE,
        0xC000_0081 => vmcb::STAR,
        0xC000_0082 => vmcb::LSTAR,
        0xC000_0083 => vmcb::CSTAR,
        0xC000_0084 => vmcb::SFMASK,
        0x174 => vmcb::SYSENTER_CS,
        0x175 => vmcb::SYSENTER_ESP,
        0x176 => vmcb::SYSENTER_EIP,
        _ => return None,
    };
    let current = world.read(field);
    match access {
        MsrAccess::Read if field == vmcb::EFER => Some(current & !EFER_SVME),
        MsrAccess::Read => Some(current),
        MsrAccess::Write(value) if field == vmcb::EFER => {
            if value & !(EFER_WRITABLE | EFER_LMA) != 0 {
                return None;
            }
            world.write(field, (value & EFER_WRITABLE) | (current & EFER_LMA) | EFER_SVME);
            Some(0)
        }
        MsrAccess::Write(value) if field == vmcb::G_PAT => {
            // Each byte a memory type: UC, WC, WT, WP, WB, UC- (0, 1, 4, 5, 6, 7).
            let valid = value.to_le_bytes().iter().all(|&t| matches!(t, 0 | 1 | 4..=7));
            valid.then(|| world.write(field, value)).map(|()| 0)
        }
        MsrAccess::Write(value) => {
            world.write(field, value);
            Some(0)
        }
    }
}

/// An exit the platform decided: the vCPU leaves guest mode.
fn exit_now(tsm: &mut Tsm<FirmwarePlatform>, tdvpr: u64, exit: TdExit) -> TdExit {
    tsm.vcpu_exit(tdvpr);
    exit
}

/// A nested page fault: fill the derived table from a granting S-EPT leaf, deliver #VE for a
/// PENDING page, or exit to the host as an EPT violation.
fn nested_fault(tsm: &mut Tsm<FirmwarePlatform>, v: &mut TdVcpu, gpa: u64, error: u64) -> Option<TdExit> {
    let tdvpr = v.tdvpr;
    let violation = |level: u8, entry: u64| {
        tsm::addr::GuestPhysAddr::new(gpa & !(PAGE - 1))
            .map(|gpa| TdExit::EptViolation { gpa, requested_level: 0, level, entry })
            .unwrap_or(TdExit::TripleFault)
    };
    if gpa & v.shared != 0 {
        return shared_fault(tsm, v, gpa);
    }
    let leaf = match tsm.private_leaf(tdvpr, gpa) {
        Ok(l) => l,
        Err(NoLeaf { level, entry }) => {
            defmt::debug!("TD world: access to {=u64:#x} has no granting leaf: EPT violation", gpa);
            return Some(exit_now(tsm, tdvpr, violation(level, entry)));
        }
    };
    let ty = match leaf.state {
        SeptState::Mapped => MemType::WriteBack,
        SeptState::MmioMapped => MemType::Uncached,
        SeptState::Pending => {
            let qualification = if error & 2 != 0 {
                2
            } else if error & 0x10 != 0 {
                4
            } else {
                1
            };
            let info = VeInfo { exit_reason: reason::EPT_VIOLATION, qualification, gpa, ..VeInfo::default() };
            ve(tsm, v, info);
            return None;
        }
        _ => return Some(exit_now(tsm, tdvpr, violation(leaf.size.level(), leaf.entry))),
    };
    let large = leaf.size.level() == 1;
    let (gpa_base, hpa) = if large || leaf.size.level() == 0 {
        (leaf.gpa.raw(), leaf.frame.addr().raw())
    } else {
        // A 1G leaf: map the 4K page that faulted.
        let off = (gpa & !(PAGE - 1)) - leaf.gpa.raw();
        (gpa & !(PAGE - 1), leaf.frame.addr().raw() + off)
    };
    let w = tsm.platform_mut().td.as_mut()?;
    let mut resets = 0;
    let npt = w.table(v.tdr)?;
    if npt.map_leaf(gpa_base, hpa, large, ty).is_err() {
        npt.reset();
        resets += 1;
        if npt.map_leaf(gpa_base, hpa, large, ty).is_err() {
            return Some(exit_now(tsm, tdvpr, TdExit::TripleFault));
        }
    }
    w.resets += resets;
    None
}

/// A fault in the shared half: the host's table (SEAMLESS.SHARED.EPT.SET), walked with every
/// table and the final frame checked to be in the host's own nested map, so a shared GPA can
/// only ever reach what the host owns, never a TD's private page or the TSM's memory. Anything
/// else exits to the host as an EPT violation.
fn shared_fault(tsm: &mut Tsm<FirmwarePlatform>, v: &mut TdVcpu, gpa: u64) -> Option<TdExit> {
    let page = gpa & !(PAGE - 1);
    let found = v.shared_root.and_then(|root| {
        let p = tsm.platform();
        let (host, frames) = (p.host_npt.as_ref()?, p.frames());
        let owned = |pa: u64| host.maps(pa) && frames.contains(pa & !(PAGE - 1), PAGE);
        let mut table = root.addr().raw();
        for shift in [39u32, 30, 21, 12] {
            let at = table + ((gpa >> shift) & 511) * 8;
            if !owned(at) {
                return None;
            }
            let e = frames.read_u64(at);
            if e & 1 == 0 {
                return None;
            }
            let base = e & 0x000F_FFFF_FFFF_F000;
            if shift == 12 || (shift == 21 && e & 0x80 != 0) {
                let hpa = (base & !((1u64 << shift) - 1)) | (page & ((1u64 << shift) - 1));
                let ty = if frames.contains(hpa, PAGE) { MemType::WriteBack } else { MemType::Uncached };
                return host.maps(hpa).then_some((hpa, ty));
            }
            table = base;
        }
        None
    });
    let tdvpr = v.tdvpr;
    let Some((hpa, ty)) = found else {
        let exit = tsm::addr::GuestPhysAddr::new(page)
            .map(|gpa| TdExit::EptViolation { gpa, requested_level: 0, level: 0, entry: 0 })
            .unwrap_or(TdExit::TripleFault);
        return Some(exit_now(tsm, tdvpr, exit));
    };
    let w = tsm.platform_mut().td.as_mut()?;
    let t = w.tables.iter_mut().find(|t| t.tdr == Some(v.tdr))?;
    if let Some(slot) = t.shared.get_mut(t.shared_count) {
        *slot = page;
    }
    t.shared_count = t.shared_count.saturating_add(1).min(SHARED_SLOTS + 1);
    if t.npt.map_leaf(page, hpa, false, ty).is_err() {
        t.npt.reset();
        w.resets += 1;
        if t.npt.map_leaf(page, hpa, false, ty).is_err() {
            return Some(exit_now(tsm, tdvpr, TdExit::TripleFault));
        }
    }
    None
}

/// Delivers #VE (vector 20) with `info` for VEINFO.GET; RIP stays at the instruction (the TD's
/// handler adds the length). A #VE before the last one was read is #DF, as TDX does.
fn ve(tsm: &mut Tsm<FirmwarePlatform>, v: &mut TdVcpu, info: VeInfo) {
    if tsm.deliver_ve(v.tdvpr, info) {
        if let Some(w) = tsm.platform_mut().td.as_mut() {
            w.ves += 1;
            let kind = match info.exit_reason {
                reason::CPUID => 0,
                reason::HLT => 1,
                reason::IO => 2,
                reason::RDMSR | reason::WRMSR => 3,
                _ => 4,
            };
            w.counts.ve[kind] += 1;
        }
        v.world.inject_exception(VECTOR_VE);
    } else {
        v.world.inject_exception(VECTOR_DF);
    }
}

/// SVM's IOIO EXITINFO1 as VMX's I/O exit qualification: size - 1 (2:0), IN (3), string (4),
/// REP (5), port (31:16).
fn io_qualification(info1: u64) -> u64 {
    let size = match (info1 >> 4) & 7 {
        1 => 0,
        2 => 1,
        _ => 3,
    };
    size | (info1 & 1) << 3 | ((info1 >> 2) & 1) << 4 | ((info1 >> 3) & 1) << 5 | (info1 & 0xFFFF_0000)
}

/// CPUID as a TDX module presents it (`tsm::cpuid::td_cpuid`, from this CPU's answers): the
/// basic leaves to 0x21 and the extended ones to 0x8000_0008 answered at once; the rest is a
/// #VE (the TD asks the host with TDG.VP.VMCALL<Instruction.CPUID> if it wants to).
fn cpuid(tsm: &mut Tsm<FirmwarePlatform>, v: &mut TdVcpu) {
    let leaf = v.world.rax() as u32;
    let sub = v.world.gprs.rcx as u32;
    let index = tsm.running_vcpu(v.tdvpr).map_or(0, |r| r.index as u32);
    let ctx = tsm::cpuid::CpuidContext { vcpu_index: index, cr4: v.world.read(vmcb::CR4) };
    let host = |l: u32, s: u32| {
        let r = cpuid_count(l, s);
        [r.eax, r.ebx, r.ecx, r.edx]
    };
    match tsm::cpuid::td_cpuid(leaf, sub, ctx, &host) {
        Some([a, b, c, d]) => {
            v.world.set_rax(u64::from(a));
            (v.world.gprs.rbx, v.world.gprs.rcx, v.world.gprs.rdx) = (u64::from(b), u64::from(c), u64::from(d));
            v.world.skip(2);
            if let Some(w) = tsm.platform_mut().td.as_mut() {
                w.counts.cpuid_in_tsm += 1;
            }
        }
        None => ve(tsm, v, VeInfo { exit_reason: reason::CPUID, instruction_length: 2, ..VeInfo::default() }),
    }
}

/// TDCALL: the leaf's registers into `Tsm::guest_call`, its results back. A VMCALL exit moves
/// RIP past the TDCALL (the host's answer comes at the next entry, into the registers it
/// exposed); an EPT violation leaves it on the TDCALL, which runs again once the host fixed
/// the mapping, as in TDX.
fn tdcall(tsm: &mut Tsm<FirmwarePlatform>, v: &mut TdVcpu) -> Option<TdExit> {
    let regs = v.world.abi_regs();
    let back = tsm.guest_call(v.tdvpr, &regs);
    match back.exit {
        None => {
            // The leaf's outputs (RAX..R13); R14 and R15 are no leaf's output and keep the
            // guest's values.
            let out = Regs { r14: regs.r14, r15: regs.r15, ..back.regs };
            v.world.set_abi_regs(&out);
            v.world.skip(4);
            None
        }
        Some(exit @ TdExit::Vmcall { mask, .. }) => {
            v.world.skip(4);
            v.vmcall_pending = Some(mask);
            Some(exit)
        }
        Some(exit) => Some(exit),
    }
}

/// The 4 bytes at the TD's RIP, read through its own page tables and S-EPT: only frames of
/// MAPPED private leaves (a table or code page the TD has not accepted reads as nothing). One
/// translation unless the bytes cross a page.
fn fetch4(tsm: &Tsm<FirmwarePlatform>, v: &TdVcpu) -> Option<[u8; 4]> {
    let frames = tsm.platform().frames();
    let mut out = [0u8; 4];
    let rip = v.world.rip();
    let split = (PAGE - (rip & (PAGE - 1))).min(4) as usize;
    let (head, tail) = out.split_at_mut(split);
    frames.read(linear_to_hpa(tsm, v, frames, rip)?, head);
    if !tail.is_empty() {
        frames.read(linear_to_hpa(tsm, v, frames, rip.wrapping_add(split as u64))?, tail);
    }
    Some(out)
}

/// The host address of the TD's private GPA `gpa`, if a MAPPED leaf grants it.
fn private_hpa(tsm: &Tsm<FirmwarePlatform>, tdvpr: u64, frames: Frames, gpa: u64) -> Option<u64> {
    let leaf = tsm.private_leaf(tdvpr, gpa).ok().filter(|l| l.state == SeptState::Mapped)?;
    let pa = leaf.frame.addr().raw() + (gpa - leaf.gpa.raw());
    frames.contains(pa, 1).then_some(pa)
}

/// A linear address of the TD (flat segments) to a host address: identity with paging off,
/// a 4-level walk in long mode, each table read only through a MAPPED private leaf. Legacy
/// 32-bit paging is not walked (no TDCALL there: TDVF goes to long mode first).
fn linear_to_hpa(tsm: &Tsm<FirmwarePlatform>, v: &TdVcpu, frames: Frames, linear: u64) -> Option<u64> {
    let vm = &v.world;
    let cr0 = vm.read(vmcb::CR0);
    if cr0 & (1 << 31) == 0 {
        return private_hpa(tsm, v.tdvpr, frames, linear & 0xFFFF_FFFF);
    }
    if vm.read(vmcb::EFER) & (1 << 10) == 0 {
        return None;
    }
    let mut table = vm.cr3() & 0x000F_FFFF_FFFF_F000;
    for (shift, large_ok) in [(39u32, false), (30, true), (21, true), (12, false)] {
        let at = private_hpa(tsm, v.tdvpr, frames, table + ((linear >> shift) & 511) * 8)?;
        let e = frames.read_u64(at);
        if e & 1 == 0 {
            return None;
        }
        let base = e & 0x000F_FFFF_FFFF_F000;
        if shift == 12 || (large_ok && e & 0x80 != 0) {
            let mask = (1u64 << shift) - 1;
            return private_hpa(tsm, v.tdvpr, frames, (base & !mask) | (linear & mask));
        }
        table = base;
    }
    None
}
