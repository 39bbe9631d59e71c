//! Fixtures for the trusted-IOMMU tests: a machine with a real TD built through the host and
//! guest ABIs, and an IOMMU whose tables live in frames of the same simulated memory.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(dead_code)]

use seamless_harness::driver::{default_params, gpa_level, ok, Machine, TdHandle};
use tsm::abi::host::leaf;
use tsm::addr::{PageSize, Pfn};
use tsm::iommu::{DmarKey, DmarRequest, DomainId, Frames, Iommu, IommuError, Pasid, Rid, SeptLevels};
use tsm::pamt::Pamt;
use tsm::sept::{self, WalkResult};
use tsm::td::TdParams;

pub const MIB: u64 = 1 << 20;

pub fn pfn(pa: u64) -> Pfn {
    Pfn::new(pa >> 12).unwrap()
}

pub fn rid(bus: u8, dev: u8, func: u8) -> Rid {
    Rid::new(bus, dev, func).unwrap()
}

pub fn key(rid: Rid, pasid: Option<u32>) -> DmarKey {
    DmarKey { rid, pasid: pasid.map(|p| Pasid::new(p).unwrap()) }
}

/// A configured machine, its PAMT view and a running TD (one vCPU in guest mode, S-EPT tables
/// for 4K leaves at GPA 0..2M).
pub struct World {
    pub m: Machine,
    pub pamt: Pamt,
    pub td: TdHandle,
}

impl World {
    pub fn new() -> World {
        let mut m = Machine::configured(64 * MIB);
        let td = m.running_td();
        let pamt = Pamt::new(m.tsm.tdmrs());
        World { m, pamt, td }
    }

    /// A second running TD, built with `params`.
    pub fn running_td_with(&mut self, params: &TdParams) -> TdHandle {
        let mut td = self.m.create_td(params);
        let vcpu = self.m.add_vcpu(&mut td);
        self.m.map_tables(&td, 0, 0);
        self.m.finalize(&td);
        self.m.enter(vcpu);
        td
    }

    pub fn second_td(&mut self) -> TdHandle {
        self.running_td_with(&default_params())
    }

    pub fn setup(&mut self) -> Iommu {
        let root = self.m.page();
        Iommu::setup(self.m.tsm.platform_mut(), &self.pamt, pfn(root)).unwrap()
    }

    /// The request the DMAR.ADD leaf would build for `td`.
    pub fn request(&self, td: &TdHandle, key: DmarKey, did: u16) -> DmarRequest {
        let s = self.m.tsm.td_summary(pfn(td.tdr)).unwrap();
        DmarRequest {
            key,
            owner: pfn(td.tdr),
            sept_root: s.sept_root,
            levels: SeptLevels::from_root_level(s.root_level).unwrap(),
            domain: DomainId(did),
            cpu_epoch: s.epoch,
        }
    }

    /// Three fresh frames, one per table an install may need.
    pub fn frames(&mut self) -> Frames {
        Frames {
            context_table: Some(pfn(self.m.page())),
            pasid_dir: Some(pfn(self.m.page())),
            pasid_table: Some(pfn(self.m.page())),
        }
    }

    pub fn install(&mut self, iommu: &mut Iommu, td: &TdHandle, key: DmarKey, did: u16) -> Result<(), IommuError> {
        let req = self.request(td, key, did);
        let frames = self.frames();
        iommu.install(self.m.tsm.platform_mut(), &self.pamt, &req, &frames).map(|_| ())
    }

    /// Installs and accepts (by the TD) the entry of `key`.
    pub fn bind(&mut self, iommu: &mut Iommu, td: &TdHandle, key: DmarKey, did: u16) {
        self.install(iommu, td, key, did).unwrap();
        iommu.accept(self.m.tsm.platform_mut(), pfn(td.tdr), key).unwrap();
    }

    /// IQ.INV of DID `did` in `td`'s current CPU epoch.
    pub fn invalidate(&mut self, iommu: &mut Iommu, td: &TdHandle, did: u16) -> Result<(), IommuError> {
        let epoch = self.epoch(td);
        iommu.invalidate(self.m.tsm.platform_mut(), DomainId(did), epoch)
    }

    pub fn writes(&self) -> u64 {
        self.m.tsm.platform().mem.writes()
    }

    pub fn epoch(&self, td: &TdHandle) -> u64 {
        self.m.tsm.td_summary(pfn(td.tdr)).unwrap().epoch
    }

    /// S-EPT BLOCK of the 4K page at `gpa` through the host ABI.
    pub fn sept_block(&mut self, td: &TdHandle, gpa: u64) {
        ok(self.m.host(leaf::MEM_RANGE_BLOCK, gpa_level(gpa, 0), td.tdr, 0, 0), "BLOCK");
    }

    /// Kicks every vCPU out and runs TRACK.
    pub fn kick_and_track(&mut self, td: &TdHandle) {
        for &v in &td.vcpus {
            ok(self.m.host(leaf::VP_KICK, v, 0, 0, 0), "VP.KICK");
        }
        ok(self.m.host(leaf::MEM_TRACK, td.tdr, 0, 0, 0), "TRACK");
    }

    /// S-EPT PAGE.REMOVE of the (blocked, tracked) 4K page at `gpa`.
    pub fn sept_remove(&mut self, td: &TdHandle, gpa: u64) {
        ok(self.m.host(leaf::MEM_PAGE_REMOVE, gpa_level(gpa, 0), td.tdr, 0, 0), "PAGE.REMOVE");
    }

    /// AUG only (the page stays PENDING).
    pub fn aug(&mut self, td: &TdHandle, gpa: u64) -> u64 {
        self.m.map_tables(td, gpa, 0);
        let page = self.m.page();
        ok(self.m.host(leaf::MEM_PAGE_AUG, gpa_level(gpa, 0), td.tdr, page, 0), "AUG");
        page
    }

    pub fn aug_accept(&mut self, td: &TdHandle, gpa: u64, size: PageSize) -> u64 {
        self.m.aug_accept(td, gpa, size)
    }

    /// Where the S-EPT entry of `gpa` at `level` lives (table frame, index).
    pub fn sept_slot(&self, td: &TdHandle, gpa: u64, level: u8) -> (Pfn, usize) {
        let s = self.m.tsm.td_summary(pfn(td.tdr)).unwrap();
        let g = tsm::addr::GuestPhysAddr::new(gpa).unwrap();
        match sept::walk(self.m.tsm.platform(), s.sept_root, s.root_level, g, level).unwrap() {
            WalkResult::Reached(w) => (w.slot.table, w.slot.index),
            WalkResult::Stopped(w) => panic!("no S-EPT entry at level {level}: {w:?}"),
        }
    }

    pub fn read(&self, frame: Pfn, index: usize) -> u64 {
        tsm::platform::PhysMem::read_u64(self.m.tsm.platform(), frame, index)
    }

    pub fn poke(&mut self, frame: Pfn, index: usize, value: u64) {
        tsm::platform::PhysMem::write_u64(self.m.tsm.platform_mut(), frame, index, value);
    }
}

/// Runs `call` and asserts it fails with `want` and changes nothing: no memory write (not even
/// of an equal value) and the same IOMMU state.
#[track_caller]
pub fn rejects<T: std::fmt::Debug>(
    w: &mut World,
    iommu: &mut Iommu,
    want: IommuError,
    call: impl FnOnce(&mut World, &mut Iommu) -> Result<T, IommuError>,
) {
    let writes = w.writes();
    let before = iommu.clone();
    let got = call(w, iommu);
    assert_eq!(got.map(|_| ()), Err(want));
    assert_eq!(w.writes(), writes, "a failed call wrote memory");
    assert!(*iommu == before, "a failed call changed the IOMMU");
}
