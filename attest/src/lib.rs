//! Report and measurement formats shared by the TSM and the host-side verifier.
//!
//! Both sides link this crate so that they agree byte for byte:
//!
//! * [`mrtd`] computes the TDX build-time measurement (MRTD) from the sequence of
//!   TDH.MEM.PAGE.ADD and TDH.MR.EXTEND calls; the TSM feeds it as the host calls arrive, a host
//!   tool feeds it from the image it is about to load, and the two values must match.
//! * [`tdreport`] lays out the 1024-byte TDREPORT_STRUCT as `#[repr(C)]` zerocopy structs with
//!   compile-time size and offset checks, and parses it from untrusted bytes without panicking.
//! * [`report`] is seamless's own signed report (1200 bytes): TSM and TD identity, the verifier's
//!   nonce, and per assigned device its TDISP state, SPDM algorithms and evidence digests.
//! * [`sign`] signs and verifies it (ECDSA P-384 over SHA-384) and derives the TSM's attestation
//!   key from the platform secret (HKDF-SHA-384).
//! * [`eventlog`] reads the TD's CC event log (TCG2 crypto-agile, as TDVF's TdTcg2Dxe writes
//!   it) as hostile bytes, replays its RTMRs and reads the firmware's SPDM device events.
//! * [`evidence`] is the bundle of device evidence that travels beside the report, bound to it by
//!   those digests.
//! * [`verify`] checks a report and its bundle against a policy, in layers, recording every check.
//! * [`snp`] builds and signs the SNP-format export (a 1184-byte SEV-SNP attestation report that
//!   stands for a native report) with the emulated VCEK.
//! * [`platform`] is the platform secret blob the firmware receives at boot.
//! * [`image`] is the guest image format and loading convention behind `attest measure`.
//! * [`tdvf`] locates and checks the TDVF metadata of an OVMF image and replays its loading, so
//!   `attest measure OVMF.fd` gives the MRTD of a TD built from it.
//! * `host` (feature `std`) holds what only host tools need: the TOML policy, provisioning,
//!   X.509 chains, ring verification and the `sev` crate's SNP checks; the `attest` binary is
//!   built on it.
//!
//! `docs/attestation.md` describes the formats byte by byte and lists the check ids.
//!
//! The crate is `no_std` without the `std` feature (which adds the host side and the `attest`
//! binary) and has no `unsafe`.

#![cfg_attr(not(any(feature = "std", test)), no_std)]
#![forbid(unsafe_code)]

pub mod disk;
pub mod eventlog;
pub mod evidence;
#[cfg(feature = "std")]
pub mod host;
pub mod image;
pub mod mrtd;
pub mod platform;
pub mod report;
pub mod sign;
pub mod snp;
pub mod tdreport;
pub mod tdvf;
pub mod verify;
