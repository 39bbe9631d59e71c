//! The seams between the TSM and the machine. `firmware` implements them for QEMU; the test
//! harness implements them over a memory arena. The TSM reaches hardware only through these.

use crate::addr::{FrameRange, GuestPhysAddr, Pfn};

/// Number of 64-bit words in a 4 KiB frame.
pub const WORDS_PER_PAGE: usize = 512;

/// Physical memory, addressed by frame.
///
/// Contract: the TSM only passes frames for which [`PhysMem::contains`] returned true, word
/// indices below [`WORDS_PER_PAGE`], and byte ranges inside one 4 KiB frame. An implementation may
/// panic on a call that breaks the contract: that is a TSM bug, never an input the host chose.
pub trait PhysMem {
    /// True if the frame is backed by memory this platform can read and write.
    fn contains(&self, pfn: Pfn) -> bool;
    /// Reads the `index`-th little-endian 64-bit word of the frame.
    fn read_u64(&self, pfn: Pfn, index: usize) -> u64;
    /// Writes the `index`-th little-endian 64-bit word of the frame.
    fn write_u64(&mut self, pfn: Pfn, index: usize, value: u64);
    /// Copies `buf.len()` bytes starting at `offset` within the frame into `buf`.
    fn read_bytes(&self, pfn: Pfn, offset: usize, buf: &mut [u8]);
    /// Copies `data` into the frame starting at `offset`.
    fn write_bytes(&mut self, pfn: Pfn, offset: usize, data: &[u8]);
    /// Fills the frame with zeros.
    fn zero(&mut self, pfn: Pfn);
    /// Copies the whole frame `src` to `dst` (distinct frames).
    fn copy(&mut self, dst: Pfn, src: Pfn);

    /// Called whenever the host gains or loses a frame: by the PAMT whenever an entry is
    /// written (the host may touch the frame iff the entry is Free), and for device MMIO by
    /// DMABUF.IMPORT (the range's frames leave the host) and by the TDI's end or re-lock (they
    /// come back). A platform that runs the host in a world of its own keeps the host's map equal
    /// to this here, so a page leaves the host in the very call that donates it and comes back
    /// in the call that reclaims it. The default does nothing.
    fn ownership_changed(&mut self, _pfn: Pfn, _host_owned: bool) {}
}

/// The platform could not produce random bytes (for example RDRAND kept failing).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntropyError;

/// A source of random bytes fit for keys.
pub trait Entropy {
    /// Fills `buf` with random bytes.
    ///
    /// # Errors
    /// [`EntropyError`] if the source failed; the TSM then fails the call that needed it.
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), EntropyError>;
}

/// A monotonic clock.
pub trait Clock {
    /// Nanoseconds since an arbitrary fixed point; never goes backwards.
    fn now_ns(&self) -> u64;
}

/// Why the remapping unit did not do what it was told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnitError {
    /// The platform has no remapping unit the TSM can own.
    Absent,
    /// A status bit (GSTS.RTPS, QIES, TES) did not follow its command in time.
    Timeout,
    /// The unit reported an invalidation queue error (FSTS.IQE, ITE or ICE): it stopped
    /// fetching descriptors.
    QueueError,
    /// The queue has no room for the descriptors (more than one page of them).
    QueueFull,
}

/// The DMA remapping unit (Intel VT-d) whose registers the TSM alone programs. The platform only
/// moves values in and out of registers and the invalidation queue; which values, in which order,
/// and whether an invalidation completed, the TSM decides (`tsm::iommu::Iommu`). A platform with
/// no unit returns [`UnitError::Absent`] (and `None` for the capabilities).
pub trait DmaRemapping {
    /// CAP_REG and ECAP_REG, or `None` without a unit (ACPI DMAR names none).
    fn remapping_capabilities(&self) -> Option<crate::iommu::hw::Capabilities>;

    /// The root of the platform's **host map**: the identity map of exactly the frames the host
    /// owns, 4-level, in an encoding a VT-d second stage accepts (R = bit 0, W = bit 1, PS = bit
    /// 7, no reserved bit), in memory the host cannot write; `None` if the platform keeps none.
    /// The host domain's entries point at it (`tsm::iommu::HOST_DID`). The platform keeps it equal
    /// to the PAMT through [`PhysMem::ownership_changed`], and when a frame leaves the host it
    /// also invalidates the unit's cached translations of that frame in the host domain
    /// ([`crate::iommu::hw::InvDescriptor::iotlb_page`] with a wait descriptor) before that call
    /// returns: from then on no device of the host reaches the frame.
    fn host_map(&self) -> Option<Pfn> {
        None
    }

    /// Writes RTADDR_REG and latches it (GCMD.SRTP); returns once GSTS.RTPS is set.
    ///
    /// # Errors
    /// [`UnitError::Timeout`], [`UnitError::Absent`].
    fn set_root_table(&mut self, rtaddr: u64) -> Result<(), UnitError>;

    /// Turns the invalidation queue on (256-bit descriptors) if it is off; returns once
    /// GSTS.QIES is set.
    ///
    /// # Errors
    /// [`UnitError::Timeout`], [`UnitError::Absent`].
    fn enable_queue(&mut self) -> Result<(), UnitError>;

    /// The physical address of the 4-byte word invalidation wait descriptors write their status
    /// to: memory only the TSM's platform uses, never host- or guest-reachable.
    fn wait_status_address(&self) -> u64;

    /// The current value of that word.
    fn wait_status(&self) -> u32;

    /// Appends `descriptors` to the invalidation queue and moves the tail past them; returns once
    /// the unit's head reached the tail.
    ///
    /// # Errors
    /// [`UnitError::QueueError`] if the unit reported a queue error (the platform clears it and
    /// resets the tail to the head), [`UnitError::Timeout`], [`UnitError::QueueFull`],
    /// [`UnitError::Absent`].
    fn submit(&mut self, descriptors: &[crate::iommu::hw::InvDescriptor]) -> Result<(), UnitError>;

    /// Translation through the TSM's root table on (GCMD.TE set; returns once GSTS.TES follows)
    /// or off. Off means the unit no longer reads the TSM's tables: a platform may clear
    /// GCMD.TE, or (the firmware) point the unit at a root table of its own that maps nothing,
    /// so that DMA is blocked rather than untranslated.
    ///
    /// # Errors
    /// [`UnitError::Timeout`], [`UnitError::Absent`].
    fn set_translation(&mut self, enabled: bool) -> Result<(), UnitError>;

    /// Reads the next fault recording register with F set as `(low, high)` words, clears it (and
    /// FSTS.PPF / PFO once none is left); `None` when no fault is recorded.
    fn take_fault(&mut self) -> Option<(u64, u64)>;
}

/// What the dispatcher reports once per ABI call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallRecord {
    /// Host (`false`) or guest (`true`) ABI.
    pub guest: bool,
    /// Leaf number as the caller passed it in RAX.
    pub leaf: u64,
    /// Leaf name, or `"unknown"`.
    pub name: &'static str,
    /// Status word returned in RAX.
    pub status: u64,
    /// Time spent in the handler, from [`Clock::now_ns`].
    pub elapsed_ns: u64,
}

/// Everything the TSM needs from the machine.
pub trait Platform: PhysMem + Entropy + Clock + DmaRemapping + 'static {
    /// The platform's MMIO windows: the apertures of its PCI host bridges, where device BARs
    /// live, as the firmware learnt them from what it trusts (ACPI, the host bridge), never from
    /// the host. TDH.SYS.CONFIG keeps them; DMABUF.IMPORT takes private MMIO only from inside
    /// one. None by default, and then no private MMIO at all.
    fn mmio_windows(&self) -> &[FrameRange] {
        &[]
    }

    /// True if any frame of `range` is RAM: memory the platform backs, whether or not
    /// [`PhysMem::contains`] lets the TSM reach it. Private MMIO never is. The default asks
    /// `contains` frame by frame; a platform that knows its memory map answers from it.
    fn is_ram(&self, range: FrameRange) -> bool {
        (0..range.count).any(|i| range.start.checked_add(i).is_some_and(|f| self.contains(f)))
    }

    /// False to skip the per-call clock reads and [`Platform::log_call`] (benchmarks).
    fn call_log_enabled(&self) -> bool {
        true
    }

    /// Called once per ABI call, after the handler ran (the firmware logs it with defmt).
    fn log_call(&mut self, _record: &CallRecord) {}

    /// Called when the S-EPT of the TD whose TDR is `tdr` stops granting, or changes the size
    /// of, the translations of `range` (first GPA, bytes): BLOCK, REMOVE, DEMOTE, PROMOTE,
    /// MMIO.BLOCK and the blocks of a revoked TDI; and at TRACK with `None`, every translation
    /// of the TD. A platform that runs the TD behind a table derived from the S-EPT (the
    /// firmware's nested tables) drops those entries here, before the TD runs again, so the TD
    /// never touches memory the S-EPT forbids at that moment. The default does nothing.
    fn sept_changed(&mut self, _tdr: Pfn, _range: Option<(GuestPhysAddr, u64)>) {}
}
