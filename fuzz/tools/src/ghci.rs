//! The host's GHCI server (`tsm_client::host::ghci`, what serves Debian's OVMF as a TD) with
//! the TD as the attacker: arbitrary TDG.VP.VMCALLs, and between them the TD's own ACCEPTs and
//! writes into its shared pages (so fw_cfg DMA access structures and GetQuote buffers are
//! there to be found), served against the real TSM in the harness and a machine that records
//! every access the host makes on the TD's behalf. After every call:
//! - serving did not fail: a host call the TSM refused, or the host running out of pages (the
//!   harness panics), is a finding: nothing the TD asks may make the host ask for more than
//!   the TD's RAM is worth;
//! - the answer is GHCI's: R10 SUCCESS, INVALID_OPERAND or ALIGN_ERROR, or a halt or a stop;
//! - the machine saw only what the TD may reach: COM1 byte accesses, the PM timer's read, the
//!   RTC's registers read (index 0..0x0D, NMIs kept off); PCI configuration of the filter's
//!   functions, written only where the filter allows; fw_cfg items the view does not hide, and
//!   no more of one than it holds;
//! - every page the host wrote is the host's (free or outside the TDMRs), never a TD's or the
//!   TSM's;
//! - the host's shared table maps no more pages than the TD has RAM;
//! - the TSM's global invariants (`tsm::audit`).

use seamless_harness::driver::{Machine, TdHandle};
use tsm::abi::guest::leaf as g;
use tsm::addr::Pfn;
use tsm::pamt::PageType;
use tsm::{Regs, TdExit};
use tsm_client::host::ghci::{self, leaf, Ghci, PciFilter, Served, TdView};
use tsm_client::{HostMemory, Seamcall};

use crate::wire::Reader;

const MIB: u64 = 1 << 20;
/// The shared bit of the TD (GPAW 48).
pub const SHARED: u64 = 1 << 47;
/// The TD's RAM: 0..4 MiB (the harness's TD has 4 KiB tables for 0..2 MiB).
pub const RAM: [(u64, u64); 1] = [(0, 4 * MIB)];
/// Records a fuzz input runs at most (one call each).
const MAX_STEPS: usize = 64;

/// fw_cfg items of the recording machine: the host's own files (hidden from the TD) among the
/// TD's.
const ITEMS: [(u16, &str, usize); 6] = [
    (0x20, "bootorder", 0),
    (0x21, "etc/acpi/tables", 300),
    (0x22, "etc/e820", 40),
    (0x23, "genroms/linuxboot_dma.bin", 3),
    (0x24, "opt/seamless/platform-secret", 6),
    (0x25, "opt/seamless/ovmf", 4),
];

/// What the host asked the machine for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// A port read: port, size.
    In(u16, u8),
    /// A port write: port, size, value.
    Out(u16, u8, u32),
    /// A configuration read: function, register, size.
    CfgRead(u16, u16, u8),
    /// A configuration write: function, register, size, value.
    CfgWrite(u16, u16, u8, u32),
    /// fw_cfg item selected.
    Select(u16),
}

/// The machine the host serves on: records every access; a fw_cfg with [`ITEMS`].
#[derive(Debug, Default)]
pub struct Recorder {
    /// Accesses since the last check.
    pub log: Vec<Access>,
    selected: u16,
    offset: usize,
    /// Bytes read past the end of the selected item.
    pub overread: u64,
    now: u64,
}

fn item(key: u16) -> Option<Vec<u8>> {
    let entry = |size: usize, select: u16, name: &str| {
        let mut e = Vec::new();
        e.extend_from_slice(&(size as u32).to_be_bytes());
        e.extend_from_slice(&select.to_be_bytes());
        e.extend_from_slice(&[0, 0]);
        let mut n = [0u8; 56];
        n[..name.len()].copy_from_slice(name.as_bytes());
        e.extend_from_slice(&n);
        e
    };
    match key {
        0x00 => Some(b"QEMU".to_vec()),
        0x02 => Some(vec![0x11; 16]),
        0x04 | 0x0E => Some(vec![0, 0]),
        0x06 => Some(vec![0x22; 4]),
        0x19 => {
            let mut d = (ITEMS.len() as u32).to_be_bytes().to_vec();
            for (k, name, size) in ITEMS {
                d.extend(entry(size, k, name));
            }
            Some(d)
        }
        k => ITEMS.iter().find(|i| i.0 == k).map(|&(k, _, size)| (0..size).map(|i| (i as u8) ^ (k as u8)).collect()),
    }
}

impl ghci::Machine for Recorder {
    fn io_read(&mut self, port: u16, size: u8) -> u32 {
        self.log.push(Access::In(port, size));
        0x5A
    }
    fn io_write(&mut self, port: u16, size: u8, value: u32) {
        self.log.push(Access::Out(port, size, value));
    }
    fn pci_config_read(&mut self, bdf: u16, reg: u16, size: u8) -> u32 {
        self.log.push(Access::CfgRead(bdf, reg, size));
        0x1234_0000 | u32::from(reg)
    }
    fn pci_config_write(&mut self, bdf: u16, reg: u16, size: u8, value: u32) {
        self.log.push(Access::CfgWrite(bdf, reg, size, value));
    }
    fn fw_cfg_select(&mut self, key: u16) {
        self.log.push(Access::Select(key));
        (self.selected, self.offset) = (key, 0);
    }
    fn fw_cfg_read(&mut self, buf: &mut [u8]) {
        let data = item(self.selected).unwrap_or_default();
        for b in buf {
            match data.get(self.offset) {
                Some(&x) => *b = x,
                None => {
                    *b = 0;
                    self.overread += 1;
                }
            }
            self.offset += 1;
        }
    }
    fn cpuid(&self, leaf: u32, subleaf: u32) -> [u32; 4] {
        [leaf, subleaf, 0, 0]
    }
    fn now_ns(&self) -> u64 {
        self.now
    }
    fn wait_until(&mut self, deadline_ns: u64) {
        self.now = self.now.max(deadline_ns);
    }
}

/// The host's memory and SEAMCALL, with every page it writes recorded.
#[derive(Debug)]
struct Host<'a> {
    m: &'a mut Machine,
    written: Vec<u64>,
}

impl Seamcall for Host<'_> {
    fn seamcall(&mut self, regs: &mut Regs) {
        self.m.seamcall(regs);
    }
}

impl HostMemory for Host<'_> {
    fn read(&mut self, pa: u64, buf: &mut [u8]) {
        HostMemory::read(self.m, pa, buf);
    }
    fn write(&mut self, pa: u64, data: &[u8]) {
        self.written.push(pa >> 12);
        HostMemory::write(self.m, pa, data);
    }
    fn donate(&mut self) -> Option<u64> {
        self.m.donate()
    }
    fn scratch(&mut self) -> Option<u64> {
        HostMemory::scratch(self.m)
    }
    fn donate_2m(&mut self) -> Option<u64> {
        self.m.donate_2m()
    }
    fn release(&mut self, pa: u64) {
        HostMemory::release(self.m, pa);
    }
    fn donated(&self) -> (u64, u64) {
        self.m.donated()
    }
}

/// The TD, its host's GHCI server and the machine.
#[derive(Debug)]
pub struct GhciWorld {
    /// The harness machine (the TSM over simulated memory).
    pub m: Machine,
    /// The TD.
    pub td: TdHandle,
    /// The server.
    pub ghci: Ghci,
    /// The machine the server uses.
    pub machine: Recorder,
    /// Calls served.
    pub calls: u64,
}

/// Ports worth aiming at: every device of the TD's port space, its edges, and a few absent.
const PORTS: [u16; 32] = [
    0x3F8, 0x3F9, 0x3FB, 0x3FD, 0x3FF, 0xCF8, 0xCFC, 0xCFD, 0xCFE, 0xCFF, 0xCF9, 0x600, 0x604, 0x608, 0x67F, 0x680,
    0x70, 0x71, 0x20, 0x21, 0xA1, 0x4D0, 0x40, 0x61, 0x510, 0x511, 0x514, 0x518, 0x2F8, 0x3E8, 0x60, 0x402,
];

/// MMIO bases worth aiming at: ECAM, the I/O APIC, the HPET, the local APIC, the PCI window.
const MMIO: [u64; 5] = [0xB000_0000, 0xFEC0_0000, 0xFED0_0000, 0xFEE0_0000, 0xC000_0000];

impl GhciWorld {
    /// A TD with one vCPU stopped at a VMCALL and its host's server.
    pub fn new() -> GhciWorld {
        // Room for the TD's RAM twice over (private and shared), its tables and the TSM's.
        let mut m = Machine::configured(24 * MIB);
        let td = m.running_td();
        vmcall(&mut m, &td);
        let mut machine = Recorder::default();
        let ghci = Ghci::new(&mut machine, &view(&td), true).expect("the view of the machine's fw_cfg");
        machine.log.clear();
        GhciWorld { m, td, ghci, machine, calls: 0 }
    }

    /// Runs the records of `data`: a byte choosing the step, then its operands.
    pub fn run(&mut self, data: &[u8]) {
        let mut r = Reader::new(data);
        for _ in 0..MAX_STEPS {
            if r.is_empty() {
                break;
            }
            self.step(&mut r);
        }
    }

    fn step(&mut self, r: &mut Reader<'_>) {
        let op = r.u8();
        let shaped = op & 0x80 != 0;
        let (a, b, c, d) = (r.u64(), r.u64(), r.u64(), r.u64());
        let page = |x: u64| (x % (RAM[0].1 / 4096 + 16)) * 4096;
        let call = match op & 0x0F {
            0 => (leaf::CPUID, [a, b, 0, 0]),
            1 => (leaf::HLT, [a, 0, 0, 0]),
            2 => {
                let port = if shaped { u64::from(PORTS[(a % 32) as usize]) } else { c };
                let pci = 0x8000_0000 | (d & 0x00FF_FFFC);
                let value = if shaped && port == 0xCF8 { pci } else { d };
                let (size, write) =
                    if shaped { ([1, 2, 4, 1][(b & 3) as usize], (b >> 32) & 1) } else { (b & 0xFFFF_FFFF, b >> 32) };
                (leaf::IO, [size, write, port, value])
            }
            3 => (leaf::RDMSR, [if shaped { 0x800 + (a & 0x3FF) } else { a }, 0, 0, 0]),
            4 => (leaf::WRMSR, [if shaped { 0x800 + (a & 0x3FF) } else { a }, b, 0, 0]),
            5 => {
                let gpa = if shaped { SHARED | (MMIO[(a % 5) as usize] + (c & 0x0FFF_FFFC)) } else { c };
                let (size, write) =
                    if shaped { ([1, 2, 4, 8][(b & 3) as usize], (b >> 32) & 1) } else { (b & 0xFFFF_FFFF, b >> 32) };
                (leaf::MMIO, [size, write, gpa, d])
            }
            6 => (leaf::GET_TD_VM_CALL_INFO, [a & 1, 0, 0, 0]),
            7 => {
                let (start, bytes) = if shaped { (page(a) | ((b >> 63) * SHARED), page(c) + 4096) } else { (a, b) };
                (leaf::MAP_GPA, [start, bytes, 0, 0])
            }
            8 => (leaf::GET_QUOTE, if shaped { [SHARED | page(a), b % 0x3000, 0, 0] } else { [a, b, 0, 0] }),
            9 => (leaf::REPORT_FATAL_ERROR, [a, 0, 0, 0]),
            10 => (leaf::SETUP_EVENT_NOTIFY_INTERRUPT, [a & 0xFF, 0, 0, 0]),
            11 => return self.accept(page(a)),
            12 => return self.td_writes(page(a) + (b & 0xFF8), [c, d]),
            _ => (a, [b, c, d, 0]),
        };
        self.serve(call.0, call.1);
    }

    /// The TD accepts the page at `gpa` (what it does after MapGPA to private).
    fn accept(&mut self, gpa: u64) {
        let vcpu = self.td.vcpus[0];
        self.m.enter(vcpu);
        if self.m.guest(vcpu, g::MEM_PAGE_ACCEPT, gpa, 0, 0).exit.is_some() {
            // The ACCEPT exited to the host (a GPA with no leaf is an EPT violation, for the
            // host to AUG): it enters the vCPU again.
            self.m.enter(vcpu);
        }
        vmcall(&mut self.m, &self.td);
    }

    /// The TD writes 16 bytes at shared `gpa`, if the host mapped it.
    fn td_writes(&mut self, gpa: u64, words: [u64; 2]) {
        let view = view(&self.td);
        let frame = self.ghci.shared.lookup(&mut self.m, &view.td, SHARED | (gpa & !0xFFF)).expect("a lookup");
        if let Some(f) = frame {
            let mut bytes = [0u8; 16];
            bytes[..8].copy_from_slice(&words[0].to_le_bytes());
            bytes[8..].copy_from_slice(&words[1].to_le_bytes());
            let at = f + (gpa & 0xFF0);
            HostMemory::write(&mut self.m, at, &bytes);
        }
    }

    /// Serves one TDG.VP.VMCALL and checks everything after it.
    pub fn serve(&mut self, r11: u64, [r12, r13, r14, r15]: [u64; 4]) {
        self.calls += 1;
        let regs = Regs { r10: 0, r11, r12, r13, r14, r15, ..Regs::default() };
        let view = view(&self.td);
        let mut host = Host { m: &mut self.m, written: Vec::new() };
        let served = self.ghci.serve(&mut host, &mut self.machine, &view, &regs);
        let written = host.written;
        let what = (r11, [r12, r13, r14, r15]);
        match served {
            Ok(Served::Answer(a)) => {
                let s = a.r10;
                assert!(
                    [leaf::status::SUCCESS, leaf::status::INVALID_OPERAND, leaf::status::ALIGN_ERROR].contains(&s),
                    "status {s:#x} after {what:x?}"
                );
            }
            Ok(Served::Halt { .. } | Served::Stop(_)) => {}
            Err(e) => panic!("serving {what:x?} failed: {e}"),
        }
        for access in self.machine.log.drain(..) {
            assert!(allowed(access), "the TD reached {access:x?} with {what:x?}");
        }
        assert_eq!(self.machine.overread, 0, "fw_cfg read past an item's end after {what:x?}");
        for pfn in written {
            let e = Pfn::new(pfn).and_then(|p| self.m.tsm.pamt_entry(p));
            assert!(
                e.is_none_or(|e| e.ty == PageType::Free),
                "the host wrote frame {pfn:#x} ({e:?}) serving {what:x?}"
            );
        }
        assert!(self.ghci.shared.mapped <= RAM[0].1 / 4096, "more shared pages than RAM after {what:x?}");
        if let Err(v) = seamless_harness::audit::check(&self.m.tsm) {
            panic!("invariant broken after {what:x?}: {v:?}");
        }
    }
}

impl Default for GhciWorld {
    fn default() -> Self {
        Self::new()
    }
}

fn view(td: &TdHandle) -> TdView<'static> {
    TdView { td: td.pages(), shared_bit: SHARED, ram: &RAM, pci: PciFilter::Q35_PLATFORM }
}

fn vmcall(m: &mut Machine, td: &TdHandle) {
    let r = m.tsm.guest_call(td.vcpus[0], &Regs::call(g::VP_VMCALL, 0, 0, 0, 0));
    assert!(matches!(r.exit, Some(TdExit::Vmcall { .. })), "the vCPU exits at its VMCALL: {r:x?}");
}

/// What the host may do on the machine for the TD.
fn allowed(a: Access) -> bool {
    let pci = PciFilter::Q35_PLATFORM;
    match a {
        Access::In(p, 1) | Access::Out(p, 1, _) if (0x3F8..=0x3FF).contains(&p) => true,
        Access::In(0x608, 4) | Access::In(0x71, 1) => true,
        Access::Out(0x70, 1, v) => v & 0x80 != 0 && v & 0x7F <= 0x0D,
        Access::CfgRead(f, _, _) => pci.visible(f),
        Access::CfgWrite(f, reg, size, _) => pci.writable(f, reg, size),
        Access::Select(k) => {
            ITEMS.iter().all(|i| i.0 != k || !(i.1.starts_with("opt/") || i.1.starts_with("genroms/")))
        }
        _ => false,
    }
}

/// One record of a fuzz input: the step `op` and its four operands.
pub fn record(op: u8, operands: [u64; 4]) -> Vec<u8> {
    let mut r = vec![op];
    for x in operands {
        r.extend_from_slice(&x.to_le_bytes());
    }
    r
}

/// The seeds: what OVMF does with its host, as records.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    const SHAPED: u8 = 0x80;
    // The fw_cfg DMA access structure edk2 puts in a shared page: select etc/acpi/tables and
    // read 64 bytes of it to 0x3100 (big-endian fields).
    let control: u32 = 0x21 << 16 | 0x8 | 0x2;
    let mut head = [0u8; 8];
    head[..4].copy_from_slice(&control.to_be_bytes());
    head[4..].copy_from_slice(&64u32.to_be_bytes());
    let access = [u64::from_le_bytes(head), u64::from_le_bytes(0x3100u64.to_be_bytes())];
    let port = |p: u16| PORTS.iter().position(|&x| x == p).expect("a listed port") as u64;
    let mut dma = Vec::new();
    // MapGPA 0x3000 to shared, the TD writes the structure at 0x3040, then the two address
    // halves (4-byte writes: size index 2, write bit 32).
    dma.extend(record(SHAPED | 7, [3, 1 << 63, 0, 0]));
    dma.extend(record(12, [3, 0x40, access[0], access[1]]));
    dma.extend(record(SHAPED | 2, [port(0x514), 2 | 1 << 32, 0, 0]));
    dma.extend(record(SHAPED | 2, [port(0x518), 2 | 1 << 32, 0, u64::from(0x3040u32.swap_bytes())]));
    // Back to private, accepted.
    dma.extend(record(SHAPED | 7, [3, 0, 0, 0]));
    dma.extend(record(11, [3, 0, 0, 0]));
    let mut console = Vec::new();
    // (b: the size's index, 0 for one byte, and the write bit 32.)
    for (p, b, value) in [(0x3FB, 1 << 32, 0x03), (0x3F8, 1 << 32, u64::from(b'S')), (0x3FD, 0, 0)] {
        console.extend(record(SHAPED | 2, [port(p), b, 0, value]));
    }
    // PCI: the host bridge's vendor ID, then PCIEXBAR written (dropped).
    for (p, write, value) in [(0xCF8, 1, 0), (0xCFC, 0, 0), (0xCF8, 1, 0x60), (0xCFC, 1, 0)] {
        console.extend(record(SHAPED | 2, [port(p), 2 | write << 32, 0, value]));
    }
    // fw_cfg by ports: the signature, then the platform secret selected anyway.
    for (p, b, value) in [(0x510, 1 | 1 << 32, 0), (0x511, 0, 0), (0x510, 1 | 1 << 32, 0x24), (0x511, 0, 0)] {
        console.extend(record(SHAPED | 2, [port(p), b, 0, value]));
    }
    vec![("dma-and-conversions", dma), ("ports", console)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seeds_convert_transfer_and_reach_only_the_tds_devices() {
        let mut w = GhciWorld::new();
        let seeds = seeds();
        w.run(&seeds[0].1);
        assert_eq!(w.ghci.fw_cfg.dma_transfers, 1);
        assert_eq!((w.ghci.conversions.to_shared, w.ghci.conversions.to_private), (1, 1));
        let r = w.m.host(tsm::abi::host::leaf::MEM_SEPT_RD, 0x3000, w.td.tdr, 0, 0);
        assert_eq!(
            tsm::sept::SeptState::from_code((r.rdx >> 8) & 0xFF),
            Some(tsm::sept::SeptState::Mapped),
            "accepted"
        );
        w.run(&seeds[1].1);
        assert_eq!(w.ghci.ports.console.written, 1);
        assert_eq!(w.calls, 15);
    }

    #[test]
    fn the_checks_refuse_what_the_td_may_not_reach() {
        for a in [
            Access::Out(0x3FF, 4, 0),
            Access::In(0x2F8, 1),
            Access::Out(0x71, 1, 0),
            Access::Out(0x70, 1, 0x0E | 0x80),
            Access::Out(0x70, 1, 0x00),
            Access::CfgRead(0x0010, 0, 4),
            Access::CfgWrite(0x0000, 0x60, 4, 0),
            Access::Select(0x24),
            Access::Select(0x23),
        ] {
            assert!(!allowed(a), "{a:x?}");
        }
        for a in [Access::Out(0x3F8, 1, 0x41), Access::In(0x608, 4), Access::Out(0x70, 1, 0x8D), Access::Select(0x21)] {
            assert!(allowed(a), "{a:x?}");
        }
    }
}
