//! QEMU's SPDM socket protocol (`backends/spdm-socket.c`, spdm-emu `command.c`): every frame is
//! `Command u32 BE | TransportType u32 BE | PayloadSize u32 BE | Payload`, and with transport
//! PCI_DOE the payload of `NORMAL` is one whole DOE object. QEMU blocks its vCPU until the reply,
//! so every `NORMAL` gets exactly one `NORMAL` back (length 0 = "no response").
//!
//! Latency: QEMU writes a frame in several calls (header, then payload) without TCP_NODELAY, so
//! its payload waits in Nagle's algorithm until the header is acknowledged; a receiver that
//! delays its ACK then stalls every exchange by about 40 ms. The device therefore asks for an
//! immediate ACK (TCP_QUICKACK, Linux) before every read, sets TCP_NODELAY, and writes each reply
//! frame with a single call from one buffer, so neither direction waits.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};

use crate::Device;

/// Socket commands.
#[allow(missing_docs)]
pub mod command {
    pub const NORMAL: u32 = 0x0001;
    pub const CONTINUE: u32 = 0xFFFD;
    pub const SHUTDOWN: u32 = 0xFFFE;
    pub const UNKNOWN: u32 = 0xFFFF;
    pub const TEST: u32 = 0xDEAD;
}

/// Transport type PCI_DOE (the one value QEMU and spdm-emu agree on).
pub const TRANSPORT_PCI_DOE: u32 = 2;
/// Largest payload accepted: one DOE object of 2^20 bytes.
pub const MAX_PAYLOAD: usize = tsm::doe::MAX_OBJECT_BYTES;
/// The reply to TEST.
pub const SERVER_HELLO: &[u8] = b"Server Hello!\0";

/// One frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Command.
    pub command: u32,
    /// Transport type.
    pub transport: u32,
    /// Payload.
    pub payload: Vec<u8>,
}

/// Reads one frame with exact-length reads; `Ok(None)` if the peer closed between frames.
///
/// # Errors
/// I/O errors, EOF inside a frame, or a payload larger than [`MAX_PAYLOAD`] (`InvalidData`: the
/// stream cannot be resynchronised after it).
pub fn read_frame(r: &mut impl Read) -> io::Result<Option<Frame>> {
    let mut header = [0u8; 12];
    let mut got = 0;
    while got < header.len() {
        match r.read(&mut header[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let be = |at: usize| u32::from_be_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]]);
    let size = usize::try_from(be(8)).unwrap_or(usize::MAX);
    if size > MAX_PAYLOAD {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("payload of {size} bytes")));
    }
    let mut payload = vec![0u8; size];
    r.read_exact(&mut payload)?;
    Ok(Some(Frame { command: be(0), transport: be(4), payload }))
}

/// Writes one frame in a single call.
///
/// # Errors
/// I/O errors, or a payload that does not fit the 32-bit size.
pub fn write_frame(w: &mut impl Write, command: u32, transport: u32, payload: &[u8]) -> io::Result<()> {
    let size = u32::try_from(payload.len()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut buf = Vec::with_capacity(12 + payload.len());
    buf.extend_from_slice(&command.to_be_bytes());
    buf.extend_from_slice(&transport.to_be_bytes());
    buf.extend_from_slice(&size.to_be_bytes());
    buf.extend_from_slice(payload);
    w.write_all(&buf)?;
    w.flush()
}

/// Asks the kernel to acknowledge what arrives next at once (Linux TCP_QUICKACK, which the
/// kernel clears again on its own, hence once per read). Elsewhere a no-op.
#[cfg(target_os = "linux")]
fn quickack(stream: &TcpStream) {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: `stream` owns an open socket for the whole call; the option value is a live c_int
    // whose size is passed with it; setsockopt only reads it. A failure leaves the socket as it
    // was (only slower), so its result is not needed.
    let _ = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_QUICKACK,
            (&on as *const libc::c_int).cast(),
            core::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
}

#[cfg(not(target_os = "linux"))]
fn quickack(_stream: &TcpStream) {}

/// How a connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The peer closed, sent CONTINUE, or broke the framing: accept the next one.
    Disconnected,
    /// SHUTDOWN: the server stops.
    Shutdown,
}

/// Serves one connection until it ends.
///
/// # Errors
/// I/O errors of the connection.
pub fn serve_connection(device: &mut Device, mut stream: TcpStream) -> io::Result<Outcome> {
    stream.set_nodelay(true)?;
    loop {
        quickack(&stream);
        let Some(frame) = read_frame(&mut stream)? else {
            return Ok(Outcome::Disconnected);
        };
        match frame.command {
            command::NORMAL => {
                let reply = if frame.transport == TRANSPORT_PCI_DOE { device.handle(&frame.payload) } else { None };
                if let Some(ms) = device.config().faults.late_ms {
                    // The late fault: QEMU (and its vCPU) waits this long for the answer.
                    std::thread::sleep(std::time::Duration::from_millis(ms));
                }
                write_frame(&mut stream, command::NORMAL, TRANSPORT_PCI_DOE, reply.as_deref().unwrap_or(&[]))?;
            }
            command::TEST => write_frame(&mut stream, command::TEST, frame.transport, SERVER_HELLO)?,
            command::SHUTDOWN => {
                // QEMU does not wait for the echo; a peer that already left is fine.
                let _ = write_frame(&mut stream, command::SHUTDOWN, frame.transport, &[]);
                return Ok(Outcome::Shutdown);
            }
            command::CONTINUE => {
                let _ = write_frame(&mut stream, command::CONTINUE, frame.transport, &[]);
                return Ok(Outcome::Disconnected);
            }
            _ => write_frame(&mut stream, command::UNKNOWN, frame.transport, &[])?,
        }
    }
}

/// Serves connections one at a time until SHUTDOWN (or after the first one with `once`). The
/// device keeps its state across connections; a new requester starts with GET_VERSION anyway.
///
/// # Errors
/// Errors of `accept`; a failing connection is logged and the next one accepted.
pub fn serve(listener: &TcpListener, device: &mut Device, once: bool) -> io::Result<()> {
    loop {
        let (stream, peer) = listener.accept()?;
        let outcome = match serve_connection(device, stream) {
            Ok(o) => o,
            Err(e) => {
                eprintln!("tdisp-device: connection from {peer} ended: {e}");
                Outcome::Disconnected
            }
        };
        if outcome == Outcome::Shutdown || once {
            return Ok(());
        }
    }
}
