//! OVMF built from Debian's edk2 with `ovmf-patches/` (TdxConnectDxe, TdTcg2Dxe, the TDX Connect
//! TDCALL wrappers), as a TD on seamless. The image is built once per series by
//! `ovmf-patches/build.sh` (tens of minutes on two cores) and cached outside the clone; these
//! tests use the cached image and skip, saying so, when it is not built (`./run.sh ovmf
//! --patched` builds it). Under CI the image must be there.
//!
//! In mode `ovmf` the host serves no device requests: TdxConnectDxe's GET_TDI is refused, the
//! driver says so and the boot goes on to the shell, as a TD whose host offers no device must.
//! TdTcg2Dxe measures the boot into the RTMRs (stock OVMFPkgX64 leaves them zero).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use seamless_e2e::{
    assign_device, provision, run_tool, verify_image, workspace, Boot, DeviceServer, Outcome, Qemu, BAR0,
};
use tdisp_device::Device;

/// The TD's RAM.
const TD_MIB: u32 = 256;

/// The patched OVMF.fd if this tree's series is built already.
fn patched_ovmf() -> Option<PathBuf> {
    let script = workspace().join("ovmf-patches/build.sh");
    let out = Command::new(&script).arg("--cached").output().expect("ovmf-patches/build.sh runs");
    let path = String::from_utf8_lossy(&out.stdout).lines().last().map(PathBuf::from);
    match path {
        Some(p) if out.status.success() && p.exists() => Some(p),
        _ => {
            // `.ci/run` says so when the build itself failed on this machine (no edk2 source).
            assert!(
                std::env::var_os("CI").is_none() || std::env::var_os("SEAMLESS_OVMF_PATCHED").is_some(),
                "the patched OVMF.fd is not built: ovmf-patches/build.sh (or ./run.sh ovmf --patched)"
            );
            eprintln!("skipping: the patched OVMF.fd is not built; ovmf-patches/build.sh builds it");
            None
        }
    }
}

/// Mode `ovmf` with the patched image; `device` is the host's `ovmf_device` answer.
fn boot(qemu: &Qemu, ovmf: &std::path::Path, device: &str, name: &str) -> seamless_e2e::Outcome {
    let boot = Boot {
        config: Some(format!(
            "mode=ovmf\ntdmr_max_mib=400\ntd_mib={TD_MIB}\nlog_calls=off\ntd_timeout_s=200\novmf_device={device}\n"
        )),
        memory_mib: Some(640),
        ovmf: Some(ovmf.to_path_buf()),
        timeout: Some(Duration::from_secs(300)),
        ..Boot::default()
    };
    boot.run(qemu, name)
}

/// Mode `ovmf` with the NVMe function's TDI offered to the TD (`ovmf_device` `nvme` or
/// `nvme-lying-report`), the device behind its DOE mailbox, the boot disk on its drive, a
/// provisioned platform; returns the run, the device's end state and the platform's folder.
fn boot_with_device(
    qemu: &Qemu,
    ovmf: &std::path::Path,
    device: &str,
    name: &str,
    nonce: &[u8; 64],
) -> (Outcome, Device, PathBuf) {
    let platform = std::env::temp_dir().join(format!("seamless-e2e-platform-{name}-{}", std::process::id()));
    let secret = provision(&platform);
    let server = DeviceServer::with_config(assign_device(false));
    let nonce: String = nonce.iter().map(|b| format!("{b:02x}")).collect();
    let boot = Boot {
        config: Some(format!(
            "mode=ovmf\ntdmr_max_mib=400\ntd_mib={TD_MIB}\nlog_calls=off\ntd_timeout_s=200\novmf_device={device}\nnvme_bar0={BAR0:#x}\nnonce={nonce}\ndoe_timeout_ms=1000\n"
        )),
        memory_mib: Some(640),
        ovmf: Some(ovmf.to_path_buf()),
        spdm_port: Some(server.port),
        boot_disk: true,
        secret: Some(secret),
        timeout: Some(Duration::from_secs(300)),
        ..Boot::default()
    };
    let o = boot.run(qemu, name);
    (o, server.finish(), platform)
}

/// The happy path: OVMF accepts the NVMe TDI the host bound to it (the report checked
/// against the TSM's digest, MMIO and DMA accepted, START authorised, RUN), records its evidence
/// in RTMR[1], hands the report over the verifier's nonce and its CC event log out, and its own
/// NvmExpressDxe reads the boot disk (startup.nsh, then the marker file) by DMA into private
/// memory through the IOMMU walking the TD's S-EPT. The verifier checks the report, the evidence
/// and RTMR[1] replayed from the event log.
#[test]
fn patched_ovmf_accepts_the_nvme_tdi_and_boots_from_its_disk() {
    let Some(qemu) = Qemu::find() else { return };
    let Some(ovmf) = patched_ovmf() else { return };
    let nonce = [0x5D; 64];
    let (o, device, platform) = boot_with_device(&qemu, &ovmf, "nvme", "ovmf_device_nvme", &nonce);
    o.expect_status(33);
    for milestone in [
        "CONFIG_LOCKED (generation 1)",
        "TdxConnectDxe: TDI 0x18 accepted",
        "tdi: RUN (the TD authorised START)",
        "attestation: the OVMF TD's report over the verifier's nonce, the TDI's evidence",
        "its CC event log",
        seamless_drivers::config::OVMF_DISK_MARKER,
        "donated pages are free again",
    ] {
        assert!(o.console.contains(milestone), "{milestone:?} missing:\n{}", o.console);
    }
    assert!(device.tdis().iter().all(|t| format!("{:?}", t.state) != "Run"), "the TDI was stopped at teardown");
    let boot_s = o.figure("ovmf_device_boot_s").expect("figure ovmf_device_boot_s");
    println!("bench ovmf_device_boot_s {boot_s:.3} s (first VP.ENTER to the boot disk's marker)");
    // The same image and disk natively (QEMU's -bios, an NVMe controller with the same drive),
    // to the same marker: what running as a TD with an accepted device costs.
    let marker = seamless_drivers::config::OVMF_DISK_MARKER;
    let disk = seamless_e2e::fat::boot_disk();
    let native = seamless_e2e::native_boot_with(&qemu, &ovmf, TD_MIB, Some(&disk), marker, Duration::from_secs(300))
        .as_secs_f64();
    println!("bench ovmf_device_native_boot_s {native:.3} s (QEMU start to the marker, -bios, same disk)");
    println!("bench ovmf_device_vs_native {:.2} x", boot_s / native);

    let event_log = o.dir.join("ovmf-ccel.bin");
    let extra: [&std::ffi::OsStr; 2] = ["--event-log".as_ref(), event_log.as_os_str()];
    let v = verify_image(&o, &ovmf, &platform, &device.identity().root_der, &nonce, &extra);
    assert_eq!(v.status, 0, "attest verify rejected the OVMF TD's evidence: {:?}\n{}", v.failed(), v.json);
}

/// A host that hands OVMF an interface report other than the one the TSM took at LOCK: the
/// driver's SHA-384 of it differs from TDG.TDI.RD's digest, the device is refused (no MMIO, no
/// DMA, no START), and OVMF boots on without it to the shell.
#[test]
fn patched_ovmf_refuses_a_report_that_does_not_match_the_tsms_digest() {
    let Some(qemu) = Qemu::find() else { return };
    let Some(ovmf) = patched_ovmf() else { return };
    let (o, _device, _platform) = boot_with_device(&qemu, &ovmf, "nvme-lying-report", "ovmf_device_lying", &[7; 64]);
    o.expect_status(33);
    for milestone in [
        "host: handing the TD an interface report with its last byte changed",
        "does not match the TSM's digest",
        "TdxConnectDxe: no TDISP device accepted",
        "Shell> ",
        "donated pages are free again",
    ] {
        assert!(o.console.contains(milestone), "{milestone:?} missing:\n{}", o.console);
    }
    for never in ["mmio: BAR0", "tdi: RUN", seamless_drivers::config::OVMF_DISK_MARKER] {
        assert!(!o.console.contains(never), "{never:?}: the refused device was used:\n{}", o.console);
    }
}

#[test]
fn patched_ovmf_without_a_device_says_why_and_boots_to_the_shell() {
    let Some(qemu) = Qemu::find() else { return };
    let Some(ovmf) = patched_ovmf() else { return };
    let o = boot(&qemu, &ovmf, "none", "ovmf_device_none");
    o.expect_status(33);
    for milestone in [
        "host: TDVF TD built",
        // TdxConnectDxe's vendor TDVMCALL reached the host, which refused it (INVALID_OPERAND).
        "TdxConnectDxe: GET_TDI: the host refused (status 0x8000000000000000)",
        "TdxConnectDxe: no TDISP device accepted (Not Ready): booting on without it",
        "UEFI Interactive Shell v2.2",
        "Shell> ",
        "donated pages are free again",
    ] {
        assert!(o.console.contains(milestone), "{milestone:?} missing:\n{}", o.console);
    }
    assert!(!o.console.contains("TdxConnectDxe: TDI 0x"), "no TDI may be accepted:\n{}", o.console);

    // The patched image is still a TDVF the verifier measures as the TSM does.
    let stream = o.dir.join("artifacts.bin");
    let (status, _, err) = run_tool("firmware", &["artifacts".as_ref(), stream.as_os_str(), o.dir.as_os_str()]);
    assert_eq!(status, 0, "firmware artifacts: {err}");
    let mrtd: String = std::fs::read(o.dir.join("ovmf-mrtd.bin")).unwrap().iter().map(|b| format!("{b:02x}")).collect();
    let (status, measured, err) = run_tool("attest", &["measure".as_ref(), ovmf.as_os_str()]);
    assert_eq!(status, 0, "attest measure: {err}");
    assert_eq!(mrtd, measured.trim(), "the TD's MRTD is attest measure's");

    // TdTcg2Dxe extended the RTMRs through TDG.MR.RTMR.EXTEND: RTMR[1] (boot) is no longer zero.
    let rtmrs = std::fs::read(o.dir.join("ovmf-rtmrs.bin")).unwrap();
    assert_eq!(rtmrs.len(), 4 * 48);
    assert!(rtmrs[48..96].iter().any(|&b| b != 0), "RTMR[1] is still zero: no CC measurement in the TD");
    if let Some(s) = o.figure("ovmf_td_shell_s") {
        println!("bench ovmf_patched_td_shell_s {s:.3} s (first VP.ENTER to Shell>, no device)");
    }
}

/// A lying host names a TDI it never bound to the TD (GET_TDI answers function 0x0100): the
/// driver believes no function id until the TSM answers for it, TDG.TDI.RD finds no such TDI of
/// this TD (TDI_NOT_PRESENT, naming operand 1, RCX), nothing is accepted, and OVMF boots on to the shell.
#[test]
fn patched_ovmf_refuses_a_tdi_the_tsm_never_bound_and_boots_on() {
    let Some(qemu) = Qemu::find() else { return };
    let Some(ovmf) = patched_ovmf() else { return };
    let o = boot(&qemu, &ovmf, "phantom", "ovmf_device_phantom");
    o.expect_status(33);
    for milestone in [
        "TdxConnectDxe: TDG.TDI.RD state of TDI 0x100: status 0xC000F11300000001",
        "TdxConnectDxe: no TDISP device accepted (Access Denied): booting on without it",
        "Shell> ",
        "donated pages are free again",
    ] {
        assert!(o.console.contains(milestone), "{milestone:?} missing:\n{}", o.console);
    }
    for never in ["GET_REPORT", "MAP_MMIO", "TdxConnectDxe: TDI 0x100 ("] {
        assert!(!o.console.contains(never), "{never:?}: the flow went past TDG.TDI.RD:\n{}", o.console);
    }
}

/// `ovmf-patches/series` names every patch in the directory once, in `git am` format, each with
/// a subject and a body that says why (the series is reviewed one patch at a time).
#[test]
fn the_series_names_every_patch_once_each_with_a_reason() {
    let dir = workspace().join("ovmf-patches");
    let series = std::fs::read_to_string(dir.join("series")).unwrap();
    let named: Vec<&str> =
        series.lines().map(|l| l.split('#').next().unwrap_or("").trim()).filter(|l| !l.is_empty()).collect();
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".patch"))
        .collect();
    on_disk.sort();
    let mut sorted = named.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), named.len(), "series names a patch twice: {named:?}");
    assert_eq!(sorted, on_disk, "series and the .patch files differ");
    for name in named {
        let text = std::fs::read_to_string(dir.join(name)).unwrap();
        let subject =
            text.lines().find_map(|l| l.strip_prefix("Subject: ")).unwrap_or_else(|| panic!("{name}: no Subject"));
        assert!(!subject.trim().is_empty(), "{name}: empty subject");
        let headers_end = text.find("\n\n").unwrap_or_else(|| panic!("{name}: no body"));
        let body = &text[headers_end..text.find("\n---\n").unwrap_or_else(|| panic!("{name}: no diffstat"))];
        assert!(body.split_whitespace().count() >= 20, "{name}: the body does not say why");
        assert!(text.contains("\ndiff --git "), "{name}: no diff");
    }
}
