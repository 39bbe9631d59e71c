//! The platform's devices. The TSM's own: the defmt logger, the PVH start info, RDRAND, the
//! VT-d remapping unit, fw_cfg's DMA interface (the host image's segments), the local APIC's
//! timer that preempts a TD (`lapic`) and the 8259s it masks (`legacy`). The ones the host
//! agent drives too (UARTs, ACPI, physical memory, PCIe ECAM and the DOE mailbox, fw_cfg, the
//! TSC, the legacy ports a TD's host serves) live in the shared `seamless-drivers` crate, one copy for both binaries, and are
//! re-exported here under the same names. With `arch`, the only code of the firmware allowed
//! `unsafe`; each block says why it is sound.

#![allow(unsafe_code)]

pub use seamless_drivers::{acpi, fw_cfg, phys, serial, tsc};

pub mod fw_cfg_dma;
pub mod lapic;
pub mod legacy;
pub mod log;
pub mod pvh;
pub mod rng;
pub mod vtd;
