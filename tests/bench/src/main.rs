//! `seamless-bench`: timings of the TSM against a reference, printed as `bench <name> <value>
//! <unit>` lines and written to `target/bench/results.json` (or `$CARGO_TARGET_DIR/bench/`).
//!
//! Run it in release mode: `./run.sh bench` (that is, `cargo run --release -p seamless-bench`).
//!
//! The reference is the `x86_64` crate's `OffsetPageTable::map_to` building ordinary 4-level page
//! tables over the same simulated memory the TSM uses ([`x86_64_map`]); [`sept`] times the TSM's
//! secure-EPT paths against it.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

mod assign;
mod attestation;
mod device;
mod iommu;
mod peers;
mod sept;
mod tdvf;
mod x86_64_map;

/// Collects the figures of one run: each is printed when recorded and all are written as JSON
/// at the end.
#[derive(Debug, Default)]
pub struct Figures {
    entries: Vec<Figure>,
}

#[derive(Debug)]
struct Figure {
    name: String,
    value: f64,
    unit: String,
}

/// `value` as the line and the JSON show it: an integer if it is one, else up to 3 decimals.
fn format_value(value: f64) -> String {
    if !value.is_finite() {
        // JSON has no NaN or infinity.
        return "null".to_owned();
    }
    if value.fract() == 0.0 && value.abs() < 1e15 {
        return format!("{value:.0}");
    }
    let s = format!("{value:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".to_owned()
    } else {
        s.to_owned()
    }
}

/// `s` as a JSON string literal.
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl Figures {
    /// No figures yet.
    pub fn new() -> Figures {
        Figures::default()
    }

    /// Records a figure and prints `bench <name> <value> <unit>`. Recording a name again
    /// replaces its value.
    pub fn record(&mut self, name: &str, value: f64, unit: &str) {
        println!("bench {name} {} {unit}", format_value(value));
        let fig = Figure { name: name.to_owned(), value, unit: unit.to_owned() };
        match self.entries.iter_mut().find(|f| f.name == name) {
            Some(old) => *old = fig,
            None => self.entries.push(fig),
        }
    }

    /// The value recorded under `name`.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.entries.iter().find(|f| f.name == name).map(|f| f.value)
    }

    /// The figures as a JSON object `name -> {"value": number, "unit": string}`, in recording
    /// order.
    pub fn to_json(&self) -> String {
        let mut out = String::from("{\n");
        for (i, f) in self.entries.iter().enumerate() {
            let sep = if i + 1 == self.entries.len() { "" } else { "," };
            let _ = writeln!(
                out,
                "  {}: {{\"value\": {}, \"unit\": {}}}{sep}",
                json_string(&f.name),
                format_value(f.value),
                json_string(&f.unit)
            );
        }
        out.push_str("}\n");
        out
    }

    /// Writes [`Figures::to_json`] to [`results_path`], creating its directory.
    ///
    /// # Errors
    /// Any I/O error from creating the directory or writing the file.
    pub fn write_results(&self) -> std::io::Result<PathBuf> {
        let path = results_path();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&path, self.to_json())?;
        Ok(path)
    }
}

/// `$CARGO_TARGET_DIR/bench/results.json`, or `<workspace>/target/bench/results.json`.
pub fn results_path() -> PathBuf {
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").join("target"),
    };
    target.join("bench").join("results.json")
}

fn main() -> ExitCode {
    if cfg!(debug_assertions) {
        eprintln!("warning: seamless-bench is a debug build; figures are meaningless (use --release)");
    }
    // `seamless-bench [GROUP...]` runs only the named groups (sept, device, assign, iommu, attestation, tdvf); no
    // argument runs them all.
    let groups: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let want = |g: &str| groups.is_empty() || groups.iter().any(|a| a == g);
    let mut figs = Figures::new();
    if want("sept") {
        let x86_64_ns = x86_64_map::run(&mut figs);
        sept::run(&mut figs, x86_64_ns);
    }
    if want("device") {
        device::run(&mut figs);
    }
    if want("assign") {
        assign::run(&mut figs);
    }
    if want("iommu") {
        iommu::run(&mut figs);
    }
    if want("attestation") {
        attestation::run(&mut figs);
    }
    if want("tdvf") {
        tdvf::run(&mut figs);
    }
    // `--peers`: the reference implementations for comparison (they are not in the repository).
    if std::env::args().any(|a| a == "--peers") {
        peers::run(&mut figs);
    }
    match figs.write_results() {
        Ok(path) => {
            eprintln!("wrote {}", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: cannot write {}: {e}", results_path().display());
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_print_as_integers_or_three_decimals() {
        assert_eq!(format_value(42.0), "42");
        assert_eq!(format_value(0.0), "0");
        assert_eq!(format_value(68.12345), "68.123");
        assert_eq!(format_value(2.5), "2.5");
        assert_eq!(format_value(1.0004), "1");
        assert_eq!(format_value(-0.0001), "0");
        assert_eq!(format_value(f64::NAN), "null");
    }

    #[test]
    fn json_is_one_object_with_value_and_unit() {
        let mut f = Figures::new();
        f.record("a_ns", 1.5, "ns");
        f.record("b", 3.0, "x");
        f.record("a_ns", 2.25, "ns");
        assert_eq!(f.get("a_ns"), Some(2.25));
        assert_eq!(
            f.to_json(),
            "{\n  \"a_ns\": {\"value\": 2.25, \"unit\": \"ns\"},\n  \"b\": {\"value\": 3, \"unit\": \"x\"}\n}\n"
        );
        assert_eq!(json_string("q\"\\\n"), "\"q\\\"\\\\\\u000a\"");
    }

    #[test]
    fn results_land_under_bench() {
        assert!(results_path().ends_with("bench/results.json"));
    }
}
