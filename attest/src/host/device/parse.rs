//! Parsers of the device evidence blobs: the SPDM certificate chain, the measurement exchange,
//! the TDISP interface report, and the SPDM signing prefix. Every length is checked against the
//! bytes before it is used; errors are text for the user.

use sha2::{Digest, Sha256, Sha384};

/// A parsed SPDM certificate chain.
#[derive(Debug, Clone)]
pub struct Chain {
    /// The DER certificates, root first.
    pub certs: Vec<Vec<u8>>,
}

fn der_len(b: &[u8]) -> Option<usize> {
    if *b.first()? != 0x30 {
        return None;
    }
    let first = usize::from(*b.get(1)?);
    let (len, head) = if first < 0x80 {
        (first, 2)
    } else {
        let n = first & 0x7f;
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = len << 8 | usize::from(*b.get(2 + i)?);
        }
        (len, 2 + n)
    };
    head.checked_add(len).filter(|&t| t <= b.len())
}

/// Parses an SPDM certificate chain whose RootHash is a SHA-384.
///
/// # Errors
/// What is wrong, as text.
pub fn parse_chain(chain: &[u8]) -> Result<Chain, String> {
    parse_chain_with(chain, 0x02)
}

/// Parses an SPDM certificate chain whose RootHash is in `base_hash` (BaseHashSel: 0x01
/// SHA-256, 0x02 SHA-384).
///
/// # Errors
/// What is wrong, as text.
pub fn parse_chain_with(chain: &[u8], base_hash: u32) -> Result<Chain, String> {
    let (h, name) = match base_hash {
        0x01 => (32, "SHA-256"),
        0x02 => (48, "SHA-384"),
        other => return Err(format!("BaseHashSel {other:#x} is neither SHA-256 nor SHA-384")),
    };
    let header = 4 + h;
    if chain.len() < header {
        return Err(format!("{} bytes, shorter than the {header}-byte header", chain.len()));
    }
    let length = usize::from(u16::from_le_bytes([chain[0], chain[1]]));
    if length != chain.len() {
        return Err(format!("Length field says {length} bytes, the chain has {}", chain.len()));
    }
    if chain[2..4] != [0, 0] {
        return Err("reserved field is not zero".into());
    }
    let mut certs = Vec::new();
    let mut rest = &chain[header..];
    while !rest.is_empty() {
        let n = der_len(rest).ok_or_else(|| format!("certificate {} is not one DER SEQUENCE", certs.len()))?;
        certs.push(rest[..n].to_vec());
        rest = &rest[n..];
    }
    let Some(root) = certs.first() else {
        return Err("no certificate after the header".into());
    };
    let root_hash = if h == 32 { Sha256::digest(root).to_vec() } else { Sha384::digest(root).to_vec() };
    if root_hash[..] != chain[4..header] {
        return Err(format!("RootHash is not the {name} of the root certificate"));
    }
    Ok(Chain { certs })
}

/// One DMTF measurement block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    /// Index.
    pub index: u8,
    /// DMTFSpecMeasurementValueType (bit 7: raw bit stream).
    pub value_type: u8,
    /// The value.
    pub value: Vec<u8>,
}

/// A parsed measurement exchange.
#[derive(Debug, Clone)]
pub struct Measurements {
    /// SPDM version of the exchange.
    pub version: u8,
    /// The blocks, in record order.
    pub blocks: Vec<Block>,
    /// Bytes of the request.
    pub request_len: usize,
    /// Offset of the signature in the response.
    pub signature_at: usize,
}

/// Parses a MEASUREMENTS record signed with ECDSA P-384.
///
/// # Errors
/// What is wrong, as text.
pub fn parse_measurements(rec: &[u8]) -> Result<Measurements, String> {
    parse_measurements_with(rec, 0x80)
}

/// Parses a MEASUREMENTS record: GET_MEASUREMENTS (signature requested) ‖ MEASUREMENTS, signed
/// with `base_asym` (BaseAsymSel: 0x10 ECDSA P-256, 0x80 ECDSA P-384).
///
/// # Errors
/// What is wrong, as text.
pub fn parse_measurements_with(rec: &[u8], base_asym: u32) -> Result<Measurements, String> {
    let (sig_len, curve) = match base_asym {
        0x10 => (64, "P-256"),
        0x80 => (96, "P-384"),
        other => return Err(format!("BaseAsymSel {other:#x} is neither ECDSA P-256 nor ECDSA P-384")),
    };
    let (Some(&version), Some(&code), Some(&attrs)) = (rec.first(), rec.get(1), rec.get(2)) else {
        return Err("shorter than a GET_MEASUREMENTS header".into());
    };
    if code != 0xE0 {
        return Err(format!("starts with request code {code:#04x}, not GET_MEASUREMENTS (0xe0)"));
    }
    if attrs & 1 == 0 {
        return Err("GET_MEASUREMENTS did not ask for a signature: unsigned measurements".into());
    }
    let request_len = match version {
        0x12 => 37,
        0x13 => 45,
        v => return Err(format!("SPDM version {}.{} (signed measurements need 1.2 or 1.3)", v >> 4, v & 0xf)),
    };
    let p = rec.get(request_len..).ok_or("the request is cut short")?;
    if p.len() < 8 || p[0] != version || p[1] != 0x60 {
        return Err("no MEASUREMENTS response of the same version after the request".into());
    }
    let count = usize::from(p[4]);
    let record_len = usize::from(p[5]) | usize::from(p[6]) << 8 | usize::from(p[7]) << 16;
    let record = p.get(8..8 + record_len).ok_or("measurement record runs past the response")?;
    let opaque_at = 8 + record_len + 32;
    let opaque_len = p.get(opaque_at..opaque_at + 2).map(|b| usize::from(u16::from_le_bytes([b[0], b[1]])));
    let opaque_len = opaque_len.ok_or("response cut short before its opaque data")?;
    let context = if version >= 0x13 { 8 } else { 0 };
    let signature_at = opaque_at + 2 + opaque_len + context;
    if p.len() != signature_at + sig_len {
        return Err(format!(
            "response is {} bytes; its fields and a {curve} signature make {}",
            p.len(),
            signature_at + sig_len
        ));
    }
    let mut blocks = Vec::new();
    let mut at = 0;
    for i in 0..count {
        let h = record.get(at..at + 7).ok_or_else(|| format!("block {i} runs past the record"))?;
        let size = usize::from(u16::from_le_bytes([h[2], h[3]]));
        let value_size = usize::from(u16::from_le_bytes([h[5], h[6]]));
        if h[1] != 0x01 || size != 3 + value_size {
            return Err(format!("block {i} is not a DMTF measurement block"));
        }
        let value = record.get(at + 7..at + 7 + value_size).ok_or_else(|| format!("block {i} runs past the record"))?;
        if blocks.iter().any(|b: &Block| b.index == h[0]) {
            return Err(format!("index {} appears twice", h[0]));
        }
        blocks.push(Block { index: h[0], value_type: h[4], value: value.to_vec() });
        at += 7 + value_size;
    }
    if at != record.len() {
        return Err(format!("{} bytes after the last block", record.len() - at));
    }
    Ok(Measurements { version, blocks, request_len, signature_at })
}

/// One MMIO range of an interface report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// FIRST_PAGE.
    pub first_page: u64,
    /// NUMBER_OF_PAGES.
    pub pages: u32,
    /// RANGE_ATTRIBUTES.
    pub attributes: u16,
    /// RANGE_ID.
    pub range_id: u16,
}

/// A parsed TDISP DEVICE_INTERFACE_REPORT.
#[derive(Debug, Clone)]
pub struct InterfaceReport {
    /// INTERFACE_INFO.
    pub interface_info: u16,
    /// The MMIO ranges.
    pub ranges: Vec<Range>,
}

/// Parses a DEVICE_INTERFACE_REPORT (TDISP 11.3.11).
///
/// # Errors
/// What is wrong, as text.
pub fn parse_interface_report(r: &[u8]) -> Result<InterfaceReport, String> {
    if r.len() < 20 {
        return Err(format!("{} bytes, shorter than the 20-byte minimum", r.len()));
    }
    let le16 = |at: usize| u16::from_le_bytes([r[at], r[at + 1]]);
    let le32 = |at: usize| u32::from_le_bytes([r[at], r[at + 1], r[at + 2], r[at + 3]]);
    if le16(2) != 0 {
        return Err("reserved field is not zero".into());
    }
    let count = le32(12) as usize;
    let info_at = count.checked_mul(16).and_then(|n| n.checked_add(16)).filter(|&a| a + 4 <= r.len());
    let info_at = info_at.ok_or_else(|| format!("{count} MMIO ranges do not fit {} bytes", r.len()))?;
    let ranges = (0..count)
        .map(|i| {
            let at = 16 + 16 * i;
            let mut page = [0u8; 8];
            page.copy_from_slice(&r[at..at + 8]);
            Range {
                first_page: u64::from_le_bytes(page),
                pages: le32(at + 8),
                attributes: le16(at + 12),
                range_id: le16(at + 14),
            }
        })
        .collect();
    let info_len = le32(info_at) as usize;
    if r.len() != info_at + 4 + info_len {
        return Err(format!("DEVICE_SPECIFIC_INFO length {info_len} does not end the report"));
    }
    Ok(InterfaceReport { interface_info: le16(0), ranges })
}

/// The 100-byte SPDM 1.2+ signing prefix for measurements.
pub(crate) fn signing_prefix(version: u8) -> [u8; 100] {
    let mut p = [0u8; 100];
    for i in 0..4 {
        p[16 * i..16 * (i + 1)].copy_from_slice(b"dmtf-spdm-v1.2.*");
        p[16 * i + 13] = b'0' + (version & 0xf);
    }
    let ctx = b"responder-measurements signing";
    p[100 - ctx.len()..].copy_from_slice(ctx);
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn block(index: u8, value_type: u8, value: &[u8]) -> Vec<u8> {
        let mut b = vec![index, 0x01];
        b.extend_from_slice(&((3 + value.len()) as u16).to_le_bytes());
        b.push(value_type);
        b.extend_from_slice(&(value.len() as u16).to_le_bytes());
        b.extend_from_slice(value);
        b
    }

    /// GET_MEASUREMENTS (1.2, signature requested) ‖ MEASUREMENTS with `blocks` and a dummy
    /// signature.
    fn exchange(blocks: &[Vec<u8>]) -> Vec<u8> {
        let mut m = vec![0x12, 0xE0, 0x01, 0xFF];
        m.extend_from_slice(&[0x11; 32]);
        m.push(0);
        let rec: Vec<u8> = blocks.concat();
        m.extend_from_slice(&[0x12, 0x60, 0, 0, blocks.len() as u8]);
        m.extend_from_slice(&(rec.len() as u32).to_le_bytes()[..3]);
        m.extend_from_slice(&rec);
        m.extend_from_slice(&[0x22; 32]);
        m.extend_from_slice(&[0, 0]);
        m.extend_from_slice(&[0x33; 96]);
        m
    }

    #[test]
    fn measurements_parse_and_each_defect_is_named() {
        let good = exchange(&[block(1, 0x01, &[0xAA; 48]), block(3, 0x83, b"cfg")]);
        let m = parse_measurements(&good).unwrap();
        assert_eq!((m.version, m.request_len, m.blocks.len()), (0x12, 37, 2));
        assert_eq!(m.blocks[1], Block { index: 3, value_type: 0x83, value: b"cfg".to_vec() });
        let cases: [(Vec<u8>, &str); 6] = [
            (vec![], "shorter than a GET_MEASUREMENTS header"),
            (
                {
                    let mut b = good.clone();
                    b[1] = 0xE1;
                    b
                },
                "not GET_MEASUREMENTS",
            ),
            (
                {
                    let mut b = good.clone();
                    b[0] = 0x11;
                    b
                },
                "signed measurements need 1.2 or 1.3",
            ),
            (
                {
                    let mut b = good.clone();
                    b.push(0);
                    b
                },
                "a P-384 signature make",
            ),
            (exchange(&[block(1, 1, &[1]), block(1, 1, &[2])]), "index 1 appears twice"),
            (
                {
                    let mut b = good.clone();
                    b[37 + 4] = 3;
                    b
                },
                "block 2 runs past the record",
            ),
        ];
        for (bytes, want) in cases {
            let e = parse_measurements(&bytes).unwrap_err();
            assert!(e.contains(want), "{want}: {e}");
        }
    }

    #[test]
    fn chains_and_interface_reports_name_their_defects() {
        assert!(parse_chain(&[0; 10]).unwrap_err().contains("shorter than the 52-byte header"));
        let mut c = vec![0u8; 52];
        c[0] = 52;
        assert!(parse_chain(&c).unwrap_err().contains("no certificate"));
        c[0] = 53;
        assert!(parse_chain(&c).unwrap_err().contains("Length field says 53"));
        let mut r = vec![0u8; 20];
        assert_eq!(parse_interface_report(&r).unwrap().ranges.len(), 0);
        r[12] = 1;
        assert!(parse_interface_report(&r).unwrap_err().contains("1 MMIO ranges do not fit"));
        r[12] = 0;
        r[2] = 1;
        assert!(parse_interface_report(&r).unwrap_err().contains("reserved"));
    }

    #[test]
    fn the_signing_prefix_is_dsp0274_s() {
        let p = signing_prefix(0x13);
        assert_eq!(&p[..64], b"dmtf-spdm-v1.3.*dmtf-spdm-v1.3.*dmtf-spdm-v1.3.*dmtf-spdm-v1.3.*");
        assert_eq!(&p[64..70], &[0; 6]);
        assert_eq!(&p[70..], b"responder-measurements signing");
    }

    proptest! {
        #[test]
        fn parsers_never_panic(b in proptest::collection::vec(any::<u8>(), 0..400), patch in any::<u8>()) {
            let _ = parse_chain(&b);
            let _ = parse_interface_report(&b);
            let _ = parse_measurements(&b);
            let mut m = exchange(&[block(1, 1, &b[..b.len().min(60)])]);
            let at = usize::from(patch) % m.len();
            m[at] ^= patch | 1;
            let _ = parse_measurements(&m);
            let mut c = b.clone();
            if c.len() > 52 {
                let n = c.len() as u16;
                c[..2].copy_from_slice(&n.to_le_bytes());
                c[2..4].fill(0);
                c[52] = 0x30;
            }
            let _ = parse_chain(&c);
        }
    }
}
