//! The callers' side of the TSM's two ABIs, written once.
//!
//! The host's sequence of calls for one device assignment (build and measure a TD, connect the
//! device, program an IDE stream, bind and lock the TDI, import and map its MMIO, add the DMA
//! entry, start it, and the one unbind order that both the teardown and the cleanup after a
//! failure follow) lives in [`host`]; the guest's sequence (accept memory, read the TDI, check
//! the host's report against the TSM's digest, accept MMIO and DMA, authorise START, use the
//! device, attest) in [`guest`]. Both reach the TSM only through a transport:
//!
//! - [`Seamcall`]: one host call, the ABI's registers in and out. The host agent in its host
//!   world (`seamless-host`) implements it with the SEAMCALL instruction; the test harness and
//!   the fuzz machine with a direct call into `Tsm::host_call`.
//! - [`Tdcall`]: one guest call, likewise over `Tsm::guest_call` or TDCALL.
//! - [`Doe`]: one exchange with the device's DOE mailbox (PCIe 6.x §6.30), which the host ferries
//!   each `DEVICE_REQUEST` through.
//! - [`HostMemory`] and [`GuestMemory`]: the pages each side owns and what it reads and writes.
//!
//! Between the two, [`vmcall`] is the demo TD's protocol with its host: the requests it makes
//! with TDG.VP.VMCALL, one table both sides use. [`nvme`] is the one driver of the demo's device,
//! QEMU's NVMe controller, which the TD and the host both run over a small transport of their
//! own ([`nvme::Controller`]).
//!
//! The crate is `no_std`, without heap and without `unsafe`: it is the same code in a bare-metal
//! host world, in the firmware and in host-side tests, so what the tests prove of a flow is what
//! the firmware runs.

#![no_std]
#![forbid(unsafe_code)]

pub mod console;
pub mod doe;
pub mod guest;
pub mod host;
pub mod nvme;
pub mod shared;
pub mod vmcall;

pub use doe::{Doe, DoeError};
pub use guest::{GuestError, GuestMemory, Tdcall};
pub use host::{HostError, HostMemory, Seamcall};
pub use tsm::{Regs, Status, TdExit};

/// Bytes of a page.
pub const PAGE: u64 = 4096;
