//! The untrusted host agent: the VMM's part of the machine (issue 11). Its binary
//! (`src/main.rs`, built for `x86_64-unknown-none`) is loaded by the TSM into host RAM and runs
//! in the host world, an SVM guest behind a nested map of what the host owns; it reaches the
//! TSM only by executing SEAMCALL. This library is what it does, over two small seams so that
//! the same code runs wherever the transport is: [`Cpu`] (SEAMCALL, the host's pages and the
//! clock) and `tsm_client::Doe` (the device's mailbox).
//!
//! - [`mem`]: the host's pages, the DOE link, and the TDMR it configures the TSM over, chosen
//!   from its own memory as a TDX host kernel does;
//! - [`device`]: finding the NVMe function, its BARs and its DOE mailbox, and SPDM.CONNECT;
//! - [`evidence`]: a TDI's evidence for the verifier, read from the TSM into a bundle;
//! - [`probe_td`]: the probe TD, which shows the TD world's isolation and measures TDCALL;
//! - [`timeline`]: the run's phases as `timeline.json`.
//!
//! The sequences of calls themselves are `tsm_client::host`'s, written once. The binary adds
//! its CPU (`arch/`: the entry, SEAMCALL, the probe accesses with their #MC fixups), its probe of
//! its own world, and the modes (`run.rs`; `assign.rs` with the TD's DMA checks in
//! `assign/dma.rs`; `attack.rs` with its table of cases in `attack/cases.rs`). The library is
//! also what the harness drives with a direct call (`tests/harness/tests/assign_attest.rs` runs
//! [`evidence::tdi_bundle`] against the real dispatcher).

#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]

use core::fmt;

use seamless_drivers::pci::BarError;
use seamless_drivers::tsc::Tsc;
use tsm::td::TdParams;
use tsm_client::host::HostError;
use tsm_client::{DoeError, HostMemory, Seamcall};

pub mod device;
pub mod evidence;
pub mod mem;
pub mod probe_td;
pub mod timeline;

/// The host's CPU as the agent's flows use it: SEAMCALL, the host's pages, and the clock.
pub trait Cpu: Seamcall + HostMemory {
    /// The TSC (the TSM's: the host world runs without an offset).
    fn tsc(&self) -> Tsc;
    /// TSC ticks spent inside the TSM's calls so far.
    fn tsm_ticks(&self) -> u64;
}

/// The TD's accepted work pages (`tsm_client::guest::DEMO_LAYOUT`, which the guest image uses
/// too).
pub const WORK_GPA: u64 = tsm_client::guest::DEMO_LAYOUT.work;
/// How many.
pub const WORK_PAGES: u64 = tsm_client::guest::DEMO_LAYOUT.work_pages;
/// Where BAR0 appears in the TD.
pub const BAR_GPA: u64 = tsm_client::guest::DEMO_LAYOUT.bar_gpa;
/// TDISP lock flags: NO_FW_UPDATE.
pub const LOCK_FLAGS: u64 = 0x1;

/// The demo's TD: GPAW 48, one vCPU, no attributes; `plan` in MRCONFIGID (the probe TD, which
/// reads none, gets `Plan::Assign`: all zero).
pub fn td_params(plan: tsm_client::guest::Plan) -> TdParams {
    TdParams {
        attributes: 0,
        xfam: 3,
        max_vcpus: 1,
        gpaw: 48,
        mr_config_id: plan.config_id(),
        mr_owner: [0; 48],
        mr_owner_config: [0; 48],
    }
}

/// Why a step of the agent failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    /// A reason in words.
    Said(&'static str),
    /// A host call or flow failed.
    Host(HostError),
    /// The DOE mailbox failed outside a call.
    Doe(DoeError),
    /// A BAR could not be sized, placed or moved.
    Bar(BarError),
    /// The ECAM window at this address overlaps RAM or passes 4 GiB.
    Ecam(u64),
    /// No NVMe function among this many.
    NoNvme(u32),
}

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Why::Said(s) => f.write_str(s),
            Why::Host(e) => e.fmt(f),
            Why::Doe(e) => e.fmt(f),
            Why::Bar(e) => e.fmt(f),
            Why::Ecam(base) => write!(f, "ECAM at {base:#x} overlaps RAM or passes 4 GiB"),
            Why::NoNvme(count) => write!(f, "no NVMe function among {count} (QEMU: -device nvme,...)"),
        }
    }
}

/// A step of the agent that failed: what it was, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Failed {
    /// The step.
    pub what: &'static str,
    /// Why.
    pub why: Why,
}

impl Failed {
    /// `what` failed because of `why`.
    pub fn new(what: &'static str, why: impl Into<Why>) -> Failed {
        Failed { what, why: why.into() }
    }
}

impl From<&'static str> for Why {
    fn from(s: &'static str) -> Why {
        Why::Said(s)
    }
}

impl From<HostError> for Why {
    fn from(e: HostError) -> Why {
        Why::Host(e)
    }
}

impl From<DoeError> for Why {
    fn from(e: DoeError) -> Why {
        Why::Doe(e)
    }
}

impl From<BarError> for Why {
    fn from(e: BarError) -> Why {
        Why::Bar(e)
    }
}

impl fmt::Display for Failed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.what, self.why)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_says_its_step_and_reason() {
        assert_eq!(
            std::format!("{}", Failed::new("PCIe", Why::NoNvme(7))),
            "PCIe: no NVMe function among 7 (QEMU: -device nvme,...)"
        );
        assert_eq!(std::format!("{}", Failed::new("NVMe", "no memory BAR0")), "NVMe: no memory BAR0");
        assert_eq!(
            std::format!("{}", Failed::new("PCIe", Why::Ecam(0xB000_0000))),
            "PCIe: ECAM at 0xb0000000 overlaps RAM or passes 4 GiB"
        );
    }
}
