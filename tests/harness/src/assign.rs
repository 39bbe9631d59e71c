//! The host's half of device assignment, as a VMM would drive it: resumable device calls pumped
//! through an in-process `tdisp-device` (the message page stands in for the DOE mailbox), and
//! the steps of the canonical flow (connect, IDE, bind, lock, import, map, accept, start) as
//! helpers that assert success. The device's MMIO lives at [`BAR_BASE`], outside the arena: the
//! TSM never reads or writes MMIO, it only maps it.

use tdisp_device::{Config, Device, InterfaceConfig, MmioRange};
use tsm::abi::guest::leaf as g;
use tsm::abi::host::leaf as h;
use tsm::addr::Pfn;
use tsm::{Regs, Status};

use crate::driver::{gpa_level, ok, Machine, TdHandle};

/// Host physical address of the device's BAR0 (far above the arena: not convertible memory).
pub const BAR_BASE: u64 = 0x80_0000_0000;
/// Pages of BAR0 in the default test device.
pub const BAR0_PAGES: u32 = 16;
/// Guest physical address the tests place BAR0 at.
pub const BAR_GPA: u64 = 0x4000_0000;
/// The device's function id (bus 0, device 3, function 0).
pub const FUNCTION: u32 = tdisp_device::config::DEFAULT_FUNCTION_ID;
/// TDISP lock flags the tests ask for: NO_FW_UPDATE | LOCK_MSIX.
pub const LOCK_FLAGS: u64 = 0x5;

/// A device whose one TDI reports BAR0 (16 pages at [`BAR_BASE`]), an MSI-X table and PBA page.
pub fn device_config() -> Config {
    device_config_bar(BAR0_PAGES)
}

/// The same device with a BAR0 of `pages` 4K pages; the MSI-X table and PBA follow 0xF0 pages
/// after it.
pub fn device_config_bar(pages: u32) -> Config {
    let bar = BAR_BASE >> 12;
    let msix = bar + u64::from(pages) + 0xF0;
    Config {
        interfaces: vec![InterfaceConfig {
            function_id: FUNCTION,
            interface_info: 0x0002,
            mmio: vec![
                MmioRange { first_page: bar, pages, attributes: 0, range_id: 0 },
                MmioRange { first_page: msix, pages: 1, attributes: 0x1, range_id: 2 },
                MmioRange { first_page: msix + 1, pages: 1, attributes: 0x2, range_id: 2 },
            ],
            device_info: b"seamless tdisp-device".to_vec(),
        }],
        ..Config::default()
    }
}

/// What the host keeps of an assignment in progress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assignment {
    /// The PDEV page.
    pub pdev: u64,
    /// The host message page.
    pub msg: u64,
    /// The IDE stream index.
    pub stream: u64,
    /// The TDI page (0 before TDI.CREATE).
    pub tdi: u64,
    /// The lock generation of the last lock.
    pub generation: u64,
    /// The interface report TDI.LOCK returned.
    pub report: Vec<u8>,
}

impl Machine {
    /// Calls a resumable device leaf, moving every request to `device` and its answer back,
    /// until the call stops asking. `None` from the device (a dropped answer) ends the pump with
    /// the DEVICE_REQUEST still outstanding.
    pub fn pump(&mut self, device: &mut Device, leaf: u64, rcx: u64, msg: u64, r9: u64) -> Regs {
        let mut len = 0;
        loop {
            let r = self.tsm.host_call(&Regs::call(leaf, rcx, msg, len, r9));
            if r.status() != Status::DEVICE_REQUEST {
                return r;
            }
            let request = self.read(msg, r.r8 as usize);
            match device.handle(&request) {
                Some(answer) => {
                    assert!(answer.len() <= 4096, "answer fits the message page");
                    self.write(msg, &answer);
                    len = answer.len() as u64;
                }
                None => return r,
            }
        }
    }

    /// SPDM.CREATE and a full SPDM.CONNECT; asserts success.
    pub fn connect(&mut self, device: &mut Device) -> Assignment {
        let pdev = self.page();
        ok(self.host(h::SPDM_CREATE, pdev, u64::from(FUNCTION), 0, 0), "SPDM.CREATE");
        let msg = self.scratch();
        ok(self.pump(device, h::SPDM_CONNECT, pdev, msg, 0), "SPDM.CONNECT");
        Assignment { pdev, msg, stream: 0, tdi: 0, generation: 0, report: Vec::new() }
    }

    /// IDE.STREAM.CREATE and KM SETUP; asserts success.
    pub fn ide_setup(&mut self, device: &mut Device, a: &mut Assignment) {
        let r = self.host(h::IDE_STREAM_CREATE, a.pdev, 1, 0, 0);
        ok(r, "IDE.STREAM.CREATE");
        a.stream = r.rcx;
        ok(self.pump(device, h::IDE_STREAM_KM, a.pdev, a.msg, a.stream), "IDE.STREAM.KM SETUP");
    }

    /// TDI.CREATE bound to `td`; asserts success.
    pub fn bind(&mut self, td: &TdHandle, a: &mut Assignment) {
        let page = self.page();
        ok(self.host(h::TDI_CREATE, td.tdr, a.pdev, page, u64::from(FUNCTION)), "TDI.CREATE");
        a.tdi = page;
    }

    /// TDI.LOCK with [`LOCK_FLAGS`] over the stream; asserts success, keeps the report.
    pub fn lock(&mut self, device: &mut Device, a: &mut Assignment) {
        let r = self.pump(device, h::TDI_LOCK, a.tdi, a.msg, LOCK_FLAGS | a.stream << 16);
        ok(r, "TDI.LOCK");
        a.generation = r.rcx;
        a.report = self.read(a.msg, r.r8 as usize);
    }

    /// DMABUF.IMPORT of every TEE range of the report; asserts success.
    pub fn import_all(&mut self, a: &Assignment) {
        let s = self.tsm.tdi_summary(pfn(a.tdi)).expect("TDI");
        for (i, range) in s.ranges[..s.range_count].iter().enumerate() {
            if range.attributes & 0x4 == 0 {
                ok(self.host(h::DMABUF_IMPORT, a.tdi, range.first << 12, range.pages, i as u64), "DMABUF.IMPORT");
            }
        }
    }

    /// MMIO.MAP of every page of range `r` at `gpa` onwards (tables added as needed).
    pub fn map_range(&mut self, td: &TdHandle, a: &Assignment, r: usize, gpa: u64) {
        let s = self.tsm.tdi_summary(pfn(a.tdi)).expect("TDI");
        let range = s.ranges[r];
        for i in 0..range.pages {
            self.map_tables(td, gpa + i * 4096, 0);
            let hpa = (range.first + i) << 12;
            ok(self.host(h::MMIO_MAP, gpa_level(gpa + i * 4096, 0), td.tdr, hpa, 0), "MMIO.MAP");
        }
    }

    /// The guest accepts every page of range `r` mapped at `gpa`.
    pub fn accept_range(&mut self, td: &TdHandle, a: &Assignment, r: usize, gpa: u64) {
        let s = self.tsm.tdi_summary(pfn(a.tdi)).expect("TDI");
        for i in 0..s.ranges[r].pages {
            let call = Regs {
                r9: i * 4096,
                ..Regs::call(g::MMIO_ACCEPT, gpa_level(gpa + i * 4096, 0), r as u64, u64::from(FUNCTION), 0)
            };
            let ret = self.tsm.guest_call(td.vcpus[0], &call);
            assert_eq!(ret.regs.status(), Status::SUCCESS, "MMIO.ACCEPT {ret:x?}");
        }
    }

    /// The guest authorises START for the current lock; asserts success.
    pub fn authorise(&mut self, td: &TdHandle, a: &Assignment) {
        let r = self.guest(td.vcpus[0], g::TDI_START, u64::from(FUNCTION), a.generation, 0);
        assert_eq!(r.regs.status(), Status::SUCCESS, "TDG.TDI.START {r:x?}");
    }

    /// Everything up to a running TDI with BAR0 mapped and accepted at [`BAR_GPA`].
    pub fn assign(&mut self, device: &mut Device, td: &TdHandle) -> Assignment {
        let mut a = self.connect(device);
        self.ide_setup(device, &mut a);
        self.bind(td, &mut a);
        self.lock(device, &mut a);
        self.import_all(&a);
        self.map_range(td, &a, 0, BAR_GPA);
        self.accept_range(td, &a, 0, BAR_GPA);
        self.authorise(td, &a);
        ok(self.pump(device, h::TDI_START, a.tdi, a.msg, 0), "TDI.START");
        a
    }
}

/// The frame of a page address.
pub fn pfn(pa: u64) -> Pfn {
    Pfn::new(pa >> 12).expect("pfn")
}

impl Machine {
    /// Tears a TD down the way a VMM does: kick its vCPUs, VPFLUSHDONE, RECLAIM every page it
    /// owns, then its TDR. Asserts every step.
    pub fn teardown(&mut self, td: &TdHandle) {
        for &v in &td.vcpus {
            ok(self.host(h::VP_KICK, v, 0, 0, 0), "VP.KICK");
        }
        ok(self.host(h::MNG_VPFLUSHDONE, td.tdr, 0, 0, 0), "VPFLUSHDONE");
        for f in crate::driver::TDMR_BASE >> 12..self.pamt_base() >> 12 {
            let frame = pfn(f << 12);
            let Some(meta) = self.tsm.pamt_entry(frame) else { continue };
            let head = tsm::addr::PageSize::from_level(meta.level).is_some_and(|s| frame.is_aligned(s));
            let regular_tail = meta.ty == tsm::pamt::PageType::Regular && !head;
            if meta.ty != tsm::pamt::PageType::Free
                && meta.owner.addr().raw() == td.tdr
                && f << 12 != td.tdr
                && !regular_tail
            {
                ok(self.host(h::PHYMEM_PAGE_RECLAIM, f << 12, 0, 0, 0), "RECLAIM");
            }
        }
        ok(self.host(h::PHYMEM_PAGE_RECLAIM, td.tdr, 0, 0, 0), "RECLAIM TDR");
    }

    /// Frames of the TDMR that are neither free nor the PAMT (0 after a clean teardown).
    pub fn frames_in_use(&self) -> usize {
        (crate::driver::TDMR_BASE >> 12..self.pamt_base() >> 12)
            .filter(|&f| self.tsm.pamt_entry(pfn(f << 12)).is_some_and(|e| e.ty != tsm::pamt::PageType::Free))
            .count()
    }
}

impl Machine {
    /// TDH.IOMMU.SETUP with a fresh root table; asserts success.
    pub fn iommu_setup(&mut self) -> u64 {
        let root = self.page();
        ok(self.host(h::IOMMU_SETUP, root, 0, 0, 0), "IOMMU.SETUP");
        root
    }

    /// TDH.DMAR.ADD for the TDI, offering a fresh frame for every table; frames it did not take
    /// go back to the host's pool. Returns the call's registers.
    pub fn dmar_add(&mut self, td: &TdHandle, a: &Assignment) -> Regs {
        let frames = [self.page(), self.page(), self.page()];
        let call = Regs { r10: frames[2], ..Regs::call(h::DMAR_ADD, td.tdr, a.tdi, frames[0], frames[1]) };
        let r = self.tsm.host_call(&call);
        let used = if r.status() == Status::SUCCESS { r.rcx } else { 0 };
        for (i, &f) in frames.iter().enumerate() {
            if used & 1 << i == 0 {
                self.release(f);
            }
        }
        r
    }

    /// TDH.IOMMU.CLEAR until the root table comes back; returns how many frames came back.
    pub fn iommu_clear(&mut self) -> usize {
        let mut n = 0;
        loop {
            let r = self.host(h::IOMMU_CLEAR, 0, 0, 0, 0);
            ok(r, "IOMMU.CLEAR");
            n += 1;
            self.release(r.rcx);
            if r.rdx == 0 {
                return n;
            }
        }
    }
}
