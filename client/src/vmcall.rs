//! The demo TD's requests to its host, one table for both sides: TDG.VP.VMCALL with R10 = a
//! request number below (GHCI §2.4.1 leaves R10 != 0 to vendor-specific calls; R10 = 0 is
//! GHCI's own TDVMCALLs, which `host::td::run` serves), R11 and R13 the request's arguments, R12
//! the guest's shared page (a GPA with the shared bit set). TDG.VP.VMCALL hands the host
//! exactly R10..R13 (`TdExit::VMCALL_EXPOSED`); nothing else of the TD reaches it.
//!
//! The host serves a request (`host::td_device`), writes what it hands over into the shared page
//! (`[length: u64][data]`, [`crate::shared`]) and resumes the vCPU with R10 = 0 (served) or
//! GHCI's `INVALID_OPERAND` (refused). Data in either direction travels only there and in R11
//! and R13 of the request, and each side treats what it reads as hostile: the guest checks the
//! interface report against the TSM's digest and every function id with TDG.TDI.RD, the host
//! bounds every length.
//!
//! The host decides when a request is served: a TD that asks for its TDI waits in the VMCALL
//! until the host has locked one, so the order of the two sides' steps is the order of the
//! requests (docs/firmware.md, "The guest").

/// Put the interface report of the TDI in the shared page (R11: its function id).
pub const GET_REPORT: u64 = 0x5EA1_0001;
/// Put the verifier's challenge (64 bytes) in the shared page.
pub const GET_NONCE: u64 = 0x5EA1_0002;
/// The native report and its SNP-format export are in the shared page (R11: their length).
pub const REPORT_READY: u64 = 0x5EA1_0003;
/// A piece of the TD's console (`crate::console`: R11 count, R12..R13 the bytes).
pub const CONSOLE: u64 = 0x5EA1_0004;
/// Bind and lock a TDI to this TD; put its function id (u32, little-endian) in the shared page.
pub const GET_TDI: u64 = 0x5EA1_0005;
/// Import report range 0 of the TDI (R11: function id) and map it at the layout's BAR GPA; R13:
/// the pages the guest found in the range, which it will accept.
pub const MAP_MMIO: u64 = 0x5EA1_0006;
/// Add the trusted IOMMU's entry for the TDI (R11: function id).
pub const ADD_DMA: u64 = 0x5EA1_0007;
/// Start the TDI (R11: function id): the guest authorised START.
pub const START: u64 = 0x5EA1_0008;
/// A typed result of the guest is in the shared page (R11: its kind, `crate::guest::result`).
pub const RESULT: u64 = 0x5EA1_0009;
/// A piece of the TD's CC event log is in the shared page (R11: its offset in the log, R13: the
/// log's whole length). A TDVF hands its log over this way before REPORT_READY, so the verifier
/// can replay the RTMRs the report holds (`attest verify --event-log`).
pub const EVENT_LOG: u64 = 0x5EA1_000A;

/// R11 of the host's answer (R10 = 0) when it asks a TD in the probe plan to run the probe in the
/// shared page first (`crate::guest::probe`): the TD does, then makes the same request again with
/// the probe's outcome in the shared page. The host sends it only in answer to a request whose
/// data it has taken already.
pub const PROBE: u64 = 0x5EA1_0B0E;

/// One request, as docs/abi.md lists it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Row {
    /// R10.
    pub number: u64,
    /// Its name.
    pub name: &'static str,
    /// What the guest passes besides R12 (the shared page).
    pub guest: &'static str,
    /// What the host does before it resumes the vCPU.
    pub host: &'static str,
    /// What the shared page holds when the vCPU runs again.
    pub answer: &'static str,
}

/// The requests, sorted by number.
pub const REQUESTS: &[Row] = &[
    Row {
        number: GET_REPORT,
        name: "GET_REPORT",
        guest: "R11 function id",
        host: "copies the interface report TDI.LOCK left in its message page",
        answer: "the report (checked by the guest against TDG.TDI.RD's digest)",
    },
    Row {
        number: GET_NONCE,
        name: "GET_NONCE",
        guest: "-",
        host: "copies the verifier's challenge",
        answer: "64 bytes, the guest's REPORTDATA",
    },
    Row {
        number: REPORT_READY,
        name: "REPORT_READY",
        guest: "R11 length",
        host: "takes the native report and its SNP-format export from the shared page",
        answer: "unchanged",
    },
    Row {
        number: CONSOLE,
        name: "CONSOLE",
        guest: "R11 count (1..=16), R12..R13 the bytes",
        host: "writes the bytes to its log (the shared page is not used)",
        answer: "unchanged",
    },
    Row {
        number: GET_TDI,
        name: "GET_TDI",
        guest: "-",
        host: "connects the device, sets up IDE, creates the TDI for this TD and locks it",
        answer: "the function id, u32 (the guest checks it with TDG.TDI.RD)",
    },
    Row {
        number: MAP_MMIO,
        name: "MAP_MMIO",
        guest: "R11 function id, R13 pages of report range 0",
        host: "SEAMLESS.DMABUF.IMPORT of range 0, TDH.MMIO.MAP of its pages at the BAR GPA",
        answer: "unchanged",
    },
    Row {
        number: ADD_DMA,
        name: "ADD_DMA",
        guest: "R11 function id",
        host: "TDH.DMAR.ADD of the TDI's entry",
        answer: "unchanged",
    },
    Row {
        number: START,
        name: "START",
        guest: "R11 function id",
        host: "SEAMLESS.TDI.START (the guest authorised it)",
        answer: "unchanged",
    },
    Row {
        number: RESULT,
        name: "RESULT",
        guest: "R11 the result's kind",
        host: "takes the typed result from the shared page and acts on it",
        answer: "unchanged",
    },
    Row {
        number: EVENT_LOG,
        name: "EVENT_LOG",
        guest: "R11 the piece's offset in the log, R13 the log's length",
        host: "copies the piece of the TD's CC event log into its buffer (pieces in order, without gaps)",
        answer: "unchanged",
    },
];

/// The row of request `number`.
pub fn row(number: u64) -> Option<&'static Row> {
    REQUESTS.iter().find(|r| r.number == number)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_sorted_unique_and_vendor_specific() {
        assert!(REQUESTS.windows(2).all(|w| w[0].number < w[1].number));
        for r in REQUESTS {
            assert_ne!(r.number, 0, "R10 = 0 is GHCI's own TDVMCALLs");
            assert_eq!(row(r.number), Some(r));
        }
        assert_eq!(row(0), None);
    }
}
