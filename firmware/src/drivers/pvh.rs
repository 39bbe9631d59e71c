//! The PVH boot protocol's `hvm_start_info` (Xen `arch/x86/hvm/start_info.h`, version 1): the
//! magic, the RSDP address and the memory map. Everything is copied out of the loader's memory
//! once, checked, then only the copy is used.

use core::fmt;

use super::phys::{read_firmware_bytes, OutOfRange};
use crate::arch::StartInfoAddr;
use crate::memmap::{MemoryMap, MemoryRange, RangeKind};

/// `XEN_HVM_START_MAGIC_VALUE`.
pub const MAGIC: u32 = 0x336e_c578;
/// Bytes of `hvm_start_info` version 1 (with the memory map fields).
const INFO_BYTES: usize = 56;
/// Bytes of one `hvm_memmap_table_entry`.
const ENTRY_BYTES: usize = 24;
/// Entries read at most; a larger count is an error rather than a long walk.
const MAX_ENTRIES: u32 = 128;

/// What the firmware takes from the start info.
#[derive(Clone, Copy, Debug)]
pub struct BootInfo {
    /// `hvm_start_info.version`.
    pub version: u32,
    /// Physical address of the ACPI RSDP (0 if the loader gave none).
    pub rsdp: u64,
    /// The memory map.
    pub memmap: MemoryMap,
}

/// Why the start info is unusable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PvhError {
    /// The structure or the map is not in readable memory.
    Unreadable(OutOfRange),
    /// Wrong magic.
    BadMagic(u32),
    /// Version 0 has no memory map.
    NoMemoryMap {
        /// The version found.
        version: u32,
    },
    /// More memory map entries than the firmware reads.
    TooManyEntries(u32),
}

impl fmt::Display for PvhError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PvhError::Unreadable(r) => write!(f, "hvm_start_info at {:#x}+{:#x} is not readable memory", r.addr, r.len),
            PvhError::BadMagic(m) => write!(f, "hvm_start_info magic {m:#x}, expected {MAGIC:#x}"),
            PvhError::NoMemoryMap { version } => write!(f, "hvm_start_info version {version} has no memory map"),
            PvhError::TooManyEntries(n) => write!(f, "memory map of {n} entries (at most {MAX_ENTRIES})"),
        }
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

/// Reads and checks the start info the loader passed.
///
/// # Errors
/// [`PvhError`] naming what is wrong.
pub fn read(addr: StartInfoAddr) -> Result<BootInfo, PvhError> {
    let mut info = [0u8; INFO_BYTES];
    read_firmware_bytes(addr.get(), &mut info).map_err(PvhError::Unreadable)?;
    let magic = u32_at(&info, 0);
    if magic != MAGIC {
        return Err(PvhError::BadMagic(magic));
    }
    let version = u32_at(&info, 4);
    if version < 1 {
        return Err(PvhError::NoMemoryMap { version });
    }
    let rsdp = u64_at(&info, 32);
    let memmap_paddr = u64_at(&info, 40);
    let entries = u32_at(&info, 48);
    if entries > MAX_ENTRIES {
        return Err(PvhError::TooManyEntries(entries));
    }
    let mut memmap = MemoryMap::default();
    for i in 0..u64::from(entries) {
        let mut e = [0u8; ENTRY_BYTES];
        let at = memmap_paddr.checked_add(i * ENTRY_BYTES as u64).ok_or(PvhError::Unreadable(OutOfRange {
            addr: memmap_paddr,
            len: u64::from(entries) * ENTRY_BYTES as u64,
        }))?;
        read_firmware_bytes(at, &mut e).map_err(PvhError::Unreadable)?;
        memmap.push(MemoryRange {
            base: u64_at(&e, 0),
            size: u64_at(&e, 8),
            kind: RangeKind::from_raw(u32_at(&e, 16)),
        });
    }
    Ok(BootInfo { version, rsdp, memmap })
}
