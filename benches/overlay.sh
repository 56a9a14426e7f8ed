#!/usr/bin/env bash
# Cross-host overlay throughput: tapnet's userspace VXLAN vs the kernel's `vxlan` device,
# measured in one run on the same underlay.
#
#   bash benches/overlay.sh [SECONDS] [RUNS]   (default 10 s, 1 run; root or user
#                                               namespaces, iperf3)
#
# Two "hosts" are network namespaces ovh1 and ovh2 joined by a veth underlay (192.0.2.1/24 ↔
# 192.0.2.2/24, MTU 1500). On each:
#   kernel: `ip link add vxlan` (VNI 100, UDP 8472, remote = the other host) on a Linux
#           bridge, and a veth into a "container" namespace (MTU 1450, 10.100.0.x/24);
#   tapnet: one tapnetd, a static overlay network (`-o com.tapnet.overlay.peers=` the
#           other host, VNI 4242, UDP 4789) and one sandbox on it (10.101.0.x/24).
# iperf3 single-stream TCP from host 1's container to host 2's, RUNS times each,
# alternating kernel and tapnet. Everything runs inside a private user+net+mount
# namespace: no host interface is touched and nothing is left behind. Prints each figure
# (Gbit/s, receiver side), the medians and the tapnet/kernel ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
RUNS=${2:-1}

if [ -z "${TAPNET_OVERLAY_INNER:-}" ]; then
    command -v iperf3 >/dev/null || { echo "iperf3 is needed: apt-get install iperf3" >&2; exit 1; }
    cargo build --release --bins >&2
    exec env TAPNET_OVERLAY_INNER=1 unshare -Urnm --propagation private bash "$0" "$@"
fi

# Inside the namespace: /run, lo, PY, pids, json (see benches/lib/inner.sh).
. benches/lib/inner.sh

# --- the two hosts, each with the kernel path and a tapnet daemon + static overlay
# (benches/lib/overlay_pair.sh, shared with benches/compare.sh); both paths must carry
# a ping before anything is measured.
. benches/lib/measure.sh
. benches/lib/overlay_pair.sh
overlay_pair_setup || { echo "overlay set-up failed: a path carries no ping" >&2; exit 1; }

# tcp NAME CLIENT_PREFIX SERVER_PREFIX SERVER_IP: Gbit/s received, in $tcp
tcp() {
    local name=$1 cli=$2 srv=$3 ip=$4
    $srv iperf3 -s -1 -p 5201 >/dev/null 2>&1 &
    local s=$!
    sleep 0.5
    tcp=$($cli iperf3 -c "$ip" -p 5201 -t "$SECS" -J | json 'd["end"]["sum_received"]["bits_per_second"]/1e9')
    wait "$s" 2>/dev/null || true
    echo "$name: TCP $tcp Gbit/s" >&2
}

k_all=() t_all=()
for _ in $(seq "$RUNS"); do
    tcp kernel "$OV_K_CLI" "$OV_K_SRV" 10.100.0.2
    k_all+=("$tcp")
    tcp tapnet "$OV_T_CLI" "$OV_T_SRV" 10.101.0.12
    t_all+=("$tcp")
done
median() { printf '%s\n' "$@" | sort -g | $PY -c "import sys,statistics; print(statistics.median(float(l) for l in sys.stdin))"; }
k=$(median "${k_all[@]}") t=$(median "${t_all[@]}")

printf '\n%-38s %10s %10s %8s\n' "metric (median of $RUNS)" "tapnet" "kernel" "ratio"
printf '%-38s %10.2f %10.2f %8.2f\n' "cross-host TCP single stream (Gbit/s)" "$t" "$k" \
    "$($PY -c "print($t/$k)")"
echo "machine: $(nproc) cores, $(uname -r), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
