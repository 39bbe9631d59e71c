//! A machine for the GHCI server's unit tests: records every port and configuration access it
//! is asked for, answers from small tables, and has a fw_cfg with the items QEMU lists for the
//! seamless firmware.

extern crate std;

use std::vec::Vec;

use super::Machine;

/// What the server asked the machine for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// A port read.
    In(u16, u8),
    /// A port write.
    Out(u16, u8, u32),
    /// A configuration read.
    CfgRead(u16, u16, u8),
    /// A configuration write.
    CfgWrite(u16, u16, u8, u32),
}

/// The fake machine.
#[derive(Debug)]
pub struct Fake {
    pub log: Vec<Access>,
    pub items: Vec<(u16, Vec<u8>)>,
    selected: u16,
    offset: usize,
    pub reads: u64,
    pub now: u64,
    /// What a port read returns.
    pub port_value: u32,
}

fn entry(size: u32, select: u16, name: &str) -> Vec<u8> {
    let mut e = Vec::new();
    e.extend_from_slice(&size.to_be_bytes());
    e.extend_from_slice(&select.to_be_bytes());
    e.extend_from_slice(&[0, 0]);
    let mut n = [0u8; 56];
    n[..name.len()].copy_from_slice(name.as_bytes());
    e.extend_from_slice(&n);
    e
}

impl Fake {
    pub fn new() -> Fake {
        let files = [
            (0x20, "bootorder", b"".to_vec()),
            (0x21, "etc/acpi/tables", (0..300u32).map(|i| i as u8).collect()),
            (0x22, "etc/e820", [0xEEu8; 40].to_vec()),
            (0x23, "genroms/linuxboot_dma.bin", b"rom".to_vec()),
            (0x24, "opt/seamless/platform-secret", b"SECRET".to_vec()),
            (0x25, "opt/seamless/ovmf", b"OVMF".to_vec()),
        ];
        let mut dir = (files.len() as u32).to_be_bytes().to_vec();
        let mut items = Vec::from([
            (0x00, b"QEMU".to_vec()),
            (0x01, 3u32.to_le_bytes().to_vec()),
            (0x03, (1u64 << 30).to_le_bytes().to_vec()),
            (0x05, 4u16.to_le_bytes().to_vec()),
            (0x08, 0x3000u32.to_le_bytes().to_vec()),
            (0x04, 1u16.to_le_bytes().to_vec()),
        ]);
        for (key, name, data) in files {
            dir.extend(entry(data.len() as u32, key, name));
            items.push((key, data));
        }
        items.push((0x19, dir));
        Fake { log: Vec::new(), items, selected: 0, offset: 0, reads: 0, now: 0, port_value: 0x5A }
    }
}

impl Machine for Fake {
    fn io_read(&mut self, port: u16, size: u8) -> u32 {
        self.log.push(Access::In(port, size));
        self.port_value
    }
    fn io_write(&mut self, port: u16, size: u8, value: u32) {
        self.log.push(Access::Out(port, size, value));
    }
    fn pci_config_read(&mut self, bdf: u16, reg: u16, size: u8) -> u32 {
        self.log.push(Access::CfgRead(bdf, reg, size));
        0x1234_0000 | u32::from(reg)
    }
    fn pci_config_write(&mut self, bdf: u16, reg: u16, size: u8, value: u32) {
        self.log.push(Access::CfgWrite(bdf, reg, size, value));
    }
    fn fw_cfg_select(&mut self, key: u16) {
        (self.selected, self.offset) = (key, 0);
    }
    fn fw_cfg_read(&mut self, buf: &mut [u8]) {
        let data = self.items.iter().find(|(k, _)| *k == self.selected).map(|(_, d)| d.clone()).unwrap_or_default();
        for b in buf {
            *b = data.get(self.offset).copied().unwrap_or(0);
            self.offset += 1;
            self.reads += 1;
        }
    }
    fn cpuid(&self, leaf: u32, subleaf: u32) -> [u32; 4] {
        [leaf, subleaf, 0xC, 0xD]
    }
    fn now_ns(&self) -> u64 {
        self.now
    }
    fn wait_until(&mut self, deadline_ns: u64) {
        self.now = self.now.max(deadline_ns);
    }
}
