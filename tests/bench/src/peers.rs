//! The reference pair (`./run.sh bench --peers`): DMTF's libspdm requester and responder
//! (spdm-emu's `spdm_requester_emu` and `spdm_responder_emu`, built outside the repository; see
//! `docs/protocols.md`, "Interoperability") running the same flow as the TSM's SPDM.CONNECT:
//! VCA, digests, certificate, CHALLENGE, signed measurements of every index, KEY_EXCHANGE and
//! FINISH, with the P-384 suite (spdm-emu's default) and with the P-256 one.
//!
//! The figure is CPU time, both processes together (`getrusage(RUSAGE_CHILDREN)` around the
//! pair): wall time over loopback would measure Nagle and delayed ACKs, since neither peer sets
//! TCP_NODELAY. The pair's start-up (loading keys, initialising mbedtls) is measured apart with a
//! VCA-only run and taken off, so the comparison is of the protocol work after negotiation (a
//! little in libspdm's favour); both raw figures are recorded too.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::Figures;

/// CPU time (user + system) of every child process waited for so far, in milliseconds.
fn children_cpu_ms() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: `usage` is a live, writable rusage; getrusage only writes into it and returns -1
    // on an invalid `who`, which RUSAGE_CHILDREN is not.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, usage.as_mut_ptr()) };
    assert_eq!(rc, 0, "getrusage");
    // SAFETY: zero-initialised and filled by a successful getrusage: every field is valid.
    let usage = unsafe { usage.assume_init() };
    let ms = |t: libc::timeval| t.tv_sec as f64 * 1e3 + t.tv_usec as f64 / 1e3;
    ms(usage.ru_utime) + ms(usage.ru_stime)
}

/// Whether a socket listens on 127.0.0.1:`port` (Linux `/proc/net/tcp`: local address
/// `0100007F:PORT`, state 0A).
fn listening(port: u16) -> bool {
    let want = format!("0100007F:{port:04X}");
    std::fs::read_to_string("/proc/net/tcp").is_ok_and(|t| {
        t.lines().skip(1).any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[1] == want && f[3] == "0A"
        })
    })
}

/// The P-256 suite, for both peers.
const P256: [&str; 8] = ["--asym", "ECDSA_P256", "--hash", "SHA_256", "--dhe", "SECP_256_R1", "--aead", "AES_128_GCM"];

/// One run of the pair with the `suite` arguments (both peers) and the requester's `flow`
/// arguments; its CPU time in milliseconds.
fn pair_cpu_ms(bin: &Path, suite: &[&str], flow: &[&str]) -> f64 {
    let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap().local_addr().unwrap().port();
    let before = children_cpu_ms();
    let mut responder = Command::new(bin.join("spdm_responder_emu"))
        .current_dir(bin)
        .args(["--trans", "PCI_DOE", "--ip", "127.0.0.1", "--port", &port.to_string(), "--ver", "1.2"])
        .args(suite)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // spdm-emu serves one connection and stops when it ends, so it cannot be probed by
    // connecting: wait for its listening socket in /proc/net/tcp instead.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !listening(port) {
        assert!(Instant::now() < deadline, "spdm_responder_emu does not listen on {port}");
        std::thread::sleep(Duration::from_millis(10));
    }
    let status = Command::new(bin.join("spdm_requester_emu"))
        .current_dir(bin)
        .args(["--trans", "PCI_DOE", "--port", &port.to_string(), "--ver", "1.2"])
        .args(suite)
        .args(flow)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    let _ = responder.kill();
    let _ = responder.wait();
    assert!(status.success(), "spdm_requester_emu {flow:?} failed");
    children_cpu_ms() - before
}

/// The libspdm pair's figures, if `SPDM_EMU_BIN` names spdm-emu's `build/bin`.
pub fn run(figs: &mut Figures) {
    let Some(bin) = std::env::var_os("SPDM_EMU_BIN").map(PathBuf::from) else {
        eprintln!("note: --peers needs SPDM_EMU_BIN (spdm-emu's build/bin); the libspdm figures are left out");
        return;
    };
    let flow = ["--exe_conn", "DIGEST,CERT,CHAL,MEAS", "--meas_op", "ALL", "--exe_session", "KEY_EX"];
    // VCA alone, no session: start-up, key loading and the three negotiation exchanges.
    let version_only = ["--exe_conn", "VCA", "--exe_session", "NO_END"];
    for (suite, tag, ours) in [(&[][..], "", "spdm_connect_ms"), (&P256[..], "_p256", "spdm_connect_p256_ms")] {
        let mut full = Vec::new();
        let mut base = Vec::new();
        for _ in 0..5 {
            full.push(pair_cpu_ms(&bin, suite, &flow));
            base.push(pair_cpu_ms(&bin, suite, &version_only));
        }
        let (full, base) = (crate::device::median(full), crate::device::median(base));
        figs.record(&format!("libspdm_pair_connect{tag}_cpu_ms"), full, "ms");
        figs.record(&format!("libspdm_pair_vca_only{tag}_cpu_ms"), base, "ms");
        if let Some(ours) = figs.get(ours) {
            // Above 1: the TSM's requester with tdisp-device does the same flow in less CPU time.
            figs.record(&format!("spdm_connect{tag}_vs_libspdm"), (full - base) / ours, "ratio");
        }
    }
}
