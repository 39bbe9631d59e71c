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

pub mod fat;

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

/// The guest's ELF (`seamless-guest`, the TD's image) `./run.sh test` builds; built here with
/// cargo if it is missing. `SEAMLESS_GUEST` overrides the path.
pub fn guest_elf() -> PathBuf {
    if let Some(p) = std::env::var_os("SEAMLESS_GUEST") {
        return PathBuf::from(p);
    }
    let elf = target_dir().join("x86_64-unknown-none/release/seamless-guest");
    if !elf.exists() {
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "-p", "seamless-guest", "--target", "x86_64-unknown-none", "--release"])
            .current_dir(workspace())
            .status()
            .expect("run cargo to build the guest");
        assert!(status.success(), "building the guest failed");
    }
    elf
}

/// The host agent's ELF (`seamless-host`, which the TSM loads into the host world from fw_cfg
/// `opt/seamless/host`) `./run.sh test` builds; built here with cargo if it is missing.
/// `SEAMLESS_HOST` overrides the path.
pub fn host_elf() -> PathBuf {
    if let Some(p) = std::env::var_os("SEAMLESS_HOST") {
        return PathBuf::from(p);
    }
    let elf = target_dir().join("x86_64-unknown-none/release/seamless-host");
    if !elf.exists() {
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "-p", "seamless-host", "--target", "x86_64-unknown-none", "--release"])
            .current_dir(workspace())
            .status()
            .expect("run cargo to build the host agent");
        assert!(status.success(), "building the host agent failed");
    }
    elf
}

/// Writes the guest image file (`attest::image`, what the host agent loads over fw_cfg and
/// `attest measure` measures) made from [`guest_elf`] by `firmware guest-image`, at `path`.
///
/// # Panics
/// If the tool fails.
pub fn write_guest_image(path: &Path) {
    let elf = guest_elf();
    let (status, _, err) = run_tool("firmware", &["guest-image".as_ref(), elf.as_os_str(), path.as_os_str()]);
    assert_eq!(status, 0, "firmware guest-image: {err}");
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
    /// The guest image passed as `opt/seamless/guest` (none: with the NVMe device, the image
    /// [`write_guest_image`] makes in the run's folder as `guest.img`; without it, none).
    pub guest: Option<PathBuf>,
    /// The host agent's ELF passed as `opt/seamless/host` (none: [`host_elf`]).
    pub host: Option<PathBuf>,
    /// Guest RAM, MiB (default 256).
    pub memory_mib: Option<u32>,
    /// `-cpu` model (default `max,phys-bits=48`: `max` has RDRAND and SVM; TCG's default of 40
    /// physical address bits would make GPA bit 47, the shared bit of a GPAW-48 TD, a reserved
    /// bit of the TD's own page tables).
    pub cpu: Option<String>,
    /// Set from another thread to kill QEMU (SIGKILL) mid-run; the outcome's status is then -1.
    pub kill: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    /// The run's folder (default: `target/e2e/<name>`, emptied first); when given, only the
    /// files the run writes are replaced.
    pub dir: Option<PathBuf>,
    /// More QEMU arguments, appended as they are (the remapping unit and the NVMe drive image
    /// are already on the command line).
    pub extra: Vec<String>,
    /// The TDVF image passed as `opt/seamless/ovmf` (mode `ovmf`), if any.
    pub ovmf: Option<PathBuf>,
    /// The NVMe drive holds the TDVF's boot disk ([`fat::boot_disk`]) instead of the demo's
    /// known content.
    pub boot_disk: bool,
    /// How long the boot may take before it is called hung (default [`BOOT_TIMEOUT`]).
    pub timeout: Option<Duration>,
}

/// A valid platform secret blob (`attest::platform::SecretBlob`) that no verifier trusts: for
/// runs that do not attest.
pub fn throwaway_secret() -> Vec<u8> {
    attest::platform::SecretBlob::new([0x42; 32], [0; 8], [0x17; 64]).to_bytes().to_vec()
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
    /// The raw artifact stream from COM3 (framed files).
    pub artifacts: Vec<u8>,
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
    /// QEMU's command line for this boot, the one place it is written: q35 under TCG, the
    /// firmware as a PVH kernel, COM1 (console), COM2 (defmt) and COM3 (framed artifacts) into
    /// files in `dir`, isa-debug-exit, the NVMe device with its DOE mailbox at `spdm_port`, the
    /// host agent's ELF, the run configuration, platform secret and guest image over fw_cfg
    /// (written into `dir`), then `extra`.
    ///
    /// # Panics
    /// If the fw_cfg files cannot be written.
    pub fn command(&self, qemu: &Qemu, dir: &Path) -> Command {
        let mut cmd = Command::new(&qemu.0);
        cmd.args(["-M", "q35", "-accel", "tcg", "-nodefaults", "-display", "none", "-no-reboot"])
            .arg("-cpu")
            .arg(self.cpu.as_deref().unwrap_or("max,phys-bits=48"))
            .arg("-m")
            .arg(format!("{}M", self.memory_mib.unwrap_or(256)))
            .arg("-kernel")
            .arg(firmware());
        for com in ["serial.log", "defmt.bin", "artifacts.bin"] {
            cmd.arg("-serial").arg(format!("file:{}", dir.join(com).display()));
        }
        cmd.args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]);
        // The remapping unit the TSM takes at IOMMU.SETUP (48-bit, scalable mode).
        cmd.args(["-device", "intel-iommu,x-scalable-mode=on,intremap=off"]);
        if let Some(port) = self.spdm_port {
            // The drive the TD reads through the IOMMU: known content (attest::disk), or the
            // TDVF's boot disk.
            let disk = dir.join("disk.img");
            let bytes = if self.boot_disk { fat::boot_disk() } else { disk_image() };
            std::fs::write(&disk, bytes).expect("disk image");
            cmd.arg("-drive").arg(format!("file={},if=none,id=disk,format=raw", disk.display()));
            cmd.arg("-device").arg(format!("nvme,serial=seamless,addr={NVME_ADDR},spdm_port={port},drive=disk"));
        }
        let host = self.host.clone().unwrap_or_else(host_elf);
        cmd.arg("-fw_cfg").arg(format!("name=opt/seamless/host,file={}", host.display()));
        if let Some(c) = &self.config {
            let path = dir.join("config.txt");
            std::fs::write(&path, c).expect("config file");
            cmd.arg("-fw_cfg").arg(format!("name=opt/seamless/config,file={}", path.display()));
        }
        let guest = self.guest.clone().or_else(|| {
            self.spdm_port.map(|_| {
                let path = dir.join("guest.img");
                write_guest_image(&path);
                path
            })
        });
        if let Some(g) = guest {
            cmd.arg("-fw_cfg").arg(format!("name=opt/seamless/guest,file={}", g.display()));
        }
        if let Some(o) = &self.ovmf {
            cmd.arg("-fw_cfg").arg(format!("name=opt/seamless/ovmf,file={}", o.display()));
        }
        if let Some(s) = &self.secret {
            let path = dir.join("platform-secret.bin");
            std::fs::write(&path, s).expect("secret file");
            cmd.arg("-fw_cfg").arg(format!("name=opt/seamless/platform-secret,file={}", path.display()));
        }
        cmd.args(&self.extra);
        cmd
    }

    /// Boots the firmware in QEMU (TCG) and waits for it to exit; `name` names the run's folder
    /// under `target/e2e/`.
    ///
    /// # Panics
    /// If QEMU cannot start, or runs past [`BOOT_TIMEOUT`] (it is then killed).
    pub fn run(&self, qemu: &Qemu, name: &str) -> Outcome {
        let dir = match &self.dir {
            Some(d) => d.clone(),
            None => {
                let d = target_dir().join("e2e").join(name);
                let _ = std::fs::remove_dir_all(&d);
                d
            }
        };
        std::fs::create_dir_all(&dir).expect("run folder");
        let (com1, com2, com3) = (dir.join("serial.log"), dir.join("defmt.bin"), dir.join("artifacts.bin"));
        for f in [&com1, &com2, &com3] {
            let _ = std::fs::remove_file(f);
        }
        let mut cmd = self.command(qemu, &dir);
        let start = Instant::now();
        let mut child =
            cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("start QEMU");
        let status = loop {
            if let Some(s) = child.try_wait().expect("wait for QEMU") {
                break s;
            }
            if self.kill.as_ref().is_some_and(|k| k.load(std::sync::atomic::Ordering::SeqCst)) {
                child.kill().expect("SIGKILL QEMU");
                break child.wait().expect("wait for the killed QEMU");
            }
            let timeout = self.timeout.unwrap_or(BOOT_TIMEOUT);
            if start.elapsed() > timeout {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "QEMU ran past {timeout:?}; console so far:\n{}",
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
            artifacts: std::fs::read(&com3).unwrap_or_default(),
            stderr,
            dir,
            wall,
        }
    }
}

/// Debian's OVMF.fd (a TDVF), from `OVMF_FD` or `/usr/share/ovmf/OVMF.fd`, or `None` (after
/// saying why) when it is missing outside CI.
///
/// # Panics
/// Under CI when the file is missing (`./run.sh setup` installs Debian's `ovmf`).
pub fn ovmf_fd() -> Option<PathBuf> {
    let path = std::env::var_os("OVMF_FD").map_or_else(|| PathBuf::from("/usr/share/ovmf/OVMF.fd"), PathBuf::from);
    if path.exists() {
        return Some(path);
    }
    if std::env::var_os("CI").is_some() {
        panic!("{} is missing; `./run.sh setup` installs Debian's ovmf", path.display());
    }
    eprintln!("skipping: {} is missing; `./run.sh setup` installs Debian's ovmf", path.display());
    None
}

/// Boots `ovmf` natively (QEMU's `-bios`, the same q35 under TCG, `-cpu` and `memory_mib`
/// as the TD gets) and returns the time from QEMU's start until its console shows `marker`,
/// then kills it. The baseline a TD boot of the same image is compared with.
///
/// # Panics
/// If QEMU cannot start or the marker does not show within `timeout`.
pub fn native_boot_until(qemu: &Qemu, ovmf: &Path, memory_mib: u32, marker: &str, timeout: Duration) -> Duration {
    native_boot_with(qemu, ovmf, memory_mib, None, marker, timeout)
}

/// [`native_boot_until`] with `disk` (if any) as the drive of an NVMe controller at the same
/// address the TD's is (no DOE: nothing to assign natively): the TDVF's boot disk, read by
/// OVMF's NvmExpressDxe with no TD around it.
///
/// # Panics
/// As [`native_boot_until`], and if the disk image cannot be written.
pub fn native_boot_with(
    qemu: &Qemu,
    ovmf: &Path,
    memory_mib: u32,
    disk: Option<&[u8]>,
    marker: &str,
    timeout: Duration,
) -> Duration {
    let dir = target_dir().join("e2e").join("ovmf-native");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("run folder");
    let console = dir.join("serial.log");
    let mut cmd = Command::new(&qemu.0);
    cmd.args(["-M", "q35", "-accel", "tcg", "-nodefaults", "-display", "none", "-no-reboot"])
        .args(["-cpu", "max,phys-bits=48"])
        .arg("-m")
        .arg(format!("{memory_mib}M"))
        .arg("-bios")
        .arg(ovmf)
        .arg("-serial")
        .arg(format!("file:{}", console.display()));
    if let Some(bytes) = disk {
        let path = dir.join("disk.img");
        std::fs::write(&path, bytes).expect("disk image");
        cmd.arg("-drive").arg(format!("file={},if=none,id=disk,format=raw", path.display()));
        cmd.arg("-device").arg(format!("nvme,serial=seamless,addr={NVME_ADDR},drive=disk"));
    }
    let start = Instant::now();
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("start QEMU");
    loop {
        let seen = std::fs::read(&console).is_ok_and(|c| c.windows(marker.len()).any(|w| w == marker.as_bytes()));
        if seen {
            let took = start.elapsed();
            let _ = child.kill();
            let _ = child.wait();
            return took;
        }
        if start.elapsed() > timeout || child.try_wait().ok().flatten().is_some() {
            let _ = child.kill();
            let _ = child.wait();
            panic!("native OVMF did not show {marker:?} within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
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

/// A host tool of the workspace (`attest` with its `std` feature, or the firmware crate's host
/// build with `guest-image` and `artifacts`), built with cargo on first use.
///
/// # Panics
/// If the build fails.
pub fn tool(name: &str) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let path = target_dir().join("debug").join(name);
    if !built.iter().any(|b| b == name) {
        let args: &[&str] = match name {
            "attest" => &["build", "-q", "-p", "attest", "--features", "std", "--bin", "attest"],
            "firmware" => &["build", "-q", "-p", "firmware"],
            _ => panic!("no tool {name}"),
        };
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(args)
            .current_dir(workspace())
            .status()
            .expect("run cargo");
        assert!(status.success(), "building {name} failed");
        built.push(name.to_string());
    }
    path
}

/// Runs a tool; returns its exit status and standard output.
///
/// # Panics
/// If it cannot start.
pub fn run_tool(name: &str, args: &[&std::ffi::OsStr]) -> (i32, String, String) {
    let out = Command::new(tool(name)).args(args).output().expect("run tool");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Where the firmware places BAR0 in these tests (the run configuration's `nvme_bar0`).
pub const BAR0: u64 = 0xC000_0000;
/// The firmware text whose SHA-384 is the device's measurement 1.
pub const FW_TEXT: &str = "seamless e2e device firmware 1.0";
/// The device's measurement 2, a raw value.
pub const CONFIG_TEXT: &str = "queues=4";

fn sha384(bytes: &[u8]) -> [u8; 48] {
    let mut h = <sha2::Sha384 as sha2::Digest>::new();
    sha2::Digest::update(&mut h, bytes);
    sha2::Digest::finalize(h).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The device the assignment tests use: measurements from [`FW_TEXT`] and [`CONFIG_TEXT`], one
/// TDI on 00:03.0 whose report lists BAR0's four pages at [`BAR0`] (and, with `second_range`, a
/// second range after it, so that `overlapping-ranges` has something to overlap).
pub fn assign_device(second_range: bool) -> Config {
    let mut mmio = vec![tdisp_device::MmioRange { first_page: BAR0 >> 12, pages: 4, attributes: 0, range_id: 0 }];
    if second_range {
        mmio.push(tdisp_device::MmioRange { first_page: (BAR0 >> 12) + 0x10, pages: 1, attributes: 0, range_id: 1 });
    }
    Config {
        measurements: vec![
            tdisp_device::MeasurementBlock { index: 1, value_type: 0x01, value: sha384(FW_TEXT.as_bytes()).to_vec() },
            tdisp_device::MeasurementBlock { index: 2, value_type: 0x83, value: CONFIG_TEXT.as_bytes().to_vec() },
        ],
        interfaces: vec![tdisp_device::InterfaceConfig {
            function_id: tdisp_device::config::DEFAULT_FUNCTION_ID,
            interface_info: 0x2,
            mmio,
            device_info: b"seamless e2e".to_vec(),
        }],
        ..Config::default()
    }
}

/// A provisioned platform (`attest provision`) in `dir`.
///
/// # Panics
/// If provisioning fails.
pub fn provision(dir: &Path) -> Vec<u8> {
    let _ = std::fs::remove_dir_all(dir);
    let m = mrseam();
    let args = ["provision".as_ref(), "--out".as_ref(), dir.as_os_str(), "--mrseam".as_ref(), m.as_ref()];
    let (status, _, err) = run_tool("attest", &args);
    assert_eq!(status, 0, "attest provision: {err}");
    std::fs::read(dir.join("platform-secret.bin")).expect("platform secret")
}

/// MRSEAM of the image these tests boot, as `firmware mrseam FILE` recomputes it from the file.
///
/// # Panics
/// If the tool fails.
pub fn mrseam() -> String {
    let (status, out, err) = run_tool("firmware", &["mrseam".as_ref(), firmware().as_os_str()]);
    assert_eq!(status, 0, "firmware mrseam: {err}");
    out.trim().to_string()
}

/// The run configuration of an assignment run with `nonce` and a DOE timeout of
/// `doe_timeout_ms` (PCIe's 1000 unless a test waits for a timeout on purpose: parallel QEMUs on
/// a loaded machine must not time out by accident).
pub fn assign_config(mode: &str, nonce: &[u8; 64], doe_timeout_ms: u32) -> String {
    format!("mode={mode}\nnvme_bar0={BAR0:#x}\nnonce={}\nlog_calls=off\ndoe_timeout_ms={doe_timeout_ms}\n", hex(nonce))
}

/// The verifier's policy for [`assign_device`], derived from the device's config, the device's
/// vendor root and `attest measure` of the guest image: never from the report.
pub fn policy(mrtd: &str, vendor_root_der: &[u8]) -> String {
    format!(
        r#"version = 1
[tsm]
min_svn = 1
mrseam = "{mrseam}"
[td]
mrtd = "{mrtd}"
attributes = {{ mask = "0xffffffffffffffff", value = "0x0" }}
[[device]]
function_id = "0000:00:03.0"
required_lock_flags = ["NO_FW_UPDATE"]
min_spdm_version = "1.3"
vendor_root_sha384 = "{root}"
[device.algorithms]
base_asym = "0x80"
base_hash = "0x2"
measurement_hash = "0x4"
dhe = "0x10"
aead = "0x2"
key_schedule = "0x1"
measurement_spec = "0x1"
[[device.measurement]]
index = 1
digests = ["{m1}"]
[[device.measurement]]
index = 2
raw = ["{m2}"]
[device.interface_report]
interface_info = {{ mask = "0xffff", value = "0x2" }}
[[device.interface_report.mmio_range]]
pages = 4
attributes = "0x0"
range_id = 0
"#,
        mrseam = mrseam(),
        root = hex(&sha384(vendor_root_der)),
        m1 = hex(&sha384(FW_TEXT.as_bytes())),
        m2 = hex(CONFIG_TEXT.as_bytes()),
    )
}

/// What `attest verify --json` said about a run's artifacts.
#[derive(Clone, Debug)]
pub struct Verdict {
    /// Its exit status (0 verified, 1 rejected, 2 unusable input).
    pub status: i32,
    /// The JSON.
    pub json: String,
}

impl Verdict {
    /// The ids of the checks that failed.
    ///
    /// # Panics
    /// If the output is not the verifier's JSON.
    pub fn failed(&self) -> Vec<String> {
        let v: serde_json::Value = serde_json::from_str(&self.json).expect("verify --json output");
        let checks = v["checks"].as_array().expect("checks");
        checks.iter().filter(|c| c["status"] == "fail").filter_map(|c| c["id"].as_str().map(str::to_string)).collect()
    }
}

/// Decodes the run's COM3 artifacts (`firmware artifacts`) into its folder and returns the bytes
/// of the one named `name`, if the run sent it.
///
/// # Panics
/// If the stream does not decode or the tool cannot run.
pub fn artifact(o: &Outcome, name: &str) -> Option<Vec<u8>> {
    let stream = o.dir.join("artifacts.bin");
    let (status, _, err) = run_tool("firmware", &["artifacts".as_ref(), stream.as_os_str(), o.dir.as_os_str()]);
    assert_eq!(status, 0, "firmware artifacts: {err}");
    std::fs::read(o.dir.join(name)).ok()
}

/// Decodes the run's COM3 artifacts (`firmware artifacts`) into its folder, writes the policy,
/// and runs `attest verify` on them.
///
/// # Panics
/// If the artifacts do not decode or the tools cannot run.
pub fn verify(o: &Outcome, platform: &Path, vendor_root_der: &[u8], nonce: &[u8; 64]) -> Verdict {
    // The image the run loaded (Boot::command wrote it there), measured by the verifier's tool.
    verify_image(o, &o.dir.join("guest.img"), platform, vendor_root_der, nonce, &[])
}

/// [`verify`] of a run whose TD was built from `image` (the guest image, or a TDVF), with
/// `extra` arguments for `attest verify`.
///
/// # Panics
/// As [`verify`].
pub fn verify_image(
    o: &Outcome,
    image: &Path,
    platform: &Path,
    vendor_root_der: &[u8],
    nonce: &[u8; 64],
    extra: &[&std::ffi::OsStr],
) -> Verdict {
    let stream = o.dir.join("artifacts.bin");
    let (status, _, err) = run_tool("firmware", &["artifacts".as_ref(), stream.as_os_str(), o.dir.as_os_str()]);
    assert_eq!(status, 0, "firmware artifacts: {err}");
    let (status, mrtd, err) = run_tool("attest", &["measure".as_ref(), image.as_os_str()]);
    assert_eq!(status, 0, "attest measure: {err}");
    let policy_path = o.dir.join("policy.toml");
    std::fs::write(&policy_path, policy(mrtd.trim(), vendor_root_der)).expect("policy");
    let (report, evidence) = (o.dir.join("report.bin"), o.dir.join("evidence.bin"));
    let (root, ak) = (platform.join("root.pem"), platform.join("tsm-ak.pem"));
    let nonce = hex(nonce);
    let args: Vec<&std::ffi::OsStr> = vec![
        "verify".as_ref(),
        "--report".as_ref(),
        report.as_os_str(),
        "--evidence".as_ref(),
        evidence.as_os_str(),
        "--policy".as_ref(),
        policy_path.as_os_str(),
        "--root".as_ref(),
        root.as_os_str(),
        "--ak-cert".as_ref(),
        ak.as_os_str(),
        "--nonce".as_ref(),
        nonce.as_ref(),
        "--json".as_ref(),
    ];
    let args: Vec<&std::ffi::OsStr> = args.into_iter().chain(extra.iter().copied()).collect();
    let (status, json, err) = run_tool("attest", &args);
    assert!(status == 0 || status == 1, "attest verify: exit {status}: {err}");
    Verdict { status, json }
}

/// `attest verify --snp` of the run's SNP-format export against the platform's emulated AMD
/// chain, bound to its native report and `nonce` (after [`verify`] decoded the artifacts).
///
/// # Panics
/// If the tool cannot run or calls its input unusable.
pub fn verify_snp(o: &Outcome, platform: &Path, nonce: &[u8; 64]) -> Verdict {
    let (snp, report) = (o.dir.join("report-snp.bin"), o.dir.join("report.bin"));
    let nonce = hex(nonce);
    let args: Vec<&std::ffi::OsStr> = vec![
        "verify".as_ref(),
        "--snp".as_ref(),
        snp.as_os_str(),
        "--certs".as_ref(),
        platform.as_os_str(),
        "--report".as_ref(),
        report.as_os_str(),
        "--nonce".as_ref(),
        nonce.as_ref(),
        "--json".as_ref(),
    ];
    let (status, json, err) = run_tool("attest", &args);
    assert!(status == 0 || status == 1, "attest verify --snp: exit {status}: {err}");
    Verdict { status, json }
}

/// The demo drive's bytes (`attest::disk`), as `firmware disk-image` writes them.
pub fn disk_image() -> Vec<u8> {
    let mut out = Vec::new();
    let mut b = [0u8; attest::disk::BLOCK_BYTES];
    for lba in 0..attest::disk::DEMO_BLOCKS {
        attest::disk::block(lba, &mut b);
        out.extend_from_slice(&b);
    }
    out
}
