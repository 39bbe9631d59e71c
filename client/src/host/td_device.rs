//! The host's side of the demo TD's requests ([`crate::vmcall`]): the shared page they travel
//! through, entering the vCPU until its next request, and decoding and answering that request.
//! What the host does for a request (lock a TDI, map its MMIO, add the DMA entry, start it) is
//! the caller's, with [`super::device`]'s steps: this module only knows the protocol, so a VMM
//! with its own order of host steps uses it as it is.
//!
//! The shared page is one of the host's own pages, reached by the TD at GPA `shared bit |
//! layout.shared_offset` through the host's table for the TD's shared half
//! (SEAMLESS.SHARED.EPT.SET, which the TSM walks only into frames the host owns). Everything
//! the TD writes there or passes in R11..R13 is hostile: a request naming another page, a length
//! past the page or the host's buffer, or a record of the wrong size is refused with an error
//! naming it, and nothing of it is used.

use tsm::abi::host::leaf;
use tsm::pdev::MSG_BYTES;
use tsm::{Regs, TdExit};

use super::device::Assignment;
use super::td::{ghci, resume, Ran, RunStats, TdPages};
use super::{call, scratch, HostError, HostMemory, Seamcall};
use crate::guest::probe::{Outcome, ProbeStep};
use crate::guest::result::Record;
use crate::guest::GuestLayout;
use crate::{shared, vmcall};

/// The host's table for the TD's shared half, mapping exactly one page: the shared page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SharedPage {
    /// Its GPA as the TD names it (the shared bit set).
    pub gpa: u64,
    /// The host page behind it.
    pub page: u64,
    /// The table's pages, root first.
    pub tables: [u64; 4],
}

/// A request of the TD, decoded and checked against the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// GET_TDI: bind and lock a TDI, then name it.
    GetTdi,
    /// GET_REPORT: the interface report of the TDI of `function`.
    GetReport {
        /// R11.
        function: u64,
    },
    /// GET_NONCE: the verifier's challenge.
    GetNonce,
    /// REPORT_READY: the reports are in the shared page.
    ReportReady {
        /// R11: their length.
        len: u64,
    },
    /// MAP_MMIO: import and map report range 0.
    MapMmio {
        /// R11.
        function: u64,
        /// R13: the pages the guest will accept.
        pages: u64,
    },
    /// ADD_DMA: the DMA entry.
    AddDma {
        /// R11.
        function: u64,
    },
    /// START: the TDI, which the guest authorised.
    Start {
        /// R11.
        function: u64,
    },
    /// RESULT: a typed record of `kind` is in the shared page.
    Result {
        /// R11.
        kind: u64,
    },
    /// EVENT_LOG: a piece of the TD's CC event log is in the shared page.
    EventLog {
        /// R11: the piece's offset in the log.
        offset: u64,
        /// R13: the log's whole length.
        total: u64,
    },
}

impl Request {
    /// The request R10..R13 `args` make, if it names the shared page `shared`.
    ///
    /// # Errors
    /// [`HostError::Request`] for another page; [`HostError::UnknownVmcall`] for a number
    /// outside the table.
    pub fn decode(args: [u64; 4], shared: u64) -> Result<Request, HostError> {
        let [request, r11, r12, r13] = args;
        if request == vmcall::CONSOLE || vmcall::row(request).is_none() {
            return Err(HostError::UnknownVmcall(request));
        }
        if r12 != shared {
            return Err(HostError::Request { request, why: "names another shared page than the host mapped" });
        }
        Ok(match request {
            vmcall::GET_TDI => Request::GetTdi,
            vmcall::GET_REPORT => Request::GetReport { function: r11 },
            vmcall::GET_NONCE => Request::GetNonce,
            vmcall::REPORT_READY => Request::ReportReady { len: r11 },
            vmcall::MAP_MMIO => Request::MapMmio { function: r11, pages: r13 },
            vmcall::ADD_DMA => Request::AddDma { function: r11 },
            vmcall::START => Request::Start { function: r11 },
            vmcall::RESULT => Request::Result { kind: r11 },
            vmcall::EVENT_LOG => Request::EventLog { offset: r11, total: r13 },
            other => return Err(HostError::UnknownVmcall(other)),
        })
    }

    /// R10 of the request.
    pub fn number(&self) -> u64 {
        match self {
            Request::GetTdi => vmcall::GET_TDI,
            Request::GetReport { .. } => vmcall::GET_REPORT,
            Request::GetNonce => vmcall::GET_NONCE,
            Request::ReportReady { .. } => vmcall::REPORT_READY,
            Request::MapMmio { .. } => vmcall::MAP_MMIO,
            Request::AddDma { .. } => vmcall::ADD_DMA,
            Request::Start { .. } => vmcall::START,
            Request::Result { .. } => vmcall::RESULT,
            Request::EventLog { .. } => vmcall::EVENT_LOG,
        }
    }
}

/// Where the TD's run stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// It made a request; the vCPU waits in it for [`DeviceTd::next`] with the answer.
    Request(Request),
    /// It halted with interrupts blocked: it is done.
    Halted,
    /// It touched a GPA no S-EPT leaf grants (an EPT-violation exit the host cannot fix).
    Violation(TdExit),
}

/// How the host answers the request the vCPU waits in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// The vCPU has not run yet, or waits in no request.
    Nothing,
    /// Served: R10 = 0.
    Served,
    /// Refused: R10 = GHCI's INVALID_OPERAND.
    Refused,
    /// Run this probe first (a TD in the probe plan), then make the request again: R10 = 0,
    /// R11 = [`vmcall::PROBE`], the step in the shared page.
    Probe(ProbeStep),
}

impl Answer {
    fn regs(self) -> [u64; 4] {
        match self {
            Answer::Nothing | Answer::Served => [0; 4],
            Answer::Refused => [ghci::INVALID_OPERAND, 0, 0, 0],
            Answer::Probe(_) => [0, vmcall::PROBE, 0, 0],
        }
    }
}

/// The host's transport with the registers of its last call kept: what VP.ENTER returned for the
/// latest exit, every register of it, for the checks that nothing else of the TD reached the
/// host.
struct Recorder<'a, H: ?Sized> {
    h: &'a mut H,
    last: Regs,
}

impl<H: Seamcall + ?Sized> Seamcall for Recorder<'_, H> {
    fn seamcall(&mut self, regs: &mut Regs) {
        self.h.seamcall(regs);
        self.last = *regs;
    }
}

/// The demo TD as its host runs it: its vCPU, its shared page, and what the runs counted.
#[derive(Debug)]
pub struct DeviceTd {
    /// The vCPU's TDVPR.
    pub vcpu: u64,
    /// The shared page.
    pub shared: SharedPage,
    /// VP.ENTERs, console calls and refused MSRs of its runs.
    pub stats: RunStats,
    /// Every register VP.ENTER returned at the latest exit.
    pub last_exit: Regs,
}

impl DeviceTd {
    /// Gives `td` (whose shared bit is `1 << (gpaw - 1)`) its shared page at the GPA `layout`
    /// names: a zeroed host page behind a 4-level table in host pages, named to the TSM with
    /// SEAMLESS.SHARED.EPT.SET.
    ///
    /// # Errors
    /// [`HostError::OutOfPages`], or SHARED.EPT.SET's refusal.
    pub fn new<H: Seamcall + HostMemory + ?Sized>(
        h: &mut H,
        td: &TdPages,
        vcpu: u64,
        gpaw: u8,
        layout: &GuestLayout,
    ) -> Result<DeviceTd, HostError> {
        let gpa = (1u64 << (gpaw.clamp(2, 53) - 1)) | layout.shared_offset;
        let tables = [scratch(h)?, scratch(h)?, scratch(h)?, scratch(h)?];
        let page = scratch(h)?;
        // Present, writable, user: the TSM's walk needs P; R/W and U are what a VMM's EPT-shaped
        // table would grant a shared page.
        const LINK: u64 = 0x7;
        for (i, shift) in [39u32, 30, 21, 12].into_iter().enumerate() {
            let next = tables.get(i + 1).copied().unwrap_or(page);
            let slot = tables[i] + ((gpa >> shift) & 511) * 8;
            h.write(slot, &(next | LINK).to_le_bytes());
        }
        call(h, "SEAMLESS.SHARED.EPT.SET", Regs::call(leaf::SHARED_EPT_SET, td.tdr, tables[0], 0, 0))?;
        Ok(DeviceTd {
            vcpu,
            shared: SharedPage { gpa, page, tables },
            stats: RunStats::default(),
            last_exit: Regs::default(),
        })
    }

    /// Enters the vCPU with `answer` to the request it waits in and runs it (its console to
    /// `console`) until its next request, its halt or an EPT violation.
    ///
    /// # Errors
    /// [`super::td::run`]'s errors; [`Request::decode`]'s for a request the host cannot take.
    pub fn next<H: Seamcall + HostMemory + ?Sized>(
        &mut self,
        h: &mut H,
        answer: Answer,
        console: &mut dyn FnMut(&[u8]),
    ) -> Result<Next, HostError> {
        if let Answer::Probe(step) = answer {
            self.put(h, zerocopy::IntoBytes::as_bytes(&step));
        }
        let mut rec = Recorder { h, last: Regs::default() };
        let ran = resume(&mut rec, self.vcpu, answer.regs(), console, &mut self.stats);
        self.last_exit = rec.last;
        match ran? {
            Ran::Request(args) => Ok(Next::Request(Request::decode(args, self.shared.gpa)?)),
            Ran::Halted => Ok(Next::Halted),
            Ran::Violation(exit) => Ok(Next::Violation(exit)),
            Ran::NoWorld => Err(HostError::TdExit {
                reason: 0,
                r10: 0,
                r11: 0,
                why: "VP.ENTER returned at once: the vCPU does not run in a TD world",
            }),
        }
    }

    /// [`DeviceTd::next`], which must stop at a request `want` names (its R10).
    ///
    /// # Errors
    /// [`HostError::Request`] for another request or a stop that is none; as [`DeviceTd::next`].
    pub fn expect<H: Seamcall + HostMemory + ?Sized>(
        &mut self,
        h: &mut H,
        answer: Answer,
        want: u64,
        console: &mut dyn FnMut(&[u8]),
    ) -> Result<Request, HostError> {
        match self.next(h, answer, console)? {
            Next::Request(r) if r.number() == want => Ok(r),
            Next::Request(r) => Err(HostError::Request { request: r.number(), why: "out of order" }),
            Next::Halted => Err(HostError::Request { request: want, why: "never made: the TD halted" }),
            Next::Violation(_) => {
                Err(HostError::Request { request: want, why: "never made: the TD touched a GPA it has no leaf for" })
            }
        }
    }

    /// Puts `data` in the shared page, `[len][data]` (cut at its capacity).
    pub fn put<H: HostMemory + ?Sized>(&self, h: &mut H, data: &[u8]) {
        let (len, data) = shared::frame(data);
        h.write(self.shared.page, &len.to_le_bytes());
        h.write(self.shared.page + 8, data);
    }

    /// Copies what the TD left in the shared page into `buf`; returns its length.
    ///
    /// # Errors
    /// [`HostError::SharedLength`] if the length word exceeds the page or `buf`.
    pub fn take<H: HostMemory + ?Sized>(&self, h: &mut H, buf: &mut [u8]) -> Result<usize, HostError> {
        let mut len = [0u8; 8];
        h.read(self.shared.page, &mut len);
        let n = shared::checked_len(u64::from_le_bytes(len), buf.len()).map_err(HostError::SharedLength)?;
        h.read(self.shared.page + 8, &mut buf[..n]);
        Ok(n)
    }

    /// GET_TDI's answer: the function id of the TDI the host locked.
    pub fn give_tdi<H: HostMemory + ?Sized>(&self, h: &mut H, function: u32) {
        self.put(h, &function.to_le_bytes());
    }

    /// GET_REPORT's answer: the interface report TDI.LOCK left in the assignment's message
    /// page, if `function` is the assignment's.
    ///
    /// # Errors
    /// [`HostError::Request`] for another function.
    pub fn give_report<H: HostMemory + ?Sized>(
        &self,
        h: &mut H,
        a: &Assignment,
        function: u64,
        assigned: u32,
    ) -> Result<(), HostError> {
        if function != u64::from(assigned) {
            return Err(HostError::Request {
                request: vmcall::GET_REPORT,
                why: "names a function the host did not lock",
            });
        }
        let mut buf = [0u8; MSG_BYTES];
        let n = a.report_len.min(shared::CAPACITY).min(MSG_BYTES);
        h.read(a.msg, &mut buf[..n]);
        self.put(h, &buf[..n]);
        Ok(())
    }

    /// REPORT_READY: copies the reports into `out`; returns their length.
    ///
    /// # Errors
    /// [`HostError::SharedLength`] if the TD's length word or R11 does not fit `out`, or the two
    /// differ.
    pub fn take_reports<H: HostMemory + ?Sized>(
        &self,
        h: &mut H,
        len: u64,
        out: &mut [u8],
    ) -> Result<usize, HostError> {
        let n = self.take(h, out)?;
        if n as u64 != len {
            return Err(HostError::SharedLength(len));
        }
        Ok(n)
    }

    /// The outcome of the probe the TD ran, from the shared page of the request it made again.
    ///
    /// # Errors
    /// [`HostError::SharedLength`] unless the TD left exactly one outcome's bytes.
    pub fn take_outcome<H: HostMemory + ?Sized>(&self, h: &mut H) -> Result<Outcome, HostError> {
        let mut buf = [0u8; core::mem::size_of::<Outcome>() + 1];
        let n = self.take(h, &mut buf).map_err(|_| HostError::SharedLength(buf.len() as u64))?;
        zerocopy::FromBytes::read_from_bytes(&buf[..n]).map_err(|_| HostError::SharedLength(n as u64))
    }

    /// RESULT of kind `R::KIND`: the record in the shared page.
    ///
    /// # Errors
    /// [`HostError::Request`] for another kind; [`HostError::SharedLength`] unless the TD left
    /// exactly one record's bytes.
    pub fn take_result<R: Record, H: HostMemory + ?Sized>(&self, h: &mut H, kind: u64) -> Result<R, HostError> {
        if kind != R::KIND {
            return Err(HostError::Request { request: vmcall::RESULT, why: "a result of another kind" });
        }
        let mut buf = [0u8; shared::CAPACITY];
        let n = self.take(h, &mut buf)?;
        R::read_from_bytes(&buf[..n]).map_err(|_| HostError::SharedLength(n as u64))
    }
}
