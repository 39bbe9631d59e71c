//! The cryptographic suites the TSM negotiates, and the TSM's floor.
//!
//! A suite is what ALGORITHMS selects (DSP0274 1.2 §10.4): the device's signing algorithm
//! (BaseAsymSel), the transcript hash (BaseHashSel), the ECDHE group (DHE) and the session cipher
//! (AEAD). The TSM offers these and accepts any combination of them the responder picks:
//!
//! | field       | offered                      | bits          |
//! |-------------|------------------------------|---------------|
//! | BaseAsym    | ECDSA P-256, ECDSA P-384     | 0x10, 0x80    |
//! | BaseHash    | SHA-256, SHA-384             | 0x01, 0x02    |
//! | DHE         | secp256r1, secp384r1         | 0x08, 0x10    |
//! | AEAD        | AES-128-GCM, AES-256-GCM     | 0x01, 0x02    |
//!
//! **The floor** is the 128-bit security level: nothing weaker than P-256, SHA-256 and
//! AES-128-GCM is ever offered, so a responder that selects anything else (RSA, SHA-1-era or
//! unknown bits, ChaCha20-Poly1305, SM2/SM3/SM4, Ed25519/Ed448) fails negotiation with
//! `BadSelection` naming the field. The floor is a constant of the TSM, not an operand: the host
//! chooses no algorithm in SPDM.CONNECT, so it cannot weaken it. RSASSA-3072 and RSAPSS-3072
//! would meet the floor but are refused too: the TSM carries no RSA verifier (no heap, no
//! bignum), and a 384-byte signature does not fit its fixed buffers; a device that offers only
//! RSA fails with `BadSelection { field: "BaseAsymSel", .. }`.

use core::ops::Deref;

use sha2::{Digest as _, Sha256, Sha384};

/// Bytes of the largest hash (SHA-384).
pub const MAX_HASH: usize = 48;
/// Bytes of the largest signature (P-384 `r ‖ s`).
pub const MAX_SIGNATURE: usize = 96;
/// Bytes of the largest ECDHE public key (secp384r1 `X ‖ Y`).
pub const MAX_EXCHANGE: usize = 96;

/// The device's signing algorithm (BaseAsymSel).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Asym {
    /// TPM_ALG_ECDSA_ECC_NIST_P256 (bit 4).
    EcdsaP256,
    /// TPM_ALG_ECDSA_ECC_NIST_P384 (bit 7).
    EcdsaP384,
}

impl Asym {
    /// Every signing algorithm the TSM offers.
    pub const OFFERED: u32 = 0x10 | 0x80;

    /// The responder's selection: exactly one offered bit.
    pub const fn from_selection(bits: u32) -> Option<Asym> {
        match bits {
            0x10 => Some(Asym::EcdsaP256),
            0x80 => Some(Asym::EcdsaP384),
            _ => None,
        }
    }

    /// Its bit.
    pub const fn bit(self) -> u32 {
        match self {
            Asym::EcdsaP256 => 0x10,
            Asym::EcdsaP384 => 0x80,
        }
    }

    /// Bytes of a signature (`r ‖ s`).
    pub const fn signature_bytes(self) -> usize {
        match self {
            Asym::EcdsaP256 => 64,
            Asym::EcdsaP384 => 96,
        }
    }
}

/// The transcript hash (BaseHashSel).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BaseHash {
    /// TPM_ALG_SHA_256 (bit 0).
    Sha256,
    /// TPM_ALG_SHA_384 (bit 1).
    Sha384,
}

impl BaseHash {
    /// Every hash the TSM offers.
    pub const OFFERED: u32 = 0x01 | 0x02;

    /// The responder's selection: exactly one offered bit.
    pub const fn from_selection(bits: u32) -> Option<BaseHash> {
        match bits {
            0x01 => Some(BaseHash::Sha256),
            0x02 => Some(BaseHash::Sha384),
            _ => None,
        }
    }

    /// Its bit.
    pub const fn bit(self) -> u32 {
        match self {
            BaseHash::Sha256 => 0x01,
            BaseHash::Sha384 => 0x02,
        }
    }

    /// Bytes of a digest.
    pub const fn bytes(self) -> usize {
        match self {
            BaseHash::Sha256 => 32,
            BaseHash::Sha384 => 48,
        }
    }

    /// The digest of `data`.
    pub fn digest(self, data: &[u8]) -> Secret {
        let mut t = Transcript::new(self);
        t.update(data);
        t.finalize()
    }
}

/// The ECDHE group (the DHE algorithm structure).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dhe {
    /// SECP_256_R1 (bit 3).
    Secp256r1,
    /// SECP_384_R1 (bit 4).
    Secp384r1,
}

impl Dhe {
    /// Every group the TSM offers.
    pub const OFFERED: u16 = 0x08 | 0x10;

    /// The responder's selection: exactly one offered bit.
    pub const fn from_selection(bits: u16) -> Option<Dhe> {
        match bits {
            0x08 => Some(Dhe::Secp256r1),
            0x10 => Some(Dhe::Secp384r1),
            _ => None,
        }
    }

    /// Its bit.
    pub const fn bit(self) -> u16 {
        match self {
            Dhe::Secp256r1 => 0x08,
            Dhe::Secp384r1 => 0x10,
        }
    }

    /// Bytes of an ExchangeData public key (`X ‖ Y`).
    pub const fn exchange_bytes(self) -> usize {
        match self {
            Dhe::Secp256r1 => 64,
            Dhe::Secp384r1 => 96,
        }
    }
}

/// The session cipher (the AEAD algorithm structure).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Aead {
    /// AES-128-GCM (bit 0).
    Aes128Gcm,
    /// AES-256-GCM (bit 1).
    Aes256Gcm,
}

impl Aead {
    /// Every cipher the TSM offers.
    pub const OFFERED: u16 = 0x01 | 0x02;

    /// The responder's selection: exactly one offered bit.
    pub const fn from_selection(bits: u16) -> Option<Aead> {
        match bits {
            0x01 => Some(Aead::Aes128Gcm),
            0x02 => Some(Aead::Aes256Gcm),
            _ => None,
        }
    }

    /// Its bit.
    pub const fn bit(self) -> u16 {
        match self {
            Aead::Aes128Gcm => 0x01,
            Aead::Aes256Gcm => 0x02,
        }
    }

    /// Bytes of a key.
    pub const fn key_bytes(self) -> usize {
        match self {
            Aead::Aes128Gcm => 16,
            Aead::Aes256Gcm => 32,
        }
    }
}

/// What ALGORITHMS settled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Suite {
    /// The device's signatures.
    pub asym: Asym,
    /// Transcripts, the key schedule, HMACs, the chain's hash.
    pub hash: BaseHash,
    /// The session's ECDHE group.
    pub dhe: Dhe,
    /// The session's cipher.
    pub aead: Aead,
}

impl Suite {
    /// ECDSA P-384, SHA-384, secp384r1, AES-256-GCM (CNSA 1.0; the TSM's own device's default).
    pub const P384: Suite =
        Suite { asym: Asym::EcdsaP384, hash: BaseHash::Sha384, dhe: Dhe::Secp384r1, aead: Aead::Aes256Gcm };
    /// ECDSA P-256, SHA-256, secp256r1, AES-128-GCM (the suite many PCIe devices ship).
    pub const P256: Suite =
        Suite { asym: Asym::EcdsaP256, hash: BaseHash::Sha256, dhe: Dhe::Secp256r1, aead: Aead::Aes128Gcm };
}

/// A value the size of the negotiated hash (a digest, a secret, an HMAC), up to 48 bytes; it
/// reads as its bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Secret {
    bytes: [u8; MAX_HASH],
    len: u8,
}

impl Secret {
    /// The first `len` bytes of `bytes` (all of them if `len` is larger).
    pub fn new(bytes: &[u8]) -> Secret {
        let mut s = Secret { bytes: [0; MAX_HASH], len: 0 };
        let n = bytes.len().min(MAX_HASH);
        s.bytes[..n].copy_from_slice(&bytes[..n]);
        s.len = n as u8;
        s
    }
}

impl Deref for Secret {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl AsRef<[u8]> for Secret {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl core::fmt::Debug for Secret {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Secret({} bytes)", self.len)
    }
}

/// A running transcript hash in the negotiated algorithm.
#[derive(Clone, Debug)]
pub enum Transcript {
    /// SHA-256.
    Sha256(Sha256),
    /// SHA-384.
    Sha384(Sha384),
}

impl Default for Transcript {
    fn default() -> Self {
        Transcript::new(BaseHash::Sha384)
    }
}

impl Transcript {
    /// An empty transcript.
    pub fn new(hash: BaseHash) -> Transcript {
        match hash {
            BaseHash::Sha256 => Transcript::Sha256(Sha256::new()),
            BaseHash::Sha384 => Transcript::Sha384(Sha384::new()),
        }
    }

    /// A transcript that starts with `data`.
    pub fn with_prefix(hash: BaseHash, data: &[u8]) -> Transcript {
        let mut t = Transcript::new(hash);
        t.update(data);
        t
    }

    /// Which hash.
    pub fn algorithm(&self) -> BaseHash {
        match self {
            Transcript::Sha256(_) => BaseHash::Sha256,
            Transcript::Sha384(_) => BaseHash::Sha384,
        }
    }

    /// Appends `data`.
    pub fn update(&mut self, data: impl AsRef<[u8]>) {
        match self {
            Transcript::Sha256(h) => h.update(data.as_ref()),
            Transcript::Sha384(h) => h.update(data.as_ref()),
        }
    }

    /// The digest so far (the transcript itself goes on).
    pub fn current(&self) -> Secret {
        self.clone().finalize()
    }

    /// The digest.
    pub fn finalize(self) -> Secret {
        match self {
            Transcript::Sha256(h) => Secret::new(&h.finalize()),
            Transcript::Sha384(h) => Secret::new(&h.finalize()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selections_take_exactly_one_offered_bit() {
        assert_eq!(Asym::from_selection(0x10), Some(Asym::EcdsaP256));
        assert_eq!(Asym::from_selection(0x80), Some(Asym::EcdsaP384));
        for refused in [0, 0x01, 0x02, 0x04, 0x08, 0x20, 0x40, 0x90, 0x100, 0x200, 0x400] {
            assert_eq!(Asym::from_selection(refused), None, "{refused:#x}");
        }
        assert_eq!(BaseHash::from_selection(0x01), Some(BaseHash::Sha256));
        assert_eq!(BaseHash::from_selection(0x02), Some(BaseHash::Sha384));
        for refused in [0, 0x03, 0x04, 0x08, 0x10] {
            assert_eq!(BaseHash::from_selection(refused), None);
        }
        assert_eq!(Dhe::from_selection(0x08), Some(Dhe::Secp256r1));
        assert_eq!(Dhe::from_selection(0x10), Some(Dhe::Secp384r1));
        for refused in [0, 0x01, 0x02, 0x04, 0x18, 0x20, 0x40] {
            assert_eq!(Dhe::from_selection(refused), None);
        }
        assert_eq!(Aead::from_selection(0x01), Some(Aead::Aes128Gcm));
        assert_eq!(Aead::from_selection(0x02), Some(Aead::Aes256Gcm));
        for refused in [0, 0x03, 0x04, 0x08] {
            assert_eq!(Aead::from_selection(refused), None);
        }
        for s in [Suite::P256, Suite::P384] {
            assert_eq!(Asym::from_selection(s.asym.bit()), Some(s.asym));
            assert_eq!(BaseHash::from_selection(s.hash.bit()), Some(s.hash));
            assert_eq!(Dhe::from_selection(s.dhe.bit()), Some(s.dhe));
            assert_eq!(Aead::from_selection(s.aead.bit()), Some(s.aead));
        }
    }

    #[test]
    fn transcripts_hash_with_the_negotiated_algorithm() {
        let t = Transcript::with_prefix(BaseHash::Sha256, b"abc");
        assert_eq!(&t.current()[..], &Sha256::digest(b"abc")[..]);
        assert_eq!(t.current().len(), 32);
        let t = Transcript::with_prefix(BaseHash::Sha384, b"abc");
        assert_eq!(&t.finalize()[..], &Sha384::digest(b"abc")[..]);
        assert_eq!(BaseHash::Sha256.digest(b"x").len(), 32);
    }
}
