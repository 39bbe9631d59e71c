//! The seamless host agent's binary: see the library (`lib.rs`) for what it does.

#![cfg_attr(target_os = "none", no_std, no_main)]
#![deny(unsafe_code)]

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!(
        "seamless-host is the host world's image: build it with `cargo build -p seamless-host --target x86_64-unknown-none --release`; the TSM loads it from fw_cfg opt/seamless/host"
    );
    std::process::exit(2);
}
