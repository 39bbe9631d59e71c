//! Host leaves of the PDEV (SPDM.CREATE, CONNECT, DISCONNECT, MNG, DELETE) and of its IDE
//! streams (IDE.STREAM.CREATE, KM, BLOCK, DELETE), and the message-page protocol every resumable
//! device call shares.
//!
//! **Resumable calls.** RDX names a host page (the message page), R8 the length of the device's
//! answer in it. The first call of an operation passes R8 = 0; the TSM writes the first request
//! into the page and returns `DEVICE_REQUEST` with its length in R8. The host moves it through
//! the device's DOE mailbox, writes the answer into the page and calls the same leaf again with
//! R8 = the answer's length, until the call returns `SUCCESS` or an error. One request is
//! outstanding per device: any other device call on the PDEV meanwhile is `OPERAND_BUSY`; an
//! answer with nothing outstanding is `NO_REQUEST_OUTSTANDING`. An answer that does not open
//! under the session keys is `ANSWER_NOT_AUTHENTIC` and changes nothing; an authentic answer
//! that fails a check is `DEVICE_ERROR` and moves the object to ERROR (RCX: the step).

use crate::abi::{LeafSpec, Reg, Regs};
use crate::addr::Pfn;
use crate::doe::Action;
use crate::error::{DeviceFault, TsmError, TsmResult};
use crate::ide::RootPortStream;
use crate::pamt::{PageType, PamtEntry};
use crate::pdev::km::KeyMaterial;
use crate::pdev::{
    self, IdeStream, KmFlow, KmNext, KmOp, Pdev, PdevEvidence, PdevState, Pending, StreamState, MSG_BYTES, PLAIN_BYTES,
};
use crate::platform::Platform;
use crate::spdm::connect::{Connect, ConnectRandom};
use crate::spdm::SpdmError;
use crate::status::{Operand, Status};
use crate::tdi::TdiState;
use crate::Tsm;

use super::rows::*;

use super::host::leaf;
use super::host::HostLeaf;

/// SPDM.MNG operations (TDX's numbering; HEARTBEAT = 0 is not offered).
#[allow(missing_docs)]
pub mod mng {
    pub const KEY_UPDATE: u64 = 1;
    pub const RECOLLECT: u64 = 2;
    pub const ABORT: u64 = 3;
}

const PDEV_RCX: [(Status, &str); 3] = [
    (Status::OPERAND_INVALID, "RCX not a 4K-aligned address"),
    (Status::OPERAND_ADDR_RANGE_ERROR, "RCX outside the TDMRs"),
    (Status::PAGE_METADATA_INCORRECT, "RCX is not a PDEV page"),
];
const MSG_OUT: (Reg, &str) = (Reg::R8, "DEVICE_REQUEST: bytes of the request written to the message page");
const MSG_ERRORS: [(Status, &str); 4] = [
    (Status::OPERAND_INVALID, "RDX not 4K aligned, or R8 above 4096"),
    (Status::OPERAND_ADDR_RANGE_ERROR, "RDX not host memory the TSM may use"),
    (Status::PAGE_METADATA_INCORRECT, "RDX a page the TSM or a TD owns"),
    (Status::NO_REQUEST_OUTSTANDING, "R8 non-zero but nothing is outstanding"),
];
const BUSY: (Status, &str) =
    (Status::OPERAND_BUSY, "another request of the device is outstanding, or R8 = 0 while this one is");
const DEVICE: [(Status, &str); 3] = [
    (Status::DEVICE_REQUEST, "not an error: move R8 bytes to the device, call again with its answer"),
    (Status::ANSWER_NOT_AUTHENTIC, "the answer does not open under the session keys; nothing changed"),
    (Status::DEVICE_ERROR, "the device's answer failed a check; the object is now ERROR (RCX: step)"),
];

/// The message page of a resumable call, and the bytes of the answer in it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Msg {
    pub(crate) page: Pfn,
    pub(crate) len: usize,
}

/// A device answer moved out of host memory (copied once, then only the copy is read).
pub(crate) struct Answer {
    pub(crate) bytes: [u8; MSG_BYTES],
    pub(crate) len: usize,
}

impl Answer {
    pub(crate) fn get(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl<P: Platform> Tsm<P> {
    pub(crate) const SPDM_CREATE: HostLeaf<P> = HostLeaf {
        spec: LeafSpec {
            number: leaf::SPDM_CREATE,
            name: "TDH.SPDM.CREATE",
            summary: "Creates the PDEV of a device function: the TSM's SPDM context for it, identified by a donated control page.",
            inputs: &[(Reg::Rcx, "page to donate (the PDEV page)"), (Reg::Rdx, "function id: RID (15:0), segment (23:16) if segment valid (24)")],
            outputs: &[],
            requires: "-",
            errors: &[
                SYS,
                (Status::OPERAND_INVALID, "RCX not a 4K-aligned address"),
                (Status::OPERAND_ADDR_RANGE_ERROR, "RCX outside the TDMRs"),
                (Status::PAGE_NOT_FREE, "RCX page not free"),
                (Status::OPERAND_INVALID, "RDX reserved bits set, or a segment without the segment-valid bit"),
                (Status::FUNCTION_IN_USE, "the function (however its segment is spelt) already has a PDEV"),
                (Status::DEVICE_SLOTS_EXHAUSTED, "every PDEV slot in use"),
            ],
        },
        handler: Self::spdm_create,
    };

    pub(crate) const SPDM_DELETE: HostLeaf<P> = HostLeaf {
        spec: LeafSpec {
            number: leaf::SPDM_DELETE,
            name: "TDH.SPDM.DELETE",
            summary: "Deletes a PDEV; its page goes back to the host, zeroed.",
            inputs: &[(Reg::Rcx, "PDEV page")],
            outputs: &[(Reg::Rcx, "the page released")],
            requires: "PDEV NEW, STOPPED or ERROR; nothing outstanding; no IDE stream; no TDI.",
            errors: &[
                SYS,
                PDEV_RCX[0],
                PDEV_RCX[1],
                PDEV_RCX[2],
                (Status::OPERAND_BUSY, "a request of the device is outstanding"),
                (Status::PDEV_STATE_INCORRECT, "PDEV CONNECTED (disconnect first)"),
                (Status::PDEV_HAS_IDE_STREAMS, "an IDE stream remains"),
                (Status::PDEV_HAS_TDIS, "a TDI remains"),
            ],
        },
        handler: Self::spdm_delete,
    };

    pub(crate) const IDE_STREAM_CREATE: HostLeaf<P> = HostLeaf {
        spec: LeafSpec {
            number: leaf::IDE_STREAM_CREATE,
            name: "TDH.IDE.STREAM.CREATE",
            summary: "Creates a selective IDE stream between the root port and the device (root-port side modelled as a register block), without keys.",
            inputs: &[(Reg::Rcx, "PDEV page"), (Reg::Rdx, "stream ID (7:0)")],
            outputs: &[(Reg::Rcx, "stream index in the PDEV")],
            requires: "PDEV CONNECTED.",
            errors: &[
                SYS,
                PDEV_RCX[0],
                PDEV_RCX[1],
                PDEV_RCX[2],
                (Status::OPERAND_INVALID, "RDX above 255"),
                (Status::PDEV_STATE_INCORRECT, "PDEV not CONNECTED"),
                (Status::FUNCTION_IN_USE, "the stream ID is in use on this PDEV"),
                (Status::DEVICE_SLOTS_EXHAUSTED, "every stream slot of the PDEV in use"),
            ],
        },
        handler: Self::ide_stream_create,
    };

    pub(crate) const IDE_STREAM_BLOCK: HostLeaf<P> = HostLeaf {
        spec: LeafSpec {
            number: leaf::IDE_STREAM_BLOCK,
            name: "TDH.IDE.STREAM.BLOCK",
            summary: "Stops the stream at the root port: traffic stops and every key is cleared. A TDI locked or running over it goes to ERROR and its mappings are blocked.",
            inputs: &[(Reg::Rcx, "PDEV page"), (Reg::Rdx, "stream index")],
            outputs: &[],
            requires: "The stream exists; no IDE_KM exchange on it outstanding.",
            errors: &[
                SYS,
                PDEV_RCX[0],
                PDEV_RCX[1],
                PDEV_RCX[2],
                (Status::OPERAND_INVALID, "RDX names no stream"),
                (Status::OPERAND_BUSY, "an IDE_KM exchange on the stream is outstanding"),
            ],
        },
        handler: Self::ide_stream_block,
    };

    pub(crate) const IDE_STREAM_DELETE: HostLeaf<P> = HostLeaf {
        spec: LeafSpec {
            number: leaf::IDE_STREAM_DELETE,
            name: "TDH.IDE.STREAM.DELETE",
            summary: "Deletes a blocked stream.",
            inputs: &[(Reg::Rcx, "PDEV page"), (Reg::Rdx, "stream index")],
            outputs: &[],
            requires: "Stream BLOCKED.",
            errors: &[
                SYS,
                PDEV_RCX[0],
                PDEV_RCX[1],
                PDEV_RCX[2],
                (Status::OPERAND_INVALID, "RDX names no stream"),
                (Status::IDE_STREAM_STATE_INCORRECT, "the stream is not BLOCKED"),
            ],
        },
        handler: Self::ide_stream_delete,
    };

    pub(crate) const IDE_STREAM_KM: HostLeaf<P> = HostLeaf {
        spec: LeafSpec {
            number: leaf::IDE_STREAM_KM,
            name: "TDH.IDE.STREAM.KM",
            summary: "Resumable IDE_KM over the PDEV's session. SETUP: QUERY, KEY_PROG of a fresh key per slot (six: RX/TX × PR/NPR/CPL), K_SET_GO of each; REFRESH: the other key set, GO, then STOP of the old; STOP: K_SET_STOP of each slot. The root port's slot is programmed as the device acknowledges it. A stream without live keys carries no TDI: STOP first moves every TDI locked or running over the stream to ERROR (its MMIO and DMA blocked; TDISP does the same when a bound stream goes insecure), and a failed exchange puts the stream and those TDIs in ERROR.",
            inputs: &[(Reg::Rcx, "PDEV page"), MSG_IN[0], MSG_IN[1], (Reg::R9, "stream index (7:0), operation (15:8): 0 SETUP, 1 REFRESH, 2 STOP")],
            outputs: &[MSG_OUT],
            requires: "PDEV CONNECTED. SETUP: stream CREATED or STOPPED; REFRESH, STOP: stream SECURE.",
            errors: &[
                SYS,
                PDEV_RCX[0],
                PDEV_RCX[1],
                PDEV_RCX[2],
                MSG_ERRORS[0],
                MSG_ERRORS[1],
                MSG_ERRORS[2],
                BUSY,
                MSG_ERRORS[3],
                (Status::OPERAND_INVALID, "R9: no such stream or operation"),
                (Status::PDEV_STATE_INCORRECT, "PDEV not CONNECTED"),
                (Status::IDE_STREAM_STATE_INCORRECT, "the stream's state does not allow the operation"),
                (Status::RND_NO_ENTROPY, "no entropy for the keys"),
                DEVICE[0],
                DEVICE[1],
                DEVICE[2],
            ],
        },
        handler: Self::ide_stream_km,
    };

    pub(crate) const SPDM_CONNECT: HostLeaf<P> = HostLeaf {
        spec: LeafSpec {
            number: leaf::SPDM_CONNECT,
            name: "TDH.SPDM.CONNECT",
            summary: "Resumable SPDM connection: DOE discovery, VERSION / CAPABILITIES / ALGORITHMS, DIGESTS and CERTIFICATE (chain checked, leaf key kept), CHALLENGE, signed MEASUREMENTS of every index, KEY_EXCHANGE / FINISH. On success the PDEV is CONNECTED and keeps the evidence (chain, measurement transcript and their SHA-384).",
            inputs: &[(Reg::Rcx, "PDEV page"), MSG_IN[0], MSG_IN[1]],
            outputs: &[MSG_OUT],
            requires: "PDEV NEW.",
            errors: &[
                SYS,
                PDEV_RCX[0],
                PDEV_RCX[1],
                PDEV_RCX[2],
                MSG_ERRORS[0],
                MSG_ERRORS[1],
                MSG_ERRORS[2],
                BUSY,
                MSG_ERRORS[3],
                (Status::PDEV_STATE_INCORRECT, "PDEV not NEW"),
                (Status::RND_NO_ENTROPY, "no entropy for nonces and the ephemeral key"),
                DEVICE[0],
                DEVICE[2],
            ],
        },
        handler: Self::spdm_connect,
    };

    pub(crate) const SPDM_DISCONNECT: HostLeaf<P> = HostLeaf {
        spec: LeafSpec {
            number: leaf::SPDM_DISCONNECT,
            name: "TDH.SPDM.DISCONNECT",
            summary: "Resumable END_SESSION: the session's keys are dropped once the device acknowledges; the PDEV is STOPPED.",
            inputs: &[(Reg::Rcx, "PDEV page"), MSG_IN[0], MSG_IN[1]],
            outputs: &[MSG_OUT],
            requires: "PDEV CONNECTED; no TDI LOCKED or RUN; no stream SECURE.",
            errors: &[
                SYS,
                PDEV_RCX[0],
                PDEV_RCX[1],
                PDEV_RCX[2],
                MSG_ERRORS[0],
                MSG_ERRORS[1],
                MSG_ERRORS[2],
                BUSY,
                MSG_ERRORS[3],
                (Status::PDEV_STATE_INCORRECT, "PDEV not CONNECTED"),
                (Status::TDI_STATE_INCORRECT, "a TDI of the PDEV is LOCKED or RUN"),
                (Status::IDE_STREAM_STATE_INCORRECT, "a stream still holds live keys (KM STOP first)"),
                DEVICE[0],
                DEVICE[1],
                DEVICE[2],
            ],
        },
        handler: Self::spdm_disconnect,
    };

    pub(crate) const SPDM_MNG: HostLeaf<P> = HostLeaf {
        spec: LeafSpec {
            number: leaf::SPDM_MNG,
            name: "TDH.SPDM.MNG",
            summary: "Session management, resumable. 1 KEY_UPDATE: KEY_UPDATE(UpdateAllKeys) then VerifyNewKey: both directions move to the next keys (an answer under keys it should not use is refused and changes nothing; an authentic answer that fails ends the session: the PDEV, its live streams and its locked or running TDIs go to ERROR). 2 RECOLLECT: fresh signed GET_MEASUREMENTS of every index with a new nonce; on success the evidence binds the new transcript, on failure the old evidence stays. 3 ABORT: abandons the outstanding exchange (a lost or late answer); what the device did is unknown, so the PDEV goes to ERROR (and the TDI or stream whose exchange it was); no device traffic.",
            inputs: &[(Reg::Rcx, "PDEV page"), MSG_IN[0], MSG_IN[1], (Reg::R9, "operation: 1 KEY_UPDATE, 2 RECOLLECT, 3 ABORT")],
            outputs: &[MSG_OUT],
            requires: "KEY_UPDATE, RECOLLECT: PDEV CONNECTED. ABORT: a request outstanding.",
            errors: &[
                SYS,
                PDEV_RCX[0],
                PDEV_RCX[1],
                PDEV_RCX[2],
                (Status::OPERAND_INVALID, "R9 not a supported operation"),
                (Status::NO_REQUEST_OUTSTANDING, "ABORT with nothing outstanding"),
                MSG_ERRORS[0],
                MSG_ERRORS[1],
                MSG_ERRORS[2],
                BUSY,
                MSG_ERRORS[3],
                (Status::PDEV_STATE_INCORRECT, "PDEV not CONNECTED, or the device does not offer KEY_UPD"),
                (Status::RND_NO_ENTROPY, "no entropy for the tags or the nonce"),
                DEVICE[0],
                DEVICE[1],
                DEVICE[2],
            ],
        },
        handler: Self::spdm_mng,
    };

    // ---- lookups ----------------------------------------------------------------------------

    /// The slot of the PDEV whose page an operand names.
    pub(crate) fn pdev_index(&self, raw: u64, op: Operand) -> TsmResult<usize> {
        let pfn = Self::page_operand(raw, op)?;
        let e = self.pamt_of(pfn, op)?;
        if e.ty != PageType::Pdev {
            return Err(TsmError::PageMetadata(op));
        }
        let idx = usize::from(e.aux);
        match self.pdevs.get(idx) {
            Some(Some(p)) if p.page == pfn => Ok(idx),
            _ => Err(TsmError::Corrupt),
        }
    }

    pub(crate) fn pdev(&self, idx: usize) -> TsmResult<&Pdev> {
        self.pdevs.get(idx).and_then(Option::as_ref).ok_or(TsmError::Corrupt)
    }

    pub(crate) fn pdev_mut(&mut self, idx: usize) -> TsmResult<&mut Pdev> {
        self.pdevs.get_mut(idx).and_then(Option::as_mut).ok_or(TsmError::Corrupt)
    }

    /// The message page and answer length of a resumable call (RDX, R8).
    pub(crate) fn msg_operands(&self, rdx: u64, r8: u64) -> TsmResult<Msg> {
        let page = Self::page_operand(rdx, Operand::Rdx)?;
        let len = usize::try_from(r8).ok().filter(|&l| l <= MSG_BYTES).ok_or(TsmError::OperandInvalid(Operand::R8))?;
        self.host_page(page, Operand::Rdx)?;
        Ok(Msg { page, len })
    }

    /// Checks the call against the PDEV's outstanding request: `Ok(true)` to continue `mine`
    /// with the answer, `Ok(false)` to start it.
    pub(crate) fn resume(pdev: &Pdev, mine: Pending, msg: &Msg) -> TsmResult<bool> {
        match pdev.pending {
            Pending::None if msg.len == 0 => Ok(false),
            Pending::None => Err(TsmError::NoRequestOutstanding),
            p if p == mine && msg.len != 0 => Ok(true),
            _ => Err(TsmError::Busy(Operand::Pdev)),
        }
    }

    /// Copies the device's answer out of the message page.
    pub(crate) fn read_answer(&self, msg: &Msg) -> Answer {
        let mut a = Answer { bytes: [0; MSG_BYTES], len: msg.len };
        self.platform.read_bytes(msg.page, 0, &mut a.bytes[..msg.len]);
        a
    }

    /// Writes a request to the message page: `DEVICE_REQUEST` with its length in R8.
    pub(crate) fn send_request(&mut self, msg: &Msg, request: &[u8], out: &mut Regs) -> Status {
        self.platform.write_bytes(msg.page, 0, request);
        out.r8 = request.len() as u64;
        Status::DEVICE_REQUEST
    }

    /// Seals a plaintext message for the PDEV's session into `obj`.
    pub(crate) fn seal_for(&mut self, p: usize, plain: &[u8], obj: &mut [u8; MSG_BYTES]) -> Result<usize, DeviceFault> {
        let Some(Some(pdev)) = self.pdevs.get_mut(p) else { return Err(DeviceFault::Aborted) };
        let Some(session) = pdev.session.as_mut() else { return Err(DeviceFault::Aborted) };
        pdev::seal(session, plain, obj)
    }

    /// Opens the answer under the PDEV's session into `plain`. A failure changes nothing.
    pub(crate) fn open_answer<'b>(&mut self, p: usize, answer: &Answer, plain: &'b mut [u8]) -> TsmResult<&'b [u8]> {
        let pdev = self.pdev_mut(p)?;
        let session = pdev.session.as_mut().ok_or(TsmError::Corrupt)?;
        session.open(answer.get(), plain).map_err(TsmError::AnswerNotAuthentic)
    }

    /// Moves the PDEV to ERROR with `fault`; the session is dropped. Without the session the
    /// device's IDE keys and its locked interfaces are gone too (TDISP: the DSM makes the
    /// session's streams insecure and its TDIs ERROR): live streams go to ERROR and every TDI
    /// locked or running through the PDEV to ERROR, its MMIO and DMA blocked.
    pub(crate) fn pdev_failed(&mut self, p: usize, fault: DeviceFault) -> TsmError {
        if let Some(Some(pdev)) = self.pdevs.get_mut(p) {
            pdev.state = PdevState::Error;
            pdev.pending = Pending::None;
            pdev.session = None;
            pdev.fault = Some(fault);
            for stream in pdev.streams.iter_mut().flatten().filter(|s| s.state == StreamState::Secure) {
                stream.state = StreamState::Error;
            }
        }
        self.tdis_lost(p, None, fault);
        TsmError::Device(Operand::Pdev, fault)
    }

    fn function_operand(raw: u64, op: Operand) -> TsmResult<u32> {
        pdev::requester(raw).ok_or(TsmError::OperandInvalid(op))?;
        Ok(raw as u32)
    }

    // ---- PDEV -------------------------------------------------------------------------------

    fn spdm_create(&mut self, regs: &Regs, _out: &mut Regs) -> TsmResult<Status> {
        self.sys()?;
        let page = self.donated_page(regs.rcx, Operand::Rcx)?;
        let function = Self::function_operand(regs.rdx, Operand::Rdx)?;
        let requester = pdev::requester(u64::from(function));
        if self.pdevs.iter().flatten().any(|p| pdev::requester(u64::from(p.function)) == requester) {
            return Err(TsmError::FunctionInUse(Operand::Rdx));
        }
        let slot = self.pdevs.iter().position(Option::is_none).ok_or(TsmError::DeviceSlotsExhausted)?;
        // ALL CHECKS PASSED: nothing below can fail.
        self.platform.zero(page);
        self.set_meta(page, PamtEntry { aux: slot as u8, ..PamtEntry::owned(PageType::Pdev, page) });
        self.pdevs[slot] = Some(Pdev {
            page,
            function,
            state: PdevState::New,
            conn: Connect::new(ConnectRandom {
                challenge_nonce: [0; 32],
                measurement_nonce: [0; 32],
                context: [0; 8],
                ephemeral: [0; 48],
                random: [0; 32],
            }),
            session: None,
            evidence: None,
            pending: Pending::None,
            streams: core::array::from_fn(|_| None),
            tdis: 0,
            fault: None,
            key_update: None,
            remeasure: None,
            remeasured: None,
        });
        Ok(Status::SUCCESS)
    }

    fn spdm_delete(&mut self, regs: &Regs, out: &mut Regs) -> TsmResult<Status> {
        self.sys()?;
        let p = self.pdev_index(regs.rcx, Operand::Rcx)?;
        let pdev = self.pdev(p)?;
        if pdev.pending != Pending::None {
            return Err(TsmError::Busy(Operand::Pdev));
        }
        if pdev.state == PdevState::Connected {
            return Err(TsmError::PdevState);
        }
        if pdev.stream_count() != 0 {
            return Err(TsmError::HasIdeStreams);
        }
        if pdev.tdis != 0 {
            return Err(TsmError::HasTdis);
        }
        let page = pdev.page;
        // ALL CHECKS PASSED: nothing below can fail.
        self.platform.zero(page);
        self.set_meta(page, PamtEntry::FREE);
        self.pdevs[p] = None;
        out.rcx = page.addr().raw();
        Ok(Status::SUCCESS)
    }

    fn connect_random(&mut self) -> TsmResult<ConnectRandom> {
        let mut r = ConnectRandom {
            challenge_nonce: [0; 32],
            measurement_nonce: [0; 32],
            context: [0; 8],
            ephemeral: [0; 48],
            random: [0; 32],
        };
        for buf in
            [&mut r.challenge_nonce[..], &mut r.measurement_nonce, &mut r.context, &mut r.ephemeral, &mut r.random]
        {
            self.platform.fill(buf).map_err(|_| TsmError::NoEntropy)?;
        }
        Ok(r)
    }

    fn spdm_connect(&mut self, regs: &Regs, out: &mut Regs) -> TsmResult<Status> {
        self.sys()?;
        let p = self.pdev_index(regs.rcx, Operand::Rcx)?;
        let msg = self.msg_operands(regs.rdx, regs.r8)?;
        let resuming = Self::resume(self.pdev(p)?, Pending::Connect, &msg)?;
        let mut request = [0u8; MSG_BYTES];
        let action = if resuming {
            let answer = self.read_answer(&msg);
            // ALL CHECKS PASSED: the answer now drives the connection.
            let pdev = self.pdev_mut(p)?;
            copy_action(pdev.conn.step(answer.get()), &mut request)
        } else {
            if self.pdev(p)?.state != PdevState::New {
                return Err(TsmError::PdevState);
            }
            let random = self.connect_random()?;
            // ALL CHECKS PASSED: nothing below can fail but the device.
            let pdev = self.pdev_mut(p)?;
            pdev.conn = Connect::new(random);
            pdev.pending = Pending::Connect;
            copy_action(pdev.conn.start(), &mut request)
        };
        match action {
            Step::Send(n) => Ok(self.send_request(&msg, &request[..n], out)),
            Step::Done => {
                let pdev = self.pdev_mut(p)?;
                let (Some(negotiated), Some(chain), Some(meas), Some(session)) =
                    (pdev.conn.negotiated(), pdev.conn.chain(), pdev.conn.measurements(), pdev.conn.session())
                else {
                    return Err(TsmError::Corrupt);
                };
                let evidence = PdevEvidence {
                    negotiated,
                    chain_digest: *chain.digest(),
                    measurements_digest: attest::evidence::transcript_digest(pdev.conn.vca(), meas),
                };
                pdev.session = Some(session.clone());
                pdev.evidence = Some(evidence);
                pdev.state = PdevState::Connected;
                pdev.pending = Pending::None;
                Ok(Status::SUCCESS)
            }
            Step::Failed(e) => Err(self.pdev_failed(p, DeviceFault::Connect(e))),
        }
    }

    fn spdm_disconnect(&mut self, regs: &Regs, out: &mut Regs) -> TsmResult<Status> {
        self.sys()?;
        let p = self.pdev_index(regs.rcx, Operand::Rcx)?;
        let msg = self.msg_operands(regs.rdx, regs.r8)?;
        let resuming = Self::resume(self.pdev(p)?, Pending::End, &msg)?;
        let version = self.pdev(p)?.version();
        if resuming {
            let answer = self.read_answer(&msg);
            let mut plain = [0u8; PLAIN_BYTES];
            let m = self.open_answer(p, &answer, &mut plain)?;
            // ALL CHECKS PASSED: the authentic answer decides.
            let fault = match m {
                [v, 0x6C, _, _] if *v == version => None,
                [v, 0x7F, code, data] if *v == version => Some(SpdmError::Responder { code: *code, data: *data }),
                _ => Some(SpdmError::UnexpectedResponse { got: m.get(1).copied().unwrap_or(0), want: 0x6C }),
            };
            if let Some(e) = fault {
                return Err(self.pdev_failed(p, DeviceFault::Spdm(e)));
            }
            let pdev = self.pdev_mut(p)?;
            pdev.state = PdevState::Stopped;
            pdev.pending = Pending::None;
            pdev.session = None;
            return Ok(Status::SUCCESS);
        }
        let pdev = self.pdev(p)?;
        if pdev.state != PdevState::Connected {
            return Err(TsmError::PdevState);
        }
        if self.tdis.iter().flatten().any(|t| t.pdev == p && matches!(t.state, TdiState::Locked | TdiState::Run)) {
            return Err(TsmError::TdiState);
        }
        if pdev.streams.iter().flatten().any(|s| s.state == StreamState::Secure) {
            return Err(TsmError::IdeStreamState);
        }
        // ALL CHECKS PASSED: nothing below can fail but the device.
        let mut obj = [0u8; MSG_BYTES];
        match self.seal_for(p, &[version, 0xEC, 0, 0], &mut obj) {
            Ok(n) => {
                self.pdev_mut(p)?.pending = Pending::End;
                Ok(self.send_request(&msg, &obj[..n], out))
            }
            Err(f) => Err(self.pdev_failed(p, f)),
        }
    }

    fn spdm_mng(&mut self, regs: &Regs, out: &mut Regs) -> TsmResult<Status> {
        self.sys()?;
        let p = self.pdev_index(regs.rcx, Operand::Rcx)?;
        match regs.r9 {
            mng::ABORT => self.spdm_abort(p),
            mng::KEY_UPDATE => self.spdm_key_update(p, regs, out),
            mng::RECOLLECT => self.spdm_recollect(p, regs, out),
            _ => Err(TsmError::OperandInvalid(Operand::R9)),
        }
    }

    fn spdm_abort(&mut self, p: usize) -> TsmResult<Status> {
        let pending = self.pdev(p)?.pending;
        if pending == Pending::None {
            return Err(TsmError::NoRequestOutstanding);
        }
        // ALL CHECKS PASSED: nothing below can fail.
        match pending {
            Pending::Km(s) => {
                if let Some(Some(stream)) = self.pdev_mut(p)?.streams.get_mut(s) {
                    stream.state = StreamState::Error;
                    stream.flow = None;
                }
            }
            Pending::Tdi(t) => self.tdi_failed(t, DeviceFault::Aborted),
            Pending::None | Pending::Connect | Pending::End | Pending::KeyUpdate | Pending::Measure => {}
        }
        // Every TDI of the PDEV loses its session with it: none stays LOCKED or RUN.
        let _ = self.pdev_failed(p, DeviceFault::Aborted);
        self.pdev_mut(p)?.key_update = None;
        Ok(Status::SUCCESS)
    }

    fn spdm_key_update(&mut self, p: usize, regs: &Regs, out: &mut Regs) -> TsmResult<Status> {
        let msg = self.msg_operands(regs.rdx, regs.r8)?;
        let mut request = [0u8; PLAIN_BYTES];
        if Self::resume(self.pdev(p)?, Pending::KeyUpdate, &msg)? {
            let answer = self.read_answer(&msg);
            let pdev = self.pdev_mut(p)?;
            let ku = pdev.key_update.as_mut().ok_or(TsmError::Corrupt)?;
            let saved = ku.clone();
            let next = match ku.step(answer.get()) {
                Action::Send(b) if b.len() <= request.len() => {
                    request[..b.len()].copy_from_slice(b);
                    Ok(Some(b.len()))
                }
                Action::Send(_) => Err(SpdmError::Secured(crate::spdm::secured::SecuredError::Buffer)),
                Action::Done => Ok(None),
                Action::Failed(e) => Err(e),
            };
            return match next {
                Ok(Some(n)) => Ok(self.send_request(&msg, &request[..n], out)),
                Ok(None) => {
                    let ku = pdev.key_update.take().ok_or(TsmError::Corrupt)?;
                    pdev.session = ku.into_session();
                    pdev.pending = Pending::None;
                    Ok(Status::SUCCESS)
                }
                // An answer the keys do not open is the host's or a replay: nothing changed.
                Err(e @ SpdmError::Secured(_)) => {
                    pdev.key_update = Some(saved);
                    Err(TsmError::AnswerNotAuthentic(e))
                }
                Err(e) => {
                    pdev.key_update = None;
                    Err(self.pdev_failed(p, DeviceFault::Spdm(e)))
                }
            };
        }
        let pdev = self.pdev(p)?;
        let (Some(session), Some(evidence), PdevState::Connected) = (pdev.session.clone(), pdev.evidence, pdev.state)
        else {
            return Err(TsmError::PdevState);
        };
        let mut tags = [0u8; 2];
        self.platform.fill(&mut tags).map_err(|_| TsmError::NoEntropy)?;
        let op = crate::spdm::key_update::KeyOperation::UpdateAllKeys;
        let mut ku = crate::spdm::key_update::KeyUpdate::new(session, &evidence.negotiated, op, tags)
            .map_err(|_| TsmError::PdevState)?;
        // ALL CHECKS PASSED: nothing below can fail but the device.
        let n = match ku.start() {
            Action::Send(b) if b.len() <= request.len() => {
                request[..b.len()].copy_from_slice(b);
                b.len()
            }
            _ => return Err(self.pdev_failed(p, DeviceFault::Spdm(SpdmError::NotWaiting))),
        };
        let pdev = self.pdev_mut(p)?;
        pdev.session = None;
        pdev.key_update = Some(ku);
        pdev.pending = Pending::KeyUpdate;
        Ok(self.send_request(&msg, &request[..n], out))
    }

    fn spdm_recollect(&mut self, p: usize, regs: &Regs, out: &mut Regs) -> TsmResult<Status> {
        let msg = self.msg_operands(regs.rdx, regs.r8)?;
        let mut request = [0u8; MSG_BYTES];
        let action = if Self::resume(self.pdev(p)?, Pending::Measure, &msg)? {
            let answer = self.read_answer(&msg);
            let pdev = self.pdev_mut(p)?;
            let m = pdev.remeasure.as_mut().ok_or(TsmError::Corrupt)?;
            copy_spdm(m.step(answer.get()), &mut request)
        } else {
            let pdev = self.pdev(p)?;
            let (Some(evidence), Some(chain), PdevState::Connected) = (pdev.evidence, pdev.conn.chain(), pdev.state)
            else {
                return Err(TsmError::PdevState);
            };
            let key = *chain.leaf_key();
            let mut nonce = [0u8; 32];
            let mut context = [0u8; 8];
            self.platform.fill(&mut nonce).map_err(|_| TsmError::NoEntropy)?;
            self.platform.fill(&mut context).map_err(|_| TsmError::NoEntropy)?;
            // ALL CHECKS PASSED: nothing below can fail but the device.
            let pdev = self.pdev_mut(p)?;
            let m = crate::spdm::meas::Measurements::new(&evidence.negotiated, pdev.conn.vca(), key, nonce, context);
            let m = pdev.remeasure.insert(m);
            let action = copy_spdm(m.start(), &mut request);
            pdev.pending = Pending::Measure;
            action
        };
        let pdev = self.pdev_mut(p)?;
        match action {
            Ok(Some(n)) => Ok(self.send_request(&msg, &request[..n], out)),
            Ok(None) => {
                if !pdev.recollect_done() {
                    return Err(TsmError::Corrupt);
                }
                pdev.pending = Pending::None;
                Ok(Status::SUCCESS)
            }
            // The old evidence stays: a re-collection that fails proves nothing new, and the
            // answer cannot be told from the host's (measurements travel in the clear).
            Err(e) => {
                pdev.recollect_dropped();
                pdev.pending = Pending::None;
                Err(TsmError::Device(Operand::Pdev, DeviceFault::Spdm(e)))
            }
        }
    }

    // ---- IDE streams ------------------------------------------------------------------------

    fn stream_operand(pdev: &Pdev, raw: u64, op: Operand) -> TsmResult<usize> {
        match usize::try_from(raw) {
            Ok(i) if matches!(pdev.streams.get(i), Some(Some(_))) => Ok(i),
            _ => Err(TsmError::OperandInvalid(op)),
        }
    }

    fn ide_stream_create(&mut self, regs: &Regs, out: &mut Regs) -> TsmResult<Status> {
        self.sys()?;
        let p = self.pdev_index(regs.rcx, Operand::Rcx)?;
        let id = u8::try_from(regs.rdx).map_err(|_| TsmError::OperandInvalid(Operand::Rdx))?;
        let pdev = self.pdev(p)?;
        if pdev.state != PdevState::Connected {
            return Err(TsmError::PdevState);
        }
        if pdev.streams.iter().flatten().any(|s| s.id == id) {
            return Err(TsmError::FunctionInUse(Operand::Rdx));
        }
        let slot = pdev.streams.iter().position(Option::is_none).ok_or(TsmError::DeviceSlotsExhausted)?;
        // ALL CHECKS PASSED: nothing below can fail.
        let stream =
            IdeStream { id, rp: RootPortStream::new(id), state: StreamState::Created, key_set_1: false, flow: None };
        self.pdev_mut(p)?.streams[slot] = Some(stream);
        out.rcx = slot as u64;
        Ok(Status::SUCCESS)
    }

    fn ide_stream_block(&mut self, regs: &Regs, _out: &mut Regs) -> TsmResult<Status> {
        self.sys()?;
        let p = self.pdev_index(regs.rcx, Operand::Rcx)?;
        let pdev = self.pdev(p)?;
        let s = Self::stream_operand(pdev, regs.rdx, Operand::Rdx)?;
        if pdev.pending == Pending::Km(s) {
            return Err(TsmError::Busy(Operand::IdeStream));
        }
        let id = pdev.streams[s].as_ref().map_or(0, |st| st.id);
        // ALL CHECKS PASSED: nothing below can fail.
        if let Some(stream) = self.pdev_mut(p)?.streams[s].as_mut() {
            stream.rp.block();
            stream.state = StreamState::Blocked;
        }
        self.tdis_lost(p, Some(id), DeviceFault::StreamBlocked);
        Ok(Status::SUCCESS)
    }

    fn ide_stream_delete(&mut self, regs: &Regs, _out: &mut Regs) -> TsmResult<Status> {
        self.sys()?;
        let p = self.pdev_index(regs.rcx, Operand::Rcx)?;
        let pdev = self.pdev(p)?;
        let s = Self::stream_operand(pdev, regs.rdx, Operand::Rdx)?;
        if !matches!(&pdev.streams[s], Some(st) if st.state == StreamState::Blocked) {
            return Err(TsmError::IdeStreamState);
        }
        // ALL CHECKS PASSED: nothing below can fail.
        self.pdev_mut(p)?.streams[s] = None;
        Ok(Status::SUCCESS)
    }

    fn ide_stream_km(&mut self, regs: &Regs, out: &mut Regs) -> TsmResult<Status> {
        self.sys()?;
        let p = self.pdev_index(regs.rcx, Operand::Rcx)?;
        let msg = self.msg_operands(regs.rdx, regs.r8)?;
        let pdev = self.pdev(p)?;
        let mine = match pdev.pending {
            Pending::Km(s) => Pending::Km(s),
            _ => Pending::None,
        };
        if Self::resume(pdev, mine, &msg)? {
            let Pending::Km(s) = mine else { return Err(TsmError::Corrupt) };
            return self.km_continue(p, s, &msg, out);
        }
        let s = Self::stream_operand(pdev, regs.r9 & 0xFF, Operand::R9)?;
        let op = KmOp::from_raw((regs.r9 >> 8) & 0xFF).filter(|_| regs.r9 >> 16 == 0);
        let op = op.ok_or(TsmError::OperandInvalid(Operand::R9))?;
        if pdev.state != PdevState::Connected {
            return Err(TsmError::PdevState);
        }
        let stream = pdev.streams[s].as_ref().ok_or(TsmError::Corrupt)?;
        let allowed = match op {
            KmOp::Setup => matches!(stream.state, StreamState::Created | StreamState::Stopped),
            KmOp::Refresh | KmOp::Stop => stream.state == StreamState::Secure,
        };
        if !allowed {
            return Err(TsmError::IdeStreamState);
        }
        let (version, id, set_1) = (pdev.version(), stream.id, stream.key_set_1);
        let mut material = KeyMaterial { keys: [[0; 32]; 6], ifvs: [[0; 8]; 6] };
        if op != KmOp::Stop {
            for key in &mut material.keys {
                self.platform.fill(key).map_err(|_| TsmError::NoEntropy)?;
            }
            for ifv in &mut material.ifvs {
                self.platform.fill(ifv).map_err(|_| TsmError::NoEntropy)?;
            }
        }
        // ALL CHECKS PASSED: nothing below can fail but the device.
        if op == KmOp::Stop {
            // The first K_SET_STOP takes the stream's keys away: whatever runs over it stops first.
            self.tdis_lost(p, Some(id), DeviceFault::StreamStopped);
        }
        let flow = KmFlow::new(op, version, id, 0, set_1, material);
        let mut plain = [0u8; PLAIN_BYTES];
        let encoded = flow.encode(&mut plain);
        let stream = self.pdev_mut(p)?.streams[s].as_mut().ok_or(TsmError::Corrupt)?;
        if op == KmOp::Setup {
            stream.rp = RootPortStream::new(id);
        }
        stream.flow = Some(flow);
        self.pdev_mut(p)?.pending = Pending::Km(s);
        match encoded {
            Ok(n) => self.km_send(p, s, &plain[..n], &msg, out),
            Err(f) => Err(self.km_failed(p, s, f)),
        }
    }

    fn km_continue(&mut self, p: usize, s: usize, msg: &Msg, out: &mut Regs) -> TsmResult<Status> {
        let answer = self.read_answer(msg);
        let mut buf = [0u8; PLAIN_BYTES];
        let m = self.open_answer(p, &answer, &mut buf)?;
        // ALL CHECKS PASSED: the authentic answer drives the flow.
        let mut plain = [0u8; PLAIN_BYTES];
        let stream = self.pdev_mut(p)?.streams[s].as_mut().ok_or(TsmError::Corrupt)?;
        let flow = stream.flow.as_mut().ok_or(TsmError::Corrupt)?;
        let next = flow.answer(m, &mut stream.rp).and_then(|n| match n {
            KmNext::Continue => flow.encode(&mut plain).map(Some),
            KmNext::Done { key_set_1 } => {
                stream.state = if flow.op() == KmOp::Stop { StreamState::Stopped } else { StreamState::Secure };
                stream.key_set_1 = key_set_1;
                Ok(None)
            }
        });
        match next {
            Ok(Some(n)) => self.km_send(p, s, &plain[..n], msg, out),
            Ok(None) => {
                stream.flow = None;
                self.pdev_mut(p)?.pending = Pending::None;
                Ok(Status::SUCCESS)
            }
            Err(f) => Err(self.km_failed(p, s, f)),
        }
    }

    fn km_send(&mut self, p: usize, s: usize, plain: &[u8], msg: &Msg, out: &mut Regs) -> TsmResult<Status> {
        let mut obj = [0u8; MSG_BYTES];
        match self.seal_for(p, plain, &mut obj) {
            Ok(n) => Ok(self.send_request(msg, &obj[..n], out)),
            Err(f) => Err(self.km_failed(p, s, f)),
        }
    }

    /// A KM exchange failed: the stream's keys are in an unknown state, so it goes to ERROR and
    /// what runs over it with it.
    fn km_failed(&mut self, p: usize, s: usize, fault: DeviceFault) -> TsmError {
        let mut id = None;
        if let Some(Some(pdev)) = self.pdevs.get_mut(p) {
            pdev.pending = Pending::None;
            if let Some(Some(stream)) = pdev.streams.get_mut(s) {
                stream.state = StreamState::Error;
                stream.flow = None;
                id = Some(stream.id);
            }
        }
        if let Some(id) = id {
            self.tdis_lost(p, Some(id), fault);
        }
        TsmError::Device(Operand::IdeStream, fault)
    }
}

/// An SPDM exchange's step with its request copied out: `Some(len)` to send, `None` when done.
fn copy_spdm(action: Action<'_, SpdmError>, out: &mut [u8; MSG_BYTES]) -> Result<Option<usize>, SpdmError> {
    match action {
        Action::Send(b) if b.len() <= out.len() => {
            out[..b.len()].copy_from_slice(b);
            Ok(Some(b.len()))
        }
        Action::Send(b) => Err(SpdmError::Doe(crate::doe::DoeError::TooLarge { needed: b.len() })),
        Action::Done => Ok(None),
        Action::Failed(e) => Err(e),
    }
}

/// A connection step with its request copied out of the state machine.
enum Step {
    Send(usize),
    Done,
    Failed(crate::spdm::connect::ConnectError),
}

fn copy_action(action: crate::doe::Action<'_, crate::spdm::connect::ConnectError>, out: &mut [u8; MSG_BYTES]) -> Step {
    match action {
        crate::doe::Action::Send(b) if b.len() <= out.len() => {
            out[..b.len()].copy_from_slice(b);
            Step::Send(b.len())
        }
        crate::doe::Action::Send(b) => {
            Step::Failed(crate::spdm::connect::ConnectError::Discovery(crate::doe::DoeError::TooLarge {
                needed: b.len(),
            }))
        }
        crate::doe::Action::Done => Step::Done,
        crate::doe::Action::Failed(e) => Step::Failed(e),
    }
}
