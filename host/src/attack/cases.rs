//! Mode `attack`'s cases, one table: each stage names the step of the flow that brings the
//! machine to it, then its cases as (name, who calls and what, how it must be refused). The run
//! that executes them is `super`.

use tsm::abi::host::leaf as h;
use tsm::sept::SeptState;
use tsm::{Operand, Regs, Status};
use tsm_client::guest::probe::Probe;

use super::{BAR_GPA, PAGE, WORK_GPA};

/// What the cases' registers are made of: the objects of the flow, as far as it got.
#[derive(Clone, Copy, Debug)]
pub(super) struct Ctx {
    /// The TD the device is assigned to, and its vCPU.
    pub(super) td: (u64, u64),
    /// A second TD, and its vCPU.
    pub(super) other: (u64, u64),
    pub(super) fn_id: u64,
    pub(super) bar: u64,
    pub(super) bar_pages: u64,
    pub(super) pdev: u64,
    pub(super) msg: u64,
    pub(super) tdi: u64,
    pub(super) stream: u64,
    pub(super) generation: u64,
    /// Fresh TDMR pages the host never donated.
    pub(super) fresh: [u64; 2],
    /// A host page holding a page of content.
    pub(super) src: u64,
    /// An address in the TSM's own memory.
    pub(super) private: u64,
    /// One of the host's own pages, outside every TD's memory.
    pub(super) host_page: u64,
}

/// Who makes a case's call, and what it is.
#[derive(Clone, Copy)]
pub(super) enum Call {
    /// A host call.
    Host(fn(&Ctx) -> Regs),
    /// A probe the TD runs (in its TD world, answering the request it waits in).
    Td(Probe),
    /// A probe the other TD runs.
    OtherTd(Probe),
    /// The host world executes TDCALL.
    HostWorldTdcall,
}

/// How a case must be refused.
#[derive(Clone, Copy, Debug)]
pub(super) enum Want {
    /// The call returns this status (one without an operand names only the check, as the ABI
    /// doc does; one with an operand must match exactly).
    Status(Status),
    /// The TD's own accessor refuses before any access.
    Refused,
    /// A #VE in the TD: EPT violation (48), a read (qualification 1), at the probe's GPA.
    VeOnRead,
    /// A #UD where the instruction ran.
    Ud,
    /// An EPT-violation exit to the host naming the probe's GPA and an S-EPT entry in this
    /// state; the vCPU never runs past the access (the last probe of a TD).
    Exit(SeptState),
    /// An EPT-violation exit at a page the host blocked and tracked; once it unblocked the page,
    /// the load completes with the page's own contents.
    ExitThenIntact,
    /// The host's exit registers hold R10..R13 and the mask 0x3C00 only: no secret.
    NoLeak,
}

/// One case: what it tries, and how it must be refused.
#[derive(Clone, Copy)]
pub(super) struct Case {
    pub(super) name: &'static str,
    pub(super) call: Call,
    pub(super) want: Want,
}

/// The step of the flow that brings the machine to a stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Advance {
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
    /// The end: the TDs' last probes, each of which leaves its vCPU at the access.
    Ending,
}

/// A stage: how the flow gets there, then what the malicious host tries.
pub(super) struct Stage {
    pub(super) advance: Advance,
    pub(super) cases: &'static [Case],
}

const fn op(s: Status, o: Operand) -> Status {
    s.with_operand(o)
}

const fn host(name: &'static str, want: Status, regs: fn(&Ctx) -> Regs) -> Case {
    Case { name, call: Call::Host(regs), want: Want::Status(want) }
}

/// A guest call the TD makes, which the TSM must refuse with `want`.
const fn guest(name: &'static str, want: Status, probe: Probe) -> Case {
    Case { name, call: Call::Td(probe), want: Want::Status(want) }
}

/// Something else the TD does.
const fn td(name: &'static str, probe: Probe, want: Want) -> Case {
    Case { name, call: Call::Td(probe), want }
}

/// The 56 cases, stage by stage.
pub(super) const STAGES: &[Stage] = &[
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
            // The TD world, in hardware (issue 11): the TD waits in GET_TDI.
            td("the TD: a load of a page it never accepted (PENDING)", Probe::LoadPending, Want::VeOnRead),
            td("the TD: SEAMCALL", Probe::Seamcall, Want::Ud),
            td("the TD: a secret in every register TDG.VP.VMCALL does not expose", Probe::Secrets, Want::NoLeak),
            Case { name: "the host world: TDCALL", call: Call::HostWorldTdcall, want: Want::Ud },
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
                Probe::MmioAcceptWrongOffset,
            ),
            guest(
                "guest: MMIO.ACCEPT of a range the report lacks",
                op(Status::MMIO_OUT_OF_RANGE, Operand::Rdx),
                Probe::MmioAcceptMissingRange,
            ),
            guest(
                "guest: MMIO.ACCEPT for a function it has no TDI of",
                op(Status::TDI_NOT_PRESENT, Operand::R8),
                Probe::MmioAcceptOtherFunction,
            ),
            Case {
                name: "the other TD: MMIO.ACCEPT of the TDI",
                call: Call::OtherTd(Probe::MmioAcceptForeignTdi),
                want: Want::Status(op(Status::TDI_NOT_PRESENT, Operand::R8)),
            },
            guest(
                "guest: MMIO.ACCEPT of private memory",
                op(Status::EPT_ENTRY_STATE_INCORRECT, Operand::Rcx),
                Probe::MmioAcceptPrivateMemory,
            ),
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
            guest(
                "guest: TDG.TDI.RD digest into MMIO",
                op(Status::EPT_ENTRY_STATE_INCORRECT, Operand::R8),
                Probe::TdiRdDigestIntoMmio,
            ),
            guest(
                "guest: TDG.TDI.RD evidence digests across the end of a page",
                op(Status::BUFFER_CROSSES_PAGE, Operand::R8),
                Probe::TdiRdAcrossPage,
            ),
            guest(
                "guest: MR.ATTEST output into MMIO",
                op(Status::EPT_ENTRY_STATE_INCORRECT, Operand::Rcx),
                Probe::AttestIntoMmio,
            ),
            // The TD's own accessors keep device registers and memory apart.
            td("guest: private memory read as a device register", Probe::MmioAccessorOnPrivateMemory, Want::Refused),
            td("guest: a device page read as private memory", Probe::PrivateAccessorOnDevicePage, Want::Refused),
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
                Probe::StaleAuthorisation,
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
    Stage {
        advance: Advance::Ending,
        cases: &[
            td("the TD: a load of its page after BLOCK and TRACK", Probe::LoadBlocked, Want::ExitThenIntact),
            // Mapped by the host is not usable by the TD: the TD left BAR0's last page unaccepted.
            td(
                "the TD: a device register load before MMIO.ACCEPT",
                Probe::LoadUnacceptedMmio,
                Want::Exit(SeptState::MmioPending),
            ),
            Case {
                name: "the other TD: a load of the host's memory",
                call: Call::OtherTd(Probe::LoadHostMemory),
                want: Want::Exit(SeptState::Free),
            },
        ],
    },
];

/// The number of cases.
const fn count_cases() -> usize {
    let mut n = 0;
    let mut i = 0;
    while i < STAGES.len() {
        n += STAGES[i].cases.len();
        i += 1;
    }
    n
}
const _: () = assert!(count_cases() == 56);
