//! The SPDM 1.2+ key schedule (DSP0274 §12), SHA-384 and AES-256-GCM:
//!
//! ```text
//! BinConcat(L, label, ctx) = L u16 LE ‖ "spdm1.N " ‖ label ‖ ctx
//! handshake_secret = HKDF-Extract(0^48, ECDH shared secret)
//! {req,rsp}_hs     = HKDF-Expand(handshake_secret, BinConcat(48, "{req,rsp} hs data", H(TH1)))
//! master_secret    = HKDF-Extract(HKDF-Expand(handshake_secret, BinConcat(48, "derived")), 0^48)
//! {req,rsp}_app    = HKDF-Expand(master_secret, BinConcat(48, "{req,rsp} app data", H(TH2)))
//! key / iv         = HKDF-Expand(S, BinConcat(32, "key")) / HKDF-Expand(S, BinConcat(12, "iv"))
//! finished_key     = HKDF-Expand({req,rsp}_hs, BinConcat(48, "finished"))
//! KEY_UPDATE       : S' = HKDF-Expand(S, BinConcat(48, "traffic upd"))
//! ```

use hkdf::Hkdf;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha384;

/// Hash and secret size.
pub const H: usize = 48;
/// AES-256-GCM key size.
pub const KEY_BYTES: usize = 32;
/// AES-GCM IV size.
pub const IV_BYTES: usize = 12;

/// Longest BinConcat: 2 + 8 + the longest label (12) + a hash.
const BIN_MAX: usize = 2 + 8 + 12 + H;

/// `BinConcat(length, label, context)` for SPDM `version` (0x12 → "spdm1.2 ").
pub fn bin_concat(version: u8, length: u16, label: &[u8], context: &[u8]) -> ([u8; BIN_MAX], usize) {
    let mut b = [0u8; BIN_MAX];
    b[0..2].copy_from_slice(&length.to_le_bytes());
    b[2..10].copy_from_slice(b"spdm1.2 ");
    b[8] = b'0' + (version & 0x0F);
    let l = label.len().min(12);
    b[10..10 + l].copy_from_slice(&label[..l]);
    let c = context.len().min(H);
    b[10 + l..10 + l + c].copy_from_slice(&context[..c]);
    (b, 10 + l + c)
}

fn expand<const N: usize>(version: u8, secret: &[u8; H], label: &[u8], context: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    let (info, len) = bin_concat(version, N as u16, label, context);
    // A 48-byte secret is a valid PRK for HKDF-SHA-384 and N <= 255 * 48: neither call can fail.
    if let Ok(hk) = Hkdf::<Sha384>::from_prk(secret) {
        let _ = hk.expand(&info[..len], &mut out);
    }
    out
}

fn extract(salt: &[u8; H], ikm: &[u8]) -> [u8; H] {
    let (prk, _) = Hkdf::<Sha384>::extract(Some(salt), ikm);
    let mut out = [0u8; H];
    out.copy_from_slice(&prk);
    out
}

/// The key and IV of one direction and phase, with its sequence number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirectionKeys {
    /// The secret the key and IV come from (kept for KEY_UPDATE).
    pub secret: [u8; H],
    /// AES-256-GCM key.
    pub key: [u8; KEY_BYTES],
    /// IV salt; the sequence number is XORed into its first 8 bytes.
    pub iv: [u8; IV_BYTES],
    /// Messages protected so far with this key (DSP0277 sequence number).
    pub sequence: u64,
}

impl DirectionKeys {
    /// Keys derived from `secret`, sequence number 0.
    pub fn from_secret(version: u8, secret: [u8; H]) -> DirectionKeys {
        DirectionKeys {
            key: expand(version, &secret, b"key", &[]),
            iv: expand(version, &secret, b"iv", &[]),
            secret,
            sequence: 0,
        }
    }

    /// KEY_UPDATE: the next secret, its key and IV, sequence number back to 0.
    pub fn updated(&self, version: u8) -> DirectionKeys {
        DirectionKeys::from_secret(version, expand(version, &self.secret, b"traffic upd", &[]))
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
    version: u8,
    handshake_secret: [u8; H],
    /// Requester → responder.
    pub request: DirectionKeys,
    /// Responder → requester.
    pub response: DirectionKeys,
}

impl HandshakeKeys {
    /// Derives the handshake keys.
    pub fn derive(version: u8, shared_secret: &[u8; H], th1_hash: &[u8; H]) -> HandshakeKeys {
        let handshake_secret = extract(&[0u8; H], shared_secret);
        let req = expand(version, &handshake_secret, b"req hs data", th1_hash);
        let rsp = expand(version, &handshake_secret, b"rsp hs data", th1_hash);
        HandshakeKeys {
            version,
            handshake_secret,
            request: DirectionKeys::from_secret(version, req),
            response: DirectionKeys::from_secret(version, rsp),
        }
    }

    /// The finished key of the requester (`true`) or responder.
    pub fn finished_key(&self, requester: bool) -> [u8; H] {
        let secret = if requester { &self.request.secret } else { &self.response.secret };
        expand(self.version, secret, b"finished", &[])
    }

    /// HMAC-SHA-384 of `transcript_hash` under the finished key of the requester (`true`) or
    /// responder: RequesterVerifyData / ResponderVerifyData.
    pub fn verify_data(&self, requester: bool, transcript_hash: &[u8; H]) -> [u8; H] {
        let finished = self.finished_key(requester);
        let mut out = [0u8; H];
        if let Ok(mut mac) = <Hmac<Sha384> as KeyInit>::new_from_slice(&finished) {
            mac.update(transcript_hash);
            out.copy_from_slice(&mac.finalize().into_bytes());
        }
        out
    }

    /// The data phase: secrets from the master secret and H(TH2).
    pub fn application(&self, th2_hash: &[u8; H]) -> ApplicationKeys {
        let salt1: [u8; H] = expand(self.version, &self.handshake_secret, b"derived", &[]);
        let master = extract(&salt1, &[0u8; H]);
        let req = expand(self.version, &master, b"req app data", th2_hash);
        let rsp = expand(self.version, &master, b"rsp app data", th2_hash);
        ApplicationKeys {
            request: DirectionKeys::from_secret(self.version, req),
            response: DirectionKeys::from_secret(self.version, rsp),
            export_master: expand(self.version, &master, b"exp master", th2_hash),
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
    pub export_master: [u8; H],
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
        let hs = HandshakeKeys::derive(0x12, &[1; 48], &[2; 48]);
        assert_ne!(hs.request.key, hs.response.key);
        assert_ne!(hs.request.iv, hs.response.iv);
        let again = HandshakeKeys::derive(0x12, &[1; 48], &[2; 48]);
        assert_eq!(hs, again, "deterministic");
        assert_ne!(hs, HandshakeKeys::derive(0x12, &[1; 48], &[3; 48]), "bound to TH1");
        assert_ne!(hs, HandshakeKeys::derive(0x13, &[1; 48], &[2; 48]), "bound to the version");
        let app = hs.application(&[4; 48]);
        assert_ne!(app.request.key, hs.request.key);
        assert_ne!(app.request.key, hs.application(&[5; 48]).request.key, "bound to TH2");
        assert_ne!(hs.verify_data(true, &[9; 48]), hs.verify_data(false, &[9; 48]));
        let up = app.request.updated(0x12);
        assert_ne!(up.key, app.request.key);
        assert_eq!(up.sequence, 0);
    }

    #[test]
    fn the_sequence_number_goes_into_the_iv_little_endian() {
        let mut k = DirectionKeys::from_secret(0x12, [7; 48]);
        assert_eq!(k.nonce(), k.iv);
        k.sequence = 0x0102;
        let n = k.nonce();
        assert_eq!(n[0], k.iv[0] ^ 0x02);
        assert_eq!(n[1], k.iv[1] ^ 0x01);
        assert_eq!(n[2..], k.iv[2..]);
    }
}
