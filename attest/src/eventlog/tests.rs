//! The log parser and the device-event parser: every refusal in check order, then the happy
//! path, the replay, and byte layouts taken from the C structures' offsets.

use proptest::prelude::*;
use sha2::{Digest, Sha384};

use super::spdm::*;
use super::writer::{device_events, oem_sub_header, sec2_event_data, spdm_sub_header, DeviceMeasurement, LogWriter};
use super::*;

const SEPARATOR: u32 = 0x0000_0004;
const VARIABLE_DRIVER_CONFIG: u32 = 0x8000_0001;

fn digest(data: &[u8]) -> [u8; 48] {
    Sha384::digest(data).into()
}

/// TCG_EfiSpecIDEventStruct with these fields, algorithms as (id, size), and vendor info.
fn spec_id_event(signature: &[u8; 16], version: [u8; 4], count: u32, algs: &[(u16, u16)], vendor: &[u8]) -> Vec<u8> {
    let mut s = signature.to_vec();
    s.extend_from_slice(&0u32.to_le_bytes());
    s.extend_from_slice(&version);
    s.extend_from_slice(&count.to_le_bytes());
    for (id, size) in algs {
        s.extend_from_slice(&id.to_le_bytes());
        s.extend_from_slice(&size.to_le_bytes());
    }
    s.push(vendor.len() as u8);
    s.extend_from_slice(vendor);
    s
}

fn good_spec_id() -> Vec<u8> {
    spec_id_event(&SPEC_ID_SIGNATURE, [0, 2, 0, 2], 1, &[(TPM_ALG_SHA384, 48)], &[])
}

fn header_only() -> Vec<u8> {
    LogWriter::new().finish()
}

fn patched(mut b: Vec<u8>, at: usize, bytes: &[u8]) -> Vec<u8> {
    b[at..at + bytes.len()].copy_from_slice(bytes);
    b
}

fn spec_err(b: &[u8]) -> Result<EventLog<'_>, EventLogError> {
    EventLog::parse(b)
}

#[test]
fn the_header_event_is_as_tdtcg2dxe_writes_it() {
    let b = header_only();
    // TCG_PCR_EVENT: PCRIndex 1, EV_NO_ACTION, 20 zero bytes, EventSize 33.
    assert_eq!(&b[..8], &[1, 0, 0, 0, 3, 0, 0, 0]);
    assert_eq!(&b[8..28], &[0; 20]);
    assert_eq!(&b[28..32], &33u32.to_le_bytes());
    assert_eq!(&b[32..48], b"Spec ID Event03\0");
    assert_eq!(&b[48..56], &[0, 0, 0, 0, 0, 2, 0, 2]);
    assert_eq!(&b[56..65], &[1, 0, 0, 0, 0x0c, 0, 48, 0, 0]);
    assert_eq!(b.len(), 65);
    assert_eq!(good_spec_id(), b[32..].to_vec());
}

#[test]
fn parse_rejects_a_bad_header_in_check_order() {
    let good = header_only();
    assert_eq!(spec_err(&[]), Err(EventLogError::TruncatedHeader { found: 0 }));
    assert_eq!(spec_err(&good[..31]), Err(EventLogError::TruncatedHeader { found: 31 }));
    let fault = |f| Err(EventLogError::SpecIdEvent(f));
    assert_eq!(spec_err(&patched(good.clone(), 0, &[2])), fault(SpecIdFault::PcrIndex(2)));
    assert_eq!(spec_err(&patched(good.clone(), 4, &[4])), fault(SpecIdFault::EventType(4)));
    assert_eq!(spec_err(&patched(good.clone(), 27, &[1])), fault(SpecIdFault::DigestNotZero));
    assert_eq!(spec_err(&good[..64]), fault(SpecIdFault::PastEnd { size: 33, available: 32 }));
    assert_eq!(
        spec_err(&patched(good.clone(), 28, &u32::MAX.to_le_bytes())),
        fault(SpecIdFault::PastEnd { size: u32::MAX, available: 33 })
    );
    let short = LogWriter::with_header(0, &good_spec_id()[..27]).finish();
    assert_eq!(spec_err(&short), fault(SpecIdFault::TooShort(27)));
    let sha1_log = spec_id_event(b"Spec ID Event02\0", [0, 2, 0, 2], 1, &[(TPM_ALG_SHA384, 48)], &[]);
    assert_eq!(
        spec_err(&LogWriter::with_header(0, &sha1_log).finish()),
        fault(SpecIdFault::Signature(*b"Spec ID Event02\0"))
    );
    assert_eq!(
        spec_err(&patched(good.clone(), 48 + 4, &[2, 1])),
        fault(SpecIdFault::SpecVersion { major: 1, minor: 2 })
    );
    assert_eq!(spec_err(&patched(good.clone(), 48 + 7, &[4])), fault(SpecIdFault::UintnSize(4)));
    // Vendor info size 1 with no vendor byte: the counts describe 34 bytes of a 33-byte event.
    assert_eq!(
        spec_err(&patched(good.clone(), 64, &[1])),
        fault(SpecIdFault::SizeMismatch { size: 33, described: 34 })
    );
    // An algorithm count the event cannot hold describes nothing.
    assert_eq!(
        spec_err(&patched(good.clone(), 56, &u32::MAX.to_le_bytes())),
        fault(SpecIdFault::SizeMismatch { size: 33, described: 0 })
    );
    let two = spec_id_event(&SPEC_ID_SIGNATURE, [0, 2, 0, 2], 2, &[(TPM_ALG_SHA384, 48), (0x000B, 32)], &[]);
    assert_eq!(spec_err(&LogWriter::with_header(1, &two).finish()), Err(EventLogError::AlgorithmCount(2)));
    let none = spec_id_event(&SPEC_ID_SIGNATURE, [0, 2, 0, 2], 0, &[], &[]);
    assert_eq!(spec_err(&LogWriter::with_header(1, &none).finish()), Err(EventLogError::AlgorithmCount(0)));
    let sha256 = spec_id_event(&SPEC_ID_SIGNATURE, [0, 2, 0, 2], 1, &[(0x000B, 32)], &[]);
    assert_eq!(
        spec_err(&LogWriter::with_header(1, &sha256).finish()),
        Err(EventLogError::Algorithm { id: 0x000B, digest_size: 32 })
    );
    let short_digest = spec_id_event(&SPEC_ID_SIGNATURE, [0, 2, 0, 2], 1, &[(TPM_ALG_SHA384, 32)], &[]);
    assert_eq!(
        spec_err(&LogWriter::with_header(1, &short_digest).finish()),
        Err(EventLogError::Algorithm { id: TPM_ALG_SHA384, digest_size: 32 })
    );
}

/// A log with one event after the header, at offset 65.
fn one_event(mr_index: u32, event_type: u32, data: &[u8]) -> Vec<u8> {
    let mut w = LogWriter::new();
    w.measure(mr_index, event_type, data);
    w.finish()
}

#[test]
fn parse_rejects_a_bad_event_in_check_order() {
    let good = one_event(1, VARIABLE_DRIVER_CONFIG, b"SecureBoot");
    let at = 65;
    assert_eq!(
        EventLog::parse(&good[..at + 11]),
        Err(EventLogError::TruncatedEvent { offset: at, needed: 12, available: 11 })
    );
    let index = |i: u32, t: u32| patched(patched(good.clone(), at, &i.to_le_bytes()), at + 4, &t.to_le_bytes());
    assert_eq!(
        EventLog::parse(&index(5, VARIABLE_DRIVER_CONFIG)),
        Err(EventLogError::MrIndexOutOfRange { offset: at, index: 5, event_type: VARIABLE_DRIVER_CONFIG })
    );
    assert_eq!(
        EventLog::parse(&index(0, SEPARATOR)),
        Err(EventLogError::MrIndexOutOfRange { offset: at, index: 0, event_type: SEPARATOR })
    );
    // 0xFF where an event starts is fill only if every byte after it is 0xFF too.
    assert_eq!(
        EventLog::parse(&index(u32::MAX, u32::MAX)),
        Err(EventLogError::MrIndexOutOfRange { offset: at, index: u32::MAX, event_type: u32::MAX })
    );
    for count in [0u32, 2] {
        assert_eq!(
            EventLog::parse(&patched(good.clone(), at + 8, &count.to_le_bytes())),
            Err(EventLogError::DigestCount { offset: at, count })
        );
    }
    assert_eq!(
        EventLog::parse(&good[..at + EVENT_HEADER_BYTES - 1]),
        Err(EventLogError::TruncatedEvent {
            offset: at,
            needed: EVENT_HEADER_BYTES,
            available: EVENT_HEADER_BYTES - 1
        })
    );
    assert_eq!(
        EventLog::parse(&patched(good.clone(), at + 12, &[0x0B, 0])),
        Err(EventLogError::DigestAlgorithm { offset: at, alg: 0x000B })
    );
    assert_eq!(
        EventLog::parse(&good[..good.len() - 1]),
        Err(EventLogError::EventPastEnd { offset: at, size: 10, available: 9 })
    );
    assert_eq!(
        EventLog::parse(&patched(good.clone(), at + 62, &u32::MAX.to_le_bytes())),
        Err(EventLogError::EventPastEnd { offset: at, size: u32::MAX, available: 10 })
    );
    let mut w = LogWriter::new();
    w.event(0, EV_NO_ACTION, &[1; 48], b"SP800-155 Event2");
    assert_eq!(EventLog::parse(&w.finish()), Err(EventLogError::NoActionDigest { offset: at }));
    // A second event's error names its own offset.
    let mut two = good.clone();
    two.extend_from_slice(&[9, 0, 0, 0]);
    assert_eq!(
        EventLog::parse(&two),
        Err(EventLogError::TruncatedEvent { offset: good.len(), needed: 12, available: 4 })
    );
}

#[test]
fn every_error_says_what_and_where() {
    let errors = [
        (EventLogError::TruncatedHeader { found: 3 }, "32-byte header event, got 3 bytes"),
        (EventLogError::SpecIdEvent(SpecIdFault::UintnSize(4)), "Spec ID header event malformed: uintnSize 4"),
        (EventLogError::AlgorithmCount(2), "declares 2 digest algorithms"),
        (EventLogError::Algorithm { id: 0xB, digest_size: 32 }, "0x000b of 32 bytes, not SHA-384"),
        (EventLogError::TruncatedEvent { offset: 65, needed: 66, available: 3 }, "offset 65 needs a 66-byte header"),
        (
            EventLogError::MrIndexOutOfRange { offset: 65, index: 9, event_type: 4 },
            "offset 65 (type 0x4) has MR index 9",
        ),
        (EventLogError::DigestCount { offset: 65, count: 2 }, "offset 65 carries 2 digests"),
        (EventLogError::DigestAlgorithm { offset: 65, alg: 4 }, "offset 65 has a digest of algorithm 0x0004"),
        (EventLogError::EventPastEnd { offset: 65, size: 9, available: 1 }, "offset 65 claims 9 bytes of data, only 1"),
        (EventLogError::NoActionDigest { offset: 65 }, "EV_NO_ACTION event at offset 65"),
    ];
    for (e, want) in errors {
        assert!(e.to_string().contains(want), "{e}: want {want:?}");
    }
}

#[test]
fn parse_happy_path_replays_and_stops_at_the_fill() {
    let mut w = LogWriter::new();
    w.no_action(b"SP800-155 Event2 platform id")
        .measure(1, VARIABLE_DRIVER_CONFIG, b"SecureBoot")
        .event(1, 0x8000_000A, &[0x33; 48], b"CFV")
        .measure(2, SEPARATOR, &[0; 4])
        .event(2, EV_NO_ACTION, &[0; 48], b"not extended")
        .measure(3, 0x0000_000D, b"grub.cfg");
    let used = w.finish();
    let area = w.finish_in_area(0x10000);
    let log = EventLog::parse(&area).unwrap();
    assert_eq!(log.used_len(), used.len());
    assert_eq!(log.fill_len(), 0x10000 - used.len());
    assert_eq!(log.spec_id().pcr_index, 1);
    assert_eq!(log.spec_id().uintn_size, 2);
    let events: Vec<_> = log.events().collect();
    assert_eq!(events.len(), 6);
    assert_eq!(events[0].offset, 65);
    assert_eq!((events[0].mr_index, events[0].event_type, events[0].rtmr()), (0, EV_NO_ACTION, None));
    assert_eq!(events[2].digest, [0x33; 48]);
    assert_eq!(events[4].rtmr(), None);
    assert_eq!(events[5].data, b"grub.cfg");
    // The replay, computed here by hand: RTMR[i] = SHA-384(RTMR[i] || digest) from zero.
    let ext =
        |r: [u8; 48], d: [u8; 48]| -> [u8; 48] { Sha384::new().chain_update(r).chain_update(d).finalize().into() };
    let rtmr0 = ext(ext([0; 48], digest(b"SecureBoot")), [0x33; 48]);
    let rtmr1 = ext([0; 48], digest(&[0; 4]));
    let rtmr2 = ext([0; 48], digest(b"grub.cfg"));
    let r = log.replay();
    assert_eq!(r.rtmr, [rtmr0, rtmr1, rtmr2, [0; 48]]);
    assert_eq!(r.extends, [2, 1, 1, 0]);
    // The used bytes alone are the same log; so is a fill of a single byte.
    assert_eq!(EventLog::parse(&used).unwrap().replay(), r);
    let mut one = used.clone();
    one.push(0xFF);
    assert_eq!(EventLog::parse(&one).unwrap().used_len(), used.len());
    // A header alone is an empty log.
    let header = header_only();
    let empty = EventLog::parse(&header).unwrap();
    assert_eq!(empty.events().count(), 0);
    assert_eq!(empty.replay().rtmr, [[0; 48]; 4]);
}

#[test]
fn raw_events_show_events_before_the_error() {
    let mut b = one_event(2, SEPARATOR, &[0; 4]);
    b.extend_from_slice(&[7; 12]);
    let (spec, walk) = EventLog::raw_events(&b).unwrap();
    assert_eq!(spec.platform_class, 0);
    let got: Vec<_> = walk.collect();
    assert_eq!(got.len(), 2);
    assert!(got[0].is_ok());
    assert!(matches!(got[1], Err(EventLogError::MrIndexOutOfRange { index: 0x0707_0707, .. })));
}

fn device() -> DeviceMeasurement {
    DeviceMeasurement {
        function_id: 0x0100_0100,
        spdm_version: 0x12,
        cert_chain_sha384: [0xc0; 48],
        transcript_sha384: [0xc1; 48],
        interface_report: vec![0x40; 24],
        pci: super::writer::QEMU_NVME_PCI,
    }
}

/// The offsets of `DEVICE_SEC2_HEADER` (52 bytes), `DEVICE_SEC2_SPDM_SUB_HEADER` (8) and
/// `DEVICE_SEC_PCI_CONTEXT` (16), packed, as gcc lays out Evidence.c's declarations.
#[test]
fn device_events_are_laid_out_as_evidence_c_writes_them() {
    let [(t0, chain), (t1, meas), (t2, ir)] = device_events(&device());
    assert_eq!((t0, t1, t2), (EV_EFI_SPDM_FIRMWARE_BLOB, EV_EFI_SPDM_FIRMWARE_BLOB, EV_EFI_SPDM_FIRMWARE_CONFIG));
    assert_eq!(chain.len(), 52 + 8 + 16 + 48);
    assert_eq!(&chain[0..16], b"SPDM Device Sec2");
    assert_eq!(&chain[16..20], &[2, 0, 0, 0]); // Version 2, AuthState SUCCESS, Reserved
    assert_eq!(&chain[20..24], &124u32.to_le_bytes()); // Length: the whole event data
    assert_eq!(&chain[24..28], &[1, 0, 0, 0]); // PCI
    assert_eq!(&chain[28..32], &[1, 0, 0, 0]); // SPDM_CERT_CHAIN
    assert_eq!(&chain[32..36], &[8, 0, 0, 0]); // SubHeaderLength
    assert_eq!(&chain[36..44], &0x0100_0100u64.to_le_bytes()); // SubHeaderUID
    assert_eq!(&chain[44..52], &[0; 8]); // DevicePathLength
    assert_eq!(&chain[52..60], &[0x12, 0, 0, 0, 2, 0, 0, 0]); // SPDM 1.2, slot 0, SHA-384 (BaseHashAlgo bit 1)
    assert_eq!(&chain[60..76], &[0, 0, 16, 0, 0x36, 0x1b, 0x10, 0, 2, 2, 8, 1, 0xf4, 0x1a, 0, 0x11]);
    assert_eq!(&chain[76..], &[0xc0; 48]);
    assert_eq!(&meas[28..32], &[0, 0, 0, 0]); // SPDM_MEASUREMENT_BLOCK
    assert_eq!(&meas[52..60], &[0x12, 0, 1, 0, 4, 0, 0, 0]); // one block, SHA-384 (MeasurementHashAlgo bit 2)
    assert_eq!(&meas[76..], &[0xc1; 48]);
    assert_eq!(ir.len(), 52 + 8 + 16 + 24);
    assert_eq!(&ir[20..24], &100u32.to_le_bytes());
    assert_eq!(&ir[28..32], &[2, 0, 0, 0]); // OEM
    assert_eq!(&ir[52..60], &[b'T', b'D', b'I', b'R', 24, 0, 0, 0]);
    assert_eq!(&ir[76..], &[0x40; 24]);
}

fn spdm_err(event_type: u32, data: &[u8]) -> SpdmEventError {
    SpdmEvent::parse(event_type, data).unwrap_err()
}

/// Event data with the Length field set to its length.
fn sized(mut d: Vec<u8>) -> Vec<u8> {
    let n = d.len() as u32;
    d[20..24].copy_from_slice(&n.to_le_bytes());
    d
}

#[test]
fn spdm_event_parse_rejects_in_check_order() {
    let d = device();
    let [(blob, chain), (_, meas), (config, ir)] = device_events(&d);
    let p = |at, bytes: &[u8]| patched(chain.clone(), at, bytes);
    let e = |data: &[u8]| spdm_err(blob, data);
    assert_eq!(e(&chain[..51]), SpdmEventError::Truncated { part: "header", needed: 52, available: 51 });
    assert_eq!(e(&p(15, b"\0")), SpdmEventError::Signature(*b"SPDM Device Sec\0"));
    assert_eq!(e(&p(16, &[1])), SpdmEventError::Version(1));
    assert_eq!(e(&p(18, &[1])), SpdmEventError::AuthState(1));
    assert_eq!(e(&p(19, &[1])), SpdmEventError::Reserved(1));
    assert_eq!(e(&chain[..123]), SpdmEventError::Length { declared: 124, actual: 123 });
    assert_eq!(e(&p(24, &[2])), SpdmEventError::DeviceType(2));
    assert_eq!(spdm_err(blob, &ir), SpdmEventError::SubHeaderType { event_type: blob, sub_header: SUB_HEADER_OEM });
    assert_eq!(
        spdm_err(config, &chain),
        SpdmEventError::SubHeaderType { event_type: config, sub_header: SUB_HEADER_CERT_CHAIN }
    );
    assert_eq!(e(&p(28, &[3])), SpdmEventError::SubHeaderType { event_type: blob, sub_header: 3 });
    assert_eq!(spdm_err(0x8000_00E0, &chain), SpdmEventError::SubHeaderType { event_type: 0x8000_00E0, sub_header: 1 });
    assert_eq!(e(&p(32, &[16])), SpdmEventError::SubHeaderLength(16));
    assert_eq!(
        e(&p(44, &u64::MAX.to_le_bytes())),
        SpdmEventError::Truncated { part: "device path", needed: u64::MAX, available: 124 }
    );
    assert_eq!(
        e(&p(44, &70u64.to_le_bytes())),
        SpdmEventError::Truncated { part: "sub-header", needed: 130, available: 124 }
    );
    assert_eq!(
        e(&sized(chain[..70].to_vec())),
        SpdmEventError::Truncated { part: "PCI context", needed: 76, available: 70 }
    );
    assert_eq!(e(&p(54, &[8])), SpdmEventError::SlotOrCount(8));
    assert_eq!(spdm_err(blob, &patched(meas.clone(), 54, &[2])), SpdmEventError::SlotOrCount(2));
    assert_eq!(e(&p(55, &[1])), SpdmEventError::SubHeaderReserved(1));
    assert_eq!(e(&p(56, &[4])), SpdmEventError::HashAlgorithm(SPDM_MEASUREMENT_HASH_SHA384));
    assert_eq!(spdm_err(blob, &patched(meas.clone(), 56, &[2])), SpdmEventError::HashAlgorithm(SPDM_BASE_HASH_SHA384));
    assert_eq!(
        spdm_err(config, &patched(ir.clone(), 52, b"TDIS")),
        SpdmEventError::OemType(u32::from_le_bytes(*b"TDIS"))
    );
    assert_eq!(e(&p(60, &[1])), SpdmEventError::PciContext { version: 1, length: 16 });
    assert_eq!(e(&p(62, &[12])), SpdmEventError::PciContext { version: 0, length: 12 });
    assert_eq!(e(&sized(chain[..123].to_vec())), SpdmEventError::PayloadLength { expected: 48, found: 47 });
    let mut long = chain.clone();
    long.push(0);
    assert_eq!(e(&sized(long)), SpdmEventError::PayloadLength { expected: 48, found: 49 });
    assert_eq!(
        spdm_err(config, &patched(ir.clone(), 56, &25u32.to_le_bytes())),
        SpdmEventError::PayloadLength { expected: 25, found: 24 }
    );
    // What the writer's pieces build by hand is what device_events builds.
    let oem = oem_sub_header(OEM_TYPE_TDIR, 24);
    assert_eq!(sec2_event_data(&d, SUB_HEADER_OEM, &oem, &d.interface_report), ir);
    assert_eq!(spdm_sub_header(0x12, 1, SPDM_MEASUREMENT_HASH_SHA384), meas[52..60]);
}

#[test]
fn spdm_event_parse_happy_path() {
    let d = device();
    let [(t0, chain), (t1, meas), (t2, ir)] = device_events(&d);
    let c = SpdmEvent::parse(t0, &chain).unwrap();
    assert_eq!((c.function_id, c.spdm_version, c.pci, c.device_path), (0x0100_0100, 0x12, d.pci, &[][..]));
    assert_eq!(c.payload, Payload::CertChain { slot: 0, digest: [0xc0; 48] });
    assert_eq!(SpdmEvent::parse(t1, &meas).unwrap().payload, Payload::Measurements { digest: [0xc1; 48] });
    let r = SpdmEvent::parse(t2, &ir).unwrap();
    assert_eq!((r.payload, r.spdm_version), (Payload::InterfaceReport(&[0x40; 24]), 0));
    // A device path (upstream logs one) is read past, bounded.
    let mut with_path = chain.clone();
    with_path.splice(52..52, [0x7f, 0xff, 4, 0]);
    with_path[20..24].copy_from_slice(&128u32.to_le_bytes());
    with_path[44..52].copy_from_slice(&4u64.to_le_bytes());
    let p = SpdmEvent::parse(t0, &with_path).unwrap();
    assert_eq!((p.device_path, p.payload), (&[0x7f, 0xff, 4, 0][..], c.payload));
}

proptest! {
    #[test]
    fn parse_never_panics_on_random_bytes(tail in proptest::collection::vec(any::<u8>(), 0..400)) {
        let mut b = header_only();
        b.extend_from_slice(&tail);
        if let Ok(log) = EventLog::parse(&b) {
            let _ = log.replay();
            for e in log.events() {
                prop_assert!(e.offset + EVENT_HEADER_BYTES + e.data.len() <= log.used_len());
                let _ = SpdmEvent::parse(e.event_type, e.data);
            }
        }
        let _ = EventLog::parse(&tail);
    }

    #[test]
    fn spdm_parse_never_panics_on_mutated_events(
        which in 0usize..3,
        at in any::<prop::sample::Index>(),
        value in any::<u8>(),
        cut in any::<prop::sample::Index>(),
    ) {
        let events = device_events(&device());
        let (t, mut data) = events[which].clone();
        let i = at.index(data.len());
        data[i] = value;
        let n = cut.index(data.len() + 1);
        if let Ok(e) = SpdmEvent::parse(t, &data[..n]) {
            prop_assert_eq!(n, data.len());
            prop_assert!(e.device_path.len() <= n);
        }
    }
}
