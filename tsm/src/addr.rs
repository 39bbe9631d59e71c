//! Address newtypes. A raw `u64` from a register becomes one of these exactly once, in the ABI
//! decoder; everything behind the decoder works with typed, checked addresses.

use core::fmt;

/// Bytes in the base page.
pub const PAGE_SIZE_4K: u64 = 4096;
/// Highest physical address width the TSM accepts (x86 MAXPHYADDR limit).
pub const MAX_PA_BITS: u32 = 52;

/// The three mapping sizes of x86 paging and of the secure EPT.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PageSize {
    /// 4 KiB, mapped by a level-0 (PTE) leaf.
    Size4K,
    /// 2 MiB, mapped by a level-1 (PDE) leaf.
    Size2M,
    /// 1 GiB, mapped by a level-2 (PDPTE) leaf.
    Size1G,
}

impl PageSize {
    /// Size in bytes.
    pub const fn bytes(self) -> u64 {
        match self {
            PageSize::Size4K => 1 << 12,
            PageSize::Size2M => 1 << 21,
            PageSize::Size1G => 1 << 30,
        }
    }

    /// Number of 4 KiB frames the size covers.
    pub const fn frames(self) -> u64 {
        self.bytes() >> 12
    }

    /// The S-EPT level of a leaf of this size (0 = 4K, 1 = 2M, 2 = 1G), as TDX numbers levels.
    pub const fn level(self) -> u8 {
        match self {
            PageSize::Size4K => 0,
            PageSize::Size2M => 1,
            PageSize::Size1G => 2,
        }
    }

    /// The size mapped by a leaf at `level`, if a leaf may sit there.
    pub const fn from_level(level: u8) -> Option<PageSize> {
        match level {
            0 => Some(PageSize::Size4K),
            1 => Some(PageSize::Size2M),
            2 => Some(PageSize::Size1G),
            _ => None,
        }
    }

    /// The next smaller size, used by DEMOTE.
    pub const fn smaller(self) -> Option<PageSize> {
        match self {
            PageSize::Size4K => None,
            PageSize::Size2M => Some(PageSize::Size4K),
            PageSize::Size1G => Some(PageSize::Size2M),
        }
    }
}

impl fmt::Display for PageSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PageSize::Size4K => "4K",
            PageSize::Size2M => "2M",
            PageSize::Size1G => "1G",
        })
    }
}

macro_rules! phys_addr_type {
    ($(#[$doc:meta])* $name:ident, $bits:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        pub struct $name(u64);

        impl $name {
            /// Types a raw value; `None` if it does not fit the address width.
            pub const fn new(raw: u64) -> Option<Self> {
                if raw >> $bits == 0 {
                    Some(Self(raw))
                } else {
                    None
                }
            }

            /// The raw value.
            pub const fn raw(self) -> u64 {
                self.0
            }

            /// True if the address is a multiple of `size`.
            pub const fn is_aligned(self, size: PageSize) -> bool {
                self.0 & (size.bytes() - 1) == 0
            }

            /// Rounds down to a multiple of `size`.
            pub const fn align_down(self, size: PageSize) -> Self {
                Self(self.0 & !(size.bytes() - 1))
            }

            /// `self + bytes`, `None` on overflow or past the address width.
            pub const fn checked_add(self, bytes: u64) -> Option<Self> {
                match self.0.checked_add(bytes) {
                    Some(v) => Self::new(v),
                    None => None,
                }
            }

            /// Byte offset within the 4K page.
            pub const fn page_offset(self) -> u64 {
                self.0 & (PAGE_SIZE_4K - 1)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({:#x})"), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:#x}", self.0)
            }
        }
    };
}

phys_addr_type!(
    /// A host physical address (at most 52 bits).
    HostPhysAddr,
    MAX_PA_BITS
);

phys_addr_type!(
    /// A guest physical address of a TD (at most 52 bits; the TD's own width is checked by the
    /// S-EPT code against its GPAW).
    GuestPhysAddr,
    MAX_PA_BITS
);

impl HostPhysAddr {
    /// The frame holding this address.
    pub const fn pfn(self) -> Pfn {
        Pfn(self.0 >> 12)
    }
}

/// A 4 KiB physical frame number.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Pfn(u64);

impl Pfn {
    /// Frame zero.
    pub const ZERO: Pfn = Pfn(0);

    /// Types a raw frame number; `None` past the 52-bit physical width.
    pub const fn new(raw: u64) -> Option<Self> {
        if raw >> (MAX_PA_BITS - 12) == 0 {
            Some(Self(raw))
        } else {
            None
        }
    }

    /// The raw frame number.
    pub const fn raw(self) -> u64 {
        self.0
    }

    /// The first byte of the frame.
    pub const fn addr(self) -> HostPhysAddr {
        HostPhysAddr(self.0 << 12)
    }

    /// `self + frames`, `None` on overflow or past the physical width.
    pub const fn checked_add(self, frames: u64) -> Option<Self> {
        match self.0.checked_add(frames) {
            Some(v) => Self::new(v),
            None => None,
        }
    }

    /// Frames from `base` to `self`, `None` if `self` is below `base`.
    pub const fn checked_offset_from(self, base: Pfn) -> Option<u64> {
        self.0.checked_sub(base.0)
    }

    /// True if the frame starts a naturally aligned block of `size`.
    pub const fn is_aligned(self, size: PageSize) -> bool {
        self.0 & (size.frames() - 1) == 0
    }
}

impl fmt::Debug for Pfn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pfn({:#x})", self.0)
    }
}

/// A half-open range of host frames `[start, start + count)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FrameRange {
    /// First frame.
    pub start: Pfn,
    /// Number of frames.
    pub count: u64,
}

impl FrameRange {
    /// The frame past the end, `None` on overflow.
    pub const fn end(self) -> Option<Pfn> {
        self.start.checked_add(self.count)
    }

    /// True if `pfn` lies in the range.
    pub const fn contains(self, pfn: Pfn) -> bool {
        match pfn.checked_offset_from(self.start) {
            Some(off) => off < self.count,
            None => false,
        }
    }

    /// True if the two ranges share a frame.
    pub const fn overlaps(self, other: FrameRange) -> bool {
        let (a0, b0) = (self.start.0, other.start.0);
        let a1 = a0.saturating_add(self.count);
        let b1 = b0.saturating_add(other.count);
        a0 < b1 && b0 < a1
    }

    /// True if every frame of `other` lies in `self`.
    pub const fn covers(self, other: FrameRange) -> bool {
        let a1 = self.start.0.saturating_add(self.count);
        let b1 = other.start.0.saturating_add(other.count);
        other.start.0 >= self.start.0 && b1 <= a1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_reject_bits_past_52() {
        assert!(HostPhysAddr::new(1 << 52).is_none());
        assert!(HostPhysAddr::new((1 << 52) - 1).is_some());
        assert!(Pfn::new(1 << 40).is_none());
        assert_eq!(HostPhysAddr::new((1 << 52) - 1).unwrap().checked_add(1), None);
    }

    #[test]
    fn page_sizes_round_trip_through_levels() {
        for s in [PageSize::Size4K, PageSize::Size2M, PageSize::Size1G] {
            assert_eq!(PageSize::from_level(s.level()), Some(s));
        }
        assert_eq!(PageSize::from_level(3), None);
        assert_eq!(PageSize::Size2M.frames(), 512);
    }

    #[test]
    fn frame_ranges_compare() {
        let r = FrameRange { start: Pfn(10), count: 5 };
        assert!(r.contains(Pfn(10)) && r.contains(Pfn(14)) && !r.contains(Pfn(15)));
        assert!(!r.contains(Pfn(9)));
        assert!(r.overlaps(FrameRange { start: Pfn(14), count: 1 }));
        assert!(!r.overlaps(FrameRange { start: Pfn(15), count: 3 }));
        assert!(r.covers(FrameRange { start: Pfn(11), count: 4 }));
        assert!(!r.covers(FrameRange { start: Pfn(11), count: 5 }));
    }
}
