//! The IDE_KM responder (PCIe 6.x §6.33.4; protocol ID 0 of the PCI-SIG VENDOR_DEFINED messages):
//! QUERY, KEY_PROG, K_SET_GO and K_SET_STOP for one port with one selective IDE stream. Keys are
//! recorded per session, stream and KeySubStream (key set, direction, sub-stream); they are only
//! emulated, nothing encrypts with them. A session that ends takes its keys with it.

use crate::spdm::error_code;
use crate::Device;

/// PCI-SIG protocol ID of IDE_KM.
pub const PROTOCOL_ID: u8 = 0x00;

/// IDE_KM object IDs.
#[allow(missing_docs)]
pub mod object {
    pub const QUERY: u8 = 0x00;
    pub const QUERY_RESP: u8 = 0x01;
    pub const KEY_PROG: u8 = 0x02;
    pub const KP_ACK: u8 = 0x03;
    pub const K_SET_GO: u8 = 0x04;
    pub const K_SET_STOP: u8 = 0x05;
    pub const K_GOSTOP_ACK: u8 = 0x06;
}

/// KP_ACK status values.
#[allow(missing_docs)]
pub mod kp_status {
    pub const OK: u8 = 0;
    pub const INCORRECT_LENGTH: u8 = 1;
    pub const UNSUPPORTED_PORT: u8 = 2;
    pub const UNSUPPORTED_VALUE: u8 = 3;
}

/// Bytes of KEY_PROG after the protocol ID.
pub const KEY_PROG_BYTES: usize = 47;

/// Where a key belongs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeySlot {
    /// The SPDM session that programmed it.
    pub session: u32,
    /// IDE stream ID.
    pub stream: u8,
    /// KeySubStream: bit0 key set, bit1 direction (1 = TX), bits 7:4 sub-stream (0 PR, 1 NPR, 2 CPL).
    pub key_sub_stream: u8,
}

/// A programmed key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdeKey {
    /// The key DWs as received.
    pub key: [u8; 32],
    /// The initial IV DWs as received.
    pub iv: [u8; 8],
    /// K_SET_GO received (and no K_SET_STOP since).
    pub active: bool,
}

/// The IDE register block of QUERY_RESP: IDE Capability (selective streams, IDE_KM, one stream),
/// IDE Control, then the selective stream's Capability, Control, Status, RID Association 1 and 2
/// (no address association blocks).
const IDE_REGISTERS: [u32; 7] = [(1 << 1) | (1 << 6), 0, 0, 0, 0, 0, 0];

impl Device {
    /// One IDE_KM object from `session` → its reply, or the SPDM ERROR code for what IDE_KM has
    /// no answer for (a malformed QUERY or K_SET_*).
    pub(crate) fn idekm(&mut self, session: u32, b: &[u8]) -> Result<Vec<u8>, u8> {
        let invalid = error_code::INVALID_REQUEST;
        match b.first().copied() {
            Some(object::QUERY) => {
                if b.len() != 3 || b[2] != 0 {
                    return Err(invalid);
                }
                let rid = self.tdis.first().map_or(0, |t| t.config.function_id);
                let mut r = vec![object::QUERY_RESP, 0, 0, rid as u8, (rid >> 8) as u8, (rid >> 16) as u8, 0];
                for reg in IDE_REGISTERS {
                    r.extend_from_slice(&reg.to_le_bytes());
                }
                Ok(r)
            }
            Some(object::KEY_PROG) => {
                if b.len() < 7 {
                    return Err(invalid);
                }
                let (stream, key_sub_stream, port) = (b[3], b[5], b[6]);
                let ack = |status: u8| Ok(vec![object::KP_ACK, 0, 0, stream, status, key_sub_stream, port]);
                if b.len() != KEY_PROG_BYTES {
                    return ack(kp_status::INCORRECT_LENGTH);
                }
                if port != 0 {
                    return ack(kp_status::UNSUPPORTED_PORT);
                }
                if key_sub_stream >> 4 > 2 || key_sub_stream & 0x0C != 0 {
                    return ack(kp_status::UNSUPPORTED_VALUE);
                }
                let mut key = [0u8; 32];
                key.copy_from_slice(&b[7..39]);
                let mut iv = [0u8; 8];
                iv.copy_from_slice(&b[39..47]);
                self.ide_keys.insert(KeySlot { session, stream, key_sub_stream }, IdeKey { key, iv, active: false });
                ack(kp_status::OK)
            }
            Some(go @ (object::K_SET_GO | object::K_SET_STOP)) => {
                if b.len() != 7 || b[6] != 0 {
                    return Err(invalid);
                }
                let (stream, key_sub_stream) = (b[3], b[5]);
                if let Some(k) = self.ide_keys.get_mut(&KeySlot { session, stream, key_sub_stream }) {
                    k.active = go == object::K_SET_GO;
                }
                Ok(vec![object::K_GOSTOP_ACK, 0, 0, stream, 0, key_sub_stream, 0])
            }
            Some(_) | None => Err(error_code::UNSUPPORTED_REQUEST),
        }
    }

    /// Keys of an ended session stop protecting anything.
    pub(crate) fn ide_session_ended(&mut self, session: u32) {
        self.ide_keys.retain(|slot, _| slot.session != session);
    }
}
