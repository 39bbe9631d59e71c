//! The host and the guest as attackers of the ABI, driven by a fuzz input: arbitrary call
//! sequences through the harness's [`Machine`] (the real dispatchers over simulated memory), with
//! device assignment behind the message page (an in-process `tdisp-device` answers every
//! DEVICE_REQUEST; the input may corrupt, replay or forge answers). After every single call the
//! invariants are read off the machine:
//! - the status is a documented one;
//! - a failed call wrote nothing and changed no TD, PDEV or TDI (DEVICE_ERROR excepted: it
//!   records the device's fault, which is the point of it);
//! - the TSM's global invariants (`tsm::audit`, through `seamless_harness::audit`): memory and
//!   MMIO ownership, one TDI per interface, RUN is live, every TDI in its TD's report, evidence
//!   that hashes to the signed digests;
//! - a TDI the TSM holds in RUN is RUN on the device.

use std::sync::OnceLock;

use attest::platform::SecretBlob;
use seamless_harness::assign::{device_config, pfn, BAR0_PAGES, BAR_BASE, BAR_GPA, FUNCTION, LOCK_FLAGS};
use seamless_harness::driver::{gpa_level, Machine, TdHandle, TDMR_BASE};
use tdisp_device::Device;
use tsm::abi::guest::leaf as g;
use tsm::abi::host::leaf as h;
use tsm::addr::PageSize;
use tsm::devices::{PdevSummary, TdiSummary};
use tsm::{Regs, Status, TdSummary, Tsm};

use crate::wire::Reader;

const MIB: u64 = 1 << 20;
/// Device answers a pumped call takes at most (a connection needs about 20).
const MAX_ROUNDS: usize = 64;

/// What a failed call must leave as it was.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    writes: u64,
    tds: Vec<Option<TdSummary>>,
    pdev: Option<PdevSummary>,
    tdi: Option<TdiSummary>,
}

/// A corruption of the `k`-th device answer of a pumped call: byte `pos` (mod length) XOR `x`.
#[derive(Clone, Copy, Debug)]
pub struct Corruption {
    /// Which answer.
    pub k: u8,
    /// Where.
    pub pos: u16,
    /// With what (non-zero).
    pub x: u8,
}

/// The machine, its two running TDs, the device and the host's bookkeeping.
#[derive(Debug)]
pub struct World {
    /// The machine.
    pub m: Machine,
    /// The device behind the message page.
    pub device: Device,
    /// TD 0 (the device is assigned to it) and TD 1.
    pub tds: [TdHandle; 2],
    /// The PDEV page.
    pub pdev: u64,
    /// The message page.
    pub msg: u64,
    /// The TDI page.
    pub tdi: u64,
    /// The IDE stream the last STREAM.CREATE returned.
    pub stream: u64,
    /// The lock generation the last TDI.LOCK returned.
    pub generation: u64,
    /// Register values that mean something.
    pub interesting: Vec<u64>,
    /// The last answer the device gave (for replays).
    pub last_answer: Vec<u8>,
    /// Calls made.
    pub calls: u64,
}

fn base_device() -> Device {
    static D: OnceLock<Device> = OnceLock::new();
    D.get_or_init(|| Device::new(device_config()).expect("device")).clone()
}

/// The platform secret the fuzzed TSM is provisioned with (MR.ATTEST works).
pub fn blob() -> SecretBlob {
    SecretBlob::new([0x42; 32], [3, 0, 0, 0, 0, 0, 8, 115], [0xc1; 64])
}

impl World {
    /// Two running TDs with a private page each, page tables at [`BAR_GPA`] in TD 0, a
    /// provisioned TSM, and the pages the host will use for the PDEV, TDI and message.
    pub fn new() -> World {
        let mut m = Machine::configured(16 * MIB);
        let a = m.running_td();
        m.aug_accept(&a, 0x1000, PageSize::Size4K);
        m.aug_accept(&a, 0x2000, PageSize::Size4K);
        m.map_tables(&a, BAR_GPA, 0);
        let b = m.running_td();
        m.aug_accept(&b, 0x1000, PageSize::Size4K);
        m.tsm.provision(&blob().to_bytes()).expect("provision");
        let pdev = m.page();
        let tdi = m.page();
        let msg = m.scratch();
        let mut interesting = vec![0, m.pamt_base(), TDMR_BASE, pdev, tdi, msg, u64::from(FUNCTION), LOCK_FLAGS];
        for td in [&a, &b] {
            interesting.extend([td.tdr, td.tdcs[0], td.tdcs[1], td.vcpus[0]]);
        }
        interesting.extend((0..12).map(|_| m.page()));
        for i in 0..4 {
            interesting.extend([BAR_BASE + i * 4096, gpa_level(BAR_GPA + i * 4096, 0)]);
        }
        let msix = BAR_BASE + (u64::from(BAR0_PAGES) + 0xF0) * 4096;
        interesting.extend([msix, msix + 4096, BAR_GPA, 0x1000, 0x2000, 0x3000, 2 * MIB, 1 << 47, 1 << 51]);
        World {
            m,
            device: base_device(),
            tds: [a, b],
            pdev,
            msg,
            tdi,
            stream: 0,
            generation: 0,
            interesting,
            last_answer: Vec::new(),
            calls: 0,
        }
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            writes: self.m.tsm.platform().mem.writes(),
            tds: self.tds.iter().map(|t| self.m.tsm.td_summary(pfn(t.tdr))).collect(),
            pdev: self.m.tsm.pdev_summary(pfn(self.pdev)),
            tdi: self.m.tsm.tdi_summary(pfn(self.tdi)),
        }
    }

    /// One host call, with every invariant checked after it.
    pub fn host(&mut self, regs: &Regs) -> Regs {
        let before = self.snapshot();
        let r = self.m.tsm.host_call(regs);
        self.after(regs, r.status(), false, &before);
        r
    }

    /// One guest call from the vCPU `tdvpr`, with every invariant checked after it.
    pub fn guest(&mut self, tdvpr: u64, regs: &Regs) -> tsm::GuestReturn {
        let before = self.snapshot();
        let r = self.m.tsm.guest_call(tdvpr, regs);
        self.after(regs, r.regs.status(), r.exit.is_some(), &before);
        r
    }

    fn after(&mut self, regs: &Regs, status: Status, exited: bool, before: &Snapshot) {
        self.calls += 1;
        assert!(status.code().name().is_some(), "{regs:x?} returned an undocumented status {status:?}");
        if status.is_error() && status.code() != Status::DEVICE_ERROR && !exited {
            assert!(*before == self.snapshot(), "{regs:x?} -> {status:?} failed but changed the machine");
        }
        self.check_invariants();
    }

    /// The global invariants (`tsm::audit`: memory and MMIO ownership, one TDI per interface,
    /// RUN is live, reports list every TDI and their evidence hashes right), and the device
    /// agrees with what the TSM last confirmed of each running interface.
    pub fn check_invariants(&self) {
        if let Err(v) = seamless_harness::audit::check(&self.m.tsm) {
            panic!("invariant broken after call {}: {v:?}", self.calls);
        }
        if let Err(e) = seamless_harness::audit::check_device(&self.m.tsm, &self.device) {
            panic!("after call {}: {e}", self.calls);
        }
    }

    /// A resumable device call: every request goes to the device, its answer (corrupted as
    /// `c` says) back through the message page, until the call stops asking.
    pub fn pump(&mut self, leaf: u64, rcx: u64, msg: u64, r9: u64, c: Option<Corruption>) -> Regs {
        let mut len = 0;
        let mut r = Regs::call(leaf, rcx, msg, 0, r9);
        for k in 0..MAX_ROUNDS {
            r = self.host(&Regs::call(leaf, rcx, msg, len, r9));
            if r.status() != Status::DEVICE_REQUEST {
                return r;
            }
            assert!(r.r8 <= 4096, "a request longer than the message page");
            let request = self.m.read(msg, r.r8 as usize);
            let Some(mut answer) = self.device.handle(&request) else { return r };
            if let Some(c) = c.filter(|c| usize::from(c.k) == k && !answer.is_empty()) {
                let at = usize::from(c.pos) % answer.len();
                answer[at] ^= c.x.max(1);
            }
            answer.truncate(4096);
            self.m.write(msg, &answer);
            len = answer.len() as u64;
            self.last_answer = answer;
        }
        r
    }

    fn reg(&mut self, rd: &mut Reader<'_>) -> u64 {
        let pick = |rd: &mut Reader<'_>, v: &[u64]| v[rd.below(v.len())];
        match rd.u8() % 8 {
            0 => rd.u64(),
            1..=4 => pick(rd, &self.interesting),
            5 => pick(rd, &self.interesting) | u64::from(rd.u8() % 5),
            6 => pick(rd, &self.interesting) ^ (1 << (rd.u8() % 64)),
            _ => gpa_level(u64::from(rd.u8()) * 4096, rd.u8() % 3),
        }
    }

    fn corruption(rd: &mut Reader<'_>) -> Option<Corruption> {
        (rd.u8() & 1 == 1).then(|| Corruption { k: rd.u8() % 24, pos: rd.u16(), x: rd.u8() })
    }

    /// Runs the operations `data` encodes, checking the invariants after every call.
    pub fn run(&mut self, data: &[u8]) {
        let mut rd = Reader::new(data);
        let mut ops = 0;
        while !rd.is_empty() && ops < 48 {
            ops += 1;
            match rd.u8() % 8 {
                0 | 1 => self.raw_host(&mut rd),
                2 => self.raw_guest(&mut rd),
                3 => self.device_call(&mut rd),
                4 => self.forged_answer(&mut rd),
                _ => {
                    let step = rd.u8();
                    let c = Self::corruption(&mut rd);
                    self.step(step, c, &mut rd);
                }
            }
        }
    }

    fn raw_host(&mut self, rd: &mut Reader<'_>) {
        let leaves = Tsm::<seamless_harness::HostPlatform>::HOST_LEAVES;
        let leaf = match rd.u8() {
            250..=255 => rd.u64(),
            i => leaves[usize::from(i) % leaves.len()].spec.number,
        };
        let mut regs = Regs::call(leaf, self.reg(rd), self.reg(rd), self.reg(rd), self.reg(rd));
        regs.r10 = self.reg(rd);
        self.host(&regs);
    }

    fn raw_guest(&mut self, rd: &mut Reader<'_>) {
        let leaves = Tsm::<seamless_harness::HostPlatform>::GUEST_LEAVES;
        let leaf = match rd.u8() {
            250..=255 => rd.u64(),
            i => leaves[usize::from(i) % leaves.len()].spec.number,
        };
        let vcpu = match rd.u8() % 4 {
            0 => self.reg(rd),
            1 => self.tds[1].vcpus[0],
            _ => self.tds[0].vcpus[0],
        };
        let mut regs = Regs::call(leaf, self.reg(rd), self.reg(rd), self.reg(rd), 0);
        regs.r9 = self.reg(rd);
        self.guest(vcpu, &regs);
    }

    fn device_call(&mut self, rd: &mut Reader<'_>) {
        const LEAVES: [u64; 7] = [
            h::SPDM_CONNECT,
            h::SPDM_DISCONNECT,
            h::SPDM_MNG,
            h::IDE_STREAM_KM,
            h::TDI_LOCK,
            h::TDI_START,
            h::TDI_STOP,
        ];
        let leaf = LEAVES[rd.below(LEAVES.len())];
        let (rcx, msg, r9) = (self.reg(rd), self.reg(rd), self.reg(rd));
        let c = Self::corruption(rd);
        self.pump(leaf, rcx, msg, r9, c);
    }

    /// The host writes an answer of its own (or replays the last real one) and hands it in.
    fn forged_answer(&mut self, rd: &mut Reader<'_>) {
        const LEAVES: [u64; 5] = [h::SPDM_CONNECT, h::SPDM_MNG, h::IDE_STREAM_KM, h::TDI_LOCK, h::TDI_START];
        let leaf = LEAVES[rd.below(LEAVES.len())];
        let rcx = if rd.u8() & 1 == 0 { self.pdev } else { self.tdi };
        let bytes = if rd.u8() & 1 == 0 { self.last_answer.clone() } else { rd.bytes(4096).to_vec() };
        self.m.write(self.msg, &bytes);
        let r9 = self.reg(rd);
        self.host(&Regs::call(leaf, rcx, self.msg, bytes.len() as u64, r9));
    }

    /// A step of the canonical assignment flow, with the registers it takes (which may not fit
    /// the state the machine is in: then it must be refused cleanly).
    fn step(&mut self, step: u8, c: Option<Corruption>, rd: &mut Reader<'_>) {
        let (tdr, vcpu) = (self.tds[0].tdr, self.tds[0].vcpus[0]);
        let (pdev, tdi, msg) = (self.pdev, self.tdi, self.msg);
        match step % 20 {
            0 => {
                self.host(&Regs::call(h::SPDM_CREATE, pdev, u64::from(FUNCTION), 0, 0));
            }
            1 => {
                self.pump(h::SPDM_CONNECT, pdev, msg, 0, c);
            }
            2 => {
                let r = self.host(&Regs::call(h::IDE_STREAM_CREATE, pdev, 1, 0, 0));
                if r.status() == Status::SUCCESS {
                    self.stream = r.rcx;
                }
            }
            3 => {
                self.pump(h::IDE_STREAM_KM, pdev, msg, self.stream, c);
            }
            4 => {
                self.host(&Regs::call(h::TDI_CREATE, tdr, pdev, tdi, u64::from(FUNCTION)));
            }
            5 => {
                let r = self.pump(h::TDI_LOCK, tdi, msg, LOCK_FLAGS | self.stream << 16, c);
                if r.status() == Status::SUCCESS {
                    self.generation = r.rcx;
                }
            }
            6 => {
                let Some(s) = self.m.tsm.tdi_summary(pfn(tdi)) else { return };
                for (i, range) in s.ranges[..s.range_count].iter().enumerate() {
                    let call = Regs::call(h::DMABUF_IMPORT, tdi, range.first << 12, range.pages, i as u64);
                    self.host(&call);
                }
            }
            7 | 8 | 12 | 13 => {
                let leaf = match step % 20 {
                    7 => h::MMIO_MAP,
                    12 => h::MMIO_BLOCK,
                    13 => h::MMIO_UNMAP,
                    _ => g::MMIO_ACCEPT,
                };
                let pages = self.m.tsm.tdi_summary(pfn(tdi)).map_or(1, |s| s.ranges[0].pages.clamp(1, 16));
                let first = self.m.tsm.tdi_summary(pfn(tdi)).map_or(BAR_BASE >> 12, |s| s.ranges[0].first);
                for i in 0..pages {
                    let gpa = gpa_level(BAR_GPA + i * 4096, 0);
                    if leaf == g::MMIO_ACCEPT {
                        let call = Regs { r9: i * 4096, ..Regs::call(leaf, gpa, 0, u64::from(FUNCTION), 0) };
                        self.guest(vcpu, &call);
                    } else {
                        self.host(&Regs::call(leaf, gpa, tdr, (first + i) << 12, 0));
                    }
                }
                if leaf == h::MMIO_BLOCK {
                    self.host(&Regs::call(h::MEM_TRACK, tdr, 0, 0, 0));
                }
            }
            9 => {
                self.guest(vcpu, &Regs::call(g::TDI_START, u64::from(FUNCTION), self.generation, 0, 0));
            }
            10 => {
                self.pump(h::TDI_START, tdi, msg, 0, c);
            }
            11 => {
                self.pump(h::TDI_STOP, tdi, msg, 0, c);
            }
            14 => {
                self.host(&Regs::call(h::DMABUF_REVOKE, tdi, 0, 0, 0));
            }
            15 => {
                self.host(&Regs::call(h::TDI_REMOVE, tdi, 0, 0, 0));
            }
            16 => {
                self.host(&Regs::call(h::IDE_STREAM_BLOCK, pdev, self.stream, 0, 0));
                self.host(&Regs::call(h::IDE_STREAM_DELETE, pdev, self.stream, 0, 0));
            }
            17 => {
                self.pump(h::SPDM_DISCONNECT, pdev, msg, 0, c);
                self.host(&Regs::call(h::SPDM_DELETE, pdev, 0, 0, 0));
            }
            18 => {
                let root = self.m.page();
                self.host(&Regs::call(h::IOMMU_SETUP, root, 0, 0, 0));
                let frames = [self.m.page(), self.m.page(), self.m.page()];
                let call = Regs { r10: frames[2], ..Regs::call(h::DMAR_ADD, tdr, tdi, frames[0], frames[1]) };
                self.host(&call);
                let guest = Regs::call(g::DMAR_ACCEPT, u64::from(FUNCTION), 0, 0, 0);
                self.guest(vcpu, &guest);
            }
            _ => {
                let flavour = u64::from(rd.u8() % 3);
                self.guest(vcpu, &Regs::call(g::MR_ATTEST, 0x1000, 0x2000, flavour, 0));
                self.host(&Regs::call(h::VP_ENTER, vcpu, 0, 0, 0));
            }
        }
    }
}

impl Default for World {
    fn default() -> World {
        World::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_canonical_flow_as_steps_reaches_a_running_tdi() {
        let mut w = World::new();
        // Steps 0..=10 in order, none corrupted: op 5 = "step", then the step number, then
        // "no corruption".
        let mut input = Vec::new();
        for s in 0..=10u8 {
            input.extend([5, s, 0]);
        }
        w.run(&input);
        let s = w.m.tsm.tdi_summary(pfn(w.tdi)).expect("TDI");
        assert_eq!(s.state, tsm::tdi::TdiState::Run, "{s:?}");
        assert!(w.calls > 20);
    }

    #[test]
    fn a_corrupted_answer_during_connect_is_a_device_error_that_changes_only_the_pdev() {
        let mut w = World::new();
        w.run(&[5, 0, 0, 5, 1, 1, 3, 8, 0, 0x40]);
        let p = w.m.tsm.pdev_summary(pfn(w.pdev)).expect("PDEV");
        assert!(p.fault.is_some() && p.session.is_none(), "{p:?}");
    }
}
