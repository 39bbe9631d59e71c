//! The device-exchange engine: the message-page protocol every resumable device call shares,
//! the one function that steps a PDEV's outstanding exchange, and the one function that records
//! a device fault against the exchange's owner.
//!
//! **Resumable calls.** RDX names a host page (the message page), R8 the length of the device's
//! answer in it. The first call of an operation passes R8 = 0; the TSM writes the first request
//! into the page and returns `DEVICE_REQUEST` with its length in R8. The host moves it through
//! the device's DOE mailbox, writes the answer into the page and calls the same leaf again with
//! R8 = the answer's length, until the call returns `SUCCESS` or an error. One exchange is
//! outstanding per device ([`crate::pdev::Exchange`]): any other device call on the PDEV
//! meanwhile is `OPERAND_BUSY`; an answer with nothing outstanding is `NO_REQUEST_OUTSTANDING`.
//!
//! ```text
//!  leaf: check its own operands and state ─▶ begin(p, Exchange) ─┐
//!  leaf: resume(p, Call, msg) = continue ─▶ communicate(p, msg) ──┤
//!                                                                 ▼
//!        advance: open the answer under the session (sealed flows; a failure is
//!                 ANSWER_NOT_AUTHENTIC and changes nothing) ─▶ step the flow ─▶
//!                 Send: seal, write the page, DEVICE_REQUEST
//!                 Done: complete (the flow's result committed to its owner), SUCCESS
//!                 Failed: device_fault (the owner, and what depends on it, to ERROR)
//! ```
//! An authentic answer that fails a check is the deliberate exception to "a failed call changes
//! nothing": the device said something the TSM cannot accept, so the object it concerned moves
//! to ERROR. That happens in [`Tsm::device_fault`] only, which is also the one place that
//! decides how far a fault reaches (`pdev_failed`, `tdi_failed`, `tdis_lost`).

use sha2::{Digest, Sha384};

use crate::abi::Regs;
use crate::addr::Pfn;
use crate::doe::{self, Action, DoeError, ObjectType};
use crate::error::{DeviceFault, TsmError, TsmResult};
use crate::pdev::{Exchange, Flow, Measure, Owner, PdevState, StreamState, MSG_BYTES};
use crate::platform::Platform;
use crate::spdm::chunk;
use crate::spdm::connect::{ConnectError, Stage};
use crate::spdm::later::{self, Later};
use crate::spdm::session::Session;
use crate::spdm::SpdmError;
use crate::status::{Operand, Status};
use crate::tdi::{MmioRange, Tdi, TdiDone, TdiOp, TdiState, REPORT_MAX};
use crate::tdisp::{InterfaceReport, MAX_RANGES};
use crate::Tsm;

/// The message page of a resumable call, and the bytes of the answer in it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Msg {
    pub(crate) page: Pfn,
    pub(crate) len: usize,
}

/// The resumable call a leaf makes: which outstanding exchange it may continue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Call {
    /// SPDM.CONNECT.
    Connect,
    /// SPDM.DISCONNECT.
    Disconnect,
    /// SPDM.MNG KEY_UPDATE.
    KeyUpdate,
    /// SPDM.MNG RECOLLECT.
    Recollect,
    /// SPDM.MNG HEARTBEAT.
    Heartbeat,
    /// IDE.STREAM.KM: continues the IDE_KM exchange of whichever stream it is.
    IdeKm,
    /// TDI.LOCK / START / STOP of the TDI in this slot.
    Tdi(usize, TdiCall),
}

/// The TDISP operation a TDI leaf carries out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TdiCall {
    Lock,
    Start,
    Stop,
}

impl Call {
    /// True if this call continues `x`.
    fn continues(self, x: &Exchange) -> bool {
        match (self, x.flow(), x.owner()) {
            (Call::Connect, Flow::Connect, _)
            | (Call::Disconnect, Flow::EndSession(_), _)
            | (Call::KeyUpdate, Flow::KeyUpdate(_), _)
            | (Call::Heartbeat, Flow::Heartbeat(_), _)
            | (Call::IdeKm, Flow::IdeKm(_), _) => true,
            (Call::Connect, Flow::Measure(m), _) => m.connecting,
            (Call::Recollect, Flow::Measure(m), _) => !m.connecting,
            (Call::Tdi(t, call), Flow::Tdisp(f), Owner::Tdi(owner)) => {
                t == owner
                    && matches!(
                        (call, f.op()),
                        (TdiCall::Lock, TdiOp::Lock { .. })
                            | (TdiCall::Start, TdiOp::Start)
                            | (TdiCall::Stop, TdiOp::Stop)
                    )
            }
            _ => false,
        }
    }
}

/// One step of a flow, its request copied out (and sealed, for a sealed flow).
enum Step {
    Send(usize),
    Done,
    Failed(DeviceFault),
    /// KEY_UPDATE's answer did not open under the keys it may use: the flow is as it was.
    NotAuthentic(SpdmError),
}

/// Copies a flow's action out, turning its error into the device fault it is.
fn settle<E>(action: Action<'_, E>, fault: fn(E) -> DeviceFault, out: &mut [u8; MSG_BYTES]) -> Step {
    match action {
        Action::Send(b) => match out.get_mut(..b.len()) {
            Some(dst) => {
                dst.copy_from_slice(b);
                Step::Send(b.len())
            }
            None => Step::Failed(DeviceFault::Spdm(SpdmError::Doe(DoeError::TooLarge { needed: b.len() }))),
        },
        Action::Done => Step::Done,
        Action::Failed(e) => Step::Failed(fault(e)),
    }
}

const fn same(f: DeviceFault) -> DeviceFault {
    f
}

/// Steps a measurement exchange. `Measurements` speaks DOE objects of the clear channel; inside
/// the session the engine seals and opens, so the plaintext answer is wrapped into an SPDM
/// object for it and its request unwrapped back to the SPDM message to seal. The bytes it
/// signs and keeps are the SPDM messages either way (L1 = VCA ‖ request ‖ response).
fn step_measure(m: &mut Measure, input: Option<&[u8]>, out: &mut [u8; MSG_BYTES]) -> Step {
    let fault = if m.connecting { connect_measure_fault } else { DeviceFault::Spdm };
    let mut object = [0u8; MSG_BYTES];
    let input = match input {
        Some(a) if m.in_session => match doe::encode(ObjectType::Spdm, a, &mut object) {
            Ok(n) => Some(&object[..n]),
            Err(e) => return Step::Failed(fault(SpdmError::Doe(e))),
        },
        a => a,
    };
    let action = match input {
        None => m.exchange.start(),
        Some(a) => m.exchange.step(a),
    };
    match action {
        Action::Send(b) if m.in_session => match doe::decode_as(b, ObjectType::Spdm) {
            Ok(msg) => settle(Action::<SpdmError>::Send(msg), fault, out),
            Err(e) => Step::Failed(fault(SpdmError::Doe(e))),
        },
        action => settle(action, fault, out),
    }
}

/// ERROR codes with which a responder refuses a request it does not take where it was sent
/// (DSP0274 1.2 Table 48).
const ERROR_UNEXPECTED_REQUEST: u8 = 0x04;
const ERROR_UNSUPPORTED_REQUEST: u8 = 0x07;

/// Reads `input` (the flow's answer: opened when `sealed`, else a clear DOE object) for ERROR
/// Busy and ResponseNotReady to the flow's last request ([`crate::spdm::later`]): `None` when
/// it is the flow's to step (its retries start over), else what to send instead, plain in
/// `plain` (the same request after Busy, RESPOND_IF_READY after ResponseNotReady), or the fault
/// of one retry too many or of a ResponseNotReady for another request.
fn come_back(x: &mut Exchange, input: Option<&[u8]>, sealed: bool, plain: &mut [u8; MSG_BYTES]) -> Option<Step> {
    if !x.retried_by_engine() {
        return None;
    }
    let answer = match input {
        Some(a) if sealed => a,
        Some(a) => doe::decode_as(a, ObjectType::Spdm).ok()?,
        None => return None,
    };
    let fault = x.spdm_fault();
    let (_, last) = x.parts_mut();
    last.wait_us = 0;
    let request = last.get()?;
    // Every response the TSM asks for here fits its DataTransferSize, or is too large to keep:
    // a device that wants to chunk one is refused by name (`spdm::chunk`).
    if chunk::large_response(request[0], answer).is_some() {
        return Some(Step::Failed(fault(SpdmError::UnexpectedLargeResponse)));
    }
    let later = match later::read(request, answer) {
        Ok(Later::Answer) => {
            last.retries.reset();
            return None;
        }
        Ok(l) => l,
        Err(e) => return Some(Step::Failed(fault(e))),
    };
    let mut retries = last.retries;
    if let Err(e) = retries.again(request, later) {
        return Some(Step::Failed(fault(e)));
    }
    let n = match later {
        Later::NotReady { token, .. } => {
            plain[..4].copy_from_slice(&later::respond_if_ready(request, token));
            4
        }
        _ => {
            plain[..request.len()].copy_from_slice(request);
            request.len()
        }
    };
    last.retries = retries;
    if let Later::NotReady { wait_us, .. } = later {
        last.wait_us = wait_us;
    }
    Some(Step::Send(n))
}

/// `message` sealed under `session` into `out`.
fn seal_with(session: Option<&mut Session>, message: &[u8], out: &mut [u8; MSG_BYTES]) -> Step {
    let Some(session) = session else { return Step::Failed(DeviceFault::Aborted) };
    match session.seal(message, out) {
        Ok(n) => Step::Send(n),
        Err(e) => Step::Failed(DeviceFault::Secured(e)),
    }
}

/// `message` framed as a clear SPDM DOE object into `out`.
fn frame(message: &[u8], out: &mut [u8; MSG_BYTES], fault: fn(SpdmError) -> DeviceFault) -> Step {
    match doe::encode(ObjectType::Spdm, message, out) {
        Ok(n) => Step::Send(n),
        Err(e) => Step::Failed(fault(SpdmError::Doe(e))),
    }
}

fn connect_measure_fault(e: SpdmError) -> DeviceFault {
    DeviceFault::Connect(ConnectError::Spdm(Stage::Measurements, e))
}

/// SPDM.CONNECT's RCX on success: the SPDM version negotiated (bits 7:0), whether the
/// measurements were taken inside the session (bit 8), and the HeartbeatPeriod the device asked
/// for in seconds (bits 23:16; 0: none), which the host keeps (the TSM has no clock).
fn connected_word(pdev: &crate::pdev::Pdev, in_session: bool) -> u64 {
    let period = pdev.session.as_ref().map_or(0, crate::spdm::session::Session::heartbeat_period);
    u64::from(pdev.version()) | u64::from(in_session) << 8 | u64::from(period) << 16
}

impl<P: Platform> Tsm<P> {
    /// The message page and answer length of a resumable call (RDX, R8).
    pub(crate) fn msg_operands(&self, rdx: u64, r8: u64) -> TsmResult<Msg> {
        let page = Self::page_operand(rdx, Operand::Rdx)?;
        let len = usize::try_from(r8).ok().filter(|&l| l <= MSG_BYTES).ok_or(TsmError::OperandInvalid(Operand::R8))?;
        self.host_page(page, Operand::Rdx)?;
        Ok(Msg { page, len })
    }

    /// Checks a call against PDEV `p`'s outstanding exchange: `Ok(true)` to continue it with
    /// the answer in the page, `Ok(false)` to start the call's own.
    ///
    /// # Errors
    /// `NO_REQUEST_OUTSTANDING` for an answer with nothing outstanding; `OPERAND_BUSY` for any
    /// call while another exchange is outstanding (on the TDI for another TDISP operation of the
    /// same TDI), or a fresh start (R8 = 0) while one is.
    pub(crate) fn resume(&self, p: usize, call: Call, msg: &Msg) -> TsmResult<bool> {
        match (&self.pdev(p)?.exchange, msg.len) {
            (None, 0) => Ok(false),
            (None, _) => Err(TsmError::NoRequestOutstanding),
            (Some(x), n) if n != 0 && call.continues(x) => Ok(true),
            (Some(x), n) if n != 0 && matches!(call, Call::Tdi(t, _) if x.owner() == Owner::Tdi(t)) => {
                Err(TsmError::Busy(Operand::Tdi))
            }
            (Some(_), _) => Err(TsmError::Busy(Operand::Pdev)),
        }
    }

    /// Starts exchange `x` on PDEV `p` (the leaf has checked everything): its first request.
    pub(crate) fn begin(&mut self, p: usize, x: Exchange, msg: &Msg, out: &mut Regs) -> TsmResult<Status> {
        self.pdev_mut(p)?.exchange = Some(x);
        self.advance(p, None, msg, out)
    }

    /// Continues PDEV `p`'s exchange with the device's answer in the message page.
    pub(crate) fn communicate(&mut self, p: usize, msg: &Msg, out: &mut Regs) -> TsmResult<Status> {
        // Copied once out of host memory; only the copy is read.
        let mut answer = [0u8; MSG_BYTES];
        self.platform.read_bytes(msg.page, 0, &mut answer[..msg.len]);
        self.advance(p, Some(&answer[..msg.len]), msg, out)
    }

    fn advance(&mut self, p: usize, answer: Option<&[u8]>, msg: &Msg, out: &mut Regs) -> TsmResult<Status> {
        let mut plain = [0u8; MSG_BYTES];
        let pdev = self.pdev_mut(p)?;
        let sealed = pdev.exchange.as_ref().ok_or(TsmError::Corrupt)?.sealed();
        let input = match answer {
            Some(a) if sealed => {
                let session = pdev.session.as_mut().ok_or(TsmError::Corrupt)?;
                Some(session.open(a, &mut plain).map_err(TsmError::AnswerNotAuthentic)?)
            }
            a => a,
        };
        // ALL CHECKS PASSED: an authentic answer (or none, to start) drives the flow.
        let mut request = [0u8; MSG_BYTES];
        match self.step_flow(p, input, &mut request)? {
            Step::Send(n) => {
                self.platform.write_bytes(msg.page, 0, &request[..n]);
                out.r8 = n as u64;
                let pdev = self.pdev(p)?;
                out.r9 = pdev.exchange.as_ref().map_or(0, |x| x.wait_us(&pdev.conn));
                Ok(Status::DEVICE_REQUEST)
            }
            Step::Done => self.complete(p, msg, out),
            Step::Failed(f) if self.measure_in_clear_instead(p, f) => self.advance(p, None, msg, out),
            Step::Failed(f) => Err(self.device_fault(p, f)),
            Step::NotAuthentic(e) => Err(TsmError::AnswerNotAuthentic(e)),
        }
    }

    /// SPDM.CONNECT's measurement policy (docs/protocols.md, "Where the device is measured"):
    /// the TSM measures the device inside the session it just established, as TDISP wants; a
    /// device that answers that GET_MEASUREMENTS with ERROR UnsupportedRequest or
    /// UnexpectedRequest (it takes the request, but not in a session: DSP0274 lets a responder
    /// support a request in one context only) is measured outside the session instead, in the
    /// clear, on the same connection: the same nonce (the device signed nothing with it), the
    /// same L1 = VCA ‖ GET_MEASUREMENTS ‖ MEASUREMENTS, signed by the leaf key that signed
    /// KEY_EXCHANGE_RSP, and the evidence and the report's device entry say "in the clear". Any
    /// other failure, and any failure of the clear exchange, fails the connection. Returns true
    /// if the exchange is now that clear measurement, to be started.
    fn measure_in_clear_instead(&mut self, p: usize, fault: DeviceFault) -> bool {
        let DeviceFault::Connect(ConnectError::Spdm(Stage::Measurements, SpdmError::Responder { code, .. })) = fault
        else {
            return false;
        };
        if code != ERROR_UNSUPPORTED_REQUEST && code != ERROR_UNEXPECTED_REQUEST {
            return false;
        }
        let Some(Some(pdev)) = self.pdevs.get_mut(p) else { return false };
        let in_session = matches!(
            pdev.exchange.as_ref().map(Exchange::flow),
            Some(Flow::Measure(Measure { in_session: true, connecting: true, .. }))
        );
        match pdev.conn.session_measurements() {
            Some(m) if in_session => {
                pdev.exchange = Some(Exchange::connect_measurements_in_clear(m));
                true
            }
            _ => false,
        }
    }

    /// Steps the flow with `input` (`None`: start it) and puts the request to send in `out`,
    /// sealed under the session for a sealed flow.
    fn step_flow(&mut self, p: usize, input: Option<&[u8]>, out: &mut [u8; MSG_BYTES]) -> TsmResult<Step> {
        let Self { pdevs, tdis, .. } = self;
        let pdev = pdevs.get_mut(p).and_then(Option::as_mut).ok_or(TsmError::Corrupt)?;
        let x = pdev.exchange.as_mut().ok_or(TsmError::Corrupt)?;
        let (owner, sealed) = (x.owner(), x.sealed());
        let mut plain = [0u8; MSG_BYTES];
        // Busy and ResponseNotReady are the engine's: the flow never sees them.
        if let Some(step) = come_back(x, input, sealed, &mut plain) {
            return Ok(match step {
                Step::Send(n) if sealed => seal_with(pdev.session.as_mut(), &plain[..n], out),
                Step::Send(n) => frame(&plain[..n], out, x.spdm_fault()),
                step => step,
            });
        }
        let buf = if sealed { &mut plain } else { &mut *out };
        let (flow, last) = x.parts_mut();
        let step = match (flow, owner) {
            (Flow::Connect, _) => {
                let action = match input {
                    None => pdev.conn.start(),
                    Some(a) => pdev.conn.step(a),
                };
                settle(action, DeviceFault::Connect, buf)
            }
            (Flow::Measure(m), _) => step_measure(m, input, buf),
            (Flow::KeyUpdate(ku), _) => match input {
                None => settle(ku.start(), DeviceFault::Spdm, buf),
                Some(a) => {
                    let saved = ku.clone();
                    match settle(ku.step(a), DeviceFault::Spdm, buf) {
                        // An answer the keys do not open is the host's or a replay.
                        Step::Failed(DeviceFault::Spdm(e @ SpdmError::Secured(_))) => {
                            *ku = saved;
                            Step::NotAuthentic(e)
                        }
                        step => step,
                    }
                }
            },
            (Flow::EndSession(e) | Flow::Heartbeat(e), _) => {
                let action = match input {
                    None => e.start(),
                    Some(a) => e.step(a),
                };
                settle(action, same, buf)
            }
            (Flow::IdeKm(f), Owner::Stream(s)) => {
                let stream = pdev.streams.get_mut(s).and_then(Option::as_mut).ok_or(TsmError::Corrupt)?;
                let action = match input {
                    None => f.start(),
                    Some(a) => f.step(a, &mut stream.rp),
                };
                settle(action, same, buf)
            }
            (Flow::Tdisp(f), Owner::Tdi(t)) => {
                let tdi = tdis.get_mut(t).and_then(Option::as_mut).ok_or(TsmError::Corrupt)?;
                let action = match input {
                    None => f.start(),
                    Some(a) => f.step(a, &mut tdi.report),
                };
                settle(action, same, buf)
            }
            (Flow::IdeKm(_) | Flow::Tdisp(_), _) => return Err(TsmError::Corrupt),
        };
        let Step::Send(n) = step else { return Ok(step) };
        if !sealed {
            // A clear measurement: its GET_MEASUREMENTS, unframed, is what a retry resends.
            last.set(doe::decode_as(&out[..n], ObjectType::Spdm).unwrap_or(&[]));
            return Ok(step);
        }
        last.set(&plain[..n]);
        Ok(seal_with(pdev.session.as_mut(), &plain[..n], out))
    }

    /// The exchange finished: its result is committed to its owner and the exchange ends.
    fn complete(&mut self, p: usize, msg: &Msg, out: &mut Regs) -> TsmResult<Status> {
        let x = self.pdev(p)?.exchange.as_ref().ok_or(TsmError::Corrupt)?;
        // The one result that is checked after the last answer: the interface report.
        let locked = match (x.owner(), x.flow()) {
            (Owner::Tdi(t), Flow::Tdisp(f)) => match f.done() {
                Some(TdiDone::Locked { nonce, report_len }) => Some((t, nonce, report_len)),
                _ => None,
            },
            _ => None,
        };
        if let Some((t, nonce, len)) = locked {
            return match self.checked_report(t, len) {
                Ok(ranges) => {
                    self.pdev_mut(p)?.exchange = None;
                    self.tdi_locked(t, nonce, len, ranges, msg, out)
                }
                Err(f) => Err(self.device_fault(p, f)),
            };
        }
        // ALL CHECKS PASSED: nothing below can fail but the device.
        let pdev = self.pdev_mut(p)?;
        let x = pdev.exchange.take().ok_or(TsmError::Corrupt)?;
        match (x.owner(), x.into_flow()) {
            (_, Flow::Connect) => {
                pdev.session = Some(pdev.conn.session().ok_or(TsmError::Corrupt)?.clone());
                // The session is up: the measurements it owes are taken inside it, in the same
                // resumable call.
                if let Some(m) = pdev.conn.session_measurements() {
                    pdev.exchange = Some(Exchange::connect_measurements(m));
                    return self.advance(p, None, msg, out);
                }
                let meas = pdev.conn.measurements().ok_or(TsmError::Corrupt)?;
                let digest = attest::evidence::transcript_digest(pdev.conn.vca(), meas);
                pdev.connected(digest, false)?;
                out.rcx = connected_word(pdev, false);
            }
            (_, Flow::Measure(m)) if m.connecting => {
                let meas = m.exchange.exchange().ok_or(TsmError::Corrupt)?;
                let digest = attest::evidence::transcript_digest(pdev.conn.vca(), meas);
                pdev.connected(digest, m.in_session)?;
                out.rcx = connected_word(pdev, m.in_session);
                pdev.measured = Some(m.exchange);
            }
            (_, Flow::EndSession(_)) => {
                pdev.state = PdevState::Stopped;
                pdev.session = None;
            }
            (_, Flow::KeyUpdate(ku)) => pdev.session = ku.into_session(),
            // The device is alive and in step: nothing to record.
            (_, Flow::Heartbeat(_)) => {}
            (_, Flow::Measure(m)) => {
                if !pdev.recollect_done(m.exchange) {
                    return Err(TsmError::Corrupt);
                }
            }
            (Owner::Stream(s), Flow::IdeKm(f)) => {
                let stream = pdev.streams.get_mut(s).and_then(Option::as_mut).ok_or(TsmError::Corrupt)?;
                stream.state =
                    if f.op() == crate::pdev::KmOp::Stop { StreamState::Stopped } else { StreamState::Secure };
                stream.key_set_1 = f.key_set_1();
            }
            (Owner::Tdi(t), Flow::Tdisp(f)) => match f.done() {
                Some(TdiDone::Started) => self.tdi_mut(t)?.state = TdiState::Run,
                Some(TdiDone::Stopped) => self.tdi_unlocked(t)?,
                Some(TdiDone::Locked { .. }) | None => return Err(TsmError::Corrupt),
            },
            (_, Flow::IdeKm(_) | Flow::Tdisp(_)) => return Err(TsmError::Corrupt),
        }
        Ok(Status::SUCCESS)
    }

    /// The locked report of TDI `t` (`len` bytes), parsed and turned into host frames.
    fn checked_report(&self, t: usize, len: usize) -> Result<([MmioRange; MAX_RANGES], usize), DeviceFault> {
        let tdi = self.tdi(t).map_err(|_| DeviceFault::Aborted)?;
        let report = &tdi.report[..len.min(REPORT_MAX)];
        let parsed = InterfaceReport::parse(report).map_err(DeviceFault::Report)?;
        Tdi::host_ranges(&parsed, tdi.reporting_offset).map_err(DeviceFault::Report)
    }

    /// TDI `t` is CONFIG_LOCKED with its checked report: the report goes to the message page
    /// for the host to hand to the guest, with the lock generation.
    fn tdi_locked(
        &mut self,
        t: usize,
        nonce: [u8; 32],
        len: usize,
        (ranges, count): ([MmioRange; MAX_RANGES], usize),
        msg: &Msg,
        out: &mut Regs,
    ) -> TsmResult<Status> {
        let tdi = self.tdi_mut(t)?;
        let len = len.min(REPORT_MAX);
        tdi.report_digest = Sha384::digest(&tdi.report[..len]).into();
        tdi.report_len = len;
        tdi.ranges = ranges;
        tdi.range_count = count;
        tdi.nonce = nonce;
        tdi.generation = tdi.generation.wrapping_add(1);
        tdi.authorised = None;
        tdi.state = TdiState::Locked;
        let generation = tdi.generation;
        let mut copy = [0u8; REPORT_MAX];
        copy[..len].copy_from_slice(&tdi.report[..len]);
        self.platform.write_bytes(msg.page, 0, &copy[..len]);
        out.r8 = len as u64;
        out.rcx = u64::from(generation);
        Ok(Status::SUCCESS)
    }

    // ---- faults -----------------------------------------------------------------------------

    /// Records `fault` of PDEV `p`'s outstanding exchange against its owner, ends the exchange,
    /// and returns the call's error:
    /// - the PDEV's own exchange (CONNECT, END_SESSION, KEY_UPDATE, HEARTBEAT: a heartbeat the
    ///   device answers wrongly is its fault): the PDEV goes to ERROR
    ///   ([`Tsm::pdev_failed`]); a failed RECOLLECT only drops the re-collection, since the old
    ///   evidence still holds and the answer, in the clear, cannot be told from the host's;
    /// - a stream's IDE_KM: its keys are in an unknown state, so the stream goes to ERROR, and
    ///   every TDI locked or running over it ([`Tsm::tdis_lost`]);
    /// - a TDI's TDISP: the TDI goes to ERROR ([`Tsm::tdi_failed`]).
    pub(crate) fn device_fault(&mut self, p: usize, fault: DeviceFault) -> TsmError {
        let Some(Some(pdev)) = self.pdevs.get_mut(p) else { return TsmError::Corrupt };
        let Some(x) = pdev.exchange.as_ref() else { return TsmError::Corrupt };
        let (owner, recollect) = (x.owner(), matches!(x.flow(), Flow::Measure(m) if !m.connecting));
        pdev.exchange = None;
        match owner {
            Owner::Pdev if recollect => TsmError::Device(Operand::Pdev, fault),
            Owner::Pdev => self.pdev_failed(p, fault),
            Owner::Stream(s) => {
                let id = pdev.streams.get_mut(s).and_then(Option::as_mut).map(|stream| {
                    stream.state = StreamState::Error;
                    stream.id
                });
                if let Some(id) = id {
                    self.tdis_lost(p, Some(id), fault);
                }
                TsmError::Device(Operand::IdeStream, fault)
            }
            Owner::Tdi(t) => {
                self.tdi_failed(t, fault);
                TsmError::Device(Operand::Tdi, fault)
            }
        }
    }

    /// SPDM.MNG ABORT: the host abandoned PDEV `p`'s exchange. What the device did is unknown,
    /// so the owner takes the fault, and the PDEV too (its session cannot be trusted to be in
    /// step any more).
    ///
    /// # Errors
    /// `NO_REQUEST_OUTSTANDING` if nothing is outstanding.
    pub(crate) fn abort_exchange(&mut self, p: usize) -> TsmResult<Status> {
        if self.pdev(p)?.exchange.is_none() {
            return Err(TsmError::NoRequestOutstanding);
        }
        // ALL CHECKS PASSED: nothing below can fail.
        self.device_fault(p, DeviceFault::Aborted);
        self.pdev_failed(p, DeviceFault::Aborted);
        Ok(Status::SUCCESS)
    }

    /// Moves the PDEV to ERROR with `fault`; the session and any exchange are dropped. Without
    /// the session the device's IDE keys and its locked interfaces are gone too (TDISP: the DSM
    /// makes the session's streams insecure and its TDIs ERROR): live streams go to ERROR and
    /// every TDI locked or running through the PDEV to ERROR, its MMIO and DMA blocked.
    pub(crate) fn pdev_failed(&mut self, p: usize, fault: DeviceFault) -> TsmError {
        if let Some(Some(pdev)) = self.pdevs.get_mut(p) {
            pdev.state = PdevState::Error;
            pdev.exchange = None;
            pdev.session = None;
            pdev.fault = Some(fault);
            for stream in pdev.streams.iter_mut().flatten().filter(|s| s.state == StreamState::Secure) {
                stream.state = StreamState::Error;
            }
        }
        self.tdis_lost(p, None, fault);
        TsmError::Device(Operand::Pdev, fault)
    }

    /// Moves a TDI to ERROR: its exchange (if outstanding) and nonce are dropped, every MMIO
    /// mapping is blocked and the DMA entry blocked. Nothing is freed: that waits for STOP and
    /// tracking.
    pub(crate) fn tdi_failed(&mut self, t: usize, fault: DeviceFault) {
        let Some(Some(tdi)) = self.tdis.get_mut(t) else { return };
        tdi.state = TdiState::Error;
        tdi.fault = Some(fault);
        tdi.nonce = [0; 32];
        tdi.authorised = None;
        let p = tdi.pdev;
        // DMA stops at once: the entry's present bit is cleared and the IOTLB invalidated.
        self.cut_dma(t);
        if let Some(Some(pdev)) = self.pdevs.get_mut(p) {
            if pdev.exchange.as_ref().is_some_and(|x| x.owner() == Owner::Tdi(t)) {
                pdev.exchange = None;
            }
        }
        for r in 0..MAX_RANGES {
            self.block_range(t, r);
        }
    }

    /// What a TDI depends on is gone: every TDI of PDEV `p` that is CONFIG_LOCKED or RUN (over
    /// the IDE stream with ID `stream`, if one is named) goes to ERROR through
    /// [`Tsm::tdi_failed`], its MMIO and DMA blocked. The device does the same on its side: TDISP
    /// moves a locked or running TDI to ERROR when an IDE stream it is bound to goes insecure or
    /// its SPDM session ends (the DSM rules of TDISP, PCIe 6.x ch. 11). Every path that takes live
    /// keys from a stream (KM STOP, a failed KM exchange, STREAM.BLOCK) or the session from a
    /// PDEV (`pdev_failed`: a failed KEY_UPDATE, ABORT, any failed secured answer) ends here.
    pub(crate) fn tdis_lost(&mut self, p: usize, stream: Option<u8>, fault: DeviceFault) {
        for t in 0..self.tdis.len() {
            let hit = matches!(&self.tdis[t], Some(tdi) if tdi.pdev == p
                && stream.is_none_or(|id| tdi.stream == id)
                && matches!(tdi.state, TdiState::Locked | TdiState::Run));
            if hit {
                self.tdi_failed(t, fault);
            }
        }
    }

    /// True if TDI `t` has a TDISP exchange outstanding.
    pub(crate) fn tdi_exchanging(&self, tdi: &Tdi, t: usize) -> bool {
        let pdev = self.pdevs.get(tdi.pdev).and_then(Option::as_ref);
        pdev.and_then(|p| p.exchange.as_ref()).is_some_and(|x| x.owner() == Owner::Tdi(t))
    }
}
