//! The firmware's run, phase by phase: each phase prints one readable line on COM1 and logs the
//! details with defmt on COM2; the first failure is reported and QEMU exits with status 35.

use core::fmt;

use attest::platform::{SecretBlob, BLOB_BYTES};
use tsm::addr::{FrameRange, Pfn};
use tsm::{Tsm, TsmIdentity};

use crate::arch::{self, ExitCode, StartInfoAddr};
use crate::config::{Mode, RunConfig, CONFIG_FILE, GUEST_FILE, SECRET_FILE};
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
use crate::host::{DoeLink, Host, HostCpu};
use crate::memmap::{Layout, MemoryMap, RangeKind};
use crate::platform::FirmwarePlatform;
use crate::world::host::HostWorld;
use tsm::td::TdParams;
use tsm_client::host::device::{self, Assignment};
use tsm_client::host::{HostError, PumpStats};

/// NVMe: mass storage, non-volatile memory controller, NVM Express.
const NVME_CLASS: (u8, u8, u8) = (0x01, 0x08, 0x02);
/// Free MMIO space for BARs the BIOS left unassigned: q35's 32-bit PCI hole above the ECAM and
/// below the IOAPIC.
const BAR_WINDOW: (u64, u64) = (0xC000_0000, 0xFEC0_0000);
/// The TSM's security version.
const TSM_SVN: u16 = 1;

macro_rules! say {
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        let _ = writeln!($crate::drivers::serial::Uart::com1_attached(), $($arg)*);
    }};
}

mod assign;
mod attack;
mod host_nvme;
mod ovmf;
mod td_world;
mod worlds;

/// The guest's accepted work pages (`tsm_client::guest::DEMO_LAYOUT`, which the guest image
/// uses too).
pub const WORK_GPA: u64 = tsm_client::guest::DEMO_LAYOUT.work;
/// How many.
pub const WORK_PAGES: u64 = tsm_client::guest::DEMO_LAYOUT.work_pages;
/// Where BAR0 appears in the guest.
pub const BAR_GPA: u64 = tsm_client::guest::DEMO_LAYOUT.bar_gpa;
/// TDISP lock flags: NO_FW_UPDATE.
pub const LOCK_FLAGS: u64 = 0x1;

/// The demo's TD: GPAW 48, one vCPU, no attributes.
pub(crate) fn td_params() -> TdParams {
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

/// Milliseconds with three decimals, from microseconds.
pub(crate) struct Ms(pub u64);

impl fmt::Display for Ms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:03}", self.0 / 1000, self.0 % 1000)
    }
}

/// Bytes into a fixed buffer (what does not fit is an error).
struct BufWriter<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl fmt::Write for BufWriter<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        self.buf.get_mut(self.len..end).ok_or(fmt::Error)?.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// One figure: a readable `figure NAME VALUE UNIT` line on COM1, and the same as a frame on COM3
/// (file `figure.NAME` holding `VALUE UNIT`), which is what the host reads: results travel as
/// framed data, not as console lines parsed back.
pub(crate) fn figure(name: &str, value: &dyn fmt::Display, unit: &str) {
    use fmt::Write as _;
    say!("figure {name} {value} {unit}");
    let (mut file, mut data) = ([0u8; crate::frame::MAX_NAME], [0u8; 64]);
    let mut f = BufWriter { buf: &mut file, len: 0 };
    let named = write!(f, "figure.{name}").map(|()| f.len);
    let mut d = BufWriter { buf: &mut data, len: 0 };
    let valued = write!(d, "{value} {unit}").map(|()| d.len);
    let (Ok(n), Ok(v)) = (named, valued) else {
        say!("figure {name}: does not fit a frame; not sent on COM3");
        return;
    };
    let name = core::str::from_utf8(&file[..n]).unwrap_or("figure");
    let mut com3 = Uart::com3();
    if let Err(e) = crate::frame::encode(name, &data[..v], &mut |b| com3.write_bytes(b)) {
        say!("figure {name}: cannot frame it: {e:?}");
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
    // MRSEAM first, before any Rust code wrote a static and long before the host world runs.
    let mrseam = measure_image();
    let _ = Uart::com1();
    say!("seamless firmware {}: PVH entry", crate::TSM_VERSION);
    arch::init_cpu();
    // The TSM owns the machine only if it can run everything else as an SVM guest: without SVM
    // there is no TSM to boot, so stop before reading anything.
    if let Err(e) = arch::svm::enable() {
        fail("SVM", &e);
    }

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
        Mode::Connect | Mode::Assign | Mode::Revoke | Mode::Attack | Mode::Boot | Mode::Ovmf => {}
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
    say!("tsm: MRSEAM {} (SHA-384 of the image as loaded; firmware mrseam FILE recomputes it)", Hex(&mrseam));
    let identity = TsmIdentity { svn: TSM_SVN, mrseam, mrsigner: [0; 48] };
    let mut tsm = Tsm::new(platform, identity, &[private]);
    let mut host = Host::new(frames, &layout);
    if let Err(e) = crate::host::sys_config(&mut HostCpu::new(&mut tsm, &mut host, tsc), &layout) {
        fail("TSM configuration", &e);
    }
    let ready = tsc.ticks_to_us(tsc.now().wrapping_sub(arch::boot_tsc()));
    say!(
        "tsm: configured over 1 TDMR of {} MiB; ready {} ms after PVH entry",
        (layout.tdmr.1 - layout.tdmr.0) >> 20,
        Ms(ready)
    );
    figure("boot_to_tsm_ready_ms", &Ms(ready), "ms");
    figure("firmware_image_kib", &arch::loaded_bytes().div_ceil(1024), "KiB");
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

    let mut world = host_world(&boot.memmap, &layout, mmio_start, &tsc, &mut tsm, &mut host);

    if config.mode == Mode::Boot {
        say!("seamless firmware: boot done");
        arch::exit_qemu(ExitCode::Success);
    }
    match config.mode {
        Mode::Assign | Mode::Revoke => {
            let nvme = open_nvme(&boot, &config, &tsc, (ecam, window));
            let mut buf = [0u8; GUEST_IMAGE_MAX];
            let guest = read_guest_image(&mut buf);
            assign::run(&config, &tsc, &mut tsm, (&mut host, &mut world), nvme, guest, ready)
        }
        Mode::Ovmf => ovmf::run(&config, &tsc, &mut tsm, &mut host, &boot.memmap, ecam),
        Mode::Attack => {
            let nvme = open_nvme(&boot, &config, &tsc, (ecam, window));
            let mut buf = [0u8; GUEST_IMAGE_MAX];
            let guest = read_guest_image(&mut buf);
            attack::run(&tsc, &mut tsm, &mut host, nvme, guest, image.0)
        }
        _ => connect(&boot, &config, &tsc, &mut tsm, &mut host, (ecam, window)),
    }
}

/// MRSEAM: SHA-384 over the image as QEMU loaded it (`arch::loaded_image`).
fn measure_image() -> [u8; 48] {
    use sha2::{Digest, Sha384};
    let mut h = Sha384::new();
    arch::loaded_image(&mut |chunk| h.update(chunk));
    h.finalize().into()
}

/// Bytes as lowercase hex.
struct Hex<'a>(&'a [u8]);

impl fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// Iterations and rounds of the host world's measured loops.
const PROBE_LOOPS: (u64, u64) = (50, 10);

/// Builds the host world (stopping at once if the CPU lacks SVM) and runs its probe: the bare
/// exit floor, the SEAMCALL round trip, and reads and writes of TSM memory, the PAMT and the
/// VT-d registers, each of which must fault without changing a byte.
fn host_world(
    map: &MemoryMap,
    layout: &Layout,
    mmio_start: u64,
    tsc: &Tsc,
    tsm: &mut Tsm<FirmwarePlatform>,
    host: &mut Host,
) -> HostWorld {
    let frames = host.frames();
    let mut page = || tsm_client::HostMemory::scratch(host);
    let mut world =
        HostWorld::build(tsm, map, layout, mmio_start, frames, &mut page).unwrap_or_else(|e| fail("host world", &e));
    let tables = tsm.platform().host_npt.as_ref().map_or(0, |n| n.tables_used());
    say!(
        "world: SVM revision {}, {} ASIDs, nRIP save {}: the TSM alone runs in host mode; the host world's nested map uses {tables} tables",
        world.caps.revision,
        world.caps.asids,
        if world.caps.nrip { "yes" } else { "no (RIP advanced by the TSM)" }
    );
    let tsm_target = layout.image.0 + 0x1000;
    let targets = [tsm_target, layout.pamt.0, 0xFED9_0000];
    let mut before = [[0u8; 16]; 2];
    arch::read_image(tsm_target, &mut before[0]);
    frames.read(layout.pamt.0, &mut before[1]);
    let r = world.run_probe(tsm, tsc, PROBE_LOOPS, &targets).unwrap_or_else(|e| fail("host world", &e));
    let mut after = [[0u8; 16]; 2];
    arch::read_image(tsm_target, &mut after[0]);
    frames.read(layout.pamt.0, &mut after[1]);
    say!(
        "world: host world: {} SEAMCALLs, {} exits; best of {} rounds of {}: VMMCALL floor {} ns, SEAMCALL(TDH.SYS.INFO) {} ns",
        r.seamcalls,
        r.exits,
        r.rounds,
        r.iterations,
        r.floor_ns,
        r.seamcall_ns
    );
    let expected = 2 * targets.len() as u64;
    if r.tdcall_ud != 1 {
        fail("host world", &format_args!("TDCALL from the host world: {} #UD, want 1", r.tdcall_ud));
    }
    if r.faults != expected || r.handled != expected || r.log_entries != expected || before != after {
        fail(
            "host world isolation",
            &format_args!(
                "{} of {expected} accesses faulted, {} #MC handled, {} fault-log entries read, bytes {}",
                r.faults,
                r.handled,
                r.log_entries,
                if before == after { "unchanged" } else { "CHANGED" }
            ),
        );
    }
    say!("world: host world executed TDCALL: #UD, the guest ABI is not the host's");
    say!(
        "world: host world read and wrote TSM memory {tsm_target:#x}, the PAMT {:#x}, VT-d {:#x}: {} refused (nested page fault -> #MC, handled), bytes unchanged; the host read {} entries back from the fault log",
        layout.pamt.0,
        targets[2],
        r.faults,
        r.log_entries
    );
    figure("svm_vmexit_floor_ns", &r.floor_ns, "ns");
    figure("seamcall_roundtrip_ns", &r.seamcall_ns, "ns");
    let ratio = (r.seamcall_ns * 100).checked_div(r.floor_ns).unwrap_or(0);
    figure("seamcall_vs_floor", &format_args!("{}.{:02}", ratio / 100, ratio % 100), "x");
    let td = td_world::run(tsm, host, *tsc).unwrap_or_else(|e| fail("probe TD", &e));
    say!(
        "world: probe TD: entered at the reset vector in TDX's initial state; CPUID GenuineIntel/IntelTDX; {} #VEs with exact VE info (CPUID, HLT, I/O, MSR, a PENDING page); a page blocked and tracked while in use exited on its next touch; the shared half read through the host's table, which could not reach a private page; SEAMCALL in the TD #UD; R14/R15 carried both ways when the VMCALL exposed them; no register it did not expose reached the host; the host's memory exited as an EPT violation; {} VP.ENTERs, {} world switches",
        td.ves,
        td.entries,
        td.switches
    );
    figure("tdcall_roundtrip_ns", &td.tdcall_ns, "ns");
    let ratio = (td.tdcall_ns * 100).checked_div(r.floor_ns).unwrap_or(0);
    figure("tdcall_vs_floor", &format_args!("{}.{:02}", ratio / 100, ratio % 100), "x");
    figure("world_switches", &(r.exits + td.switches), "exits");
    world
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

/// Bytes a guest image may have (the demo's is about 24 KiB; this bounds the host agent's
/// buffer, on the boot stack).
const GUEST_IMAGE_MAX: usize = 64 * 1024;

/// The host agent reads the guest image from fw_cfg into `buf` (the TSM checks nothing here:
/// `td::build` parses it, and MRTD measures what was added).
fn read_guest_image(buf: &mut [u8]) -> &[u8] {
    let fw = FwCfg::new().unwrap_or_else(|e| fail(GUEST_FILE, &e));
    match fw.read_file(GUEST_FILE, buf) {
        Ok(n) => {
            say!("host: guest image {n} bytes from fw_cfg {GUEST_FILE}");
            &buf[..n]
        }
        Err(FwCfgError::NotFound) => fail(
            GUEST_FILE,
            &"no guest image in fw_cfg: the launcher passes -fw_cfg name=opt/seamless/guest,file=guest.img (firmware guest-image ELF FILE makes it)",
        ),
        Err(e) => fail(GUEST_FILE, &e),
    }
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

/// The mailbox's summary: what `stats` moved, and the TSC ticks `(in the mailbox, in the TSM)`.
fn pump_summary(tsc: &Tsc, s: &PumpStats, (doe_ticks, tsm_ticks): (u64, u64)) {
    say!(
        "spdm: {} DOE exchanges, {} bytes to the device, {} bytes back; {} ms in the mailbox, {} ms in the TSM",
        s.exchanges,
        s.bytes_out,
        s.bytes_in,
        Ms(tsc.ticks_to_us(doe_ticks)),
        Ms(tsc.ticks_to_us(tsm_ticks))
    );
}

/// Creates the NVMe function's PDEV and runs SPDM.CONNECT; returns the assignment begun.
fn spdm_connect(cpu: &mut HostCpu<'_>, doe: &mut DoeLink<'_>, bdf: crate::drivers::pci::Bdf) -> Assignment {
    let a = device::pdev_create(cpu, u32::from(bdf.rid())).unwrap_or_else(|e| fail("PDEV", &e));
    spdm_connect_pdev(cpu, doe, bdf, &a).unwrap_or_else(|e| fail("SPDM.CONNECT", &e));
    a
}

/// SPDM.CONNECT of the assignment's PDEV; returns its duration in µs.
///
/// # Errors
/// [`HostError`] of the call (a mailbox failure was aborted).
fn spdm_connect_pdev(
    cpu: &mut HostCpu<'_>,
    doe: &mut DoeLink<'_>,
    bdf: crate::drivers::pci::Bdf,
    a: &Assignment,
) -> Result<u64, HostError> {
    let rid = bdf.rid();
    let tsc = cpu.tsc();
    say!("spdm: PDEV for {bdf} (function id {rid:#06x}) at {:#x}; SPDM.CONNECT over the DOE mailbox", a.pdev);
    let mut stats = PumpStats::default();
    let (start, doe0, tsm0) = (tsc.now(), doe.ticks, cpu.tsm_ticks);
    let result = device::connect(cpu, doe, a, &mut stats);
    let total = tsc.ticks_to_us(tsc.now().wrapping_sub(start));
    pump_summary(&tsc, &stats, (doe.ticks - doe0, cpu.tsm_ticks - tsm0));
    result?;
    say!(
        "spdm: connected: SPDM {}.{}, secure session up, in {} ms",
        stats.spdm_version >> 4,
        stats.spdm_version & 0xF,
        Ms(total)
    );
    figure("spdm_connect_qemu_ms", &Ms(total), "ms");
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
    let mut cpu = HostCpu::new(tsm, host, *tsc);
    spdm_connect(&mut cpu, &mut DoeLink::new(&mut nvme.mailbox, *tsc), nvme.bdf);
    say!("seamless firmware: connect done");
    arch::exit_qemu(ExitCode::Success)
}
