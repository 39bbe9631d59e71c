//! The host world: the untrusted VMM's code as an SVM guest behind a nested table that is the
//! identity map of what the host owns: its RAM (everything outside the TSM image and the TDMR
//! frames the PAMT does not list as free), and the MMIO hole minus the VT-d registers. The map
//! follows the PAMT: `FirmwarePlatform` drops a frame from it in the call that donates it and
//! maps it again in the call that gives it back (`PhysMem::ownership_changed`).
//!
//! The host reaches the TSM only by SEAMCALL (`66 0f 01 cf`: #UD under TCG, the bytes at RIP are
//! checked through the host's own page tables and nested map), leaf in RAX, operands and results
//! in exactly the registers of the ABI table (`Tsm::host_call`). An access outside the map is a
//! nested page fault: nothing is read or written, the TSM records it in its host fault log
//! (TDH.SYS.FAULT.RD reads it back) and delivers #MC (vector 18) at the faulting instruction.
//!
//! What runs there is the host agent's binary (`seamless-host`, loaded by `loader` from fw_cfg),
//! which [`HostWorld::run`] serves until it ends the run.

use tsm::addr::{HostPhysAddr, Pfn};
use tsm::pamt::PageType;
use tsm::Tsm;

use super::loader::{self, LoadError, Loaded};
use super::npt::{MemType, Npt};
use super::td::{TdCounts, TDCALL_LEAVES};
use super::{Exit, World, WorldError, PAGE, VECTOR_UD};
use crate::arch::svm::{self, vmcb, Segment};
use crate::drivers::fw_cfg::FwCfg;
use crate::drivers::phys::Frames;
use crate::memmap::{MemoryMap, RangeKind};
use crate::platform::FirmwarePlatform;
use seamless_drivers::bootinfo::BootInfo;
use seamless_drivers::{phases, say};

/// The VT-d register page (DMAR/DRHD): whoever writes it owns DMA.
const VTD_REGS: u64 = 0xFED9_0000;
/// The register pages of the MMIO hole the host world's map leaves out, ascending: what would
/// let the host reach memory outside its map or run code outside its world. The I/O APIC and
/// the HPET can send the CPU an INIT, SMI or NMI (an I/O APIC redirection entry's delivery
/// mode, an HPET timer's FSB message), and so can the local APIC's ICR, whose timer is also
/// the TSM's preemption timer; an INIT resets the CPU into the BIOS, outside every world, with
/// memory as it is. The VT-d unit owns DMA. The host agent needs none of them (a TD's APIC
/// and timer are the host's software).
const KEPT_MMIO: [u64; 4] = [0xFEC0_0000, 0xFED0_0000, VTD_REGS, 0xFEE0_0000];
/// SEAMCALL's encoding.
const SEAMCALL: [u8; 4] = [0x66, 0x0f, 0x01, 0xcf];
/// #MC.
const VECTOR_MC: u8 = 18;
/// The host world and the host pages its image and tables use.
#[derive(Debug)]
pub struct HostWorld {
    /// What CPUID said about SVM.
    pub caps: svm::SvmCaps,
    world: World,
    frames: Frames,
    /// What the TSM keeps of the I/O ports beyond `ioports::INTERCEPTED`: the platform
    /// secret's fw_cfg selector (the host world may not select it), the ACPI PM block.
    ports: crate::ioports::Ports,
    /// fw_cfg, through which the TSM passes on the host's selections it allows.
    fw: Option<FwCfg>,
    /// Writes of the host world the nested map refused: where, and the 16 bytes there at the
    /// fault, compared at the world's next exit (only the host ran in between).
    refused_writes: [(u64, [u8; 16]); 4],
    refused_pending: usize,
    /// Refused writes whose bytes the TSM found unchanged at the next exit.
    pub writes_unchanged: u64,
    /// The agent's open phase (`phases`), the world switches at its start and the TD worlds'
    /// exit counts then.
    phase: Option<(phases::Name, (u64, u64), TdCounts)>,
}

/// How the host world's service loop goes on after an exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Served {
    /// Served; enter the world again.
    Continue,
    /// The host asked to end the run with this `isa-debug-exit` code.
    End(u32),
}

impl HostWorld {
    /// The host world without code yet: enables SVM (stopping at once with the fix named if
    /// the CPU lacks it), builds the host's nested map (everything below the MMIO hole but the
    /// TSM's image, RAM above 4 GiB, the MMIO hole but the VT-d registers; a TDMR frame only
    /// while the PAMT says it is free, once the TSM is configured), hands it to the platform so
    /// that it follows every donation, and sets up the VMCB's intercepts.
    ///
    /// # Errors
    /// [`WorldError`].
    pub fn new(
        tsm: &mut Tsm<FirmwarePlatform>,
        map: &MemoryMap,
        image: (u64, u64),
        mmio_start: u64,
        frames: Frames,
    ) -> Result<HostWorld, WorldError> {
        let caps = svm::enable().map_err(WorldError::Svm)?;
        let pool = svm::take_npt_pool().ok_or(WorldError::OutOfTsmMemory)?;
        let mut npt = Npt::new(pool);
        let oom = |_| WorldError::OutOfTsmMemory;
        let tdmrs = tsm.tdmrs();
        let tdmr_of = |t: &tsm::pamt::Tdmr| {
            let start = t.frames.start.addr().raw();
            (start, start + t.frames.count * PAGE)
        };
        // Everything below the MMIO hole is the host's but the TSM's image and the TDMRs: RAM,
        // and the firmware's tables a VMM reads (ACPI, the BIOS area), as a kernel has them;
        // above it, RAM past 4 GiB.
        let high_ram = map.ranges().iter().filter(|r| r.kind == RangeKind::Ram && r.base >= mmio_start);
        let ranges = core::iter::once((0, mmio_start)).chain(high_ram.map(|r| (r.base, r.end())));
        for (s, e) in ranges {
            let (s, e) = (s.next_multiple_of(PAGE), e & !(PAGE - 1));
            for (a, b) in [(s, e.min(image.0)), (s.max(image.1), e)] {
                // Outside the TDMRs only: their frames follow the PAMT below.
                let mut at = a;
                while at < b {
                    let inside = tdmrs.iter().map(tdmr_of).find(|&(ts, te)| ts <= at && at < te);
                    let next = match inside {
                        Some((_, te)) => te.min(b),
                        None => {
                            let stop = tdmrs.iter().map(tdmr_of).map(|(ts, _)| ts).filter(|&ts| ts > at).min();
                            let stop = stop.unwrap_or(b).min(b);
                            npt.map(at, stop, MemType::WriteBack).map_err(oom)?;
                            stop
                        }
                    };
                    at = next;
                }
            }
        }
        // Runs of free TDMR frames at once: 2 MiB leaves where a run covers them (a donation
        // splits one later), so the table count does not grow with the TDMR.
        let free = |at: u64| Pfn::new(at >> 12).and_then(|p| tsm.pamt_entry(p)).is_some_and(|e| e.ty == PageType::Free);
        for (ts, te) in tdmrs.iter().map(tdmr_of) {
            let mut at = ts;
            while at < te {
                let start = at;
                while at < te && free(at) {
                    at += PAGE;
                }
                if start < at {
                    npt.map(start, at, MemType::WriteBack).map_err(oom)?;
                } else {
                    at += PAGE;
                }
            }
        }
        let mut at = mmio_start;
        for page in KEPT_MMIO.into_iter().filter(|&p| p >= mmio_start) {
            npt.map(at, page, MemType::Uncached).map_err(oom)?;
            at = page + PAGE;
        }
        npt.map(at, 4 << 30, MemType::Uncached).map_err(oom)?;
        let root = npt.root();
        tsm.platform_mut().host_npt = Some(npt);
        tsm.platform_mut().td = Some(super::td::TdWorlds::new()?);

        let mut world = World::new()?;
        let v = world.vmcb();
        v.write_u32(vmcb::INTERCEPT_EXCEPTIONS, 1 << VECTOR_UD);
        v.write_u32(
            vmcb::INTERCEPT_MISC1,
            vmcb::MISC1_HLT | vmcb::MISC1_MSR | vmcb::MISC1_IOIO | vmcb::MISC1_SHUTDOWN | vmcb::MISC1_INVLPGA,
        );
        // The guest's EFER.SVME must be 1 (a VMRUN consistency check), so every SVM instruction
        // is intercepted and answered with #UD: the host world has no virtualization of its own.
        v.write_u32(
            vmcb::INTERCEPT_MISC2,
            vmcb::MISC2_VMRUN
                | vmcb::MISC2_VMMCALL
                | vmcb::MISC2_VMLOAD
                | vmcb::MISC2_VMSAVE
                | vmcb::MISC2_STGI
                | vmcb::MISC2_CLGI
                | vmcb::MISC2_SKINIT
                | vmcb::MISC2_XSETBV,
        );
        v.write_u64(vmcb::MSRPM_BASE, svm::msrpm_intercept_all());
        v.write_u64(vmcb::IOPM_BASE, svm::iopm_host(crate::ioports::Ports::default().ranges()));
        v.write_u32(vmcb::GUEST_ASID, 1);
        v.write_u8(vmcb::TLB_CONTROL, vmcb::TLB_FLUSH_ALL);
        v.write_u64(vmcb::NP_ENABLE, 1);
        v.write_u64(vmcb::N_CR3, root);
        let code64 = Segment { selector: 0x08, attrib: 0x0A9B, limit: 0xFFFF_FFFF, base: 0 };
        let data = Segment { selector: 0x10, attrib: 0x0C93, limit: 0xFFFF_FFFF, base: 0 };
        v.set_segment(vmcb::CS, code64);
        for seg in [vmcb::ES, vmcb::SS, vmcb::DS, vmcb::FS, vmcb::GS] {
            v.set_segment(seg, data);
        }
        v.set_segment(vmcb::TR, Segment { selector: 0, attrib: 0x008B, limit: 0x67, base: 0 });
        v.write_u64(vmcb::EFER, (1 << 8) | (1 << 10) | (1 << 11) | (1 << 12)); // LME, LMA, NXE, SVME
        v.write_u64(vmcb::CR0, 0x8005_0033); // PG, WP, NE, ET, MP, PE
        v.write_u64(vmcb::CR4, 0x620); // PAE, OSFXSR, OSXMMEXCPT
        v.write_u64(vmcb::DR6, 0xFFFF_0FF0);
        v.write_u64(vmcb::DR7, 0x400);
        v.write_u64(vmcb::G_PAT, 0x0007_0406_0007_0406);
        v.write_u64(vmcb::RFLAGS, 0x2);
        Ok(HostWorld {
            caps,
            world,
            frames,
            ports: crate::ioports::Ports::default(),
            fw: FwCfg::new().ok(),
            refused_writes: [(0, [0; 16]); 4],
            refused_pending: 0,
            writes_unchanged: 0,
            phase: None,
        })
    }

    /// Names the platform secret's fw_cfg selector, which the host world may not select.
    pub fn protect_fw_cfg_item(&mut self, key: u16) {
        self.ports.secret = Some(key);
    }

    /// Keeps the ACPI PM registers at `pm_block` (ICH9's PMBASE) from the host world's writes,
    /// the PM timer excepted: their sleep states would suspend the machine with memory as it
    /// is and resume it in the BIOS, their SMI enables raise SMIs.
    pub fn keep_acpi_pm(&mut self, pm_block: u16) {
        self.ports.pm_block = Some(pm_block);
        self.world.vmcb().write_u64(vmcb::IOPM_BASE, svm::iopm_host(self.ports.ranges()));
    }

    /// Makes the configuration space of the chipset functions (`ioports::CHIPSET`: the host
    /// bridge and the LPC bridge) read-only in the host's nested map, through the ECAM window
    /// at `ecam`: their PCIEXBAR, RCBA and SMRAM registers would let the host put device
    /// registers over the TSM's memory. (Through ports 0xCF8/0xCFC the TSM sees the register
    /// and refuses only those: `ioports::CHIPSET_LOCKED`.)
    ///
    /// # Errors
    /// [`WorldError::OutOfTsmMemory`] if the nested map could not take the change.
    pub fn protect_chipset_config(&mut self, tsm: &mut Tsm<FirmwarePlatform>, ecam: u64) -> Result<(), WorldError> {
        let npt = tsm.platform_mut().host_npt.as_mut().ok_or(WorldError::OutOfTsmMemory)?;
        for (bus, device, function) in crate::ioports::CHIPSET {
            let page = ecam + (u64::from(bus) << 20 | u64::from(device) << 15 | u64::from(function) << 12);
            npt.map_read_only(page, page + PAGE, MemType::Uncached).map_err(|_| WorldError::OutOfTsmMemory)?;
        }
        Ok(())
    }

    /// Loads the host agent's binary from fw_cfg (`loader`) into host RAM from `start`, with
    /// its page tables and the boot information `info` makes, and sets the world to enter it.
    ///
    /// # Errors
    /// [`LoadError`].
    pub fn load_binary(
        &mut self,
        tsm: &Tsm<FirmwarePlatform>,
        fw: &FwCfg,
        start: u64,
        info: &dyn Fn((u64, u64)) -> BootInfo,
    ) -> Result<Loaded, LoadError> {
        let npt = tsm.platform().host_npt.as_ref().ok_or(LoadError::NotHostRam { addr: start })?;
        let loaded = loader::load(fw, &self.frames, npt, start, info)?;
        let v = self.world.vmcb();
        v.set_segment(vmcb::GDTR, Segment { selector: 0, attrib: 0, limit: 0, base: 0 });
        v.set_segment(vmcb::IDTR, Segment { selector: 0, attrib: 0, limit: 0, base: 0 });
        v.write_u64(vmcb::CR3, loaded.cr3);
        v.write_u64(vmcb::RIP, loaded.image.entry);
        v.write_u64(vmcb::RSP, 0);
        self.world.gprs.rdi = loaded.boot_info;
        Ok(loaded)
    }

    /// Enters the host agent and serves its exits until it ends the run: SEAMCALL (a TD's
    /// VP.ENTER runs the TD world and returns its exit), accesses outside its map (#MC), MSRs
    /// (none is the host's), the ports the TSM keeps (`ports`), VMMCALL (a bare exit: the
    /// floor the agent measures). Never returns: the run ends through `isa-debug-exit` once
    /// the TSM said its last word, or with a failure when the world dies.
    pub fn run(mut self, tsm: &mut Tsm<FirmwarePlatform>, demo: bool) -> ! {
        loop {
            if tsm.platform().host_map_broken {
                crate::run::fail("host world", &WorldError::OutOfTsmMemory);
            }
            if tsm.platform_mut().host_npt.as_mut().is_some_and(|n| core::mem::take(&mut n.flush)) {
                self.world.flush_tlb();
            }
            let exit = self.world.run();
            self.check_refused_writes();
            let served = match exit {
                Exit::Vmmcall => {
                    self.vmmcall(tsm);
                    Ok(Served::Continue)
                }
                other => self.serve(tsm, other),
            };
            match served {
                Ok(Served::Continue) => {}
                Ok(Served::End(code)) => self.end(tsm, code, demo),
                Err(e) => crate::run::fail("host world", &e),
            }
        }
    }

    /// The TSM's last word when the host ends the run: the world switches (the figure
    /// `world_switches`, or `world_switches_demo` for the demo's mode), the refusals.
    fn end(&mut self, tsm: &Tsm<FirmwarePlatform>, code: u32, demo: bool) -> ! {
        self.close_phase(tsm);
        let td = tsm.platform().td.as_ref().map_or(0, |w| w.switches);
        say!(
            "world: the host world ended the run: {} host-world exits, {td} TD-world exits; {} accesses refused, {} refused writes checked: bytes unchanged",
            self.world.exits,
            tsm.host_faults().total,
            self.writes_unchanged
        );
        let name = if demo { "world_switches_demo" } else { "world_switches" };
        crate::run::figure(name, &(self.world.exits + td), "exits");
        crate::arch::exit_qemu(crate::arch::ExitCode::from_raw(code))
    }

    /// VMMCALL, the host world's one call to the TSM that is not the ABI (`phases`): RAX 0 is a
    /// bare exit, nothing done (the floor the agent measures); RAX [`phases::MARK`] marks the
    /// start of the agent's phase named in RCX:RDX (or, all zero, the end of the last), for
    /// which the TSM counts world switches. The registers stay as they are; RIP += 3.
    fn vmmcall(&mut self, tsm: &Tsm<FirmwarePlatform>) {
        if self.world.rax() == phases::MARK {
            let name = phases::decode(self.world.gprs.rcx, self.world.gprs.rdx);
            self.close_phase(tsm);
            if let Some(name) = name {
                let counts = tsm.platform().td.as_ref().map(|w| w.counts).unwrap_or_default();
                self.phase = Some((name, self.switches(tsm), counts));
            }
        }
        self.world.skip(3);
    }

    /// World switches so far: `(host world, TD worlds)`.
    fn switches(&self, tsm: &Tsm<FirmwarePlatform>) -> (u64, u64) {
        (self.world.exits, tsm.platform().td.as_ref().map_or(0, |w| w.switches))
    }

    /// Ends the open phase, if any: its world switches on COM1 and as the figure
    /// `switches_NAME`. The TSM keeps the counts to itself until then: how often a TD exits to
    /// the TSM is none of the host's business while it runs.
    fn close_phase(&mut self, tsm: &Tsm<FirmwarePlatform>) {
        let Some((name, (host0, td0), counts0)) = self.phase.take() else { return };
        let (host, td) = self.switches(tsm);
        let (host, td) = (host.saturating_sub(host0), td.saturating_sub(td0));
        let name = name.as_str();
        say!("world: phase {name}: {} world switches ({host} of the host world, {td} of TD worlds)", host + td);
        if name == phases::OVMF_TD {
            Self::td_exits_by_kind(tsm, td, &counts0);
        }
        let mut figure = [0u8; 32];
        let mut w = seamless_drivers::console::BufWriter::new(&mut figure);
        if core::fmt::Write::write_fmt(&mut w, format_args!("switches_{name}")).is_ok() {
            let len = w.len();
            crate::run::figure(core::str::from_utf8(&figure[..len]).unwrap_or("switches"), &(host + td), "exits");
        }
    }

    /// The TD worlds' exits by kind over the TDVF TD's phase (mode `ovmf`; `td` its TD-world
    /// switches, `before` the counts at its start), on COM1 and as figures: each kind of exit
    /// (`ovmf_td_exit_*`, which add up to `ovmf_td_world_switches`), the TDCALLs by leaf
    /// (`ovmf_td_tdcall_*`), and the #VEs.
    fn td_exits_by_kind(tsm: &Tsm<FirmwarePlatform>, td: u64, before: &TdCounts) {
        let Some(w) = tsm.platform().td.as_ref() else { return };
        let k = w.counts.since(before);
        let l = &k.tdcall_leaf;
        say!(
            "world: TD exits: {} by cause: {} nested page faults, {} TDCALLs ({} VP.VMCALL, {} VP.INFO, {} VP.VEINFO.GET, {} MEM.PAGE.ACCEPT, {} MR.RTMR.EXTEND, {} other), {} CPUID ({} answered by the TSM), {} MSR ({} in the TSM), {} I/O, {} HLT, {} preemption timer, {} other; #VEs: {} CPUID, {} HLT, {} I/O, {} MSR, {} EPT; {} interrupts injected ({} deferred to a later exit), {} events re-delivered, {} table resets (since boot)",
            k.exits(),
            k.npf,
            k.tdcall,
            l[0],
            l[1],
            l[2],
            l[3],
            l[4],
            l[5],
            k.cpuid,
            k.cpuid_in_tsm,
            k.msr,
            k.msr_in_tsm,
            k.io,
            k.hlt,
            k.preempted,
            k.other,
            k.ve[0],
            k.ve[1],
            k.ve[2],
            k.ve[3],
            k.ve[4],
            k.interrupts,
            k.deferred,
            k.redelivered,
            w.resets
        );
        crate::run::figure("ovmf_td_world_switches", &td, "exits");
        let exits = [
            ("npf", k.npf),
            ("tdcall", k.tdcall),
            ("cpuid", k.cpuid),
            ("msr", k.msr),
            ("io", k.io),
            ("hlt", k.hlt),
            ("preempted", k.preempted),
            ("other", k.other),
        ];
        for (kind, n) in exits {
            Self::figure_named(format_args!("ovmf_td_exit_{kind}"), n, "exits");
        }
        let leaves = TDCALL_LEAVES.iter().map(|&(_, name)| name).chain(core::iter::once("other"));
        for (name, n) in leaves.zip(l) {
            Self::figure_named(format_args!("ovmf_td_tdcall_{name}"), *n, "calls");
        }
        crate::run::figure("ovmf_td_ves", &k.ve.iter().sum::<u64>(), "ves");
    }

    /// A figure whose name is formatted (at most 32 bytes).
    fn figure_named(name: core::fmt::Arguments<'_>, value: u64, unit: &str) {
        let mut buf = [0u8; 32];
        let mut w = seamless_drivers::console::BufWriter::new(&mut buf);
        if core::fmt::Write::write_fmt(&mut w, name).is_ok() {
            let len = w.len();
            crate::run::figure(core::str::from_utf8(&buf[..len]).unwrap_or("figure"), &value, unit);
        }
    }

    /// One exit of the host world, served: `Continue`, the end of the run, or why the world
    /// cannot go on.
    fn serve(&mut self, tsm: &mut Tsm<FirmwarePlatform>, exit: Exit) -> Result<Served, WorldError> {
        match exit {
            Exit::Exception { vector: VECTOR_UD, .. } => {
                if self.fetch4(tsm) == Some(SEAMCALL) {
                    self.seamcall(tsm);
                } else {
                    self.world.inject_exception(VECTOR_UD);
                }
            }
            Exit::NestedPageFault { gpa, error } => self.refuse_access(tsm, gpa, error),
            Exit::Msr { write } => self.msr(tsm, write),
            Exit::Xsetbv => self.xsetbv(tsm),
            Exit::Io { info1, next_rip } => {
                let served = self.port(tsm, info1);
                self.world.vmcb().write_u64(vmcb::RIP, next_rip);
                return Ok(served);
            }
            Exit::SvmInstruction => self.world.inject_exception(VECTOR_UD),
            Exit::Invalid => return Err(WorldError::InvalidVmcb),
            other => {
                let code = match other {
                    Exit::Exception { vector, .. } => svm::exit::EXCEPTION_BASE + u64::from(vector),
                    Exit::Shutdown => svm::exit::SHUTDOWN,
                    Exit::Hlt => svm::exit::HLT,
                    Exit::Other(c) => c,
                    _ => 0,
                };
                return Err(WorldError::Died { code, info1: self.world.read(vmcb::EXIT_INFO1), rip: self.world.rip() });
            }
        }
        Ok(Served::Continue)
    }

    /// RDMSR or WRMSR: no MSR is the host world's (its MSR permission map intercepts all):
    /// reads see 0, writes are dropped and logged. The MSRs the TSM rests on are checked after
    /// each write: a changed one would stop the run.
    fn msr(&mut self, tsm: &mut Tsm<FirmwarePlatform>, write: bool) {
        if write {
            let msr = self.world.gprs.rcx as u32;
            let value = (self.world.gprs.rdx << 32) | (self.world.rax() & 0xFFFF_FFFF);
            let rip = self.world.rip();
            tsm.record_host_msr(msr, value, rip);
            defmt::info!("host world: WRMSR {=u32:#x} <- {=u64:#x} at RIP {=u64:#x} refused", msr, value, rip);
            if !svm::host_msrs_intact() {
                crate::run::fail("host world isolation", &format_args!("MSR {msr:#x} changed behind the TSM"));
            }
        } else {
            self.world.set_rax(0);
            self.world.gprs.rdx = 0;
        }
        self.world.skip(2);
    }

    /// XSETBV: XCR0 within x87 and SSE is carried out (`arch::world_xsetbv`); anything more
    /// (AVX's upper halves and beyond, which no world's switch saves) is dropped and logged
    /// (fault class 0xF5), XCR0 unchanged. RIP moves past the 3 bytes either way.
    fn xsetbv(&mut self, tsm: &mut Tsm<FirmwarePlatform>) {
        let xcr = self.world.gprs.rcx as u32;
        let value = (self.world.gprs.rdx << 32) | (self.world.rax() & 0xFFFF_FFFF);
        if !crate::arch::world_xsetbv(xcr, value) {
            let rip = self.world.rip();
            tsm.record_host_xcr(xcr, value, rip);
            defmt::info!("host world: XSETBV XCR{=u32} <- {=u64:#x} at RIP {=u64:#x} refused", xcr, value, rip);
        }
        self.world.skip(3);
    }

    /// An access outside the host's map: nothing was read or written. Recorded in the TSM's
    /// fault log; #MC at the faulting instruction. A refused write's target bytes are kept to
    /// be compared at the world's next exit.
    fn refuse_access(&mut self, tsm: &mut Tsm<FirmwarePlatform>, gpa: u64, error: u64) {
        let rip = self.world.rip();
        let write = error & 2 != 0;
        let fault = tsm.record_host_fault(HostPhysAddr::new(gpa).unwrap_or_default(), write, rip);
        defmt::info!("host world: access to {=u64:#x} ({=str}) at RIP {=u64:#x} refused: #MC", gpa, fault.what(), rip);
        if write && self.refused_pending < self.refused_writes.len() {
            let at = gpa & !15;
            self.refused_writes[self.refused_pending] = (at, self.protected_bytes(at));
            self.refused_pending += 1;
        }
        self.world.inject_exception(VECTOR_MC);
    }

    /// 16 bytes at `addr` as the TSM sees them: RAM through the direct map, its own image
    /// directly; anything else (device registers, which a read could disturb) as nothing.
    fn protected_bytes(&self, addr: u64) -> [u8; 16] {
        let mut b = [0u8; 16];
        if self.frames.contains(addr, 16) {
            self.frames.read(addr, &mut b);
        } else {
            crate::arch::read_image(addr, &mut b);
        }
        b
    }

    /// Compares the bytes of the writes refused before this exit: only the host world ran
    /// since, so they must be as they were. A difference stops the run.
    fn check_refused_writes(&mut self) {
        for i in 0..core::mem::take(&mut self.refused_pending) {
            let (at, before) = self.refused_writes[i];
            if self.protected_bytes(at) != before {
                crate::run::fail("host world isolation", &format_args!("a refused write changed {at:#x}"));
            }
            self.writes_unchanged += 1;
        }
    }

    /// An intercepted IN or OUT (`ioports::INTERCEPTED`), carried out as `ioports::decide`
    /// says: fw_cfg selections passed on unless they name the secret, data reads passed on,
    /// refusals logged, the end of the run.
    fn port(&mut self, tsm: &mut Tsm<FirmwarePlatform>, info1: u64) -> Served {
        use crate::ioports::{decide, Decision, Io, FW_CFG_INVALID};
        let io = Io::decode(info1, self.world.rax());
        let config_address = if io.port >= crate::ioports::PCI_CONFIG_ADDRESS && !io.input {
            crate::arch::pci_config_address()
        } else {
            0
        };
        let answer = match decide(&io, &self.ports, config_address) {
            Decision::PassOn => Some(crate::arch::pass_on(&io)),
            Decision::Select(key) => {
                if let Some(fw) = &self.fw {
                    fw.select_item(key);
                }
                None
            }
            Decision::ReadData => Some(self.fw.as_ref().map_or(0xFF, |fw| u64::from(fw.read_byte()))),
            Decision::AllOnes => Some(u64::MAX),
            Decision::Refuse(why) => {
                let rip = self.world.rip();
                tsm.record_host_port(io.port, io.value, rip);
                defmt::info!(
                    "host world: OUT {=u64:#x} to port {=u16:#x} ({=str}) at RIP {=u64:#x} refused",
                    io.value,
                    io.port,
                    why.name(),
                    rip
                );
                if why == crate::ioports::Refusal::FwCfgSecret {
                    if let Some(fw) = &self.fw {
                        fw.select_item(FW_CFG_INVALID);
                    }
                }
                None
            }
            Decision::End(code) => return Served::End(code),
            Decision::Ignore => None,
        };
        if let Some(value) = answer.filter(|_| io.input) {
            let rax = (self.world.rax() & !io.mask()) | (value & io.mask());
            self.world.set_rax(rax);
        }
        Served::Continue
    }

    /// SEAMCALL: the ABI's input registers from the world, `Tsm::host_call` (and for a
    /// successful TDH.VP.ENTER, the TD world until its exit), and exactly the ABI's output
    /// registers back (RAX status, RCX, RDX, R8..R13, and R14/R15 for TDH.VP.ENTER, the one leaf
    /// that returns them: GHCI's operands); the others keep the host's values. RIP moves past
    /// the 4 bytes.
    fn seamcall(&mut self, tsm: &mut Tsm<FirmwarePlatform>) {
        let regs = self.world.abi_regs();
        let mut out = tsm.host_call(&regs);
        // TDH.VP.ENTER of a TD that runs in a TD world returns at its next exit to the host,
        // with TDX's exit registers (`TdExit::host_regs`).
        if regs.rax == tsm::abi::host::leaf::VP_ENTER && out.rax == 0 {
            if let Some(exit) = super::td::enter(tsm, regs.rcx, &regs) {
                out = exit;
            }
        }
        let g = &mut self.world.gprs;
        (g.rcx, g.rdx, g.r8, g.r9, g.r10, g.r11, g.r12, g.r13) =
            (out.rcx, out.rdx, out.r8, out.r9, out.r10, out.r11, out.r12, out.r13);
        if regs.rax == tsm::abi::host::leaf::VP_ENTER {
            (g.r14, g.r15) = (out.r14, out.r15);
        }
        self.world.set_rax(out.rax);
        self.world.skip(4);
    }

    /// The 4 bytes at the world's RIP, read through its own page tables and only from frames its
    /// nested map grants (a table or code page it does not own reads as nothing).
    fn fetch4(&self, tsm: &Tsm<FirmwarePlatform>) -> Option<[u8; 4]> {
        let npt = tsm.platform().host_npt.as_ref()?;
        let rip = self.world.rip();
        let mut out = [0u8; 4];
        // One walk unless the 4 bytes cross into the next page.
        let split = (4 - (rip & (PAGE - 1)).saturating_sub(PAGE - 4) as usize).min(4);
        let (head, tail) = out.split_at_mut(split);
        self.frames.read(self.translate(npt, rip)?, head);
        if !tail.is_empty() {
            self.frames.read(self.translate(npt, rip.wrapping_add(split as u64))?, tail);
        }
        Some(out)
    }

    /// The guest-physical address of `linear` by a 4-level walk of the world's CR3, each table
    /// read only if the host's map grants it.
    fn translate(&self, npt: &Npt, linear: u64) -> Option<u64> {
        let mut table = self.world.cr3() & 0x000F_FFFF_FFFF_F000;
        for (shift, large_ok) in [(39u32, false), (30, true), (21, true), (12, false)] {
            let at = table + ((linear >> shift) & 511) * 8;
            if !npt.maps(at) || !self.frames.contains(at, 8) {
                return None;
            }
            let e = self.frames.read_u64(at);
            if e & 1 == 0 {
                return None;
            }
            let base = e & 0x000F_FFFF_FFFF_F000;
            if shift == 12 || (large_ok && e & 0x80 != 0) {
                let mask = (1u64 << shift) - 1;
                let pa = (base & !mask) | (linear & mask);
                return (npt.maps(pa) && self.frames.contains(pa, 1)).then_some(pa);
            }
            table = base;
        }
        None
    }
}
