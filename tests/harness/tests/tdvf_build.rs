//! Debian's OVMF.fd built as a TD by the host's TDVF sequence (`tsm_client::host::tdvf`) against
//! the real TSM: the MRTD the TSM reports is the one `attest measure OVMF.fd` prints; the TD HOB
//! the firmware finds at its TD_HOB address passes edk2's `ValidateHobList` and leads edk2's
//! accept loop over exactly the unaccepted RAM; TDG.MEM.PAGE.ACCEPT answers that loop with the
//! statuses edk2 2022.11 (`TdxLib/AcceptPages.c`) relies on; TDG.VP.INFO gives it one vCPU.
//!
//! The tests skip (saying so) when OVMF.fd is absent; `./run.sh setup` installs it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use attest::tdreport::TdReport;
use attest::tdvf::Tdvf;
use seamless_harness::driver::{default_params, gpa_level, ok, Machine};
use tsm::abi::{guest::leaf as g, host::leaf as h};
use tsm::td::TdParams;
use tsm::{Status, TdExit};
use tsm_client::host::td::{aug, enter};
use tsm_client::host::tdvf::{self, Aug, MemoryMap, RESOURCE_MEMORY_UNACCEPTED, RESOURCE_SYSTEM_MEMORY};
use tsm_client::HostError;

const MIB: u64 = 1 << 20;
const SIZE_2M: u64 = 2 * MIB;
/// The TD's RAM in these tests: 16 MiB from GPA 0.
const RAM: [(u64, u64); 1] = [(0, 16 * MIB)];

fn ovmf() -> Option<Vec<u8>> {
    let path = std::env::var("OVMF_FD").unwrap_or_else(|_| "/usr/share/ovmf/OVMF.fd".into());
    match std::fs::read(&path) {
        Ok(b) => Some(b),
        Err(e) => {
            eprintln!("skipped: {path}: {e} (`./run.sh setup` installs Debian's ovmf package)");
            None
        }
    }
}

fn params() -> TdParams {
    TdParams { max_vcpus: 1, ..default_params() }
}

fn frame(m: &mut Machine, tdr: u64, gpa: u64) -> u64 {
    let r = m.host(h::MEM_SEPT_RD, gpa_level(gpa, 0), tdr, 0, 0);
    ok(r, "SEPT.RD");
    r.rcx & 0x000F_FFFF_FFFF_F000
}

/// The TD's own MRTD, from a TDREPORT the TSM writes at a TEMP_MEM page (PAGE.ADDed, so
/// mapped) on the vCPU's request.
fn reported_mrtd(m: &mut Machine, tdr: u64, vcpu: u64) -> [u8; 48] {
    let (out, data) = (0x81_0000, 0x81_1000);
    ok(m.guest(vcpu, g::MR_REPORT, out, data, 0).regs, "TDG.MR.REPORT");
    let pa = frame(m, tdr, out);
    TdReport::read_from(&m.read(pa, 1024)).unwrap().td_info.mr_td
}

#[test]
fn tdvf_build_of_debians_ovmf_reports_the_mrtd_attest_measure_prints() {
    let Some(ovmf) = ovmf() else { return };
    let mut m = Machine::configured(64 * MIB);
    let built = tdvf::build(&mut m, &ovmf, &params(), &RAM, Aug::UpFront).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((built.added, built.measured), (538, 480), "every section page added, the BFV measured");
    // [0, 8M) in 2M pages; [8.125M, 10M) 4K up to the 2M boundary, then [10M, 16M) in 2M pages;
    // the two holes between the RAM sections in 4K pages.
    assert_eq!(built.augs, (4 + 3, 3 + 3 + 0x1E0));
    enter(&mut m, built.vcpu).unwrap();
    let want = Tdvf::parse(&ovmf).unwrap().mrtd();
    assert_eq!(reported_mrtd(&mut m, built.td.tdr, built.vcpu), want, "the TSM's MRTD is attest measure's");
    // TDG.VP.INFO: GPAW 48 and one vCPU in both halves of R8, however edk2 reads them.
    let info = m.guest(built.vcpu, g::VP_INFO, 0, 0, 0).regs;
    ok(info, "TDG.VP.INFO");
    assert_eq!((info.rcx, info.r8, info.r9), (48, 0x0000_0001_0000_0001, 0));
    // The reset vector page is the file's last page, in the TD's memory at 0xFFFFF000.
    let top = frame(&mut m, built.td.tdr, 0xFFFF_F000);
    assert_eq!(m.read(top, 4096), ovmf[ovmf.len() - 4096..]);
}

#[test]
fn tdvf_mrtd_does_not_depend_on_the_ram_or_the_hob() {
    let Some(ovmf) = ovmf() else { return };
    let mut m = Machine::configured(64 * MIB);
    let a = tdvf::build(&mut m, &ovmf, &params(), &RAM, Aug::OnDemand).unwrap();
    let b = tdvf::build(&mut m, &ovmf, &params(), &[(0, 12 * MIB), (14 * MIB, 2 * MIB)], Aug::OnDemand).unwrap();
    assert_eq!(b.augs, (0, 0));
    assert_ne!(a.map, b.map);
    enter(&mut m, a.vcpu).unwrap();
    enter(&mut m, b.vcpu).unwrap();
    let (ma, mb) = (reported_mrtd(&mut m, a.td.tdr, a.vcpu), reported_mrtd(&mut m, b.td.tdr, b.vcpu));
    assert_eq!(ma, mb);
    // A BFV byte changes it.
    let mut changed = ovmf.clone();
    changed[0x10_0000] ^= 1;
    let c = tdvf::build(&mut m, &changed, &params(), &RAM, Aug::OnDemand).unwrap();
    enter(&mut m, c.vcpu).unwrap();
    assert_ne!(reported_mrtd(&mut m, c.td.tdr, c.vcpu), ma);
    assert_eq!(reported_mrtd(&mut m, c.td.tdr, c.vcpu), Tdvf::parse(&changed).unwrap().mrtd());
}

#[test]
fn tdvf_build_refuses_before_any_call() {
    let Some(ovmf) = ovmf() else { return };
    let mut m = Machine::configured(16 * MIB);
    let before = m.donated_pages();
    let refuse = |m: &mut Machine, image: &[u8], p: &TdParams, ram: &[(u64, u64)]| {
        tdvf::build(m, image, p, ram, Aug::UpFront).unwrap_err()
    };
    // The 4 MiB builds carry no metadata; a cut file has no table.
    assert!(matches!(refuse(&mut m, &ovmf[..ovmf.len() - 4096], &params(), &RAM), HostError::Tdvf(_)));
    if let Ok(code4m) = std::fs::read("/usr/share/OVMF/OVMF_CODE_4M.fd") {
        assert_eq!(refuse(&mut m, &code4m, &params(), &RAM), HostError::Tdvf(attest::tdvf::TdvfError::NoMetadata));
    }
    // RAM that does not hold TEMP_MEM at 0x800000, or holds the firmware, or runs backwards.
    assert_eq!(
        refuse(&mut m, &ovmf, &params(), &[(0, 8 * MIB)]),
        HostError::TdMemory(tdvf::MapError::SectionOutsideRam { index: 2 })
    );
    assert_eq!(
        refuse(&mut m, &ovmf, &params(), &[(0, 0x1_0000_0000)]),
        HostError::TdMemory(tdvf::MapError::FirmwareInRam { index: 0 })
    );
    assert_eq!(
        refuse(&mut m, &ovmf, &params(), &[(16 * MIB, MIB), (0, 16 * MIB)]),
        HostError::TdMemory(tdvf::MapError::BadRam { index: 1 })
    );
    assert_eq!(refuse(&mut m, &ovmf, &params(), &[]), HostError::TdMemory(tdvf::MapError::NoRam));
    assert_eq!(refuse(&mut m, &ovmf, &default_params(), &RAM), HostError::TdvfVcpus(2));
    assert_eq!(m.donated_pages(), before, "nothing was donated for a refused build");
}

/// A TD HOB walked as edk2 2022.11's `ValidateHobList` walks it, then its resource descriptors
/// as `AcceptMemory` reads them: `(type, start, length)`. Panics where edk2 would refuse the
/// list (SEC then dead-loops).
fn edk2_reads_hob(hob: &[u8]) -> Vec<(u32, u64, u64)> {
    let u16_at = |at: usize| u16::from_le_bytes(hob[at..at + 2].try_into().unwrap());
    let u32_at = |at: usize| u32::from_le_bytes(hob[at..at + 4].try_into().unwrap());
    let u64_at = |at: usize| u64::from_le_bytes(hob[at..at + 8].try_into().unwrap());
    let mut at = 0;
    let mut out = Vec::new();
    let mut first = true;
    while u16_at(at) != 0xFFFF {
        let (ty, len) = (u16_at(at), usize::from(u16_at(at + 2)));
        assert_eq!(u32_at(at + 4), 0, "Reserved must be zero");
        assert_ne!(len, 0, "HobLength must not be zero");
        match ty {
            1 => {
                assert!(first, "the PHIT comes first");
                assert_eq!(len, 56, "sizeof (EFI_HOB_HANDOFF_INFO_TABLE)");
                assert!(u32_at(at + 12) <= 0x20 || u32_at(at + 12) == 0x11, "BootMode in edk2's list");
                assert_eq!(u64_at(at + 32) % 4096, 0, "EfiFreeMemoryTop 4 KiB aligned");
            }
            3 => {
                assert_eq!(len, 48, "sizeof (EFI_HOB_RESOURCE_DESCRIPTOR)");
                let rtype = u32_at(at + 24);
                assert!(rtype <= 7, "ResourceType in edk2's list");
                assert_eq!(u32_at(at + 28) & !0x7, 0, "attributes beyond present/initialized/tested");
                out.push((rtype, u64_at(at + 32), u64_at(at + 40)));
            }
            other => panic!("HOB type {other:#x}: ValidateHobList refuses it (a MEMORY_ALLOCATION is 2)"),
        }
        first = false;
        at += len;
    }
    assert_eq!(u16_at(at + 2), 8, "the END HOB is a bare header");
    out
}

#[test]
fn td_hob_passes_edk2s_validation_and_describes_the_tds_ram() {
    let Some(ovmf) = ovmf() else { return };
    let mut m = Machine::configured(64 * MIB);
    let ram = [(0, 16 * MIB), (0x1_0000_0000, 4 * MIB)];
    let built = tdvf::build(&mut m, &ovmf, &params(), &ram, Aug::OnDemand).unwrap();
    let hob_page = frame(&mut m, built.td.tdr, 0x80_9000);
    let hob = m.read(hob_page, 4096);
    let ranges = edk2_reads_hob(&hob);
    let (u, a) = (RESOURCE_MEMORY_UNACCEPTED, RESOURCE_SYSTEM_MEMORY);
    assert_eq!(
        ranges,
        [
            (u, 0, 0x80_0000),
            (a, 0x80_0000, 0x6000),
            (u, 0x80_6000, 0x3000),
            (a, 0x80_9000, 0x2000),
            (a, 0x80_B000, 0x2000),
            (u, 0x80_D000, 0x3000),
            (a, 0x81_0000, 0x1_0000),
            (u, 0x82_0000, 0x7E_0000),
            (u, 0x1_0000_0000, 4 * MIB),
        ],
        "QEMU's split of RAM by the RAM sections, below 4 GiB first"
    );
    // The PHIT's EfiEndOfHobList points just past the END HOB, as QEMU writes it.
    let end = u64::from_le_bytes(hob[48..56].try_into().unwrap());
    assert_eq!(end, 0x80_9000 + 56 + 9 * 48 + 8);
    assert!(hob[56 + 9 * 48 + 8..].iter().all(|&b| b == 0), "nothing after the list");
    // The second TD_HOB page is zero, and the TD's other RAM pages were added as zeros too.
    let second = frame(&mut m, built.td.tdr, 0x80_A000);
    assert!(m.read(second, 4096).iter().all(|&b| b == 0));
    // The HOB does not depend on where the host built it: the same map writes the same bytes.
    let map = MemoryMap::new(&ram, &Tdvf::parse(&ovmf).unwrap()).unwrap();
    let mut again = [0u8; 4096];
    let n = tdvf::write_hob(&map, 0x80_9000, &mut again).unwrap();
    assert_eq!((n, &again[..]), (56 + 9 * 48 + 8, &hob[..]));
    assert_eq!(
        tdvf::write_hob(&map, 0x80_9000, &mut again[..n - 1]),
        Err(HostError::TdHobTooSmall { needed: n as u64 })
    );
}

/// What edk2 2022.11's `TdAcceptPages` saw: accepted pages, ALREADY_ACCEPTED answers, 2M
/// requests that fell back to 4K, and the host's AUGs on EPT violations.
#[derive(Debug, Default, PartialEq, Eq)]
struct AcceptLog {
    accepted_2m: u64,
    accepted_4k: u64,
    already: u64,
    fell_back: u64,
    augs_4k: u64,
}

const ALREADY_ACCEPTED: u64 = 0x0000_0B0A_0000_0000;
const SIZE_MISMATCH: u64 = 0xC000_0B0B_0000_0000;

/// One TDCALL<ACCEPT> as the firmware makes it, with the host behind it: an EPT violation
/// exit is served as a host without 2 MiB blocks serves it (AUG of the 4 KiB page, re-enter),
/// and the call is made again (the TDCALL instruction re-executes).
fn tdcall_accept(
    m: &mut Machine,
    td: &tsm_client::host::td::TdPages,
    vcpu: u64,
    gpa: u64,
    level: u8,
    log: &mut AcceptLog,
) -> u64 {
    loop {
        let r = m.guest(vcpu, g::MEM_PAGE_ACCEPT, gpa | u64::from(level), 0, 0);
        match r.exit {
            None => return r.regs.rax,
            Some(TdExit::EptViolation { gpa: at, .. }) => {
                let page = m.page();
                aug(m, td, at.raw() & !0xFFF, 0, page).unwrap();
                log.augs_4k += 1;
                enter(m, vcpu).unwrap();
            }
            Some(other) => panic!("ACCEPT exited with {other:?}"),
        }
    }
}

/// edk2 2022.11 `TdAcceptPages` for `pages` pages of `level` from `gpa`: statuses compared
/// with the low 32 bits (operand details) masked off; ALREADY_ACCEPTED is counted and skipped,
/// SIZE_MISMATCH on a 2M request retries it as 512 4K pages; anything else hangs the firmware.
fn edk2_accept(
    m: &mut Machine,
    td: &tsm_client::host::td::TdPages,
    vcpu: u64,
    gpa: u64,
    pages: u64,
    level: u8,
    log: &mut AcceptLog,
) {
    for i in 0..pages {
        let at = gpa + i * (4096 << (9 * u32::from(level)));
        let status = tdcall_accept(m, td, vcpu, at, level, log);
        match (status & !0xFFFF_FFFF, level) {
            (0, 0) => log.accepted_4k += 1,
            (0, _) => log.accepted_2m += 1,
            (ALREADY_ACCEPTED, _) => log.already += 1,
            (SIZE_MISMATCH, 1) => {
                log.fell_back += 1;
                edk2_accept(m, td, vcpu, at, 512, 0, log);
            }
            _ => panic!("ACCEPT {at:#x} level {level}: status {status:#x} dead-loops edk2's SEC"),
        }
    }
}

/// edk2's `BspAcceptMemoryResourceRange`: 4K up to the first 2M boundary, 2M in the middle,
/// 4K for the tail.
fn edk2_accept_range(
    m: &mut Machine,
    td: &tsm_client::host::td::TdPages,
    vcpu: u64,
    start: u64,
    end: u64,
    log: &mut AcceptLog,
) {
    let head_end = start.next_multiple_of(SIZE_2M).min(end);
    edk2_accept(m, td, vcpu, start, (head_end - start) / 4096, 0, log);
    let mid_end = head_end + (end - head_end) / SIZE_2M * SIZE_2M;
    // edk2 only uses 2M for a middle part strictly longer than 2M (`TotalLength > SIZE_2MB`).
    let mid_end = if end - head_end > SIZE_2M { mid_end } else { head_end };
    edk2_accept(m, td, vcpu, head_end, (mid_end - head_end) / SIZE_2M, 1, log);
    edk2_accept(m, td, vcpu, mid_end, (end - mid_end) / 4096, 0, log);
}

#[test]
fn edk2s_accept_loop_completes_over_the_hobs_unaccepted_ram() {
    let Some(ovmf) = ovmf() else { return };
    // AUGed up front (2M where it can): every ACCEPT succeeds at the size edk2 asks for.
    let mut m = Machine::configured(64 * MIB);
    let built = tdvf::build(&mut m, &ovmf, &params(), &RAM, Aug::UpFront).unwrap();
    enter(&mut m, built.vcpu).unwrap();
    let mut log = AcceptLog::default();
    for r in built.map.ranges().iter().filter(|r| !r.accepted && r.start < 1 << 32) {
        edk2_accept_range(&mut m, &built.td, built.vcpu, r.start, r.end(), &mut log);
    }
    assert_eq!(log, AcceptLog { accepted_2m: 4 + 3, accepted_4k: 3 + 3 + 0x1E0, ..AcceptLog::default() });
    // Accepting again (edk2 reaches the same ranges twice when a HOB lists them twice) is
    // counted, not an error.
    let mut again = AcceptLog::default();
    edk2_accept_range(&mut m, &built.td, built.vcpu, 0, 8 * MIB, &mut again);
    assert_eq!(again, AcceptLog { already: 4, ..AcceptLog::default() });
}

#[test]
fn edk2s_2m_accept_falls_back_to_4k_over_mixed_state_without_rezeroing() {
    let Some(ovmf) = ovmf() else { return };
    // On demand, with a host that AUGs 4K on each EPT violation: 2M ACCEPT over a range of
    // which one page is already accepted, one pending, the rest unmapped.
    let mut m = Machine::configured(64 * MIB);
    let built = tdvf::build(&mut m, &ovmf, &params(), &RAM, Aug::OnDemand).unwrap();
    let (td, vcpu) = (built.td, built.vcpu);
    enter(&mut m, vcpu).unwrap();
    let mut log = AcceptLog::default();
    edk2_accept(&mut m, &td, vcpu, 0x10_0000, 1, 0, &mut log);
    let page = frame(&mut m, td.tdr, 0x10_0000);
    m.write(page, b"written by the TD after its accept");
    let pending = m.page();
    aug(&mut m, &td, 0x10_1000, 0, pending).unwrap();
    let before = AcceptLog { accepted_4k: 1, augs_4k: 1, ..AcceptLog::default() };
    assert_eq!(log, before);
    // A 2M request over a 4K table (mixed: accepted, pending, unmapped): SIZE_MISMATCH, and
    // edk2 goes 4K, AUGed on demand page by page.
    edk2_accept(&mut m, &td, vcpu, 0, 1, 1, &mut log);
    assert_eq!(
        log,
        AcceptLog { accepted_2m: 0, accepted_4k: 1 + 511, already: 1, fell_back: 1, augs_4k: 1 + 510 },
        "512 pages: 1 already accepted, 511 accepted now (1 pending, 510 AUGed on demand)"
    );
    assert_eq!(m.read(page, 34), b"written by the TD after its accept", "ALREADY_ACCEPTED did not zero the page");
    // The statuses themselves, unmasked: the TSM adds operand details only in the low bits.
    let r = m.guest(vcpu, g::MEM_PAGE_ACCEPT, gpa_level(0, 1), 0, 0).regs;
    assert_eq!(r.status().0 & !0xFFFF_FFFF, SIZE_MISMATCH, "{:#x}", r.rax);
    assert_eq!(r.status().code(), Status::PAGE_SIZE_MISMATCH);
    let r = m.guest(vcpu, g::MEM_PAGE_ACCEPT, gpa_level(0x10_0000, 0), 0, 0).regs;
    assert_eq!(r.rax, ALREADY_ACCEPTED);
}

/// A crafted TDVF (no OVMF.fd needed): BFV measured at the top of 4 GiB, CFV below it, a
/// TEMP_MEM at the very start of RAM and a TD_HOB at its very end.
fn crafted(hob_gpa: u64, with_hob: bool) -> Vec<u8> {
    let mut sections = vec![
        (0x2000, 0x6000, 0xFFFF_A000, 0x6000, 0, 1),
        (0, 0x2000, 0xFFFF_8000, 0x2000, 1, 0),
        (0, 0, 0, 0x3000, 3, 0),
    ];
    if with_hob {
        sections.push((0, 0, hob_gpa, 0x1000, 2, 0));
    }
    let mut b = attest::tdvf::encode(0x8000, 0x7000, &sections);
    b[..0x7000].iter_mut().enumerate().for_each(|(i, x)| *x = (i * 7 + (i >> 9)) as u8);
    b
}

#[test]
fn memory_map_splits_ram_at_its_edges_and_bounds_the_list() {
    let img = crafted(4 * MIB - 0x1000, true);
    let t = Tdvf::parse(&img).unwrap();
    let map = MemoryMap::new(&[(0, 4 * MIB)], &t).unwrap();
    let got: Vec<_> = map.ranges().iter().map(|r| (r.start, r.length, r.accepted)).collect();
    assert_eq!(got, [(0, 0x3000, true), (0x3000, 4 * MIB - 0x4000, false), (4 * MIB - 0x1000, 0x1000, true)]);
    assert_eq!(map.hob_bytes(), 56 + 3 * 48 + 8);
    // 64 RAM ranges plus the split: more than a TD HOB page holds here.
    let many: Vec<(u64, u64)> = (0..64).map(|i| (i * 8 * MIB, 4 * MIB)).collect();
    assert_eq!(MemoryMap::new(&many, &t), Err(tdvf::MapError::TooManyRanges));
    assert_eq!(MemoryMap::new(&many[..62], &t).map(|m| m.ranges().len()), Ok(64));
    let no_hob = crafted(0, false);
    assert_eq!(MemoryMap::new(&[(0, 4 * MIB)], &Tdvf::parse(&no_hob).unwrap()), Err(tdvf::MapError::NoTdHob));
    for bad in [[(0x800, 4 * MIB)], [(0, 0)], [(0, 4 * MIB + 1)], [(!0xFFFu64, 0x2000)]] {
        assert_eq!(MemoryMap::new(&bad, &t), Err(tdvf::MapError::BadRam { index: 0 }), "{bad:x?}");
    }
    // A section astride two RAM ranges lies inside neither.
    assert_eq!(
        MemoryMap::new(&[(0, 0x2000), (0x2000, 4 * MIB)], &t),
        Err(tdvf::MapError::SectionOutsideRam { index: 2 })
    );
}

#[test]
fn tdvf_build_of_a_crafted_image_reports_its_mrtd() {
    let img = crafted(4 * MIB - 0x1000, true);
    let mut m = Machine::configured(32 * MIB);
    let built = tdvf::build(&mut m, &img, &params(), &[(0, 4 * MIB)], Aug::UpFront).unwrap();
    assert_eq!((built.added, built.measured), (6 + 2 + 3 + 1, 6));
    // [0x3000, 4M - 0x1000): 4K to 2M, then 2M - 0x1000 left: not longer than 2M, so 4K.
    assert_eq!(built.augs, (0, 1024 - 4));
    enter(&mut m, built.vcpu).unwrap();
    let report = frame(&mut m, built.td.tdr, 0);
    ok(m.guest(built.vcpu, g::MR_REPORT, 0, 0x1000, 0).regs, "TDG.MR.REPORT");
    let mrtd = TdReport::read_from(&m.read(report, 1024)).unwrap().td_info.mr_td;
    assert_eq!(mrtd, Tdvf::parse(&img).unwrap().mrtd());
    let hob = frame(&mut m, built.td.tdr, 4 * MIB - 0x1000);
    assert_eq!(edk2_reads_hob(&m.read(hob, 4096)).len(), 3);
}
