//! Real conversations with DMTF's libspdm, replayed: CI keeps the interop without the peer.
//!
//! Each file in `tests/interop/` is what the TSM's SPDM.CONNECT flow sent to libspdm's
//! `spdm_responder_emu` and what libspdm answered, recorded by
//! `tests/device/tests/libspdm.rs` with fixed requester randomness (`tests/interop/README.md`
//! says how). Replaying one drives the same requester with the same randomness: every request
//! must come out byte for byte as recorded (so the answers still apply, signatures included),
//! every recorded answer must be accepted, and the flow must end connected.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use tsm::doe::Action;
use tsm::spdm::connect::{Connect, ConnectError, ConnectRandom, Stage};

/// One recorded conversation.
struct Recording {
    random: ConnectRandom,
    exchanges: Vec<(Vec<u8>, Vec<u8>)>,
}

fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd hex string");
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

fn load(path: &Path) -> Recording {
    let text = std::fs::read_to_string(path).unwrap();
    let mut random = ConnectRandom {
        challenge_nonce: [0; 32],
        measurement_nonce: [0; 32],
        context: [0; 8],
        ephemeral: [0; 48],
        random: [0; 32],
    };
    let mut requests = Vec::new();
    let mut answers = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (tag, rest) = line.split_once(' ').unwrap();
        match tag {
            ">" => requests.push(unhex(rest)),
            "<" => answers.push(unhex(rest)),
            "random" => {
                let (name, value) = rest.split_once(' ').unwrap();
                let value = unhex(value);
                match name {
                    "challenge_nonce" => random.challenge_nonce.copy_from_slice(&value),
                    "measurement_nonce" => random.measurement_nonce.copy_from_slice(&value),
                    "context" => random.context.copy_from_slice(&value),
                    "ephemeral" => random.ephemeral.copy_from_slice(&value),
                    "random" => random.random.copy_from_slice(&value),
                    other => panic!("unknown random value {other}"),
                }
            }
            other => panic!("unknown line tag {other}"),
        }
    }
    assert_eq!(requests.len(), answers.len(), "{}: a request without its answer", path.display());
    Recording { random, exchanges: requests.into_iter().zip(answers).collect() }
}

fn recordings() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    files.sort();
    files
}

/// Replays `rec`, with `tamper` applied to the answer of exchange `at` (if any); returns the
/// connection and the outcome.
/// A change to the recorded answer of one exchange (its position).
type Tamper<'a> = (usize, &'a dyn Fn(&mut Vec<u8>));

fn replay(rec: &Recording, tamper: Option<Tamper<'_>>) -> (Connect, Result<(), ConnectError>) {
    let mut c = Connect::new(rec.random);
    let mut sent = match c.start() {
        Action::Send(b) => b.to_vec(),
        other => panic!("start: {other:?}"),
    };
    for (i, (request, answer)) in rec.exchanges.iter().enumerate() {
        assert_eq!(&sent, request, "request {i} differs from the recording");
        let mut answer = answer.clone();
        if let Some((at, f)) = tamper {
            if at == i {
                f(&mut answer);
            }
        }
        match c.step(&answer) {
            Action::Send(b) => sent = b.to_vec(),
            Action::Done => {
                assert_eq!(i + 1, rec.exchanges.len(), "connected before the recording ends");
                return (c, Ok(()));
            }
            Action::Failed(e) => return (c, Err(e)),
        }
    }
    panic!("the recording ends while the requester still sends")
}

#[test]
fn every_recorded_libspdm_conversation_replays_to_a_connection() {
    let files = recordings();
    assert!(!files.is_empty(), "no recorded conversation in tests/interop");
    for path in files {
        let rec = load(&path);
        let (c, r) = replay(&rec, None);
        assert_eq!(r, Ok(()), "{}", path.display());
        assert_eq!(c.stage(), Stage::Connected);
        assert!(c.session().is_some() && c.chain().is_some() && c.measurements().is_some());
    }
}

/// The replay is no formality: one byte changed in the signed part of CHALLENGE_AUTH (the
/// responder's nonce) or of MEASUREMENTS (its nonce after the record) makes the signature fail.
#[test]
fn a_recorded_answer_changed_under_its_signature_is_refused() {
    use tsm::spdm::sig::SigError;
    use tsm::spdm::SpdmError;
    for path in recordings() {
        let rec = load(&path);
        let mut checked = 0;
        for (i, (request, _)) in rec.exchanges.iter().enumerate() {
            // In the clear (DOE type 1): CHALLENGE, and GET_MEASUREMENTS.
            if request.len() < 10 || request[2] != 1 {
                continue;
            }
            let nonce_at = match request[9] {
                0x83 => |_: &[u8]| 8 + 4 + 48,
                0xE0 => |a: &[u8]| 8 + 8 + (usize::from(a[13]) | usize::from(a[14]) << 8 | usize::from(a[15]) << 16),
                _ => continue,
            };
            let flip: &dyn Fn(&mut Vec<u8>) = &|a| {
                let at = nonce_at(a);
                a[at] ^= 0x01;
            };
            let (_, r) = replay(&rec, Some((i, flip)));
            let stage = if request[9] == 0x83 { Stage::Challenge } else { Stage::Measurements };
            assert_eq!(
                r,
                Err(ConnectError::Spdm(stage, SpdmError::Signature(SigError::Mismatch))),
                "{}",
                path.display()
            );
            checked += 1;
        }
        assert_eq!(checked, 2, "{}: CHALLENGE and GET_MEASUREMENTS in the clear", path.display());
    }
}
