//! Raw access to physical memory, in three shapes, each with the check that makes it sound:
//!
//! - [`read_firmware_bytes`]: reads tables the loader and QEMU left in RAM (hvm_start_info, its
//!   memory map, ACPI) through the identity map, refusing the binary's own memory;
//! - [`Mmio`]: a device register window (ECAM, BARs), 32-bit volatile accesses, bounds-checked;
//! - [`Frames`]: RAM frames outside the binary's own memory, through the direct map, for `tsm::platform::PhysMem`
//!   and for the host agent's own pages.
//!
//! Why these accesses cannot break Rust's rules: neither binary has a heap, so every Rust object
//! (statics, stacks, page tables) lies in the binary's own memory, which it names once at boot
//! ([`claim_own_memory`]: the TSM its image, the host agent what the TSM loaded it into);
//! memory outside it is never borrowed, and both run on one CPU, so raw reads and writes there
//! race with nothing.
//!
//! Both binaries see physical memory the same way: the low [`MAPPED_BYTES`] identity-mapped
//! (device registers are reached there) and again at [`DIRECT_MAP_BASE`] (RAM is reached there).

#![allow(unsafe_code)]

use core::sync::atomic::{AtomicU64, Ordering};

use crate::memmap::{MemoryMap, RangeKind, MAX_RANGES};

/// Virtual address of physical address 0 in the direct map (PML4 slot 256), in both binaries.
pub const DIRECT_MAP_BASE: u64 = 0xFFFF_8000_0000_0000;
/// Physical memory the direct map (and the identity map) covers.
pub const MAPPED_BYTES: u64 = 4 << 30;

static OWN_START: AtomicU64 = AtomicU64::new(0);
static OWN_END: AtomicU64 = AtomicU64::new(0);

/// Names the physical range `[start, end)` that holds this binary's Rust objects (image,
/// statics, stacks): the accessors of this module refuse it from then on. Call it once, first
/// thing at boot; a later call only narrows nothing (the first claim stays).
pub fn claim_own_memory(start: u64, end: u64) {
    if OWN_END.load(Ordering::SeqCst) == 0 {
        OWN_START.store(start, Ordering::SeqCst);
        OWN_END.store(end, Ordering::SeqCst);
    }
}

/// The range [`claim_own_memory`] named (empty before the claim).
pub fn own_memory() -> (u64, u64) {
    (OWN_START.load(Ordering::SeqCst), OWN_END.load(Ordering::SeqCst))
}

/// A physical range the accessor refuses: in the binary's own memory, past the mapped 4 GiB, or wrapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutOfRange {
    /// First byte asked for.
    pub addr: u64,
    /// Bytes asked for.
    pub len: u64,
}

static LENT_START: AtomicU64 = AtomicU64::new(0);
static LENT_END: AtomicU64 = AtomicU64::new(0);

/// The range [`lend`] handed out (empty before).
fn lent() -> (u64, u64) {
    (LENT_START.load(Ordering::SeqCst), LENT_END.load(Ordering::SeqCst))
}

/// Takes `[start, start + len)`, inside one usable range of `frames`, out of every accessor's
/// reach for the rest of the run and hands it out once as a byte slice (through the direct
/// map): room for a large file the binary keeps whole, such as the host agent's copy of a TD's
/// firmware. `None` if the range is empty, not inside one usable range, or a range was lent
/// before.
pub fn lend(frames: &Frames, start: u64, len: u64) -> Option<&'static mut [u8]> {
    if len == 0 || !frames.contains(start, len) {
        return None;
    }
    let end = start + len;
    LENT_END.compare_exchange(0, end, Ordering::SeqCst, Ordering::SeqCst).ok()?;
    LENT_START.store(start, Ordering::SeqCst);
    // SAFETY: usable RAM in the direct map (checked), outside the binary's own memory (`Frames`
    // leaves it out) and no longer reachable through any accessor here (`lent`, checked by
    // `outside_image` and `Frames::ptr`), handed out once (the exchange above): this slice is
    // its only reference. One CPU.
    Some(unsafe { core::slice::from_raw_parts_mut((DIRECT_MAP_BASE + start) as *mut u8, len as usize) })
}

fn outside_image(addr: u64, len: u64) -> Result<u64, OutOfRange> {
    let err = OutOfRange { addr, len };
    let end = addr.checked_add(len).ok_or(err)?;
    let (img_start, img_end) = own_memory();
    let (lent_start, lent_end) = lent();
    if end > MAPPED_BYTES || (addr < img_end && end > img_start) || (addr < lent_end && end > lent_start) {
        return Err(err);
    }
    Ok(end)
}

/// Copies `buf.len()` bytes of physical memory at `addr` (below 4 GiB, outside the binary's own
/// memory).
///
/// # Errors
/// [`OutOfRange`] if the range touches the binary's memory, passes 4 GiB or wraps.
pub fn read_firmware_bytes(addr: u64, buf: &mut [u8]) -> Result<(), OutOfRange> {
    outside_image(addr, buf.len() as u64)?;
    for (i, b) in buf.iter_mut().enumerate() {
        // SAFETY: the identity map covers 0..4 GiB; the byte is outside every Rust object (the
        // check above); a volatile read neither races (one CPU) nor lets the compiler invent
        // accesses.
        *b = unsafe { core::ptr::read_volatile((addr + i as u64) as *const u8) };
    }
    Ok(())
}

/// A window of device registers, accessed as 32-bit little-endian words through the identity
/// map (uncached: `arch::init_mmio_attributes`).
#[derive(Debug)]
pub struct Mmio {
    base: u64,
    len: u64,
}

impl Mmio {
    /// The window `[base, base + len)`.
    ///
    /// # Safety
    /// The range must be device registers (not RAM holding Rust objects) below 4 GiB whose
    /// accesses cannot break memory safety: no DMA set up through them, no change to memory
    /// the firmware uses. No other code may drive them in a conflicting way.
    pub unsafe fn new(base: u64, len: u64) -> Mmio {
        Mmio { base, len }
    }

    /// A sub-window `[offset, offset + len)`, or `None` if it does not fit.
    pub fn window(&self, offset: u64, len: u64) -> Option<Mmio> {
        let end = offset.checked_add(len)?;
        (end <= self.len).then(|| Mmio { base: self.base + offset, len })
    }

    fn check(&self, offset: u64) -> u64 {
        // An offset outside the window or misaligned is a driver bug, never device input: the
        // drivers compute offsets from constants and from the 12-bit capability pointers they
        // validate first.
        assert!(
            offset.is_multiple_of(4) && offset + 4 <= self.len,
            "MMIO access at {offset:#x} outside a window of {:#x}",
            self.len
        );
        self.base + offset
    }

    /// Reads the 32-bit register at `offset`.
    ///
    /// # Panics
    /// If `offset` is misaligned or outside the window (a driver bug).
    pub fn read_u32(&self, offset: u64) -> u32 {
        let addr = self.check(offset);
        // SAFETY: inside the device window (checked), aligned; the constructor's contract makes
        // the access harmless to memory safety.
        unsafe { core::ptr::read_volatile(addr as *const u32) }
    }

    /// Writes the 32-bit register at `offset`.
    ///
    /// # Panics
    /// As for [`Mmio::read_u32`].
    pub fn write_u32(&self, offset: u64, value: u32) {
        let addr = self.check(offset);
        // SAFETY: as for `read_u32`.
        unsafe { core::ptr::write_volatile(addr as *mut u32, value) };
    }

    /// The address of a `size`-byte access at `offset`, if it is 1, 2 or 4 bytes, naturally
    /// aligned and inside the window.
    fn sized(&self, offset: u64, size: u8) -> Option<u64> {
        let ok = matches!(size, 1 | 2 | 4)
            && offset.is_multiple_of(u64::from(size))
            && offset.checked_add(u64::from(size)).is_some_and(|e| e <= self.len);
        ok.then(|| self.base + offset)
    }

    /// Reads `size` (1, 2 or 4) bytes at `offset` as one access; `None` if misaligned or
    /// outside the window (the caller's input, checked here).
    pub fn read_sized(&self, offset: u64, size: u8) -> Option<u32> {
        let addr = self.sized(offset, size)?;
        // SAFETY: inside the device window (checked), naturally aligned; the constructor's
        // contract makes the access harmless to memory safety.
        Some(unsafe {
            match size {
                1 => u32::from(core::ptr::read_volatile(addr as *const u8)),
                2 => u32::from(core::ptr::read_volatile(addr as *const u16)),
                _ => core::ptr::read_volatile(addr as *const u32),
            }
        })
    }

    /// Writes `size` (1, 2 or 4) bytes at `offset` as one access; false if misaligned or outside
    /// the window.
    pub fn write_sized(&self, offset: u64, size: u8, value: u32) -> bool {
        let Some(addr) = self.sized(offset, size) else { return false };
        // SAFETY: as for `read_sized`.
        unsafe {
            match size {
                1 => core::ptr::write_volatile(addr as *mut u8, value as u8),
                2 => core::ptr::write_volatile(addr as *mut u16, value as u16),
                _ => core::ptr::write_volatile(addr as *mut u32, value),
            }
        }
        true
    }
}

impl super::doe::Registers for Mmio {
    fn read(&self, offset: u64) -> u32 {
        self.read_u32(offset)
    }

    fn write(&self, offset: u64, value: u32) {
        self.write_u32(offset, value);
    }
}

/// RAM frames the binary does not itself use: the map's RAM ranges at or above 1 MiB and below
/// 4 GiB, minus the binary's own memory. Reached through the direct map.
#[derive(Clone, Copy, Debug)]
pub struct Frames {
    ranges: [(u64, u64); MAX_RANGES],
    count: usize,
}

/// Frames below this are left to the BIOS and the loader (start_info, ACPI pointers).
const LOW_LIMIT: u64 = 1 << 20;

impl Frames {
    /// The usable frames of `map`.
    pub fn new(map: &MemoryMap) -> Frames {
        let (img_start, img_end) = own_memory();
        let mut ranges = [(0, 0); MAX_RANGES];
        let mut count = 0;
        let mut push = |s: u64, e: u64| {
            let s = s.next_multiple_of(4096);
            let e = e & !0xFFF;
            if s < e && count < MAX_RANGES {
                ranges[count] = (s, e);
                count += 1;
            }
        };
        for r in map.ranges().iter().filter(|r| r.kind == RangeKind::Ram) {
            let start = r.base.max(LOW_LIMIT);
            let end = r.end().min(MAPPED_BYTES);
            // Split around the image.
            push(start, end.min(img_start));
            push(start.max(img_end), end);
        }
        Frames { ranges, count }
    }

    /// True if `[addr, addr + len)` lies inside one usable range.
    pub fn contains(&self, addr: u64, len: u64) -> bool {
        let Some(end) = addr.checked_add(len) else { return false };
        self.ranges[..self.count].iter().any(|&(s, e)| s <= addr && end <= e)
    }

    /// The usable ranges `(start, end)`.
    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.ranges[..self.count]
    }

    fn ptr(&self, addr: u64, len: usize) -> *mut u8 {
        // A range outside the usable frames is a caller bug (the TSM checks `contains` first,
        // the host agent only uses pages it carved from these ranges): stop rather than touch
        // memory a Rust object may live in.
        assert!(self.contains(addr, len as u64), "physical access {addr:#x}+{len:#x} outside usable RAM");
        let (lent_start, lent_end) = lent();
        assert!(
            addr >= lent_end || addr + len as u64 <= lent_start,
            "physical access {addr:#x}+{len:#x} to lent memory"
        );
        (DIRECT_MAP_BASE + addr) as *mut u8
    }

    /// Copies physical memory at `addr` into `buf`.
    ///
    /// # Panics
    /// If the range is not inside one usable range.
    pub fn read(&self, addr: u64, buf: &mut [u8]) {
        let src = self.ptr(addr, buf.len());
        // SAFETY: `src..src+len` is usable RAM in the direct map (checked), outside every Rust
        // object, so it cannot overlap `buf` (on the stack or in the image); one CPU.
        unsafe { core::ptr::copy_nonoverlapping(src, buf.as_mut_ptr(), buf.len()) };
    }

    /// Copies `data` into physical memory at `addr`.
    ///
    /// # Panics
    /// As for [`Frames::read`].
    pub fn write(&self, addr: u64, data: &[u8]) {
        let dst = self.ptr(addr, data.len());
        // SAFETY: as for `read`, in the other direction.
        unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), dst, data.len()) };
    }

    /// Reads the little-endian u64 at `addr` (8-byte aligned).
    ///
    /// # Panics
    /// As for [`Frames::read`], or if `addr` is misaligned.
    pub fn read_u64(&self, addr: u64) -> u64 {
        assert!(addr.is_multiple_of(8), "misaligned u64 read at {addr:#x}");
        let src = self.ptr(addr, 8).cast::<u64>();
        // SAFETY: aligned (checked), usable RAM outside every Rust object (checked).
        unsafe { src.read() }
    }

    /// Writes the little-endian u64 at `addr` (8-byte aligned).
    ///
    /// # Panics
    /// As for [`Frames::read_u64`].
    pub fn write_u64(&self, addr: u64, value: u64) {
        assert!(addr.is_multiple_of(8), "misaligned u64 write at {addr:#x}");
        let dst = self.ptr(addr, 8).cast::<u64>();
        // SAFETY: as for `read_u64`.
        unsafe { dst.write(value) };
    }

    /// Zeroes `len` bytes at `addr`.
    ///
    /// # Panics
    /// As for [`Frames::read`].
    pub fn zero(&self, addr: u64, len: usize) {
        let dst = self.ptr(addr, len);
        // SAFETY: as for `write`.
        unsafe { core::ptr::write_bytes(dst, 0, len) };
    }

    /// Copies `len` bytes from `src` to `dst` (disjoint ranges).
    ///
    /// # Panics
    /// As for [`Frames::read`], for either range, or if they overlap.
    pub fn copy(&self, dst: u64, src: u64, len: usize) {
        assert!(dst.abs_diff(src) >= len as u64, "overlapping copy {src:#x} -> {dst:#x}");
        let (d, s) = (self.ptr(dst, len), self.ptr(src, len));
        // SAFETY: both ranges usable RAM (checked) and disjoint (checked).
        unsafe { core::ptr::copy_nonoverlapping(s, d, len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memmap::{MemoryMap, MemoryRange, RangeKind};

    #[test]
    fn lend_refuses_what_is_not_one_usable_range_and_lends_nothing() {
        let mut map = MemoryMap::default();
        map.push(MemoryRange { base: 1 << 20, size: 15 << 20, kind: RangeKind::Ram });
        map.push(MemoryRange { base: 32 << 20, size: 16 << 20, kind: RangeKind::Ram });
        let frames = Frames::new(&map);
        // Empty, below the usable RAM, across the hole between the two ranges, past the end.
        for (start, len) in [(2 << 20, 0), (0x8000, 0x1000), (15 << 20, 2 << 20), (47 << 20, 2 << 20)] {
            assert!(lend(&frames, start, len).is_none(), "{start:#x}+{len:#x}");
        }
        assert_eq!(lent(), (0, 0), "a refused lend takes nothing");
        assert!(outside_image(15 << 20, 2 << 20).is_ok());
    }
}
