//! The seamless firmware: a PVH image that QEMU boots directly (`-kernel`), hosting the TSM.
//!
//! For now it proves that the `tsm` crate builds and links for bare metal: it prints
//! `seamless firmware: tsm <version>` on COM1 and exits QEMU through `isa-debug-exit`
//! (`-device isa-debug-exit,iobase=0xf4,iosize=0x04`), which makes QEMU exit with status 33 on
//! success and 35 on failure (`(code << 1) | 1`).
//!
//! Everything that touches the machine lives in `arch`, the only module allowed `unsafe`.
//!
//! Built for any other target (as `cargo clippy --workspace` and `cargo test --workspace` do),
//! the crate is an ordinary program that only says where the real image comes from, so that
//! workspace-wide host commands work without excluding it.

#![cfg_attr(target_os = "none", no_std, no_main)]
#![deny(unsafe_code)]

// The TSM is linked in to prove it builds for bare metal; the firmware does not drive it yet.
use tsm as _;

#[cfg(target_os = "none")]
mod arch;

#[cfg(target_os = "none")]
use core::fmt::Write;
#[cfg(target_os = "none")]
use core::panic::PanicInfo;

#[cfg(target_os = "none")]
use arch::serial::Com1;
#[cfg(target_os = "none")]
use arch::ExitCode;

/// The workspace version, which the TSM shares.
const TSM_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Called by `arch` in 64-bit mode with the boot stack set up; `start_info` is the physical
/// address of the PVH `hvm_start_info`.
#[cfg(target_os = "none")]
fn main(_start_info: u64) -> ! {
    let mut com1 = Com1::init();
    let _ = writeln!(com1, "seamless firmware: tsm {TSM_VERSION}");
    arch::exit_qemu(ExitCode::Success)
}

#[cfg(target_os = "none")]
#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    let mut com1 = Com1::init();
    let _ = writeln!(com1, "seamless firmware: panic: {info}");
    arch::exit_qemu(ExitCode::Failure)
}

/// The host build: not the firmware.
#[cfg(not(target_os = "none"))]
fn main() -> std::process::ExitCode {
    eprintln!(
        "seamless firmware {TSM_VERSION}: this is a bare-metal image; build it with \
         `cargo build -p firmware --target x86_64-unknown-none --release` and boot it with \
         `./run.sh boot`"
    );
    std::process::ExitCode::FAILURE
}
