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
    /// TSM metadata is inconsistent.
    Corrupt,
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
            Corrupt => Status::METADATA_CORRUPT,
        }
    }

    /// The S-EPT details the dispatcher returns in RCX (entry) and RDX (level/state).
    pub const fn sept_details(&self) -> Option<(u64, u64)> {
        match self {
            TsmError::Sept(_, fault) => Some((fault.entry, fault.level_state())),
            _ => None,
        }
    }
}

/// Shorthand for TSM results.
pub type TsmResult<T> = Result<T, TsmError>;
