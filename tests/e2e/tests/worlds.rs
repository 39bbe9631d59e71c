//! The worlds in QEMU (TCG, `-cpu max`): the TSM alone in SVM host mode, the host world behind
//! its nested map. Its probe reads and writes TSM memory, the PAMT and the VT-d registers; each
//! access must fault (#MC in the host world), change nothing, land in the fault log the host
//! reads back with SEAMLESS.HOST.FAULT.RD, and leave the host running.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use seamless_e2e::{decode_defmt, Boot, Qemu};

macro_rules! qemu_or_skip {
    () => {
        match Qemu::find() {
            Some(q) => q,
            None => return,
        }
    };
}

#[test]
fn host_world_access_to_tsm_pamt_and_vtd_faults_and_changes_nothing() {
    let qemu = qemu_or_skip!();
    let o = Boot { config: Some("mode=boot\n".into()), ..Boot::default() }.run(&qemu, "host_world");
    o.expect_status(33);
    assert!(
        o.console.contains("nRIP save no (RIP advanced by the TSM): the TSM alone runs in host mode"),
        "{}",
        o.console
    );
    assert!(
        o.console.contains(
            "6 refused (nested page fault -> #MC, handled), bytes unchanged; the host read 6 entries back from the fault log"
        ),
        "{}",
        o.console
    );
    assert!(
        o.console.contains("world: host world executed TDCALL: #UD, the guest ABI is not the host's"),
        "{}",
        o.console
    );
    // The host carried on after the faults: it reached the end of its program.
    assert!(o.console.contains("seamless firmware: boot done"), "{}", o.console);
    let floor = o.figure("svm_vmexit_floor_ns").expect("svm_vmexit_floor_ns");
    let seamcall = o.figure("seamcall_roundtrip_ns").expect("seamcall_roundtrip_ns");
    assert!(floor > 0.0 && seamcall > 0.0, "floor {floor} ns, SEAMCALL {seamcall} ns");
    if let Some(log) = decode_defmt(&o.defmt) {
        for what in ["(TSM memory)", "(PAMT / reserved)", "(not host memory)"] {
            assert_eq!(log.matches(what).count(), 2, "a read and a write of {what}:\n{log}");
        }
    }
}

#[test]
fn a_cpu_without_svm_stops_at_once_naming_the_fix() {
    let qemu = qemu_or_skip!();
    let boot = Boot { config: Some("mode=boot\n".into()), cpu: Some("max,svm=off".into()), ..Boot::default() };
    let o = boot.run(&qemu, "no_svm");
    o.expect_status(35);
    assert!(o.console.contains("error: SVM: the CPU has no AMD SVM"), "{}", o.console);
    assert!(o.console.contains("run QEMU with -accel tcg -cpu max"), "{}", o.console);
    assert!(!o.console.contains("tsm: configured"), "stopped before the TSM: {}", o.console);
}

#[test]
fn mrseam_the_firmware_measures_is_the_one_recomputed_from_the_file() {
    let qemu = qemu_or_skip!();
    let o = Boot { config: Some("mode=boot\n".into()), ..Boot::default() }.run(&qemu, "mrseam");
    o.expect_status(33);
    let line = o.console.lines().find(|l| l.starts_with("tsm: MRSEAM ")).expect("MRSEAM line");
    let measured = line.split_whitespace().nth(2).expect("digest");
    assert_eq!(measured.len(), 96, "{line}");
    assert_ne!(measured, "0".repeat(96), "MRSEAM is measured, not zero");
    assert_eq!(measured, seamless_e2e::mrseam(), "firmware mrseam FILE recomputes it");
}

/// The probe TD (`firmware/src/arch/td_probe.S`) in its TD world: entered at the reset vector in
/// TDX's initial state, CPUID as a TDX module presents it, #VE with exact VE info for CPUID, HLT,
/// I/O, MSR and a PENDING page (a GPA never accepted), TDCALL by #UD, a page blocked and tracked
/// while the TD uses it (its next touch exits to the host), the shared half through the host's
/// table (SEAMLESS.SHARED.EPT.SET), whose entry naming a TD private page is refused, SEAMCALL
/// from the TD (#UD), R14/R15 carried to the host and back when the VMCALL's mask exposes them,
/// secrets in every register the VMCALL does not expose (none reaches the host), and the host's memory (an EPT
/// violation, never its bytes). The firmware checks each and stops with status 35 on the
/// first that fails; the figures travel as COM3 frames.
#[test]
fn the_probe_td_runs_in_its_td_world_and_every_td_attack_is_refused() {
    let qemu = qemu_or_skip!();
    let o = Boot { config: Some("mode=boot\n".into()), ..Boot::default() }.run(&qemu, "td_world");
    o.expect_status(33);
    for what in [
        "world: probe TD: entered at the reset vector in TDX's initial state; CPUID GenuineIntel/IntelTDX; 5 #VEs with exact VE info (CPUID, HLT, I/O, MSR, a PENDING page)",
        "a page blocked and tracked while in use exited on its next touch; the shared half read through the host's table, which could not reach a private page",
        "SEAMCALL in the TD #UD; R14/R15 carried both ways when the VMCALL exposed them; no register it did not expose reached the host; the host's memory exited as an EPT violation",
    ] {
        assert!(o.console.contains(what), "{what}:\n{}", o.console);
    }
    let tdcall = o.figure("tdcall_roundtrip_ns").expect("tdcall_roundtrip_ns");
    let floor = o.figure("svm_vmexit_floor_ns").expect("svm_vmexit_floor_ns");
    let ratio = o.figure("tdcall_vs_floor").expect("tdcall_vs_floor");
    let switches = o.figure("world_switches").expect("world_switches");
    assert!(tdcall > 0.0 && floor > 0.0 && ratio > 0.0, "TDCALL {tdcall} ns, floor {floor} ns, ratio {ratio}");
    assert!(switches > 0.0, "world switches {switches}");
}
