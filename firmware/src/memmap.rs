//! The PVH memory map (`hvm_memmap_table_entry`, the E820 types) as typed ranges, and the layout
//! the firmware carves from it: its own image, the host agent's pages, and the TDMR with its PAMT
//! that the TSM is configured over.

use core::fmt;

/// Ranges kept from the loader's map; further entries are ignored (QEMU's q35 map has about 9).
pub const MAX_RANGES: usize = 32;

/// What a range of the memory map is (E820 / `XEN_HVM_MEMMAP_TYPE_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeKind {
    /// 1: usable RAM.
    Ram,
    /// 2: reserved (firmware, MMIO).
    Reserved,
    /// 3: ACPI tables, reclaimable once read.
    AcpiReclaimable,
    /// 4: ACPI non-volatile storage.
    AcpiNvs,
    /// 5: unusable (bad memory).
    Unusable,
    /// 7: persistent memory.
    Persistent,
    /// Any other type number.
    Other(u32),
}

impl RangeKind {
    /// The kind of an E820 type number.
    pub const fn from_raw(raw: u32) -> RangeKind {
        match raw {
            1 => RangeKind::Ram,
            2 => RangeKind::Reserved,
            3 => RangeKind::AcpiReclaimable,
            4 => RangeKind::AcpiNvs,
            5 => RangeKind::Unusable,
            7 => RangeKind::Persistent,
            other => RangeKind::Other(other),
        }
    }

    /// A short name.
    pub const fn name(self) -> &'static str {
        match self {
            RangeKind::Ram => "ram",
            RangeKind::Reserved => "reserved",
            RangeKind::AcpiReclaimable => "acpi",
            RangeKind::AcpiNvs => "acpi-nvs",
            RangeKind::Unusable => "unusable",
            RangeKind::Persistent => "pmem",
            RangeKind::Other(_) => "other",
        }
    }
}

/// One range of physical memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryRange {
    /// First byte.
    pub base: u64,
    /// Bytes.
    pub size: u64,
    /// What it is.
    pub kind: RangeKind,
}

impl MemoryRange {
    /// The byte past the end (saturating).
    pub const fn end(&self) -> u64 {
        self.base.saturating_add(self.size)
    }
}

/// The loader's memory map.
#[derive(Clone, Copy, Debug)]
pub struct MemoryMap {
    ranges: [MemoryRange; MAX_RANGES],
    count: usize,
    /// Entries the loader listed beyond [`MAX_RANGES`] (dropped).
    pub dropped: usize,
}

impl Default for MemoryMap {
    fn default() -> MemoryMap {
        MemoryMap {
            ranges: [MemoryRange { base: 0, size: 0, kind: RangeKind::Reserved }; MAX_RANGES],
            count: 0,
            dropped: 0,
        }
    }
}

impl MemoryMap {
    /// Adds a range; empty ranges are skipped, ranges past [`MAX_RANGES`] counted as dropped.
    pub fn push(&mut self, range: MemoryRange) {
        if range.size == 0 {
            return;
        }
        match self.ranges.get_mut(self.count) {
            Some(slot) => {
                *slot = range;
                self.count += 1;
            }
            None => self.dropped += 1,
        }
    }

    /// The ranges, in the loader's order.
    pub fn ranges(&self) -> &[MemoryRange] {
        &self.ranges[..self.count]
    }

    /// Bytes of RAM in the map.
    pub fn ram_bytes(&self) -> u64 {
        self.ranges().iter().filter(|r| r.kind == RangeKind::Ram).map(|r| r.size).sum()
    }
}

/// Why the firmware could not lay memory out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayoutError {
    /// No RAM range holds the firmware image.
    ImageNotInRam,
    /// The RAM above the image is too small for the host pages and a TDMR of 4 MiB.
    TooLittleRam {
        /// Bytes of RAM above the image in its range.
        available: u64,
    },
}

impl fmt::Display for LayoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LayoutError::ImageNotInRam => write!(f, "no RAM range of the memory map holds the firmware image"),
            LayoutError::TooLittleRam { available } => write!(
                f,
                "only {} KiB of RAM above the image: need {} KiB of host pages and a 4 MiB TDMR (give QEMU more -m)",
                available / 1024,
                HOST_BYTES / 1024
            ),
        }
    }
}

/// Bytes of host pages (message page, TDMR_INFO, ...) between the image and the TDMR.
pub const HOST_BYTES: u64 = 1 << 20;
const TWO_MIB: u64 = 2 << 20;
const MIN_TDMR: u64 = 2 * TWO_MIB;
/// Bytes of PAMT per 4 KiB frame (`tsm::pamt`).
const PAMT_ENTRY_BYTES: u64 = 16;

/// Where everything goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// The firmware's own memory `[start, end)`: the TSM's private range.
    pub image: (u64, u64),
    /// Host pages `[start, end)`: the untrusted host agent's own memory (not convertible).
    pub host: (u64, u64),
    /// The TDMR `[start, end)`: 2 MiB aligned, convertible memory.
    pub tdmr: (u64, u64),
    /// The PAMT `[start, end)`, at the end of the TDMR.
    pub pamt: (u64, u64),
}

impl Layout {
    /// Carves the layout from the RAM range that holds the image: host pages right after the
    /// image, then the TDMR from the next 2 MiB boundary to the range's end (capped at
    /// `max_tdmr` bytes and at 4 GiB, rounded down to 2 MiB), its PAMT at its end.
    ///
    /// # Errors
    /// [`LayoutError`] if the image is not in RAM or the range is too small.
    pub fn carve(map: &MemoryMap, image: (u64, u64), max_tdmr: u64) -> Result<Layout, LayoutError> {
        let range = map
            .ranges()
            .iter()
            .find(|r| r.kind == RangeKind::Ram && r.base <= image.0 && image.1 <= r.end())
            .ok_or(LayoutError::ImageNotInRam)?;
        let end = range.end().min(4 << 30);
        let host_start = image.1.next_multiple_of(4096);
        let host_end = host_start + HOST_BYTES;
        let tdmr_start = host_end.next_multiple_of(TWO_MIB);
        let available = end.saturating_sub(host_start);
        let tdmr_bytes = (end.saturating_sub(tdmr_start) & !(TWO_MIB - 1)).min(max_tdmr & !(TWO_MIB - 1));
        if tdmr_bytes < MIN_TDMR {
            return Err(LayoutError::TooLittleRam { available });
        }
        let tdmr_end = tdmr_start + tdmr_bytes;
        let pamt_bytes = ((tdmr_bytes >> 12) * PAMT_ENTRY_BYTES).next_multiple_of(4096);
        Ok(Layout {
            image,
            host: (host_start, host_end),
            tdmr: (tdmr_start, tdmr_end),
            pamt: (tdmr_end - pamt_bytes, tdmr_end),
        })
    }
}
