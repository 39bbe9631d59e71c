//! Runs every in-process attack case (`seamless_fuzz_tools::attacks`) and prints
//! `bench attack_cases_total N count` and `bench attack_cases_rejected N count` (per side too).
//! Exits non-zero when a case was not rejected, naming it and why.

use seamless_fuzz_tools::attacks::{run_all, Side};

fn main() {
    let verbose = std::env::args().any(|a| a == "--verbose" || a == "-v");
    let results = run_all();
    let mut failed = 0;
    for r in &results {
        match &r.failure {
            None if verbose => println!("rejected  {:?}  {}", r.side, r.name),
            None => {}
            Some(why) => {
                failed += 1;
                println!("NOT REJECTED  {:?}  {}: {why}", r.side, r.name);
            }
        }
    }
    let count = |side: Option<Side>, rejected: bool| {
        results.iter().filter(|r| side.is_none_or(|s| r.side == s) && (!rejected || r.failure.is_none())).count()
    };
    println!("bench attack_cases_total {} count", count(None, false));
    println!("bench attack_cases_rejected {} count", count(None, true));
    println!("bench attack_cases_host_total {} count", count(Some(Side::Host), false));
    println!("bench attack_cases_host_rejected {} count", count(Some(Side::Host), true));
    println!("bench attack_cases_device_total {} count", count(Some(Side::Device), false));
    println!("bench attack_cases_device_rejected {} count", count(Some(Side::Device), true));
    if failed > 0 {
        std::process::exit(1);
    }
}
