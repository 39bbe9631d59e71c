//! Loads the host agent's binary into the host world: the ELF from fw_cfg (`opt/seamless/host`,
//! its headers read front to back, never trusted: `crate::elf` checks every field before a byte
//! is placed), its segments copied into host RAM right after the TSM's image (one fw_cfg DMA
//! transfer each, the TSM's privilege: the host world may not use that interface), page tables written
//! into host pages after them, and the boot information page last. Every destination frame
//! must be one the host world's nested map grants (host RAM); anything else is refused with
//! [`LoadError`] before the TSM writes it. The image is unmeasured: MRSEAM covers only the TSM.
//!
//! The page tables the host starts on (its entry contract, docs/firmware.md):
//! - PML4[0] and PML4[256] → one PDPT of 1 GiB pages: physical 0..4 GiB identity-mapped and
//!   again at the direct map (`phys::DIRECT_MAP_BASE`), as the TSM sees memory itself;
//! - PML4[511] → PDPT[510] → a page directory → 4 KiB tables mapping the image at its link
//!   addresses (-2 GiB), writable only where the segment is, executable only where it is.

use seamless_drivers::bootinfo::BootInfo;
use seamless_drivers::config::HOST_FILE;
use seamless_drivers::fw_cfg::{FwCfg, FwCfgError, FwCfgFile};
use seamless_drivers::phys::{Frames, MAPPED_BYTES};

use super::npt::Npt;
use crate::drivers::fw_cfg_dma::FwCfgDma;
use crate::elf::{self, ElfError, HostImage, HEADER_BYTES, MAX_PHDRS, PF_W, PF_X, PHDR_BYTES};

const PAGE: u64 = 4096;
const TWO_MIB: u64 = 2 << 20;
const PRESENT: u64 = 1;
const WRITE: u64 = 1 << 1;
const LARGE: u64 = 1 << 7;
const NX: u64 = 1 << 63;
/// Tables before the image's page tables: PML4, the low PDPT, the image's PDPT and its PD.
const FIXED_TABLES: u64 = 4;

/// Why the host agent could not be loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadError {
    /// fw_cfg has no such file, or could not be read.
    FwCfg(FwCfgError),
    /// The ELF was refused.
    Elf(ElfError),
    /// The file ended before the bytes its headers promise (a short read).
    Truncated,
    /// The image and its tables need more host RAM after the TSM than there is.
    NoRoom {
        /// Where they would start.
        start: u64,
        /// Bytes they need.
        needed: u64,
    },
    /// A destination frame is not host RAM (not in the host's nested map).
    NotHostRam {
        /// The frame.
        addr: u64,
    },
    /// fw_cfg's DMA interface refused a transfer.
    Dma,
}

impl core::fmt::Display for LoadError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            LoadError::FwCfg(FwCfgError::NotFound) => write!(
                f,
                "no host agent in fw_cfg: the launcher passes -fw_cfg name={HOST_FILE},file=<the seamless-host ELF>"
            ),
            LoadError::FwCfg(e) => write!(f, "{HOST_FILE}: {e}"),
            LoadError::Elf(e) => write!(f, "{HOST_FILE}: {e}"),
            LoadError::Truncated => write!(f, "{HOST_FILE}: the file ends before its segments do"),
            LoadError::NoRoom { start, needed } => write!(
                f,
                "the host image and its tables need {} KiB of host RAM from {start:#x}: there is less (give QEMU more -m)",
                needed.div_ceil(1024)
            ),
            LoadError::NotHostRam { addr } => {
                write!(f, "frame {addr:#x} is not host RAM: the host image goes nowhere else")
            }
            LoadError::Dma => write!(f, "{HOST_FILE}: fw_cfg's DMA interface refused a transfer"),
        }
    }
}

impl From<FwCfgError> for LoadError {
    fn from(e: FwCfgError) -> LoadError {
        LoadError::FwCfg(e)
    }
}

impl From<ElfError> for LoadError {
    fn from(e: ElfError) -> LoadError {
        LoadError::Elf(e)
    }
}

/// What was loaded and how the host world starts.
#[derive(Clone, Copy, Debug)]
pub struct Loaded {
    /// The checked image.
    pub image: HostImage,
    /// Host RAM the TSM used `[start, end)`: image, page tables, boot information.
    pub region: (u64, u64),
    /// CR3: the PML4.
    pub cr3: u64,
    /// The boot information page (RDI at entry).
    pub boot_info: u64,
    /// Bytes of the ELF file.
    pub file_bytes: u32,
}

/// The image's page tables: how many 4 KiB tables its span needs.
fn image_tables(image: &HostImage) -> u64 {
    let first = (image.base - elf::IMAGE_BASE) / TWO_MIB;
    let last = (image.base + image.span - 1 - elf::IMAGE_BASE) / TWO_MIB;
    last - first + 1
}

/// Loads the host agent at `start` (the first page after the TSM's image). `frames` and `npt`
/// say what is host RAM; `boot_info` makes the boot information for the region used.
///
/// # Errors
/// [`LoadError`]; nothing was written unless every check before the copy passed.
pub fn load(
    fw: &FwCfg,
    frames: &Frames,
    npt: &Npt,
    start: u64,
    boot_info: &dyn Fn((u64, u64)) -> BootInfo,
) -> Result<Loaded, LoadError> {
    let mut file = fw.open(HOST_FILE)?;
    let size = u64::from(file.size());
    let mut head = [0u8; HEADER_BYTES];
    if file.read(&mut head) != HEADER_BYTES {
        return Err(ElfError::Header("shorter than an ELF header").into());
    }
    let header = elf::parse_header(&head, size)?;
    let mut table = [0u8; PHDR_BYTES * MAX_PHDRS];
    let table = &mut table[..header.phnum * PHDR_BYTES];
    if !file.seek_forward(header.phoff) || file.read(table) != table.len() {
        return Err(LoadError::Truncated);
    }
    let image = elf::parse_segments(&header, table, size)?;

    // Placement: the image's span, then its tables, then the boot information, all host RAM.
    let pts = image_tables(&image);
    let tables = start + image.span;
    let info_page = tables + (FIXED_TABLES + pts) * PAGE;
    let end = info_page + PAGE;
    let mut at = start;
    while at < end {
        if !frames.contains(at, PAGE) {
            return Err(LoadError::NoRoom { start, needed: end - start });
        }
        if !npt.maps(at) {
            return Err(LoadError::NotHostRam { addr: at });
        }
        at += PAGE;
    }

    // ALL CHECKS PASSED: the destination is the host's; from here the TSM writes it.
    let mut at = start;
    while at < end {
        frames.zero(at, PAGE as usize);
        at += PAGE;
    }
    if let Some(mut dma) = FwCfgDma::new(fw) {
        // One transfer per segment, straight into host RAM (checked above, and again by the
        // driver against `frames`).
        let key = fw.selector_of(HOST_FILE)?;
        for s in image.segments().iter().filter(|s| s.filesz != 0) {
            let dst = start + (s.vaddr - image.base);
            let (offset, len) = (u32::try_from(s.offset), u32::try_from(s.filesz));
            let (Ok(offset), Ok(len)) = (offset, len) else { return Err(LoadError::Truncated) };
            dma.select_at(key, offset).and_then(|()| dma.read_into(frames, dst, len)).map_err(|_| LoadError::Dma)?;
        }
    } else {
        copy_by_ports(&mut file, &image, frames, start)?;
    }
    fw.deselect();

    let (pml4, pdpt_low, pdpt_img, pd_img) = (tables, tables + PAGE, tables + 2 * PAGE, tables + 3 * PAGE);
    let pt0 = tables + FIXED_TABLES * PAGE;
    for g in 0..MAPPED_BYTES >> 30 {
        frames.write_u64(pdpt_low + g * 8, (g << 30) | PRESENT | WRITE | LARGE);
    }
    frames.write_u64(pml4, pdpt_low | PRESENT | WRITE);
    frames.write_u64(pml4 + 256 * 8, pdpt_low | PRESENT | WRITE);
    frames.write_u64(pml4 + 511 * 8, pdpt_img | PRESENT | WRITE);
    frames.write_u64(pdpt_img + 510 * 8, pd_img | PRESENT | WRITE);
    let first_pd = (image.base - elf::IMAGE_BASE) / TWO_MIB;
    for i in 0..pts {
        frames.write_u64(pd_img + (first_pd + i) * 8, (pt0 + i * PAGE) | PRESENT | WRITE);
    }
    let mut va = image.base;
    while va < image.base + image.span {
        // Pages between segments stay unmapped; the rest as their segment says.
        if let Some(flags) = image.flags_at(va) {
            let pa = start + (va - image.base);
            let mut pte = pa | PRESENT;
            if flags & PF_W != 0 {
                pte |= WRITE;
            }
            if flags & PF_X == 0 {
                pte |= NX;
            }
            let pt = pt0 + ((va - elf::IMAGE_BASE) / TWO_MIB - first_pd) * PAGE;
            frames.write_u64(pt + ((va >> 12) & 511) * 8, pte);
        }
        va += PAGE;
    }
    let info = boot_info((start, end));
    frames.write(info_page, info.to_bytes());
    Ok(Loaded { image, region: (start, end), cr3: pml4, boot_info: info_page, file_bytes: file.size() })
}

/// Copies each segment's file bytes into host RAM through fw_cfg's data port, byte by byte:
/// the way without the DMA interface.
fn copy_by_ports(file: &mut FwCfgFile<'_>, image: &HostImage, frames: &Frames, start: u64) -> Result<(), LoadError> {
    let mut chunk = [0u8; 512];
    for s in image.segments() {
        if !file.seek_forward(s.offset) {
            return Err(LoadError::Truncated);
        }
        let mut done = 0;
        while done < s.filesz {
            let n = ((s.filesz - done) as usize).min(chunk.len());
            if file.read(&mut chunk[..n]) != n {
                return Err(LoadError::Truncated);
            }
            let dst = start + (s.vaddr - image.base) + done;
            // A chunk may cross a page of the destination: write it in the pieces `Frames`
            // checks.
            let split = ((PAGE - (dst & (PAGE - 1))) as usize).min(n);
            frames.write(dst, &chunk[..split]);
            if split < n {
                frames.write(dst + split as u64, &chunk[split..n]);
            }
            done += n as u64;
        }
    }
    Ok(())
}
