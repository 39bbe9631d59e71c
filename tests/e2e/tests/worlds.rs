//! The worlds in QEMU (TCG, `-cpu max`): the TSM alone in SVM host mode, the host agent its own
//! binary in the host world behind its nested map, loaded by the TSM from fw_cfg and reaching it
//! only by SEAMCALL. The agent reads and writes TSM memory, the PAMT and the VT-d registers, and
//! goes after the platform secret, fw_cfg's DMA, the MSRs and the ISA DMA controllers; each
//! access must be refused (#MC in the host world for memory, a dropped write for ports and
//! MSRs), change nothing, land in the fault log the host reads back with
//! SEAMLESS.HOST.FAULT.RD, and leave the host running.

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

/// One boot in mode `boot`, with a platform secret the host world will try to reach.
fn boot_with_secret(qemu: &Qemu, name: &str) -> seamless_e2e::Outcome {
    let boot =
        Boot { config: Some("mode=boot\n".into()), secret: Some(seamless_e2e::throwaway_secret()), ..Boot::default() };
    boot.run(qemu, name)
}

#[test]
fn the_host_agent_is_its_own_binary_loaded_by_the_tsm_and_entered_in_the_host_world() {
    let qemu = qemu_or_skip!();
    let o = boot_with_secret(&qemu, "host_binary");
    o.expect_status(33);
    for what in [
        "nRIP save no (RIP advanced by the TSM): the TSM alone runs in host mode",
        "host: opt/seamless/host (",
        "untrusted and unmeasured) loaded in ",
        "entered at 0xffffffff80000000 in the host world",
        "host: the agent runs in the host world: image 0xffffffff80000000..",
        "from the TSM's boot information",
        // The agent chose its TDMR from its own memory and configured the TSM by SEAMCALL.
        "(reserved), host image ",
        "tsm: configured over 1 TDMR of 64 MiB",
        "seamless host: boot done",
        // The TSM's last word, when the host ended the run through isa-debug-exit.
        "world: the host world ended the run: ",
    ] {
        assert!(o.console.contains(what), "{what}:\n{}", o.console);
    }
    // The agent said everything between the TSM loading it and the TSM's last word.
    let loaded = o.console.find("host: opt/seamless/host (").unwrap();
    let done = o.console.find("seamless host: boot done").unwrap();
    let ended = o.console.find("world: the host world ended the run").unwrap();
    assert!(loaded < done && done < ended, "{}", o.console);
    assert!(o.figure("world_switches").is_some_and(|n| n > 0.0), "{}", o.console);
    // The agent marked its phases; the TSM counted each one's world switches, the TD worlds'
    // included, and said them itself.
    for phase in ["tsm_config", "world_probe", "probe_td"] {
        let line = format!("world: phase {phase}: ");
        assert!(o.console.contains(&line), "{line}:\n{}", o.console);
        assert!(o.figure(&format!("switches_{phase}")).is_some_and(|n| n > 0.0), "switches_{phase}");
    }
    let probe_td = o.console.lines().find(|l| l.starts_with("world: phase probe_td: ")).unwrap();
    assert!(!probe_td.contains(" 0 of TD worlds"), "the probe TD ran in its TD world: {probe_td}");
    if let Some(log) = decode_defmt(&o.defmt) {
        // Configured by the host world's SEAMCALL: the TSM's call log has it.
        assert!(log.contains("host TDH.SYS.CONFIG ok"), "{log}");
    }
}

#[test]
fn host_world_access_to_tsm_pamt_and_vtd_faults_and_changes_nothing() {
    let qemu = qemu_or_skip!();
    let o = boot_with_secret(&qemu, "host_world");
    o.expect_status(33);
    assert!(
        o.console.contains(
            "6 refused (nested page fault -> #MC, handled), nothing read; the host read 6 entries back from the fault log"
        ),
        "{}",
        o.console
    );
    assert!(
        o.console.contains("world: host world executed TDCALL: #UD, the guest ABI is not the host's"),
        "{}",
        o.console
    );
    // The TSM compared the bytes of every refused write at the host world's next exit.
    let ended =
        o.console.lines().find(|l| l.starts_with("world: the host world ended the run")).expect("TSM's last word");
    assert!(ended.contains("refused writes checked: bytes unchanged"), "{ended}");
    // The host carried on after the faults: it reached the end of its program.
    assert!(o.console.contains("seamless host: boot done"), "{}", o.console);
    if let Some(log) = decode_defmt(&o.defmt) {
        for what in ["(TSM memory)", "(PAMT / reserved)", "to 0xfed90000 (not host memory)"] {
            assert_eq!(log.matches(what).count(), 2, "a read and a write of {what}:\n{log}");
        }
    }
}

/// The host world's ways around its nested map through the platform: fw_cfg's selector naming
/// the platform secret, fw_cfg's DMA interface (which writes by physical address without the
/// IOMMU), the MSRs the TSM depends on, the ISA DMA controllers, and the chipset registers that
/// put device registers over RAM (the host bridge's PCIEXBAR, the LPC bridge's RCBA; through
/// ECAM and through ports 0xCF8/0xCFC). Each is refused by the TSM's intercepts or the nested
/// map, logged, and without effect: the data port gives nothing of the secret, the DMA
/// descriptor is untouched, PCIEXBAR reads as before, and the TSM is still running (a changed
/// EFER.SVME or VM_HSAVE_PA would have ended it at the next exit, and the TSM checks both after
/// every WRMSR).
#[test]
fn host_world_fw_cfg_secret_fw_cfg_dma_msrs_isa_dma_and_chipset_are_refused_and_logged() {
    let qemu = qemu_or_skip!();
    let o = boot_with_secret(&qemu, "host_platform");
    o.expect_status(33);
    let line = o
        .console
        .lines()
        .find(|l| l.starts_with("world: host world attacked the platform: "))
        .unwrap_or_else(|| panic!("no platform line:\n{}", o.console));
    for what in [
        "2 selections of fw_cfg's opt/seamless/platform-secret refused (the data port then read nothing of it)",
        "fw_cfg DMA into TSM memory refused (2 writes, the descriptor untouched)",
        "8 MSR writes refused (EFER, VM_HSAVE_PA, VM_CR, SYSCFG, APIC_BASE, PAT, MTRRdefType, TSC; RDMSR VM_HSAVE_PA read 0)",
        "ISA DMA programming refused (9 port writes)",
        "the chipset's PCIEXBAR and RCBA not written (2 writes through ECAM, 2 through ports 0xCF8/0xCFC, refused; PCIEXBAR reads 0xb0000001 as before)",
        "the host read 25 entries back from the fault log",
    ] {
        assert!(line.contains(what), "{what}:\n{line}");
    }
    assert!(o.console.contains("seamless host: boot done"), "{}", o.console);
    if let Some(log) = decode_defmt(&o.defmt) {
        assert_eq!(log.matches("(fw_cfg selector naming the platform secret)").count(), 2, "{log}");
        assert_eq!(log.matches("(fw_cfg DMA interface)").count(), 2, "{log}");
        assert_eq!(log.matches("(ISA DMA controller)").count(), 9, "{log}");
        assert_eq!(log.matches("host world: WRMSR ").count(), 8, "{log}");
        // The third is PAM0, one of the ways out (below).
        assert_eq!(log.matches("(configuration write to a chipset register that moves memory)").count(), 3, "{log}");
        assert!(log.contains("access to 0xb0000060 (not host memory)"), "{log}");
        assert!(log.contains("access to 0xb00f80f0 (not host memory)"), "{log}");
    }
}

/// The host world's ways out of its world, each of which would hand it the machine: an INIT to
/// its own CPU through the local APIC's ICR (before the TSM kept it, the CPU reset into the
/// BIOS, which honoured a CMOS shutdown status the host had written and jumped to the host's
/// real-mode code at 40:67, outside every world, TSM memory readable: tried by hand), the I/O
/// APIC and HPET (which can send an INIT too), A20 off through port A (the TSM's own accesses
/// to odd megabytes would land in even ones: the host's), the i8042's output port (A20 and
/// reset), an SMI, the 8259's mask, CMOS's shutdown status, S3 through the ACPI PM registers
/// (a resume in the BIOS) and the BIOS's shadowing (PAM); and XCR0 with AVX, whose registers'
/// upper halves no world switch saves. Each refused, logged, and without effect: A20 still on,
/// the mask, the shutdown status, PAM0 and XCR0 as before, the run goes on.
#[test]
fn host_world_ways_out_init_a20_smi_s3_cmos_and_pam_are_refused_and_logged() {
    let qemu = qemu_or_skip!();
    let o = boot_with_secret(&qemu, "host_escapes");
    o.expect_status(33);
    let line = o
        .console
        .lines()
        .find(|l| l.starts_with("world: host world tried the ways out of its world: "))
        .unwrap_or_else(|| panic!("no ways-out line:\n{}", o.console));
    for what in [
        "the local APIC's ICR (an INIT to itself), the I/O APIC and the HPET: 3 writes refused (#MC)",
        "A20 off through port A, the i8042's output port, an SMI through APM control, the 8259's mask, CMOS's shutdown status (0x0A: jump through 40:67 after an INIT), S3 through ACPI PM1 control, PAM0 through 0xCF8/0xCFC: 7 port writes refused",
        "(A20 still on, the 8259 still masked, the shutdown status 0x0 and PAM0",
        "XCR0 with AVX refused (still 0x3: x87 and SSE, the state the TSM switches)",
        "the host read 11 entries back from the fault log",
    ] {
        assert!(line.contains(what), "{what}:\n{line}");
    }
    assert!(o.console.contains("seamless host: boot done"), "{}", o.console);
    if let Some(log) = decode_defmt(&o.defmt) {
        for (what, count) in [
            ("access to 0xfee00300 (not host memory)", 1),
            ("access to 0xfec00000 (not host memory)", 1),
            ("access to 0xfed00010 (not host memory)", 1),
            ("(port A (A20 gate and fast reset))", 1),
            ("(i8042 keyboard controller (its output port drives A20 and the reset line))", 1),
            ("(APM control (an SMI))", 1),
            ("(8259 interrupt controller (the TSM keeps every line masked))", 1),
            ("(CMOS data (the BIOS's shutdown status and settings))", 1),
            ("(ACPI PM registers (sleep states, SMI enables))", 1),
            ("(configuration write to a chipset register that moves memory)", 3),
            ("host world: XSETBV XCR0 <- 0x7", 1),
        ] {
            assert_eq!(log.matches(what).count(), count, "{what}:\n{log}");
        }
    }
}

/// The figures the host agent measures in its own world: a bare VMMCALL round trip (the floor)
/// and SEAMCALL of TDH.SYS.INFO, each the best round's mean; sent as COM3 frames.
#[test]
fn the_host_agent_measures_the_exit_floor_and_the_seamcall_round_trip() {
    let qemu = qemu_or_skip!();
    let o = Boot { config: Some("mode=boot\n".into()), ..Boot::default() }.run(&qemu, "host_figures");
    o.expect_status(33);
    let floor = o.figure("svm_vmexit_floor_ns").expect("svm_vmexit_floor_ns");
    let seamcall = o.figure("seamcall_roundtrip_ns").expect("seamcall_roundtrip_ns");
    let ratio = o.figure("seamcall_vs_floor").expect("seamcall_vs_floor");
    assert!(floor > 0.0 && seamcall > 0.0 && ratio > 0.0, "floor {floor} ns, SEAMCALL {seamcall} ns, ratio {ratio}");
    assert!(o.console.contains("world: host world: best of 10 rounds of 50: VMMCALL floor "), "{}", o.console);
    // Without a provisioned secret there is nothing to select; everything else is refused.
    assert!(
        o.console.contains("fw_cfg's opt/seamless/platform-secret not present (nothing to select)"),
        "{}",
        o.console
    );
}

/// The TSM loads only an ELF it can place: a file that is not one, and an executable linked
/// outside the host image window (the guest's, at 2 MiB), are refused before anything runs,
/// naming why.
#[test]
fn a_host_binary_the_tsm_cannot_place_is_refused_naming_why() {
    let qemu = qemu_or_skip!();
    let dir = seamless_e2e::workspace().join("target/e2e/host_refused");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let text = dir.join("not-elf.bin");
    std::fs::write(&text, "#!/bin/sh\necho this is not the host agent\n".repeat(8)).unwrap();
    for (host, name, want) in [
        (text, "host_not_elf", "error: host agent: opt/seamless/host: ELF header: no ELF magic"),
        (
            seamless_e2e::guest_elf(),
            "host_elsewhere",
            "error: host agent: opt/seamless/host: program header 0: outside the host image window (-2 GiB, 16 MiB)",
        ),
    ] {
        let boot = Boot { config: Some("mode=boot\n".into()), host: Some(host), ..Boot::default() };
        let o = boot.run(&qemu, name);
        o.expect_status(35);
        assert!(o.console.contains(want), "{want}:\n{}", o.console);
        assert!(!o.console.contains("host: the agent runs"), "nothing ran:\n{}", o.console);
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
        "SEAMCALL in the TD #UD; the vector registers its own in both directions; R14/R15 carried both ways when the VMCALL exposed them; a spin with interrupts off preempted by the TSM's timer; no register it did not expose reached the host; the host's memory exited as an EPT violation",
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
