//! The host agent's memory and its device link: [`Host`] is the host's pages (its own pages
//! after what it was loaded into, and the TDMR pages it has not donated), [`DoeLink`] the
//! device's DOE mailbox as the host ferries requests through it, [`sys_config`] the TDMR it
//! configures the TSM over, chosen from its own memory as a TDX host kernel does.

use seamless_drivers::doe::{Mailbox, Micros};
use seamless_drivers::memmap::Layout;
use seamless_drivers::phys::{Frames, Mmio};
use seamless_drivers::tsc::Tsc;
use tsm_client::{Doe, DoeError, HostMemory, Seamcall};

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
    /// is simply not reused. Only TDMR pages are kept: one of the host's own pages handed here
    /// would come back from `donate`, and the TSM refuses any page outside its TDMRs.
    fn release(&mut self, page: u64) {
        let in_tdmr = (self.tdmr_start..self.tdmr_end).contains(&page);
        if in_tdmr && self.free_count < FREE_SLOTS {
            self.free[self.free_count] = page;
            self.free_count += 1;
        }
    }

    /// A 2 MiB block from the top of the TDMR (4 KiB pages come from the bottom), for the
    /// 2 MiB PAGE.AUGs of a TD's RAM.
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
        got
    }

    /// Spins on the TSC for the device's response time, at most the mailbox's timeout.
    fn pause(&mut self, us: u64) {
        let t = self.tsc.now();
        let until = self.tsc.now_us().saturating_add(us.min(self.mailbox.timeout_us()));
        while self.tsc.now_us() < until {
            core::hint::spin_loop();
        }
        self.ticks += self.tsc.now().wrapping_sub(t);
    }
}

/// TDH.SYS.CONFIG with one TDMR (the layout's) and its PAMT at its end.
///
/// # Errors
/// [`HostError`] if a page or the call fails.
pub fn sys_config<H: Seamcall + HostMemory + ?Sized>(cpu: &mut H, layout: &Layout) -> Result<(), HostError> {
    let tdmr = [layout.tdmr.0, layout.tdmr.1 - layout.tdmr.0, layout.pamt.0, layout.pamt.1 - layout.pamt.0];
    let r = tsm_client::host::sys_config(cpu, &[tdmr])?;
    tsm_client::host::check("TDH.SYS.CONFIG", r).map(|_| ())
}
