//! Large responses (DSP0274 1.2 §10.22): a response longer than the requester's DataTransferSize
//! goes in chunks when both sides announced CHUNK_CAP. The device keeps it, answers ERROR
//! LargeResponse with a handle, and serves CHUNK_GET (handle, ChunkSeqNo 0, 1, ...) with
//! CHUNK_RESPONSEs of at most DataTransferSize bytes each, the first naming the
//! LargeMessageSize, the last flagged LastChunk; then the response is forgotten. A requester
//! without CHUNK_CAP gets ERROR ResponseTooLarge instead. In the clear or inside a session: the
//! chunks travel where the request came.
//!
//! The device's own MaxSPDMmsgSize equals its DataTransferSize, so no request of a requester is
//! a large one: CHUNK_SEND has no use with it and is refused as an invalid request.

use crate::spdm::{error, error_code, le16};
use crate::Device;

/// ERROR codes of large messages.
const ERROR_RESPONSE_TOO_LARGE: u8 = 0x0D;
const ERROR_LARGE_RESPONSE: u8 = 0x0F;
/// Request and response codes.
pub(crate) const CHUNK_SEND: u8 = 0x85;
pub(crate) const CHUNK_GET: u8 = 0x86;
const CHUNK_RESPONSE: u8 = 0x06;
/// CHUNK_RESPONSE's header (the first has LargeMessageSize after it).
const HEADER: usize = 12;
const CHUNK_CAP: u32 = 0x2_0000;

/// A response the device serves in chunks.
#[derive(Clone, Debug)]
pub(crate) struct Large {
    session: Option<u32>,
    handle: u8,
    response: Vec<u8>,
    sent: usize,
    seq: u16,
}

impl Device {
    /// `reply` as it leaves: itself if it fits the requester's DataTransferSize (or none was
    /// announced yet); else kept for CHUNK_GET and answered ERROR LargeResponse, or ERROR
    /// ResponseTooLarge when the requester takes no chunks or could not hold it whole.
    pub(crate) fn chunked(&mut self, session: Option<u32>, reply: Vec<u8>) -> Vec<u8> {
        let (dts, max) = (self.conn.requester_dts as usize, self.conn.requester_max as usize);
        let Some(&version) = reply.first() else { return reply };
        if dts == 0 || reply.len() <= dts {
            return reply;
        }
        if self.conn.requester_flags & CHUNK_CAP == 0 || version < 0x12 || reply.len() > max {
            return error(version, ERROR_RESPONSE_TOO_LARGE, 0);
        }
        let handle = self.next_token;
        self.next_token = self.next_token.wrapping_add(1);
        self.large = Some(Large { session, handle, response: reply, sent: 0, seq: 0 });
        vec![version, tsm::spdm::code::ERROR, ERROR_LARGE_RESPONSE, 0, handle]
    }

    /// CHUNK_GET in `session` (None: the clear) → the next CHUNK_RESPONSE, or ERROR for a
    /// handle or sequence number the device did not hand out; `None` if `m` is another request.
    pub(crate) fn chunk_get(&mut self, session: Option<u32>, m: &[u8]) -> Option<Vec<u8>> {
        let version = *m.first()?;
        match *m.get(1)? {
            CHUNK_GET => {}
            CHUNK_SEND => return Some(error(version, error_code::INVALID_REQUEST, 0)),
            _ => return None,
        }
        let invalid = || Some(error(version, error_code::INVALID_REQUEST, 0));
        if m.len() < 6 {
            return invalid();
        }
        let (handle, seq) = (m[3], le16(m, 4));
        let dts = self.conn.requester_dts as usize;
        let Some(large) = self.large.as_mut() else { return invalid() };
        if large.session != session || large.handle != handle || large.seq != seq {
            return invalid();
        }
        let first = seq == 0;
        let room = dts.saturating_sub(HEADER + if first { 4 } else { 0 });
        let size = room.min(large.response.len() - large.sent);
        let last = large.sent + size == large.response.len();
        let mut r = vec![version, CHUNK_RESPONSE, u8::from(last), handle];
        r.extend_from_slice(&seq.to_le_bytes());
        r.extend_from_slice(&[0, 0]);
        r.extend_from_slice(&(size as u32).to_le_bytes());
        if first {
            r.extend_from_slice(&(large.response.len() as u32).to_le_bytes());
        }
        r.extend_from_slice(&large.response[large.sent..large.sent + size]);
        // ALL CHECKS PASSED
        large.sent += size;
        large.seq = large.seq.wrapping_add(1);
        if last {
            self.large = None;
        }
        Some(r)
    }
}
