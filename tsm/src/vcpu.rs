//! What a platform that runs a TD's vCPU as a real guest (the firmware's TD world) needs from
//! the TSM, and nothing more: which TD a vCPU in guest mode belongs to, a read-only view of one
//! private translation of its S-EPT (to derive the nested table from, entry by entry), the
//! exits the platform itself decides (an access the S-EPT does not grant), and the #VE it
//! delivers, which TDG.VP.VEINFO.GET then reads back.
//!
//! The S-EPT stays the one authority: the platform caches what [`Tsm::private_leaf`] returns and
//! drops it when [`crate::platform::Platform::sept_changed`] says so.

use crate::abi::guest::Ctx;
use crate::addr::{GuestPhysAddr, PageSize, Pfn};
use crate::platform::Platform;
use crate::sept::{self, SeptState, WalkResult};
use crate::status::Operand;
use crate::td::VeInfo;
use crate::Tsm;

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
