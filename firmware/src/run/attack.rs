//! Mode `attack`: the malicious host against the real firmware. The host agent walks the device
//! assignment flow, and at each stage tries what a hostile VMM would (cases drawn from
//! `tests/harness/tests/assign_attacks.rs` and the memory specs): each must be refused with its
//! exact status and change nothing (a SHA-384 over the TSM's device and TD summaries and the
//! PAMT entry of every page the host handed out, before and after). Then the flow completes and
//! tears down with every page reclaimed, which shows the refused calls left nothing behind.
//!
//! The cases are one table, [`STAGES`]: each stage names the step of the flow that brings the
//! machine to it, then its cases as (name, who calls, the registers, the status expected).

use core::fmt::Write;

use sha2::{Digest, Sha384};
use tsm::abi::guest::leaf as g;
use tsm::abi::host::leaf as h;
use tsm::addr::Pfn;
use tsm::sept::SeptState;
use tsm::{Operand, Regs, Status, Tsm};
use tsm_client::guest::{GuestMemory as _, Tdcall as _};
use tsm_client::host::device::{self, Assignment};
use tsm_client::host::td::{self, BuiltTd};
use tsm_client::host::td_device::{Answer, DeviceTd};
use tsm_client::host::unbind::{self, Holdings};
use tsm_client::host::{donate, scratch, HostMemory, PumpStats};
use tsm_client::GuestError;

use super::{fail, spdm_connect, td_params, Nvme, BAR_GPA, LOCK_FLAGS, WORK_GPA, WORK_PAGES};
use crate::arch::{self, ExitCode};
use crate::drivers::serial::Uart;
use crate::drivers::tsc::Tsc;
use crate::guest::{Guest, GuestMemory, TdVcpu};
use crate::host::{DoeLink, Host, HostCpu};
use crate::platform::FirmwarePlatform;

const PAGE: u64 = 4096;

/// What the cases' registers are made of: the objects of the flow, as far as it got.
#[derive(Clone, Copy, Debug)]
struct Ctx {
    /// The TD the device is assigned to, and its vCPU.
    td: (u64, u64),
    /// A second TD, and its vCPU.
    other: (u64, u64),
    fn_id: u64,
    bar: u64,
    bar_pages: u64,
    pdev: u64,
    msg: u64,
    tdi: u64,
    stream: u64,
    generation: u64,
    /// Fresh TDMR pages the host never donated.
    fresh: [u64; 2],
    /// A host page holding a page of content.
    src: u64,
    /// An address in the TSM's own memory.
    private: u64,
}

/// Who makes a case's call, and what it is.
#[derive(Clone, Copy)]
enum Call {
    /// A host call.
    Host(fn(&Ctx) -> Regs),
    /// A guest call from the TD's vCPU.
    Guest(fn(&Ctx) -> Regs),
    /// A guest call from the other TD's vCPU.
    OtherGuest(fn(&Ctx) -> Regs),
    /// An access through the guest's S-EPT accessor, which must find the leaf in the state.
    Accessor(fn(&mut TdVcpu<'_, '_>) -> Result<(), GuestError>, SeptState),
}

/// One case: what it tries, and the status it must be refused with (a status without an
/// operand names only the check, as the ABI doc does; one with an operand must match exactly).
#[derive(Clone, Copy)]
struct Case {
    name: &'static str,
    call: Call,
    want: Status,
}

/// The step of the flow that brings the machine to a stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Advance {
    /// The TDs are built and the device connected with a live IDE stream.
    Connected,
    /// TDI.CREATE bound to the TD.
    Bound,
    /// TDI.LOCK; the guest reads the TDI and checks the host's report.
    Locked,
    /// DMABUF.IMPORT of BAR0.
    Imported,
    /// MMIO.MAP of BAR0's first page.
    FirstPageMapped,
    /// MMIO.MAP of the rest.
    Mapped,
    /// The guest accepts the MMIO; the host adds the DMA entry.
    DmaAdded,
    /// The guest accepts the DMA entry and authorises; TDI.START.
    Running,
    /// VP.KICK: the vCPU out of guest mode.
    Kicked,
}

/// A stage: how the flow gets there, then what the malicious host tries.
struct Stage {
    advance: Advance,
    cases: &'static [Case],
}

const fn op(s: Status, o: Operand) -> Status {
    s.with_operand(o)
}

const fn host(name: &'static str, want: Status, regs: fn(&Ctx) -> Regs) -> Case {
    Case { name, call: Call::Host(regs), want }
}

const fn guest(name: &'static str, want: Status, regs: fn(&Ctx) -> Regs) -> Case {
    Case { name, call: Call::Guest(regs), want }
}

/// TDG.MMIO.ACCEPT of report range `range`, page `offset`, at `gpa`.
const fn accept(range: u64, function: u64, offset: u64, gpa: u64) -> Regs {
    Regs { r9: offset, ..Regs::call(g::MMIO_ACCEPT, gpa, range, function, 0) }
}

/// The 50 cases, stage by stage.
const STAGES: &[Stage] = &[
    Stage {
        advance: Advance::Connected,
        cases: &[
            host("SPDM.CREATE on a TD's page", op(Status::PAGE_NOT_FREE, Operand::Rcx), |c| {
                Regs::call(h::SPDM_CREATE, c.td.0, 0x20, 0, 0)
            }),
            host("SPDM.CREATE for a function with a PDEV", op(Status::FUNCTION_IN_USE, Operand::Rdx), |c| {
                Regs::call(h::SPDM_CREATE, c.tdi, c.fn_id, 0, 0)
            }),
            host("an answer with no request outstanding", op(Status::NO_REQUEST_OUTSTANDING, Operand::R8), |c| {
                Regs::call(h::SPDM_DISCONNECT, c.pdev, c.msg, 64, 0)
            }),
            host("a message page inside a TD", op(Status::PAGE_METADATA_INCORRECT, Operand::Rdx), |c| {
                Regs::call(h::SPDM_DISCONNECT, c.pdev, c.td.0, 0, 0)
            }),
            host("a message page in the TSM's memory", op(Status::OPERAND_ADDR_RANGE_ERROR, Operand::Rdx), |c| {
                Regs::call(h::SPDM_DISCONNECT, c.pdev, c.private, 0, 0)
            }),
            host("an answer longer than the page", op(Status::OPERAND_INVALID, Operand::R8), |c| {
                Regs::call(h::SPDM_DISCONNECT, c.pdev, c.msg, 4097, 0)
            }),
            host("SPDM.CONNECT of a connected PDEV", op(Status::PDEV_STATE_INCORRECT, Operand::Pdev), |c| {
                Regs::call(h::SPDM_CONNECT, c.pdev, c.msg, 0, 0)
            }),
        ],
    },
    Stage {
        advance: Advance::Bound,
        cases: &[
            host("TDI.CREATE of a bound function for another TD", op(Status::FUNCTION_IN_USE, Operand::R9), |c| {
                Regs::call(h::TDI_CREATE, c.other.0, c.pdev, c.fresh[0], c.fn_id)
            }),
            host("TDI.LOCK with an unknown flag", op(Status::OPERAND_INVALID, Operand::R9), |c| {
                Regs::call(h::TDI_LOCK, c.tdi, c.msg, 0, 0x8 | c.stream << 16)
            }),
            host("DMABUF.IMPORT before the lock", op(Status::TDI_STATE_INCORRECT, Operand::Tdi), |c| {
                Regs::call(h::DMABUF_IMPORT, c.tdi, c.bar, c.bar_pages, 0)
            }),
            host("MMIO.MAP before the lock", op(Status::MMIO_NOT_IN_REPORT, Operand::R8), |c| {
                Regs::call(h::MMIO_MAP, BAR_GPA, c.td.0, c.bar, 0)
            }),
        ],
    },
    Stage {
        advance: Advance::Locked,
        cases: &[
            host("DMABUF.IMPORT of a frame outside the report", op(Status::MMIO_NOT_IN_REPORT, Operand::Rdx), |c| {
                Regs::call(h::DMABUF_IMPORT, c.tdi, c.bar + PAGE, c.bar_pages, 0)
            }),
            host("DMABUF.IMPORT of too few pages", op(Status::MMIO_NOT_IN_REPORT, Operand::Rdx), |c| {
                Regs::call(h::DMABUF_IMPORT, c.tdi, c.bar, c.bar_pages - 1, 0)
            }),
            host("DMABUF.IMPORT of another range index", op(Status::MMIO_NOT_IN_REPORT, Operand::R9), |c| {
                Regs::call(h::DMABUF_IMPORT, c.tdi, c.bar, c.bar_pages, 3)
            }),
            host("DMABUF.IMPORT at an unaligned address", op(Status::OPERAND_INVALID, Operand::Rdx), |c| {
                Regs::call(h::DMABUF_IMPORT, c.tdi, c.bar + 8, c.bar_pages, 0)
            }),
            host("TDI.START without the guest's authorisation", op(Status::TDI_NOT_AUTHORISED, Operand::Tdi), |c| {
                Regs::call(h::TDI_START, c.tdi, c.msg, 0, 0)
            }),
            host("TDI.REMOVE of a locked TDI", op(Status::TDI_STATE_INCORRECT, Operand::Tdi), |c| {
                Regs::call(h::TDI_REMOVE, c.tdi, 0, 0, 0)
            }),
        ],
    },
    Stage {
        advance: Advance::Imported,
        cases: &[
            host("DMABUF.IMPORT of the same frames again", op(Status::PAGE_NOT_FREE, Operand::Rdx), |c| {
                Regs::call(h::DMABUF_IMPORT, c.tdi, c.bar, c.bar_pages, 0)
            }),
            host("MMIO.MAP into a TD the TDI is not bound to", op(Status::MMIO_OWNER_MISMATCH, Operand::R8), |c| {
                Regs::call(h::MMIO_MAP, BAR_GPA, c.other.0, c.bar, 0)
            }),
            host("MMIO.MAP of a frame past the range", op(Status::MMIO_NOT_IN_REPORT, Operand::R8), |c| {
                Regs::call(h::MMIO_MAP, BAR_GPA, c.td.0, c.bar + c.bar_pages * PAGE, 0)
            }),
            host("MMIO.MAP of an unaligned frame", op(Status::OPERAND_INVALID, Operand::R8), |c| {
                Regs::call(h::MMIO_MAP, BAR_GPA, c.td.0, c.bar + 1, 0)
            }),
            host("MMIO.MAP beyond the TD's address width", op(Status::OPERAND_INVALID, Operand::Rcx), |c| {
                Regs::call(h::MMIO_MAP, 1 << 47, c.td.0, c.bar, 0)
            }),
        ],
    },
    Stage {
        advance: Advance::FirstPageMapped,
        cases: &[
            host("MMIO.MAP of page 1 out of order", op(Status::MMIO_GPA_MISMATCH, Operand::Rcx), |c| {
                Regs::call(h::MMIO_MAP, BAR_GPA + 2 * PAGE, c.td.0, c.bar + PAGE, 0)
            }),
            host("MMIO.MAP of page 0 again at another GPA", op(Status::MMIO_GPA_MISMATCH, Operand::Rcx), |c| {
                Regs::call(h::MMIO_MAP, BAR_GPA + PAGE, c.td.0, c.bar, 0)
            }),
        ],
    },
    Stage {
        advance: Advance::Mapped,
        cases: &[
            // The guest's accept, and memory leaves against MMIO entries.
            guest(
                "guest: MMIO.ACCEPT where the report puts another page",
                op(Status::MMIO_INVALID_HPA_OFFSET, Operand::R9),
                |c| accept(0, c.fn_id, PAGE, BAR_GPA),
            ),
            guest("guest: MMIO.ACCEPT of a range the report lacks", op(Status::MMIO_OUT_OF_RANGE, Operand::Rdx), |c| {
                accept(3, c.fn_id, 0, BAR_GPA)
            }),
            guest(
                "guest: MMIO.ACCEPT for a function it has no TDI of",
                op(Status::TDI_NOT_PRESENT, Operand::R8),
                |c| accept(0, c.fn_id + 1, 0, BAR_GPA),
            ),
            Case {
                name: "the other TD: MMIO.ACCEPT of the TDI",
                call: Call::OtherGuest(|c| accept(0, c.fn_id, 0, BAR_GPA)),
                want: op(Status::TDI_NOT_PRESENT, Operand::R8),
            },
            guest("guest: MMIO.ACCEPT of private memory", op(Status::EPT_ENTRY_STATE_INCORRECT, Operand::Rcx), |c| {
                accept(0, c.fn_id, 0, WORK_GPA)
            }),
            host("MEM.RANGE.BLOCK of an MMIO entry", op(Status::EPT_ENTRY_STATE_INCORRECT, Operand::Rcx), |c| {
                Regs::call(h::MEM_RANGE_BLOCK, BAR_GPA, c.td.0, 0, 0)
            }),
            host("MEM.PAGE.REMOVE of an MMIO entry", op(Status::EPT_ENTRY_STATE_INCORRECT, Operand::Rcx), |c| {
                Regs::call(h::MEM_PAGE_REMOVE, BAR_GPA, c.td.0, 0, 0)
            }),
            host("MMIO.BLOCK of private memory", op(Status::EPT_ENTRY_STATE_INCORRECT, Operand::Rcx), |c| {
                Regs::call(h::MMIO_BLOCK, WORK_GPA, c.td.0, 0, 0)
            }),
            // Memory: the measured, finalized TD.
            host("MEM.PAGE.ADD after MR.FINALIZE", Status::TD_FINALIZED, |c| {
                Regs::call(h::MEM_PAGE_ADD, 0x5000, c.td.0, c.fresh[0], c.src)
            }),
            host("MR.EXTEND after MR.FINALIZE", Status::TD_FINALIZED, |c| Regs::call(h::MR_EXTEND, 0, c.td.0, 0, 0)),
            host("MEM.PAGE.AUG of a page the TD owns", op(Status::PAGE_NOT_FREE, Operand::R8), |c| {
                Regs::call(h::MEM_PAGE_AUG, 0x5000, c.td.0, c.td.1, 0)
            }),
            host("MEM.PAGE.AUG over a mapped page", op(Status::EPT_ENTRY_NOT_FREE, Operand::Rcx), |c| {
                Regs::call(h::MEM_PAGE_AUG, WORK_GPA, c.td.0, c.fresh[1], 0)
            }),
            host("MEM.PAGE.REMOVE of a page not blocked", op(Status::GPA_RANGE_NOT_BLOCKED, Operand::Rcx), |c| {
                Regs::call(h::MEM_PAGE_REMOVE, WORK_GPA, c.td.0, 0, 0)
            }),
            host("PHYMEM.PAGE.RECLAIM of a live TD's page", Status::LIFECYCLE_STATE_INCORRECT, |c| {
                Regs::call(h::PHYMEM_PAGE_RECLAIM, c.td.1, 0, 0, 0)
            }),
            guest("guest: TDG.TDI.RD digest into MMIO", op(Status::EPT_ENTRY_STATE_INCORRECT, Operand::R8), |c| {
                Regs::call(g::TDI_RD, c.fn_id, 2, BAR_GPA, 0)
            }),
            guest(
                "guest: TDG.TDI.RD evidence digests across the end of a page",
                op(Status::BUFFER_CROSSES_PAGE, Operand::R8),
                |c| Regs::call(g::TDI_RD, c.fn_id, 3, WORK_GPA + 0xFC0, 0),
            ),
            guest("guest: MR.ATTEST output into MMIO", op(Status::EPT_ENTRY_STATE_INCORRECT, Operand::Rcx), |_| {
                Regs::call(g::MR_ATTEST, BAR_GPA, WORK_GPA + PAGE, 0, 0)
            }),
            // The guest's own accessor: mapped by the host is not usable by the guest.
            Case {
                name: "guest: a register read before MMIO.ACCEPT",
                call: Call::Accessor(|t| t.mmio_read_u32(BAR_GPA).map(|_| ()), SeptState::MmioPending),
                want: Status::SUCCESS,
            },
            Case {
                name: "guest: private memory read as a device register",
                call: Call::Accessor(|t| t.mmio_read_u32(WORK_GPA).map(|_| ()), SeptState::Mapped),
                want: Status::SUCCESS,
            },
            Case {
                name: "guest: a device page read as private memory",
                call: Call::Accessor(|t| t.read(BAR_GPA, &mut [0; 8]), SeptState::MmioPending),
                want: Status::SUCCESS,
            },
        ],
    },
    Stage {
        advance: Advance::DmaAdded,
        cases: &[
            host("DMAR.ADD a second entry", op(Status::DMAR_STATE_INCORRECT, Operand::Tdi), |c| {
                Regs::call(h::DMAR_ADD, c.td.0, c.tdi, 0, 0)
            }),
            guest(
                "guest: START authorisation for a stale lock",
                op(Status::TDI_AUTHORISATION_STALE, Operand::Tdi),
                |c| Regs::call(g::TDI_START, c.fn_id, c.generation + 1, 0, 0),
            ),
        ],
    },
    Stage {
        advance: Advance::Running,
        cases: &[
            host("TDI.REMOVE of a running TDI", op(Status::TDI_STATE_INCORRECT, Operand::Tdi), |c| {
                Regs::call(h::TDI_REMOVE, c.tdi, 0, 0, 0)
            }),
            host("PHYMEM.PAGE.RECLAIM of the TDI's page", op(Status::PAGE_METADATA_INCORRECT, Operand::Rcx), |c| {
                Regs::call(h::PHYMEM_PAGE_RECLAIM, c.tdi, 0, 0, 0)
            }),
            host("MMIO.UNMAP of a running TDI's page", op(Status::GPA_RANGE_NOT_BLOCKED, Operand::Rcx), |c| {
                Regs::call(h::MMIO_UNMAP, BAR_GPA, c.td.0, 0, 0)
            }),
        ],
    },
    Stage {
        advance: Advance::Kicked,
        cases: &[host("VPFLUSHDONE with a TDI bound", op(Status::TD_HAS_ATTACHED_DEVICES, Operand::Tdr), |c| {
            Regs::call(h::MNG_VPFLUSHDONE, c.td.0, 0, 0, 0)
        })],
    },
];

struct HashWriter(Sha384);

impl Write for HashWriter {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        self.0.update(s.as_bytes());
        Ok(())
    }
}

fn pfn(pa: u64) -> Pfn {
    Pfn::new(pa >> 12).unwrap_or(Pfn::ZERO)
}

/// The malicious host's run: the flow's objects and the tally.
struct Attack<'a, 'm> {
    cpu: HostCpu<'a>,
    doe: DoeLink<'a>,
    td: BuiltTd,
    other: BuiltTd,
    mem: &'m GuestMemory<'m>,
    shared: u64,
    /// The TD's side of its requests (its shared page).
    dtd: DeviceTd,
    guest: Guest,
    a: Assignment,
    stats: PumpStats,
    ctx: Ctx,
    total: u32,
    rejected: u32,
}

impl<'m> Attack<'_, 'm> {
    /// What a refused call must leave as it was.
    fn snapshot(&mut self) -> [u8; 48] {
        let mut w = HashWriter(Sha384::new());
        let _ = write!(w, "{:?}", self.cpu.tsm.device_summaries());
        for tdr in [self.td.td.tdr, self.other.td.tdr] {
            let _ = write!(w, "{:?}", self.cpu.tsm.td_summary(pfn(tdr)));
        }
        let r = td::for_each_donated(&mut self.cpu, &mut |md| {
            let _ = write!(w, "{:x}{:x}{:x}{:x}", md.ty, md.owner, md.pa, md.level);
        });
        if r.is_err() {
            let _ = w.write_str("RDMD refused");
        }
        w.0.finalize().into()
    }

    fn vcpu(&mut self, vcpu: u64) -> TdVcpu<'_, 'm> {
        TdVcpu::new(self.cpu.tsm, vcpu, self.mem, self.shared)
    }

    /// Runs one case and judges it.
    fn case(&mut self, case: &Case) {
        self.total += 1;
        let n = self.total;
        let name = case.name;
        let c = self.ctx;
        let (got, exited) = match case.call {
            Call::Accessor(access, state) => {
                let got = access(&mut self.vcpu(c.td.1));
                let ok = matches!(got, Err(GuestError::NotMapped { state: found, .. }) if found == state as u8);
                self.rejected += u32::from(ok);
                match got {
                    Err(e) if ok => say!("attack {n:2} {name}: refused by the guest's accessor: {e}"),
                    Err(e) => say!("attack {n:2} {name}: NOT AS EXPECTED: {e}"),
                    Ok(()) => say!("attack {n:2} {name}: NOT AS EXPECTED: the access went through"),
                }
                return;
            }
            Call::Host(regs) => {
                let before = self.snapshot();
                let r = self.cpu.raw(regs(&c));
                ((r.status(), before), false)
            }
            Call::Guest(regs) | Call::OtherGuest(regs) => {
                let vcpu = if matches!(case.call, Call::Guest(_)) { c.td.1 } else { c.other.1 };
                let before = self.snapshot();
                let mut r = regs(&c);
                let exit = self.vcpu(vcpu).tdcall(&mut r);
                ((r.status(), before), exit.is_some())
            }
        };
        let ((got, before), want) = (got, case.want);
        let changed = self.snapshot() != before;
        let same = if want.operand_id() == 0 { got.code() == want } else { got == want };
        let ok = same && !changed && !exited;
        self.rejected += u32::from(ok);
        say!(
            "attack {n:2} {name}: {} {}{}{}",
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

    /// Brings the flow to the stage `to` (a step that fails stops the run: it is not an attack).
    fn advance(&mut self, to: Advance) {
        let bar = (self.ctx.bar, self.ctx.bar_pages);
        match to {
            Advance::Connected => {}
            Advance::Bound => {
                let r =
                    self.cpu.raw(Regs::call(h::TDI_CREATE, self.td.td.tdr, self.a.pdev, self.ctx.tdi, self.ctx.fn_id));
                if r.status() != Status::SUCCESS {
                    fail("TDI.CREATE", &format_args!("{:?}", r.status().name()));
                }
                self.a.tdi = self.ctx.tdi;
            }
            Advance::Locked => {
                device::lock(&mut self.cpu, &mut self.doe, LOCK_FLAGS, &mut self.a, &mut self.stats)
                    .unwrap_or_else(|e| fail("TDI.LOCK", &e));
                self.ctx.generation = self.a.generation;
                let mut guest = self.guest;
                let function = self.ctx.fn_id as u32;
                self.dtd.give_tdi(&mut self.cpu, function);
                let step = guest.read_tdi(&mut self.vcpu(self.td.vcpu)).unwrap_or_else(|e| fail("guest: TDI read", &e));
                if let tsm_client::guest::Step::Vmcall([_, asked, ..]) = step {
                    self.dtd
                        .give_report(&mut self.cpu, &self.a, asked, function)
                        .unwrap_or_else(|e| fail("host: GET_REPORT", &e));
                    td::enter(&mut self.cpu, self.td.vcpu).unwrap_or_else(|e| fail("VP.ENTER", &e));
                }
                guest.check_report(&mut self.vcpu(self.td.vcpu)).unwrap_or_else(|e| fail("guest: report check", &e));
                self.guest = guest;
            }
            Advance::Imported => {
                device::import(&mut self.cpu, &self.a, 0, bar.0, bar.1).unwrap_or_else(|e| fail("DMABUF.IMPORT", &e));
            }
            Advance::FirstPageMapped => {
                device::map_mmio(&mut self.cpu, &self.td.td, &mut self.a, (bar.0, 1), BAR_GPA)
                    .unwrap_or_else(|e| fail("MMIO.MAP", &e));
            }
            Advance::Mapped => {
                let rest = (bar.0 + PAGE, bar.1 - 1);
                device::map_mmio(&mut self.cpu, &self.td.td, &mut self.a, rest, BAR_GPA + PAGE)
                    .unwrap_or_else(|e| fail("MMIO.MAP", &e));
            }
            Advance::DmaAdded => {
                let guest = self.guest;
                guest.accept_mmio(&mut self.vcpu(self.td.vcpu)).unwrap_or_else(|e| fail("guest: MMIO.ACCEPT", &e));
                device::dmar_add(&mut self.cpu, &self.td.td, &mut self.a).unwrap_or_else(|e| fail("DMAR.ADD", &e));
            }
            Advance::Running => {
                let guest = self.guest;
                guest
                    .accept_dma_and_authorise(&mut self.vcpu(self.td.vcpu))
                    .unwrap_or_else(|e| fail("guest: DMAR.ACCEPT / authorise", &e));
                device::start(&mut self.cpu, &mut self.doe, &self.a, &mut self.stats)
                    .unwrap_or_else(|e| fail("TDI.START", &e));
            }
            Advance::Kicked => {
                if self.cpu.raw(Regs::call(h::VP_KICK, self.td.vcpu, 0, 0, 0)).status() != Status::SUCCESS {
                    fail("VP.KICK", &"refused");
                }
            }
        }
    }
}

/// The attack run; never returns.
pub fn run(
    tsc: &Tsc,
    tsm: &mut Tsm<FirmwarePlatform>,
    host: &mut Host,
    nvme: Nvme,
    image: &[u8],
    private_pa: u64,
) -> ! {
    let Nvme { bdf, bar0, regs, mut mailbox } = nvme;
    let function = u32::from(bdf.rid());
    let frames = host.frames();
    let mut cpu = HostCpu::new(tsm, host, *tsc);
    let mut doe = DoeLink::new(&mut mailbox, *tsc);
    let mut stats = PumpStats::default();
    let pages = |e: tsm_client::HostError| -> ! { fail("pages", &e) };

    let work = (WORK_GPA, WORK_PAGES);
    let mut com1 = |b: &[u8]| Uart::com1().write_bytes(b);
    let params = td_params(tsm_client::guest::Plan::Assign);
    let td = td::build(&mut cpu, image, &params, work).unwrap_or_else(|e| fail("TD build", &e));
    let other = td::build(&mut cpu, image, &params, work).unwrap_or_else(|e| fail("second TD build", &e));
    // Both guests accept their pages in their TD worlds and ask for a TDI; the stand-in plays
    // the TDs' part in the cases below.
    let [dtd, _] = [&td, &other].map(|t| {
        let mut d = DeviceTd::new(&mut cpu, &t.td, t.vcpu, params.gpaw, &tsm_client::guest::DEMO_LAYOUT)
            .unwrap_or_else(|e| fail("shared page", &e));
        d.expect(&mut cpu, Answer::Nothing, tsm_client::vmcall::GET_TDI, &mut com1).unwrap_or_else(|e| fail("TD", &e));
        d
    });
    cpu.worlds = false;
    for v in [td.vcpu, other.vcpu] {
        td::enter(&mut cpu, v).unwrap_or_else(|e| fail("VP.ENTER", &e));
    }
    let shared = dtd.shared.page;
    let mem = GuestMemory::new(td.td.tdr, frames, Some((&regs, bar0.base, bar0.size)));
    let guest = Guest::new(tsm_client::guest::DEMO_LAYOUT);
    device::iommu_setup(&mut cpu).unwrap_or_else(|e| fail("IOMMU.SETUP", &e));
    let mut a = spdm_connect(&mut cpu, &mut doe, bdf);
    device::ide_setup(&mut cpu, &mut doe, &mut a, &mut stats).unwrap_or_else(|e| fail("IDE setup", &e));
    let tdi = donate(&mut cpu).unwrap_or_else(|e| pages(e));
    let src = scratch(&mut cpu).unwrap_or_else(|e| pages(e));
    cpu.write(src, &[0x90; 4096]);
    say!("attack: two TDs, the device connected with a live IDE stream; the malicious host begins");

    let bar_pages = bar0.size / PAGE;
    for i in 0..bar_pages {
        for t in [&td.td, &other.td] {
            td::map_tables(&mut cpu, t, BAR_GPA + i * PAGE, 0).unwrap_or_else(|e| fail("S-EPT tables", &e));
        }
    }
    let fresh = [donate(&mut cpu).unwrap_or_else(|e| pages(e)), donate(&mut cpu).unwrap_or_else(|e| pages(e))];
    let ctx = Ctx {
        td: (td.td.tdr, td.vcpu),
        other: (other.td.tdr, other.vcpu),
        fn_id: u64::from(function),
        bar: bar0.base,
        bar_pages,
        pdev: a.pdev,
        msg: a.msg,
        tdi,
        stream: a.stream,
        generation: 0,
        fresh,
        src,
        private: private_pa,
    };
    let mut at = Attack { cpu, doe, td, other, mem: &mem, shared, dtd, guest, a, stats, ctx, total: 0, rejected: 0 };
    for stage in STAGES {
        at.advance(stage.advance);
        for case in stage.cases {
            at.case(case);
        }
    }
    let (total, rejected) = (at.total, at.rejected);

    // ---- Teardown: the refused calls left nothing behind.
    let holdings = Holdings { td: Some((&at.td.td, core::slice::from_ref(&at.td.vcpu))), iommu: true };
    unbind::teardown(&mut at.cpu, &mut at.doe, &at.a, holdings, &mut at.stats).unwrap_or_else(|e| fail("teardown", &e));
    td::destroy(&mut at.cpu, at.other.td.tdr, &[at.other.vcpu])
        .unwrap_or_else(|e| fail("teardown of the other TD", &e));
    let pages = td::check_all_free(&mut at.cpu).unwrap_or_else(|e| fail("teardown", &e));
    say!("attack: the flow still completed; teardown reclaimed all {pages} donated pages");
    super::figure("attack_cases_total", &total, "cases");
    super::figure("attack_cases_rejected", &rejected, "cases");
    say!("attack_cases_total {total}");
    say!("attack_cases_rejected {rejected}");
    if rejected != total {
        fail("attack", &format_args!("{} of {total} cases were not refused as expected", total - rejected));
    }
    say!("seamless firmware: attack done");
    arch::exit_qemu(ExitCode::Success)
}
