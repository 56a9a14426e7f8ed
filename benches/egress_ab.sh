#!/usr/bin/env bash
# A/B of tapnet's NAT egress between daemon builds (or settings), alternating, in one run.
#
#   bash benches/egress_ab.sh [SECONDS] [ROUNDS] BIN_OR_ENV...
#
# Each BIN_OR_ENV is a tapnetd binary, optionally preceded by NAME=VALUE words for its
# environment and followed by its extra arguments, joined with commas:
# `target/release/tapnetd`, `TAPNET_GATEWAY_LINK=queue,target/release/tapnetd` or
# `target/release/tapnetd,--worker-nice,10`. EGRESS_AB_HOGS=N keeps N busy loops (one
# process each, nice 0) running through every run: the machine under CPU-bound load of
# other processes. For every round, every build in
# turn: a fresh daemon, a bridge network and a sandbox, then one single-stream `iperf3`
# of SECONDS (default 5) from the sandbox to a server in a "wan" namespace behind a veth
# (198.18.0.2), as in benches/egress.sh. EGRESS_AB_REVERSE=1 runs `iperf3 -R` instead
# (the wan sends). Per run it prints: Gbit/s received, tapnetd's CPU (user + system, all
# threads) per Gbit, the sender's TCP retransmissions, the gateway's frames in and out
# (out ÷ in is the ACKs per super-frame when the sandbox sends), and at the end each
# build's median. ROUNDS defaults to 3. Needs iperf3; runs in a private (user+)net+mount
# namespace (no root needed where user namespaces are allowed). Builds nothing: build
# the binaries first (`cargo build --release --bins`, then copy them aside).
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-5}
ROUNDS=${2:-3}
shift 2 || { echo "usage: $0 SECONDS ROUNDS BIN_OR_ENV..." >&2; exit 2; }
[ $# -ge 1 ] || { echo "usage: $0 SECONDS ROUNDS BIN_OR_ENV..." >&2; exit 2; }

if [ -z "${TAPNET_EGRESS_AB_INNER:-}" ]; then
    command -v iperf3 >/dev/null || { echo "iperf3 is needed: apt-get install iperf3" >&2; exit 1; }
    . benches/lib/ns_args.sh   # as root: no user namespace (tapnetd keeps CAP_SYS_NICE)
    exec env TAPNET_EGRESS_AB_INNER=1 unshare $(bench_ns_args) --propagation private bash "$0" "$SECS" "$ROUNDS" "$@"
fi

. benches/lib/inner.sh
TCK=$(getconf CLK_TCK)
R=""
[ -n "${EGRESS_AB_REVERSE:-}" ] && R="-R"

. benches/lib/wan.sh
wan_setup
ip netns exec wan iperf3 -s -p 5201 >/dev/null 2>&1 &
pids+=($!)
CLI=target/release/tapnet
[ -x "$CLI" ] || CLI=target/debug/tapnet

# one BUILD N: start its daemon, measure once, stop it; prints "gbps cpu rtx in out"
one() {
    local spec=$1 bin envs=() d=/run/ab$2 dpid t0 t1 out
    local args=() i=0
    IFS=, read -r -a parts <<<"$spec"
    while [ $i -lt ${#parts[@]} ] && [[ ${parts[$i]} =~ ^[A-Za-z_][A-Za-z0-9_]*= ]]; do
        envs+=("${parts[$i]}")
        i=$((i + 1))
    done
    bin=${parts[$i]}
    args=("${parts[@]:$((i + 1))}")
    # A directory per run: the stopped daemon's sandboxes stay (live restore).
    mkdir -p $d
    env "${envs[@]}" "$bin" -H unix://$d/tapnet.sock --exec-root $d/run --data-root $d/data \
        --dns 198.18.0.2 "${args[@]}" >$d.log 2>&1 &
    dpid=$!
    local T="$CLI -H unix://$d/tapnet.sock"
    for _ in $(seq 100); do $T network ls >/dev/null 2>&1 && break; sleep 0.1; done
    $T network create --subnet 10.202.0.0/24 bench >/dev/null
    $T sandbox create t1 >/dev/null
    $T network connect bench t1
    t0=$(awk '{print $14+$15}' /proc/$dpid/stat)
    out=$($T exec t1 -- iperf3 $R -c 198.18.0.2 -p 5201 -t "$SECS" -J)
    t1=$(awk '{print $14+$15}' /proc/$dpid/stat)
    local stats
    stats=$($T network stats bench | tail -1)
    kill "$dpid" 2>/dev/null || true
    wait "$dpid" 2>/dev/null || true
    printf '%s' "$out" | $PY -c '
import json, re, sys
d = json.load(sys.stdin)
g = d["end"]["sum_received"]["bits_per_second"] / 1e9
t0, t1, tck, secs = (float(x) for x in sys.argv[1:5])
m = re.search(r"frames in (\d+) out (\d+)", sys.argv[5])
fin, fout = (m.group(1), m.group(2)) if m else ("-", "-")
print("%.2f %.0f %s %s %s" % (g, (t1 - t0) * 1000 / tck / max(g * secs, 1e-9),
      d["end"]["sum_sent"].get("retransmits", "-"), fin, fout))' "$t0" "$t1" "$TCK" "$SECS" "$stats"
}

for _ in $(seq "${EGRESS_AB_HOGS:-0}"); do
    bash -c 'while :; do :; done' &
    pids+=($!)
done

declare -A all
printf '%-6s %-60s %8s %8s %6s %9s %9s\n' round build Gbit/s ms/Gbit rtx frames-in frames-out
n=0
for r in $(seq "$ROUNDS"); do
    for spec in "$@"; do
        n=$((n + 1))
        read -r g cpu rtx fin fout <<<"$(one "$spec" $n)"
        printf '%-6s %-60s %8s %8s %6s %9s %9s\n' "$r" "$spec" "$g" "$cpu" "$rtx" "$fin" "$fout"
        all[$spec]+="$g/$cpu "
    done
done
echo
echo "medians (${ROUNDS} rounds of ${SECS} s${R:+, -R}):"
for spec in "$@"; do
    $PY - "$spec" ${all[$spec]} <<'PY'
import statistics, sys
runs = [tuple(float(x) for x in r.split("/")) for r in sys.argv[2:]]
print("  %-60s %6.2f Gbit/s  %4.0f ms/Gbit" % (sys.argv[1],
      statistics.median(g for g, _ in runs), statistics.median(c for _, c in runs)))
PY
done
