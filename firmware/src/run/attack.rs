//! Mode `attack`: the malicious host against the real firmware. The host agent walks the device
//! assignment flow, and at each stage tries what a hostile VMM would (cases drawn from
//! `tests/harness/tests/assign_attacks.rs` and the memory specs): each must be refused with its
//! exact status and change nothing (a SHA-384 over the TSM's device and TD summaries and the
//! PAMT entry of every page the host handed out, before and after). Then the flow completes and
//! tears down with every page reclaimed, which shows the refused calls left nothing behind.

use core::fmt::Write;

use sha2::{Digest, Sha384};
use tsm::abi::guest::leaf as g;
use tsm::abi::host::leaf as h;
use tsm::addr::Pfn;
use tsm::{Operand, Regs, Status, Tsm};

use super::{fail, spdm_connect, Nvme};
use crate::arch::{self, ExitCode};
use crate::drivers::phys::Frames;
use crate::drivers::tsc::Tsc;
use crate::guest::{image, Guest, GuestError, GuestLayout, GuestMemory, Shared};
use crate::host::assign::{DevicePages, TdPages, BAR_GPA, LOCK_FLAGS, WORK_GPA, WORK_PAGES};
use crate::host::{Host, PumpStats};
use crate::platform::FirmwarePlatform;
use tsm::sept::SeptState;

const PAGE: u64 = 4096;

struct HashWriter(Sha384);

impl Write for HashWriter {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        self.0.update(s.as_bytes());
        Ok(())
    }
}

/// The cases run so far.
struct Cases {
    tdrs: [u64; 2],
    /// The TDMR pages the host has handed out (refreshed after each allocation).
    used: (u64, u64),
    total: u32,
    rejected: u32,
}

fn pfn(pa: u64) -> Pfn {
    Pfn::new(pa >> 12).unwrap_or(Pfn::ZERO)
}

impl Cases {
    /// What a refused call must leave as it was.
    fn snapshot(&self, tsm: &mut Tsm<FirmwarePlatform>) -> [u8; 48] {
        let mut w = HashWriter(Sha384::new());
        let _ = write!(w, "{:?}", tsm.device_summaries());
        for tdr in self.tdrs {
            let _ = write!(w, "{:?}", tsm.td_summary(pfn(tdr)));
        }
        let (start, end) = self.used;
        let mut p = start;
        while p < end {
            let md = tsm.host_call(&Regs::call(h::PHYMEM_PAGE_RDMD, p, 0, 0, 0));
            let _ = write!(w, "{:x}{:x}{:x}{:x}", md.rcx, md.rdx, md.r8, md.r9);
            p += PAGE;
        }
        w.0.finalize().into()
    }

    fn judge(&mut self, name: &str, want: Status, got: Status, changed: bool, exited: bool) {
        self.total += 1;
        // A status without an operand names only the check (the ABI doc's value); one with an
        // operand must match exactly.
        let same = if want.operand_id() == 0 { got.code() == want } else { got == want };
        let ok = same && !changed && !exited;
        if ok {
            self.rejected += 1;
        }
        say!(
            "attack {:2} {name}: {} {}{}{}",
            self.total,
            if ok { "rejected with" } else { "NOT AS EXPECTED: got" },
            got.name().unwrap_or("?"),
            if same { "" } else { " (wanted another status)" },
            if changed {
                "; the machine changed"
            } else if exited {
                "; the TD exited"
            } else {
                ""
            }
        );
        if !ok {
            defmt::error!("attack {=str}: status {=u64:#x}, wanted {=u64:#x}", name, got.0, want.0);
        }
    }

    /// A guest access that its S-EPT accessor must refuse, finding the leaf in `state`.
    fn accessor(&mut self, name: &str, got: Result<(), GuestError>, state: SeptState) {
        self.total += 1;
        let ok = matches!(got, Err(GuestError::NotMapped { state: found, .. }) if found == state as u8);
        if ok {
            self.rejected += 1;
        }
        match got {
            Err(e) if ok => say!("attack {:2} {name}: refused by the guest's accessor: {e}", self.total),
            Err(e) => say!("attack {:2} {name}: NOT AS EXPECTED: {e}", self.total),
            Ok(()) => say!("attack {:2} {name}: NOT AS EXPECTED: the access went through", self.total),
        }
    }

    /// A host call that must fail with exactly `want` and change nothing.
    fn host(&mut self, tsm: &mut Tsm<FirmwarePlatform>, name: &str, want: Status, regs: Regs) {
        let before = self.snapshot(tsm);
        let r = tsm.host_call(&regs);
        let changed = self.snapshot(tsm) != before;
        self.judge(name, want, r.status(), changed, false);
    }

    /// A guest call from `vcpu` that must fail with exactly `want`, change nothing and not exit.
    fn guest(&mut self, tsm: &mut Tsm<FirmwarePlatform>, name: &str, vcpu: u64, want: Status, regs: Regs) {
        let before = self.snapshot(tsm);
        let r = tsm.guest_call(vcpu, &regs);
        let changed = self.snapshot(tsm) != before;
        self.judge(name, want, r.regs.status(), changed, r.exit.is_some());
    }
}

fn op(s: Status, o: Operand) -> Status {
    s.with_operand(o)
}

/// The attack run; never returns.
#[allow(clippy::too_many_lines)]
pub fn run(tsc: &Tsc, tsm: &mut Tsm<FirmwarePlatform>, host: &mut Host, nvme: Nvme, private_pa: u64) -> ! {
    let Nvme { bdf, bar0, regs, mut mailbox } = nvme;
    let function = u32::from(bdf.rid());
    let fn_id = u64::from(function);
    let bar = bar0.base;
    let bar_pages = bar0.size / PAGE;
    let frames: Frames = host.frames();
    let mut stats = PumpStats::default();

    let td = host.build_td(tsm, &image::IMAGE).unwrap_or_else(|e| fail("TD build", &e));
    let other: TdPages = host.build_td(tsm, &image::IMAGE).unwrap_or_else(|e| fail("second TD build", &e));
    let shared_page = host.scratch().unwrap_or_else(|e| fail("shared page", &e));
    let layout = GuestLayout { work: WORK_GPA, work_pages: WORK_PAGES, bar_gpa: BAR_GPA };
    let mem = GuestMemory::new(td.tdr, frames, Some((&regs, bar, bar0.size)));
    let mut guest = Guest::new(td.vcpu, function, layout, mem, Shared::new(frames, shared_page));
    guest.accept_memory(tsm).unwrap_or_else(|e| fail("guest: accept", &e));
    let other_mem = GuestMemory::new(other.tdr, frames, None);
    let other_guest = Guest::new(other.vcpu, function, layout, other_mem, Shared::new(frames, shared_page));
    other_guest.accept_memory(tsm).unwrap_or_else(|e| fail("other guest: accept", &e));
    host.iommu_setup(tsm).unwrap_or_else(|e| fail("IOMMU.SETUP", &e));
    let (pdev, msg, _) = spdm_connect(tsc, tsm, host, bdf, &mut mailbox);
    let mut d = DevicePages { pdev, msg, ..DevicePages::default() };
    host.ide_setup(tsm, &mut mailbox, tsc, &mut d, &mut stats).unwrap_or_else(|e| fail("IDE setup", &e));
    let spare = host.tdmr_page().unwrap_or_else(|e| fail("pages", &e));
    let src = host.scratch().unwrap_or_else(|e| fail("pages", &e));
    say!("attack: two TDs, the device connected with a live IDE stream; the malicious host begins");

    for i in 0..bar_pages {
        for tdr in [td.tdr, other.tdr] {
            host.map_tables(tsm, tdr, BAR_GPA + i * PAGE).unwrap_or_else(|e| fail("S-EPT tables", &e));
        }
    }
    let fresh = host.tdmr_page().unwrap_or_else(|e| fail("pages", &e));
    let fresh2 = host.tdmr_page().unwrap_or_else(|e| fail("pages", &e));
    let mut c = Cases { tdrs: [td.tdr, other.tdr], used: host.tdmr_used(), total: 0, rejected: 0 };
    // ---- PDEV and the message protocol.
    c.host(
        tsm,
        "SPDM.CREATE on a TD's page",
        op(Status::PAGE_NOT_FREE, Operand::Rcx),
        Regs::call(h::SPDM_CREATE, td.tdr, 0x20, 0, 0),
    );
    c.host(
        tsm,
        "SPDM.CREATE for a function with a PDEV",
        op(Status::FUNCTION_IN_USE, Operand::Rdx),
        Regs::call(h::SPDM_CREATE, spare, fn_id, 0, 0),
    );
    c.host(
        tsm,
        "an answer with no request outstanding",
        op(Status::NO_REQUEST_OUTSTANDING, Operand::R8),
        Regs::call(h::SPDM_DISCONNECT, pdev, msg, 64, 0),
    );
    c.host(
        tsm,
        "a message page inside a TD",
        op(Status::PAGE_METADATA_INCORRECT, Operand::Rdx),
        Regs::call(h::SPDM_DISCONNECT, pdev, td.tdr, 0, 0),
    );
    c.host(
        tsm,
        "a message page in the TSM's memory",
        op(Status::OPERAND_ADDR_RANGE_ERROR, Operand::Rdx),
        Regs::call(h::SPDM_DISCONNECT, pdev, private_pa, 0, 0),
    );
    c.host(
        tsm,
        "an answer longer than the page",
        op(Status::OPERAND_INVALID, Operand::R8),
        Regs::call(h::SPDM_DISCONNECT, pdev, msg, 4097, 0),
    );
    c.host(
        tsm,
        "SPDM.CONNECT of a connected PDEV",
        op(Status::PDEV_STATE_INCORRECT, Operand::Pdev),
        Regs::call(h::SPDM_CONNECT, pdev, msg, 0, 0),
    );

    // ---- TDI bound, not locked.
    let tdi_page = spare;
    let r = tsm.host_call(&Regs::call(h::TDI_CREATE, td.tdr, pdev, tdi_page, fn_id));
    if r.status() != Status::SUCCESS {
        fail("TDI.CREATE", &format_args!("{:?}", r.status().name()));
    }
    d.tdi = tdi_page;
    c.host(
        tsm,
        "TDI.CREATE of a bound function for another TD",
        op(Status::FUNCTION_IN_USE, Operand::R9),
        Regs::call(h::TDI_CREATE, other.tdr, pdev, fresh, fn_id),
    );
    c.host(
        tsm,
        "TDI.LOCK with an unknown flag",
        op(Status::OPERAND_INVALID, Operand::R9),
        Regs::call(h::TDI_LOCK, tdi_page, msg, 0, 0x8 | d.stream << 16),
    );
    c.host(
        tsm,
        "DMABUF.IMPORT before the lock",
        op(Status::TDI_STATE_INCORRECT, Operand::Tdi),
        Regs::call(h::DMABUF_IMPORT, tdi_page, bar, bar_pages, 0),
    );
    c.host(
        tsm,
        "MMIO.MAP before the lock",
        op(Status::MMIO_NOT_IN_REPORT, Operand::R8),
        Regs::call(h::MMIO_MAP, BAR_GPA, td.tdr, bar, 0),
    );

    // ---- Locked.
    let r = host.pump(
        tsm,
        &mut mailbox,
        tsc,
        ("TDH.TDI.LOCK", h::TDI_LOCK, tdi_page, LOCK_FLAGS | d.stream << 16),
        msg,
        &mut stats,
    );
    let r = r.unwrap_or_else(|e| fail("TDI.LOCK", &e));
    d.generation = r.rcx;
    d.report_len = (r.r8 as usize).min(tsm::pdev::MSG_BYTES);
    let step = guest.read_tdi(tsm).unwrap_or_else(|e| fail("guest: TDI read", &e));
    let mut report = [0u8; crate::guest::REPORTS_BYTES];
    host.serve_vmcall(tsm, &td, step, &Shared::new(frames, shared_page), &d, &[0; 64], &mut report)
        .unwrap_or_else(|e| fail("host: VMCALL", &e));
    guest.check_report().unwrap_or_else(|e| fail("guest: report check", &e));
    c.host(
        tsm,
        "DMABUF.IMPORT of a frame outside the report",
        op(Status::MMIO_NOT_IN_REPORT, Operand::Rdx),
        Regs::call(h::DMABUF_IMPORT, tdi_page, bar + PAGE, bar_pages, 0),
    );
    c.host(
        tsm,
        "DMABUF.IMPORT of too few pages",
        op(Status::MMIO_NOT_IN_REPORT, Operand::Rdx),
        Regs::call(h::DMABUF_IMPORT, tdi_page, bar, bar_pages - 1, 0),
    );
    c.host(
        tsm,
        "DMABUF.IMPORT of another range index",
        op(Status::MMIO_NOT_IN_REPORT, Operand::R9),
        Regs::call(h::DMABUF_IMPORT, tdi_page, bar, bar_pages, 3),
    );
    c.host(
        tsm,
        "DMABUF.IMPORT at an unaligned address",
        op(Status::OPERAND_INVALID, Operand::Rdx),
        Regs::call(h::DMABUF_IMPORT, tdi_page, bar + 8, bar_pages, 0),
    );
    c.host(
        tsm,
        "TDI.START without the guest's authorisation",
        op(Status::TDI_NOT_AUTHORISED, Operand::Tdi),
        Regs::call(h::TDI_START, tdi_page, msg, 0, 0),
    );
    c.host(
        tsm,
        "TDI.REMOVE of a locked TDI",
        op(Status::TDI_STATE_INCORRECT, Operand::Tdi),
        Regs::call(h::TDI_REMOVE, tdi_page, 0, 0, 0),
    );
    if tsm.host_call(&Regs::call(h::DMABUF_IMPORT, tdi_page, bar, bar_pages, 0)).status() != Status::SUCCESS {
        fail("DMABUF.IMPORT", &"refused");
    }
    c.host(
        tsm,
        "DMABUF.IMPORT of the same frames again",
        op(Status::PAGE_NOT_FREE, Operand::Rdx),
        Regs::call(h::DMABUF_IMPORT, tdi_page, bar, bar_pages, 0),
    );
    c.host(
        tsm,
        "MMIO.MAP into a TD the TDI is not bound to",
        op(Status::MMIO_OWNER_MISMATCH, Operand::R8),
        Regs::call(h::MMIO_MAP, BAR_GPA, other.tdr, bar, 0),
    );
    c.host(
        tsm,
        "MMIO.MAP of a frame past the range",
        op(Status::MMIO_NOT_IN_REPORT, Operand::R8),
        Regs::call(h::MMIO_MAP, BAR_GPA, td.tdr, bar + bar_pages * PAGE, 0),
    );
    c.host(
        tsm,
        "MMIO.MAP of an unaligned frame",
        op(Status::OPERAND_INVALID, Operand::R8),
        Regs::call(h::MMIO_MAP, BAR_GPA, td.tdr, bar + 1, 0),
    );
    c.host(
        tsm,
        "MMIO.MAP beyond the TD's address width",
        op(Status::OPERAND_INVALID, Operand::Rcx),
        Regs::call(h::MMIO_MAP, 1 << 47, td.tdr, bar, 0),
    );
    if tsm.host_call(&Regs::call(h::MMIO_MAP, BAR_GPA, td.tdr, bar, 0)).status() != Status::SUCCESS {
        fail("MMIO.MAP", &"page 0 refused");
    }
    c.host(
        tsm,
        "MMIO.MAP of page 1 out of order",
        op(Status::MMIO_GPA_MISMATCH, Operand::Rcx),
        Regs::call(h::MMIO_MAP, BAR_GPA + 2 * PAGE, td.tdr, bar + PAGE, 0),
    );
    c.host(
        tsm,
        "MMIO.MAP of page 0 again at another GPA",
        op(Status::MMIO_GPA_MISMATCH, Operand::Rcx),
        Regs::call(h::MMIO_MAP, BAR_GPA + PAGE, td.tdr, bar, 0),
    );
    for i in 1..bar_pages {
        if tsm.host_call(&Regs::call(h::MMIO_MAP, BAR_GPA + i * PAGE, td.tdr, bar + i * PAGE, 0)).status()
            != Status::SUCCESS
        {
            fail("MMIO.MAP", &"refused");
        }
    }

    // ---- The guest's accept, and memory leaves against MMIO entries.
    let accept = |range: u64, function: u64, offset: u64, gpa: u64| Regs {
        r9: offset,
        ..Regs::call(g::MMIO_ACCEPT, gpa, range, function, 0)
    };
    c.guest(
        tsm,
        "guest: MMIO.ACCEPT where the report puts another page",
        td.vcpu,
        op(Status::MMIO_INVALID_HPA_OFFSET, Operand::R9),
        accept(0, fn_id, PAGE, BAR_GPA),
    );
    c.guest(
        tsm,
        "guest: MMIO.ACCEPT of a range the report lacks",
        td.vcpu,
        op(Status::MMIO_OUT_OF_RANGE, Operand::Rdx),
        accept(3, fn_id, 0, BAR_GPA),
    );
    c.guest(
        tsm,
        "guest: MMIO.ACCEPT for a function it has no TDI of",
        td.vcpu,
        op(Status::TDI_NOT_PRESENT, Operand::R8),
        accept(0, fn_id + 1, 0, BAR_GPA),
    );
    c.guest(
        tsm,
        "the other TD: MMIO.ACCEPT of the TDI",
        other.vcpu,
        op(Status::TDI_NOT_PRESENT, Operand::R8),
        accept(0, fn_id, 0, BAR_GPA),
    );
    c.guest(
        tsm,
        "guest: MMIO.ACCEPT of private memory",
        td.vcpu,
        op(Status::EPT_ENTRY_STATE_INCORRECT, Operand::Rcx),
        accept(0, fn_id, 0, WORK_GPA),
    );
    c.host(
        tsm,
        "MEM.RANGE.BLOCK of an MMIO entry",
        op(Status::EPT_ENTRY_STATE_INCORRECT, Operand::Rcx),
        Regs::call(h::MEM_RANGE_BLOCK, BAR_GPA, td.tdr, 0, 0),
    );
    c.host(
        tsm,
        "MEM.PAGE.REMOVE of an MMIO entry",
        op(Status::EPT_ENTRY_STATE_INCORRECT, Operand::Rcx),
        Regs::call(h::MEM_PAGE_REMOVE, BAR_GPA, td.tdr, 0, 0),
    );
    c.host(
        tsm,
        "MMIO.BLOCK of private memory",
        op(Status::EPT_ENTRY_STATE_INCORRECT, Operand::Rcx),
        Regs::call(h::MMIO_BLOCK, WORK_GPA, td.tdr, 0, 0),
    );
    // ---- Memory: the measured, finalized TD.
    frames.write(src, &[0x90; 4096]);
    c.host(
        tsm,
        "MEM.PAGE.ADD after MR.FINALIZE",
        Status::TD_FINALIZED,
        Regs::call(h::MEM_PAGE_ADD, 0x5000, td.tdr, fresh, src),
    );
    c.host(tsm, "MR.EXTEND after MR.FINALIZE", Status::TD_FINALIZED, Regs::call(h::MR_EXTEND, 0, td.tdr, 0, 0));
    c.host(
        tsm,
        "MEM.PAGE.AUG of a page the TD owns",
        op(Status::PAGE_NOT_FREE, Operand::R8),
        Regs::call(h::MEM_PAGE_AUG, 0x5000, td.tdr, td.vcpu, 0),
    );
    c.host(
        tsm,
        "MEM.PAGE.AUG over a mapped page",
        Status::EPT_ENTRY_NOT_FREE.with_operand(Operand::Rcx),
        Regs::call(h::MEM_PAGE_AUG, WORK_GPA, td.tdr, fresh2, 0),
    );
    c.host(
        tsm,
        "MEM.PAGE.REMOVE of a page not blocked",
        Status::GPA_RANGE_NOT_BLOCKED.with_operand(Operand::Rcx),
        Regs::call(h::MEM_PAGE_REMOVE, WORK_GPA, td.tdr, 0, 0),
    );
    c.host(
        tsm,
        "PHYMEM.PAGE.RECLAIM of a live TD's page",
        Status::LIFECYCLE_STATE_INCORRECT,
        Regs::call(h::PHYMEM_PAGE_RECLAIM, td.vcpu, 0, 0, 0),
    );
    c.guest(
        tsm,
        "guest: TDG.TDI.RD digest into MMIO",
        td.vcpu,
        op(Status::EPT_ENTRY_STATE_INCORRECT, Operand::R8),
        Regs::call(g::TDI_RD, fn_id, 2, BAR_GPA, 0),
    );
    c.guest(
        tsm,
        "guest: TDG.TDI.RD evidence digests across the end of a page",
        td.vcpu,
        op(Status::BUFFER_CROSSES_PAGE, Operand::R8),
        Regs::call(g::TDI_RD, fn_id, 3, WORK_GPA + 0xFC0, 0),
    );
    c.guest(
        tsm,
        "guest: MR.ATTEST output into MMIO",
        td.vcpu,
        op(Status::EPT_ENTRY_STATE_INCORRECT, Operand::Rcx),
        Regs::call(g::MR_ATTEST, BAR_GPA, WORK_GPA + PAGE, 0, 0),
    );

    // ---- The guest's own accessor: mapped by the host is not usable by the guest.
    let got = guest.read_register(tsm, BAR_GPA).map(|_| ());
    c.accessor("guest: a register read before MMIO.ACCEPT", got, SeptState::MmioPending);
    let got = guest.read_register(tsm, WORK_GPA).map(|_| ());
    c.accessor("guest: private memory read as a device register", got, SeptState::Mapped);
    let got = guest.read_private(tsm, BAR_GPA, &mut [0; 8]);
    c.accessor("guest: a device page read as private memory", got, SeptState::MmioPending);

    // ---- The guest accepts and authorises; what is still refused.
    guest.accept_mmio(tsm, bar_pages).unwrap_or_else(|e| fail("guest: MMIO.ACCEPT", &e));
    host.dmar_add(tsm, &td, &d).unwrap_or_else(|e| fail("DMAR.ADD", &e));
    c.used = host.tdmr_used();
    c.host(
        tsm,
        "DMAR.ADD a second entry",
        op(Status::DMAR_STATE_INCORRECT, Operand::Tdi),
        Regs::call(h::DMAR_ADD, td.tdr, tdi_page, 0, 0),
    );
    c.guest(
        tsm,
        "guest: START authorisation for a stale lock",
        td.vcpu,
        op(Status::TDI_AUTHORISATION_STALE, Operand::Tdi),
        Regs::call(g::TDI_START, fn_id, d.generation + 1, 0, 0),
    );
    guest.accept_dma_and_authorise(tsm).unwrap_or_else(|e| fail("guest: DMAR.ACCEPT / authorise", &e));
    let r = host.pump(tsm, &mut mailbox, tsc, ("TDH.TDI.START", h::TDI_START, tdi_page, 0), msg, &mut stats);
    r.unwrap_or_else(|e| fail("TDI.START", &e));
    c.host(
        tsm,
        "TDI.REMOVE of a running TDI",
        op(Status::TDI_STATE_INCORRECT, Operand::Tdi),
        Regs::call(h::TDI_REMOVE, tdi_page, 0, 0, 0),
    );
    c.host(
        tsm,
        "PHYMEM.PAGE.RECLAIM of the TDI's page",
        op(Status::PAGE_METADATA_INCORRECT, Operand::Rcx),
        Regs::call(h::PHYMEM_PAGE_RECLAIM, tdi_page, 0, 0, 0),
    );
    c.host(
        tsm,
        "MMIO.UNMAP of a running TDI's page",
        op(Status::GPA_RANGE_NOT_BLOCKED, Operand::Rcx),
        Regs::call(h::MMIO_UNMAP, BAR_GPA, td.tdr, 0, 0),
    );
    if tsm.host_call(&Regs::call(h::VP_KICK, td.vcpu, 0, 0, 0)).status() != Status::SUCCESS {
        fail("VP.KICK", &"refused");
    }
    c.host(
        tsm,
        "VPFLUSHDONE with a TDI bound",
        op(Status::TD_HAS_ATTACHED_DEVICES, Operand::Tdr),
        Regs::call(h::MNG_VPFLUSHDONE, td.tdr, 0, 0, 0),
    );
    let (total, rejected) = (c.total, c.rejected);

    // ---- Teardown: the refused calls left nothing behind.
    host.teardown(tsm, &mut mailbox, tsc, &td, &d, bar_pages, &mut stats).unwrap_or_else(|e| fail("teardown", &e));
    host.destroy_td(tsm, &other).unwrap_or_else(|e| fail("teardown of the other TD", &e));
    let pages = host.check_all_free(tsm).unwrap_or_else(|e| fail("teardown", &e));
    say!("attack: the flow still completed; teardown reclaimed all {pages} donated pages");
    say!("figure attack_cases_total {total} cases");
    say!("figure attack_cases_rejected {rejected} cases");
    say!("attack_cases_total {total}");
    say!("attack_cases_rejected {rejected}");
    if rejected != total {
        fail("attack", &format_args!("{} of {total} cases were not refused as expected", total - rejected));
    }
    say!("seamless firmware: attack done");
    arch::exit_qemu(ExitCode::Success)
}
