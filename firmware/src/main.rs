//! The seamless firmware: a PVH image that QEMU boots directly (`-kernel`), hosting the TSM.
//!
//! Boot: `arch` takes the CPU from the PVH entry to long mode with SSE, its own GDT/TSS and an
//! IDT that reports every exception, and enables SVM. `drivers` read the PVH memory map,
//! calibrate the TSC, read the run configuration and platform secret from fw_cfg and take the
//! VT-d unit (all DMA blocked until IOMMU.SETUP). `platform` implements the TSM's traits. Then
//! `world` builds the host world, loads the untrusted host agent's binary (`seamless-host`, from
//! fw_cfg) into it and serves it: the agent configures the TSM, connects and assigns the device
//! and builds the TDs, reaching the TSM only by SEAMCALL; a TD's VP.ENTER runs its TD world.
//!
//! COM1 carries the plain-text console (with `figure <name> <value> <unit>` lines), COM2 the
//! defmt log (decode with `defmt-print -e <this ELF>`). QEMU exits through `isa-debug-exit`
//! (`-device isa-debug-exit,iobase=0xf4,iosize=0x04`): status 33 on success, 35 on failure.
//!
//! `unsafe` lives in `arch` and `drivers` only. Built for any other target (as `cargo clippy
//! --workspace` and `cargo test --workspace` do), the crate is an ordinary program that only
//! says where the real image comes from.

#![cfg_attr(target_os = "none", no_std, no_main)]
#![deny(unsafe_code)]

#[cfg(target_os = "none")]
mod arch;
#[cfg(target_os = "none")]
mod drivers;
#[cfg(any(target_os = "none", test))]
#[cfg_attr(not(target_os = "none"), allow(dead_code))]
mod elf;
#[cfg(any(target_os = "none", test))]
#[cfg_attr(not(target_os = "none"), allow(dead_code))]
mod ioports;
#[cfg(target_os = "none")]
use seamless_drivers::config;
#[cfg(not(target_os = "none"))]
mod tools;
#[cfg(target_os = "none")]
use seamless_drivers::memmap;
#[cfg(target_os = "none")]
mod platform;
#[cfg(target_os = "none")]
mod run;
#[cfg(target_os = "none")]
mod world;

/// The workspace version, which the TSM shares.
const TSM_VERSION: &str = env!("CARGO_PKG_VERSION");

#[cfg(target_os = "none")]
fn main(start_info: arch::StartInfoAddr) -> ! {
    run::run(start_info)
}

#[cfg(target_os = "none")]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    use core::fmt::Write;
    let mut com1 = drivers::serial::Uart::com1();
    let _ = writeln!(com1, "\nseamless firmware: panic: {info}");
    arch::exit_qemu(arch::ExitCode::Failure)
}

/// The host build: not the firmware, but its host-side tools (`guest-image`, `artifacts`).
#[cfg(not(target_os = "none"))]
fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.is_empty() {
        return tools::main(&args);
    }
    eprintln!(
        "seamless firmware {TSM_VERSION}: this is a bare-metal image; build it with \
         `cargo build -p firmware --target x86_64-unknown-none --release` and boot it with \
         `./run.sh boot`"
    );
    std::process::ExitCode::FAILURE
}
