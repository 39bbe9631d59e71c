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

    /// The E820 type number.
    pub const fn raw(self) -> u32 {
        match self {
            RangeKind::Ram => 1,
            RangeKind::Reserved => 2,
            RangeKind::AcpiReclaimable => 3,
            RangeKind::AcpiNvs => 4,
            RangeKind::Unusable => 5,
            RangeKind::Persistent => 7,
            RangeKind::Other(other) => other,
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

    /// The end of RAM below 4 GiB, rounded up to 2 MiB (the 2 MiB page holding RAM's last byte
    /// stays cacheable): where the MMIO hole starts.
    pub fn low_ram_end(&self) -> u64 {
        let ram_ends = self.ranges().iter().filter(|r| r.kind == RangeKind::Ram).map(|r| r.end());
        let end = ram_ends.filter(|&e| e <= 4 << 30).max().unwrap_or(4 << 30);
        end.next_multiple_of(2 << 20)
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

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const IMAGE: (u64, u64) = (MIB, MIB + 0xE9000);

    fn map(ranges: &[(u64, u64, u32)]) -> MemoryMap {
        let mut m = MemoryMap::default();
        for &(base, size, ty) in ranges {
            m.push(MemoryRange { base, size, kind: RangeKind::from_raw(ty) });
        }
        m
    }

    /// QEMU q35 with -m 256M, as the firmware sees it.
    fn q35_256m() -> MemoryMap {
        map(&[
            (0, 0x9fc00, 1),
            (0x9fc00, 0x400, 2),
            (0xf0000, 0x10000, 2),
            (MIB, 0xffd8000 - MIB, 1),
            (0xffd8000, 0x28000, 2),
        ])
    }

    #[test]
    fn carve_rejects_an_image_outside_ram() {
        let m = map(&[(0, 0x9fc00, 1), (16 * MIB, 64 * MIB, 1)]);
        assert_eq!(Layout::carve(&m, IMAGE, u64::MAX), Err(LayoutError::ImageNotInRam));
    }

    #[test]
    fn carve_rejects_a_range_without_room_for_a_4m_tdmr() {
        // RAM to 7 MiB: the TDMR could only be 4..6 MiB.
        let m = map(&[(MIB, 6 * MIB, 1)]);
        let err = Layout::carve(&m, IMAGE, u64::MAX).unwrap_err();
        assert_eq!(err, LayoutError::TooLittleRam { available: 7 * MIB - 0x1e9000 });
        // One 2 MiB step more and it fits.
        let m = map(&[(MIB, 7 * MIB, 1)]);
        assert_eq!(Layout::carve(&m, IMAGE, u64::MAX).unwrap().tdmr, (4 * MIB, 8 * MIB));
    }

    #[test]
    fn carve_rejects_a_cap_below_4m() {
        assert!(matches!(Layout::carve(&q35_256m(), IMAGE, 3 * MIB), Err(LayoutError::TooLittleRam { .. })));
    }

    #[test]
    fn carve_happy_path_q35() {
        let l = Layout::carve(&q35_256m(), IMAGE, 64 * MIB).unwrap();
        assert_eq!(l.image, IMAGE);
        assert_eq!(l.host, (0x1e9000, 0x2e9000));
        assert_eq!(l.tdmr, (4 * MIB, 68 * MIB));
        // 16 bytes per 4K frame of the TDMR, at its end.
        assert_eq!(l.pamt, (68 * MIB - 256 * 1024, 68 * MIB));
    }

    #[test]
    fn carve_uses_the_whole_range_rounded_down_to_2m() {
        let l = Layout::carve(&q35_256m(), IMAGE, u64::MAX).unwrap();
        assert_eq!(l.tdmr, (4 * MIB, 254 * MIB));
        assert_eq!(l.tdmr.0 % (2 * MIB), 0);
        assert_eq!(l.tdmr.1 % (2 * MIB), 0);
        assert!(l.host.1 <= l.tdmr.0 && l.image.1 <= l.host.0);
        let frames = (l.tdmr.1 - l.tdmr.0) >> 12;
        assert_eq!(l.pamt.1 - l.pamt.0, (frames * 16).next_multiple_of(4096));
        assert_eq!(l.pamt.1, l.tdmr.1);
    }

    #[test]
    fn carve_stops_at_4g() {
        let m = map(&[(MIB, 8 << 30, 1)]);
        let l = Layout::carve(&m, IMAGE, u64::MAX).unwrap();
        assert_eq!(l.tdmr.1, 4 << 30);
    }

    #[test]
    fn memory_map_drops_entries_past_its_capacity_and_skips_empty_ones() {
        let mut m = MemoryMap::default();
        m.push(MemoryRange { base: 0, size: 0, kind: RangeKind::Ram });
        for i in 0..MAX_RANGES as u64 + 3 {
            m.push(MemoryRange { base: i * MIB, size: MIB, kind: RangeKind::Ram });
        }
        assert_eq!(m.ranges().len(), MAX_RANGES);
        assert_eq!(m.dropped, 3);
        assert_eq!(m.ram_bytes(), MAX_RANGES as u64 * MIB);
    }

    #[test]
    fn low_ram_end_rounds_the_last_ram_below_4g_up_to_2m() {
        assert_eq!(q35_256m().low_ram_end(), 256 * MIB);
        let m = map(&[(MIB, 0x7fe_0000 - MIB, 1), (0xB000_0000, 0x1000_0000, 2), (4 << 30, 1 << 30, 1)]);
        assert_eq!(m.low_ram_end(), 128 * MIB);
        assert_eq!(MemoryMap::default().low_ram_end(), 4 << 30);
    }

    #[test]
    fn range_kinds_follow_e820() {
        let kinds: Vec<_> = [1, 2, 3, 4, 5, 7, 9].into_iter().map(RangeKind::from_raw).collect();
        assert_eq!(
            kinds,
            [
                RangeKind::Ram,
                RangeKind::Reserved,
                RangeKind::AcpiReclaimable,
                RangeKind::AcpiNvs,
                RangeKind::Unusable,
                RangeKind::Persistent,
                RangeKind::Other(9)
            ]
        );
        let names: Vec<_> = kinds.iter().map(|k| k.name()).collect();
        assert_eq!(names, ["ram", "reserved", "acpi", "acpi-nvs", "unusable", "pmem", "other"]);
    }
}
