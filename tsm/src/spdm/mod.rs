//! SPDM requester (DSP0274 1.2, 1.3 when the device offers it), sans-IO.
//!
//! - [`negotiate`]: GET_VERSION, GET_CAPABILITIES, NEGOTIATE_ALGORITHMS and the VCA transcript.
//! - [`connect`]: the whole connection (discovery to session) as one state machine.
//! - [`cert`]: GET_DIGESTS and chunked GET_CERTIFICATE for slot 0, with message B.
//! - [`challenge`]: CHALLENGE / CHALLENGE_AUTH: the device proves its leaf key over M1.
//! - [`chain`]: the SPDM certificate-chain format, checked and its leaf key extracted.
//! - [`keys`]: the SPDM 1.2+ key schedule (handshake and data keys, finished keys, KEY_UPDATE).
//! - [`meas`]: signed GET_MEASUREMENTS of every index, kept as evidence.
//! - [`secured`]: DSP0277 secured messages over DOE with AES-256-GCM.
//! - [`session`]: KEY_EXCHANGE and FINISH: an ECDHE P-384 session with application keys.
//! - [`sig`]: the SPDM 1.2+ signing prefix and the verification of device signatures.

pub mod cert;
pub mod chain;
pub mod challenge;
pub mod connect;
pub mod keys;
pub mod meas;
pub mod negotiate;
pub mod secured;
pub mod session;
pub mod sig;

pub use negotiate::*;
