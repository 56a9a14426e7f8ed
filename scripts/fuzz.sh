#!/usr/bin/env bash
# Run every cargo-fuzz target (fuzz/fuzz_targets/) for SECONDS each (default 15) over its
# committed corpus (fuzz/corpus/TARGET), one after another, single process. A crash
# fails the script and leaves the input under fuzz/artifacts/TARGET/.
#
#   scripts/fuzz.sh [SECONDS]
#
# Needs the nightly toolchain (libFuzzer's coverage instrumentation) and cargo-fuzz;
# installs both when missing. Targets are built without a sanitizer (`-s none`): the
# crates fuzzed are `#![forbid(unsafe_code)]`, so AddressSanitizer would only slow the
# runs; and unoptimized (`-D`, debug assertions and overflow checks on): a short run is
# mostly the corpus replayed, and the optimized build takes several times longer to
# compile (docs/testing.md, "Fuzzing"; the long runs there are optimized, `-O`). New corpus entries found during a
# run go to a scratch directory, so the committed corpus is left as it is.
# The long runs and their results: docs/testing.md, "Fuzzing".
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${1:-15}"
if ! rustup toolchain list | grep -q '^nightly'; then
    rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

cd fuzz
targets=$(cargo +nightly fuzz list)
cargo +nightly fuzz build -s none -D
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for t in $targets; do
    mkdir -p "$scratch/$t"
    echo "fuzz: $t for ${secs}s"
    # New inputs go to the scratch directory (first corpus dir); the committed corpus
    # (second) is only read.
    if ! cargo +nightly fuzz run -s none -D "$t" "$scratch/$t" "corpus/$t" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -print_final_stats=1 \
        >"$scratch/$t.log" 2>&1; then
        tail -n 40 "$scratch/$t.log" >&2
        echo "fuzz: $t FAILED (input in fuzz/artifacts/$t/)" >&2
        exit 1
    fi
    grep -E '^stat::(number_of_executed_units|peak_rss_mb)' "$scratch/$t.log" | tr '\n' ' '
    echo
done
echo "fuzz: all targets passed"
