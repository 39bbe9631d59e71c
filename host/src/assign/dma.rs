//! The host's side of the TD's DMA (issue 12): its read of the drive through the host domain
//! before the assignment (`nvme_read_mib_s_host`), and, once the TDI runs, what the TD reports
//! of its own driver (`tsm_client::guest::disk`) checked against what only the host can see:
//! the unit's fault records (SEAMLESS.IOMMU.FAULT.RD) and the TSM's walker
//! (`tsm::iommu::translate` through SEAMLESS.IOMMU.TRANSLATE, the reference model of the
//! differential test). The host also does
//! its part in between: the timed invalidation, the S-EPT and DMAR states of the differential
//! cases, and the revoke while the TD's READs are outstanding.

use core::fmt;

use seamless_drivers::console::figure;
use seamless_drivers::phys::Mmio;
use seamless_drivers::say;
use seamless_host::Cpu;
use tsm::abi::host::leaf;
use tsm::{Regs, Status};
use tsm_client::guest::disk::{self, Prepare, CASES};
use tsm_client::guest::result::{self, DiffCase, DiskRead, FaultsSeen, ReadsOutstanding, Record, Revoked, Strays};
use tsm_client::guest::DEMO_LAYOUT;
use tsm_client::host::{donate, raw, scratch, HostMemory};

use super::{Demo, Failed, StepResult, Why};
use crate::run::Agent;

/// The TD's shared bit (GPAW 48).
const SHARED_BIT: u64 = 1 << 47;

/// Printable ASCII of an NVMe identify string, trailing spaces dropped.
struct Ascii<'a>(&'a [u8]);

impl fmt::Display for Ascii<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let end = self.0.iter().rposition(|&c| c != b' ' && c != 0).map_or(0, |i| i + 1);
        for &c in &self.0[..end] {
            let c = if c.is_ascii_graphic() || c == b' ' { c as char } else { '.' };
            write!(f, "{c}")?;
        }
        Ok(())
    }
}

/// The first bytes of a digest, in hex.
struct Hex8<'a>(&'a [u8; 48]);

impl fmt::Display for Hex8<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        f.write_str("...")
    }
}

/// KiB/s of `blocks` 512-byte blocks moved in `ticks` of a `hz` clock.
fn kib_per_s(blocks: u64, ticks: u64, hz: u64) -> u64 {
    let kib = u128::from(blocks) * 512 / 1024;
    (kib * u128::from(hz)).checked_div(u128::from(ticks.max(1))).map_or(0, |r| r as u64)
}

/// A rate in KiB/s as MiB/s with three decimals.
struct MibS(u64);

impl fmt::Display for MibS {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:03}", self.0 / 1024, (self.0 % 1024) * 1000 / 1024)
    }
}

/// Faults the TSM's log counted since IOMMU.SETUP, read by the host through its leaf (which
/// first drains the unit's fault recording registers).
fn fault_count(cpu: &mut Agent) -> u64 {
    raw(cpu, Regs::call(leaf::IOMMU_FAULT_RD, 0, 0, 0, 0)).rcx
}

/// The fault record `n` of the TSM's log: (source id, reason, page), if there is one.
fn fault_record(cpu: &mut Agent, n: u64) -> Option<(u64, u64, u64)> {
    let r = raw(cpu, Regs::call(leaf::IOMMU_FAULT_RD, n, 0, 0, 0));
    (r.r9 == 1).then_some((r.rdx & 0xFFFF, r.rdx >> 16 & 0xFF, r.r8))
}

/// The walker's fault reasons (SEAMLESS.IOMMU.TRANSLATE's RDX) the unit reports with another
/// code.
const WALKER_NOT_PRESENT: u64 = 0x79;
const WALKER_RESERVED: u64 = 0x7A;
const WALKER_MMIO: u64 = 0xF0;
const WALKER_SHARED: u64 = 0xF1;
const WALKER_PASID_NOT_PRESENT: u64 = 0x59;

/// True if the unit's fault `code` is the walker's `reason` as QEMU reports it
/// (`../shared/reference/prototypes/vtd/run1.log`): QEMU gives a second-stage entry without the
/// needed permission (R = W = 0 included) the legacy reason 0x05 for a write, and a reserved bit
/// (the MMIO leaf's DMA_BLOCK bit 62) 0x0C, where the walker says the scalable-mode 0x79 and
/// 0x7A or names the TSM's own rule (0xF0 MMIO leaf, 0xF1 shared GPA); other PASID-level and
/// table-level reasons are the same code on both sides.
fn same_class(reason: u64, code: u64) -> bool {
    match reason {
        WALKER_NOT_PRESENT | WALKER_SHARED => code == 0x05,
        WALKER_MMIO | WALKER_RESERVED => code == 0x0C,
        // A not-present PASID entry is all zero in word 0 (`PasidEntry::word0`): QEMU checks its
        // PGTT (0, invalid: 0x5B) and never its P bit.
        WALKER_PASID_NOT_PRESENT => code == 0x5B,
        other => other == code,
    }
}

/// The TSM's walker on one request of `function` (SEAMLESS.IOMMU.TRANSLATE): `Ok(())` if it
/// translates, else the fault reason, with the S-EPT state found.
fn walk(cpu: &mut Agent, function: u32, gpa: u64, write: bool) -> Result<Result<(), (u64, u64)>, Why> {
    let regs = Regs { r9: u64::from(write), ..Regs::call(leaf::IOMMU_TRANSLATE, u64::from(function), 0, gpa, 0) };
    let r = tsm_client::host::call(cpu, "SEAMLESS.IOMMU.TRANSLATE", regs)?;
    Ok(if r.rcx == 1 { Ok(()) } else { Err((r.rdx, r.r8)) })
}

/// What QEMU's unit did with one write.
#[derive(Clone, Copy, Debug)]
enum Verdict {
    /// The data arrived (the drive's first 4 KiB, as the TD read it back) and no fault names
    /// the page.
    Landed,
    /// A fault record for the page, with this VT-d reason.
    Fault(u64),
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Landed => f.write_str("landed"),
            Verdict::Fault(r) => write!(f, "fault {r:#04x}"),
        }
    }
}

/// The walker's verdict, for the log line: the reason and, for an S-EPT entry, its state.
struct Walked(Result<(), (u64, u64)>);

impl fmt::Display for Walked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Ok(()) => f.write_str("translates"),
            Err((reason, detail)) => {
                let state = (detail & 1 << 16 != 0).then(|| tsm::sept::SeptState::from_code(detail & 0xFF)).flatten();
                match state {
                    Some(s) => write!(f, "{s:?} entry ({reason:#04x})"),
                    None => write!(f, "{reason:#04x}"),
                }
            }
        }
    }
}

impl Demo<'_> {
    /// Mode `assign`: the TD's read of the drive into private pages (its own figure, timed in
    /// the TD), its stray READs the unit must refuse and log, one timed domain-selective
    /// invalidation, the TD's own look at its fault log, then the differential test.
    pub(super) fn read_disk(&mut self, function: u32, tl: &mut super::Timeline) -> Result<(), Failed> {
        tl.begin("nvme_dma");
        let before = fault_count(self.cpu);
        let r: DiskRead = self.result()?;
        let private_kib_s = self.report_disk(&r, before)?;
        if let Some(host) = self.host_kib_s {
            // The TD's DMA through its S-EPT against the host's through the host map, same READs,
            // both timed over the commands only.
            let permille = (private_kib_s * 1000).checked_div(host).unwrap_or(0);
            figure("dma_private_vs_host", &format_args!("{}.{:03}", permille / 1000, permille % 1000), "ratio");
        }
        let before = fault_count(self.cpu);
        let s: Strays = self.result()?;
        self.report_stray_dma(function, before, &s.statuses.map(|v| v.get()))?;
        let tsc = self.cpu.tsc();
        let t0 = tsc.now();
        let r = raw(self.cpu, Regs::call(leaf::IQ_INV_REQUEST, self.td.td.tdr, 0, 0, 0));
        let inv_ns = tsc.ticks_to_ns(tsc.now().wrapping_sub(t0));
        if r.status() != Status::SUCCESS {
            return Err(Failed { what: "IQ.INV", why: Why::Said("TDH.IQ.INV.REQUEST failed") });
        }
        figure("iommu_inv_us", &format_args!("{}.{:03}", inv_ns / 1000, inv_ns % 1000), "us");
        let seen: FaultsSeen = self.result()?;
        if seen.named != 0b111 {
            return Err(Failed {
                what: "guest: DMA faults",
                why: Why::Said("a stray DMA left no record the TD can read"),
            });
        }
        say!(
            "guest: SEAMLESS.TDG.IOMMU.FAULT.RD shows its device's {} fault records, naming each stray page",
            seen.seen.get()
        );
        tl.end();
        self.differential(function)
    }

    /// Prints what the TD's driver found and read, checks that it says the digest is the
    /// drive's and that the read faulted nowhere (`before`: the log before it), and the figure
    /// (returned, in KiB/s).
    fn report_disk(&mut self, r: &DiskRead, before: u64) -> Result<u64, Failed> {
        // The TD's own record goes to the launcher as it came, typed and framed.
        super::emit("td-disk.bin", r.bytes());
        say!(
            "guest: NVMe {:04x} \"{}\" serial \"{}\", namespace 1: {} blocks of {} bytes (Identify DMA'd into private pages)",
            r.vid.get(),
            Ascii(&r.model),
            Ascii(&r.serial),
            r.ns_blocks.get(),
            r.block_bytes.get()
        );
        let blocks = r.read_blocks.get();
        let want = attest::disk::digest(0, blocks);
        let ok = r.matches == 1 && r.digest == want && blocks == attest::disk::DEMO_BLOCKS;
        say!(
            "guest: read {} KiB (LBA 0..{blocks}) into private memory through QEMU's IOMMU walking the S-EPT; SHA-384 {} {}",
            blocks * 512 / 1024,
            Hex8(&r.digest),
            if ok { "= the drive's known content" } else { "DIFFERS from the drive's content" }
        );
        if !ok {
            return Err(Failed {
                what: "guest: NVMe read",
                why: Why::Said("the data read is not the drive's content"),
            });
        }
        if fault_count(self.cpu) != before {
            return Err(Failed { what: "guest: NVMe read", why: Why::Said("the read left IOMMU faults") });
        }
        let rate = kib_per_s(blocks, r.ticks.get(), self.cpu.tsc().hz());
        figure("nvme_read_mib_s_private", &MibS(rate), "MiB/s");
        Ok(rate)
    }

    /// The host's view of the stray DMA: each command completed (status 0 at the controller),
    /// and each left a fault record naming the NVMe function and the page. QEMU may record one
    /// refused DMA more than once (a second record for the same page when the unit's fault
    /// register was drained in between, else compressed): the host takes each page's first.
    fn report_stray_dma(&mut self, function: u32, before: u64, statuses: &[u16; 3]) -> Result<(), Failed> {
        let count = fault_count(self.cpu);
        for ((gpa, what), status) in disk::stray(&DEMO_LAYOUT, SHARED_BIT).iter().zip(statuses) {
            let page = gpa & !0xFFF;
            let found = (before..count).find_map(|n| fault_record(self.cpu, n).filter(|r| r.2 == page));
            let Some((sid, reason, _)) = found else {
                return Err(Failed { what: "DMA fault cases", why: Why::Said("a stray DMA left no fault record") });
            };
            say!(
                "dma fault: READ into {what} (GPA {gpa:#x}): NVMe status {status:#x}; the unit refused it: source {sid:#06x}, page {page:#x}, VT-d reason {reason:#04x}"
            );
            if sid != u64::from(function) {
                return Err(Failed { what: "DMA fault cases", why: Why::Said("a fault record names another source") });
            }
        }
        Ok(())
    }

    /// What the host does before differential case `c` runs.
    fn prepare(&mut self, c: &disk::Case) -> Result<(), Failed> {
        let tdr = self.td.td.tdr;
        match c.prepare {
            Prepare::Nothing => {}
            Prepare::AugPending => {
                let page = donate(self.cpu).step("differential: AUG")?;
                let gpa = disk::pending_page(&DEMO_LAYOUT);
                let r = raw(self.cpu, Regs::call(leaf::MEM_PAGE_AUG, gpa, tdr, page, 0));
                if r.status() != Status::SUCCESS {
                    return Err(Failed {
                        what: "differential",
                        why: Why::Said("TDH.MEM.PAGE.AUG of the PENDING case failed"),
                    });
                }
            }
            Prepare::BlockDma => {
                // After DMAR.BLOCK, and the invalidation the host owes before a remove.
                let r = raw(self.cpu, Regs::call(leaf::DMAR_BLOCK, self.a.tdi, 0, 0, 0));
                let inv = raw(self.cpu, Regs::call(leaf::IQ_INV_REQUEST, tdr, 0, 0, 0));
                if r.status() != Status::SUCCESS || inv.status() != Status::SUCCESS {
                    return Err(Failed { what: "differential", why: Why::Said("TDH.DMAR.BLOCK or IQ.INV failed") });
                }
            }
        }
        Ok(())
    }

    /// The differential test: for each case the host makes its S-EPT (and DMAR) state, the TD
    /// READs into its GPA through QEMU's unit and says what it saw, and the TSM's walker
    /// (`tsm::iommu::translate`) is asked about the same request; the unit's verdict (the data
    /// landed, or a fault record with its reason) must be the walker's (a translation, or a
    /// fault of the same class). The last case blocks the TDI's DMA entry for good.
    fn differential(&mut self, function: u32) -> Result<(), Failed> {
        let cases = disk::differential(&DEMO_LAYOUT, SHARED_BIT);
        let mut agreed = 0;
        for (i, c) in cases.iter().enumerate() {
            self.prepare(c)?;
            let before = fault_count(self.cpu);
            let seen: DiffCase = self.result()?;
            if usize::from(seen.case) != i {
                return Err(Failed { what: "differential", why: Why::Said("the TD reported another case") });
            }
            // A command whose fetch the unit refused never completes: the verdict is about that
            // fetch, a read of the I/O submission queue page.
            let (gpa, write) =
                if seen.completed == 1 { (c.gpa, true) } else { (disk::queues(&DEMO_LAYOUT).iosq, false) };
            let walker = walk(self.cpu, function, gpa, write).step("differential")?;
            let unit = self.unit_verdict(function, before, gpa, seen.landed)?;
            let same = match (walker, unit) {
                (Ok(()), Verdict::Landed) => true,
                (Err((reason, _)), Verdict::Fault(code)) => same_class(reason, code),
                _ => false,
            };
            let access = if write { "write" } else { "command fetch" };
            say!(
                "differential: {}: {access} at GPA {gpa:#x}: unit {unit}, walker {}: {}",
                c.what,
                Walked(walker),
                if same { "same verdict" } else { "DIFFERENT" }
            );
            if !same {
                return Err(Failed { what: "differential", why: Why::Said("QEMU's unit and the walker disagree") });
            }
            agreed += 1;
        }
        say!("differential: QEMU's unit and tsm::iommu::translate agree on all {agreed} cases");
        const _: () = assert!(CASES == 6);
        Ok(())
    }

    /// The unit's verdict on the write to `gpa` made after fault `before`: a record naming the
    /// page, else the data the TD read back.
    fn unit_verdict(&mut self, function: u32, before: u64, gpa: u64, landed: u8) -> Result<Verdict, Failed> {
        let page = gpa & !0xFFF;
        let count = fault_count(self.cpu);
        let fault = (before..count)
            .find_map(|n| fault_record(self.cpu, n).filter(|&(sid, _, p)| sid == u64::from(function) && p == page));
        match (fault, landed) {
            (Some((_, reason, _)), _) => Ok(Verdict::Fault(reason)),
            (None, result::LANDED) => Ok(Verdict::Landed),
            _ => Err(Failed { what: "differential", why: Why::Said("a write neither landed nor left a fault record") }),
        }
    }

    /// Modes `revoke` and `stop`: the TD brings its controller up, fills its data pages with a
    /// marker and leaves one 4 KiB READ outstanding into each; the exporter revokes the BAR at
    /// once (or, `stop`, the host stops the TDI). DMABUF.REVOKE and TDI.STOP block the DMA entry
    /// and invalidate the IOTLB before they return, so what the pages hold at the return (drive
    /// data that landed before, or the marker) must be what they hold once the device is done,
    /// which the TD checks after its fault log stopped growing. Returns the TDI's state the TD
    /// read afterwards.
    pub(super) fn revoke_under_dma(&mut self, stop: bool) -> Result<u64, Failed> {
        let outstanding: ReadsOutstanding = self.result()?;
        let reads = outstanding.reads.get();
        if stop {
            let device = tsm_client::host::device::stop(self.cpu, &mut self.doe, &self.a, &mut self.stats);
            device.step("TDI.STOP")?;
            say!("tdi: stopped by the host while RUN, {reads} READs outstanding; its MMIO and DMA entry blocked");
        } else {
            let blocked = tsm_client::host::device::dmabuf_revoke(self.cpu, &self.a).step("DMABUF.REVOKE")?;
            say!(
                "dmabuf: BAR0 revoked by the exporter while the TDI runs, {reads} READs outstanding; {blocked} mapped pages blocked"
            );
        }
        let r: Revoked = self.result()?;
        super::emit("td-revoked.bin", r.bytes());
        let (pages, landed, late, refused) = (r.pages.get(), r.landed.get(), r.late.get(), r.refused.get());
        say!(
            "dma: after the {} returned: {landed} of {pages} pages held data that landed before it; {refused} DMA requests of the device refused since (fault records); {late} READs landed later",
            if stop { "stop" } else { "revoke" }
        );
        // QEMU translates a READ's data pages when the device maps them, before its backend
        // reads the drive, and models no drain of such in-flight DMA at an invalidation (VT-d's
        // drain bits; docs/architecture.md section 9): a READ mapped before the return may land
        // after it, so only the refusals since are QEMU's evidence; the ordering itself (block
        // and invalidation before the return) is tested in the harness (`assign_dma.rs`).
        if late != 0 {
            say!(
                "dma: {late} READs translated before the call returned completed after it (QEMU models no VT-d drain)"
            );
        }
        Ok(r.state.get())
    }
}

/// How long the host waits for a command the blocking table holds (QEMU's controller fetches a
/// command within microseconds of the doorbell).
const BLOCKED_WAIT_MS: u64 = 100;

/// Before SEAMLESS.IOMMU.SETUP the host drives its controller (`host_nvme::dma_before_setup`):
/// with the TSM's blocking root table in the unit no DMA lands, not even in the host's own
/// pages; the host's read through the host domain after the setup is the control.
pub(super) fn before_setup(cpu: &mut Agent, regs: &Mmio) -> Result<(), Why> {
    let mut pages = crate::host_nvme::HostPages { queues: [0; 4], data: [0; disk::DATA_PAGES] };
    for p in pages.queues.iter_mut().chain(pages.data.iter_mut().take(1)) {
        *p = scratch(cpu)?;
    }
    let tsc = cpu.tsc();
    let b =
        crate::host_nvme::dma_before_setup(regs, cpu.host.frames(), &tsc, &pages, BLOCKED_WAIT_MS).map_err(|e| {
            say!("host: NVMe before IOMMU.SETUP: {e}");
            Why::Said("the host's NVMe check before IOMMU.SETUP failed")
        })?;
    if !b.held() {
        say!("dma: before IOMMU.SETUP the host's IDENTIFY reached memory: {b:?}");
        return Err(Why::Said("device DMA passed before IOMMU.SETUP"));
    }
    say!(
        "dma: before IOMMU.SETUP the host's NVMe IDENTIFY (queues and data page in host RAM) went nowhere: no completion in {} us, the completion queue and the data page unchanged (the unit walks the TSM's blocking root table); controller disabled again",
        b.waited_us
    );
    Ok(())
}

/// The host, still owning the NVMe controller, reads the same blocks as the TD will into its own
/// pages through the host domain: HOST.ATTACH of the function (its second stage = the host map),
/// the read, the digest check, then HOST.DETACH, whose invalidation completed before it returned
/// (the controller is the TD's from DMAR.ADD on). Returns the rate in KiB/s.
pub(super) fn host_read(cpu: &mut Agent, regs: &Mmio, function: u32) -> Result<u64, Why> {
    let f = [donate(cpu)?, donate(cpu)?, donate(cpu)?];
    let r = raw(cpu, Regs { r10: f[2], ..Regs::call(leaf::IOMMU_HOST_ATTACH, u64::from(function), 0, f[0], f[1]) });
    if r.status() != Status::SUCCESS {
        say!("host: SEAMLESS.IOMMU.HOST.ATTACH returned {:#x}", r.rax);
        return Err(Why::Said("SEAMLESS.IOMMU.HOST.ATTACH failed"));
    }
    for (i, &frame) in f.iter().enumerate() {
        if r.rcx & (1 << i) == 0 {
            HostMemory::release(cpu, frame);
        }
    }
    let mut pages = crate::host_nvme::HostPages { queues: [0; 4], data: [0; disk::DATA_PAGES] };
    for p in pages.queues.iter_mut().chain(pages.data.iter_mut()) {
        *p = scratch(cpu)?;
    }
    let blocks = attest::disk::DEMO_BLOCKS;
    let tsc = cpu.tsc();
    let read = crate::host_nvme::read(regs, cpu.host.frames(), &tsc, &pages, blocks);
    let r = raw(cpu, Regs::call(leaf::IOMMU_HOST_DETACH, u64::from(function), 0, 0, 0));
    let read = read.map_err(|e| {
        say!("host: NVMe read through the host domain: {e}");
        Why::Said("the host's own NVMe read failed")
    })?;
    if r.status() != Status::SUCCESS {
        say!("host: SEAMLESS.IOMMU.HOST.DETACH returned {:#x}", r.rax);
        return Err(Why::Said("SEAMLESS.IOMMU.HOST.DETACH failed"));
    }
    let want = attest::disk::digest(0, blocks);
    say!(
        "host: read {} KiB (LBA 0..{blocks}) into its own pages through the host domain (QEMU's IOMMU walking the host map); SHA-384 {} {}",
        blocks * 512 / 1024,
        Hex8(&read.digest),
        if read.digest == want { "= the drive's known content" } else { "DIFFERS from the drive's content" }
    );
    if read.digest != want || read.blocks != blocks {
        return Err(Why::Said("the host read other data than the drive's"));
    }
    say!("dma: the NVMe function left the host domain (entry zeroed, invalidation confirmed)");
    let rate = kib_per_s(blocks, read.ticks, tsc.hz());
    figure("nvme_read_mib_s_host", &MibS(rate), "MiB/s");
    Ok(rate)
}
