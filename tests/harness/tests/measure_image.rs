//! `attest measure` against the real TSM: a TD built through the host ABI from a guest image, by
//! the loading convention of `attest::image` (regions in order; each page PAGE.ADD, then, for a
//! measured region, MR.EXTEND of its 16 chunks), reports in its TDREPORT exactly the MRTD
//! `attest::image::Image::mrtd` (what `attest measure` prints) computes from the image file;
//! and the host reads the same registers through SEAMLESS.TD.MR.RD.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use attest::image::{encode, Image};
use seamless_harness::driver::{default_params, gpa_level, ok, Machine};
use tsm::abi::{guest::leaf as g, host::leaf as h};
use tsm::addr::PageSize;
use tsm::{Operand, Status};

const MIB: u64 = 1 << 20;

/// SEAMLESS.TD.MR.RD of register `which` (0 MRTD, 1..4 RTMR0..3); asserts success.
fn mr_rd(m: &mut Machine, tdr: u64, which: u64) -> [u8; 48] {
    let r = m.host(h::TD_MR_RD, tdr, which, 0, 0);
    assert_eq!(r.status(), Status::SUCCESS, "{r:x?}");
    let mut b = [0u8; 48];
    for (i, w) in [r.rcx, r.rdx, r.r8, r.r9, r.r10, r.r11].iter().enumerate() {
        b[i * 8..i * 8 + 8].copy_from_slice(&w.to_le_bytes());
    }
    b
}

#[test]
fn td_mr_rd_rejects_each_bad_operand_in_check_order() {
    let mut m = Machine::new(32 * MIB);
    let r = m.host(h::TD_MR_RD, 0, 0, 0, 0);
    assert_eq!(r.status(), Status::SYS_NOT_READY);
    ok(m.sys_config(), "SYS.CONFIG");
    let td = m.create_td(&default_params());
    let created = m.page();
    ok(m.host(h::MNG_CREATE, created, 0, 0, 0), "MNG.CREATE");
    let free = m.page();
    let cases = [
        (td.tdr + 8, 0, Status::OPERAND_INVALID.with_operand(Operand::Rcx)),
        (0xFFFF_F000_0000, 0, Status::OPERAND_ADDR_RANGE_ERROR.with_operand(Operand::Rcx)),
        (free, 0, Status::PAGE_METADATA_INCORRECT.with_operand(Operand::Rcx)),
        (td.tdr, 5, Status::OPERAND_INVALID.with_operand(Operand::Rdx)),
        (created, 0, Status::TD_NOT_INITIALIZED),
    ];
    for (i, (rcx, rdx, want)) in cases.into_iter().enumerate() {
        let r = m.host(h::TD_MR_RD, rcx, rdx, 0, 0);
        assert_eq!(r.status(), want, "case {i}");
        assert_eq!((r.rcx, r.rdx, r.r8, r.r9, r.r10, r.r11), (0, 0, 0, 0, 0, 0), "case {i}: no output on an error");
    }
    // Every register of a TD just initialized reads as zero; torn down, none can be read.
    for which in 0..=4 {
        assert_eq!(mr_rd(&mut m, td.tdr, which), [0; 48]);
    }
    ok(m.host(h::MNG_VPFLUSHDONE, td.tdr, 0, 0, 0), "VPFLUSHDONE");
    assert_eq!(m.host(h::TD_MR_RD, td.tdr, 0, 0, 0).status().code(), Status::LIFECYCLE_STATE_INCORRECT);
}

fn frame(m: &mut Machine, tdr: u64, gpa: u64) -> u64 {
    let r = m.host(h::MEM_SEPT_RD, gpa_level(gpa, 0), tdr, 0, 0);
    ok(r, "SEPT.RD");
    r.rcx & 0x000F_FFFF_FFFF_F000
}

#[test]
fn measure_of_the_image_is_the_mrtd_the_tsm_reports() {
    // A firmware-like image: code measured, a data page added unmeasured (as TDVF does with the
    // TD-HOB), a partial last page, and a region past 2 MiB.
    let code: Vec<u8> = (0..6000u32).map(|i| (i.wrapping_mul(131) >> 3) as u8).collect();
    let hob = b"td hob: not measured".to_vec();
    let high: Vec<u8> = (0..9000u32).map(|i| (i ^ 0x5a) as u8).collect();
    let regions: [(u64, u32, bool, &[u8]); 3] =
        [(0x0, 2, true, &code), (0x8000, 1, false, &hob), (2 * MIB, 3, true, &high)];
    let bytes = encode(&regions);

    let mut m = Machine::configured(32 * MIB);
    let mut td = m.create_td(&default_params());
    let v = m.add_vcpu(&mut td);
    // The loading convention, written out here from the regions rather than through the parser.
    for (gpa, pages, measured, content) in regions {
        for i in 0..u64::from(pages) {
            let mut page = [0u8; 4096];
            let start = (i as usize * 4096).min(content.len());
            let end = (start + 4096).min(content.len());
            page[..end - start].copy_from_slice(&content[start..end]);
            m.add_page(&td, gpa + i * 4096, &page, measured);
        }
    }
    m.finalize(&td);
    m.enter(v);
    m.aug_accept(&td, 0x3000, PageSize::Size4K);
    m.aug_accept(&td, 0x4000, PageSize::Size4K);
    let data = frame(&mut m, td.tdr, 0x4000);
    m.write(data, &[0u8; 64]);
    // The TD extends RTMR2 with 48 bytes of its own before it asks for its report.
    m.write(data, &[0x2A; 48]);
    ok(m.guest(v, g::MR_RTMR_EXTEND, 0x4000, 2, 0).regs, "RTMR.EXTEND");
    m.write(data, &[0u8; 64]);
    ok(m.guest(v, g::MR_REPORT, 0x3000, 0x4000, 0).regs, "MR.REPORT");
    let out = frame(&mut m, td.tdr, 0x3000);
    let report = attest::tdreport::TdReport::read_from(&m.read(out, 1024)).unwrap();

    let image = Image::parse(&bytes).unwrap();
    assert_eq!(image.mrtd(), report.td_info.mr_td, "attest measure agrees with the TSM");
    // The host's read of the same registers.
    assert_eq!(mr_rd(&mut m, td.tdr, 0), report.td_info.mr_td, "SEAMLESS.TD.MR.RD's MRTD");
    for i in 0..4 {
        assert_eq!(mr_rd(&mut m, td.tdr, 1 + i as u64), report.td_info.rtmr[i], "RTMR{i}");
    }
    assert_ne!(report.td_info.rtmr[2], [0; 48], "the extend counted");
    // And it is not a value any image would give: the unmeasured page's content does not count,
    // its address does.
    let other_hob = encode(&[regions[0], (0x8000, 1, false, b"another hob"), regions[2]]);
    assert_eq!(Image::parse(&other_hob).unwrap().mrtd(), report.td_info.mr_td);
    let moved = encode(&[regions[0], (0x9000, 1, false, &hob), regions[2]]);
    assert_ne!(Image::parse(&moved).unwrap().mrtd(), report.td_info.mr_td);
    let mut changed = code.clone();
    changed[5999] ^= 1;
    let changed = encode(&[(0x0, 2, true, &changed), regions[1], regions[2]]);
    assert_ne!(Image::parse(&changed).unwrap().mrtd(), report.td_info.mr_td);
}
