//! GET_DIGESTS and GET_CERTIFICATE (chunked) for slot 0, sans-IO: reads the device's certificate
//! chain, checks it against its DIGESTS entry and its format, and keeps VCA ‖ B (B: every
//! message of the exchange, exact bytes) as a running hash (the negotiated one) for CHALLENGE's
//! transcript M1.

use crate::doe::{self, Action, ObjectType};
use crate::spdm::chain::CertChain;
use crate::spdm::chunk::MAX_MESSAGE;

// A CERTIFICATE carrying the longest chain the TSM keeps is a message it can reassemble.
const _: () = assert!(8 + CHAIN_MAX <= MAX_MESSAGE);
use crate::spdm::negotiate::{code, exact, le16, response_payload, Negotiated, SpdmError, TRANSFER_SIZE};
use crate::spdm::suite::{Asym, BaseHash, Transcript, MAX_HASH};

/// Bytes of certificate chain the TSM keeps for a device.
pub const CHAIN_MAX: usize = 8192;
/// Bytes asked for per GET_CERTIFICATE (libspdm's block size), less if the device's
/// DataTransferSize is smaller, when large responses cannot come in chunks; with CHUNK_CAP on
/// both sides the TSM asks for the whole chain at once.
pub const CHUNK: usize = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Idle,
    WaitDigests,
    WaitCertificate,
    Done,
    Failed(SpdmError),
}

/// The certificate exchange for one device.
#[derive(Clone, Debug)]
pub struct CertRetrieval {
    version: u8,
    chunk: usize,
    state: State,
    hash: BaseHash,
    asym: Asym,
    digest: [u8; MAX_HASH],
    chain: [u8; CHAIN_MAX],
    len: usize,
    total: usize,
    asked: usize,
    transcript: Transcript,
    vca_transcript: Transcript,
    out: [u8; 16],
}

impl CertRetrieval {
    /// An exchange over a negotiated connection whose VCA transcript is `vca`.
    pub fn new(negotiated: &Negotiated, vca: &[u8]) -> CertRetrieval {
        let chunk = if negotiated.chunking() {
            // Large responses come in chunks (`spdm::chunk`): the whole chain in one portion,
            // as far as the device can build the response (its MaxSPDMmsgSize; the TSM
            // reassembles any CERTIFICATE of a chain it keeps), in one round trip when it fits a
            // transfer.
            let device = usize::try_from(negotiated.max_message_size).unwrap_or(usize::MAX);
            CHAIN_MAX.min(device.saturating_sub(8)).max(1)
        } else {
            // CERTIFICATE's 8-byte header must fit the smaller DataTransferSize too.
            let device = usize::try_from(negotiated.data_transfer_size).unwrap_or(usize::MAX);
            CHUNK.min(device.saturating_sub(8)).min(TRANSFER_SIZE as usize - 8).max(1)
        };
        CertRetrieval {
            version: negotiated.version,
            chunk,
            state: State::Idle,
            hash: negotiated.suite.hash,
            asym: negotiated.suite.asym,
            digest: [0; MAX_HASH],
            chain: [0; CHAIN_MAX],
            len: 0,
            total: 0,
            asked: 0,
            transcript: Transcript::with_prefix(negotiated.suite.hash, vca),
            vca_transcript: Transcript::with_prefix(negotiated.suite.hash, vca),
            out: [0; 16],
        }
    }

    fn send(&mut self, msg: &[u8], next: State) -> Action<'_, SpdmError> {
        self.transcript.update(msg);
        match doe::encode(ObjectType::Spdm, msg, &mut self.out) {
            Ok(n) => {
                self.state = next;
                Action::Send(&self.out[..n])
            }
            Err(e) => self.fail(SpdmError::Doe(e)),
        }
    }

    fn fail(&mut self, e: SpdmError) -> Action<'_, SpdmError> {
        self.state = State::Failed(e);
        Action::Failed(e)
    }

    fn ask_certificate(&mut self) -> Action<'_, SpdmError> {
        let want = if self.total == 0 { self.chunk } else { self.chunk.min(self.total - self.len) };
        self.asked = want;
        let mut m = [0u8; 8];
        m[0] = self.version;
        m[1] = code::GET_CERTIFICATE;
        m[4..6].copy_from_slice(&(self.len as u16).to_le_bytes());
        m[6..8].copy_from_slice(&(want as u16).to_le_bytes());
        self.send(&m, State::WaitCertificate)
    }

    /// GET_DIGESTS.
    pub fn start(&mut self) -> Action<'_, SpdmError> {
        self.len = 0;
        self.total = 0;
        self.transcript = self.vca_transcript.clone();
        self.send(&[self.version, code::GET_DIGESTS, 0, 0], State::WaitDigests)
    }

    /// Consumes the device's answer.
    pub fn step(&mut self, response: &[u8]) -> Action<'_, SpdmError> {
        let result = match self.state {
            State::WaitDigests => self.on_digests(response),
            State::WaitCertificate => self.on_certificate(response),
            State::Done => return Action::Done,
            State::Failed(e) => return Action::Failed(e),
            State::Idle => Err(SpdmError::NotWaiting),
        };
        match result {
            Err(e) => self.fail(e),
            Ok(()) if self.total != 0 && self.len == self.total => self.finish(),
            Ok(()) => self.ask_certificate(),
        }
    }

    fn on_digests(&mut self, response: &[u8]) -> Result<(), SpdmError> {
        let p = response_payload(response, self.version, code::DIGESTS)?;
        let mask = p[3];
        let n = mask.count_ones() as usize;
        let h = self.hash.bytes();
        let msg = exact(p, 4 + h * n, code::DIGESTS)?;
        if mask & 1 == 0 {
            return Err(SpdmError::NoSlot0);
        }
        self.digest[..h].copy_from_slice(&msg[4..4 + h]);
        self.transcript.update(msg);
        Ok(())
    }

    fn on_certificate(&mut self, response: &[u8]) -> Result<(), SpdmError> {
        let p = response_payload(response, self.version, code::CERTIFICATE)?;
        if p.len() < 8 {
            return Err(SpdmError::BadLength { code: code::CERTIFICATE, len: p.len() });
        }
        let portion = usize::from(le16(p, 4));
        let remainder = usize::from(le16(p, 6));
        let msg = exact(p, 8 + portion, code::CERTIFICATE)?;
        if p[2] & 0x0F != 0 || portion == 0 || portion > self.asked {
            return Err(SpdmError::BadPortion);
        }
        let total = self.len + portion + remainder;
        if total > CHAIN_MAX {
            return Err(SpdmError::ChainTooLarge { total });
        }
        if self.total != 0 && total != self.total {
            return Err(SpdmError::BadPortion);
        }
        self.chain[self.len..self.len + portion].copy_from_slice(&msg[8..]);
        self.len += portion;
        self.total = total;
        self.transcript.update(msg);
        Ok(())
    }

    fn finish(&mut self) -> Action<'_, SpdmError> {
        let chain = &self.chain[..self.len];
        if self.hash.digest(chain)[..] != self.digest[..self.hash.bytes()] {
            return self.fail(SpdmError::DigestMismatch);
        }
        match CertChain::parse_for(chain, self.hash) {
            Err(e) => return self.fail(SpdmError::Chain(e)),
            Ok(c) if c.leaf_key().asym() != self.asym => {
                let got = c.leaf_key().asym().bit();
                return self.fail(SpdmError::LeafKeyAlgorithm { got });
            }
            Ok(_) => {}
        }
        self.state = State::Done;
        Action::Done
    }

    /// The chain's bytes (SPDM format), once done.
    pub fn chain_bytes(&self) -> Option<&[u8]> {
        (self.state == State::Done).then_some(&self.chain[..self.len])
    }

    /// The checked chain, once done.
    pub fn chain(&self) -> Option<CertChain<'_>> {
        match self.state {
            // Checked whole, signatures included, when the last portion arrived.
            State::Done => CertChain::reread(&self.chain[..self.len], self.hash).ok(),
            _ => None,
        }
    }

    /// The hash state over VCA ‖ B so far (CHALLENGE continues it into M1 = VCA ‖ B ‖ C).
    pub fn transcript(&self) -> &Transcript {
        &self.transcript
    }

    /// The error the exchange stopped on.
    pub fn error(&self) -> Option<SpdmError> {
        match self.state {
            State::Failed(e) => Some(e),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spdm::chain::HEADER_BYTES;
    use sha2::{Digest, Sha384};

    extern crate std;
    use std::vec::Vec;

    const ROOT: &[u8] = include_bytes!("../../tests/fixtures/root.der");
    const CA: &[u8] = include_bytes!("../../tests/fixtures/ca.der");
    const LEAF: &[u8] = include_bytes!("../../tests/fixtures/leaf.der");

    fn chain() -> Vec<u8> {
        let body = [ROOT, CA, LEAF].concat();
        let mut out = Vec::new();
        out.extend_from_slice(&((HEADER_BYTES + body.len()) as u16).to_le_bytes());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&Sha384::digest(ROOT));
        out.extend_from_slice(&body);
        out
    }

    fn negotiated(dts: u32) -> Negotiated {
        Negotiated::p384(0x12, 0x2F6, dts, dts)
    }

    fn wrap(msg: &[u8]) -> Vec<u8> {
        let mut out = std::vec![0u8; doe::object_len(msg.len())];
        doe::encode(ObjectType::Spdm, msg, &mut out).unwrap();
        out
    }

    /// A device serving `chain` with `digest` in slot 0; `tamper` may change each answer.
    struct Device {
        chain: Vec<u8>,
        digest: [u8; 48],
        max_portion: usize,
    }

    impl Device {
        fn answer(&self, request: &[u8]) -> Vec<u8> {
            let m = doe::decode_as(request, ObjectType::Spdm).unwrap();
            match m[1] {
                code::GET_DIGESTS => {
                    let mut r = std::vec![0x12, code::DIGESTS, 0, 1];
                    r.extend_from_slice(&self.digest);
                    r
                }
                code::GET_CERTIFICATE => {
                    let offset = usize::from(le16(m, 4));
                    let want = usize::from(le16(m, 6)).min(self.max_portion);
                    let portion = want.min(self.chain.len() - offset);
                    let remainder = self.chain.len() - offset - portion;
                    let mut r = std::vec![0x12, code::CERTIFICATE, 0, 0];
                    r.extend_from_slice(&(portion as u16).to_le_bytes());
                    r.extend_from_slice(&(remainder as u16).to_le_bytes());
                    r.extend_from_slice(&self.chain[offset..offset + portion]);
                    r
                }
                other => panic!("unexpected request {other:#x}"),
            }
        }
    }

    fn run(device: &Device, dts: u32, tamper: impl Fn(usize, &mut Vec<u8>)) -> (CertRetrieval, Vec<Vec<u8>>) {
        let mut c = CertRetrieval::new(&negotiated(dts), b"vca");
        let mut sent = Vec::new();
        let mut req = match c.start() {
            Action::Send(r) => r.to_vec(),
            other => panic!("{other:?}"),
        };
        for i in 0.. {
            sent.push(doe::decode_as(&req, ObjectType::Spdm).unwrap().to_vec());
            let mut a = device.answer(&req);
            tamper(i, &mut a);
            match c.step(&wrap(&a)) {
                Action::Send(r) => req = r.to_vec(),
                _ => break,
            }
        }
        (c, sent)
    }

    /// Changes the device's `i`-th answer.
    type Tamper = dyn Fn(usize, &mut Vec<u8>);

    fn good_device(max_portion: usize) -> Device {
        let chain = chain();
        Device { digest: Sha384::digest(&chain).into(), chain, max_portion }
    }

    #[test]
    fn reads_the_chain_in_chunks_and_checks_it() {
        let d = good_device(usize::MAX);
        let (c, sent) = run(&d, 0x1000, |_, _| {});
        assert_eq!(c.error(), None);
        let chain = c.chain().unwrap();
        assert_eq!(chain.certs(), &[ROOT, CA, LEAF]);
        // 1498-byte chain, 1024-byte chunks: GET_DIGESTS and two GET_CERTIFICATEs.
        assert_eq!(d.chain.len(), 1498);
        assert_eq!(sent.len(), 3);
        // A device that answers at most 100 bytes at a time, and a small DataTransferSize.
        let (c, sent) = run(&good_device(100), 0x1000, |_, _| {});
        assert!(c.chain().is_some());
        assert_eq!(sent.len(), 1 + d.chain.len().div_ceil(100));
        let (c, sent) = run(&d, 300, |_, _| {});
        assert!(c.chain().is_some());
        assert_eq!(le16(&sent[1], 6), 292, "asks DataTransferSize - 8");
    }

    #[test]
    fn each_bad_answer_fails_with_its_own_error() {
        let d = good_device(300);
        let cases: [(&Tamper, SpdmError); 7] = [
            (
                &|i, a| {
                    if i == 0 {
                        a[3] = 2
                    }
                },
                SpdmError::NoSlot0,
            ),
            (
                &|i, a| {
                    if i == 0 {
                        a[10] ^= 1
                    }
                },
                SpdmError::DigestMismatch,
            ),
            (
                &|i, a| {
                    if i == 1 {
                        a[4] = 0;
                        a[5] = 0;
                        a.truncate(8)
                    }
                },
                SpdmError::BadPortion,
            ),
            (
                &|i, a| {
                    if i == 2 {
                        a[6] = a[6].wrapping_add(1)
                    }
                },
                SpdmError::BadPortion,
            ),
            (
                &|i, a| {
                    if i == 1 {
                        a[6] = 0xFF;
                        a[7] = 0xFF
                    }
                },
                SpdmError::ChainTooLarge { total: 300 + 0xFFFF },
            ),
            (
                &|i, a| {
                    if i == 1 {
                        a[2] = 1
                    }
                },
                SpdmError::BadPortion,
            ),
            (
                &|i, a| {
                    if i == 1 {
                        a[1] = 0x7F;
                        a[2] = 0x05
                    }
                },
                SpdmError::Responder { code: 0x05, data: 0 },
            ),
        ];
        for (tamper, want) in cases {
            let (c, _) = run(&d, 0x1000, tamper);
            assert_eq!(c.error(), Some(want));
            assert!(c.chain().is_none());
        }
        // A device whose digest matches a malformed chain: the chain check catches it.
        let mut bad = d.chain.clone();
        bad[2] = 1;
        let d = Device { digest: Sha384::digest(&bad).into(), chain: bad, max_portion: 300 };
        let (c, _) = run(&d, 0x1000, |_, _| {});
        assert_eq!(c.error(), Some(SpdmError::Chain(crate::spdm::chain::ChainError::Reserved)));
    }

    #[test]
    fn the_transcript_is_vca_then_every_exchanged_message() {
        let d = good_device(500);
        let mut c = CertRetrieval::new(&negotiated(0x1000), b"vca");
        let mut b = Sha384::new_with_prefix(b"vca");
        let mut req = match c.start() {
            Action::Send(r) => r.to_vec(),
            other => panic!("{other:?}"),
        };
        loop {
            b.update(doe::decode_as(&req, ObjectType::Spdm).unwrap());
            let a = d.answer(&req);
            b.update(&a);
            match c.step(&wrap(&a)) {
                Action::Send(r) => req = r.to_vec(),
                _ => break,
            }
        }
        assert_eq!(c.transcript().clone().finalize()[..], b.finalize()[..]);
    }
}
