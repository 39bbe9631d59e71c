//! The evidence bundle (`attest::evidence`'s format) written without a heap, into a caller's
//! buffer: the host agent builds it from `Tsm::tdi_evidence` for the verifier.

use attest::evidence::{RecordType, HEADER_BYTES, MAGIC, RECORD_HEADER_BYTES, VERSION};

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

    /// The bundle so far.
    pub fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
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
