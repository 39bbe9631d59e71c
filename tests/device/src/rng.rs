//! The device's random numbers: a deterministic generator (HMAC-SHA-384 in counter mode over a
//! seed), so a test that fixes the seed sees the same nonces, keys and certificates every run.
//! The binary seeds it from the OS. It is an emulator's generator, not a DRBG for production.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha384;

/// Counter-mode HMAC-SHA-384 over a 32-byte seed.
#[derive(Clone, Debug)]
pub struct Rng {
    seed: [u8; 32],
    counter: u64,
}

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: [u8; 32]) -> Rng {
        Rng { seed, counter: 0 }
    }

    /// Fills `out`.
    pub fn fill(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(48) {
            let block = match <Hmac<Sha384> as KeyInit>::new_from_slice(&self.seed) {
                Ok(mut mac) => {
                    mac.update(&self.counter.to_le_bytes());
                    mac.finalize().into_bytes()
                }
                // HMAC takes keys of any length: unreachable, but never panic.
                Err(_) => Default::default(),
            };
            self.counter = self.counter.wrapping_add(1);
            chunk.copy_from_slice(&block[..chunk.len()]);
        }
    }

    /// `N` fresh bytes.
    pub fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut b = [0u8; N];
        self.fill(&mut b);
        b
    }

    /// A P-384 secret scalar (drawn again until it is valid, which is almost always at once).
    pub fn scalar(&mut self) -> p384::NonZeroScalar {
        loop {
            let b: [u8; 48] = self.bytes();
            if let Ok(s) = p384::NonZeroScalar::try_from(&b[..]) {
                return s;
            }
        }
    }

    /// A P-256 secret scalar.
    pub fn scalar256(&mut self) -> p256::NonZeroScalar {
        loop {
            let b: [u8; 32] = self.bytes();
            if let Ok(s) = p256::NonZeroScalar::try_from(&b[..]) {
                return s;
            }
        }
    }
}
