//! QEMU's NVMe controller as the demo drives it, written once for both sides: the TD's driver
//! (queues and buffers in its private pages, BAR0 through its MMIO_MAPPED leaves, every DMA
//! through the IOMMU walking its S-EPT) and the host's own read before the assignment (host
//! pages, BAR0 through its own map, DMA through the host domain). The two differ only in the
//! [`Controller`] they pass: how a register and a page are reached, and the clock.
//!
//! NVM Express Base Specification 2.0: the controller registers (§3.1.3: CAP, VS, CC, CSTS, AQA,
//! ASQ, ACQ, the doorbells from 0x1000 with CAP.DSTRD's stride), initialisation (§3.5.1: CC.EN
//! = 0 and CSTS.RDY = 0; the admin queues; CC.EN = 1 and CSTS.RDY = 1), the admin commands
//! (Identify 0x06, Create I/O Completion Queue 0x05, Create I/O Submission Queue 0x01) and the
//! NVM command set's READ (0x02). Queues are one page each, physically contiguous, polled (no
//! interrupts); a completion is new when its phase tag matches the queue's.
//!
//! Every wait is bounded by a deadline on the controller's clock, never by a count of polls: a
//! poll under TCG takes a time that depends on the machine's load. A DMA the IOMMU refused still
//! completes with status 0 in QEMU (worlds.md §2): only the unit's fault records tell.

use sha2::{Digest, Sha384};

/// Controller registers (offsets in BAR0).
pub mod reg {
    /// Controller capabilities (64-bit): DSTRD in bits 35:32.
    pub const CAP: u64 = 0x00;
    /// Version.
    pub const VS: u64 = 0x08;
    /// Controller configuration: EN (0), CSS (6:4), MPS (10:7), IOSQES (19:16), IOCQES (23:20).
    pub const CC: u64 = 0x14;
    /// Controller status: RDY (0), CFS (1).
    pub const CSTS: u64 = 0x1C;
    /// Admin queue attributes: ACQS (27:16), ASQS (11:0), zero-based.
    pub const AQA: u64 = 0x24;
    /// Admin submission queue base (64-bit).
    pub const ASQ: u64 = 0x28;
    /// Admin completion queue base (64-bit).
    pub const ACQ: u64 = 0x30;
    /// The first doorbell (admin SQ tail); SQ y tail at 2y strides, CQ y head at 2y + 1.
    pub const DOORBELLS: u64 = 0x1000;
}

/// Command opcodes.
pub mod op {
    /// Admin: Create I/O Submission Queue.
    pub const CREATE_SQ: u8 = 0x01;
    /// Admin: Create I/O Completion Queue.
    pub const CREATE_CQ: u8 = 0x05;
    /// Admin: Identify (CDW10.CNS 1 controller, 0 namespace).
    pub const IDENTIFY: u8 = 0x06;
    /// NVM: READ (CDW10/11 the starting LBA, CDW12 the block count, zero-based).
    pub const READ: u8 = 0x02;
}

/// Entries per queue (admin and I/O).
pub const ENTRIES: u16 = 16;
/// Bytes of a submission queue entry.
pub const SQE_BYTES: u64 = 64;
/// Bytes of a completion queue entry.
pub const CQE_BYTES: u64 = 16;
/// Bytes of a page (CC.MPS = 0) and of one READ.
pub const PAGE: u64 = 4096;
/// Bytes of a logical block (the demo's namespace; anything else is refused).
pub const BLOCK_BYTES: u64 = 512;
/// Blocks one 4 KiB READ moves.
pub const PAGE_BLOCKS: u64 = PAGE / BLOCK_BYTES;

/// An access the controller's transport refused: the address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access(pub u64);

/// How a driver reaches its controller: BAR0's registers, the memory the controller moves data
/// to and from (queues and buffers, by the addresses the controller is given: GPAs in the TD,
/// host physical addresses on the host), and a clock.
pub trait Controller {
    /// Reads the 32-bit register at `off` in BAR0.
    ///
    /// # Errors
    /// [`Access`] if the transport cannot reach it.
    fn read_reg(&mut self, off: u64) -> Result<u32, Access>;
    /// Writes the 32-bit register at `off` in BAR0.
    ///
    /// # Errors
    /// As for [`Controller::read_reg`].
    fn write_reg(&mut self, off: u64, value: u32) -> Result<(), Access>;
    /// Reads memory at `addr` (within one page).
    ///
    /// # Errors
    /// [`Access`] if the transport cannot reach it.
    fn read_mem(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), Access>;
    /// Writes memory at `addr` (within one page).
    ///
    /// # Errors
    /// As for [`Controller::read_mem`].
    fn write_mem(&mut self, addr: u64, data: &[u8]) -> Result<(), Access>;
    /// A monotonic clock (TSC ticks).
    fn now(&mut self) -> u64;
}

/// Why the driver stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NvmeError {
    /// The transport refused an access to this address.
    Access(u64),
    /// CSTS.RDY did not reach `ready` before the deadline, or CSTS.CFS was set: CSTS.
    NotReady {
        /// The state waited for.
        ready: bool,
        /// CSTS as last read.
        csts: u32,
    },
    /// No completion of a command of `opcode` on queue `qid` before the deadline.
    NoCompletion {
        /// Queue.
        qid: u16,
        /// Opcode.
        opcode: u8,
    },
    /// A command completed with a non-zero status (SCT and SC).
    Failed {
        /// The opcode.
        opcode: u8,
        /// Status field.
        status: u16,
    },
    /// Identify Namespace names a block size other than 512 bytes.
    BlockSize(u32),
    /// Two rounds of the same READs hashed to different digests.
    Differs,
    /// A transfer of this many pages does not fit one PRP list (3 to 513 pages).
    Transfer(u64),
}

impl From<Access> for NvmeError {
    fn from(a: Access) -> NvmeError {
        NvmeError::Access(a.0)
    }
}

impl core::fmt::Display for NvmeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            NvmeError::Access(a) => write!(f, "the driver could not reach {a:#x}"),
            NvmeError::NotReady { ready, csts } => {
                write!(f, "CSTS.RDY never became {}: CSTS {csts:#x}", u8::from(ready))
            }
            NvmeError::NoCompletion { qid, opcode } => {
                write!(f, "no completion of opcode {opcode:#04x} on queue {qid}")
            }
            NvmeError::Failed { opcode, status } => write!(f, "opcode {opcode:#04x} completed with status {status:#x}"),
            NvmeError::BlockSize(b) => write!(f, "block size {b} bytes ({BLOCK_BYTES} expected)"),
            NvmeError::Differs => f.write_str("two rounds of the same READs read different data"),
            NvmeError::Transfer(p) => write!(f, "a transfer of {p} pages does not fit one PRP list"),
        }
    }
}

/// The pages of the admin and I/O queues (one each, any address the controller may use).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Queues {
    /// Admin submission queue.
    pub asq: u64,
    /// Admin completion queue.
    pub acq: u64,
    /// I/O submission queue.
    pub iosq: u64,
    /// I/O completion queue.
    pub iocq: u64,
}

/// What Identify Controller and Identify Namespace 1 say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    /// PCI vendor id.
    pub vid: u16,
    /// Serial number (bytes 4..24).
    pub serial: [u8; 20],
    /// Model number (bytes 24..64).
    pub model: [u8; 40],
    /// Namespace 1: size in blocks.
    pub blocks: u64,
    /// Namespace 1: block size in bytes.
    pub block_bytes: u32,
}

/// What [`Driver::read`] read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Read {
    /// Blocks read, from LBA 0.
    pub blocks: u64,
    /// SHA-384 of them, in order.
    pub digest: [u8; 48],
    /// Clock ticks spent in the READ commands: from each batch's doorbell to its last
    /// completion, summed (queue setup and hashing not included).
    pub ticks: u64,
}

/// One queue pair's positions.
#[derive(Clone, Copy, Debug)]
struct Queue {
    qid: u16,
    sq: u64,
    cq: u64,
    tail: u16,
    head: u16,
    phase: bool,
    next_cid: u16,
}

impl Queue {
    const fn new(qid: u16, sq: u64, cq: u64) -> Queue {
        Queue { qid, sq, cq, tail: 0, head: 0, phase: true, next_cid: 1 }
    }

    fn cid(&mut self) -> u16 {
        let c = self.next_cid;
        self.next_cid = self.next_cid.wrapping_add(1);
        c
    }
}

/// A 64-byte submission queue entry: opcode, command id, namespace, PRP1 and CDW10..12.
pub fn sqe(opcode: u8, cid: u16, nsid: u32, prp1: u64, cdw: [u32; 3]) -> [u8; 64] {
    let mut e = [0u8; 64];
    e[0] = opcode;
    e[2..4].copy_from_slice(&cid.to_le_bytes());
    e[4..8].copy_from_slice(&nsid.to_le_bytes());
    e[24..32].copy_from_slice(&prp1.to_le_bytes());
    for (i, d) in cdw.iter().enumerate() {
        e[40 + i * 4..44 + i * 4].copy_from_slice(&d.to_le_bytes());
    }
    e
}

/// [`sqe`] with PRP2 (the second page, or a PRP list).
fn sqe_prp2(opcode: u8, cid: u16, prp: (u64, u64), cdw: [u32; 3]) -> [u8; 64] {
    let mut e = sqe(opcode, cid, 1, prp.0, cdw);
    e[32..40].copy_from_slice(&prp.1.to_le_bytes());
    e
}

/// CDW10..12 of a 4 KiB READ at `lba`.
fn read_cdw(lba: u64) -> [u32; 3] {
    [lba as u32, (lba >> 32) as u32, (PAGE_BLOCKS - 1) as u32]
}

/// The driver of one controller through `C`.
#[derive(Debug)]
pub struct Driver<C> {
    c: C,
    stride: u64,
    admin: Queue,
    io: Queue,
    /// Clock ticks a wait may last.
    timeout: u64,
}

impl<C: Controller> Driver<C> {
    /// Resets the controller and brings it up with the admin queues of `queues` (all four queue
    /// pages zeroed first); every wait lasts at most `timeout` ticks.
    ///
    /// # Errors
    /// [`NvmeError`].
    pub fn enable(mut c: C, queues: Queues, timeout: u64) -> Result<Driver<C>, NvmeError> {
        let cap_hi = c.read_reg(reg::CAP + 4)?;
        let stride = 4u64 << (cap_hi & 0xF);
        let mut d = Driver {
            c,
            stride,
            admin: Queue::new(0, queues.asq, queues.acq),
            io: Queue::new(1, queues.iosq, queues.iocq),
            timeout,
        };
        d.c.write_reg(reg::CC, 0)?;
        d.wait_ready(false)?;
        for page in [queues.asq, queues.acq, queues.iosq, queues.iocq] {
            d.c.write_mem(page, &[0u8; PAGE as usize])?;
        }
        let size = u32::from(ENTRIES - 1);
        d.c.write_reg(reg::AQA, size << 16 | size)?;
        d.set_reg64(reg::ASQ, queues.asq)?;
        d.set_reg64(reg::ACQ, queues.acq)?;
        // EN, NVM command set, 4 KiB pages, 64-byte SQEs (IOSQES = 6), 16-byte CQEs (IOCQES = 4).
        d.c.write_reg(reg::CC, 1 | 6 << 16 | 4 << 20)?;
        d.wait_ready(true)?;
        Ok(d)
    }

    /// The transport.
    pub fn controller(&mut self) -> &mut C {
        &mut self.c
    }

    fn set_reg64(&mut self, off: u64, v: u64) -> Result<(), NvmeError> {
        self.c.write_reg(off, v as u32)?;
        Ok(self.c.write_reg(off + 4, (v >> 32) as u32)?)
    }

    fn deadline(&mut self) -> u64 {
        self.c.now().saturating_add(self.timeout)
    }

    fn wait_ready(&mut self, ready: bool) -> Result<(), NvmeError> {
        let end = self.deadline();
        loop {
            let csts = self.c.read_reg(reg::CSTS)?;
            if csts & 2 != 0 {
                return Err(NvmeError::NotReady { ready, csts });
            }
            if (csts & 1 != 0) == ready {
                return Ok(());
            }
            if self.c.now() >= end {
                return Err(NvmeError::NotReady { ready, csts });
            }
            core::hint::spin_loop();
        }
    }

    /// Writes a command into `q`'s submission queue (the doorbell rings later).
    fn push(&mut self, q: &mut Queue, e: &[u8; 64]) -> Result<(), NvmeError> {
        self.c.write_mem(q.sq + u64::from(q.tail) * SQE_BYTES, e)?;
        q.tail = (q.tail + 1) % ENTRIES;
        Ok(())
    }

    fn ring(&mut self, q: &Queue) -> Result<(), NvmeError> {
        Ok(self.c.write_reg(reg::DOORBELLS + u64::from(2 * q.qid) * self.stride, u32::from(q.tail))?)
    }

    /// Waits up to `timeout` ticks for the next completion of `q` (a command of `opcode`), and
    /// returns its status (0: success).
    fn complete(&mut self, q: &mut Queue, opcode: u8, timeout: u64) -> Result<u16, NvmeError> {
        let at = q.cq + u64::from(q.head) * CQE_BYTES;
        let end = self.c.now().saturating_add(timeout);
        let mut e = [0u8; 16];
        loop {
            self.c.read_mem(at, &mut e)?;
            let dw3 = u32::from_le_bytes([e[12], e[13], e[14], e[15]]);
            if (dw3 >> 16 & 1 != 0) == q.phase {
                q.head = (q.head + 1) % ENTRIES;
                if q.head == 0 {
                    q.phase = !q.phase;
                }
                self.c.write_reg(reg::DOORBELLS + u64::from(2 * q.qid + 1) * self.stride, u32::from(q.head))?;
                return Ok((dw3 >> 17) as u16);
            }
            if self.c.now() >= end {
                return Err(NvmeError::NoCompletion { qid: q.qid, opcode });
            }
            // PAUSE: a spinning vCPU lets the device's emulation run (QEMU's TCG leaves its
            // execution loop at PAUSE), so a completion arrives as soon as the device posts it.
            core::hint::spin_loop();
        }
    }

    /// One admin command, waited for; a non-zero status is [`NvmeError::Failed`].
    fn admin(&mut self, opcode: u8, nsid: u32, prp1: u64, cdw: [u32; 3]) -> Result<(), NvmeError> {
        let mut q = self.admin;
        let e = sqe(opcode, q.cid(), nsid, prp1, cdw);
        self.push(&mut q, &e)?;
        self.ring(&q)?;
        let r = self.complete(&mut q, opcode, self.timeout);
        self.admin = q;
        match r? {
            0 => Ok(()),
            status => Err(NvmeError::Failed { opcode, status }),
        }
    }

    /// Identify Controller and Identify Namespace 1 into the page `page`.
    ///
    /// # Errors
    /// [`NvmeError`]; [`NvmeError::BlockSize`] unless the namespace's blocks are 512 bytes.
    pub fn identify(&mut self, page: u64) -> Result<Identity, NvmeError> {
        self.admin(op::IDENTIFY, 0, page, [1, 0, 0])?;
        let mut head = [0u8; 64];
        self.c.read_mem(page, &mut head)?;
        let mut id = Identity {
            vid: u16::from_le_bytes([head[0], head[1]]),
            serial: [0; 20],
            model: [0; 40],
            blocks: 0,
            block_bytes: 0,
        };
        id.serial.copy_from_slice(&head[4..24]);
        id.model.copy_from_slice(&head[24..64]);
        self.admin(op::IDENTIFY, 1, page, [0, 0, 0])?;
        let mut ns = [0u8; 192];
        self.c.read_mem(page, &mut ns)?;
        let mut nsze = [0u8; 8];
        nsze.copy_from_slice(&ns[..8]);
        id.blocks = u64::from_le_bytes(nsze);
        let format = usize::from(ns[26] & 0xF);
        let lbads = ns[128 + format * 4 + 2];
        id.block_bytes = 1u32.checked_shl(u32::from(lbads)).unwrap_or(0);
        if u64::from(id.block_bytes) != BLOCK_BYTES {
            return Err(NvmeError::BlockSize(id.block_bytes));
        }
        Ok(id)
    }

    /// Creates the I/O completion and submission queue pair (queue 1), physically contiguous,
    /// without interrupts.
    ///
    /// # Errors
    /// [`NvmeError`].
    pub fn create_io_queues(&mut self) -> Result<(), NvmeError> {
        let size = u32::from(ENTRIES - 1) << 16;
        let (sq, cq) = (self.io.sq, self.io.cq);
        self.admin(op::CREATE_CQ, 0, cq, [size | 1, 1, 0])?;
        self.admin(op::CREATE_SQ, 0, sq, [size | 1, 1 << 16 | 1, 0])
    }

    /// READs `blocks` blocks from LBA 0 into the pages `data`, batch by batch (one 4 KiB READ
    /// per page, at most `ENTRIES - 1` at a time), hashing each batch after its completions
    /// arrived.
    ///
    /// # Errors
    /// [`NvmeError`].
    pub fn read(&mut self, data: &[u64], blocks: u64) -> Result<Read, NvmeError> {
        let pages = blocks / PAGE_BLOCKS;
        let per_batch = (data.len() as u64).min(u64::from(ENTRIES - 1));
        let mut hash = Sha384::new();
        let (mut page, mut ticks) = (0, 0u64);
        let mut buf = [0u8; PAGE as usize];
        while page < pages && per_batch > 0 {
            let batch = (pages - page).min(per_batch);
            let mut q = self.io;
            for (i, &dst) in data.iter().take(batch as usize).enumerate() {
                let e = sqe(op::READ, q.cid(), 1, dst, read_cdw((page + i as u64) * PAGE_BLOCKS));
                self.push(&mut q, &e)?;
            }
            let t0 = self.c.now();
            self.ring(&q)?;
            let mut done = Ok(());
            for _ in 0..batch {
                match self.complete(&mut q, op::READ, self.timeout) {
                    Ok(0) => {}
                    Ok(status) => done = Err(NvmeError::Failed { opcode: op::READ, status }),
                    Err(e) => {
                        done = Err(e);
                        break;
                    }
                }
            }
            ticks = ticks.saturating_add(self.c.now().wrapping_sub(t0));
            self.io = q;
            done?;
            for &dst in data.iter().take(batch as usize) {
                self.c.read_mem(dst, &mut buf)?;
                hash.update(buf);
            }
            page += batch;
        }
        Ok(Read { blocks: page * PAGE_BLOCKS, digest: hash.finalize().into(), ticks })
    }

    /// [`Driver::read`] `rounds` times (at least once): the blocks and digest, which every round
    /// must agree on, and the fewest ticks of any round. On a machine shared with other work the
    /// device's emulation runs when the host schedules it; the best round is the one it
    /// disturbed least.
    ///
    /// # Errors
    /// [`NvmeError`]; [`NvmeError::Differs`] if two rounds read different data.
    pub fn read_best(&mut self, data: &[u64], blocks: u64, rounds: u32) -> Result<Read, NvmeError> {
        let mut best = self.read(data, blocks)?;
        for _ in 1..rounds {
            let r = self.read(data, blocks)?;
            if (r.blocks, r.digest) != (best.blocks, best.digest) {
                return Err(NvmeError::Differs);
            }
            best.ticks = best.ticks.min(r.ticks);
        }
        Ok(best)
    }

    /// One 4 KiB READ of LBA 0 into `dst`, whatever `dst` is, waited for at most `timeout`
    /// ticks; returns the completion status. The fault cases use it: a DMA the unit refuses
    /// still completes with status 0, and one whose command fetch it refuses never completes.
    ///
    /// # Errors
    /// [`NvmeError`] (a non-zero status is returned, not an error).
    pub fn read_to(&mut self, dst: u64, timeout: u64) -> Result<u16, NvmeError> {
        let mut q = self.io;
        let e = sqe(op::READ, q.cid(), 1, dst, read_cdw(0));
        self.push(&mut q, &e)?;
        self.ring(&q)?;
        let r = self.complete(&mut q, op::READ, timeout);
        self.io = q;
        r
    }

    /// One Identify Controller into `page` on the admin queue, waited for at most `timeout`
    /// ticks; returns the completion status. The host's check that no DMA passes before the
    /// remapping unit is set up uses it: there the command fetch itself is refused and nothing
    /// completes.
    ///
    /// # Errors
    /// [`NvmeError`] (a non-zero status is returned, not an error).
    pub fn identify_to(&mut self, page: u64, timeout: u64) -> Result<u16, NvmeError> {
        let mut q = self.admin;
        let e = sqe(op::IDENTIFY, q.cid(), 0, page, [1, 0, 0]);
        self.push(&mut q, &e)?;
        self.ring(&q)?;
        let r = self.complete(&mut q, op::IDENTIFY, timeout);
        self.admin = q;
        r
    }

    /// Queues one 4 KiB READ (LBA 8 * i) into each of `dsts` and rings the doorbell without
    /// waiting: the commands are outstanding when it returns (the revocation case). At most
    /// `ENTRIES - 1` at a time; returns how many it queued.
    ///
    /// # Errors
    /// [`NvmeError`].
    pub fn submit_reads(&mut self, dsts: &[u64]) -> Result<usize, NvmeError> {
        let mut q = self.io;
        let n = dsts.len().min(usize::from(ENTRIES - 1));
        for (i, &dst) in dsts.iter().take(n).enumerate() {
            let e = sqe(op::READ, q.cid(), 1, dst, read_cdw(i as u64 * PAGE_BLOCKS));
            self.push(&mut q, &e)?;
        }
        self.ring(&q)?;
        self.io = q;
        Ok(n)
    }

    /// Queues one READ of `pages` 4 KiB pages from LBA 0 into each of `dsts` and rings the
    /// doorbell without waiting: each command's first page goes to its destination, the rest to
    /// `sink`, through one PRP list at `list` (written here, its entries all `sink`). Long
    /// commands keep the device's DMA going for a while after the doorbell: the revocation case
    /// wants its READs in flight, not done, when the host's call comes. At most `ENTRIES - 1`
    /// commands; returns how many it queued.
    ///
    /// # Errors
    /// [`NvmeError::Transfer`] for fewer than 3 or more than 513 pages; [`NvmeError`].
    pub fn submit_long_reads(
        &mut self,
        dsts: &[u64],
        (list, sink): (u64, u64),
        pages: u64,
    ) -> Result<usize, NvmeError> {
        if !(3..=513).contains(&pages) {
            return Err(NvmeError::Transfer(pages));
        }
        let mut entries = [0u8; PAGE as usize];
        for e in entries.chunks_exact_mut(8).take((pages - 1) as usize) {
            e.copy_from_slice(&sink.to_le_bytes());
        }
        self.c.write_mem(list, &entries)?;
        let mut q = self.io;
        let n = dsts.len().min(usize::from(ENTRIES - 1));
        let cdw = [0, 0, (pages * PAGE_BLOCKS - 1) as u32];
        for &dst in dsts.iter().take(n) {
            let e = sqe_prp2(op::READ, q.cid(), (dst, list), cdw);
            self.push(&mut q, &e)?;
        }
        self.ring(&q)?;
        self.io = q;
        Ok(n)
    }

    /// CC.EN = 0 and CSTS.RDY = 0: the controller stops and forgets its queues (no DMA
    /// outstanding), as the host leaves it before giving it away.
    ///
    /// # Errors
    /// [`NvmeError`].
    pub fn disable(&mut self) -> Result<(), NvmeError> {
        self.c.write_reg(reg::CC, 0)?;
        self.wait_ready(false)
    }
}
