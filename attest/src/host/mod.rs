//! The host side (feature `std`): what the `attest` tool needs and the TSM never does.
//!
//! * [`policy`]: the TOML policy file, read into [`crate::verify::Policy`] and written by
//!   `attest policy init`.
//! * [`provision`]: the emulated platform (vendor root, TSM attestation-key certificate, ARK, ASK,
//!   VCEK, the platform secret blob).
//! * [`x509`]: building those certificates and checking the native chain with ring.
//! * [`ring_verify`]: the report signature checked with ring, for [`crate::verify::verify_with`].
//! * [`snp`]: the SNP-format export checked with the `sev` crate against an ARK/ASK/VCEK chain.
//! * [`device`]: the device-side checks of a bundle (chain to the vendor root, the device's
//!   measurement signature, reference values, the interface report).
//! * [`hex`]: hex in and out.

pub mod device;
pub mod hex;
pub mod policy;
pub mod provision;
pub mod ring_verify;
pub mod snp;
pub mod x509;

use crate::verify::{Check, Status};

/// One check as a tool reports it: the engine's [`Check`] with its values rendered, or a check
/// only the host runs (chains, validity, the SNP export).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// Stable id.
    pub id: String,
    /// Outcome.
    pub status: Status,
    /// What was required.
    pub expected: String,
    /// What was found.
    pub actual: String,
    /// Why, in a few words.
    pub reason: String,
}

impl Row {
    /// A row.
    pub fn new(
        id: &str,
        status: Status,
        expected: impl Into<String>,
        actual: impl Into<String>,
        reason: impl Into<String>,
    ) -> Row {
        Row { id: id.to_owned(), status, expected: expected.into(), actual: actual.into(), reason: reason.into() }
    }

    /// Pass if `ok`, else fail with `fail`.
    pub fn compare(id: &str, ok: bool, expected: impl Into<String>, actual: impl Into<String>, fail: &str) -> Row {
        if ok {
            Row::new(id, Status::Pass, expected, actual, "matches")
        } else {
            Row::new(id, Status::Fail, expected, actual, fail)
        }
    }
}

impl From<&Check> for Row {
    fn from(c: &Check) -> Row {
        Row::new(&c.id.to_string(), c.status, c.expected.to_string(), c.actual.to_string(), c.reason)
    }
}
