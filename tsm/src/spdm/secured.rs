//! DSP0277 secured messages over PCI DOE (object type 2), AES-128-GCM or AES-256-GCM (the AEAD
//! the keys were derived for):
//!
//! ```text
//! SessionID u32 | Length u16 = 2 + AppLen + 16 | ENC(AppLen u16 ‖ message) | MAC[16] | DOE padding
//! AAD = SessionID ‖ Length; IV = iv ⊕ sequence number (LE, bytes 0..8)
//! ```
//! DOE carries no sequence-number field and no random padding. Each direction counts its own
//! sequence numbers from 0 per key; a message that does not authenticate changes nothing.

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes128Gcm, Aes256Gcm, Nonce, Tag};

use crate::doe::{self, DoeError, ObjectType};
use crate::spdm::keys::DirectionKeys;
use crate::spdm::suite::Aead;

/// Encrypts `data` in place under the keys' current nonce; returns the tag.
fn encrypt(keys: &DirectionKeys, aad: &[u8], data: &mut [u8]) -> Result<Tag, SecuredError> {
    let nonce = Nonce::from(keys.nonce());
    let tag = match keys.schedule.aead {
        Aead::Aes128Gcm => Aes128Gcm::new_from_slice(keys.key())
            .map_err(|_| SecuredError::Buffer)?
            .encrypt_inout_detached(&nonce, aad, data.into()),
        Aead::Aes256Gcm => Aes256Gcm::new_from_slice(keys.key())
            .map_err(|_| SecuredError::Buffer)?
            .encrypt_inout_detached(&nonce, aad, data.into()),
    };
    tag.map_err(|_| SecuredError::Buffer)
}

/// Decrypts `data` in place under the keys' current nonce if `tag` authenticates it.
fn decrypt(keys: &DirectionKeys, aad: &[u8], data: &mut [u8], tag: &Tag) -> Result<(), SecuredError> {
    let nonce = Nonce::from(keys.nonce());
    let ok = match keys.schedule.aead {
        Aead::Aes128Gcm => Aes128Gcm::new_from_slice(keys.key())
            .map_err(|_| SecuredError::Authentication)?
            .decrypt_inout_detached(&nonce, aad, data.into(), tag),
        Aead::Aes256Gcm => Aes256Gcm::new_from_slice(keys.key())
            .map_err(|_| SecuredError::Authentication)?
            .decrypt_inout_detached(&nonce, aad, data.into(), tag),
    };
    ok.map_err(|_| SecuredError::Authentication)
}

/// Bytes of the MAC.
pub const TAG_BYTES: usize = 16;
/// Bytes before the encrypted part: SessionID and Length.
pub const HEADER_BYTES: usize = 6;

/// Why a secured message is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecuredError {
    /// The DOE object is malformed or not a secured SPDM object.
    Doe(DoeError),
    /// Shorter than its header and MAC, or Length disagrees with the bytes.
    Length,
    /// Another session's message.
    Session {
        /// The SessionID received.
        got: u32,
    },
    /// The MAC does not verify (wrong key, sequence number, or tampering).
    Authentication,
    /// ApplicationDataLength runs past the decrypted data.
    ApplicationLength,
    /// The output buffer is too small.
    Buffer,
    /// The sequence number is exhausted; the key must be updated.
    SequenceExhausted,
}

impl From<DoeError> for SecuredError {
    fn from(e: DoeError) -> Self {
        SecuredError::Doe(e)
    }
}

/// Encrypts `message` for session `session` into a DOE object in `out`; returns its length and
/// advances `keys.sequence`.
///
/// # Errors
/// [`SecuredError::Buffer`] if `out` is too small; `SequenceExhausted` at 2^64 − 1 messages.
pub fn seal(keys: &mut DirectionKeys, session: u32, message: &[u8], out: &mut [u8]) -> Result<usize, SecuredError> {
    if keys.sequence == u64::MAX {
        return Err(SecuredError::SequenceExhausted);
    }
    let app_len = u16::try_from(message.len()).map_err(|_| SecuredError::Buffer)?;
    let body = 2 + message.len() + TAG_BYTES;
    let length = u16::try_from(body).map_err(|_| SecuredError::Buffer)?;
    let total = doe::object_len(HEADER_BYTES + body);
    if total > out.len() {
        return Err(SecuredError::Buffer);
    }
    let p = doe::HEADER_BYTES;
    let mut plain = [0u8; 8];
    plain[..4].copy_from_slice(&session.to_le_bytes());
    plain[4..6].copy_from_slice(&length.to_le_bytes());
    out[p..p + HEADER_BYTES].copy_from_slice(&plain[..HEADER_BYTES]);
    let enc = p + HEADER_BYTES;
    out[enc..enc + 2].copy_from_slice(&app_len.to_le_bytes());
    out[enc + 2..enc + 2 + message.len()].copy_from_slice(message);
    let (head, rest) = out.split_at_mut(enc);
    let (data, tail) = rest.split_at_mut(2 + message.len());
    let tag = encrypt(keys, &head[p..p + HEADER_BYTES], data)?;
    tail[..TAG_BYTES].copy_from_slice(&tag);
    doe::frame(ObjectType::SecuredSpdm, HEADER_BYTES + body, out)?;
    keys.sequence += 1;
    Ok(total)
}

/// Decrypts a secured DOE object of session `session` into `out`; returns the SPDM message and
/// advances `keys.sequence`. Nothing changes when it fails.
///
/// # Errors
/// A [`SecuredError`] naming the first thing wrong.
pub fn open<'o>(
    keys: &mut DirectionKeys,
    session: u32,
    object: &[u8],
    out: &'o mut [u8],
) -> Result<&'o [u8], SecuredError> {
    let payload = doe::decode_as(object, ObjectType::SecuredSpdm)?;
    if payload.len() < HEADER_BYTES + 2 + TAG_BYTES {
        return Err(SecuredError::Length);
    }
    let got = u32::from_le_bytes([payload[0], payload[1], payload[2], payload[3]]);
    if got != session {
        return Err(SecuredError::Session { got });
    }
    let length = usize::from(u16::from_le_bytes([payload[4], payload[5]]));
    let end = HEADER_BYTES + length;
    // The rest of the object is DOE padding: fewer than 4 zero bytes.
    if length < 2 + TAG_BYTES
        || end > payload.len()
        || payload.len() - end >= 4
        || payload[end..].iter().any(|&b| b != 0)
    {
        return Err(SecuredError::Length);
    }
    let data_len = length - TAG_BYTES;
    if data_len > out.len() {
        return Err(SecuredError::Buffer);
    }
    let buf = &mut out[..data_len];
    buf.copy_from_slice(&payload[HEADER_BYTES..HEADER_BYTES + data_len]);
    let tag = Tag::try_from(&payload[HEADER_BYTES + data_len..end]).map_err(|_| SecuredError::Length)?;
    if decrypt(keys, &payload[..HEADER_BYTES], buf, &tag).is_err() {
        buf.fill(0);
        return Err(SecuredError::Authentication);
    }
    let app_len = usize::from(u16::from_le_bytes([buf[0], buf[1]]));
    if 2 + app_len > data_len {
        buf.fill(0);
        return Err(SecuredError::ApplicationLength);
    }
    keys.sequence += 1;
    Ok(&out[2..2 + app_len])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spdm::keys::Schedule;
    use crate::spdm::suite::Suite;

    extern crate std;
    use std::vec::Vec;

    fn keys() -> DirectionKeys {
        DirectionKeys::from_secret(Schedule::p384(0x12), &[0x33; 48])
    }

    fn seal_vec(k: &mut DirectionKeys, session: u32, msg: &[u8]) -> Vec<u8> {
        let mut out = std::vec![0u8; 256];
        let n = seal(k, session, msg, &mut out).unwrap();
        out.truncate(n);
        out
    }

    #[test]
    fn the_layout_matches_dsp0277_over_doe() {
        // A 28-byte message: Length 46, object 60 bytes (15 DWs), no padding.
        let mut k = keys();
        let o = seal_vec(&mut k, 0xFFFF_FFFF, &[0xAB; 28]);
        assert_eq!(o.len(), 60);
        assert_eq!(&o[..8], &[1, 0, 2, 0, 15, 0, 0, 0]);
        assert_eq!(&o[8..12], &[0xFF; 4]);
        assert_eq!(u16::from_le_bytes([o[12], o[13]]), 46);
        assert_ne!(&o[16..44], &[0xAB; 28], "encrypted");
    }

    #[test]
    fn round_trips_with_matching_sequence_numbers() {
        let (mut tx, mut rx) = (keys(), keys());
        for i in 0..3u8 {
            let msg = [i; 5];
            let o = seal_vec(&mut tx, 7, &msg);
            let mut out = [0u8; 64];
            assert_eq!(open(&mut rx, 7, &o, &mut out).unwrap(), &msg);
        }
        assert_eq!((tx.sequence, rx.sequence), (3, 3));
    }

    #[test]
    fn every_tampering_is_refused_and_changes_nothing() {
        let mut tx = keys();
        let o = seal_vec(&mut tx, 7, b"TDISP LOCK_INTERFACE");
        let mut out = [0u8; 64];
        let mut rx = keys();
        assert_eq!(open(&mut rx, 8, &o, &mut out), Err(SecuredError::Session { got: 7 }));
        for i in 8..o.len() {
            let mut b = o.clone();
            b[i] ^= 0x01;
            let r = open(&mut rx, 7, &b, &mut out);
            assert!(r.is_err(), "flip at byte {i} accepted");
        }
        assert_eq!(rx.sequence, 0, "nothing changed");
        // A replay after the first delivery fails: the sequence number moved on.
        assert!(open(&mut rx, 7, &o, &mut out).is_ok());
        assert_eq!(open(&mut rx, 7, &o, &mut out), Err(SecuredError::Authentication));
        // The other direction's keys or an updated key do not open it.
        let mut other = DirectionKeys::from_secret(Schedule::p384(0x12), &[0x34; 48]);
        assert_eq!(open(&mut other, 7, &o, &mut out), Err(SecuredError::Authentication));
        let mut updated = keys().updated();
        assert_eq!(open(&mut updated, 7, &o, &mut out), Err(SecuredError::Authentication));
        assert_eq!(
            open(&mut keys(), 7, &o[..o.len() - 4], &mut out),
            Err(SecuredError::Doe(DoeError::LengthMismatch { header: o.len(), received: o.len() - 4 }))
        );
    }

    #[test]
    fn a_lying_application_length_is_refused() {
        // Seal a message whose first two bytes, once decrypted, claim more data than there is:
        // build it by sealing a buffer that starts with a large ApplicationDataLength.
        let mut tx = keys();
        let mut out = std::vec![0u8; 256];
        let n = seal(&mut tx, 1, &[0u8; 4], &mut out).unwrap();
        // Re-encrypt with a forged inner length using the same key and sequence number 0.
        let mut forged = keys();
        let o = &mut out[..n];
        let mut inner = [0u8; 6];
        inner[..2].copy_from_slice(&100u16.to_le_bytes());
        let tag = encrypt(&forged, &o[8..14], &mut inner).unwrap();
        o[14..20].copy_from_slice(&inner);
        o[20..36].copy_from_slice(&tag);
        let mut buf = [0u8; 64];
        assert_eq!(open(&mut forged, 1, o, &mut buf), Err(SecuredError::ApplicationLength));
        assert_eq!(forged.sequence, 0);
    }

    #[test]
    fn aes_128_gcm_keys_seal_with_aes_128() {
        let k = DirectionKeys::from_secret(Schedule::new(0x12, &Suite::P256), &[0x33; 32]);
        let (mut tx, mut rx) = (k.clone(), k.clone());
        let o = seal_vec(&mut tx, 7, b"KEY_UPDATE");
        let mut out = [0u8; 64];
        assert_eq!(open(&mut rx, 7, &o, &mut out).unwrap(), b"KEY_UPDATE");
        // AES-128-GCM by hand over the same bytes: nonce, AAD = SessionID ‖ Length.
        let mut data = [0u8; 12];
        data[..2].copy_from_slice(&10u16.to_le_bytes());
        data[2..].copy_from_slice(b"KEY_UPDATE");
        let tag = Aes128Gcm::new_from_slice(k.key())
            .unwrap()
            .encrypt_inout_detached(&Nonce::from(k.nonce()), &o[8..14], (&mut data[..]).into())
            .unwrap();
        assert_eq!(&o[14..26], &data);
        assert_eq!(&o[26..42], &tag[..]);
        // AES-256 keys from the same secret do not open it.
        let mut wrong = DirectionKeys::from_secret(Schedule::p384(0x12), &[0x33; 32]);
        assert_eq!(open(&mut wrong, 7, &o, &mut out), Err(SecuredError::Authentication));
    }
}
