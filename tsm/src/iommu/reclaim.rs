//! Giving the IOMMU's frames back (IOMMU.CLEAR): once no DMAR entry is left, one table frame per
//! call, deepest first, and the root table last.
//!
//! Tables are only reclaimed when the whole IOMMU goes: a PASID directory or context table that
//! a remove left empty may still sit in the hardware's context and PASID caches, so handing it
//! back while the unit translates would let a cached pointer lead into host memory. With no
//! entry left the unit translates nothing; the firmware disables translation (and invalidates
//! globally) before the first frame is released.

use crate::addr::Pfn;
use crate::pamt::{Pamt, PamtEntry};
use crate::platform::{Clock, DmaRemapping, PhysMem};

use super::format::{
    ContextEntry, PasidDirEntry, RootHalf, CONTEXT_ENTRIES, CONTEXT_WORDS, PASID_DIR_ENTRIES_PER_FRAME, ROOT_ENTRIES,
};
use super::unit::{table_meta, Iommu};
use super::{FrameRole, IommuError};

/// Where the next frame to free is linked from.
enum Victim {
    /// A PASID table, linked from a directory entry.
    PasidTable { dir: Pfn, index: usize, table: Pfn },
    /// A PASID directory with no present entry, linked from a context entry.
    PasidDir { ctx: Pfn, index: usize, dir: Pfn },
    /// A context table with no present entry, linked from a root-entry half.
    ContextTable { word: usize, ctx: Pfn },
}

impl Iommu {
    /// Finds the deepest table to free. Every pointer followed is checked against the PAMT: the
    /// walk only reads the IOMMU's own frames.
    fn victim<M: PhysMem>(&self, mem: &M, pamt: &Pamt) -> Result<Option<Victim>, IommuError> {
        let own = |f: Pfn, role: FrameRole| match pamt.get(mem, f) {
            Ok(e) if e == table_meta(self.root, role) && mem.contains(f) => Ok(f),
            _ => Err(IommuError::Corrupt),
        };
        for word in 0..ROOT_ENTRIES * 2 {
            let half = RootHalf::decode(mem.read_u64(self.root, word)).map_err(|_| IommuError::Corrupt)?;
            if !half.present {
                continue;
            }
            let ctx = own(half.context_table, FrameRole::ContextTable)?;
            for ci in 0..CONTEXT_ENTRIES {
                let mut w = [0u64; CONTEXT_WORDS];
                for (i, v) in w.iter_mut().enumerate() {
                    *v = mem.read_u64(ctx, ci * CONTEXT_WORDS + i);
                }
                let ce = ContextEntry::decode(w).map_err(|_| IommuError::Corrupt)?;
                if !ce.present {
                    continue;
                }
                let dir = own(ce.pasid_dir, FrameRole::PasidDirectory)?;
                for di in 0..PASID_DIR_ENTRIES_PER_FRAME {
                    let de = PasidDirEntry::decode(mem.read_u64(dir, di)).map_err(|_| IommuError::Corrupt)?;
                    if de.present {
                        let table = own(de.pasid_table, FrameRole::PasidTable)?;
                        return Ok(Some(Victim::PasidTable { dir, index: di, table }));
                    }
                }
                return Ok(Some(Victim::PasidDir { ctx, index: ci, dir }));
            }
            return Ok(Some(Victim::ContextTable { word, ctx }));
        }
        Ok(None)
    }

    /// IOMMU.CLEAR, one frame per call: unlinks, zeroes and frees (PAMT Free) the deepest table
    /// left, and returns it with its role; when only the root table is left, frees it and empties
    /// `slot`. The host calls until the root comes back.
    ///
    /// # Errors
    /// `NotSetUp` for an empty slot, `EntriesExist` while any DMAR entry or host-domain function exists, `Corrupt` if a
    /// table pointer leads outside the IOMMU's frames or a table holds an entry while no DMAR
    /// entry is left.
    pub fn reclaim<M: PhysMem + DmaRemapping + Clock>(
        slot: &mut Option<Iommu>,
        mem: &mut M,
        pamt: &Pamt,
    ) -> Result<(Pfn, FrameRole), IommuError> {
        let iommu = slot.as_mut().ok_or(IommuError::NotSetUp)?;
        if iommu.bindings().next().is_some() || iommu.host_devices() != 0 {
            return Err(IommuError::EntriesExist);
        }
        // The first call gives the unit back (translation off, caches invalidated) before any
        // frame is released; a unit that does not confirm keeps every frame where it is.
        iommu.release_unit(mem)?;
        let victim = iommu.victim(mem, pamt)?;
        if let Some(Victim::PasidTable { table, .. }) = victim {
            // Every remove zeroed its entry: with no binding left the table must be all zero.
            if (0..crate::platform::WORDS_PER_PAGE).any(|i| mem.read_u64(table, i) != 0) {
                return Err(IommuError::Corrupt);
            }
        }
        // ALL CHECKS PASSED: nothing below can fail.
        let (frame, role) = match victim {
            Some(Victim::PasidTable { dir, index, table }) => {
                mem.write_u64(dir, index, 0);
                (table, FrameRole::PasidTable)
            }
            Some(Victim::PasidDir { ctx, index, dir }) => {
                for i in 0..CONTEXT_WORDS {
                    mem.write_u64(ctx, index * CONTEXT_WORDS + i, 0);
                }
                (dir, FrameRole::PasidDirectory)
            }
            Some(Victim::ContextTable { word, ctx }) => {
                mem.write_u64(iommu.root, word, 0);
                (ctx, FrameRole::ContextTable)
            }
            None => (iommu.root, FrameRole::RootTable),
        };
        mem.zero(frame);
        pamt.set(mem, frame, PamtEntry::FREE);
        if role == FrameRole::RootTable {
            *slot = None;
        } else {
            iommu.table_frames = iommu.table_frames.saturating_sub(1);
        }
        Ok((frame, role))
    }
}
