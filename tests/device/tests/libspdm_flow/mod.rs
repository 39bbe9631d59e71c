//! The conversation the TSM holds with DMTF's libspdm responder (spdm-emu's
//! `spdm_responder_emu`, which also answers IDE_KM and TDISP with DMTF's sample device
//! libraries), written once and driven both live (`libspdm.rs`) and from a recording
//! (`libspdm_replay.rs`): SPDM.CONNECT as the TSM's leaf runs it (the signed measurements inside
//! the session, after FINISH), then in the session IDE_KM key programming and TDISP up to the
//! interface report. The requester's randomness and keys are fixed, so a replay sends the
//! recorded bytes again.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fmt::Write as _;

use tsm::idekm::{self, KeySlot};
use tsm::spdm::connect::{Connect, ConnectError, ConnectRandom};

#[allow(unused_imports)]
use crate::drive;
use tsm::spdm::session::Session;
use tsm::tdisp::{self, InterfaceId, InterfaceReport, MmioRange, Request, Response, TdiState};

use crate::common::Transport;

/// The fixed requester randomness of the recorded conversations.
pub const RANDOM: ConnectRandom = ConnectRandom {
    challenge_nonce: [0xC1; 32],
    measurement_nonce: [0x3E; 32],
    context: [0x5C; 8],
    ephemeral: [0x2B; 48],
    random: [0x7A; 32],
};

/// The interface the TSM asks about (spdm-emu's requester uses the same FUNCTION_ID).
pub const IFACE: InterfaceId = InterfaceId(0xBEEF);
/// The fixed IDE key and IFV programmed into every slot.
pub const IDE_KEY: [u8; 32] = [0x1D; 32];
/// Initial IV.
pub const IDE_IFV: [u8; 8] = [0, 0, 0, 0, 0, 0, 0, 1];

/// How far the conversation got.
#[derive(Debug, Default)]
pub struct Outcome {
    /// SPDM.CONNECT's result, up to the session.
    pub connect: Option<Result<(), ConnectError>>,
    /// The signed measurements inside the session (what SPDM.CONNECT takes after FINISH).
    pub measurements: Option<Result<(), String>>,
    /// IDE_KM: QUERY, then KEY_PROG and K_SET_GO for the six slots of key set 0.
    pub idekm: Option<Result<(), String>>,
    /// TDISP: version, capabilities, LOCK, the report's ranges, the state after LOCK.
    pub tdisp: Option<Result<(Vec<MmioRange>, TdiState), String>>,
}

/// Runs the whole conversation over `t`.
pub fn converse(t: &mut impl Transport) -> Outcome {
    let mut out = Outcome::default();
    let mut c = Connect::new(RANDOM);
    c.measure_in_session();
    let r: Result<(), ConnectError> = crate::drive!(t, c);
    out.connect = Some(r);
    if r.is_err() {
        return out;
    }
    let version = c.negotiated().unwrap().version;
    let mut s = c.session().unwrap().clone();
    let m = measure_in_session(t, &mut s, c.session_measurements().unwrap());
    out.measurements = Some(m.map(|_| ()));
    if out.measurements != Some(Ok(())) {
        return out;
    }
    out.idekm = Some(program_keys(t, &mut s, version));
    out.tdisp = Some(lock_and_report(t, &mut s, version));
    out
}

fn secured(t: &mut impl Transport, s: &mut Session, m: &[u8]) -> Result<Vec<u8>, String> {
    let mut obj = vec![0u8; 8192];
    let n = s.seal(m, &mut obj).map_err(|e| format!("seal: {e:?}"))?;
    let reply = t.exchange(&obj[..n]);
    let mut buf = vec![0u8; 8192];
    s.open(&reply, &mut buf).map(<[u8]>::to_vec).map_err(|e| format!("open: {e:?}"))
}

/// The signed GET_MEASUREMENTS inside the session, as the TSM's engine runs it: `Measurements`
/// speaks clear DOE objects, so its request is unwrapped and sealed and the opened answer
/// wrapped again. Returns the signed exchange kept as evidence.
fn measure_in_session(
    t: &mut impl Transport,
    s: &mut Session,
    mut m: tsm::spdm::meas::Measurements,
) -> Result<Vec<u8>, String> {
    use tsm::doe::{self, Action, ObjectType};
    let mut request = match m.start() {
        Action::Send(b) => doe::decode_as(b, ObjectType::Spdm).map_err(|e| format!("{e:?}"))?.to_vec(),
        other => return Err(format!("start: {other:?}")),
    };
    loop {
        let answer = secured(t, s, &request)?;
        let mut object = vec![0u8; doe::object_len(answer.len())];
        doe::encode(ObjectType::Spdm, &answer, &mut object).map_err(|e| format!("{e:?}"))?;
        match m.step(&object) {
            Action::Send(b) => request = doe::decode_as(b, ObjectType::Spdm).map_err(|e| format!("{e:?}"))?.to_vec(),
            Action::Done => return Ok(m.exchange().unwrap_or_default().to_vec()),
            Action::Failed(e) => return Err(format!("MEASUREMENTS: {e:?}")),
        }
    }
}

fn program_keys(t: &mut impl Transport, s: &mut Session, v: u8) -> Result<(), String> {
    let mut m = [0u8; 128];
    let query = idekm::Request::Query { port: 0 };
    let n = idekm::encode(v, &query, &mut m).map_err(|e| format!("{e:?}"))?;
    let reply = secured(t, s, &m[..n])?;
    idekm::decode_query(v, 0, &reply).map_err(|e| format!("QUERY_RESP: {e:?}"))?;
    for slot in KeySlot::all(false) {
        for request in [
            idekm::Request::KeyProg { stream: 0, slot, port: 0, key: &IDE_KEY, ifv: &IDE_IFV },
            idekm::Request::Go { stream: 0, slot, port: 0 },
        ] {
            let n = idekm::encode(v, &request, &mut m).map_err(|e| format!("{e:?}"))?;
            let reply = secured(t, s, &m[..n])?;
            idekm::check_ack(v, &request, &reply).map_err(|e| format!("{request:?}: {e:?}"))?;
        }
    }
    Ok(())
}

fn tdisp_call(t: &mut impl Transport, s: &mut Session, v: u8, r: &Request<'_>) -> Result<Vec<u8>, String> {
    let mut m = [0u8; 128];
    let n = tdisp::encode(v, IFACE, r, &mut m).map_err(|e| format!("{e:?}"))?;
    secured(t, s, &m[..n])
}

fn lock_and_report(t: &mut impl Transport, s: &mut Session, v: u8) -> Result<(Vec<MmioRange>, TdiState), String> {
    let decode = |r: &Request<'_>, reply: &[u8]| -> Result<Response<'static>, String> {
        let reply: &'static [u8] = Box::leak(reply.to_vec().into_boxed_slice());
        tdisp::decode(v, IFACE, r.code(), reply).map_err(|e| format!("{r:?}: {e:?}"))
    };
    for r in [Request::GetVersion, Request::GetCapabilities] {
        let reply = tdisp_call(t, s, v, &r)?;
        decode(&r, &reply)?;
    }
    let lock = Request::Lock { flags: 0, default_stream: 0, mmio_reporting_offset: 0, p2p_mask: 0 };
    let reply = tdisp_call(t, s, v, &lock)?;
    let Response::Locked { .. } = decode(&lock, &reply)? else { return Err("LOCK: no nonce".into()) };
    let mut report = Vec::new();
    loop {
        let r = Request::GetReport { offset: report.len() as u16, length: 0x400 };
        let reply = tdisp_call(t, s, v, &r)?;
        let Response::ReportPortion { portion, remainder } = decode(&r, &reply)? else {
            return Err("GET_DEVICE_INTERFACE_REPORT: no portion".into());
        };
        report.extend_from_slice(portion);
        if remainder == 0 {
            break;
        }
    }
    let parsed = InterfaceReport::parse(&report).map_err(|e| format!("report: {e:?}"))?;
    let ranges = parsed.ranges().to_vec();
    let r = Request::GetState;
    let reply = tdisp_call(t, s, v, &r)?;
    let Response::State(state) = decode(&r, &reply)? else { return Err("no state".into()) };
    Ok((ranges, state))
}

/// Hex of `b`.
pub fn hex(b: &[u8]) -> String {
    b.iter().fold(String::with_capacity(2 * b.len()), |mut s, x| {
        let _ = write!(s, "{x:02x}");
        s
    })
}

/// Bytes of `s` in hex.
pub fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd hex string");
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

/// A recording: the comment header, then `> request` / `< answer` lines in hex.
pub fn write_recording(header: &str, log: &[(Vec<u8>, Vec<u8>)]) -> String {
    let mut out = String::new();
    for line in header.lines() {
        let _ = writeln!(out, "# {line}");
    }
    for (request, answer) in log {
        let _ = writeln!(out, "> {}\n< {}", hex(request), hex(answer));
    }
    out
}

/// The exchanges of a recording.
pub fn read_recording(text: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut requests = Vec::new();
    let mut answers = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        match line.split_once(' ') {
            Some((">", hex)) => requests.push(unhex(hex)),
            Some(("<", hex)) => answers.push(unhex(hex)),
            _ => panic!("not a recording line: {line}"),
        }
    }
    assert_eq!(requests.len(), answers.len(), "a request without its answer");
    requests.into_iter().zip(answers).collect()
}

/// A change to the recorded answer of one exchange (its position).
pub type Tamper = (usize, fn(&mut [u8]));

/// A transport that plays a recording back: each request must be the recorded one.
pub struct Replay {
    pub exchanges: Vec<(Vec<u8>, Vec<u8>)>,
    pub next: usize,
    /// A change to the answer of one exchange.
    pub tamper: Option<Tamper>,
}

impl Transport for Replay {
    fn exchange(&mut self, object: &[u8]) -> Vec<u8> {
        let i = self.next;
        let (request, answer) = self.exchanges.get(i).unwrap_or_else(|| panic!("request {i} beyond the recording"));
        assert_eq!(hex(object), hex(request), "request {i} differs from the recording");
        self.next += 1;
        let mut answer = answer.clone();
        if let Some((at, f)) = self.tamper {
            if at == i {
                f(&mut answer);
            }
        }
        answer
    }
}
