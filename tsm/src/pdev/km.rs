//! The IDE_KM flows of IDE.STREAM.KM, over the PDEV's session, sans-IO: each step names the next
//! plaintext request; the answer is checked and mirrored into the root port's register block.
//!
//! ```text
//! SETUP   : QUERY, KEY_PROG × 6 (fresh key per slot), K_SET_GO × 6      → secure with set K
//! REFRESH : KEY_PROG × 6 into the other set, K_SET_GO × 6, K_SET_STOP × 6 of the old set
//! STOP    : K_SET_STOP × 6 of the current set                              → stopped
//! ```
//! The root port's slot is programmed when the device acknowledges the same slot, so both ends
//! always hold the same key; keys are drawn from the TSM's entropy when the call starts and
//! dropped with the flow.

use crate::doe::Action;
use crate::error::DeviceFault;
use crate::ide::RootPortStream;
use crate::idekm::{self, KeySlot, Request};

/// The IDE_KM operation of IDE.STREAM.KM (TDX's SETUP / REFRESH / STOP).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KmOp {
    /// Program and start the first key set.
    Setup = 0,
    /// Program and start the other key set, then stop the old one.
    Refresh = 1,
    /// Stop the current key set.
    Stop = 2,
}

impl KmOp {
    /// Decodes the operation register.
    pub const fn from_raw(raw: u64) -> Option<KmOp> {
        match raw {
            0 => Some(KmOp::Setup),
            1 => Some(KmOp::Refresh),
            2 => Some(KmOp::Stop),
            _ => None,
        }
    }
}

/// Fresh key material for the six slots of one key set.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyMaterial {
    /// Keys, slot order of [`KeySlot::all`].
    pub keys: [[u8; 32]; 6],
    /// Initial IVs.
    pub ifvs: [[u8; 8]; 6],
}

impl core::fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("KeyMaterial(..)")
    }
}

/// One running IDE_KM flow.
#[derive(Clone)]
pub struct KmFlow {
    op: KmOp,
    version: u8,
    stream: u8,
    port: u8,
    /// The key set being programmed (SETUP, REFRESH) or stopped (STOP).
    set_1: bool,
    step: usize,
    material: KeyMaterial,
    out: [u8; super::PLAIN_BYTES],
}

impl core::fmt::Debug for KmFlow {
    // The last request may be a KEY_PROG: its bytes hold a key, so they are not printed.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("KmFlow")
            .field("op", &self.op)
            .field("stream", &self.stream)
            .field("set_1", &self.set_1)
            .field("step", &self.step)
            .finish_non_exhaustive()
    }
}

impl KmFlow {
    /// A flow for `op` on `stream` at PortIndex `port`; `current_set_1` is the set in use.
    pub fn new(op: KmOp, version: u8, stream: u8, port: u8, current_set_1: bool, material: KeyMaterial) -> KmFlow {
        let set_1 = match op {
            KmOp::Setup => false,
            KmOp::Refresh => !current_set_1,
            KmOp::Stop => current_set_1,
        };
        KmFlow { op, version, stream, port, set_1, step: 0, material, out: [0; super::PLAIN_BYTES] }
    }

    /// The operation.
    pub fn op(&self) -> KmOp {
        self.op
    }

    fn steps(&self) -> usize {
        match self.op {
            KmOp::Setup => 13,
            KmOp::Refresh => 18,
            KmOp::Stop => 6,
        }
    }

    /// The request of the current step: (request, slot index) with its slot's set.
    fn request(&self) -> Request<'_> {
        let (stream, port) = (self.stream, self.port);
        let slot_of = |i: usize, set_1: bool| KeySlot::all(set_1)[i % 6];
        match (self.op, self.step) {
            (KmOp::Setup, 0) => Request::Query { port },
            (KmOp::Setup, s @ 1..=6) => self.key_prog(s - 1),
            (KmOp::Setup, s) => Request::Go { stream, slot: slot_of(s - 7, self.set_1), port },
            (KmOp::Refresh, s @ 0..=5) => self.key_prog(s),
            (KmOp::Refresh, s @ 6..=11) => Request::Go { stream, slot: slot_of(s - 6, self.set_1), port },
            (KmOp::Refresh, s) => Request::Stop { stream, slot: slot_of(s - 12, !self.set_1), port },
            (KmOp::Stop, s) => Request::Stop { stream, slot: slot_of(s, self.set_1), port },
        }
    }

    fn key_prog(&self, i: usize) -> Request<'_> {
        let i = i % 6;
        Request::KeyProg {
            stream: self.stream,
            slot: KeySlot::all(self.set_1)[i],
            port: self.port,
            key: &self.material.keys[i],
            ifv: &self.material.ifvs[i],
        }
    }

    /// The key set the flow programs (SETUP, REFRESH) or stops (STOP): once done, the set that
    /// is live (or was stopped).
    pub fn key_set_1(&self) -> bool {
        self.set_1
    }

    /// The first request (plaintext; the engine seals it).
    pub fn start(&mut self) -> Action<'_, DeviceFault> {
        self.send()
    }

    /// Checks the device's answer to the current request, mirrors it into the root port `rp`,
    /// and names the next request.
    pub fn step(&mut self, m: &[u8], rp: &mut RootPortStream) -> Action<'_, DeviceFault> {
        if let Err(f) = self.answer(m, rp) {
            return Action::Failed(f);
        }
        if self.step < self.steps() {
            self.send()
        } else {
            Action::Done
        }
    }

    fn send(&mut self) -> Action<'_, DeviceFault> {
        let mut out = [0u8; super::PLAIN_BYTES];
        match idekm::encode(self.version, &self.request(), &mut out) {
            Ok(n) => {
                self.out = out;
                Action::Send(&self.out[..n])
            }
            Err(e) => Action::Failed(DeviceFault::IdeKm(e)),
        }
    }

    /// Checks the device's answer to the current request and mirrors it into the root port.
    ///
    /// # Errors
    /// [`DeviceFault::IdeKm`] for a wrong answer, [`DeviceFault::RootPort`] if the root port
    /// refuses what the device acknowledged.
    fn answer(&mut self, m: &[u8], rp: &mut RootPortStream) -> Result<(), DeviceFault> {
        let request = self.request();
        match request {
            Request::Query { port } => {
                idekm::decode_query(self.version, port, m).map_err(DeviceFault::IdeKm)?;
            }
            Request::KeyProg { slot, key, ifv, .. } => {
                idekm::check_ack(self.version, &request, m).map_err(DeviceFault::IdeKm)?;
                rp.program(slot, key, ifv).map_err(DeviceFault::RootPort)?;
            }
            Request::Go { slot, .. } => {
                idekm::check_ack(self.version, &request, m).map_err(DeviceFault::IdeKm)?;
                rp.go(slot).map_err(DeviceFault::RootPort)?;
            }
            Request::Stop { slot, .. } => {
                idekm::check_ack(self.version, &request, m).map_err(DeviceFault::IdeKm)?;
                rp.stop(slot).map_err(DeviceFault::RootPort)?;
            }
        }
        self.step += 1;
        Ok(())
    }
}
