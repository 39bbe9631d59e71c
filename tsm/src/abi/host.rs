//! The host ABI: the table of SEAMCALL-shaped leaves, and the handlers for the TSM, TD and vCPU
//! objects. S-EPT and memory leaves are in `host_mem.rs`.
//!
//! Every handler checks everything first, in the order its table row lists the errors, then
//! commits after the line marked `ALL CHECKS PASSED`, after which nothing can fail.

use crate::abi::{LeafSpec, Reg, Regs};
use crate::addr::{FrameRange, HostPhysAddr, PageSize};
use crate::error::{TsmError, TsmResult};
use crate::measure;
use crate::pamt::{self, PageType, Pamt, PamtEntry, Tdmr};
use crate::platform::Platform;
use crate::state::Sys;
use crate::status::{Operand, Status};
use crate::td::{Lifecycle, Td, TdParams, Vcpu, MAX_TDS, MAX_VCPUS, TDCS_PAGES, TD_PARAMS_BYTES};
use crate::Tsm;

/// A host handler: reads the input registers, writes outputs, returns success or a warning.
pub type HostHandler<P> = fn(&mut Tsm<P>, &Regs, &mut Regs) -> TsmResult<Status>;

/// One row of the host ABI table.
#[derive(Debug)]
pub struct HostLeaf<P: Platform> {
    /// Documentation and identity of the leaf.
    pub spec: LeafSpec,
    /// Its handler.
    pub handler: HostHandler<P>,
}

/// Leaf numbers (TDX's where TDX has the leaf).
#[allow(missing_docs)]
pub mod leaf {
    pub const VP_ENTER: u64 = 0;
    pub const MNG_ADDCX: u64 = 1;
    pub const MEM_PAGE_ADD: u64 = 2;
    pub const MEM_SEPT_ADD: u64 = 3;
    pub const MEM_PAGE_AUG: u64 = 6;
    pub const MEM_RANGE_BLOCK: u64 = 7;
    pub const MNG_CREATE: u64 = 9;
    pub const VP_CREATE: u64 = 10;
    pub const MEM_PAGE_DEMOTE: u64 = 15;
    pub const MR_EXTEND: u64 = 16;
    pub const MR_FINALIZE: u64 = 17;
    pub const MNG_VPFLUSHDONE: u64 = 19;
    pub const MNG_INIT: u64 = 21;
    pub const MEM_PAGE_PROMOTE: u64 = 23;
    pub const PHYMEM_PAGE_RDMD: u64 = 24;
    pub const MEM_SEPT_RD: u64 = 25;
    pub const PHYMEM_PAGE_RECLAIM: u64 = 28;
    pub const MEM_PAGE_REMOVE: u64 = 29;
    pub const MEM_SEPT_REMOVE: u64 = 30;
    pub const SYS_INFO: u64 = 32;
    pub const MEM_TRACK: u64 = 38;
    pub const MEM_RANGE_UNBLOCK: u64 = 39;
    pub const SYS_CONFIG: u64 = 45;
    pub const IOMMU_SETUP: u64 = 128;
    pub const IOMMU_CLEAR: u64 = 129;
    pub const SPDM_CREATE: u64 = 130;
    pub const SPDM_DELETE: u64 = 131;
    pub const IDE_STREAM_CREATE: u64 = 132;
    pub const IDE_STREAM_BLOCK: u64 = 133;
    pub const IDE_STREAM_DELETE: u64 = 134;
    pub const IDE_STREAM_KM: u64 = 135;
    pub const TDI_CREATE: u64 = 137;
    pub const TDI_REMOVE: u64 = 138;
    pub const SPDM_CONNECT: u64 = 142;
    pub const SPDM_DISCONNECT: u64 = 143;
    pub const SPDM_MNG: u64 = 144;
    pub const DMAR_ADD: u64 = 150;
    pub const DMAR_BLOCK: u64 = 151;
    pub const DMAR_REMOVE: u64 = 153;
    pub const MMIO_MAP: u64 = 158;
    pub const MMIO_BLOCK: u64 = 159;
    pub const MMIO_UNMAP: u64 = 160;
    pub const IQ_INV_REQUEST: u64 = 161;
    pub const VP_KICK: u64 = 0x8000;
    pub const HOST_FAULT_RD: u64 = 0x8001;
    pub const SHARED_EPT_SET: u64 = 0x8002;
    pub const VP_POST: u64 = 0x8003;
    pub const SYS_DIGEST: u64 = 0x8004;
    pub const TD_MR_RD: u64 = 0x8005;
    pub const TDI_LOCK: u64 = 0x8010;
    pub const TDI_START: u64 = 0x8011;
    pub const TDI_STOP: u64 = 0x8012;
    pub const DMABUF_IMPORT: u64 = 0x8013;
    pub const DMABUF_REVOKE: u64 = 0x8014;
    pub const TDI_EVIDENCE_RD: u64 = 0x8015;
    pub const IOMMU_FAULT_RD: u64 = 0x8030;
    pub const IOMMU_HOST_ATTACH: u64 = 0x8031;
    pub const IOMMU_HOST_DETACH: u64 = 0x8032;
    pub const IOMMU_TRANSLATE: u64 = 0x8033;
}

/// Bytes of one TDMR_INFO entry: base, size, PAMT base, PAMT size (u64 each).
pub const TDMR_INFO_BYTES: usize = 32;

const TDR_IN: (Reg, &str) = (Reg::Rdx, "TDR page address");
const GPA_LEVEL: (Reg, &str) = (Reg::Rcx, "GPA (51:12) and level (2:0)");
const SEPT_DETAILS: &[(Reg, &str)] =
    &[(Reg::Rcx, "S-EPT entry found"), (Reg::Rdx, "level (2:0) and state (15:8) of that entry")];

impl<P: Platform> Tsm<P> {
    /// The host ABI table, sorted by leaf number.
    pub const HOST_LEAVES: &'static [HostLeaf<P>] = &[
        HostLeaf {
            spec: LeafSpec {
                number: leaf::VP_ENTER,
                name: "TDH.VP.ENTER",
                summary: "Puts the vCPU in guest mode in the TD's current TLB epoch. Where the firmware runs the TD as an SVM guest (its TD world) the call returns only at the next TD exit, RAX the VMX exit reason in bits 31:0 under status class SUCCESS (77 TDG.VP.VMCALL, 48 EPT violation, 2 triple fault, 1 external interrupt: the TSM's preemption timer ended the vCPU's time slice and the host may enter it again), the registers below and nothing else of the TD (`TdExit::host_regs`); without a TD world (the in-process harness) it returns at once and the guest runs through the guest ABI as direct calls until a guest call exits or the host kicks the vCPU.",
                inputs: &[
                    (Reg::Rcx, "TDVPR page address"),
                    (Reg::R10, "after a VMCALL exit: the answer for each register it exposed (R10..R13 always; RDX, R8, R9, R14, R15 when exposed)"),
                ],
                outputs: &[
                    (Reg::Rcx, "VMCALL: the exposed-register mask (0x3C00 at least); EPT violation: the S-EPT entry found"),
                    (Reg::Rdx, "EPT violation: level found (2:0), level asked (10:8); VMCALL: RDX if exposed"),
                    (Reg::R8, "EPT violation: the GPA; VMCALL: R8 if exposed"),
                    (Reg::R10, "VMCALL: R10..R13 as the TD set them (R11..R13 likewise; R9, R14, R15 if exposed)"),
                ],
                requires: "TD finalized (RUNNABLE); vCPU not in guest mode.",
                errors: &[
                    (Status::SYS_NOT_READY, "TDH.SYS.CONFIG not done"),
                    (Status::OPERAND_INVALID, "RCX not a 4K-aligned address"),
                    (Status::OPERAND_ADDR_RANGE_ERROR, "RCX outside the TDMRs"),
                    (Status::PAGE_METADATA_INCORRECT, "RCX is not a TDVPR page"),
                    (Status::TD_NOT_FINALIZED, "TDH.MR.FINALIZE not done"),
                    (Status::LIFECYCLE_STATE_INCORRECT, "TD torn down"),
                    (Status::OPERAND_BUSY, "vCPU already in guest mode (operand TDVPR)"),
                ],
            },
            handler: Self::vp_enter,
        },
        HostLeaf {
            spec: LeafSpec {
                number: leaf::MNG_ADDCX,
                name: "TDH.MNG.ADDCX",
                summary: "Donates a TDCS control page. The first becomes the S-EPT root table, the second holds the measurement registers.",
                inputs: &[(Reg::Rcx, "page to donate"), TDR_IN],
                outputs: &[],
                requires: "TD CREATED (before TDH.MNG.INIT); fewer than 2 TDCS pages added.",
                errors: &[
                    (Status::SYS_NOT_READY, "TDH.SYS.CONFIG not done"),
                    (Status::OPERAND_INVALID, "RCX/RDX not 4K-aligned addresses"),
                    (Status::OPERAND_ADDR_RANGE_ERROR, "RCX/RDX outside the TDMRs"),
                    (Status::PAGE_NOT_FREE, "RCX page not free"),
                    (Status::PAGE_METADATA_INCORRECT, "RDX is not a TDR page"),
                    (Status::TD_INITIALIZED, "TD already initialized"),
                    (Status::LIFECYCLE_STATE_INCORRECT, "TD torn down"),
                    (Status::TDCX_NUM_INCORRECT, "all TDCS pages already added"),
                ],
            },
            handler: Self::mng_addcx,
        },
        HostLeaf {
            spec: LeafSpec {
                number: leaf::MEM_PAGE_ADD,
                name: "TDH.MEM.PAGE.ADD",
                summary: "Build time: copies a source page into a donated page and maps it MAPPED at a private 4K GPA; extends MRTD with the GPA (MEM.PAGE.ADD block).",
                inputs: &[GPA_LEVEL, TDR_IN, (Reg::R8, "page to donate"), (Reg::R9, "source page (host memory)")],
                outputs: &[],
                requires: "TD INITIALIZED and not finalized; level 0; S-EPT entry FREE with its tables present.",
                errors: &[
                    (Status::SYS_NOT_READY, "TDH.SYS.CONFIG not done"),
                    (Status::OPERAND_INVALID, "RCX reserved bits set or level not 0"),
                    (Status::PAGE_METADATA_INCORRECT, "RDX is not a TDR page"),
                    (Status::TD_NOT_INITIALIZED, "TDH.MNG.INIT not done"),
                    (Status::TD_FINALIZED, "TDH.MR.FINALIZE already done"),
                    (Status::LIFECYCLE_STATE_INCORRECT, "TD torn down"),
                    (Status::OPERAND_INVALID, "GPA beyond the TD's width or shared bit set (RCX)"),
                    (Status::PAGE_NOT_FREE, "R8 page not free"),
                    (Status::OPERAND_ADDR_RANGE_ERROR, "R9 not host memory the TSM may read"),
                    (Status::PAGE_METADATA_INCORRECT, "R9 is a page the TSM or a TD owns"),
                    (Status::OPERAND_INVALID, "R9 equals R8"),
                    (Status::EPT_WALK_FAILED, "a table on the path is missing"),
                    (Status::EPT_ENTRY_NOT_FREE, "the GPA is already mapped"),
                ],
            },
            handler: Self::mem_page_add,
        },
        HostLeaf {
            spec: LeafSpec {
                number: leaf::MEM_SEPT_ADD,
                name: "TDH.MEM.SEPT.ADD",
                summary: "Donates a page as an S-EPT table and links it under the FREE entry at the given level (level 1 adds a page table under a PDE, up to the root level).",
                inputs: &[GPA_LEVEL, TDR_IN, (Reg::R8, "page to donate")],
                outputs: &[],
                requires: "TD initialized, not torn down; 1 <= level <= root level; GPA aligned to the entry's coverage.",
                errors: &[
                    (Status::SYS_NOT_READY, "TDH.SYS.CONFIG not done"),
                    (Status::OPERAND_INVALID, "RCX reserved bits, level 0 or above the root, misaligned GPA, GPA beyond width or shared"),
                    (Status::PAGE_METADATA_INCORRECT, "RDX is not a TDR page"),
                    (Status::TD_NOT_INITIALIZED, "TDH.MNG.INIT not done"),
                    (Status::LIFECYCLE_STATE_INCORRECT, "TD torn down"),
                    (Status::PAGE_NOT_FREE, "R8 page not free"),
                    (Status::EPT_WALK_FAILED, "a table above is missing"),
                    (Status::EPT_ENTRY_NOT_FREE, "the entry already maps a table or page"),
                ],
            },
            handler: Self::mem_sept_add,
        },
        HostLeaf {
            spec: LeafSpec {
                number: leaf::MEM_PAGE_AUG,
                name: "TDH.MEM.PAGE.AUG",
                summary: "Runtime: maps a donated 4K/2M/1G block PENDING at a private GPA; the guest must TDG.MEM.PAGE.ACCEPT it, which zeroes it.",
                inputs: &[GPA_LEVEL, TDR_IN, (Reg::R8, "first frame of the block to donate")],
                outputs: &[],
                requires: "TD finalized; level 0..2; GPA and block aligned to the size; every frame free; entry FREE.",
                errors: &[
                    (Status::SYS_NOT_READY, "TDH.SYS.CONFIG not done"),
                    (Status::OPERAND_INVALID, "RCX reserved bits or level above 2"),
                    (Status::PAGE_METADATA_INCORRECT, "RDX is not a TDR page"),
                    (Status::TD_NOT_INITIALIZED, "TDH.MNG.INIT not done"),
                    (Status::TD_NOT_FINALIZED, "TDH.MR.FINALIZE not done (AUG before FINALIZE)"),
                    (Status::LIFECYCLE_STATE_INCORRECT, "TD torn down"),
                    (Status::OPERAND_INVALID, "GPA misaligned, beyond width or shared (RCX)"),
                    (Status::OPERAND_INVALID, "R8 misaligned for the size"),
                    (Status::OPERAND_ADDR_RANGE_ERROR, "a frame of R8 outside the TDMRs"),
                    (Status::PAGE_NOT_FREE, "a frame of R8 not free"),
                    (Status::EPT_WALK_FAILED, "a table on the path is missing"),
                    (Status::EPT_ENTRY_NOT_FREE, "the GPA is already mapped"),
                ],
            },
            handler: Self::mem_page_aug,
        },
        HostLeaf {
            spec: LeafSpec {
                number: leaf::MEM_RANGE_BLOCK,
                name: "TDH.MEM.RANGE.BLOCK",
                summary: "Blocks the entry at GPA/level (MAPPED->BLOCKED, PENDING->PENDING_BLOCKED, NL_MAPPED->NL_BLOCKED, MMIO->MMIO_BLOCKED) and records the TD's TLB epoch as the block epoch.",
                inputs: &[GPA_LEVEL, TDR_IN],
                outputs: SEPT_DETAILS,
                requires: "TD initialized, not torn down.",
                errors: &[
                    (Status::SYS_NOT_READY, "TDH.SYS.CONFIG not done"),
                    (Status::OPERAND_INVALID, "RCX reserved bits, level above the root, misaligned, beyond width or shared"),
                    (Status::PAGE_METADATA_INCORRECT, "RDX is not a TDR page"),
                    (Status::TD_NOT_INITIALIZED, "TDH.MNG.INIT not done"),
                    (Status::LIFECYCLE_STATE_INCORRECT, "TD torn down"),
                    (Status::EPT_WALK_FAILED, "a table on the path is missing"),
                    (Status::EPT_ENTRY_FREE, "nothing mapped there"),
                    (Status::GPA_RANGE_ALREADY_BLOCKED, "warning: already blocked, nothing changed"),
                ],
            },
            handler: Self::mem_range_block,
        },
        HostLeaf {
            spec: LeafSpec {
                number: leaf::MNG_CREATE,
                name: "TDH.MNG.CREATE",
                summary: "Creates a TD: the donated page becomes its TDR, the identity every page it will own names as owner.",
                inputs: &[(Reg::Rcx, "page to donate as TDR")],
                outputs: &[],
                requires: "A free TD slot.",
                errors: &[
                    (Status::SYS_NOT_READY, "TDH.SYS.CONFIG not done"),
                    (Status::OPERAND_INVALID, "RCX not a 4K-aligned address"),
                    (Status::OPERAND_ADDR_RANGE_ERROR, "RCX outside the TDMRs"),
                    (Status::PAGE_NOT_FREE, "RCX page not free"),
                    (Status::TD_SLOTS_EXHAUSTED, "all TD slots in use"),
                ],
            },
            handler: Self::mng_create,
        },
        HostLeaf {
            spec: LeafSpec {
                number: leaf::VP_CREATE,
                name: "TDH.VP.CREATE",
                summary: "Creates a vCPU: the donated page becomes its TDVPR.",
                inputs: &[(Reg::Rcx, "page to donate as TDVPR"), TDR_IN],
                outputs: &[(Reg::Rcx, "vCPU index")],
                requires: "TD initialized, not torn down; fewer vCPUs than TD_PARAMS.MAX_VCPUS.",
                errors: &[
                    (Status::SYS_NOT_READY, "TDH.SYS.CONFIG not done"),
                    (Status::OPERAND_INVALID, "RCX/RDX not 4K-aligned addresses"),
                    (Status::PAGE_NOT_FREE, "RCX page not free"),
                    (Status::PAGE_METADATA_INCORRECT, "RDX is not a TDR page"),
                    (Status::TD_NOT_INITIALIZED, "TDH.MNG.INIT not done"),
                    (Status::LIFECYCLE_STATE_INCORRECT, "TD torn down"),
                    (Status::MAX_VCPUS_EXCEEDED, "MAX_VCPUS reached"),
                ],
            },
            handler: Self::vp_create,
        },
        HostLeaf {
            spec: LeafSpec {
                number: leaf::MEM_PAGE_DEMOTE,
                name: "TDH.MEM.PAGE.DEMOTE",
                summary: "Splits a blocked 2M/1G leaf into 512 leaves of the next size in a donated table; the new leaves take the unblocked state (MAPPED or PENDING).",
                inputs: &[GPA_LEVEL, TDR_IN, (Reg::R8, "page to donate as the new table")],
                outputs: &[],
                requires: "Leaf BLOCKED or PENDING_BLOCKED at level 1 or 2; block epoch retired by TRACK.",
                errors: &[
                    (Status::SYS_NOT_READY, "TDH.SYS.CONFIG not done"),
                    (Status::OPERAND_INVALID, "RCX reserved bits, level not 1 or 2, misaligned, beyond width or shared"),
                    (Status::PAGE_METADATA_INCORRECT, "RDX is not a TDR page"),
                    (Status::TD_NOT_INITIALIZED, "TDH.MNG.INIT not done"),
                    (Status::LIFECYCLE_STATE_INCORRECT, "TD torn down"),
                    (Status::PAGE_NOT_FREE, "R8 page not free"),
                    (Status::EPT_WALK_FAILED, "a table on the path is missing"),
                    (Status::EPT_ENTRY_FREE, "nothing mapped there"),
                    (Status::EPT_ENTRY_NOT_LEAF, "the entry is a table"),
                    (Status::GPA_RANGE_NOT_BLOCKED, "the leaf is not blocked"),
                    (Status::TLB_TRACKING_NOT_DONE, "block epoch not retired"),
                ],
            },
            handler: Self::mem_page_demote,
        },
        HostLeaf {
            spec: LeafSpec {
                number: leaf::MR_EXTEND,
                name: "TDH.MR.EXTEND",
                summary: "Build time: extends MRTD with a 256-byte chunk of an added page (MR.EXTEND block plus the chunk's content).",
                inputs: &[(Reg::Rcx, "GPA of the chunk (256-byte aligned)"), TDR_IN],
                outputs: &[],
                requires: "TD INITIALIZED and not finalized; the 4K page MAPPED.",
                errors: &[
                    (Status::SYS_NOT_READY, "TDH.SYS.CONFIG not done"),
                    (Status::OPERAND_INVALID, "RCX not 256-byte aligned"),
                    (Status::PAGE_METADATA_INCORRECT, "RDX is not a TDR page"),
                    (Status::TD_NOT_INITIALIZED, "TDH.MNG.INIT not done"),
                    (Status::TD_FINALIZED, "TDH.MR.FINALIZE already done"),
                    (Status::LIFECYCLE_STATE_INCORRECT, "TD torn down"),
                    (Status::OPERAND_INVALID, "GPA beyond width or shared"),
                    (Status::EPT_WALK_FAILED, "no 4K leaf there"),
                    (Status::EPT_ENTRY_FREE, "page not added"),
                    (Status::EPT_ENTRY_STATE_INCORRECT, "page not MAPPED"),
                ],
            },
            handler: Self::mr_extend,
        },
        HostLeaf {
            spec: LeafSpec {
                number: leaf::MR_FINALIZE,
                name: "TDH.MR.FINALIZE",
                summary: "Finalizes MRTD (SHA-384 of the build blocks) and makes the TD runnable.",
                inputs: &[(Reg::Rcx, "TDR page address")],
                outputs: &[],
                requires: "TD INITIALIZED.",
                errors: &[
                    (Status::SYS_NOT_READY, "TDH.SYS.CONFIG not done"),
                    (Status::PAGE_METADATA_INCORRECT, "RCX is not a TDR page"),
                    (Status::TD_NOT_INITIALIZED, "TDH.MNG.INIT not done"),
                    (Status::TD_FINALIZED, "already finalized"),
                    (Status::LIFECYCLE_STATE_INCORRECT, "TD torn down"),
                ],
            },
            handler: Self::mr_finalize,
        },
        HostLeaf {
            spec: LeafSpec {
                number: leaf::MNG_VPFLUSHDONE,
                name: "TDH.MNG.VPFLUSHDONE",
                summary: "Starts teardown: no vCPU may run again; from now on every page of the TD is reclaimed with TDH.PHYMEM.PAGE.RECLAIM, the TDR last. (seamless has no HKIDs, so this also plays TDH.MNG.KEY.FREEID.)",
                inputs: &[(Reg::Rcx, "TDR page address")],
                outputs: &[],
                requires: "No vCPU in guest mode.",
                errors: &[
                    (Status::SYS_NOT_READY, "TDH.SYS.CONFIG not done"),
                    (Status::PAGE_METADATA_INCORRECT, "RCX is not a TDR page"),
                    (Status::LIFECYCLE_STATE_INCORRECT, "already torn down"),
                    (Status::FLUSHVP_NOT_DONE, "a vCPU is in guest mode: kick it"),
                    (Status::TD_HAS_ATTACHED_DEVICES, "a TDI is still bound to the TD (remove it first)"),
                ],
            },
            handler: Self::mng_vpflushdone,
        },
        HostLeaf {
            spec: LeafSpec {
                number: leaf::MNG_INIT,
                name: "TDH.MNG.INIT",
                summary: "Initializes the TD from TD_PARAMS (attributes, XFAM, MAX_VCPUS, GPAW 48/52 with 4/5-level S-EPT, MRCONFIGID, MROWNER, MROWNERCONFIG). The shared-GPA bit is GPAW-1.",
                inputs: &[(Reg::Rcx, "TDR page address"), (Reg::Rdx, "TD_PARAMS address (1024-byte aligned, host memory)")],
                outputs: &[],
                requires: "TD CREATED with both TDCS pages added.",
                errors: &[
                    (Status::SYS_NOT_READY, "TDH.SYS.CONFIG not done"),
                    (Status::PAGE_METADATA_INCORRECT, "RCX is not a TDR page"),
                    (Status::TD_INITIALIZED, "already initialized"),
                    (Status::LIFECYCLE_STATE_INCORRECT, "TD torn down"),
                    (Status::TDCX_NUM_INCORRECT, "TDCS pages missing"),
                    (Status::OPERAND_INVALID, "RDX not 1024-byte aligned"),
                    (Status::OPERAND_ADDR_RANGE_ERROR, "RDX not host memory the TSM may read"),
                    (Status::PAGE_METADATA_INCORRECT, "RDX is a page the TSM or a TD owns"),
                    (Status::OPERAND_INVALID, "a TD_PARAMS field is invalid (operand names the field)"),
                ],
            },
            handler: Self::mng_init,
        },
        HostLeaf {
            spec: LeafSpec {
                number: leaf::MEM_PAGE_PROMOTE,
                name: "TDH.MEM.PAGE.PROMOTE",
                summary: "Merges a blocked table of 512 uniform, contiguous, aligned leaves into one 2M/1G leaf; the table page is freed (zeroed).",
                inputs: &[GPA_LEVEL, TDR_IN],
                outputs: &[(Reg::Rcx, "address of the freed table page")],
                requires: "Entry NL_BLOCKED at level 1 or 2; block epoch retired; children all MAPPED or all PENDING, contiguous and aligned.",
                errors: &[
                    (Status::SYS_NOT_READY, "TDH.SYS.CONFIG not done"),
                    (Status::OPERAND_INVALID, "RCX reserved bits, level not 1 or 2, misaligned, beyond width or shared"),
                    (Status::PAGE_METADATA_INCORRECT, "RDX is not a TDR page"),
                    (Status::TD_NOT_INITIALIZED, "TDH.MNG.INIT not done"),
                    (Status::LIFECYCLE_STATE_INCORRECT, "TD torn down"),
                    (Status::EPT_WALK_FAILED, "a table on the path is missing"),
                    (Status::EPT_ENTRY_FREE, "nothing there"),
                    (Status::EPT_ENTRY_LEAF, "already a leaf"),
                    (Status::GPA_RANGE_NOT_BLOCKED, "the table entry is not blocked"),
                    (Status::TLB_TRACKING_NOT_DONE, "block epoch not retired"),
                    (Status::EPT_INVALID_PROMOTE_CONDITIONS, "children not uniform, contiguous and aligned (RCX/RDX: first bad child)"),
                ],
            },
            handler: Self::mem_page_promote,
        },
        HostLeaf {
            spec: LeafSpec {
                number: leaf::PHYMEM_PAGE_RDMD,
                name: "TDH.PHYMEM.PAGE.RDMD",
                summary: "Reads a frame's PAMT entry.",
                inputs: &[(Reg::Rcx, "frame address")],
                outputs: &[
                    (Reg::Rcx, "page type (TDX PT_* numbers)"),
                    (Reg::Rdx, "owner TDR address (0 if free)"),
                    (Reg::R8, "block epoch"),
                    (Reg::R9, "level (7:0), aux (15:8: TD slot for a TDR, vCPU index for a TDVPR)"),
                ],
                requires: "-",
                errors: &[
                    (Status::SYS_NOT_READY, "TDH.SYS.CONFIG not done"),
                    (Status::OPERAND_INVALID, "RCX not 4K-aligned"),
                    (Status::OPERAND_ADDR_RANGE_ERROR, "RCX outside the TDMRs"),
                ],
            },
            handler: Self::phymem_page_rdmd,
        },
        HostLeaf {
            spec: LeafSpec {
                number: leaf::MEM_SEPT_RD,
                name: "TDH.MEM.SEPT.RD",
                summary: "Reads the S-EPT entry at GPA/level.",
                inputs: &[GPA_LEVEL, TDR_IN],
                outputs: SEPT_DETAILS,
                requires: "TD initialized, not torn down (its tables may already be reclaimed).",
                errors: &[
                    (Status::SYS_NOT_READY, "TDH.SYS.CONFIG not done"),
                    (Status::OPERAND_INVALID, "RCX reserved bits, level above the root, beyond width or shared"),
                    (Status::PAGE_METADATA_INCORRECT, "RDX is not a TDR page"),
                    (Status::TD_NOT_INITIALIZED, "TDH.MNG.INIT not done"),
                    (Status::LIFECYCLE_STATE_INCORRECT, "TD torn down"),
                    (Status::EPT_WALK_FAILED, "the walk stopped above the level (RCX/RDX: where)"),
                ],
            },
            handler: Self::mem_sept_rd,
        },
        HostLeaf {
            spec: LeafSpec {
                number: leaf::PHYMEM_PAGE_RECLAIM,
                name: "TDH.PHYMEM.PAGE.RECLAIM",
                summary: "Gives a page of a torn-down TD back to the host, zeroed (a large page whole, by its first frame). The TDR goes last, once the TD owns nothing else.",
                inputs: &[(Reg::Rcx, "frame address")],
                outputs: &[(Reg::Rcx, "page type it had"), (Reg::Rdx, "owner TDR address it had"), (Reg::R8, "level (size) reclaimed")],
                requires: "Owner TD torn down (TDH.MNG.VPFLUSHDONE).",
                errors: &[
                    (Status::SYS_NOT_READY, "TDH.SYS.CONFIG not done"),
                    (Status::OPERAND_INVALID, "RCX not 4K-aligned"),
                    (Status::OPERAND_ADDR_RANGE_ERROR, "RCX outside the TDMRs"),
                    (Status::PAGE_ALREADY_FREE, "warning: page already free"),
                    (Status::PAGE_METADATA_INCORRECT, "reserved page (PAMT, TSM)"),
                    (Status::LIFECYCLE_STATE_INCORRECT, "owner TD not torn down (page still in use)"),
                    (Status::OPERAND_INVALID, "RCX inside a large page but not its first frame"),
                    (Status::TD_ASSOCIATED_PAGES_EXIST, "TDR while the TD still owns pages"),
                ],
            },
            handler: Self::phymem_page_reclaim,
        },
        HostLeaf {
            spec: LeafSpec {
                number: leaf::MEM_PAGE_REMOVE,
                name: "TDH.MEM.PAGE.REMOVE",
                summary: "Unmaps a blocked leaf whose block epoch is retired, zeroes its frames and frees them.",
                inputs: &[GPA_LEVEL, TDR_IN],
                outputs: &[(Reg::Rcx, "address of the freed block"), (Reg::Rdx, "level (2:0) and state (15:8) it had")],
                requires: "Leaf BLOCKED or PENDING_BLOCKED; block epoch retired by TRACK.",
                errors: &[
                    (Status::SYS_NOT_READY, "TDH.SYS.CONFIG not done"),
                    (Status::OPERAND_INVALID, "RCX reserved bits, level above 2, misaligned, beyond width or shared"),
                    (Status::PAGE_METADATA_INCORRECT, "RDX is not a TDR page"),
                    (Status::TD_NOT_INITIALIZED, "TDH.MNG.INIT not done"),
                    (Status::LIFECYCLE_STATE_INCORRECT, "TD torn down"),
                    (Status::EPT_WALK_FAILED, "a table on the path is missing"),
                    (Status::EPT_ENTRY_FREE, "nothing mapped there"),
                    (Status::EPT_ENTRY_NOT_LEAF, "the entry is a table"),
                    (Status::GPA_RANGE_NOT_BLOCKED, "REMOVE without BLOCK"),
                    (Status::EPT_ENTRY_STATE_INCORRECT, "MMIO leaf (use MMIO.UNMAP)"),
                    (Status::TLB_TRACKING_NOT_DONE, "REMOVE before TRACK retired the block epoch"),
                ],
            },
            handler: Self::mem_page_remove,
        },
        HostLeaf {
            spec: LeafSpec {
                number: leaf::MEM_SEPT_REMOVE,
                name: "TDH.MEM.SEPT.REMOVE",
                summary: "Unlinks a blocked, empty S-EPT table whose block epoch is retired; the page is zeroed and freed.",
                inputs: &[GPA_LEVEL, TDR_IN],
                outputs: &[(Reg::Rcx, "address of the freed table page")],
                requires: "Entry NL_BLOCKED; block epoch retired; table all FREE.",
                errors: &[
                    (Status::SYS_NOT_READY, "TDH.SYS.CONFIG not done"),
                    (Status::OPERAND_INVALID, "RCX reserved bits, level 0 or above the root, misaligned, beyond width or shared"),
                    (Status::PAGE_METADATA_INCORRECT, "RDX is not a TDR page"),
                    (Status::TD_NOT_INITIALIZED, "TDH.MNG.INIT not done"),
                    (Status::LIFECYCLE_STATE_INCORRECT, "TD torn down"),
                    (Status::EPT_WALK_FAILED, "a table on the path is missing"),
                    (Status::EPT_ENTRY_FREE, "no table there"),
                    (Status::EPT_ENTRY_LEAF, "a leaf, not a table"),
                    (Status::GPA_RANGE_NOT_BLOCKED, "the table entry is not blocked"),
                    (Status::TLB_TRACKING_NOT_DONE, "block epoch not retired"),
                    (Status::EPT_PAGE_NOT_FREE, "the table still maps something"),
                ],
            },
            handler: Self::mem_sept_remove,
        },
        HostLeaf {
            spec: LeafSpec {
                number: leaf::SYS_INFO,
                name: "TDH.SYS.INFO",
                summary: "Describes the TSM. Allowed before TDH.SYS.CONFIG.",
                inputs: &[],
                outputs: &[
                    (Reg::Rcx, "TDCS pages per TD"),
                    (Reg::Rdx, "maximum TDs"),
                    (Reg::R8, "maximum vCPUs per TD"),
                    (Reg::R9, "PAMT bytes per 4K frame"),
                    (Reg::R10, "TSM SVN"),
                    (Reg::R11, "1 once TDH.SYS.CONFIG is done"),
                ],
                requires: "-",
                errors: &[],
            },
            handler: Self::sys_info,
        },
        HostLeaf {
            spec: LeafSpec {
                number: leaf::MEM_TRACK,
                name: "TDH.MEM.TRACK",
                summary: "Advances the TD's TLB epoch. Blocks recorded in earlier epochs are retired once no vCPU still runs in the epoch before the current one.",
                inputs: &[(Reg::Rcx, "TDR page address")],
                outputs: &[],
                requires: "TD initialized, not torn down; no vCPU in the previous epoch.",
                errors: &[
                    (Status::SYS_NOT_READY, "TDH.SYS.CONFIG not done"),
                    (Status::PAGE_METADATA_INCORRECT, "RCX is not a TDR page"),
                    (Status::TD_NOT_INITIALIZED, "TDH.MNG.INIT not done"),
                    (Status::LIFECYCLE_STATE_INCORRECT, "TD torn down"),
                    (Status::PREVIOUS_TLB_EPOCH_BUSY, "a vCPU still runs in the previous epoch: kick it and retry"),
                ],
            },
            handler: Self::mem_track,
        },
        HostLeaf {
            spec: LeafSpec {
                number: leaf::MEM_RANGE_UNBLOCK,
                name: "TDH.MEM.RANGE.UNBLOCK",
                summary: "Undoes a block whose epoch is retired (BLOCKED->MAPPED, PENDING_BLOCKED->PENDING, NL_BLOCKED->NL_MAPPED).",
                inputs: &[GPA_LEVEL, TDR_IN],
                outputs: SEPT_DETAILS,
                requires: "Entry blocked (not MMIO); block epoch retired.",
                errors: &[
                    (Status::SYS_NOT_READY, "TDH.SYS.CONFIG not done"),
                    (Status::OPERAND_INVALID, "RCX reserved bits, level above the root, misaligned, beyond width or shared"),
                    (Status::PAGE_METADATA_INCORRECT, "RDX is not a TDR page"),
                    (Status::TD_NOT_INITIALIZED, "TDH.MNG.INIT not done"),
                    (Status::LIFECYCLE_STATE_INCORRECT, "TD torn down"),
                    (Status::EPT_WALK_FAILED, "a table on the path is missing"),
                    (Status::EPT_ENTRY_FREE, "nothing there"),
                    (Status::GPA_RANGE_NOT_BLOCKED, "not blocked"),
                    (Status::EPT_ENTRY_STATE_INCORRECT, "MMIO_BLOCKED (goes forward to MMIO.UNMAP only)"),
                    (Status::TLB_TRACKING_NOT_DONE, "block epoch not retired"),
                ],
            },
            handler: Self::mem_range_unblock,
        },
        HostLeaf {
            spec: LeafSpec {
                number: leaf::SYS_CONFIG,
                name: "TDH.SYS.CONFIG",
                summary: "Configures the TSM once: the TDMRs (convertible memory, 2M-aligned, ascending, disjoint, clear of the TSM's own memory) and their PAMT areas (inside the TDMRs, 16 bytes per 4K frame; they become reserved). Generates the TDREPORT MAC key.",
                inputs: &[(Reg::Rcx, "address of the TDMR_INFO array (32-byte aligned, in one page): {base, size, pamt_base, pamt_size} u64 each"), (Reg::Rdx, "number of entries (1..8)")],
                outputs: &[],
                requires: "Not configured yet.",
                errors: &[
                    (Status::SYS_CONFIG_NOT_PENDING, "already configured"),
                    (Status::OPERAND_INVALID, "RDX count 0 or above 8"),
                    (Status::OPERAND_INVALID, "RCX misaligned or the array crosses a page"),
                    (Status::OPERAND_ADDR_RANGE_ERROR, "RCX not host memory the TSM may read"),
                    (Status::INVALID_TDMR, "a TDMR misaligned, empty, not backed, out of order/overlapping, or touching TSM memory"),
                    (Status::INVALID_PAMT, "a PAMT area misaligned, too small, or outside the TDMRs"),
                    (Status::PAMT_OVERLAP, "two PAMT areas overlap"),
                    (Status::RND_NO_ENTROPY, "the entropy source failed"),
                ],
            },
            handler: Self::sys_config,
        },
        Self::IOMMU_SETUP,
        Self::IOMMU_CLEAR,
        Self::SPDM_CREATE,
        Self::SPDM_DELETE,
        Self::IDE_STREAM_CREATE,
        Self::IDE_STREAM_BLOCK,
        Self::IDE_STREAM_DELETE,
        Self::IDE_STREAM_KM,
        Self::TDI_CREATE,
        Self::TDI_REMOVE,
        Self::SPDM_CONNECT,
        Self::SPDM_DISCONNECT,
        Self::SPDM_MNG,
        Self::DMAR_ADD,
        Self::DMAR_BLOCK,
        Self::DMAR_REMOVE,
        Self::MMIO_MAP,
        Self::MMIO_BLOCK,
        Self::MMIO_UNMAP,
        Self::IQ_INV_REQUEST,
        HostLeaf {
            spec: LeafSpec {
                number: leaf::VP_KICK,
                name: "SEAMLESS.VP.KICK",
                summary: "seamless only: forces the vCPU out of guest mode, standing in for the IPI with which a VMM makes a TD exit asynchronously (what KVM does before retrying TRACK). No effect if it is not in guest mode.",
                inputs: &[(Reg::Rcx, "TDVPR page address")],
                outputs: &[(Reg::Rcx, "1 if the vCPU was in guest mode")],
                requires: "-",
                errors: &[
                    (Status::SYS_NOT_READY, "TDH.SYS.CONFIG not done"),
                    (Status::OPERAND_INVALID, "RCX not 4K-aligned"),
                    (Status::OPERAND_ADDR_RANGE_ERROR, "RCX outside the TDMRs"),
                    (Status::PAGE_METADATA_INCORRECT, "RCX is not a TDVPR page"),
                ],
            },
            handler: Self::vp_kick,
        },
        HostLeaf {
            spec: LeafSpec {
                number: leaf::HOST_FAULT_RD,
                name: "SEAMLESS.HOST.FAULT.RD",
                summary: "seamless only: takes the oldest unread entry of the host fault log: an access of the host world that its nested page table refused (the host got #MC at that instruction, nothing was read or written), a write to an I/O port the TSM keeps (dropped), a WRMSR (dropped), or an XSETBV that would give XCR0 more than x87 and SSE (dropped). Allowed before TDH.SYS.CONFIG.",
                inputs: &[],
                outputs: &[
                    (Reg::Rcx, "physical address accessed, the port (class 0xF3), the MSR (class 0xF4) or the XCR (class 0xF5); 0 if the log is empty"),
                    (Reg::Rdx, "bit 0: write; bits 15:8: what it is (a PAMT type, 0xF0 TSM memory, 0xF2 MMIO a TDI imported, 0xF3 an I/O port the TSM keeps, 0xF4 an MSR, 0xF5 an XCR, 0xF1 anything else)"),
                    (Reg::R8, "the owner's page address (the TDR for TD pages, the TDI for imported MMIO), the value written (ports, MSRs, XCRs), 0 if none"),
                    (Reg::R9, "1 if an entry was returned"),
                    (Reg::R10, "the host's RIP at the access"),
                    (Reg::R11, "faults recorded since boot (the log keeps the latest 32)"),
                ],
                requires: "-",
                errors: &[],
            },
            handler: Self::host_fault_rd,
        },
        HostLeaf {
            spec: LeafSpec {
                number: leaf::SHARED_EPT_SET,
                name: "SEAMLESS.SHARED.EPT.SET",
                summary: "seamless only (TDX: the shared EPTP the VMM writes with TDH.VP.WR): names the root of the host's table for the TD's shared half (GPA bit GPAW-1), an x86-64 4-level table in host memory with 4K or 2M leaves. The TSM walks it on the TD's shared accesses and maps only frames the host owns, so shared never aliases private; the TD's view of it is dropped at every TDH.VP.ENTER, so the host's changes between entries take effect. RDX 0 removes it.",
                inputs: &[(Reg::Rcx, "TDR page address"), (Reg::Rdx, "the table's root page (host memory), or 0")],
                outputs: &[],
                requires: "TD initialized, not torn down.",
                errors: &[
                    (Status::SYS_NOT_READY, "TDH.SYS.CONFIG not done"),
                    (Status::OPERAND_INVALID, "RCX/RDX not 4K-aligned addresses"),
                    (Status::OPERAND_ADDR_RANGE_ERROR, "RCX outside the TDMRs"),
                    (Status::PAGE_METADATA_INCORRECT, "RCX is not a TDR page"),
                    (Status::TD_NOT_INITIALIZED, "TDH.MNG.INIT not done"),
                    (Status::LIFECYCLE_STATE_INCORRECT, "TD torn down"),
                    (Status::OPERAND_ADDR_RANGE_ERROR, "RDX outside the memory the TSM reaches, or TSM memory"),
                    (Status::PAGE_METADATA_INCORRECT, "RDX a page the host gave away (to a TD or the TSM)"),
                ],
            },
            handler: Self::shared_ept_set,
        },
        Self::VP_POST,
        HostLeaf {
            spec: LeafSpec {
                number: leaf::SYS_DIGEST,
                name: "SEAMLESS.SYS.DIGEST",
                summary: "seamless only, read-only: a SHA-384 over the TSM's summaries of every PDEV, TDI and TD (states, owners, counts, digests: what `Tsm::device_summaries` and `Tsm::td_summary` show, never a key or a nonce), opaque and only to be compared within one run: a host that tests the TSM (mode `attack`) reads it before and after a call to show a refused call changed nothing. Allowed before TDH.SYS.CONFIG.",
                inputs: &[],
                outputs: &[
                    (Reg::Rcx, "the digest's bytes 0..8 (little-endian)"),
                    (Reg::Rdx, "bytes 8..16"),
                    (Reg::R8, "bytes 16..24"),
                    (Reg::R9, "bytes 24..32"),
                    (Reg::R10, "bytes 32..40"),
                    (Reg::R11, "bytes 40..48"),
                ],
                requires: "-",
                errors: &[],
            },
            handler: Self::sys_digest,
        },
        HostLeaf {
            spec: LeafSpec {
                number: leaf::TD_MR_RD,
                name: "SEAMLESS.TD.MR.RD",
                summary: "seamless only, read-only (TDX: the TDCS measurement fields a VMM reads with TDH.MNG.RD): one of the TD's measurement registers, MRTD or RTMR0..3, as it stands. None is secret (the TD's report carries them all); the host compares the MRTD with what it computes from the image it loaded (mode `ovmf`: `attest measure` of the same TDVF) and keeps the registers for the verifier.",
                inputs: &[(Reg::Rcx, "TDR page address"), (Reg::Rdx, "which: 0 MRTD, 1..4 RTMR0..3")],
                outputs: &[
                    (Reg::Rcx, "the register's bytes 0..8 (little-endian)"),
                    (Reg::Rdx, "bytes 8..16"),
                    (Reg::R8, "bytes 16..24"),
                    (Reg::R9, "bytes 24..32"),
                    (Reg::R10, "bytes 32..40"),
                    (Reg::R11, "bytes 40..48"),
                ],
                requires: "TD initialized, not torn down.",
                errors: &[
                    (Status::SYS_NOT_READY, "TDH.SYS.CONFIG not done"),
                    (Status::OPERAND_INVALID, "RCX not a 4K-aligned address"),
                    (Status::OPERAND_ADDR_RANGE_ERROR, "RCX outside the TDMRs"),
                    (Status::PAGE_METADATA_INCORRECT, "RCX is not a TDR page"),
                    (Status::OPERAND_INVALID, "RDX above 4"),
                    (Status::TD_NOT_INITIALIZED, "TDH.MNG.INIT not done"),
                    (Status::LIFECYCLE_STATE_INCORRECT, "TD torn down"),
                ],
            },
            handler: Self::td_mr_rd,
        },
        Self::TDI_LOCK,
        Self::TDI_START,
        Self::TDI_STOP,
        Self::DMABUF_IMPORT,
        Self::DMABUF_REVOKE,
        Self::TDI_EVIDENCE_RD,
        Self::IOMMU_FAULT_RD,
        Self::IOMMU_HOST_ATTACH,
        Self::IOMMU_HOST_DETACH,
        Self::IOMMU_TRANSLATE,
    ];

    // ---- TSM ---------------------------------------------------------------------------------

    fn sys_digest(&mut self, _in: &Regs, out: &mut Regs) -> TsmResult<Status> {
        use core::fmt::Write as _;
        use sha2::{Digest, Sha384};
        struct Hasher(Sha384);
        impl core::fmt::Write for Hasher {
            fn write_str(&mut self, s: &str) -> core::fmt::Result {
                self.0.update(s.as_bytes());
                Ok(())
            }
        }
        // Nothing to check: it reads the TSM's own summaries.
        // ALL CHECKS PASSED
        let mut h = Hasher(Sha384::new());
        let _ = write!(h, "{:?}", self.device_summaries());
        for tdr in self.tds.iter().flatten().map(|t| t.tdr) {
            let _ = write!(h, "{:?}", self.td_summary(tdr));
        }
        let d: [u8; 48] = h.0.finalize().into();
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&d[i * 8..i * 8 + 8]);
            u64::from_le_bytes(w)
        };
        (out.rcx, out.rdx, out.r8, out.r9, out.r10, out.r11) = (word(0), word(1), word(2), word(3), word(4), word(5));
        Ok(Status::SUCCESS)
    }

    fn td_mr_rd(&mut self, regs: &Regs, out: &mut Regs) -> TsmResult<Status> {
        self.sys()?;
        let idx = self.td_index(regs.rcx, Operand::Rcx)?;
        let offset = match regs.rdx {
            0 => crate::measure::MR_MRTD,
            n @ 1..=4 => crate::measure::MR_RTMR0 + 48 * (n as usize - 1),
            _ => return Err(TsmError::OperandInvalid(Operand::Rdx)),
        };
        let td = self.td(idx)?;
        Self::require_built(td)?;
        // ALL CHECKS PASSED: a read of the TD's measurement page.
        let mr = crate::measure::read_mr(&self.platform, td.tdcs[crate::td::TDCS_MR], offset);
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&mr[i * 8..i * 8 + 8]);
            u64::from_le_bytes(w)
        };
        (out.rcx, out.rdx, out.r8, out.r9, out.r10, out.r11) = (word(0), word(1), word(2), word(3), word(4), word(5));
        Ok(Status::SUCCESS)
    }

    fn host_fault_rd(&mut self, _in: &Regs, out: &mut Regs) -> TsmResult<Status> {
        // Nothing to check: the log is the caller's own history.
        // ALL CHECKS PASSED
        out.r11 = self.host_faults.total;
        if let Some(f) = self.host_faults.pop() {
            out.rcx = f.addr;
            out.rdx = u64::from(f.write) | (u64::from(f.target.code()) << 8);
            out.r8 = f.target.detail();
            out.r9 = 1;
            out.r10 = f.rip;
        }
        Ok(Status::SUCCESS)
    }

    fn sys_info(&mut self, _in: &Regs, out: &mut Regs) -> TsmResult<Status> {
        out.rcx = TDCS_PAGES as u64;
        out.rdx = MAX_TDS as u64;
        out.r8 = MAX_VCPUS as u64;
        out.r9 = pamt::ENTRY_BYTES;
        out.r10 = u64::from(self.identity.svn);
        out.r11 = u64::from(self.sys.is_some());
        Ok(Status::SUCCESS)
    }

    fn sys_config(&mut self, regs: &Regs, _out: &mut Regs) -> TsmResult<Status> {
        if self.sys.is_some() {
            return Err(TsmError::SysConfigDone);
        }
        let count = usize::try_from(regs.rdx).unwrap_or(usize::MAX);
        if count == 0 || count > pamt::MAX_TDMRS {
            return Err(TsmError::OperandInvalid(Operand::Rdx));
        }
        let array = HostPhysAddr::new(regs.rcx).ok_or(TsmError::OperandInvalid(Operand::Rcx))?;
        let offset = array.page_offset() as usize;
        if !offset.is_multiple_of(TDMR_INFO_BYTES) || offset + count * TDMR_INFO_BYTES > 4096 {
            return Err(TsmError::OperandInvalid(Operand::Rcx));
        }
        self.host_page(array.pfn(), Operand::Rcx)?;
        // Snapshot the host's array once; validate and use only the copy.
        let mut raw = [0u8; TDMR_INFO_BYTES * pamt::MAX_TDMRS];
        self.platform.read_bytes(array.pfn(), offset, &mut raw[..count * TDMR_INFO_BYTES]);
        let mut tdmrs = [Tdmr::default(); pamt::MAX_TDMRS];
        for i in 0..count {
            let word = |k: usize| {
                let at = i * TDMR_INFO_BYTES + k * 8;
                let mut w = [0u8; 8];
                w.copy_from_slice(&raw[at..at + 8]);
                u64::from_le_bytes(w)
            };
            let frames = self.check_tdmr(word(0), word(1), &tdmrs[..i])?;
            let pamt = Self::pamt_range(word(2), word(3), frames.count)?;
            tdmrs[i] = Tdmr { frames, pamt };
        }
        let tdmrs = &tdmrs[..count];
        for (i, t) in tdmrs.iter().enumerate() {
            if !tdmrs.iter().any(|o| o.frames.covers(t.pamt)) {
                return Err(TsmError::InvalidPamt(Operand::Rcx));
            }
            if tdmrs[..i].iter().any(|o| o.pamt.overlaps(t.pamt)) {
                return Err(TsmError::PamtOverlap(Operand::Rcx));
            }
        }
        let mut report_key = [0u8; 32];
        self.platform.fill(&mut report_key).map_err(|_| TsmError::NoEntropy)?;
        // ALL CHECKS PASSED: nothing below can fail.
        let pamt = Pamt::new(tdmrs);
        pamt.format(&mut self.platform);
        self.sys = Some(Sys::new(pamt, report_key, self.platform.mmio_windows()));
        Ok(Status::SUCCESS)
    }

    fn check_tdmr(&self, base: u64, size: u64, earlier: &[Tdmr]) -> TsmResult<FrameRange> {
        let bad = TsmError::InvalidTdmr(Operand::Rcx);
        let two_m = PageSize::Size2M.bytes();
        let start = HostPhysAddr::new(base).ok_or(bad)?;
        if size == 0 || !base.is_multiple_of(two_m) || !size.is_multiple_of(two_m) {
            return Err(bad);
        }
        start.checked_add(size).ok_or(bad)?;
        let frames = FrameRange { start: start.pfn(), count: size >> 12 };
        if self.is_private(frames) {
            return Err(bad);
        }
        if let Some(last) = earlier.last() {
            if last.frames.end().is_none_or(|end| frames.start < end) {
                return Err(bad);
            }
        }
        let backed = (0..frames.count).all(|i| frames.start.checked_add(i).is_some_and(|f| self.platform.contains(f)));
        if !backed {
            return Err(bad);
        }
        Ok(frames)
    }

    fn pamt_range(base: u64, size: u64, frames: u64) -> TsmResult<FrameRange> {
        let bad = TsmError::InvalidPamt(Operand::Rcx);
        let start = HostPhysAddr::new(base).ok_or(bad)?;
        if !start.is_aligned(PageSize::Size4K)
            || !size.is_multiple_of(4096)
            || size >> 12 < Tdmr::pamt_frames_needed(frames)
        {
            return Err(bad);
        }
        start.checked_add(size).ok_or(bad)?;
        Ok(FrameRange { start: start.pfn(), count: size >> 12 })
    }

    // ---- TD ----------------------------------------------------------------------------------

    fn mng_create(&mut self, regs: &Regs, _out: &mut Regs) -> TsmResult<Status> {
        self.sys()?;
        let tdr = self.donated_page(regs.rcx, Operand::Rcx)?;
        let slot = self.tds.iter().position(Option::is_none).ok_or(TsmError::TdSlotsExhausted)?;
        // ALL CHECKS PASSED: nothing below can fail.
        self.platform.zero(tdr);
        let entry = PamtEntry { aux: slot as u8, ..PamtEntry::owned(PageType::Tdr, tdr) };
        self.set_meta(tdr, entry);
        self.tds[slot] = Some(Td::new(tdr));
        Ok(Status::SUCCESS)
    }

    fn mng_addcx(&mut self, regs: &Regs, _out: &mut Regs) -> TsmResult<Status> {
        self.sys()?;
        let page = self.donated_page(regs.rcx, Operand::Rcx)?;
        let idx = self.td_index(regs.rdx, Operand::Rdx)?;
        let td = self.td(idx)?;
        td.lifecycle.require(Lifecycle::Created)?;
        if td.tdcs_count >= TDCS_PAGES {
            return Err(TsmError::TdcxNum);
        }
        let tdr = td.tdr;
        // ALL CHECKS PASSED: nothing below can fail.
        self.platform.zero(page);
        self.set_meta(page, PamtEntry::owned(PageType::Tdcs, tdr));
        let td = self.td_mut(idx)?;
        td.tdcs[td.tdcs_count] = page;
        td.tdcs_count += 1;
        td.owned_frames += 1;
        Ok(Status::SUCCESS)
    }

    fn mng_init(&mut self, regs: &Regs, _out: &mut Regs) -> TsmResult<Status> {
        self.sys()?;
        let idx = self.td_index(regs.rcx, Operand::Rcx)?;
        let td = self.td(idx)?;
        td.lifecycle.require(Lifecycle::Created)?;
        if td.tdcs_count != TDCS_PAGES {
            return Err(TsmError::TdcxNum);
        }
        let pa = HostPhysAddr::new(regs.rdx).ok_or(TsmError::OperandInvalid(Operand::Rdx))?;
        if !pa.raw().is_multiple_of(1024) {
            return Err(TsmError::OperandInvalid(Operand::Rdx));
        }
        self.host_page(pa.pfn(), Operand::Rdx)?;
        let mut snapshot = [0u8; TD_PARAMS_BYTES];
        self.platform.read_bytes(pa.pfn(), pa.page_offset() as usize, &mut snapshot);
        let params = TdParams::decode(&snapshot)?;
        // ALL CHECKS PASSED: nothing below can fail.
        let mr_page = self.td(idx)?.tdcs[crate::td::TDCS_MR];
        measure::init_mr_page(&mut self.platform, mr_page, &params);
        let td = self.td_mut(idx)?;
        td.params = Some(params);
        td.lifecycle = Lifecycle::Initialized;
        Ok(Status::SUCCESS)
    }

    fn mr_finalize(&mut self, regs: &Regs, _out: &mut Regs) -> TsmResult<Status> {
        self.sys()?;
        let idx = self.td_index(regs.rcx, Operand::Rcx)?;
        let td = self.td(idx)?;
        td.lifecycle.require(Lifecycle::Initialized)?;
        // ALL CHECKS PASSED: nothing below can fail.
        let mrtd = td.mrtd.clone().finalize();
        let mr_page = td.tdcs[crate::td::TDCS_MR];
        measure::write_mr(&mut self.platform, mr_page, measure::MR_MRTD, &mrtd);
        self.td_mut(idx)?.lifecycle = Lifecycle::Runnable;
        Ok(Status::SUCCESS)
    }

    fn mng_vpflushdone(&mut self, regs: &Regs, _out: &mut Regs) -> TsmResult<Status> {
        self.sys()?;
        let idx = self.td_index(regs.rcx, Operand::Rcx)?;
        let td = self.td(idx)?;
        if td.lifecycle == Lifecycle::Teardown {
            return Err(TsmError::Lifecycle);
        }
        if td.any_vcpu_in_guest() {
            return Err(TsmError::FlushVpNotDone);
        }
        if self.td_has_tdis(idx) {
            return Err(TsmError::TdHasDevices);
        }
        // ALL CHECKS PASSED: nothing below can fail.
        self.td_mut(idx)?.lifecycle = Lifecycle::Teardown;
        Ok(Status::SUCCESS)
    }

    // ---- vCPU --------------------------------------------------------------------------------

    fn vp_create(&mut self, regs: &Regs, out: &mut Regs) -> TsmResult<Status> {
        self.sys()?;
        let page = self.donated_page(regs.rcx, Operand::Rcx)?;
        let idx = self.td_index(regs.rdx, Operand::Rdx)?;
        let td = self.td(idx)?;
        Self::require_built(td)?;
        let max = td.params.map_or(0, |p| usize::from(p.max_vcpus));
        let index = td.vcpus.iter().position(Option::is_none).filter(|&i| i < max);
        let index = index.ok_or(TsmError::MaxVcpus)?;
        let tdr = td.tdr;
        // ALL CHECKS PASSED: nothing below can fail.
        self.platform.zero(page);
        let entry = PamtEntry { aux: index as u8, ..PamtEntry::owned(PageType::Tdvpr, tdr) };
        self.set_meta(page, entry);
        let td = self.td_mut(idx)?;
        td.vcpus[index] = Some(Vcpu { tdvpr: page, in_guest: None, ve: None, entries: 0 });
        td.owned_frames += 1;
        out.rcx = index as u64;
        Ok(Status::SUCCESS)
    }

    fn vp_enter(&mut self, regs: &Regs, _out: &mut Regs) -> TsmResult<Status> {
        self.sys()?;
        let (idx, v) = self.vcpu_index(regs.rcx, Operand::Rcx)?;
        let td = self.td(idx)?;
        td.lifecycle.require(Lifecycle::Runnable)?;
        if td.vcpus[v].is_some_and(|c| c.in_guest.is_some()) {
            return Err(TsmError::Busy(Operand::Tdvpr));
        }
        // ALL CHECKS PASSED: nothing below can fail.
        let td = self.td_mut(idx)?;
        let epoch = td.tlb.enter();
        if let Some(c) = td.vcpus[v].as_mut() {
            c.in_guest = Some(epoch);
            c.entries = c.entries.saturating_add(1);
        }
        Ok(Status::SUCCESS)
    }

    fn shared_ept_set(&mut self, regs: &Regs, _out: &mut Regs) -> TsmResult<Status> {
        self.sys()?;
        let idx = self.td_index(regs.rcx, Operand::Rcx)?;
        let root = match regs.rdx {
            0 => None,
            raw => Some(Self::page_operand(raw, Operand::Rdx)?),
        };
        Self::require_built(self.td(idx)?)?;
        if let Some(pfn) = root {
            self.host_page(pfn, Operand::Rdx)?;
        }
        // ALL CHECKS PASSED: nothing below can fail.
        self.td_mut(idx)?.shared_root = root;
        Ok(Status::SUCCESS)
    }

    fn vp_kick(&mut self, regs: &Regs, out: &mut Regs) -> TsmResult<Status> {
        self.sys()?;
        let (idx, v) = self.vcpu_index(regs.rcx, Operand::Rcx)?;
        // ALL CHECKS PASSED: nothing below can fail.
        let was_in = self.td(idx)?.vcpus[v].is_some_and(|c| c.in_guest.is_some());
        self.leave_guest(crate::abi::guest::Ctx { td: idx, vcpu: v });
        out.rcx = u64::from(was_in);
        Ok(Status::SUCCESS)
    }

    // ---- physical pages ----------------------------------------------------------------------

    fn phymem_page_rdmd(&mut self, regs: &Regs, out: &mut Regs) -> TsmResult<Status> {
        self.sys()?;
        let pfn = Self::page_operand(regs.rcx, Operand::Rcx)?;
        let e = self.pamt_of(pfn, Operand::Rcx)?;
        out.rcx = e.ty as u64;
        out.rdx = if e.ty == PageType::Free { 0 } else { e.owner.addr().raw() };
        out.r8 = e.bepoch;
        out.r9 = u64::from(e.level) | u64::from(e.aux) << 8;
        Ok(Status::SUCCESS)
    }

    fn phymem_page_reclaim(&mut self, regs: &Regs, out: &mut Regs) -> TsmResult<Status> {
        self.sys()?;
        let pfn = Self::page_operand(regs.rcx, Operand::Rcx)?;
        let e = self.pamt_of(pfn, Operand::Rcx)?;
        match e.ty {
            PageType::Free => return Ok(Status::PAGE_ALREADY_FREE),
            // PDEV and TDI pages go back through SPDM.DELETE and TDI.REMOVE, in their order; IOMMU
            // tables through the IOMMU's own teardown.
            PageType::Reserved | PageType::Pdev | PageType::Tdi | PageType::IommuTable => {
                return Err(TsmError::PageMetadata(Operand::Rcx))
            }
            PageType::Regular | PageType::Tdr | PageType::Tdcs | PageType::Tdvpr | PageType::Sept => {}
        }
        let idx = if e.ty == PageType::Tdr { self.slot_of_tdr(pfn, e)? } else { self.owner_index(e)? };
        let td = self.td(idx)?;
        if td.lifecycle != Lifecycle::Teardown {
            return Err(TsmError::Lifecycle);
        }
        let size = match e.ty {
            PageType::Regular => PageSize::from_level(e.level).ok_or(TsmError::Corrupt)?,
            _ => PageSize::Size4K,
        };
        if !pfn.is_aligned(size) {
            return Err(TsmError::OperandInvalid(Operand::Rcx));
        }
        if e.ty == PageType::Tdr && td.owned_frames != 0 {
            return Err(TsmError::AssociatedPagesExist);
        }
        // ALL CHECKS PASSED: nothing below can fail.
        self.scrub(pfn, size.frames());
        self.set_meta_block(pfn, size, PamtEntry::FREE);
        if e.ty == PageType::Tdr {
            self.tds[idx] = None;
        } else {
            let td = self.td_mut(idx)?;
            td.owned_frames = td.owned_frames.saturating_sub(size.frames());
        }
        out.rcx = e.ty as u64;
        out.rdx = e.owner.addr().raw();
        out.r8 = u64::from(size.level());
        Ok(Status::SUCCESS)
    }
}
