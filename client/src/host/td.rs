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
use tsm::{Regs, Status, TdExit};

use super::{call, check, donate, raw, scratch, HostError, HostMemory, Seamcall};
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

/// GHCI's TDG.VP.VMCALL sub-functions (R10 = 0, R11 the VMX exit reason of the instruction
/// the TD's #VE handler stands in for), as far as the host serves them.
pub mod ghci {
    /// CPUID (R12 leaf, R13 sub-leaf; results in R12..R15).
    pub const CPUID: u64 = 10;
    /// HLT (R12: 1 if interrupts are blocked).
    pub const HLT: u64 = 12;
    /// Port I/O (R12 size, R13 direction, R14 port, R15 value).
    pub const IO: u64 = 30;
    /// RDMSR (R12 the MSR; the value in R11).
    pub const RDMSR: u64 = 31;
    /// WRMSR (R12 the MSR, R13 the value).
    pub const WRMSR: u64 = 32;
    /// TDG.VP.VMCALL_INVALID_OPERAND, the answer in R10 to a request the host refuses.
    pub const INVALID_OPERAND: u64 = 0x8000_0000_0000_0000;
}

/// How a TD's run ended in [`run`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ran {
    /// VP.ENTER returned at once: the vCPU does not run in a TD world (its image has no
    /// reset-vector page), and its code calls the guest ABI itself.
    NoWorld,
    /// The guest halted with interrupts blocked (GHCI TDVMCALL<HLT>, R12 = 1): it is done.
    Halted,
    /// The guest made a request of the demo TD's protocol (`crate::vmcall`, R10..R13): the
    /// caller serves it (`super::td_device`) and goes on with [`resume`] and its answer.
    Request([u64; 4]),
    /// An EPT violation: the guest touched a GPA no leaf grants. The host cannot fix it here;
    /// the caller decides (the vCPU stays at the access and retries it at the next entry).
    Violation(TdExit),
}

/// What [`run`] counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunStats {
    /// VP.ENTER calls.
    pub entries: u32,
    /// CONSOLE VMCALLs logged.
    pub console: u32,
    /// RDMSR/WRMSR requests refused.
    pub msrs: u32,
}

/// Runs vCPU `vcpu` as a VMM does: VP.ENTER, then per exit: a CONSOLE VMCALL goes to
/// `console` and the vCPU is entered again; RDMSR and WRMSR are answered with GHCI's
/// INVALID_OPERAND (the host offers no MSR); TDVMCALL<HLT> with interrupts blocked ends the
/// run, as do a request of the demo TD's protocol and an EPT violation, which go to the caller.
/// GHCI's CPUID and port I/O need a machine to act on, which this loop has not (the guest
/// binary needs neither), so they are refused by name.
///
/// # Errors
/// VP.ENTER's error ([`HostError::Call`]); [`HostError::TdExit`] for an exit the host cannot
/// serve (a triple fault, HLT with interrupts open, CPUID or I/O, an unknown VMCALL, or a
/// status that is no TD exit); [`HostError::ConsoleLength`].
pub fn run<H: Seamcall + ?Sized>(
    h: &mut H,
    vcpu: u64,
    console: &mut dyn FnMut(&[u8]),
    stats: &mut RunStats,
) -> Result<Ran, HostError> {
    resume(h, vcpu, [0; 4], console, stats)
}

/// [`run`], entering the vCPU with `answer` in R10..R13: the host's answer to the request
/// [`run`] or [`resume`] last returned ([`Ran::Request`]).
///
/// # Errors
/// As for [`run`].
pub fn resume<H: Seamcall + ?Sized>(
    h: &mut H,
    vcpu: u64,
    mut answer: [u64; 4],
    console: &mut dyn FnMut(&[u8]),
    stats: &mut RunStats,
) -> Result<Ran, HostError> {
    loop {
        let [r10, r11, r12, r13] = answer;
        stats.entries += 1;
        let r = raw(h, Regs { r10, r11, r12, r13, ..Regs::call(leaf::VP_ENTER, vcpu, 0, 0, 0) });
        if r.rax == Status::SUCCESS.0 {
            return Ok(Ran::NoWorld);
        }
        let refuse = |why| HostError::TdExit { reason: r.rax, r10: r.r10, r11: r.r11, why };
        let args = match TdExit::from_host_regs(&r) {
            Some(exit @ TdExit::Vmcall { .. }) => exit.args(),
            Some(exit @ TdExit::EptViolation { .. }) => return Ok(Ran::Violation(exit)),
            Some(TdExit::TripleFault) => return Err(refuse("triple fault")),
            Some(TdExit::ExternalInterrupt) => {
                // The TSM's preemption timer ended the time slice: nothing to serve.
                answer = [0; 4];
                continue;
            }
            None if r.status().is_error() => return check("TDH.VP.ENTER", r).map(|_| Ran::NoWorld),
            None => return Err(refuse("not a TD exit")),
        };
        answer = match args {
            [crate::vmcall::CONSOLE, a, b, c] => {
                let (bytes, n) = crate::console::unpack([a, b, c]).map_err(HostError::ConsoleLength)?;
                console(&bytes[..n]);
                stats.console += 1;
                [0; 4]
            }
            [0, ghci::HLT, 1, _] => return Ok(Ran::Halted),
            [0, ghci::HLT, _, _] => return Err(refuse("HLT with interrupts open: nothing would wake it")),
            [0, ghci::RDMSR | ghci::WRMSR, _, _] => {
                stats.msrs += 1;
                [ghci::INVALID_OPERAND, 0, 0, 0]
            }
            [0, ghci::CPUID | ghci::IO, _, _] => return Err(refuse("GHCI CPUID or I/O: no machine to serve them")),
            [request, ..] if crate::vmcall::row(request).is_some() => return Ok(Ran::Request(args)),
            _ => return Err(refuse("a VMCALL the host does not serve")),
        };
    }
}

/// The whole build of a one-vCPU TD from `image`: create, every page of the image added (and
/// measured as its regions say), MR.FINALIZE, `work.1` pages from GPA `work.0` AUGed for the guest
/// to accept. The vCPU has not run yet: [`run`] (or `super::td_device`) enters it.
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
