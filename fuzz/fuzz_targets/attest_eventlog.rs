//! The TD's CC event log in the verifier, as `attest verify --event-log` reads it: the parser,
//! the replay, the SPDM device events and their checks against a report the recorded log
//! replays to and the recorded bundle. Nothing may panic; a log that parses keeps its events
//! inside its used bytes with only 0xFF after them and replays one extend per extending event;
//! a log that does not parse never verifies, and one that verifies replays the report's RTMR[1].
#![no_main]

use attest::eventlog::spdm::SpdmEvent;
use attest::eventlog::{EventLog, EVENT_HEADER_BYTES};
use attest::verify::{verify_event_log, EVENT_LOG_CHECKS};
use libfuzzer_sys::fuzz_target;
use seamless_fuzz_tools::evidence::{attestation, event_log};

fuzz_target!(|data: &[u8]| {
    let f = event_log();
    let verdict = verify_event_log(&f.report, Some(&attestation().evidence), data);
    assert!(verdict.checks().len() <= EVENT_LOG_CHECKS);
    let Ok(log) = EventLog::parse(data) else {
        assert!(!verdict.verified(), "a malformed log verified");
        if let Ok((_, walk)) = EventLog::raw_events(data) {
            assert!(walk.count() <= data.len() / EVENT_HEADER_BYTES + 1);
        }
        return;
    };
    let total: usize = log.events().map(|e| EVENT_HEADER_BYTES + e.data.len()).sum();
    assert!(total <= log.used_len());
    assert!(data[log.used_len()..].iter().all(|&b| b == 0xFF), "events after the fill");
    let replay = log.replay();
    let extending = log.events().filter(|e| e.rtmr().is_some()).count();
    assert_eq!(replay.extends.iter().map(|&n| n as usize).sum::<usize>(), extending);
    for e in log.events().filter(|e| e.is_spdm()) {
        if let Ok(s) = SpdmEvent::parse(e.event_type, e.data) {
            assert!(s.device_path.len() <= e.data.len());
        }
    }
    if verdict.verified() {
        assert_eq!(replay.rtmr[1], f.report.td.rtmr[1], "verified a log that does not replay RTMR[1]");
    }
});
