//! The timeline of a run: each phase's start and duration (microseconds since PVH entry, from
//! the TSC), written as `timeline.json` for the launcher (`./run.sh` prints it):
//!
//! ```json
//! {"schema":"seamless-timeline/1","clock":"firmware TSC, ms since PVH entry",
//!  "boot_to_tsm_ready_ms":16.836,"result":"completed",
//!  "phases":[{"name":"td_build","start_ms":45.301,"duration_ms":8.910}, ...]}
//! ```

use core::fmt::{self, Write};

/// Phases a timeline holds, at most.
pub const MAX_PHASES: usize = 12;

/// Milliseconds with three decimals, from microseconds.
struct Ms(u64);

impl fmt::Display for Ms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:03}", self.0 / 1000, self.0 % 1000)
    }
}

/// The phases recorded so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Phases {
    phases: [(&'static str, u64, u64); MAX_PHASES],
    count: usize,
}

impl Default for Phases {
    fn default() -> Phases {
        Phases { phases: [("", 0, 0); MAX_PHASES], count: 0 }
    }
}

struct SliceWriter<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl Write for SliceWriter<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let b = s.as_bytes();
        let end = self.len.checked_add(b.len()).filter(|&e| e <= self.buf.len()).ok_or(fmt::Error)?;
        self.buf[self.len..end].copy_from_slice(b);
        self.len = end;
        Ok(())
    }
}

/// Whether a phase name can go into the JSON as it is (the firmware's names are constants).
fn plain(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_')
}

impl Phases {
    /// Records a phase; false (and nothing recorded) if the timeline is full or the name is not
    /// `[a-z0-9_]+`.
    pub fn push(&mut self, name: &'static str, start_us: u64, duration_us: u64) -> bool {
        if self.count == MAX_PHASES || !plain(name) {
            return false;
        }
        self.phases[self.count] = (name, start_us, duration_us);
        self.count += 1;
        true
    }

    /// The timeline as JSON (one line) into `buf`; returns the bytes written.
    ///
    /// # Errors
    /// [`fmt::Error`] if `buf` is too small (or `result` is not `[a-z0-9_]+`).
    pub fn json(&self, buf: &mut [u8], ready_us: u64, result: &str) -> Result<usize, fmt::Error> {
        if !plain(result) {
            return Err(fmt::Error);
        }
        let mut w = SliceWriter { buf, len: 0 };
        write!(w, "{{\"schema\":\"seamless-timeline/1\",\"clock\":\"firmware TSC, ms since PVH entry\",")?;
        write!(w, "\"boot_to_tsm_ready_ms\":{},\"result\":\"{result}\",\"phases\":[", Ms(ready_us))?;
        for (i, (name, start, dur)) in self.phases[..self.count].iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            write!(w, "{sep}{{\"name\":\"{name}\",\"start_ms\":{},\"duration_ms\":{}}}", Ms(*start), Ms(*dur))?;
        }
        writeln!(w, "]}}")?;
        Ok(w.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_rejects_a_full_timeline_and_odd_names() {
        let mut p = Phases::default();
        assert!(!p.push("", 0, 0));
        assert!(!p.push("has \"quote\"", 0, 0));
        for _ in 0..MAX_PHASES {
            assert!(p.push("x", 0, 0));
        }
        assert!(!p.push("x", 0, 0));
    }

    #[test]
    fn json_rejects_a_small_buffer_and_an_odd_result() {
        let mut p = Phases::default();
        p.push("td_build", 45_301, 8_910);
        assert_eq!(p.json(&mut [0u8; 64], 1, "completed"), Err(fmt::Error));
        assert_eq!(p.json(&mut [0u8; 1024], 1, "done\""), Err(fmt::Error));
    }

    #[test]
    fn json_happy_path_is_the_documented_shape() {
        let mut p = Phases::default();
        p.push("td_build", 45_301, 8_910);
        p.push("spdm_connect", 54_308, 123_971);
        let mut buf = [0u8; 1024];
        let n = p.json(&mut buf, 16_836, "completed").unwrap();
        let v: serde_json::Value = serde_json::from_slice(&buf[..n]).unwrap();
        assert_eq!(v["schema"], "seamless-timeline/1");
        assert_eq!(v["boot_to_tsm_ready_ms"], 16.836);
        assert_eq!(v["result"], "completed");
        assert_eq!(v["phases"][1]["name"], "spdm_connect");
        assert_eq!(v["phases"][1]["start_ms"], 54.308);
        assert_eq!(v["phases"][1]["duration_ms"], 123.971);
        assert_eq!(v["phases"][0]["duration_ms"], 8.91);
        // run.sh reads it with sed: one object per `{`, keys in this order.
        let text = core::str::from_utf8(&buf[..n]).unwrap();
        assert!(text.contains("{\"name\":\"td_build\",\"start_ms\":45.301,\"duration_ms\":8.910}"));
        assert!(text.ends_with("]}\n"));
    }
}
