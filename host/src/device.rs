//! The host's device, as a VMM finds and connects it: the PCIe ECAM window from ACPI's MCFG,
//! the NVMe function among the functions reached from bus 0, its BARs placed in the host
//! bridge's window (BAR0 where the run configuration says: the device's interface report names
//! that page), bus mastering on, its DOE mailbox opened; then SPDM.CONNECT of the function's
//! PDEV, each DEVICE_REQUEST ferried through the mailbox.

use seamless_drivers::acpi::Ecam;
use seamless_drivers::config::RunConfig;
use seamless_drivers::console::{figure, Ms};
use seamless_drivers::doe::{self, Mailbox};
use seamless_drivers::memmap::MemoryMap;
use seamless_drivers::pci::{Bar, Bdf, Pcie, EXT_CAP_DOE};
use seamless_drivers::phys::Mmio;
use seamless_drivers::say;
use seamless_drivers::tsc::Tsc;
use tsm_client::host::device::{self, Assignment};
use tsm_client::host::{HostError, PumpStats};

use crate::mem::DoeLink;
use crate::{Cpu, Failed, Why};

/// NVMe: mass storage, non-volatile memory controller, NVM Express.
const NVME_CLASS: (u8, u8, u8) = (0x01, 0x08, 0x02);
/// The NVMe function, as the host agent found and set it up.
#[derive(Debug)]
pub struct Nvme {
    /// Its address.
    pub bdf: Bdf,
    /// BAR0 (the controller's registers), where the agent placed it.
    pub bar0: Bar,
    /// BAR0's registers.
    pub regs: Mmio,
    /// The DOE mailbox.
    pub mailbox: Mailbox<Mmio>,
}

pub use seamless_drivers::acpi::ecam_or_default as find_ecam;
pub use seamless_drivers::pci::host_bridge_window as bar_window;

/// Finds the NVMe function, places BAR0 where the run configuration says (inside `window`), and
/// opens its DOE mailbox.
///
/// # Errors
/// [`Failed`], naming the step.
pub fn open_nvme(
    map: &MemoryMap,
    config: &RunConfig,
    tsc: &Tsc,
    (ecam, window): (Ecam, (u64, u64)),
) -> Result<Nvme, Failed> {
    let pcie = Pcie::open(ecam, map).map_err(|e| Failed::new("PCIe", Why::Ecam(e.base)))?;
    let mut found = None;
    let mut count = 0;
    pcie.for_each(ecam.start_bus, &mut |f| {
        count += 1;
        if f.class() == NVME_CLASS && found.is_none() {
            found = Some(f.bdf);
        }
    });
    let Some(bdf) = found else {
        return Err(Failed::new("PCIe", Why::NoNvme(count)));
    };
    let nvme = pcie.function(bdf).ok_or_else(|| Failed::new("PCIe", "the NVMe function vanished"))?;
    let (vendor, device) = nvme.ids();
    let mut free = window;
    let mut bars: [Option<Bar>; 6] = [None; 6];
    nvme.setup_bars(&mut free, &mut bars).map_err(|e| Failed::new("NVMe BARs", e))?;
    let mut bar0 = bars[0].ok_or_else(|| Failed::new("NVMe", "no memory BAR0"))?;
    if bar0.base != config.nvme_bar0 {
        nvme.move_bar(&mut bar0, config.nvme_bar0, window).map_err(|e| Failed::new("NVMe BAR0", e))?;
    }
    bars[0] = Some(bar0);
    nvme.enable_bus_master();
    let doe_at = nvme
        .find_ext_cap(EXT_CAP_DOE)
        .ok_or_else(|| Failed::new("NVMe", "no DOE extended capability (QEMU: -device nvme,...,spdm_port=<port>)"))?;
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
    let regs = nvme.bar_registers(&bar0, window).ok_or_else(|| Failed::new("NVMe", "BAR0 outside the MMIO hole"))?;
    let doe_regs = nvme
        .registers(doe_at, doe::CAP_BYTES)
        .ok_or_else(|| Failed::new("NVMe", "DOE capability past the configuration space"))?;
    let mut mailbox = Mailbox::new(doe_regs, config.doe_timeout_ms * 1000);
    mailbox.abort(tsc).map_err(|e| Failed::new("DOE", e))?;
    Ok(Nvme { bdf, bar0, regs, mailbox })
}

/// The mailbox's summary: what `stats` moved, and the TSC ticks `(in the mailbox, in the TSM)`.
pub fn pump_summary(tsc: &Tsc, s: &PumpStats, (doe_ticks, tsm_ticks): (u64, u64)) {
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
///
/// # Errors
/// [`Failed`]: PDEV or SPDM.CONNECT, with the call's error.
pub fn spdm_connect<C: Cpu + ?Sized>(cpu: &mut C, doe: &mut DoeLink<'_>, bdf: Bdf) -> Result<Assignment, Failed> {
    let mut a = device::pdev_create(cpu, u32::from(bdf.rid())).map_err(|e| Failed::new("PDEV", e))?;
    spdm_connect_pdev(cpu, doe, bdf, &mut a).map_err(|e| Failed::new("SPDM.CONNECT", e))?;
    Ok(a)
}

/// SPDM.CONNECT of the assignment's PDEV; returns its duration in µs.
///
/// # Errors
/// [`HostError`] of the call (a mailbox failure was aborted).
pub fn spdm_connect_pdev<C: Cpu + ?Sized>(
    cpu: &mut C,
    doe: &mut DoeLink<'_>,
    bdf: Bdf,
    a: &mut Assignment,
) -> Result<u64, HostError> {
    let rid = bdf.rid();
    let tsc = cpu.tsc();
    say!("spdm: PDEV for {bdf} (function id {rid:#06x}) at {:#x}; SPDM.CONNECT over the DOE mailbox", a.pdev);
    let mut stats = PumpStats::default();
    let (start, doe0, tsm0) = (tsc.now(), doe.ticks, cpu.tsm_ticks());
    let result = device::connect(cpu, doe, a, &mut stats);
    let total = tsc.ticks_to_us(tsc.now().wrapping_sub(start));
    pump_summary(&tsc, &stats, (doe.ticks - doe0, cpu.tsm_ticks() - tsm0));
    result?;
    say!(
        "spdm: connected: SPDM {}.{}, secure session up, measured {}, in {} ms",
        a.spdm.version >> 4,
        a.spdm.version & 0xF,
        if a.spdm.measured_in_session {
            "inside the session"
        } else {
            "in the clear (the device refused in-session measurement)"
        },
        Ms(total)
    );
    figure("spdm_connect_qemu_ms", &Ms(total), "ms");
    Ok(total)
}
