//! Plan probe (mode `attack`): the TD runs the probe its host names in the answer to a request
//! (`tsm_client::guest::probe`), with real instructions, and reports the outcome. Guest calls go
//! through TDCALL as they are; loads and SEAMCALL through `arch`'s probe instructions, after
//! which the exception handler resumes (`arch::caught`); the two accessors are the TD's own,
//! which must refuse before any access.

use tsm_client::guest::probe::{Kind, Outcome, Probe, ProbeStep};
use tsm_client::guest::{put_shared, take_shared, DEMO_LAYOUT};
use zerocopy::byteorder::little_endian::U64;
use zerocopy::FromBytes;

use crate::arch::{self, Caught};
use crate::td::Td;
use crate::tdcall::TdcallRegs;

/// The secret the TD leaves in every register the VMCALL ABI does not expose.
pub const SECRET: u64 = 0x5EC2_E7A5_0000_7D00;

/// Runs the probe of the step in the shared page and puts its outcome there. Returns the
/// secret when the probe is [`Probe::Secrets`]: the request is then made again with it in the
/// registers.
pub fn run(td: &mut Td) -> Option<u64> {
    let mut bytes = [0u8; core::mem::size_of::<ProbeStep>()];
    let step = match take_shared(td, &mut bytes) {
        Ok(n) if n == bytes.len() => ProbeStep::read_from_bytes(&bytes).ok(),
        _ => None,
    };
    let Some(step) = step else {
        put_shared(td, zerocopy::IntoBytes::as_bytes(&Outcome::new(0, Kind::Unknown)));
        return None;
    };
    let (outcome, secret) = match Probe::from_u8(step.probe) {
        Some(p) => outcome(p, &step),
        None => (Outcome::new(step.probe, Kind::Unknown), None),
    };
    put_shared(td, zerocopy::IntoBytes::as_bytes(&outcome));
    secret
}

/// What probe `p` comes to.
fn outcome(p: Probe, step: &ProbeStep) -> (Outcome, Option<u64>) {
    let l = DEMO_LAYOUT;
    let n = p as u8;
    if let Some(regs) = p.regs(&l, step) {
        let mut r = TdcallRegs::from_regs(&regs);
        arch::tdcall(&mut r);
        let mut o = Outcome::new(n, Kind::Status);
        o.status = U64::new(r.rax);
        return (o, None);
    }
    let value = |v: u64| {
        let mut o = Outcome::new(n, Kind::Value);
        o.value = U64::new(v);
        o
    };
    let caught = |c: Caught| match c {
        Caught::Ve(info) => {
            let mut o = Outcome::new(n, Kind::Ve);
            o.reason = U64::new(u64::from(info.reason));
            o.qualification = U64::new(info.qualification);
            o.gpa = U64::new(info.gpa);
            o
        }
        Caught::Exception(6) => Outcome::new(n, Kind::Ud),
        Caught::Exception(v) => {
            let mut o = Outcome::new(n, Kind::Unknown);
            o.reason = U64::new(v);
            o
        }
    };
    let o = match p {
        Probe::MmioAccessorOnPrivateMemory => match arch::mmio_read_u32(l.work) {
            None => Outcome::new(n, Kind::Refused),
            Some(v) => value(u64::from(v)),
        },
        Probe::PrivateAccessorOnDevicePage => {
            let mut b = [0u8; 8];
            match arch::private_read(l.bar_gpa, &mut b) {
                None => Outcome::new(n, Kind::Refused),
                Some(()) => value(u64::from_le_bytes(b)),
            }
        }
        Probe::Seamcall => arch::probe_seamcall().map_or_else(caught, |()| value(0)),
        Probe::Secrets => {
            let mut o = Outcome::new(n, Kind::Secrets);
            o.value = U64::new(SECRET);
            return (o, Some(SECRET));
        }
        Probe::LoadUnacceptedMmio => {
            // Mapped in its own tables as a driver that forgot to accept the page would map it:
            // the TSM, not the TD's page tables, must stop the load.
            let gpa = step.gpa.get();
            let pages = gpa.saturating_sub(l.bar_gpa) / 4096 + 1;
            match arch::map_device(l.bar_gpa, pages) {
                Some(()) => arch::probe_load(gpa).map_or_else(caught, value),
                None => Outcome::new(n, Kind::Refused),
            }
        }
        // The other loads: the TSM decides what the access comes to.
        _ => arch::probe_load(step.gpa.get()).map_or_else(caught, value),
    };
    (o, None)
}
