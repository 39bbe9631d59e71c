//! The TD's use of its device once the TDI runs: QEMU's NVMe controller driven through the TD's
//! own mapping ([`crate::nvme`], the driver the host's read uses too), its queues and buffers
//! in private pages, every byte the controller moves going through the IOMMU, whose second stage
//! is the TD's S-EPT (IOVA = GPA). Then the DMA the unit must refuse, the TD's own look at its
//! fault log, the differential test against the TSM's walker, and the revocation while READs are
//! outstanding. Each result goes to the host as a typed record ([`super::result`]) with the
//! RESULT request, and the TD waits in it while the host checks what it can see (the unit's
//! fault records) and does its part (the next case's S-EPT state).
//!
//! These steps need a transport whose VMCALLs return once served (the TD itself): they chain
//! several requests.

use sha2::{Digest, Sha384};
use tsm::abi::guest::leaf as g;
use tsm::Regs;

use super::result::{self, DiffCase, DiskRead, FaultsSeen, ReadsOutstanding, Revoked, Strays};
use super::{call, report_result, served, tdi_rd, Guest, GuestError, GuestLayout, GuestMemory, Tdcall};
use crate::nvme::{Controller, Driver, Queues, PAGE};

/// Data pages of the layout (one 4 KiB READ each per batch).
pub const DATA_PAGES: usize = 15;
/// Clock ticks a wait of the driver may last (about 3 s at 3 GHz): a controller that answers
/// at all answers within milliseconds.
pub const TIMEOUT: u64 = 1 << 33;
/// Ticks a READ that may never complete is waited for (about 0.2 s at 3 GHz): the case whose
/// command fetch the unit refuses.
pub const SHORT: u64 = 1 << 29;
/// Ticks the fault log must stay unchanged before the revocation case looks at its pages.
pub const QUIET: u64 = 1 << 28;
/// Rounds of the timed read (the best counts): the TD's and the host's alike.
pub const ROUNDS: u32 = 9;
/// Pages each READ of the revocation case moves (256 KiB: QEMU's NVMe takes up to 512 KiB a
/// command), so the device's DMA is still going when the host's call comes.
pub const LONG_READ_PAGES: u64 = 64;

/// The page `i` after the guest's four (digests, REPORTDATA, the native report, its export).
const fn page(l: &GuestLayout, i: u64) -> u64 {
    l.work + (4 + i) * PAGE
}

/// The driver's queues: the four pages after the guest's own four and the Identify page.
pub const fn queues(l: &GuestLayout) -> Queues {
    Queues { asq: page(l, 0), acq: page(l, 1), iosq: page(l, 3), iocq: page(l, 4) }
}

/// The Identify page.
pub const fn identify_page(l: &GuestLayout) -> u64 {
    page(l, 2)
}

/// The data pages.
pub fn data_pages(l: &GuestLayout) -> [u64; DATA_PAGES] {
    core::array::from_fn(|i| page(l, 5 + i as u64))
}

/// A page the TD never accepted: the first GPA past its work pages, with no S-EPT leaf.
pub const fn free_page(l: &GuestLayout) -> u64 {
    l.work + l.work_pages * PAGE
}

/// The page the host AUGs for the differential test's PENDING case, which the TD never accepts.
pub const fn pending_page(l: &GuestLayout) -> u64 {
    l.work + (l.work_pages + 1) * PAGE
}

/// DMA the device must not land, by the TD's own READs after its read: a page it never
/// accepted (no S-EPT leaf), its device's MMIO page, and a shared GPA (`shared_bit`).
pub fn stray(l: &GuestLayout, shared_bit: u64) -> [(u64, &'static str); 3] {
    [
        (free_page(l), "a page the TD never accepted"),
        (l.bar_gpa, "the TD's own device MMIO page"),
        (shared_bit | l.work, "a shared GPA"),
    ]
}

/// What the host does before a differential case runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prepare {
    /// Nothing.
    Nothing,
    /// TDH.MEM.PAGE.AUG of [`pending_page`] (the TD never accepts it).
    AugPending,
    /// TDH.DMAR.BLOCK of the TDI's entry and TDH.IQ.INV.REQUEST.
    BlockDma,
}

/// One case of the differential test: a GPA whose S-EPT state the device's write meets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Case {
    /// Where the READ writes.
    pub gpa: u64,
    /// What the case is.
    pub what: &'static str,
    /// Whether the TD can read the page back (its own accepted memory).
    pub readable: bool,
    /// What the host does first.
    pub prepare: Prepare,
}

/// Cases of the differential test.
pub const CASES: usize = 6;

/// The differential test's cases, in order; the last runs after TDH.DMAR.BLOCK.
pub fn differential(l: &GuestLayout, shared_bit: u64) -> [Case; CASES] {
    let data = page(l, 5);
    let case = |gpa, what, readable, prepare| Case { gpa, what, readable, prepare };
    [
        case(data, "an accepted private page (MAPPED)", true, Prepare::Nothing),
        case(free_page(l), "a GPA with no leaf (FREE)", false, Prepare::Nothing),
        case(pending_page(l), "a page AUGed, not accepted (PENDING)", false, Prepare::AugPending),
        case(l.bar_gpa, "the TD's MMIO page (MMIO_MAPPED)", false, Prepare::Nothing),
        case(shared_bit | l.work, "a shared GPA", false, Prepare::Nothing),
        case(data, "the accepted page after TDH.DMAR.BLOCK", true, Prepare::BlockDma),
    ]
}

/// The drive's first 4 KiB, which a READ of LBA 0 lands.
pub fn first_page() -> [u8; PAGE as usize] {
    let mut want = [0u8; PAGE as usize];
    for (lba, chunk) in want.chunks_mut(attest::disk::BLOCK_BYTES).enumerate() {
        let mut b = [0u8; attest::disk::BLOCK_BYTES];
        attest::disk::block(lba as u64, &mut b);
        chunk.copy_from_slice(&b);
    }
    want
}

/// A refused DMA of the TD's own device, as SEAMLESS.TDG.IOMMU.FAULT.RD reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    /// Source id (the requester).
    pub source: u16,
    /// VT-d fault reason.
    pub reason: u8,
    /// The page the request went to.
    pub page: u64,
}

/// Faults the unit recorded since TDH.IOMMU.SETUP (every requester's).
///
/// # Errors
/// [`GuestError`].
pub fn fault_count<T: Tdcall + ?Sized>(t: &mut T, function: u64) -> Result<u64, GuestError> {
    Ok(call(t, "SEAMLESS.TDG.IOMMU.FAULT.RD", Regs::call(g::IOMMU_FAULT_RD, function, 0, 0, 0))?.rcx)
}

/// Fault record `n`, if the log holds it and it is the TD's own device's.
///
/// # Errors
/// [`GuestError`].
pub fn fault<T: Tdcall + ?Sized>(t: &mut T, function: u64, n: u64) -> Result<Option<Fault>, GuestError> {
    let r = call(t, "SEAMLESS.TDG.IOMMU.FAULT.RD", Regs::call(g::IOMMU_FAULT_RD, function, n, 0, 0))?;
    Ok((r.r9 == 1).then_some(Fault { source: r.rdx as u16, reason: (r.rdx >> 16) as u8, page: r.r8 }))
}

/// SHA-384 of the private page at `gpa`.
fn page_digest<T: GuestMemory + ?Sized>(t: &mut T, gpa: u64) -> Result<[u8; 48], GuestError> {
    let mut buf = [0u8; PAGE as usize];
    t.read(gpa, &mut buf)?;
    Ok(Sha384::digest(buf).into())
}

impl Guest {
    /// Mode `assign`'s use of the device: the controller brought up with its queues in private
    /// pages, Identify, an I/O queue pair, the drive's first [`attest::disk::DEMO_BLOCKS`] READ
    /// into private pages [`ROUNDS`] times (the best round timed) and checked against the
    /// drive's known content (RESULT [`DiskRead`]); the stray READs (RESULT [`Strays`]); the TD's own look at its fault log
    /// (RESULT [`FaultsSeen`]); the differential cases (RESULT [`DiffCase`] each).
    ///
    /// # Errors
    /// [`GuestError`] of the first step that fails.
    pub fn use_disk<T, C>(&mut self, t: &mut T, c: C, shared_bit: u64) -> Result<(), GuestError>
    where
        T: Tdcall + GuestMemory + ?Sized,
        C: Controller,
    {
        let l = self.layout;
        let mut d = Driver::enable(c, queues(&l), TIMEOUT)?;
        let id = d.identify(identify_page(&l))?;
        d.create_io_queues()?;
        let read = d.read_best(&data_pages(&l), attest::disk::DEMO_BLOCKS, ROUNDS)?;
        let matches = read.digest == attest::disk::digest(0, read.blocks);
        let r = DiskRead {
            ns_blocks: id.blocks.into(),
            read_blocks: read.blocks.into(),
            ticks: read.ticks.into(),
            block_bytes: id.block_bytes.into(),
            vid: id.vid.into(),
            matches: u8::from(matches),
            reserved: 0,
            serial: id.serial,
            model: id.model,
            digest: read.digest,
        };
        served(report_result(t, &r)?)?;
        // DMA the unit must refuse: each completes (status 0 in QEMU), and leaves a record.
        let strays = stray(&l, shared_bit);
        let before = fault_count(t, self.function)?;
        let mut statuses = [0u16; 3];
        for (s, (gpa, _)) in statuses.iter_mut().zip(strays) {
            *s = d.read_to(gpa, TIMEOUT)?;
            // QEMU's unit drops a requester's fault while an earlier one of it still sits unread
            // in a fault recording register ("compression"): the leaf drains them into the
            // TSM's log before the next READ can fault.
            fault_count(t, self.function)?;
        }
        served(report_result(t, &Strays { before: before.into(), statuses: statuses.map(Into::into) })?)?;
        let (mut seen, mut named) = (0u64, 0u8);
        for n in before..fault_count(t, self.function)? {
            let Some(f) = fault(t, self.function, n)? else { continue };
            seen += 1;
            for (i, (gpa, _)) in strays.iter().enumerate() {
                named |= u8::from(f.page == gpa & !(PAGE - 1)) << i;
            }
        }
        served(report_result(t, &FaultsSeen { seen: seen.into(), named })?)?;
        self.differential(t, &mut d, shared_bit)
    }

    /// The differential cases: per case, the page marked (if the TD can read it), one READ of
    /// LBA 0 into it, and what the TD saw (RESULT [`DiffCase`]); the host compares the unit's
    /// verdict with the TSM's walker and prepares the next case before it answers.
    fn differential<T, C>(&mut self, t: &mut T, d: &mut Driver<C>, shared_bit: u64) -> Result<(), GuestError>
    where
        T: Tdcall + GuestMemory + ?Sized,
        C: Controller,
    {
        let want = first_page();
        for (i, c) in differential(&self.layout, shared_bit).iter().enumerate() {
            if c.readable {
                t.write(c.gpa, &[0xA5; PAGE as usize])?;
            }
            // The command completes (status 0 even when its data was refused), or, when the unit
            // refuses the device's fetch of the command itself, never does.
            let completed = match d.read_to(c.gpa, SHORT) {
                Ok(_) => true,
                Err(crate::nvme::NvmeError::NoCompletion { .. }) => false,
                Err(e) => return Err(e.into()),
            };
            let landed = if c.readable {
                let mut buf = [0u8; PAGE as usize];
                t.read(c.gpa, &mut buf)?;
                if buf == want {
                    result::LANDED
                } else {
                    result::NOT_LANDED
                }
            } else {
                result::UNREADABLE
            };
            served(report_result(t, &DiffCase { case: i as u8, completed: u8::from(completed), landed })?)?;
        }
        Ok(())
    }

    /// Modes `revoke` and `stop`: the controller brought up, the data pages filled with a marker,
    /// one READ of [`LONG_READ_PAGES`] outstanding into each but the last (its first page there,
    /// the rest into the last page, a sink; RESULT [`ReadsOutstanding`]: the host revokes the
    /// BAR, or stops the TDI, before it answers); then what the destination pages held when the
    /// call returned, once the fault log stayed unchanged for [`QUIET`] ticks, what they hold
    /// now, and the TDI's state (RESULT [`Revoked`]).
    ///
    /// # Errors
    /// [`GuestError`] of the first step that fails.
    pub fn revoke_under_dma<T, C>(&mut self, t: &mut T, c: C) -> Result<Revoked, GuestError>
    where
        T: Tdcall + GuestMemory + ?Sized,
        C: Controller,
    {
        const MARK: [u8; PAGE as usize] = [0xA5; PAGE as usize];
        let l = self.layout;
        let pages = data_pages(&l);
        let (data, sink) = pages.split_at(DATA_PAGES - 1);
        let mut d = Driver::enable(c, queues(&l), TIMEOUT)?;
        d.create_io_queues()?;
        for &dst in &pages {
            t.write(dst, &MARK)?;
        }
        let before = fault_count(t, self.function)?;
        // The PRP list goes in the Identify page, which this case does not use.
        let reads = d.submit_long_reads(data, (identify_page(&l), sink[0]), LONG_READ_PAGES)?;
        served(report_result(t, &ReadsOutstanding { reads: (reads as u32).into() })?)?;
        let mut at_return = [[0u8; 48]; DATA_PAGES - 1];
        for (h, &dst) in at_return.iter_mut().zip(data) {
            *h = page_digest(t, dst)?;
        }
        // The device finishes on its own time: wait until the fault log stops growing.
        let start = d.controller().now();
        let (mut last, mut since) = (fault_count(t, self.function)?, start);
        loop {
            let now = d.controller().now();
            if now.wrapping_sub(since) >= QUIET || now.wrapping_sub(start) >= TIMEOUT {
                break;
            }
            let n = fault_count(t, self.function)?;
            if n != last {
                (last, since) = (n, now);
            }
        }
        let mark: [u8; 48] = Sha384::digest(MARK).into();
        let (mut landed, mut late) = (0u32, 0u32);
        for (h, &dst) in at_return.iter().zip(data) {
            landed += u32::from(*h != mark);
            late += u32::from(*h != page_digest(t, dst)?);
        }
        let mut refused = 0u32;
        for n in before..last {
            refused += u32::from(fault(t, self.function, n)?.is_some());
        }
        let state = tdi_rd(t, self.function, 0, 0)?;
        let r = Revoked {
            pages: (reads as u32).into(),
            landed: landed.into(),
            late: late.into(),
            refused: refused.into(),
            state: state.into(),
        };
        served(report_result(t, &r)?)?;
        Ok(r)
    }
}
