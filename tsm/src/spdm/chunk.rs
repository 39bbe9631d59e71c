//! Large SPDM messages (DSP0274 1.2 §10.22, "CHUNK_SEND and CHUNK_GET"), the requester's side
//! of a response: a responder whose answer is longer than the requester's DataTransferSize
//! answers ERROR LargeResponse with a Handle, and the requester takes the message in pieces with
//! CHUNK_GET (Handle, ChunkSeqNo 0, 1, ...) until a CHUNK_RESPONSE carries the LastChunk bit.
//! The first chunk names the LargeMessageSize; the pieces are reassembled into one buffer of the
//! TSM's MaxSPDMmsgSize ([`MAX_MESSAGE`]) and the flow gets the whole response as if it had
//! come in one piece: its transcripts hold the request and that response, never the ERROR, the
//! CHUNK_GETs or the CHUNK_RESPONSEs.
//!
//! Every field of every CHUNK_RESPONSE is checked against the bounds it lives in before a byte
//! is copied: the handle and the sequence number against the ones asked for, the
//! LargeMessageSize against the TSM's buffer and DataTransferSize (a message that fits one
//! transfer is no large message), each chunk against what is left, the LastChunk bit against the
//! bytes. Each refusal has its own [`SpdmError`]. Only the clear stages of SPDM.CONNECT need it:
//! every response the TSM asks for inside the session fits its DataTransferSize or is too large
//! to keep (`pdev::Exchange`).

use crate::doe::{self, ObjectType};
use crate::spdm::cert::CHAIN_MAX;
use crate::spdm::negotiate::{code, le16, le32, SpdmError, TRANSFER_SIZE};

/// ERROR LargeResponse.
pub const ERROR_LARGE_RESPONSE: u8 = 0x0F;
/// CHUNK_GET (request code).
pub const CHUNK_GET: u8 = 0x86;
/// CHUNK_RESPONSE (response code).
pub const CHUNK_RESPONSE: u8 = 0x06;
/// CHUNK_RESPONSE Param1 bit 0: this chunk is the last.
pub const LAST_CHUNK: u8 = 0x01;
/// The TSM's MaxSPDMmsgSize: the largest response it reassembles, a CERTIFICATE carrying the
/// longest chain it keeps in one portion.
pub const MAX_MESSAGE: usize = 8 + CHAIN_MAX;
/// Bytes of a CHUNK_RESPONSE before its chunk (the first one has 4 more: LargeMessageSize).
pub const RESPONSE_HEADER_BYTES: usize = 12;
/// The smallest chunk a responder may send before the last: its DataTransferSize is at least 42
/// (DSP0274 1.2, MinDataTransferSize), less the header.
pub const MIN_CHUNK: usize = 42 - RESPONSE_HEADER_BYTES;

/// The handle of an ERROR LargeResponse (a plain SPDM message) at `version`, if `answer` is one.
pub fn large_response(version: u8, answer: &[u8]) -> Option<u8> {
    match *answer {
        [v, code::ERROR, ERROR_LARGE_RESPONSE, _, handle, ..] if v == version => Some(handle),
        _ => None,
    }
}

/// A large response being taken in chunks.
#[derive(Clone, Debug)]
pub struct ChunkGet {
    version: u8,
    handle: u8,
    /// The next ChunkSeqNo.
    seq: u16,
    /// LargeMessageSize, once the first chunk named it.
    total: usize,
    /// Bytes reassembled.
    len: usize,
    /// The DOE header, then the message: the whole response as a clear object, ready for the
    /// flow.
    buf: [u8; doe::HEADER_BYTES + MAX_MESSAGE + 3],
}

impl ChunkGet {
    /// After ERROR LargeResponse with `handle` at `version`.
    pub fn new(version: u8, handle: u8) -> ChunkGet {
        ChunkGet { version, handle, seq: 0, total: 0, len: 0, buf: [0; doe::HEADER_BYTES + MAX_MESSAGE + 3] }
    }

    /// The next CHUNK_GET.
    pub fn request(&self) -> [u8; 6] {
        let seq = self.seq.to_le_bytes();
        [self.version, CHUNK_GET, 0, self.handle, seq[0], seq[1]]
    }

    /// Takes one CHUNK_RESPONSE (a plain SPDM message; DOE padding after it is tolerated, the
    /// way the rest of the requester tolerates it): `Ok(true)` once the message is whole.
    ///
    /// # Errors
    /// ERROR from the responder; another version, code or handle; a sequence number out of
    /// order; a LargeMessageSize beyond the TSM's MaxSPDMmsgSize or within its DataTransferSize;
    /// an empty chunk, a short one before the last, one past the message; a LastChunk bit that
    /// disagrees with the bytes.
    pub fn step(&mut self, answer: &[u8]) -> Result<bool, SpdmError> {
        let short = SpdmError::BadLength { code: CHUNK_RESPONSE, len: answer.len() };
        let [version, response, attributes, handle, ..] = *answer else { return Err(short) };
        if version != self.version {
            return Err(SpdmError::WrongVersion { got: version, want: self.version });
        }
        if response == code::ERROR {
            return Err(SpdmError::Responder { code: attributes, data: handle });
        }
        if response != CHUNK_RESPONSE {
            return Err(SpdmError::UnexpectedResponse { got: response, want: CHUNK_RESPONSE });
        }
        if handle != self.handle {
            return Err(SpdmError::ChunkHandle { got: handle, want: self.handle });
        }
        let first = self.seq == 0;
        let header = RESPONSE_HEADER_BYTES + if first { 4 } else { 0 };
        if answer.len() < header {
            return Err(short);
        }
        let seq = le16(answer, 4);
        if seq != self.seq {
            return Err(SpdmError::ChunkSequence { got: seq, want: self.seq });
        }
        let size = usize::try_from(le32(answer, 8)).unwrap_or(usize::MAX);
        let total = if first { usize::try_from(le32(answer, 12)).unwrap_or(usize::MAX) } else { self.total };
        if first && (total > MAX_MESSAGE || total <= TRANSFER_SIZE as usize) {
            return Err(SpdmError::LargeMessageSize { size: total });
        }
        let end = header.checked_add(size).ok_or(short)?;
        let chunk = crate::spdm::negotiate::exact(answer, end, CHUNK_RESPONSE)?;
        let last = attributes & LAST_CHUNK != 0;
        let after = self.len + size;
        if size == 0 || after > total || (!last && size < MIN_CHUNK) {
            return Err(SpdmError::ChunkSize { size, left: total - self.len });
        }
        if attributes & !LAST_CHUNK != 0 || last != (after == total) {
            return Err(SpdmError::ChunkLast { attributes, left: total - after });
        }
        // ALL CHECKS PASSED
        let at = doe::HEADER_BYTES + self.len;
        self.buf[at..at + size].copy_from_slice(&chunk[header..]);
        self.total = total;
        self.len = after;
        self.seq = self.seq.wrapping_add(1);
        Ok(last)
    }

    /// The whole response as a clear SPDM object, once the last chunk came.
    pub fn object(&mut self) -> Option<&[u8]> {
        if self.total == 0 || self.len != self.total {
            return None;
        }
        let n = doe::frame(ObjectType::Spdm, self.len, &mut self.buf).ok()?;
        Some(&self.buf[..n])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    extern crate std;
    use std::vec::Vec;

    /// A CHUNK_RESPONSE: seq, attributes, the chunk, and LargeMessageSize for seq 0.
    fn chunk(seq: u16, last: bool, total: Option<u32>, data: &[u8]) -> Vec<u8> {
        let mut r = std::vec![0x12, CHUNK_RESPONSE, u8::from(last), 0x7A];
        r.extend_from_slice(&seq.to_le_bytes());
        r.extend_from_slice(&[0, 0]);
        r.extend_from_slice(&(data.len() as u32).to_le_bytes());
        if let Some(t) = total {
            r.extend_from_slice(&t.to_le_bytes());
        }
        r.extend_from_slice(data);
        r
    }

    fn message(n: usize) -> Vec<u8> {
        let mut m = std::vec![0x12, 0x02, 0, 0];
        m.extend((4..n).map(|i| i as u8));
        m
    }

    #[test]
    fn a_large_response_is_named_by_its_error() {
        assert_eq!(large_response(0x12, &[0x12, 0x7F, 0x0F, 0, 0x7A]), Some(0x7A));
        assert_eq!(large_response(0x12, &[0x12, 0x7F, 0x0F, 0, 0x7A, 0, 0, 0]), Some(0x7A), "padded");
        assert_eq!(large_response(0x12, &[0x13, 0x7F, 0x0F, 0, 0x7A]), None, "another version");
        assert_eq!(large_response(0x12, &[0x12, 0x7F, 0x0F, 0]), None, "no handle");
        assert_eq!(large_response(0x12, &[0x12, 0x7F, 0x03, 0, 0x7A]), None, "Busy");
    }

    #[test]
    fn chunks_reassemble_into_the_whole_response() {
        let m = message(5000);
        let mut c = ChunkGet::new(0x12, 0x7A);
        assert_eq!(c.request(), [0x12, 0x86, 0, 0x7A, 0, 0]);
        assert_eq!(c.step(&chunk(0, false, Some(5000), &m[..4000])), Ok(false));
        assert!(c.object().is_none(), "not whole yet");
        assert_eq!(c.request(), [0x12, 0x86, 0, 0x7A, 1, 0]);
        // DOE padding after the last chunk is tolerated.
        let mut last = chunk(1, true, None, &m[4000..]);
        last.extend_from_slice(&[0, 0]);
        assert_eq!(c.step(&last), Ok(true));
        let object = c.object().unwrap();
        assert_eq!(doe::decode_as(object, ObjectType::Spdm).unwrap(), &m[..]);
    }

    #[test]
    fn each_bad_chunk_response_is_refused_by_name() {
        let m = message(5000);
        let first = |data: &[u8]| chunk(0, false, Some(5000), data);
        let cases: [(Vec<u8>, SpdmError); 12] = [
            (std::vec![0x12, 0x06, 0], SpdmError::BadLength { code: CHUNK_RESPONSE, len: 3 }),
            (chunk(0, false, Some(5000), &m[..100])[..14].to_vec(), SpdmError::BadLength { code: 0x06, len: 14 }),
            (std::vec![0x12, 0x7F, 0x05, 0], SpdmError::Responder { code: 0x05, data: 0 }),
            (
                {
                    let mut r = first(&m[..100]);
                    r[0] = 0x13;
                    r
                },
                SpdmError::WrongVersion { got: 0x13, want: 0x12 },
            ),
            (
                {
                    let mut r = first(&m[..100]);
                    r[1] = 0x02;
                    r
                },
                SpdmError::UnexpectedResponse { got: 0x02, want: 0x06 },
            ),
            (
                {
                    let mut r = first(&m[..100]);
                    r[3] = 0x7B;
                    r
                },
                SpdmError::ChunkHandle { got: 0x7B, want: 0x7A },
            ),
            (chunk(1, false, Some(5000), &m[..100]), SpdmError::ChunkSequence { got: 1, want: 0 }),
            (
                chunk(0, false, Some(MAX_MESSAGE as u32 + 1), &m[..100]),
                SpdmError::LargeMessageSize { size: MAX_MESSAGE + 1 },
            ),
            (
                chunk(0, true, Some(TRANSFER_SIZE), &m[..100]),
                SpdmError::LargeMessageSize { size: TRANSFER_SIZE as usize },
            ),
            (first(&[]), SpdmError::ChunkSize { size: 0, left: 5000 }),
            (first(&m[..MIN_CHUNK - 1]), SpdmError::ChunkSize { size: MIN_CHUNK - 1, left: 5000 }),
            (chunk(0, true, Some(5000), &m[..100]), SpdmError::ChunkLast { attributes: 1, left: 4900 }),
        ];
        for (answer, want) in cases {
            let mut c = ChunkGet::new(0x12, 0x7A);
            assert_eq!(c.step(&answer), Err(want), "{answer:x?}");
            assert_eq!((c.len, c.seq), (0, 0), "a refused chunk changes nothing");
        }
        // A chunk size beyond the bytes, and nonzero bytes after them.
        let mut c = ChunkGet::new(0x12, 0x7A);
        let mut r = first(&m[..100]);
        r[8] = 200;
        assert_eq!(c.step(&r), Err(SpdmError::BadLength { code: 0x06, len: r.len() }));
        let mut r = first(&m[..100]);
        r.push(1);
        assert_eq!(c.step(&r), Err(SpdmError::DirtyPadding));
        // Past the message, unknown attribute bits, a whole message without LastChunk.
        let mut c = ChunkGet::new(0x12, 0x7A);
        c.step(&first(&m[..4000])).unwrap();
        assert_eq!(c.step(&chunk(1, true, None, &m[..1001])), Err(SpdmError::ChunkSize { size: 1001, left: 1000 }));
        let mut r = chunk(1, true, None, &m[4000..]);
        r[2] = 0x03;
        assert_eq!(c.step(&r), Err(SpdmError::ChunkLast { attributes: 3, left: 0 }));
        assert_eq!(c.step(&chunk(1, false, None, &m[4000..])), Err(SpdmError::ChunkLast { attributes: 0, left: 0 }));
        assert_eq!(c.step(&chunk(1, true, None, &m[4000..])), Ok(true), "the right chunk still completes it");
    }
}
