#!/usr/bin/env bash
# Encrypted vs plain overlay throughput across two "hosts", measured in one run.
#
#   bash benches/overlay_crypt.sh [SECONDS]   (default 10; needs root or user namespaces,
#                                              iperf3, etcd)
#
# Inside a private user+net+mount namespace: host A is the namespace itself, host B a
# network namespace behind a veth underlay (192.0.2.1/24 <-> 192.0.2.2/24, MTU 1500);
# one etcd, one tapnetd per host with --cluster-store. Two overlay networks created on
# A: `plain` and `sec` (-o encrypted); one sandbox per host on both. iperf3 single-stream
# TCP from A's sandbox to B's, on each network. Nothing is left behind.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}

if [ -z "${TAPNET_OC_INNER:-}" ]; then
    for c in iperf3 etcd; do
        command -v $c >/dev/null || { echo "$c is needed (scripts/test.sh installs it)" >&2; exit 1; }
    done
    cargo build --release --bins >&2
    exec env TAPNET_OC_INNER=1 unshare -Urnm --propagation private bash "$0" "$@"
fi

# Inside the namespace: /run, lo, PY, pids, json (see benches/lib/inner.sh).
. benches/lib/inner.sh

ip netns add hostb
ip link add u-hostb type veth peer name eth0 netns hostb
ip addr add 192.0.2.1/24 dev u-hostb
ip link set u-hostb up
ip -n hostb addr add 192.0.2.2/24 dev eth0
ip -n hostb link set eth0 up
ip -n hostb link set lo up

etcd --data-dir /run/etcd --listen-client-urls http://0.0.0.0:2379 \
    --advertise-client-urls http://127.0.0.1:2379 >/run/etcd.log 2>&1 &
pids+=($!)
for _ in $(seq 100); do etcdctl --endpoints 127.0.0.1:2379 endpoint health >/dev/null 2>&1 && break; sleep 0.1; done

mkdir -p /run/a /run/b
target/release/tapnetd -H unix:///run/a/tapnet.sock --exec-root /run/a --data-root /run/a/data \
    --cluster-store etcd://127.0.0.1:2379 --cluster-advertise 192.0.2.1 >/run/a.log 2>&1 &
pids+=($!)
nsenter --net=/run/netns/hostb target/release/tapnetd -H unix:///run/b/tapnet.sock --exec-root /run/b \
    --data-root /run/b/data --data-path-addr 192.0.2.2 \
    --cluster-store etcd://192.0.2.1:2379 --cluster-advertise 192.0.2.2 >/run/b.log 2>&1 &
pids+=($!)
A="target/release/tapnet -H unix:///run/a/tapnet.sock"
B="target/release/tapnet -H unix:///run/b/tapnet.sock"
for T in "$A" "$B"; do
    for _ in $(seq 300); do $T network ls >/dev/null 2>&1 && break; sleep 0.1; done
done
$A network create -d overlay --subnet 10.210.0.0/24 plain >/dev/null
$A network create -d overlay -o encrypted --subnet 10.211.0.0/24 sec >/dev/null
for _ in $(seq 100); do $B network inspect sec >/dev/null 2>&1 && break; sleep 0.1; done
$A sandbox create sa >/dev/null
$B sandbox create sb >/dev/null
for n in plain sec; do $A network connect $n sa; $B network connect $n sb; done
ipb() { $B network inspect "$1" | json 'list(d[0]["Containers"].values())[0]["IPv4Address"].split("/")[0]'; }

run() {
    local net=$1 ip
    ip=$(ipb "$net")
    for _ in $(seq 50); do $A exec sa -- ping -c1 -W1 "$ip" >/dev/null 2>&1 && break; done
    $B exec sb -- iperf3 -s -1 -p 5201 >/run/iperf-s-$net.log 2>&1 &
    sleep 0.5
    for _ in $(seq 30); do
        $A exec sa -- iperf3 -c "$ip" -p 5201 -t "$SECS" -J >/run/iperf-$net.json && break
        sleep 0.5
    done
    json 'd["end"]["sum_received"]["bits_per_second"]/1e9' </run/iperf-$net.json || {
        echo "iperf3 on $net ($ip) failed:" >&2
        cat /run/iperf-$net.json /run/iperf-s-$net.log /run/a.log /run/b.log >&2
        exit 1
    }
}
plain=$(run plain)
sec=$(run sec)
printf '\n%-34s %12s %12s %8s\n' "TCP single stream (Gbit/s)" "encrypted" "plain" "ratio"
printf '%-34s %12.2f %12.2f %8.2f\n' "overlay A -> B" "$sec" "$plain" "$($PY -c "print($sec/$plain)")"
echo "machine: $(nproc) cores, $(uname -r), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
