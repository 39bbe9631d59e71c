//! The TD's view of QEMU's fw_cfg (QEMU `docs/specs/fw_cfg.rst`), served by the host over the
//! traditional I/O interface (selector 0x510, data 0x511) from the machine's real fw_cfg.
//!
//! QEMU's fw_cfg describes the machine the TSM runs on, not the TD, so the host changes what
//! would be wrong or dangerous for the TD to see, and passes the rest through (ACPI tables,
//! SMBIOS, `bootorder`, ...):
//! - **the memory**: `etc/e820` is the TD's RAM from its TD HOB ([`TdFacts::ram`]), and the
//!   legacy RAM_SIZE item its size, so edk2's PEI (which sizes low memory from `etc/e820`)
//!   agrees with the HOB;
//! - **the CPUs**: NB_CPUS and MAX_CPUS are the TD's vCPUs;
//! - **DMA**: QEMU's device would read and write the addresses the TD gives as host physical
//!   addresses, so the TD's DMA interface is the host's own ([`FwCfgView::dma`]): the TD writes
//!   the GPA of an access structure to 0x514/0x518 (one TDVMCALL<IO> each), the structure and
//!   the buffer it names are in memory the TD shared (edk2's IoMmu bounce buffers, MapGPA'd),
//!   which the host reaches through its own shared table; the host does the transfer from the
//!   machine's fw_cfg and writes the status back. A view made without it hides the DMA bit of
//!   the ID item, and edk2 reads every item a byte per TDVMCALL<IO> instead (`etc/acpi/tables`
//!   alone is 128 KiB): the cost is measured. Writes (DMA's only) are taken and dropped: the
//!   machine's fw_cfg is not the TD's to change, and edk2 spins forever on an error status;
//! - **the host's own items**: the kernel, initrd and command line (which are the seamless
//!   firmware), QEMU's option ROMs for `-kernel` (`genroms/`), the legacy arch-local items, and
//!   every `opt/seamless/` file (the run's configuration, the platform secret, the TD's own
//!   firmware) are hidden: absent from the directory, and reading as zeros if selected anyway.

use super::Machine;

/// fw_cfg selector port.
pub const PORT_SELECTOR: u16 = 0x510;
/// fw_cfg data port (one byte per access).
pub const PORT_DATA: u16 = 0x511;
/// The DMA address ports (0x514, big-endian 64-bit, written in two halves up to 0x51B).
pub const PORT_DMA: core::ops::RangeInclusive<u16> = 0x514..=0x51B;
/// The DMA address register's high half (written first).
pub const PORT_DMA_HIGH: u16 = 0x514;
/// Its low half: writing it starts the transfer.
pub const PORT_DMA_LOW: u16 = 0x518;
/// Control bits of an access structure (QEMU `fw_cfg.rst`).
pub mod dma {
    /// Set by the device when the transfer failed.
    pub const ERROR: u32 = 1 << 0;
    /// Read `length` bytes of the selected item into `address`.
    pub const READ: u32 = 1 << 1;
    /// Skip `length` bytes of the selected item.
    pub const SKIP: u32 = 1 << 2;
    /// Select the item in bits 31:16 first.
    pub const SELECT: u32 = 1 << 3;
    /// Write `length` bytes from `address` to the selected item.
    pub const WRITE: u32 = 1 << 4;
    /// Bytes of an access structure: control (BE32), length (BE32), address (BE64).
    pub const ACCESS_BYTES: usize = 16;
}

const SIGNATURE: u16 = 0x00;
const ID: u16 = 0x01;
const RAM_SIZE: u16 = 0x03;
const NB_CPUS: u16 = 0x05;
const MAX_CPUS: u16 = 0x0F;
const FILE_DIR: u16 = 0x19;
/// The legacy items passed through, with their sizes (QEMU's `fw_cfg.c`): the signature, the
/// UUID, NOGRAPHIC, the machine ID, BOOT_MENU. Every other legacy item is the host's or
/// unknown (NUMA, which describes the machine, among them).
const LEGACY_REAL: [(u16, u32); 5] = [(SIGNATURE, 4), (0x02, 16), (0x04, 2), (0x06, 4), (0x0E, 2)];
/// The first file key.
const FILE_FIRST: u16 = 0x20;
/// Kernel, initrd, command line and setup items (the seamless firmware's, loaded by `-kernel`).
const KERNEL_ITEMS: [u16; 15] =
    [0x07, 0x08, 0x09, 0x0A, 0x0B, 0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x0C];
/// Arch-local items start here (ACPI, SMBIOS, IRQ0 override, legacy e820, HPET).
const ARCH_LOCAL: u16 = 0x8000;
/// Files of the directory the view keeps.
pub const MAX_FILES: usize = 64;
/// Bytes of a file name.
const NAME_BYTES: usize = 56;
/// Bytes of a directory entry: size, select, reserved, name.
const ENTRY_BYTES: u32 = 64;
/// Names that are the host's, not the TD's.
const HIDDEN_PREFIXES: [&[u8]; 2] = [b"opt/seamless/", b"genroms/"];
/// The file the view writes itself.
const E820_NAME: &[u8] = b"etc/e820";
/// e820 entries it can write (the TD's RAM ranges, merged).
pub const MAX_E820: usize = 8;
/// E820 type of usable RAM.
const E820_RAM: u32 = 1;

/// What the TD is, for the items the host writes itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TdFacts<'a> {
    /// The TD's RAM, `(start, length)` ascending (adjacent ranges are merged).
    pub ram: &'a [(u64, u64)],
    /// vCPUs.
    pub vcpus: u16,
    /// Offer the DMA interface (served by the host), or hide it.
    pub dma: bool,
}

/// One file as the TD's directory lists it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct File {
    size: u32,
    select: u16,
    name: [u8; NAME_BYTES],
}

/// What the selected item is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Item {
    /// Passed through from the real device: its key and size (bytes past it read as zeros
    /// without reaching the device, as the device answers them).
    Real(u16, u32),
    /// Written by the view: ID, RAM_SIZE, NB_CPUS, MAX_CPUS, the directory, `etc/e820`.
    Own(u16),
    /// The host's, or unknown: reads as zeros.
    Hidden,
}

/// The TD's fw_cfg.
#[derive(Clone, Debug)]
pub struct FwCfgView {
    files: [File; MAX_FILES],
    count: usize,
    e820: [u8; MAX_E820 * 20],
    e820_len: usize,
    e820_key: Option<u16>,
    ram_bytes: u64,
    vcpus: u16,
    selected: Item,
    offset: u32,
    /// Where the real device's data pointer is (item, offset), if the view knows.
    real_at: Option<(u16, u32)>,
    /// Bytes the TD read, by kind: passed through and written by the view.
    pub bytes_real: u64,
    /// Bytes the view wrote itself (or zeros of hidden items).
    pub bytes_own: u64,
    dma: bool,
    dma_high: u32,
    /// DMA transfers served.
    pub dma_transfers: u64,
    /// Bytes DMA writes asked to change, dropped.
    pub dma_dropped: u64,
}

/// Why the view cannot be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FwCfgViewError {
    /// The machine has no fw_cfg (its signature is not "QEMU").
    Absent,
    /// The TD's RAM needs more e820 entries than the view writes.
    TooMuchRam,
    /// The machine lists more files than the view keeps.
    TooManyFiles,
}

impl core::fmt::Display for FwCfgViewError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            FwCfgViewError::Absent => f.write_str("the machine has no fw_cfg"),
            FwCfgViewError::TooMuchRam => write!(f, "the TD's RAM needs more than {MAX_E820} e820 entries"),
            FwCfgViewError::TooManyFiles => write!(f, "the machine's fw_cfg lists more than {MAX_FILES} files"),
        }
    }
}

fn hidden(name: &[u8]) -> bool {
    HIDDEN_PREFIXES.iter().any(|p| name.starts_with(p))
}

fn name_of(f: &File) -> &[u8] {
    let len = f.name.iter().position(|&b| b == 0).unwrap_or(NAME_BYTES);
    &f.name[..len]
}

impl FwCfgView {
    /// The view of `machine`'s fw_cfg for the TD `td`: reads the real directory once.
    ///
    /// # Errors
    /// [`FwCfgViewError`].
    pub fn new<M: Machine + ?Sized>(machine: &mut M, td: TdFacts<'_>) -> Result<FwCfgView, FwCfgViewError> {
        let mut v = FwCfgView {
            files: [File { size: 0, select: 0, name: [0; NAME_BYTES] }; MAX_FILES],
            count: 0,
            e820: [0; MAX_E820 * 20],
            e820_len: 0,
            e820_key: None,
            ram_bytes: 0,
            vcpus: td.vcpus,
            selected: Item::Hidden,
            offset: 0,
            real_at: None,
            bytes_real: 0,
            bytes_own: 0,
            dma: td.dma,
            dma_high: 0,
            dma_transfers: 0,
            dma_dropped: 0,
        };
        v.write_e820(td.ram)?;
        machine.fw_cfg_select(SIGNATURE);
        let mut sig = [0u8; 4];
        machine.fw_cfg_read(&mut sig);
        if &sig != b"QEMU" {
            return Err(FwCfgViewError::Absent);
        }
        machine.fw_cfg_select(FILE_DIR);
        let mut count = [0u8; 4];
        machine.fw_cfg_read(&mut count);
        for _ in 0..u32::from_be_bytes(count) {
            let mut e = [0u8; ENTRY_BYTES as usize];
            machine.fw_cfg_read(&mut e);
            let mut f = File {
                size: u32::from_be_bytes([e[0], e[1], e[2], e[3]]),
                select: u16::from_be_bytes([e[4], e[5]]),
                name: [0; NAME_BYTES],
            };
            f.name.copy_from_slice(&e[8..]);
            if hidden(name_of(&f)) {
                continue;
            }
            if name_of(&f) == E820_NAME {
                v.e820_key = Some(f.select);
                f.size = v.e820_len as u32;
            }
            *v.files.get_mut(v.count).ok_or(FwCfgViewError::TooManyFiles)? = f;
            v.count += 1;
        }
        v.real_at = None;
        Ok(v)
    }

    fn write_e820(&mut self, ram: &[(u64, u64)]) -> Result<(), FwCfgViewError> {
        let mut entries: [(u64, u64); MAX_E820] = [(0, 0); MAX_E820];
        let mut n = 0;
        for &(start, len) in ram {
            self.ram_bytes += len;
            if n > 0 && entries[n - 1].0 + entries[n - 1].1 == start {
                entries[n - 1].1 += len;
                continue;
            }
            *entries.get_mut(n).ok_or(FwCfgViewError::TooMuchRam)? = (start, len);
            n += 1;
        }
        for (i, (start, len)) in entries[..n].iter().enumerate() {
            let e = &mut self.e820[i * 20..i * 20 + 20];
            e[..8].copy_from_slice(&start.to_le_bytes());
            e[8..16].copy_from_slice(&len.to_le_bytes());
            e[16..].copy_from_slice(&E820_RAM.to_le_bytes());
        }
        self.e820_len = n * 20;
        Ok(())
    }

    /// The host used the real device itself: the next read of a passed-through item selects it
    /// again and skips to the TD's offset.
    pub fn forget_position(&mut self) {
        self.real_at = None;
    }

    /// True if the TD is offered the DMA interface.
    pub fn dma_offered(&self) -> bool {
        self.dma
    }

    /// The TD wrote `value` (as the port saw it, the bytes of a big-endian half) to DMA address
    /// port `port`; returns the access structure's GPA once the low half is written.
    pub fn dma_address(&mut self, port: u16, value: u32) -> Option<u64> {
        match port {
            PORT_DMA_HIGH => {
                self.dma_high = value.swap_bytes();
                None
            }
            PORT_DMA_LOW => Some(u64::from(self.dma_high) << 32 | u64::from(value.swap_bytes())),
            _ => None,
        }
    }

    /// Runs the transfer of an access structure (`control`, `length`); `out(offset, bytes)`
    /// writes read bytes into the TD's buffer and says whether it could. Returns the control
    /// word to write back: 0 when done, [`dma::ERROR`] when the buffer was not there.
    pub fn dma<M: Machine + ?Sized>(
        &mut self,
        m: &mut M,
        control: u32,
        length: u32,
        out: &mut dyn FnMut(u64, &[u8]) -> bool,
    ) -> u32 {
        self.dma_transfers += 1;
        if control & dma::SELECT != 0 {
            self.select((control >> 16) as u16);
        }
        if control & dma::READ != 0 {
            let mut chunk = [0u8; 256];
            let mut done = 0u64;
            while done < u64::from(length) {
                let n = (u64::from(length) - done).min(chunk.len() as u64) as usize;
                for b in &mut chunk[..n] {
                    *b = self.read_byte(m);
                }
                if !out(done, &chunk[..n]) {
                    return dma::ERROR;
                }
                done += n as u64;
            }
        } else if control & (dma::SKIP | dma::WRITE) != 0 {
            // The pointer moves; the real device catches up at the next byte read from it
            // (at most the item's size), so no length costs the host more than that.
            if control & dma::SKIP == 0 {
                self.dma_dropped += u64::from(length);
            }
            self.offset = self.offset.saturating_add(length);
        }
        0
    }

    /// The files the TD's directory lists, by name.
    pub fn names(&self) -> impl Iterator<Item = &[u8]> {
        self.files[..self.count].iter().map(name_of)
    }

    /// The TD selects item `key` (a write to port 0x510).
    pub fn select(&mut self, key: u16) {
        self.offset = 0;
        self.selected = match key {
            ID | RAM_SIZE | NB_CPUS | MAX_CPUS | FILE_DIR => Item::Own(key),
            k if Some(k) == self.e820_key => Item::Own(k),
            k if KERNEL_ITEMS.contains(&k) || k >= ARCH_LOCAL => Item::Hidden,
            k if k >= FILE_FIRST => match self.files[..self.count].iter().find(|f| f.select == k) {
                Some(f) => Item::Real(k, f.size),
                None => Item::Hidden,
            },
            k => LEGACY_REAL.iter().find(|l| l.0 == k).map_or(Item::Hidden, |&(k, size)| Item::Real(k, size)),
        };
    }

    /// The next data byte of the selected item (a read of port 0x511).
    pub fn read_byte<M: Machine + ?Sized>(&mut self, machine: &mut M) -> u8 {
        let at = self.offset;
        self.offset = self.offset.saturating_add(1);
        match self.selected {
            Item::Real(key, size) if at < size => {
                self.bytes_real += 1;
                if self.real_at != Some((key, at)) {
                    // Put the real device's pointer where the TD's is.
                    machine.fw_cfg_select(key);
                    let mut skip = [0u8; 64];
                    let mut left = at as usize;
                    while left > 0 {
                        let n = left.min(skip.len());
                        machine.fw_cfg_read(&mut skip[..n]);
                        left -= n;
                    }
                }
                let mut b = [0u8; 1];
                machine.fw_cfg_read(&mut b);
                self.real_at = Some((key, at + 1));
                b[0]
            }
            Item::Own(key) => {
                self.bytes_own += 1;
                self.own_byte(key, at)
            }
            Item::Real(..) | Item::Hidden => {
                self.bytes_own += 1;
                0
            }
        }
    }

    fn own_byte(&self, key: u16, at: u32) -> u8 {
        let at = at as usize;
        let le = |v: u64, width: usize| if at < width { v.to_le_bytes()[at] } else { 0 };
        match key {
            // The traditional interface (bit 0), and DMA (bit 1) when the host serves it.
            ID => le(if self.dma { 3 } else { 1 }, 4),
            RAM_SIZE => le(self.ram_bytes, 8),
            NB_CPUS | MAX_CPUS => le(u64::from(self.vcpus), 2),
            FILE_DIR => self.dir_byte(at),
            _ => self.e820.get(..self.e820_len).and_then(|e| e.get(at)).copied().unwrap_or(0),
        }
    }

    fn dir_byte(&self, at: usize) -> u8 {
        if at < 4 {
            return (self.count as u32).to_be_bytes()[at];
        }
        let (i, field) = ((at - 4) / ENTRY_BYTES as usize, (at - 4) % ENTRY_BYTES as usize);
        let Some(f) = self.files[..self.count].get(i) else { return 0 };
        match field {
            0..=3 => f.size.to_be_bytes()[field],
            4..=5 => f.select.to_be_bytes()[field - 4],
            6..=7 => 0,
            n => f.name[n - 8],
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::super::fake::Fake;
    use super::*;

    const RAM: [(u64, u64); 3] = [(0, 0x80_0000), (0x80_0000, 0x2_0000), (0x82_0000, 0xF7E_0000)];

    fn view(q: &mut Fake) -> FwCfgView {
        FwCfgView::new(q, TdFacts { ram: &RAM, vcpus: 1, dma: false }).unwrap()
    }

    fn read(v: &mut FwCfgView, q: &mut Fake, key: u16, n: usize) -> Vec<u8> {
        v.select(key);
        (0..n).map(|_| v.read_byte(q)).collect()
    }

    #[test]
    fn new_rejects_a_machine_without_fw_cfg_and_ram_it_cannot_describe() {
        let mut q = Fake::new();
        q.items.retain(|(k, _)| *k != SIGNATURE);
        assert_eq!(
            FwCfgView::new(&mut q, TdFacts { ram: &RAM, vcpus: 1, dma: true }).unwrap_err(),
            FwCfgViewError::Absent
        );
        let scattered: Vec<(u64, u64)> = (0..9).map(|i| (i * 0x20_0000, 0x1000)).collect();
        let err = FwCfgView::new(&mut Fake::new(), TdFacts { ram: &scattered, vcpus: 1, dma: true }).unwrap_err();
        assert_eq!(err, FwCfgViewError::TooMuchRam);
    }

    #[test]
    fn the_hosts_items_are_hidden() {
        let mut q = Fake::new();
        let mut v = view(&mut q);
        let names: Vec<&[u8]> = v.names().collect();
        assert_eq!(names, [&b"bootorder"[..], b"etc/acpi/tables", b"etc/e820"]);
        assert_eq!(read(&mut v, &mut q, 0x24, 6), [0; 6], "the platform secret, selected anyway");
        assert_eq!(read(&mut v, &mut q, 0x25, 4), [0; 4], "the TD's own image");
        assert_eq!(read(&mut v, &mut q, 0x08, 4), [0; 4], "KERNEL_SIZE: the firmware is the host's");
        assert_eq!(read(&mut v, &mut q, 0x8003, 4), [0; 4], "arch-local items");
        assert_eq!(read(&mut v, &mut q, 0x99, 4), [0; 4], "a file key the directory does not list");
        assert_eq!(read(&mut v, &mut q, ID, 4), [1, 0, 0, 0], "no DMA interface");
    }

    #[test]
    fn bytes_past_an_items_end_and_unknown_legacy_items_never_reach_the_device() {
        let mut q = Fake::new();
        let mut v = view(&mut q);
        let before = q.reads;
        let acpi = read(&mut v, &mut q, 0x21, 310);
        assert!(acpi[300..].iter().all(|&b| b == 0), "zeros past the 300 bytes the directory lists");
        assert_eq!(q.reads - before, 300, "the device read for the item's bytes only");
        let before = q.reads;
        assert_eq!(read(&mut v, &mut q, 0x04, 4), [1, 0, 0, 0], "NOGRAPHIC");
        assert_eq!(q.reads - before, 2, "its two bytes passed through");
        let before = q.reads;
        for key in [0x0D, 0x1A, 0x1F] {
            assert_eq!(read(&mut v, &mut q, key, 8), [0; 8], "{key:#x}");
        }
        assert_eq!(q.reads, before, "NUMA and unknown legacy keys are not passed through");
    }

    #[test]
    fn view_happy_path_describes_the_td_and_passes_the_rest_through() {
        let mut q = Fake::new();
        let mut v = view(&mut q);
        assert_eq!(read(&mut v, &mut q, SIGNATURE, 4), b"QEMU");
        assert_eq!(read(&mut v, &mut q, NB_CPUS, 2), [1, 0]);
        assert_eq!(read(&mut v, &mut q, RAM_SIZE, 8), 0x1000_0000u64.to_le_bytes());
        let e820 = read(&mut v, &mut q, 0x22, 20);
        assert_eq!(e820[..8], 0u64.to_le_bytes());
        assert_eq!(e820[8..16], 0x1000_0000u64.to_le_bytes(), "the three HOB ranges merged");
        assert_eq!(e820[16..20], 1u32.to_le_bytes());
        let dir = read(&mut v, &mut q, FILE_DIR, 4 + 3 * 64);
        assert_eq!(dir[..4], 3u32.to_be_bytes());
        let e820_entry = &dir[4 + 2 * 64..4 + 3 * 64];
        assert_eq!(e820_entry[..4], 20u32.to_be_bytes(), "the size of the TD's e820");
        assert_eq!(&e820_entry[8..16], b"etc/e820");
        // A file read through: the real device, byte by byte, and a re-select resumes.
        let acpi = read(&mut v, &mut q, 0x21, 300);
        assert!(acpi.iter().enumerate().all(|(i, &b)| b == i as u8));
        v.select(0x21);
        let _ = v.read_byte(&mut q);
        q.fw_cfg_select(SIGNATURE); // the host used the real device itself
        v.forget_position();
        assert_eq!(v.read_byte(&mut q), 1, "the view puts the real pointer back");
        let before = q.reads;
        let _ = v.read_byte(&mut q);
        assert_eq!(q.reads - before, 1, "in sequence, one real read per byte");
    }
}

#[cfg(test)]
mod dma_tests {
    extern crate std;
    use std::vec::Vec;

    use super::super::fake::Fake;
    use super::*;

    const RAM: [(u64, u64); 1] = [(0, 256 << 20)];

    #[test]
    fn dma_rejects_a_buffer_that_is_not_there_and_drops_writes() {
        let mut q = Fake::new();
        let mut v = FwCfgView::new(&mut q, TdFacts { ram: &RAM, vcpus: 1, dma: true }).unwrap();
        let control = 0x21 << 16 | dma::SELECT | dma::READ;
        assert_eq!(v.dma(&mut q, control, 300, &mut |_, _| false), dma::ERROR);
        // A write is taken (edk2 spins forever on ERROR) and changes nothing.
        assert_eq!(v.dma(&mut q, 0x21 << 16 | dma::SELECT | dma::WRITE, 16, &mut |_, _| true), 0);
        assert_eq!(v.dma_dropped, 16);
        v.select(0x21);
        assert_eq!(v.read_byte(&mut q), 0, "the item is unchanged");
    }

    #[test]
    fn dma_skips_and_writes_of_any_length_cost_the_host_at_most_the_item() {
        let mut q = Fake::new();
        let mut v = FwCfgView::new(&mut q, TdFacts { ram: &RAM, vcpus: 1, dma: true }).unwrap();
        let before = q.reads;
        assert_eq!(v.dma(&mut q, 0x21 << 16 | dma::SELECT | dma::SKIP, u32::MAX, &mut |_, _| true), 0);
        assert_eq!(v.dma(&mut q, dma::WRITE, u32::MAX, &mut |_, _| true), 0);
        assert_eq!(v.dma_dropped, u64::from(u32::MAX));
        assert_eq!(v.read_byte(&mut q), 0, "past the end");
        assert_eq!(q.reads, before, "the device was not read");
        // A skip inside the item: the device catches up at the next byte, reading up to it.
        assert_eq!(v.dma(&mut q, 0x21 << 16 | dma::SELECT | dma::SKIP, 100, &mut |_, _| true), 0);
        assert_eq!(v.read_byte(&mut q), 100);
        assert_eq!(q.reads - before, 101);
    }

    #[test]
    fn dma_happy_path_reads_skips_and_offers_the_interface() {
        let mut q = Fake::new();
        let mut v = FwCfgView::new(&mut q, TdFacts { ram: &RAM, vcpus: 1, dma: true }).unwrap();
        v.select(0x01);
        let id: Vec<u8> = (0..4).map(|_| v.read_byte(&mut q)).collect();
        assert_eq!(id, [3, 0, 0, 0], "DMA offered");
        assert_eq!(
            (v.dma_address(PORT_DMA_HIGH, 0), v.dma_address(PORT_DMA_LOW, 0x0010_7F00)),
            (None, Some(0x7F_1000))
        );
        let mut got = Vec::new();
        let control = 0x21 << 16 | dma::SELECT | dma::SKIP;
        assert_eq!(v.dma(&mut q, control, 10, &mut |_, _| true), 0);
        assert_eq!(
            v.dma(&mut q, dma::READ, 290, &mut |at, b| {
                assert_eq!(at as usize, got.len());
                got.extend_from_slice(b);
                true
            }),
            0
        );
        assert!(got.iter().enumerate().all(|(i, &b)| b == (i + 10) as u8), "skipped 10, then read on");
        assert_eq!(v.dma_transfers, 2);
    }
}
