//! Device assignment, the host's part: the PDEV created and connected over SPDM, an IDE stream
//! with keys, the TDI created for a TD and locked (the interface report stays in the message
//! page), its MMIO imported and mapped, the trusted IOMMU's entry added, the TDI started once the
//! guest authorised it. The host's side of the guest's requests is [`super::td_device`].

use tsm::abi::host::leaf;
use tsm::abi::host_pdev::mng;
use tsm::pdev::MSG_BYTES;
use tsm::{Regs, Status};

use super::td::{map_tables, TdPages};
use super::{call, check, device_call, donate, raw, scratch, DeviceLeaf, HostError, HostMemory, PumpStats, Seamcall};
use crate::doe::Doe;
use crate::PAGE;

/// An assignment as far as it got: what exists, so that [`super::unbind`] takes apart exactly
/// that. A zero page (or `false`) means the step did not happen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Assignment {
    /// PDEV page.
    pub pdev: u64,
    /// Message page (the host's, outside the TDMRs).
    pub msg: u64,
    /// Whether the IDE stream was created (its index may be 0).
    pub ide: bool,
    /// IDE stream index.
    pub stream: u64,
    /// TDI page.
    pub tdi: u64,
    /// Lock generation.
    pub generation: u64,
    /// Interface report length in the message page, right after TDI.LOCK.
    pub report_len: usize,
    /// GPA of the first MMIO page mapped.
    pub mmio_gpa: u64,
    /// MMIO pages mapped with MMIO.MAP, from `mmio_gpa` on.
    pub mapped: u64,
    /// Whether the DMA remapping entry was added.
    pub dma: bool,
    /// What SPDM.CONNECT reported (zero until it succeeded).
    pub spdm: Connected,
}

/// What SPDM.CONNECT reports when it succeeds (RCX).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Connected {
    /// The SPDM version negotiated (0x12, 0x13).
    pub version: u8,
    /// The measurements were taken inside the session; else in the clear, outside it (a device
    /// that refused them inside: the TSM's measurement policy, docs/protocols.md).
    pub measured_in_session: bool,
    /// The HeartbeatPeriod the device asked for, in seconds (0: none): the host keeps it
    /// ([`keep_alive`]), since the TSM has no clock.
    pub heartbeat_period_s: u8,
}

impl Assignment {
    fn leaf(&self, name: &'static str, leaf: u64, rcx: u64, r9: u64) -> DeviceLeaf {
        DeviceLeaf { name, leaf, rcx, r9 }
    }
}

/// TDH.IOMMU.SETUP with a fresh root table; returns it.
///
/// # Errors
/// [`HostError`].
pub fn iommu_setup<H: Seamcall + HostMemory + ?Sized>(h: &mut H) -> Result<u64, HostError> {
    let root = donate(h)?;
    call(h, "TDH.IOMMU.SETUP", Regs::call(leaf::IOMMU_SETUP, root, 0, 0, 0))?;
    Ok(root)
}

/// TDH.IOMMU.CLEAR until the root table comes back, each frame given back to the host; returns
/// how many frames came back.
///
/// # Errors
/// [`HostError`].
pub fn iommu_clear<H: Seamcall + HostMemory + ?Sized>(h: &mut H) -> Result<u64, HostError> {
    let mut n = 0;
    loop {
        let r = call(h, "TDH.IOMMU.CLEAR", Regs::call(leaf::IOMMU_CLEAR, 0, 0, 0, 0))?;
        n += 1;
        h.release(r.rcx);
        if r.rdx == 0 {
            return Ok(n);
        }
    }
}

/// TDH.SPDM.CREATE for the function `function` and a message page; the assignment begins.
///
/// # Errors
/// [`HostError`].
pub fn pdev_create<H: Seamcall + HostMemory + ?Sized>(h: &mut H, function: u32) -> Result<Assignment, HostError> {
    let pdev = donate(h)?;
    call(h, "TDH.SPDM.CREATE", Regs::call(leaf::SPDM_CREATE, pdev, u64::from(function), 0, 0))?;
    let mut a = Assignment { pdev, ..Assignment::default() };
    a.msg = scratch(h)?;
    Ok(a)
}

/// TDH.SPDM.CONNECT through the mailbox; what it reports is kept in `a.spdm`.
///
/// # Errors
/// [`HostError`].
pub fn connect<H: Seamcall + HostMemory + ?Sized, D: Doe + ?Sized>(
    h: &mut H,
    doe: &mut D,
    a: &mut Assignment,
    stats: &mut PumpStats,
) -> Result<(), HostError> {
    let l = a.leaf("TDH.SPDM.CONNECT", leaf::SPDM_CONNECT, a.pdev, 0);
    let r = device_call(h, doe, a.pdev, l, a.msg, stats)?;
    a.spdm = Connected {
        version: r.rcx as u8,
        measured_in_session: r.rcx & 1 << 8 != 0,
        heartbeat_period_s: (r.rcx >> 16) as u8,
    };
    Ok(())
}

/// IDE.STREAM.CREATE and KM SETUP.
///
/// # Errors
/// [`HostError`].
pub fn ide_setup<H: Seamcall + HostMemory + ?Sized, D: Doe + ?Sized>(
    h: &mut H,
    doe: &mut D,
    a: &mut Assignment,
    stats: &mut PumpStats,
) -> Result<(), HostError> {
    let r = call(h, "TDH.IDE.STREAM.CREATE", Regs::call(leaf::IDE_STREAM_CREATE, a.pdev, 1, 0, 0))?;
    a.stream = r.rcx;
    a.ide = true;
    let l = a.leaf("TDH.IDE.STREAM.KM SETUP", leaf::IDE_STREAM_KM, a.pdev, a.stream);
    device_call(h, doe, a.pdev, l, a.msg, stats).map(|_| ())
}

/// TDI.CREATE of `function`'s interface, bound to the TD `tdr`.
///
/// # Errors
/// [`HostError`].
pub fn bind<H: Seamcall + HostMemory + ?Sized>(
    h: &mut H,
    tdr: u64,
    function: u32,
    a: &mut Assignment,
) -> Result<(), HostError> {
    let tdi = donate(h)?;
    call(h, "TDH.TDI.CREATE", Regs::call(leaf::TDI_CREATE, tdr, a.pdev, tdi, u64::from(function)))?;
    a.tdi = tdi;
    Ok(())
}

/// TDI.LOCK with `flags` over the stream; the report stays in the message page.
///
/// # Errors
/// [`HostError`].
pub fn lock<H: Seamcall + HostMemory + ?Sized, D: Doe + ?Sized>(
    h: &mut H,
    doe: &mut D,
    flags: u64,
    a: &mut Assignment,
    stats: &mut PumpStats,
) -> Result<(), HostError> {
    let l = a.leaf("TDH.TDI.LOCK", leaf::TDI_LOCK, a.tdi, flags | a.stream << 16);
    let r = device_call(h, doe, a.pdev, l, a.msg, stats)?;
    a.generation = r.rcx;
    a.report_len = usize::try_from(r.r8).unwrap_or(MSG_BYTES).min(MSG_BYTES);
    Ok(())
}

/// DMABUF.IMPORT of report range `range`: `pages` frames from `hpa`.
///
/// # Errors
/// [`HostError`].
pub fn import<H: Seamcall + ?Sized>(
    h: &mut H,
    a: &Assignment,
    range: u64,
    hpa: u64,
    pages: u64,
) -> Result<(), HostError> {
    call(h, "TDH.DMABUF.IMPORT", Regs::call(leaf::DMABUF_IMPORT, a.tdi, hpa, pages, range)).map(|_| ())
}

/// MMIO.MAP of `pages` frames from `hpa` at `gpa` onwards (S-EPT tables added as needed);
/// counted in `a.mapped` as they succeed.
///
/// # Errors
/// [`HostError`].
pub fn map_mmio<H: Seamcall + HostMemory + ?Sized>(
    h: &mut H,
    td: &TdPages,
    a: &mut Assignment,
    (hpa, pages): (u64, u64),
    gpa: u64,
) -> Result<(), HostError> {
    if a.mapped == 0 {
        a.mmio_gpa = gpa;
    }
    for i in 0..pages {
        map_tables(h, td, gpa + i * PAGE, 0)?;
        call(h, "TDH.MMIO.MAP", Regs::call(leaf::MMIO_MAP, gpa + i * PAGE, td.tdr, hpa + i * PAGE, 0))?;
        a.mapped += 1;
    }
    Ok(())
}

/// TDH.DMAR.ADD for the TDI, offering a fresh frame for every table; the frames it did not take
/// go back to the host. Returns the call's registers, whatever their status.
///
/// # Errors
/// [`HostError::OutOfPages`].
pub fn dmar_add_raw<H: Seamcall + HostMemory + ?Sized>(h: &mut H, tdr: u64, tdi: u64) -> Result<Regs, HostError> {
    let frames = [donate(h)?, donate(h)?, donate(h)?];
    let r = raw(h, Regs { r10: frames[2], ..Regs::call(leaf::DMAR_ADD, tdr, tdi, frames[0], frames[1]) });
    let used = if r.status() == Status::SUCCESS { r.rcx } else { 0 };
    for (i, &f) in frames.iter().enumerate() {
        if used & 1 << i == 0 {
            h.release(f);
        }
    }
    Ok(r)
}

/// TDH.DMAR.ADD that must succeed.
///
/// # Errors
/// [`HostError`].
pub fn dmar_add<H: Seamcall + HostMemory + ?Sized>(
    h: &mut H,
    td: &TdPages,
    a: &mut Assignment,
) -> Result<(), HostError> {
    check("TDH.DMAR.ADD", dmar_add_raw(h, td.tdr, a.tdi)?)?;
    a.dma = true;
    Ok(())
}

/// TDH.TDI.START (the guest must have authorised it).
///
/// # Errors
/// [`HostError`].
pub fn start<H: Seamcall + HostMemory + ?Sized, D: Doe + ?Sized>(
    h: &mut H,
    doe: &mut D,
    a: &Assignment,
    stats: &mut PumpStats,
) -> Result<(), HostError> {
    let l = a.leaf("TDH.TDI.START", leaf::TDI_START, a.tdi, 0);
    device_call(h, doe, a.pdev, l, a.msg, stats).map(|_| ())
}

/// TDH.TDI.STOP: the device leaves RUN (STOP_INTERFACE, CONFIG_UNLOCKED read back); the TSM
/// blocks the TDI's MMIO and DMA entry and invalidates before it returns.
///
/// # Errors
/// [`HostError`].
pub fn stop<H: Seamcall + HostMemory + ?Sized, D: Doe + ?Sized>(
    h: &mut H,
    doe: &mut D,
    a: &Assignment,
    stats: &mut PumpStats,
) -> Result<(), HostError> {
    let l = a.leaf("TDH.TDI.STOP", leaf::TDI_STOP, a.tdi, 0);
    device_call(h, doe, a.pdev, l, a.msg, stats).map(|_| ())
}

/// SEAMLESS.DMABUF.REVOKE of report range 0 (the exporter's FLR or close); returns the pages it
/// blocked.
///
/// # Errors
/// [`HostError`].
pub fn dmabuf_revoke<H: Seamcall + ?Sized>(h: &mut H, a: &Assignment) -> Result<u64, HostError> {
    Ok(call(h, "SEAMLESS.DMABUF.REVOKE", Regs::call(leaf::DMABUF_REVOKE, a.tdi, 0, 0, 0))?.rcx)
}

/// The host's clock: milliseconds from any origin. The TSM has none, so keeping a device's
/// heartbeat is the host's part (a VMM reads CLOCK_MONOTONIC; the harness a fake one).
pub trait Clock {
    /// Milliseconds now; never goes back.
    fn now_ms(&mut self) -> u64;
}

/// What the VMM's own work between heartbeats reports ([`keep_alive`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Running {
    /// The TDI still runs: keep its session alive.
    Yes,
    /// The TDI stopped (the TD halted, the VMM tears the assignment down): the loop ends.
    Stopped,
}

/// When the next HEARTBEAT is due for a session whose device asked for a HeartbeatPeriod: every
/// half period. The responder may end a session that carries nothing for twice the period
/// (DSP0274 1.2 §10.19), and every message inside it counts, so other session traffic the host
/// moved ([`Heartbeat::traffic`]) pushes the next one back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    half_period_ms: u64,
    next_ms: Option<u64>,
}

impl Heartbeat {
    /// The schedule for what SPDM.CONNECT reported, from `now_ms`: none if the device asked for
    /// no heartbeat.
    pub fn new(connected: &Connected, now_ms: u64) -> Heartbeat {
        let half_period_ms = u64::from(connected.heartbeat_period_s) * 500;
        Heartbeat { half_period_ms, next_ms: (half_period_ms != 0).then(|| now_ms.saturating_add(half_period_ms)) }
    }

    /// True if a HEARTBEAT is due at `now_ms`.
    pub fn due(&self, now_ms: u64) -> bool {
        self.next_ms.is_some_and(|next| now_ms >= next)
    }

    /// The session carried a message at `now_ms` (a HEARTBEAT or any other): the next one is half
    /// a period later.
    pub fn traffic(&mut self, now_ms: u64) {
        if self.next_ms.is_some() {
            self.next_ms = Some(now_ms.saturating_add(self.half_period_ms));
        }
    }

    /// When the next HEARTBEAT is due, if ever.
    pub fn next_ms(&self) -> Option<u64> {
        self.next_ms
    }
}

/// TDH.SPDM.MNG HEARTBEAT: HEARTBEAT / HEARTBEAT_ACK inside the session.
///
/// # Errors
/// [`HostError`] (a wrong or missing HEARTBEAT_ACK is the device's fault: the PDEV, its streams
/// and its TDIs are in ERROR).
pub fn heartbeat<H: Seamcall + HostMemory + ?Sized, D: Doe + ?Sized>(
    h: &mut H,
    doe: &mut D,
    a: &Assignment,
    stats: &mut PumpStats,
) -> Result<(), HostError> {
    let l = a.leaf("TDH.SPDM.MNG HEARTBEAT", leaf::SPDM_MNG, a.pdev, mng::HEARTBEAT);
    device_call(h, doe, a.pdev, l, a.msg, stats).map(|_| ())
}

/// The host's heartbeat loop while a TDI runs. Between units of the VMM's own work (`work`: run
/// the vCPUs until an exit, serve it; it says whether the TDI still runs), it sends HEARTBEAT
/// whenever half the HeartbeatPeriod the device asked for has passed since the session last
/// carried a message, on `clock`, so a responder that ends silent sessions after twice the
/// period never does. `work` must leave no device call outstanding when it returns (one exchange
/// per PDEV). A device that asked for no period gets none. Returns how many HEARTBEATs went.
///
/// # Errors
/// The first HEARTBEAT that failed ([`heartbeat`]: the PDEV is then in ERROR and its TDIs with
/// it), or `work`'s error.
pub fn keep_alive<H, D, C, W>(
    h: &mut H,
    doe: &mut D,
    a: &Assignment,
    clock: &mut C,
    stats: &mut PumpStats,
    mut work: W,
) -> Result<u32, HostError>
where
    H: Seamcall + HostMemory + ?Sized,
    D: Doe + ?Sized,
    C: Clock + ?Sized,
    W: FnMut(&mut H, &mut D) -> Result<Running, HostError>,
{
    let mut beat = Heartbeat::new(&a.spdm, clock.now_ms());
    let mut sent = 0;
    while work(h, doe)? == Running::Yes {
        let now = clock.now_ms();
        if beat.due(now) {
            heartbeat(h, doe, a, stats)?;
            beat.traffic(clock.now_ms());
            sent += 1;
        }
    }
    Ok(sent)
}
