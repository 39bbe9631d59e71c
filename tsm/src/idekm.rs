//! IDE_KM (PCIe 6.x §6.33.3) requester messages, sans-IO: the key-management protocol for IDE
//! streams, carried like TDISP in SPDM VENDOR_DEFINED messages (PCI-SIG, ProtocolID 0) inside the
//! SPDM session. Keys are programmed per stream, key set, direction and sub-stream.

use crate::tdisp::VDM_HEADER_BYTES;

/// Object IDs.
#[allow(missing_docs)]
pub mod obj {
    pub const QUERY: u8 = 0x00;
    pub const QUERY_RESP: u8 = 0x01;
    pub const KEY_PROG: u8 = 0x02;
    pub const KP_ACK: u8 = 0x03;
    pub const K_SET_GO: u8 = 0x04;
    pub const K_SET_STOP: u8 = 0x05;
    pub const K_GOSTOP_ACK: u8 = 0x06;
}

/// One key slot: key set, direction and sub-stream, as the KeySubStream byte encodes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeySlot {
    /// Key set K1 (`true`) or K0.
    pub key_set_1: bool,
    /// Transmit (`true`) or receive, from the device's side.
    pub transmit: bool,
    /// Sub-stream: 0 posted requests, 1 non-posted requests, 2 completions.
    pub sub_stream: u8,
}

impl KeySlot {
    /// The KeySubStream byte: bit0 key set, bit1 direction, bits 7:4 sub-stream.
    pub const fn byte(self) -> u8 {
        (self.key_set_1 as u8) | (self.transmit as u8) << 1 | (self.sub_stream & 0xF) << 4
    }

    /// The six slots of one key set: {RX, TX} × {PR, NPR, CPL}.
    pub fn all(key_set_1: bool) -> [KeySlot; 6] {
        let mut out = [KeySlot { key_set_1, transmit: false, sub_stream: 0 }; 6];
        for (i, s) in out.iter_mut().enumerate() {
            s.transmit = i >= 3;
            s.sub_stream = (i % 3) as u8;
        }
        out
    }
}

/// A request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request<'a> {
    /// QUERY of a port.
    Query {
        /// PortIndex.
        port: u8,
    },
    /// KEY_PROG: a 256-bit key and a 64-bit initial IV for one slot.
    KeyProg {
        /// Stream ID.
        stream: u8,
        /// Key slot.
        slot: KeySlot,
        /// PortIndex.
        port: u8,
        /// The key (8 DWs).
        key: &'a [u8; 32],
        /// The IFV (2 DWs).
        ifv: &'a [u8; 8],
    },
    /// K_SET_GO.
    Go {
        /// Stream ID.
        stream: u8,
        /// Key slot.
        slot: KeySlot,
        /// PortIndex.
        port: u8,
    },
    /// K_SET_STOP.
    Stop {
        /// Stream ID.
        stream: u8,
        /// Key slot.
        slot: KeySlot,
        /// PortIndex.
        port: u8,
    },
}

/// Why an IDE_KM answer is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdeKmError {
    /// Not an SPDM VENDOR_DEFINED_RESPONSE for PCI-SIG IDE_KM.
    NotIdeKm,
    /// Wrong size for its object.
    Length,
    /// Another object than the request's answer.
    Unexpected {
        /// Object ID received.
        got: u8,
    },
    /// The answer names another stream, slot or port than the request.
    Mismatch,
    /// KP_ACK with a non-zero status.
    Status(u8),
    /// The output buffer is too small.
    Buffer,
}

/// Builds the SPDM VENDOR_DEFINED_REQUEST for `request` into `out`; returns its length.
///
/// # Errors
/// [`IdeKmError::Buffer`].
pub fn encode(spdm_version: u8, request: &Request<'_>, out: &mut [u8]) -> Result<usize, IdeKmError> {
    let len = match request {
        Request::Query { .. } => 3,
        Request::KeyProg { .. } => 47,
        Request::Go { .. } | Request::Stop { .. } => 7,
    };
    let total = VDM_HEADER_BYTES + len;
    if out.len() < total {
        return Err(IdeKmError::Buffer);
    }
    let out = &mut out[..total];
    out.fill(0);
    out[0] = spdm_version;
    out[1] = 0xFE;
    out[4..6].copy_from_slice(&3u16.to_le_bytes());
    out[6] = 2;
    out[7..9].copy_from_slice(&1u16.to_le_bytes());
    out[9..11].copy_from_slice(&((1 + len) as u16).to_le_bytes());
    out[11] = 0x00; // ProtocolID: IDE_KM
    let m = &mut out[VDM_HEADER_BYTES..];
    match *request {
        Request::Query { port } => {
            m[0] = obj::QUERY;
            m[2] = port;
        }
        Request::KeyProg { stream, slot, port, key, ifv } => {
            m[0] = obj::KEY_PROG;
            m[3] = stream;
            m[5] = slot.byte();
            m[6] = port;
            m[7..39].copy_from_slice(key);
            m[39..47].copy_from_slice(ifv);
        }
        Request::Go { stream, slot, port } | Request::Stop { stream, slot, port } => {
            m[0] = if matches!(request, Request::Go { .. }) { obj::K_SET_GO } else { obj::K_SET_STOP };
            m[3] = stream;
            m[5] = slot.byte();
            m[6] = port;
        }
    }
    Ok(total)
}

/// What QUERY_RESP reports about the port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueryResponse<'a> {
    /// PortIndex.
    pub port: u8,
    /// Device/function number.
    pub dev_func: u8,
    /// Bus number.
    pub bus: u8,
    /// Segment.
    pub segment: u8,
    /// MaxPortIndex.
    pub max_port: u8,
    /// The IDE register block (capability, control, stream registers), as little-endian DWs.
    pub registers: &'a [u8],
}

fn payload(spdm_version: u8, m: &[u8]) -> Result<&[u8], IdeKmError> {
    if m.len() < VDM_HEADER_BYTES + 1
        || m[0] != spdm_version
        || m[1] != 0x7E
        || m[4..6] != [3, 0]
        || m[6] != 2
        || m[7..9] != [1, 0]
        || m[11] != 0
    {
        return Err(IdeKmError::NotIdeKm);
    }
    let len = usize::from(u16::from_le_bytes([m[9], m[10]]));
    if len != m.len() - VDM_HEADER_BYTES + 1 {
        return Err(IdeKmError::Length);
    }
    Ok(&m[VDM_HEADER_BYTES..])
}

/// Parses QUERY_RESP to a QUERY of `port`.
///
/// # Errors
/// An [`IdeKmError`].
pub fn decode_query<'a>(spdm_version: u8, port: u8, m: &'a [u8]) -> Result<QueryResponse<'a>, IdeKmError> {
    let p = payload(spdm_version, m)?;
    if p[0] != obj::QUERY_RESP {
        return Err(IdeKmError::Unexpected { got: p[0] });
    }
    // Header, then at least the IDE capability and control registers, in whole DWs.
    if p.len() < 7 + 8 || !(p.len() - 7).is_multiple_of(4) {
        return Err(IdeKmError::Length);
    }
    if p[2] != port {
        return Err(IdeKmError::Mismatch);
    }
    Ok(QueryResponse { port: p[2], dev_func: p[3], bus: p[4], segment: p[5], max_port: p[6], registers: &p[7..] })
}

/// Checks the acknowledgement of a KEY_PROG, K_SET_GO or K_SET_STOP `request`.
///
/// # Errors
/// An [`IdeKmError`].
pub fn check_ack(spdm_version: u8, request: &Request<'_>, m: &[u8]) -> Result<(), IdeKmError> {
    let p = payload(spdm_version, m)?;
    let (want, stream, slot, port) = match *request {
        Request::KeyProg { stream, slot, port, .. } => (obj::KP_ACK, stream, slot, port),
        Request::Go { stream, slot, port } | Request::Stop { stream, slot, port } => {
            (obj::K_GOSTOP_ACK, stream, slot, port)
        }
        Request::Query { .. } => return Err(IdeKmError::Unexpected { got: p[0] }),
    };
    if p[0] != want {
        return Err(IdeKmError::Unexpected { got: p[0] });
    }
    if p.len() != 7 {
        return Err(IdeKmError::Length);
    }
    if p[3] != stream || p[5] != slot.byte() || p[6] != port {
        return Err(IdeKmError::Mismatch);
    }
    if want == obj::KP_ACK && p[4] != 0 {
        return Err(IdeKmError::Status(p[4]));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    extern crate std;
    use std::vec::Vec;

    fn vdm(body: &[u8]) -> Vec<u8> {
        let mut m = std::vec![0x12, 0x7E, 0, 0, 3, 0, 2, 1, 0];
        m.extend_from_slice(&((1 + body.len()) as u16).to_le_bytes());
        m.push(0);
        m.extend_from_slice(body);
        m
    }

    #[test]
    fn key_substream_bytes_and_sizes() {
        let slots = KeySlot::all(false);
        let bytes: Vec<u8> = slots.iter().map(|s| s.byte()).collect();
        assert_eq!(bytes, [0x00, 0x10, 0x20, 0x02, 0x12, 0x22]);
        assert_eq!(KeySlot { key_set_1: true, transmit: true, sub_stream: 2 }.byte(), 0x23);
        let mut out = [0u8; 64];
        let key = [0x11; 32];
        let ifv = [0x22; 8];
        let n = encode(0x12, &Request::KeyProg { stream: 1, slot: slots[4], port: 0, key: &key, ifv: &ifv }, &mut out)
            .unwrap();
        assert_eq!(n, 12 + 47, "KEY_PROG is 48 bytes with the ProtocolID");
        assert_eq!(&out[12..19], &[obj::KEY_PROG, 0, 0, 1, 0, 0x12, 0]);
        assert_eq!(encode(0x12, &Request::Query { port: 0 }, &mut out).unwrap(), 15);
        assert_eq!(encode(0x12, &Request::Go { stream: 1, slot: slots[0], port: 0 }, &mut out).unwrap(), 19);
    }

    #[test]
    fn acknowledgements_must_match_their_request() {
        let slot = KeySlot { key_set_1: false, transmit: true, sub_stream: 1 };
        let key = [0; 32];
        let ifv = [0; 8];
        let prog = Request::KeyProg { stream: 3, slot, port: 0, key: &key, ifv: &ifv };
        let ack = vdm(&[obj::KP_ACK, 0, 0, 3, 0, 0x12, 0]);
        assert_eq!(check_ack(0x12, &prog, &ack), Ok(()));
        assert_eq!(check_ack(0x12, &prog, &vdm(&[obj::KP_ACK, 0, 0, 3, 2, 0x12, 0])), Err(IdeKmError::Status(2)));
        assert_eq!(check_ack(0x12, &prog, &vdm(&[obj::KP_ACK, 0, 0, 4, 0, 0x12, 0])), Err(IdeKmError::Mismatch));
        assert_eq!(
            check_ack(0x12, &prog, &vdm(&[obj::K_GOSTOP_ACK, 0, 0, 3, 0, 0x12, 0])),
            Err(IdeKmError::Unexpected { got: 6 })
        );
        let go = Request::Go { stream: 3, slot, port: 0 };
        assert_eq!(check_ack(0x12, &go, &vdm(&[obj::K_GOSTOP_ACK, 0, 0, 3, 0, 0x12, 0])), Ok(()));
        let mut bad = ack.clone();
        bad[11] = 1;
        assert_eq!(check_ack(0x12, &prog, &bad), Err(IdeKmError::NotIdeKm), "TDISP, not IDE_KM");
        for n in 0..ack.len() {
            assert!(check_ack(0x12, &prog, &ack[..n]).is_err());
        }
    }

    #[test]
    fn query_response_parses() {
        let mut body = std::vec![obj::QUERY_RESP, 0, 0, 0x08, 0x01, 0, 0];
        body.extend_from_slice(&[0xAA; 8]);
        let resp = vdm(&body);
        let q = decode_query(0x12, 0, &resp).unwrap();
        assert_eq!((q.dev_func, q.bus, q.registers.len()), (0x08, 1, 8));
        assert_eq!(decode_query(0x12, 1, &vdm(&body)), Err(IdeKmError::Mismatch));
        body.push(0);
        assert_eq!(decode_query(0x12, 0, &vdm(&body)), Err(IdeKmError::Length));
    }
}
