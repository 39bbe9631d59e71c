//! The firmware's run, phase by phase: each phase prints one readable line on COM1 and logs the
//! details with defmt on COM2; the first failure is reported and QEMU exits with status 35.

use core::fmt;

use attest::platform::{SecretBlob, BLOB_BYTES};
use tsm::addr::{FrameRange, Pfn};
use tsm::{Tsm, TsmIdentity};

use crate::arch::{self, ExitCode, StartInfoAddr};
use crate::config::{Mode, RunConfig, CONFIG_FILE, GUEST_FILE, HOST_FILE, SECRET_FILE};
use crate::drivers::acpi;
use crate::drivers::fw_cfg::{FwCfg, FwCfgError};
use crate::drivers::phys::Frames;
use crate::drivers::rng::Rdrand;
use crate::drivers::serial::Uart;
use crate::drivers::tsc::Tsc;
use crate::drivers::vtd::Vtd;
use crate::drivers::{log, pvh};
use crate::host::{DoeLink, Host, HostCpu};
use crate::memmap::{Layout, MemoryMap};
use crate::platform::FirmwarePlatform;
use crate::world::host::HostWorld;
use seamless_drivers::bootinfo::BootInfo;
use tsm_client::host::device::Assignment;
use tsm_client::host::HostError;

/// The TSM's security version.
const TSM_SVN: u16 = 1;

macro_rules! say {
    ($($arg:tt)*) => {
        seamless_drivers::say!($($arg)*)
    };
}

mod assign;
mod attack;
mod host_nvme;
mod interop;
mod ovmf;
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

pub(crate) use seamless_drivers::console::{figure, Hex, Ms};
pub(crate) use seamless_host::td_params;

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
    // Every Rust object of the firmware lives in its image: the physical accessors refuse it.
    let image = arch::image_range();
    crate::drivers::phys::claim_own_memory(image.0, image.1);
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
        Mode::Connect | Mode::Assign | Mode::Revoke | Mode::Stop | Mode::Attack | Mode::Boot | Mode::Ovmf => {}
    }

    let mmio_start = boot.memmap.low_ram_end();
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
    let window = seamless_host::device::bar_window(&ecam, mmio_start);
    platform.set_mmio_window(window);
    defmt::info!("host bridge MMIO window {=u64:#x}..{=u64:#x}", window.0, window.1);
    let private = FrameRange { start: Pfn::new(image.0 >> 12).unwrap_or(Pfn::ZERO), count: (image.1 - image.0) >> 12 };
    say!("tsm: MRSEAM {} (SHA-384 of the image as loaded; firmware mrseam FILE recomputes it)", Hex(&mrseam));
    let identity = TsmIdentity { svn: TSM_SVN, mrseam, mrsigner: [0; 48] };
    let mut tsm = Tsm::new(platform, identity, &[private]);
    figure("firmware_image_kib", &arch::loaded_bytes().div_ceil(1024), "KiB");
    match secret {
        Some(blob) => match tsm.provision(&blob) {
            Ok(()) => say!("tsm: provisioned: attestation key derived from the platform secret"),
            Err(e) => fail("TSM provisioning", &format_args!("{e:?}")),
        },
        None if matches!(config.mode, Mode::Assign | Mode::Revoke | Mode::Stop) => {
            fail("assign", &"no platform secret in fw_cfg (attest provision writes platform-secret.bin)")
        }
        None => {}
    }
    if matches!(config.mode, Mode::Boot | Mode::Connect) {
        host_agent(&mut tsm, &boot, image, mmio_start, &tsc)
    }

    // Transitional (issue 11, stage 2): modes assign, revoke and attack run the agent in the
    // image, with SEAMCALL as a direct call, until their host side moves into the host binary.
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

    let (mut world, host_exits) = host_world(&boot.memmap, &layout, mmio_start, &tsc, &mut tsm, &mut host);
    if config.mode == Mode::Ovmf {
        ovmf::run(&config, &tsc, &mut tsm, &mut host, &boot.memmap, ecam)
    }
    let nvme = open_nvme(&boot, &config, &tsc, (ecam, window));
    let mut buf = [0u8; GUEST_IMAGE_MAX];
    let guest = read_guest_image(&mut buf);
    match config.mode {
        Mode::Attack => attack::run(&tsc, &mut tsm, (&mut host, &mut world), nvme, guest, image.0),
        _ => assign::run(&config, &tsc, &mut tsm, (&mut host, &mut world, host_exits), nvme, guest, ready),
    }
}

/// Loads the host agent's binary into the host world and serves it until it ends the run.
fn host_agent(
    tsm: &mut Tsm<FirmwarePlatform>,
    boot: &pvh::BootInfo,
    image: (u64, u64),
    mmio_start: u64,
    tsc: &Tsc,
) -> ! {
    let frames = tsm.platform().frames();
    let mut world =
        HostWorld::new(tsm, &boot.memmap, image, mmio_start, frames).unwrap_or_else(|e| fail("host world", &e));
    let tables = tsm.platform().host_npt.as_ref().map_or(0, |n| n.tables_used());
    say!(
        "world: SVM revision {}, {} ASIDs, nRIP save {}: the TSM alone runs in host mode; the host world's nested map uses {tables} tables",
        world.caps.revision,
        world.caps.asids,
        if world.caps.nrip { "yes" } else { "no (RIP advanced by the TSM)" }
    );
    let fw = FwCfg::new().unwrap_or_else(|e| fail(HOST_FILE, &e));
    if let Ok(key) = fw.selector_of(SECRET_FILE) {
        world.protect_fw_cfg_item(key);
    }
    let start = image.1.next_multiple_of(4096);
    let info = |region| BootInfo::new(&boot.memmap, image, region, (tsc.hz(), arch::boot_tsc()), boot.rsdp);
    let loaded = world.load_binary(tsm, &fw, start, &info).unwrap_or_else(|e| fail("host agent", &e));
    say!(
        "host: {HOST_FILE} ({} bytes, untrusted and unmeasured) loaded: {} segments at {:#x}..{:#x} with its page tables and boot information; entered at {:#x} in the host world",
        loaded.file_bytes,
        loaded.image.segments().len(),
        loaded.region.0,
        loaded.region.1,
        loaded.image.entry
    );
    world.run(tsm)
}

/// MRSEAM: SHA-384 over the image as QEMU loaded it (`arch::loaded_image`).
fn measure_image() -> [u8; 48] {
    use sha2::{Digest, Sha384};
    let mut h = Sha384::new();
    arch::loaded_image(&mut |chunk| h.update(chunk));
    h.finalize().into()
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
) -> (HostWorld, u64) {
    let frames = host.frames();
    let mut page = || tsm_client::HostMemory::scratch(host);
    let mut world = HostWorld::new(tsm, map, layout.image, mmio_start, frames)
        .and_then(|mut w| w.load_probe(&mut page).map(|()| w))
        .unwrap_or_else(|e| fail("host world", &e));
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
    // The per-call defmt record would dominate the round trip being measured.
    let log_calls = core::mem::replace(&mut tsm.platform_mut().log_calls, false);
    let first = tsm.platform().td.as_ref().map_or(0, |w| w.switches);
    let td = seamless_host::probe_td::run(&mut HostCpu::new(tsm, host, *tsc)).unwrap_or_else(|e| fail("probe TD", &e));
    let switches = tsm.platform().td.as_ref().map_or(0, |w| w.switches) - first;
    tsm.platform_mut().log_calls = log_calls;
    say!(
        "world: probe TD: entered at the reset vector in TDX's initial state; CPUID GenuineIntel/IntelTDX; {} #VEs with exact VE info (CPUID, HLT, I/O, MSR, a PENDING page); a page blocked and tracked while in use exited on its next touch; the shared half read through the host's table, which could not reach a private page; SEAMCALL in the TD #UD; R14/R15 carried both ways when the VMCALL exposed them; a spin with interrupts off preempted by the TSM's timer; no register it did not expose reached the host; the host's memory exited as an EPT violation; {} VP.ENTERs, {} world switches",
        td.ves,
        td.entries,
        switches
    );
    figure("tdcall_roundtrip_ns", &td.tdcall_ns, "ns");
    let ratio = (td.tdcall_ns * 100).checked_div(r.floor_ns).unwrap_or(0);
    figure("tdcall_vs_floor", &format_args!("{}.{:02}", ratio / 100, ratio % 100), "x");
    figure("world_switches", &(r.exits + switches), "exits");
    (world, r.exits)
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

/// Bytes a guest image may have (the demo's is about 80 KiB, its NVMe driver and SHA-384
/// included; this bounds the host agent's buffer, on the 512 KiB boot stack).
const GUEST_IMAGE_MAX: usize = 128 * 1024;

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

pub(crate) use seamless_host::device::{pump_summary, Nvme};

/// The PCIe ECAM window, from ACPI's MCFG (q35's default if the table is missing).
fn find_ecam(boot: &pvh::BootInfo) -> acpi::Ecam {
    seamless_host::device::find_ecam(boot.rsdp)
}

/// Finds the NVMe function, places BAR0 where the run configuration says (inside `window`), and
/// opens its DOE mailbox.
fn open_nvme(boot: &pvh::BootInfo, config: &RunConfig, tsc: &Tsc, pci: (acpi::Ecam, (u64, u64))) -> Nvme {
    seamless_host::device::open_nvme(&boot.memmap, config, tsc, pci).unwrap_or_else(|f| fail(f.what, &f.why))
}

/// Creates the NVMe function's PDEV and runs SPDM.CONNECT; returns the assignment begun.
fn spdm_connect(cpu: &mut HostCpu<'_>, doe: &mut DoeLink<'_>, bdf: crate::drivers::pci::Bdf) -> Assignment {
    seamless_host::device::spdm_connect(cpu, doe, bdf).unwrap_or_else(|f| fail(f.what, &f.why))
}

/// SPDM.CONNECT of the assignment's PDEV; returns its duration in µs.
///
/// # Errors
/// [`HostError`] of the call (a mailbox failure was aborted).
fn spdm_connect_pdev(
    cpu: &mut HostCpu<'_>,
    doe: &mut DoeLink<'_>,
    bdf: crate::drivers::pci::Bdf,
    a: &mut Assignment,
) -> Result<u64, HostError> {
    seamless_host::device::spdm_connect_pdev(cpu, doe, bdf, a)
}
