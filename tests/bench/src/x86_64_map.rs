//! The reference: the `x86_64` crate's `OffsetPageTable::map_to` mapping 1 GiB of virtual address
//! space in 4 KiB pages, over the same simulated physical memory the TSM uses.
//!
//! The page tables live in a [`HostMem`] arena and are reached through it exactly as a kernel
//! with a physical-memory window would: `memory_offset = host address of the arena - its
//! physical base`. Table frames come from a bump allocator at the start of the arena; the
//! 262,144 data frames are distinct arena frames after them, never zeroed or touched (mapping
//! does not touch them). The arena is pre-faulted before timing so that page faults of the host
//! are not timed.

use std::time::Instant;

use seamless_harness::HostMem;
use tsm::addr::{HostPhysAddr, PAGE_SIZE_4K};
use x86_64::structures::paging::mapper::{MapToError, Translate};
use x86_64::structures::paging::{
    FrameAllocator, Mapper, OffsetPageTable, Page, PageTable, PageTableFlags, PhysFrame, Size4KiB,
};
use x86_64::{PhysAddr, VirtAddr};

/// Pages mapped per run: 1 GiB.
pub const PAGES: u64 = 262_144;
/// Frames reserved for page tables: 1 PML4 + 1 PDPT + 1 PD + 512 PTs fit easily.
const TABLE_FRAMES: u64 = 1024;
/// Physical address of the arena.
const ARENA_BASE: u64 = 0x100_0000;
/// First virtual address mapped (1 GiB aligned, canonical, away from the arena's window).
const VIRT_BASE: u64 = 0x0000_2000_0000_0000;
/// Timed runs; the best is reported.
const RUNS: usize = 3;

/// Hands out the arena's table frames in order.
#[derive(Debug)]
struct BumpFrames {
    next: u64,
    end: u64,
}

// SAFETY: every frame is handed out once, lies in the arena (so the mapper can reach it through
// the offset window) and is distinct from the data frames mapped.
unsafe impl FrameAllocator<Size4KiB> for BumpFrames {
    fn allocate_frame(&mut self) -> Option<PhysFrame<Size4KiB>> {
        if self.next >= self.end {
            return None;
        }
        let frame = PhysFrame::containing_address(PhysAddr::new(self.next));
        self.next += PAGE_SIZE_4K;
        Some(frame)
    }
}

/// One run on a fresh arena and fresh tables: returns the mapping time in ns per page.
///
/// # Panics
/// If mapping fails or a spot check of the resulting translation is wrong: the comparison
/// would be meaningless.
#[allow(clippy::panic)]
fn one_run() -> f64 {
    let base = HostPhysAddr::new(ARENA_BASE).unwrap_or_default();
    let mut mem = HostMem::new(base, (TABLE_FRAMES + PAGES) * PAGE_SIZE_4K);
    mem.touch_all();
    let offset = mem.host_phys_offset();
    let l4_host = mem.host_ptr_mut();
    let mut tables = BumpFrames { next: ARENA_BASE + PAGE_SIZE_4K, end: ARENA_BASE + TABLE_FRAMES * PAGE_SIZE_4K };
    let data_base = ARENA_BASE + TABLE_FRAMES * PAGE_SIZE_4K;
    let flags = PageTableFlags::PRESENT | PageTableFlags::WRITABLE;

    // SAFETY: frame 0 of the arena (the PML4) is 4 KiB aligned in host memory, zero, and not
    // accessed through `mem` while `l4` lives; `mem` outlives `mapper` (declared earlier, so
    // dropped later).
    let l4 = unsafe { &mut *l4_host.cast::<PageTable>() };
    // SAFETY: every physical frame the tables point to is an arena frame, which lives at
    // `offset + phys` in host memory: the whole arena is mapped at that offset.
    let mut mapper = unsafe { OffsetPageTable::new(l4, VirtAddr::new(offset)) };

    let start = Instant::now();
    for i in 0..PAGES {
        let page = Page::<Size4KiB>::containing_address(VirtAddr::new(VIRT_BASE + i * PAGE_SIZE_4K));
        let frame = PhysFrame::containing_address(PhysAddr::new(data_base + i * PAGE_SIZE_4K));
        // SAFETY: the data frames are distinct, unused by anything else, and the virtual
        // range is not in use: nothing can observe the aliasing `map_to` warns about.
        match unsafe { mapper.map_to(page, frame, flags, &mut tables) } {
            Ok(flush) => flush.ignore(),
            Err(e) => panic!("map_to failed at page {i}: {}", describe(&e)),
        }
    }
    let elapsed = start.elapsed();

    for i in [0, 1, PAGES / 2, PAGES - 1] {
        let virt = VirtAddr::new(VIRT_BASE + i * PAGE_SIZE_4K + 0x123);
        let want = PhysAddr::new(data_base + i * PAGE_SIZE_4K + 0x123);
        assert_eq!(mapper.translate_addr(virt), Some(want), "translation of page {i}");
    }
    let used = (tables.next - ARENA_BASE) / PAGE_SIZE_4K;
    assert_eq!(used, 1 + 1 + 1 + PAGES / 512, "table frames used");

    elapsed.as_nanos() as f64 / PAGES as f64
}

fn describe(e: &MapToError<Size4KiB>) -> &'static str {
    match e {
        MapToError::FrameAllocationFailed => "out of table frames",
        MapToError::ParentEntryHugePage => "parent entry is a huge page",
        MapToError::PageAlreadyMapped(_) => "page already mapped",
    }
}

/// Runs the reference [`RUNS`] times, records `x86_64_map_to_4k_ns_per_page` (the best run)
/// and returns it.
pub fn run(figs: &mut crate::Figures) -> f64 {
    let best = (0..RUNS).map(|_| one_run()).fold(f64::INFINITY, f64::min);
    figs.record("x86_64_map_to_4k_ns_per_page", best, "ns");
    best
}
