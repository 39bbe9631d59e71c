//! TDG.VP.VMCALL<MapGPA>: the TD converts a range between private and shared, and the host
//! does both sides, as a TDX VMM does (GHCI §3.2; KVM's `tdx_handle_map_gpa`):
//!
//! - **private → shared** (the GPA names the shared bit): every private page of the range is
//!   taken out of the S-EPT through the TSM: TDH.MEM.RANGE.BLOCK of each leaf (a 2 MiB leaf
//!   that the range covers only in part is blocked, tracked and split with TDH.MEM.PAGE.DEMOTE
//!   first), one TDH.MEM.TRACK, then TDH.MEM.PAGE.REMOVE of each, which zeroes the frames and
//!   gives them back to the host. Those frames then back the shared GPAs in the host's own table
//!   for the TD's shared half ([`SharedTable`], named to the TSM with SEAMLESS.SHARED.EPT.SET),
//!   so what the TD puts in its bounce buffers is in host memory, and only there. A shared GPA
//!   with no private page behind it (MMIO, the PCI window edk2 marks shared) gets no frame:
//!   the TD reaches it through TDG.VP.VMCALL<MMIO>.
//! - **shared → private**: each 4 KiB page of the range leaves the shared table, and its frame
//!   (or a fresh one) is TDH.MEM.PAGE.AUGed at the private GPA; the TD accepts it
//!   (edk2 follows MapGPA with TDG.MEM.PAGE.ACCEPT, which zeroes it). A range reaching GPAs
//!   the TD has no memory at (neither RAM nor a page it made shared) is refused before
//!   anything changes ([`backed`]): the host gives frames for the TD's memory, not for any
//!   address the TD names.

use tsm::abi::host::leaf;
use tsm::sept::SeptState;
use tsm::{Regs, Status};

use crate::host::td::{aug, coverage, TdPages};
use crate::host::{call, donate, raw, scratch, HostError, HostMemory, Seamcall};
use crate::PAGE;

const PRESENT_WRITABLE: u64 = 0x3;
const ADDR_MASK: u64 = 0x000F_FFFF_FFFF_F000;

/// The host's table for a TD's shared half: an x86-64 4-level table in host pages, 4 KiB leaves,
/// indexed by the full shared GPA (SEAMLESS.SHARED.EPT.SET names its root).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SharedTable {
    root: Option<u64>,
    /// Shared pages mapped now.
    pub mapped: u64,
    /// Table pages taken from the host.
    pub tables: u64,
}

impl SharedTable {
    /// The root, made and named to the TSM on first use.
    fn root<H: Seamcall + HostMemory + ?Sized>(&mut self, h: &mut H, td: &TdPages) -> Result<u64, HostError> {
        if let Some(r) = self.root {
            return Ok(r);
        }
        let r = scratch(h)?;
        self.tables += 1;
        call(h, "SEAMLESS.SHARED.EPT.SET", Regs::call(leaf::SHARED_EPT_SET, td.tdr, r, 0, 0))?;
        self.root = Some(r);
        Ok(r)
    }

    /// The address of the 4 KiB leaf slot of `gpa`, the tables on the way made if `make`.
    fn slot<H: Seamcall + HostMemory + ?Sized>(
        &mut self,
        h: &mut H,
        td: &TdPages,
        gpa: u64,
        make: bool,
    ) -> Result<Option<u64>, HostError> {
        let mut table = match (self.root, make) {
            (Some(r), _) => r,
            (None, true) => self.root(h, td)?,
            (None, false) => return Ok(None),
        };
        for shift in [39u32, 30, 21] {
            let at = table + ((gpa >> shift) & 511) * 8;
            let e = read_u64(h, at);
            if e & 1 == 0 {
                if !make {
                    return Ok(None);
                }
                let t = scratch(h)?;
                self.tables += 1;
                h.write(at, &(t | PRESENT_WRITABLE).to_le_bytes());
                table = t;
            } else {
                table = e & ADDR_MASK;
            }
        }
        Ok(Some(table + ((gpa >> 12) & 511) * 8))
    }

    /// The host frame behind shared `gpa`, if any.
    ///
    /// # Errors
    /// [`HostError`] (none for a lookup; the signature is the walk's).
    pub fn lookup<H: Seamcall + HostMemory + ?Sized>(
        &mut self,
        h: &mut H,
        td: &TdPages,
        gpa: u64,
    ) -> Result<Option<u64>, HostError> {
        let Some(slot) = self.slot(h, td, gpa, false)? else { return Ok(None) };
        let e = read_u64(h, slot);
        Ok((e & 1 != 0).then_some(e & ADDR_MASK))
    }

    fn map<H: Seamcall + HostMemory + ?Sized>(
        &mut self,
        h: &mut H,
        td: &TdPages,
        gpa: u64,
        frame: u64,
    ) -> Result<(), HostError> {
        let slot = self.slot(h, td, gpa, true)?.ok_or(HostError::OutOfPages)?;
        if read_u64(h, slot) & 1 == 0 {
            self.mapped += 1;
        }
        h.write(slot, &(frame | PRESENT_WRITABLE).to_le_bytes());
        Ok(())
    }

    fn unmap<H: Seamcall + HostMemory + ?Sized>(
        &mut self,
        h: &mut H,
        td: &TdPages,
        gpa: u64,
    ) -> Result<Option<u64>, HostError> {
        let Some(slot) = self.slot(h, td, gpa, false)? else { return Ok(None) };
        let e = read_u64(h, slot);
        if e & 1 == 0 {
            return Ok(None);
        }
        h.write(slot, &0u64.to_le_bytes());
        self.mapped -= 1;
        Ok(Some(e & ADDR_MASK))
    }
}

fn read_u64<H: HostMemory + ?Sized>(h: &mut H, pa: u64) -> u64 {
    let mut b = [0u8; 8];
    h.read(pa, &mut b);
    u64::from_le_bytes(b)
}

/// The private mapping of a GPA as TDH.MEM.SEPT.RD at level 0 sees it: the level where the walk
/// ended (a leaf or a free entry) and its state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Slot {
    level: u8,
    state: Option<SeptState>,
}

fn private_slot<H: Seamcall + ?Sized>(h: &mut H, td: &TdPages, gpa: u64) -> Result<Slot, HostError> {
    let r = raw(h, Regs::call(leaf::MEM_SEPT_RD, gpa & !(PAGE - 1), td.tdr, 0, 0));
    if r.status() != Status::SUCCESS && r.status().code() != Status::EPT_WALK_FAILED.code() {
        return Err(HostError::Call { leaf: "TDH.MEM.SEPT.RD", status: r.status(), rcx: r.rcx, rdx: r.rdx });
    }
    Ok(Slot { level: (r.rdx & 7) as u8, state: SeptState::from_code((r.rdx >> 8) & 0xFF) })
}

/// What MapGPA did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Conversions {
    /// MapGPA calls served.
    pub calls: u64,
    /// 4 KiB pages made shared (frames moved from the S-EPT to the shared table).
    pub to_shared: u64,
    /// 4 KiB pages made private again (AUGed for the TD to accept).
    pub to_private: u64,
    /// 2 MiB leaves split to convert part of them.
    pub demoted: u64,
    /// The TD has a DMA remapping entry (the host set this after TDH.DMAR.ADD): a blocked page
    /// may still sit in the IOMMU's IOTLB, so every TRACK is followed by TDH.IQ.INV.REQUEST
    /// before the TSM lets the page go.
    pub iotlb: bool,
}

/// TDH.MEM.TRACK, and for a TD with a DMA entry TDH.IQ.INV.REQUEST: the blocks retire for the
/// CPU and the IOTLB.
fn track<H: Seamcall + ?Sized>(h: &mut H, td: &TdPages, iotlb: bool) -> Result<(), HostError> {
    call(h, "TDH.MEM.TRACK", Regs::call(leaf::MEM_TRACK, td.tdr, 0, 0, 0))?;
    if iotlb {
        call(h, "TDH.IQ.INV.REQUEST", Regs::call(leaf::IQ_INV_REQUEST, td.tdr, 0, 0, 0))?;
    }
    Ok(())
}

/// The end of the leaf at `gpa` of `level`, clipped to `end`.
fn leaf_end(gpa: u64, level: u8, end: u64) -> u64 {
    let cov = coverage(level);
    ((gpa & !(cov - 1)).saturating_add(cov)).min(end)
}

/// Converts `[start, start + bytes)` (private GPAs, 4 KiB aligned) to shared. `ram` is the
/// TD's RAM: a shared RAM page with no private frame to take over gets a fresh host frame.
///
/// # Errors
/// [`HostError`] of the first call that fails.
pub fn to_shared<H: Seamcall + HostMemory + ?Sized>(
    h: &mut H,
    td: &TdPages,
    shared: &mut SharedTable,
    shared_bit: u64,
    (start, bytes): (u64, u64),
    ram: &[(u64, u64)],
    counts: &mut Conversions,
) -> Result<(), HostError> {
    let end = start.saturating_add(bytes);
    // 1. Block every private leaf of the range; split a 2 MiB leaf the range covers in part.
    let mut gpa = start;
    while gpa < end {
        let s = private_slot(h, td, gpa)?;
        let next = leaf_end(gpa, s.level, end);
        if let Some(SeptState::Mapped | SeptState::Pending) = s.state {
            let base = gpa & !(coverage(s.level) - 1);
            let whole = base >= start && base + coverage(s.level) <= end;
            let at = base | u64::from(s.level);
            call(h, "TDH.MEM.RANGE.BLOCK", Regs::call(leaf::MEM_RANGE_BLOCK, at, td.tdr, 0, 0))?;
            if !whole {
                track(h, td, counts.iotlb)?;
                let table = donate(h)?;
                call(h, "TDH.MEM.PAGE.DEMOTE", Regs::call(leaf::MEM_PAGE_DEMOTE, at, td.tdr, table, 0))?;
                counts.demoted += 1;
                // The leaves are 4 KiB now: look at this GPA again.
                continue;
            }
        }
        gpa = next;
    }
    track(h, td, counts.iotlb)?;
    // 2. Remove them: the frames come back zeroed and back the shared GPAs.
    let mut gpa = start;
    while gpa < end {
        let s = private_slot(h, td, gpa)?;
        let next = leaf_end(gpa, s.level, end);
        match s.state {
            Some(SeptState::Blocked | SeptState::PendingBlocked) => {
                let base = gpa & !(coverage(s.level) - 1);
                let r = call(
                    h,
                    "TDH.MEM.PAGE.REMOVE",
                    Regs::call(leaf::MEM_PAGE_REMOVE, base | u64::from(s.level), td.tdr, 0, 0),
                )?;
                let frame = r.rcx;
                for page in 0..coverage(s.level) / PAGE {
                    shared.map(h, td, (base + page * PAGE) | shared_bit, frame + page * PAGE)?;
                    counts.to_shared += 1;
                }
            }
            Some(SeptState::Free) | None => {
                // No private page: the RAM part gets fresh frames, anything else (MMIO) none.
                for &(r_start, r_len) in ram {
                    let mut page = gpa.max(r_start);
                    while page < next.min(r_start.saturating_add(r_len)) {
                        if shared.lookup(h, td, page | shared_bit)?.is_none() {
                            let frame = donate(h)?;
                            h.write(frame, &[0u8; PAGE as usize]);
                            shared.map(h, td, page | shared_bit, frame)?;
                            counts.to_shared += 1;
                        }
                        page += PAGE;
                    }
                }
            }
            _ => {}
        }
        gpa = next;
    }
    Ok(())
}

/// The RAM range holding `gpa`, as `(start, end)`.
fn ram_at(ram: &[(u64, u64)], gpa: u64) -> Option<(u64, u64)> {
    ram.iter().map(|&(s, l)| (s, s.saturating_add(l))).find(|&(s, e)| s <= gpa && gpa < e)
}

/// True if every page of `[start, start + bytes)` (private GPAs, 4 KiB aligned) is memory of
/// the TD's: in its RAM, private already, or a page it made shared (whose frame the host
/// holds). Changes nothing; its cost is the pages outside RAM it finds backed, so a range of
/// any size is answered at once.
///
/// # Errors
/// [`HostError`] of a TDH.MEM.SEPT.RD that fails.
pub fn backed<H: Seamcall + HostMemory + ?Sized>(
    h: &mut H,
    td: &TdPages,
    shared: &mut SharedTable,
    shared_bit: u64,
    (start, bytes): (u64, u64),
    ram: &[(u64, u64)],
) -> Result<bool, HostError> {
    let end = start.saturating_add(bytes);
    let mut gpa = start;
    while gpa < end {
        if let Some((_, ram_end)) = ram_at(ram, gpa) {
            gpa = ram_end;
            continue;
        }
        let s = private_slot(h, td, gpa)?;
        gpa = match s.state {
            Some(SeptState::Free) | None if shared.lookup(h, td, gpa | shared_bit)?.is_none() => return Ok(false),
            Some(SeptState::Free) | None => gpa + PAGE,
            Some(_) => leaf_end(gpa, s.level, end),
        };
    }
    Ok(true)
}

/// Converts `[start, start + bytes)` (private GPAs, 4 KiB aligned) back to private: each page
/// leaves the shared table and its frame, or (in RAM) a fresh one, is AUGed for the TD to
/// accept. Pages already private are left as they are, and so are GPAs outside `ram` with no
/// frame (a range [`backed`] accepts has none).
///
/// # Errors
/// [`HostError`] of the first call that fails.
pub fn to_private<H: Seamcall + HostMemory + ?Sized>(
    h: &mut H,
    td: &TdPages,
    shared: &mut SharedTable,
    shared_bit: u64,
    (start, bytes): (u64, u64),
    ram: &[(u64, u64)],
    counts: &mut Conversions,
) -> Result<(), HostError> {
    let end = start.saturating_add(bytes);
    let mut gpa = start;
    while gpa < end {
        let frame = shared.unmap(h, td, gpa | shared_bit)?;
        let s = private_slot(h, td, gpa)?;
        match s.state {
            Some(SeptState::Free) | None => {
                let page = match frame {
                    Some(f) => f,
                    None if ram_at(ram, gpa).is_some() => donate(h)?,
                    None => {
                        gpa += PAGE;
                        continue;
                    }
                };
                aug(h, td, gpa, 0, page)?;
                counts.to_private += 1;
                gpa += PAGE;
            }
            _ => {
                // Already private: a frame it had in the shared table goes back to the host.
                if let Some(f) = frame {
                    h.release(f);
                }
                gpa = if frame.is_some() { gpa + PAGE } else { leaf_end(gpa, s.level, end).max(gpa + PAGE) };
            }
        }
    }
    Ok(())
}

/// True if `[start, start + bytes)` is a range MapGPA accepts: 4 KiB aligned, not empty, below
/// the shared bit once it is cleared.
pub fn valid_range(start: u64, bytes: u64, shared_bit: u64) -> bool {
    let gpa = start & !shared_bit;
    bytes != 0
        && gpa.is_multiple_of(PAGE)
        && bytes.is_multiple_of(PAGE)
        && gpa.checked_add(bytes).is_some_and(|e| e <= shared_bit)
}
