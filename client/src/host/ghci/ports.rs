//! The TD's I/O ports, as the host serves TDG.VP.VMCALL<Instruction.IO>: a small virtual
//! platform, default-deny. What a TDVF needs reaches the real machine; what would let the TD
//! touch the machine the TSM and the host run on is emulated or refused:
//!
//! | ports | what the TD gets |
//! |---|---|
//! | 0x3F8..0x3FF (COM1) | the real UART, byte accesses (wider ones are absent): the TD's console is the run's console; the host watches the bytes written (milestones) and can type into it ([`Console`]) |
//! | 0xCF8, 0xCFC..0xCFF | PCI configuration through the machine (accesses within the data dword), for the functions the TD may see ([`super::PciFilter`]); the others read as absent |
//! | 0x600..0x67F (ACPI PM, PMBASE 0x600) | the real PM timer at 0x608 (every edk2 delay reads it); PM1 control with SLP_EN ends the TD (S5); the rest a register file |
//! | 0xCF9 | reset control: RST_CPU ends the TD (a TD cannot be reset) |
//! | 0x70, 0x71 (CMOS) | the real RTC (0x00..0x0D, read-only); the memory size bytes from the TD's own RAM; the rest zero |
//! | 0x20, 0x21, 0xA0, 0xA1, 0x4D0, 0x4D1 (8259, ELCR) | a register file: edk2 masks every line and uses the local APIC |
//! | 0x40..0x43, 0x61 (8254, port B) | nothing (edk2 times with the PM timer) |
//! | 0x510, 0x511, 0x514..0x51B (fw_cfg) | the TD's view ([`super::fw_cfg`]) |
//! | everything else (COM2, which carries the TSM's log, COM3, the i8042, isa-debug-exit, ...) | absent: reads all ones, writes dropped, counted |

use super::fw_cfg::{self, FwCfgView};
use super::{Machine, PciFilter};

/// COM1's ports.
pub const COM1: u16 = 0x3F8;
/// The ACPI PM block (PMBASE, edk2's `PcdAcpiPmBaseAddress`).
pub const PM_BASE: u16 = 0x600;
/// Bytes of the PM block the TD gets.
const PM_BYTES: u16 = 0x80;
/// PM1a control (PMBASE + 4).
const PM1_CNT: u16 = PM_BASE + 4;
/// The PM timer (PMBASE + 8).
pub const PM_TIMER: u16 = PM_BASE + 8;
/// SLP_EN in PM1 control.
const SLP_EN: u32 = 1 << 13;
/// The reset control register.
const RESET_CONTROL: u16 = 0xCF9;
/// RST_CPU in the reset control register.
const RST_CPU: u32 = 1 << 2;
/// PCI configuration address and data.
const PCI_ADDRESS: u16 = 0xCF8;
const PCI_DATA: u16 = 0xCFC;
/// CMOS index and data.
const CMOS_INDEX: u16 = 0x70;
const CMOS_DATA: u16 = 0x71;
/// The last RTC register (0x00..0x0D: time, alarm, status A..D).
const RTC_LAST: u8 = 0x0D;

/// The end of the TD an I/O access asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PowerRequest {
    /// ACPI sleep (SLP_EN in PM1 control): the TD powered off.
    Shutdown,
    /// RST_CPU in the reset control register: the TD asked to be reset.
    Reset,
}

/// What an I/O access became.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Io {
    /// Served; for a read, the value.
    Done(u32),
    /// The TD asked for its end.
    Power(PowerRequest),
}

/// Accesses by kind: the figures of where the TD's I/O went.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortCounts {
    /// COM1.
    pub uart: u64,
    /// PCI configuration (0xCF8/0xCFC).
    pub pci: u64,
    /// PM timer reads.
    pub pm_timer: u64,
    /// The rest of the PM block, reset control.
    pub power: u64,
    /// CMOS / RTC.
    pub cmos: u64,
    /// 8259, ELCR, 8254, port B.
    pub legacy: u64,
    /// fw_cfg.
    pub fw_cfg: u64,
    /// Ports nothing answers.
    pub absent: u64,
    /// The first absent port the TD touched (0: none).
    pub first_absent: u16,
}

/// COM1 as the host sees it pass: a tail of what the TD wrote, and bytes the host types in.
#[derive(Clone, Copy, Debug)]
pub struct Console {
    /// LCR (for DLAB: with it set, 0x3F8/0x3F9 are the divisor).
    lcr: u8,
    tail: [u8; 32],
    /// Bytes the TD wrote so far.
    pub written: u64,
    input: [u8; 32],
    input_len: usize,
    input_pos: usize,
}

impl Console {
    const fn new() -> Console {
        Console { lcr: 0, tail: [0; 32], written: 0, input: [0; 32], input_len: 0, input_pos: 0 }
    }

    fn wrote(&mut self, b: u8) {
        self.tail.copy_within(1.., 0);
        self.tail[31] = b;
        self.written += 1;
    }

    /// The last bytes the TD wrote (up to 32): what it said last, for the report of a run
    /// that ended badly.
    pub fn tail(&self) -> &[u8] {
        let n = usize::try_from(self.written).unwrap_or(usize::MAX).min(self.tail.len());
        &self.tail[self.tail.len() - n..]
    }

    /// True if the last bytes the TD wrote are `s`.
    pub fn ends_with(&self, s: &[u8]) -> bool {
        s.len() <= self.tail.len() && self.tail.ends_with(s)
    }

    /// Types `s` (at most 32 bytes) into the TD's console: the UART reports data ready until the
    /// TD has read it all.
    pub fn type_in(&mut self, s: &[u8]) {
        let n = s.len().min(self.input.len());
        self.input[..n].copy_from_slice(&s[..n]);
        (self.input_len, self.input_pos) = (n, 0);
    }

    /// Bytes typed in and not read yet.
    pub fn pending_input(&self) -> usize {
        self.input_len - self.input_pos
    }
}

/// The TD's port space.
#[derive(Clone, Debug)]
pub struct Ports {
    pci_address: u32,
    cmos_index: u8,
    /// CMOS bytes the host writes itself: (register, value).
    cmos_memory: [(u8, u8); 10],
    pic: [u8; 4],
    pm: [u8; PM_BYTES as usize],
    /// COM1.
    pub console: Console,
    /// Accesses by kind.
    pub counts: PortCounts,
}

/// All ones of `size` bytes.
const fn ones(size: u8) -> u32 {
    if size >= 4 {
        u32::MAX
    } else {
        (1 << (size * 8)) - 1
    }
}

impl Ports {
    /// The ports of a TD with `ram_below_4g` bytes of RAM from 0 and `above_4g` above 4 GiB,
    /// `vcpus` vCPUs: the CMOS memory bytes say so, as QEMU's do for a machine.
    pub fn new(ram_below_4g: u64, above_4g: u64, vcpus: u8) -> Ports {
        let ext_kib = (ram_below_4g.min(64 << 20).saturating_sub(1 << 20) >> 10).min(0xFFFF) as u16;
        let above_16m = (ram_below_4g.saturating_sub(16 << 20) >> 16).min(0xFFFF) as u16;
        let high = (above_4g >> 16).min(0xFF_FFFF) as u32;
        let cmos_memory = [
            (0x15, 0x80), // base memory 640 KiB
            (0x16, 0x02),
            (0x30, ext_kib as u8),
            (0x31, (ext_kib >> 8) as u8),
            (0x34, above_16m as u8),
            (0x35, (above_16m >> 8) as u8),
            (0x5B, high as u8),
            (0x5C, (high >> 8) as u8),
            (0x5D, (high >> 16) as u8),
            (0x5F, vcpus.saturating_sub(1)),
        ];
        Ports {
            pci_address: 0,
            cmos_index: 0,
            cmos_memory,
            // Both 8259s masked, every line edge-triggered (ELCR 0).
            pic: [0xFF, 0xFF, 0, 0],
            pm: [0; PM_BYTES as usize],
            console: Console::new(),
            counts: PortCounts::default(),
        }
    }

    fn cmos_byte(&self, index: u8) -> u8 {
        self.cmos_memory.iter().find(|(r, _)| *r == index).map_or(0, |&(_, v)| v)
    }

    /// An access of `size` bytes to `port`: a read (`value` `None`) or a write.
    pub fn access<M: Machine + ?Sized>(
        &mut self,
        m: &mut M,
        pci: &PciFilter,
        fw: &mut FwCfgView,
        port: u16,
        size: u8,
        value: Option<u32>,
    ) -> Io {
        let done = Io::Done;
        match (port, value) {
            // The 16550's registers are bytes: a wider access is absent (it would reach ports
            // past the UART's on the real bus).
            (COM1..=0x3FF, _) if size == 1 => {
                self.counts.uart += 1;
                done(self.uart(m, port, size, value))
            }
            (PCI_ADDRESS, None) if size == 4 => {
                self.counts.pci += 1;
                done(self.pci_address)
            }
            (PCI_ADDRESS, Some(v)) if size == 4 => {
                self.counts.pci += 1;
                self.pci_address = v;
                done(0)
            }
            (RESET_CONTROL, Some(v)) if size == 1 => {
                self.counts.power += 1;
                if v & RST_CPU != 0 {
                    return Io::Power(PowerRequest::Reset);
                }
                done(0)
            }
            // Within the data dword only: the rest of a wider access would be other ports.
            (PCI_DATA..=0xCFF, _) if port - PCI_DATA + u16::from(size) <= 4 => {
                self.counts.pci += 1;
                done(self.pci_data(m, pci, port, size, value))
            }
            (PM_TIMER, None) => {
                self.counts.pm_timer += 1;
                done(m.io_read(PM_TIMER, 4) & ones(size))
            }
            (PM1_CNT, Some(v)) if v & SLP_EN != 0 => {
                self.counts.power += 1;
                Io::Power(PowerRequest::Shutdown)
            }
            (PM_BASE..=0x67F, _) => {
                self.counts.power += 1;
                done(self.register_file(port - PM_BASE, size, value))
            }
            (CMOS_INDEX, Some(v)) => {
                self.counts.cmos += 1;
                self.cmos_index = (v & 0x7F) as u8;
                done(0)
            }
            (CMOS_DATA, None) => {
                self.counts.cmos += 1;
                let i = self.cmos_index;
                if i <= RTC_LAST {
                    // The machine's clock, read-only: with NMIs left disabled (bit 7).
                    m.io_write(CMOS_INDEX, 1, u32::from(i) | 0x80);
                    done(m.io_read(CMOS_DATA, 1) & 0xFF)
                } else {
                    done(u32::from(self.cmos_byte(i)))
                }
            }
            (CMOS_DATA, Some(_)) => {
                // The TD cannot set the machine's clock nor its CMOS.
                self.counts.cmos += 1;
                done(0)
            }
            (0x20 | 0x21 | 0xA0 | 0xA1 | 0x4D0 | 0x4D1, _) => {
                self.counts.legacy += 1;
                let i = match port {
                    0x21 => 0,
                    0xA1 => 1,
                    0x4D0 => 2,
                    0x4D1 => 3,
                    // Command ports: IRR/ISR read as nothing pending, commands are taken.
                    _ => return done(0),
                };
                if let Some(v) = value {
                    self.pic[i] = v as u8;
                }
                done(u32::from(self.pic[i]))
            }
            (0x40..=0x43 | 0x61, _) => {
                self.counts.legacy += 1;
                done(0)
            }
            (fw_cfg::PORT_SELECTOR, Some(v)) => {
                self.counts.fw_cfg += 1;
                fw.select(v as u16);
                done(0)
            }
            (fw_cfg::PORT_DATA, None) => {
                self.counts.fw_cfg += 1;
                let mut v = 0u32;
                for i in 0..size.min(4) {
                    v |= u32::from(fw.read_byte(m)) << (8 * i);
                }
                done(v)
            }
            _ => {
                // Absent, as on a bus nothing decodes; the DMA ports are absent too, since the
                // ID item says there is no DMA interface.
                self.counts.absent += 1;
                if self.counts.first_absent == 0 {
                    self.counts.first_absent = port;
                }
                done(if value.is_some() { 0 } else { ones(size) })
            }
        }
    }

    fn uart<M: Machine + ?Sized>(&mut self, m: &mut M, port: u16, size: u8, value: Option<u32>) -> u32 {
        let dlab = self.console.lcr & 0x80 != 0;
        let c = &mut self.console;
        match (port - COM1, value) {
            (0, Some(v)) if !dlab => {
                c.wrote(v as u8);
                m.io_write(port, size, v);
                0
            }
            (3, Some(v)) => {
                c.lcr = v as u8;
                m.io_write(port, size, v);
                0
            }
            (0, None) if !dlab && c.input_pos < c.input_len => {
                let b = c.input[c.input_pos];
                c.input_pos += 1;
                u32::from(b)
            }
            // LSR: data ready while typed input is waiting.
            (5, None) if c.input_pos < c.input_len => m.io_read(port, size) | 1,
            (_, None) => m.io_read(port, size),
            (_, Some(v)) => {
                m.io_write(port, size, v);
                0
            }
        }
    }

    fn pci_data<M: Machine + ?Sized>(
        &mut self,
        m: &mut M,
        pci: &PciFilter,
        port: u16,
        size: u8,
        value: Option<u32>,
    ) -> u32 {
        let a = self.pci_address;
        let bdf = ((a >> 8) & 0xFFFF) as u16;
        let reg = (a & 0xFC) as u16 | (port - PCI_DATA);
        if a & (1 << 31) == 0 || !pci.visible(bdf) {
            return ones(size);
        }
        match value {
            None => m.pci_config_read(bdf, reg, size),
            Some(v) => {
                if pci.writable(bdf, reg, size) {
                    m.pci_config_write(bdf, reg, size, v);
                }
                0
            }
        }
    }

    fn register_file(&mut self, offset: u16, size: u8, value: Option<u32>) -> u32 {
        let at = usize::from(offset);
        let n = usize::from(size.min(4));
        let Some(bytes) = self.pm.get_mut(at..at + n) else { return ones(size) };
        if let Some(v) = value {
            bytes.copy_from_slice(&v.to_le_bytes()[..n]);
            return 0;
        }
        let mut b = [0u8; 4];
        b[..n].copy_from_slice(bytes);
        u32::from_le_bytes(b)
    }
}

#[cfg(test)]
mod tests {
    use super::super::fake::{Access, Fake};
    use super::super::fw_cfg::TdFacts;
    use super::*;

    const RAM: [(u64, u64); 1] = [(0, 256 << 20)];

    fn setup() -> (Fake, Ports, FwCfgView) {
        let mut m = Fake::new();
        let fw = FwCfgView::new(&mut m, TdFacts { ram: &RAM, vcpus: 1, dma: false }).unwrap();
        m.log.clear();
        (m, Ports::new(256 << 20, 0, 1), fw)
    }

    fn read(m: &mut Fake, p: &mut Ports, fw: &mut FwCfgView, port: u16, size: u8) -> u32 {
        match p.access(m, &PciFilter::Q35_PLATFORM, fw, port, size, None) {
            Io::Done(v) => v,
            other => panic!("{other:?}"),
        }
    }

    fn write(m: &mut Fake, p: &mut Ports, fw: &mut FwCfgView, port: u16, size: u8, v: u32) -> Io {
        p.access(m, &PciFilter::Q35_PLATFORM, fw, port, size, Some(v))
    }

    #[test]
    fn access_rejects_every_port_the_td_has_no_device_at() {
        let (mut m, mut p, mut fw) = setup();
        // COM2 carries the TSM's log, COM3 its artifacts; 0xF4 would end QEMU; the i8042
        // would reset the machine; the DMA controller, the fw_cfg DMA ports.
        for port in [0x2F8, 0x2FD, 0x3E8, 0xF4, 0x64, 0x60, 0x00, 0x514, 0x518, 0xCD8] {
            assert_eq!(read(&mut m, &mut p, &mut fw, port, 1), 0xFF, "{port:#x}");
            assert_eq!(read(&mut m, &mut p, &mut fw, port, 4), u32::MAX, "{port:#x}");
            assert_eq!(write(&mut m, &mut p, &mut fw, port, 1, 0xFE), Io::Done(0));
        }
        assert!(m.log.is_empty(), "none reached the machine: {:?}", m.log);
        assert_eq!((p.counts.absent, p.counts.first_absent), (30, 0x2F8));
    }

    #[test]
    fn access_rejects_accesses_wider_than_the_uart_register_or_the_pci_data_dword() {
        let (mut m, mut p, mut fw) = setup();
        write(&mut m, &mut p, &mut fw, 0xCF8, 4, 0x8000_F840);
        m.log.clear();
        for (port, size) in [(0x3F8, 2), (0x3F8, 4), (0x3FF, 4), (0xCFF, 2), (0xCFE, 4), (0xCFD, 4)] {
            assert_eq!(read(&mut m, &mut p, &mut fw, port, size), ones(size), "{port:#x}/{size}");
            assert_eq!(write(&mut m, &mut p, &mut fw, port, size, 0x41), Io::Done(0));
        }
        assert!(m.log.is_empty(), "none reached the machine: {:?}", m.log);
        assert_eq!((p.console.written, p.counts.absent), (0, 12));
    }

    #[test]
    fn access_rejects_pci_functions_the_td_may_not_see_and_writes_to_pciexbar() {
        let (mut m, mut p, mut fw) = setup();
        // 00:1f.2 (AHCI, which does DMA), then the enable bit clear.
        for address in [0x8000_FA00, 0x0000_F800] {
            write(&mut m, &mut p, &mut fw, 0xCF8, 4, address);
            assert_eq!(read(&mut m, &mut p, &mut fw, 0xCFC, 4), u32::MAX);
            write(&mut m, &mut p, &mut fw, 0xCFC, 4, 0);
        }
        // PCIEXBAR of the host bridge reads through but takes no write.
        write(&mut m, &mut p, &mut fw, 0xCF8, 4, 0x8000_0060);
        assert_eq!(read(&mut m, &mut p, &mut fw, 0xCFC, 4), 0x1234_0060);
        write(&mut m, &mut p, &mut fw, 0xCFC, 4, 0);
        assert_eq!(m.log, [Access::CfgRead(0, 0x60, 4)]);
    }

    #[test]
    fn access_rejects_cmos_writes_and_answers_memory_from_the_td() {
        let (mut m, mut p, mut fw) = setup();
        write(&mut m, &mut p, &mut fw, 0x70, 1, 0x34);
        write(&mut m, &mut p, &mut fw, 0x71, 1, 0x99);
        assert_eq!(read(&mut m, &mut p, &mut fw, 0x71, 1), 0x00, "(256 - 16) MiB in 64 KiB: 0x0F00");
        write(&mut m, &mut p, &mut fw, 0x70, 1, 0x35);
        assert_eq!(read(&mut m, &mut p, &mut fw, 0x71, 1), 0x0F);
        write(&mut m, &mut p, &mut fw, 0x70, 1, 0x5B);
        assert_eq!(read(&mut m, &mut p, &mut fw, 0x71, 1), 0, "no RAM above 4 GiB");
        assert!(m.log.is_empty(), "the machine's CMOS was not touched: {:?}", m.log);
        write(&mut m, &mut p, &mut fw, 0x70, 1, 0x80);
        assert_eq!(read(&mut m, &mut p, &mut fw, 0x71, 1), 0x5A, "seconds: the real RTC");
        assert_eq!(m.log, [Access::Out(0x70, 1, 0x80), Access::In(0x71, 1)]);
    }

    #[test]
    fn access_happy_path_reaches_the_uart_pci_and_pm_timer_and_powers_off() {
        let (mut m, mut p, mut fw) = setup();
        for b in b"Shell> " {
            write(&mut m, &mut p, &mut fw, 0x3F8, 1, u32::from(*b));
        }
        assert!(p.console.ends_with(b"Shell> "));
        assert_eq!(p.console.tail(), b"Shell> ", "the tail holds what was written, no more");
        assert_eq!(m.log.len(), 7, "every byte on the real UART");
        p.console.type_in(b"x\r");
        assert_eq!(read(&mut m, &mut p, &mut fw, 0x3FD, 1), 0x5B, "data ready while typed input waits");
        assert_eq!(read(&mut m, &mut p, &mut fw, 0x3F8, 1), u32::from(b'x'));
        assert_eq!(read(&mut m, &mut p, &mut fw, 0x3F8, 1), u32::from(b'\r'));
        assert_eq!(read(&mut m, &mut p, &mut fw, 0x3FD, 1), 0x5A, "read out");
        m.log.clear();
        write(&mut m, &mut p, &mut fw, 0xCF8, 4, 0x8000_F840);
        assert_eq!(read(&mut m, &mut p, &mut fw, 0xCFC, 4), 0x1234_0040, "LPC's PMBASE");
        assert_eq!(read(&mut m, &mut p, &mut fw, 0xCFE, 2), 0x1234_0042, "register 0x42, 2 bytes");
        assert_eq!(read(&mut m, &mut p, &mut fw, 0x608, 4), 0x5A, "the PM timer");
        assert_eq!(m.log, [Access::CfgRead(0xF8, 0x40, 4), Access::CfgRead(0xF8, 0x42, 2), Access::In(0x608, 4)]);
        assert_eq!(write(&mut m, &mut p, &mut fw, 0x604, 2, 0x2000), Io::Power(PowerRequest::Shutdown));
        assert_eq!(write(&mut m, &mut p, &mut fw, 0xCF9, 1, 0x2), Io::Done(0));
        assert_eq!(write(&mut m, &mut p, &mut fw, 0xCF9, 1, 0x6), Io::Power(PowerRequest::Reset));
        assert_eq!(read(&mut m, &mut p, &mut fw, 0x21, 1), 0xFF, "the 8259 starts masked");
        write(&mut m, &mut p, &mut fw, 0x21, 1, 0xFB);
        assert_eq!(read(&mut m, &mut p, &mut fw, 0x21, 1), 0xFB);
        fw_cfg_through_ports(&mut m, &mut p, &mut fw);
    }

    fn fw_cfg_through_ports(m: &mut Fake, p: &mut Ports, fw: &mut FwCfgView) {
        write(m, p, fw, 0x510, 2, 0x01);
        let id: [u32; 4] = core::array::from_fn(|_| read(m, p, fw, 0x511, 1));
        assert_eq!(id, [1, 0, 0, 0], "fw_cfg's ID without the DMA bit");
    }
}
