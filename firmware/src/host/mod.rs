//! The in-image host agent's transport (transitional, issue 11 stage 2): SEAMCALL as a direct
//! call into `Tsm::host_call` with raw registers, for the modes the host binary does not run
//! yet (`assign`, `revoke`, `attack`); a TDH.VP.ENTER runs the TD in its TD world until its next
//! exit, as the instruction would. The agent itself, its pages and its device link are the host
//! binary's library (`seamless_host`), the same code the host world runs with the SEAMCALL
//! instruction; the boot and connect modes run only there.

pub mod evidence;

use tsm::{Regs, Tsm};
use tsm_client::{HostMemory, Seamcall};

use crate::drivers::tsc::Tsc;
use crate::platform::FirmwarePlatform;

pub use seamless_host::mem::{sys_config, DoeLink, Host};

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
}

impl<'a> HostCpu<'a> {
    /// The host agent over `tsm` and `host`.
    pub fn new(tsm: &'a mut Tsm<FirmwarePlatform>, host: &'a mut Host, tsc: Tsc) -> HostCpu<'a> {
        HostCpu { tsm, host, tsc, tsm_ticks: 0 }
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
        if input.rax == tsm::abi::host::leaf::VP_ENTER && regs.rax == 0 {
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

impl seamless_host::Cpu for HostCpu<'_> {
    fn tsc(&self) -> Tsc {
        self.tsc
    }

    fn tsm_ticks(&self) -> u64 {
        self.tsm_ticks
    }
}
