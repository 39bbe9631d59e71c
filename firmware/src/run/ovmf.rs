//! Mode `ovmf`: Debian's OVMF.fd, unmodified, booted as a TD in the TD world, the way a TDX VMM
//! boots a TDVF.
//!
//! The host agent reads the image from fw_cfg (`opt/seamless/ovmf`), builds the TD from its TDX
//! metadata (`tsm_client::host::tdvf::build`: PAGE.ADD and MR.EXTEND of the BFV, the CFV, the
//! TD HOB describing `td_mib` MiB of RAM, TEMP_MEM; the rest of the RAM AUGed at the sizes edk2
//! accepts), checks that the TSM's MRTD is the one `attest` computes from the same file, and
//! runs the vCPU with `tsm_client::host::ghci::run`, serving every TDG.VP.VMCALL on this
//! machine ([`FirmwareMachine`]): COM1 is the real UART (OVMF's console is the run's console),
//! PCI configuration reaches the real host bridge and LPC bridge, the PM timer is the real one,
//! fw_cfg is the TD's view of QEMU's. When the UEFI shell's prompt shows, the host types
//! `reset -s`; the shell powers the TD off (ACPI S5), the host tears it down, checks that every
//! page came back, and prints the figures (COM3 frames).

use core::fmt;

use attest::tdvf::Tdvf;
use tsm::addr::Pfn;
use tsm::td::TdParams;
use tsm::Tsm;
use tsm_client::host::ghci::ports::PowerRequest;
use tsm_client::host::ghci::run::{self as td_run, Ended, RunPlan, RunReport};
use tsm_client::host::ghci::{Ghci, Machine, PciFilter, Stop, TdView};
use tsm_client::host::td as flow_td;
use tsm_client::host::tdvf::{self, Aug};

use super::{fail, figure, Hex, Ms};
use crate::arch::{self, ExitCode};
use crate::config::{RunConfig, OVMF_FILE};
use crate::drivers::acpi;
use crate::drivers::fw_cfg::{FwCfg, FwCfgError};
use crate::drivers::legacy::LegacyPorts;
use crate::drivers::pci::Pcie;
use crate::drivers::serial::Uart;
use crate::drivers::tsc::Tsc;
use crate::host::{Host, HostCpu};
use crate::memmap::MemoryMap;
use crate::platform::FirmwarePlatform;

/// What the host types at the UEFI shell's prompt: power off (ACPI S5).
const SHELL_COMMAND: &[u8] = b"reset -s\r";

/// The machine a TDVF TD's requests are served on: the legacy ports, ECAM, fw_cfg, CPUID and the
/// TSC of the QEMU machine the firmware runs on.
struct FirmwareMachine<'a> {
    tsc: Tsc,
    ports: LegacyPorts,
    pcie: &'a Pcie,
    fw_cfg: &'a FwCfg,
}

impl fmt::Debug for FirmwareMachine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FirmwareMachine").finish_non_exhaustive()
    }
}

impl Machine for FirmwareMachine<'_> {
    fn io_read(&mut self, port: u16, size: u8) -> u32 {
        self.ports.read(port, size)
    }
    fn io_write(&mut self, port: u16, size: u8, value: u32) {
        self.ports.write(port, size, value);
    }
    fn pci_config_read(&mut self, bdf: u16, reg: u16, size: u8) -> u32 {
        self.pcie.config_read(bdf, reg, size).unwrap_or(u32::MAX)
    }
    fn pci_config_write(&mut self, bdf: u16, reg: u16, size: u8, value: u32) {
        self.pcie.config_write(bdf, reg, size, value);
    }
    fn fw_cfg_select(&mut self, key: u16) {
        self.fw_cfg.select_item(key);
    }
    fn fw_cfg_read(&mut self, buf: &mut [u8]) {
        for b in buf {
            *b = self.fw_cfg.read_byte();
        }
    }
    fn cpuid(&self, leaf: u32, subleaf: u32) -> [u32; 4] {
        let r = x86::cpuid::native_cpuid::cpuid_count(leaf, subleaf);
        [r.eax, r.ebx, r.ecx, r.edx]
    }
    fn now_ns(&self) -> u64 {
        self.tsc.ticks_to_ns(self.tsc.now())
    }
    fn wait_until(&mut self, deadline_ns: u64) {
        while self.now_ns() < deadline_ns {
            core::hint::spin_loop();
        }
    }
}

/// The OVMF TD: GPAW 48 (the shared bit must be a page-table bit the TD can set: QEMU runs with
/// `phys-bits=48`), one vCPU (edk2 2022.11 needs MAX_VCPUS 1, `tdvf::build`).
fn params() -> TdParams {
    TdParams {
        attributes: 0,
        xfam: 3,
        max_vcpus: 1,
        gpaw: 48,
        mr_config_id: [0; 48],
        mr_owner: [0; 48],
        mr_owner_config: [0; 48],
    }
}

/// Seconds with three decimals, from nanoseconds.
struct Secs(u64);

impl fmt::Display for Secs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:03}", self.0 / 1_000_000_000, self.0 / 1_000_000 % 1000)
    }
}

/// Mode `ovmf`; ends QEMU with success only if the TD reached the shell and powered off.
pub fn run(
    config: &RunConfig,
    tsc: &Tsc,
    tsm: &mut Tsm<FirmwarePlatform>,
    host: &mut Host,
    map: &MemoryMap,
    ecam: acpi::Ecam,
) -> ! {
    let fw = FwCfg::new().unwrap_or_else(|e| fail(OVMF_FILE, &e));
    let ovmf = match fw.read_large_file(OVMF_FILE) {
        Ok(f) => f,
        Err(FwCfgError::NotFound) => fail(
            OVMF_FILE,
            &"no OVMF image in fw_cfg: the launcher passes -fw_cfg name=opt/seamless/ovmf,file=/usr/share/ovmf/OVMF.fd",
        ),
        Err(e) => fail(OVMF_FILE, &e),
    };
    say!("host: OVMF image {} KiB from fw_cfg {OVMF_FILE}", ovmf.len() / 1024);
    let pcie = Pcie::open(ecam, map).unwrap_or_else(|e| fail("PCIe", &format_args!("ECAM at {:#x} unusable", e.base)));
    let ram_bytes = config.td_mib << 20;
    let ram = [(0, ram_bytes)];
    let mut cpu = HostCpu::new(tsm, host, *tsc);
    // The per-call defmt record would dominate the run (every TDCALL and TDVMCALL is a call).
    cpu.tsm.platform_mut().log_calls = false;
    let t_build = tsc.now();
    let built = tdvf::build(&mut cpu, ovmf, &params(), &ram, Aug::UpFront).unwrap_or_else(|e| fail("TDVF build", &e));
    let build_us = tsc.ticks_to_us(tsc.now().wrapping_sub(t_build));
    let tdr = Pfn::new(built.td.tdr >> 12).unwrap_or(Pfn::ZERO);
    let mrtd = cpu.tsm.td_measurements(tdr).map(|m| m.mrtd).unwrap_or([0; 48]);
    let expected = Tdvf::parse(ovmf).map(|t| t.mrtd()).unwrap_or([0xFF; 48]);
    say!(
        "host: TDVF TD built in {} ms: {} pages added ({} measured), {} x 2 MiB + {} x 4 KiB AUGed, {} MiB of RAM in {} HOB ranges",
        Ms(build_us),
        built.added,
        built.measured,
        built.augs.0,
        built.augs.1,
        config.td_mib,
        built.map.ranges().len()
    );
    say!(
        "host: MRTD {} ({})",
        Hex(&mrtd),
        if mrtd == expected { "equals attest measure's" } else { "DIFFERS from attest measure's" }
    );
    if mrtd != expected {
        fail("TDVF build", &format_args!("the TSM's MRTD is not attest measure's {}", Hex(&expected)));
    }
    let mut ranges = [(0u64, 0u64); tdvf::MAX_RANGES];
    for (slot, r) in ranges.iter_mut().zip(built.map.ranges()) {
        *slot = (r.start, r.length);
    }
    let view = TdView {
        td: built.td,
        shared_bit: 1 << (params().gpaw - 1),
        ram: &ranges[..built.map.ranges().len()],
        pci: PciFilter::Q35_PLATFORM,
    };
    let mut machine = FirmwareMachine { tsc: *tsc, ports: LegacyPorts::new(), pcie: &pcie, fw_cfg: &fw };
    let mut ghci = Ghci::new(&mut machine, &view, config.fw_cfg_dma).unwrap_or_else(|e| fail("fw_cfg for the TD", &e));
    say!("host: booting OVMF as a TD; its console follows");
    let start = machine.now_ns();
    let plan = RunPlan { deadline_ns: start + config.td_timeout_s * 1_000_000_000, shell_command: Some(SHELL_COMMAND) };
    let mut report = RunReport::default();
    let switches_before = cpu.tsm.platform().td.as_ref().map_or(0, |w| w.switches);
    let ended = td_run::run(&mut cpu, &mut machine, built.vcpu, &view, &mut ghci, &plan, &mut report);
    let wall = machine.now_ns() - start;
    say!("");
    let ended = match ended {
        Ok(e) => e,
        Err(e) => {
            last_state(&report);
            fail("OVMF TD", &e)
        }
    };
    say!("host: the OVMF TD ended after {} s: {ended}", Secs(wall));
    if let Some(m) = cpu.tsm.td_measurements(tdr) {
        for (i, r) in m.rtmr.iter().enumerate() {
            say!("host: RTMR{i} {}", Hex(r));
        }
        // As framed data for the tools: MRTD, then RTMR0..3.
        let mut rtmrs = [0u8; 4 * 48];
        for (chunk, r) in rtmrs.chunks_exact_mut(48).zip(&m.rtmr) {
            chunk.copy_from_slice(r);
        }
        artifact("ovmf-mrtd.bin", &m.mrtd);
        artifact("ovmf-rtmrs.bin", &rtmrs);
    }
    print_figures(&cpu, &ghci, &report, start, switches_before);
    let clean = matches!(ended, Ended::Stopped(Stop::Power(PowerRequest::Shutdown))) && report.shell_ns.is_some();
    if !clean {
        last_state(&report);
    }
    // Torn down like any TD, whatever the end: every donated page comes back.
    flow_td::destroy(&mut cpu, built.td.tdr, &[built.vcpu]).unwrap_or_else(|e| fail("OVMF TD teardown", &e));
    match flow_td::check_all_free(&mut cpu) {
        Ok(n) => say!("host: OVMF TD torn down; all {n} donated pages are free again"),
        Err(e) => fail("OVMF TD teardown", &e),
    }
    if !clean {
        fail("OVMF TD", &format_args!("it did not reach the shell and power off: {ended}"));
    }
    say!("seamless firmware: ovmf done");
    arch::exit_qemu(ExitCode::Success)
}

/// A file on COM3 (`firmware artifacts` decodes it).
fn artifact(name: &str, data: &[u8]) {
    let mut com3 = Uart::com3();
    if let Err(e) = seamless_drivers::frame::encode(name, data, &mut |b| com3.write_bytes(b)) {
        say!("host: {name}: cannot frame it: {e:?}");
    }
}

/// The last exit's registers, for a run that ended badly.
fn last_state(report: &RunReport) {
    let r = &report.last_exit;
    say!(
        "host: last TD exit after {} entries: RAX {:#x} RCX {:#x} RDX {:#x} R8 {:#x} R10 {:#x} R11 {:#x} R12 {:#x} R13 {:#x} R14 {:#x} R15 {:#x}",
        report.entries,
        r.rax,
        r.rcx,
        r.rdx,
        r.r8,
        r.r10,
        r.r11,
        r.r12,
        r.r13,
        r.r14,
        r.r15
    );
}

fn print_figures(cpu: &HostCpu<'_>, ghci: &Ghci, report: &RunReport, start: u64, switches_before: u64) {
    let since = |t: Option<u64>| t.map(|t| t.saturating_sub(start));
    if let Some(ns) = since(report.first_output_ns) {
        figure("ovmf_td_first_output_s", &Secs(ns), "s");
    }
    if let Some(ns) = since(report.shell_ns) {
        figure("ovmf_td_shell_s", &Secs(ns), "s");
    }
    let v = &ghci.counts;
    say!(
        "host: TDVMCALLs: {} I/O, {} MMIO, {} MSR, {} CPUID, {} HLT, {} MapGPA, {} other, {} refused",
        v.io,
        v.mmio,
        v.msr,
        v.cpuid,
        v.hlt,
        v.map_gpa,
        v.other,
        v.refused
    );
    let p = &ghci.ports.counts;
    say!(
        "host: I/O by device: {} UART, {} PCI, {} PM timer, {} fw_cfg, {} CMOS, {} power, {} legacy, {} absent (first {:#x}); fw_cfg bytes {} passed through, {} the host's, {} DMA transfers ({})",
        p.uart,
        p.pci,
        p.pm_timer,
        p.fw_cfg,
        p.cmos,
        p.power,
        p.legacy,
        p.absent,
        p.first_absent,
        ghci.fw_cfg.bytes_real,
        ghci.fw_cfg.bytes_own,
        ghci.fw_cfg.dma_transfers,
        if ghci.fw_cfg.dma_offered() { "DMA offered" } else { "DMA hidden" }
    );
    let m = &ghci.mmio.counts;
    let c = &ghci.conversions;
    say!(
        "host: MMIO: {} ECAM, {} I/O APIC, {} absent (first {:#x}); MapGPA: {} calls, {} pages to shared, {} to private, {} 2 MiB leaves split; {} timer interrupts posted ({} merged), {} halts ({} ms halted), {} VP.ENTERs",
        m.ecam,
        m.ioapic,
        m.absent,
        m.first_absent,
        c.calls,
        c.to_shared,
        c.to_private,
        c.demoted,
        report.posted,
        report.merged,
        report.halts,
        report.halted_ns / 1_000_000,
        report.entries
    );
    figure("ovmf_td_vp_enters", &report.entries, "calls");
    figure("ovmf_td_tdvmcalls", &(v.io + v.mmio + v.msr + v.cpuid + v.hlt + v.map_gpa + v.other), "calls");
    figure("ovmf_td_tdvmcall_io", &v.io, "calls");
    figure("ovmf_td_fw_cfg_bytes", &(ghci.fw_cfg.bytes_real + ghci.fw_cfg.bytes_own), "bytes");
    if let Some(w) = cpu.tsm.platform().td.as_ref() {
        let k = &w.counts;
        say!(
            "world: TD exits: {} nested page faults, {} TDCALLs, {} CPUID ({} answered by the TSM), {} MSR ({} in the TSM), {} I/O, {} HLT, {} other; #VEs: {} CPUID, {} HLT, {} I/O, {} MSR, {} EPT; {} interrupts injected ({} deferred to a later exit), {} events re-delivered, {} table resets, {} time slices ended by the preemption timer",
            k.npf,
            k.tdcall,
            k.cpuid,
            k.cpuid_in_tsm,
            k.msr,
            k.msr_in_tsm,
            k.io,
            k.hlt,
            k.other,
            k.ve[0],
            k.ve[1],
            k.ve[2],
            k.ve[3],
            k.ve[4],
            k.interrupts,
            k.deferred,
            k.redelivered,
            w.resets,
            k.preempted
        );
        figure("ovmf_td_world_switches", &(w.switches - switches_before), "exits");
        figure("ovmf_td_ves", &k.ve.iter().sum::<u64>(), "ves");
    }
}
