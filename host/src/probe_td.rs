//! The probe TD (`td_probe.S`) in a TD world: the host builds it with the same
//! calls as any TD (create, PAGE.ADD of its 8 KiB at the top of 4 GiB and of its data pages,
//! FINALIZE, one page AUGed and never accepted), then drives it with TDH.VP.ENTER, answering
//! its TDG.VP.VMCALLs. What it checks: TDX's initial state, CPUID as a TDX module presents it,
//! #VE with exact VE info (CPUID, HLT, I/O, MSR, a PENDING page), the TDCALL round trip, a page
//! blocked and tracked while the TD uses it (the next touch exits), SEAMCALL from the TD
//! (#UD), R14 and R15 carried to the host and back when the VMCALL exposes them, secrets the
//! TD leaves in the registers a VMCALL does not expose (none reaches the host), and the host's
//! own memory (an EPT-violation exit, never its bytes).

#![allow(unsafe_code)]

use tsm::abi::host::leaf;
use tsm::{Regs, TdExit};
use tsm_client::host::td as flow_td;
use tsm_client::host::HostError;

use seamless_drivers::say;

use crate::{td_params, Cpu};

core::arch::global_asm!(include_str!("td_probe.S"));

unsafe extern "C" {
    static td_probe_start: u8;
    static td_probe_end: u8;
}

/// The probe TD's image (`td_probe.S`): 8 KiB the host PAGE.ADDs at GPA 0xFFFFE000, so that its
/// last 16 bytes hold the reset vector. Data to the host: it only ever runs in its TD world.
pub fn image() -> &'static [u8] {
    let start = &raw const td_probe_start;
    // SAFETY: the two labels bracket the probe's bytes in .rodata, which nothing writes.
    let len = unsafe { (&raw const td_probe_end).offset_from(start) } as usize;
    // SAFETY: as above: `len` bytes of read-only data from `start`.
    unsafe { core::slice::from_raw_parts(start, len) }
}

const PAGE: u64 = 4096;
/// Where the probe's 8 KiB go: its last 16 bytes are the reset vector.
const CODE_GPA: u64 = 0xFFFF_E000;
/// PML4, PDPT, stack, IDT, results, the page the host blocks.
const DATA_GPA: u64 = 0x80_0000;
const DATA_PAGES: u64 = 6;
const BLOCKED_GPA: u64 = 0x80_5000;
const PENDING_GPA: u64 = 0x80_6000;
/// Words the TD reports (22 VMCALLs of three).
const WORDS: usize = 66;
/// The shared GPAs the TD reads (bit 47 is GPAW 48's shared bit).
const SHARED_GPA: u64 = 1 << 47 | 0x90_0000;
/// What the host's two shared pages hold.
const SHARED_WORDS: [u64; 2] = [0x5A4E_D000_0000_000A, 0x5A4E_D000_0000_000B];
/// The secret the TD spreads over its registers before the last VMCALL.
const SECRET: u64 = 0x5EC2_E700_0000_0000;
/// What the host answers in R14 and R15 to the probe's VMCALL 0x500.
const R14_R15_ANSWER: [u64; 2] = [0x1414_0A45, 0x1515_0A45];
/// VMX exit reasons of the #VEs the probe causes, in order, with their instruction lengths.
const EXPECTED_VES: [(u64, u64); 5] = [(10, 2), (12, 1), (30, 2), (31, 2), (48, 0)];

/// What the probe TD measured and showed.
#[derive(Clone, Copy, Debug, Default)]
pub struct TdProbeReport {
    /// Mean TDCALL(TDG.VP.INFO) round trip of the best round, ns.
    pub tdcall_ns: u64,
    /// #VEs the TD took, each with the VE info it read back.
    pub ves: u64,
    /// TDH.VP.ENTERs the host made.
    pub entries: u64,
}

/// Why the probe TD run failed.
#[derive(Clone, Copy, Debug)]
pub enum TdProbeError {
    /// A host call failed.
    Host(HostError),
    /// A check of the probe failed.
    Check(&'static str),
}

impl core::fmt::Display for TdProbeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            TdProbeError::Host(e) => write!(f, "{e}"),
            TdProbeError::Check(what) => write!(f, "{what}"),
        }
    }
}

impl From<HostError> for TdProbeError {
    fn from(e: HostError) -> TdProbeError {
        TdProbeError::Host(e)
    }
}

fn check(ok: bool, what: &'static str) -> Result<(), TdProbeError> {
    if ok {
        Ok(())
    } else {
        Err(TdProbeError::Check(what))
    }
}

/// Builds the probe TD and runs it to its end (the read of the host's memory).
///
/// # Errors
/// [`TdProbeError`]: the first call or check that failed.
pub fn run<C: Cpu + ?Sized>(cpu: &mut C) -> Result<TdProbeReport, TdProbeError> {
    let tsc = cpu.tsc();
    let td = flow_td::create(cpu, &td_params(tsm_client::guest::Plan::Assign))?;
    let vcpu = flow_td::vp_create(cpu, &td)?;
    let code = image();
    check(code.len() == 2 * PAGE as usize, "the probe TD is not 8 KiB")?;
    for (i, chunk) in code.chunks_exact(PAGE as usize).enumerate() {
        let mut page = [0u8; PAGE as usize];
        page.copy_from_slice(chunk);
        flow_td::add_page(cpu, &td, CODE_GPA + i as u64 * PAGE, &page, true)?;
    }
    for i in 0..DATA_PAGES {
        flow_td::add_page(cpu, &td, DATA_GPA + i * PAGE, &[0; PAGE as usize], false)?;
    }
    flow_td::finalize(cpu, &td)?;
    let pending = cpu.donate().ok_or(HostError::OutOfPages)?;
    flow_td::aug(cpu, &td, PENDING_GPA, 0, pending)?;
    // The host's own page the TD will be told to read, with a value it must never see.
    let mut mine = cpu.scratch().ok_or(HostError::OutOfPages)?;
    while (DATA_GPA..PENDING_GPA + PAGE).contains(&mine) {
        mine = cpu.scratch().ok_or(HostError::OutOfPages)?;
    }
    cpu.write(mine, &0x4057_0000_0000_0001u64.to_le_bytes());

    let (words, entries) = drive(cpu, &td, vcpu, (mine, pending))?;
    // Torn down like any TD: the pages go back, the TD world's slots with them.
    flow_td::destroy(cpu, td.tdr, &[vcpu])?;
    let mut back = [0u8; 8];
    cpu.read(mine, &mut back);
    check(u64::from_le_bytes(back) == 0x4057_0000_0000_0001, "the host's page changed")?;
    verify(&words)?;
    let (ticks, iterations) = (words[7], words[8].max(1));
    Ok(TdProbeReport { tdcall_ns: tsc.ticks_to_ns(ticks) / iterations, ves: words[31], entries })
}

/// Enters the probe TD until its last exit, answering its VMCALLs; returns the words it
/// reported and the number of entries.
fn drive<C: Cpu + ?Sized>(
    cpu: &mut C,
    td: &flow_td::TdPages,
    vcpu: u64,
    (mine, private): (u64, u64),
) -> Result<([u64; WORDS], u64), TdProbeError> {
    let mut words = [0u64; WORDS];
    let (mut answer, mut entries, mut blocked, mut block_exit, mut leak_checked) =
        (Regs::default(), 0, false, false, false);
    let (mut shared, mut alias_refused, mut carried) = (None, false, false);
    let (mut preempted, mut spun) = (0u64, None);
    loop {
        let mut call = Regs {
            r10: answer.r10,
            r11: answer.r11,
            r12: answer.r12,
            r13: answer.r13,
            r14: answer.r14,
            r15: answer.r15,
            ..Regs::call(leaf::VP_ENTER, vcpu, 0, 0, 0)
        };
        answer = Regs::default();
        tsm_client::Seamcall::seamcall(cpu, &mut call);
        entries += 1;
        check(entries < 1000, "the probe TD does not end")?;
        let exit = TdExit::from_host_regs(&call).ok_or(TdProbeError::Check("VP.ENTER returned no TD exit"))?;
        let vmcall = matches!(exit, TdExit::Vmcall { .. });
        match (vmcall, exit.args(), exit) {
            (true, [k @ 0x100..0x116, a, b, c], _) => {
                let i = (k as usize - 0x100) * 3;
                words[i..i + 3].copy_from_slice(&[a, b, c]);
            }
            (true, [0x200, gpa, ..], _) => {
                check(gpa == BLOCKED_GPA, "the TD asked to block another page")?;
                flow_td_call(cpu, "TDH.MEM.RANGE.BLOCK", Regs::call(leaf::MEM_RANGE_BLOCK, gpa, td.tdr, 0, 0))?;
                flow_td_call(cpu, "TDH.MEM.TRACK", Regs::call(leaf::MEM_TRACK, td.tdr, 0, 0, 0))?;
                blocked = true;
            }
            (_, _, TdExit::EptViolation { gpa, .. }) if blocked && gpa.raw() == BLOCKED_GPA => {
                // The TD touched the blocked page: it exited instead. Give the page back.
                block_exit = true;
                blocked = false;
                flow_td_call(
                    cpu,
                    "TDH.MEM.RANGE.UNBLOCK",
                    Regs::call(leaf::MEM_RANGE_UNBLOCK, gpa.raw(), td.tdr, 0, 0),
                )?;
            }
            (true, [0x400, ..], _) => {
                // The host's shared table: the first page its own, the second a TD private page.
                let s = shared_table(cpu, private)?;
                let set = Regs::call(leaf::SHARED_EPT_SET, td.tdr, s.root, 0, 0);
                flow_td_call(cpu, "SEAMLESS.SHARED.EPT.SET", set)?;
                shared = Some(s);
            }
            (_, _, TdExit::EptViolation { gpa, .. }) if gpa.raw() == SHARED_GPA + PAGE => {
                // The shared walk reached a TD private page and refused it: point it at the host's.
                let s: SharedTable = shared.ok_or(TdProbeError::Check("no shared table"))?;
                cpu.write(s.pt + (((SHARED_GPA >> 12) & 511) + 1) * 8, &(s.data[1] | 7).to_le_bytes());
                alias_refused = true;
            }
            (true, [0x500, ..], _) => {
                // RCX = 0xFFEC: R14 and R15 arrive, and the answer goes back in them.
                check(call.rcx == 0xFF04 && (call.r14, call.r15) == (0x1414, 0x1515), "R14/R15 not exposed")?;
                [answer.r14, answer.r15] = R14_R15_ANSWER;
                carried = true;
            }
            (true, [0x300, 0x1111, 0x2222, 0x3333], _) => {
                // Only the exit reason, the mask and R10..R13: none of the TD's secrets.
                let others = [call.rdx, call.r8, call.r9, call.r14, call.r15];
                let leaked = others.iter().any(|&r| r != 0) || call.rcx != TdExit::VMCALL_EXPOSED;
                check(!leaked, "a TD register the VMCALL does not expose reached the host")?;
                check(!others.iter().any(|r| r & SECRET == SECRET), "a secret reached the host")?;
                leak_checked = true;
                answer.r11 = mine;
            }
            (_, _, TdExit::EptViolation { gpa, .. }) if gpa.raw() == mine => break,
            // The TSM's preemption timer ended a time slice: enter again.
            (_, _, TdExit::ExternalInterrupt) => preempted += 1,
            (true, [0x600, ..], _) => spun = Some(preempted),
            (_, _, other) => {
                say!("world: probe TD: unexpected exit {:?} after {} entries", other, entries);
                return Err(TdProbeError::Check("the probe TD exited in a way it should not"));
            }
        }
    }
    check(leak_checked && block_exit && carried, "the probe TD skipped a step")?;
    check(spun.is_some_and(|p| p > 0), "a spin with interrupts off was not preempted")?;
    check(alias_refused, "a shared GPA reached a TD private page")?;
    let read = words[11] == SHARED_WORDS[0] && words[12] == SHARED_WORDS[1];
    check(read, "the shared pages did not read as the host wrote them")?;
    Ok((words, entries))
}

/// The host's shared table in its own pages.
#[derive(Clone, Copy, Debug)]
struct SharedTable {
    root: u64,
    pt: u64,
    data: [u64; 2],
}

/// A 4-level table for [`SHARED_GPA`]: the first page maps a host page holding
/// `SHARED_WORDS[0]`, the second the TD private frame `private` (which the TSM must refuse).
fn shared_table<C: Cpu + ?Sized>(cpu: &mut C, private: u64) -> Result<SharedTable, TdProbeError> {
    let mut page = || cpu.scratch().ok_or(TdProbeError::Host(HostError::OutOfPages));
    let (root, pdpt, pd, pt) = (page()?, page()?, page()?, page()?);
    let data = [page()?, page()?];
    let slot = |table: u64, shift: u32| table + ((SHARED_GPA >> shift) & 511) * 8;
    for (at, to) in [
        (slot(root, 39), pdpt),
        (slot(pdpt, 30), pd),
        (slot(pd, 21), pt),
        (slot(pt, 12), data[0]),
        (slot(pt, 12) + 8, private),
    ] {
        cpu.write(at, &(to | 7).to_le_bytes());
    }
    cpu.write(data[0], &SHARED_WORDS[0].to_le_bytes());
    cpu.write(data[1], &SHARED_WORDS[1].to_le_bytes());
    Ok(SharedTable { root, pt, data })
}

/// One host call that must succeed.
fn flow_td_call<C: Cpu + ?Sized>(cpu: &mut C, name: &'static str, regs: Regs) -> Result<(), TdProbeError> {
    tsm_client::host::call(cpu, name, regs).map(|_| ()).map_err(TdProbeError::Host)
}

/// The checks on the TD's results page (word = offset / 8).
fn verify(w: &[u64; WORDS]) -> Result<(), TdProbeError> {
    check(w[0] == 48 && w[1] == 0, "TDX's initial state: EBX = GPAW, ESI = vCPU index")?;
    let max_leaf = w[2] as u32;
    let mut vendor = [0u8; 12];
    vendor[..4].copy_from_slice(&((w[2] >> 32) as u32).to_le_bytes());
    vendor[4..].copy_from_slice(&w[3].to_le_bytes());
    check(max_leaf >= 0x21 && &vendor == b"GenuineIntel", "CPUID.0 is not GenuineIntel with max leaf >= 0x21")?;
    check(w[4] as u32 & (1 << 31) != 0, "CPUID.1:ECX[31] is clear")?;
    let mut tdx = [0u8; 12];
    tdx[..4].copy_from_slice(&((w[4] >> 32) as u32).to_le_bytes());
    tdx[4..].copy_from_slice(&w[5].to_le_bytes());
    check(&tdx == b"IntelTDX    ", "CPUID.0x21 is not \"IntelTDX    \"")?;
    check(w[6] == 0, "the PENDING page did not read as zero once accepted")?;
    check(w[10] == 0x5A5A_C0DE_0000_0001, "the blocked page lost its contents")?;
    check(w[13..15] == R14_R15_ANSWER, "the host's R14/R15 answer did not reach the TD")?;
    check(w[15] == 0, "the TD found another world's vector registers at entry (XMM0 not zero)")?;
    check(w[29] == 2, "SEAMCALL in the TD was not #UD")?;
    check(w[30] == 0, "the #VE handler's ACCEPT failed")?;
    check(w[31] == EXPECTED_VES.len() as u64, "not one #VE per event")?;
    for (i, (reason, len)) in EXPECTED_VES.iter().enumerate() {
        let r = &w[32 + i * 6..38 + i * 6];
        // RAX status, RCX reason, RDX qualification, R8 GLA, R9 GPA, R10 length.
        check(r[0] == 0 && r[1] == *reason && r[5] & 0xFFFF_FFFF == *len, "a #VE's info is not exact")?;
    }
    let pending = &w[32 + 4 * 6..38 + 4 * 6];
    check(pending[2] == 1 && pending[4] == PENDING_GPA, "the PENDING page's #VE did not name a read of its GPA")?;
    let io = &w[32 + 2 * 6..38 + 2 * 6];
    check(io[2] == (0x80 << 16) | 1 << 3, "the I/O #VE did not name an IN of one byte from port 0x80")?;
    Ok(())
}
