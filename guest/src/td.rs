//! The guest's run: [`guest_main`] after the 32-bit start, the #VE handler ([`trap`]), and
//! [`Td`], the transport `tsm_client::guest` runs over inside a real TD: TDCALL the instruction,
//! memory through real loads and stores of the guest's own identity map.

use tsm::abi::guest::leaf;
use tsm::{Regs, TdExit};
use tsm_client::guest::{served, Guest, GuestError, Plan, DEMO_LAYOUT};
use tsm_client::nvme::{Access, Controller};

use crate::arch::{self, TrapFrame};
use crate::console::say;
use crate::tdcall::{tdvmcall, TdInfo, TdcallRegs, VP_VEINFO_GET};
use crate::ve::{self, Context, VeInfo};

/// Where the guest's shared page sits in its shared half (offset from the shared bit): the page
/// it names to the host in every VMCALL.
const SHARED_OFFSET: u64 = DEMO_LAYOUT.shared_offset;

/// The TD as `tsm_client::guest` sees it from inside.
#[derive(Debug)]
pub struct Td {
    /// The shared bit (GPAW - 1), from TDG.VP.INFO.
    shared_bit: u64,
    /// The plan, once read from MRCONFIGID.
    plan: Option<Plan>,
}

impl tsm_client::Tdcall for Td {
    /// A real TDCALL: it returns only once the vCPU runs again (a VMCALL the host served
    /// included), so there is never an exit to hand back. In the probe plan, a request the host
    /// answers with R11 = PROBE is made again after the probe ran (`probe::run`), with the
    /// secret in the unexposed registers after [`tsm_client::guest::probe::Probe::Secrets`].
    fn tdcall(&mut self, regs: &mut Regs) -> Option<TdExit> {
        let request = *regs;
        let mut r = TdcallRegs::from_regs(regs);
        loop {
            arch::tdcall(&mut r);
            let probe = self.plan == Some(Plan::Probe)
                && request.rax == leaf::VP_VMCALL
                && (r.rax, r.r10, r.r11) == (0, 0, tsm_client::vmcall::PROBE);
            if !probe {
                break;
            }
            let secret = crate::probe::run(self);
            r = TdcallRegs::from_regs(&request);
            if let Some(s) = secret {
                // RCX names R10..R13 and RBX, RBP, RSI, RDI (no GHCI call carries those, so the
                // TSM drops them from the mask): the secret in RDX, R8, R9, R14 and R15, which
                // GHCI's mask would carry, must not reach the host.
                let mask = TdExit::VMCALL_EXPOSED | (TdExit::VMCALL_MASK_ALLOWED & !TdExit::VMCALL_CARRIED);
                (r.rcx, r.rdx, r.r8, r.r9, r.r14, r.r15) = (mask, s, s, s, s, s);
            }
        }
        *regs = r.to_regs();
        None
    }
}

impl tsm_client::GuestMemory for Td {
    fn read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), GuestError> {
        arch::private_read(gpa, buf).ok_or(GuestError::NotMapped { gpa, state: 0xFF })
    }
    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), GuestError> {
        arch::private_write(gpa, data).ok_or(GuestError::NotMapped { gpa, state: 0xFF })
    }
    fn mmio_read_u32(&mut self, gpa: u64) -> Result<u32, GuestError> {
        arch::mmio_read_u32(gpa).ok_or(GuestError::NotMapped { gpa, state: 0xFF })
    }
    fn map_device(&mut self, gpa: u64, pages: u64) -> Result<(), GuestError> {
        arch::map_device(gpa, pages).ok_or(GuestError::MmioOutside { gpa, hpa: 0 })
    }
    fn shared_addr(&self) -> u64 {
        self.shared_bit | SHARED_OFFSET
    }
    fn shared_read(&mut self, offset: u64, buf: &mut [u8]) {
        if arch::shared_read(SHARED_OFFSET + offset, buf).is_none() {
            buf.fill(0);
        }
    }
    fn shared_write(&mut self, offset: u64, data: &[u8]) {
        let _ = arch::shared_write(SHARED_OFFSET + offset, data);
    }
}

/// QEMU's NVMe controller as the TD reaches it (`tsm_client::nvme`'s transport): BAR0 with
/// 32-bit loads and stores through the uncached pages it mapped after accepting them, which the
/// TSM backs only with MMIO_MAPPED leaves; the controller's memory the TD's own private pages by GPA (the device's DMA goes
/// through the IOMMU walking the S-EPT: IOVA = GPA); RDTSC for a clock.
#[derive(Debug)]
struct Nvme {
    bar: u64,
}

impl Controller for Nvme {
    fn read_reg(&mut self, off: u64) -> Result<u32, Access> {
        let gpa = self.bar + off;
        arch::mmio_read_u32(gpa).ok_or(Access(gpa))
    }
    fn write_reg(&mut self, off: u64, value: u32) -> Result<(), Access> {
        let gpa = self.bar + off;
        arch::mmio_write_u32(gpa, value).ok_or(Access(gpa))
    }
    fn read_mem(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), Access> {
        arch::private_read(addr, buf).ok_or(Access(addr))
    }
    fn write_mem(&mut self, addr: u64, data: &[u8]) -> Result<(), Access> {
        arch::private_write(addr, data).ok_or(Access(addr))
    }
    fn now(&mut self) -> u64 {
        arch::rdtsc()
    }
}

/// TDG.VP.INFO.
fn vp_info() -> Result<TdInfo, u64> {
    let mut r = TdcallRegs::from_regs(&Regs::call(leaf::VP_INFO, 0, 0, 0, 0));
    arch::tdcall(&mut r);
    if r.rax != 0 {
        return Err(r.rax);
    }
    Ok(TdInfo::decode(&r))
}

/// Stops the vCPU for good: TDVMCALL<HLT> with interrupts blocked, forever.
fn stop() -> ! {
    loop {
        let mut r = tdvmcall(crate::tdcall::tdvmcall::HLT, [1, 0, 0, 0]);
        arch::tdcall(&mut r);
    }
}

/// Reports a fatal condition and stops.
fn fatal(what: &str, why: &dyn core::fmt::Display) -> ! {
    say!("FATAL: {what}: {why}");
    stop()
}

/// The guest's run, from `start.S` in long mode on the guest's stack (through
/// `arch::guest_main`): `gpaw` is EBX[5:0] of the first entry, `vcpu` ESI.
pub fn main(gpaw: u32, vcpu: u32) -> ! {
    arch::init_idt();
    say!("seamless guest: long mode on its own page tables (entry GPAW {gpaw}, vCPU {vcpu})");
    let info = vp_info().unwrap_or_else(|s| fatal("TDG.VP.INFO", &format_args!("status {s:#018x}")));
    if u32::from(info.gpaw) != gpaw || info.vcpu_index != vcpu {
        fatal("TDG.VP.INFO", &"GPAW or vCPU index differ from the entry registers");
    }
    say!(
        "TDG.VP.INFO: GPAW {}, attributes {:#x}, vCPU {} of {} (max {}); shared bit {:#x}",
        info.gpaw,
        info.attributes,
        info.vcpu_index,
        info.vcpus,
        info.max_vcpus,
        info.shared_bit()
    );
    // Leaf 0: the TSM answers it as a TDX module presents it; a leaf it does not synthesise
    // would come back through #VE and TDVMCALL<CPUID>.
    let cpuid = x86::cpuid::CpuId::new();
    if let Some(v) = cpuid.get_vendor_info() {
        say!("CPUID vendor \"{}\"", v.as_str());
    }
    let mut td = Td { shared_bit: info.shared_bit(), plan: None };
    let l = DEMO_LAYOUT;
    let mut guest = Guest::new(l);
    if let Err(e) = guest.accept_memory(&mut td) {
        fatal("TDG.MEM.PAGE.ACCEPT", &e);
    }
    // Accepted pages are zero (TDX zeroes a page at ACCEPT): check it with real loads, and that
    // a real store lands.
    for i in 0..l.work_pages {
        let gpa = l.work + i * 4096;
        let mut word = [0xFFu8; 8];
        let ok = tsm_client::GuestMemory::read(&mut td, gpa, &mut word).is_ok() && word == [0; 8];
        let stored = tsm_client::GuestMemory::write(&mut td, gpa, &gpa.to_le_bytes()).is_ok();
        if !ok || !stored {
            fatal("accepted memory", &format_args!("page {gpa:#x} is not zero or not writable"));
        }
    }
    say!("accepted {} private pages at {:#x} with TDG.MEM.PAGE.ACCEPT; all read zero", l.work_pages, l.work);
    device(&mut td, &mut guest).unwrap_or_else(|e| fatal("device", &e));
    say!("done: halting with interrupts blocked (HLT, through #VE and TDVMCALL<HLT>)");
    loop {
        arch::hlt();
    }
}

/// The device flow, `tsm_client::guest`'s steps over real TDCALLs: the TDI the host names,
/// checked with TDG.TDI.RD and the report against the TSM's digest, MMIO and DMA accepted,
/// START authorised, the accepted MMIO mapped uncached, the registers read with real loads;
/// then what the TD's plan (its MRCONFIGID) says.
fn device(td: &mut Td, g: &mut Guest) -> Result<(), GuestError> {
    let plan = g.plan(td)?;
    say!("plan {plan:?} (MRCONFIGID, read from its own TDREPORT)");
    td.plan = Some(plan);
    if plan == Plan::Probe {
        // It leaves the last BAR page unaccepted: its host's last probe loads it.
        g.hold_back = 1;
    }
    g.bring_up(td)?;
    let f = g.findings;
    say!(
        "TDI {:#06x} CONFIG_LOCKED (generation {}): the host's report ({} bytes) matches the TSM's digest; {} MMIO pages and the DMA entry accepted, START authorised; RUN",
        g.function,
        f.generation,
        f.report_len,
        f.mmio_pages.saturating_sub(g.hold_back)
    );
    say!("NVMe CAP {:#018x} VS {:#010x}, read with loads through its MMIO_MAPPED leaves", f.cap, f.vs);
    let nvme = Nvme { bar: g.layout.bar_gpa };
    match plan {
        Plan::Assign => {
            g.use_disk(td, nvme, td.shared_bit)?;
            say!("drive read into private pages, stray DMA refused, differential cases done");
            served(g.request_nonce(td)?)?;
            served(g.attest(td)?)?;
            say!("report and its SNP-format export over the verifier's challenge handed to the host");
        }
        Plan::Revoke => {
            let r = g.revoke_under_dma(td, nvme)?;
            say!("after the revoke: TDI state {}; touching BAR0, which the TSM must refuse", r.state.get());
            // A real load of the revoked BAR: its leaves are blocked, so the TSM exits to the
            // host (an EPT violation) and this vCPU never runs past it.
            let _ = arch::mmio_read_u32(g.layout.bar_gpa);
            say!("FATAL: BAR0 read after the revoke");
        }
        Plan::Probe => {
            // Its host's probes come with the answers to its requests; the last of them never
            // returns. Until then it waits in one request more.
            say!("probe plan: the flow is up; waiting for the host's last probes");
            served(tsm_client::guest::vmcall(td, tsm_client::vmcall::GET_NONCE, 0, 0)?)?;
        }
    }
    Ok(())
}

/// Exceptions: #VE is served and resumed; an exception at a probe instruction resumes after it
/// (`arch::caught`); everything else is fatal.
pub fn trap(frame: &mut TrapFrame) {
    const VE: u64 = 20;
    if frame.vector != VE {
        if arch::caught(frame, arch::Caught::Exception(frame.vector)) {
            return;
        }
        say!("FATAL: exception {} (error {:#x}) at RIP {:#x}", frame.vector, frame.error, frame.rip);
        stop();
    }
    // TDG.VP.VEINFO.GET first: until it runs, a second #VE would be a #DF.
    let mut r = TdcallRegs::from_regs(&Regs::call(VP_VEINFO_GET, 0, 0, 0, 0));
    arch::tdcall(&mut r);
    if r.rax != 0 {
        fatal("TDG.VP.VEINFO.GET", &format_args!("status {:#018x}", r.rax));
    }
    let info = VeInfo::decode(&r);
    if arch::caught(frame, arch::Caught::Ve(info)) {
        return;
    }
    let ctx = Context { rax: frame.rax, rbx: frame.rbx, rcx: frame.rcx, rdx: frame.rdx, rflags: frame.rflags };
    let action = ve::decode(&info, &ctx).unwrap_or_else(|f| fatal("#VE", &f));
    let mut out = ve::request(&action, &ctx);
    arch::tdcall(&mut out);
    if let Err(e) = crate::tdcall::tdvmcall_result(&out) {
        fatal("#VE: TDVMCALL", &e);
    }
    let c = ve::complete(&action, &ctx, &out);
    (frame.rax, frame.rbx, frame.rcx, frame.rdx) = (c.rax, c.rbx, c.rcx, c.rdx);
    // A HLT with interrupts blocked returns only if the host resumes a vCPU it was told can
    // never wake: step over it all the same, as the instruction would on a wake-up.
    frame.rip += u64::from(info.length);
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    say!("FATAL: panic: {}", info.message());
    stop()
}
