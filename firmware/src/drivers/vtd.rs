//! The DMA remapping unit (Intel VT-d; QEMU's `intel-iommu`), found through ACPI DMAR, as the
//! register mover behind `tsm::platform::DmaRemapping`. The TSM decides what to program and when
//! an invalidation is complete; this driver only moves values: RTADDR and the global command,
//! the invalidation queue (one 4 KiB page of 256-bit descriptors in the image) and the status
//! word wait descriptors write, and the fault recording registers.
//!
//! The queue page and the status word are statics of the image: memory the host agent never
//! gets (the TSM's own), and the only memory besides the tables the unit reads or writes on the
//! TSM's behalf. Register offsets and bits: VT-d rev 3.x/4.x chapter 11.
//!
//! **DMA is never untranslated.** A unit with translation off lets every DMA through to the
//! physical address the device names: TSM memory included, for any device the host world can
//! drive. So [`Vtd::open`] turns translation on at once over a root table of the image that
//! maps nothing (every request faults, nothing lands), before the host world exists;
//! IOMMU.SETUP swaps in the TSM's tables, and "translation off" (IOMMU.CLEAR, a failed setup)
//! swaps the blocking table back rather than clearing GCMD.TE.

use core::cell::UnsafeCell;
use core::sync::atomic::{compiler_fence, Ordering};

use tsm::iommu::hw::{Capabilities, InvDescriptor};
use tsm::platform::UnitError;

use super::acpi::Drhd;
use super::phys::Mmio;
use super::tsc::Tsc;

const CAP: u64 = 0x08;
const ECAP: u64 = 0x10;
const GCMD: u64 = 0x18;
const GSTS: u64 = 0x1C;
const RTADDR: u64 = 0x20;
const FSTS: u64 = 0x34;
const IQH: u64 = 0x80;
const IQT: u64 = 0x88;
const IQA: u64 = 0x90;
/// Bytes of the register set QEMU decodes (fault records included).
const REGISTER_BYTES: u64 = 0x1000;

const TE: u32 = 1 << 31;
const SRTP: u32 = 1 << 30;
const QIE: u32 = 1 << 26;
/// GSTS bits that reflect persistent GCMD settings: written back with every command so that a
/// command changes only its own bit (VT-d §11.4.4).
const PERSISTENT: u32 = TE | QIE | (1 << 25) | (1 << 23);
/// FSTS: primary fault overflow, invalidation queue / completion / time-out errors.
const FSTS_PFO: u32 = 1 << 0;
const FSTS_QUEUE_ERRORS: u32 = (1 << 4) | (1 << 5) | (1 << 6);
/// IQA_REG.DW: 256-bit descriptors.
const IQA_DW: u64 = 1 << 11;
const DESCRIPTOR_BYTES: u64 = 32;
const QUEUE_BYTES: u64 = 4096;
/// How long a command may take before the driver calls it a time-out.
const TIMEOUT_US: u64 = 100_000;

#[repr(C, align(4096))]
struct QueuePage([u64; 512]);

/// The invalidation queue and the wait status words, in the image: the TSM's, and the
/// platform's own for the host map's page invalidations.
struct QueueMemory {
    page: UnsafeCell<QueuePage>,
    status: UnsafeCell<u32>,
    host_map_status: UnsafeCell<u32>,
}

// SAFETY: one CPU; only `Vtd` touches them, through volatile accesses, and only one `Vtd` exists
// (`Vtd::find` hands it out once, guarded by `TAKEN`).
unsafe impl Sync for QueueMemory {}

static QUEUE: QueueMemory = QueueMemory {
    page: UnsafeCell::new(QueuePage([0; 512])),
    status: UnsafeCell::new(0),
    host_map_status: UnsafeCell::new(0),
};
static TAKEN: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// A root table with no entry present: the unit translates nothing through it, so every DMA
/// request faults. In the image (the TSM's memory); nothing ever writes it.
#[repr(C, align(4096))]
struct BlockingRoot([u64; 512]);
static BLOCKING_ROOT: BlockingRoot = BlockingRoot([0; 512]);

/// The unit's register set and the driver's queue position.
#[derive(Debug)]
pub struct Vtd {
    regs: Mmio,
    caps: Capabilities,
    tsc: Tsc,
    /// The next free queue slot, in bytes (what IQT_REG holds after a submission).
    tail: u64,
    /// The status value of the platform's latest host-map wait descriptor.
    host_map_sequence: u32,
    /// The unit translates through [`BLOCKING_ROOT`]: no DMA lands (before IOMMU.SETUP, after
    /// IOMMU.CLEAR).
    blocking: bool,
}

/// Why no unit was opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VtdError {
    /// The DRHD's register page is not in the MMIO hole below 4 GiB.
    RegistersOutside(u64),
    /// A second `Vtd` was asked for.
    AlreadyOpen,
    /// The unit did not take the blocking root table or translation.
    Block(UnitError),
}

impl core::fmt::Display for VtdError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            VtdError::RegistersOutside(a) => write!(f, "DRHD registers at {a:#x} outside the MMIO hole"),
            VtdError::AlreadyOpen => write!(f, "the remapping unit is already open"),
            VtdError::Block(e) => write!(f, "the unit did not take the root table that blocks all DMA: {e:?}"),
        }
    }
}

impl Vtd {
    /// Opens the unit `drhd` describes and blocks all DMA (translation on over a root table that
    /// maps nothing). `mmio_start` is where the MMIO hole below 4 GiB starts.
    ///
    /// # Errors
    /// [`VtdError`].
    pub fn open(drhd: Drhd, mmio_start: u64, tsc: Tsc) -> Result<Vtd, VtdError> {
        let base = drhd.registers;
        if base < mmio_start
            || base.checked_add(REGISTER_BYTES).is_none_or(|e| e > 4 << 30)
            || !base.is_multiple_of(4096)
        {
            return Err(VtdError::RegistersOutside(base));
        }
        if TAKEN.swap(true, Ordering::Relaxed) {
            return Err(VtdError::AlreadyOpen);
        }
        // SAFETY: the DRHD's register page, in the uncached MMIO hole (checked above), is the
        // remapping unit's; only this driver drives it (one `Vtd`, `TAKEN`). The DMA it sets up
        // reads the TSM's tables and this driver's queue page and writes its status word, none
        // of which is a Rust object borrowed elsewhere.
        let regs = unsafe { Mmio::new(base, REGISTER_BYTES) };
        let read64 = |off: u64| u64::from(regs.read_u32(off)) | u64::from(regs.read_u32(off + 4)) << 32;
        let caps = Capabilities { cap: read64(CAP), ecap: read64(ECAP) };
        let mut v = Vtd { regs, caps, tsc, tail: 0, host_map_sequence: 0, blocking: false };
        v.block_all().map_err(VtdError::Block)?;
        Ok(v)
    }

    /// Points the unit at [`BLOCKING_ROOT`] and turns translation on: from its return no DMA
    /// request lands anywhere. The caches are the TSM's to invalidate (IOMMU.CLEAR does, after
    /// "translation off"); at boot nothing is cached yet.
    fn block_all(&mut self) -> Result<(), UnitError> {
        self.set_root_table(&raw const BLOCKING_ROOT as u64)?;
        self.command(TE, 0);
        self.wait_for(|v| v.regs.read_u32(GSTS) & TE != 0)?;
        self.blocking = true;
        Ok(())
    }

    /// CAP and ECAP.
    pub fn capabilities(&self) -> Capabilities {
        self.caps
    }

    fn read64(&self, off: u64) -> u64 {
        u64::from(self.regs.read_u32(off)) | u64::from(self.regs.read_u32(off + 4)) << 32
    }

    /// High half first: QEMU acts on the write of the low half (IQT, RTADDR).
    fn write64(&self, off: u64, value: u64) {
        self.regs.write_u32(off + 4, (value >> 32) as u32);
        self.regs.write_u32(off, value as u32);
    }

    fn wait_for(&self, done: impl Fn(&Vtd) -> bool) -> Result<(), UnitError> {
        let start = self.tsc.now();
        while !done(self) {
            if self.tsc.ticks_to_us(self.tsc.now().wrapping_sub(start)) > TIMEOUT_US {
                return Err(UnitError::Timeout);
            }
            core::hint::spin_loop();
        }
        Ok(())
    }

    /// Issues a global command: the persistent bits as they are, plus `set`, minus `clear`.
    fn command(&self, set: u32, clear: u32) {
        let status = self.regs.read_u32(GSTS) & PERSISTENT;
        self.regs.write_u32(GCMD, (status | set) & !clear);
    }

    /// See `DmaRemapping::set_root_table`. The TSM's table replaces the blocking one.
    pub fn set_root_table(&mut self, rtaddr: u64) -> Result<(), UnitError> {
        self.write64(RTADDR, rtaddr);
        self.command(SRTP, 0);
        self.wait_for(|v| v.regs.read_u32(GSTS) & SRTP != 0)?;
        self.blocking = rtaddr == &raw const BLOCKING_ROOT as u64;
        Ok(())
    }

    /// See `DmaRemapping::enable_queue`.
    pub fn enable_queue(&mut self) -> Result<(), UnitError> {
        if self.regs.read_u32(GSTS) & QIE != 0 {
            return Ok(());
        }
        let page = QUEUE.page.get() as u64;
        self.write64(IQT, 0);
        // QS = 0: one page, 128 descriptors of 256 bits.
        self.write64(IQA, page | IQA_DW);
        self.tail = 0;
        self.command(QIE, 0);
        self.wait_for(|v| v.regs.read_u32(GSTS) & QIE != 0)
    }

    /// See `DmaRemapping::wait_status_address`.
    pub fn wait_status_address(&self) -> u64 {
        QUEUE.status.get() as u64
    }

    /// See `DmaRemapping::wait_status`.
    pub fn wait_status(&self) -> u32 {
        // SAFETY: the status word is a static only this driver reads and the unit writes; a
        // volatile read sees the unit's write.
        unsafe { core::ptr::read_volatile(QUEUE.status.get()) }
    }

    /// See `DmaRemapping::submit`.
    pub fn submit(&mut self, descriptors: &[InvDescriptor]) -> Result<(), UnitError> {
        if descriptors.len() as u64 * DESCRIPTOR_BYTES >= QUEUE_BYTES {
            return Err(UnitError::QueueFull);
        }
        let mut tail = self.tail;
        for d in descriptors {
            let word = (tail / 8) as usize;
            for (i, w) in d.0.iter().enumerate() {
                // SAFETY: `word + i` < 512 (tail < QUEUE_BYTES, 32-byte aligned); the page is
                // the driver's static, written volatile so the unit reads what is written.
                unsafe { core::ptr::write_volatile(&raw mut (*QUEUE.page.get()).0[word + i], *w) };
            }
            tail = (tail + DESCRIPTOR_BYTES) % QUEUE_BYTES;
        }
        compiler_fence(Ordering::SeqCst);
        self.write64(IQT, tail);
        self.tail = tail;
        let drained = self.wait_for(|v| v.read64(IQH) == tail || v.regs.read_u32(FSTS) & FSTS_QUEUE_ERRORS != 0);
        let errors = self.regs.read_u32(FSTS) & FSTS_QUEUE_ERRORS;
        if errors != 0 {
            // Drop what is left, then clear the error (W1C) so the queue runs again.
            let head = self.read64(IQH);
            self.write64(IQT, head);
            self.tail = head;
            self.regs.write_u32(FSTS, errors);
            defmt::warn!("vt-d: invalidation queue error, FSTS {=u32:#x}", errors);
            return Err(UnitError::QueueError);
        }
        drained
    }

    /// Invalidates the host domain's cached translation of the 4 KiB page at `addr` and waits
    /// for the wait descriptor's status write: what `DmaRemapping::host_map` asks of the
    /// platform when a frame leaves the host. Nothing to do while the unit blocks all DMA
    /// (before IOMMU.SETUP and after IOMMU.CLEAR there is no host domain to cache).
    ///
    /// # Errors
    /// [`UnitError`] if the queue refused it or the status write never came.
    pub fn invalidate_host_page(&mut self, addr: u64) -> Result<(), UnitError> {
        if self.blocking || self.regs.read_u32(GSTS) & (TE | QIE) != TE | QIE {
            return Ok(());
        }
        self.host_map_sequence = self.host_map_sequence.wrapping_add(1).max(1);
        let seq = self.host_map_sequence;
        let status = QUEUE.host_map_status.get();
        let batch = [InvDescriptor::iotlb_page(tsm::iommu::HOST_DID, addr), InvDescriptor::wait(status as u64, seq)];
        self.submit(&batch)?;
        // SAFETY: the platform's status word is a static only this driver reads and the unit
        // writes; a volatile read sees the unit's write.
        self.wait_for(|_| unsafe { core::ptr::read_volatile(status) } == seq)
    }

    /// See `DmaRemapping::set_translation`. Off is the blocking root table with translation
    /// still on: the unit stops translating through the TSM's tables, and no DMA goes through
    /// untranslated.
    pub fn set_translation(&mut self, enabled: bool) -> Result<(), UnitError> {
        if enabled {
            self.command(TE, 0);
            self.wait_for(|v| v.regs.read_u32(GSTS) & TE != 0)
        } else {
            self.block_all()
        }
    }

    /// See `DmaRemapping::take_fault`.
    pub fn take_fault(&mut self) -> Option<(u64, u64)> {
        let first = self.caps.fault_record_offset();
        for i in 0..u64::from(self.caps.fault_records()) {
            let at = first + i * 16;
            if at + 16 > REGISTER_BYTES {
                break;
            }
            if self.regs.read_u32(at + 12) & (1 << 31) == 0 {
                continue;
            }
            let (lo, hi) = (self.read64(at), self.read64(at + 8));
            // F is write-1-to-clear.
            self.regs.write_u32(at + 12, 1 << 31);
            return Some((lo, hi));
        }
        // None left: clear a primary fault overflow so the unit records again.
        let fsts = self.regs.read_u32(FSTS);
        if fsts & FSTS_PFO != 0 {
            self.regs.write_u32(FSTS, FSTS_PFO);
        }
        None
    }
}
