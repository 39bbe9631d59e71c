//! Fault switches: ways the device misbehaves on purpose, so tests can show the TSM stops with the
//! specific error and keeps nothing half-done. Each fault is real, not a flag the TSM could read:
//! a bad signature is the right transcript signed and one bit flipped; a chain that does not chain
//! has its intermediate signed by a stray key; a truncated or over-long answer is otherwise well
//! formed (plain answers correctly DOE-framed, secured ones sealed under the session's keys).
//!
//! Set them in [`crate::Config::faults`] in-process, or with `--fault SPEC` on the command line
//! (see [`Faults::apply_spec`]).

use std::fmt;

use tsm::spdm::code;
use tsm::spdm::sig::Context;

/// A signed message whose signature a fault spoils.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signed {
    /// CHALLENGE_AUTH.
    ChallengeAuth,
    /// MEASUREMENTS.
    Measurements,
    /// KEY_EXCHANGE_RSP.
    KeyExchangeRsp,
}

impl Signed {
    pub(crate) fn of(context: Context) -> Signed {
        match context {
            Context::ChallengeAuth => Signed::ChallengeAuth,
            Context::Measurements => Signed::Measurements,
            Context::KeyExchangeRsp => Signed::KeyExchangeRsp,
        }
    }
}

/// A response a fault hits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    /// VERSION.
    Version,
    /// CAPABILITIES.
    Capabilities,
    /// ALGORITHMS.
    Algorithms,
    /// DIGESTS.
    Digests,
    /// CERTIFICATE (every portion).
    Certificate,
    /// CHALLENGE_AUTH.
    ChallengeAuth,
    /// MEASUREMENTS.
    Measurements,
    /// KEY_EXCHANGE_RSP.
    KeyExchangeRsp,
    /// FINISH_RSP (secured, handshake keys).
    FinishRsp,
    /// KEY_UPDATE_ACK (secured).
    KeyUpdateAck,
    /// END_SESSION_ACK (secured).
    EndSessionAck,
    /// HEARTBEAT_ACK (secured).
    HeartbeatAck,
    /// The TDISP response to the request of this type (0x81 GET_VERSION … 0x87 STOP_INTERFACE).
    Tdisp(u8),
    /// Every IDE_KM response.
    IdeKm,
}

/// Command-line names of the replies.
pub const REPLY_NAMES: [(&str, Reply); 20] = [
    ("version", Reply::Version),
    ("capabilities", Reply::Capabilities),
    ("algorithms", Reply::Algorithms),
    ("digests", Reply::Digests),
    ("certificate", Reply::Certificate),
    ("challenge-auth", Reply::ChallengeAuth),
    ("measurements", Reply::Measurements),
    ("key-exchange-rsp", Reply::KeyExchangeRsp),
    ("finish-rsp", Reply::FinishRsp),
    ("key-update-ack", Reply::KeyUpdateAck),
    ("end-session-ack", Reply::EndSessionAck),
    ("heartbeat-ack", Reply::HeartbeatAck),
    ("tdisp-version", Reply::Tdisp(0x81)),
    ("tdisp-capabilities", Reply::Tdisp(0x82)),
    ("tdisp-lock", Reply::Tdisp(0x83)),
    ("tdisp-report", Reply::Tdisp(0x84)),
    ("tdisp-state", Reply::Tdisp(0x85)),
    ("tdisp-start", Reply::Tdisp(0x86)),
    ("tdisp-stop", Reply::Tdisp(0x87)),
    ("idekm", Reply::IdeKm),
];

impl Reply {
    /// What an SPDM response message is (`None` for ERROR and anything unnamed).
    pub fn of(msg: &[u8]) -> Option<Reply> {
        Some(match *msg.get(1)? {
            code::VERSION => Reply::Version,
            code::CAPABILITIES => Reply::Capabilities,
            code::ALGORITHMS => Reply::Algorithms,
            code::DIGESTS => Reply::Digests,
            code::CERTIFICATE => Reply::Certificate,
            code::CHALLENGE_AUTH => Reply::ChallengeAuth,
            code::MEASUREMENTS => Reply::Measurements,
            code::KEY_EXCHANGE_RSP => Reply::KeyExchangeRsp,
            code::FINISH_RSP => Reply::FinishRsp,
            code::KEY_UPDATE_ACK => Reply::KeyUpdateAck,
            code::END_SESSION_ACK => Reply::EndSessionAck,
            code::HEARTBEAT_ACK => Reply::HeartbeatAck,
            0x7E => match *msg.get(11)? {
                crate::tdisp::PROTOCOL_ID => Reply::Tdisp(*msg.get(13)? | 0x80),
                crate::idekm::PROTOCOL_ID => Reply::IdeKm,
                _ => return None,
            },
            _ => return None,
        })
    }

    fn from_name(name: &str) -> Option<Reply> {
        REPLY_NAMES.iter().find(|(n, _)| *n == name).map(|&(_, r)| r)
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match REPLY_NAMES.iter().find(|(_, r)| r == self) {
            Some((name, _)) => f.write_str(name),
            None => write!(f, "{self:?}"),
        }
    }
}

/// The fault switches; all off by default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Faults {
    /// Sign this message over the right transcript, then flip one bit of the signature.
    pub bad_signature: Option<Signed>,
    /// Report the measurement block of this index with one bit of its value flipped, signed as
    /// if it were true (what a device with other firmware reports).
    pub wrong_measurement: Option<u8>,
    /// Cut this response short (a quarter of it, at least 4 bytes), framing or sealing what is
    /// left correctly.
    pub truncate: Option<Reply>,
    /// Put into this response a length field larger than the message: its own (VERSION's entry
    /// count, ALGORITHMS' Length, DIGESTS' slot mask, CERTIFICATE's PortionLength, the opaque data
    /// length of CHALLENGE_AUTH and KEY_EXCHANGE_RSP, MEASUREMENTS' record length, a TDISP
    /// report's PORTION_LENGTH, any other VENDOR_DEFINED's length), else the DOE header's
    /// (CAPABILITIES) or the secured message's (FINISH_RSP, KEY_UPDATE_ACK, END_SESSION_ACK).
    /// Signed messages are signed with the bad field in them.
    pub overlong_length: Option<Reply>,
    /// Seal every secured response under another session id (the AEAD covers it, so the message
    /// authenticates for that id only).
    pub wrong_session_id: bool,
    /// Process the request but send no response to it (QEMU's `NORMAL` with length 0).
    pub drop_response: Option<Reply>,
    /// Interface reports list their second MMIO range starting inside the first.
    pub overlapping_ranges: bool,
    /// Interface reports list the MMIO ranges as configured, without the MMIO_REPORTING_OFFSET
    /// LOCK_INTERFACE asked for (what DMTF's sample TDISP device in spdm-emu does).
    pub ignore_reporting_offset: bool,
    /// A TDI goes to ERROR right after LOCK_INTERFACE succeeded (its nonce destroyed).
    pub error_after_lock: bool,
    /// START_INTERFACE is refused with TDISP_ERROR UNSPECIFIED; the TDI stays CONFIG_LOCKED.
    pub refuse_start: bool,
    /// The certificate after the root is signed by a stray key, not its issuer's.
    pub broken_chain: bool,
    /// An end-entity certificate issues the device certificate: the chain goes on past the real
    /// leaf to an impostor's certificate signed with the leaf's key, and the device signs with
    /// the impostor's key ([`crate::corpus::impostor`]). Every signature verifies.
    pub impostor_leaf: bool,
    /// Wait this many milliseconds before sending each answer (a responder slower than the
    /// requester's DOE timeout). Applied by [`crate::server`], which owns the socket.
    pub late_ms: Option<u64>,
    /// Flip one bit of this response after it was framed (and, if secured, sealed): what a bit
    /// error on the way looks like. A secured answer then fails its AEAD tag; a plain one its
    /// signature or its parse.
    pub corrupt: Option<Reply>,
    /// When the request this response would answer arrives under a session, forget the session
    /// (its TDIs go to ERROR, its IDE keys die) and answer nothing.
    pub end_session_on: Option<Reply>,
    /// Answer the next N requests whose response would be this one with ERROR Busy, without
    /// taking them (DSP0274 §10.13): the requester must send each again. Counts down.
    pub busy: Option<(Reply, u8)>,
    /// Take the next N requests whose response would be this one, and answer each with ERROR
    /// ResponseNotReady (DSP0274 §10.14); the response waits for RESPOND_IF_READY with the
    /// request code and the token. Counts down.
    pub not_ready: Option<(Reply, u8)>,
}

/// The `--fault` specifications, for `--help`.
pub const SPECS: &str = "\
  bad-signature=challenge-auth|measurements|key-exchange-rsp
  wrong-measurement=INDEX
  truncate=REPLY   overlong-length=REPLY   drop-response=REPLY
  wrong-session-id   overlapping-ranges   ignore-reporting-offset   error-after-lock
  refuse-start   broken-chain   impostor-leaf   late=MS   corrupt=REPLY   end-session-on=REPLY
  busy=REPLY[*N]   not-ready=REPLY[*N]";

impl Faults {
    /// Switches one fault on from its command-line form, e.g. `truncate=measurements`,
    /// `wrong-measurement=2`, `broken-chain` (see [`SPECS`] and [`REPLY_NAMES`]).
    ///
    /// # Errors
    /// A message naming what is wrong with `spec`.
    pub fn apply_spec(&mut self, spec: &str) -> Result<(), String> {
        let (name, arg) = match spec.split_once('=') {
            Some((n, a)) => (n, Some(a)),
            None => (spec, None),
        };
        let reply = |a: Option<&str>| -> Result<Reply, String> {
            let a = a.ok_or(format!("--fault {name} needs =REPLY"))?;
            Reply::from_name(a).ok_or(format!("unknown reply {a} for --fault {name}"))
        };
        let flag = |a: Option<&str>| match a {
            None => Ok(true),
            Some(_) => Err(format!("--fault {name} takes no value")),
        };
        match name {
            "bad-signature" => {
                self.bad_signature = Some(match arg {
                    Some("challenge-auth") => Signed::ChallengeAuth,
                    Some("measurements") => Signed::Measurements,
                    Some("key-exchange-rsp") => Signed::KeyExchangeRsp,
                    _ => return Err("--fault bad-signature=challenge-auth|measurements|key-exchange-rsp".into()),
                })
            }
            "wrong-measurement" => {
                let index = arg.and_then(|a| a.parse::<u8>().ok()).filter(|&i| i != 0);
                self.wrong_measurement = Some(index.ok_or("--fault wrong-measurement=INDEX (1..=255)")?);
            }
            "truncate" => self.truncate = Some(reply(arg)?),
            "overlong-length" => self.overlong_length = Some(reply(arg)?),
            "drop-response" => self.drop_response = Some(reply(arg)?),
            "wrong-session-id" => self.wrong_session_id = flag(arg)?,
            "overlapping-ranges" => self.overlapping_ranges = flag(arg)?,
            "ignore-reporting-offset" => self.ignore_reporting_offset = flag(arg)?,
            "error-after-lock" => self.error_after_lock = flag(arg)?,
            "refuse-start" => self.refuse_start = flag(arg)?,
            "broken-chain" => self.broken_chain = flag(arg)?,
            "impostor-leaf" => self.impostor_leaf = flag(arg)?,
            "late" => {
                let ms = arg.and_then(|a| a.parse::<u64>().ok()).filter(|&m| (1..=60_000).contains(&m));
                self.late_ms = Some(ms.ok_or("--fault late=MS (1..=60000)")?);
            }
            "corrupt" => self.corrupt = Some(reply(arg)?),
            "end-session-on" => self.end_session_on = Some(reply(arg)?),
            "busy" | "not-ready" => {
                let (r, n) = match arg.and_then(|a| a.split_once('*')) {
                    Some((r, n)) => (Some(r), n.parse::<u8>().ok().filter(|&n| n != 0)),
                    None => (arg, Some(1)),
                };
                let later = (reply(r)?, n.ok_or(format!("--fault {name}=REPLY*N with N in 1..=255"))?);
                if name == "busy" {
                    self.busy = Some(later);
                } else {
                    self.not_ready = Some(later);
                }
            }
            other => return Err(format!("unknown fault {other} (see --help)")),
        }
        Ok(())
    }

    pub(crate) fn hits(slot: Option<Reply>, msg: &[u8]) -> bool {
        slot.is_some() && slot == Reply::of(msg)
    }

    /// Whether a come-back switch (`busy`, `not-ready`) takes the response `msg`; counts it.
    pub(crate) fn take(slot: &mut Option<(Reply, u8)>, msg: &[u8]) -> bool {
        match slot {
            Some((reply, n)) if Some(*reply) == Reply::of(msg) => {
                *n -= 1;
                if *n == 0 {
                    *slot = None;
                }
                true
            }
            _ => false,
        }
    }
}

/// The response a request inside a session would get (`None` for anything unnamed): FINISH,
/// END_SESSION, KEY_UPDATE, and the PCI-SIG VENDOR_DEFINED requests of TDISP and IDE_KM.
pub(crate) fn answer_to(request: &[u8]) -> Option<Reply> {
    Some(match *request.get(1)? {
        code::FINISH => Reply::FinishRsp,
        code::KEY_UPDATE => Reply::KeyUpdateAck,
        code::END_SESSION => Reply::EndSessionAck,
        0xFE => match *request.get(11)? {
            crate::tdisp::PROTOCOL_ID => Reply::Tdisp(*request.get(13)? | 0x80),
            crate::idekm::PROTOCOL_ID => Reply::IdeKm,
            _ => return None,
        },
        _ => return None,
    })
}

/// Flips one bit of `object` at byte `at` (nothing if it is shorter).
pub(crate) fn flip_bit(object: &mut [u8], at: usize) {
    if let Some(b) = object.get_mut(at) {
        *b ^= 0x10;
    }
}

/// What is left of a message of `len` bytes once truncated: a quarter gone, at least 4 bytes (so
/// DOE padding cannot hide the cut), at least 2 bytes kept.
pub(crate) fn truncated_len(len: usize) -> usize {
    len.saturating_sub((len / 4).max(4)).max(2)
}

/// The unsigned responses' own length fields made larger than the message; `false` if `msg` has
/// none (the caller then lies in the framing).
pub(crate) fn overlong_field(msg: &mut [u8]) -> bool {
    let add16 = |m: &mut [u8], at: usize, by: u16| {
        let v = u16::from_le_bytes([m[at], m[at + 1]]).wrapping_add(by);
        m[at..at + 2].copy_from_slice(&v.to_le_bytes());
    };
    match Reply::of(msg) {
        Some(Reply::Version) if msg.len() > 5 => msg[5] += 1,
        Some(Reply::Algorithms) if msg.len() >= 6 => add16(msg, 4, 4),
        Some(Reply::Digests) if msg.len() >= 4 => msg[3] |= 0x02,
        Some(Reply::Certificate) if msg.len() >= 8 => add16(msg, 4, 1),
        Some(Reply::Tdisp(0x84)) if msg.len() >= 30 => add16(msg, 28, 1),
        Some(Reply::Tdisp(_) | Reply::IdeKm) if msg.len() >= 11 => add16(msg, 9, 1),
        _ => return false,
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_bad_ones_are_refused() {
        let mut f = Faults::default();
        for spec in [
            "bad-signature=measurements",
            "wrong-measurement=2",
            "truncate=tdisp-report",
            "overlong-length=certificate",
            "drop-response=key-update-ack",
            "wrong-session-id",
            "overlapping-ranges",
            "ignore-reporting-offset",
            "error-after-lock",
            "refuse-start",
            "broken-chain",
            "impostor-leaf",
            "late=300",
            "corrupt=tdisp-lock",
            "end-session-on=tdisp-lock",
            "busy=finish-rsp*3",
            "not-ready=measurements",
        ] {
            f.apply_spec(spec).unwrap();
        }
        assert_eq!(
            f,
            Faults {
                bad_signature: Some(Signed::Measurements),
                wrong_measurement: Some(2),
                truncate: Some(Reply::Tdisp(0x84)),
                overlong_length: Some(Reply::Certificate),
                wrong_session_id: true,
                drop_response: Some(Reply::KeyUpdateAck),
                overlapping_ranges: true,
                ignore_reporting_offset: true,
                error_after_lock: true,
                refuse_start: true,
                broken_chain: true,
                impostor_leaf: true,
                late_ms: Some(300),
                corrupt: Some(Reply::Tdisp(0x83)),
                end_session_on: Some(Reply::Tdisp(0x83)),
                busy: Some((Reply::FinishRsp, 3)),
                not_ready: Some((Reply::Measurements, 1)),
            }
        );
        for bad in [
            "truncate",
            "truncate=nothing",
            "bad-signature=finish",
            "wrong-measurement=0",
            "refuse-start=1",
            "x",
            "late",
            "late=0",
            "late=soon",
            "corrupt",
            "end-session-on=nothing",
            "busy",
            "busy=finish-rsp*0",
            "not-ready=finish-rsp*x",
            "not-ready=nothing*2",
        ] {
            assert!(Faults::default().apply_spec(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn replies_are_told_apart() {
        assert_eq!(Reply::of(&[0x12, 0x60, 0, 0]), Some(Reply::Measurements));
        assert_eq!(Reply::of(&[0x12, 0x7F, 1, 0]), None, "ERROR is never hit");
        let tdisp = [0x12, 0x7E, 0, 0, 3, 0, 2, 1, 0, 17, 0, 1, 0x10, 0x04];
        assert_eq!(Reply::of(&tdisp), Some(Reply::Tdisp(0x84)));
        assert_eq!(Reply::Tdisp(0x84).to_string(), "tdisp-report");
        assert_eq!(truncated_len(4), 2);
        assert_eq!(truncated_len(100), 75);
        assert_eq!(truncated_len(10), 6);
        let lock = [0x12, 0xFE, 0, 0, 3, 0, 2, 1, 0, 17, 0, 1, 0x10, 0x03];
        assert_eq!(answer_to(&lock), Some(Reply::Tdisp(0x83)));
        assert_eq!(answer_to(&[0x12, 0xEC, 0, 0]), Some(Reply::EndSessionAck));
        assert_eq!(answer_to(&[0x12, 0x84, 0, 0]), None, "GET_VERSION is never under a session");
        let mut o = [0u8; 4];
        flip_bit(&mut o, 2);
        flip_bit(&mut o, 9);
        assert_eq!(o, [0, 0, 0x10, 0]);
    }
}
