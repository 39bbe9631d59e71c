//! PCIe configuration space through ECAM: enumeration of the buses reached from bus 0 (through
//! bridges), BAR sizing and assignment, and the extended-capability walk.

#![allow(unsafe_code)]

use core::fmt;

use super::acpi::Ecam;
use super::phys::Mmio;
use crate::memmap::{MemoryMap, RangeKind};
use crate::phys::{own_memory, MAPPED_BYTES};

/// Configuration mechanism #1: the address register and the data window.
const LEGACY_CONFIG_ADDRESS: u16 = 0xCF8;
const LEGACY_CONFIG_DATA: u16 = 0xCFC;

/// Free MMIO space for BARs the BIOS left unassigned: q35's 32-bit PCI hole above the ECAM and
/// below the IOAPIC.
const BAR_WINDOW: (u64, u64) = (0xC000_0000, 0xFEC0_0000);

/// The host bridge's 32-bit MMIO aperture, where BARs live: q35's PCI hole, from past the ECAM
/// window MCFG names and past low RAM (`mmio_start`), up to the IOAPIC. The TSM takes private
/// MMIO only from here (and never where the memory map says RAM); the host places BARs in it.
pub fn host_bridge_window(ecam: &Ecam, mmio_start: u64) -> (u64, u64) {
    let ecam_end = ecam.base.saturating_add((u64::from(ecam.end_bus) + 1) << 20);
    (BAR_WINDOW.0.max(ecam_end).max(mmio_start), BAR_WINDOW.1)
}

/// Extended capability ID of DOE (PCIe r6 §7.9.24).
pub const EXT_CAP_DOE: u16 = 0x002E;

const VENDOR_ID: u64 = 0x00;
const COMMAND: u64 = 0x04;
const CLASS_REV: u64 = 0x08;
const HEADER_TYPE: u64 = 0x0C; // byte 2 of the DW
const BAR0: u64 = 0x10;
const BUS_NUMBERS: u64 = 0x18; // type 1: primary, secondary, subordinate
const COMMAND_MEMORY: u32 = 0x2;
const COMMAND_BUS_MASTER: u32 = 0x4;
const EXT_CAP_START: u64 = 0x100;
const CONFIG_BYTES: u64 = 4096;
/// Extended capabilities followed at most (there is room for about 1000 of 4 bytes).
const MAX_EXT_CAPS: usize = 128;

/// A function address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bdf {
    /// Bus.
    pub bus: u8,
    /// Device (0..32).
    pub device: u8,
    /// Function (0..8).
    pub function: u8,
}

impl Bdf {
    /// The requester ID: bus 15:8, device 7:3, function 2:0.
    pub const fn rid(self) -> u16 {
        (self.bus as u16) << 8 | (self.device as u16) << 3 | self.function as u16
    }
}

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}:{:02x}.{}", self.bus, self.device, self.function)
    }
}

/// The ECAM of one segment.
#[derive(Debug)]
pub struct Pcie {
    ecam: Mmio,
    info: Ecam,
}

/// The configuration space of one function.
#[derive(Debug)]
pub struct Function {
    /// Its address.
    pub bdf: Bdf,
    cfg: Mmio,
}

/// An ECAM window the firmware refuses to drive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadEcam {
    /// Its base.
    pub base: u64,
}

impl Pcie {
    /// The ECAM window `info` describes (from MCFG, or q35's fixed default).
    ///
    /// # Errors
    /// [`BadEcam`] if the window passes 4 GiB, overlaps RAM of the memory map or the firmware
    /// image, or its bus range is empty.
    pub fn open(info: Ecam, map: &MemoryMap) -> Result<Pcie, BadEcam> {
        let bad = BadEcam { base: info.base };
        if info.end_bus < info.start_bus {
            return Err(bad);
        }
        let len = (u64::from(info.end_bus) + 1) << 20;
        let end = info.base.checked_add(len).ok_or(bad)?;
        let (img_start, img_end) = own_memory();
        let hits_ram = map.ranges().iter().any(|r| r.kind == RangeKind::Ram && r.base < end && info.base < r.end());
        if end > MAPPED_BYTES || hits_ram || (info.base < img_end && img_start < end) {
            return Err(bad);
        }
        // SAFETY: the window is below 4 GiB and clear of RAM and of the image (checked above),
        // so no Rust object lives there; the platform (MCFG or the q35 default) says it is ECAM,
        // whose accesses reach configuration registers only. The firmware is its only driver.
        let ecam = unsafe { Mmio::new(info.base, len) };
        Ok(Pcie { ecam, info })
    }

    /// The function at `bdf`, if its bus is decoded and something answers there.
    pub fn function(&self, bdf: Bdf) -> Option<Function> {
        if bdf.bus < self.info.start_bus || bdf.bus > self.info.end_bus || bdf.device >= 32 || bdf.function >= 8 {
            return None;
        }
        let offset = (u64::from(bdf.bus) << 20) | (u64::from(bdf.device) << 15) | (u64::from(bdf.function) << 12);
        let cfg = self.ecam.window(offset, CONFIG_BYTES)?;
        let f = Function { bdf, cfg };
        (f.read(VENDOR_ID) & 0xFFFF != 0xFFFF).then_some(f)
    }

    /// Reads `size` bytes of configuration register `reg` of the function with requester ID
    /// `rid`, whether or not something answers there; `None` for a bus not decoded or an
    /// access that is misaligned or outside the 4 KiB of a function.
    pub fn config_read(&self, rid: u16, reg: u16, size: u8) -> Option<u32> {
        let at = self.config_offset(rid, reg)?;
        self.ecam.read_sized(at, size)
    }

    /// Writes `size` bytes of configuration register `reg` of function `rid`; false as
    /// [`Pcie::config_read`] is `None`.
    pub fn config_write(&self, rid: u16, reg: u16, size: u8, value: u32) -> bool {
        self.config_offset(rid, reg).is_some_and(|at| self.ecam.write_sized(at, size, value))
    }

    /// Writes `size` bytes of configuration register `reg` (below 0x100) of function `rid`
    /// through configuration mechanism #1 (ports 0xCF8/0xCFC) instead of ECAM: in the host world
    /// the chipset functions' ECAM pages are read-only, and through the ports the TSM sees which
    /// register is written (it refuses only those that move memory). False for an access that is
    /// misaligned, not 1, 2 or 4 bytes, or past the 256 bytes the mechanism reaches.
    pub fn config_write_legacy(rid: u16, reg: u16, size: u8, value: u32) -> bool {
        let ok = matches!(size, 1 | 2 | 4) && reg.is_multiple_of(u16::from(size)) && reg + u16::from(size) <= 0x100;
        if !ok {
            return false;
        }
        let address = 1u32 << 31 | u32::from(rid) << 8 | u32::from(reg & 0xFC);
        let data = LEGACY_CONFIG_DATA + (reg & 3);
        // SAFETY: configuration mechanism #1: the address register selects a configuration
        // register and the data window reaches it; neither touches memory. (One CPU: nothing
        // else uses the pair between the two accesses.)
        unsafe {
            crate::port::Port::new(LEGACY_CONFIG_ADDRESS).write_u32(address);
            let port = crate::port::Port::new(data);
            match size {
                1 => port.write_u8(value as u8),
                2 => port.write_u16(value as u16),
                _ => port.write_u32(value),
            }
        }
        true
    }

    fn config_offset(&self, rid: u16, reg: u16) -> Option<u64> {
        let bus = (rid >> 8) as u8;
        let ok = bus >= self.info.start_bus && bus <= self.info.end_bus && u64::from(reg) < CONFIG_BYTES;
        ok.then(|| (u64::from(rid) << 12) | u64::from(reg))
    }

    /// Calls `visit` for every function on `bus` and the buses behind its bridges.
    pub fn for_each(&self, bus: u8, visit: &mut dyn FnMut(&Function)) {
        self.scan(bus, visit, 0);
    }

    fn scan(&self, bus: u8, visit: &mut dyn FnMut(&Function), depth: u8) {
        // Bridges nest at most as deep as there are buses; stop a malformed loop well before.
        if depth > 16 {
            return;
        }
        for device in 0..32 {
            let Some(f0) = self.function(Bdf { bus, device, function: 0 }) else { continue };
            let functions = if f0.header_type() & 0x80 != 0 { 8 } else { 1 };
            for function in 0..functions {
                let Some(f) = self.function(Bdf { bus, device, function }) else { continue };
                visit(&f);
                if f.header_type() & 0x7F == 1 {
                    let secondary = (f.read(BUS_NUMBERS) >> 8) as u8;
                    if secondary > bus {
                        self.scan(secondary, visit, depth + 1);
                    }
                }
            }
        }
    }
}

/// One memory BAR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bar {
    /// BAR index (0..6); a 64-bit BAR also uses `index + 1`.
    pub index: u8,
    /// Address.
    pub base: u64,
    /// Size in bytes (a power of two).
    pub size: u64,
    /// 64-bit BAR.
    pub wide: bool,
    /// Prefetchable.
    pub prefetchable: bool,
}

impl Function {
    /// Reads the configuration DW at `offset`.
    pub fn read(&self, offset: u64) -> u32 {
        self.cfg.read_u32(offset)
    }

    /// Writes the configuration DW at `offset`.
    pub fn write(&self, offset: u64, value: u32) {
        self.cfg.write_u32(offset, value);
    }

    /// Vendor and device ID.
    pub fn ids(&self) -> (u16, u16) {
        let v = self.read(VENDOR_ID);
        (v as u16, (v >> 16) as u16)
    }

    /// Class, subclass, programming interface.
    pub fn class(&self) -> (u8, u8, u8) {
        let v = self.read(CLASS_REV);
        ((v >> 24) as u8, (v >> 16) as u8, (v >> 8) as u8)
    }

    fn header_type(&self) -> u8 {
        (self.read(HEADER_TYPE) >> 16) as u8
    }

    /// Sizes the memory BARs of a type-0 function and assigns the unassigned ones from
    /// `window` (a bump allocator over free MMIO space: `[next, end)`), then enables memory
    /// decoding. I/O BARs are skipped. Returns the BARs found.
    ///
    /// # Errors
    /// [`BarError`] if a BAR does not fit the window or a 64-bit BAR is in slot 5.
    pub fn setup_bars(&self, window: &mut (u64, u64), out: &mut [Option<Bar>; 6]) -> Result<(), BarError> {
        if self.header_type() & 0x7F != 0 {
            return Ok(());
        }
        let command = self.read(COMMAND);
        // Decoding off while the BARs read back all ones.
        self.write(COMMAND, command & !0x3);
        let result = self.size_bars(window, out);
        // Decoding back as it was, plus memory space.
        self.write(COMMAND, command | COMMAND_MEMORY);
        result
    }

    /// Sets the command register's Bus Master Enable: the function may issue DMA. Part of the
    /// configuration the host sets before TDISP LOCK freezes it; every request it then makes
    /// goes through the remapping unit.
    pub fn enable_bus_master(&self) {
        let command = self.read(COMMAND);
        self.write(COMMAND, command | COMMAND_BUS_MASTER);
    }

    fn size_bars(&self, window: &mut (u64, u64), out: &mut [Option<Bar>; 6]) -> Result<(), BarError> {
        let mut i = 0u8;
        while i < 6 {
            let off = BAR0 + u64::from(i) * 4;
            let low = self.read(off);
            if low & 1 != 0 {
                i += 1; // I/O BAR
                continue;
            }
            let wide = (low >> 1) & 3 == 2;
            if wide && i == 5 {
                return Err(BarError::WideInLastSlot);
            }
            let high = if wide { self.read(off + 4) } else { 0 };
            self.write(off, 0xFFFF_FFFF);
            let mask_low = self.read(off) & !0xF;
            let mask_high = if wide {
                self.write(off + 4, 0xFFFF_FFFF);
                self.read(off + 4)
            } else {
                0xFFFF_FFFF
            };
            let mask = (u64::from(mask_high) << 32) | u64::from(mask_low);
            let step = if wide { 2 } else { 1 };
            if mask_low == 0 && (!wide || mask_high == 0) {
                // Unimplemented BAR.
                self.write(off, low);
                if wide {
                    self.write(off + 4, high);
                }
                i += step;
                continue;
            }
            let size = (!mask).wrapping_add(1) & if wide { u64::MAX } else { 0xFFFF_FFFF };
            let mut base = (u64::from(high) << 32) | u64::from(low & !0xF);
            if base == 0 {
                let start = window.0.next_multiple_of(size.max(4096));
                let end = start.checked_add(size).ok_or(BarError::NoRoom { index: i, size })?;
                if end > window.1 {
                    return Err(BarError::NoRoom { index: i, size });
                }
                window.0 = end;
                base = start;
            }
            self.write(off, (base as u32) | (low & 0xF));
            if wide {
                self.write(off + 4, (base >> 32) as u32);
            }
            out[usize::from(i)] = Some(Bar { index: i, base, size, wide, prefetchable: low & 8 != 0 });
            i += step;
        }
        Ok(())
    }

    /// The offset of the first extended capability with `id`, walking from 0x100.
    pub fn find_ext_cap(&self, id: u16) -> Option<u64> {
        let mut at = EXT_CAP_START;
        for _ in 0..MAX_EXT_CAPS {
            let header = self.read(at);
            if header == 0 || header == 0xFFFF_FFFF {
                return None;
            }
            if header as u16 == id {
                return Some(at);
            }
            let next = u64::from(header >> 20) & !3;
            if next < EXT_CAP_START {
                return None;
            }
            at = next;
        }
        None
    }

    /// Moves the memory BAR `bar` to `base` (aligned to its size, inside `window`, below 4 GiB),
    /// with memory decoding off while the address changes. The run configuration fixes BAR0's
    /// address so that the device's interface report can name it before QEMU starts.
    ///
    /// # Errors
    /// [`BarError::BadPlacement`] if `base` is misaligned or the BAR would leave `window`.
    pub fn move_bar(&self, bar: &mut Bar, base: u64, window: (u64, u64)) -> Result<(), BarError> {
        let end = base.checked_add(bar.size).ok_or(BarError::BadPlacement { index: bar.index, base })?;
        if !base.is_multiple_of(bar.size.max(4096)) || base < window.0 || end > window.1 || end > 1 << 32 {
            return Err(BarError::BadPlacement { index: bar.index, base });
        }
        let off = BAR0 + u64::from(bar.index) * 4;
        let command = self.read(COMMAND);
        self.write(COMMAND, command & !0x3);
        let low = self.read(off) & 0xF;
        self.write(off, (base as u32) | low);
        if bar.wide {
            self.write(off + 4, (base >> 32) as u32);
        }
        self.write(COMMAND, command | COMMAND_MEMORY);
        bar.base = base;
        Ok(())
    }

    /// The registers of a memory BAR below 4 GiB that [`Function::setup_bars`] or
    /// [`Function::move_bar`] placed in `window` (the MMIO hole, mapped uncached), or `None`.
    pub fn bar_registers(&self, bar: &Bar, window: (u64, u64)) -> Option<Mmio> {
        let end = bar.base.checked_add(bar.size)?;
        if bar.base < window.0 || end > window.1 || end > 1 << 32 {
            return None;
        }
        // SAFETY: the range is this function's own BAR, in the MMIO hole above RAM (so no Rust
        // object lives there); the firmware only reads its registers (NVMe CAP and VS), which
        // starts no DMA and changes no memory.
        Some(unsafe { Mmio::new(bar.base, bar.size) })
    }

    /// The configuration registers `[offset, offset + len)`, for a capability's driver.
    pub fn registers(&self, offset: u64, len: u64) -> Option<Mmio> {
        self.cfg.window(offset, len)
    }
}

/// Why BARs could not be set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarError {
    /// A BAR larger than the free MMIO window.
    NoRoom {
        /// BAR index.
        index: u8,
        /// Its size.
        size: u64,
    },
    /// A 64-bit BAR claims slot 5, which has no upper half.
    WideInLastSlot,
    /// A requested address that is misaligned or outside the window.
    BadPlacement {
        /// BAR index.
        index: u8,
        /// The address asked for.
        base: u64,
    },
}

impl fmt::Display for BarError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BarError::NoRoom { index, size } => write!(f, "BAR{index} of {size:#x} bytes does not fit the MMIO window"),
            BarError::WideInLastSlot => write!(f, "64-bit BAR in slot 5"),
            BarError::BadPlacement { index, base } => {
                write!(f, "BAR{index} cannot go at {base:#x}: misaligned or outside the MMIO window")
            }
        }
    }
}
