//! The page tables `boot.S` built: the low 4 GiB mapped with 2 MiB pages twice, identity at 0
//! and the direct map at [`seamless_drivers::phys::DIRECT_MAP_BASE`], both through the same PDPT and page directories.
//! Rust only changes the cache attributes of the MMIO part.

use core::arch::asm;
use core::ptr::addr_of_mut;

use seamless_drivers::phys::MAPPED_BYTES;

const TWO_MIB: u64 = 2 << 20;
/// PWT | PCD: with the power-on PAT, PAT entry 3, uncacheable.
const PTE_UNCACHED: u64 = 0x18;

unsafe extern "C" {
    /// The four page directories of `boot.S`: 2048 entries of 2 MiB, covering 0..4 GiB.
    static mut boot_pd: [u64; 2048];
    /// The 4 KiB page right below the boot stack.
    static boot_stack_guard: u8;
}

const PTE_PRESENT_WRITABLE: u64 = 0x3;
const PTE_LARGE: u64 = 0x80;

/// The page table that replaces the 2 MiB mapping holding the stack guard.
#[repr(C, align(4096))]
struct PageTable([u64; 512]);

struct GuardTable(core::cell::UnsafeCell<PageTable>);
// SAFETY: written once by `unmap_stack_guard` on the one CPU before the PD entry points to it.
unsafe impl Sync for GuardTable {}
static GUARD_TABLE: GuardTable = GuardTable(core::cell::UnsafeCell::new(PageTable([0; 512])));

/// The address of the stack guard page.
pub fn stack_guard() -> u64 {
    &raw const boot_stack_guard as u64
}

/// Unmaps the page below the boot stack: the 2 MiB page holding it becomes a page table of
/// 4 KiB pages with the same frames and attributes, minus the guard. A stack overflow then
/// raises #PF, whose delivery on the same stack faults again: #DF, which runs on its own IST
/// stack and reports.
///
/// # Safety
/// Called once at boot on the one CPU, before anything uses the guard page (nothing does: it is
/// a gap in .bss); every other address keeps its translation.
pub unsafe fn unmap_stack_guard() {
    let guard = stack_guard();
    let pd_index = (guard / TWO_MIB) as usize;
    let table = GUARD_TABLE.0.get();
    // SAFETY: `boot_pd` is the live page directory array; `GUARD_TABLE` is a static page table
    // nothing else references. The new table maps the same 2 MiB with the same frames, so only
    // the guard page's translation changes; CR3 reload flushes the old large-page entry.
    unsafe {
        let pd = addr_of_mut!(boot_pd);
        let large = (*pd)[pd_index];
        let flags = large & (PTE_PRESENT_WRITABLE | PTE_UNCACHED);
        let base = large & 0x000F_FFFF_FFE0_0000;
        for (i, e) in (*table).0.iter_mut().enumerate() {
            *e = (base + i as u64 * 4096) | flags;
        }
        (*table).0[((guard % TWO_MIB) / 4096) as usize] = 0;
        debug_assert!(large & PTE_LARGE != 0);
        // Identity map: the table's physical address is its address.
        (*pd)[pd_index] = table as u64 | PTE_PRESENT_WRITABLE;
        asm!("mov {0}, cr3", "mov cr3, {0}", out(reg) _, options(nostack, preserves_flags));
    }
}

/// Makes `[start, 4 GiB)` uncacheable in both maps: the MMIO hole of q35 (ECAM, PCI BARs,
/// IOAPIC, LAPIC). `start` is rounded down to 2 MiB.
///
/// # Safety
/// Called once at boot on the one CPU, with no references into the changed range alive: only
/// the cache type changes, translations stay the same.
pub unsafe fn set_mmio_uncached(start: u64) {
    let first = (start.min(MAPPED_BYTES) / TWO_MIB) as usize;
    // SAFETY: `boot_pd` is the live page directory array of boot.S; one CPU, nothing else
    // writes it (the caller's contract). Entries keep their frame and present bit.
    unsafe {
        let pd = addr_of_mut!(boot_pd);
        for i in first..2048 {
            (*pd)[i] |= PTE_UNCACHED;
        }
        // Reloading CR3 flushes every non-global translation, so the new attributes apply.
        asm!("mov {0}, cr3", "mov cr3, {0}", out(reg) _, options(nostack, preserves_flags));
    }
}
