#!/usr/bin/env bash
# A/B(/C...) comparison of tapnetd builds on the overlay benchmark (benches/overlay.sh's
# set-up: two hosts over a veth underlay, kernel `vxlan` vs tapnet, iperf3 single-stream
# TCP), alternating the builds run by run so that the machine's other load hits all alike.
#
#   [SECS=8] [ROUNDS=3] bash benches/overlay_ab.sh TAPNETD_A TAPNETD_B [TAPNETD_C ...]
#        (root or user namespaces, iperf3)
#
# Each round runs `benches/overlay.sh SECS 1` once per build, in the order given (each
# run measures the kernel path too, in the same run). Keep a copy of the old binary
# before rebuilding: `cp target/release/tapnetd /tmp/tapnetd.old`. The CLI used is the
# current target/release/tapnet (build it first: `cargo build --release --bins`).
# Prints every run, then per build the medians of tapnet, kernel and their ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { echo "usage: [SECS=8] [ROUNDS=3] $0 TAPNETD_A TAPNETD_B [...]" >&2; exit 2; }
SECS=${SECS:-8}
ROUNDS=${ROUNDS:-3}
PY=$(command -v python3)
bins=()
for b in "$@"; do bins+=("$(realpath "$b")"); done

run() { # BINARY -> "tapnet kernel" (Gbit/s)
    TAPNETD=$1 TAPNET_OVERLAY_INNER=1 unshare -Urnm --propagation private \
        bash benches/overlay.sh "$SECS" 1 2>&1 |
        awk '/^kernel: TCP/ {k=$3} /^tapnet: TCP/ {t=$3} END {print t, k}'
}

res=()
for r in $(seq "$ROUNDS"); do
    for i in "${!bins[@]}"; do
        read -r t k < <(run "${bins[$i]}")
        name=$(basename "${bins[$i]}")
        echo "round $r $name: tapnet $t kernel $k ratio $($PY -c "print(round($t/$k, 3))")"
        res+=("$i $t $k")
    done
done
printf '%s\n' "${res[@]}" | $PY -c '
import sys, statistics as st
names = sys.argv[1:]
rows = [l.split() for l in sys.stdin if l.strip()]
for i, name in enumerate(names):
    t = [float(r[1]) for r in rows if int(r[0]) == i]
    k = [float(r[2]) for r in rows if int(r[0]) == i]
    ratio = [a / b for a, b in zip(t, k)]
    print(f"{name}: tapnet median {st.median(t):.2f}  kernel median {st.median(k):.2f}  "
          f"ratio median {st.median(ratio):.3f}")
' "${bins[@]##*/}"
echo "machine: $(nproc) cores, $(uname -r), load $(cut -d" " -f1-3 /proc/loadavg)"
