//! Support for the end-to-end tests: find (or build) the firmware image and QEMU, run
//! `tdisp-device` on a free loopback port, boot the firmware under TCG with the device behind
//! QEMU's NVMe DOE mailbox, and collect what came out: QEMU's exit status, the COM1 console,
//! the raw defmt stream of COM2 and the `figure` lines.
//!
//! The device runs in-process: the `tdisp-device` crate's own socket server
//! ([`tdisp_device::server::serve`]) on a thread, bound to 127.0.0.1:0 before QEMU starts (QEMU
//! connects at start-up). It is the code `cargo run -p tdisp-device -- --port 0` runs, and the test
//! gets the device's state back afterwards.
//!
//! QEMU: `$QEMU` or `qemu-system-x86_64` on PATH, version >= 9.1 (`./run.sh test` installs it).
//! When it is missing, [`Qemu::find`] fails the test under CI (`CI` set) and skips it otherwise,
//! saying so.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tdisp_device::{server, Config, Device};

/// Where QEMU's q35 puts the NVMe function (`addr=3`): 00:03.0, the device's default function.
pub const NVME_ADDR: &str = "3";
/// Longest a single boot may take before the test calls it hung.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(60);

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("workspace root")
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace().join("target"))
}

/// The firmware image `./run.sh test` builds; built here with cargo if it is missing.
/// `SEAMLESS_FIRMWARE` overrides the path.
pub fn firmware() -> PathBuf {
    if let Some(p) = std::env::var_os("SEAMLESS_FIRMWARE") {
        return PathBuf::from(p);
    }
    let image = target_dir().join("x86_64-unknown-none/release/firmware");
    if !image.exists() {
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "-p", "firmware", "--target", "x86_64-unknown-none", "--release"])
            .env("DEFMT_LOG", std::env::var("DEFMT_LOG").unwrap_or_else(|_| "debug".into()))
            .current_dir(workspace())
            .status()
            .expect("run cargo to build the firmware");
        assert!(status.success(), "building the firmware failed");
    }
    image
}

/// A QEMU binary that can run the tests.
#[derive(Clone, Debug)]
pub struct Qemu(PathBuf);

impl Qemu {
    /// The QEMU to use, or `None` (after saying why) when it is missing outside CI.
    ///
    /// # Panics
    /// Under CI (`CI` set) when QEMU is missing or lacks NVMe's `spdm_port`: CI installs it.
    pub fn find() -> Option<Qemu> {
        let name = std::env::var_os("QEMU").unwrap_or_else(|| "qemu-system-x86_64".into());
        let problem = match Command::new(&name).arg("--version").output() {
            Err(e) => Some(format!("{} not runnable ({e})", name.to_string_lossy())),
            Ok(o) if !o.status.success() => Some(format!("{} --version failed", name.to_string_lossy())),
            Ok(_) => {
                let help = Command::new(&name).args(["-M", "q35", "-device", "nvme,help"]).output();
                match help {
                    Ok(h) if String::from_utf8_lossy(&h.stdout).contains("spdm_port") => None,
                    _ => {
                        Some(format!("{} has no spdm_port on -device nvme (needs QEMU >= 9.1)", name.to_string_lossy()))
                    }
                }
            }
        };
        match problem {
            None => Some(Qemu(PathBuf::from(name))),
            Some(p) if std::env::var_os("CI").is_some() => {
                panic!("QEMU is required for tests/e2e: {p}; `./run.sh setup` installs it")
            }
            Some(p) => {
                eprintln!("skipping: {p}; run `./run.sh qemu` to install it");
                None
            }
        }
    }
}

/// `tdisp-device` serving one QEMU connection on a thread.
#[derive(Debug)]
pub struct DeviceServer {
    /// The loopback port it listens on.
    pub port: u16,
    thread: Option<JoinHandle<Device>>,
}

impl DeviceServer {
    /// Starts the default device on a free 127.0.0.1 port.
    pub fn start() -> DeviceServer {
        DeviceServer::with_config(Config::default())
    }

    /// Starts a device with `config`.
    pub fn with_config(config: Config) -> DeviceServer {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local address").port();
        let mut device = Device::new(config).expect("device identity");
        let thread = std::thread::spawn(move || {
            let _ = server::serve(&listener, &mut device, true);
            device
        });
        DeviceServer { port, thread: Some(thread) }
    }

    /// Waits for the connection to end and returns the device's final state. If QEMU never
    /// connected, a SHUTDOWN frame of our own ends the server.
    pub fn finish(mut self) -> Device {
        let thread = self.thread.take().expect("device thread");
        let deadline = Instant::now() + Duration::from_secs(5);
        while !thread.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if !thread.is_finished() {
            if let Ok(mut s) = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)) {
                let _ = s.write_all(&[0, 0, 0xFF, 0xFE, 0, 0, 0, 2, 0, 0, 0, 0]);
            }
        }
        thread.join().expect("device thread panicked")
    }
}

/// One boot.
#[derive(Clone, Debug, Default)]
pub struct Boot {
    /// `opt/seamless/config` contents (none: not passed).
    pub config: Option<String>,
    /// `opt/seamless/platform-secret` contents (none: not passed).
    pub secret: Option<Vec<u8>>,
    /// The NVMe device's `spdm_port` (none: no NVMe device).
    pub spdm_port: Option<u16>,
    /// Guest RAM, MiB (default 256).
    pub memory_mib: Option<u32>,
    /// `-cpu` model (default `max`, which has RDRAND).
    pub cpu: Option<String>,
}

/// What a boot produced.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// QEMU's exit status (33: the firmware reported success; 35: failure).
    pub status: i32,
    /// The COM1 console.
    pub console: String,
    /// The raw defmt stream from COM2.
    pub defmt: Vec<u8>,
    /// QEMU's own stderr.
    pub stderr: String,
    /// Where the files are.
    pub dir: PathBuf,
    /// Wall time of the QEMU process.
    pub wall: Duration,
}

impl Outcome {
    /// The value of `figure <name> <value> <unit>` on the console.
    pub fn figure(&self, name: &str) -> Option<f64> {
        self.console.lines().find_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("figure") && w.next() == Some(name)).then(|| w.next()?.parse().ok()).flatten()
        })
    }

    /// Panics with the whole console unless the status is `want`.
    pub fn expect_status(&self, want: i32) {
        assert_eq!(
            self.status, want,
            "QEMU exited with {} (want {want}); console:\n{}\nqemu stderr:\n{}",
            self.status, self.console, self.stderr
        );
    }
}

impl Boot {
    /// Boots the firmware in QEMU (TCG) and waits for it to exit; `name` names the run's folder
    /// under `target/e2e/`.
    ///
    /// # Panics
    /// If QEMU cannot start, or runs past [`BOOT_TIMEOUT`] (it is then killed).
    pub fn run(&self, qemu: &Qemu, name: &str) -> Outcome {
        let dir = target_dir().join("e2e").join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("run folder");
        let com1 = dir.join("serial.log");
        let com2 = dir.join("defmt.bin");
        let mut cmd = Command::new(&qemu.0);
        cmd.args(["-M", "q35", "-accel", "tcg", "-nodefaults", "-display", "none", "-no-reboot"])
            .arg("-cpu")
            .arg(self.cpu.as_deref().unwrap_or("max"))
            .arg("-m")
            .arg(format!("{}M", self.memory_mib.unwrap_or(256)))
            .arg("-kernel")
            .arg(firmware())
            .arg("-serial")
            .arg(format!("file:{}", com1.display()))
            .arg("-serial")
            .arg(format!("file:{}", com2.display()))
            .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]);
        if let Some(port) = self.spdm_port {
            cmd.arg("-device").arg(format!("nvme,serial=seamless,addr={NVME_ADDR},spdm_port={port}"));
        }
        if let Some(c) = &self.config {
            let path = dir.join("config.txt");
            std::fs::write(&path, c).expect("config file");
            cmd.arg("-fw_cfg").arg(format!("name=opt/seamless/config,file={}", path.display()));
        }
        if let Some(s) = &self.secret {
            let path = dir.join("platform-secret.bin");
            std::fs::write(&path, s).expect("secret file");
            cmd.arg("-fw_cfg").arg(format!("name=opt/seamless/platform-secret,file={}", path.display()));
        }
        let start = Instant::now();
        let mut child =
            cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("start QEMU");
        let status = loop {
            if let Some(s) = child.try_wait().expect("wait for QEMU") {
                break s;
            }
            if start.elapsed() > BOOT_TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "QEMU ran past {BOOT_TIMEOUT:?}; console so far:\n{}",
                    std::fs::read_to_string(&com1).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let wall = start.elapsed();
        let mut stderr = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
        }
        Outcome {
            status: status.code().unwrap_or(-1),
            console: std::fs::read_to_string(&com1).unwrap_or_default().replace('\r', ""),
            defmt: std::fs::read(&com2).unwrap_or_default(),
            stderr,
            dir,
            wall,
        }
    }
}

/// `defmt-print` decoding `stream` against the firmware image, or `None` (after saying why)
/// when the tool is missing outside CI.
///
/// # Panics
/// Under CI when `defmt-print` is missing (`./run.sh setup` installs it), or if it fails.
pub fn decode_defmt(stream: &[u8]) -> Option<String> {
    let child = Command::new("defmt-print")
        .arg("-e")
        .arg(firmware())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if std::env::var_os("CI").is_some() => panic!("defmt-print is required under CI: {e}"),
        Err(e) => {
            eprintln!("skipping the defmt check: defmt-print not runnable ({e}); `cargo install defmt-print`");
            return None;
        }
    };
    child.stdin.take().expect("stdin").write_all(stream).expect("feed defmt-print");
    let out = child.wait_with_output().expect("defmt-print");
    assert!(out.status.success(), "defmt-print failed: {}", String::from_utf8_lossy(&out.stderr));
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}
