//! The host world's boot information: one page the TSM writes into host RAM before it first
//! enters the host world, RDI holding its physical address (docs/firmware.md, "The host
//! world's entry contract"). It is the TSM's word to the host agent, as the E820 map and the
//! boot parameters are a bootloader's word to a kernel: where the host's RAM is (the machine's
//! memory map with the TSM's memory marked reserved), what the TSM loaded for it (its image, its
//! page tables, this page), the TSC's rate, and where ACPI is.
//!
//! The format is shared by the writer (the TSM) and the reader (the host agent): a `#[repr(C)]`
//! struct with fixed offsets, read by copy, checked ([`BootInfo::read_from`]) before use.

use core::fmt;

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::memmap::{MemoryMap, MemoryRange, RangeKind, MAX_RANGES};

/// "SEAMHOST".
pub const MAGIC: [u8; 8] = *b"SEAMHOST";
/// The version this crate writes and reads.
pub const VERSION: u32 = 1;

/// One range of the memory map (E820 type numbers).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct MapEntry {
    /// First byte.
    pub base: u64,
    /// Bytes.
    pub size: u64,
    /// E820 type (1 RAM, 2 reserved, ...).
    pub kind: u32,
    /// Zero.
    pub reserved: u32,
}

/// The boot information page.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct BootInfo {
    /// [`MAGIC`].
    pub magic: [u8; 8],
    /// [`VERSION`].
    pub version: u32,
    /// Entries of [`BootInfo::memmap`] in use.
    pub ranges: u32,
    /// TSC ticks per second, as the TSM calibrated them (the host world's TSC is the TSM's: no
    /// offset).
    pub tsc_hz: u64,
    /// The TSC at the firmware's first instruction (PVH entry): the origin of the run's
    /// timeline.
    pub boot_tsc: u64,
    /// The ACPI RSDP's physical address (0: none).
    pub rsdp: u64,
    /// The TSM's memory `[start, end)`: reserved in the map, outside the host's nested map.
    pub tsm: [u64; 2],
    /// What the TSM loaded for the host `[start, end)`: its image, its page tables and this
    /// page. Host RAM, but in use: the agent must not hand it out.
    pub loaded: [u64; 2],
    /// Bytes of physical memory identity-mapped from 0, and mapped again at
    /// [`crate::phys::DIRECT_MAP_BASE`].
    pub mapped_bytes: u64,
    /// The machine's memory map as the host sees it: the TSM's memory reserved.
    pub memmap: [MapEntry; MAX_RANGES],
}

const _: () = assert!(core::mem::size_of::<MapEntry>() == 24);
const _: () = assert!(core::mem::size_of::<BootInfo>() == 80 + 24 * MAX_RANGES);
const _: () = assert!(core::mem::size_of::<BootInfo>() <= 4096);
const _: () = assert!(core::mem::offset_of!(BootInfo, memmap) == 80);

/// Why a boot information page was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootInfoError {
    /// Fewer bytes than the struct.
    Short,
    /// Not [`MAGIC`].
    Magic,
    /// Another version.
    Version(u32),
    /// More ranges than the map holds.
    Ranges(u32),
    /// A range that is empty, wraps, or a `tsm`/`loaded` pair with its end before its start.
    BadRange,
}

impl fmt::Display for BootInfoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BootInfoError::Short => write!(f, "shorter than {} bytes", core::mem::size_of::<BootInfo>()),
            BootInfoError::Magic => write!(f, "no \"SEAMHOST\" magic"),
            BootInfoError::Version(v) => write!(f, "version {v}, this agent reads {VERSION}"),
            BootInfoError::Ranges(n) => write!(f, "{n} memory ranges, at most {MAX_RANGES}"),
            BootInfoError::BadRange => write!(f, "a range is empty, wraps or ends before it starts"),
        }
    }
}

impl BootInfo {
    /// The page for a host world over the machine's map `map`, with the TSM's memory `tsm`
    /// reserved in it (split out of the RAM range that holds it).
    pub fn new(map: &MemoryMap, tsm: (u64, u64), loaded: (u64, u64), tsc: (u64, u64), rsdp: u64) -> BootInfo {
        let mut info = BootInfo {
            magic: MAGIC,
            version: VERSION,
            ranges: 0,
            tsc_hz: tsc.0,
            boot_tsc: tsc.1,
            rsdp,
            tsm: [tsm.0, tsm.1],
            loaded: [loaded.0, loaded.1],
            mapped_bytes: crate::phys::MAPPED_BYTES,
            memmap: [MapEntry::default(); MAX_RANGES],
        };
        let mut n = 0;
        let mut push = |base: u64, end: u64, kind: RangeKind| {
            if base < end && n < MAX_RANGES {
                info.memmap[n] = MapEntry { base, size: end - base, kind: kind.raw(), reserved: 0 };
                n += 1;
            }
        };
        for r in map.ranges() {
            let holds_tsm = r.kind == RangeKind::Ram && r.base < tsm.1 && tsm.0 < r.end();
            if holds_tsm {
                push(r.base, tsm.0.max(r.base), RangeKind::Ram);
                push(tsm.0.max(r.base), tsm.1.min(r.end()), RangeKind::Reserved);
                push(tsm.1.min(r.end()), r.end(), RangeKind::Ram);
            } else {
                push(r.base, r.end(), r.kind);
            }
        }
        info.ranges = n as u32;
        info
    }

    /// The page's bytes.
    pub fn to_bytes(&self) -> &[u8] {
        self.as_bytes()
    }

    /// Reads and checks a page.
    ///
    /// # Errors
    /// [`BootInfoError`] for the first check that fails.
    pub fn read_from(bytes: &[u8]) -> Result<BootInfo, BootInfoError> {
        let (info, _) = BootInfo::read_from_prefix(bytes).map_err(|_| BootInfoError::Short)?;
        if info.magic != MAGIC {
            return Err(BootInfoError::Magic);
        }
        if info.version != VERSION {
            return Err(BootInfoError::Version(info.version));
        }
        if info.ranges as usize > MAX_RANGES {
            return Err(BootInfoError::Ranges(info.ranges));
        }
        let bad_pair = |p: [u64; 2]| p[1] < p[0];
        let bad_entry = |e: &MapEntry| e.size == 0 || e.base.checked_add(e.size).is_none();
        if bad_pair(info.tsm) || bad_pair(info.loaded) || info.entries().iter().any(bad_entry) {
            return Err(BootInfoError::BadRange);
        }
        Ok(info)
    }

    /// The entries in use.
    pub fn entries(&self) -> &[MapEntry] {
        &self.memmap[..(self.ranges as usize).min(MAX_RANGES)]
    }

    /// The memory map as the host sees it.
    pub fn memory_map(&self) -> MemoryMap {
        let mut map = MemoryMap::default();
        for e in self.entries() {
            map.push(MemoryRange { base: e.base, size: e.size, kind: RangeKind::from_raw(e.kind) });
        }
        map
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine() -> MemoryMap {
        let mut m = MemoryMap::default();
        m.push(MemoryRange { base: 0, size: 0x9_FC00, kind: RangeKind::Ram });
        m.push(MemoryRange { base: 0x10_0000, size: 0x0FF0_0000, kind: RangeKind::Ram });
        m.push(MemoryRange { base: 0xB000_0000, size: 0x1000_0000, kind: RangeKind::Reserved });
        m
    }

    #[test]
    fn the_tsm_is_reserved_in_the_host_s_map_and_the_rest_of_its_range_stays_ram() {
        let info = BootInfo::new(&machine(), (0x10_0000, 0x38_0000), (0x38_0000, 0x40_0000), (1_000_000, 7), 0xE_0000);
        let kinds: std::vec::Vec<_> = info.memory_map().ranges().iter().map(|r| (r.base, r.end(), r.kind)).collect();
        assert_eq!(
            kinds,
            [
                (0, 0x9_FC00, RangeKind::Ram),
                (0x10_0000, 0x38_0000, RangeKind::Reserved),
                (0x38_0000, 0x1000_0000, RangeKind::Ram),
                (0xB000_0000, 0xC000_0000, RangeKind::Reserved),
            ]
        );
    }

    #[test]
    fn a_page_reads_back_as_written() {
        let info = BootInfo::new(&machine(), (0x10_0000, 0x38_0000), (0x38_0000, 0x40_0000), (1_000_000, 7), 0xE_0000);
        let mut page = [0u8; 4096];
        page[..info.to_bytes().len()].copy_from_slice(info.to_bytes());
        assert_eq!(BootInfo::read_from(&page), Ok(info));
    }

    #[test]
    fn read_from_rejects_a_short_page_bad_magic_version_ranges_and_inverted_pairs() {
        let info = BootInfo::new(&machine(), (0x10_0000, 0x38_0000), (0x38_0000, 0x40_0000), (1, 0), 0);
        assert_eq!(BootInfo::read_from(&info.to_bytes()[..100]), Err(BootInfoError::Short));
        let mut bad = info;
        bad.magic[0] = b'X';
        assert_eq!(BootInfo::read_from(bad.to_bytes()), Err(BootInfoError::Magic));
        let mut bad = info;
        bad.version = 2;
        assert_eq!(BootInfo::read_from(bad.to_bytes()), Err(BootInfoError::Version(2)));
        let mut bad = info;
        bad.ranges = MAX_RANGES as u32 + 1;
        assert_eq!(BootInfo::read_from(bad.to_bytes()), Err(BootInfoError::Ranges(MAX_RANGES as u32 + 1)));
        let mut bad = info;
        bad.loaded = [0x40_0000, 0x38_0000];
        assert_eq!(BootInfo::read_from(bad.to_bytes()), Err(BootInfoError::BadRange));
        let mut bad = info;
        bad.memmap[0].size = 0;
        assert_eq!(BootInfo::read_from(bad.to_bytes()), Err(BootInfoError::BadRange));
        let mut bad = info;
        bad.memmap[1] = MapEntry { base: u64::MAX - 5, size: 10, kind: 1, reserved: 0 };
        assert_eq!(BootInfo::read_from(bad.to_bytes()), Err(BootInfoError::BadRange));
    }
}
