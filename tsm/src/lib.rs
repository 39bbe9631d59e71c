//! The trusted logic of seamless, a software TSM (TEE Security Manager): the PAMT, the secure
//! EPT, the TD lifecycle and TLB tracking, measurement, and the host (SEAMCALL-shaped) and guest
//! (TDCALL-shaped) ABI dispatchers.
//!
//! `#![no_std]`, no heap, no `unsafe`: the machine is reached only through the traits in
//! [`platform`], which `firmware` implements for QEMU and the test harness over a memory arena.
//! The entry points are [`Tsm::host_call`] and [`Tsm::guest_call`]; `docs/abi.md` lists every leaf.

#![no_std]
#![forbid(unsafe_code)]

pub mod abi;
pub mod addr;
pub mod attestation;
pub mod audit;
pub mod cpuid;
pub mod devices;
pub mod doe;
pub mod error;
pub mod faults;
pub mod ide;
pub mod idekm;
pub mod iommu;
pub mod measure;
pub mod msr;
pub mod pamt;
pub mod pdev;
pub mod platform;
pub mod sept;
pub mod spdm;
pub mod status;
pub mod td;
pub mod tdi;
pub mod tdisp;
pub mod vapic;
pub mod vcpu;

mod state;

pub use abi::{GuestReturn, Regs, TdExit};
pub use state::{TdMeasurements, TdSummary, Tsm, TsmIdentity, MAX_MMIO_WINDOWS, MAX_PRIVATE_RANGES};
pub use status::{Operand, Status};
