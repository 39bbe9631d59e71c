//! TDISP responses (in SPDM VENDOR_DEFINED_RESPONSE) for every request code, and DEVICE_INTERFACE_REPORT, in the TSM and in the verifier. The first byte picks the request answered.
#![no_main]

use libfuzzer_sys::fuzz_target;
use seamless_fuzz_tools::record::recording;
use tsm::tdisp::{self, msg, InterfaceReport, Response, MAX_RANGES};

const CODES: [u8; 7] = [
    msg::GET_VERSION,
    msg::GET_CAPABILITIES,
    msg::LOCK_INTERFACE,
    msg::GET_DEVICE_INTERFACE_REPORT,
    msg::GET_DEVICE_INTERFACE_STATE,
    msg::START_INTERFACE,
    msg::STOP_INTERFACE,
];

fuzz_target!(|data: &[u8]| {
    let Some((&want, m)) = data.split_first() else { return };
    let r = recording();
    let v = r.negotiated.version;
    let want = if CODES.contains(&want) { want } else { CODES[usize::from(want) % CODES.len()] };
    if let Ok(Response::ReportPortion { portion, .. }) = tdisp::decode(v, r.iface, want, m) {
        assert!(portion.len() <= m.len());
    }
    if let Ok(report) = InterfaceReport::parse(m) {
        let ranges = report.ranges();
        assert!(ranges.len() <= MAX_RANGES);
        for w in ranges.windows(2) {
            let end = w[0].first_page.checked_add(u64::from(w[0].pages)).expect("a range that wraps");
            assert!(end <= w[1].first_page, "overlapping or unsorted ranges accepted: {w:?}");
        }
    }
    let _ = attest::host::device::parse_interface_report(m);
});
