//! The seamless TD: a `no_std` guest for `x86_64-unknown-none` that runs as a TDX guest does.
//! The host loads it from a file (fw_cfg `opt/seamless/guest`, as OVMF.fd will be), PAGE.ADDs
//! its pages and MR.EXTENDs those that hold code and data, so MRTD measures this binary and
//! `attest measure` recomputes it from the same file (`firmware guest-image` turns the ELF into
//! that file; `linker.ld` gives the layout).
//!
//! Entry is TDX's: vCPU 0 at 0xFFFFFFF0 in 32-bit flat protected mode (`arch/start.S` builds the
//! page tables and enters long mode), then `td::main`. Its own IDT serves #VE (vector 20)
//! through TDG.VP.VEINFO.GET and a TDVMCALL to the host ([`ve`]); every other exception is
//! fatal. It reaches the TSM only through TDCALL ([`tdcall`], executed in [`arch`]) and the host
//! only through TDG.VP.VMCALL; its console goes to the host sixteen bytes per VMCALL
//! ([`console`]).
//!
//! Built for any other target (as `cargo clippy --workspace` and `cargo test --workspace` do),
//! the crate is an ordinary program that says where the real image comes from, and runs the
//! unit tests of its pure modules.

#![cfg_attr(target_os = "none", no_std, no_main)]
#![deny(unsafe_code)]

#[cfg(target_os = "none")]
#[allow(unsafe_code)]
mod arch;
#[cfg(target_os = "none")]
mod console;
#[cfg(target_os = "none")]
mod probe;
#[cfg(target_os = "none")]
mod td;
#[cfg_attr(not(target_os = "none"), allow(dead_code))]
mod tdcall;
#[cfg_attr(not(target_os = "none"), allow(dead_code))]
mod ve;

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!(
        "seamless-guest is the TD's image: build it with `cargo build -p seamless-guest --target x86_64-unknown-none --release`"
    );
    std::process::exit(2);
}
