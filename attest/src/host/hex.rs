//! Hex for people: lowercase out, an optional `0x` and either case in.

/// `bytes` as lowercase hex.
pub fn encode(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Bytes from hex, with an optional `0x` prefix.
///
/// # Errors
/// Why the text is no hex, as text.
pub fn decode(text: &str) -> Result<Vec<u8>, String> {
    let t = text.trim();
    let t = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")).unwrap_or(t);
    if !t.len().is_multiple_of(2) {
        return Err(format!("odd number of hex digits ({})", t.len()));
    }
    let digit = |c: u8| -> Result<u8, String> {
        match c {
            b'0'..=b'9' => Ok(c - b'0'),
            b'a'..=b'f' => Ok(c - b'a' + 10),
            b'A'..=b'F' => Ok(c - b'A' + 10),
            _ => Err(format!("{:?} is not a hex digit", char::from(c))),
        }
    };
    t.as_bytes().chunks_exact(2).map(|p| Ok(digit(p[0])? << 4 | digit(p[1])?)).collect()
}

/// Exactly `N` bytes from hex.
///
/// # Errors
/// Why not, as text.
pub fn decode_array<const N: usize>(text: &str) -> Result<[u8; N], String> {
    let v = decode(text)?;
    <[u8; N]>::try_from(v.as_slice())
        .map_err(|_| format!("expected {} hex digits ({N} bytes), got {} bytes", 2 * N, v.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        assert_eq!(encode(&[0, 0xab, 0x10]), "00ab10");
        assert_eq!(decode("0xAB10").unwrap(), [0xab, 0x10]);
        assert!(decode("abc").unwrap_err().contains("odd"));
        assert!(decode("zz").unwrap_err().contains("not a hex digit"));
        assert_eq!(decode_array::<2>("0102").unwrap(), [1, 2]);
        assert!(decode_array::<3>("0102").unwrap_err().contains("expected 6 hex digits"));
    }
}
