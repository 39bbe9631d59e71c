//! The I/O ports the TSM keeps from the host world, and what it does with an access to one.
//! Every other port is the host's (its IOPM bit is clear: the access reaches the device without
//! an exit), as a VMM drives its platform; these are the ones through which the host world
//! could reach memory outside its nested map, or the platform secret:
//!
//! | ports | device | why the TSM keeps them | OUT | IN |
//! |---|---|---|---|---|
//! | 0x510 | fw_cfg selector | selecting `opt/seamless/platform-secret` would let the host read the secret at 0x511 | passed on, unless it names the secret: then refused, logged, and the invalid item selected (0x511 then reads 0) | the data byte (QEMU's 8-bit read of 0x510 is a data read) |
//! | 0x514..0x51B | fw_cfg DMA address | a DMA request writes guest-physical memory by address, without the IOMMU: TSM memory | refused, logged | all ones |
//! | 0x00..0x1F, 0xC0..0xDF, 0x80..0x8F, 0x480..0x48F | the 8237 ISA DMA controllers and their page registers | ISA DMA moves memory by physical address without the IOMMU | refused, logged | all ones |
//! | 0xF4 | isa-debug-exit | the end of the run: the TSM says its last word first | the TSM ends the run with the host's code | all ones |
//! | 0xCF8..0xCFF | PCI configuration mechanism #1 | a write to the q35 host bridge's PCIEXBAR (00:00.0, 0x60..0x67) or SMRAM controls (0x9C..0x9F: SMRAM, ESMRAMC/TSEG, SMBASE), or to the ICH9 LPC bridge's RCBA (00:1f.0, 0xF0..0xF3), makes QEMU put device registers, or a hole, over RAM with priority over it: the TSM's own accesses would no longer reach its memory | a data write (0xCFC..0xCFF) that touches one of those registers refused, logged; every other access passed on (PAM, PMBASE and ACPI enable, which a TD's firmware programs through its host, included) | passed on |
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
/// Their registers that do, `(function, first, end)`: q35's PCIEXBAR and SMRAM controls
/// (SMRAM, ESMRAMC, SMBASE), ICH9's RCBA. What a TD's firmware writes through its host
/// (`tsm_client::host::ghci::PciFilter::Q35_PLATFORM` keeps the first two from the TD too).
pub const CHIPSET_LOCKED: [((u8, u8, u8), u16, u16); 3] =
    [((0, 0, 0), 0x60, 0x68), ((0, 0, 0), 0x9C, 0xA0), ((0, 31, 0), 0xF0, 0xF4)];

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
}

/// The ports the host world's IOPM intercepts: `(first, last, what)`.
pub const INTERCEPTED: [(u16, u16, Kept); 8] = [
    (0x0000, 0x001F, Kept::IsaDma),
    (0x0080, 0x008F, Kept::IsaDma),
    (0x00C0, 0x00DF, Kept::IsaDma),
    (DEBUG_EXIT, DEBUG_EXIT, Kept::DebugExit),
    (0x0480, 0x048F, Kept::IsaDma),
    (FW_CFG_SELECTOR, FW_CFG_SELECTOR, Kept::FwCfgSelector),
    (0x0514, 0x051B, Kept::FwCfgDma),
    (PCI_CONFIG_ADDRESS, 0x0CFF, Kept::PciConfig),
];

/// The kept port `port` is, if any.
pub fn kept(port: u16) -> Option<Kept> {
    INTERCEPTED.iter().find(|&&(first, last, _)| (first..=last).contains(&port)).map(|&(_, _, k)| k)
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

/// What to do with `io`, given the platform secret's selector (if fw_cfg has one) and the
/// configuration address register's value (0xCF8, read by the caller for a data write).
pub fn decide(io: &Io, secret: Option<u16>, config_address: u32) -> Decision {
    let Some(k) = kept(io.port) else { return Decision::Ignore };
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: u16 = 0x0021;

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
            assert_eq!(decide(&out(0x510, 2, u64::from(key)), Some(SECRET), 0), Decision::Refuse(Refusal::FwCfgSecret));
        }
        // The architecture table's item with the same number is another item.
        assert_eq!(
            decide(&out(0x510, 2, u64::from(SECRET | 0x8000)), Some(SECRET), 0),
            Decision::Select(SECRET | 0x8000)
        );
        assert_eq!(decide(&out(0x510, 2, 0x19), Some(SECRET), 0), Decision::Select(0x19));
        assert_eq!(decide(&out(0x510, 2, u64::from(SECRET)), None, 0), Decision::Select(SECRET));
    }

    #[test]
    fn decide_refuses_the_dma_interfaces_and_odd_selector_widths() {
        for port in 0x514..=0x51B {
            assert_eq!(
                decide(&out(port, 4, 0x1000), Some(SECRET), 0),
                Decision::Refuse(Refusal::FwCfgDma),
                "{port:#x}"
            );
            assert_eq!(decide(&inp(port, 4), Some(SECRET), 0), Decision::AllOnes);
        }
        for port in [0x00, 0x0B, 0x1F, 0x81, 0x8F, 0xC0, 0xD6, 0xDF, 0x481] {
            assert_eq!(decide(&out(port, 1, 0x44), None, 0), Decision::Refuse(Refusal::IsaDma), "{port:#x}");
        }
        assert_eq!(decide(&out(0x510, 1, 0x21), Some(SECRET), 0), Decision::Refuse(Refusal::FwCfgWidth));
        assert_eq!(decide(&out(0x510, 4, 0x19), Some(SECRET), 0), Decision::Refuse(Refusal::FwCfgWidth));
        let string = Io { string: true, ..out(0x510, 2, 0x19) };
        assert_eq!(decide(&string, Some(SECRET), 0), Decision::Refuse(Refusal::StringIo));
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
                assert_eq!(decide(&out(port, 1, 0xB1), None, address), Decision::Refuse(Refusal::ChipsetConfig));
                // Reading them is the host's.
                assert_eq!(decide(&inp(port, 1), None, address), Decision::PassOn);
            }
            let dword = config_address(f, first);
            assert_eq!(decide(&out(0xCFC, 4, 0xE000_0001), None, dword), Decision::Refuse(Refusal::ChipsetConfig));
            // A write just below that reaches into the register: refused too.
            if first & 3 == 0 && first >= 4 {
                let below = config_address(f, first - 4);
                assert_eq!(decide(&out(0xCFF, 2, 0), None, below), Decision::Refuse(Refusal::ChipsetConfig));
                assert_eq!(decide(&out(0xCFF, 1, 0), None, below), Decision::PassOn);
            }
        }
    }

    #[test]
    fn decide_passes_on_the_chipset_registers_a_td_s_firmware_programs() {
        let (mch, lpc) = ((0, 0, 0), (0, 31, 0));
        // PAM0..6, q35's extended TSEG query; ICH9's PMBASE, ACPI enable and PIRQ routing.
        for (f, reg, size) in
            [(mch, 0x90, 1), (mch, 0x96, 1), (mch, 0x50, 2), (lpc, 0x40, 4), (lpc, 0x44, 1), (lpc, 0x60, 4)]
        {
            let port = 0xCFC + (reg & 3);
            assert_eq!(
                decide(&out(port, size, 0x600), None, config_address(f, reg)),
                Decision::PassOn,
                "{f:?} {reg:#x}"
            );
        }
        // The neighbours of the locked ranges.
        assert_eq!(decide(&out(0xCFC, 4, 0), None, config_address(mch, 0x5C)), Decision::PassOn);
        assert_eq!(decide(&out(0xCFC, 4, 0), None, config_address(mch, 0x68)), Decision::PassOn);
        assert_eq!(decide(&out(0xCFC, 4, 0), None, config_address(lpc, 0xEC)), Decision::PassOn);
        // RCBA's offset on the host bridge is nothing special there.
        assert_eq!(decide(&out(0xCFC, 4, 0), None, config_address(mch, 0xF0)), Decision::PassOn);
    }

    #[test]
    fn decide_passes_on_every_other_configuration_access() {
        let nvme = 1u32 << 31 | 3 << 11 | 0x10;
        assert_eq!(decide(&out(0xCFC, 4, 0xC000_0000), None, nvme), Decision::PassOn);
        // The enable bit clear: no configuration cycle, nothing to protect.
        assert_eq!(decide(&out(0xCFC, 4, 0), None, 0x60), Decision::PassOn);
        assert_eq!(config_function(0x60), None);
        // The address register itself, and the reset control register at 0xCF9.
        assert_eq!(decide(&out(0xCF8, 4, u64::from(nvme)), None, 0), Decision::PassOn);
        assert_eq!(decide(&out(0xCF9, 1, 0x06), None, 0), Decision::PassOn);
        assert_eq!(decide(&inp(0xCF8, 4), None, 0), Decision::PassOn);
        // A write that starts in the address register but reaches the data window is a data
        // write.
        let mch = 1u32 << 31 | 0x60;
        assert_eq!(decide(&out(0xCFB, 2, 0), None, mch), Decision::Refuse(Refusal::ChipsetConfig));
        assert_eq!(decide(&out(0xCFA, 2, 0), None, mch), Decision::PassOn);
    }

    #[test]
    fn decide_happy_path_reads_data_ends_the_run_and_ignores_the_host_s_own_ports() {
        assert_eq!(decide(&inp(0x510, 1), Some(SECRET), 0), Decision::ReadData);
        assert_eq!(decide(&inp(0x510, 2), Some(SECRET), 0), Decision::AllOnes);
        assert_eq!(decide(&out(0xF4, 4, 0x10), None, 0), Decision::End(0x10));
        for port in [0x3F8, 0x2F8, 0x3E8, 0x511, 0x40, 0x61, 0x70, 0x3F6] {
            assert_eq!(kept(port), None, "{port:#x}");
            assert_eq!(decide(&out(port, 1, 0), None, 0), Decision::Ignore);
        }
    }
}
