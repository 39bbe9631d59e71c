//! The seamless host agent's binary: the VMM's role, in the host world.
//!
//! The TSM reads this ELF from fw_cfg (`opt/seamless/host`), places it in host RAM, maps it at
//! -2 GiB with physical memory identity-mapped and at the direct map, and enters `host_entry`
//! (`arch/entry.S`) in 64-bit mode with the boot information in RDI (docs/firmware.md, "The host
//! world's entry contract"). From then on the agent reaches the TSM only by executing SEAMCALL;
//! what it cannot reach (the TSM, the PAMT, TD pages, the IOMMU's registers, the platform
//! secret, any MSR) it learns about from #MC and the TSM's fault log.
//!
//! What it does is the library's (`seamless_host`); here are its CPU ([`arch`]), its transport
//! (`run::Agent`: SEAMCALL the instruction) and its modes (`run`), and the probe of its own
//! world (`world_probe`).
//!
//! Built for any other target (as `cargo clippy --workspace` and `cargo test --workspace` do),
//! the crate is an ordinary program that says where the real image comes from.

#![cfg_attr(target_os = "none", no_std, no_main)]
#![deny(unsafe_code)]

#[cfg(target_os = "none")]
#[allow(unsafe_code)]
mod arch;
#[cfg(target_os = "none")]
mod assign;
#[cfg(target_os = "none")]
mod attack;
#[cfg(target_os = "none")]
mod host_nvme;
#[cfg(target_os = "none")]
mod interop;
#[cfg(target_os = "none")]
mod ovmf;
#[cfg(target_os = "none")]
mod ovmf_device;
#[cfg(target_os = "none")]
mod run;
#[cfg(target_os = "none")]
mod world_probe;

#[cfg(target_os = "none")]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    seamless_drivers::say!("\nseamless host: panic: {info}");
    arch::exit(arch::ExitCode::Failure)
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!(
        "seamless-host is the host world's image: build it with `cargo build -p seamless-host --target x86_64-unknown-none --release`; the TSM loads it from fw_cfg opt/seamless/host"
    );
    std::process::exit(2);
}
