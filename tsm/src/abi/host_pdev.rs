//! Host leaves of the PDEV (SPDM.CREATE, CONNECT, DISCONNECT, MNG, DELETE) and of its IDE
//! streams (IDE.STREAM.CREATE, KM, BLOCK, DELETE). The resumable ones check their operands and
//! state, then hand an exchange to the engine (`super::exchange`), which carries it out over the
//! message page: R8 = 0 starts, R8 = the answer's length continues; `DEVICE_REQUEST` asks the
//! host to move R8 bytes to the device. An answer that does not open under the session keys is
//! `ANSWER_NOT_AUTHENTIC` and changes nothing; an authentic answer that fails a check is
//! `DEVICE_ERROR` and moves the object to ERROR (RCX: the step).

use crate::abi::{LeafSpec, Reg, Regs};
use crate::error::{DeviceFault, TsmError, TsmResult};
use crate::ide::RootPortStream;
use crate::pamt::{PageType, PamtEntry};
use crate::pdev::km::KeyMaterial;
use crate::pdev::{self, Exchange, IdeStream, KmFlow, KmOp, Pdev, PdevState, Pending, StreamState};
use crate::platform::Platform;
use crate::spdm::connect::{Connect, ConnectRandom};
use crate::spdm::key_update::{KeyOperation, KeyUpdate};
use crate::spdm::meas::Measurements;
use crate::status::{Operand, Status};
use crate::tdi::TdiState;
use crate::Tsm;

use super::rows::*;

use super::exchange::Call;
use super::host::leaf;
use super::host::HostLeaf;

/// SPDM.MNG operations (TDX's numbering).
#[allow(missing_docs)]
pub mod mng {
    pub const HEARTBEAT: u64 = 0;
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
            outputs: &[MSG_OUT, WAIT_OUT],
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
            summary: "Resumable SPDM connection: DOE discovery, VERSION / CAPABILITIES / ALGORITHMS, DIGESTS and CERTIFICATE (chain checked, leaf key kept), CHALLENGE, KEY_EXCHANGE / FINISH, then signed MEASUREMENTS of every index inside the session; a device that refuses them there (ERROR UnsupportedRequest or UnexpectedRequest) is measured outside the session, in the clear, in the same call (the measurement policy, docs/protocols.md). On success the PDEV is CONNECTED and keeps the evidence (chain, measurement transcript and their SHA-384; reports record where the measurements were taken).",
            inputs: &[(Reg::Rcx, "PDEV page"), MSG_IN[0], MSG_IN[1]],
            outputs: &[
                MSG_OUT,
                WAIT_OUT,
                (Reg::Rcx, "SUCCESS: the SPDM version negotiated (bits 7:0); bit 8 set if the measurements were taken inside the session, clear if in the clear; the HeartbeatPeriod the device asked for, in seconds (bits 23:16; 0: none): the host sends SPDM.MNG HEARTBEAT at least that often (tsm_client::host::device::keep_alive sends it every half period)"),
            ],
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
            outputs: &[MSG_OUT, WAIT_OUT],
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
            summary: "Session management, resumable. 0 HEARTBEAT: HEARTBEAT / HEARTBEAT_ACK inside the session, for a device that asked for a HeartbeatPeriod in KEY_EXCHANGE_RSP (the TSM announces HBEAT_CAP); the host calls it at least once per period (SPDM.CONNECT returned the period in RCX bits 23:16), or the device may end the session. A missed or wrong HEARTBEAT_ACK is the device's fault: the PDEV, its live streams and its locked or running TDIs go to ERROR (a lost answer: the host ABORTs). 1 KEY_UPDATE: KEY_UPDATE(UpdateAllKeys) then VerifyNewKey: both directions move to the next keys (an answer under keys it should not use is refused and changes nothing; an authentic answer that fails ends the session: the PDEV, its live streams and its locked or running TDIs go to ERROR). 2 RECOLLECT: fresh signed GET_MEASUREMENTS of every index with a new nonce, inside the session when the connection's were; on success the evidence binds the new transcript, on failure the old evidence stays. 3 ABORT: abandons the outstanding exchange (a lost or late answer); what the device did is unknown, so the PDEV goes to ERROR (and the TDI or stream whose exchange it was); no device traffic.",
            inputs: &[(Reg::Rcx, "PDEV page"), MSG_IN[0], MSG_IN[1], (Reg::R9, "operation: 0 HEARTBEAT, 1 KEY_UPDATE, 2 RECOLLECT, 3 ABORT")],
            outputs: &[MSG_OUT, WAIT_OUT],
            requires: "HEARTBEAT, KEY_UPDATE, RECOLLECT: PDEV CONNECTED. ABORT: a request outstanding.",
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
                (Status::PDEV_STATE_INCORRECT, "PDEV not CONNECTED, or the device does not offer KEY_UPD (KEY_UPDATE) or asked for no heartbeat (HEARTBEAT)"),
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
            exchange: None,
            streams: core::array::from_fn(|_| None),
            tdis: 0,
            fault: None,
            measured: None,
        });
        Ok(Status::SUCCESS)
    }

    fn spdm_delete(&mut self, regs: &Regs, out: &mut Regs) -> TsmResult<Status> {
        self.sys()?;
        let p = self.pdev_index(regs.rcx, Operand::Rcx)?;
        let pdev = self.pdev(p)?;
        if pdev.exchange.is_some() {
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
        if self.resume(p, Call::Connect, &msg)? {
            return self.communicate(p, &msg, out);
        }
        if self.pdev(p)?.state != PdevState::New {
            return Err(TsmError::PdevState);
        }
        let random = self.connect_random()?;
        // ALL CHECKS PASSED: nothing below can fail but the device.
        let pdev = self.pdev_mut(p)?;
        pdev.conn = Connect::new(random);
        // TDISP devices are measured after KEY_EXCHANGE, inside the session; and the session
        // is kept alive with HEARTBEAT if the device asks for it.
        pdev.conn.measure_in_session();
        pdev.conn.offer_heartbeat();
        self.begin(p, Exchange::connect(), &msg, out)
    }

    fn spdm_disconnect(&mut self, regs: &Regs, out: &mut Regs) -> TsmResult<Status> {
        self.sys()?;
        let p = self.pdev_index(regs.rcx, Operand::Rcx)?;
        let msg = self.msg_operands(regs.rdx, regs.r8)?;
        if self.resume(p, Call::Disconnect, &msg)? {
            return self.communicate(p, &msg, out);
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
        let version = pdev.version();
        // ALL CHECKS PASSED: nothing below can fail but the device.
        self.begin(p, Exchange::end_session(version), &msg, out)
    }

    fn spdm_mng(&mut self, regs: &Regs, out: &mut Regs) -> TsmResult<Status> {
        self.sys()?;
        let p = self.pdev_index(regs.rcx, Operand::Rcx)?;
        match regs.r9 {
            mng::ABORT => self.abort_exchange(p),
            mng::HEARTBEAT => self.spdm_heartbeat(p, regs, out),
            mng::KEY_UPDATE => self.spdm_key_update(p, regs, out),
            mng::RECOLLECT => self.spdm_recollect(p, regs, out),
            _ => Err(TsmError::OperandInvalid(Operand::R9)),
        }
    }

    fn spdm_heartbeat(&mut self, p: usize, regs: &Regs, out: &mut Regs) -> TsmResult<Status> {
        let msg = self.msg_operands(regs.rdx, regs.r8)?;
        if self.resume(p, Call::Heartbeat, &msg)? {
            return self.communicate(p, &msg, out);
        }
        let pdev = self.pdev(p)?;
        let asked = pdev.session.as_ref().is_some_and(|s| s.heartbeat_period() != 0);
        if pdev.state != PdevState::Connected || !asked {
            return Err(TsmError::PdevState);
        }
        let version = pdev.version();
        // ALL CHECKS PASSED: nothing below can fail but the device.
        self.begin(p, Exchange::heartbeat(version), &msg, out)
    }

    fn spdm_key_update(&mut self, p: usize, regs: &Regs, out: &mut Regs) -> TsmResult<Status> {
        let msg = self.msg_operands(regs.rdx, regs.r8)?;
        if self.resume(p, Call::KeyUpdate, &msg)? {
            return self.communicate(p, &msg, out);
        }
        let pdev = self.pdev(p)?;
        let (Some(session), Some(evidence), PdevState::Connected) = (pdev.session.clone(), pdev.evidence, pdev.state)
        else {
            return Err(TsmError::PdevState);
        };
        let mut tags = [0u8; 2];
        self.platform.fill(&mut tags).map_err(|_| TsmError::NoEntropy)?;
        let op = KeyOperation::UpdateAllKeys;
        let ku = KeyUpdate::new(session, &evidence.negotiated, op, tags).map_err(|_| TsmError::PdevState)?;
        // ALL CHECKS PASSED: nothing below can fail but the device. The exchange holds the
        // session until it ends.
        self.pdev_mut(p)?.session = None;
        self.begin(p, Exchange::key_update(ku), &msg, out)
    }

    fn spdm_recollect(&mut self, p: usize, regs: &Regs, out: &mut Regs) -> TsmResult<Status> {
        let msg = self.msg_operands(regs.rdx, regs.r8)?;
        if self.resume(p, Call::Recollect, &msg)? {
            return self.communicate(p, &msg, out);
        }
        let pdev = self.pdev(p)?;
        let (Some(evidence), Some(chain), PdevState::Connected) = (pdev.evidence, pdev.conn.chain(), pdev.state) else {
            return Err(TsmError::PdevState);
        };
        let key = *chain.leaf_key();
        let mut nonce = [0u8; 32];
        let mut context = [0u8; 8];
        self.platform.fill(&mut nonce).map_err(|_| TsmError::NoEntropy)?;
        self.platform.fill(&mut context).map_err(|_| TsmError::NoEntropy)?;
        // ALL CHECKS PASSED: nothing below can fail but the device.
        // Where the connection took its measurements, so the evidence says one thing of all its
        // bytes.
        let m = Measurements::new(&evidence.negotiated, self.pdev(p)?.conn.vca(), key, nonce, context);
        self.begin(p, Exchange::recollect(m, evidence.measurements_in_session), &msg, out)
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
        let stream = IdeStream { id, rp: RootPortStream::new(id), state: StreamState::Created, key_set_1: false };
        self.pdev_mut(p)?.streams[slot] = Some(stream);
        out.rcx = slot as u64;
        Ok(Status::SUCCESS)
    }

    fn ide_stream_block(&mut self, regs: &Regs, _out: &mut Regs) -> TsmResult<Status> {
        self.sys()?;
        let p = self.pdev_index(regs.rcx, Operand::Rcx)?;
        let pdev = self.pdev(p)?;
        let s = Self::stream_operand(pdev, regs.rdx, Operand::Rdx)?;
        if pdev.pending() == Pending::Km(s) {
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
        if self.resume(p, Call::IdeKm, &msg)? {
            return self.communicate(p, &msg, out);
        }
        let pdev = self.pdev(p)?;
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
        if op == KmOp::Setup {
            let stream = self.pdev_mut(p)?.streams[s].as_mut().ok_or(TsmError::Corrupt)?;
            stream.rp = RootPortStream::new(id);
        }
        let flow = KmFlow::new(op, version, id, 0, set_1, material);
        self.begin(p, Exchange::ide_km(s, flow), &msg, out)
    }
}
