//! A simulated machine for the TSM: [`HostMem`], a physical memory arena, and [`HostPlatform`],
//! which implements every `tsm::platform` trait over it.
//!
//! The arena is a `Vec<u64>` allocated zeroed, so the kernel hands out pages lazily: a test may
//! "have" several GiB of physical memory and pay only for the pages it touches.

use std::hint::black_box;
use std::time::Instant;

use tsm::addr::{FrameRange, GuestPhysAddr, HostPhysAddr, Pfn, PAGE_SIZE_4K};
use zerocopy::IntoBytes;

use tsm::iommu::hw::{Capabilities, InvDescriptor};
use tsm::platform::{
    CallRecord, Clock, DmaRemapping, Entropy, EntropyError, PhysMem, Platform, UnitError, WORDS_PER_PAGE,
};

use crate::unit::{ModelUnit, STATUS_ADDRESS};

/// Bytes in a frame, as a `usize`.
const PAGE_BYTES: usize = PAGE_SIZE_4K as usize;

/// Simulated physical memory: the frames `[base, base + frames)`, all zero at first.
///
/// Words are stored little-endian whatever the host's byte order, so the bytes of the backing
/// store are the bytes of physical memory and [`PhysMem::read_u64`] agrees with
/// [`PhysMem::read_bytes`]. Frame 0 starts on a 4 KiB boundary of host memory, which the
/// x86_64 page-table comparator in the benchmarks relies on.
///
/// [`PhysMem`] methods panic when the TSM breaks the trait's contract (a frame outside the arena,
/// a word index past the frame, a byte range crossing it): that is a TSM bug.
pub struct HostMem {
    base: Pfn,
    frames: u64,
    /// Backing store; `words[start..]` is frame `base` onwards.
    words: Vec<u64>,
    /// First word of frame `base`: chosen so that it is 4 KiB aligned in host memory.
    start: usize,
    /// Number of mutating calls so far.
    writes: u64,
    /// Streaming stores of [`PhysMem::zero`] may not be globally visible yet (see
    /// [`HostMem::fence`]).
    nt_pending: bool,
}

impl std::fmt::Debug for HostMem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostMem")
            .field("base", &self.base)
            .field("frames", &self.frames)
            .field("writes", &self.writes)
            .finish_non_exhaustive()
    }
}

impl HostMem {
    /// An arena of `bytes` of zeroed memory whose first byte has physical address `base`.
    ///
    /// # Panics
    /// If `base` or `bytes` is not a multiple of 4 KiB, `bytes` is zero, the range passes the
    /// physical address width, or the host cannot allocate it.
    pub fn new(base: HostPhysAddr, bytes: u64) -> HostMem {
        assert!(base.page_offset() == 0, "arena base {base} is not 4K aligned");
        assert!(bytes > 0 && bytes.is_multiple_of(PAGE_SIZE_4K), "arena size {bytes:#x} is not a 4K multiple");
        let frames = bytes / PAGE_SIZE_4K;
        assert!(base.pfn().checked_add(frames).is_some(), "arena passes the physical address width");
        let len = usize::try_from(bytes / 8).expect("arena fits the host address space");
        // One spare page of words lets frame 0 start 4K-aligned. `vec![0; n]` is a zeroed
        // allocation: untouched pages never become resident.
        let words = vec![0u64; len + WORDS_PER_PAGE];
        let misalign = words.as_ptr() as usize % PAGE_BYTES;
        let start = if misalign == 0 { 0 } else { (PAGE_BYTES - misalign) / 8 };
        HostMem { base: base.pfn(), frames, words, start, writes: 0, nt_pending: false }
    }

    /// Physical address of the first byte.
    pub fn base(&self) -> HostPhysAddr {
        self.base.addr()
    }

    /// First frame.
    pub fn base_pfn(&self) -> Pfn {
        self.base
    }

    /// Number of 4 KiB frames.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Number of mutating [`PhysMem`] calls (and [`HostMem::write_page`]s) so far. A write of an
    /// unchanged value counts too, so a test can assert that a failed call wrote nothing.
    pub fn writes(&self) -> u64 {
        self.writes
    }

    /// The host address at which frame [`HostMem::base_pfn`] is stored, as a pointer that may be
    /// used to write the whole arena (4 KiB aligned).
    ///
    /// For code that needs to see the arena as raw memory (the x86_64 page-table comparator):
    /// `host address of physical address p = ptr + (p - base)`. The pointer stays valid as long as
    /// the arena lives; while it is in use, do not use the arena through `&self` or `&mut self`.
    pub fn host_ptr_mut(&mut self) -> *mut u8 {
        self.words[self.start..].as_mut_ptr().cast::<u8>()
    }

    /// `host address of frame 0 - physical address of frame 0` (wrapping): the `memory_offset`
    /// of a page-table walker that reaches physical memory through the arena.
    pub fn host_phys_offset(&mut self) -> u64 {
        (self.host_ptr_mut() as u64).wrapping_sub(self.base().raw())
    }

    /// Makes the streaming stores of earlier [`PhysMem::zero`]s globally visible.
    ///
    /// The thread that zeroed always reads its own zeros; the fence only matters before another
    /// thread looks at the arena. Every mutating method fences first, so a zero followed by any
    /// write is ordered; the fence is deferred so that zeroing a 2M or 1G block in a row costs
    /// one fence rather than one per page.
    #[inline]
    pub fn fence(&mut self) {
        if self.nt_pending {
            self.nt_pending = false;
            sfence();
        }
    }

    /// The frame's words.
    #[inline]
    fn page(&self, pfn: Pfn) -> &[u64] {
        let i = self.word_index(pfn);
        &self.words[i..i + WORDS_PER_PAGE]
    }

    /// The frame's words, mutably.
    #[inline]
    fn page_mut(&mut self, pfn: Pfn) -> &mut [u64] {
        let i = self.word_index(pfn);
        &mut self.words[i..i + WORDS_PER_PAGE]
    }

    #[inline]
    fn word_index(&self, pfn: Pfn) -> usize {
        match pfn.checked_offset_from(self.base) {
            Some(off) if off < self.frames => self.start + off as usize * WORDS_PER_PAGE,
            _ => self.outside(pfn),
        }
    }

    #[cold]
    #[inline(never)]
    fn outside(&self, pfn: Pfn) -> ! {
        panic!("{pfn:?} is outside the arena ({:?} + {:#x} frames)", self.base, self.frames)
    }

    /// A copy of the frame's 4096 bytes.
    ///
    /// # Panics
    /// If the frame is outside the arena.
    pub fn read_page(&self, pfn: Pfn) -> [u8; PAGE_BYTES] {
        let mut out = [0u8; PAGE_BYTES];
        out.copy_from_slice(self.page(pfn).as_bytes());
        out
    }

    /// Overwrites the frame with `data`.
    ///
    /// # Panics
    /// If the frame is outside the arena.
    pub fn write_page(&mut self, pfn: Pfn, data: &[u8; PAGE_BYTES]) {
        self.fence();
        self.writes += 1;
        self.page_mut(pfn).as_mut_bytes().copy_from_slice(data);
    }

    /// True if every byte of the frame is zero.
    ///
    /// # Panics
    /// If the frame is outside the arena.
    pub fn is_zero_page(&self, pfn: Pfn) -> bool {
        self.page(pfn).iter().all(|&w| w == 0)
    }

    /// Writes every page of the arena once so that the host kernel faults it in now; benchmarks
    /// call it so that they do not time page faults. Contents are unchanged.
    pub fn touch_all(&mut self) {
        self.fence();
        let start = self.start;
        for w in self.words[start..].iter_mut().step_by(WORDS_PER_PAGE) {
            // black_box: the store must happen even though the value is the one already there.
            *w = black_box(*w);
        }
    }

    /// Checks that `[offset, offset + len)` lies in one frame.
    fn check_range(offset: usize, len: usize) {
        assert!(
            offset.checked_add(len).is_some_and(|end| end <= PAGE_BYTES),
            "byte range {offset:#x}+{len:#x} crosses the frame"
        );
    }
}

/// Zeroes a 4 KiB-aligned page with non-temporal (streaming) stores: a zeroed page is rarely
/// read soon after, and bypassing the cache makes it about 2x faster than `fill(0)` over a
/// large arena. The stores are weakly ordered: the caller fences ([`HostMem::fence`]).
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[allow(unsafe_code)]
fn zero_page(page: &mut [u64]) {
    use core::arch::x86_64::{__m128i, _mm_setzero_si128, _mm_stream_si128};
    assert!(page.len() == WORDS_PER_PAGE && (page.as_ptr() as usize).is_multiple_of(16));
    // SAFETY: SSE2 is enabled for this build (cfg above); the intrinsic only makes a register.
    let zero = unsafe { _mm_setzero_si128() };
    for pair in page.chunks_exact_mut(2) {
        // SAFETY: `pair` is 16 bytes of exclusively borrowed memory, 16-byte aligned because
        // the page is (asserted above) and pairs start at even word indices; SSE2 is enabled.
        unsafe { _mm_stream_si128(pair.as_mut_ptr().cast::<__m128i>(), zero) };
    }
}

/// Orders earlier streaming stores before later stores (SFENCE).
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[allow(unsafe_code)]
fn sfence() {
    // SAFETY: SSE is enabled for this build (implied by SSE2); SFENCE has no operands and
    // touches no memory.
    unsafe { core::arch::x86_64::_mm_sfence() };
}

/// Portable fallback.
#[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
fn zero_page(page: &mut [u64]) {
    page.fill(0);
}

/// Portable fallback: ordinary stores need no fence.
#[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
fn sfence() {}

impl PhysMem for HostMem {
    #[inline]
    fn contains(&self, pfn: Pfn) -> bool {
        pfn.checked_offset_from(self.base).is_some_and(|off| off < self.frames)
    }

    #[inline]
    fn read_u64(&self, pfn: Pfn, index: usize) -> u64 {
        assert!(index < WORDS_PER_PAGE, "word index {index} past the frame");
        u64::from_le(self.words[self.word_index(pfn) + index])
    }

    #[inline]
    fn write_u64(&mut self, pfn: Pfn, index: usize, value: u64) {
        assert!(index < WORDS_PER_PAGE, "word index {index} past the frame");
        self.fence();
        self.writes += 1;
        let i = self.word_index(pfn) + index;
        self.words[i] = value.to_le();
    }

    fn read_bytes(&self, pfn: Pfn, offset: usize, buf: &mut [u8]) {
        HostMem::check_range(offset, buf.len());
        buf.copy_from_slice(&self.page(pfn).as_bytes()[offset..offset + buf.len()]);
    }

    fn write_bytes(&mut self, pfn: Pfn, offset: usize, data: &[u8]) {
        HostMem::check_range(offset, data.len());
        self.fence();
        self.writes += 1;
        self.page_mut(pfn).as_mut_bytes()[offset..offset + data.len()].copy_from_slice(data);
    }

    #[inline]
    fn zero(&mut self, pfn: Pfn) {
        self.writes += 1;
        zero_page(self.page_mut(pfn));
        self.nt_pending = true;
    }

    fn copy(&mut self, dst: Pfn, src: Pfn) {
        assert!(dst != src, "copy of {src:?} onto itself");
        self.fence();
        self.writes += 1;
        let s = self.word_index(src);
        let d = self.word_index(dst);
        self.words.copy_within(s..s + WORDS_PER_PAGE, d);
    }
}

/// SplitMix64 (Steele, Lea, Flood 2014): small, fast, and reproducible from a seed.
///
/// **For tests only**: it is not a cryptographic generator; keys the TSM derives from it are
/// predictable by design, so that test runs are repeatable.
#[derive(Clone, Debug)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// How many ABI calls ended in each class of status, from [`Platform::log_call`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CallCounts {
    /// Status 0.
    pub success: u64,
    /// Bit 63 clear but not 0: the call did nothing, the caller may go on.
    pub warning: u64,
    /// Bit 63 set, bit 62 clear: retrying may succeed (busy, no entropy, ...).
    pub recoverable: u64,
    /// Bits 63 and 62 set: the same call cannot succeed.
    pub non_recoverable: u64,
}

impl CallCounts {
    /// All calls counted.
    pub fn total(&self) -> u64 {
        self.success + self.warning + self.recoverable + self.non_recoverable
    }
}

/// The simulated machine's host-bridge aperture: 512 GiB from 512 GiB, far above the arena
/// (device BARs live here, [`crate::assign::BAR_BASE`] among them).
pub const MMIO_WINDOW: (u64, u64) = (0x80_0000_0000, 0x80_0000_0000);

/// The platform the tests give the TSM: [`HostMem`], a seeded (deterministic, **test-only**)
/// entropy source that can be made to fail, a monotonic clock, a call log, and the MMIO windows
/// it tells the TSM about ([`MMIO_WINDOW`] unless a test says otherwise).
#[derive(Debug)]
pub struct HostPlatform {
    /// The simulated physical memory.
    pub mem: HostMem,
    mmio_windows: Vec<FrameRange>,
    rng: SplitMix64,
    entropy_failing: bool,
    epoch: Instant,
    log_enabled: bool,
    keep_log: bool,
    log: Vec<CallRecord>,
    counts: CallCounts,
    /// The host's map as the firmware keeps it (`PhysMem::ownership_changed`): the frames the
    /// host may not touch because the PAMT gives them to the TSM or a TD.
    pub host_denied: std::collections::BTreeSet<Pfn>,
    /// The remapping unit the TSM programs (QEMU's capabilities by default).
    pub unit: ModelUnit,
    /// Every `Platform::sept_changed` call, in order: what a TD world's derived table would
    /// have dropped.
    pub sept_changes: Vec<(Pfn, Option<(GuestPhysAddr, u64)>)>,
    /// The host map (`DmaRemapping::host_map`), once [`HostPlatform::enable_host_map`] built
    /// it; then `ownership_changed` keeps it, and records each frame that left it in
    /// [`HostPlatform::host_map_invalidations`] (the page invalidation the firmware queues).
    pub host_map: Option<crate::hostmap::HostMap>,
    /// Frames whose host-domain translations the platform invalidated as they left the host.
    pub host_map_invalidations: Vec<Pfn>,
}

impl HostPlatform {
    /// A platform over `mem` whose entropy is the SplitMix64 stream from `seed`. The call log
    /// counts calls per status class but keeps no records (see [`HostPlatform::with_call_log`]).
    pub fn new(mem: HostMem, seed: u64) -> HostPlatform {
        let window = Pfn::new(MMIO_WINDOW.0 >> 12).map(|start| FrameRange { start, count: MMIO_WINDOW.1 >> 12 });
        HostPlatform {
            mem,
            mmio_windows: window.into_iter().collect(),
            rng: SplitMix64(seed),
            entropy_failing: false,
            epoch: Instant::now(),
            log_enabled: true,
            keep_log: false,
            log: Vec::new(),
            counts: CallCounts::default(),
            host_denied: std::collections::BTreeSet::new(),
            unit: ModelUnit::default(),
            sept_changes: Vec::new(),
            host_map: None,
            host_map_invalidations: Vec::new(),
        }
    }

    /// Keeps every [`CallRecord`] in [`HostPlatform::calls`] when `keep` is true.
    #[must_use]
    pub fn with_call_log(mut self, keep: bool) -> HostPlatform {
        self.keep_log = keep;
        self
    }

    /// Starts or stops keeping every [`CallRecord`] (see [`HostPlatform::with_call_log`]).
    pub fn keep_call_log(&mut self, keep: bool) {
        self.keep_log = keep;
    }

    /// Turns the whole per-call log off (no clock reads, no counts), as benchmarks want.
    pub fn set_call_log_enabled(&mut self, enabled: bool) {
        self.log_enabled = enabled;
    }

    /// Replaces the MMIO windows the platform reports (the TSM reads them at TDH.SYS.CONFIG).
    pub fn set_mmio_windows(&mut self, windows: &[FrameRange]) {
        self.mmio_windows = windows.to_vec();
    }

    /// While `failing`, [`Entropy::fill`] returns [`EntropyError`] and leaves the buffer alone.
    pub fn set_entropy_failing(&mut self, failing: bool) {
        self.entropy_failing = failing;
    }

    /// Builds the host map with its tables in the `pool_frames` frames at `pool` (memory the
    /// host does not own): every arena frame from `first` on that the host owns now (not in
    /// [`HostPlatform::host_denied`], not a table frame) is mapped to itself.
    ///
    /// # Panics
    /// If the pool is too small for the arena.
    pub fn enable_host_map(&mut self, pool: Pfn, pool_frames: u64, first: Pfn) {
        let mut map = crate::hostmap::HostMap::new(&mut self.mem, pool, pool_frames);
        let end = self.mem.base_pfn().raw() + self.mem.frames();
        for raw in first.raw()..end {
            let pfn = Pfn::new(raw).expect("arena frame");
            if !map.is_table(pfn) && !self.host_denied.contains(&pfn) {
                map.set(&mut self.mem, pfn, true).expect("host map pool");
            }
        }
        self.host_map = Some(map);
    }

    /// Calls counted per status class.
    pub fn call_counts(&self) -> CallCounts {
        self.counts
    }

    /// The records kept since the start (empty unless [`HostPlatform::with_call_log`]`(true)`).
    pub fn calls(&self) -> &[CallRecord] {
        &self.log
    }

    /// Forgets the kept records and the counts.
    pub fn clear_calls(&mut self) {
        self.log.clear();
        self.counts = CallCounts::default();
    }
}

impl PhysMem for HostPlatform {
    #[inline]
    fn contains(&self, pfn: Pfn) -> bool {
        self.mem.contains(pfn)
    }

    #[inline]
    fn read_u64(&self, pfn: Pfn, index: usize) -> u64 {
        self.mem.read_u64(pfn, index)
    }

    #[inline]
    fn write_u64(&mut self, pfn: Pfn, index: usize, value: u64) {
        self.mem.write_u64(pfn, index, value);
    }

    #[inline]
    fn read_bytes(&self, pfn: Pfn, offset: usize, buf: &mut [u8]) {
        self.mem.read_bytes(pfn, offset, buf);
    }

    #[inline]
    fn write_bytes(&mut self, pfn: Pfn, offset: usize, data: &[u8]) {
        self.mem.write_bytes(pfn, offset, data);
    }

    #[inline]
    fn zero(&mut self, pfn: Pfn) {
        self.mem.zero(pfn);
    }

    #[inline]
    fn copy(&mut self, dst: Pfn, src: Pfn) {
        self.mem.copy(dst, src);
    }

    fn ownership_changed(&mut self, pfn: Pfn, host_owned: bool) {
        if host_owned {
            self.host_denied.remove(&pfn);
        } else {
            self.host_denied.insert(pfn);
        }
        if let Some(map) = self.host_map.as_mut() {
            if map.is_table(pfn) {
                return;
            }
            // A pool too small is a harness bug, not an input.
            map.set(&mut self.mem, pfn, host_owned).expect("host map pool");
            if !host_owned {
                self.host_map_invalidations.push(pfn);
            }
        }
    }
}

impl Entropy for HostPlatform {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), EntropyError> {
        if self.entropy_failing {
            return Err(EntropyError);
        }
        for chunk in buf.chunks_mut(8) {
            let r = self.rng.next().to_le_bytes();
            chunk.copy_from_slice(&r[..chunk.len()]);
        }
        Ok(())
    }
}

impl Clock for HostPlatform {
    #[inline]
    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

impl DmaRemapping for HostPlatform {
    fn remapping_capabilities(&self) -> Option<Capabilities> {
        self.unit.caps
    }

    fn host_map(&self) -> Option<Pfn> {
        self.host_map.as_ref().map(crate::hostmap::HostMap::root)
    }

    fn set_root_table(&mut self, rtaddr: u64) -> Result<(), UnitError> {
        self.unit.set_root_table(rtaddr)
    }

    fn enable_queue(&mut self) -> Result<(), UnitError> {
        self.unit.enable_queue()
    }

    fn wait_status_address(&self) -> u64 {
        STATUS_ADDRESS
    }

    fn wait_status(&self) -> u32 {
        self.unit.status
    }

    fn submit(&mut self, descriptors: &[InvDescriptor]) -> Result<(), UnitError> {
        self.unit.submit(descriptors)
    }

    fn set_translation(&mut self, enabled: bool) -> Result<(), UnitError> {
        self.unit.set_translation(enabled)
    }

    fn take_fault(&mut self) -> Option<(u64, u64)> {
        self.unit.take_fault()
    }
}

impl Platform for HostPlatform {
    fn mmio_windows(&self) -> &[FrameRange] {
        &self.mmio_windows
    }

    fn is_ram(&self, range: FrameRange) -> bool {
        range.overlaps(FrameRange { start: self.mem.base, count: self.mem.frames })
    }

    #[inline]
    fn call_log_enabled(&self) -> bool {
        self.log_enabled
    }

    fn sept_changed(&mut self, tdr: Pfn, range: Option<(GuestPhysAddr, u64)>) {
        self.sept_changes.push((tdr, range));
    }

    fn log_call(&mut self, record: &CallRecord) {
        const ERROR: u64 = 1 << 63;
        const NON_RECOVERABLE: u64 = 1 << 62;
        let s = record.status;
        let class = if s == 0 {
            &mut self.counts.success
        } else if s & ERROR == 0 {
            &mut self.counts.warning
        } else if s & NON_RECOVERABLE == 0 {
            &mut self.counts.recoverable
        } else {
            &mut self.counts.non_recoverable
        };
        *class += 1;
        if self.keep_log {
            self.log.push(*record);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: u64 = 0x1_0000_0000;

    fn arena(frames: u64) -> HostMem {
        HostMem::new(HostPhysAddr::new(BASE).unwrap(), frames * PAGE_SIZE_4K)
    }

    fn pfn(i: u64) -> Pfn {
        Pfn::new((BASE >> 12) + i).unwrap()
    }

    #[test]
    fn bounds_and_base() {
        let m = arena(4);
        assert_eq!(m.base().raw(), BASE);
        assert_eq!(m.frames(), 4);
        assert!(m.contains(pfn(0)) && m.contains(pfn(3)));
        assert!(!m.contains(pfn(4)));
        assert!(!m.contains(Pfn::new((BASE >> 12) - 1).unwrap()));
    }

    #[test]
    fn frame_zero_is_page_aligned_in_host_memory() {
        for frames in [1, 3, 17] {
            let mut m = arena(frames);
            assert_eq!(m.host_ptr_mut() as usize % PAGE_BYTES, 0);
            assert_eq!(m.host_phys_offset().wrapping_add(BASE), m.host_ptr_mut() as u64);
        }
    }

    #[test]
    fn starts_zeroed() {
        let m = arena(3);
        assert!((0..3).all(|i| m.is_zero_page(pfn(i))));
        assert_eq!(m.writes(), 0);
    }

    #[test]
    fn words_and_bytes_agree_little_endian() {
        let mut m = arena(2);
        m.write_u64(pfn(1), 3, 0x0807_0605_0403_0201);
        let mut b = [0u8; 10];
        m.read_bytes(pfn(1), 23, &mut b);
        assert_eq!(b, [0, 1, 2, 3, 4, 5, 6, 7, 8, 0]);
        m.write_bytes(pfn(1), 25, &[0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff, 0x11, 0x22, 0x33]);
        assert_eq!(m.read_u64(pfn(1), 3), 0x11ff_eedd_ccbb_aa01);
        assert_eq!(m.read_u64(pfn(1), 4), 0x3322);
        assert_eq!(m.read_page(pfn(1))[24..34], [1, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff, 0x11, 0x22, 0x33]);
    }

    #[test]
    fn whole_page_round_trips_and_copies() {
        let mut m = arena(3);
        let mut page = [0u8; PAGE_BYTES];
        for (i, b) in page.iter_mut().enumerate() {
            *b = (i * 7) as u8;
        }
        m.write_page(pfn(0), &page);
        assert_eq!(m.read_page(pfn(0)), page);
        m.copy(pfn(2), pfn(0));
        assert_eq!(m.read_page(pfn(2)), page);
        m.write_bytes(pfn(2), 4090, &[9; 6]);
        assert_eq!(m.read_page(pfn(2))[4090..], [9; 6]);
        assert_eq!(m.read_page(pfn(0)), page, "copy source unchanged");
    }

    #[test]
    fn zero_clears_only_its_frame() {
        let mut m = arena(3);
        for i in 0..3 {
            m.write_bytes(pfn(i), 0, &[0xff; PAGE_BYTES]);
        }
        m.zero(pfn(1));
        assert!(m.is_zero_page(pfn(1)), "the zeroing thread sees its zeros before any fence");
        m.write_u64(pfn(1), 5, 7);
        assert_eq!(m.read_u64(pfn(1), 5), 7, "a write after a zero lands after it");
        m.zero(pfn(1));
        m.fence();
        assert!(m.is_zero_page(pfn(1)));
        assert_eq!(m.read_page(pfn(0)), [0xff; PAGE_BYTES]);
        assert_eq!(m.read_page(pfn(2)), [0xff; PAGE_BYTES]);
    }

    #[test]
    fn every_mutation_counts_as_a_write() {
        let mut m = arena(2);
        m.write_u64(pfn(0), 0, 0);
        m.write_bytes(pfn(0), 0, &[]);
        m.zero(pfn(0));
        m.copy(pfn(1), pfn(0));
        m.write_page(pfn(1), &[0; PAGE_BYTES]);
        assert_eq!(m.writes(), 5);
        let mut buf = [0u8; 8];
        m.read_bytes(pfn(0), 0, &mut buf);
        let _ = m.read_u64(pfn(0), 0);
        m.touch_all();
        assert_eq!(m.writes(), 5, "reads and touch_all are not writes");
    }

    #[test]
    fn large_arena_is_lazy() {
        // 4 GiB: only possible because untouched pages are never made resident.
        let mut m = HostMem::new(HostPhysAddr::new(BASE).unwrap(), 4 << 30);
        let last = pfn(m.frames() - 1);
        m.write_u64(last, 511, 42);
        assert_eq!(m.read_u64(last, 511), 42);
        m.zero(last);
        assert_eq!(m.read_u64(last, 511), 0);
    }

    #[test]
    #[should_panic(expected = "outside the arena")]
    fn out_of_arena_frame_panics() {
        arena(1).read_u64(pfn(1), 0);
    }

    #[test]
    #[should_panic(expected = "crosses the frame")]
    fn range_crossing_the_frame_panics() {
        arena(2).write_bytes(pfn(0), 4095, &[1, 2]);
    }

    #[test]
    #[should_panic(expected = "past the frame")]
    fn word_index_past_frame_panics() {
        arena(2).read_u64(pfn(0), WORDS_PER_PAGE);
    }

    #[test]
    fn entropy_is_seeded_and_can_fail() {
        let mut a = HostPlatform::new(arena(1), 7);
        let mut b = HostPlatform::new(arena(1), 7);
        let mut c = HostPlatform::new(arena(1), 8);
        let (mut x, mut y, mut z) = ([0u8; 13], [0u8; 13], [0u8; 13]);
        a.fill(&mut x).unwrap();
        b.fill(&mut y).unwrap();
        c.fill(&mut z).unwrap();
        assert_eq!(x, y);
        assert_ne!(x, z);
        assert_ne!(x, [0; 13]);
        a.set_entropy_failing(true);
        let mut w = [0u8; 4];
        assert_eq!(a.fill(&mut w), Err(EntropyError));
        assert_eq!(w, [0; 4]);
        a.set_entropy_failing(false);
        assert!(a.fill(&mut w).is_ok());
    }

    #[test]
    fn clock_is_monotonic() {
        let p = HostPlatform::new(arena(1), 0);
        let t0 = p.now_ns();
        let t1 = p.now_ns();
        assert!(t1 >= t0);
    }

    #[test]
    fn call_log_counts_classes_and_keeps_records_on_request() {
        let rec = |status| CallRecord { guest: false, leaf: 1, name: "x", status, elapsed_ns: 0 };
        let statuses = [0, 0x0000_0301_0000_0000, 0x8000_0200_0000_0000, 0xC000_0100_0000_0000, 0];
        let mut p = HostPlatform::new(arena(1), 0);
        for s in statuses {
            p.log_call(&rec(s));
        }
        assert_eq!(p.call_counts(), CallCounts { success: 2, warning: 1, recoverable: 1, non_recoverable: 1 });
        assert!(p.calls().is_empty());

        let mut p = HostPlatform::new(arena(1), 0).with_call_log(true);
        for s in statuses {
            p.log_call(&rec(s));
        }
        assert_eq!(p.calls().len(), 5);
        assert_eq!(p.calls()[3].status, 0xC000_0100_0000_0000);
        assert_eq!(p.call_counts().total(), 5);
        p.clear_calls();
        assert!(p.calls().is_empty() && p.call_counts().total() == 0);
        assert!(p.call_log_enabled());
        p.set_call_log_enabled(false);
        assert!(!p.call_log_enabled());
    }
}
