//! The NVMe driver the TD and the host share (`tsm_client::nvme`), against a model controller
//! that follows the NVM Express Base Specification 2.0 as far as the driver uses it (§3.1.3
//! registers, §3.5.1 initialisation, Identify, Create I/O CQ/SQ, READ; completion entries with
//! phase tags) and serves the demo drive (`attest::disk`). Failure conditions first, each with
//! the error the driver must name: a controller that never becomes ready, one in fatal status,
//! a namespace whose blocks are not 512 bytes, a command that fails, a completion that never
//! comes, memory the transport refuses; then the happy paths.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;

use tsm_client::nvme::{op, reg, Access, Controller, Driver, NvmeError, Queues, ENTRIES, PAGE};

/// A model controller: its registers, its queues, the memory it moves data to, a clock.
#[derive(Default)]
struct Model {
    mem: HashMap<u64, Vec<u8>>,
    clock: u64,
    cc: u32,
    aqa: u32,
    asq: u64,
    acq: u64,
    /// SQ id -> (base, entries, head, CQ id).
    sqs: HashMap<u16, (u64, u16, u16, u16)>,
    /// CQ id -> (base, entries, tail, phase).
    cqs: HashMap<u16, (u64, u16, u16, bool)>,
    /// Knobs.
    never_ready: bool,
    fatal: bool,
    lbads: u8,
    read_status: u16,
    no_read_completions: bool,
    refuse: Option<u64>,
    /// The drive's content changes after this many READs.
    drift_after: Option<usize>,
    /// Commands executed (opcodes), for the tests.
    done: Vec<u8>,
}

impl Model {
    fn new() -> Model {
        Model { lbads: 9, ..Model::default() }
    }

    fn page(&mut self, addr: u64) -> &mut Vec<u8> {
        self.mem.entry(addr & !(PAGE - 1)).or_insert_with(|| vec![0; PAGE as usize])
    }

    fn put(&mut self, addr: u64, data: &[u8]) {
        let off = (addr & (PAGE - 1)) as usize;
        self.page(addr)[off..off + data.len()].copy_from_slice(data);
    }

    fn get(&mut self, addr: u64, len: usize) -> Vec<u8> {
        let off = (addr & (PAGE - 1)) as usize;
        self.page(addr)[off..off + len].to_vec()
    }

    fn post(&mut self, cqid: u16, sqid: u16, cid: u16, status: u16) {
        let (base, n, tail, phase) = self.cqs[&cqid];
        let mut e = [0u8; 16];
        let dw3 = u32::from(cid) | u32::from(phase) << 16 | u32::from(status) << 17;
        e[8..10].copy_from_slice(&0u16.to_le_bytes());
        e[10..12].copy_from_slice(&sqid.to_le_bytes());
        e[12..16].copy_from_slice(&dw3.to_le_bytes());
        self.put(base + u64::from(tail) * 16, &e);
        let tail = (tail + 1) % n;
        self.cqs.insert(cqid, (base, n, tail, if tail == 0 { !phase } else { phase }));
    }

    /// Executes the SQ's entries up to `tail`.
    fn run(&mut self, sqid: u16, new_tail: u16) {
        let (base, n, mut head, cqid) = self.sqs[&sqid];
        while head != new_tail {
            let e = self.get(base + u64::from(head) * 64, 64);
            head = (head + 1) % n;
            let (opcode, cid) = (e[0], u16::from_le_bytes([e[2], e[3]]));
            let nsid = u32::from_le_bytes(e[4..8].try_into().unwrap());
            let prp1 = u64::from_le_bytes(e[24..32].try_into().unwrap());
            let cdw = |i: usize| u32::from_le_bytes(e[40 + 4 * i..44 + 4 * i].try_into().unwrap());
            self.done.push(opcode);
            let status = match (sqid, opcode) {
                (0, op::IDENTIFY) if cdw(0) == 1 => {
                    let mut id = vec![0u8; PAGE as usize];
                    id[..2].copy_from_slice(&0x1b36u16.to_le_bytes());
                    id[4..12].copy_from_slice(b"seamless");
                    id[24..38].copy_from_slice(b"QEMU NVMe Ctrl");
                    self.put(prp1, &id);
                    0
                }
                (0, op::IDENTIFY) if cdw(0) == 0 && nsid == 1 => {
                    let mut ns = vec![0u8; PAGE as usize];
                    ns[..8].copy_from_slice(&2048u64.to_le_bytes());
                    ns[130] = self.lbads;
                    self.put(prp1, &ns);
                    0
                }
                (0, op::CREATE_CQ) => {
                    let (qid, size) = (cdw(0) as u16, (cdw(0) >> 16) as u16 + 1);
                    self.cqs.insert(qid, (prp1, size, 0, true));
                    0
                }
                (0, op::CREATE_SQ) => {
                    let (qid, size, cq) = (cdw(0) as u16, (cdw(0) >> 16) as u16 + 1, (cdw(1) >> 16) as u16);
                    self.sqs.insert(qid, (prp1, size, 0, cq));
                    0
                }
                (_, op::READ) if sqid != 0 => {
                    let lba = u64::from(cdw(0)) | u64::from(cdw(1)) << 32;
                    let blocks = u64::from(cdw(2)) + 1;
                    let mut b = [0u8; 512];
                    let reads = self.done.iter().filter(|&&o| o == op::READ).count();
                    let drifted = self.drift_after.is_some_and(|n| reads > n);
                    for i in 0..blocks {
                        attest::disk::block(lba + i, &mut b);
                        b[0] ^= u8::from(drifted);
                        self.put(prp1 + i * 512, &b);
                    }
                    if self.no_read_completions {
                        continue;
                    }
                    self.read_status
                }
                _ => 0x1, // invalid opcode
            };
            self.post(cqid, sqid, cid, status);
        }
        let s = self.sqs[&sqid];
        self.sqs.insert(sqid, (s.0, s.1, head, s.3));
    }
}

impl Controller for Model {
    fn read_reg(&mut self, off: u64) -> Result<u32, Access> {
        Ok(match off {
            o if o == reg::CAP => 0x0f01_07ff,
            o if o == reg::CAP + 4 => 0x0040_0820,
            o if o == reg::CSTS => u32::from(self.cc & 1 == 1 && !self.never_ready) | u32::from(self.fatal) << 1,
            o if o == reg::CC => self.cc,
            _ => 0,
        })
    }
    fn write_reg(&mut self, off: u64, value: u32) -> Result<(), Access> {
        match off {
            o if o == reg::CC => {
                self.cc = value;
                if value & 1 == 1 {
                    let (sqs, cqs) = ((self.aqa & 0xFFF) as u16 + 1, (self.aqa >> 16) as u16 + 1);
                    self.sqs.insert(0, (self.asq, sqs, 0, 0));
                    self.cqs.insert(0, (self.acq, cqs, 0, true));
                }
            }
            o if o == reg::AQA => self.aqa = value,
            o if o == reg::ASQ => self.asq = self.asq & !0xFFFF_FFFF | u64::from(value),
            o if o == reg::ASQ + 4 => self.asq = self.asq & 0xFFFF_FFFF | u64::from(value) << 32,
            o if o == reg::ACQ => self.acq = self.acq & !0xFFFF_FFFF | u64::from(value),
            o if o == reg::ACQ + 4 => self.acq = self.acq & 0xFFFF_FFFF | u64::from(value) << 32,
            o if o >= reg::DOORBELLS => {
                let n = (o - reg::DOORBELLS) / 4;
                if n.is_multiple_of(2) {
                    self.run((n / 2) as u16, value as u16);
                }
            }
            _ => {}
        }
        Ok(())
    }
    fn read_mem(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), Access> {
        if self.refuse == Some(addr & !(PAGE - 1)) {
            return Err(Access(addr));
        }
        buf.copy_from_slice(&self.get(addr, buf.len()));
        Ok(())
    }
    fn write_mem(&mut self, addr: u64, data: &[u8]) -> Result<(), Access> {
        if self.refuse == Some(addr & !(PAGE - 1)) {
            return Err(Access(addr));
        }
        self.put(addr, data);
        Ok(())
    }
    fn now(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }
}

const QUEUES: Queues = Queues { asq: 0x10_0000, acq: 0x10_1000, iosq: 0x10_3000, iocq: 0x10_4000 };
const IDENTIFY: u64 = 0x10_2000;
const TIMEOUT: u64 = 1000;

fn data() -> [u64; 15] {
    core::array::from_fn(|i| 0x20_0000 + i as u64 * PAGE)
}

fn up(m: Model) -> Driver<Model> {
    let mut d = Driver::enable(m, QUEUES, TIMEOUT).unwrap();
    d.identify(IDENTIFY).unwrap();
    d.create_io_queues().unwrap();
    d
}

#[test]
fn enable_rejects_a_controller_that_never_becomes_ready() {
    let m = Model { never_ready: true, ..Model::new() };
    assert_eq!(Driver::enable(m, QUEUES, TIMEOUT).err(), Some(NvmeError::NotReady { ready: true, csts: 0 }));
}

#[test]
fn enable_rejects_a_controller_in_fatal_status() {
    let m = Model { fatal: true, ..Model::new() };
    assert_eq!(Driver::enable(m, QUEUES, TIMEOUT).err(), Some(NvmeError::NotReady { ready: false, csts: 2 }));
}

#[test]
fn enable_rejects_queue_memory_the_transport_refuses() {
    let m = Model { refuse: Some(QUEUES.iosq), ..Model::new() };
    assert_eq!(Driver::enable(m, QUEUES, TIMEOUT).err(), Some(NvmeError::Access(QUEUES.iosq)));
}

#[test]
fn identify_rejects_a_namespace_whose_blocks_are_not_512_bytes() {
    let m = Model { lbads: 12, ..Model::new() };
    let mut d = Driver::enable(m, QUEUES, TIMEOUT).unwrap();
    assert_eq!(d.identify(IDENTIFY), Err(NvmeError::BlockSize(4096)));
}

#[test]
fn read_rejects_a_command_that_completes_with_an_error() {
    let mut d = up(Model { read_status: 0x0281, ..Model::new() });
    assert_eq!(d.read(&data(), 64), Err(NvmeError::Failed { opcode: op::READ, status: 0x0281 }));
}

#[test]
fn read_rejects_a_completion_that_never_comes_within_the_deadline() {
    let mut d = up(Model { no_read_completions: true, ..Model::new() });
    assert_eq!(d.read(&data(), 64), Err(NvmeError::NoCompletion { qid: 1, opcode: op::READ }));
    // read_to waits only as long as it is told, and says so the same way.
    assert_eq!(d.read_to(0x30_0000, 5), Err(NvmeError::NoCompletion { qid: 1, opcode: op::READ }));
}

#[test]
fn read_rejects_a_data_page_the_transport_refuses() {
    let pages = data();
    let mut d = up(Model { refuse: Some(pages[3]), ..Model::new() });
    assert_eq!(d.read(&pages, 64), Err(NvmeError::Access(pages[3])));
}

#[test]
fn read_best_rejects_rounds_that_read_different_data() {
    // The drive changes after the first round's 8 READs of 4 KiB.
    let mut d = up(Model { drift_after: Some(8), ..Model::new() });
    assert_eq!(d.read_best(&data(), 64, 3), Err(NvmeError::Differs));
}

#[test]
fn read_best_happy_path_the_same_data_every_round_and_the_fewest_ticks() {
    let mut d = up(Model::new());
    let one = d.read(&data(), 64).unwrap();
    let best = d.read_best(&data(), 64, 3).unwrap();
    assert_eq!((best.blocks, best.digest), (one.blocks, one.digest));
    assert_eq!(d.controller().done.iter().filter(|&&o| o == op::READ).count(), 4 * 8, "one round, then three");
    assert!(best.ticks > 0 && best.ticks <= one.ticks + 1);
}

#[test]
fn driver_happy_path_identify_queues_and_a_mib_read_that_hashes_to_the_drive() {
    let mut d = Driver::enable(Model::new(), QUEUES, TIMEOUT).unwrap();
    let id = d.identify(IDENTIFY).unwrap();
    assert_eq!((id.vid, id.blocks, id.block_bytes), (0x1b36, 2048, 512));
    assert_eq!(&id.serial[..8], b"seamless");
    assert_eq!(&id.model[..14], b"QEMU NVMe Ctrl");
    d.create_io_queues().unwrap();
    // 256 READs of 4 KiB through 16-entry queues: the tails and the phase wrap many times.
    let read = d.read(&data(), attest::disk::DEMO_BLOCKS).unwrap();
    assert_eq!(read.blocks, attest::disk::DEMO_BLOCKS);
    assert_eq!(read.digest, attest::disk::digest(0, attest::disk::DEMO_BLOCKS));
    assert!(read.ticks > 0);
    let reads = d.controller().done.iter().filter(|&&o| o == op::READ).count();
    assert_eq!(reads as u64, attest::disk::DEMO_BLOCKS / 8);
    assert!(reads > usize::from(ENTRIES) * 2);
    // One READ into any page, its status returned; then READs left outstanding.
    assert_eq!(d.read_to(0x30_0000, TIMEOUT), Ok(0));
    assert_eq!(d.submit_reads(&data()), Ok(15));
    d.disable().unwrap();
    assert_eq!(d.controller().cc & 1, 0);
}

#[test]
fn submit_long_reads_rejects_a_transfer_no_prp_list_holds() {
    let mut d = up(Model::new());
    for pages in [0, 2, 514] {
        assert_eq!(d.submit_long_reads(&data(), (0x30_0000, 0x31_0000), pages), Err(NvmeError::Transfer(pages)));
    }
}

#[test]
fn submit_long_reads_happy_path_first_page_to_each_destination_the_rest_to_the_sink() {
    let mut d = up(Model::new());
    let (list, sink) = (0x30_0000, 0x31_0000);
    let dsts = &data()[..14];
    assert_eq!(d.submit_long_reads(dsts, (list, sink), 64), Ok(14));
    // The list holds 63 entries, every one the sink.
    let mut entries = [0u8; 4096];
    d.controller().read_mem(list, &mut entries).unwrap();
    for (i, e) in entries.chunks_exact(8).enumerate() {
        let want = if i < 63 { sink } else { 0 };
        assert_eq!(u64::from_le_bytes(e.try_into().unwrap()), want, "entry {i}");
    }
    // Each command names its destination in PRP1, the list in PRP2 and 512 blocks.
    let m = d.controller();
    let (sq, _, _, _) = m.sqs[&1];
    for (i, &dst) in dsts.iter().enumerate() {
        let e = m.get(sq + i as u64 * 64, 64);
        assert_eq!(e[0], op::READ);
        assert_eq!(u64::from_le_bytes(e[24..32].try_into().unwrap()), dst);
        assert_eq!(u64::from_le_bytes(e[32..40].try_into().unwrap()), list);
        assert_eq!(u32::from_le_bytes(e[48..52].try_into().unwrap()), 64 * 8 - 1);
    }
}
