//! CHALLENGE / CHALLENGE_AUTH for slot 0, sans-IO: proves that the device holds the private key
//! of the chain's leaf. The device signs M1 = VCA ‖ B ‖ C, where B is the certificate exchange and
//! C is CHALLENGE ‖ CHALLENGE_AUTH without the signature.

use crate::doe::Action;
use crate::spdm::negotiate::{code, exact, le16, response_payload, Negotiated, SpdmError, V13};
use crate::spdm::sig::{self, Context, LeafKey};
use crate::spdm::suite::{Secret, Suite, Transcript};
use crate::spdm::Exchange;

/// One CHALLENGE exchange (no measurement summary hash requested).
#[derive(Clone, Debug)]
pub struct Challenge {
    version: u8,
    suite: Suite,
    key: LeafKey,
    chain_hash: Secret,
    nonce: [u8; 32],
    context: [u8; 8],
    transcript: Transcript,
    exchange: Exchange,
}

impl Challenge {
    /// A challenge continuing `transcript` (VCA ‖ B, from the certificate exchange), expecting
    /// the chain whose hash (the negotiated one) is `chain_hash` and whose leaf key is `key`.
    pub fn new(
        negotiated: &Negotiated,
        transcript: Transcript,
        chain_hash: &[u8],
        key: LeafKey,
        nonce: [u8; 32],
        context: [u8; 8],
    ) -> Challenge {
        Challenge {
            version: negotiated.version,
            suite: negotiated.suite,
            key,
            chain_hash: Secret::new(chain_hash),
            nonce,
            context,
            transcript,
            exchange: Exchange::new(),
        }
    }

    /// CHALLENGE for slot 0.
    pub fn start(&mut self) -> Action<'_, SpdmError> {
        let mut m = [0u8; 44];
        m[0] = self.version;
        m[1] = code::CHALLENGE;
        m[4..36].copy_from_slice(&self.nonce);
        let len = if self.version >= V13 {
            m[36..44].copy_from_slice(&self.context);
            44
        } else {
            36
        };
        self.transcript.update(&m[..len]);
        self.exchange.send(&m[..len])
    }

    /// Consumes CHALLENGE_AUTH.
    pub fn step(&mut self, response: &[u8]) -> Action<'_, SpdmError> {
        if let Some(action) = self.exchange.unexpected() {
            return action;
        }
        let result = self.check(response);
        self.exchange.settle(result)
    }

    fn check(&mut self, response: &[u8]) -> Result<(), SpdmError> {
        let p = response_payload(response, self.version, code::CHALLENGE_AUTH)?;
        // Header, CertChainHash, Nonce; no measurement summary hash was asked for.
        let h = self.suite.hash.bytes();
        let opaque_at = 4 + h + 32;
        if p.len() < opaque_at + 2 {
            return Err(SpdmError::BadLength { code: code::CHALLENGE_AUTH, len: p.len() });
        }
        let context_at = opaque_at + 2 + usize::from(le16(p, opaque_at));
        let sig_at = if self.version >= V13 { context_at + 8 } else { context_at };
        let msg = exact(p, sig_at + self.suite.asym.signature_bytes(), code::CHALLENGE_AUTH)?;
        if msg[2] & 0x0F != 0 || msg[3] & 1 == 0 {
            return Err(SpdmError::NoSlot0);
        }
        if msg[4..4 + h] != self.chain_hash[..] {
            return Err(SpdmError::CertChainHashMismatch);
        }
        if self.version >= V13 && msg[context_at..sig_at] != self.context {
            return Err(SpdmError::ContextMismatch);
        }
        let mut m1 = self.transcript.clone();
        m1.update(&msg[..sig_at]);
        let hash = m1.finalize();
        sig::verify(self.version, Context::ChallengeAuth, &hash, &self.key, &msg[sig_at..])
            .map_err(SpdmError::Signature)
    }

    /// True once the device proved its key.
    pub fn done(&self) -> bool {
        self.exchange.done()
    }

    /// The error the exchange stopped on.
    pub fn error(&self) -> Option<SpdmError> {
        self.exchange.error()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doe::{self, ObjectType};
    use p384::ecdsa::signature::Signer;
    use p384::ecdsa::{Signature, SigningKey, VerifyingKey};
    use sha2::{Digest, Sha384};

    extern crate std;
    use std::vec::Vec;

    const DIGEST: [u8; 48] = [0xC3; 48];

    fn key() -> SigningKey {
        SigningKey::from_slice(&[0x24u8; 48]).unwrap()
    }

    fn negotiated(version: u8) -> Negotiated {
        Negotiated::p384(version, 0x2F6, 0x1000, 0x1000)
    }

    fn wrap(msg: &[u8]) -> Vec<u8> {
        let mut out = std::vec![0u8; doe::object_len(msg.len())];
        doe::encode(ObjectType::Spdm, msg, &mut out).unwrap();
        out
    }

    fn run(version: u8, tamper: &dyn Fn(&mut Vec<u8>), after: &dyn Fn(&mut Vec<u8>)) -> Challenge {
        let prior = Sha384::new_with_prefix(b"VCA and B");
        let leaf = LeafKey::P384(VerifyingKey::from(&key()));
        let transcript = Transcript::Sha384(prior.clone());
        let mut c = Challenge::new(&negotiated(version), transcript, &DIGEST, leaf, [7; 32], [8; 8]);
        let len = if version >= V13 { 44 } else { 36 };
        let request = match c.start() {
            Action::Send(r) => doe::decode_as(r, ObjectType::Spdm).unwrap()[..len].to_vec(),
            other => panic!("{other:?}"),
        };
        let mut m = std::vec![version, code::CHALLENGE_AUTH, 0, 1];
        m.extend_from_slice(&DIGEST);
        m.extend_from_slice(&[0x5A; 32]);
        m.extend_from_slice(&[0, 0]); // no opaque data
        if version >= V13 {
            m.extend_from_slice(&request[36..44]);
        }
        tamper(&mut m);
        let hash: [u8; 48] = prior.chain_update(&request).chain_update(&m).finalize().into();
        let mut signed = [0u8; 148];
        signed[..100].copy_from_slice(&sig::prefix(version, Context::ChallengeAuth).unwrap());
        signed[100..].copy_from_slice(&hash);
        let s: Signature = key().sign(&signed);
        m.extend_from_slice(&s.to_bytes());
        after(&mut m);
        let _ = c.step(&wrap(&m));
        c
    }

    #[test]
    fn the_device_proves_its_key() {
        assert!(run(0x12, &|_| {}, &|_| {}).done());
        assert!(run(0x13, &|_| {}, &|_| {}).done());
    }

    #[test]
    fn each_defect_has_its_error() {
        let no = &|_: &mut Vec<u8>| {};
        assert_eq!(run(0x12, &|m| m[3] = 2, no).error(), Some(SpdmError::NoSlot0));
        assert_eq!(run(0x12, &|m| m[2] = 1, no).error(), Some(SpdmError::NoSlot0));
        assert_eq!(run(0x12, &|m| m[10] ^= 1, no).error(), Some(SpdmError::CertChainHashMismatch));
        assert_eq!(
            run(
                0x13,
                &|m| {
                    let n = m.len();
                    m[n - 1] ^= 1
                },
                no
            )
            .error(),
            Some(SpdmError::ContextMismatch)
        );
        assert_eq!(
            run(0x12, no, &|m| m[60] ^= 1).error(),
            Some(SpdmError::Signature(sig::SigError::Mismatch)),
            "nonce changed after signing"
        );
        assert!(matches!(run(0x12, &|m| m[84] = 0xFF, no).error(), Some(SpdmError::BadLength { .. })));
    }
}
