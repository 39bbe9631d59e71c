//! TDs, as the host builds and destroys them: MNG.CREATE, ADDCX, MNG.INIT, VP.CREATE; the S-EPT
//! tables a leaf needs; the image's pages added and measured by the loading convention of
//! `attest::image` (so `attest measure` recomputes MRTD from the same file); MR.FINALIZE; and at
//! the end KICK, VPFLUSHDONE and RECLAIM of every page the TD owns, found with RDMD.

use attest::image::Image;
use tsm::abi::host::leaf;
use tsm::addr::PageSize;
use tsm::pamt::PageType;
use tsm::sept::SeptState;
use tsm::td::TdParams;
use tsm::{Regs, Status};

use super::{call, donate, raw, scratch, HostError, HostMemory, Seamcall};
use crate::PAGE;

/// A TD the host built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TdPages {
    /// TDR.
    pub tdr: u64,
    /// TDCS pages (0: the S-EPT root, 1: the measurement registers).
    pub tdcs: [u64; 2],
    /// S-EPT root level (3 for GPAW 48, 4 for GPAW 52).
    pub root_level: u8,
}

/// What [`build`] made of an image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BuiltTd {
    /// The TD.
    pub td: TdPages,
    /// vCPU 0's TDVPR.
    pub vcpu: u64,
    /// Image pages added with TDH.MEM.PAGE.ADD.
    pub added: u32,
    /// Of those, the pages measured with TDH.MR.EXTEND.
    pub measured: u32,
}

/// Bytes covered by one S-EPT entry at `level`.
pub const fn coverage(level: u8) -> u64 {
    1 << (12 + 9 * level as u32)
}

/// MNG.CREATE, two ADDCX and MNG.INIT with `params`.
///
/// # Errors
/// [`HostError`] of the first step that fails.
pub fn create<H: Seamcall + HostMemory + ?Sized>(h: &mut H, params: &TdParams) -> Result<TdPages, HostError> {
    let tdr = donate(h)?;
    call(h, "TDH.MNG.CREATE", Regs::call(leaf::MNG_CREATE, tdr, 0, 0, 0))?;
    let mut tdcs = [0; 2];
    for cx in &mut tdcs {
        *cx = donate(h)?;
        call(h, "TDH.MNG.ADDCX", Regs::call(leaf::MNG_ADDCX, *cx, tdr, 0, 0))?;
    }
    let page = scratch(h)?;
    h.write(page, &params.encode());
    call(h, "TDH.MNG.INIT", Regs::call(leaf::MNG_INIT, tdr, page, 0, 0))?;
    Ok(TdPages { tdr, tdcs, root_level: if params.gpaw == 52 { 4 } else { 3 } })
}

/// VP.CREATE; returns the TDVPR.
///
/// # Errors
/// [`HostError`].
pub fn vp_create<H: Seamcall + HostMemory + ?Sized>(h: &mut H, td: &TdPages) -> Result<u64, HostError> {
    let tdvpr = donate(h)?;
    call(h, "TDH.VP.CREATE", Regs::call(leaf::VP_CREATE, tdvpr, td.tdr, 0, 0))?;
    Ok(tdvpr)
}

/// Adds the S-EPT tables missing on the way to a leaf at `gpa` and `leaf_level`.
///
/// # Errors
/// [`HostError`].
pub fn map_tables<H: Seamcall + HostMemory + ?Sized>(
    h: &mut H,
    td: &TdPages,
    gpa: u64,
    leaf_level: u8,
) -> Result<(), HostError> {
    for level in (leaf_level + 1..=td.root_level).rev() {
        let aligned = gpa & !(coverage(level) - 1);
        let rd = raw(h, Regs::call(leaf::MEM_SEPT_RD, aligned | u64::from(level), td.tdr, 0, 0));
        if rd.status() == Status::SUCCESS && (rd.rdx >> 8) as u8 == SeptState::Free as u8 {
            let page = donate(h)?;
            call(h, "TDH.MEM.SEPT.ADD", Regs::call(leaf::MEM_SEPT_ADD, aligned | u64::from(level), td.tdr, page, 0))?;
        }
    }
    Ok(())
}

/// PAGE.ADD of `content` at `gpa` (tables added as needed), and MR.EXTEND of its 16 chunks when
/// `measure`; returns the page.
///
/// # Errors
/// [`HostError`].
pub fn add_page<H: Seamcall + HostMemory + ?Sized>(
    h: &mut H,
    td: &TdPages,
    gpa: u64,
    content: &[u8; PAGE as usize],
    measure: bool,
) -> Result<u64, HostError> {
    let src = scratch(h)?;
    add_page_from(h, td, gpa, content, measure, src)
}

/// [`add_page`] through the host's page `src` as the source (a loader adding many pages reuses
/// one).
///
/// # Errors
/// [`HostError`].
pub fn add_page_from<H: Seamcall + HostMemory + ?Sized>(
    h: &mut H,
    td: &TdPages,
    gpa: u64,
    content: &[u8; PAGE as usize],
    measure: bool,
    src: u64,
) -> Result<u64, HostError> {
    map_tables(h, td, gpa, 0)?;
    h.write(src, content);
    let page = donate(h)?;
    call(h, "TDH.MEM.PAGE.ADD", Regs::call(leaf::MEM_PAGE_ADD, gpa, td.tdr, page, src))?;
    if measure {
        for chunk in 0..16 {
            call(h, "TDH.MR.EXTEND", Regs::call(leaf::MR_EXTEND, gpa + chunk * 256, td.tdr, 0, 0))?;
        }
    }
    Ok(page)
}

/// MR.FINALIZE.
///
/// # Errors
/// [`HostError`].
pub fn finalize<H: Seamcall + ?Sized>(h: &mut H, td: &TdPages) -> Result<(), HostError> {
    call(h, "TDH.MR.FINALIZE", Regs::call(leaf::MR_FINALIZE, td.tdr, 0, 0, 0)).map(|_| ())
}

/// PAGE.AUG of `page` at `gpa` and `level` (tables added as needed), for the guest to accept.
///
/// # Errors
/// [`HostError`].
pub fn aug<H: Seamcall + HostMemory + ?Sized>(
    h: &mut H,
    td: &TdPages,
    gpa: u64,
    level: u8,
    page: u64,
) -> Result<(), HostError> {
    map_tables(h, td, gpa, level)?;
    call(h, "TDH.MEM.PAGE.AUG", Regs::call(leaf::MEM_PAGE_AUG, gpa | u64::from(level), td.tdr, page, 0)).map(|_| ())
}

/// VP.ENTER.
///
/// # Errors
/// [`HostError`].
pub fn enter<H: Seamcall + ?Sized>(h: &mut H, vcpu: u64) -> Result<(), HostError> {
    call(h, "TDH.VP.ENTER", Regs::call(leaf::VP_ENTER, vcpu, 0, 0, 0)).map(|_| ())
}

/// The whole build of a one-vCPU TD from `image`: create, every page of the image added (and
/// measured as its regions say), MR.FINALIZE, `work.1` pages from GPA `work.0` AUGed for the guest
/// to accept, and VP.ENTER.
///
/// # Errors
/// [`HostError`] of the first step that fails; [`HostError::Image`] if the image does not parse.
pub fn build<H: Seamcall + HostMemory + ?Sized>(
    h: &mut H,
    image: &[u8],
    params: &TdParams,
    work: (u64, u64),
) -> Result<BuiltTd, HostError> {
    let image = Image::parse(image).map_err(HostError::Image)?;
    let td = create(h, params)?;
    let vcpu = vp_create(h, &td)?;
    let (mut added, mut measured) = (0, 0);
    for region in image.regions() {
        for i in 0..region.pages {
            let (gpa, content) = region.page(i);
            add_page(h, &td, gpa, &content, region.measured)?;
            added += 1;
            measured += u32::from(region.measured);
        }
    }
    finalize(h, &td)?;
    for i in 0..work.1 {
        let page = donate(h)?;
        aug(h, &td, work.0 + i * PAGE, 0, page)?;
    }
    enter(h, vcpu)?;
    Ok(BuiltTd { td, vcpu, added, measured })
}

/// One donated page as TDH.PHYMEM.PAGE.RDMD reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageMetadata {
    /// The page.
    pub pa: u64,
    /// Its PAMT type.
    pub ty: u64,
    /// Its owner's TDR (0 when free).
    pub owner: u64,
    /// Its mapping level (for a guest page).
    pub level: u8,
}

/// RDMD of every page the host has donated, in address order, to `f`.
///
/// # Errors
/// [`HostError`] of the first RDMD that fails.
pub fn for_each_donated<H: Seamcall + HostMemory + ?Sized>(
    h: &mut H,
    f: &mut dyn FnMut(PageMetadata),
) -> Result<(), HostError> {
    let (start, end) = h.donated();
    let mut pa = start;
    while pa < end {
        let md = call(h, "TDH.PHYMEM.PAGE.RDMD", Regs::call(leaf::PHYMEM_PAGE_RDMD, pa, 0, 0, 0))?;
        f(PageMetadata { pa, ty: md.rcx, owner: md.rdx, level: md.r9 as u8 });
        pa += PAGE;
    }
    Ok(())
}

/// Kick every vCPU, VPFLUSHDONE, RECLAIM every page the TD owns (found with RDMD; a large guest
/// page once, at its head), then its TDR; the pages go back to the host.
///
/// # Errors
/// [`HostError`] of the first step that fails.
pub fn destroy<H: Seamcall + HostMemory + ?Sized>(h: &mut H, tdr: u64, vcpus: &[u64]) -> Result<(), HostError> {
    for &v in vcpus {
        call(h, "TDH.VP.KICK", Regs::call(leaf::VP_KICK, v, 0, 0, 0))?;
    }
    call(h, "TDH.MNG.VPFLUSHDONE", Regs::call(leaf::MNG_VPFLUSHDONE, tdr, 0, 0, 0))?;
    let (start, end) = h.donated();
    let mut pa = start;
    while pa < end {
        let md = call(h, "TDH.PHYMEM.PAGE.RDMD", Regs::call(leaf::PHYMEM_PAGE_RDMD, pa, 0, 0, 0))?;
        let level = md.r9 as u8;
        let head = PageSize::from_level(level).is_some_and(|s| pa.is_multiple_of(s.bytes()));
        let tail = md.rcx == PageType::Regular as u64 && !head;
        if md.rcx != PageType::Free as u64 && md.rdx == tdr && pa != tdr && !tail {
            call(h, "TDH.PHYMEM.PAGE.RECLAIM", Regs::call(leaf::PHYMEM_PAGE_RECLAIM, pa, 0, 0, 0))?;
        }
        pa += PAGE;
    }
    call(h, "TDH.PHYMEM.PAGE.RECLAIM", Regs::call(leaf::PHYMEM_PAGE_RECLAIM, tdr, 0, 0, 0))?;
    Ok(())
}

/// What RDMD says of the donated pages: how many are free, how many still held, the first held.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Held {
    /// Pages free again.
    pub free: u64,
    /// Pages the TSM still holds.
    pub held: u64,
    /// The first of those.
    pub first: u64,
}

/// Counts the donated pages that are free and those still held.
///
/// # Errors
/// [`HostError`] of an RDMD that fails.
pub fn held<H: Seamcall + HostMemory + ?Sized>(h: &mut H) -> Result<Held, HostError> {
    let mut c = Held::default();
    for_each_donated(h, &mut |md| {
        if md.ty == PageType::Free as u64 {
            c.free += 1;
        } else {
            if c.held == 0 {
                c.first = md.pa;
            }
            c.held += 1;
        }
    })?;
    Ok(c)
}

/// Every page the host ever donated reads back free; returns how many that is.
///
/// # Errors
/// [`HostError::Leaked`].
pub fn check_all_free<H: Seamcall + HostMemory + ?Sized>(h: &mut H) -> Result<u64, HostError> {
    let c = held(h)?;
    if c.held != 0 {
        return Err(HostError::Leaked { page: c.first, count: c.held });
    }
    Ok(c.free)
}
