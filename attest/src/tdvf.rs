//! TDVF: an OVMF image as a TD's firmware, located, checked and measured as a TDX VMM does.
//!
//! An OVMF built with TDX support (Debian's `/usr/share/ovmf/OVMF.fd` is one) carries a TDVF
//! metadata table that tells the VMM which pages to add to the TD, from where in the file, and
//! which to measure (Intel TDX Virtual Firmware Design Guide §11; edk2
//! `OvmfPkg/ResetVector/X64/IntelTdxMetadata.asm`). The VMM finds it through OVMF's GUIDed table,
//! which ends 32 bytes before the end of the image (QEMU `pc_system_parse_ovmf_flash`):
//!
//! ```text
//! end - 50   u16 LE   length of the whole table, this footer included
//! end - 48   GUID     96b582de-1fb2-45f7-baea-a366c55a082d (the footer)
//! end - 32   ...      the reset vector
//! ```
//!
//! Below the footer, entries run downwards, each ending with its own length (u16, data + 18) and
//! GUID. The entry e47a6535-984a-4798-865e-4685a7bf8ec2 holds a u32: the distance from the end of
//! the file back to the TDVF descriptor:
//!
//! ```text
//! 0   signature "TDVF"            8   version u32 = 1
//! 4   length u32 (16 + 32 n)      12  section count n u32
//! 16  n sections of 32 bytes:
//!       data offset u32 (file)    raw data size u32
//!       memory address u64 (GPA)  memory data size u64
//!       type u32                  attributes u32 (bit 0: MR.EXTEND)
//! ```
//!
//! The file is hostile input: [`Tdvf::parse`] refuses anything a VMM could not load exactly as
//! written ([`TdvfError`] lists every rule), without panicking.
//!
//! Loading (what [`Tdvf::mrtd`] replays, and what `tsm_client::host::tdvf` does): sections in
//! table order, as QEMU's `tdx_finalize_vm` walks them; within a section, pages in ascending GPA
//! order; for each page TDH.MEM.PAGE.ADD with its content (the file's bytes at the section's data
//! offset, zero past its raw size; the TD HOB for TD_HOB), then TDH.MR.EXTEND of its sixteen
//! chunks if the section has the MR.EXTEND attribute (KVM's `tdx_gmem_post_populate`). So the
//! MRTD computed here is the one a TDX module reports for the same file under QEMU/KVM.

use core::fmt;

use crate::image::add_page;
use crate::mrtd::{MrtdBuilder, MRTD_BYTES, PAGE_BYTES};

/// The GUID that ends OVMF's GUIDed table (96b582de-1fb2-45f7-baea-a366c55a082d), as stored.
pub const TABLE_FOOTER_GUID: [u8; 16] =
    guid(0x96b5_82de, 0x1fb2, 0x45f7, [0xba, 0xea, 0xa3, 0x66, 0xc5, 0x5a, 0x08, 0x2d]);
/// The GUID of the table entry holding the TDVF descriptor's offset from the end of the file
/// (e47a6535-984a-4798-865e-4685a7bf8ec2), as stored.
pub const METADATA_OFFSET_GUID: [u8; 16] =
    guid(0xe47a_6535, 0x984a, 0x4798, [0x86, 0x5e, 0x46, 0x85, 0xa7, 0xbf, 0x8e, 0xc2]);
/// "TDVF" as a little-endian u32.
pub const SIGNATURE: u32 = u32::from_le_bytes(*b"TDVF");
/// The descriptor version this reader knows.
pub const VERSION: u32 = 1;
/// Bytes of the descriptor before its sections.
pub const DESCRIPTOR_BYTES: usize = 16;
/// Bytes of one section entry.
pub const SECTION_BYTES: usize = 32;
/// Sections this reader holds (edk2's OVMF has 6; TD-Shim's a few more).
pub const MAX_SECTIONS: usize = 16;
/// TD memory all sections may cover together (256 MiB): edk2's cover 2.2 MiB. A bound keeps a
/// hostile table from making the loader add (and `attest measure` hash) pages without end.
pub const MAX_TOTAL_BYTES: u64 = 256 << 20;
/// Section attribute: TDH.MR.EXTEND every page (TDVF design guide, table 11-3).
pub const ATTR_MR_EXTEND: u32 = 1;
/// Section attribute PAGE_AUG (defined by later TDVF guides): the VMM may AUG instead of ADD.
/// edk2 2022.11 never sets it and this loader does not implement it, so it is refused.
pub const ATTR_PAGE_AUG: u32 = 2;
/// Bytes from the end of the file to the footer GUID.
const FOOTER_FROM_END: usize = 48;
/// Bytes of an entry's trailer: its u16 length and its GUID.
const ENTRY_TRAILER: usize = 18;

/// A GUID's bytes as EFI stores them (first three fields little-endian).
const fn guid(a: u32, b: u16, c: u16, d: [u8; 8]) -> [u8; 16] {
    let a = a.to_le_bytes();
    let (b, c) = (b.to_le_bytes(), c.to_le_bytes());
    [a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]]
}

/// What a section is for (TDVF design guide, table 11-2). Types 4.. (PERM_MEM, PAYLOAD,
/// PAYLOAD_PARAM: TD-Shim's) are refused: TDVF does not use them and this loader does not load
/// them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SectionType {
    /// Boot firmware volume: code, copied from the file and (as edk2 marks it) measured.
    Bfv,
    /// Configuration firmware volume: the variable store, copied from the file.
    Cfv,
    /// Where the VMM writes the TD HOB (the TD's memory map); no data in the file.
    TdHob,
    /// Memory the firmware uses before it accepts RAM (page tables, stack, work area); zero.
    TempMem,
}

impl SectionType {
    /// The type for the table's value.
    pub const fn from_raw(raw: u32) -> Option<SectionType> {
        match raw {
            0 => Some(SectionType::Bfv),
            1 => Some(SectionType::Cfv),
            2 => Some(SectionType::TdHob),
            3 => Some(SectionType::TempMem),
            _ => None,
        }
    }

    /// The name the TDVF guide gives it.
    pub const fn name(self) -> &'static str {
        match self {
            SectionType::Bfv => "BFV",
            SectionType::Cfv => "CFV",
            SectionType::TdHob => "TD_HOB",
            SectionType::TempMem => "TEMP_MEM",
        }
    }

    /// True for the sections whose content comes from the file (the others carry none).
    pub const fn has_data(self) -> bool {
        matches!(self, SectionType::Bfv | SectionType::Cfv)
    }
}

/// One checked section.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Section {
    /// Its type.
    pub ty: SectionType,
    /// Offset of its data in the file.
    pub data_offset: u32,
    /// Bytes of data in the file (zero for TD_HOB and TEMP_MEM).
    pub raw_size: u32,
    /// GPA of its first page (4 KiB aligned).
    pub gpa: u64,
    /// Bytes of TD memory it covers (a 4 KiB multiple, at least `raw_size`).
    pub size: u64,
    /// Attributes ([`ATTR_MR_EXTEND`] only).
    pub attributes: u32,
}

impl Section {
    /// True if its pages are measured with TDH.MR.EXTEND.
    pub const fn measured(&self) -> bool {
        self.attributes & ATTR_MR_EXTEND != 0
    }

    /// Its pages.
    pub const fn pages(&self) -> u64 {
        self.size / PAGE_BYTES as u64
    }

    /// Its end GPA (exclusive); cannot overflow for a checked section.
    pub const fn end(&self) -> u64 {
        self.gpa.saturating_add(self.size)
    }

    const EMPTY: Section =
        Section { ty: SectionType::TempMem, data_offset: 0, raw_size: 0, gpa: 0, size: 0, attributes: 0 };
}

/// Why a file is not a TDVF this loader accepts. `index` is the section's place in the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TdvfError {
    /// No OVMF GUIDed-table footer 48 bytes before the end: not an OVMF image (or too short).
    NoTableFooter,
    /// The table's length is shorter than its own footer or runs before the start of the file.
    BadTableLength(u16),
    /// An entry whose length is under 18 bytes or runs past the table.
    BadTableEntry {
        /// File offset where the entry ends (its GUID's end).
        offset: usize,
    },
    /// The table has no TDX metadata entry: an OVMF built without TDX (Debian's 4 MiB builds).
    NoMetadata,
    /// The metadata entry's data is not a 4-byte offset.
    BadMetadataEntry {
        /// Its data length.
        length: usize,
    },
    /// The descriptor's offset (from the end) puts it outside the file.
    DescriptorOutOfFile {
        /// The offset from the end of the file, as stored.
        from_end: u32,
    },
    /// The descriptor does not start with "TDVF".
    BadSignature(u32),
    /// A descriptor version other than [`VERSION`].
    UnsupportedVersion(u32),
    /// A descriptor with no sections.
    NoSections,
    /// More sections than [`MAX_SECTIONS`].
    TooManySections(u32),
    /// The descriptor's length is not 16 + 32 × sections, or runs past the end of the file.
    BadDescriptorLength {
        /// The length field.
        length: u32,
        /// What the section count makes it.
        expected: u64,
    },
    /// A type this loader does not know (or does not load).
    UnknownSectionType {
        /// The section.
        index: usize,
        /// Its type field.
        ty: u32,
    },
    /// Attribute bits other than [`ATTR_MR_EXTEND`], or MR.EXTEND on a section without data.
    BadAttributes {
        /// The section.
        index: usize,
        /// Its attributes.
        attributes: u32,
    },
    /// A GPA not 4 KiB aligned.
    UnalignedGpa {
        /// The section.
        index: usize,
        /// The GPA.
        gpa: u64,
    },
    /// A memory size of zero or not a 4 KiB multiple.
    BadMemorySize {
        /// The section.
        index: usize,
        /// The size.
        size: u64,
    },
    /// GPA + size overflows the address space.
    AddressOverflow {
        /// The section.
        index: usize,
    },
    /// More raw data than memory to put it in.
    RawLargerThanMemory {
        /// The section.
        index: usize,
    },
    /// A BFV or CFV without data, or a TD_HOB or TEMP_MEM with some.
    DataNotAllowed {
        /// The section.
        index: usize,
        /// Its type.
        ty: SectionType,
    },
    /// Data that does not lie wholly inside the file.
    DataOutOfFile {
        /// The section.
        index: usize,
    },
    /// Two sections share a page of TD memory.
    Overlap {
        /// The later section.
        index: usize,
        /// The earlier one.
        other: usize,
    },
    /// No BFV: there would be no code to run.
    NoBfv,
    /// The sections cover more than [`MAX_TOTAL_BYTES`] of TD memory together.
    TooLarge {
        /// The first section past the bound.
        index: usize,
    },
    /// More than one TD_HOB (the firmware reads one, at a fixed address).
    SecondTdHob {
        /// The second one.
        index: usize,
    },
}

impl fmt::Display for TdvfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            TdvfError::NoTableFooter => f.write_str(
                "no OVMF GUIDed table footer 48 bytes before the end of the file: not an OVMF image with a TDVF descriptor",
            ),
            TdvfError::BadTableLength(n) => write!(f, "OVMF GUIDed table length {n} is shorter than its footer or runs before the file"),
            TdvfError::BadTableEntry { offset } => {
                write!(f, "OVMF GUIDed table entry ending at file offset {offset:#x} has a length under 18 or past the table")
            }
            TdvfError::NoMetadata => f.write_str(
                "the OVMF GUIDed table has no TDX metadata entry (e47a6535-...): this OVMF was built without TDX (the 4 MiB builds are)",
            ),
            TdvfError::BadMetadataEntry { length } => {
                write!(f, "the TDX metadata entry holds {length} bytes, not a 4-byte offset")
            }
            TdvfError::DescriptorOutOfFile { from_end } => {
                write!(f, "the TDVF descriptor offset {from_end:#x} (from the end) lies outside the file")
            }
            TdvfError::BadSignature(s) => write!(f, "TDVF descriptor signature {s:#010x} is not \"TDVF\""),
            TdvfError::UnsupportedVersion(v) => write!(f, "TDVF descriptor version {v} (this loader knows {VERSION})"),
            TdvfError::NoSections => f.write_str("TDVF descriptor has no sections"),
            TdvfError::TooManySections(n) => write!(f, "TDVF descriptor has {n} sections (at most {MAX_SECTIONS})"),
            TdvfError::BadDescriptorLength { length, expected } => write!(
                f,
                "TDVF descriptor length {length} is not {expected} (16 + 32 per section) or runs past the end of the file"
            ),
            TdvfError::UnknownSectionType { index, ty } => {
                write!(f, "TDVF section {index}: type {ty} is not BFV, CFV, TD_HOB or TEMP_MEM")
            }
            TdvfError::BadAttributes { index, attributes } => write!(
                f,
                "TDVF section {index}: attributes {attributes:#x} (only MR.EXTEND, and only on a BFV or CFV, is loaded)"
            ),
            TdvfError::UnalignedGpa { index, gpa } => {
                write!(f, "TDVF section {index}: memory address {gpa:#x} is not 4 KiB aligned")
            }
            TdvfError::BadMemorySize { index, size } => {
                write!(f, "TDVF section {index}: memory size {size:#x} is zero or not a 4 KiB multiple")
            }
            TdvfError::AddressOverflow { index } => {
                write!(f, "TDVF section {index}: memory address + size overflows the address space")
            }
            TdvfError::RawLargerThanMemory { index } => {
                write!(f, "TDVF section {index}: more raw data than memory size")
            }
            TdvfError::DataNotAllowed { index, ty } => write!(
                f,
                "TDVF section {index}: a {} section {} data in the file",
                ty.name(),
                if ty.has_data() { "needs" } else { "may not have" }
            ),
            TdvfError::DataOutOfFile { index } => write!(f, "TDVF section {index}: data runs past the end of the file"),
            TdvfError::Overlap { index, other } => {
                write!(f, "TDVF section {index} overlaps section {other} in TD memory")
            }
            TdvfError::TooLarge { index } => {
                write!(f, "TDVF section {index}: the sections cover more than {} MiB of TD memory", MAX_TOTAL_BYTES >> 20)
            }
            TdvfError::NoBfv => f.write_str("TDVF descriptor has no BFV section"),
            TdvfError::SecondTdHob { index } => write!(f, "TDVF section {index} is a second TD_HOB"),
        }
    }
}

impl core::error::Error for TdvfError {}

fn le16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at.checked_add(2)?)?.try_into().ok()?))
}

fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at.checked_add(4)?)?.try_into().ok()?))
}

fn le64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at.checked_add(8)?)?.try_into().ok()?))
}

/// The data of OVMF's GUIDed-table entry `want`, walking the table as QEMU's
/// `pc_system_ovmf_table_find` does; `Ok(None)` if the table has no such entry.
///
/// # Errors
/// [`TdvfError::NoTableFooter`], [`TdvfError::BadTableLength`], [`TdvfError::BadTableEntry`].
pub fn table_entry<'a>(bytes: &'a [u8], want: &[u8; 16]) -> Result<Option<&'a [u8]>, TdvfError> {
    let footer = bytes.len().checked_sub(FOOTER_FROM_END).ok_or(TdvfError::NoTableFooter)?;
    if bytes.get(footer..footer + 16) != Some(&TABLE_FOOTER_GUID[..]) {
        return Err(TdvfError::NoTableFooter);
    }
    let len_at = footer.checked_sub(2).ok_or(TdvfError::NoTableFooter)?;
    let total = le16(bytes, len_at).ok_or(TdvfError::NoTableFooter)?;
    // The table's entries lie in [len_at - (total - 18), len_at).
    let entries = usize::from(total).checked_sub(ENTRY_TRAILER).filter(|&n| n <= len_at);
    let Some(mut left) = entries else {
        return Err(TdvfError::BadTableLength(total));
    };
    let mut end = len_at;
    while left >= ENTRY_TRAILER {
        let len = usize::from(le16(bytes, end - ENTRY_TRAILER).unwrap_or(0));
        if len < ENTRY_TRAILER || len > left {
            return Err(TdvfError::BadTableEntry { offset: end });
        }
        if bytes.get(end - 16..end) == Some(&want[..]) {
            return Ok(bytes.get(end - len..end - ENTRY_TRAILER));
        }
        end -= len;
        left -= len;
    }
    Ok(None)
}

/// A checked TDVF image: its sections in table order, borrowing the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tdvf<'a> {
    bytes: &'a [u8],
    descriptor: usize,
    sections: [Section; MAX_SECTIONS],
    count: usize,
}

impl<'a> Tdvf<'a> {
    /// Locates and checks the TDVF descriptor of `bytes` (see [`TdvfError`] for every rule).
    ///
    /// # Errors
    /// The first rule broken.
    pub fn parse(bytes: &'a [u8]) -> Result<Tdvf<'a>, TdvfError> {
        let entry = table_entry(bytes, &METADATA_OFFSET_GUID)?.ok_or(TdvfError::NoMetadata)?;
        let from_end = match *entry {
            [a, b, c, d] => u32::from_le_bytes([a, b, c, d]),
            _ => return Err(TdvfError::BadMetadataEntry { length: entry.len() }),
        };
        let descriptor = usize::try_from(from_end)
            .ok()
            .and_then(|d| bytes.len().checked_sub(d))
            .filter(|&at| at.checked_add(DESCRIPTOR_BYTES).is_some_and(|e| e <= bytes.len()))
            .ok_or(TdvfError::DescriptorOutOfFile { from_end })?;
        let field = |i: usize| le32(bytes, descriptor + 4 * i).unwrap_or(0);
        let (signature, length, version, count) = (field(0), field(1), field(2), field(3));
        if signature != SIGNATURE {
            return Err(TdvfError::BadSignature(signature));
        }
        if version != VERSION {
            return Err(TdvfError::UnsupportedVersion(version));
        }
        if count == 0 {
            return Err(TdvfError::NoSections);
        }
        if count as usize > MAX_SECTIONS {
            return Err(TdvfError::TooManySections(count));
        }
        let expected = DESCRIPTOR_BYTES as u64 + SECTION_BYTES as u64 * u64::from(count);
        if u64::from(length) != expected || descriptor as u64 + expected > bytes.len() as u64 {
            return Err(TdvfError::BadDescriptorLength { length, expected });
        }
        let mut t = Tdvf { bytes, descriptor, sections: [Section::EMPTY; MAX_SECTIONS], count: 0 };
        let (mut bfv, mut hob, mut total) = (false, false, 0u64);
        for index in 0..count as usize {
            let s = section_at(bytes, descriptor + DESCRIPTOR_BYTES + SECTION_BYTES * index, index)?;
            total = total.saturating_add(s.size);
            if total > MAX_TOTAL_BYTES {
                return Err(TdvfError::TooLarge { index });
            }
            if let Some(other) = t.sections().position(|o| s.gpa < o.end() && o.gpa < s.end()) {
                return Err(TdvfError::Overlap { index, other });
            }
            if s.ty == SectionType::TdHob {
                if hob {
                    return Err(TdvfError::SecondTdHob { index });
                }
                hob = true;
            }
            bfv |= s.ty == SectionType::Bfv;
            t.sections[index] = s;
            t.count = index + 1;
        }
        if !bfv {
            return Err(TdvfError::NoBfv);
        }
        Ok(t)
    }

    /// The sections, in table (load) order.
    pub fn sections(&self) -> impl Iterator<Item = Section> + '_ {
        self.sections[..self.count].iter().copied()
    }

    /// The TD_HOB section, if there is one.
    pub fn td_hob(&self) -> Option<Section> {
        self.sections().find(|s| s.ty == SectionType::TdHob)
    }

    /// The file offset of the descriptor.
    pub const fn descriptor_offset(&self) -> usize {
        self.descriptor
    }

    /// Page `i` of `section` as loaded from the file: its GPA and 4 KiB of content (the file's
    /// bytes within the section's raw data, zero beyond).
    pub fn page(&self, section: &Section, i: u64) -> (u64, [u8; PAGE_BYTES]) {
        let mut page = [0u8; PAGE_BYTES];
        let start = i.saturating_mul(PAGE_BYTES as u64);
        if start < u64::from(section.raw_size) {
            let n = (u64::from(section.raw_size) - start).min(PAGE_BYTES as u64) as usize;
            let from = section.data_offset as usize + start as usize;
            if let Some(src) = self.bytes.get(from..from + n) {
                page[..n].copy_from_slice(src);
            }
        }
        (section.gpa.saturating_add(start), page)
    }

    /// Pages added with TDH.MEM.PAGE.ADD, and of those measured with TDH.MR.EXTEND.
    pub fn page_counts(&self) -> (u64, u64) {
        self.sections().fold((0, 0), |(a, m), s| (a + s.pages(), m + if s.measured() { s.pages() } else { 0 }))
    }

    /// The MRTD of a TD built from this image by the loading convention (module doc). The TD
    /// HOB's content is not measured, so the MRTD does not depend on it.
    pub fn mrtd(&self) -> [u8; MRTD_BYTES] {
        let mut b = MrtdBuilder::new();
        for s in self.sections() {
            for i in 0..s.pages() {
                let (gpa, page) = self.page(&s, i);
                add_page(&mut b, gpa, &page, s.measured());
            }
        }
        b.finalize()
    }
}

/// Reads and checks the section entry at `at`; `at + 32` is inside the file (checked by the
/// descriptor's length).
fn section_at(bytes: &[u8], at: usize, index: usize) -> Result<Section, TdvfError> {
    let short = TdvfError::BadDescriptorLength { length: 0, expected: 0 };
    let data_offset = le32(bytes, at).ok_or(short)?;
    let raw_size = le32(bytes, at + 4).ok_or(short)?;
    let gpa = le64(bytes, at + 8).ok_or(short)?;
    let size = le64(bytes, at + 16).ok_or(short)?;
    let raw_ty = le32(bytes, at + 24).ok_or(short)?;
    let attributes = le32(bytes, at + 28).ok_or(short)?;
    let ty = SectionType::from_raw(raw_ty).ok_or(TdvfError::UnknownSectionType { index, ty: raw_ty })?;
    if attributes & !ATTR_MR_EXTEND != 0 || (attributes & ATTR_MR_EXTEND != 0 && !ty.has_data()) {
        return Err(TdvfError::BadAttributes { index, attributes });
    }
    if !gpa.is_multiple_of(PAGE_BYTES as u64) {
        return Err(TdvfError::UnalignedGpa { index, gpa });
    }
    if size == 0 || !size.is_multiple_of(PAGE_BYTES as u64) {
        return Err(TdvfError::BadMemorySize { index, size });
    }
    if gpa.checked_add(size).is_none() {
        return Err(TdvfError::AddressOverflow { index });
    }
    if u64::from(raw_size) > size {
        return Err(TdvfError::RawLargerThanMemory { index });
    }
    if ty.has_data() != (raw_size != 0) {
        return Err(TdvfError::DataNotAllowed { index, ty });
    }
    if u64::from(data_offset) + u64::from(raw_size) > bytes.len() as u64 {
        return Err(TdvfError::DataOutOfFile { index });
    }
    Ok(Section { ty, data_offset, raw_size, gpa, size, attributes })
}

/// True if `bytes` ends with OVMF's GUIDed-table footer (so `attest measure` reads it as TDVF).
pub fn looks_like_ovmf(bytes: &[u8]) -> bool {
    let Some(footer) = bytes.len().checked_sub(FOOTER_FROM_END) else { return false };
    bytes.get(footer..footer + 16) == Some(&TABLE_FOOTER_GUID[..])
}

/// Builds an OVMF-shaped image of `size` bytes holding a TDVF descriptor with `sections`
/// (`[data offset, raw size, type, attributes]` as u32 and GPA, memory size as u64) at
/// `descriptor`, without the parser's checks: for tests and tools that craft images.
#[cfg(any(feature = "std", test))]
pub fn encode(size: usize, descriptor: usize, sections: &[(u32, u32, u64, u64, u32, u32)]) -> std::vec::Vec<u8> {
    let mut out = std::vec![0u8; size];
    let mut d = std::vec::Vec::new();
    d.extend_from_slice(&SIGNATURE.to_le_bytes());
    d.extend_from_slice(&((DESCRIPTOR_BYTES + SECTION_BYTES * sections.len()) as u32).to_le_bytes());
    d.extend_from_slice(&VERSION.to_le_bytes());
    d.extend_from_slice(&(sections.len() as u32).to_le_bytes());
    for &(off, raw, gpa, mem, ty, attr) in sections {
        d.extend_from_slice(&off.to_le_bytes());
        d.extend_from_slice(&raw.to_le_bytes());
        d.extend_from_slice(&gpa.to_le_bytes());
        d.extend_from_slice(&mem.to_le_bytes());
        d.extend_from_slice(&ty.to_le_bytes());
        d.extend_from_slice(&attr.to_le_bytes());
    }
    out[descriptor..descriptor + d.len()].copy_from_slice(&d);
    // The table: one metadata entry, then the footer's length and GUID.
    let footer = size - FOOTER_FROM_END;
    out[footer..footer + 16].copy_from_slice(&TABLE_FOOTER_GUID);
    out[footer - 2..footer].copy_from_slice(&(18u16 + 22).to_le_bytes());
    let entry_end = footer - 2;
    out[entry_end - 16..entry_end].copy_from_slice(&METADATA_OFFSET_GUID);
    out[entry_end - 18..entry_end - 16].copy_from_slice(&22u16.to_le_bytes());
    out[entry_end - 22..entry_end - 18].copy_from_slice(&((size - descriptor) as u32).to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mrtd::measure_image;

    const SIZE: usize = 0x10000;
    const DESC: usize = 0xF000;
    const BFV: u32 = 0;
    const CFV: u32 = 1;
    const HOB: u32 = 2;
    const TEMP: u32 = 3;

    /// A section as `encode` takes it.
    type Row = (u32, u32, u64, u64, u32, u32);

    /// A small image shaped like OVMF.fd: CFV from offset 0, BFV from 0x2000 (measured), the
    /// descriptor inside the BFV's bytes, TEMP_MEM and TD_HOB in low RAM.
    fn good() -> [Row; 4] {
        [
            (0x2000, 0xE000, 0xFFFF_2000, 0xE000, BFV, 1),
            (0, 0x2000, 0xFFFF_0000, 0x2000, CFV, 0),
            (0, 0, 0x80_0000, 0x3000, TEMP, 0),
            (0, 0, 0x80_9000, 0x2000, HOB, 0),
        ]
    }

    fn image(sections: &[Row]) -> std::vec::Vec<u8> {
        let mut b = encode(SIZE, DESC, sections);
        for (i, x) in b[..DESC].iter_mut().enumerate() {
            *x = (i as u8).wrapping_mul(13) ^ (i >> 8) as u8;
        }
        b
    }

    fn err(sections: &[Row]) -> TdvfError {
        Tdvf::parse(&image(sections)).unwrap_err()
    }

    #[test]
    fn parses_a_well_formed_table_in_order() {
        let b = image(&good());
        let t = Tdvf::parse(&b).unwrap();
        assert_eq!(t.descriptor_offset(), DESC);
        let got: std::vec::Vec<_> = t.sections().map(|s| (s.ty, s.gpa, s.size, s.measured())).collect();
        assert_eq!(
            got,
            [
                (SectionType::Bfv, 0xFFFF_2000, 0xE000, true),
                (SectionType::Cfv, 0xFFFF_0000, 0x2000, false),
                (SectionType::TempMem, 0x80_0000, 0x3000, false),
                (SectionType::TdHob, 0x80_9000, 0x2000, false),
            ]
        );
        assert_eq!(t.td_hob().map(|s| s.gpa), Some(0x80_9000));
        assert_eq!(t.page_counts(), (14 + 2 + 3 + 2, 14));
        assert!(looks_like_ovmf(&b));
    }

    #[test]
    fn mrtd_replays_table_order_with_file_content() {
        let b = image(&good());
        let t = Tdvf::parse(&b).unwrap();
        let mut pages = std::vec::Vec::new();
        for (off, raw, gpa, mem, _, attr) in good() {
            for i in 0..mem / 4096 {
                let mut p = [0u8; 4096];
                let start = (off as usize + i as usize * 4096).min(off as usize + raw as usize);
                let end = (start + 4096).min(off as usize + raw as usize);
                p[..end - start].copy_from_slice(&b[start..end]);
                pages.push((gpa + i * 4096, p, attr == 1));
            }
        }
        let expected = measure_image(pages.iter().map(|(g, p, m)| (*g, p, *m)));
        assert_eq!(t.mrtd(), expected);
        // A byte of the measured BFV counts; one of the unmeasured CFV does not.
        let mut b2 = b.clone();
        b2[0x2000] ^= 1;
        assert_ne!(Tdvf::parse(&b2).unwrap().mrtd(), expected);
        let mut b3 = b.clone();
        b3[0x10] ^= 1;
        assert_eq!(Tdvf::parse(&b3).unwrap().mrtd(), expected);
        // Table order matters, not only GPAs.
        let mut swapped = good();
        swapped.swap(2, 3);
        assert_ne!(Tdvf::parse(&image(&swapped)).unwrap().mrtd(), expected);
    }

    #[test]
    fn partial_raw_data_is_zero_padded() {
        let mut s = good();
        s[0].1 = 0xE000 - 100;
        let b = image(&s);
        let t = Tdvf::parse(&b).unwrap();
        let bfv = t.sections().next().unwrap();
        let (gpa, last) = t.page(&bfv, 13);
        assert_eq!(gpa, 0xFFFF_2000 + 13 * 4096);
        assert_eq!(&last[..4096 - 100], &b[0xF000..0x10000 - 100]);
        assert!(last[4096 - 100..].iter().all(|&x| x == 0));
    }

    #[test]
    fn parse_rejects_files_that_are_not_ovmf_or_lack_the_entry() {
        assert_eq!(Tdvf::parse(&[]), Err(TdvfError::NoTableFooter));
        assert_eq!(Tdvf::parse(&[0u8; 47]), Err(TdvfError::NoTableFooter));
        assert_eq!(Tdvf::parse(&[0u8; SIZE]), Err(TdvfError::NoTableFooter));
        let good = image(&good());
        let footer = SIZE - 48;
        // A table length shorter than its footer, and one running before the file.
        let mut b = good.clone();
        b[footer - 2..footer].copy_from_slice(&17u16.to_le_bytes());
        assert_eq!(Tdvf::parse(&b), Err(TdvfError::BadTableLength(17)));
        let mut tiny = std::vec![0u8; 60];
        tiny[12..28].copy_from_slice(&TABLE_FOOTER_GUID);
        tiny[10..12].copy_from_slice(&100u16.to_le_bytes());
        assert_eq!(Tdvf::parse(&tiny), Err(TdvfError::BadTableLength(100)));
        // An entry of length under 18, and one longer than the table.
        let mut b = good.clone();
        b[footer - 20..footer - 18].copy_from_slice(&10u16.to_le_bytes());
        assert_eq!(Tdvf::parse(&b), Err(TdvfError::BadTableEntry { offset: footer - 2 }));
        let mut b = good.clone();
        b[footer - 20..footer - 18].copy_from_slice(&23u16.to_le_bytes());
        assert_eq!(Tdvf::parse(&b), Err(TdvfError::BadTableEntry { offset: footer - 2 }));
        // The table without the metadata GUID: a 4 MiB build.
        let mut b = good.clone();
        b[footer - 18] ^= 0xFF;
        assert_eq!(Tdvf::parse(&b), Err(TdvfError::NoMetadata));
        let mut b = good.clone();
        b[footer - 2..footer].copy_from_slice(&18u16.to_le_bytes());
        assert_eq!(Tdvf::parse(&b), Err(TdvfError::NoMetadata));
        // Metadata entry data not 4 bytes: grow the entry into the bytes below it.
        let mut b = good.clone();
        b[footer - 2..footer].copy_from_slice(&41u16.to_le_bytes());
        b[footer - 20..footer - 18].copy_from_slice(&23u16.to_le_bytes());
        assert_eq!(Tdvf::parse(&b), Err(TdvfError::BadMetadataEntry { length: 5 }));
    }

    #[test]
    fn parse_rejects_a_bad_descriptor() {
        let good = image(&good());
        let off_at = SIZE - 48 - 2 - 18 - 4;
        for from_end in [0u32, 8, SIZE as u32 + 1, u32::MAX] {
            let mut b = good.clone();
            b[off_at..off_at + 4].copy_from_slice(&from_end.to_le_bytes());
            assert_eq!(Tdvf::parse(&b), Err(TdvfError::DescriptorOutOfFile { from_end }), "{from_end:#x}");
        }
        let mut b = good.clone();
        b[DESC] = b'X';
        assert_eq!(Tdvf::parse(&b), Err(TdvfError::BadSignature(u32::from_le_bytes(*b"XDVF"))));
        let mut b = good.clone();
        b[DESC + 8] = 2;
        assert_eq!(Tdvf::parse(&b), Err(TdvfError::UnsupportedVersion(2)));
        assert_eq!(err(&[]), TdvfError::NoSections);
        let mut b = good.clone();
        b[DESC + 12..DESC + 16].copy_from_slice(&17u32.to_le_bytes());
        assert_eq!(Tdvf::parse(&b), Err(TdvfError::TooManySections(17)));
        let mut b = good.clone();
        b[DESC + 4] += 1;
        assert_eq!(Tdvf::parse(&b), Err(TdvfError::BadDescriptorLength { length: 16 + 128 + 1, expected: 144 }));
        // A right length whose sections run past the end of the file.
        let mut b = good.clone();
        let at = SIZE - 20;
        for (i, v) in [SIGNATURE, 144, VERSION, 4].into_iter().enumerate() {
            b[at + 4 * i..at + 4 * i + 4].copy_from_slice(&v.to_le_bytes());
        }
        b[off_at..off_at + 4].copy_from_slice(&20u32.to_le_bytes());
        assert_eq!(Tdvf::parse(&b), Err(TdvfError::BadDescriptorLength { length: 144, expected: 144 }));
    }

    #[test]
    fn parse_rejects_each_bad_section() {
        let g = good();
        let with = |i: usize, f: &dyn Fn(&mut Row)| {
            let mut s = g;
            f(&mut s[i]);
            err(&s)
        };
        assert_eq!(with(2, &|s| s.4 = 4), TdvfError::UnknownSectionType { index: 2, ty: 4 });
        assert_eq!(with(2, &|s| s.4 = u32::MAX), TdvfError::UnknownSectionType { index: 2, ty: u32::MAX });
        assert_eq!(with(0, &|s| s.5 = 3), TdvfError::BadAttributes { index: 0, attributes: 3 });
        assert_eq!(with(2, &|s| s.5 = ATTR_PAGE_AUG), TdvfError::BadAttributes { index: 2, attributes: 2 });
        assert_eq!(with(3, &|s| s.5 = 1), TdvfError::BadAttributes { index: 3, attributes: 1 });
        assert_eq!(with(2, &|s| s.2 = 0x80_0800), TdvfError::UnalignedGpa { index: 2, gpa: 0x80_0800 });
        assert_eq!(with(2, &|s| s.3 = 0), TdvfError::BadMemorySize { index: 2, size: 0 });
        assert_eq!(with(2, &|s| s.3 = 0x1001), TdvfError::BadMemorySize { index: 2, size: 0x1001 });
        assert_eq!(
            with(2, &|s| {
                s.2 = 0xFFFF_FFFF_FFFF_F000;
                s.3 = 0x2000;
            }),
            TdvfError::AddressOverflow { index: 2 }
        );
        assert_eq!(with(1, &|s| s.3 = 0x1000), TdvfError::RawLargerThanMemory { index: 1 });
        assert_eq!(with(1, &|s| s.1 = 0), TdvfError::DataNotAllowed { index: 1, ty: SectionType::Cfv });
        assert_eq!(with(3, &|s| s.1 = 0x10), TdvfError::DataNotAllowed { index: 3, ty: SectionType::TdHob });
        assert_eq!(with(1, &|s| s.0 = SIZE as u32 - 0x1000), TdvfError::DataOutOfFile { index: 1 });
        assert_eq!(with(1, &|s| s.0 = u32::MAX), TdvfError::DataOutOfFile { index: 1 });
        assert_eq!(with(3, &|s| s.2 = 0x80_2000), TdvfError::Overlap { index: 3, other: 2 });
        assert_eq!(with(1, &|s| s.2 = 0xFFFF_F000), TdvfError::Overlap { index: 1, other: 0 });
        assert_eq!(with(2, &|s| s.3 = MAX_TOTAL_BYTES), TdvfError::TooLarge { index: 2 });
        let mut no_bfv = g;
        no_bfv[0].4 = CFV;
        no_bfv[0].5 = 0;
        assert_eq!(err(&no_bfv), TdvfError::NoBfv);
        let mut two_hobs = g;
        two_hobs[2].4 = HOB;
        assert_eq!(err(&two_hobs), TdvfError::SecondTdHob { index: 3 });
        // Every error says something.
        for e in [TdvfError::NoMetadata, TdvfError::DataNotAllowed { index: 0, ty: SectionType::Bfv }] {
            assert!(!std::string::ToString::to_string(&e).is_empty());
        }
    }

    /// Debian's OVMF.fd (package ovmf 2022.11-6+deb12u2), as `./run.sh setup` installs it.
    pub const DEBIAN_OVMF: &str = "/usr/share/ovmf/OVMF.fd";

    #[test]
    fn debians_ovmf_table_is_the_one_edk2_2022_11_writes() {
        let Ok(b) = std::fs::read(DEBIAN_OVMF) else {
            std::eprintln!("skipped: {DEBIAN_OVMF} is absent (`./run.sh setup` installs Debian's ovmf package)");
            return;
        };
        let t = Tdvf::parse(&b).unwrap();
        assert_eq!(b.len(), 0x20_0000);
        assert_eq!(t.descriptor_offset(), 0x1F_F7C0);
        let got: std::vec::Vec<_> =
            t.sections().map(|s| (s.ty, s.data_offset, s.raw_size, s.gpa, s.size, s.attributes)).collect();
        use SectionType::*;
        assert_eq!(
            got,
            [
                (Bfv, 0x2_0000, 0x1E_0000, 0xFFE2_0000, 0x1E_0000, 1),
                (Cfv, 0, 0x2_0000, 0xFFE0_0000, 0x2_0000, 0),
                (TempMem, 0, 0, 0x81_0000, 0x1_0000, 0),
                (TempMem, 0, 0, 0x80_B000, 0x2000, 0),
                (TdHob, 0, 0, 0x80_9000, 0x2000, 0),
                (TempMem, 0, 0, 0x80_0000, 0x6000, 0),
            ]
        );
        assert_eq!(t.page_counts(), (0x200 + 0x10 + 2 + 2 + 6, 0x1E0));
        // The BFV's last page holds the reset vector, copied from the file's end.
        let bfv = t.sections().next().unwrap();
        let (gpa, top) = t.page(&bfv, bfv.pages() - 1);
        assert_eq!((gpa, &top[..]), (0xFFFF_F000, &b[0x1F_F000..]));
    }

    #[test]
    fn debians_4m_builds_have_no_tdvf_metadata() {
        let path = "/usr/share/OVMF/OVMF_CODE_4M.fd";
        let Ok(b) = std::fs::read(path) else {
            std::eprintln!("skipped: {path} is absent (`./run.sh setup` installs Debian's ovmf package)");
            return;
        };
        assert!(looks_like_ovmf(&b));
        assert_eq!(Tdvf::parse(&b), Err(TdvfError::NoMetadata));
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(
            tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400),
            sections in proptest::collection::vec(proptest::prelude::any::<(u32, u32, u64, u64, u8, u8)>(), 0..6),
            small in proptest::prelude::any::<bool>(),
        ) {
            // Random bytes, and well-framed tables with random section fields (small values so
            // that checks past the first few are reached).
            let _ = Tdvf::parse(&tail);
            let s: std::vec::Vec<_> = sections
                .iter()
                .map(|&(o, r, g, m, t, a)| {
                    if small {
                        (o % 0x1_2000, r % 0x1_2000, (g % 0x10) << 12, (m % 0x10) << 12, u32::from(t % 5), u32::from(a % 3))
                    } else {
                        (o, r, g, m, u32::from(t), u32::from(a))
                    }
                })
                .collect();
            let b = image(&s);
            if let Ok(t) = Tdvf::parse(&b) {
                let _ = t.mrtd();
                for sec in t.sections() {
                    proptest::prop_assert!(u64::from(sec.data_offset) + u64::from(sec.raw_size) <= b.len() as u64);
                }
            }
        }
    }
}
