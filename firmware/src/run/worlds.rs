//! The host world against the assignment (mode `assign`): what the host world can read of BAR0
//! before DMABUF.IMPORT, and, once the TDI runs, a read and a write of each protected object by
//! the host world's own instructions: the imported BAR, a TD private page, the TDR, a TDCS page,
//! an S-EPT table, an IOMMU table, the PAMT, TSM memory and the VT-d registers. Each must fault
//! in hardware (nested page fault, #MC in the host world), leave the protected bytes as they
//! were, land in the fault log, and leave the host running.

use tsm::addr::Pfn;
use tsm::pamt::PageType;
use tsm::Tsm;

use crate::arch;
use crate::drivers::phys::{Frames, Mmio};
use crate::drivers::tsc::Tsc;
use crate::platform::FirmwarePlatform;
use crate::world::host::{HostWorld, MAX_TARGETS};

/// The VT-d register page.
const VTD_REGS: u64 = 0xFED9_0000;
/// NVMe CC (controller configuration): writable, so a write that got through would show.
const NVME_CC: u64 = 0x14;

/// A protected object the host world attacks.
#[derive(Clone, Copy, Debug)]
struct Target {
    name: &'static str,
    addr: u64,
}

/// The first TDMR frame of type `ty` (owned by `owner` if given).
fn first_of(tsm: &Tsm<FirmwarePlatform>, ty: PageType, owner: Option<u64>) -> Option<u64> {
    let tdmr = *tsm.tdmrs().first()?;
    (tdmr.frames.start.raw()..tdmr.frames.start.raw() + tdmr.frames.count).find_map(|f| {
        let e = tsm.pamt_entry(Pfn::new(f)?)?;
        (e.ty == ty && owner.is_none_or(|o| e.owner.addr().raw() == o)).then_some(f << 12)
    })
}

/// Before the import: the host world reads BAR0 (its own device, in its map). Returns the value
/// it read (CC) and the host world's #VMEXITs in the run.
///
/// # Errors
/// A description of what went wrong.
pub fn bar_before_import(
    world: &mut HostWorld,
    tsm: &mut Tsm<FirmwarePlatform>,
    tsc: &Tsc,
    bar: u64,
) -> Result<(u64, u64), &'static str> {
    // Bit 0: read only; the host's own registers are left as they are.
    let r = world.run_probe(tsm, tsc, (1, 0), &[bar + NVME_CC + 1]).map_err(|_| "the host world stopped")?;
    if r.faults != 0 {
        return Err("the host world could not reach its own BAR0 before the import");
    }
    Ok((r.reads[0], r.exits))
}

/// After DMABUF.IMPORT, with the TDI running: every protected object, read and written by the
/// host world. Returns how many objects it attacked, how many log entries the host read back,
/// and the host world's #VMEXITs in the run.
///
/// # Errors
/// A description of the first check that failed.
pub fn attacks(
    world: &mut HostWorld,
    tsm: &mut Tsm<FirmwarePlatform>,
    tsc: &Tsc,
    frames: Frames,
    (tdr, bar, regs): (u64, u64, &Mmio),
) -> Result<(usize, u64, u64), &'static str> {
    let pamt = tsm.tdmrs().first().map(|t| t.pamt.start.addr().raw()).ok_or("no TDMR")?;
    let found = |a: Option<u64>, what| a.ok_or(what);
    let targets = [
        Target { name: "imported BAR0 (CC)", addr: bar + NVME_CC },
        Target {
            name: "TD private page",
            addr: found(first_of(tsm, PageType::Regular, Some(tdr)), "no TD private page")?,
        },
        Target { name: "TDR", addr: tdr },
        Target { name: "TDCS", addr: found(first_of(tsm, PageType::Tdcs, Some(tdr)), "no TDCS page")? },
        Target { name: "S-EPT table", addr: found(first_of(tsm, PageType::Sept, Some(tdr)), "no S-EPT page")? },
        Target { name: "IOMMU table", addr: found(first_of(tsm, PageType::IommuTable, None), "no IOMMU table")? },
        Target { name: "PAMT", addr: pamt },
        Target { name: "TSM memory", addr: arch::image_range().0 + 0x1000 },
        Target { name: "VT-d registers", addr: VTD_REGS },
    ];
    const _: () = assert!(9 <= MAX_TARGETS);
    let addrs = targets.map(|t| t.addr);
    let before = targets.map(|t| snapshot(frames, regs, bar, t.addr));
    let r = world.run_probe(tsm, tsc, (1, 0), &addrs).map_err(|_| "the host world stopped")?;
    let after = targets.map(|t| snapshot(frames, regs, bar, t.addr));
    for (i, t) in targets.iter().enumerate() {
        say!(
            "world: host world -> {} at {:#x}: read and write refused, bytes {}",
            t.name,
            t.addr,
            if before[i] == after[i] && r.reads[i] == 0 { "unchanged" } else { "CHANGED" }
        );
        if before[i] != after[i] || r.reads[i] != 0 {
            return Err("a protected object changed or reached the host world");
        }
    }
    let expected = 2 * targets.len() as u64;
    if r.faults != expected || r.handled != expected || r.log_entries != expected {
        return Err("not every access of the host world faulted, was handled and logged");
    }
    Ok((targets.len(), r.log_entries, r.exits))
}

/// 16 bytes at `addr` as the TSM sees them: RAM through the direct map, the image directly, the
/// BAR through its registers (CC), anything else (VT-d, absent here) as nothing.
fn snapshot(frames: Frames, regs: &Mmio, bar: u64, addr: u64) -> [u8; 16] {
    let mut b = [0u8; 16];
    let (img_start, img_end) = arch::image_range();
    if frames.contains(addr, 16) {
        frames.read(addr, &mut b);
    } else if (img_start..img_end).contains(&addr) {
        arch::read_image(addr, &mut b);
    } else if addr == bar + NVME_CC {
        b[..4].copy_from_slice(&regs.read_u32(NVME_CC).to_le_bytes());
    }
    b
}
