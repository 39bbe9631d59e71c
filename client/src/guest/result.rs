//! What the guest hands out with the RESULT request ([`crate::vmcall::RESULT`], R11 the kind):
//! one `#[repr(C)]` record per kind in the shared page, little-endian fields of alignment 1 so
//! that any byte string of the right length is a record and the host reads it with one
//! `read_from_bytes`, which checks the length. Nothing in a record is trusted by the host
//! beyond printing it and checking it against what it knows itself.

use zerocopy::byteorder::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// A result record: its kind (R11 of the request) and its bytes.
pub trait Record: IntoBytes + FromBytes + Immutable + KnownLayout {
    /// R11 of the RESULT request.
    const KIND: u64;

    /// The record's bytes, as they travel (the host also frames them on COM3 for the launcher).
    fn bytes(&self) -> &[u8] {
        self.as_bytes()
    }
}

/// The device's registers as the guest read them through its MMIO_MAPPED leaves.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct Registers {
    /// NVMe CAP (offset 0, two 32-bit loads).
    pub cap: U64,
    /// NVMe VS (offset 8).
    pub vs: U32,
}

const _: () = assert!(core::mem::size_of::<Registers>() == 12);

impl Registers {
    /// The record of `cap` and `vs`.
    pub fn new(cap: u64, vs: u32) -> Registers {
        Registers { cap: U64::new(cap), vs: U32::new(vs) }
    }
}

impl Record for Registers {
    const KIND: u64 = 1;
}

/// The TD's read of the drive (`super::disk`): what Identify said, and the READs into its
/// private pages, timed in the TD with RDTSC over the commands only.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct DiskRead {
    /// Identify Namespace 1: size in blocks.
    pub ns_blocks: U64,
    /// Blocks read from LBA 0.
    pub read_blocks: U64,
    /// TSC ticks in the READ commands (doorbell to last completion, per batch, summed).
    pub ticks: U64,
    /// Identify Namespace 1: block size in bytes.
    pub block_bytes: U32,
    /// Identify Controller: PCI vendor id.
    pub vid: U16,
    /// 1 if the digest is the drive's known content (`attest::disk`), as the TD checked it.
    pub matches: u8,
    /// Zero.
    pub reserved: u8,
    /// Identify Controller: serial number.
    pub serial: [u8; 20],
    /// Identify Controller: model number.
    pub model: [u8; 40],
    /// SHA-384 of the blocks read.
    pub digest: [u8; 48],
}

const _: () = assert!(core::mem::size_of::<DiskRead>() == 140);

impl Record for DiskRead {
    const KIND: u64 = 2;
}

/// The TD's READs into pages its device must not reach (`super::disk::STRAY`): the completion
/// statuses, and where its fault log stood before them.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct Strays {
    /// Faults recorded before the first stray READ (SEAMLESS.TDG.IOMMU.FAULT.RD's count).
    pub before: U64,
    /// Each READ's completion status, in `STRAY` order.
    pub statuses: [U16; 3],
}

const _: () = assert!(core::mem::size_of::<Strays>() == 14);

impl Record for Strays {
    const KIND: u64 = 3;
}

/// What the TD's own look at its fault log (SEAMLESS.TDG.IOMMU.FAULT.RD) found after the stray
/// READs.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct FaultsSeen {
    /// Records of its own device since `Strays::before`.
    pub seen: U64,
    /// Bit i set: a record names stray page i.
    pub named: u8,
}

const _: () = assert!(core::mem::size_of::<FaultsSeen>() == 9);

impl Record for FaultsSeen {
    const KIND: u64 = 4;
}

/// One case of the differential test (`super::disk::differential`): what the TD saw of its READ.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct DiffCase {
    /// The case's index.
    pub case: u8,
    /// 1 if the command completed (with any status), 0 if it never did.
    pub completed: u8,
    /// [`LANDED`], [`NOT_LANDED`] or [`UNREADABLE`] (a page the TD cannot read back).
    pub landed: u8,
}

/// The page holds the drive's first 4 KiB.
pub const LANDED: u8 = 1;
/// The page still holds the TD's marker.
pub const NOT_LANDED: u8 = 0;
/// The TD cannot read the page (not its private memory).
pub const UNREADABLE: u8 = 2;

impl Record for DiffCase {
    const KIND: u64 = 5;
}

/// The revocation case: READs into every data page are outstanding.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct ReadsOutstanding {
    /// READs queued.
    pub reads: U32,
}

impl Record for ReadsOutstanding {
    const KIND: u64 = 6;
}

/// The revocation case, once the device was done: what landed before the revoke returned, what
/// landed after, and the refusals the TD's fault log shows since.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct Revoked {
    /// Pages the READs went to.
    pub pages: U32,
    /// Pages holding drive data (not the marker) when the revoke returned.
    pub landed: U32,
    /// Pages that changed after it returned.
    pub late: U32,
    /// Fault records of its device since the READs were queued.
    pub refused: U32,
    /// TDG.TDI.RD's state of the TDI afterwards.
    pub state: U64,
}

const _: () = assert!(core::mem::size_of::<Revoked>() == 24);

impl Record for Revoked {
    const KIND: u64 = 7;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back_from_exactly_its_bytes() {
        let r = Registers::new(0x0040_0820_0f01_07ff, 0x0001_0400);
        let bytes = r.as_bytes();
        assert_eq!(bytes.len(), 12);
        assert_eq!(Registers::read_from_bytes(bytes).ok(), Some(r));
        assert!(Registers::read_from_bytes(&bytes[..11]).is_err(), "a short record is refused");
    }
}
