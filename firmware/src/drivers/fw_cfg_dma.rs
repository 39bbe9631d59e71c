//! fw_cfg's DMA interface (QEMU `docs/specs/fw_cfg.rst`), for the TSM alone: the host world's
//! IOPM keeps these ports from the host (a DMA request writes memory by physical address, past
//! the IOMMU and the nested map), and the TSM uses them to read the host agent's segments into
//! host RAM in one transfer each instead of a port read per byte.
//!
//! A request is a `FWCfgDmaAccess` in memory (big-endian control, length, address); writing its
//! physical address to 0x514 (high half) and 0x518 (low half, which starts it) runs it, and
//! QEMU completes it before the write returns, leaving control 0 (or the error bit).

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, Ordering};

use super::fw_cfg::FwCfg;
use super::phys::Frames;
use crate::arch::port::Port;

const ADDRESS_HIGH: u16 = 0x514;
const ADDRESS_LOW: u16 = 0x518;
/// FW_CFG_ID's DMA bit.
const FEATURE_DMA: u32 = 1 << 1;
const CONTROL_ERROR: u32 = 0x01;
const CONTROL_READ: u32 = 0x02;
const CONTROL_SKIP: u32 = 0x04;
const CONTROL_SELECT: u32 = 0x08;

/// `FWCfgDmaAccess`: control, length, address, each big-endian.
#[repr(C, align(16))]
struct Access([u8; 16]);

struct AccessCell(UnsafeCell<Access>);
// SAFETY: one CPU; only the one `FwCfgDma` (`TAKEN`) writes it, and the device reads and writes
// it only during the OUT that starts a request.
unsafe impl Sync for AccessCell {}
static ACCESS: AccessCell = AccessCell(UnsafeCell::new(Access([0; 16])));
static TAKEN: AtomicBool = AtomicBool::new(false);

/// A request the device refused (its control word's error bit), or an unusable interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaError;

/// fw_cfg's DMA interface.
#[derive(Debug)]
pub struct FwCfgDma {
    high: Port,
    low: Port,
}

impl FwCfgDma {
    /// The DMA interface of `fw`, if FW_CFG_ID says it has one; once (the request structure is
    /// a static of this driver).
    pub fn new(fw: &FwCfg) -> Option<FwCfgDma> {
        if fw.features() & FEATURE_DMA == 0 || TAKEN.swap(true, Ordering::SeqCst) {
            return None;
        }
        // SAFETY: 0x514/0x518 are fw_cfg's DMA address registers; the requests this driver
        // starts write only where `read_into` checked (usable RAM outside the TSM's image).
        let (high, low) = unsafe { (Port::new(ADDRESS_HIGH), Port::new(ADDRESS_LOW)) };
        Some(FwCfgDma { high, low })
    }

    /// Runs one request: `control`, `length`, `address`.
    fn run(&mut self, control: u32, length: u32, address: u64) -> Result<(), DmaError> {
        let cell = ACCESS.0.get();
        let mut bytes = [0u8; 16];
        bytes[..4].copy_from_slice(&control.to_be_bytes());
        bytes[4..8].copy_from_slice(&length.to_be_bytes());
        bytes[8..].copy_from_slice(&address.to_be_bytes());
        // SAFETY: the static is this driver's alone (see `AccessCell`); a volatile write so the
        // device reads what was written.
        unsafe { core::ptr::write_volatile(cell, Access(bytes)) };
        let at = cell as u64;
        // The registers are big-endian: the port's bytes are the address's, most significant
        // first.
        self.high.write_u32(((at >> 32) as u32).swap_bytes());
        self.low.write_u32((at as u32).swap_bytes());
        // SAFETY: as above; the device wrote the control word back during the OUT.
        let done = unsafe { core::ptr::read_volatile(cell) };
        let control = u32::from_be_bytes([done.0[0], done.0[1], done.0[2], done.0[3]]);
        if control & CONTROL_ERROR != 0 || control != 0 {
            return Err(DmaError);
        }
        Ok(())
    }

    /// Selects item `key` and moves its position to `offset`.
    ///
    /// # Errors
    /// [`DmaError`].
    pub fn select_at(&mut self, key: u16, offset: u32) -> Result<(), DmaError> {
        self.run(u32::from(key) << 16 | CONTROL_SELECT | CONTROL_SKIP, offset, 0)
    }

    /// Reads the next `len` bytes of the selected item into physical memory at `dst`, which
    /// must lie in one of `frames`' usable ranges (RAM outside the TSM's image: no Rust object
    /// is there).
    ///
    /// # Errors
    /// [`DmaError`] if the range is not usable RAM or the device refused.
    pub fn read_into(&mut self, frames: &Frames, dst: u64, len: u32) -> Result<(), DmaError> {
        if !frames.contains(dst, u64::from(len)) {
            return Err(DmaError);
        }
        self.run(CONTROL_READ, len, dst)
    }
}
