//! A TD whose firmware is a TDVF (an OVMF image with TDX metadata, `attest::tdvf`), built as a
//! TDX VMM builds it (QEMU `tdx_finalize_vm` with KVM):
//!
//! 1. TDH.MNG.CREATE, ADDCX, MNG.INIT, VP.CREATE (one vCPU: MAX_VCPUS must be the number of
//!    vCPUs created, see [`build`]).
//! 2. Every section in table order, every page in ascending GPA order: TDH.MEM.PAGE.ADD with the
//!    file's bytes (BFV, CFV), the TD HOB (TD_HOB) or zeros (TEMP_MEM), then TDH.MR.EXTEND of
//!    its sixteen chunks for a section with the MR.EXTEND attribute. This is the order
//!    `attest::tdvf::Tdvf::mrtd` replays, so `attest measure OVMF.fd` gives the TD's MRTD.
//! 3. TDH.MR.FINALIZE.
//! 4. The rest of the TD's RAM, which the TD HOB lists as unaccepted: AUGed now ([`Aug::UpFront`],
//!    at the page size edk2 will accept each page with, see [`aug_unaccepted`]) or left to the EPT violations of the guest's TDG.MEM.PAGE.ACCEPT
//!    ([`Aug::OnDemand`]).
//!
//! The TD HOB ([`MemoryMap`], [`write_hob`]) is the list QEMU's `hw/i386/tdvf-hob.c` writes and
//! edk2's `PlatformInitLib/IntelTdx.c:ValidateHobList` accepts: a PHIT (56 bytes), one resource
//! descriptor per RAM range in address order (what was PAGE.ADDed: type 0 system memory;
//! everything else: type 7 unaccepted; attributes 0x7 present, initialized, tested), and the
//! END HOB. Never a MEMORY_ALLOCATION HOB: edk2 2022.11's SEC refuses the list and dead-loops.

use core::fmt;

use attest::tdvf::{SectionType, Tdvf};
use tsm::td::TdParams;

use super::td::{add_page_from, aug, create, finalize, vp_create, TdPages};
use super::{donate, scratch, HostError, HostMemory, Seamcall};
use crate::PAGE;

/// EFI_HOB_TYPE_HANDOFF (PI spec vol. 3, §5.3).
pub const HOB_TYPE_HANDOFF: u16 = 0x0001;
/// EFI_HOB_TYPE_RESOURCE_DESCRIPTOR.
pub const HOB_TYPE_RESOURCE_DESCRIPTOR: u16 = 0x0003;
/// EFI_HOB_TYPE_END_OF_HOB_LIST.
pub const HOB_TYPE_END: u16 = 0xFFFF;
/// EFI_HOB_HANDOFF_TABLE_VERSION.
pub const HANDOFF_TABLE_VERSION: u32 = 0x0009;
/// Bytes of the PHIT (EFI_HOB_HANDOFF_INFO_TABLE); ValidateHobList wants exactly this.
pub const PHIT_BYTES: usize = 56;
/// Bytes of an EFI_HOB_RESOURCE_DESCRIPTOR.
pub const RESOURCE_BYTES: usize = 48;
/// Bytes of the END HOB (a bare header).
pub const END_BYTES: usize = 8;
/// EFI_RESOURCE_SYSTEM_MEMORY: RAM the VMM added (accepted).
pub const RESOURCE_SYSTEM_MEMORY: u32 = 0;
/// EFI_RESOURCE_MEMORY_UNACCEPTED (edk2's BZ3937 value): RAM the guest must accept.
pub const RESOURCE_MEMORY_UNACCEPTED: u32 = 7;
/// PRESENT | INITIALIZED | TESTED: QEMU's EFI_RESOURCE_ATTRIBUTE_TDVF_PRIVATE and _UNACCEPTED.
pub const RESOURCE_ATTRIBUTES: u32 = 0x7;
/// RAM ranges a TD HOB can list here (the list must fit one page, the only one written).
pub const MAX_RANGES: usize = 64;
const _: () = assert!(PHIT_BYTES + MAX_RANGES * RESOURCE_BYTES + END_BYTES <= PAGE as usize);

/// One range of the TD's RAM as the TD HOB describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RamRange {
    /// First byte's GPA (4 KiB aligned).
    pub start: u64,
    /// Bytes (a 4 KiB multiple).
    pub length: u64,
    /// True if the VMM PAGE.ADDed it (a TD_HOB or TEMP_MEM section); false for RAM the guest
    /// accepts.
    pub accepted: bool,
}

impl RamRange {
    /// The end GPA (exclusive).
    pub const fn end(&self) -> u64 {
        self.start.saturating_add(self.length)
    }

    const EMPTY: RamRange = RamRange { start: 0, length: 0, accepted: false };
}

/// Why the TD's memory cannot be laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    /// No RAM.
    NoRam,
    /// A RAM range that is empty, unaligned, overflowing, or not after the one before it.
    BadRam {
        /// Its place in the list.
        index: usize,
    },
    /// More ranges than [`MAX_RANGES`] once the sections split the RAM.
    TooManyRanges,
    /// A TD_HOB or TEMP_MEM section that does not lie wholly inside one RAM range: the
    /// firmware would use memory the TD does not have (QEMU refuses it too).
    SectionOutsideRam {
        /// The section's place in the table.
        index: usize,
    },
    /// A BFV or CFV inside RAM: the TD HOB would offer the firmware's own code as free memory.
    FirmwareInRam {
        /// The section's place in the table.
        index: usize,
    },
    /// The TDVF has no TD_HOB section: nowhere to put the memory map.
    NoTdHob,
}

impl fmt::Display for MapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            MapError::NoRam => f.write_str("the TD has no RAM"),
            MapError::BadRam { index } => write!(
                f,
                "RAM range {index} is empty, not 4 KiB aligned, overflows, or does not follow the one before it"
            ),
            MapError::TooManyRanges => write!(f, "the TD HOB would need more than {MAX_RANGES} RAM ranges"),
            MapError::SectionOutsideRam { index } => {
                write!(f, "TDVF section {index} (TD_HOB or TEMP_MEM) does not lie inside the TD's RAM")
            }
            MapError::FirmwareInRam { index } => write!(f, "TDVF section {index} (BFV or CFV) overlaps the TD's RAM"),
            MapError::NoTdHob => f.write_str("the TDVF has no TD_HOB section"),
        }
    }
}

/// The TD's RAM in address order, split where the TDVF's RAM sections lie: what the TD HOB
/// lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryMap {
    ranges: [RamRange; MAX_RANGES],
    count: usize,
}

impl MemoryMap {
    /// The map of a TD with RAM `ram` (`(start, length)`, ascending, disjoint, 4 KiB aligned)
    /// whose firmware is `tdvf`: every TD_HOB and TEMP_MEM section is accepted (PAGE.ADDed),
    /// the rest unaccepted, as QEMU's `tdx_accept_ram_range` splits it.
    ///
    /// # Errors
    /// [`MapError`].
    pub fn new(ram: &[(u64, u64)], tdvf: &Tdvf<'_>) -> Result<MemoryMap, MapError> {
        if ram.is_empty() {
            return Err(MapError::NoRam);
        }
        let mut m = MemoryMap { ranges: [RamRange::EMPTY; MAX_RANGES], count: 0 };
        let mut prev_end = 0;
        for (index, &(start, length)) in ram.iter().enumerate() {
            let ok = length != 0
                && start.is_multiple_of(PAGE)
                && length.is_multiple_of(PAGE)
                && start.checked_add(length).is_some()
                && (index == 0 || start >= prev_end);
            if !ok {
                return Err(MapError::BadRam { index });
            }
            prev_end = start + length;
            m.push(RamRange { start, length, accepted: false })?;
        }
        for (index, s) in tdvf.sections().enumerate() {
            let inside = m.ranges[..m.count].iter().position(|r| !r.accepted && r.start <= s.gpa && s.end() <= r.end());
            match s.ty {
                SectionType::Bfv | SectionType::Cfv => {
                    if m.ranges[..m.count].iter().any(|r| s.gpa < r.end() && r.start < s.end()) {
                        return Err(MapError::FirmwareInRam { index });
                    }
                }
                SectionType::TdHob | SectionType::TempMem => {
                    let at = inside.ok_or(MapError::SectionOutsideRam { index })?;
                    m.split(at, s.gpa, s.size)?;
                }
            }
        }
        if tdvf.td_hob().is_none() {
            return Err(MapError::NoTdHob);
        }
        Ok(m)
    }

    fn push(&mut self, r: RamRange) -> Result<(), MapError> {
        let slot = self.ranges.get_mut(self.count).ok_or(MapError::TooManyRanges)?;
        *slot = r;
        self.count += 1;
        Ok(())
    }

    /// Marks `[start, start + length)` inside unaccepted range `at` accepted, keeping the list
    /// in address order.
    fn split(&mut self, at: usize, start: u64, length: u64) -> Result<(), MapError> {
        let r = self.ranges[at];
        let pieces = [
            RamRange { start: r.start, length: start - r.start, accepted: false },
            RamRange { start, length, accepted: true },
            RamRange { start: start + length, length: r.end() - (start + length), accepted: false },
        ];
        let extra = pieces.iter().filter(|p| p.length != 0).count() - 1;
        if self.count + extra > MAX_RANGES {
            return Err(MapError::TooManyRanges);
        }
        self.ranges.copy_within(at + 1..self.count, at + 1 + extra);
        for (i, p) in (at..).zip(pieces.into_iter().filter(|p| p.length != 0)) {
            self.ranges[i] = p;
        }
        self.count += extra;
        Ok(())
    }

    /// The ranges, in address order.
    pub fn ranges(&self) -> &[RamRange] {
        &self.ranges[..self.count]
    }

    /// Bytes of the TD HOB describing this map.
    pub const fn hob_bytes(&self) -> usize {
        PHIT_BYTES + self.count * RESOURCE_BYTES + END_BYTES
    }
}

fn header(out: &mut [u8], at: usize, ty: u16, len: usize) {
    out[at..at + 2].copy_from_slice(&ty.to_le_bytes());
    out[at + 2..at + 4].copy_from_slice(&(len as u16).to_le_bytes());
    out[at + 4..at + 8].fill(0);
}

/// Writes the TD HOB for `map`, to be loaded at `hob_gpa`, into `out` (zeroed first); returns
/// the bytes used. The PHIT's EfiEndOfHobList is the GPA just past the END HOB, as QEMU writes
/// it; its memory fields stay zero (edk2 ignores them in a TD).
///
/// # Errors
/// [`HostError::TdHobTooSmall`] if `out` cannot hold the list.
pub fn write_hob(map: &MemoryMap, hob_gpa: u64, out: &mut [u8]) -> Result<usize, HostError> {
    let n = map.hob_bytes();
    if out.len() < n {
        return Err(HostError::TdHobTooSmall { needed: n as u64 });
    }
    out.fill(0);
    header(out, 0, HOB_TYPE_HANDOFF, PHIT_BYTES);
    out[8..12].copy_from_slice(&HANDOFF_TABLE_VERSION.to_le_bytes());
    // BootMode 0 (BOOT_WITH_FULL_CONFIGURATION) and the memory fields stay zero.
    out[48..56].copy_from_slice(&hob_gpa.saturating_add(n as u64).to_le_bytes());
    let mut at = PHIT_BYTES;
    for r in map.ranges() {
        header(out, at, HOB_TYPE_RESOURCE_DESCRIPTOR, RESOURCE_BYTES);
        // Owner GUID (8..24) zero.
        let ty = if r.accepted { RESOURCE_SYSTEM_MEMORY } else { RESOURCE_MEMORY_UNACCEPTED };
        out[at + 24..at + 28].copy_from_slice(&ty.to_le_bytes());
        out[at + 28..at + 32].copy_from_slice(&RESOURCE_ATTRIBUTES.to_le_bytes());
        out[at + 32..at + 40].copy_from_slice(&r.start.to_le_bytes());
        out[at + 40..at + 48].copy_from_slice(&r.length.to_le_bytes());
        at += RESOURCE_BYTES;
    }
    header(out, at, HOB_TYPE_END, END_BYTES);
    Ok(n)
}

/// What happens to the RAM the TD HOB lists as unaccepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Aug {
    /// AUGed after MR.FINALIZE, at the sizes edk2 accepts with ([`aug_unaccepted`]).
    UpFront,
    /// Left unmapped: the guest's ACCEPT exits with an EPT violation and the host AUGs then.
    OnDemand,
}

/// What [`build`] made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BuiltTdvf {
    /// The TD.
    pub td: TdPages,
    /// vCPU 0's TDVPR (not entered yet: the vCPU's entry state is the TD world's).
    pub vcpu: u64,
    /// The memory map the TD HOB describes.
    pub map: MemoryMap,
    /// Pages added with TDH.MEM.PAGE.ADD.
    pub added: u64,
    /// Pages measured with TDH.MR.EXTEND.
    pub measured: u64,
    /// 2 MiB and 4 KiB pages AUGed.
    pub augs: (u64, u64),
}

/// Builds a one-vCPU TD from the TDVF image `ovmf` with RAM `ram` (module doc, steps 1–4).
///
/// `params.max_vcpus` must be 1: edk2 2022.11 reads TDG.VP.INFO's R8 with its halves swapped
/// against the TDX ABI (its NumVcpus is R8[63:32], MAX_VCPUS), so a TD whose MAX_VCPUS exceeds
/// the vCPUs created makes its SEC wait for APs that never come.
///
/// # Errors
/// [`HostError::Tdvf`] for an image the loader refuses, [`HostError::TdMemory`] for a RAM
/// layout that cannot hold its sections, [`HostError::TdvfVcpus`] for `max_vcpus` other than
/// 1, or the first call that fails.
pub fn build<H: Seamcall + HostMemory + ?Sized>(
    h: &mut H,
    ovmf: &[u8],
    params: &TdParams,
    ram: &[(u64, u64)],
    aug_plan: Aug,
) -> Result<BuiltTdvf, HostError> {
    let tdvf = Tdvf::parse(ovmf).map_err(HostError::Tdvf)?;
    let map = MemoryMap::new(ram, &tdvf).map_err(HostError::TdMemory)?;
    if params.max_vcpus != 1 {
        return Err(HostError::TdvfVcpus(params.max_vcpus));
    }
    let hob_section = tdvf.td_hob().ok_or(HostError::TdMemory(MapError::NoTdHob))?;
    let mut hob = [0u8; PAGE as usize];
    write_hob(&map, hob_section.gpa, &mut hob)?;
    let td = create(h, params)?;
    let vcpu = vp_create(h, &td)?;
    let src = scratch(h)?;
    let (mut added, mut measured) = (0, 0);
    for s in tdvf.sections() {
        for i in 0..s.pages() {
            let (gpa, mut content) = tdvf.page(&s, i);
            if s.ty == SectionType::TdHob && i == 0 {
                content = hob;
            }
            add_page_from(h, &td, gpa, &content, s.measured(), src)?;
            added += 1;
            measured += u64::from(s.measured());
        }
    }
    finalize(h, &td)?;
    let augs = match aug_plan {
        Aug::UpFront => aug_unaccepted(h, &td, &map)?,
        Aug::OnDemand => (0, 0),
    };
    Ok(BuiltTdvf { td, vcpu, map, added, measured, augs })
}

const SIZE_2M: u64 = 2 << 20;

/// AUGs every unaccepted page of `map` at the size edk2 2022.11 will accept it
/// (`BspAcceptMemoryResourceRange`): 4 KiB up to the range's first 2 MiB boundary; 2 MiB pages
/// for the aligned middle when it is longer than 2 MiB (and the host has 2 MiB blocks); 4 KiB
/// for the rest. A 2 MiB page where edk2 asks 4 KiB would answer its 4 KiB ACCEPT with
/// PAGE_SIZE_MISMATCH, which edk2 does not retry at 4 KiB: its SEC would dead-loop. Returns
/// the counts of 2 MiB and 4 KiB AUGs.
///
/// # Errors
/// [`HostError`] of the first step that fails.
pub fn aug_unaccepted<H: Seamcall + HostMemory + ?Sized>(
    h: &mut H,
    td: &TdPages,
    map: &MemoryMap,
) -> Result<(u64, u64), HostError> {
    let (mut big, mut small) = (0, 0);
    for r in map.ranges().iter().filter(|r| !r.accepted) {
        let head_end = r.start.next_multiple_of(SIZE_2M).min(r.end());
        let middle = if r.end() - head_end > SIZE_2M { (r.end() - head_end) / SIZE_2M * SIZE_2M } else { 0 };
        let mut gpa = r.start;
        while gpa < r.end() {
            if gpa >= head_end && gpa < head_end + middle {
                if let Some(block) = h.donate_2m() {
                    aug(h, td, gpa, 1, block)?;
                    big += 1;
                    gpa += SIZE_2M;
                    continue;
                }
            }
            let page = donate(h)?;
            aug(h, td, gpa, 0, page)?;
            small += 1;
            gpa += PAGE;
        }
    }
    Ok((big, small))
}
