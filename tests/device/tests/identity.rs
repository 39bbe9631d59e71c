//! Where the device's identity and configuration come from: a state directory (generated at the
//! first start, read back later), DER files, a TOML file; and the binary itself, started with
//! options as a person would start it next to QEMU.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use common::*;
use tdisp_device::rng::Rng;
use tdisp_device::{Config, Device, Identity};
use tsm::spdm::connect::{Connect, ConnectError, ConnectRandom, Stage};
use tsm::spdm::sig::SigError;
use tsm::spdm::SpdmError;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tdisp-device-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn connect(t: &mut impl Transport) -> Connect {
    let mut c = Connect::new(ConnectRandom {
        challenge_nonce: [1; 32],
        measurement_nonce: [2; 32],
        context: [3; 8],
        ephemeral: [4; 48],
        random: [5; 32],
    });
    let _: Result<(), ConnectError> = drive!(t, c);
    c
}

#[test]
fn a_state_directory_keeps_the_identity_across_starts() {
    let dir = scratch("state");
    let first = Identity::from_state_dir(&dir, &mut Rng::new([1; 32])).unwrap();
    for f in ["root.der", "intermediate.der", "leaf.der", "leaf.key"] {
        assert!(dir.join(f).exists(), "{f} written");
    }
    let again = Identity::from_state_dir(&dir, &mut Rng::new([2; 32])).unwrap();
    assert_eq!(again.chain, first.chain, "read back, not generated from the other seed");
    assert_eq!(again.leaf_key, first.leaf_key);
    assert_eq!(first.intermediates_der.len(), 1, "root, intermediate CA, leaf");
    let mut d = Device::with_identity(Config::default(), again, Rng::new([3; 32])).unwrap();
    let c = connect(&mut d);
    assert_eq!(c.stage(), Stage::Connected, "{:?}", c.error());
    assert_eq!(c.chain().unwrap().certs().len(), 3);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn certificate_files_are_checked_before_use() {
    let dir = scratch("files");
    Identity::from_state_dir(&dir, &mut Rng::new([1; 32])).unwrap();
    let p = |f: &str| dir.join(f);
    let id = Identity::from_files(&p("root.der"), &[&p("intermediate.der")], &p("leaf.der"), &p("leaf.key")).unwrap();
    assert_eq!(id.chain.len(), 52 + id.root_der.len() + id.intermediates_der[0].len() + id.leaf_der.len());
    // Without the intermediate the leaf's issuer is not the root: the chain does not chain.
    let e = Identity::from_files(&p("root.der"), &[], &p("leaf.der"), &p("leaf.key")).unwrap_err();
    assert!(e.to_string().contains("issuer name is not its issuer's subject"), "{e}");
    // A key that is not the leaf's.
    let other = scratch("other");
    Identity::from_state_dir(&other, &mut Rng::new([9; 32])).unwrap();
    let e = Identity::from_files(&p("root.der"), &[&p("intermediate.der")], &p("leaf.der"), &other.join("leaf.key"))
        .unwrap_err();
    assert!(e.to_string().contains("does not belong"), "{e}");
    let e = Identity::from_files(&p("missing.der"), &[], &p("leaf.der"), &p("leaf.key")).unwrap_err();
    assert!(e.to_string().contains("missing.der"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_dir_all(&other).unwrap();
}

#[test]
fn measurement_blocks_come_from_the_toml_config() {
    let digest = "5a".repeat(48);
    let config = Config::from_toml(&format!("[[measurement]]\nindex = 7\ntype = 1\ndigest = \"{digest}\"\n")).unwrap();
    let mut d = Device::new(config.clone()).unwrap();
    let c = connect(&mut d);
    let exchange = c.measurements().unwrap();
    // After the 45-byte request and the 8-byte header: the one configured block.
    let block = &exchange[45 + 8..45 + 8 + 7 + 48];
    assert_eq!(block, &config.measurements[0].encode()[..]);
    assert_eq!(block[0], 7);
    assert_eq!(&block[7..], &[0x5A; 48]);
}

/// The binary, ended when the test ends even if an assertion fails first.
struct Running(std::process::Child);

impl Running {
    fn wait(&mut self) -> std::process::ExitStatus {
        self.0.wait().unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Starts the binary with `args` on port 0; returns it and the port it printed.
fn start(args: &[&str]) -> (Running, u16) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tdisp-device"))
        .args(["--port", "0", "--once"])
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let port = line.trim().rsplit(':').next().unwrap().parse().unwrap();
    assert!(line.starts_with("listening on 127.0.0.1:"), "{line}");
    (Running(child), port)
}

#[test]
fn the_binary_serves_its_config_and_its_faults() {
    let dir = scratch("bin");
    std::fs::create_dir_all(&dir).unwrap();
    let toml = dir.join("device.toml");
    std::fs::write(&toml, "spdm_versions = [\"1.2\"]\n[[measurement]]\nindex = 1\ntype = 0x83\nraw_text = \"v1\"\n")
        .unwrap();
    let (mut child, port) =
        start(&["--config", toml.to_str().unwrap(), "--state-dir", dir.join("state").to_str().unwrap()]);
    let mut client = Client::connect(port);
    let c = connect(&mut client);
    assert_eq!(c.stage(), Stage::Connected, "{:?}", c.error());
    assert_eq!(c.negotiated().unwrap().version, 0x12);
    client.shutdown();
    assert!(child.wait().success());

    let (mut child, port) = start(&["--fault", "bad-signature=measurements"]);
    let mut client = Client::connect(port);
    let c = connect(&mut client);
    assert_eq!(c.error(), Some(ConnectError::Spdm(Stage::Measurements, SpdmError::Signature(SigError::Mismatch))));
    client.shutdown();
    assert!(child.wait().success());

    let out = Command::new(env!("CARGO_BIN_EXE_tdisp-device")).args(["--fault", "nonsense"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown fault nonsense"));
    std::fs::remove_dir_all(&dir).unwrap();
}
