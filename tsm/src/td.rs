//! TD and vCPU control state, and TLB epoch tracking.
//!
//! The TDR page is the TD's identity: every page the TD owns names it as owner in the PAMT. The
//! TSM keeps the TD's scalar state in a fixed table (no heap) found through the TDR's PAMT entry;
//! TDCS page 0 is the S-EPT root table and TDCS page 1 holds the measurement registers.

use attest::mrtd::MrtdBuilder;

use crate::addr::Pfn;
use crate::error::{TsmError, TsmResult};
use crate::status::Operand;

/// TDs the TSM can hold at once.
pub const MAX_TDS: usize = 8;
/// vCPUs per TD at most.
pub const MAX_VCPUS: usize = 8;
/// TDCS pages each TD needs before TDH.MNG.INIT.
pub const TDCS_PAGES: usize = 2;
/// Index of the TDCS page that is the S-EPT root.
pub const TDCS_SEPT_ROOT: usize = 0;
/// Index of the TDCS page that holds the measurement registers.
pub const TDCS_MR: usize = 1;

/// Where the TD's lifecycle stands (TDX: TD_HKID_ASSIGNED … TD_TEARDOWN plus OP_STATE).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lifecycle {
    /// TDR created; TDCS pages being added. Nothing else is allowed yet.
    Created,
    /// TDH.MNG.INIT done: the image is being built and measured (PAGE.ADD, MR.EXTEND).
    Initialized,
    /// TDH.MR.FINALIZE done: MRTD is fixed, vCPUs may enter, memory is added by AUG.
    Runnable,
    /// TDH.MNG.VPFLUSHDONE done: no vCPU can run again; pages are only reclaimed.
    Teardown,
}

impl Lifecycle {
    /// Refuses unless the TD is in `want`, with the status TDX gives for each mismatch: the one
    /// table of lifecycle legality.
    ///
    /// # Errors
    /// `TdInitialized`, `TdNotInitialized`, `TdFinalized`, `TdNotFinalized` or `Lifecycle`.
    pub const fn require(self, want: Lifecycle) -> TsmResult<()> {
        use Lifecycle::*;
        match (want, self) {
            (Created, Created) | (Initialized, Initialized) | (Runnable, Runnable) | (Teardown, Teardown) => Ok(()),
            (_, Teardown) | (Teardown, _) => Err(TsmError::Lifecycle),
            (Created, Initialized | Runnable) => Err(TsmError::TdInitialized),
            (Initialized | Runnable, Created) => Err(TsmError::TdNotInitialized),
            (Initialized, Runnable) => Err(TsmError::TdFinalized),
            (Runnable, Initialized) => Err(TsmError::TdNotFinalized),
        }
    }
}

/// TLB epoch tracking for one translation domain (the CPU TLBs today; the IOTLB of the trusted
/// IOMMU joins as a second `Tracker` so that a block is retired only when both are).
///
/// The epoch starts at 1. A vCPU entering the TD takes a reference on the current epoch's parity
/// bucket and drops it when it leaves. TRACK moves to the next epoch and refuses while the
/// previous epoch's bucket still holds references (TDX `is_tlb_tracked`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tracker {
    epoch: u64,
    active: [u32; 2],
}

impl Default for Tracker {
    fn default() -> Self {
        Tracker { epoch: 1, active: [0, 0] }
    }
}

impl Tracker {
    /// The current epoch.
    pub const fn epoch(&self) -> u64 {
        self.epoch
    }

    /// A user (vCPU) enters in the current epoch; returns the epoch it entered in.
    pub fn enter(&mut self) -> u64 {
        self.active[(self.epoch & 1) as usize] += 1;
        self.epoch
    }

    /// A user that entered in `epoch` leaves.
    pub fn leave(&mut self, epoch: u64) {
        let bucket = &mut self.active[(epoch & 1) as usize];
        *bucket = bucket.saturating_sub(1);
    }

    /// True if TRACK may advance now.
    pub const fn can_advance(&self) -> bool {
        self.active[((self.epoch + 1) & 1) as usize] == 0
    }

    /// Advances the epoch (after [`Tracker::can_advance`]).
    pub fn advance(&mut self) {
        self.epoch += 1;
    }

    /// True if a block made in `bepoch` can no longer be cached by any user.
    pub const fn is_tracked(&self, bepoch: u64) -> bool {
        bepoch + 1 < self.epoch || (bepoch + 1 == self.epoch && self.active[(bepoch & 1) as usize] == 0)
    }
}

/// A vCPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Vcpu {
    /// Its TDVPR page.
    pub tdvpr: Pfn,
    /// `Some(epoch)` while in guest mode, with the epoch it entered in.
    pub in_guest: Option<u64>,
    /// The #VE delivered to the vCPU and not yet read by TDG.VP.VEINFO.GET (TDX's VE_INFO with
    /// its VALID word set).
    pub ve: Option<VeInfo>,
    /// TDH.VP.ENTERs so far: 1 on the first, when the vCPU starts from TDX's initial state.
    pub entries: u64,
}

/// What TDG.VP.VEINFO.GET returns about the last #VE (TDX module spec, "#VE Information").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VeInfo {
    /// The VMX basic exit reason the #VE stands for (10 CPUID, 12 HLT, 30 I/O, 31/32 RDMSR/
    /// WRMSR, 48 EPT violation).
    pub exit_reason: u32,
    /// Exit qualification (for I/O: size, direction and port as VMX encodes them).
    pub qualification: u64,
    /// Guest linear address (EPT violations; 0 when unknown).
    pub gla: u64,
    /// Guest physical address (EPT violations).
    pub gpa: u64,
    /// Length of the instruction that caused the #VE (the guest adds it to RIP to skip it).
    pub instruction_length: u32,
    /// VMX instruction information.
    pub instruction_info: u32,
}

/// The TD parameters of TDH.MNG.INIT, decoded from the host's TD_PARAMS page.
///
/// TD_PARAMS layout (little-endian, TDX offsets): ATTRIBUTES u64 @0, XFAM u64 @8, MAX_VCPUS u16
/// @16, reserved @18..24 (zero), EPTP_CONTROLS u64 @24 (bits 5:3 = page-walk levels − 1),
/// CONFIG_FLAGS u64 @32 (bit 0: GPAW 52), reserved @40..80 (zero), MRCONFIGID[48] @80,
/// MROWNER[48] @128, MROWNERCONFIG[48] @176, reserved @224..256 (zero).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TdParams {
    /// TD attributes.
    pub attributes: u64,
    /// Extended features allowed.
    pub xfam: u64,
    /// vCPUs the TD may have.
    pub max_vcpus: u16,
    /// Guest physical address width: 48 or 52.
    pub gpaw: u8,
    /// Software-defined TD configuration id.
    pub mr_config_id: [u8; 48],
    /// TD owner id.
    pub mr_owner: [u8; 48],
    /// Owner-defined configuration id.
    pub mr_owner_config: [u8; 48],
}

/// Bytes of TD_PARAMS the TSM reads.
pub const TD_PARAMS_BYTES: usize = 256;

/// Attribute bits the TSM accepts: DEBUG (0), SEPT_VE_DISABLE (28), PKS (30), KL (31),
/// PERFMON (63).
pub const ATTRIBUTES_SUPPORTED: u64 = 1 | 1 << 28 | 1 << 30 | 1 << 31 | 1 << 63;
/// XFAM bits that must be set (x87, SSE).
pub const XFAM_FIXED1: u64 = 0b11;

fn le64(b: &[u8; TD_PARAMS_BYTES], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

fn arr48(b: &[u8; TD_PARAMS_BYTES], at: usize) -> [u8; 48] {
    let mut w = [0u8; 48];
    w.copy_from_slice(&b[at..at + 48]);
    w
}

impl TdParams {
    /// Decodes and validates a snapshot of TD_PARAMS; checks run in field order.
    ///
    /// # Errors
    /// `OperandInvalid` naming the first bad field.
    pub fn decode(b: &[u8; TD_PARAMS_BYTES]) -> TsmResult<TdParams> {
        let attributes = le64(b, 0);
        if attributes & !ATTRIBUTES_SUPPORTED != 0 {
            return Err(TsmError::OperandInvalid(Operand::TdParamsAttributes));
        }
        let xfam = le64(b, 8);
        if xfam & XFAM_FIXED1 != XFAM_FIXED1 {
            return Err(TsmError::OperandInvalid(Operand::TdParamsXfam));
        }
        let max_vcpus = u16::from_le_bytes([b[16], b[17]]);
        if max_vcpus == 0 || usize::from(max_vcpus) > MAX_VCPUS {
            return Err(TsmError::OperandInvalid(Operand::TdParamsMaxVcpus));
        }
        let config_flags = le64(b, 32);
        if config_flags & !1 != 0 {
            return Err(TsmError::OperandInvalid(Operand::TdParamsConfigFlags));
        }
        let gpaw = if config_flags & 1 == 1 { 52 } else { 48 };
        let eptp = le64(b, 24);
        let walk_levels = ((eptp >> 3) & 7) + 1;
        let expected_levels = if gpaw == 52 { 5 } else { 4 };
        if eptp & !(7 << 3) != 0 || walk_levels != expected_levels {
            return Err(TsmError::OperandInvalid(Operand::TdParamsEptpControls));
        }
        let reserved = b[18..24].iter().chain(&b[40..80]).chain(&b[224..256]);
        if reserved.into_iter().any(|&x| x != 0) {
            return Err(TsmError::OperandInvalid(Operand::TdParamsReserved));
        }
        Ok(TdParams {
            attributes,
            xfam,
            max_vcpus,
            gpaw,
            mr_config_id: arr48(b, 80),
            mr_owner: arr48(b, 128),
            mr_owner_config: arr48(b, 176),
        })
    }

    /// Encodes the parameters into the TD_PARAMS layout (for hosts and tests).
    pub fn encode(&self) -> [u8; TD_PARAMS_BYTES] {
        let mut b = [0u8; TD_PARAMS_BYTES];
        b[0..8].copy_from_slice(&self.attributes.to_le_bytes());
        b[8..16].copy_from_slice(&self.xfam.to_le_bytes());
        b[16..18].copy_from_slice(&self.max_vcpus.to_le_bytes());
        let levels: u64 = if self.gpaw == 52 { 5 } else { 4 };
        b[24..32].copy_from_slice(&((levels - 1) << 3).to_le_bytes());
        b[32..40].copy_from_slice(&u64::from(self.gpaw == 52).to_le_bytes());
        b[80..128].copy_from_slice(&self.mr_config_id);
        b[128..176].copy_from_slice(&self.mr_owner);
        b[176..224].copy_from_slice(&self.mr_owner_config);
        b
    }
}

/// Per-TD state the TSM keeps in its own memory.
#[derive(Clone, Debug)]
pub struct Td {
    /// The TD's root page.
    pub tdr: Pfn,
    /// Lifecycle.
    pub lifecycle: Lifecycle,
    /// TDCS pages added so far.
    pub tdcs: [Pfn; TDCS_PAGES],
    /// How many of `tdcs` are valid.
    pub tdcs_count: usize,
    /// TD parameters (valid from `Initialized` on).
    pub params: Option<TdParams>,
    /// vCPUs created, indexed by vCPU index.
    pub vcpus: [Option<Vcpu>; MAX_VCPUS],
    /// The running MRTD (until FINALIZE).
    pub mrtd: MrtdBuilder,
    /// CPU TLB epochs.
    pub tlb: Tracker,
    /// Frames owned by the TD, other than its TDR.
    pub owned_frames: u64,
    /// The root of the host's table for the shared half (SEAMLESS.SHARED.EPT.SET): host
    /// memory, walked by the platform that runs the TD, never trusted for anything private.
    pub shared_root: Option<Pfn>,
}

impl Td {
    /// A fresh TD in `Created`.
    pub fn new(tdr: Pfn) -> Td {
        Td {
            tdr,
            lifecycle: Lifecycle::Created,
            tdcs: [Pfn::ZERO; TDCS_PAGES],
            tdcs_count: 0,
            params: None,
            vcpus: [None; MAX_VCPUS],
            mrtd: MrtdBuilder::new(),
            tlb: Tracker::default(),
            owned_frames: 0,
            shared_root: None,
        }
    }

    /// The S-EPT root level: 3 (PML4) for GPAW 48, 4 (PML5) for GPAW 52.
    pub fn root_level(&self) -> u8 {
        match self.params {
            Some(p) if p.gpaw == 52 => 4,
            _ => 3,
        }
    }

    /// The S-EPT root table.
    pub fn sept_root(&self) -> Pfn {
        self.tdcs[TDCS_SEPT_ROOT]
    }

    /// The GPA width.
    pub fn gpaw(&self) -> u8 {
        self.params.map_or(48, |p| p.gpaw)
    }

    /// True if any vCPU is in guest mode.
    pub fn any_vcpu_in_guest(&self) -> bool {
        self.vcpus.iter().flatten().any(|v| v.in_guest.is_some())
    }

    /// Number of vCPUs created.
    pub fn vcpu_count(&self) -> usize {
        self.vcpus.iter().flatten().count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle_require_names_the_mismatch() {
        use Lifecycle::*;
        for l in [Created, Initialized, Runnable, Teardown] {
            assert_eq!(l.require(l), Ok(()));
            assert_eq!(Teardown.require(if l == Teardown { Created } else { l }), Err(TsmError::Lifecycle));
        }
        assert_eq!(Runnable.require(Created), Err(TsmError::TdInitialized));
        assert_eq!(Created.require(Runnable), Err(TsmError::TdNotInitialized));
        assert_eq!(Runnable.require(Initialized), Err(TsmError::TdFinalized));
        assert_eq!(Initialized.require(Runnable), Err(TsmError::TdNotFinalized));
    }

    #[test]
    fn track_waits_for_previous_epoch() {
        let mut t = Tracker::default();
        let e = t.enter();
        assert!(!t.is_tracked(1));
        assert!(t.can_advance());
        t.advance(); // epoch 2; the vCPU still runs in epoch 1
        assert!(!t.is_tracked(1));
        assert!(!t.can_advance());
        t.leave(e);
        assert!(t.is_tracked(1));
        assert!(t.can_advance());
        t.advance();
        assert!(t.is_tracked(1) && t.is_tracked(2) && !t.is_tracked(3));
    }

    #[test]
    fn td_params_round_trip_and_reject_bad_fields() {
        let p = TdParams {
            attributes: 1,
            xfam: 3,
            max_vcpus: 2,
            gpaw: 52,
            mr_config_id: [1; 48],
            mr_owner: [2; 48],
            mr_owner_config: [3; 48],
        };
        assert_eq!(TdParams::decode(&p.encode()), Ok(p));
        let mut b = p.encode();
        b[1] = 1; // attribute bit 8
        assert_eq!(TdParams::decode(&b), Err(TsmError::OperandInvalid(Operand::TdParamsAttributes)));
        let mut b = p.encode();
        b[24] = 3 << 3; // 4-level walk with GPAW 52
        assert_eq!(TdParams::decode(&b), Err(TsmError::OperandInvalid(Operand::TdParamsEptpControls)));
        let mut b = p.encode();
        b[16] = 0;
        assert_eq!(TdParams::decode(&b), Err(TsmError::OperandInvalid(Operand::TdParamsMaxVcpus)));
        let mut b = p.encode();
        b[250] = 1;
        assert_eq!(TdParams::decode(&b), Err(TsmError::OperandInvalid(Operand::TdParamsReserved)));
    }
}
