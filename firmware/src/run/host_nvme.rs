//! The host reading the drive into its own memory through the host domain: the same READs as
//! the TD's driver (`guest/nvme.rs`: 4 KiB each, in batches of as many data pages as the guest
//! has, hashed with SHA-384 as they arrive), but from the host's side: BAR0 through the host's
//! own mapping, queues and buffers in host pages, and every DMA translated by QEMU's unit
//! through the host map (the host world's nested table, `DmaRemapping::host_map`). Gives
//! `nvme_read_mib_s_host`, the denominator of `dma_private_vs_host`.

use sha2::{Digest, Sha384};

use crate::drivers::phys::{Frames, Mmio};
use crate::drivers::tsc::Tsc;
// The controller's registers and commands, as the TD's driver names them.
use crate::guest::nvme::{ACQ, AQA, ASQ, CAP, CC, CSTS, DOORBELLS, ENTRIES, OP_CREATE_CQ, OP_CREATE_SQ, OP_READ};

const PAGE: u64 = 4096;
/// How long the host waits for the controller or a completion: a deadline on the clock, not a
/// count of polls, since a poll under TCG takes a time that depends on the machine's load.
const TIMEOUT_S: u64 = 5;

/// The host's pages for the read: admin SQ/CQ, I/O SQ/CQ, then the data pages.
#[derive(Clone, Copy, Debug)]
pub struct HostPages {
    /// Admin submission, admin completion, I/O submission, I/O completion queue.
    pub queues: [u64; 4],
    /// Data pages (one 4 KiB READ each per batch), physically anywhere.
    pub data: [u64; 15],
}

/// What the host read.
#[derive(Clone, Copy, Debug)]
pub struct HostRead {
    /// SHA-384 of the blocks, in order.
    pub digest: [u8; 48],
    /// Microseconds of the reading (queues created to the last batch hashed).
    pub us: u64,
}

/// Why the host's read stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostNvmeError {
    /// CSTS.RDY did not follow CC.EN (or CSTS.CFS): CSTS.
    NotReady(u32),
    /// No completion for a command of this opcode.
    NoCompletion(u8),
    /// A command of this opcode completed with this status.
    Failed(u8, u16),
}

impl core::fmt::Display for HostNvmeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            HostNvmeError::NotReady(csts) => write!(f, "the controller did not become ready: CSTS {csts:#x}"),
            HostNvmeError::NoCompletion(op) => write!(f, "no completion of opcode {op:#04x}"),
            HostNvmeError::Failed(op, status) => write!(f, "opcode {op:#04x} completed with status {status:#x}"),
        }
    }
}

struct Queue {
    sq: u64,
    cq: u64,
    qid: u16,
    tail: u16,
    head: u16,
    phase: bool,
    cid: u16,
}

struct Driver<'a> {
    regs: &'a Mmio,
    mem: Frames,
    stride: u64,
    tsc: &'a Tsc,
}

impl Driver<'_> {
    /// The clock reading at which a wait that starts now gives up.
    fn deadline(&self) -> u64 {
        self.tsc.now().saturating_add(self.tsc.hz().saturating_mul(TIMEOUT_S))
    }

    fn set64(&self, off: u64, v: u64) {
        self.regs.write_u32(off, v as u32);
        self.regs.write_u32(off + 4, (v >> 32) as u32);
    }

    fn wait_ready(&self, ready: bool) -> Result<(), HostNvmeError> {
        let mut csts = 0;
        let end = self.deadline();
        while self.tsc.now() < end {
            csts = self.regs.read_u32(CSTS);
            if csts & 2 != 0 {
                break;
            }
            if (csts & 1 != 0) == ready {
                return Ok(());
            }
        }
        Err(HostNvmeError::NotReady(csts))
    }

    fn push(&self, q: &mut Queue, opcode: u8, prp1: u64, cdw: [u32; 3]) {
        let mut e = [0u8; 64];
        e[0] = opcode;
        e[2..4].copy_from_slice(&q.cid.to_le_bytes());
        e[4..8].copy_from_slice(&(if opcode == OP_READ { 1u32 } else { 0 }).to_le_bytes());
        e[24..32].copy_from_slice(&prp1.to_le_bytes());
        for (i, d) in cdw.iter().enumerate() {
            e[40 + i * 4..44 + i * 4].copy_from_slice(&d.to_le_bytes());
        }
        self.mem.write(q.sq + u64::from(q.tail) * 64, &e);
        q.tail = (q.tail + 1) % ENTRIES;
        q.cid = q.cid.wrapping_add(1);
    }

    fn ring(&self, q: &Queue) {
        self.regs.write_u32(DOORBELLS + u64::from(2 * q.qid) * self.stride, u32::from(q.tail));
    }

    fn complete(&self, q: &mut Queue, opcode: u8) -> Result<(), HostNvmeError> {
        let at = q.cq + u64::from(q.head) * 16;
        let end = self.deadline();
        while self.tsc.now() < end {
            let dw3 = (self.mem.read_u64(at + 8) >> 32) as u32;
            if (dw3 >> 16 & 1 != 0) != q.phase {
                continue;
            }
            q.head = (q.head + 1) % ENTRIES;
            if q.head == 0 {
                q.phase = !q.phase;
            }
            self.regs.write_u32(DOORBELLS + u64::from(2 * q.qid + 1) * self.stride, u32::from(q.head));
            let status = (dw3 >> 17) as u16;
            return if status == 0 { Ok(()) } else { Err(HostNvmeError::Failed(opcode, status)) };
        }
        Err(HostNvmeError::NoCompletion(opcode))
    }

    fn admin(&self, q: &mut Queue, opcode: u8, prp1: u64, cdw: [u32; 3]) -> Result<(), HostNvmeError> {
        self.push(q, opcode, prp1, cdw);
        self.ring(q);
        self.complete(q, opcode)
    }
}

/// Resets the controller, brings it up with the host's queues, READs `blocks` blocks from LBA 0
/// into the data pages batch by batch and hashes them; leaves the controller disabled (no DMA
/// outstanding) for the host to give it away.
///
/// # Errors
/// [`HostNvmeError`].
pub fn read(regs: &Mmio, mem: Frames, tsc: &Tsc, pages: &HostPages, blocks: u64) -> Result<HostRead, HostNvmeError> {
    let cap_hi = regs.read_u32(CAP + 4);
    let d = Driver { regs, mem, stride: 4 << (cap_hi & 0xF), tsc };
    regs.write_u32(CC, 0);
    d.wait_ready(false)?;
    for p in pages.queues {
        mem.zero(p, PAGE as usize);
    }
    let [asq, acq, iosq, iocq] = pages.queues;
    let size = u32::from(ENTRIES - 1);
    regs.write_u32(AQA, size << 16 | size);
    d.set64(ASQ, asq);
    d.set64(ACQ, acq);
    regs.write_u32(CC, 1 | 6 << 16 | 4 << 20);
    d.wait_ready(true)?;
    let t0 = tsc.now();
    let mut admin = Queue { sq: asq, cq: acq, qid: 0, tail: 0, head: 0, phase: true, cid: 1 };
    d.admin(&mut admin, OP_CREATE_CQ, iocq, [size << 16 | 1, 1, 0])?;
    d.admin(&mut admin, OP_CREATE_SQ, iosq, [size << 16 | 1, 1 << 16 | 1, 0])?;
    let mut io = Queue { sq: iosq, cq: iocq, qid: 1, tail: 0, head: 0, phase: true, cid: 1 };
    let per_page = PAGE / 512;
    let total = blocks / per_page;
    let mut hash = Sha384::new();
    let mut buf = [0u8; PAGE as usize];
    let mut page = 0;
    while page < total {
        let batch = (total - page).min(pages.data.len() as u64).min(u64::from(ENTRIES - 1));
        for i in 0..batch {
            let lba = (page + i) * per_page;
            d.push(&mut io, OP_READ, pages.data[i as usize], [lba as u32, (lba >> 32) as u32, (per_page - 1) as u32]);
        }
        d.ring(&io);
        for _ in 0..batch {
            d.complete(&mut io, OP_READ)?;
        }
        for i in 0..batch {
            mem.read(pages.data[i as usize], &mut buf);
            hash.update(buf);
        }
        page += batch;
    }
    let us = tsc.ticks_to_us(tsc.now().wrapping_sub(t0));
    regs.write_u32(CC, 0);
    d.wait_ready(false)?;
    Ok(HostRead { digest: hash.finalize().into(), us })
}
