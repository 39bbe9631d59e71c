//! The host's side of the demo TD's requests (`tsm_client::host::td_device`): the shared page it
//! maps for the TD, the decoding of each request of `tsm_client::vmcall`'s table, and the
//! answers it takes from and puts into the shared page. Everything the TD wrote is hostile:
//! another shared page, an unknown request, a length past the page or the host's buffer, a
//! result of the wrong kind or size, or a function the host did not lock is refused with an
//! error naming it; then the happy paths.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::VecDeque;

use seamless_harness::driver::{default_params, Machine};
use tsm::addr::GuestPhysAddr;
use tsm::{Regs, TdExit};
use tsm_client::guest::probe::{Probe, ProbeStep};
use tsm_client::guest::result::{Record, Registers};
use tsm_client::guest::DEMO_LAYOUT;
use tsm_client::host::device::Assignment;
use tsm_client::host::td::ghci;
use tsm_client::host::td_device::{Answer, DeviceTd, Next, Request, SharedPage};
use tsm_client::host::{HostError, HostMemory, Seamcall};
use tsm_client::{shared, vmcall};
use zerocopy::IntoBytes;

const MIB: u64 = 1 << 20;
const SHARED_GPA: u64 = 1 << 47 | DEMO_LAYOUT.shared_offset;

/// A machine with a TD and its shared page.
fn machine() -> (Machine, DeviceTd) {
    let mut m = Machine::configured(64 * MIB);
    let mut td = m.create_td(&default_params());
    let tdvpr = m.add_vcpu(&mut td);
    m.finalize(&td);
    let d = DeviceTd::new(&mut m, &td.pages(), tdvpr, 48, &DEMO_LAYOUT).unwrap();
    (m, d)
}

/// Plays back `exits` as VP.ENTER's returns; records the calls; its memory is bytes by address.
struct Script {
    exits: VecDeque<Regs>,
    calls: Vec<Regs>,
    mem: std::collections::HashMap<u64, u8>,
}

impl Script {
    fn new(exits: &[Regs]) -> Script {
        Script { exits: exits.iter().copied().collect(), calls: Vec::new(), mem: Default::default() }
    }
}

impl Seamcall for Script {
    fn seamcall(&mut self, regs: &mut Regs) {
        self.calls.push(*regs);
        *regs = self.exits.pop_front().expect("entered more often than the script has exits");
    }
}

impl HostMemory for Script {
    fn read(&mut self, pa: u64, buf: &mut [u8]) {
        for (i, b) in buf.iter_mut().enumerate() {
            *b = self.mem.get(&(pa + i as u64)).copied().unwrap_or(0);
        }
    }
    fn write(&mut self, pa: u64, data: &[u8]) {
        for (i, &b) in data.iter().enumerate() {
            self.mem.insert(pa + i as u64, b);
        }
    }
    fn donate(&mut self) -> Option<u64> {
        None
    }
    fn scratch(&mut self) -> Option<u64> {
        None
    }
    fn release(&mut self, _: u64) {}
    fn donated(&self) -> (u64, u64) {
        (0, 0)
    }
}

fn request(args: [u64; 4]) -> Regs {
    TdExit::vmcall(args).host_regs()
}

fn refused(r: Result<Request, HostError>, request: u64, why: &str) {
    match r {
        Err(HostError::Request { request: got, why: w }) => {
            assert_eq!(got, request);
            assert!(w.contains(why), "{w:?} does not say {why:?}");
        }
        other => panic!("expected {request:#x} refused ({why}), got {other:?}"),
    }
}

#[test]
fn decode_rejects_another_shared_page_the_console_and_unknown_numbers() {
    for other in [0, SHARED_GPA + 4096, DEMO_LAYOUT.shared_offset, SHARED_GPA | 1] {
        refused(Request::decode([vmcall::GET_TDI, 0, other, 0], SHARED_GPA), vmcall::GET_TDI, "another shared page");
    }
    // CONSOLE is the run loop's, never a device request; the rest are not in the table.
    for number in [vmcall::CONSOLE, 0, 0x5EA1_0000, 0x5EA1_00FF, u64::MAX] {
        assert_eq!(Request::decode([number, 0, SHARED_GPA, 0], SHARED_GPA), Err(HostError::UnknownVmcall(number)));
    }
}

#[test]
fn decode_happy_path_every_request_with_its_arguments() {
    let cases = [
        ([vmcall::GET_TDI, 9, SHARED_GPA, 9], Request::GetTdi),
        ([vmcall::GET_REPORT, 0x18, SHARED_GPA, 0], Request::GetReport { function: 0x18 }),
        ([vmcall::GET_NONCE, 0, SHARED_GPA, 0], Request::GetNonce),
        ([vmcall::REPORT_READY, 2384, SHARED_GPA, 0], Request::ReportReady { len: 2384 }),
        ([vmcall::MAP_MMIO, 0x18, SHARED_GPA, 4], Request::MapMmio { function: 0x18, pages: 4 }),
        ([vmcall::ADD_DMA, 0x18, SHARED_GPA, 0], Request::AddDma { function: 0x18 }),
        ([vmcall::START, 0x18, SHARED_GPA, 0], Request::Start { function: 0x18 }),
        ([vmcall::RESULT, 1, SHARED_GPA, 0], Request::Result { kind: 1 }),
        ([vmcall::EVENT_LOG, 4088, SHARED_GPA, 9000], Request::EventLog { offset: 4088, total: 9000 }),
    ];
    assert_eq!(cases.len(), vmcall::REQUESTS.len() - 1, "every request but CONSOLE");
    for (args, want) in cases {
        let got = Request::decode(args, SHARED_GPA).unwrap();
        assert_eq!(got, want);
        assert_eq!(got.number(), args[0]);
    }
}

#[test]
fn new_maps_the_shared_gpa_to_its_page_through_a_table_the_tsm_accepted() {
    let (mut m, d) = machine();
    let SharedPage { gpa, page, tables } = d.shared;
    assert_eq!(gpa, SHARED_GPA, "GPAW 48: the shared bit is 47");
    // Walk the host's table as the TSM's shared walk does.
    let mut table = tables[0];
    for (i, shift) in [39u32, 30, 21, 12].into_iter().enumerate() {
        let e = u64::from_le_bytes(m.read(table + ((gpa >> shift) & 511) * 8, 8).try_into().unwrap());
        assert_eq!(e & 1, 1, "level {i} present");
        table = e & 0x000F_FFFF_FFFF_F000;
    }
    assert_eq!(table, page);
    // The TSM holds it as the TD's shared root (seen from a vCPU in guest mode).
    m.enter(d.vcpu);
    let root = m.tsm.running_vcpu(d.vcpu).unwrap().shared_root.unwrap();
    assert_eq!(root.addr().raw(), tables[0]);
}

#[test]
fn take_rejects_a_length_past_the_page_or_the_buffer() {
    let (mut m, d) = machine();
    for len in [shared::CAPACITY as u64 + 1, u64::MAX, 65] {
        m.write(d.shared.page, &len.to_le_bytes());
        assert_eq!(d.take(&mut m, &mut [0u8; 64]), Err(HostError::SharedLength(len)));
    }
    // REPORT_READY: the length word must be R11's.
    d.put(&mut m, &[7; 32]);
    assert_eq!(d.take_reports(&mut m, 33, &mut [0u8; 64]), Err(HostError::SharedLength(33)));
}

#[test]
fn take_result_rejects_another_kind_and_a_record_of_the_wrong_size() {
    let (mut m, d) = machine();
    let r = Registers::new(1, 2);
    d.put(&mut m, r.as_bytes());
    refused(
        d.take_result::<Registers, _>(&mut m, Registers::KIND + 1).map(|_| Request::GetTdi),
        vmcall::RESULT,
        "kind",
    );
    for n in [0, 11, 13] {
        let mut bytes = [0u8; 16];
        bytes[..12].copy_from_slice(r.as_bytes());
        d.put(&mut m, &bytes[..n]);
        assert_eq!(d.take_result::<Registers, _>(&mut m, Registers::KIND), Err(HostError::SharedLength(n as u64)));
    }
}

#[test]
fn give_report_refuses_a_function_the_host_did_not_lock() {
    let (mut m, d) = machine();
    let msg = m.scratch();
    let a = Assignment { msg, report_len: 48, ..Assignment::default() };
    d.put(&mut m, b"before");
    let r = d.give_report(&mut m, &a, 0x19, 0x18);
    refused(r.map(|()| Request::GetTdi), vmcall::GET_REPORT, "did not lock");
    assert_eq!(d.take(&mut m, &mut [0u8; 16]), Ok(6), "the shared page is as it was");
}

#[test]
fn answers_happy_path_tdi_report_nonce_reports_and_a_result() {
    let (mut m, d) = machine();
    d.give_tdi(&mut m, 0x18);
    let mut id = [0u8; 4];
    assert_eq!(d.take(&mut m, &mut id), Ok(4));
    assert_eq!(u32::from_le_bytes(id), 0x18);
    let msg = m.scratch();
    let report: Vec<u8> = (0..48).collect();
    m.write(msg, &report);
    d.give_report(&mut m, &Assignment { msg, report_len: 48, ..Assignment::default() }, 0x18, 0x18).unwrap();
    let mut got = [0u8; 64];
    assert_eq!(d.take(&mut m, &mut got), Ok(48));
    assert_eq!(&got[..48], &report[..]);
    d.put(&mut m, &[0xAB; 40]);
    let mut out = [0u8; 64];
    assert_eq!(d.take_reports(&mut m, 40, &mut out), Ok(40));
    let r = Registers::new(0x0040_0820_0f01_07ff, 0x0001_0400);
    d.put(&mut m, r.as_bytes());
    assert_eq!(d.take_result::<Registers, _>(&mut m, Registers::KIND), Ok(r));
}

#[test]
fn next_returns_requests_halts_and_violations_and_expect_refuses_another_request() {
    let (_, mut d) = machine();
    let gpa = GuestPhysAddr::new(0x4000_0000).unwrap();
    let violation = TdExit::EptViolation { gpa, requested_level: 0, level: 0, entry: 0x7 << 52 };
    let exits = [
        request([vmcall::GET_TDI, 0, SHARED_GPA, 0]),
        request([vmcall::GET_NONCE, 0, SHARED_GPA, 0]),
        violation.host_regs(),
        request([0, ghci::HLT, 1, 0]),
        request([vmcall::ADD_DMA, 0x18, SHARED_GPA, 0]),
        request([vmcall::GET_REPORT, 0x18, 0x1000, 0]),
        Regs::default(),
    ];
    let mut s = Script::new(&exits);
    let mut log = |_: &[u8]| {};
    assert_eq!(d.next(&mut s, Answer::Nothing, &mut log), Ok(Next::Request(Request::GetTdi)));
    assert_eq!(d.next(&mut s, Answer::Served, &mut log), Ok(Next::Request(Request::GetNonce)));
    assert_eq!(d.next(&mut s, Answer::Refused, &mut log), Ok(Next::Violation(violation)));
    assert_eq!(d.next(&mut s, Answer::Nothing, &mut log), Ok(Next::Halted));
    refused(d.expect(&mut s, Answer::Nothing, vmcall::START, &mut log), vmcall::ADD_DMA, "out of order");
    refused(d.expect(&mut s, Answer::Served, vmcall::GET_REPORT, &mut log), vmcall::GET_REPORT, "another shared page");
    assert!(matches!(d.next(&mut s, Answer::Served, &mut log), Err(HostError::TdExit { .. })), "no TD world");
    // Each entry carried the answer to the request before it in R10.
    let r10: Vec<u64> = s.calls.iter().map(|c| c.r10).collect();
    assert_eq!(r10, [0, 0, ghci::INVALID_OPERAND, 0, 0, 0, 0]);
    assert_eq!(d.stats.entries, 7);
}

#[test]
fn take_outcome_rejects_anything_but_one_outcome() {
    let (mut m, d) = machine();
    for n in [0usize, 47, 49] {
        d.put(&mut m, &vec![0u8; n]);
        assert!(matches!(d.take_outcome(&mut m), Err(HostError::SharedLength(_))), "{n} bytes");
    }
}

#[test]
fn a_probe_answer_carries_r11_probe_and_its_step_and_the_exit_registers_are_kept() {
    let (_, mut d) = machine();
    let again = request([vmcall::GET_TDI, 0, SHARED_GPA, 0]);
    let mut s = Script::new(&[again]);
    let step = ProbeStep::new(Probe::Seamcall, 0x18, 1, 0);
    assert_eq!(d.next(&mut s, Answer::Probe(step), &mut |_| {}), Ok(Next::Request(Request::GetTdi)));
    let c = s.calls[0];
    assert_eq!([c.r10, c.r11, c.r12, c.r13], [0, vmcall::PROBE, 0, 0]);
    // The step went into the shared page, framed as every answer is.
    let mut bytes = [0u8; 64];
    let n = d.take(&mut s, &mut bytes).unwrap();
    assert_eq!(&bytes[..n], step.as_bytes());
    // Every register of the exit is kept, for the checks that nothing else reached the host.
    assert_eq!(d.last_exit, again);
}
