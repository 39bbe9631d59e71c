//! The host agent's run in the host world: it reads what the TSM told it (the boot
//! information) and what the launcher asked for (the run configuration, over fw_cfg), chooses
//! its TDMR from its own memory and configures the TSM with TDH.SYS.CONFIG, probes its own
//! world (the exit floor, the SEAMCALL round trip, and the accesses the TSM must refuse), runs
//! the probe TD, then the mode: `boot` stops there, `connect` finds the NVMe function and runs
//! SPDM.CONNECT over its DOE mailbox, `assign`, `revoke` and `stop` the whole device assignment
//! to a TD (`assign`), `attack` the malicious host's table of cases (`attack`), `ovmf` Debian's
//! OVMF.fd as a TD (`ovmf`). Each phase prints one readable line on COM1; figures go
//! out as COM3 frames; the first failure is reported and the run ends with status 35.

use core::fmt;

use seamless_drivers::bootinfo::BootInfo;
use seamless_drivers::config::{Mode, RunConfig, CONFIG_FILE, GUEST_FILE};
use seamless_drivers::console::{figure, Ms};
use seamless_drivers::fw_cfg::{FwCfg, FwCfgError};
use seamless_drivers::memmap::Layout;
use seamless_drivers::phys::{self, Frames};
use seamless_drivers::say;
use seamless_drivers::tsc::Tsc;
use seamless_host::device::Nvme;
use seamless_host::mem::{sys_config, DoeLink, Host};
use seamless_host::{device, probe_td, Cpu};
use tsm::Regs;
use tsm_client::{HostMemory, Seamcall};

use crate::{arch, world_probe};

/// The agent's CPU in the host world: SEAMCALL the instruction, its pages, the TSC, and what it
/// knows of its machine.
#[derive(Debug)]
pub struct Agent {
    /// The host's pages.
    pub host: Host,
    /// What the TSM told it at entry.
    pub boot: BootInfo,
    /// Where its pages and its TDMR lie.
    pub layout: Layout,
    tsc: Tsc,
    tsm_ticks: u64,
}

impl Seamcall for Agent {
    fn seamcall(&mut self, regs: &mut Regs) {
        let t = self.tsc.now();
        arch::seamcall(regs);
        self.tsm_ticks += self.tsc.now().wrapping_sub(t);
    }
}

impl HostMemory for Agent {
    fn read(&mut self, pa: u64, buf: &mut [u8]) {
        self.host.read(pa, buf);
    }
    fn write(&mut self, pa: u64, data: &[u8]) {
        self.host.write(pa, data);
    }
    fn donate(&mut self) -> Option<u64> {
        self.host.donate()
    }
    fn scratch(&mut self) -> Option<u64> {
        self.host.scratch()
    }
    fn release(&mut self, pa: u64) {
        self.host.release(pa);
    }
    fn donate_2m(&mut self) -> Option<u64> {
        self.host.donate_2m()
    }
    fn donated(&self) -> (u64, u64) {
        self.host.donated()
    }
}

impl Cpu for Agent {
    fn tsc(&self) -> Tsc {
        self.tsc
    }

    fn tsm_ticks(&self) -> u64 {
        self.tsm_ticks
    }
}

/// Reports the failure of `what` and ends the run (status 35).
pub fn fail(what: &str, why: &dyn fmt::Display) -> ! {
    say!("seamless host: error: {what}: {why}");
    arch::exit(arch::ExitCode::Failure)
}

/// The run; never returns.
pub fn main(boot_info: u64) -> ! {
    arch::init();
    let mut page = [0u8; 4096];
    arch::read_boot_info(boot_info, &mut page);
    let info = BootInfo::read_from(&page).unwrap_or_else(|e| fail("boot information", &e));
    // Every Rust object of the agent lives in what the TSM loaded: the accessors refuse it.
    phys::claim_own_memory(info.loaded[0], info.loaded[1]);
    let tsc = Tsc::with_hz(info.tsc_hz);
    let (image_start, image_end) = arch::image_range();
    say!(
        "host: the agent runs in the host world: image {image_start:#x}..{image_end:#x}, in host RAM {:#x}..{:#x} with its page tables; TSC {} kHz from {}",
        info.loaded[0],
        info.loaded[1],
        tsc.hz() / 1000,
        tsc.source
    );
    let config = read_config();
    let map = info.memory_map();
    let layout = Layout::carve(&map, (info.loaded[0], info.loaded[1]), config.tdmr_max_mib << 20)
        .unwrap_or_else(|e| fail("memory layout", &e));
    say!(
        "layout: TSM {:#x}..{:#x} (reserved), host image {:#x}..{:#x}, host pages {:#x}..{:#x}, TDMR {:#x}..{:#x} ({} MiB, PAMT {} KiB at {:#x})",
        info.tsm[0],
        info.tsm[1],
        layout.image.0,
        layout.image.1,
        layout.host.0,
        layout.host.1,
        layout.tdmr.0,
        layout.tdmr.1,
        (layout.tdmr.1 - layout.tdmr.0) >> 20,
        (layout.pamt.1 - layout.pamt.0) >> 10,
        layout.pamt.0
    );
    let mut cpu = Agent { host: Host::new(Frames::new(&map), &layout), boot: info, layout, tsc, tsm_ticks: 0 };
    arch::phase_mark(Some("tsm_config"));
    sys_config(&mut cpu, &layout).unwrap_or_else(|e| fail("TSM configuration", &e));
    let ready = tsc.ticks_to_us(tsc.now().wrapping_sub(info.boot_tsc));
    say!(
        "tsm: configured over 1 TDMR of {} MiB; ready {} ms after PVH entry",
        (layout.tdmr.1 - layout.tdmr.0) >> 20,
        Ms(ready)
    );
    figure("boot_to_tsm_ready_ms", &Ms(ready), "ms");

    arch::phase_mark(Some("world_probe"));
    let floor_ns = world_probe::run(&mut cpu, &info, &layout).unwrap_or_else(|f| fail(f.what, &f.why));
    arch::phase_mark(Some("probe_td"));
    probe_td(&mut cpu, floor_ns);
    arch::phase_mark(None);

    match config.mode {
        Mode::Boot => {
            say!("seamless host: boot done");
            arch::exit(arch::ExitCode::Success)
        }
        Mode::Connect => connect(&mut cpu, &info, &config),
        Mode::Ovmf => crate::ovmf::run(&mut cpu, &info, &config),
        Mode::Assign | Mode::Revoke | Mode::Stop | Mode::Attack => {
            let nvme = open_nvme(&cpu, &info, &config);
            let mut buf = [0u8; GUEST_IMAGE_MAX];
            let image = read_guest_image(&mut buf);
            if config.mode == Mode::Attack {
                crate::attack::run(&mut cpu, &info, nvme, image)
            }
            crate::assign::run(&mut cpu, &config, info.boot_tsc, nvme, image, ready)
        }
        // The TSM serves these itself, before any host world exists.
        Mode::Fault | Mode::Overflow => fail("mode", &"fault and overflow are the TSM's own modes"),
    }
}

/// Bytes a guest image may have (the demo's is about 24 KiB; this bounds the agent's buffer, on
/// its stack).
const GUEST_IMAGE_MAX: usize = 128 * 1024;

/// The guest image from fw_cfg (`opt/seamless/guest`) into `buf`: the agent checks nothing
/// here, `td::build` parses it as hostile input and MRTD measures what was added.
fn read_guest_image(buf: &mut [u8]) -> &[u8] {
    let fw = FwCfg::new().unwrap_or_else(|e| fail(GUEST_FILE, &e));
    match fw.read_file(GUEST_FILE, buf) {
        Ok(n) => {
            say!("host: guest image {n} bytes from fw_cfg {GUEST_FILE}");
            &buf[..n]
        }
        Err(FwCfgError::NotFound) => fail(
            GUEST_FILE,
            &"no guest image in fw_cfg: the launcher passes -fw_cfg name=opt/seamless/guest,file=guest.img (firmware guest-image ELF FILE makes it)",
        ),
        Err(e) => fail(GUEST_FILE, &e),
    }
}

/// The NVMe function, found and opened (`seamless_host::device::open_nvme`).
pub fn open_nvme(cpu: &Agent, info: &BootInfo, config: &RunConfig) -> Nvme {
    let map = info.memory_map();
    let ecam = device::find_ecam(info.rsdp);
    let window = device::bar_window(&ecam, map.low_ram_end());
    device::open_nvme(&map, config, &cpu.tsc(), (ecam, window)).unwrap_or_else(|f| fail(f.what, &f.why))
}

/// The run configuration (`opt/seamless/config`; the defaults when absent).
fn read_config() -> RunConfig {
    let fw = FwCfg::new().unwrap_or_else(|e| fail("fw_cfg", &e));
    let mut buf = [0u8; 1024];
    match fw.read_file(CONFIG_FILE, &mut buf) {
        Ok(n) => RunConfig::parse(&buf[..n]).unwrap_or_else(|e| fail("run configuration", &e)),
        Err(FwCfgError::NotFound) => RunConfig::default(),
        Err(e) => fail(CONFIG_FILE, &e),
    }
}

/// What the host keeps in its vector registers while the probe TD runs.
const HOST_XMM: u64 = 0x4057_0000_0000_0000;
/// The secret the probe TD leaves in its vector registers (and every GPR) before a VMCALL.
const TD_SECRET: u64 = 0x5EC2_E700_0000_0000;

/// The probe TD in its TD world (`seamless_host::probe_td`), with its figures. Around it, the
/// host's vector registers: the TD must not find them at entry (it checks), and after its exits
/// the host must find its own again, none of the TD's.
fn probe_td(cpu: &mut Agent, floor_ns: u64) {
    arch::fpu_load(&arch::FpuArea::with_xmm(|i| HOST_XMM | i as u64));
    let td = probe_td::run(cpu).unwrap_or_else(|e| fail("probe TD", &e));
    let after = arch::fpu_save();
    for i in 0..16 {
        let x = after.xmm(i);
        if x & TD_SECRET == TD_SECRET {
            fail("probe TD", &format_args!("the TD's XMM{i} ({x:#x}) reached the host"));
        }
        if x != HOST_XMM | i as u64 {
            fail("probe TD", &format_args!("the host's XMM{i} changed while the TD ran ({x:#x})"));
        }
    }
    say!(
        "world: probe TD: entered at the reset vector in TDX's initial state; CPUID GenuineIntel/IntelTDX; {} #VEs with exact VE info (CPUID, HLT, I/O, MSR, a PENDING page); a page blocked and tracked while in use exited on its next touch; the shared half read through the host's table, which could not reach a private page; SEAMCALL in the TD #UD; the vector registers its own in both directions; R14/R15 carried both ways when the VMCALL exposed them; a spin with interrupts off preempted by the TSM's timer; no register it did not expose reached the host; the host's memory exited as an EPT violation; {} VP.ENTERs",
        td.ves,
        td.entries
    );
    figure("tdcall_roundtrip_ns", &td.tdcall_ns, "ns");
    let ratio = (td.tdcall_ns * 100).checked_div(floor_ns).unwrap_or(0);
    figure("tdcall_vs_floor", &format_args!("{}.{:02}", ratio / 100, ratio % 100), "x");
}

/// Mode `connect`: the NVMe function's PDEV and SPDM.CONNECT over its DOE mailbox.
fn connect(cpu: &mut Agent, info: &BootInfo, config: &RunConfig) -> ! {
    let map = info.memory_map();
    let ecam = device::find_ecam(info.rsdp);
    let window = device::bar_window(&ecam, map.low_ram_end());
    let mut nvme = device::open_nvme(&map, config, &cpu.tsc(), (ecam, window)).unwrap_or_else(|f| fail(f.what, &f.why));
    let tsc = cpu.tsc();
    arch::phase_mark(Some("spdm_connect"));
    device::spdm_connect(cpu, &mut DoeLink::new(&mut nvme.mailbox, tsc), nvme.bdf)
        .unwrap_or_else(|f| fail(f.what, &f.why));
    arch::phase_mark(None);
    say!("seamless host: connect done");
    arch::exit(arch::ExitCode::Success)
}
