//! `tdisp-device`: the emulated TDISP device behind QEMU's `spdm_port` (see `--help`).

use std::net::{Ipv4Addr, TcpListener};
use std::process::ExitCode;

use tdisp_device::{server, Config, Device};

const HELP: &str = "\
tdisp-device: an emulated TDISP device (SPDM 1.2/1.3 responder with secured sessions, TDISP 1.0
and IDE_KM) speaking QEMU's spdm_port socket protocol with the PCI_DOE transport.

usage: tdisp-device [options]

options:
  --port N            TCP port on 127.0.0.1 (default 2323, spdm-emu's); 0 picks a free port.
                      The device prints `listening on 127.0.0.1:<port>` once it accepts.
  --once              exit after the first connection ends (default: keep serving until SHUTDOWN)
  --root-out PATH     write the root certificate (DER) there, for a verifier to trust
  --seed HEX          64 hex digits seeding the device's random generator (keys, certificates,
                      nonces); default: drawn from the OS
  --spdm-version V    offer only SPDM version V (1.2 or 1.3); default: both
  --function-id ID    the TDI's INTERFACE_ID.FUNCTION_ID (requester ID; hex with 0x, or decimal);
                      default 0x18 (00:03.0)
  -h, --help          this text

Run it before QEMU, which connects at start-up:
  tdisp-device --port 2323 &
  qemu-system-x86_64 -M q35 ... -drive file=img,if=none,id=nvme0 \\
      -device nvme,drive=nvme0,serial=deadbeef,spdm_port=2323
";

struct Options {
    port: u16,
    once: bool,
    root_out: Option<String>,
    config: Config,
}

fn parse_u32(s: &str) -> Option<u32> {
    match s.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

fn parse_seed(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut seed = [0u8; 32];
    for (i, b) in seed.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(seed)
}

fn parse(args: &[String]) -> Result<Option<Options>, String> {
    let mut o = Options { port: 2323, once: false, root_out: None, config: Config::default() };
    let mut seeded = false;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().cloned().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "--port" => o.port = value("--port")?.parse().map_err(|_| "--port takes 0..65535".to_string())?,
            "--once" => o.once = true,
            "--root-out" => o.root_out = Some(value("--root-out")?),
            "--seed" => {
                o.config.seed = parse_seed(&value("--seed")?).ok_or("--seed takes 64 hex digits")?;
                seeded = true;
            }
            "--spdm-version" => {
                o.config.spdm_versions = match value("--spdm-version")?.as_str() {
                    "1.2" => vec![0x12],
                    "1.3" => vec![0x13],
                    other => return Err(format!("unsupported SPDM version {other}")),
                }
            }
            "--function-id" => {
                let id = parse_u32(&value("--function-id")?).ok_or("--function-id takes a number")?;
                for iface in &mut o.config.interfaces {
                    iface.function_id = id;
                }
            }
            other => return Err(format!("unknown option {other} (see --help)")),
        }
    }
    if !seeded {
        getrandom::fill(&mut o.config.seed).map_err(|e| format!("no OS randomness: {e}"))?;
    }
    Ok(Some(o))
}

fn run(o: Options) -> Result<(), String> {
    let mut device = Device::new(o.config).map_err(|e| e.to_string())?;
    if let Some(path) = &o.root_out {
        std::fs::write(path, &device.identity().root_der).map_err(|e| format!("{path}: {e}"))?;
    }
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, o.port)).map_err(|e| format!("bind: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    println!("listening on {addr}");
    server::serve(&listener, &mut device, o.once).map_err(|e| format!("accept: {e}"))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match parse(&args) {
        Ok(None) => {
            print!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Ok(Some(o)) => run(o),
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tdisp-device: {e}");
            ExitCode::FAILURE
        }
    }
}
