//! The one order in which an assignment comes apart (TDX Connect's unbind, then the TD):
//!
//! ```text
//! TDI.STOP (blocks the TDI's MMIO and DMA) → MMIO.BLOCK, DMAR.BLOCK (already blocked: a warning)
//! → KICK, TRACK, IQ.INV if a DMA entry exists (the blocks retire for CPU and IOTLB) → MMIO.UNMAP
//! → DMAR.REMOVE
//! → TDI.REMOVE → KM STOP, STREAM.BLOCK, STREAM.DELETE → SPDM.DISCONNECT, SPDM.DELETE
//! → the TD: KICK, VPFLUSHDONE, RECLAIM → IOMMU.CLEAR
//! ```
//!
//! [`unbind`] walks it for what exists (per [`Assignment`]). The teardown of a completed flow
//! runs it with [`Policy::Strict`]: the first refusal is the error. The cleanup after a failed
//! flow runs the same walk with [`Policy::Lenient`]: a refusal is counted and the walk goes on
//! (a call the TSM refuses changes nothing), and every donated page is then checked with RDMD.
//! There is no second order to keep in step with the first.

use core::fmt;

use tsm::abi::host::leaf;
use tsm::{Regs, Status};

use super::device::{iommu_clear, Assignment};
use super::td::{destroy, held, Held, TdPages};
use super::{call, check, device_call, raw, DeviceLeaf, HostError, HostMemory, PumpStats, Seamcall};
use crate::doe::Doe;
use crate::PAGE;

/// What to do with a refusal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Stop at the first: the teardown of a flow that completed.
    Strict,
    /// Count it and go on: the cleanup after a failure.
    Lenient,
}

/// What the host holds besides the device: the TD the TDI is bound to (and its vCPUs), and
/// whether the IOMMU was set up.
#[derive(Clone, Copy, Debug)]
pub struct Holdings<'a> {
    /// The TD and its vCPUs' TDVPRs.
    pub td: Option<(&'a TdPages, &'a [u64])>,
    /// Whether TDH.IOMMU.SETUP ran.
    pub iommu: bool,
}

/// What an unbind did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Unbound {
    /// Calls the TSM refused (the object's state did not allow them).
    pub refused: u32,
    /// The first refusal.
    pub first_refusal: Option<HostError>,
    /// The donated pages afterwards (filled by [`cleanup`]).
    pub pages: Held,
}

impl fmt::Display for Unbound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.first_refusal {
            None => f.write_str("every teardown call succeeded")?,
            Some(e) => write!(f, "{} teardown calls refused, the first: {e}", self.refused)?,
        }
        let p = self.pages;
        if p.held == 0 {
            write!(f, "; all {} donated pages free again", p.free)
        } else {
            write!(
                f,
                "; {} of {} donated pages free again, {} still held (the first at {:#x})",
                p.free,
                p.free + p.held,
                p.held,
                p.first
            )
        }
    }
}

struct Walk {
    policy: Policy,
    out: Unbound,
}

impl Walk {
    /// One step's outcome: under [`Policy::Strict`] a refusal ends the walk (`Err`), under
    /// [`Policy::Lenient`] it is counted.
    fn step<T>(&mut self, r: Result<T, HostError>) -> Result<(), HostError> {
        match r {
            Ok(_) => Ok(()),
            Err(e) => {
                if self.out.refused == 0 {
                    self.out.first_refusal = Some(e);
                }
                self.out.refused += 1;
                match self.policy {
                    Policy::Strict => Err(e),
                    Policy::Lenient => Ok(()),
                }
            }
        }
    }
}

/// A block call: done now, or done already (by STOP).
fn blocked(name: &'static str, r: Regs) -> Result<(), HostError> {
    if r.status() == Status::GPA_RANGE_ALREADY_BLOCKED {
        return Ok(());
    }
    check(name, r).map(|_| ())
}

/// Takes apart what exists of `a` and `held`, in the one order (module doc).
///
/// # Errors
/// Under [`Policy::Strict`], the first refusal; under [`Policy::Lenient`], never (refusals are
/// counted in the result).
pub fn unbind<H: Seamcall + HostMemory + ?Sized, D: Doe + ?Sized>(
    h: &mut H,
    doe: &mut D,
    a: &Assignment,
    holdings: Holdings<'_>,
    policy: Policy,
    stats: &mut PumpStats,
) -> Result<Unbound, HostError> {
    let mut w = Walk { policy, out: Unbound::default() };
    let dev = |name, leaf, rcx, r9| DeviceLeaf { name, leaf, rcx, r9 };
    if a.tdi != 0 {
        w.step(super::device::stop(h, doe, a, stats))?;
        if let Some((td, vcpus)) = holdings.td {
            // STOP blocked the TDI's MMIO and DMA already; a VMM that blocks them anyway (as this
            // one does, to not depend on it) gets the GPA_RANGE_ALREADY_BLOCKED warning.
            for i in 0..a.mapped {
                let r = raw(h, Regs::call(leaf::MMIO_BLOCK, a.mmio_gpa + i * PAGE, td.tdr, 0, 0));
                w.step(blocked("TDH.MMIO.BLOCK", r))?;
            }
            if a.dma {
                w.step(blocked("TDH.DMAR.BLOCK", raw(h, Regs::call(leaf::DMAR_BLOCK, a.tdi, 0, 0, 0))))?;
            }
            if a.mapped > 0 || a.dma {
                for &v in vcpus {
                    w.step(call(h, "TDH.VP.KICK", Regs::call(leaf::VP_KICK, v, 0, 0, 0)))?;
                }
                w.step(call(h, "TDH.MEM.TRACK", Regs::call(leaf::MEM_TRACK, td.tdr, 0, 0, 0)))?;
            }
            // Only a TD with a DMA entry has an IOMMU domain, hence an IOTLB to invalidate; for
            // one without, TRACK alone retires the blocks and IQ.INV is refused.
            if a.dma {
                w.step(call(h, "TDH.IQ.INV.REQUEST", Regs::call(leaf::IQ_INV_REQUEST, td.tdr, 0, 0, 0)))?;
            }
            for i in 0..a.mapped {
                let r = Regs::call(leaf::MMIO_UNMAP, a.mmio_gpa + i * PAGE, td.tdr, 0, 0);
                w.step(call(h, "TDH.MMIO.UNMAP", r))?;
            }
        }
        if a.dma {
            w.step(call(h, "TDH.DMAR.REMOVE", Regs::call(leaf::DMAR_REMOVE, a.tdi, 0, 0, 0)))?;
        }
        w.step(call(h, "TDH.TDI.REMOVE", Regs::call(leaf::TDI_REMOVE, a.tdi, 0, 0, 0)))?;
    }
    if a.ide {
        let km = dev("TDH.IDE.STREAM.KM STOP", leaf::IDE_STREAM_KM, a.pdev, a.stream | 2 << 8);
        w.step(device_call(h, doe, a.pdev, km, a.msg, stats))?;
        let r = Regs::call(leaf::IDE_STREAM_BLOCK, a.pdev, a.stream, 0, 0);
        w.step(call(h, "TDH.IDE.STREAM.BLOCK", r))?;
        let r = Regs::call(leaf::IDE_STREAM_DELETE, a.pdev, a.stream, 0, 0);
        w.step(call(h, "TDH.IDE.STREAM.DELETE", r))?;
    }
    if a.pdev != 0 {
        // A PDEV in ERROR (after ABORT) is not CONNECTED: DISCONNECT is refused and DELETE takes
        // it as it is.
        let disconnect = dev("TDH.SPDM.DISCONNECT", leaf::SPDM_DISCONNECT, a.pdev, 0);
        w.step(device_call(h, doe, a.pdev, disconnect, a.msg, stats))?;
        w.step(call(h, "TDH.SPDM.DELETE", Regs::call(leaf::SPDM_DELETE, a.pdev, 0, 0, 0)))?;
    }
    if let Some((td, vcpus)) = holdings.td {
        w.step(destroy(h, td.tdr, vcpus))?;
    }
    if holdings.iommu {
        w.step(iommu_clear(h))?;
    }
    Ok(w.out)
}

/// The teardown of a completed flow: [`unbind`] under [`Policy::Strict`].
///
/// # Errors
/// The first refusal.
pub fn teardown<H: Seamcall + HostMemory + ?Sized, D: Doe + ?Sized>(
    h: &mut H,
    doe: &mut D,
    a: &Assignment,
    holdings: Holdings<'_>,
    stats: &mut PumpStats,
) -> Result<(), HostError> {
    unbind(h, doe, a, holdings, Policy::Strict, stats).map(|_| ())
}

/// The cleanup after a failed flow: [`unbind`] under [`Policy::Lenient`], then every donated
/// page checked with RDMD.
pub fn cleanup<H: Seamcall + HostMemory + ?Sized, D: Doe + ?Sized>(
    h: &mut H,
    doe: &mut D,
    a: &Assignment,
    holdings: Holdings<'_>,
    stats: &mut PumpStats,
) -> Unbound {
    let mut out = unbind(h, doe, a, holdings, Policy::Lenient, stats).unwrap_or_else(|e| Unbound {
        refused: 1,
        first_refusal: Some(e),
        pages: Held::default(),
    });
    match held(h) {
        Ok(p) => out.pages = p,
        Err(e) => {
            if out.refused == 0 {
                out.first_refusal = Some(e);
            }
            out.refused += 1;
        }
    }
    out
}
