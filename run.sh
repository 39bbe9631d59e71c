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
  test [args]    install missing prerequisites (Rust target and components, QEMU), run the
                 workspace tests (args go to `cargo test`), then build the TSM and the
                 firmware for x86_64-unknown-none
  bench [args]   run the benchmarks in release mode: prints `bench <name> <value> <unit>`
                 lines and writes target/bench/results.json
  boot [options] build the firmware and tdisp-device, boot the firmware in QEMU (TCG) with the
                 device behind the NVMe DOE mailbox, decode its defmt log; files in target/run/
                   --mode M     connect (default: SPDM.CONNECT), boot (stop at TSM ready),
                                fault (show the exception report), overflow
                                (overflow the boot stack into its guard page)
                   --keep       keep QEMU's command line in target/run/qemu.cmd
  e2e [args]     build the firmware and run tests/e2e (QEMU end-to-end tests; args go to
                 `cargo test`)
  setup          only install missing prerequisites (target, clippy, rustfmt, QEMU >= 9.1,
                 defmt-print)
  qemu           only check for (and install when missing) QEMU >= 9.1 with NVMe spdm_port
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

# QEMU: q35 with an NVMe device whose DOE mailbox reaches an SPDM responder (`spdm_port`,
# QEMU >= 9.1). Debian bookworm ships 7.2; bookworm-backports carries QEMU 10.
QEMU=${QEMU:-qemu-system-x86_64}
QEMU_MIN_MAJOR=9
QEMU_MIN_MINOR=1

# Prints why the QEMU on PATH is not usable, or nothing if it is.
qemu_problem() {
    if ! command -v "$QEMU" >/dev/null 2>&1; then
        echo "$QEMU is not on PATH"
        return
    fi
    local version major minor
    version=$("$QEMU" --version 2>/dev/null | sed -n 's/^QEMU emulator version \([0-9][0-9]*\.[0-9][0-9]*\).*/\1/p')
    if [[ -z $version ]]; then
        echo "$QEMU --version did not print a QEMU version"
        return
    fi
    major=${version%%.*}
    minor=${version#*.}
    if ((major < QEMU_MIN_MAJOR || (major == QEMU_MIN_MAJOR && minor < QEMU_MIN_MINOR))); then
        echo "$QEMU is version $version; the NVMe DOE mailbox (spdm_port) needs >= $QEMU_MIN_MAJOR.$QEMU_MIN_MINOR"
        return
    fi
    if ! "$QEMU" -M q35 -device nvme,help 2>/dev/null | grep -q 'spdm_port'; then
        echo "$QEMU $version has no spdm_port property on -device nvme"
    fi
}

# The mirror the system already uses for bookworm (deb822 or one-line sources), read at run
# time so that no host name lives in the repository.
debian_mirror() {
    local f uri
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -r $f ]] || continue
        uri=$(awk '
            /^[[:space:]]*$/ { if (u != "" && s ~ /(^| )bookworm( |$)/) { print u; exit } u = ""; s = "" }
            /^URIs:/ { u = $2 }
            /^Suites:/ { $1 = ""; s = $0 " " }
            END { if (u != "" && s ~ /(^| )bookworm( |$)/) print u }' "$f" | head -n 1)
        if [[ -n $uri ]]; then
            echo "$uri"
            return
        fi
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -r $f ]] || continue
        uri=$(awk '$1 == "deb" && $3 == "bookworm" { print $2; exit }' "$f")
        if [[ -n $uri ]]; then
            echo "$uri"
            return
        fi
    done
}

# Makes sure a usable QEMU is there: installs it from bookworm-backports on Debian bookworm
# (as root or with sudo), otherwise says exactly what is missing.
ensure_qemu() {
    local problem
    problem=$(qemu_problem)
    [[ -z $problem ]] && return 0
    echo "note: $problem" >&2
    local codename="" id=""
    if [[ -r /etc/os-release ]]; then
        id=$(. /etc/os-release && echo "${ID:-}")
        codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
    fi
    local sudo=()
    if ((EUID != 0)); then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
            sudo=(sudo)
        else
            sudo=(unavailable)
        fi
    fi
    if [[ $id != debian || $codename != bookworm || ${sudo[0]:-} == unavailable ]]; then
        echo "error: missing prerequisite: qemu-system-x86_64 >= $QEMU_MIN_MAJOR.$QEMU_MIN_MINOR whose" >&2
        echo "       '-device nvme,help' lists spdm_port (QEMU 10 is known to work)." >&2
        if [[ $id == debian && $codename == bookworm ]]; then
            echo "       Debian bookworm: run this as root (or with passwordless sudo) to install" >&2
            echo "       qemu-system-x86 from bookworm-backports, or do it by hand." >&2
        else
            echo "       Install it with your distribution's package manager (package names:" >&2
            echo "       qemu-system-x86 on Debian/Ubuntu, qemu-system-x86-core on Fedora), or set" >&2
            echo "       QEMU=/path/to/qemu-system-x86_64." >&2
        fi
        exit 2
    fi
    local mirror
    mirror=$(debian_mirror)
    if [[ -z $mirror ]]; then
        echo "error: no apt source for bookworm found in /etc/apt; cannot enable bookworm-backports" >&2
        exit 2
    fi
    local list=/etc/apt/sources.list.d/seamless-bookworm-backports.sources
    section "apt: enable bookworm-backports ($list) and install qemu-system-x86"
    if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
        printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
            "$mirror" | "${sudo[@]}" tee "$list" >/dev/null
    fi
    "${sudo[@]}" apt-get update -q
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q --no-install-recommends \
        -t bookworm-backports qemu-system-x86
    problem=$(qemu_problem)
    if [[ -n $problem ]]; then
        echo "error: after installing qemu-system-x86 from bookworm-backports: $problem" >&2
        exit 2
    fi
    "$QEMU" --version | head -n 1
}

# defmt-print decodes the firmware's log (COM2) on the host.
ensure_defmt_print() {
    if ! command -v defmt-print >/dev/null 2>&1; then
        section "cargo install defmt-print --locked (decodes the firmware's defmt log)"
        cargo install defmt-print --locked
    fi
}

# The firmware's defmt level: without DEFMT_LOG only error! would be compiled in.
export DEFMT_LOG=${DEFMT_LOG:-debug}
FIRMWARE=${CARGO_TARGET_DIR:-target}/$BARE_TARGET/release/firmware

build_firmware() {
    section "cargo build -p firmware --target $BARE_TARGET --release (DEFMT_LOG=$DEFMT_LOG)"
    cargo build -p firmware --target "$BARE_TARGET" --release
}

cmd_test() {
    prereqs
    ensure_qemu
    ensure_defmt_print
    # tests/e2e boots this image.
    build_firmware
    section "cargo test --workspace $*"
    cargo test --workspace "$@"
    [[ ${SEAMLESS_SKIP_FUZZ:-0} == 1 ]] || { section "fuzz/run.sh 10 (short fuzz pass; SEAMLESS_SKIP_FUZZ=1 skips it)" && fuzz/run.sh 10; }
    section "cargo build -p attest --target $BARE_TARGET (the no_std core the firmware links)"
    cargo build -p attest --target "$BARE_TARGET"
    section "cargo build -p tsm --target $BARE_TARGET (no_std, no heap)"
    cargo build -p tsm --target "$BARE_TARGET"
    section "test: all passed"
}

cmd_bench() {
    prereqs
    # attest_verify_process_ms times the release `attest` binary.
    cargo build --release -q -p attest --features std --bin attest
    section "cargo run --release -p seamless-bench $*"
    cargo run --release -p seamless-bench -- "$@"
}

# Kills the background job we started (by its PID), if it still runs.
stop_pid() {
    local pid=$1
    if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
}

cmd_boot() {
    local mode=connect keep=0
    while (($#)); do
        case $1 in
            --mode)
                mode=${2:-}
                shift 2 || { echo "error: --mode needs a value" >&2; exit 2; }
                ;;
            --keep) keep=1; shift ;;
            *)
                echo "error: unknown boot option '$1' (see ./run.sh help)" >&2
                exit 2
                ;;
        esac
    done
    case $mode in
        connect | boot | fault | overflow) ;;
        *)
            echo "error: --mode is connect, boot, fault or overflow (got '$mode')" >&2
            exit 2
            ;;
    esac
    prereqs
    ensure_qemu
    ensure_defmt_print
    build_firmware
    local out=${CARGO_TARGET_DIR:-target}/run
    mkdir -p "$out"
    rm -f "$out/serial.log" "$out/defmt.bin" "$out/firmware.log" "$out/device.log" "$out/qemu.cmd"
    # The platform secret fw_cfg hands the firmware (32 bytes); made once, kept across runs.
    [[ -s $out/platform-secret.bin ]] || head -c 32 /dev/urandom >"$out/platform-secret.bin"
    printf 'mode=%s\n' "$mode" >"$out/config.txt"

    local qemu_args=(-M q35 -accel tcg -cpu max -m 256M -nodefaults -display none -no-reboot
        -kernel "$FIRMWARE" -serial "file:$out/serial.log" -serial "file:$out/defmt.bin"
        -device isa-debug-exit,iobase=0xf4,iosize=0x04
        -fw_cfg "name=opt/seamless/config,file=$out/config.txt"
        -fw_cfg "name=opt/seamless/platform-secret,file=$out/platform-secret.bin")
    DEVICE_PID=""
    if [[ $mode == connect ]]; then
        section "cargo build -p tdisp-device"
        cargo build -q -p tdisp-device
        local device=${CARGO_TARGET_DIR:-target}/debug/tdisp-device
        # QEMU connects to the responder at start-up: it must listen first.
        "$device" --port 0 --once >"$out/device.log" 2>&1 &
        DEVICE_PID=$!
        trap 'stop_pid "$DEVICE_PID"' EXIT
        local port="" i
        for ((i = 0; i < 200; i++)); do
            port=$(sed -n 's/^listening on 127\.0\.0\.1:\([0-9][0-9]*\)$/\1/p' "$out/device.log")
            [[ -n $port ]] && break
            kill -0 "$DEVICE_PID" 2>/dev/null || break
            sleep 0.05
        done
        if [[ -z $port ]]; then
            echo "error: tdisp-device did not start listening:" >&2
            cat "$out/device.log" >&2
            exit 1
        fi
        echo "tdisp-device listening on 127.0.0.1:$port"
        # addr=3: 00:03.0, the function id the device's TDI reports by default.
        qemu_args+=(-device "nvme,serial=seamless,addr=3,spdm_port=$port")
    fi
    ((keep)) && printf '%q ' "$QEMU" "${qemu_args[@]}" >"$out/qemu.cmd"

    section "$QEMU -M q35 -accel tcg -kernel $FIRMWARE (mode $mode)"
    # TCG: KVM on the development machines is nested (kvm_pvm) and much slower.
    # isa-debug-exit makes QEMU exit with (code << 1) | 1: 33 is success, 35 failure.
    local status=0 start end
    start=$(date +%s%N)
    timeout 60 "$QEMU" "${qemu_args[@]}" || status=$?
    end=$(date +%s%N)
    stop_pid "$DEVICE_PID"
    tr -d '\r' <"$out/serial.log"
    section "firmware log (COM2, defmt-print -e $FIRMWARE)"
    if defmt-print -e "$FIRMWARE" <"$out/defmt.bin" >"$out/firmware.log"; then
        cat "$out/firmware.log"
    else
        echo "warning: defmt-print could not decode $out/defmt.bin" >&2
    fi
    section "figures"
    sed -n 's/\r$//; s/^figure /bench /p' "$out/serial.log"
    echo "bench qemu_wall_ms $(((end - start) / 1000000)) ms"
    echo "files: $out/{serial.log,defmt.bin,firmware.log,device.log,config.txt}"
    if ((status != 33)); then
        echo "error: firmware exited with QEMU status $status (33 is success)" >&2
        exit 1
    fi
}

cmd_e2e() {
    prereqs
    ensure_qemu
    ensure_defmt_print
    build_firmware
    section "cargo test -p seamless-e2e $*"
    cargo test -p seamless-e2e "$@"
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
    e2e) cmd_e2e "$@" ;;
    fuzz) fuzz/run.sh "$@" ;;
    setup)
        prereqs
        ensure_qemu
        ensure_defmt_print
        ;;
    qemu) ensure_qemu ;;
    help | -h | --help) usage ;;
    *)
        echo "error: unknown command '$command'" >&2
        usage >&2
        exit 2
        ;;
esac
