//! What a platform that runs a TD's vCPU as a real guest (the firmware's TD world) needs from
//! the TSM, and nothing more: which TD a vCPU in guest mode belongs to, a read-only view of one
//! private translation of its S-EPT (to derive the nested table from, entry by entry), the
//! exits the platform itself decides (an access the S-EPT does not grant), the #VE it
//! delivers, which TDG.VP.VEINFO.GET then reads back, the MSR accesses the TSM answers itself
//! ([`crate::msr`]: the virtual APIC and the MTRRs), and the interrupts posted to the vCPU
//! ([`crate::vapic`]) it injects.
//!
//! The S-EPT stays the one authority: the platform caches what [`Tsm::private_leaf`] returns and
//! drops it when [`crate::platform::Platform::sept_changed`] says so.
//!
//! The vCPU's virtual APIC and MTRR bank live in its TDVPR page ([`TDVPR_APIC`], [`TDVPR_MTRR`]),
//! zeroed at donation (the APIC's reset state, MTRRs disabled), as TDX keeps them in the TDVPS.

use crate::abi::guest::Ctx;
use crate::addr::{GuestPhysAddr, PageSize, Pfn};
use crate::msr::{self, MsrClass};
use crate::platform::Platform;
use crate::sept::{self, SeptState, WalkResult};
use crate::status::Operand;
use crate::td::VeInfo;
use crate::vapic::{self, VirtualApic};
use crate::Tsm;

/// Offset of the virtual APIC's state in the TDVPR page.
pub const TDVPR_APIC: usize = 0;
/// Offset of the MTRR bank (little-endian u64 per slot of [`msr::classify`]) in the TDVPR page.
pub const TDVPR_MTRR: usize = 0x100;
const _: () = assert!(TDVPR_APIC + VirtualApic::BYTES <= TDVPR_MTRR);

/// An RDMSR or WRMSR of a TD vCPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsrAccess {
    /// RDMSR.
    Read,
    /// WRMSR of this value (EDX:EAX).
    Write(u64),
}

/// What the TSM made of an MSR access ([`Tsm::vcpu_msr`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsrResult {
    /// Answered: the value an RDMSR reads, or 0 after a WRMSR done.
    Done(u64),
    /// A register of the vCPU's own context: the platform reads or writes its saved state.
    Context,
    /// Not the TSM's (or refused: a read-only register written, reserved bits): a #VE, and
    /// the TD asks the host with TDG.VP.VMCALL.
    Ve,
}

/// A vCPU in guest mode, as the platform running it sees its TD.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunningVcpu {
    /// The TD's TDR (the key [`crate::platform::Platform::sept_changed`] names it by).
    pub tdr: Pfn,
    /// The TD's guest physical address width; GPA bit `gpaw - 1` is the shared bit.
    pub gpaw: u8,
    /// The vCPU's index in its TD.
    pub index: usize,
    /// TDH.VP.ENTERs of this vCPU so far, this one included: 1 means it starts from TDX's
    /// initial state.
    pub entries: u64,
    /// The root of the host's table for the shared half, if the host named one. Host memory:
    /// every frame reached through it must be checked to be the host's.
    pub shared_root: Option<Pfn>,
}

/// The S-EPT leaf that translates a private GPA, in any leaf state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrivateLeaf {
    /// Its state: only `Mapped` (write-back) and `MmioMapped` (uncached) grant access.
    pub state: SeptState,
    /// The first GPA it covers.
    pub gpa: GuestPhysAddr,
    /// The first frame it maps.
    pub frame: Pfn,
    /// Its size.
    pub size: PageSize,
    /// The raw S-EPT entry (what an EPT-violation exit reports).
    pub entry: u64,
}

/// A private GPA with no leaf: where the walk stopped (an EPT-violation TD exit reports it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NoLeaf {
    /// The level the walk stopped at.
    pub level: u8,
    /// The raw entry found there.
    pub entry: u64,
}

impl<P: Platform> Tsm<P> {
    /// The vCPU whose TDVPR is `tdvpr`, if it is in guest mode.
    pub fn running_vcpu(&self, tdvpr: u64) -> Option<RunningVcpu> {
        let Ctx { td, vcpu } = self.guest_context(tdvpr).ok()?;
        let t = self.td(td).ok()?;
        let entries = t.vcpus.get(vcpu).copied().flatten()?.entries;
        Some(RunningVcpu { tdr: t.tdr, gpaw: t.gpaw(), index: vcpu, entries, shared_root: t.shared_root })
    }

    /// The leaf of the running vCPU's S-EPT that translates private `gpa` (shared bit clear,
    /// inside the width), read-only.
    ///
    /// # Errors
    /// [`NoLeaf`] where the walk stopped when no leaf translates it (a free entry, a blocked
    /// table, or `gpa` not a private GPA of the TD: then level and entry are 0), or when the
    /// vCPU is not in guest mode.
    pub fn private_leaf(&self, tdvpr: u64, gpa: u64) -> Result<PrivateLeaf, NoLeaf> {
        const NONE: NoLeaf = NoLeaf { level: 0, entry: 0 };
        let ctx = self.guest_context(tdvpr).map_err(|_| NONE)?;
        let td = self.td(ctx.td).map_err(|_| NONE)?;
        let gpa = GuestPhysAddr::new(gpa & !0xFFF).ok_or(NONE)?;
        Self::private_gpa(td, gpa, 1, Operand::Rcx).map_err(|_| NONE)?;
        let w = match self.walk(td, gpa, 0).map_err(|_| NONE)? {
            WalkResult::Reached(w) | WalkResult::Stopped(w) => w,
        };
        let state = w.entry.state();
        let size = PageSize::from_level(w.level).filter(|_| state.is_leaf());
        let Some(size) = size else {
            return Err(NoLeaf { level: w.level, entry: w.entry.raw() });
        };
        let base = GuestPhysAddr::new(gpa.raw() & !(sept::coverage(w.level) - 1)).ok_or(NONE)?;
        Ok(PrivateLeaf { state, gpa: base, frame: w.entry.pfn(), size, entry: w.entry.raw() })
    }

    /// Takes the vCPU out of guest mode for an exit the platform decided (an access its S-EPT
    /// does not grant, a triple fault): TDH.VP.ENTER returns to the host. No effect on a vCPU
    /// not in guest mode.
    pub fn vcpu_exit(&mut self, tdvpr: u64) {
        if let Ok(ctx) = self.guest_context(tdvpr) {
            self.leave_guest(ctx);
        }
    }

    /// The TDVPR frame and index of a vCPU in guest mode.
    fn running_frame(&self, tdvpr: u64) -> Option<(Pfn, usize)> {
        let Ctx { td, vcpu } = self.guest_context(tdvpr).ok()?;
        let v = self.td(td).ok()?.vcpus.get(vcpu).copied().flatten()?;
        Some((v.tdvpr, vcpu))
    }

    /// The virtual APIC kept in TDVPR frame `frame`.
    pub(crate) fn vapic(&self, frame: Pfn) -> VirtualApic {
        let mut b = [0u8; VirtualApic::BYTES];
        self.platform.read_bytes(frame, TDVPR_APIC, &mut b);
        VirtualApic::decode(&b)
    }

    /// Stores the virtual APIC into TDVPR frame `frame`.
    pub(crate) fn set_vapic(&mut self, frame: Pfn, apic: &VirtualApic) {
        self.platform.write_bytes(frame, TDVPR_APIC, &apic.encode());
    }

    /// An RDMSR or WRMSR of the vCPU in guest mode whose TDVPR is `tdvpr`, where [`msr::classify`]
    /// sends it: the virtual APIC, IA32_APIC_BASE and the MTRRs are answered here, context
    /// registers are the platform's, everything else is a #VE. A vCPU not in guest mode gets
    /// [`MsrResult::Ve`] (the platform never asks for one).
    pub fn vcpu_msr(&mut self, tdvpr: u64, msr_index: u32, access: MsrAccess) -> MsrResult {
        let Some((frame, index)) = self.running_frame(tdvpr) else { return MsrResult::Ve };
        match (msr::classify(msr_index), access) {
            (MsrClass::VirtualApic, MsrAccess::Read) => {
                self.vapic(frame).read(msr_index).map_or(MsrResult::Ve, MsrResult::Done)
            }
            (MsrClass::VirtualApic, MsrAccess::Write(value)) => {
                let mut apic = self.vapic(frame);
                match apic.write(msr_index, value) {
                    Ok(()) => {
                        self.set_vapic(frame, &apic);
                        MsrResult::Done(0)
                    }
                    Err(_) => MsrResult::Ve,
                }
            }
            (MsrClass::ApicBase, MsrAccess::Read) => MsrResult::Done(vapic::apic_base(index)),
            (MsrClass::ApicBase, MsrAccess::Write(v)) if v == vapic::apic_base(index) => MsrResult::Done(0),
            (MsrClass::Mtrr(None), MsrAccess::Read) => MsrResult::Done(msr::MTRRCAP_VALUE),
            (MsrClass::Mtrr(Some(slot)), MsrAccess::Read) => {
                let mut b = [0u8; 8];
                self.platform.read_bytes(frame, TDVPR_MTRR + slot * 8, &mut b);
                MsrResult::Done(u64::from_le_bytes(b))
            }
            (MsrClass::Mtrr(Some(slot)), MsrAccess::Write(value)) => {
                self.platform.write_bytes(frame, TDVPR_MTRR + slot * 8, &value.to_le_bytes());
                MsrResult::Done(0)
            }
            (MsrClass::Context, _) => MsrResult::Context,
            (MsrClass::ApicBase | MsrClass::Mtrr(None) | MsrClass::Host, _) => MsrResult::Ve,
        }
    }

    /// The interrupt the vCPU in guest mode would take now, if any: the highest posted vector
    /// whose priority class is above its PPR. The platform injects it when the vCPU can take it
    /// (interrupts open, no interrupt shadow), then calls [`Tsm::interrupt_taken`].
    pub fn pending_interrupt(&self, tdvpr: u64) -> Option<u8> {
        let (frame, _) = self.running_frame(tdvpr)?;
        self.vapic(frame).deliverable()
    }

    /// The platform injected `vector` into the vCPU: it moves from the IRR to the ISR, until
    /// the TD's EOI.
    pub fn interrupt_taken(&mut self, tdvpr: u64, vector: u8) {
        if let Some((frame, _)) = self.running_frame(tdvpr) {
            let mut apic = self.vapic(frame);
            apic.accept(vector);
            self.set_vapic(frame, &apic);
        }
    }

    /// Records the #VE the platform delivers to the vCPU, for TDG.VP.VEINFO.GET. Returns false,
    /// recording nothing, if the vCPU is not in guest mode or the previous #VE was not read yet:
    /// TDX then delivers #DF instead (a #VE inside the #VE handler before VEINFO.GET).
    pub fn deliver_ve(&mut self, tdvpr: u64, info: VeInfo) -> bool {
        let Ok(Ctx { td, vcpu }) = self.guest_context(tdvpr) else { return false };
        let Ok(t) = self.td_mut(td) else { return false };
        match t.vcpus.get_mut(vcpu) {
            Some(Some(v)) if v.ve.is_none() => {
                v.ve = Some(info);
                true
            }
            _ => false,
        }
    }
}
