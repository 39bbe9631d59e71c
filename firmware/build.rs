//! Links the bare-metal image with `linker.ld` and defmt's `defmt.x` (which only adds the
//! non-allocated `.defmt` section of interned log strings and a few symbols; defmt's own build
//! script puts it on the search path). Only the bin gets the scripts, and only for
//! `x86_64-unknown-none`, so host builds of the workspace never see them.

fn main() {
    println!("cargo:rerun-if-changed=linker.ld");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src/arch/boot.S");
    println!("cargo:rerun-if-changed=src/arch/traps.S");
    println!("cargo:rerun-if-env-changed=DEFMT_LOG");
    let target = std::env::var("TARGET").unwrap_or_default();
    if target == "x86_64-unknown-none" {
        let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
        println!("cargo:rustc-link-arg-bins=-T{dir}/linker.ld");
        println!("cargo:rustc-link-arg-bins=-Tdefmt.x");
    }
}
