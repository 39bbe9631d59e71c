//! The seams between the TSM and the machine. `firmware` implements them for QEMU; the test
//! harness implements them over a memory arena. The TSM reaches hardware only through these.

use crate::addr::{FrameRange, Pfn};

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
pub trait Platform: PhysMem + Entropy + Clock + 'static {
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
}
