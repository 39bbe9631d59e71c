//! The layout of the page the guest and the host exchange a VMCALL's data through:
//! `[length: u64 LE][data]`. Both sides use these two functions, so the layout exists once; each
//! side trusts nothing it reads there.

use crate::PAGE;

/// Bytes of data the page holds at most.
pub const CAPACITY: usize = PAGE as usize - 8;

/// The length word to write and the data's part that fits.
pub fn frame(data: &[u8]) -> (u64, &[u8]) {
    let n = data.len().min(CAPACITY);
    (n as u64, &data[..n])
}

/// Checks a length word read from the page against the page and a buffer of `room` bytes.
///
/// # Errors
/// The length itself, if it does not fit.
pub fn checked_len(len: u64, room: usize) -> Result<usize, u64> {
    match usize::try_from(len) {
        Ok(n) if n <= CAPACITY && n <= room => Ok(n),
        _ => Err(len),
    }
}
