//! `tdisp-device`: the project's emulated TDISP device. It is the security endpoint QEMU's NVMe
//! device forwards its DOE mailbox to (the `spdm_port` socket protocol): an SPDM 1.2/1.3
//! responder with its own P-384 certificates and signed measurements, secured sessions (DSP0277),
//! and inside them the TDISP 1.0 and IDE_KM responders.
//!
//! [`Device::handle`] takes one DOE object as QEMU forwards it and returns the reply object;
//! [`server`] speaks QEMU's socket framing around it. The responder logic is written here; the DOE
//! framing, the SPDM key schedule, the secured-message codec, the signing prefix and the TDISP
//! constants are shared with the TSM (`tsm::doe`, `tsm::spdm::{keys, secured, sig}`,
//! `tsm::tdisp`), which is the other end of the same wire.

use std::collections::{BTreeMap, HashMap};

pub mod certs;
mod chunk;
pub mod config;
pub mod corpus;
pub mod faults;
pub mod idekm;
mod later;
pub mod rng;
pub mod server;
mod session;
pub mod spdm;
pub mod tdisp;

pub use certs::{CertError, Identity};
pub use config::{Config, InterfaceConfig, MeasurementBlock, MmioRange};
pub use faults::{Faults, Reply, Signed};
pub use idekm::{IdeKey, KeySlot};
pub use tdisp::Tdi;

use tsm::doe::{self, ObjectType, VENDOR_PCI_SIG};

/// The device: connection, sessions, TDIs and IDE keys. Cloning snapshots the whole state.
#[derive(Clone, Debug)]
pub struct Device {
    config: Config,
    identity: Identity,
    rng: rng::Rng,
    conn: spdm::Connection,
    sessions: HashMap<u32, session::Session>,
    tdis: Vec<Tdi>,
    ide_keys: BTreeMap<KeySlot, IdeKey>,
    /// The response a ResponseNotReady promised (the `not-ready` switch).
    deferred: Option<later::Deferred>,
    /// A large response being served in chunks.
    large: Option<chunk::Large>,
    next_token: u8,
}

/// The DOE discovery table, as QEMU's NVMe device and spdm-emu have it: (vendor, type).
pub const DISCOVERY: [(u16, u8); 3] = [
    (VENDOR_PCI_SIG, ObjectType::Discovery as u8),
    (VENDOR_PCI_SIG, ObjectType::Spdm as u8),
    (VENDOR_PCI_SIG, ObjectType::SecuredSpdm as u8),
];

impl Device {
    /// A device with a fresh identity from `config.seed`.
    ///
    /// # Errors
    /// [`CertError`] if the certificates cannot be made.
    pub fn new(config: Config) -> Result<Device, CertError> {
        let mut rng = rng::Rng::new(config.seed);
        let identity = Identity::generate(&mut rng)?;
        Device::with_identity(config, identity, rng)
    }

    /// A device with a given identity (re-signed by a stray key under the broken-chain fault,
    /// extended by an impostor under the impostor-leaf fault).
    ///
    /// # Errors
    /// [`CertError`] if the broken-chain fault cannot re-sign the chain.
    pub fn with_identity(config: Config, identity: Identity, mut rng: rng::Rng) -> Result<Device, CertError> {
        let identity = if config.faults.broken_chain {
            identity.with_foreign_issuer(&p384::ecdsa::SigningKey::from(rng.scalar()))?
        } else {
            identity
        };
        let identity = if config.faults.impostor_leaf { corpus::impostor(&identity, &mut rng)? } else { identity };
        let tdis = config.interfaces.iter().cloned().map(Tdi::new).collect();
        Ok(Device {
            config,
            identity,
            rng,
            conn: spdm::Connection::new(),
            sessions: HashMap::new(),
            tdis,
            ide_keys: BTreeMap::new(),
            deferred: None,
            large: None,
            next_token: 0x5A,
        })
    }

    /// One DOE object in, the reply object out; `None` = no response (QEMU's `NORMAL` with length
    /// 0): a malformed object, an unknown protocol, or a secured message of an unknown session.
    pub fn handle(&mut self, object: &[u8]) -> Option<Vec<u8>> {
        let o = doe::decode(object).ok()?;
        if o.vendor != VENDOR_PCI_SIG {
            return None;
        }
        match o.ty {
            0x00 => discovery(o.payload),
            0x01 => {
                let reply = match self.respond_if_ready(None, o.payload) {
                    Some((reply, _)) => reply,
                    None => match self.chunk_get(None, o.payload) {
                        Some(chunk) => chunk,
                        None => {
                            let before = self.later_armed().then(|| Box::new(self.clone()));
                            let reply = self.spdm(o.payload);
                            self.later(None, o.payload, (reply, None), before).0
                        }
                    },
                };
                let reply = self.chunked(None, reply);
                self.plain_reply(reply)
            }
            0x02 => self.secured(object, o.payload),
            _ => None,
        }
    }

    /// The identity (certificates and leaf key).
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The fault switches, to turn one on in the middle of a conversation (a device that goes
    /// bad after it was authenticated).
    pub fn faults_mut(&mut self) -> &mut Faults {
        &mut self.config.faults
    }

    /// The TDIs.
    pub fn tdis(&self) -> &[Tdi] {
        &self.tdis
    }

    /// The IDE keys programmed over live sessions.
    pub fn ide_keys(&self) -> &BTreeMap<KeySlot, IdeKey> {
        &self.ide_keys
    }

    /// Number of live sessions (handshake or application phase).
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Frames a plain SPDM response, applying the reply faults.
    fn plain_reply(&self, mut msg: Vec<u8>) -> Option<Vec<u8>> {
        let f = &self.config.faults;
        if Faults::hits(f.drop_response, &msg) {
            return None;
        }
        if Faults::hits(f.truncate, &msg) {
            msg.truncate(faults::truncated_len(msg.len()));
        }
        // Signed messages get their bad length field before signing (spdm.rs, session.rs).
        let signed =
            matches!(Reply::of(&msg), Some(Reply::ChallengeAuth | Reply::Measurements | Reply::KeyExchangeRsp));
        let overlong = Faults::hits(f.overlong_length, &msg) && !signed;
        let in_framing = overlong && !faults::overlong_field(&mut msg);
        let corrupt = Faults::hits(f.corrupt, &msg);
        let mut object = session::plain_object(ObjectType::Spdm, &msg);
        if in_framing && object.len() >= 8 {
            // The DOE header announces one DW more than the object holds.
            let dws = u32::from_le_bytes([object[4], object[5], object[6], object[7]]) + 1;
            object[4..8].copy_from_slice(&dws.to_le_bytes());
        }
        if corrupt {
            // One bit in the middle of the message (not in the DOE padding).
            faults::flip_bit(&mut object, doe::HEADER_BYTES + msg.len() / 2);
        }
        Some(object)
    }

    /// What a session's end does beyond forgetting its keys.
    fn session_ended(&mut self, id: u32) {
        self.tdis_session_ended(id);
        self.ide_session_ended(id);
    }
}

/// DOE discovery (PCIe r6 §6.30.1.1): entry `index` of [`DISCOVERY`] with the next index, or
/// vendor 0xFFFF for an index past the end (as QEMU answers).
fn discovery(payload: &[u8]) -> Option<Vec<u8>> {
    let index = usize::from(*payload.first()?);
    let (vendor, ty, next) = match DISCOVERY.get(index) {
        Some(&(vendor, ty)) => (vendor, ty, if index + 1 < DISCOVERY.len() { index as u8 + 1 } else { 0 }),
        None => (0xFFFF, 0xFF, 0),
    };
    let v = vendor.to_le_bytes();
    Some(session::plain_object(ObjectType::Discovery, &[v[0], v[1], ty, next]))
}
