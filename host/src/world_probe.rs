//! The host agent probes its own world, with its own instructions:
//!
//! - the floor of a world switch (VMMCALL, which the TSM only skips) and the SEAMCALL round trip
//!   (TDH.SYS.INFO), in alternating rounds, the best round's mean of each;
//! - a load and a store of TSM memory, the PAMT and the VT-d registers: each must be refused
//!   (#MC, which the handler recovers from), return nothing, and be in the TSM's fault log;
//! - TDCALL: #UD (the guest ABI is not the host's);
//! - the platform: selecting the platform secret in fw_cfg, fw_cfg's DMA interface aimed at TSM
//!   memory, writes to the MSRs the TSM depends on, programming the ISA DMA controller: each
//!   refused, logged, and without effect;
//! - the ways out of the world: an INIT to itself through the local APIC (and the I/O APIC and
//!   HPET that could send one), A20 off, the i8042's output port, an SMI, the 8259, CMOS's
//!   shutdown status, S3, the BIOS's shadowing: each refused, logged, and without effect.
//!
//! The fault log is read back with SEAMLESS.HOST.FAULT.RD after each group and every entry
//! checked against what the agent did, in order.

use seamless_drivers::bootinfo::BootInfo;
use seamless_drivers::config::SECRET_FILE;
use seamless_drivers::console::figure;
use seamless_drivers::fw_cfg::FwCfg;
use seamless_drivers::memmap::Layout;
use seamless_drivers::say;
use seamless_host::{Cpu, Failed, Why};
use tsm::abi::host::leaf;
use tsm::pamt::PageType;
use tsm::sept::SeptState;
use tsm::{Regs, Status};
use tsm_client::host::td::TdPages;
use tsm_client::HostMemory;

use crate::arch;
use crate::run::Agent;

/// Iterations per round and rounds of the measured loops.
const ITERATIONS: u64 = 50;
const ROUNDS: u64 = 10;
/// The VT-d register page: whoever writes it owns DMA.
const VTD_REGS: u64 = 0xFED9_0000;
/// What the probe stores: were a store to land, it would show.
const PATTERN: u64 = 0x5EA3_C0DE_5EA3_C0DE;
/// Fault-log classes (SEAMLESS.HOST.FAULT.RD, RDX bits 15:8).
const CLASS_TSM: u8 = 0xF0;
const CLASS_RESERVED: u8 = 0x01;
const CLASS_NOT_HOST: u8 = 0xF1;
const CLASS_PORT: u8 = 0xF3;
const CLASS_MSR: u8 = 0xF4;
const CLASS_XCR: u8 = 0xF5;
/// The MSRs the TSM depends on, each written with a value that would hurt it.
const MSRS: [(u32, &str, u64); 8] = [
    (0xC000_0080, "EFER", 0),
    (0xC001_0117, "VM_HSAVE_PA", 0x1000),
    (0xC001_0114, "VM_CR", 0x18),
    (0xC001_0010, "SYSCFG", 0),
    (0x0000_001B, "APIC_BASE", 0xFEE0_0000),
    (0x0000_0277, "PAT", 0),
    (0x0000_02FF, "MTRRdefType", 0),
    (0x0000_0010, "TSC", 0),
];
/// ISA DMA channel 1 set up to write 4 KiB to physical `page << 16 | addr`: mask, flip-flop,
/// address, page, count, mode (single, write to memory), unmask.
const ISA_DMA: [(u16, u8); 9] = [
    (0x0A, 0x05),
    (0x0C, 0),
    (0x02, 0x00),
    (0x02, 0x10),
    (0x83, 0x00),
    (0x03, 0xFF),
    (0x03, 0x0F),
    (0x0B, 0x45),
    (0x0A, 0x01),
];
/// PCI configuration mechanism #1 (the address's enable bit) and its registers.
const CONFIG_ENABLE: u32 = 1 << 31;
const CONFIG_ADDRESS: u16 = 0xCF8;
const CONFIG_DATA: u16 = 0xCFC;
/// The host bridge's PCIEXBAR (00:00.0, 0x60), the LPC bridge's function in ECAM (00:1f.0) and
/// its RCBA (0xF0).
const PCIEXBAR: u64 = 0x60;
const LPC_FUNCTION: u64 = 31 << 15;
const RCBA: u64 = 0xF0;
/// The LPC bridge in a configuration address (device 31 at bits 15:11).
const LPC_CONFIG: u32 = 31 << 11;
/// fw_cfg's DMA address registers (big-endian; the low half starts the transfer).
const FW_CFG_DMA_HIGH: u16 = 0x514;
const FW_CFG_DMA_LOW: u16 = 0x518;
/// fw_cfg DMA control bits: select, read.
const FW_CFG_DMA_SELECT: u32 = 0x08;
const FW_CFG_DMA_READ: u32 = 0x02;

/// One entry of the fault log as the host reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    addr: u64,
    class: u8,
    write: bool,
    detail: u64,
}

fn check(ok: bool, what: &'static str) -> Result<(), Failed> {
    if ok {
        Ok(())
    } else {
        Err(Failed::new("host world", what))
    }
}

/// Reads the fault log until it is empty; the entries into `out`, their number returned.
fn drain(cpu: &mut Agent, out: &mut [Entry; 32]) -> usize {
    let mut n = 0;
    loop {
        let mut r = Regs::call(leaf::HOST_FAULT_RD, 0, 0, 0, 0);
        tsm_client::Seamcall::seamcall(cpu, &mut r);
        if r.rax != 0 || r.r9 != 1 {
            return n;
        }
        if let Some(slot) = out.get_mut(n) {
            *slot = Entry { addr: r.rcx, class: (r.rdx >> 8) as u8, write: r.rdx & 1 != 0, detail: r.r8 };
        }
        n += 1;
    }
}

/// Probes the world; returns the VMMCALL floor in ns (the figures' denominator).
///
/// # Errors
/// [`Failed`] naming the first check that failed.
pub fn run(cpu: &mut Agent, info: &BootInfo, layout: &Layout) -> Result<u64, Failed> {
    let (floor_ns, seamcall_ns) = round_trips(cpu);
    say!(
        "world: host world: best of {ROUNDS} rounds of {ITERATIONS}: VMMCALL floor {floor_ns} ns, SEAMCALL(TDH.SYS.INFO) {seamcall_ns} ns"
    );
    figure("svm_vmexit_floor_ns", &floor_ns, "ns");
    figure("seamcall_roundtrip_ns", &seamcall_ns, "ns");
    let ratio = (seamcall_ns * 100).checked_div(floor_ns).unwrap_or(0);
    figure("seamcall_vs_floor", &format_args!("{}.{:02}", ratio / 100, ratio % 100), "x");

    check(arch::probe_tdcall(), "TDCALL from the host world was not #UD")?;
    say!("world: host world executed TDCALL: #UD, the guest ABI is not the host's");

    let tsm = info.tsm[0] + 0x1000;
    memory(cpu, [(tsm, CLASS_TSM), (layout.pamt.0, CLASS_RESERVED), (VTD_REGS, CLASS_NOT_HOST)])?;
    say!(
        "world: host world read and wrote TSM memory {tsm:#x}, the PAMT {:#x}, VT-d {VTD_REGS:#x}: 6 refused (nested page fault -> #MC, handled), nothing read; the host read 6 entries back from the fault log",
        layout.pamt.0
    );
    platform(cpu, info)?;
    escapes(cpu, info)?;
    Ok(floor_ns)
}

/// The best round's mean of each loop, in ns.
fn round_trips(cpu: &Agent) -> (u64, u64) {
    let (mut floor, mut seamcall) = (u64::MAX, u64::MAX);
    for _ in 0..ROUNDS {
        let t0 = arch::rdtsc();
        for _ in 0..ITERATIONS {
            arch::vmmcall();
        }
        let t1 = arch::rdtsc();
        for _ in 0..ITERATIONS {
            let mut r = Regs::call(leaf::SYS_INFO, 0, 0, 0, 0);
            arch::seamcall(&mut r);
        }
        let t2 = arch::rdtsc();
        floor = floor.min(t1.wrapping_sub(t0));
        seamcall = seamcall.min(t2.wrapping_sub(t1));
    }
    let tsc = cpu.tsc();
    (tsc.ticks_to_ns(floor) / ITERATIONS, tsc.ticks_to_ns(seamcall) / ITERATIONS)
}

/// A load and a store of each target: refused, nothing read, logged as `(target, class)` says.
fn memory(cpu: &mut Agent, targets: [(u64, u8); 3]) -> Result<(), Failed> {
    let (mc_before, _) = arch::recovered();
    for (addr, _) in targets {
        check(arch::probe_read(addr).is_none(), "a load outside the host's map was not refused")?;
        check(arch::probe_write(addr, PATTERN), "a store outside the host's map was not refused")?;
    }
    let (mc_after, _) = arch::recovered();
    check(mc_after - mc_before == 6, "not every refused access came back as #MC")?;
    let mut log = [Entry { addr: 0, class: 0, write: false, detail: 0 }; 32];
    check(drain(cpu, &mut log) == 6, "the fault log does not hold one entry per refused access")?;
    for (i, (addr, class)) in targets.iter().enumerate() {
        for (j, write) in [false, true].into_iter().enumerate() {
            let e = log[2 * i + j];
            check(e.addr == *addr && e.class == *class && e.write == write, "a fault-log entry names another access")?;
        }
    }
    Ok(())
}

/// The platform's ways around the nested map: fw_cfg's secret and DMA, MSRs, ISA DMA.
fn platform(cpu: &mut Agent, info: &BootInfo) -> Result<(), Failed> {
    let mut want = [Entry { addr: 0, class: 0, write: true, detail: 0 }; 32];
    let mut n = 0;
    let mut expect = |addr: u64, class: u8, detail: u64| {
        if let Some(slot) = want.get_mut(n) {
            *slot = Entry { addr, class, write: true, detail };
        }
        n += 1;
    };
    let fw = FwCfg::new().map_err(|_| Failed::new("host world", "no fw_cfg device"))?;

    // fw_cfg: select the platform secret (both spellings of its key); the data port must then
    // give nothing of it.
    let secret = fw.selector_of(SECRET_FILE).ok();
    if let Some(key) = secret {
        for k in [key, key | 0x4000] {
            fw.select_item(k);
            expect(0x510, CLASS_PORT, u64::from(k));
            let mut leaked = false;
            for _ in 0..attest::platform::BLOB_BYTES {
                leaked |= fw.read_byte() != 0;
            }
            check(!leaked, "the platform secret's selection reached fw_cfg")?;
        }
    }

    // fw_cfg DMA: a descriptor in the host's own page asking for 128 bytes of the secret (or
    // the signature) into TSM memory. Refused at the address registers: the device never sees
    // it, so the descriptor's control word stays as written.
    let desc = cpu.scratch().ok_or(Failed::new("host world", Why::Host(tsm_client::HostError::OutOfPages)))?;
    let control = (u32::from(secret.unwrap_or(0)) << 16) | FW_CFG_DMA_SELECT | FW_CFG_DMA_READ;
    let mut d = [0u8; 16];
    d[..4].copy_from_slice(&control.to_be_bytes());
    d[4..8].copy_from_slice(&128u32.to_be_bytes());
    d[8..].copy_from_slice(&(info.tsm[0] + 0x2000).to_be_bytes());
    cpu.write(desc, &d);
    let (high, low) = (((desc >> 32) as u32).swap_bytes(), (desc as u32).swap_bytes());
    arch::out32(FW_CFG_DMA_HIGH, high);
    expect(u64::from(FW_CFG_DMA_HIGH), CLASS_PORT, u64::from(high));
    arch::out32(FW_CFG_DMA_LOW, low);
    expect(u64::from(FW_CFG_DMA_LOW), CLASS_PORT, u64::from(low));
    let mut back = [0u8; 16];
    cpu.read(desc, &mut back);
    check(back == d, "fw_cfg processed a DMA descriptor from the host world")?;

    // MSRs: every write dropped (the TSM would not survive a changed EFER.SVME or VM_HSAVE_PA);
    // no read shows the TSM's values.
    for (msr, _, value) in MSRS {
        arch::wrmsr(msr, value);
        expect(u64::from(msr), CLASS_MSR, value);
    }
    check(arch::rdmsr(0xC001_0117) == 0, "RDMSR VM_HSAVE_PA showed the TSM's host save area")?;

    // ISA DMA: channel 1 programmed to write into low memory; every write refused.
    for (port, value) in ISA_DMA {
        arch::out_kept(port, value);
        expect(u64::from(port), CLASS_PORT, u64::from(value));
    }

    // The chipset: the host bridge's PCIEXBAR and the LPC bridge's RCBA would put the ECAM
    // window or the RCRB over the TSM's memory. Their configuration space is the host's to read
    // and nobody's to write, through ECAM (read-only pages) and ports 0xCF8/0xCFC alike.
    let ecam = seamless_host::device::find_ecam(info.rsdp).base;
    let (pciexbar, rcba) = (ecam + PCIEXBAR, ecam + LPC_FUNCTION + RCBA);
    let before =
        arch::probe_read(pciexbar).ok_or(Failed::new("host world", "the host bridge's configuration is unreadable"))?;
    for at in [pciexbar, rcba] {
        check(arch::probe_write(at, PATTERN), "a configuration write through ECAM was not refused")?;
        expect(at, CLASS_NOT_HOST, 0);
    }
    for (address, value) in
        [(CONFIG_ENABLE | PCIEXBAR as u32, 0xE000_0001u32), (CONFIG_ENABLE | LPC_CONFIG | RCBA as u32, 0x1000_0001)]
    {
        arch::out32(CONFIG_ADDRESS, address);
        arch::out32(CONFIG_DATA, value);
        expect(u64::from(CONFIG_DATA), CLASS_PORT, u64::from(value));
    }
    arch::out32(CONFIG_ADDRESS, CONFIG_ENABLE | PCIEXBAR as u32);
    let through_ports = arch::in32(CONFIG_DATA);
    let unchanged = arch::probe_read(pciexbar) == Some(before) && through_ports == before as u32;
    check(unchanged, "the host bridge's PCIEXBAR changed")?;

    let mut log = [Entry { addr: 0, class: 0, write: false, detail: 0 }; 32];
    let got = drain(cpu, &mut log);
    check(got == n, "the fault log does not hold one entry per refused platform access")?;
    check(log[..n.min(32)] == want[..n.min(32)], "a fault-log entry names another platform access")?;
    let names = MSRS.map(|(_, name, _)| name);
    say!(
        "world: host world attacked the platform: {}, fw_cfg DMA into TSM memory refused (2 writes, the descriptor untouched), {} MSR writes refused ({}; RDMSR VM_HSAVE_PA read 0), ISA DMA programming refused ({} port writes), the chipset's PCIEXBAR and RCBA not written (2 writes through ECAM, 2 through ports 0xCF8/0xCFC, refused; PCIEXBAR reads {before:#x} as before); the host read {got} entries back from the fault log",
        if secret.is_some() {
            "2 selections of fw_cfg's opt/seamless/platform-secret refused (the data port then read nothing of it)"
        } else {
            "fw_cfg's opt/seamless/platform-secret not present (nothing to select)"
        },
        MSRS.len(),
        Names(&names),
        ISA_DMA.len()
    );
    Ok(())
}

/// The local APIC's interrupt command register, the I/O APIC's register select and the HPET's
/// general configuration: what the host world would program to send its own CPU an INIT (which
/// resets it into the BIOS, outside every world, memory as it is), an SMI or an NMI.
const LAPIC_ICR: u64 = 0xFEE0_0300;
const IOAPIC_SELECT: u64 = 0xFEC0_0000;
const HPET_CONFIG: u64 = 0xFED0_0010;
/// ICR: INIT, level assert, to itself.
const INIT_SELF: u64 = 0x0004_4500;
/// Port A: bit 1 is the A20 gate, bit 0 the fast reset; the i8042's command port and its
/// "write the output port" command (A20 and the reset line); APM control (a write raises an
/// SMI); the 8259s' mask registers; CMOS's index and data, and the BIOS's shutdown status byte
/// (0x0A: after a reset, jump through 40:67 without a POST).
const PORT_A: u16 = 0x92;
const I8042_COMMAND: u16 = 0x64;
const I8042_WRITE_OUTPUT: u8 = 0xD1;
const APM_CONTROL: u16 = 0xB2;
const PIC_MASK: u16 = 0x21;
const CMOS_INDEX: u16 = 0x70;
const CMOS_DATA: u16 = 0x71;
const CMOS_SHUTDOWN: u8 = 0x0F;
/// ICH9 PM1 control (PMBASE + 4): SLP_EN with SLP_TYP 1, QEMU's S3 (suspend to RAM, which
/// resumes in the BIOS at the waking vector the OS left).
const PM1_CONTROL: u16 = 4;
const SLEEP_S3: u16 = 1 << 13 | 1 << 10;
/// The host bridge's PAM0 (0x90): the shadowing of the BIOS's code at 0xF0000.
const PAM0: u32 = 0x90;

/// The ways out of the world: the interrupt controllers that can INIT the CPU, A20 and the
/// reset and sleep controls, SMIs, and what the BIOS would run after an INIT (its shutdown
/// status in CMOS, its code's shadowing). Each write refused, logged, without effect.
fn escapes(cpu: &mut Agent, info: &BootInfo) -> Result<(), Failed> {
    let mut want = [Entry { addr: 0, class: 0, write: true, detail: 0 }; 32];
    let mut n = 0;
    let mut expect = |addr: u64, class: u8, detail: u64| {
        if let Some(slot) = want.get_mut(n) {
            *slot = Entry { addr, class, write: true, detail };
        }
        n += 1;
    };
    for (at, value) in [(LAPIC_ICR, INIT_SELF), (IOAPIC_SELECT, 0x10), (HPET_CONFIG, 0x3)] {
        check(arch::probe_write(at, value), "an interrupt controller took the host world's write")?;
        expect(at, CLASS_NOT_HOST, 0);
    }
    let a20 = arch::in8(PORT_A);
    let mask = arch::in8(PIC_MASK);
    arch::out_kept(CMOS_INDEX, CMOS_SHUTDOWN);
    let shutdown = arch::in8(CMOS_DATA);
    for (port, value) in [(PORT_A, 0u8), (I8042_COMMAND, I8042_WRITE_OUTPUT), (APM_CONTROL, 0), (PIC_MASK, 0)] {
        arch::out_kept(port, value);
        expect(u64::from(port), CLASS_PORT, u64::from(value));
    }
    arch::out_kept(CMOS_INDEX, CMOS_SHUTDOWN);
    arch::out_kept(CMOS_DATA, 0x0A);
    expect(u64::from(CMOS_DATA), CLASS_PORT, 0x0A);
    let pm = pm_block(info);
    if let Some(base) = pm {
        arch::out16_kept(base + PM1_CONTROL, SLEEP_S3);
        expect(u64::from(base + PM1_CONTROL), CLASS_PORT, u64::from(SLEEP_S3));
    }
    arch::out32(CONFIG_ADDRESS, CONFIG_ENABLE | PAM0);
    let pam = arch::in32(CONFIG_DATA);
    arch::out32(CONFIG_DATA, 0x3333_3333);
    expect(u64::from(CONFIG_DATA), CLASS_PORT, 0x3333_3333);
    arch::out32(CONFIG_ADDRESS, CONFIG_ENABLE | PAM0);
    check(arch::in32(CONFIG_DATA) == pam, "the host bridge's PAM changed")?;
    check(arch::in8(PORT_A) & 2 != 0 && a20 & 2 != 0, "A20 is off")?;
    check(arch::in8(PIC_MASK) == mask, "the 8259's mask changed")?;
    arch::out_kept(CMOS_INDEX, CMOS_SHUTDOWN);
    check(arch::in8(CMOS_DATA) == shutdown, "CMOS's shutdown status changed")?;
    // XCR0 with AVX: the upper halves of the vector registers, which no world switch saves,
    // would be shared with the TDs.
    let xcr0 = arch::try_xcr0_with_avx();
    expect(0, CLASS_XCR, 0x7);
    check(xcr0 == 0x3, "XCR0 took AVX state")?;

    let mut log = [Entry { addr: 0, class: 0, write: false, detail: 0 }; 32];
    let got = drain(cpu, &mut log);
    check(got == n, "the fault log does not hold one entry per refused way out")?;
    check(log[..n.min(32)] == want[..n.min(32)], "a fault-log entry names another way out")?;
    say!(
        "world: host world tried the ways out of its world: the local APIC's ICR (an INIT to itself), the I/O APIC and the HPET: 3 writes refused (#MC); A20 off through port A, the i8042's output port, an SMI through APM control, the 8259's mask, CMOS's shutdown status (0x0A: jump through 40:67 after an INIT){}, PAM0 through 0xCF8/0xCFC: {} port writes refused (A20 still on, the 8259 still masked, the shutdown status {shutdown:#x} and PAM0 {pam:#x} as before); XCR0 with AVX refused (still {xcr0:#x}: x87 and SSE, the state the TSM switches); the host read {got} entries back from the fault log",
        if pm.is_some() { ", S3 through ACPI PM1 control" } else { "" },
        n - 4
    );
    Ok(())
}

/// The ACPI PM block of q35's LPC bridge (ICH9 PMBASE), if ACPI is enabled there: read from its
/// configuration space, which is the host's to read.
fn pm_block(info: &BootInfo) -> Option<u16> {
    let ecam = seamless_host::device::find_ecam(info.rsdp).base;
    let lpc = ecam + LPC_FUNCTION;
    let pmbase = arch::probe_read(lpc + 0x40)? as u32 & 0xFF80;
    let enabled = arch::probe_read(lpc + 0x44)? & 0x80 != 0;
    (enabled && pmbase != 0).then_some(pmbase as u16)
}

/// Names joined with ", ".
struct Names<'a>(&'a [&'a str]);

impl core::fmt::Display for Names<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        for (i, n) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(n)?;
        }
        Ok(())
    }
}

/// NVMe CC (controller configuration): a register a write would change.
const NVME_CC: u64 = 0x14;
/// Fault-log class of MMIO a TDI imported.
const CLASS_IMPORTED: u8 = 0xF2;

/// Before DMABUF.IMPORT: the host world reads BAR0's CC register, its own device, through its
/// own mapping. Returns the value it read.
///
/// # Errors
/// [`Failed`] if the read was refused (the BAR is still the host's).
pub fn bar_before_import(bar: u64) -> Result<u64, Failed> {
    arch::probe_read(bar + NVME_CC)
        .ok_or(Failed::new("host world", "the host world could not reach its own BAR0 before the import"))
}

/// A protected object of the running assignment the host world attacks: its name, address and
/// the fault-log class (and owner, if any) its refusal must carry.
#[derive(Clone, Copy, Debug)]
struct Target {
    name: &'static str,
    addr: u64,
    class: u8,
    owner: Option<u64>,
}

/// After DMABUF.IMPORT, with the TDI running: the host world reads and writes each protected
/// object of the assignment with its own instructions: the imported BAR0, a TD private page, the
/// TDR, a TDCS page, an S-EPT table, an IOMMU table, the PAMT, TSM memory and the VT-d
/// registers, found as a hostile VMM finds them (its own layout, TDH.PHYMEM.PAGE.RDMD of the
/// pages it handed out). Each access must be refused (#MC, nothing read) and be in the fault
/// log with the object's class. Returns the objects attacked and the log entries read back.
///
/// # Errors
/// [`Failed`] naming the first check that failed.
pub fn attack_assignment(cpu: &mut Agent, tdr: u64, bar: u64) -> Result<(usize, u64), Failed> {
    let (tsm, pamt) = (cpu.boot.tsm[0], cpu.layout.pamt.0);
    let mut found: [Option<(u64, u64)>; 5] = [None; 5];
    let kinds = [PageType::Regular, PageType::Tdr, PageType::Tdcs, PageType::Sept, PageType::IommuTable];
    tsm_client::host::td::for_each_donated(cpu, &mut |md| {
        for (slot, kind) in found.iter_mut().zip(kinds) {
            let ours = kind == PageType::IommuTable || md.owner == tdr;
            if slot.is_none() && md.ty == kind as u64 && ours {
                *slot = Some((md.pa, md.owner));
            }
        }
    })
    .map_err(|e| Failed::new("host world", e))?;
    let page = |i: usize, what: &'static str| found[i].ok_or(Failed::new("host world", what));
    let (private, tdr_page, tdcs, sept, iommu) = (
        page(0, "no TD private page")?,
        page(1, "no TDR")?,
        page(2, "no TDCS page")?,
        page(3, "no S-EPT page")?,
        page(4, "no IOMMU table")?,
    );
    let targets = [
        Target { name: "imported BAR0 (CC)", addr: bar + NVME_CC, class: CLASS_IMPORTED, owner: None },
        Target { name: "TD private page", addr: private.0, class: PageType::Regular as u8, owner: Some(tdr) },
        Target { name: "TDR", addr: tdr_page.0, class: PageType::Tdr as u8, owner: None },
        Target { name: "TDCS", addr: tdcs.0, class: PageType::Tdcs as u8, owner: Some(tdr) },
        Target { name: "S-EPT table", addr: sept.0, class: PageType::Sept as u8, owner: Some(tdr) },
        Target { name: "IOMMU table", addr: iommu.0, class: PageType::IommuTable as u8, owner: Some(iommu.1) },
        Target { name: "PAMT", addr: pamt, class: CLASS_RESERVED, owner: None },
        Target { name: "TSM memory", addr: tsm + 0x1000, class: CLASS_TSM, owner: None },
        Target { name: "VT-d registers", addr: VTD_REGS, class: CLASS_NOT_HOST, owner: None },
    ];
    let logged = attack(cpu, &targets)?;
    Ok((targets.len(), logged))
}

/// The host world reads and writes each target with its own instructions: each access must be
/// refused (#MC, nothing read) and be in the fault log, in order, with the target's class and
/// owner. Returns the log entries read back.
fn attack(cpu: &mut Agent, targets: &[Target]) -> Result<u64, Failed> {
    let (mc_before, _) = arch::recovered();
    for t in targets {
        let read = arch::probe_read(t.addr);
        let written = arch::probe_write(t.addr, PATTERN);
        say!(
            "world: host world -> {} at {:#x}: {}",
            t.name,
            t.addr,
            if read.is_none() && written { "read and write refused (#MC), nothing read" } else { "REACHED" }
        );
        check(read.is_none() && written, "a protected object reached the host world")?;
    }
    let (mc_after, _) = arch::recovered();
    check(mc_after - mc_before == 2 * targets.len() as u64, "not every refused access came back as #MC")?;
    let mut log = [Entry { addr: 0, class: 0, write: false, detail: 0 }; 32];
    let n = drain(cpu, &mut log);
    check(n == 2 * targets.len(), "the fault log does not hold one entry per refused access")?;
    for (i, t) in targets.iter().enumerate() {
        for (j, write) in [false, true].into_iter().enumerate() {
            let e = log[2 * i + j];
            let owner_ok = t.owner.is_none_or(|o| e.detail == o);
            check(
                e.addr == t.addr && e.class == t.class && e.write == write && owner_ok,
                "a fault-log entry names another object",
            )?;
        }
    }
    Ok(n as u64)
}

/// A TD's private page the host world attacks: what it is, and its GPA.
pub type PrivatePage = (&'static str, u64);

/// While a TD runs (its vCPU out of guest mode at an exit, between two VP.ENTERs): the host
/// world reads and writes the TD's private pages named (their frames found as a hostile VMM
/// finds them: TDH.MEM.SEPT.RD's entry), its TDR, a TDCS page, its vCPU's TDVPR, an S-EPT
/// table, and the TSM's memory where the vCPU's VMCB and saved registers live. Each access
/// must be refused (#MC, nothing read) and in the fault log with the object's class and owner.
/// Returns the objects attacked and the log entries read back.
///
/// # Errors
/// [`Failed`] naming the first check that failed.
pub fn attack_td(cpu: &mut Agent, td: &TdPages, vcpu: u64, private: &[PrivatePage]) -> Result<(usize, u64), Failed> {
    const MAX: usize = 8;
    let tdr = td.tdr;
    let sept = first_sept(cpu, tdr)?;
    let mut targets = [Target { name: "", addr: 0, class: 0, owner: None }; MAX + 5];
    let fixed = [
        Target { name: "TDR", addr: tdr, class: PageType::Tdr as u8, owner: None },
        Target { name: "TDCS", addr: td.tdcs[0], class: PageType::Tdcs as u8, owner: Some(tdr) },
        Target { name: "TDVPR (the vCPU's state)", addr: vcpu, class: PageType::Tdvpr as u8, owner: Some(tdr) },
        Target { name: "S-EPT table", addr: sept, class: PageType::Sept as u8, owner: Some(tdr) },
        // The TSM's image, whose pools hold the vCPUs' VMCBs and saved registers.
        Target { name: "TSM memory", addr: cpu.boot.tsm[0] + 0x1000, class: CLASS_TSM, owner: None },
    ];
    if private.len() > MAX {
        return Err(Failed::new("host world", "more private pages than the fault log holds"));
    }
    for (slot, &(name, gpa)) in targets.iter_mut().zip(private) {
        let addr = private_frame(cpu, tdr, gpa)?;
        *slot = Target { name, addr, class: PageType::Regular as u8, owner: Some(tdr) };
    }
    let n = private.len();
    targets[n..n + fixed.len()].copy_from_slice(&fixed);
    let targets = &targets[..n + fixed.len()];
    // What the log holds already (the refusals of the TD's own run, such as a TDVF's write to
    // RCBA the host passed through) is read first, so the entries checked are the attack's.
    drain(cpu, &mut [Entry { addr: 0, class: 0, write: false, detail: 0 }; 32]);
    let logged = attack(cpu, targets)?;
    Ok((targets.len(), logged))
}

/// The first S-EPT table of TD `tdr` among the pages the host donated, by TDH.PHYMEM.PAGE.RDMD
/// from the first on: a TD's tables are donated with it, so the scan stops within a few pages
/// rather than reading the metadata of every page (a whole scan is 100,000 SEAMCALLs, seconds
/// of a running TD's time under TCG).
fn first_sept(cpu: &mut Agent, tdr: u64) -> Result<u64, Failed> {
    let (start, end) = cpu.donated();
    let mut pa = start;
    while pa < end {
        let md = tsm_client::host::call(cpu, "TDH.PHYMEM.PAGE.RDMD", Regs::call(leaf::PHYMEM_PAGE_RDMD, pa, 0, 0, 0))
            .map_err(|e| Failed::new("host world", e))?;
        if md.rcx == PageType::Sept as u64 && md.rdx == tdr {
            return Ok(pa);
        }
        pa += 0x1000;
    }
    Err(Failed::new("host world", "no S-EPT page"))
}

/// The frame behind a MAPPED private GPA of TD `tdr`, read from its S-EPT leaf (4K or 2M).
fn private_frame(cpu: &mut Agent, tdr: u64, gpa: u64) -> Result<u64, Failed> {
    let r = tsm_client::host::raw(cpu, Regs::call(leaf::MEM_SEPT_RD, gpa & !0xFFF, tdr, 0, 0));
    let walked = r.status() == Status::SUCCESS || r.status().code() == Status::EPT_WALK_FAILED.code();
    let level = r.rdx & 7;
    if !walked || SeptState::from_code((r.rdx >> 8) & 0xFF) != Some(SeptState::Mapped) || level > 1 {
        return Err(Failed::new("host world", "a private page to attack is not a mapped 4K or 2M leaf"));
    }
    let size = 0x1000u64 << (9 * level);
    Ok((r.rcx & 0x000F_FFFF_FFFF_F000 & !(size - 1)) + (gpa & (size - 1) & !0xFFF))
}
