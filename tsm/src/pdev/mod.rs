//! PDEV: the TSM's context for one physical device function it talks to over SPDM (TDX
//! Connect's SPDM object, SEV-TIO's device context, CCA's PDEV). It owns the SPDM connection and
//! its evidence, the secured session once connected, the device's IDE streams, and the one
//! outstanding request the device may have (every device exchange goes through it).
//!
//! ```text
//!          SPDM.CONNECT (resumable)          SPDM.DISCONNECT (END_SESSION, resumable)
//!   New ───────────────────────────▶ Connected ───────────────────────────▶ Stopped
//!    │                                   │                                     │
//!    └──── a device answer fails ───────▶ Error ◀── a secured answer fails ─────┘ (n/a)
//! ```
//! SPDM.DELETE takes a PDEV in New, Stopped or Error, with no IDE stream and no TDI.

pub mod exchange;
pub mod km;

use crate::error::DeviceFault;
use crate::ide::RootPortStream;
use crate::spdm::connect::Connect;
use crate::spdm::session::Session;
use crate::spdm::Negotiated;

pub use exchange::{Exchange, Flow, Measure, Owner, Pending};
pub use km::{KmFlow, KmOp};

/// PDEVs the TSM can hold at once.
pub const MAX_PDEVS: usize = 4;
/// IDE streams per PDEV.
pub const MAX_STREAMS: usize = 2;
/// Bytes of the host's message page: the largest object moved in one step.
pub const MSG_BYTES: usize = 4096;
/// Largest plaintext SPDM message the TSM sends inside the session.
pub const PLAIN_BYTES: usize = 128;

// The TSM's DataTransferSize is what the message page carries as one DOE object, clear or
// sealed (session id, length, application-data length, tag).
const _: () = assert!(
    crate::doe::HEADER_BYTES
        + crate::spdm::secured::HEADER_BYTES
        + 2
        + crate::spdm::secured::TAG_BYTES
        + crate::spdm::TRANSFER_SIZE as usize
        <= MSG_BYTES
);

/// Where a PDEV stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PdevState {
    /// Created; no SPDM traffic yet, or SPDM.CONNECT in progress.
    New,
    /// Authenticated, measured, in a secured session: the evidence is kept.
    Connected,
    /// The session was ended (END_SESSION acknowledged).
    Stopped,
    /// A device answer failed a check, or the host abandoned an exchange: no further device
    /// traffic; only SPDM.DELETE (after the TDIs and streams are gone).
    Error,
}

/// The state of one IDE stream, from the root port's point of view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamState {
    /// Created; no keys yet (or keys being programmed).
    Created,
    /// Both ends hold live keys of the current key set.
    Secure,
    /// Keys stopped (KM STOP): no traffic, may be keyed again.
    Stopped,
    /// STREAM.BLOCK: the root port's end is disabled; only DELETE remains.
    Blocked,
    /// An IDE_KM answer failed: only BLOCK and DELETE remain.
    Error,
}

/// One selective IDE stream between the root port and the device.
#[derive(Clone, Debug)]
pub struct IdeStream {
    /// Stream ID.
    pub id: u8,
    /// The root port's register block.
    pub rp: RootPortStream,
    /// State.
    pub state: StreamState,
    /// The key set in use once secure.
    pub key_set_1: bool,
}

/// Digests of the device evidence the PDEV keeps, fixed at connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PdevEvidence {
    /// Negotiated SPDM version and algorithms.
    pub negotiated: Negotiated,
    /// SHA-384 of the certificate chain (SPDM chain format, as read).
    pub chain_digest: [u8; 48],
    /// SHA-384 of the measurement transcript the attestation report binds: the VCA's length,
    /// the VCA, and the signed GET_MEASUREMENTS exchange (`attest::evidence::transcript_digest`).
    pub measurements_digest: [u8; 48],
    /// The measurements were taken inside the secured session (after KEY_EXCHANGE / FINISH),
    /// not in the clear before it. The attestation report records it.
    pub measurements_in_session: bool,
}

/// A PDEV.
#[derive(Clone, Debug)]
pub struct Pdev {
    /// Its control page (PAMT type `Pdev`).
    pub page: crate::addr::Pfn,
    /// Function id: RID in 15:0, segment 23:16, segment valid bit 24.
    pub function: u32,
    /// State.
    pub state: PdevState,
    /// The connection: state machine, then the evidence it gathered.
    pub conn: Connect,
    /// The secured session, from Connected on.
    pub session: Option<Session>,
    /// Digests of the evidence, from Connected on.
    pub evidence: Option<PdevEvidence>,
    /// The one outstanding exchange with the device, and whose it is.
    pub exchange: Option<Exchange>,
    /// IDE streams.
    pub streams: [Option<IdeStream>; MAX_STREAMS],
    /// TDIs created on this PDEV.
    pub tdis: usize,
    /// Why it went to Error.
    pub fault: Option<DeviceFault>,
    /// The signed measurement exchange `evidence.measurements_digest` binds when it is not the
    /// connection's clear one: taken inside the session at connection, or the last re-collection
    /// that succeeded. The one in progress is the PDEV's exchange, so a failed or abandoned
    /// RECOLLECT leaves the evidence and its digest as they were.
    pub measured: Option<crate::spdm::meas::Measurements>,
}

/// Function ids carry RID (15:0), segment (23:16) and the segment-valid bit (24).
pub const FUNCTION_ID_MASK: u64 = 0x01FF_FFFF;
/// Bit 24 of a function id: the segment in bits 23:16 is valid (TDISP FUNCTION_ID).
pub const SEGMENT_VALID: u32 = 1 << 24;

/// A PCIe requester: the segment and the requester id (bus, device, function) in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Requester {
    /// PCI segment (0 when the function id leaves it unsaid).
    pub segment: u8,
    /// Requester id: bus (15:8), device and function (7:0).
    pub rid: u16,
}

/// The requester a function id names, or `None` if the id is malformed: bits outside
/// [`FUNCTION_ID_MASK`], or a segment in bits 23:16 without the segment-valid bit (TDISP
/// FUNCTION_ID: the segment is meaningful only when bit 24 says so). Both encodings of a function
/// on segment 0 (bit 24 clear, or set with segment 0) name the same requester, so ids are
/// compared through this, never raw: two spellings of one function are one function.
pub const fn requester(function: u64) -> Option<Requester> {
    if function & !FUNCTION_ID_MASK != 0 {
        return None;
    }
    let (segment, valid) = (((function >> 16) & 0xFF) as u8, function & SEGMENT_VALID as u64 != 0);
    if segment != 0 && !valid {
        return None;
    }
    Some(Requester { segment, rid: function as u16 })
}

impl Pdev {
    /// The SPDM version negotiated (0 before).
    pub fn version(&self) -> u8 {
        self.evidence.map_or(0, |e| e.negotiated.version)
    }

    /// The signed measurement exchange the evidence binds: the last successful re-collection,
    /// else the connection's. Never the one in progress.
    pub fn measurements(&self) -> Option<&[u8]> {
        match &self.measured {
            Some(m) => m.exchange(),
            None => self.conn.measurements(),
        }
    }

    /// RECOLLECT finished: the exchange `m` becomes the evidence, and the digest moves to it in
    /// the same step, so the bytes handed out always hash to the digest reports sign. Returns
    /// false, changing nothing, if `m` is not a complete exchange (a TSM bug).
    pub fn recollect_done(&mut self, m: crate::spdm::meas::Measurements) -> bool {
        let Some(evidence) = self.evidence.as_mut() else { return false };
        let Some(exchange) = m.exchange() else { return false };
        evidence.measurements_digest = attest::evidence::transcript_digest(self.conn.vca(), exchange);
        self.measured = Some(m);
        true
    }

    /// The connection finished with its measurements (`digest`, taken inside the session or
    /// not): the PDEV is CONNECTED and keeps the evidence. The session is already in place.
    ///
    /// # Errors
    /// `Corrupt` if the connection has no negotiated parameters or chain (a TSM bug).
    pub fn connected(&mut self, digest: [u8; 48], in_session: bool) -> Result<(), crate::error::TsmError> {
        let (Some(negotiated), Some(chain)) = (self.conn.negotiated(), self.conn.chain()) else {
            return Err(crate::error::TsmError::Corrupt);
        };
        self.evidence = Some(PdevEvidence {
            negotiated,
            chain_digest: *chain.digest(),
            measurements_digest: digest,
            measurements_in_session: in_session,
        });
        self.state = PdevState::Connected;
        Ok(())
    }

    /// The outstanding exchange's view for the summary.
    pub fn pending(&self) -> Pending {
        self.exchange.as_ref().map_or(Pending::None, Exchange::pending)
    }

    /// The live session: the PDEV's, or the one a KEY_UPDATE in progress holds.
    pub fn live_session(&self) -> bool {
        self.session.is_some() || matches!(self.exchange.as_ref().map(Exchange::flow), Some(Flow::KeyUpdate(_)))
    }

    /// Number of IDE streams.
    pub fn stream_count(&self) -> usize {
        self.streams.iter().flatten().count()
    }

    /// True if the stream `index` is secure (live keys on both ends).
    pub fn stream_secure(&self, index: usize) -> bool {
        matches!(self.streams.get(index), Some(Some(s)) if s.state == StreamState::Secure && s.rp.secure(s.key_set_1))
    }
}
