//! The root-port side of an IDE stream, as a modelled register block: what the TSM programs into
//! the host bridge when it programs the device's end with IDE_KM. Keys are write-only (nothing
//! reads a key back out); a key set goes live only when all six slots of the direction pair hold
//! a key, and STOP clears the keys it stops.

use crate::idekm::KeySlot;

/// Slots of one key set: {RX, TX} × {PR, NPR, CPL}.
pub const SLOTS: usize = 6;

/// Why the root port refuses a key operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdeError {
    /// Sub-stream above 2.
    SubStream(u8),
    /// GO before every slot of the key set was programmed.
    NotProgrammed,
    /// The stream is disabled (blocked or deleted).
    Disabled,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
struct Slot {
    programmed: bool,
    live: bool,
    /// Key and IFV are kept only as their presence: the model never exposes them.
    fingerprint: u64,
}

/// One selective IDE stream of a root port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RootPortStream {
    /// Stream ID.
    pub stream: u8,
    enabled: bool,
    sets: [[Slot; SLOTS]; 2],
}

fn index(slot: KeySlot) -> Result<(usize, usize), IdeError> {
    if slot.sub_stream > 2 {
        return Err(IdeError::SubStream(slot.sub_stream));
    }
    Ok((usize::from(slot.key_set_1), usize::from(slot.transmit) * 3 + usize::from(slot.sub_stream)))
}

impl RootPortStream {
    /// A stream with no keys, enabled.
    pub const fn new(stream: u8) -> RootPortStream {
        RootPortStream {
            stream,
            enabled: true,
            sets: [[Slot { programmed: false, live: false, fingerprint: 0 }; SLOTS]; 2],
        }
    }

    /// Programs a slot's key and IFV (the TSM's half of KEY_PROG).
    ///
    /// # Errors
    /// [`IdeError::Disabled`], [`IdeError::SubStream`].
    pub fn program(&mut self, slot: KeySlot, key: &[u8; 32], ifv: &[u8; 8]) -> Result<(), IdeError> {
        if !self.enabled {
            return Err(IdeError::Disabled);
        }
        let (set, i) = index(slot)?;
        let fold = key
            .iter()
            .chain(ifv)
            .fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
        self.sets[set][i] = Slot { programmed: true, live: false, fingerprint: fold };
        Ok(())
    }

    /// K_SET_GO for one slot: it goes live once its whole key set is programmed.
    ///
    /// # Errors
    /// [`IdeError::NotProgrammed`] until all six slots of the set hold keys.
    pub fn go(&mut self, slot: KeySlot) -> Result<(), IdeError> {
        if !self.enabled {
            return Err(IdeError::Disabled);
        }
        let (set, i) = index(slot)?;
        if !self.sets[set].iter().all(|s| s.programmed) {
            return Err(IdeError::NotProgrammed);
        }
        self.sets[set][i].live = true;
        Ok(())
    }

    /// K_SET_STOP for one slot: not live, key cleared.
    ///
    /// # Errors
    /// [`IdeError::SubStream`].
    pub fn stop(&mut self, slot: KeySlot) -> Result<(), IdeError> {
        let (set, i) = index(slot)?;
        self.sets[set][i] = Slot::default();
        Ok(())
    }

    /// STREAM.BLOCK: traffic stops and every key is cleared.
    pub fn block(&mut self) {
        self.enabled = false;
        self.sets = [[Slot::default(); SLOTS]; 2];
    }

    /// True if every slot of a key set is live: the stream is secure with that set.
    pub fn secure(&self, key_set_1: bool) -> bool {
        self.enabled && self.sets[usize::from(key_set_1)].iter().all(|s| s.live)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_set_goes_live_only_when_complete() {
        let mut rp = RootPortStream::new(1);
        let slots = KeySlot::all(false);
        for (i, s) in slots.iter().enumerate() {
            assert_eq!(rp.go(*s), Err(IdeError::NotProgrammed), "set incomplete before slot {i}");
            rp.program(*s, &[i as u8; 32], &[0; 8]).unwrap();
        }
        assert!(!rp.secure(false));
        for s in slots {
            rp.go(s).unwrap();
        }
        assert!(rp.secure(false) && !rp.secure(true));
        rp.stop(slots[2]).unwrap();
        assert!(!rp.secure(false));
        assert_eq!(rp.go(slots[2]), Err(IdeError::NotProgrammed), "STOP cleared the key");
    }

    #[test]
    fn a_blocked_stream_takes_no_keys() {
        let mut rp = RootPortStream::new(1);
        let s = KeySlot { key_set_1: false, transmit: false, sub_stream: 0 };
        rp.block();
        assert_eq!(rp.program(s, &[1; 32], &[0; 8]), Err(IdeError::Disabled));
        assert_eq!(rp.go(s), Err(IdeError::Disabled));
        let bad = KeySlot { key_set_1: false, transmit: false, sub_stream: 3 };
        assert_eq!(RootPortStream::new(2).program(bad, &[0; 32], &[0; 8]), Err(IdeError::SubStream(3)));
    }
}
