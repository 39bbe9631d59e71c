//! Real conversations with DMTF's libspdm responder, replayed: CI keeps the interop without the
//! peer.
//!
//! Each `interop/libspdm-1.*-p384.txt` / `-p256.txt` is what the TSM sent to spdm-emu's
//! `spdm_responder_emu` and what it answered (SPDM.CONNECT with the signed measurements inside
//! the session, IDE_KM key programming, TDISP up to the interface report; the `-chunked-` ones
//! with a chain over 4 KiB taken with CHUNK_GET), recorded by `libspdm.rs` with fixed requester
//! randomness and keys (`interop/README.md` says how). A replay drives the same code (`libspdm_flow::converse`) with the recording as the
//! device: every request must come out byte for byte as recorded (so the answers still apply,
//! signatures and session keys included), and every answer must be accepted.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod libspdm_flow;

use std::path::{Path, PathBuf};

use libspdm_flow::{converse, read_recording, Outcome, Replay, Tamper};
use tsm::spdm::connect::{ConnectError, Stage};
use tsm::spdm::sig::SigError;
use tsm::spdm::SpdmError;

fn recordings() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name.starts_with("libspdm-1.") && (name.ends_with("-p384.txt") || name.ends_with("-p256.txt"))
        })
        .collect();
    files.sort();
    files
}

fn replay(path: &Path, tamper: Option<Tamper>) -> (Outcome, Replay) {
    let exchanges = read_recording(&std::fs::read_to_string(path).unwrap());
    let mut r = Replay { exchanges, next: 0, tamper };
    let outcome = converse(&mut r);
    (outcome, r)
}

#[test]
fn every_recorded_libspdm_conversation_replays_whole() {
    let files = recordings();
    assert!(files.len() >= 4, "the SPDM 1.2 and 1.3 recordings, P-384 and P-256");
    for path in files {
        let (o, r) = replay(&path, None);
        let name = path.display();
        assert_eq!(o.connect, Some(Ok(())), "{name}");
        assert_eq!(o.measurements, Some(Ok(())), "{name}: measured inside the session");
        assert_eq!(o.idekm, Some(Ok(())), "{name}");
        let Some(Ok((ranges, state))) = o.tdisp else { panic!("{name}: {:?}", o.tdisp) };
        assert_eq!(state, tsm::tdisp::TdiState::ConfigLocked, "{name}");
        // spdm-emu's sample device: MMIO of no real device (see docs/protocols.md).
        let pages: Vec<u64> = ranges.iter().map(|r| r.first_page).collect();
        assert_eq!(pages, [0x0, 0x8000, 0x10000, 0x20000], "{name}");
        assert_eq!(r.next, r.exchanges.len(), "{name}: every recorded exchange replayed");
        // No GET_MEASUREMENTS in the clear: they travel sealed, after FINISH.
        assert!(!r.exchanges.iter().any(|(q, _)| q.len() > 9 && q[2] == 1 && q[9] == 0xE0), "{name}");
        let chunk_gets = r.exchanges.iter().filter(|(q, _)| q.len() > 9 && q[2] == 1 && q[9] == 0x86).count();
        assert_eq!(chunk_gets > 0, name.to_string().contains("-chunked-"), "{name}: {chunk_gets} CHUNK_GETs");
    }
}

/// The replay is no formality: one byte changed under a signature (the responder's nonce in
/// CHALLENGE_AUTH) fails that signature, one bit of a secured answer (the MEASUREMENTS after
/// FINISH, the last TDISP answer) fails its AEAD tag, and one byte of a chunk fails the chain's
/// digest.
#[test]
fn a_recorded_answer_changed_by_one_byte_is_refused() {
    fn flip_challenge_nonce(a: &mut [u8]) {
        a[8 + 4 + 48] ^= 1;
    }
    fn flip_last(a: &mut [u8]) {
        let n = a.len();
        a[n - 1] ^= 1;
    }
    fn flip_middle(a: &mut [u8]) {
        let n = a.len();
        a[n / 2] ^= 1;
    }
    for path in recordings() {
        let name = path.display();
        let exchanges = read_recording(&std::fs::read_to_string(&path).unwrap());
        let find = |code: u8| exchanges.iter().position(|(q, _)| q.len() > 9 && q[2] == 1 && q[9] == code).unwrap();
        let sig = |stage| Some(Err(ConnectError::Spdm(stage, SpdmError::Signature(SigError::Mismatch))));
        let (o, _) = replay(&path, Some((find(0x83), flip_challenge_nonce)));
        assert_eq!(o.connect, sig(Stage::Challenge), "{name}");
        // KEY_EXCHANGE, FINISH (sealed), then GET_MEASUREMENTS (sealed).
        let (o, _) = replay(&path, Some((find(0xE4) + 2, flip_last)));
        assert_eq!(o.connect, Some(Ok(())), "{name}");
        assert!(matches!(o.measurements, Some(Err(ref e)) if e.starts_with("open")), "{name}: {:?}", o.measurements);
        // The last exchange is a TDISP answer in the session.
        let (o, _) = replay(&path, Some((exchanges.len() - 1, flip_last)));
        assert!(matches!(o.tdisp, Some(Err(ref e)) if e.starts_with("open")), "{name}: {:?}", o.tdisp);
        if name.to_string().contains("-chunked-") {
            let (o, _) = replay(&path, Some((find(0x86), flip_middle)));
            assert_eq!(
                o.connect,
                Some(Err(ConnectError::Spdm(Stage::Certificates, SpdmError::DigestMismatch))),
                "{name}"
            );
        }
    }
}
