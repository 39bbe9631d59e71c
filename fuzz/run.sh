#!/usr/bin/env bash
# fuzz/run.sh [SECONDS]: every fuzz target for SECONDS each (default 60), then the in-process
# attack cases. Prints per target the executions and the findings, then
#   bench fuzz_targets N count
#   bench fuzz_execs_total N execs
#   bench attack_cases_total N count / bench attack_cases_rejected N count
# and writes them to target/bench/fuzz.json (a file of its own: ./run.sh bench rewrites
# results.json). Exits non-zero if a target found something or an attack case was not rejected.
#
# Environment: FUZZ_TARGETS="a b" runs only those targets.
#
# Why RUSTC_BOOTSTRAP=1: cargo-fuzz instruments with rustc options that only a nightly
# toolchain accepts (-Zsanitizer, and cargo's -Z flags); this machine and CI have one stable
# toolchain and no way to install nightly. RUSTC_BOOTSTRAP=1 lets that stable rustc accept them,
# for the fuzz crate only (it is not a workspace member; nothing that ships is built this way).
# Sanitizer: none. The code under test is safe Rust (tsm forbids unsafe); what we look for is
# panics, overflows (debug assertions are on: -a) and broken invariants, and ASan would halve
# the executions on a 2-core machine.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"
seconds=${1:-60}
if ! [[ $seconds =~ ^[0-9]+$ ]] || ((seconds == 0)); then
    echo "usage: fuzz/run.sh [SECONDS]   (SECONDS a positive whole number; got '$seconds')" >&2
    exit 2
fi

export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "==> cargo install cargo-fuzz --locked (cargo fuzz is missing)"
    cargo install cargo-fuzz --locked
fi

# The fixtures the targets start from replay, the seeds verify, every attack case is rejected.
echo "==> cargo test --manifest-path fuzz/tools/Cargo.toml"
cargo test -q --manifest-path tools/Cargo.toml

targets=${FUZZ_TARGETS:-$(cargo fuzz list)}
echo "==> cargo fuzz build -s none -a (release, debug assertions)"
cargo fuzz build -s none -a

work=target/fuzz-corpus
artifacts=artifacts
root_bench=../target/bench
mkdir -p "$work" "$artifacts" "$root_bench"

total=0
count=0
found=0
json_targets=()
printf '%-18s %12s %8s %s\n' target execs findings log
for t in $targets; do
    mkdir -p "$work/$t" "$artifacts/$t" "corpus/$t"
    log=$work/$t.log
    before=$(find "$artifacts/$t" -type f | wc -l)
    status=0
    extra=()
    # A call sequence needs room: let libFuzzer grow abi_calls' inputs past its seeds at once.
    [[ $t == abi_calls ]] && extra=(-max_len=600 -len_control=0)
    # GHCI's records are 33 bytes each, up to 64 of them.
    [[ $t == ghci ]] && extra=(-max_len=2112 -len_control=0)
    # New inputs go to the work directory; the committed seeds (corpus/$t) are only read.
    cargo fuzz run -s none -a "$t" "$work/$t" "corpus/$t" -- \
        -max_total_time="$seconds" -print_final_stats=1 -artifact_prefix="$artifacts/$t/" \
        -rss_limit_mb=2048 -timeout=20 "${extra[@]}" >"$log" 2>&1 || status=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *\([0-9][0-9]*\).*/\1/p' "$log" | tail -n 1)
    execs=${execs:-0}
    after=$(find "$artifacts/$t" -type f | wc -l)
    new=$((after - before))
    if ((status != 0 && new == 0)); then
        new=1 # libFuzzer stopped on something it could not save (see the log)
    fi
    printf '%-18s %12s %8s %s\n' "$t" "$execs" "$new" "$log"
    if ((new > 0)); then
        grep -E "panicked at|SUMMARY|ERROR" "$log" | head -n 5 | sed 's/^/    /'
        found=$((found + new))
    fi
    total=$((total + execs))
    count=$((count + 1))
    json_targets+=("\"$t\": {\"execs\": $execs, \"findings\": $new, \"seconds\": $seconds}")
done

echo
echo "==> attack cases (fuzz/tools: cargo run --bin attack-cases)"
attack_status=0
attack_out=$(cargo run -q --manifest-path tools/Cargo.toml --bin attack-cases) || attack_status=$?
echo "$attack_out"
attack_total=$(sed -n 's/^bench attack_cases_total \([0-9]*\) count$/\1/p' <<<"$attack_out")
attack_rejected=$(sed -n 's/^bench attack_cases_rejected \([0-9]*\) count$/\1/p' <<<"$attack_out")

echo
echo "bench fuzz_targets $count count"
echo "bench fuzz_execs_total $total execs"
echo "bench fuzz_findings $found count"
{
    echo "{"
    echo "  \"fuzz_targets\": {\"value\": $count, \"unit\": \"count\"},"
    echo "  \"fuzz_execs_total\": {\"value\": $total, \"unit\": \"execs\"},"
    echo "  \"fuzz_findings\": {\"value\": $found, \"unit\": \"count\"},"
    echo "  \"fuzz_seconds_per_target\": {\"value\": $seconds, \"unit\": \"s\"},"
    echo "  \"attack_cases_total\": {\"value\": ${attack_total:-0}, \"unit\": \"count\"},"
    echo "  \"attack_cases_rejected\": {\"value\": ${attack_rejected:-0}, \"unit\": \"count\"},"
    echo "  \"targets\": {"
    for ((i = 0; i < ${#json_targets[@]}; i++)); do
        sep=","
        ((i == ${#json_targets[@]} - 1)) && sep=""
        echo "    ${json_targets[$i]}$sep"
    done
    echo "  }"
    echo "}"
} >"$root_bench/fuzz.json"
echo "wrote $root_bench/fuzz.json"

if ((found > 0)); then
    echo "error: $found finding(s); inputs in fuzz/$artifacts/<target>/ (reproduce: RUSTC_BOOTSTRAP=1 cargo fuzz run -s none -a TARGET FILE)" >&2
    exit 1
fi
if ((attack_status != 0)); then
    echo "error: an attack case was not rejected (see above)" >&2
    exit 1
fi
