//! The drivers and formats both binaries of the machine link: the TSM firmware (`firmware`, in
//! SVM host mode) and the untrusted host agent (`seamless-host`, in the host world). One copy
//! of each: the UARTs ([`serial`]) and the COM3 frame format ([`frame`]), QEMU's fw_cfg
//! ([`fw_cfg`]), the codes that end a run ([`exit`]), PCIe configuration space through ECAM ([`pci`]), the DOE mailbox ([`doe`]),
//! the TSC ([`tsc`]), the ACPI tables ([`acpi`]), physical memory ([`phys`]), port I/O
//! ([`port`]), the legacy ports a TD's host serves ([`legacy`]), the run configuration ([`config`]), the memory map and the layout carved from it
//! ([`memmap`]), the boot information the TSM hands the host world ([`bootinfo`]), and the exception entry of the
//! two world binaries ([`trap`]).
//!
//! Both binaries run on one CPU with identity-mapped low memory and the direct map at
//! [`phys::DIRECT_MAP_BASE`]; each names its own memory once at boot
//! ([`phys::claim_own_memory`]), which the physical accessors then refuse. What differs
//! between them is what the machine lets them reach: the TSM everything, the host world only its
//! nested map, the ports its I/O permission map passes and no MSR at all.
//!
//! `unsafe` lives in the modules that touch hardware (`port`, `phys`, `serial`, `fw_cfg`, `tsc`,
//! `pci`, `legacy`, `trap`), each block with the reason it is sound. Built for the host (tests, clippy), the pure
//! modules' tests run; nothing executes an I/O instruction there.

#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]

pub mod acpi;
pub mod bootinfo;
pub mod config;
pub mod console;
pub mod doe;
pub mod exit;
pub mod frame;
pub mod fw_cfg;
pub mod legacy;
pub mod memmap;
pub mod pci;
pub mod phases;
pub mod phys;
pub mod port;
pub mod serial;
pub mod trap;
pub mod tsc;
