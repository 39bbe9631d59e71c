//! RDRAND as the TSM's entropy source.
//!
//! Intel's DRNG guide: a CF = 0 result is transient (the conditioner is refilling); retrying up
//! to ten times per word makes a failure vanishingly unlikely on a working part, so ten
//! consecutive failures are reported as a failed source, never papered over.

use crate::arch::cpu::{cpuid, rdrand64};

/// Attempts per 64-bit word.
pub const RETRIES: u32 = 10;

/// RDRAND is missing or kept failing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RngError {
    /// CPUID.01H:ECX.RDRAND[bit 30] is clear (QEMU: use `-cpu max`).
    Unsupported,
    /// [`RETRIES`] attempts in a row returned no value.
    Exhausted,
}

/// The RDRAND instruction.
#[derive(Debug)]
pub struct Rdrand(());

impl Rdrand {
    /// RDRAND, if the CPU has it.
    ///
    /// # Errors
    /// [`RngError::Unsupported`] without it.
    pub fn new() -> Result<Rdrand, RngError> {
        if cpuid(1, 0).ecx & (1 << 30) == 0 {
            return Err(RngError::Unsupported);
        }
        Ok(Rdrand(()))
    }

    /// One random word.
    ///
    /// # Errors
    /// [`RngError::Exhausted`] after [`RETRIES`] failures in a row.
    pub fn next_u64(&mut self) -> Result<u64, RngError> {
        for _ in 0..RETRIES {
            if let Some(v) = rdrand64() {
                return Ok(v);
            }
        }
        Err(RngError::Exhausted)
    }

    /// Fills `buf`.
    ///
    /// # Errors
    /// As for [`Rdrand::next_u64`]; `buf` may then be partly written and must not be used.
    pub fn fill(&mut self, buf: &mut [u8]) -> Result<(), RngError> {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64()?.to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        Ok(())
    }
}
