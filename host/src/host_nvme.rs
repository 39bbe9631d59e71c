//! The host reading the drive into its own memory through the host domain: the TD's driver
//! (`tsm_client::nvme`, one copy for both sides) over the host's transport: BAR0 through the
//! host's own mapping, queues and buffers in host pages, every DMA translated by QEMU's unit
//! through the host map (the host world's nested table, `DmaRemapping::host_map`). The same
//! 4 KiB READs in batches of as many data pages as the TD has, timed the same way (TSC over the
//! READ commands only, best of the same number of rounds), so `nvme_read_mib_s_host` is the
//! denominator of `dma_private_vs_host`.

use tsm_client::nvme::{Access, Controller, Driver, NvmeError, Queues, Read};

use seamless_drivers::phys::{Frames, Mmio};
use seamless_drivers::tsc::Tsc;

/// How long the host waits for the controller or a completion.
const TIMEOUT_S: u64 = 5;

/// The host's pages for the read: admin SQ/CQ, I/O SQ/CQ, then the data pages.
#[derive(Clone, Copy, Debug)]
pub struct HostPages {
    /// Admin submission, admin completion, I/O submission, I/O completion queue.
    pub queues: [u64; 4],
    /// Data pages (one 4 KiB READ each per batch), physically anywhere.
    pub data: [u64; tsm_client::guest::disk::DATA_PAGES],
}

/// The controller as the host reaches it: its registers through the host's mapping of BAR0,
/// its DMA into host RAM.
struct HostNvme<'a> {
    regs: &'a Mmio,
    mem: Frames,
    tsc: &'a Tsc,
}

impl Controller for HostNvme<'_> {
    fn read_reg(&mut self, off: u64) -> Result<u32, Access> {
        Ok(self.regs.read_u32(off))
    }
    fn write_reg(&mut self, off: u64, value: u32) -> Result<(), Access> {
        self.regs.write_u32(off, value);
        Ok(())
    }
    fn read_mem(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), Access> {
        if !self.mem.contains(addr, buf.len() as u64) {
            return Err(Access(addr));
        }
        self.mem.read(addr, buf);
        Ok(())
    }
    fn write_mem(&mut self, addr: u64, data: &[u8]) -> Result<(), Access> {
        if !self.mem.contains(addr, data.len() as u64) {
            return Err(Access(addr));
        }
        self.mem.write(addr, data);
        Ok(())
    }
    fn now(&mut self) -> u64 {
        self.tsc.now()
    }
}

/// Resets the controller, brings it up with the host's queues, READs `blocks` blocks from LBA 0
/// into the data pages batch by batch and hashes them; leaves the controller disabled (no DMA
/// outstanding) for the host to give it away.
///
/// # Errors
/// [`NvmeError`].
pub fn read(regs: &Mmio, mem: Frames, tsc: &Tsc, pages: &HostPages, blocks: u64) -> Result<Read, NvmeError> {
    let [asq, acq, iosq, iocq] = pages.queues;
    let c = HostNvme { regs, mem, tsc };
    let mut d = Driver::enable(c, Queues { asq, acq, iosq, iocq }, tsc.hz().saturating_mul(TIMEOUT_S))?;
    d.create_io_queues()?;
    let read = d.read_best(&pages.data, blocks, tsm_client::guest::disk::ROUNDS)?;
    d.disable()?;
    Ok(read)
}

/// What [`dma_before_setup`] saw.
#[derive(Clone, Copy, Debug)]
pub struct Blocked {
    /// How long the host waited for the completion, in microseconds.
    pub waited_us: u64,
    /// The IDENTIFY's completion status, had it completed.
    pub completed: Option<u16>,
    /// The admin completion queue's page is still all zero (nothing was posted).
    pub no_completion: bool,
    /// The data page still holds the host's pattern (nothing was written).
    pub data_unchanged: bool,
}

/// The pattern the data page holds before the command.
const PATTERN: u8 = 0xA5;

/// The host drives the controller before SEAMLESS.IOMMU.SETUP, while the remapping unit still
/// walks the TSM's blocking root table: admin queues and an IDENTIFY's data page in host pages,
/// the doorbell rung, `wait_ms` waited. The controller cannot fetch the command (its read of the
/// submission queue is a DMA), so nothing completes and no page changes; without the blocking
/// table QEMU's unit would pass the DMA through untranslated (to any physical address the host
/// names, TSM memory included). Leaves the controller disabled (its retries stopped).
///
/// # Errors
/// [`NvmeError`] of the enable, the queueing or the disable; a completion is no error but
/// [`Blocked::completed`].
pub fn dma_before_setup(
    regs: &Mmio,
    mem: Frames,
    tsc: &Tsc,
    pages: &HostPages,
    wait_ms: u64,
) -> Result<Blocked, NvmeError> {
    let [asq, acq, iosq, iocq] = pages.queues;
    let data = pages.data[0];
    let c = HostNvme { regs, mem, tsc };
    let wait = tsc.hz() / 1000 * wait_ms;
    let mut d = Driver::enable(c, Queues { asq, acq, iosq, iocq }, tsc.hz().saturating_mul(TIMEOUT_S))?;
    d.controller().write_mem(data, &[PATTERN; 4096])?;
    let t = tsc.now();
    let outcome = d.identify_to(data, wait);
    let waited_us = tsc.ticks_to_us(tsc.now().wrapping_sub(t));
    d.disable()?;
    let completed = match outcome {
        Err(NvmeError::NoCompletion { .. }) => None,
        Err(e) => return Err(e),
        Ok(status) => Some(status),
    };
    let mut page = [0u8; 4096];
    mem.read(acq, &mut page);
    let no_completion = page.iter().all(|&b| b == 0);
    mem.read(data, &mut page);
    let data_unchanged = page.iter().all(|&b| b == PATTERN);
    Ok(Blocked { waited_us, completed, no_completion, data_unchanged })
}

impl Blocked {
    /// Nothing of the command reached memory.
    pub fn held(&self) -> bool {
        self.completed.is_none() && self.no_completion && self.data_unchanged
    }
}
