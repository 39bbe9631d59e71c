//! `attest`: the host-side tool of seamless attestation. See `attest help` and
//! `docs/attestation.md`.
//!
//! Exit status: 0 verified (or the command did what it was asked), 1 rejected (a check failed),
//! 2 unusable input (a file that is missing, malformed or of the wrong kind; a bad option). It
//! never panics on input; a panic anyway (a bug) is caught and reported as exit 2.

/// Appends a formatted line to the output buffer ([`out::flush`] writes it).
macro_rules! outln {
    () => { $crate::out::push(String::from("\n")) };
    ($($arg:tt)*) => { $crate::out::push(format!("{}\n", format_args!($($arg)*))) };
}

/// Appends formatted text to the output buffer.
macro_rules! out {
    ($($arg:tt)*) => { $crate::out::push(format!($($arg)*)) };
}

mod args;
mod out;
mod show;
mod verify;

use std::process::ExitCode;

use attest::eventlog::EventLog;
use attest::evidence::{self, Evidence};
use attest::host::{hex, policy, provision};
use attest::image;
use attest::report::Report;
use attest::tdvf;

use args::Args;

const USAGE: &str = "\
usage: attest <command> [options]

commands:
  provision --out DIR [--mrseam HEX] [--tsm-svn N] [--force]
      create the emulated platform: vendor root, TSM attestation-key certificate, ARK, ASK,
      VCEK, and the platform secret blob the firmware receives at boot
  verify --report R --evidence E --policy P --root CERT [--ak-cert CERT] (--nonce HEX | --no-nonce)
         [--event-log L] [--json]
      check a native report and its evidence bundle in layers; every check is listed. The nonce
      is the 64 bytes the TD was given; --no-nonce skips freshness, and the verdict says so.
      --event-log: the TD's CC event log (TCG2, SHA-384), replayed against the report's RTMRs,
      its SPDM device events checked against the report and the bundle
  verify --snp S --certs DIR (--report R --nonce HEX | [--report R] --no-nonce) [--json]
      check an SNP-format export against an ARK/ASK/VCEK directory: chain, signature, TCB, chip
      id, and with --report its binding to that native report, whose nonce is compared whole.
      No policy is applied; the verdict names what was not checked
  show [--report R] [--evidence E] [--snp S] [--event-log L] [--json]
      dump a report, a bundle, an SNP export and/or a CC event log (its events, the SPDM
      device events read, the registers it replays to)
  policy init --report R [--evidence E] [--out FILE]
      write a reference policy (TOML) from a known-good report and bundle, for review
  measure IMAGE [--flat GPA | --tdvf] [--json]
      recompute the MRTD of a TD built from a guest image, as the TSM measures it: a seamless
      image, a flat binary loaded at GPA, or an OVMF image with TDVF metadata (detected by its
      GUIDed table, or forced with --tdvf), loaded as a TDX VMM loads it
  help
      this text

exit status: 0 verified / done, 1 rejected, 2 unusable input";

/// How a command ended.
#[derive(Debug)]
pub enum Outcome {
    /// Done, or verified: exit 0.
    Done,
    /// A check failed: exit 1.
    Rejected,
}

/// Unusable input: the message, for exit 2.
pub type Unusable = String;

/// Reads a file, naming it in the error.
pub fn read(path: &str, what: &str) -> Result<Vec<u8>, Unusable> {
    std::fs::read(path).map_err(|e| format!("{what} {path}: {e}"))
}

/// Reads and parses a native report.
pub fn read_report(path: &str) -> Result<Report, Unusable> {
    let bytes = read(path, "report")?;
    Report::read_from(&bytes).map_err(|e| format!("report {path}: {e}"))
}

/// Reads and checks an evidence bundle.
pub fn read_evidence(path: &str) -> Result<Vec<u8>, Unusable> {
    let bytes = read(path, "evidence")?;
    Evidence::parse(&bytes).map_err(|e| format!("evidence {path}: {e}"))?;
    Ok(bytes)
}

/// Reads and checks a CC event log.
pub fn read_event_log(path: &str) -> Result<Vec<u8>, Unusable> {
    let bytes = read(path, "event log")?;
    EventLog::parse(&bytes).map_err(|e| format!("event log {path}: {e}"))?;
    Ok(bytes)
}

/// A 64-byte nonce from hex.
pub fn parse_nonce(text: &str) -> Result<[u8; 64], Unusable> {
    hex::decode_array::<64>(text).map_err(|e| format!("--nonce: {e}"))
}

fn cmd_provision(mut a: Args) -> Result<Outcome, Unusable> {
    let out = a.required("--out")?;
    let mrseam = match a.value("--mrseam")? {
        Some(h) => hex::decode_array::<48>(&h).map_err(|e| format!("--mrseam: {e}"))?,
        None => [0; 48],
    };
    let tsm_svn = match a.value("--tsm-svn")? {
        Some(v) => v.parse::<u16>().map_err(|_| format!("--tsm-svn: {v:?} is not a number 0..=65535"))?,
        None => 0,
    };
    let force = a.flag("--force");
    a.finish()?;
    let s = provision::provision(std::path::Path::new(&out), &provision::Params { mrseam, tsm_svn, force })
        .map_err(|e| format!("provision: {e}"))?;
    outln!("provisioned an emulated platform in {out}");
    outln!("  keys derived for MRSEAM {} and TSM SVN {tsm_svn}", hex::encode(&mrseam));
    for f in &s.files {
        outln!("  wrote {}", f.display());
    }
    outln!("  {}", provision::describe(&s));
    outln!("  the private keys of the root, ARK and ASK were not kept; platform-secret.bin is the only secret");
    Ok(Outcome::Done)
}

fn cmd_measure(mut a: Args) -> Result<Outcome, Unusable> {
    let flat = a.value("--flat")?;
    let force_tdvf = a.flag("--tdvf");
    let json = a.flag("--json");
    let path = a.positional("IMAGE")?;
    a.finish()?;
    if flat.is_some() && force_tdvf {
        return Err("--flat and --tdvf are two different layouts: give one".into());
    }
    let bytes = read(&path, "image")?;
    // A seamless image starts with its magic; an OVMF image ends with its GUIDed table.
    let is_tdvf = force_tdvf || (flat.is_none() && !bytes.starts_with(&image::MAGIC) && tdvf::looks_like_ovmf(&bytes));
    let (mrtd, pages, measured, format) = match flat {
        Some(gpa) => {
            let base = parse_u64(&gpa).map_err(|e| format!("--flat: {e}"))?;
            let m = image::flat_mrtd(base, &bytes).map_err(|e| format!("image {path}: {e}"))?;
            let pages = bytes.len().div_ceil(attest::mrtd::PAGE_BYTES) as u64;
            (m, pages, pages, "flat")
        }
        None if is_tdvf => {
            let t = tdvf::Tdvf::parse(&bytes).map_err(|e| format!("TDVF image {path}: {e}"))?;
            let (pages, measured) = t.page_counts();
            if !json {
                eprintln!("TDVF descriptor at file offset {:#x}; sections in load order:", t.descriptor_offset());
                for s in t.sections() {
                    eprintln!(
                        "  {:<8} GPA {:#010x} size {:#08x}  file {:#08x}+{:#08x}  {}",
                        s.ty.name(),
                        s.gpa,
                        s.size,
                        s.data_offset,
                        s.raw_size,
                        if s.measured() { "PAGE.ADD + MR.EXTEND" } else { "PAGE.ADD" }
                    );
                }
            }
            (t.mrtd(), pages, measured, "tdvf")
        }
        None => {
            let img = image::Image::parse(&bytes).map_err(|e| format!("image {path}: {e}"))?;
            let pages = img.regions().map(|r| u64::from(r.pages)).sum();
            let measured = img.regions().filter(|r| r.measured).map(|r| u64::from(r.pages)).sum();
            (img.mrtd(), pages, measured, "seamless")
        }
    };
    if json {
        let v = serde_json::json!({
            "image": path, "format": format, "pages": pages, "measured_pages": measured, "mrtd": hex::encode(&mrtd)
        });
        outln!("{v:#}");
    } else {
        outln!("{}", hex::encode(&mrtd));
        eprintln!(
            "MRTD of {path} ({format} layout): {pages} pages added, {measured} measured, as the TSM measures TDH.MEM.PAGE.ADD and TDH.MR.EXTEND"
        );
    }
    Ok(Outcome::Done)
}

/// A u64 from decimal or `0x` hex.
pub fn parse_u64(text: &str) -> Result<u64, String> {
    let t = text.trim();
    match t.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16),
        None => t.parse(),
    }
    .map_err(|_| format!("{t:?} is not a number"))
}

fn cmd_policy(mut a: Args) -> Result<Outcome, Unusable> {
    let sub = a.positional("SUBCOMMAND")?;
    if sub != "init" {
        return Err(format!("policy: unknown subcommand {sub:?} (known: init)"));
    }
    let report_path = a.required("--report")?;
    let evidence_path = a.value("--evidence")?;
    let out = a.value("--out")?;
    a.finish()?;
    let report = read_report(&report_path)?;
    let mut source = format!("report {report_path}");
    let bytes = evidence_path.as_deref().map(read_evidence).transpose()?;
    let ev = match (&bytes, &evidence_path) {
        (Some(b), Some(e)) => {
            let ev = Evidence::parse(b).map_err(|err| format!("evidence {e}: {err}"))?;
            if let Err(err) = evidence::binds(&report, &ev) {
                eprintln!(
                    "attest: the bundle does not bind to the report ({err}); refusing to derive a policy from it"
                );
                return Ok(Outcome::Rejected);
            }
            source.push_str(&format!(" and evidence {e} (bound by its digests)"));
            Some(ev)
        }
        _ => {
            if !report.devices().is_empty() {
                eprintln!("attest: note: no --evidence given; the device entries are taken from the report alone");
            }
            None
        }
    };
    let text = policy::reference_policy(&report, ev.as_ref(), &source);
    match out {
        Some(path) => {
            std::fs::write(&path, text).map_err(|e| format!("--out {path}: {e}"))?;
            eprintln!("wrote {path}; review it before use");
        }
        None => out!("{text}"),
    }
    Ok(Outcome::Done)
}

fn run(argv: Vec<String>) -> Result<Outcome, Unusable> {
    let mut a = Args::new(argv);
    let Some(cmd) = a.next_command() else {
        return Err(format!("no command given\n{USAGE}"));
    };
    match cmd.as_str() {
        "provision" => cmd_provision(a),
        "verify" => verify::cmd_verify(a),
        "show" => show::cmd_show(a),
        "policy" => cmd_policy(a),
        "measure" => cmd_measure(a),
        "help" | "-h" | "--help" => {
            outln!("{USAGE}");
            Ok(Outcome::Done)
        }
        other => Err(format!("unknown command {other:?}\n{USAGE}")),
    }
}

fn main() -> ExitCode {
    // A panic is a bug, never a verdict: keep the default message off the terminal and say so.
    std::panic::set_hook(Box::new(|info| {
        eprintln!("attest: internal error (a bug; please report it): {info}");
    }));
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let result = std::panic::catch_unwind(|| run(argv));
    // The output goes out in one write after the verdict is known, so a reader that stops early
    // (`| head`) neither breaks the tool nor changes its exit status.
    out::flush();
    match result {
        Ok(Ok(Outcome::Done)) => ExitCode::SUCCESS,
        Ok(Ok(Outcome::Rejected)) => ExitCode::from(1),
        Ok(Err(msg)) => {
            eprintln!("attest: error: {msg}");
            ExitCode::from(2)
        }
        Err(_) => ExitCode::from(2),
    }
}
