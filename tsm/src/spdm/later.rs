//! "Come back later": the answers with which a responder defers a request, and the requester's
//! side of them (DSP0274 1.2 §10.13 ERROR Busy, §10.14 ERROR ResponseNotReady and
//! RESPOND_IF_READY). Every flow that sends SPDM requests reads its answers through here first,
//! in the clear or inside the session, so the flows themselves see only final answers and their
//! transcripts hold only the request and its final response, as the spec has them.
//!
//! - **Busy** (0x03): the responder did not take the request; the requester sends it again.
//! - **ResponseNotReady** (0x42, ExtendedErrorData: RDTExponent, RequestCode, Token, RDTM): the
//!   responder took the request and will have its answer after 2^RDTExponent µs (times RDTM at
//!   most); the requester asks for it with RESPOND_IF_READY (RequestCode, Token).
//!
//! The TSM never waits: each retry is one more DOE exchange the host makes, within the host's
//! DOE timeout, and [`MAX_RETRIES`] bounds how many in a row one request may take.

use crate::spdm::negotiate::{code, SpdmError};

/// ERROR Busy.
pub const ERROR_BUSY: u8 = 0x03;
/// ERROR ResponseNotReady.
pub const ERROR_RESPONSE_NOT_READY: u8 = 0x42;
/// RESPOND_IF_READY (request code).
pub const RESPOND_IF_READY: u8 = 0xFF;
/// Times one request may be answered Busy or ResponseNotReady before the TSM gives up. The TSM
/// never waits itself: each retry is one more DOE exchange the host makes, and the host's DOE
/// timeout bounds each of them; this bounds how many.
pub const MAX_RETRIES: u8 = 8;

/// What an answer asks of the requester.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Later {
    /// Nothing: it is the answer for the flow (an ERROR other than these two included).
    Answer,
    /// ERROR Busy: send the same request again.
    Busy,
    /// ERROR ResponseNotReady for the request: send RESPOND_IF_READY with this token, after the
    /// time the responder said its answer needs.
    NotReady {
        /// The responder's token.
        token: u8,
        /// 2^RDTExponent microseconds (saturating): when the answer will be ready (DSP0274 1.2
        /// Table 50); the host waits that long before moving RESPOND_IF_READY, since the TSM
        /// cannot wait.
        wait_us: u64,
    },
}

/// Microseconds of 2^`exponent` (RDTExponent), saturating.
pub fn response_time_us(exponent: u8) -> u64 {
    1u64.checked_shl(u32::from(exponent)).unwrap_or(u64::MAX)
}

/// Reads `answer` (a plain SPDM message) against the outstanding `request` (plain): at the
/// request's version, an ERROR Busy, or a ResponseNotReady naming the request. Anything else,
/// malformed or at another version included, is [`Later::Answer`]: the flow's own checks name
/// what is wrong with it.
///
/// # Errors
/// [`SpdmError::NotReadyForAnother`]: a ResponseNotReady naming another request than the one
/// outstanding.
pub fn read(request: &[u8], answer: &[u8]) -> Result<Later, SpdmError> {
    let (Some(&version), Some(&request_code)) = (request.first(), request.get(1)) else { return Ok(Later::Answer) };
    match *answer {
        // Prefixes: a clear answer may carry DOE padding after it.
        [v, code::ERROR, ERROR_BUSY, _, ..] if v == version => Ok(Later::Busy),
        [v, code::ERROR, ERROR_RESPONSE_NOT_READY, _, exponent, named, token, _, ..] if v == version => {
            if named == request_code {
                Ok(Later::NotReady { token, wait_us: response_time_us(exponent) })
            } else {
                Err(SpdmError::NotReadyForAnother { request: request_code, got: named })
            }
        }
        _ => Ok(Later::Answer),
    }
}

/// RESPOND_IF_READY for `request` and the responder's `token`.
pub fn respond_if_ready(request: &[u8], token: u8) -> [u8; 4] {
    [request.first().copied().unwrap_or(0), RESPOND_IF_READY, request.get(1).copied().unwrap_or(0), token]
}

/// The come-back answers one request has had in a row.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Retries(u8);

impl Retries {
    /// None yet.
    pub const fn new() -> Retries {
        Retries(0)
    }

    /// Counts one more for `request` (its code) answered with `later`.
    ///
    /// # Errors
    /// [`SpdmError::NotReadyTooLong`] once more than [`MAX_RETRIES`] came in a row.
    pub fn again(&mut self, request: &[u8], later: Later) -> Result<(), SpdmError> {
        let error = match later {
            Later::Busy => ERROR_BUSY,
            Later::NotReady { .. } => ERROR_RESPONSE_NOT_READY,
            Later::Answer => return Ok(()),
        };
        if self.0 >= MAX_RETRIES {
            return Err(SpdmError::NotReadyTooLong { request: request.get(1).copied().unwrap_or(0), error });
        }
        self.0 += 1;
        Ok(())
    }

    /// A final answer came: the next request starts from none.
    pub fn reset(&mut self) {
        self.0 = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GET_CERT: [u8; 8] = [0x12, 0x82, 0, 0, 0, 0, 0, 4];

    #[test]
    fn busy_and_not_ready_are_told_from_answers() {
        assert_eq!(read(&GET_CERT, &[0x12, 0x7F, 0x03, 0]), Ok(Later::Busy));
        assert_eq!(
            read(&GET_CERT, &[0x12, 0x7F, 0x42, 0, 3, 0x82, 0x5A, 2]),
            Ok(Later::NotReady { token: 0x5A, wait_us: 8 })
        );
        assert_eq!(
            read(&GET_CERT, &[0x12, 0x7F, 0x42, 0, 200, 0x82, 0x5A, 2]),
            Ok(Later::NotReady { token: 0x5A, wait_us: u64::MAX }),
            "saturates"
        );
        assert_eq!(response_time_us(0), 1);
        assert_eq!(response_time_us(20), 1 << 20);
        assert_eq!(
            read(&GET_CERT, &[0x12, 0x7F, 0x42, 0, 3, 0x81, 0x5A, 2]),
            Err(SpdmError::NotReadyForAnother { request: 0x82, got: 0x81 })
        );
        assert_eq!(read(&GET_CERT, &[0x12, 0x7F, 0x03, 0, 0, 0, 0, 0]), Ok(Later::Busy), "padded");
        // Other errors, other versions, other shapes: answers for the flow to judge.
        for answer in [
            &[0x12, 0x7F, 0x05, 0][..],
            &[0x13, 0x7F, 0x03, 0],
            &[0x12, 0x7F, 0x03],
            &[0x12, 0x7F, 0x42, 0, 3, 0x82, 0x5A],
            &[0x12, 0x02, 0, 0],
            &[],
        ] {
            assert_eq!(read(&GET_CERT, answer), Ok(Later::Answer), "{answer:x?}");
        }
        assert_eq!(read(&[], &[0x12, 0x7F, 0x03, 0]), Ok(Later::Answer), "no request, nothing to retry");
        assert_eq!(respond_if_ready(&GET_CERT, 0x5A), [0x12, 0xFF, 0x82, 0x5A]);
    }

    #[test]
    fn retries_are_bounded_and_reset_by_an_answer() {
        let mut r = Retries::new();
        for _ in 0..MAX_RETRIES {
            r.again(&GET_CERT, Later::Busy).unwrap();
        }
        assert_eq!(
            r.again(&GET_CERT, Later::NotReady { token: 1, wait_us: 1 }),
            Err(SpdmError::NotReadyTooLong { request: 0x82, error: ERROR_RESPONSE_NOT_READY })
        );
        r.reset();
        assert_eq!(r.again(&GET_CERT, Later::Busy), Ok(()));
        assert_eq!(r.again(&GET_CERT, Later::Answer), Ok(()), "an answer is no retry");
    }
}
