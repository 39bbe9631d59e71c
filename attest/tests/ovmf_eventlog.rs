//! A real CC event log: what the patched TDVF handed its host after it accepted the NVMe TDI,
//! with the report it had the TSM sign over it and the host's evidence bundle
//! (`tests/data/ovmf-nvme/`: `tests/e2e/tests/ovmf_device.rs::
//! patched_ovmf_accepts_the_nvme_tdi_and_boots_from_its_disk`, run on 2026-12-06 with the
//! series 0001..0007 of `ovmf-patches/` as the ovmf-accept branch had it at 3d3f87b; nonce 64 ×
//! 0x5d). The log is 1236 bytes, exactly the used length TdxConnectDxe computes: six RTMR[0]
//! events of TdTcg2Dxe (five Secure Boot variables, a separator) and the device's three events
//! in RTMR[1].
//!
//! It replays to the report's registers, its device events pass every layer-4 check, and the
//! writer the other tests build logs with reproduces its device events byte for byte.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use attest::eventlog::spdm::{Payload, SpdmEvent};
use attest::eventlog::writer::{device_events, DeviceMeasurement};
use attest::eventlog::{EventLog, EV_EFI_SPDM_FIRMWARE_BLOB, EV_EFI_SPDM_FIRMWARE_CONFIG};
use attest::evidence::{Evidence, RecordType};
use attest::report::Report;
use attest::verify::{verify_event_log, Status};

const LOG: &[u8] = include_bytes!("data/ovmf-nvme/ovmf-ccel.bin");
const REPORT: &[u8] = include_bytes!("data/ovmf-nvme/report.bin");
const EVIDENCE: &[u8] = include_bytes!("data/ovmf-nvme/evidence.bin");

#[test]
fn the_real_log_replays_to_the_report_and_its_device_events_pass_every_check() {
    let report = Report::read_from(REPORT).unwrap();
    let log = EventLog::parse(LOG).unwrap();
    assert_eq!((log.used_len(), log.fill_len()), (1236, 0));
    assert_eq!((log.spec_id().pcr_index, log.spec_id().uintn_size), (1, 2));
    let replay = log.replay();
    assert_eq!(replay.extends, [6, 3, 0, 0]);
    assert_eq!(replay.rtmr, report.td.rtmr);
    let v = verify_event_log(&report, Some(EVIDENCE), LOG);
    let failed: Vec<_> = v.checks().iter().filter(|c| c.status != Status::Pass).collect();
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(v.checks().len(), 1 + 4 + 1 + 3);
}

#[test]
fn the_real_device_events_are_what_the_writer_writes() {
    let report = Report::read_from(REPORT).unwrap();
    let evidence = Evidence::parse(EVIDENCE).unwrap();
    let entry = report.devices()[0];
    let log = EventLog::parse(LOG).unwrap();
    let spdm: Vec<_> = log.events().filter(|e| e.is_spdm()).collect();
    assert_eq!(spdm.len(), 3);
    let first = SpdmEvent::parse(spdm[0].event_type, spdm[0].data).unwrap();
    // The firmware logs the function id the host named (GET_TDI): RID 0x18 without the valid
    // bit, the function the report names as 0x01000018.
    assert_eq!(first.function_id, 0x18);
    assert_eq!(entry.function_id().0, 0x0100_0018);
    let device = DeviceMeasurement {
        function_id: first.function_id,
        spdm_version: u16::from(entry.spdm_version),
        cert_chain_sha384: entry.cert_chain_sha384,
        transcript_sha384: entry.measurements_transcript_sha384,
        interface_report: evidence.get(RecordType::InterfaceReport, 0).unwrap().to_vec(),
        pci: first.pci,
    };
    let written = device_events(&device);
    for (real, (event_type, data)) in spdm.iter().zip(&written) {
        assert_eq!(real.event_type, *event_type);
        assert_eq!(real.data, data.as_slice(), "event at offset {}", real.offset);
    }
    assert_eq!(
        [spdm[0].event_type, spdm[1].event_type, spdm[2].event_type],
        [EV_EFI_SPDM_FIRMWARE_BLOB, EV_EFI_SPDM_FIRMWARE_BLOB, EV_EFI_SPDM_FIRMWARE_CONFIG]
    );
    let ir = SpdmEvent::parse(spdm[2].event_type, spdm[2].data).unwrap();
    assert_eq!(ir.payload, Payload::InterfaceReport(evidence.get(RecordType::InterfaceReport, 0).unwrap()));
}

#[test]
fn every_bit_flip_of_the_real_device_events_is_caught() {
    let report = Report::read_from(REPORT).unwrap();
    let first_device = EventLog::parse(LOG).unwrap().events().find(|e| e.is_spdm()).unwrap().offset;
    for at in first_device..LOG.len() {
        for bit in 0..8 {
            let mut bad = LOG.to_vec();
            bad[at] ^= 1 << bit;
            assert!(!verify_event_log(&report, Some(EVIDENCE), &bad).verified(), "byte {at} bit {bit} passed");
        }
    }
}
