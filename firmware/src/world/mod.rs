//! The worlds: the TSM is the only code in SVM host mode; the untrusted host and (later) each TD
//! vCPU run as SVM guests, each behind a nested page table that maps only what that world owns,
//! and reach the TSM only by exiting (SEAMCALL and TDCALL are #UD intercepts under TCG).
//!
//! [`World`] is one guest context: its VMCB (in the TSM's memory), the GPRs the VMCB does not
//! hold, and the exit it last took, decoded as [`Exit`]. `host` builds and drives the host world.

pub mod host;
pub mod loader;
pub mod npt;
pub mod td;

use crate::arch::svm::{self, exit, vmcb, Gprs, Vmcb};
use tsm::abi::Regs;

/// Bytes of a page.
const PAGE: u64 = 4096;
/// #UD, which every world takes for an instruction that is not its own.
const VECTOR_UD: u8 = 6;

/// Why a world could not be built or stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorldError {
    /// SVM is missing; the text names the fix.
    Svm(svm::SvmUnavailable),
    /// The TSM's pool of VMCBs or nested-table frames is exhausted (also when the host's map
    /// could not follow an ownership change: the world is stopped rather than run on it).
    OutOfTsmMemory,
    /// VMRUN refused the VMCB (exit code -1): a TSM bug.
    InvalidVmcb,
    /// The world shut down (triple fault) or exited in a way the TSM does not serve.
    Died {
        /// The SVM exit code.
        code: u64,
        /// EXITINFO1.
        info1: u64,
        /// Guest RIP.
        rip: u64,
    },
}

impl core::fmt::Display for WorldError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            WorldError::Svm(e) => write!(f, "{e}"),
            WorldError::OutOfTsmMemory => write!(f, "the TSM's VMCB or nested-table pool is exhausted"),
            WorldError::InvalidVmcb => write!(f, "VMRUN refused the VMCB (VMEXIT_INVALID)"),
            WorldError::Died { code, info1, rip } => {
                write!(f, "the world stopped: exit code {code:#x}, EXITINFO1 {info1:#x}, RIP {rip:#x}")
            }
        }
    }
}

/// A #VMEXIT, decoded from the VMCB's exit code and EXITINFO1/2 (APM vol. 2 §15.6, appendix C).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// An intercepted exception (exit code 0x40 + vector); `info1` is its error code if any.
    Exception {
        /// The vector.
        vector: u8,
        /// EXITINFO1.
        info1: u64,
    },
    /// A physical interrupt arrived while the guest ran (the interrupt itself is still pending).
    Interrupt,
    /// CPUID (2 bytes).
    Cpuid,
    /// HLT (1 byte).
    Hlt,
    /// IN/OUT with its IOPM bit set: EXITINFO1 the port, size and direction; EXITINFO2 the next
    /// RIP (the one length the CPU does give without nRIP).
    Io {
        /// EXITINFO1.
        info1: u64,
        /// RIP after the instruction.
        next_rip: u64,
    },
    /// RDMSR (`write` false) or WRMSR (2 bytes).
    Msr {
        /// EXITINFO1 bit 0.
        write: bool,
    },
    /// VMMCALL (3 bytes).
    Vmmcall,
    /// XSETBV (3 bytes): XCR ECX, the value EDX:EAX.
    Xsetbv,
    /// Nested page fault: `gpa` is absent from the world's nested table (or was refused);
    /// `error` is the #PF-style code, bit 32 a fault on the final GPA, bit 33 on a guest
    /// page-table access.
    NestedPageFault {
        /// EXITINFO2.
        gpa: u64,
        /// EXITINFO1.
        error: u64,
    },
    /// VMRUN, VMLOAD, VMSAVE, STGI, CLGI, SKINIT or INVLPGA (intercepted: no world virtualizes).
    SvmInstruction,
    /// The guest triple-faulted.
    Shutdown,
    /// VMRUN refused the VMCB.
    Invalid,
    /// Any other exit code.
    Other(u64),
}

impl Exit {
    fn decode(v: &Vmcb) -> Exit {
        let code = v.read_u64(vmcb::EXIT_CODE);
        let info1 = v.read_u64(vmcb::EXIT_INFO1);
        let info2 = v.read_u64(vmcb::EXIT_INFO2);
        match code {
            c if (exit::EXCEPTION_BASE..exit::EXCEPTION_BASE + 32).contains(&c) => {
                Exit::Exception { vector: (c - exit::EXCEPTION_BASE) as u8, info1 }
            }
            exit::INTR => Exit::Interrupt,
            exit::CPUID => Exit::Cpuid,
            exit::HLT => Exit::Hlt,
            exit::IOIO => Exit::Io { info1, next_rip: info2 },
            exit::MSR => Exit::Msr { write: info1 & 1 != 0 },
            exit::VMMCALL => Exit::Vmmcall,
            exit::XSETBV => Exit::Xsetbv,
            exit::NPF => Exit::NestedPageFault { gpa: info2, error: info1 },
            exit::SHUTDOWN => Exit::Shutdown,
            exit::INVLPGA | exit::VMRUN..=exit::SKINIT => Exit::SvmInstruction,
            // QEMU stores VMEXIT_INVALID (-1) as a 32-bit value.
            exit::INVALID | 0xFFFF_FFFF => Exit::Invalid,
            other => Exit::Other(other),
        }
    }
}

/// One guest context.
#[derive(Debug)]
pub struct World {
    vmcb: &'static mut Vmcb,
    /// The GPRs the VMCB does not hold.
    pub gprs: Gprs,
    /// #VMEXITs taken so far.
    pub exits: u64,
    /// Its x87 and SSE registers while it does not run (neither the VMCB nor VMRUN holds them).
    fpu: crate::arch::FpuState,
}

impl World {
    /// A world with a fresh VMCB from the TSM's pool.
    ///
    /// # Errors
    /// [`WorldError::OutOfTsmMemory`] when the pool is empty.
    pub fn new() -> Result<World, WorldError> {
        let vmcb = svm::take_vmcb().ok_or(WorldError::OutOfTsmMemory)?;
        vmcb.clear();
        Ok(World { vmcb, gprs: Gprs::default(), exits: 0, fpu: crate::arch::FpuState::init() })
    }

    /// The world's registers as the ABI's register file (RAX from the VMCB): what a SEAMCALL
    /// or TDCALL it executed passes.
    pub fn abi_regs(&self) -> Regs {
        let g = &self.gprs;
        Regs {
            rax: self.rax(),
            rcx: g.rcx,
            rdx: g.rdx,
            r8: g.r8,
            r9: g.r9,
            r10: g.r10,
            r11: g.r11,
            r12: g.r12,
            r13: g.r13,
            r14: g.r14,
            r15: g.r15,
        }
    }

    /// Writes every register of the ABI's register file back into the world.
    pub fn set_abi_regs(&mut self, r: &Regs) {
        let g = &mut self.gprs;
        (g.rcx, g.rdx, g.r8, g.r9, g.r10, g.r11, g.r12, g.r13, g.r14, g.r15) =
            (r.rcx, r.rdx, r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15);
        self.set_rax(r.rax);
    }

    /// The VMCB, to set up or read the guest state between runs.
    pub fn vmcb(&mut self) -> &mut Vmcb {
        self.vmcb
    }

    /// Runs the world until its next exit. The one `unsafe` outside `arch` and `drivers`: the
    /// contract of VMRUN is about the world model (what the VMCB and nested table allow), which
    /// only this module can vouch for.
    #[allow(unsafe_code)]
    pub fn run(&mut self) -> Exit {
        // Its own x87 and SSE registers in, and out again at the exit: another world's (a TD's
        // secrets left in XMM, the host's values) never reach it.
        self.fpu.load();
        // SAFETY: SVM was enabled before any world exists (`host::HostWorld::build` does it
        // first); every world's VMCB intercepts VMRUN and names a nested table built by `npt`
        // from the TSM's pool, which maps only memory the world owns.
        unsafe { svm::run(self.vmcb, &mut self.gprs) };
        self.fpu.store();
        self.vmcb.write_u8(vmcb::TLB_CONTROL, 0);
        // An event whose delivery the #VMEXIT interrupted (a nested page fault on the IDT or
        // the stack while injecting #VE) comes back in EXITINTINFO: inject it again at the next
        // VMRUN, or it is lost (AMD APM vol. 2, 15.7.2).
        let pending = self.vmcb.read_u64(vmcb::EXIT_INT_INFO);
        self.vmcb.write_u64(vmcb::EVENT_INJ, if pending & (1 << 31) != 0 { pending } else { 0 });
        self.exits += 1;
        Exit::decode(self.vmcb)
    }

    /// Guest RIP.
    pub fn rip(&self) -> u64 {
        self.vmcb.read_u64(vmcb::RIP)
    }

    /// Moves RIP past an instruction of `len` bytes the TSM emulated (TCG has no nRIP).
    pub fn skip(&mut self, len: u64) {
        let rip = self.rip().wrapping_add(len);
        self.vmcb.write_u64(vmcb::RIP, rip);
    }

    /// Guest RAX (held in the VMCB).
    pub fn rax(&self) -> u64 {
        self.vmcb.read_u64(vmcb::RAX)
    }

    /// Sets guest RAX.
    pub fn set_rax(&mut self, value: u64) {
        self.vmcb.write_u64(vmcb::RAX, value);
    }

    /// The 8 bytes at `offset` of the VMCB (a save-area field).
    pub fn read(&self, offset: usize) -> u64 {
        self.vmcb.read_u64(offset)
    }

    /// Guest CR3.
    pub fn cr3(&self) -> u64 {
        self.vmcb.read_u64(vmcb::CR3)
    }

    /// Delivers exception `vector` (one without an error code: QEMU's TCG does not push injected
    /// error codes) at the next VMRUN, with RIP at the faulting instruction.
    pub fn inject_exception(&mut self, vector: u8) {
        self.vmcb.write_u64(vmcb::EVENT_INJ, vmcb::EVENT_VALID_EXCEPTION | u64::from(vector));
    }

    /// Delivers external interrupt `vector` at the next VMRUN.
    pub fn inject_interrupt(&mut self, vector: u8) {
        self.vmcb.write_u64(vmcb::EVENT_INJ, vmcb::EVENT_VALID_INTR | u64::from(vector));
    }

    /// True if an event is to be delivered at the next VMRUN.
    pub fn event_pending(&self) -> bool {
        self.vmcb.read_u64(vmcb::EVENT_INJ) & (1 << 31) != 0
    }

    /// The event the last exit interrupted while the CPU delivered it (EXITINTINFO valid): it
    /// was not delivered (a nested page fault on the IDT or the stack, say) and must be
    /// delivered again. QEMU marks EVENTINJ valid while it delivers and clears it once done, and
    /// copies it to EXITINTINFO at #VMEXIT, so a valid EXITINTINFO is exactly an event lost.
    pub fn interrupted_event(&self) -> Option<u64> {
        let info = self.vmcb.read_u64(vmcb::EXIT_INT_INFO) & 0xFFFF_FFFF;
        (info & (1 << 31) != 0).then_some(info)
    }

    /// Delivers the raw EVENTINJ value `event` at the next VMRUN.
    pub fn reinject(&mut self, event: u64) {
        self.vmcb.write_u64(vmcb::EVENT_INJ, event);
    }

    /// Writes the 8 bytes at `offset` of the VMCB (a save-area field).
    pub fn write(&mut self, offset: usize, value: u64) {
        self.vmcb.write_u64(offset, value);
    }

    /// Asks the next VMRUN to flush the TLB (after the nested table lost a translation).
    pub fn flush_tlb(&mut self) {
        self.vmcb.write_u8(vmcb::TLB_CONTROL, vmcb::TLB_FLUSH_ALL);
    }
}
