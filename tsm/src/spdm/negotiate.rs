//! The negotiation every SPDM connection starts with: GET_VERSION, GET_CAPABILITIES and
//! NEGOTIATE_ALGORITHMS, keeping the VCA transcript (message A) exactly as later signatures cover
//! it: the exact SPDM message bytes, never the DOE padding.
//!
//! The TSM offers the suites of [`crate::spdm::suite`] (ECDSA P-256/P-384, SHA-256/384,
//! secp256r1/secp384r1, AES-128/256-GCM: its floor is the 128-bit level) with the SPDM key
//! schedule and opaque data format 1 (what TDISP devices are required to support), and takes the
//! responder's pick of each; the measurement hash is the responder's own choice.

use crate::doe::{self, Action, ObjectType};
use crate::spdm::suite::{Aead, Asym, BaseHash, Dhe, Suite};

pub use crate::spdm::error::SpdmError;

/// SPDM 1.0, the version GET_VERSION and VERSION always carry.
pub const V10: u8 = 0x10;
/// SPDM 1.2.
pub const V12: u8 = 0x12;
/// SPDM 1.3.
pub const V13: u8 = 0x13;

/// Request and response codes.
#[allow(missing_docs)]
pub mod code {
    pub const GET_VERSION: u8 = 0x84;
    pub const VERSION: u8 = 0x04;
    pub const GET_CAPABILITIES: u8 = 0xE1;
    pub const CAPABILITIES: u8 = 0x61;
    pub const GET_DIGESTS: u8 = 0x81;
    pub const DIGESTS: u8 = 0x01;
    pub const GET_CERTIFICATE: u8 = 0x82;
    pub const CERTIFICATE: u8 = 0x02;
    pub const CHALLENGE: u8 = 0x83;
    pub const CHALLENGE_AUTH: u8 = 0x03;
    pub const KEY_EXCHANGE: u8 = 0xE4;
    pub const KEY_EXCHANGE_RSP: u8 = 0x64;
    pub const FINISH: u8 = 0xE5;
    pub const FINISH_RSP: u8 = 0x65;
    pub const END_SESSION: u8 = 0xEC;
    pub const END_SESSION_ACK: u8 = 0x6C;
    pub const KEY_UPDATE: u8 = 0xE9;
    pub const KEY_UPDATE_ACK: u8 = 0x69;
    pub const HEARTBEAT: u8 = 0xE8;
    pub const HEARTBEAT_ACK: u8 = 0x68;
    pub const GET_MEASUREMENTS: u8 = 0xE0;
    pub const MEASUREMENTS: u8 = 0x60;
    pub const NEGOTIATE_ALGORITHMS: u8 = 0xE3;
    pub const ALGORITHMS: u8 = 0x63;
    pub const ERROR: u8 = 0x7F;
}

/// Capability flags of CAPABILITIES / GET_CAPABILITIES.
#[allow(missing_docs)]
pub mod cap {
    pub const CERT: u32 = 0x2;
    pub const CHAL: u32 = 0x4;
    pub const MEAS_MASK: u32 = 0x18;
    pub const MEAS_SIG: u32 = 0x10;
    pub const ENCRYPT: u32 = 0x40;
    pub const MAC: u32 = 0x80;
    pub const KEY_EX: u32 = 0x200;
    pub const HBEAT: u32 = 0x2000;
    pub const KEY_UPD: u32 = 0x4000;
    pub const CHUNK: u32 = 0x2_0000;
}

/// What the TSM announces as requester: sessions with encryption and MAC, KEY_UPDATE inside
/// them, and large responses in chunks (`0x2_42C0`); no mutual authentication, heartbeat or
/// handshake in the clear.
pub const REQUESTER_FLAGS: u32 = cap::ENCRYPT | cap::MAC | cap::KEY_EX | cap::KEY_UPD | cap::CHUNK;
/// What a device must offer: certificates, CHALLENGE, signed measurements, sessions.
pub const REQUIRED_RESPONDER_FLAGS: u32 = cap::CERT | cap::CHAL | cap::MEAS_SIG | cap::ENCRYPT | cap::MAC | cap::KEY_EX;
/// The TSM's DataTransferSize: the largest SPDM message it takes in one transfer. Every answer
/// reaches it through the host's 4 KiB message page as one DOE object (8 bytes of header), a
/// secured one with its session id, length fields and tag (24 bytes) around the message: 4064
/// bytes of message always fit, clear or sealed (`pdev::MSG_BYTES` asserts it).
pub const TRANSFER_SIZE: u32 = 4096 - 8 - 24;
/// The TSM's MaxSPDMmsgSize: the largest response it reassembles from chunks
/// ([`crate::spdm::chunk::MAX_MESSAGE`]).
pub const MAX_MESSAGE_SIZE: u32 = crate::spdm::chunk::MAX_MESSAGE as u32;

/// SPDM algorithm bit encodings (the suites themselves: [`crate::spdm::suite`]).
#[allow(missing_docs)]
pub mod alg {
    pub const BASE_ASYM_ECDSA_P256: u32 = 0x10;
    pub const BASE_ASYM_ECDSA_P384: u32 = 0x80;
    pub const BASE_HASH_SHA256: u32 = 0x01;
    pub const BASE_HASH_SHA384: u32 = 0x02;
    pub const MEAS_SPEC_DMTF: u8 = 0x01;
    pub const MEAS_HASH_RAW_BIT_STREAM: u32 = 0x01;
    pub const MEAS_HASH_SHA256: u32 = 0x02;
    pub const MEAS_HASH_SHA384: u32 = 0x04;
    pub const MEAS_HASH_SHA512: u32 = 0x08;
    pub const OPAQUE_FMT1: u8 = 0x02;
    /// OtherParamsSelection bit 4 (SPDM 1.3): the responder takes part in multi-key connections.
    pub const MULTI_KEY_CONN: u8 = 0x10;
    pub const DHE_SECP256R1: u16 = 0x08;
    pub const DHE_SECP384R1: u16 = 0x10;
    pub const AEAD_AES_128_GCM: u16 = 0x01;
    pub const AEAD_AES_256_GCM: u16 = 0x02;
    pub const KEY_SCHEDULE_SPDM: u16 = 0x01;
    pub const TYPE_DHE: u8 = 2;
    pub const TYPE_AEAD: u8 = 3;
    pub const TYPE_REQ_BASE_ASYM: u8 = 4;
    pub const TYPE_KEY_SCHEDULE: u8 = 5;
}

/// Bytes the VCA transcript may take (VERSION with up to 16 entries, ALGORITHMS up to 128).
pub const VCA_MAX: usize = 4 + 38 + 20 + 20 + 44 + 128;

/// How the device hashes its measurements: the responder's pick (DSP0274 1.2 §10.4, the
/// MeasurementHashAlgo field of ALGORITHMS); the requester offers nothing for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MeasurementHash {
    /// Raw bit streams only: every block carries its value, none a digest.
    RawBitStreamOnly,
    /// SHA-256 digests (32 bytes).
    Sha256,
    /// SHA-384 digests (48 bytes).
    Sha384,
    /// SHA-512 digests (64 bytes).
    Sha512,
}

impl MeasurementHash {
    /// The selection in ALGORITHMS: exactly one bit; SHA3 and SM3 are refused (the TSM's
    /// verifier has neither).
    pub fn from_selection(bits: u32) -> Option<MeasurementHash> {
        match bits {
            alg::MEAS_HASH_RAW_BIT_STREAM => Some(MeasurementHash::RawBitStreamOnly),
            alg::MEAS_HASH_SHA256 => Some(MeasurementHash::Sha256),
            alg::MEAS_HASH_SHA384 => Some(MeasurementHash::Sha384),
            alg::MEAS_HASH_SHA512 => Some(MeasurementHash::Sha512),
            _ => None,
        }
    }

    /// Bytes of a digest block's value; `None` when only raw bit streams are allowed.
    pub const fn digest_bytes(self) -> Option<usize> {
        match self {
            MeasurementHash::RawBitStreamOnly => None,
            MeasurementHash::Sha256 => Some(32),
            MeasurementHash::Sha384 => Some(48),
            MeasurementHash::Sha512 => Some(64),
        }
    }
}

/// What negotiation settled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Negotiated {
    /// SPDM version (0x12 or 0x13).
    pub version: u8,
    /// The device's capability flags.
    pub responder_flags: u32,
    /// The device's DataTransferSize.
    pub data_transfer_size: u32,
    /// The device's MaxSPDMmsgSize.
    pub max_message_size: u32,
    /// The device's measurement hash.
    pub measurement_hash: MeasurementHash,
    /// SPDM 1.3 multi-key connection (OtherParamsSelection bit 4): DIGESTS then carries the key
    /// pair ID, certificate info and key usage of every slot.
    pub multi_key_conn: bool,
    /// The suite ALGORITHMS selected.
    pub suite: Suite,
}

impl Negotiated {
    /// The TSM's suite at `version` with the given device parameters and a SHA-384 measurement
    /// hash, no multi-key connection (what tests and the TSM's own device use).
    pub const fn p384(version: u8, responder_flags: u32, data_transfer_size: u32, max_message_size: u32) -> Negotiated {
        Negotiated {
            version,
            responder_flags,
            data_transfer_size,
            max_message_size,
            measurement_hash: MeasurementHash::Sha384,
            multi_key_conn: false,
            suite: Suite::P384,
        }
    }

    /// The same parameters with another suite.
    pub const fn with_suite(mut self, suite: Suite) -> Negotiated {
        self.suite = suite;
        self
    }

    /// True if a large response may come in chunks: SPDM 1.2 or later and CHUNK_CAP on both
    /// sides (the TSM always announces it).
    pub const fn chunking(&self) -> bool {
        self.version >= V12 && self.responder_flags & cap::CHUNK != 0
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Idle,
    WaitVersion,
    WaitCapabilities,
    WaitAlgorithms,
    Done,
    Failed(SpdmError),
}

/// The negotiation state machine: `start`, then `step` with each answer until `Done`.
#[derive(Clone, Debug)]
pub struct Negotiation {
    state: State,
    version: u8,
    flags: u32,
    /// What the TSM announces: [`REQUESTER_FLAGS`], with HBEAT_CAP if it offers heartbeats.
    requester_flags: u32,
    data_transfer_size: u32,
    max_message_size: u32,
    measurement_hash: MeasurementHash,
    multi_key_conn: bool,
    suite: Suite,
    vca: [u8; VCA_MAX],
    vca_len: usize,
    out: [u8; 64],
}

impl Default for Negotiation {
    fn default() -> Self {
        Negotiation::new()
    }
}

pub(crate) fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

pub(crate) fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The SPDM payload of a device's DOE answer, checked to be the response `want` in `version`.
///
/// # Errors
/// DOE framing errors, a short header, another version, the device's ERROR, another code.
pub(crate) fn response_payload(response: &[u8], version: u8, want: u8) -> Result<&[u8], SpdmError> {
    let payload = doe::decode_as(response, ObjectType::Spdm)?;
    if payload.len() < 4 {
        return Err(SpdmError::BadLength { code: payload.get(1).copied().unwrap_or(0), len: payload.len() });
    }
    let (ver, got) = (payload[0], payload[1]);
    if ver != version {
        return Err(SpdmError::WrongVersion { got: ver, want: version });
    }
    if got == code::ERROR {
        return Err(SpdmError::Responder { code: payload[2], data: payload[3] });
    }
    if got != want {
        return Err(SpdmError::UnexpectedResponse { got, want });
    }
    Ok(payload)
}

/// The exact message of `len` bytes at the start of a DOE payload; the rest must be DOE padding
/// (fewer than 4 zero bytes).
pub(crate) fn exact(payload: &[u8], len: usize, code: u8) -> Result<&[u8], SpdmError> {
    if payload.len() < len || payload.len() - len >= 4 {
        return Err(SpdmError::BadLength { code, len: payload.len() });
    }
    if payload[len..].iter().any(|&b| b != 0) {
        return Err(SpdmError::DirtyPadding);
    }
    Ok(&payload[..len])
}

impl Negotiation {
    /// A negotiation that has not started.
    pub const fn new() -> Negotiation {
        Negotiation {
            state: State::Idle,
            version: V10,
            flags: 0,
            requester_flags: REQUESTER_FLAGS,
            data_transfer_size: 0,
            max_message_size: 0,
            measurement_hash: MeasurementHash::Sha384,
            multi_key_conn: false,
            suite: Suite::P384,
            vca: [0; VCA_MAX],
            vca_len: 0,
            out: [0; 64],
        }
    }

    /// Announces HBEAT_CAP as well: the TSM keeps a session alive with HEARTBEAT when the
    /// device asks for it (a HeartbeatPeriod in KEY_EXCHANGE_RSP). Call before starting.
    pub fn offer_heartbeat(&mut self) {
        self.requester_flags |= cap::HBEAT;
    }

    /// The settled parameters, once done.
    pub fn negotiated(&self) -> Option<Negotiated> {
        (self.state == State::Done).then_some(Negotiated {
            version: self.version,
            responder_flags: self.flags,
            data_transfer_size: self.data_transfer_size,
            max_message_size: self.max_message_size,
            measurement_hash: self.measurement_hash,
            multi_key_conn: self.multi_key_conn,
            suite: self.suite,
        })
    }

    /// The VCA transcript so far: exact messages, no DOE padding.
    pub fn vca(&self) -> &[u8] {
        &self.vca[..self.vca_len]
    }

    fn record(&mut self, msg: &[u8]) -> Result<(), SpdmError> {
        let end = self.vca_len + msg.len();
        if end > VCA_MAX {
            return Err(SpdmError::BadLength { code: msg.get(1).copied().unwrap_or(0), len: msg.len() });
        }
        self.vca[self.vca_len..end].copy_from_slice(msg);
        self.vca_len = end;
        Ok(())
    }

    /// Records `msg` in the transcript and frames it for the mailbox.
    fn send(&mut self, msg: &[u8], next: State) -> Action<'_, SpdmError> {
        if let Err(e) = self.record(msg) {
            return self.fail(e);
        }
        let mut frame = [0u8; 64];
        match doe::encode(ObjectType::Spdm, msg, &mut frame) {
            Ok(n) => {
                self.out[..n].copy_from_slice(&frame[..n]);
                self.state = next;
                Action::Send(&self.out[..n])
            }
            Err(e) => self.fail(SpdmError::Doe(e)),
        }
    }

    fn fail(&mut self, e: SpdmError) -> Action<'_, SpdmError> {
        self.state = State::Failed(e);
        Action::Failed(e)
    }

    /// The error a failed negotiation stopped on.
    pub fn error(&self) -> Option<SpdmError> {
        match self.state {
            State::Failed(e) => Some(e),
            _ => None,
        }
    }

    /// GET_VERSION: resets the device's connection state and starts over.
    pub fn start(&mut self) -> Action<'_, SpdmError> {
        self.vca_len = 0;
        self.version = V10;
        self.send(&[V10, code::GET_VERSION, 0, 0], State::WaitVersion)
    }

    /// Consumes the DOE object the device answered with.
    pub fn step(&mut self, response: &[u8]) -> Action<'_, SpdmError> {
        let result = self.handle(response);
        match result {
            Ok(()) => self.next(),
            Err(e) => self.fail(e),
        }
    }

    fn next(&mut self) -> Action<'_, SpdmError> {
        match self.state {
            State::WaitCapabilities => {
                let mut m = [0u8; 20];
                m[0] = self.version;
                m[1] = code::GET_CAPABILITIES;
                m[8..12].copy_from_slice(&self.requester_flags.to_le_bytes());
                m[12..16].copy_from_slice(&TRANSFER_SIZE.to_le_bytes());
                m[16..20].copy_from_slice(&MAX_MESSAGE_SIZE.to_le_bytes());
                self.state = State::Idle;
                self.send(&m, State::WaitCapabilities)
            }
            State::WaitAlgorithms => {
                let mut m = [0u8; 44];
                m[0] = self.version;
                m[1] = code::NEGOTIATE_ALGORITHMS;
                m[2] = 3; // DHE, AEAD, KeySchedule; no ReqBaseAsymAlg (not mutually authenticated)
                m[4..6].copy_from_slice(&44u16.to_le_bytes());
                m[6] = alg::MEAS_SPEC_DMTF;
                m[7] = alg::OPAQUE_FMT1;
                m[8..12].copy_from_slice(&Asym::OFFERED.to_le_bytes());
                m[12..16].copy_from_slice(&BaseHash::OFFERED.to_le_bytes());
                let tables = [
                    (alg::TYPE_DHE, Dhe::OFFERED),
                    (alg::TYPE_AEAD, Aead::OFFERED),
                    (alg::TYPE_KEY_SCHEDULE, alg::KEY_SCHEDULE_SPDM),
                ];
                for (i, (ty, bits)) in tables.into_iter().enumerate() {
                    let at = 32 + 4 * i;
                    m[at] = ty;
                    m[at + 1] = 0x20; // two fixed bytes, no external algorithms
                    m[at + 2..at + 4].copy_from_slice(&bits.to_le_bytes());
                }
                self.state = State::Idle;
                self.send(&m, State::WaitAlgorithms)
            }
            State::Done => Action::Done,
            State::Failed(e) => Action::Failed(e),
            State::Idle | State::WaitVersion => self.fail(SpdmError::NotWaiting),
        }
    }

    /// Parses one answer; on success leaves `state` at the next request to send.
    fn handle(&mut self, response: &[u8]) -> Result<(), SpdmError> {
        let want = match self.state {
            State::WaitVersion => code::VERSION,
            State::WaitCapabilities => code::CAPABILITIES,
            State::WaitAlgorithms => code::ALGORITHMS,
            State::Idle | State::Done | State::Failed(_) => return Err(SpdmError::NotWaiting),
        };
        let payload = response_payload(response, self.version, want)?;
        match want {
            code::VERSION => self.on_version(payload),
            code::CAPABILITIES => self.on_capabilities(payload),
            _ => self.on_algorithms(payload),
        }
    }

    fn on_version(&mut self, p: &[u8]) -> Result<(), SpdmError> {
        let n = usize::from(*p.get(5).ok_or(SpdmError::BadLength { code: code::VERSION, len: p.len() })?);
        let msg = exact(p, 6 + 2 * n, code::VERSION)?;
        let offered = |v: u8| (0..n).any(|i| (le16(msg, 6 + 2 * i) >> 8) as u8 == v);
        self.version = if offered(V13) {
            V13
        } else if offered(V12) {
            V12
        } else {
            return Err(SpdmError::NoCommonVersion);
        };
        self.record(msg)?;
        self.state = State::WaitCapabilities;
        Ok(())
    }

    fn on_capabilities(&mut self, p: &[u8]) -> Result<(), SpdmError> {
        let msg = exact(p, 20, code::CAPABILITIES)?;
        let flags = le32(msg, 8);
        let (data_transfer, max_message) = (le32(msg, 12), le32(msg, 16));
        let missing = REQUIRED_RESPONDER_FLAGS & !flags;
        let meas = flags & cap::MEAS_MASK;
        if missing != 0 || meas != cap::MEAS_SIG {
            return Err(SpdmError::MissingCapabilities { missing: missing | (cap::MEAS_SIG & !meas) });
        }
        if data_transfer < 42 || data_transfer > max_message {
            return Err(SpdmError::BadTransferSize { data_transfer, max_message });
        }
        self.record(msg)?;
        self.flags = flags;
        self.data_transfer_size = data_transfer;
        self.max_message_size = max_message;
        self.state = State::WaitAlgorithms;
        Ok(())
    }

    /// ALGORITHMS (DSP0274 1.2 §10.4): the device picks one of what the TSM offered, and the
    /// measurement hash on its own. Refused: a selection the TSM did not offer (each field named),
    /// a measurement hash the verifier lacks, extended algorithms (none were offered), a table of
    /// a requested type twice or missing. Accepted: any measurement hash among SHA-256/384/512 or
    /// raw bit streams, the 1.3 multi-key bit, and well-formed tables of types the TSM did not
    /// request (a responder may answer ReqBaseAsymAlg with nothing selected, or list others).
    fn on_algorithms(&mut self, p: &[u8]) -> Result<(), SpdmError> {
        if p.len() < 36 {
            return Err(SpdmError::BadLength { code: code::ALGORITHMS, len: p.len() });
        }
        let length = usize::from(le16(p, 4));
        // The size the structure itself gives (extended selections, then every table with its
        // external entries): a Length that disagrees is named by its own value, a message cut
        // short by the bytes that came.
        let short = SpdmError::BadLength { code: code::ALGORITHMS, len: p.len() };
        let mut end = 36 + 4 * (usize::from(p[32]) + usize::from(p[33]));
        for _ in 0..p[2] {
            let t = p.get(end..end + 4).ok_or(short)?;
            end += 4 + 4 * usize::from(t[1] & 0x0F);
        }
        if end != length {
            return Err(SpdmError::BadLength { code: code::ALGORITHMS, len: length });
        }
        let msg = exact(p, length, code::ALGORITHMS)?;
        let bad = |field: &'static str, got: u32| Err(SpdmError::BadSelection { field, got });
        if msg[6] != alg::MEAS_SPEC_DMTF {
            return bad("MeasurementSpecificationSel", u32::from(msg[6]));
        }
        let other = msg[7];
        let multi_key = self.version >= V13 && other & alg::MULTI_KEY_CONN != 0;
        if other & 0x0F != alg::OPAQUE_FMT1
            || other & !(0x0F | alg::MULTI_KEY_CONN) != 0
            || (other & 0x10 != 0 && !multi_key)
        {
            return bad("OtherParamsSelection", u32::from(other));
        }
        let Some(measurement_hash) = MeasurementHash::from_selection(le32(msg, 8)) else {
            return bad("MeasurementHashAlgo", le32(msg, 8));
        };
        let Some(asym) = Asym::from_selection(le32(msg, 12)) else {
            return bad("BaseAsymSel", le32(msg, 12));
        };
        let Some(hash) = BaseHash::from_selection(le32(msg, 16)) else {
            return bad("BaseHashSel", le32(msg, 16));
        };
        if self.version >= V13 && msg[31] != 0 {
            return bad("MELspecificationSel", u32::from(msg[31]));
        }
        if msg[32] != 0 || msg[33] != 0 {
            return bad("ExtAsymSelCount/ExtHashSelCount", u32::from(msg[32]) | u32::from(msg[33]) << 8);
        }
        let mut seen = [false; 3];
        let (mut dhe, mut aead) = (Dhe::Secp384r1, Aead::Aes256Gcm);
        let mut at = 36;
        for _ in 0..msg[2] {
            // In bounds: the walk above measured these tables.
            let t = msg.get(at..at + 4).ok_or(short)?;
            let (ty, count, bits) = (t[0], t[1], le16(t, 2));
            // FixedAlgCount (bits 7:4) is 2 for every defined table; external entries follow.
            let external = usize::from(count & 0x0F);
            at += 4 + 4 * external;
            let (slot, ok, field) = match ty {
                alg::TYPE_DHE => (0, Dhe::from_selection(bits).map(|d| dhe = d).is_some(), "DHE"),
                alg::TYPE_AEAD => (1, Aead::from_selection(bits).map(|a| aead = a).is_some(), "AEAD"),
                alg::TYPE_KEY_SCHEDULE => (2, bits == alg::KEY_SCHEDULE_SPDM, "KeySchedule"),
                // Requester signing is for mutual authentication, which the TSM does not offer:
                // nothing may be selected there.
                alg::TYPE_REQ_BASE_ASYM if bits == 0 && external == 0 => continue,
                alg::TYPE_REQ_BASE_ASYM => return bad("ReqBaseAsymAlg", u32::from(bits)),
                // A table of a type the TSM did not request selects nothing it will use.
                _ if count >> 4 == 2 => continue,
                other => return bad("AlgStruct type", u32::from(other)),
            };
            if count != 0x20 || !ok || seen[slot] {
                return bad(field, u32::from(bits));
            }
            seen[slot] = true;
        }
        if let Some(missing) = seen.iter().position(|s| !s) {
            return bad(["DHE", "AEAD", "KeySchedule"][missing], 0);
        }
        self.record(msg)?;
        self.measurement_hash = measurement_hash;
        self.multi_key_conn = multi_key;
        self.suite = Suite { asym, hash, dhe, aead };
        self.state = State::Done;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wrap(msg: &[u8]) -> std::vec::Vec<u8> {
        let mut out = std::vec![0u8; doe::object_len(msg.len())];
        doe::encode(ObjectType::Spdm, msg, &mut out).unwrap();
        out
    }

    extern crate std;

    fn version(entries: &[u16]) -> std::vec::Vec<u8> {
        let mut m = std::vec![V10, code::VERSION, 0, 0, 0, entries.len() as u8];
        for e in entries {
            m.extend_from_slice(&e.to_le_bytes());
        }
        m
    }

    fn capabilities(ver: u8, flags: u32, dts: u32, max: u32) -> std::vec::Vec<u8> {
        let mut m = std::vec![0u8; 20];
        m[0] = ver;
        m[1] = code::CAPABILITIES;
        m[8..12].copy_from_slice(&flags.to_le_bytes());
        m[12..16].copy_from_slice(&dts.to_le_bytes());
        m[16..20].copy_from_slice(&max.to_le_bytes());
        m
    }

    fn algorithms(ver: u8) -> std::vec::Vec<u8> {
        let mut m = std::vec![0u8; 48];
        m[0] = ver;
        m[1] = code::ALGORITHMS;
        m[2] = 3;
        m[4..6].copy_from_slice(&48u16.to_le_bytes());
        m[6] = 1;
        m[7] = 2;
        m[8..12].copy_from_slice(&4u32.to_le_bytes());
        m[12..16].copy_from_slice(&0x80u32.to_le_bytes());
        m[16..20].copy_from_slice(&2u32.to_le_bytes());
        m[36..40].copy_from_slice(&[2, 0x20, 0x10, 0]);
        m[40..44].copy_from_slice(&[3, 0x20, 0x02, 0]);
        m[44..48].copy_from_slice(&[5, 0x20, 0x01, 0]);
        m
    }

    const FLAGS: u32 = 0x2F6;

    fn sent(a: Action<'_, SpdmError>) -> std::vec::Vec<u8> {
        match a {
            Action::Send(b) => doe::decode_as(b, ObjectType::Spdm).unwrap().to_vec(),
            other => panic!("{other:?}"),
        }
    }

    /// Runs the negotiation against canned answers; returns the state machine.
    fn run(answers: &[std::vec::Vec<u8>]) -> Negotiation {
        let mut n = Negotiation::new();
        let mut last = n.start();
        for a in answers {
            if !matches!(last, Action::Send(_)) {
                break;
            }
            last = n.step(&wrap(a));
        }
        n
    }

    #[test]
    fn happy_path_negotiates_1_2_and_keeps_the_exact_vca() {
        let mut n = Negotiation::new();
        assert_eq!(sent(n.start()), [0x10, 0x84, 0, 0]);
        let v = version(&[0x1000, 0x1100, 0x1200]);
        let caps_req = sent(n.step(&wrap(&v)));
        assert_eq!(caps_req[..2], [0x12, 0xE1]);
        assert_eq!(le32(&caps_req, 8), 0x2_42C0);
        assert_eq!((le32(&caps_req, 12), le32(&caps_req, 16)), (4064, 8200), "DataTransferSize, MaxSPDMmsgSize");
        let caps = capabilities(0x12, FLAGS, 0x1000, 0x1000);
        let alg_req = sent(n.step(&wrap(&caps)));
        assert_eq!(alg_req.len(), 44);
        // Offered: P-256 and P-384, SHA-256 and SHA-384; secp256r1 and secp384r1, AES-128-GCM
        // and AES-256-GCM, the SPDM key schedule.
        assert_eq!(le32(&alg_req, 8), 0x90);
        assert_eq!(le32(&alg_req, 12), 0x03);
        assert_eq!(&alg_req[32..], &[2, 0x20, 0x18, 0, 3, 0x20, 0x03, 0, 5, 0x20, 0x01, 0]);
        let algs = algorithms(0x12);
        assert_eq!(n.step(&wrap(&algs)), Action::Done);
        let got = n.negotiated().unwrap();
        assert_eq!((got.version, got.responder_flags), (0x12, FLAGS));
        // VCA = the six exact messages; VERSION is 12 bytes although its DOE payload is padded.
        let mut vca = std::vec![0x10, 0x84, 0, 0];
        vca.extend_from_slice(&v);
        vca.extend_from_slice(&caps_req);
        vca.extend_from_slice(&caps);
        vca.extend_from_slice(&alg_req);
        vca.extend_from_slice(&algs);
        assert_eq!(n.vca(), &vca[..]);
    }

    #[test]
    fn prefers_1_3_when_offered() {
        let n = run(&[version(&[0x1200, 0x1300]), capabilities(0x13, FLAGS, 0x1000, 0x1000), algorithms(0x13)]);
        assert_eq!(n.negotiated().unwrap().version, 0x13);
    }

    #[test]
    fn each_bad_answer_fails_with_its_own_error() {
        let cases: std::vec::Vec<(std::vec::Vec<std::vec::Vec<u8>>, SpdmError)> = std::vec![
            (std::vec![version(&[0x1000, 0x1100])], SpdmError::NoCommonVersion),
            (std::vec![std::vec![0x10, 0x7F, 0x41, 0]], SpdmError::Responder { code: 0x41, data: 0 }),
            (std::vec![std::vec![0x12, 0x04, 0, 0, 0, 1, 0, 0x12]], SpdmError::WrongVersion { got: 0x12, want: 0x10 }),
            (std::vec![std::vec![0x10, 0x61, 0, 0]], SpdmError::UnexpectedResponse { got: 0x61, want: 0x04 }),
            (std::vec![std::vec![0x10, 0x04, 0, 0, 0, 3, 0, 0x12]], SpdmError::BadLength { code: 0x04, len: 8 }),
            (std::vec![[version(&[0x1100, 0x1200]), std::vec![7]].concat()], SpdmError::DirtyPadding,),
            (
                std::vec![version(&[0x1200]), capabilities(0x12, FLAGS & !cap::KEY_EX, 0x1000, 0x1000)],
                SpdmError::MissingCapabilities { missing: cap::KEY_EX },
            ),
            (
                std::vec![version(&[0x1200]), capabilities(0x12, FLAGS & !cap::MEAS_MASK | 0x08, 0x1000, 0x1000)],
                SpdmError::MissingCapabilities { missing: cap::MEAS_SIG },
            ),
            (
                std::vec![version(&[0x1200]), capabilities(0x12, FLAGS, 41, 0x1000)],
                SpdmError::BadTransferSize { data_transfer: 41, max_message: 0x1000 },
            ),
            (
                std::vec![version(&[0x1200]), capabilities(0x12, FLAGS, 0x1000, 0x800)],
                SpdmError::BadTransferSize { data_transfer: 0x1000, max_message: 0x800 },
            ),
        ];
        for (answers, want) in cases {
            let n = run(&answers);
            assert_eq!(n.error(), Some(want), "{answers:x?}");
            assert!(n.negotiated().is_none());
        }
    }

    #[test]
    fn algorithms_must_select_exactly_the_suite() {
        let prefix = [version(&[0x1200]), capabilities(0x12, FLAGS, 0x1000, 0x1000)];
        let mutate = |f: &dyn Fn(&mut std::vec::Vec<u8>)| {
            let mut a = algorithms(0x12);
            f(&mut a);
            let mut answers = prefix.to_vec();
            answers.push(a);
            run(&answers).error()
        };
        let sel = |field, got| Some(SpdmError::BadSelection { field, got });
        // Below the floor or outside what the TSM verifies: RSASSA-2048/3072/4096, RSAPSS-3072,
        // ECDSA P-521, SM2, EdDSA; SHA-512, SHA3, SM3; two at once; none.
        for bits in [0x01, 0x02, 0x04, 0x08, 0x20, 0x40, 0x100, 0x200, 0x400, 0x800, 0x90, 0] {
            assert_eq!(mutate(&|a| a[12..16].copy_from_slice(&u32::to_le_bytes(bits))), sel("BaseAsymSel", bits));
        }
        for bits in [0x04, 0x08, 0x10, 0x20, 0x40, 0x03, 0] {
            assert_eq!(mutate(&|a| a[16] = bits), sel("BaseHashSel", u32::from(bits)));
        }
        // FFDHE groups, secp521r1, SM2; ChaCha20-Poly1305, SM4; two at once.
        for bits in [0x01, 0x02, 0x04, 0x20, 0x40, 0x18] {
            assert_eq!(mutate(&|a| a[38] = bits), sel("DHE", u32::from(bits)));
        }
        for bits in [0x04, 0x08, 0x03] {
            assert_eq!(mutate(&|a| a[42] = bits), sel("AEAD", u32::from(bits)));
        }
        assert_eq!(mutate(&|a| a[8] = 0x10), sel("MeasurementHashAlgo", 0x10), "SHA3-256");
        assert_eq!(mutate(&|a| a[8] = 0x06), sel("MeasurementHashAlgo", 0x06), "two at once");
        assert_eq!(mutate(&|a| a[8] = 0x00), sel("MeasurementHashAlgo", 0), "none although MEAS_CAP");
        assert_eq!(mutate(&|a| a[7] = 0x01), sel("OtherParamsSelection", 0x01));
        assert_eq!(mutate(&|a| a[6] = 0x00), sel("MeasurementSpecificationSel", 0));
        assert_eq!(mutate(&|a| a[44] = 3), sel("AEAD", 0x01), "a second AEAD table");
        assert_eq!(mutate(&|a| a[44] = 9), sel("KeySchedule", 0), "an unrequested table instead");
        assert_eq!(
            mutate(&|a| {
                a[44] = 9;
                a[45] = 0x30
            }),
            sel("AlgStruct type", 9),
            "a table of no defined shape"
        );
        assert_eq!(mutate(&|a| a[44] = 4), sel("ReqBaseAsymAlg", 1), "mutual authentication");
        assert_eq!(mutate(&|a| a[7] = 0x12), sel("OtherParamsSelection", 0x12), "multi-key in SPDM 1.2");
        assert_eq!(mutate(&|a| a[7] = 0x22), sel("OtherParamsSelection", 0x22), "reserved bit");
        assert_eq!(mutate(&|a| a[4] = 44), Some(SpdmError::BadLength { code: 0x63, len: 44 }));
        assert_eq!(
            mutate(&|a| a[41] = 0x21),
            Some(SpdmError::BadLength { code: 0x63, len: 48 }),
            "one external entry more"
        );
        assert_eq!(mutate(&|a| a[2] = 4), Some(SpdmError::BadLength { code: 0x63, len: 48 }), "a table more than sent");
        assert_eq!(mutate(&|a| a.push(1)), Some(SpdmError::BadLength { code: 0x63, len: 52 }), "beyond padding");
        assert_eq!(
            mutate(&|a| {
                a[2] = 2;
                a[4] = 44;
                a.truncate(44);
            }),
            sel("KeySchedule", 0)
        );
    }

    /// Every choice the spec leaves to the responder and the TSM can honour is accepted.
    #[test]
    fn algorithms_accepts_the_responders_own_choices() {
        let prefix = |v: u8| [version(&[0x1200, 0x1300]), capabilities(v, FLAGS, 0x1000, 0x1000)];
        let accept = |v: u8, f: &dyn Fn(&mut std::vec::Vec<u8>)| {
            let mut a = algorithms(v);
            f(&mut a);
            let mut answers = prefix(v).to_vec();
            answers.push(a);
            let n = run(&answers);
            assert_eq!(n.error(), None);
            n.negotiated().unwrap()
        };
        for (bits, want) in [
            (0x01, MeasurementHash::RawBitStreamOnly),
            (0x02, MeasurementHash::Sha256),
            (0x04, MeasurementHash::Sha384),
            (0x08, MeasurementHash::Sha512),
        ] {
            assert_eq!(accept(0x13, &|a| a[8] = bits).measurement_hash, want);
        }
        assert!(accept(0x13, &|a| a[7] = 0x12).multi_key_conn, "1.3 multi-key connection");
        // Each suite field is the responder's pick among the offered ones, in any combination.
        assert_eq!(accept(0x13, &|_| {}).suite, Suite::P384);
        let p256 = |a: &mut std::vec::Vec<u8>| {
            a[12] = 0x10;
            a[16] = 0x01;
            a[38] = 0x08;
            a[42] = 0x01;
        };
        assert_eq!(accept(0x13, &p256).suite, Suite::P256);
        let mixed = accept(0x13, &|a| {
            a[16] = 0x01;
            a[42] = 0x01;
        });
        assert_eq!(
            mixed.suite,
            Suite { asym: Asym::EcdsaP384, hash: BaseHash::Sha256, dhe: Dhe::Secp384r1, aead: Aead::Aes128Gcm }
        );
        assert!(!accept(0x13, &|_| {}).multi_key_conn);
        // libspdm echoes a ReqBaseAsymAlg table with nothing selected; others may list tables of
        // types the TSM did not ask for, even with external entries.
        let extra = |a: &mut std::vec::Vec<u8>| {
            a[2] = 5;
            a.extend_from_slice(&[4, 0x20, 0, 0, 7, 0x21, 0, 0, 0xAA, 0xBB, 0xCC, 0xDD]);
            let len = a.len() as u16;
            a[4..6].copy_from_slice(&len.to_le_bytes());
        };
        assert_eq!(accept(0x13, &extra).version, 0x13);
    }

    #[test]
    fn a_finished_or_failed_negotiation_ignores_more_answers() {
        let mut n = run(&[version(&[0x1000])]);
        assert_eq!(n.error(), Some(SpdmError::NoCommonVersion));
        assert!(matches!(n.step(&wrap(&version(&[0x1200]))), Action::Failed(_)));
        assert_eq!(n.error(), Some(SpdmError::NotWaiting));
    }
}
