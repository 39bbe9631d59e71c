//! The host's half of device assignment, as a VMM would drive it: resumable device calls pumped
//! through an in-process `tdisp-device` (the message page stands in for the DOE mailbox), and
//! the steps of the canonical flow (connect, IDE, bind, lock, import, map, accept, start) as
//! helpers that assert success. The device's MMIO lives at [`BAR_BASE`], outside the arena: the
//! TSM never reads or writes MMIO, it only maps it.

use tdisp_device::{Config, Device, InterfaceConfig, MmioRange};
use tsm::addr::Pfn;
use tsm::Regs;
use tsm_client::host::device::{self as flow, Assignment as Progress};
use tsm_client::host::{td as flow_td, DeviceLeaf, PumpStats};
use tsm_client::{Doe, DoeError};

use crate::driver::{Machine, TdHandle};

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
    /// What SPDM.CONNECT reported (version, where the device was measured, heartbeat period).
    pub spdm: tsm_client::host::device::Connected,
}

impl Assignment {
    /// The assignment as `tsm_client` tracks it (nothing mapped, no DMA entry).
    pub fn progress(&self) -> Progress {
        Progress {
            pdev: self.pdev,
            msg: self.msg,
            ide: self.stream != 0,
            stream: self.stream,
            tdi: self.tdi,
            generation: self.generation,
            report_len: self.report.len(),
            spdm: self.spdm,
            ..Progress::default()
        }
    }
}

/// The in-process device as the host's DOE mailbox: `None` from the device (a dropped answer)
/// is the mailbox's timeout.
#[derive(Debug)]
pub struct DeviceMailbox<'a>(pub &'a mut Device);

impl Doe for DeviceMailbox<'_> {
    fn exchange(&mut self, request: &[u8], answer: &mut [u8]) -> Result<usize, DoeError> {
        let got = self.0.handle(request).ok_or(DoeError::Timeout { waited_us: 0 })?;
        assert!(got.len() <= answer.len(), "answer fits the message page");
        answer[..got.len()].copy_from_slice(&got);
        Ok(got.len())
    }
}

fn must<T>(r: Result<T, tsm_client::HostError>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

impl Machine {
    /// Calls a resumable device leaf, moving every request to `device` and its answer back,
    /// until the call stops asking. `None` from the device (a dropped answer) ends the pump with
    /// the DEVICE_REQUEST still outstanding.
    pub fn pump(&mut self, device: &mut Device, leaf: u64, rcx: u64, msg: u64, r9: u64) -> Regs {
        let l = DeviceLeaf { name: "pump", leaf, rcx, r9 };
        match tsm_client::host::pump(self, &mut DeviceMailbox(device), l, msg, &mut PumpStats::default()) {
            Ok(r) => r,
            Err(stalled) => stalled.regs,
        }
    }

    /// SPDM.CREATE and a full SPDM.CONNECT; asserts success.
    pub fn connect(&mut self, device: &mut Device) -> Assignment {
        let mut p = must(flow::pdev_create(self, FUNCTION));
        must(flow::connect(self, &mut DeviceMailbox(device), &mut p, &mut PumpStats::default()));
        Assignment { pdev: p.pdev, msg: p.msg, stream: 0, tdi: 0, generation: 0, report: Vec::new(), spdm: p.spdm }
    }

    /// IDE.STREAM.CREATE and KM SETUP; asserts success.
    pub fn ide_setup(&mut self, device: &mut Device, a: &mut Assignment) {
        let mut p = a.progress();
        must(flow::ide_setup(self, &mut DeviceMailbox(device), &mut p, &mut PumpStats::default()));
        a.stream = p.stream;
    }

    /// TDI.CREATE bound to `td`; asserts success.
    pub fn bind(&mut self, td: &TdHandle, a: &mut Assignment) {
        let mut p = a.progress();
        must(flow::bind(self, td.tdr, FUNCTION, &mut p));
        a.tdi = p.tdi;
    }

    /// TDI.LOCK with [`LOCK_FLAGS`] over the stream; asserts success, keeps the report.
    pub fn lock(&mut self, device: &mut Device, a: &mut Assignment) {
        let mut p = a.progress();
        must(flow::lock(self, &mut DeviceMailbox(device), LOCK_FLAGS, &mut p, &mut PumpStats::default()));
        a.generation = p.generation;
        a.report = self.read(a.msg, p.report_len);
    }

    /// DMABUF.IMPORT of every TEE range of the report; asserts success.
    pub fn import_all(&mut self, a: &Assignment) {
        let s = self.tsm.tdi_summary(pfn(a.tdi)).expect("TDI");
        for (i, range) in s.ranges[..s.range_count].iter().enumerate() {
            if range.attributes & 0x4 == 0 {
                must(flow::import(self, &a.progress(), i as u64, range.first << 12, range.pages));
            }
        }
    }

    /// MMIO.MAP of every page of range `r` at `gpa` onwards (tables added as needed).
    pub fn map_range(&mut self, td: &TdHandle, a: &Assignment, r: usize, gpa: u64) {
        let s = self.tsm.tdi_summary(pfn(a.tdi)).expect("TDI");
        let range = s.ranges[r];
        must(flow::map_mmio(self, &td.pages(), &mut a.progress(), (range.first << 12, range.pages), gpa));
    }

    /// The guest accepts every page of range `r` mapped at `gpa`.
    pub fn accept_range(&mut self, td: &TdHandle, a: &Assignment, r: usize, gpa: u64) {
        let s = self.tsm.tdi_summary(pfn(a.tdi)).expect("TDI");
        let pages = s.ranges[r].pages;
        let got =
            tsm_client::guest::accept_mmio(&mut self.vcpu(td.vcpus[0]), u64::from(FUNCTION), r as u64, gpa, pages);
        assert_eq!(got, Ok(()), "MMIO.ACCEPT");
    }

    /// The guest authorises START for the current lock; asserts success.
    pub fn authorise(&mut self, td: &TdHandle, a: &Assignment) {
        let got = tsm_client::guest::authorise_start(&mut self.vcpu(td.vcpus[0]), u64::from(FUNCTION), a.generation);
        assert_eq!(got, Ok(()), "TDG.TDI.START");
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
        must(flow::start(self, &mut DeviceMailbox(device), &a.progress(), &mut PumpStats::default()));
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
        must(flow_td::destroy(self, td.tdr, &td.vcpus));
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
        must(flow::iommu_setup(self))
    }

    /// TDH.DMAR.ADD for the TDI, offering a fresh frame for every table; frames it did not take
    /// go back to the host's pool. Returns the call's registers.
    pub fn dmar_add(&mut self, td: &TdHandle, a: &Assignment) -> Regs {
        must(flow::dmar_add_raw(self, td.tdr, a.tdi))
    }

    /// TDH.IOMMU.CLEAR until the root table comes back; returns how many frames came back.
    pub fn iommu_clear(&mut self) -> usize {
        must(flow::iommu_clear(self)) as usize
    }
}
