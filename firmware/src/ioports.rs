//! The I/O ports the TSM keeps from the host world, and what it does with an access to one.
//! Every other port is the host's (its IOPM bit is clear: the access reaches the device without
//! an exit), as a VMM drives its platform; these are the ones through which the host world
//! could reach memory outside its nested map, run code outside its world, or read the platform
//! secret:
//!
//! | ports | device | why the TSM keeps them | OUT | IN |
//! |---|---|---|---|---|
//! | 0x510 | fw_cfg selector | selecting `opt/seamless/platform-secret` would let the host read the secret at 0x511 | passed on, unless it names the secret: then refused, logged, and the invalid item selected (0x511 then reads 0) | the data byte (QEMU's 8-bit read of 0x510 is a data read) |
//! | 0x514..0x51B | fw_cfg DMA address | a DMA request writes guest-physical memory by address, without the IOMMU: TSM memory | refused, logged | all ones |
//! | 0x00..0x1F, 0xC0..0xDF, 0x80..0x8F, 0x480..0x48F | the 8237 ISA DMA controllers and their page registers | ISA DMA moves memory by physical address without the IOMMU | refused, logged | all ones |
//! | 0xF4 | isa-debug-exit | the end of the run: the TSM says its last word first | the TSM ends the run with the host's code | all ones |
//! | 0xCF8..0xCFF | PCI configuration mechanism #1 | a write to the q35 host bridge's PCIEXBAR (00:00.0, 0x60..0x67) or SMRAM controls (0x9C..0x9F: SMRAM, ESMRAMC/TSEG, SMBASE), or to the ICH9 LPC bridge's RCBA (00:1f.0, 0xF0..0xF3), makes QEMU put device registers, or a hole, over RAM with priority over it: the TSM's own accesses would no longer reach its memory; PAM (0x90..0x96) makes the BIOS's shadowed code, which an INIT runs, writable; PMBASE and ACPI enable (00:1f.0, 0x40..0x47) move the PM registers below | a data write (0xCFC..0xCFF) that touches one of those registers refused, logged; every other access passed on | passed on |
//! | 0x92 | port A | A20 off makes every access to an odd megabyte, the TSM's included, land in the even one below (the host's memory); bit 0 resets | refused, logged | passed on |
//! | 0x60, 0x64 | i8042 | its output port drives A20 and the reset line | refused, logged | passed on |
//! | 0xB2..0xB3 | APM control and status | a write raises an SMI | refused, logged | passed on |
//! | 0x20..0x21, 0xA0..0xA1 | the 8259s | the TSM keeps every line masked | refused, logged | passed on |
//! | 0x71 | CMOS data | the shutdown status (0x0F) sends the BIOS, after an INIT, to the host's code without a POST | refused, logged | passed on |
//! | PMBASE..+0x7F but the PM timer | ICH9's ACPI PM registers | S3 suspends with memory as it is and resumes in the BIOS; SMI enables | refused, logged | passed on |
//!
//! The same two functions' ECAM pages are read-only in the host's nested map (a page is the
//! finest grain the map has), so the host writes their other registers through 0xCF8/0xCFC,
//! where the TSM sees the register. Reads are the host's either way.
//!
//! 0x511 (the data byte) is not kept: once selection is filtered, reading it is harmless, and
//! intercepting it would make every byte of a guest image a world switch. String I/O
//! (INS/OUTS) on a kept port is refused whole. Pure: the decision is made here, the firmware's
//! host world carries it out (`world::host`).

/// fw_cfg's selector (16-bit writes select an item; QEMU's 8-bit read at this port is a data
/// read).
pub const FW_CFG_SELECTOR: u16 = 0x510;
/// The item QEMU treats as invalid (past every table): selecting it makes data reads return 0.
pub const FW_CFG_INVALID: u16 = 0x3FFF;
/// fw_cfg's selector bit for architecture-specific items (a different table from the files).
const FW_CFG_ARCH_LOCAL: u16 = 0x8000;
/// fw_cfg's selector bits that name the item (QEMU's `FW_CFG_ENTRY_MASK`).
const FW_CFG_ENTRY_MASK: u16 = 0x3FFF;
/// QEMU's `isa-debug-exit` (`iobase=0xf4`).
pub const DEBUG_EXIT: u16 = seamless_drivers::exit::DEBUG_EXIT_PORT;
/// PCI configuration mechanism #1: the address register (32-bit at 0xCF8; 0xCF9 alone is the
/// reset control register) and the data window.
pub const PCI_CONFIG_ADDRESS: u16 = 0xCF8;
const PCI_CONFIG_DATA: u16 = 0xCFC;
/// The chipset functions whose configuration moves memory: (bus, device, function).
pub const CHIPSET: [(u8, u8, u8); 2] = [(0, 0, 0), (0, 31, 0)];
/// Their registers that do, or that would let the host run code outside its world,
/// `(function, first, end)`: q35's PCIEXBAR, PAM (which makes the BIOS's shadowed code in
/// 0xC0000..0xFFFFF writable: the code a CPU INIT runs) and SMRAM controls (SMRAM, ESMRAMC,
/// SMBASE); ICH9's PMBASE and ACPI enable (where the ACPI PM registers the TSM keeps lie) and
/// RCBA. A TD's firmware writes some of them through its host and is refused without harm
/// (`tsm_client::host::ghci::PciFilter::Q35_PLATFORM` keeps PCIEXBAR and SMRAM from the TD
/// already).
pub const CHIPSET_LOCKED: [((u8, u8, u8), u16, u16); 5] = [
    ((0, 0, 0), 0x60, 0x68),
    ((0, 0, 0), 0x90, 0x97),
    ((0, 0, 0), 0x9C, 0xA0),
    ((0, 31, 0), 0x40, 0x48),
    ((0, 31, 0), 0xF0, 0xF4),
];

/// True if a `size`-byte configuration write at data port `port`, under configuration address
/// `address`, touches a register of [`CHIPSET_LOCKED`]. A write that starts below the data
/// window but reaches it names no register: refused for a chipset function whatever it is.
fn touches_locked(address: u32, port: u16, size: u8) -> bool {
    let Some(f) = config_function(address) else { return false };
    if !CHIPSET.contains(&f) {
        return false;
    }
    let Some(offset) = port.checked_sub(PCI_CONFIG_DATA) else { return true };
    let start = (address & 0xFC) as u16 + offset;
    let end = start + u16::from(size);
    CHIPSET_LOCKED.iter().any(|&(g, s, e)| g == f && start < e && s < end)
}

/// What a kept port is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kept {
    /// fw_cfg's selector.
    FwCfgSelector,
    /// fw_cfg's DMA address registers.
    FwCfgDma,
    /// An ISA DMA controller or page register.
    IsaDma,
    /// isa-debug-exit.
    DebugExit,
    /// PCI configuration mechanism #1.
    PciConfig,
    /// The 8259 interrupt controllers.
    Pic,
    /// The i8042 keyboard controller.
    I8042,
    /// Port A (0x92: the A20 gate and the fast reset).
    PortA,
    /// APM control and status (0xB2: a write raises an SMI).
    Apm,
    /// The CMOS data port.
    CmosData,
    /// The ACPI PM registers of the LPC bridge (at PMBASE), the PM timer excepted.
    AcpiPm,
}

/// The fixed ports the host world's IOPM intercepts: `(first, last, what)`; the ACPI PM
/// registers ([`Ports::pm_block`]) come on top, wherever the BIOS put them.
pub const INTERCEPTED: [(u16, u16, Kept); 15] = [
    (0x0000, 0x001F, Kept::IsaDma),
    (0x0020, 0x0021, Kept::Pic),
    (0x0060, 0x0060, Kept::I8042),
    (0x0064, 0x0064, Kept::I8042),
    (0x0071, 0x0071, Kept::CmosData),
    (0x0080, 0x008F, Kept::IsaDma),
    (0x0092, 0x0092, Kept::PortA),
    (0x00A0, 0x00A1, Kept::Pic),
    (0x00B2, 0x00B3, Kept::Apm),
    (0x00C0, 0x00DF, Kept::IsaDma),
    (DEBUG_EXIT, DEBUG_EXIT, Kept::DebugExit),
    (0x0480, 0x048F, Kept::IsaDma),
    (FW_CFG_SELECTOR, FW_CFG_SELECTOR, Kept::FwCfgSelector),
    (0x0514, 0x051B, Kept::FwCfgDma),
    (PCI_CONFIG_ADDRESS, 0x0CFF, Kept::PciConfig),
];

/// Bytes of ICH9's ACPI PM I/O block (PM1, the PM timer, GPE0, SMI_EN and SMI_STS, TCO).
pub const PM_BLOCK_BYTES: u16 = 0x80;
/// The PM timer's offset in the block (4 bytes, read-only): left to the host, which reads it
/// for every delay of a TD's firmware it serves.
pub const PM_TIMER: u16 = 0x08;

/// What the TSM keeps of the ports beyond [`INTERCEPTED`], and what it needs to decide on an
/// access.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ports {
    /// fw_cfg's selector of the platform secret, if fw_cfg has it.
    pub secret: Option<u16>,
    /// The ACPI PM block's base (ICH9 PMBASE, 128-byte aligned), if ACPI is enabled there.
    pub pm_block: Option<u16>,
}

impl Ports {
    /// Every intercepted range, `(first, last)`: [`INTERCEPTED`] and the PM block around the
    /// timer.
    pub fn ranges(&self) -> impl Iterator<Item = (u16, u16)> {
        let pm = self.pm_block.map(|b| {
            let last = b.saturating_add(PM_BLOCK_BYTES - 1);
            [(b, b + PM_TIMER - 1), (b + PM_TIMER + 4, last)]
        });
        INTERCEPTED.iter().map(|&(f, l, _)| (f, l)).chain(pm.into_iter().flatten())
    }

    /// The kept port `port` is, if any.
    pub fn kept(&self, port: u16) -> Option<Kept> {
        if let Some(k) = INTERCEPTED.iter().find(|&&(first, last, _)| (first..=last).contains(&port)) {
            return Some(k.2);
        }
        let b = self.pm_block?;
        let offset = port.checked_sub(b)?;
        (offset < PM_BLOCK_BYTES && !(PM_TIMER..PM_TIMER + 4).contains(&offset)).then_some(Kept::AcpiPm)
    }
}

/// One intercepted IN or OUT, from SVM's IOIO exit information (APM vol. 2 §15.10.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Io {
    /// The port.
    pub port: u16,
    /// IN (else OUT).
    pub input: bool,
    /// Bytes: 1, 2 or 4.
    pub size: u8,
    /// INS/OUTS.
    pub string: bool,
    /// For an OUT, the value (RAX's low `size` bytes).
    pub value: u64,
}

impl Io {
    /// Decodes EXITINFO1 (bit 0 IN, bit 2 string, bits 4..6 the size, bits 31:16 the port) with
    /// RAX.
    pub fn decode(info1: u64, rax: u64) -> Io {
        let size = if info1 & (1 << 4) != 0 {
            1
        } else if info1 & (1 << 5) != 0 {
            2
        } else {
            4
        };
        let io =
            Io { port: (info1 >> 16) as u16, input: info1 & 1 != 0, size, string: info1 & (1 << 2) != 0, value: 0 };
        Io { value: rax & io.mask(), ..io }
    }

    /// The bits of RAX the access moves.
    pub fn mask(&self) -> u64 {
        match self.size {
            1 => 0xFF,
            2 => 0xFFFF,
            _ => 0xFFFF_FFFF,
        }
    }
}

/// Why an access was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// fw_cfg's selector named the platform secret.
    FwCfgSecret,
    /// fw_cfg's selector written with a width QEMU does not select with (8-bit: the legacy
    /// data write; 32-bit).
    FwCfgWidth,
    /// fw_cfg's DMA interface.
    FwCfgDma,
    /// An ISA DMA controller.
    IsaDma,
    /// INS/OUTS on a kept port.
    StringIo,
    /// A configuration write to the host bridge or the LPC bridge.
    ChipsetConfig,
    /// The 8259s.
    Pic,
    /// The i8042.
    I8042,
    /// Port A.
    PortA,
    /// APM control.
    Apm,
    /// CMOS data.
    Cmos,
    /// The ACPI PM registers.
    AcpiPm,
}

impl Refusal {
    /// For the log.
    pub const fn name(self) -> &'static str {
        match self {
            Refusal::FwCfgSecret => "fw_cfg selector naming the platform secret",
            Refusal::FwCfgWidth => "fw_cfg selector written 8 or 32 bits wide",
            Refusal::FwCfgDma => "fw_cfg DMA interface",
            Refusal::IsaDma => "ISA DMA controller",
            Refusal::StringIo => "string I/O on a port the TSM keeps",
            Refusal::ChipsetConfig => "configuration write to a chipset register that moves memory",
            Refusal::Pic => "8259 interrupt controller (the TSM keeps every line masked)",
            Refusal::I8042 => "i8042 keyboard controller (its output port drives A20 and the reset line)",
            Refusal::PortA => "port A (A20 gate and fast reset)",
            Refusal::Apm => "APM control (an SMI)",
            Refusal::Cmos => "CMOS data (the BIOS's shutdown status and settings)",
            Refusal::AcpiPm => "ACPI PM registers (sleep states, SMI enables)",
        }
    }
}

/// What the TSM does with one access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Pass fw_cfg's selection of this item on to the device.
    Select(u16),
    /// Read fw_cfg's data byte for the host (IN).
    ReadData,
    /// Answer an IN with all ones (as an absent device does); nothing reaches the device.
    AllOnes,
    /// Refuse an OUT: nothing reaches the device (a refused selection selects
    /// [`FW_CFG_INVALID`]), and the host fault log records it.
    Refuse(Refusal),
    /// The host ends the run with this code.
    End(u32),
    /// Pass the access on to the device as it is (an IN's value goes back to the host).
    PassOn,
    /// Not a kept port (the IOPM would not have intercepted it): nothing to do.
    Ignore,
}

/// True if fw_cfg's selector value `key` names the item whose selector is `item`: the entry
/// bits equal, in the same (non-architecture) table; the write-channel bit (0x4000) selects
/// the same item.
pub fn names_item(key: u16, item: u16) -> bool {
    key & FW_CFG_ARCH_LOCAL == item & FW_CFG_ARCH_LOCAL && key & FW_CFG_ENTRY_MASK == item & FW_CFG_ENTRY_MASK
}

/// The function a configuration address (0xCF8's value) names, if its enable bit is set:
/// (bus, device, function).
pub fn config_function(address: u32) -> Option<(u8, u8, u8)> {
    (address & (1 << 31) != 0).then_some((
        (address >> 16) as u8,
        ((address >> 11) & 31) as u8,
        ((address >> 8) & 7) as u8,
    ))
}

/// What to do with `io`, given what the TSM keeps (`ports`) and the configuration address
/// register's value (0xCF8, read by the caller for a data write).
pub fn decide(io: &Io, ports: &Ports, config_address: u32) -> Decision {
    let Some(k) = ports.kept(io.port) else { return Decision::Ignore };
    let secret = ports.secret;
    if io.string {
        return if io.input { Decision::AllOnes } else { Decision::Refuse(Refusal::StringIo) };
    }
    match (k, io.input) {
        // Any write that reaches the data window, whatever port and width it starts at.
        (Kept::PciConfig, false) if u32::from(io.port) + u32::from(io.size) > u32::from(PCI_CONFIG_DATA) => {
            if touches_locked(config_address, io.port, io.size) {
                Decision::Refuse(Refusal::ChipsetConfig)
            } else {
                Decision::PassOn
            }
        }
        (Kept::PciConfig, _) => Decision::PassOn,
        // Reading these changes nothing the TSM relies on (the i8042's data byte and the
        // status bits are the host's to consume).
        (Kept::Pic | Kept::I8042 | Kept::PortA | Kept::Apm | Kept::CmosData | Kept::AcpiPm, true) => Decision::PassOn,
        (Kept::FwCfgSelector, true) if io.size == 1 => Decision::ReadData,
        (_, true) => Decision::AllOnes,
        (Kept::FwCfgSelector, false) if io.size != 2 => Decision::Refuse(Refusal::FwCfgWidth),
        (Kept::FwCfgSelector, false) => {
            let key = io.value as u16;
            if secret.is_some_and(|s| names_item(key, s)) {
                Decision::Refuse(Refusal::FwCfgSecret)
            } else {
                Decision::Select(key)
            }
        }
        (Kept::FwCfgDma, false) => Decision::Refuse(Refusal::FwCfgDma),
        (Kept::IsaDma, false) => Decision::Refuse(Refusal::IsaDma),
        (Kept::DebugExit, false) => Decision::End(io.value as u32),
        (Kept::Pic, false) => Decision::Refuse(Refusal::Pic),
        (Kept::I8042, false) => Decision::Refuse(Refusal::I8042),
        (Kept::PortA, false) => Decision::Refuse(Refusal::PortA),
        (Kept::Apm, false) => Decision::Refuse(Refusal::Apm),
        (Kept::CmosData, false) => Decision::Refuse(Refusal::Cmos),
        (Kept::AcpiPm, false) => Decision::Refuse(Refusal::AcpiPm),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: u16 = 0x0021;

    fn d(io: &Io, secret: Option<u16>, config_address: u32) -> Decision {
        decide(io, &Ports { secret, pm_block: None }, config_address)
    }

    fn kept(port: u16) -> Option<Kept> {
        Ports::default().kept(port)
    }

    fn out(port: u16, size: u8, value: u64) -> Io {
        Io { port, input: false, size, string: false, value }
    }

    fn inp(port: u16, size: u8) -> Io {
        Io { port, input: true, size, string: false, value: 0 }
    }

    #[test]
    fn decode_reads_svm_s_ioio_information() {
        // OUT DX, AX to 0x510: port 31:16, SZ16 (bit 5), A64, type OUT.
        let io = Io::decode(0x0510_0000 | 1 << 5 | 1 << 9, 0xFFFF_FFFF_0000_0021);
        assert_eq!(io, out(0x510, 2, 0x21));
        let io = Io::decode(0x0511_0000 | 1 << 4 | 1, 0x1234);
        assert_eq!((io.port, io.input, io.size, io.mask()), (0x511, true, 1, 0xFF));
        let io = Io::decode(0x0518_0000 | 1 << 6 | 1 << 2 | 1 << 3, 0);
        assert!(io.string && io.size == 4 && !io.input);
    }

    #[test]
    fn decide_refuses_selecting_the_secret_in_every_spelling() {
        for key in [SECRET, SECRET | 0x4000] {
            assert_eq!(d(&out(0x510, 2, u64::from(key)), Some(SECRET), 0), Decision::Refuse(Refusal::FwCfgSecret));
        }
        // The architecture table's item with the same number is another item.
        assert_eq!(d(&out(0x510, 2, u64::from(SECRET | 0x8000)), Some(SECRET), 0), Decision::Select(SECRET | 0x8000));
        assert_eq!(d(&out(0x510, 2, 0x19), Some(SECRET), 0), Decision::Select(0x19));
        assert_eq!(d(&out(0x510, 2, u64::from(SECRET)), None, 0), Decision::Select(SECRET));
    }

    #[test]
    fn decide_refuses_the_dma_interfaces_and_odd_selector_widths() {
        for port in 0x514..=0x51B {
            assert_eq!(d(&out(port, 4, 0x1000), Some(SECRET), 0), Decision::Refuse(Refusal::FwCfgDma), "{port:#x}");
            assert_eq!(d(&inp(port, 4), Some(SECRET), 0), Decision::AllOnes);
        }
        for port in [0x00, 0x0B, 0x1F, 0x81, 0x8F, 0xC0, 0xD6, 0xDF, 0x481] {
            assert_eq!(d(&out(port, 1, 0x44), None, 0), Decision::Refuse(Refusal::IsaDma), "{port:#x}");
        }
        assert_eq!(d(&out(0x510, 1, 0x21), Some(SECRET), 0), Decision::Refuse(Refusal::FwCfgWidth));
        assert_eq!(d(&out(0x510, 4, 0x19), Some(SECRET), 0), Decision::Refuse(Refusal::FwCfgWidth));
        let string = Io { string: true, ..out(0x510, 2, 0x19) };
        assert_eq!(d(&string, Some(SECRET), 0), Decision::Refuse(Refusal::StringIo));
    }

    fn config_address((bus, dev, func): (u8, u8, u8), reg: u16) -> u32 {
        1u32 << 31 | u32::from(bus) << 16 | u32::from(dev) << 11 | u32::from(func) << 8 | u32::from(reg & 0xFC)
    }

    #[test]
    fn decide_refuses_configuration_writes_to_the_chipset_registers_that_move_memory() {
        for (f, first, end) in CHIPSET_LOCKED {
            for reg in first..end {
                let address = config_address(f, reg);
                assert_eq!(config_function(address), Some(f));
                let port = 0xCFC + (reg & 3);
                assert_eq!(d(&out(port, 1, 0xB1), None, address), Decision::Refuse(Refusal::ChipsetConfig));
                // Reading them is the host's.
                assert_eq!(d(&inp(port, 1), None, address), Decision::PassOn);
            }
            let dword = config_address(f, first);
            assert_eq!(d(&out(0xCFC, 4, 0xE000_0001), None, dword), Decision::Refuse(Refusal::ChipsetConfig));
            // A write just below that reaches into the register: refused too.
            if first & 3 == 0 && first >= 4 {
                let below = config_address(f, first - 4);
                assert_eq!(d(&out(0xCFF, 2, 0), None, below), Decision::Refuse(Refusal::ChipsetConfig));
                assert_eq!(d(&out(0xCFF, 1, 0), None, below), Decision::PassOn);
            }
        }
    }

    #[test]
    fn decide_passes_on_the_chipset_s_other_registers() {
        let (mch, lpc) = ((0, 0, 0), (0, 31, 0));
        // q35's extended TSEG query and ICH9's PIRQ routing and GEN_PMCON.
        for (f, reg, size) in [(mch, 0x50, 2), (lpc, 0x60, 4), (lpc, 0x68, 4), (lpc, 0xA0, 2)] {
            let port = 0xCFC + (reg & 3);
            assert_eq!(d(&out(port, size, 0x600), None, config_address(f, reg)), Decision::PassOn, "{f:?} {reg:#x}");
        }
        // The neighbours of the locked ranges.
        for (f, reg) in [(mch, 0x5C), (mch, 0x68), (mch, 0x8C), (mch, 0xA0), (lpc, 0x3C), (lpc, 0x48), (lpc, 0xEC)] {
            assert_eq!(d(&out(0xCFC, 4, 0), None, config_address(f, reg)), Decision::PassOn, "{f:?} {reg:#x}");
        }
        // PAM6 ends at 0x96: a byte write at 0x97 is not PAM.
        assert_eq!(d(&out(0xCFF, 1, 0), None, config_address(mch, 0x94)), Decision::PassOn);
        // RCBA's offset on the host bridge is nothing special there.
        assert_eq!(d(&out(0xCFC, 4, 0), None, config_address(mch, 0xF0)), Decision::PassOn);
    }

    #[test]
    fn decide_refuses_writes_that_reach_a20_reset_smi_sleep_the_8259_and_cmos() {
        let ports = Ports { secret: None, pm_block: Some(0x600) };
        let cases: [(u16, u8, u64, Refusal); 12] = [
            (0x92, 1, 0x00, Refusal::PortA),
            (0x92, 1, 0x03, Refusal::PortA),
            (0x64, 1, 0xD1, Refusal::I8042),
            (0x60, 1, 0xDD, Refusal::I8042),
            (0xB2, 1, 0xB5, Refusal::Apm),
            (0xB3, 1, 0x00, Refusal::Apm),
            (0x21, 1, 0x00, Refusal::Pic),
            (0xA0, 1, 0x11, Refusal::Pic),
            (0x71, 1, 0x0A, Refusal::Cmos),
            // PM1 control with SLP_EN and S3, SMI_EN, PM1 enable.
            (0x604, 2, 0x2400, Refusal::AcpiPm),
            (0x630, 4, 0x1, Refusal::AcpiPm),
            (0x602, 2, 0x100, Refusal::AcpiPm),
        ];
        for (port, size, value, why) in cases {
            assert_eq!(decide(&out(port, size, value), &ports, 0), Decision::Refuse(why), "{port:#x}");
            // Reads are the host's.
            assert_eq!(decide(&inp(port, size), &ports, 0), Decision::PassOn, "{port:#x}");
        }
        // The PM timer is not kept (the host reads it directly), nor anything past the block.
        for port in [0x608, 0x60B, 0x680, 0x5FF] {
            assert_eq!(ports.kept(port), None, "{port:#x}");
        }
        assert_eq!(ports.kept(0x60C), Some(Kept::AcpiPm));
        // Without a PM block (ACPI not enabled at PMBASE) nothing there is kept.
        assert_eq!(Ports::default().kept(0x604), None);
    }

    #[test]
    fn ports_ranges_are_the_fixed_ones_and_the_pm_block_around_its_timer() {
        let ports = Ports { secret: None, pm_block: Some(0x600) };
        let ranges: Vec<(u16, u16)> = ports.ranges().collect();
        assert_eq!(ranges.len(), INTERCEPTED.len() + 2);
        assert_eq!(ranges[INTERCEPTED.len()..], [(0x600, 0x607), (0x60C, 0x67F)]);
        assert_eq!(Ports::default().ranges().count(), INTERCEPTED.len());
        for (first, last) in ranges {
            for port in first..=last {
                assert!(ports.kept(port).is_some(), "{port:#x}");
            }
        }
    }

    #[test]
    fn decide_passes_on_every_other_configuration_access() {
        let nvme = 1u32 << 31 | 3 << 11 | 0x10;
        assert_eq!(d(&out(0xCFC, 4, 0xC000_0000), None, nvme), Decision::PassOn);
        // The enable bit clear: no configuration cycle, nothing to protect.
        assert_eq!(d(&out(0xCFC, 4, 0), None, 0x60), Decision::PassOn);
        assert_eq!(config_function(0x60), None);
        // The address register itself, and the reset control register at 0xCF9.
        assert_eq!(d(&out(0xCF8, 4, u64::from(nvme)), None, 0), Decision::PassOn);
        assert_eq!(d(&out(0xCF9, 1, 0x06), None, 0), Decision::PassOn);
        assert_eq!(d(&inp(0xCF8, 4), None, 0), Decision::PassOn);
        // A write that starts in the address register but reaches the data window is a data
        // write.
        let mch = 1u32 << 31 | 0x60;
        assert_eq!(d(&out(0xCFB, 2, 0), None, mch), Decision::Refuse(Refusal::ChipsetConfig));
        assert_eq!(d(&out(0xCFA, 2, 0), None, mch), Decision::PassOn);
    }

    #[test]
    fn decide_happy_path_reads_data_ends_the_run_and_ignores_the_host_s_own_ports() {
        assert_eq!(d(&inp(0x510, 1), Some(SECRET), 0), Decision::ReadData);
        assert_eq!(d(&inp(0x510, 2), Some(SECRET), 0), Decision::AllOnes);
        assert_eq!(d(&out(0xF4, 4, 0x10), None, 0), Decision::End(0x10));
        for port in [0x3F8, 0x2F8, 0x3E8, 0x511, 0x40, 0x61, 0x70, 0x3F6, 0x608] {
            assert_eq!(kept(port), None, "{port:#x}");
            assert_eq!(d(&out(port, 1, 0), None, 0), Decision::Ignore);
        }
    }
}
