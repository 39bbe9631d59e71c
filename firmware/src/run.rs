//! The firmware's run, phase by phase: each phase prints one readable line on COM1 and logs the
//! details with defmt on COM2; the first failure is reported and QEMU exits with status 35.

use core::fmt;

use attest::platform::{SecretBlob, BLOB_BYTES};
use tsm::addr::{FrameRange, Pfn};
use tsm::{Tsm, TsmIdentity};

use crate::arch::{self, ExitCode, StartInfoAddr};
use crate::config::{Mode, RunConfig, CONFIG_FILE, SECRET_FILE};
use crate::drivers::acpi::{self, Q35_DEFAULT_ECAM};
use crate::drivers::doe::{self, Mailbox};
use crate::drivers::fw_cfg::{FwCfg, FwCfgError};
use crate::drivers::pci::{Bar, Pcie};
use crate::drivers::phys::{Frames, Mmio};
use crate::drivers::rng::Rdrand;
use crate::drivers::serial::Uart;
use crate::drivers::tsc::Tsc;
use crate::drivers::vtd::Vtd;
use crate::drivers::{log, pvh};
use crate::host::{Host, PumpStats};
use crate::memmap::{Layout, MemoryMap, RangeKind};
use crate::platform::FirmwarePlatform;

/// NVMe: mass storage, non-volatile memory controller, NVM Express.
const NVME_CLASS: (u8, u8, u8) = (0x01, 0x08, 0x02);
/// Free MMIO space for BARs the BIOS left unassigned: q35's 32-bit PCI hole above the ECAM and
/// below the IOAPIC.
const BAR_WINDOW: (u64, u64) = (0xC000_0000, 0xFEC0_0000);
/// The identity the TSM reports. MRSEAM is not measured yet (the attestation milestone measures
/// the image); zero says so plainly instead of pretending.
const IDENTITY: TsmIdentity = TsmIdentity { svn: 1, mrseam: [0; 48], mrsigner: [0; 48] };

macro_rules! say {
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        let _ = writeln!($crate::drivers::serial::Uart::com1_attached(), $($arg)*);
    }};
}

mod assign;
mod attack;

/// Milliseconds with three decimals, from microseconds.
pub(crate) struct Ms(pub u64);

impl fmt::Display for Ms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:03}", self.0 / 1000, self.0 % 1000)
    }
}

/// Reports the failure of `what` on COM1 (and defmt) without stopping.
pub(crate) fn report_failure(what: &str, why: &dyn fmt::Display) {
    say!("seamless firmware: error: {what}: {why}");
    defmt::error!("{=str} failed", what);
}

pub(crate) fn fail(what: &str, why: &dyn fmt::Display) -> ! {
    report_failure(what, why);
    arch::exit_qemu(ExitCode::Failure)
}

/// Boots, configures the TSM and runs the configured mode; never returns.
pub fn run(start_info: StartInfoAddr) -> ! {
    let _ = Uart::com1();
    say!("seamless firmware {}: PVH entry", crate::TSM_VERSION);
    arch::init_cpu();

    let boot = pvh::read(start_info).unwrap_or_else(|e| fail("PVH start info", &e));
    let tsc = Tsc::calibrate().unwrap_or_else(|_| fail("TSC", &"no frequency from CPUID 0x15, the PIT or CPUID 0x16"));
    log::set_tsc_hz(tsc.hz());
    say!("tsc: {} kHz ({})", tsc.hz() / 1000, tsc.source);
    defmt::info!("seamless firmware {=str}; TSC {=u64} kHz", crate::TSM_VERSION, tsc.hz() / 1000);
    defmt::info!("hvm_start_info version {=u32}, RSDP {=u64:#x}", boot.version, boot.rsdp);
    report_memmap(&boot.memmap);

    let (config, secret) = read_fw_cfg();
    match config.mode {
        Mode::Fault => {
            say!("mode fault: reading an unmapped address");
            arch::provoke_page_fault()
        }
        Mode::Overflow => {
            say!("mode overflow: pushing until the boot stack overflows");
            arch::provoke_stack_overflow()
        }
        Mode::Connect | Mode::Assign | Mode::Revoke | Mode::Attack | Mode::Boot => {}
    }

    let image = arch::image_range();
    let layout =
        Layout::carve(&boot.memmap, image, config.tdmr_max_mib << 20).unwrap_or_else(|e| fail("memory layout", &e));
    say!(
        "layout: image {:#x}..{:#x}, host pages {:#x}..{:#x}, TDMR {:#x}..{:#x} ({} MiB, PAMT {} KiB at {:#x})",
        layout.image.0,
        layout.image.1,
        layout.host.0,
        layout.host.1,
        layout.tdmr.0,
        layout.tdmr.1,
        (layout.tdmr.1 - layout.tdmr.0) >> 20,
        (layout.pamt.1 - layout.pamt.0) >> 10,
        layout.pamt.0
    );
    let mmio_start = low_ram_end(&boot.memmap);
    arch::init_mmio_attributes(mmio_start);
    defmt::info!("uncached from {=u64:#x} to 4 GiB", mmio_start);

    let rng = Rdrand::new().unwrap_or_else(|_| fail("entropy", &"CPUID says no RDRAND (QEMU: use -cpu max)"));
    let frames = Frames::new(&boot.memmap);
    for &(s, e) in frames.ranges() {
        defmt::info!("usable RAM {=u64:#x}..{=u64:#x}", s, e);
    }
    let vtd = open_vtd(&boot, mmio_start, tsc);
    let mut platform = FirmwarePlatform::new(frames, boot.memmap, rng, tsc, vtd);
    platform.log_calls = config.log_calls;
    let ecam = find_ecam(&boot);
    let window = bar_window(&ecam, mmio_start);
    platform.set_mmio_window(window);
    defmt::info!("host bridge MMIO window {=u64:#x}..{=u64:#x}", window.0, window.1);
    let private = FrameRange { start: Pfn::new(image.0 >> 12).unwrap_or(Pfn::ZERO), count: (image.1 - image.0) >> 12 };
    let mut tsm = Tsm::new(platform, IDENTITY, &[private]);
    let mut host = Host::new(frames, &layout);
    if let Err(e) = host.sys_config(&mut tsm, &layout) {
        fail("TSM configuration", &e);
    }
    let ready = tsc.ticks_to_us(tsc.now().wrapping_sub(arch::boot_tsc()));
    say!(
        "tsm: configured over 1 TDMR of {} MiB; ready {} ms after PVH entry",
        (layout.tdmr.1 - layout.tdmr.0) >> 20,
        Ms(ready)
    );
    say!("figure boot_to_tsm_ready_ms {} ms", Ms(ready));
    say!("figure firmware_image_kib {} KiB", arch::loaded_bytes().div_ceil(1024));
    defmt::info!("TSM ready {=u64} us after PVH entry", ready);
    match secret {
        Some(blob) => match tsm.provision(&blob) {
            Ok(()) => say!("tsm: provisioned: attestation key derived from the platform secret"),
            Err(e) => fail("TSM provisioning", &format_args!("{e:?}")),
        },
        None if matches!(config.mode, Mode::Assign | Mode::Revoke) => {
            fail("assign", &"no platform secret in fw_cfg (attest provision writes platform-secret.bin)")
        }
        None => {}
    }

    if config.mode == Mode::Boot {
        say!("seamless firmware: boot done");
        arch::exit_qemu(ExitCode::Success);
    }
    match config.mode {
        Mode::Assign | Mode::Revoke => {
            let nvme = open_nvme(&boot, &config, &tsc, (ecam, window));
            assign::run(&config, &tsc, &mut tsm, &mut host, nvme, ready)
        }
        Mode::Attack => {
            let nvme = open_nvme(&boot, &config, &tsc, (ecam, window));
            attack::run(&tsc, &mut tsm, &mut host, nvme, image.0)
        }
        _ => connect(&boot, &config, &tsc, &mut tsm, &mut host, (ecam, window)),
    }
}

/// The DMA remapping unit ACPI DMAR names, if any: the TSM takes it at IOMMU.SETUP.
fn open_vtd(boot: &pvh::BootInfo, mmio_start: u64, tsc: Tsc) -> Option<Vtd> {
    let drhd = match acpi::find_drhd(boot.rsdp) {
        Ok(d) => d,
        Err(e) => {
            say!("vt-d: {e}; no DMA remapping (device DMA cannot be confined)");
            return None;
        }
    };
    match Vtd::open(drhd, mmio_start, tsc) {
        Ok(v) => {
            let c = v.capabilities();
            say!(
                "vt-d: DRHD segment {} registers {:#x} (HAW {} bits{}): CAP {:#018x} ECAP {:#018x}, SAGAW {:#x}",
                drhd.segment,
                drhd.registers,
                drhd.host_address_width,
                if drhd.include_all { ", all devices" } else { "" },
                c.cap,
                c.ecap,
                c.sagaw()
            );
            Some(v)
        }
        Err(e) => {
            say!("vt-d: {e}; no DMA remapping");
            None
        }
    }
}

fn report_memmap(map: &MemoryMap) {
    say!("memory map: {} ranges, {} MiB RAM", map.ranges().len(), map.ram_bytes() >> 20);
    for r in map.ranges() {
        defmt::info!("memmap {=u64:#x}..{=u64:#x} {=str}", r.base, r.end(), r.kind.name());
    }
    if map.dropped != 0 {
        say!("memory map: {} entries past the first {} ignored", map.dropped, crate::memmap::MAX_RANGES);
    }
}

/// The end of RAM below 4 GiB, rounded up to 2 MiB (the 2 MiB page holding RAM's last byte
/// stays cacheable): where the MMIO hole starts.
fn low_ram_end(map: &MemoryMap) -> u64 {
    let ram_ends = map.ranges().iter().filter(|r| r.kind == RangeKind::Ram).map(|r| r.end());
    let end = ram_ends.filter(|&e| e <= 4 << 30).max().unwrap_or(4 << 30);
    end.next_multiple_of(2 << 20)
}

/// The run configuration (defaults when absent) and the platform secret (if provisioned).
fn read_fw_cfg() -> (RunConfig, Option<[u8; BLOB_BYTES]>) {
    let fw = match FwCfg::new() {
        Ok(f) => f,
        Err(e) => {
            say!("fw_cfg: {e}; default configuration, no platform secret");
            return (RunConfig::default(), None);
        }
    };
    let mut buf = [0u8; 1024];
    let config = match fw.read_file(CONFIG_FILE, &mut buf) {
        Ok(n) => RunConfig::parse(&buf[..n]).unwrap_or_else(|e| fail("run configuration", &e)),
        Err(FwCfgError::NotFound) => RunConfig::default(),
        Err(e) => fail(CONFIG_FILE, &e),
    };
    let mut s = [0u8; BLOB_BYTES + 1];
    let secret = match fw.read_file(SECRET_FILE, &mut s) {
        Ok(BLOB_BYTES) => match SecretBlob::read_from(&s[..BLOB_BYTES]) {
            Ok(_) => {
                let mut k = [0u8; BLOB_BYTES];
                k.copy_from_slice(&s[..BLOB_BYTES]);
                Some(k)
            }
            Err(e) => fail(SECRET_FILE, &e),
        },
        Ok(n) => fail(SECRET_FILE, &format_args!("{n} bytes, expected {BLOB_BYTES} (attest provision writes it)")),
        Err(FwCfgError::NotFound) => None,
        Err(FwCfgError::TooLarge { size }) => {
            fail(SECRET_FILE, &format_args!("{size} bytes, expected {BLOB_BYTES} (attest provision writes it)"))
        }
        Err(e) => fail(SECRET_FILE, &e),
    };
    say!(
        "fw_cfg: mode {:?}, DOE timeout {} ms, platform secret {}",
        config.mode,
        config.doe_timeout_ms,
        if secret.is_some() { "provisioned (128-byte blob)" } else { "not provisioned" }
    );
    (config, secret)
}

/// The NVMe function, as the host agent found and set it up.
struct Nvme {
    bdf: crate::drivers::pci::Bdf,
    bar0: Bar,
    regs: Mmio,
    mailbox: Mailbox<Mmio>,
}

/// The PCIe ECAM window, from ACPI's MCFG (q35's default if the table is missing).
fn find_ecam(boot: &pvh::BootInfo) -> acpi::Ecam {
    match acpi::find_ecam(boot.rsdp) {
        Ok(e) => e,
        Err(e) => {
            say!("pci: {e}; using q35's default ECAM at {:#x}", Q35_DEFAULT_ECAM.base);
            Q35_DEFAULT_ECAM
        }
    }
}

/// The host bridge's 32-bit MMIO aperture, where BARs live: q35's PCI hole, from past the ECAM
/// window MCFG names and past low RAM, up to the IOAPIC. The TSM takes private MMIO only from
/// here (and never where the memory map says RAM).
fn bar_window(ecam: &acpi::Ecam, mmio_start: u64) -> (u64, u64) {
    let ecam_end = ecam.base.saturating_add((u64::from(ecam.end_bus) + 1) << 20);
    (BAR_WINDOW.0.max(ecam_end).max(mmio_start), BAR_WINDOW.1)
}

/// Finds the NVMe function, places BAR0 where the run configuration says (inside `window`), and
/// opens its DOE mailbox.
fn open_nvme(boot: &pvh::BootInfo, config: &RunConfig, tsc: &Tsc, (ecam, window): (acpi::Ecam, (u64, u64))) -> Nvme {
    let pcie = Pcie::open(ecam, &boot.memmap)
        .unwrap_or_else(|e| fail("PCIe", &format_args!("ECAM at {:#x} overlaps RAM or passes 4 GiB", e.base)));
    let mut found = None;
    let mut count = 0;
    pcie.for_each(ecam.start_bus, &mut |f| {
        count += 1;
        let (vendor, device) = f.ids();
        let class = f.class();
        defmt::info!(
            "pci {=u8:02x}:{=u8:02x}.{=u8} {=u16:04x}:{=u16:04x} class {=u8:02x}{=u8:02x}{=u8:02x}",
            f.bdf.bus,
            f.bdf.device,
            f.bdf.function,
            vendor,
            device,
            class.0,
            class.1,
            class.2
        );
        if class == NVME_CLASS && found.is_none() {
            found = Some(f.bdf);
        }
    });
    let Some(bdf) = found else {
        fail("PCIe", &format_args!("no NVMe function among {count} (QEMU: -device nvme,...)"))
    };
    let Some(nvme) = pcie.function(bdf) else { fail("PCIe", &"the NVMe function vanished") };
    let (vendor, device) = nvme.ids();
    let mut free = window;
    let mut bars: [Option<Bar>; 6] = [None; 6];
    if let Err(e) = nvme.setup_bars(&mut free, &mut bars) {
        fail("NVMe BARs", &e);
    }
    let Some(mut bar0) = bars[0] else { fail("NVMe", &"no memory BAR0") };
    if bar0.base != config.nvme_bar0 {
        let from = bar0.base;
        if let Err(e) = nvme.move_bar(&mut bar0, config.nvme_bar0, window) {
            fail("NVMe BAR0", &e);
        }
        defmt::info!("NVMe BAR0 moved from {=u64:#x} to {=u64:#x}", from, bar0.base);
    }
    bars[0] = Some(bar0);
    nvme.enable_bus_master();
    let Some(doe_at) = nvme.find_ext_cap(crate::drivers::pci::EXT_CAP_DOE) else {
        fail("NVMe", &"no DOE extended capability (QEMU: -device nvme,...,spdm_port=<port>)")
    };
    say!(
        "pci: {count} functions; NVMe {vendor:04x}:{device:04x} at {bdf} (ECAM {:#x}), DOE capability at {doe_at:#x}",
        ecam.base
    );
    for b in bars.iter().flatten() {
        say!(
            "pci: NVMe BAR{} {:#x} size {:#x}{}{}",
            b.index,
            b.base,
            b.size,
            if b.wide { " 64-bit" } else { "" },
            if b.prefetchable { " prefetchable" } else { "" }
        );
    }
    let Some(regs) = nvme.bar_registers(&bar0, window) else { fail("NVMe", &"BAR0 outside the MMIO hole") };
    let Some(doe_regs) = nvme.registers(doe_at, doe::CAP_BYTES) else {
        fail("NVMe", &"DOE capability past the configuration space")
    };
    let mut mailbox = Mailbox::new(doe_regs, config.doe_timeout_ms * 1000);
    if let Err(e) = mailbox.abort(tsc) {
        fail("DOE", &e);
    }
    defmt::info!("DOE capabilities {=u32:#x}", mailbox.capabilities());
    Nvme { bdf, bar0, regs, mailbox }
}

fn pump_summary(tsc: &Tsc, s: &PumpStats) {
    say!(
        "spdm: {} DOE exchanges, {} bytes to the device, {} bytes back; {} ms in the mailbox, {} ms in the TSM",
        s.exchanges,
        s.bytes_out,
        s.bytes_in,
        Ms(tsc.ticks_to_us(s.doe_ticks)),
        Ms(tsc.ticks_to_us(s.tsm_ticks))
    );
}

/// Creates the NVMe function's PDEV and runs SPDM.CONNECT; returns the PDEV and message pages.
fn spdm_connect(
    tsc: &Tsc,
    tsm: &mut Tsm<FirmwarePlatform>,
    host: &mut Host,
    bdf: crate::drivers::pci::Bdf,
    mailbox: &mut Mailbox<Mmio>,
) -> (u64, u64, u64) {
    let pdev = host.pdev_create(tsm, bdf.rid()).unwrap_or_else(|e| fail("PDEV", &e));
    let msg = host.scratch().unwrap_or_else(|e| fail("message page", &e));
    let total =
        spdm_connect_pdev(tsc, tsm, host, bdf, mailbox, (pdev, msg)).unwrap_or_else(|e| fail("SPDM.CONNECT", &e));
    (pdev, msg, total)
}

/// SPDM.CONNECT of the PDEV `pdev` with the message page `msg`; returns its duration in µs.
///
/// # Errors
/// [`HostError`] of the call (a mailbox failure was aborted).
fn spdm_connect_pdev(
    tsc: &Tsc,
    tsm: &mut Tsm<FirmwarePlatform>,
    host: &Host,
    bdf: crate::drivers::pci::Bdf,
    mailbox: &mut Mailbox<Mmio>,
    (pdev, msg): (u64, u64),
) -> Result<u64, crate::host::HostError> {
    let rid = bdf.rid();
    say!("spdm: PDEV for {bdf} (function id {rid:#06x}) at {pdev:#x}; SPDM.CONNECT over the DOE mailbox");
    let mut stats = PumpStats::default();
    let leaf = ("TDH.SPDM.CONNECT", tsm::abi::host::leaf::SPDM_CONNECT, pdev, 0);
    let result = host.pump(tsm, mailbox, tsc, leaf, msg, &mut stats);
    let total = tsc.ticks_to_us(stats.total_ticks);
    pump_summary(tsc, &stats);
    result?;
    say!(
        "spdm: connected: SPDM {}.{}, secure session up, in {} ms",
        stats.spdm_version >> 4,
        stats.spdm_version & 0xF,
        Ms(total)
    );
    say!("figure spdm_connect_qemu_ms {} ms", Ms(total));
    defmt::info!("SPDM.CONNECT done in {=u64} us, {=u32} exchanges", total, stats.exchanges);
    Ok(total)
}

/// Runs SPDM.CONNECT and stops.
fn connect(
    boot: &pvh::BootInfo,
    config: &RunConfig,
    tsc: &Tsc,
    tsm: &mut Tsm<FirmwarePlatform>,
    host: &mut Host,
    pci: (acpi::Ecam, (u64, u64)),
) -> ! {
    let mut nvme = open_nvme(boot, config, tsc, pci);
    spdm_connect(tsc, tsm, host, nvme.bdf, &mut nvme.mailbox);
    say!("seamless firmware: connect done");
    arch::exit_qemu(ExitCode::Success)
}
