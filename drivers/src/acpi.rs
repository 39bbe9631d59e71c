//! Just enough ACPI to find the PCIe ECAM and the DMA remapping unit: RSDP → XSDT (or RSDT) →
//! MCFG and DMAR, with checksums.

use core::fmt;

use super::phys::{read_firmware_bytes, OutOfRange};

/// ECAM of QEMU's q35 when no MCFG is found: `MCH_HOST_BRIDGE_PCIEXBAR_DEFAULT` (0xB0000000,
/// 256 buses, QEMU `hw/pci-host/q35.c`), which is what QEMU's own MCFG announces by default.
pub const Q35_DEFAULT_ECAM: Ecam = Ecam { base: 0xB000_0000, segment: 0, start_bus: 0, end_bus: 255 };

/// One ECAM window (one MCFG allocation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ecam {
    /// Physical address of bus 0's configuration space (even if `start_bus` is higher).
    pub base: u64,
    /// PCI segment.
    pub segment: u16,
    /// First bus decoded.
    pub start_bus: u8,
    /// Last bus decoded.
    pub end_bus: u8,
}

/// Why no MCFG was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcpiError {
    /// The loader gave no RSDP.
    NoRsdp,
    /// A table is not in readable memory.
    Unreadable(OutOfRange),
    /// A signature or checksum is wrong.
    Bad(&'static str),
    /// No MCFG in the XSDT/RSDT.
    NoMcfg,
    /// No DMAR (or no DRHD in it): QEMU without `-device intel-iommu`.
    NoDmar,
}

impl fmt::Display for AcpiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AcpiError::NoRsdp => write!(f, "no RSDP from the loader"),
            AcpiError::Unreadable(r) => write!(f, "ACPI table at {:#x}+{:#x} not readable", r.addr, r.len),
            AcpiError::Bad(what) => write!(f, "bad {what}"),
            AcpiError::NoMcfg => write!(f, "no MCFG table"),
            AcpiError::NoDmar => write!(f, "no DMAR table with a DRHD (QEMU: -device intel-iommu)"),
        }
    }
}

const HEADER: usize = 36;
/// Tables longer than this are refused (MCFG and XSDT are tiny).
const MAX_TABLE: usize = 1024;

fn checksum_ok(bytes: &[u8]) -> bool {
    bytes.iter().fold(0u8, |a, &b| a.wrapping_add(b)) == 0
}

/// Reads the table at `addr` into `buf`, checks its length and checksum; returns its length.
fn table(addr: u64, buf: &mut [u8; MAX_TABLE]) -> Result<usize, AcpiError> {
    read_firmware_bytes(addr, &mut buf[..HEADER]).map_err(AcpiError::Unreadable)?;
    let len = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]) as usize;
    if !(HEADER..=MAX_TABLE).contains(&len) {
        return Err(AcpiError::Bad("table length"));
    }
    read_firmware_bytes(addr, &mut buf[..len]).map_err(AcpiError::Unreadable)?;
    if !checksum_ok(&buf[..len]) {
        return Err(AcpiError::Bad("table checksum"));
    }
    Ok(len)
}

/// Finds the table with signature `want` reached from the RSDP at `rsdp`, reads it into `out`
/// (length and checksum checked) and returns its length; `Ok(None)` if no table has that
/// signature.
fn find_table(rsdp: u64, want: &[u8; 4], out: &mut [u8; MAX_TABLE]) -> Result<Option<usize>, AcpiError> {
    if rsdp == 0 {
        return Err(AcpiError::NoRsdp);
    }
    let mut r = [0u8; 36];
    read_firmware_bytes(rsdp, &mut r[..20]).map_err(AcpiError::Unreadable)?;
    if &r[..8] != b"RSD PTR " || !checksum_ok(&r[..20]) {
        return Err(AcpiError::Bad("RSDP"));
    }
    let revision = r[15];
    let (root, entry_bytes) = if revision >= 2 {
        read_firmware_bytes(rsdp, &mut r).map_err(AcpiError::Unreadable)?;
        let xsdt = u64::from_le_bytes([r[24], r[25], r[26], r[27], r[28], r[29], r[30], r[31]]);
        if xsdt != 0 && checksum_ok(&r) {
            (xsdt, 8)
        } else {
            (u64::from(u32::from_le_bytes([r[16], r[17], r[18], r[19]])), 4)
        }
    } else {
        (u64::from(u32::from_le_bytes([r[16], r[17], r[18], r[19]])), 4)
    };
    let mut root_buf = [0u8; MAX_TABLE];
    let len = table(root, &mut root_buf)?;
    let sig: &[u8] = if entry_bytes == 8 { b"XSDT" } else { b"RSDT" };
    if &root_buf[..4] != sig {
        return Err(AcpiError::Bad("XSDT/RSDT signature"));
    }
    for entry in root_buf[HEADER..len].chunks_exact(entry_bytes) {
        let mut a = [0u8; 8];
        a[..entry_bytes].copy_from_slice(entry);
        let addr = u64::from_le_bytes(a);
        let mut sig = [0u8; 4];
        read_firmware_bytes(addr, &mut sig).map_err(AcpiError::Unreadable)?;
        if &sig == want {
            return table(addr, out).map(Some);
        }
    }
    Ok(None)
}

/// The first ECAM allocation of the MCFG reached from the RSDP at `rsdp`.
///
/// # Errors
/// [`AcpiError`] naming the first thing missing or wrong.
pub fn find_ecam(rsdp: u64) -> Result<Ecam, AcpiError> {
    let mut t = [0u8; MAX_TABLE];
    let tlen = find_table(rsdp, b"MCFG", &mut t)?.ok_or(AcpiError::NoMcfg)?;
    // Header, 8 reserved bytes, then 16-byte allocations.
    let alloc = t.get(HEADER + 8..tlen).and_then(|a| a.get(..16)).ok_or(AcpiError::Bad("MCFG without allocations"))?;
    let base = u64::from_le_bytes([alloc[0], alloc[1], alloc[2], alloc[3], alloc[4], alloc[5], alloc[6], alloc[7]]);
    Ok(Ecam { base, segment: u16::from_le_bytes([alloc[8], alloc[9]]), start_bus: alloc[10], end_bus: alloc[11] })
}

/// One DMA remapping hardware unit definition (DRHD) of the DMAR table (VT-d §8.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Drhd {
    /// The PCI segment the unit serves.
    pub segment: u16,
    /// Physical address of its register set.
    pub registers: u64,
    /// INCLUDE_PCI_ALL: the unit serves every device of the segment not named by another DRHD.
    pub include_all: bool,
    /// DMAR host address width: HAW + 1 bits.
    pub host_address_width: u8,
}

/// The first DRHD of the DMAR table reached from the RSDP at `rsdp`.
///
/// # Errors
/// [`AcpiError::NoDmar`] without a DMAR table or without a DRHD in it; [`AcpiError`] naming
/// anything else missing or wrong.
pub fn find_drhd(rsdp: u64) -> Result<Drhd, AcpiError> {
    let mut t = [0u8; MAX_TABLE];
    let tlen = find_table(rsdp, b"DMAR", &mut t)?.ok_or(AcpiError::NoDmar)?;
    // Header, host address width (1), flags (1), 10 reserved bytes, then remapping structures:
    // type (2), length (2), body.
    let haw = *t.get(HEADER).ok_or(AcpiError::Bad("DMAR too short"))?;
    let mut at = HEADER + 12;
    while at + 4 <= tlen {
        let kind = u16::from_le_bytes([t[at], t[at + 1]]);
        let len = usize::from(u16::from_le_bytes([t[at + 2], t[at + 3]]));
        if len < 4 || at + len > tlen {
            return Err(AcpiError::Bad("DMAR remapping structure length"));
        }
        if kind == 0 {
            let d = t.get(at..at + 16).ok_or(AcpiError::Bad("DRHD too short"))?;
            let mut reg = [0u8; 8];
            reg.copy_from_slice(&d[8..16]);
            return Ok(Drhd {
                segment: u16::from_le_bytes([d[6], d[7]]),
                registers: u64::from_le_bytes(reg),
                include_all: d[4] & 1 != 0,
                host_address_width: haw.saturating_add(1),
            });
        }
        at += len;
    }
    Err(AcpiError::NoDmar)
}

/// The PCIe ECAM window from ACPI's MCFG, or q35's default when the table is missing (said on
/// the console).
pub fn ecam_or_default(rsdp: u64) -> Ecam {
    match find_ecam(rsdp) {
        Ok(e) => e,
        Err(e) => {
            crate::say!("pci: {e}; using q35's default ECAM at {:#x}", Q35_DEFAULT_ECAM.base);
            Q35_DEFAULT_ECAM
        }
    }
}
