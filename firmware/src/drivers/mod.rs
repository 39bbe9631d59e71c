//! The platform's devices: UARTs and the defmt logger, PVH start info and ACPI, physical memory
//! access, PCIe ECAM and the DOE mailbox, fw_cfg, the legacy ports a TD's host serves, RDRAND, the TSC, the VT-d remapping unit. With `arch`, the only code of
//! the firmware allowed `unsafe`; each block says why it is sound.

#![allow(unsafe_code)]

pub mod acpi;
pub mod doe;
pub mod fw_cfg;
pub mod legacy;
pub mod log;
pub mod pci;
pub mod phys;
pub mod pvh;
pub mod rng;
pub mod serial;
pub mod tsc;
pub mod vtd;
