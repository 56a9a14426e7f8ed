#!/usr/bin/env bash
# Cross-host overlay throughput: tapnet's userspace VXLAN vs the kernel's `vxlan` device,
# measured in one run on the same underlay.
#
#   bash benches/overlay.sh [SECONDS] [RUNS]   (default 10 s, 1 run; root or user
#                                               namespaces, iperf3)
#
# Two "hosts" are network namespaces h1 and h2 joined by a veth underlay (192.0.2.1/24 ↔
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

# --- the underlay: h1 <-> h2
for h in h1 h2; do ip netns add $h; ip -n $h link set lo up; done
ip link add u1 netns h1 type veth peer name u2 netns h2
ip -n h1 addr add 192.0.2.1/24 dev u1
ip -n h2 addr add 192.0.2.2/24 dev u2
ip -n h1 link set u1 up mtu 1500
ip -n h2 link set u2 up mtu 1500

# --- kernel: vxlan + bridge + veth into a container namespace, on each host
for i in 1 2; do
    h=h$i other=192.0.2.$((3 - i))
    ip -n $h link add vx0 type vxlan id 100 remote "$other" dstport 8472 dev u$i
    ip -n $h link add br0 type bridge
    ip -n $h link set vx0 master br0 up
    ip -n $h link set br0 up
    ip netns add k$i
    ip -n k$i link set lo up
    ip -n $h link add vk type veth peer name eth0 netns k$i
    ip -n $h link set vk master br0 up mtu 1450
    ip -n k$i link set eth0 mtu 1450
    ip -n k$i addr add 10.100.0.$i/24 dev eth0
    ip -n k$i link set eth0 up
done

# --- tapnet: one daemon per host, a static overlay, one sandbox each
for i in 1 2; do
    d=/run/tapnet-h$i
    mkdir -p $d
    nsenter --net=/run/netns/h$i target/release/tapnetd -H unix://$d/tapnet.sock \
        --exec-root $d/run --data-root $d/data >$d/tapnetd.log 2>&1 &
    pids+=($!)
done
T() { local i=$1; shift; target/release/tapnet -H unix:///run/tapnet-h$i/tapnet.sock "$@"; }
for i in 1 2; do
    for _ in $(seq 100); do T $i network ls >/dev/null 2>&1 && break; sleep 0.1; done
    T $i network create -d overlay --subnet 10.101.0.0/24 \
        -o com.docker.network.driver.overlay.vxlanid_list=4242 \
        -o com.tapnet.overlay.peers=192.0.2.$((3 - i)) ov >/dev/null
    T $i sandbox create t$i >/dev/null
    T $i network connect --ip 10.101.0.1$i ov t$i
done

# Both paths must work before anything is measured.
ip netns exec k1 ping -n -q -c 2 -W 2 10.100.0.2 >/dev/null
T 1 exec t1 -- ping -n -q -c 2 -W 2 10.101.0.12 >/dev/null

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
    tcp kernel "ip netns exec k1" "ip netns exec k2" 10.100.0.2
    k_all+=("$tcp")
    tcp tapnet "T 1 exec t1 --" "T 2 exec t2 --" 10.101.0.12
    t_all+=("$tcp")
done
median() { printf '%s\n' "$@" | sort -g | $PY -c "import sys,statistics; print(statistics.median(float(l) for l in sys.stdin))"; }
k=$(median "${k_all[@]}") t=$(median "${t_all[@]}")

printf '\n%-38s %10s %10s %8s\n' "metric (median of $RUNS)" "tapnet" "kernel" "ratio"
printf '%-38s %10.2f %10.2f %8.2f\n' "cross-host TCP single stream (Gbit/s)" "$t" "$k" \
    "$($PY -c "print($t/$k)")"
echo "machine: $(nproc) cores, $(uname -r), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
