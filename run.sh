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
  (none) [opts]  the demo: the NVMe device assigned to a TD in QEMU, attested, verified
                 (options: ./run.sh --help)
  test [args]    install missing prerequisites (Rust target and components, QEMU), run the
                 workspace tests (args go to `cargo test`), then build the TSM and the
                 firmware for x86_64-unknown-none
  bench [args]   run the benchmarks in release mode: prints `bench <name> <value> <unit>`
                 lines and writes target/bench/results.json; without args also runs the demo
                 once and adds the firmware's figures (boot_to_tsm_ready_ms, ..., demo_total_s);
                 `bench --peers` adds DMTF libspdm's requester/responder pair for comparison
                 (spdm_connect_vs_libspdm; needs SPDM_EMU_BIN = spdm-emu's build/bin)
  boot [options] build the firmware and tdisp-device, boot the firmware in QEMU (TCG) with the
                 device behind the NVMe DOE mailbox, decode its defmt log; files in target/run/
                   --mode M     connect (default: SPDM.CONNECT), assign (the whole flow,
                                as the demo runs it), attack (the malicious-host cases),
                                boot (stop at TSM ready),
                                fault (show the exception report), overflow
                                (overflow the boot stack into its guard page),
                                revoke (assign, then a dma-buf revoke while RUN and the
                                TD's READs are outstanding), stop (the same with TDI.STOP)
                   --fault SPEC a tdisp-device fault switch (repeatable; tdisp-device --help)
                   --doe-timeout MS  the firmware's DOE timeout (default 1000)
                   --keep       keep QEMU's command line in target/run/qemu.cmd
  e2e [args]     build the firmware and run tests/e2e (QEMU end-to-end tests; args go to
                 `cargo test`)
  ovmf [opts]    boot Debian's OVMF.fd (OVMF_FD) unmodified as a TD on seamless: its console
                 on yours to the UEFI shell, where the host types `reset -s`; prints MRTD
                 against `attest measure`, RTMR0..3 and where the time went; files in
                 target/run/ovmf/ (--fw-cfg-dma on|off: serve fw_cfg's DMA interface or hide
                 it; --baseline: then the same OVMF.fd natively to the same prompt;
                 --patched: OVMF.fd built from Debian's edk2 with ovmf-patches/, cached;
                 --device nvme: the patched OVMF accepts the NVMe function's TDI, boots from
                 its disk by private DMA, and hands out its report and CC event log, which
                 attest verify checks (RTMR[1] replayed); --device nvme-lying-report: the host
                 hands it a changed interface report, which it refuses)
  setup          only install missing prerequisites (target, clippy, rustfmt, QEMU >= 9.1,
                 Debian's ovmf (OVMF.fd, a TDVF), defmt-print)
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

# Debian's OVMF.fd (package ovmf, edk2 2022.11) is a TDVF: the host-side TD build tests load it
# (tests/harness/tests/tdvf_build.rs) and `attest measure` reads it. OVMF_FD names another copy.
OVMF_FD_GIVEN=${OVMF_FD:-}
OVMF_FD=${OVMF_FD:-/usr/share/ovmf/OVMF.fd}
export OVMF_FD

# Makes sure $OVMF_FD is there: installs Debian's ovmf package (as root or with sudo), otherwise
# says exactly what is missing.
ensure_ovmf() {
    [[ -r $OVMF_FD ]] && return 0
    local id="" sudo=()
    [[ -r /etc/os-release ]] && id=$(. /etc/os-release && echo "${ID:-}")
    if ((EUID != 0)); then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
            sudo=(sudo)
        else
            sudo=(unavailable)
        fi
    fi
    if [[ $OVMF_FD != /usr/share/ovmf/OVMF.fd || ! ($id == debian || $id == ubuntu) || ${sudo[0]:-} == unavailable ]]; then
        echo "error: missing prerequisite: $OVMF_FD (OVMF with TDVF metadata, as Debian's package" >&2
        echo "       ovmf 2022.11 installs it at /usr/share/ovmf/OVMF.fd). Install the ovmf package as" >&2
        echo "       root (apt-get install ovmf), or set OVMF_FD=/path/to/OVMF.fd." >&2
        exit 2
    fi
    section "apt-get install ovmf (Debian's OVMF.fd, a TDVF, for the TD build tests)"
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q --no-install-recommends ovmf ||
        { "${sudo[@]}" apt-get update -q && DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q --no-install-recommends ovmf; }
    if [[ ! -r $OVMF_FD ]]; then
        echo "error: the ovmf package is installed but $OVMF_FD is not there" >&2
        exit 2
    fi
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
# The TD's image: the guest's ELF, which `firmware guest-image` turns into the file the host
# agent loads over fw_cfg (opt/seamless/guest) and `attest measure` measures.
GUEST_ELF=${CARGO_TARGET_DIR:-target}/$BARE_TARGET/release/seamless-guest
# The host agent's binary, which the TSM loads into the host world (opt/seamless/host).
HOST_ELF=${CARGO_TARGET_DIR:-target}/$BARE_TARGET/release/seamless-host

build_firmware() {
    section "cargo build -p firmware -p seamless-guest -p seamless-host --target $BARE_TARGET --release (DEFMT_LOG=$DEFMT_LOG)"
    cargo build -p firmware -p seamless-guest -p seamless-host --target "$BARE_TARGET" --release
}

# Decodes the COM3 stream of the run in $1 (`firmware artifacts`: every frame checked) into
# files there: the report, the evidence, timeline.json and one figure.NAME per figure.
unframe_artifacts() {
    cargo build -q -p firmware
    "${CARGO_TARGET_DIR:-target}/debug/firmware" artifacts "$1/artifacts.bin" "$1" >/dev/null
}

# The firmware's figures, from their COM3 frames (figure.NAME holds "VALUE UNIT").
print_figures() {
    local f
    for f in "$1"/figure.*; do
        [[ -e $f ]] && echo "bench ${f##*/figure.} $(cat "$f")"
    done
}

# Boots $FIRMWARE with QEMU's one command line (tests/e2e's `Boot::command`, through the
# seamless-qemu launcher); returns QEMU's status (33 success, 35 failure).
launch_qemu() {
    cargo build -q -p seamless-e2e --bin seamless-qemu
    SEAMLESS_FIRMWARE=$FIRMWARE SEAMLESS_HOST=$HOST_ELF QEMU=$QEMU "${CARGO_TARGET_DIR:-target}/debug/seamless-qemu" "$@"
}

cmd_test() {
    prereqs
    ensure_qemu
    ensure_ovmf
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
    # The firmware's figures come from one demo run in QEMU (a full run only: no filter given).
    (($#)) && return 0
    local problem results=${CARGO_TARGET_DIR:-target}/bench/results.json
    problem=$(qemu_problem)
    if [[ -n $problem ]] || ! command -v defmt-print >/dev/null || ! command -v ss >/dev/null; then
        echo "note: the demo's figures are left out (${problem:-defmt-print or ss missing}; ./run.sh setup installs them)"
        return 0
    fi
    section "the demo's figures (./run.sh, the firmware in QEMU under TCG; log in target/run/demo.log)"
    local log=${CARGO_TARGET_DIR:-target}/run/demo.log
    mkdir -p "${CARGO_TARGET_DIR:-target}/run"
    if ! (cmd_demo) >"$log" 2>&1; then
        echo "error: the demo failed; see $log" >&2
        exit 1
    fi
    grep '^bench ' "$log"
    bench_merge "$results" <"$log"
    # Debian's OVMF as a TD: to the shell with fw_cfg's DMA served and hidden, and natively.
    section "OVMF as a TD (./run.sh ovmf; logs in target/run/ovmf-*.log)"
    local ovmf_log=${CARGO_TARGET_DIR:-target}/run/ovmf-bench.log no_dma_log=${CARGO_TARGET_DIR:-target}/run/ovmf-no-dma.log
    if [[ ! -r $OVMF_FD ]]; then
        echo "note: $OVMF_FD missing; the OVMF figures are left out (./run.sh setup installs it)"
    elif (cmd_ovmf --fw-cfg-dma off) >"$no_dma_log" 2>&1 && (cmd_ovmf --baseline) >"$ovmf_log" 2>&1; then
        local hidden served
        hidden=$(awk '$1 == "bench" && $2 == "ovmf_td_shell_s" { print $3 }' "$no_dma_log")
        served=$(awk '$1 == "bench" && $2 == "ovmf_td_shell_s" { print $3 }' "$ovmf_log")
        {
            grep -E '^bench (ovmf_|tdcall)' "$ovmf_log"
            echo "bench ovmf_td_shell_fw_cfg_dma_hidden_s $hidden s"
            awk -v h="$hidden" -v s="$served" 'BEGIN { printf "bench ovmf_fw_cfg_dma_hidden_cost_s %.3f s\n", h - s }'
        } | tee -a "$log" | bench_merge "$results"
    else
        echo "error: the OVMF run failed; see $ovmf_log and $no_dma_log" >&2
        exit 1
    fi
}

# Adds the `bench NAME VALUE UNIT` lines on stdin to the flat results.json ($1) that
# seamless-bench wrote: one `"NAME": {"value": VALUE, "unit": "UNIT"}` member each.
bench_merge() {
    local file=$1 add
    [[ -s $file ]] || return 0
    add=$(awk '$1 == "bench" { printf "%s  \"%s\": {\"value\": %s, \"unit\": \"%s\"}", sep, $2, $3, $4; sep = ",\n" }')
    [[ -n $add ]] || return 0
    awk -v add="$add" '{ line[NR] = $0 } END {
        for (i = 1; i < NR - 1; i++) print line[i]
        if (NR >= 2) print line[NR - 1] (line[NR - 1] ~ /^[[:space:]]*\{[[:space:]]*$/ ? "" : ",")
        print add
        print line[NR]
    }' "$file" >"$file.tmp" && mv "$file.tmp" "$file"
}

# Kills the background job we started (by its PID), if it still runs.
stop_pid() {
    local pid=$1
    if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
}

# The cause the run reported on COM1 (its first `seamless firmware: error:` or `seamless host:
# error:` line: the TSM's or the host agent's), or what
# its absence means.
firmware_cause() {
    local cause
    cause=$(sed -n 's/\r$//; s/^seamless \(firmware\|host\): error: //p' "$1" 2>/dev/null | head -n 1)
    echo "${cause:-no error reported on COM1 (QEMU killed, crashed or timed out)}"
}

cmd_boot() {
    local mode=connect keep=0 doe_timeout=1000 faults=()
    while (($#)); do
        case $1 in
            --mode)
                mode=${2:-}
                shift 2 || { echo "error: --mode needs a value" >&2; exit 2; }
                ;;
            --fault)
                faults+=(--fault "${2:-}")
                shift 2 || { echo "error: --fault needs a value" >&2; exit 2; }
                ;;
            --doe-timeout)
                doe_timeout=${2:-}
                shift 2 || { echo "error: --doe-timeout needs a value" >&2; exit 2; }
                ;;
            --keep) keep=1; shift ;;
            *)
                echo "error: unknown boot option '$1' (see ./run.sh help)" >&2
                exit 2
                ;;
        esac
    done
    case $mode in
        connect | assign | revoke | stop | attack | boot | fault | overflow) ;;
        *)
            echo "error: --mode is connect, assign, revoke, stop, attack, boot, fault or overflow (got '$mode')" >&2
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
    rm -f "$out"/figure.*
    # The platform secret fw_cfg hands the firmware (attest provision's 128-byte blob); made
    # once, kept across runs, shared with the demo.
    local plat=${CARGO_TARGET_DIR:-target}/platform
    cargo build -q -p attest --features std --bin attest
    cargo build -q -p firmware
    provision_platform "$plat" "${CARGO_TARGET_DIR:-target}/debug"
    printf 'mode=%s\nnvme_bar0=%s\ndoe_timeout_ms=%s\n' "$mode" "$DEMO_BAR0" "$doe_timeout" >"$out/config.txt"
    [[ $mode == assign || $mode == revoke || $mode == stop ]] && printf 'nonce=%s\n' "$(od -An -tx1 -N64 /dev/urandom | tr -d ' \n')" >>"$out/config.txt"

    # QEMU's command line is written once, in tests/e2e (`Boot::command`); seamless-qemu runs it.
    local launch=(--out "$out" --config "$out/config.txt" --secret "$plat/platform-secret.bin")
    DEVICE_PID=""
    if [[ $mode == connect || $mode == assign || $mode == revoke || $mode == stop || $mode == attack ]]; then
        section "cargo build -p tdisp-device"
        cargo build -q -p tdisp-device
        local device=${CARGO_TARGET_DIR:-target}/debug/tdisp-device
        # QEMU connects to the responder at start-up: it must listen first.
        demo_device_toml "$(printf '%#x' $((DEMO_BAR0 >> 12)))" >"$out/device.toml"
        # The log exists before the background job opens it: the port poll below reads it.
        : >"$out/device.log"
        "$device" --port 0 --once --config "$out/device.toml" "${faults[@]}" >"$out/device.log" 2>&1 &
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
        launch+=(--port "$port")
    fi
    ((keep)) && launch+=(--keep)

    section "seamless-qemu: $QEMU -M q35 -accel tcg -kernel $FIRMWARE (mode $mode)"
    # TCG: KVM on the development machines is nested (kvm_pvm) and much slower.
    # isa-debug-exit makes QEMU exit with (code << 1) | 1: 33 is success, 35 failure.
    local status=0 start end
    start=$(date +%s%N)
    launch_qemu "${launch[@]}" || status=$?
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
    unframe_artifacts "$out" || echo "warning: the COM3 artifact stream did not decode" >&2
    print_figures "$out"
    echo "bench qemu_wall_ms $(((end - start) / 1000000)) ms"
    echo "files: $out/{serial.log,defmt.bin,firmware.log,device.log,config.txt}"
    if ((status != 33)); then
        echo "error: firmware exited with QEMU status $status (33 is success): $(firmware_cause "$out/serial.log")" >&2
        exit 1
    fi
}

# Points OVMF_FD at OVMF.fd built from Debian's edk2 source with the series in ovmf-patches/:
# built once per series (a long job on 2 cores) and cached outside the clone.
ovmf_patched() {
    if ! OVMF_FD=$(ovmf-patches/build.sh --cached 2>/dev/null | tail -1); then
        section "ovmf-patches/build.sh: Debian's edk2 with ovmf-patches/series (cold: tens of minutes)"
        OVMF_FD=$(ovmf-patches/build.sh | tail -1)
    fi
    export OVMF_FD
}

# Debian's OVMF.fd as a TD (mode ovmf): the host builds the TD from the image's TDVF metadata,
# runs it in the TD world serving its TDVMCALLs, and types `reset -s` at the UEFI shell.
# Options: --fw-cfg-dma on|off (the host serves fw_cfg's DMA interface, or hides it),
# --baseline (then the same OVMF.fd natively, -bios, to the same prompt, and the ratio),
# --patched (OVMF.fd built from Debian's edk2 with ovmf-patches/, cached: ovmf_patched).
cmd_ovmf() {
    local dma=on baseline=0 device=none patched=0
    while (($#)); do
        case $1 in
            --patched) patched=1; shift ;;
            --device)
                device=${2:-}
                shift 2 || { echo "error: --device needs nvme or nvme-lying-report" >&2; exit 2; }
                [[ $device == nvme || $device == nvme-lying-report ]] ||
                    { echo "error: --device is nvme or nvme-lying-report (got '$device')" >&2; exit 2; }
                ;;
            --fw-cfg-dma)
                dma=${2:-}
                shift 2 || { echo "error: --fw-cfg-dma needs on or off" >&2; exit 2; }
                ;;
            --baseline) baseline=1; shift ;;
            *)
                echo "error: unknown ovmf option '$1' (see ./run.sh help)" >&2
                exit 2
                ;;
        esac
    done
    [[ $dma == on || $dma == off ]] || { echo "error: --fw-cfg-dma is on or off" >&2; exit 2; }
    # A device needs the patched firmware's TdxConnectDxe (unless OVMF_FD names such an image).
    [[ $device != none && -z ${OVMF_FD_GIVEN:-} ]] && patched=1
    ((patched)) && ovmf_patched
    prereqs
    ensure_qemu
    ensure_ovmf
    ensure_defmt_print
    build_firmware
    local out=${CARGO_TARGET_DIR:-target}/run/ovmf
    local bin=${CARGO_TARGET_DIR:-target}/debug plat=${CARGO_TARGET_DIR:-target}/platform
    mkdir -p "$out"
    rm -f "$out"/{serial.log,defmt.bin,artifacts.bin,firmware.log,native.log,device.log,device.toml,disk.img} \
        "$out"/{report.bin,report-snp.bin,evidence.bin,policy.toml,verify.json} "$out"/figure.* "$out"/ovmf-*.bin
    printf 'mode=ovmf\ntdmr_max_mib=400\ntd_mib=256\nlog_calls=off\ntd_timeout_s=240\nfw_cfg_dma=%s\novmf_device=%s\n' "$dma" "$device" >"$out/config.txt"
    local launch=(--out "$out" --config "$out/config.txt" --ovmf "$OVMF_FD" --memory 640 --timeout 300)
    local nonce="" bar_page
    bar_page=$(printf '%#x' $((DEMO_BAR0 >> 12)))
    DEVICE_PID=""
    if [[ $device != none ]]; then
        # The NVMe function's TDI for the TD: the demo's device behind the DOE mailbox, the
        # boot disk (FAT, startup.nsh) on its drive, a provisioned platform, the verifier's nonce.
        cargo build -q -p tdisp-device
        cargo build -q -p firmware
        cargo build -q -p attest --features std --bin attest
        provision_platform "$plat" "$bin"
        nonce=$(od -An -tx1 -N64 /dev/urandom | tr -d ' \n')
        printf 'nvme_bar0=%s\nnonce=%s\ndoe_timeout_ms=1000\n' "$DEMO_BAR0" "$nonce" >>"$out/config.txt"
        demo_device_toml "$bar_page" >"$out/device.toml"
        trap 'stop_pid "$DEVICE_PID"' EXIT
        start_demo_device "$out" "$plat" "$bin"
        launch+=(--port "$DEVICE_PORT" --boot-disk --secret "$plat/platform-secret.bin")
    fi
    section "seamless-qemu: $QEMU -M q35 -accel tcg -kernel $FIRMWARE, $OVMF_FD as a TD (mode ovmf, fw_cfg DMA $dma, device $device)"
    local status=0
    launch_qemu "${launch[@]}" || status=$?
    stop_pid "$DEVICE_PID"
    tr -d '\r' <"$out/serial.log"
    defmt-print -e "$FIRMWARE" <"$out/defmt.bin" >"$out/firmware.log" 2>/dev/null || true
    section "figures"
    unframe_artifacts "$out" || echo "warning: the COM3 artifact stream did not decode" >&2
    print_figures "$out"
    if [[ -s $out/ovmf-mrtd.bin ]]; then
        cargo build -q -p attest --features std --bin attest
        local mrtd measured
        mrtd=$(od -An -tx1 -v "$out/ovmf-mrtd.bin" | tr -d ' \n')
        measured=$("${CARGO_TARGET_DIR:-target}/debug/attest" measure "$OVMF_FD")
        if [[ $mrtd == "$measured" ]]; then
            echo "MRTD $mrtd: the TD's, equal to attest measure $OVMF_FD"
        else
            echo "error: the TD's MRTD $mrtd differs from attest measure's $measured" >&2
            status=1
        fi
    fi
    if [[ $device == nvme && $status == 33 ]]; then
        # The report over the nonce, the TDI's evidence and the CC event log the firmware handed
        # out: the policy from attest measure of the image and the device's config, RTMR[1]
        # replayed from the log and each SPDM event checked against the evidence.
        section "attest verify --event-log (the OVMF TD's report, the device's evidence, RTMR[1] from the CC event log)"
        local mrtd root_sha vstatus=0
        mrtd=$("$bin/attest" measure "$OVMF_FD")
        root_sha=$(sha384sum "$plat/device/root.der" | cut -d' ' -f1)
        demo_policy_toml "$mrtd" "$root_sha" "$bar_page" "$("$bin/firmware" mrseam "$FIRMWARE")" >"$out/policy.toml"
        local verify=("$bin/attest" verify --report "$out/report.bin" --evidence "$out/evidence.bin"
            --policy "$out/policy.toml" --root "$plat/root.pem" --ak-cert "$plat/tsm-ak.pem" --nonce "$nonce"
            --event-log "$out/ovmf-ccel.bin")
        "${verify[@]}" --json >"$out/verify.json" || vstatus=$?
        "${verify[@]}" | grep -E '^[a-z0-9_.]+ +(fail|skipped) |^VERIFIED|^REJECTED|^trust root|rtmr|event' | cut -c1-150 || true
        if ((vstatus != 0)); then
            echo "error: attest verify rejected the OVMF TD's evidence ($out/verify.json)" >&2
            status=1
        fi
    fi
    if ((baseline && status == 33)) && [[ $device == nvme ]]; then
        section "the same OVMF.fd and disk natively: $QEMU -M q35 -accel tcg -bios $OVMF_FD -m 256M, NVMe, to the marker"
        local native td marker
        marker=$(sed -n 's/^pub const OVMF_DISK_MARKER: &str = "\(.*\)";$/\1/p' drivers/src/config.rs)
        native=$(ovmf_native_s "$out" "$out/disk.img" "$marker") || status=1
        td=$(cut -d' ' -f1 "$out/figure.ovmf_device_boot_s" 2>/dev/null)
        echo "bench ovmf_device_native_boot_s $native s"
        [[ -n $td && -n $native ]] && echo "bench ovmf_device_vs_native $(awk -v t="$td" -v n="$native" 'BEGIN { printf "%.2f", t / n }') x"
        baseline=0
    fi
    if ((baseline && status == 33)); then
        section "the same OVMF.fd natively: $QEMU -M q35 -accel tcg -bios $OVMF_FD -m 256M, to Shell>"
        local native td
        native=$(ovmf_native_s "$out") || status=1
        td=$(cut -d' ' -f1 "$out/figure.ovmf_td_shell_s" 2>/dev/null)
        echo "bench ovmf_native_boot_s $native s"
        [[ -n $td && -n $native ]] && echo "bench ovmf_td_vs_native $(awk -v t="$td" -v n="$native" 'BEGIN { printf "%.2f", t / n }') x"
    fi
    echo "files: $out/{serial.log,defmt.bin,firmware.log,config.txt,ovmf-mrtd.bin,ovmf-rtmrs.bin}"
    if ((status != 33)); then
        echo "error: the OVMF TD run failed (QEMU status $status): $(firmware_cause "$out/serial.log")" >&2
        exit 1
    fi
}

# Seconds from QEMU's start to "Shell> " on the console of OVMF.fd booted natively (the same
# q35, CPU and RAM the TD gets); QEMU is killed then. The baseline of `ovmf --baseline`.
# With $2 (a disk image) and $3 (a marker): the disk on an NVMe controller at the TD's address,
# timed to the marker instead.
ovmf_native_s() {
    local out=$1 disk=${2:-} marker=${3:-Shell> } start pid i
    local drive=()
    [[ -n $disk ]] && drive=(-drive "file=$disk,if=none,id=disk,format=raw" -device nvme,serial=seamless,addr=3,drive=disk)
    rm -f "$out/native.log"
    start=$(date +%s%N)
    "$QEMU" -M q35 -accel tcg -nodefaults -display none -no-reboot -cpu max,phys-bits=48 -m 256M \
        -bios "$OVMF_FD" -serial "file:$out/native.log" "${drive[@]}" >/dev/null 2>&1 &
    pid=$!
    for ((i = 0; i < 6000; i++)); do
        if grep -qF "$marker" "$out/native.log" 2>/dev/null; then
            awk -v ns=$(($(date +%s%N) - start)) 'BEGIN { printf "%.3f", ns / 1e9 }'
            stop_pid "$pid"
            return 0
        fi
        sleep 0.02
    done
    stop_pid "$pid"
    echo "error: native OVMF did not show '$marker' in 120 s" >&2
    return 1
}

cmd_e2e() {
    prereqs
    ensure_qemu
    ensure_defmt_print
    build_firmware
    section "cargo test -p seamless-e2e $*"
    cargo test -p seamless-e2e "$@"
}

# ---- the demo ---------------------------------------------------------------------------------

demo_usage() {
    cat <<'USAGE'
usage: ./run.sh [--responder CMD] [--keep] [--help]

The demo: boots the seamless firmware in QEMU (TCG) with QEMU's NVMe device, whose DOE mailbox
reaches an SPDM/TDISP responder (tdisp-device by default). The firmware's host agent assigns the
device to a measured TD; the guest reads the controller through its private mapping and asks for
an attestation report over the verifier's nonce; the report and the device evidence leave on
COM3 and are verified here with `attest verify` against a policy derived independently.

options:
  --responder CMD   run CMD instead of tdisp-device (a shell command; {port} is replaced by the
                    chosen 127.0.0.1 port; the demo waits until something listens there). To be
                    assigned, the responder must report the NVMe BAR0 page (0xc0000, 4 pages)
                    plus the MMIO_REPORTING_OFFSET of LOCK in its TDISP interface report, as
                    target/run/device.toml describes; DMTF's spdm-emu does not (its sample
                    device reports pages 0x0, 0x8000, 0x10000, 0x20000 as they are), so its run
                    ends at TDI.LOCK with one line saying that every protocol interoperated
                    and why the TSM refused the report (exit status 3), e.g.
                    --responder 'cd SPDM_EMU/build/bin && exec ./spdm_responder_emu
                      --trans PCI_DOE --ip 127.0.0.1 --port {port} --ver 1.3'
  --keep            keep QEMU's command line (target/run/qemu.cmd) and the raw serial streams
  --help            this text

exit status: 0 verified; 1 the flow failed or the verifier rejected the report; 2 a usage or
prerequisite error; 3 the device interoperated but the TSM refused its interface report at
TDI.LOCK (nothing mapped, everything taken apart; target/run/interop.txt says why).

artifacts (target/run/): report.bin evidence.bin policy.toml verify.json timeline.json
firmware.log (decoded defmt) serial.log (COM1); report-snp.bin verify-snp.json (the SNP-format
export and its verification); device.log device.toml guest.img config.txt
USAGE
}

# A free 127.0.0.1 TCP port (nothing listening there now).
free_port() {
    local p i
    for ((i = 0; i < 50; i++)); do
        p=$((20000 + RANDOM % 40000))
        if ! ss -Hltn "sport = :$p" 2>/dev/null | grep -q .; then
            echo "$p"
            return
        fi
    done
    echo "error: no free port found" >&2
    exit 1
}

# Waits until something listens on 127.0.0.1:$1 (without connecting: a responder may serve only
# one connection), or until the process $2 dies.
wait_listening() {
    local port=$1 pid=$2 i
    for ((i = 0; i < 200; i++)); do
        ss -Hltn "sport = :$port" 2>/dev/null | grep -q . && return 0
        kill -0 "$pid" 2>/dev/null || return 1
        sleep 0.05
    done
    return 1
}

sha384_text() {
    printf '%s' "$1" | sha384sum | cut -d' ' -f1
}

# The demo's fixed choices (docs/firmware.md): where the firmware puts BAR0, and the device's
# measurements. The device's config and the policy's reference values both come from these,
# never from the report.
DEMO_BAR0=0xc0000000
DEMO_FW_TEXT="seamless demo device firmware 1.0"
DEMO_CONFIG_TEXT="queues=4"

# Writes the device's configuration: BAR0's pages as the interface report's one MMIO range, and
# the measurement blocks.
demo_device_toml() {
    local bar_page=$1
    cat <<TOML
# Derived by ./run.sh: the NVMe BAR0 the firmware places at $DEMO_BAR0 (4 pages), and the
# device's measurements, from which the policy's reference values are computed too.
[[measurement]]
index = 1
type = 1
digest = "$(sha384_text "$DEMO_FW_TEXT")"

[[measurement]]
index = 2
type = 3
raw_text = "$DEMO_CONFIG_TEXT"

[[interface]]
function_id = 0x18
interface_info = 0x2
device_info = "seamless tdisp-device (demo)"
mmio = [ { first_page = $bar_page, pages = 4, attributes = 0, range_id = 0 } ]
TOML
}

# Provisions the platform in $1 (tools in $2) for the firmware as built: the attestation key is
# derived from the platform secret and MRSEAM, so a new image needs a new key and certificate
# (as a TCB update does on TDX and SEV-SNP). $1/mrseam records the MRSEAM provisioned for.
provision_platform() {
    local plat=$1 bin=$2 mrseam
    mrseam=$("$bin/firmware" mrseam "$FIRMWARE")
    if [[ ! -s $plat/platform-secret.bin || $(cat "$plat/mrseam" 2>/dev/null) != "$mrseam" ]]; then
        section "attest provision --out $plat --mrseam $mrseam (firmware mrseam $FIRMWARE)"
        "$bin/attest" provision --out "$plat" --mrseam "$mrseam" --force
        echo "$mrseam" >"$plat/mrseam"
    fi
}

# Writes the verifier's policy: MRTD from `attest measure` of the guest image, the TSM identity
# the firmware runs with, the device's vendor root, algorithms, measurements and BAR placement.
demo_policy_toml() {
    local mrtd=$1 root_sha=$2 bar_page=$3 mrseam=$4
    cat <<TOML
# Written by ./run.sh from sources other than the report: attest measure of the guest image, the
# firmware's TSM identity, the device's configuration and vendor root.
version = 1

[tsm]
min_svn = 1
mrseam = "$mrseam"

[td]
mrtd = "$mrtd"
attributes = { mask = "0xffffffffffffffff", value = "0x0" }
xfam = { mask = "0xffffffffffffffff", value = "0x3" }

[[device]]
function_id = "0000:00:03.0"
required_lock_flags = ["NO_FW_UPDATE"]
min_spdm_version = "1.3"
vendor_root_sha384 = "$root_sha"

[device.algorithms]
base_asym = "0x80"
base_hash = "0x2"
measurement_hash = "0x4"
dhe = "0x10"
aead = "0x2"
key_schedule = "0x1"
measurement_spec = "0x1"

[[device.measurement]]
index = 1
digests = ["$(sha384_text "$DEMO_FW_TEXT")"]

[[device.measurement]]
index = 2
raw = ["$(printf '%s' "$DEMO_CONFIG_TEXT" | od -An -tx1 | tr -d ' \n')"]

[device.interface_report]
interface_info = { mask = "0xffff", value = "0x2" }

[[device.interface_report.mmio_range]]
pages = 4
attributes = "0x0"
range_id = 0
# first_page is left out: the report's FIRST_PAGE carries the device's MMIO_REPORTING_OFFSET,
# which the device picks. The TSM takes the offset off and maps only pages of BAR0 (at
# $bar_page, where the firmware placed it), and the guest checked what it reads there.
TOML
}

# Starts tdisp-device with $1/device.toml (its identity kept in $2/device, the tools in $3) on
# a free 127.0.0.1 port; sets DEVICE_PID and DEVICE_PORT. The caller stops it (stop_pid).
start_demo_device() {
    local out=$1 plat=$2 bin=$3 i
    mkdir -p "$plat/device"
    # The log exists before the background job opens it: the port poll below reads it.
    : >"$out/device.log"
    "$bin/tdisp-device" --port 0 --once --config "$out/device.toml" --state-dir "$plat/device" \
        >"$out/device.log" 2>&1 &
    DEVICE_PID=$!
    DEVICE_PORT=""
    for ((i = 0; i < 200; i++)); do
        DEVICE_PORT=$(sed -n 's/^listening on 127\.0\.0\.1:\([0-9][0-9]*\)$/\1/p' "$out/device.log")
        [[ -n $DEVICE_PORT ]] && break
        kill -0 "$DEVICE_PID" 2>/dev/null || break
        sleep 0.05
    done
    [[ -n $DEVICE_PORT ]] || { echo "error: tdisp-device did not start:" >&2; cat "$out/device.log" >&2; exit 1; }
    echo "responder: tdisp-device on 127.0.0.1:$DEVICE_PORT ($out/device.toml, identity in $plat/device)"
}

cmd_demo() {
    local responder="" keep=0
    while (($#)); do
        case $1 in
            --responder)
                responder=${2:-}
                [[ -n $responder ]] || { echo "error: --responder needs a command" >&2; exit 2; }
                shift 2
                ;;
            --keep) keep=1; shift ;;
            --help | -h) demo_usage; return 0 ;;
            *)
                echo "error: unknown option '$1' (./run.sh --help lists them)" >&2
                exit 2
                ;;
        esac
    done
    prereqs
    ensure_qemu
    ensure_defmt_print
    command -v ss >/dev/null || { echo "error: missing prerequisite: ss (iproute2), to watch for the responder" >&2; exit 2; }
    build_firmware
    section "cargo build -p tdisp-device, -p firmware (host tools), -p attest --features std"
    cargo build -q -p tdisp-device
    cargo build -q -p firmware
    cargo build -q -p attest --features std --bin attest
    local bin=${CARGO_TARGET_DIR:-target}/debug
    local out=${CARGO_TARGET_DIR:-target}/run plat=${CARGO_TARGET_DIR:-target}/platform
    local demo_start
    demo_start=$(date +%s%N)
    mkdir -p "$out"
    rm -f "$out"/{report.bin,report-snp.bin,evidence.bin,policy.toml,verify.json,verify-snp.json,timeline.json} \
        "$out"/{firmware.log,serial.log} \
        "$out"/{defmt.bin,artifacts.bin,device.log,qemu.cmd,config.txt,device.toml,guest.img,vendor-root.der} \
        "$out"/figure.*
    provision_platform "$plat" "$bin"

    # The verifier's challenge, the run configuration, the guest image, the device's config.
    local nonce bar_page
    nonce=$(od -An -tx1 -N64 /dev/urandom | tr -d ' \n')
    bar_page=$(printf '%#x' $((DEMO_BAR0 >> 12)))
    printf 'mode=assign\nnvme_bar0=%s\nnonce=%s\nlog_calls=off\n' "$DEMO_BAR0" "$nonce" >"$out/config.txt"
    "$bin/firmware" guest-image "$GUEST_ELF" "$out/guest.img"
    demo_device_toml "$bar_page" >"$out/device.toml"

    local port=""
    DEVICE_PID=""
    trap 'stop_pid "$DEVICE_PID"' EXIT
    if [[ -z $responder ]]; then
        start_demo_device "$out" "$plat" "$bin"
        port=$DEVICE_PORT
    else
        port=$(free_port)
        local cmd=${responder//\{port\}/$port}
        bash -c "$cmd" >"$out/device.log" 2>&1 &
        DEVICE_PID=$!
        if ! wait_listening "$port" "$DEVICE_PID"; then
            echo "error: the responder did not listen on 127.0.0.1:$port: $cmd" >&2
            cat "$out/device.log" >&2
            exit 1
        fi
        echo "responder: '$cmd' on 127.0.0.1:$port"
    fi

    local launch=(--out "$out" --config "$out/config.txt" --secret "$plat/platform-secret.bin" --guest "$out/guest.img" --port "$port")
    ((keep)) && launch+=(--keep)
    section "QEMU (TCG): the firmware; NVMe 00:03.0 with its DOE mailbox at 127.0.0.1:$port"
    local status=0
    launch_qemu "${launch[@]}" || status=$?
    stop_pid "$DEVICE_PID"
    tr -d '\r' <"$out/serial.log" | grep -v '^figure ' || true
    defmt-print -e "$FIRMWARE" <"$out/defmt.bin" >"$out/firmware.log" 2>/dev/null ||
        echo "warning: defmt-print could not decode $out/defmt.bin" >&2
    section "firmware log ($out/firmware.log, decoded defmt; the phases)"
    grep -E ' phase |TSM ready|SPDM.CONNECT done| failed' "$out/firmware.log" | cut -c1-150 || true

    local flow_ok=0 verified=0
    ((status == 33)) && flow_ok=1
    # The report, the evidence, the timeline and the figures all leave as COM3 frames.
    if ! unframe_artifacts "$out"; then
        flow_ok=0
    fi
    # QEMU status 37: every protocol interoperated, the TSM refused the device's interface report
    # at TDI.LOCK and the host took the assignment apart; the firmware's one line (the COM3 frame
    # interop.txt) says why.
    if ((status == 37)) && [[ -s $out/interop.txt ]]; then
        section "figures"
        print_figures "$out"
        ((keep)) || rm -f "$out/defmt.bin" "$out/artifacts.bin"
        section "verdict: INTEROPERATED, REPORT REFUSED (exit 3)"
        cat "$out/interop.txt"
        return 3
    fi
    if ((flow_ok)); then
        section "attest verify (the policy is derived independently: attest measure, the device's config)"
        local mrtd root_sha vstatus=0
        mrtd=$("$bin/attest" measure "$out/guest.img" 2>/dev/null)
        echo "attest measure $out/guest.img: MRTD $mrtd"
        # The device vendor's root: DEMO_VENDOR_ROOT_SHA384 for another responder, else the root
        # tdisp-device keeps in its state directory.
        root_sha=${DEMO_VENDOR_ROOT_SHA384:-$(sha384sum "$plat/device/root.der" 2>/dev/null | cut -d' ' -f1)}
        demo_policy_toml "$mrtd" "$root_sha" "$bar_page" "$("$bin/firmware" mrseam "$FIRMWARE")" >"$out/policy.toml"
        local verify=("$bin/attest" verify --report "$out/report.bin" --evidence "$out/evidence.bin"
            --policy "$out/policy.toml" --root "$plat/root.pem" --ak-cert "$plat/tsm-ak.pem" --nonce "$nonce")
        "${verify[@]}" --json >"$out/verify.json" || vstatus=$?
        # The human form: trust root, then one row per check; shown here are the rows that did not
        # pass (failed or skipped, each with why) and the verdict.
        "${verify[@]}" | grep -E '^[a-z0-9_.]+ +(fail|skipped) |^VERIFIED|^REJECTED|^trust root' | cut -c1-150 || true
        # The SNP-format export of the same report, against the emulated AMD chain (the sev
        # crate checks ARK -> ASK -> VCEK and the signature), bound to the native report.
        local sstatus=0
        section "attest verify --snp (the SNP-format export, bound to the native report)"
        "$bin/attest" verify --snp "$out/report-snp.bin" --certs "$plat" --report "$out/report.bin" \
            --nonce "$nonce" --json >"$out/verify-snp.json" || sstatus=$?
        "$bin/attest" verify --snp "$out/report-snp.bin" --certs "$plat" --report "$out/report.bin" \
            --nonce "$nonce" | grep -E '^[a-z0-9_.]+ +(fail|skipped) |^VERIFIED|^REJECTED|^trust root' | cut -c1-150 || true
        ((vstatus == 0 && sstatus == 0)) && verified=1
    fi
    local demo_end
    demo_end=$(date +%s%N)
    section "timeline (the firmware's TSC, ms since PVH entry; $out/timeline.json)"
    if [[ -s $out/timeline.json ]]; then
        tr '{' '\n' <"$out/timeline.json" |
            sed -n 's/^"name":"\([^"]*\)","start_ms":\([0-9.]*\),"duration_ms":\([0-9.]*\).*/\1 \2 \3/p' |
            while read -r name start dur; do printf '  %-18s at %10s ms  took %10s ms\n' "$name" "$start" "$dur"; done
    else
        echo "  (no timeline: the flow did not complete)"
    fi
    section "figures"
    print_figures "$out"
    local total_ms=$(((demo_end - demo_start) / 1000000))
    printf 'bench demo_total_s %d.%03d s\n' $((total_ms / 1000)) $((total_ms % 1000))
    ((keep)) || rm -f "$out/defmt.bin" "$out/artifacts.bin"
    echo "artifacts: $out/{report.bin,evidence.bin,policy.toml,verify.json,timeline.json,firmware.log,serial.log}"
    echo "           $out/{report-snp.bin,verify-snp.json}"
    if ((flow_ok && verified)); then
        section "verdict: VERIFIED: the device was assigned, used and released; the report verified"
        return 0
    fi
    if ((!flow_ok)); then
        section "verdict: FAILED: the flow did not complete (QEMU status $status; 33 is success): $(firmware_cause "$out/serial.log")"
    else
        section "verdict: REJECTED by the verifier (the failed checks are in $out/verify.json)"
    fi
    return 1
}

if (($# == 0)) || [[ $1 == --* ]]; then
    cmd_demo "$@"
    exit $?
fi

command=$1
shift
case "$command" in
    test) cmd_test "$@" ;;
    bench) cmd_bench "$@" ;;
    boot) cmd_boot "$@" ;;
    e2e) cmd_e2e "$@" ;;
    ovmf) cmd_ovmf "$@" ;;
    fuzz) fuzz/run.sh "$@" ;;
    setup)
        prereqs
        ensure_qemu
        ensure_ovmf
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
