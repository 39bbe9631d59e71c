//! Known-answer tests for the SPDM key schedule, the finished keys and the DSP0277 AEAD, against
//! vectors computed by an independent implementation: `tests/vectors/spdm_keys.py`, with the
//! Python `cryptography` package (regenerate: `python3 spdm_keys.py > spdm_keys.txt`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;

use tsm::spdm::keys::{DirectionKeys, HandshakeKeys, Schedule};
use tsm::spdm::secured;

fn vectors() -> HashMap<&'static str, Vec<u8>> {
    include_str!("vectors/spdm_keys.txt")
        .lines()
        .map(|l| {
            let (name, hex) = l.split_once(' ').unwrap();
            let bytes = (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
            (name, bytes)
        })
        .collect()
}

fn arr<const N: usize>(v: &[u8]) -> [u8; N] {
    v.try_into().unwrap()
}

#[test]
fn the_key_schedule_matches_an_independent_implementation() {
    let v = vectors();
    let hs = HandshakeKeys::derive(Schedule::p384(0x12), &arr::<48>(&v["input.shared"]), &arr::<48>(&v["input.th1"]));
    assert_eq!(hs.request.secret.to_vec(), v["req_hs_secret"]);
    assert_eq!(hs.response.secret.to_vec(), v["rsp_hs_secret"]);
    assert_eq!(hs.request.key.to_vec(), v["req_hs.key"]);
    assert_eq!(hs.request.iv.to_vec(), v["req_hs.iv"]);
    assert_eq!(hs.response.key.to_vec(), v["rsp_hs.key"]);
    assert_eq!(hs.response.iv.to_vec(), v["rsp_hs.iv"]);
    assert_eq!(hs.finished_key(true).to_vec(), v["req_hs.finished"]);
    assert_eq!(hs.finished_key(false).to_vec(), v["rsp_hs.finished"]);
    assert_eq!(hs.verify_data(false, &arr::<48>(&v["input.th1"])).to_vec(), v["rsp_verify_data"]);
    assert_eq!(hs.verify_data(true, &arr::<48>(&v["input.finish_th"])).to_vec(), v["req_verify_data"]);
    let app = hs.application(&arr::<48>(&v["input.th2"]));
    assert_eq!(app.request.secret.to_vec(), v["req_app_secret"]);
    assert_eq!(app.response.secret.to_vec(), v["rsp_app_secret"]);
    assert_eq!(app.export_master.to_vec(), v["export_master"]);
    assert_eq!(app.request.key.to_vec(), v["req_app.key"]);
    assert_eq!(app.request.iv.to_vec(), v["req_app.iv"]);
    let up = app.request.updated();
    assert_eq!(up.secret.to_vec(), v["req_app.updated_secret"]);
    assert_eq!(up.key.to_vec(), v["req_app.updated_key"]);
}

#[test]
fn a_secured_message_matches_an_independent_implementation() {
    let v = vectors();
    let mut keys = DirectionKeys::from_secret(Schedule::p384(0x12), &arr::<48>(&v["req_app_secret"]));
    keys.sequence = 5;
    let mut out = [0u8; 128];
    let n = secured::seal(&mut keys, 0xFFFE_FFFF, &v["secured.message"], &mut out).unwrap();
    assert_eq!(out[..n].to_vec(), v["secured.object_seq5"]);
    let mut rx = DirectionKeys::from_secret(Schedule::p384(0x12), &arr::<48>(&v["req_app_secret"]));
    rx.sequence = 5;
    let mut buf = [0u8; 64];
    assert_eq!(
        secured::open(&mut rx, 0xFFFE_FFFF, &v["secured.object_seq5"], &mut buf).unwrap(),
        &v["secured.message"][..]
    );
}
