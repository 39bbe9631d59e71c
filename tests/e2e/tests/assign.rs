//! The whole device assignment in QEMU (mode `assign`), the device faults that must stop it or
//! make the verifier refuse, and the malicious host (mode `attack`).
//!
//! Each run: `attest provision` makes a platform, `tdisp-device` serves a device whose report
//! lists BAR0 where the firmware places it, the firmware runs the flow with the test's nonce, and
//! the artifacts from COM3 are verified with the `attest` tool against a policy derived from the
//! device's config and `attest measure` of the guest image.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use seamless_e2e::{assign_config, assign_device, provision, verify, verify_snp, Boot, DeviceServer, Outcome, Qemu};
use tdisp_device::{Config, Device, Reply, Signed};
use tsm_client::guest::result::DiskRead;
use zerocopy::FromBytes;

macro_rules! qemu_or_skip {
    () => {
        match Qemu::find() {
            Some(q) => q,
            None => return,
        }
    };
}

/// One assignment run against a device with `config`.
fn run(qemu: &Qemu, name: &str, mode: &str, config: Config, nonce: &[u8; 64]) -> (Outcome, Device, std::path::PathBuf) {
    run_with_timeout(qemu, name, mode, config, nonce, 1000)
}

/// The same with the DOE timeout set.
fn run_with_timeout(
    qemu: &Qemu,
    name: &str,
    mode: &str,
    config: Config,
    nonce: &[u8; 64],
    doe_timeout_ms: u32,
) -> (Outcome, Device, std::path::PathBuf) {
    let platform = std::env::temp_dir().join(format!("seamless-e2e-platform-{name}-{}", std::process::id()));
    let secret = provision(&platform);
    let device = DeviceServer::with_config(config);
    let boot = Boot {
        spdm_port: Some(device.port),
        config: Some(assign_config(mode, nonce, doe_timeout_ms)),
        secret: Some(secret),
        ..Boot::default()
    };
    let o = boot.run(qemu, name);
    (o, device.finish(), platform)
}

/// Whether the TDI ever ran: the firmware says so, or the device's interface is (still) in RUN.
fn tdi_ran(o: &Outcome, device: &Device) -> bool {
    o.console.contains("tdi: RUN") || device.tdis().iter().any(|t| format!("{:?}", t.state) == "Run")
}

#[test]
fn assign_happy_path_flow_completes_report_verifies_pages_reclaimed() {
    let qemu = qemu_or_skip!();
    let nonce = [0xA5; 64];
    let (o, device, platform) = run(&qemu, "assign_happy_path", "assign", assign_device(false), &nonce);
    o.expect_status(33);
    for line in [
        "tsm: provisioned: attestation key derived from the platform secret",
        "pci: NVMe BAR0 0xc0000000 size 0x4000",
        // The TD binary's own lines: it read its TDI with TDG.TDI.RD, checked the host's report
        // against the TSM's digest, accepted MMIO and DMA, authorised START, read the registers
        // with real loads, and attested, all with real TDCALLs in its TD world.
        "td: TDI 0x0018 CONFIG_LOCKED (generation 1): the host's report (48 bytes) matches the TSM's digest; 4 MMIO pages and the DMA entry accepted, START authorised; RUN",
        "td: NVMe CAP 0x",
        ", read with loads through its MMIO_MAPPED leaves",
        "td: plan Assign (MRCONFIGID, read from its own TDREPORT)",
        "td: drive read into private pages, stray DMA refused, differential cases done",
        "td: report and its SNP-format export over the verifier's challenge handed to the host",
        "td: done: halting with interrupts blocked",
        "accepted by the guest",
        "the guest authorised START",
        "tdi: RUN",
        "equal to the host's read",
        // The TD's NVMe driver: Identify and 1 MiB of READs DMA'd into private pages through
        // QEMU's intel-iommu walking the S-EPT, checked against the drive's known content.
        "guest: NVMe 1b36 \"QEMU NVMe Ctrl\" serial \"seamless\", namespace 1: 2048 blocks of 512 bytes",
        "into private memory through QEMU's IOMMU walking the S-EPT; SHA-384",
        "= the drive's known content",
        // Before IOMMU.SETUP the unit walks the TSM's blocking root table: the host's command is
        // never even fetched, nothing lands in its pages.
        "dma: before IOMMU.SETUP the host's NVMe IDENTIFY (queues and data page in host RAM) went nowhere: no completion in ",
        "the completion queue and the data page unchanged (the unit walks the TSM's blocking root table); controller disabled again",
        // The host's own read of the same blocks, before assignment, through the host domain.
        "into its own pages through the host domain (QEMU's IOMMU walking the host map); SHA-384",
        "dma: the NVMe function left the host domain (entry zeroed, invalidation confirmed)",
        // The guest reads its own device's fault records through its leaf.
        "guest: SEAMLESS.TDG.IOMMU.FAULT.RD shows its device's ",
        // The differential test: QEMU's unit and tsm::iommu::translate on the same states,
        // the last after TDH.DMAR.BLOCK.
        "differential: QEMU's unit and tsm::iommu::translate agree on all 6 cases",
        "artifact report.bin: 1200 bytes on COM3",
        "artifact report-snp.bin: 1184 bytes on COM3",
        "seamless host: assign done",
        // The host world in hardware: its BAR before the import, every protected object after.
        "before the import: the BAR is still the host's",
        "world: the host world attacked 9 protected objects: 18 accesses refused in hardware, 18 fault-log entries read back, the host carried on",
    ] {
        assert!(o.console.contains(line), "missing {line:?} in:\n{}", o.console);
    }
    for object in [
        "imported BAR0 (CC)",
        "TD private page",
        "TDR",
        "TDCS",
        "S-EPT table",
        "IOMMU table",
        "PAMT",
        "TSM memory",
        "VT-d registers",
    ] {
        let line = format!("world: host world -> {object} at ");
        let found = o.console.lines().find(|l| l.starts_with(&line)).unwrap_or_else(|| panic!("no {line:?}"));
        assert!(found.ends_with("read and write refused (#MC), nothing read"), "{found}");
    }
    // The TSM compared the bytes at every refused write at the host world's next exit.
    let ended =
        o.console.lines().find(|l| l.starts_with("world: the host world ended the run")).expect("TSM's last word");
    assert!(ended.contains("refused writes checked: bytes unchanged"), "{ended}");
    // DMA that must not land: each completes at the controller with status 0, and the unit's
    // fault record (read by the host through IOMMU.FAULT.RD) names the NVMe function (00:03.0),
    // the page and the reason: 0x05 for no S-EPT permission, 0x0C for the MMIO leaf's bit 62.
    for (what, page, reason) in [
        ("a page the TD never accepted", "0x118000", "0x05"),
        ("the TD's own device MMIO page", "0x40000000", "0x0c"),
        ("a shared GPA", "0x800000100000", "0x05"),
    ] {
        let line = o.console.lines().find(|l| l.starts_with("dma fault: READ into ") && l.contains(what));
        let line = line.unwrap_or_else(|| {
            panic!(
                "no fault line for {what} in:
{}",
                o.console
            )
        });
        let expect = format!("NVMe status 0x0; the unit refused it: source 0x0018, page {page}, VT-d reason {reason}");
        assert!(line.contains(&expect), "{line}");
    }
    // Every page the host donated reads back free (the firmware checks each with RDMD).
    let freed = o.console.lines().find(|l| l.starts_with("teardown: ")).expect("teardown line");
    assert!(freed.contains("donated pages free again"), "{freed}");
    // The device saw the whole life of its interface: started, then stopped again.
    assert_eq!(device.session_count(), 0, "the session was ended at teardown");
    for f in [
        "boot_to_tsm_ready_ms",
        "spdm_connect_qemu_ms",
        "tdi_lock_report_qemu_ms",
        "map_accept_start_qemu_ms",
        "attestation_qemu_ms",
        "nvme_read_mib_s_private",
        "nvme_read_mib_s_host",
        "dma_private_vs_host",
        "iommu_inv_us",
        "world_switches_demo",
        // World switches per phase: the TD's requests and runs are switches of the TD world.
        "switches_td_build",
        "switches_tdi_lock_report",
        "switches_map_accept_start",
        "switches_nvme_dma",
        "switches_attestation",
    ] {
        assert!(o.figure(f).is_some_and(|v| v > 0.0), "figure {f} in:\n{}", o.console);
    }
    let v = verify(&o, &platform, &device.identity().root_der, &nonce);
    assert_eq!(v.status, 0, "attest verify rejected:\n{}", v.json);
    assert_eq!(v.failed(), Vec::<String>::new());
    // The TD's own result of its read, typed and framed as it came through the shared page: the
    // drive's known content, the namespace QEMU serves, the time its READs took in the TD.
    let bytes = seamless_e2e::artifact(&o, "td-disk.bin").expect("td-disk.bin on COM3");
    let disk = DiskRead::read_from_bytes(&bytes).expect("a DiskRead record");
    assert_eq!((disk.vid.get(), disk.ns_blocks.get(), disk.block_bytes.get()), (0x1b36, 2048, 512));
    assert_eq!(disk.read_blocks.get(), attest::disk::DEMO_BLOCKS);
    assert_eq!(disk.matches, 1, "the TD found the drive's content");
    assert_eq!(disk.digest, attest::disk::digest(0, attest::disk::DEMO_BLOCKS));
    assert!(disk.ticks.get() > 0, "timed with RDTSC in the TD");
    // The SNP-format export of the same report verifies against the emulated AMD chain.
    let v = verify_snp(&o, &platform, &nonce);
    assert_eq!(v.status, 0, "attest verify --snp rejected:\n{}", v.json);
    // Another nonce: the same report is stale.
    let v = verify(&o, &platform, &device.identity().root_der, &[0x5A; 64]);
    assert_eq!(v.status, 1, "{}", v.json);
    assert_eq!(v.failed(), ["report.nonce"], "only the nonce is wrong");
    // MRTD measured the guest's real code: the policy pins what `attest measure` computes from
    // the image file the run loaded, so the same report against another guest (one byte of its
    // code changed) is an unexpected TD image, and nothing else is wrong.
    let path = o.dir.join("guest.img");
    let genuine = std::fs::read(&path).unwrap();
    let img = attest::image::Image::parse(&genuine).unwrap();
    // Every region of the image that holds bytes (the reset vector, the code that ran the device
    // flow and the NVMe driver, read-only data, .data) is measured; only zero-fill is not.
    for r in img.regions() {
        assert_eq!(r.measured, !r.content.is_empty(), "region at {:#x}: measured iff it holds bytes", r.gpa);
    }
    // The last byte of the code region: a byte of the code that ran, far from the entry.
    let code = img.regions().filter(|r| r.measured && r.content.len() > 4096).last().expect("the code region");
    let at = code.content.as_ptr() as usize - genuine.as_ptr() as usize + code.content.len() - 1;
    let mut other = genuine.clone();
    other[at] ^= 0x01;
    std::fs::write(&path, &other).unwrap();
    let v = verify(&o, &platform, &device.identity().root_der, &nonce);
    std::fs::write(&path, &genuine).unwrap();
    assert_eq!(v.status, 1, "{}", v.json);
    assert_eq!(v.failed(), ["td.mrtd"], "only the TD's measurement is wrong");
    let _ = std::fs::remove_dir_all(platform);
}

#[test]
fn a_malformed_guest_image_is_refused_before_the_td_exists() {
    let qemu = qemu_or_skip!();
    let dir = std::env::temp_dir().join(format!("seamless-e2e-bad-guest-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("guest.img");
    seamless_e2e::write_guest_image(&path);
    // The first region's GPA, one byte off its page: the host agent's parse refuses the file
    // (attest::image, which treats it as hostile) before the first TDH.MNG.CREATE.
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[16] |= 1;
    std::fs::write(&path, &bytes).unwrap();
    let device = DeviceServer::with_config(assign_device(false));
    let boot = Boot {
        spdm_port: Some(device.port),
        config: Some(assign_config("assign", &[0x11; 64], 1000)),
        secret: Some(seamless_e2e::throwaway_secret()),
        guest: Some(path),
        ..Boot::default()
    };
    let o = boot.run(&qemu, "malformed_guest_image");
    let _ = device.finish();
    o.expect_status(35);
    assert!(o.console.contains("from fw_cfg opt/seamless/guest"), "{}", o.console);
    assert!(o.console.contains("guest image: region at offset 16"), "{}", o.console);
    assert!(o.console.contains("is not 4 KiB aligned"), "{}", o.console);
    assert!(!o.console.contains("td: TDR"), "no TD was built:\n{}", o.console);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_device_with_a_bad_measurements_signature_is_never_started() {
    let qemu = qemu_or_skip!();
    let mut c = assign_device(false);
    c.faults.bad_signature = Some(Signed::Measurements);
    let (o, device, _) = run(&qemu, "fault_bad_signature", "assign", c, &[1; 64]);
    o.expect_status(35);
    assert!(o.console.contains("error: SPDM.CONNECT: TDH.SPDM.CONNECT returned DEVICE_ERROR"), "{}", o.console);
    assert!(!tdi_ran(&o, &device));
}

#[test]
fn a_device_reporting_a_wrong_measurement_is_rejected_by_the_verifier_naming_it() {
    let qemu = qemu_or_skip!();
    let nonce = [2; 64];
    let mut c = assign_device(false);
    c.faults.wrong_measurement = Some(1);
    let (o, device, platform) = run(&qemu, "fault_wrong_measurement", "assign", c, &nonce);
    // The measurement is signed as true: the TSM cannot tell, the verifier can.
    o.expect_status(33);
    let v = verify(&o, &platform, &device.identity().root_der, &nonce);
    assert_eq!(v.status, 1, "{}", v.json);
    assert_eq!(v.failed(), ["device0.measurement.1"], "exactly the measurement check fails");
    let _ = std::fs::remove_dir_all(platform);
}

#[test]
fn a_dropped_lock_response_stops_the_flow_before_the_tdi_runs() {
    let qemu = qemu_or_skip!();
    let mut c = assign_device(false);
    c.faults.drop_response = Some(Reply::Tdisp(0x83));
    let (o, device, _) = run_with_timeout(&qemu, "fault_drop_lock", "assign", c, &[3; 64], 200);
    o.expect_status(35);
    assert!(o.console.contains("error: TDI lock: TDH.TDI.LOCK: DOE mailbox:"), "{}", o.console);
    assert!(!tdi_ran(&o, &device));
}

#[test]
fn a_report_with_overlapping_ranges_is_refused_at_lock() {
    let qemu = qemu_or_skip!();
    let mut c = assign_device(true);
    c.faults.overlapping_ranges = true;
    let (o, device, _) = run(&qemu, "fault_overlapping", "assign", c, &[4; 64]);
    // A refused report ends the run with its own status and line (host/src/interop.rs).
    o.expect_status(37);
    assert!(o.console.contains("error: TDI lock: TDH.TDI.LOCK returned DEVICE_ERROR"), "{}", o.console);
    assert!(
        o.console.contains("(DEVICE_ERROR, RCX 0x320, RDX 0x104): MMIO range 1 is empty, overflows, has undefined attributes or overlaps the one before"),
        "{}",
        o.console
    );
    assert!(!o.console.contains("mmio: BAR0"), "nothing mapped:\n{}", o.console);
    assert!(!tdi_ran(&o, &device));
}

#[test]
fn a_device_refusing_start_never_runs_the_tdi() {
    let qemu = qemu_or_skip!();
    let mut c = assign_device(false);
    c.faults.refuse_start = true;
    let (o, device, _) = run(&qemu, "fault_refuse_start", "assign", c, &[5; 64]);
    o.expect_status(35);
    assert!(o.console.contains("error: TDI.START: TDH.TDI.START returned DEVICE_ERROR"), "{}", o.console);
    assert!(!tdi_ran(&o, &device));
}

#[test]
fn attack_mode_every_malicious_host_case_is_rejected_in_the_real_firmware() {
    let qemu = qemu_or_skip!();
    let (o, _, platform) = run(&qemu, "attack", "attack", assign_device(false), &[0; 64]);
    o.expect_status(33);
    let total = o.figure("attack_cases_total").expect("attack_cases_total");
    let rejected = o.figure("attack_cases_rejected").expect("attack_cases_rejected");
    assert_eq!(total, 56.0, "the 50 cases of the stand-in era and issue 11's six TD-world cases");
    assert_eq!(rejected, total, "{}", o.console);
    let refused = |l: &&str| l.contains(": rejected with ") || l.contains(": refused: ");
    let lines = o.console.lines().filter(|l| l.starts_with("attack ")).filter(refused).count();
    assert_eq!(lines, total as usize, "one line per refused case:\n{}", o.console);
    assert!(!o.console.contains("NOT AS EXPECTED"), "{}", o.console);
    // The TDs are the guest binary in plan probe; each guest-side case ran in a TD world.
    assert_eq!(o.console.matches("td: plan Probe (MRCONFIGID, read from its own TDREPORT)").count(), 2);
    for line in [
        "the TD: a load of a page it never accepted (PENDING): refused: #VE in the TD (EPT violation, a read of GPA 0x119000)",
        "the TD: SEAMCALL: refused: #UD in the TD",
        "the TD: a secret in every register TDG.VP.VMCALL does not expose: refused: the host saw R10..R13 and the mask 0x3c00, no other register",
        "the host world: TDCALL: refused: #UD in the host world, which carried on",
        "guest: MMIO.ACCEPT where the report puts another page: rejected with MMIO_INVALID_HPA_OFFSET",
        "the other TD: MMIO.ACCEPT of the TDI: rejected with TDI_NOT_PRESENT",
        "guest: START authorisation for a stale lock: rejected with TDI_AUTHORISATION_STALE",
        "guest: private memory read as a device register: refused: the TD's own accessor refused it before any access",
        "the TD: a load of its page after BLOCK and TRACK: refused: an EPT-violation exit at GPA 0x103000 (BLOCKED); after UNBLOCK the retried load read the page's own contents",
        "the TD: a device register load before MMIO.ACCEPT: refused: an EPT-violation exit at GPA 0x40003000 (S-EPT entry MmioPending); the TD never read it",
        "the other TD: a load of the host's memory: refused: an EPT-violation exit at GPA ",
    ] {
        assert!(o.console.contains(line), "missing {line:?} in:\n{}", o.console);
    }
    assert!(!o.console.contains("td: FATAL"), "{}", o.console);
    assert!(o.console.contains("teardown reclaimed all"), "{}", o.console);
    let _ = std::fs::remove_dir_all(platform);
}
