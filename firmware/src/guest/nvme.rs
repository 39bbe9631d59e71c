//! The TD's NVMe driver: it drives the assigned controller through the registers its guest
//! accepted (MMIO_MAPPED leaves) and keeps every queue and buffer in its own private memory.
//! Every byte the controller moves, its fetches of submission entries and its completion writes
//! included, goes through QEMU's intel-iommu, whose second stage is the TD's S-EPT: IOVA = GPA.
//!
//! The flow (NVMe base specification 2.0, §3.5.1 controller initialisation): CC.EN = 0 and wait
//! for CSTS.RDY = 0; the admin queues (AQA, ASQ, ACQ); CC.EN = 1 and wait for RDY; Identify
//! Controller and Identify Namespace 1; an I/O completion and submission queue pair; READs of
//! the drive's first blocks, batch by batch into the data pages, hashed as they arrive.

use sha2::{Digest, Sha384};

use tsm::Tsm;

use super::{GuestError, GuestMemory};
use crate::platform::FirmwarePlatform;

const PAGE: u64 = 4096;
pub(crate) const CAP: u64 = 0x00;
pub(crate) const CC: u64 = 0x14;
pub(crate) const CSTS: u64 = 0x1C;
pub(crate) const AQA: u64 = 0x24;
pub(crate) const ASQ: u64 = 0x28;
pub(crate) const ACQ: u64 = 0x30;
pub(crate) const DOORBELLS: u64 = 0x1000;
/// Entries per queue (admin and I/O).
pub(crate) const ENTRIES: u16 = 16;
const SQE_BYTES: u64 = 64;
const CQE_BYTES: u64 = 16;
/// Polls of a status bit or a completion entry before the driver gives up.
const POLLS: u32 = 2_000_000;

pub(crate) const OP_CREATE_SQ: u8 = 0x01;
pub(crate) const OP_CREATE_CQ: u8 = 0x05;
const OP_IDENTIFY: u8 = 0x06;
pub(crate) const OP_READ: u8 = 0x02;

/// Where the driver keeps its queues and buffers (guest-physical, each a private page).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NvmeLayout {
    /// The controller's registers (BAR0's GPA).
    pub bar: u64,
    /// Admin submission queue.
    pub asq: u64,
    /// Admin completion queue.
    pub acq: u64,
    /// Identify data.
    pub identify: u64,
    /// I/O submission queue.
    pub iosq: u64,
    /// I/O completion queue.
    pub iocq: u64,
    /// First data page.
    pub data: u64,
    /// Data pages (one READ of 4 KiB each per batch).
    pub data_pages: u64,
}

/// What the driver found and read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NvmeFindings {
    /// Identify Controller: PCI vendor id.
    pub vid: u16,
    /// Identify Controller: the model number (bytes 24..64), as far as it is ASCII.
    pub model: [u8; 40],
    /// Identify Controller: the serial number (bytes 4..24).
    pub serial: [u8; 20],
    /// Identify Namespace 1: size in blocks.
    pub blocks: u64,
    /// Identify Namespace 1: block size in bytes.
    pub block_bytes: u32,
    /// Blocks read.
    pub read_blocks: u64,
    /// SHA-384 of the blocks read, in order.
    pub digest: [u8; 48],
}

/// Why the driver stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NvmeError {
    /// The guest's memory accessor refused an access.
    Memory(GuestError),
    /// CSTS.RDY did not reach `ready` (or CSTS.CFS was set: `csts`).
    NotReady {
        /// The state waited for.
        ready: bool,
        /// CSTS as last read.
        csts: u32,
    },
    /// No completion for command `cid` of queue `qid`.
    NoCompletion {
        /// Queue.
        qid: u16,
        /// Command id.
        cid: u16,
    },
    /// A command completed with a non-zero status.
    Failed {
        /// The opcode.
        opcode: u8,
        /// Status field (SCT and SC).
        status: u16,
    },
    /// Identify Namespace names a block size the driver does not handle (not 512 bytes).
    BlockSize(u32),
}

impl From<GuestError> for NvmeError {
    fn from(e: GuestError) -> NvmeError {
        NvmeError::Memory(e)
    }
}

impl core::fmt::Display for NvmeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            NvmeError::Memory(e) => write!(f, "{e}"),
            NvmeError::NotReady { ready, csts } => {
                write!(f, "CSTS.RDY never became {}: CSTS {csts:#x}", u8::from(*ready))
            }
            NvmeError::NoCompletion { qid, cid } => write!(f, "no completion of command {cid} on queue {qid}"),
            NvmeError::Failed { opcode, status } => write!(f, "opcode {opcode:#04x} completed with status {status:#x}"),
            NvmeError::BlockSize(b) => write!(f, "block size {b} bytes (512 expected)"),
        }
    }
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
}

/// A 64-byte submission queue entry: opcode, command id, namespace, PRP1 and CDW10..12.
fn sqe(opcode: u8, cid: u16, nsid: u32, prp1: u64, cdw: [u32; 3]) -> [u8; 64] {
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

/// The driver over the guest's memory accessor.
#[derive(Debug)]
pub struct NvmeDriver<'m, 'a> {
    mem: &'m GuestMemory<'a>,
    layout: NvmeLayout,
    stride: u64,
    admin: Queue,
    io: Queue,
}

impl<'m, 'a> NvmeDriver<'m, 'a> {
    /// A driver for the controller at `layout.bar`.
    pub fn new(mem: &'m GuestMemory<'a>, layout: NvmeLayout) -> NvmeDriver<'m, 'a> {
        NvmeDriver {
            mem,
            layout,
            stride: 4,
            admin: Queue::new(0, layout.asq, layout.acq),
            io: Queue::new(1, layout.iosq, layout.iocq),
        }
    }

    fn reg(&self, tsm: &mut Tsm<FirmwarePlatform>, off: u64) -> Result<u32, NvmeError> {
        Ok(self.mem.mmio_read_u32(tsm, self.layout.bar + off)?)
    }

    fn set_reg(&self, tsm: &mut Tsm<FirmwarePlatform>, off: u64, v: u32) -> Result<(), NvmeError> {
        Ok(self.mem.mmio_write_u32(tsm, self.layout.bar + off, v)?)
    }

    fn set_reg64(&self, tsm: &mut Tsm<FirmwarePlatform>, off: u64, v: u64) -> Result<(), NvmeError> {
        self.set_reg(tsm, off, v as u32)?;
        self.set_reg(tsm, off + 4, (v >> 32) as u32)
    }

    fn wait_ready(&self, tsm: &mut Tsm<FirmwarePlatform>, ready: bool) -> Result<(), NvmeError> {
        let mut csts = 0;
        for _ in 0..POLLS {
            csts = self.reg(tsm, CSTS)?;
            if csts & 2 != 0 {
                break;
            }
            if (csts & 1 != 0) == ready {
                return Ok(());
            }
        }
        Err(NvmeError::NotReady { ready, csts })
    }

    /// Resets the controller and brings it up with the admin queues in private memory.
    ///
    /// # Errors
    /// [`NvmeError`].
    pub fn enable(&mut self, tsm: &mut Tsm<FirmwarePlatform>) -> Result<(), NvmeError> {
        let cap_hi = self.reg(tsm, CAP + 4)?;
        self.stride = 4 << (cap_hi & 0xF);
        self.set_reg(tsm, CC, 0)?;
        self.wait_ready(tsm, false)?;
        for page in [self.layout.asq, self.layout.acq, self.layout.iosq, self.layout.iocq] {
            self.mem.write(tsm, page, &[0u8; PAGE as usize])?;
        }
        let size = u32::from(ENTRIES - 1);
        self.set_reg(tsm, AQA, size << 16 | size)?;
        self.set_reg64(tsm, ASQ, self.layout.asq)?;
        self.set_reg64(tsm, ACQ, self.layout.acq)?;
        // EN, NVM command set, 4 KiB pages, 64-byte SQEs (IOSQES = 6), 16-byte CQEs (IOCQES = 4).
        self.set_reg(tsm, CC, 1 | 6 << 16 | 4 << 20)?;
        self.wait_ready(tsm, true)
    }

    /// Writes a command into `q`'s submission queue (the doorbell rings later).
    fn push(&self, tsm: &mut Tsm<FirmwarePlatform>, q: &mut Queue, e: &[u8; 64]) -> Result<(), NvmeError> {
        self.mem.write(tsm, q.sq + u64::from(q.tail) * SQE_BYTES, e)?;
        q.tail = (q.tail + 1) % ENTRIES;
        Ok(())
    }

    fn ring(&self, tsm: &mut Tsm<FirmwarePlatform>, q: &Queue) -> Result<(), NvmeError> {
        self.set_reg(tsm, DOORBELLS + u64::from(2 * q.qid) * self.stride, u32::from(q.tail))
    }

    /// Waits for the next completion of `q`; returns its command id.
    fn complete(&self, tsm: &mut Tsm<FirmwarePlatform>, q: &mut Queue, opcode: u8) -> Result<u16, NvmeError> {
        let at = q.cq + u64::from(q.head) * CQE_BYTES;
        let mut e = [0u8; 16];
        for _ in 0..POLLS {
            self.mem.read(tsm, at, &mut e)?;
            let dw3 = u32::from_le_bytes([e[12], e[13], e[14], e[15]]);
            if (dw3 >> 16 & 1 != 0) != q.phase {
                continue;
            }
            q.head = (q.head + 1) % ENTRIES;
            if q.head == 0 {
                q.phase = !q.phase;
            }
            self.set_reg(tsm, DOORBELLS + u64::from(2 * q.qid + 1) * self.stride, u32::from(q.head))?;
            let status = (dw3 >> 17) as u16;
            if status != 0 {
                return Err(NvmeError::Failed { opcode, status });
            }
            return Ok(dw3 as u16);
        }
        Err(NvmeError::NoCompletion { qid: q.qid, cid: q.next_cid })
    }

    fn admin(
        &mut self,
        tsm: &mut Tsm<FirmwarePlatform>,
        opcode: u8,
        nsid: u32,
        prp1: u64,
        cdw: [u32; 3],
    ) -> Result<(), NvmeError> {
        let mut q = self.admin;
        let cid = q.next_cid;
        q.next_cid = q.next_cid.wrapping_add(1);
        self.push(tsm, &mut q, &sqe(opcode, cid, nsid, prp1, cdw))?;
        self.ring(tsm, &q)?;
        let r = self.complete(tsm, &mut q, opcode);
        self.admin = q;
        r.map(|_| ())
    }

    /// Identify Controller and Namespace 1, then the I/O queue pair.
    ///
    /// # Errors
    /// [`NvmeError`].
    pub fn identify_and_create_queues(&mut self, tsm: &mut Tsm<FirmwarePlatform>) -> Result<NvmeFindings, NvmeError> {
        let mut f = NvmeFindings {
            vid: 0,
            model: [0; 40],
            serial: [0; 20],
            blocks: 0,
            block_bytes: 0,
            read_blocks: 0,
            digest: [0; 48],
        };
        let id = self.layout.identify;
        self.admin(tsm, OP_IDENTIFY, 0, id, [1, 0, 0])?;
        let mut head = [0u8; 64];
        self.mem.read(tsm, id, &mut head)?;
        f.vid = u16::from_le_bytes([head[0], head[1]]);
        f.serial.copy_from_slice(&head[4..24]);
        f.model.copy_from_slice(&head[24..64]);
        self.admin(tsm, OP_IDENTIFY, 1, id, [0, 0, 0])?;
        let mut ns = [0u8; 192];
        self.mem.read(tsm, id, &mut ns)?;
        f.blocks = u64::from_le_bytes([ns[0], ns[1], ns[2], ns[3], ns[4], ns[5], ns[6], ns[7]]);
        let format = usize::from(ns[26] & 0xF);
        let lbads = ns[128 + format * 4 + 2];
        f.block_bytes = 1u32.checked_shl(u32::from(lbads)).unwrap_or(0);
        if f.block_bytes != 512 {
            return Err(NvmeError::BlockSize(f.block_bytes));
        }
        let size = u32::from(ENTRIES - 1) << 16;
        // Physically contiguous (PC), no interrupts: the driver polls.
        self.admin(tsm, OP_CREATE_CQ, 0, self.layout.iocq, [size | 1, 1, 0])?;
        self.admin(tsm, OP_CREATE_SQ, 0, self.layout.iosq, [size | 1, 1 << 16 | 1, 0])?;
        Ok(f)
    }

    /// One 4 KiB READ of LBA 0 into `dst`, whatever `dst` is; returns the completion status.
    /// The fault cases use it: a DMA the unit refuses still completes with status 0.
    ///
    /// # Errors
    /// [`NvmeError`] but `Failed`: the status is returned.
    pub fn read_to(&mut self, tsm: &mut Tsm<FirmwarePlatform>, dst: u64) -> Result<u16, NvmeError> {
        let mut q = self.io;
        let cid = q.next_cid;
        q.next_cid = q.next_cid.wrapping_add(1);
        self.push(tsm, &mut q, &sqe(OP_READ, cid, 1, dst, [0, 0, (PAGE / 512 - 1) as u32]))?;
        self.ring(tsm, &q)?;
        let r = self.complete(tsm, &mut q, OP_READ);
        self.io = q;
        match r {
            Ok(_) => Ok(0),
            Err(NvmeError::Failed { status, .. }) => Ok(status),
            Err(e) => Err(e),
        }
    }

    /// Queues one 4 KiB READ (LBA 8 * i) into each of `dsts` and rings the doorbell without
    /// waiting: the commands are outstanding when it returns (the revocation case). At most
    /// `ENTRIES - 1` at a time.
    ///
    /// # Errors
    /// [`NvmeError`].
    pub fn submit_reads(&mut self, tsm: &mut Tsm<FirmwarePlatform>, dsts: &[u64]) -> Result<(), NvmeError> {
        let mut q = self.io;
        for (i, &dst) in dsts.iter().take(usize::from(ENTRIES - 1)).enumerate() {
            let lba = i as u64 * (PAGE / 512);
            let cid = q.next_cid;
            q.next_cid = q.next_cid.wrapping_add(1);
            self.push(tsm, &mut q, &sqe(OP_READ, cid, 1, dst, [lba as u32, 0, (PAGE / 512 - 1) as u32]))?;
        }
        self.ring(tsm, &q)?;
        self.io = q;
        Ok(())
    }

    /// READs `blocks` blocks from LBA 0 into the data pages, batch by batch (one 4 KiB READ per
    /// data page), hashing each batch after its completions arrived. Returns the digest.
    ///
    /// # Errors
    /// [`NvmeError`].
    pub fn read_blocks(&mut self, tsm: &mut Tsm<FirmwarePlatform>, blocks: u64) -> Result<[u8; 48], NvmeError> {
        let per_page = PAGE / 512;
        let pages = blocks / per_page;
        let mut hash = Sha384::new();
        let mut page = 0;
        let mut buf = [0u8; PAGE as usize];
        while page < pages {
            let batch = (pages - page).min(self.layout.data_pages).min(u64::from(ENTRIES - 1));
            let mut q = self.io;
            for i in 0..batch {
                let lba = (page + i) * per_page;
                let cid = q.next_cid;
                q.next_cid = q.next_cid.wrapping_add(1);
                let dst = self.layout.data + i * PAGE;
                let e = sqe(OP_READ, cid, 1, dst, [lba as u32, (lba >> 32) as u32, (per_page - 1) as u32]);
                self.push(tsm, &mut q, &e)?;
            }
            self.ring(tsm, &q)?;
            for _ in 0..batch {
                self.complete(tsm, &mut q, OP_READ)?;
            }
            self.io = q;
            for i in 0..batch {
                self.mem.read(tsm, self.layout.data + i * PAGE, &mut buf)?;
                hash.update(buf);
            }
            page += batch;
        }
        Ok(hash.finalize().into())
    }
}
