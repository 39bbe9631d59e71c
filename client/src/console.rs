//! The TD's console line to the host, one copy of its format for both sides: TDG.VP.VMCALL with
//! R10 = [`crate::host::device::vmcall::CONSOLE`], R11 = the byte count (1..=16) and R12, R13
//! = the bytes, little-endian. The bytes travel in registers because TDG.VP.VMCALL hands the
//! host exactly R10..R13 (docs/abi.md): GHCI's TDVMCALL<IO> needs R14 (port) and R15 (value),
//! which never leave the TD, and the shared page would need the host to map it before the TD
//! can say anything. Sixteen bytes per exit is also an eighth of the exits of a byte-per-call
//! port write. The host trusts nothing in it: the bytes are text for a log.

/// Bytes one call carries at most.
pub const MAX: usize = 16;

/// R11..R13 of a console call for the first [`MAX`] bytes of `bytes`, and how many it carries.
pub fn pack(bytes: &[u8]) -> ([u64; 3], usize) {
    let n = bytes.len().min(MAX);
    let mut b = [0u8; MAX];
    b[..n].copy_from_slice(&bytes[..n]);
    let mut lo = [0u8; 8];
    let mut hi = [0u8; 8];
    lo.copy_from_slice(&b[..8]);
    hi.copy_from_slice(&b[8..]);
    ([n as u64, u64::from_le_bytes(lo), u64::from_le_bytes(hi)], n)
}

/// The bytes of a console call with R11..R13 `args`.
///
/// # Errors
/// The count itself, if it is 0 or above [`MAX`].
pub fn unpack(args: [u64; 3]) -> Result<([u8; MAX], usize), u64> {
    let n = match usize::try_from(args[0]) {
        Ok(n) if (1..=MAX).contains(&n) => n,
        _ => return Err(args[0]),
    };
    let mut b = [0u8; MAX];
    b[..8].copy_from_slice(&args[1].to_le_bytes());
    b[8..].copy_from_slice(&args[2].to_le_bytes());
    Ok((b, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_unpack_round_trip() {
        let (args, n) = pack(b"td: hello");
        assert_eq!((args[0], n), (9, 9));
        let (b, m) = unpack(args).unwrap();
        assert_eq!(&b[..m], b"td: hello");
        let (args, n) = pack(b"0123456789abcdefXYZ");
        assert_eq!(n, MAX, "the rest goes in the next call");
        assert_eq!(unpack(args).unwrap(), (*b"0123456789abcdef", MAX));
    }

    #[test]
    fn unpack_rejects_a_count_that_cannot_be_right() {
        assert_eq!(unpack([0, 0, 0]), Err(0));
        assert_eq!(unpack([17, 0, 0]), Err(17));
        assert_eq!(unpack([u64::MAX, 0, 0]), Err(u64::MAX));
    }
}
