//! ABI status words, shaped like the TDX module's (see `tdx_error_codes_defs.h`):
//! bit 63 error, bit 62 non-recoverable (retrying the same call cannot succeed), bits 47:40 the
//! class, bits 39:32 the code within the class, bits 31:0 details: the operand id of the bad
//! argument. Warnings have bit 63 clear: the call did nothing and the caller may go on.
//!
//! Values are the TDX module's wherever TDX has the condition; seamless-only conditions live in
//! class `0xF0`, which TDX does not use.

use core::fmt;

/// A status word as returned in RAX.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Status(pub u64);

macro_rules! statuses {
    ($($(#[$doc:meta])* $name:ident = $value:expr;)*) => {
        impl Status {
            $($(#[$doc])* pub const $name: Status = Status($value);)*

            /// The TDX-style name of the status without its operand, if it is a known one.
            pub fn name(self) -> Option<&'static str> {
                match self.0 & Status::CODE_MASK {
                    $(v if v == $value => Some(stringify!($name)),)*
                    _ => None,
                }
            }

            /// Every status the TSM can return, for documentation and tests.
            pub const ALL: &'static [(&'static str, Status)] = &[$((stringify!($name), Status($value)),)*];
        }
    };
}

statuses! {
    /// The call succeeded.
    SUCCESS = 0;
    /// Unknown leaf or an operand that is malformed (reserved bits, alignment, range).
    OPERAND_INVALID = 0xC000_0100_0000_0000;
    /// An address operand lies outside the memory the TSM manages or may read.
    OPERAND_ADDR_RANGE_ERROR = 0xC000_0101_0000_0000;
    /// The object named by the operand is in use; retry later. Never blocks.
    OPERAND_BUSY = 0x8000_0200_0000_0000;
    /// TRACK: a vCPU still runs in the previous TLB epoch; kick the vCPUs and retry.
    PREVIOUS_TLB_EPOCH_BUSY = 0x8000_0201_0000_0000;
    /// The platform entropy source failed; retry.
    RND_NO_ENTROPY = 0x8000_0203_0000_0000;
    /// The page's PAMT type is not the one the operand requires.
    PAGE_METADATA_INCORRECT = 0xC000_0300_0000_0000;
    /// Warning: RECLAIM of a page that is already free.
    PAGE_ALREADY_FREE = 0x0000_0301_0000_0000;
    /// The page is owned by another TD.
    PAGE_NOT_OWNED_BY_TD = 0xC000_0302_0000_0000;
    /// The page to donate is not free (already owned by the TSM or a TD).
    PAGE_NOT_FREE = 0xC000_0303_0000_0000;
    /// The TD still owns pages other than its TDR.
    TD_ASSOCIATED_PAGES_EXIST = 0xC000_0400_0000_0000;
    /// The TSM has not been configured (TDH.SYS.CONFIG) yet.
    SYS_NOT_READY = 0xC000_0505_0000_0000;
    /// TDH.SYS.CONFIG was already done.
    SYS_CONFIG_NOT_PENDING = 0xC000_050C_0000_0000;
    /// The TD has not been initialized (TDH.MNG.INIT) yet.
    TD_NOT_INITIALIZED = 0xC000_0600_0000_0000;
    /// The TD is already initialized.
    TD_INITIALIZED = 0xC000_0601_0000_0000;
    /// The TD's measurement is not finalized yet (TDH.MR.FINALIZE).
    TD_NOT_FINALIZED = 0xC000_0602_0000_0000;
    /// The TD's measurement is finalized: build-time calls are over.
    TD_FINALIZED = 0xC000_0603_0000_0000;
    /// The TD's lifecycle state does not allow the call (for example RECLAIM before teardown).
    LIFECYCLE_STATE_INCORRECT = 0xC000_0607_0000_0000;
    /// The number of TDCS pages is wrong for the call.
    TDCX_NUM_INCORRECT = 0xC000_0610_0000_0000;
    /// TDG.VP.VEINFO.GET: no #VE was delivered since the last read (TDX_NO_VALID_VE_INFO).
    NO_VALID_VE_INFO = 0xC000_0704_0000_0000;
    /// The TD already has its maximum number of vCPUs.
    MAX_VCPUS_EXCEEDED = 0xC000_0705_0000_0000;
    /// A vCPU of the TD is still in guest mode; kick it and retry.
    FLUSHVP_NOT_DONE = 0x8000_0824_0000_0000;
    /// A TDMR is malformed, overlaps another or the TSM's own memory.
    INVALID_TDMR = 0xC000_0A00_0000_0000;
    /// A PAMT area is malformed or too small.
    INVALID_PAMT = 0xC000_0A10_0000_0000;
    /// A PAMT area overlaps another PAMT area or lies outside the TDMRs.
    PAMT_OVERLAP = 0xC000_0A12_0000_0000;
    /// The S-EPT walk stopped above the requested level (RCX: entry found, RDX: level/state).
    EPT_WALK_FAILED = 0xC000_0B00_0000_0000;
    /// The S-EPT entry is free but must not be.
    EPT_ENTRY_FREE = 0xC000_0B01_0000_0000;
    /// The S-EPT entry must be free but is not.
    EPT_ENTRY_NOT_FREE = 0xC000_0B02_0000_0000;
    /// The S-EPT entry must be a leaf but points to a table.
    EPT_ENTRY_NOT_LEAF = 0xC000_0B04_0000_0000;
    /// The S-EPT entry must point to a table but is a leaf.
    EPT_ENTRY_LEAF = 0xC000_0B05_0000_0000;
    /// The range must be blocked (TDH.MEM.RANGE.BLOCK) first.
    GPA_RANGE_NOT_BLOCKED = 0xC000_0B06_0000_0000;
    /// Warning: the range is already blocked; nothing changed.
    GPA_RANGE_ALREADY_BLOCKED = 0x0000_0B07_0000_0000;
    /// The block epoch is not retired: TDH.MEM.TRACK and vCPU exits are needed first.
    TLB_TRACKING_NOT_DONE = 0xC000_0B08_0000_0000;
    /// PROMOTE: the 512 entries are not uniform, contiguous and aligned.
    EPT_INVALID_PROMOTE_CONDITIONS = 0xC000_0B09_0000_0000;
    /// Warning: the page is already accepted; nothing changed.
    PAGE_ALREADY_ACCEPTED = 0x0000_0B0A_0000_0000;
    /// The page is mapped at another size than requested.
    PAGE_SIZE_MISMATCH = 0xC000_0B0B_0000_0000;
    /// The S-EPT entry's state does not allow the call.
    EPT_ENTRY_STATE_INCORRECT = 0xC000_0B0D_0000_0000;
    /// SEPT.REMOVE: the table still maps something.
    EPT_PAGE_NOT_FREE = 0xC000_0B0E_0000_0000;
    /// VERIFYREPORT: the REPORTMACSTRUCT's MAC does not verify.
    INVALID_REPORTMACSTRUCT = 0xC000_1001_0000_0000;
    /// seamless: every TD slot of the TSM is in use.
    TD_SLOTS_EXHAUSTED = 0xC000_F000_0000_0000;
    /// seamless: a guest call named a vCPU that is not in guest mode.
    VCPU_NOT_IN_GUEST = 0xC000_F001_0000_0000;
    /// seamless: the TSM found its own metadata inconsistent; the TSM stops serving the TD.
    METADATA_CORRUPT = 0x6000_F002_0000_0000;
    /// seamless, not an error: a resumable device call wants this message moved to the device.
    /// R8 holds its length in the message page; call again with the device's answer.
    DEVICE_REQUEST = 0x0000_F100_0000_0000;
    /// The PDEV's state does not allow the call (for example CONNECT twice, TDI.CREATE before
    /// the device is connected).
    PDEV_STATE_INCORRECT = 0xC000_F101_0000_0000;
    /// The TDI's state does not allow the call (TDX_DEVIF_TDISP_INVALID_STATE).
    TDI_STATE_INCORRECT = 0xC000_F102_0000_0000;
    /// A device answer was handed in but no request is outstanding.
    NO_REQUEST_OUTSTANDING = 0xC000_F103_0000_0000;
    /// The device's answer failed a check: the PDEV (or TDI) is now ERROR. RCX names the
    /// protocol step (see docs/abi.md).
    DEVICE_ERROR = 0xC000_F104_0000_0000;
    /// TDI.START without the guest's authorisation.
    TDI_NOT_AUTHORISED = 0xC000_F105_0000_0000;
    /// TDI.START with an authorisation given for an earlier lock of the interface.
    TDI_AUTHORISATION_STALE = 0xC000_F106_0000_0000;
    /// The TDI still has private MMIO mapped (TDX_DEVIF_HAS_MAPPED_MMIO).
    TDI_HAS_MAPPED_MMIO = 0xC000_F107_0000_0000;
    /// The TDI still has a DMA remapping entry (TDX_DEVIF_HAS_MAPPED_DMA).
    TDI_HAS_MAPPED_DMA = 0xC000_F108_0000_0000;
    /// The TD still has TDIs bound (TDX_TD_HAS_ATTACHED_DEVICES).
    TD_HAS_ATTACHED_DEVICES = 0xC000_F109_0000_0000;
    /// The PDEV still has IDE streams (TDX_SPDM_HAS_ACTIVE_IDE_STREAMS).
    PDEV_HAS_IDE_STREAMS = 0xC000_F10A_0000_0000;
    /// The PDEV still has TDIs.
    PDEV_HAS_TDIS = 0xC000_F10B_0000_0000;
    /// The IDE stream's state does not allow the call (DELETE before BLOCK, KM on a blocked
    /// stream, LOCK over a stream without live keys).
    IDE_STREAM_STATE_INCORRECT = 0xC000_F10C_0000_0000;
    /// DMABUF.IMPORT: the pages are not the range the locked interface report names.
    MMIO_NOT_IN_REPORT = 0xC000_F10D_0000_0000;
    /// MMIO.MAP: the MMIO page belongs to no TDI of this TD; MMIO.ACCEPT: the page mapped there
    /// was not imported by the TDI the guest named (TDX_MMIO_DEVIF_OWNER_MISMATCH).
    MMIO_OWNER_MISMATCH = 0xC000_F10E_0000_0000;
    /// The MMIO range was revoked by its exporter; it can only be unmapped.
    MMIO_REVOKED = 0xC000_F10F_0000_0000;
    /// MMIO.MAP: the GPA breaks the range's linear placement fixed by its first mapping.
    MMIO_GPA_MISMATCH = 0xC000_F110_0000_0000;
    /// MMIO.ACCEPT: the page mapped there is not the one at that offset of the range
    /// (TDX_MMIO_INVALID_HPA_OFFSET).
    MMIO_INVALID_HPA_OFFSET = 0xC000_F111_0000_0000;
    /// MMIO.ACCEPT: range index or offset outside the report (MMIO_PAGE_NOT_IN_ASSOC_RANGE).
    MMIO_OUT_OF_RANGE = 0xC000_F112_0000_0000;
    /// Guest: no TDI of this TD has that function id (TDI_NOT_PRESENT).
    TDI_NOT_PRESENT = 0xC000_F113_0000_0000;
    /// The DMA remapping entry's state does not allow the call (DMAR_INVALID_MAPPING_STATE).
    DMAR_STATE_INCORRECT = 0xC000_F114_0000_0000;
    /// Every PDEV or TDI slot of the TSM is in use.
    DEVICE_SLOTS_EXHAUSTED = 0xC000_F115_0000_0000;
    /// The function already has a PDEV or TDI.
    FUNCTION_IN_USE = 0xC000_F116_0000_0000;
    /// The answer handed in does not open under the session's keys (replayed, forged, another
    /// session's): nothing changed, the request is still outstanding.
    ANSWER_NOT_AUTHENTIC = 0x8000_F117_0000_0000;
    /// The trusted IOMMU is not set up, already set up, or still has DMA entries.
    IOMMU_STATE_INCORRECT = 0xC000_F118_0000_0000;
    /// The TDI named is bound to another TD than the one named.
    TDI_NOT_BOUND_TO_TD = 0xC000_F119_0000_0000;
    /// The TSM was given no platform secret at boot: it has no key to sign reports with.
    ATTESTATION_NOT_PROVISIONED = 0xC000_F11A_0000_0000;
    /// A buffer the guest named (its GPA and the leaf's length) would run past the end of its
    /// 4K page: refused before anything is read or written. The operand names the register.
    BUFFER_CROSSES_PAGE = 0xC000_F120_0000_0000;
    /// TDI.CREATE: the TD already has as many TDIs bound as its attestation report has device
    /// entries (`attest::report::MAX_DEVICES`): a further one would run unseen by the verifier.
    TD_MAX_TDIS_EXCEEDED = 0xC000_F121_0000_0000;
    /// The DMA remapping unit is absent, lacks a capability the TSM needs (queued invalidation,
    /// scalable mode, second-stage translation), or did not complete a command in time.
    IOMMU_UNIT_ERROR = 0xC000_F130_0000_0000;
    /// DMAR.ADD: the TD's S-EPT depth is one the remapping unit's CAP.SAGAW lacks (a GPAW-52,
    /// 5-level S-EPT on a 48-bit unit such as QEMU's intel-iommu).
    DMAR_WIDTH_UNSUPPORTED = 0xC000_F131_0000_0000;
}

impl Status {
    /// Mask of the bits that name the status (everything but the operand id).
    pub const CODE_MASK: u64 = 0xFFFF_FFFF_0000_0000;

    /// True for errors (bit 63); warnings and success are not errors.
    pub const fn is_error(self) -> bool {
        self.0 >> 63 == 1
    }

    /// True when retrying the same call cannot succeed (bit 62).
    pub const fn is_non_recoverable(self) -> bool {
        (self.0 >> 62) & 1 == 1
    }

    /// The status without the operand id.
    pub const fn code(self) -> Status {
        Status(self.0 & Self::CODE_MASK)
    }

    /// The operand id in bits 31:0.
    pub const fn operand_id(self) -> u32 {
        self.0 as u32
    }

    /// The status with `operand` in bits 31:0.
    pub const fn with_operand(self, operand: Operand) -> Status {
        Status((self.0 & Self::CODE_MASK) | operand as u64)
    }
}

impl fmt::Debug for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.code().name() {
            Some(name) if self.operand_id() != 0 => {
                write!(f, "{name}({:#018x}, operand {:#x})", self.0, self.operand_id())
            }
            Some(name) => write!(f, "{name}({:#018x})", self.0),
            None => write!(f, "Status({:#018x})", self.0),
        }
    }
}

/// Operand ids, as the TDX module numbers them: general-purpose registers by their encoding,
/// TSM objects from 0x80.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Operand {
    /// No particular operand.
    None = 0,
    /// RCX.
    Rcx = 1,
    /// RDX.
    Rdx = 2,
    /// R8.
    R8 = 8,
    /// R9.
    R9 = 9,
    /// R10.
    R10 = 10,
    /// The TD's root page (TDR).
    Tdr = 0x80,
    /// The TD's control pages (TDCS).
    Tdcs = 0x81,
    /// A vCPU's root page (TDVPR).
    Tdvpr = 0x82,
    /// The TD's secure EPT.
    Sept = 0x92,
    /// A PDEV (the device's SPDM context; seamless id).
    Pdev = 0xA0,
    /// A TDI (seamless id).
    Tdi = 0xA1,
    /// An IDE stream of a PDEV (seamless id).
    IdeStream = 0xA2,
    /// The device's answer (seamless id).
    Device = 0xA3,
    /// TD_PARAMS.ATTRIBUTES (seamless id).
    TdParamsAttributes = 0xC0,
    /// TD_PARAMS.XFAM (seamless id).
    TdParamsXfam = 0xC1,
    /// TD_PARAMS.MAX_VCPUS (seamless id).
    TdParamsMaxVcpus = 0xC2,
    /// TD_PARAMS.EPTP_CONTROLS (seamless id).
    TdParamsEptpControls = 0xC3,
    /// TD_PARAMS.CONFIG_FLAGS (seamless id).
    TdParamsConfigFlags = 0xC4,
    /// TD_PARAMS reserved bytes (seamless id).
    TdParamsReserved = 0xC5,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_keep_tdx_shape() {
        assert!(Status::OPERAND_BUSY.is_error() && !Status::OPERAND_BUSY.is_non_recoverable());
        assert!(!Status::PAGE_ALREADY_ACCEPTED.is_error());
        assert!(!Status::GPA_RANGE_ALREADY_BLOCKED.is_error());
        let s = Status::OPERAND_INVALID.with_operand(Operand::R8);
        assert_eq!(s.0, 0xC000_0100_0000_0008);
        assert_eq!(s.code(), Status::OPERAND_INVALID);
        assert_eq!(s.code().name(), Some("OPERAND_INVALID"));
    }

    #[test]
    fn every_code_is_distinct() {
        for (i, (_, a)) in Status::ALL.iter().enumerate() {
            for (_, b) in &Status::ALL[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }
}
