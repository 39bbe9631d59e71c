//! What a run says and sends, the same way from both binaries: [`say!`](crate::say) writes one
//! readable line on COM1; [`figure`] sends a measured figure as a readable line and as a COM3
//! frame (`figure.NAME` holding `VALUE UNIT`), [`emit`] an artifact as a COM3 frame. Results
//! travel as framed data, which the launcher reads; the COM1 lines are for people.
//!
//! The TSM and the host world never write at the same time: one CPU, and the TSM runs only
//! while the host world is stopped at an exit, never in the middle of one of its lines.

use core::fmt;

use crate::frame;
use crate::serial::Uart;

/// Writes one line on COM1 (the console), formatted as `writeln!` would.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        let _ = writeln!($crate::serial::Uart::com1_attached(), $($arg)*);
    }};
}

/// Bytes into a fixed buffer (what does not fit is an error).
#[derive(Debug)]
pub struct BufWriter<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl<'a> BufWriter<'a> {
    /// An empty writer over `buf`.
    pub fn new(buf: &'a mut [u8]) -> BufWriter<'a> {
        BufWriter { buf, len: 0 }
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if nothing was written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl fmt::Write for BufWriter<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        self.buf.get_mut(self.len..end).ok_or(fmt::Error)?.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// One figure: a readable `figure NAME VALUE UNIT` line on COM1, and the same as a frame on COM3
/// (file `figure.NAME` holding `VALUE UNIT`), which is what the launcher reads.
pub fn figure(name: &str, value: &dyn fmt::Display, unit: &str) {
    use fmt::Write as _;
    say!("figure {name} {value} {unit}");
    let (mut file, mut data) = ([0u8; frame::MAX_NAME], [0u8; 64]);
    let mut f = BufWriter::new(&mut file);
    let named = write!(f, "figure.{name}").map(|()| f.len());
    let mut d = BufWriter::new(&mut data);
    let valued = write!(d, "{value} {unit}").map(|()| d.len());
    let (Ok(n), Ok(v)) = (named, valued) else {
        say!("figure {name}: does not fit a frame; not sent on COM3");
        return;
    };
    let name = core::str::from_utf8(&file[..n]).unwrap_or("figure");
    let mut com3 = Uart::com3();
    if let Err(e) = frame::encode(name, &data[..v], &mut |b| com3.write_bytes(b)) {
        say!("figure {name}: cannot frame it: {e:?}");
    }
}

/// Sends one artifact as a COM3 frame, and says so on COM1.
pub fn emit(name: &str, data: &[u8]) {
    let mut com3 = Uart::com3();
    if let Err(e) = frame::encode(name, data, &mut |b| com3.write_bytes(b)) {
        say!("artifact {name}: cannot frame it: {e:?}");
        return;
    }
    say!("artifact {name}: {} bytes on COM3", data.len());
}

/// Milliseconds with three decimals, from microseconds.
#[derive(Clone, Copy, Debug)]
pub struct Ms(pub u64);

impl fmt::Display for Ms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:03}", self.0 / 1000, self.0 % 1000)
    }
}

/// Bytes as lowercase hex.
#[derive(Clone, Copy, Debug)]
pub struct Hex<'a>(pub &'a [u8]);

impl fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::fmt::Write as _;

    #[test]
    fn buf_writer_takes_what_fits_and_refuses_the_rest() {
        let mut buf = [0u8; 8];
        let mut w = BufWriter::new(&mut buf);
        assert!(w.is_empty());
        assert!(write!(w, "figure").is_ok());
        assert_eq!(w.len(), 6);
        assert!(write!(w, ".abc").is_err());
        assert_eq!(w.len(), 6);
    }

    #[test]
    fn ms_and_hex_print_as_the_console_shows_them() {
        assert_eq!(std::format!("{}", Ms(12_345)), "12.345");
        assert_eq!(std::format!("{}", Ms(7)), "0.007");
        assert_eq!(std::format!("{}", Hex(&[0x0a, 0xff])), "0aff");
    }
}
