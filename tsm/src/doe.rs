//! PCIe DOE (Data Object Exchange, PCIe r6 §6.30): data-object framing and the discovery
//! protocol, sans-IO. The TSM never touches a mailbox: it hands the host whole objects to write and
//! parses whole objects the host read back (TDX Connect's TDH.SPDM.CONNECT loop has this shape).
//!
//! An object is two header DWs and a payload zero-padded to a DW:
//! `vendor u16 | type u8 | reserved u8 | length u32` (length in DWs, headers included, bits 17:0,
//! 0 meaning 2^18), all little-endian.

use core::fmt;

/// Vendor ID of the PCI-SIG defined data objects.
pub const VENDOR_PCI_SIG: u16 = 0x0001;
/// Bytes of the two header DWs.
pub const HEADER_BYTES: usize = 8;
/// Largest object: 2^18 DWs.
pub const MAX_OBJECT_BYTES: usize = 1 << 20;
/// Entries a discovery walk accepts before it calls the device broken.
pub const MAX_DISCOVERY_ENTRIES: usize = 16;

/// PCI-SIG data object types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ObjectType {
    /// DOE discovery.
    Discovery = 0x00,
    /// CMA/SPDM.
    Spdm = 0x01,
    /// Secured CMA/SPDM (DSP0277).
    SecuredSpdm = 0x02,
}

/// Why bytes are not a DOE object the TSM accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DoeError {
    /// Fewer bytes than the two header DWs.
    Truncated {
        /// Bytes received.
        len: usize,
    },
    /// Not a whole number of DWs.
    NotDwAligned {
        /// Bytes received.
        len: usize,
    },
    /// The header's length does not match the bytes received.
    LengthMismatch {
        /// Bytes the header announces.
        header: usize,
        /// Bytes received.
        received: usize,
    },
    /// A reserved header bit is set.
    ReservedBits,
    /// Vendor or type is not the one expected.
    UnexpectedType {
        /// Vendor ID received.
        vendor: u16,
        /// Type received.
        ty: u8,
    },
    /// The output buffer is too small, or the payload too large for one object.
    TooLarge {
        /// Bytes needed.
        needed: usize,
    },
    /// A discovery answer that is malformed, out of range, or loops.
    BadDiscovery {
        /// The index asked for.
        index: u8,
    },
}

impl fmt::Display for DoeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DoeError::Truncated { len } => write!(f, "DOE object of {len} bytes is shorter than its header"),
            DoeError::NotDwAligned { len } => write!(f, "DOE object of {len} bytes is not a whole number of DWs"),
            DoeError::LengthMismatch { header, received } => {
                write!(f, "DOE header announces {header} bytes but {received} were received")
            }
            DoeError::ReservedBits => f.write_str("DOE header has reserved bits set"),
            DoeError::UnexpectedType { vendor, ty } => write!(f, "unexpected DOE object {vendor:#06x}/{ty:#04x}"),
            DoeError::TooLarge { needed } => write!(f, "DOE object needs {needed} bytes"),
            DoeError::BadDiscovery { index } => write!(f, "bad DOE discovery answer for index {index}"),
        }
    }
}

/// A parsed object; `payload` still carries the DW padding (the protocol inside knows its length).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DoeObject<'a> {
    /// Vendor ID.
    pub vendor: u16,
    /// Data object type.
    pub ty: u8,
    /// Payload, padding included.
    pub payload: &'a [u8],
}

/// Bytes of the object carrying `payload_len` payload bytes.
pub const fn object_len(payload_len: usize) -> usize {
    HEADER_BYTES + payload_len.div_ceil(4) * 4
}

/// Frames `payload` as a PCI-SIG object of type `ty` into `out`; returns the object's length.
///
/// # Errors
/// [`DoeError::TooLarge`] if the object exceeds `out` or 2^20 bytes.
pub fn encode(ty: ObjectType, payload: &[u8], out: &mut [u8]) -> Result<usize, DoeError> {
    let len = frame(ty, payload.len(), out)?;
    out[HEADER_BYTES..HEADER_BYTES + payload.len()].copy_from_slice(payload);
    Ok(len)
}

/// Writes the header and the zero padding of an object whose `payload_len` payload bytes the
/// caller puts (or already put) at `out[HEADER_BYTES..]`; returns the object's length.
///
/// # Errors
/// [`DoeError::TooLarge`] if the object exceeds `out` or 2^20 bytes.
pub fn frame(ty: ObjectType, payload_len: usize, out: &mut [u8]) -> Result<usize, DoeError> {
    let len = object_len(payload_len);
    if len > out.len() || len > MAX_OBJECT_BYTES {
        return Err(DoeError::TooLarge { needed: len });
    }
    let dws = (len / 4) as u32 & 0x3_FFFF; // 2^18 DWs encodes as 0
    out[0..2].copy_from_slice(&VENDOR_PCI_SIG.to_le_bytes());
    out[2] = ty as u8;
    out[3] = 0;
    out[4..8].copy_from_slice(&dws.to_le_bytes());
    out[HEADER_BYTES + payload_len..len].fill(0);
    Ok(len)
}

/// Parses one object that must be exactly `buf` (what the host read from the mailbox).
///
/// # Errors
/// A [`DoeError`] naming the first thing wrong, in header order.
pub fn decode(buf: &[u8]) -> Result<DoeObject<'_>, DoeError> {
    if buf.len() < HEADER_BYTES {
        return Err(DoeError::Truncated { len: buf.len() });
    }
    if !buf.len().is_multiple_of(4) {
        return Err(DoeError::NotDwAligned { len: buf.len() });
    }
    let vendor = u16::from_le_bytes([buf[0], buf[1]]);
    let ty = buf[2];
    let dw1 = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
    if buf[3] != 0 || dw1 >> 18 != 0 {
        return Err(DoeError::ReservedBits);
    }
    let dws = if dw1 == 0 { 1 << 18 } else { dw1 as usize };
    if dws * 4 != buf.len() {
        return Err(DoeError::LengthMismatch { header: dws * 4, received: buf.len() });
    }
    Ok(DoeObject { vendor, ty, payload: &buf[HEADER_BYTES..] })
}

/// Parses an object and requires it to be the PCI-SIG type `ty`.
///
/// # Errors
/// As [`decode`], and [`DoeError::UnexpectedType`].
pub fn decode_as(buf: &[u8], ty: ObjectType) -> Result<&[u8], DoeError> {
    let o = decode(buf)?;
    if o.vendor != VENDOR_PCI_SIG || o.ty != ty as u8 {
        return Err(DoeError::UnexpectedType { vendor: o.vendor, ty: o.ty });
    }
    Ok(o.payload)
}

/// What a sans-IO exchange wants next; `E` is the protocol's error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action<'a, E> {
    /// Write this object to the mailbox and call `step` with the answer.
    Send(&'a [u8]),
    /// Finished.
    Done,
    /// Failed; the state machine stays failed.
    Failed(E),
}

/// The protocols a device's DOE mailbox offers, found by walking discovery from index 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Discovery {
    entries: [(u16, u8); MAX_DISCOVERY_ENTRIES],
    count: usize,
    index: u8,
    request: [u8; 12],
    state: DiscoveryState,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DiscoveryState {
    Asking,
    Done,
    Failed(DoeError),
}

impl Default for Discovery {
    fn default() -> Self {
        Discovery::new()
    }
}

impl Discovery {
    /// A walk that has not started.
    pub const fn new() -> Discovery {
        Discovery {
            entries: [(0, 0); MAX_DISCOVERY_ENTRIES],
            count: 0,
            index: 0,
            request: [0; 12],
            state: DiscoveryState::Asking,
        }
    }

    fn ask(&mut self) -> Action<'_, DoeError> {
        // Discovery version 0: QEMU's DOE capability is version 1.
        let payload = [self.index, 0, 0, 0];
        match encode(ObjectType::Discovery, &payload, &mut self.request) {
            Ok(n) => Action::Send(&self.request[..n]),
            Err(e) => self.fail(e),
        }
    }

    fn fail(&mut self, e: DoeError) -> Action<'_, DoeError> {
        self.state = DiscoveryState::Failed(e);
        Action::Failed(e)
    }

    /// The first request (index 0).
    pub fn start(&mut self) -> Action<'_, DoeError> {
        self.index = 0;
        self.count = 0;
        self.state = DiscoveryState::Asking;
        self.ask()
    }

    /// Consumes the device's answer to the last request.
    pub fn step(&mut self, response: &[u8]) -> Action<'_, DoeError> {
        match self.state {
            DiscoveryState::Asking => {}
            DiscoveryState::Done => return Action::Done,
            DiscoveryState::Failed(e) => return Action::Failed(e),
        }
        let index = self.index;
        let payload = match decode_as(response, ObjectType::Discovery) {
            Ok(p) if p.len() == 4 => p,
            Ok(_) => return self.fail(DoeError::BadDiscovery { index }),
            Err(e) => return self.fail(e),
        };
        let vendor = u16::from_le_bytes([payload[0], payload[1]]);
        let (ty, next) = (payload[2], payload[3]);
        // Index 0 must describe discovery itself; 0xFFFF is "no such index".
        let bad = vendor == 0xFFFF
            || (index == 0 && (vendor, ty) != (VENDOR_PCI_SIG, ObjectType::Discovery as u8))
            || self.count >= MAX_DISCOVERY_ENTRIES
            || (next != 0 && next <= index);
        if bad {
            return self.fail(DoeError::BadDiscovery { index });
        }
        self.entries[self.count] = (vendor, ty);
        self.count += 1;
        if next == 0 {
            self.state = DiscoveryState::Done;
            return Action::Done;
        }
        self.index = next;
        self.ask()
    }

    /// The (vendor, type) pairs found, in discovery order.
    pub fn entries(&self) -> &[(u16, u8)] {
        &self.entries[..self.count]
    }

    /// True once the walk finished and found the PCI-SIG protocol `ty`.
    pub fn supports(&self, ty: ObjectType) -> bool {
        self.state == DiscoveryState::Done && self.entries().contains(&(VENDOR_PCI_SIG, ty as u8))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// QEMU's discovery table (hw/pci/pcie_doe.c with the NVMe device's protocols).
    fn qemu_answer(request: &[u8]) -> [u8; 12] {
        let p = decode_as(request, ObjectType::Discovery).unwrap();
        let (vendor, ty, next): (u16, u8, u8) = match p[0] {
            0 => (1, 0, 1),
            1 => (1, 1, 2),
            2 => (1, 2, 0),
            _ => (0xFFFF, 0xFF, 0),
        };
        let mut out = [0u8; 12];
        let payload = [vendor.to_le_bytes()[0], vendor.to_le_bytes()[1], ty, next];
        encode(ObjectType::Discovery, &payload, &mut out).unwrap();
        out
    }

    #[test]
    fn get_version_frames_as_the_reference_shows() {
        let mut out = [0xAAu8; 16];
        let n = encode(ObjectType::Spdm, &[0x10, 0x84, 0x00, 0x00], &mut out).unwrap();
        assert_eq!(&out[..n], &[0x01, 0x00, 0x01, 0x00, 0x03, 0x00, 0x00, 0x00, 0x10, 0x84, 0x00, 0x00]);
        let n = encode(ObjectType::Spdm, &[0x10, 0x84, 0x00], &mut out).unwrap();
        assert_eq!(&out[..n], &[0x01, 0x00, 0x01, 0x00, 0x03, 0x00, 0x00, 0x00, 0x10, 0x84, 0x00, 0x00], "zero pad");
    }

    #[test]
    fn decode_rejects_each_malformation() {
        let good = [0x01, 0x00, 0x01, 0x00, 0x03, 0x00, 0x00, 0x00, 0x10, 0x84, 0x00, 0x00];
        assert_eq!(decode(&good).unwrap().payload, &good[8..]);
        assert_eq!(decode(&good[..7]), Err(DoeError::Truncated { len: 7 }));
        assert_eq!(decode(&good[..10]), Err(DoeError::NotDwAligned { len: 10 }));
        assert_eq!(decode(&good[..8]), Err(DoeError::LengthMismatch { header: 12, received: 8 }));
        let mut b = good;
        b[3] = 1;
        assert_eq!(decode(&b), Err(DoeError::ReservedBits));
        let mut b = good;
        b[6] = 0x04; // bit 18 of the length DW
        assert_eq!(decode(&b), Err(DoeError::ReservedBits));
        let mut b = good;
        b[2] = 2;
        assert_eq!(decode_as(&b, ObjectType::Spdm), Err(DoeError::UnexpectedType { vendor: 1, ty: 2 }));
        let mut b = good;
        b[4..8].copy_from_slice(&0u32.to_le_bytes()); // 0 means 2^18 DWs
        assert_eq!(decode(&b), Err(DoeError::LengthMismatch { header: 1 << 20, received: 12 }));
    }

    #[test]
    fn encode_refuses_objects_that_do_not_fit() {
        let mut out = [0u8; 11];
        assert_eq!(encode(ObjectType::Spdm, &[1, 2, 3, 4], &mut out), Err(DoeError::TooLarge { needed: 12 }));
    }

    #[test]
    fn discovery_walks_qemus_table() {
        let mut d = Discovery::new();
        let mut req = match d.start() {
            Action::Send(r) => r.to_vec(),
            other => panic!("{other:?}"),
        };
        assert_eq!(req, [1, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0]);
        loop {
            let answer = qemu_answer(&req);
            match d.step(&answer) {
                Action::Send(r) => req = r.to_vec(),
                Action::Done => break,
                Action::Failed(e) => panic!("{e:?}"),
            }
        }
        assert_eq!(d.entries(), &[(1, 0), (1, 1), (1, 2)]);
        assert!(d.supports(ObjectType::Spdm) && d.supports(ObjectType::SecuredSpdm));
        assert_eq!(d.step(&[]), Action::Done, "done stays done");
    }

    #[test]
    fn discovery_rejects_out_of_range_loops_and_garbage() {
        let answer = |vendor: u16, ty: u8, next: u8| {
            let mut out = [0u8; 12];
            let v = vendor.to_le_bytes();
            encode(ObjectType::Discovery, &[v[0], v[1], ty, next], &mut out).unwrap();
            out
        };
        let mut d = Discovery::new();
        d.start();
        assert_eq!(d.step(&answer(0xFFFF, 0xFF, 0)), Action::Failed(DoeError::BadDiscovery { index: 0 }));
        assert_eq!(d.step(&answer(1, 0, 1)), Action::Failed(DoeError::BadDiscovery { index: 0 }), "stays failed");
        let mut d = Discovery::new();
        d.start();
        assert_eq!(
            d.step(&answer(1, 1, 1)),
            Action::Failed(DoeError::BadDiscovery { index: 0 }),
            "index 0 is discovery"
        );
        let mut d = Discovery::new();
        d.start();
        assert!(matches!(d.step(&answer(1, 0, 1)), Action::Send(_)));
        assert_eq!(d.step(&answer(1, 1, 1)), Action::Failed(DoeError::BadDiscovery { index: 1 }), "a loop");
        let mut d = Discovery::new();
        d.start();
        assert_eq!(
            d.step(&[1, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            Action::Failed(DoeError::BadDiscovery { index: 0 })
        );
        assert!(!d.supports(ObjectType::Spdm));
    }
}
