//! The trusted-IOMMU figure: one DMA translation by the software walker (root → context →
//! PASID directory → PASID entry → 4-level S-EPT → 4K leaf), warm, over a TD whose pages were
//! added and accepted through the real ABIs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::time::Instant;

use seamless_harness::driver::Machine;
use tsm::addr::{PageSize, Pfn};
use tsm::iommu::{DmarKey, DmarRequest, DomainId, Frames, Iommu, Rid, SeptLevels};
use tsm::pamt::Pamt;

use crate::Figures;

/// Accepted 4K pages the translations cycle over (GPAs 4K..1M).
const PAGES: u64 = 255;
const ROUNDS: usize = 9;
const PER_ROUND: u64 = 200_000;

fn pfn(pa: u64) -> Pfn {
    Pfn::new(pa >> 12).unwrap()
}

/// The median over rounds of the mean ns per translation.
fn translate_ns() -> f64 {
    let mut m = Machine::configured(64 << 20);
    let td = m.running_td();
    let pages: Vec<u64> = (1..=PAGES).map(|i| m.aug_accept(&td, i * 4096, PageSize::Size4K)).collect();
    let pamt = Pamt::new(m.tsm.tdmrs());
    let root = m.page();
    let mut iommu = Iommu::setup(m.tsm.platform_mut(), &pamt, pfn(root)).unwrap();
    let summary = m.tsm.td_summary(pfn(td.tdr)).unwrap();
    let key = DmarKey { rid: Rid::new(3, 0, 0).unwrap(), pasid: None };
    let req = DmarRequest {
        key,
        owner: pfn(td.tdr),
        sept_root: summary.sept_root,
        levels: SeptLevels::from_root_level(summary.root_level).unwrap(),
        domain: DomainId(1),
        cpu_epoch: summary.epoch,
    };
    let frames =
        Frames { context_table: Some(pfn(m.page())), pasid_dir: Some(pfn(m.page())), pasid_table: Some(pfn(m.page())) };
    iommu.install(m.tsm.platform_mut(), &pamt, &req, &frames).unwrap();
    iommu.accept(m.tsm.platform_mut(), pfn(td.tdr), key).unwrap();

    let mem = m.tsm.platform();
    let iova = |i: u64| (i % PAGES + 1) * 4096 + (i * 8) % 4096;
    // Warm-up pass, checking every answer once.
    for i in 0..PAGES * 4 {
        let t = iommu.translate(mem, key.rid, None, iova(i), i % 2 == 0).unwrap();
        assert_eq!(t.hpa.raw(), pages[(i % PAGES) as usize] + (i * 8) % 4096);
    }
    let mut rounds: Vec<f64> = (0..ROUNDS)
        .map(|_| {
            let t = Instant::now();
            for i in 0..PER_ROUND {
                let r = iommu.translate(black_box(mem), black_box(key.rid), None, black_box(iova(i)), i % 2 == 0);
                black_box(r.is_ok());
            }
            t.elapsed().as_nanos() as f64 / PER_ROUND as f64
        })
        .collect();
    rounds.sort_by(f64::total_cmp);
    rounds[ROUNDS / 2]
}

/// Runs the IOMMU benchmark.
pub fn run(figs: &mut Figures) {
    figs.record("iommu_translate_ns", translate_ns(), "ns");
}
