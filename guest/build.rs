//! Links the bare-metal guest with `linker.ld` (the TD's GPA layout: unmeasured TEMP_MEM low, the
//! measured image below 4 GiB, the reset vector at 0xFFFFFFF0). Only the bin gets the script, and
//! only for `x86_64-unknown-none`, so host builds of the workspace never see it.

fn main() {
    println!("cargo:rerun-if-changed=linker.ld");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src/arch/start.S");
    let target = std::env::var("TARGET").unwrap_or_default();
    if target == "x86_64-unknown-none" {
        let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
        println!("cargo:rustc-link-arg-bins=-T{dir}/linker.ld");
    }
}
