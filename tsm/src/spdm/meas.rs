//! Signed GET_MEASUREMENTS of every index, sans-IO. The device signs L1 = VCA ‖ GET_MEASUREMENTS ‖
//! MEASUREMENTS (without its signature); the TSM checks the record block by block, verifies the
//! signature with the leaf key of the device's chain, and keeps the whole signed exchange as
//! evidence for the attestation report (a verifier re-checks the signature and every value).

use crate::doe::Action;
use crate::spdm::negotiate::{code, le16, response_payload, MeasurementHash, Negotiated, SpdmError, V13};
use crate::spdm::sig::{self, Context, LeafKey};
use crate::spdm::suite::{Asym, Transcript};
use crate::spdm::Exchange;

/// Bytes of the measurement exchange (request and response) the TSM keeps.
pub const EXCHANGE_MAX: usize = 4096;
/// Measurement blocks a record may hold (indices 1..=0xFE plus the special ones).
pub const MAX_BLOCKS: usize = 255;

/// One signed GET_MEASUREMENTS(all) exchange.
#[derive(Clone, Debug)]
pub struct Measurements {
    version: u8,
    hash: MeasurementHash,
    asym: Asym,
    key: LeafKey,
    nonce: [u8; 32],
    context: [u8; 8],
    vca_hash: Transcript,
    status: Exchange,
    exchange: [u8; EXCHANGE_MAX],
    request_len: usize,
    len: usize,
}

impl Measurements {
    /// An exchange on a negotiated connection whose VCA is `vca`, signed by `key` (the leaf of
    /// the device's chain), with the TSM's fresh `nonce` (and RequesterContext for SPDM 1.3).
    pub fn new(negotiated: &Negotiated, vca: &[u8], key: LeafKey, nonce: [u8; 32], context: [u8; 8]) -> Self {
        let vca_hash = Transcript::with_prefix(negotiated.suite.hash, vca);
        Measurements {
            version: negotiated.version,
            hash: negotiated.measurement_hash,
            asym: negotiated.suite.asym,
            key,
            nonce,
            context,
            vca_hash,
            status: Exchange::new(),
            exchange: [0; EXCHANGE_MAX],
            request_len: 0,
            len: 0,
        }
    }

    /// GET_MEASUREMENTS with a signature, all indices, slot 0.
    pub fn start(&mut self) -> Action<'_, SpdmError> {
        let mut m = [0u8; 45];
        m[0] = self.version;
        m[1] = code::GET_MEASUREMENTS;
        m[2] = 0x01; // signature requested
        m[3] = 0xFF; // all indices
        m[4..36].copy_from_slice(&self.nonce);
        m[36] = 0; // slot 0
        let len = if self.version >= V13 {
            m[37..45].copy_from_slice(&self.context);
            45
        } else {
            37
        };
        self.exchange[..len].copy_from_slice(&m[..len]);
        self.request_len = len;
        self.len = len;
        self.status.send(&m[..len])
    }

    /// Consumes MEASUREMENTS.
    pub fn step(&mut self, response: &[u8]) -> Action<'_, SpdmError> {
        if let Some(action) = self.status.unexpected() {
            return action;
        }
        let result = self.check(response);
        self.status.settle(result)
    }

    fn check(&mut self, response: &[u8]) -> Result<(), SpdmError> {
        let p = response_payload(response, self.version, code::MEASUREMENTS)?;
        let short = SpdmError::BadLength { code: code::MEASUREMENTS, len: p.len() };
        if p.len() < 8 {
            return Err(short);
        }
        let blocks = usize::from(p[4]);
        let record_len = usize::from(p[5]) | usize::from(p[6]) << 8 | usize::from(p[7]) << 16;
        let record_end = 8usize.checked_add(record_len).ok_or(short)?;
        let opaque_at = record_end + 32;
        if p.len() < opaque_at + 2 {
            return Err(short);
        }
        let opaque_len = usize::from(le16(p, opaque_at));
        let context_at = opaque_at + 2 + opaque_len;
        let sig_at = if self.version >= V13 { context_at + 8 } else { context_at };
        let total = sig_at + self.asym.signature_bytes();
        let msg = crate::spdm::negotiate::exact(p, total, code::MEASUREMENTS)?;
        if msg[3] & 0x0F != 0 {
            return Err(SpdmError::BadSelection { field: "MEASUREMENTS SlotID", got: u32::from(msg[3] & 0x0F) });
        }
        check_record(&msg[8..record_end], blocks, self.hash)?;
        if self.version >= V13 && msg[context_at..sig_at] != self.context {
            return Err(SpdmError::ContextMismatch);
        }
        let start = self.request_len;
        if start + total > EXCHANGE_MAX {
            return Err(SpdmError::TranscriptTooLarge);
        }
        // L1 = VCA ‖ request ‖ response without its signature.
        let mut l1 = self.vca_hash.clone();
        l1.update(&self.exchange[..start]);
        l1.update(&msg[..sig_at]);
        let hash = l1.finalize();
        sig::verify(self.version, Context::Measurements, &hash, &self.key, &msg[sig_at..])
            .map_err(SpdmError::Signature)?;
        self.exchange[start..start + total].copy_from_slice(msg);
        self.len = start + total;
        Ok(())
    }

    /// The signed exchange (GET_MEASUREMENTS ‖ MEASUREMENTS, signature included), once done.
    pub fn exchange(&self) -> Option<&[u8]> {
        self.status.done().then_some(&self.exchange[..self.len])
    }

    /// The error the exchange stopped on.
    pub fn error(&self) -> Option<SpdmError> {
        self.status.error()
    }
}

/// Checks that `record` holds exactly `blocks` well-formed DMTF measurement blocks with distinct
/// indices: `Index | Spec (0x01) | Size u16 | ValueType | ValueSize u16 | Value`, Size = 3 + ValueSize.
/// A digest (ValueType bit 7 clear) has the size of the negotiated measurement hash; with
/// raw bit streams only, every block is raw (DSP0274 1.2 Table 45).
fn check_record(record: &[u8], blocks: usize, hash: MeasurementHash) -> Result<(), SpdmError> {
    let mut seen = [false; 256];
    let mut at = 0;
    for block in 0..blocks {
        let bad = SpdmError::BadMeasurementBlock { block };
        let head = record.get(at..at + 7).ok_or(bad)?;
        let (index, size, value_size) = (head[0], usize::from(le16(head, 2)), usize::from(le16(head, 5)));
        if head[1] != 0x01 || size != 3 + value_size || index == 0 {
            return Err(bad);
        }
        let raw = head[4] & 0x80 != 0;
        if !raw && hash.digest_bytes() != Some(value_size) {
            return Err(SpdmError::BadMeasurementDigest { index, len: value_size });
        }
        let end = at + 4 + size;
        if end > record.len() {
            return Err(bad);
        }
        if seen[usize::from(index)] {
            return Err(SpdmError::DuplicateMeasurementIndex(index));
        }
        seen[usize::from(index)] = true;
        at = end;
    }
    if at != record.len() {
        return Err(SpdmError::BadMeasurementBlock { block: blocks });
    }
    Ok(())
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

    const VCA: &[u8] = b"the VCA transcript of this connection";

    fn key() -> SigningKey {
        SigningKey::from_slice(&[0x42u8; 48]).unwrap()
    }

    fn negotiated(version: u8) -> Negotiated {
        Negotiated::p384(version, 0x2F6, 0x1000, 0x1000)
    }

    fn block(index: u8, value: &[u8]) -> Vec<u8> {
        // A SHA-384 digest of mutable firmware, or else a raw bit stream of the device mode.
        typed_block(index, if value.len() == 48 { 0x01 } else { 0x85 }, value)
    }

    fn typed_block(index: u8, value_type: u8, value: &[u8]) -> Vec<u8> {
        let mut b = std::vec![index, 0x01];
        b.extend_from_slice(&((3 + value.len()) as u16).to_le_bytes());
        b.push(value_type);
        b.extend_from_slice(&(value.len() as u16).to_le_bytes());
        b.extend_from_slice(value);
        b
    }

    /// A MEASUREMENTS for `request`, signed over VCA ‖ request ‖ response; `tamper` runs before
    /// signing, `tamper_signed` after.
    fn answer(version: u8, request: &[u8], record: &[Vec<u8>], tamper: &dyn Fn(&mut Vec<u8>)) -> Vec<u8> {
        let rec: Vec<u8> = record.concat();
        let mut m = std::vec![version, code::MEASUREMENTS, 0, 0, record.len() as u8];
        m.extend_from_slice(&(rec.len() as u32).to_le_bytes()[..3]);
        m.extend_from_slice(&rec);
        m.extend_from_slice(&[0xD5; 32]); // responder nonce
        m.extend_from_slice(&[4, 0, 1, 2, 3, 4]); // 4 bytes of opaque data
        if version >= V13 {
            m.extend_from_slice(&request[37..45]);
        }
        tamper(&mut m);
        let hash: [u8; 48] = Sha384::new().chain_update(VCA).chain_update(request).chain_update(&m).finalize().into();
        let mut signed = [0u8; 148];
        signed[..100].copy_from_slice(&sig::prefix(version, Context::Measurements).unwrap());
        signed[100..].copy_from_slice(&hash);
        let s: Signature = key().sign(&signed);
        m.extend_from_slice(&s.to_bytes());
        m
    }

    fn wrap(msg: &[u8]) -> Vec<u8> {
        let mut out = std::vec![0u8; doe::object_len(msg.len())];
        doe::encode(ObjectType::Spdm, msg, &mut out).unwrap();
        out
    }

    fn run(
        version: u8,
        record: &[Vec<u8>],
        tamper: &dyn Fn(&mut Vec<u8>),
        after: &dyn Fn(&mut Vec<u8>),
    ) -> Measurements {
        let mut m = Measurements::new(
            &negotiated(version),
            VCA,
            LeafKey::P384(VerifyingKey::from(&key())),
            [0x11; 32],
            [0x22; 8],
        );
        let exact = if version >= V13 { 45 } else { 37 };
        let request = match m.start() {
            // The DOE payload is padded to a DW; the transcript has the exact request.
            Action::Send(r) => doe::decode_as(r, ObjectType::Spdm).unwrap()[..exact].to_vec(),
            other => panic!("{other:?}"),
        };
        let mut a = answer(version, &request, record, tamper);
        after(&mut a);
        let _ = m.step(&wrap(&a));
        m
    }

    fn record() -> Vec<Vec<u8>> {
        std::vec![block(1, &[0xAA; 48]), block(2, &[0xBB; 48]), block(0xFE, &[1, 2, 3])]
    }

    #[test]
    fn a_signed_record_is_kept_as_evidence() {
        for version in [0x12, 0x13] {
            let m = run(version, &record(), &|_| {}, &|_| {});
            assert_eq!(m.error(), None, "version {version:#x}");
            let ex = m.exchange().unwrap();
            let req_len = if version == 0x13 { 45 } else { 37 };
            assert_eq!(ex[..2], [version, code::GET_MEASUREMENTS]);
            assert_eq!(ex[req_len + 1], code::MEASUREMENTS);
        }
    }

    #[test]
    fn each_defect_has_its_error() {
        let no = &|_: &mut Vec<u8>| {};
        let sigerr = Some(SpdmError::Signature(sig::SigError::Mismatch));
        assert_eq!(run(0x12, &record(), no, &|a| a[20] ^= 1).error(), sigerr, "record changed after signing");
        assert_eq!(
            run(0x12, &record(), no, &|a| {
                let n = a.len();
                a[n - 1] ^= 1
            })
            .error(),
            sigerr
        );
        assert_eq!(
            run(0x12, &[block(1, &[1]), block(1, &[2])], no, no).error(),
            Some(SpdmError::DuplicateMeasurementIndex(1))
        );
        assert_eq!(
            run(0x12, &record(), &|a| a[4] = 4, no).error(),
            Some(SpdmError::BadMeasurementBlock { block: 3 }),
            "one block more than the record holds"
        );
        assert_eq!(
            run(0x12, &record(), &|a| a[4] = 2, no).error(),
            Some(SpdmError::BadMeasurementBlock { block: 2 }),
            "bytes left after the blocks"
        );
        assert_eq!(
            run(0x12, &record(), &|a| a[9] = 2, no).error(),
            Some(SpdmError::BadMeasurementBlock { block: 0 }),
            "not a DMTF block"
        );
        assert_eq!(
            run(
                0x13,
                &record(),
                &|a| {
                    let n = a.len();
                    a[n - 1] ^= 1
                },
                no
            )
            .error(),
            Some(SpdmError::ContextMismatch)
        );
        assert_eq!(
            run(0x12, &record(), &|a| a[3] = 1, no).error(),
            Some(SpdmError::BadSelection { field: "MEASUREMENTS SlotID", got: 1 })
        );
        // A record length far beyond the message.
        assert!(matches!(run(0x12, &record(), &|a| a[7] = 0x7F, no).error(), Some(SpdmError::BadLength { .. })));
        // Opaque length beyond the message.
        assert!(matches!(
            run(
                0x12,
                &record(),
                &|a| {
                    let n = a.len();
                    a[n - 6] = 0xFF
                },
                no
            )
            .error(),
            Some(SpdmError::BadLength { .. })
        ));
    }

    /// The responder picks the measurement hash; a digest block has its size, and with raw
    /// bit streams only there is no digest at all.
    #[test]
    fn digests_have_the_size_of_the_negotiated_measurement_hash() {
        use MeasurementHash::*;
        for (hash, len, ok) in [
            (Sha256, 32, true),
            (Sha512, 64, true),
            (Sha384, 48, true),
            (Sha256, 48, false),
            (RawBitStreamOnly, 48, false),
        ] {
            let n = Negotiated { measurement_hash: hash, ..negotiated(0x12) };
            let mut m = Measurements::new(&n, VCA, LeafKey::P384(VerifyingKey::from(&key())), [0x11; 32], [0; 8]);
            let request = match m.start() {
                Action::Send(r) => doe::decode_as(r, ObjectType::Spdm).unwrap()[..37].to_vec(),
                other => panic!("{other:?}"),
            };
            let record = [typed_block(1, 0x01, &std::vec![0xAA; len]), typed_block(2, 0x83, b"raw config")];
            let _ = m.step(&wrap(&answer(0x12, &request, &record, &|_| {})));
            let want = if ok { None } else { Some(SpdmError::BadMeasurementDigest { index: 1, len }) };
            assert_eq!(m.error(), want, "{hash:?} with a {len}-byte digest");
        }
    }

    #[test]
    fn truncations_never_panic() {
        let mut m =
            Measurements::new(&negotiated(0x12), VCA, LeafKey::P384(VerifyingKey::from(&key())), [0x11; 32], [0; 8]);
        let request = match m.start() {
            Action::Send(r) => doe::decode_as(r, ObjectType::Spdm).unwrap()[..37].to_vec(),
            other => panic!("{other:?}"),
        };
        let a = answer(0x12, &request, &record(), &|_| {});
        for n in 4..a.len() {
            let mut fresh = m.clone();
            assert!(matches!(fresh.step(&wrap(&a[..n])), Action::Failed(_)), "{n} bytes accepted");
        }
    }
}
