//! The PAMT (Physical Address Metadata Table): per 4K frame of convertible memory, its type, its
//! owner and its block epoch, in 16 bytes. It lives in frames the host set aside at
//! TDH.SYS.CONFIG (as the TDX module's PAMT areas do); those frames become `Reserved` in the
//! PAMT itself, so the host can never donate them.

use crate::addr::{FrameRange, PageSize, Pfn};
use crate::platform::PhysMem;

/// Bytes of PAMT per 4K frame.
pub const ENTRY_BYTES: u64 = 16;
/// At most this many TDMRs.
pub const MAX_TDMRS: usize = 8;

/// What a frame is used for (TDX `PT_*` numbers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PageType {
    /// Host-owned, may be donated (TDX PT_NDA).
    Free = 0,
    /// Never donatable: PAMT areas, TSM memory (PT_RSVD).
    Reserved = 1,
    /// A TD's private memory page (PT_REG).
    Regular = 3,
    /// A TD's root page (PT_TDR).
    Tdr = 4,
    /// A TD's control page (PT_TDCX).
    Tdcs = 5,
    /// A vCPU's root page (PT_TDVPR).
    Tdvpr = 6,
    /// An S-EPT table page (PT_EPT).
    Sept = 8,
    /// A PDEV's control page: the identity of a device's SPDM context (TDX: SPDM_MT).
    Pdev = 0x10,
    /// A TDI's control page (TDX: TDI_CS / DEVIFCS); owned by the TD it is bound to.
    Tdi = 0x11,
    /// A table of the trusted IOMMU (root, context, PASID directory or PASID table): owner =
    /// the IOMMU's root-table frame, `level` = its `iommu::FrameRole` (seamless number).
    IommuTable = 0x12,
}

impl PageType {
    const fn from_raw(raw: u8) -> Option<PageType> {
        Some(match raw {
            0 => PageType::Free,
            1 => PageType::Reserved,
            3 => PageType::Regular,
            4 => PageType::Tdr,
            5 => PageType::Tdcs,
            6 => PageType::Tdvpr,
            8 => PageType::Sept,
            0x10 => PageType::Pdev,
            0x11 => PageType::Tdi,
            0x12 => PageType::IommuTable,
            _ => return None,
        })
    }
}

/// One frame's metadata.
///
/// Layout (two little-endian words): word 0 = type (7:0), level (15:8), aux (23:16), owner frame
/// number (63:24, 40 bits: 52-bit addresses); word 1 = block epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PamtEntry {
    /// The frame's type.
    pub ty: PageType,
    /// For `Regular` frames: the level of the leaf mapping them (0 = 4K, 1 = 2M, 2 = 1G).
    pub level: u8,
    /// For `Tdr` frames the TD's slot index, for `Tdvpr` frames the vCPU index.
    pub aux: u8,
    /// The owning TD's TDR frame (the frame itself for a TDR); zero when free.
    pub owner: Pfn,
    /// The TD epoch at which the mapping of this frame was blocked (for a large leaf: on its first
    /// frame; for a table: on the table's frame).
    pub bepoch: u64,
}

impl PamtEntry {
    /// A free frame.
    pub const FREE: PamtEntry = PamtEntry { ty: PageType::Free, level: 0, aux: 0, owner: Pfn::ZERO, bepoch: 0 };

    /// A frame of `ty` owned by the TD whose TDR is `owner`.
    pub const fn owned(ty: PageType, owner: Pfn) -> PamtEntry {
        PamtEntry { ty, level: 0, aux: 0, owner, bepoch: 0 }
    }

    fn encode(&self) -> [u64; 2] {
        let w0 = self.ty as u64
            | (self.level as u64) << 8
            | (self.aux as u64) << 16
            | (self.owner.raw() & ((1 << 40) - 1)) << 24;
        [w0, self.bepoch]
    }

    fn decode(w: [u64; 2]) -> Option<PamtEntry> {
        let ty = PageType::from_raw(w[0] as u8)?;
        let owner = Pfn::new(w[0] >> 24)?;
        Some(PamtEntry { ty, level: (w[0] >> 8) as u8, aux: (w[0] >> 16) as u8, owner, bepoch: w[1] })
    }
}

/// A TDMR: convertible memory and where its PAMT lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Tdmr {
    /// The frames of the TDMR.
    pub frames: FrameRange,
    /// The frames holding its PAMT.
    pub pamt: FrameRange,
}

impl Tdmr {
    /// PAMT frames needed to cover `frames` frames.
    pub const fn pamt_frames_needed(frames: u64) -> u64 {
        (frames * ENTRY_BYTES).div_ceil(4096)
    }
}

/// Why a frame's metadata could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PamtLookupError {
    /// The frame is in no TDMR: it is not convertible memory.
    NotConvertible,
    /// The stored entry does not decode.
    Corrupt,
}

/// The table of all TDMRs' metadata.
#[derive(Clone, Copy, Debug, Default)]
pub struct Pamt {
    tdmrs: [Tdmr; MAX_TDMRS],
    count: usize,
}

impl Pamt {
    /// A PAMT over `tdmrs`, which the caller validated (in range, disjoint, PAMT areas large
    /// enough and inside the TDMRs). Does not touch memory: see [`Pamt::format`].
    pub fn new(tdmrs: &[Tdmr]) -> Pamt {
        let mut p = Pamt::default();
        for (dst, src) in p.tdmrs.iter_mut().zip(tdmrs) {
            *dst = *src;
            p.count += 1;
        }
        p
    }

    /// The configured TDMRs.
    pub fn tdmrs(&self) -> &[Tdmr] {
        &self.tdmrs[..self.count]
    }

    /// Zeroes every PAMT area (all frames free) and marks the PAMT frames reserved.
    pub fn format<M: PhysMem>(&self, mem: &mut M) {
        for t in self.tdmrs() {
            for i in 0..t.pamt.count {
                if let Some(f) = t.pamt.start.checked_add(i) {
                    mem.zero(f);
                }
            }
        }
        let reserved = PamtEntry { ty: PageType::Reserved, ..PamtEntry::FREE };
        for t in self.tdmrs() {
            for i in 0..t.pamt.count {
                if let Some(f) = t.pamt.start.checked_add(i) {
                    self.set(mem, f, reserved);
                }
            }
        }
    }

    /// True if the frame is convertible (inside a TDMR).
    pub fn is_convertible(&self, pfn: Pfn) -> bool {
        self.locate(pfn).is_some()
    }

    #[inline]
    fn locate(&self, pfn: Pfn) -> Option<(Pfn, usize)> {
        for t in self.tdmrs() {
            if let Some(off) = pfn.checked_offset_from(t.frames.start) {
                if off < t.frames.count {
                    let word = off * 2;
                    let frame = t.pamt.start.checked_add(word / 512)?;
                    return Some((frame, (word % 512) as usize));
                }
            }
        }
        None
    }

    /// The metadata of `pfn`.
    ///
    /// # Errors
    /// [`PamtLookupError::NotConvertible`] outside the TDMRs; `Corrupt` if the entry is garbage.
    #[inline]
    pub fn get<M: PhysMem>(&self, mem: &M, pfn: Pfn) -> Result<PamtEntry, PamtLookupError> {
        let (frame, idx) = self.locate(pfn).ok_or(PamtLookupError::NotConvertible)?;
        PamtEntry::decode([mem.read_u64(frame, idx), mem.read_u64(frame, idx + 1)]).ok_or(PamtLookupError::Corrupt)
    }

    /// Stores the metadata of `pfn`; a frame outside the TDMRs is ignored (callers check first).
    #[inline]
    pub fn set<M: PhysMem>(&self, mem: &mut M, pfn: Pfn, entry: PamtEntry) {
        if let Some((frame, idx)) = self.locate(pfn) {
            let [w0, w1] = entry.encode();
            mem.write_u64(frame, idx, w0);
            mem.write_u64(frame, idx + 1, w1);
            mem.ownership_changed(pfn, entry.ty == PageType::Free);
        }
    }

    /// Sets every frame of the block of `size` at `first` to `entry`.
    pub fn set_block<M: PhysMem>(&self, mem: &mut M, first: Pfn, size: PageSize, entry: PamtEntry) {
        for i in 0..size.frames() {
            if let Some(f) = first.checked_add(i) {
                self.set(mem, f, entry);
            }
        }
    }

    /// True if every frame of the block is convertible and free.
    pub fn block_is_free<M: PhysMem>(&self, mem: &M, first: Pfn, size: PageSize) -> bool {
        (0..size.frames())
            .all(|i| first.checked_add(i).is_some_and(|f| matches!(self.get(mem, f), Ok(e) if e.ty == PageType::Free)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_fit_sixteen_bytes_and_round_trip() {
        let e = PamtEntry {
            ty: PageType::Regular,
            level: 2,
            aux: 7,
            owner: Pfn::new((1 << 40) - 1).unwrap(),
            bepoch: u64::MAX,
        };
        let w = e.encode();
        assert_eq!(core::mem::size_of_val(&w) as u64, ENTRY_BYTES);
        assert_eq!(PamtEntry::decode(w), Some(e));
        assert_eq!(PamtEntry::decode([2, 0]), None);
    }

    #[test]
    fn pamt_frames_needed_rounds_up() {
        assert_eq!(Tdmr::pamt_frames_needed(256), 1);
        assert_eq!(Tdmr::pamt_frames_needed(257), 2);
        assert_eq!(Tdmr::pamt_frames_needed(262_144), 1024);
    }
}
