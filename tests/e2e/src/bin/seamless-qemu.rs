//! `seamless-qemu`: boots the firmware in QEMU with the command line the end-to-end tests use
//! ([`seamless_e2e::Boot::command`]), so `./run.sh`, `./run.sh boot` and `tests/e2e` run one
//! QEMU command line, written once.
//!
//! ```text
//! seamless-qemu --out DIR [--config FILE] [--secret FILE] [--guest FILE] [--host ELF] [--ovmf FILE]
//!               [--port N] [--boot-disk] [--memory MIB] [--timeout S] [--keep] [--arg ARG]...
//! ```
//!
//! `--out`: where COM1 (`serial.log`), COM2 (`defmt.bin`) and COM3 (`artifacts.bin`) go;
//! `--config` / `--secret` / `--guest`: `opt/seamless/config`, `opt/seamless/platform-secret`
//! and `opt/seamless/guest` (the TD's image; with `--port` and without `--guest`, the launcher
//! makes `DIR/guest.img` from the guest's ELF) over fw_cfg; `--host`: the host agent's ELF,
//! `opt/seamless/host` (default `SEAMLESS_HOST` or the release build); `--ovmf`: the TDVF mode
//! `ovmf` boots as a TD (`opt/seamless/ovmf`); `--memory`: the machine's RAM, MiB; `--timeout`:
//! how long the run may take, seconds;
//! `--port`: the NVMe device's DOE mailbox reaches the SPDM responder listening on
//! 127.0.0.1:N, and its drive holds the demo's known content, or with `--boot-disk` a FAT volume
//! whose `startup.nsh` OVMF's shell runs (`seamless_e2e::fat`); `--keep`: QEMU's command line also goes to `DIR/qemu.cmd`; `--arg`: one more
//! QEMU argument (repeatable). The firmware image is `SEAMLESS_FIRMWARE` or the release build;
//! QEMU is `$QEMU` or `qemu-system-x86_64`. Exits with QEMU's status (33: the firmware
//! succeeded, 35: it failed), 2 on a usage error, 1 when QEMU cannot run.

use std::path::PathBuf;
use std::process::ExitCode;

use seamless_e2e::{Boot, Qemu};

fn usage(why: &str) -> ExitCode {
    eprintln!("seamless-qemu: {why}");
    eprintln!(
        "usage: seamless-qemu --out DIR [--config FILE] [--secret FILE] [--guest FILE] [--host ELF] [--ovmf FILE] [--port N] [--boot-disk] [--memory MIB] [--timeout S] [--keep] [--arg ARG]..."
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut boot = Boot::default();
    let mut keep = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        let r: Result<(), String> = match a.as_str() {
            "--out" => value("--out").map(|v| boot.dir = Some(PathBuf::from(v))),
            "--config" => value("--config").and_then(|v| {
                std::fs::read_to_string(&v).map(|c| boot.config = Some(c)).map_err(|e| format!("{v}: {e}"))
            }),
            "--secret" => value("--secret")
                .and_then(|v| std::fs::read(&v).map(|s| boot.secret = Some(s)).map_err(|e| format!("{v}: {e}"))),
            "--guest" => value("--guest").map(|v| boot.guest = Some(PathBuf::from(v))),
            "--host" => value("--host").map(|v| boot.host = Some(PathBuf::from(v))),
            "--ovmf" => value("--ovmf").map(|v| boot.ovmf = Some(PathBuf::from(v))),
            "--memory" => value("--memory").and_then(|v| {
                v.parse().map(|m| boot.memory_mib = Some(m)).map_err(|_| format!("--memory {v}: not MiB"))
            }),
            "--timeout" => value("--timeout").and_then(|v| {
                v.parse()
                    .map(|s| boot.timeout = Some(std::time::Duration::from_secs(s)))
                    .map_err(|_| format!("--timeout {v}: not seconds"))
            }),
            "--port" => value("--port").and_then(|v| {
                v.parse().map(|p| boot.spdm_port = Some(p)).map_err(|_| format!("--port {v}: not a port"))
            }),
            "--arg" => value("--arg").map(|v| boot.extra.push(v)),
            "--boot-disk" => {
                boot.boot_disk = true;
                Ok(())
            }
            "--keep" => {
                keep = true;
                Ok(())
            }
            other => Err(format!("unknown option {other}")),
        };
        if let Err(why) = r {
            return usage(&why);
        }
    }
    let Some(dir) = boot.dir.clone() else { return usage("--out is required") };
    let Some(qemu) = Qemu::find() else { return ExitCode::from(1) };
    if keep {
        let cmd = boot.command(&qemu, &dir);
        let line: Vec<String> = std::iter::once(cmd.get_program())
            .chain(cmd.get_args())
            .map(|a| format!("'{}'", a.to_string_lossy().replace('\'', "'\\''")))
            .collect();
        if let Err(e) = std::fs::write(dir.join("qemu.cmd"), line.join(" ")) {
            eprintln!("seamless-qemu: {}: {e}", dir.join("qemu.cmd").display());
        }
    }
    let outcome = boot.run(&qemu, "launch");
    u8::try_from(outcome.status).map_or(ExitCode::FAILURE, ExitCode::from)
}
