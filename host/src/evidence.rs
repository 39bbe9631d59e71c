//! The evidence bundle (`attest::evidence`'s format) written without a heap, into a caller's
//! buffer: the host agent reads each record of a TDI's evidence from the TSM with
//! SEAMLESS.TDI.EVIDENCE.RD ([`tdi_bundle`]) and forwards the bundle to the verifier, which
//! checks it against the digests the TD's signed report carries.

use core::fmt;

use attest::evidence::{RecordType, HEADER_BYTES, MAGIC, RECORD_HEADER_BYTES, RECORD_TYPES, VERSION};
use tsm::abi::host::leaf;
use tsm::Regs;
use tsm_client::host::HostError;

use crate::Cpu;

/// The bundle did not fit the buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BufferFull {
    /// Bytes the record needed.
    pub needed: usize,
    /// Bytes left.
    pub left: usize,
}

/// A bundle being written into `buf`.
#[derive(Debug)]
pub struct BundleWriter<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl<'a> BundleWriter<'a> {
    /// Starts a bundle (writes the header).
    ///
    /// # Errors
    /// [`BufferFull`] if `buf` cannot hold the header.
    pub fn new(buf: &'a mut [u8]) -> Result<BundleWriter<'a>, BufferFull> {
        if buf.len() < HEADER_BYTES {
            return Err(BufferFull { needed: HEADER_BYTES, left: buf.len() });
        }
        buf[..8].copy_from_slice(&MAGIC);
        buf[8..10].copy_from_slice(&VERSION.to_le_bytes());
        buf[10..12].copy_from_slice(&0u16.to_le_bytes());
        Ok(BundleWriter { buf, len: HEADER_BYTES })
    }

    /// Appends one record; on failure nothing is appended.
    ///
    /// # Errors
    /// [`BufferFull`].
    pub fn push(&mut self, kind: RecordType, device: u16, data: &[u8]) -> Result<(), BufferFull> {
        let needed = RECORD_HEADER_BYTES + data.len();
        let left = self.buf.len() - self.len;
        let length = u32::try_from(data.len()).map_err(|_| BufferFull { needed, left })?;
        if needed > left {
            return Err(BufferFull { needed, left });
        }
        let at = self.len;
        self.buf[at..at + 2].copy_from_slice(&(kind as u16).to_le_bytes());
        self.buf[at + 2..at + 4].copy_from_slice(&device.to_le_bytes());
        self.buf[at + 4..at + 8].copy_from_slice(&length.to_le_bytes());
        self.buf[at + 8..at + needed].copy_from_slice(data);
        self.len += needed;
        Ok(())
    }

    /// Appends one record of `len` bytes that `fill` writes in place; if `fill` fails, nothing
    /// is appended.
    ///
    /// # Errors
    /// [`PushError::Full`], or `fill`'s error.
    pub fn push_with<E>(
        &mut self,
        kind: RecordType,
        device: u16,
        len: usize,
        fill: impl FnOnce(&mut [u8]) -> Result<(), E>,
    ) -> Result<(), PushError<E>> {
        let needed = RECORD_HEADER_BYTES + len;
        let left = self.buf.len() - self.len;
        let length = u32::try_from(len).map_err(|_| PushError::Full(BufferFull { needed, left }))?;
        if needed > left {
            return Err(PushError::Full(BufferFull { needed, left }));
        }
        let at = self.len;
        fill(&mut self.buf[at + RECORD_HEADER_BYTES..at + needed]).map_err(PushError::Fill)?;
        self.buf[at..at + 2].copy_from_slice(&(kind as u16).to_le_bytes());
        self.buf[at + 2..at + 4].copy_from_slice(&device.to_le_bytes());
        self.buf[at + 4..at + 8].copy_from_slice(&length.to_le_bytes());
        self.len += needed;
        Ok(())
    }

    /// The bundle so far.
    pub fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// Why [`BundleWriter::push_with`] appended nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushError<E> {
    /// The record does not fit.
    Full(BufferFull),
    /// The filler failed.
    Fill(E),
}

/// Why the host could not build a TDI's evidence bundle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EvidenceError {
    /// SEAMLESS.TDI.EVIDENCE.RD (or a page for it) failed.
    Host(HostError),
    /// The bundle does not fit the buffer.
    Full(BufferFull),
    /// The TSM's record changed length between two reads of it.
    Moved(RecordType),
}

impl fmt::Display for EvidenceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EvidenceError::Host(e) => e.fmt(f),
            EvidenceError::Full(b) => write!(f, "the evidence needs {} more bytes, {} are left", b.needed, b.left),
            EvidenceError::Moved(k) => write!(f, "the {k:?} record changed while it was read"),
        }
    }
}

impl From<HostError> for EvidenceError {
    fn from(e: HostError) -> EvidenceError {
        EvidenceError::Host(e)
    }
}

/// One SEAMLESS.TDI.EVIDENCE.RD: `(record length, bytes copied into page)`.
fn evidence_rd<C: Cpu + ?Sized>(
    cpu: &mut C,
    tdi: u64,
    kind: RecordType,
    offset: u64,
    page: u64,
) -> Result<(u64, u64), HostError> {
    let regs = Regs { r9: page, ..Regs::call(leaf::TDI_EVIDENCE_RD, tdi, kind as u64, offset, 0) };
    let r = tsm_client::host::call(cpu, "SEAMLESS.TDI.EVIDENCE.RD", regs)?;
    Ok((r.rcx, r.rdx))
}

/// The evidence bundle of the TDI whose page is `tdi` (certificate chain, VCA, measurement
/// exchange, interface report, as SEAMLESS.TDI.EVIDENCE.RD gives them, a page at a time through
/// one of the host's own pages), written into `out`; returns its length.
///
/// # Errors
/// [`EvidenceError`].
pub fn tdi_bundle<C: Cpu + ?Sized>(cpu: &mut C, tdi: u64, out: &mut [u8]) -> Result<usize, EvidenceError> {
    let page = tsm_client::host::scratch(cpu)?;
    let mut w = BundleWriter::new(out).map_err(EvidenceError::Full)?;
    for kind in RECORD_TYPES {
        let (len, _) = evidence_rd(cpu, tdi, kind, 0, page)?;
        let len = usize::try_from(len).map_err(|_| EvidenceError::Moved(kind))?;
        w.push_with(kind, 0, len, |data| {
            let mut at = 0;
            while at < data.len() {
                let (total, n) = evidence_rd(cpu, tdi, kind, at as u64, page)?;
                let n = n as usize;
                if total != data.len() as u64 || n == 0 || n > data.len() - at {
                    return Err(EvidenceError::Moved(kind));
                }
                cpu.read(page, &mut data[at..at + n]);
                at += n;
            }
            Ok(())
        })
        .map_err(|e| match e {
            PushError::Full(b) => EvidenceError::Full(b),
            PushError::Fill(e) => e,
        })?;
    }
    Ok(w.bytes().len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use attest::evidence::Evidence;

    #[test]
    fn new_rejects_a_buffer_smaller_than_the_header() {
        let mut b = [0u8; HEADER_BYTES - 1];
        assert_eq!(BundleWriter::new(&mut b).unwrap_err(), BufferFull { needed: HEADER_BYTES, left: HEADER_BYTES - 1 });
    }

    #[test]
    fn push_rejects_a_record_that_does_not_fit_and_appends_nothing() {
        let mut b = [0u8; 32];
        let mut w = BundleWriter::new(&mut b).unwrap();
        w.push(RecordType::Vca, 0, b"abcd").unwrap();
        assert_eq!(w.push(RecordType::CertChain, 0, &[1; 9]), Err(BufferFull { needed: 17, left: 8 }));
        assert_eq!(w.bytes().len(), HEADER_BYTES + 12);
    }

    #[test]
    fn push_with_appends_nothing_when_the_filler_fails_or_the_record_does_not_fit() {
        let mut b = [0u8; 32];
        let mut w = BundleWriter::new(&mut b).unwrap();
        let r = w.push_with(RecordType::Vca, 0, 4, |d| {
            d.copy_from_slice(b"half");
            Err("the TSM refused")
        });
        assert_eq!(r, Err(PushError::Fill("the TSM refused")));
        assert_eq!(w.bytes().len(), HEADER_BYTES);
        let r = w.push_with(RecordType::Vca, 0, 100, |_| Ok::<(), ()>(()));
        assert_eq!(r, Err(PushError::Full(BufferFull { needed: 108, left: 20 })));
        w.push_with(RecordType::Vca, 0, 4, |d| {
            d.copy_from_slice(b"abcd");
            Ok::<(), ()>(())
        })
        .unwrap();
        assert_eq!(attest::evidence::Evidence::parse(w.bytes()).unwrap().get(RecordType::Vca, 0), Some(&b"abcd"[..]));
    }

    #[test]
    fn bundle_happy_path_parses_with_the_verifiers_reader() {
        let mut b = [0u8; 256];
        let mut w = BundleWriter::new(&mut b).unwrap();
        w.push(RecordType::CertChain, 0, b"chain").unwrap();
        w.push(RecordType::Vca, 0, b"vca").unwrap();
        w.push(RecordType::Measurements, 0, b"meas").unwrap();
        w.push(RecordType::InterfaceReport, 0, b"report").unwrap();
        let e = Evidence::parse(w.bytes()).unwrap();
        assert_eq!(e.get(RecordType::CertChain, 0), Some(&b"chain"[..]));
        assert_eq!(e.get(RecordType::InterfaceReport, 0), Some(&b"report"[..]));
        assert_eq!(e.records().count(), 4);
    }
}
