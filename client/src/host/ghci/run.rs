//! The host's loop for a TDVF TD's vCPU, as a TDX VMM runs one: before each TDH.VP.ENTER the
//! timer's due ticks are posted (SEAMLESS.VP.POST), then the exit is served (an external
//! interrupt, the TSM's preemption timer, only gives the host its turn): GHCI's
//! TDG.VP.VMCALLs by [`Ghci::serve`], TDVMCALL<HLT> by waiting in the host until the next
//! interrupt is due (the TSM injects it when the vCPU can take it), an EPT violation on private
//! RAM the host left unmapped by AUGing it (the TD's ACCEPT then retries). The run ends when
//! the TD asks for its end (ACPI S5, reset, ReportFatalError), halts with interrupts blocked,
//! triple-faults, touches what it must not, or runs past the deadline; the caller tears the TD
//! down either way, and the report keeps the last exit's registers.
//!
//! Whatever the end, [`tear_down`] destroys the TD and checks that every page the host donated
//! is free again, and [`LastState`] says what the host knows of the vCPU's last moment.
//!
//! The console milestones are read off the bytes the TD writes to COM1 as they pass through
//! the host ([`super::ports::Console`]): the first byte, and the UEFI shell's prompt, at which
//! the host can type a command in (`reset -s` ends the run by ACPI S5).

use tsm::abi::host::leaf;
use tsm::{Regs, Status, TdExit};

use super::{Ghci, Machine, Served, Stop, TdView};
use crate::host::td::{self as flow_td, aug, TdPages};
use crate::host::{call, donate, raw, HostError, HostMemory, Seamcall};

/// The UEFI shell's prompt, as edk2's shell prints it.
pub const SHELL_PROMPT: &[u8] = b"Shell> ";

/// How the run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// The TD asked for its end.
    Stopped(Stop),
    /// TDVMCALL<HLT> with interrupts blocked: nothing will ever wake it.
    Halted,
    /// TDVMCALL<HLT> with interrupts open and no interrupt armed to wake it.
    Idle,
    /// The vCPU shut down.
    TripleFault,
    /// An access the host does not serve: a shared GPA with nothing behind it, or a private
    /// GPA outside the TD's RAM.
    EptViolation {
        /// The GPA.
        gpa: u64,
    },
    /// The deadline passed.
    Timeout,
    /// The host asked for a pause ([`RunPlan::pause_after_entries`]): the vCPU is out of guest
    /// mode with its last exit served; [`run`] again resumes it with the answer kept in the
    /// report.
    Paused,
    /// The TD made a device request (TDG.VP.VMCALL, R10 != 0; these are its exposed registers)
    /// and the plan leaves those to the caller ([`DeviceRequests::Caller`]): it serves it, puts
    /// the answer in [`RunReport::answer`] and calls [`run`] again.
    DeviceRequest(Regs),
}

impl core::fmt::Display for Ended {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Ended::Stopped(Stop::Power(p)) => write!(f, "the TD asked for its end ({p:?})"),
            Ended::Stopped(Stop::FatalError(code)) => write!(f, "the TD reported a fatal error, code {code:#x}"),
            Ended::Halted => f.write_str("the TD halted with interrupts blocked"),
            Ended::Idle => f.write_str("the TD halted with no interrupt armed to wake it"),
            Ended::TripleFault => f.write_str("the TD's vCPU triple-faulted"),
            Ended::EptViolation { gpa } => write!(f, "the TD touched GPA {gpa:#x}, which the host does not serve"),
            Ended::Timeout => f.write_str("the TD ran past its deadline"),
            Ended::Paused => f.write_str("the host paused the run"),
            Ended::DeviceRequest(r) => write!(f, "the TD made device request {:#x}", r.r10),
        }
    }
}

/// How the host answers the TD's device requests (TDG.VP.VMCALL with R10 != 0, the requests of
/// [`crate::vmcall`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeviceRequests {
    /// This host has no device for the TD: every request is refused (INVALID_OPERAND).
    #[default]
    Refuse,
    /// A lying host: GET_TDI names this function id, a TDI it never bound to the TD (the TSM
    /// answers TDG.TDI.RD for it with TDI_NOT_PRESENT); every other request is refused.
    Phantom(u32),
    /// The caller serves them: the run returns [`Ended::DeviceRequest`] at each.
    Caller,
}

/// What the host does besides serving.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunPlan {
    /// The run ends at this time of the machine's clock.
    pub deadline_ns: u64,
    /// Typed into the console once the UEFI shell's prompt shows (at most 32 bytes).
    pub shell_command: Option<&'static [u8]>,
    /// How the TD's device requests are answered.
    pub device: DeviceRequests,
    /// A console line whose showing the run times ([`RunReport::marker_ns`]; at most 32 bytes):
    /// what a boot script on a disk prints, say.
    pub marker: Option<&'static [u8]>,
    /// Return [`Ended::Paused`] once this many entries' exits are served (the host's turn to
    /// do something between two of them, such as attack the running TD).
    pub pause_after_entries: Option<u64>,
}

/// What the run did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunReport {
    /// TDH.VP.ENTER calls.
    pub entries: u64,
    /// Timer interrupts posted (SEAMLESS.VP.POST), and those that merged with one pending.
    pub posted: u64,
    /// Posts that merged with a vector still requested.
    pub merged: u64,
    /// TDVMCALL<HLT>s the host waited out, and the time it waited.
    pub halts: u64,
    /// Nanoseconds the vCPU spent halted in the host.
    pub halted_ns: u64,
    /// Pages AUGed on the TD's demand (EPT violations of its ACCEPT).
    pub augs_on_demand: u64,
    /// Times the TSM's preemption timer ended the vCPU's time slice (external-interrupt exits).
    pub preempted: u64,
    /// Machine time of the first byte the TD wrote to its console.
    pub first_output_ns: Option<u64>,
    /// Machine time the UEFI shell's prompt showed.
    pub shell_ns: Option<u64>,
    /// Machine time the plan's marker showed.
    pub marker_ns: Option<u64>,
    /// VP.ENTER's registers of the last exit.
    pub last_exit: Regs,
    /// The answer the next VP.ENTER carries (kept across a pause).
    pub answer: Regs,
}

/// Runs vCPU `vcpu` of the TD `view` describes until it ends; see the module doc.
///
/// # Errors
/// [`HostError`] of a host call that failed (VP.ENTER, POST, AUG, MapGPA's), or
/// [`HostError::TdExit`] for a status VP.ENTER returned that is no TD exit.
pub fn run<H: Seamcall + HostMemory + ?Sized, M: Machine + ?Sized>(
    h: &mut H,
    m: &mut M,
    vcpu: u64,
    view: &TdView<'_>,
    ghci: &mut Ghci,
    plan: &RunPlan,
    report: &mut RunReport,
) -> Result<Ended, HostError> {
    let mut answer = core::mem::take(&mut report.answer);
    loop {
        let now = m.now_ns();
        if now >= plan.deadline_ns {
            return Ok(Ended::Timeout);
        }
        post_due(h, vcpu, ghci, now, report)?;
        milestones(ghci, plan, now, report);
        let r = raw(h, Regs { rax: leaf::VP_ENTER, rcx: vcpu, ..answer });
        report.entries += 1;
        report.last_exit = r;
        answer = Regs::default();
        match TdExit::from_host_regs(&r) {
            Some(TdExit::Vmcall { regs, .. }) if regs.r10 == 0 => match ghci.serve(h, m, view, &regs)? {
                Served::Answer(a) => answer = a,
                Served::Halt { blocked: true } => return Ok(Ended::Halted),
                Served::Halt { blocked: false } => {
                    let Some(due) = ghci.apic.next_deadline() else { return Ok(Ended::Idle) };
                    let start = m.now_ns();
                    m.wait_until(due.min(plan.deadline_ns));
                    report.halts += 1;
                    report.halted_ns += m.now_ns().saturating_sub(start);
                }
                Served::Stop(s) => return Ok(Ended::Stopped(s)),
            },
            Some(TdExit::Vmcall { regs, .. }) if plan.device == DeviceRequests::Caller => {
                // R10 != 0, a device request: the caller's.
                return Ok(Ended::DeviceRequest(regs));
            }
            Some(TdExit::Vmcall { regs, .. }) => {
                // R10 != 0: not a GHCI call but one of the device requests.
                answer = ghci.device_request(h, view, &regs, plan.device)?;
            }
            Some(TdExit::EptViolation { gpa, requested_level, .. }) => {
                let gpa = gpa.raw();
                let in_ram = view.ram.iter().any(|&(s, l)| (s..s.saturating_add(l)).contains(&gpa));
                if gpa & view.shared_bit != 0 || !in_ram {
                    return Ok(Ended::EptViolation { gpa });
                }
                // Unaccepted RAM the host had not AUGed: AUG it at the size the TD's ACCEPT
                // asked for, which then retries.
                let block = if requested_level == 1 { h.donate_2m() } else { None };
                match block {
                    Some(b) => aug(h, &view.td, gpa & !((2 << 20) - 1), 1, b)?,
                    None => {
                        let page = donate(h)?;
                        aug(h, &view.td, gpa & !0xFFF, 0, page)?;
                    }
                }
                report.augs_on_demand += 1;
            }
            Some(TdExit::TripleFault) => return Ok(Ended::TripleFault),
            Some(TdExit::ExternalInterrupt) => {
                // The TSM's preemption timer: the host's turn (ticks to post, the deadline).
                report.preempted += 1;
            }
            None if r.status() != Status::SUCCESS => {
                return Err(HostError::Call { leaf: "TDH.VP.ENTER", status: r.status(), rcx: r.rcx, rdx: r.rdx });
            }
            None => {
                let why = "VP.ENTER returned without a TD exit: the vCPU does not run in a TD world";
                return Err(HostError::TdExit { reason: r.rax, r10: r.r10, r11: r.r11, why });
            }
        }
        if plan.pause_after_entries == Some(report.entries) {
            report.answer = answer;
            return Ok(Ended::Paused);
        }
    }
}

/// Posts the timer's vector if a period passed.
fn post_due<H: Seamcall + ?Sized>(
    h: &mut H,
    vcpu: u64,
    ghci: &mut Ghci,
    now: u64,
    report: &mut RunReport,
) -> Result<(), HostError> {
    while let Some(vector) = ghci.apic.due(now) {
        let r = call(h, "SEAMLESS.VP.POST", Regs::call(leaf::VP_POST, vcpu, u64::from(vector), 0, 0))?;
        report.posted += 1;
        report.merged += r.rcx & 1;
    }
    Ok(())
}

/// Records the console milestones and types the shell command in once the prompt shows.
fn milestones(ghci: &mut Ghci, plan: &RunPlan, now: u64, report: &mut RunReport) {
    let console = &mut ghci.ports.console;
    if report.first_output_ns.is_none() && console.written > 0 {
        report.first_output_ns = Some(now);
    }
    if report.marker_ns.is_none() && plan.marker.is_some_and(|m| console.ends_with(m)) {
        report.marker_ns = Some(now);
    }
    if report.shell_ns.is_none() && console.ends_with(SHELL_PROMPT) {
        report.shell_ns = Some(now);
        if let Some(cmd) = plan.shell_command {
            console.type_in(cmd);
        }
    }
}

/// The vCPU's last moment as the host knows it, for a run that ended badly: its last exit
/// (decoded), how many entries led there, and the last bytes the TD wrote on its console. The
/// TD's own registers are not the host's to read (TDX gives them to the host of a debug TD
/// only, through TDH.VP.RD): the exit's registers are all of the vCPU the host prints.
#[derive(Clone, Copy, Debug)]
pub struct LastState<'a> {
    /// The run's report (its last exit and entry count).
    pub report: &'a RunReport,
    /// The last bytes the TD wrote to its console ([`super::ports::Console::tail`]).
    pub console: &'a [u8],
}

impl core::fmt::Display for LastState<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let r = &self.report.last_exit;
        write!(f, "last TD exit after {} entries: ", self.report.entries)?;
        match TdExit::from_host_regs(r) {
            Some(TdExit::Vmcall { mask, regs }) => write!(
                f,
                "TDG.VP.VMCALL (mask {mask:#x}) R10 {:#x} R11 {:#x} R12 {:#x} R13 {:#x} R14 {:#x} R15 {:#x}",
                regs.r10, regs.r11, regs.r12, regs.r13, regs.r14, regs.r15
            )?,
            Some(TdExit::EptViolation { gpa, requested_level, level, entry }) => write!(
                f,
                "EPT violation at GPA {:#x} (S-EPT entry {entry:#x} at level {level}, level {requested_level} asked)",
                gpa.raw()
            )?,
            Some(TdExit::TripleFault) => f.write_str("triple fault (the vCPU shut down)")?,
            Some(TdExit::ExternalInterrupt) => f.write_str("external interrupt (the TSM's preemption timer)")?,
            None => write!(f, "no TD exit (RAX {:#x})", r.rax)?,
        }
        f.write_str("; its console's last bytes \"")?;
        for &b in self.console {
            match b {
                b'\r' => f.write_str("\\r")?,
                b'\n' => f.write_str("\\n")?,
                b'"' | b'\\' => write!(f, "\\{}", char::from(b))?,
                0x20..=0x7E => write!(f, "{}", char::from(b))?,
                _ => write!(f, "\\x{b:02x}")?,
            }
        }
        f.write_str("\"")
    }
}

/// Tears the TD down whatever ended its run (the vCPUs kicked, every page it owns reclaimed,
/// the TDR last), then checks that every page the host ever donated reads free again; returns
/// how many that is.
///
/// # Errors
/// [`HostError`] of the first teardown call that fails, or [`HostError::Leaked`] naming the
/// first page the TSM still holds.
pub fn tear_down<H: Seamcall + HostMemory + ?Sized>(h: &mut H, td: &TdPages, vcpus: &[u64]) -> Result<u64, HostError> {
    flow_td::destroy(h, td.tdr, vcpus)?;
    flow_td::check_all_free(h)
}
