//! The global invariants from the test side: [`check`] runs the TSM's own audit
//! ([`tsm::Tsm::check_invariants`]) with a scratch bitmap, and [`check_device`] compares what
//! the TSM last confirmed of each interface with what the in-process device says.

use tdisp_device::Device;
use tsm::audit::Violation;
use tsm::tdi::TdiState;
use tsm::Tsm;

use crate::HostPlatform;

/// Every invariant of the TSM's state.
///
/// # Errors
/// The first [`Violation`].
pub fn check(tsm: &Tsm<HostPlatform>) -> Result<(), Violation> {
    let mut scratch = vec![0u64; tsm.audit_scratch_words()];
    tsm.check_invariants(&mut scratch)
}

/// Panics with `what` and the violation if an invariant is broken.
pub fn assert_invariants(tsm: &Tsm<HostPlatform>, what: &dyn core::fmt::Debug) {
    if let Err(v) = check(tsm) {
        panic!("invariant broken after {what:?}: {v:?}");
    }
}

/// A TDI the TSM holds in RUN (no flow outstanding: the TSM is not waiting for the device) is
/// RUN on the device too: the device's last confirmed state is RUN. Callers skip it while a
/// fault switch lets the device leave RUN on its own.
///
/// # Errors
/// A description of the first interface that disagrees.
pub fn check_device(tsm: &Tsm<HostPlatform>, device: &Device) -> Result<(), String> {
    for b in tsm.bound_interfaces().filter(|b| b.state == TdiState::Run && !b.flow) {
        let on_device = device.tdis().iter().find(|d| d.config.function_id == b.function).map(|d| d.state);
        if on_device != Some(tsm::tdisp::TdiState::Run) {
            return Err(format!(
                "TDI {:?} (function {:#x}) is RUN in the TSM, {on_device:?} on the device",
                b.page, b.function
            ));
        }
    }
    Ok(())
}
