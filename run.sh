#!/usr/bin/env bash
# seamless: the single front door. CI runs exactly these subcommands (see .ci/run), so what
# passes here passes there.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"

BARE_TARGET=x86_64-unknown-none

usage() {
    cat <<'USAGE'
usage: ./run.sh [command] [args...]

commands:
  (none)         run the TD lifecycle demo (tests/harness/examples/td-lifecycle.rs)
  test [args]    install missing Rust prerequisites, run the workspace tests (args go to
                 `cargo test`), then build the TSM and the firmware for x86_64-unknown-none
  bench [args]   run the benchmarks in release mode: prints `bench <name> <value> <unit>`
                 lines and writes target/bench/results.json
  boot           build the firmware and boot it in QEMU (needs qemu-system-x86_64)
  setup          only install missing Rust prerequisites (target, clippy, rustfmt)
  help           show this help
USAGE
}

section() {
    echo
    echo "==> $*"
}

# Checks the toolchain; adds the bare-metal target and clippy/rustfmt when rustup can.
prereqs() {
    if ! command -v cargo >/dev/null 2>&1; then
        echo "error: missing prerequisite: cargo (the Rust toolchain) is not on PATH." >&2
        echo "       Install rustup, then run this again: rust-toolchain.toml pins the toolchain," >&2
        echo "       the $BARE_TARGET target and the clippy and rustfmt components." >&2
        exit 2
    fi
    if command -v rustup >/dev/null 2>&1; then
        if ! rustup target list --installed | grep -qx "$BARE_TARGET"; then
            section "rustup target add $BARE_TARGET"
            rustup target add "$BARE_TARGET"
        fi
        local installed missing=()
        installed=$(rustup component list --installed)
        for c in clippy rustfmt; do
            grep -q "^$c" <<<"$installed" || missing+=("$c")
        done
        if ((${#missing[@]})); then
            section "rustup component add ${missing[*]}"
            rustup component add "${missing[@]}"
        fi
    else
        echo "note: rustup not found; assuming the $BARE_TARGET target, clippy and rustfmt are installed" >&2
    fi
}

cmd_test() {
    prereqs
    section "cargo test --workspace $*"
    cargo test --workspace "$@"
    section "cargo build -p attest --target $BARE_TARGET (the no_std core the firmware links)"
    cargo build -p attest --target "$BARE_TARGET"
    section "cargo build -p tsm --target $BARE_TARGET (no_std, no heap)"
    cargo build -p tsm --target "$BARE_TARGET"
    section "cargo build -p firmware --target $BARE_TARGET --release"
    cargo build -p firmware --target "$BARE_TARGET" --release
    section "test: all passed"
}

cmd_bench() {
    prereqs
    # attest_verify_process_ms times the release `attest` binary.
    cargo build --release -q -p attest --features std --bin attest
    section "cargo run --release -p seamless-bench $*"
    cargo run --release -p seamless-bench -- "$@"
}

cmd_boot() {
    prereqs
    if ! command -v qemu-system-x86_64 >/dev/null 2>&1; then
        echo "error: missing prerequisite: qemu-system-x86_64 (Debian: apt-get install qemu-system-x86)" >&2
        exit 2
    fi
    section "cargo build -p firmware --target $BARE_TARGET --release"
    cargo build -p firmware --target "$BARE_TARGET" --release
    local firmware=${CARGO_TARGET_DIR:-target}/$BARE_TARGET/release/firmware
    section "qemu-system-x86_64 -kernel $firmware"
    # TCG: KVM on the development machines is nested (kvm_pvm) and much slower.
    # isa-debug-exit makes QEMU exit with (code << 1) | 1: 33 is success, 35 failure.
    local status=0
    timeout 60 qemu-system-x86_64 -M q35 -kernel "$firmware" -display none -nodefaults \
        -serial stdio -device isa-debug-exit,iobase=0xf4,iosize=0x04 -no-reboot || status=$?
    if ((status != 33)); then
        echo "error: firmware exited with QEMU status $status (33 is success)" >&2
        exit 1
    fi
}

cmd_default() {
    if [[ -f tests/harness/examples/td-lifecycle.rs ]]; then
        prereqs
        cargo run --release -q -p seamless-harness --example td-lifecycle
    else
        usage
    fi
}

if (($# == 0)); then
    cmd_default
    exit 0
fi

command=$1
shift
case "$command" in
    test) cmd_test "$@" ;;
    bench) cmd_bench "$@" ;;
    boot) cmd_boot "$@" ;;
    setup) prereqs ;;
    help | -h | --help) usage ;;
    *)
        echo "error: unknown command '$command'" >&2
        usage >&2
        exit 2
        ;;
esac
