//! The attacks we know of, in process, as a table that runs: every case builds its machine
//! through the ABI (the harness's `Machine`, an in-process `tdisp-device`), mounts its attack
//! and says whether it was rejected the way the threat model claims (the specific status, the
//! machine unchanged where the rule is "a refused call changes nothing", the TDI never running
//! on a faulty device, the verifier failing a tampered bundle). A case that panics counts as not
//! rejected. `attack-cases` prints the counts as `attack_cases_total` and
//! `attack_cases_rejected`; docs/threat-model.md maps each case to its check.

use std::panic::{catch_unwind, AssertUnwindSafe};

use attest::evidence::{Evidence, EvidenceWriter, RecordType};
use attest::report::Report;
use attest::verify::{self, Inputs};
use seamless_harness::assign::{device_config, pfn, Assignment, BAR_BASE, BAR_GPA, FUNCTION, LOCK_FLAGS};
use seamless_harness::driver::{default_params, gpa_level, Machine, TdHandle, PRIVATE_BASE};
use tdisp_device::{Device, Faults, Reply, Signed};
use tsm::abi::guest::leaf as g;
use tsm::abi::host::leaf as h;
use tsm::addr::{PageSize, Pfn};
use tsm::tdi::TdiState;
use tsm::{Operand, Regs, Status, TdSummary};

use crate::machine::World;

const MIB: u64 = 1 << 20;
const FN: u64 = FUNCTION as u64;

/// Who attacks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The host (VMM) through the host ABI, or by tampering with what it carries to the
    /// verifier.
    Host,
    /// The device through its answers.
    Device,
}

/// One attack: its name (as docs/threat-model.md cites it), the attacker, and the run, which
/// returns `Ok` when the attack was rejected as claimed and `Err(why not)` otherwise.
pub struct Case {
    /// Name.
    pub name: &'static str,
    /// Attacker.
    pub side: Side,
    /// The run.
    pub run: fn() -> Result<(), String>,
}

/// The result of one case.
#[derive(Clone, Debug)]
pub struct Result_ {
    /// The case's name.
    pub name: &'static str,
    /// Attacker.
    pub side: Side,
    /// `None` when rejected, otherwise why not.
    pub failure: Option<String>,
}

/// Runs every case (a panic is a failure of its case, not of the run).
pub fn run_all() -> Vec<Result_> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let out = cases()
        .iter()
        .map(|c| {
            let failure = match catch_unwind(AssertUnwindSafe(c.run)) {
                Ok(Ok(())) => None,
                Ok(Err(why)) => Some(why),
                Err(p) => Some(format!(
                    "panicked: {}",
                    p.downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default()
                )),
            };
            Result_ { name: c.name, side: c.side, failure }
        })
        .collect();
    std::panic::set_hook(hook);
    out
}

// ---- machinery ------------------------------------------------------------------------------

#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    writes: u64,
    tds: Vec<Option<TdSummary>>,
}

fn snapshot(m: &Machine, tdrs: &[u64]) -> Snapshot {
    Snapshot {
        writes: m.tsm.platform().mem.writes(),
        tds: tdrs.iter().map(|&t| m.tsm.td_summary(Pfn::new(t >> 12).expect("pfn"))).collect(),
    }
}

/// The call fails with `want` (status and operand) and changes nothing.
fn refused(m: &mut Machine, tdrs: &[u64], want: Status, call: impl FnOnce(&mut Machine) -> Regs) -> Result<(), String> {
    let before = snapshot(m, tdrs);
    let r = call(m);
    if r.status() != want {
        return Err(format!("got {:?}, the threat model says {want:?}", r.status()));
    }
    if before != snapshot(m, tdrs) {
        return Err("refused, but the machine changed".into());
    }
    Ok(())
}

fn guest_refused(
    m: &mut Machine,
    tdrs: &[u64],
    want: Status,
    call: impl FnOnce(&mut Machine) -> tsm::GuestReturn,
) -> Result<(), String> {
    refused(m, tdrs, want, |m| call(m).regs)
}

struct Assigned {
    m: Machine,
    td: TdHandle,
    other: TdHandle,
    dev: Device,
    a: Assignment,
}

impl Assigned {
    fn tdrs(&self) -> [u64; 2] {
        [self.td.tdr, self.other.tdr]
    }
    fn state(&self) -> TdiState {
        self.m.tsm.tdi_summary(pfn(self.a.tdi)).map_or(TdiState::Error, |s| s.state)
    }
}

fn two_tds() -> (Machine, TdHandle, TdHandle) {
    let mut m = Machine::configured(32 * MIB);
    let a = m.running_td();
    let b = m.running_td();
    (m, a, b)
}

fn connected() -> Assigned {
    let mut m = Machine::configured(64 * MIB);
    let td = m.running_td();
    let other = m.running_td();
    let mut dev = Device::new(device_config()).expect("device");
    let mut a = m.connect(&mut dev);
    m.ide_setup(&mut dev, &mut a);
    Assigned { m, td, other, dev, a }
}

fn locked() -> Assigned {
    let mut w = connected();
    w.m.bind(&w.td, &mut w.a);
    w.m.lock(&mut w.dev, &mut w.a);
    w.m.import_all(&w.a);
    w
}

fn running() -> Assigned {
    let mut m = Machine::configured(64 * MIB);
    let td = m.running_td();
    let other = m.running_td();
    let mut dev = Device::new(device_config()).expect("device");
    let a = m.assign(&mut dev, &td);
    Assigned { m, td, other, dev, a }
}

// ---- the malicious host ---------------------------------------------------------------------

fn host_page_into_two_tds() -> Result<(), String> {
    let (mut m, a, b) = two_tds();
    let page = m.page();
    let r = m.host(h::MEM_PAGE_AUG, gpa_level(0x1000, 0), a.tdr, page, 0);
    if r.status() != Status::SUCCESS {
        return Err(format!("setup: AUG {:?}", r.status()));
    }
    refused(&mut m, &[a.tdr, b.tdr], Status::PAGE_NOT_FREE.with_operand(Operand::R8), |m| {
        m.host(h::MEM_PAGE_AUG, gpa_level(0x1000, 0), b.tdr, page, 0)
    })
}

fn host_control_page_as_guest_data() -> Result<(), String> {
    let (mut m, a, b) = two_tds();
    for control in [a.tdr, a.tdcs[0], a.vcpus[0]] {
        refused(&mut m, &[a.tdr, b.tdr], Status::PAGE_NOT_FREE.with_operand(Operand::R8), |m| {
            m.host(h::MEM_PAGE_AUG, gpa_level(0x3000, 0), b.tdr, control, 0)
        })?;
    }
    Ok(())
}

fn host_control_page_as_copy_source() -> Result<(), String> {
    let (mut m, a, _) = two_tds();
    let mut c = m.create_td(&default_params());
    m.add_vcpu(&mut c);
    m.map_tables(&c, 0, 0);
    let page = m.page();
    refused(&mut m, &[c.tdr], Status::PAGE_METADATA_INCORRECT.with_operand(Operand::R9), |m| {
        m.host(h::MEM_PAGE_ADD, gpa_level(0, 0), c.tdr, page, a.tdcs[1])
    })
}

fn host_page_outside_tdmr() -> Result<(), String> {
    let (mut m, a, _) = two_tds();
    let r = m.host(h::MEM_PAGE_AUG, gpa_level(0x1000, 0), a.tdr, PRIVATE_BASE, 0);
    if !r.status().is_error() {
        return Err(format!("AUG of a frame outside the TDMRs: {:?}", r.status()));
    }
    refused(&mut m, &[a.tdr], r.status(), |m| m.host(h::MEM_PAGE_AUG, gpa_level(0x1000, 0), a.tdr, PRIVATE_BASE, 0))
}

fn host_remove_without_block() -> Result<(), String> {
    let (mut m, a, _) = two_tds();
    m.aug_accept(&a, 0x1000, PageSize::Size4K);
    refused(&mut m, &[a.tdr], Status::GPA_RANGE_NOT_BLOCKED.with_operand(Operand::Rcx), |m| {
        m.host(h::MEM_PAGE_REMOVE, gpa_level(0x1000, 0), a.tdr, 0, 0)
    })
}

fn host_reclaim_page_in_use() -> Result<(), String> {
    let (mut m, a, _) = two_tds();
    let page = m.aug_accept(&a, 0x1000, PageSize::Size4K);
    let r = m.host(h::PHYMEM_PAGE_RECLAIM, page, 0, 0, 0);
    if !r.status().is_error() {
        return Err(format!("RECLAIM of a mapped page: {:?}", r.status()));
    }
    refused(&mut m, &[a.tdr], r.status(), |m| m.host(h::PHYMEM_PAGE_RECLAIM, page, 0, 0, 0))
}

fn host_other_tds_mapping() -> Result<(), String> {
    let (mut m, a, b) = two_tds();
    m.aug_accept(&a, 0x1000, PageSize::Size4K);
    // B has nothing at 0x1000: blocking "its" page there must not reach A's.
    let r = m.host(h::MEM_RANGE_BLOCK, gpa_level(0x1000, 0), b.tdr, 0, 0);
    if !r.status().is_error() {
        return Err(format!("BLOCK in the wrong TD: {:?}", r.status()));
    }
    refused(&mut m, &[a.tdr, b.tdr], r.status(), |m| m.host(h::MEM_RANGE_BLOCK, gpa_level(0x1000, 0), b.tdr, 0, 0))
}

fn host_answer_without_request() -> Result<(), String> {
    let mut w = connected();
    let t = w.tdrs();
    let (pdev, msg) = (w.a.pdev, w.a.msg);
    refused(&mut w.m, &t, Status::NO_REQUEST_OUTSTANDING.with_operand(Operand::R8), |m| {
        m.host(h::SPDM_DISCONNECT, pdev, msg, 64, 0)
    })
}

fn host_message_page_in_private_memory() -> Result<(), String> {
    let mut w = connected();
    let t = w.tdrs();
    let pdev = w.a.pdev;
    refused(&mut w.m, &t, Status::OPERAND_ADDR_RANGE_ERROR.with_operand(Operand::Rdx), |m| {
        m.host(h::SPDM_DISCONNECT, pdev, PRIVATE_BASE, 0, 0)
    })
}

fn host_message_page_is_a_td_page() -> Result<(), String> {
    let mut w = connected();
    let t = w.tdrs();
    let (pdev, tdr) = (w.a.pdev, w.td.tdr);
    refused(&mut w.m, &t, Status::PAGE_METADATA_INCORRECT.with_operand(Operand::Rdx), |m| {
        m.host(h::SPDM_DISCONNECT, pdev, tdr, 0, 0)
    })
}

fn host_connect_twice() -> Result<(), String> {
    let mut w = connected();
    let t = w.tdrs();
    let (pdev, msg) = (w.a.pdev, w.a.msg);
    refused(&mut w.m, &t, Status::PDEV_STATE_INCORRECT.with_operand(Operand::Pdev), |m| {
        m.host(h::SPDM_CONNECT, pdev, msg, 0, 0)
    })
}

fn host_second_request_while_one_is_out() -> Result<(), String> {
    let mut m = Machine::configured(64 * MIB);
    let t = [m.running_td().tdr];
    let pdev = m.page();
    m.host(h::SPDM_CREATE, pdev, FN, 0, 0);
    let msg = m.scratch();
    if m.host(h::SPDM_CONNECT, pdev, msg, 0, 0).status() != Status::DEVICE_REQUEST {
        return Err("setup: CONNECT did not ask".into());
    }
    refused(&mut m, &t, Status::OPERAND_BUSY.with_operand(Operand::Pdev), |m| m.host(h::SPDM_DELETE, pdev, 0, 0, 0))
}

fn host_tdi_for_another_tds_function() -> Result<(), String> {
    let mut w = connected();
    w.m.bind(&w.td, &mut w.a);
    let t = w.tdrs();
    let (other, pdev, page) = (w.other.tdr, w.a.pdev, w.m.page());
    refused(&mut w.m, &t, Status::FUNCTION_IN_USE.with_operand(Operand::R9), |m| {
        m.host(h::TDI_CREATE, other, pdev, page, FN)
    })
}

fn host_lock_with_unknown_flags() -> Result<(), String> {
    let mut w = connected();
    w.m.bind(&w.td, &mut w.a);
    let t = w.tdrs();
    let (tdi, msg, stream) = (w.a.tdi, w.a.msg, w.a.stream);
    refused(&mut w.m, &t, Status::OPERAND_INVALID.with_operand(Operand::R9), |m| {
        m.host(h::TDI_LOCK, tdi, msg, 0, 0x20 | stream << 16)
    })
}

fn host_lock_without_ide_keys() -> Result<(), String> {
    let mut w = connected();
    w.m.bind(&w.td, &mut w.a);
    let t = w.tdrs();
    let (tdi, msg, pdev, stream) = (w.a.tdi, w.a.msg, w.a.pdev, w.a.stream);
    let r = w.m.pump(&mut w.dev, h::IDE_STREAM_KM, pdev, msg, stream | 2 << 8);
    if r.status() != Status::SUCCESS {
        return Err(format!("setup: KM STOP {:?}", r.status()));
    }
    refused(&mut w.m, &t, Status::IDE_STREAM_STATE_INCORRECT.with_operand(Operand::IdeStream), |m| {
        m.host(h::TDI_LOCK, tdi, msg, 0, LOCK_FLAGS | stream << 16)
    })
}

fn host_start_without_authorisation() -> Result<(), String> {
    let mut w = locked();
    let t = w.tdrs();
    let (tdi, msg) = (w.a.tdi, w.a.msg);
    refused(&mut w.m, &t, Status::TDI_NOT_AUTHORISED.with_operand(Operand::Tdi), |m| {
        m.host(h::TDI_START, tdi, msg, 0, 0)
    })
}

fn host_start_after_relock_behind_the_guest() -> Result<(), String> {
    let mut w = locked();
    let t = w.tdrs();
    let (tdi, msg) = (w.a.tdi, w.a.msg);
    w.m.authorise(&w.td, &w.a);
    let r = w.m.pump(&mut w.dev, h::TDI_STOP, tdi, msg, 0);
    if r.status() != Status::SUCCESS {
        return Err(format!("setup: STOP {:?}", r.status()));
    }
    w.m.lock(&mut w.dev, &mut w.a);
    refused(&mut w.m, &t, Status::TDI_NOT_AUTHORISED.with_operand(Operand::Tdi), |m| {
        m.host(h::TDI_START, tdi, msg, 0, 0)
    })?;
    let vcpu = w.td.vcpus[0];
    guest_refused(&mut w.m, &t, Status::TDI_AUTHORISATION_STALE.with_operand(Operand::Tdi), |m| {
        m.guest(vcpu, g::TDI_START, FN, 1, 0)
    })
}

fn host_replays_a_device_answer() -> Result<(), String> {
    let mut w = locked();
    w.m.authorise(&w.td, &w.a);
    let t = w.tdrs();
    let (tdi, msg) = (w.a.tdi, w.a.msg);
    let r = w.m.host(h::TDI_START, tdi, msg, 0, 0);
    let first = w.dev.handle(&w.m.read(msg, r.r8 as usize)).ok_or("no answer")?;
    w.m.write(msg, &first);
    let r = w.m.host(h::TDI_START, tdi, msg, first.len() as u64, 0);
    if r.status() != Status::DEVICE_REQUEST {
        return Err(format!("setup: START {:?}", r.status()));
    }
    w.m.write(msg, &first);
    let n = first.len() as u64;
    refused(&mut w.m, &t, Status::ANSWER_NOT_AUTHENTIC.with_operand(Operand::R8), |m| {
        m.host(h::TDI_START, tdi, msg, n, 0)
    })
}

fn host_forges_a_device_answer() -> Result<(), String> {
    let mut w = locked();
    w.m.authorise(&w.td, &w.a);
    let t = w.tdrs();
    let (tdi, msg) = (w.a.tdi, w.a.msg);
    let r = w.m.host(h::TDI_START, tdi, msg, 0, 0);
    let mut answer = w.dev.handle(&w.m.read(msg, r.r8 as usize)).ok_or("no answer")?;
    answer[16] ^= 1;
    w.m.write(msg, &answer);
    let n = answer.len() as u64;
    refused(&mut w.m, &t, Status::ANSWER_NOT_AUTHENTIC.with_operand(Operand::R8), |m| {
        m.host(h::TDI_START, tdi, msg, n, 0)
    })
}

fn host_removes_a_running_tdi() -> Result<(), String> {
    let mut w = running();
    let t = w.tdrs();
    let tdi = w.a.tdi;
    refused(&mut w.m, &t, Status::TDI_STATE_INCORRECT.with_operand(Operand::Tdi), |m| {
        m.host(h::TDI_REMOVE, tdi, 0, 0, 0)
    })
}

fn host_tears_down_a_td_with_a_tdi() -> Result<(), String> {
    let mut w = locked();
    let t = w.tdrs();
    let tdr = w.td.tdr;
    w.m.host(h::VP_KICK, w.td.vcpus[0], 0, 0, 0);
    refused(&mut w.m, &t, Status::TD_HAS_ATTACHED_DEVICES.with_operand(Operand::Tdr), |m| {
        m.host(h::MNG_VPFLUSHDONE, tdr, 0, 0, 0)
    })
}

fn host_imports_frames_not_in_the_report() -> Result<(), String> {
    let mut w = connected();
    w.m.bind(&w.td, &mut w.a);
    w.m.lock(&mut w.dev, &mut w.a);
    let t = w.tdrs();
    let tdi = w.a.tdi;
    refused(&mut w.m, &t, Status::MMIO_NOT_IN_REPORT.with_operand(Operand::Rdx), |m| {
        m.host(h::DMABUF_IMPORT, tdi, BAR_BASE + 4096, 16, 0)
    })
}

fn host_imports_twice() -> Result<(), String> {
    let mut w = locked();
    let t = w.tdrs();
    let tdi = w.a.tdi;
    refused(&mut w.m, &t, Status::PAGE_NOT_FREE.with_operand(Operand::Rdx), |m| {
        m.host(h::DMABUF_IMPORT, tdi, BAR_BASE, 16, 0)
    })
}

fn host_maps_mmio_into_another_td() -> Result<(), String> {
    let mut w = locked();
    let t = w.tdrs();
    w.m.map_tables(&w.other, BAR_GPA, 0);
    let other = w.other.tdr;
    refused(&mut w.m, &t, Status::MMIO_OWNER_MISMATCH.with_operand(Operand::R8), |m| {
        m.host(h::MMIO_MAP, gpa_level(BAR_GPA, 0), other, BAR_BASE, 0)
    })
}

fn host_maps_mmio_not_imported() -> Result<(), String> {
    let mut w = connected();
    w.m.bind(&w.td, &mut w.a);
    w.m.lock(&mut w.dev, &mut w.a);
    w.m.map_tables(&w.td, BAR_GPA, 0);
    let t = w.tdrs();
    let tdr = w.td.tdr;
    refused(&mut w.m, &t, Status::MMIO_NOT_IN_REPORT.with_operand(Operand::R8), |m| {
        m.host(h::MMIO_MAP, gpa_level(BAR_GPA, 0), tdr, BAR_BASE, 0)
    })
}

fn host_maps_mmio_over_a_private_page() -> Result<(), String> {
    let mut w = locked();
    w.m.aug_accept(&w.td, BAR_GPA, PageSize::Size4K);
    let t = w.tdrs();
    let tdr = w.td.tdr;
    refused(&mut w.m, &t, Status::EPT_ENTRY_NOT_FREE.with_operand(Operand::Rcx), |m| {
        m.host(h::MMIO_MAP, gpa_level(BAR_GPA, 0), tdr, BAR_BASE, 0)
    })
}

fn host_unmaps_mmio_of_a_running_tdi() -> Result<(), String> {
    let mut w = running();
    let t = w.tdrs();
    let tdr = w.td.tdr;
    let r = w.m.host(h::MMIO_UNMAP, gpa_level(BAR_GPA, 0), tdr, 0, 0);
    if !r.status().is_error() {
        return Err(format!("UNMAP under a running TDI: {:?}", r.status()));
    }
    refused(&mut w.m, &t, r.status(), |m| m.host(h::MMIO_UNMAP, gpa_level(BAR_GPA, 0), tdr, 0, 0))
}

fn host_revokes_then_remaps() -> Result<(), String> {
    let mut w = running();
    let tdi = w.a.tdi;
    let r = w.m.host(h::DMABUF_REVOKE, tdi, 0, 0, 0);
    if r.status() != Status::SUCCESS {
        return Err(format!("setup: REVOKE {:?}", r.status()));
    }
    if w.state() == TdiState::Run {
        return Err("the TDI still runs after its MMIO was revoked".into());
    }
    let t = w.tdrs();
    let vcpu = w.td.vcpus[0];
    guest_refused(&mut w.m, &t, Status::TDI_STATE_INCORRECT.with_operand(Operand::Tdi), |m| {
        m.guest(vcpu, g::TDI_START, FN, 1, 0)
    })
}

// Issue #16, host side.

fn host_pasid_twin_of_a_running_tdi() -> Result<(), String> {
    let mut w = running();
    let t = w.tdrs();
    let (other, pdev, page) = (w.other.tdr, w.a.pdev, w.m.page());
    let twin = FN | tsm::abi::host_tdi::PASID_VALID | 7 << 32;
    refused(&mut w.m, &t, Status::FUNCTION_IN_USE.with_operand(Operand::R9), |m| {
        m.host(h::TDI_CREATE, other, pdev, page, twin)
    })
}

/// A setup step that must succeed.
fn must(r: Regs, what: &str) -> Result<(), String> {
    match r.status() {
        Status::SUCCESS => Ok(()),
        s => Err(format!("setup: {what} {s:?}")),
    }
}

fn host_blocks_the_table_above_mmio_then_stops() -> Result<(), String> {
    let mut w = running();
    let (tdr, tdi, msg, vcpu) = (w.td.tdr, w.a.tdi, w.a.msg, w.td.vcpus[0]);
    must(w.m.host(h::MEM_RANGE_BLOCK, gpa_level(BAR_GPA, 1), tdr, 0, 0), "BLOCK the table")?;
    must(w.m.pump(&mut w.dev, h::TDI_STOP, tdi, msg, 0), "STOP")?;
    must(w.m.host(h::VP_KICK, vcpu, 0, 0, 0), "KICK")?;
    must(w.m.host(h::MEM_TRACK, tdr, 0, 0, 0), "TRACK")?;
    must(w.m.host(h::MEM_RANGE_UNBLOCK, gpa_level(BAR_GPA, 1), tdr, 0, 0), "UNBLOCK the table")?;
    let rd = w.m.host(h::MEM_SEPT_RD, gpa_level(BAR_GPA, 0), tdr, 0, 0);
    match tsm::sept::SeptState::from_code((rd.rdx >> 8) & 0xFF) {
        Some(tsm::sept::SeptState::MmioBlocked) => Ok(()),
        s => Err(format!("the stopped TDI's MMIO is {s:?} after the table was unblocked")),
    }
}

fn host_stops_ide_keys_under_a_running_tdi() -> Result<(), String> {
    let mut w = running();
    let (pdev, msg, stream) = (w.a.pdev, w.a.msg, w.a.stream);
    must(w.m.pump(&mut w.dev, h::IDE_STREAM_KM, pdev, msg, stream | 2 << 8), "KM STOP")?;
    match w.state() {
        TdiState::Error => Ok(()),
        s => Err(format!("the TDI is {s:?} over a stream without keys")),
    }
}

fn host_programs_a_bar_over_ram() -> Result<(), String> {
    let mut m = Machine::configured(64 * MIB);
    let td = m.running_td();
    let mut config = device_config();
    let ram = (seamless_harness::driver::ARENA_BASE + MIB) >> 12;
    let first = config.interfaces[0].mmio[0].first_page;
    for r in &mut config.interfaces[0].mmio {
        r.first_page = r.first_page - first + ram;
    }
    let mut dev = Device::new(config).map_err(|e| format!("{e:?}"))?;
    let mut a = m.connect(&mut dev);
    m.ide_setup(&mut dev, &mut a);
    m.bind(&td, &mut a);
    m.lock(&mut dev, &mut a);
    let s = m.tsm.tdi_summary(pfn(a.tdi)).ok_or("no TDI")?;
    let (tdi, first, pages) = (a.tdi, s.ranges[0].first << 12, s.ranges[0].pages);
    refused(&mut m, &[td.tdr], Status::OPERAND_ADDR_RANGE_ERROR.with_operand(Operand::Rdx), |m| {
        m.host(h::DMABUF_IMPORT, tdi, first, pages, 0)
    })
}

fn host_binds_a_function_on_another_segment() -> Result<(), String> {
    let mut m = Machine::configured(64 * MIB);
    let td = m.running_td();
    m.iommu_setup();
    let function = FN | 1 << 24 | 1 << 16;
    let mut config = device_config();
    config.interfaces[0].function_id = function as u32;
    let mut dev = Device::new(config).map_err(|e| format!("{e:?}"))?;
    let (pdev, msg, tdi) = (m.page(), m.scratch(), m.page());
    must(m.host(h::SPDM_CREATE, pdev, function, 0, 0), "SPDM.CREATE")?;
    must(m.pump(&mut dev, h::SPDM_CONNECT, pdev, msg, 0), "SPDM.CONNECT")?;
    let mut a = Assignment { pdev, msg, stream: 0, tdi, generation: 0, report: Vec::new(), spdm: Default::default() };
    m.ide_setup(&mut dev, &mut a);
    must(m.host(h::TDI_CREATE, td.tdr, pdev, tdi, function), "TDI.CREATE")?;
    m.lock(&mut dev, &mut a);
    let r = m.dmar_add(&td, &a);
    if r.status() != Status::OPERAND_INVALID.with_operand(Operand::Tdi) {
        return Err(format!("DMAR.ADD for segment 1: {:?}", r.status()));
    }
    Ok(())
}

fn guest_accepts_mmio_at_the_wrong_offset() -> Result<(), String> {
    let mut w = locked();
    let td = w.td.clone();
    w.m.map_range(&td, &w.a, 0, BAR_GPA);
    let t = w.tdrs();
    let call = Regs { r9: 4096, ..Regs::call(g::MMIO_ACCEPT, gpa_level(BAR_GPA, 0), 0, FN, 0) };
    let r = w.m.tsm.guest_call(td.vcpus[0], &call);
    if !r.regs.status().is_error() {
        return Err(format!("ACCEPT at the wrong offset: {:?}", r.regs.status()));
    }
    guest_refused(&mut w.m, &t, r.regs.status(), |m| m.tsm.guest_call(td.vcpus[0], &call))
}

fn guest_reads_another_tds_tdi() -> Result<(), String> {
    let mut w = locked();
    let t = w.tdrs();
    let other = w.other.vcpus[0];
    let r = w.m.guest(other, g::TDI_RD, FN, 0, 0);
    if !r.regs.status().is_error() {
        return Err(format!("another TD read the TDI: {:?}", r.regs.status()));
    }
    guest_refused(&mut w.m, &t, r.regs.status(), |m| m.guest(other, g::TDI_RD, FN, 0, 0))
}

// ---- issue #16, defects 4, 6, 8, 9 ------------------------------------------------------------

fn guest_tdi_rd_output_across_a_page() -> Result<(), String> {
    let mut w = running();
    w.m.aug_accept(&w.td, 0x7000, PageSize::Size4K);
    let t = w.tdrs();
    let vcpu = w.td.vcpus[0];
    guest_refused(&mut w.m, &t, Status::BUFFER_CROSSES_PAGE.with_operand(Operand::R8), |m| {
        m.guest(vcpu, g::TDI_RD, FN, 3, 0x7FC0)
    })
}

fn host_binds_a_fifth_tdi_to_one_td() -> Result<(), String> {
    let mut w = connected();
    let per_td = tsm::devices::MAX_TDIS_PER_TD as u64;
    for i in 0..per_td {
        let page = w.m.page();
        let r = w.m.host(h::TDI_CREATE, w.td.tdr, w.a.pdev, page, FN + i);
        if r.status() != Status::SUCCESS {
            return Err(format!("setup: TDI.CREATE {i}: {:?}", r.status()));
        }
    }
    let t = w.tdrs();
    let (tdr, pdev, page) = (w.td.tdr, w.a.pdev, w.m.page());
    refused(&mut w.m, &t, Status::TD_MAX_TDIS_EXCEEDED.with_operand(Operand::Rcx), |m| {
        m.host(h::TDI_CREATE, tdr, pdev, page, FN + per_td)
    })
}

fn guest_accepts_another_interfaces_page() -> Result<(), String> {
    // Interface C (FN + 1) reports A's frames; A imported them, C imported nothing.
    let mut config = device_config();
    let mut c = config.interfaces[0].clone();
    c.function_id = FUNCTION + 1;
    config.interfaces.push(c);
    let mut m = Machine::configured(64 * MIB);
    let td = m.running_td();
    let mut dev = Device::new(config).map_err(|e| format!("{e:?}"))?;
    let mut a = m.connect(&mut dev);
    m.ide_setup(&mut dev, &mut a);
    m.bind(&td, &mut a);
    m.lock(&mut dev, &mut a);
    m.import_all(&a);
    let mut c = a.clone();
    c.tdi = m.page();
    let r = m.host(h::TDI_CREATE, td.tdr, a.pdev, c.tdi, FN + 1);
    if r.status() != Status::SUCCESS {
        return Err(format!("setup: TDI.CREATE of C: {:?}", r.status()));
    }
    m.lock(&mut dev, &mut c);
    m.map_range(&td, &a, 0, BAR_GPA);
    let call = Regs::call(g::MMIO_ACCEPT, gpa_level(BAR_GPA, 0), 0, FN + 1, 0);
    guest_refused(&mut m, &[td.tdr], Status::MMIO_OWNER_MISMATCH.with_operand(Operand::R8), |m| {
        m.tsm.guest_call(td.vcpus[0], &call)
    })
}

fn device_fails_a_recollect_after_a_good_one() -> Result<(), String> {
    let mut w = running();
    let (pdev, msg) = (w.a.pdev, w.a.msg);
    let recollect = tsm::abi::host_pdev::mng::RECOLLECT;
    if w.m.pump(&mut w.dev, h::SPDM_MNG, pdev, msg, recollect).status() != Status::SUCCESS {
        return Err("setup: the good RECOLLECT failed".into());
    }
    w.dev.faults_mut().apply_spec("bad-signature=measurements")?;
    if w.m.pump(&mut w.dev, h::SPDM_MNG, pdev, msg, recollect).status() == Status::SUCCESS {
        return Err("a badly signed RECOLLECT succeeded".into());
    }
    let digest = w.m.tsm.pdev_summary(pfn(pdev)).and_then(|s| s.evidence).ok_or("no evidence")?.measurements_digest;
    let ev = w.m.tsm.tdi_evidence(pfn(w.a.tdi)).ok_or("no evidence handed out")?;
    if attest::evidence::transcript_digest(ev.vca, ev.measurements) != digest {
        return Err("the measurement bytes handed out no longer hash to the digest reports sign".into());
    }
    Ok(())
}

/// The attestation of a TD with a running device: report, bundle, reference policy, key, nonce.
struct Attested {
    report: Report,
    bundle: Vec<u8>,
    records: Vec<(RecordType, Vec<u8>)>,
    policy: verify::Policy,
    devices: Vec<Option<attest::host::device::DeviceReference>>,
    key: p384::ecdsa::VerifyingKey,
    nonce: [u8; 64],
}

fn attested(device: Device) -> Result<Attested, String> {
    let mut m = Machine::configured(64 * MIB);
    let td = m.running_td();
    m.aug_accept(&td, 0x1000, PageSize::Size4K);
    m.aug_accept(&td, 0x2000, PageSize::Size4K);
    let blob = crate::machine::blob();
    m.tsm.provision(&blob.to_bytes()).map_err(|e| format!("{e:?}"))?;
    let mut dev = device;
    let a = m.assign(&mut dev, &td);
    let pa = |m: &mut Machine, gpa| m.host(h::MEM_SEPT_RD, gpa, td.tdr, 0, 0).rcx & 0x000F_FFFF_FFFF_F000;
    let nonce: [u8; 64] = core::array::from_fn(|i| (i as u8) ^ 0x5a);
    let data = pa(&mut m, 0x2000);
    m.write(data, &nonce);
    let r = m.guest(td.vcpus[0], g::MR_ATTEST, 0x1000, 0x2000, 0);
    if r.regs.status() != Status::SUCCESS {
        return Err(format!("MR.ATTEST {:?}", r.regs.status()));
    }
    let out = pa(&mut m, 0x1000);
    let report = Report::read_from(&m.read(out, attest::report::REPORT_BYTES)).map_err(|e| e.to_string())?;
    let ev = m.tsm.tdi_evidence(pfn(a.tdi)).ok_or("evidence")?;
    let records = vec![
        (RecordType::CertChain, ev.chain.to_vec()),
        (RecordType::Vca, ev.vca.to_vec()),
        (RecordType::Measurements, ev.measurements.to_vec()),
        (RecordType::InterfaceReport, ev.report.to_vec()),
    ];
    let bundle = bundle(&records);
    let parsed = Evidence::parse(&bundle).map_err(|e| e.to_string())?;
    let text = attest::host::policy::reference_policy(&report, Some(&parsed), "attack cases");
    let host = attest::host::policy::parse_file(&text, None)?;
    let (policy, devices) = (host.policy, host.devices);
    let key =
        *attest::sign::derive_attestation_key(&blob.secret, &seamless_harness::driver::IDENTITY.mrseam).verifying_key();
    Ok(Attested { report, bundle, records, policy, devices, key, nonce })
}

fn bundle(records: &[(RecordType, Vec<u8>)]) -> Vec<u8> {
    let mut w = EvidenceWriter::new();
    for (k, d) in records {
        w.push(*k, 0, d).expect("record");
    }
    w.finish()
}

/// The verifier refuses: with the reference policy of a genuine run, `report` and `bundle` fail.
fn verifier_refuses(good: &Attested, report: &Report, bundle: &[u8], nonce: &[u8; 64]) -> Result<(), String> {
    let inputs = Inputs { report, evidence: Some(bundle), key: &good.key, nonce: Some(nonce) };
    let verdict = verify::verify(&inputs, &good.policy);
    let mut rows = Vec::new();
    if let Ok(parsed) = Evidence::parse(bundle) {
        let mut cache = attest::host::device::ChainCache::default();
        rows = attest::host::device::check(report, Some(&parsed), &good.devices, &mut cache);
    }
    let device_failed = rows.iter().any(|r| r.status == verify::Status::Fail);
    if verdict.verified() && !device_failed {
        return Err("the verifier accepted it".into());
    }
    Ok(())
}

fn genuine() -> Result<Attested, String> {
    let a = attested(Device::new(device_config()).map_err(|e| format!("{e:?}"))?)?;
    let inputs = Inputs { report: &a.report, evidence: Some(&a.bundle), key: &a.key, nonce: Some(&a.nonce) };
    if !verify::verify(&inputs, &a.policy).verified() {
        return Err("setup: the genuine attestation does not verify".into());
    }
    Ok(a)
}

fn host_swaps_the_interface_report() -> Result<(), String> {
    let a = genuine()?;
    let mut records = a.records.clone();
    let last = records[3].1.len() - 1;
    records[3].1[last] ^= 1;
    verifier_refuses(&a, &a.report, &bundle(&records), &a.nonce)
}

fn host_swaps_the_measurements() -> Result<(), String> {
    let a = genuine()?;
    let mut records = a.records.clone();
    let n = records[2].1.len();
    records[2].1[n / 2] ^= 1;
    verifier_refuses(&a, &a.report, &bundle(&records), &a.nonce)
}

fn host_drops_the_device_evidence() -> Result<(), String> {
    let a = genuine()?;
    verifier_refuses(&a, &a.report, &bundle(&a.records[..1]), &a.nonce)
}

fn host_changes_a_report_byte() -> Result<(), String> {
    let a = genuine()?;
    let mut bytes = a.report.to_bytes();
    bytes[0x100] ^= 1;
    let report = Report::read_from(&bytes).map_err(|e| e.to_string())?;
    verifier_refuses(&a, &report, &a.bundle, &a.nonce)
}

fn host_replays_an_old_report() -> Result<(), String> {
    let a = genuine()?;
    let fresh = [0x77; 64];
    verifier_refuses(&a, &a.report, &a.bundle, &fresh)
}

// ---- the malicious device -------------------------------------------------------------------

/// The canonical assignment with a device that has `faults`, through the ABI, with the fuzz
/// driver's invariants checked after every call; rejected when the TDI never runs.
fn faulty_flow(faults: Faults) -> Result<(), String> {
    let mut w = World::new();
    // Some faults (the broken chain) take effect when the device is made.
    w.device = Device::new(tdisp_device::Config { faults, ..device_config() }).map_err(|e| format!("{e:?}"))?;
    let mut input = Vec::new();
    for s in 0..=10u8 {
        input.extend([5, s, 0]);
    }
    w.run(&input);
    match w.m.tsm.tdi_summary(pfn(w.tdi)) {
        Some(s) if s.state == TdiState::Run => Err("the TDI runs on the faulty device".into()),
        _ => Ok(()),
    }
}

macro_rules! device_cases {
    ($($name:ident => $faults:expr),* $(,)?) => {
        $(fn $name() -> Result<(), String> { faulty_flow($faults) })*
        const DEVICE_CASES: &[Case] = &[$(Case { name: stringify!($name), side: Side::Device, run: $name }),*];
    };
}

fn with(f: impl FnOnce(&mut Faults)) -> Faults {
    let mut faults = Faults::default();
    f(&mut faults);
    faults
}

device_cases! {
    device_bad_signature_challenge_auth => with(|f| f.bad_signature = Some(Signed::ChallengeAuth)),
    device_bad_signature_measurements => with(|f| f.bad_signature = Some(Signed::Measurements)),
    device_bad_signature_key_exchange_rsp => with(|f| f.bad_signature = Some(Signed::KeyExchangeRsp)),
    device_broken_chain => with(|f| f.broken_chain = true),
    device_impostor_leaf => with(|f| f.impostor_leaf = true),
    device_wrong_session_id => with(|f| f.wrong_session_id = true),
    device_overlapping_ranges => with(|f| f.overlapping_ranges = true),
    device_error_after_lock => with(|f| f.error_after_lock = true),
    device_refuses_start => with(|f| f.refuse_start = true),
    device_truncates_version => with(|f| f.truncate = Some(Reply::Version)),
    device_truncates_capabilities => with(|f| f.truncate = Some(Reply::Capabilities)),
    device_truncates_algorithms => with(|f| f.truncate = Some(Reply::Algorithms)),
    device_truncates_digests => with(|f| f.truncate = Some(Reply::Digests)),
    device_truncates_certificate => with(|f| f.truncate = Some(Reply::Certificate)),
    device_truncates_challenge_auth => with(|f| f.truncate = Some(Reply::ChallengeAuth)),
    device_truncates_measurements => with(|f| f.truncate = Some(Reply::Measurements)),
    device_truncates_key_exchange_rsp => with(|f| f.truncate = Some(Reply::KeyExchangeRsp)),
    device_truncates_finish_rsp => with(|f| f.truncate = Some(Reply::FinishRsp)),
    device_truncates_idekm => with(|f| f.truncate = Some(Reply::IdeKm)),
    device_truncates_tdisp_lock => with(|f| f.truncate = Some(Reply::Tdisp(0x83))),
    device_truncates_tdisp_report => with(|f| f.truncate = Some(Reply::Tdisp(0x84))),
    device_truncates_tdisp_start => with(|f| f.truncate = Some(Reply::Tdisp(0x86))),
    device_overlong_version => with(|f| f.overlong_length = Some(Reply::Version)),
    device_overlong_capabilities => with(|f| f.overlong_length = Some(Reply::Capabilities)),
    device_overlong_algorithms => with(|f| f.overlong_length = Some(Reply::Algorithms)),
    device_overlong_digests => with(|f| f.overlong_length = Some(Reply::Digests)),
    device_overlong_certificate => with(|f| f.overlong_length = Some(Reply::Certificate)),
    device_overlong_challenge_auth => with(|f| f.overlong_length = Some(Reply::ChallengeAuth)),
    device_overlong_measurements => with(|f| f.overlong_length = Some(Reply::Measurements)),
    device_overlong_key_exchange_rsp => with(|f| f.overlong_length = Some(Reply::KeyExchangeRsp)),
    device_overlong_finish_rsp => with(|f| f.overlong_length = Some(Reply::FinishRsp)),
    device_overlong_idekm => with(|f| f.overlong_length = Some(Reply::IdeKm)),
    device_overlong_tdisp_lock => with(|f| f.overlong_length = Some(Reply::Tdisp(0x83))),
    device_overlong_tdisp_report => with(|f| f.overlong_length = Some(Reply::Tdisp(0x84))),
    device_drops_measurements => with(|f| f.drop_response = Some(Reply::Measurements)),
    device_drops_finish_rsp => with(|f| f.drop_response = Some(Reply::FinishRsp)),
    device_drops_tdisp_lock => with(|f| f.drop_response = Some(Reply::Tdisp(0x83))),
}

fn device_wrong_measurement_fails_the_verifier() -> Result<(), String> {
    let good = genuine()?;
    let mut config = device_config();
    config.faults.wrong_measurement = Some(1);
    let bad = attested(Device::new(config).map_err(|e| format!("{e:?}"))?)?;
    verifier_refuses(&good, &bad.report, &bad.bundle, &bad.nonce)
}

const HOST_CASES: &[Case] = &[
    Case { name: "host_page_into_two_tds", side: Side::Host, run: host_page_into_two_tds },
    Case { name: "host_control_page_as_guest_data", side: Side::Host, run: host_control_page_as_guest_data },
    Case { name: "host_control_page_as_copy_source", side: Side::Host, run: host_control_page_as_copy_source },
    Case { name: "host_page_outside_tdmr", side: Side::Host, run: host_page_outside_tdmr },
    Case { name: "host_remove_without_block", side: Side::Host, run: host_remove_without_block },
    Case { name: "host_reclaim_page_in_use", side: Side::Host, run: host_reclaim_page_in_use },
    Case { name: "host_other_tds_mapping", side: Side::Host, run: host_other_tds_mapping },
    Case { name: "host_answer_without_request", side: Side::Host, run: host_answer_without_request },
    Case { name: "host_message_page_in_private_memory", side: Side::Host, run: host_message_page_in_private_memory },
    Case { name: "host_message_page_is_a_td_page", side: Side::Host, run: host_message_page_is_a_td_page },
    Case { name: "host_connect_twice", side: Side::Host, run: host_connect_twice },
    Case { name: "host_second_request_while_one_is_out", side: Side::Host, run: host_second_request_while_one_is_out },
    Case { name: "host_tdi_for_another_tds_function", side: Side::Host, run: host_tdi_for_another_tds_function },
    Case { name: "host_lock_with_unknown_flags", side: Side::Host, run: host_lock_with_unknown_flags },
    Case { name: "host_lock_without_ide_keys", side: Side::Host, run: host_lock_without_ide_keys },
    Case { name: "host_start_without_authorisation", side: Side::Host, run: host_start_without_authorisation },
    Case {
        name: "host_start_after_relock_behind_the_guest",
        side: Side::Host,
        run: host_start_after_relock_behind_the_guest,
    },
    Case { name: "host_replays_a_device_answer", side: Side::Host, run: host_replays_a_device_answer },
    Case { name: "host_forges_a_device_answer", side: Side::Host, run: host_forges_a_device_answer },
    Case { name: "host_removes_a_running_tdi", side: Side::Host, run: host_removes_a_running_tdi },
    Case { name: "host_tears_down_a_td_with_a_tdi", side: Side::Host, run: host_tears_down_a_td_with_a_tdi },
    Case {
        name: "host_imports_frames_not_in_the_report",
        side: Side::Host,
        run: host_imports_frames_not_in_the_report,
    },
    Case { name: "host_imports_twice", side: Side::Host, run: host_imports_twice },
    Case { name: "host_maps_mmio_into_another_td", side: Side::Host, run: host_maps_mmio_into_another_td },
    Case { name: "host_maps_mmio_not_imported", side: Side::Host, run: host_maps_mmio_not_imported },
    Case { name: "host_maps_mmio_over_a_private_page", side: Side::Host, run: host_maps_mmio_over_a_private_page },
    Case { name: "host_unmaps_mmio_of_a_running_tdi", side: Side::Host, run: host_unmaps_mmio_of_a_running_tdi },
    Case { name: "host_revokes_then_remaps", side: Side::Host, run: host_revokes_then_remaps },
    Case { name: "host_pasid_twin_of_a_running_tdi", side: Side::Host, run: host_pasid_twin_of_a_running_tdi },
    Case {
        name: "host_blocks_the_table_above_mmio_then_stops",
        side: Side::Host,
        run: host_blocks_the_table_above_mmio_then_stops,
    },
    Case {
        name: "host_stops_ide_keys_under_a_running_tdi",
        side: Side::Host,
        run: host_stops_ide_keys_under_a_running_tdi,
    },
    Case { name: "host_programs_a_bar_over_ram", side: Side::Host, run: host_programs_a_bar_over_ram },
    Case {
        name: "host_binds_a_function_on_another_segment",
        side: Side::Host,
        run: host_binds_a_function_on_another_segment,
    },
    Case {
        name: "guest_accepts_mmio_at_the_wrong_offset",
        side: Side::Host,
        run: guest_accepts_mmio_at_the_wrong_offset,
    },
    Case { name: "guest_reads_another_tds_tdi", side: Side::Host, run: guest_reads_another_tds_tdi },
    Case { name: "guest_tdi_rd_output_across_a_page", side: Side::Host, run: guest_tdi_rd_output_across_a_page },
    Case { name: "host_binds_a_fifth_tdi_to_one_td", side: Side::Host, run: host_binds_a_fifth_tdi_to_one_td },
    Case {
        name: "guest_accepts_another_interfaces_page",
        side: Side::Host,
        run: guest_accepts_another_interfaces_page,
    },
    Case { name: "host_swaps_the_interface_report", side: Side::Host, run: host_swaps_the_interface_report },
    Case { name: "host_swaps_the_measurements", side: Side::Host, run: host_swaps_the_measurements },
    Case { name: "host_drops_the_device_evidence", side: Side::Host, run: host_drops_the_device_evidence },
    Case { name: "host_changes_a_report_byte", side: Side::Host, run: host_changes_a_report_byte },
    Case { name: "host_replays_an_old_report", side: Side::Host, run: host_replays_an_old_report },
];

const EXTRA_DEVICE_CASES: &[Case] = &[
    Case {
        name: "device_wrong_measurement_fails_the_verifier",
        side: Side::Device,
        run: device_wrong_measurement_fails_the_verifier,
    },
    Case {
        name: "device_fails_a_recollect_after_a_good_one",
        side: Side::Device,
        run: device_fails_a_recollect_after_a_good_one,
    },
];

/// Every case: host first, then device.
pub fn cases() -> Vec<&'static Case> {
    HOST_CASES.iter().chain(DEVICE_CASES).chain(EXTRA_DEVICE_CASES).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_case_is_rejected() {
        let failed: Vec<_> = run_all().into_iter().filter(|r| r.failure.is_some()).collect();
        assert!(failed.is_empty(), "{failed:?}");
    }

    #[test]
    fn the_controls_are_not_rejected_so_the_cases_can_fail() {
        // A device without faults runs through the same flow; the genuine attestation verifies.
        assert!(faulty_flow(Faults::default()).is_err(), "a good device must reach RUN");
        let a = genuine().unwrap();
        assert!(verifier_refuses(&a, &a.report, &a.bundle, &a.nonce).is_err(), "the genuine bundle must verify");
        // `refused` notices a call that succeeds.
        let (mut m, t, _) = two_tds();
        let page = m.page();
        let r = refused(&mut m, &[t.tdr], Status::PAGE_NOT_FREE, |m| {
            m.host(h::MEM_PAGE_AUG, gpa_level(0x1000, 0), t.tdr, page, 0)
        });
        assert!(r.is_err());
    }
}
