//! Debian's OVMF.fd, unmodified, as a TD (mode `ovmf`): the host builds the TD from its TDVF
//! metadata, runs it in the TD world and serves its TDG.VP.VMCALLs; OVMF's console is the run's
//! console. The test checks the milestones of that console (the boot manager starting the
//! shell, the shell's banner and prompt, the host's `reset -s` powering the TD off), the
//! teardown (every donated page free again), and that the MRTD the TSM computed (a COM3 frame)
//! is what `attest measure` computes from the same file. It then boots the same OVMF.fd
//! natively (`-bios`, same q35, CPU and RAM) to the same prompt and prints both times and the
//! ratio, with where the TD's time goes (world switches, TDVMCALLs, #VEs by kind).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use seamless_e2e::{native_boot_until, ovmf_fd, run_tool, Boot, Qemu};

/// The TD's RAM, and the native baseline's.
const TD_MIB: u32 = 256;

#[test]
fn debians_ovmf_boots_as_a_td_to_the_uefi_shell_and_powers_off() {
    let Some(qemu) = Qemu::find() else { return };
    let Some(ovmf) = ovmf_fd() else { return };
    let boot = Boot {
        config: Some(format!("mode=ovmf\ntdmr_max_mib=400\ntd_mib={TD_MIB}\nlog_calls=off\ntd_timeout_s=150\n")),
        memory_mib: Some(640),
        ovmf: Some(ovmf.clone()),
        timeout: Some(Duration::from_secs(240)),
        ..Boot::default()
    };
    let o = boot.run(&qemu, "ovmf");
    o.expect_status(33);
    for milestone in [
        "host: TDVF TD built",
        // Mid-boot, between two entries, the host world attacks the running TD and is refused
        // (the host checks every refusal and its fault-log entry; a miss fails the run).
        "world: the host world attacked the running OVMF TD after 15000 entries",
        // The attack table's host calls on a finalized TD's memory, each with its status.
        "6 host calls on its memory refused with their statuses, the TSM's state unchanged; the TD runs on",
        "BdsDxe: starting Boot0001 \"EFI Internal Shell\"",
        "UEFI Interactive Shell v2.2",
        "Shell> ",
        "host: the OVMF TD ended after",
        "the TD asked for its end (Shutdown)",
        "donated pages are free again",
        "seamless host: ovmf done",
    ] {
        assert!(o.console.contains(milestone), "{milestone:?} missing:\n{}", o.console);
    }

    // MRTD from the TSM (a COM3 frame) against the verifier's tool on the same file.
    let stream = o.dir.join("artifacts.bin");
    let (status, _, err) = run_tool("firmware", &["artifacts".as_ref(), stream.as_os_str(), o.dir.as_os_str()]);
    assert_eq!(status, 0, "firmware artifacts: {err}");
    let mrtd: String = std::fs::read(o.dir.join("ovmf-mrtd.bin")).unwrap().iter().map(|b| format!("{b:02x}")).collect();
    let (status, measured, err) = run_tool("attest", &["measure".as_ref(), ovmf.as_os_str()]);
    assert_eq!(status, 0, "attest measure: {err}");
    assert_eq!(mrtd, measured.trim(), "the TD's MRTD is attest measure's");
    let rtmrs = std::fs::read(o.dir.join("ovmf-rtmrs.bin")).unwrap();
    assert_eq!(rtmrs.len(), 4 * 48);
    td_exits_add_up(&o, &rtmrs);

    let shell = o.figure("ovmf_td_shell_s").expect("ovmf_td_shell_s");
    assert!(shell > 0.0);
    let wanted =
        |l: &&str| l.starts_with("figure ") || l.starts_with("host: TDVMCALLs") || l.starts_with("world: TD exits");
    for l in o.console.lines().filter(wanted) {
        println!("{l}");
    }
    // The same image natively, to the same prompt.
    let native = native_boot_until(&qemu, &ovmf, TD_MIB, "Shell> ", Duration::from_secs(120));
    let native_s = native.as_secs_f64();
    println!("bench ovmf_td_boot_s {shell:.3} s (first VP.ENTER to Shell>)");
    println!(
        "bench ovmf_td_qemu_wall_s {:.3} s (QEMU start to exit: TSM boot, TD build, boot, teardown)",
        o.wall.as_secs_f64()
    );
    println!("bench ovmf_native_boot_s {native_s:.3} s (QEMU start to Shell>)");
    println!("bench ovmf_td_vs_native {:.2} x", shell / native_s);
}

/// The TSM's counts of the TD's phase (COM3 figures) against each other and the host's: the
/// exits by cause add up to the world switches, the TDCALLs by leaf to the TDCALL exits, every
/// #VE was read with one TDG.VP.VEINFO.GET, every VP.ENTER returned at a VMCALL or a preemption
/// (the host AUGs nothing on demand: the RAM is AUGed up front), and the RTMRs moved only if
/// the TD extended them (Debian's build does not measure into them: no TdTcg2Dxe).
fn td_exits_add_up(o: &seamless_e2e::Outcome, rtmrs: &[u8]) {
    let f = |name: &str| o.figure(name).unwrap_or_else(|| panic!("figure {name} missing")) as u64;
    let kinds = ["npf", "tdcall", "cpuid", "msr", "io", "hlt", "preempted", "other"];
    let exits: u64 = kinds.iter().map(|k| f(&format!("ovmf_td_exit_{k}"))).sum();
    assert_eq!(exits, f("ovmf_td_world_switches"), "exits by cause = world switches");
    let leaves = ["vmcall", "vp_info", "veinfo_get", "accept", "rtmr", "other"];
    let tdcalls: u64 = leaves.iter().map(|l| f(&format!("ovmf_td_tdcall_{l}"))).sum();
    assert_eq!(tdcalls, f("ovmf_td_exit_tdcall"), "TDCALLs by leaf = TDCALL exits");
    assert_eq!(f("ovmf_td_tdcall_veinfo_get"), f("ovmf_td_ves"), "one VEINFO.GET per #VE");
    assert_eq!(
        f("ovmf_td_tdcall_vmcall") + f("ovmf_td_exit_preempted"),
        f("ovmf_td_vp_enters"),
        "every VP.ENTER ended at a VMCALL or the preemption timer"
    );
    assert!(f("ovmf_td_tdcall_accept") > 0 && f("ovmf_td_tdcall_vp_info") > 0, "SEC's TDCALLs");
    let extended = f("ovmf_td_tdcall_rtmr") > 0;
    assert_eq!(rtmrs.iter().any(|&b| b != 0), extended, "RTMRs move exactly when the TD extends them");
}

/// A TD that runs away (here: past a deadline shorter than its boot) is torn down all the same,
/// with the reason and its last exit's registers printed, every page back, and the run failed.
#[test]
fn an_ovmf_td_past_its_deadline_is_torn_down_with_its_last_state() {
    let Some(qemu) = Qemu::find() else { return };
    let Some(ovmf) = ovmf_fd() else { return };
    let boot = Boot {
        config: Some(format!("mode=ovmf\ntdmr_max_mib=400\ntd_mib={TD_MIB}\nlog_calls=off\ntd_timeout_s=2\n")),
        memory_mib: Some(640),
        ovmf: Some(ovmf),
        timeout: Some(Duration::from_secs(120)),
        ..Boot::default()
    };
    let o = boot.run(&qemu, "ovmf_timeout");
    o.expect_status(35);
    for what in [
        // The deadline is checked between time slices of 10 ms; a loaded machine overshoots it.
        "host: the OVMF TD ended after 2.",
        "the TD ran past its deadline",
        "host: last TD exit after",
        "donated pages are free again",
        "seamless host: error: OVMF TD: it did not reach the shell and power off: the TD ran past its deadline",
    ] {
        assert!(o.console.contains(what), "{what:?} missing:\n{}", o.console);
    }
}
