#!/usr/bin/env bash
# macvlan throughput: tapnet's macvlan network (userspace switch + AF_PACKET uplink) vs
# the kernel's `macvlan` device (bridge mode), on the same veth parent, in one run.
#
#   bash benches/macvlan.sh [SECONDS] [RUNS]   (default 5 s, 1 run; root or user
#                                               namespaces, iperf3)
#
# The bench's own (private) namespace is the host: tapnetd runs there and `p0` (a veth,
# up, no address) is the parent; its peer is `eth0` in the "lan" namespace,
# 192.168.50.1/24, which runs the iperf3 server. Kernel: `ip link add mvk link p0 type
# macvlan mode bridge` moved into namespace k, 192.168.50.3/24. tapnet: `network create
# -d macvlan -o parent=p0 --subnet 192.168.50.0/24 --gateway 192.168.50.1` and one sandbox
# at 192.168.50.20. iperf3 single-stream TCP from each to the lan host, RUNS times,
# alternating kernel and tapnet, then the same from the lan host to each (-R). Prints each
# figure (Gbit/s, receiver side), the medians and the tapnet/kernel ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-5}
RUNS=${2:-1}

if [ -z "${TAPNET_MACVLAN_INNER:-}" ]; then
    command -v iperf3 >/dev/null || { echo "iperf3 is needed: apt-get install iperf3" >&2; exit 1; }
    cargo build --release --bins >&2
    exec env TAPNET_MACVLAN_INNER=1 unshare -Urnm --propagation private bash "$0" "$@"
fi

# Inside the namespace: /run, lo, PY, pids, json (see benches/lib/inner.sh).
. benches/lib/inner.sh

ip netns add lan
ip -n lan link set lo up
ip link add p0 type veth peer name eth0 netns lan
ip link set p0 up
ip -n lan addr add 192.168.50.1/24 dev eth0
ip -n lan link set eth0 up

# --- kernel: a macvlan on p0 in namespace k
ip netns add k
ip -n k link set lo up
ip link add mvk link p0 type macvlan mode bridge
ip link set mvk netns k
ip -n k addr add 192.168.50.3/24 dev mvk
ip -n k link set mvk up

# --- tapnet: a macvlan network on p0, one sandbox
d=/run/tapnet
mkdir -p $d
target/release/tapnetd -H unix://$d/tapnet.sock --exec-root $d/run --data-root $d/data \
    >$d/tapnetd.log 2>&1 &
pids+=($!)
T() { target/release/tapnet -H unix://$d/tapnet.sock "$@"; }
for _ in $(seq 100); do T network ls >/dev/null 2>&1 && break; sleep 0.1; done
T network create -d macvlan -o parent=p0 --subnet 192.168.50.0/24 --gateway 192.168.50.1 mv >/dev/null
T sandbox create t >/dev/null
T network connect --ip 192.168.50.20 mv t

# Both paths must work before anything is measured.
ip netns exec k ping -n -q -c 2 -W 2 192.168.50.1 >/dev/null
T exec t -- ping -n -q -c 2 -W 2 192.168.50.1 >/dev/null

# tcp NAME CLIENT_PREFIX [-R]: Gbit/s received, in $tcp
tcp() {
    local name=$1 cli=$2 rev=${3:-}
    ip netns exec lan iperf3 -s -1 -p 5201 >/dev/null 2>&1 &
    local s=$!
    sleep 0.5
    tcp=$($cli iperf3 -c 192.168.50.1 -p 5201 -t "$SECS" $rev -J | json 'd["end"]["sum_received"]["bits_per_second"]/1e9')
    wait "$s" 2>/dev/null || true
    echo "$name ${rev:-->lan}: TCP $tcp Gbit/s" >&2
}

k_out=() t_out=() k_in=() t_in=()
for _ in $(seq "$RUNS"); do
    tcp kernel "ip netns exec k"; k_out+=("$tcp")
    tcp tapnet "T exec t --"; t_out+=("$tcp")
    tcp kernel "ip netns exec k" -R; k_in+=("$tcp")
    tcp tapnet "T exec t --" -R; t_in+=("$tcp")
done
median() { printf '%s\n' "$@" | sort -g | $PY -c "import sys,statistics; print(statistics.median(float(l) for l in sys.stdin))"; }
ko=$(median "${k_out[@]}") to=$(median "${t_out[@]}") ki=$(median "${k_in[@]}") ti=$(median "${t_in[@]}")

printf '\n%-40s %10s %10s %8s\n' "metric (median of $RUNS)" "tapnet" "kernel" "ratio"
printf '%-40s %10.2f %10.2f %8.2f\n' "sandbox -> lan host TCP (Gbit/s)" "$to" "$ko" "$($PY -c "print($to/$ko)")"
printf '%-40s %10.2f %10.2f %8.2f\n' "lan host -> sandbox TCP (Gbit/s)" "$ti" "$ki" "$($PY -c "print($ti/$ki)")"
echo "uplink counters: $(curl -s --unix-socket $d/tapnet.sock http://tapnet/networks/mv/stats | json 'd.get("Uplink")')" >&2
echo "machine: $(nproc) cores, $(uname -r), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
