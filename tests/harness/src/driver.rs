//! The test driver: calls the TSM's ABIs exactly as the firmware does (raw registers in, raw
//! registers out) over a simulated physical memory, and builds fixtures only through ABI calls.
//! Spec tests, the model test, benchmarks and fuzz targets share it.
//!
//! Physical layout of the simulated machine (arena from `ARENA_BASE`):
//!
//! ```text
//! ARENA_BASE            +1M              +2M (SCRATCH_BASE)     +4M = TDMR_BASE           end
//! | TSM private (1M)    | unused host    | host scratch (2M)    | TDMR (convertible) ... PAMT |
//! ```
//! The PAMT sits at the end of the TDMR so that 1G-aligned blocks at `TDMR_BASE` stay donatable.

use tsm::addr::{FrameRange, HostPhysAddr, PageSize, Pfn};
use tsm::pamt::Tdmr;
use tsm::td::TdParams;
use tsm::{GuestReturn, Regs, Status, TdExit, Tsm, TsmIdentity};
use tsm_client::host::td::{self as flow_td, TdPages};
use tsm_client::{HostMemory, Seamcall, Tdcall};

use crate::arena::{HostMem, HostPlatform};

/// First byte of the simulated physical memory.
pub const ARENA_BASE: u64 = TDMR_BASE - 4 * MIB;
/// The TSM's own memory, which no TDMR may touch.
pub const PRIVATE_BASE: u64 = ARENA_BASE;
/// Host-only pages for ABI inputs (TDMR_INFO, TD_PARAMS, source pages).
pub const SCRATCH_BASE: u64 = ARENA_BASE + 2 * MIB;
/// Start of the convertible memory (4 GiB).
pub const TDMR_BASE: u64 = 0x1_0000_0000;
const MIB: u64 = 1 << 20;

/// The identity the harness gives its TSM.
pub const IDENTITY: TsmIdentity = TsmIdentity { svn: 1, mrseam: [0x5e; 48], mrsigner: [0; 48] };

/// Encodes RCX as "GPA and level".
pub const fn gpa_level(gpa: u64, level: u8) -> u64 {
    gpa | level as u64
}

/// TD parameters most tests use: GPAW 48, 2 vCPUs, no attributes.
pub fn default_params() -> TdParams {
    TdParams {
        attributes: 0,
        xfam: 3,
        max_vcpus: 2,
        gpaw: 48,
        mr_config_id: [0; 48],
        mr_owner: [0; 48],
        mr_owner_config: [0; 48],
    }
}

/// A TD built through the ABI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TdHandle {
    /// TDR address.
    pub tdr: u64,
    /// TDCS page addresses (0: S-EPT root, 1: measurement registers).
    pub tdcs: [u64; 2],
    /// TDVPR addresses of its vCPUs.
    pub vcpus: Vec<u64>,
    /// S-EPT root level.
    pub root_level: u8,
}

/// A simulated machine: the TSM over an arena, and the host's bookkeeping of which frames it
/// still has.
#[derive(Debug)]
pub struct Machine {
    /// The TSM under test, on the heap: it is large (device message buffers, the IOMMU's fault
    /// log), and tests hold several machines on a test thread's stack.
    pub tsm: Box<Tsm<HostPlatform>>,
    tdmr_bytes: u64,
    pamt_base: u64,
    cursor: u64,
    free4k: Vec<u64>,
    scratch_next: u64,
}

impl Machine {
    /// A machine whose TDMR has `tdmr_bytes` (2M multiple); the TSM is not configured yet.
    pub fn new(tdmr_bytes: u64) -> Machine {
        assert!(tdmr_bytes.is_multiple_of(2 * MIB) && tdmr_bytes > 0);
        let base = HostPhysAddr::new(ARENA_BASE).expect("arena base");
        let mem = HostMem::new(base, 4 * MIB + tdmr_bytes);
        let private = FrameRange { start: Pfn::new(PRIVATE_BASE >> 12).expect("pfn"), count: 256 };
        let tsm = Box::new(Tsm::new(HostPlatform::new(mem, 0x5eed), IDENTITY, &[private]));
        let pamt_frames = Tdmr::pamt_frames_needed(tdmr_bytes >> 12);
        let pamt_base = TDMR_BASE + tdmr_bytes - pamt_frames * 4096;
        Machine { tsm, tdmr_bytes, pamt_base, cursor: TDMR_BASE, free4k: Vec::new(), scratch_next: SCRATCH_BASE }
    }

    /// A machine with the TSM configured over one TDMR of `tdmr_bytes`.
    pub fn configured(tdmr_bytes: u64) -> Machine {
        let mut m = Machine::new(tdmr_bytes);
        let r = m.sys_config();
        assert_eq!(r.status(), Status::SUCCESS, "SYS.CONFIG");
        m
    }

    /// The TDR_INFO the harness passes: one TDMR with its PAMT at its end.
    pub fn tdmr_info(&self) -> [u64; 4] {
        [TDMR_BASE, self.tdmr_bytes, self.pamt_base, TDMR_BASE + self.tdmr_bytes - self.pamt_base]
    }

    /// Calls TDH.SYS.CONFIG with [`Machine::tdmr_info`].
    pub fn sys_config(&mut self) -> Regs {
        let info = self.tdmr_info();
        self.sys_config_with(&[info])
    }

    /// Calls TDH.SYS.CONFIG with the given TDMR_INFO entries.
    pub fn sys_config_with(&mut self, tdmrs: &[[u64; 4]]) -> Regs {
        tsm_client::host::sys_config(self, tdmrs).expect("TDMR_INFO fits a page")
    }

    /// One host call.
    pub fn host(&mut self, leaf: u64, rcx: u64, rdx: u64, r8: u64, r9: u64) -> Regs {
        self.tsm.host_call(&Regs::call(leaf, rcx, rdx, r8, r9))
    }

    /// One guest call from the vCPU whose TDVPR is `tdvpr`.
    pub fn guest(&mut self, tdvpr: u64, leaf: u64, rcx: u64, rdx: u64, r8: u64) -> GuestReturn {
        self.tsm.guest_call(tdvpr, &Regs::call(leaf, rcx, rdx, r8, 0))
    }

    /// A fresh, never donated 4K frame of convertible memory (host side).
    pub fn page(&mut self) -> u64 {
        if let Some(p) = self.free4k.pop() {
            return p;
        }
        let p = self.cursor;
        assert!(p + 4096 <= self.pamt_base, "harness out of TDMR memory");
        self.cursor += 4096;
        p
    }

    /// A fresh, aligned block of convertible memory.
    pub fn block(&mut self, size: PageSize) -> u64 {
        if size == PageSize::Size4K {
            return self.page();
        }
        let aligned = self.cursor.next_multiple_of(size.bytes());
        while self.cursor < aligned {
            self.free4k.push(self.cursor);
            self.cursor += 4096;
        }
        assert!(aligned + size.bytes() <= self.pamt_base, "harness out of TDMR memory");
        self.cursor = aligned + size.bytes();
        aligned
    }

    /// Gives a frame back to the host's pool (after RECLAIM or REMOVE).
    pub fn release(&mut self, pa: u64) {
        self.free4k.push(pa);
    }

    /// How many TDMR pages the host has handed out at least once.
    pub fn donated_pages(&self) -> u64 {
        (self.cursor - TDMR_BASE) / 4096
    }

    /// The PAMT area's address.
    pub fn pamt_base(&self) -> u64 {
        self.pamt_base
    }

    /// A host page outside the TDMRs, for ABI inputs.
    pub fn scratch(&mut self) -> u64 {
        let p = self.scratch_next;
        assert!(p < TDMR_BASE, "harness out of scratch pages");
        self.scratch_next += 4096;
        p
    }

    /// Writes bytes into simulated physical memory at `pa` (within one page).
    pub fn write(&mut self, pa: u64, bytes: &[u8]) {
        let pfn = Pfn::new(pa >> 12).expect("pfn");
        tsm::platform::PhysMem::write_bytes(self.tsm.platform_mut(), pfn, (pa & 0xFFF) as usize, bytes);
    }

    /// Reads `len` bytes of simulated physical memory at `pa` (within one page).
    pub fn read(&self, pa: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        let pfn = Pfn::new(pa >> 12).expect("pfn");
        tsm::platform::PhysMem::read_bytes(self.tsm.platform(), pfn, (pa & 0xFFF) as usize, &mut buf);
        buf
    }

    /// MNG.CREATE, two ADDCX and MNG.INIT with `params`; asserts success.
    pub fn create_td(&mut self, params: &TdParams) -> TdHandle {
        let td = flow_td::create(self, params).unwrap_or_else(|e| panic!("{e}"));
        TdHandle { tdr: td.tdr, tdcs: td.tdcs, vcpus: Vec::new(), root_level: td.root_level }
    }

    /// VP.CREATE; asserts success.
    pub fn add_vcpu(&mut self, td: &mut TdHandle) -> u64 {
        let tdvpr = flow_td::vp_create(self, &td.pages()).unwrap_or_else(|e| panic!("{e}"));
        td.vcpus.push(tdvpr);
        tdvpr
    }

    /// Adds the missing S-EPT tables on the path to `gpa` so that a leaf can sit at `leaf_level`.
    pub fn map_tables(&mut self, td: &TdHandle, gpa: u64, leaf_level: u8) {
        flow_td::map_tables(self, &td.pages(), gpa, leaf_level).unwrap_or_else(|e| panic!("{e}"));
    }

    /// PAGE.ADD of `content` at `gpa` (tables added as needed) and MR.EXTEND of its 16 chunks
    /// when `extend`; asserts success.
    pub fn add_page(&mut self, td: &TdHandle, gpa: u64, content: &[u8; 4096], extend: bool) -> u64 {
        flow_td::add_page(self, &td.pages(), gpa, content, extend).unwrap_or_else(|e| panic!("{e}"))
    }

    /// MR.FINALIZE; asserts success.
    pub fn finalize(&mut self, td: &TdHandle) {
        flow_td::finalize(self, &td.pages()).unwrap_or_else(|e| panic!("{e}"));
    }

    /// VP.ENTER; asserts success.
    pub fn enter(&mut self, tdvpr: u64) {
        flow_td::enter(self, tdvpr).unwrap_or_else(|e| panic!("{e}"));
    }

    /// A finalized TD with one vCPU in guest mode and S-EPT tables for GPAs 0..2M (4K leaves).
    pub fn running_td(&mut self) -> TdHandle {
        let mut td = self.create_td(&default_params());
        let vcpu = self.add_vcpu(&mut td);
        self.map_tables(&td, 0, 0);
        self.finalize(&td);
        self.enter(vcpu);
        td
    }

    /// AUG at `gpa`/`size` then ACCEPT by the TD's first vCPU (which must be in guest mode);
    /// asserts success and returns the page's address.
    pub fn aug_accept(&mut self, td: &TdHandle, gpa: u64, size: PageSize) -> u64 {
        let page = self.block(size);
        flow_td::aug(self, &td.pages(), gpa, size.level(), page).unwrap_or_else(|e| panic!("{e}"));
        let r = tsm_client::guest::accept(&mut self.vcpu(td.vcpus[0]), gpa, size.level());
        assert_eq!(r, Ok(()), "ACCEPT");
        page
    }

    /// The vCPU whose TDVPR is `tdvpr`, as a TDCALL transport for `tsm_client::guest`.
    pub fn vcpu(&mut self, tdvpr: u64) -> Vcpu<'_> {
        Vcpu { tsm: &mut self.tsm, tdvpr }
    }
}

impl TdHandle {
    /// The TD as `tsm_client` names it.
    pub fn pages(&self) -> TdPages {
        TdPages { tdr: self.tdr, tdcs: self.tdcs, root_level: self.root_level }
    }
}

/// SEAMCALL as a direct call into the TSM.
impl Seamcall for Machine {
    fn seamcall(&mut self, regs: &mut Regs) {
        *regs = self.tsm.host_call(regs);
    }
}

/// The host's pages: the TDMR's for donation, the scratch area's for inputs.
impl HostMemory for Machine {
    fn read(&mut self, pa: u64, buf: &mut [u8]) {
        let pfn = Pfn::new(pa >> 12).expect("pfn");
        tsm::platform::PhysMem::read_bytes(self.tsm.platform(), pfn, (pa & 0xFFF) as usize, buf);
    }
    fn write(&mut self, pa: u64, data: &[u8]) {
        Machine::write(self, pa, data);
    }
    fn donate(&mut self) -> Option<u64> {
        Some(self.page())
    }
    fn scratch(&mut self) -> Option<u64> {
        Some(Machine::scratch(self))
    }
    fn donate_2m(&mut self) -> Option<u64> {
        Some(self.block(PageSize::Size2M))
    }
    fn release(&mut self, pa: u64) {
        Machine::release(self, pa);
    }
    fn donated(&self) -> (u64, u64) {
        (TDMR_BASE, self.cursor)
    }
}

/// One vCPU of a TD: TDCALL as a direct call into `Tsm::guest_call`.
#[derive(Debug)]
pub struct Vcpu<'a> {
    tsm: &'a mut Tsm<HostPlatform>,
    tdvpr: u64,
}

impl Tdcall for Vcpu<'_> {
    fn tdcall(&mut self, regs: &mut Regs) -> Option<TdExit> {
        let r = self.tsm.guest_call(self.tdvpr, regs);
        *regs = r.regs;
        r.exit
    }
}

pub use tsm_client::host::td::coverage;

/// Asserts a call succeeded, naming it on failure.
pub fn ok(r: Regs, what: &str) {
    assert_eq!(r.status(), Status::SUCCESS, "{what}: {r:x?}");
}
