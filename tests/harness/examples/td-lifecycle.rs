//! The demo behind `./run.sh` until the firmware boots: one TD's whole life through the real host
//! and guest ABIs, every call printed with its registers and status, and the malicious host's
//! attempts refused along the way.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use seamless_harness::driver::{default_params, gpa_level, Machine, TdHandle};
use tsm::abi::{guest::leaf as g, host::leaf as h};
use tsm::addr::PageSize;
use tsm::{Regs, Status, Tsm};

const MIB: u64 = 1 << 20;

fn name(guest: bool, leaf: u64) -> &'static str {
    let found = if guest {
        Tsm::<seamless_harness::HostPlatform>::GUEST_LEAVES.iter().find(|l| l.spec.number == leaf).map(|l| l.spec.name)
    } else {
        Tsm::<seamless_harness::HostPlatform>::HOST_LEAVES.iter().find(|l| l.spec.number == leaf).map(|l| l.spec.name)
    };
    found.unwrap_or("?")
}

fn show(who: &str, guest: bool, leaf: u64, args: &str, r: &Regs) {
    let st = r.status();
    let verdict = if st.is_error() {
        "refused"
    } else if st == Status::SUCCESS {
        "ok"
    } else {
        "warning"
    };
    println!("  {who:5} {:22} {args:34} -> {verdict:7} {st:?}", name(guest, leaf));
}

fn host(m: &mut Machine, leaf: u64, rcx: u64, rdx: u64, r8: u64, r9: u64, args: &str) -> Regs {
    let r = m.host(leaf, rcx, rdx, r8, r9);
    show("host", false, leaf, args, &r);
    r
}

fn guest(m: &mut Machine, td: &TdHandle, leaf: u64, rcx: u64, rdx: u64, args: &str) -> Regs {
    let r = m.guest(td.vcpus[0], leaf, rcx, rdx, 0);
    show("guest", true, leaf, args, &r.regs);
    if let Some(exit) = r.exit {
        println!("        -> vCPU exits to the host: {exit:x?}");
    }
    r.regs
}

fn main() {
    println!("seamless: a TD's life through the TSM's ABIs (host and guest on the host; the QEMU demo comes with the firmware)\n");
    let mut m = Machine::new(64 * MIB);
    println!("1. TSM configuration");
    let info = m.tdmr_info();
    println!("  TDMR {:#x}+{:#x}, PAMT {:#x}+{:#x}", info[0], info[1], info[2], info[3]);
    let r = m.sys_config();
    show("host", false, h::SYS_CONFIG, "TDMR_INFO[1]", &r);

    println!("\n2. TD build: create, control pages, init, vCPU, image, measurement");
    let mut td = m.create_td(&default_params());
    println!("  host  TDH.MNG.CREATE / ADDCX x2 / INIT       TDR {:#x}, GPAW 48, 4-level S-EPT", td.tdr);
    let v = m.add_vcpu(&mut td);
    println!("  host  TDH.VP.CREATE                          TDVPR {v:#x}");
    let mut image = [0u8; 4096];
    image[..24].copy_from_slice(b"seamless guest image \x00\x00\x00");
    m.add_page(&td, 0, &image, true);
    println!("  host  TDH.MEM.SEPT.ADD x3, PAGE.ADD, MR.EXTEND x16 at GPA 0");
    let expected = attest::mrtd::measure_image([(0u64, &image, true)]);
    host(&mut m, h::MR_FINALIZE, td.tdr, 0, 0, 0, "");
    host(&mut m, h::VP_ENTER, v, 0, 0, 0, "vCPU 0");

    println!("\n3. Runtime memory: AUG by the host, ACCEPT by the guest");
    let page = m.page();
    host(&mut m, h::MEM_PAGE_AUG, gpa_level(0x1000, 0), td.tdr, page, 0, "GPA 0x1000, 4K");
    guest(&mut m, &td, g::MEM_PAGE_ACCEPT, gpa_level(0x1000, 0), 0, "GPA 0x1000, 4K");
    guest(&mut m, &td, g::MEM_PAGE_ACCEPT, gpa_level(0x1000, 0), 0, "again: idempotent");
    guest(&mut m, &td, g::MEM_PAGE_ACCEPT, gpa_level(0x2000, 0), 0, "GPA 0x2000, never added");
    let p2 = m.page();
    host(&mut m, h::MEM_PAGE_AUG, gpa_level(0x2000, 0), td.tdr, p2, 0, "host fixes the mapping");
    host(&mut m, h::VP_ENTER, v, 0, 0, 0, "and re-enters");
    guest(&mut m, &td, g::MEM_PAGE_ACCEPT, gpa_level(0x2000, 0), 0, "guest retries");

    println!("\n4. The malicious host");
    let other = m.running_td();
    host(&mut m, h::MEM_PAGE_AUG, gpa_level(0x3000, 0), other.tdr, page, 0, "map TD 1's page into TD 2");
    host(&mut m, h::MEM_PAGE_AUG, gpa_level(0x3000, 0), td.tdr, td.tdcs[1], 0, "TDCS page as guest data");
    let p3 = m.page();
    host(&mut m, h::MEM_PAGE_AUG, gpa_level(1 << 47, 0), td.tdr, p3, 0, "shared GPA as private");
    host(&mut m, h::MEM_PAGE_REMOVE, gpa_level(0x1000, 0), td.tdr, 0, 0, "REMOVE without BLOCK");
    host(&mut m, h::MEM_RANGE_BLOCK, gpa_level(0x1000, 0), td.tdr, 0, 0, "BLOCK");
    host(&mut m, h::MEM_PAGE_REMOVE, gpa_level(0x1000, 0), td.tdr, 0, 0, "REMOVE before TRACK");
    host(&mut m, h::MEM_TRACK, td.tdr, 0, 0, 0, "");
    host(&mut m, h::MEM_TRACK, td.tdr, 0, 0, 0, "vCPU still in the old epoch");
    host(&mut m, h::VP_KICK, v, 0, 0, 0, "kick the vCPU out");
    host(&mut m, h::MEM_PAGE_REMOVE, gpa_level(0x1000, 0), td.tdr, 0, 0, "now retired: REMOVE");

    println!("\n5. Attestation: the guest asks for a TDREPORT");
    host(&mut m, h::VP_ENTER, v, 0, 0, 0, "");
    m.aug_accept(&td, 0x4000, PageSize::Size4K);
    let rd = m.host(h::MEM_SEPT_RD, gpa_level(0x2000, 0), td.tdr, 0, 0);
    let frame = rd.rcx & 0x000F_FFFF_FFFF_F000;
    m.write(frame, b"nonce from the verifier.........................................");
    guest(&mut m, &td, g::MR_REPORT, 0x4000, 0x2000, "REPORTDATA at GPA 0x2000");
    let rd = m.host(h::MEM_SEPT_RD, gpa_level(0x4000, 0), td.tdr, 0, 0);
    let report = m.read(rd.rcx & 0x000F_FFFF_FFFF_F000, 1024);
    let parsed = attest::tdreport::TdReport::read_from(&report).expect("1024 bytes");
    println!("  TDREPORT: type {:#x}, MRTD {}", parsed.report_mac.report_type[0], hex(&parsed.td_info.mr_td[..12]));
    println!("  MRTD recomputed from the image by the host tool: {}", hex(&expected[..12]));
    println!("  match: {}", parsed.td_info.mr_td == expected && parsed.tee_info_hash_ok());
    guest(&mut m, &td, g::MR_VERIFYREPORT, 0x4000, 0, "the TSM's MAC verifies");

    println!("\n6. Teardown: every donated page comes back, zeroed");
    host(&mut m, h::VP_KICK, v, 0, 0, 0, "");
    host(&mut m, h::MNG_VPFLUSHDONE, td.tdr, 0, 0, 0, "");
    host(&mut m, h::PHYMEM_PAGE_RECLAIM, td.tdr, 0, 0, 0, "TDR first: refused");
    let mut reclaimed = 0;
    for f in seamless_harness::driver::TDMR_BASE >> 12..m.pamt_base() >> 12 {
        let pa = f << 12;
        let md = m.host(h::PHYMEM_PAGE_RDMD, pa, 0, 0, 0);
        if md.rdx == td.tdr && pa != td.tdr && m.host(h::PHYMEM_PAGE_RECLAIM, pa, 0, 0, 0).status() == Status::SUCCESS {
            reclaimed += 1;
        }
    }
    println!("  host  TDH.PHYMEM.PAGE.RECLAIM x{reclaimed}                 every page the TD owned");
    host(&mut m, h::PHYMEM_PAGE_RECLAIM, td.tdr, 0, 0, 0, "TDR last");
    println!("\ndone: see docs/abi.md for every leaf; ./run.sh test for the checks.");
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect::<String>() + "..."
}
