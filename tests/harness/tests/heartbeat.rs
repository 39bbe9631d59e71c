//! The host keeps the heartbeat a device asked for (the TSM has no clock): SPDM.CONNECT reports
//! the HeartbeatPeriod, and `tsm_client::host::device::keep_alive` sends SPDM.MNG HEARTBEAT every
//! half period while the TDI runs, on the host's clock (here a fake one the VMM's "work"
//! advances).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use seamless_harness::assign::{device_config, pfn, Assignment, DeviceMailbox};
use seamless_harness::driver::Machine;
use tdisp_device::Device;
use tsm::error::DeviceFault;
use tsm::pdev::PdevState;
use tsm::tdi::TdiState;
use tsm_client::host::device::{self, Clock, Connected, Heartbeat, Running};
use tsm_client::host::PumpStats;
use tsm_client::HostError;

const MIB: u64 = 1 << 20;

/// A fake clock: it moves only when the VMM's work in the test moves it.
struct Stepped<'a>(&'a std::cell::Cell<u64>);

impl Clock for Stepped<'_> {
    fn now_ms(&mut self) -> u64 {
        self.0.get()
    }
}

/// A running assignment with `dev`.
fn running(dev: &mut Device) -> (Machine, Assignment) {
    let mut m = Machine::configured(64 * MIB);
    let td = m.running_td();
    let a = m.assign(dev, &td);
    (m, a)
}

/// The session's request sequence number: every message the TSM sealed in it.
fn sealed(m: &Machine, a: &Assignment) -> u64 {
    m.tsm.pdev_summary(pfn(a.pdev)).unwrap().session.unwrap().request.sequence
}

#[test]
fn connect_reports_the_period_the_device_asked_for() {
    let mut dev = Device::new(device_config()).unwrap();
    let (_, a) = running(&mut dev);
    // tdisp-device asks a requester with HBEAT_CAP for 60 s.
    assert_eq!(a.spdm, Connected { version: 0x13, measured_in_session: true, heartbeat_period_s: 60 });
}

#[test]
fn the_schedule_is_half_the_period_after_the_last_message() {
    let c = Connected { version: 0x12, measured_in_session: true, heartbeat_period_s: 60 };
    let mut h = Heartbeat::new(&c, 1_000);
    assert_eq!(h.next_ms(), Some(31_000));
    assert!(!h.due(30_999) && h.due(31_000));
    h.traffic(20_000);
    assert_eq!(h.next_ms(), Some(50_000), "other session traffic pushes it back");
    let none = Heartbeat::new(&Connected { heartbeat_period_s: 0, ..c }, 0);
    assert_eq!(none.next_ms(), None);
    assert!(!none.due(u64::MAX), "no period asked, no heartbeat ever");
    let mut h = Heartbeat::new(&Connected { heartbeat_period_s: 255, ..c }, u64::MAX - 10);
    assert_eq!(h.next_ms(), Some(u64::MAX), "saturates, never wraps into the past");
    h.traffic(u64::MAX);
    assert!(h.due(u64::MAX));
}

/// Ten minutes of a running TDI in 7-second units of VMM work: a HEARTBEAT whenever 30 s have
/// passed since the last, each one HEARTBEAT / HEARTBEAT_ACK through the TSM; the loop ends when
/// the work says the TDI stopped.
#[test]
fn keep_alive_sends_heartbeat_every_half_period_while_the_tdi_runs() {
    let mut dev = Device::new(device_config()).unwrap();
    let (mut m, a) = running(&mut dev);
    let before = sealed(&m, &a);
    let mut stats = PumpStats::default();
    let mut units = 0;
    let now = std::cell::Cell::new(0u64);
    let sent = device::keep_alive(
        &mut m,
        &mut DeviceMailbox(&mut dev),
        &a.progress(),
        &mut Stepped(&now),
        &mut stats,
        |_, _| {
            units += 1;
            now.set(now.get() + 7_000);
            Ok(if now.get() <= 600_000 { Running::Yes } else { Running::Stopped })
        },
    )
    .unwrap();
    // Heartbeats at 35, 70, 105, ... s: each the first unit at least 30 s after the last.
    assert_eq!(sent, 17, "{units} units of work");
    assert_eq!(sealed(&m, &a) - before, 17, "one sealed HEARTBEAT each");
    assert_eq!(stats.exchanges, 17);
    let s = m.tsm.pdev_summary(pfn(a.pdev)).unwrap();
    assert_eq!((s.state, s.fault), (PdevState::Connected, None));
    assert_eq!(m.tsm.tdi_summary(pfn(a.tdi)).unwrap().state, TdiState::Run);
}

/// A device that asked for no heartbeat (its requester announced none, so the period is 0)
/// gets none, however long the TDI runs.
#[test]
fn no_period_no_heartbeat() {
    let mut dev = Device::new(device_config()).unwrap();
    let (mut m, mut a) = running(&mut dev);
    a.spdm.heartbeat_period_s = 0;
    let now = std::cell::Cell::new(0u64);
    let before = sealed(&m, &a);
    let sent = device::keep_alive(
        &mut m,
        &mut DeviceMailbox(&mut dev),
        &a.progress(),
        &mut Stepped(&now),
        &mut PumpStats::default(),
        |_, _| {
            now.set(now.get() + 60_000);
            Ok(if now.get() < 3_600_000 { Running::Yes } else { Running::Stopped })
        },
    )
    .unwrap();
    assert_eq!((sent, sealed(&m, &a) - before), (0, 0));
}

/// A device that answers HEARTBEAT wrongly: the loop stops with the call's error, and the PDEV
/// and its running TDI are in ERROR (the TSM's doing, not the loop's).
#[test]
fn a_wrong_heartbeat_ack_stops_the_loop_and_the_tdi() {
    let mut dev = Device::new(device_config()).unwrap();
    let (mut m, a) = running(&mut dev);
    dev.faults_mut().apply_spec("truncate=heartbeat-ack").unwrap();
    let now = std::cell::Cell::new(0u64);
    let r = device::keep_alive(
        &mut m,
        &mut DeviceMailbox(&mut dev),
        &a.progress(),
        &mut Stepped(&now),
        &mut PumpStats::default(),
        |_, _| {
            now.set(now.get() + 10_000);
            Ok(Running::Yes)
        },
    );
    assert!(matches!(r, Err(HostError::Call { leaf: "TDH.SPDM.MNG HEARTBEAT", .. })), "{r:?}");
    let s = m.tsm.pdev_summary(pfn(a.pdev)).unwrap();
    assert_eq!(s.state, PdevState::Error);
    assert!(matches!(s.fault, Some(DeviceFault::Spdm(_))), "{:?}", s.fault);
    assert_eq!(m.tsm.tdi_summary(pfn(a.tdi)).unwrap().state, TdiState::Error);
}
