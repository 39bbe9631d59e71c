//! Why an SPDM exchange failed: one error for every exchange of the requester, each variant
//! naming what the device (or the host in the clear) got wrong, with its `Display` for the
//! host's and the firmware's messages.

use core::fmt;

use crate::doe::DoeError;
use crate::spdm::negotiate::{MAX_MESSAGE_SIZE, TRANSFER_SIZE};

/// Why an SPDM exchange failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpdmError {
    /// The DOE object around the message was malformed.
    Doe(DoeError),
    /// The message is shorter than its fields, or longer than its fields plus DOE padding.
    BadLength {
        /// Response code.
        code: u8,
        /// Bytes received (padding included).
        len: usize,
    },
    /// The response carries another SPDM version than the one negotiated.
    WrongVersion {
        /// Version byte received.
        got: u8,
        /// Version expected.
        want: u8,
    },
    /// The response code is not the answer to the request.
    UnexpectedResponse {
        /// Code received.
        got: u8,
        /// Code expected.
        want: u8,
    },
    /// The device answered ERROR.
    Responder {
        /// ErrorCode.
        code: u8,
        /// ErrorData.
        data: u8,
    },
    /// The device offers neither SPDM 1.2 nor 1.3.
    NoCommonVersion,
    /// The device lacks capabilities the TSM needs.
    MissingCapabilities {
        /// The missing flags.
        missing: u32,
    },
    /// DataTransferSize below 42 or above MaxSPDMmsgSize.
    BadTransferSize {
        /// DataTransferSize.
        data_transfer: u32,
        /// MaxSPDMmsgSize.
        max_message: u32,
    },
    /// The device selected something the TSM did not offer (or did not select what it must).
    BadSelection {
        /// Which field.
        field: &'static str,
        /// The value selected.
        got: u32,
    },
    /// Nonzero padding after a message.
    DirtyPadding,
    /// `step` was called in a state that expects no answer.
    NotWaiting,
    /// DIGESTS does not list slot 0.
    NoSlot0,
    /// A CERTIFICATE portion that is empty, longer than asked, for another slot, or whose
    /// remainder contradicts the earlier ones.
    BadPortion,
    /// The chain is larger than the TSM keeps.
    ChainTooLarge {
        /// Bytes the device announced.
        total: usize,
    },
    /// The chain read does not hash to the slot's digest from DIGESTS.
    DigestMismatch,
    /// The chain's leaf key is not of the signing algorithm ALGORITHMS selected.
    LeafKeyAlgorithm {
        /// The BaseAsymAlgo bit of the leaf's key.
        got: u32,
    },
    /// The chain is malformed.
    Chain(crate::spdm::chain::ChainError),
    /// A measurement block is malformed (index given), or the blocks do not fill the record.
    BadMeasurementBlock {
        /// Position of the block in the record.
        block: usize,
    },
    /// A digest block whose size is not the negotiated measurement hash's (or a digest when
    /// only raw bit streams were negotiated).
    BadMeasurementDigest {
        /// The block's index.
        index: u8,
        /// Its value's size.
        len: usize,
    },
    /// Two blocks carry the same index.
    DuplicateMeasurementIndex(u8),
    /// The device echoed another RequesterContext (SPDM 1.3).
    ContextMismatch,
    /// The signature is refused.
    Signature(crate::spdm::sig::SigError),
    /// The transcript exceeds what the TSM keeps as evidence.
    TranscriptTooLarge,
    /// CHALLENGE_AUTH names another chain than the one read from the device.
    CertChainHashMismatch,
    /// The device's ECDH public key is not a point of the negotiated group.
    BadExchangeData,
    /// The opaque data does not select a secured-message version the TSM offered.
    BadOpaqueData,
    /// ResponderVerifyData does not match: the device does not hold the session's keys.
    VerifyDataMismatch,
    /// The device asked for what the TSM did not offer (mutual authentication, heartbeat).
    UnrequestedFeature,
    /// A secured message was refused.
    Secured(crate::spdm::secured::SecuredError),
    /// The device answered Busy or ResponseNotReady to one request more than
    /// [`crate::spdm::connect::MAX_RETRIES`] times in a row.
    NotReadyTooLong {
        /// The request.
        request: u8,
        /// The last ERROR code (0x03 Busy, 0x42 ResponseNotReady).
        error: u8,
    },
    /// ResponseNotReady names another request than the one outstanding.
    NotReadyForAnother {
        /// The request outstanding.
        request: u8,
        /// The RequestCode in the ERROR.
        got: u8,
    },
    /// CHUNK_RESPONSE names another Handle than ERROR LargeResponse gave.
    ChunkHandle {
        /// The Handle received.
        got: u8,
        /// The Handle asked for.
        want: u8,
    },
    /// CHUNK_RESPONSE carries another ChunkSeqNo than the CHUNK_GET asked for.
    ChunkSequence {
        /// ChunkSeqNo received.
        got: u16,
        /// ChunkSeqNo asked for.
        want: u16,
    },
    /// The first chunk's LargeMessageSize is beyond the TSM's MaxSPDMmsgSize, or within its
    /// DataTransferSize (such a response needs no chunks).
    LargeMessageSize {
        /// LargeMessageSize.
        size: usize,
    },
    /// A chunk that is empty, shorter than a responder's minimum before the last, or longer than
    /// what is left of the message.
    ChunkSize {
        /// ChunkSize.
        size: usize,
        /// Bytes of the message still to come.
        left: usize,
    },
    /// The LastChunk bit disagrees with the bytes (set with bytes left, clear with none), or
    /// undefined attribute bits are set.
    ChunkLast {
        /// The ChunkResponseAttributes.
        attributes: u8,
        /// Bytes of the message left after this chunk.
        left: usize,
    },
    /// A request longer than the device's DataTransferSize (the TSM sends no CHUNK_SEND): a
    /// device whose buffer cannot take KEY_EXCHANGE.
    RequestTooLarge {
        /// The request's bytes.
        len: usize,
        /// The device's DataTransferSize.
        max: u32,
    },
    /// ERROR LargeResponse where the TSM takes none: without CHUNK_CAP on both sides, or for a
    /// response inside the session (each fits the TSM's DataTransferSize, or is too large to
    /// keep as evidence).
    UnexpectedLargeResponse,
    /// KEY_UPDATE may only start with UpdateKey or UpdateAllKeys (VerifyNewKey follows them).
    BadKeyOperation(u8),
    /// KEY_UPDATE_ACK names another operation or tag than the request.
    KeyUpdateAckMismatch {
        /// KeyOperation received.
        operation: u8,
        /// Tag received.
        tag: u8,
    },
}

impl fmt::Display for SpdmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpdmError::Doe(e) => write!(f, "DOE: {e}"),
            SpdmError::BadLength { code, len } => write!(f, "SPDM response {code:#04x} has a bad length ({len} bytes)"),
            SpdmError::WrongVersion { got, want } => write!(f, "SPDM version {got:#04x}, expected {want:#04x}"),
            SpdmError::UnexpectedResponse { got, want } => write!(f, "SPDM response {got:#04x}, expected {want:#04x}"),
            SpdmError::Responder { code, data } => write!(f, "device answered ERROR {code:#04x} (data {data:#04x})"),
            SpdmError::NoCommonVersion => f.write_str("device offers neither SPDM 1.2 nor 1.3"),
            SpdmError::MissingCapabilities { missing } => write!(f, "device lacks capabilities {missing:#x}"),
            SpdmError::BadTransferSize { data_transfer, max_message } => {
                write!(f, "DataTransferSize {data_transfer} with MaxSPDMmsgSize {max_message}")
            }
            SpdmError::BadSelection { field, got } => write!(f, "device selected {field} = {got:#x}"),
            SpdmError::DirtyPadding => f.write_str("nonzero bytes after the SPDM message"),
            SpdmError::NotWaiting => f.write_str("no request is outstanding"),
            SpdmError::NoSlot0 => f.write_str("device has no certificate chain in slot 0"),
            SpdmError::BadPortion => f.write_str("CERTIFICATE portion is inconsistent"),
            SpdmError::ChainTooLarge { total } => write!(f, "certificate chain of {total} bytes is too large"),
            SpdmError::DigestMismatch => f.write_str("certificate chain does not match its DIGESTS entry"),
            SpdmError::LeafKeyAlgorithm { got } => {
                write!(f, "leaf key is of BaseAsymAlgo {got:#x}, not the one ALGORITHMS selected")
            }
            SpdmError::Chain(e) => write!(f, "certificate chain: {e}"),
            SpdmError::BadMeasurementBlock { block } => write!(f, "measurement block {block} is malformed"),
            SpdmError::BadMeasurementDigest { index, len } => {
                write!(f, "measurement block {index} holds a {len}-byte digest, not of the negotiated hash")
            }
            SpdmError::DuplicateMeasurementIndex(i) => write!(f, "measurement index {i} appears twice"),
            SpdmError::ContextMismatch => f.write_str("device echoed another RequesterContext"),
            SpdmError::Signature(e) => write!(f, "device signature: {e:?}"),
            SpdmError::TranscriptTooLarge => f.write_str("measurement transcript too large to keep"),
            SpdmError::CertChainHashMismatch => f.write_str("CHALLENGE_AUTH names another certificate chain"),
            SpdmError::BadExchangeData => f.write_str("device's ECDH key is not a point of the negotiated group"),
            SpdmError::BadOpaqueData => f.write_str("device selected no secured-message version the TSM offered"),
            SpdmError::VerifyDataMismatch => f.write_str("ResponderVerifyData does not match"),
            SpdmError::UnrequestedFeature => f.write_str("device asked for a feature the TSM did not offer"),
            SpdmError::Secured(e) => write!(f, "secured message: {e:?}"),
            SpdmError::NotReadyTooLong { request, error } => {
                write!(f, "device answered ERROR {error:#04x} to request {request:#04x} too many times")
            }
            SpdmError::NotReadyForAnother { request, got } => {
                write!(f, "ResponseNotReady names request {got:#04x}, not the outstanding {request:#04x}")
            }
            SpdmError::ChunkHandle { got, want } => write!(f, "CHUNK_RESPONSE for handle {got:#04x}, not {want:#04x}"),
            SpdmError::ChunkSequence { got, want } => write!(f, "CHUNK_RESPONSE number {got}, expected {want}"),
            SpdmError::LargeMessageSize { size } => write!(
                f,
                "LargeMessageSize {size} is not between the TSM's DataTransferSize ({TRANSFER_SIZE}) and MaxSPDMmsgSize ({MAX_MESSAGE_SIZE})"
            ),
            SpdmError::ChunkSize { size, left } => write!(f, "a {size}-byte chunk with {left} bytes of the message left"),
            SpdmError::ChunkLast { attributes, left } => {
                write!(f, "CHUNK_RESPONSE attributes {attributes:#04x} with {left} bytes of the message left")
            }
            SpdmError::RequestTooLarge { len, max } => {
                write!(f, "a {len}-byte request does not fit the device's DataTransferSize of {max}")
            }
            SpdmError::UnexpectedLargeResponse => f.write_str("ERROR LargeResponse where the TSM takes no chunks"),
            SpdmError::BadKeyOperation(op) => write!(f, "KEY_UPDATE cannot start with operation {op}"),
            SpdmError::KeyUpdateAckMismatch { operation, tag } => {
                write!(f, "KEY_UPDATE_ACK for operation {operation} tag {tag:#04x} answers another request")
            }
        }
    }
}

impl From<DoeError> for SpdmError {
    fn from(e: DoeError) -> Self {
        SpdmError::Doe(e)
    }
}
