//! TDVF figures: `attest measure` of Debian's OVMF.fd (locate and check the metadata, replay
//! 538 PAGE.ADD and 480 pages of MR.EXTEND into SHA-384), and the host's TDVF build of the same
//! file against the TSM over the harness's simulated memory (the same calls, made through the
//! ABI: the TSM copies each page, walks the S-EPT, extends MRTD; then 16 MiB of RAM AUGed at the
//! sizes edk2 accepts with). Best of 3; skipped, saying so, without OVMF.fd.

use std::time::Instant;

use attest::tdvf::Tdvf;
use seamless_harness::driver::{default_params, Machine};
use tsm::td::TdParams;
use tsm_client::host::tdvf::{build, Aug};

use crate::Figures;

const MIB: u64 = 1 << 20;

pub fn run(figs: &mut Figures) {
    let path = std::env::var("OVMF_FD").unwrap_or_else(|_| "/usr/share/ovmf/OVMF.fd".into());
    let Ok(ovmf) = std::fs::read(&path) else {
        eprintln!("note: the tdvf figures are left out: {path} is absent (`./run.sh setup` installs it)");
        return;
    };
    let mut measure = f64::INFINITY;
    let mut mrtd = [0u8; 48];
    for _ in 0..3 {
        let t = Instant::now();
        mrtd = Tdvf::parse(&ovmf).map(|t| t.mrtd()).unwrap_or([0; 48]);
        measure = measure.min(t.elapsed().as_secs_f64() * 1e3);
    }
    figs.record("tdvf_measure_ms", measure, "ms");
    let params = TdParams { max_vcpus: 1, ..default_params() };
    let mut build_ms = f64::INFINITY;
    let mut aug_ms = f64::INFINITY;
    for _ in 0..3 {
        let mut m = Machine::configured(64 * MIB);
        let t = Instant::now();
        let Ok(b) = build(&mut m, &ovmf, &params, &[(0, 16 * MIB)], Aug::OnDemand) else {
            eprintln!("note: the TDVF build of {path} failed; no tdvf_build figure");
            return;
        };
        build_ms = build_ms.min(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        if tsm_client::host::tdvf::aug_unaccepted(&mut m, &b.td, &b.map).is_err() {
            return;
        }
        aug_ms = aug_ms.min(t.elapsed().as_secs_f64() * 1e3);
    }
    figs.record("tdvf_build_harness_ms", build_ms, "ms");
    figs.record("tdvf_aug_16mib_harness_ms", aug_ms, "ms");
    eprintln!("tdvf: MRTD of {path} {}", mrtd.iter().map(|b| format!("{b:02x}")).collect::<String>());
}
