//! The page tables `boot.S` built: the low 4 GiB mapped with 2 MiB pages twice, identity at 0
//! and the direct map at [`DIRECT_MAP_BASE`], both through the same PDPT and page directories.
//! Rust only changes the cache attributes of the MMIO part.

use core::arch::asm;
use core::ptr::addr_of_mut;

/// Virtual address of physical address 0 in the direct map (PML4 slot 256).
pub const DIRECT_MAP_BASE: u64 = 0xFFFF_8000_0000_0000;
/// Physical memory the direct map (and the identity map) covers.
pub const MAPPED_BYTES: u64 = 4 << 30;

const TWO_MIB: u64 = 2 << 20;
/// PWT | PCD: with the power-on PAT, PAT entry 3, uncacheable.
const PTE_UNCACHED: u64 = 0x18;

unsafe extern "C" {
    /// The four page directories of `boot.S`: 2048 entries of 2 MiB, covering 0..4 GiB.
    static mut boot_pd: [u64; 2048];
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
