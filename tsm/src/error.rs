//! The crate error, and its one translation to ABI status words.

use crate::status::{Operand, Status};

/// Why an S-EPT entry was not what the call needed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeptErrorKind {
    /// The walk stopped above the requested level.
    WalkFailed,
    /// The entry is free.
    EntryFree,
    /// The entry is not free.
    EntryNotFree,
    /// The entry points to a table.
    EntryNotLeaf,
    /// The entry is a leaf.
    EntryLeaf,
    /// The entry is not blocked.
    NotBlocked,
    /// The entry's block epoch is not retired.
    TrackingNotDone,
    /// The table cannot be promoted.
    InvalidPromote,
    /// The entry maps another page size.
    SizeMismatch,
    /// The entry's state does not allow the call.
    StateIncorrect,
    /// The table still holds mappings.
    TableNotEmpty,
}

/// An S-EPT state error with the entry and level the walk found, returned to the host in RCX
/// and RDX like the TDX module's `set_arch_septe_details_in_vmm_regs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeptFault {
    /// What was wrong.
    pub kind: SeptErrorKind,
    /// The raw entry found.
    pub entry: u64,
    /// The level at which the walk stopped or the entry sits.
    pub level: u8,
    /// The entry's state code ([`crate::sept::SeptState`] as `u8`).
    pub state: u8,
}

impl SeptFault {
    /// RDX as TDX lays it out: level in bits 2:0, state in bits 15:8.
    pub const fn level_state(&self) -> u64 {
        (self.level as u64 & 7) | ((self.state as u64) << 8)
    }
}

/// Every way a TSM call can fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TsmError {
    /// RAX names no leaf.
    UnknownLeaf,
    /// A malformed operand.
    OperandInvalid(Operand),
    /// An address outside managed or readable memory.
    AddrRange(Operand),
    /// The object is in use.
    Busy(Operand),
    /// A vCPU still runs in the previous TLB epoch.
    PrevEpochBusy,
    /// The entropy source failed.
    NoEntropy,
    /// Wrong PAMT page type for the operand.
    PageMetadata(Operand),
    /// The page belongs to another TD.
    NotOwnedByTd(Operand),
    /// The page is not free.
    PageNotFree(Operand),
    /// The TD still owns pages.
    AssociatedPagesExist,
    /// TDH.SYS.CONFIG not done.
    SysNotReady,
    /// TDH.SYS.CONFIG already done.
    SysConfigDone,
    /// TDH.MNG.INIT not done.
    TdNotInitialized,
    /// TDH.MNG.INIT already done.
    TdInitialized,
    /// TDH.MR.FINALIZE not done.
    TdNotFinalized,
    /// TDH.MR.FINALIZE already done.
    TdFinalized,
    /// The TD's lifecycle state forbids the call.
    Lifecycle,
    /// Wrong number of TDCS pages.
    TdcxNum,
    /// Too many vCPUs.
    MaxVcpus,
    /// A vCPU is still in guest mode.
    FlushVpNotDone,
    /// A bad TDMR.
    InvalidTdmr(Operand),
    /// A bad PAMT area.
    InvalidPamt(Operand),
    /// Overlapping PAMT areas.
    PamtOverlap(Operand),
    /// An S-EPT state error.
    Sept(Operand, SeptFault),
    /// A REPORTMACSTRUCT whose MAC does not verify.
    InvalidReportMac,
    /// No TD slot left.
    TdSlotsExhausted,
    /// A guest call from a vCPU not in guest mode.
    VcpuNotInGuest,
    /// VEINFO.GET with no #VE delivered since the last read.
    NoValidVeInfo,
    /// TSM metadata is inconsistent.
    Corrupt,
    /// The PDEV's state forbids the call.
    PdevState,
    /// The TDI's state forbids the call.
    TdiState,
    /// A device answer came in with no request outstanding.
    NoRequestOutstanding,
    /// The device's answer failed a check; the object named is now in ERROR.
    Device(Operand, DeviceFault),
    /// TDI.START without the guest's authorisation.
    NotAuthorised,
    /// TDI.START with an authorisation for an earlier lock.
    AuthorisationStale,
    /// The TDI has private MMIO mapped.
    HasMappedMmio,
    /// The TDI has a DMA remapping entry.
    HasMappedDma,
    /// The TD has TDIs bound.
    TdHasDevices,
    /// The PDEV has IDE streams.
    HasIdeStreams,
    /// The PDEV has TDIs.
    HasTdis,
    /// The IDE stream's state forbids the call.
    IdeStreamState,
    /// The MMIO pages are not what the interface report names.
    MmioNotInReport(Operand),
    /// The MMIO page belongs to no TDI of the TD.
    MmioOwner(Operand),
    /// The MMIO range was revoked.
    MmioRevoked,
    /// The GPA breaks the range's placement.
    MmioGpaMismatch,
    /// The page mapped is not the one at that offset of the range.
    MmioHpaOffset,
    /// Range index or offset outside the report.
    MmioOutOfRange(Operand),
    /// No TDI of the TD has that function.
    TdiNotPresent(Operand),
    /// The DMA remapping entry's state forbids the call.
    DmarState,
    /// No PDEV or TDI slot left.
    DeviceSlotsExhausted,
    /// The function already has a PDEV or TDI.
    FunctionInUse(Operand),
    /// The answer does not open under the session keys; nothing changed.
    AnswerNotAuthentic(crate::spdm::SpdmError),
    /// The trusted IOMMU refused (its own error says which frame or state).
    Iommu(crate::iommu::IommuError),
    /// The TDI is bound to another TD.
    TdiNotBound,
    /// The TSM has no platform secret: it cannot sign reports.
    NotProvisioned,
    /// A guest buffer would cross the end of its page.
    CrossesPage(Operand),
    /// The TD has as many TDIs as its report holds.
    TdMaxTdis,
}

/// The register that named a donated IOMMU table frame in TDH.IOMMU.SETUP / TDH.DMAR.ADD.
const fn frame_operand(role: crate::iommu::FrameRole) -> Operand {
    match role {
        crate::iommu::FrameRole::RootTable => Operand::Rcx,
        crate::iommu::FrameRole::ContextTable => Operand::R8,
        crate::iommu::FrameRole::PasidDirectory => Operand::R9,
        crate::iommu::FrameRole::PasidTable => Operand::R10,
    }
}

/// The one translation of the IOMMU's errors to status words.
const fn iommu_status(e: crate::iommu::IommuError) -> Status {
    use crate::iommu::IommuError as E;
    match e {
        E::FrameMissing(role) | E::FrameDuplicate(role) => Status::OPERAND_INVALID.with_operand(frame_operand(role)),
        E::FrameNotConvertible(role) => Status::OPERAND_ADDR_RANGE_ERROR.with_operand(frame_operand(role)),
        E::FrameNotFree(role) => Status::PAGE_NOT_FREE.with_operand(frame_operand(role)),
        E::PasidReserved | E::PasidOutOfRange | E::SegmentNotServed => {
            Status::OPERAND_INVALID.with_operand(Operand::Tdi)
        }
        E::DomainsExhausted | E::BindingsExhausted | E::HostDevicesExhausted => Status::DEVICE_SLOTS_EXHAUSTED,
        // DMAR.ADD of a function the host keeps (the TDI names it).
        E::HostDevice => Status::DMAR_STATE_INCORRECT.with_operand(Operand::Tdi),
        // HOST.ATTACH of a function with DMAR entries (RCX names it).
        E::NotHostDevice => Status::DMAR_STATE_INCORRECT.with_operand(Operand::Rcx),
        E::NoHostMap => Status::IOMMU_STATE_INCORRECT,
        E::EntryInUse(_) | E::EntryNotFound | E::NotOwner | E::EntryBlocked | E::NotBlocked | E::DomainNotFound => {
            Status::DMAR_STATE_INCORRECT.with_operand(Operand::Tdi)
        }
        E::TrackingNotDone => Status::TLB_TRACKING_NOT_DONE.with_operand(Operand::Tdi),
        E::EntriesExist | E::NotSetUp => Status::IOMMU_STATE_INCORRECT,
        // The DID, the S-EPT root and the table walk all come from the TSM's own state.
        E::DomainIdInvalid | E::DomainInUse | E::DomainMismatch | E::SeptRootInvalid | E::Corrupt => {
            Status::METADATA_CORRUPT
        }
        E::WidthUnsupported { .. } => Status::DMAR_WIDTH_UNSUPPORTED.with_operand(Operand::Rcx),
        E::Unsuitable(_) | E::Unit(_) => Status::IOMMU_UNIT_ERROR,
    }
}

/// Which step of a device protocol failed: returned in RCX with `DEVICE_ERROR` so that a host
/// sees where the device went wrong without decoding TSM internals (docs/abi.md lists them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceFault {
    /// SPDM.CONNECT failed (the connection's own error says at which stage).
    Connect(crate::spdm::connect::ConnectError),
    /// A secured message from the device did not open (wrong session, MAC, length).
    Secured(crate::spdm::SpdmError),
    /// A secured message carried something other than the SPDM answer expected.
    Spdm(crate::spdm::SpdmError),
    /// A TDISP answer was refused (TDISP_ERROR included).
    Tdisp(crate::tdisp::TdispError),
    /// The TDI reported a state other than the one its request leads to.
    TdiState(crate::tdisp::TdiState),
    /// The DEVICE_INTERFACE_REPORT was refused.
    Report(crate::tdisp::ReportError),
    /// The device cannot lock with the flags asked for.
    LockFlags(u16),
    /// An IDE_KM answer was refused.
    IdeKm(crate::idekm::IdeKmError),
    /// The root port refused a key operation the device acknowledged.
    RootPort(crate::ide::IdeError),
    /// The host abandoned the exchange (SPDM.MNG ABORT): what the device did is unknown.
    Aborted,
    /// The exporter revoked the TDI's MMIO (DMABUF.REVOKE) while it was locked or running.
    Revoked,
    /// The IDE stream the TDI's traffic runs over was blocked.
    StreamBlocked,
    /// The keys of the IDE stream the TDI's traffic runs over were stopped (IDE.STREAM.KM STOP).
    StreamStopped,
}

impl DeviceFault {
    /// The code returned in RCX: protocol in bits 15:8, step detail in 7:0.
    pub const fn code(&self) -> u64 {
        match self {
            DeviceFault::Connect(e) => {
                let stage = match e {
                    crate::spdm::connect::ConnectError::Discovery(_) => 0,
                    crate::spdm::connect::ConnectError::NoSpdm => 1,
                    crate::spdm::connect::ConnectError::Spdm(stage, _) => 2 + *stage as u64,
                };
                0x100 | stage
            }
            DeviceFault::Secured(_) => 0x200,
            DeviceFault::Spdm(_) => 0x201,
            DeviceFault::Tdisp(_) => 0x300,
            DeviceFault::TdiState(s) => 0x310 | *s as u64,
            DeviceFault::Report(_) => REPORT_STEP,
            DeviceFault::LockFlags(_) => 0x330,
            DeviceFault::IdeKm(_) => 0x400,
            DeviceFault::RootPort(_) => 0x410,
            DeviceFault::Aborted => 0x500,
            DeviceFault::Revoked => 0x600,
            DeviceFault::StreamBlocked => 0x610,
            DeviceFault::StreamStopped => 0x620,
        }
    }
}

/// RCX of `DEVICE_ERROR` when the interface report was refused; RDX then says why
/// ([`crate::tdisp::ReportError::detail`]).
pub const REPORT_STEP: u64 = 0x320;

impl DeviceFault {
    /// The detail returned in RDX beside [`DeviceFault::code`]: for the interface report, why
    /// it was refused ([`crate::tdisp::ReportError::detail`]); 0 for every other step.
    pub const fn detail(&self) -> u64 {
        match self {
            DeviceFault::Report(e) => e.detail(),
            _ => 0,
        }
    }
}

impl TsmError {
    /// The status word for this error: the one place errors become ABI values.
    pub const fn status(&self) -> Status {
        use TsmError::*;
        match *self {
            UnknownLeaf => Status::OPERAND_INVALID,
            OperandInvalid(op) => Status::OPERAND_INVALID.with_operand(op),
            AddrRange(op) => Status::OPERAND_ADDR_RANGE_ERROR.with_operand(op),
            Busy(op) => Status::OPERAND_BUSY.with_operand(op),
            PrevEpochBusy => Status::PREVIOUS_TLB_EPOCH_BUSY.with_operand(Operand::Tdr),
            NoEntropy => Status::RND_NO_ENTROPY,
            PageMetadata(op) => Status::PAGE_METADATA_INCORRECT.with_operand(op),
            NotOwnedByTd(op) => Status::PAGE_NOT_OWNED_BY_TD.with_operand(op),
            PageNotFree(op) => Status::PAGE_NOT_FREE.with_operand(op),
            AssociatedPagesExist => Status::TD_ASSOCIATED_PAGES_EXIST,
            SysNotReady => Status::SYS_NOT_READY,
            SysConfigDone => Status::SYS_CONFIG_NOT_PENDING,
            TdNotInitialized => Status::TD_NOT_INITIALIZED,
            TdInitialized => Status::TD_INITIALIZED,
            TdNotFinalized => Status::TD_NOT_FINALIZED,
            TdFinalized => Status::TD_FINALIZED,
            Lifecycle => Status::LIFECYCLE_STATE_INCORRECT,
            TdcxNum => Status::TDCX_NUM_INCORRECT,
            MaxVcpus => Status::MAX_VCPUS_EXCEEDED,
            FlushVpNotDone => Status::FLUSHVP_NOT_DONE,
            InvalidTdmr(op) => Status::INVALID_TDMR.with_operand(op),
            InvalidPamt(op) => Status::INVALID_PAMT.with_operand(op),
            PamtOverlap(op) => Status::PAMT_OVERLAP.with_operand(op),
            Sept(op, fault) => {
                let code = match fault.kind {
                    SeptErrorKind::WalkFailed => Status::EPT_WALK_FAILED,
                    SeptErrorKind::EntryFree => Status::EPT_ENTRY_FREE,
                    SeptErrorKind::EntryNotFree => Status::EPT_ENTRY_NOT_FREE,
                    SeptErrorKind::EntryNotLeaf => Status::EPT_ENTRY_NOT_LEAF,
                    SeptErrorKind::EntryLeaf => Status::EPT_ENTRY_LEAF,
                    SeptErrorKind::NotBlocked => Status::GPA_RANGE_NOT_BLOCKED,
                    SeptErrorKind::TrackingNotDone => Status::TLB_TRACKING_NOT_DONE,
                    SeptErrorKind::InvalidPromote => Status::EPT_INVALID_PROMOTE_CONDITIONS,
                    SeptErrorKind::SizeMismatch => Status::PAGE_SIZE_MISMATCH,
                    SeptErrorKind::StateIncorrect => Status::EPT_ENTRY_STATE_INCORRECT,
                    SeptErrorKind::TableNotEmpty => Status::EPT_PAGE_NOT_FREE,
                };
                code.with_operand(op)
            }
            InvalidReportMac => Status::INVALID_REPORTMACSTRUCT.with_operand(Operand::Rcx),
            TdSlotsExhausted => Status::TD_SLOTS_EXHAUSTED,
            VcpuNotInGuest => Status::VCPU_NOT_IN_GUEST.with_operand(Operand::Tdvpr),
            NoValidVeInfo => Status::NO_VALID_VE_INFO,
            Corrupt => Status::METADATA_CORRUPT,
            PdevState => Status::PDEV_STATE_INCORRECT.with_operand(Operand::Pdev),
            TdiState => Status::TDI_STATE_INCORRECT.with_operand(Operand::Tdi),
            NoRequestOutstanding => Status::NO_REQUEST_OUTSTANDING.with_operand(Operand::R8),
            Device(op, _) => Status::DEVICE_ERROR.with_operand(op),
            NotAuthorised => Status::TDI_NOT_AUTHORISED.with_operand(Operand::Tdi),
            AuthorisationStale => Status::TDI_AUTHORISATION_STALE.with_operand(Operand::Tdi),
            HasMappedMmio => Status::TDI_HAS_MAPPED_MMIO.with_operand(Operand::Tdi),
            HasMappedDma => Status::TDI_HAS_MAPPED_DMA.with_operand(Operand::Tdi),
            TdHasDevices => Status::TD_HAS_ATTACHED_DEVICES.with_operand(Operand::Tdr),
            HasIdeStreams => Status::PDEV_HAS_IDE_STREAMS.with_operand(Operand::Pdev),
            HasTdis => Status::PDEV_HAS_TDIS.with_operand(Operand::Pdev),
            IdeStreamState => Status::IDE_STREAM_STATE_INCORRECT.with_operand(Operand::IdeStream),
            MmioNotInReport(op) => Status::MMIO_NOT_IN_REPORT.with_operand(op),
            MmioOwner(op) => Status::MMIO_OWNER_MISMATCH.with_operand(op),
            MmioRevoked => Status::MMIO_REVOKED.with_operand(Operand::Tdi),
            MmioGpaMismatch => Status::MMIO_GPA_MISMATCH.with_operand(Operand::Rcx),
            MmioHpaOffset => Status::MMIO_INVALID_HPA_OFFSET.with_operand(Operand::R9),
            MmioOutOfRange(op) => Status::MMIO_OUT_OF_RANGE.with_operand(op),
            TdiNotPresent(op) => Status::TDI_NOT_PRESENT.with_operand(op),
            DmarState => Status::DMAR_STATE_INCORRECT.with_operand(Operand::Tdi),
            DeviceSlotsExhausted => Status::DEVICE_SLOTS_EXHAUSTED,
            FunctionInUse(op) => Status::FUNCTION_IN_USE.with_operand(op),
            AnswerNotAuthentic(_) => Status::ANSWER_NOT_AUTHENTIC.with_operand(Operand::R8),
            Iommu(e) => iommu_status(e),
            TdiNotBound => Status::TDI_NOT_BOUND_TO_TD.with_operand(Operand::Rdx),
            NotProvisioned => Status::ATTESTATION_NOT_PROVISIONED,
            CrossesPage(op) => Status::BUFFER_CROSSES_PAGE.with_operand(op),
            TdMaxTdis => Status::TD_MAX_TDIS_EXCEEDED.with_operand(Operand::Rcx),
        }
    }

    /// The details the dispatcher returns in RCX and RDX: for S-EPT errors the entry and its
    /// level/state, for `DEVICE_ERROR` the step and its detail ([`DeviceFault::code`],
    /// [`DeviceFault::detail`]).
    pub const fn sept_details(&self) -> Option<(u64, u64)> {
        match self {
            TsmError::Sept(_, fault) => Some((fault.entry, fault.level_state())),
            TsmError::Device(_, fault) => Some((fault.code(), fault.detail())),
            _ => None,
        }
    }
}

/// Shorthand for TSM results.
pub type TsmResult<T> = Result<T, TsmError>;
