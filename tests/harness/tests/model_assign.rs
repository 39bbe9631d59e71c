//! Model-based test of device assignment: random host, guest and device actions against a
//! small reference model of the PDEV, its IDE stream, the TDIs, their MMIO leaves and DMA
//! entries, and the device's own TDISP state; after every step the model's state is compared
//! with the machine's and the global invariants (`tsm::audit`) and the device check hold.
//!
//! The world: TD 0 (the victim) and TD 1 (a TD the host controls), one device with interface
//! F = [`FUNCTION`] and a second, lying interface F+1 that reports F's frames. TDIs: `Main`
//! (F, TD 0), `Twin` (F with PASID 1, TD 1: the PASID twin of #16), `Extra(0)` (F+1, TD 0) and
//! `Extra(1..=3)` (functions the device does not have, TD 0: five TDIs on one TD).
//!
//! The model encodes what must happen, not what the code does: one TDI per interface; STOP and
//! ERROR block every MMIO leaf of the TDI even under a blocked table; a RUN TDI loses RUN when
//! its keys or session die; the guest accepts only its TDI's page; a report lists every TDI or
//! is refused. Where #16 leaves the choice open (KM STOP under a running TDI: refuse it, or stop
//! the TDI), the model allows both and follows the machine.
//!
//! Steps: [`RUNS`] worlds of [`STEPS`] steps, seeded with [`DEFAULT_SEED`] unless
//! `SEAMLESS_MODEL_SEED` says otherwise (the seed is printed on failure).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use seamless_harness::assign::{device_config, pfn, BAR0_PAGES, BAR_BASE, BAR_GPA, FUNCTION, LOCK_FLAGS};
use seamless_harness::audit;
use seamless_harness::driver::{gpa_level, Machine, TdHandle};
use tdisp_device::{Device, InterfaceConfig, Reply, Signed};
use tsm::abi::host_tdi::PASID_VALID;
use tsm::abi::{guest::leaf as g, host::leaf as h};
use tsm::addr::PageSize;
use tsm::iommu::DmarState;
use tsm::pdev::{PdevState, StreamState};
use tsm::platform::PhysMem;
use tsm::sept::{SeptEntry, SeptState};
use tsm::tdi::TdiState;
use tsm::tdisp::TdiState as DevState;
use tsm::{Regs, Status};

/// Worlds per test run.
const RUNS: u64 = 16;
/// Random steps per world: RUNS × STEPS = 4000 per test run (after each world's running start).
const STEPS: usize = 250;
/// The seed unless `SEAMLESS_MODEL_SEED` is set.
const DEFAULT_SEED: u64 = 0x5EED_0016;
/// BAR0 pages the model maps (of [`BAR0_PAGES`]).
const PAGES: u64 = 4;
const MIB: u64 = 1 << 20;

// ---- defect gates: a move whose defect is not fixed on main yet is off -----------------------
// (Each constant names the defect of issue #16 its move exposes; the lead turns it on when the
// fix lands. The invariants and the model's rule stay on either way.)

/// #16 defect 1: the PASID twin (TDI.CREATE of F with a PASID while Main exists).
const TWIN_MOVE: bool = true;
/// #16 defect 2: blocking the table above the BAR before STOP.
const BLOCK_ABOVE_MOVE: bool = true;
/// #16 defect 3: KM STOP, a failed KM REFRESH, a failed KEY_UPDATE under a RUN TDI.
const KEY_DEATH_MOVES: bool = true;
/// #16 defect 4: TDG.TDI.RD of a 96-byte field to page offset 0xFC0.
const TDI_RD_ACROSS_MOVE: bool = true;
/// #16 defect 6: a fifth TDI on one TD.
const FIFTH_TDI_MOVE: bool = true;
/// #16 defect 8: MMIO.ACCEPT of another TDI's page.
const FOREIGN_ACCEPT_MOVE: bool = true;
/// #16 defect 9: a failed RECOLLECT after a good one.
const FAILED_RECOLLECT_MOVE: bool = true;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Who {
    Main,
    Twin,
    Extra(u8),
}

impl Who {
    fn function(self) -> u32 {
        match self {
            Who::Main | Who::Twin => FUNCTION,
            Who::Extra(k) => FUNCTION + 1 + u32::from(k),
        }
    }
    fn pasid(self) -> Option<u32> {
        (self == Who::Twin).then_some(1)
    }
    /// The function id register (PASID included) the TD names the TDI with.
    fn id(self) -> u64 {
        u64::from(self.function()) | self.pasid().map_or(0, |p| PASID_VALID | u64::from(p) << 32)
    }
    fn td(self) -> usize {
        usize::from(self == Who::Twin)
    }
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Connect,
    StreamSetup,
    StreamRefresh { fail: bool },
    StreamStop,
    KeyUpdate { fail: bool },
    Recollect { fail: bool },
    Create(Who),
    Lock(Who),
    Import(Who),
    Map(Who, u64),
    Accept(Who, u64),
    Block(usize, u64),
    Unmap(usize, u64),
    Start(Who),
    Stop(Who),
    Remove(Who),
    DmarAdd(Who),
    DmarAccept(Who),
    DmarBlock(Who),
    DmarRemove(Who),
    BlockAbove,
    UnblockAbove,
    Report,
    TdiRdAcross,
    ErrorAfterLock(bool),
    RefuseStart(bool),
}

/// What the model allows a call to end in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// SUCCESS.
    Ok,
    /// A warning: nothing changed.
    Warn,
    /// An error: nothing changed.
    Refused,
    /// DEVICE_ERROR: the device's fault is recorded.
    DeviceError,
    /// The guest call exited to the host.
    Exit,
    /// The operation does not apply to the model's state; nothing was called.
    Skip,
}

// ---- a small deterministic generator ----------------------------------------------------------

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn who(rng: &mut Rng) -> Who {
    match rng.below(10) {
        0..=5 => Who::Main,
        6 => Who::Twin,
        7 | 8 => Who::Extra(0),
        _ => Who::Extra(1 + rng.below(3) as u8),
    }
}

/// A random step: mostly one operation, sometimes the host's whole unbind (STOP, unmap,
/// DMA entry removed) or bind (lock, import, map, accept, DMA, start) of a TDI, so the walk
/// cycles through the lifecycle instead of stalling after the first STOP.
fn steps(rng: &mut Rng) -> Vec<Op> {
    let w = who(rng);
    match rng.below(24) {
        0 => {
            let mut v = vec![Op::Stop(w)];
            v.extend((0..PAGES).flat_map(|k| [Op::Block(w.td(), k), Op::Unmap(w.td(), k)]));
            v.extend([Op::DmarBlock(w), Op::DmarRemove(w), Op::UnblockAbove]);
            v.into_iter().filter(|&o| gated_in(o)).collect()
        }
        1 => {
            let mut v = vec![Op::StreamSetup, Op::Create(w), Op::Lock(w), Op::Import(w)];
            v.extend((0..PAGES).flat_map(|k| [Op::Map(w, k), Op::Accept(w, k)]));
            v.extend([Op::DmarAdd(w), Op::DmarAccept(w), Op::Start(w)]);
            v.into_iter().filter(|&o| gated_in(o)).collect()
        }
        _ => vec![op(rng)],
    }
}

/// A random operation; moves whose gate is off are drawn again.
fn op(rng: &mut Rng) -> Op {
    loop {
        let page = rng.below(PAGES);
        // Failures that end a stream or the session are rare: the world cannot recover a
        // failed PDEV (that needs every TDI gone), and a deep walk needs a live one.
        let fail = rng.below(16) == 0;
        let op = match rng.below(42) {
            0 => Op::Connect,
            1 => Op::StreamSetup,
            2 => Op::StreamRefresh { fail },
            3 if rng.below(2) == 0 => Op::StreamStop,
            3 => Op::StreamSetup,
            4 => Op::KeyUpdate { fail },
            5 => Op::Recollect { fail: rng.below(3) == 0 },
            6 | 7 => Op::Create(who(rng)),
            8..=10 => Op::Lock(who(rng)),
            11 | 12 => Op::Import(who(rng)),
            13..=16 => Op::Map(who(rng), page),
            17..=20 => Op::Accept(who(rng), page),
            21 | 22 => Op::Block(rng.below(2) as usize, page),
            23 | 24 => Op::Unmap(rng.below(2) as usize, page),
            25..=27 => Op::Start(who(rng)),
            28 | 29 => Op::Stop(who(rng)),
            30 => Op::Remove(who(rng)),
            31 | 32 => Op::DmarAdd(who(rng)),
            33 | 34 => Op::DmarAccept(who(rng)),
            35 => Op::DmarBlock(who(rng)),
            36 => Op::DmarRemove(who(rng)),
            // Rarely blocked, soon unblocked: a blocked table shuts the BAR's GPAs for a while.
            37 if rng.below(4) == 0 => Op::BlockAbove,
            37 | 38 => Op::UnblockAbove,
            39 => Op::Report,
            40 => Op::TdiRdAcross,
            _ if rng.below(2) == 0 => Op::ErrorAfterLock(rng.below(4) == 0),
            _ => Op::RefuseStart(rng.below(4) == 0),
        };
        if gated_in(op) {
            return op;
        }
    }
}

/// False for a move whose defect gate is off.
fn gated_in(op: Op) -> bool {
    match op {
        Op::Create(Who::Twin) | Op::Lock(Who::Twin) | Op::Start(Who::Twin) => TWIN_MOVE,
        Op::BlockAbove | Op::UnblockAbove => BLOCK_ABOVE_MOVE,
        Op::StreamStop | Op::StreamRefresh { fail: true } | Op::KeyUpdate { fail: true } => KEY_DEATH_MOVES,
        Op::TdiRdAcross => TDI_RD_ACROSS_MOVE,
        Op::Create(Who::Extra(k)) if k >= 1 => FIFTH_TDI_MOVE,
        Op::Accept(w, _) if w != Who::Main => FOREIGN_ACCEPT_MOVE,
        Op::Recollect { fail: true } => FAILED_RECOLLECT_MOVE,
        _ => true,
    }
}

// ---- the reference model ----------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MPdev {
    Absent,
    Connected,
    Error,
}

#[derive(Clone, Debug)]
struct MTdi {
    page: u64,
    state: TdiState,
    generation: u64,
    dmar: Option<DmarState>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct MLeaf {
    state: SeptState,
    owner: Who,
}

struct World {
    m: Machine,
    device: Device,
    tds: [TdHandle; 2],
    pdev_page: u64,
    msg: u64,
    // the model
    pdev: MPdev,
    stream: Option<(u64, StreamState)>,
    tdis: BTreeMap<Who, MTdi>,
    /// Who imported the report's ranges (both interfaces report the same frames).
    imported: Option<Who>,
    /// MMIO leaves by (TD, BAR page).
    leaves: BTreeMap<(usize, u64), MLeaf>,
    /// TD 0's level-1 entry above the BAR is blocked.
    above_blocked: bool,
    iommu: bool,
    devstate: BTreeMap<u32, DevState>,
    error_after_lock: bool,
    refuse_start: bool,
}

/// The device; with [`FOREIGN_ACCEPT_MOVE`] on, interface F+1 lies and reports F's frames.
fn lying_device() -> Device {
    let mut config = device_config();
    if !FOREIGN_ACCEPT_MOVE {
        return Device::new(config).expect("device");
    }
    let mut twin = config.interfaces[0].clone();
    twin.function_id = FUNCTION + 1;
    config.interfaces.push(InterfaceConfig { device_info: b"lying interface".to_vec(), ..twin });
    Device::new(config).expect("device")
}

impl World {
    fn new(device: &Device) -> World {
        let mut m = Machine::configured(16 * MIB);
        let mut tds = Vec::new();
        for _ in 0..2 {
            let td = m.running_td();
            m.aug_accept(&td, 0x1000, PageSize::Size4K);
            m.aug_accept(&td, 0x2000, PageSize::Size4K);
            m.map_tables(&td, BAR_GPA, 0);
            tds.push(td);
        }
        let blob = attest::platform::SecretBlob::new([0x42; 32], [3, 0, 0, 0, 0, 0, 8, 115], [0xc1; 64]);
        m.tsm.provision(&blob.to_bytes()).expect("provision");
        let pdev_page = m.page();
        let msg = m.scratch();
        let devstate = device.tdis().iter().map(|t| (t.config.function_id, t.state)).collect();
        World {
            m,
            device: device.clone(),
            tds: [tds[0].clone(), tds[1].clone()],
            pdev_page,
            msg,
            pdev: MPdev::Absent,
            stream: None,
            tdis: BTreeMap::new(),
            imported: None,
            leaves: BTreeMap::new(),
            above_blocked: false,
            iommu: false,
            devstate,
            error_after_lock: false,
            refuse_start: false,
        }
    }

    // ---- calls ----------------------------------------------------------------------------

    fn host(&mut self, leaf: u64, rcx: u64, rdx: u64, r8: u64, r9: u64) -> Regs {
        self.m.tsm.host_call(&Regs::call(leaf, rcx, rdx, r8, r9))
    }

    /// A guest call from TD `td`'s vCPU; an exit re-enters it (as the VMM would).
    fn guest(&mut self, td: usize, regs: Regs) -> (Status, bool) {
        let r = self.m.tsm.guest_call(self.tds[td].vcpus[0], &regs);
        let exited = r.exit.is_some();
        if exited {
            let e = self.host(h::VP_ENTER, self.tds[td].vcpus[0], 0, 0, 0);
            assert_eq!(e.status(), Status::SUCCESS, "re-enter after an exit");
        }
        (r.regs.status(), exited)
    }

    /// A resumable device call, pumped through the device.
    fn pump(&mut self, leaf: u64, rcx: u64, r9: u64) -> Regs {
        self.m.pump(&mut self.device, leaf, rcx, self.msg, r9)
    }

    /// Kick, TRACK, invalidate the IOTLB, enter again: every block of TD `td` so far retired.
    fn retire(&mut self, td: usize) {
        let (tdr, vcpu) = (self.tds[td].tdr, self.tds[td].vcpus[0]);
        assert_eq!(self.host(h::VP_KICK, vcpu, 0, 0, 0).status(), Status::SUCCESS);
        assert_eq!(self.host(h::MEM_TRACK, tdr, 0, 0, 0).status(), Status::SUCCESS);
        if self.iommu {
            // Refused when the TD has no DMA entry: then it has nothing in the IOTLB either.
            self.host(h::IQ_INV_REQUEST, tdr, 0, 0, 0);
        }
        assert_eq!(self.host(h::VP_ENTER, vcpu, 0, 0, 0).status(), Status::SUCCESS);
    }

    fn stream_secure(&self) -> bool {
        self.pdev == MPdev::Connected && matches!(self.stream, Some((_, StreamState::Secure)))
    }

    fn live(&self, w: Who) -> bool {
        self.tdis.get(&w).is_some_and(|t| matches!(t.state, TdiState::Locked | TdiState::Run))
    }

    // ---- model transitions shared by several calls ----------------------------------------

    /// A TDI stops being reachable: every MMIO leaf of it blocked, its DMA entry blocked.
    fn cut_off(&mut self, w: Who) {
        for leaf in self.leaves.values_mut().filter(|l| l.owner == w) {
            leaf.state = SeptState::MmioBlocked;
        }
        if let Some(t) = self.tdis.get_mut(&w) {
            if matches!(t.dmar, Some(DmarState::Added | DmarState::Accepted)) {
                t.dmar = Some(DmarState::Blocked);
            }
        }
    }

    fn fail_tdi(&mut self, w: Who) {
        if let Some(t) = self.tdis.get_mut(&w) {
            t.state = TdiState::Error;
        }
        self.cut_off(w);
    }

    /// Every locked or running TDI goes to ERROR (its keys or its session died).
    fn fail_live_tdis(&mut self) {
        let live: Vec<Who> = self.tdis.keys().copied().filter(|&w| self.live(w)).collect();
        for w in live {
            self.fail_tdi(w);
        }
    }

    fn device_has(&self, w: Who) -> bool {
        self.devstate.contains_key(&w.function())
    }

    // ---- one step: predict, call, compare -------------------------------------------------

    /// Runs `op`, returns what it ended in; the model follows.
    fn step(&mut self, op: Op) -> (Outcome, &'static [Outcome]) {
        use Outcome::*;
        match op {
            Op::Connect => {
                if self.pdev != MPdev::Absent {
                    return (Skip, &[Skip]);
                }
                let r = self.host(h::SPDM_CREATE, self.pdev_page, u64::from(FUNCTION), 0, 0);
                assert_eq!(r.status(), Status::SUCCESS, "SPDM.CREATE");
                let r = self.pump(h::SPDM_CONNECT, self.pdev_page, 0);
                self.pdev = MPdev::Connected;
                (outcome(r.status()), &[Ok])
            }
            Op::StreamSetup => self.stream_setup(),
            Op::StreamRefresh { fail } => self.stream_km(1, fail),
            Op::StreamStop => self.stream_km(2, false),
            Op::KeyUpdate { fail } => self.key_update(fail),
            Op::Recollect { fail } => self.recollect(fail),
            Op::Create(w) => self.create(w),
            Op::Lock(w) => self.lock(w),
            Op::Import(w) => self.import(w),
            Op::Map(w, k) => self.map(w, k),
            Op::Accept(w, k) => self.accept(w, k),
            Op::Block(td, k) => self.block(td, k),
            Op::Unmap(td, k) => self.unmap(td, k),
            Op::Start(w) => self.start(w),
            Op::Stop(w) => self.stop(w),
            Op::Remove(w) => self.remove(w),
            Op::DmarAdd(w) => self.dmar_add(w),
            Op::DmarAccept(w) => self.dmar_accept(w),
            Op::DmarBlock(w) => self.dmar_block(w),
            Op::DmarRemove(w) => self.dmar_remove(w),
            Op::BlockAbove => {
                let r = self.host(h::MEM_RANGE_BLOCK, gpa_level(BAR_GPA, 1), self.tds[0].tdr, 0, 0);
                let want: &[Outcome] = if self.above_blocked { &[Warn] } else { &[Ok] };
                self.above_blocked = true;
                (outcome(r.status()), want)
            }
            Op::UnblockAbove => {
                self.retire(0);
                let r = self.host(h::MEM_RANGE_UNBLOCK, gpa_level(BAR_GPA, 1), self.tds[0].tdr, 0, 0);
                let want: &[Outcome] = if self.above_blocked { &[Ok] } else { &[Refused] };
                self.above_blocked = false;
                (outcome(r.status()), want)
            }
            Op::Report => self.report(),
            Op::TdiRdAcross => {
                // A 96-byte field (the evidence digests) to page offset 0xFC0 of a mapped page.
                let call = Regs::call(g::TDI_RD, Who::Main.id(), 3, 0x1000 + 0xFC0, 0);
                let (s, _) = self.guest(0, call);
                (outcome(s), &[Refused])
            }
            Op::ErrorAfterLock(on) => {
                self.device.faults_mut().error_after_lock = on;
                self.error_after_lock = on;
                (Skip, &[Skip])
            }
            Op::RefuseStart(on) => {
                self.device.faults_mut().refuse_start = on;
                self.refuse_start = on;
                (Skip, &[Skip])
            }
        }
    }

    fn stream_setup(&mut self) -> (Outcome, &'static [Outcome]) {
        use Outcome::*;
        if let Some((index, StreamState::Error)) = self.stream {
            // A failed stream is blocked and deleted before a new one is made.
            let r = self.host(h::IDE_STREAM_BLOCK, self.pdev_page, index, 0, 0);
            assert_eq!(r.status(), Status::SUCCESS, "IDE.STREAM.BLOCK {r:x?}");
            self.fail_live_tdis();
            let r = self.host(h::IDE_STREAM_DELETE, self.pdev_page, index, 0, 0);
            assert_eq!(r.status(), Status::SUCCESS, "IDE.STREAM.DELETE {r:x?}");
            self.stream = None;
        }
        let (index, state) = match self.stream {
            None => {
                let r = self.host(h::IDE_STREAM_CREATE, self.pdev_page, 1, 0, 0);
                if self.pdev != MPdev::Connected {
                    return (outcome(r.status()), &[Refused]);
                }
                assert_eq!(r.status(), Status::SUCCESS, "IDE.STREAM.CREATE");
                self.stream = Some((r.rcx, StreamState::Created));
                (r.rcx, StreamState::Created)
            }
            Some(s) => s,
        };
        let r = self.pump(h::IDE_STREAM_KM, self.pdev_page, index);
        if self.pdev == MPdev::Connected && matches!(state, StreamState::Created | StreamState::Stopped) {
            self.stream = Some((index, StreamState::Secure));
            return (outcome(r.status()), &[Ok]);
        }
        (outcome(r.status()), &[Refused])
    }

    /// KM REFRESH (1) or STOP (2). A failed REFRESH (the device cuts an IDE_KM answer short)
    /// puts the stream in ERROR; a STOP under a live TDI is refused or stops the TDI.
    fn stream_km(&mut self, km: u64, fail: bool) -> (Outcome, &'static [Outcome]) {
        use Outcome::*;
        let Some((index, _)) = self.stream else { return (Skip, &[Skip]) };
        self.device.faults_mut().truncate = fail.then_some(Reply::IdeKm);
        let r = self.pump(h::IDE_STREAM_KM, self.pdev_page, index | km << 8);
        self.device.faults_mut().truncate = None;
        let got = outcome(r.status());
        if !self.stream_secure() {
            return (got, &[Refused]);
        }
        if fail {
            self.stream = Some((index, StreamState::Error));
            self.fail_live_tdis();
            return (got, &[DeviceError]);
        }
        if km == 1 {
            return (got, &[Ok]);
        }
        let tdis_live = self.tdis.keys().any(|&w| self.live(w));
        if got == Ok {
            self.stream = Some((index, StreamState::Stopped));
            self.fail_live_tdis();
        }
        (got, if tdis_live { &[Ok, Refused] } else { &[Ok] })
    }

    fn key_update(&mut self, fail: bool) -> (Outcome, &'static [Outcome]) {
        use Outcome::*;
        self.device.faults_mut().truncate = fail.then_some(Reply::KeyUpdateAck);
        let r = self.pump(h::SPDM_MNG, self.pdev_page, tsm::abi::host_pdev::mng::KEY_UPDATE);
        self.device.faults_mut().truncate = None;
        if self.pdev != MPdev::Connected {
            return (outcome(r.status()), &[Refused]);
        }
        if fail {
            // The session is gone: the PDEV fails, and with it its live streams and TDIs.
            self.pdev = MPdev::Error;
            if let Some((i, StreamState::Secure)) = self.stream {
                self.stream = Some((i, StreamState::Error));
            }
            self.fail_live_tdis();
            return (outcome(r.status()), &[DeviceError]);
        }
        (outcome(r.status()), &[Ok])
    }

    fn recollect(&mut self, fail: bool) -> (Outcome, &'static [Outcome]) {
        use Outcome::*;
        self.device.faults_mut().bad_signature = fail.then_some(Signed::Measurements);
        let r = self.pump(h::SPDM_MNG, self.pdev_page, tsm::abi::host_pdev::mng::RECOLLECT);
        self.device.faults_mut().bad_signature = None;
        match (self.pdev, fail) {
            (MPdev::Connected, false) => (outcome(r.status()), &[Ok]),
            // The PDEV stays CONNECTED: a failed re-measurement proves nothing new.
            (MPdev::Connected, true) => (outcome(r.status()), &[DeviceError]),
            _ => (outcome(r.status()), &[Refused]),
        }
    }

    fn create(&mut self, w: Who) -> (Outcome, &'static [Outcome]) {
        use Outcome::*;
        if self.tdis.contains_key(&w) {
            return (Skip, &[Skip]);
        }
        let page = self.m.page();
        let td = &self.tds[w.td()];
        let r = self.host(h::TDI_CREATE, td.tdr, self.pdev_page, page, w.id());
        let got = outcome(r.status());
        if got != Ok {
            self.m.release(page);
        }
        let interface_taken = self.tdis.keys().any(|o| o.function() == w.function());
        if self.pdev != MPdev::Connected || interface_taken {
            return (got, &[Refused]);
        }
        let on_td0 = self.tdis.keys().filter(|o| o.td() == 0).count();
        if got == Ok {
            self.tdis.insert(w, MTdi { page, state: TdiState::Unlocked, generation: 0, dmar: None });
        }
        // A fifth TDI on one TD: refused here, or bound and then the report is refused.
        if w.td() == 0 && on_td0 >= attest::report::MAX_DEVICES {
            return (got, &[Ok, Refused]);
        }
        (got, &[Ok])
    }

    fn lock(&mut self, w: Who) -> (Outcome, &'static [Outcome]) {
        use Outcome::*;
        let Some(t) = self.tdis.get(&w).cloned() else { return (Skip, &[Skip]) };
        let stream = self.stream.map_or(0, |s| s.0);
        let r = self.pump(h::TDI_LOCK, t.page, LOCK_FLAGS | stream << 16);
        let got = outcome(r.status());
        let mapped = self.leaves.values().any(|l| l.owner == w);
        if t.state != TdiState::Unlocked || mapped || t.dmar.is_some() || !self.stream_secure() {
            return (got, &[Refused]);
        }
        if self.imported == Some(w) {
            self.imported = None;
        }
        let dev = self.devstate.get(&w.function()).copied();
        if dev != Some(DevState::ConfigUnlocked) {
            self.fail_tdi(w);
            return (got, &[DeviceError]);
        }
        if self.error_after_lock {
            self.devstate.insert(w.function(), DevState::Error);
            self.fail_tdi(w);
            return (got, &[DeviceError]);
        }
        self.devstate.insert(w.function(), DevState::ConfigLocked);
        let t = self.tdis.get_mut(&w).unwrap();
        t.state = TdiState::Locked;
        t.generation = r.rcx;
        (got, &[Ok])
    }

    fn import(&mut self, w: Who) -> (Outcome, &'static [Outcome]) {
        use Outcome::*;
        let Some(t) = self.tdis.get(&w).cloned() else { return (Skip, &[Skip]) };
        let s = self.m.tsm.tdi_summary(pfn(t.page)).unwrap();
        let range = s.ranges[0];
        let r = self.host(h::DMABUF_IMPORT, t.page, range.first << 12, range.pages, 0);
        let got = outcome(r.status());
        if !self.live(w) || self.imported.is_some() {
            return (got, &[Refused]);
        }
        assert_eq!(range.first << 12, BAR_BASE, "the report's range 0 is BAR0");
        self.imported = Some(w);
        (got, &[Ok])
    }

    /// MMIO.MAP of BAR page `k` into `w`'s TD.
    fn map(&mut self, w: Who, k: u64) -> (Outcome, &'static [Outcome]) {
        use Outcome::*;
        let td = w.td();
        let r = self.host(h::MMIO_MAP, gpa_level(BAR_GPA + k * 4096, 0), self.tds[td].tdr, BAR_BASE + k * 4096, 0);
        let got = outcome(r.status());
        // The frame names its TDI: whoever imported it, if bound to this TD.
        let Some(owner) = self.imported.filter(|o| o.td() == td) else { return (got, &[Refused]) };
        let ok = self.live(owner)
            && self.stream_secure()
            && !(td == 0 && self.above_blocked)
            && !self.leaves.contains_key(&(td, k));
        if !ok {
            return (got, &[Refused]);
        }
        self.leaves.insert((td, k), MLeaf { state: SeptState::MmioPending, owner });
        (got, &[Ok])
    }

    /// The guest of `w`'s TD accepts BAR page `k` as page `k` of `w`'s range 0.
    fn accept(&mut self, w: Who, k: u64) -> (Outcome, &'static [Outcome]) {
        use Outcome::*;
        let td = w.td();
        let call = Regs { r9: k * 4096, ..Regs::call(g::MMIO_ACCEPT, gpa_level(BAR_GPA + k * 4096, 0), 0, w.id(), 0) };
        let (s, exited) = self.guest(td, call);
        let got = if exited { Exit } else { outcome(s) };
        if !self.live(w) {
            return (got, &[Refused]);
        }
        if td == 0 && self.above_blocked {
            return (got, &[Exit]);
        }
        match self.leaves.get(&(td, k)).copied() {
            None => (got, &[Exit]),
            // A blocked leaf exits to the host, whoever it belongs to (or is refused as not
            // this TDI's): either way the guest gains nothing.
            Some(l) if l.state == SeptState::MmioBlocked && l.owner != w => (got, &[Exit, Refused]),
            Some(l) if l.owner != w => (got, &[Refused]),
            Some(l) if l.state == SeptState::MmioPending => {
                self.leaves.insert((td, k), MLeaf { state: SeptState::MmioMapped, owner: w });
                (got, &[Ok])
            }
            Some(l) if l.state == SeptState::MmioMapped => (got, &[Warn]),
            Some(_) => (got, &[Exit]),
        }
    }

    fn block(&mut self, td: usize, k: u64) -> (Outcome, &'static [Outcome]) {
        use Outcome::*;
        let r = self.host(h::MMIO_BLOCK, gpa_level(BAR_GPA + k * 4096, 0), self.tds[td].tdr, 0, 0);
        let got = outcome(r.status());
        if td == 0 && self.above_blocked {
            return (got, &[Refused]);
        }
        match self.leaves.get_mut(&(td, k)) {
            None => (got, &[Refused]),
            Some(l) if l.state == SeptState::MmioBlocked => (got, &[Warn]),
            Some(l) => {
                l.state = SeptState::MmioBlocked;
                (got, &[Ok])
            }
        }
    }

    fn unmap(&mut self, td: usize, k: u64) -> (Outcome, &'static [Outcome]) {
        use Outcome::*;
        self.retire(td);
        let r = self.host(h::MMIO_UNMAP, gpa_level(BAR_GPA + k * 4096, 0), self.tds[td].tdr, 0, 0);
        let got = outcome(r.status());
        if td == 0 && self.above_blocked {
            return (got, &[Refused]);
        }
        match self.leaves.get(&(td, k)).copied() {
            Some(l)
                if l.state == SeptState::MmioBlocked
                    && self.tdis.get(&l.owner).is_some_and(|t| t.state == TdiState::Unlocked) =>
            {
                self.leaves.remove(&(td, k));
                (got, &[Ok])
            }
            _ => (got, &[Refused]),
        }
    }

    /// The guest authorises START for the current lock, then the host starts.
    fn start(&mut self, w: Who) -> (Outcome, &'static [Outcome]) {
        use Outcome::*;
        let Some(t) = self.tdis.get(&w).cloned() else { return (Skip, &[Skip]) };
        let (s, _) = self.guest(w.td(), Regs::call(g::TDI_START, w.id(), t.generation, 0, 0));
        if t.state != TdiState::Locked {
            assert!(s.is_error(), "TDG.TDI.START of a TDI not locked: {s:?}");
        } else {
            assert_eq!(s, Status::SUCCESS, "TDG.TDI.START");
        }
        let r = self.pump(h::TDI_START, t.page, 0);
        let got = outcome(r.status());
        if t.state != TdiState::Locked || !self.stream_secure() {
            return (got, &[Refused]);
        }
        if self.refuse_start || self.devstate.get(&w.function()) != Some(&DevState::ConfigLocked) {
            self.fail_tdi(w);
            return (got, &[DeviceError]);
        }
        self.devstate.insert(w.function(), DevState::Run);
        self.tdis.get_mut(&w).unwrap().state = TdiState::Run;
        (got, &[Ok])
    }

    fn stop(&mut self, w: Who) -> (Outcome, &'static [Outcome]) {
        use Outcome::*;
        let Some(t) = self.tdis.get(&w).cloned() else { return (Skip, &[Skip]) };
        let r = self.pump(h::TDI_STOP, t.page, 0);
        let got = outcome(r.status());
        if t.state == TdiState::Unlocked {
            return (got, &[Refused]);
        }
        if self.pdev == MPdev::Connected {
            if !self.device_has(w) {
                self.fail_tdi(w);
                return (got, &[DeviceError]);
            }
            self.devstate.insert(w.function(), DevState::ConfigUnlocked);
        }
        self.tdis.get_mut(&w).unwrap().state = TdiState::Unlocked;
        self.cut_off(w);
        (got, &[Ok])
    }

    fn remove(&mut self, w: Who) -> (Outcome, &'static [Outcome]) {
        use Outcome::*;
        let Some(t) = self.tdis.get(&w).cloned() else { return (Skip, &[Skip]) };
        let r = self.host(h::TDI_REMOVE, t.page, 0, 0, 0);
        let got = outcome(r.status());
        let mapped = self.leaves.values().any(|l| l.owner == w);
        if t.state != TdiState::Unlocked || mapped || t.dmar.is_some() {
            return (got, &[Refused]);
        }
        self.tdis.remove(&w);
        if self.imported == Some(w) {
            self.imported = None;
        }
        self.m.release(t.page);
        (got, &[Ok])
    }

    fn dmar_add(&mut self, w: Who) -> (Outcome, &'static [Outcome]) {
        use Outcome::*;
        let Some(t) = self.tdis.get(&w).cloned() else { return (Skip, &[Skip]) };
        if !self.iommu {
            let root = self.m.page();
            assert_eq!(self.host(h::IOMMU_SETUP, root, 0, 0, 0).status(), Status::SUCCESS, "IOMMU.SETUP");
            self.iommu = true;
        }
        let frames = [self.m.page(), self.m.page(), self.m.page()];
        let call =
            Regs { r10: frames[2], ..Regs::call(h::DMAR_ADD, self.tds[w.td()].tdr, t.page, frames[0], frames[1]) };
        let r = self.m.tsm.host_call(&call);
        let used = if r.status() == Status::SUCCESS { r.rcx } else { 0 };
        for (i, &f) in frames.iter().enumerate() {
            if used & 1 << i == 0 {
                self.m.release(f);
            }
        }
        let got = outcome(r.status());
        if !self.live(w) || t.dmar.is_some() {
            return (got, &[Refused]);
        }
        self.tdis.get_mut(&w).unwrap().dmar = Some(DmarState::Added);
        (got, &[Ok])
    }

    fn dmar_accept(&mut self, w: Who) -> (Outcome, &'static [Outcome]) {
        use Outcome::*;
        let Some(t) = self.tdis.get(&w).cloned() else { return (Skip, &[Skip]) };
        let (s, _) = self.guest(w.td(), Regs::call(g::DMAR_ACCEPT, w.id(), 0, 0, 0));
        let got = outcome(s);
        match (self.live(w), t.dmar) {
            (true, Some(DmarState::Added)) => {
                self.tdis.get_mut(&w).unwrap().dmar = Some(DmarState::Accepted);
                (got, &[Ok])
            }
            (true, Some(DmarState::Accepted)) => (got, &[Warn]),
            _ => (got, &[Refused]),
        }
    }

    fn dmar_block(&mut self, w: Who) -> (Outcome, &'static [Outcome]) {
        use Outcome::*;
        let Some(t) = self.tdis.get(&w).cloned() else { return (Skip, &[Skip]) };
        let r = self.host(h::DMAR_BLOCK, t.page, 0, 0, 0);
        let got = outcome(r.status());
        match t.dmar {
            Some(DmarState::Added | DmarState::Accepted) => {
                self.tdis.get_mut(&w).unwrap().dmar = Some(DmarState::Blocked);
                (got, &[Ok])
            }
            Some(DmarState::Blocked) => (got, &[Refused, Warn]),
            None => (got, &[Refused]),
        }
    }

    fn dmar_remove(&mut self, w: Who) -> (Outcome, &'static [Outcome]) {
        use Outcome::*;
        let Some(t) = self.tdis.get(&w).cloned() else { return (Skip, &[Skip]) };
        self.retire(w.td());
        let r = self.host(h::DMAR_REMOVE, t.page, 0, 0, 0);
        let got = outcome(r.status());
        if t.dmar != Some(DmarState::Blocked) {
            return (got, &[Refused]);
        }
        self.tdis.get_mut(&w).unwrap().dmar = None;
        (got, &[Ok])
    }

    /// TD 0 asks for its native report: it lists every TDI bound to TD 0, or is refused.
    fn report(&mut self) -> (Outcome, &'static [Outcome]) {
        use Outcome::*;
        let (s, _) = self.guest(0, Regs::call(g::MR_ATTEST, 0x1000, 0x2000, 0, 0));
        let got = outcome(s);
        let bound = self.tdis.keys().filter(|w| w.td() == 0).count();
        if got == Ok {
            let mut bytes = vec![0u8; attest::report::REPORT_BYTES];
            let frame = self.guest_frame(0, 0x1000);
            self.m.tsm.platform().read_bytes(frame, 0, &mut bytes);
            let report = attest::report::Report::read_from(&bytes).expect("the report parses");
            assert_eq!(report.devices().len(), bound, "the report lists every TDI bound to the TD");
        }
        (got, if bound > attest::report::MAX_DEVICES { &[Refused] } else { &[Ok] })
    }

    fn guest_frame(&self, td: usize, gpa: u64) -> tsm::addr::Pfn {
        entry_at(&self.m, self.tds[td].tdr, gpa).pfn()
    }

    // ---- the model against the machine ----------------------------------------------------

    fn compare(&self, what: &dyn core::fmt::Debug) {
        let p = self.m.tsm.pdev_summary(pfn(self.pdev_page));
        let pdev = match p.as_ref().map(|p| p.state) {
            None | Some(PdevState::New) => MPdev::Absent,
            Some(PdevState::Connected) => MPdev::Connected,
            Some(PdevState::Error | PdevState::Stopped) => MPdev::Error,
        };
        assert_eq!(pdev, self.pdev, "after {what:?}: PDEV");
        if let (Some(p), Some((i, s))) = (&p, self.stream) {
            assert_eq!(p.streams[i as usize].map(|x| x.0), Some(s), "after {what:?}: stream");
        }
        for (w, t) in &self.tdis {
            let s = self.m.tsm.tdi_summary(pfn(t.page)).unwrap_or_else(|| panic!("after {what:?}: {w:?} missing"));
            assert_eq!(s.state, t.state, "after {what:?}: {w:?} state");
            assert_eq!(s.dmar, t.dmar, "after {what:?}: {w:?} DMA entry");
        }
        for td in 0..2 {
            for k in 0..PAGES {
                let e = entry_at(&self.m, self.tds[td].tdr, BAR_GPA + k * 4096);
                let model = self.leaves.get(&(td, k));
                let found = (e.state() != SeptState::Free).then(|| (e.state(), e.pfn().addr().raw()));
                assert_eq!(
                    found,
                    model.map(|l| (l.state, BAR_BASE + k * 4096)),
                    "after {what:?}: TD {td} BAR page {k}"
                );
            }
        }
        for d in self.device.tdis() {
            assert_eq!(Some(&d.state), self.devstate.get(&d.config.function_id), "after {what:?}: device state");
        }
        audit::assert_invariants(&self.m.tsm, what);
        if let Err(e) = audit::check_device(&self.m.tsm, &self.device) {
            panic!("after {what:?}: {e}");
        }
    }
}

fn outcome(s: Status) -> Outcome {
    match s.code() {
        Status::SUCCESS => Outcome::Ok,
        Status::DEVICE_ERROR => Outcome::DeviceError,
        c if c == Status::PAGE_ALREADY_ACCEPTED || c == Status::GPA_RANGE_ALREADY_BLOCKED => Outcome::Warn,
        _ if s.is_error() => Outcome::Refused,
        _ => Outcome::Warn,
    }
}

/// The S-EPT entry mapping `gpa` at the lowest level reached, through blocked tables too.
fn entry_at(m: &Machine, tdr: u64, gpa: u64) -> SeptEntry {
    let td = m.tsm.td_summary(pfn(tdr)).unwrap();
    let (mut table, mut l) = (td.sept_root, td.root_level);
    loop {
        let idx = ((gpa >> (12 + 9 * u64::from(l))) & 511) as usize;
        let e = SeptEntry::decode(m.tsm.platform().mem.read_u64(table, idx)).unwrap();
        if l == 0 || !e.state().is_table() {
            return e;
        }
        table = e.pfn();
        l -= 1;
    }
}

/// Successful steps per kind of operation (the random test asserts it reached the deep ones).
type Coverage = BTreeMap<String, u32>;

fn kind(op: &Op) -> String {
    let s = format!("{op:?}");
    s.split(['(', ' ']).next().unwrap_or_default().to_string()
}

/// Runs `ops` on a fresh world; every step is predicted, compared and audited.
fn run(device: &Device, ops: &[Op], counted_from: usize, label: &str) -> Coverage {
    let mut coverage = Coverage::new();
    let mut w = World::new(device);
    w.compare(&"the start");
    for (i, &op) in ops.iter().enumerate() {
        let before = (w.m.tsm.platform().mem.writes(), w.m.tsm.device_summaries());
        let (got, allowed) = w.step(op);
        // The invariants first: they, not the model, must catch each attack's class.
        let what = format!("{label} step {i}: {op:?}");
        audit::assert_invariants(&w.m.tsm, &what);
        assert!(
            allowed.contains(&got),
            "{what} ended {got:?}, the model allows {allowed:?}; model TDIs {:?}, leaves {:?}, above blocked {}",
            w.tdis,
            w.leaves,
            w.above_blocked
        );
        // Calls a step makes before the one it checks (retiring blocks, IOMMU setup, the
        // guest's authorisation) change the machine on their own.
        let helpers = matches!(
            op,
            Op::Unmap(..) | Op::UnblockAbove | Op::DmarRemove(_) | Op::DmarAdd(_) | Op::Start(_) | Op::StreamSetup
        );
        if matches!(got, Outcome::Refused | Outcome::Warn) && !helpers {
            let after = (w.m.tsm.platform().mem.writes(), w.m.tsm.device_summaries());
            assert!(before == after, "{label} step {i}: {op:?} was refused but changed the machine");
        }
        w.compare(&what);
        if i < counted_from {
            continue;
        }
        if got == Outcome::Ok {
            *coverage.entry(kind(&op)).or_default() += 1;
        }
        if w.tdis.values().any(|t| t.state == TdiState::Run) {
            *coverage.entry("steps with a TDI in RUN".into()).or_default() += 1;
        }
    }
    coverage
}

/// `SEAMLESS_MODEL_SEED` (decimal, or hex with 0x), else [`DEFAULT_SEED`].
fn seed() -> u64 {
    let Ok(s) = std::env::var("SEAMLESS_MODEL_SEED") else { return DEFAULT_SEED };
    let parsed = match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse(),
    };
    parsed.expect("SEAMLESS_MODEL_SEED: a number (decimal, or hex with 0x)")
}

#[test]
fn random_assignment_sequences_match_the_model() {
    let device = lying_device();
    let seed = seed();
    let mut coverage = Coverage::new();
    for run_no in 0..RUNS {
        let mut rng = Rng(seed ^ run_no.wrapping_mul(0xA076_1D64_78BD_642F));
        // Every world starts from a running Main (BAR pages mapped and accepted, DMA accepted);
        // only the random steps count for coverage.
        let mut ops = running();
        let start = ops.len();
        while ops.len() < start + STEPS {
            ops.extend(steps(&mut rng));
        }
        for (k, n) in run(&device, &ops, start, &format!("seed {seed:#x} run {run_no}")) {
            *coverage.entry(k).or_default() += n;
        }
    }
    println!("successful steps by kind: {coverage:?}");
    // The random walk must get deep: a model test that never runs a TDI proves little.
    for k in
        ["Lock", "Import", "Map", "Accept", "Start", "Stop", "Unmap", "DmarAccept", "Report", "steps with a TDI in RUN"]
    {
        assert!(coverage.get(k).copied().unwrap_or(0) >= 3, "only {:?} successful {k} steps", coverage.get(k));
    }
}

/// The canonical flow to a running Main with BAR pages mapped and accepted, as model steps.
fn running() -> Vec<Op> {
    let mut ops = vec![Op::Connect, Op::StreamSetup, Op::Create(Who::Main), Op::Lock(Who::Main), Op::Import(Who::Main)];
    for k in 0..PAGES {
        ops.extend([Op::Map(Who::Main, k), Op::Accept(Who::Main, k)]);
    }
    ops.extend([Op::DmarAdd(Who::Main), Op::DmarAccept(Who::Main), Op::Start(Who::Main)]);
    ops
}

#[test]
fn the_canonical_flow_and_teardown_match_the_model() {
    let mut ops = running();
    ops.extend([
        Op::Report,
        Op::KeyUpdate { fail: false },
        Op::Recollect { fail: false },
        Op::StreamRefresh { fail: false },
    ]);
    ops.push(Op::Stop(Who::Main));
    for k in 0..PAGES {
        ops.push(Op::Unmap(0, k));
    }
    ops.extend([Op::DmarRemove(Who::Main), Op::Remove(Who::Main)]);
    run(&lying_device(), &ops, 0, "canonical");
}

#[test]
fn attack_the_pasid_twin_cannot_bind_a_running_interface() {
    if !TWIN_MOVE {
        return;
    }
    let mut ops = running();
    ops.extend([
        Op::Create(Who::Twin),
        Op::Lock(Who::Twin),
        Op::Stop(Who::Twin),
        Op::Lock(Who::Twin),
        Op::Start(Who::Twin),
    ]);
    run(&lying_device(), &ops, 0, "twin");
}

#[test]
fn attack_blocking_the_table_above_the_bar_before_stop_leaves_nothing_mapped() {
    if !BLOCK_ABOVE_MOVE {
        return;
    }
    let mut ops = running();
    ops.extend([Op::BlockAbove, Op::Stop(Who::Main), Op::UnblockAbove, Op::Accept(Who::Main, 0)]);
    run(&lying_device(), &ops, 0, "block above");
}

#[test]
fn attack_the_keys_die_under_a_running_tdi() {
    if !KEY_DEATH_MOVES {
        return;
    }
    for last in [Op::StreamStop, Op::StreamRefresh { fail: true }, Op::KeyUpdate { fail: true }] {
        let mut ops = running();
        ops.push(last);
        run(&lying_device(), &ops, 0, &format!("{last:?}"));
    }
}

#[test]
fn attack_tdi_rd_at_page_offset_0xfc0_is_refused() {
    if !TDI_RD_ACROSS_MOVE {
        return;
    }
    let mut ops = running();
    ops.push(Op::TdiRdAcross);
    run(&lying_device(), &ops, 0, "tdi.rd 0xfc0");
}

#[test]
fn attack_five_tdis_on_one_td_are_all_reported_or_refused() {
    if !FIFTH_TDI_MOVE {
        return;
    }
    let mut ops = running();
    ops.extend([Op::Create(Who::Extra(0)), Op::Create(Who::Extra(1)), Op::Create(Who::Extra(2)), Op::Report]);
    ops.extend([Op::Create(Who::Extra(3)), Op::Report]);
    run(&lying_device(), &ops, 0, "five tdis");
}

#[test]
fn attack_accepting_another_tdis_page_is_refused() {
    if !FOREIGN_ACCEPT_MOVE {
        return;
    }
    let mut ops = vec![Op::Connect, Op::StreamSetup, Op::Create(Who::Main), Op::Lock(Who::Main), Op::Import(Who::Main)];
    ops.extend([
        Op::Map(Who::Main, 0),
        Op::Create(Who::Extra(0)),
        Op::Lock(Who::Extra(0)),
        Op::Accept(Who::Extra(0), 0),
    ]);
    run(&lying_device(), &ops, 0, "foreign accept");
}

#[test]
fn attack_a_failed_recollect_keeps_the_evidence_the_report_binds() {
    if !FAILED_RECOLLECT_MOVE {
        return;
    }
    let mut ops = running();
    ops.extend([Op::Recollect { fail: false }, Op::Recollect { fail: true }, Op::Report]);
    run(&lying_device(), &ops, 0, "failed recollect");
}

/// BAR0 holds more pages than the model maps.
const _: () = assert!(PAGES <= BAR0_PAGES as u64);
