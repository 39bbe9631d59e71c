//! Links the host agent's binary with `linker.ld` (its image at -2 GiB, the `kernel` code
//! model's window, where the TSM's loader maps it). Only the bin gets the script, and only for
//! `x86_64-unknown-none`, so host builds of the workspace never see it.

fn main() {
    println!("cargo:rerun-if-changed=linker.ld");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src/arch/entry.S");
    println!("cargo:rerun-if-changed=src/td_probe.S");
    let target = std::env::var("TARGET").unwrap_or_default();
    if target == "x86_64-unknown-none" {
        let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
        println!("cargo:rustc-link-arg-bins=-T{dir}/linker.ld");
    }
}
