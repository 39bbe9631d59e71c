//! A DOE mailbox (PCIe r6 §6.30, registers §7.9.24) driven by polling: one request object in,
//! one response object out.
//!
//! The rules it follows: never write the mailbox while BUSY, or while an error or a stale
//! response is pending (ABORT first); write the object DW by DW, then GO; poll Data Object
//! Ready (never BUSY: QEMU never sets it, and the spec lets a function stay not-BUSY while it
//! works) with a deadline; on timeout or ERROR, ABORT and wait for the mailbox to clear; read
//! the response DW by DW, acknowledging each with a write to the Read Data Mailbox; check the
//! length in its header against the buffer; check ERROR at the end.
//!
//! QEMU's behaviour (`hw/pci/pcie_doe.c`) it copes with: the response is ready synchronously
//! after GO; a request QEMU (or the responder behind `spdm_port`) drops leaves no DOR and no
//! ERROR, which only the timeout and ABORT recover from.
//!
//! The driver reaches the registers and the clock through two small traits, so that the host
//! unit tests below run it against a model of QEMU's mailbox; the firmware passes the
//! capability's ECAM window and the TSC.

/// Offset of the DOE Capabilities register.
pub const CAPABILITIES: u64 = 0x04;
/// Offset of the DOE Control register.
pub const CONTROL: u64 = 0x08;
/// Offset of the DOE Status register.
pub const STATUS: u64 = 0x0C;
/// Offset of the Write Data Mailbox.
pub const WRITE_MAILBOX: u64 = 0x10;
/// Offset of the Read Data Mailbox.
pub const READ_MAILBOX: u64 = 0x14;
/// Bytes of the capability's registers.
pub const CAP_BYTES: u64 = 0x18;

/// Control: ABORT.
pub const CONTROL_ABORT: u32 = 0x1;
/// Control: GO.
pub const CONTROL_GO: u32 = 0x8000_0000;
/// Status: BUSY.
pub const STATUS_BUSY: u32 = 0x1;
/// Status: ERROR.
pub const STATUS_ERROR: u32 = 0x4;
/// Status: Data Object Ready.
pub const STATUS_READY: u32 = 0x8000_0000;

/// The capability's registers, as 32-bit accesses at offsets from the capability.
pub trait Registers {
    /// Reads the register at `offset`.
    fn read(&self, offset: u64) -> u32;
    /// Writes the register at `offset`.
    fn write(&self, offset: u64, value: u32);
}

/// A monotonic microsecond clock for the deadlines.
pub trait Micros {
    /// Microseconds since an arbitrary fixed point.
    fn now_us(&self) -> u64;
}

/// What went wrong in one exchange: the host flows' mailbox error (`tsm_client::DoeError`).
pub use tsm_client::DoeError;

/// One DOE mailbox.
#[derive(Debug)]
pub struct Mailbox<R> {
    regs: R,
    timeout_us: u64,
}

impl<R: Registers> Mailbox<R> {
    /// The mailbox whose capability registers are `regs`, with a response timeout of
    /// `timeout_us` (PCIe r6 §6.30.2: 1 s).
    pub fn new(regs: R, timeout_us: u64) -> Mailbox<R> {
        Mailbox { regs, timeout_us }
    }

    /// The response timeout (µs): the longest the mailbox waits for an answer.
    pub fn timeout_us(&self) -> u64 {
        self.timeout_us
    }

    /// The DOE Capabilities register (interrupt support and message number).
    pub fn capabilities(&self) -> u32 {
        self.regs.read(CAPABILITIES)
    }

    fn status(&self) -> u32 {
        self.regs.read(STATUS)
    }

    /// ABORT, then waits until neither BUSY nor ERROR nor DOR is set.
    ///
    /// # Errors
    /// [`DoeError::Stuck`] if the mailbox does not clear within the timeout.
    pub fn abort(&mut self, clock: &impl Micros) -> Result<(), DoeError> {
        self.regs.write(CONTROL, CONTROL_ABORT);
        self.wait(clock, |s| s & (STATUS_BUSY | STATUS_ERROR | STATUS_READY) == 0)
            .map(|_| ())
            .map_err(|status| DoeError::Stuck { status })
    }

    /// Polls the status until `done` or the timeout; the last status on timeout.
    fn wait(&self, clock: &impl Micros, done: impl Fn(u32) -> bool) -> Result<u32, u32> {
        let deadline = clock.now_us().saturating_add(self.timeout_us);
        loop {
            let s = self.status();
            if done(s) {
                return Ok(s);
            }
            if clock.now_us() >= deadline {
                return Err(s);
            }
            core::hint::spin_loop();
        }
    }

    /// Sends `request` (a whole DOE object, DW padded) and reads the response object into
    /// `response`; returns its length in bytes.
    ///
    /// # Errors
    /// [`DoeError`]; after every error but `BadRequest` and `Stuck` the mailbox was aborted and
    /// is ready for the next exchange.
    pub fn exchange(&mut self, clock: &impl Micros, request: &[u8], response: &mut [u8]) -> Result<usize, DoeError> {
        if request.len() < 8 || !request.len().is_multiple_of(4) {
            return Err(DoeError::BadRequest { len: request.len() });
        }
        // A stale error or response, or BUSY, must clear before a new request (§6.30.2).
        if self.status() & (STATUS_ERROR | STATUS_READY) != 0 {
            self.abort(clock)?;
        }
        if self.status() & STATUS_BUSY != 0 {
            self.wait(clock, |s| s & STATUS_BUSY == 0).map_err(|status| DoeError::Stuck { status })?;
        }
        for dw in request.chunks_exact(4) {
            self.regs.write(WRITE_MAILBOX, u32::from_le_bytes([dw[0], dw[1], dw[2], dw[3]]));
        }
        // The clock starts before GO: QEMU holds the vCPU inside the GO write until the
        // responder answers, so a late answer is already there when polling begins, and only
        // the time since GO shows it came past the deadline.
        let start = clock.now_us();
        self.regs.write(CONTROL, CONTROL_GO);
        let s = match self.wait(clock, |s| s & (STATUS_READY | STATUS_ERROR) != 0) {
            Ok(s) if clock.now_us().saturating_sub(start) <= self.timeout_us => s,
            // An answer after the deadline is not taken (§6.30.2): ABORT discards it.
            Ok(_) | Err(_) => {
                let waited_us = clock.now_us().saturating_sub(start);
                self.abort(clock)?;
                return Err(DoeError::Timeout { waited_us });
            }
        };
        if s & STATUS_ERROR != 0 {
            self.abort(clock)?;
            return Err(DoeError::DeviceError);
        }
        let header1 = self.regs.read(READ_MAILBOX);
        self.regs.write(READ_MAILBOX, 0);
        let header2 = self.regs.read(READ_MAILBOX);
        self.regs.write(READ_MAILBOX, 0);
        let dws = match header2 & 0x3_FFFF {
            0 => 1 << 18,
            n => n,
        };
        let bytes = dws as usize * 4;
        if dws < 2 || bytes > response.len() {
            self.abort(clock)?;
            return Err(DoeError::BadResponseLength { dws });
        }
        response[..4].copy_from_slice(&header1.to_le_bytes());
        response[4..8].copy_from_slice(&header2.to_le_bytes());
        for chunk in response[8..bytes].chunks_exact_mut(4) {
            if self.status() & STATUS_READY == 0 {
                // The function withdrew the object before it was read out.
                self.abort(clock)?;
                return Err(DoeError::BadResponseLength { dws });
            }
            chunk.copy_from_slice(&self.regs.read(READ_MAILBOX).to_le_bytes());
            self.regs.write(READ_MAILBOX, 0);
        }
        if self.status() & STATUS_ERROR != 0 {
            self.abort(clock)?;
            return Err(DoeError::DeviceError);
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::{Cell, RefCell};
    use std::vec::Vec;

    /// What the modelled function does with a request on GO.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Behaviour {
        /// Answers with the request itself (QEMU with a responder that echoes).
        Echo,
        /// Drops it: neither DOR nor ERROR (QEMU when the responder answers "no response").
        Drop,
        /// Sets ERROR.
        Error,
        /// Answers a header announcing `n` DWs and nothing else.
        Announce(u32),
        /// Answers, then withdraws the object after the first two DWs are read.
        Withdraw,
        /// Answers, but holds the GO write for this many µs first (QEMU's vCPU waiting for a
        /// slow responder).
        Late(u64),
    }

    /// QEMU's `pcie_doe.c`, reduced to what the driver can observe.
    #[derive(Debug)]
    struct Model {
        behaviour: Behaviour,
        write_mbox: RefCell<Vec<u32>>,
        read_mbox: RefCell<Vec<u32>>,
        read_idx: Cell<usize>,
        ready: Cell<bool>,
        error: Cell<bool>,
        /// BUSY reads left before it clears (u32::MAX: never).
        busy_reads: Cell<u32>,
        /// ABORT leaves ERROR set (a broken function).
        sticky_error: bool,
        gos: Cell<u32>,
        aborts: Cell<u32>,
        /// Requests as the function saw them on GO.
        seen: RefCell<Vec<Vec<u32>>>,
    }

    impl Model {
        fn new(behaviour: Behaviour) -> Model {
            Model {
                behaviour,
                write_mbox: RefCell::default(),
                read_mbox: RefCell::default(),
                read_idx: Cell::new(0),
                ready: Cell::new(false),
                error: Cell::new(false),
                busy_reads: Cell::new(0),
                sticky_error: false,
                gos: Cell::new(0),
                aborts: Cell::new(0),
                seen: RefCell::default(),
            }
        }

        fn reset(&self) {
            self.write_mbox.borrow_mut().clear();
            self.read_mbox.borrow_mut().clear();
            self.read_idx.set(0);
            self.ready.set(false);
        }
    }

    impl Registers for &Model {
        fn read(&self, offset: u64) -> u32 {
            match offset {
                STATUS => {
                    let busy = match self.busy_reads.get() {
                        0 => 0,
                        u32::MAX => STATUS_BUSY,
                        n => {
                            self.busy_reads.set(n - 1);
                            STATUS_BUSY
                        }
                    };
                    busy | if self.error.get() { STATUS_ERROR } else { 0 }
                        | if self.ready.get() { STATUS_READY } else { 0 }
                }
                READ_MAILBOX if self.ready.get() && !self.error.get() => {
                    self.read_mbox.borrow().get(self.read_idx.get()).copied().unwrap_or(0)
                }
                // Interrupt support with message number 0, as QEMU's NVMe reports with MSI-X.
                CAPABILITIES => 0x1,
                _ => 0,
            }
        }

        fn write(&self, offset: u64, value: u32) {
            match offset {
                CONTROL if value & CONTROL_ABORT != 0 => {
                    self.aborts.set(self.aborts.get() + 1);
                    self.reset();
                    self.error.set(self.sticky_error);
                }
                CONTROL if value & CONTROL_GO != 0 => {
                    self.gos.set(self.gos.get() + 1);
                    if self.error.get() {
                        return;
                    }
                    let request: Vec<u32> = self.write_mbox.borrow_mut().drain(..).collect();
                    self.seen.borrow_mut().push(request.clone());
                    match self.behaviour {
                        Behaviour::Echo | Behaviour::Withdraw => {
                            *self.read_mbox.borrow_mut() = request;
                            self.ready.set(true);
                        }
                        Behaviour::Late(us) => {
                            STALL_US.with(|s| s.set(s.get() + us));
                            *self.read_mbox.borrow_mut() = request;
                            self.ready.set(true);
                        }
                        Behaviour::Drop => self.reset(),
                        Behaviour::Error => self.error.set(true),
                        Behaviour::Announce(n) => {
                            *self.read_mbox.borrow_mut() = vec![0x0001_0001, n];
                            self.ready.set(true);
                        }
                    }
                }
                WRITE_MAILBOX => self.write_mbox.borrow_mut().push(value),
                READ_MAILBOX => {
                    let idx = self.read_idx.get() + 1;
                    self.read_idx.set(idx);
                    let len = self.read_mbox.borrow().len();
                    if idx == len {
                        self.reset();
                    } else if idx > len {
                        self.error.set(true);
                    } else if idx == 2 && self.behaviour == Behaviour::Withdraw {
                        self.ready.set(false);
                    }
                }
                _ => {}
            }
        }
    }

    std::thread_local! {
        /// Time the modelled function held the vCPU, added to the clock at its next reading.
        static STALL_US: Cell<u64> = const { Cell::new(0) };
    }

    /// A clock that advances 10 µs per reading (plus any stall of the function).
    struct Clock(Cell<u64>);

    impl Micros for Clock {
        fn now_us(&self) -> u64 {
            let stall = STALL_US.with(|s| s.replace(0));
            self.0.set(self.0.get() + 10 + stall);
            self.0.get()
        }
    }

    const TIMEOUT_US: u64 = 1000;
    /// A 3-DW object: header, length 3, one payload DW.
    const REQUEST: [u8; 12] = [0x01, 0x00, 0x01, 0x00, 0x03, 0x00, 0x00, 0x00, 0x10, 0x84, 0x00, 0x00];

    fn run(model: &Model, request: &[u8], buf: &mut [u8]) -> Result<usize, DoeError> {
        Mailbox::new(model, TIMEOUT_US).exchange(&Clock(Cell::new(0)), request, buf)
    }

    #[test]
    fn exchange_rejects_a_request_shorter_than_the_header() {
        let m = Model::new(Behaviour::Echo);
        assert_eq!(run(&m, &REQUEST[..4], &mut [0; 64]), Err(DoeError::BadRequest { len: 4 }));
        assert!(m.seen.borrow().is_empty() && m.write_mbox.borrow().is_empty() && m.gos.get() == 0);
    }

    #[test]
    fn exchange_rejects_a_request_that_is_not_whole_dws() {
        let m = Model::new(Behaviour::Echo);
        assert_eq!(run(&m, &REQUEST[..10], &mut [0; 64]), Err(DoeError::BadRequest { len: 10 }));
        assert!(m.write_mbox.borrow().is_empty() && m.gos.get() == 0);
    }

    #[test]
    fn exchange_aborts_a_stale_response_before_writing() {
        let m = Model::new(Behaviour::Echo);
        *m.read_mbox.borrow_mut() = vec![0xdead, 0xbeef];
        m.ready.set(true);
        let mut buf = [0u8; 64];
        assert_eq!(run(&m, &REQUEST, &mut buf), Ok(12));
        assert_eq!(m.aborts.get(), 1);
        assert_eq!(&buf[..12], &REQUEST);
    }

    #[test]
    fn exchange_reports_a_mailbox_an_abort_cannot_clear() {
        let mut m = Model::new(Behaviour::Echo);
        m.sticky_error = true;
        m.error.set(true);
        assert_eq!(run(&m, &REQUEST, &mut [0; 64]), Err(DoeError::Stuck { status: STATUS_ERROR }));
        assert_eq!(m.gos.get(), 0, "nothing sent into a broken mailbox");
    }

    #[test]
    fn exchange_waits_out_busy_without_relying_on_it() {
        let m = Model::new(Behaviour::Echo);
        m.busy_reads.set(5);
        assert_eq!(run(&m, &REQUEST, &mut [0; 64]), Ok(12));
        let m = Model::new(Behaviour::Echo);
        m.busy_reads.set(u32::MAX);
        assert_eq!(run(&m, &REQUEST, &mut [0; 64]), Err(DoeError::Stuck { status: STATUS_BUSY }));
        assert_eq!(m.gos.get(), 0, "nothing written while BUSY");
    }

    #[test]
    fn exchange_times_out_and_aborts_when_the_request_is_dropped() {
        let m = Model::new(Behaviour::Drop);
        let r = run(&m, &REQUEST, &mut [0; 64]);
        assert!(matches!(r, Err(DoeError::Timeout { waited_us }) if waited_us >= TIMEOUT_US), "{r:?}");
        assert_eq!((m.gos.get(), m.aborts.get()), (1, 1));
        // The mailbox works again afterwards.
        let m2 = Model::new(Behaviour::Echo);
        assert_eq!(run(&m2, &REQUEST, &mut [0; 64]), Ok(12));
    }

    #[test]
    fn exchange_refuses_an_answer_that_came_past_the_deadline() {
        let m = Model::new(Behaviour::Late(2 * TIMEOUT_US));
        let r = run(&m, &REQUEST, &mut [0; 64]);
        assert!(matches!(r, Err(DoeError::Timeout { waited_us }) if waited_us >= 2 * TIMEOUT_US), "{r:?}");
        assert_eq!((m.gos.get(), m.aborts.get()), (1, 1), "the late answer is discarded with ABORT");
        // Late, but within the deadline: taken.
        let m = Model::new(Behaviour::Late(TIMEOUT_US / 2));
        assert_eq!(run(&m, &REQUEST, &mut [0; 64]), Ok(12));
    }

    #[test]
    fn exchange_aborts_when_the_function_sets_error() {
        let m = Model::new(Behaviour::Error);
        assert_eq!(run(&m, &REQUEST, &mut [0; 64]), Err(DoeError::DeviceError));
        assert_eq!(m.aborts.get(), 1);
        assert!(!m.error.get(), "ABORT cleared ERROR");
    }

    #[test]
    fn exchange_rejects_a_response_larger_than_the_buffer() {
        let m = Model::new(Behaviour::Announce(17));
        assert_eq!(run(&m, &REQUEST, &mut [0; 64]), Err(DoeError::BadResponseLength { dws: 17 }));
        assert_eq!(m.aborts.get(), 1);
        // Length 0 means 2^18 DWs.
        let m = Model::new(Behaviour::Announce(0));
        assert_eq!(run(&m, &REQUEST, &mut [0; 64]), Err(DoeError::BadResponseLength { dws: 1 << 18 }));
    }

    #[test]
    fn exchange_rejects_a_response_shorter_than_its_header() {
        let m = Model::new(Behaviour::Announce(1));
        assert_eq!(run(&m, &REQUEST, &mut [0; 64]), Err(DoeError::BadResponseLength { dws: 1 }));
        assert_eq!(m.aborts.get(), 1);
    }

    #[test]
    fn exchange_aborts_when_the_object_is_withdrawn_while_read() {
        let m = Model::new(Behaviour::Withdraw);
        assert_eq!(run(&m, &REQUEST, &mut [0; 64]), Err(DoeError::BadResponseLength { dws: 3 }));
        assert_eq!(m.aborts.get(), 1);
    }

    #[test]
    fn registers_fit_the_capability() {
        assert_eq!(READ_MAILBOX + 4, CAP_BYTES);
        assert_eq!(Mailbox::new(&Model::new(Behaviour::Echo), TIMEOUT_US).capabilities(), 0x1);
    }

    #[test]
    fn exchange_happy_path() {
        let m = Model::new(Behaviour::Echo);
        let mut buf = [0u8; 64];
        assert_eq!(run(&m, &REQUEST, &mut buf), Ok(12));
        assert_eq!(&buf[..12], &REQUEST);
        // DW by DW, then one GO; no ABORT on a clean mailbox; every DW acknowledged, so the
        // mailbox is empty and not ready afterwards.
        assert_eq!(*m.seen.borrow(), vec![vec![0x0001_0001, 3, 0x8410]]);
        assert_eq!((m.gos.get(), m.aborts.get()), (1, 0));
        assert!(!m.ready.get() && !m.error.get() && m.read_mbox.borrow().is_empty());
    }
}
