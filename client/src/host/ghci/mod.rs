//! The host's side of GHCI (Intel's Guest-Hypervisor Communication Interface 1.5), what a TDX
//! VMM serves a TDVF TD (Debian's OVMF): the TDG.VP.VMCALLs with R10 = 0 and R11 the
//! sub-function, done on the real machine on the TD's behalf ([`Machine`]) or emulated where
//! the machine is the TSM's and the host's, never the TD's:
//!
//! | R11 | sub-function | served by |
//! |---|---|---|
//! | 10 | Instruction.CPUID | the machine's CPUID (the TSM answers most leaves itself; only the hypervisor range gets here) |
//! | 12 | Instruction.HLT | [`run`]: the vCPU waits in the host until its next interrupt |
//! | 30 | Instruction.IO | [`ports`]: COM1, PCI configuration, the PM timer, CMOS, fw_cfg; the rest absent |
//! | 31, 32 | Instruction.RDMSR/WRMSR | [`apic`]: the host's half of the x2APIC and its timer; other MSRs a small register file |
//! | 48 | #VE.RequestMMIO | [`mmio`]: ECAM, the I/O APIC; the rest absent |
//! | 0x10000 | GetTdVmCallInfo | every sub-function above is supported |
//! | 0x10001 | MapGPA | [`convert`]: the S-EPT through the TSM, the shared half in the host's table |
//! | 0x10002 | GetQuote | the buffer's status says the quoting service is unavailable |
//! | 0x10003 | ReportFatalError | the TD is torn down with its error code |
//! | 0x10004 | SetupEventNotifyInterrupt | the vector is recorded |
//!
//! No heap, no `unsafe`: the same code serves the TD from the host agent in its host world and
//! from the harness, each with its own [`Machine`].

pub mod apic;
pub mod convert;
#[cfg(test)]
mod fake;
pub mod fw_cfg;
pub mod mmio;
pub mod ports;
pub mod run;
pub mod vfn;

use tsm::Regs;

use crate::host::td::TdPages;
use crate::host::{HostError, HostMemory, Seamcall};
use apic::HostApic;
use convert::{Conversions, SharedTable};
use fw_cfg::FwCfgView;
use fw_cfg::{FwCfgViewError, TdFacts};
use mmio::MmioSpace;
use ports::{Io, Ports, PowerRequest};

/// TDG.VP.VMCALL sub-functions (R11) and statuses (R10), GHCI 1.5 §3.
pub mod leaf {
    /// Instruction.CPUID: R12 leaf, R13 sub-leaf; EAX..EDX back in R12..R15.
    pub const CPUID: u64 = 10;
    /// Instruction.HLT: R12 = 1 if the TD's interrupts are blocked.
    pub const HLT: u64 = 12;
    /// Instruction.IO: R12 size, R13 direction (1 write), R14 port, R15 value; a read's in R11.
    pub const IO: u64 = 30;
    /// Instruction.RDMSR: R12 the MSR; the value in R11.
    pub const RDMSR: u64 = 31;
    /// Instruction.WRMSR: R12 the MSR, R13 the value.
    pub const WRMSR: u64 = 32;
    /// #VE.RequestMMIO: R12 size, R13 direction, R14 the GPA (shared bit set), R15 the value; a
    /// read's in R11.
    pub const MMIO: u64 = 48;
    /// GetTdVmCallInfo: R12 = 0; R11..R14 the sub-functions beyond the base set.
    pub const GET_TD_VM_CALL_INFO: u64 = 0x10000;
    /// MapGPA: R12 the GPA (shared bit: to shared), R13 bytes.
    pub const MAP_GPA: u64 = 0x10001;
    /// GetQuote: R12 the shared GPA of the buffer, R13 its bytes.
    pub const GET_QUOTE: u64 = 0x10002;
    /// ReportFatalError: R12 the error code.
    pub const REPORT_FATAL_ERROR: u64 = 0x10003;
    /// SetupEventNotifyInterrupt: R12 the vector.
    pub const SETUP_EVENT_NOTIFY_INTERRUPT: u64 = 0x10004;

    /// R10 statuses.
    pub mod status {
        /// TDG.VP.VMCALL_SUCCESS.
        pub const SUCCESS: u64 = 0;
        /// TDG.VP.VMCALL_INVALID_OPERAND.
        pub const INVALID_OPERAND: u64 = 0x8000_0000_0000_0000;
        /// TDG.VP.VMCALL_ALIGN_ERROR.
        pub const ALIGN_ERROR: u64 = 0x8000_0000_0000_0002;
    }

    /// GetQuote buffer status: the quoting service is not available.
    pub const QUOTE_SERVICE_UNAVAILABLE: u64 = 0x8000_0000_0000_0001;
}

/// The machine the host serves the TD's requests on: what a VMM has of the real platform. The
/// firmware implements it today; the host binary will.
pub trait Machine {
    /// Reads `size` (1, 2, 4) bytes from I/O port `port`.
    fn io_read(&mut self, port: u16, size: u8) -> u32;
    /// Writes `size` bytes to I/O port `port`.
    fn io_write(&mut self, port: u16, size: u8, value: u32);
    /// Reads `size` bytes of PCI configuration register `reg` of function `bdf` (bus 15:8,
    /// device 7:3, function 2:0; ECAM or 0xCF8, the machine's choice).
    fn pci_config_read(&mut self, bdf: u16, reg: u16, size: u8) -> u32;
    /// Writes `size` bytes of PCI configuration register `reg` of function `bdf`.
    fn pci_config_write(&mut self, bdf: u16, reg: u16, size: u8, value: u32);
    /// Selects item `key` of the machine's fw_cfg.
    fn fw_cfg_select(&mut self, key: u16);
    /// Reads the next bytes of the selected fw_cfg item.
    fn fw_cfg_read(&mut self, buf: &mut [u8]);
    /// The machine's CPUID.
    fn cpuid(&self, leaf: u32, subleaf: u32) -> [u32; 4];
    /// Nanoseconds of a monotonic clock.
    fn now_ns(&self) -> u64;
    /// Waits until the clock reads `deadline_ns` (the host idles while its vCPU halts).
    fn wait_until(&mut self, deadline_ns: u64);
    /// An MMIO access of `size` bytes at private-side `gpa` that none of the host's emulated
    /// devices decodes: a device the machine passes through to the TD (its BAR where the TD
    /// placed it, [`vfn::VirtualFunction`]) answers, or `None` if nothing is there (the access
    /// then reads as absent). `value`: `None` for a read. The default passes nothing through.
    fn device_mmio(&mut self, gpa: u64, size: u8, value: Option<u64>) -> Option<u64> {
        let _ = (gpa, size, value);
        None
    }
}

/// The PCI functions the TD may see: configuration accesses to any other read as absent
/// (all ones) and are dropped. A VMM presents its own bus; the host here shows the TD the real
/// functions it needs and nothing with DMA. Registers that place the machine's own resources
/// (where ECAM decodes, SMRAM) read as they are but take no write from the TD: edk2 rewrites
/// PCIEXBAR with the value it already has, passing through 0 (ECAM off), which would take the
/// host's own configuration path away in the middle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciFilter {
    visible: &'static [u16],
    /// `(function, first register, end)`: writes overlapping these are dropped.
    read_only: &'static [(u16, u16, u16)],
    /// A device function the host passes to the TD (its configuration space is the machine's
    /// to present, [`vfn::VirtualFunction`]).
    assigned: Option<u16>,
}

/// Bus/device/function as the filter names it.
pub const fn bdf(bus: u8, device: u8, function: u8) -> u16 {
    (bus as u16) << 8 | (device as u16) << 3 | function as u16
}

impl PciFilter {
    /// q35's host bridge (00:00.0: PCIEXBAR, PAM, what edk2's PEI programs) and LPC bridge
    /// (00:1f.0: PMBASE and ACPI enable, so the PM timer runs): no function that does DMA.
    /// Of the host bridge, PCIEXBAR (0x60..0x67) and the SMRAM controls (0x9C..0x9F) are
    /// read-only to the TD.
    pub const Q35_PLATFORM: PciFilter = PciFilter {
        visible: &[bdf(0, 0, 0), bdf(0, 0x1F, 0)],
        read_only: &[(bdf(0, 0, 0), 0x60, 0x68), (bdf(0, 0, 0), 0x9C, 0xA0)],
        assigned: None,
    };

    /// This filter with device function `bdf` visible too: the function the host passes to the
    /// TD (a TDI it binds to it), whose configuration space the machine virtualises.
    pub const fn with_function(self, bdf: u16) -> PciFilter {
        PciFilter { assigned: Some(bdf), ..self }
    }

    /// True if the TD may reach function `bdf`.
    pub fn visible(&self, bdf: u16) -> bool {
        self.visible.contains(&bdf) || self.assigned == Some(bdf)
    }

    /// True if the TD may write `size` bytes at register `reg` of function `bdf`.
    pub fn writable(&self, bdf: u16, reg: u16, size: u8) -> bool {
        let end = reg.saturating_add(u16::from(size));
        self.visible(bdf) && !self.read_only.iter().any(|&(f, s, e)| f == bdf && reg < e && s < end)
    }
}

/// The TD as the host built it, for serving its calls.
#[derive(Clone, Copy, Debug)]
pub struct TdView<'a> {
    /// The TD.
    pub td: TdPages,
    /// The shared bit (1 << (GPAW - 1)).
    pub shared_bit: u64,
    /// Its RAM, `(start, length)` ascending.
    pub ram: &'a [(u64, u64)],
    /// The PCI functions it may see.
    pub pci: PciFilter,
}

/// Why the host stops serving the TD.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// The TD asked for its end through an I/O port (ACPI sleep, reset control).
    Power(PowerRequest),
    /// TDG.VP.VMCALL<ReportFatalError> with this code.
    FatalError(u64),
}

/// What serving one TDG.VP.VMCALL gave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Served {
    /// Enter the vCPU again with these registers as the answer (R10 status, R11.. values).
    Answer(Regs),
    /// TDVMCALL<HLT>: the vCPU waits for an interrupt (`blocked`: with its interrupts off, so
    /// nothing will come).
    Halt {
        /// R12: interrupts blocked.
        blocked: bool,
    },
    /// The TD's run ends.
    Stop(Stop),
}

/// TDVMCALLs by sub-function: the figures of where the host's work went.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VmcallCounts {
    /// Instruction.CPUID.
    pub cpuid: u64,
    /// Instruction.HLT.
    pub hlt: u64,
    /// Instruction.IO.
    pub io: u64,
    /// Instruction.RDMSR and WRMSR.
    pub msr: u64,
    /// #VE.RequestMMIO.
    pub mmio: u64,
    /// MapGPA.
    pub map_gpa: u64,
    /// Everything else (GetTdVmCallInfo, GetQuote, ReportFatalError, SetupEventNotifyInterrupt).
    pub other: u64,
    /// Requests refused (INVALID_OPERAND, ALIGN_ERROR).
    pub refused: u64,
}

/// MSRs the TD sends the host that are not the APIC's: edk2 writes IA32_FEATURE_CONTROL and
/// reads a few; the host keeps them as values (what the TD wrote; zero before). None reaches a
/// real MSR.
const MSR_FILE: usize = 16;

/// The host's GHCI server for one TDVF TD with one vCPU.
#[derive(Clone, Debug)]
pub struct Ghci {
    /// The I/O ports.
    pub ports: Ports,
    /// fw_cfg as the TD sees it.
    pub fw_cfg: FwCfgView,
    /// The host's half of the vCPU's x2APIC.
    pub apic: HostApic,
    /// Emulated MMIO.
    pub mmio: MmioSpace,
    /// The host's table for the shared half.
    pub shared: SharedTable,
    /// MapGPA's work.
    pub conversions: Conversions,
    /// TDVMCALLs by sub-function.
    pub counts: VmcallCounts,
    msrs: [(u32, u64); MSR_FILE],
    /// The vector of SetupEventNotifyInterrupt, if the TD set one.
    pub notify_vector: Option<u8>,
}

/// A 64-bit value cut to `size` bytes; `None` for a size GHCI does not allow.
fn sized(value: u64, size: u64) -> Option<u64> {
    match size {
        1 | 2 | 4 => Some(value & ((1 << (size * 8)) - 1)),
        8 => Some(value),
        _ => None,
    }
}

impl Ghci {
    /// The server for the TD `view` describes, on `machine`; `fw_cfg_dma`: offer the TD fw_cfg's
    /// DMA interface (served by the host) or hide it.
    ///
    /// # Errors
    /// [`FwCfgViewError`] if the machine's fw_cfg cannot be presented to the TD.
    pub fn new<M: Machine + ?Sized>(
        machine: &mut M,
        view: &TdView<'_>,
        fw_cfg_dma: bool,
    ) -> Result<Ghci, FwCfgViewError> {
        let fw_cfg = FwCfgView::new(machine, TdFacts { ram: view.ram, vcpus: 1, dma: fw_cfg_dma })?;
        let below_4g: u64 = view.ram.iter().map(|&(s, l)| s.saturating_add(l).min(1 << 32).saturating_sub(s)).sum();
        let above_4g: u64 = view.ram.iter().map(|&(s, l)| s.saturating_add(l).saturating_sub(s.max(1 << 32))).sum();
        Ok(Ghci {
            ports: Ports::new(below_4g, above_4g, 1),
            fw_cfg,
            apic: HostApic::new(0),
            mmio: MmioSpace::default(),
            shared: SharedTable::default(),
            conversions: Conversions::default(),
            counts: VmcallCounts::default(),
            msrs: [(0, 0); MSR_FILE],
            notify_vector: None,
        })
    }

    /// The TD's write to fw_cfg's DMA address port: at the low half, the transfer of the access
    /// structure at that GPA (shared memory: the TD passes it without the shared bit, as a
    /// device address), its status written back. A structure or buffer the host did not map
    /// gets no transfer (edk2 then waits on it forever: its bug, not the host's).
    fn fw_cfg_dma<H: Seamcall + HostMemory + ?Sized, M: Machine + ?Sized>(
        &mut self,
        h: &mut H,
        m: &mut M,
        view: &TdView<'_>,
        port: u16,
        value: u32,
    ) -> Result<(), HostError> {
        let Some(access) = self.fw_cfg.dma_address(port, value) else { return Ok(()) };
        let gpa = access & !view.shared_bit;
        let offset = gpa & 0xFFF;
        if !gpa.is_multiple_of(8) || offset > 0x1000 - fw_cfg::dma::ACCESS_BYTES as u64 {
            return Ok(());
        }
        let Some(frame) = self.shared.lookup(h, &view.td, (gpa & !0xFFF) | view.shared_bit)? else { return Ok(()) };
        let mut a = [0u8; fw_cfg::dma::ACCESS_BYTES];
        h.read(frame + offset, &mut a);
        let control = u32::from_be_bytes([a[0], a[1], a[2], a[3]]);
        let length = u32::from_be_bytes([a[4], a[5], a[6], a[7]]);
        let mut addr = [0u8; 8];
        addr.copy_from_slice(&a[8..]);
        let buffer = u64::from_be_bytes(addr) & !view.shared_bit;
        let (shared, td) = (&mut self.shared, &view.td);
        let mut out = |at: u64, bytes: &[u8]| -> bool {
            let mut done = 0usize;
            while done < bytes.len() {
                let Some(pa) = buffer.checked_add(at + done as u64) else { return false };
                let Ok(Some(f)) = shared.lookup(h, td, (pa & !0xFFF) | view.shared_bit) else { return false };
                let n = (bytes.len() - done).min((0x1000 - (pa & 0xFFF)) as usize);
                h.write(f + (pa & 0xFFF), &bytes[done..done + n]);
                done += n;
            }
            true
        };
        let status = self.fw_cfg.dma(m, control, length, &mut out);
        h.write(frame + offset, &status.to_be_bytes());
        Ok(())
    }

    /// Answers one device request (`r`: R10 the request, R12 the TD's shared page) as `policy`
    /// says. Phantom's GET_TDI leaves `[4: u64][function: u32]` in the shared page; a shared
    /// page the TD never converted, or any other request, is refused (INVALID_OPERAND).
    ///
    /// # Errors
    /// [`HostError`] of the shared table's walk.
    pub fn device_request<H: Seamcall + HostMemory + ?Sized>(
        &mut self,
        h: &mut H,
        view: &TdView<'_>,
        r: &Regs,
        policy: run::DeviceRequests,
    ) -> Result<Regs, HostError> {
        let refuse = Regs { r10: leaf::status::INVALID_OPERAND, ..Regs::default() };
        let run::DeviceRequests::Phantom(function) = policy else {
            self.counts.refused += 1;
            return Ok(refuse);
        };
        let page = r.r12;
        if r.r10 != crate::vmcall::GET_TDI || page & view.shared_bit == 0 || page & 0xFFF != 0 {
            self.counts.refused += 1;
            return Ok(refuse);
        }
        let Some(frame) = self.shared.lookup(h, &view.td, page)? else {
            self.counts.refused += 1;
            return Ok(refuse);
        };
        let id = function.to_le_bytes();
        let (len, data) = crate::shared::frame(&id);
        h.write(frame, &len.to_le_bytes());
        h.write(frame + 8, data);
        Ok(Regs::default())
    }

    /// Serves one GHCI TDG.VP.VMCALL (`r`: the exposed registers, R10 = 0, R11 the
    /// sub-function). The answer's R10 is the status, R11..R15 the values.
    ///
    /// # Errors
    /// [`HostError`] of a host call MapGPA made that failed: the TSM refused what it should
    /// have allowed, and the host stops.
    pub fn serve<H: Seamcall + HostMemory + ?Sized, M: Machine + ?Sized>(
        &mut self,
        h: &mut H,
        m: &mut M,
        view: &TdView<'_>,
        r: &Regs,
    ) -> Result<Served, HostError> {
        let mut a = Regs::default();
        let refuse = |counts: &mut VmcallCounts| {
            counts.refused += 1;
            Served::Answer(Regs { r10: leaf::status::INVALID_OPERAND, ..Regs::default() })
        };
        match r.r11 {
            leaf::CPUID => {
                self.counts.cpuid += 1;
                let [eax, ebx, ecx, edx] = m.cpuid(r.r12 as u32, r.r13 as u32);
                (a.r12, a.r13, a.r14, a.r15) = (eax.into(), ebx.into(), ecx.into(), edx.into());
            }
            leaf::HLT => {
                self.counts.hlt += 1;
                return Ok(Served::Halt { blocked: r.r12 & 1 != 0 });
            }
            leaf::IO => {
                self.counts.io += 1;
                let (size, write) = (r.r12, r.r13);
                let (Some(_), Ok(port), true) = (sized(0, size), u16::try_from(r.r14), write <= 1) else {
                    return Ok(refuse(&mut self.counts));
                };
                if size == 8 {
                    return Ok(refuse(&mut self.counts));
                }
                let value = (write == 1).then_some(r.r15 as u32);
                if let (Some(v), true) = (value, fw_cfg::PORT_DMA.contains(&port) && self.fw_cfg.dma_offered()) {
                    self.ports.counts.fw_cfg += 1;
                    self.fw_cfg_dma(h, m, view, port, v)?;
                    a.r10 = leaf::status::SUCCESS;
                    return Ok(Served::Answer(a));
                }
                match self.ports.access(m, &view.pci, &mut self.fw_cfg, port, size as u8, value) {
                    Io::Done(v) => a.r11 = u64::from(v),
                    Io::Power(p) => return Ok(Served::Stop(Stop::Power(p))),
                }
            }
            leaf::RDMSR | leaf::WRMSR => {
                self.counts.msr += 1;
                let Ok(index) = u32::try_from(r.r12) else { return Ok(refuse(&mut self.counts)) };
                let now = m.now_ns();
                if r.r11 == leaf::RDMSR {
                    a.r11 = match self.apic.read(index, now) {
                        Ok(v) => v,
                        Err(apic::ApicRefusal::NotHere) if !tsm::vapic::VirtualApic::owns(index) => {
                            self.msrs.iter().find(|(i, _)| *i == index).map_or(0, |&(_, v)| v)
                        }
                        Err(_) => return Ok(refuse(&mut self.counts)),
                    };
                } else {
                    match self.apic.write(index, r.r13, now) {
                        Ok(()) => {}
                        Err(apic::ApicRefusal::NotHere) if !tsm::vapic::VirtualApic::owns(index) => {
                            let slot = self.msrs.iter().position(|&(i, _)| i == index || i == 0);
                            match slot {
                                Some(s) => self.msrs[s] = (index, r.r13),
                                None => return Ok(refuse(&mut self.counts)),
                            }
                        }
                        Err(_) => return Ok(refuse(&mut self.counts)),
                    }
                }
            }
            leaf::MMIO => {
                self.counts.mmio += 1;
                let (size, write, gpa) = (r.r12, r.r13, r.r14);
                let shared = gpa & view.shared_bit != 0;
                let Some(value) = sized(r.r15, size).filter(|_| write <= 1 && shared) else {
                    return Ok(refuse(&mut self.counts));
                };
                let private = gpa & !view.shared_bit;
                if !private.is_multiple_of(size) {
                    self.counts.refused += 1;
                    return Ok(Served::Answer(Regs { r10: leaf::status::ALIGN_ERROR, ..Regs::default() }));
                }
                a.r11 = self.mmio.access(m, &view.pci, private, size as u8, (write == 1).then_some(value));
            }
            leaf::GET_TD_VM_CALL_INFO => {
                self.counts.other += 1;
                if r.r12 != 0 {
                    return Ok(refuse(&mut self.counts));
                }
            }
            leaf::MAP_GPA => {
                self.counts.map_gpa += 1;
                let (start, bytes) = (r.r12, r.r13);
                if !convert::valid_range(start, bytes, view.shared_bit) {
                    return Ok(refuse(&mut self.counts));
                }
                let gpa = start & !view.shared_bit;
                let to_shared = start & view.shared_bit != 0;
                if !to_shared
                    && !convert::backed(h, &view.td, &mut self.shared, view.shared_bit, (gpa, bytes), view.ram)?
                {
                    return Ok(refuse(&mut self.counts));
                }
                self.conversions.calls += 1;
                let (c, shared, sb) = (&mut self.conversions, &mut self.shared, view.shared_bit);
                if to_shared {
                    convert::to_shared(h, &view.td, shared, sb, (gpa, bytes), view.ram, c)?;
                } else {
                    convert::to_private(h, &view.td, shared, sb, (gpa, bytes), view.ram, c)?;
                }
            }
            leaf::GET_QUOTE => {
                self.counts.other += 1;
                let (gpa, bytes) = (r.r12, r.r13);
                let ok = gpa & view.shared_bit != 0
                    && bytes >= 16
                    && bytes
                        .checked_next_multiple_of(4096)
                        .is_some_and(|b| convert::valid_range(gpa, b, view.shared_bit));
                let frame = if ok { self.shared.lookup(h, &view.td, gpa)? } else { None };
                let Some(frame) = frame else { return Ok(refuse(&mut self.counts)) };
                // The buffer's header: version (u64), status (u64), ... No quoting service
                // runs beside this host: the status says so, and the TD's call succeeded.
                h.write(frame + 8, &leaf::QUOTE_SERVICE_UNAVAILABLE.to_le_bytes());
            }
            leaf::REPORT_FATAL_ERROR => {
                self.counts.other += 1;
                return Ok(Served::Stop(Stop::FatalError(r.r12)));
            }
            leaf::SETUP_EVENT_NOTIFY_INTERRUPT => {
                self.counts.other += 1;
                match u8::try_from(r.r12) {
                    Ok(v) if v >= tsm::vapic::VirtualApic::FIRST_VECTOR => self.notify_vector = Some(v),
                    _ => return Ok(refuse(&mut self.counts)),
                }
            }
            _ => return Ok(refuse(&mut self.counts)),
        }
        a.r10 = leaf::status::SUCCESS;
        Ok(Served::Answer(a))
    }
}
