//! The SPDM 1.2+ key schedule (DSP0274 §12) with the negotiated hash (SHA-256 or SHA-384, `H`
//! its size) and AEAD (AES-128-GCM or AES-256-GCM, `K` its key size):
//!
//! ```text
//! BinConcat(L, label, ctx) = L u16 LE ‖ "spdm1.N " ‖ label ‖ ctx
//! handshake_secret = HKDF-Extract(0^H, ECDH shared secret)
//! {req,rsp}_hs     = HKDF-Expand(handshake_secret, BinConcat(H, "{req,rsp} hs data", H(TH1)))
//! master_secret    = HKDF-Extract(HKDF-Expand(handshake_secret, BinConcat(H, "derived")), 0^H)
//! {req,rsp}_app    = HKDF-Expand(master_secret, BinConcat(H, "{req,rsp} app data", H(TH2)))
//! key / iv         = HKDF-Expand(S, BinConcat(K, "key")) / HKDF-Expand(S, BinConcat(12, "iv"))
//! finished_key     = HKDF-Expand({req,rsp}_hs, BinConcat(H, "finished"))
//! KEY_UPDATE       : S' = HKDF-Expand(S, BinConcat(H, "traffic upd"))
//! ```

use hkdf::Hkdf;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Sha256, Sha384};

use crate::spdm::suite::{Aead, BaseHash, Secret, Suite, MAX_HASH};

/// Hash and secret size of the TSM's default suite (SHA-384).
pub const H: usize = 48;
/// Bytes of the largest AES-GCM key (AES-256).
pub const KEY_BYTES: usize = 32;
/// AES-GCM IV size.
pub const IV_BYTES: usize = 12;

/// Longest BinConcat: 2 + 8 + the longest label (12) + a hash.
const BIN_MAX: usize = 2 + 8 + 12 + MAX_HASH;

/// What the schedule depends on: the SPDM version (in every label), the negotiated hash (HKDF
/// and the secrets' size) and the AEAD (the keys' size).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schedule {
    /// SPDM version (0x12, 0x13).
    pub version: u8,
    /// BaseHashSel.
    pub hash: BaseHash,
    /// The session cipher.
    pub aead: Aead,
}

impl Schedule {
    /// The schedule of `suite` at `version`.
    pub const fn new(version: u8, suite: &Suite) -> Schedule {
        Schedule { version, hash: suite.hash, aead: suite.aead }
    }

    /// SHA-384 and AES-256-GCM at `version`.
    pub const fn p384(version: u8) -> Schedule {
        Schedule::new(version, &Suite::P384)
    }

    fn expand(&self, secret: &[u8], label: &[u8], context: &[u8], out: &mut [u8]) {
        let (info, len) = bin_concat(self.version, out.len() as u16, label, context);
        // A hash-sized secret is a valid PRK and every output is far below 255 hashes: neither
        // call can fail.
        match self.hash {
            BaseHash::Sha256 => {
                if let Ok(hk) = Hkdf::<Sha256>::from_prk(secret) {
                    let _ = hk.expand(&info[..len], out);
                }
            }
            BaseHash::Sha384 => {
                if let Ok(hk) = Hkdf::<Sha384>::from_prk(secret) {
                    let _ = hk.expand(&info[..len], out);
                }
            }
        }
    }

    /// HKDF-Expand to a hash-sized secret.
    fn expand_secret(&self, secret: &[u8], label: &[u8], context: &[u8]) -> Secret {
        let mut out = [0u8; MAX_HASH];
        let n = self.hash.bytes();
        self.expand(secret, label, context, &mut out[..n]);
        let s = Secret::new(&out[..n]);
        out.fill(0);
        s
    }

    fn extract(&self, salt: &[u8], ikm: &[u8]) -> Secret {
        match self.hash {
            BaseHash::Sha256 => Secret::new(&Hkdf::<Sha256>::extract(Some(salt), ikm).0),
            BaseHash::Sha384 => Secret::new(&Hkdf::<Sha384>::extract(Some(salt), ikm).0),
        }
    }

    fn hmac(&self, key: &[u8], data: &[u8]) -> Secret {
        match self.hash {
            BaseHash::Sha256 => match <Hmac<Sha256> as KeyInit>::new_from_slice(key) {
                Ok(mut mac) => {
                    mac.update(data);
                    Secret::new(&mac.finalize().into_bytes())
                }
                Err(_) => Secret::new(&[]),
            },
            BaseHash::Sha384 => match <Hmac<Sha384> as KeyInit>::new_from_slice(key) {
                Ok(mut mac) => {
                    mac.update(data);
                    Secret::new(&mac.finalize().into_bytes())
                }
                Err(_) => Secret::new(&[]),
            },
        }
    }

    fn zeros(&self) -> [u8; MAX_HASH] {
        [0u8; MAX_HASH]
    }
}

/// `BinConcat(length, label, context)` for SPDM `version` (0x12 → "spdm1.2 ").
pub fn bin_concat(version: u8, length: u16, label: &[u8], context: &[u8]) -> ([u8; BIN_MAX], usize) {
    let mut b = [0u8; BIN_MAX];
    b[0..2].copy_from_slice(&length.to_le_bytes());
    b[2..10].copy_from_slice(b"spdm1.2 ");
    b[8] = b'0' + (version & 0x0F);
    let l = label.len().min(12);
    b[10..10 + l].copy_from_slice(&label[..l]);
    let c = context.len().min(MAX_HASH);
    b[10 + l..10 + l + c].copy_from_slice(&context[..c]);
    (b, 10 + l + c)
}

/// The key and IV of one direction and phase, with its sequence number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirectionKeys {
    /// The schedule the keys come from.
    pub schedule: Schedule,
    /// The secret the key and IV come from (kept for KEY_UPDATE).
    pub secret: Secret,
    /// AES-GCM key: the first `schedule.aead.key_bytes()` bytes.
    pub key: [u8; KEY_BYTES],
    /// IV salt; the sequence number is XORed into its first 8 bytes.
    pub iv: [u8; IV_BYTES],
    /// Messages protected so far with this key (DSP0277 sequence number).
    pub sequence: u64,
}

impl DirectionKeys {
    /// Keys derived from `secret`, sequence number 0.
    pub fn from_secret(schedule: Schedule, secret: &[u8]) -> DirectionKeys {
        let mut key = [0u8; KEY_BYTES];
        schedule.expand(secret, b"key", &[], &mut key[..schedule.aead.key_bytes()]);
        let mut iv = [0u8; IV_BYTES];
        schedule.expand(secret, b"iv", &[], &mut iv);
        DirectionKeys { schedule, secret: Secret::new(secret), key, iv, sequence: 0 }
    }

    /// The AES-GCM key.
    pub fn key(&self) -> &[u8] {
        &self.key[..self.schedule.aead.key_bytes()]
    }

    /// KEY_UPDATE: the next secret, its key and IV, sequence number back to 0.
    pub fn updated(&self) -> DirectionKeys {
        let next = self.schedule.expand_secret(&self.secret, b"traffic upd", &[]);
        DirectionKeys::from_secret(self.schedule, &next)
    }

    /// The IV for the current sequence number (little-endian into bytes 0..8, DSP0277 1.2).
    pub fn nonce(&self) -> [u8; IV_BYTES] {
        let mut n = self.iv;
        for (b, s) in n.iter_mut().zip(self.sequence.to_le_bytes()) {
            *b ^= s;
        }
        n
    }
}

/// The handshake phase: secrets from the ECDH shared secret and H(TH1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandshakeKeys {
    schedule: Schedule,
    handshake_secret: Secret,
    /// Requester → responder.
    pub request: DirectionKeys,
    /// Responder → requester.
    pub response: DirectionKeys,
}

impl HandshakeKeys {
    /// Derives the handshake keys.
    pub fn derive(schedule: Schedule, shared_secret: &[u8], th1_hash: &[u8]) -> HandshakeKeys {
        let zeros = schedule.zeros();
        let handshake_secret = schedule.extract(&zeros[..schedule.hash.bytes()], shared_secret);
        let req = schedule.expand_secret(&handshake_secret, b"req hs data", th1_hash);
        let rsp = schedule.expand_secret(&handshake_secret, b"rsp hs data", th1_hash);
        HandshakeKeys {
            schedule,
            handshake_secret,
            request: DirectionKeys::from_secret(schedule, &req),
            response: DirectionKeys::from_secret(schedule, &rsp),
        }
    }

    /// The finished key of the requester (`true`) or responder.
    pub fn finished_key(&self, requester: bool) -> Secret {
        let secret = if requester { &self.request.secret } else { &self.response.secret };
        self.schedule.expand_secret(secret, b"finished", &[])
    }

    /// HMAC of `transcript_hash` under the finished key of the requester (`true`) or responder:
    /// RequesterVerifyData / ResponderVerifyData.
    pub fn verify_data(&self, requester: bool, transcript_hash: &[u8]) -> Secret {
        self.schedule.hmac(&self.finished_key(requester), transcript_hash)
    }

    /// The data phase: secrets from the master secret and H(TH2).
    pub fn application(&self, th2_hash: &[u8]) -> ApplicationKeys {
        let s = &self.schedule;
        let n = s.hash.bytes();
        let salt1 = s.expand_secret(&self.handshake_secret, b"derived", &[]);
        let master = s.extract(&salt1, &s.zeros()[..n]);
        let req = s.expand_secret(&master, b"req app data", th2_hash);
        let rsp = s.expand_secret(&master, b"rsp app data", th2_hash);
        ApplicationKeys {
            request: DirectionKeys::from_secret(*s, &req),
            response: DirectionKeys::from_secret(*s, &rsp),
            export_master: s.expand_secret(&master, b"exp master", th2_hash),
        }
    }
}

/// The data phase keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApplicationKeys {
    /// Requester → responder.
    pub request: DirectionKeys,
    /// Responder → requester.
    pub response: DirectionKeys,
    /// The export master secret.
    pub export_master: Secret,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bin_concat_matches_the_reference_bytes() {
        let (b, n) = bin_concat(0x12, 32, b"key", &[]);
        assert_eq!(&b[..n], &[0x20, 0x00, 0x73, 0x70, 0x64, 0x6d, 0x31, 0x2e, 0x32, 0x20, 0x6b, 0x65, 0x79]);
        let (b, n) = bin_concat(0x12, 48, b"finished", &[]);
        assert_eq!(&b[..n], b"\x30\x00spdm1.2 finished");
        let (b, n) = bin_concat(0x13, 48, b"req hs data", &[0xAB; 48]);
        assert_eq!(&b[..12], b"\x30\x00spdm1.3 re");
        assert_eq!(n, 2 + 8 + 11 + 48);
        assert_eq!(&b[21..n], &[0xAB; 48]);
    }

    #[test]
    fn the_schedule_separates_directions_phases_and_transcripts() {
        let hs = HandshakeKeys::derive(Schedule::p384(0x12), &[1; 48], &[2; 48]);
        assert_ne!(hs.request.key, hs.response.key);
        assert_ne!(hs.request.iv, hs.response.iv);
        let again = HandshakeKeys::derive(Schedule::p384(0x12), &[1; 48], &[2; 48]);
        assert_eq!(hs, again, "deterministic");
        assert_ne!(hs, HandshakeKeys::derive(Schedule::p384(0x12), &[1; 48], &[3; 48]), "bound to TH1");
        assert_ne!(hs, HandshakeKeys::derive(Schedule::p384(0x13), &[1; 48], &[2; 48]), "bound to the version");
        let app = hs.application(&[4; 48]);
        assert_ne!(app.request.key, hs.request.key);
        assert_ne!(app.request.key, hs.application(&[5; 48]).request.key, "bound to TH2");
        assert_ne!(hs.verify_data(true, &[9; 48]), hs.verify_data(false, &[9; 48]));
        let up = app.request.updated();
        assert_ne!(up.key, app.request.key);
        assert_eq!(up.sequence, 0);
    }

    #[test]
    fn the_sequence_number_goes_into_the_iv_little_endian() {
        let mut k = DirectionKeys::from_secret(Schedule::p384(0x12), &[7; 48]);
        assert_eq!(k.nonce(), k.iv);
        k.sequence = 0x0102;
        let n = k.nonce();
        assert_eq!(n[0], k.iv[0] ^ 0x02);
        assert_eq!(n[1], k.iv[1] ^ 0x01);
        assert_eq!(n[2..], k.iv[2..]);
    }

    #[test]
    fn the_p256_suite_schedules_with_sha256_and_aes128() {
        let s = Schedule::new(0x12, &Suite::P256);
        let hs = HandshakeKeys::derive(s, &[1; 32], &[2; 32]);
        assert_eq!(hs.request.secret.len(), 32);
        assert_eq!(hs.request.key().len(), 16);
        assert_eq!(hs.request.key[16..], [0; 16], "only the AES-128 key is drawn");
        assert_eq!(hs.verify_data(true, &[9; 32]).len(), 32);
        let app = hs.application(&[4; 32]);
        assert_eq!(app.export_master.len(), 32);
        assert_eq!(app.request.updated().key().len(), 16);
        let other = HandshakeKeys::derive(Schedule::p384(0x12), &[1; 32], &[2; 32]);
        assert_ne!(hs.request.secret[..], other.request.secret[..32], "HKDF-SHA-256, not SHA-384 cut short");
        // HKDF-SHA-256 by hand: handshake_secret = HMAC-SHA-256(0^32, shared).
        use hmac::{Hmac, KeyInit, Mac};
        let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(&[0; 32]).unwrap();
        mac.update(&[1; 32]);
        let prk = mac.finalize().into_bytes();
        let (info, n) = bin_concat(0x12, 32, b"req hs data", &[2; 32]);
        let mut okm = [0u8; 32];
        hkdf::Hkdf::<sha2::Sha256>::from_prk(&prk).unwrap().expand(&info[..n], &mut okm).unwrap();
        assert_eq!(hs.request.secret[..], okm);
    }
}
