//! The host agent: the untrusted VMM's part. Its sequence of calls is `tsm_client::host` (the
//! same code the harness drives); this module is its transport and its memory. [`HostCpu`] is
//! SEAMCALL as a direct call into `Tsm::host_call` with raw registers (a host world will execute
//! the instruction instead), [`DoeLink`] the device's DOE mailbox, and [`Host`] the host's pages
//! between the image and the TDMR.

pub mod evidence;

use tsm::{Regs, Tsm};
use tsm_client::{Doe, DoeError, HostMemory, Seamcall};

use crate::drivers::doe::Mailbox;
use crate::drivers::phys::{Frames, Mmio};
use crate::drivers::tsc::Tsc;
use crate::memmap::Layout;
use crate::platform::FirmwarePlatform;

pub use tsm_client::host::HostError;

const PAGE: u64 = 4096;

/// The host's memory: its own pages (not convertible) and the TDMR pages it has not donated.
#[derive(Debug)]
pub struct Host {
    mem: Frames,
    host_next: u64,
    host_end: u64,
    tdmr_next: u64,
    tdmr_end: u64,
    tdmr_start: u64,
    /// 2 MiB blocks are taken from the top of the TDMR down to here.
    tdmr_top: u64,
    free: [u64; FREE_SLOTS],
    free_count: usize,
}

/// Pages the host keeps for reuse after the TSM handed them back.
const FREE_SLOTS: usize = 64;

impl Host {
    /// The host over `layout`'s host pages and TDMR.
    pub fn new(mem: Frames, layout: &Layout) -> Host {
        Host {
            mem,
            host_next: layout.host.0,
            host_end: layout.host.1,
            tdmr_next: layout.tdmr.0,
            tdmr_end: layout.pamt.0,
            tdmr_start: layout.tdmr.0,
            tdmr_top: layout.pamt.0 & !(TWO_MIB - 1),
            free: [0; FREE_SLOTS],
            free_count: 0,
        }
    }

    /// The host's view of physical memory.
    pub fn frames(&self) -> Frames {
        self.mem
    }
}

impl HostMemory for Host {
    fn read(&mut self, pa: u64, buf: &mut [u8]) {
        self.mem.read(pa, buf);
    }

    fn write(&mut self, pa: u64, data: &[u8]) {
        self.mem.write(pa, data);
    }

    /// A TDMR page to donate: one the TSM gave back, else one never donated.
    fn donate(&mut self) -> Option<u64> {
        if self.free_count > 0 {
            self.free_count -= 1;
            return Some(self.free[self.free_count]);
        }
        let p = self.tdmr_next;
        if p + PAGE > self.tdmr_top {
            return None;
        }
        self.tdmr_next += PAGE;
        Some(p)
    }

    /// One of the host's own pages (outside the TDMRs), zeroed.
    fn scratch(&mut self) -> Option<u64> {
        let p = self.host_next;
        if p + PAGE > self.host_end {
            return None;
        }
        self.host_next += PAGE;
        self.mem.zero(p, PAGE as usize);
        Some(p)
    }

    /// Kept for reuse while there is room; a page that does not fit stays free in the TSM and
    /// is simply not reused.
    fn release(&mut self, page: u64) {
        if self.free_count < FREE_SLOTS {
            self.free[self.free_count] = page;
            self.free_count += 1;
        }
    }

    /// A 2 MiB block from the top of the TDMR (4 KiB pages come from the bottom).
    fn donate_2m(&mut self) -> Option<u64> {
        let block = self.tdmr_top.checked_sub(TWO_MIB)?;
        if block < self.tdmr_next {
            return None;
        }
        self.tdmr_top = block;
        Some(block)
    }

    fn donated(&self) -> (u64, u64) {
        let top_taken = self.tdmr_top < self.tdmr_end & !(TWO_MIB - 1);
        (self.tdmr_start, if top_taken { self.tdmr_end } else { self.tdmr_next })
    }
}

const TWO_MIB: u64 = 2 << 20;

/// The host agent's CPU: SEAMCALL as a direct call into the TSM, with the host's memory beside
/// it. Counts the TSC ticks spent inside the TSM.
#[derive(Debug)]
pub struct HostCpu<'a> {
    /// The TSM.
    pub tsm: &'a mut Tsm<FirmwarePlatform>,
    /// The host's pages.
    pub host: &'a mut Host,
    tsc: Tsc,
    /// TSC ticks inside the TSM's calls so far.
    pub tsm_ticks: u64,
    /// Whether VP.ENTER runs a TD's vCPU in its TD world. Transitional: the in-image host turns
    /// it off once the guest binary halted, so the firmware's stand-in guest can play the
    /// device part on the same vCPU by direct calls (VP.ENTER, with all its checks, then
    /// returns at once); stage 3 of issue 11 moves that part into the binary and removes it.
    pub worlds: bool,
}

impl<'a> HostCpu<'a> {
    /// The host agent over `tsm` and `host`.
    pub fn new(tsm: &'a mut Tsm<FirmwarePlatform>, host: &'a mut Host, tsc: Tsc) -> HostCpu<'a> {
        HostCpu { tsm, host, tsc, tsm_ticks: 0, worlds: true }
    }

    /// The clock it counts with.
    pub fn tsc(&self) -> Tsc {
        self.tsc
    }

    /// One call, its registers as they came back.
    pub fn raw(&mut self, regs: Regs) -> Regs {
        tsm_client::host::raw(self, regs)
    }
}

impl Seamcall for HostCpu<'_> {
    fn seamcall(&mut self, regs: &mut Regs) {
        let t = self.tsc.now();
        let input = *regs;
        *regs = self.tsm.host_call(regs);
        // VP.ENTER of a TD that runs in a TD world returns at its next exit.
        if self.worlds && input.rax == tsm::abi::host::leaf::VP_ENTER && regs.rax == 0 {
            if let Some(exit) = crate::world::td::enter(self.tsm, input.rcx, &input) {
                *regs = exit;
            }
        }
        self.tsm_ticks += self.tsc.now().wrapping_sub(t);
    }
}

impl HostMemory for HostCpu<'_> {
    fn read(&mut self, pa: u64, buf: &mut [u8]) {
        self.host.read(pa, buf);
    }
    fn write(&mut self, pa: u64, data: &[u8]) {
        self.host.write(pa, data);
    }
    fn donate(&mut self) -> Option<u64> {
        self.host.donate()
    }
    fn scratch(&mut self) -> Option<u64> {
        self.host.scratch()
    }
    fn release(&mut self, pa: u64) {
        self.host.release(pa);
    }
    fn donate_2m(&mut self) -> Option<u64> {
        self.host.donate_2m()
    }
    fn donated(&self) -> (u64, u64) {
        self.host.donated()
    }
}

/// The NVMe function's DOE mailbox as the host ferries requests through it; counts the
/// exchanges and the TSC ticks inside the mailbox (QEMU, the socket and the responder).
#[derive(Debug)]
pub struct DoeLink<'a> {
    mailbox: &'a mut Mailbox<Mmio>,
    tsc: Tsc,
    /// Exchanges so far.
    pub exchanges: u32,
    /// TSC ticks inside the mailbox so far.
    pub ticks: u64,
}

impl<'a> DoeLink<'a> {
    /// The link over `mailbox`.
    pub fn new(mailbox: &'a mut Mailbox<Mmio>, tsc: Tsc) -> DoeLink<'a> {
        DoeLink { mailbox, tsc, exchanges: 0, ticks: 0 }
    }
}

impl Doe for DoeLink<'_> {
    fn exchange(&mut self, request: &[u8], answer: &mut [u8]) -> Result<usize, DoeError> {
        let t = self.tsc.now();
        let got = self.mailbox.exchange(&self.tsc, request, answer);
        let ticks = self.tsc.now().wrapping_sub(t);
        self.ticks += ticks;
        self.exchanges += 1;
        defmt::debug!(
            "DOE exchange {=u32}: {=usize} bytes out, {=usize} back, {=u64} us",
            self.exchanges,
            request.len(),
            *got.as_ref().unwrap_or(&0),
            self.tsc.ticks_to_us(ticks)
        );
        got
    }
}

/// TDH.SYS.CONFIG with one TDMR (the layout's) and its PAMT at its end.
///
/// # Errors
/// [`HostError`] if a page or the call fails.
pub fn sys_config(cpu: &mut HostCpu<'_>, layout: &Layout) -> Result<(), HostError> {
    let tdmr = [layout.tdmr.0, layout.tdmr.1 - layout.tdmr.0, layout.pamt.0, layout.pamt.1 - layout.pamt.0];
    let r = tsm_client::host::sys_config(cpu, &[tdmr])?;
    tsm_client::host::check("TDH.SYS.CONFIG", r).map(|_| ())
}
