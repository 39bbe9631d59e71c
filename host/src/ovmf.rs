//! Mode `ovmf`: Debian's OVMF.fd, unmodified, booted as a TD in the TD world, the way a TDX VMM
//! boots a TDVF.
//!
//! The host agent reads the image from fw_cfg (`opt/seamless/ovmf`), builds the TD from its TDX
//! metadata (`tsm_client::host::tdvf::build`: PAGE.ADD and MR.EXTEND of the BFV, the CFV, the
//! TD HOB describing `td_mib` MiB of RAM, TEMP_MEM; the rest of the RAM AUGed at the sizes edk2
//! accepts), checks that the TSM's MRTD (SEAMLESS.TD.MR.RD) is the one `attest` computes from
//! the same file, and runs the vCPU with `tsm_client::host::ghci::run`, serving every
//! TDG.VP.VMCALL from the host world ([`HostMachine`]): COM1 is the real UART (OVMF's console
//! is the run's console), PCI configuration reaches the real host bridge and LPC bridge (reads
//! through ECAM, writes through ports 0xCF8/0xCFC, where the TSM sees the register), the PM
//! timer is the real one, fw_cfg is the TD's view of QEMU's. When the UEFI shell's prompt
//! shows, the host types `reset -s`; the shell powers the TD off (ACPI S5), the host tears it
//! down, checks that every page came back, and prints the figures (COM3 frames). The TD run is
//! the phase `ovmf_td`, at whose end the TSM breaks the TD worlds' exits down by kind.

use core::fmt;

use attest::tdvf::{SectionType, Tdvf};
use tsm::abi::host::leaf;
use tsm::td::TdParams;
use tsm::{Regs, TdExit};
use tsm_client::host::ghci::ports::PowerRequest;
use tsm_client::host::ghci::run::{self as td_run, DeviceRequests, Ended, LastState, RunPlan, RunReport};
use tsm_client::host::ghci::vfn::VirtualFunction;
use tsm_client::host::ghci::{Ghci, Machine, PciFilter, Stop, TdView};
use tsm_client::host::tdvf::{self, Aug};
use tsm_client::host::unbind::{self, Holdings};
use tsm_client::host::{call, HostError, HostMemory};

use seamless_drivers::bootinfo::BootInfo;
use seamless_drivers::config::{OvmfDevice, RunConfig, OVMF_DISK_MARKER, OVMF_FILE, PHANTOM_FUNCTION};
use seamless_drivers::console::{figure, Hex, Ms};
use seamless_drivers::fw_cfg::{FwCfg, FwCfgError};
use seamless_drivers::legacy::LegacyPorts;
use seamless_drivers::pci::Pcie;
use seamless_drivers::say;
use seamless_drivers::serial::Uart;
use seamless_drivers::tsc::Tsc;
use seamless_drivers::{phases, phys};
use seamless_host::device::Nvme;
use seamless_host::mem::DoeLink;
use seamless_host::{device, Cpu, Failed};

use crate::arch::{self, ExitCode};
use crate::ovmf_device::{DeviceHost, PassThrough, LOG_MAX};
use crate::run::{fail, Agent};
use crate::world_probe;

/// The largest TDVF the host takes (Debian's OVMF.fd is 2 MiB; the 4 MiB builds fit too, so
/// the build can refuse them for what they are).
const OVMF_MAX: u64 = 4 << 20;

/// The entry after whose exit the host attacks the running TD: mid-boot (a boot to the shell is
/// 70,000 to 140,000 entries, most of them the PM timer reads of the shell's countdown), once
/// OVMF has accepted its RAM below 4 GiB (SEC) and is in DXE.
const ATTACK_AFTER_ENTRIES: u64 = 15_000;

/// The boot disk's marker, as the console shows it.
const DISK_MARKER: &[u8] = OVMF_DISK_MARKER.as_bytes();

/// What the host types at the UEFI shell's prompt: power off (ACPI S5).
const SHELL_COMMAND: &[u8] = b"reset -s\r";

/// The machine a TDVF TD's requests are served on: the legacy ports, PCI configuration, fw_cfg,
/// CPUID and the TSC of the QEMU machine, as the host world reaches them.
struct HostMachine<'a> {
    tsc: Tsc,
    ports: LegacyPorts,
    pcie: &'a Pcie,
    fw_cfg: &'a FwCfg,
    /// The device function passed to the TD (`ovmf_device=nvme`).
    device: Option<PassThrough>,
}

impl fmt::Debug for HostMachine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostMachine").finish_non_exhaustive()
    }
}

impl Machine for HostMachine<'_> {
    fn io_read(&mut self, port: u16, size: u8) -> u32 {
        self.ports.read(port, size)
    }
    fn io_write(&mut self, port: u16, size: u8, value: u32) {
        self.ports.write(port, size, value);
    }
    fn pci_config_read(&mut self, bdf: u16, reg: u16, size: u8) -> u32 {
        if let Some(d) = self.device.as_ref().filter(|d| d.vfn.bdf == bdf) {
            let pcie = self.pcie;
            return d.vfn.read(reg, size, |offset| pcie.config_read(bdf, offset, 4).unwrap_or(u32::MAX));
        }
        self.pcie.config_read(bdf, reg, size).unwrap_or(u32::MAX)
    }
    fn pci_config_write(&mut self, bdf: u16, reg: u16, size: u8, value: u32) {
        if let Some(d) = self.device.as_mut().filter(|d| d.vfn.bdf == bdf) {
            // The TD's view only: the real function stays as the host set it.
            d.vfn.write(reg, size, value);
            return;
        }
        // Through the ports: the chipset's ECAM pages are read-only in the host world, and
        // there the TSM sees the register (PciFilter passes only the chipset's functions, whose
        // registers a TDVF writes all lie below 0x100). A write past 0x100 is dropped.
        Pcie::config_write_legacy(bdf, reg, size, value);
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
    fn device_mmio(&mut self, gpa: u64, size: u8, value: Option<u64>) -> Option<u64> {
        self.device.as_mut()?.mmio(gpa, size, value)
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
pub fn run(cpu: &mut Agent, info: &BootInfo, config: &RunConfig) -> ! {
    let fw = FwCfg::new().unwrap_or_else(|e| fail(OVMF_FILE, &e));
    let size = match fw.find(OVMF_FILE) {
        Ok((_, size)) => u64::from(size),
        Err(FwCfgError::NotFound) => fail(
            OVMF_FILE,
            &"no OVMF image in fw_cfg: the launcher passes -fw_cfg name=opt/seamless/ovmf,file=/usr/share/ovmf/OVMF.fd",
        ),
        Err(e) => fail(OVMF_FILE, &e),
    };
    if size > OVMF_MAX {
        fail(OVMF_FILE, &format_args!("{size} bytes: more than the {} MiB a TDVF may have here", OVMF_MAX >> 20));
    }
    // The host's copy, kept whole while the TD is built: its own RAM above the TDMR.
    // After it, the buffer for the TD's CC event log (`ovmf_device=nvme`).
    let frames = cpu.host.frames();
    let whole = size.next_multiple_of(4096) + LOG_MAX;
    let room = frames.ranges().iter().find_map(|&(s, e)| {
        let start = s.max(cpu.layout.tdmr.1);
        (start + whole <= e).then_some(start)
    });
    let lent = room.and_then(|at| phys::lend(&frames, at, whole)).unwrap_or_else(|| {
        fail(OVMF_FILE, &"no host RAM above the TDMR to hold it (give QEMU more -m, or lower tdmr_max_mib)")
    });
    let (buf, log) = lent.split_at_mut(size.next_multiple_of(4096) as usize);
    let n = fw.read_file(OVMF_FILE, buf).unwrap_or_else(|e| fail(OVMF_FILE, &e));
    let ovmf: &[u8] = &buf[..n];
    say!("host: OVMF image {} KiB from fw_cfg {OVMF_FILE}, in host RAM at {:#x}", ovmf.len() / 1024, room.unwrap_or(0));
    let map = info.memory_map();
    let ecam = device::find_ecam(info.rsdp);
    let pcie = Pcie::open(ecam, &map).unwrap_or_else(|e| fail("PCIe", &format_args!("ECAM at {:#x} unusable", e.base)));
    let tsc = cpu.tsc();
    let with_device = matches!(config.ovmf_device, OvmfDevice::Nvme | OvmfDevice::NvmeLyingReport);
    // The NVMe function, BAR0 where its interface report names it; the TSM takes the remapping
    // unit over before the TD has a private page (as in mode assign).
    let nvme = with_device.then(|| {
        let nvme = crate::run::open_nvme(cpu, info, config);
        tsm_client::host::device::iommu_setup(cpu).unwrap_or_else(|e| fail("IOMMU.SETUP", &e));
        nvme
    });
    let (function, mut mailbox, passed) = match nvme {
        Some(Nvme { bdf, bar0, regs, mailbox }) => {
            let vfn =
                VirtualFunction::new(bdf.rid(), bar0.size).unwrap_or_else(|| fail("NVMe BAR0", &"not a BAR's size"));
            (Some((bdf, bar0)), Some(mailbox), Some(PassThrough { vfn, regs, imported: false, accesses: 0 }))
        }
        None => (None, None, None),
    };
    let ram_bytes = config.td_mib << 20;
    let ram = [(0, ram_bytes)];
    let t_build = tsc.now();
    let built = tdvf::build(cpu, ovmf, &params(), &ram, Aug::UpFront).unwrap_or_else(|e| fail("TDVF build", &e));
    let build_us = tsc.ticks_to_us(tsc.now().wrapping_sub(t_build));
    let mrtd = measurement(cpu, built.td.tdr, 0).unwrap_or_else(|e| fail("TD measurements", &e));
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
        "host: MRTD {} (the TSM's, SEAMLESS.TD.MR.RD; {})",
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
        pci: match function {
            Some((bdf, _)) => PciFilter::Q35_PLATFORM.with_function(bdf.rid()),
            None => PciFilter::Q35_PLATFORM,
        },
    };
    let mut dev = mailbox.as_mut().zip(function).map(|(mb, (bdf, bar0))| {
        let lie = config.ovmf_device == OvmfDevice::NvmeLyingReport;
        DeviceHost::new(DoeLink::new(mb, tsc), bdf, (bar0.base, bar0.size), config.nonce, lie, log)
    });
    let mut machine = HostMachine { tsc, ports: LegacyPorts::new(), pcie: &pcie, fw_cfg: &fw, device: passed };
    let mut ghci = Ghci::new(&mut machine, &view, config.fw_cfg_dma).unwrap_or_else(|e| fail("fw_cfg for the TD", &e));
    say!("host: booting OVMF as a TD; its console follows");
    let start = machine.now_ns();
    let device = match config.ovmf_device {
        OvmfDevice::None => DeviceRequests::Refuse,
        OvmfDevice::Phantom => DeviceRequests::Phantom(PHANTOM_FUNCTION),
        OvmfDevice::Nvme | OvmfDevice::NvmeLyingReport => DeviceRequests::Caller,
    };
    let plan = RunPlan {
        deadline_ns: start + config.td_timeout_s * 1_000_000_000,
        shell_command: Some(SHELL_COMMAND),
        device,
        marker: Some(DISK_MARKER),
        pause_after_entries: Some(ATTACK_AFTER_ENTRIES),
    };
    let mut report = RunReport::default();
    let private = private_pages(ovmf);
    arch::phase_mark(Some(phases::OVMF_TD));
    let ended = loop {
        match td_run::run(cpu, &mut machine, built.vcpu, &view, &mut ghci, &plan, &mut report) {
            Ok(Ended::Paused) => attack(cpu, &built, &report, &ghci, &private),
            Ok(Ended::DeviceRequest(regs)) => {
                let (Some(d), Some(pass)) = (dev.as_mut(), machine.device.as_mut()) else {
                    fail("OVMF TD", &"a device request with no device to serve it")
                };
                match d.serve(cpu, &mut ghci, &view, pass, &regs) {
                    Ok(answer) => report.answer = answer,
                    Err(f) => {
                        last_state(&report, &ghci);
                        let vcpus = [built.vcpu];
                        let holdings = Holdings { td: Some((&built.td, &vcpus)), iommu: true };
                        let c = unbind::cleanup(cpu, &mut d.doe, &d.a, holdings, &mut d.stats);
                        say!("cleanup after the failure: {c}");
                        fail(f.what, &f.why)
                    }
                }
                // The exit the run returned at still counts for the attack's entry.
                if plan.pause_after_entries == Some(report.entries) {
                    attack(cpu, &built, &report, &ghci, &private);
                }
            }
            other => break other,
        }
    };
    let wall = machine.now_ns() - start;
    say!("");
    arch::phase_mark(None);
    let ended = match ended {
        Ok(e) => e,
        Err(e) => {
            last_state(&report, &ghci);
            match tear_down(cpu, &built, dev.as_mut()) {
                Ok(n) => say!("host: OVMF TD torn down; all {n} donated pages are free again"),
                Err(e) => say!("host: OVMF TD teardown failed too: {e}"),
            }
            fail("OVMF TD", &e)
        }
    };
    say!("host: the OVMF TD ended after {} s: {ended}", Secs(wall));
    // MRTD, then RTMR0..3, as the TSM has them (SEAMLESS.TD.MR.RD), framed for the tools.
    let mut mrs = [[0u8; 48]; 5];
    for (which, mr) in mrs.iter_mut().enumerate() {
        *mr = measurement(cpu, built.td.tdr, which as u64).unwrap_or_else(|e| fail("TD measurements", &e));
    }
    for (i, r) in mrs[1..].iter().enumerate() {
        say!("host: RTMR{i} {}", Hex(r));
    }
    let mut rtmrs = [0u8; 4 * 48];
    for (chunk, r) in rtmrs.chunks_exact_mut(48).zip(&mrs[1..]) {
        chunk.copy_from_slice(r);
    }
    artifact("ovmf-mrtd.bin", &mrs[0]);
    artifact("ovmf-rtmrs.bin", &rtmrs);
    print_figures(&ghci, &report, start);
    let shut_down = matches!(ended, Ended::Stopped(Stop::Power(PowerRequest::Shutdown)));
    let clean = shut_down && (report.shell_ns.is_some() || report.marker_ns.is_some());
    if !clean {
        last_state(&report, &ghci);
    }
    let device = dev.as_ref().map(|d| device_outcome(config.ovmf_device, d, &machine, &report, start));
    // Torn down like any TD, whatever the end: every donated page comes back (with the
    // assignment, in the one unbind order).
    match tear_down(cpu, &built, dev.as_mut()) {
        Ok(n) => say!("host: OVMF TD torn down; all {n} donated pages are free again"),
        Err(e) => fail("OVMF TD teardown", &e),
    }
    if !clean {
        fail("OVMF TD", &format_args!("it did not reach the shell and power off: {ended}"));
    }
    if let Some(Err(why)) = device {
        fail("OVMF TD with a device", &why);
    }
    say!("seamless host: ovmf done");
    arch::exit(ExitCode::Success)
}

/// Tears the TD down, with its assignment if it has one (the one unbind order, which ends in
/// the TD's teardown and IOMMU.CLEAR); returns how many donated pages are free again.
fn tear_down(cpu: &mut Agent, built: &tdvf::BuiltTdvf, dev: Option<&mut DeviceHost<'_>>) -> Result<u64, HostError> {
    let vcpus = [built.vcpu];
    match dev {
        None => td_run::tear_down(cpu, &built.td, &vcpus),
        Some(d) => {
            let holdings = Holdings { td: Some((&built.td, &vcpus)), iommu: true };
            unbind::teardown(cpu, &mut d.doe, &d.a, holdings, &mut d.stats)?;
            tsm_client::host::td::check_all_free(cpu)
        }
    }
}

/// What the TD did with the device it was offered, against what the mode expects: under `nvme`
/// it accepted it, started it, attested and read the boot disk by DMA; under
/// `nvme-lying-report` it refused it (no MAP_MMIO) and booted on.
fn device_outcome(
    mode: OvmfDevice,
    d: &DeviceHost<'_>,
    machine: &HostMachine<'_>,
    report: &RunReport,
    start: u64,
) -> Result<(), &'static str> {
    let p = d.progress;
    let shared = machine.device.as_ref().map_or(0, |x| x.accesses);
    say!(
        "host: the TD's device flow: locked {}, MMIO mapped at {:#x}, started {}, attested {}; {} requests refused; {} shared MMIO accesses passed through to the device",
        p.locked,
        p.mapped.map_or(0, |g| g),
        p.started,
        p.attested,
        p.refused,
        shared
    );
    match mode {
        OvmfDevice::Nvme => {
            let Some(at) = report.marker_ns else {
                return Err("the TD never printed the boot disk's marker: it did not read its startup.nsh");
            };
            figure("ovmf_device_boot_s", &Secs(at.saturating_sub(start)), "s");
            if !(p.started && p.attested) {
                return Err("the TD did not accept, start and attest the device");
            }
            Ok(())
        }
        _ if p.mapped.is_some() => Err("the TD accepted a device whose report the host changed"),
        _ if !p.locked => Err("the TD never asked for its TDI"),
        _ => Ok(()),
    }
}

/// SEAMLESS.TD.MR.RD of the TD's register `which` (0 MRTD, 1..4 RTMR0..3).
fn measurement(cpu: &mut Agent, tdr: u64, which: u64) -> Result<[u8; 48], HostError> {
    let r = call(cpu, "SEAMLESS.TD.MR.RD", Regs::call(leaf::TD_MR_RD, tdr, which, 0, 0))?;
    let mut mr = [0u8; 48];
    for (chunk, w) in mr.chunks_exact_mut(8).zip([r.rcx, r.rdx, r.r8, r.r9, r.r10, r.r11]) {
        chunk.copy_from_slice(&w.to_le_bytes());
    }
    Ok(mr)
}

/// A file on COM3 (`firmware artifacts` decodes it).
fn artifact(name: &str, data: &[u8]) {
    let mut com3 = Uart::com3();
    if let Err(e) = seamless_drivers::frame::encode(name, data, &mut |b| com3.write_bytes(b)) {
        say!("host: {name}: cannot frame it: {e:?}");
    }
}

/// The private pages of a TDVF TD the host attacks while it runs: its measured firmware (the
/// BFV's first page), the TD HOB it was handed, and RAM it accepted (1 MiB: SEC accepts all RAM
/// below 4 GiB before PEI).
fn private_pages(ovmf: &[u8]) -> [world_probe::PrivatePage; 3] {
    let tdvf = Tdvf::parse(ovmf).unwrap_or_else(|e| fail("TDVF metadata", &e));
    let bfv = tdvf.sections().find(|s| s.ty == SectionType::Bfv).map_or(0, |s| s.gpa);
    let hob = tdvf.td_hob().map_or(0, |s| s.gpa);
    [("BFV (OVMF's measured code)", bfv), ("TD HOB", hob), ("RAM OVMF accepted", 1 << 20)]
}

/// The host world attacks the TD it is running, at an exit mid-boot (its vCPU out of guest mode
/// between two VP.ENTERs): its private pages, TDR, TDCS, TDVPR, an S-EPT table and the TSM's
/// memory, each read and written with the host's own instructions and each refused
/// (`world_probe::attack_td`); and the exit it stopped at carries only the registers the TD
/// exposed. The run then goes on, and the TD must reach the shell as if nothing happened.
fn attack(
    cpu: &mut Agent,
    built: &tdvf::BuiltTdvf,
    report: &RunReport,
    ghci: &Ghci,
    private: &[world_probe::PrivatePage],
) {
    let last = report.last_exit;
    if TdExit::from_host_regs(&last).map(|e| e.host_regs()) != Some(last) {
        fail("OVMF TD", &format_args!("its exit carries registers it did not expose: {last:x?}"));
    }
    let (objects, logged) =
        world_probe::attack_td(cpu, &built.td, built.vcpu, private).unwrap_or_else(|e| fail("host world attacks", &e));
    let hob = private.iter().find(|p| p.0 == "TD HOB").map_or(0, |p| p.1);
    let calls = refused_calls(cpu, built, hob).unwrap_or_else(|e| fail("host calls against the OVMF TD", &e));
    say!(
        "world: the host world attacked the running OVMF TD after {} entries ({} MapGPA calls served, {} console bytes written; exit reason {}, only its exposed registers): {objects} protected objects, {} accesses refused in hardware, {logged} fault-log entries read back; {calls} host calls on its memory refused with their statuses, the TSM's state unchanged; the TD runs on",
        report.entries,
        ghci.conversions.calls,
        ghci.ports.console.written,
        last.rax,
        2 * objects
    );
}

/// The attack table's host calls on a finalized TD's memory (`attack::cases`), made against the
/// running OVMF TD at `hob`, its TD HOB (a 4K page the host added, mapped and private): each
/// refused with the status the table names, and the TSM's state (`attack::snapshot`) the same
/// after all of them. Returns how many.
fn refused_calls(cpu: &mut Agent, built: &tdvf::BuiltTdvf, hob: u64) -> Result<usize, Failed> {
    use tsm::{Operand, Status};
    let (tdr, vcpu) = (built.td.tdr, built.vcpu);
    let fresh = tsm_client::host::donate(cpu).map_err(|e| Failed::new("a page for the calls", e))?;
    let src = tsm_client::host::scratch(cpu).map_err(|e| Failed::new("a page for the calls", e))?;
    let cases: [(&'static str, Status, Regs); 6] = [
        ("MEM.PAGE.ADD after MR.FINALIZE", Status::TD_FINALIZED, Regs::call(leaf::MEM_PAGE_ADD, hob, tdr, fresh, src)),
        ("MR.EXTEND after MR.FINALIZE", Status::TD_FINALIZED, Regs::call(leaf::MR_EXTEND, hob, tdr, 0, 0)),
        (
            "MEM.PAGE.AUG of a page the TD owns",
            Status::PAGE_NOT_FREE.with_operand(Operand::R8),
            Regs::call(leaf::MEM_PAGE_AUG, hob, tdr, vcpu, 0),
        ),
        (
            "MEM.PAGE.AUG over a mapped page",
            Status::EPT_ENTRY_NOT_FREE.with_operand(Operand::Rcx),
            Regs::call(leaf::MEM_PAGE_AUG, hob, tdr, fresh, 0),
        ),
        (
            "MEM.PAGE.REMOVE of a page not blocked",
            Status::GPA_RANGE_NOT_BLOCKED.with_operand(Operand::Rcx),
            Regs::call(leaf::MEM_PAGE_REMOVE, hob, tdr, 0, 0),
        ),
        (
            "PHYMEM.PAGE.RECLAIM of a live TD's page",
            Status::LIFECYCLE_STATE_INCORRECT,
            Regs::call(leaf::PHYMEM_PAGE_RECLAIM, vcpu, 0, 0, 0),
        ),
    ];
    let before = crate::attack::snapshot(cpu);
    for (name, want, regs) in cases {
        let got = tsm_client::host::raw(cpu, regs).status();
        if !crate::attack::refused_as(got, want) {
            say!("host: {name} against the OVMF TD returned {:#x}, not {:#x}", got.0, want.0);
            return Err(Failed::new(name, "not refused with the attack table's status"));
        }
    }
    if crate::attack::snapshot(cpu) != before {
        return Err(Failed::new("host calls against the OVMF TD", "a refused call changed the TSM's state"));
    }
    // The donated page goes back for reuse; the scratch page stays the host's own.
    HostMemory::release(cpu, fresh);
    Ok(cases.len())
}

/// What the host knows of the vCPU's last moment, for a run that ended badly.
fn last_state(report: &RunReport, ghci: &Ghci) {
    say!("host: {}", LastState { report, console: ghci.ports.console.tail() });
}

fn print_figures(ghci: &Ghci, report: &RunReport, start: u64) {
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
}
