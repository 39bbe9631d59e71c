//! What the guest hands out with the RESULT request ([`crate::vmcall::RESULT`], R11 the kind):
//! one `#[repr(C)]` record per kind in the shared page, little-endian fields of alignment 1 so
//! that any byte string of the right length is a record and the host reads it with one
//! `read_from_bytes`, which checks the length. Nothing in a record is trusted by the host
//! beyond printing it and checking it against what it knows itself.

use zerocopy::byteorder::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// A result record: its kind (R11 of the request) and its bytes.
pub trait Record: IntoBytes + FromBytes + Immutable + KnownLayout {
    /// R11 of the RESULT request.
    const KIND: u64;
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
