//! The SPDM 1.2/1.3 responder in the clear (DSP0274): VCA, certificates, CHALLENGE, signed
//! measurements and KEY_EXCHANGE. Every transcript keeps the exact message bytes, never the DOE
//! padding a request arrives with (wire-formats.md pitfall 1): each request's length is computed
//! from its own fields and any bytes after it are ignored.

use tsm::spdm::code;
use tsm::spdm::sig::{self, Context};
use tsm::spdm::suite::Transcript;

use crate::config::MeasurementBlock;
use crate::faults::{Reply, Signed};
use crate::Device;

/// SPDM ERROR codes (DSP0274 Table 58).
#[allow(missing_docs)]
pub mod error_code {
    pub const INVALID_REQUEST: u8 = 0x01;
    pub const UNEXPECTED_REQUEST: u8 = 0x04;
    pub const UNSPECIFIED: u8 = 0x05;
    pub const DECRYPT_ERROR: u8 = 0x06;
    pub const UNSUPPORTED_REQUEST: u8 = 0x07;
    pub const SESSION_LIMIT_EXCEEDED: u8 = 0x0A;
    pub const SESSION_REQUIRED: u8 = 0x0B;
    pub const VERSION_MISMATCH: u8 = 0x41;
}

/// The responder's capability flags: CERT | CHAL | MEAS_SIG | MEAS_FRESH | ENCRYPT | MAC | KEY_EX |
/// HBEAT | KEY_UPD | CHUNK.
pub const RESPONDER_FLAGS: u32 = 0x2_62F6;
/// DataTransferSize and MaxSPDMmsgSize: below QEMU's 0x1200-byte socket limit with room for the
/// DOE header and the secured-message overhead.
pub const TRANSFER_SIZE: u32 = 0x1000;
/// Largest CERTIFICATE portion.
pub const CERT_PORTION_MAX: usize = TRANSFER_SIZE as usize - 8;
/// Sessions the device holds at once.
pub const MAX_SESSIONS: usize = 4;

const REQ_FLAG_KEY_EX: u32 = 0x200;
const REQ_FLAG_MAC: u32 = 0x80;
const REQ_FLAG_ENCRYPT: u32 = 0x40;
const REQ_FLAG_CHUNK: u32 = 0x20000;
/// HBEAT_CAP, of either side.
pub(crate) const FLAG_HBEAT: u32 = 0x2000;

/// Where the connection is in the negotiation (DSP0274 §10.1 ordering).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// No GET_VERSION yet: only GET_VERSION is expected.
    NotStarted,
    /// VERSION sent: GET_CAPABILITIES next.
    AfterVersion,
    /// CAPABILITIES sent: NEGOTIATE_ALGORITHMS next.
    AfterCapabilities,
    /// ALGORITHMS sent: everything else may follow.
    Negotiated,
}

/// The connection state GET_VERSION resets.
#[derive(Clone, Debug)]
pub(crate) struct Connection {
    pub(crate) phase: Phase,
    /// 0x10 until GET_CAPABILITIES picks the version.
    pub(crate) version: u8,
    pub(crate) requester_flags: u32,
    /// The requester's DataTransferSize and MaxSPDMmsgSize (0 before GET_CAPABILITIES).
    pub(crate) requester_dts: u32,
    pub(crate) requester_max: u32,
    /// Message A: the six exact VCA messages.
    pub(crate) vca: Vec<u8>,
    /// Message B since the VCA or the last CHALLENGE.
    pub(crate) b: Vec<u8>,
    /// The measurement exchanges since the last signed one (L1 without the VCA).
    pub(crate) l1: Vec<u8>,
}

impl Connection {
    pub(crate) fn new() -> Connection {
        Connection {
            phase: Phase::NotStarted,
            version: 0x10,
            requester_flags: 0,
            requester_dts: 0,
            requester_max: 0,
            vca: Vec::new(),
            b: Vec::new(),
            l1: Vec::new(),
        }
    }
}

pub(crate) fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

pub(crate) fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// An SPDM ERROR message.
pub(crate) fn error(version: u8, code: u8, data: u8) -> Vec<u8> {
    vec![version, code::ERROR, code, data]
}

/// The exact request of `len` bytes, or ERROR(InvalidRequest) if fewer bytes came.
fn exact(version: u8, m: &[u8], len: usize) -> Result<&[u8], Vec<u8>> {
    m.get(..len).ok_or_else(|| error(version, error_code::INVALID_REQUEST, 0))
}

impl Device {
    /// One SPDM request in the clear → its response (never nothing).
    pub(crate) fn spdm(&mut self, m: &[u8]) -> Vec<u8> {
        match self.spdm_checked(m) {
            Ok(r) | Err(r) => r,
        }
    }

    fn spdm_checked(&mut self, m: &[u8]) -> Result<Vec<u8>, Vec<u8>> {
        let version = self.conn.version;
        if m.len() < 4 {
            return Err(error(version, error_code::INVALID_REQUEST, 0));
        }
        let (ver, req) = (m[0], m[1]);
        if req == code::GET_VERSION {
            if ver != 0x10 {
                return Err(error(0x10, error_code::VERSION_MISMATCH, 0));
            }
            return Ok(self.get_version(&m[..4]));
        }
        match self.conn.phase {
            Phase::NotStarted => return Err(error(0x10, error_code::UNEXPECTED_REQUEST, 0)),
            Phase::AfterVersion if req == code::GET_CAPABILITIES => {
                if !self.config.spdm_versions.contains(&ver) {
                    return Err(error(0x10, error_code::VERSION_MISMATCH, 0));
                }
                return self.get_capabilities(m);
            }
            // The version is not settled yet: anything but GET_CAPABILITIES is out of order.
            Phase::AfterVersion => return Err(error(0x10, error_code::UNEXPECTED_REQUEST, 0)),
            Phase::AfterCapabilities | Phase::Negotiated => {}
        }
        if ver != version {
            return Err(error(version, error_code::VERSION_MISMATCH, 0));
        }
        let ordered = |phase: Phase| if self.conn.phase == phase { Ok(()) } else { Err(unexpected(version)) };
        if req != code::GET_MEASUREMENTS {
            // L1 covers consecutive measurement exchanges only.
            self.conn.l1.clear();
        }
        match req {
            code::GET_CAPABILITIES => Err(unexpected(version)),
            code::NEGOTIATE_ALGORITHMS => {
                ordered(Phase::AfterCapabilities)?;
                self.negotiate_algorithms(m)
            }
            code::GET_DIGESTS => {
                ordered(Phase::Negotiated)?;
                Ok(self.get_digests(m))
            }
            code::GET_CERTIFICATE => {
                ordered(Phase::Negotiated)?;
                self.get_certificate(m)
            }
            code::CHALLENGE => {
                ordered(Phase::Negotiated)?;
                self.challenge(m)
            }
            code::GET_MEASUREMENTS => {
                ordered(Phase::Negotiated)?;
                self.get_measurements(m, None)
            }
            code::KEY_EXCHANGE => {
                ordered(Phase::Negotiated)?;
                self.key_exchange(m)
            }
            code::FINISH => Err(unexpected(version)),
            code::END_SESSION | code::KEY_UPDATE | code::HEARTBEAT | VENDOR_DEFINED_REQUEST => {
                Err(error(version, error_code::SESSION_REQUIRED, 0))
            }
            other => Err(error(version, error_code::UNSUPPORTED_REQUEST, other)),
        }
    }

    fn get_version(&mut self, request: &[u8]) -> Vec<u8> {
        // GET_VERSION resets the connection; sessions end with it (DSP0274 §10.3).
        self.end_all_sessions();
        self.conn = Connection::new();
        let versions = &self.config.spdm_versions;
        let mut r = vec![0x10, code::VERSION, 0, 0, 0, versions.len() as u8];
        for v in versions {
            r.extend_from_slice(&(u16::from(*v) << 8).to_le_bytes());
        }
        self.conn.vca.extend_from_slice(request);
        self.conn.vca.extend_from_slice(&r);
        self.conn.phase = Phase::AfterVersion;
        r
    }

    fn get_capabilities(&mut self, m: &[u8]) -> Result<Vec<u8>, Vec<u8>> {
        let ver = m[0];
        let msg = exact(ver, m, 20)?;
        let invalid = || error(ver, error_code::INVALID_REQUEST, 0);
        let (ct_exponent, flags) = (msg[5], le32(msg, 8));
        let (data_transfer, max_message) = (le32(msg, 12), le32(msg, 16));
        // libspdm's checks (wire-formats.md §3.3).
        let sessions = flags & REQ_FLAG_KEY_EX != 0;
        if ct_exponent > 31
            || data_transfer < 42
            || data_transfer > max_message
            || (flags & REQ_FLAG_CHUNK == 0 && data_transfer != max_message)
            || (sessions && flags & (REQ_FLAG_MAC | REQ_FLAG_ENCRYPT) == 0)
        {
            return Err(invalid());
        }
        let mut r = vec![0u8; 20];
        r[0] = ver;
        r[1] = code::CAPABILITIES;
        r[5] = 12; // CTExponent: 4 ms
        r[8..12].copy_from_slice(&RESPONDER_FLAGS.to_le_bytes());
        r[12..16].copy_from_slice(&TRANSFER_SIZE.to_le_bytes());
        r[16..20].copy_from_slice(&TRANSFER_SIZE.to_le_bytes());
        // ALL CHECKS PASSED
        self.conn.version = ver;
        self.conn.requester_flags = flags;
        self.conn.requester_dts = data_transfer;
        self.conn.requester_max = max_message;
        self.conn.vca.extend_from_slice(msg);
        self.conn.vca.extend_from_slice(&r);
        self.conn.phase = Phase::AfterCapabilities;
        Ok(r)
    }

    fn negotiate_algorithms(&mut self, m: &[u8]) -> Result<Vec<u8>, Vec<u8>> {
        use tsm::spdm::alg;
        let ver = self.conn.version;
        let invalid = || error(ver, error_code::INVALID_REQUEST, 0);
        let len = usize::from(le16(m, 4));
        if !(32..=128).contains(&len) {
            return Err(invalid());
        }
        let msg = exact(ver, m, len)?;
        let ext = usize::from(msg[28]) + usize::from(msg[29]);
        let mut at = 32 + 4 * ext;
        let mut previous = 0u8;
        let mut tables = Vec::new();
        for _ in 0..msg[2] {
            let t = msg.get(at..at + 4).ok_or_else(invalid)?;
            let (ty, count, supported) = (t[0], t[1], le16(t, 2));
            // Ascending types, two fixed bytes, something offered (libspdm's rules).
            if ty <= previous || count >> 4 != 2 || supported == 0 || !(2..=5).contains(&ty) {
                return Err(invalid());
            }
            previous = ty;
            tables.push((ty, supported));
            at += 4 + 4 * usize::from(count & 0x0F);
        }
        if at != len {
            return Err(invalid());
        }
        let offered = |ty: u8, bit: u16| tables.iter().any(|&(t, s)| t == ty && s & bit != 0);
        let sessions = self.conn.requester_flags & REQ_FLAG_KEY_EX != 0;
        // The identity's suite is the only one the device serves (its chain's RootHash is in that
        // suite's hash).
        let own = self.identity.suite;
        let suite = le32(msg, 8) & own.asym.bit() != 0
            && le32(msg, 12) & own.hash.bit() != 0
            && msg[6] & alg::MEAS_SPEC_DMTF != 0
            && msg[7] & alg::OPAQUE_FMT1 != 0;
        let session_suite = offered(alg::TYPE_DHE, own.dhe.bit())
            && offered(alg::TYPE_AEAD, own.aead.bit())
            && offered(alg::TYPE_KEY_SCHEDULE, alg::KEY_SCHEDULE_SPDM);
        if !suite || (sessions && !session_suite) {
            return Err(invalid());
        }
        let mut r = vec![0u8; 36 + 4 * tables.len()];
        r[0] = ver;
        r[1] = code::ALGORITHMS;
        r[2] = tables.len() as u8;
        let len = r.len() as u16;
        r[4..6].copy_from_slice(&len.to_le_bytes());
        r[6] = alg::MEAS_SPEC_DMTF;
        r[7] = alg::OPAQUE_FMT1;
        r[8..12].copy_from_slice(&alg::MEAS_HASH_SHA384.to_le_bytes());
        r[12..16].copy_from_slice(&own.asym.bit().to_le_bytes());
        r[16..20].copy_from_slice(&own.hash.bit().to_le_bytes());
        for (i, &(ty, _)) in tables.iter().enumerate() {
            let selected = match ty {
                alg::TYPE_DHE => own.dhe.bit(),
                alg::TYPE_AEAD => own.aead.bit(),
                alg::TYPE_KEY_SCHEDULE => alg::KEY_SCHEDULE_SPDM,
                _ => 0, // ReqBaseAsymAlg: no mutual authentication
            };
            let at = 36 + 4 * i;
            r[at] = ty;
            r[at + 1] = 0x20;
            r[at + 2..at + 4].copy_from_slice(&selected.to_le_bytes());
        }
        // ALL CHECKS PASSED
        self.conn.vca.extend_from_slice(msg);
        self.conn.vca.extend_from_slice(&r);
        self.conn.phase = Phase::Negotiated;
        Ok(r)
    }

    fn get_digests(&mut self, m: &[u8]) -> Vec<u8> {
        let ver = self.conn.version;
        // 1.3: Param1 is SupportedSlotMask; 1.2: reserved.
        let supported = if ver >= 0x13 { 0x01 } else { 0 };
        let mut r = vec![ver, code::DIGESTS, supported, 0x01];
        r.extend_from_slice(&self.identity.chain_digest);
        self.conn.b.extend_from_slice(&m[..4]);
        self.conn.b.extend_from_slice(&r);
        r
    }

    fn get_certificate(&mut self, m: &[u8]) -> Result<Vec<u8>, Vec<u8>> {
        let ver = self.conn.version;
        let msg = exact(ver, m, 8)?;
        let (slot, offset, length) = (msg[2] & 0x0F, usize::from(le16(msg, 4)), usize::from(le16(msg, 6)));
        let chain = &self.identity.chain;
        if slot != 0 || offset >= chain.len() || length == 0 {
            return Err(error(ver, error_code::INVALID_REQUEST, 0));
        }
        // A requester that takes chunks gets what it asked for, in chunks if it is larger than
        // its DataTransferSize (`chunk.rs`), up to what it can hold whole; one that does not,
        // a portion that fits a transfer.
        let room = if self.conn.requester_flags & REQ_FLAG_CHUNK != 0 && ver >= 0x12 {
            (self.conn.requester_max as usize).saturating_sub(8)
        } else {
            CERT_PORTION_MAX.min((self.conn.requester_dts as usize).saturating_sub(8))
        };
        let portion = length.min(room).min(chain.len() - offset);
        if portion == 0 {
            return Err(error(ver, error_code::INVALID_REQUEST, 0));
        }
        let remainder = chain.len() - offset - portion;
        let mut r = vec![ver, code::CERTIFICATE, 0, 0];
        r.extend_from_slice(&(portion as u16).to_le_bytes());
        r.extend_from_slice(&(remainder as u16).to_le_bytes());
        r.extend_from_slice(&chain[offset..offset + portion]);
        self.conn.b.extend_from_slice(msg);
        self.conn.b.extend_from_slice(&r);
        Ok(r)
    }

    /// The measurement blocks as the device reports them: the configured ones, one bit of one
    /// value flipped under the wrong-measurement fault.
    pub(crate) fn reported_measurements(&self) -> Vec<MeasurementBlock> {
        let mut blocks = self.config.measurements.clone();
        if let Some(index) = self.config.faults.wrong_measurement {
            for b in blocks.iter_mut().filter(|b| b.index == index) {
                if let Some(first) = b.value.first_mut() {
                    *first ^= 0x01;
                }
            }
        }
        blocks
    }

    /// Whether the overlong-length fault hits `reply`.
    pub(crate) fn overlong(&self, reply: Reply) -> bool {
        self.config.faults.overlong_length == Some(reply)
    }

    /// The suite's hash over the measurement blocks a summary of `kind` covers (0xFF all, 1 the
    /// immutable ROM ones), as libspdm computes it.
    pub(crate) fn measurement_summary(&self, kind: u8) -> Vec<u8> {
        let mut h = self.transcript();
        for b in &self.reported_measurements() {
            if kind == 0xFF || b.value_type & 0x7F == 0 {
                h.update(b.encode());
            }
        }
        h.finalize().to_vec()
    }

    /// An empty transcript in the suite's hash.
    pub(crate) fn transcript(&self) -> Transcript {
        Transcript::new(self.identity.suite.hash)
    }

    /// Signs `transcript_hash` (the suite's hash of the transcript) with the 1.2+ prefix for
    /// `context`: ECDSA over the suite's hash of prefix ‖ transcript hash.
    pub(crate) fn sign(&self, context: Context, transcript_hash: &[u8]) -> Result<Vec<u8>, Vec<u8>> {
        let ver = self.conn.version;
        let prefix = sig::prefix(ver, context).map_err(|_| error(ver, error_code::UNSPECIFIED, 0))?;
        let mut message = Vec::with_capacity(prefix.len() + transcript_hash.len());
        message.extend_from_slice(&prefix);
        message.extend_from_slice(transcript_hash);
        let digest = self.identity.suite.hash.digest(&message);
        let mut out =
            self.identity.leaf_key.sign_prehash(&digest).map_err(|_| error(ver, error_code::UNSPECIFIED, 0))?;
        if self.config.faults.bad_signature == Some(Signed::of(context)) {
            if let Some(last) = out.last_mut() {
                *last ^= 0x01;
            }
        }
        Ok(out)
    }

    fn challenge(&mut self, m: &[u8]) -> Result<Vec<u8>, Vec<u8>> {
        let ver = self.conn.version;
        let len = if ver >= 0x13 { 44 } else { 36 };
        let msg = exact(ver, m, len)?;
        let (slot, summary) = (msg[2], msg[3]);
        if slot != 0 || !matches!(summary, 0 | 1 | 0xFF) {
            return Err(error(ver, error_code::INVALID_REQUEST, 0));
        }
        let mut r = vec![ver, code::CHALLENGE_AUTH, 0, 0x01];
        r.extend_from_slice(&self.identity.chain_digest);
        r.extend_from_slice(&self.rng.bytes::<32>());
        if summary != 0 {
            r.extend_from_slice(&self.measurement_summary(summary));
        }
        // No opaque data (the overlong-length fault announces 256 bytes of it).
        let opaque_len: u16 = if self.overlong(Reply::ChallengeAuth) { 0x100 } else { 0 };
        r.extend_from_slice(&opaque_len.to_le_bytes());
        if ver >= 0x13 {
            r.extend_from_slice(&msg[36..44]);
        }
        let mut m1 = self.transcript();
        m1.update(&self.conn.vca);
        m1.update(&self.conn.b);
        m1.update(msg);
        m1.update(&r);
        let signature = self.sign(Context::ChallengeAuth, &m1.finalize())?;
        r.extend_from_slice(&signature);
        // ALL CHECKS PASSED
        self.conn.b.clear();
        Ok(r)
    }

    /// GET_MEASUREMENTS in the clear (`session` None) or inside a session: each keeps its own L1
    /// (libspdm's `message_m` of the connection or of the session); both begin with the VCA
    /// (DSP0274 1.2 §10.11, "L1/L2 transcript").
    pub(crate) fn get_measurements(&mut self, m: &[u8], session: Option<u32>) -> Result<Vec<u8>, Vec<u8>> {
        let mut l1 = match session {
            Some(id) => self.sessions.get_mut(&id).map(|s| std::mem::take(&mut s.l1)).unwrap_or_default(),
            None => std::mem::take(&mut self.conn.l1),
        };
        let r = self.measurements_over(m, &mut l1);
        match session {
            Some(id) => {
                if let Some(s) = self.sessions.get_mut(&id) {
                    s.l1 = l1;
                }
            }
            None => self.conn.l1 = l1,
        }
        r
    }

    fn measurements_over(&mut self, m: &[u8], l1_kept: &mut Vec<u8>) -> Result<Vec<u8>, Vec<u8>> {
        let ver = self.conn.version;
        let signed = m[2] & 0x01 != 0;
        let context = if ver >= 0x13 { 8 } else { 0 };
        let len = if signed { 37 } else { 4 } + context;
        let msg = exact(ver, m, len)?;
        let invalid = || error(ver, error_code::INVALID_REQUEST, 0);
        if signed && msg[36] & 0x0F != 0 {
            return Err(invalid());
        }
        let operation = msg[3];
        let reported = self.reported_measurements();
        let blocks: Vec<&MeasurementBlock> = match operation {
            0 => Vec::new(),
            0xFF => reported.iter().collect(),
            index => vec![reported.iter().find(|b| b.index == index).ok_or_else(invalid)?],
        };
        let record: Vec<u8> = blocks.iter().flat_map(|b| b.encode()).collect();
        let total = if operation == 0 { reported.len() as u8 } else { 0 };
        let mut r = vec![ver, code::MEASUREMENTS, total, 0, blocks.len() as u8];
        // The overlong-length fault announces one byte more record than there is.
        let record_len = record.len() as u32 + u32::from(self.overlong(Reply::Measurements));
        r.extend_from_slice(&record_len.to_le_bytes()[..3]);
        r.extend_from_slice(&record);
        r.extend_from_slice(&self.rng.bytes::<32>());
        r.extend_from_slice(&0u16.to_le_bytes()); // no opaque data
        if ver >= 0x13 {
            r.extend_from_slice(&msg[len - 8..len]);
        }
        if !signed {
            l1_kept.extend_from_slice(msg);
            l1_kept.extend_from_slice(&r);
            return Ok(r);
        }
        let mut l1 = self.transcript();
        l1.update(&self.conn.vca);
        l1.update(&*l1_kept);
        l1.update(msg);
        l1.update(&r);
        let signature = self.sign(Context::Measurements, &l1.finalize())?;
        r.extend_from_slice(&signature);
        // ALL CHECKS PASSED
        l1_kept.clear();
        Ok(r)
    }
}

/// VENDOR_DEFINED_REQUEST.
pub(crate) const VENDOR_DEFINED_REQUEST: u8 = 0xFE;
/// VENDOR_DEFINED_RESPONSE.
pub(crate) const VENDOR_DEFINED_RESPONSE: u8 = 0x7E;

fn unexpected(version: u8) -> Vec<u8> {
    error(version, error_code::UNEXPECTED_REQUEST, 0)
}
