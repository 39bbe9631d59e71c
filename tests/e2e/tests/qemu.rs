//! The firmware in QEMU (TCG): boot to a configured TSM, SPDM.CONNECT through the NVMe DOE
//! mailbox to `tdisp-device`, and the failure paths a run can take (bad configuration, no
//! device, a device that drops requests, an exception).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{Ipv4Addr, TcpListener};

use seamless_e2e::{decode_defmt, Boot, DeviceServer, Qemu};
use tdisp_device::server::{command, read_frame, write_frame, TRANSPORT_PCI_DOE};
use tdisp_device::{Config, Device};

macro_rules! qemu_or_skip {
    () => {
        match Qemu::find() {
            Some(q) => q,
            None => return,
        }
    };
}

fn print_figures(o: &seamless_e2e::Outcome) {
    for l in o.console.lines().filter(|l| l.starts_with("figure ")) {
        println!("{l}");
    }
}

#[test]
fn spdm_connect_happy_path() {
    let qemu = qemu_or_skip!();
    let device = DeviceServer::start();
    let boot = Boot { spdm_port: Some(device.port), secret: Some(seamless_e2e::throwaway_secret()), ..Boot::default() };
    let o = boot.run(&qemu, "spdm_connect_happy_path");
    let device = device.finish();
    o.expect_status(33);
    assert!(o.console.contains("NVMe 1b36:0010 at 00:03.0"), "{}", o.console);
    assert!(o.console.contains("DOE capability at 0x100"), "{}", o.console);
    assert!(o.console.contains("platform secret provisioned (128-byte blob)"), "{}", o.console);
    assert!(o.console.contains("spdm: connected: SPDM 1."), "{}", o.console);
    assert!(o.console.contains(" DOE exchanges, "), "{}", o.console);
    // The device, not just the firmware, saw the handshake through to a secure session.
    assert_eq!(device.session_count(), 1, "sessions the device holds");
    let connect = o.figure("spdm_connect_qemu_ms").expect("spdm_connect_qemu_ms");
    let ready = o.figure("boot_to_tsm_ready_ms").expect("boot_to_tsm_ready_ms");
    let image = o.figure("firmware_image_kib").expect("firmware_image_kib");
    assert!(connect > 0.0 && ready > 0.0 && image > 0.0);
    // The firmware's clock agrees with the host's: what it measured fits in QEMU's wall time
    // (a TSC calibrated too slow would report more milliseconds than passed).
    let wall_ms = o.wall.as_secs_f64() * 1000.0;
    assert!(ready + connect < wall_ms, "ready {ready} ms + connect {connect} ms vs QEMU wall {wall_ms} ms");
    print_figures(&o);
    println!("qemu wall {:?}", o.wall);

    // The defmt stream on COM2 decodes against the TSM's image and carries its per-call log.
    if let Some(log) = decode_defmt(&o.defmt) {
        assert!(log.contains("host TDH.SYS.CONFIG ok"), "decoded log:\n{log}");
        assert!(log.contains("host TDH.SPDM.CONNECT ok"), "decoded log:\n{log}");
        std::fs::write(o.dir.join("firmware.log"), &log).expect("write firmware.log");
    }
}

#[test]
fn boot_mode_reaches_tsm_ready_without_a_device() {
    let qemu = qemu_or_skip!();
    let o = Boot { config: Some("mode=boot\n".into()), ..Boot::default() }.run(&qemu, "boot_mode");
    o.expect_status(33);
    assert!(o.console.contains("tsm: configured over 1 TDMR"), "{}", o.console);
    assert!(o.console.contains("platform secret not provisioned"), "{}", o.console);
    assert!(o.figure("boot_to_tsm_ready_ms").is_some(), "{}", o.console);
    assert!(o.console.contains("tsc: ") && o.console.contains("(PIT channel 2)"), "{}", o.console);
}

#[test]
fn connect_rejects_a_machine_without_nvme() {
    let qemu = qemu_or_skip!();
    let o = Boot::default().run(&qemu, "no_nvme");
    o.expect_status(35);
    assert!(o.console.contains("error: PCIe: no NVMe function"), "{}", o.console);
}

#[test]
fn run_configuration_rejects_unknown_keys_and_values() {
    let qemu = qemu_or_skip!();
    let o = Boot { config: Some("mode=boot\nturbo=on\n".into()), ..Boot::default() }.run(&qemu, "bad_key");
    o.expect_status(35);
    assert!(o.console.contains("opt/seamless/config line 2: unknown key"), "{}", o.console);
    let o = Boot { config: Some("doe_timeout_ms=0\n".into()), ..Boot::default() }.run(&qemu, "bad_value");
    o.expect_status(35);
    assert!(o.console.contains("line 1: doe_timeout_ms is 1..60000"), "{}", o.console);
}

#[test]
fn platform_secret_of_the_wrong_size_or_form_is_rejected() {
    let qemu = qemu_or_skip!();
    let o = Boot { config: Some("mode=boot\n".into()), secret: Some(vec![1; 31]), ..Boot::default() }
        .run(&qemu, "short_secret");
    o.expect_status(35);
    assert!(o.console.contains("opt/seamless/platform-secret: 31 bytes, expected 128"), "{}", o.console);
    // The right size, but not a blob: refused before the TSM sees it.
    let o = Boot { config: Some("mode=boot\n".into()), secret: Some(vec![1; 128]), ..Boot::default() }
        .run(&qemu, "bad_blob");
    o.expect_status(35);
    assert!(o.console.contains("opt/seamless/platform-secret: "), "{}", o.console);
    assert!(!o.console.contains("tsm: provisioned"), "{}", o.console);
}

#[test]
fn tdmr_too_small_for_the_ram_is_rejected() {
    let qemu = qemu_or_skip!();
    // 8 MiB of RAM: the image and the host pages leave no 4 MiB TDMR.
    let o = Boot { config: Some("mode=boot\n".into()), memory_mib: Some(8), ..Boot::default() }.run(&qemu, "small_ram");
    o.expect_status(35);
    assert!(o.console.contains("error: memory layout: only"), "{}", o.console);
}

#[test]
fn a_cpu_without_rdrand_is_refused() {
    let qemu = qemu_or_skip!();
    let boot = Boot { config: Some("mode=boot\n".into()), cpu: Some("max,rdrand=off".into()), ..Boot::default() };
    let o = boot.run(&qemu, "no_rdrand");
    o.expect_status(35);
    assert!(o.console.contains("error: entropy: CPUID says no RDRAND"), "{}", o.console);
    assert!(!o.console.contains("tsm: configured"), "{}", o.console);
}

#[test]
fn exceptions_are_reported_readably() {
    let qemu = qemu_or_skip!();
    let o = Boot { config: Some("mode=fault\n".into()), ..Boot::default() }.run(&qemu, "page_fault");
    o.expect_status(35);
    assert!(o.console.contains("exception #PF (page fault), vector 14, error code 0x0"), "{}", o.console);
    assert!(o.console.contains("cr2=0x00007f00deadb000: non-present page on read in supervisor mode"), "{}", o.console);
    assert!(o.console.contains("rip=0x"), "{}", o.console);
}

#[test]
fn a_stack_overflow_hits_the_guard_page_and_is_reported_from_the_double_fault_stack() {
    let qemu = qemu_or_skip!();
    let o = Boot { config: Some("mode=overflow\n".into()), ..Boot::default() }.run(&qemu, "stack_overflow");
    o.expect_status(35);
    assert!(o.console.contains("exception #DF (double fault), vector 8, error code 0x0"), "{}", o.console);
    assert!(o.console.contains("cr2 is in the boot stack's guard page: stack overflow"), "{}", o.console);
}

/// A responder that answers every request with "no response" (NORMAL, length 0): QEMU then
/// sets neither Data Object Ready nor ERROR, so only the DOE timeout and ABORT get out.
fn dropping_responder() -> (u16, std::thread::JoinHandle<u32>) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let t = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let mut dropped = 0;
        while let Ok(Some(f)) = read_frame(&mut s) {
            if f.command != command::NORMAL {
                break;
            }
            dropped += 1;
            if write_frame(&mut s, command::NORMAL, TRANSPORT_PCI_DOE, &[]).is_err() {
                break;
            }
        }
        dropped
    });
    (port, t)
}

#[test]
fn a_device_that_drops_requests_times_out_and_exits_cleanly() {
    let qemu = qemu_or_skip!();
    let (port, responder) = dropping_responder();
    let boot = Boot { spdm_port: Some(port), config: Some("doe_timeout_ms=50\n".into()), ..Boot::default() };
    let o = boot.run(&qemu, "dropping_device");
    o.expect_status(35);
    // QEMU answers DOE discovery itself; the first SPDM request is the one dropped.
    assert!(
        o.console.contains("error: SPDM.CONNECT: TDH.SPDM.CONNECT: DOE mailbox: no response within"),
        "{}",
        o.console
    );
    assert!(o.console.contains("(aborted) after 3 exchanges"), "{}", o.console);
    assert_eq!(responder.join().expect("responder"), 1, "requests the responder saw");
}

/// The real device for `answers` requests, then the responder process "dies": the socket closes.
fn vanishing_responder(answers: usize) -> (u16, std::thread::JoinHandle<usize>) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let t = std::thread::spawn(move || {
        let mut device = Device::new(Config::default()).expect("device");
        let (mut s, _) = listener.accept().expect("accept");
        let mut answered = 0;
        while answered < answers {
            let Ok(Some(f)) = read_frame(&mut s) else { break };
            let reply = device.handle(&f.payload).unwrap_or_default();
            if write_frame(&mut s, command::NORMAL, TRANSPORT_PCI_DOE, &reply).is_err() {
                break;
            }
            answered += 1;
        }
        answered
    });
    (port, t)
}

#[test]
fn a_responder_that_disappears_mid_handshake_is_reported_and_the_firmware_exits_cleanly() {
    let qemu = qemu_or_skip!();
    // GET_VERSION and GET_CAPABILITIES answered, then the socket closes.
    let (port, responder) = vanishing_responder(2);
    let boot = Boot { spdm_port: Some(port), config: Some("doe_timeout_ms=100\n".into()), ..Boot::default() };
    let o = boot.run(&qemu, "vanishing_responder");
    assert_eq!(responder.join().expect("responder"), 2, "requests answered");
    o.expect_status(35);
    assert!(
        o.console.contains("error: SPDM.CONNECT: TDH.SPDM.CONNECT: DOE mailbox: no response within"),
        "{}",
        o.console
    );
    assert!(o.console.contains("(aborted) after 5 exchanges"), "{}", o.console);
}
