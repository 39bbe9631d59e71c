//! The artifact framing of COM3: how the signed report and the evidence bundle leave the
//! firmware as files on the host. A serial port is a byte stream that may start mid-way (QEMU
//! appends) or be cut short (the firmware died), so every file travels in one self-checking
//! frame:
//!
//! ```text
//! 0   magic "SEAMART1" (8)
//! 8   name length u8 (1..=MAX_NAME), then the name: [a-z0-9._-], no leading dot
//! .   data length u32 LE (at most MAX_DATA), then the data
//! .   CRC-32 (IEEE 802.3, reflected, as zlib) of everything from the name length to the data's end, u32 LE
//! ```
//!
//! [`encode`] writes frames in the firmware (no heap: into a byte sink); [`decode`] reads a whole
//! stream on the host and refuses anything but a clean sequence of frames, each error naming its
//! offset.

// The firmware only encodes; the host build only decodes (its tests do both).
#![allow(dead_code)]

use core::fmt;

/// First bytes of a frame.
pub const MAGIC: [u8; 8] = *b"SEAMART1";
/// Longest file name.
pub const MAX_NAME: usize = 32;
/// Largest file (the evidence bundle of one device is a few KiB).
pub const MAX_DATA: usize = 1 << 20;

/// CRC-32 (IEEE), bitwise: a few hundred bytes per run, so no table.
pub fn crc32_update(mut crc: u32, bytes: &[u8]) -> u32 {
    crc = !crc;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// Whether `name` may name an artifact (no path, nothing hidden).
pub fn valid_name(name: &[u8]) -> bool {
    (1..=MAX_NAME).contains(&name.len())
        && name[0] != b'.'
        && name.iter().all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-'))
}

/// Why a frame cannot be written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncodeError {
    /// The name breaks [`valid_name`].
    BadName,
    /// More than [`MAX_DATA`] bytes.
    TooLarge(usize),
}

/// Writes one frame of `name` holding `data` through `out`.
///
/// # Errors
/// [`EncodeError`]; nothing is written then.
pub fn encode(name: &str, data: &[u8], out: &mut impl FnMut(&[u8])) -> Result<(), EncodeError> {
    let n = name.as_bytes();
    if !valid_name(n) {
        return Err(EncodeError::BadName);
    }
    if data.len() > MAX_DATA {
        return Err(EncodeError::TooLarge(data.len()));
    }
    let len = (data.len() as u32).to_le_bytes();
    let head = [n.len() as u8];
    let mut crc = crc32_update(0, &head);
    crc = crc32_update(crc, n);
    crc = crc32_update(crc, &len);
    crc = crc32_update(crc, data);
    out(&MAGIC);
    out(&head);
    out(n);
    out(&len);
    out(data);
    out(&crc.to_le_bytes());
    Ok(())
}

/// Why a stream is not a clean sequence of frames. Offsets are from the start of the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// No magic where a frame must start.
    BadMagic {
        /// Offset.
        offset: usize,
    },
    /// The stream ends inside a frame.
    Truncated {
        /// Offset of the frame.
        offset: usize,
    },
    /// A name breaking [`valid_name`].
    BadName {
        /// Offset of the frame.
        offset: usize,
    },
    /// A length above [`MAX_DATA`].
    TooLarge {
        /// Offset of the frame.
        offset: usize,
        /// The length field.
        length: u32,
    },
    /// The checksum does not match.
    BadChecksum {
        /// Offset of the frame.
        offset: usize,
    },
    /// Two frames with the same name.
    Duplicate {
        /// Offset of the second.
        offset: usize,
    },
    /// More frames than [`MAX_FRAMES`].
    TooMany {
        /// Offset of the first frame past the limit.
        offset: usize,
    },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            DecodeError::BadMagic { offset } => write!(f, "no frame magic at offset {offset}"),
            DecodeError::Truncated { offset } => write!(f, "stream ends inside the frame at offset {offset}"),
            DecodeError::BadName { offset } => write!(f, "frame at offset {offset}: bad file name"),
            DecodeError::TooLarge { offset, length } => {
                write!(f, "frame at offset {offset}: {length} bytes is more than {MAX_DATA}")
            }
            DecodeError::BadChecksum { offset } => write!(f, "frame at offset {offset}: CRC-32 mismatch"),
            DecodeError::Duplicate { offset } => write!(f, "frame at offset {offset}: a second file of that name"),
            DecodeError::TooMany { offset } => write!(f, "frame at offset {offset}: more than {MAX_FRAMES} frames"),
        }
    }
}

/// One decoded frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    /// File name (checked by [`valid_name`]).
    pub name: &'a str,
    /// Contents.
    pub data: &'a [u8],
}

/// Frames one stream may hold: the demo's four artifacts and its figures, or mode `ovmf`'s
/// two artifacts and about 40 figures (the TD's exits by cause and TDCALLs by leaf among them),
/// with room to spare.
pub const MAX_FRAMES: usize = 64;

/// Decodes a whole stream; calls `each` for every frame once the stream checked out entirely.
///
/// # Errors
/// [`DecodeError`] for the first bad frame; `each` is then never called.
pub fn decode<'a>(stream: &'a [u8], each: &mut dyn FnMut(Frame<'a>)) -> Result<usize, DecodeError> {
    let mut frames: [Option<Frame<'a>>; MAX_FRAMES] = [None; MAX_FRAMES];
    let mut count = 0;
    let mut at = 0;
    while at < stream.len() {
        let offset = at;
        let rest = &stream[at..];
        if rest.len() < MAGIC.len() || rest[..MAGIC.len()] != MAGIC {
            return Err(if MAGIC.starts_with(rest) {
                DecodeError::Truncated { offset }
            } else {
                DecodeError::BadMagic { offset }
            });
        }
        let truncated = DecodeError::Truncated { offset };
        let body = &rest[MAGIC.len()..];
        let name_len = usize::from(*body.first().ok_or(truncated)?);
        let name = body.get(1..1 + name_len).ok_or(truncated)?;
        let len_at = 1 + name_len;
        let len_bytes: [u8; 4] = body.get(len_at..len_at + 4).ok_or(truncated)?.try_into().map_err(|_| truncated)?;
        let length = u32::from_le_bytes(len_bytes);
        if length as usize > MAX_DATA {
            return Err(DecodeError::TooLarge { offset, length });
        }
        let data_at = len_at + 4;
        let data_end = data_at + length as usize;
        let data = body.get(data_at..data_end).ok_or(truncated)?;
        let crc_bytes: [u8; 4] =
            body.get(data_end..data_end + 4).ok_or(truncated)?.try_into().map_err(|_| truncated)?;
        if !valid_name(name) {
            return Err(DecodeError::BadName { offset });
        }
        if crc32_update(0, &body[..data_end]) != u32::from_le_bytes(crc_bytes) {
            return Err(DecodeError::BadChecksum { offset });
        }
        let name = core::str::from_utf8(name).map_err(|_| DecodeError::BadName { offset })?;
        if frames[..count].iter().flatten().any(|f| f.name == name) {
            return Err(DecodeError::Duplicate { offset });
        }
        if count == frames.len() {
            return Err(DecodeError::TooMany { offset });
        }
        frames[count] = Some(Frame { name, data });
        count += 1;
        at += MAGIC.len() + data_end + 4;
    }
    for f in frames[..count].iter().flatten() {
        each(*f);
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (n, d) in files {
            encode(n, d, &mut |b| out.extend_from_slice(b)).unwrap();
        }
        out
    }

    fn all(s: &[u8]) -> Result<Vec<(String, Vec<u8>)>, DecodeError> {
        let mut got = Vec::new();
        decode(s, &mut |f| got.push((f.name.to_string(), f.data.to_vec())))?;
        Ok(got)
    }

    #[test]
    fn crc32_is_the_ieee_check_value() {
        assert_eq!(crc32_update(0, b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32_update(crc32_update(0, b"1234"), b"56789"), 0xCBF4_3926);
    }

    #[test]
    fn encode_rejects_bad_names_and_sizes() {
        let mut n = 0;
        for name in ["", ".hidden", "a/b", "Report.bin", "x".repeat(33).as_str()] {
            assert_eq!(encode(name, b"", &mut |b| n += b.len()), Err(EncodeError::BadName), "{name}");
        }
        assert_eq!(
            encode("a", &vec![0; MAX_DATA + 1], &mut |b| n += b.len()),
            Err(EncodeError::TooLarge(MAX_DATA + 1))
        );
        assert_eq!(n, 0, "nothing written");
    }

    #[test]
    fn decode_rejects_every_damage_naming_the_frame() {
        let good = stream(&[("report.bin", b"abc"), ("evidence.bin", b"defg")]);
        let second = MAGIC.len() + 1 + 10 + 4 + 3 + 4;
        assert_eq!(all(&good[..good.len() - 1]), Err(DecodeError::Truncated { offset: second }));
        assert_eq!(all(&good[..second + 3]), Err(DecodeError::Truncated { offset: second }));
        let mut bad = good.clone();
        bad[second] = b'X';
        assert_eq!(all(&bad), Err(DecodeError::BadMagic { offset: second }));
        let mut bad = good.clone();
        bad[MAGIC.len() + 1 + 10 + 4] ^= 1;
        assert_eq!(all(&bad), Err(DecodeError::BadChecksum { offset: 0 }));
        let mut bad = good.clone();
        bad[MAGIC.len() + 1] = b'/';
        assert_eq!(all(&bad), Err(DecodeError::BadName { offset: 0 }));
        let mut bad = good.clone();
        bad[MAGIC.len() + 1 + 10..MAGIC.len() + 1 + 10 + 4].copy_from_slice(&(MAX_DATA as u32 + 1).to_le_bytes());
        assert_eq!(all(&bad), Err(DecodeError::TooLarge { offset: 0, length: MAX_DATA as u32 + 1 }));
        let dup = stream(&[("a", b"1"), ("a", b"2")]);
        assert_eq!(all(&dup), Err(DecodeError::Duplicate { offset: MAGIC.len() + 1 + 1 + 4 + 1 + 4 }));
        let mut garbage = b"boot noise".to_vec();
        garbage.extend_from_slice(&good);
        assert_eq!(all(&garbage), Err(DecodeError::BadMagic { offset: 0 }));
    }

    #[test]
    fn decode_happy_path() {
        assert_eq!(all(&[]).unwrap(), vec![]);
        let s = stream(&[("report.bin", &[7; 1200]), ("evidence.bin", b""), ("timeline.json", b"{}")]);
        let got = all(&s).unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(got[0], ("report.bin".to_string(), vec![7; 1200]));
        assert_eq!(got[1], ("evidence.bin".to_string(), vec![]));
        assert_eq!(got[2].0, "timeline.json");
    }
}
