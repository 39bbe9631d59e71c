//! The tool's standard output, buffered until the command has finished: printing never fails a
//! command midway, and a closed pipe does not change the exit status.

use std::io::Write as _;
use std::sync::Mutex;

static BUFFER: Mutex<String> = Mutex::new(String::new());

/// Appends `text` to the output.
pub fn push(text: String) {
    match BUFFER.lock() {
        Ok(mut b) => b.push_str(&text),
        Err(poisoned) => poisoned.into_inner().push_str(&text),
    }
}

/// Writes the output to stdout. A reader that went away (broken pipe) is not an error; any other
/// failure is said on stderr. The exit status stays the command's.
pub fn flush() {
    let text = match BUFFER.lock() {
        Ok(mut b) => std::mem::take(&mut *b),
        Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
    };
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()) {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            eprintln!("attest: cannot write the output: {e}");
        }
    }
}
