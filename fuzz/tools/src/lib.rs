//! Fuzzing support for seamless, kept apart from the libFuzzer targets so that it builds and runs
//! on the stable toolchain with no instrumentation:
//! - [`wire`]: how a fuzz input carries a sequence of messages (the answers a state machine gets,
//!   the requests a device gets);
//! - [`record`]: a real conversation between the TSM's sans-IO requester and `tdisp-device`,
//!   in process, with fixed randomness: the fixtures the SPDM targets start from and the seeds
//!   of their corpora;
//! - [`evidence`]: a real attestation report, evidence bundle, policy and SNP export made
//!   through the guest ABI, against the committed platform in `fuzz/fixtures/platform/`;
//! - [`machine`]: the host and guest ABIs driven with arbitrary call sequences through the test
//!   harness, device assignment included, with the machine's invariants checked after every call;
//! - [`ghci`]: the host's GHCI server (what serves OVMF as a TD) with the TD as the attacker:
//!   arbitrary TDG.VP.VMCALLs, with what the host may touch on the TD's behalf checked after each;
//! - [`attacks`]: the malicious-host and malicious-device cases, run and counted;
//! - [`frame`]: the firmware's serial artifact framing (`drivers/src/frame.rs`), for its target;
//! - [`tdvf`]: OVMF images around a fuzzed TDVF descriptor.
//!
//! Panics here are findings: the fuzz targets rely on them to report a broken invariant.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod attacks;
pub mod evidence;
/// The firmware's COM3 artifact framing, the very file the firmware builds (the firmware is a
/// binary crate, so its module is included here by path rather than linked).
#[path = "../../../drivers/src/frame.rs"]
pub mod frame;
pub mod ghci;
pub mod machine;
pub mod record;
pub mod tdvf;
pub mod wire;

/// `fuzz/` in the source tree (fixtures and corpora live there).
pub fn fuzz_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("fuzz/").to_path_buf()
}

/// A fuzz input as policy text: UTF-8, and nothing that could name a file outside
/// [`empty_dir`]. `vendor_root = "PATH"` makes the policy reader read PATH, so a path with a
/// `/` (or a TOML `\u` escape that could spell one) could read `/dev/zero` forever; the policy
/// is the relying party's own file, so that is its choice and not an attack, but the fuzzer
/// must not hang on it. Relative names without a slash resolve inside an empty directory.
pub fn policy_text(data: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(data).ok()?;
    (!text.contains('/') && !text.contains("\\u") && !text.contains("\\U")).then_some(text)
}

/// An empty directory, for the policy reader's base.
pub fn empty_dir() -> std::path::PathBuf {
    static D: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    D.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("seamless-fuzz-empty-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("temp dir");
        d
    })
    .clone()
}
