//! Writes the seed corpora under `fuzz/corpus/<target>/` from real conversations (see
//! `seamless_fuzz_tools::record` and `::evidence`), and the platform fixture under
//! `fuzz/fixtures/platform/` if it is missing. Seeds are named `seed-<what>`; files libFuzzer
//! added (content hashes) and `regression-*` files are left alone.

use std::fs;
use std::path::Path;

use seamless_fuzz_tools::evidence::{attestation, platform_dir, provision_platform};
use seamless_fuzz_tools::record::recording;
use seamless_fuzz_tools::wire::join;
use seamless_fuzz_tools::{frame, fuzz_dir};

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = fuzz_dir().join("corpus").join(target);
    fs::create_dir_all(&dir).expect("corpus dir");
    fs::write(dir.join(format!("seed-{name}")), bytes).expect("seed");
}

fn main() {
    if !platform_dir().join("platform-secret.bin").exists() {
        provision_platform().expect("provision the fixture platform");
        println!("wrote {}", platform_dir().display());
    }
    let r = recording();
    write("doe", "discovery", &join(&r.discovery));
    for (i, o) in r.negotiate.iter().chain(&r.cert).chain(&r.secured).enumerate() {
        write("doe", &format!("object-{i:02}"), &join(&[o]));
    }
    write("spdm_negotiate", "vca", &join(&r.negotiate));
    write("spdm_cert", "chain", &join(&r.cert));
    write("spdm_challenge", "challenge-auth", &join(&r.challenge));
    write("spdm_meas", "measurements", &join(&r.meas));
    write("spdm_session", "key-exchange-finish", &join(&r.key_exchange));
    write("spdm_key_update", "update-verify", &join(&r.key_update));
    write("spdm_connect", "connect", &join(&r.connect));
    write("secured_open", "session", &join(&r.secured));
    write("cert_chain", "chain", &r.chain);
    for (i, t) in r.tdisp.iter().enumerate() {
        let mut b = vec![t.want];
        b.extend_from_slice(&t.message);
        write("tdisp", &format!("answer-{i:02}"), &b);
    }
    let mut report = vec![0x00];
    report.extend_from_slice(&r.interface_report);
    write("tdisp", "interface-report", &report);
    for (i, m) in r.idekm.iter().enumerate() {
        write("idekm", &format!("answer-{i:02}"), m);
    }
    write("device_requests", "conversation", &join(&r.requests));
    write("device_requests", "connect", &join(&r.connect_requests));
    // The ABI target: the canonical assignment as steps, then a few of each kind of call.
    let mut flow = Vec::new();
    for s in 0..=11u8 {
        flow.extend([5, s, 0]);
    }
    write("abi_calls", "assignment", &flow);
    let mut attack = flow.clone();
    attack.extend([5, 19, 0, 0, 0, 3, 0, 4, 0, 0]);
    write("abi_calls", "attest-and-calls", &attack);
    write("abi_calls", "corrupt-connect", &[5, 0, 0, 5, 1, 1, 5, 8, 0, 0x40]);
    // The GHCI target: what OVMF asks of its host.
    for (name, records) in seamless_fuzz_tools::ghci::seeds() {
        write("ghci", name, &records);
    }

    let a = attestation();
    write("attest_report", "report", &a.report);
    write("attest_evidence", "bundle", &a.evidence);
    write("attest_policy", "reference", a.policy.as_bytes());
    write("attest_verify", "genuine", &join(&[&a.report[..], &a.evidence[..], a.policy.as_bytes(), &a.nonce[..]]));
    write("attest_snp", "export", &join(&[&a.snp[..], &a.report[..], &a.nonce[..]]));
    write("attest_eventlog", "tdvf-log", &seamless_fuzz_tools::evidence::event_log().log);
    // The artifacts as the firmware frames them on COM3, and as name/data pairs.
    let files: [(&str, &[u8]); 3] =
        [("report.bin", &a.report), ("evidence.bin", &a.evidence), ("snp-report.bin", &a.snp)];
    let mut stream = Vec::new();
    for (name, data) in files {
        frame::encode(name, data, &mut |b| stream.extend_from_slice(b)).expect("frame");
    }
    write("serial_frames", "com3-stream", &stream);
    write("serial_frames", "files", &join(&files.iter().flat_map(|(n, d)| [n.as_bytes(), *d]).collect::<Vec<_>>()));
    println!("corpora written under {}", Path::new(&fuzz_dir()).join("corpus").display());
}
