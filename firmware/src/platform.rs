//! The TSM's platform traits over the machine: physical memory through the direct map (only the
//! RAM frames the firmware does not use itself), RDRAND, the TSC, the VT-d unit's registers, and
//! a defmt record per ABI call.

use tsm::addr::{FrameRange, GuestPhysAddr, Pfn};
use tsm::iommu::hw::{Capabilities, InvDescriptor};
use tsm::platform::{
    CallRecord, Clock, DmaRemapping, Entropy, EntropyError, PhysMem, Platform, UnitError, WORDS_PER_PAGE,
};

use crate::drivers::phys::Frames;
use crate::drivers::rng::Rdrand;
use crate::drivers::tsc::Tsc;
use crate::drivers::vtd::Vtd;
use crate::memmap::{MemoryMap, RangeKind};

const PAGE: usize = 4096;

/// What the TSM runs on.
#[derive(Debug)]
pub struct FirmwarePlatform {
    frames: Frames,
    rng: Rdrand,
    tsc: Tsc,
    /// The remapping unit, if ACPI DMAR names one.
    vtd: Option<Vtd>,
    /// The loader's memory map: what the platform backs with memory.
    memmap: MemoryMap,
    /// The host bridge's MMIO aperture (none until [`FirmwarePlatform::set_mmio_window`]).
    mmio_window: Option<FrameRange>,
    /// Whether to log every ABI call (defmt, COM2).
    pub log_calls: bool,
    /// Entropy requests that failed.
    pub entropy_failures: u64,
    /// The host world's nested map, once the host world exists: it follows the PAMT
    /// ([`PhysMem::ownership_changed`]).
    pub host_npt: Option<crate::world::npt::Npt>,
    /// A frame the host map could not follow (the nested-table pool ran out): the firmware
    /// stops the host world rather than run it on a stale map.
    pub host_map_broken: bool,
    /// The TD worlds (derived nested tables and vCPU contexts), once SVM is on.
    pub td: Option<crate::world::td::TdWorlds>,
}

impl FirmwarePlatform {
    /// The platform over `frames` of the memory map `memmap`, with RDRAND, the calibrated TSC
    /// and the remapping unit.
    pub fn new(frames: Frames, memmap: MemoryMap, rng: Rdrand, tsc: Tsc, vtd: Option<Vtd>) -> FirmwarePlatform {
        FirmwarePlatform {
            frames,
            rng,
            tsc,
            vtd,
            memmap,
            mmio_window: None,
            log_calls: true,
            entropy_failures: 0,
            host_npt: None,
            host_map_broken: false,
            td: None,
        }
    }

    /// The physical memory the platform reaches.
    pub fn frames(&self) -> Frames {
        self.frames
    }

    fn unit(&mut self) -> Result<&mut Vtd, UnitError> {
        self.vtd.as_mut().ok_or(UnitError::Absent)
    }

    /// Names the host bridge's MMIO aperture `[start, end)` (4K aligned), which the TSM reads at
    /// TDH.SYS.CONFIG: the only place it takes private MMIO from.
    pub fn set_mmio_window(&mut self, (start, end): (u64, u64)) {
        self.mmio_window =
            Pfn::new(start >> 12).map(|s| FrameRange { start: s, count: end.saturating_sub(start) >> 12 });
    }

    fn base(pfn: Pfn) -> u64 {
        pfn.addr().raw()
    }

    // The trait's contract keeps the TSM inside a frame and inside `contains`; the `Frames`
    // accessors check it again (and stop the firmware on a TSM bug) because memory safety rests on it.
    fn word(pfn: Pfn, index: usize) -> u64 {
        assert!(index < WORDS_PER_PAGE, "word {index} past the frame");
        Self::base(pfn) + index as u64 * 8
    }

    fn span(pfn: Pfn, offset: usize, len: usize) -> u64 {
        assert!(offset.checked_add(len).is_some_and(|e| e <= PAGE), "bytes {offset:#x}+{len:#x} cross the frame");
        Self::base(pfn) + offset as u64
    }
}

impl PhysMem for FirmwarePlatform {
    fn contains(&self, pfn: Pfn) -> bool {
        self.frames.contains(Self::base(pfn), PAGE as u64)
    }

    fn read_u64(&self, pfn: Pfn, index: usize) -> u64 {
        self.frames.read_u64(Self::word(pfn, index))
    }

    fn write_u64(&mut self, pfn: Pfn, index: usize, value: u64) {
        self.frames.write_u64(Self::word(pfn, index), value);
    }

    fn read_bytes(&self, pfn: Pfn, offset: usize, buf: &mut [u8]) {
        self.frames.read(Self::span(pfn, offset, buf.len()), buf);
    }

    fn write_bytes(&mut self, pfn: Pfn, offset: usize, data: &[u8]) {
        self.frames.write(Self::span(pfn, offset, data.len()), data);
    }

    fn zero(&mut self, pfn: Pfn) {
        self.frames.zero(Self::base(pfn), PAGE);
    }

    fn copy(&mut self, dst: Pfn, src: Pfn) {
        self.frames.copy(Self::base(dst), Self::base(src), PAGE);
    }

    fn ownership_changed(&mut self, pfn: Pfn, host_owned: bool) {
        if host_owned {
            if let Some(td) = self.td.as_mut() {
                td.forget(pfn);
            }
        }
        let Some(npt) = self.host_npt.as_mut() else { return };
        let at = Self::base(pfn);
        // RAM comes back write-back; anything else (BAR frames a TDI imported) uncached.
        let ty = if self.frames.contains(at, PAGE as u64) {
            crate::world::npt::MemType::WriteBack
        } else {
            crate::world::npt::MemType::Uncached
        };
        let done = if host_owned { npt.map(at, at + PAGE as u64, ty) } else { npt.unmap(at, at + PAGE as u64) };
        if done.is_err() {
            self.host_map_broken = true;
        }
        // The nested map is also the host domain's second stage (`DmaRemapping::host_map`): a
        // device the host keeps may hold the frame's translation in the IOTLB until it is
        // invalidated, which happens before the TSM goes on with the frame.
        if !host_owned {
            if let Some(vtd) = self.vtd.as_mut() {
                if vtd.invalidate_host_page(at).is_err() {
                    self.host_map_broken = true;
                }
            }
        }
    }
}

impl Entropy for FirmwarePlatform {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), EntropyError> {
        self.rng.fill(buf).map_err(|_| {
            self.entropy_failures += 1;
            EntropyError
        })
    }
}

impl Clock for FirmwarePlatform {
    fn now_ns(&self) -> u64 {
        self.tsc.ticks_to_ns(self.tsc.now().wrapping_sub(crate::arch::boot_tsc()))
    }
}

impl DmaRemapping for FirmwarePlatform {
    fn remapping_capabilities(&self) -> Option<Capabilities> {
        self.vtd.as_ref().map(Vtd::capabilities)
    }

    fn set_root_table(&mut self, rtaddr: u64) -> Result<(), UnitError> {
        self.unit()?.set_root_table(rtaddr)
    }

    fn enable_queue(&mut self) -> Result<(), UnitError> {
        self.unit()?.enable_queue()
    }

    /// The host world's nested table: its format (present = bit 0, write = bit 1, U, PWT/PCD,
    /// PS = bit 7; no bit 11, 52 or above) is one a VT-d second stage reads with the same
    /// meaning, and it is an identity map of exactly the host's memory in the TSM's own pages.
    fn host_map(&self) -> Option<Pfn> {
        self.host_npt.as_ref().and_then(|n| Pfn::new(n.root() >> 12))
    }

    fn wait_status_address(&self) -> u64 {
        self.vtd.as_ref().map_or(0, Vtd::wait_status_address)
    }

    fn wait_status(&self) -> u32 {
        self.vtd.as_ref().map_or(0, Vtd::wait_status)
    }

    fn submit(&mut self, descriptors: &[InvDescriptor]) -> Result<(), UnitError> {
        self.unit()?.submit(descriptors)
    }

    fn set_translation(&mut self, enabled: bool) -> Result<(), UnitError> {
        self.unit()?.set_translation(enabled)
    }

    fn take_fault(&mut self) -> Option<(u64, u64)> {
        self.vtd.as_mut().and_then(Vtd::take_fault)
    }
}

impl Platform for FirmwarePlatform {
    fn mmio_windows(&self) -> &[FrameRange] {
        self.mmio_window.as_slice()
    }

    /// Any range of the memory map backed by memory (RAM, ACPI tables and NVS, bad or
    /// persistent memory), usable by the TSM or not; reserved ranges and holes are not.
    fn is_ram(&self, range: FrameRange) -> bool {
        let start = range.start.addr().raw();
        let end = start.saturating_add(range.count.saturating_mul(PAGE as u64));
        self.memmap.ranges().iter().any(|r| {
            let backed = !matches!(r.kind, RangeKind::Reserved | RangeKind::Other(_));
            backed && r.base < end && start < r.end()
        })
    }

    fn call_log_enabled(&self) -> bool {
        self.log_calls
    }

    fn sept_changed(&mut self, tdr: Pfn, range: Option<(GuestPhysAddr, u64)>) {
        if let Some(td) = self.td.as_mut() {
            td.sept_changed(tdr, range.map(|(gpa, bytes)| (gpa.raw(), bytes)));
        }
    }

    fn log_call(&mut self, r: &CallRecord) {
        // The information leaves are what the worlds' round trips are measured with
        // (`seamcall_roundtrip_ns`, `tdcall_roundtrip_ns`): a record per call would be most of
        // what they measure. They change nothing; their failures are still logged.
        let info_leaf =
            if r.guest { r.leaf == tsm::abi::guest::leaf::VP_INFO } else { r.leaf == tsm::abi::host::leaf::SYS_INFO };
        if info_leaf && r.status == 0 {
            return;
        }
        if r.status == 0 {
            defmt::debug!(
                "{=str} {=str} ok in {=u64} ns",
                if r.guest { "guest" } else { "host" },
                r.name,
                r.elapsed_ns
            );
        } else {
            defmt::debug!(
                "{=str} {=str} status {=u64:#x} in {=u64} ns",
                if r.guest { "guest" } else { "host" },
                r.name,
                r.status,
                r.elapsed_ns
            );
        }
    }
}
