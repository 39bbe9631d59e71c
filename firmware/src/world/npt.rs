//! A nested page table: the identity map of what one world may touch, in the long-mode format
//! SVM's nested walk uses (APM vol. 2 §15.25.5; not the S-EPT's EPT format). Tables come from a
//! fixed pool in the TSM's own memory. 2 MiB leaves where a whole region belongs to the world,
//! 4 KiB leaves where ownership changes inside one (a page donated to a TD, the image's edges).

use crate::arch::svm::PageTable;

const PRESENT: u64 = 1 << 0;
const WRITE: u64 = 1 << 1;
/// Nested walks are user accesses (APM §15.25.5): every entry needs U.
const USER: u64 = 1 << 2;
const PWT: u64 = 1 << 3;
const PCD: u64 = 1 << 4;
const LARGE: u64 = 1 << 7;
const ADDR: u64 = 0x000F_FFFF_FFFF_F000;
const TWO_MIB: u64 = 2 << 20;
const PAGE: u64 = 4096;
/// The nested table covers the low 512 GiB (one PML4 slot): all of q35's RAM and MMIO below 4 GiB.
const LIMIT: u64 = 512 << 30;

/// How a range is mapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemType {
    /// RAM: write-back.
    WriteBack,
    /// Device registers: uncached.
    Uncached,
}

impl MemType {
    const fn bits(self) -> u64 {
        match self {
            MemType::WriteBack => 0,
            MemType::Uncached => PWT | PCD,
        }
    }
}

/// The pool ran out of table frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutOfTables;

/// One nested page table and the frames it may use.
#[derive(Debug)]
pub struct Npt {
    tables: &'static mut [PageTable],
    used: usize,
    /// Set when a translation was removed: the next VMRUN of a world on this table must flush
    /// the TLB (TCG flushes on every VMRUN anyway; hardware does not).
    pub flush: bool,
}

impl Npt {
    /// An empty table (nothing mapped) over `tables`.
    pub fn new(tables: &'static mut [PageTable]) -> Npt {
        for t in tables.iter_mut() {
            t.0 = [0; 512];
        }
        // Frame 0 is the root (PML4).
        Npt { tables, used: 1, flush: false }
    }

    /// nCR3: the root's physical address.
    pub fn root(&self) -> u64 {
        self.phys(0)
    }

    /// Table frames in use.
    pub fn tables_used(&self) -> usize {
        self.used
    }

    fn phys(&self, index: usize) -> u64 {
        &self.tables[index] as *const PageTable as u64
    }

    fn index_of(&self, phys: u64) -> Option<usize> {
        let base = self.phys(0);
        let i = (phys.checked_sub(base)? / PAGE) as usize;
        (i < self.used && self.phys(i) == phys).then_some(i)
    }

    fn alloc(&mut self) -> Result<usize, OutOfTables> {
        if self.used == self.tables.len() {
            return Err(OutOfTables);
        }
        self.used += 1;
        Ok(self.used - 1)
    }

    /// The table under entry `slot` of table `t`, created when absent. A 2 MiB leaf found there is
    /// split into 512 4 KiB leaves with the same frames and attributes.
    fn child(&mut self, t: usize, slot: usize) -> Result<usize, OutOfTables> {
        let e = self.tables[t].0[slot];
        if e & PRESENT != 0 && e & LARGE == 0 {
            return self.index_of(e & ADDR).ok_or(OutOfTables);
        }
        let c = self.alloc()?;
        if e & PRESENT != 0 {
            let base = e & ADDR & !(TWO_MIB - 1);
            let flags = e & (WRITE | USER | PWT | PCD | PRESENT);
            for (i, pte) in self.tables[c].0.iter_mut().enumerate() {
                *pte = (base + i as u64 * PAGE) | flags;
            }
        }
        self.tables[t].0[slot] = self.phys(c) | PRESENT | WRITE | USER;
        Ok(c)
    }

    /// The page directory for `gpa` (created on the way).
    fn pd(&mut self, gpa: u64) -> Result<usize, OutOfTables> {
        let pdpt = self.child(0, ((gpa >> 39) & 511) as usize)?;
        self.child(pdpt, ((gpa >> 30) & 511) as usize)
    }

    /// Maps `[start, end)` (4K-aligned, below 512 GiB) to itself.
    ///
    /// # Errors
    /// [`OutOfTables`]: the pool is exhausted (what was mapped so far stays).
    pub fn map(&mut self, start: u64, end: u64, ty: MemType) -> Result<(), OutOfTables> {
        self.set(start, end, Some((ty, WRITE)))
    }

    /// Maps `[start, end)` to itself for reads only: a write is a nested page fault.
    ///
    /// # Errors
    /// [`OutOfTables`]: the pool is exhausted.
    pub fn map_read_only(&mut self, start: u64, end: u64, ty: MemType) -> Result<(), OutOfTables> {
        self.flush = true;
        self.set(start, end, Some((ty, 0)))
    }

    /// Removes `[start, end)` from the map, splitting 2 MiB leaves that only partly go.
    ///
    /// # Errors
    /// [`OutOfTables`] when a split needs a table the pool does not have.
    pub fn unmap(&mut self, start: u64, end: u64) -> Result<(), OutOfTables> {
        self.flush = true;
        self.set(start, end, None)
    }

    fn set(&mut self, start: u64, end: u64, ty: Option<(MemType, u64)>) -> Result<(), OutOfTables> {
        let end = end.min(LIMIT);
        let mut at = start & !(PAGE - 1);
        while at < end {
            let pd = self.pd(at)?;
            let slot = ((at >> 21) & 511) as usize;
            if at.is_multiple_of(TWO_MIB)
                && at + TWO_MIB <= end
                && self.tables[pd].0[slot] & (PRESENT | LARGE) != PRESENT
            {
                self.tables[pd].0[slot] = match ty {
                    Some((t, write)) => at | PRESENT | write | USER | LARGE | t.bits(),
                    None => 0,
                };
                at += TWO_MIB;
                continue;
            }
            let pt = self.child(pd, slot)?;
            let stop = end.min((at | (TWO_MIB - 1)) + 1);
            while at < stop {
                self.tables[pt].0[((at >> 12) & 511) as usize] = match ty {
                    Some((t, write)) => at | PRESENT | write | USER | t.bits(),
                    None => 0,
                };
                at += PAGE;
            }
        }
        Ok(())
    }

    /// Maps one leaf: GPA `gpa` to host frame `hpa`, 4 KiB or (`large`) 2 MiB, both aligned to
    /// the size (a TD's table, derived from its S-EPT: not an identity map).
    ///
    /// # Errors
    /// [`OutOfTables`]: the pool is exhausted.
    pub fn map_leaf(&mut self, gpa: u64, hpa: u64, large: bool, ty: MemType) -> Result<(), OutOfTables> {
        // Four levels: any GPA below 2^48, the shared half of a GPAW-48 TD included.
        if gpa >= 1 << 48 {
            return Err(OutOfTables);
        }
        let pd = self.pd(gpa)?;
        let slot = ((gpa >> 21) & 511) as usize;
        if large {
            self.tables[pd].0[slot] = (hpa & ADDR) | PRESENT | WRITE | USER | LARGE | ty.bits();
            return Ok(());
        }
        let pt = self.child(pd, slot)?;
        self.tables[pt].0[((gpa >> 12) & 511) as usize] = (hpa & ADDR) | PRESENT | WRITE | USER | ty.bits();
        Ok(())
    }

    /// Drops every leaf that maps any of `[start, end)`: a 2 MiB leaf goes whole, never split
    /// (the table is a cache; the next fault fills again what is still granted). Needs no frame.
    pub fn zap(&mut self, start: u64, end: u64) {
        self.flush = true;
        let mut at = start & !(PAGE - 1);
        while at < end.min(LIMIT) {
            let next = (at | (TWO_MIB - 1)) + 1;
            let Some(pd) = self.existing(at) else {
                at = next;
                continue;
            };
            let slot = ((at >> 21) & 511) as usize;
            let e = self.tables[pd].0[slot];
            if e & PRESENT != 0 && e & LARGE != 0 {
                self.tables[pd].0[slot] = 0;
                at = next;
                continue;
            }
            if let Some(pt) = (e & PRESENT != 0).then(|| self.index_of(e & ADDR)).flatten() {
                while at < next.min(end) {
                    self.tables[pt].0[((at >> 12) & 511) as usize] = 0;
                    at += PAGE;
                }
            }
            at = next;
        }
    }

    /// Drops everything: the empty table again, every frame back in the pool.
    pub fn reset(&mut self) {
        for t in self.tables[..self.used].iter_mut() {
            t.0 = [0; 512];
        }
        self.used = 1;
        self.flush = true;
    }

    /// The page directory for `gpa` if the walk to it exists.
    fn existing(&self, gpa: u64) -> Option<usize> {
        let mut t = 0;
        for shift in [39u32, 30] {
            let e = self.tables[t].0[((gpa >> shift) & 511) as usize];
            if e & PRESENT == 0 || e & LARGE != 0 {
                return None;
            }
            t = self.index_of(e & ADDR)?;
        }
        Some(t)
    }

    /// True if the world may read the 4K page holding `gpa` (the map is an identity map, so the
    /// answer also says that host physical address `gpa` is the world's, for reading at least).
    pub fn maps(&self, gpa: u64) -> bool {
        if gpa >= LIMIT {
            return false;
        }
        let mut t = 0;
        for shift in [39u32, 30, 21, 12] {
            let e = self.tables[t].0[((gpa >> shift) & 511) as usize];
            if e & PRESENT == 0 {
                return false;
            }
            if shift == 12 || (shift == 21 && e & LARGE != 0) {
                return true;
            }
            match self.index_of(e & ADDR) {
                Some(i) => t = i,
                None => return false,
            }
        }
        false
    }
}
