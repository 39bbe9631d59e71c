//! Host leaves of the trusted IOMMU: IOMMU.SETUP and CLEAR, DMAR.ADD / BLOCK / REMOVE, and the
//! trusted invalidation queue (IQ.INV.REQUEST). The entries live in `crate::iommu`; their second
//! stage is the TD's own S-EPT, so every S-EPT block of a TD with entries needs an invalidation
//! before it is retired (`Tsm::retired`).

use crate::abi::{LeafSpec, Reg, Regs};
use crate::addr::Pfn;
use crate::error::{TsmError, TsmResult};
use crate::iommu::{DmarRequest, DomainId, Done, Frames, Iommu, SeptLevels};
use crate::platform::Platform;
use crate::status::{Operand, Status};
use crate::tdi::TdiState;
use crate::Tsm;

use super::rows::*;

use super::host::{leaf, HostLeaf};

const NO_IOMMU: (Status, &str) = (Status::IOMMU_STATE_INCORRECT, "TDH.IOMMU.SETUP not done");

impl<P: Platform> Tsm<P> {
    pub(crate) const IOMMU_SETUP: HostLeaf<P> = HostLeaf {
        spec: LeafSpec {
            number: leaf::IOMMU_SETUP,
            name: "TDH.IOMMU.SETUP",
            summary: "Takes the trusted IOMMU (VT-d, scalable mode): a donated page becomes its root table, and the TSM programs the unit: RTADDR in scalable mode, the invalidation queue, a global invalidation confirmed by a wait descriptor, translation on. From then on a device without a DMA remapping entry faults. Context, PASID directory and PASID table frames come with TDH.DMAR.ADD.",
            inputs: &[(Reg::Rcx, "page to donate (the root table)")],
            outputs: &[],
            requires: "No trusted IOMMU yet.",
            errors: &[
                SYS,
                (Status::IOMMU_STATE_INCORRECT, "already set up"),
                (Status::OPERAND_INVALID, "RCX not a 4K-aligned address"),
                (Status::OPERAND_ADDR_RANGE_ERROR, "RCX outside the TDMRs"),
                (Status::PAGE_NOT_FREE, "RCX page not free"),
                (Status::IOMMU_UNIT_ERROR, "no remapping unit, one without queued invalidation, scalable mode or second-stage translation, or a command it did not complete (translation left off, the page stays free)"),
            ],
        },
        handler: Self::iommu_setup,
    };

    pub(crate) const IOMMU_CLEAR: HostLeaf<P> = HostLeaf {
        spec: LeafSpec {
            number: leaf::IOMMU_CLEAR,
            name: "TDH.IOMMU.CLEAR",
            summary: "Tears the trusted IOMMU down one table frame per call, deepest first, each zeroed and free again; the root table comes back last (RDX = 0) and the IOMMU is gone.",
            inputs: &[],
            outputs: &[(Reg::Rcx, "the frame released"), (Reg::Rdx, "its role: 0 root, 1 context table, 2 PASID directory, 3 PASID table")],
            requires: "No DMA remapping entry left.",
            errors: &[
                SYS,
                (Status::IOMMU_STATE_INCORRECT, "not set up, or entries remain"),
                (Status::IOMMU_UNIT_ERROR, "the unit did not confirm translation off and the global invalidation (first call; nothing released)"),
            ],
        },
        handler: Self::iommu_clear,
    };

    pub(crate) const DMAR_ADD: HostLeaf<P> = HostLeaf {
        spec: LeafSpec {
            number: leaf::DMAR_ADD,
            name: "TDH.DMAR.ADD",
            summary: "Adds the TDI's DMA remapping entry (RID, and PASID for a Scalable-IOV interface): a PASID entry, second stage only, whose table pointer is the TD's S-EPT root, written not present. DMA passes only once the guest accepts it (TDG.DMAR.ACCEPT). Frames for missing tables are taken from R8..R10 (0 = none given); unneeded frames stay the host's.",
            inputs: &[
                (Reg::Rcx, "TDR page"),
                (Reg::Rdx, "TDI page"),
                (Reg::R8, "frame for a new context table, or 0"),
                (Reg::R9, "frame for a new PASID directory, or 0"),
                (Reg::R10, "frame for a new PASID table, or 0"),
            ],
            outputs: &[(Reg::Rcx, "frames consumed: bit 0 context table, bit 1 PASID directory, bit 2 PASID table")],
            requires: "IOMMU set up; TD RUNNABLE; the TDI bound to it, CONFIG_LOCKED or RUN, without an entry.",
            errors: &[
                SYS,
                (Status::PAGE_METADATA_INCORRECT, "RCX is not a TDR page"),
                (Status::TD_NOT_FINALIZED, "TDH.MR.FINALIZE not done"),
                (Status::PAGE_METADATA_INCORRECT, "RDX is not a TDI page"),
                (Status::TDI_NOT_BOUND_TO_TD, "the TDI is bound to another TD"),
                (Status::TDI_STATE_INCORRECT, "TDI not CONFIG_LOCKED or RUN"),
                NO_IOMMU,
                (Status::OPERAND_INVALID, "the TDI's function is on another PCI segment than the IOMMU's (segment 0), or its PASID past 20 bits (operand: TDI)"),
                (Status::OPERAND_INVALID, "a table frame the entry needs is missing (operand: its register), or R8..R10 not 4K aligned"),
                (Status::OPERAND_ADDR_RANGE_ERROR, "a frame outside the TDMRs"),
                (Status::PAGE_NOT_FREE, "a frame not free"),
                (Status::DMAR_WIDTH_UNSUPPORTED, "the TD's S-EPT depth is not in the unit's CAP.SAGAW: a GPAW-52 TD (5-level S-EPT) on a 48-bit unit"),
                (Status::DMAR_STATE_INCORRECT, "the TDI already has an entry"),
                (Status::DEVICE_SLOTS_EXHAUSTED, "no entry slot left"),
            ],
        },
        handler: Self::dmar_add,
    };

    pub(crate) const DMAR_BLOCK: HostLeaf<P> = HostLeaf {
        spec: LeafSpec {
            number: leaf::DMAR_BLOCK,
            name: "TDH.DMAR.BLOCK",
            summary: "Blocks the TDI's DMA remapping entry (present bit cleared): no DMA passes; the entry is removable after an IOTLB invalidation.",
            inputs: &[(Reg::Rcx, "TDI page")],
            outputs: &[],
            requires: "An entry, not blocked.",
            errors: &[
                SYS,
                TDI_RCX[0],
                TDI_RCX[1],
                TDI_RCX[2],
                NO_IOMMU,
                (Status::DMAR_STATE_INCORRECT, "no entry"),
                (Status::GPA_RANGE_ALREADY_BLOCKED, "warning: already blocked, nothing changed"),
            ],
        },
        handler: Self::dmar_block,
    };

    pub(crate) const IOMMU_FAULT_RD: HostLeaf<P> = HostLeaf {
        spec: LeafSpec {
            number: leaf::IOMMU_FAULT_RD,
            name: "SEAMLESS.IOMMU.FAULT.RD",
            summary: "seamless only: reads the remapping unit's fault recording registers into the TSM's fault log (and clears them in the unit), then returns fault number RCX of the log. A DMA the unit refused still completes at the device (QEMU's NVMe reports status 0), so these records are the proof that it did not land. The log keeps the last 16 faults.",
            inputs: &[(Reg::Rcx, "fault number (0 = the first since TDH.IOMMU.SETUP)")],
            outputs: &[
                (Reg::Rcx, "faults recorded since TDH.IOMMU.SETUP"),
                (Reg::Rdx, "the fault: source id (15:0), VT-d fault reason (23:16), write (24), PASID present (25), PASID (51:32)"),
                (Reg::R8, "the fault: page address the request went to"),
                (Reg::R9, "1 if RDX/R8 hold fault RCX-in, 0 if the log does not hold it (not yet, or overwritten)"),
            ],
            requires: "IOMMU set up.",
            errors: &[SYS, NO_IOMMU],
        },
        handler: Self::iommu_fault_rd,
    };

    pub(crate) const IOMMU_TRANSLATE: HostLeaf<P> = HostLeaf {
        spec: LeafSpec {
            number: leaf::IOMMU_TRANSLATE,
            name: "SEAMLESS.IOMMU.TRANSLATE",
            summary: "seamless only, read-only: what the TSM's own walk of the tables it programs (`iommu::translate`, its model of the remapping unit) decides for one DMA request. Nothing is read or written beyond the tables; what it says of a TD's memory (translated, or which S-EPT state refused it) the host can already read with TDH.MEM.SEPT.RD. The host compares it with what the unit did (a differential test of the model against the hardware).",
            inputs: &[
                (Reg::Rcx, "the requester: requester id (15:0), segment (23:16) = 0"),
                (Reg::Rdx, "PASID (19:0) with bit 63 set, or 0 for a request without PASID"),
                (Reg::R8, "the IOVA"),
                (Reg::R9, "bit 0: a write (else a read)"),
            ],
            outputs: &[
                (Reg::Rcx, "1 if the request translates, else 0"),
                (Reg::Rdx, "the fault reason if it does not (VT-d's codes; 0xF0 an MMIO leaf, 0xF1 a shared GPA), else 0"),
                (Reg::R8, "for an S-EPT entry that refused it: bit 16 set, its state (7:0, the S-EPT state code) and level (15:8); else 0"),
            ],
            requires: "IOMMU set up.",
            errors: &[
                SYS,
                (Status::OPERAND_INVALID, "RCX has bits above the requester id (operand RCX), RDX a PASID past 20 bits or bits besides 63 (RDX), R9 bits besides 0 (R9)"),
                NO_IOMMU,
            ],
        },
        handler: Self::iommu_translate,
    };

    pub(crate) const IOMMU_HOST_ATTACH: HostLeaf<P> = HostLeaf {
        spec: LeafSpec {
            number: leaf::IOMMU_HOST_ATTACH,
            name: "SEAMLESS.IOMMU.HOST.ATTACH",
            summary: "seamless only: puts a function the host keeps in the host domain. Its RID_PASID entry is present at once, DID = the host domain's, second stage = the platform's host map: the identity map of exactly the memory the host owns, which follows the PAMT (never TSM, PAMT, S-EPT, IOMMU-table or TD-private frames). Frames for missing tables are taken from R8..R10 as for TDH.DMAR.ADD.",
            inputs: &[
                (Reg::Rcx, "the function: requester id (15:0), segment (23:16) = 0"),
                (Reg::R8, "frame for a new context table, or 0"),
                (Reg::R9, "frame for a new PASID directory, or 0"),
                (Reg::R10, "frame for a new PASID table, or 0"),
            ],
            outputs: &[(Reg::Rcx, "frames consumed: bit 0 context table, bit 1 PASID directory, bit 2 PASID table")],
            requires: "IOMMU set up; the platform keeps a host map; the function has no DMA remapping entry.",
            errors: &[
                SYS,
                (Status::OPERAND_INVALID, "RCX has bits above the requester id, or R8..R10 not 4K aligned, or a frame the entry needs is missing (operand: its register)"),
                NO_IOMMU,
                (Status::DMAR_STATE_INCORRECT, "the function is in the host domain already"),
                (Status::DMAR_STATE_INCORRECT, "the function has DMA remapping entries (operand RCX)"),
                (Status::IOMMU_STATE_INCORRECT, "the platform keeps no host map the unit can walk"),
                (Status::DEVICE_SLOTS_EXHAUSTED, "no host-domain slot left"),
                (Status::OPERAND_ADDR_RANGE_ERROR, "a frame outside the TDMRs"),
                (Status::PAGE_NOT_FREE, "a frame not free"),
            ],
        },
        handler: Self::iommu_host_attach,
    };

    pub(crate) const IOMMU_HOST_DETACH: HostLeaf<P> = HostLeaf {
        spec: LeafSpec {
            number: leaf::IOMMU_HOST_DETACH,
            name: "SEAMLESS.IOMMU.HOST.DETACH",
            summary: "seamless only: takes a function out of the host domain: its entry is zeroed, the host domain's PASID cache and IOTLB invalidated and the wait descriptor checked before the call returns, so no DMA of the function passes afterwards. Only then can the function get a DMA remapping entry (TDH.DMAR.ADD).",
            inputs: &[(Reg::Rcx, "the function: requester id (15:0), segment (23:16) = 0")],
            outputs: &[],
            requires: "The function in the host domain.",
            errors: &[
                SYS,
                (Status::OPERAND_INVALID, "RCX has bits above the requester id"),
                NO_IOMMU,
                (Status::DMAR_STATE_INCORRECT, "the function is not in the host domain"),
                (Status::IOMMU_UNIT_ERROR, "the unit did not confirm the invalidation: the entry is zeroed, the function stays out of reach of DMAR.ADD until a DETACH completes"),
            ],
        },
        handler: Self::iommu_host_detach,
    };

    pub(crate) const DMAR_REMOVE: HostLeaf<P> = HostLeaf {
        spec: LeafSpec {
            number: leaf::DMAR_REMOVE,
            name: "TDH.DMAR.REMOVE",
            summary: "Removes a blocked DMA remapping entry once an invalidation (TDH.IQ.INV.REQUEST) retired its block; the PASID entry is zeroed.",
            inputs: &[(Reg::Rcx, "TDI page")],
            outputs: &[],
            requires: "Entry BLOCKED; IOTLB invalidated since.",
            errors: &[
                SYS,
                TDI_RCX[0],
                TDI_RCX[1],
                TDI_RCX[2],
                NO_IOMMU,
                (Status::DMAR_STATE_INCORRECT, "no entry, or not blocked"),
                (Status::TLB_TRACKING_NOT_DONE, "no invalidation since the block"),
            ],
        },
        handler: Self::dmar_remove,
    };

    pub(crate) const IQ_INV_REQUEST: HostLeaf<P> = HostLeaf {
        spec: LeafSpec {
            number: leaf::IQ_INV_REQUEST,
            name: "TDH.IQ.INV.REQUEST",
            summary: "The trusted invalidation queue: queues domain-selective PASID-cache and IOTLB invalidation descriptors for the TD's domain and a wait descriptor, and returns only once the unit wrote the wait's status. Retires DMAR blocks made before it, and, for the IOTLB, S-EPT blocks made before the TD's latest TRACK. Reads the unit's fault records into the fault log.",
            inputs: &[(Reg::Rcx, "TDR page")],
            outputs: &[],
            requires: "IOMMU set up; the TD has entries.",
            errors: &[
                SYS,
                (Status::PAGE_METADATA_INCORRECT, "RCX is not a TDR page"),
                NO_IOMMU,
                (Status::DMAR_STATE_INCORRECT, "the TD has no entries"),
                (Status::IOMMU_UNIT_ERROR, "the unit did not complete the invalidation (nothing retired)"),
            ],
        },
        handler: Self::iq_inv_request,
    };

    fn iommu_setup(&mut self, regs: &Regs, _out: &mut Regs) -> TsmResult<Status> {
        let pamt = *self.pamt()?;
        if self.iommu.is_some() {
            return Err(TsmError::Iommu(crate::iommu::IommuError::EntriesExist));
        }
        let root = self.donated_page(regs.rcx, Operand::Rcx)?;
        let iommu = Iommu::setup(&mut self.platform, &pamt, root).map_err(TsmError::Iommu)?;
        self.iommu = Some(iommu);
        Ok(Status::SUCCESS)
    }

    fn iommu_clear(&mut self, _regs: &Regs, out: &mut Regs) -> TsmResult<Status> {
        let pamt = *self.pamt()?;
        let (frame, role) = Iommu::reclaim(&mut self.iommu, &mut self.platform, &pamt).map_err(TsmError::Iommu)?;
        out.rcx = frame.addr().raw();
        out.rdx = role as u64;
        Ok(Status::SUCCESS)
    }

    fn frame_operand(raw: u64, op: Operand) -> TsmResult<Option<Pfn>> {
        if raw == 0 {
            return Ok(None);
        }
        Self::page_operand(raw, op).map(Some)
    }

    fn dmar_add(&mut self, regs: &Regs, out: &mut Regs) -> TsmResult<Status> {
        let pamt = *self.pamt()?;
        let td_idx = self.td_index(regs.rcx, Operand::Rcx)?;
        let td = self.td(td_idx)?;
        td.lifecycle.require(crate::td::Lifecycle::Runnable)?;
        let t = self.tdi_index(regs.rdx, Operand::Rdx)?;
        let tdi = self.tdi(t)?;
        if tdi.td != td_idx {
            return Err(TsmError::TdiNotBound);
        }
        if !matches!(tdi.state, TdiState::Locked | TdiState::Run) {
            return Err(TsmError::TdiState);
        }
        if self.iommu.is_none() {
            return Err(TsmError::Iommu(crate::iommu::IommuError::NotSetUp));
        }
        let key = tdi.try_dmar_key().map_err(TsmError::Iommu)?;
        let frames = Frames {
            context_table: Self::frame_operand(regs.r8, Operand::R8)?,
            pasid_dir: Self::frame_operand(regs.r9, Operand::R9)?,
            pasid_table: Self::frame_operand(regs.r10, Operand::R10)?,
        };
        let levels = SeptLevels::from_root_level(td.root_level()).ok_or(TsmError::Corrupt)?;
        let request = DmarRequest {
            key,
            owner: td.tdr,
            sept_root: td.sept_root(),
            levels,
            // One DID per TD: its slot, from 1 (DID 0 is reserved).
            domain: DomainId(td_idx as u16 + 1),
            cpu_epoch: td.tlb.epoch(),
        };
        // `install` checks everything first and writes nothing when it fails.
        let used = {
            let iommu = self.iommu.as_mut().ok_or(TsmError::Corrupt)?;
            iommu.install(&mut self.platform, &pamt, &request, &frames).map_err(TsmError::Iommu)?
        };
        out.rcx = u64::from(used.context_table) | u64::from(used.pasid_dir) << 1 | u64::from(used.pasid_table) << 2;
        Ok(Status::SUCCESS)
    }

    /// The TDI a DMAR leaf names, and its entry's key.
    fn dmar_target(&self, regs: &Regs) -> TsmResult<crate::iommu::DmarKey> {
        self.sys()?;
        let t = self.tdi_index(regs.rcx, Operand::Rcx)?;
        let key = self.tdi(t)?.dmar_key().ok_or(TsmError::Iommu(crate::iommu::IommuError::EntryNotFound))?;
        if self.iommu.is_none() {
            return Err(TsmError::Iommu(crate::iommu::IommuError::NotSetUp));
        }
        Ok(key)
    }

    fn dmar_block(&mut self, regs: &Regs, _out: &mut Regs) -> TsmResult<Status> {
        let key = self.dmar_target(regs)?;
        let iommu = self.iommu.as_mut().ok_or(TsmError::Corrupt)?;
        // `block` checks first and writes nothing when it fails.
        Ok(match iommu.block(&mut self.platform, key).map_err(TsmError::Iommu)? {
            Done::Changed => Status::SUCCESS,
            Done::AlreadyDone => Status::GPA_RANGE_ALREADY_BLOCKED,
        })
    }

    fn dmar_remove(&mut self, regs: &Regs, _out: &mut Regs) -> TsmResult<Status> {
        let key = self.dmar_target(regs)?;
        let iommu = self.iommu.as_mut().ok_or(TsmError::Corrupt)?;
        // `remove` checks first and writes nothing when it fails.
        iommu.remove(&mut self.platform, key).map_err(TsmError::Iommu)?;
        Ok(Status::SUCCESS)
    }

    /// Moves the unit's fault records into the TSM's log. Run at every ABI call: a unit has few
    /// fault recording registers (QEMU's has one) and drops faults while they are full, so the
    /// TSM empties them whenever it runs.
    pub(crate) fn drain_dma_faults(&mut self) {
        if let Some(iommu) = self.iommu.as_mut() {
            iommu.collect_faults(&mut self.platform);
        }
    }

    fn iommu_fault_rd(&mut self, regs: &Regs, out: &mut Regs) -> TsmResult<Status> {
        self.sys()?;
        let iommu = self.iommu.as_mut().ok_or(TsmError::Iommu(crate::iommu::IommuError::NotSetUp))?;
        // ALL CHECKS PASSED: nothing below can fail.
        iommu.collect_faults(&mut self.platform);
        out.rcx = iommu.fault_count();
        if let Some(f) = iommu.fault(regs.rcx) {
            out.rdx = u64::from(f.source_id)
                | u64::from(f.reason) << 16
                | u64::from(f.write) << 24
                | u64::from(f.pasid.is_some()) << 25
                | u64::from(f.pasid.unwrap_or(0)) << 32;
            out.r8 = f.address;
            out.r9 = 1;
        }
        Ok(Status::SUCCESS)
    }

    fn iommu_translate(&mut self, regs: &Regs, out: &mut Regs) -> TsmResult<Status> {
        self.sys()?;
        let rid = Self::host_function(regs.rcx)?;
        let pasid = match regs.rdx {
            0 => None,
            raw if raw >> 63 == 1 && raw & !(1 << 63) <= u64::from(crate::iommu::Pasid::MAX) => {
                crate::iommu::Pasid::new((raw & 0xF_FFFF) as u32)
            }
            _ => return Err(TsmError::OperandInvalid(Operand::Rdx)),
        };
        if regs.r9 > 1 {
            return Err(TsmError::OperandInvalid(Operand::R9));
        }
        let iommu = self.iommu.as_ref().ok_or(TsmError::Iommu(crate::iommu::IommuError::NotSetUp))?;
        // ALL CHECKS PASSED: nothing below can fail (and nothing is written).
        match iommu.translate(&self.platform, rid, pasid, regs.r8, regs.r9 == 1) {
            Ok(_) => out.rcx = 1,
            Err(f) => {
                out.rdx = u64::from(f.reason.code());
                let state = match f.reason {
                    crate::iommu::FaultReason::SeptNotPresent(s)
                    | crate::iommu::FaultReason::SeptNotPrivateMemory(s) => Some(s as u64),
                    _ => None,
                };
                out.r8 = state.map_or(0, |s| 1 << 16 | s | u64::from(f.sept_level.unwrap_or(0)) << 8);
            }
        }
        Ok(Status::SUCCESS)
    }

    /// RCX as a function of the segment the unit remaps.
    fn host_function(raw: u64) -> TsmResult<crate::iommu::Rid> {
        if raw >> 16 != u64::from(crate::iommu::SEGMENT) {
            return Err(TsmError::OperandInvalid(Operand::Rcx));
        }
        Ok(crate::iommu::Rid::from_raw(raw as u16))
    }

    fn iommu_host_attach(&mut self, regs: &Regs, out: &mut Regs) -> TsmResult<Status> {
        let pamt = *self.pamt()?;
        let rid = Self::host_function(regs.rcx)?;
        let frames = Frames {
            context_table: Self::frame_operand(regs.r8, Operand::R8)?,
            pasid_dir: Self::frame_operand(regs.r9, Operand::R9)?,
            pasid_table: Self::frame_operand(regs.r10, Operand::R10)?,
        };
        let iommu = self.iommu.as_mut().ok_or(TsmError::Iommu(crate::iommu::IommuError::NotSetUp))?;
        // `host_attach` checks everything first and writes nothing when it fails.
        let used = iommu.host_attach(&mut self.platform, &pamt, rid, &frames).map_err(TsmError::Iommu)?;
        out.rcx = u64::from(used.context_table) | u64::from(used.pasid_dir) << 1 | u64::from(used.pasid_table) << 2;
        Ok(Status::SUCCESS)
    }

    fn iommu_host_detach(&mut self, regs: &Regs, _out: &mut Regs) -> TsmResult<Status> {
        self.sys()?;
        let rid = Self::host_function(regs.rcx)?;
        let iommu = self.iommu.as_mut().ok_or(TsmError::Iommu(crate::iommu::IommuError::NotSetUp))?;
        iommu.host_detach(&mut self.platform, rid).map_err(TsmError::Iommu)?;
        Ok(Status::SUCCESS)
    }

    fn iq_inv_request(&mut self, regs: &Regs, _out: &mut Regs) -> TsmResult<Status> {
        self.sys()?;
        let td_idx = self.td_index(regs.rcx, Operand::Rcx)?;
        let td = self.td(td_idx)?;
        let (tdr, epoch) = (td.tdr, td.tlb.epoch());
        let iommu = self.iommu.as_mut().ok_or(TsmError::Iommu(crate::iommu::IommuError::NotSetUp))?;
        let domain = iommu.domain_of(tdr).ok_or(TsmError::Iommu(crate::iommu::IommuError::DomainNotFound))?;
        // `invalidate` retires nothing unless the unit confirmed the invalidation.
        iommu.invalidate(&mut self.platform, domain.did, epoch).map_err(TsmError::Iommu)?;
        iommu.collect_faults(&mut self.platform);
        Ok(Status::SUCCESS)
    }
}
