//! Driving the remapping unit itself: taking it at IOMMU.SETUP, invalidating through the queue
//! with a wait descriptor whose completion the TSM checks, giving it back at IOMMU.CLEAR, and
//! reading its fault records into a log the host and the guest can read.
//!
//! The platform ([`DmaRemapping`]) only moves values to and from registers; the order of the
//! commands and the proof of completion are here.

use crate::addr::Pfn;
use crate::platform::{Clock, DmaRemapping, UnitError};

use super::hw::{FaultRecord, InvDescriptor, GLOBAL_INVALIDATION, RTADDR_SCALABLE};
use super::{Iommu, IommuError};

/// Faults the TSM keeps: the most recent ones, oldest overwritten first.
pub const FAULT_LOG: usize = 16;
/// How long the TSM waits for a wait descriptor's status write after the queue drained.
const WAIT_NS: u64 = 100_000_000;
/// Descriptors in one submission, the wait descriptor included.
const MAX_BATCH: usize = 4;

/// What the TSM knows of the unit's registers.
#[derive(Clone, Copy, Debug, Default, Eq)]
pub struct UnitState {
    /// The status data of the latest wait descriptor (never 0, so a zeroed status word never
    /// passes for a completion).
    sequence: u32,
    /// GCMD.TE as the TSM last set it.
    translating: bool,
    /// The latest faults read from the unit, a ring.
    faults: [FaultRecord; FAULT_LOG],
    /// Faults read since IOMMU.SETUP (the ring holds the last [`FAULT_LOG`]).
    fault_count: u64,
}

/// Equal when everything the TSM's callers can observe is: the wait sequence is left out, since
/// a failed invalidation must still burn its value (a late status write of it must never pass
/// for the next one's) yet changes nothing else.
impl PartialEq for UnitState {
    fn eq(&self, other: &UnitState) -> bool {
        self.translating == other.translating && self.faults == other.faults && self.fault_count == other.fault_count
    }
}

impl Iommu {
    /// Points the unit at the root table in scalable mode, turns the queue on, invalidates the
    /// context cache, PASID cache and IOTLB globally and enables translation. On a failure the
    /// unit is left with translation off.
    pub(super) fn take_unit<P: DmaRemapping + Clock>(&mut self, p: &mut P) -> Result<(), IommuError> {
        let result = self.program(p);
        if result.is_err() {
            // Best effort: a unit that did not take a command may not take this one either; its
            // root table is zero, so it translates nothing in any case.
            let _ = p.set_translation(false);
        } else {
            self.unit.translating = true;
        }
        result
    }

    fn program<P: DmaRemapping + Clock>(&mut self, p: &mut P) -> Result<(), IommuError> {
        p.set_root_table(self.rtaddr()).map_err(IommuError::Unit)?;
        p.enable_queue().map_err(IommuError::Unit)?;
        self.invalidate_unit(p, &GLOBAL_INVALIDATION)?;
        p.set_translation(true).map_err(IommuError::Unit)
    }

    /// Turns translation off and invalidates everything, before IOMMU.CLEAR hands the first
    /// table frame back (a cached pointer must not lead into a frame the host owns again).
    pub(super) fn release_unit<P: DmaRemapping + Clock>(&mut self, p: &mut P) -> Result<(), IommuError> {
        if !self.unit.translating {
            return Ok(());
        }
        p.set_translation(false).map_err(IommuError::Unit)?;
        self.invalidate_unit(p, &GLOBAL_INVALIDATION)?;
        self.unit.translating = false;
        Ok(())
    }

    /// Queues `descriptors` and a wait descriptor with a fresh status value, and returns once the
    /// unit wrote that value: every descriptor before it completed (VT-d §6.5.2.8).
    ///
    /// # Errors
    /// `Unit(QueueError)` if the unit refused a descriptor, `Unit(Timeout)` if the status write
    /// never came, `Unit(QueueFull)` for a batch past [`MAX_BATCH`].
    pub(crate) fn invalidate_unit<P: DmaRemapping + Clock>(
        &mut self,
        p: &mut P,
        descriptors: &[InvDescriptor],
    ) -> Result<(), IommuError> {
        let n = descriptors.len();
        if n >= MAX_BATCH {
            return Err(IommuError::Unit(UnitError::QueueFull));
        }
        // A fresh, non-zero value: a late write of an earlier wait cannot pass for this one.
        self.unit.sequence = match self.unit.sequence.wrapping_add(1) {
            0 => 1,
            s => s,
        };
        let seq = self.unit.sequence;
        let mut batch = [InvDescriptor([0; 4]); MAX_BATCH];
        batch[..n].copy_from_slice(descriptors);
        batch[n] = InvDescriptor::wait(p.wait_status_address(), seq);
        p.submit(&batch[..=n]).map_err(IommuError::Unit)?;
        let start = p.now_ns();
        while p.wait_status() != seq {
            if p.now_ns().saturating_sub(start) > WAIT_NS {
                return Err(IommuError::Unit(UnitError::Timeout));
            }
            core::hint::spin_loop();
        }
        Ok(())
    }

    /// Reads every fault the unit recorded into the log and clears it in the unit; returns how
    /// many were read. QEMU's NVMe completes a command whose DMA faulted with status 0
    /// (`../shared/reference/worlds.md` §2), so these records are the only evidence that a
    /// DMA did not land.
    pub fn collect_faults<P: DmaRemapping>(&mut self, p: &mut P) -> u32 {
        let mut read = 0;
        // Bounded: a unit has at most 256 fault recording registers.
        for _ in 0..256 {
            let Some((lo, hi)) = p.take_fault() else { break };
            let Some(f) = FaultRecord::decode(lo, hi) else { break };
            self.unit.faults[(self.unit.fault_count % FAULT_LOG as u64) as usize] = f;
            self.unit.fault_count += 1;
            read += 1;
        }
        read
    }

    /// Faults read since IOMMU.SETUP.
    pub const fn fault_count(&self) -> u64 {
        self.unit.fault_count
    }

    /// The fault with sequence number `n` (0 = the first since IOMMU.SETUP), if the log still
    /// holds it.
    pub fn fault(&self, n: u64) -> Option<FaultRecord> {
        let kept = self.unit.fault_count.min(FAULT_LOG as u64);
        let first = self.unit.fault_count - kept;
        (n >= first && n < self.unit.fault_count).then(|| self.unit.faults[(n % FAULT_LOG as u64) as usize])
    }

    /// True while the unit translates through this IOMMU's tables.
    pub const fn translating(&self) -> bool {
        self.unit.translating
    }

    /// The root table frame's address as RTADDR_REG holds it.
    pub fn rtaddr(&self) -> u64 {
        self.root.addr().raw() | RTADDR_SCALABLE
    }

    /// The frame the root table lives in.
    pub const fn root_frame(&self) -> Pfn {
        self.root
    }
}
