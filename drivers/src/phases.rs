//! The host agent's phase marks: VMMCALL with RAX = [`MARK`] and the phase's name in RCX:RDX
//! (sixteen bytes, little-endian, zero-padded; `[a-z0-9_]`, at least one) tells the TSM that a
//! phase of the run starts (and the one before ends); RCX = RDX = 0 ends the last. The TSM
//! counts the world switches of each phase and says them itself at its end (COM1 and the
//! figure `switches_NAME`): the counts include the TD worlds' exits to the TSM, which the host
//! never sees. One copy of the format for both sides ([`encode`], [`decode`]).

/// RAX of a phase mark ("PHASE\\0\\0\\x01").
pub const MARK: u64 = 0x0100_0045_5341_4850;
/// Bytes of a name.
pub const NAME_BYTES: usize = 16;
/// The phase of mode `ovmf` in which the TDVF TD runs: at its end the TSM also breaks the TD
/// worlds' exits down by kind (`world: TD exits: ...`, counted since boot, the probe TD's
/// included) and gives the figures `ovmf_td_world_switches` (the phase's TD-world switches)
/// and `ovmf_td_ves`.
pub const OVMF_TD: &str = "ovmf_td";

/// A phase's name, as the TSM keeps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Name {
    bytes: [u8; NAME_BYTES],
    len: usize,
}

impl Name {
    /// The name.
    pub fn as_str(&self) -> &str {
        core::str::from_utf8(&self.bytes[..self.len]).unwrap_or("phase")
    }
}

/// RCX:RDX for `name`, or `None` if it is empty, longer than [`NAME_BYTES`] or has a byte
/// outside `[a-z0-9_]`.
pub fn encode(name: &str) -> Option<(u64, u64)> {
    let b = name.as_bytes();
    if b.is_empty()
        || b.len() > NAME_BYTES
        || !b.iter().all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_')
    {
        return None;
    }
    let mut raw = [0u8; NAME_BYTES];
    raw[..b.len()].copy_from_slice(b);
    let word = |i: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&raw[i..i + 8]);
        u64::from_le_bytes(w)
    };
    Some((word(0), word(8)))
}

/// The name in RCX:RDX, or `None` for the end mark (both zero) and for anything that is not a
/// name [`encode`] makes (the TSM then only ends the open phase).
pub fn decode(rcx: u64, rdx: u64) -> Option<Name> {
    let mut bytes = [0u8; NAME_BYTES];
    bytes[..8].copy_from_slice(&rcx.to_le_bytes());
    bytes[8..].copy_from_slice(&rdx.to_le_bytes());
    let len = bytes.iter().position(|&c| c == 0).unwrap_or(NAME_BYTES);
    let ok = len > 0
        && bytes[..len].iter().all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_')
        && bytes[len..].iter().all(|&c| c == 0);
    ok.then_some(Name { bytes, len })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_refuses_the_end_mark_bad_bytes_and_gaps() {
        assert_eq!(decode(0, 0), None);
        let (a, b) = encode("td_build").unwrap();
        assert_eq!(decode(a | 0x80 << 56, b), None, "a byte past the name inside the first word");
        assert_eq!(decode(a, b | 1 << 8), None, "a byte after the zero padding");
        assert_eq!(decode(u64::from_le_bytes(*b"TD_BUILD"), 0), None, "upper case");
        assert_eq!(encode(""), None);
        assert_eq!(encode("a_name_of_17_byte"), None);
        assert_eq!(encode("spdm-connect"), None);
    }

    #[test]
    fn names_round_trip() {
        for name in ["td_build", "spdm_connect", "map_accept_start", "x", "exactly_16_bytes"] {
            let (rcx, rdx) = encode(name).unwrap();
            assert_eq!(decode(rcx, rdx).map(|n| std::string::String::from(n.as_str())), Some(name.into()), "{name}");
        }
    }
}
