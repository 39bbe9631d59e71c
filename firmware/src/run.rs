//! The firmware's run, phase by phase: each phase prints one readable line on COM1 and logs the
//! details with defmt on COM2; the first failure is reported and QEMU exits with status 35.

use core::fmt;

use attest::platform::{SecretBlob, BLOB_BYTES};
use tsm::addr::{FrameRange, Pfn};
use tsm::{Tsm, TsmIdentity};

use crate::arch::{self, ExitCode, StartInfoAddr};
use crate::config::{Mode, RunConfig, CONFIG_FILE, HOST_FILE, SECRET_FILE};
use crate::drivers::acpi;
use crate::drivers::fw_cfg::{FwCfg, FwCfgError};
use crate::drivers::phys::Frames;
use crate::drivers::rng::Rdrand;
use crate::drivers::serial::Uart;
use crate::drivers::tsc::Tsc;
use crate::drivers::vtd::Vtd;
use crate::drivers::{log, pvh};
use crate::memmap::MemoryMap;
use crate::platform::FirmwarePlatform;
use crate::world::host::HostWorld;
use seamless_drivers::bootinfo::BootInfo;

/// The TSM's security version.
const TSM_SVN: u16 = 1;

macro_rules! say {
    ($($arg:tt)*) => {
        seamless_drivers::say!($($arg)*)
    };
}

pub(crate) use seamless_drivers::console::{figure, Hex, Ms};

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
    // XCR0 = x87 | SSE for every world: the state each world's switch saves (`world::World`).
    if !arch::enable_xsave() {
        defmt::info!("no XSAVE: XCR0 is x87 alone and no world can change it");
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
    // Mode ovmf: the per-call defmt record would dominate the run (every TDCALL and TDVMCALL
    // of the TDVF is a call).
    platform.log_calls = config.log_calls && config.mode != Mode::Ovmf;
    let ecam = seamless_drivers::acpi::ecam_or_default(boot.rsdp);
    let window = seamless_drivers::pci::host_bridge_window(&ecam, mmio_start);
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
    // The TSM is ready; everything else is the host's, in its own world.
    host_agent(&mut tsm, &boot, (image, mmio_start, ecam), (&tsc, config.mode == Mode::Assign))
}

/// Loads the host agent's binary into the host world and serves it until it ends the run.
fn host_agent(
    tsm: &mut Tsm<FirmwarePlatform>,
    boot: &pvh::BootInfo,
    (image, mmio_start, ecam): ((u64, u64), u64, acpi::Ecam),
    (tsc, demo): (&Tsc, bool),
) -> ! {
    let frames = tsm.platform().frames();
    let mut world = HostWorld::new(tsm, &boot.memmap, image, mmio_start, frames)
        .and_then(|mut w| w.protect_chipset_config(tsm, ecam.base).map(|()| w))
        .unwrap_or_else(|e| fail("host world", &e));
    match acpi_pm_block(ecam, &boot.memmap) {
        Some(base) => {
            world.keep_acpi_pm(base);
            defmt::info!("ACPI PM registers at port {=u16:#x}: writes kept from the host world", base);
        }
        None => say!("world: no ACPI PM block enabled at ICH9's PMBASE: no sleep state to keep from the host"),
    }
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
    let t0 = tsc.now();
    let loaded = world.load_binary(tsm, &fw, start, &info).unwrap_or_else(|e| fail("host agent", &e));
    let load_us = tsc.ticks_to_us(tsc.now().wrapping_sub(t0));
    say!(
        "host: {HOST_FILE} ({} bytes, untrusted and unmeasured) loaded in {} ms: {} segments at {:#x}..{:#x} with its page tables and boot information; entered at {:#x} in the host world",
        loaded.file_bytes,
        Ms(load_us),
        loaded.image.segments().len(),
        loaded.region.0,
        loaded.region.1,
        loaded.image.entry
    );
    world.run(tsm, demo)
}

/// MRSEAM: SHA-384 over the image as QEMU loaded it (`arch::loaded_image`).
fn measure_image() -> [u8; 48] {
    use sha2::{Digest, Sha384};
    let mut h = Sha384::new();
    arch::loaded_image(&mut |chunk| h.update(chunk));
    h.finalize().into()
}

/// The ACPI PM I/O block of q35's ICH9 LPC bridge (00:1f.0), where the BIOS put it (PMBASE,
/// 128-byte aligned) if ACPI is enabled there; `None` for another bridge or ACPI off.
fn acpi_pm_block(ecam: acpi::Ecam, map: &MemoryMap) -> Option<u16> {
    /// ICH9 LPC: vendor 0x8086, device 0x2918; PMBASE at 0x40, ACPI_CNTL at 0x44 (bit 7: enable).
    const LPC: u16 = 31 << 3;
    let pcie = seamless_drivers::pci::Pcie::open(ecam, map).ok()?;
    let ids = pcie.config_read(LPC, 0, 4)?;
    let base = pcie.config_read(LPC, 0x40, 4)? & 0xFF80;
    let enabled = pcie.config_read(LPC, 0x44, 1)? & 0x80 != 0;
    (ids == 0x2918_8086 && enabled && base != 0).then_some(base as u16)
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
                "vt-d: DRHD segment {} registers {:#x} (HAW {} bits{}): CAP {:#018x} ECAP {:#018x}, SAGAW {:#x}; all DMA blocked until IOMMU.SETUP",
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
        // The unit is there but would let DMA through untranslated: no host world may run.
        Err(e @ crate::drivers::vtd::VtdError::Block(_)) => fail("vt-d", &e),
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
