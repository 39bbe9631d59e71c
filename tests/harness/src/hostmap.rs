//! The host map as the firmware keeps it for the host world and the host domain: the identity
//! map of the frames the host owns, 4-level, 4 KiB leaves, in the encoding both an x86 nested
//! walk and a VT-d second stage accept (R/P = bit 0, W = bit 1), its tables in platform memory
//! the host does not own. [`crate::arena::HostPlatform`] keeps it equal to the PAMT through
//! `PhysMem::ownership_changed`, as `FirmwarePlatform` keeps the host world's nested table.

use tsm::addr::Pfn;
use tsm::platform::PhysMem;

use crate::arena::HostMem;

const PRESENT: u64 = 1;
const WRITE: u64 = 1 << 1;
const ADDR: u64 = 0x0000_FFFF_FFFF_F000;

/// The pool of table frames ran out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutOfTables;

/// One identity map and the frames its tables may use.
#[derive(Debug)]
pub struct HostMap {
    pool: Pfn,
    pool_frames: u64,
    used: u64,
}

impl HostMap {
    /// An empty map whose tables are taken from the `pool_frames` frames at `pool` (the root is
    /// the first, zeroed here).
    pub fn new(mem: &mut HostMem, pool: Pfn, pool_frames: u64) -> HostMap {
        mem.zero(pool);
        HostMap { pool, pool_frames, used: 1 }
    }

    /// The root table (what SSPTPTR / nCR3 holds).
    pub fn root(&self) -> Pfn {
        self.pool
    }

    /// True if `pfn` is one of the map's table frames (reserved for it, used or not).
    pub fn is_table(&self, pfn: Pfn) -> bool {
        pfn.raw() >= self.pool.raw() && pfn.raw() < self.pool.raw() + self.pool_frames
    }

    fn alloc(&mut self, mem: &mut HostMem) -> Result<Pfn, OutOfTables> {
        if self.used == self.pool_frames {
            return Err(OutOfTables);
        }
        let f = self.pool.checked_add(self.used).ok_or(OutOfTables)?;
        self.used += 1;
        mem.zero(f);
        Ok(f)
    }

    /// Maps (`present`) or unmaps the 4 KiB frame `pfn` to itself.
    ///
    /// # Errors
    /// [`OutOfTables`] when a table is missing and the pool is exhausted.
    pub fn set(&mut self, mem: &mut HostMem, pfn: Pfn, present: bool) -> Result<(), OutOfTables> {
        let addr = pfn.addr().raw();
        let mut table = self.pool;
        for level in [3u32, 2, 1] {
            let index = ((addr >> (12 + 9 * level)) & 511) as usize;
            let e = mem.read_u64(table, index);
            table = if e & PRESENT != 0 {
                Pfn::new((e & ADDR) >> 12).ok_or(OutOfTables)?
            } else if !present {
                return Ok(());
            } else {
                let t = self.alloc(mem)?;
                mem.write_u64(table, index, t.addr().raw() | PRESENT | WRITE);
                t
            };
        }
        let leaf = if present { addr | PRESENT | WRITE } else { 0 };
        mem.write_u64(table, ((addr >> 12) & 511) as usize, leaf);
        Ok(())
    }
}
