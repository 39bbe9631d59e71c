//! `tdisp-device`: the emulated TDISP device behind QEMU's `spdm_port` (see `--help`).

use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::process::ExitCode;

use tdisp_device::rng::Rng;
use tdisp_device::{server, Config, Device, Identity};

const HELP: &str = "\
tdisp-device: an emulated TDISP device (SPDM 1.2/1.3 responder with secured sessions and
KEY_UPDATE, TDISP 1.0 and IDE_KM) speaking QEMU's spdm_port socket protocol with the PCI_DOE
transport. It binds 127.0.0.1 only.

usage: tdisp-device [options]

listening:
  --port N              TCP port on 127.0.0.1 (default 2323, spdm-emu's); 0 picks a free port.
                        The device prints `listening on 127.0.0.1:<port>` once it accepts.
  --once                exit after the first connection ends (default: serve one connection
                        after another, keeping the device's state, until QEMU's SHUTDOWN)

what the device is:
  --config FILE         a TOML file with the SPDM versions, the measurement blocks (index, type,
                        digest or raw value) and the TDIs with their MMIO ranges; see
                        tests/device/README.md. Applied first; the options below override it.
  --spdm-version V      offer only SPDM version V (1.2 or 1.3); default: both
  --function-id ID      every TDI's INTERFACE_ID.FUNCTION_ID (requester ID; hex with 0x, or
                        decimal); default 0x18 (00:03.0)
  --seed HEX            64 hex digits seeding the device's random generator (nonces, ephemeral
                        keys, generated certificates); default: drawn from the OS
  --clear-measurements-only
                        answer GET_MEASUREMENTS inside a session with ERROR UnsupportedRequest
                        (a device that measures only in the clear); default: in both places

identity (default: a root, an intermediate CA and a leaf generated from the seed at each start):
  --state-dir DIR       keep the identity in DIR: generated at the first start and written as
                        root.der, intermediate.der, leaf.der, leaf.key (PKCS#8); read back at
                        every later start, whatever the seed
  --root FILE           the root certificate (DER) ...
  --intermediate FILE   ... an intermediate CA certificate (DER; repeat, root side first) ...
  --leaf FILE           ... the leaf certificate (DER) ...
  --leaf-key FILE       ... and the leaf's private key (PKCS#8 or SEC1 DER): use these files
                        instead of generating; the chain must chain and the key be the leaf's
  --root-out PATH       write the root certificate (DER) there, for a verifier to trust
  --suite p384|p256     the suite of a generated identity: p384 (default: ECDSA P-384 with
                        SHA-384, secp384r1, AES-256-GCM) or p256 (ECDSA P-256 with SHA-256,
                        secp256r1, AES-128-GCM); with certificate files, the leaf key's curve
                        decides
  --long-chain          a generated P-384 identity with five intermediate CAs whose names are
                        padded: a chain over 4 KiB, longer than a 4 KiB DataTransferSize, which
                        a requester that takes chunks gets through CHUNK_GET

fault switches, for tests (repeat --fault for several):
  --fault SPEC          misbehave on purpose; SPEC is one of
                          bad-signature=challenge-auth|measurements|key-exchange-rsp
                          wrong-measurement=INDEX
                          truncate=REPLY  overlong-length=REPLY  drop-response=REPLY
                          wrong-session-id  overlapping-ranges  ignore-reporting-offset
                          error-after-lock  refuse-start  broken-chain  impostor-leaf  late=MS
                          corrupt=REPLY  end-session-on=REPLY
                          busy=REPLY[*N]  not-ready=REPLY[*N]
                        where REPLY is one of
                          version capabilities algorithms digests certificate
                          challenge-auth measurements key-exchange-rsp finish-rsp
                          key-update-ack end-session-ack heartbeat-ack idekm tdisp-version
                          tdisp-capabilities tdisp-lock tdisp-report tdisp-state
                          tdisp-start tdisp-stop
                        bad-signature signs the right transcript and flips one bit;
                        wrong-measurement flips one bit of that block's value and signs it;
                        truncate cuts a quarter (>= 4 bytes) off, framed or sealed correctly;
                        overlong-length makes the reply's length field larger than the message;
                        drop-response answers nothing (an empty NORMAL frame);
                        wrong-session-id seals secured replies under another session id;
                        overlapping-ranges makes the interface report's 2nd range overlap the 1st;
                        ignore-reporting-offset reports the ranges without the
                        MMIO_REPORTING_OFFSET LOCK asked for (as spdm-emu's sample device does);
                        error-after-lock moves the TDI to ERROR right after LOCK_INTERFACE;
                        refuse-start answers START_INTERFACE with TDISP_ERROR UNSPECIFIED;
                        broken-chain signs the certificate after the root with a stray key;
                        impostor-leaf extends the chain past the leaf with a certificate the
                        leaf's key signs, and signs with that certificate's key;
                        late waits MS milliseconds before sending each answer;
                        corrupt flips one bit of that reply after framing and sealing;
                        end-session-on forgets the session when the request of that reply
                        arrives under it, and answers nothing;
                        busy answers the next N requests of that reply with ERROR Busy
                        without taking them; not-ready takes them and answers ERROR
                        ResponseNotReady, and RESPOND_IF_READY gets the reply (or
                        ResponseNotReady again while counts are left)

  -h, --help            this text

Run it before QEMU, which connects at start-up:
  tdisp-device --port 2323 --state-dir /var/tmp/tdisp-device &
  qemu-system-x86_64 -M q35 ... -drive file=img,if=none,id=nvme0 \\
      -device nvme,drive=nvme0,serial=deadbeef,spdm_port=2323
";

#[derive(Default)]
struct Files {
    root: Option<PathBuf>,
    intermediates: Vec<PathBuf>,
    leaf: Option<PathBuf>,
    key: Option<PathBuf>,
}

struct Options {
    port: u16,
    once: bool,
    root_out: Option<String>,
    state_dir: Option<PathBuf>,
    files: Files,
    config: Config,
    p256: bool,
    long_chain: bool,
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
    // The configuration file first, so every other option overrides it wherever it stands.
    let mut config = Config::default();
    if let Some(i) = args.iter().position(|a| a == "--config") {
        let path = args.get(i + 1).ok_or("--config needs a value")?;
        let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
        config = Config::from_toml(&text).map_err(|e| format!("{path}: {e}"))?;
    }
    let mut o = Options {
        port: 2323,
        once: false,
        root_out: None,
        state_dir: None,
        files: Files::default(),
        config,
        p256: false,
        long_chain: false,
    };
    let mut seeded = false;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().cloned().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "--port" => o.port = value("--port")?.parse().map_err(|_| "--port takes 0..65535".to_string())?,
            "--once" => o.once = true,
            "--config" => {
                value("--config")?;
            }
            "--root-out" => o.root_out = Some(value("--root-out")?),
            "--state-dir" => o.state_dir = Some(value("--state-dir")?.into()),
            "--suite" => {
                o.p256 = match value("--suite")?.as_str() {
                    "p384" => false,
                    "p256" => true,
                    other => return Err(format!("unknown suite {other} (p384 or p256)")),
                }
            }
            "--root" => o.files.root = Some(value("--root")?.into()),
            "--intermediate" => o.files.intermediates.push(value("--intermediate")?.into()),
            "--leaf" => o.files.leaf = Some(value("--leaf")?.into()),
            "--leaf-key" => o.files.key = Some(value("--leaf-key")?.into()),
            "--fault" => o.config.faults.apply_spec(&value("--fault")?)?,
            "--long-chain" => o.long_chain = true,
            "--clear-measurements-only" => {
                o.config.session_measurements_error = Some(tdisp_device::spdm::error_code::UNSUPPORTED_REQUEST)
            }
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
    let f = &o.files;
    let any_file = f.root.is_some() || f.leaf.is_some() || f.key.is_some() || !f.intermediates.is_empty();
    if any_file && (f.root.is_none() || f.leaf.is_none() || f.key.is_none()) {
        return Err("--root, --leaf and --leaf-key go together".into());
    }
    if any_file && o.state_dir.is_some() {
        return Err("--state-dir and certificate files exclude each other".into());
    }
    if o.long_chain && (o.p256 || any_file || o.state_dir.is_some()) {
        return Err("--long-chain generates a P-384 identity: no --suite p256, certificate files or --state-dir".into());
    }
    if !seeded {
        getrandom::fill(&mut o.config.seed).map_err(|e| format!("no OS randomness: {e}"))?;
    }
    Ok(Some(o))
}

fn identity(o: &Options, rng: &mut Rng) -> Result<Identity, String> {
    let f = &o.files;
    let result = match (&f.root, &f.leaf, &f.key, &o.state_dir) {
        (Some(root), Some(leaf), Some(key), _) => {
            let inter: Vec<&std::path::Path> = f.intermediates.iter().map(PathBuf::as_path).collect();
            Identity::from_files(root, &inter, leaf, key)
        }
        (_, _, _, Some(dir)) if o.p256 => Identity::from_state_dir_with(dir, rng, Identity::generate_p256),
        (_, _, _, Some(dir)) => Identity::from_state_dir(dir, rng),
        _ if o.p256 => Identity::generate_p256(rng),
        _ if o.long_chain => Identity::generate_chain(rng, 5, 400),
        _ => Identity::generate(rng),
    };
    result.map_err(|e| e.to_string())
}

fn run(o: Options) -> Result<(), String> {
    let mut rng = Rng::new(o.config.seed);
    let identity = identity(&o, &mut rng)?;
    let mut device = Device::with_identity(o.config, identity, rng).map_err(|e| e.to_string())?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_names_every_fault_and_reply() {
        for (name, _) in tdisp_device::faults::REPLY_NAMES {
            assert!(HELP.contains(&format!(" {name}")), "{name}");
        }
        for spec in tdisp_device::faults::SPECS.split_whitespace() {
            let name = spec.split('=').next().unwrap_or(spec);
            assert!(HELP.contains(name), "{name}");
        }
    }

    #[test]
    fn options_parse_and_conflicts_are_refused() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let o = parse(&args(&["--port", "0", "--fault", "refuse-start", "--seed", &"ab".repeat(32)])).unwrap().unwrap();
        assert!(o.config.faults.refuse_start);
        assert_eq!((o.port, o.config.seed), (0, [0xAB; 32]));
        assert!(parse(&args(&["--help"])).unwrap().is_none());
        assert!(parse(&args(&["--root", "r.der"])).is_err(), "files go together");
        assert!(parse(&args(&["--root", "r", "--leaf", "l", "--leaf-key", "k", "--state-dir", "d"])).is_err());
        assert!(parse(&args(&["--fault", "truncate=x"])).is_err());
        assert!(parse(&args(&["--config"])).is_err());
        assert!(parse(&args(&["--long-chain"])).unwrap().unwrap().long_chain);
        assert!(parse(&args(&["--long-chain", "--suite", "p256"])).is_err());
        let o = parse(&args(&["--clear-measurements-only"])).unwrap().unwrap();
        assert_eq!(o.config.session_measurements_error, Some(0x07));
    }
}
